/* cuda_common.cuh: what every CUDA file of the backend shares.
 *
 *  - the per-device state (stream, cuBLAS / cuBLASLt / cuDNN handles, one growable workspace,
 *    the precision mode), reached through cu_cur(): the op table's functions take no context
 *    argument, so the state is the one sd_backend_cuda(ordinal) bound to the calling thread;
 *  - the check macros (CUDA_CHECK, CUBLAS_CHECK, CUDNN_CHECK, LAUNCH_CHECK) that turn a failure
 *    into sd_fail(SD_ERR_DEVICE / SD_ERR_OOM, "file:line: call failed: reason") and return it;
 *  - launch helpers and small device functions (warp reductions, activations);
 *  - the internal entry points each .cu file implements (cu_* functions), assembled into the
 *    sd_backend table by cuda_backend.cu.
 *
 * Every pointer an op receives is dense F32 device memory (backend.h); shapes are the op's
 * integers. All work is queued on the state's stream; nothing synchronises except download,
 * all_finite, synchronize and the workspace growth (which must free a buffer still in use). */
#ifndef SD_CUDA_COMMON_CUH
#define SD_CUDA_COMMON_CUH

/* cuda_runtime.h: streams, events, memory, graphs, kernel launches. */
#include <cuda_runtime.h>
/* cuda_bf16.h: __nv_bfloat16 / __nv_bfloat162 conversions for fast mode's tensor-core kernels. */
#include <cuda_bf16.h>
/* cuda_fp16.h: __half, the storage of fast mode's fp16 activations (sd_f16_ops), and their
 * tensor-core operand type. */
#include <cuda_fp16.h>
/* cublas_v2.h: cublasGemmEx / cublasGemmStridedBatchedEx (projections, attention maps). */
#include <cublas_v2.h>
/* cublasLt.h: cublasLtMatmul with a bias epilogue (linear layers). */
#include <cublasLt.h>
/* cudnn.h: the legacy convolution API (forward, backward data, backward filter). */
#include <cudnn.h>

#include <stdint.h>
#include <stdlib.h> /* getenv (cu_env_flag) */
#include <stddef.h>
#include <string.h> /* the simulator's cp.async: memcpy */

extern "C" {
#include "sd/backend.h"
#include "sd/core.h"
#include "sd/device.h"
}

/* ------------------------------------------------------------------------------------------------
 * Per-device state
 * --------------------------------------------------------------------------------------------- */

#define CU_MAX_DEVICES 16
#define CU_CONV_CACHE 128 /* distinct convolution geometries remembered per device */
#define CU_LT_CACHE 256   /* distinct linear shapes remembered per device */

struct cu_conv_plan; /* conv.cu */
struct cu_lt_plan;   /* gemm.cu */

struct cu_state {
    int ordinal;
    int ready;                   /* handles created */
    cudaDeviceProp prop;
    cudaStream_t stream;         /* every op of this device runs here */
    cublasHandle_t blas;
    cublasLtHandle_t lt;
    cudnnHandle_t dnn;
    void *blas_ws;               /* cuBLAS's own workspace (set once: capture-safe) */
    size_t blas_ws_bytes;
    void *lt_ws;                 /* cuBLASLt workspace (fixed size, passed per call) */
    size_t lt_ws_bytes;
    void *ws;                    /* general workspace: padded conv inputs, cuDNN, attention chunks */
    size_t ws_bytes;
    uint64_t ws_generation; /* reallocations of ws (sd_cuda_workspace_generation) */
    void *scratch;               /* 4 KiB of small device results (all_finite flag, partial sums) */
    unsigned *grid_done;         /* cu_last_arrival's counters, 1 + CU_GRID_PART_COUNTERS: 0 between kernels */
    sd_precision precision;
    cublasComputeType_t fast_gemm; /* compute type of fast mode (SD_FAST_GEMM: bf16 | tf32 | fp16) */
    int conv_algo;                 /* fast mode: sd_conv_algo, how cuDNN's algorithms are chosen (SD_CONV_ALGO) */
    int gemm_algo;                 /* fast mode: sd_gemm_algo, how cuBLASLt's linear algorithms are chosen (SD_GEMM_ALGO) */
    int conv_gemm;                 /* fast mode: sd_conv_gemm, small images as im2col + GEMM (SD_CONV_GEMM) */
    int conv_winograd;             /* sd_conv_winograd: 3x3 convolutions by Winograd F(2x2, 3x3) or F(4x4, 3x3) */
    int flash_blocks_per_sm;       /* fp16 flash attention at head dims <= 48: 2 (default) or 1
                                    * (SD_FLASH_BLOCKS_PER_SM; attention.cu, fa_async_smem) */
    int flash_bwd_blocks_per_sm;   /* fast flash attention backward at head dims <= 48: 1 (default) or 2
                                    * (SD_FLASH_BWD_BLOCKS_PER_SM; attention_backward.cu, fb_min_blocks) */
    int pdl;                       /* our kernels by programmatic dependent launch (SD_CUDA_PDL; sm_90 and
                                    * later; CU_PDL_ENTRY above) */
    int capturing;               /* inside sd_cuda_graph_begin/end: no allocation allowed */
    cudaEvent_t ev_start, ev_stop;
    struct cu_conv_plan *conv_plans; /* CU_CONV_CACHE entries, conv.cu */
    int n_conv_plans;
    struct cu_lt_plan *lt_plans;     /* CU_LT_CACHE entries, gemm.cu */
    int n_lt_plans;
};

/* The state bound to the calling thread (the last one sd_backend_cuda opened when this thread
 * never opened one). Never NULL once a backend was opened; the table is unreachable before. */
cu_state *cu_cur();

/* A workspace of at least `bytes` (256-byte aligned), grown when needed. Growing synchronises
 * the stream (the old buffer may still be read by queued kernels) and is refused while a CUDA
 * graph is being captured. NULL with the error set on failure. */
void *cu_workspace(size_t bytes);

/* Whether the environment variable `name` is set to something other than "" or "0" (a log switch
 * such as SD_CUDNN_LOG), read once into *cache (-1 before). */
static inline int cu_env_flag(const char *name, int *cache) {
    if (*cache < 0) {
        const char *e = getenv(name);
        *cache = e && *e && strcmp(e, "0") != 0;
    }
    return *cache;
}

/* The clock of the per-shape tuning (conv.cu's SD_CONV_ALGO=tune, gemm.cu's SD_GEMM_ALGO=tune):
 * time(s, run) runs `run` (true when it ran) once to warm up, then CU_TUNE_RUNS times queued behind
 * sd_cuda_hold's spinning kernel, between two CUDA events, and gives the milliseconds per run (-1
 * when a run or the timing failed: that candidate is left out). Behind the hold the runs go back to
 * back as in a replayed CUDA graph, so the events time the GPU's work, not the host's launches,
 * which would count against the ways with more host work per call at the small shapes. Not inside
 * a capture. */
#define CU_TUNE_RUNS 3
#define CU_TUNE_HOLD_US 200.0
struct cu_tune_timer {
    cudaEvent_t a = nullptr, b = nullptr;
    cudaError_t init() {
        cudaError_t e = cudaEventCreate(&a);
        return e == cudaSuccess ? cudaEventCreate(&b) : e;
    }
    ~cu_tune_timer() {
        if (a) cudaEventDestroy(a);
        if (b) cudaEventDestroy(b);
    }
    template <typename Run> float time(cu_state *s, Run run) {
        if (!run()) return -1.0f;
        if (sd_cuda_hold(CU_TUNE_HOLD_US) != SD_OK) {
            sd_clear_error();
            return -1.0f;
        }
        if (cudaEventRecord(a, s->stream) != cudaSuccess) return -1.0f;
        for (int i = 0; i < CU_TUNE_RUNS; i++)
            if (!run()) return -1.0f;
        float ms = -1.0f;
        if (cudaEventRecord(b, s->stream) != cudaSuccess || cudaEventSynchronize(b) != cudaSuccess ||
            cudaEventElapsedTime(&ms, a, b) != cudaSuccess)
            return -1.0f;
        return ms / CU_TUNE_RUNS;
    }
};

/* Rounds up to the 256-byte alignment workspace carving uses. */
static inline size_t cu_align(size_t n) { return (n + 255) & ~(size_t)255; }

