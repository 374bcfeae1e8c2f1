/* cuda_backend.cu: the CUDA op table and everything around it that is not arithmetic: opening a
 * device (with a clear message for each way that can fail), the per-device state, memory
 * (cudaMalloc'd chunks for arenas and weights, never per op), transfers on the backend's stream,
 * the growable workspace, CUDA graphs, event timers and the precision switch.
 *
 * Why one stream per device and a thread-bound state: the op table's functions carry no context
 * (backend.h), so every op looks up cu_cur(); all work of one device is ordered on one stream, which
 * makes the single shared workspace safe (ops never overlap) and the whole UNet call capturable
 * into one CUDA graph. */
#include "cuda_common.cuh"

#include <mutex>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------------------------------------
 * State
 * --------------------------------------------------------------------------------------------- */

static cu_state g_states[CU_MAX_DEVICES];
static cu_state *g_last_opened = NULL;
static thread_local cu_state *tls_state = NULL;
static std::mutex g_open_lock;

cu_state *cu_cur() { return tls_state ? tls_state : g_last_opened; }

int cu_debug_sync = 0; /* SD_CUDA_DEBUG_SYNC=1: synchronise after every kernel (see LAUNCH_CHECK) */

static const double MiB = 1024.0 * 1024.0;

/* ------------------------------------------------------------------------------------------------
 * Errors
 * --------------------------------------------------------------------------------------------- */

sd_status cu_fail_cuda(cudaError_t err, const char *file, int line, const char *call) {
    cudaGetLastError(); /* clear a non-sticky error so the next call starts clean */
    if (err == cudaErrorMemoryAllocation) {
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        cu_state *s = cu_cur();
        return sd_fail(SD_ERR_OOM, "%s:%d: %s failed: out of GPU memory (cuda:%d has %.1f MiB free of %.1f MiB)",
                       file, line, call, s ? s->ordinal : -1, free_b / MiB, total_b / MiB);
    }
    return sd_fail(SD_ERR_DEVICE, "%s:%d: %s failed: %s (%s)", file, line, call, cudaGetErrorString(err),
                   cudaGetErrorName(err));
}

sd_status cu_fail_cublas(cublasStatus_t st, const char *file, int line, const char *call) {
    if (st == CUBLAS_STATUS_ALLOC_FAILED)
        return sd_fail(SD_ERR_OOM, "%s:%d: %s failed: cuBLAS could not allocate GPU memory", file, line, call);
    return sd_fail(SD_ERR_DEVICE, "%s:%d: %s failed: %s", file, line, call, cublasGetStatusString(st));
}

sd_status cu_fail_cudnn(cudnnStatus_t st, const char *file, int line, const char *call) {
    /* cuDNN 9: CUDNN_STATUS_ALLOC_FAILED is the host-allocation failure; the device one has its own code */
    if (st == CUDNN_STATUS_INTERNAL_ERROR_DEVICE_ALLOCATION_FAILED)
        return sd_fail(SD_ERR_OOM, "%s:%d: %s failed: cuDNN could not allocate GPU memory", file, line, call);
    if (st == CUDNN_STATUS_ALLOC_FAILED)
        return sd_fail(SD_ERR_OOM, "%s:%d: %s failed: cuDNN could not allocate host memory", file, line, call);
    return sd_fail(SD_ERR_DEVICE, "%s:%d: %s failed: %s", file, line, call, cudnnGetErrorString(st));
}

/* ------------------------------------------------------------------------------------------------
 * Device checks: one clear sentence per failure, each ending with what to do.
 * --------------------------------------------------------------------------------------------- */

static int g_runtime_version = 0;

extern "C" int sd_cuda_device_count(void) {
    int drv = 0, n = 0;
    cudaRuntimeGetVersion(&g_runtime_version);
    cudaDriverGetVersion(&drv);
    if (drv == 0) {
        sd_fail(SD_ERR_DEVICE, "no NVIDIA driver found (libcuda could not be loaded): install the NVIDIA "
                               "driver, or run on the CPU with --device cpu");
        return 0;
    }
    /* CUDA's minor-version compatibility: any driver of the runtime's major version can run it */
    if (drv / 1000 < g_runtime_version / 1000) {
        sd_fail(SD_ERR_DEVICE, "the NVIDIA driver supports CUDA %d.%d, older than the CUDA %d.%d runtime this "
                               "build uses: update the driver (CUDA %d needs driver 580 or newer), or use --device cpu",
                drv / 1000, (drv % 1000) / 10, g_runtime_version / 1000, (g_runtime_version % 1000) / 10,
                g_runtime_version / 1000);
        return 0;
    }
    cudaError_t e = cudaGetDeviceCount(&n);
    if (e != cudaSuccess) {
        cudaGetLastError();
        if (e == cudaErrorNoDevice)
            sd_fail(SD_ERR_DEVICE, "no CUDA GPU found (the driver is installed but reports no device): use --device cpu");
        else if (e == cudaErrorInsufficientDriver || e == cudaErrorCallRequiresNewerDriver)
            sd_fail(SD_ERR_DEVICE, "the NVIDIA driver (CUDA %d.%d) is too old for this build's CUDA %d.%d runtime: "
                                   "update the driver, or use --device cpu",
                    drv / 1000, (drv % 1000) / 10, g_runtime_version / 1000, (g_runtime_version % 1000) / 10);
        else
            sd_fail(SD_ERR_DEVICE, "CUDA could not be initialised: %s (%s); use --device cpu",
                    cudaGetErrorString(e), cudaGetErrorName(e));
        return 0;
    }
    if (n == 0) sd_fail(SD_ERR_DEVICE, "no CUDA GPU found: use --device cpu");
    return n;
}

