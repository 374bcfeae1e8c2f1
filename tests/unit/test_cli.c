/* test_cli.c: the stylediff command line end to end: the happy paths on the built-in tiny model
 * (small sizes and few steps, so this stays quick) and every bad input the runtime issue lists:
 * each must exit non-zero with a message naming the file, tensor or argument, and never crash. */
#include <cjson/cJSON.h>
#include <math.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "sd/io.h"
#include "testutil.h"

static char stylediff[PATH_MAX];
static char tmpdir[64];

typedef testutil_run run_result;

static void run(run_result *r, const char *args) { testutil_run_cli(r, stylediff, args); }

static void expect_failure(const char *args, const char *needle) {
    run_result *r = malloc(sizeof *r);
    run(r, args);
    if (r->status == 0 || r->status >= 128)
        fail_msg("stylediff %s: expected a clean failure, got status %d:\n%s", args, r->status, r->out);
    if (!strstr(r->out, needle))
        fail_msg("stylediff %s: message does not mention \"%s\":\n%s", args, needle, r->out);
    /* show the line that carries the message */
    const char *line = strstr(r->out, "stylediff");
    if (!line) line = r->out;
    const char *end = strchr(line, '\n');
    print_message("    ok: %.50s -> %.*s\n", args, (int)(end ? end - line : (long)strlen(line)), line);
    free(r);
}

static int setup(void **state) {
    (void)state;
    return testutil_make_tmpdir(tmpdir, sizeof tmpdir, "sd_cli_");
}

static int teardown(void **state) {
    (void)state;
    return testutil_remove_tree(tmpdir);
}

static void test_help_and_usage(void **state) {
    (void)state;
    run_result *r = malloc(sizeof *r);
    run(r, "--help");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "reconstruct"));
    const char *cmds[] = {"generate", "reconstruct", "tokenize", "bench"};
    for (int i = 0; i < 4; i++) {
        char args[64];
        snprintf(args, sizeof args, "%s --help", cmds[i]);
        run(r, args);
        assert_int_equal(r->status, 0);
        assert_non_null(strstr(r->out, "usage: stylediff"));
    }
    free(r);
    expect_failure("frobnicate", "unknown command 'frobnicate'");
    expect_failure("generate -p cat --steps abc", "--steps: expected an integer in [1, 1000], got 'abc'");
    expect_failure("generate -p cat --cfg nan", "--cfg");
    expect_failure("generate -p cat --bogus 1", "unknown option '--bogus'");
    expect_failure("reconstruct -p cat", "-i/--image and -p/--prompt are required");
}

static void test_generate_and_reconstruct(void **state) {
    (void)state;
    run_result *r = malloc(sizeof *r);
    char args[2048], png[PATH_MAX + 32], json[PATH_MAX + 32];
    snprintf(png, sizeof png, "%s/gen.png", tmpdir);
    snprintf(args, sizeof args, "generate -q -p \"a photo of a cat\" --size 64 --steps 3 --seed 7 -o %s", png);
    run(r, args);
    if (r->status) fail_msg("%s", r->out);
    struct stat st;
    assert_int_equal(stat(png, &st), 0);
    assert_true(st.st_size > 100);

    snprintf(png, sizeof png, "%s/rec.png", tmpdir);
    snprintf(json, sizeof json, "%s/rec.json", tmpdir);
    snprintf(args, sizeof args,
             "reconstruct -i data/images/chelsea.png -p \"a cat\" --size 64 --steps 4 -o %s", png);
    run(r, args);
    if (r->status) fail_msg("%s", r->out);
    assert_non_null(strstr(r->out, "PSNR reconstruction"));
    char *report;
    size_t len;
    assert_sd_ok(sd_read_file(json, &report, &len));
    assert_non_null(strstr(report, "\"latent_mse\""));
    assert_non_null(strstr(report, "\"psnr_db\""));
    free(report);
    free(r);
}

