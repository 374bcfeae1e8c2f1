/* test_tokenizer.c: the CLIP tokenizer against transformers 4.25.1's slow CLIPTokenizer with ftfy
 * (tests/fixtures/tokenizer_cases.json, from tests/oracle/gen_30_tokenizer_fixtures.py), P2P's
 * get_word_inds, token decoding, and hostile input: invalid UTF-8, huge prompts, broken files. */
#include "testutil.h"

#include <cjson/cJSON.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "sd/text.h"

#define TOKENIZER_DIR "models/tiny/tokenizer"
#define FIXTURE "tests/fixtures/tokenizer_cases.json"

#if defined(__SANITIZE_ADDRESS__)
#define SANITIZED 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SANITIZED 1
#endif
#endif
#ifndef SANITIZED
#define SANITIZED 0
#endif

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

/* ---- helpers ----------------------------------------------------------------------------------- */

static const cJSON *fixture_array(const char *key) {
    const cJSON *a = cJSON_GetObjectItemCaseSensitive(g_fixture, key);
    if (!cJSON_IsArray(a)) fail_msg("%s: no array \"%s\"", FIXTURE, key);
    return a;
}

/* The prompt of a fixture entry as a malloc'd C string ("prompt", or raw bytes in "prompt_hex"). */
static char *entry_prompt(const cJSON *e) {
    const cJSON *p = cJSON_GetObjectItemCaseSensitive(e, "prompt");
    if (cJSON_IsString(p)) return strdup(p->valuestring);
    const cJSON *h = cJSON_GetObjectItemCaseSensitive(e, "prompt_hex");
    if (!cJSON_IsString(h)) fail_msg("fixture entry without a prompt");
    size_t n = strlen(h->valuestring) / 2;
    char *s = malloc(n + 1);
    for (size_t i = 0; i < n; i++) {
        unsigned v;
        sscanf(h->valuestring + 2 * i, "%2x", &v);
        s[i] = (char)v;
    }
    s[n] = 0;
    return s;
}

static int int_array(const cJSON *a, int *out, int cap) {
    int n = 0;
    const cJSON *x;
    cJSON_ArrayForEach(x, a) {
        if (n < cap) out[n] = x->valueint;
        n++;
    }
    return n;
}

static void describe_ids(char *buf, size_t n, const int *ids, int count) {
    size_t used = 0;
    buf[0] = 0;
    for (int i = 0; i < count && used + 16 < n; i++) used += (size_t)snprintf(buf + used, n - used, "%s%d", i ? " " : "", ids[i]);
}

static void assert_ids(const char *what, const char *label, const int *got, int n_got, const int *want, int n_want) {
    bool same = n_got == n_want;
    for (int i = 0; same && i < n_got; i++) same = got[i] == want[i];
    if (!same) {
        char a[2048], b[2048];
        describe_ids(a, sizeof a, got, n_got);
        describe_ids(b, sizeof b, want, n_want);
        fail_msg("%s \"%.80s\": got [%s], expected [%s]", what, label, a, b);
    }
}

/* Tokens, clean text and (when present) the 77 padded ids of one fixture entry. */
static void check_entry(sd_tokenizer *tok, const cJSON *e, bool check_clean) {
    char *prompt = entry_prompt(e);
    const cJSON *name = cJSON_GetObjectItemCaseSensitive(e, "name");
    const char *label = cJSON_IsString(name) ? name->valuestring : prompt;
    static int want[4096], got[4096];

    int n_want = int_array(cJSON_GetObjectItemCaseSensitive(e, "tokens"), want, 4096);
    int n_got = 0;
    assert_sd_ok(sd_tokenize(tok, prompt, got, 4096, &n_got));
    assert_ids("tokens of", label, got, n_got, want, n_want);

    const cJSON *ids77 = cJSON_GetObjectItemCaseSensitive(e, "ids77");
    if (ids77) {
        int want77[SD_CLIP_MAX_LEN], got77[SD_CLIP_MAX_LEN], n_tokens = -1;
        assert_int_equal(int_array(ids77, want77, SD_CLIP_MAX_LEN), SD_CLIP_MAX_LEN);
        sd_log_level saved = sd_log_get_level();
        sd_log_set_level(SD_LOG_ERROR); /* the 300-word case warns; test_truncation_warns checks that */
        assert_sd_ok(sd_tokenize_padded(tok, prompt, got77, &n_tokens));
        sd_log_set_level(saved);
        assert_ids("77 ids of", label, got77, SD_CLIP_MAX_LEN, want77, SD_CLIP_MAX_LEN);
        assert_int_equal(n_tokens, n_want);
    }
    if (check_clean) {
        char *clean = NULL;
        assert_sd_ok(sd_clip_clean_text(prompt, &clean));
        const char *want_clean = cJSON_GetObjectItemCaseSensitive(e, "clean")->valuestring;
        if (strcmp(clean, want_clean) != 0)
            fail_msg("clean text of \"%.80s\": got \"%s\", expected \"%s\"", label, clean, want_clean);
        free(clean);
    }
    free(prompt);
}

