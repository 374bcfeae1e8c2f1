/* test_batch_shard.c: `stylediff batch --devices LIST` and `--resume`. First the logic alone
 * (src/cli/batch_shard.c: parsing --devices, grouping rows by image+prompt, balancing groups over
 * shards, finding rows done earlier, merging report parts, including a crashed worker's), then the
 * built binary end to end with two CPU workers on the tiny model (DDIM, 2 steps: the cheapest run
 * that still inverts, edits, caches and writes every file).
 *
 * The CLI's files are not in libstylediff.a, so the logic under test is compiled in here. */
#include <cjson/cJSON.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "testutil.h"

#include "../../src/cli/batch_shard.c"

static char stylediff[PATH_MAX];
static char tmpdir[64];

/* ------------------------------------------------------------------------------------------------
 * --devices, --shard
 * --------------------------------------------------------------------------------------------- */

static int counter_calls;
static int four_gpus(void) {
    counter_calls++;
    return 4;
}
static int no_gpu(void) {
    counter_calls++;
    sd_fail(SD_ERR_DEVICE, "no NVIDIA driver found");
    return 0;
}

static void test_parse_devices(void **state) {
    (void)state;
    batch_devices d;
    counter_calls = 0;
    assert_sd_ok(batch_parse_devices("cuda:0, cuda:1,cuda:3", four_gpus, &d));
    assert_int_equal(d.n, 3);
    assert_string_equal(d.name[0], "cuda:0");
    assert_string_equal(d.name[1], "cuda:1");
    assert_string_equal(d.name[2], "cuda:3");
    assert_sd_ok(batch_parse_devices("cpu,cpu", four_gpus, &d));
    assert_int_equal(d.n, 2);
    assert_string_equal(d.name[1], "cpu");
    assert_sd_ok(batch_parse_devices("cuda", four_gpus, &d)); /* canonical names in the reports */
    assert_string_equal(d.name[0], "cuda:0");
    assert_int_equal(counter_calls, 0); /* only "all" asks CUDA */

    assert_sd_ok(batch_parse_devices("all", four_gpus, &d));
    assert_int_equal(counter_calls, 1);
    assert_int_equal(d.n, 4);
    assert_string_equal(d.name[3], "cuda:3");

    assert_sd_fails(batch_parse_devices("all", no_gpu, &d), SD_ERR_DEVICE, "--devices all: no CUDA device is visible");
    assert_sd_fails(batch_parse_devices("all", no_gpu, &d), SD_ERR_DEVICE, "no NVIDIA driver found");
    assert_sd_fails(batch_parse_devices("", four_gpus, &d), SD_ERR_ARG, "--devices is empty");
    assert_sd_fails(batch_parse_devices("cpu,,cpu", four_gpus, &d), SD_ERR_ARG, "entry 2 is empty");
    assert_sd_fails(batch_parse_devices("cuda:0,tpu", four_gpus, &d), SD_ERR_ARG, "entry 2 'tpu' is not a device");
    assert_sd_fails(batch_parse_devices("auto", four_gpus, &d), SD_ERR_ARG, "'auto' is not a device");
    assert_sd_fails(batch_parse_devices("cuda:x", four_gpus, &d), SD_ERR_ARG, "'cuda:x'");
    assert_sd_fails(batch_parse_devices("all,cpu", four_gpus, &d), SD_ERR_ARG, "'all' stands alone");

    int k = -1, n = -1;
    assert_sd_ok(batch_parse_shard("1/4", &k, &n));
    assert_int_equal(k, 1);
    assert_int_equal(n, 4);
    const char *bad[] = {"4/4", "-1/2", "1", "1/0", "a/b", "1/2x", "/2", "0/65"};
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++)
        assert_sd_fails(batch_parse_shard(bad[i], &k, &n), SD_ERR_ARG, bad[i]);
}

/* ------------------------------------------------------------------------------------------------
 * Grouping and balancing
 * --------------------------------------------------------------------------------------------- */

static void test_group_rows(void **state) {
    (void)state;
    /* rows 0, 2, 5 share cat.png + prompt A; row 3 the same image with another prompt (another
     * inversion); row 4 is outside --from/--to */
    const char *keys[] = {"cat.png\x1f" "a cat", "dog.png\x1f" "a dog", "cat.png\x1f" "a cat",
                          "cat.png\x1f" "a kitten", NULL, "cat.png\x1f" "a cat"};
    int group[6];
    assert_int_equal(batch_group_rows(6, keys, group), 3);
    const int want[] = {0, 1, 0, 2, -1, 0};
    for (int r = 0; r < 6; r++) assert_int_equal(group[r], want[r]);
}

