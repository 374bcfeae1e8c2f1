/* backend.h: the op table. One struct of function pointers per device; model code never branches
 * on the device, it calls the nn layer (nn.h), which validates shapes, allocates the output from
 * the context's arena and dispatches here.
 *
 * Conventions: every pointer is dense F32 memory on the backend's device, outputs are
 * preallocated and never alias inputs unless stated; shapes are given as plain integers, with the
 * layout in a comment. The CPU table is the reference every other table is tested against. */
#ifndef SD_BACKEND_H
#define SD_BACKEND_H

#define SD_ALL_FINITE_MAX 64 /* tensors per all_finite call */

#include "sd/core.h"

typedef enum sd_unary_op {
    SD_UNARY_SILU = 0,   /* x * sigmoid(x) */
    SD_UNARY_GELU,       /* exact erf GELU: 0.5 x (1 + erf(x / sqrt 2)) */
    SD_UNARY_QUICK_GELU, /* x * sigmoid(1.702 x) (CLIP) */
    SD_UNARY_LEAKY_RELU, /* x >= 0 ? x : alpha x (StyleDiffusion's mapping networks: alpha 0.01) */
} sd_unary_op;

typedef enum sd_binary_op { SD_BINARY_ADD = 0, SD_BINARY_SUB, SD_BINARY_MUL } sd_binary_op;

/* Geometry of a 2-d convolution. Padding may be asymmetric (the VAE downsampler pads only bottom
 * and right). */
typedef struct sd_conv_geom {
    int64_t batch, c_in, h_in, w_in;
    int64_t c_out, h_out, w_out;
    int kh, kw, stride;
    int pad_top, pad_left; /* bottom/right padding is implied by h_out/w_out */
} sd_conv_geom;

/* A stride-1 convolution's data gradient is itself a stride-1 convolution: dx = conv(dy, w') with
 * w'[ci, co, i, j] = w[co, ci, kh-1-i, kw-1-j] (channels swapped, kernel flipped) and, on each
 * side, the kernel's size less one less the forward's padding on that side. Sets *t to
 * that convolution's geometry (dy [B, Co, Ho, Wo] in, dx [B, Ci, H, W] out) and returns 1, or
 * returns 0 where it does not apply (a stride above 1, or a padding beyond the kernel). */
static inline int sd_conv_data_gradient_geom(const sd_conv_geom *g, sd_conv_geom *t) {
    const int64_t pad_bottom = g->h_out - 1 + g->kh - g->h_in - g->pad_top;
    const int64_t pad_right = g->w_out - 1 + g->kw - g->w_in - g->pad_left;
    if (g->stride != 1 || g->pad_top < 0 || g->pad_left < 0 || g->pad_top > g->kh - 1 || g->pad_left > g->kw - 1 ||
        pad_bottom < 0 || pad_right < 0 || pad_bottom > g->kh - 1 || pad_right > g->kw - 1)
        return 0;
    /* field by field: this header is also C++ (the CUDA sources) */
    *t = *g;
    t->c_in = g->c_out, t->h_in = g->h_out, t->w_in = g->w_out;
    t->c_out = g->c_in, t->h_out = g->h_in, t->w_out = g->w_in;
    t->pad_top = g->kh - 1 - g->pad_top, t->pad_left = g->kw - 1 - g->pad_left;
    return 1;
}

/* fp16 activation storage, for the forward passes of fast mode (see sd_ctx.activations): every
 * activation pointer below holds raw IEEE half bits (sd_f16), dense, on the backend's device. The
 * arithmetic is fp32; each op rounds its output once, to nearest even. Weights of linear and
 * convolution layers come as fp16 copies (the nn layer makes them once per weight); linear biases
 * are fp16 too (what an fp16 GEMM epilogue reads), while convolution biases, norm affine parameters
 * and the channel bias `v` stay F32. A convolution rounds its product, then adds the bias (and a
 * channel bias and residual, when given) and rounds again (a separate pass); a linear adds its bias
 * and residual before its only rounding.
 * Shapes and layouts are those of the F32 ops of the same name.
 *
 * Why fp16 and not bf16: on the tiny model, storing the UNet's activations in bf16 moves eps by
 * 1.5e-2 (relative to its largest value), in fp16 by 1.6e-3; fast mode's bar is 2e-2, and its
 * GEMMs round too. SD v1.x activations fit fp16's range (its usual deployment format). */