/* Runs `fn` with stderr captured into buf. */
static void capture_stderr(void (*fn)(void *), void *arg, char *buf, size_t n) {
    char path[] = "/tmp/sd_test_tok_stderrXXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    fflush(stderr);
    int saved = dup(2);
    dup2(fd, 2);
    fn(arg);
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    lseek(fd, 0, SEEK_SET);
    ssize_t got = read(fd, buf, n - 1);
    buf[got > 0 ? got : 0] = 0;
    close(fd);
    unlink(path);
}

static void write_text(const char *dir, const char *name, const char *text, size_t len) {
    char path[512];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(text, 1, len, f), len);
    fclose(f);
}

static void copy_file(const char *from, const char *dir, const char *name) {
    char *text;
    size_t len;
    assert_sd_ok(sd_read_file(from, &text, &len));
    write_text(dir, name, text, len);
    free(text);
}

static void make_temp_dir(char *dir) {
    strcpy(dir, "/tmp/sd_test_tokXXXXXX");
    assert_non_null(mkdtemp(dir));
}

static void remove_temp_dir(const char *dir) {
    const char *names[] = {"vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"};
    char path[512];
    for (size_t i = 0; i < sizeof names / sizeof *names; i++) {
        snprintf(path, sizeof path, "%s/%s", dir, names[i]);
        unlink(path);
    }
    rmdir(dir);
}

/* ---- tests --------------------------------------------------------------------------------------- */

static void test_well_known_ids(void **state) {
    (void)state;
    assert_int_equal(sd_tokenizer_bos(g_tok), 49406);
    assert_int_equal(sd_tokenizer_eos(g_tok), 49407);
    assert_int_equal(sd_tokenizer_pad(g_tok), 49407);
    int ids[8], n;
    assert_sd_ok(sd_tokenize(g_tok, "a cat dog photo", ids, 8, &n));
    int want[] = {320, 2368, 1929, 1125};
    assert_ids("tokens of", "a cat dog photo", ids, n, want, 4);
    /* The null text: BOS, EOS, then 75 pads (stylediffusion.md §1.4). */
    int ids77[SD_CLIP_MAX_LEN], n_tokens;
    assert_sd_ok(sd_tokenize_padded(g_tok, "", ids77, &n_tokens));
    assert_int_equal(n_tokens, 0);
    assert_int_equal(ids77[0], 49406);
    for (int i = 1; i < SD_CLIP_MAX_LEN; i++) assert_int_equal(ids77[i], 49407);
}

static void test_reference_cases(void **state) {
    (void)state;
    const cJSON *e;
    int count = 0;
    cJSON_ArrayForEach(e, fixture_array("cases")) {
        check_entry(g_tok, e, true);
        count++;
    }
    print_message("    %d reference prompts match (tokens, 77 ids, clean text)\n", count);
    assert_true(count >= 50);
}

static void test_reference_fuzz(void **state) {
    (void)state;
    const cJSON *e;
    int count = 0;
    cJSON_ArrayForEach(e, fixture_array("fuzz")) {
        check_entry(g_tok, e, true);
        count++;
    }
    print_message("    %d seeded random prompts match\n", count);
    assert_true(count >= 200);
}