static void test_bad_inputs(void **state) {
    (void)state;
    char args[4096], path[PATH_MAX + 64];

    expect_failure("reconstruct -i /nonexistent/cat.png -p \"a cat\"", "/nonexistent/cat.png");
    expect_failure("reconstruct -i Makefile -p \"a cat\"", "Makefile");
    expect_failure("reconstruct -i data/images/chelsea.png -p \"\"", "--prompt is empty");
    expect_failure("reconstruct -i data/images/chelsea.png -p \"   \"", "--prompt is empty");

    /* a 300-word prompt: refused with its token count unless --truncate */
    char *long_prompt = malloc(300 * 6 + 1);
    long_prompt[0] = '\0';
    for (int i = 0; i < 300; i++) strcat(long_prompt, i ? " house" : "house");
    snprintf(args, sizeof args, "generate -p \"%s\" --size 64 --steps 1", long_prompt);
    expect_failure(args, "--prompt has 300 tokens; the text encoder reads at most 75");
    free(long_prompt);

    expect_failure("generate -m /nonexistent/model -p cat", "/nonexistent/model");

    /* a model folder whose unet/config.json is malformed */
    snprintf(args, sizeof args, "cp -r models/tiny %s/broken && printf '{\"block_out_channels\": [32, 32' > %s/broken/unet/config.json",
             tmpdir, tmpdir);
    assert_int_equal(system(args), 0);
    snprintf(args, sizeof args, "generate -m %s/broken -p cat --size 64 --steps 1", tmpdir);
    expect_failure(args, "unet/config.json");

    /* a truncated single-file checkpoint */
    snprintf(path, sizeof path, "%s/truncated.safetensors", tmpdir);
    snprintf(args, sizeof args, "head -c 5000 models/tiny/unet/diffusion_pytorch_model.safetensors > %s", path);
    assert_int_equal(system(args), 0);
    snprintf(args, sizeof args, "generate -m %s -p cat", path);
    expect_failure(args, "truncated.safetensors");

    /* a tensor of the wrong shape: a text-encoder config that disagrees with its weights */
    snprintf(args, sizeof args, "cp -r models/tiny %s/wrongshape && sed -i 's/\"hidden_size\": 32/\"hidden_size\": 48/' %s/wrongshape/text_encoder/config.json",
             tmpdir, tmpdir);
    assert_int_equal(system(args), 0);
    snprintf(args, sizeof args, "generate -m %s/wrongshape -p cat --size 64 --steps 1", tmpdir);
    expect_failure(args, "text_model.embeddings.token_embedding.weight");

    /* an output path that cannot be written */
    snprintf(args, sizeof args, "generate -p cat --size 64 --steps 1 -o /nonexistent-dir/out.png");
    expect_failure(args, "/nonexistent-dir/out.png");

    expect_failure("tokenize --word dog \"a cat sitting\"", "dog");
}

/* The reference CSV format: a good row, a row without a target, a row whose blend word is not in
 * its prompt. The bad rows are reported, the good one is written, the exit status is 1. */
static void test_batch_csv(void **state) {
    (void)state;
    char csv[PATH_MAX + 32], args[4096], png[PATH_MAX + 64];
    snprintf(csv, sizeof csv, "%s/edits.csv", tmpdir);
    FILE *f = fopen(csv, "w");
    assert_non_null(f);
    fputs(",case_number,prompt,image_path,url,target,blend_word,eq_params,tau_v,tau_c,tau_s,tau_u,edit_type\n"
          "0,0,a cat on a floor,data/images/chelsea.png,,a tiger on a floor,\"[('cat',),('tiger',)]\",\"[('tiger',),(2,)]\",\"[.5,]\",\"[.6,]\",\"[.8,]\",\"[.5,]\",Replacement\n"
          "1,1,a cat on a floor,data/images/chelsea.png,,,,,,,,,Replacement\n"
          "2,2,a cat on a floor,data/images/chelsea.png,,a dog on a floor,\"[('cow',),('dog',)]\",,,,,,Replacement\n",
          f);
    fclose(f);
    snprintf(args, sizeof args, "batch %s --method npi --steps 3 --size-check -o %s/batch -q", csv, tmpdir);
    /* (an unknown option first: the parser names it) */
    expect_failure(args, "unknown option '--size-check'");
    snprintf(args, sizeof args, "batch %s --method npi --steps 3 -o %s/batch -q", csv, tmpdir);
    run_result *r = malloc(sizeof *r);
    run(r, args);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->out, "1 rows done, 2 failed"));
    assert_non_null(strstr(r->out, "line 3: ") );
    assert_non_null(strstr(r->out, "missing column 'target'"));
    assert_non_null(strstr(r->out, "word \"cow\" is not one of the space-separated words"));
    snprintf(png, sizeof png, "%s/batch/0 a tiger on a floor.png", tmpdir);
    struct stat st;
    assert_int_equal(stat(png, &st), 0);
    free(r);
}

