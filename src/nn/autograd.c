/* autograd.c: the tape's recording primitives, the reverse pass, losses, parameters and Adam
 * (see autograd.h). Each node's backward is a handful of backend calls; gradients accumulate in
 * arena buffers that are zero-filled on first use (unless the first contribution fills the buffer
 * itself: a handed-on dL/dy, a transpose, an op that overwrites its data gradients, see
 * data_grads_out), an add's two inputs share dL/dy until one is written while the other still
 * reads it (tape.h, `shared`), and a node's buffer is recycled (tape.h, `spare`) once its
 * backward has consumed it. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "tape.h"

/* ------------------------------------------------------------------------------------------------
 * Tape bookkeeping
 * --------------------------------------------------------------------------------------------- */

sd_tape *sd_tape_new(void) {
    sd_tape *t = calloc(1, sizeof *t);
    if (!t) sd_fail(SD_ERR_OOM, "out of host memory creating a tape");
    return t;
}

void sd_tape_free(sd_tape *t) {
    if (!t) return;
    sd_tape_reset(t);
    free(t->nodes);
    free(t->leaves);
    free(t->spare);
    free(t->shared);
    sd_tape_free(t->sub);
    free(t);
}

void sd_ctx_set_tape(sd_ctx *c, sd_tape *t) { c->tape = t; }

void sd_tape_reset(sd_tape *t) {
    if (!t) return;
    /* Outputs keep their stale tape_index: producer() rejects an index whose node no longer
     * points back at the tensor, and the outputs' memory may already be reused. Leaves are
     * long-lived, so their arena gradients are dropped here. */
    for (int i = 0; i < t->n_leaves; i++) t->leaves[i]->grad = NULL;
    t->n = 0;
    t->n_leaves = 0;
    t->n_spare = 0; /* arena memory: gone with the step */
    t->n_widened = 0;
    t->n_shared = 0;
}

int sd_tape_size(const sd_tape *t) { return t ? t->n : 0; }

sd_status sd_tape_note_leaf(sd_ctx *c, sd_tape *tp, sd_tensor *leaf) {
    if (tp->n_leaves == tp->cap_leaves) {
        int cap = tp->cap_leaves ? 2 * tp->cap_leaves : 64;
        sd_tensor **l = realloc(tp->leaves, (size_t)cap * sizeof *l);
        if (!l) {
            sd_ctx_fail(c, SD_ERR_OOM, "out of host memory tracking gradient leaves");
            return c->status;
        }
        tp->leaves = l;
        tp->cap_leaves = cap;
    }
    tp->leaves[tp->n_leaves++] = leaf;
    return SD_OK;
}

/* The node of the current tape that produced t, or NULL (stale indices from an earlier step are
 * rejected by checking the node's output pointer). */
static sd_tape_node *producer(const sd_ctx *c, const sd_tensor *t) {
    if (!c->tape || !t || t->tape_index < 0 || t->tape_index >= c->tape->n) return NULL;
    sd_tape_node *n = &c->tape->nodes[t->tape_index];
    return n->out == t ? n : NULL;
}

int sd_tape_needs_grad(const sd_ctx *c, const sd_tensor *t) {
    return t && c->tape && (t->requires_grad || producer(c, t) != NULL);
}

sd_tape_node *sd_tape_record(sd_ctx *c, sd_op_kind op, sd_tensor *out, sd_tensor *in0,
                             sd_tensor *in1, sd_tensor *in2) {
    if (!c->tape || c->status != SD_OK || !out) return NULL;
    if (!sd_tape_needs_grad(c, in0) && !sd_tape_needs_grad(c, in1) && !sd_tape_needs_grad(c, in2))
        return NULL;
    sd_tape *t = c->tape;
    if (t->n == t->cap) {
        int cap = t->cap ? 2 * t->cap : 1024;
        sd_tape_node *nodes = realloc(t->nodes, (size_t)cap * sizeof *nodes);
        if (!nodes) {
            sd_ctx_fail(c, SD_ERR_OOM, "out of host memory growing the tape to %d nodes", cap);
            return NULL;
        }
        t->nodes = nodes;
        t->cap = cap;
    }
    sd_tape_node *node = &t->nodes[t->n];
    memset(node, 0, sizeof *node);
    node->op = op;
    node->out = out;
    node->in[0] = in0;
    node->in[1] = in1;
    node->in[2] = in2;
    for (int i = 0; i < 3; i++) {
        sd_tape_node *p = producer(c, node->in[i]);
        if (p) p->consumers++;
    }
    out->tape_index = t->n++;
    return node;
}

/* ------------------------------------------------------------------------------------------------
 * Reverse pass
 * --------------------------------------------------------------------------------------------- */

static const char *op_name(sd_op_kind op) {
    static const char *const names[] = {
        [SD_OP_LINEAR] = "linear", [SD_OP_CONV2D] = "conv2d", [SD_OP_GROUP_NORM] = "group_norm",
        [SD_OP_LAYER_NORM] = "layer_norm", [SD_OP_UNARY] = "unary", [SD_OP_ADD] = "add",
        [SD_OP_SUB] = "sub", [SD_OP_MUL] = "mul", [SD_OP_AXPBY] = "axpby", [SD_OP_AXPBY_DEV] = "axpby_dev",
        [SD_OP_ADD_CHANNEL_BIAS] = "add_channel_bias", [SD_OP_GEGLU] = "geglu",
        [SD_OP_CONCAT_CHANNELS] = "concat_channels", [SD_OP_CONCAT0] = "concat0",
        [SD_OP_UPSAMPLE] = "upsample", [SD_OP_TRANSPOSE] = "transpose", [SD_OP_VIEW] = "view",
        [SD_OP_ATTENTION] = "attention", [SD_OP_ATTN_PROBS] = "attention maps",
        [SD_OP_ATTN_APPLY] = "attention apply", [SD_OP_MSE] = "mse", [SD_OP_CHECKPOINT] = "recomputed block",
    };
    return names[op];
}

/* A spare buffer of t's element count, re-headed with t's shape (NULL when none is free). */
static sd_tensor *take_spare(sd_ctx *c, const sd_tensor *t) {
    sd_tape *tp = c->tape;
    const int64_t n = sd_numel(t);
    for (int i = tp->n_spare - 1; i >= 0; i--) {
        if (sd_numel(tp->spare[i]) != n) continue;
        void *data = tp->spare[i]->data;
        tp->spare[i] = tp->spare[--tp->n_spare];
        sd_tensor *g = sd_arena_alloc_host(c->arena, sizeof *g); /* a header: host memory */
        if (!g) {
            c->status = SD_ERR_OOM;
            return NULL;
        }
        *g = sd_tensor_wrap(data, SD_F32, t->ndim, t->shape);
        g->device = c->device;
        return g;
    }
    return NULL;
}

