/* test_p2p_align.c: the prompt-side arrays of Prompt-to-Prompt / P2Plus (sd/p2p_align.h) against
 * the reference seq_aligner.py / ptp_utils.py run on transformers 4.25.1's CLIPTokenizer
 * (tests/fixtures/p2p_align_cases.json, from tests/oracle/gen_50_p2p_align.py): replacement and
 * refinement mappers, the Needleman-Wunsch alignment, equalizers, cross-attention time windows,
 * self-attention step ranges and LocalBlend words. Every value must match exactly. Hand-written
 * tests then pin the reference quirks on the spec's own prompts and the argument checks. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/p2p_align.h"
#include "sd/text.h"

#define TOKENIZER_DIR "models/tiny/tokenizer"
#define FIXTURE "tests/fixtures/p2p_align_cases.json"
#define T SD_P2P_TOKENS

static sd_tokenizer *g_tok;
static cJSON *g_fixture;

static int setup_all(void **state) {
    (void)state;
    if (sd_tokenizer_load(TOKENIZER_DIR, &g_tok) != SD_OK) {
        fprintf(stderr, "cannot load %s: %s\n", TOKENIZER_DIR, sd_last_error());
        return -1;
    }
    g_fixture = testutil_json_file(FIXTURE);
    if (!g_fixture) return -1;
    return 0;
}

static int teardown_all(void **state) {
    (void)state;
    sd_tokenizer_free(g_tok);
    cJSON_Delete(g_fixture);
    return 0;
}

/* ---- fixture helpers ---------------------------------------------------------------------------- */

static const cJSON *fixture_array(const char *key) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(g_fixture, key);
    if (!cJSON_IsArray(a) || cJSON_GetArraySize(a) == 0) fail_msg("%s: no array \"%s\"", FIXTURE, key);
    return a;
}

static const cJSON *item(const cJSON *obj, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(obj, key);
    if (!v) fail_msg("%s: entry without \"%s\"", FIXTURE, key);
    return v;
}

static const char *entry_name(const cJSON *e) {
    const cJSON *n = cJSON_GetObjectItemCaseSensitive(e, "name");
    return cJSON_IsString(n) ? n->valuestring : "(unnamed)";
}

/* The entry's "prompts" as borrowed strings; returns the count. */
static int entry_prompts(const cJSON *e, const char *prompts[SD_P2P_MAX_PROMPTS]) {
    const cJSON *arr = item(e, "prompts");
    int n = cJSON_GetArraySize(arr);
    if (n > SD_P2P_MAX_PROMPTS) fail_msg("%s: %d prompts", entry_name(e), n);
    for (int k = 0; k < n; k++) prompts[k] = cJSON_GetArrayItem(arr, k)->valuestring;
    return n;
}

static void int_array(const cJSON *arr, int *out, int n, const char *what) {
    if (cJSON_GetArraySize(arr) != n) fail_msg("%s: %d entries, expected %d", what, cJSON_GetArraySize(arr), n);
    for (int k = 0; k < n; k++) out[k] = cJSON_GetArrayItem(arr, k)->valueint;
}

/* A '0'/'1' string of the fixture as floats. */
static void bits_to_floats(const char *bits, float *out, int n, const char *what) {
    if ((int)strlen(bits) != n) fail_msg("%s: bit string of %zu, expected %d", what, strlen(bits), n);
    for (int k = 0; k < n; k++) out[k] = bits[k] == '1' ? 1.0f : 0.0f;
}

/* When the fixture entry records a reference error: the call must fail with SD_ERR_ARG and a
 * message containing each of "mentions". Returns 1 when the entry was an error case. */
static int expect_error_if_any(const cJSON *e, sd_status st) {
    const cJSON *err = cJSON_GetObjectItemCaseSensitive(e, "error");
    if (!err) {
        if (st != SD_OK) fail_msg("%s: %s: %s", entry_name(e), sd_status_name(st), sd_last_error());
        return 0;
    }
    if (st != SD_ERR_ARG)
        fail_msg("%s: the reference %s, but got %s (%s)", entry_name(e),
                 strcmp(err->valuestring, "silent no-op") ? "raises" : "changes nothing (refused here)",
                 sd_status_name(st), sd_last_error());
    const cJSON *m;
    cJSON_ArrayForEach(m, item(e, "mentions")) {
        if (!testutil_contains(sd_last_error(), m->valuestring))
            fail_msg("%s: message \"%s\" does not mention \"%s\"", entry_name(e), sd_last_error(), m->valuestring);
    }
    return 1;
}

