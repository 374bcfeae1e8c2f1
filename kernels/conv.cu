/* conv.cu: 2-d convolutions through cuDNN's legacy API (cudnnConvolutionForward / BackwardData /
 * BackwardFilter, algorithms from the cudnnGet*Algorithm_v7 heuristics), NCHW fp32, and for fp16
 * forwards optionally its graph API (SD_CONV_ALGO=graph|tune).
 *
 * Asymmetric padding. cuDNN pads symmetrically. When the symmetric padding (pad_top, pad_left)
 * gives the output size the geometry asks for, cuDNN computes exactly our convolution (same
 * sampled positions oy·stride − pad_top + ki). Otherwise (the VAE downsampler: pad 0 top/left,
 * 1 bottom/right) the input is copied into a zero-bordered buffer of (h_out−1)·stride + kh rows
 * and (w_out−1)·stride + kw columns in the workspace and convolved with padding 0. Backward data
 * then writes the padded gradient to the workspace and adds its interior into dx; backward filter
 * re-pads x. One extra copy on three layers of the VAE encoder: cheaper than a border kernel.
 *
 * Precision: exact mode sets CUDNN_FMA_MATH on the convolution descriptor (no TF32, no tensor
 * cores) and excludes cuDNN's FFT and Winograd algorithms, whose rounding differs from direct
 * summation (its 3x3 convolutions at 64x64 and 32x32 run as this file's own fp32 Winograd
 * F(4x4, 3x3) by default, "Winograd F(m x m, 3x3)" below; SD_CONV_WINOGRAD chooses F(2x2), other
 * sizes, or none, and opts fast mode's fp16 channels-last convolutions into an fp16 F(2x2, 3x3) and
 * a gradient step's bf16 data gradients into a bf16 one); fast mode uses CUDNN_TENSOR_OP_MATH (TF32 tensor
 * cores on fp32 data) and the heuristic's first tensor-core algorithm (pick_algo), or with
 * SD_CONV_ALGO=find the one cuDNN measures fastest; SD_CONV_ALGO=graph|tune runs fp16 forward
 * plans through cuDNN's graph API ("cuDNN's graph API" below). SD_CUDNN_LOG=1 prints each plan's
 * choice.
 *
 * fp16 activations (cu_f16_conv2d, fast mode's forward): x, w and y are CUDNN_DATA_HALF with an
 * fp32 convolution compute type (cuDNN's PSEUDO_HALF_CONFIG: halves read as they are, products
 * summed in fp32, y rounded once) and tensor-op math whatever the precision mode; the F32 bias is
 * added afterwards and y rounded again (backend.h). The same plans, padding and bias kernels
 * serve both data types.
 *
 * Small images as GEMMs (fast mode, SD_CONV_GEMM / sd_cuda_set_conv_gemm): where a batch has few
 * output pixels, cuDNN's implicit GEMM, which tiles over the pixels, leaves most SMs idle: on an
 * H200 a batch-2 fp16 3x3 1280->1280 convolution at 8x8 (128 pixels, 11520-term sums) ran at 22
 * TFLOP/s, 11 such calls 1.9 ms of a 12.6 ms UNet call. There x is unfolded (im2col) into
 * col[n][c_in·kh·kw][pixel] in the workspace and y[n] = w[c_out][c_in·kh·kw] · col[n] runs as one
 * strided-batched cuBLAS GEMM, which splits the long sums over CTAs; backward data is
 * dcol[n] = wᵀ · dy[n] and a gather of each dx element's kh·kw terms (col2im, no atomics). A 1x1
 * stride-1 unpadded convolution needs no unfolding (col = x). Compute types: fp32 accumulation for
 * fp16 data, TF32 for fp32 data (as cuDNN's tensor-op math), plain fp32 in exact mode.
 *
 * Exact mode runs every convolution whose unfolded input fits the workspace bound as a GEMM: cuDNN's
 * fp32 direct sums without TF32 were the slower way on an H200 (SD v1.5 UNet call, 512 px: batch 1
 * 42.2 ms with cuDNN, 28.7 ms with GEMMs; batch 2 64.6 and 62.9 ms; same parity with PyTorch fp32,
 * 3.4e-6). SD_CONV_GEMM=off puts it back on cuDNN (conv_gemm_wanted).
 *
 * Channels-last fp16 maps (cu_f16_conv2d_nhwc, sd_ctx.channels_last): x and y NHWC, w KRSC, the
 * layout cuDNN's tensor-core kernels read natively (NCHW half data costs them transforms of their
 * own: the NCHW fp16 3x3 convolutions at 64x64 ran at 118 TFLOP/s on an H200). Same plans with
 * NHWC descriptors; the GEMM path is one plain GEMM over every output pixel of the batch
 * (y[B·P, Co] = col[B·P, K] · wᵀ, col unfolded in KRSC order, or x itself for a 1x1 kernel); the
 * bias is the channel-bias kernel's pass. Symmetric padding only (the nn layer keeps the VAE's
 * asymmetric downsampler NCHW).
 *
 * Plans (descriptors and chosen algorithms) are cached per geometry, data type, layout and precision, so
 * a UNet call does no cuDNN setup after its first run (a requirement for CUDA graph capture). */
#include "cuda_common.cuh"

#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define CONV_WS_LIMIT ((size_t)1 << 30) /* largest cuDNN workspace an algorithm may ask for */

/* A forward convolution through cuDNN's graph API (see "cuDNN's graph API" below): the
 * descriptors the execution plan was made from, kept alive as long as it is. */
struct cu_conv_graph {
    cudnnBackendDescriptor_t keep[7];   /* x, w, y, the convolution, the operation, its graph, the heuristics */
    cudnnBackendDescriptor_t cfg, plan; /* the chosen engine config and its execution plan */
    int64_t engine, ws;                 /* the engine's global index; the plan's workspace bytes */
    float ms;                           /* tune: its measured time per call (0: not timed) */
    cudnnBackendDescriptor_t pack;      /* the last call's variant pack, reused while its pointers are */
    const void *pack_ptrs[4];           /* x, w, y, workspace of `pack` */
};

static void graph_destroy(cu_conv_graph *gp) {
    if (gp->pack) cudnnBackendDestroyDescriptor(gp->pack);
    if (gp->plan) cudnnBackendDestroyDescriptor(gp->plan);
    if (gp->cfg) cudnnBackendDestroyDescriptor(gp->cfg);
    for (int i = 6; i >= 0; i--)
        if (gp->keep[i]) cudnnBackendDestroyDescriptor(gp->keep[i]);
    memset(gp, 0, sizeof *gp);
}

struct cu_conv_plan {
    sd_conv_geom g;
    cudnnDataType_t type;   /* of x, w and y: CUDNN_DATA_FLOAT or CUDNN_DATA_HALF */
    sd_precision precision; /* exact: FMA math and direct-sum algorithms (fp32 data only) */
    int padded;             /* explicit padding into the workspace (asymmetric geometry) */
    int gemm;               /* forward and backward data as im2col + cuBLAS GEMM (conv_gemm_wanted) */
    int winograd;           /* forward and backward data as Winograd F(m x m, 3x3): m (2 or 4), or 0 (winograd_tile) */
    int nhwc;               /* channels-last x and y, KRSC w (fp16 forward only; symmetric padding) */
    int64_t hp, wp;         /* the input size cuDNN sees (padded or original) */
    cudnnTensorDescriptor_t x_desc, y_desc;
    cudnnFilterDescriptor_t w_desc;
    cudnnConvolutionDescriptor_t conv_desc;
    int fwd_ready, bwd_data_ready, bwd_filter_ready;
    cudnnConvolutionFwdAlgo_t fwd_algo;
    cudnnConvolutionBwdDataAlgo_t bwd_data_algo;
    cudnnConvolutionBwdFilterAlgo_t bwd_filter_algo;
    cudnnMathType_t fwd_math, bwd_data_math, bwd_filter_math;
    size_t fwd_ws, bwd_data_ws, bwd_filter_ws;
    int graph_state;        /* SD_CONV_ALGO=graph|tune (graph_api_wanted): 0 undecided, 1 `graph` runs, -1 legacy */
    int tuned;              /* SD_CONV_ALGO=tune: the ways were timed (conv_tune) */
    cu_conv_graph graph;    /* the graph API's plan (graph_state 1) */
};

static void plan_destroy(cu_conv_plan *p) {
    graph_destroy(&p->graph);
    if (p->x_desc) cudnnDestroyTensorDescriptor(p->x_desc);
    if (p->y_desc) cudnnDestroyTensorDescriptor(p->y_desc);
    if (p->w_desc) cudnnDestroyFilterDescriptor(p->w_desc);
    if (p->conv_desc) cudnnDestroyConvolutionDescriptor(p->conv_desc);
    memset(p, 0, sizeof *p);
}

extern "C" void sd_cuda_conv_plan_counts(int *plans, int *on_graph_api, int *winograd) {
    const cu_state *s = cu_cur();
    int n = 0, graph = 0, wino = 0;
    for (int i = 0; s && s->conv_plans && i < s->n_conv_plans; i++) {
        if (s->conv_plans[i].g.batch < 0) continue; /* a failed plan's slot */
        n++;
        graph += s->conv_plans[i].graph_state > 0;
        wino += s->conv_plans[i].winograd != 0;
    }
    if (plans) *plans = n;
    if (on_graph_api) *on_graph_api = graph;
    if (winograd) *winograd = wino;
}

void cu_conv_release(cu_state *s) {
    if (!s->conv_plans) return;
    for (int i = 0; i < s->n_conv_plans; i++) plan_destroy(&s->conv_plans[i]);
    free(s->conv_plans);
    s->conv_plans = NULL;
    s->n_conv_plans = 0;
}

static int same_geom(const sd_conv_geom *a, const sd_conv_geom *b) {
    return a->batch == b->batch && a->c_in == b->c_in && a->h_in == b->h_in && a->w_in == b->w_in &&
           a->c_out == b->c_out && a->h_out == b->h_out && a->w_out == b->w_out && a->kh == b->kh &&
           a->kw == b->kw && a->stride == b->stride && a->pad_top == b->pad_top && a->pad_left == b->pad_left;
}

static sd_status fits_int(const sd_conv_geom *g) {
    const int64_t v[] = {g->batch, g->c_in, g->h_in, g->w_in, g->c_out, g->h_out, g->w_out};
    for (size_t i = 0; i < sizeof v / sizeof v[0]; i++)
        if (v[i] <= 0 || v[i] > INT_MAX)
            return sd_fail(SD_ERR_UNSUPPORTED, "cuda conv2d: dimension %lld outside cuDNN's range", (long long)v[i]);
    if (g->kh <= 0 || g->kw <= 0 || g->stride <= 0 || g->pad_top < 0 || g->pad_left < 0)
        return sd_fail(SD_ERR_SHAPE, "cuda conv2d: kernel %dx%d stride %d pad (%d, %d)", g->kh, g->kw, g->stride,
                       g->pad_top, g->pad_left);
    return SD_OK;
}

static sd_status plan_build(cu_state *s, cu_conv_plan *p) {
    const sd_conv_geom *g = &p->g;
    CU_TRY(fits_int(g));
    const int64_t sym_h = (g->h_in + 2 * (int64_t)g->pad_top - g->kh) / g->stride + 1;
    const int64_t sym_w = (g->w_in + 2 * (int64_t)g->pad_left - g->kw) / g->stride + 1;
    const int direct = g->h_in + 2 * (int64_t)g->pad_top >= g->kh && g->w_in + 2 * (int64_t)g->pad_left >= g->kw &&
                       sym_h == g->h_out && sym_w == g->w_out;
    if (p->nhwc && !direct)
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda conv2d (channels-last): padding (%d, %d) does not give a %lldx%lld "
                       "output symmetrically", g->pad_top, g->pad_left, (long long)g->h_out, (long long)g->w_out);
    p->padded = !direct;
    p->hp = direct ? g->h_in : (g->h_out - 1) * g->stride + g->kh;
    p->wp = direct ? g->w_in : (g->w_out - 1) * g->stride + g->kw;
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->x_desc));
    CUDNN_CHECK(cudnnCreateTensorDescriptor(&p->y_desc));
    CUDNN_CHECK(cudnnCreateFilterDescriptor(&p->w_desc));
    CUDNN_CHECK(cudnnCreateConvolutionDescriptor(&p->conv_desc));
    /* the dimensions are given as (n, c, h, w) in either format; NHWC filters are KRSC */
    const cudnnTensorFormat_t format = p->nhwc ? CUDNN_TENSOR_NHWC : CUDNN_TENSOR_NCHW;
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->x_desc, format, p->type, (int)g->batch, (int)g->c_in, (int)p->hp,
                                           (int)p->wp));
    CUDNN_CHECK(cudnnSetTensor4dDescriptor(p->y_desc, format, p->type, (int)g->batch, (int)g->c_out,
                                           (int)g->h_out, (int)g->w_out));
    CUDNN_CHECK(cudnnSetFilter4dDescriptor(p->w_desc, p->type, format, (int)g->c_out, (int)g->c_in, g->kh,
                                           g->kw));
    /* the compute type is fp32 for both data types (for half data: PSEUDO_HALF_CONFIG) */
    CUDNN_CHECK(cudnnSetConvolution2dDescriptor(p->conv_desc, direct ? g->pad_top : 0, direct ? g->pad_left : 0,
                                                g->stride, g->stride, 1, 1, CUDNN_CROSS_CORRELATION, CUDNN_DATA_FLOAT));
    CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv_desc, p->precision == SD_PRECISION_FAST ? CUDNN_TENSOR_OP_MATH
                                                                                            : CUDNN_FMA_MATH));
    /* cuDNN must agree on the output size, or the geometry is one we do not understand */
    int n = 0, c = 0, h = 0, w = 0;
    CUDNN_CHECK(cudnnGetConvolution2dForwardOutputDim(p->conv_desc, p->x_desc, p->w_desc, &n, &c, &h, &w));
    if (h != g->h_out || w != g->w_out || c != g->c_out)
        return sd_fail(SD_ERR_INTERNAL, "cuda conv2d: cuDNN output %dx%dx%d, geometry says %lldx%lldx%lld", c, h, w,
                       (long long)g->c_out, (long long)g->h_out, (long long)g->w_out);
    (void)s;
    return SD_OK;
}

/* SD_CUDNN_LOG=1: one line per plan on stderr (geometry, data type, the algorithm and math chosen,
 * its rank and workspace): what a GPU session reads to see which kernels cuDNN runs. */
static int cudnn_log_on(void) {
    static int on = -1;
    return cu_env_flag("SD_CUDNN_LOG", &on);
}
/* A 1x1 stride-1 convolution without padding is a GEMM on x as it is. */
static int conv_is_pointwise(const sd_conv_geom *g) {
    return g->kh == 1 && g->kw == 1 && g->stride == 1 && g->pad_top == 0 && g->pad_left == 0 && g->h_out == g->h_in &&
           g->w_out == g->w_in;
}

