/* weights.c: the weight store, a map from diffusers tensor name to an F32 heap tensor.
 *
 * A full SD v1.5 checkpoint has ~1100 tensors and binding looks each up once, so a small
 * open-addressing hash table keeps that linear. Entries stay in insertion order for listing and
 * for the "unused tensor" report. */
#include "sd/io.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

typedef struct {
    char *name;
    sd_tensor *tensor;
    int used; /* fetched with sd_weights_get */
} weight_entry;

struct sd_weights {
    char source[1024];
    weight_entry *entries; /* insertion order */
    int count, cap;
    int *slots;            /* hash table of entry index + 1; 0 marks an empty slot */
    size_t n_slots;        /* a power of two, kept at least twice the entry count */
    int synthesize;        /* create missing tensors with random values (benchmarks) */
    sd_rng rng;
};

static uint64_t name_hash(const char *name) { return sd_hash64(name, strlen(name)); }

sd_weights *sd_weights_new(const char *source) {
    sd_weights *w = calloc(1, sizeof *w);
    if (!w) {
        sd_fail(SD_ERR_OOM, "out of memory creating a weight store");
        return NULL;
    }
    snprintf(w->source, sizeof w->source, "%s", source ? source : "(weights)");
    return w;
}

void sd_weights_free(sd_weights *w) {
    if (!w) return;
    for (int i = 0; i < w->count; i++) {
        free(w->entries[i].name);
        sd_tensor_free(w->entries[i].tensor);
    }
    free(w->entries);
    free(w->slots);
    free(w);
}

const char *sd_weights_source(const sd_weights *w) { return w ? w->source : "(weights)"; }

/* The slot holding `name`, or the empty slot where it would go. */
static size_t find_slot(const sd_weights *w, const char *name) {
    size_t mask = w->n_slots - 1, i = (size_t)name_hash(name) & mask;
    while (w->slots[i] != 0 && strcmp(w->entries[w->slots[i] - 1].name, name) != 0) i = (i + 1) & mask;
    return i;
}

static int grow_table(sd_weights *w) {
    size_t n_slots = w->n_slots ? w->n_slots * 2 : 256;
    int *slots = calloc(n_slots, sizeof *slots);
    if (!slots) return 0;
    free(w->slots);
    w->slots = slots;
    w->n_slots = n_slots;
    for (int i = 0; i < w->count; i++) w->slots[find_slot(w, w->entries[i].name)] = i + 1;
    return 1;
}

sd_status sd_weights_add(sd_weights *w, const char *name, sd_tensor *t) {
    if (!w || !name || !name[0] || !t) {
        sd_tensor_free(t);
        return sd_fail(SD_ERR_ARG, "%s: sd_weights_add: missing name or tensor", sd_weights_source(w));
    }
    if ((size_t)(w->count + 1) * 2 > w->n_slots && !grow_table(w)) {
        sd_tensor_free(t);
        return sd_fail(SD_ERR_OOM, "%s: out of memory adding tensor '%s'", w->source, name);
    }
    size_t slot = find_slot(w, name);
    if (w->slots[slot] != 0) {
        sd_tensor_free(t);
        return sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' appears twice", w->source, name);
    }
    if (w->count == w->cap) {
        int cap = w->cap ? w->cap * 2 : 256;
        weight_entry *entries = realloc(w->entries, (size_t)cap * sizeof *entries);
        if (!entries) {
            sd_tensor_free(t);
            return sd_fail(SD_ERR_OOM, "%s: out of memory adding tensor '%s'", w->source, name);
        }
        w->entries = entries;
        w->cap = cap;
    }
    char *copy = strdup(name);
    if (!copy) {
        sd_tensor_free(t);
        return sd_fail(SD_ERR_OOM, "%s: out of memory adding tensor '%s'", w->source, name);
    }
    sd_tensor_set_name(t, name);
    w->entries[w->count] = (weight_entry){copy, t, 0};
    w->count++;
    w->slots[slot] = w->count;
    return SD_OK;
}

static weight_entry *lookup(const sd_weights *w, const char *name) {
    if (!w || !name || w->n_slots == 0) return NULL;
    int index = w->slots[find_slot(w, name)];
    return index ? &w->entries[index - 1] : NULL;
}

sd_tensor *sd_weights_find(const sd_weights *w, const char *name) {
    weight_entry *e = lookup(w, name);
    return e ? e->tensor : NULL;
}

void sd_weights_synthesize(sd_weights *w, uint64_t seed) {
    w->synthesize = 1;
    sd_rng_seed(&w->rng, seed);
}

/* A random tensor for a parameter the store does not hold: norm scales 1, biases 0, weights
 * uniform in ±1/sqrt(fan_in) like PyTorch's default init, so activations keep a sane scale. */