static void test_assign_groups(void **state) {
    (void)state;
    /* largest first, each to the lightest shard: 3 -> s0, 2 -> s1, 1 -> s1, 1 -> s0, 1 -> s1 */
    const int rows_in_group[] = {3, 1, 1, 2, 1};
    int shard[5];
    batch_assign_groups(5, rows_in_group, 2, shard);
    const int want[] = {0, 1, 0, 1, 1};
    for (int g = 0; g < 5; g++) assert_int_equal(shard[g], want[g]);

    /* more shards than groups: the extra shards get nothing, no group is split */
    const int two[] = {5, 5};
    int shard4[2];
    batch_assign_groups(2, two, 4, shard4);
    assert_int_equal(shard4[0], 0);
    assert_int_equal(shard4[1], 1);

    /* the whole plan: rows of one group on one shard, excluded rows on none, loads balanced */
    enum { N = 40 };
    const char *keys[N];
    char text[N][32];
    for (int r = 0; r < N; r++) {
        snprintf(text[r], sizeof text[r], "image%d.png\x1fprompt", r % 7); /* 7 groups of 5-6 rows */
        keys[r] = r % 10 == 9 ? NULL : text[r];
    }
    int shard_of_row[N], again[N], load[3] = {0, 0, 0};
    assert_sd_ok(batch_plan_shards(N, keys, 3, shard_of_row));
    assert_sd_ok(batch_plan_shards(N, keys, 3, again));
    assert_memory_equal(shard_of_row, again, sizeof again); /* every process computes the same plan */
    for (int r = 0; r < N; r++) {
        if (!keys[r]) {
            assert_int_equal(shard_of_row[r], -1);
            continue;
        }
        assert_in_range(shard_of_row[r], 0, 2);
        load[shard_of_row[r]]++;
        for (int q = 0; q < r; q++)
            if (keys[q] && !strcmp(keys[q], keys[r])) assert_int_equal(shard_of_row[q], shard_of_row[r]);
    }
    assert_int_equal(load[0] + load[1] + load[2], 36);
    for (int s = 0; s < 3; s++) assert_in_range(load[s], 10, 14); /* 36 rows in groups of <= 6 */
}

/* ------------------------------------------------------------------------------------------------
 * Merging report parts
 * --------------------------------------------------------------------------------------------- */

static cJSON *placeholder_entry(int row) {
    cJSON *e = cJSON_CreateObject();
    cJSON_AddNumberToObject(e, "line", row + 2);
    cJSON_AddNumberToObject(e, "row", row);
    return e;
}

static cJSON *reported(int row, const char *status) {
    cJSON *e = placeholder_entry(row);
    cJSON_AddStringToObject(e, "status", status);
    return e;
}

static const char *field(const cJSON *obj, const char *key) {
    return cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(obj, key));
}