/* Whether a plan runs as im2col + GEMM (see the top comment). AUTO: in fast mode every pointwise
 * convolution (no unfolding: a plain GEMM on x; cuDNN ran the UNet's 1x1 shortcuts at 64x64 at 22
 * TFLOP/s, 6 at 8x8, on an H200) and, where the batch has at most 512 output pixels and each sums
 * at least 1024 products, the rest (SD v1.x's 16x16 and 8x8 levels at batch 1 and 2: 3x3
 * convolutions of 640 to 2560 channels); in exact mode every convolution whose unfolded input fits
 * CONV_GEMM_MAX_COL_BYTES (the VAE's 512x512 layers would need gigabytes: those stay on cuDNN).
 * ALL: that bound in both modes. */
#define CONV_GEMM_MAX_PIXELS 512
#define CONV_GEMM_MIN_TERMS 1024
#define CONV_GEMM_MAX_COL_BYTES ((int64_t)512 << 20)
static int conv_gemm_wanted(const cu_state *s, const sd_conv_geom *g, sd_precision precision, size_t elem_bytes) {
    if (s->conv_gemm == SD_CONV_GEMM_OFF) return 0;
    /* the unfold's index arithmetic is 32-bit (k_im2col), per image */
    if (g->c_in * g->kh * g->kw * g->h_out * g->w_out > INT_MAX || g->c_in * g->h_in * g->w_in > INT_MAX) return 0;
    if (s->conv_gemm == SD_CONV_GEMM_ALL || precision == SD_PRECISION_EXACT)
        return g->batch * g->c_in * g->kh * g->kw * g->h_out * g->w_out * (int64_t)elem_bytes <= CONV_GEMM_MAX_COL_BYTES;
    if (conv_is_pointwise(g)) return 1;
    return g->batch * g->h_out * g->w_out <= CONV_GEMM_MAX_PIXELS && g->c_in * g->kh * g->kw >= CONV_GEMM_MIN_TERMS;
}

/* SD_CONV_WINOGRAD=on|f4: the fewest output pixels a batch must have (SD v1.x's 64x64 and 32x32
 * levels; the GEMMs of smaller maps are too thin to gain: "Winograd F(m x m, 3x3)" below) */
#define WG_MIN_PIXELS 1024

/* The Winograd problem of a plan: O outputs from I inputs per pixel (swapped for the data
 * gradient), T = B·th·tw tiles of m x m output pixels, and the workspace of U, V and M. */
struct wino_dims {
    int64_t O, I, B, T;
    int H, W, th, tw;
    size_t u_bytes, v_bytes, m_bytes;
};

static wino_dims wino_dims_of(const sd_conv_geom *g, int data_gradient, int m) {
    wino_dims d;
    const int64_t a2 = (int64_t)(m + 2) * (m + 2);
    d.O = data_gradient ? g->c_in : g->c_out;
    d.I = data_gradient ? g->c_out : g->c_in;
    d.B = g->batch;
    d.H = (int)g->h_in;
    d.W = (int)g->w_in;
    d.th = (d.H + m - 1) / m;
    d.tw = (d.W + m - 1) / m;
    d.T = d.B * d.th * d.tw;
    d.u_bytes = cu_align((size_t)(a2 * d.O * d.I) * sizeof(float));
    d.v_bytes = cu_align((size_t)(a2 * d.I * d.T) * sizeof(float));
    d.m_bytes = cu_align((size_t)(a2 * d.O * d.T) * sizeof(float));
    return d;
}

/* Whether the setting `mode` takes convolution g as Winograd F(m x m, 3x3): a 3x3 stride-1
 * geometry whose output has the input's size (padding 1 on every side), at least WG_MIN_PIXELS
 * output pixels under on|f4 (any under all|f4-all|f4-mixed), cuBLAS's int sizes and the kernels' 32-bit
 * index divisions, the three buffers within the GEMM path's workspace bound (counted in F32: the
 * fp16 and bf16 paths' are smaller). */
static int winograd_fits(int mode, const sd_conv_geom *g, int m) {
    if (mode == SD_CONV_WINOGRAD_OFF) return 0;
    if (g->kh != 3 || g->kw != 3 || g->stride != 1 || g->pad_top != 1 || g->pad_left != 1 || g->h_out != g->h_in ||
        g->w_out != g->w_in || g->batch <= 0 || g->h_in <= 0 || g->w_in <= 0 || g->h_in > INT_MAX || g->w_in > INT_MAX)
        return 0;
    if ((mode == SD_CONV_WINOGRAD_ON || mode == SD_CONV_WINOGRAD_F4) && g->batch * g->h_in * g->w_in < WG_MIN_PIXELS)
        return 0;
    const wino_dims d = wino_dims_of(g, 0, m);
    if (d.T > INT_MAX || d.O * d.I > INT_MAX || d.I * d.T > INT_MAX || d.O * d.T > INT_MAX) return 0;
    return (int64_t)(d.u_bytes + d.v_bytes + d.m_bytes) <= CONV_GEMM_MAX_COL_BYTES;
}

/* The setting that applies to one path: AUTO is what an H100 measured (bench/NOTES.md, tenth
 * session): exact mode's F32 convolutions as F4 (SD v1.5 batch 2 47.3 against 57.8 ms); fp16 (fast
 * mode's F(2x2) tied cuDNN at batch 2, lost at batch 1) and bf16 data gradients (unmeasured, twice
 * the rounding) as OFF. */
static int winograd_mode_for(int mode, int f32_exact) {
    if (mode != SD_CONV_WINOGRAD_AUTO) return mode;
    return f32_exact ? SD_CONV_WINOGRAD_F4 : SD_CONV_WINOGRAD_OFF;
}

/* The output tile side m (2 or 4) with which a plan runs as Winograd F(m x m, 3x3), or 0: exact
 * mode's F32 NCHW and fast mode's fp16 NHWC convolutions that winograd_fits takes, m = 4 for exact
 * mode under f4 and f4-all and, under f4-mixed, for batches of at least WG_MIN_PIXELS output
 * pixels; else 2. */
static int winograd_tile(const cu_state *s, const sd_conv_geom *g, sd_precision precision, cudnnDataType_t type,
                         int nhwc) {
    const int f32_exact = type == CUDNN_DATA_FLOAT && precision == SD_PRECISION_EXACT && !nhwc;
    const int mode = winograd_mode_for(s->conv_winograd, f32_exact);
    const int f16_nhwc = type == CUDNN_DATA_HALF && nhwc;
    if (!(f32_exact || f16_nhwc)) return 0;
    const int large = g->batch * g->h_in * g->w_in >= WG_MIN_PIXELS;
    const int m = f32_exact && (mode == SD_CONV_WINOGRAD_F4 || mode == SD_CONV_WINOGRAD_F4_ALL ||
                                (mode == SD_CONV_WINOGRAD_F4_MIXED && large))
                      ? 4
                      : 2;
    return winograd_fits(mode, g, m) ? m : 0;
}

static sd_status plan_get(const sd_conv_geom *g, cudnnDataType_t type, int nhwc, cu_conv_plan **out) {
    cu_state *s = cu_cur();
    /* fp16 data runs as fast mode does in either mode: tensor-op math, any algorithm */
    const sd_precision precision = type == CUDNN_DATA_HALF ? SD_PRECISION_FAST : s->precision;
    for (int i = 0; i < s->n_conv_plans; i++) {
        cu_conv_plan *p = &s->conv_plans[i];
        if (p->precision == precision && p->type == type && p->nhwc == nhwc && same_geom(&p->g, g)) {
            *out = p;
            return SD_OK;
        }
    }
    if (!s->conv_plans) {
        s->conv_plans = (cu_conv_plan *)calloc(CU_CONV_CACHE, sizeof(cu_conv_plan));
        if (!s->conv_plans) return sd_fail(SD_ERR_OOM, "out of host memory for cuDNN plans");
    }
    int slot = s->n_conv_plans;
    if (slot >= CU_CONV_CACHE) {
        slot = (int)((unsigned)(g->c_in * 131 + g->h_in * 31 + g->c_out) % CU_CONV_CACHE);
        plan_destroy(&s->conv_plans[slot]);
    } else {
        s->n_conv_plans++;
    }
    cu_conv_plan *p = &s->conv_plans[slot];
    memset(p, 0, sizeof *p);
    p->g = *g;
    p->type = type;
    p->precision = precision;
    p->nhwc = nhwc;
    sd_status st = plan_build(s, p);
    if (st != SD_OK) {
        plan_destroy(p);
        p->g.batch = -1; /* never matches */
        return st;
    }
    p->winograd = winograd_tile(s, g, precision, type, nhwc);
    p->gemm = !p->winograd && conv_gemm_wanted(s, g, precision, type == CUDNN_DATA_HALF ? 2 : 4);
    if (p->winograd && cudnn_log_on())
        fprintf(stderr, "cudnn: (none)     %s b%lld %lld->%lld %lldx%lld k3x3/1: Winograd F(%dx%d, 3x3) "
                        "(SD_CONV_WINOGRAD)\n",
                type == CUDNN_DATA_HALF ? "fp16 nhwc fast" : "fp32 exact", (long long)g->batch, (long long)g->c_in,
                (long long)g->c_out, (long long)g->h_in, (long long)g->w_in, p->winograd, p->winograd);
    if (p->gemm && cudnn_log_on())
        fprintf(stderr, "cudnn: (none)     %s%s %s b%lld %lld->%lld %lldx%lld k%dx%d/%d: im2col + cuBLAS GEMM "
                        "(SD_CONV_GEMM)\n",
                type == CUDNN_DATA_HALF ? "fp16" : "fp32", nhwc ? " nhwc" : "", sd_precision_name(precision), (long long)g->batch,
                (long long)g->c_in, (long long)g->c_out, (long long)g->h_in, (long long)g->w_in, g->kh, g->kw,
                g->stride);
    *out = p;
    return SD_OK;
}

/* Exact mode runs every algorithm with CUDNN_FMA_MATH on the descriptor, whatever math type the
 * heuristic listed it with (it may list fp32 kernels as CUDNN_DEFAULT_MATH, which on Ampere and
 * later would allow TF32); entries that need tensor cores are skipped. Fast mode runs the math
 * type the list gives. */
static int exact_math_ok(cudnnMathType_t m) { return m == CUDNN_FMA_MATH || m == CUDNN_DEFAULT_MATH; }
static int tensor_math(cudnnMathType_t m) {
    return m == CUDNN_TENSOR_OP_MATH || m == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
}

/* Fast mode with SD_CONV_ALGO=find (cuda_backend.cu): rank the algorithms by cuDNN's measurement
 * (cudnnFind*: it runs each once on scratch buffers of its own and synchronises) instead of its
 * heuristic. Plans are made on a step's first, op-by-op run, never while a graph is captured; the
 * measured list is filtered as the heuristic's. */
static int use_find(const cu_state *s, const cu_conv_plan *p) {
    return s->conv_algo == SD_CONV_ALGO_FIND && p->precision == SD_PRECISION_FAST && !s->capturing;
}

/* The entry of a ranked list (the heuristic's, or Find's when `measured`) a plan takes, or -1:
 *  - exact mode: the first that succeeds within the workspace limit, is deterministic, sums the
 *    products directly (exact_algo) and runs in FMA math;
 *  - fast mode, heuristic: the first tensor-core entry, else the first. On an H200 (cuDNN 9.19)
 *    the heuristic ranked FMA kernels first for fp32 backward-data convolutions of every tested
 *    shape (their errors matched exact mode's), which is not what fast mode is for;
 *  - fast mode, measured: the fastest. */
template <typename Perf, typename AlgoOk>
static int pick_algo(const Perf *perf, int n, int exact, int measured, AlgoOk exact_algo) {
    for (int pass = 0; pass < 2; pass++)
        for (int i = 0; i < n; i++) {
            if (perf[i].status != CUDNN_STATUS_SUCCESS || perf[i].memory > CONV_WS_LIMIT) continue;
            if (exact) {
                if (perf[i].determinism != CUDNN_DETERMINISTIC) continue; /* exact mode is reproducible */
                if (!exact_algo(perf[i].algo) || !exact_math_ok(perf[i].mathType)) continue;
                return i;
            }
            if (pass == 0 && !measured && !tensor_math(perf[i].mathType)) continue;
            return i;
        }
    return -1;
}

static void log_choice(const cu_conv_plan *p, const char *dir, int algo, cudnnMathType_t math, int rank, int n,
                       int measured, size_t ws) {
    if (!cudnn_log_on()) return;
    const sd_conv_geom *g = &p->g;
    fprintf(stderr,
            "cudnn: %-10s %s%s %s b%lld %lld->%lld %lldx%lld k%dx%d/%d: algo %d, %s math, rank %d of %d (%s), "
            "workspace %.1f MiB\n",
            dir, p->type == CUDNN_DATA_HALF ? "fp16" : "fp32", p->nhwc ? " nhwc" : "", p->precision == SD_PRECISION_FAST ? "fast" : "exact",
            (long long)g->batch, (long long)g->c_in, (long long)g->c_out, (long long)g->h_in, (long long)g->w_in, g->kh,
            g->kw, g->stride, algo,
            math == CUDNN_FMA_MATH ? "FMA" : math == CUDNN_DEFAULT_MATH ? "default" : "tensor-op", rank + 1, n,
            rank < 0 ? "fallback" : measured ? "measured" : "heuristic", (double)ws / (1 << 20));
}

/* What differs between the three directions when a plan picks its algorithm: cuDNN's perf type and
 * calls (heuristic, Find, workspace size), the algorithms exact mode accepts, the fallback, and the
 * plan's fields for the choice. Exact mode keeps to algorithms that sum products directly
 * (GEMM-like), in fp32 FMA math, and that cuDNN lists as deterministic (the atomics-based backward
 * algorithms are not: their sums would differ from run to run by rounding, which parity checks and
 * bisections cannot live with). */