static sd_status synthesize_tensor(sd_weights *w, const char *name, int ndim, const int64_t *shape) {
    for (int i = 0; i < ndim; i++)
        if (shape[i] < 0)
            return sd_fail(SD_ERR_INTERNAL, "%s: cannot synthesize '%s' without a full shape", w->source, name);
    sd_tensor *t = sd_tensor_new(SD_F32, ndim, shape);
    if (!t) return SD_ERR_OOM;
    const int64_t n = sd_numel(t);
    const size_t len = strlen(name);
    const int is_bias = len >= 5 && !strcmp(name + len - 5, ".bias");
    const int is_norm = ndim == 1 && !is_bias && strstr(name, "norm") != NULL;
    float *x = sd_f32(t);
    if (is_norm) {
        for (int64_t i = 0; i < n; i++) x[i] = 1.0f;
    } else if (!is_bias) {
        const int64_t fan_in = ndim > 1 ? n / shape[0] : n;
        const float bound = 1.0f / sqrtf((float)(fan_in > 0 ? fan_in : 1));
        for (int64_t i = 0; i < n; i++)
            x[i] = bound * (2.0f * (float)(sd_rng_u32(&w->rng) >> 8) * (1.0f / 16777216.0f) - 1.0f);
    }
    return sd_weights_add(w, name, t);
}

sd_status sd_weights_get(sd_weights *w, const char *name, int ndim, const int64_t *shape,
                         sd_tensor **out) {
    char want[160], got[160];
    if (out) *out = NULL;
    weight_entry *e = lookup(w, name);
    if (!e && w && w->synthesize && name) {
        SD_TRY(synthesize_tensor(w, name, ndim, shape));
        e = lookup(w, name);
    }
    if (!e)
        return sd_fail(SD_ERR_MISSING, "%s: missing tensor '%s' (expected shape %s)",
                       sd_weights_source(w), name ? name : "(null)",
                       sd_shape_str(ndim, shape, want, sizeof want));
    const sd_tensor *t = e->tensor;
    int ok = t->ndim == ndim;
    for (int i = 0; ok && i < ndim; i++)
        if (shape[i] >= 0 && shape[i] != t->shape[i]) ok = 0;
    if (!ok)
        return sd_fail(SD_ERR_SHAPE, "%s: tensor '%s': expected shape %s, got %s", w->source, name,
                       sd_shape_str(ndim, shape, want, sizeof want),
                       sd_shape_str(t->ndim, t->shape, got, sizeof got));
    if (t->dtype != SD_F32)
        return sd_fail(SD_ERR_SHAPE, "%s: tensor '%s': expected dtype F32, got %s", w->source, name,
                       sd_dtype_name(t->dtype));
    e->used = 1;
    if (out) *out = e->tensor;
    return SD_OK;
}

int sd_weights_count(const sd_weights *w) { return w ? w->count : 0; }

const char *sd_weights_name_at(const sd_weights *w, int i) {
    return w && i >= 0 && i < w->count ? w->entries[i].name : NULL;
}

sd_tensor *sd_weights_tensor_at(const sd_weights *w, int i) {
    return w && i >= 0 && i < w->count ? w->entries[i].tensor : NULL;
}

int sd_weights_unused(const sd_weights *w, const char **first) {
    int n = 0;
    if (first) *first = NULL;
    for (int i = 0; w && i < w->count; i++)
        if (!w->entries[i].used) {
            if (n == 0 && first) *first = w->entries[i].name;
            n++;
        }
    return n;
}

sd_status sd_weights_load_file(sd_weights *w, const char *path, const char *prefix) {
    if (!w) return sd_fail(SD_ERR_ARG, "%s: sd_weights_load_file: no weight store", path);
    if (!prefix) prefix = "";
    sd_safetensors st;
    SD_TRY(sd_safetensors_open(path, &st));
    const size_t prefix_len = strlen(prefix);
    sd_status status = SD_OK;
    for (int i = 0; i < st.n_entries && status == SD_OK; i++) {
        const sd_st_entry *e = &st.entries[i];
        if (strncmp(e->name, prefix, prefix_len) != 0) continue;
        if (e->name[prefix_len] == '\0') continue; /* the prefix itself names no tensor */
        sd_tensor *t;
        status = sd_safetensors_load_f32(&st, e, &t);
        if (status == SD_OK) {
            status = sd_weights_add(w, e->name + prefix_len, t);
            /* A store filled from several files names only its own source: add the file. */
            if (status != SD_OK && strcmp(w->source, path) != 0) sd_fail_context(status, "%s: ", path);
        }
    }
    sd_safetensors_close(&st);
    return status;
}
