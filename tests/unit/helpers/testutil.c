/* testutil.c: see testutil.h. */
#include "testutil.h"

#include <libgen.h>
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>

#include <cjson/cJSON.h>

#include "sd/device.h"
#include "sd/io.h"

int testutil_contains(const char *haystack, const char *needle) {
    return haystack && needle && strstr(haystack, needle) != NULL;
}

double testutil_max_rel_err(const float *a, const float *b, int64_t n) {
    double max_diff = 0.0, max_ref = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= max_diff)) max_diff = d; /* NaN propagates as a failure */
        double r = fabs((double)b[i]);
        if (r > max_ref) max_ref = r;
    }
    return max_diff / (max_ref > 1e-30 ? max_ref : 1e-30);
}

double testutil_max_abs_err(const float *a, const float *b, int64_t n) {
    double m = 0.0;
    for (int64_t i = 0; i < n; i++) {
        double d = fabs((double)a[i] - (double)b[i]);
        if (!(d <= m)) m = d;
    }
    return m;
}

void testutil_assert_close(const sd_tensor *got, const sd_tensor *want, double tol, const char *what) {
    char a[128], b[128];
    if (!got || !want) fail_msg("%s: missing tensor", what);
    if (!sd_same_shape(got, want))
        fail_msg("%s: shape %s vs expected %s", what, sd_shape_str(got->ndim, got->shape, a, sizeof a),
                 sd_shape_str(want->ndim, want->shape, b, sizeof b));
    double err = testutil_max_rel_err(sd_f32(got), sd_f32(want), sd_numel(got));
    print_message("    %-40s max rel err %.3g (tol %.3g)\n", what, err, tol);
    if (!(err <= tol)) fail_msg("%s: max relative error %.6g exceeds %.3g", what, err, tol);
}

static uint64_t next_u64(uint64_t *s) {
    uint64_t x = *s;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    *s = x;
    return x;
}

static double next_unit(uint64_t *s) { return (double)(next_u64(s) >> 11) * (1.0 / 9007199254740992.0); }

void testutil_fill_uniform(float *x, int64_t n, uint64_t seed, float lo, float hi) {
    uint64_t s = seed * 2654435761ull + 88172645463325252ull;
    for (int64_t i = 0; i < n; i++) x[i] = lo + (hi - lo) * (float)next_unit(&s);
}

void testutil_fill_normal(float *x, int64_t n, uint64_t seed, float std) {
    uint64_t s = seed * 2654435761ull + 88172645463325252ull;
    for (int64_t i = 0; i < n; i++) {
        double u1 = next_unit(&s), u2 = next_unit(&s);
        if (u1 < 1e-300) u1 = 1e-300;
        x[i] = (float)(std * sqrt(-2.0 * log(u1)) * cos(6.283185307179586 * u2));
    }
}

sd_tensor *testutil_fixture(const char *file, const char *name) {
    char path[256];
    snprintf(path, sizeof path, "tests/fixtures/%s.safetensors", file);
    sd_safetensors st;
    if (sd_safetensors_open(path, &st)) fail_msg("%s", sd_last_error());
    const sd_st_entry *e = sd_safetensors_find(&st, name);
    if (!e) {
        sd_safetensors_close(&st);
        fail_msg("%s: no tensor '%s'", path, name);
    }
    sd_tensor *t = NULL;
    sd_status s = e->dtype == SD_I64 ? sd_safetensors_load_raw(&st, e, &t) : sd_safetensors_load_f32(&st, e, &t);
    sd_safetensors_close(&st);
    if (s) fail_msg("%s", sd_last_error());
    return t;
}

int testutil_make_tmpdir(char *buf, size_t n, const char *prefix) {
    snprintf(buf, n, "/tmp/%sXXXXXX", prefix);
    return mkdtemp(buf) ? 0 : -1;
}

int testutil_remove_tree(const char *dir) {
    char cmd[4200];
    snprintf(cmd, sizeof cmd, "rm -rf '%s'", dir);
    return system(cmd) == 0 ? 0 : -1;
}

static int record_wants(sd_attn_hook *h, const sd_attn_site *s) {
    (void)h;
    return (s->is_cross && s->q_len == 256) || (!s->is_cross && s->q_len == 64);
}

static sd_tensor *record_probs(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *p) {
    testutil_recording_hook *r = (testutil_recording_hook *)h;
    if (s->layer >= 0 && s->layer < TESTUTIL_MAX_CALLS) r->maps[s->layer] = sd_keep(c, p);
    return p;
}

/* The value-input callback is asked once for every attention site of a call (a cross-attention's
 * at the start of the UNet call, a self-attention's as it runs: attn.h): the place to log the
 * sites, by layer. */
static sd_tensor *record_site(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *context) {
    (void)c;
    (void)context;
    testutil_recording_hook *r = (testutil_recording_hook *)h;
    if (s->layer >= 0 && s->layer < TESTUTIL_MAX_CALLS) r->sites[s->layer] = *s;
    r->n_calls++;
    return NULL; /* keep the context */
}

void testutil_recording_hook_init(testutil_recording_hook *h) {
    memset(h, 0, sizeof *h);
    h->base.value_input = record_site;
    h->base.wants_probs = record_wants;
    h->base.edit_probs = record_probs;
}