static void assert_floats_equal(const float *got, const float *want, int n, const char *what, const char *name) {
    for (int k = 0; k < n; k++)
        if (got[k] != want[k]) fail_msg("%s %s: [%d] = %.9g, reference %.9g", name, what, k, got[k], want[k]);
}

/* ---- fixture cases ------------------------------------------------------------------------------- */

/* The reference mapper of a fixture entry: per row an int (a single 1) or [[n, v], ...]. */
static void expected_mapper(const cJSON *rows, float want[T][T], const char *name) {
    if (cJSON_GetArraySize(rows) != T) fail_msg("%s: mapper with %d rows", name, cJSON_GetArraySize(rows));
    memset(want, 0, sizeof(float) * T * T);
    for (int w = 0; w < T; w++) {
        const cJSON *r = cJSON_GetArrayItem(rows, w);
        if (cJSON_IsNumber(r)) {
            want[w][r->valueint] = 1.0f;
        } else {
            const cJSON *pair;
            cJSON_ArrayForEach(pair, r) {
                want[w][cJSON_GetArrayItem(pair, 0)->valueint] = (float)cJSON_GetArrayItem(pair, 1)->valuedouble;
            }
        }
    }
}

static void test_replacement_cases(void **state) {
    (void)state;
    static float got[SD_P2P_MAX_TARGETS][T][T], single[T][T], want[T][T];
    const cJSON *e;
    int cases = 0, errors = 0;
    cJSON_ArrayForEach(e, fixture_array("replacement")) {
        const char *prompts[SD_P2P_MAX_PROMPTS];
        int n = entry_prompts(e, prompts);
        sd_status st = sd_p2p_replacement_mappers(g_tok, prompts, n, got);
        cases++;
        if (expect_error_if_any(e, st)) {
            errors++;
            continue;
        }
        const cJSON *mappers = item(e, "mappers");
        for (int t = 0; t < n - 1; t++) {
            char what[64];
            snprintf(what, sizeof what, "mapper of target %d", t + 1);
            expected_mapper(cJSON_GetArrayItem(mappers, t), want, entry_name(e));
            assert_floats_equal(&got[t][0][0], &want[0][0], T * T, what, entry_name(e));
            /* The one-target function gives the same matrix. */
            assert_sd_ok(sd_p2p_replacement_mapper(g_tok, prompts[0], prompts[t + 1], single));
            assert_floats_equal(&single[0][0], &want[0][0], T * T, what, entry_name(e));
        }
    }
    print_message("replacement: %d cases (%d errors) match the reference\n", cases, errors);
}

static void test_refinement_cases(void **state) {
    (void)state;
    int got_mapper[SD_P2P_MAX_TARGETS][T], want_mapper[T];
    float got_alphas[SD_P2P_MAX_TARGETS][T], want_alphas[T];
    const cJSON *e;
    int cases = 0, errors = 0;
    cJSON_ArrayForEach(e, fixture_array("refinement")) {
        const char *prompts[SD_P2P_MAX_PROMPTS];
        int n = entry_prompts(e, prompts);
        sd_status st = sd_p2p_refinement_mappers(g_tok, prompts, n, got_mapper, got_alphas);
        cases++;
        if (expect_error_if_any(e, st)) {
            errors++;
            continue;
        }
        /* The ids the alignment ran on: tokenizer.encode (BOS, tokens, EOS). */
        const cJSON *ids = item(e, "ids");
        for (int p = 0; p < n; p++) {
            const cJSON *want_ids = cJSON_GetArrayItem(ids, p);
            int n_ids = cJSON_GetArraySize(want_ids), n_tokens = 0;
            int *tokens = malloc((size_t)n_ids * sizeof *tokens);
            assert_sd_ok(sd_tokenize(g_tok, prompts[p], tokens, n_ids, &n_tokens));
            assert_int_equal(n_tokens + 2, n_ids);
            assert_int_equal(cJSON_GetArrayItem(want_ids, 0)->valueint, sd_tokenizer_bos(g_tok));
            assert_int_equal(cJSON_GetArrayItem(want_ids, n_ids - 1)->valueint, sd_tokenizer_eos(g_tok));
            for (int k = 0; k < n_tokens; k++)
                assert_int_equal(tokens[k], cJSON_GetArrayItem(want_ids, k + 1)->valueint);
            free(tokens);
        }
        for (int t = 0; t < n - 1; t++) {
            int_array(cJSON_GetArrayItem(item(e, "mappers"), t), want_mapper, T, entry_name(e));
            bits_to_floats(cJSON_GetArrayItem(item(e, "alphas"), t)->valuestring, want_alphas, T, entry_name(e));
            for (int k = 0; k < T; k++)
                if (got_mapper[t][k] != want_mapper[k])
                    fail_msg("%s target %d: mapper[%d] = %d, reference %d", entry_name(e), t + 1, k, got_mapper[t][k],
                             want_mapper[k]);
            assert_floats_equal(got_alphas[t], want_alphas, T, "alphas", entry_name(e));
        }
    }
    print_message("refinement: %d cases (%d errors) match the reference\n", cases, errors);
}