/* `bench grad`: one gradient step of each kind on the tiny model; --save-io writes losses and
 * gradients that are finite and not all zero; --profile breaks a step down, backward included; a
 * bad --what is named. */
static void test_bench_grad(void **state) {
    (void)state;
    char args[2048], io[PATH_MAX + 32];
    snprintf(io, sizeof io, "%s/grad_io.safetensors", tmpdir);
    snprintf(args, sizeof args, "bench grad --size 64 --iters 1 --tsv -q --save-io %s", io);
    run_result *r = malloc(sizeof *r);
    run(r, args);
    if (r->status) fail_msg("%s", r->out);
    const char *steps[3] = {"\tforward\t", "\tcontext\t", "\tvalue\t"};
    for (int i = 0; i < 3; i++)
        if (!strstr(r->out, steps[i])) fail_msg("no %s row in:\n%s", steps[i], r->out);
    sd_safetensors f;
    assert_sd_ok(sd_safetensors_open(io, &f));
    const char *names[2] = {"grad_context", "grad_value"};
    for (int k = 0; k < 2; k++) {
        sd_tensor *g = NULL;
        const sd_st_entry *e = sd_safetensors_find(&f, names[k]);
        if (!e) fail_msg("%s has no %s", io, names[k]);
        assert_sd_ok(sd_safetensors_load_f32(&f, e, &g));
        double norm = 0;
        for (int64_t i = 0; i < sd_numel(g); i++) norm += (double)sd_f32(g)[i] * sd_f32(g)[i];
        if (!(norm > 0 && isfinite(norm))) fail_msg("%s: squared norm %g", names[k], norm);
        sd_tensor_free(g);
    }
    sd_safetensors_close(&f);
    /* --profile: the step's breakdown counts the backward too (more convolutions than a forward) */
    run(r, "bench grad --size 64 --iters 1 --what forward,context --profile -q");
    if (r->status) fail_msg("%s", r->out);
    long long conv[2] = {0, 0};
    const char *heads[2] = {"where the time goes (forward step", "where the time goes (context step"};
    for (int k = 0; k < 2; k++) {
        const char *at = strstr(r->out, heads[k]);
        if (!at || !(at = strstr(at, "\nconvolution"))) fail_msg("no %s breakdown in:\n%s", heads[k], r->out);
        assert_int_equal(sscanf(at + strlen("\nconvolution"), "%lld", &conv[k]), 1);
    }
    if (!(conv[0] > 0 && conv[1] > conv[0])) fail_msg("convolution calls: forward %lld, context step %lld", conv[0], conv[1]);
    free(r);
    expect_failure("bench grad --what sideways", "--what: unknown step 'sideways'");
}

/* `bench invert --profile`: each method's run broken down op by op, the optimisation's backward
 * included (attention_backward calls), after which the timing table still prints. Every kind is
 * listed (SD_PROFILE_TOP): by default only the 15 slowest are, and on a loaded machine the
 * backward's attention can fall out of those. */
static void test_bench_invert_profile(void **state) {
    (void)state;
    run_result *r = malloc(sizeof *r);
    setenv("SD_PROFILE_TOP", "1000", 1);
    run(r, "bench invert --device cpu --methods nulltext --steps 3 --inner 1 --timesteps 1 --profile -q");
    unsetenv("SD_PROFILE_TOP");
    if (r->status) fail_msg("%s", r->out);
    const char *at = strstr(r->out, "where the time goes (bench invert nulltext, 1 timestep(s)");
    if (!at) fail_msg("no breakdown in:\n%s", r->out);
    if (!strstr(at, "attention_backward")) fail_msg("the breakdown lists no backward op:\n%s", r->out);
    if (!strstr(at, "inversion cost and reconstruction quality")) fail_msg("no table after the breakdown:\n%s", r->out);
    free(r);
}

/* `bench invert` with more than two timesteps timed also gives the steady state: the time per
 * timestep and per iteration after the first two (which carry the one-time plans and CUDA graph
 * captures), both positive, the per-iteration time at most the per-timestep one. */
