/* nn.h: the layer between models and backends.
 *
 * An sd_ctx carries the backend (device), the activation arena, the attention hook and a sticky
 * status. Every nn function allocates its output from the arena and returns it, or returns NULL
 * once the context has failed (shape mismatch, out of memory, ...): model code reads as a straight
 * sequence of calls and checks the status once at the end, e.g.
 *
 *     h = sd_group_norm(c, x, &r->norm1, groups, eps, 1);
 *     h = sd_conv2d(c, h, &r->conv1, 1, 1);
 *     ...
 *     return sd_ctx_status(c);
 *
 * The first failure's message (naming the layer and shapes) is kept; later calls do nothing. */
#ifndef SD_NN_H
#define SD_NN_H

#include "sd/backend.h"
#include "sd/core.h"

struct sd_attn_hook;
struct sd_tape;

typedef struct sd_ctx {
    const sd_backend *be;
    sd_arena *arena;            /* activations: reset by the caller between steps */
    sd_arena *keep;             /* results that outlive a step (trajectories, embeddings) */
    int device;                 /* SD_DEVICE_CPU or CUDA ordinal */
    sd_status status;           /* first failure, SD_OK while healthy */
    struct sd_attn_hook *hook;  /* attention controller, or NULL for plain attention */
    struct sd_tape *tape;       /* autodiff recording (autograd.h), or NULL */
    int recompute;              /* gradient steps recompute UNet blocks instead of keeping their
                                 * activations (sd_checkpoint): less memory, one more forward */
    sd_arena *scratch;          /* where a recomputed block's activations live (created on first use) */
    int eager;                  /* run repeated steps op by op instead of replaying them as CUDA
                                 * graphs (sd_graph_step; the CPU always runs eagerly) */
    int64_t graph_replays;      /* steps run from a CUDA graph on this context so far (reports) */
    sd_dtype activations;       /* storage of the UNet's activations in a forward without a tape
                                 * (and in gradient steps when f16_steps is set): SD_F32 (default)
                                 * or SD_F16 (fast mode on a GPU: half the memory traffic, fp16
                                 * tensor-core convolutions). Inputs, outputs, time embedding and
                                 * every gradient stay F32. */
    int f16_steps;              /* 1: a gradient step's forward stores fp16 too, as the plain
                                 * forward does (the same ops, recorded on the tape), instead of F32
                                 * activations on fp16 weight copies. Gradients stay F32, each in its
                                 * tensor's logical (NCHW or token) order; a backward that reads a
                                 * saved fp16 value widens it first (autograd.c, saved_f32). Fast
                                 * mode's default; SD_STEP_ACTIVATIONS=f32 clears it. */
    int channels_last;          /* fp16 forwards hold the UNet's feature maps channels-last
                                 * ([B, H, W, C], sd_tensor.channels_last) where the backend has the
                                 * ops (sd_f16_ops.*_nhwc): tensor-core convolutions without layout
                                 * transforms, transformer tokens as views. Fast mode on a GPU by
                                 * default (SD_CHANNELS_LAST=0 keeps NCHW). */
    int f32_data_grads;         /* 1: fast mode's gradient steps multiply their data gradients on
                                 * the F32 weights, as exact mode (SD_BF16_GRADS=0, to measure what
                                 * the bf16 copies buy); 0 (default): on bf16 copies of the frozen
                                 * linear and stride-1 convolution weights (autograd.c) */
    struct sd_lowp_weights *lowp_weights; /* the fp16 copies of weights that fp16 ops read */
    sd_arena *block_result;     /* while sd_checkpoint runs a block in the scratch arena: its
                                 * caller's arena, where sd_block_result sends the block's output */
} sd_ctx;

