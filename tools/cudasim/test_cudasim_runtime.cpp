/* test_cudasim_runtime.cpp: checks of the simulator itself (kernel execution, barriers, warp
 * collectives, the bf16 and fp16 MMAs, graphs, launch limits, fault detection) against plain host loops, so
 * that a test of the CUDA backend that passes under the simulator means what it says.
 *   g++ -std=c++17 -O2 -Itools/cudasim/include tools/cudasim/test_cudasim_runtime.cpp \
 *       tools/cudasim/cudasim_runtime.cpp -o /tmp/t && /tmp/t
 * (make test and make sim-test build it as build-sim/tests/test_cudasim_runtime and run it). */
#include "cuda_bf16.h"
#include "cuda_fp16.h"
#include "cuda_runtime.h"

#include <cstdio>
#include <cstdlib>
#include <random>
#include <vector>

#include <sys/wait.h>
#include <unistd.h>

#define LAUNCH(kernel, grid, block, smem, stream) cudasim::make_launcher(kernel, dim3(grid), dim3(block), smem, stream, #kernel)

static int g_checks = 0, g_failures = 0;
#define CHECK(cond, ...)                                                                           \
    do {                                                                                           \
        g_checks++;                                                                                \
        if (!(cond)) {                                                                             \
            g_failures++;                                                                          \
            fprintf(stderr, "FAILED %s:%d: ", __FILE__, __LINE__);                                 \
            fprintf(stderr, __VA_ARGS__);                                                          \
            fprintf(stderr, "\n");                                                                 \
        }                                                                                          \
    } while (0)

/* ---- a block sum through shared memory and shuffles: each block sums its 256 values ---- */
__global__ void k_block_sum(const float *x, float *out, int n) {
    __shared__ float warp_sums[8];
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    float v = i < n ? x[i] : 0.0f;
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
    if ((threadIdx.x & 31) == 0) warp_sums[threadIdx.x >> 5] = v;
    __syncthreads();
    if (threadIdx.x < 32) {
        float w = threadIdx.x < blockDim.x / 32 ? warp_sums[threadIdx.x] : 0.0f;
        for (int o = 16; o > 0; o >>= 1) w += __shfl_xor_sync(0xffffffffu, w, o);
        if (threadIdx.x == 0) out[blockIdx.x] = w;
    }
}

static void test_block_sum() {
    const int n = 1000, threads = 256, blocks = (n + threads - 1) / threads;
    std::vector<float> h(n);
    for (int i = 0; i < n; i++) h[i] = (float)(i % 7) - 3.0f + 0.25f * (float)(i % 3);
    float *x, *out;
    cudaMalloc((void **)&x, n * sizeof(float));
    cudaMalloc((void **)&out, blocks * sizeof(float));
    cudaMemcpy(x, h.data(), n * sizeof(float), cudaMemcpyHostToDevice);
    LAUNCH(k_block_sum, blocks, threads, 0, nullptr)(x, out, n);
    CHECK(cudaGetLastError() == cudaSuccess, "launch failed");
    std::vector<float> got(blocks);
    cudaMemcpy(got.data(), out, blocks * sizeof(float), cudaMemcpyDeviceToHost);
    for (int b = 0; b < blocks; b++) {
        double want = 0;
        for (int i = b * threads; i < n && i < (b + 1) * threads; i++) want += h[i];
        CHECK(std::fabs(got[b] - want) < 1e-3, "block %d: sum %g, want %g", b, got[b], want);
    }
    cudaFree(x);
    cudaFree(out);
}

/* ---- __all_sync, 2-d blocks, threadIdx/blockIdx in 2-d grids ---- */
__global__ void k_coords(int *out, int *all_positive, const int *values) {
    const int tx = threadIdx.x, ty = threadIdx.y;
    const int linear = ty * blockDim.x + tx;
    const int block = blockIdx.y * gridDim.x + blockIdx.x;
    out[block * blockDim.x * blockDim.y + linear] = 1000 * block + linear;
    const int ok = __all_sync(0xffffffffu, values[linear] > 0);
    if ((linear & 31) == 0) all_positive[block * 2 + (linear >> 5)] = ok;
}

