/* cuda_runtime.h (cudasim): the part of the CUDA runtime API and of CUDA C++'s device language that
 * the backend's kernels (kernels/ *.cu) use, implemented on the host so that the backend compiles with g++ and runs in CI.
 *
 * How CUDA C++ maps onto the host here (cudasim_runtime.cpp does the work):
 *   - __global__ and __device__ functions are plain functions; a launch written
 *     CU_LAUNCH(kernel, grid, block, smem, stream)(args) (cuda_common.cuh) runs every block of the
 *     grid in turn, and every thread of a block as a fiber on its own small stack, so __syncthreads
 *     and the warp-collective operations (__shfl_xor_sync, __all_sync, mma.sync) suspend a thread
 *     until the threads they wait for arrive, exactly as the hardware orders them. A barrier some
 *     threads never reach (divergent __syncthreads) is reported as a fault, not a hang.
 *   - threadIdx / blockIdx / blockDim / gridDim are variables the scheduler sets before it resumes
 *     a thread.
 *   - blocks are spread over the host's cores (OpenMP); the blocks one core runs run one after
 *     another. __shared__ variables are function-static and thread_local: one copy per core,
 *     shared by the threads of the block running there, as on the GPU. Dynamic shared memory
 *     (CU_DYNAMIC_SHARED) is a buffer of exactly the launch's size followed by an inaccessible
 *     page, so reading past it faults; asking for more than 48 KiB without
 *     cudaFuncSetAttribute(cudaFuncAttributeMaxDynamicSharedMemorySize) fails the launch as on a
 *     real GPU.
 *   - device memory is host memory from cudaMalloc, each allocation followed by an inaccessible
 *     page; the library stand-ins check that their operands lie inside an allocation.
 *   - one device, reported as an sm_90 GPU named "cudasim (host simulation of sm_90)" with 80 GiB.
 *   - streams run work at once, in order; a stream being captured records its work instead, and
 *     cudaGraphLaunch replays the recording.
 * It checks logic, not speed or the memory model: timings are host times, and data races between
 * threads of a block that a missing __syncthreads would cause on a GPU are not all visible (threads
 * run one after another between barriers). */
#ifndef CUDASIM_CUDA_RUNTIME_H
#define CUDASIM_CUDA_RUNTIME_H

#ifndef __cplusplus
#error "cudasim's cuda_runtime.h is C++ only: include sd/device.h from C code instead"
#endif

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <functional>
#include <tuple>
#include <type_traits>
#include <utility>

#include "cudasim.h"
#include "library_types.h"

/* ---- the device language ---- */
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __shared__ static thread_local
#define __launch_bounds__(...)
#define __CUDACC_SIM__ 1