extern "C" sd_status sd_cuda_check_device(int ordinal) {
    const int n = sd_cuda_device_count();
    if (n == 0) return SD_ERR_DEVICE; /* message set */
    if (ordinal < 0 || ordinal >= n || ordinal >= CU_MAX_DEVICES) {
        if (n == 1) return sd_fail(SD_ERR_ARG, "cuda:%d does not exist: this machine has 1 CUDA device (cuda:0)", ordinal);
        return sd_fail(SD_ERR_ARG, "cuda:%d does not exist: this machine has %d CUDA devices (cuda:0 to cuda:%d)",
                       ordinal, n, (n < CU_MAX_DEVICES ? n : CU_MAX_DEVICES) - 1);
    }
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, ordinal));
    if (p.major < 9)
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "cuda:%d (%s) has compute capability %d.%d, but this build carries GPU code for compute "
                       "capability 9.0 and newer only (sm_90 machine code + compute_90 PTX): rebuild with "
                       "NVFLAGS adding -gencode arch=compute_%d%d,code=sm_%d%d (8.0 at least: the fast kernels use "
                       "bf16 mma.sync), or use --device cpu",
                       ordinal, p.name, p.major, p.minor, p.major, p.minor, p.major, p.minor);
    return SD_OK;
}

extern "C" sd_status sd_cuda_device_name(int ordinal, char *buf, size_t n) {
    cudaDeviceProp p;
    CUDA_CHECK(cudaGetDeviceProperties(&p, ordinal));
    snprintf(buf, n, "%s (sm_%d%d, %.1f GiB)", p.name, p.major, p.minor,
             (double)p.totalGlobalMem / (1024.0 * MiB));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Opening a device
 * --------------------------------------------------------------------------------------------- */

/* A kernel that does nothing: launching it proves this binary has code the GPU can run (catches
 * "no kernel image" and "PTX too new for the driver" before the first real op). */
__global__ void cu_probe_kernel(int *flag) {
    CU_PDL_ENTRY();
    if (threadIdx.x == 0 && blockIdx.x == 0) *flag = 1;
}

static void state_release(cu_state *s) {
    cu_conv_release(s);
    cu_lt_release(s);
    if (s->dnn) cudnnDestroy(s->dnn);
    if (s->lt) cublasLtDestroy(s->lt);
    if (s->blas) cublasDestroy(s->blas);
    if (s->ev_start) cudaEventDestroy(s->ev_start);
    if (s->ev_stop) cudaEventDestroy(s->ev_stop);
    if (s->stream) cudaStreamDestroy(s->stream);
    cudaFree(s->blas_ws);
    cudaFree(s->lt_ws);
    cudaFree(s->ws);
    cudaFree(s->scratch);
    cudaFree(s->grid_done);
    memset(s, 0, sizeof *s);
}

/* The backend's settings read from the environment when a device opens: the index in `names`
 * (n of them) of variable `var`'s value; `fallback` when it is unset or empty, and with a warning
 * naming the choices when it is none of them. */
static int env_choice(const char *var, const char *const *names, int n, int fallback) {
    const char *e = getenv(var);
    if (!e || !*e) return fallback;
    for (int i = 0; i < n; i++)
        if (!strcmp(e, names[i])) return i;
    char list[96] = "";
    for (int i = 0, len = 0; i < n && len >= 0 && len < (int)sizeof list; i++)
        len += snprintf(list + len, sizeof list - len, "%s%s", i ? ", " : "", names[i]);
    sd_warn("%s=%s is not one of %s: using %s", var, e, list, names[fallback]);
    return fallback;
}

static_assert(SD_CONV_ALGO_HEURISTIC == 0 && SD_CONV_ALGO_FIND == 1 && SD_CONV_ALGO_GRAPH == 2 &&
                  SD_CONV_ALGO_TUNE == 3 && SD_GEMM_ALGO_HEURISTIC == 0 && SD_GEMM_ALGO_TUNE == 1 &&
                  SD_CONV_GEMM_OFF == 0 && SD_CONV_GEMM_AUTO == 1 && SD_CONV_GEMM_ALL == 2 &&
                  SD_CONV_WINOGRAD_OFF == 0 && SD_CONV_WINOGRAD_ON == 1 && SD_CONV_WINOGRAD_ALL == 2 &&
                  SD_CONV_WINOGRAD_F4 == 3 && SD_CONV_WINOGRAD_F4_ALL == 4 && SD_CONV_WINOGRAD_AUTO == 5 &&
                  SD_CONV_WINOGRAD_F4_MIXED == 6,
              "the name tables below list the settings in their enums' order");

/* SD_FAST_GEMM=bf16|tf32|fp16: the tensor-core input type of fast mode's F32 GEMMs. */
static cublasComputeType_t fast_gemm_from_env(void) {
    static const char *const names[] = {"bf16", "tf32", "fp16"};
    static const cublasComputeType_t types[] = {CUBLAS_COMPUTE_32F_FAST_16BF, CUBLAS_COMPUTE_32F_FAST_TF32,
                                                CUBLAS_COMPUTE_32F_FAST_16F};
    return types[env_choice("SD_FAST_GEMM", names, 3, 0)];
}

/* SD_CONV_ALGO=heuristic|find|graph|tune (sd_conv_algo, device.h, in that order): how fast mode picks
 * cuDNN's convolution algorithms. heuristic (the default): the legacy heuristic's first tensor-core
 * algorithm; find: the one cuDNN measures fastest per shape (cudnnFind*); graph: fp16 forwards
 * through the graph API's first runnable engine; tune: fp16 forwards timed once per shape between
 * im2col + GEMM, the legacy algorithm and the graph API's best engines (conv.cu). Exact mode always
 * uses the legacy heuristic's direct-sum algorithms: a timed choice could differ between runs, and
 * so would the result. */
static int conv_algo_from_env(void) {
    static const char *const names[] = {"heuristic", "find", "graph", "tune"};
    return env_choice("SD_CONV_ALGO", names, 4, SD_CONV_ALGO_HEURISTIC);
}

/* SD_GEMM_ALGO=heuristic|tune (sd_gemm_algo, device.h): fast mode's cuBLASLt linears take the
 * heuristic's first algorithm, or time its first few once per shape and keep the fastest (gemm.cu). */
static int gemm_algo_from_env(void) {
    static const char *const names[] = {"heuristic", "tune"};
    return env_choice("SD_GEMM_ALGO", names, 2, SD_GEMM_ALGO_HEURISTIC);
}

/* SD_CONV_GEMM=off|auto|all (sd_conv_gemm, in that order): fast mode's small-image convolutions as
 * im2col + GEMM (conv.cu). */
static int conv_gemm_from_env(void) {
    static const char *const names[] = {"off", "auto", "all"};
    return env_choice("SD_CONV_GEMM", names, 3, SD_CONV_GEMM_AUTO);
}

/* SD_CONV_WINOGRAD=off|on|all|f4|f4-all|auto|f4-mixed (sd_conv_winograd, in that order): 3x3
 * "same" convolutions by Winograd F(2x2, 3x3), or in exact mode F(4x4, 3x3) (conv.cu); auto, the
 * default, is exact mode's F(4x4) at 64x64 and 32x32 and no Winograd in fp16 and bf16. */
static int conv_winograd_from_env(void) {
    static const char *const names[] = {"off", "on", "all", "f4", "f4-all", "auto", "f4-mixed"};
    return env_choice("SD_CONV_WINOGRAD", names, 7, SD_CONV_WINOGRAD_AUTO);
}

/* SD_FLASH_BLOCKS_PER_SM=1|2: how many blocks of the fp16 flash attention kernel share an SM at
 * head dims <= 48 (SD's D 40). Two cap its registers at 128 (124 used since the eleventh session,
 * no spill; 48 bytes spilled before); one leaves 255, at half the warps per SM. 2 is the default
 * and what every GPU figure was measured with; the bench tables' fast+fa1 row measures 1. */
static int flash_blocks_from_env(void) {
    static const char *const names[] = {"1", "2"};
    return 1 + env_choice("SD_FLASH_BLOCKS_PER_SM", names, 2, 1);
}

/* SD_FLASH_BWD_BLOCKS_PER_SM=1|2: the same choice for fast mode's flash attention backward (both
 * kernels) at head dims <= 48. One block per SM (the default: 176 and 200 registers at D 40, 8 warps
 * per SM) or two (128 registers: ptxas spills 64 and 240 bytes per thread, 16 warps per SM to hide
 * the latency of a tile's chain of products and exponentials). The grad tables' fast+fb2 row. */
static int flash_bwd_blocks_from_env(void) {
    static const char *const names[] = {"1", "2"};
    return 1 + env_choice("SD_FLASH_BWD_BLOCKS_PER_SM", names, 2, 0);
}

/* Why programmatic dependent launch cannot run on this device (NULL: it can). It exists from compute
 * capability 9.0 (Hopper) on; the simulator runs kernels one after the other, nothing to overlap. */
static const char *pdl_unsupported(const cudaDeviceProp *prop) {
#ifdef SD_CUDA_SIM
    (void)prop;
    return "the simulator runs every kernel to its end before the next starts, so there is no overlap to allow";
#else
    return prop->major >= 9 ? NULL : "it needs compute capability 9.0 or later";
#endif
}

/* SD_CUDA_PDL=0|1: this backend's kernels by programmatic dependent launch (cuda_common.cuh,
 * CU_PDL_ENTRY), where the device has it. Off by default: the bench rows "+pdl" measure it against
 * the plain launches first. */
static int pdl_from_env(const cudaDeviceProp *prop) {
    static const char *const names[] = {"0", "1"};
    if (!env_choice("SD_CUDA_PDL", names, 2, 0)) return 0;
    const char *why = pdl_unsupported(prop);
    if (!why) return 1;
    sd_warn("SD_CUDA_PDL=1 on %s (sm_%d%d): no programmatic dependent launch (%s); kernels launch as usual", prop->name,
            prop->major, prop->minor, why);
    return 0;
}

static sd_status state_init(cu_state *s, int ordinal) {
    memset(s, 0, sizeof *s);
    s->ordinal = ordinal;
    CUDA_CHECK(cudaSetDevice(ordinal));
    CUDA_CHECK(cudaGetDeviceProperties(&s->prop, ordinal));
    CUDA_CHECK(cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreate(&s->ev_start));
    CUDA_CHECK(cudaEventCreate(&s->ev_stop));
    CUDA_CHECK(cudaMalloc(&s->scratch, 4096));
    const size_t counter_bytes = (1 + (size_t)CU_GRID_PART_COUNTERS) * sizeof *s->grid_done;
    CUDA_CHECK(cudaMalloc((void **)&s->grid_done, counter_bytes));
    CUDA_CHECK(cudaMemsetAsync(s->grid_done, 0, counter_bytes, s->stream));

    int *flag = (int *)s->scratch;
    int host_flag = 0;
    CUDA_CHECK(cudaMemsetAsync(flag, 0, sizeof(int), s->stream));
    CU_LAUNCH(cu_probe_kernel, 1, 32, 0, s->stream)(flag);
    cudaError_t e = cudaGetLastError();
    if (e == cudaSuccess) e = cudaMemcpyAsync(&host_flag, flag, sizeof(int), cudaMemcpyDeviceToHost, s->stream);
    if (e == cudaSuccess) e = cudaStreamSynchronize(s->stream);
    if (e != cudaSuccess || host_flag != 1) {
        cudaGetLastError();
        if (e == cudaErrorNoKernelImageForDevice || e == cudaErrorInvalidDeviceFunction)
            return sd_fail(SD_ERR_UNSUPPORTED, "cuda:%d (%s, sm_%d%d): this build has no GPU code this device can run "
                                               "(it carries sm_90 + compute_90 PTX); rebuild for it, or use --device cpu",
                           ordinal, s->prop.name, s->prop.major, s->prop.minor);
        if (e == cudaErrorUnsupportedPtxVersion)
            return sd_fail(SD_ERR_DEVICE, "cuda:%d: the driver is older than the compiler that built this binary "
                                          "(PTX version unsupported): update the NVIDIA driver, or use --device cpu", ordinal);
        return sd_fail(SD_ERR_DEVICE, "cuda:%d: a test kernel failed to run: %s (%s)", ordinal,
                       cudaGetErrorString(e), cudaGetErrorName(e));
    }

    CUBLAS_CHECK(cublasCreate(&s->blas));
    CUBLAS_CHECK(cublasSetStream(s->blas, s->stream));
    /* cuBLAS gets its own fixed workspace so that it never allocates lazily (which a CUDA graph
     * capture would not allow). 32 MiB is what NVIDIA recommends for Hopper. */
    s->blas_ws_bytes = (size_t)32 << 20;
    CUDA_CHECK(cudaMalloc(&s->blas_ws, s->blas_ws_bytes));
    CUBLAS_CHECK(cublasSetWorkspace(s->blas, s->blas_ws, s->blas_ws_bytes));
    CUBLAS_CHECK(cublasSetMathMode(s->blas, CUBLAS_DEFAULT_MATH)); /* TF32 only when asked per call */
    CUBLAS_CHECK(cublasLtCreate(&s->lt));
    s->lt_ws_bytes = (size_t)32 << 20;
    CUDA_CHECK(cudaMalloc(&s->lt_ws, s->lt_ws_bytes));
    CUDNN_CHECK(cudnnCreate(&s->dnn));
    CUDNN_CHECK(cudnnSetStream(s->dnn, s->stream));
    s->precision = SD_PRECISION_EXACT;
    s->fast_gemm = fast_gemm_from_env();
    s->conv_algo = conv_algo_from_env();
    s->gemm_algo = gemm_algo_from_env();
    s->flash_blocks_per_sm = flash_blocks_from_env();
    s->flash_bwd_blocks_per_sm = flash_bwd_blocks_from_env();
    s->conv_gemm = conv_gemm_from_env();
    s->conv_winograd = conv_winograd_from_env();
    s->pdl = pdl_from_env(&s->prop);
    const char *dbg = getenv("SD_CUDA_DEBUG_SYNC");
    cu_debug_sync = dbg && *dbg && strcmp(dbg, "0") != 0;
    s->ready = 1;
    return SD_OK;
}

void *cu_workspace(size_t bytes) {
    cu_state *s = cu_cur();
    if (bytes <= s->ws_bytes) return s->ws;
    if (s->capturing) {
        sd_fail(SD_ERR_UNSUPPORTED,
                "CUDA graph capture: an op needs %.1f MiB of workspace, more than the %.1f MiB allocated so far; "
                "run the same work once before capturing it",
                bytes / MiB, s->ws_bytes / MiB);
        return NULL;
    }
    /* queued kernels may still read the old buffer */
    cudaError_t e = cudaStreamSynchronize(s->stream);
    if (e != cudaSuccess) {
        cu_fail_cuda(e, __FILE__, __LINE__, "cudaStreamSynchronize(s->stream)");
        return NULL;
    }
    cudaFree(s->ws);
    s->ws = NULL;
    s->ws_bytes = 0;
    size_t want = cu_align(bytes);
    if (want < ((size_t)16 << 20)) want = (size_t)16 << 20;
    e = cudaMalloc(&s->ws, want);
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        sd_fail(SD_ERR_OOM, "out of GPU memory on cuda:%d: the workspace needs %.1f MiB, %.1f MiB free of %.1f MiB",
                s->ordinal, want / MiB, free_b / MiB, total_b / MiB);
        s->ws = NULL;
        return NULL;
    }
    s->ws_bytes = want;
    s->ws_generation++; /* graphs captured before hold the freed buffer's address */
    return s->ws;
}