/* ------------------------------------------------------------------------------------------------
 * Error checks: each returns an sd_status from the enclosing function on failure.
 * --------------------------------------------------------------------------------------------- */

sd_status cu_fail_cuda(cudaError_t err, const char *file, int line, const char *call);
sd_status cu_fail_cublas(cublasStatus_t st, const char *file, int line, const char *call);
sd_status cu_fail_cudnn(cudnnStatus_t st, const char *file, int line, const char *call);

#define CUDA_CHECK(call)                                                                           \
    do {                                                                                           \
        cudaError_t cu_err_ = (call);                                                              \
        if (cu_err_ != cudaSuccess) return cu_fail_cuda(cu_err_, __FILE__, __LINE__, #call);      \
    } while (0)

#define CUBLAS_CHECK(call)                                                                         \
    do {                                                                                           \
        cublasStatus_t cu_st_ = (call);                                                            \
        if (cu_st_ != CUBLAS_STATUS_SUCCESS)                                                       \
            return cu_fail_cublas(cu_st_, __FILE__, __LINE__, #call);                              \
    } while (0)

#define CUDNN_CHECK(call)                                                                          \
    do {                                                                                           \
        cudnnStatus_t cu_st_ = (call);                                                             \
        if (cu_st_ != CUDNN_STATUS_SUCCESS)                                                        \
            return cu_fail_cudnn(cu_st_, __FILE__, __LINE__, #call);                               \
    } while (0)

/* After a <<<...>>> launch: catches bad configurations (too much shared memory, a grid too large)
 * at once; faults inside a kernel surface at the next synchronising call, unless the environment
 * sets SD_CUDA_DEBUG_SYNC=1: then every launch is followed by a stream synchronisation (outside
 * graph capture), so a fault is reported with the file, line and name of the kernel that caused it. */
extern int cu_debug_sync;
#define LAUNCH_CHECK(what)                                                                         \
    do {                                                                                           \
        CUDA_CHECK(cudaGetLastError());                                                            \
        if (cu_debug_sync && !cu_cur()->capturing) {                                               \
            cudaError_t cu_sync_err_ = cudaStreamSynchronize(cu_cur()->stream);                    \
            if (cu_sync_err_ != cudaSuccess)                                                       \
                return cu_fail_cuda(cu_sync_err_, __FILE__, __LINE__, "kernel " what);             \
        }                                                                                          \
    } while (0)

/* Kernel launches and dynamic shared memory are written through these two macros so that the same
 * source also builds for the host simulator (tools/cudasim, -DSD_CUDA_SIM), which runs every kernel
 * on the CPU in CI:
 *   CU_LAUNCH(kernel, grid, block, smem_bytes, stream)(args...)   is  kernel<<<grid, block, smem, stream>>>(args...)
 *   CU_DYNAMIC_SHARED(type, name);                                  is  extern __shared__ type name[]; */
#ifdef SD_CUDA_SIM
#define CU_LAUNCH(kernel, grid, block, smem, stream)                                                 \
    cudasim::make_launcher(kernel, dim3(grid), dim3(block), (size_t)(smem), stream, #kernel)
#define CU_DYNAMIC_SHARED(type, name) CU_SIM_DYNAMIC_SHARED(type, name)
#else
#define CU_LAUNCH(kernel, grid, block, smem, stream) cu_launcher(kernel, dim3(grid), dim3(block), (size_t)(smem), stream)
#define CU_DYNAMIC_SHARED(type, name) extern __shared__ type name[]
#endif

/* Programmatic dependent launch (SD_CUDA_PDL=1, sm_90 and later; off by default until a GPU session
 * has timed it against the plain launches: bench rows "+pdl").
 *
 * Why: in a replayed graph of several hundred kernels, each kernel's blocks are only scheduled once
 * the previous kernel has drained. Launched with cudaLaunchAttributeProgrammaticStreamSerialization,
 * a kernel's blocks may be scheduled while its predecessor still runs its last wave, and wait on the
 * GPU (griddepcontrol.wait) instead of behind the launch.
 *
 * The rule that keeps it correct: every kernel of this backend starts with CU_PDL_ENTRY(), before
 * it reads or writes any global memory. Its wait returns once the previous grid in the stream has
 * completed and its writes are visible (at once when the kernel was not launched that way), so each
 * kernel still sees the whole stream's work before it as done: the previous kernel finished only
 * after its own wait. Its launch_dependents then lets the next kernel's blocks be scheduled as soon
 * as all of this grid's blocks are running; they wait in turn. Library kernels (cuBLAS, cuDNN) are
 * launched without the attribute and keep the full ordering. tests/unit/test_kernel_sources.c fails
 * on a __global__ function whose body does not start with it; test_device_parity compares PDL runs
 * with plain ones bit for bit on a GPU. */
#if !defined(SD_CUDA_SIM) && defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define CU_PDL_ENTRY() asm volatile("griddepcontrol.wait;\n\tgriddepcontrol.launch_dependents;" ::: "memory")
#else
#define CU_PDL_ENTRY() ((void)0)
#endif

#ifndef SD_CUDA_SIM
/* Whether launches on `stream` carry the programmatic attribute: the calling thread's device has
 * PDL on (cu_state.pdl) and `stream` is its stream (cuda_backend.cu). */
int cu_pdl_on_stream(cudaStream_t stream);

/* CU_LAUNCH's launcher: kernel<<<grid, block, smem, stream>>>(args...), or the same through
 * cudaLaunchKernelEx with the programmatic attribute where cu_pdl_on_stream says so. A launch error
 * is left for cudaGetLastError (LAUNCH_CHECK), as the <<<>>> form leaves it. */
template <typename... Params> struct cu_launch {
    void (*kernel)(Params...);
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    template <typename... Args> void operator()(Args &&...args) const {
        if (!cu_pdl_on_stream(stream)) {
            kernel<<<grid, block, smem, stream>>>(static_cast<Args &&>(args)...);
            return;
        }
        cudaLaunchAttribute attr[1];
        attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
        attr[0].val.programmaticStreamSerializationAllowed = 1;
        cudaLaunchConfig_t cfg = {};
        cfg.gridDim = grid;
        cfg.blockDim = block;
        cfg.dynamicSmemBytes = smem;
        cfg.stream = stream;
        cfg.attrs = attr;
        cfg.numAttrs = 1;
        (void)cudaLaunchKernelEx(&cfg, kernel, static_cast<Args &&>(args)...);
    }
};
template <typename... Params>
static inline cu_launch<Params...> cu_launcher(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem,
                                               cudaStream_t stream) {
    return cu_launch<Params...>{kernel, grid, block, smem, stream};
}
#endif

/* Propagates an sd_status (same as SD_TRY, kept local for readability in .cu files). */
#define CU_TRY(expr) SD_TRY(expr)

/* ------------------------------------------------------------------------------------------------
 * Launch geometry
 * --------------------------------------------------------------------------------------------- */

/* Blocks for a grid-stride loop over n items with `threads` per block: enough to fill the GPU
 * several times over, never more than needed. */
static inline unsigned cu_blocks(int64_t n, int threads) {
    int64_t b = (n + threads - 1) / threads;
    if (b < 1) b = 1;
    if (b > 132 * 32) b = 132 * 32; /* grid-stride loops cover the rest */
    return (unsigned)b;
}

/* Rows x columns work (a bias per row of an NCHW tensor, one image per row of an unfold, ...):
 * blockIdx.y walks the rows, blocks along x the columns, both grid-stride (CU_ROWS_COLS), so a row's
 * constants are computed once per thread and no element's index needs a division: a 64-bit
 * division or modulo per element (tens of instructions) made such kernels compute-bound at a
 * fraction of the memory bandwidth. */
static inline dim3 cu_rows_grid(int64_t rows, int64_t cols, int threads) {
    const int64_t by = rows < 1 ? 1 : rows > 65535 ? 65535 : rows;
    return dim3(cu_blocks(cols, threads), (unsigned)by);
}
/* Threads per block for rows of `cols` elements: 256, or fewer whole warps for short rows (an 8x8
 * image's 64 pixels would leave six of eight warps idle). */
static inline int cu_row_threads(int64_t cols) { return cols >= 256 ? 256 : cols <= 32 ? 32 : (int)((cols + 31) / 32) * 32; }
/* Grid-stride loop over [0, n) along x: the kernels' element loops, whatever the grid's size. */
#define GRID_STRIDE(i, n)                                                                          \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n);                      \
         i += (int64_t)gridDim.x * blockDim.x)

#define CU_ROWS_COLS(r, c, rows, cols)                                                             \
    for (int64_t r = blockIdx.y; r < (rows); r += gridDim.y)                                       \
        GRID_STRIDE(c, cols)

/* ------------------------------------------------------------------------------------------------
 * Device helpers
 * --------------------------------------------------------------------------------------------- */

__device__ __forceinline__ float cu_warp_sum(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ double cu_warp_sum_d(double v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cu_warp_max(float v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
    return v;
}

/* Sums one double per thread over a block of blockDim.x threads (a multiple of 32, <= 1024);
 * every thread gets the total. `smem` holds 32 doubles. */
__device__ __forceinline__ double cu_block_sum_d(double v, double *smem) {
    const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = cu_warp_sum_d(v);
    __syncthreads(); /* smem may still be read by a previous call */
    if (lane == 0) smem[warp] = v;
    __syncthreads();
    double t = lane < nwarps ? smem[lane] : 0.0;
    return cu_warp_sum_d(t);
}

/* Whether this block is the last of `arrivals` blocks to get to `counter`: a reduction's final
 * step run by that block once the others have written their partial results to global memory, in
 * place of a second kernel (a launch fewer). Every thread of every counted block calls it after
 * writing its share. Each block fences its writes, then one thread counts the block; the block that
 * brings the count to `arrivals` sees the others' writes (read them with __ldcg: not from a stale
 * L1 line) and sets the counter back to 0 for the next kernel, which on the device's one stream
 * cannot start before this one ends. The counters are cu_state.grid_done's: [0] for a whole grid
 * (cu_last_block), [1 + i] for a part of one (CU_GRID_PART_COUNTERS: an image's blocks, a channel
 * tile's), so that a part's last block can finish that part while the other parts still run, and
 * a kernel may count its part-finishers again on [0]. */
#define CU_GRID_PART_COUNTERS 65536 /* parts per grid: a grid dimension's most blocks */
__device__ __forceinline__ bool cu_last_arrival(unsigned *counter, unsigned arrivals) {
    __shared__ unsigned last;
    __threadfence(); /* this thread's writes, before the block is counted */
    __syncthreads();
    if (threadIdx.x == 0) {
        last = atomicAdd(counter, 1u) == arrivals - 1;
        if (last) *counter = 0; /* every block has counted itself */
    }
    __syncthreads();
    if (last) __threadfence();
    return last;
}

/* Whether this block is the last of its grid to get here (cu_last_arrival on grid_done[0]). */
__device__ __forceinline__ bool cu_last_block(unsigned *done) {
    return cu_last_arrival(done, gridDim.x * gridDim.y * gridDim.z);
}

/* Tensor cores, mma.sync.m16n8k16 with fp32 accumulation, for two 16-bit element types E:
 * __nv_bfloat16 (fast mode's F32 kernels round their fp32 operands to bf16, which keeps fp32's
 * range) and __half (fp16 activations, used as stored; 3 more mantissa bits than bf16). The
 * helpers below take E as a template argument (deduced from the shared-memory pointer where
 * there is one), so a kernel templated over E is written once.
 *
 * PTX's fragment layout, the same for both types: with g = lane / 4 and t = lane % 4, the A
 * fragment (16x16, row-major) is a[0] = A[g][2t, 2t+1],
 * a[1] = A[g+8][2t, 2t+1], a[2] = A[g][8+2t, 9+2t], a[3] = A[g+8][8+2t, 9+2t]; the B fragment
 * (16x8) is b0 = B[2t, 2t+1][g], b1 = B[8+2t, 9+2t][g] (so from an n-major copy Bt[n][k]: two
 * 32-bit loads at Bt[g][2t] and Bt[g][8+2t]); the C fragment (16x8) is c[0], c[1] = C[g][2t, 2t+1],
 * c[2], c[3] = C[g+8][2t, 2t+1]. Two neighbouring C tiles (n-tiles 2j and 2j+1) packed to E are
 * exactly the A fragment of columns [16j, 16j+16): a product's result feeds the next product from
 * registers (flash attention's P·V). */
template <typename E> struct cu_tensor_core;

template <> struct cu_tensor_core<__nv_bfloat16> {
    /* two floats rounded to bf16 in one register, lo in the low half */
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi); /* .x (low half) = lo */
        return *reinterpret_cast<uint32_t *>(&v);
    }
    /* c[0..3] += A(16x16, fragment a[0..3]) · B(16x8, fragment b0, b1) */
    static __device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
#ifdef SD_CUDA_SIM
        cudasim::mma_m16n8k16_bf16(c, a, b0, b1); /* the same fragment layout, computed on the host */
#else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
    /* c[0..3] += A(16x8: a0, a1, the k-columns 0..7 of a 16x16 fragment's a[0], a[1]) · B(8x8: b0),
     * mma.sync.m16n8k8: the last 8 of a head dim that is an odd multiple of 8 (SD's 40) without
     * multiplying 8 padding zeros. The simulator runs it as m16n8k16 with zero upper halves. */
    static __device__ __forceinline__ void mma_k8(float *c, uint32_t a0, uint32_t a1, uint32_t b0) {
#ifdef SD_CUDA_SIM
        const uint32_t a[4] = {a0, a1, 0u, 0u};
        cudasim::mma_m16n8k16_bf16(c, a, b0, 0u);
#else
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.bf16.bf16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(b0));
#endif
    }
};

template <> struct cu_tensor_core<__half> {
    static __device__ __forceinline__ uint32_t pack(float lo, float hi) {
        __half2 v = __floats2half2_rn(lo, hi); /* .x (low half) = lo */
        return *reinterpret_cast<uint32_t *>(&v);
    }
    static __device__ __forceinline__ void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
#ifdef SD_CUDA_SIM
        cudasim::mma_m16n8k16_f16(c, a, b0, b1);
#else
        asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#endif
    }
    static __device__ __forceinline__ void mma_k8(float *c, uint32_t a0, uint32_t a1, uint32_t b0) {
#ifdef SD_CUDA_SIM
        const uint32_t a[4] = {a0, a1, 0u, 0u};
        cudasim::mma_m16n8k16_f16(c, a, b0, 0u);
#else
        asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.f16.f16.f32 "
                     "{%0, %1, %2, %3}, {%4, %5}, {%6}, {%0, %1, %2, %3};\n"
                     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                     : "r"(a0), "r"(a1), "r"(b0));
#endif
    }
};

