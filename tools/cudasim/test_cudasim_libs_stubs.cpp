/* test_cudasim_libs_stubs.cpp: the simulator services of cudasim.h, reduced to what the library
 * stand-ins' self-test (test_cudasim_libs.cpp) needs. Linked only into that test; the real
 * implementations are in cudasim_runtime.cpp.
 *
 *  - enqueue runs the work at once, or, while the test has deferral on, keeps it until
 *    cudasim_test_flush() (the way a stream being captured into a graph records work), so the
 *    test can destroy descriptors and change scalars in between;
 *  - check_device_range accepts a range only inside one buffer the test registered (the test's
 *    "device allocations", sized exactly to the extents the API rules give), so an over-long
 *    extent computed by a stand-in fails the test;
 *  - fault prints and aborts.
 * The rounding functions are the simulator's own (cudasim_rounding.cpp). */
#include "cudasim.h"

#include <cuda_runtime.h>

#include <cmath>
#include <cstdarg>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <vector>

namespace {
bool g_defer = false;
std::vector<std::function<void()>> g_queue;
std::map<uintptr_t, size_t> g_buffers; /* start -> bytes */
size_t g_checks = 0;
} // namespace

void cudasim_test_defer(bool on) { g_defer = on; }
void cudasim_test_flush() {
    std::vector<std::function<void()>> q;
    q.swap(g_queue);
    for (auto &w : q) w();
}
size_t cudasim_test_queued() { return g_queue.size(); }
void cudasim_test_register(const void *p, size_t bytes) { g_buffers[(uintptr_t)p] = bytes; }
void cudasim_test_unregister(const void *p) { g_buffers.erase((uintptr_t)p); }
size_t cudasim_test_range_checks() { return g_checks; }

/* cuDNN's Find functions wait for the stream: nothing is ever pending here (deferred work is the
 * test's to flush) */
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }

namespace cudasim {

void enqueue(cudaStream_t, std::function<void()> work) {
    if (g_defer)
        g_queue.push_back(std::move(work));
    else
        work();
}

void check_device_range(const void *p, size_t bytes, const char *what) {
    g_checks++;
    const uintptr_t a = (uintptr_t)p;
    auto it = g_buffers.upper_bound(a);
    if (it != g_buffers.begin()) {
        --it;
        if (a >= it->first && a + bytes <= it->first + it->second) return;
    }
    fault("%s: [%p, +%zu bytes) is not inside one registered buffer", what, p, bytes);
}

void fault(const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "cudasim: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    fflush(stderr);
    abort();
}

} // namespace cudasim