/* ------------------------------------------------------------------------------------------------
 * Memory and transfers
 * --------------------------------------------------------------------------------------------- */

static void *cuda_mem_alloc(size_t bytes) {
    cu_state *s = cu_cur();
    if (s->capturing) {
        sd_fail(SD_ERR_UNSUPPORTED, "CUDA graph capture: %.1f MiB of device memory requested during capture; "
                                    "run the same work once before capturing it (the arena keeps its chunks)",
                bytes / MiB);
        return NULL;
    }
    void *p = NULL;
    cudaError_t e = cudaMalloc(&p, bytes ? bytes : 1); /* cudaMalloc aligns to at least 256 bytes */
    if (e != cudaSuccess) {
        cudaGetLastError();
        size_t free_b = 0, total_b = 0;
        cudaMemGetInfo(&free_b, &total_b);
        if (e == cudaErrorMemoryAllocation)
            sd_fail(SD_ERR_OOM, "out of GPU memory on cuda:%d: asked for %.1f MiB, %.1f MiB free of %.1f MiB",
                    s->ordinal, bytes / MiB, free_b / MiB, total_b / MiB);
        else
            sd_fail(SD_ERR_DEVICE, "cudaMalloc of %.1f MiB on cuda:%d failed: %s", bytes / MiB, s->ordinal,
                    cudaGetErrorString(e));
        return NULL;
    }
    return p;
}