static void test_merge(void **state) {
    (void)state;
    /* rows 0 and 2 on worker 0, which finished (row 2 failed); rows 1 and 3 on worker 1, killed
     * after writing row 1; row 4 outside the range; worker 2 had nothing to do */
    const int shard_of_row[] = {0, 1, 0, 1, -1};
    cJSON *placeholders[5];
    for (int r = 0; r < 5; r++) placeholders[r] = placeholder_entry(r);
    batch_worker w[3];
    memset(w, 0, sizeof w);
    snprintf(w[0].device, sizeof w[0].device, "cuda:0");
    snprintf(w[1].device, sizeof w[1].device, "cuda:1");
    snprintf(w[2].device, sizeof w[2].device, "cuda:2");
    snprintf(w[1].log_path, sizeof w[1].log_path, "out/logs/worker-1.log");
    snprintf(w[1].last_log_line, sizeof w[1].last_log_line, "CUDA error: an illegal memory access");
    w[0].rows_assigned = w[1].rows_assigned = 2;
    w[0].launched = w[1].launched = 1;
    w[0].exited = 1;
    w[0].exit_status = 1; /* a failed row: the worker itself is fine */
    w[1].signal = 9;
    w[0].part = cJSON_CreateObject();
    cJSON_AddStringToObject(w[0].part, "device", "cuda:0 NVIDIA H100");
    cJSON *rows0 = cJSON_AddArrayToObject(w[0].part, "rows");
    cJSON_AddItemToArray(rows0, reported(2, BATCH_FAILED)); /* part order need not be CSV order */
    cJSON_AddItemToArray(rows0, reported(0, BATCH_DONE));
    cJSON_AddTrueToObject(w[0].part, "finished");
    w[1].part = cJSON_CreateObject();
    cJSON_AddItemToArray(cJSON_AddArrayToObject(w[1].part, "rows"), reported(1, BATCH_DONE));
    cJSON_AddFalseToObject(w[1].part, "finished");

    char why[1024];
    assert_false(batch_worker_failed(&w[0], why, sizeof why));
    assert_true(batch_worker_failed(&w[1], why, sizeof why));
    assert_string_equal(why, "was killed by signal 9 (Killed)");
    assert_false(batch_worker_failed(&w[2], why, sizeof why));

    cJSON *report = cJSON_CreateObject();
    batch_totals t;
    batch_merge(report, 5, shard_of_row, placeholders, w, 3, &t);
    assert_int_equal(t.done, 2);
    assert_int_equal(t.failed, 1);
    assert_int_equal(t.not_run, 1);
    assert_int_equal(t.skipped, 0);
    assert_int_equal(t.workers_failed, 1);

    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(report, "rows");
    assert_int_equal(cJSON_GetArraySize(rows), 4);
    const char *want_status[] = {BATCH_DONE, BATCH_DONE, BATCH_FAILED, BATCH_NOT_RUN};
    const char *want_device[] = {"cuda:0", "cuda:1", "cuda:0", "cuda:1"};
    for (int r = 0; r < 4; r++) {
        const cJSON *e = cJSON_GetArrayItem(rows, r);
        assert_int_equal(cJSON_GetObjectItemCaseSensitive(e, "row")->valueint, r); /* CSV order */
        assert_string_equal(field(e, "status"), want_status[r]);
        assert_string_equal(field(e, "device"), want_device[r]);
        assert_int_equal(cJSON_GetObjectItemCaseSensitive(e, "worker")->valueint, shard_of_row[r]);
    }
    const char *reason = field(cJSON_GetArrayItem(rows, 3), "error");
    print_message("    not run: %s\n", reason);
    assert_non_null(strstr(reason, "worker 1 (cuda:1) was killed by signal 9"));
    assert_non_null(strstr(reason, "CUDA error: an illegal memory access"));
    assert_non_null(strstr(reason, "out/logs/worker-1.log"));

    const cJSON *workers = cJSON_GetObjectItemCaseSensitive(report, "workers");
    assert_int_equal(cJSON_GetArraySize(workers), 3);
    assert_string_equal(field(cJSON_GetArrayItem(workers, 0), "status"), "finished");
    assert_string_equal(field(cJSON_GetArrayItem(workers, 0), "device_description"), "cuda:0 NVIDIA H100");
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(workers, 0), "exit_status")->valueint, 1);
    assert_string_equal(field(cJSON_GetArrayItem(workers, 1), "status"), BATCH_FAILED);
    assert_int_equal(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(workers, 1), "signal")->valueint, 9);
    assert_non_null(strstr(field(cJSON_GetArrayItem(workers, 2), "status"), "idle"));

    /* a worker that exited without a part (e.g. its model did not load): all its rows are not run */
    w[1].signal = 0;
    w[1].exited = 1;
    w[1].exit_status = 1;
    cJSON_Delete(w[1].part);
    w[1].part = NULL;
    cJSON *report2 = cJSON_CreateObject();
    batch_merge(report2, 5, shard_of_row, placeholders, w, 3, &t);
    assert_int_equal(t.not_run, 2);
    reason = field(cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(report2, "rows"), 1), "error");
    assert_non_null(strstr(reason, "exited with status 1 without writing its report part"));

    cJSON_Delete(report);
    cJSON_Delete(report2);
    cJSON_Delete(w[0].part);
    for (int r = 0; r < 5; r++) cJSON_Delete(placeholders[r]);
}

/* ------------------------------------------------------------------------------------------------
 * --resume records
 * --------------------------------------------------------------------------------------------- */