static void test_align_cases(void **state) {
    (void)state;
    const cJSON *e;
    int cases = 0;
    cJSON_ArrayForEach(e, fixture_array("align")) {
        int x[64], y[64], want[64], got[64];
        int nx = cJSON_GetArraySize(item(e, "x")), ny = cJSON_GetArraySize(item(e, "y"));
        assert_true(nx <= 64 && ny <= 64);
        int_array(item(e, "x"), x, nx, "x");
        int_array(item(e, "y"), y, ny, "y");
        int_array(item(e, "y_to_x"), want, ny, "y_to_x");
        for (int k = 0; k < 64; k++) got[k] = -7; /* sentinel: every y position must be written */
        assert_sd_ok(sd_p2p_align_tokens(x, nx, y, ny, got));
        for (int k = 0; k < ny; k++)
            if (got[k] != want[k]) fail_msg("align case %d: y_to_x[%d] = %d, reference %d", cases, k, got[k], want[k]);
        cases++;
    }
    print_message("alignment: %d random sequences match the reference\n", cases);
}

static void test_equalizer_cases(void **state) {
    (void)state;
    const cJSON *e;
    int cases = 0, errors = 0;
    cJSON_ArrayForEach(e, fixture_array("equalizer")) {
        const char *words[16];
        double values[16];
        int n = cJSON_GetArraySize(item(e, "words"));
        assert_true(n <= 16 && n == cJSON_GetArraySize(item(e, "values")));
        for (int k = 0; k < n; k++) {
            words[k] = cJSON_GetArrayItem(item(e, "words"), k)->valuestring;
            values[k] = cJSON_GetArrayItem(item(e, "values"), k)->valuedouble;
        }
        float got[T], want[T];
        sd_status st = sd_p2p_equalizer(g_tok, item(e, "prompt")->valuestring, words, values, n, got);
        cases++;
        if (expect_error_if_any(e, st)) {
            errors++;
            continue;
        }
        const cJSON *eq = item(e, "equalizer");
        assert_int_equal(cJSON_GetArraySize(eq), T);
        for (int k = 0; k < T; k++) want[k] = (float)cJSON_GetArrayItem(eq, k)->valuedouble;
        assert_floats_equal(got, want, T, "equalizer", entry_name(e));
    }
    print_message("equalizer: %d cases (%d errors) match the reference\n", cases, errors);
}