static void cuda_mem_free(void *p) {
    if (p) cudaFree(p); /* implicitly waits for work using it */
}

/* sd_tensor_free's hook for weights moved to a device (sd_ctx_adopt_weights). */
static sd_device_free_fn g_other_device_free; /* the hook installed before ours (sd_set_device_free) */

static void cuda_device_free(void *p, int device) {
    int count = 0;
    if (cudaGetDeviceCount(&count) != cudaSuccess || device >= count) { /* not a CUDA device */
        cudaGetLastError();
        if (g_other_device_free) g_other_device_free(p, device);
        return;
    }
    int cur = -1;
    cudaGetDevice(&cur);
    if (cur != device) cudaSetDevice(device);
    cudaFree(p);
    if (cur != device && cur >= 0) cudaSetDevice(cur);
}

static sd_status refuse_in_capture(cu_state *s, const char *what) {
    if (!s->capturing) return SD_OK;
    return sd_fail(SD_ERR_UNSUPPORTED, "%s is not allowed while a CUDA graph is being captured "
                                       "(it synchronises with the host)", what);
}

static sd_status cuda_upload(void *dst, const void *host_src, size_t bytes) {
    cu_state *s = cu_cur();
    if (!bytes) return SD_OK;
    CU_TRY(refuse_in_capture(s, "upload"));
    /* From pageable memory the call returns once the source is staged, so the caller may free
     * or reuse it at once (nn.c frees position ids right after). */
    CUDA_CHECK(cudaMemcpyAsync(dst, host_src, bytes, cudaMemcpyHostToDevice, s->stream));
    return SD_OK;
}

