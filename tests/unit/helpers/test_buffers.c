/* test_buffers.c: see test_buffers.h. */
#include "test_buffers.h"

#include <stdlib.h>

#include "testutil.h"

#define MAX_BUFFERS 1024

static struct {
    void *p;
    const sd_backend *be; /* NULL: host memory */
} buffers[MAX_BUFFERS];
static int n_buffers;

static void *track(void *p, const sd_backend *be, size_t bytes) {
    if (!p) fail_msg("allocating %zu bytes on %s: %s", bytes, be ? be->name : "the host", be ? sd_last_error() : "");
    if (n_buffers >= MAX_BUFFERS) fail_msg("more than %d buffers in one test", MAX_BUFFERS);
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