static void test_cross_alpha_cases(void **state) {
    (void)state;
    const cJSON *e;
    int cases = 0, errors = 0;
    cJSON_ArrayForEach(e, fixture_array("cross_alpha")) {
        const char *prompts[SD_P2P_MAX_PROMPTS];
        int n = entry_prompts(e, prompts);
        int num_steps = item(e, "num_steps")->valueint;
        sd_p2p_word_window words[16];
        int n_words = cJSON_GetArraySize(item(e, "words"));
        assert_true(n_words <= 16);
        for (int k = 0; k < n_words; k++) {
            const cJSON *w = cJSON_GetArrayItem(item(e, "words"), k);
            words[k].word = cJSON_GetArrayItem(w, 0)->valuestring;
            words[k].window.start = cJSON_GetArrayItem(w, 1)->valuedouble;
            words[k].window.end = cJSON_GetArrayItem(w, 2)->valuedouble;
        }
        sd_p2p_cross_steps steps = {
            .default_window = {cJSON_GetArrayItem(item(e, "default"), 0)->valuedouble,
                               cJSON_GetArrayItem(item(e, "default"), 1)->valuedouble},
            .word_windows = words,
            .n_word_windows = n_words,
        };
        size_t count = sd_p2p_cross_alpha_count(num_steps, n);
        assert_int_equal(count, (size_t)(num_steps + 1) * (size_t)(n - 1) * T);
        float *alpha = malloc(count * sizeof *alpha);
        sd_status st = sd_p2p_cross_alpha(g_tok, prompts, n, num_steps, &steps, alpha);
        cases++;
        if (expect_error_if_any(e, st)) {
            errors++;
            free(alpha);
            continue;
        }
        const cJSON *rows = item(e, "alpha");
        assert_int_equal(cJSON_GetArraySize(rows), num_steps + 1);
        for (int r = 0; r <= num_steps; r++) {
            for (int t = 0; t < n - 1; t++) {
                float want[T];
                char what[64];
                snprintf(what, sizeof what, "alpha step %d target %d", r, t + 1);
                bits_to_floats(cJSON_GetArrayItem(cJSON_GetArrayItem(rows, r), t)->valuestring, want, T, what);
                assert_floats_equal(alpha + ((size_t)r * (size_t)(n - 1) + (size_t)t) * T, want, T, what,
                                    entry_name(e));
            }
        }
        free(alpha);
    }
    print_message("cross alpha: %d cases (%d errors) match the reference\n", cases, errors);
}

static void test_replace_steps_cases(void **state) {
    (void)state;
    const cJSON *e;
    int cases = 0;
    cJSON_ArrayForEach(e, fixture_array("replace_steps")) {
        sd_p2p_window w = {cJSON_GetArrayItem(item(e, "window"), 0)->valuedouble,
                           cJSON_GetArrayItem(item(e, "window"), 1)->valuedouble};
        int num_steps = item(e, "num_steps")->valueint;
        sd_p2p_steps got;
        assert_sd_ok(sd_p2p_replace_steps(num_steps, w, &got));
        int want_begin = cJSON_GetArrayItem(item(e, "steps"), 0)->valueint;
        int want_end = cJSON_GetArrayItem(item(e, "steps"), 1)->valueint;
        if (got.begin != want_begin || got.end != want_end)
            fail_msg("N = %d, window (%g, %g): steps [%d, %d), reference [%d, %d)", num_steps, w.start, w.end,
                     got.begin, got.end, want_begin, want_end);
        cases++;
    }
    print_message("replace steps: %d cases match the reference\n", cases);
}

static void test_blend_cases(void **state) {
    (void)state;
    const cJSON *e;
    int cases = 0, errors = 0;
    cJSON_ArrayForEach(e, fixture_array("blend")) {
        const char *prompts[SD_P2P_MAX_PROMPTS];
        int n = entry_prompts(e, prompts);
        const char *words[SD_P2P_MAX_PROMPTS][8];
        sd_p2p_word_list lists[SD_P2P_MAX_PROMPTS];
        int n_lists = cJSON_GetArraySize(item(e, "words"));
        assert_true(n_lists <= n);
        for (int p = 0; p < n_lists; p++) {
            const cJSON *l = cJSON_GetArrayItem(item(e, "words"), p);
            lists[p].n_words = cJSON_GetArraySize(l);
            assert_true(lists[p].n_words <= 8);
            for (int k = 0; k < lists[p].n_words; k++) words[p][k] = cJSON_GetArrayItem(l, k)->valuestring;
            lists[p].words = words[p];
        }
        float got[SD_P2P_MAX_PROMPTS][T], want[T];
        sd_status st = sd_p2p_blend_alpha_layers(g_tok, prompts, n, lists, n_lists, got);
        cases++;
        if (expect_error_if_any(e, st)) {
            errors++;
            continue;
        }
        for (int p = 0; p < n; p++) {
            bits_to_floats(cJSON_GetArrayItem(item(e, "alpha_layers"), p)->valuestring, want, T, entry_name(e));
            assert_floats_equal(got[p], want, T, "alpha_layers", entry_name(e));
        }
    }
    print_message("LocalBlend words: %d cases (%d errors) match the reference\n", cases, errors);
}

/* ---- the quirks, on the spec's prompts ----------------------------------------------------------- */