/* Two neighbouring 16-bit elements as one register (the lower-indexed one in the low half). */
template <typename E> __device__ __forceinline__ uint32_t cu_ld_u32(const E *p) {
    return *reinterpret_cast<const uint32_t *>(p);
}

/* The A fragment of columns [16j, 16j+16) from the fp32 C fragments of n-tiles 2j (c_lo) and
 * 2j+1 (c_hi) of the same rows, rounded to E. */
template <typename E> __device__ __forceinline__ void cu_a_frag_from_c(uint32_t a[4], const float *c_lo, const float *c_hi) {
    a[0] = cu_tensor_core<E>::pack(c_lo[0], c_lo[1]);
    a[1] = cu_tensor_core<E>::pack(c_lo[2], c_lo[3]);
    a[2] = cu_tensor_core<E>::pack(c_hi[0], c_hi[1]);
    a[3] = cu_tensor_core<E>::pack(c_hi[2], c_hi[3]);
}

/* Max / sum over the quad of lanes 4g .. 4g+3, the four lanes holding one fragment row. */
__device__ __forceinline__ float cu_quad_max(float v) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 1));
    return fmaxf(v, __shfl_xor_sync(0xffffffffu, v, 2));
}
/* The sum of v over each aligned group of N lanes (N a power of two up to 32), every lane of the
 * group getting it, by an xor tree: a fixed order. */