struct conv_fwd {
    typedef cudnnConvolutionFwdAlgoPerf_t perf_t;
    typedef cudnnConvolutionFwdAlgo_t algo_t;
    static constexpr int count = CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    static constexpr const char *name = "forward";
    static constexpr algo_t fallback = CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM; /* no workspace */
    static int exact_ok(algo_t a) {
        return a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
               a == CUDNN_CONVOLUTION_FWD_ALGO_GEMM || a == CUDNN_CONVOLUTION_FWD_ALGO_DIRECT;
    }
    static cudnnStatus_t list(cudnnHandle_t h, const cu_conv_plan *p, int measured, int *n, perf_t *perf) {
        return measured ? cudnnFindConvolutionForwardAlgorithm(h, p->x_desc, p->w_desc, p->conv_desc, p->y_desc, count,
                                                               n, perf)
                        : cudnnGetConvolutionForwardAlgorithm_v7(h, p->x_desc, p->w_desc, p->conv_desc, p->y_desc,
                                                                 count, n, perf);
    }
    static cudnnStatus_t workspace(cudnnHandle_t h, const cu_conv_plan *p, algo_t a, size_t *bytes) {
        return cudnnGetConvolutionForwardWorkspaceSize(h, p->x_desc, p->w_desc, p->conv_desc, p->y_desc, a, bytes);
    }
    static algo_t &algo(cu_conv_plan *p) { return p->fwd_algo; }
    static cudnnMathType_t &math(cu_conv_plan *p) { return p->fwd_math; }
    static size_t &ws(cu_conv_plan *p) { return p->fwd_ws; }
    static int &ready(cu_conv_plan *p) { return p->fwd_ready; }
};
struct conv_bwd_data {
    typedef cudnnConvolutionBwdDataAlgoPerf_t perf_t;
    typedef cudnnConvolutionBwdDataAlgo_t algo_t;
    static constexpr int count = CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    static constexpr const char *name = "bwd-data";
    static constexpr algo_t fallback = CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    static int exact_ok(algo_t a) {
        return a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1;
    }
    static cudnnStatus_t list(cudnnHandle_t h, const cu_conv_plan *p, int measured, int *n, perf_t *perf) {
        return measured ? cudnnFindConvolutionBackwardDataAlgorithm(h, p->w_desc, p->y_desc, p->conv_desc, p->x_desc,
                                                                    count, n, perf)
                        : cudnnGetConvolutionBackwardDataAlgorithm_v7(h, p->w_desc, p->y_desc, p->conv_desc,
                                                                      p->x_desc, count, n, perf);
    }
    static cudnnStatus_t workspace(cudnnHandle_t h, const cu_conv_plan *p, algo_t a, size_t *bytes) {
        return cudnnGetConvolutionBackwardDataWorkspaceSize(h, p->w_desc, p->y_desc, p->conv_desc, p->x_desc, a, bytes);
    }
    static algo_t &algo(cu_conv_plan *p) { return p->bwd_data_algo; }
    static cudnnMathType_t &math(cu_conv_plan *p) { return p->bwd_data_math; }
    static size_t &ws(cu_conv_plan *p) { return p->bwd_data_ws; }
    static int &ready(cu_conv_plan *p) { return p->bwd_data_ready; }
};
struct conv_bwd_filter {
    typedef cudnnConvolutionBwdFilterAlgoPerf_t perf_t;
    typedef cudnnConvolutionBwdFilterAlgo_t algo_t;
    static constexpr int count = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
    static constexpr const char *name = "bwd-filter";
    static constexpr algo_t fallback = CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1;
    static int exact_ok(algo_t a) {
        return a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 || a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 ||
               a == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
    }
    static cudnnStatus_t list(cudnnHandle_t h, const cu_conv_plan *p, int measured, int *n, perf_t *perf) {
        return measured ? cudnnFindConvolutionBackwardFilterAlgorithm(h, p->x_desc, p->y_desc, p->conv_desc,
                                                                      p->w_desc, count, n, perf)
                        : cudnnGetConvolutionBackwardFilterAlgorithm_v7(h, p->x_desc, p->y_desc, p->conv_desc,
                                                                        p->w_desc, count, n, perf);
    }
    static cudnnStatus_t workspace(cudnnHandle_t h, const cu_conv_plan *p, algo_t a, size_t *bytes) {
        return cudnnGetConvolutionBackwardFilterWorkspaceSize(h, p->x_desc, p->y_desc, p->conv_desc, p->w_desc, a,
                                                              bytes);
    }
    static algo_t &algo(cu_conv_plan *p) { return p->bwd_filter_algo; }
    static cudnnMathType_t &math(cu_conv_plan *p) { return p->bwd_filter_math; }
    static size_t &ws(cu_conv_plan *p) { return p->bwd_filter_ws; }
    static int &ready(cu_conv_plan *p) { return p->bwd_filter_ready; }
};

/* A plan's algorithm for direction D: pick_algo over cuDNN's list, or the fallback (always
 * available) when nothing qualifies or force_fallback (cuDNN refused the first choice). */
template <typename D> static sd_status choose_algo(cu_state *s, cu_conv_plan *p, int force_fallback) {
    const int exact = p->precision == SD_PRECISION_EXACT, measured = use_find(s, p);
    int chosen = -1, returned = 0;
    if (!force_fallback) {
        typename D::perf_t perf[D::count];
        CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv_desc, exact ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH));
        CUDNN_CHECK(D::list(s->dnn, p, measured, &returned, perf));
        chosen = pick_algo(perf, returned, exact, measured, D::exact_ok);
        if (chosen >= 0) {
            D::algo(p) = perf[chosen].algo;
            D::math(p) = exact ? CUDNN_FMA_MATH : perf[chosen].mathType;
        }
    }
    if (chosen < 0) {
        D::algo(p) = D::fallback;
        D::math(p) = exact ? CUDNN_FMA_MATH : CUDNN_TENSOR_OP_MATH;
    }
    CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv_desc, D::math(p)));
    CUDNN_CHECK(D::workspace(s->dnn, p, D::algo(p), &D::ws(p)));
    log_choice(p, D::name, (int)D::algo(p), D::math(p), chosen, returned, measured, D::ws(p));
    D::ready(p) = 1;
    return SD_OK;
}

/* cuDNN refused to run the heuristic's choice with our math type: worth one retry with the
 * fallback algorithm (any other status is a real failure). */
static int conv_retryable(cudnnStatus_t st) {
    return st == CUDNN_STATUS_NOT_SUPPORTED || st == CUDNN_STATUS_BAD_PARAM;
}

/* ------------------------------------------------------------------------------------------------
 * Padding kernels
 * --------------------------------------------------------------------------------------------- */

/* T: float or __half (the storage types of cuda_common.cuh; a half round-trips through fp32
 * exactly, so the copy is bit-exact for both). */
template <typename T>
__global__ void k_pad_input(const T *x, T *xp, int64_t BC, int64_t H, int64_t W, int64_t Hp, int64_t Wp, int pad_top,
                            int pad_left) {
    CU_PDL_ENTRY();
    /* x: [B·C, H, W] -> xp: [B·C, Hp, Wp], xp[., y, x] = x[., y − pad_top, x − pad_left] or 0 */
    const int64_t n = BC * Hp * Wp;
    GRID_STRIDE(i, n) {
        const int64_t px = i % Wp, t = i / Wp, py = t % Hp, bc = t / Hp;
        const int64_t iy = py - pad_top, ix = px - pad_left;
        cu_store(&xp[i], (iy >= 0 && iy < H && ix >= 0 && ix < W) ? cu_f32(x[(bc * H + iy) * W + ix]) : 0.0f);
    }
}

__global__ void k_unpad_add(const float *dxp, float *dx, int64_t BC, int64_t H, int64_t W, int64_t Hp, int64_t Wp,
                            int pad_top, int pad_left) {
    CU_PDL_ENTRY();
    /* dx: [B·C, H, W] += dxp[., y + pad_top, x + pad_left] where inside the padded buffer */
    const int64_t n = BC * H * W;
    GRID_STRIDE(i, n) {
        const int64_t ix = i % W, t = i / W, iy = t % H, bc = t / H;
        const int64_t py = iy + pad_top, px = ix + pad_left;
        if (py < Hp && px < Wp) dx[i] += dxp[(bc * Hp + py) * Wp + px];
    }
}


template <typename T>
static sd_status pad_input(const cu_conv_plan *p, const T *x, T *xp) {
    const sd_conv_geom *g = &p->g;
    const int64_t n = g->batch * g->c_in * p->hp * p->wp;
    CU_LAUNCH(k_pad_input<T>, cu_blocks(n, 256), 256, 0, cu_cur()->stream)(x, xp, g->batch * g->c_in, g->h_in, g->w_in,
                                                                     p->hp, p->wp, g->pad_top, g->pad_left);
    LAUNCH_CHECK("conv pad");
    return SD_OK;
}

/* Bytes of the explicitly padded input in the workspace (0 for a direct plan), elements of T. */
template <typename T>
static size_t padded_bytes(const cu_conv_plan *p) {
    return p->padded ? cu_align((size_t)(p->g.batch * p->g.c_in * p->hp * p->wp) * sizeof(T)) : 0;
}

/* The cuDNN data type of a storage type. */
template <typename T> struct cu_dnn_type;
template <> struct cu_dnn_type<float> { static const cudnnDataType_t value = CUDNN_DATA_FLOAT; };
template <> struct cu_dnn_type<__half> { static const cudnnDataType_t value = CUDNN_DATA_HALF; };

/* ------------------------------------------------------------------------------------------------
 * im2col + GEMM (exact mode; fast mode's small images and 1x1 convolutions; conv_gemm_wanted)
 * --------------------------------------------------------------------------------------------- */

/* col[n][(c·kh + i)·kw + j][oy·w_out + ox] = x[n][c][oy·stride − pad_top + i][ox·stride − pad_left + j],
 * 0 outside x (the padding, both sides). T: float or __half (a copy: bit-exact). One thread per
 * (channel, output pixel) of image n = the row: it writes that pixel's kh·kw taps, each write
 * coalesced along the pixels, with two 32-bit divisions for all of them (conv_gemm_wanted keeps the
 * sizes within int). */
template <typename T, typename Tcol = T>
__global__ void k_im2col(const T *x, Tcol *col, sd_conv_geom g) {
    CU_PDL_ENTRY();
    const int P = (int)(g.h_out * g.w_out), HW = (int)(g.h_in * g.w_in), w_in = (int)g.w_in, h_in = (int)g.h_in;
    const int taps = g.kh * g.kw, w_out = (int)g.w_out;
    CU_ROWS_COLS(n, idx, g.batch, g.c_in * P) {
        const int c = (int)idx / P, p = (int)idx - c * P;
        const int oy = p / w_out, ox = p - oy * w_out;
        const int y0 = oy * g.stride - g.pad_top, x0 = ox * g.stride - g.pad_left;
        const T *xc = x + (n * g.c_in + c) * HW;
        Tcol *out = col + ((n * g.c_in + c) * taps) * P + p;
        for (int i = 0; i < g.kh; i++) {
            const int iy = y0 + i;
            const bool row_in = iy >= 0 && iy < h_in;
            for (int j = 0; j < g.kw; j++, out += P) {
                const int ix = x0 + j;
                if (row_in && ix >= 0 && ix < w_in)
                    cu_put(out, xc[iy * w_in + ix]);
                else
                    cu_store(out, 0.0f);
            }
        }
    }
}

/* dx[n][c][iy][ix] += Σ_{i, j} dcol[n][(c·kh + i)·kw + j][oy·w_out + ox] over the output pixels
 * (oy, ox) that read x[iy][ix] through kernel tap (i, j); taps in a fixed order. One thread per dx
 * element of image n = the row, 32-bit index arithmetic (as k_im2col). */
__global__ void k_col2im_add(const float *dcol, float *dx, sd_conv_geom g) {
    CU_PDL_ENTRY();
    const int P = (int)(g.h_out * g.w_out), HW = (int)(g.h_in * g.w_in), w_in = (int)g.w_in;
    const int h_out = (int)g.h_out, w_out = (int)g.w_out, stride = g.stride, taps = g.kh * g.kw;
    CU_ROWS_COLS(n, e, g.batch, g.c_in * HW) {
        const int c = (int)e / HW, rem = (int)e - c * HW;
        const int iy = rem / w_in, ix = rem - iy * w_in;
        const float *base = dcol + ((n * g.c_in + c) * taps) * P;
        float sum = 0.0f;
        for (int i = 0; i < g.kh; i++) {
            const int ty = iy + g.pad_top - i; /* = oy · stride */
            if (ty < 0 || (stride > 1 && ty % stride)) continue;
            const int oy = stride > 1 ? ty / stride : ty;
            if (oy >= h_out) continue;
            for (int j = 0; j < g.kw; j++) {
                const int tx = ix + g.pad_left - j;
                if (tx < 0 || (stride > 1 && tx % stride)) continue;
                const int ox = stride > 1 ? tx / stride : tx;
                if (ox >= w_out) continue;
                sum += base[(i * g.kw + j) * P + oy * w_out + ox];
            }
        }
        dx[n * g.c_in * HW + e] += sum;
    }
}

/* The cuBLAS matrix type of a storage type, and the compute type of a convolution's GEMM: fp32
 * accumulation of fp16 data; for fp32 data TF32 in fast mode (as cuDNN's tensor-op math), plain
 * fp32 in exact mode (cuBLAS's default math mode never takes TF32 for CUBLAS_COMPUTE_32F). */
template <typename T> struct cu_conv_gemm_types;
template <> struct cu_conv_gemm_types<float> {
    static const cudaDataType_t data = CUDA_R_32F;
    static cublasComputeType_t compute(sd_precision p) {
        return p == SD_PRECISION_FAST ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
    }
};
template <> struct cu_conv_gemm_types<__half> {
    static const cudaDataType_t data = CUDA_R_16F;
    static cublasComputeType_t compute(sd_precision) { return CUBLAS_COMPUTE_32F; }
};

/* y = conv(x, w) as GEMMs: y[n] (c_out x P, row-major) = w (c_out x K) · col[n] (K x P); in cuBLAS's
 * column-major terms yᵀ[n] (P x c_out) = col[n]ᵀ (P x K) · wᵀ (K x c_out), batched over n. */
template <typename T>
static sd_status conv_gemm_forward(const cu_conv_plan *p, const T *x, const T *w, T *y, const sd_conv_geom *g) {
    cu_state *s = cu_cur();
    const int64_t P = g->h_out * g->w_out, K = g->c_in * g->kh * g->kw;
    const T *col = x;
    if (!conv_is_pointwise(g)) {
        T *buf = (T *)cu_workspace((size_t)(g->batch * K * P) * sizeof(T));
        if (!buf) return SD_ERR_OOM;
        CU_LAUNCH(k_im2col<T>, cu_rows_grid(g->batch, g->c_in * P, 256), 256, 0, s->stream)(x, buf, *g);
        LAUNCH_CHECK("conv im2col");
        col = buf;
    }
    const float one = 1.0f, zero = 0.0f;
    typedef cu_conv_gemm_types<T> C;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, (int)g->c_out, (int)K, &one, col,
                                            C::data, (int)P, (long long)(K * P), w, C::data, (int)K, 0LL, &zero, y,
                                            C::data, (int)P, (long long)(g->c_out * P), (int)g->batch,
                                            C::compute(p->precision), CUBLAS_GEMM_DEFAULT));
    return SD_OK;
}

