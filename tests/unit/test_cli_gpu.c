/* test_cli_gpu.c: the command line's GPU-only paths on the built-in tiny model at 64x64 (an 8x8
 * latent): `bench unet` eager and as a CUDA graph in both precisions (fast also with its per-op
 * breakdown, --profile), `bench grad` (its steps
 * replayed as CUDA graphs, and op by op with --eager) with its device-memory line, `generate` on the GPU, and the messages for a device that does not exist.
 * Skipped, with the reason, without a GPU; in the simulator build (make sim-test, tools/cudasim)
 * the simulated device runs them, so CI exercises the CUDA branches of the CLI. */
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "sd/core.h"
#include "testutil.h"

static char stylediff[PATH_MAX];
static char tmpdir[64];

static void run_ok(testutil_run *r, const char *args) {
    testutil_run_cli(r, stylediff, args);
    if (r->status != 0) fail_msg("stylediff %s: status %d:\n%s", args, r->status, r->out);
}

static void expect_text(const testutil_run *r, const char *args, const char *needle) {
    if (!strstr(r->out, needle)) fail_msg("stylediff %s: output lacks \"%s\":\n%s", args, needle, r->out);
}

/* bench unet: one eager and one graph row per precision, on cuda; fast mode with fp16 activations
 * (its weight copies reported) and with SD_FAST_ACTIVATIONS=f32 (its own row label) */
static void test_bench_unet(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    testutil_run *r = malloc(sizeof *r);
    const char *modes[3] = {"exact", "fast", "fast"};
    const char *labels[3] = {"exact", "fast", "fast+f32act"};
    for (int m = 0; m < 3; m++) {
        char args[256];
        snprintf(args, sizeof args, "bench unet --device cuda --precision %s --size 64 --batch 2 --iters 1%s", modes[m],
                 m == 1 ? " --profile" : "");
        if (m == 2) setenv("SD_FAST_ACTIVATIONS", "f32", 1);
        run_ok(r, args);
        unsetenv("SD_FAST_ACTIVATIONS");
        char row[64];
        snprintf(row, sizeof row, "cuda   %-11s eager", labels[m]);
        expect_text(r, args, row);
        snprintf(row, sizeof row, "cuda   %-11s graph", labels[m]);
        expect_text(r, args, row);
        expect_text(r, args, "one call: "); /* the FLOP count behind the TFLOP/s column */
        const int copies = strstr(r->out, "the fp16 copies of the weights take") != NULL;
        if (copies != (m == 1)) fail_msg("stylediff %s (%s): fp16 weight-copy line %s:\n%s", args, labels[m],
                                         copies ? "present" : "missing", r->out);
        if (m == 1) {
            expect_text(r, args, "fp16 UNet activations"); /* the device line says so */
            expect_text(r, args, "where the time goes (built-in tiny, batch 2, fp16 channels-last activations");
            expect_text(r, args, "convolution");
        }
        print_message("    ok: %s (%s)\n", args, labels[m]);
    }
    free(r);
}

/* bench grad: forward, context and value steps, and the device memory in use */
static void test_bench_grad(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    testutil_run *r = malloc(sizeof *r);
    const char *args = "bench grad --device cuda --size 64 --iters 1";
    run_ok(r, args);
    expect_text(r, args, "context");
    expect_text(r, args, "value");
    expect_text(r, args, "device memory in use");
    expect_text(r, args, "replayed as CUDA graphs");
    const char *args_rc = "bench grad --device cuda --size 64 --iters 1 --what context --recompute --precision fast";
    run_ok(r, args_rc);
    expect_text(r, args_rc, "context");
    const char *args_eager = "bench grad --device cuda --size 64 --iters 1 --what context --eager --profile";
    run_ok(r, args_eager);
    expect_text(r, args_eager, "op by op (--eager)");
    expect_text(r, args_eager, "where the time goes (context step"); /* the backward ops on the GPU, timed */
    print_message("    ok: %s\n    ok: %s\n    ok: %s\n", args, args_rc, args_eager);
    free(r);
}

/* generate writes its PNG and says which device ran it */
static void test_generate(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    testutil_run *r = malloc(sizeof *r);
    char args[256], png[128];
    snprintf(png, sizeof png, "%s/gen.png", tmpdir);
    for (int fast = 0; fast <= 1; fast++) {
        /* fast: the sampling loop stores fp16 activations and replays a CUDA graph */
        snprintf(args, sizeof args, "generate -p \"a cat\" --device cuda --size 64 --steps 3%s -o %s",
                 fast ? " --precision fast" : "", png);
        unlink(png);
        run_ok(r, args);
        expect_text(r, args, "on cuda:0");
        if (fast) expect_text(r, args, "fp16 UNet activations");
        assert_true(sd_file_exists(png));
        print_message("    ok: %s\n", args);
    }
    free(r);
}

/* a device that does not exist: a clear message, a failure status */
static void test_missing_device(void **state) {
    (void)state;
    testutil_skip_without_gpu();
    testutil_run *r = malloc(sizeof *r);
    const char *args = "bench unet --device cuda:7 --size 64 --iters 1";
    testutil_run_cli(r, stylediff, args);
    assert_int_not_equal(r->status, 0);
    expect_text(r, args, "cuda:7 does not exist");
    const char *line = strstr(r->out, "stylediff");
    if (!line) line = r->out;
    print_message("    ok: %s -> %.*s\n", args, (int)strcspn(line, "\n"), line);
    free(r);
}

static int setup(void **state) {
    (void)state;
    snprintf(tmpdir, sizeof tmpdir, "/tmp/sd_cli_gpu_XXXXXX");
    return mkdtemp(tmpdir) ? 0 : -1;
}

static int teardown(void **state) {
    (void)state;
    char cmd[128];
    snprintf(cmd, sizeof cmd, "rm -rf %s", tmpdir);
    return system(cmd) == 0 ? 0 : -1;
}

int main(int argc, char **argv) {
    (void)argc;
    testutil_stylediff_path(stylediff, sizeof stylediff, argv[0]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_bench_unet),
        cmocka_unit_test(test_bench_grad),
        cmocka_unit_test(test_generate),
        cmocka_unit_test(test_missing_device),
    };
    return cmocka_run_group_tests_name("cli on the GPU", tests, setup, teardown);
}