template <int N> __device__ __forceinline__ double cu_lanes_sum_d(double v) {
#pragma unroll
    for (int o = N / 2; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    return v;
}

__device__ __forceinline__ float cu_quad_sum(float v) {
    v += __shfl_xor_sync(0xffffffffu, v, 1);
    return v + __shfl_xor_sync(0xffffffffu, v, 2);
}

/* The A fragment of rows [r0, r0+16) and columns [16·kk, 16·kk+16) of a row-major E array. */
template <typename E>
__device__ __forceinline__ void cu_load_a_frag(uint32_t a[4], const E *s, int stride, int r0, int kk) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    a[0] = cu_ld_u32(&s[(r0 + g) * stride + kk * 16 + 2 * t]);
    a[1] = cu_ld_u32(&s[(r0 + g + 8) * stride + kk * 16 + 2 * t]);
    a[2] = cu_ld_u32(&s[(r0 + g) * stride + kk * 16 + 8 + 2 * t]);
    a[3] = cu_ld_u32(&s[(r0 + g + 8) * stride + kk * 16 + 8 + 2 * t]);
}

/* c += A · B for the B tile whose n-major copy has rows [n0, n0+8) and k-columns [k0, k0+16). */
template <typename E>
__device__ __forceinline__ void cu_mma_bt(float *c, const uint32_t *a, const E *bt, int stride, int n0, int k0) {
    const int g = (threadIdx.x & 31) >> 2, t = threadIdx.x & 3;
    const E *row = &bt[(n0 + g) * stride + k0 + 2 * t];
    cu_tensor_core<E>::mma(c, a, cu_ld_u32(row), cu_ld_u32(row + 8));
}

/* 2^x on the special-function unit, subnormal results flushed to zero (ex2.approx.ftz.f32, about
 * 2 ulp): the flash kernels' softmax, one instruction per score. exp2f compiles to the same
 * MUFU.EX2 plus the range fix-ups that keep subnormal results (2^x below 2^-126: probabilities
 * that add nothing to a row's sum), which made up a third of the softmax's instructions. */
__device__ __forceinline__ float cu_exp2_ftz(float x) {
#ifdef SD_CUDA_SIM
    const float y = exp2f(x);
    return y < 1.17549435e-38f ? 0.0f : y;
#else
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#endif
}

/* 1/x on the special-function unit (rcp.approx.ftz.f32, about 1 ulp; 1/inf = 0). */
__device__ __forceinline__ float cu_rcp_approx(float x) {
#ifdef SD_CUDA_SIM
    return 1.0f / x;
#else
    float y;
    asm("rcp.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
    return y;
#endif
}

/* ldmatrix.sync.aligned.m8n8.x4[.trans].shared.b16: four 8x8 matrices of 16-bit elements from
 * shared memory, lanes 8i .. 8i+7 giving the addresses of matrix i's 8 rows (16 bytes each, 16-byte
 * aligned). Lane (g = lane / 4, t = lane mod 4) receives r[i] = matrix i's elements (row g, columns
 * 2t, 2t+1); with TRANS, (rows 2t, 2t+1, column g): the B fragment of a row-major [k][n] tile. */
template <bool TRANS> __device__ __forceinline__ void cu_ldmatrix_x4(uint32_t r[4], const void *row) {
#ifdef SD_CUDA_SIM
    uint64_t *slots = cudasim::warp_slots();
    const unsigned lane = cudasim::lane_id();
    slots[lane] = (uint64_t)(uintptr_t)row;
    cudasim::warp_sync();
    const int g = (int)lane >> 2, t = (int)lane & 3;
    for (int i = 0; i < 4; i++) {
        uint16_t lo, hi;
        if (TRANS) {
            lo = ((const uint16_t *)(uintptr_t)slots[8 * i + 2 * t])[g];
            hi = ((const uint16_t *)(uintptr_t)slots[8 * i + 2 * t + 1])[g];
        } else {
            lo = ((const uint16_t *)(uintptr_t)slots[8 * i + g])[2 * t];
            hi = ((const uint16_t *)(uintptr_t)slots[8 * i + g])[2 * t + 1];
        }
        r[i] = (uint32_t)lo | ((uint32_t)hi << 16);
    }
#else
    const unsigned a = (unsigned)__cvta_generic_to_shared(row);
    if (TRANS)
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
    else
        asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
                     : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
                     : "r"(a));
#endif
}

/* c[nd] += A · B for a warp's 16 rows and ND n-tiles of 8 columns, where A is the product of an
 * earlier step still in C fragments (a_src: NT n-tiles of 8 columns; tiles 2j and 2j+1 packed to E
 * are the A fragment of k-columns [16j, 16j+16)) and B a row-major [k][n] tile in shared memory
 * (row stride bs, 16-byte rows) whose B fragments of n-tiles nd and nd+1 one ldmatrix.x4.trans
 * gives: matrices (k +0, n-tile nd), (k +8, nd), (+0, nd+1), (+8, nd+1). ND is a head dim's
 * 8-wide slices: attention's O += P V, its backward's dQ += dS K, dV += Pᵀ dO, dK += dSᵀ Q. An odd
 * ND (SD's 40 = 5 slices) skips the last pair's second product: the rows of b must then be
 * readable 8 columns further (the 16-wide padding of the tiles), though nothing uses those. */
template <int ND, int NT, typename E>
__device__ __forceinline__ void cu_mma_c_by_rows(float (*c)[4], const float (*a_src)[4], const E *b, int bs) {
    static_assert(NT % 2 == 0, "A fragments come from pairs of C tiles");
    const int lane = threadIdx.x & 31, mi = lane >> 3, mr = lane & 7; /* ldmatrix: row mr of matrix mi */
#pragma unroll
    for (int kk2 = 0; kk2 < NT / 2; kk2++) {
        uint32_t a[4];
        cu_a_frag_from_c<E>(a, a_src[2 * kk2], a_src[2 * kk2 + 1]);
#pragma unroll
        for (int nd = 0; nd < ND; nd += 2) {
            uint32_t f[4];
            cu_ldmatrix_x4<true>(f, b + (kk2 * 16 + (mi & 1) * 8 + mr) * bs + nd * 8 + (mi >> 1) * 8);
            cu_tensor_core<E>::mma(c[nd], a, f[0], f[1]);
            if (nd + 1 < ND) cu_tensor_core<E>::mma(c[nd + 1], a, f[2], f[3]);
        }
    }
}

/* A head dim's 8-wide slices NS (SD v1.x: 40 -> 5, 80 -> 10, 160 -> 20) as the tensor-core kernels
 * lay them out: DK 16-wide slices (the shared tiles' padded width, 16·DK), of which the last is
 * half used when NS is odd; the products then end with one m16n8k8 instead of an m16n8k16 over 8
 * padding zeros, and the outputs have NS n-tiles instead of 2·DK (a sixth less work at 40). */
template <int NS> struct cu_head_slices {
    static constexpr int DK = (NS + 1) / 2;  /* 16-wide slices, the last one half used when NS is odd */
    static constexpr int full = NS / 2;      /* 16-wide slices used whole */
    static constexpr bool tail = NS % 2 != 0; /* one more 8-wide slice */
};

/* The scores' product for a warp's 16 rows and NT n-tiles of 8 columns (NT a multiple of 4):
 * s[nt] += A · Bᵀ, with A the warp's DK A fragments (head-dim slices) and B an n-major tile
 * (row stride rs, 16-byte rows): one ldmatrix.x4 gives the B fragments of n-tiles nt and nt+1 for
 * a 16-wide slice, matrices (rows nt, k +0), (nt, +8), (nt+1, +0), (nt+1, +8); for the half slice
 * of an odd NS, the k +0 matrices of four n-tiles, one m16n8k8 each. */