static void test_bench_invert_steady_state(void **state) {
    (void)state;
    run_result *r = malloc(sizeof *r);
    run(r, "bench invert --device cpu --methods nulltext --steps 4 --inner 1 --timesteps 3 -q");
    if (r->status) fail_msg("%s", r->out);
    const char *at = strstr(r->out, "steady state: the timed timesteps after the first 2");
    if (!at || !(at = strstr(at, "\nnulltext"))) fail_msg("no steady-state line in:\n%s", r->out);
    double first = 0, per_step = 0, per_iter = 0;
    if (sscanf(at, "\nnulltext first 2 timesteps %lf s, then %lf s per timestep, %lf ms per iteration", &first,
               &per_step, &per_iter) != 3)
        fail_msg("unreadable steady-state line in:\n%s", r->out);
    /* per iteration = the steady timesteps' seconds / their iterations, per timestep = the same
     * seconds / their count: with --inner 1 the two are equal. Both are printed rounded, the
     * timestep to 1 ms (%.3f s), the iteration to 0.1 ms (a CI run printed 0.360 s and 360.4 ms for
     * one value), so the comparison allows each half a unit of its last digit, no more */
    if (!(first > 0 && per_step > 0 && per_iter > 0 && per_iter / 1e3 <= per_step + 0.0005 + 0.00005))
        fail_msg("steady state: first %g s, %g s per timestep, %g ms per iteration", first, per_step, per_iter);
    free(r);
}

/* `bench unet` counts a call's arithmetic op by op: every op's work is linear in the batch, so
 * batch 2 counts exactly twice batch 1; the TFLOP/s column is that count over the median. */
static void test_bench_unet_flops(void **state) {
    (void)state;
    run_result *r = malloc(sizeof *r);
    double gflop[2] = {0, 0};
    for (int b = 0; b < 2; b++) {
        char args[128];
        snprintf(args, sizeof args, "bench unet --device cpu --size 64 --iters 1 --batch %d", b + 1);
        run(r, args);
        if (r->status) fail_msg("%s", r->out);
        const char *at = strstr(r->out, "one call: ");
        if (!at || sscanf(at, "one call: %lf GFLOP", &gflop[b]) != 1) fail_msg("no FLOP count in:\n%s", r->out);
        double ms = 0, tflops = 0;
        const char *row = strstr(r->out, "eager");
        if (!row || sscanf(row, "eager %*d %*s %lf %*f %*f %lf", &ms, &tflops) != 2)
            fail_msg("unreadable timing row in:\n%s", r->out);
        /* GFLOP per ms is TFLOP/s; the column is printed to 0.01 */
        if (!(fabs(tflops - gflop[b] / ms) <= 0.006 + 0.01 * tflops))
            fail_msg("%g GFLOP in %g ms is not %g TFLOP/s:\n%s", gflop[b], ms, tflops, r->out);
    }
    print_message("    tiny UNet at 8x8: %.4g GFLOP at batch 1, %.4g at batch 2\n", gflop[0], gflop[1]);
    assert_true(gflop[0] > 0 && fabs(gflop[1] - 2 * gflop[0]) <= 1e-3 * gflop[1]);
    free(r);
}

/* `bench unet --profile`: the per-class breakdown follows the timing table, every class of op the
 * UNet uses has calls, and the timed ops add up to no more than the call's wall time. Every kind
 * is listed (SD_PROFILE_TOP), so that the rows looked for below are there however a loaded
 * machine orders their times. */