static void write_text(const char *dir, const char *name, const char *text) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_resume_records(void **state) {
    (void)state;
    char dir[PATH_MAX], doc[4096];
    snprintf(dir, sizeof dir, "%s/resume", tmpdir);
    assert_int_equal(mkdir(dir, 0755), 0);
    write_text(dir, "a.png", "png");
    write_text(dir, "d.png", "png");
    /* merged report, same settings: h1 done (PNG exists), h2 done (PNG deleted since), h3 failed */
    snprintf(doc, sizeof doc,
             "{\"run_key\": \"K\", \"rows\": ["
             "{\"row_hash\": \"h1\", \"status\": \"done\", \"edit\": \"%s/a.png\"},"
             "{\"row_hash\": \"h2\", \"status\": \"done\", \"edit\": \"%s/gone.png\"},"
             "{\"row_hash\": \"h3\", \"status\": \"failed\", \"edit\": \"%s/a.png\"}]}",
             dir, dir, dir);
    write_text(dir, "batch_report.json", doc);
    /* a part a killed run left (h4, skipped as done even earlier), a part of other settings (h5),
     * a malformed part, and a temporary file of an atomic write (both ignored) */
    snprintf(doc, sizeof doc, "{\"run_key\": \"K\", \"rows\": [{\"row_hash\": \"h4\", \"status\": \"skipped\", "
                              "\"edit\": \"%s/d.png\"}]}", dir);
    write_text(dir, "batch_report.part-0.json", doc);
    snprintf(doc, sizeof doc, "{\"run_key\": \"other\", \"rows\": [{\"row_hash\": \"h5\", \"status\": \"done\", "
                              "\"edit\": \"%s/a.png\"}]}", dir);
    write_text(dir, "batch_report.part-1.json", doc);
    write_text(dir, "batch_report.part-2.json", "{\"rows\": [");
    snprintf(doc, sizeof doc, "{\"run_key\": \"K\", \"rows\": [{\"row_hash\": \"h6\", \"status\": \"done\", "
                              "\"edit\": \"%s/a.png\"}]}", dir);
    write_text(dir, "batch_report.part-3.json.tmp.123", doc);

    cJSON *done = batch_load_done(dir, "K");
    assert_non_null(batch_find_done(done, "h1"));
    assert_null(batch_find_done(done, "h2"));
    assert_null(batch_find_done(done, "h3"));
    assert_non_null(batch_find_done(done, "h4"));
    assert_null(batch_find_done(done, "h5"));
    assert_null(batch_find_done(done, "h6"));
    cJSON_Delete(done);

    done = batch_load_done("/nonexistent/results", "K"); /* a first run: nothing done */
    assert_int_equal(cJSON_GetArraySize(done), 0);
    cJSON_Delete(done);

    assert_sd_ok(batch_remove_parts(dir));
    char path[PATH_MAX + 64];
    for (int k = 0; k < 3; k++) {
        snprintf(path, sizeof path, "%s/batch_report.part-%d.json", dir, k);
        assert_false(sd_file_exists(path));
    }
    snprintf(path, sizeof path, "%s/batch_report.json", dir);
    assert_true(sd_file_exists(path));
}

/* ------------------------------------------------------------------------------------------------
 * End to end: the built binary, two CPU workers
 * --------------------------------------------------------------------------------------------- */

typedef testutil_run run_result;

static void run(run_result *r, const char *args) { testutil_run_cli(r, stylediff, args); }

static const char csv_header[] =
    ",case_number,prompt,image_path,url,target,blend_word,eq_params,tau_v,tau_c,tau_s,tau_u,edit_type\n";

static void write_csv(const char *path, const char *rows) {
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(csv_header, f);
    fputs(rows, f);
    fclose(f);
}

static cJSON *read_report(const char *out_dir) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/batch_report.json", out_dir);
    cJSON *doc = testutil_json_file(path);
    assert_non_null(doc);
    return doc;
}

static void assert_exists(const char *dir, const char *name) {
    char path[PATH_MAX];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    struct stat st;
    if (stat(path, &st) != 0 || st.st_size == 0) fail_msg("%s: missing or empty", path);
}