struct uint3 {
    unsigned x, y, z;
};
struct dim3 {
    unsigned x, y, z;
    constexpr dim3(unsigned x_ = 1, unsigned y_ = 1, unsigned z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(16) float4 {
    float x, y, z, w;
};
struct alignas(8) float2 {
    float x, y;
};
static inline float4 make_float4(float x, float y, float z, float w) { return float4{x, y, z, w}; }
static inline float2 make_float2(float x, float y) { return float2{x, y}; }

/* The calling thread's coordinates (set by the scheduler before it resumes a simulated thread). */
extern thread_local uint3 threadIdx;
extern thread_local uint3 blockIdx;
extern thread_local dim3 blockDim;
extern thread_local dim3 gridDim;

/* IEEE-rounded arithmetic without contraction: the host has no implicit FMA at these flags, so the
 * plain operators round the same way. */
static inline float __fmul_rn(float a, float b) { return a * b; }
static inline float __fadd_rn(float a, float b) { return a + b; }
static inline float __fsub_rn(float a, float b) { return a - b; }
static inline float __fdiv_rn(float a, float b) { return a / b; }
using std::isfinite;
using std::isnan;

namespace cudasim {
/* Suspends the calling simulated thread until every live thread of its warp (or block) arrives. */
void warp_sync();
void block_sync();
/* The exchange slots of the calling lane's next warp collective: lane l writes slot l, then
 * everyone reads after one warp_sync. Consecutive collectives alternate between two sets, so a
 * lane that runs ahead to the next collective never overwrites what a slower lane still reads. */
uint64_t *warp_slots();
unsigned lane_id();
unsigned warp_lanes(); /* threads in the calling thread's warp (32, fewer in a partial last warp) */
void *dynamic_shared(); /* the current launch's dynamic shared memory */
} // namespace cudasim

static inline void __syncthreads() { cudasim::block_sync(); }
/* Blocks run on several host cores at once (OpenMP): device-wide atomics and fences are the host's. */
static inline unsigned atomicAdd(unsigned *p, unsigned v) { return __atomic_fetch_add(p, v, __ATOMIC_SEQ_CST); }
static inline void __threadfence() { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
template <typename T> static inline T __ldcg(const T *p) { return *p; }

template <typename T> static inline T __shfl_xor_sync(unsigned mask, T v, int lane_mask, int width = 32) {
    static_assert(sizeof(T) <= sizeof(uint64_t), "shuffle of a value wider than 64 bits");
    (void)mask;
    uint64_t *slots = cudasim::warp_slots();
    const unsigned lane = cudasim::lane_id();
    std::memcpy(&slots[lane], &v, sizeof(T));
    cudasim::warp_sync();
    /* xor within segments of `width` lanes; a source lane outside the warp returns the own value */
    const unsigned src = (lane & ~(unsigned)(width - 1)) | ((lane ^ (unsigned)lane_mask) & (unsigned)(width - 1));
    T r = v;
    if (src < cudasim::warp_lanes()) std::memcpy(&r, &slots[src], sizeof(T));
    return r;
}

static inline int __all_sync(unsigned mask, int predicate) {
    (void)mask;
    uint64_t *slots = cudasim::warp_slots();
    const unsigned lane = cudasim::lane_id(), n = cudasim::warp_lanes();
    slots[lane] = predicate != 0;
    cudasim::warp_sync();
    int all = 1;
    for (unsigned l = 0; l < n; l++) all &= slots[l] != 0;
    return all;
}

/* Dynamic shared memory of a launch: `extern __shared__ T name[]` in CUDA. */
#define CU_SIM_DYNAMIC_SHARED(type, name) type *name = reinterpret_cast<type *>(cudasim::dynamic_shared())

/* ---- the runtime API ---- */
typedef enum cudaError {
    cudaSuccess = 0,
    cudaErrorInvalidValue = 1,
    cudaErrorMemoryAllocation = 2,
    cudaErrorInitializationError = 3,
    cudaErrorInvalidConfiguration = 9,
    cudaErrorInvalidDevice = 101,
    cudaErrorInvalidDeviceFunction = 98,
    cudaErrorNoDevice = 100,
    cudaErrorInsufficientDriver = 35,
    cudaErrorCallRequiresNewerDriver = 36,
    cudaErrorNoKernelImageForDevice = 209,
    cudaErrorUnsupportedPtxVersion = 222,
    cudaErrorInvalidResourceHandle = 400,
    cudaErrorNotReady = 600,
    cudaErrorLaunchOutOfResources = 701,
    cudaErrorStreamCaptureUnsupported = 900,
    cudaErrorStreamCaptureInvalidated = 901,
    cudaErrorStreamCaptureUnmatched = 903,
    cudaErrorStreamCaptureWrongThread = 908,
    cudaErrorIllegalState = 401,
} cudaError_t;

typedef enum cudaMemcpyKind {
    cudaMemcpyHostToHost = 0,
    cudaMemcpyHostToDevice = 1,
    cudaMemcpyDeviceToHost = 2,
    cudaMemcpyDeviceToDevice = 3,
    cudaMemcpyDefault = 4,
} cudaMemcpyKind;

typedef enum cudaStreamCaptureMode {
    cudaStreamCaptureModeGlobal = 0,
    cudaStreamCaptureModeThreadLocal = 1,
    cudaStreamCaptureModeRelaxed = 2,
} cudaStreamCaptureMode;

typedef enum cudaFuncAttribute {
    cudaFuncAttributeMaxDynamicSharedMemorySize = 8,
    cudaFuncAttributePreferredSharedMemoryCarveout = 9,
} cudaFuncAttribute;

#define cudaStreamDefault 0x0
#define cudaStreamNonBlocking 0x1

struct cudaDeviceProp {
    char name[256];
    size_t totalGlobalMem;
    size_t sharedMemPerBlock;
    size_t sharedMemPerBlockOptin;
    int regsPerBlock;
    int warpSize;
    int maxThreadsPerBlock;
    int maxThreadsDim[3];
    int maxGridSize[3];
    int major, minor;
    int multiProcessorCount;
};

/* Device attributes: the one the backend reads (the SM clock, kHz; the simulator has none and
 * says 0). */
enum cudaDeviceAttr { cudaDevAttrClockRate = 13 };
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device);

struct CUevent_st;
typedef struct CUevent_st *cudaEvent_t;
struct CUgraph_st;
typedef struct CUgraph_st *cudaGraph_t;
struct CUgraphExec_st;
typedef struct CUgraphExec_st *cudaGraphExec_t;

const char *cudaGetErrorString(cudaError_t e);
const char *cudaGetErrorName(cudaError_t e);
cudaError_t cudaGetLastError(void);
cudaError_t cudaPeekAtLastError(void);
cudaError_t cudaRuntimeGetVersion(int *v);
cudaError_t cudaDriverGetVersion(int *v);
cudaError_t cudaGetDeviceCount(int *n);
cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device);
cudaError_t cudaSetDevice(int device);
cudaError_t cudaGetDevice(int *device);
cudaError_t cudaMalloc(void **p, size_t bytes);
cudaError_t cudaFree(void *p);
cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes);
cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s = 0);
cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind);
cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t s = 0);
cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s = 0);
cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags);
cudaError_t cudaStreamDestroy(cudaStream_t s);
cudaError_t cudaStreamSynchronize(cudaStream_t s);
cudaError_t cudaDeviceSynchronize(void);
cudaError_t cudaEventCreate(cudaEvent_t *e);
cudaError_t cudaEventDestroy(cudaEvent_t e);
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s = 0);
cudaError_t cudaEventSynchronize(cudaEvent_t e);
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t stop);
cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode);
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph);
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags = 0);
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s);
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec);
cudaError_t cudaGraphDestroy(cudaGraph_t graph);

