/* cudnn_sim.cpp: host stand-in for the legacy cuDNN convolution API the backend uses
 * (include/cudnn.h), for the CUDA simulator (see cudasim.h).
 *
 * What it follows (cuDNN's API reference for the legacy convolution functions):
 *  - Tensors are 4-d (n, c, h, w), filters (k, c, r, s); NCHW and NHWC formats are honoured
 *    through strides. Descriptors must be set before use (CUDNN_STATUS_BAD_PARAM otherwise).
 *  - Output size: 1 + (in + 2·pad − ((filter − 1)·dilation + 1)) / stride per spatial dimension
 *    (cudnnGetConvolution2dForwardOutputDim), output n = input n, output c = filter k.
 *  - Forward: y[n, k, p, q] = alpha · Σ_{c, r, s} x[n, c, p·u − pad_h + r·dil_h,
 *    q·v − pad_w + s·dil_w] · w[k, c, r, s] + beta · y, samples outside the input being zero.
 *    CUDNN_CROSS_CORRELATION uses w as is, CUDNN_CONVOLUTION the filter rotated by 180°
 *    (w[k, c, R−1−r, S−1−s]). Backward data and backward filter are the exact adjoints of that map
 *    with respect to x and w: dx = alpha · Wᵀ dy + beta · dx, dw = alpha · (∂y/∂w)ᵀ dy + beta · dw.
 *  - alpha and beta point to host floats (float data) read when the call is made; beta == 0
 *    means the output is not read (cuDNN's scaling-parameter rule), so NaN there is harmless.
 *  - Status codes: BAD_PARAM for NULL / unset descriptors or pointers, x's channels != the
 *    filter's, y's n or c not matching, a dilated filter larger than the padded input, a data
 *    type differing between x, w and y, a bad enum, a workspace smaller than the algorithm needs
 *    (the size the workspace getter reports) or NULL when it needs one; NOT_SUPPORTED for y's
 *    spatial size differing from the formula (forward; documented so) and for an algorithm that
 *    does not apply to the geometry (e.g. FFT with stride 2). Backward calls report a spatial
 *    mismatch of dy as BAD_PARAM.
 *  - Data types: FLOAT_CONFIG (x, w, y CUDNN_DATA_FLOAT, compute CUDNN_DATA_FLOAT) in every
 *    direction; PSEUDO_HALF_CONFIG (x, w, y CUDNN_DATA_HALF, compute CUDNN_DATA_FLOAT) for the
 *    forward convolution: halves are read exactly, summed like float data, and y is rounded once
 *    to half (nearest even) from the fp32 result; alpha and beta are floats for both. Other
 *    configurations (TRUE_HALF_CONFIG, half data in the backward directions, double, bf16, int8)
 *    are legal on a GPU but NOT_SUPPORTED here.
 *  - Math type of the convolution descriptor at call time: CUDNN_FMA_MATH computes in fp32;
 *    CUDNN_TENSOR_OP_MATH(_ALLOW_CONVERSION) and CUDNN_DEFAULT_MATH (which on Ampere and later
 *    permits TF32 for float data) round both operands to TF32 (cudasim::round_tf32), as tensor
 *    cores read them, when the algorithm has a tensor-core kernel (has_tensor_kernel; the others
 *    compute in fp32 whatever the math type; half data is never rounded: tensor cores read halves
 *    as they are). Products
 *    are exact in double and accumulated in double; the result is rounded to fp32 once. Every algorithm computes this same sum: the simulator checks the API
 *    contract, not the rounding of FFT or Winograd kernels.
 *  - The _v7 heuristics list every algorithm of the direction (at most requestedAlgoCount), those
 *    that apply to the geometry first with status SUCCESS, the others with NOT_SUPPORTED; memory
 *    is exactly what the workspace getter returns for that algorithm. Several algorithms need
 *    workspace, so the caller's workspace handling is exercised. A run overwrites the workspace
 *    it needs with NaNs first (as a real algorithm uses it), so a workspace shared with live
 *    data gives visibly wrong results; a workspace overlapping an operand faults.
 *
 * Every operand's byte range is passed to cudasim::check_device_range when the call is made and
 * again when the queued work runs; an output overlapping an input (cuDNN does not support in-place
 * convolution) faults. Validation is synchronous; the arithmetic is queued on the handle's stream
 * through cudasim::enqueue with every scalar and descriptor field copied, so graph capture records
 * it and descriptors may be destroyed before replay. Refused calls print one line to stderr
 * (CUDASIM_LIB_NOTES=0 silences them). */
#include <cudnn.h>
#include <cuda_fp16.h> /* the half <-> float conversions of CUDNN_DATA_HALF tensors */
#include <cuda_runtime.h> /* cudaStreamSynchronize: the Find functions wait, as cuDNN's do */

#include <algorithm>
#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <vector>

struct cudnnContext {
    cudaStream_t stream = nullptr;
};

struct cudnnTensorStruct {
    bool set = false;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
    int n = 0, c = 0, h = 0, w = 0;
};

struct cudnnFilterStruct {
    bool set = false;
    cudnnDataType_t type = CUDNN_DATA_FLOAT;
    cudnnTensorFormat_t format = CUDNN_TENSOR_NCHW;
    int k = 0, c = 0, r = 0, s = 0;
};

struct cudnnConvolutionStruct {
    bool set = false;
    int pad_h = 0, pad_w = 0, u = 1, v = 1, dil_h = 1, dil_w = 1;
    cudnnConvolutionMode_t mode = CUDNN_CONVOLUTION;
    cudnnDataType_t compute = CUDNN_DATA_FLOAT;
    cudnnMathType_t math = CUDNN_DEFAULT_MATH; /* cuDNN's default for a new descriptor */
};

namespace {

/* ------------------------------------------------------------------------------------------------
 * Diagnostics
 * --------------------------------------------------------------------------------------------- */

const char *status_name(cudnnStatus_t s) {
    switch (s) {
    case CUDNN_STATUS_SUCCESS: return "CUDNN_STATUS_SUCCESS";
    case CUDNN_STATUS_NOT_INITIALIZED: return "CUDNN_STATUS_NOT_INITIALIZED";
    case CUDNN_STATUS_BAD_PARAM: return "CUDNN_STATUS_BAD_PARAM";
    case CUDNN_STATUS_INVALID_VALUE: return "CUDNN_STATUS_INVALID_VALUE";
    case CUDNN_STATUS_BAD_PARAM_NULL_POINTER: return "CUDNN_STATUS_BAD_PARAM_NULL_POINTER";
    case CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT: return "CUDNN_STATUS_BAD_PARAM_SIZE_INSUFFICIENT";
    case CUDNN_STATUS_NOT_SUPPORTED: return "CUDNN_STATUS_NOT_SUPPORTED";
    case CUDNN_STATUS_INTERNAL_ERROR: return "CUDNN_STATUS_INTERNAL_ERROR";
    case CUDNN_STATUS_ALLOC_FAILED: return "CUDNN_STATUS_INTERNAL_ERROR_HOST_ALLOCATION_FAILED";
    case CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED: return "CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED";
    case CUDNN_STATUS_EXECUTION_FAILED: return "CUDNN_STATUS_EXECUTION_FAILED";
    }
    return "CUDNN_STATUS_UNKNOWN";
}

/* One stderr line per refused call: the backend retries some refusals with another algorithm,
 * and the reason would otherwise be lost. */
cudnnStatus_t refuse(cudnnStatus_t st, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
cudnnStatus_t refuse(cudnnStatus_t st, const char *fmt, ...) {
    static const bool on = [] { /* CUDASIM_LIB_NOTES=0 silences the lines */
        const char *e = getenv("CUDASIM_LIB_NOTES");
        return !(e && !strcmp(e, "0"));
    }();
    if (!on) return st;
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    fprintf(stderr, "cudasim: %s -> %s\n", buf, status_name(st));
    return st;
}

typedef float (*round_fn)(float);

/* ------------------------------------------------------------------------------------------------
 * Element types (CUDNN_DATA_FLOAT, CUDNN_DATA_HALF; resolve() refuses the others)
 * --------------------------------------------------------------------------------------------- */

size_t elem_bytes(cudnnDataType_t t) { return t == CUDNN_DATA_HALF ? sizeof(__half) : sizeof(float); }

/* Element i of an array of type t, widened exactly to float. */
float load(const void *p, int64_t i, cudnnDataType_t t) {
    return t == CUDNN_DATA_HALF ? __half2float(((const __half *)p)[i]) : ((const float *)p)[i];
}

/* ------------------------------------------------------------------------------------------------
 * A convolution resolved from its descriptors (copied into queued work by value)
 * --------------------------------------------------------------------------------------------- */

struct Geom {
    int64_t N, C, H, W;       /* x */
    int64_t K, R, S;          /* w */
    int64_t P, Q;             /* y's spatial size */
    int64_t pad_h, pad_w, u, v, dil_h, dil_w;
    bool flip;                /* CUDNN_CONVOLUTION: filter rotated by 180° */
    cudnnDataType_t type;     /* of x, w and y */
    int64_t xs[4], ys[4], fs[4]; /* element strides of x (n, c, h, w), y (n, k, p, q), w (k, c, r, s) */
    round_fn rnd;             /* operand rounding of the math type, or NULL */
};

void tensor_strides(const cudnnTensorStruct *t, int64_t s[4]) {
    const int64_t C = t->c, H = t->h, W = t->w;
    if (t->format == CUDNN_TENSOR_NHWC) {
        s[0] = H * W * C, s[1] = 1, s[2] = W * C, s[3] = C;
    } else {
        s[0] = C * H * W, s[1] = H * W, s[2] = W, s[3] = 1;
    }
}

void filter_strides(const cudnnFilterStruct *f, int64_t s[4]) {
    const int64_t C = f->c, R = f->r, S = f->s;
    if (f->format == CUDNN_TENSOR_NHWC) { /* KRSC */
        s[0] = R * S * C, s[1] = 1, s[2] = S * C, s[3] = C;
    } else { /* KCRS */
        s[0] = C * R * S, s[1] = R * S, s[2] = S, s[3] = 1;
    }
}

int64_t out_size(int64_t in, int64_t pad, int64_t filter, int64_t dil, int64_t stride) {
    return 1 + (in + 2 * pad - ((filter - 1) * dil + 1)) / stride;
}

bool tf32_math(cudnnMathType_t m) { return m != CUDNN_FMA_MATH; }

enum class Dir { fwd, bwd_data, bwd_filter };

/* Checks the descriptors of one convolution against each other. `y` is y (forward) or dy
 * (backward); it is checked against the output-size formula. */
cudnnStatus_t resolve(const char *api, Dir dir, const cudnnTensorStruct *x, const cudnnFilterStruct *w,
                      const cudnnConvolutionStruct *conv, const cudnnTensorStruct *y, Geom *g) {
    if (!x || !w || !conv || !y) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: a NULL descriptor", api);
    if (!x->set || !w->set || !conv->set || !y->set)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: a descriptor was created but never set", api);
    if (x->type != w->type || x->type != y->type)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: data types differ (x %d, w %d, y %d)", api, (int)x->type,
                      (int)w->type, (int)y->type);
    if (x->type != CUDNN_DATA_FLOAT && x->type != CUDNN_DATA_HALF)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: data type %d (cudasim implements CUDNN_DATA_FLOAT and "
                      "CUDNN_DATA_HALF)", api, (int)x->type);
    if (x->type == CUDNN_DATA_HALF && dir != Dir::fwd)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: half data (cudasim implements it for the forward convolution "
                      "only)", api);
    if (conv->compute != CUDNN_DATA_FLOAT)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: compute type %d with %s data (cudasim implements %s, which "
                      "needs CUDNN_DATA_FLOAT)", api, (int)conv->compute,
                      x->type == CUDNN_DATA_HALF ? "half" : "float",
                      x->type == CUDNN_DATA_HALF ? "PSEUDO_HALF_CONFIG" : "FLOAT_CONFIG");
    if (x->n < 1 || x->c < 1 || x->h < 1 || x->w < 1 || w->k < 1 || w->c < 1 || w->r < 1 || w->s < 1 || y->n < 1 ||
        y->c < 1 || y->h < 1 || y->w < 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: a zero dimension (x %dx%dx%dx%d, w %dx%dx%dx%d, y %dx%dx%dx%d)", api,
                      x->n, x->c, x->h, x->w, w->k, w->c, w->r, w->s, y->n, y->c, y->h, y->w);
    if (x->c != w->c)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: x has %d channels, the filter %d (k = %d, c = %d, r = %d, s = %d)",
                      api, x->c, w->c, w->k, w->c, w->r, w->s);
    const int64_t eff_r = (int64_t)(w->r - 1) * conv->dil_h + 1, eff_s = (int64_t)(w->s - 1) * conv->dil_w + 1;
    if (eff_r > x->h + 2 * (int64_t)conv->pad_h || eff_s > x->w + 2 * (int64_t)conv->pad_w)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: the (dilated) filter %lldx%lld is larger than the padded input "
                      "%lldx%lld", api, (long long)eff_r, (long long)eff_s, (long long)(x->h + 2 * conv->pad_h),
                      (long long)(x->w + 2 * conv->pad_w));
    const int64_t P = out_size(x->h, conv->pad_h, w->r, conv->dil_h, conv->u);
    const int64_t Q = out_size(x->w, conv->pad_w, w->s, conv->dil_w, conv->v);
    const char *yname = dir == Dir::fwd ? "y" : "dy";
    if (y->n != x->n || y->c != w->k)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: %s is %dx%dx%dx%d, expected n = %d (x) and c = %d (filter k)", api,
                      yname, y->n, y->c, y->h, y->w, x->n, w->k);
    if (y->h != P || y->w != Q)
        return refuse(dir == Dir::fwd ? CUDNN_STATUS_NOT_SUPPORTED : CUDNN_STATUS_BAD_PARAM,
                      "%s: %s is %dx%d spatially, the convolution gives %lldx%lld (x %dx%d, filter %dx%d, pad %d,%d, "
                      "stride %d,%d, dilation %d,%d)", api, yname, y->h, y->w, (long long)P, (long long)Q, x->h, x->w,
                      w->r, w->s, conv->pad_h, conv->pad_w, conv->u, conv->v, conv->dil_h, conv->dil_w);
    g->N = x->n, g->C = x->c, g->H = x->h, g->W = x->w;
    g->K = w->k, g->R = w->r, g->S = w->s;
    g->P = P, g->Q = Q;
    g->pad_h = conv->pad_h, g->pad_w = conv->pad_w, g->u = conv->u, g->v = conv->v;
    g->dil_h = conv->dil_h, g->dil_w = conv->dil_w;
    g->flip = conv->mode == CUDNN_CONVOLUTION;
    g->type = x->type;
    tensor_strides(x, g->xs);
    tensor_strides(y, g->ys);
    filter_strides(w, g->fs);
    g->rnd = x->type == CUDNN_DATA_FLOAT && tf32_math(conv->math) ? cudasim::round_tf32 : nullptr;
    return CUDNN_STATUS_SUCCESS;
}