static void test_coords_and_vote() {
    const dim3 grid(3, 2), block(16, 4); /* 64 threads: 2 warps */
    const int per_block = 64, blocks = 6;
    int *out, *votes, *values;
    cudaMalloc((void **)&out, blocks * per_block * sizeof(int));
    cudaMalloc((void **)&votes, blocks * 2 * sizeof(int));
    cudaMalloc((void **)&values, per_block * sizeof(int));
    std::vector<int> hv(per_block, 1);
    hv[40] = 0; /* warp 1 has a non-positive value */
    cudaMemcpy(values, hv.data(), per_block * sizeof(int), cudaMemcpyHostToDevice);
    cudasim::make_launcher(k_coords, grid, block, 0, nullptr, "k_coords")(out, votes, values);
    std::vector<int> ho(blocks * per_block), hvote(blocks * 2);
    cudaMemcpy(ho.data(), out, ho.size() * sizeof(int), cudaMemcpyDeviceToHost);
    cudaMemcpy(hvote.data(), votes, hvote.size() * sizeof(int), cudaMemcpyDeviceToHost);
    for (int b = 0; b < blocks; b++) {
        for (int l = 0; l < per_block; l++) CHECK(ho[b * per_block + l] == 1000 * b + l, "coords of block %d thread %d", b, l);
        CHECK(hvote[b * 2] == 1 && hvote[b * 2 + 1] == 0, "__all_sync of block %d: %d %d", b, hvote[b * 2], hvote[b * 2 + 1]);
    }
    cudaFree(out);
    cudaFree(votes);
    cudaFree(values);
}

/* ---- the bf16 and fp16 MMAs: one warp, fragments loaded by the PTX layout, against a host product ---- */
/* The element type's conversions and its MMA, so that one test covers both instructions. */
struct bf16_mma {
    typedef __nv_bfloat16 elem;
    static const char *name() { return "bf16"; }
    static elem round(float x) { return __float2bfloat16_rn(x); }
    static float widen(elem h) { return __bfloat162float(h); }
    static void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) { cudasim::mma_m16n8k16_bf16(c, a, b0, b1); }
};
struct f16_mma {
    typedef __half elem;
    static const char *name() { return "fp16"; }
    static elem round(float x) { return __float2half_rn(x); }
    static float widen(elem h) { return __half2float(h); }
    static void mma(float *c, const uint32_t *a, uint32_t b0, uint32_t b1) { cudasim::mma_m16n8k16_f16(c, a, b0, b1); }
};

template <typename E> static uint32_t pack(E lo, E hi) { return (uint32_t)lo.bits | ((uint32_t)hi.bits << 16); }

template <typename M> __global__ void k_mma(const typename M::elem *A, const typename M::elem *B, float *D) {
    /* A[16][16] row-major, B[16][8] stored as B[k][n] row-major, C = D on input */
    const int lane = threadIdx.x, g = lane >> 2, t = lane & 3;
    uint32_t a[4];
    a[0] = pack(A[g * 16 + 2 * t], A[g * 16 + 2 * t + 1]);
    a[1] = pack(A[(g + 8) * 16 + 2 * t], A[(g + 8) * 16 + 2 * t + 1]);
    a[2] = pack(A[g * 16 + 2 * t + 8], A[g * 16 + 2 * t + 9]);
    a[3] = pack(A[(g + 8) * 16 + 2 * t + 8], A[(g + 8) * 16 + 2 * t + 9]);
    const uint32_t b0 = pack(B[(2 * t) * 8 + g], B[(2 * t + 1) * 8 + g]);
    const uint32_t b1 = pack(B[(2 * t + 8) * 8 + g], B[(2 * t + 9) * 8 + g]);
    float c[4] = {D[g * 8 + 2 * t], D[g * 8 + 2 * t + 1], D[(g + 8) * 8 + 2 * t], D[(g + 8) * 8 + 2 * t + 1]};
    M::mma(c, a, b0, b1);
    D[g * 8 + 2 * t] = c[0];
    D[g * 8 + 2 * t + 1] = c[1];
    D[(g + 8) * 8 + 2 * t] = c[2];
    D[(g + 8) * 8 + 2 * t + 1] = c[3];
}