static sd_status cuda_download(void *host_dst, const void *src, size_t bytes) {
    cu_state *s = cu_cur();
    if (!bytes) return SD_OK;
    CU_TRY(refuse_in_capture(s, "download"));
    CUDA_CHECK(cudaMemcpyAsync(host_dst, src, bytes, cudaMemcpyDeviceToHost, s->stream));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return SD_OK;
}

static sd_status cuda_zero(void *dst, size_t bytes) {
    if (!bytes) return SD_OK;
    CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, cu_cur()->stream));
    return SD_OK;
}

static sd_status cuda_synchronize(void) {
    cu_state *s = cu_cur();
    CU_TRY(refuse_in_capture(s, "synchronize"));
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * The table
 * --------------------------------------------------------------------------------------------- */

static sd_backend g_table;
static sd_f16_ops g_f16_table;

static void f16_table_fill(sd_f16_ops *t) {
    memset(t, 0, sizeof *t);
    t->to_f16 = cu_f16_from_f32;
    t->to_f32 = cu_f16_to_f32;
    t->copy = cu_f16_copy;
    t->linear = cu_f16_linear;
    t->linear_f32io = cu_f16w_linear;
    t->linear_batched = cu_f16_linear_batched;
    t->linear_batched_f32io = cu_f16w_linear_batched;
    t->to_bf16 = cu_to_bf16;
    t->linear_backward_data_bf16w = cu_bf16w_linear_backward_data;
    t->linear_backward_data_bf16w_many = cu_bf16w_linear_backward_data_many;
    t->linear_backward_data_bf16w_map = cu_bf16w_linear_backward_data_map;
    t->linear_backward_data_bf16 = cu_bf16_linear_backward_data;
    t->to_bf16_conv_transposed = cu_bf16_conv_transposed_weight;
    t->conv2d_backward_data_bf16w = cu_bf16w_conv2d_backward_data;
    t->conv2d = cu_f16_conv2d;
    t->group_norm = cu_f16_group_norm;
    t->layer_norm = cu_f16_layer_norm;
    t->binary = cu_f16_binary;
    t->add_channel_bias = cu_f16_add_channel_bias;
    t->geglu = cu_f16_geglu;
    t->concat_channels = cu_f16_concat_channels;
    t->upsample_nearest = cu_f16_upsample_nearest;
    t->transpose = cu_f16_transpose;
    t->attention = cu_f16_attention;
    t->attention_backward_takes = cu_f16_attention_backward_takes;
    t->attention_backward = cu_f16_attention_backward;
    t->geglu_backward = cu_f16_geglu_backward;
    t->geglu_backward_bf16 = cu_f16_geglu_backward_bf16;
    t->layer_norm_backward = cu_f16_layer_norm_backward;
    t->group_norm_backward_nhwc = cu_f16_group_norm_backward_nhwc;
    t->to_f16_nhwc = cu_f16_to_f16_nhwc;
    t->to_f32_nchw = cu_f16_to_f32_nchw;
    t->conv2d_nhwc = cu_f16_conv2d_nhwc;
    t->group_norm_nhwc = cu_f16_group_norm_nhwc;
    t->add_channel_bias_nhwc = cu_f16_add_channel_bias_nhwc;
    t->concat_channels_nhwc = cu_f16_concat_channels_nhwc;
    t->upsample_nearest_nhwc = cu_f16_upsample_nearest_nhwc;
}

static void table_fill(sd_backend *t) {
    memset(t, 0, sizeof *t);
    t->name = "cuda";
    t->mem_alloc = cuda_mem_alloc;
    t->mem_free = cuda_mem_free;
    t->upload = cuda_upload;
    t->download = cuda_download;
    t->zero = cuda_zero;
    t->synchronize = cuda_synchronize;
    t->linear = cu_linear;
    t->conv2d = cu_conv2d;
    t->group_norm = cu_group_norm;
    t->layer_norm = cu_layer_norm;
    t->unary = cu_unary;
    t->binary = cu_binary;
    t->axpby = cu_axpby;
    t->axpby_dev = cu_axpby_dev;
    t->add_channel_bias = cu_add_channel_bias;
    t->geglu = cu_geglu;
    t->concat_channels = cu_concat_channels;
    t->upsample_nearest = cu_upsample_nearest;
    t->transpose = cu_transpose;
    t->attention = cu_attention;
    t->attention_apply = cu_attention_apply;
    t->timestep_embedding = cu_timestep_embedding;
    t->embedding = cu_embedding;
    t->clamp = cu_clamp;
    t->copy = cu_copy;
    t->fill = cu_fill;
    t->mse = cu_mse;
    t->all_finite = cu_all_finite;
    t->linear_backward_data = cu_linear_backward_data;
    t->linear_backward_params = cu_linear_backward_params;
    t->conv2d_backward_data = cu_conv2d_backward_data;
    t->conv2d_backward_params = cu_conv2d_backward_params;
    t->group_norm_backward = cu_group_norm_backward;
    t->layer_norm_backward = cu_layer_norm_backward;
    t->unary_backward = cu_unary_backward;
    t->geglu_backward = cu_geglu_backward;
    t->axpy = cu_axpy;
    t->axpy_dev = cu_axpy_dev;
    t->mul_acc = cu_mul_acc;
    t->add_channel_bias_backward = cu_add_channel_bias_backward;
    t->concat_channels_backward = cu_concat_channels_backward;
    t->upsample_nearest_backward = cu_upsample_nearest_backward;
    t->attention_backward = cu_attention_backward;
    t->attention_probs_backward = cu_attention_probs_backward;
    t->attention_apply_backward = cu_attention_apply_backward;
    t->mse_backward = cu_mse_backward;
    t->adam_step = cu_adam_step;
    t->max_pool2d = cu_max_pool2d;
    f16_table_fill(&g_f16_table);
    t->f16 = &g_f16_table;
}

extern "C" const sd_backend *sd_backend_cuda(int ordinal) {
    if (sd_cuda_check_device(ordinal) != SD_OK) return NULL; /* message set */
    std::lock_guard<std::mutex> guard(g_open_lock);
    cu_state *s = &g_states[ordinal];
    if (!s->ready) {
        sd_status st = state_init(s, ordinal);
        if (st != SD_OK) {
            char msg[1024];
            snprintf(msg, sizeof msg, "%s", sd_last_error());
            state_release(s);
            sd_fail(st, "opening cuda:%d: %s", ordinal, msg);
            return NULL;
        }
    }
    if (cudaSetDevice(ordinal) != cudaSuccess) {
        cudaGetLastError();
        sd_fail(SD_ERR_DEVICE, "cudaSetDevice(%d) failed", ordinal);
        return NULL;
    }
    tls_state = s;
    g_last_opened = s;
    if (!g_table.name) table_fill(&g_table);
    const sd_device_free_fn previous = sd_set_device_free(cuda_device_free);
    if (previous != cuda_device_free) g_other_device_free = previous;
    return &g_table;
}

/* ------------------------------------------------------------------------------------------------
 * Precision, memory figures, timers, graphs
 * --------------------------------------------------------------------------------------------- */

static sd_status need_state(cu_state **out) {
    cu_state *s = cu_cur();
    if (!s || !s->ready)
        return sd_fail(SD_ERR_INTERNAL, "no CUDA backend is open (call sd_backend_cuda or sd_device_open first)");
    *out = s;
    return SD_OK;
}

extern "C" sd_status sd_cuda_set_precision(sd_precision p) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    if (p != SD_PRECISION_EXACT && p != SD_PRECISION_FAST)
        return sd_fail(SD_ERR_ARG, "unknown precision mode %d", (int)p);
    s->precision = p;
    return SD_OK;
}