/* Hands a buffer nothing reads any more to later gradients (dropped if the list cannot grow: it
 * then just stays unused in the arena until the step ends). */
static void give_back(sd_ctx *c, sd_tensor *g) {
    sd_tape *tp = c->tape;
    if (tp->n_spare == tp->cap_spare) {
        const int cap = tp->cap_spare ? 2 * tp->cap_spare : 64;
        sd_tensor **s = realloc(tp->spare, (size_t)cap * sizeof *s);
        if (!s) return;
        tp->spare = s;
        tp->cap_spare = cap;
    }
    tp->spare[tp->n_spare++] = g;
}

/* A buffer shaped like t in the activation arena (a spare one when possible), uninitialised. */
static sd_tensor *scratch_like(sd_ctx *c, const sd_tensor *t) {
    sd_tensor *g = take_spare(c, t);
    if (!g && c->status == SD_OK) g = sd_new(c, t->ndim, t->shape);
    return g;
}

/* Sharing of gradient buffers (sd_tape.shared): one more holder of g (0 when the list cannot grow:
 * the caller then copies as before), and one holder fewer (1 when another still holds g). */
static int share_grad(sd_tape *tp, sd_tensor *g) {
    if (tp->n_shared == tp->cap_shared) {
        const int cap = tp->cap_shared ? 2 * tp->cap_shared : 16;
        sd_tensor **s = realloc(tp->shared, (size_t)cap * sizeof *s);
        if (!s) return 0;
        tp->shared = s;
        tp->cap_shared = cap;
    }
    tp->shared[tp->n_shared++] = g;
    return 1;
}

static int unshare_grad(sd_tape *tp, const sd_tensor *g) {
    for (int i = tp->n_shared - 1; i >= 0; i--)
        if (tp->shared[i] == g) {
            tp->shared[i] = tp->shared[--tp->n_shared];
            return 1;
        }
    return 0;
}

/* A zero-filled gradient buffer shaped like t. */
static float *new_grad_buffer(sd_ctx *c, const sd_tensor *t, sd_tensor **out) {
    sd_tensor *g = scratch_like(c, t);
    if (!g) return NULL;
    if (!sd_ctx_check(c, c->be->zero(g->data, sd_nbytes(g)))) return NULL;
    *out = g;
    return sd_f32(g);
}

/* dL/dt, created zero-filled on first use: the producer node's grad for an activation, t->grad
 * for a leaf. NULL when t needs no gradient (frozen weights, constants). */
static float *grad_of(sd_ctx *c, sd_tensor *t) {
    if (!t || c->status != SD_OK) return NULL;
    sd_tape_node *n = producer(c, t);
    if (n) {
        if (!n->grad && !new_grad_buffer(c, t, &n->grad)) return NULL;
        if (unshare_grad(c->tape, n->grad)) { /* another node still reads it: add into a copy */
            sd_tensor *g = scratch_like(c, t);
            if (!g || !sd_ctx_check(c, c->be->copy(sd_f32(g), sd_f32(n->grad), sd_numel(t)))) return NULL;
            n->grad = g;
        }
        return sd_f32(n->grad);
    }
    if (!t->requires_grad) return NULL;
    if (!t->grad) {
        if (!new_grad_buffer(c, t, &t->grad)) return NULL;
        if (sd_tape_note_leaf(c, c->tape, t)) return NULL;
    }
    return sd_f32(t->grad);
}

/* Gradient slot of input i, or NULL when that input needs none. */
static float *in_grad(sd_ctx *c, sd_tape_node *n, int i) {
    return sd_tape_needs_grad(c, n->in[i]) ? grad_of(c, n->in[i]) : NULL;
}

static const float *f32c(const sd_tensor *t) { return t ? (const float *)t->data : NULL; }

/* A saved activation as the backward reads it: F32 in its tensor's logical order. t itself when it
 * is F32 (NULL for a missing optional input); else (a step storing fp16, sd_ctx.f16_steps) widened
 * into a buffer of the gradient pool, a channels-last map reordered to NCHW on the way, which
 * reverse_pass hands back once the node's backward is done (sd_tape.widened). NULL with the context
 * failed when that cannot be done. */
static const float *saved_f32(sd_ctx *c, const sd_tensor *t) {
    if (!t || t->dtype == SD_F32) return f32c(t);
    sd_tape *tp = c->tape;
    const sd_f16_ops *o = c->be->f16;
    if (c->status != SD_OK) return NULL;
    if (t->dtype != SD_F16 || !o || tp->n_widened == SD_TAPE_MAX_WIDENED) {
        sd_ctx_fail(c, SD_ERR_INTERNAL, "backward: a saved %s value the %s backend cannot widen to F32",
                    sd_dtype_name(t->dtype), c->be->name);
        return NULL;
    }
    sd_tensor *w = scratch_like(c, t);
    if (!w) return NULL;
    tp->widened[tp->n_widened++] = w;
    if (t->channels_last)
        sd_ctx_check(c, o->to_f32_nchw(t->data, NULL, NULL, sd_f32(w), t->shape[0], t->shape[1],
                                       t->shape[2] * t->shape[3]));
    else
        sd_ctx_check(c, o->to_f32(t->data, sd_f32(w), sd_numel(t)));
    return c->status == SD_OK ? sd_f32(w) : NULL;
}

/* Fast mode (the context's forwards store fp16) multiplies a linear's data gradient on the frozen
 * weight's bf16 copy (sd_f16_ops.linear_backward_data_bf16w): the FAST_16BF GEMM's arithmetic on
 * native operands. A weight that trains, or one not bound from a checkpoint, keeps the F32 op. The
 * weight is a matrix [N, K] or a 1x1 kernel [N, K, 1, 1] (SD v1.x's proj_in and proj_out, which
 * sd_linear runs as linears): the same memory. */
int sd_linear_bf16_data_gradient(const sd_ctx *c, const sd_tensor *w, int frozen) {
    const sd_f16_ops *o = c->be->f16;
    const int matrix = w->ndim == 2 || (w->ndim == 4 && w->shape[2] == 1 && w->shape[3] == 1);
    return c->activations == SD_F16 && !c->f32_data_grads && o && o->linear_backward_data_bf16w && o->to_bf16 &&
           frozen && !w->requires_grad && matrix;
}

static int bf16_data_gradient(const sd_ctx *c, const sd_tape_node *n) {
    return sd_linear_bf16_data_gradient(c, n->in[1], n->attr.linear.frozen);
}