namespace cudasim {
/* Launch-time attribute of a kernel, keyed by its address. */
cudaError_t set_max_dynamic_shared(const void *kernel, int bytes);
/* Validates the configuration (sets the sticky launch error on failure) and runs, or records when
 * `s` is capturing, `body` for every thread of the grid. */
void launch(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t s,
            std::function<void()> body);

/* CU_LAUNCH(kernel, grid, block, smem, stream)(args...): binds the arguments as the kernel's own
 * parameter types (the conversions a <<<>>> launch performs), then launches. */
template <typename... Params> struct launcher {
    void (*kernel)(Params...);
    const char *name;
    dim3 grid, block;
    size_t smem;
    cudaStream_t stream;
    template <typename... Args> void operator()(Args &&...args) const {
        static_assert(sizeof...(Args) == sizeof...(Params), "kernel launched with the wrong number of arguments");
        std::tuple<std::decay_t<Params>...> bound(static_cast<std::decay_t<Params>>(args)...);
        void (*k)(Params...) = kernel;
        launch(name, reinterpret_cast<const void *>(k), grid, block, smem, stream,
               [k, bound]() { std::apply(k, bound); });
    }
};
template <typename... Params>
launcher<Params...> make_launcher(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
                                  const char *name) {
    return launcher<Params...>{kernel, name, grid, block, smem, s};
}
} // namespace cudasim

template <typename... Params>
static inline cudaError_t cudaFuncSetAttribute(void (*kernel)(Params...), cudaFuncAttribute attr, int value) {
    if (attr != cudaFuncAttributeMaxDynamicSharedMemorySize) return cudaSuccess;
    return cudasim::set_max_dynamic_shared(reinterpret_cast<const void *>(kernel), value);
}

#endif
