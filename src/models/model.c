/* model.c: loading a whole SD model and the conversions around it (see model.h). */
#include "sd/model.h"

#include <libgen.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#ifndef SD_SOURCE_DIR
#define SD_SOURCE_DIR "."
#endif

static char builtin_dir[PATH_MAX];
static char builtin_tok_dir[PATH_MAX];

static int has_model_index(const char *dir) {
    char p[PATH_MAX + 32];
    snprintf(p, sizeof p, "%s/model_index.json", dir);
    return sd_file_exists(p);
}

const char *sd_builtin_model_dir(void) {
    if (builtin_dir[0]) return builtin_dir;
    const char *home = getenv("STYLEDIFF_HOME");
    if (home && *home) {
        snprintf(builtin_dir, sizeof builtin_dir, "%s/models/tiny", home);
        return builtin_dir;
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = '\0';
        const char *dir = dirname(exe);
        const char *candidates[] = {"%s/../models/tiny", "%s/models/tiny", "%s/../share/stylediff/models/tiny"};
        for (size_t i = 0; i < sizeof candidates / sizeof candidates[0]; i++) {
            char p[PATH_MAX + 64];
            snprintf(p, sizeof p, candidates[i], dir);
            if (has_model_index(p)) {
                snprintf(builtin_dir, sizeof builtin_dir, "%s", p);
                return builtin_dir;
            }
        }
    }
    snprintf(builtin_dir, sizeof builtin_dir, "%s/models/tiny", SD_SOURCE_DIR);
    return builtin_dir;
}

const char *sd_builtin_tokenizer_dir(void) {
    if (!builtin_tok_dir[0])
        snprintf(builtin_tok_dir, sizeof builtin_tok_dir, "%s/tokenizer", sd_builtin_model_dir());
    return builtin_tok_dir;
}

const char *sd_builtin_clip_vision_dir(void) {
    static char dir[PATH_MAX + 32];
    if (!dir[0]) snprintf(dir, sizeof dir, "%s-clip-vision", sd_builtin_model_dir());
    return dir;
}

sd_status sd_model_load(const char *path, sd_model *m) {
    memset(m, 0, sizeof *m);
    if (!path) {
        path = sd_builtin_model_dir();
        m->builtin = 1;
        sd_info("using the built-in tiny model (random weights: outputs are not meaningful images); "
                "pass -m MODEL for a real SD v1.x checkpoint");
    }
    SD_TRY(sd_model_files_open(path, sd_builtin_tokenizer_dir(), &m->files));
    sd_status st = sd_clip_text_bind(&m->text, &m->files.text_config, m->files.text);
    if (st == SD_OK) st = sd_unet_bind(&m->unet, &m->files.unet_config, m->files.unet);
    if (st == SD_OK) st = sd_vae_bind(&m->vae, &m->files.vae_config, m->files.vae);
    if (st == SD_OK) st = sd_tokenizer_load(m->files.tokenizer_dir, &m->tokenizer);
    if (st == SD_OK) {
        /* Hash tensors every SD v1.x UNet, VAE and text encoder has, read on the host before any
         * move to a device: the same weights give the same fingerprint in either layout. */
        const sd_tensor *parts[3] = {m->unet.conv_in.weight, m->vae.dec_conv_out.weight, m->text.position_embedding};
        uint64_t h = 1469598103934665603ull;
        for (int i = 0; i < 3; i++) h ^= sd_hash64(parts[i]->data, sd_nbytes(parts[i])) + 0x9e3779b97f4a7c15ull + (h << 6) + (h >> 2);
        m->fingerprint = h;
    }
    if (st != SD_OK) {
        sd_fail_context(st, "loading model %s: ", path);
        sd_model_free(m);
        return st;
    }
    return SD_OK;
}

void sd_model_free(sd_model *m) {
    sd_clip_text_release(&m->text);
    sd_tokenizer_free(m->tokenizer);
    m->tokenizer = NULL;
    sd_model_files_close(&m->files);
}

sd_tensor *sd_image_upload(sd_ctx *c, const sd_image *img) {
    if (c->status != SD_OK) return NULL;
    sd_tensor *host = sd_tensor_new4(SD_F32, 4, 1, 3, img->height, img->width);
    if (!host) return sd_ctx_fail(c, SD_ERR_OOM, "out of host memory for a %dx%d image", img->width, img->height);
    sd_status st = sd_image_to_tensor(img, host);
    sd_tensor *t = st == SD_OK ? sd_upload(c, host) : NULL;
    if (st != SD_OK) c->status = st;
    sd_tensor_free(host);
    return t;
}

sd_status sd_image_download(sd_ctx *c, const sd_tensor *images, int row, sd_image *out) {
    if (c->status != SD_OK) return c->status;
    sd_tensor *host = sd_download_new(c, images);
    if (!host) return c->status;
    sd_status st = sd_image_from_tensor(host, row, out);
    sd_tensor_free(host);
    return st;
}

sd_status sd_model_to_device(sd_ctx *c, sd_model *m) {
    SD_TRY(sd_ctx_adopt_weights(c, m->files.unet));
    SD_TRY(sd_ctx_adopt_weights(c, m->files.vae));
    return sd_ctx_adopt_weights(c, m->files.text);
}

sd_tensor *sd_encode_prompt(sd_ctx *c, const sd_model *m, const char *prompt) {
    if (c->status != SD_OK) return NULL;
    /* host memory: sd_embedding validates the ids on the host, then uploads them */
    int32_t ids[SD_CLIP_MAX_LEN];
    int tmp[SD_CLIP_MAX_LEN];
    sd_status st = sd_tokenize_padded(m->tokenizer, prompt, tmp, NULL);
    if (st != SD_OK) {
        c->status = st;
        return NULL;
    }
    for (int i = 0; i < SD_CLIP_MAX_LEN; i++) ids[i] = tmp[i];
    const int64_t shape[2] = {1, SD_CLIP_MAX_LEN};
    sd_tensor id_tensor = sd_tensor_wrap(ids, SD_I32, 2, shape);
    return sd_clip_text_forward(c, &m->text, &id_tensor);
}

sd_tensor *sd_image_to_latent(sd_ctx *c, const sd_model *m, sd_tensor *image) {
    return sd_scale(c, sd_vae_encode(c, &m->vae, image, NULL), m->vae.cfg.scaling_factor);
}

sd_tensor *sd_latent_to_image(sd_ctx *c, const sd_model *m, sd_tensor *z) {
    /* the reference writes 1 / 0.18215 * z: the reciprocal in double, then float32 */
    return sd_vae_decode(c, &m->vae, sd_scale(c, z, (float)(1.0 / (double)m->vae.cfg.scaling_factor)));
}
