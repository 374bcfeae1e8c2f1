/* nn.c: shape checking, arena allocation and dispatch for every layer (see nn.h). */
#include "sd/nn.h"

#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "sd/attn.h"
#include "sd/io.h"
#include "tape.h"

/* ------------------------------------------------------------------------------------------------
 * Context
 * --------------------------------------------------------------------------------------------- */

sd_status sd_ctx_init(sd_ctx *c, const sd_backend *be, int device) {
    memset(c, 0, sizeof *c);
    c->be = be;
    c->device = device;
    c->arena = sd_arena_create_with((size_t)64 << 20, be->mem_alloc, be->mem_free);
    c->keep = sd_arena_create_with((size_t)16 << 20, be->mem_alloc, be->mem_free);
    if (!c->arena || !c->keep) {
        sd_ctx_free(c);
        return SD_ERR_OOM;
    }
    return SD_OK;
}

sd_status sd_ctx_init_cpu(sd_ctx *c) { return sd_ctx_init(c, sd_backend_cpu(), SD_DEVICE_CPU); }

static void lowp_weights_free(sd_ctx *c);

void sd_ctx_free(sd_ctx *c) {
    if (!c) return;
    lowp_weights_free(c);
    sd_arena_destroy(c->arena);
    sd_arena_destroy(c->keep);
    sd_arena_destroy(c->scratch);
    c->arena = c->keep = c->scratch = NULL;
}

sd_tensor *sd_ctx_fail(sd_ctx *c, sd_status code, const char *fmt, ...) {
    if (c->status != SD_OK) return NULL; /* keep the first failure's message */
    char msg[1024];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    c->status = sd_fail(code, "%s", msg);
    return NULL;
}

int sd_ctx_check(sd_ctx *c, sd_status s) {
    if (s == SD_OK) return 1;
    if (c->status == SD_OK) c->status = s; /* the backend already wrote the message */
    return 0;
}

/* Every layer starts with this: a failed context or a missing input makes the call a no-op. */
#define NN_GUARD(c, ...)                                                                           \
    do {                                                                                           \
        if ((c)->status != SD_OK) return NULL;                                                     \
        const void *nn_inputs_[] = {__VA_ARGS__};                                                  \
        for (size_t i_ = 0; i_ < sizeof nn_inputs_ / sizeof nn_inputs_[0]; i_++)                   \
            if (!nn_inputs_[i_])                                                                   \
                return sd_ctx_fail((c), SD_ERR_INTERNAL, "%s: missing input %zu", __func__, i_);   \
    } while (0)

static const char *shape_of(const sd_tensor *t, char *buf, size_t n) {
    return sd_shape_str(t->ndim, t->shape, buf, n);
}

/* ------------------------------------------------------------------------------------------------
 * fp16 storage (sd_ctx.activations): dispatch, allocation and the weights' fp16 copies
 * --------------------------------------------------------------------------------------------- */

int sd_ctx_stores_f16(const sd_ctx *c) {
    return c->activations == SD_F16 && c->be->f16 && (!c->tape || c->f16_steps);
}

int sd_ctx_steps_store_as_forwards(const sd_ctx *c) {
    return !(c->activations == SD_F16 && c->be->f16) || c->f16_steps;
}

/* The fp16 table for an op on fp16 inputs, or NULL (context failed) where there is none, or where a
 * tape records a step that keeps F32 activations (sd_ctx.f16_steps unset). */
static const sd_f16_ops *f16_ops(sd_ctx *c, const char *op) {
    if (!c->be->f16) {
        sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "%s: fp16 input, but the %s backend stores F32 only", op, c->be->name);
        return NULL;
    }
    if (c->tape && !c->f16_steps) {
        sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "%s: fp16 activations while a gradient tape records (gradient steps "
                                           "store F32 unless sd_ctx.f16_steps)", op);
        return NULL;
    }
    return c->be->f16;
}

/* The tape's records of ops whose output holds the same values as an input in another storage (a
 * dtype conversion, a change of memory order): in gradient space (F32, logical order) the op is the
 * identity, a view at offset 0. */
static void record_same_values(sd_ctx *c, sd_tensor *y, sd_tensor *x) {
    sd_tape_node *node = sd_tape_record(c, SD_OP_VIEW, y, x, NULL, NULL);
    if (node) node->attr.view.offset = 0;
}

/* A tensor viewed in another logical order without moving it (a channels-last map's memory read as
 * tokens, and back): in gradient space a transpose y[b, c, r] = x[b, r, c] with dims (B, R, C). */
static void record_transpose(sd_ctx *c, sd_tensor *y, sd_tensor *x, int64_t B, int64_t R, int64_t C) {
    sd_tape_node *node = sd_tape_record(c, SD_OP_TRANSPOSE, y, x, NULL, NULL);
    if (node) {
        node->attr.transpose.B = B;
        node->attr.transpose.R = R;
        node->attr.transpose.C = C;
    }
}

/* Fails (returns 0) when x is not F32: the ops outside the UNet's layers take F32 only. */
static int f32_only(sd_ctx *c, const sd_tensor *x, const char *op) {
    if (x->dtype == SD_F32) return 1;
    sd_ctx_fail(c, SD_ERR_SHAPE, "%s: %s input; this op takes F32 (fp16 storage covers the UNet's layers)", op,
                sd_dtype_name(x->dtype));
    return 0;
}

/* The same-dtype check for the inputs of one f16-capable op. */
static int same_dtype(sd_ctx *c, const sd_tensor *a, const sd_tensor *b, const char *op) {
    if (a->dtype == b->dtype) return 1;
    sd_ctx_fail(c, SD_ERR_SHAPE, "%s: inputs of dtypes %s and %s", op, sd_dtype_name(a->dtype), sd_dtype_name(b->dtype));
    return 0;
}

static sd_tensor *new_dtype(sd_ctx *c, sd_dtype dtype, int ndim, const int64_t *shape) {
    if (c->status != SD_OK) return NULL;
    sd_tensor *t = sd_arena_tensor(c->arena, dtype, ndim, shape);
    if (!t) {
        c->status = SD_ERR_OOM;
        return NULL;
    }
    t->device = c->device;
    return t;
}

static sd_tensor *new4_dtype(sd_ctx *c, sd_dtype dtype, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    const int64_t shape[4] = {d0, d1, d2, d3};
    return new_dtype(c, dtype, ndim, shape);
}

static sd_f16 *f16_of(const sd_tensor *t) { return (sd_f16 *)t->data; }

/* The fp16 copies, in an open-addressing table keyed by the weight tensor and its data pointer
 * (a weight moved to the device gets a new copy), emptied whenever the context adopts weights. A
 * copy is made on the weight's first use: a step's first run is eager, so never inside a CUDA
 * graph capture. */
/* The layout of a copy: as the weight is, a convolution weight [Co, Ci, kh, kw] reordered to
 * [Co, kh, kw, Ci] (channels-last), the weight in bfloat16 (a gradient step's backward), a
 * convolution weight in bfloat16 transposed and flipped to [Ci, Co, kh, kw] (a gradient step's
 * data gradient as a convolution: sd_f16_ops.to_bf16_conv_transposed), or the weight packed with
 * the ones that follow it in a batched projection (LOWP_PACK + count - 1: [count, N, K]), in fp16 for
 * the forward or in bfloat16 for the data gradients (LOWP_BF16_PACK + count - 1). Every other copy
 * is fp16. */
enum {
    LOWP_AS_IS = 0,
    LOWP_KRSC = 1,
    LOWP_BF16 = 2,
    LOWP_BF16_CONVT = 3,
    LOWP_PACK = 4,
    LOWP_BF16_PACK = LOWP_PACK + SD_LINEAR_MANY_MAX
};

typedef struct {
    const sd_tensor *weight; /* the first of a pack */
    const sd_tensor *packed[SD_LINEAR_MANY_MAX - 1]; /* the others of a pack, in order (NULL past its end) */
    int layout;              /* LOWP_* */
    const void *data;
    sd_f16 *copy;
    size_t bytes;
} lowp_entry;

struct sd_lowp_weights {
    lowp_entry *slots;
    size_t cap, used;
    size_t bytes; /* device memory held by the copies */
};

static size_t lowp_slot(const struct sd_lowp_weights *t, const sd_tensor *w, int layout) {
    uint64_t h = ((uint64_t)(uintptr_t)w + (uint64_t)layout) * 0x9E3779B97F4A7C15ull;
    return (size_t)(h >> 17) & (t->cap - 1);
}

static void lowp_weights_free(sd_ctx *c) {
    struct sd_lowp_weights *t = c->lowp_weights;
    if (!t) return;
    for (size_t i = 0; i < t->cap; i++)
        if (t->slots[i].copy) c->be->mem_free(t->slots[i].copy);
    free(t->slots);
    free(t);
    c->lowp_weights = NULL;
}

static int lowp_grow(struct sd_lowp_weights *t) {
    const size_t cap = t->cap ? t->cap * 2 : 1024;
    lowp_entry *slots = calloc(cap, sizeof *slots);
    if (!slots) return 0;
    lowp_entry *old = t->slots;
    const size_t old_cap = t->cap;
    t->slots = slots;
    t->cap = cap;
    for (size_t i = 0; i < old_cap; i++) {
        if (!old[i].weight) continue;
        size_t j = lowp_slot(t, old[i].weight, old[i].layout);
        while (t->slots[j].weight) j = (j + 1) & (cap - 1);
        t->slots[j] = old[i];
    }
    free(old);
    return 1;
}

/* The slot holding weight w in that layout, or the empty slot where it would go (the table is
 * never full). */
static lowp_entry *lowp_find(struct sd_lowp_weights *t, const sd_tensor *w, int layout) {
    size_t i = lowp_slot(t, w, layout);
    while (t->slots[i].weight && (t->slots[i].weight != w || t->slots[i].layout != layout)) i = (i + 1) & (t->cap - 1);
    return &t->slots[i];
}

/* Writes the fp16 copy of ws[0..count) into `copy`: as it is, packed one after the other, or
 * (LOWP_KRSC, one 4-d convolution weight) reordered [Co, Ci, kh·kw] -> [Co, kh·kw, Ci] through a
 * temporary fp16 copy. */
