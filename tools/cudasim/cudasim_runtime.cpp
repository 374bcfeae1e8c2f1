/* cudasim_runtime.cpp: the host simulation of the CUDA runtime and of kernel execution that
 * tools/cudasim/include/cuda_runtime.h declares (read its header comment first).
 *
 * Kernel execution: the blocks of a grid are shared out over the host cores (OpenMP), each core
 * running its blocks one after another; the threads of a block run as
 * fibers (user-mode threads on their own stacks, switched by a few instructions of assembly on
 * x86-64, by ucontext elsewhere). A fiber runs until it finishes or reaches a barrier: a warp
 * collective waits for the live threads of its warp, __syncthreads for those of its block. When
 * no fiber can run, the scheduler releases whichever barrier is complete; when none is, some
 * threads wait for threads that will never come (a divergent barrier) and the simulator stops
 * with a message naming the kernel, the block and who waits where.
 *
 * Memory: each cudaMalloc is an mmap whose allocation ends right before an inaccessible page, so a
 * kernel reading or writing past the end of a buffer faults; the fault handler names the kernel,
 * block and thread that were running. */
#include "cuda_runtime.h"
#include "cuda_bf16.h"
#include "cuda_fp16.h"

#include <algorithm>
#include <atomic>
#include <chrono>
#include <csignal>
#include <cstdarg>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include <sys/mman.h>
#include <unistd.h>

#if !defined(__x86_64__)
#include <ucontext.h>
#endif

/* ================================================================================================
 * Faults, errors
 * ============================================================================================= */

thread_local uint3 threadIdx;
thread_local uint3 blockIdx;
thread_local dim3 blockDim;
thread_local dim3 gridDim;

namespace {
thread_local cudaError_t g_last_error = cudaSuccess;
thread_local const char *g_running_kernel = nullptr; /* for fault messages */

cudaError_t set_error(cudaError_t e) {
    if (e != cudaSuccess) g_last_error = e;
    return e;
}
} // namespace

namespace cudasim {

void fault(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cudasim: ");
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    if (g_running_kernel)
        fprintf(stderr, " (in kernel %s, block (%u, %u, %u), thread (%u, %u, %u))", g_running_kernel, blockIdx.x,
                blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y, threadIdx.z);
    fprintf(stderr, "\n");
    fflush(stderr);
    abort();
}

} // namespace cudasim

static const char *error_name(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInitializationError: return "cudaErrorInitializationError";
    case cudaErrorInvalidConfiguration: return "cudaErrorInvalidConfiguration";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorInvalidDeviceFunction: return "cudaErrorInvalidDeviceFunction";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    case cudaErrorInsufficientDriver: return "cudaErrorInsufficientDriver";
    case cudaErrorCallRequiresNewerDriver: return "cudaErrorCallRequiresNewerDriver";
    case cudaErrorNoKernelImageForDevice: return "cudaErrorNoKernelImageForDevice";
    case cudaErrorUnsupportedPtxVersion: return "cudaErrorUnsupportedPtxVersion";
    case cudaErrorInvalidResourceHandle: return "cudaErrorInvalidResourceHandle";
    case cudaErrorNotReady: return "cudaErrorNotReady";
    case cudaErrorLaunchOutOfResources: return "cudaErrorLaunchOutOfResources";
    case cudaErrorStreamCaptureUnsupported: return "cudaErrorStreamCaptureUnsupported";
    case cudaErrorStreamCaptureInvalidated: return "cudaErrorStreamCaptureInvalidated";
    case cudaErrorStreamCaptureUnmatched: return "cudaErrorStreamCaptureUnmatched";
    case cudaErrorStreamCaptureWrongThread: return "cudaErrorStreamCaptureWrongThread";
    case cudaErrorIllegalState: return "cudaErrorIllegalState";
    }
    return "cudaErrorUnknown";
}

const char *cudaGetErrorName(cudaError_t e) { return error_name(e); }

const char *cudaGetErrorString(cudaError_t e) {
    switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorStreamCaptureUnsupported: return "operation not permitted when stream is capturing";
    case cudaErrorStreamCaptureInvalidated: return "operation failed due to a previous error during capture";
    default: return error_name(e);
    }
}

cudaError_t cudaGetLastError(void) {
    const cudaError_t e = g_last_error;
    g_last_error = cudaSuccess;
    return e;
}
cudaError_t cudaPeekAtLastError(void) { return g_last_error; }

/* ================================================================================================
 * The device
 * ============================================================================================= */

static const size_t SIM_TOTAL_MEM = (size_t)80 << 30;
static const int SIM_SMEM_DEFAULT = 48 * 1024;
static const int SIM_SMEM_OPTIN = 227 * 1024; /* sm_90: 227 KiB per block with the opt-in */
static thread_local int g_device = 0;