typedef uint16_t sd_f16;
/* The most linears of one input that one batched op takes (sd_linear_many's projections; the f16
 * ops' linear_batched and linear_backward_data_bf16w_many): SD v1.5's largest group is the twelve
 * key and value projections of its six 1280-wide cross-attentions (sd_cross_attention_kv). */
#define SD_LINEAR_MANY_MAX 16

typedef struct sd_f16_ops {
    sd_status (*to_f16)(const float *x, sd_f16 *y, int64_t n);
    sd_status (*to_f32)(const sd_f16 *x, float *y, int64_t n);
    sd_status (*copy)(sd_f16 *dst, const sd_f16 *src, int64_t n);
    sd_status (*linear)(const sd_f16 *x, const sd_f16 *w, const sd_f16 *b, const sd_f16 *r, sd_f16 *y,
                        int64_t M, int64_t K, int64_t N);
    /* The F32 linear of fast mode's gradient steps (whose activations stay F32 for the tape) on a
     * frozen weight's fp16 copy: y[M, N] = fp16(x) · w[N, K]ᵀ (+ r) (+ b) with x rounded to fp16
     * once, the products summed in fp32, and x, b, r, y F32 (y not rounded to fp16). The fp16
     * tensor cores then run on native operands instead of converting F32 ones tile by tile. */
    sd_status (*linear_f32io)(const float *x, const sd_f16 *w, const float *b, const float *r, float *y,
                              int64_t M, int64_t K, int64_t N);
    /* bfloat16 copies for fast mode's gradient steps (the bits in sd_f16 storage): y = bf16(x),
     * rounded to nearest even; and a linear's data gradient on a frozen weight's bf16 copy,
     * dx[M, K] (+)= bf16(dy)[M, N] · w[N, K] with fp32 sums: the arithmetic of the FAST_16BF GEMM it
     * replaces (bf16 keeps fp32's range: small gradients do not underflow as in fp16), with native
     * operands for the tensor cores instead of F32 ones converted tile by tile.
     * accumulate: 1 adds into dx, as the F32 backward ops do; 0 writes dx, whose contents are then
     * not read (a gradient's first contribution: no zero-filled buffer to fill and read back). */
    sd_status (*to_bf16)(const float *x, sd_f16 *y, int64_t n);
    sd_status (*linear_backward_data_bf16w)(const float *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                            int64_t N, int accumulate);
    /* The data gradients of `count` (<= SD_LINEAR_MANY_MAX) such linears of one input (an attention's
     * q, k and v projections) in one product: dx[M, K] (+)= Σ_i bf16(dy[i])[M, N] · w_i[N, K], with w
     * the bf16 copies stacked [count·N, K] and the sums in fp32 over all count·N terms: the dy[i]
     * rounded side by side into one [M, count·N] operand, then one GEMM with count times the inner
     * dimension, instead of `count` conversions and GEMMs that read back and add into dx in turn. */
    sd_status (*linear_backward_data_bf16w_many)(const float *const *dy, int count, const sd_f16 *w, float *dx,
                                                 int64_t M, int64_t K, int64_t N, int accumulate);
    /* The same data gradient for a per-pixel linear (a 1x1 projection) of B images of S pixels where
     * dy or dx is a map's gradient, which gradient space keeps in NCHW order: dy [B, N, S] when
     * dy_map (else tokens [B, S, N]), dx [B, K, S] when dx_map (else [B, S, K]). A transformer's
     * proj_in reads a channels-last map as tokens (dx a map), its proj_out writes one (dy a map):
     * this takes their gradients in place, with no transpose of either before or after. The same
     * sums as linear_backward_data_bf16w on transposed copies, in an order the backend chooses. */
    sd_status (*linear_backward_data_bf16w_map)(const float *dy, const sd_f16 *w, float *dx, int64_t B, int64_t S,
                                                int64_t K, int64_t N, int dy_map, int dx_map, int accumulate);
    /* A gradient step's convolution data gradient (F32 NCHW maps, stride 1: see
     * sd_conv_data_gradient_geom) on a frozen weight's bf16 copy in the data gradient's order:
     * to_bf16_conv_transposed makes wt [Ci, Co, kh, kw] = bf16(w[co, ci, kh-1-i, kw-1-j]) from the
     * F32 weight [Co, Ci, kh, kw]; conv2d_backward_data_bf16w computes dx (+)= conv(bf16(dy), wt)
     * (accumulate as above) with dy [B, Co, Ho, Wo] rounded once and fp32 sums, g the forward's
     * geometry (SD_ERR_UNSUPPORTED where the data gradient is no convolution). The F32 op it
     * replaces ran in TF32 on cuDNN. */
    sd_status (*to_bf16_conv_transposed)(const float *w, sd_f16 *wt, int64_t Co, int64_t Ci, int kh, int kw);
    sd_status (*conv2d_backward_data_bf16w)(const float *dy, const sd_f16 *wt, float *dx, const sd_conv_geom *g,
                                            int accumulate);
    /* `count` linears of one input without bias, in one batched GEMM (an attention's q, k and v
     * projections): y[i] = x[M, K] · w[i]ᵀ for i < count, w [count, N, K] packed, y [count, M, N];
     * each as `linear` computes it. */
    sd_status (*linear_batched)(const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N,
                                int count);
    /* The same for F32 x and y (a gradient step's forward, whose activations stay F32; the UNet's
     * time projections of its F32 time embedding): x rounded to fp16 once for all `count` products,
     * y[i] = fp16(x) · w[i]ᵀ (+ b[i]) in fp32, each as linear_f32io computes it. b: NULL, or
     * `count` F32 biases [N] (each may be NULL). */
    sd_status (*linear_batched_f32io)(const float *x, const sd_f16 *w, const float *const *b, float *y, int64_t M,
                                      int64_t K, int64_t N, int count);
    /* The convolution's epilogue takes what follows it in a resnet: y = round(round(conv(x, w)) +
     * b[c] + v[n, c] + r), the three added in fp32 in that order (each may be NULL): b the conv
     * bias, v [B, Co] a per-image channel bias (the time embedding, F32), r a residual in y's
     * layout (the skip connection). */
    sd_status (*conv2d)(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r,
                        sd_f16 *y, const sd_conv_geom *g);
    sd_status (*group_norm)(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y,
                            int64_t B, int64_t C, int64_t S, int groups, float eps, int silu);
    sd_status (*layer_norm)(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y,
                            int64_t M, int64_t C, float eps);
    sd_status (*binary)(sd_binary_op op, const sd_f16 *a, const sd_f16 *b, sd_f16 *y, int64_t n);
    sd_status (*add_channel_bias)(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C,
                                  int64_t S);
    sd_status (*geglu)(const sd_f16 *x, sd_f16 *y, int64_t M, int64_t N);
    sd_status (*concat_channels)(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca,
                                 int64_t Cb, int64_t S);
    sd_status (*upsample_nearest)(const sd_f16 *x, sd_f16 *y, int64_t N, int64_t H, int64_t W,
                                  int64_t Ho, int64_t Wo);
    sd_status (*transpose)(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t R, int64_t C);
    /* plain attention (no maps written: a controller's forward runs in F32). lse (may be NULL): as
     * sd_backend.attention's, for a gradient step that stores fp16 (sd_ctx.f16_steps), whose
     * backward hands the buffer to sd_backend.attention_backward with these inputs widened to F32 */
    sd_status (*attention)(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, sd_f16 *out,
                           int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale,
                           int causal, float *lse);
    /* sd_backend.attention_backward on the fp16 values such a step saved (q, k, v and the forward's
     * out as the fp16 forward stored them; dout and the gradients F32): the same gradients as that
     * op on the inputs widened to F32, without the widened copies. Only for the shapes
     * attention_backward_takes accepts (the others: widen, then sd_backend.attention_backward);
     * either may be NULL (none). */
    int (*attention_backward_takes)(int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale);
    sd_status (*attention_backward)(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, const sd_f16 *out,
                                    const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                    int64_t Sk, int H, int D, int Dv, float scale, int causal, int accumulate,
                                    const float *lse);
    /* sd_backend.geglu_backward on the fp16 input such a step saved (dy and dx F32): the widened
     * copy's gradient, without the copy. NULL where a backend has none. */
    sd_status (*geglu_backward)(const sd_f16 *x, const float *dy, float *dx, int64_t M, int64_t N,
                                int accumulate);
    /* A data gradient rounded by its producer for its only consumer, a linear on a frozen weight's
     * bf16 copy (autograd.c: GEGLU's input, which only the ff_in product reads): geglu_backward with
     * dx [M, 2N] written once in bf16, each value what to_bf16 makes of the F32 op's, and that
     * linear's data gradient from such a dy, dx (+)= dy[M, N] · w[N, K]: linear_backward_data_bf16w
     * without its conversion. One launch and a pass over an F32 copy fewer (GEGLU's input is a
     * step's largest gradient: 4096 x 2560 at 64x64). NULL where a backend has none. */
    sd_status (*geglu_backward_bf16)(const sd_f16 *x, const float *dy, sd_f16 *dx, int64_t M, int64_t N);
    sd_status (*linear_backward_data_bf16)(const sd_f16 *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K,
                                           int64_t N, int accumulate);
    /* sd_backend.layer_norm_backward on the fp16 input [M, C] such a step saved (γ, dy and the
     * gradients F32): the widened copy's gradients, without the copy. NULL where a backend has none. */
    sd_status (*layer_norm_backward)(const sd_f16 *x, const float *gamma, const float *dy, float *dx,
                                     float *dgamma, float *dbeta, int64_t M, int64_t C, float eps);
    /* sd_backend.group_norm_backward on the channels-last fp16 input [B, S, C] such a step saved
     * (γ, β, dy, dx and the parameters' gradients F32, dy and dx NCHW [B, C, S]): the widened copy's
     * gradients within rounding (the sums may come in another order), without the copy. stats: the
     * (mean, rstd) per (image, group), [B·groups, 2], that this backend's group_norm_nhwc kept for
     * the same x, eps and groups (the tape holds them), used instead of a pass over x to recompute
     * them; NULL: computed here. NULL where a backend has none. */
    sd_status (*group_norm_backward_nhwc)(const sd_f16 *x, const float *gamma, const float *beta, const float *dy,
                                          float *dx, float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S,
                                          int groups, float eps, int silu, int accumulate, const float *stats);

    /* ---- channels-last storage (sd_ctx.channels_last): a feature map (B, C, H, W) held as
     * [B, H·W, C], which is what tensor-core convolutions read natively (an NCHW map costs cuDNN
     * transposes of its own) and what a transformer's token layout already is (no transposes around
     * the attention blocks). Same arithmetic and rounding as the NCHW ops of the same name; only
     * the order of the values in memory differs. NULL where a backend has none (the nn layer then
     * keeps maps NCHW). ---- */
    /* F32 NCHW x [B, C, S] -> fp16 y [B, S, C] (rounded once), and fp16 [B, S, C] -> F32 NCHW
     * (exact): a map entering and leaving channels-last storage in one pass. The widening may add
     * on the way, in F32 and in this order, v[b, c] and r[b, c, s] (F32 NCHW, the output's shape;
     * either NULL): y = (x + v) + r, the sums add_channel_bias and add would make after it (a
     * gradient step's convolution epilogue, nn.c). */
    sd_status (*to_f16_nhwc)(const float *x, sd_f16 *y, int64_t B, int64_t C, int64_t S);
    sd_status (*to_f32_nchw)(const sd_f16 *x, const float *v, const float *r, float *y, int64_t B, int64_t C,
                             int64_t S);
    /* x [B, H, W, Ci], w [Co, kh, kw, Ci] (KRSC), y [B, Ho, Wo, Co]; symmetric padding only
     * (pad_top on both sides of the rows, pad_left of the columns). */
    sd_status (*conv2d_nhwc)(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v,
                             const sd_f16 *r, sd_f16 *y, const sd_conv_geom *g);
    /* x, y [B, S, C]; groups of C/groups consecutive channels; the shapes of
     * sd_group_norm_nhwc_supports. keep_stats (NULL: none): receives each (image, group)'s (mean,
     * rstd) as the normalisation used them, [B·groups, 2] floats, for group_norm_backward_nhwc. */
    sd_status (*group_norm_nhwc)(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y,
                                 int64_t B, int64_t C, int64_t S, int groups, float eps, int silu,
                                 float *keep_stats);
    /* y[b, s, c] = x[b, s, c] + v[b, c] */
    sd_status (*add_channel_bias_nhwc)(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B,
                                       int64_t C, int64_t S);
    /* y[b, s] = (a[b, s, :Ca], c[b, s, :Cb]) */
    sd_status (*concat_channels_nhwc)(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B,
                                      int64_t Ca, int64_t Cb, int64_t S);
    /* x [B, H, W, C] -> y [B, Ho, Wo, C], the source pixel as upsample_nearest picks it */
    sd_status (*upsample_nearest_nhwc)(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t H, int64_t W,
                                       int64_t C, int64_t Ho, int64_t Wo);
} sd_f16_ops;