static int lowp_fill(sd_ctx *c, const sd_tensor *const *ws, int count, int layout, sd_f16 *copy) {
    const sd_f16_ops *ops = c->be->f16;
    const sd_tensor *w = ws[0];
    const int64_t n = sd_numel(w);
    if (layout == LOWP_BF16 || layout >= LOWP_BF16_PACK) {
        for (int i = 0; i < count; i++)
            if (!sd_ctx_check(c, ops->to_bf16(sd_f32(ws[i]), copy + i * n, n))) return 0;
        return 1;
    }
    if (layout == LOWP_BF16_CONVT)
        return sd_ctx_check(c, ops->to_bf16_conv_transposed(sd_f32(w), copy, w->shape[0], w->shape[1], (int)w->shape[2],
                                                            (int)w->shape[3]));
    if (layout != LOWP_KRSC) {
        for (int i = 0; i < count; i++)
            if (!sd_ctx_check(c, ops->to_f16(sd_f32(ws[i]), copy + i * n, n))) return 0;
        return 1;
    }
    sd_f16 *tmp = c->be->mem_alloc((size_t)n * sizeof(sd_f16));
    if (!tmp) {
        sd_ctx_fail(c, SD_ERR_OOM, "out of memory reordering the fp16 copy of weight '%s' (%lld values)", w->name,
                    (long long)n);
        return 0;
    }
    const int ok = sd_ctx_check(c, ops->to_f16(sd_f32(w), tmp, n)) &&
                   sd_ctx_check(c, ops->transpose(tmp, copy, w->shape[0], w->shape[1], w->shape[2] * w->shape[3]));
    c->be->mem_free(tmp); /* waits for the transpose on a GPU */
    return ok;
}

/* The fp16 copy of weights ws[0..count) (F32, on the context's device, equal shapes when packed)
 * in a layout (LOWP_AS_IS, LOWP_KRSC; LOWP_PACK for count > 1; LOWP_BF16, also for count > 1:
 * LOWP_BF16_PACK), made on first use and remade
 * when the first weight's data moved (sd_ctx_adopt_weights). A 1x1 kernel's KRSC order is its
 * KCRS order: one copy serves both. */
static const sd_f16 *lowp_weights_copy(sd_ctx *c, const sd_tensor *const *ws, int count, int layout) {
    if (c->status != SD_OK) return NULL;
    const sd_tensor *w = ws[0];
    for (int i = 0; i < count; i++)
        if (ws[i]->dtype != SD_F32 || ws[i]->device != c->device || !sd_same_shape(ws[i], w)) {
            sd_ctx_fail(c, SD_ERR_INTERNAL, "weight '%s': an fp16 copy needs F32 tensors of one shape on the "
                        "context's device", ws[i]->name);
            return NULL;
        }
    if (count > 1) layout = (layout == LOWP_BF16 ? LOWP_BF16_PACK : LOWP_PACK) + count - 1;
    if (!c->lowp_weights && !(c->lowp_weights = calloc(1, sizeof *c->lowp_weights))) {
        sd_ctx_fail(c, SD_ERR_OOM, "out of host memory for the fp16 weight table");
        return NULL;
    }
    if (layout == LOWP_KRSC && (w->ndim != 4 || w->shape[2] * w->shape[3] == 1)) layout = LOWP_AS_IS;
    struct sd_lowp_weights *t = c->lowp_weights;
    if ((t->used + 1) * 2 > t->cap && !lowp_grow(t)) {
        sd_ctx_fail(c, SD_ERR_OOM, "out of host memory for the fp16 weight table");
        return NULL;
    }
    lowp_entry *e = lowp_find(t, w, layout);
    const sd_tensor *packed[SD_LINEAR_MANY_MAX - 1] = {NULL};
    for (int i = 1; i < count; i++) packed[i - 1] = ws[i];
    if (e->weight && e->data == w->data && !memcmp(e->packed, packed, sizeof packed)) return e->copy;
    if (e->weight) { /* same header, moved data (or packed with other weights): the old copy is stale */
        c->be->mem_free(e->copy);
        t->bytes -= e->bytes;
        t->used--;
        *e = (lowp_entry){0};
    }
    const int64_t n = sd_numel(w) * count;
    sd_f16 *copy = c->be->mem_alloc((size_t)n * sizeof(sd_f16));
    if (!copy) {
        sd_ctx_fail(c, SD_ERR_OOM, "out of memory for the fp16 copy of weight '%s'%s (%lld values)", w->name,
                    count > 1 ? " and the ones packed with it" : "", (long long)n);
        return NULL;
    }
    if (!lowp_fill(c, ws, count, layout, copy)) {
        c->be->mem_free(copy);
        return NULL;
    }
    *e = (lowp_entry){.weight = w, .layout = layout, .data = w->data, .copy = copy, .bytes = (size_t)n * sizeof(sd_f16)};
    memcpy(e->packed, packed, sizeof packed);
    t->used++;
    t->bytes += e->bytes;
    return copy;
}

static const sd_f16 *lowp_weight_layout(sd_ctx *c, const sd_tensor *w, int layout) {
    return lowp_weights_copy(c, &w, 1, layout);
}

static const sd_f16 *lowp_weight(sd_ctx *c, const sd_tensor *w) { return lowp_weight_layout(c, w, LOWP_AS_IS); }

const sd_f16 *sd_lowp_weight_bf16(sd_ctx *c, const sd_tensor *w) {
    if (c->status == SD_OK && (!c->be->f16 || !c->be->f16->to_bf16)) {
        sd_ctx_fail(c, SD_ERR_INTERNAL, "weight '%s': the %s backend makes no bfloat16 copies", w->name, c->be->name);
        return NULL;
    }
    return lowp_weight_layout(c, w, LOWP_BF16);
}

const sd_f16 *sd_lowp_weights_bf16_stacked(sd_ctx *c, const sd_tensor *const *ws, int count) {
    if (c->status == SD_OK && (count < 2 || count > SD_LINEAR_MANY_MAX || !c->be->f16 || !c->be->f16->to_bf16)) {
        sd_ctx_fail(c, SD_ERR_INTERNAL, "weight '%s': no stacked bfloat16 copy of %d weights on the %s backend",
                    ws[0]->name, count, c->be->name);
        return NULL;
    }
    return lowp_weights_copy(c, ws, count, LOWP_BF16);
}

const sd_f16 *sd_lowp_conv_weight_bf16t(sd_ctx *c, const sd_tensor *w) {
    if (c->status == SD_OK && (!c->be->f16 || !c->be->f16->to_bf16_conv_transposed || w->ndim != 4)) {
        sd_ctx_fail(c, SD_ERR_INTERNAL, "weight '%s': the %s backend makes no transposed bfloat16 convolution copies%s",
                    w->name, c->be->name, w->ndim != 4 ? " (not a 4-d weight)" : "");
        return NULL;
    }
    return lowp_weight_layout(c, w, LOWP_BF16_CONVT);
}

size_t sd_ctx_lowp_weight_bytes(const sd_ctx *c) { return c->lowp_weights ? c->lowp_weights->bytes : 0; }

/* ------------------------------------------------------------------------------------------------
 * Channels-last feature maps (sd_ctx.channels_last, sd_tensor.channels_last)
 * --------------------------------------------------------------------------------------------- */

int sd_ctx_channels_last(const sd_ctx *c) {
    const sd_f16_ops *o = c->be->f16;
    return c->channels_last && o && o->to_f16_nhwc && o->to_f32_nchw && o->conv2d_nhwc && o->group_norm_nhwc &&
           o->add_channel_bias_nhwc && o->concat_channels_nhwc && o->upsample_nearest_nhwc;
}

/* A fp16 map (B, C, H, W) in the other layout: [B, C, S] <-> [B, S, C], one transpose
 * (f16 transpose: y[b, c, r] = x[b, r, c]). */
static sd_tensor *relayout(sd_ctx *c, sd_tensor *x, int to_channels_last) {
    const sd_f16_ops *ops = f16_ops(c, "channels-last layout");
    sd_tensor *y = ops ? new_dtype(c, SD_F16, 4, x->shape) : NULL;
    if (!y) return NULL;
    const int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    sd_ctx_check(c, to_channels_last ? ops->transpose(f16_of(x), f16_of(y), B, C, S)
                                     : ops->transpose(f16_of(x), f16_of(y), B, S, C));
    y->channels_last = to_channels_last;
    record_same_values(c, y, x);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_to_channels_last(sd_ctx *c, sd_tensor *x) {
    NN_GUARD(c, x);
    if (x->channels_last || x->dtype != SD_F16 || x->ndim != 4 || !sd_ctx_channels_last(c)) return x;
    return relayout(c, x, 1);
}

/* x in NCHW order: x itself unless it is a channels-last map (for ops without a channels-last
 * form, and geometries their form does not take). */
static sd_tensor *nchw(sd_ctx *c, sd_tensor *x) {
    if (!x || c->status != SD_OK || !x->channels_last) return x;
    return relayout(c, x, 0);
}

/* A header over x's memory with a new shape, in the arena (the tensor views of this file). */
static sd_tensor *view_header(sd_ctx *c, sd_tensor *x, int ndim, const int64_t *shape) {
    sd_tensor *v = sd_arena_alloc_host(c->arena, sizeof *v); /* a header: host memory */
    if (!v) {
        c->status = SD_ERR_OOM;
        return NULL;
    }
    *v = sd_view(x, ndim, shape);
    return v;
}

sd_tensor *sd_to_dtype(sd_ctx *c, sd_tensor *x, sd_dtype dtype) {
    NN_GUARD(c, x);
    if (x->dtype == dtype) return x;
    if (!((x->dtype == SD_F32 && dtype == SD_F16) || (x->dtype == SD_F16 && dtype == SD_F32)))
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "to_dtype: %s to %s", sd_dtype_name(x->dtype), sd_dtype_name(dtype));
    const sd_f16_ops *ops = f16_ops(c, "to_dtype");
    if (!ops) return NULL;
    sd_tensor *y = new_dtype(c, dtype, x->ndim, x->shape);
    if (!y) return NULL;
    if (x->channels_last) /* an F32 map is NCHW: widened and reordered in one pass */
        sd_ctx_check(c, ops->to_f32_nchw(f16_of(x), NULL, NULL, sd_f32(y), x->shape[0], x->shape[1],
                                         x->shape[2] * x->shape[3]));
    else if (dtype == SD_F16)
        sd_ctx_check(c, ops->to_f16(sd_f32(x), f16_of(y), sd_numel(x)));
    else
        sd_ctx_check(c, ops->to_f32(f16_of(x), sd_f32(y), sd_numel(x)));
    record_same_values(c, y, x);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_new(sd_ctx *c, int ndim, const int64_t *shape) { return new_dtype(c, SD_F32, ndim, shape); }

sd_tensor *sd_new4(sd_ctx *c, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    return new4_dtype(c, SD_F32, ndim, d0, d1, d2, d3);
}

sd_tensor *sd_keep_new(sd_ctx *c, int ndim, const int64_t *shape) {
    if (c->status != SD_OK) return NULL;
    sd_tensor *t = sd_arena_tensor(c->keep, SD_F32, ndim, shape);
    if (!t) {
        c->status = SD_ERR_OOM;
        return NULL;
    }
    t->device = c->device;
    return t;
}

sd_tensor *sd_keep(sd_ctx *c, const sd_tensor *x) {
    NN_GUARD(c, x);
    if (!f32_only(c, x, "keep")) return NULL;
    sd_tensor *t = sd_keep_new(c, x->ndim, x->shape);
    if (t) sd_ctx_check(c, c->be->copy(sd_f32(t), sd_f32(x), sd_numel(x)));
    return c->status == SD_OK ? t : NULL;
}

sd_status sd_assign(sd_ctx *c, sd_tensor *dst, const sd_tensor *src) {
    if (c->status != SD_OK) return c->status;
    if (!dst || !src || sd_numel(dst) != sd_numel(src) || dst->dtype != SD_F32 || src->dtype != SD_F32)
        return c->status = sd_fail(SD_ERR_INTERNAL, "assign: mismatched tensors");
    sd_ctx_check(c, c->be->copy(sd_f32(dst), sd_f32(src), sd_numel(src)));
    return c->status;
}

sd_tensor *sd_upload(sd_ctx *c, const sd_tensor *host) {
    NN_GUARD(c, host);
    if (host->dtype != SD_F32)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "upload '%s': expected F32, got %s", host->name,
                           sd_dtype_name(host->dtype));
    sd_tensor *t = sd_new(c, host->ndim, host->shape);
    if (!t) return NULL;
    sd_ctx_check(c, c->be->upload(t->data, host->data, sd_nbytes(host)));
    return c->status == SD_OK ? t : NULL;
}