static void test_word_indices(void **state) {
    (void)state;
    const cJSON *e;
    int count = 0;
    cJSON_ArrayForEach(e, fixture_array("words")) {
        const char *prompt = cJSON_GetObjectItemCaseSensitive(e, "prompt")->valuestring;
        const cJSON *word = cJSON_GetObjectItemCaseSensitive(e, "word");
        const cJSON *pos = cJSON_GetObjectItemCaseSensitive(e, "pos");
        const cJSON *error = cJSON_GetObjectItemCaseSensitive(e, "error");
        int got[512], n = -1;
        sd_status st = word ? sd_word_token_indices(g_tok, prompt, word->valuestring, got, 512, &n)
                            : sd_word_pos_token_indices(g_tok, prompt, pos->valueint, got, 512, &n);
        char label[160];
        snprintf(label, sizeof label, "%.60s / %s", prompt, word ? word->valuestring : "pos");
        if (error) {
            if (st != SD_ERR_ARG) fail_msg("get_word_inds %s: expected SD_ERR_ARG (%s)", label, error->valuestring);
            /* The message names the word (or position) and the prompt. */
            if (word && strcmp(error->valuestring, "absent") == 0) {
                assert_true(testutil_contains(sd_last_error(), word->valuestring));
                assert_true(testutil_contains(sd_last_error(), prompt));
            }
        } else {
            if (st != SD_OK) fail_msg("get_word_inds %s: %s", label, sd_last_error());
            int want[512];
            int n_want = int_array(cJSON_GetObjectItemCaseSensitive(e, "inds"), want, 512);
            assert_ids("word indices of", label, got, n, want, n_want);
        }
        count++;
    }
    print_message("    %d get_word_inds lookups match\n", count);
}

static void test_decode(void **state) {
    (void)state;
    const cJSON *e;
    int count = 0;
    cJSON_ArrayForEach(e, fixture_array("decode")) {
        int id = cJSON_GetObjectItemCaseSensitive(e, "id")->valueint;
        const char *want = cJSON_GetObjectItemCaseSensitive(e, "text")->valuestring;
        char buf[256];
        const char *got = sd_token_decode(g_tok, id, buf, sizeof buf);
        if (strcmp(got, want) != 0) fail_msg("decode(%d): got \"%s\", expected \"%s\"", id, got, want);
        count++;
    }
    char small[4], buf[64];
    /* Truncation keeps whole characters; unknown ids decode to "". */
    assert_string_equal(sd_token_decode(g_tok, 2368, small, sizeof small), "cat");
    assert_string_equal(sd_token_decode(g_tok, 2368, small, 3), "ca");
    assert_string_equal(sd_token_decode(g_tok, -1, buf, sizeof buf), "");
    assert_string_equal(sd_token_decode(g_tok, 1 << 20, buf, sizeof buf), "");
    print_message("    %d decodes match\n", count);
}

/* A tokenizer folder whose pad token is the plain string "!" (SD 2 style): "!" is split out before
 * tokenising and the whitespace around it is stripped, as 4.25.1 does. */
static void test_pad_token_from_config(void **state) {
    (void)state;
    char dir[64];
    make_temp_dir(dir);
    copy_file(TOKENIZER_DIR "/vocab.json", dir, "vocab.json");
    copy_file(TOKENIZER_DIR "/merges.txt", dir, "merges.txt");
    const char *smap = "{\"bos_token\": {\"content\": \"<|startoftext|>\", \"lstrip\": false, \"rstrip\": false},"
                       " \"eos_token\": {\"content\": \"<|endoftext|>\", \"lstrip\": false, \"rstrip\": false},"
                       " \"unk_token\": {\"content\": \"<|endoftext|>\"}, \"pad_token\": \"!\"}";
    write_text(dir, "special_tokens_map.json", smap, strlen(smap));
    sd_tokenizer *tok;
    assert_sd_ok(sd_tokenizer_load(dir, &tok));
    assert_int_equal(sd_tokenizer_pad(tok), 0);
    const cJSON *e;
    cJSON_ArrayForEach(e, fixture_array("pad_bang")) check_entry(tok, e, false);
    sd_tokenizer_free(tok);
    remove_temp_dir(dir);
}