template <typename M> static void test_mma() {
    typedef typename M::elem E;
    std::mt19937 rng(7);
    std::uniform_real_distribution<float> u(-1.0f, 1.0f);
    std::vector<E> hA(256), hB(128);
    std::vector<float> hC(128);
    for (auto &v : hA) v = M::round(u(rng));
    for (auto &v : hB) v = M::round(u(rng));
    for (auto &v : hC) v = u(rng);
    E *A, *B;
    float *D;
    cudaMalloc((void **)&A, 256 * 2);
    cudaMalloc((void **)&B, 128 * 2);
    cudaMalloc((void **)&D, 128 * 4);
    cudaMemcpy(A, hA.data(), 256 * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(B, hB.data(), 128 * 2, cudaMemcpyHostToDevice);
    cudaMemcpy(D, hC.data(), 128 * 4, cudaMemcpyHostToDevice);
    LAUNCH(k_mma<M>, 1, 32, 0, nullptr)(A, B, D);
    std::vector<float> got(128);
    cudaMemcpy(got.data(), D, 128 * 4, cudaMemcpyDeviceToHost);
    double worst = 0;
    for (int r = 0; r < 16; r++)
        for (int n = 0; n < 8; n++) {
            double want = hC[r * 8 + n];
            for (int k = 0; k < 16; k++) want += (double)M::widen(hA[r * 16 + k]) * M::widen(hB[k * 8 + n]);
            worst = std::max(worst, std::fabs(want - got[r * 8 + n]));
        }
    CHECK(worst < 1e-5, "%s mma: max error %g", M::name(), worst);
    cudaFree(A);
    cudaFree(B);
    cudaFree(D);
}

/* ---- dynamic shared memory: the opt-in, and a reversal through it ---- */
__global__ void k_reverse(const float *x, float *y, int n) {
    CU_SIM_DYNAMIC_SHARED(float, buf);
    for (int i = threadIdx.x; i < n; i += blockDim.x) buf[i] = x[i];
    __syncthreads();
    for (int i = threadIdx.x; i < n; i += blockDim.x) y[i] = buf[n - 1 - i];
}

static void test_dynamic_shared() {
    const int n = 16384; /* 64 KiB: over the default 48 KiB */
    std::vector<float> h(n);
    for (int i = 0; i < n; i++) h[i] = (float)i;
    float *x, *y;
    cudaMalloc((void **)&x, n * 4);
    cudaMalloc((void **)&y, n * 4);
    cudaMemcpy(x, h.data(), n * 4, cudaMemcpyHostToDevice);
    cudaGetLastError();
    LAUNCH(k_reverse, 1, 128, (size_t)n * 4, nullptr)(x, y, n);
    CHECK(cudaGetLastError() == cudaErrorInvalidValue, "64 KiB of dynamic shared memory without the opt-in must fail");
    CHECK(cudaFuncSetAttribute(k_reverse, cudaFuncAttributeMaxDynamicSharedMemorySize, n * 4) == cudaSuccess, "opt-in");
    LAUNCH(k_reverse, 1, 128, (size_t)n * 4, nullptr)(x, y, n);
    CHECK(cudaGetLastError() == cudaSuccess, "launch after the opt-in");
    std::vector<float> got(n);
    cudaMemcpy(got.data(), y, n * 4, cudaMemcpyDeviceToHost);
    bool ok = true;
    for (int i = 0; i < n; i++) ok &= got[i] == (float)(n - 1 - i);
    CHECK(ok, "reversal through shared memory");
    LAUNCH(k_reverse, 1, 2048, 0, nullptr)(x, y, 0);
    CHECK(cudaGetLastError() == cudaErrorInvalidConfiguration, "2048 threads per block must fail");
    cudaFree(x);
    cudaFree(y);
}

/* ---- graphs: capture records, replay runs, synchronising inside invalidates ---- */
__global__ void k_add_one(float *x, int n) {
    const int i = blockIdx.x * blockDim.x + threadIdx.x;
    if (i < n) x[i] += 1.0f;
}

static void test_graph() {
    const int n = 100;
    float *x;
    cudaMalloc((void **)&x, n * 4);
    cudaStream_t s;
    cudaStreamCreateWithFlags(&s, cudaStreamNonBlocking);
    cudaMemsetAsync(x, 0, n * 4, s);
    CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed) == cudaSuccess, "begin capture");
    LAUNCH(k_add_one, 1, 128, 0, s)(x, n);
    LAUNCH(k_add_one, 1, 128, 0, s)(x, n);
    std::vector<float> got(n);
    cudaGraph_t g;
    CHECK(cudaStreamEndCapture(s, &g) == cudaSuccess, "end capture");
    cudaMemcpy(got.data(), x, n * 4, cudaMemcpyDeviceToHost);
    CHECK(got[5] == 0.0f, "captured work must not run during capture (x = %g)", got[5]);
    cudaGraphExec_t ex;
    cudaGraphInstantiate(&ex, g, 0);
    cudaGraphLaunch(ex, s);
    cudaGraphLaunch(ex, s);
    cudaStreamSynchronize(s);
    cudaMemcpy(got.data(), x, n * 4, cudaMemcpyDeviceToHost);
    CHECK(got[5] == 4.0f && got[99] == 4.0f, "two replays of two increments: %g", got[5]);
    /* a synchronisation inside a capture invalidates it */
    cudaStreamBeginCapture(s, cudaStreamCaptureModeRelaxed);
    CHECK(cudaStreamSynchronize(s) == cudaErrorStreamCaptureUnsupported, "sync while capturing");
    cudaGraph_t g2;
    CHECK(cudaStreamEndCapture(s, &g2) == cudaErrorStreamCaptureInvalidated, "capture invalidated");
    cudaGetLastError();
    cudaGraphExecDestroy(ex);
    cudaGraphDestroy(g);
    cudaStreamDestroy(s);
    cudaFree(x);
}