static void test_options_refused(void **state) {
    (void)state;
    run_result *r = malloc(sizeof *r);
    run(r, "batch --help");
    assert_int_equal(r->status, 0);
    assert_non_null(strstr(r->out, "--devices LIST"));
    assert_non_null(strstr(r->out, "--resume"));
    const struct {
        const char *args, *message;
    } bad[] = {
        {"batch data/x.csv --devices cpu,,cpu", "--devices 'cpu,,cpu': entry 2 is empty"},
        {"batch data/x.csv --devices tpu", "entry 1 'tpu' is not a device"},
        {"batch data/x.csv --devices cpu --device cpu", "--device and --devices exclude each other"},
        {"batch data/x.csv --devices cpu,cpu", "data/x.csv"}, /* a missing CSV, named */
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        run(r, bad[i].args);
        if (r->status == 0 || r->status >= 128 || !strstr(r->out, bad[i].message))
            fail_msg("stylediff %s: expected a clean failure naming \"%s\", got status %d:\n%s", bad[i].args,
                     bad[i].message, r->status, r->out);
    }
    if (!testutil_have_gpu()) { /* without a GPU, "all" has nothing to run on */
        run(r, "batch data/x.csv --devices all");
        assert_int_not_equal(r->status, 0);
        assert_non_null(strstr(r->out, "--devices all: no CUDA device is visible"));
        print_message("    ok: --devices all -> %.*s\n", (int)strcspn(r->out, "\n"), r->out);
    }
    free(r);
}

/* Three rows over two images: the two chelsea rows share an inversion, hence a worker. */
static void test_two_workers_then_resume(void **state) {
    (void)state;
    char csv[PATH_MAX], out[PATH_MAX], args[8192];
    snprintf(csv, sizeof csv, "%s/three.csv", tmpdir);
    snprintf(out, sizeof out, "%s/results", tmpdir);
    write_csv(csv, "0,0,a cat on a floor,data/images/chelsea.png,,a tiger on a floor,\"[('cat',),('tiger',)]\",,,,,,Replacement\n"
                   "1,1,an astronaut,tests/fixtures/image_astronaut_crop_128x128.png,,a robot,,,,,,,Replacement\n"
                   "2,2,a cat on a floor,data/images/chelsea.png,,a dog on a floor,,,,,,,Replacement\n");
    snprintf(args, sizeof args, "batch %s --method ddim --steps 2 -o %s --devices cpu,cpu", csv, out);
    run_result *r = malloc(sizeof *r);
    run(r, args);
    if (r->status) fail_msg("stylediff %s: status %d:\n%s", args, r->status, r->out);
    assert_non_null(strstr(r->out, "3 rows done, 0 failed, 0 skipped, 0 not run, on 2 workers (0 failed)"));

    cJSON *report = read_report(out);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(report, "rows");
    assert_int_equal(cJSON_GetArraySize(rows), 3);
    int worker_of[3];
    for (int r_ = 0; r_ < 3; r_++) {
        const cJSON *e = cJSON_GetArrayItem(rows, r_);
        assert_int_equal(cJSON_GetObjectItemCaseSensitive(e, "case_number")->valueint, r_); /* CSV order */
        assert_string_equal(field(e, "status"), BATCH_DONE);
        assert_string_equal(field(e, "device"), "cpu");
        worker_of[r_] = cJSON_GetObjectItemCaseSensitive(e, "worker")->valueint;
    }
    assert_int_equal(worker_of[0], worker_of[2]); /* one inversion, one worker */
    assert_int_not_equal(worker_of[0], worker_of[1]);
    /* the second chelsea row reused the first one's inversion */
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(cJSON_GetArrayItem(rows, 2), "inversion_reused")));
    const cJSON *workers = cJSON_GetObjectItemCaseSensitive(report, "workers");
    assert_int_equal(cJSON_GetArraySize(workers), 2);
    for (int k = 0; k < 2; k++) {
        assert_string_equal(field(cJSON_GetArrayItem(workers, k), "status"), "finished");
        char name[64];
        snprintf(name, sizeof name, "logs/worker-%d.log", k);
        assert_exists(out, name);
        snprintf(name, sizeof name, "batch_report.part-%d.json", k);
        assert_exists(out, name);
    }
    cJSON_Delete(report);
    assert_exists(out, "0 a tiger on a floor.png");
    assert_exists(out, "0 a cat on a floor (source).png");
    assert_exists(out, "1 a robot.png");
    assert_exists(out, "2 a dog on a floor.png");

    /* again with --resume: every row is skipped, and no worker even loads the model */
    snprintf(args, sizeof args, "batch %s --method ddim --steps 2 -o %s --devices cpu,cpu --resume", csv, out);
    run(r, args);
    if (r->status) fail_msg("stylediff %s: status %d:\n%s", args, r->status, r->out);
    assert_non_null(strstr(r->out, "0 rows done, 0 failed, 3 skipped, 0 not run"));
    report = read_report(out);
    rows = cJSON_GetObjectItemCaseSensitive(report, "rows");
    assert_int_equal(cJSON_GetArraySize(rows), 3);
    for (int r_ = 0; r_ < 3; r_++) {
        const cJSON *e = cJSON_GetArrayItem(rows, r_);
        assert_string_equal(field(e, "status"), BATCH_SKIPPED);
        assert_string_equal(field(e, "reason"), "done earlier");
        assert_int_equal(cJSON_GetObjectItemCaseSensitive(e, "worker")->valueint, worker_of[r_]);
    }
    cJSON_Delete(report);

    /* other settings are other results: with --steps 3 nothing counts as done (stopped at once by
     * a model that does not exist, so this costs nothing) */
    snprintf(args, sizeof args, "batch %s --method ddim --steps 3 -m /nonexistent/model -o %s --devices cpu,cpu --resume",
             csv, out);
    run(r, args);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->out, "0 rows done, 0 failed, 0 skipped, 3 not run, on 2 workers (2 failed)"));
    assert_non_null(strstr(r->out, "/nonexistent/model")); /* the workers' reason, from their logs */
    report = read_report(out);
    const cJSON *first = cJSON_GetArrayItem(cJSON_GetObjectItemCaseSensitive(report, "rows"), 0);
    assert_string_equal(field(first, "status"), BATCH_NOT_RUN);
    print_message("    not run: %s\n", field(first, "error"));
    assert_non_null(strstr(field(first, "error"), "exited with status 1 without writing its report part"));
    cJSON_Delete(report);
    free(r);
}