/* Nonzero columns of one mapper row, for readable assertions. */
static int row_nonzeros(const float row[T], int cols[T], float vals[T]) {
    int n = 0;
    for (int k = 0; k < T; k++)
        if (row[k] != 0.0f) cols[n] = k, vals[n] = row[k], n++;
    return n;
}

static void test_replacement_quirks(void **state) {
    (void)state;
    static float m[T][T];
    int cols[T];
    float vals[T];

    /* cat -> tiger: one token each, so the mapper is the identity. */
    assert_sd_ok(
        sd_p2p_replacement_mapper(g_tok, "a cat sitting next to a mirror", "a tiger sitting next to a mirror", m));
    for (int w = 0; w < T; w++) {
        assert_int_equal(row_nonzeros(m[w], cols, vals), 1);
        assert_int_equal(cols[0], w);
        assert_true(vals[0] == 1.0f);
    }

    /* cat (token 2) -> pangolin (tokens 2, 3): source token 2 spreads 1/2 over both; then the
     * reference continues with M[j][j] although i = 3, j = 4, so source "sitting" (3) maps
     * nowhere and target "sitting" (4) reads source "next" (4). */
    assert_sd_ok(sd_p2p_replacement_mapper(g_tok, "a cat sitting next to a mirror",
                                           "a pangolin sitting next to a mirror", m));
    assert_int_equal(row_nonzeros(m[2], cols, vals), 2);
    assert_int_equal(cols[0], 2);
    assert_int_equal(cols[1], 3);
    assert_true(vals[0] == 0.5f && vals[1] == 0.5f);
    assert_int_equal(row_nonzeros(m[3], cols, vals), 0);
    for (int w = 4; w < T; w++) {
        assert_int_equal(row_nonzeros(m[w], cols, vals), 1);
        assert_int_equal(cols[0], w);
    }

    /* tent -> hippopotamus (3 tokens): 1/3 as float64 rounded to float32. */
    assert_sd_ok(sd_p2p_replacement_mapper(g_tok, "a tent in forest", "a hippopotamus in forest", m));
    assert_true(m[2][2] == (float)(1.0 / 3.0) && m[2][3] == m[2][2] && m[2][4] == m[2][2]);
    assert_true(m[5][5] == 1.0f && m[3][5] == 0.0f && m[3][3] == 0.0f && m[4][4] == 0.0f);

    /* pangolin (2 tokens) -> cat (1): both source tokens give the one target token weight 1, then
     * M[j][j] again: j = 3 while i = 4. */
    assert_sd_ok(sd_p2p_replacement_mapper(g_tok, "a pangolin sitting next to a mirror",
                                           "a cat sitting next to a mirror", m));
    assert_true(m[2][2] == 1.0f && m[3][2] == 1.0f);
    assert_true(m[3][3] == 1.0f && m[4][3] == 0.0f);

    /* Word counts differ: SD_ERR_ARG quoting both prompts and counts (ValueError in the reference). */
    assert_sd_fails(sd_p2p_replacement_mapper(g_tok, "a cat sitting next to a mirror",
                                              "a big tiger sitting next to a mirror", m),
                    SD_ERR_ARG, "\"a cat sitting next to a mirror\" has 7 words");
    assert_true(testutil_contains(sd_last_error(), "\"a big tiger sitting next to a mirror\" has 8 words"));
}

static void test_refinement_quirks(void **state) {
    (void)state;
    int mapper[T];
    float alphas[T];
    /* "a dog" -> "a sitting dog" (CSV row 3): BOS a [new] dog EOS, then the identity. */
    assert_sd_ok(sd_p2p_refinement_mapper(g_tok, "a dog", "a sitting dog", mapper, alphas));
    const int want_head[5] = {0, 1, -1, 2, 3};
    for (int k = 0; k < 5; k++) assert_int_equal(mapper[k], want_head[k]);
    for (int k = 5; k < T; k++) assert_int_equal(mapper[k], k);
    for (int k = 0; k < T; k++) assert_true(alphas[k] == (k == 2 ? 0.0f : 1.0f));

    /* A substituted word is never aligned diagonally with gap 0: tiger is new (-1) and the source
     * cat is skipped. */
    assert_sd_ok(sd_p2p_refinement_mapper(g_tok, "a cat", "a tiger", mapper, alphas));
    assert_int_equal(mapper[2], -1);
    assert_int_equal(mapper[3], 3);
    assert_true(alphas[2] == 0.0f);

    /* Ties prefer "left" (a new y token) over the diagonal: for x = [5], y = [5, 5] the cell
     * (1, 2) scores 1 both from the left and diagonally, so the traceback makes the last 5 new
     * and aligns the first. */
    int x1[] = {5}, y1[] = {5, 5}, y_to_x[2];
    assert_sd_ok(sd_p2p_align_tokens(x1, 1, y1, 2, y_to_x));
    assert_int_equal(y_to_x[0], 0);
    assert_int_equal(y_to_x[1], -1);
    /* Empty sequences are fine. */
    assert_sd_ok(sd_p2p_align_tokens(NULL, 0, y1, 2, y_to_x));
    assert_int_equal(y_to_x[0], -1);
    assert_int_equal(y_to_x[1], -1);
    assert_sd_ok(sd_p2p_align_tokens(x1, 1, NULL, 0, NULL));
}