typedef struct {
    const char *prompt;
    int ids[SD_CLIP_MAX_LEN];
    int n_tokens;
    sd_status st;
} padded_call;

static void run_padded(void *arg) {
    padded_call *c = arg;
    c->st = sd_tokenize_padded(g_tok, c->prompt, c->ids, &c->n_tokens);
}

static void test_truncation_warns(void **state) {
    (void)state;
    char prompt[4096] = "";
    for (int i = 0; i < 100; i++) strcat(prompt, "a cat ");
    padded_call c = {.prompt = prompt};
    char log[4096];
    capture_stderr(run_padded, &c, log, sizeof log);
    assert_sd_ok(c.st);
    assert_int_equal(c.n_tokens, 200);
    assert_int_equal(c.ids[0], 49406);
    assert_int_equal(c.ids[75], 320);   /* the 75th token: "a cat" x 37, then "a" */
    assert_int_equal(c.ids[76], 49407); /* EOS kept last */
    if (!testutil_contains(log, "125")) fail_msg("truncation warning does not say 125 tokens were dropped: \"%s\"", log);
    /* 75 tokens exactly: no warning. */
    char exact[4096] = "";
    for (int i = 0; i < 75; i++) strcat(exact, "cat ");
    c = (padded_call){.prompt = exact};
    capture_stderr(run_padded, &c, log, sizeof log);
    assert_sd_ok(c.st);
    assert_int_equal(c.n_tokens, 75);
    assert_int_equal(c.ids[76], 49407);
    assert_int_equal(c.ids[75], 2368);
    assert_string_equal(log, "");
}

static void test_buffer_capacity(void **state) {
    (void)state;
    int ids[3], n = -1;
    assert_sd_ok(sd_tokenize(g_tok, "a cat sitting next to a mirror", NULL, 0, &n)); /* count only */
    assert_int_equal(n, 7);
    assert_sd_fails(sd_tokenize(g_tok, "a cat sitting next to a mirror", ids, 3, &n), SD_ERR_ARG, "7 tokens");
    assert_sd_fails(sd_tokenize(g_tok, NULL, ids, 3, &n), SD_ERR_ARG, "text");
    int inds[1];
    assert_sd_fails(sd_word_token_indices(g_tok, "a cat a cat", "cat", inds, 1, &n), SD_ERR_ARG, "more than 1");
    assert_sd_fails(sd_word_pos_token_indices(g_tok, "a cat", -1, inds, 1, &n), SD_ERR_ARG, "position -1");
}

/* Deterministic pseudo-random bytes. */
static uint64_t next_rand(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}

