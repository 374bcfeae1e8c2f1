/* test_buffers.h: the host and device buffers of a backend-comparison test (test_cuda_ops,
 * test_cuda_f16), each tracked so that the per-test teardown releases all of them with one call,
 * also when the test failed half-way. Allocation failures fail the test with a message. */
#ifndef SD_TEST_BUFFERS_H
#define SD_TEST_BUFFERS_H

#include <stddef.h>
#include <stdint.h>

#include "sd/backend.h"

/* Zero-filled host memory. */
void *tb_host(size_t bytes);
/* n host floats, normal with standard deviation `std` from `seed` (testutil_fill_normal). */
float *tb_host_randn(int64_t n, uint64_t seed, float std);
/* Uninitialised memory of backend `be` (at least one byte). */
void *tb_device(const sd_backend *be, size_t bytes);
/* A copy of `bytes` of host memory on backend `be`. */
void *tb_upload(const sd_backend *be, const void *host, size_t bytes);
/* A host copy of `bytes` of backend memory. */
void *tb_download(const sd_backend *be, const void *dev, size_t bytes);
/* Frees every buffer handed out so far (device ones through the backend that made them). */
void tb_release_all(void);

/* The tables a CPU-vs-CUDA test compares. tb_open_backends (group setup) opens the CPU table and,
 * when testutil_have_gpu(), cuda:0's, printing its name or keeping the reason it did not open;
 * tb_require_gpu fails a GPU test whose table did not open; tb_per_test_teardown releases the
 * test's buffers and sets exact mode back (a failed test can leave fast mode on). */
typedef struct tb_backends {
    const sd_backend *cpu, *gpu;
    char gpu_error[1024];
} tb_backends;
void tb_open_backends(tb_backends *b);
void tb_require_gpu(const tb_backends *b);
int tb_per_test_teardown(void **state);

#endif