static void test_window_quirks(void **state) {
    (void)state;
    sd_p2p_steps s;
    /* N = 30, tau_s 0.8 -> [0, 24); tau_u 0.5 -> [0, 15); N = 50, 0.6 -> [0, 30). */
    assert_sd_ok(sd_p2p_replace_steps(30, sd_p2p_window_until(0.8), &s));
    assert_int_equal(s.begin, 0);
    assert_int_equal(s.end, 24);
    assert_true(sd_p2p_steps_contain(s, 23) && !sd_p2p_steps_contain(s, 24));
    assert_sd_ok(sd_p2p_replace_steps(30, sd_p2p_window_until(0.5), &s));
    assert_int_equal(s.end, 15);
    assert_sd_ok(sd_p2p_replace_steps(50, sd_p2p_window_until(0.6), &s));
    assert_int_equal(s.end, 30);
    /* tau 0: never. */
    assert_sd_ok(sd_p2p_replace_steps(30, sd_p2p_window_until(0.0), &s));
    assert_false(sd_p2p_steps_contain(s, 0));

    /* Cross alpha over N + 1 rows: N = 30, tau_c 0.6 -> int(18.6) = 18 rows; N = 50, 0.8 ->
     * int(40.8) = 40. */
    const char *prompts[2] = {"a cat sitting next to a mirror", "a tiger sitting next to a mirror"};
    sd_p2p_cross_steps steps = {sd_p2p_window_until(0.6), NULL, 0};
    float *alpha = malloc(sd_p2p_cross_alpha_count(50, 2) * sizeof *alpha);
    assert_sd_ok(sd_p2p_cross_alpha(g_tok, prompts, 2, 30, &steps, alpha));
    for (int r = 0; r <= 30; r++)
        for (int k = 0; k < T; k++) assert_true(alpha[(size_t)r * T + (size_t)k] == (r < 18 ? 1.0f : 0.0f));
    steps.default_window = sd_p2p_window_until(0.8);
    assert_sd_ok(sd_p2p_cross_alpha(g_tok, prompts, 2, 50, &steps, alpha));
    assert_true(alpha[39 * T] == 1.0f && alpha[40 * T] == 0.0f);

    /* A negative start counts from the end, as a Python slice: int(-0.1 * 31) = -3 -> rows 28..30. */
    steps.default_window = (sd_p2p_window){-0.1, 1.0};
    assert_sd_ok(sd_p2p_cross_alpha(g_tok, prompts, 2, 30, &steps, alpha));
    for (int r = 0; r <= 30; r++) assert_true(alpha[(size_t)r * T + 5] == (r >= 28 ? 1.0f : 0.0f));

    /* Per-word window: only the target tokens of "tiger" (position 2) follow it. */
    sd_p2p_word_window tiger = {"tiger", sd_p2p_window_until(0.2)};
    steps = (sd_p2p_cross_steps){sd_p2p_window_until(0.8), &tiger, 1};
    assert_sd_ok(sd_p2p_cross_alpha(g_tok, prompts, 2, 30, &steps, alpha));
    assert_true(alpha[6 * T + 2] == 0.0f && alpha[5 * T + 2] == 1.0f);
    assert_true(alpha[6 * T + 1] == 1.0f && alpha[23 * T + 3] == 1.0f && alpha[24 * T + 3] == 0.0f);
    free(alpha);
}

