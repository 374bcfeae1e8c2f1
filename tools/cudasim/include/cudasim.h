/* cudasim.h: the simulator's own interface, shared by its runtime (cudasim_runtime.cpp) and its
 * library stand-ins (cuBLAS, cuBLASLt, cuDNN). Not part of any CUDA API.
 *
 * The simulator runs the backend's CUDA C++ on the host so CI, which has no GPU, executes every
 * kernel and every library call the backend makes and compares them with the CPU backend. Device
 * memory is host memory handed out by cudaMalloc and tracked, so a host pointer passed where
 * device memory is expected, or an access past an allocation in a library call, is reported.
 * Streams run their work in order, at once, unless the stream is being captured into a graph:
 * then the work is recorded and runs when the graph is launched. */
#ifndef CUDASIM_H
#define CUDASIM_H

#include <cstddef>
#include <functional>

struct CUstream_st;
typedef struct CUstream_st *cudaStream_t;

namespace cudasim {

/* Runs `work` on stream `s` now, or records it when `s` is being captured into a graph. Every
 * library call goes through this so that graph capture records it like a kernel launch. */
void enqueue(cudaStream_t s, std::function<void()> work);

/* Aborts with a message naming `what` unless [p, p + bytes) lies inside one live cudaMalloc
 * allocation. Library stand-ins call it for every operand range they read or write. */
void check_device_range(const void *p, size_t bytes, const char *what);

/* Prints "cudasim: <message>" and aborts: a fault a real GPU would report as an illegal address
 * or a launch failure. */
[[noreturn]] void fault(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* The order simulated threads run in between two barriers: first to last (default), or last to
 * first (CUDASIM_SCHEDULE=reverse in the environment, or this call), which exposes kernels that
 * read shared memory another thread writes without a barrier in between. */
void set_reverse_schedule(bool reverse);

/* Rounding of fp32 values to the precision a tensor-core path reads them at (round to nearest
 * even, result returned as fp32): bf16 (8-bit mantissa), fp16 (11-bit, with fp16's range) and
 * tf32 (11-bit mantissa). */
float round_bf16(float x);
float round_fp16(float x);
float round_tf32(float x);

} // namespace cudasim

#endif