cudaError_t cudaRuntimeGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int *v) {
    *v = 13000;
    return cudaSuccess;
}
cudaError_t cudaGetDeviceCount(int *n) {
    *n = 1;
    return cudaSuccess;
}
cudaError_t cudaDeviceGetAttribute(int *value, cudaDeviceAttr attr, int device) {
    if (device != 0) return set_error(cudaErrorInvalidDevice);
    if (!value || attr != cudaDevAttrClockRate) return set_error(cudaErrorInvalidValue);
    *value = 0; /* no clock: rates relative to a peak are not computed for the simulator */
    return cudaSuccess;
}

cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int device) {
    if (device != 0) return set_error(cudaErrorInvalidDevice);
    memset(p, 0, sizeof *p);
    snprintf(p->name, sizeof p->name, "cudasim (host simulation of sm_90)");
    p->totalGlobalMem = SIM_TOTAL_MEM;
    p->sharedMemPerBlock = SIM_SMEM_DEFAULT;
    p->sharedMemPerBlockOptin = SIM_SMEM_OPTIN;
    p->regsPerBlock = 65536;
    p->warpSize = 32;
    p->maxThreadsPerBlock = 1024;
    p->maxThreadsDim[0] = 1024;
    p->maxThreadsDim[1] = 1024;
    p->maxThreadsDim[2] = 64;
    p->maxGridSize[0] = 0x7fffffff;
    p->maxGridSize[1] = 65535;
    p->maxGridSize[2] = 65535;
    p->major = 9;
    p->minor = 0;
    p->multiProcessorCount = 132;
    return cudaSuccess;
}
cudaError_t cudaSetDevice(int device) {
    if (device != 0) return set_error(cudaErrorInvalidDevice);
    g_device = device;
    return cudaSuccess;
}
cudaError_t cudaGetDevice(int *device) {
    *device = g_device;
    return cudaSuccess;
}

/* ================================================================================================
 * Memory
 * ============================================================================================= */

namespace {
struct allocation {
    size_t bytes;      /* what was asked for */
    void *map;         /* the mmap, from the first page to the guard page included */
    size_t map_bytes;
};
std::mutex g_mem_lock;
std::map<uintptr_t, allocation> g_allocs; /* by start address */
size_t g_allocated = 0;
const size_t PAGE = 4096;

/* One region ending exactly at an inaccessible page: [result, result + bytes) then the guard. */
void *map_with_guard(size_t bytes, size_t align, void **map_out, size_t *map_bytes_out) {
    const size_t body = (bytes + align - 1) / align * align;
    const size_t pages = (body + PAGE - 1) / PAGE;
    const size_t total = (pages + 1) * PAGE;
    void *m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) return nullptr;
    char *guard = (char *)m + pages * PAGE;
    if (mprotect(guard, PAGE, PROT_NONE) != 0) {
        munmap(m, total);
        return nullptr;
    }
    *map_out = m;
    *map_bytes_out = total;
    return guard - body;
}
} // namespace

cudaError_t cudaMalloc(void **p, size_t bytes) {
    *p = nullptr;
    std::lock_guard<std::mutex> lock(g_mem_lock);
    if (bytes > SIM_TOTAL_MEM - g_allocated) return set_error(cudaErrorMemoryAllocation);
    allocation a;
    a.bytes = bytes ? bytes : 1;
    void *q = map_with_guard(a.bytes, 256, &a.map, &a.map_bytes);
    if (!q) return set_error(cudaErrorMemoryAllocation);
    /* device memory is not zeroed: fill it with a NaN pattern so reading what was never written
     * shows up instead of reading as zero */
    memset(q, 0xff, a.bytes);
    g_allocs[(uintptr_t)q] = a;
    g_allocated += a.bytes;
    *p = q;
    return cudaSuccess;
}

cudaError_t cudaFree(void *p) {
    if (!p) return cudaSuccess;
    std::lock_guard<std::mutex> lock(g_mem_lock);
    auto it = g_allocs.find((uintptr_t)p);
    if (it == g_allocs.end()) return set_error(cudaErrorInvalidValue);
    g_allocated -= it->second.bytes;
    munmap(it->second.map, it->second.map_bytes);
    g_allocs.erase(it);
    return cudaSuccess;
}

cudaError_t cudaMemGetInfo(size_t *free_bytes, size_t *total_bytes) {
    std::lock_guard<std::mutex> lock(g_mem_lock);
    *total_bytes = SIM_TOTAL_MEM;
    *free_bytes = SIM_TOTAL_MEM - g_allocated;
    return cudaSuccess;
}

static bool in_device_memory(const void *p, size_t bytes) {
    std::lock_guard<std::mutex> lock(g_mem_lock);
    auto it = g_allocs.upper_bound((uintptr_t)p);
    if (it == g_allocs.begin()) return false;
    --it;
    const uintptr_t start = it->first, end = start + it->second.bytes;
    return (uintptr_t)p >= start && (uintptr_t)p + bytes <= end;
}