static void test_equalizer_and_blend_words(void **state) {
    (void)state;
    float eq[T];
    /* NTI cell 3: watercolor x5 in the target. */
    const char *water[] = {"watercolor"};
    const double five[] = {5};
    const char *watercolor = "watercolor painting of a cat sitting next to a mirror";
    assert_sd_ok(sd_p2p_equalizer(g_tok, watercolor, water, five, 1, eq));
    for (int k = 0; k < T; k++) assert_true(eq[k] == (k == 1 ? 5.0f : 1.0f));
    /* An absent word is refused, naming the word and the prompt (the reference silently ignores it). */
    const char *cat[] = {"cat"};
    assert_sd_fails(sd_p2p_equalizer(g_tok, "a tiger sitting next to a mirror", cat, five, 1, eq), SD_ERR_ARG,
                    "\"cat\"");
    assert_true(testutil_contains(sd_last_error(), "a tiger sitting next to a mirror"));

    /* LocalBlend: several words for one prompt, none for a third prompt. */
    const char *prompts[3] = {"a cat sitting next to a mirror", "a silver cat sculpture sitting next to a mirror",
                              "a tiger sitting next to a mirror"};
    const char *src_words[] = {"cat"}, *tgt_words[] = {"silver", "sculpture"};
    sd_p2p_word_list lists[2] = {{src_words, 1}, {tgt_words, 2}};
    float layers[3][T];
    assert_sd_ok(sd_p2p_blend_alpha_layers(g_tok, prompts, 3, lists, 2, layers));
    for (int k = 0; k < T; k++) {
        assert_true(layers[0][k] == (k == 2 ? 1.0f : 0.0f));
        assert_true(layers[1][k] == (k == 2 || k == 4 ? 1.0f : 0.0f));
        assert_true(layers[2][k] == 0.0f);
    }
}

/* ---- argument checks ----------------------------------------------------------------------------- */