/* The same for a frozen UNet convolution at stride 1: its data gradient is the convolution of dy
 * with the transposed, flipped kernel (sd_conv_data_gradient_geom), multiplied on a cached bf16
 * copy of that kernel with dy rounded to bf16 once (sd_f16_ops.conv2d_backward_data_bf16w). The
 * F32 data gradient it replaces ran in TF32 through cuDNN. Stride-2 downsamplers keep the F32 op. */
static int bf16_conv_data_gradient(const sd_ctx *c, const sd_tape_node *n) {
    sd_conv_geom t;
    const sd_f16_ops *o = c->be->f16;
    return c->activations == SD_F16 && !c->f32_data_grads && o && o->conv2d_backward_data_bf16w &&
           o->to_bf16_conv_transposed && n->attr.conv.frozen && !n->in[1]->requires_grad &&
           sd_conv_data_gradient_geom(&n->attr.conv.g, &t);
}

/* Calls a backend backward op, failing clearly when this backend lacks it. */
#define BWD(c, node, fn, ...)                                                                      \
    do {                                                                                           \
        if (!(c)->be->fn) {                                                                        \
            sd_ctx_fail((c), SD_ERR_UNSUPPORTED, "backward of %s: %s is not available on the %s backend", \
                        op_name((node)->op), #fn, (c)->be->name);                                  \
            return;                                                                                \
        }                                                                                          \
        sd_ctx_check((c), (c)->be->fn(__VA_ARGS__));                                               \
    } while (0)

/* The producer of input i when that activation needs a gradient and has none yet: the caller then
 * gives it one that it fills completely (no zero-fill and accumulate). NULL otherwise (a leaf, an
 * input without gradient, or one another consumer already started). */
static sd_tape_node *first_grad_of_input(sd_ctx *c, sd_tape_node *n, int i) {
    if (c->status != SD_OK || !sd_tape_needs_grad(c, n->in[i])) return NULL;
    sd_tape_node *p = producer(c, n->in[i]);
    return p && !p->grad ? p : NULL;
}

/* Input i's gradient += alpha · dL/dy for an op whose output has input i's size (add, sub, axpby).
 * When it is input i's first contribution, the node's own dL/dy buffer becomes that gradient as it is
 * (alpha 1: *dy_free says whether it is still the node's alone; nothing reads dL/dy after its node;
 * a second input of alpha 1 shares it with the first, sd_tape.shared, copied only if one of them is
 * later added into while the other still needs it), or a fresh buffer is set to alpha · dL/dy: no
 * zero-filled buffer, no accumulation. */
static void grad_add_scaled(sd_ctx *c, sd_tape_node *n, int i, float alpha, const float *dy, int *dy_free) {
    const int64_t len = sd_numel(n->out);
    sd_tape_node *p = first_grad_of_input(c, n, i);
    if (p && sd_numel(n->in[i]) == len) {
        if (alpha == 1.0f && *dy_free) {
            p->grad = n->grad;
            *dy_free = 0;
            return;
        }
        if (alpha == 1.0f && n->grad && share_grad(c->tape, n->grad)) { /* the first input holds it too */
            p->grad = n->grad;
            return;
        }
        sd_tensor *g = scratch_like(c, n->in[i]);
        if (!g) return;
        p->grad = g;
        if (alpha == 1.0f)
            sd_ctx_check(c, c->be->copy(sd_f32(g), dy, len));
        else
            BWD(c, n, axpby, alpha, dy, 0.0f, dy, sd_f32(g), len);
        return;
    }
    float *d = in_grad(c, n, i);
    if (d) BWD(c, n, axpy, alpha, dy, d, len);
}

/* Where an op that can overwrite its data gradients (its `accumulate` flag: the bf16 data
 * gradients, group norm, GEGLU, concat, upsample, attention) puts the gradients of the inputs in
 * `which` (bit i: input i) into out[0..3). When every one of them that needs a gradient gets its
 * first contribution here (from distinct producers), each gets a fresh, unfilled buffer that
 * becomes its gradient, and the op overwrites them (returns 0: no zero fill for the op to read
 * back). Otherwise each gets the gradient to add into, zero-filled on first use (returns 1: the op
 * accumulates). out[i] is NULL where input i needs no gradient or is not in `which`. */
static int data_grads_out(sd_ctx *c, sd_tape_node *n, unsigned which, float *out[3]) {
    sd_tape_node *first[3] = {NULL, NULL, NULL};
    int fresh = 1;
    for (int i = 0; i < 3; i++) {
        out[i] = NULL;
        if (!(which & (1u << i)) || !sd_tape_needs_grad(c, n->in[i])) continue;
        first[i] = first_grad_of_input(c, n, i);
        for (int j = 0; j < i; j++)
            if (first[i] && first[j] == first[i]) first[i] = NULL; /* one tensor twice: they add up */
        if (!first[i]) fresh = 0;
    }
    for (int i = 0; i < 3 && c->status == SD_OK; i++) {
        if (!(which & (1u << i))) continue;
        if (!fresh || !first[i]) {
            out[i] = in_grad(c, n, i);
            continue;
        }
        sd_tensor *g = scratch_like(c, n->in[i]);
        if (!g) return 1;
        first[i]->grad = g;
        out[i] = sd_f32(g);
    }
    return !fresh;
}

static sd_status reverse_pass(sd_ctx *c, sd_tensor *root_out, const sd_tensor *seed);

/* A leaf standing for an input of a recomputed block: the same memory under a fresh header (in the
 * scratch arena) that requires grad when the input does, so the sub-tape stops there. */
static sd_tensor *block_input(sd_ctx *c, const sd_tensor *t, int needs_grad) {
    if (!t) return NULL;
    sd_tensor *l = sd_arena_alloc_host(c->arena, sizeof *l);
    if (!l) {
        c->status = SD_ERR_OOM;
        return NULL;
    }
    *l = *t;
    l->requires_grad = needs_grad;
    l->grad = NULL;
    l->tape_index = -1;
    l->owns_data = 0;
    return l;
}

/* SD_OP_CHECKPOINT: run the block again, recording on the tape's sub-tape in the scratch arena,
 * back-propagate dL/dy through it, and add what reaches its inputs to their gradients. */
static void backward_checkpoint(sd_ctx *c, sd_tape_node *n) {
    sd_tape *main_tape = c->tape;
    sd_arena *main_arena = c->arena;
    int needs[3];
    for (int i = 0; i < 3; i++) needs[i] = sd_tape_needs_grad(c, n->in[i]);
    if (!main_tape->sub && !(main_tape->sub = sd_tape_new())) {
        sd_ctx_fail(c, SD_ERR_OOM, "out of host memory for the recomputation tape");
        return;
    }
    const sd_arena_mark mark = sd_arena_get_mark(c->scratch);
    c->arena = c->scratch;
    c->tape = main_tape->sub;
    sd_tensor *in[3];
    for (int i = 0; i < 3; i++) in[i] = block_input(c, n->in[i], needs[i]);
    sd_tensor *y = c->status == SD_OK ? n->attr.block.fn(c, n->attr.block.block, in[0], in[1], in[2]) : NULL;
    if (y && sd_numel(y) != sd_numel(n->out))
        sd_ctx_fail(c, SD_ERR_INTERNAL, "recomputed block: %lld outputs, %lld the first time",
                    (long long)sd_numel(y), (long long)sd_numel(n->out));
    if (y && c->status == SD_OK) reverse_pass(c, y, n->grad);
    sd_tensor *g[3];
    for (int i = 0; i < 3; i++) g[i] = in[i] ? in[i]->grad : NULL;
    c->tape = main_tape;
    c->arena = main_arena;
    for (int i = 0; i < 3; i++) {
        float *d = g[i] ? in_grad(c, n, i) : NULL;
        if (d) BWD(c, n, axpy, 1.0f, sd_f32(g[i]), d, sd_numel(n->in[i]));
    }
    sd_tape_reset(main_tape->sub);
    sd_arena_reset(c->scratch, mark);
}

/* A per-pixel linear recorded on a channels-last map (attr.linear.map_in / map_out; nn.c records
 * that form only where the data gradient runs on the weight's bf16 copy and nothing else needs a
 * gradient): the map's side of the gradient in NCHW order, as gradient space keeps maps, with no
 * transpose (sd_f16_ops.linear_backward_data_bf16w_map). */
static void backward_linear_map(sd_ctx *c, sd_tape_node *n) {
    const sd_tensor *w = n->in[1], *map = n->attr.linear.map_in ? n->in[0] : n->out;
    const sd_f16_ops *o = c->be->f16;
    if (!bf16_data_gradient(c, n) || !o->linear_backward_data_bf16w_map || sd_tape_needs_grad(c, n->in[1]) ||
        sd_tape_needs_grad(c, n->in[2])) {
        sd_ctx_fail(c, SD_ERR_INTERNAL, "backward of the per-pixel linear '%s' recorded on a map: its data gradient "
                    "does not run on the weight's bf16 copy here, or its weight trains", w->name);
        return;
    }
    const int64_t N = w->shape[0], K = w->shape[1], B = map->shape[0], S = map->shape[2] * map->shape[3];
    float *out[3];
    const int accumulate = data_grads_out(c, n, 1u, out);
    const sd_f16 *wb = out[0] ? sd_lowp_weight_bf16(c, w) : NULL;
    if (wb)
        sd_ctx_check(c, o->linear_backward_data_bf16w_map(sd_f32(n->grad), wb, out[0], B, S, K, N,
                                                          n->attr.linear.map_out, n->attr.linear.map_in, accumulate));
}

/* A batch of one image concatenated along channels (the UNet's up blocks: the skip connection
 * beside the feature map) has each input's gradient as one contiguous piece of dL/dy: where both
 * inputs get their first contribution here, they get those pieces as their gradients (headers over
 * dL/dy's memory, which the node hands on: no copy, no kernel). The pieces are disjoint, and each
 * returns to the spare buffers once its holder's backward is done. Returns 1 when it did that. */
static int concat_grads_as_views(sd_ctx *c, sd_tape_node *n) {
    sd_tensor *a = n->in[0], *b = n->in[1];
    if (a->shape[0] != 1 || !n->grad || a == b) return 0;
    for (int i = 0; i < c->tape->n_shared; i++)
        if (c->tape->shared[i] == n->grad) return 0; /* another node holds dL/dy too */
    sd_tape_node *pa = first_grad_of_input(c, n, 0), *pb = first_grad_of_input(c, n, 1);
    if (!pa || !pb || pa == pb) return 0;
    sd_tensor *ga = sd_arena_alloc_host(c->arena, sizeof *ga), *gb = sd_arena_alloc_host(c->arena, sizeof *gb);
    if (!ga || !gb) {
        c->status = SD_ERR_OOM;
        return 1;
    }
    float *dy = sd_f32(n->grad);
    *ga = sd_tensor_wrap(dy, SD_F32, a->ndim, a->shape);
    *gb = sd_tensor_wrap(dy + sd_numel(a), SD_F32, b->ndim, b->shape);
    ga->device = gb->device = c->device;
    pa->grad = ga;
    pb->grad = gb;
    n->grad = NULL; /* handed on: reverse_pass must not recycle it */
    return 1;
}

/* GEGLU's input in a step storing fp16 is ff_in's output and nothing else's input: its gradient's
 * only reader is that linear's bf16 data gradient, which would round it to bf16 first. The GEGLU
 * backward then writes it in bf16 (sd_f16_ops.geglu_backward_bf16: the same values), and the linear
 * multiplies it as it is (grad_bf16; linear_backward_data_bf16): a launch and a pass over the
 * step's largest F32 gradient fewer, the gradient bit for bit the same. Returns 1 when it did. */
static int geglu_grad_as_bf16(sd_ctx *c, sd_tape_node *n, int64_t M, int64_t N) {
    const sd_tensor *x = n->in[0];
    const sd_f16_ops *o = c->be->f16;
    if (x->dtype != SD_F16 || !o || !o->geglu_backward_bf16 || !o->linear_backward_data_bf16) return 0;
    sd_tape_node *p = first_grad_of_input(c, n, 0);
    if (!p || p->consumers != 1 || p->op != SD_OP_LINEAR || p->attr.linear.map_in || p->attr.linear.map_out ||
        !bf16_data_gradient(c, p) || sd_tape_needs_grad(c, p->in[1]) || sd_tape_needs_grad(c, p->in[2]))
        return 0;
    sd_tensor *g = scratch_like(c, x); /* F32-sized: the bf16 values take half of it */
    if (!g) return 1;
    p->grad = g;
    p->grad_bf16 = 1;
    sd_ctx_check(c, o->geglu_backward_bf16(x->data, sd_f32(n->grad), (sd_f16 *)g->data, M, N));
    return 1;
}

static void backward_node(sd_ctx *c, sd_tape_node *n) {
    const float *dy = sd_f32(n->grad);
    sd_tensor *x = n->in[0], *y = n->out;
    switch (n->op) {
    case SD_OP_LINEAR: {
        if (n->attr.linear.map_in || n->attr.linear.map_out) {
            backward_linear_map(c, n);
            return;
        }
        const sd_tensor *w = n->in[1];
        const int64_t N = w->shape[0], K = w->shape[1], M = sd_numel(x) / K;
        if (n->grad_bf16) { /* dy rounded by its only consumer (geglu_grad_as_bf16): the data gradient alone */
            float *out[3];
            const int accumulate = data_grads_out(c, n, 1u, out);
            const sd_f16 *wb = out[0] ? sd_lowp_weight_bf16(c, w) : NULL;
            if (wb)
                sd_ctx_check(c, c->be->f16->linear_backward_data_bf16((const sd_f16 *)n->grad->data, wb, out[0], M, K,
                                                                      N, accumulate));
            return;
        }
        float *dw = in_grad(c, n, 1), *db = in_grad(c, n, 2);
        if (bf16_data_gradient(c, n)) {
            float *out[3];
            const int accumulate = data_grads_out(c, n, 1u, out);
            float *dx = out[0];
            const sd_f16 *wb = dx ? sd_lowp_weight_bf16(c, w) : NULL;
            if (wb) sd_ctx_check(c, c->be->f16->linear_backward_data_bf16w(dy, wb, dx, M, K, N, accumulate));
        } else {
            float *dx = in_grad(c, n, 0);
            if (dx) BWD(c, n, linear_backward_data, dy, f32c(w), dx, M, K, N);
        }
        const float *xv = dw || db ? saved_f32(c, x) : NULL;
        if (xv) BWD(c, n, linear_backward_params, dy, xv, dw, db, M, K, N);
        return;
    }
    case SD_OP_CONV2D: {
        const sd_conv_geom *g = &n->attr.conv.g;
        float *dw = in_grad(c, n, 1), *db = in_grad(c, n, 2);
        if (bf16_conv_data_gradient(c, n)) {
            float *out[3];
            const int accumulate = data_grads_out(c, n, 1u, out);
            float *dx = out[0];
            const sd_f16 *wt = dx ? sd_lowp_conv_weight_bf16t(c, n->in[1]) : NULL;
            if (wt) sd_ctx_check(c, c->be->f16->conv2d_backward_data_bf16w(dy, wt, dx, g, accumulate));
        } else {
            float *dx = in_grad(c, n, 0);
            if (dx) BWD(c, n, conv2d_backward_data, dy, f32c(n->in[1]), dx, g);
        }
        const float *xv = dw || db ? saved_f32(c, x) : NULL;
        if (xv) BWD(c, n, conv2d_backward_params, dy, xv, dw, db, g);
        return;
    }
    case SD_OP_GROUP_NORM: {
        const int64_t B = x->shape[0], C = x->shape[1], S = sd_numel(x) / (B * C);
        float *out[3];
        const int accumulate = data_grads_out(c, n, 1u, out);
        float *dg = in_grad(c, n, 1), *db = in_grad(c, n, 2);
        const sd_f16_ops *o = c->be->f16;
        if (x->dtype == SD_F16 && x->channels_last && o && o->group_norm_backward_nhwc) { /* as saved */
            if (out[0] || dg || db)
                sd_ctx_check(c, o->group_norm_backward_nhwc(x->data, f32c(n->in[1]), f32c(n->in[2]), dy, out[0], dg,
                                                            db, B, C, S, n->attr.norm.groups, n->attr.norm.eps,
                                                            n->attr.norm.silu, accumulate,
                                                            n->attr.norm.stats ? sd_f32(n->attr.norm.stats) : NULL));
            return;
        }
        const float *xv = saved_f32(c, x);
        if (!xv) return;
        BWD(c, n, group_norm_backward, xv, f32c(n->in[1]), f32c(n->in[2]), dy, out[0], dg, db, B,
            C, S, n->attr.norm.groups, n->attr.norm.eps, n->attr.norm.silu, accumulate);
        return;
    }
    case SD_OP_LAYER_NORM: {
        const int64_t C = x->shape[x->ndim - 1], M = sd_numel(x) / C;
        float *dx = in_grad(c, n, 0), *dg = in_grad(c, n, 1), *db = in_grad(c, n, 2);
        const sd_f16_ops *o = c->be->f16;
        if (x->dtype == SD_F16 && o && o->layer_norm_backward) { /* the saved fp16 input as it is */
            if (dx || dg || db)
                sd_ctx_check(c, o->layer_norm_backward(x->data, f32c(n->in[1]), dy, dx, dg, db, M, C,
                                                       n->attr.norm.eps));
            return;
        }
        const float *xv = saved_f32(c, x);
        if (xv) BWD(c, n, layer_norm_backward, xv, f32c(n->in[1]), dy, dx, dg, db, M, C, n->attr.norm.eps);
        return;
    }
    case SD_OP_UNARY: {
        float *dx = in_grad(c, n, 0);
        const float *xv = dx ? saved_f32(c, x) : NULL;
        if (xv) BWD(c, n, unary_backward, n->attr.unary.op, xv, dy, dx, sd_numel(x), n->attr.unary.alpha);
        return;
    }
    case SD_OP_ADD:
    case SD_OP_SUB:
    case SD_OP_AXPBY: {
        float alpha = 1.0f, beta = n->op == SD_OP_SUB ? -1.0f : 1.0f;
        if (n->op == SD_OP_AXPBY) {
            alpha = n->attr.axpby.alpha;
            beta = n->attr.axpby.beta;
        }
        /* a + a: the second call finds the first's buffer (possibly dL/dy's own) and adds to it */
        int dy_free = 1;
        grad_add_scaled(c, n, 0, alpha, dy, &dy_free);
        grad_add_scaled(c, n, 1, beta, dy, &dy_free);
        if (!dy_free) n->grad = NULL; /* handed on: reverse_pass must not recycle it */
        return;
    }
    case SD_OP_AXPBY_DEV: {
        const float *coef = f32c(n->in[2]);
        float *da = in_grad(c, n, 0);
        if (da) BWD(c, n, axpy_dev, coef, dy, da, sd_numel(y));
        float *db = in_grad(c, n, 1);
        if (db) BWD(c, n, axpy_dev, coef + 1, dy, db, sd_numel(y));
        return;
    }
    case SD_OP_MUL: {
        float *da = in_grad(c, n, 0);
        const float *bv = da ? saved_f32(c, n->in[1]) : NULL;
        if (bv) BWD(c, n, mul_acc, dy, bv, da, sd_numel(y));
        float *db = in_grad(c, n, 1);
        const float *av = db ? saved_f32(c, n->in[0]) : NULL;
        if (av) BWD(c, n, mul_acc, dy, av, db, sd_numel(y));
        return;
    }
    case SD_OP_ADD_CHANNEL_BIAS: {
        const int64_t B = x->shape[0], C = x->shape[1], S = sd_numel(x) / (B * C);
        float *dv = in_grad(c, n, 1);
        if (dv) BWD(c, n, add_channel_bias_backward, dy, dv, B, C, S);
        int dy_free = 1; /* after the bias's sums: they read dL/dy, which dx may take over */
        grad_add_scaled(c, n, 0, 1.0f, dy, &dy_free);
        if (!dy_free) n->grad = NULL;
        return;
    }
    case SD_OP_GEGLU: {
        const int64_t N = y->shape[y->ndim - 1], M = sd_numel(y) / N;
        if (geglu_grad_as_bf16(c, n, M, N)) return;
        float *out[3];
        const int accumulate = data_grads_out(c, n, 1u, out);
        const sd_f16_ops *o = c->be->f16;
        if (out[0] && x->dtype == SD_F16 && o && o->geglu_backward) { /* the saved fp16 input as it is */
            sd_ctx_check(c, o->geglu_backward(x->data, dy, out[0], M, N, accumulate));
            return;
        }
        const float *xv = out[0] ? saved_f32(c, x) : NULL;
        if (xv) BWD(c, n, geglu_backward, xv, dy, out[0], M, N, accumulate);
        return;
    }
    case SD_OP_CONCAT_CHANNELS: {
        const sd_tensor *a = n->in[0], *b = n->in[1];
        const int64_t B = a->shape[0], S = a->shape[2] * a->shape[3];
        if (concat_grads_as_views(c, n)) return;
        float *out[3];
        const int accumulate = data_grads_out(c, n, 3u, out);
        if (out[0] || out[1])
            BWD(c, n, concat_channels_backward, dy, out[0], out[1], B, a->shape[1], b->shape[1], S, accumulate);
        return;
    }
    case SD_OP_CONCAT0: {
        const int64_t na = sd_numel(n->in[0]);
        float *da = in_grad(c, n, 0);
        if (da) BWD(c, n, axpy, 1.0f, dy, da, na);
        float *db = in_grad(c, n, 1);
        if (db) BWD(c, n, axpy, 1.0f, dy + na, db, sd_numel(n->in[1]));
        return;
    }
    case SD_OP_UPSAMPLE: {
        float *out[3];
        const int accumulate = data_grads_out(c, n, 1u, out);
        if (out[0])
            BWD(c, n, upsample_nearest_backward, dy, out[0], x->shape[0] * x->shape[1], x->shape[2],
                x->shape[3], y->shape[2], y->shape[3], accumulate);
        return;
    }
    case SD_OP_TRANSPOSE: {
        /* forward: y[b, c, r] = x[b, r, c] with dims (B, R, C); so dx = transpose of dy (B, C, R) */
        sd_tape_node *p = first_grad_of_input(c, n, 0);
        if (p) { /* the first contribution: transposed straight into x's new gradient */
            sd_tensor *g = scratch_like(c, x);
            if (!g) return;
            p->grad = g;
            sd_ctx_check(c, c->be->transpose(dy, sd_f32(g), n->attr.transpose.B, n->attr.transpose.C,
                                             n->attr.transpose.R));
            return;
        }
        float *dx = in_grad(c, n, 0);
        if (!dx) return;
        sd_tensor *tmp = scratch_like(c, x);
        if (!tmp) return;
        sd_ctx_check(c, c->be->transpose(dy, sd_f32(tmp), n->attr.transpose.B, n->attr.transpose.C,
                                         n->attr.transpose.R));
        BWD(c, n, axpy, 1.0f, sd_f32(tmp), dx, sd_numel(x));
        give_back(c, tmp);
        return;
    }
    case SD_OP_VIEW: {
        float *dx = in_grad(c, n, 0);
        if (dx) BWD(c, n, axpy, 1.0f, dy, dx + n->attr.view.offset, sd_numel(y));
        return;
    }
    case SD_OP_ATTENTION: {
        const sd_tensor *q = n->in[0], *k = n->in[1], *v = n->in[2];
        const int H = n->attr.attn.heads;
        float *out[3];
        const int accumulate = data_grads_out(c, n, 7u, out);
        const float *lse = n->attr.attn.lse ? sd_f32(n->attr.attn.lse) : NULL;
        const int Dq = (int)(q->shape[2] / H), Dv = (int)(v->shape[2] / H);
        const sd_f16_ops *o = c->be->f16;
        if (q->dtype == SD_F16 && o && o->attention_backward && o->attention_backward_takes &&
            o->attention_backward_takes(q->shape[0], q->shape[1], k->shape[1], H, Dq, Dv, n->attr.attn.scale)) {
            /* a step storing fp16: the backend reads the saved fp16 values as they are */
            sd_ctx_check(c, o->attention_backward(q->data, k->data, v->data, y->data, dy, out[0], out[1], out[2],
                                                  q->shape[0], q->shape[1], k->shape[1], H, Dq, Dv, n->attr.attn.scale,
                                                  n->attr.attn.causal, accumulate, lse));
            return;
        }
        const float *qv = saved_f32(c, q), *kv = saved_f32(c, k), *vv = saved_f32(c, v), *ov = saved_f32(c, y);
        if (!qv || !kv || !vv || !ov) return;
        BWD(c, n, attention_backward, qv, kv, vv, ov, dy, out[0], out[1], out[2], q->shape[0], q->shape[1],
            k->shape[1], H, Dq, Dv, n->attr.attn.scale, n->attr.attn.causal, accumulate, lse);
        return;
    }
    case SD_OP_ATTN_PROBS: {
        const sd_tensor *q = n->in[0], *k = n->in[1];
        const int H = n->attr.attn.heads;
        float *dq = in_grad(c, n, 0), *dk = in_grad(c, n, 1);
        const float *qv = dq || dk ? saved_f32(c, q) : NULL, *kv = qv ? saved_f32(c, k) : NULL;
        if (kv)
            BWD(c, n, attention_probs_backward, qv, kv, f32c(y), dy, dq, dk, q->shape[0],
                q->shape[1], k->shape[1], H, (int)(q->shape[2] / H), n->attr.attn.scale);
        return;
    }
    case SD_OP_ATTN_APPLY: {
        const sd_tensor *p = n->in[0], *v = n->in[1];
        const int H = n->attr.attn.heads;
        const int64_t B = v->shape[0], Sk = v->shape[1], Sq = p->shape[1];
        float *dp = in_grad(c, n, 0), *dv = in_grad(c, n, 1);
        const float *pv = dp || dv ? saved_f32(c, p) : NULL, *vv = pv ? saved_f32(c, v) : NULL;
        if (vv)
            BWD(c, n, attention_apply_backward, pv, vv, dy, dp, dv, B, Sq, Sk, H,
                (int)(v->shape[2] / H));
        return;
    }
    case SD_OP_CHECKPOINT:
        backward_checkpoint(c, n);
        return;
    case SD_OP_MSE: {
        float *da = in_grad(c, n, 0), *db = in_grad(c, n, 1);
        const float *av = da || db ? saved_f32(c, n->in[0]) : NULL, *bv = av ? saved_f32(c, n->in[1]) : NULL;
        if (bv) BWD(c, n, mse_backward, av, bv, dy, da, db, sd_numel(n->in[0]));
        return;
    }
    }
    sd_ctx_fail(c, SD_ERR_INTERNAL, "backward: unknown op %d", (int)n->op);
}

sd_status sd_backward(sd_ctx *c, sd_tensor *loss) {
    if (c->status != SD_OK) return c->status;
    sd_tape_node *root = producer(c, loss);
    if (!loss || sd_numel(loss) != 1)
        return c->status = sd_fail(SD_ERR_INTERNAL, "backward: the loss must have exactly one element");
    if (!root)
        return c->status = sd_fail(SD_ERR_INTERNAL,
                                   "backward: the loss was not recorded (no tape attached, or it does not depend on a trainable tensor)");
    return reverse_pass(c, loss, NULL);
}

/* Whether node m can join a group of linears of input x whose weights have w0's shape: a bias-free
 * linear on a frozen weight with a bf16 data gradient, and nothing else to differentiate. */
static int groups_with(const sd_ctx *c, const sd_tape_node *m, const sd_tensor *x, const sd_tensor *w0) {
    return m->op == SD_OP_LINEAR && m->in[0] == x && !m->in[2] && sd_same_shape(m->in[1], w0) &&
           !m->attr.linear.map_in && !m->attr.linear.map_out && !m->grad_bf16 && bf16_data_gradient(c, m);
}

/* sd_linear_many's projections (an attention's q, k and v of one input, or k and v of the
 * context) reach the tape as consecutive linear nodes on the same x. When node i ends such a run,
 * every consumer of the run's outputs came after it, so their gradients are complete: the group's
 * data gradients go in one product, dx (+)= Σ_j bf16(dy_j) · w_j on the weights' stacked bf16
 * copy (sd_f16_ops.linear_backward_data_bf16w_many: one conversion and one GEMM instead of one of
 * each per projection, the later ones reading back and adding into dx). The members' dL/dy buffers
 * are then done with: released, and the members skipped. Returns how many nodes it took (0: none,
 * node i runs on its own). */
static int backward_linear_group(sd_ctx *c, int i) {
    sd_tape_node *nodes = c->tape->nodes, *last = &nodes[i];
    const sd_f16_ops *o = c->be->f16;
    if (last->op != SD_OP_LINEAR || !o || !o->linear_backward_data_bf16w_many) return 0;
    const sd_tensor *x = last->in[0], *w0 = last->in[1];
    if (!groups_with(c, last, x, w0) || !sd_tape_needs_grad(c, x)) return 0;
    int first = i;
    while (first > 0 && i - first + 1 < SD_LINEAR_MANY_MAX && groups_with(c, &nodes[first - 1], x, w0)) first--;
    const sd_tensor *ws[SD_LINEAR_MANY_MAX];
    const float *dys[SD_LINEAR_MANY_MAX];
    int count = 0;
    for (int j = first; j <= i; j++) /* members whose output nothing used have no gradient: left out */
        if (nodes[j].grad) {
            ws[count] = nodes[j].in[1];
            dys[count++] = sd_f32(nodes[j].grad);
        }
    if (count < 2) return 0;
    const int64_t N = w0->shape[0], K = w0->shape[1], M = sd_numel(x) / K;
    float *out[3];
    const int accumulate = data_grads_out(c, last, 1u, out);
    const sd_f16 *wb = out[0] ? sd_lowp_weights_bf16_stacked(c, ws, count) : NULL;
    if (wb) sd_ctx_check(c, o->linear_backward_data_bf16w_many(dys, count, wb, out[0], M, K, N, accumulate));
    for (int j = first; j <= i; j++) {
        sd_tape_node *m = &nodes[j];
        if (m->grad && !unshare_grad(c->tape, m->grad)) give_back(c, m->grad);
        m->grad = NULL;
    }
    return i - first + 1;
}

/* Walks the context's tape back from root_out, whose gradient starts as `seed` (same element
 * count; NULL: the loss's 1). A root no node produced (a block whose output does not depend on a
 * trainable input) leaves nothing to do. */
static sd_status reverse_pass(sd_ctx *c, sd_tensor *root_out, const sd_tensor *seed) {
    sd_tape_node *root = producer(c, root_out);
    if (!root) return c->status;
    c->tape->n_spare = 0;
    c->tape->n_shared = 0;
    if (!(root->grad = scratch_like(c, root_out))) return c->status; /* filled next: no zero fill */
    if (seed)
        sd_ctx_check(c, c->be->copy(sd_f32(root->grad), sd_f32(seed), sd_numel(root_out)));
    else
        sd_ctx_check(c, c->be->fill(sd_f32(root->grad), 1.0f, 1));
    for (int i = root_out->tape_index; i >= 0 && c->status == SD_OK; i--) {
        sd_tape_node *n = &c->tape->nodes[i];
        if (!n->grad) continue;
        const int grouped = backward_linear_group(c, i);
        if (grouped) {
            i -= grouped - 1;
            continue;
        }
        backward_node(c, n);
        for (int w = 0; w < c->tape->n_widened; w++) give_back(c, c->tape->widened[w]);
        c->tape->n_widened = 0;
        /* every consumer of n's output ran before n (reverse recording order): nothing reads
         * dL/d(out) again (NULL: backward_node handed the buffer on to an input), unless another
         * node shares the buffer as its gradient (then it is that node's alone now) */
        if (n->grad && !unshare_grad(c->tape, n->grad)) give_back(c, n->grad);
        n->grad = NULL;
    }
    return c->status;
}

/* ------------------------------------------------------------------------------------------------
 * Losses and scalars
 * --------------------------------------------------------------------------------------------- */

sd_tensor *sd_mse(sd_ctx *c, sd_tensor *a, sd_tensor *b) {
    if (c->status != SD_OK) return NULL;
    char sa[96], sb[96];
    if (!a || !b || sd_numel(a) != sd_numel(b))
        return sd_ctx_fail(c, SD_ERR_SHAPE, "mse: shapes %s and %s differ",
                           a ? sd_shape_str(a->ndim, a->shape, sa, sizeof sa) : "missing",
                           b ? sd_shape_str(b->ndim, b->shape, sb, sizeof sb) : "missing");
    sd_tensor *out = sd_new4(c, 1, 1, 0, 0, 0);
    if (!out) return NULL;
    sd_ctx_check(c, c->be->mse(sd_f32(a), sd_f32(b), sd_f32(out), sd_numel(a)));
    sd_tape_record(c, SD_OP_MSE, out, a, b, NULL);
    return c->status == SD_OK ? out : NULL;
}

float sd_item(sd_ctx *c, const sd_tensor *x) {
    float v = NAN;
    if (c->status != SD_OK || !x || sd_numel(x) < 1) return v;
    sd_ctx_check(c, c->be->download(&v, x->data, sizeof v));
    return v;
}

int sd_all_finite(sd_ctx *c, const sd_tensor *x) {
    int ok = 0;
    return sd_all_finite_each(c, &x, 1, &ok) == SD_OK && ok;
}

sd_status sd_all_finite_each(sd_ctx *c, const sd_tensor *const *xs, int count, int *ok) {
    const float *data[SD_ALL_FINITE_MAX];
    int64_t n[SD_ALL_FINITE_MAX];
    for (int k = 0; k < count; k++) ok[k] = 0;
    if (c->status != SD_OK) return c->status;
    if (count < 1 || count > SD_ALL_FINITE_MAX)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "all_finite: %d tensors (1 to %d)", count, SD_ALL_FINITE_MAX), c->status;
    for (int k = 0; k < count; k++) {
        if (!xs[k] || xs[k]->dtype != SD_F32)
            return sd_ctx_fail(c, SD_ERR_INTERNAL, "all_finite: tensor %d is %s", k, xs[k] ? "not F32" : "missing"),
                   c->status;
        data[k] = sd_f32(xs[k]);
        n[k] = sd_numel(xs[k]);
    }
    sd_ctx_check(c, c->be->all_finite(data, n, count, ok));
    return c->status;
}