struct cJSON *testutil_json_file(const char *path) {
    char *text;
    size_t len;
    if (sd_read_file(path, &text, &len) != SD_OK) {
        fprintf(stderr, "cannot read %s: %s\n", path, sd_last_error());
        return NULL;
    }
    cJSON *doc = cJSON_ParseWithLength(text, len);
    free(text);
    if (!doc) fprintf(stderr, "%s: malformed JSON\n", path);
    return doc;
}

int testutil_have_gpu(void) {
    /* a CUDA build asks the backend (which says why there is none); the simulator build
     * (SD_CUDA_SIM) reports its simulated device */
    const int n = sd_cuda_device_count();
    sd_clear_error();
    return n > 0;
}

int testutil_gpu_is_simulated(void) {
#ifdef SD_CUDA_SIM
    return 1;
#else
    return 0;
#endif
}

int testutil_reverse_schedule(void) {
    const char *s = getenv("CUDASIM_SCHEDULE");
    return testutil_gpu_is_simulated() && s && strcmp(s, "reverse") == 0;
}

int testutil_sim_leaves_out(const char *what, double flop) {
    const char *small = getenv("SD_TEST_SMALL");
    const int small_only = small && *small && strcmp(small, "0") != 0;
    const double limit = testutil_reverse_schedule() ? TESTUTIL_REVERSE_MAX_FLOP : TESTUTIL_SIM_MAX_FLOP;
    if ((!testutil_gpu_is_simulated() && !small_only) || (flop >= 0 && flop <= limit)) return 0;
    if (small_only && !testutil_gpu_is_simulated())
        print_message("    %-52s left out (SD_TEST_SMALL=1)\n", what);
    else if (testutil_reverse_schedule() && flop >= 0 && flop <= TESTUTIL_SIM_MAX_FLOP)
        print_message("    %-52s left out of the reverse-schedule run (the forward-schedule run has it)\n", what);
    else
        print_message("    %-52s left out under cudasim (too slow on the host: real GPU only)\n", what);
    return 1;
}

void testutil_skip_in_reverse_run(void) {
    if (!testutil_reverse_schedule()) return;
    print_message("    skipped in the reverse-schedule run: its kernels' reverse-order checks are the op tests'; "
                  "the forward-schedule run has it\n");
    skip();
}

void testutil_write_random_lpips(const char *path) {
    static const int64_t conv[5][3] = {{64, 3, 11}, {192, 64, 5}, {384, 192, 3}, {256, 384, 3}, {256, 256, 3}};
    static const int index[5] = {0, 3, 6, 8, 10};
    sd_tensor *t[15];
    char names[15][40];
    const char *name_ptrs[15];
    for (int k = 0; k < 5; k++) {
        t[3 * k] = sd_tensor_new4(SD_F32, 4, conv[k][0], conv[k][1], conv[k][2], conv[k][2]);
        t[3 * k + 1] = sd_tensor_new4(SD_F32, 1, conv[k][0], 0, 0, 0);
        t[3 * k + 2] = sd_tensor_new4(SD_F32, 4, 1, conv[k][0], 1, 1);
        testutil_fill_normal(sd_f32(t[3 * k]), sd_numel(t[3 * k]), 100 + k, 0.05f);
        testutil_fill_uniform(sd_f32(t[3 * k + 1]), sd_numel(t[3 * k + 1]), 200 + k, 0.0f, 0.01f);
        testutil_fill_uniform(sd_f32(t[3 * k + 2]), sd_numel(t[3 * k + 2]), 300 + k, 0.0f, 0.1f);
        snprintf(names[3 * k], sizeof names[0], "features.%d.weight", index[k]);
        snprintf(names[3 * k + 1], sizeof names[0], "features.%d.bias", index[k]);
        snprintf(names[3 * k + 2], sizeof names[0], "lin%d.model.1.weight", k);
    }
    for (int i = 0; i < 15; i++) name_ptrs[i] = names[i];
    assert_sd_ok(sd_safetensors_write(path, (const sd_tensor *const *)t, name_ptrs, 15, NULL, 0));
    for (int i = 0; i < 15; i++) sd_tensor_free(t[i]);
}

void testutil_stylediff_path(char *buf, size_t n, const char *argv0) {
    char self[PATH_MAX];
    snprintf(self, sizeof self, "%s", argv0);
    snprintf(buf, n, "%s/../stylediff", dirname(self));
}

void testutil_run_cli(testutil_run *r, const char *stylediff, const char *args) {
    char cmd[8192];
    snprintf(cmd, sizeof cmd, "%s %s 2>&1", stylediff, args);
    FILE *p = popen(cmd, "r");
    assert_non_null(p);
    size_t n = fread(r->out, 1, sizeof r->out - 1, p);
    r->out[n] = '\0';
    int st = pclose(p);
    r->status = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + (WIFSIGNALED(st) ? WTERMSIG(st) : 0);
}

void testutil_apply_filter(void) {
    const char *f = getenv("SD_TEST_FILTER");
    if (f && *f) {
        fprintf(stderr, "SD_TEST_FILTER=%s: running only the tests that match\n", f);
        cmocka_set_test_filter(f);
    }
}