extern "C" double sd_cuda_bf16_peak_tflops(void) {
    cu_state *s = cu_cur();
    if (!s) return 0.0;
    int khz = 0;
    if (cudaDeviceGetAttribute(&khz, cudaDevAttrClockRate, s->ordinal) != cudaSuccess) {
        cudaGetLastError(); /* not sticky: forget it */
        return 0.0;
    }
    const int sm = s->prop.major * 10 + s->prop.minor;
    const double per_clock = sm == 80 ? 2048 : (sm == 86 || sm == 87 || sm == 89) ? 1024 : sm == 90 ? 4096
                           : (sm == 100 || sm == 103) ? 8192 : 0;
    return per_clock * s->prop.multiProcessorCount * (double)khz * 1e3 / 1e12;
}

/* A setting that decides how plans are made (convolution or GEMM algorithms): never while a graph
 * is captured; the queued work (which still uses the old plans) finishes first, then the plans
 * go, to be made again under the new value. */
static sd_status set_plan_setting(const char *who, int cu_state::*field, int value, void (*release)(cu_state *)) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    if (s->capturing) return sd_fail(SD_ERR_UNSUPPORTED, "%s: a CUDA graph is being captured", who);
    CUDA_CHECK(cudaStreamSynchronize(s->stream));
    release(s);
    s->*field = value;
    return SD_OK;
}