void cudasim::check_device_range(const void *p, size_t bytes, const char *what) {
    if (bytes == 0) return;
    if (!in_device_memory(p, bytes))
        fault("%s: [%p, +%zu bytes) is not inside one device allocation (a host pointer, a freed buffer, or "
              "past the end of a buffer)",
              what, p, bytes);
}

/* ================================================================================================
 * Streams, events, graphs
 * ============================================================================================= */

struct CUstream_st {
    bool capturing = false;
    bool capture_invalidated = false;
    std::vector<std::function<void()>> recording;
};
struct CUevent_st {
    double seconds = 0.0;
    bool recorded = false;
};
struct CUgraph_st {
    std::vector<std::function<void()>> nodes;
};
struct CUgraphExec_st {
    std::vector<std::function<void()>> nodes;
};

static double now_seconds() {
    return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

void cudasim::enqueue(cudaStream_t s, std::function<void()> work) {
    if (s && s->capturing) {
        s->recording.push_back(std::move(work));
        return;
    }
    work();
}

cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned flags) {
    (void)flags;
    *s = new CUstream_st();
    return cudaSuccess;
}
cudaError_t cudaStreamDestroy(cudaStream_t s) {
    delete s;
    return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t s) {
    if (s && s->capturing) {
        s->capture_invalidated = true; /* as the driver does: the capture is now unusable */
        return set_error(cudaErrorStreamCaptureUnsupported);
    }
    return cudaSuccess;
}
cudaError_t cudaDeviceSynchronize(void) { return cudaSuccess; }

cudaError_t cudaEventCreate(cudaEvent_t *e) {
    *e = new CUevent_st();
    return cudaSuccess;
}
cudaError_t cudaEventDestroy(cudaEvent_t e) {
    delete e;
    return cudaSuccess;
}
cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
    if (!e) return set_error(cudaErrorInvalidResourceHandle);
    cudasim::enqueue(s, [e]() {
        e->seconds = now_seconds();
        e->recorded = true;
    });
    return cudaSuccess;
}
cudaError_t cudaEventSynchronize(cudaEvent_t e) { return e ? cudaSuccess : set_error(cudaErrorInvalidResourceHandle); }
cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t start, cudaEvent_t stop) {
    if (!start || !stop || !start->recorded || !stop->recorded) return set_error(cudaErrorInvalidResourceHandle);
    *ms = (float)((stop->seconds - start->seconds) * 1000.0);
    return cudaSuccess;
}

cudaError_t cudaStreamBeginCapture(cudaStream_t s, cudaStreamCaptureMode mode) {
    (void)mode;
    if (!s) return set_error(cudaErrorStreamCaptureUnsupported); /* the legacy stream cannot be captured */
    if (s->capturing) return set_error(cudaErrorIllegalState);
    s->capturing = true;
    s->capture_invalidated = false;
    s->recording.clear();
    return cudaSuccess;
}
cudaError_t cudaStreamEndCapture(cudaStream_t s, cudaGraph_t *graph) {
    *graph = nullptr;
    if (!s || !s->capturing) return set_error(cudaErrorIllegalState);
    s->capturing = false;
    if (s->capture_invalidated) {
        s->recording.clear();
        return set_error(cudaErrorStreamCaptureInvalidated);
    }
    cudaGraph_t g = new CUgraph_st();
    g->nodes.swap(s->recording);
    *graph = g;
    return cudaSuccess;
}
cudaError_t cudaGraphInstantiate(cudaGraphExec_t *exec, cudaGraph_t graph, unsigned long long flags) {
    (void)flags;
    if (!graph) return set_error(cudaErrorInvalidValue);
    cudaGraphExec_t x = new CUgraphExec_st();
    x->nodes = graph->nodes;
    *exec = x;
    return cudaSuccess;
}
cudaError_t cudaGraphLaunch(cudaGraphExec_t exec, cudaStream_t s) {
    if (!exec) return set_error(cudaErrorInvalidValue);
    const std::vector<std::function<void()>> nodes = exec->nodes;
    cudasim::enqueue(s, [nodes]() {
        for (const auto &n : nodes) n();
    });
    return cudaSuccess;
}
cudaError_t cudaGraphExecDestroy(cudaGraphExec_t exec) {
    delete exec;
    return cudaSuccess;
}
cudaError_t cudaGraphDestroy(cudaGraph_t graph) {
    delete graph;
    return cudaSuccess;
}

/* ================================================================================================
 * Copies
 * ============================================================================================= */

/* The device side(s) of a copy must lie inside allocations; the host side must not (a device
 * pointer where the host was meant is the bug this catches). */