/* ------------------------------------------------------------------------------------------------
 * Parameters and Adam
 * --------------------------------------------------------------------------------------------- */

/* A zero-filled tensor in the backend's memory, owned (released by sd_tensor_free). */
static sd_tensor *device_tensor(sd_ctx *c, int ndim, const int64_t *shape, const char *name) {
    sd_tensor *t = calloc(1, sizeof *t);
    if (!t) {
        sd_ctx_fail(c, SD_ERR_OOM, "out of host memory for tensor '%s'", name);
        return NULL;
    }
    *t = sd_tensor_wrap(NULL, SD_F32, ndim, shape);
    sd_tensor_set_name(t, name);
    t->data = c->be->mem_alloc(sd_nbytes(t) ? sd_nbytes(t) : 4);
    if (!t->data) {
        free(t);
        c->status = SD_ERR_OOM;
        return NULL;
    }
    t->device = c->device;
    t->owns_data = 1;
    if (!sd_ctx_check(c, c->be->zero(t->data, sd_nbytes(t)))) {
        sd_tensor_free(t);
        return NULL;
    }
    return t;
}

sd_tensor *sd_param_new(sd_ctx *c, const sd_tensor *init, const char *name) {
    if (c->status != SD_OK || !init) return NULL;
    sd_tensor *t = device_tensor(c, init->ndim, init->shape, name);
    if (!t) return NULL;
    if (init->data && !sd_ctx_check(c, c->be->upload(t->data, init->data, sd_nbytes(init)))) {
        sd_tensor_free(t);
        return NULL;
    }
    t->requires_grad = 1;
    return t;
}