/* dx += conv's data gradient as GEMMs: dcol[n] (K x P) = wᵀ (K x c_out) · dy[n] (c_out x P), column-major
 * dcolᵀ[n] (P x K) = dyᵀ[n] (P x c_out) · w (c_out x K), then col2im adds it into dx (pointwise:
 * dcol is dx's own layout, so the GEMM accumulates into dx with beta = 1). */
static sd_status conv_gemm_backward_data(const cu_conv_plan *p, const float *dy, const float *w, float *dx,
                                         const sd_conv_geom *g) {
    cu_state *s = cu_cur();
    const int64_t P = g->h_out * g->w_out, K = g->c_in * g->kh * g->kw;
    const int pointwise = conv_is_pointwise(g);
    float *dcol = dx;
    if (!pointwise) {
        dcol = (float *)cu_workspace((size_t)(g->batch * K * P) * sizeof(float));
        if (!dcol) return SD_ERR_OOM;
    }
    const float one = 1.0f, beta = pointwise ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, CUBLAS_OP_N, CUBLAS_OP_T, (int)P, (int)K, (int)g->c_out, &one, dy,
                                            CUDA_R_32F, (int)P, (long long)(g->c_out * P), w, CUDA_R_32F, (int)K, 0LL,
                                            &beta, dcol, CUDA_R_32F, (int)P, (long long)(K * P), (int)g->batch,
                                            cu_conv_gemm_types<float>::compute(p->precision), CUBLAS_GEMM_DEFAULT));
    if (!pointwise) {
        CU_LAUNCH(k_col2im_add, cu_rows_grid(g->batch, g->c_in * g->h_in * g->w_in, 256), 256, 0, s->stream)(dcol, dx, *g);
        LAUNCH_CHECK("conv col2im");
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Winograd F(m x m, 3x3): 3x3 stride-1 "same" convolutions (SD_CONV_WINOGRAD)
 *
 * Exact mode is bound by fp32 FMA throughput (no TF32, no tensor cores): its im2col + SGEMM
 * convolutions spend 9 multiply-adds per output pixel and input channel on a 3x3 kernel (fast
 * mode's fp16 variant, for the same reason on tensor cores, follows this one).
 * Winograd's minimal filtering computes an m x m block of outputs from an a x a input patch
 * (a = m + 2) with a² products: 16 for 4 outputs with m = 2 (2.25x fewer than direct), 36 for 16
 * with m = 4 (4x fewer). In four steps:
 *   U[ξ][o][i] = (G g Gᵀ)[ξ]    the 3x3 kernel g of (o, i) as an a x a (ξ = a·r + s)
 *   V[ξ][i][t] = (Bᵀ d B)[ξ]    the a x a input patch d of channel i under tile t
 *   M[ξ] = U[ξ] · V[ξ]          a² SGEMMs (O x I times I x T), one strided-batched cuBLAS call
 *   y = Aᵀ m A (+ bias)         the m x m outputs of tile t from its a² sums m[ξ] = M[ξ][o][t]
 * with the matrices of Lavin & Gray (2015), wino_f below. Each 2-d transform X = P x Pᵀ runs as the
 * 1-d one on the columns, then on the rows. Tiles cover the image in m x m steps, patch rows
 * m·ty − 1 .. m·ty + m (the padding of 1 read as zeros); where the size is no multiple of m the last
 * tiles' extra outputs are not written.
 *
 * Arithmetic: fp32 throughout, every sum in a fixed order (reproducible). It is not the direct sum:
 * the transforms combine inputs before the products, so the rounding differs. Against float64
 * direct sums over 320 to 1280 channels (numpy, random data): F(2x2) 0.8-1.1e-6 relative, F(4x4)
 * 4.7-8.9e-6 (its transforms use 4, 5, 8 and 1/6, 1/12, 1/24), direct fp32 0.2-0.6e-6; exact
 * mode's bound is 1e-4 per op and on the UNet output.
 *
 * Measured (H100, SD v1.5 512 px, tenth session): exact mode's UNet at batch 2 57.8 ms direct, 49.3
 * with F(2x2), 47.3 with F(4x4) at 64x64 and 32x32 (9e-6 from PyTorch fp32), so F(4x4) there is
 * exact mode's default (SD_CONV_WINOGRAD=auto). Fast mode's fp16 F(2x2) tied cuDNN at batch 2 (7.78
 * against 7.78 ms) and lost at batch 1 (5.24 against 5.15): off by default.
 *
 * The data gradient of such a convolution is the same kind of convolution of dy with the kernel
 * transposed and rotated by 180° (sd_conv_data_gradient_geom), so it runs the same way with the
 * weight transform reading w that way, its output added into dx.
 *
 * The weight transform runs on every call (the weights are the caller's and may change under the
 * same pointer): a² values per (o, i) against the a²·T products each of them enters, a few per cent
 * of the call at SD's 32x32 level, less at 64x64.
 * --------------------------------------------------------------------------------------------- */

/* The 1-d transforms of F(m x m, 3x3): weight u = G g (3 -> a), input v = Bᵀ d (a -> a), output
 * y = Aᵀ m (a -> m); a = m + 2. */
template <int MT> struct wino_f;
template <> struct wino_f<2> {
    static constexpr int A = 4;
    __device__ static void weight(const float g[3], float u[4]) {
        u[0] = g[0];
        u[1] = 0.5f * (g[0] + g[1] + g[2]);
        u[2] = 0.5f * (g[0] - g[1] + g[2]);
        u[3] = g[2];
    }
    __device__ static void input(const float d[4], float v[4]) {
        v[0] = d[0] - d[2];
        v[1] = d[1] + d[2];
        v[2] = d[2] - d[1];
        v[3] = d[1] - d[3];
    }
    __device__ static void output(const float m[4], float y[2]) {
        y[0] = m[0] + m[1] + m[2];
        y[1] = m[1] - m[2] - m[3];
    }
};
template <> struct wino_f<4> {
    static constexpr int A = 6;
    __device__ static void weight(const float g[3], float u[6]) {
        u[0] = 0.25f * g[0];
        u[1] = -(g[0] + g[1] + g[2]) / 6.0f;
        u[2] = -(g[0] - g[1] + g[2]) / 6.0f;
        u[3] = g[0] / 24.0f + g[1] / 12.0f + g[2] / 6.0f;
        u[4] = g[0] / 24.0f - g[1] / 12.0f + g[2] / 6.0f;
        u[5] = g[2];
    }
    __device__ static void input(const float d[6], float v[6]) {
        v[0] = 4.0f * d[0] - 5.0f * d[2] + d[4];
        v[1] = -4.0f * (d[1] + d[2]) + d[3] + d[4];
        v[2] = 4.0f * (d[1] - d[2]) - d[3] + d[4];
        v[3] = 2.0f * (d[3] - d[1]) - d[2] + d[4];
        v[4] = 2.0f * (d[1] - d[3]) - d[2] + d[4];
        v[5] = 4.0f * d[1] - 5.0f * d[3] + d[5];
    }
    __device__ static void output(const float m[6], float y[4]) {
        y[0] = m[0] + m[1] + m[2] + m[3] + m[4];
        y[1] = m[1] - m[2] + 2.0f * (m[3] - m[4]);
        y[2] = m[1] + m[2] + 4.0f * (m[3] + m[4]);
        y[3] = m[1] - m[2] + 8.0f * (m[3] - m[4]) + m[5];
    }
};

/* A flat index e = row · tiles + tl split into its row and the tile tl's position (ty, tx) in a
 * grid of tw tiles per row; 32-bit divisions (winograd_tile keeps the sizes under 2^31). */
struct wino_pos {
    int64_t row;
    int tl, ty, tx;
    __device__ __forceinline__ wino_pos(int64_t e, int tiles, int tw) {
        row = (uint32_t)e / (uint32_t)tiles;
        tl = (int)(e - row * tiles);
        ty = tl / tw;
        tx = tl - ty * tw;
    }
};

/* U[ξ][o][i] = (G g Gᵀ)[ξ]: g = w[o][i] (w [O][I][3][3]), or for the data gradient (rotate)
 * g = w[i][o] rotated by 180° (w the forward's [I][O][3][3]). One thread per (o, i), i fastest:
 * the a² stores of a warp are coalesced. Tw, Tu: float, or bf16 (the fast data gradient's kernel
 * copy and operand; the transform itself in fp32). */
template <int MT, typename Tw = float, typename Tu = float>
__global__ void k_wino_weight(const Tw *w, Tu *U, int64_t O, int64_t I, int rotate) {
    CU_PDL_ENTRY();
    constexpr int A = wino_f<MT>::A;
    GRID_STRIDE(e, O * I) {
        const int64_t o = (uint32_t)e / (uint32_t)I, i = e - o * I; /* 32-bit division: O·I, I·T, O·T < 2^31 */
        const Tw *src = w + (rotate ? i * O + o : e) * 9;
        float t[A][3]; /* G g, column by column */
        for (int c = 0; c < 3; c++) {
            float col[3], out[A];
            for (int r = 0; r < 3; r++) col[r] = cu_f32(rotate ? src[(2 - r) * 3 + (2 - c)] : src[r * 3 + c]);
            wino_f<MT>::weight(col, out);
            for (int r = 0; r < A; r++) t[r][c] = out[r];
        }
        const int64_t step = O * I;
        for (int r = 0; r < A; r++) { /* (G g) Gᵀ, row by row */
            float u[A];
            wino_f<MT>::weight(t[r], u);
            for (int s = 0; s < A; s++) cu_store(&U[(A * r + s) * step + e], u[s]);
        }
    }
}

/* V[ξ][i][t] = (Bᵀ d B)[ξ], d the a x a patch of x[b][i] at rows m·ty − 1 .., columns m·tx − 1 ..
 * (zeros outside), t = (b·th + ty)·tw + tx. One thread per (b, i, tile), tiles fastest: the a²
 * stores of a warp are coalesced along t. Tv: float, or bf16 (the fast data gradient's operand). */
template <int MT, typename Tv = float>
__global__ void k_wino_input(const float *x, Tv *V, int64_t B, int64_t I, int H, int W, int th, int tw) {
    CU_PDL_ENTRY();
    constexpr int A = wino_f<MT>::A;
    const int tiles = th * tw;
    const int64_t T = B * tiles;
    GRID_STRIDE(e, B * I * tiles) {
        const wino_pos at(e, tiles, tw); /* row b·I + i */
        const int64_t bi = at.row, b = (uint32_t)bi / (uint32_t)I, i = bi - b * I;
        const int tl = at.tl, ty = at.ty, tx = at.tx;
        const float *xc = x + bi * H * W;
        float t[A][A]; /* Bᵀ d, column by column */
        for (int c = 0; c < A; c++) {
            const int ix = MT * tx - 1 + c;
            float col[A], out[A];
            for (int r = 0; r < A; r++) {
                const int iy = MT * ty - 1 + r;
                col[r] = iy >= 0 && iy < H && ix >= 0 && ix < W ? xc[(int64_t)iy * W + ix] : 0.0f;
            }
            wino_f<MT>::input(col, out);
            for (int r = 0; r < A; r++) t[r][c] = out[r];
        }
        Tv *dst = V + i * T + b * tiles + tl;
        const int64_t step = I * T;
        for (int r = 0; r < A; r++) { /* (Bᵀ d) B, row by row */
            float v[A];
            wino_f<MT>::input(t[r], v);
            for (int s = 0; s < A; s++) cu_store(&dst[(A * r + s) * step], v[s]);
        }
    }
}

/* y[b][o][m·ty + r][m·tx + c] = (Aᵀ m A)[r][c] (+ bias[o]), m[ξ] = M[ξ][o][t]; added into y when
 * accumulating (the data gradient). One thread per (b, o, tile), tiles fastest. */
template <int MT>
__global__ void k_wino_output(const float *M, const float *bias, float *y, int64_t B, int64_t O, int H, int W, int th,
                              int tw, int accumulate) {
    CU_PDL_ENTRY();
    constexpr int A = wino_f<MT>::A;
    const int tiles = th * tw;
    const int64_t T = B * tiles;
    GRID_STRIDE(e, B * O * tiles) {
        const wino_pos at(e, tiles, tw); /* row b·O + o */
        const int64_t bo = at.row, b = (uint32_t)bo / (uint32_t)O, o = bo - b * O;
        const int tl = at.tl, ty = at.ty, tx = at.tx;
        const float *src = M + o * T + b * tiles + tl;
        const int64_t step = O * T;
        float t[MT][A]; /* Aᵀ m, column by column */
        for (int c = 0; c < A; c++) {
            float col[A], out[MT];
            for (int r = 0; r < A; r++) col[r] = src[(A * r + c) * step];
            wino_f<MT>::output(col, out);
            for (int r = 0; r < MT; r++) t[r][c] = out[r];
        }
        const float bv = bias ? bias[o] : 0.0f;
        float *yc = y + bo * H * W;
        for (int r = 0; r < MT; r++) { /* (Aᵀ m) A, row by row */
            const int oy = MT * ty + r;
            if (oy >= H) break;
            float out[MT];
            wino_f<MT>::output(t[r], out);
            for (int c = 0; c < MT; c++) {
                const int ox = MT * tx + c;
                if (ox >= W) break;
                float *dst = yc + (int64_t)oy * W + ox;
                *dst = accumulate ? *dst + (out[c] + bv) : out[c] + bv;
            }
        }
    }
}

/* The cuBLAS type of the transformed operands U and V. */
template <typename T> struct wino_operand;
template <> struct wino_operand<float> { static const cudaDataType_t type = CUDA_R_32F; };
template <> struct wino_operand<__nv_bfloat16> { static const cudaDataType_t type = CUDA_R_16BF; };

/* y (+)= conv(x, w) (+ bias) by Winograd F(MT x MT, 3x3) in NCHW (winograd_fits' geometry), U and V
 * stored as Top (F32 in exact mode, bf16 for fast mode's data gradients), M in F32. data_gradient 1:
 * x = dy, y = dx, w the forward's kernel, read transposed and rotated (dims swapped). accumulate:
 * the output transform adds into y. */
template <int MT, typename Tw = float, typename Top = float>
static sd_status conv_winograd_tiles(const float *x, const Tw *w, const float *bias, float *y,
                                     const sd_conv_geom *g, int data_gradient, int accumulate) {
    constexpr int A = wino_f<MT>::A;
    cu_state *s = cu_cur();
    const wino_dims d = wino_dims_of(g, data_gradient, MT);
    const size_t u_bytes = cu_align((size_t)(A * A * d.O * d.I) * sizeof(Top));
    const size_t v_bytes = cu_align((size_t)(A * A * d.I * d.T) * sizeof(Top));
    char *ws = (char *)cu_workspace(u_bytes + v_bytes + d.m_bytes);
    if (!ws) return SD_ERR_OOM;
    Top *U = (Top *)ws, *V = (Top *)(ws + u_bytes);
    float *M = (float *)(ws + u_bytes + v_bytes);
    const int threads = 256;
    CU_LAUNCH((k_wino_weight<MT, Tw, Top>), cu_blocks(d.O * d.I, threads), threads, 0, s->stream)(w, U, d.O, d.I,
                                                                                                 data_gradient);
    LAUNCH_CHECK("conv winograd: weight transform");
    CU_LAUNCH((k_wino_input<MT, Top>), cu_blocks(d.I * d.T, threads), threads, 0, s->stream)(x, V, d.B, d.I, d.H, d.W,
                                                                                            d.th, d.tw);
    LAUNCH_CHECK("conv winograd: input transform");
    /* M[ξ] (O x T, row-major) = U[ξ] (O x I) · V[ξ] (I x T); column-major Mᵀ[ξ] = V[ξ]ᵀ · U[ξ]ᵀ, batched over ξ */
    const float one = 1.0f, zero = 0.0f;
    const cudaDataType_t op = wino_operand<Top>::type;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)d.T, (int)d.O, (int)d.I, &one, V, op,
                                            (int)d.T, (long long)(d.I * d.T), U, op, (int)d.I, (long long)(d.O * d.I),
                                            &zero, M, CUDA_R_32F, (int)d.T, (long long)(d.O * d.T), A * A,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CU_LAUNCH(k_wino_output<MT>, cu_blocks(d.O * d.T, threads), threads, 0, s->stream)(M, bias, y, d.B, d.O, d.H, d.W,
                                                                                      d.th, d.tw, accumulate);
    LAUNCH_CHECK("conv winograd: output transform");
    return SD_OK;
}

static sd_status conv_winograd(const cu_conv_plan *p, const float *x, const float *w, const float *bias, float *y,
                               int data_gradient) {
    return p->winograd == 4 ? conv_winograd_tiles<4>(x, w, bias, y, &p->g, data_gradient, data_gradient)
                            : conv_winograd_tiles<2>(x, w, bias, y, &p->g, data_gradient, data_gradient);
}

/* Fast mode's channels-last fp16 convolutions by F(2x2, 3x3) (cu_f16_conv2d_nhwc under
 * SD_CONV_WINOGRAD): the same transforms on NHWC maps, with the layouts a linear layer's GEMM
 * reads (V[ξ][t][i] rows of a tile's input channels, U[ξ][o][i] rows of a kernel's), so that
 * M[ξ][t][o] = V[ξ] · U[ξ]ᵀ is one strided-batched fp16 GEMM with fp32 sums, and the output
 * transform reads M along the channels and writes y channels-last with the convolution's epilogue
 * (bias, channel bias, residual) summed in before y's only rounding. The transforms compute in
 * fp32; U, V and M are stored in fp16 (V's sums of up to four inputs keep fp16's range for SD's
 * activations). F(2x2) only: F(4x4)'s transforms would multiply fp16's rounding by their 4s, 5s
 * and 8s. Each thread moves WV channels (2: half2, where the channel count and pointers allow). */

/* U[ξ][o][i] = (G g Gᵀ)[ξ] in fp16 from the KRSC kernel w[o][r][c][i]. One thread per (o, i). */
__global__ void k_wino_weight_krsc(const __half *w, __half *U, int64_t O, int64_t I) {
    CU_PDL_ENTRY();
    GRID_STRIDE(e, O * I) {
        const int64_t o = (uint32_t)e / (uint32_t)I, i = e - o * I; /* 32-bit division: O·I, I·T, O·T < 2^31 */
        const __half *src = w + o * 9 * I + i;
        float t[4][3];
        for (int c = 0; c < 3; c++) {
            float col[3], out[4];
            for (int r = 0; r < 3; r++) col[r] = __half2float(src[(r * 3 + c) * I]);
            wino_f<2>::weight(col, out);
            for (int r = 0; r < 4; r++) t[r][c] = out[r];
        }
        for (int r = 0; r < 4; r++) {
            float u[4];
            wino_f<2>::weight(t[r], u);
            for (int s = 0; s < 4; s++) U[(4 * r + s) * O * I + e] = __float2half_rn(u[s]);
        }
    }
}

/* WV consecutive halves at p, as floats (WV = 2: one 4-byte load) */
template <int WV> __device__ __forceinline__ void wino_load(const __half *p, float v[WV]) {
    if constexpr (WV == 2) {
        const __half2 h = *reinterpret_cast<const __half2 *>(p);
        v[0] = __half2float(h.x), v[1] = __half2float(h.y);
    } else {
        v[0] = __half2float(*p);
    }
}
template <int WV> __device__ __forceinline__ void wino_store(__half *p, const float v[WV]) {
    if constexpr (WV == 2) {
        *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(v[0], v[1]);
    } else {
        *p = __float2half_rn(v[0]);
    }
}

/* V[ξ][t][i] = (Bᵀ d B)[ξ] of channel i's 4x4 patch under tile t of the NHWC map x[B][H][W][I]. One
 * thread per (tile, WV channels), channels fastest: loads and stores coalesced along the channels. */
template <int WV>
__global__ void k_wino_input_nhwc(const __half *x, __half *V, int64_t B, int64_t I, int H, int W, int th, int tw) {
    CU_PDL_ENTRY();
    const int tiles = th * tw;
    const int64_t T = B * tiles, groups = I / WV;
    GRID_STRIDE(e, T * groups) {
        const int64_t t = (uint32_t)e / (uint32_t)groups, i0 = (e - t * groups) * WV;
        const wino_pos at(t, tiles, tw); /* row b */
        const int64_t b = at.row;
        const int ty = at.ty, tx = at.tx;
        const __half *xb = x + b * H * W * I + i0;
        float d[4][4][WV];
        for (int r = 0; r < 4; r++) {
            const int iy = 2 * ty - 1 + r;
            for (int c = 0; c < 4; c++) {
                const int ix = 2 * tx - 1 + c;
                if (iy >= 0 && iy < H && ix >= 0 && ix < W) {
                    wino_load<WV>(xb + ((int64_t)iy * W + ix) * I, d[r][c]);
                } else {
                    for (int k = 0; k < WV; k++) d[r][c][k] = 0.0f;
                }
            }
        }
        float v[16][WV];
        for (int k = 0; k < WV; k++) {
            float t4[4][4];
            for (int c = 0; c < 4; c++) {
                const float col[4] = {d[0][c][k], d[1][c][k], d[2][c][k], d[3][c][k]};
                float out[4];
                wino_f<2>::input(col, out);
                for (int r = 0; r < 4; r++) t4[r][c] = out[r];
            }
            for (int r = 0; r < 4; r++) {
                float out[4];
                wino_f<2>::input(t4[r], out);
                for (int s = 0; s < 4; s++) v[4 * r + s][k] = out[s];
            }
        }
        __half *dst = V + t * I + i0;
        for (int xi = 0; xi < 16; xi++) wino_store<WV>(dst + xi * T * I, v[xi]);
    }
}

/* y[b][2·ty + r][2·tx + c][o] = (Aᵀ m A)[r][c] + bias[o] + cbias[b][o] + res[...][o] (each optional),
 * m[ξ] = M[ξ][t][o], summed in fp32 and rounded once. One thread per (tile, WV channels). */
template <int WV>
__global__ void k_wino_output_nhwc(const __half *M, const float *bias, const float *cbias, const __half *res,
                                   __half *y, int64_t B, int64_t O, int H, int W, int th, int tw) {
    CU_PDL_ENTRY();
    const int tiles = th * tw;
    const int64_t T = B * tiles, groups = O / WV;
    GRID_STRIDE(e, T * groups) {
        const int64_t t = (uint32_t)e / (uint32_t)groups, o0 = (e - t * groups) * WV;
        const wino_pos at(t, tiles, tw); /* row b */
        const int64_t b = at.row;
        const int ty = at.ty, tx = at.tx;
        float m[16][WV];
        for (int xi = 0; xi < 16; xi++) wino_load<WV>(M + (xi * T + t) * O + o0, m[xi]);
        float add[WV];
        for (int k = 0; k < WV; k++)
            add[k] = (bias ? bias[o0 + k] : 0.0f) + (cbias ? cbias[b * O + o0 + k] : 0.0f);
        float out[2][2][WV];
        for (int k = 0; k < WV; k++) {
            float t2[2][4];
            for (int c = 0; c < 4; c++) {
                const float col[4] = {m[c][k], m[4 + c][k], m[8 + c][k], m[12 + c][k]};
                float o2[2];
                wino_f<2>::output(col, o2);
                t2[0][c] = o2[0], t2[1][c] = o2[1];
            }
            for (int r = 0; r < 2; r++) {
                float o2[2];
                wino_f<2>::output(t2[r], o2);
                out[r][0][k] = o2[0] + add[k];
                out[r][1][k] = o2[1] + add[k];
            }
        }
        for (int r = 0; r < 2; r++) {
            const int oy = 2 * ty + r;
            if (oy >= H) break;
            for (int c = 0; c < 2; c++) {
                const int ox = 2 * tx + c;
                if (ox >= W) break;
                const int64_t at = ((b * H + oy) * W + ox) * O + o0;
                if (res) {
                    float rv[WV];
                    wino_load<WV>(res + at, rv);
                    for (int k = 0; k < WV; k++) out[r][c][k] += rv[k];
                }
                wino_store<WV>(y + at, out[r][c]);
            }
        }
    }
}

/* y = conv(x, w) + b + v + r (each optional) of fp16 NHWC maps (w KRSC) by F(2x2, 3x3): the
 * epilogue in the output transform. */
/* The workspace of U, V and M in fp16 (F(2x2): 16 matrices each). */
static void wino_nhwc_bytes(const wino_dims &d, size_t *u_bytes, size_t *v_bytes, size_t *m_bytes) {
    *u_bytes = cu_align((size_t)(16 * d.O * d.I) * sizeof(__half));
    *v_bytes = cu_align((size_t)(16 * d.I * d.T) * sizeof(__half));
    *m_bytes = cu_align((size_t)(16 * d.O * d.T) * sizeof(__half));
}

template <int WV>
static sd_status conv_winograd_nhwc_launch(const cu_conv_plan *p, const __half *x, const __half *w, const float *b,
                                           const float *v, const __half *r, __half *y) {
    cu_state *s = cu_cur();
    const wino_dims d = wino_dims_of(&p->g, 0, 2);
    size_t u_bytes, v_bytes, m_bytes;
    wino_nhwc_bytes(d, &u_bytes, &v_bytes, &m_bytes);
    char *ws = (char *)cu_workspace(u_bytes + v_bytes + m_bytes);
    if (!ws) return SD_ERR_OOM;
    __half *U = (__half *)ws, *V = (__half *)(ws + u_bytes), *M = (__half *)(ws + u_bytes + v_bytes);
    const int threads = 256;
    CU_LAUNCH(k_wino_weight_krsc, cu_blocks(d.O * d.I, threads), threads, 0, s->stream)(w, U, d.O, d.I);
    LAUNCH_CHECK("conv winograd (fp16): weight transform");
    CU_LAUNCH(k_wino_input_nhwc<WV>, cu_blocks(d.T * d.I / WV, threads), threads, 0, s->stream)(x, V, d.B, d.I, d.H, d.W,
                                                                                                d.th, d.tw);
    LAUNCH_CHECK("conv winograd (fp16): input transform");
    /* M[ξ] (T x O, row-major) = V[ξ] (T x I) · U[ξ]ᵀ; column-major Mᵀ[ξ] (O x T) = op(U[ξ]) · V[ξ]ᵀ */
    const float one = 1.0f, zero = 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)d.O, (int)d.T, (int)d.I, &one, U,
                                            CUDA_R_16F, (int)d.I, (long long)(d.O * d.I), V, CUDA_R_16F, (int)d.I,
                                            (long long)(d.T * d.I), &zero, M, CUDA_R_16F, (int)d.O,
                                            (long long)(d.T * d.O), 16, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    CU_LAUNCH(k_wino_output_nhwc<WV>, cu_blocks(d.T * d.O / WV, threads), threads, 0, s->stream)(
        M, b, v, r, y, d.B, d.O, d.H, d.W, d.th, d.tw);
    LAUNCH_CHECK("conv winograd (fp16): output transform");
    return SD_OK;
}