int64_t x_elems(const Geom &g) { return g.N * g.C * g.H * g.W; }
int64_t y_elems(const Geom &g) { return g.N * g.K * g.P * g.Q; }
int64_t w_elems(const Geom &g) { return g.K * g.C * g.R * g.S; }
size_t bytes_of(const Geom &g, int64_t elems) { return (size_t)elems * elem_bytes(g.type); }

/* ------------------------------------------------------------------------------------------------
 * Algorithms: which apply to a geometry, and the workspace each needs
 * --------------------------------------------------------------------------------------------- */

bool unit_stride(const Geom &g) { return g.u == 1 && g.v == 1 && g.dil_h == 1 && g.dil_w == 1; }
bool winograd_ok(const Geom &g) { return unit_stride(g) && g.R == 3 && g.S == 3; }
size_t tiles(const Geom &g) { return (size_t)((g.P + 3) / 4) * (size_t)((g.Q + 3) / 4); }
size_t fft_plane(const Geom &g) { return (size_t)(g.H + 2 * g.pad_h) * (size_t)(g.W + 2 * g.pad_w + 2); }

/* Workspace bytes, or SIZE_MAX when the algorithm does not apply. Sizes are of the order real
 * kernels use (index tables, an im2col buffer, transformed tiles, frequency planes) and are not
 * multiples of 256, so a caller that carves a workspace must round up itself. */
size_t fwd_workspace(const Geom &g, int algo) {
    const size_t f = sizeof(float);
    switch (algo) {
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM: return 0;
    case CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM: return sizeof(int) * (size_t)(g.C * g.R * g.S) + 12;
    case CUDNN_CONVOLUTION_FWD_ALGO_GEMM: return f * (size_t)(g.C * g.R * g.S) * (size_t)(g.P * g.Q);
    case CUDNN_CONVOLUTION_FWD_ALGO_DIRECT: return SIZE_MAX; /* no fp32 NCHW kernel */
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT:
        return unit_stride(g) ? 2 * f * (size_t)(g.N * g.C + g.K * g.C + g.N * g.K) * fft_plane(g) : SIZE_MAX;
    case CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING:
        return unit_stride(g) ? 2 * f * (size_t)(g.N * g.C + g.K * g.C + g.N * g.K) * 34 * 32 : SIZE_MAX;
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD: return winograd_ok(g) ? 0 : SIZE_MAX;
    case CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED:
        return winograd_ok(g) ? 36 * f * ((size_t)(g.C * g.K) + (size_t)(g.N * (g.C + g.K)) * tiles(g)) : SIZE_MAX;
    }
    return SIZE_MAX;
}

size_t bwd_data_workspace(const Geom &g, int algo) {
    const size_t f = sizeof(float);
    switch (algo) {
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_0: return 0;
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_1: return sizeof(int) * (size_t)(g.K * g.R * g.S) + 20;
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT:
        return unit_stride(g) ? 2 * f * (size_t)(g.N * g.C + g.K * g.C + g.N * g.K) * fft_plane(g) : SIZE_MAX;
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING:
        return unit_stride(g) ? 2 * f * (size_t)(g.N * g.C + g.K * g.C + g.N * g.K) * 34 * 32 : SIZE_MAX;
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD: return winograd_ok(g) ? 0 : SIZE_MAX;
    case CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED:
        return winograd_ok(g) ? 36 * f * ((size_t)(g.C * g.K) + (size_t)(g.N * (g.C + g.K)) * tiles(g)) : SIZE_MAX;
    }
    return SIZE_MAX;
}

size_t bwd_filter_workspace(const Geom &g, int algo) {
    const size_t f = sizeof(float);
    switch (algo) {
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0: return 0;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1: return f * (size_t)w_elems(g) + 36;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT:
        return unit_stride(g) ? 2 * f * (size_t)(g.N * g.C + g.K * g.C + g.N * g.K) * fft_plane(g) : SIZE_MAX;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3: return 2 * f * (size_t)w_elems(g) + 4;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD: return SIZE_MAX; /* never implemented by cuDNN */
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED:
        return winograd_ok(g) ? 36 * f * ((size_t)(g.C * g.K) + (size_t)(g.N * (g.C + g.K)) * tiles(g)) : SIZE_MAX;
    case CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING:
        return unit_stride(g) ? 2 * f * (size_t)(g.N * g.C + g.K * g.C + g.N * g.K) * 34 * 32 : SIZE_MAX;
    }
    return SIZE_MAX;
}

/* Heuristic orders (best first). A Winograd / FFT algorithm leads where it applies, as on real
 * GPUs for 3×3 stride-1 layers, so a caller's filtering of such algorithms is exercised. */
const int kFwdOrder[] = {CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED, CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM,
                         CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM,      CUDNN_CONVOLUTION_FWD_ALGO_GEMM,
                         CUDNN_CONVOLUTION_FWD_ALGO_FFT_TILING,         CUDNN_CONVOLUTION_FWD_ALGO_FFT,
                         CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD,           CUDNN_CONVOLUTION_FWD_ALGO_DIRECT};
/* backward data ranks ALGO_0 (no tensor-core kernel) first, as cuDNN 9.19 did on an H200 for
 * every tested shape even with tensor ops allowed: callers that want tensor cores must look past it */
const int kBwdDataOrder[] = {CUDNN_CONVOLUTION_BWD_DATA_ALGO_0,                 CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED,
                             CUDNN_CONVOLUTION_BWD_DATA_ALGO_1,                 CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT_TILING,
                             CUDNN_CONVOLUTION_BWD_DATA_ALGO_FFT,               CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD};
const int kBwdFilterOrder[] = {CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1,
                               CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0,   CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3,
                               CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT, CUDNN_CONVOLUTION_BWD_FILTER_ALGO_FFT_TILING,
                               CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD};

/* Algorithms with tensor-core kernels; the rest are listed with CUDNN_DEFAULT_MATH when the
 * descriptor asks for tensor ops. */
bool has_tensor_kernel(Dir dir, int algo) {
    switch (dir) {
    case Dir::fwd:
        return algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_GEMM || algo == CUDNN_CONVOLUTION_FWD_ALGO_IMPLICIT_PRECOMP_GEMM ||
               algo == CUDNN_CONVOLUTION_FWD_ALGO_WINOGRAD_NONFUSED;
    case Dir::bwd_data:
        return algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_1 || algo == CUDNN_CONVOLUTION_BWD_DATA_ALGO_WINOGRAD_NONFUSED;
    case Dir::bwd_filter:
        return algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_1 || algo == CUDNN_CONVOLUTION_BWD_FILTER_ALGO_WINOGRAD_NONFUSED;
    }
    return false;
}

bool deterministic(Dir dir, int algo) {
    if (dir == Dir::bwd_data) return algo != CUDNN_CONVOLUTION_BWD_DATA_ALGO_0;
    if (dir == Dir::bwd_filter)
        return algo != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_0 && algo != CUDNN_CONVOLUTION_BWD_FILTER_ALGO_3;
    return true;
}

size_t workspace_for(Dir dir, const Geom &g, int algo) {
    return dir == Dir::fwd ? fwd_workspace(g, algo) : dir == Dir::bwd_data ? bwd_data_workspace(g, algo)
                                                                            : bwd_filter_workspace(g, algo);
}

int algo_count(Dir dir) {
    if (dir == Dir::fwd) return CUDNN_CONVOLUTION_FWD_ALGO_COUNT;
    if (dir == Dir::bwd_data) return CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT;
    return CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT;
}

/* One heuristic answer, shared by the three _v7 getters (their perf structs have the same
 * fields in the same order). */
struct Perf {
    int algo;
    cudnnStatus_t status;
    float time;
    size_t memory;
    cudnnDeterminism_t determinism;
    cudnnMathType_t math;
};

int heuristic(Dir dir, const Geom &g, cudnnMathType_t desc_math, Perf *out) {
    const int *order = dir == Dir::fwd ? kFwdOrder : dir == Dir::bwd_data ? kBwdDataOrder : kBwdFilterOrder;
    const int count = algo_count(dir);
    const bool tensor = desc_math == CUDNN_TENSOR_OP_MATH || desc_math == CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION;
    int n = 0;
    for (int pass = 0; pass < 2; pass++) /* applicable algorithms first */
        for (int i = 0; i < count; i++) {
            const int a = order[i];
            const size_t ws = workspace_for(dir, g, a);
            if ((ws != SIZE_MAX) != (pass == 0)) continue;
            Perf &p = out[n];
            p.algo = a;
            p.status = ws != SIZE_MAX ? CUDNN_STATUS_SUCCESS : CUDNN_STATUS_NOT_SUPPORTED;
            p.time = ws != SIZE_MAX ? 0.05f * (float)(n + 1) : -1.0f;
            p.memory = ws != SIZE_MAX ? ws : 0;
            p.determinism = deterministic(dir, a) ? CUDNN_DETERMINISTIC : CUDNN_NON_DETERMINISTIC;
            p.math = tensor ? (has_tensor_kernel(dir, a) ? desc_math : CUDNN_DEFAULT_MATH) : desc_math;
            n++;
        }
    return n;
}