sd_status sd_download(sd_ctx *c, const sd_tensor *dev, sd_tensor *host) {
    if (c->status != SD_OK) return c->status;
    if (!dev || !host || sd_numel(dev) != sd_numel(host) || host->dtype != SD_F32 || dev->dtype != SD_F32)
        return c->status = sd_fail(SD_ERR_INTERNAL, "download: mismatched tensors");
    sd_ctx_check(c, c->be->download(host->data, dev->data, sd_nbytes(dev)));
    return c->status;
}

sd_tensor *sd_download_new(sd_ctx *c, const sd_tensor *dev) {
    NN_GUARD(c, dev);
    sd_tensor *host = sd_tensor_new(SD_F32, dev->ndim, dev->shape);
    if (!host) {
        c->status = SD_ERR_OOM;
        return NULL;
    }
    if (sd_download(c, dev, host) != SD_OK) {
        sd_tensor_free(host);
        return NULL;
    }
    return host;
}

sd_status sd_ctx_adopt_weights(sd_ctx *c, sd_weights *w) {
    if (c->status != SD_OK) return c->status;
    /* new weights for this context: fp16 copies are remade from them on first use (a freed store's
     * tensors could come back at the same addresses) */
    lowp_weights_free(c);
    for (int i = 0; i < sd_weights_count(w); i++) {
        sd_tensor *t = sd_weights_tensor_at(w, i);
        if (t->device == c->device || t->dtype != SD_F32) continue;
        if (t->device != SD_DEVICE_CPU)
            return c->status = sd_fail(SD_ERR_INTERNAL, "tensor '%s' is on device %d, the context on %d",
                                       t->name, t->device, c->device);
        void *dev = c->be->mem_alloc(sd_nbytes(t));
        if (!dev)
            return c->status = sd_fail_context(SD_ERR_OOM, "moving '%s' (%s) to the device: ",
                                               t->name, sd_weights_source(w));
        sd_status st = c->be->upload(dev, t->data, sd_nbytes(t));
        if (st != SD_OK) {
            c->be->mem_free(dev);
            return c->status = st;
        }
        if (t->owns_data) free(t->data);
        t->data = dev;
        t->device = c->device;
        t->owns_data = 1; /* released through sd_set_device_free's hook */
    }
    return SD_OK;
}

sd_tensor *sd_reshape(sd_ctx *c, sd_tensor *x, int ndim, const int64_t *shape) {
    NN_GUARD(c, x);
    char a[96], b[96];
    if (!(x = nchw(c, x))) return NULL;
    if (sd_shape_numel(ndim, shape) != sd_numel(x))
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "reshape %s to %s: element counts differ",
                           shape_of(x, a, sizeof a), sd_shape_str(ndim, shape, b, sizeof b));
    sd_tensor *v = view_header(c, x, ndim, shape);
    if (!v) return NULL;
    sd_tape_node *node = sd_tape_record(c, SD_OP_VIEW, v, x, NULL, NULL);
    if (node) node->attr.view.offset = 0;
    return c->status == SD_OK ? v : NULL;
}

sd_tensor *sd_reshape4(sd_ctx *c, sd_tensor *x, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3) {
    int64_t shape[4] = {d0, d1, d2, d3};
    return sd_reshape(c, x, ndim, shape);
}

sd_tensor *sd_slice0(sd_ctx *c, sd_tensor *x, int64_t start, int64_t count) {
    NN_GUARD(c, x);
    if (start < 0 || count < 0 || start + count > x->shape[0])
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "slice [%lld, %lld) of a first axis of %lld",
                           (long long)start, (long long)(start + count), (long long)x->shape[0]);
    sd_tensor *v = view_header(c, x, x->ndim, x->shape);
    if (!v) return NULL;
    v->shape[0] = count;
    const int64_t row = sd_numel(x) / (x->shape[0] ? x->shape[0] : 1);
    v->data = (char *)x->data + (size_t)(start * row) * sd_dtype_size(x->dtype);
    sd_tape_node *node = sd_tape_record(c, SD_OP_VIEW, v, x, NULL, NULL);
    if (node) node->attr.view.offset = start * row;
    return c->status == SD_OK ? v : NULL;
}

/* ------------------------------------------------------------------------------------------------
 * Layers
 * --------------------------------------------------------------------------------------------- */

/* Fast mode's F32 linears (a gradient step's forward, whose activations stay F32 for the tape) on
 * the fp16 copy of a frozen checkpoint weight (sd_f16_ops.linear_f32io): where the context's
 * forwards store fp16, i.e. fast mode on a device with the fp16 table. The F32 weight stays what
 * the backward reads. */
static int f32_linear_on_f16_weight(const sd_ctx *c, const sd_linear_w *l) {
    return c->activations == SD_F16 && c->be->f16 && c->be->f16->linear_f32io && l->frozen &&
           !l->weight->requires_grad;
}

/* y = x·Wᵀ + b (+ r), the residual r (NULL: none) summed in the GEMM; computed, not recorded
 * (linear_plus and the map forms below record it). x and r in token (or NCHW) order. */
static sd_tensor *linear_compute(sd_ctx *c, sd_tensor *x, const sd_linear_w *l, sd_tensor *r) {
    NN_GUARD(c, x, l, l->weight);
    char a[96], b[96];
    const sd_tensor *w = l->weight;
    const int conv1x1 = w->ndim == 4 && w->shape[2] == 1 && w->shape[3] == 1;
    if (!(w->ndim == 2 || conv1x1))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "linear '%s': weight %s is not a matrix", w->name,
                           shape_of(w, a, sizeof a));
    const int64_t N = w->shape[0], K = w->shape[1];
    if (x->ndim < 1 || x->shape[x->ndim - 1] != K)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "linear '%s': input %s does not end in %lld", w->name,
                           shape_of(x, a, sizeof a), (long long)K);
    if (l->bias && (l->bias->ndim != 1 || l->bias->shape[0] != N))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "linear '%s': bias %s, expected (%lld)", l->bias->name,
                           shape_of(l->bias, b, sizeof b), (long long)N);
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = N;
    const int64_t M = sd_numel(x) / (K ? K : 1);
    if (r && (sd_numel(r) != M * N || r->dtype != x->dtype || r->device != c->device))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "linear '%s' + residual: residual %s (%s) for an output of %lld x %lld (%s)",
                           w->name, shape_of(r, a, sizeof a), sd_dtype_name(r->dtype), (long long)M, (long long)N,
                           sd_dtype_name(x->dtype));
    sd_tensor *y = NULL;
    if (x->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "linear");
        const sd_f16 *wb = ops ? lowp_weight(c, w) : NULL;
        const sd_f16 *bb = wb && l->bias ? lowp_weight(c, l->bias) : NULL;
        y = wb ? new_dtype(c, SD_F16, x->ndim, shape) : NULL;
        if (y && (bb || !l->bias))
            sd_ctx_check(c, ops->linear(f16_of(x), wb, bb, r ? f16_of(r) : NULL, f16_of(y), M, K, N));
    } else {
        if (!f32_only(c, x, "linear") || !(y = sd_new(c, x->ndim, shape))) return NULL;
        const float *b32 = l->bias ? sd_f32(l->bias) : NULL, *r32 = r ? sd_f32(r) : NULL;
        if (f32_linear_on_f16_weight(c, l)) {
            const sd_f16 *wb = lowp_weight(c, w);
            if (wb) sd_ctx_check(c, c->be->f16->linear_f32io(sd_f32(x), wb, b32, r32, sd_f32(y), M, K, N));
        } else {
            sd_ctx_check(c, c->be->linear(sd_f32(x), sd_f32(w), b32, r32, sd_f32(y), M, K, N));
        }
    }
    return c->status == SD_OK ? y : NULL;
}

/* The tape's record of y = x·Wᵀ + b (+ r), as an unfused linear and add would have recorded it: a
 * linear whose output (with r, a header over y's memory, never read: the linear's backward needs
 * only x and W) feeds an add of r. map_in / map_out: x / y is a channels-last map whose memory the
 * linear read / wrote as tokens (sd_tape_node.attr.linear). */