static cudaError_t check_copy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, const char *what) {
    const bool dst_dev = in_device_memory(dst, bytes), src_dev = in_device_memory(src, bytes);
    bool ok = true;
    switch (kind) {
    case cudaMemcpyHostToDevice: ok = dst_dev && !src_dev; break;
    case cudaMemcpyDeviceToHost: ok = src_dev && !dst_dev; break;
    case cudaMemcpyDeviceToDevice: ok = src_dev && dst_dev; break;
    case cudaMemcpyHostToHost: ok = !src_dev && !dst_dev; break;
    case cudaMemcpyDefault: ok = true; break;
    }
    if (!ok)
        cudasim::fault("%s of %zu bytes, kind %d: destination %p is %s, source %p is %s", what, bytes, (int)kind, dst,
                       dst_dev ? "device memory" : "not device memory", src, src_dev ? "device memory" : "not device memory");
    return cudaSuccess;
}

cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind, cudaStream_t s) {
    if (!bytes) return cudaSuccess;
    check_copy(dst, src, bytes, kind, "cudaMemcpyAsync");
    if (s && s->capturing && kind != cudaMemcpyDeviceToDevice) {
        /* a copy from or to pageable host memory cannot be part of a graph */
        s->capture_invalidated = true;
        return set_error(cudaErrorStreamCaptureUnsupported);
    }
    if (kind == cudaMemcpyHostToDevice) {
        /* from pageable memory the call returns once the source is staged: copy it now */
        std::vector<char> staged((const char *)src, (const char *)src + bytes);
        cudasim::enqueue(s, [dst, staged]() { memcpy(dst, staged.data(), staged.size()); });
    } else {
        cudasim::enqueue(s, [dst, src, bytes]() { memmove(dst, src, bytes); });
    }
    return cudaSuccess;
}

cudaError_t cudaMemcpy(void *dst, const void *src, size_t bytes, cudaMemcpyKind kind) {
    return cudaMemcpyAsync(dst, src, bytes, kind, nullptr);
}

cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch, size_t width, size_t height,
                              cudaMemcpyKind kind, cudaStream_t s) {
    if (!width || !height) return cudaSuccess;
    if (width > dpitch || width > spitch) return set_error(cudaErrorInvalidValue);
    /* the spans touched: (height - 1) pitches plus one row */
    check_copy(dst, src, 0, cudaMemcpyDefault, "cudaMemcpy2DAsync");
    const size_t dspan = (height - 1) * dpitch + width, sspan = (height - 1) * spitch + width;
    if (kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyHostToDevice)
        cudasim::check_device_range(dst, dspan, "cudaMemcpy2DAsync destination");
    if (kind == cudaMemcpyDeviceToDevice || kind == cudaMemcpyDeviceToHost)
        cudasim::check_device_range(src, sspan, "cudaMemcpy2DAsync source");
    if (s && s->capturing && kind != cudaMemcpyDeviceToDevice) {
        s->capture_invalidated = true;
        return set_error(cudaErrorStreamCaptureUnsupported);
    }
    cudasim::enqueue(s, [=]() {
        for (size_t r = 0; r < height; r++) memmove((char *)dst + r * dpitch, (const char *)src + r * spitch, width);
    });
    return cudaSuccess;
}

cudaError_t cudaMemsetAsync(void *dst, int value, size_t bytes, cudaStream_t s) {
    if (!bytes) return cudaSuccess;
    cudasim::check_device_range(dst, bytes, "cudaMemsetAsync");
    cudasim::enqueue(s, [=]() { memset(dst, value, bytes); });
    return cudaSuccess;
}

/* ================================================================================================
 * Fibers
 * ============================================================================================= */