static void test_hostile_prompts(void **state) {
    (void)state;
    const size_t size = 100 * 1024;
    char *big = malloc(size + 1);
    int *ids = malloc(sizeof *ids * 4 * size);
    int n;
    uint64_t seed = 12345;
    sd_log_level saved = sd_log_get_level();
    sd_log_set_level(SD_LOG_ERROR);

    /* 100 KB of random bytes (mostly invalid UTF-8, no NUL). */
    for (size_t i = 0; i < size; i++) big[i] = (char)(1 + next_rand(&seed) % 255);
    big[size] = 0;
    double t0 = sd_now();
    assert_sd_ok(sd_tokenize(g_tok, big, ids, (int)(4 * size), &n));
    print_message("    100 KB random bytes: %d tokens in %.1f ms\n", n, 1e3 * (sd_now() - t0));
    int ids77[SD_CLIP_MAX_LEN];
    assert_sd_ok(sd_tokenize_padded(g_tok, big, ids77, NULL));
    assert_int_equal(ids77[76], 49407);

    /* One 100 KB "word": BPE must not be quadratic. */
    for (size_t i = 0; i < size; i++) big[i] = (char)('a' + next_rand(&seed) % 3);
    t0 = sd_now();
    assert_sd_ok(sd_tokenize(g_tok, big, ids, (int)(4 * size), &n));
    double ms = 1e3 * (sd_now() - t0);
    print_message("    one 100 KB word: %d tokens in %.1f ms\n", n, ms);
    assert_true(n > 0 && n < (int)size);
    assert_true(ms < 5000.0);

    /* 100 KB of mojibake-looking Latin-1 text: the slow path of ftfy on every segment. */
    size_t len = 0;
    while (len + 16 < size) {
        const char *piece = (next_rand(&seed) % 4) ? "caf\xc3\x83\xc2\xa9 " : "\xc3\xa2\xe2\x82\xac\xc5\x93q ";
        memcpy(big + len, piece, strlen(piece));
        len += strlen(piece);
    }
    big[len] = 0;
    t0 = sd_now();
    assert_sd_ok(sd_tokenize(g_tok, big, ids, (int)(4 * size), &n));
    print_message("    100 KB of mojibake: %d tokens in %.1f ms\n", n, 1e3 * (sd_now() - t0));
    int cafe[4], n_cafe;
    assert_sd_ok(sd_tokenize(g_tok, "caf\xc3\x83\xc2\xa9", cafe, 4, &n_cafe));
    assert_int_equal(ids[0], cafe[0]); /* repaired to "café" as in the single-word case */

    /* Only special tokens, only whitespace, a lone invalid byte. */
    assert_sd_ok(sd_tokenize(g_tok, "<|endoftext|><|startoftext|>", ids, 8, &n));
    assert_int_equal(n, 2);
    assert_sd_ok(sd_tokenize(g_tok, " \t\r\n\v\f", ids, 8, &n));
    assert_int_equal(n, 0);
    assert_sd_ok(sd_tokenize(g_tok, "\xff", ids, 8, &n));
    assert_int_equal(n, 1);
    assert_int_equal(ids[0], 39802); /* U+FFFD: its three bytes are one vocabulary entry */
    sd_log_set_level(saved);
    free(big);
    free(ids);
}

static void test_speed(void **state) {
    (void)state;
    const cJSON *e;
    const char *long_prompt = NULL;
    cJSON_ArrayForEach(e, fixture_array("cases")) {
        if (strcmp(cJSON_GetObjectItemCaseSensitive(e, "name")->valuestring, "long_300_words") == 0)
            long_prompt = cJSON_GetObjectItemCaseSensitive(e, "prompt")->valuestring;
    }
    assert_non_null(long_prompt);
    int ids[1024], n;
    double best = 1e9;
    for (int rep = 0; rep < 10; rep++) {
        double t0 = sd_now();
        assert_sd_ok(sd_tokenize(g_tok, long_prompt, ids, 1024, &n));
        double dt = sd_now() - t0;
        if (dt < best) best = dt;
    }
    print_message("    300-word prompt (%d tokens): %.3f ms%s\n", n, 1e3 * best, SANITIZED ? " (sanitized build)" : "");
    assert_true(best < (SANITIZED ? 0.1 : 0.01));
    double t0 = sd_now();
    sd_tokenizer *tok;
    assert_sd_ok(sd_tokenizer_load(TOKENIZER_DIR, &tok));
    print_message("    loading vocab.json + merges.txt: %.1f ms\n", 1e3 * (sd_now() - t0));
    sd_tokenizer_free(tok);
}