template <int NS, int NT, typename E>
__device__ __forceinline__ void cu_mma_scores(float (*s)[4], const uint32_t (*a)[4], const E *b, int rs) {
    typedef cu_head_slices<NS> H;
    static_assert(NT % 4 == 0, "n-tiles go in fours (the half slice's ldmatrix.x4)");
    const int lane = threadIdx.x & 31, mi = lane >> 3, mr = lane & 7; /* ldmatrix: row mr of matrix mi */
#pragma unroll
    for (int nt = 0; nt < NT; nt += 2)
#pragma unroll
        for (int kk = 0; kk < H::full; kk++) {
            uint32_t f[4];
            cu_ldmatrix_x4<false>(f, b + (nt * 8 + (mi >> 1) * 8 + mr) * rs + kk * 16 + (mi & 1) * 8);
            cu_tensor_core<E>::mma(s[nt], a[kk], f[0], f[1]);
            cu_tensor_core<E>::mma(s[nt + 1], a[kk], f[2], f[3]);
        }
    if constexpr (H::tail) {
#pragma unroll
        for (int nt = 0; nt < NT; nt += 4) {
            uint32_t f[4];
            cu_ldmatrix_x4<false>(f, b + ((nt + mi) * 8 + mr) * rs + H::full * 16);
#pragma unroll
            for (int i = 0; i < 4; i++) cu_tensor_core<E>::mma_k8(s[nt + i], a[H::full][0], a[H::full][1], f[i]);
        }
    }
}

/* cp.async.cg of 16 bytes from global to shared memory, or 16 zero bytes when !valid (the source
 * is then not read); completes at cu_cp_async_wait. The simulator copies at once. */
__device__ __forceinline__ void cu_cp_async16(void *smem, const void *gmem, bool valid) {
#ifdef SD_CUDA_SIM
    if (valid)
        memcpy(smem, gmem, 16);
    else
        memset(smem, 0, 16);
#else
    const unsigned s = (unsigned)__cvta_generic_to_shared(smem);
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(gmem), "r"(valid ? 16 : 0));
#endif
}
/* Closes the group of copies issued since the last commit. */
__device__ __forceinline__ void cu_cp_async_commit() {
#ifndef SD_CUDA_SIM
    asm volatile("cp.async.commit_group;\n" ::);
#endif
}
/* Waits until at most N of this thread's committed groups are still in flight. */
template <int N> __device__ __forceinline__ void cu_cp_async_wait() {
#ifndef SD_CUDA_SIM
    asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
#endif
}

/* cp.async copies of tiles of a fixed shape, ROWS rows of PIECES 16-byte pieces (row stride ld
 * elements in global memory, RS in shared memory), made again and again from one matrix: the flash
 * kernels' K/V tile per step. Each thread's pieces (i = tid + j·THREADS) and their offsets are
 * worked out once; a copy then costs a 64-bit add, a comparison and the cp.async per piece. The
 * run-time-shaped row copy it replaced (a division and 64-bit row arithmetic per piece) cost these
 * kernels a quarter of their instructions; other shapes load element by element. */
template <int RS, int THREADS, int ROWS, int PIECES, typename E> struct cu_tile_copier {
    static constexpr int per = 16 / (int)sizeof(E), total = ROWS * PIECES;
    static constexpr int J = (total + THREADS - 1) / THREADS; /* pieces per thread, the last maybe absent */
    int goff[J], soff[J]; /* element offsets of piece j in the global tile and in the shared one */
    int row[J];           /* its row, -1 when the thread has no piece j */
    __device__ __forceinline__ cu_tile_copier(int tid, int ld) {
#pragma unroll
        for (int j = 0; j < J; j++) {
            const int i = tid + j * THREADS, r = i / PIECES, c = (i - r * PIECES) * per;
            row[j] = i < total ? r : -1;
            goff[j] = r * ld + c; /* ld < 2^31 / ROWS: the callers check */
            soff[j] = r * RS + c;
        }
    }
    /* Rows [0, valid) of the tile at src[i] into dst[i] for each of N matrices of the same layout
     * (a flash kernel's K and V tiles); rows from `valid` on are zero-filled. Each piece's test and
     * offset serve all N copies (an absent row reads nothing: its copy points at the tile's start). */
    template <int N>
    __device__ __forceinline__ void copy_n(E *const (&dst)[N], const E *const (&src)[N], int valid) const {
#pragma unroll
        for (int j = 0; j < J; j++) {
            if (total % THREADS != 0 && row[j] < 0) continue;
            const bool in = row[j] < valid;
            const int go = in ? goff[j] : 0;
#pragma unroll
            for (int i = 0; i < N; i++) cu_cp_async16(dst[i] + soff[j], src[i] + go, in);
        }
    }
    __device__ __forceinline__ void copy(E *dst, const E *src, int valid) const {
        E *const d[1] = {dst};
        const E *const s[1] = {src};
        copy_n<1>(d, s, valid);
    }
};

/* How many of a tile's `rows` rows from r0 lie before `limit` (the copier zero-fills the others).
 * r0 < limit: the flash kernels queue only tiles that start inside their matrix. */
__device__ __forceinline__ int cu_rows_left(int64_t limit, int64_t r0, int rows) {
    return (int)(limit - r0 < rows ? limit - r0 : rows);
}

/* 16 bytes of T (4 floats or 8 halves) moved at once: the vectorised path of memory-bound kernels,
 * whose scalar 2- or 4-byte loads leave too few bytes in flight per thread. Callers check that the
 * address is 16-byte aligned. */
template <typename T> struct cu_vec16 {
    static constexpr int n = 16 / (int)sizeof(T);
    alignas(16) T v[16 / sizeof(T)];
    __device__ __forceinline__ void load(const T *p) {
        *reinterpret_cast<float4 *>(v) = *reinterpret_cast<const float4 *>(p);
    }
    __device__ __forceinline__ void store(T *p) const {
        *reinterpret_cast<float4 *>(p) = *reinterpret_cast<const float4 *>(v);
    }
};
__host__ __device__ __forceinline__ bool cu_aligned16(const void *p) { return ((uintptr_t)p & 15) == 0; }


/* The activations exactly as the CPU backend writes them (float arithmetic, same formulas). */
__device__ __forceinline__ float cu_silu(float v) { return v / (1.0f + expf(-v)); }
__device__ __forceinline__ float cu_gelu(float v) { return 0.5f * v * (1.0f + erff(v * 0.70710678118654752f)); }
__device__ __forceinline__ float cu_sigmoid(float v) { return 1.0f / (1.0f + expf(-v)); }
/* d/dx of x·sigmoid(x) */
__device__ __forceinline__ float cu_silu_grad(float v) {
    const float s = cu_sigmoid(v);
    return s * (1.0f + v * (1.0f - s));
}
/* d/dx of 0.5·x·(1 + erf(x/√2)) = Φ(x) + x·φ(x) */
__device__ __forceinline__ float cu_gelu_grad(float v) {
    const float cdf = 0.5f * (1.0f + erff(v * 0.70710678118654752f));
    const float pdf = 0.39894228040143268f * expf(-0.5f * v * v);
    return cdf + v * pdf;
}

/* ------------------------------------------------------------------------------------------------
 * Storage types: kernels templated over float (F32 activations) and __half (fp16 activations)
 * load through cu_f32 and store through cu_store, so both compute in fp32 and the half variant
 * rounds each stored value once, to nearest even.
 * --------------------------------------------------------------------------------------------- */

__device__ __forceinline__ float cu_f32(float v) { return v; }
__device__ __forceinline__ float cu_f32(__half v) { return __half2float(v); }
__device__ __forceinline__ float cu_f32(__nv_bfloat16 v) { return __bfloat162float(v); }
__device__ __forceinline__ void cu_store(float *p, float v) { *p = v; }
__device__ __forceinline__ void cu_store(__half *p, float v) { *p = __float2half_rn(v); }
__device__ __forceinline__ void cu_store(__nv_bfloat16 *p, float v) { *p = __float2bfloat16_rn(v); }
/* a value copied between storage types: as it is within one type; F32 -> bf16 rounds to nearest even */
template <typename T> __device__ __forceinline__ void cu_put(T *p, T v) { *p = v; }
__device__ __forceinline__ void cu_put(__nv_bfloat16 *p, float v) { cu_store(p, v); }
/* Four consecutive values as floats: 16 bytes of F32, 8 of fp16 (moved as bits, then widened,
 * which is exact). p must be 4 values aligned (cu_aligned4v). */
