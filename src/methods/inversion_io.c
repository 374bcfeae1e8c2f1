/* inversion_io.c: saving and loading inversions as safetensors (one file per image and method).
 *
 * Tensors: z0, z_T (1, 4, h, w); null_embedding.NNN (1, 77, D) for nulltext (one per step) and npi
 * (one); mapping.NNN.<param> for stylediffusion (the reference's per-timestep networks);
 * image_features (1, tokens, D); stats (N, 5): t, iterations, first loss, last loss, seconds.
 * Metadata: format, method, prompt, n_steps, guidance, image_hash, image_size, model,
 * model_fingerprint, seconds_encode, seconds_ddim, seconds_total. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/inversion.h"

#define FORMAT_TAG "stylediff-inversion-v1"
#define MAX_TENSORS 512

typedef struct {
    const sd_tensor *tensors[MAX_TENSORS];
    char *names[MAX_TENSORS];
    int n;
} tensor_list;

static sd_status list_add(tensor_list *l, const sd_tensor *t, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static sd_status list_add(tensor_list *l, const sd_tensor *t, const char *fmt, ...) {
    if (!t) return SD_OK;
    if (l->n >= MAX_TENSORS) return sd_fail(SD_ERR_INTERNAL, "inversion: more than %d tensors", MAX_TENSORS);
    char name[160];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(name, sizeof name, fmt, ap);
    va_end(ap);
    l->names[l->n] = strdup(name);
    if (!l->names[l->n]) return sd_fail(SD_ERR_OOM, "out of memory");
    l->tensors[l->n++] = t;
    return SD_OK;
}

sd_status sd_inversion_save(const sd_inversion *inv, const char *path) {
    tensor_list l = {{0}, {0}, 0};
    sd_status st = SD_OK;
    const int N = inv->n_steps;
    sd_tensor *stats = sd_tensor_new4(SD_F32, 2, N, 5, 0, 0);
    if (!stats) return SD_ERR_OOM;
    for (int i = 0; i < N; i++) {
        float *row = sd_f32(stats) + i * 5;
        row[0] = (float)inv->stats[i].t;
        row[1] = (float)inv->stats[i].iterations;
        row[2] = inv->stats[i].first_loss;
        row[3] = inv->stats[i].last_loss;
        row[4] = (float)inv->stats[i].seconds;
    }
    st = list_add(&l, inv->z0, "z0");
    if (!st) st = list_add(&l, inv->z_T, "z_T");
    if (!st) st = list_add(&l, stats, "stats");
    if (!st) st = list_add(&l, inv->image_features, "image_features");
    if (inv->null_embeddings) {
        const int count = inv->method == SD_INVERT_NPI ? 1 : N;
        for (int i = 0; i < count && !st; i++) st = list_add(&l, inv->null_embeddings[i], "null_embedding.%03d", i);
    }
    if (inv->mapping)
        for (int i = 0; i < N && !st; i++)
            for (int p = 0; p < SD_MAP_N_PARAMS && !st; p++)
                st = list_add(&l, inv->mapping[i][p], "mapping.%03d.%s", i, sd_mapping_param_names[p]);
    char n_steps[32], guidance[32], hash[32], size[32], fp[32], t_encode[32], t_ddim[32], t_total[32];
    snprintf(n_steps, sizeof n_steps, "%d", N);
    snprintf(guidance, sizeof guidance, "%.9g", inv->guidance);
    snprintf(hash, sizeof hash, "%016" PRIx64, inv->image_hash);
    snprintf(size, sizeof size, "%d", inv->image_size);
    snprintf(fp, sizeof fp, "%016" PRIx64, inv->model_fingerprint);
    snprintf(t_encode, sizeof t_encode, "%.3f", inv->seconds_encode);
    snprintf(t_ddim, sizeof t_ddim, "%.3f", inv->seconds_ddim);
    snprintf(t_total, sizeof t_total, "%.3f", inv->seconds_total);
    const char *meta[] = {"format", FORMAT_TAG, "method", sd_invert_method_name(inv->method),
                          "prompt", inv->prompt, "n_steps", n_steps, "guidance", guidance,
                          "image_hash", hash, "image_size", size, "model", inv->model_id,
                          "model_fingerprint", fp, "seconds_encode", t_encode, "seconds_ddim", t_ddim,
                          "seconds_total", t_total};
    if (!st)
        st = sd_safetensors_write(path, l.tensors, (const char *const *)l.names, l.n, meta,
                                  (int)(sizeof meta / sizeof meta[0] / 2));
    for (int i = 0; i < l.n; i++) free(l.names[i]);
    sd_tensor_free(stats);
    return st;
}

static sd_status load_named(const sd_safetensors *f, const char *name, int required, sd_tensor **out) {
    *out = NULL;
    const sd_st_entry *e = sd_safetensors_find(f, name);
    if (!e) return required ? sd_fail(SD_ERR_FORMAT, "%s: missing tensor '%s'", f->path, name) : SD_OK;
    return sd_safetensors_load_f32(f, e, out);
}

static sd_status meta_int(const sd_safetensors *f, const char *key, long lo, long hi, long *out) {
    const char *v = sd_safetensors_meta(f, key);
    char *end;
    if (!v) return sd_fail(SD_ERR_FORMAT, "%s: metadata '%s' is missing", f->path, key);
    *out = strtol(v, &end, 10);
    if (!*v || *end || *out < lo || *out > hi)
        return sd_fail(SD_ERR_FORMAT, "%s: metadata '%s' = '%s' is not an integer in [%ld, %ld]", f->path, key, v, lo, hi);
    return SD_OK;
}

sd_status sd_inversion_load(const char *path, sd_inversion *out) {
    memset(out, 0, sizeof *out);
    sd_safetensors f;
    SD_TRY(sd_safetensors_open(path, &f));
    sd_status st = SD_OK;
    const char *format = sd_safetensors_meta(&f, "format");
    if (!format || strcmp(format, FORMAT_TAG))
        st = sd_fail(SD_ERR_FORMAT, "%s: not a stylediff inversion (metadata 'format' is %s%s%s)", path,
                     format ? "'" : "", format ? format : "missing", format ? "'" : "");
    long n = 0, size = 0;
    if (!st) st = sd_invert_method_parse(sd_safetensors_meta(&f, "method"), &out->method);
    if (st == SD_ERR_ARG) st = sd_fail_context(SD_ERR_FORMAT, "%s: metadata 'method': ", path);
    if (!st) st = meta_int(&f, "n_steps", 1, 1000, &n);
    if (!st) st = meta_int(&f, "image_size", 0, 1 << 20, &size);
    const char *prompt = sd_safetensors_meta(&f, "prompt");
    const char *guidance = sd_safetensors_meta(&f, "guidance");
    if (!st && (!prompt || !guidance)) st = sd_fail(SD_ERR_FORMAT, "%s: metadata 'prompt' or 'guidance' is missing", path);
    if (!st) {
        out->n_steps = (int)n;
        out->image_size = (int)size;
        out->guidance = strtof(guidance, NULL);
        out->prompt = strdup(prompt);
        const char *hash = sd_safetensors_meta(&f, "image_hash"), *fp = sd_safetensors_meta(&f, "model_fingerprint");
        const char *model = sd_safetensors_meta(&f, "model");
        out->image_hash = hash ? strtoull(hash, NULL, 16) : 0;
        out->model_fingerprint = fp ? strtoull(fp, NULL, 16) : 0;
        snprintf(out->model_id, sizeof out->model_id, "%s", model ? model : "");
        out->stats = calloc((size_t)n, sizeof *out->stats);
        if (!out->prompt || !out->stats) st = sd_fail(SD_ERR_OOM, "out of memory");
    }
    if (!st) st = load_named(&f, "z0", 1, &out->z0);
    if (!st) st = load_named(&f, "z_T", 1, &out->z_T);
    if (!st && (out->z_T->ndim != 4 || out->z_T->shape[0] != 1 || !sd_same_shape(out->z0, out->z_T)))
        st = sd_fail(SD_ERR_FORMAT, "%s: z0 and z_T must both be (1, C, h, w)", path);
    sd_tensor *stats = NULL;
    if (!st) st = load_named(&f, "stats", 0, &stats);
    if (!st && stats && sd_numel(stats) == n * 5)
        for (int i = 0; i < n; i++) {
            const float *row = sd_f32(stats) + i * 5;
            out->stats[i] = (sd_step_stats){(int)row[0], (int)row[1], row[2], row[3], row[4]};
        }
    sd_tensor_free(stats);
    char name[160];
    if (!st && (out->method == SD_INVERT_NULLTEXT || out->method == SD_INVERT_NPI)) {
        const int count = out->method == SD_INVERT_NPI ? 1 : (int)n;
        out->null_embeddings = calloc((size_t)count, sizeof *out->null_embeddings);
        if (!out->null_embeddings) st = sd_fail(SD_ERR_OOM, "out of memory");
        for (int i = 0; i < count && !st; i++) {
            snprintf(name, sizeof name, "null_embedding.%03d", i);
            st = load_named(&f, name, 1, &out->null_embeddings[i]);
            if (!st && (out->null_embeddings[i]->ndim != 3 || out->null_embeddings[i]->shape[1] != 77))
                st = sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' must be (1, 77, D)", path, name);
        }
    }
    if (!st && out->method == SD_INVERT_STYLEDIFFUSION) {
        out->mapping = calloc((size_t)n, sizeof *out->mapping);
        if (!out->mapping) st = sd_fail(SD_ERR_OOM, "out of memory");
        for (int i = 0; i < n && !st; i++)
            for (int p = 0; p < SD_MAP_N_PARAMS && !st; p++) {
                snprintf(name, sizeof name, "mapping.%03d.%s", i, sd_mapping_param_names[p]);
                st = load_named(&f, name, 1, &out->mapping[i][p]);
            }
        if (!st) st = load_named(&f, "image_features", 1, &out->image_features);
    }
    sd_safetensors_close(&f);
    if (st) sd_inversion_free(out);
    return st;
}

sd_status sd_inversion_check_model(const sd_inversion *inv, const sd_model *m, const char *path) {
    const int64_t channels = inv->z_T->shape[1];
    if (channels != m->unet.cfg.in_channels)
        return sd_fail(SD_ERR_ARG, "%s: made with a %lld-channel latent; this model's UNet takes %d", path,
                       (long long)channels, m->unet.cfg.in_channels);
    const sd_tensor *emb = inv->null_embeddings ? inv->null_embeddings[0] : inv->image_features;
    if (emb && emb->shape[2] != m->unet.cfg.cross_attention_dim)
        return sd_fail(SD_ERR_ARG, "%s: made with %lld-wide text embeddings; this model's are %d wide (another model)",
                       path, (long long)emb->shape[2], m->unet.cfg.cross_attention_dim);
    if (inv->model_fingerprint && inv->model_fingerprint != m->fingerprint)
        return sd_fail(SD_ERR_ARG, "%s: made with another model (%s, fingerprint %016" PRIx64 "); this one is %s (%016" PRIx64 ")",
                       path, inv->model_id, inv->model_fingerprint,
                       m->builtin ? "the built-in tiny model" : m->files.source, m->fingerprint);
    return SD_OK;
}