sd_status sd_param_copy(sd_ctx *c, sd_tensor *dst, const sd_tensor *src) {
    return sd_assign(c, dst, src);
}

sd_status sd_adam_init(sd_ctx *c, sd_adam *opt, sd_tensor **params, int n, double lr) {
    memset(opt, 0, sizeof *opt);
    opt->n = n;
    opt->lr = lr;
    opt->beta1 = 0.9;
    opt->beta2 = 0.999;
    opt->eps = 1e-8;
    opt->params = calloc((size_t)n, sizeof *opt->params);
    opt->m = calloc((size_t)n, sizeof *opt->m);
    opt->v = calloc((size_t)n, sizeof *opt->v);
    if (!opt->params || !opt->m || !opt->v) {
        sd_adam_free(opt);
        return c->status = sd_fail(SD_ERR_OOM, "out of host memory creating an optimiser");
    }
    for (int i = 0; i < n; i++) {
        opt->params[i] = params[i];
        opt->m[i] = device_tensor(c, params[i]->ndim, params[i]->shape, "adam.m");
        opt->v[i] = device_tensor(c, params[i]->ndim, params[i]->shape, "adam.v");
        if (!opt->m[i] || !opt->v[i]) {
            sd_adam_free(opt);
            return c->status;
        }
    }
    return SD_OK;
}