namespace {

enum fiber_state { FIBER_READY, FIBER_WAIT_WARP, FIBER_WAIT_BLOCK, FIBER_DONE };

struct fiber {
    void *sp = nullptr; /* saved stack pointer while suspended */
#if !defined(__x86_64__)
    ucontext_t uc;
#endif
    char *stack = nullptr;
    fiber_state state = FIBER_DONE;
    uint3 idx{0, 0, 0};
    unsigned linear = 0; /* x + y·bx + z·bx·by */
    unsigned exchanges = 0; /* warp collectives this thread has entered (picks the slot set) */
    unsigned warp_lanes = 32; /* threads in this thread's warp (fewer in a partial last warp) */
};

/* What the lanes of one warp exchange in a collective; two sets, alternating (see warp_slots). */
struct mma_fragments {
    uint32_t a[32][4];
    uint32_t b[32][2];
    float c[32][4];
};
struct warp_exchange {
    uint64_t slots[2][32];
    mma_fragments mma[2];
};

const size_t FIBER_STACK = 16 * 1024;

struct scheduler {
    std::vector<fiber> fibers;
    std::vector<warp_exchange> warps;
    char *stacks = nullptr; /* 1024 stacks, each above a guard page */
    void *sched_sp = nullptr;
#if !defined(__x86_64__)
    ucontext_t sched_uc;
#endif
    fiber *cur = nullptr;
    const std::function<void()> *body = nullptr;
    unsigned n_threads = 0;
    void *dyn_smem = nullptr; /* this launch's dynamic shared memory */
    unsigned long launch_id = 0; /* the launch the fields above were set up for */
    char *smem_region = nullptr;
    size_t smem_region_bytes = 0;
};

thread_local scheduler *g_sched = nullptr;

scheduler *sched() {
    if (!g_sched) {
        scheduler *s = new scheduler();
        s->fibers.resize(1024);
        s->warps.resize(32);
        const size_t slot = FIBER_STACK + PAGE;
        s->stacks = (char *)mmap(nullptr, slot * 1024, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                                 -1, 0);
        if (s->stacks == MAP_FAILED) cudasim::fault("cannot map fiber stacks");
        for (int i = 0; i < 1024; i++) {
            mprotect(s->stacks + i * slot, PAGE, PROT_NONE); /* a stack overflow faults */
            s->fibers[i].stack = s->stacks + i * slot + PAGE;
        }
        /* dynamic shared memory: the opt-in maximum, ending at a guard page */
        s->smem_region_bytes = ((size_t)SIM_SMEM_OPTIN + PAGE - 1) / PAGE * PAGE;
        s->smem_region = (char *)mmap(nullptr, s->smem_region_bytes + PAGE, PROT_READ | PROT_WRITE,
                                      MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (s->smem_region == MAP_FAILED) cudasim::fault("cannot map shared memory");
        mprotect(s->smem_region + s->smem_region_bytes, PAGE, PROT_NONE);
        g_sched = s;
    }
    return g_sched;
}

} // namespace

#if defined(__x86_64__)
/* switch_stack(save, next): pushes the callee-saved registers, stores the stack pointer in *save,
 * loads `next` and pops the registers saved there. A new fiber's stack is prepared so that the
 * pops land in fiber_entry with the fiber in r12. */
extern "C" void cudasim_switch_stack(void **save, void *next);
extern "C" void cudasim_fiber_entry();
asm(R"(
    .text
    .globl cudasim_switch_stack
    .type cudasim_switch_stack, @function
cudasim_switch_stack:
    pushq %rbp
    pushq %rbx
    pushq %r12
    pushq %r13
    pushq %r14
    pushq %r15
    movq %rsp, (%rdi)
    movq %rsi, %rsp
    popq %r15
    popq %r14
    popq %r13
    popq %r12
    popq %rbx
    popq %rbp
    ret
    .size cudasim_switch_stack, .-cudasim_switch_stack

    .globl cudasim_fiber_entry
    .type cudasim_fiber_entry, @function
cudasim_fiber_entry:
    movq %r12, %rdi
    call cudasim_fiber_main
    ud2
    .size cudasim_fiber_entry, .-cudasim_fiber_entry
)");
#endif

extern "C" void cudasim_fiber_main(fiber *f);

namespace {

void fiber_prepare(fiber *f) {
    f->state = FIBER_READY;
    f->exchanges = 0;
#if defined(__x86_64__)
    /* after the six pops and the ret the stack pointer must be 16-byte aligned (the call in
     * fiber_entry then leaves it at 8 mod 16, the ABI's state at function entry) */
    uintptr_t top = ((uintptr_t)(f->stack + FIBER_STACK)) & ~(uintptr_t)15;
    void **sp = (void **)(top - 72);
    sp[0] = nullptr; /* r15 */
    sp[1] = nullptr; /* r14 */
    sp[2] = nullptr; /* r13 */
    sp[3] = f;       /* r12: the argument of fiber_main */
    sp[4] = nullptr; /* rbx */
    sp[5] = nullptr; /* rbp */
    sp[6] = (void *)&cudasim_fiber_entry;
    sp[7] = nullptr;
    sp[8] = nullptr;
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = f->stack;
    f->uc.uc_stack.ss_size = FIBER_STACK;
    f->uc.uc_link = nullptr;
    makecontext(&f->uc, (void (*)())cudasim_fiber_main, 1, f);
#endif
}

void resume(scheduler *s, fiber *f) {
    s->cur = f;
    threadIdx = f->idx;
#if defined(__x86_64__)
    cudasim_switch_stack(&s->sched_sp, f->sp);
#else
    swapcontext(&s->sched_uc, &f->uc);
#endif
    s->cur = nullptr;
}

void suspend(scheduler *s, fiber *f) {
#if defined(__x86_64__)
    cudasim_switch_stack(&f->sp, s->sched_sp);
#else
    swapcontext(&f->uc, &s->sched_uc);
#endif
    threadIdx = f->idx; /* the scheduler resumed us: our coordinates again */
}

void wait_at(fiber_state why) {
    scheduler *s = g_sched;
    fiber *f = s ? s->cur : nullptr;
    if (!f) cudasim::fault("a barrier or warp collective was called outside a kernel");
    f->state = why;
    suspend(s, f);
}

const char *state_name(fiber_state st) {
    switch (st) {
    case FIBER_READY: return "running";
    case FIBER_WAIT_WARP: return "at a warp collective";
    case FIBER_WAIT_BLOCK: return "at __syncthreads";
    case FIBER_DONE: return "finished";
    }
    return "?";
}

/* Describes who waits where, for a deadlock message. */
void describe_block(scheduler *s, char *detail, size_t cap) {
    const unsigned n = s->n_threads, n_warps = (n + 31) / 32;
    size_t used = 0;
    detail[0] = 0;
    for (unsigned w = 0; w < n_warps && used + 96 < cap; w++) {
        const unsigned lo = w * 32, hi = std::min(n, lo + 32);
        unsigned counts[4] = {0, 0, 0, 0};
        for (unsigned i = lo; i < hi; i++) counts[s->fibers[i].state]++;
        used += (size_t)snprintf(detail + used, cap - used, " warp %u: %u %s, %u %s, %u %s;", w, counts[FIBER_WAIT_WARP],
                                 state_name(FIBER_WAIT_WARP), counts[FIBER_WAIT_BLOCK], state_name(FIBER_WAIT_BLOCK),
                                 counts[FIBER_DONE], state_name(FIBER_DONE));
    }
}

/* Runs the lanes [lo, hi) of one warp until each has finished or waits at __syncthreads. A warp
 * collective is released as soon as every lane of the warp has reached it, so the warp's lanes
 * move together, as they do on the hardware. */
/* CUDASIM_SCHEDULE=reverse: between two barriers, warps and the lanes of a warp run last to first.
 * Code that is correct on a GPU cannot depend on that order; a kernel that reads shared memory
 * another thread writes without a barrier in between (a race) gives different results in the two
 * orders, which a second run of the tests in reverse order shows. */
std::atomic<int> g_reverse{-1}; /* -1: not read from the environment yet */

bool reverse_schedule() {
    int r = g_reverse.load(std::memory_order_relaxed);
    if (r < 0) {
        const char *e = getenv("CUDASIM_SCHEDULE");
        r = e && !strcmp(e, "reverse");
        g_reverse.store(r);
    }
    return r != 0;
}

void run_warp(scheduler *s, unsigned w, unsigned lo, unsigned hi, const char *name) {
    const bool rev = reverse_schedule();
    for (;;) {
        unsigned at_warp = 0, exited = 0;
        for (unsigned k = lo; k < hi; k++) {
            fiber *f = &s->fibers[rev ? hi - 1 - (k - lo) : k];
            if (f->state == FIBER_READY) resume(s, f);
            at_warp += f->state == FIBER_WAIT_WARP;
            exited += f->state == FIBER_DONE;
        }
        if (!at_warp) return; /* all at the block barrier or finished */
        if (at_warp + exited != hi - lo) {
            char detail[512];
            describe_block(s, detail, sizeof detail);
            cudasim::fault("kernel %s, block (%u, %u, %u): deadlock, lanes of warp %u wait at a warp collective while "
                           "others of the warp wait at __syncthreads:%s",
                           name, blockIdx.x, blockIdx.y, blockIdx.z, w, detail);
        }
        if (exited)
            cudasim::fault("kernel %s, block (%u, %u, %u), warp %u: %u lanes wait at a full-mask warp collective "
                           "while %u lanes of the warp have already exited",
                           name, blockIdx.x, blockIdx.y, blockIdx.z, w, at_warp, exited);
        for (unsigned i = lo; i < hi; i++) s->fibers[i].state = FIBER_READY;
    }
}

/* Runs one block to completion: warp after warp up to the next __syncthreads, then releases it
 * (threads that have exited count as arrived, as on sm_70 and later). */
void run_block(scheduler *s, const char *name) {
    const unsigned n = s->n_threads;
    const unsigned n_warps = (n + 31) / 32;
    for (unsigned i = 0; i < n; i++) fiber_prepare(&s->fibers[i]);
    for (;;) {
        for (unsigned k = 0; k < n_warps; k++) {
            const unsigned w = reverse_schedule() ? n_warps - 1 - k : k;
            run_warp(s, w, w * 32, std::min(n, w * 32 + 32), name);
        }
        unsigned at_block = 0;
        for (unsigned i = 0; i < n; i++)
            if (s->fibers[i].state == FIBER_WAIT_BLOCK) {
                s->fibers[i].state = FIBER_READY;
                at_block++;
            }
        if (!at_block) return; /* everyone finished */
    }
}

std::mutex g_launch_lock; /* one grid at a time (its blocks spread over the host's cores) */

/* CUDASIM_PROFILE=1: host time per kernel, printed at exit (where a slow simulated test spends it) */
struct kernel_profile {
    long launches = 0;
    double seconds = 0.0;
    unsigned long long threads = 0;
};
std::map<std::string, kernel_profile> *g_profile = nullptr;

void print_profile() {
    if (!g_profile) return;
    std::vector<std::pair<std::string, kernel_profile>> rows(g_profile->begin(), g_profile->end());
    std::sort(rows.begin(), rows.end(), [](const auto &a, const auto &b) { return a.second.seconds > b.second.seconds; });
    fprintf(stderr, "cudasim profile (host seconds per kernel):\n");
    for (const auto &r : rows)
        fprintf(stderr, "  %10.3f s  %7ld launches  %14llu threads  %s\n", r.second.seconds, r.second.launches,
                r.second.threads, r.first.c_str());
}

bool profiling() {
    static const bool on = [] {
        const char *e = getenv("CUDASIM_PROFILE");
        if (e && *e && strcmp(e, "0") != 0) {
            g_profile = new std::map<std::string, kernel_profile>();
            atexit(print_profile);
            return true;
        }
        return false;
    }();
    return on;
}
std::mutex g_attr_lock;
std::unordered_map<const void *, int> g_max_dyn_smem;

} // namespace

extern "C" void cudasim_fiber_main(fiber *f) {
    scheduler *s = g_sched;
    threadIdx = f->idx;
    (*s->body)();
    f->state = FIBER_DONE;
#if defined(__x86_64__)
    cudasim_switch_stack(&f->sp, s->sched_sp);
#else
    swapcontext(&f->uc, &s->sched_uc);
#endif
    cudasim::fault("a finished simulated thread was resumed");
}

namespace cudasim {

void warp_sync() { wait_at(FIBER_WAIT_WARP); }
void block_sync() { wait_at(FIBER_WAIT_BLOCK); }

uint64_t *warp_slots() {
    fiber *f = g_sched->cur;
    return g_sched->warps[f->linear / 32].slots[f->exchanges++ & 1];
}
unsigned lane_id() { return g_sched->cur->linear & 31; }
unsigned warp_lanes() { return g_sched->cur->warp_lanes; }
void *dynamic_shared() { return g_sched->dyn_smem; }

/* The warp-collective m16n8k16 MMA for a 16-bit element type; widen(bits) turns the 16 bits of one
 * element into its (exact) fp32 value (a template argument, so that it inlines into the product
 * loop). The fragment layout is PTX's, documented in cuda_bf16.h. */
template <typename Widen>
static void mma_m16n8k16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1, Widen widen) {
    scheduler *s = g_sched;
    if (!s || !s->cur) fault("mma.sync outside a kernel");
    if (warp_lanes() != 32) fault("mma.sync in a partial warp");
    mma_fragments &x = s->warps[s->cur->linear / 32].mma[s->cur->exchanges++ & 1];
    const unsigned lane = lane_id();
    for (int r = 0; r < 4; r++) x.a[lane][r] = a[r];
    x.b[lane][0] = b0;
    x.b[lane][1] = b1;
    for (int r = 0; r < 4; r++) x.c[lane][r] = c[r];
    warp_sync();
    auto half = [widen](uint32_t reg, int hi) { return widen((uint16_t)(hi ? reg >> 16 : reg & 0xffffu)); };
    /* A[r][k]: lane (r mod 8)·4 + (k mod 8)/2, register (r >= 8) + 2·(k >= 8), half k mod 2 */
    auto A = [&](int r, int k) {
        const int l = (r & 7) * 4 + (k & 7) / 2, reg = (r >= 8) + 2 * (k >= 8);
        return half(x.a[l][reg], k & 1);
    };
    /* B[k][n]: lane n·4 + (k mod 8)/2, register k >= 8, half k mod 2 */
    auto B = [&](int k, int n) {
        const int l = n * 4 + (k & 7) / 2;
        return half(x.b[l][k >= 8], k & 1);
    };
    const int g = (int)lane >> 2, t = (int)lane & 3;
    float d[4];
    for (int e = 0; e < 4; e++) {
        const int row = g + (e >= 2 ? 8 : 0), col = 2 * t + (e & 1);
        float acc = 0.0f;
        for (int k = 0; k < 16; k++) acc += A(row, k) * B(k, col);
        d[e] = x.c[lane][e] + acc;
    }
    for (int e = 0; e < 4; e++) c[e] = d[e];
}

void mma_m16n8k16_bf16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    mma_m16n8k16(c, a, b0, b1, [](uint16_t bits) { return __bfloat162float(__nv_bfloat16{bits}); });
}