extern "C" sd_status sd_cuda_set_conv_algo(sd_conv_algo algo) {
    if (algo != SD_CONV_ALGO_HEURISTIC && algo != SD_CONV_ALGO_FIND && algo != SD_CONV_ALGO_GRAPH &&
        algo != SD_CONV_ALGO_TUNE)
        return sd_fail(SD_ERR_ARG, "sd_cuda_set_conv_algo: %d is not heuristic (0), find (1), graph (2) or tune (3)",
                       (int)algo);
    return set_plan_setting("sd_cuda_set_conv_algo", &cu_state::conv_algo, algo, cu_conv_release);
}

extern "C" sd_status sd_cuda_set_gemm_algo(sd_gemm_algo algo) {
    if (algo != SD_GEMM_ALGO_HEURISTIC && algo != SD_GEMM_ALGO_TUNE)
        return sd_fail(SD_ERR_ARG, "sd_cuda_set_gemm_algo: %d is not heuristic (0) or tune (1)", (int)algo);
    return set_plan_setting("sd_cuda_set_gemm_algo", &cu_state::gemm_algo, algo, cu_lt_release);
}

extern "C" sd_gemm_algo sd_cuda_get_gemm_algo(void) {
    const cu_state *s = cu_cur();
    return s ? (sd_gemm_algo)s->gemm_algo : SD_GEMM_ALGO_HEURISTIC;
}

/* Sets one of the flash kernels' blocks-per-SM choices (forward or backward), 1 or 2. */
static sd_status set_flash_blocks(const char *fn, int cu_state::*field, int blocks) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    if (blocks != 1 && blocks != 2) return sd_fail(SD_ERR_ARG, "%s: %d blocks per SM (1 or 2)", fn, blocks);
    if (s->capturing) return sd_fail(SD_ERR_UNSUPPORTED, "%s: a CUDA graph is being captured", fn);
    s->*field = blocks;
    return SD_OK;
}

extern "C" sd_status sd_cuda_set_flash_blocks_per_sm(int blocks) {
    return set_flash_blocks("sd_cuda_set_flash_blocks_per_sm", &cu_state::flash_blocks_per_sm, blocks);
}

extern "C" int sd_cuda_get_flash_blocks_per_sm(void) {
    const cu_state *s = cu_cur();
    return s ? s->flash_blocks_per_sm : 2;
}

extern "C" sd_status sd_cuda_set_flash_bwd_blocks_per_sm(int blocks) {
    return set_flash_blocks("sd_cuda_set_flash_bwd_blocks_per_sm", &cu_state::flash_bwd_blocks_per_sm, blocks);
}

extern "C" int sd_cuda_get_flash_bwd_blocks_per_sm(void) {
    const cu_state *s = cu_cur();
    return s ? s->flash_bwd_blocks_per_sm : 1;
}

#ifndef SD_CUDA_SIM
int cu_pdl_on_stream(cudaStream_t stream) {
    const cu_state *s = cu_cur();
    return s && s->pdl && s->stream == stream;
}
#endif

extern "C" sd_status sd_cuda_set_pdl(int on) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    if (on != 0 && on != 1) return sd_fail(SD_ERR_ARG, "sd_cuda_set_pdl: %d (0 or 1)", on);
    if (s->capturing) return sd_fail(SD_ERR_UNSUPPORTED, "sd_cuda_set_pdl: a CUDA graph is being captured");
    const char *why = on ? pdl_unsupported(&s->prop) : NULL;
    if (why)
        return sd_fail(SD_ERR_UNSUPPORTED, "programmatic dependent launch on cuda:%d (%s, sm_%d%d): %s", s->ordinal,
                       s->prop.name, s->prop.major, s->prop.minor, why);
    s->pdl = on;
    return SD_OK;
}

extern "C" int sd_cuda_get_pdl(void) {
    const cu_state *s = cu_cur();
    return s ? s->pdl : 0;
}

extern "C" sd_status sd_cuda_set_conv_gemm(sd_conv_gemm mode) {
    if (mode != SD_CONV_GEMM_OFF && mode != SD_CONV_GEMM_AUTO && mode != SD_CONV_GEMM_ALL)
        return sd_fail(SD_ERR_ARG, "sd_cuda_set_conv_gemm: mode %d is not off (0), auto (1) or all (2)", (int)mode);
    return set_plan_setting("sd_cuda_set_conv_gemm", &cu_state::conv_gemm, mode, cu_conv_release);
}

extern "C" sd_status sd_cuda_set_conv_winograd(sd_conv_winograd mode) {
    if (mode < SD_CONV_WINOGRAD_OFF || mode > SD_CONV_WINOGRAD_F4_MIXED)
        return sd_fail(SD_ERR_ARG,
                       "sd_cuda_set_conv_winograd: mode %d is not off (0), on (1), all (2), f4 (3), f4-all (4), auto (5) "
                       "or f4-mixed (6)",
                       (int)mode);
    return set_plan_setting("sd_cuda_set_conv_winograd", &cu_state::conv_winograd, mode, cu_conv_release);
}

extern "C" sd_conv_winograd sd_cuda_get_conv_winograd(void) {
    const cu_state *s = cu_cur();
    return s ? (sd_conv_winograd)s->conv_winograd : SD_CONV_WINOGRAD_AUTO;
}