sd_status sd_adam_step(sd_ctx *c, sd_adam *opt) {
    if (c->status != SD_OK) return c->status;
    if (!c->be->adam_step)
        return c->status = sd_fail(SD_ERR_UNSUPPORTED, "adam: not available on the %s backend", c->be->name);
    opt->step++;
    for (int i = 0; i < opt->n && c->status == SD_OK; i++) {
        sd_tensor *p = opt->params[i];
        if (!p->grad) continue;
        sd_ctx_check(c, c->be->adam_step(sd_f32(p), sd_f32(p->grad), sd_f32(opt->m[i]),
                                         sd_f32(opt->v[i]), sd_numel(p), opt->lr, opt->beta1,
                                         opt->beta2, opt->eps, opt->step));
    }
    return c->status;
}

sd_status sd_adam_restart(sd_ctx *c, sd_adam *opt, double lr) {
    if (c->status != SD_OK) return c->status;
    for (int i = 0; i < opt->n && c->status == SD_OK; i++) {
        sd_ctx_check(c, c->be->zero(opt->m[i]->data, sd_nbytes(opt->m[i])));
        sd_ctx_check(c, c->be->zero(opt->v[i]->data, sd_nbytes(opt->v[i])));
    }
    opt->step = 0;
    opt->lr = lr;
    return c->status;
}

void sd_adam_free(sd_adam *opt) {
    for (int i = 0; i < opt->n; i++) {
        if (opt->m) sd_tensor_free(opt->m[i]);
        if (opt->v) sd_tensor_free(opt->v[i]);
    }
    free(opt->params);
    free(opt->m);
    free(opt->v);
    memset(opt, 0, sizeof *opt);
}