__device__ __forceinline__ cu_vec16<float> cu_load4(const float *p) {
    cu_vec16<float> v;
    v.load(p);
    return v;
}
__device__ __forceinline__ cu_vec16<float> cu_load4(const __half *p) {
    const float2 raw = *reinterpret_cast<const float2 *>(p); /* 8 bytes: four halves */
    const __half2 *h = reinterpret_cast<const __half2 *>(&raw);
    cu_vec16<float> v;
    v.v[0] = __half2float(h[0].x), v.v[1] = __half2float(h[0].y);
    v.v[2] = __half2float(h[1].x), v.v[3] = __half2float(h[1].y);
    return v;
}
/* whether p may be read 4 values at a time (cu_load4) */
template <typename T> __host__ __device__ __forceinline__ bool cu_aligned4v(const T *p) {
    return ((uintptr_t)p & (4 * sizeof(T) - 1)) == 0;
}
/* sd_f16 (raw bits in the op table) <-> __half (the kernels' type): same 16 bits */
static inline const __half *cu_half(const sd_f16 *p) { return reinterpret_cast<const __half *>(p); }
static inline __half *cu_half(sd_f16 *p) { return reinterpret_cast<__half *>(p); }

/* NCHW rows (one per (image, channel), S values): y[r, s] = x[r, s] + b[r mod C] + v[r] + res[r, s],
 * each term optional (NULL), summed in fp32 in that order and rounded once to T; y may be x. A
 * convolution's epilogue (x = y) and the channel bias of an NCHW map (b and res NULL). One grid row
 * per tensor row (its constants loaded once), threads along it: 16-byte pieces where S and the
 * pointers allow (one 2- or 4-byte value per thread keeps too few bytes in flight for the memory's
 * rate), else one value each. */
template <typename T, int N>
__global__ void k_nchw_sum(const T *x, const float *b, const float *v, const T *res, T *y, int64_t C, int64_t S,
                           int64_t BC) {
    CU_PDL_ENTRY();
    typedef cu_vec16<T> V;
    const int64_t pieces = S / N;
    for (int64_t r = blockIdx.y; r < BC; r += gridDim.y) {
        const float bias = b ? b[r % C] : 0.0f, chan = v ? v[r] : 0.0f;
        GRID_STRIDE(i, pieces) {
            const int64_t at = r * S + i * N;
            if constexpr (N == V::n) {
                V in, add = {}, out;
                in.load(x + at);
                if (res) add.load(res + at);
#pragma unroll
                for (int k = 0; k < N; k++) {
                    float sum = cu_f32(in.v[k]);
                    if (b) sum += bias;
                    if (v) sum += chan;
                    if (res) sum += cu_f32(add.v[k]);
                    cu_store(&out.v[k], sum);
                }
                out.store(y + at);
            } else {
                static_assert(N == 1, "one value or one 16-byte piece");
                float sum = cu_f32(x[at]);
                if (b) sum += bias;
                if (v) sum += chan;
                if (res) sum += cu_f32(res[at]);
                cu_store(&y[at], sum);
            }
        }
    }
}

template <typename T>
static inline cudaError_t cu_nchw_sum(const T *x, const float *b, const float *v, const T *res, T *y, int64_t C,
                                      int64_t S, int64_t BC, cudaStream_t stream) {
    constexpr int n = cu_vec16<T>::n;
    if (S % n == 0 && cu_aligned16(x) && cu_aligned16(y) && (!res || cu_aligned16(res))) {
        const int threads = cu_row_threads(S / n);
        CU_LAUNCH((k_nchw_sum<T, n>), cu_rows_grid(BC, S / n, threads), threads, 0, stream)(x, b, v, res, y, C, S, BC);
    } else {
        const int threads = cu_row_threads(S);
        CU_LAUNCH((k_nchw_sum<T, 1>), cu_rows_grid(BC, S, threads), threads, 0, stream)(x, b, v, res, y, C, S, BC);
    }
    return cudaGetLastError();
}

/* Two adjacent values rounded to a 16-bit type, stored as one 4-byte word (p 4-byte aligned). */
__device__ __forceinline__ void cu_store2(__half *p, float a, float b) {
    *reinterpret_cast<__half2 *>(p) = __floats2half2_rn(a, b);
}
__device__ __forceinline__ void cu_store2(__nv_bfloat16 *p, float a, float b) {
    *reinterpret_cast<__nv_bfloat162 *>(p) = __floats2bfloat162_rn(a, b);
}

/* y = x rounded to T (fp16 or bf16), 4 values per thread where x is 16-byte and y 4-byte aligned
 * (cu_narrowing_vec), the last n mod 4 one by one: one 4-byte load per thread kept half the bytes
 * in flight the memory's rate needs, and a gradient step converts about 700 maps. */
template <typename T> __global__ void k_narrow_from_f32(const float *x, T *y, int64_t n, int vec) {
    CU_PDL_ENTRY();
    const int64_t n4 = vec ? n / 4 : 0;
    GRID_STRIDE(i, n4) {
        const float4 f = reinterpret_cast<const float4 *>(x)[i];
        cu_store2(y + 4 * i, f.x, f.y);
        cu_store2(y + 4 * i + 2, f.z, f.w);
    }
    GRID_STRIDE(j, n - 4 * n4) cu_store(&y[4 * n4 + j], x[4 * n4 + j]);
}
/* y = x widened from fp16, over this grid's x dimension: 4 values per thread where vec (x 4-byte, y
 * 16-byte aligned: cu_narrowing_vec(y, x)), the last n mod 4 one by one. k_f16_to_f32's body; the
 * attention backward's k_widen3 runs it for three tensors in one launch. */
__device__ __forceinline__ void cu_widen_f16(const __half *x, float *y, int64_t n, int vec) {
    const int64_t n4 = vec ? n / 4 : 0;
    GRID_STRIDE(i, n4) {
        const __half2 *x2 = reinterpret_cast<const __half2 *>(x + 4 * i);
        const __half2 lo = x2[0], hi = x2[1];
        reinterpret_cast<float4 *>(y)[i] =
            make_float4(__half2float(lo.x), __half2float(lo.y), __half2float(hi.x), __half2float(hi.y));
    }
    GRID_STRIDE(j, n - 4 * n4) y[4 * n4 + j] = __half2float(x[4 * n4 + j]);
}
/* Whether a conversion between F32 data at f32 and 16-bit data at narrow moves 4 values per thread. */
static inline int cu_narrowing_vec(const void *f32, const void *narrow) {
    return cu_aligned16(f32) && ((uintptr_t)narrow & 3) == 0;
}

/* Channels-last rows (one per pixel, C channels): y[r, c] = x[r, c] + b[c] + v[r / P, c] + res[r, c],
 * each term optional (NULL), summed in fp32 in that order and rounded once to T. y may be x. The
 * channel bias of a channels-last map (b NULL, P = pixels per image) and a convolution's epilogue
 * (x = y). One grid row per pixel row: its constants computed once, threads along the channels. */
template <typename T>
__global__ void k_channels_last_sum(const T *x, const float *b, const float *v, const T *res, T *y, int64_t rows,
                                    int64_t P, int64_t C) {
    CU_PDL_ENTRY();
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        const float *vb = v ? v + (r / P) * C : NULL;
        const T *xr = x + r * C, *rr = res ? res + r * C : NULL;
        T *yr = y + r * C;
        GRID_STRIDE(c, C) {
            float sum = cu_f32(xr[c]);
            if (b) sum += b[c];
            if (vb) sum += vb[c];
            if (rr) sum += cu_f32(rr[c]);
            cu_store(&yr[c], sum);
        }
    }
}

/* The same sum over the whole map as one flat run of 16-byte pieces (8 halves or 4 floats: C a
 * multiple of the piece, x, res and y 16-byte aligned, at most 2^31 - 1 pieces). A thread per
 * element of a 2-byte type keeps too few bytes in flight to reach the memory's rate (the
 * channels-last GroupNorm's element-wise pass ran at under 200 GB/s on an H100 that way). */