/* The channel counts group_norm_nhwc takes: any up to SD_GN_NHWC_MAX_CHANNELS_ANY, multiples of 8
 * up to SD_GN_NHWC_MAX_CHANNELS (SD's widest map, 2560 channels at the up blocks' concatenations).
 * Wider maps go NCHW. */
enum { SD_GN_NHWC_MAX_CHANNELS_ANY = 1024, SD_GN_NHWC_MAX_CHANNELS = 3072 };
static inline int sd_group_norm_nhwc_supports(int64_t C, int groups) {
    return groups > 0 && C > 0 && C % groups == 0 &&
           (C <= SD_GN_NHWC_MAX_CHANNELS_ANY || (C % 8 == 0 && C <= SD_GN_NHWC_MAX_CHANNELS));
}

typedef struct sd_backend {
    const char *name;

    /* ---- memory: the nn layer and the arenas never touch device memory directly ---- */
    void *(*mem_alloc)(size_t bytes); /* 256-byte aligned; NULL (error set, naming the size) on failure */
    void (*mem_free)(void *p);
    sd_status (*upload)(void *dst, const void *host_src, size_t bytes);   /* host -> backend */
    sd_status (*download)(void *host_dst, const void *src, size_t bytes); /* backend -> host */
    sd_status (*zero)(void *dst, size_t bytes);
    sd_status (*synchronize)(void); /* waits for queued work (no-op on the CPU) */

    /* y[M, N] = x[M, K] · w[N, K]ᵀ (+ r[M, N] when r != NULL) (+ b[N] when b != NULL): PyTorch's
     * Linear weight layout. The residual r (a transformer's skip connection) is summed in the GEMM's
     * epilogue, saving an add's pass over three tensors; r may be y itself. */
    sd_status (*linear)(const float *x, const float *w, const float *b, const float *r, float *y,
                        int64_t M, int64_t K, int64_t N);

    /* y[B, Co, Ho, Wo] = conv(x[B, Ci, H, W], w[Co, Ci, kh, kw]) + b[Co] (b may be NULL). */
    sd_status (*conv2d)(const float *x, const float *w, const float *b, float *y,
                        const sd_conv_geom *g);

    /* x, y: [B, C, S] with S = H·W. Normalises each of `groups` channel groups over (C/groups)·S
     * values (biased variance), then y = γ[c]·x̂ + β[c]; applies SiLU after when `silu`. */
    sd_status (*group_norm)(const float *x, const float *gamma, const float *beta, float *y,
                            int64_t B, int64_t C, int64_t S, int groups, float eps, int silu);

    /* x, y: [M, C]; normalises each row; y = γ·x̂ + β. */
    sd_status (*layer_norm)(const float *x, const float *gamma, const float *beta, float *y,
                            int64_t M, int64_t C, float eps);

    /* y[i] = f(x[i]); y may alias x. `alpha` is the leaky-ReLU slope (ignored by the others). */
    sd_status (*unary)(sd_unary_op op, const float *x, float *y, int64_t n, float alpha);

    /* y[i] = a[i] (op) b[i]; y may alias a or b. */
    sd_status (*binary)(sd_binary_op op, const float *a, const float *b, float *y, int64_t n);

    /* y[i] = alpha·x[i] + beta·z[i]; y may alias x or z. */
    sd_status (*axpby)(float alpha, const float *x, float beta, const float *z, float *y, int64_t n);
    /* The same with the coefficients read from the backend's memory at run time, alpha = coef[0],
     * beta = coef[1]: a CUDA graph captured once replays with the values written there before each
     * replay (DDIM's per-timestep factors), where by-value scalars would stay frozen. Same rounding
     * as axpby, so both spellings of a step give identical results. */
    sd_status (*axpby_dev)(const float *coef, const float *x, const float *z, float *y, int64_t n);

    /* y[b, c, s] = x[b, c, s] + v[b, c]: the time-embedding projection added to a feature map. */
    sd_status (*add_channel_bias)(const float *x, const float *v, float *y, int64_t B, int64_t C,
                                  int64_t S);

    /* x[M, 2N] -> y[M, N] = x[:, :N] · GELU(x[:, N:]) (diffusers GEGLU: hidden, gate = chunk(2)). */
    sd_status (*geglu)(const float *x, float *y, int64_t M, int64_t N);

    /* y[b] = concat(a[b] (Ca·S values), c[b] (Cb·S values)) along channels. */
    sd_status (*concat_channels)(const float *a, const float *c, float *y, int64_t B, int64_t Ca,
                                 int64_t Cb, int64_t S);

    /* Nearest-neighbour resize x[N, H, W] -> y[N, Ho, Wo] (torch 'nearest': src = floor(dst·in/out)). */
    sd_status (*upsample_nearest)(const float *x, float *y, int64_t N, int64_t H, int64_t W,
                                  int64_t Ho, int64_t Wo);

    /* y[b, c, r] = x[b, r, c]: NCHW <-> token layout (B, HW, C). */
    sd_status (*transpose)(const float *x, float *y, int64_t B, int64_t R, int64_t C);

    /* Multi-head attention, heads packed in the channel axis (channel = h·D + d):
     *   q[B, Sq, H·D], k[B, Sk, H·D], v[B, Sk, H·Dv] -> out[B, Sq, H·Dv],
     *   A = softmax(scale · q kᵀ) per (b, h), causal masks keys j > i.
     * When probs != NULL the maps are written there as [B·H, Sq, Sk] (row b·H + h) and out is
     * left untouched (the caller may edit the maps, then call attention_apply).
     * lse (may be NULL): B·H·Sq floats the backend may fill with what its attention_backward can
     * reuse (each row's softmax normaliser), for a caller that will differentiate this call: the
     * caller hands the same buffer, unread, to attention_backward with the same inputs. What is in
     * it, and whether anything is, is the backend's own business (the CPU leaves it alone). */
    sd_status (*attention)(const float *q, const float *k, const float *v, float *out,
                           float *probs, int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv,
                           float scale, int causal, float *lse);
    /* out[B, Sq, H·Dv] = probs[B·H, Sq, Sk] · v[B, Sk, H·Dv] per head. */
    sd_status (*attention_apply)(const float *probs, const float *v, float *out, int64_t B,
                                 int64_t Sq, int64_t Sk, int H, int Dv);

    /* Sinusoidal timestep embedding (diffusers get_timestep_embedding):
     * t[B] -> y[B, dim]; f_k = exp(-ln(10000)·k / (dim/2 - shift)); [sin, cos] or [cos, sin]. */
    sd_status (*timestep_embedding)(const float *t, float *y, int64_t B, int dim, int flip_sin_to_cos,
                                    float shift);

    /* y[n, :] = table[ids[n], :] for n < count; ids are validated by the caller. */
    sd_status (*embedding)(const int32_t *ids, const float *table, float *y, int64_t count,
                           int64_t C);

    /* y[i] = min(max(x[i], lo), hi); y may alias x. */
    sd_status (*clamp)(const float *x, float *y, float lo, float hi, int64_t n);

    /* Plain memory. */
    sd_status (*copy)(float *dst, const float *src, int64_t n);
    sd_status (*fill)(float *dst, float value, int64_t n);

    /* ---- reductions ---- */
    /* out[0] = mean((a - b)^2) over n values (accumulated in double on the CPU). out is a
     * one-element buffer on the backend's device, so a loss never forces a host sync. */
    sd_status (*mse)(const float *a, const float *b, float *out, int64_t n);
    /* host_ok[k] = 1 when every value of xs[k] (ns[k] of them) is finite, for 1 to
     * SD_ALL_FINITE_MAX tensors: one host sync for all (an optimiser checks all its gradients
     * before a step with one wait, not one per parameter). */
    sd_status (*all_finite)(const float *const *xs, const int64_t *ns, int count, int *host_ok);

    /* ---- backward: every op ACCUMULATES into its gradient outputs (dx += ...), which the
     * autograd layer zero-fills on first use; a NULL gradient output is not computed (frozen
     * weights, inputs that lead to no trainable leaf). `dy` is the gradient of the forward output.
     * Forward inputs are passed again where the derivative needs them (recomputation, not saved
     * intermediates: norms recompute their statistics, attention recomputes its maps). */

    /* linear: dx[M, K] += dy[M, N] · w[N, K] */
    sd_status (*linear_backward_data)(const float *dy, const float *w, float *dx, int64_t M,
                                      int64_t K, int64_t N);
    /* linear: dw[N, K] += dyᵀ · x; db[N] += Σ_m dy[m, :] (either may be NULL) */
    sd_status (*linear_backward_params)(const float *dy, const float *x, float *dw, float *db,
                                        int64_t M, int64_t K, int64_t N);
    /* conv2d: dx[B, Ci, H, W] += transposed convolution of dy[B, Co, Ho, Wo] with w */
    sd_status (*conv2d_backward_data)(const float *dy, const float *w, float *dx,
                                      const sd_conv_geom *g);
    /* conv2d: dw[Co, Ci, kh, kw] += Σ dy ⊗ x patches; db[Co] += Σ dy (either may be NULL) */
    sd_status (*conv2d_backward_params)(const float *dy, const float *x, float *dw, float *db,
                                        const sd_conv_geom *g);
    /* group norm (+ fused SiLU when `silu`): x is the forward input; gamma/beta as in forward
     * (beta is needed to rebuild the pre-SiLU value); dx, dgamma, dbeta may each be NULL.
     * accumulate (here and in the four ops below that take it): 1 adds into the data gradients,
     * as every backward op does; 0 writes them without reading them (a first contribution: the
     * backward then needs no zero-filled buffer). dgamma and dbeta always add. */
    sd_status (*group_norm_backward)(const float *x, const float *gamma, const float *beta,
                                     const float *dy, float *dx, float *dgamma, float *dbeta,
                                     int64_t B, int64_t C, int64_t S, int groups, float eps, int silu,
                                     int accumulate);
    /* layer norm over rows of x[M, C]; dx, dgamma, dbeta may each be NULL. */
    sd_status (*layer_norm_backward)(const float *x, const float *gamma, const float *dy, float *dx,
                                     float *dgamma, float *dbeta, int64_t M, int64_t C, float eps);
    /* dx[i] += dy[i] · f'(x[i]) */
    sd_status (*unary_backward)(sd_unary_op op, const float *x, const float *dy, float *dx,
                                int64_t n, float alpha);
    /* GEGLU: x[M, 2N] forward input, dy[M, N] -> dx[M, 2N] (+= when accumulate) */
    sd_status (*geglu_backward)(const float *x, const float *dy, float *dx, int64_t M, int64_t N,
                                int accumulate);
    /* y[i] += alpha · x[i] (the backward of add, sub, axpby, copies and views) */
    sd_status (*axpy)(float alpha, const float *x, float *y, int64_t n);
    /* y[i] += coef[0] · x[i], coef in the backend's memory (the backward of axpby_dev) */
    sd_status (*axpy_dev)(const float *coef, const float *x, float *y, int64_t n);
    /* y[i] += a[i] · b[i] (the backward of mul) */
    sd_status (*mul_acc)(const float *a, const float *b, float *y, int64_t n);
    /* add_channel_bias: dv[b, c] += Σ_s dy[b, c, s] (dx += dy is an axpy) */
    sd_status (*add_channel_bias_backward)(const float *dy, float *dv, int64_t B, int64_t C,
                                           int64_t S);
    /* concat_channels: da += dy[:, :Ca], dc += dy[:, Ca:] (either may be NULL; = when not
     * accumulate) */
    sd_status (*concat_channels_backward)(const float *dy, float *da, float *dc, int64_t B,
                                          int64_t Ca, int64_t Cb, int64_t S, int accumulate);
    /* nearest resize: dx[src] += dy[dst] for every dst mapped to src (dx[src] = that sum when not
     * accumulate) */
    sd_status (*upsample_nearest_backward)(const float *dy, float *dx, int64_t N, int64_t H,
                                           int64_t W, int64_t Ho, int64_t Wo, int accumulate);
    /* fused attention (no maps kept): recomputes the maps; dq, dk, dv may each be NULL (the
     * others written, not added to, when not accumulate). `out` is the forward output and lse
     * the buffer the forward was given (or NULL): a backend may take the softmax's statistics from
     * them (rowsum(dO ⊙ O) and the row normalisers, as flash-attention backward does) instead of
     * recomputing them. */
    sd_status (*attention_backward)(const float *q, const float *k, const float *v,
                                    const float *out, const float *dout, float *dq, float *dk,
                                    float *dv, int64_t B, int64_t Sq, int64_t Sk, int H, int D,
                                    int Dv, float scale, int causal, int accumulate,
                                    const float *lse);
    /* maps from scores: probs[B·H, Sq, Sk] = softmax(scale q kᵀ); given dprobs, accumulate
     * dq, dk (either may be NULL): dS = P ⊙ (dP − rowsum(dP ⊙ P)). */
    sd_status (*attention_probs_backward)(const float *q, const float *k, const float *probs,
                                          const float *dprobs, float *dq, float *dk, int64_t B,
                                          int64_t Sq, int64_t Sk, int H, int D, float scale);
    /* out = probs · v: dprobs += dout · vᵀ, dv += probsᵀ · dout (either may be NULL) */
    sd_status (*attention_apply_backward)(const float *probs, const float *v, const float *dout,
                                          float *dprobs, float *dv, int64_t B, int64_t Sq,
                                          int64_t Sk, int H, int Dv);
    /* mse: with g = dL/d(mse) (one element on the device): da += 2g(a − b)/n, db −= 2g(a − b)/n */
    sd_status (*mse_backward)(const float *a, const float *b, const float *g, float *da, float *db,
                              int64_t n);

    /* ---- optimiser ---- */
    /* One Adam step as torch.optim.Adam (no weight decay, no amsgrad) computes it:
     * m = β1 m + (1 − β1) g; v = β2 v + (1 − β2) g²;
     * p −= (lr / bc1) · m / (sqrt(v) / sqrt(bc2) + eps), bc_i = 1 − β_i^step.
     * The hyperparameters are doubles, as torch holds them (Python floats): 1 − β and the bias
     * corrections derived from (double)0.999f would be off by ~1e-5 relative. */
    sd_status (*adam_step)(float *p, const float *g, float *m, float *v, int64_t n, double lr,
                           double beta1, double beta2, double eps, int step);

    /* ---- pooling (the AlexNet trunk of LPIPS, a metric: forward only, no backward) ---- */
    /* torch MaxPool2d(kernel, stride), no padding, floor mode, on planes x[N, H, W] ->
     * y[N, Ho, Wo] with Ho = (H - kernel) / stride + 1 (likewise Wo; the caller passes both):
     * y[n, oy, ox] = max of the kernel x kernel window at (oy·stride, ox·stride). A NaN in a
     * window makes the output NaN, as in torch. */
    sd_status (*max_pool2d)(const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                            int64_t Wo, int kernel, int stride);

    /* fp16 storage (above), or NULL where the backend stores F32 only */
    const sd_f16_ops *f16;
} sd_backend;

/* The CPU reference backend (OpenMP + OpenBLAS). */
const sd_backend *sd_backend_cpu(void);

/* The CUDA backend for device `ordinal`, or NULL when this build has no CUDA or no usable GPU
 * (the error message then says why: no driver, too old, no device, unsupported architecture). */
const sd_backend *sd_backend_cuda(int ordinal);

#endif
