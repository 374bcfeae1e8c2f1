/* tape.h (internal to src/nn): the node layout shared by the recording side (nn.c) and the
 * backward pass (autograd.c). */
#ifndef SD_NN_TAPE_H
#define SD_NN_TAPE_H

#include "sd/autograd.h"
#include "sd/backend.h"

typedef enum sd_op_kind {
    SD_OP_LINEAR,          /* in: x, weight, bias */
    SD_OP_CONV2D,          /* in: x, weight, bias; attr conv */
    SD_OP_GROUP_NORM,      /* in: x, gamma, beta; attr groups, eps, silu */
    SD_OP_LAYER_NORM,      /* in: x, gamma, beta; attr eps */
    SD_OP_UNARY,           /* in: x; attr unary, alpha */
    SD_OP_ADD,             /* in: a, b */
    SD_OP_SUB,             /* in: a, b */
    SD_OP_MUL,             /* in: a, b */
    SD_OP_AXPBY,           /* in: x, z; attr alpha, beta */
    SD_OP_AXPBY_DEV,       /* in: x, z, coef (two values on the device, no gradient) */
    SD_OP_ADD_CHANNEL_BIAS,/* in: x, v */
    SD_OP_GEGLU,           /* in: x */
    SD_OP_CONCAT_CHANNELS, /* in: a, b */
    SD_OP_CONCAT0,         /* in: a, b */
    SD_OP_UPSAMPLE,        /* in: x */
    SD_OP_TRANSPOSE,       /* in: x; attr dims (B, R, C) of the forward transpose */
    SD_OP_VIEW,            /* in: x; attr offset: out = x.data + offset, same memory */
    SD_OP_ATTENTION,       /* in: q, k, v; attr heads, causal, scale (fused, maps recomputed) */
    SD_OP_ATTN_PROBS,      /* in: q, k; out: maps [B·H, Sq, Sk]; attr heads, scale */
    SD_OP_ATTN_APPLY,      /* in: probs, v; attr heads */
    SD_OP_MSE,             /* in: a, b; out: one element */
    SD_OP_CHECKPOINT,      /* in: x, aux, aux2; attr block: recomputed in the backward (sd_checkpoint) */
} sd_op_kind;

/* The most saved values one node's backward reads (an attention's q, k, v and output). */
#define SD_TAPE_MAX_WIDENED 4

typedef struct sd_tape_node {
    sd_op_kind op;
    sd_tensor *out;
    sd_tensor *in[3];
    sd_tensor *grad; /* dL/d(out), created on the first accumulation */
    int grad_bf16;   /* grad's buffer holds the gradient rounded to bf16 (sd_f16 bits) by its only
                      * consumer's backward, for this linear's data gradient (autograd.c) */
    int consumers;   /* the nodes recorded with out as an input (one count per input slot) */
    union {
        struct { sd_conv_geom g; int frozen; } conv; /* frozen: a checkpoint's weight (sd_conv_w.f16_in_f32) */
        /* stats: the (mean, rstd) per (image, group) a channels-last fp16 group norm's forward kept
         * for its backward (sd_f16_ops.group_norm_nhwc), [B·groups, 2] floats of the forward's
         * arena; NULL otherwise */
        struct { int groups; float eps; int silu; const sd_tensor *stats; } norm;
        struct { sd_unary_op op; float alpha; } unary;
        struct { float alpha, beta; } axpby;
        struct { int64_t B, R, C; } transpose;
        struct { int64_t offset; } view;
        /* lse: the softmax statistics the backend's forward kept for its backward (fused attention
         * on the tape; NULL otherwise), B·H·Sq floats of the forward's arena */
        struct { int heads, causal; float scale; const sd_tensor *lse; } attn;
        struct { sd_block_fn fn; const void *block; } block;
        /* frozen: the weight is a checkpoint's (sd_linear_w.frozen). A per-pixel linear recorded on a
         * channels-last map (sd_linear_of_map, sd_linear_add_map): map_in, x is the map [B, K, H, W]
         * read as tokens; map_out, y is the map [B, N, H, W] written as tokens. That side's gradient
         * is the map's, in NCHW order, taken as it is by the backward (no transpose). */
        struct { int frozen, map_in, map_out; } linear;
    } attr;
} sd_tape_node;

struct sd_tape {
    sd_tape_node *nodes;
    int n, cap;
    sd_tensor **leaves; /* leaves whose grad was set by the last backward */
    int n_leaves, cap_leaves;
    /* Gradient buffers of nodes whose backward has run, free for the next gradient of the same
     * element count: the reverse pass then holds only the gradients still live, not one per node
     * (on the SD v1.5 UNet that halves the activation memory of a gradient step). */
    sd_tensor **spare;
    int n_spare, cap_spare;
    /* Gradient buffers held by more than one node: one entry per holder beyond the first. An add's
     * second input shares dL/dy with the first instead of taking a copy of it; the copy is made
     * only when one holder is about to add into the buffer while another still has to read it
     * (grad_of), and the buffer is recycled when its last holder is done. */
    sd_tensor **shared;
    int n_shared, cap_shared;
    struct sd_tape *sub; /* records a recomputed block during the backward (SD_OP_CHECKPOINT) */
    /* F32 copies of the fp16 values the node whose backward runs reads (a step storing fp16,
     * sd_ctx.f16_steps; autograd.c, saved_f32): gradient-pool buffers, handed back after it */
    sd_tensor *widened[SD_TAPE_MAX_WIDENED];
    int n_widened;
};

/* Records a node for `out` when a tape is attached and any input needs a gradient; returns it
 * (for attributes) or NULL when nothing was recorded. Fails the context on out-of-memory. */
sd_tape_node *sd_tape_record(sd_ctx *c, sd_op_kind op, sd_tensor *out, sd_tensor *in0,
                             sd_tensor *in1, sd_tensor *in2);

/* Adds a leaf whose grad was just set to the tape's list, so sd_tape_reset clears it. */
sd_status sd_tape_note_leaf(sd_ctx *c, sd_tape *tape, sd_tensor *leaf);

/* 1 when a linear's data gradient on this context multiplies the frozen weight's bf16 copy
 * (fast mode's gradient steps; autograd.c): w a matrix [N, K] or a 1x1 kernel, bound from a
 * checkpoint (frozen) and not trained. */
int sd_linear_bf16_data_gradient(const sd_ctx *c, const sd_tensor *w, int frozen);

/* The bfloat16 copy of a frozen F32 weight on the context's device (nn.c's table of low-precision
 * copies; made on first use): what fast mode's gradient steps multiply their data gradients with. */
const sd_f16 *sd_lowp_weight_bf16(sd_ctx *c, const sd_tensor *w);
/* The bfloat16 copies of `count` (2 .. SD_LINEAR_MANY_MAX) frozen weights of one shape [N, K],
 * stacked [count·N, K] in one buffer: what a group of linears of one input multiplies its data
 * gradients with in one product (sd_f16_ops.linear_backward_data_bf16w_many). */
const sd_f16 *sd_lowp_weights_bf16_stacked(sd_ctx *c, const sd_tensor *const *ws, int count);
/* The same for a convolution weight [Co, Ci, kh, kw], transposed and flipped to [Ci, Co, kh, kw]
 * (sd_f16_ops.to_bf16_conv_transposed): what their stride-1 data gradients convolve with. */
const sd_f16 *sd_lowp_conv_weight_bf16t(sd_ctx *c, const sd_tensor *w);

#endif