static void test_bench_unet_profile(void **state) {
    (void)state;
    run_result *r = malloc(sizeof *r);
    setenv("SD_PROFILE_TOP", "1000", 1);
    run(r, "bench unet --device cpu --size 64 --iters 1 --profile");
    unsetenv("SD_PROFILE_TOP");
    if (r->status) fail_msg("%s", r->out);
    const char *where = strstr(r->out, "where the time goes");
    if (!where) fail_msg("no breakdown in:\n%s", r->out);
    double wall = 0;
    assert_int_equal(sscanf(strstr(where, "one eager call, "), "one eager call, %lf ms", &wall), 1);
    const char *classes[] = {"convolution", "linear (GEMM)", "attention", "norm", "elementwise/layout"};
    for (size_t i = 0; i < sizeof classes / sizeof classes[0]; i++) {
        const char *row = strstr(where, classes[i]);
        if (!row) fail_msg("no %s row in:\n%s", classes[i], where);
        long long calls = 0;
        if (sscanf(row + strlen(classes[i]), "%lld", &calls) != 1 || calls <= 0)
            fail_msg("%s: no calls counted in:\n%s", classes[i], where);
    }
    double timed = 0;
    assert_int_equal(sscanf(strstr(where, "\ntotal") + 6, "%lf", &timed), 1);
    assert_true(timed > 0 && timed <= wall * 1.01);
    /* the finer table names the kernels by shape, heaviest first, within the timed total */
    const char *heavy = strstr(where, "heaviest ops by kind and shape");
    if (!heavy) fail_msg("no per-shape table in:\n%s", where);
    const char *labels[] = {"conv 3x3/1 ", "linear M", "attention B2 Sq64 Sk64 H8 D"};
    for (size_t i = 0; i < sizeof labels / sizeof labels[0]; i++)
        if (!strstr(heavy, labels[i])) fail_msg("no '%s' row in:\n%s", labels[i], heavy);
    double listed = 0, prev = 1e30;
    for (const char *line = strchr(strstr(heavy, "\n  op ") + 1, '\n'); line && line[1] == ' '; line = strchr(line + 1, '\n')) {
        long long calls;
        double ms;
        /* "  <name words...> calls ms share% ...": the name has spaces, so step back from the % */
        const char *pct = strchr(line, '%');
        if (!pct) break;
        const char *p = pct;
        int fields = 0;
        while (p > line && fields < 3) { /* back over "share", "ms" and "calls" */
            while (p > line && p[-1] != ' ') p--;
            while (p > line && p[-1] == ' ') p--;
            fields++;
        }
        if (sscanf(p, " %lld %lf", &calls, &ms) != 2) fail_msg("unreadable row in:\n%s", heavy);
        assert_true(calls > 0 && ms <= prev + 1e-9);
        prev = ms;
        listed += ms;
    }
    assert_true(listed > 0 && listed <= timed * 1.001 + 1e-3);
    free(r);
}

/* `eval` on a batch folder: every metric with the tiny CLIP, DINO and (random) LPIPS models, the
 * NS-LPIPS masks made from the batch's model and cached; then the same over two CPU worker
 * processes (--devices cpu,cpu), merged; a folder without a report and a bad device are named. */