/* A context on backend `be` (device SD_DEVICE_CPU or a CUDA ordinal) with fresh arenas. */
sd_status sd_ctx_init(sd_ctx *c, const sd_backend *be, int device);
/* A context on the CPU. */
sd_status sd_ctx_init_cpu(sd_ctx *c);
void sd_ctx_free(sd_ctx *c);
/* Records a failure (keeps the first one) and returns NULL for convenient `return sd_ctx_fail(...)`. */
sd_tensor *sd_ctx_fail(sd_ctx *c, sd_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static inline sd_status sd_ctx_status(const sd_ctx *c) { return c->status; }
/* Checks a backend call's status; on failure records it in the context. Returns 1 when ok. */
int sd_ctx_check(sd_ctx *c, sd_status s);

/* A new F32 activation in the arena (uninitialised). */
sd_tensor *sd_new(sd_ctx *c, int ndim, const int64_t *shape);
sd_tensor *sd_new4(sd_ctx *c, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* A copy of x in the keep arena, which survives resets of the activation arena. */
sd_tensor *sd_keep(sd_ctx *c, const sd_tensor *x);
/* A new F32 tensor in the keep arena (uninitialised). */
sd_tensor *sd_keep_new(sd_ctx *c, int ndim, const int64_t *shape);
/* dst <- src (equal element counts, both on the context's device). */
sd_status sd_assign(sd_ctx *c, sd_tensor *dst, const sd_tensor *src);
/* A copy of a host F32 tensor on the context's device (arena). */
sd_tensor *sd_upload(sd_ctx *c, const sd_tensor *host);
/* Copies an F32 tensor of the context's device into a host tensor of the same shape. */
sd_status sd_download(sd_ctx *c, const sd_tensor *dev, sd_tensor *host);
/* A new heap (host) tensor holding a copy of `dev`; the caller frees it. */
sd_tensor *sd_download_new(sd_ctx *c, const sd_tensor *dev);
/* Block recomputation (activation checkpointing). y = fn(c, block, x, aux, aux2), where fn is a
 * pure function of its inputs (a UNet resnet: x and the time embedding; a transformer block: x and
 * its cross-attention's keys and values, projected at the call's start). While a tape records and
 * c->recompute is set, fn runs
 * without recording, its activations in c->scratch, which is reset right after: only y is kept.
 * The backward pass runs fn again, recording, in the scratch arena, and back-propagates through
 * it. Otherwise it is just fn(c, block, x, aux, aux2). `block` must stay valid until the step's
 * backward (model weights, or memory from the activation arena). aux and aux2 may be NULL. */
typedef sd_tensor *(*sd_block_fn)(sd_ctx *c, const void *block, sd_tensor *x, sd_tensor *aux, sd_tensor *aux2);
sd_tensor *sd_checkpoint(sd_ctx *c, sd_block_fn fn, const void *block, sd_tensor *x, sd_tensor *aux,
                         sd_tensor *aux2);
/* Called by a block function right before the op that makes its result: when sd_checkpoint runs
 * the block in the scratch arena, that op's output goes straight to the caller's arena, so
 * sd_checkpoint need not copy it out. A no-op anywhere else. */
void sd_block_result(sd_ctx *c);

/* Moves every F32 tensor of a weight store to the context's device (no-op on the CPU). Also drops
 * the context's fp16 weight copies (remade on first use), so adopt weights before capturing CUDA
 * graphs: a graph captured earlier may read the dropped copies. */
struct sd_weights;
sd_status sd_ctx_adopt_weights(sd_ctx *c, struct sd_weights *w);
/* 1 when a forward on this context may store its activations as fp16 now: asked for
 * (c->activations), the backend has fp16 ops, and no tape records or gradient steps store fp16
 * too (c->f16_steps). Under an
 * attention controller the sites whose maps it reads run in F32 (sd_attention), and its value
 * substitutes are converted to the storage (the UNet's cross-attention projections, attn.h). */
int sd_ctx_stores_f16(const sd_ctx *c);
/* 1 when a gradient step (a tape attached) stores its activations as a forward without one does:
 * exact mode's F32, or fp16 in both (c->f16_steps). Then what a step's UNet prefix holds is also
 * the prefix of the forwards at its latent and timestep (sd_unet_forward_from). */
int sd_ctx_steps_store_as_forwards(const sd_ctx *c);
/* Device memory held by the fp16 copies of weights made for fp16 activations (0 when none). */
size_t sd_ctx_lowp_weight_bytes(const sd_ctx *c);
/* x converted to `dtype` (SD_F32 or SD_F16; x itself when it already is). An F32 result is always
 * NCHW. On a tape (a step storing fp16, c->f16_steps) the identity: gradients are F32 either way. */
sd_tensor *sd_to_dtype(sd_ctx *c, sd_tensor *x, sd_dtype dtype);
/* 1 when fp16 feature maps on this context go channels-last: asked for (c->channels_last) and the
 * backend has every *_nhwc op. */
int sd_ctx_channels_last(const sd_ctx *c);
/* A 4-d fp16 map x channels-last (x itself when it already is, or when sd_ctx_channels_last is 0).
 * The nn ops keep a channels-last map channels-last; an op without a channels-last form (or a
 * geometry its form does not take) converts its input back to NCHW first. */
sd_tensor *sd_to_channels_last(sd_ctx *c, sd_tensor *x);

/* A header sharing x's data with a new shape (same numel); arena-allocated header. */
sd_tensor *sd_reshape(sd_ctx *c, sd_tensor *x, int ndim, const int64_t *shape);
sd_tensor *sd_reshape4(sd_ctx *c, sd_tensor *x, int ndim, int64_t d0, int64_t d1, int64_t d2, int64_t d3);
/* Rows [start, start+count) along the first axis, as a view (no copy). */
sd_tensor *sd_slice0(sd_ctx *c, sd_tensor *x, int64_t start, int64_t count);

/* ------------------------------------------------------------------------------------------------
 * Parameter bundles: the weight tensors of one layer, bound from a checkpoint by name.
 * --------------------------------------------------------------------------------------------- */
/* weight (out, in). frozen: bound from a checkpoint (sd_bind_linear*), so its values never change
 * while bound and fast mode may run an F32 linear on the weight's fp16 copy (sd_linear); a matrix
 * built from activations ({t, NULL}) leaves it 0. */
typedef struct sd_linear_w { sd_tensor *weight, *bias; int frozen; } sd_linear_w;
/* weight (out, in, kh, kw). f16_in_f32: a UNet checkpoint weight (sd_unet_bind sets it) whose F32
 * convolutions in fast mode (a gradient step's forward) run on its fp16 copy, channels-last, and
 * whose stride-1 data gradients on a transposed bf16 copy (autograd.c, bf16_conv_data_gradient). */
typedef struct sd_conv_w { sd_tensor *weight, *bias; int f16_in_f32; } sd_conv_w;
typedef struct sd_norm_w { sd_tensor *weight, *bias; } sd_norm_w;       /* (C), (C) */

/* ------------------------------------------------------------------------------------------------
 * Layers
 * --------------------------------------------------------------------------------------------- */

/* x[..., K] -> [..., N]. A weight of shape (N, K, 1, 1) (1x1 conv) is accepted as (N, K). */
sd_tensor *sd_linear(sd_ctx *c, sd_tensor *x, const sd_linear_w *l);
/* sd_add(residual, sd_linear(x, l)) in one GEMM (the residual summed in its epilogue: no add's pass
 * over three tensors); residual has the output's element count and x's dtype. Gradients as the
 * unfused pair's. */
sd_tensor *sd_linear_add(sd_ctx *c, sd_tensor *x, const sd_linear_w *l, sd_tensor *residual);
/* A per-pixel linear (a 1x1 projection) from a map x[B, C, H, W] to tokens [B, H·W, N]; and from
 * tokens x[B, H·W, K] to a map, plus a residual map [B, N, H, W]: a transformer's proj_in and
 * proj_out. A channels-last fp16 map's memory is the tokens, read or written in place (the
 * residual summed in the GEMM's epilogue), and in a gradient step the tape records the linear on
 * the map itself, whose gradient then needs no transpose; otherwise sd_nchw_to_tokens + sd_linear,
 * and sd_linear + sd_tokens_to_nchw + sd_add. */
sd_tensor *sd_linear_of_map(sd_ctx *c, sd_tensor *x, const sd_linear_w *l);
sd_tensor *sd_linear_add_map(sd_ctx *c, sd_tensor *x, const sd_linear_w *l, sd_tensor *residual);
/* outs[i] = sd_linear(x, ls[i]) for i < count (<= SD_LINEAR_MANY_MAX): an attention's projections of
 * one input. With frozen weights of one shape and fp16 storage (bias-free weights), or F32 maps
 * where sd_linear would use the weights' fp16 copies (fast mode's gradient steps; the time
 * projections of the F32 time embedding, with their biases), one batched product on a packed fp16
 * copy of the weights (the outputs are views of one block; the tape records one linear per
 * output); otherwise one linear each. Returns the context's status. */
sd_status sd_linear_many(sd_ctx *c, sd_tensor *x, const sd_linear_w *const *ls, int count, sd_tensor **outs);
/* outs[i] = sd_linear(xs[i], ls[i]) for i < count (<= 256): the linears of one input and one weight
 * shape, in order of first appearance, in one sd_linear_many each (chunks of SD_LINEAR_MANY_MAX).
 * The tape then sees each group's linears as consecutive nodes, whose data gradients the backward
 * takes in one product where it can (autograd.c, backward_linear_group). A UNet call's
 * cross-attention keys and values and its resnets' time projections. */
sd_status sd_linear_grouped(sd_ctx *c, sd_tensor *const *xs, const sd_linear_w *const *ls, int count, sd_tensor **outs);
/* x[B, Ci, H, W] -> [B, Co, Ho, Wo], symmetric padding. */
sd_tensor *sd_conv2d(sd_ctx *c, sd_tensor *x, const sd_conv_w *w, int stride, int pad);
/* Asymmetric padding (top, left, bottom, right). */
sd_tensor *sd_conv2d_pad4(sd_ctx *c, sd_tensor *x, const sd_conv_w *w, int stride, int pad_top,
                          int pad_left, int pad_bottom, int pad_right);
/* A resnet's convolution with what follows it: conv(x) + chan_bias[b, c] (F32 [B, Co]: the time
 * embedding) + residual (the output's shape: the skip connection); either may be NULL. With fp16
 * storage the convolution's epilogue adds both (one pass instead of three); a fast gradient step's
 * convolution on fp16 copies adds them in F32 in its widening pass (the same sums, one pass),
 * recorded on the tape as the separate ops; otherwise they are the separate ops
 * sd_add_channel_bias and sd_add(residual, ·). */
sd_tensor *sd_conv2d_fused(sd_ctx *c, sd_tensor *x, const sd_conv_w *w, int stride, int pad, sd_tensor *chan_bias,
                           sd_tensor *residual);
/* x[B, C, ...] -> same shape. */
sd_tensor *sd_group_norm(sd_ctx *c, sd_tensor *x, const sd_norm_w *n, int groups, float eps, int silu);
/* x[..., C] -> same shape. */
sd_tensor *sd_layer_norm(sd_ctx *c, sd_tensor *x, const sd_norm_w *n, float eps);
sd_tensor *sd_unary(sd_ctx *c, sd_unary_op op, sd_tensor *x);
/* A unary op with its parameter (the leaky-ReLU slope). */
sd_tensor *sd_unary_param(sd_ctx *c, sd_unary_op op, sd_tensor *x, float alpha);
static inline sd_tensor *sd_silu(sd_ctx *c, sd_tensor *x) { return sd_unary(c, SD_UNARY_SILU, x); }
sd_tensor *sd_add(sd_ctx *c, sd_tensor *a, sd_tensor *b);
sd_tensor *sd_sub(sd_ctx *c, sd_tensor *a, sd_tensor *b);
sd_tensor *sd_mul(sd_ctx *c, sd_tensor *a, sd_tensor *b);
/* alpha·x + beta·z (same shapes). */
sd_tensor *sd_axpby(sd_ctx *c, float alpha, sd_tensor *x, float beta, sd_tensor *z);
/* coef[0]·x + coef[1]·z with coef two F32 values on the context's device, read when the op runs:
 * the spelling for per-step factors of work replayed as a CUDA graph (sd_graph_step). */
sd_tensor *sd_axpby_dev(sd_ctx *c, const sd_tensor *coef, sd_tensor *x, sd_tensor *z);
sd_tensor *sd_scale(sd_ctx *c, sd_tensor *x, float alpha);
sd_tensor *sd_clamp(sd_ctx *c, sd_tensor *x, float lo, float hi);
/* x[B, C, H, W] + v[B, C] broadcast over H, W. */
sd_tensor *sd_add_channel_bias(sd_ctx *c, sd_tensor *x, sd_tensor *v);
/* x[..., 2N] -> [..., N]. */
sd_tensor *sd_geglu(sd_ctx *c, sd_tensor *x);
/* a[B, Ca, H, W], b[B, Cb, H, W] -> [B, Ca + Cb, H, W]. */
sd_tensor *sd_concat_channels(sd_ctx *c, sd_tensor *a, sd_tensor *b);
/* Concatenation along the first axis (batch), e.g. [uncond; cond] contexts. */
sd_tensor *sd_concat0(sd_ctx *c, sd_tensor *a, sd_tensor *b);
/* x[B, C, H, W] -> [B, C, Ho, Wo] nearest. */
sd_tensor *sd_upsample_nearest(sd_ctx *c, sd_tensor *x, int64_t Ho, int64_t Wo);
/* x[B, C, H, W] -> [B, C, (H - k) / stride + 1, (W - k) / stride + 1]: torch MaxPool2d(k, stride)
 * without padding. Forward only (a metric's layer): with a tape recording gradients through x
 * the call fails instead of silently cutting the gradient. */
sd_tensor *sd_max_pool2d(sd_ctx *c, sd_tensor *x, int kernel, int stride);
/* x[B, C, H, W] -> tokens [B, H·W, C]; and back. */
sd_tensor *sd_nchw_to_tokens(sd_ctx *c, sd_tensor *x);
sd_tensor *sd_tokens_to_nchw(sd_ctx *c, sd_tensor *x, int64_t H, int64_t W);
/* t[B] -> [B, dim]. */
sd_tensor *sd_timestep_embedding(sd_ctx *c, sd_tensor *t, int dim, int flip_sin_to_cos, float shift);
/* ids (I32 host or device tensor [B, S]) -> [B, S, C] rows of table[V, C]. Ids outside [0, V)
 * fail naming the position. */
sd_tensor *sd_embedding(sd_ctx *c, const sd_tensor *ids, const sd_tensor *table);

/* Multi-head attention core: q[B, Sq, H·D], k[B, Sk, H·D], v[B, Sk, H·Dv] -> [B, Sq, H·Dv] with
 * scale D^-0.5. When `site` is given and the context has a hook that asks for this site's maps,
 * the probabilities [B·H, Sq, Sk] are materialised and handed to the hook, which may capture or
 * replace them (attn.h). */
struct sd_attn_site;
sd_tensor *sd_attention(sd_ctx *c, sd_tensor *q, sd_tensor *k, sd_tensor *v, int heads, int causal,
                        const struct sd_attn_site *site);

#endif