template <typename T>
__global__ void k_channels_last_sum_vec(const T *x, const float *b, const float *v, const T *res, T *y,
                                        uint32_t n_vec, uint32_t P, uint32_t C) {
    CU_PDL_ENTRY();
    typedef cu_vec16<T> V;
    const uint32_t lanes = C / V::n;
    for (uint32_t i = blockIdx.x * blockDim.x + threadIdx.x; i < n_vec; i += gridDim.x * blockDim.x) {
        const uint32_t row = i / lanes, c0 = (i - row * lanes) * V::n;
        const float *vb = v ? v + (size_t)(row / P) * C : NULL;
        V in, add = {}, out; /* add read only when res is given */
        in.load(x + (size_t)i * V::n);
        if (res) add.load(res + (size_t)i * V::n);
#pragma unroll
        for (int k = 0; k < V::n; k++) {
            float sum = cu_f32(in.v[k]);
            if (b) sum += b[c0 + k];
            if (vb) sum += vb[c0 + k];
            if (res) sum += cu_f32(add.v[k]);
            cu_store(&out.v[k], sum);
        }
        out.store(y + (size_t)i * V::n);
    }
}

/* Launches the channels-last sum above, 16 bytes per thread where the shape and pointers allow. */
template <typename T>
static inline cudaError_t cu_channels_last_sum(const T *x, const float *b, const float *v, const T *res, T *y,
                                               int64_t rows, int64_t P, int64_t C, cudaStream_t stream) {
    const int n = cu_vec16<T>::n;
    const int64_t n_vec = rows * C / n;
    if (C % n == 0 && cu_aligned16(x) && cu_aligned16(y) && (!res || cu_aligned16(res)) && n_vec <= (int64_t)INT32_MAX) {
        CU_LAUNCH(k_channels_last_sum_vec<T>, cu_blocks(n_vec, 256), 256, 0, stream)(x, b, v, res, y, (uint32_t)n_vec,
                                                                                     (uint32_t)P, (uint32_t)C);
    } else {
        const int threads = cu_row_threads(C);
        CU_LAUNCH(k_channels_last_sum<T>, cu_rows_grid(rows, C, threads), threads, 0, stream)(x, b, v, res, y, rows, P, C);
    }
    return cudaGetLastError();
}

/* ------------------------------------------------------------------------------------------------
 * Internal entry points (one .cu file each group); the op table points at these.
 * --------------------------------------------------------------------------------------------- */

/* elementwise.cu */
sd_status cu_unary(sd_unary_op op, const float *x, float *y, int64_t n, float alpha);
sd_status cu_binary(sd_binary_op op, const float *a, const float *b, float *y, int64_t n);
sd_status cu_axpby(float alpha, const float *x, float beta, const float *z, float *y, int64_t n);
sd_status cu_axpby_dev(const float *coef, const float *x, const float *z, float *y, int64_t n);
sd_status cu_clamp(const float *x, float *y, float lo, float hi, int64_t n);
sd_status cu_add_channel_bias(const float *x, const float *v, float *y, int64_t B, int64_t C, int64_t S);
sd_status cu_geglu(const float *x, float *y, int64_t M, int64_t N);
sd_status cu_concat_channels(const float *a, const float *c, float *y, int64_t B, int64_t Ca,
                             int64_t Cb, int64_t S);
sd_status cu_upsample_nearest(const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                              int64_t Wo);
sd_status cu_transpose(const float *x, float *y, int64_t B, int64_t R, int64_t C);
sd_status cu_timestep_embedding(const float *t, float *y, int64_t B, int dim, int flip_sin_to_cos,
                                float shift);
sd_status cu_embedding(const int32_t *ids, const float *table, float *y, int64_t count, int64_t C);
sd_status cu_copy(float *dst, const float *src, int64_t n);
sd_status cu_fill(float *dst, float value, int64_t n);
sd_status cu_mse(const float *a, const float *b, float *out, int64_t n);
sd_status cu_all_finite(const float *const *xs, const int64_t *ns, int count, int *host_ok);
sd_status cu_unary_backward(sd_unary_op op, const float *x, const float *dy, float *dx, int64_t n,
                            float alpha);
sd_status cu_geglu_backward(const float *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate);
sd_status cu_f16_geglu_backward(const sd_f16 *x, const float *dy, float *dx, int64_t M, int64_t N, int accumulate);
sd_status cu_f16_geglu_backward_bf16(const sd_f16 *x, const float *dy, sd_f16 *dx, int64_t M, int64_t N);
sd_status cu_axpy(float alpha, const float *x, float *y, int64_t n);
sd_status cu_axpy_dev(const float *coef, const float *x, float *y, int64_t n);
sd_status cu_mul_acc(const float *a, const float *b, float *y, int64_t n);
sd_status cu_add_channel_bias_backward(const float *dy, float *dv, int64_t B, int64_t C, int64_t S);
sd_status cu_concat_channels_backward(const float *dy, float *da, float *dc, int64_t B, int64_t Ca,
                                      int64_t Cb, int64_t S, int accumulate);
sd_status cu_upsample_nearest_backward(const float *dy, float *dx, int64_t N, int64_t H, int64_t W,
                                       int64_t Ho, int64_t Wo, int accumulate);
sd_status cu_mse_backward(const float *a, const float *b, const float *g, float *da, float *db,
                          int64_t n);
sd_status cu_adam_step(float *p, const float *g, float *m, float *v, int64_t n, double lr,
                       double beta1, double beta2, double eps, int step);
/* out[c] += Σ_b Σ_s x[b, c, s] (conv bias gradient) */
sd_status cu_channel_sum_acc(const float *x, float *out, int64_t B, int64_t C, int64_t S);
/* out[n] += Σ_m x[m, n] over the rows of x[M, N] (linear bias gradient) */
sd_status cu_column_sum_acc(const float *x, float *out, int64_t M, int64_t N);
/* y[m, n] += b[n] for y[M, N] (the bias of a linear when cuBLASLt's epilogue is unavailable) */
sd_status cu_bias_rows(float *y, const float *b, int64_t M, int64_t N);

/* norms.cu */
sd_status cu_group_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t B,
                        int64_t C, int64_t S, int groups, float eps, int silu);
sd_status cu_layer_norm(const float *x, const float *gamma, const float *beta, float *y, int64_t M,
                        int64_t C, float eps);
sd_status cu_group_norm_backward(const float *x, const float *gamma, const float *beta,
                                 const float *dy, float *dx, float *dgamma, float *dbeta, int64_t B,
                                 int64_t C, int64_t S, int groups, float eps, int silu, int accumulate);
sd_status cu_layer_norm_backward(const float *x, const float *gamma, const float *dy, float *dx,
                                 float *dgamma, float *dbeta, int64_t M, int64_t C, float eps);
sd_status cu_f16_layer_norm_backward(const sd_f16 *x, const float *gamma, const float *dy, float *dx,
                                     float *dgamma, float *dbeta, int64_t M, int64_t C, float eps);
sd_status cu_f16_group_norm_backward_nhwc(const sd_f16 *x16, const float *gamma, const float *beta, const float *dy,
                                          float *dx, float *dgamma, float *dbeta, int64_t B, int64_t C, int64_t S,
                                          int groups, float eps, int silu, int accumulate, const float *stats);

/* gemm.cu */
sd_status cu_linear(const float *x, const float *w, const float *b, const float *r, float *y, int64_t M, int64_t K,
                    int64_t N);
sd_status cu_linear_backward_data(const float *dy, const float *w, float *dx, int64_t M, int64_t K,
                                  int64_t N);
sd_status cu_linear_backward_params(const float *dy, const float *x, float *dw, float *db, int64_t M,
                                    int64_t K, int64_t N);
/* Row-major strided-batched GEMM: C_i[M, N] = alpha · op(A_i) · op(B_i) + beta · C_i for
 * i < batch, with A_i = A + i·strideA (row-major, leading dimension lda: op(A) = A when !ta,
 * Aᵀ when ta), likewise B and C. Precision follows the state's mode. */
sd_status cu_gemm_rm(int ta, int tb, int64_t M, int64_t N, int64_t K, float alpha, const float *A,
                     int64_t lda, int64_t strideA, const float *B, int64_t ldb, int64_t strideB,
                     float beta, float *C, int64_t ldc, int64_t strideC, int64_t batch);

/* conv.cu */
sd_status cu_conv2d(const float *x, const float *w, const float *b, float *y, const sd_conv_geom *g);
sd_status cu_conv2d_backward_data(const float *dy, const float *w, float *dx, const sd_conv_geom *g);
sd_status cu_conv2d_backward_params(const float *dy, const float *x, float *dw, float *db,
                                    const sd_conv_geom *g);