static void record_linear(sd_ctx *c, sd_tensor *y, sd_tensor *x, const sd_linear_w *l, sd_tensor *r, int map_in,
                          int map_out) {
    if (!c->tape || c->status != SD_OK) return;
    sd_tensor *product = r ? view_header(c, y, y->ndim, y->shape) : y;
    if (!product) return;
    sd_tape_node *node = sd_tape_record(c, SD_OP_LINEAR, product, x, l->weight, l->bias);
    if (node) {
        node->attr.linear.frozen = l->frozen;
        node->attr.linear.map_in = map_in;
        node->attr.linear.map_out = map_out;
    }
    if (r) sd_tape_record(c, SD_OP_ADD, y, product, r, NULL);
}

/* The linear layer: y = x·Wᵀ + b (+ r), recorded. */
static sd_tensor *linear_plus(sd_ctx *c, sd_tensor *x, const sd_linear_w *l, sd_tensor *r) {
    NN_GUARD(c, x, l, l->weight); /* a missing input fails the context, as before the split */
    if (!(x = nchw(c, x)) || (r && !(r = nchw(c, r)))) return NULL;
    sd_tensor *y = linear_compute(c, x, l, r);
    if (y) record_linear(c, y, x, l, r, 0, 0);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_linear(sd_ctx *c, sd_tensor *x, const sd_linear_w *l) { return linear_plus(c, x, l, NULL); }

/* A channels-last fp16 map [B, C, H, W], whose memory is the tokens [B, H·W, C] a per-pixel
 * linear reads or writes in place. */
static int map_holds_tokens(const sd_tensor *x) {
    return x && x->ndim == 4 && x->dtype == SD_F16 && x->channels_last;
}

/* Whether the tape records a per-pixel linear of l on a channels-last map as such (map_in /
 * map_out) rather than on a token view behind a transpose: where its backward then runs, the data
 * gradient on the weight's bf16 copy with the map's side in NCHW order (autograd.c,
 * backward_linear_map), and nothing else of it needs a gradient. */
static int records_on_map(const sd_ctx *c, const sd_linear_w *l) {
    return c->tape && c->be->f16 && c->be->f16->linear_backward_data_bf16w_map &&
           sd_linear_bf16_data_gradient(c, l->weight, l->frozen) && !(l->bias && l->bias->requires_grad);
}

sd_tensor *sd_linear_of_map(sd_ctx *c, sd_tensor *map, const sd_linear_w *l) {
    NN_GUARD(c, map, l, l->weight);
    if (!map_holds_tokens(map) || !records_on_map(c, l)) return sd_linear(c, sd_nchw_to_tokens(c, map), l);
    const int64_t tokens_shape[3] = {map->shape[0], map->shape[2] * map->shape[3], map->shape[1]};
    sd_tensor *tokens = view_header(c, map, 3, tokens_shape);
    sd_tensor *y = tokens ? linear_compute(c, tokens, l, NULL) : NULL;
    if (y) record_linear(c, y, map, l, NULL, 1, 0);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_linear_add_map(sd_ctx *c, sd_tensor *x, const sd_linear_w *l, sd_tensor *residual) {
    NN_GUARD(c, x, l, l->weight, residual);
    char a[96];
    if (residual->ndim != 4)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "linear '%s' + map: residual %s is not a map (B, C, H, W)",
                           l->weight->name, shape_of(residual, a, sizeof a));
    const int64_t B = residual->shape[0], C = residual->shape[1], H = residual->shape[2], W = residual->shape[3];
    if (!map_holds_tokens(residual) || !records_on_map(c, l)) { /* through token order */
        if (residual->dtype == SD_F16) /* the residual in the GEMM's epilogue */
            return sd_tokens_to_nchw(c, sd_linear_add(c, x, l, sd_nchw_to_tokens(c, residual)), H, W);
        return sd_add(c, sd_tokens_to_nchw(c, sd_linear(c, x, l), H, W), residual);
    }
    const int64_t tokens_shape[3] = {B, H * W, C};
    sd_tensor *r_tokens = view_header(c, residual, 3, tokens_shape);
    sd_tensor *y_tokens = r_tokens ? linear_compute(c, x, l, r_tokens) : NULL;
    sd_tensor *y = y_tokens ? view_header(c, y_tokens, 4, residual->shape) : NULL;
    if (!y) return NULL;
    y->channels_last = 1;
    record_linear(c, y, x, l, residual, 0, 1);
    return c->status == SD_OK ? y : NULL;
}

sd_status sd_linear_many(sd_ctx *c, sd_tensor *x, const sd_linear_w *const *ls, int count, sd_tensor **outs) {
    for (int i = 0; i < count; i++) outs[i] = NULL;
    if (c->status != SD_OK || !x) return c->status != SD_OK ? c->status : SD_ERR_INTERNAL;
    if (count < 1 || count > SD_LINEAR_MANY_MAX) {
        sd_ctx_fail(c, SD_ERR_INTERNAL, "linear_many: %d projections", count);
        return c->status;
    }
    /* fp16 maps; or F32 maps on the fp16 weight copies (a gradient step's forward: x rounded to
     * fp16 once for all the products, not once per projection) */
    const sd_f16_ops *ops = c->be->f16;
    int batched = count > 1 && ops &&
                  !x->channels_last &&
                  (x->dtype == SD_F16 ? ops->linear_batched != NULL
                                      : x->dtype == SD_F32 && x->device == c->device && ops->linear_batched_f32io);
    const sd_tensor *ws[SD_LINEAR_MANY_MAX];
    const float *bs[SD_LINEAR_MANY_MAX];
    int biased = 0;
    for (int i = 0; i < count && batched; i++) {
        ws[i] = ls[i]->weight;
        bs[i] = ls[i]->bias ? sd_f32(ls[i]->bias) : NULL;
        biased |= bs[i] != NULL;
        /* biases on the F32 path only (the fp16 op has none) */
        batched = ws[i] && ws[i]->ndim == 2 && (!ls[i]->bias || x->dtype == SD_F32) && ls[i]->frozen &&
                  sd_same_shape(ws[i], ws[0]) && x->shape[x->ndim - 1] == ws[i]->shape[1] &&
                  (x->dtype == SD_F16 || f32_linear_on_f16_weight(c, ls[i]));
    }
    if (!batched) { /* one by one: fp16 maps with biases, other shapes, F32 maps on F32 weights */
        for (int i = 0; i < count; i++) outs[i] = sd_linear(c, x, ls[i]);
        return c->status;
    }
    const int64_t N = ws[0]->shape[0], K = ws[0]->shape[1], M = sd_numel(x) / K;
    const sd_f16 *wb = lowp_weights_copy(c, ws, count, LOWP_PACK);
    const int64_t block_shape[2] = {count * M, N};
    sd_tensor *block = wb ? new_dtype(c, x->dtype, 2, block_shape) : NULL; /* [count, M, N] */
    if (!block ||
        !sd_ctx_check(c, x->dtype == SD_F16 ? ops->linear_batched(f16_of(x), wb, f16_of(block), M, K, N, count)
                                            : ops->linear_batched_f32io(sd_f32(x), wb, biased ? bs : NULL,
                                                                        sd_f32(block), M, K, N, count)))
        return c->status != SD_OK ? c->status : SD_ERR_OOM;
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = N;
    for (int i = 0; i < count; i++) {
        if (!(outs[i] = view_header(c, block, x->ndim, shape))) return SD_ERR_OOM;
        outs[i]->data = (char *)block->data + (size_t)(i * M * N) * sd_dtype_size(x->dtype);
        /* the tape sees the linears one by one (their backward reads x and the F32 weight only) */
        sd_tape_node *node = sd_tape_record(c, SD_OP_LINEAR, outs[i], x, ls[i]->weight, ls[i]->bias);
        if (node) node->attr.linear.frozen = ls[i]->frozen;
    }
    return c->status;
}

sd_status sd_linear_grouped(sd_ctx *c, sd_tensor *const *xs, const sd_linear_w *const *ls, int count, sd_tensor **outs) {
    enum { MAX_GROUPED = 256 };
    for (int i = 0; i < count; i++) outs[i] = NULL;
    if (c->status != SD_OK) return c->status;
    if (count < 0 || count > MAX_GROUPED)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "linear_grouped: %d linears (at most %d)", count, MAX_GROUPED), c->status;
    char done[MAX_GROUPED] = {0};
    for (int first = 0; first < count && c->status == SD_OK; first++) {
        if (done[first]) continue;
        const sd_linear_w *group[SD_LINEAR_MANY_MAX];
        int members[SD_LINEAR_MANY_MAX], n = 0;
        for (int j = first; j < count && n < SD_LINEAR_MANY_MAX; j++)
            if (!done[j] && xs[j] == xs[first] && sd_same_shape(ls[j]->weight, ls[first]->weight)) {
                group[n] = ls[j];
                members[n++] = j;
                done[j] = 1;
            }
        sd_tensor *y[SD_LINEAR_MANY_MAX];
        if (sd_linear_many(c, xs[first], group, n, y) != SD_OK) break;
        for (int j = 0; j < n; j++) outs[members[j]] = y[j];
    }
    return c->status;
}

sd_tensor *sd_linear_add(sd_ctx *c, sd_tensor *x, const sd_linear_w *l, sd_tensor *residual) {
    if (c->status == SD_OK && !residual) return sd_ctx_fail(c, SD_ERR_INTERNAL, "linear + residual: no residual");
    return linear_plus(c, x, l, residual);
}

/* Fast mode's F32 convolutions of the UNet (a gradient step's forward, whose activations stay F32
 * for the tape) on the weight's fp16 KRSC copy, channels-last: x rounded to fp16 in one pass,
 * the fp16 forward's convolution (product rounded, bias added, rounded), widened back to F32 NCHW
 * in one pass. cuDNN ran the step's F32 convolutions in TF32 on NCHW maps (the step's
 * convolutions: 56.8 TFLOP/s on an H200), the fp16 channels-last ones are tensor-core native. The
 * two fp16 maps live above a mark of the arena, released after (the arena keeps its chunks: no
 * device allocation inside a captured step). The tape records the F32 convolution: its backward
 * reads the F32 weight. */
static int f32_conv_on_f16_weight(const sd_ctx *c, const sd_conv_w *cw, const sd_conv_geom *g, int symmetric) {
    return c->activations == SD_F16 && cw->f16_in_f32 && !cw->weight->requires_grad && symmetric &&
           sd_ctx_channels_last(c) && g->batch > 0;
}

/* y = conv(x) (+ v[b, c]) (+ r): the channel bias and residual (F32, either NULL) added in F32 by the
 * widening pass, as add_channel_bias and add would after it (sd_conv2d_fused) */
