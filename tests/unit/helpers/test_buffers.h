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

#endif