void cu_conv_release(cu_state *s);
void cu_lt_release(cu_state *s);

/* attention.cu */
sd_status cu_attention(const float *q, const float *k, const float *v, float *out, float *probs,
                       int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale,
                       int causal, float *lse);
sd_status cu_attention_apply(const float *probs, const float *v, float *out, int64_t B, int64_t Sq,
                             int64_t Sk, int H, int Dv);
/* Whether cu_attention fills a given lse buffer for these shapes (in the current precision), which
 * cu_attention_backward may then read: the one rule both sides follow. */
bool cu_attention_keeps_lse(int64_t Sq, int64_t Sk, int D, int Dv, float scale);
/* The same for fp16 activations: cu_f16_attention and cu_f16_attention_backward. */
bool cu_f16_attention_keeps_lse(int D, int Dv, float scale);
/* The warps of a flash kernel's query blocks (16 queries each) given how many blocks of 128 queries
 * its grid would have: 4 (64-query blocks) where twice those blocks still leave no SM with two,
 * else 8. The forward's cp.async kernel and the backward's dQ kernel follow this one rule
 * (sd_cuda_flash_query_block). Each warp's rows are computed the same way in either. */
int cu_flash_warps(int64_t blocks_of_128);
/* 16 · cu_flash_warps for the fp16 cp.async forward's grid (attention.cu) */
int cu_flash_forward_query_block(int64_t Sq, int64_t B, int H);
/* Softmax of rows in place: x[rows, Sk]; the query index of row r is q_offset + r mod
 * rows_per_head, and causal rows zero the columns j > query (a chunk of the maps of H heads:
 * rows_per_head = chunk rows, q_offset = the chunk's first query). */
sd_status cu_softmax_rows_offset(float *x, int64_t rows, int64_t rows_per_head, int64_t q_offset, int64_t Sk,
                                 int causal);

/* attention_backward.cu */
sd_status cu_attention_backward(const float *q, const float *k, const float *v, const float *out,
                                const float *dout, float *dq, float *dk, float *dv, int64_t B,
                                int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale, int causal,
                                int accumulate, const float *lse);
sd_status cu_attention_probs_backward(const float *q, const float *k, const float *probs,
                                      const float *dprobs, float *dq, float *dk, int64_t B,
                                      int64_t Sq, int64_t Sk, int H, int D, float scale);
sd_status cu_attention_apply_backward(const float *probs, const float *v, const float *dout,
                                      float *dprobs, float *dv, int64_t B, int64_t Sq, int64_t Sk,
                                      int H, int Dv);

/* The fp16-storage table (sd_f16_ops, backend.h), one entry point per op, next to its F32 twin:
 * elementwise.cu */
sd_status cu_f16_from_f32(const float *x, sd_f16 *y, int64_t n);
sd_status cu_f16_to_f32(const sd_f16 *x, float *y, int64_t n);
sd_status cu_f16_copy(sd_f16 *dst, const sd_f16 *src, int64_t n);
sd_status cu_f16_binary(sd_binary_op op, const sd_f16 *a, const sd_f16 *b, sd_f16 *y, int64_t n);
sd_status cu_f16_add_channel_bias(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S);
sd_status cu_f16_geglu(const sd_f16 *x, sd_f16 *y, int64_t M, int64_t N);
sd_status cu_f16_concat_channels(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb,
                                 int64_t S);
sd_status cu_f16_upsample_nearest(const sd_f16 *x, sd_f16 *y, int64_t N, int64_t H, int64_t W, int64_t Ho,
                                  int64_t Wo);
sd_status cu_f16_transpose(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t R, int64_t C);
/* channels-last forms (backend.h, sd_f16_ops.*_nhwc) */
sd_status cu_f16_to_f16_nhwc(const float *x, sd_f16 *y, int64_t B, int64_t C, int64_t S);
sd_status cu_f16_to_f32_nchw(const sd_f16 *x, const float *v, const float *r, float *y, int64_t B, int64_t C,
                             int64_t S);
sd_status cu_f16_add_channel_bias_nhwc(const sd_f16 *x, const float *v, sd_f16 *y, int64_t B, int64_t C, int64_t S);
sd_status cu_f16_concat_channels_nhwc(const sd_f16 *a, const sd_f16 *c, sd_f16 *y, int64_t B, int64_t Ca, int64_t Cb,
                                      int64_t S);
sd_status cu_f16_upsample_nearest_nhwc(const sd_f16 *x, sd_f16 *y, int64_t B, int64_t H, int64_t W, int64_t C,
                                       int64_t Ho, int64_t Wo);
sd_status cu_f16_group_norm_nhwc(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B,
                                 int64_t C, int64_t S, int groups, float eps, int silu, float *keep_stats);
sd_status cu_f16_conv2d_nhwc(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r,
                             sd_f16 *y, const sd_conv_geom *g);
/* norms.cu */
sd_status cu_f16_group_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t B,
                            int64_t C, int64_t S, int groups, float eps, int silu);
sd_status cu_f16_layer_norm(const sd_f16 *x, const float *gamma, const float *beta, sd_f16 *y, int64_t M,
                            int64_t C, float eps);
/* gemm.cu */
sd_status cu_f16_linear(const sd_f16 *x, const sd_f16 *w, const sd_f16 *b, const sd_f16 *r, sd_f16 *y, int64_t M,
                        int64_t K, int64_t N);
/* y[M, N] = x[M, K] · w[N, K]ᵀ in fp16 (fp32 sums, one rounding) without the op workspace; tuned
 * as a cuBLASLt linear under SD_GEMM_ALGO=tune (gemm.cu) */
sd_status cu_f16_matmul_nt(const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N);
sd_status cu_f16w_linear(const float *x, const sd_f16 *w, const float *b, const float *r, float *y, int64_t M, int64_t K,
                         int64_t N);
/* conv.cu */
sd_status cu_to_bf16(const float *x, sd_f16 *y, int64_t n);
sd_status cu_bf16w_linear_backward_data(const float *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K, int64_t N,
                                        int accumulate);
sd_status cu_bf16w_linear_backward_data_map(const float *dy, const sd_f16 *w, float *dx, int64_t B, int64_t S,
                                            int64_t K, int64_t N, int dy_map, int dx_map, int accumulate);
sd_status cu_bf16_linear_backward_data(const sd_f16 *dy, const sd_f16 *w, float *dx, int64_t M, int64_t K, int64_t N,
                                       int accumulate);
sd_status cu_bf16w_linear_backward_data_many(const float *const *dy, int count, const sd_f16 *w, float *dx, int64_t M,
                                             int64_t K, int64_t N, int accumulate);
sd_status cu_bf16_conv_transposed_weight(const float *w, sd_f16 *wt, int64_t Co, int64_t Ci, int kh, int kw);
sd_status cu_bf16w_conv2d_backward_data(const float *dy, const sd_f16 *wt, float *dx, const sd_conv_geom *g,
                                        int accumulate);
sd_status cu_f16_linear_batched(const sd_f16 *x, const sd_f16 *w, sd_f16 *y, int64_t M, int64_t K, int64_t N,
                                int count);
sd_status cu_f16w_linear_batched(const float *x, const sd_f16 *w, const float *const *b, float *y, int64_t M, int64_t K,
                                 int64_t N, int count);
sd_status cu_f16_conv2d(const sd_f16 *x, const sd_f16 *w, const float *b, const float *v, const sd_f16 *r, sd_f16 *y,
                        const sd_conv_geom *g);
/* attention.cu */
sd_status cu_f16_attention(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, sd_f16 *out, int64_t B, int64_t Sq,
                           int64_t Sk, int H, int D, int Dv, float scale, int causal, float *lse);
int cu_f16_attention_backward_takes(int64_t B, int64_t Sq, int64_t Sk, int H, int D, int Dv, float scale);
sd_status cu_f16_attention_backward(const sd_f16 *q, const sd_f16 *k, const sd_f16 *v, const sd_f16 *out,
                                    const float *dout, float *dq, float *dk, float *dv, int64_t B, int64_t Sq,
                                    int64_t Sk, int H, int D, int Dv, float scale, int causal, int accumulate,
                                    const float *lse);

/* pool.cu */
sd_status cu_max_pool2d(const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                        int kernel, int stride);

#endif