/* What cudnnFind* "measures" here: the applicable algorithms in the reverse of the heuristic's
 * ranking, timed 0.05, 0.10, ... ms, then the refused ones. So code that trusts the measurement
 * runs a different algorithm than code that trusts the heuristic (both are tested). */
int measured(Dir dir, const Geom &g, cudnnMathType_t desc_math, Perf *out) {
    const int n = heuristic(dir, g, desc_math, out);
    int ok = 0;
    while (ok < n && out[ok].status == CUDNN_STATUS_SUCCESS) ok++;
    std::reverse(out, out + ok);
    for (int i = 0; i < ok; i++) out[i].time = 0.05f * (float)(i + 1);
    return n;
}

template <class PerfT>
void copy_perf(const Perf *src, int n, PerfT *dst) {
    for (int i = 0; i < n; i++) {
        memset(&dst[i], 0, sizeof dst[i]);
        dst[i].algo = (decltype(dst[i].algo))src[i].algo;
        dst[i].status = src[i].status;
        dst[i].time = src[i].time;
        dst[i].memory = src[i].memory;
        dst[i].determinism = src[i].determinism;
        dst[i].mathType = src[i].math;
    }
}

/* ------------------------------------------------------------------------------------------------
 * Arithmetic
 * --------------------------------------------------------------------------------------------- */

/* Copies a strided 4-d array of `type` into a dense row-major fp32 [d0][d1][d2][d3] one,
 * rounded. `flip23` reverses the last two indices (the 180° filter rotation of
 * CUDNN_CONVOLUTION). */
void pack4(const void *src, cudnnDataType_t type, const int64_t s[4], int64_t d0, int64_t d1, int64_t d2, int64_t d3,
           round_fn rnd, bool flip23, float *dst) {
#pragma omp parallel for collapse(2) schedule(static) if (d0 * d1 * d2 * d3 >= (1 << 16))
    for (int64_t a = 0; a < d0; a++)
        for (int64_t b = 0; b < d1; b++)
            for (int64_t c = 0; c < d2; c++)
                for (int64_t e = 0; e < d3; e++) {
                    const int64_t cc = flip23 ? d2 - 1 - c : c, ee = flip23 ? d3 - 1 - e : e;
                    const float v = load(src, a * s[0] + b * s[1] + cc * s[2] + ee * s[3], type);
                    dst[((a * d1 + b) * d2 + c) * d3 + e] = rnd ? rnd(v) : v;
                }
}

/* Output positions q in [*lo, *hi] whose input column q·stride − pad + tap lies in [0, in). */
void valid_range(int64_t in, int64_t out, int64_t stride, int64_t pad, int64_t tap, int64_t *lo, int64_t *hi) {
    const int64_t off = tap - pad; /* input index = q·stride + off */
    int64_t l = off >= 0 ? 0 : (-off + stride - 1) / stride;
    const int64_t top = in - 1 - off; /* need q·stride <= top */
    int64_t h = top < 0 ? -1 : top / stride;
    if (h > out - 1) h = out - 1;
    *lo = l;
    *hi = h;
}

/* out[i] = alpha · acc + beta · out[i] (not read when beta == 0), rounded to fp32 once, and that
 * to half (nearest even) for half data */
inline void store(void *out, int64_t i, cudnnDataType_t type, double alpha, double beta, double acc) {
    double v = alpha * acc;
    if (beta != 0.0) v += beta * (double)load(out, i, type);
    if (type == CUDNN_DATA_HALF)
        ((__half *)out)[i] = __float2half_rn((float)v);
    else
        ((float *)out)[i] = (float)v;
}

void run_forward(const Geom &g, const void *x, const void *w, void *y, double alpha, double beta) {
    std::vector<float> xp, wp;
    const bool product = alpha != 0.0;
    if (product) {
        xp.resize((size_t)x_elems(g));
        wp.resize((size_t)w_elems(g));
        pack4(x, g.type, g.xs, g.N, g.C, g.H, g.W, g.rnd, false, xp.data());
        pack4(w, g.type, g.fs, g.K, g.C, g.R, g.S, g.rnd, g.flip, wp.data());
    }
#pragma omp parallel for collapse(2) schedule(dynamic) if (y_elems(g) * g.C * g.R * g.S >= (1 << 16))
    for (int64_t n = 0; n < g.N; n++)
        for (int64_t k = 0; k < g.K; k++) {
            std::vector<double> acc((size_t)(g.P * g.Q), 0.0);
            if (product)
                for (int64_t c = 0; c < g.C; c++)
                    for (int64_t r = 0; r < g.R; r++)
                        for (int64_t s = 0; s < g.S; s++) {
                            const double wv = wp[(size_t)(((k * g.C + c) * g.R + r) * g.S + s)];
                            int64_t q0, q1;
                            valid_range(g.W, g.Q, g.v, g.pad_w, s * g.dil_w, &q0, &q1);
                            for (int64_t p = 0; p < g.P; p++) {
                                const int64_t iy = p * g.u - g.pad_h + r * g.dil_h;
                                if (iy < 0 || iy >= g.H) continue;
                                const float *xrow = xp.data() + ((n * g.C + c) * g.H + iy) * g.W;
                                double *arow = acc.data() + p * g.Q;
                                const int64_t off = s * g.dil_w - g.pad_w;
                                for (int64_t q = q0; q <= q1; q++) arow[q] += (double)xrow[q * g.v + off] * wv;
                            }
                        }
            for (int64_t p = 0; p < g.P; p++)
                for (int64_t q = 0; q < g.Q; q++)
                    store(y, n * g.ys[0] + k * g.ys[1] + p * g.ys[2] + q * g.ys[3], g.type, alpha, beta,
                          acc[(size_t)(p * g.Q + q)]);
        }
}

void run_backward_data(const Geom &g, const float *w, const float *dy, float *dx, double alpha, double beta) {
    std::vector<float> dyp, wp;
    const bool product = alpha != 0.0;
    if (product) {
        dyp.resize((size_t)y_elems(g));
        wp.resize((size_t)w_elems(g));
        pack4(dy, g.type, g.ys, g.N, g.K, g.P, g.Q, g.rnd, false, dyp.data());
        pack4(w, g.type, g.fs, g.K, g.C, g.R, g.S, g.rnd, g.flip, wp.data());
    }
#pragma omp parallel for collapse(2) schedule(dynamic) if (y_elems(g) * g.C * g.R * g.S >= (1 << 16))
    for (int64_t n = 0; n < g.N; n++)
        for (int64_t c = 0; c < g.C; c++) {
            std::vector<double> acc((size_t)(g.H * g.W), 0.0);
            if (product)
                for (int64_t k = 0; k < g.K; k++)
                    for (int64_t r = 0; r < g.R; r++)
                        for (int64_t s = 0; s < g.S; s++) {
                            const double wv = wp[(size_t)(((k * g.C + c) * g.R + r) * g.S + s)];
                            int64_t q0, q1;
                            valid_range(g.W, g.Q, g.v, g.pad_w, s * g.dil_w, &q0, &q1);
                            const int64_t off = s * g.dil_w - g.pad_w;
                            for (int64_t p = 0; p < g.P; p++) {
                                const int64_t iy = p * g.u - g.pad_h + r * g.dil_h;
                                if (iy < 0 || iy >= g.H) continue;
                                const float *dyrow = dyp.data() + ((n * g.K + k) * g.P + p) * g.Q;
                                double *arow = acc.data() + iy * g.W;
                                for (int64_t q = q0; q <= q1; q++) arow[q * g.v + off] += (double)dyrow[q] * wv;
                            }
                        }
            for (int64_t h = 0; h < g.H; h++)
                for (int64_t x = 0; x < g.W; x++)
                    store(dx, n * g.xs[0] + c * g.xs[1] + h * g.xs[2] + x * g.xs[3], g.type, alpha, beta,
                          acc[(size_t)(h * g.W + x)]);
        }
}

void run_backward_filter(const Geom &g, const float *x, const float *dy, float *dw, double alpha, double beta) {
    std::vector<float> xp, dyp;
    const bool product = alpha != 0.0;
    if (product) {
        xp.resize((size_t)x_elems(g));
        dyp.resize((size_t)y_elems(g));
        pack4(x, g.type, g.xs, g.N, g.C, g.H, g.W, g.rnd, false, xp.data());
        pack4(dy, g.type, g.ys, g.N, g.K, g.P, g.Q, g.rnd, false, dyp.data());
    }
#pragma omp parallel for collapse(2) schedule(dynamic) if (y_elems(g) * g.C * g.R * g.S >= (1 << 16))
    for (int64_t k = 0; k < g.K; k++)
        for (int64_t c = 0; c < g.C; c++)
            for (int64_t r = 0; r < g.R; r++)
                for (int64_t s = 0; s < g.S; s++) {
                    double acc = 0.0;
                    if (product) {
                        int64_t q0, q1;
                        valid_range(g.W, g.Q, g.v, g.pad_w, s * g.dil_w, &q0, &q1);
                        const int64_t off = s * g.dil_w - g.pad_w;
                        for (int64_t n = 0; n < g.N; n++)
                            for (int64_t p = 0; p < g.P; p++) {
                                const int64_t iy = p * g.u - g.pad_h + r * g.dil_h;
                                if (iy < 0 || iy >= g.H) continue;
                                const float *xrow = xp.data() + ((n * g.C + c) * g.H + iy) * g.W;
                                const float *dyrow = dyp.data() + ((n * g.K + k) * g.P + p) * g.Q;
                                for (int64_t q = q0; q <= q1; q++) acc += (double)xrow[q * g.v + off] * dyrow[q];
                            }
                    }
                    /* the gradient of tap (r, s) of the correlation is that of filter element
                     * (R−1−r, S−1−s) under CUDNN_CONVOLUTION */
                    const int64_t rr = g.flip ? g.R - 1 - r : r, ss = g.flip ? g.S - 1 - s : s;
                    store(dw, k * g.fs[0] + c * g.fs[1] + rr * g.fs[2] + ss * g.fs[3], g.type, alpha, beta, acc);
                }
}

/* ------------------------------------------------------------------------------------------------
 * Common checks of the three compute calls
 * --------------------------------------------------------------------------------------------- */

uintptr_t addr(const void *p) { return (uintptr_t)p; }

bool overlap(const void *a, size_t an, const void *b, size_t bn) {
    return an && bn && addr(a) < addr(b) + bn && addr(b) < addr(a) + an;
}

struct Operand {
    const void *p;
    size_t bytes;
    const char *name;
};

/* Range checks (now and when the work runs), no overlap between the output and the inputs or
 * between the workspace and any operand. ops[0] is the output. */
void check_operands(const char *api, const Operand *ops, int n, const void *ws, size_t ws_bytes) {
    char what[128];
    for (int i = 0; i < n; i++) {
        if (!ops[i].p) continue;
        snprintf(what, sizeof what, "%s %s", api, ops[i].name);
        cudasim::check_device_range(ops[i].p, ops[i].bytes, what);
    }
    for (int i = 1; i < n; i++)
        if (ops[i].p && overlap(ops[0].p, ops[0].bytes, ops[i].p, ops[i].bytes))
            cudasim::fault("%s: the output %s overlaps the input %s (cuDNN convolutions are not in-place)", api,
                           ops[0].name, ops[i].name);
    if (ws && ws_bytes) {
        snprintf(what, sizeof what, "%s workspace", api);
        cudasim::check_device_range(ws, ws_bytes, what);
        for (int i = 0; i < n; i++)
            if (ops[i].p && overlap(ws, ws_bytes, ops[i].p, ops[i].bytes))
                cudasim::fault("%s: the workspace overlaps the operand %s", api, ops[i].name);
    }
}

/* What a real algorithm does to its workspace before the result exists: uses it. */
void scribble(void *ws, size_t bytes) {
    const size_t n = std::min<size_t>(bytes, (size_t)4 << 20) / sizeof(float);
    float *f = (float *)ws;
    for (size_t i = 0; i < n; i++) f[i] = std::numeric_limits<float>::quiet_NaN();
}