static sd_status conv_winograd_nhwc(const cu_conv_plan *p, const __half *x, const __half *w, const float *b,
                                    const float *v, const __half *r, __half *y) {
    const int pairs = p->g.c_in % 2 == 0 && p->g.c_out % 2 == 0 && ((uintptr_t)x & 3) == 0 && ((uintptr_t)y & 3) == 0 &&
                      (!r || ((uintptr_t)r & 3) == 0);
    return pairs ? conv_winograd_nhwc_launch<2>(p, x, w, b, v, r, y) : conv_winograd_nhwc_launch<1>(p, x, w, b, v, r, y);
}

/* Channels-last: col[b·P + p][(i·kw + j)·c_in + c] = x[b][oy·stride − pad_top + i][ox·stride −
 * pad_left + j][c], 0 outside x: the unfolded rows are the GEMM's x as a linear layer reads it, K
 * ordered as the KRSC weight. One grid row per output pixel (its position computed once), threads
 * along the channels (coalesced both ways), the kh·kw taps looped. Values are moved as units U of
 * `units` per pixel (float4: 16 bytes, where the channel count and the pointers allow; else the
 * elements themselves): bits copied, no arithmetic. */
template <typename U>
__global__ void k_im2col_nhwc(const U *x, U *col, sd_conv_geom g, int64_t units) {
    CU_PDL_ENTRY();
    const int64_t P = g.h_out * g.w_out, rows = g.batch * P, K = (int64_t)g.kh * g.kw * units;
    const U zero{};
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const int64_t b = r / P;
        const int p = (int)(r - b * P), oy = p / (int)g.w_out, ox = p - oy * (int)g.w_out;
        const int y0 = oy * g.stride - g.pad_top, x0 = ox * g.stride - g.pad_left;
        const U *xb = x + b * g.h_in * g.w_in * units;
        U *out = col + r * K;
        GRID_STRIDE(c, units)
            for (int i = 0; i < g.kh; i++) {
                const int iy = y0 + i;
                for (int j = 0; j < g.kw; j++) {
                    const int ix = x0 + j;
                    const bool inside = iy >= 0 && iy < g.h_in && ix >= 0 && ix < g.w_in;
                    out[(i * g.kw + j) * units + c] = inside ? xb[((int64_t)iy * g.w_in + ix) * units + c] : zero;
                }
            }
    }
}