void mma_m16n8k16_f16(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) {
    mma_m16n8k16(c, a, b0, b1, [](uint16_t bits) { return __half2float(__half{bits}); });
}

void set_reverse_schedule(bool reverse) { g_reverse.store(reverse ? 1 : 0); }

cudaError_t set_max_dynamic_shared(const void *kernel, int bytes) {
    if (bytes < 0 || bytes > SIM_SMEM_OPTIN) return set_error(cudaErrorInvalidValue);
    std::lock_guard<std::mutex> lock(g_attr_lock);
    g_max_dyn_smem[kernel] = bytes;
    return cudaSuccess;
}

void launch(const char *name, const void *kernel, dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            std::function<void()> body) {
    const unsigned long long threads = (unsigned long long)block.x * block.y * block.z;
    if (threads == 0 || threads > 1024 || block.x > 1024 || block.y > 1024 || block.z > 64 || grid.x == 0 ||
        grid.y == 0 || grid.z == 0 || grid.y > 65535 || grid.z > 65535 || grid.x > 0x7fffffffu) {
        fprintf(stderr, "cudasim: launch of %s with grid (%u, %u, %u), block (%u, %u, %u): invalid configuration\n",
                name, grid.x, grid.y, grid.z, block.x, block.y, block.z);
        set_error(cudaErrorInvalidConfiguration);
        return;
    }
    int limit = SIM_SMEM_DEFAULT;
    {
        std::lock_guard<std::mutex> lock(g_attr_lock);
        auto it = g_max_dyn_smem.find(kernel);
        if (it != g_max_dyn_smem.end()) limit = std::max(limit, it->second);
    }
    if (smem > (size_t)limit) {
        fprintf(stderr, "cudasim: launch of %s asks for %zu bytes of dynamic shared memory, over the %d the kernel "
                        "may use (cudaFuncAttributeMaxDynamicSharedMemorySize)\n",
                name, smem, limit);
        set_error(cudaErrorInvalidValue);
        return;
    }
    enqueue(stream, [name, grid, block, smem, body]() {
        std::lock_guard<std::mutex> lock(g_launch_lock);
        static std::atomic<unsigned long> launches{0};
        const unsigned long launch_id = ++launches;
        const long n_blocks = (long)grid.x * grid.y * grid.z;
        const double t0 = profiling() ? now_seconds() : 0.0;
        /* blocks are independent (no inter-block atomics in the backend): the host's cores share
         * them, each with its own scheduler, fibers and shared memory (thread_local) */
#pragma omp parallel for schedule(dynamic, 1) if (n_blocks > 1)
        for (long b = 0; b < n_blocks; b++) {
            scheduler *s = sched();
            if (s->launch_id != launch_id) { /* this host thread's first block of the launch */
                s->launch_id = launch_id;
                s->n_threads = block.x * block.y * block.z;
                s->body = &body;
                const size_t padded = (smem + 15) & ~(size_t)15;
                s->dyn_smem = s->smem_region + s->smem_region_bytes - padded; /* ends at the guard page */
                memset(s->dyn_smem, 0xff, padded); /* uninitialised shared memory reads as NaN */
                unsigned i = 0;
                for (unsigned z = 0; z < block.z; z++)
                    for (unsigned y = 0; y < block.y; y++)
                        for (unsigned x = 0; x < block.x; x++, i++) {
                            s->fibers[i].idx = uint3{x, y, z};
                            s->fibers[i].linear = i;
                            s->fibers[i].warp_lanes = std::min(32u, s->n_threads - (i & ~31u));
                        }
                blockDim = block;
                gridDim = grid;
            }
            const char *outer = g_running_kernel;
            g_running_kernel = name;
            blockIdx = uint3{(unsigned)(b % grid.x), (unsigned)(b / grid.x % grid.y), (unsigned)(b / ((long)grid.x * grid.y))};
            run_block(s, name);
            g_running_kernel = outer;
        }
        if (profiling()) {
            kernel_profile &p = (*g_profile)[name];
            p.launches++;
            p.seconds += now_seconds() - t0;
            p.threads += (unsigned long long)n_blocks * block.x * block.y * block.z;
        }
    });
}

} // namespace cudasim