/* A row whose image is missing fails alone; the row on the other worker is done (its inversion is
 * the one the previous test cached). */
static void test_bad_row_others_complete(void **state) {
    (void)state;
    char csv[PATH_MAX], out[PATH_MAX], args[8192];
    snprintf(csv, sizeof csv, "%s/bad.csv", tmpdir);
    snprintf(out, sizeof out, "%s/results", tmpdir);
    write_csv(csv, "0,7,a horse,data/images/no-such-photo.png,,a zebra,,,,,,,Replacement\n"
                   "1,8,a cat on a floor,data/images/chelsea.png,,a fox on a floor,,,,,,,Replacement\n");
    snprintf(args, sizeof args, "batch %s --method ddim --steps 2 -o %s --devices cpu,cpu -q", csv, out);
    run_result *r = malloc(sizeof *r);
    run(r, args);
    assert_int_equal(r->status, 1);
    assert_non_null(strstr(r->out, "1 rows done, 1 failed, 0 skipped, 0 not run, on 2 workers (0 failed)"));
    cJSON *report = read_report(out);
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(report, "rows");
    assert_int_equal(cJSON_GetArraySize(rows), 2);
    const cJSON *bad = cJSON_GetArrayItem(rows, 0), *good = cJSON_GetArrayItem(rows, 1);
    assert_string_equal(field(bad, "status"), BATCH_FAILED);
    assert_non_null(strstr(field(bad, "error"), "no-such-photo.png"));
    assert_string_equal(field(good, "status"), BATCH_DONE);
    assert_true(cJSON_IsTrue(cJSON_GetObjectItemCaseSensitive(good, "inversion_reused")));
    assert_int_not_equal(cJSON_GetObjectItemCaseSensitive(bad, "worker")->valueint,
                         cJSON_GetObjectItemCaseSensitive(good, "worker")->valueint);
    cJSON_Delete(report);
    assert_exists(out, "8 a fox on a floor.png");
    free(r);
}

static int setup(void **state) {
    (void)state;
    return testutil_make_tmpdir(tmpdir, sizeof tmpdir, "sd_shard_");
}

static int teardown(void **state) {
    (void)state;
    return testutil_remove_tree(tmpdir);
}

int main(int argc, char **argv) {
    (void)argc;
    testutil_stylediff_path(stylediff, sizeof stylediff, argv[0]);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse_devices),
        cmocka_unit_test(test_group_rows),
        cmocka_unit_test(test_assign_groups),
        cmocka_unit_test(test_merge),
        cmocka_unit_test(test_resume_records),
        cmocka_unit_test(test_options_refused),
        cmocka_unit_test(test_two_workers_then_resume),
        cmocka_unit_test(test_bad_row_others_complete),
    };
    return cmocka_run_group_tests_name("batch_shard", tests, setup, teardown);
}