/* Launches k_im2col_nhwc on T data: 16-byte units where c_in allows. */
template <typename T>
static sd_status im2col_nhwc(const T *x, T *col, const sd_conv_geom *g, int64_t rows, cudaStream_t st) {
    const int64_t per_unit = 16 / (int64_t)sizeof(T);
    if (g->c_in % per_unit == 0 && cu_aligned16(x) && cu_aligned16(col)) {
        const int64_t units = g->c_in / per_unit;
        const int threads = cu_row_threads(units);
        CU_LAUNCH(k_im2col_nhwc<float4>, cu_rows_grid(rows, units, threads), threads, 0, st)(
            reinterpret_cast<const float4 *>(x), reinterpret_cast<float4 *>(col), *g, units);
    } else {
        const int threads = cu_row_threads(g->c_in);
        CU_LAUNCH(k_im2col_nhwc<T>, cu_rows_grid(rows, g->c_in, threads), threads, 0, st)(x, col, *g, g->c_in);
    }
    LAUNCH_CHECK("conv im2col (channels-last)");
    return SD_OK;
}

/* Channels-last y = conv(x, w) as one GEMM over every output pixel of the batch: y[B·P, c_out] =
 * col[B·P, K] · w[c_out, K]ᵀ (a linear layer; col = x for a pointwise convolution). In cuBLAS's
 * column-major terms yᵀ (c_out x B·P) = wᵀᵀ · colᵀ. */
template <typename T>
static sd_status conv_gemm_forward_nhwc(const cu_conv_plan *p, const T *x, const T *w, T *y, const sd_conv_geom *g) {
    cu_state *s = cu_cur();
    const int64_t M = g->batch * g->h_out * g->w_out, K = g->c_in * g->kh * g->kw;
    if (M > INT_MAX || K > INT_MAX)
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda conv2d (channels-last GEMM): %lld x %lld outside cuBLAS's range",
                       (long long)M, (long long)K);
    const T *col = x;
    if (!conv_is_pointwise(g)) {
        T *buf = (T *)cu_workspace((size_t)(M * K) * sizeof(T));
        if (!buf) return SD_ERR_OOM;
        CU_TRY(im2col_nhwc(x, buf, g, M, s->stream));
        col = buf;
    }
    if constexpr (sizeof(T) == 2) { /* fp16: a linear layer's GEMM, tunable (SD_GEMM_ALGO=tune) */
        return cu_f16_matmul_nt(reinterpret_cast<const sd_f16 *>(col), reinterpret_cast<const sd_f16 *>(w),
                                reinterpret_cast<sd_f16 *>(y), M, K, g->c_out);
    } else {
        const float one = 1.0f, zero = 0.0f;
        typedef cu_conv_gemm_types<T> C;
        CUBLAS_CHECK(cublasGemmEx(s->blas, CUBLAS_OP_T, CUBLAS_OP_N, (int)g->c_out, (int)M, (int)K, &one, w, C::data,
                                  (int)K, col, C::data, (int)K, &zero, y, C::data, (int)g->c_out,
                                  C::compute(p->precision), CUBLAS_GEMM_DEFAULT));
        return SD_OK;
    }
}

/* ------------------------------------------------------------------------------------------------
 * cuDNN's graph API for fast mode's fp16 forward (SD_CONV_ALGO=graph|tune)
 *
 * The legacy calls reach the kernels their algorithm enums name: on an H100 every fp16 forward
 * plan ran algorithm 1 (implicit precomputed GEMM), the convolutions about 164 TFLOP/s as a class
 * in the fourth GPU session's profile, a sixth of the card's dense fp16 rate. The graph API's
 * heuristics (mode A, then the fallback list) rank every engine cuDNN has for an operation graph,
 * Hopper's warp-group kernels among them. The graph here is the one operation y = conv(x, w), with
 * the legacy plan's meaning (dimensions n, c, h, w with the layout's strides, a KRSC or KCRS
 * filter, fp32 compute, symmetric padding); the epilogue stays conv_epilogue's pass.
 *  - graph: the first engine config whose execution plan finalises, skipping engines that compile
 *    kernels at run time (seconds per plan through NVRTC, which the GPU machines may lack) and
 *    non-deterministic ones (every run must give the same bits);
 *  - tune: the im2col + GEMM path, the legacy heuristic's algorithm and up to
 *    GRAPH_TUNE_CANDIDATES such plans, each timed on the call's own operands (cu_tune_timer), the
 *    fastest kept (conv_tune): what
 *    cudnn-frontend's autotuning and PyTorch's cudnn.benchmark do, with the GEMM path in the race.
 * Decided on a plan's first call outside a capture (a call first seen while capturing runs the
 * legacy algorithm). A plan without a usable engine, or a call whose operands are not 16-byte
 * aligned (the tensors' declared alignment), runs the legacy algorithm. SD_CUDNN_LOG=1 prints the
 * decisions.
 * --------------------------------------------------------------------------------------------- */

#define GRAPH_MAX_CONFIGS 16
#define GRAPH_TUNE_CANDIDATES 4
enum { GRAPH_UID_X = 1, GRAPH_UID_W = 2, GRAPH_UID_Y = 3 };

/* The handle attributes of the operation graph and the execution plan, by number: cuDNN 9.19 marks
 * their names deprecated in favour of device-property descriptors, which earlier 9.x libraries
 * (the GPU machines' PyTorch wheels) do not have; the handles work in every 9.x. */
static const cudnnBackendAttributeName_t kGraphOpGraphHandle = (cudnnBackendAttributeName_t)800;
static const cudnnBackendAttributeName_t kGraphPlanHandle = (cudnnBackendAttributeName_t)400;

#define BE_TRY(call)                                                                               \
    do {                                                                                           \
        const cudnnStatus_t be_st_ = (call);                                                       \
        if (be_st_ != CUDNN_STATUS_SUCCESS) return be_st_;                                         \
    } while (0)

/* A backend descriptor destroyed with its scope unless released. */
struct be_desc {
    cudnnBackendDescriptor_t d = nullptr;
    be_desc() {}
    be_desc(const be_desc &) = delete;
    be_desc &operator=(const be_desc &) = delete;
    ~be_desc() {
        if (d) cudnnBackendDestroyDescriptor(d);
    }
    cudnnStatus_t create(cudnnBackendDescriptorType_t type) { return cudnnBackendCreateDescriptor(type, &d); }
    cudnnBackendDescriptor_t release() {
        cudnnBackendDescriptor_t r = d;
        d = nullptr;
        return r;
    }
};

static int graph_api_wanted(const cu_state *s, const cu_conv_plan *p) {
    return (s->conv_algo == SD_CONV_ALGO_GRAPH || s->conv_algo == SD_CONV_ALGO_TUNE) && p->type == CUDNN_DATA_HALF &&
           !p->gemm && !p->padded;
}

/* A 4-d tensor (n, c, h, w), or a filter (k, c, r, s), in p's layout: NHWC / KRSC or NCHW / KCRS. */
static cudnnStatus_t graph_tensor(be_desc *t, int64_t uid, const cu_conv_plan *p, int64_t n, int64_t c, int64_t h,
                                  int64_t w) {
    const int64_t dims[4] = {n, c, h, w}, align = 16;
    const int64_t nhwc[4] = {h * w * c, 1, w * c, c}, nchw[4] = {c * h * w, h * w, w, 1};
    const cudnnDataType_t type = p->type;
    BE_TRY(t->create(CUDNN_BACKEND_TENSOR_DESCRIPTOR));
    BE_TRY(cudnnBackendSetAttribute(t->d, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &type));
    BE_TRY(cudnnBackendSetAttribute(t->d, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 4, dims));
    BE_TRY(cudnnBackendSetAttribute(t->d, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 4, p->nhwc ? nhwc : nchw));
    BE_TRY(cudnnBackendSetAttribute(t->d, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1, &uid));
    BE_TRY(cudnnBackendSetAttribute(t->d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1, &align));
    return cudnnBackendFinalize(t->d);
}

/* The operation graph of p's convolution, its descriptors left in keep[0..5] (owned by the caller). */
static cudnnStatus_t graph_operation(cu_state *s, const cu_conv_plan *p, cudnnBackendDescriptor_t keep[6]) {
    const sd_conv_geom *g = &p->g;
    be_desc x, w, y, conv, op, graph;
    BE_TRY(graph_tensor(&x, GRAPH_UID_X, p, g->batch, g->c_in, g->h_in, g->w_in));
    BE_TRY(graph_tensor(&w, GRAPH_UID_W, p, g->c_out, g->c_in, g->kh, g->kw));
    BE_TRY(graph_tensor(&y, GRAPH_UID_Y, p, g->batch, g->c_out, g->h_out, g->w_out));
    const cudnnDataType_t compute = CUDNN_DATA_FLOAT; /* PSEUDO_HALF_CONFIG, as the legacy plan */
    const cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    const int64_t spatial = 2, ones[2] = {1, 1}, strides[2] = {g->stride, g->stride};
    const int64_t pads[2] = {g->pad_top, g->pad_left}; /* symmetric: graph_api_wanted excludes padded plans */
    BE_TRY(conv.create(CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR));
    BE_TRY(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1, &compute));
    BE_TRY(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1, &mode));
    BE_TRY(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1, &spatial));
    BE_TRY(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 2, ones));
    BE_TRY(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 2, strides));
    BE_TRY(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 2, pads));
    BE_TRY(cudnnBackendSetAttribute(conv.d, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 2, pads));
    BE_TRY(cudnnBackendFinalize(conv.d));
    const float alpha = 1.0f, beta = 0.0f; /* y is written, not read */
    BE_TRY(op.create(CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR));
    BE_TRY(cudnnBackendSetAttribute(op.d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &x.d));
    BE_TRY(cudnnBackendSetAttribute(op.d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &w.d));
    BE_TRY(cudnnBackendSetAttribute(op.d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &y.d));
    BE_TRY(cudnnBackendSetAttribute(op.d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
                                    CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &conv.d));
    BE_TRY(cudnnBackendSetAttribute(op.d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA, CUDNN_TYPE_FLOAT, 1, &alpha));
    BE_TRY(cudnnBackendSetAttribute(op.d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA, CUDNN_TYPE_FLOAT, 1, &beta));
    BE_TRY(cudnnBackendFinalize(op.d));
    BE_TRY(graph.create(CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR));
    BE_TRY(cudnnBackendSetAttribute(graph.d, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &op.d));
    BE_TRY(cudnnBackendSetAttribute(graph.d, kGraphOpGraphHandle, CUDNN_TYPE_HANDLE, 1, &s->dnn));
    BE_TRY(cudnnBackendFinalize(graph.d));
    be_desc *all[6] = {&x, &w, &y, &conv, &op, &graph};
    for (int i = 0; i < 6; i++) keep[i] = all[i]->release();
    return CUDNN_STATUS_SUCCESS;
}

/* Whether an engine config may run here: not compiled at run time, deterministic. Its engine's
 * global index goes to *engine (for the log). */
static cudnnStatus_t graph_config_ok(cudnnBackendDescriptor_t cfg, int *ok, int64_t *engine) {
    be_desc e;
    int64_t n = 0;
    BE_TRY(e.create(CUDNN_BACKEND_ENGINE_DESCRIPTOR));
    BE_TRY(cudnnBackendGetAttribute(cfg, CUDNN_ATTR_ENGINECFG_ENGINE, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1, &n, &e.d));
    BE_TRY(cudnnBackendGetAttribute(e.d, CUDNN_ATTR_ENGINE_GLOBAL_INDEX, CUDNN_TYPE_INT64, 1, &n, engine));
    cudnnBackendBehaviorNote_t behaviour[CUDNN_BEHAVIOR_NOTE_TYPE_COUNT];
    cudnnBackendNumericalNote_t numerical[CUDNN_NUMERICAL_NOTE_TYPE_COUNT];
    int64_t nb = 0, nn = 0;
    BE_TRY(cudnnBackendGetAttribute(e.d, CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE, CUDNN_TYPE_BEHAVIOR_NOTE,
                                    CUDNN_BEHAVIOR_NOTE_TYPE_COUNT, &nb, behaviour));
    BE_TRY(cudnnBackendGetAttribute(e.d, CUDNN_ATTR_ENGINE_NUMERICAL_NOTE, CUDNN_TYPE_NUMERICAL_NOTE,
                                    CUDNN_NUMERICAL_NOTE_TYPE_COUNT, &nn, numerical));
    *ok = 1;
    for (int64_t i = 0; i < nb && i < CUDNN_BEHAVIOR_NOTE_TYPE_COUNT; i++)
        if (behaviour[i] == CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION) *ok = 0;
    for (int64_t i = 0; i < nn && i < CUDNN_NUMERICAL_NOTE_TYPE_COUNT; i++)
        if (numerical[i] == CUDNN_NUMERICAL_NOTE_NONDETERMINISTIC) *ok = 0;
    return CUDNN_STATUS_SUCCESS;
}

/* Up to `max` runnable plans for p's convolution, best first by cuDNN's ranking (heuristic mode A,
 * then the fallback list when A gives none), into cand[] (each owning its config and plan; the
 * caller fills keep). *n = how many. */
static cudnnStatus_t graph_candidates(cu_state *s, cudnnBackendDescriptor_t op_graph, cu_conv_graph *cand, int max,
                                      int *n, cudnnBackendDescriptor_t *heur_out) {
    *n = 0;
    static const cudnnBackendHeurMode_t modes[2] = {CUDNN_HEUR_MODE_A, CUDNN_HEUR_MODE_FALLBACK};
    for (int m = 0; m < 2 && *n == 0; m++) {
        be_desc heur;
        BE_TRY(heur.create(CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR));
        BE_TRY(cudnnBackendSetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1,
                                        &op_graph));
        BE_TRY(cudnnBackendSetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1, &modes[m]));
        if (cudnnBackendFinalize(heur.d) != CUDNN_STATUS_SUCCESS) continue; /* no such mode for this graph */
        be_desc cfgs[GRAPH_MAX_CONFIGS];
        cudnnBackendDescriptor_t raw[GRAPH_MAX_CONFIGS];
        for (int i = 0; i < GRAPH_MAX_CONFIGS; i++) {
            BE_TRY(cfgs[i].create(CUDNN_BACKEND_ENGINECFG_DESCRIPTOR));
            raw[i] = cfgs[i].d;
        }
        int64_t got = 0;
        BE_TRY(cudnnBackendGetAttribute(heur.d, CUDNN_ATTR_ENGINEHEUR_RESULTS, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                        GRAPH_MAX_CONFIGS, &got, raw));
        for (int64_t i = 0; i < got && i < GRAPH_MAX_CONFIGS && *n < max; i++) {
            int ok = 0;
            int64_t engine = -1;
            if (graph_config_ok(cfgs[i].d, &ok, &engine) != CUDNN_STATUS_SUCCESS || !ok) continue;
            be_desc plan;
            BE_TRY(plan.create(CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR));
            BE_TRY(cudnnBackendSetAttribute(plan.d, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
                                            1, &cfgs[i].d));
            BE_TRY(cudnnBackendSetAttribute(plan.d, kGraphPlanHandle, CUDNN_TYPE_HANDLE, 1, &s->dnn));
            if (cudnnBackendFinalize(plan.d) != CUDNN_STATUS_SUCCESS) continue; /* this engine cannot run it */
            int64_t ws = 0, one = 0;
            BE_TRY(cudnnBackendGetAttribute(plan.d, CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE, CUDNN_TYPE_INT64, 1, &one, &ws));
            if (ws < 0 || ws > (int64_t)CONV_WS_LIMIT) continue;
            cu_conv_graph *c = &cand[(*n)++];
            memset(c, 0, sizeof *c);
            c->cfg = cfgs[i].release();
            c->plan = plan.release();
            c->engine = engine;
            c->ws = ws;
        }
        if (*n) *heur_out = heur.release();
    }
    return CUDNN_STATUS_SUCCESS;
}