static void test_eval(void **state) {
    (void)state;
    char csv[PATH_MAX + 32], args[4096], lpips[PATH_MAX + 32], report_path[PATH_MAX + 64];
    snprintf(csv, sizeof csv, "%s/eval.csv", tmpdir);
    FILE *f = fopen(csv, "w");
    assert_non_null(f);
    fputs(",case_number,prompt,image_path,url,target,blend_word,eq_params,tau_v,tau_c,tau_s,tau_u,edit_type\n"
          "0,0,a cat on a floor,data/images/chelsea.png,,a tiger on a floor,\"[('cat',),('tiger',)]\",,,,,,Replacement\n"
          "1,1,a cat on a floor,data/images/chelsea.png,,a cat on a floor at night,,,,,,,Refinement\n",
          f);
    fclose(f);
    snprintf(args, sizeof args, "batch %s --method npi --steps 2 -o %s/ev -q", csv, tmpdir);
    run_result *r = malloc(sizeof *r);
    run(r, args);
    if (r->status) fail_msg("%s", r->out);
    snprintf(lpips, sizeof lpips, "%s/lpips_random.safetensors", tmpdir);
    testutil_write_random_lpips(lpips);
    snprintf(args, sizeof args,
             "eval %s/ev --clip-score models/tiny-clip --clip-tokenizer models/tiny/tokenizer --dino models/tiny-dino "
             "--lpips %s --mask-steps 2 -q",
             tmpdir, lpips);
    run(r, args);
    /* row 1 has no blend word: its NS-LPIPS is reported missing, so the command exits 1 */
    if (r->status != 1) fail_msg("status %d:\n%s", r->status, r->out);
    assert_non_null(strstr(r->out, "eval "));
    assert_non_null(strstr(r->out, "case 1 has no blend word"));
    snprintf(report_path, sizeof report_path, "%s/ev/eval_report.json", tmpdir);
    char *text;
    size_t len;
    assert_sd_ok(sd_read_file(report_path, &text, &len));
    const char *keys[] = {"\"psnr_db\"", "\"ssim\"", "\"clip_score\"", "\"structure_dist\"", "\"ns_lpips\"",
                          "\"clip_score_hessel\"", "\"ns_lpips_error\""};
    for (int i = 0; i < 7; i++)
        if (!strstr(text, keys[i])) fail_msg("%s lacks %s:\n%s", report_path, keys[i], text);
    cJSON *alone = cJSON_Parse(text);
    assert_non_null(alone);
    free(text);
    snprintf(args, sizeof args, "%s/ev/masks", tmpdir);
    struct stat st;
    assert_int_equal(stat(args, &st), 0);

    /* --devices cpu,cpu: one case per worker; the merged report has both rows, each with its
     * worker and device, and the same means as the run alone */
    snprintf(args, sizeof args,
             "eval %s/ev --clip-score models/tiny-clip --clip-tokenizer models/tiny/tokenizer --dino models/tiny-dino "
             "--lpips %s --mask-steps 2 --devices cpu,cpu",
             tmpdir, lpips);
    run(r, args);
    if (r->status != 1) fail_msg("status %d:\n%s", r->status, r->out);
    if (!strstr(r->out, "2 rows over 2 worker processes") || !strstr(r->out, "on 2 workers (0 failed)"))
        fail_msg("unexpected output:\n%s", r->out);
    for (int k = 0; k < 2; k++) {
        snprintf(args, sizeof args, "%s/ev/logs/eval-worker-%d.log", tmpdir, k);
        assert_sd_ok(sd_read_file(args, &text, &len));
        if (!strstr(text, "=== stylediff eval worker")) fail_msg("%s:\n%s", args, text);
        free(text);
    }
    assert_sd_ok(sd_read_file(report_path, &text, &len));
    cJSON *merged = cJSON_Parse(text);
    if (!merged) fail_msg("%s is not JSON:\n%s", report_path, text);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(merged, "rows");
    if (cJSON_GetArraySize(rows) != 2) fail_msg("%s: expected 2 rows:\n%s", report_path, text);
    int workers_seen = 0;
    for (int i = 0; i < 2; i++) {
        const cJSON *row = cJSON_GetArrayItem(rows, i);
        const cJSON *worker = cJSON_GetObjectItemCaseSensitive(row, "worker");
        assert_string_equal(cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(row, "device")), "cpu");
        assert_true(cJSON_IsNumber(worker));
        workers_seen |= 1 << worker->valueint;
        /* report order: case 0 then case 1 */
        assert_int_equal(cJSON_GetObjectItemCaseSensitive(row, "case_number")->valueint, i);
        assert_non_null(cJSON_GetObjectItemCaseSensitive(row, "psnr_db"));
    }
    if (workers_seen != 3) fail_msg("both workers should have had a row:\n%s", text);
    const cJSON *workers = cJSON_GetObjectItemCaseSensitive(merged, "workers");
    for (int k = 0; k < 2; k++)
        assert_string_equal(
            cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(workers, k), "status")), "finished");
    const cJSON *means = cJSON_GetObjectItemCaseSensitive(merged, "means");
    const cJSON *alone_means = cJSON_GetObjectItemCaseSensitive(alone, "means");
    const char *mean_keys[] = {"psnr_db", "ssim", "clip_score", "structure_dist", "ns_lpips", "clip_score_torchmetrics",
                               "clip_score_hessel"};
    for (int i = 0; i < 7; i++) {
        const cJSON *m = cJSON_GetObjectItemCaseSensitive(means, mean_keys[i]);
        const cJSON *a = cJSON_GetObjectItemCaseSensitive(alone_means, mean_keys[i]);
        if (!cJSON_IsNumber(m) || !cJSON_IsNumber(a) || fabs(m->valuedouble - a->valuedouble) > 1e-3)
            fail_msg("mean %s: %g merged, %g alone:\n%s", mean_keys[i], m ? m->valuedouble : NAN,
                     a ? a->valuedouble : NAN, text);
    }
    cJSON_Delete(merged);
    cJSON_Delete(alone);
    free(text);
    free(r);
    snprintf(args, sizeof args, "eval %s", tmpdir);
    expect_failure(args, "batch_report.json");
    snprintf(args, sizeof args, "eval %s/ev --devices cpu,tpu", tmpdir);
    expect_failure(args, "--devices 'cpu,tpu': entry 2 'tpu' is not a device");
}

int main(int argc, char **argv) {
    (void)argc;
    testutil_stylediff_path(stylediff, sizeof stylediff, argv[0]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_help_and_usage),
        cmocka_unit_test(test_generate_and_reconstruct),
        cmocka_unit_test(test_bad_inputs),
        cmocka_unit_test(test_batch_csv),
        cmocka_unit_test(test_bench_grad), cmocka_unit_test(test_bench_invert_profile),
        cmocka_unit_test(test_bench_invert_steady_state),
        cmocka_unit_test(test_bench_unet_flops),
        cmocka_unit_test(test_bench_unet_profile),
        cmocka_unit_test(test_eval),
    };
    return cmocka_run_group_tests_name("cli", tests, setup, teardown);
}
