/* testutil.h: shared helpers for the cmocka unit tests (run from the repository root). */
#ifndef SD_TESTUTIL_H
#define SD_TESTUTIL_H

#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
/* cmocka.h needs the four includes above first. */
#include <cmocka.h>

#include "sd/attn.h"
#include "sd/core.h"

/* Fails the test with sd_last_error() when an sd_status call does not return SD_OK. */
#define assert_sd_ok(expr)                                                                         \
    do {                                                                                           \
        sd_status st_ = (expr);                                                                    \
        if (st_ != SD_OK) fail_msg("%s -> %s: %s", #expr, sd_status_name(st_), sd_last_error());  \
    } while (0)

/* Asserts a call fails with `code` and that its message contains `needle`. */
#define assert_sd_fails(expr, code, needle)                                                        \
    do {                                                                                           \
        sd_status st_ = (expr);                                                                    \
        if (st_ != (code))                                                                         \
            fail_msg("%s: expected %s, got %s (%s)", #expr, sd_status_name(code),                  \
                     sd_status_name(st_), sd_last_error());                                        \
        if (!testutil_contains(sd_last_error(), (needle)))                                         \
            fail_msg("%s: message \"%s\" does not mention \"%s\"", #expr, sd_last_error(),         \
                     (needle));                                                                    \
    } while (0)

int testutil_contains(const char *haystack, const char *needle);

/* max|a - b| / max(max|b|, 1e-30): the relative error every parity test states its tolerance in. */
double testutil_max_rel_err(const float *a, const float *b, int64_t n);
double testutil_max_abs_err(const float *a, const float *b, int64_t n);

/* Compares two F32 tensors of equal shape; fails the test naming `what` when the relative error
 * exceeds tol. Prints the error it measured, so logs show the margin. */
void testutil_assert_close(const sd_tensor *got, const sd_tensor *want, double tol, const char *what);

/* Deterministic uniform / normal fill (xorshift + Box-Muller), independent of libc rand. */
void testutil_fill_uniform(float *x, int64_t n, uint64_t seed, float lo, float hi);
void testutil_fill_normal(float *x, int64_t n, uint64_t seed, float std);

/* Tensor `name` of tests/fixtures/<file>.safetensors as a heap tensor: F32 (converted from
 * F16/BF16/F64) or, for I64 ids, raw. Fails the test when absent. */
sd_tensor *testutil_fixture(const char *file, const char *name);

/* A fresh directory "/tmp/<prefix>XXXXXX" written into buf (at least 64 bytes); 0 on success.
 * testutil_remove_tree deletes it again (rm -rf); 0 on success. */
int testutil_make_tmpdir(char *buf, size_t n, const char *prefix);
int testutil_remove_tree(const char *dir);

/* An attention hook that records every call's site (in order) and keeps, by layer, a copy of the
 * maps of the layers the oracle's tiny-model fixture holds: the 16x16 cross-attention maps and the
 * 8x8 mid-block self-attention map of a 64x64 latent. */
#define TESTUTIL_MAX_CALLS 64
typedef struct testutil_recording_hook {
    sd_attn_hook base;
    int n_calls;
    sd_attn_site sites[TESTUTIL_MAX_CALLS];
    sd_tensor *maps[TESTUTIL_MAX_CALLS];
} testutil_recording_hook;
void testutil_recording_hook_init(testutil_recording_hook *h);

/* A JSON fixture file parsed whole; NULL (with a message on stderr) when unreadable or malformed. */
struct cJSON;
struct cJSON *testutil_json_file(const char *path);

/* Whether a usable CUDA GPU is present in this build and machine. GPU tests call
 * testutil_skip_without_gpu() first: it prints the reason and skips. */
int testutil_have_gpu(void);
#define testutil_skip_without_gpu()                                                                \
    do {                                                                                           \
        if (!testutil_have_gpu()) {                                                                \
            print_message("[   SKIP   ] %s: no CUDA GPU on this machine\n", __func__);             \
            skip();                                                                                \
        }                                                                                          \
    } while (0)

/* SD_TEST_FILTER=PATTERN runs only the tests whose names match it (cmocka's filter: * and ?),
 * e.g. one test under compute-sanitizer; a test main calls this before running its group. */
void testutil_apply_filter(void);

/* Whether "the GPU" is the host simulator (a build with SIM=1, tools/cudasim): every kernel runs,
 * on the CPU, at a few hundred MFLOP/s, so tests leave out the cases of SD v1.5 size (and say so
 * in the log: they run on a real GPU). */
int testutil_gpu_is_simulated(void);

/* Under the host simulator a case of SD v1.5 size costs minutes: a case of more than
 * TESTUTIL_SIM_MAX_FLOP arithmetic (`flop`; < 0: whatever its size) runs on a real GPU only.
 * Returns 1, after logging "`what` left out under cudasim", when the caller should skip it.
 * SD_TEST_SMALL=1 leaves the same cases out on a real GPU (compute-sanitizer runs kernels a hundred
 * times slower). */
#define TESTUTIL_SIM_MAX_FLOP 3e9
int testutil_sim_leaves_out(const char *what, double flop);

/* The simulator's second run of test_cuda_ops (CUDASIM_SCHEDULE=reverse: the threads of each block
 * run last to first between barriers) looks for kernels that lean on an order of threads no GPU
 * promises. Cases of the same kernels at other sizes add nothing there but time, so that run takes
 * cases up to TESTUTIL_REVERSE_MAX_FLOP in testutil_sim_leaves_out, and the whole-model and
 * chunking tests call testutil_skip_in_reverse_run (cmocka's skip, with the reason logged). CI's
 * 20 minutes on 2 cores are the budget. */
#define TESTUTIL_REVERSE_MAX_FLOP 1e9
int testutil_reverse_schedule(void);
void testutil_skip_in_reverse_run(void);

/* Random LPIPS AlexNet weights in tools/convert_lpips.py's layout (features.N.*, linK.model.1.weight):
 * for tests of the plumbing, where the values do not matter. */
void testutil_write_random_lpips(const char *path);

/* The stylediff binary of the build a test binary belongs to (BUILD/tests/test_x ->
 * BUILD/stylediff), from the test's argv[0]. */
void testutil_stylediff_path(char *buf, size_t n, const char *argv0);

/* The command line as a user runs it: `STYLEDIFF ARGS` through the shell, stdout and stderr
 * captured together (up to 64 KiB), the exit status (128 + signal when killed). */
typedef struct testutil_run {
    int status;
    char out[65536];
} testutil_run;
void testutil_run_cli(testutil_run *r, const char *stylediff, const char *args);

#endif