/* One execution of a graph plan on x, w, y with workspace ws. The variant pack (the pointers) is
 * kept and reused while the call's pointers are the same (a step replayed op by op, a loop over
 * one buffer), else made anew: a descriptor's creation and finalisation per call is host time. */
static cudnnStatus_t graph_execute(cu_state *s, cu_conv_graph *gp, const void *x, const void *w, void *y, void *ws) {
    const void *now[4] = {x, w, y, ws};
    if (!gp->pack || memcmp(now, gp->pack_ptrs, sizeof now) != 0) {
        if (gp->pack) cudnnBackendDestroyDescriptor(gp->pack);
        gp->pack = NULL;
        be_desc pack;
        const int64_t uids[3] = {GRAPH_UID_X, GRAPH_UID_W, GRAPH_UID_Y};
        void *ptrs[3] = {const_cast<void *>(x), const_cast<void *>(w), y};
        BE_TRY(pack.create(CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR));
        BE_TRY(cudnnBackendSetAttribute(pack.d, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 3, uids));
        BE_TRY(cudnnBackendSetAttribute(pack.d, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 3, ptrs));
        BE_TRY(cudnnBackendSetAttribute(pack.d, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1, &ws));
        BE_TRY(cudnnBackendFinalize(pack.d));
        gp->pack = pack.release();
        memcpy(gp->pack_ptrs, now, sizeof now);
    }
    return cudnnBackendExecute(s->dnn, gp->plan, gp->pack);
}

static int graph_operands_aligned(const void *x, const void *w, const void *y) {
    return cu_aligned16(x) && cu_aligned16(w) && cu_aligned16(y);
}

static void graph_log(const cu_conv_plan *p, const char *what) {
    if (!cudnn_log_on()) return;
    const sd_conv_geom *g = &p->g;
    fprintf(stderr, "cudnn: graph      fp16%s fast b%lld %lld->%lld %lldx%lld k%dx%d/%d: %s\n", p->nhwc ? " nhwc" : "",
            (long long)g->batch, (long long)g->c_in, (long long)g->c_out, (long long)g->h_in, (long long)g->w_in, g->kh,
            g->kw, g->stride, what);
}

/* The graph API's candidates for p (at most max), their descriptors in keep[0..6]; n = 0 (keep
 * released) when it has none, which the log line says. */
static void graph_prepare(cu_state *s, cu_conv_plan *p, cudnnBackendDescriptor_t keep[7], cu_conv_graph *cand, int max,
                          int *n) {
    *n = 0;
    memset(keep, 0, 7 * sizeof *keep);
    cudnnStatus_t st = graph_operation(s, p, keep);
    if (st == CUDNN_STATUS_SUCCESS) st = graph_candidates(s, keep[5], cand, max, n, &keep[6]);
    if (st == CUDNN_STATUS_SUCCESS && *n > 0) return;
    char line[192];
    snprintf(line, sizeof line, "no usable engine (%s)",
             st == CUDNN_STATUS_SUCCESS ? "none listed runs here" : cudnnGetErrorString(st));
    graph_log(p, line);
    for (int i = 0; i < *n; i++) graph_destroy(&cand[i]);
    *n = 0;
    for (int i = 6; i >= 0; i--)
        if (keep[i]) cudnnBackendDestroyDescriptor(keep[i]);
    memset(keep, 0, 7 * sizeof *keep);
}

/* SD_CONV_ALGO=graph: p->graph_state from the heuristic's first runnable engine (none: -1, the
 * legacy algorithm). */
static void graph_decide(cu_state *s, cu_conv_plan *p) {
    cudnnBackendDescriptor_t keep[7];
    cu_conv_graph cand[1];
    int n = 0;
    graph_prepare(s, p, keep, cand, 1, &n);
    if (!n) {
        p->graph_state = -1;
        return;
    }
    char line[192];
    snprintf(line, sizeof line, "heuristic's first runnable engine: %lld (workspace %.1f MiB)", (long long)cand[0].engine,
             (double)cand[0].ws / (1 << 20));
    graph_log(p, line);
    p->graph = cand[0];
    memcpy(p->graph.keep, keep, sizeof keep);
    p->graph_state = 1;
}

/* Whether SD_CONV_ALGO=tune times p's ways once: fp16 data, symmetric padding (the graph API's and
 * the channels-last paths' condition), outside a capture, on 16-byte-aligned operands, and not
 * under SD_CONV_GEMM=all (which asks for the GEMM path everywhere). */
static int tune_wanted(const cu_state *s, const cu_conv_plan *p, const void *x, const void *w, const void *y) {
    return s->conv_algo == SD_CONV_ALGO_TUNE && s->conv_gemm != SD_CONV_GEMM_ALL && p->type == CUDNN_DATA_HALF &&
           !p->padded && !p->tuned && !s->capturing && graph_operands_aligned(x, w, y);
}

/* Whether the im2col + GEMM path can take p (conv_gemm_wanted's limits, whatever its size rule). */
static int gemm_path_possible(const cu_conv_plan *p) {
    const sd_conv_geom *g = &p->g;
    if (g->c_in * g->kh * g->kw * g->h_out * g->w_out > INT_MAX || g->c_in * g->h_in * g->w_in > INT_MAX) return 0;
    return g->batch * g->c_in * g->kh * g->kw * g->h_out * g->w_out * 2 <= CONV_GEMM_MAX_COL_BYTES;
}

/* SD_CONV_ALGO=tune: times every way p's fp16 forward can run on this call's operands (im2col +
 * GEMM unless SD_CONV_GEMM=off, the legacy heuristic's algorithm, up to GRAPH_TUNE_CANDIDATES
 * graph-API engines) and keeps the fastest, whatever conv_gemm_wanted's size rule chose: sets
 * p->gemm, p->graph_state (1: the kept graph plan) and p->tuned. y is written by the timing runs
 * (the chosen way then writes it again). */
template <typename T>
static sd_status conv_tune(cu_state *s, cu_conv_plan *p, const T *x, const T *w, T *y) {
    const sd_conv_geom *g = &p->g;
    p->tuned = 1;
    const int gemm_ok = s->conv_gemm != SD_CONV_GEMM_OFF && gemm_path_possible(p); /* off: cuDNN's ways only */
    const int legacy_ok = choose_algo<conv_fwd>(s, p, 0) == SD_OK;
    if (!legacy_ok) sd_clear_error();
    cudnnBackendDescriptor_t keep[7];
    cu_conv_graph cand[GRAPH_TUNE_CANDIDATES];
    int n = 0;
    graph_prepare(s, p, keep, cand, GRAPH_TUNE_CANDIDATES, &n);
    /* one workspace for every way, so that none of them grows (moves) it under another */
    size_t ws_bytes = legacy_ok ? p->fwd_ws : 0;
    if (gemm_ok && !conv_is_pointwise(g)) {
        const size_t col = (size_t)(g->batch * g->c_in * g->kh * g->kw * g->h_out * g->w_out) * sizeof(T);
        ws_bytes = ws_bytes > col ? ws_bytes : col;
    }
    for (int i = 0; i < n; i++) ws_bytes = ws_bytes > (size_t)cand[i].ws ? ws_bytes : (size_t)cand[i].ws;
    const int wino_ok = p->winograd != 0 && sizeof(T) == sizeof(__half); /* SD_CONV_WINOGRAD took the geometry */
    if (wino_ok) {
        size_t u_bytes, v_bytes, m_bytes;
        wino_nhwc_bytes(wino_dims_of(g, 0, 2), &u_bytes, &v_bytes, &m_bytes);
        ws_bytes = ws_bytes > u_bytes + v_bytes + m_bytes ? ws_bytes : u_bytes + v_bytes + m_bytes;
    }
    void *ws = cu_workspace(ws_bytes + 256);
    cu_tune_timer timer;
    const cudaError_t ev = ws ? timer.init() : cudaSuccess;
    if (!ws || ev != cudaSuccess) {
        for (int i = 0; i < n; i++) graph_destroy(&cand[i]);
        for (int i = 6; i >= 0; i--)
            if (keep[i]) cudnnBackendDestroyDescriptor(keep[i]);
        return ws ? cu_fail_cuda(ev, __FILE__, __LINE__, "cudaEventCreate (convolution tuning)") : SD_ERR_OOM;
    }
    float gemm_ms = -1.0f, legacy_ms = -1.0f;
    if (gemm_ok) {
        gemm_ms = timer.time(s, [&] {
            return (p->nhwc ? conv_gemm_forward_nhwc(p, x, w, y, g) : conv_gemm_forward(p, x, w, y, g)) == SD_OK;
        });
        if (gemm_ms < 0.0f) sd_clear_error();
    }
    if (legacy_ok) {
        const float one = 1.0f, zero = 0.0f;
        legacy_ms = timer.time(s, [&] {
            return cudnnSetConvolutionMathType(p->conv_desc, p->fwd_math) == CUDNN_STATUS_SUCCESS &&
                   cudnnConvolutionForward(s->dnn, &one, p->x_desc, x, p->w_desc, w, p->conv_desc, p->fwd_algo, ws,
                                           p->fwd_ws, &zero, p->y_desc, y) == CUDNN_STATUS_SUCCESS;
        });
    }
    for (int i = 0; i < n; i++)
        cand[i].ms = timer.time(s, [&] { return graph_execute(s, &cand[i], x, w, y, ws) == CUDNN_STATUS_SUCCESS; });
    float wino_ms = -1.0f;
    if constexpr (sizeof(T) == sizeof(__half)) {
        if (wino_ok) {
            wino_ms = timer.time(s, [&] { return conv_winograd_nhwc(p, x, w, NULL, NULL, NULL, y) == SD_OK; });
            if (wino_ms < 0.0f) sd_clear_error();
        }
    }
    /* the fastest: -4 Winograd, -2 GEMM, -1 legacy, i a graph candidate */
    int best = -3;
    float best_ms = -1.0f;
    if (wino_ms >= 0.0f) best = -4, best_ms = wino_ms;
    if (gemm_ms >= 0.0f && (best_ms < 0.0f || gemm_ms < best_ms)) best = -2, best_ms = gemm_ms;
    if (legacy_ms >= 0.0f && (best_ms < 0.0f || legacy_ms < best_ms)) best = -1, best_ms = legacy_ms;
    for (int i = 0; i < n; i++)
        if (cand[i].ms >= 0.0f && (best_ms < 0.0f || cand[i].ms < best_ms)) best = i, best_ms = cand[i].ms;
    if (cudnn_log_on()) {
        char line[512];
        int len = snprintf(line, sizeof line, "tuned: winograd %.4f ms, gemm %.4f ms, legacy algo %d %.4f ms,", wino_ms,
                           gemm_ms, legacy_ok ? (int)p->fwd_algo : -1, legacy_ms);
        for (int i = 0; i < n && len > 0 && len < (int)sizeof line; i++)
            len += snprintf(line + len, sizeof line - len, " engine %lld %.4f ms (%.1f MiB),", (long long)cand[i].engine,
                            cand[i].ms, (double)cand[i].ws / (1 << 20));
        if (len > 0 && len < (int)sizeof line) {
            if (best >= 0)
                snprintf(line + len, sizeof line - len, " -> engine %lld", (long long)cand[best].engine);
            else
                snprintf(line + len, sizeof line - len, " -> %s",
                         best == -4 ? "winograd" : best == -2 ? "gemm" : best == -1 ? "legacy" : "none ran");
        }
        graph_log(p, line);
    }
    for (int i = 0; i < n; i++)
        if (i != best) graph_destroy(&cand[i]);
    if (best >= 0) {
        p->graph = cand[best];
        memcpy(p->graph.keep, keep, sizeof keep);
    } else {
        for (int i = 6; i >= 0; i--)
            if (keep[i]) cudnnBackendDestroyDescriptor(keep[i]);
    }
    if (best == -3) /* nothing ran: the call goes the way plan_get chose and says why there */
        return SD_OK;
    p->winograd = best == -4 ? p->winograd : 0;
    p->gemm = best == -2;
    p->graph_state = best >= 0 ? 1 : -1;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * The three convolution ops
 * --------------------------------------------------------------------------------------------- */

/* The epilogue (bias, channel bias, residual; all NULL: nothing to do) after
 * either way of convolving, in either layout. */
template <typename T>
static sd_status conv_epilogue(T *y, const float *b, const float *v, const T *r, const sd_conv_geom *g, int nhwc) {
    if (!b && !v && !r) return SD_OK;
    const int64_t P = g->h_out * g->w_out;
    if (nhwc) {
        CUDA_CHECK(cu_channels_last_sum<T>(y, b, v, r, y, g->batch * P, P, g->c_out, cu_cur()->stream));
    } else {
        CUDA_CHECK(cu_nchw_sum<T>(y, b, v, r, y, g->c_out, P, g->batch * g->c_out, cu_cur()->stream));
    }
    LAUNCH_CHECK("conv epilogue");
    return SD_OK;
}

/* A channels-last plan cuDNN will not run (no algorithm, or the chosen one and the fallback both
 * refused, for its NHWC descriptors) becomes a GEMM plan: the channels-last GEMM path takes every
 * geometry. Returns 0 (nothing changed) for an NCHW plan. */
static int nhwc_plan_to_gemm(cu_conv_plan *p) {
    if (!p->nhwc) return 0;
    if (cudnn_log_on())
        fprintf(stderr, "cudnn: (refused)  fp16 nhwc b%lld %lld->%lld %lldx%lld k%dx%d/%d: %s; im2col + cuBLAS GEMM\n",
                (long long)p->g.batch, (long long)p->g.c_in, (long long)p->g.c_out, (long long)p->g.h_in,
                (long long)p->g.w_in, p->g.kh, p->g.kw, p->g.stride, sd_last_error());
    sd_clear_error();
    p->gemm = 1;
    return 1;
}

/* y = conv(x, w), then the epilogue (b, v, r: conv_epilogue) as a separate pass: x, w, y, r of
 * storage type T, the biases F32 (each may be NULL); NCHW, or channels-last (nhwc: x [B, H, W, Ci],
 * w [Co, kh, kw, Ci], y and r [B, Ho, Wo, Co]). */
template <typename T>
static sd_status conv2d_forward(const T *x, const T *w, const float *b, const float *v, const T *r, T *y,
                                const sd_conv_geom *g, int nhwc) {
    cu_state *s = cu_cur();
    cu_conv_plan *p = NULL;
    CU_TRY(plan_get(g, cu_dnn_type<T>::value, nhwc, &p));
    if constexpr (sizeof(T) == sizeof(float)) {
        if (p->winograd) { /* the bias in the output transform */
            CU_TRY(conv_winograd(p, x, w, b, y, 0));
            return conv_epilogue(y, (const float *)NULL, v, r, g, nhwc);
        }
    }
    if (tune_wanted(s, p, x, w, y)) CU_TRY(conv_tune(s, p, x, w, y)); /* may keep or drop Winograd */
    if constexpr (sizeof(T) == sizeof(__half)) {
        if (p->winograd) return conv_winograd_nhwc(p, x, w, b, v, r, y); /* the whole epilogue in the output transform */
    }
    if (p->gemm) {
        CU_TRY(nhwc ? conv_gemm_forward_nhwc(p, x, w, y, g) : conv_gemm_forward(p, x, w, y, g));
        return conv_epilogue(y, b, v, r, g, nhwc);
    }
    if (graph_api_wanted(s, p) && p->graph_state >= 0 && graph_operands_aligned(x, w, y)) {
        if (!p->graph_state && !s->capturing && s->conv_algo == SD_CONV_ALGO_GRAPH) graph_decide(s, p);
        if (p->graph_state > 0) {
            void *ws = cu_workspace((size_t)p->graph.ws + 256);
            if (!ws) return SD_ERR_OOM;
            const cudnnStatus_t st = graph_execute(s, &p->graph, x, w, y, ws);
            if (st == CUDNN_STATUS_SUCCESS) return conv_epilogue(y, b, v, r, g, nhwc);
            /* a plan cuDNN finalised but will not run: the legacy algorithm from now on */
            char line[160];
            snprintf(line, sizeof line, "engine %lld refused to run (%s): the legacy algorithm from now on",
                     (long long)p->graph.engine, cudnnGetErrorString(st));
            graph_log(p, line);
            graph_destroy(&p->graph);
            p->graph_state = -1;
        }
    }
    if (!p->fwd_ready) { /* the legacy algorithm, chosen on first use */
        const sd_status st = choose_algo<conv_fwd>(s, p, 0);
        if (st != SD_OK) return nhwc_plan_to_gemm(p) ? conv2d_forward(x, w, b, v, r, y, g, nhwc) : st;
    }
    const size_t xp_bytes = padded_bytes<T>(p);
    const float one = 1.0f, zero = 0.0f; /* cuDNN's scaling factors are float for float and half data */
    for (int attempt = 0;; attempt++) {
        char *ws = (char *)cu_workspace(xp_bytes + p->fwd_ws + 256);
        if (!ws) return SD_ERR_OOM;
        const T *xin = x;
        if (p->padded) {
            CU_TRY(pad_input(p, x, (T *)ws));
            xin = (const T *)ws;
        }
        CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv_desc, p->fwd_math));
        const cudnnStatus_t st = cudnnConvolutionForward(s->dnn, &one, p->x_desc, xin, p->w_desc, w, p->conv_desc,
                                                         p->fwd_algo, ws + xp_bytes, p->fwd_ws, &zero, p->y_desc, y);
        if (st == CUDNN_STATUS_SUCCESS) break;
        if (attempt > 0 || !conv_retryable(st)) {
            const sd_status failed = cu_fail_cudnn(st, __FILE__, __LINE__, "cudnnConvolutionForward");
            if (conv_retryable(st) && nhwc_plan_to_gemm(p)) return conv2d_forward(x, w, b, v, r, y, g, nhwc);
            return failed;
        }
        const sd_status again = choose_algo<conv_fwd>(s, p, 1);
        if (again != SD_OK) return nhwc_plan_to_gemm(p) ? conv2d_forward(x, w, b, v, r, y, g, nhwc) : again;
    }
    return conv_epilogue(y, b, v, r, g, nhwc);
}