static void test_broken_files(void **state) {
    (void)state;
    sd_tokenizer *tok = (sd_tokenizer *)1;
    assert_sd_fails(sd_tokenizer_load("/nonexistent/tokenizer", &tok), SD_ERR_MISSING, "/nonexistent/tokenizer/vocab.json");
    assert_null(tok);

    char dir[64];
    make_temp_dir(dir);
    char vocab_path[128], merges_path[128], smap_path[128];
    snprintf(vocab_path, sizeof vocab_path, "%s/vocab.json", dir);
    snprintf(merges_path, sizeof merges_path, "%s/merges.txt", dir);
    snprintf(smap_path, sizeof smap_path, "%s/special_tokens_map.json", dir);

    /* merges.txt missing */
    copy_file(TOKENIZER_DIR "/vocab.json", dir, "vocab.json");
    assert_sd_fails(sd_tokenizer_load(dir, &tok), SD_ERR_MISSING, merges_path);

    /* malformed vocab.json variants */
    const char *bad_vocabs[] = {"{\"a\": 1, ", "[1, 2, 3]", "{}", "{\"a\": \"one\"}", "{\"a\": -3}", "{\"a\": 1.5}",
                                "{\"a\": 1e300}", "\xff\xfe{}", ""};
    write_text(dir, "merges.txt", "#version: 0.2\na b\n", 18);
    for (size_t i = 0; i < sizeof bad_vocabs / sizeof *bad_vocabs; i++) {
        write_text(dir, "vocab.json", bad_vocabs[i], strlen(bad_vocabs[i]));
        sd_status st = sd_tokenizer_load(dir, &tok);
        if (st != SD_ERR_FORMAT || !testutil_contains(sd_last_error(), vocab_path))
            fail_msg("vocab.json \"%s\": %s (%s)", bad_vocabs[i], sd_status_name(st), sd_last_error());
    }
    /* a vocabulary without the special tokens */
    write_text(dir, "vocab.json", "{\"a\": 0, \"b\": 1}", 16);
    assert_sd_fails(sd_tokenizer_load(dir, &tok), SD_ERR_FORMAT, "<|startoftext|>");

    /* malformed merges.txt variants */
    copy_file(TOKENIZER_DIR "/vocab.json", dir, "vocab.json");
    const char *bad_merges[] = {"#version: 0.2\na b c\n", "#version: 0.2\n", "\xc3\x28 b\n\xff x\n", "#version: 0.2\na\n"};
    for (size_t i = 0; i < sizeof bad_merges / sizeof *bad_merges; i++) {
        write_text(dir, "merges.txt", bad_merges[i], strlen(bad_merges[i]));
        sd_status st = sd_tokenizer_load(dir, &tok);
        if (st != SD_ERR_FORMAT || !testutil_contains(sd_last_error(), merges_path))
            fail_msg("merges.txt \"%s\": %s (%s)", bad_merges[i], sd_status_name(st), sd_last_error());
    }

    /* special_tokens_map.json: malformed, or naming a token the vocabulary lacks */
    copy_file(TOKENIZER_DIR "/merges.txt", dir, "merges.txt");
    write_text(dir, "special_tokens_map.json", "{\"pad_token\": ", 14);
    assert_sd_fails(sd_tokenizer_load(dir, &tok), SD_ERR_FORMAT, smap_path);
    write_text(dir, "special_tokens_map.json", "{\"pad_token\": 7}", 16);
    assert_sd_fails(sd_tokenizer_load(dir, &tok), SD_ERR_FORMAT, "pad_token");
    write_text(dir, "special_tokens_map.json", "{\"pad_token\": \"<pad>\"}", 22);
    assert_sd_fails(sd_tokenizer_load(dir, &tok), SD_ERR_FORMAT, "<pad>");

    /* and the good files load */
    copy_file(TOKENIZER_DIR "/special_tokens_map.json", dir, "special_tokens_map.json");
    assert_sd_ok(sd_tokenizer_load(dir, &tok));
    sd_tokenizer_free(tok);
    remove_temp_dir(dir);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_well_known_ids),
        cmocka_unit_test(test_reference_cases),
        cmocka_unit_test(test_reference_fuzz),
        cmocka_unit_test(test_word_indices),
        cmocka_unit_test(test_decode),
        cmocka_unit_test(test_pad_token_from_config),
        cmocka_unit_test(test_truncation_warns),
        cmocka_unit_test(test_buffer_capacity),
        cmocka_unit_test(test_hostile_prompts),
        cmocka_unit_test(test_speed),
        cmocka_unit_test(test_broken_files),
    };
    return cmocka_run_group_tests_name("tokenizer", tests, setup_all, teardown_all);
}