static void conv_f32_via_f16(sd_ctx *c, const sd_tensor *x, const sd_conv_w *cw, sd_tensor *y, const sd_conv_geom *g,
                             const sd_tensor *v, const sd_tensor *r) {
    const sd_f16_ops *ops = c->be->f16;
    const sd_f16 *wb = lowp_weight_layout(c, cw->weight, LOWP_KRSC);
    if (!wb) return;
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_tensor *x16 = new4_dtype(c, SD_F16, 4, g->batch, g->c_in, g->h_in, g->w_in);
    sd_tensor *y16 = x16 ? new4_dtype(c, SD_F16, 4, g->batch, g->c_out, g->h_out, g->w_out) : NULL;
    if (y16 && sd_ctx_check(c, ops->to_f16_nhwc(sd_f32(x), f16_of(x16), g->batch, g->c_in, g->h_in * g->w_in)) &&
        sd_ctx_check(c, ops->conv2d_nhwc(f16_of(x16), wb, cw->bias ? sd_f32(cw->bias) : NULL, NULL, NULL, f16_of(y16),
                                         g)))
        sd_ctx_check(c, ops->to_f32_nchw(f16_of(y16), v ? sd_f32(v) : NULL, r ? sd_f32(r) : NULL, sd_f32(y), g->batch,
                                         g->c_out, g->h_out * g->w_out));
    sd_arena_reset(c->arena, mark);
}

/* What the tape sees of a convolution whose output y may include v and r (summed in its epilogue
 * or widening pass): the unfused sequence, the convolution's output, then y' = conv + v, then
 * y = r + y'. The first two are headers over y's memory when the sums are in it: no backward reads
 * them (a convolution's needs x and W, the adds' only dL/dy). */
static void record_conv(sd_ctx *c, sd_tensor *y, sd_tensor *x, const sd_conv_w *cw, const sd_conv_geom *g,
                        sd_tensor *v, sd_tensor *r) {
    if (!c->tape || c->status != SD_OK) return;
    sd_tensor *conv_out = v || r ? view_header(c, y, 4, y->shape) : y;
    if (!conv_out) return;
    sd_tape_node *node = sd_tape_record(c, SD_OP_CONV2D, conv_out, x, cw->weight, cw->bias);
    if (node) {
        node->attr.conv.g = *g;
        node->attr.conv.frozen = cw->f16_in_f32;
    }
    sd_tensor *biased = conv_out;
    if (v) {
        if (!(biased = r ? view_header(c, y, 4, y->shape) : y)) return;
        sd_tape_record(c, SD_OP_ADD_CHANNEL_BIAS, biased, conv_out, v, NULL);
    }
    if (r) sd_tape_record(c, SD_OP_ADD, y, r, biased, NULL);
}

/* The convolution, whose epilogue also adds v (F32 [B, Co]) and r (the output's shape and dtype):
 * in the fp16 convolution's epilogue with fp16 storage, in the F32 widening pass of a gradient
 * step's convolution on fp16 copies (conv_f32_via_f16), else as separate ops (sd_conv2d_fused). */
static sd_tensor *conv2d_epilogue(sd_ctx *c, sd_tensor *x, const sd_conv_w *cw, int stride, int pad_top, int pad_left,
                                  int pad_bottom, int pad_right, sd_tensor *v, sd_tensor *r) {
    NN_GUARD(c, x, cw, cw->weight);
    char a[96], b[96];
    const sd_tensor *w = cw->weight;
    if (w->ndim != 4)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "conv '%s': weight %s is not 4-d", w->name,
                           shape_of(w, a, sizeof a));
    if (x->ndim != 4 || x->shape[1] != w->shape[1])
        return sd_ctx_fail(c, SD_ERR_SHAPE, "conv '%s': input %s does not match weight %s", w->name,
                           shape_of(x, a, sizeof a), shape_of(w, b, sizeof b));
    if (cw->bias && (cw->bias->ndim != 1 || cw->bias->shape[0] != w->shape[0]))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "conv '%s': bias %s does not match", cw->bias->name,
                           shape_of(cw->bias, a, sizeof a));
    sd_conv_geom g = {
        .batch = x->shape[0], .c_in = x->shape[1], .h_in = x->shape[2], .w_in = x->shape[3],
        .c_out = w->shape[0], .kh = (int)w->shape[2], .kw = (int)w->shape[3], .stride = stride,
        .pad_top = pad_top, .pad_left = pad_left,
    };
    g.h_out = (g.h_in + pad_top + pad_bottom - g.kh) / stride + 1;
    g.w_out = (g.w_in + pad_left + pad_right - g.kw) / stride + 1;
    if (g.h_out <= 0 || g.w_out <= 0)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "conv '%s': input %s too small", w->name,
                           shape_of(x, a, sizeof a));
    /* a channels-last map keeps its layout through the convolution (symmetric padding: the VAE's
     * asymmetric downsampler has no channels-last form) */
    if (x->dtype == SD_F16 && x->channels_last && (pad_bottom != pad_top || pad_right != pad_left) && !(x = nchw(c, x)))
        return NULL;
    if (v && (v->dtype != SD_F32 || v->ndim != 2 || v->shape[0] != g.batch || v->shape[1] != g.c_out))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "conv '%s': channel bias %s (expected F32 (%lld, %lld))", w->name,
                           shape_of(v, a, sizeof a), (long long)g.batch, (long long)g.c_out);
    const int64_t out_shape[4] = {g.batch, g.c_out, g.h_out, g.w_out};
    if (r && (r->dtype != x->dtype || r->ndim != 4 || memcmp(r->shape, out_shape, sizeof out_shape)))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "conv '%s': residual %s (%s) does not match the output (%s)", w->name,
                           shape_of(r, a, sizeof a), sd_dtype_name(r->dtype), sd_dtype_name(x->dtype));
    if (x->dtype == SD_F16) {
        /* the residual in the output's layout */
        if (r && r->channels_last != x->channels_last && !(r = x->channels_last ? sd_to_channels_last(c, r) : nchw(c, r)))
            return NULL;
        const sd_f16_ops *ops = f16_ops(c, "conv2d");
        const sd_f16 *wb = ops ? lowp_weight_layout(c, w, x->channels_last ? LOWP_KRSC : LOWP_AS_IS) : NULL;
        sd_tensor *y = wb ? new4_dtype(c, SD_F16, 4, g.batch, g.c_out, g.h_out, g.w_out) : NULL;
        if (!y) return NULL;
        y->channels_last = x->channels_last;
        const float *b32 = cw->bias ? sd_f32(cw->bias) : NULL, *v32 = v ? sd_f32(v) : NULL;
        const sd_f16 *r16 = r ? f16_of(r) : NULL;
        sd_ctx_check(c, x->channels_last ? ops->conv2d_nhwc(f16_of(x), wb, b32, v32, r16, f16_of(y), &g)
                                         : ops->conv2d(f16_of(x), wb, b32, v32, r16, f16_of(y), &g));
        record_conv(c, y, x, cw, &g, v, r);
        return c->status == SD_OK ? y : NULL;
    }
    if (!f32_only(c, x, "conv2d") || (r && !f32_only(c, r, "conv2d residual"))) return NULL;
    const int via_f16 = f32_conv_on_f16_weight(c, cw, &g, pad_bottom == pad_top && pad_right == pad_left);
    sd_tensor *y = sd_new4(c, 4, g.batch, g.c_out, g.h_out, g.w_out);
    if (!y) return NULL;
    /* the F32 epilogue rides in the widening pass of a convolution on fp16 copies; elsewhere (exact
     * mode: the oracle's sums) the convolution's output gets separate ops */
    const int fused = via_f16 && (v || r);
    if (via_f16)
        conv_f32_via_f16(c, x, cw, y, &g, v, r);
    else
        sd_ctx_check(c, c->be->conv2d(sd_f32(x), sd_f32(w), cw->bias ? sd_f32(cw->bias) : NULL, sd_f32(y), &g));
    record_conv(c, y, x, cw, &g, fused ? v : NULL, fused ? r : NULL);
    if (c->status != SD_OK) return NULL;
    if (!fused) {
        if (v) y = sd_add_channel_bias(c, y, v);
        return r ? sd_add(c, r, y) : y;
    }
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_conv2d_pad4(sd_ctx *c, sd_tensor *x, const sd_conv_w *cw, int stride, int pad_top, int pad_left,
                          int pad_bottom, int pad_right) {
    return conv2d_epilogue(c, x, cw, stride, pad_top, pad_left, pad_bottom, pad_right, NULL, NULL);
}

sd_tensor *sd_conv2d(sd_ctx *c, sd_tensor *x, const sd_conv_w *w, int stride, int pad) {
    return sd_conv2d_pad4(c, x, w, stride, pad, pad, pad, pad);
}

sd_tensor *sd_conv2d_fused(sd_ctx *c, sd_tensor *x, const sd_conv_w *w, int stride, int pad, sd_tensor *chan_bias,
                           sd_tensor *residual) {
    if (c->status != SD_OK || !x) return NULL;
    if (!residual || residual->dtype == x->dtype)
        return conv2d_epilogue(c, x, w, stride, pad, pad, pad, pad, chan_bias, residual);
    sd_tensor *y = sd_conv2d(c, x, w, stride, pad); /* mixed storage: the sums as separate ops */
    if (chan_bias) y = sd_add_channel_bias(c, y, chan_bias);
    return residual ? sd_add(c, residual, y) : y;
}

/* A group norm's (groups > 0) or a layer norm's (groups 0) node; stats: the (mean, rstd) per
 * (image, group) the forward kept for the backward, or NULL. */
static void record_norm(sd_ctx *c, sd_tensor *y, sd_tensor *x, const sd_norm_w *n, int groups, float eps, int silu,
                        const sd_tensor *stats) {
    sd_tape_node *node = sd_tape_record(c, groups ? SD_OP_GROUP_NORM : SD_OP_LAYER_NORM, y, x, n->weight, n->bias);
    if (node) {
        node->attr.norm.groups = groups;
        node->attr.norm.eps = eps;
        node->attr.norm.silu = silu;
        node->attr.norm.stats = stats;
    }
}