sd_status cu_conv2d(const float *x, const float *w, const float *b, float *y, const sd_conv_geom *g) {
    return conv2d_forward(x, w, b, NULL, (const float *)NULL, y, g, 0);
}

sd_status cu_conv2d_backward_data(const float *dy, const float *w, float *dx, const sd_conv_geom *g) {
    if (!dx) return SD_OK; /* a NULL gradient output is not computed (backend.h), as the CPU twin */
    cu_state *s = cu_cur();
    cu_conv_plan *p = NULL;
    CU_TRY(plan_get(g, CUDNN_DATA_FLOAT, 0, &p));
    if (p->winograd) return conv_winograd(p, dy, w, NULL, dx, 1);
    if (p->gemm) return conv_gemm_backward_data(p, dy, w, dx, g);
    if (!p->bwd_data_ready) CU_TRY(choose_algo<conv_bwd_data>(s, p, 0));
    const size_t xp_bytes = padded_bytes<float>(p);
    const float one = 1.0f, zero = 0.0f;
    for (int attempt = 0;; attempt++) {
        char *ws = (char *)cu_workspace(xp_bytes + p->bwd_data_ws + 256);
        if (!ws) return SD_ERR_OOM;
        CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv_desc, p->bwd_data_math));
        /* direct: beta = 1 accumulates into dx as the table requires; padded: the gradient of the
         * padded input goes to the workspace and its interior is added to dx below */
        const cudnnStatus_t st =
            p->padded ? cudnnConvolutionBackwardData(s->dnn, &one, p->w_desc, w, p->y_desc, dy, p->conv_desc,
                                                     p->bwd_data_algo, ws + xp_bytes, p->bwd_data_ws, &zero, p->x_desc,
                                                     (float *)ws)
                      : cudnnConvolutionBackwardData(s->dnn, &one, p->w_desc, w, p->y_desc, dy, p->conv_desc,
                                                     p->bwd_data_algo, ws, p->bwd_data_ws, &one, p->x_desc, dx);
        if (st == CUDNN_STATUS_SUCCESS) {
            if (p->padded) {
                const int64_t n = g->batch * g->c_in * g->h_in * g->w_in;
                CU_LAUNCH(k_unpad_add, cu_blocks(n, 256), 256, 0, s->stream)((const float *)ws, dx, g->batch * g->c_in,
                                                                       g->h_in, g->w_in, p->hp, p->wp, g->pad_top,
                                                                       g->pad_left);
                LAUNCH_CHECK("conv unpad");
            }
            return SD_OK;
        }
        if (attempt > 0 || !conv_retryable(st))
            return cu_fail_cudnn(st, __FILE__, __LINE__, "cudnnConvolutionBackwardData");
        CU_TRY(choose_algo<conv_bwd_data>(s, p, 1));
    }
}

sd_status cu_conv2d_backward_params(const float *dy, const float *x, float *dw, float *db,
                                    const sd_conv_geom *g) {
    cu_state *s = cu_cur();
    if (dw) {
        cu_conv_plan *p = NULL;
        CU_TRY(plan_get(g, CUDNN_DATA_FLOAT, 0, &p));
        if (!p->bwd_filter_ready) CU_TRY(choose_algo<conv_bwd_filter>(s, p, 0));
        const size_t xp_bytes = padded_bytes<float>(p);
        const float one = 1.0f;
        for (int attempt = 0;; attempt++) {
            char *ws = (char *)cu_workspace(xp_bytes + p->bwd_filter_ws + 256);
            if (!ws) return SD_ERR_OOM;
            const float *xin = x;
            if (p->padded) {
                CU_TRY(pad_input(p, x, (float *)ws));
                xin = (const float *)ws;
            }
            CUDNN_CHECK(cudnnSetConvolutionMathType(p->conv_desc, p->bwd_filter_math));
            /* beta = 1: accumulate into dw */
            const cudnnStatus_t st = cudnnConvolutionBackwardFilter(s->dnn, &one, p->x_desc, xin, p->y_desc, dy,
                                                                    p->conv_desc, p->bwd_filter_algo, ws + xp_bytes,
                                                                    p->bwd_filter_ws, &one, p->w_desc, dw);
            if (st == CUDNN_STATUS_SUCCESS) break;
            if (attempt > 0 || !conv_retryable(st))
                return cu_fail_cudnn(st, __FILE__, __LINE__, "cudnnConvolutionBackwardFilter");
            CU_TRY(choose_algo<conv_bwd_filter>(s, p, 1));
        }
    }
    if (db) CU_TRY(cu_channel_sum_acc(dy, db, g->batch, g->c_out, g->h_out * g->w_out));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * A gradient step's data gradient on a bf16 weight copy (sd_f16_ops.conv2d_backward_data_bf16w):
 * the stride-1 data gradient as the forward convolution of dy with the transposed, flipped
 * kernel (sd_conv_data_gradient_geom), run as the GEMM path runs a forward: dy unfolded into bf16
 * columns (rounded once on the way: no separate pass) and one strided-batched bf16 GEMM with F32
 * C that accumulates into dx (beta 1). Against the F32 op it replaces (cuDNN in TF32, or the
 * col2im GEMM): native tensor-core operands, and no F32 column buffer of kh·kw times dx's size
 * to gather back. The F32 step's convolutions ran at 56.8 TFLOP/s on an H200 (forward and
 * backward data together).
 * --------------------------------------------------------------------------------------------- */

/* wt[ci, co, s] = bf16(w[co, ci, S-1-s]), S = kh·kw: one thread per wt element */
__global__ void k_bf16_conv_transposed_weight(const float *w, __nv_bfloat16 *wt, int64_t Co, int64_t Ci, int64_t S) {
    CU_PDL_ENTRY();
    const int64_t n = Co * Ci * S;
    GRID_STRIDE(e, n) {
        const int64_t s = e % S, co = (e / S) % Co, ci = e / (S * Co);
        wt[e] = __float2bfloat16_rn(w[(co * Ci + ci) * S + (S - 1 - s)]);
    }
}

sd_status cu_bf16_conv_transposed_weight(const float *w, sd_f16 *wt, int64_t Co, int64_t Ci, int kh, int kw) {
    const int64_t n = Co * Ci * kh * kw;
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_bf16_conv_transposed_weight, cu_blocks(n, 256), 256, 0, cu_cur()->stream)(
        w, reinterpret_cast<__nv_bfloat16 *>(wt), Co, Ci, (int64_t)kh * kw);
    LAUNCH_CHECK("conv weight to bf16 (transposed, flipped)");
    return SD_OK;
}

/* The bf16 data gradient's Winograd F(2x2, 3x3) (cu_bf16w_conv2d_backward_data under
 * SD_CONV_WINOGRAD): dx (+)= conv(dy, wt) with t the data gradient's geometry, in the exact path's
 * NCHW layouts: the weight transform from the bf16 kernel copy wt [Ci][Co][3][3] (already
 * transposed and rotated), the input transform from F32 dy, both stored in bf16 (gradients need
 * bf16's range), the products on bf16 tensor cores with fp32 sums into an F32 M, the output
 * transform in fp32 into dx. Transformed operands rounded to bf16 carry about twice the rounding
 * of the direct bf16 path, whose operands are dy and w themselves (numpy, 320-1280 channels:
 * 2.6-4.8e-3 against 1.2-2.3e-3 relative). conv_winograd_tiles with bf16 operands. */
sd_status cu_bf16w_conv2d_backward_data(const float *dy, const sd_f16 *wt, float *dx, const sd_conv_geom *g,
                                        int accumulate) {
    sd_conv_geom t; /* dx = conv(dy, wt) in these terms: t.c_in = Co, t.c_out = Ci */
    if (!sd_conv_data_gradient_geom(g, &t))
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda conv2d_backward_data_bf16w: a %dx%d kernel at stride %d, padding (%d, %d): "
                       "its data gradient is no stride-1 convolution", g->kh, g->kw, g->stride, g->pad_top, g->pad_left);
    if (!dx || g->batch <= 0) return SD_OK;
    cu_state *s = cu_cur();
    if (winograd_fits(winograd_mode_for(s->conv_winograd, 0), &t, 2))
        return conv_winograd_tiles<2, __nv_bfloat16, __nv_bfloat16>(dy, reinterpret_cast<const __nv_bfloat16 *>(wt),
                                                                    (const float *)NULL, dx, &t, 0, accumulate);
    const int64_t P = t.h_out * t.w_out, K = t.c_in * t.kh * t.kw;
    /* the unfold's per-image index arithmetic is 32-bit (k_im2col), as are cuBLAS's sizes */
    if (K * P > INT_MAX || t.c_in * t.h_in * t.w_in > INT_MAX || t.c_out * P > INT_MAX || g->batch > INT_MAX)
        return sd_fail(SD_ERR_UNSUPPORTED, "cuda conv2d_backward_data_bf16w: %lld x %lld columns per image, beyond 32-bit "
                       "indexing", (long long)K, (long long)P);
    __nv_bfloat16 *col = (__nv_bfloat16 *)cu_workspace((size_t)(g->batch * K * P) * sizeof(__nv_bfloat16));
    if (!col) return SD_ERR_OOM;
    if (conv_is_pointwise(&t)) { /* a 1x1 kernel: the columns are dy itself, rounded */
        CU_TRY(cu_to_bf16(dy, reinterpret_cast<sd_f16 *>(col), g->batch * K * P));
    } else {
        CU_LAUNCH((k_im2col<float, __nv_bfloat16>), cu_rows_grid(t.batch, t.c_in * P, 256), 256, 0, s->stream)(dy, col, t);
        LAUNCH_CHECK("conv data gradient im2col (bf16)");
    }
    /* dx[n] (Ci x P) (+)= wt (Ci x K) · col[n] (K x P); column-major dxᵀ[n] = col[n]ᵀ · wtᵀ */
    const float one = 1.0f, beta = accumulate ? 1.0f : 0.0f;
    CUBLAS_CHECK(cublasGemmStridedBatchedEx(s->blas, CUBLAS_OP_N, CUBLAS_OP_N, (int)P, (int)t.c_out, (int)K, &one, col,
                                            CUDA_R_16BF, (int)P, (long long)(K * P), wt, CUDA_R_16BF, (int)K, 0LL, &beta,
                                            dx, CUDA_R_32F, (int)P, (long long)(t.c_out * P), (int)g->batch,
                                            CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
    return SD_OK;
}

sd_status cu_f16_conv2d(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r, sd_f16 *y,
                        const sd_conv_geom *g) {
    return conv2d_forward(cu_half(x), cu_half(w), b, v, r ? cu_half(r) : (const __half *)NULL, cu_half(y), g, 0);
}

sd_status cu_f16_conv2d_nhwc(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r,
                             sd_f16 *y, const sd_conv_geom *g) {
    return conv2d_forward(cu_half(x), cu_half(w), b, v, r ? cu_half(r) : (const __half *)NULL, cu_half(y), g, 1);
}