cudnnStatus_t check_workspace(const char *api, const char *algo_kind, int algo, size_t need, const void *ws,
                              size_t ws_bytes) {
    if (need == SIZE_MAX)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: %s algorithm %d does not apply to this geometry", api,
                      algo_kind, algo);
    if (ws_bytes < need)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: workspace of %zu bytes, %s algorithm %d needs %zu (the size "
                      "the workspace getter reports)", api, ws_bytes, algo_kind, algo, need);
    if (need && !ws)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL workspace, %s algorithm %d needs %zu bytes", api, algo_kind,
                      algo, need);
    return CUDNN_STATUS_SUCCESS;
}

} // namespace

/* ------------------------------------------------------------------------------------------------
 * API
 * --------------------------------------------------------------------------------------------- */

extern "C" {

size_t cudnnGetVersion(void) { return CUDNN_VERSION; }

const char *cudnnGetErrorString(cudnnStatus_t status) { return status_name(status); }

cudnnStatus_t cudnnCreate(cudnnHandle_t *handle) {
    if (!handle) return CUDNN_STATUS_BAD_PARAM;
    *handle = new cudnnContext();
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroy(cudnnHandle_t handle) {
    if (!handle) return CUDNN_STATUS_BAD_PARAM;
    delete handle;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetStream(cudnnHandle_t handle, cudaStream_t streamId) {
    if (!handle) return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnSetStream: NULL handle");
    handle->stream = streamId;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetStream(cudnnHandle_t handle, cudaStream_t *streamId) {
    if (!handle || !streamId) return CUDNN_STATUS_BAD_PARAM;
    *streamId = handle->stream;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateTensorDescriptor(cudnnTensorDescriptor_t *tensorDesc) {
    if (!tensorDesc) return CUDNN_STATUS_BAD_PARAM;
    *tensorDesc = new cudnnTensorStruct();
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyTensorDescriptor(cudnnTensorDescriptor_t tensorDesc) {
    delete tensorDesc;
    return CUDNN_STATUS_SUCCESS;
}

static bool valid_type(cudnnDataType_t t) {
    switch (t) {
    case CUDNN_DATA_FLOAT:
    case CUDNN_DATA_DOUBLE:
    case CUDNN_DATA_HALF:
    case CUDNN_DATA_INT8:
    case CUDNN_DATA_INT32:
    case CUDNN_DATA_UINT8:
    case CUDNN_DATA_BFLOAT16:
    case CUDNN_DATA_INT64: return true;
    }
    return false;
}

cudnnStatus_t cudnnSetTensor4dDescriptor(cudnnTensorDescriptor_t d, cudnnTensorFormat_t format,
                                         cudnnDataType_t dataType, int n, int c, int h, int w) {
    const char *api = "cudnnSetTensor4dDescriptor";
    if (!d) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL descriptor", api);
    if (n < 0 || c < 0 || h < 0 || w < 0)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: negative dimension %dx%dx%dx%d", api, n, c, h, w);
    if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC && format != CUDNN_TENSOR_NCHW_VECT_C)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: format %d", api, (int)format);
    if (!valid_type(dataType)) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: data type %d", api, (int)dataType);
    if (format == CUDNN_TENSOR_NCHW_VECT_C)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: CUDNN_TENSOR_NCHW_VECT_C is for vectorized int8 data", api);
    if ((int64_t)n * c * h * w > ((int64_t)1 << 31))
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: more than 2 Gi elements", api);
    d->set = true;
    d->format = format;
    d->type = dataType;
    d->n = n, d->c = c, d->h = h, d->w = w;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateFilterDescriptor(cudnnFilterDescriptor_t *filterDesc) {
    if (!filterDesc) return CUDNN_STATUS_BAD_PARAM;
    *filterDesc = new cudnnFilterStruct();
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyFilterDescriptor(cudnnFilterDescriptor_t filterDesc) {
    delete filterDesc;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetFilter4dDescriptor(cudnnFilterDescriptor_t d, cudnnDataType_t dataType,
                                         cudnnTensorFormat_t format, int k, int c, int h, int w) {
    const char *api = "cudnnSetFilter4dDescriptor";
    if (!d) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL descriptor", api);
    if (k < 0 || c < 0 || h < 0 || w < 0)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: negative dimension %dx%dx%dx%d", api, k, c, h, w);
    if (!valid_type(dataType)) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: data type %d", api, (int)dataType);
    if (format != CUDNN_TENSOR_NCHW && format != CUDNN_TENSOR_NHWC && format != CUDNN_TENSOR_NCHW_VECT_C)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: format %d", api, (int)format);
    if (format == CUDNN_TENSOR_NCHW_VECT_C)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: CUDNN_TENSOR_NCHW_VECT_C is for vectorized int8 data", api);
    d->set = true;
    d->type = dataType;
    d->format = format;
    d->k = k, d->c = c, d->r = h, d->s = w;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnCreateConvolutionDescriptor(cudnnConvolutionDescriptor_t *convDesc) {
    if (!convDesc) return CUDNN_STATUS_BAD_PARAM;
    *convDesc = new cudnnConvolutionStruct();
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnDestroyConvolutionDescriptor(cudnnConvolutionDescriptor_t convDesc) {
    delete convDesc;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolution2dDescriptor(cudnnConvolutionDescriptor_t d, int pad_h, int pad_w, int u, int v,
                                              int dilation_h, int dilation_w, cudnnConvolutionMode_t mode,
                                              cudnnDataType_t computeType) {
    const char *api = "cudnnSetConvolution2dDescriptor";
    if (!d) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL descriptor", api);
    if (pad_h < 0 || pad_w < 0) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: negative padding %d,%d", api, pad_h, pad_w);
    if (u <= 0 || v <= 0) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: stride %d,%d", api, u, v);
    if (dilation_h <= 0 || dilation_w <= 0)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: dilation %d,%d", api, dilation_h, dilation_w);
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: mode %d", api, (int)mode);
    if (!valid_type(computeType)) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: compute type %d", api, (int)computeType);
    d->set = true;
    d->pad_h = pad_h, d->pad_w = pad_w, d->u = u, d->v = v, d->dil_h = dilation_h, d->dil_w = dilation_w;
    d->mode = mode;
    d->compute = computeType;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnSetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc, cudnnMathType_t mathType) {
    if (!convDesc) return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnSetConvolutionMathType: NULL descriptor");
    if (mathType != CUDNN_DEFAULT_MATH && mathType != CUDNN_TENSOR_OP_MATH &&
        mathType != CUDNN_TENSOR_OP_MATH_ALLOW_CONVERSION && mathType != CUDNN_FMA_MATH)
        return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnSetConvolutionMathType: math type %d", (int)mathType);
    convDesc->math = mathType;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionMathType(cudnnConvolutionDescriptor_t convDesc, cudnnMathType_t *mathType) {
    if (!convDesc || !mathType) return CUDNN_STATUS_BAD_PARAM;
    *mathType = convDesc->math;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolution2dForwardOutputDim(const cudnnConvolutionDescriptor_t conv,
                                                    const cudnnTensorDescriptor_t x, const cudnnFilterDescriptor_t w,
                                                    int *n, int *c, int *h, int *wo) {
    const char *api = "cudnnGetConvolution2dForwardOutputDim";
    if (!conv || !x || !w || !n || !c || !h || !wo)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: a NULL descriptor or output pointer", api);
    if (!conv->set || !x->set || !w->set)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: a descriptor was created but never set", api);
    if (x->c != w->c)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: the input has %d feature maps, the filter %d", api, x->c, w->c);
    const int64_t eff_r = (int64_t)(w->r - 1) * conv->dil_h + 1, eff_s = (int64_t)(w->s - 1) * conv->dil_w + 1;
    if (w->r < 1 || w->s < 1 || eff_r > x->h + 2 * (int64_t)conv->pad_h || eff_s > x->w + 2 * (int64_t)conv->pad_w)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: filter %dx%d (dilation %d,%d) does not fit the padded input %dx%d",
                      api, w->r, w->s, conv->dil_h, conv->dil_w, x->h + 2 * conv->pad_h, x->w + 2 * conv->pad_w);
    *n = x->n;
    *c = w->k;
    *h = (int)out_size(x->h, conv->pad_h, w->r, conv->dil_h, conv->u);
    *wo = (int)out_size(x->w, conv->pad_w, w->s, conv->dil_w, conv->v);
    return CUDNN_STATUS_SUCCESS;
}

/* CUDASIM_CUDNN_REFUSE_NHWC=plan (the heuristic) or =run (the forward call): refuse channels-last
 * forward convolutions with NOT_SUPPORTED at that point, as a cuDNN without NHWC kernels for a
 * geometry would; what a caller's fallback is tested with. */
static cudnnStatus_t refuse_nhwc_at(const char *api, const char *point, const cudnnTensorDescriptor_t x) {
    const char *e = getenv("CUDASIM_CUDNN_REFUSE_NHWC");
    if (!e || strcmp(e, point) || !x || x->format != CUDNN_TENSOR_NHWC) return CUDNN_STATUS_SUCCESS;
    return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: channels-last refused (CUDASIM_CUDNN_REFUSE_NHWC=%s)", api, point);
}

/* ---- heuristics ---- */

cudnnStatus_t cudnnGetConvolutionForwardAlgorithm_v7(cudnnHandle_t handle, const cudnnTensorDescriptor_t srcDesc,
                                                     const cudnnFilterDescriptor_t filterDesc,
                                                     const cudnnConvolutionDescriptor_t convDesc,
                                                     const cudnnTensorDescriptor_t destDesc,
                                                     const int requestedAlgoCount, int *returnedAlgoCount,
                                                     cudnnConvolutionFwdAlgoPerf_t *perfResults) {
    const char *api = "cudnnGetConvolutionForwardAlgorithm_v7";
    if (!handle || !returnedAlgoCount || !perfResults || requestedAlgoCount < 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle / output, or requestedAlgoCount %d < 1", api,
                      requestedAlgoCount);
    Geom g;
    cudnnStatus_t st = resolve(api, Dir::fwd, srcDesc, filterDesc, convDesc, destDesc, &g);
    if (st == CUDNN_STATUS_SUCCESS) st = refuse_nhwc_at(api, "plan", srcDesc);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    Perf all[CUDNN_CONVOLUTION_FWD_ALGO_COUNT];
    const int n = std::min(requestedAlgoCount, heuristic(Dir::fwd, g, convDesc->math, all));
    copy_perf(all, n, perfResults);
    *returnedAlgoCount = n;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionBackwardDataAlgorithm_v7(cudnnHandle_t handle,
                                                          const cudnnFilterDescriptor_t filterDesc,
                                                          const cudnnTensorDescriptor_t diffDesc,
                                                          const cudnnConvolutionDescriptor_t convDesc,
                                                          const cudnnTensorDescriptor_t gradDesc,
                                                          const int requestedAlgoCount, int *returnedAlgoCount,
                                                          cudnnConvolutionBwdDataAlgoPerf_t *perfResults) {
    const char *api = "cudnnGetConvolutionBackwardDataAlgorithm_v7";
    if (!handle || !returnedAlgoCount || !perfResults || requestedAlgoCount < 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle / output, or requestedAlgoCount %d < 1", api,
                      requestedAlgoCount);
    Geom g;
    const cudnnStatus_t st = resolve(api, Dir::bwd_data, gradDesc, filterDesc, convDesc, diffDesc, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    Perf all[CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT];
    const int n = std::min(requestedAlgoCount, heuristic(Dir::bwd_data, g, convDesc->math, all));
    copy_perf(all, n, perfResults);
    *returnedAlgoCount = n;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterAlgorithm_v7(cudnnHandle_t handle,
                                                            const cudnnTensorDescriptor_t srcDesc,
                                                            const cudnnTensorDescriptor_t diffDesc,
                                                            const cudnnConvolutionDescriptor_t convDesc,
                                                            const cudnnFilterDescriptor_t gradDesc,
                                                            const int requestedAlgoCount, int *returnedAlgoCount,
                                                            cudnnConvolutionBwdFilterAlgoPerf_t *perfResults) {
    const char *api = "cudnnGetConvolutionBackwardFilterAlgorithm_v7";
    if (!handle || !returnedAlgoCount || !perfResults || requestedAlgoCount < 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle / output, or requestedAlgoCount %d < 1", api,
                      requestedAlgoCount);
    Geom g;
    const cudnnStatus_t st = resolve(api, Dir::bwd_filter, srcDesc, gradDesc, convDesc, diffDesc, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    Perf all[CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT];
    const int n = std::min(requestedAlgoCount, heuristic(Dir::bwd_filter, g, convDesc->math, all));
    copy_perf(all, n, perfResults);
    *returnedAlgoCount = n;
    return CUDNN_STATUS_SUCCESS;
}

/* The Find functions time every algorithm on the device (cudnnFind*: allocating their own
 * buffers, synchronising) and return them fastest first: here, the measured() order. x and y are
 * the direction's input and output tensors as resolve() takes them. */
extern "C++" { /* a template, inside the API's extern "C" block */
template <class PerfT>
static cudnnStatus_t find_algorithms(const char *api, Dir dir, cudnnHandle_t handle, const cudnnTensorDescriptor_t x,
                              const cudnnFilterDescriptor_t w, const cudnnConvolutionDescriptor_t conv,
                              const cudnnTensorDescriptor_t y, int requested, int *returned, PerfT *perf) {
    if (!handle || !returned || !perf || requested < 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle / output, or requestedAlgoCount %d < 1", api, requested);
    if (cudaStreamSynchronize(handle->stream) != cudaSuccess) /* Find times on the device: it synchronises */
        return refuse(CUDNN_STATUS_EXECUTION_FAILED, "%s: cannot synchronise (a CUDA graph being captured?)", api);
    Geom g;
    const cudnnStatus_t st = resolve(api, dir, x, w, conv, y, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    Perf all[CUDNN_CONVOLUTION_FWD_ALGO_COUNT]; /* the longest list of the three directions */
    const int n = std::min(requested, measured(dir, g, conv->math, all));
    copy_perf(all, n, perf);
    *returned = n;
    return CUDNN_STATUS_SUCCESS;
}
} // extern "C++"

cudnnStatus_t cudnnFindConvolutionForwardAlgorithm(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                   const cudnnFilterDescriptor_t wDesc,
                                                   const cudnnConvolutionDescriptor_t convDesc,
                                                   const cudnnTensorDescriptor_t yDesc, const int requestedAlgoCount,
                                                   int *returnedAlgoCount, cudnnConvolutionFwdAlgoPerf_t *perfResults) {
    return find_algorithms("cudnnFindConvolutionForwardAlgorithm", Dir::fwd, handle, xDesc, wDesc, convDesc, yDesc,
                           requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t cudnnFindConvolutionBackwardDataAlgorithm(cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
                                                        const cudnnTensorDescriptor_t dyDesc,
                                                        const cudnnConvolutionDescriptor_t convDesc,
                                                        const cudnnTensorDescriptor_t dxDesc,
                                                        const int requestedAlgoCount, int *returnedAlgoCount,
                                                        cudnnConvolutionBwdDataAlgoPerf_t *perfResults) {
    return find_algorithms("cudnnFindConvolutionBackwardDataAlgorithm", Dir::bwd_data, handle, dxDesc, wDesc, convDesc,
                           dyDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

cudnnStatus_t cudnnFindConvolutionBackwardFilterAlgorithm(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                          const cudnnTensorDescriptor_t dyDesc,
                                                          const cudnnConvolutionDescriptor_t convDesc,
                                                          const cudnnFilterDescriptor_t dwDesc,
                                                          const int requestedAlgoCount, int *returnedAlgoCount,
                                                          cudnnConvolutionBwdFilterAlgoPerf_t *perfResults) {
    return find_algorithms("cudnnFindConvolutionBackwardFilterAlgorithm", Dir::bwd_filter, handle, xDesc, dwDesc,
                           convDesc, dyDesc, requestedAlgoCount, returnedAlgoCount, perfResults);
}

/* ---- workspace sizes ---- */

static cudnnStatus_t workspace_query(const char *api, Dir dir, cudnnHandle_t handle, const cudnnTensorStruct *x,
                                     const cudnnFilterStruct *w, const cudnnConvolutionStruct *conv,
                                     const cudnnTensorStruct *y, int algo, size_t *sizeInBytes) {
    if (!handle || !sizeInBytes) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle or output", api);
    if (algo < 0 || algo >= algo_count(dir)) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: algorithm %d", api, algo);
    Geom g;
    const cudnnStatus_t st = resolve(api, dir, x, w, conv, y, &g);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const size_t need = workspace_for(dir, g, algo);
    if (need == SIZE_MAX)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: algorithm %d does not apply to this geometry", api, algo);
    *sizeInBytes = need;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnGetConvolutionForwardWorkspaceSize(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                      const cudnnFilterDescriptor_t wDesc,
                                                      const cudnnConvolutionDescriptor_t convDesc,
                                                      const cudnnTensorDescriptor_t yDesc,
                                                      cudnnConvolutionFwdAlgo_t algo, size_t *sizeInBytes) {
    return workspace_query("cudnnGetConvolutionForwardWorkspaceSize", Dir::fwd, handle, xDesc, wDesc, convDesc, yDesc,
                           (int)algo, sizeInBytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardDataWorkspaceSize(cudnnHandle_t handle, const cudnnFilterDescriptor_t wDesc,
                                                           const cudnnTensorDescriptor_t dyDesc,
                                                           const cudnnConvolutionDescriptor_t convDesc,
                                                           const cudnnTensorDescriptor_t dxDesc,
                                                           cudnnConvolutionBwdDataAlgo_t algo, size_t *sizeInBytes) {
    return workspace_query("cudnnGetConvolutionBackwardDataWorkspaceSize", Dir::bwd_data, handle, dxDesc, wDesc,
                           convDesc, dyDesc, (int)algo, sizeInBytes);
}

cudnnStatus_t cudnnGetConvolutionBackwardFilterWorkspaceSize(cudnnHandle_t handle, const cudnnTensorDescriptor_t xDesc,
                                                             const cudnnTensorDescriptor_t dyDesc,
                                                             const cudnnConvolutionDescriptor_t convDesc,
                                                             const cudnnFilterDescriptor_t gradDesc,
                                                             cudnnConvolutionBwdFilterAlgo_t algo,
                                                             size_t *sizeInBytes) {
    return workspace_query("cudnnGetConvolutionBackwardFilterWorkspaceSize", Dir::bwd_filter, handle, xDesc, gradDesc,
                           convDesc, dyDesc, (int)algo, sizeInBytes);
}

/* ---- the three convolutions ---- */

cudnnStatus_t cudnnConvolutionForward(cudnnHandle_t handle, const void *alpha, const cudnnTensorDescriptor_t xDesc,
                                      const void *x, const cudnnFilterDescriptor_t wDesc, const void *w,
                                      const cudnnConvolutionDescriptor_t convDesc, cudnnConvolutionFwdAlgo_t algo,
                                      void *workSpace, size_t workSpaceSizeInBytes, const void *beta,
                                      const cudnnTensorDescriptor_t yDesc, void *y) {
    const char *api = "cudnnConvolutionForward";
    if (!handle || !alpha || !beta || !x || !w || !y)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle, alpha, beta, x, w or y", api);
    if ((int)algo < 0 || (int)algo >= CUDNN_CONVOLUTION_FWD_ALGO_COUNT)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: algorithm %d", api, (int)algo);
    Geom g;
    cudnnStatus_t st = resolve(api, Dir::fwd, xDesc, wDesc, convDesc, yDesc, &g);
    if (!has_tensor_kernel(Dir::fwd, (int)algo)) g.rnd = nullptr; /* no tensor-core kernel: fp32 FMA */
    if (st == CUDNN_STATUS_SUCCESS) st = refuse_nhwc_at(api, "run", xDesc);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const size_t need = fwd_workspace(g, algo);
    st = check_workspace(api, "forward", (int)algo, need, workSpace, workSpaceSizeInBytes);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const double a = *(const float *)alpha, b = *(const float *)beta; /* floats for float and half data */
    const void *xp = x, *wp = w;
    void *yp = y;
    const Operand ops[] = {{yp, bytes_of(g, y_elems(g)), "y"}, {xp, bytes_of(g, x_elems(g)), "x"},
                           {wp, bytes_of(g, w_elems(g)), "w"}};
    check_operands(api, ops, 3, workSpace, workSpaceSizeInBytes);
    void *ws = workSpace;
    const size_t ws_bytes = workSpaceSizeInBytes;
    cudasim::enqueue(handle->stream, [g, a, b, xp, wp, yp, ws, ws_bytes, need, api]() {
        const Operand o[] = {{yp, bytes_of(g, y_elems(g)), "y"}, {xp, bytes_of(g, x_elems(g)), "x"},
                             {wp, bytes_of(g, w_elems(g)), "w"}};
        check_operands(api, o, 3, ws, ws_bytes);
        if (need) scribble(ws, need);
        run_forward(g, xp, wp, yp, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardData(cudnnHandle_t handle, const void *alpha,
                                           const cudnnFilterDescriptor_t wDesc, const void *w,
                                           const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                           const cudnnConvolutionDescriptor_t convDesc,
                                           cudnnConvolutionBwdDataAlgo_t algo, void *workSpace,
                                           size_t workSpaceSizeInBytes, const void *beta,
                                           const cudnnTensorDescriptor_t dxDesc, void *dx) {
    const char *api = "cudnnConvolutionBackwardData";
    if (!handle || !alpha || !beta || !w || !dy || !dx)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle, alpha, beta, w, dy or dx", api);
    if ((int)algo < 0 || (int)algo >= CUDNN_CONVOLUTION_BWD_DATA_ALGO_COUNT)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: algorithm %d", api, (int)algo);
    Geom g;
    cudnnStatus_t st = resolve(api, Dir::bwd_data, dxDesc, wDesc, convDesc, dyDesc, &g);
    if (!has_tensor_kernel(Dir::bwd_data, (int)algo)) g.rnd = nullptr; /* no tensor-core kernel: fp32 FMA */
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const size_t need = bwd_data_workspace(g, algo);
    st = check_workspace(api, "backward-data", (int)algo, need, workSpace, workSpaceSizeInBytes);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const double a = *(const float *)alpha, b = *(const float *)beta;
    const float *wp = (const float *)w, *dyp = (const float *)dy;
    float *dxp = (float *)dx;
    const Operand ops[] = {{dxp, (size_t)x_elems(g) * sizeof(float), "dx"},
                           {dyp, (size_t)y_elems(g) * sizeof(float), "dy"},
                           {wp, (size_t)w_elems(g) * sizeof(float), "w"}};
    check_operands(api, ops, 3, workSpace, workSpaceSizeInBytes);
    void *ws = workSpace;
    const size_t ws_bytes = workSpaceSizeInBytes;
    cudasim::enqueue(handle->stream, [g, a, b, wp, dyp, dxp, ws, ws_bytes, need, api]() {
        const Operand o[] = {{dxp, (size_t)x_elems(g) * sizeof(float), "dx"},
                             {dyp, (size_t)y_elems(g) * sizeof(float), "dy"},
                             {wp, (size_t)w_elems(g) * sizeof(float), "w"}};
        check_operands(api, o, 3, ws, ws_bytes);
        if (need) scribble(ws, need);
        run_backward_data(g, wp, dyp, dxp, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnConvolutionBackwardFilter(cudnnHandle_t handle, const void *alpha,
                                             const cudnnTensorDescriptor_t xDesc, const void *x,
                                             const cudnnTensorDescriptor_t dyDesc, const void *dy,
                                             const cudnnConvolutionDescriptor_t convDesc,
                                             cudnnConvolutionBwdFilterAlgo_t algo, void *workSpace,
                                             size_t workSpaceSizeInBytes, const void *beta,
                                             const cudnnFilterDescriptor_t dwDesc, void *dw) {
    const char *api = "cudnnConvolutionBackwardFilter";
    if (!handle || !alpha || !beta || !x || !dy || !dw)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL handle, alpha, beta, x, dy or dw", api);
    if ((int)algo < 0 || (int)algo >= CUDNN_CONVOLUTION_BWD_FILTER_ALGO_COUNT)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: algorithm %d", api, (int)algo);
    Geom g;
    cudnnStatus_t st = resolve(api, Dir::bwd_filter, xDesc, dwDesc, convDesc, dyDesc, &g);
    if (!has_tensor_kernel(Dir::bwd_filter, (int)algo)) g.rnd = nullptr; /* no tensor-core kernel: fp32 FMA */
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const size_t need = bwd_filter_workspace(g, algo);
    st = check_workspace(api, "backward-filter", (int)algo, need, workSpace, workSpaceSizeInBytes);
    if (st != CUDNN_STATUS_SUCCESS) return st;
    const double a = *(const float *)alpha, b = *(const float *)beta;
    const float *xp = (const float *)x, *dyp = (const float *)dy;
    float *dwp = (float *)dw;
    const Operand ops[] = {{dwp, (size_t)w_elems(g) * sizeof(float), "dw"},
                           {xp, (size_t)x_elems(g) * sizeof(float), "x"},
                           {dyp, (size_t)y_elems(g) * sizeof(float), "dy"}};
    check_operands(api, ops, 3, workSpace, workSpaceSizeInBytes);
    void *ws = workSpace;
    const size_t ws_bytes = workSpaceSizeInBytes;
    cudasim::enqueue(handle->stream, [g, a, b, xp, dyp, dwp, ws, ws_bytes, need, api]() {
        const Operand o[] = {{dwp, (size_t)w_elems(g) * sizeof(float), "dw"},
                             {xp, (size_t)x_elems(g) * sizeof(float), "x"},
                             {dyp, (size_t)y_elems(g) * sizeof(float), "dy"}};
        check_operands(api, o, 3, ws, ws_bytes);
        if (need) scribble(ws, need);
        run_backward_filter(g, xp, dyp, dwp, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

} // extern "C"

/* ------------------------------------------------------------------------------------------------
 * Graph API (cudnnBackend*): one convolution forward per operation graph.
 *
 * What it follows (cuDNN's backend descriptor reference):
 *  - Every descriptor is created, given its attributes with cudnnBackendSetAttribute (the
 *    attribute's documented type and element count, else BAD_PARAM), finalised once (a missing
 *    required attribute or inconsistent ones: BAD_PARAM; a geometry no engine runs:
 *    NOT_SUPPORTED), and only then read by cudnnBackendGetAttribute or referenced by another
 *    descriptor (a reference to an unfinalised descriptor: BAD_PARAM). Setting an attribute after
 *    finalisation is BAD_PARAM.
 *  - Tensor: data type, dimensions and strides (4 here: n, c, h, w of x and y, k, c, r, s of w),
 *    unique id and byte alignment are required. Convolution: compute type, mode, spatial
 *    dimensions (2), dilations, filter strides, pre- and post-paddings. The forward operation
 *    takes X, W, Y and the convolution (alpha 1 and beta 0 unless set, FLOAT or DOUBLE) and checks
 *    them as the legacy call does, with y's size from both paddings. The operation graph takes
 *    the operations and a handle.
 *  - Heuristics (mode and operation graph required): RESULTS fills engine-config descriptors the
 *    caller created, best first. Whatever the mode, this simulator lists three engines: global
 *    index 90 needs run-time compilation (behaviour note RUNTIME_COMPILATION; its plan cannot be
 *    finalised here: NOT_SUPPORTED, as on a machine without NVRTC), then 91 (no workspace) and 92
 *    (a workspace of y's size / 2 + 100 bytes, so the caller's workspace handling is exercised).
 *    All three carry the TENSOR_CORE numerical note. ENGINECFG_ENGINE fills an engine descriptor
 *    the caller created; an engine answers GLOBAL_INDEX and its notes.
 *  - An execution plan takes an engine config and a handle; WORKSPACE_SIZE is then readable. A
 *    variant pack takes the unique ids, the data pointers in the same order, and the workspace
 *    (required when the plan needs one). cudnnBackendExecute checks that every tensor of the graph
 *    has a pointer aligned to its byte alignment, and that the workspace is large enough by the
 *    plan's own size, then queues y = alpha · conv(x, w) + beta · y as the legacy forward computes
 *    it (half data: PSEUDO_HALF_CONFIG; float data on a tensor-core engine: TF32 operands).
 *  - CUDASIM_CUDNN_GRAPH_REFUSE=heuristic: the heuristics list no engine; =plan: every execution
 *    plan refuses to finalise (NOT_SUPPORTED): what a caller's fallback to the legacy API is tested
 *    with.
 * --------------------------------------------------------------------------------------------- */

namespace {

struct BeDesc {
    cudnnBackendDescriptorType_t kind;
    bool finalized = false;
    std::vector<std::pair<int, std::vector<unsigned char>>> attrs; /* name -> raw elements, as set */
    std::vector<int> attr_types, attr_counts;
    /* filled by finalisation */
    cudnnDataType_t dtype = CUDNN_DATA_FLOAT;     /* tensor; convolution: compute type */
    int64_t dims[4] = {0}, strides[4] = {0}, uid = 0, align = 0;
    cudnnConvolutionMode_t mode = CUDNN_CROSS_CORRELATION;
    int64_t pre[2] = {0}, post[2] = {0}, fstride[2] = {1, 1}, dil[2] = {1, 1};
    Geom geom{};                                   /* forward op, graph, config, plan */
    double alpha = 1.0, beta = 0.0;
    int64_t tuid[3] = {0}, talign[3] = {0};        /* x, w, y of the operation */
    cudnnHandle_t handle = nullptr;
    int64_t engine = -1, workspace = 0;            /* engine, config, plan */
    std::vector<int64_t> uids;                     /* variant pack */
    std::vector<void *> ptrs;
    void *ws = nullptr;
};

const char *graph_refuse_at() {
    const char *e = getenv("CUDASIM_CUDNN_GRAPH_REFUSE");
    return e ? e : "";
}

size_t be_type_size(cudnnBackendAttributeType_t t) {
    switch (t) {
    case CUDNN_TYPE_HANDLE: return sizeof(cudnnHandle_t);
    case CUDNN_TYPE_BOOLEAN: return sizeof(bool);
    case CUDNN_TYPE_INT64: return sizeof(int64_t);
    case CUDNN_TYPE_FLOAT: return sizeof(float);
    case CUDNN_TYPE_DOUBLE: return sizeof(double);
    case CUDNN_TYPE_VOID_PTR: return sizeof(void *);
    case CUDNN_TYPE_BACKEND_DESCRIPTOR: return sizeof(cudnnBackendDescriptor_t);
    case CUDNN_TYPE_DATA_TYPE: case CUDNN_TYPE_CONVOLUTION_MODE: case CUDNN_TYPE_HEUR_MODE:
    case CUDNN_TYPE_NUMERICAL_NOTE: case CUDNN_TYPE_BEHAVIOR_NOTE: return sizeof(int); /* C enums */
    }
    return 0;
}

/* The type an attribute is set with, and whether its count is fixed (1) or free (0). -1: the
 * attribute does not belong to the descriptor kind, or cannot be set. */
int be_settable(cudnnBackendDescriptorType_t k, int name, cudnnBackendAttributeType_t *type, int *fixed_one) {
    struct Rule { cudnnBackendDescriptorType_t k; int name; cudnnBackendAttributeType_t type; int one; };
    static const Rule rules[] = {
        {CUDNN_BACKEND_TENSOR_DESCRIPTOR, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, CUDNN_TYPE_INT64, 1},
        {CUDNN_BACKEND_TENSOR_DESCRIPTOR, CUDNN_ATTR_TENSOR_DATA_TYPE, CUDNN_TYPE_DATA_TYPE, 1},
        {CUDNN_BACKEND_TENSOR_DESCRIPTOR, CUDNN_ATTR_TENSOR_DIMENSIONS, CUDNN_TYPE_INT64, 0},
        {CUDNN_BACKEND_TENSOR_DESCRIPTOR, CUDNN_ATTR_TENSOR_STRIDES, CUDNN_TYPE_INT64, 0},
        {CUDNN_BACKEND_TENSOR_DESCRIPTOR, CUDNN_ATTR_TENSOR_UNIQUE_ID, CUDNN_TYPE_INT64, 1},
        {CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, CUDNN_TYPE_DATA_TYPE, 1},
        {CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, CUDNN_ATTR_CONVOLUTION_CONV_MODE, CUDNN_TYPE_CONVOLUTION_MODE, 1},
        {CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, CUDNN_ATTR_CONVOLUTION_DILATIONS, CUDNN_TYPE_INT64, 0},
        {CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, CUDNN_TYPE_INT64, 0},
        {CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, CUDNN_TYPE_INT64, 0},
        {CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, CUDNN_TYPE_INT64, 0},
        {CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, CUDNN_TYPE_INT64, 1},
        {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC,
         CUDNN_TYPE_BACKEND_DESCRIPTOR, 1},
        {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W,
         CUDNN_TYPE_BACKEND_DESCRIPTOR, 1},
        {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X,
         CUDNN_TYPE_BACKEND_DESCRIPTOR, 1},
        {CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y,
         CUDNN_TYPE_BACKEND_DESCRIPTOR, 1},
        {CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, CUDNN_TYPE_HANDLE, 1},
        {CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR, CUDNN_ATTR_OPERATIONGRAPH_OPS, CUDNN_TYPE_BACKEND_DESCRIPTOR, 0},
        {CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, CUDNN_ATTR_ENGINEHEUR_MODE, CUDNN_TYPE_HEUR_MODE, 1},
        {CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_TYPE_BACKEND_DESCRIPTOR, 1},
        {CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, CUDNN_TYPE_HANDLE, 1},
        {CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_TYPE_BACKEND_DESCRIPTOR,
         1},
        {CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, CUDNN_TYPE_INT64, 0},
        {CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, CUDNN_TYPE_VOID_PTR, 0},
        {CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, CUDNN_TYPE_VOID_PTR, 1},
    };
    for (const Rule &r : rules)
        if (r.k == k && r.name == name) {
            *type = r.type;
            *fixed_one = r.one;
            return 0;
        }
    if (k == CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR &&
        (name == CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA || name == CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA)) {
        *type = CUDNN_TYPE_FLOAT; /* or DOUBLE: the caller's choice, checked there */
        *fixed_one = 1;
        return 0;
    }
    return -1;
}

BeDesc *be(cudnnBackendDescriptor_t d) { return (BeDesc *)d; }

const std::vector<unsigned char> *be_attr(const BeDesc *d, int name, int *type, int64_t *count) {
    for (size_t i = 0; i < d->attrs.size(); i++)
        if (d->attrs[i].first == name) {
            *type = d->attr_types[i];
            *count = d->attr_counts[i];
            return &d->attrs[i].second;
        }
    return nullptr;
}

/* Reads a required attribute of `n` elements (n < 0: at least one) into out; returns the count, or
 * -1 when it is missing or has another count. */
int64_t be_read(const BeDesc *d, int name, int64_t n, void *out, size_t out_cap) {
    int type = 0;
    int64_t count = 0;
    const std::vector<unsigned char> *raw = be_attr(d, name, &type, &count);
    if (!raw || (n >= 0 && count != n) || count < 1 || raw->size() > out_cap) return -1;
    memcpy(out, raw->data(), raw->size());
    return count;
}

const BeDesc *be_ref(const BeDesc *d, int name, cudnnBackendDescriptorType_t kind) {
    cudnnBackendDescriptor_t ref = nullptr;
    if (be_read(d, name, 1, &ref, sizeof ref) != 1 || !ref) return nullptr;
    const BeDesc *r = be(ref);
    return r->kind == kind && r->finalized ? r : nullptr;
}

cudnnStatus_t be_finalize_tensor(BeDesc *d) {
    const char *api = "cudnnBackendFinalize(tensor)";
    int dt = 0;
    if (be_read(d, CUDNN_ATTR_TENSOR_DATA_TYPE, 1, &dt, sizeof dt) != 1 ||
        be_read(d, CUDNN_ATTR_TENSOR_DIMENSIONS, 4, d->dims, sizeof d->dims) != 4 ||
        be_read(d, CUDNN_ATTR_TENSOR_STRIDES, 4, d->strides, sizeof d->strides) != 4 ||
        be_read(d, CUDNN_ATTR_TENSOR_UNIQUE_ID, 1, &d->uid, sizeof d->uid) != 1 ||
        be_read(d, CUDNN_ATTR_TENSOR_BYTE_ALIGNMENT, 1, &d->align, sizeof d->align) != 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: data type, 4 dimensions, 4 strides, unique id and byte alignment "
                      "are required (cudasim implements 4-d tensors)", api);
    d->dtype = (cudnnDataType_t)dt;
    if (d->dtype != CUDNN_DATA_FLOAT && d->dtype != CUDNN_DATA_HALF)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: data type %d (cudasim: float and half)", api, dt);
    for (int i = 0; i < 4; i++)
        if (d->dims[i] < 1 || d->strides[i] < 1)
            return refuse(CUDNN_STATUS_BAD_PARAM, "%s: dimension %d is %lld with stride %lld", api, i,
                          (long long)d->dims[i], (long long)d->strides[i]);
    if (d->align < 1 || (d->align & (d->align - 1)))
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: byte alignment %lld is no power of two", api, (long long)d->align);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t be_finalize_conv(BeDesc *d) {
    const char *api = "cudnnBackendFinalize(convolution)";
    int comp = 0, mode = 0;
    int64_t spatial = 0;
    if (be_read(d, CUDNN_ATTR_CONVOLUTION_COMP_TYPE, 1, &comp, sizeof comp) != 1 ||
        be_read(d, CUDNN_ATTR_CONVOLUTION_CONV_MODE, 1, &mode, sizeof mode) != 1 ||
        be_read(d, CUDNN_ATTR_CONVOLUTION_SPATIAL_DIMS, 1, &spatial, sizeof spatial) != 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: compute type, mode and spatial dimensions are required", api);
    if (spatial != 2) return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: %lld spatial dimensions (cudasim: 2)", api, (long long)spatial);
    if (be_read(d, CUDNN_ATTR_CONVOLUTION_DILATIONS, 2, d->dil, sizeof d->dil) != 2 ||
        be_read(d, CUDNN_ATTR_CONVOLUTION_FILTER_STRIDES, 2, d->fstride, sizeof d->fstride) != 2 ||
        be_read(d, CUDNN_ATTR_CONVOLUTION_PRE_PADDINGS, 2, d->pre, sizeof d->pre) != 2 ||
        be_read(d, CUDNN_ATTR_CONVOLUTION_POST_PADDINGS, 2, d->post, sizeof d->post) != 2)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: dilations, filter strides, pre- and post-paddings, 2 each, are required",
                      api);
    for (int i = 0; i < 2; i++)
        if (d->dil[i] < 1 || d->fstride[i] < 1 || d->pre[i] < 0 || d->post[i] < 0)
            return refuse(CUDNN_STATUS_BAD_PARAM, "%s: dilation %lld, stride %lld, padding %lld/%lld", api,
                          (long long)d->dil[i], (long long)d->fstride[i], (long long)d->pre[i], (long long)d->post[i]);
    if (mode != CUDNN_CONVOLUTION && mode != CUDNN_CROSS_CORRELATION)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: mode %d", api, mode);
    d->dtype = (cudnnDataType_t)comp;
    d->mode = (cudnnConvolutionMode_t)mode;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t be_finalize_conv_fwd(BeDesc *d) {
    const char *api = "cudnnBackendFinalize(convolution forward)";
    const BeDesc *x = be_ref(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_X, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const BeDesc *w = be_ref(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_W, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const BeDesc *y = be_ref(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_Y, CUDNN_BACKEND_TENSOR_DESCRIPTOR);
    const BeDesc *c = be_ref(d, CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_CONV_DESC, CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR);
    if (!x || !w || !y || !c)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: X, W, Y and the convolution must be set, finalised descriptors", api);
    for (int which = 0; which < 2; which++) {
        const int name = which ? CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA : CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA;
        int type = 0;
        int64_t count = 0;
        const std::vector<unsigned char> *raw = be_attr(d, name, &type, &count);
        if (!raw) continue;
        double v = 0;
        if (type == CUDNN_TYPE_FLOAT) {
            float f;
            memcpy(&f, raw->data(), sizeof f);
            v = f;
        } else {
            memcpy(&v, raw->data(), sizeof v);
        }
        (which ? d->beta : d->alpha) = v;
    }
    if (x->dtype != w->dtype || x->dtype != y->dtype)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: data types differ (x %d, w %d, y %d)", api, (int)x->dtype,
                      (int)w->dtype, (int)y->dtype);
    if (c->dtype != CUDNN_DATA_FLOAT)
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: compute type %d (cudasim: float)", api, (int)c->dtype);
    if (x->dims[1] != w->dims[1] || y->dims[0] != x->dims[0] || y->dims[1] != w->dims[0])
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: x %lldx%lld, w %lldx%lld, y %lldx%lld (n, c / k, c)", api,
                      (long long)x->dims[0], (long long)x->dims[1], (long long)w->dims[0], (long long)w->dims[1],
                      (long long)y->dims[0], (long long)y->dims[1]);
    int64_t out[2];
    for (int i = 0; i < 2; i++) {
        const int64_t span = x->dims[2 + i] + c->pre[i] + c->post[i] - ((w->dims[2 + i] - 1) * c->dil[i] + 1);
        if (span < 0)
            return refuse(CUDNN_STATUS_BAD_PARAM, "%s: the filter is larger than the padded input", api);
        out[i] = span / c->fstride[i] + 1;
    }
    if (y->dims[2] != out[0] || y->dims[3] != out[1])
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: y is %lldx%lld spatially, the convolution gives %lldx%lld", api,
                      (long long)y->dims[2], (long long)y->dims[3], (long long)out[0], (long long)out[1]);
    if (x->uid == w->uid || x->uid == y->uid || w->uid == y->uid)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: the tensors' unique ids are not distinct", api);
    Geom &g = d->geom;
    g.N = x->dims[0], g.C = x->dims[1], g.H = x->dims[2], g.W = x->dims[3];
    g.K = w->dims[0], g.R = w->dims[2], g.S = w->dims[3];
    g.P = out[0], g.Q = out[1];
    g.pad_h = c->pre[0], g.pad_w = c->pre[1], g.u = c->fstride[0], g.v = c->fstride[1];
    g.dil_h = c->dil[0], g.dil_w = c->dil[1];
    g.flip = c->mode == CUDNN_CONVOLUTION;
    g.type = x->dtype;
    memcpy(g.xs, x->strides, sizeof g.xs);
    memcpy(g.fs, w->strides, sizeof g.fs);
    memcpy(g.ys, y->strides, sizeof g.ys);
    g.rnd = x->dtype == CUDNN_DATA_FLOAT ? cudasim::round_tf32 : nullptr; /* every engine here is a tensor-core one */
    d->tuid[0] = x->uid, d->tuid[1] = w->uid, d->tuid[2] = y->uid;
    d->talign[0] = x->align, d->talign[1] = w->align, d->talign[2] = y->align;
    return CUDNN_STATUS_SUCCESS;
}

/* The tensors' extents in elements (the farthest element + 1), for the range checks. */
int64_t be_extent(const int64_t dims[4], const int64_t strides[4]) {
    int64_t e = 1;
    for (int i = 0; i < 4; i++) e += (dims[i] - 1) * strides[i];
    return e;
}

/* Copies what a config / plan carries from its operation into d. */
void be_copy_op(BeDesc *d, const BeDesc *op) {
    d->geom = op->geom;
    d->alpha = op->alpha, d->beta = op->beta;
    memcpy(d->tuid, op->tuid, sizeof d->tuid);
    memcpy(d->talign, op->talign, sizeof d->talign);
}

const int64_t kSimEngines[3] = {90, 91, 92}; /* run-time compiled, plain, with workspace */

int64_t be_engine_workspace(const BeDesc *d) {
    return d->engine == 92 ? (int64_t)(bytes_of(d->geom, y_elems(d->geom)) / 2 + 100) : 0;
}

} // namespace

extern "C" {

cudnnStatus_t cudnnBackendCreateDescriptor(cudnnBackendDescriptorType_t descriptorType,
                                           cudnnBackendDescriptor_t *descriptor) {
    if (!descriptor) return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendCreateDescriptor: NULL output");
    switch (descriptorType) {
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR: case CUDNN_BACKEND_ENGINE_DESCRIPTOR:
    case CUDNN_BACKEND_ENGINECFG_DESCRIPTOR: case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR:
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR:
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR:
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: break;
    default:
        return refuse(CUDNN_STATUS_NOT_SUPPORTED, "cudnnBackendCreateDescriptor: descriptor type %d (not in cudasim)",
                      (int)descriptorType);
    }
    BeDesc *d = new BeDesc();
    d->kind = descriptorType;
    *descriptor = d;
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendDestroyDescriptor(cudnnBackendDescriptor_t descriptor) {
    delete be(descriptor);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendSetAttribute(cudnnBackendDescriptor_t descriptor, cudnnBackendAttributeName_t attributeName,
                                       cudnnBackendAttributeType_t attributeType, int64_t elementCount,
                                       const void *arrayOfElements) {
    const char *api = "cudnnBackendSetAttribute";
    if (!descriptor || !arrayOfElements || elementCount < 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL descriptor or elements, or count %lld", api, (long long)elementCount);
    BeDesc *d = be(descriptor);
    if (d->finalized)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: attribute %d on a finalised descriptor", api, (int)attributeName);
    cudnnBackendAttributeType_t want;
    int one = 0;
    if (be_settable(d->kind, attributeName, &want, &one))
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: attribute %d cannot be set on descriptor type %d", api,
                      (int)attributeName, (int)d->kind);
    const bool scalar_ok = (attributeName == CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_ALPHA ||
                            attributeName == CUDNN_ATTR_OPERATION_CONVOLUTION_FORWARD_BETA) &&
                           attributeType == CUDNN_TYPE_DOUBLE;
    if (attributeType != want && !scalar_ok)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: attribute %d set as type %d, it takes type %d", api,
                      (int)attributeName, (int)attributeType, (int)want);
    if (one && elementCount != 1)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: attribute %d takes one element, not %lld", api, (int)attributeName,
                      (long long)elementCount);
    const size_t bytes = be_type_size(attributeType) * (size_t)elementCount;
    std::vector<unsigned char> raw((const unsigned char *)arrayOfElements, (const unsigned char *)arrayOfElements + bytes);
    for (size_t i = 0; i < d->attrs.size(); i++)
        if (d->attrs[i].first == (int)attributeName) {
            d->attrs[i].second = raw;
            d->attr_types[i] = attributeType;
            d->attr_counts[i] = (int)elementCount;
            return CUDNN_STATUS_SUCCESS;
        }
    d->attrs.emplace_back((int)attributeName, raw);
    d->attr_types.push_back(attributeType);
    d->attr_counts.push_back((int)elementCount);
    return CUDNN_STATUS_SUCCESS;
}

cudnnStatus_t cudnnBackendFinalize(cudnnBackendDescriptor_t descriptor) {
    if (!descriptor) return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize: NULL descriptor");
    BeDesc *d = be(descriptor);
    if (d->finalized) return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize: finalised twice");
    cudnnStatus_t st = CUDNN_STATUS_SUCCESS;
    switch (d->kind) {
    case CUDNN_BACKEND_TENSOR_DESCRIPTOR: st = be_finalize_tensor(d); break;
    case CUDNN_BACKEND_CONVOLUTION_DESCRIPTOR: st = be_finalize_conv(d); break;
    case CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR: st = be_finalize_conv_fwd(d); break;
    case CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR: {
        cudnnBackendDescriptor_t ops[4] = {nullptr};
        const int64_t n = be_read(d, CUDNN_ATTR_OPERATIONGRAPH_OPS, -1, ops, sizeof ops);
        if (be_read(d, CUDNN_ATTR_OPERATIONGRAPH_HANDLE, 1, &d->handle, sizeof d->handle) != 1 || !d->handle || n < 1)
            return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize(operation graph): operations and a handle are required");
        if (n != 1 || !ops[0] || be(ops[0])->kind != CUDNN_BACKEND_OPERATION_CONVOLUTION_FORWARD_DESCRIPTOR ||
            !be(ops[0])->finalized)
            return refuse(CUDNN_STATUS_NOT_SUPPORTED, "cudnnBackendFinalize(operation graph): cudasim runs one finalised "
                          "convolution forward per graph (%lld operations given)", (long long)n);
        be_copy_op(d, be(ops[0]));
        break;
    }
    case CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR: {
        int mode = -1;
        const BeDesc *graph = be_ref(d, CUDNN_ATTR_ENGINEHEUR_OPERATION_GRAPH, CUDNN_BACKEND_OPERATIONGRAPH_DESCRIPTOR);
        if (!graph || be_read(d, CUDNN_ATTR_ENGINEHEUR_MODE, 1, &mode, sizeof mode) != 1 || mode < 0 || mode > 3)
            return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize(heuristics): a finalised operation graph and a mode "
                          "are required");
        be_copy_op(d, graph);
        d->handle = graph->handle;
        break;
    }
    case CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR: {
        const BeDesc *cfg = be_ref(d, CUDNN_ATTR_EXECUTION_PLAN_ENGINE_CONFIG, CUDNN_BACKEND_ENGINECFG_DESCRIPTOR);
        if (!cfg || be_read(d, CUDNN_ATTR_EXECUTION_PLAN_HANDLE, 1, &d->handle, sizeof d->handle) != 1 || !d->handle)
            return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize(execution plan): a finalised engine config and a "
                          "handle are required");
        if (!strcmp(graph_refuse_at(), "plan"))
            return refuse(CUDNN_STATUS_NOT_SUPPORTED, "cudnnBackendFinalize(execution plan): refused "
                          "(CUDASIM_CUDNN_GRAPH_REFUSE=plan)");
        if (cfg->engine == 90)
            return refuse(CUDNN_STATUS_NOT_SUPPORTED, "cudnnBackendFinalize(execution plan): engine 90 compiles its kernel "
                          "at run time, which cudasim cannot");
        be_copy_op(d, cfg);
        d->engine = cfg->engine;
        d->workspace = be_engine_workspace(d);
        break;
    }
    case CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR: {
        int type = 0;
        int64_t nu = 0, np = 0;
        const std::vector<unsigned char> *u = be_attr(d, CUDNN_ATTR_VARIANT_PACK_UNIQUE_IDS, &type, &nu);
        const std::vector<unsigned char> *p = be_attr(d, CUDNN_ATTR_VARIANT_PACK_DATA_POINTERS, &type, &np);
        if (!u || !p || nu != np)
            return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize(variant pack): as many unique ids as data "
                          "pointers are required");
        d->uids.resize((size_t)nu);
        d->ptrs.resize((size_t)np);
        memcpy(d->uids.data(), u->data(), u->size());
        memcpy(d->ptrs.data(), p->data(), p->size());
        be_read(d, CUDNN_ATTR_VARIANT_PACK_WORKSPACE, 1, &d->ws, sizeof d->ws); /* optional */
        break;
    }
    default:
        return refuse(CUDNN_STATUS_BAD_PARAM, "cudnnBackendFinalize: descriptor type %d is not finalised by the caller",
                      (int)d->kind);
    }
    if (st == CUDNN_STATUS_SUCCESS) d->finalized = true;
    return st;
}

cudnnStatus_t cudnnBackendGetAttribute(cudnnBackendDescriptor_t const descriptor,
                                       cudnnBackendAttributeName_t attributeName,
                                       cudnnBackendAttributeType_t attributeType, int64_t requestedElementCount,
                                       int64_t *elementCount, void *arrayOfElements) {
    const char *api = "cudnnBackendGetAttribute";
    if (!descriptor) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL descriptor", api);
    const BeDesc *d = be(descriptor);
    if (!d->finalized)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: attribute %d of a descriptor not finalised", api, (int)attributeName);
    auto type_is = [&](cudnnBackendAttributeType_t t) {
        if (attributeType == t) return true;
        refuse(CUDNN_STATUS_BAD_PARAM, "%s: attribute %d read as type %d, it is type %d", api, (int)attributeName,
               (int)attributeType, (int)t);
        return false;
    };
    if (d->kind == CUDNN_BACKEND_ENGINEHEUR_DESCRIPTOR && attributeName == CUDNN_ATTR_ENGINEHEUR_RESULTS) {
        if (!type_is(CUDNN_TYPE_BACKEND_DESCRIPTOR) || !elementCount) return CUDNN_STATUS_BAD_PARAM;
        const int64_t n = !strcmp(graph_refuse_at(), "heuristic") ? 0 : 3;
        const int64_t give = std::min<int64_t>(n, std::max<int64_t>(requestedElementCount, 0));
        if (give > 0 && !arrayOfElements) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL results array", api);
        for (int64_t i = 0; i < give; i++) {
            BeDesc *cfg = be(((cudnnBackendDescriptor_t *)arrayOfElements)[i]);
            if (!cfg || cfg->kind != CUDNN_BACKEND_ENGINECFG_DESCRIPTOR || cfg->finalized)
                return refuse(CUDNN_STATUS_BAD_PARAM, "%s: result %lld is not a new engine-config descriptor", api,
                              (long long)i);
            be_copy_op(cfg, d);
            cfg->engine = kSimEngines[i];
            cfg->handle = d->handle;
            cfg->finalized = true;
        }
        *elementCount = requestedElementCount > 0 ? give : n; /* a count-only query gives the number available */
        return CUDNN_STATUS_SUCCESS;
    }
    if (d->kind == CUDNN_BACKEND_ENGINECFG_DESCRIPTOR && attributeName == CUDNN_ATTR_ENGINECFG_ENGINE) {
        if (!type_is(CUDNN_TYPE_BACKEND_DESCRIPTOR) || requestedElementCount != 1 || !arrayOfElements)
            return refuse(CUDNN_STATUS_BAD_PARAM, "%s: ENGINECFG_ENGINE fills one engine descriptor", api);
        BeDesc *e = be(*(cudnnBackendDescriptor_t *)arrayOfElements);
        if (!e || e->kind != CUDNN_BACKEND_ENGINE_DESCRIPTOR || e->finalized)
            return refuse(CUDNN_STATUS_BAD_PARAM, "%s: ENGINECFG_ENGINE needs a new engine descriptor", api);
        be_copy_op(e, d);
        e->engine = d->engine;
        e->finalized = true;
        if (elementCount) *elementCount = 1;
        return CUDNN_STATUS_SUCCESS;
    }
    if (d->kind == CUDNN_BACKEND_ENGINE_DESCRIPTOR && attributeName == CUDNN_ATTR_ENGINE_GLOBAL_INDEX) {
        if (!type_is(CUDNN_TYPE_INT64) || requestedElementCount < 1 || !arrayOfElements) return CUDNN_STATUS_BAD_PARAM;
        *(int64_t *)arrayOfElements = d->engine;
        if (elementCount) *elementCount = 1;
        return CUDNN_STATUS_SUCCESS;
    }
    if (d->kind == CUDNN_BACKEND_ENGINE_DESCRIPTOR &&
        (attributeName == CUDNN_ATTR_ENGINE_NUMERICAL_NOTE || attributeName == CUDNN_ATTR_ENGINE_BEHAVIOR_NOTE)) {
        const bool numerical = attributeName == CUDNN_ATTR_ENGINE_NUMERICAL_NOTE;
        if (!type_is(numerical ? CUDNN_TYPE_NUMERICAL_NOTE : CUDNN_TYPE_BEHAVIOR_NOTE) || !elementCount)
            return CUDNN_STATUS_BAD_PARAM;
        int notes[2];
        int64_t n = 0;
        if (numerical) notes[n++] = CUDNN_NUMERICAL_NOTE_TENSOR_CORE;
        else if (d->engine == 90) notes[n++] = CUDNN_BEHAVIOR_NOTE_RUNTIME_COMPILATION;
        const int64_t give = std::min<int64_t>(n, std::max<int64_t>(requestedElementCount, 0));
        if (give > 0 && !arrayOfElements) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL notes array", api);
        for (int64_t i = 0; i < give; i++) ((int *)arrayOfElements)[i] = notes[i];
        *elementCount = requestedElementCount > 0 ? give : n;
        return CUDNN_STATUS_SUCCESS;
    }
    if (d->kind == CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR && attributeName == CUDNN_ATTR_EXECUTION_PLAN_WORKSPACE_SIZE) {
        if (!type_is(CUDNN_TYPE_INT64) || requestedElementCount < 1 || !arrayOfElements) return CUDNN_STATUS_BAD_PARAM;
        *(int64_t *)arrayOfElements = d->workspace;
        if (elementCount) *elementCount = 1;
        return CUDNN_STATUS_SUCCESS;
    }
    return refuse(CUDNN_STATUS_NOT_SUPPORTED, "%s: attribute %d of descriptor type %d (not in cudasim)", api,
                  (int)attributeName, (int)d->kind);
}

cudnnStatus_t cudnnBackendExecute(cudnnHandle_t handle, cudnnBackendDescriptor_t executionPlan,
                                  cudnnBackendDescriptor_t variantPack) {
    const char *api = "cudnnBackendExecute";
    if (!handle || !executionPlan || !variantPack) return refuse(CUDNN_STATUS_BAD_PARAM, "%s: NULL argument", api);
    const BeDesc *plan = be(executionPlan), *vp = be(variantPack);
    if (plan->kind != CUDNN_BACKEND_EXECUTION_PLAN_DESCRIPTOR || !plan->finalized ||
        vp->kind != CUDNN_BACKEND_VARIANT_PACK_DESCRIPTOR || !vp->finalized)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: a finalised execution plan and variant pack are required", api);
    const void *ptr[3] = {nullptr, nullptr, nullptr}; /* x, w, y */
    for (int t = 0; t < 3; t++) {
        for (size_t i = 0; i < vp->uids.size(); i++)
            if (vp->uids[i] == plan->tuid[t]) ptr[t] = vp->ptrs[i];
        if (!ptr[t])
            return refuse(CUDNN_STATUS_BAD_PARAM, "%s: no data pointer for tensor uid %lld", api, (long long)plan->tuid[t]);
        if ((uintptr_t)ptr[t] % (uintptr_t)plan->talign[t])
            return refuse(CUDNN_STATUS_BAD_PARAM, "%s: tensor uid %lld at %p is not aligned to its %lld bytes", api,
                          (long long)plan->tuid[t], ptr[t], (long long)plan->talign[t]);
    }
    if (plan->workspace > 0 && !vp->ws)
        return refuse(CUDNN_STATUS_BAD_PARAM, "%s: the plan needs %lld bytes of workspace, the variant pack has none", api,
                      (long long)plan->workspace);
    const Geom g = plan->geom;
    const size_t eb = elem_bytes(g.type);
    const int64_t xd[4] = {g.N, g.C, g.H, g.W}, wd[4] = {g.K, g.C, g.R, g.S}, yd[4] = {g.N, g.K, g.P, g.Q};
    const size_t xb = (size_t)be_extent(xd, g.xs) * eb, wb = (size_t)be_extent(wd, g.fs) * eb,
                 yb = (size_t)be_extent(yd, g.ys) * eb;
    const void *xp = ptr[0], *wp = ptr[1];
    void *yp = (void *)ptr[2], *ws = vp->ws;
    const size_t ws_bytes = (size_t)plan->workspace;
    const Operand ops[] = {{yp, yb, "y"}, {xp, xb, "x"}, {wp, wb, "w"}};
    check_operands(api, ops, 3, ws, ws_bytes);
    const double a = plan->alpha, b = plan->beta;
    cudasim::enqueue(handle->stream, [g, a, b, xp, wp, yp, xb, wb, yb, ws, ws_bytes, api]() {
        const Operand o[] = {{yp, yb, "y"}, {xp, xb, "x"}, {wp, wb, "w"}};
        check_operands(api, o, 3, ws, ws_bytes);
        if (ws_bytes) scribble(ws, ws_bytes);
        run_forward(g, xp, wp, yp, a, b);
    });
    return CUDNN_STATUS_SUCCESS;
}

} // extern "C"