sd_tensor *sd_group_norm(sd_ctx *c, sd_tensor *x, const sd_norm_w *n, int groups, float eps, int silu) {
    NN_GUARD(c, x, n);
    char a[96];
    if (x->ndim < 2 || groups <= 0 || x->shape[1] % groups)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "group norm '%s': %s channels not divisible by %d groups",
                           n->weight ? n->weight->name : "?", shape_of(x, a, sizeof a), groups);
    const int64_t C = x->shape[1];
    if ((n->weight && sd_numel(n->weight) != C) || (n->bias && sd_numel(n->bias) != C))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "group norm '%s': affine size differs from %lld channels",
                           n->weight ? n->weight->name : "?", (long long)C);
    const int64_t S = sd_numel(x) / (x->shape[0] * C);
    if (x->dtype == SD_F16 && x->channels_last) {
        if (sd_group_norm_nhwc_supports(C, groups)) {
            const sd_f16_ops *ops = f16_ops(c, "group_norm");
            /* a call the tape will differentiate keeps its statistics, [B·groups, 2]: the backward
             * then reads them instead of making a pass over x to recompute them */
            sd_tensor *stats = NULL;
            if (ops && c->tape &&
                (sd_tape_needs_grad(c, x) || sd_tape_needs_grad(c, n->weight) || sd_tape_needs_grad(c, n->bias)) &&
                !(stats = sd_new4(c, 1, x->shape[0] * groups * 2, 0, 0, 0)))
                return NULL;
            sd_tensor *y = ops ? new_dtype(c, SD_F16, x->ndim, x->shape) : NULL;
            if (y) {
                y->channels_last = 1;
                sd_ctx_check(c, ops->group_norm_nhwc(f16_of(x), n->weight ? sd_f32(n->weight) : NULL,
                                                     n->bias ? sd_f32(n->bias) : NULL, f16_of(y), x->shape[0], C, S,
                                                     groups, eps, silu, stats ? sd_f32(stats) : NULL));
                record_norm(c, y, x, n, groups, eps, silu, stats);
            }
            return c->status == SD_OK ? y : NULL;
        }
        if (!(x = nchw(c, x))) return NULL;
    }
    if (x->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "group_norm");
        sd_tensor *y = ops ? new_dtype(c, SD_F16, x->ndim, x->shape) : NULL;
        if (y) {
            sd_ctx_check(c, ops->group_norm(f16_of(x), n->weight ? sd_f32(n->weight) : NULL,
                                            n->bias ? sd_f32(n->bias) : NULL, f16_of(y), x->shape[0], C, S, groups,
                                            eps, silu));
            record_norm(c, y, x, n, groups, eps, silu, NULL);
        }
        return c->status == SD_OK ? y : NULL;
    }
    if (!f32_only(c, x, "group_norm")) return NULL;
    sd_tensor *y = sd_new(c, x->ndim, x->shape);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->group_norm(sd_f32(x), n->weight ? sd_f32(n->weight) : NULL,
                                      n->bias ? sd_f32(n->bias) : NULL, sd_f32(y), x->shape[0], C,
                                      S, groups, eps, silu));
    record_norm(c, y, x, n, groups, eps, silu, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_layer_norm(sd_ctx *c, sd_tensor *x, const sd_norm_w *n, float eps) {
    NN_GUARD(c, x, n);
    const int64_t C = x->shape[x->ndim - 1];
    if ((n->weight && sd_numel(n->weight) != C) || (n->bias && sd_numel(n->bias) != C))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "layer norm '%s': affine size differs from %lld",
                           n->weight ? n->weight->name : "?", (long long)C);
    if (x->dtype == SD_F16 && !(x = nchw(c, x))) return NULL;
    if (x->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "layer_norm");
        sd_tensor *y = ops ? new_dtype(c, SD_F16, x->ndim, x->shape) : NULL;
        if (y) {
            sd_ctx_check(c, ops->layer_norm(f16_of(x), n->weight ? sd_f32(n->weight) : NULL,
                                            n->bias ? sd_f32(n->bias) : NULL, f16_of(y), sd_numel(x) / C, C, eps));
            record_norm(c, y, x, n, 0, eps, 0, NULL);
        }
        return c->status == SD_OK ? y : NULL;
    }
    if (!f32_only(c, x, "layer_norm")) return NULL;
    sd_tensor *y = sd_new(c, x->ndim, x->shape);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->layer_norm(sd_f32(x), n->weight ? sd_f32(n->weight) : NULL,
                                      n->bias ? sd_f32(n->bias) : NULL, sd_f32(y), sd_numel(x) / C,
                                      C, eps));
    record_norm(c, y, x, n, 0, eps, 0, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_unary(sd_ctx *c, sd_unary_op op, sd_tensor *x) {
    return sd_unary_param(c, op, x, 0.0f);
}

sd_tensor *sd_unary_param(sd_ctx *c, sd_unary_op op, sd_tensor *x, float alpha) {
    NN_GUARD(c, x);
    if (!f32_only(c, x, "unary")) return NULL;
    sd_tensor *y = sd_new(c, x->ndim, x->shape);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->unary(op, sd_f32(x), sd_f32(y), sd_numel(x), alpha));
    sd_tape_node *node = sd_tape_record(c, SD_OP_UNARY, y, x, NULL, NULL);
    if (node) {
        node->attr.unary.op = op;
        node->attr.unary.alpha = alpha;
    }
    return c->status == SD_OK ? y : NULL;
}

static sd_tensor *binary(sd_ctx *c, sd_binary_op op, sd_tensor *a, sd_tensor *b, const char *what) {
    NN_GUARD(c, a, b);
    char sa[96], sb[96];
    if (sd_numel(a) != sd_numel(b))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "%s: shapes %s and %s differ", what,
                           shape_of(a, sa, sizeof sa), shape_of(b, sb, sizeof sb));
    if (!same_dtype(c, a, b, what)) return NULL;
    if (a->dtype == SD_F16 && a->channels_last != b->channels_last && (!(a = nchw(c, a)) || !(b = nchw(c, b))))
        return NULL; /* one layout for both (the UNet's sums never mix them) */
    sd_tensor *y = NULL;
    if (a->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, what);
        if (!ops || !(y = new_dtype(c, SD_F16, a->ndim, a->shape))) return NULL;
        y->channels_last = a->channels_last;
        sd_ctx_check(c, ops->binary(op, f16_of(a), f16_of(b), f16_of(y), sd_numel(a)));
    } else {
        if (!f32_only(c, a, what) || !(y = sd_new(c, a->ndim, a->shape))) return NULL;
        sd_ctx_check(c, c->be->binary(op, sd_f32(a), sd_f32(b), sd_f32(y), sd_numel(a)));
    }
    static const sd_op_kind kinds[] = {[SD_BINARY_ADD] = SD_OP_ADD, [SD_BINARY_SUB] = SD_OP_SUB,
                                       [SD_BINARY_MUL] = SD_OP_MUL};
    sd_tape_record(c, kinds[op], y, a, b, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_add(sd_ctx *c, sd_tensor *a, sd_tensor *b) { return binary(c, SD_BINARY_ADD, a, b, "add"); }
sd_tensor *sd_sub(sd_ctx *c, sd_tensor *a, sd_tensor *b) { return binary(c, SD_BINARY_SUB, a, b, "sub"); }
sd_tensor *sd_mul(sd_ctx *c, sd_tensor *a, sd_tensor *b) { return binary(c, SD_BINARY_MUL, a, b, "mul"); }

sd_tensor *sd_axpby(sd_ctx *c, float alpha, sd_tensor *x, float beta, sd_tensor *z) {
    NN_GUARD(c, x, z);
    char sa[96], sb[96];
    if (sd_numel(x) != sd_numel(z))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "axpby: shapes %s and %s differ",
                           shape_of(x, sa, sizeof sa), shape_of(z, sb, sizeof sb));
    if (!f32_only(c, x, "axpby") || !f32_only(c, z, "axpby")) return NULL;
    sd_tensor *y = sd_new(c, x->ndim, x->shape);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->axpby(alpha, sd_f32(x), beta, sd_f32(z), sd_f32(y), sd_numel(x)));
    sd_tape_node *node = sd_tape_record(c, SD_OP_AXPBY, y, x, z, NULL);
    if (node) {
        node->attr.axpby.alpha = alpha;
        node->attr.axpby.beta = beta;
    }
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_axpby_dev(sd_ctx *c, const sd_tensor *coef, sd_tensor *x, sd_tensor *z) {
    NN_GUARD(c, coef, x, z);
    char sa[96], sb[96];
    if (sd_numel(x) != sd_numel(z))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "axpby_dev: shapes %s and %s differ",
                           shape_of(x, sa, sizeof sa), shape_of(z, sb, sizeof sb));
    if (coef->dtype != SD_F32 || sd_numel(coef) < 2 || coef->device != c->device)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "axpby_dev: the coefficients %s must be two F32 values on the "
                                            "context's device", shape_of(coef, sa, sizeof sa));
    if (!f32_only(c, x, "axpby_dev") || !f32_only(c, z, "axpby_dev")) return NULL;
    sd_tensor *y = sd_new(c, x->ndim, x->shape);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->axpby_dev((const float *)coef->data, sd_f32(x), sd_f32(z), sd_f32(y), sd_numel(x)));
    sd_tape_record(c, SD_OP_AXPBY_DEV, y, x, z, (sd_tensor *)coef);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_scale(sd_ctx *c, sd_tensor *x, float alpha) { return sd_axpby(c, alpha, x, 0.0f, x); }

