/* backend.h: the op table. One struct of function pointers per device; model code never branches
 * on the device, it calls the nn layer (nn.h), which validates shapes, allocates the output from
 * the context's arena and dispatches here.
 *
 * Conventions: every pointer is dense F32 memory on the backend's device, outputs are
 * preallocated and never alias inputs unless stated; shapes are given as plain integers, with the
 * layout in a comment. The CPU table is the reference every other table is tested against. */
#ifndef SD_BACKEND_H
#define SD_BACKEND_H

#include "sd/core.h"

typedef enum sd_unary_op {
    SD_UNARY_SILU = 0,   /* x * sigmoid(x) */
    SD_UNARY_GELU,       /* exact erf GELU: 0.5 x (1 + erf(x / sqrt 2)) */
    SD_UNARY_QUICK_GELU, /* x * sigmoid(1.702 x) (CLIP) */
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

typedef struct sd_backend {
    const char *name;

    /* y[M, N] = x[M, K] · w[N, K]ᵀ (+ b[N] when b != NULL): PyTorch's Linear weight layout. */
    sd_status (*linear)(const float *x, const float *w, const float *b, float *y, int64_t M,
                        int64_t K, int64_t N);

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

    /* y[i] = f(x[i]); y may alias x. */
    sd_status (*unary)(sd_unary_op op, const float *x, float *y, int64_t n);

    /* y[i] = a[i] (op) b[i]; y may alias a or b. */
    sd_status (*binary)(sd_binary_op op, const float *a, const float *b, float *y, int64_t n);

    /* y[i] = alpha·x[i] + beta·z[i]; y may alias x or z. */
    sd_status (*axpby)(float alpha, const float *x, float beta, const float *z, float *y, int64_t n);

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
     * left untouched (the caller may edit the maps, then call attention_apply). */
    sd_status (*attention)(const float *q, const float *k, const float *v, float *out,
                           float *probs, int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv,
                           float scale, int causal);
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
} sd_backend;

/* The CPU reference backend (OpenMP + OpenBLAS). */
const sd_backend *sd_backend_cpu(void);

#endif
