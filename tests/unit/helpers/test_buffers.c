/* test_buffers.c: see test_buffers.h. */
#include "test_buffers.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/device.h"
#include "testutil.h"

/* every buffer a test made, freed by tb_release_all: grown on demand, since the GPU-only cases of
 * one test (SD-sized attention, every mode) can make thousands */
typedef struct {
    void *p;
    const sd_backend *be; /* NULL: host memory */
} tracked_buffer;
static tracked_buffer *buffers;
static int n_buffers, cap_buffers;

static void *track(void *p, const sd_backend *be, size_t bytes) {
    if (!p) fail_msg("allocating %zu bytes on %s: %s", bytes, be ? be->name : "the host", be ? sd_last_error() : "");
    if (n_buffers == cap_buffers) {
        const int cap = cap_buffers ? 2 * cap_buffers : 256;
        tracked_buffer *grown = realloc(buffers, (size_t)cap * sizeof *grown);
        if (!grown) fail_msg("tracking %d test buffers: out of host memory", cap);
        buffers = grown;
        cap_buffers = cap;
    }
    buffers[n_buffers].p = p;
    buffers[n_buffers].be = be;
    n_buffers++;
    return p;
}

void *tb_host(size_t bytes) { return track(calloc(1, bytes ? bytes : 1), NULL, bytes); }

float *tb_host_randn(int64_t n, uint64_t seed, float std) {
    float *p = tb_host((size_t)(n > 0 ? n : 1) * sizeof(float));
    testutil_fill_normal(p, n, seed, std);
    return p;
}

void *tb_device(const sd_backend *be, size_t bytes) { return track(be->mem_alloc(bytes ? bytes : 1), be, bytes); }

void *tb_upload(const sd_backend *be, const void *host, size_t bytes) {
    void *d = tb_device(be, bytes);
    assert_sd_ok(be->upload(d, host, bytes));
    return d;
}

void *tb_download(const sd_backend *be, const void *dev, size_t bytes) {
    void *h = tb_host(bytes);
    assert_sd_ok(be->download(h, dev, bytes));
    return h;
}

void tb_release_all(void) {
    for (int i = 0; i < n_buffers; i++) {
        if (buffers[i].be)
            buffers[i].be->mem_free(buffers[i].p);
        else
            free(buffers[i].p);
    }
    n_buffers = 0;
}

static const sd_backend *opened_gpu; /* the CUDA table tb_open_backends opened, if any */

void tb_open_backends(tb_backends *b) {
    memset(b, 0, sizeof *b);
    b->cpu = sd_backend_cpu();
    if (!testutil_have_gpu()) return;
    opened_gpu = b->gpu = sd_backend_cuda(0);
    if (!b->gpu) {
        snprintf(b->gpu_error, sizeof b->gpu_error, "%s", sd_last_error());
        return;
    }
    char name[256];
    if (sd_cuda_device_name(0, name, sizeof name) == SD_OK) print_message("    cuda:0 is %s\n", name);
}

void tb_require_gpu(const tb_backends *b) {
    if (!b->gpu) fail_msg("a GPU is present but the CUDA backend did not open: %s", b->gpu_error);
}

int tb_per_test_teardown(void **state) {
    (void)state;
    tb_release_all();
    if (opened_gpu) sd_cuda_set_precision(SD_PRECISION_EXACT);
    return 0;
}