sd_tensor *sd_clamp(sd_ctx *c, sd_tensor *x, float lo, float hi) {
    NN_GUARD(c, x);
    if (sd_tape_needs_grad(c, x))
        return sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "clamp: no backward (its input needs a gradient)");
    if (!f32_only(c, x, "clamp")) return NULL;
    sd_tensor *y = sd_new(c, x->ndim, x->shape);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->clamp(sd_f32(x), sd_f32(y), lo, hi, sd_numel(x)));
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_add_channel_bias(sd_ctx *c, sd_tensor *x, sd_tensor *v) {
    NN_GUARD(c, x, v);
    char sa[96], sb[96];
    if (x->ndim < 2 || v->ndim != 2 || v->shape[0] != x->shape[0] || v->shape[1] != x->shape[1])
        return sd_ctx_fail(c, SD_ERR_SHAPE, "channel bias: %s does not broadcast onto %s",
                           shape_of(v, sb, sizeof sb), shape_of(x, sa, sizeof sa));
    const int64_t S = sd_numel(x) / (x->shape[0] * x->shape[1]);
    if (!f32_only(c, v, "channel bias")) return NULL; /* the bias itself stays F32 */
    sd_tensor *y = NULL;
    if (x->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "channel bias");
        if (!ops || !(y = new_dtype(c, SD_F16, x->ndim, x->shape))) return NULL;
        y->channels_last = x->channels_last;
        sd_ctx_check(c, x->channels_last
                            ? ops->add_channel_bias_nhwc(f16_of(x), sd_f32(v), f16_of(y), x->shape[0], x->shape[1], S)
                            : ops->add_channel_bias(f16_of(x), sd_f32(v), f16_of(y), x->shape[0], x->shape[1], S));
    } else {
        if (!f32_only(c, x, "channel bias") || !(y = sd_new(c, x->ndim, x->shape))) return NULL;
        sd_ctx_check(c, c->be->add_channel_bias(sd_f32(x), sd_f32(v), sd_f32(y), x->shape[0], x->shape[1], S));
    }
    sd_tape_record(c, SD_OP_ADD_CHANNEL_BIAS, y, x, v, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_geglu(sd_ctx *c, sd_tensor *x) {
    NN_GUARD(c, x);
    const int64_t twoN = x->shape[x->ndim - 1];
    if (twoN % 2) return sd_ctx_fail(c, SD_ERR_SHAPE, "geglu: odd last dimension %lld", (long long)twoN);
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, x->shape, sizeof shape);
    shape[x->ndim - 1] = twoN / 2;
    if (x->dtype == SD_F16 && x->channels_last)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "geglu: a channels-last feature map (GEGLU takes tokens)");
    sd_tensor *y = NULL;
    if (x->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "geglu");
        if (!ops || !(y = new_dtype(c, SD_F16, x->ndim, shape))) return NULL;
        sd_ctx_check(c, ops->geglu(f16_of(x), f16_of(y), sd_numel(x) / twoN, twoN / 2));
    } else {
        if (!f32_only(c, x, "geglu") || !(y = sd_new(c, x->ndim, shape))) return NULL;
        sd_ctx_check(c, c->be->geglu(sd_f32(x), sd_f32(y), sd_numel(x) / twoN, twoN / 2));
    }
    sd_tape_record(c, SD_OP_GEGLU, y, x, NULL, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_concat_channels(sd_ctx *c, sd_tensor *a, sd_tensor *b) {
    NN_GUARD(c, a, b);
    char sa[96], sb[96];
    if (a->ndim != 4 || b->ndim != 4 || a->shape[0] != b->shape[0] || a->shape[2] != b->shape[2] ||
        a->shape[3] != b->shape[3])
        return sd_ctx_fail(c, SD_ERR_SHAPE, "concat: %s and %s", shape_of(a, sa, sizeof sa),
                           shape_of(b, sb, sizeof sb));
    if (!same_dtype(c, a, b, "concat")) return NULL;
    if (a->dtype == SD_F16 && a->channels_last != b->channels_last && (!(a = nchw(c, a)) || !(b = nchw(c, b))))
        return NULL;
    const int64_t B = a->shape[0], Ca = a->shape[1], Cb = b->shape[1], S = a->shape[2] * a->shape[3];
    sd_tensor *y = NULL;
    if (a->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "concat");
        if (!ops || !(y = new4_dtype(c, SD_F16, 4, B, Ca + Cb, a->shape[2], a->shape[3]))) return NULL;
        y->channels_last = a->channels_last;
        sd_ctx_check(c, a->channels_last ? ops->concat_channels_nhwc(f16_of(a), f16_of(b), f16_of(y), B, Ca, Cb, S)
                                         : ops->concat_channels(f16_of(a), f16_of(b), f16_of(y), B, Ca, Cb, S));
    } else {
        if (!f32_only(c, a, "concat") || !(y = sd_new4(c, 4, B, Ca + Cb, a->shape[2], a->shape[3]))) return NULL;
        sd_ctx_check(c, c->be->concat_channels(sd_f32(a), sd_f32(b), sd_f32(y), B, Ca, Cb, S));
    }
    sd_tape_record(c, SD_OP_CONCAT_CHANNELS, y, a, b, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_concat0(sd_ctx *c, sd_tensor *a, sd_tensor *b) {
    NN_GUARD(c, a, b);
    char sa[96], sb[96];
    int ok = a->ndim == b->ndim;
    for (int i = 1; ok && i < a->ndim; i++) ok = a->shape[i] == b->shape[i];
    if (!ok)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "concat along batch: %s and %s",
                           shape_of(a, sa, sizeof sa), shape_of(b, sb, sizeof sb));
    int64_t shape[SD_MAX_DIMS];
    memcpy(shape, a->shape, sizeof shape);
    shape[0] = a->shape[0] + b->shape[0];
    if (!f32_only(c, a, "concat0") || !f32_only(c, b, "concat0")) return NULL;
    sd_tensor *y = sd_new(c, a->ndim, shape);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->copy(sd_f32(y), sd_f32(a), sd_numel(a)));
    sd_ctx_check(c, c->be->copy(sd_f32(y) + sd_numel(a), sd_f32(b), sd_numel(b)));
    sd_tape_record(c, SD_OP_CONCAT0, y, a, b, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_upsample_nearest(sd_ctx *c, sd_tensor *x, int64_t Ho, int64_t Wo) {
    NN_GUARD(c, x);
    if (x->ndim != 4) return sd_ctx_fail(c, SD_ERR_SHAPE, "upsample: input is not 4-d");
    sd_tensor *y = NULL;
    if (x->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "upsample");
        if (!ops || !(y = new4_dtype(c, SD_F16, 4, x->shape[0], x->shape[1], Ho, Wo))) return NULL;
        y->channels_last = x->channels_last;
        sd_ctx_check(c, x->channels_last ? ops->upsample_nearest_nhwc(f16_of(x), f16_of(y), x->shape[0], x->shape[2],
                                                                      x->shape[3], x->shape[1], Ho, Wo)
                                         : ops->upsample_nearest(f16_of(x), f16_of(y), x->shape[0] * x->shape[1],
                                                                 x->shape[2], x->shape[3], Ho, Wo));
    } else {
        if (!f32_only(c, x, "upsample") || !(y = sd_new4(c, 4, x->shape[0], x->shape[1], Ho, Wo))) return NULL;
        sd_ctx_check(c, c->be->upsample_nearest(sd_f32(x), sd_f32(y), x->shape[0] * x->shape[1], x->shape[2],
                                                x->shape[3], Ho, Wo));
    }
    sd_tape_record(c, SD_OP_UPSAMPLE, y, x, NULL, NULL);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_max_pool2d(sd_ctx *c, sd_tensor *x, int kernel, int stride) {
    NN_GUARD(c, x);
    char a[96];
    if (x->ndim != 4 || kernel < 1 || stride < 1 || x->shape[2] < kernel || x->shape[3] < kernel)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "max_pool2d: input %s with kernel %d, stride %d (expected a "
                           "(B, C, H, W) tensor with H, W >= kernel)", shape_of(x, a, sizeof a), kernel, stride);
    if (sd_tape_needs_grad(c, x))
        return sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "max_pool2d: no backward (it serves metrics); "
                           "call it outside a gradient tape");
    if (!f32_only(c, x, "max_pool2d")) return NULL;
    const int64_t Ho = (x->shape[2] - kernel) / stride + 1, Wo = (x->shape[3] - kernel) / stride + 1;
    sd_tensor *y = sd_new4(c, 4, x->shape[0], x->shape[1], Ho, Wo);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->max_pool2d(sd_f32(x), sd_f32(y), x->shape[0] * x->shape[1], x->shape[2],
                                      x->shape[3], Ho, Wo, kernel, stride));
    return c->status == SD_OK ? y : NULL;
}

/* y[b, c, r] = x[b, r, c] into a new [B, C, R]-element tensor of shape (ndim, shape), x's dtype. */
static sd_tensor *transpose(sd_ctx *c, sd_tensor *x, int64_t B, int64_t R, int64_t C, int ndim, const int64_t *shape) {
    sd_tensor *y = NULL;
    if (x->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "transpose");
        if (!ops || !(y = new_dtype(c, SD_F16, ndim, shape))) return NULL;
        sd_ctx_check(c, ops->transpose(f16_of(x), f16_of(y), B, R, C));
    } else {
        if (!f32_only(c, x, "transpose") || !(y = sd_new(c, ndim, shape))) return NULL;
        sd_ctx_check(c, c->be->transpose(sd_f32(x), sd_f32(y), B, R, C));
    }
    record_transpose(c, y, x, B, R, C);
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_nchw_to_tokens(sd_ctx *c, sd_tensor *x) {
    NN_GUARD(c, x);
    if (x->ndim != 4) return sd_ctx_fail(c, SD_ERR_SHAPE, "nchw_to_tokens: input is not 4-d");
    const int64_t B = x->shape[0], C = x->shape[1], S = x->shape[2] * x->shape[3];
    const int64_t shape[3] = {B, S, C};
    if (x->channels_last) { /* already token order: a transpose in gradient space only */
        sd_tensor *v = view_header(c, x, 3, shape);
        if (v) record_transpose(c, v, x, B, C, S);
        return c->status == SD_OK ? v : NULL;
    }
    return transpose(c, x, B, C, S, 3, shape);
}

sd_tensor *sd_tokens_to_nchw(sd_ctx *c, sd_tensor *x, int64_t H, int64_t W) {
    NN_GUARD(c, x);
    if (x->ndim != 3 || x->shape[1] != H * W)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "tokens_to_nchw: %lld tokens for a %lldx%lld grid",
                           (long long)(x->ndim == 3 ? x->shape[1] : -1), (long long)H, (long long)W);
    const int64_t B = x->shape[0], S = x->shape[1], C = x->shape[2];
    const int64_t shape[4] = {B, C, H, W};
    if (x->dtype == SD_F16 && sd_ctx_channels_last(c)) { /* the tokens are the channels-last map */
        sd_tensor *v = view_header(c, x, 4, shape);
        if (!v) return NULL;
        v->channels_last = 1;
        record_transpose(c, v, x, B, S, C);
        return c->status == SD_OK ? v : NULL;
    }
    return transpose(c, x, B, S, C, 4, shape);
}

sd_tensor *sd_timestep_embedding(sd_ctx *c, sd_tensor *t, int dim, int flip_sin_to_cos, float shift) {
    NN_GUARD(c, t);
    if (!f32_only(c, t, "timestep_embedding")) return NULL;
    const int64_t B = sd_numel(t);
    sd_tensor *y = sd_new4(c, 2, B, dim, 0, 0);
    if (!y) return NULL;
    sd_ctx_check(c, c->be->timestep_embedding(sd_f32(t), sd_f32(y), B, dim, flip_sin_to_cos, shift));
    return c->status == SD_OK ? y : NULL;
}