/* ---- faults: each must stop the program with a message (checked in a child process) ---- */
__global__ void k_divergent_barrier(float *x) {
    /* warp 1 splits: lanes 32..47 wait at __syncthreads, lanes 48..63 at a warp shuffle; neither
     * barrier can ever complete */
    if (threadIdx.x < 48) __syncthreads();
    else x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

__global__ void k_overrun(float *x, int n) {
    if (threadIdx.x == 0) x[n + 8] = 1.0f; /* past the end of the allocation */
}

__global__ void k_partial_warp_shuffle(float *x) {
    if (threadIdx.x >= 16) return; /* half the warp exits, the rest shuffle with a full mask */
    x[threadIdx.x] = __shfl_xor_sync(0xffffffffu, 1.0f, 1);
}

/* ---- the reverse schedule exposes a missing barrier; a correct kernel gives the same result ---- */
__global__ void k_missing_barrier(float *out, float base) {
    __shared__ float buf[64];
    if (threadIdx.x < 32) buf[threadIdx.x] = (float)threadIdx.x + base;
    /* no __syncthreads(): warp 1 may read before warp 0 wrote */
    if (threadIdx.x >= 32) out[threadIdx.x - 32] = buf[threadIdx.x - 32];
}

static void test_reverse_schedule() {
    float *x;
    cudaMalloc((void **)&x, 32 * 4);
    float fwd[32], rev[32];
    cudasim::set_reverse_schedule(false);
    LAUNCH(k_missing_barrier, 1, 64, 0, nullptr)(x, 1.0f);
    cudaMemcpy(fwd, x, sizeof fwd, cudaMemcpyDeviceToHost);
    cudaMemsetAsync(x, 0, sizeof fwd, nullptr);
    cudasim::set_reverse_schedule(true);
    LAUNCH(k_missing_barrier, 1, 64, 0, nullptr)(x, 100.0f);
    cudaMemcpy(rev, x, sizeof rev, cudaMemcpyDeviceToHost);
    /* in order the readers see this launch's writes (i + 100); reversed, whatever the shared memory
     * held before (the previous launch's i + 1) */
    bool differ = false;
    for (int i = 0; i < 32; i++) differ |= fwd[i] + 99.0f != rev[i];
    CHECK(differ, "a missing barrier must change the result under the reverse schedule");
    /* the block sum (barriers and shuffles where needed) is order-independent */
    test_block_sum();
    cudasim::set_reverse_schedule(false);
    cudaFree(x);
}

template <typename F> static bool dies(F f) {
    fflush(stdout);
    fflush(stderr);
    const pid_t pid = fork();
    if (pid == 0) {
        freopen("/dev/null", "w", stderr);
        f();
        _exit(0);
    }
    int status = 0;
    waitpid(pid, &status, 0);
    return !(WIFEXITED(status) && WEXITSTATUS(status) == 0);
}

static void test_faults() {
    float *x;
    cudaMalloc((void **)&x, 256 * 4);
    CHECK(dies([&] { LAUNCH(k_divergent_barrier, 1, 64, 0, nullptr)(x); }), "a divergent barrier must be reported");
    CHECK(dies([&] { LAUNCH(k_overrun, 1, 32, 0, nullptr)(x, 256); }), "a write past an allocation must fault");
    CHECK(dies([&] { LAUNCH(k_partial_warp_shuffle, 1, 32, 0, nullptr)(x); }),
          "a full-mask shuffle with exited lanes must be reported");
    CHECK(dies([&] { cudasim::check_device_range(x, 257 * 4, "test operand"); }), "range past an allocation");
    CHECK(!dies([&] { cudasim::check_device_range(x, 256 * 4, "test operand"); }), "range inside an allocation");
    float host[4];
    CHECK(dies([&] { cudaMemcpy(x, host, 16, cudaMemcpyDeviceToHost); }), "a copy with swapped directions must fault");
    cudaFree(x);
}

int main() {
    test_block_sum();
    test_coords_and_vote();
    test_mma<bf16_mma>();
    test_mma<f16_mma>();
    test_dynamic_shared();
    test_graph();
    test_reverse_schedule();
    test_faults();
    printf("cudasim runtime: %d checks, %d failed\n", g_checks, g_failures);
    /* the summary in cmocka's words, so tests/run_tests.sh counts this binary as one test */
    if (g_failures) printf("[  FAILED  ] 1 test(s), listed below:\n[  FAILED  ] cudasim_runtime_selftest\n");
    else printf("[       OK ] cudasim_runtime_selftest\n[  PASSED  ] 1 test(s).\n");
    return g_failures ? 1 : 0;
}