/* ================================================================================================
 * A fault inside a simulated kernel names it
 * ============================================================================================= */

namespace {
void on_segv(int sig) {
    if (g_running_kernel) {
        char msg[256];
        const int n = snprintf(msg, sizeof msg,
                               "cudasim: illegal memory access (signal %d) in kernel %s, block (%u, %u, %u), "
                               "thread (%u, %u, %u)\n",
                               sig, g_running_kernel, blockIdx.x, blockIdx.y, blockIdx.z, threadIdx.x, threadIdx.y,
                               threadIdx.z);
        if (n > 0) (void)!write(2, msg, (size_t)n);
    }
    signal(sig, SIG_DFL);
    raise(sig);
}

struct segv_installer {
    segv_installer() {
        static char alt[64 * 1024];
        stack_t ss;
        ss.ss_sp = alt;
        ss.ss_size = sizeof alt;
        ss.ss_flags = 0;
        sigaltstack(&ss, nullptr);
        struct sigaction sa;
        memset(&sa, 0, sizeof sa);
        sa.sa_handler = on_segv;
        sa.sa_flags = SA_ONSTACK | SA_RESETHAND;
        sigaction(SIGSEGV, &sa, nullptr);
        sigaction(SIGBUS, &sa, nullptr);
    }
} g_segv_installer;
} // namespace