sd_tensor *sd_embedding(sd_ctx *c, const sd_tensor *ids, const sd_tensor *table) {
    NN_GUARD(c, ids, table);
    if (ids->dtype != SD_I32 || ids->ndim != 2 || table->ndim != 2)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "embedding: expected I32 ids (B, S) and a 2-d table");
    if (sd_tape_needs_grad(c, table))
        return sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "embedding '%s': no backward to the table", table->name);
    const int32_t *id = ids->data;
    const int64_t count = sd_numel(ids);
    for (int64_t i = 0; i < count; i++)
        if (id[i] < 0 || id[i] >= table->shape[0])
            return sd_ctx_fail(c, SD_ERR_ARG, "token id %d at position %lld is outside the vocabulary of %lld (%s)",
                               id[i], (long long)i, (long long)table->shape[0], table->name);
    sd_tensor *y = sd_new4(c, 3, ids->shape[0], ids->shape[1], table->shape[1], 0);
    if (!y) return NULL;
    /* ids are host memory (validated above); the backend reads them from its own memory */
    int32_t *dev_ids = sd_arena_alloc(c->arena, (size_t)count * sizeof(int32_t));
    if (!dev_ids) {
        c->status = SD_ERR_OOM;
        return NULL;
    }
    if (!sd_ctx_check(c, c->be->upload(dev_ids, id, (size_t)count * sizeof(int32_t)))) return NULL;
    sd_ctx_check(c, c->be->embedding(dev_ids, sd_f32(table), sd_f32(y), count, table->shape[1]));
    return c->status == SD_OK ? y : NULL;
}

/* A fused attention's node; lse: the buffer the forward was handed (sd_backend.attention) */
static void record_attention(sd_ctx *c, sd_tensor *out, sd_tensor *q, sd_tensor *k, sd_tensor *v, int heads,
                             int causal, float scale, const sd_tensor *lse) {
    sd_tape_node *node = sd_tape_record(c, SD_OP_ATTENTION, out, q, k, v);
    if (node) {
        node->attr.attn.heads = heads;
        node->attr.attn.causal = causal;
        node->attr.attn.scale = scale;
        node->attr.attn.lse = lse;
    }
}

sd_tensor *sd_attention(sd_ctx *c, sd_tensor *q, sd_tensor *k, sd_tensor *v, int heads, int causal,
                        const sd_attn_site *site) {
    NN_GUARD(c, q, k, v);
    char a[96], b[96], d[96];
    if (q->ndim != 3 || k->ndim != 3 || v->ndim != 3 || q->shape[0] != k->shape[0] ||
        k->shape[0] != v->shape[0] || k->shape[1] != v->shape[1] || q->shape[2] != k->shape[2] ||
        heads <= 0 || q->shape[2] % heads || v->shape[2] % heads)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "attention: q %s, k %s, v %s with %d heads",
                           shape_of(q, a, sizeof a), shape_of(k, b, sizeof b),
                           shape_of(v, d, sizeof d), heads);
    const int64_t B = q->shape[0], Sq = q->shape[1], Sk = k->shape[1];
    const int D = (int)(q->shape[2] / heads), Dv = (int)(v->shape[2] / heads);
    const float scale = 1.0f / sqrtf((float)D);
    if (!same_dtype(c, q, k, "attention") || !same_dtype(c, q, v, "attention")) return NULL;
    sd_attn_hook *hook = site ? c->hook : NULL;
    const int hooked_maps = hook && hook->wants_probs && hook->edit_probs && hook->wants_probs(hook, site);
    if (q->dtype == SD_F16 && hooked_maps) {
        /* a controller reads or edits this site's maps: the site runs in F32 (maps as without fp16
         * storage), its output stored in fp16 like the rest of the forward */
        sd_tensor *out32 = sd_attention(c, sd_to_dtype(c, q, SD_F32), sd_to_dtype(c, k, SD_F32),
                                        sd_to_dtype(c, v, SD_F32), heads, causal, site);
        return sd_to_dtype(c, out32, SD_F16);
    }
    /* a call the tape will differentiate gets a buffer for the statistics the backend's backward
     * may reuse (the row normalisers: the GPU's flash backward then skips a pass over the keys) */
    sd_tensor *lse = NULL;
    if (!hooked_maps && c->tape && (sd_tape_needs_grad(c, q) || sd_tape_needs_grad(c, k) || sd_tape_needs_grad(c, v)) &&
        !(lse = sd_new4(c, 1, B * heads * Sq, 0, 0, 0)))
        return NULL;
    if (q->dtype == SD_F16) {
        const sd_f16_ops *ops = f16_ops(c, "attention");
        sd_tensor *out = ops ? new4_dtype(c, SD_F16, 3, B, Sq, v->shape[2], 0) : NULL;
        if (out)
            sd_ctx_check(c, ops->attention(f16_of(q), f16_of(k), f16_of(v), f16_of(out), B, Sq, Sk, heads, D, Dv,
                                           scale, causal, lse ? sd_f32(lse) : NULL));
        record_attention(c, out, q, k, v, heads, causal, scale, lse);
        return c->status == SD_OK ? out : NULL;
    }
    if (!f32_only(c, q, "attention")) return NULL;
    sd_tensor *out = sd_new4(c, 3, B, Sq, v->shape[2], 0);
    if (!out) return NULL;
    if (hooked_maps) {
        sd_tensor *probs = sd_new4(c, 3, B * heads, Sq, Sk, 0);
        if (!probs) return NULL;
        if (!sd_ctx_check(c, c->be->attention(sd_f32(q), sd_f32(k), sd_f32(v), sd_f32(out),
                                              sd_f32(probs), B, Sq, Sk, heads, D, Dv, scale, causal, NULL)))
            return NULL;
        if (causal && (sd_tape_needs_grad(c, q) || sd_tape_needs_grad(c, k)))
            return sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "attention: hooked causal maps have no backward");
        sd_tape_node *node = sd_tape_record(c, SD_OP_ATTN_PROBS, probs, q, k, NULL);
        if (node) {
            node->attr.attn.heads = heads;
            node->attr.attn.causal = causal;
            node->attr.attn.scale = scale;
        }
        sd_tensor *used = hook->edit_probs(hook, c, site, probs);
        if (!used || c->status != SD_OK)
            return sd_ctx_fail(c, SD_ERR_INTERNAL, "attention hook failed at layer %d", site->layer);
        if (!sd_same_shape(used, probs))
            return sd_ctx_fail(c, SD_ERR_SHAPE, "attention hook at layer %d returned maps %s, expected %s",
                               site->layer, shape_of(used, a, sizeof a), shape_of(probs, b, sizeof b));
        sd_ctx_check(c, c->be->attention_apply(sd_f32(used), sd_f32(v), sd_f32(out), B, Sq, Sk,
                                               heads, Dv));
        node = sd_tape_record(c, SD_OP_ATTN_APPLY, out, used, v, NULL);
        if (node) node->attr.attn.heads = heads;
    } else {
        sd_ctx_check(c, c->be->attention(sd_f32(q), sd_f32(k), sd_f32(v), sd_f32(out), NULL, B, Sq,
                                         Sk, heads, D, Dv, scale, causal, lse ? sd_f32(lse) : NULL));
        record_attention(c, out, q, k, v, heads, causal, scale, lse);
    }
    return c->status == SD_OK ? out : NULL;
}

const char *sd_place_name(sd_unet_place p) {
    switch (p) {
    case SD_PLACE_DOWN: return "down";
    case SD_PLACE_MID: return "mid";
    case SD_PLACE_UP: return "up";
    }
    return "?";
}

void sd_block_result(sd_ctx *c) {
    if (c->block_result) c->arena = c->block_result;
}

sd_tensor *sd_checkpoint(sd_ctx *c, sd_block_fn fn, const void *block, sd_tensor *x, sd_tensor *aux,
                         sd_tensor *aux2) {
    if (c->status != SD_OK) return NULL;
    const int nested = c->scratch && c->arena == c->scratch;
    const int grad = c->tape && (sd_tape_needs_grad(c, x) || sd_tape_needs_grad(c, aux) || sd_tape_needs_grad(c, aux2));
    /* a block a gradient flows through keeps its activations unless asked to recompute them */
    if (nested || (grad && !c->recompute)) {
        sd_arena *outer = c->block_result; /* an enclosing block's: not this one's to use */
        c->block_result = NULL;
        sd_tensor *y = fn(c, block, x, aux, aux2);
        c->block_result = outer;
        return y;
    }
    /* no gradient (a plain forward): nothing will read the block's activations again, so they
     * live in the scratch arena only while it runs: a forward then holds the skip connections and
     * one block, not every activation of the UNet */
    if (!c->scratch) {
        c->scratch = sd_arena_create_with((size_t)64 << 20, c->be->mem_alloc, c->be->mem_free);
        if (!c->scratch) return sd_ctx_fail(c, SD_ERR_OOM, "out of memory creating the scratch arena");
    }
    struct sd_tape *tape = c->tape;
    sd_arena *main = c->arena;
    const sd_arena_mark mark = sd_arena_get_mark(c->scratch);
    c->tape = NULL;
    c->arena = c->scratch;
    c->block_result = main;
    sd_tensor *inside = fn(c, block, x, aux, aux2);
    /* fn called sd_block_result: its output is already in the caller's arena */
    const int in_main = c->arena == main;
    c->block_result = NULL;
    c->arena = main;
    c->tape = tape;
    sd_tensor *y = inside;
    if (inside && !in_main) {
        y = new_dtype(c, inside->dtype, inside->ndim, inside->shape);
        if (y) y->channels_last = inside->channels_last;
        if (y && y->dtype == SD_F16)
            sd_ctx_check(c, c->be->f16->copy(f16_of(y), f16_of(inside), sd_numel(y)));
        else if (y && f32_only(c, y, "checkpoint"))
            sd_ctx_check(c, c->be->copy(sd_f32(y), sd_f32(inside), sd_numel(y)));
    }
    sd_arena_reset(c->scratch, mark);
    if (c->status != SD_OK) return NULL;
    if (!grad) return y;
    sd_tape_node *node = sd_tape_record(c, SD_OP_CHECKPOINT, y, x, aux, aux2);
    if (node) {
        node->attr.block.fn = fn;
        node->attr.block.block = block;
    }
    return c->status == SD_OK ? y : NULL;
}