static void test_bad_arguments(void **state) {
    (void)state;
    static float m[SD_P2P_MAX_PROMPTS][T][T];
    int mapper[SD_P2P_MAX_PROMPTS][T];
    float alphas[SD_P2P_MAX_PROMPTS][T], eq[T], layers[SD_P2P_MAX_PROMPTS + 1][T];
    const char *many[SD_P2P_MAX_PROMPTS + 1];
    for (int k = 0; k <= SD_P2P_MAX_PROMPTS; k++) many[k] = "a cat";
    const char *two[2] = {"a cat", "a dog"};

    assert_sd_fails(sd_p2p_replacement_mappers(g_tok, two, 1, m), SD_ERR_ARG, "1 prompts");
    assert_sd_fails(sd_p2p_replacement_mappers(g_tok, many, SD_P2P_MAX_PROMPTS + 1, m), SD_ERR_ARG, "10 prompts");
    assert_sd_ok(sd_p2p_replacement_mappers(g_tok, many, SD_P2P_MAX_PROMPTS, m));
    assert_sd_fails(sd_p2p_replacement_mappers(NULL, two, 2, m), SD_ERR_ARG, "tokenizer");
    assert_sd_fails(sd_p2p_replacement_mapper(g_tok, NULL, "a dog", m[0]), SD_ERR_ARG, "source prompt");
    assert_sd_fails(sd_p2p_refinement_mappers(g_tok, two, 2, NULL, alphas), SD_ERR_ARG, "NULL");

    /* Invalid UTF-8 is refused by name: a byte comparison of words would not be the reference's. */
    const char *bad_utf8[2] = {"a cat", "a \xff dog"};
    assert_sd_fails(sd_p2p_refinement_mappers(g_tok, bad_utf8, 2, mapper, alphas), SD_ERR_ARG, "prompts[1]");
    assert_sd_fails(sd_p2p_replacement_mapper(g_tok, "a \xed\xa0\x80 cat", "a b cat", m[0]), SD_ERR_ARG,
                    "not valid UTF-8");

    /* A failing target is named by its index. */
    const char *three[3] = {"a cat", "a dog", "a big dog"};
    assert_sd_fails(sd_p2p_replacement_mappers(g_tok, three, 3, m), SD_ERR_ARG, "prompts[2]");

    const char *words[1] = {"dog"};
    const double nan_value[1] = {NAN}, two_x[1] = {2};
    assert_sd_fails(sd_p2p_equalizer(g_tok, "a dog", words, nan_value, 1, eq), SD_ERR_ARG, "not a finite float32");
    const double huge_value[1] = {1e300};
    assert_sd_fails(sd_p2p_equalizer(g_tok, "a dog", words, huge_value, 1, eq), SD_ERR_ARG, "not a finite float32");
    assert_sd_fails(sd_p2p_equalizer(g_tok, "a dog", words, two_x, 0, eq), SD_ERR_ARG, "at least one word");
    const char *null_word[1] = {NULL};
    assert_sd_fails(sd_p2p_equalizer(g_tok, "a dog", null_word, two_x, 1, eq), SD_ERR_ARG, "word is NULL");
    /* A word present but without tokens ("" between two spaces gets none here). */
    const char *empty_word[1] = {""};
    assert_sd_fails(sd_p2p_equalizer(g_tok, "a dog ", empty_word, two_x, 1, eq), SD_ERR_ARG, "no tokens");

    sd_p2p_word_list lists[SD_P2P_MAX_PROMPTS + 1] = {{words, 1}};
    assert_sd_fails(sd_p2p_blend_alpha_layers(g_tok, two, 2, lists, 3, layers), SD_ERR_ARG, "3 word lists");
    assert_sd_fails(sd_p2p_blend_alpha_layers(g_tok, two, 2, lists, 1, layers), SD_ERR_ARG, "\"dog\"");
    assert_sd_ok(sd_p2p_blend_alpha_layers(g_tok, two, 2, lists, 0, layers));

    sd_p2p_steps s;
    assert_sd_fails(sd_p2p_replace_steps(0, sd_p2p_window_until(0.5), &s), SD_ERR_ARG, "num_steps 0");
    assert_sd_fails(sd_p2p_replace_steps(30, sd_p2p_window_until(NAN), &s), SD_ERR_ARG, "window end");
    assert_sd_fails(sd_p2p_replace_steps(30, (sd_p2p_window){0, 1e12}, &s), SD_ERR_ARG, "window end");

    float alpha[2 * T * 31];
    sd_p2p_cross_steps steps = {sd_p2p_window_until(INFINITY), NULL, 0};
    assert_sd_fails(sd_p2p_cross_alpha(g_tok, two, 2, 30, &steps, alpha), SD_ERR_ARG, "not finite");
    steps.default_window = sd_p2p_window_until(0.5);
    assert_sd_fails(sd_p2p_cross_alpha(g_tok, two, 2, 0, &steps, alpha), SD_ERR_ARG, "num_steps 0");
    /* Huge bounds clamp like Python slices instead of overflowing. */
    steps.default_window = (sd_p2p_window){-1e300, 1e300};
    assert_sd_ok(sd_p2p_cross_alpha(g_tok, two, 2, 30, &steps, alpha));
    for (int k = 0; k < 31 * T; k++) assert_true(alpha[k] == 1.0f);
    sd_p2p_word_window typo = {"dgo", sd_p2p_window_until(0.2)};
    steps = (sd_p2p_cross_steps){sd_p2p_window_until(0.6), &typo, 1};
    assert_sd_fails(sd_p2p_cross_alpha(g_tok, two, 2, 30, &steps, alpha), SD_ERR_ARG, "\"dgo\"");
    /* A word that only the source has selects nothing either. */
    typo.word = "cat";
    assert_sd_fails(sd_p2p_cross_alpha(g_tok, two, 2, 30, &steps, alpha), SD_ERR_ARG, "no token of any target");

    assert_int_equal(sd_p2p_cross_alpha_count(30, 1), 0);
    assert_int_equal(sd_p2p_cross_alpha_count(30, 3), 31 * 2 * T);
    int x[1] = {1};
    assert_sd_fails(sd_p2p_align_tokens(x, -1, x, 1, mapper[0]), SD_ERR_ARG, "negative length");
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_replacement_cases),
        cmocka_unit_test(test_refinement_cases),
        cmocka_unit_test(test_align_cases),
        cmocka_unit_test(test_equalizer_cases),
        cmocka_unit_test(test_cross_alpha_cases),
        cmocka_unit_test(test_replace_steps_cases),
        cmocka_unit_test(test_blend_cases),
        cmocka_unit_test(test_replacement_quirks),
        cmocka_unit_test(test_refinement_quirks),
        cmocka_unit_test(test_window_quirks),
        cmocka_unit_test(test_equalizer_and_blend_words),
        cmocka_unit_test(test_bad_arguments),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