extern "C" uint64_t sd_cuda_workspace_generation(void) {
    const cu_state *s = cu_cur();
    return s ? s->ws_generation : 0;
}

extern "C" const char *sd_cuda_fast_gemm_name(void) {
    cu_state *s = cu_cur();
    if (!s) return "bf16";
    if (s->fast_gemm == CUBLAS_COMPUTE_32F_FAST_TF32) return "tf32";
    return s->fast_gemm == CUBLAS_COMPUTE_32F_FAST_16F ? "fp16" : "bf16";
}

extern "C" sd_conv_gemm sd_cuda_get_conv_gemm(void) {
    cu_state *s = cu_cur();
    return s ? (sd_conv_gemm)s->conv_gemm : SD_CONV_GEMM_AUTO;
}

extern "C" sd_conv_algo sd_cuda_get_conv_algo(void) {
    cu_state *s = cu_cur();
    return s ? (sd_conv_algo)s->conv_algo : SD_CONV_ALGO_HEURISTIC;
}

extern "C" sd_precision sd_cuda_get_precision(void) {
    cu_state *s = cu_cur();
    return s ? s->precision : SD_PRECISION_EXACT;
}

extern "C" sd_status sd_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    CUDA_CHECK(cudaMemGetInfo(free_bytes, total_bytes));
    return SD_OK;
}

extern "C" sd_status sd_cuda_timer_start(void) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    CUDA_CHECK(cudaEventRecord(s->ev_start, s->stream));
    return SD_OK;
}

/* One thread spinning on the global nanosecond timer: the stream stays busy while the host queues
 * what follows, which then runs back to back (the simulator runs kernels as they are launched: no
 * spin there). */
__global__ void k_hold(unsigned long long ns) {
    CU_PDL_ENTRY();
#ifndef SD_CUDA_SIM
    unsigned long long t0, t;
    asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t0));
    do {
        asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
    } while (t - t0 < ns);
#else
    (void)ns;
#endif
}

extern "C" sd_status sd_cuda_hold(double microseconds) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    if (s->capturing) return sd_fail(SD_ERR_INTERNAL, "sd_cuda_hold inside a CUDA graph capture");
    const unsigned long long ns = microseconds > 0 ? (unsigned long long)(microseconds * 1e3) : 0;
    CU_LAUNCH(k_hold, 1, 1, 0, s->stream)(ns);
    LAUNCH_CHECK("hold");
    return SD_OK;
}

extern "C" sd_status sd_cuda_timer_stop(float *ms) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    CUDA_CHECK(cudaEventRecord(s->ev_stop, s->stream));
    CUDA_CHECK(cudaEventSynchronize(s->ev_stop));
    CUDA_CHECK(cudaEventElapsedTime(ms, s->ev_start, s->ev_stop));
    return SD_OK;
}

struct sd_cuda_graph {
    cudaGraph_t graph;
    cudaGraphExec_t exec;
    cu_state *state;
};

extern "C" sd_status sd_cuda_graph_begin(void) {
    cu_state *s = NULL;
    CU_TRY(need_state(&s));
    if (s->capturing) return sd_fail(SD_ERR_INTERNAL, "CUDA graph capture already under way");
    /* Relaxed: the libraries may make calls a stricter mode would forbid; allocations are
     * refused by our own checks (capturing flag) with a clear message instead. */
    CUDA_CHECK(cudaStreamBeginCapture(s->stream, cudaStreamCaptureModeRelaxed));
    s->capturing = 1;
    return SD_OK;
}

extern "C" sd_status sd_cuda_graph_end(sd_cuda_graph **out) {
    cu_state *s = NULL;
    *out = NULL;
    CU_TRY(need_state(&s));
    if (!s->capturing) return sd_fail(SD_ERR_INTERNAL, "sd_cuda_graph_end without sd_cuda_graph_begin");
    cudaGraph_t graph = NULL;
    cudaError_t e = cudaStreamEndCapture(s->stream, &graph);
    s->capturing = 0;
    if (e != cudaSuccess) {
        if (graph) cudaGraphDestroy(graph);
        return cu_fail_cuda(e, __FILE__, __LINE__, "cudaStreamEndCapture (an op inside the capture failed or synchronised)");
    }
    cudaGraphExec_t exec = NULL;
    e = cudaGraphInstantiate(&exec, graph, 0);
    if (e != cudaSuccess) {
        cudaGraphDestroy(graph);
        return cu_fail_cuda(e, __FILE__, __LINE__, "cudaGraphInstantiate(&exec, graph, 0)");
    }
    sd_cuda_graph *g = (sd_cuda_graph *)calloc(1, sizeof *g);
    if (!g) {
        cudaGraphExecDestroy(exec);
        cudaGraphDestroy(graph);
        return sd_fail(SD_ERR_OOM, "out of host memory for a CUDA graph");
    }
    g->graph = graph;
    g->exec = exec;
    g->state = s;
    *out = g;
    return SD_OK;
}

extern "C" sd_status sd_cuda_graph_replay(sd_cuda_graph *g) {
    if (!g) return sd_fail(SD_ERR_INTERNAL, "replaying a NULL CUDA graph");
    CUDA_CHECK(cudaGraphLaunch(g->exec, g->state->stream));
    return SD_OK;
}

extern "C" void sd_cuda_graph_free(sd_cuda_graph *g) {
    if (!g) return;
    cudaGraphExecDestroy(g->exec);
    cudaGraphDestroy(g->graph);
    free(g);
}
