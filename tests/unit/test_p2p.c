/* test_p2p.c: the Prompt-to-Prompt / P2Plus controller (sd/p2p.h) against the reference controller
 * run in torch (tests/fixtures/p2p_controller.safetensors, from
 * tests/oracle/gen_55_p2p_controller.py), then end to end on the tiny UNet.
 *
 *  - edit cases: synthetic softmax-normalised maps (generated here bit for bit as the oracle does)
 *    for replace / refine, with and without equalizer, B = 2 and 3, at steps inside and outside
 *    the τ_c / τ_s / τ_u windows, cross and self layers of 1024, 256, 64 and 16 queries. Which
 *    sites the hook materialises must follow the reference's edits; the source row must never
 *    change; edited rows must match the reference within 1e-6 (relative to the largest value);
 *  - LocalBlend flows: eight steps of conditional passes over the cross layers the store reads,
 *    each followed by sd_p2p_end_step; the blended latents and the mask must equal the reference's
 *    (bit for bit), and the averaged cross maps / heatmap tiles the reference's aggregate_attention
 *    and show_cross_attention;
 *  - the hook on the tiny UNet for three editing steps at a 32x32 latent: the layers that
 *    materialise maps in each pass, the source row equal to an unedited run, the target row
 *    changed, heatmap files written;
 *  - argument and state errors. */
#include "testutil.h"

#include <dirent.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/autograd.h"
#include "sd/io.h"
#include "sd/models.h"
#include "sd/p2p.h"
#include "sd/sched.h"
#include "sd/text.h"

#define TOKENIZER_DIR "models/tiny/tokenizer"
#define FIXTURE "p2p_controller"
#define T SD_P2P_TOKENS
#define HEADS 8
#define LATENT 32
#define TOL 1e-6

static sd_tokenizer *g_tok;

static int setup_all(void **state) {
    (void)state;
    if (sd_tokenizer_load(TOKENIZER_DIR, &g_tok) != SD_OK) {
        fprintf(stderr, "cannot load %s: %s\n", TOKENIZER_DIR, sd_last_error());
        return -1;
    }
    return 0;
}

static int teardown_all(void **state) {
    (void)state;
    sd_tokenizer_free(g_tok);
    return 0;
}

/* ------------------------------------------------------------------------------------------------
 * The oracle's synthetic inputs, bit for bit
 * --------------------------------------------------------------------------------------------- */

static uint64_t splitmix(uint64_t seed, uint64_t index) {
    uint64_t z = (index + 1) * 0x9E3779B97F4A7C15ull + seed;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

/* [B·8, q, kv] host maps: integer weights in [1, 2^20], tokens 1..12 of cross maps with a disc of
 * +2^22 per prompt row, each row divided by its exact sum in double and rounded to float. */
static sd_tensor *synthetic_maps(uint64_t seed, int B, int64_t res_h, int64_t res_w, int64_t kv, int cross) {
    const int64_t q = res_h * res_w, rows = (int64_t)B * HEADS * q;
    sd_tensor *out = sd_tensor_new4(SD_F32, 3, (int64_t)B * HEADS, q, kv, 0);
    int64_t *v = malloc((size_t)(rows * kv) * sizeof *v);
    assert_non_null(out);
    assert_non_null(v);
    for (int64_t i = 0; i < rows * kv; i++) v[i] = (int64_t)(splitmix(seed, (uint64_t)i) >> 44) + 1;
    if (cross) {
        const int64_t radius2 = res_w / 4 > 1 ? (res_w / 4) * (res_w / 4) : 1;
        for (int token = 1; token <= 12; token++)
            for (int b = 0; b < B; b++) {
                const int64_t cy = (5 * token + b) % res_h, cx = (7 * token + 3 * b) % res_w;
                for (int64_t p = 0; p < q; p++) {
                    const int64_t y = p / res_w, x = p % res_w;
                    if ((y - cy) * (y - cy) + (x - cx) * (x - cx) > radius2) continue;
                    for (int h = 0; h < HEADS; h++) v[(((int64_t)b * HEADS + h) * q + p) * kv + token] += 1 << 22;
                }
            }
    }
    float *o = sd_f32(out);
    for (int64_t r = 0; r < rows; r++) {
        int64_t sum = 0;
        for (int64_t n = 0; n < kv; n++) sum += v[r * kv + n];
        for (int64_t n = 0; n < kv; n++) o[r * kv + n] = (float)((double)v[r * kv + n] / (double)sum);
    }
    free(v);
    return out;
}

static sd_tensor *synthetic_latents(uint64_t seed, int B) {
    sd_tensor *out = sd_tensor_new4(SD_F32, 4, B, 4, LATENT, LATENT);
    assert_non_null(out);
    for (int64_t i = 0; i < sd_numel(out); i++)
        sd_f32(out)[i] = (float)((double)(splitmix(seed, (uint64_t)i) >> 40) / 8388608.0 - 1.0);
    return out;
}

static uint64_t case_seed(int config, int step, int branch, int site) {
    return 1000003ull * (uint64_t)(config + 1) + 10007ull * (uint64_t)step + 101ull * (uint64_t)branch + (uint64_t)site;
}

static uint64_t flow_seed(int flow, int step, int site) {
    return 7000001ull * (uint64_t)(flow + 1) + 10007ull * (uint64_t)step + (uint64_t)site;
}

/* ------------------------------------------------------------------------------------------------
 * The oracle's configurations (tests/oracle/gen_55_p2p_controller.py CONFIGS)
 * --------------------------------------------------------------------------------------------- */

typedef struct test_config {
    const char *name;
    const char *prompts[3];
    int n_prompts, n_steps;
    sd_p2p_edit edit;
    double cross_end;
    const char *window_word; /* a per-word cross window, or NULL */
    sd_p2p_window word_window;
    sd_p2p_window self_window, uncond_window;
    const char *eq_words[2];
    double eq_values[2];
    int n_eq;
    const char *blend[3];
    int n_blend;
    int case_steps[4];
    int n_case_steps;
} test_config;

#define DOG "black and white dog playing red ball on black carpet"
#define TIGER "black and white tiger playing red ball on black carpet"
#define MIRROR_CAT "a cat sitting next to a mirror"

static const test_config CONFIGS[] = {
    {"A", {DOG, TIGER}, 2, 30, SD_P2P_REPLACE, .6, NULL, {0, 0}, {0, .8}, {0, .5}, {"tiger"}, {2.0}, 1,
     {"dog", "tiger"}, 2, {3, 16, 20, 25}, 4},
    {"B", {"a tent in forest", "a tiger in forest"}, 2, 50, SD_P2P_REPLACE, .6, NULL, {0, 0}, {0, .6}, {0, .6},
     {NULL}, {0}, 0, {NULL}, 0, {10, 29, 30, 45}, 4},
    {"C", {"a dog", "a sitting dog"}, 2, 30, SD_P2P_REFINE, .2, NULL, {0, 0}, {0, .2}, {0, 0.0}, {"sitting"},
     {8.0}, 1, {"dog", "dog"}, 2, {0, 5, 6, 12}, 4},
    {"D", {MIRROR_CAT, "a silver cat sculpture sitting next to a mirror"}, 2, 50, SD_P2P_REFINE, .8, NULL,
     {0, 0}, {0, .6}, {0, 0.0}, {"silver", "sculpture"}, {2.0, 2.0}, 2, {NULL}, 0, {1, 35, 44}, 3},
    {"E", {MIRROR_CAT, "a tiger sitting next to a mirror", "a dog sitting next to a mirror"}, 3, 30,
     SD_P2P_REPLACE, .6, NULL, {0, 0}, {0, .8}, {0, .5}, {"tiger"}, {2.0}, 1, {"cat", "tiger", "dog"}, 3,
     {2, 16, 21, 27}, 4},
    {"F", {"a dog", "a sitting dog", "a dog on the grass"}, 3, 30, SD_P2P_REFINE, .4, NULL, {0, 0}, {0, .3},
     {0, .2}, {NULL}, {0}, 0, {NULL}, 0, {4, 7, 10, 14}, 4},
    {"G", {"a cat on a sofa", "a gnochi on a sofa"}, 2, 30, SD_P2P_REPLACE, .8, "gnochi", {0, .3}, {0, .5},
     {.1, .3}, {"gnochi"}, {3.0}, 1, {NULL}, 0, {2, 5, 12, 26}, 4},
};
#define N_CONFIGS ((int)(sizeof CONFIGS / sizeof CONFIGS[0]))

/* The edit-case sites: the tiny UNet's first calls at each resolution of a 32x32 latent. */
typedef struct test_site {
    sd_unet_place place;
    int is_cross;
    int side, layer;
} test_site;

static const test_site SITES[] = {
    {SD_PLACE_DOWN, 0, 32, 0}, {SD_PLACE_DOWN, 1, 32, 1}, {SD_PLACE_DOWN, 0, 16, 4}, {SD_PLACE_DOWN, 1, 16, 5},
    {SD_PLACE_DOWN, 0, 8, 8},  {SD_PLACE_DOWN, 1, 8, 9},  {SD_PLACE_MID, 0, 4, 12},  {SD_PLACE_MID, 1, 4, 13},
};
#define N_SITES ((int)(sizeof SITES / sizeof SITES[0]))

/* The cross layers with q_len <= 256 of one pass (the LocalBlend flows). */
static const test_site FLOW_SITES[] = {
    {SD_PLACE_DOWN, 1, 16, 5}, {SD_PLACE_DOWN, 1, 16, 7}, {SD_PLACE_DOWN, 1, 8, 9}, {SD_PLACE_DOWN, 1, 8, 11},
    {SD_PLACE_MID, 1, 4, 13},  {SD_PLACE_UP, 1, 8, 15},   {SD_PLACE_UP, 1, 8, 17},  {SD_PLACE_UP, 1, 8, 19},
    {SD_PLACE_UP, 1, 16, 21},  {SD_PLACE_UP, 1, 16, 23},  {SD_PLACE_UP, 1, 16, 25},
};
#define N_FLOW_SITES ((int)(sizeof FLOW_SITES / sizeof FLOW_SITES[0]))
#define FLOW_STEPS 8

static sd_attn_site make_site(const test_site *t, int batch) {
    sd_attn_site s = {.layer = t->layer, .is_cross = t->is_cross, .place = t->place, .res_h = t->side,
                      .res_w = t->side, .heads = HEADS, .batch = batch};
    s.q_len = (int64_t)t->side * t->side;
    s.kv_len = t->is_cross ? T : s.q_len;
    return s;
}

static sd_p2p *create_controller(const test_config *tc, int with_blend) {
    sd_p2p_config cfg = sd_p2p_config_default();
    sd_p2p_word_window ww = {tc->window_word, tc->word_window};
    sd_p2p_word_list lists[3];
    const char *words[3][1];
    cfg.edit = tc->edit;
    cfg.cross.default_window = sd_p2p_window_until(tc->cross_end);
    if (tc->window_word) {
        cfg.cross.word_windows = &ww;
        cfg.cross.n_word_windows = 1;
    }
    cfg.self_window = tc->self_window;
    cfg.uncond_window = tc->uncond_window;
    cfg.eq_words = tc->eq_words;
    cfg.eq_values = tc->eq_values;
    cfg.n_eq_words = tc->n_eq;
    if (with_blend && tc->n_blend) {
        for (int b = 0; b < tc->n_blend; b++) {
            words[b][0] = tc->blend[b];
            lists[b].words = words[b];
            lists[b].n_words = 1;
        }
        cfg.blend_words = lists;
        cfg.n_blend_lists = tc->n_blend;
    }
    sd_p2p *p = NULL;
    assert_sd_ok(sd_p2p_create(g_tok, tc->prompts, tc->n_prompts, tc->n_steps, LATENT, LATENT, &cfg, &p));
    return p;
}

/* max |got - want| / max |want| over n values (want in double) */
static double rel_err_d(const double *got, const float *want, int64_t n) {
    double diff = 0, scale = 1e-30;
    for (int64_t i = 0; i < n; i++) {
        diff = fmax(diff, fabs(got[i] - want[i]));
        scale = fmax(scale, fabs((double)want[i]));
    }
    return diff / scale;
}

/* Runs one map through the hook on a CPU context; returns the edited host copy (NULL when the
 * hook did not want the map). */
static sd_tensor *run_hook(sd_p2p *p, sd_ctx *c, const sd_attn_site *s, const sd_tensor *input) {
    sd_attn_hook *hook = sd_p2p_hook(p);
    if (!hook->wants_probs(hook, s)) return NULL;
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_tensor *probs = sd_upload(c, input);
    sd_tensor *used = hook->edit_probs(hook, c, s, probs);
    if (!used) fail_msg("layer %d: %s", s->layer, sd_last_error());
    assert_ptr_equal(used, probs);
    sd_tensor *out = sd_download_new(c, used);
    assert_sd_ok(sd_ctx_status(c));
    sd_arena_reset(c->arena, mark);
    return out;
}

/* ------------------------------------------------------------------------------------------------
 * Edit cases
 * --------------------------------------------------------------------------------------------- */

static void test_edit_cases(void **state) {
    (void)state;
    double worst_rows = 0, worst_sums = 0;
    int compared = 0, materialised = 0, skipped = 0;
    for (int ci = 0; ci < N_CONFIGS; ci++) {
        const test_config *tc = &CONFIGS[ci];
        const int B = tc->n_prompts;
        sd_p2p *p = create_controller(tc, 0);
        sd_ctx c;
        assert_sd_ok(sd_ctx_init_cpu(&c));
        char name[64];
        snprintf(name, sizeof name, "%s_flags", tc->name);
        sd_tensor *flags = testutil_fixture(FIXTURE, name);
        assert_int_equal(sd_numel(flags), tc->n_case_steps * 2 * N_SITES);
        int k = 0;
        for (int si_step = 0; si_step < tc->n_case_steps; si_step++) {
            const int step = tc->case_steps[si_step];
            for (int branch = 0; branch < 2; branch++) {
                assert_sd_ok(sd_p2p_begin_pass(p, step, branch ? SD_BRANCH_COND : SD_BRANCH_UNCOND));
                for (int si = 0; si < N_SITES; si++, k++) {
                    const int flag = (int)sd_f32(flags)[k];
                    const sd_attn_site s = make_site(&SITES[si], B);
                    /* the hook materialises exactly what the reference edits, plus the store */
                    const int stores = branch && s.is_cross && s.q_len == sd_loss_map_q_len(LATENT, LATENT);
                    const int wants = sd_p2p_hook(p)->wants_probs(sd_p2p_hook(p), &s);
                    if (wants != (flag != 0 || stores))
                        fail_msg("config %s step %d %s layer %d (%s, q %lld): wants_probs %d, reference %s",
                                 tc->name, step, branch ? "cond" : "uncond", s.layer, s.is_cross ? "cross" : "self",
                                 (long long)s.q_len, wants, flag ? "edits" : "leaves it");
                    if (!wants) {
                        skipped++;
                        continue;
                    }
                    materialised++;
                    sd_tensor *input = synthetic_maps(case_seed(ci, step, branch, si), B, s.res_h, s.res_w,
                                                      s.kv_len, s.is_cross);
                    sd_tensor *got = run_hook(p, &c, &s, input);
                    const int64_t block = HEADS * s.q_len * s.kv_len;
                    /* the source row is never written */
                    if (memcmp(sd_f32(got), sd_f32(input), (size_t)block * sizeof(float)))
                        fail_msg("config %s step %d layer %d: the source row changed", tc->name, step, s.layer);
                    if (flag == 0 && memcmp(sd_f32(got), sd_f32(input), sd_nbytes(input)))
                        fail_msg("config %s step %d layer %d: maps changed where the reference leaves them",
                                 tc->name, step, s.layer);
                    if (flag == 2) {
                        char base[64], key[80];
                        snprintf(base, sizeof base, "%s_s%d_%c%d", tc->name, step, branch ? 'c' : 'u', si);
                        snprintf(key, sizeof key, "%s_sum", base);
                        sd_tensor *want_sum = testutil_fixture(FIXTURE, key);
                        /* Σ over queries per (prompt, head, key) */
                        const int64_t rows = (int64_t)B * HEADS, q = s.q_len, kv = s.kv_len;
                        double *sum = calloc((size_t)(rows * kv), sizeof *sum);
                        for (int64_t r = 0; r < rows; r++)
                            for (int64_t i = 0; i < q; i++)
                                for (int64_t n = 0; n < kv; n++) sum[r * kv + n] += sd_f32(got)[(r * q + i) * kv + n];
                        const double e_sum = rel_err_d(sum, sd_f32(want_sum), rows * kv);
                        free(sum);
                        worst_sums = fmax(worst_sums, e_sum);
                        if (e_sum > TOL) fail_msg("%s: query sums off by %.3g (relative)", base, e_sum);
                        sd_tensor_free(want_sum);
                        if (s.is_cross) {
                            snprintf(key, sizeof key, "%s_rows", base);
                            sd_tensor *want_rows = testutil_fixture(FIXTURE, key);
                            const int64_t picks[3] = {0, q / 2 + 1, q - 1};
                            double *rows_got = malloc((size_t)sd_numel(want_rows) * sizeof *rows_got);
                            int64_t w = 0;
                            for (int t = 1; t < B; t++)
                                for (int h = 0; h < HEADS; h++)
                                    for (int r = 0; r < 3; r++)
                                        for (int64_t n = 0; n < kv; n++)
                                            rows_got[w++] = sd_f32(got)[(((int64_t)t * HEADS + h) * q + picks[r]) * kv + n];
                            assert_int_equal(w, sd_numel(want_rows));
                            const double e_rows = rel_err_d(rows_got, sd_f32(want_rows), w);
                            free(rows_got);
                            worst_rows = fmax(worst_rows, e_rows);
                            if (e_rows > TOL) fail_msg("%s: edited rows off by %.3g (relative)", base, e_rows);
                            sd_tensor_free(want_rows);
                        }
                        compared++;
                    }
                    sd_tensor_free(input);
                    sd_tensor_free(got);
                }
            }
        }
        sd_tensor_free(flags);
        sd_ctx_free(&c);
        sd_p2p_free(p);
    }
    print_message("edit cases: %d compared with the reference (rows max rel err %.2e, query sums %.2e); "
                  "%d maps materialised, %d left on the fused path\n",
                  compared, worst_rows, worst_sums, materialised, skipped);
    assert_true(compared >= 70);
}

/* ------------------------------------------------------------------------------------------------
 * LocalBlend flows and heatmaps
 * --------------------------------------------------------------------------------------------- */

static int find_config(const char *name) {
    for (int i = 0; i < N_CONFIGS; i++)
        if (!strcmp(CONFIGS[i].name, name)) return i;
    fail_msg("no config %s", name);
    return -1;
}

/* Σ gray and Σ gray at even x + y of a heatmap PNG. */
static void png_sums(const char *path, double *all, double *even) {
    sd_image img = {0};
    assert_sd_ok(sd_image_load(path, &img));
    assert_int_equal(img.width, 256);
    assert_int_equal(img.height, 256);
    *all = *even = 0;
    for (int y = 0; y < 256; y++)
        for (int x = 0; x < 256; x++) {
            const uint8_t *px = img.data + ((size_t)y * 256 + x) * 3;
            assert_true(px[0] == px[1] && px[1] == px[2]);
            *all += px[0];
            if ((x + y) % 2 == 0) *even += px[0];
        }
    sd_image_free(&img);
}

static void run_flow(int flow_index, const char *config_name) {
    const test_config *tc = &CONFIGS[find_config(config_name)];
    const int B = tc->n_prompts;
    sd_p2p *p = create_controller(tc, 1);
    sd_attn_hook *hook = sd_p2p_hook(p);
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    const int start = (int)(0.2 * tc->n_steps);
    int blended_steps = 0;
    double worst_latent = 0;
    for (int step = 0; step < FLOW_STEPS; step++) {
        /* the unconditional pass touches no cross layer */
        assert_sd_ok(sd_p2p_begin_pass(p, step, SD_BRANCH_UNCOND));
        for (int si = 0; si < N_FLOW_SITES; si++) {
            const sd_attn_site s = make_site(&FLOW_SITES[si], B);
            assert_false(hook->wants_probs(hook, &s));
        }
        assert_sd_ok(sd_p2p_begin_pass(p, step, SD_BRANCH_COND));
        for (int si = 0; si < N_FLOW_SITES; si++) {
            const sd_attn_site s = make_site(&FLOW_SITES[si], B);
            sd_tensor *input = synthetic_maps(flow_seed(flow_index, step, si), B, s.res_h, s.res_w, T, 1);
            sd_tensor *got = run_hook(p, &c, &s, input);
            /* the store's layers always come through; the others while τ_c edits them */
            if (s.q_len == sd_loss_map_q_len(LATENT, LATENT)) assert_non_null(got);
            sd_tensor_free(input);
            sd_tensor_free(got);
        }
        const sd_arena_mark mark = sd_arena_get_mark(c.arena);
        sd_tensor *x_host = synthetic_latents(flow_seed(flow_index, step, 999), B);
        sd_tensor *x = sd_upload(&c, x_host);
        sd_tensor *y = sd_p2p_end_step(p, &c, x);
        assert_sd_ok(sd_ctx_status(&c));
        if (step < start) {
            assert_ptr_equal(y, x); /* counter <= int(0.2·N): no blend yet */
            assert_null(sd_p2p_blend_mask(p));
        } else {
            char key[64];
            snprintf(key, sizeof key, "flow%s_s%d_latents", tc->name, step);
            sd_tensor *want = testutil_fixture(FIXTURE, key);
            sd_tensor *got = sd_download_new(&c, y);
            double diff = testutil_max_abs_err(sd_f32(got), sd_f32(want), sd_numel(want));
            worst_latent = fmax(worst_latent, diff);
            if (diff != 0) fail_msg("%s: blended latents differ by %.3g", key, diff);
            /* row 0 is the source latent, untouched */
            assert_memory_equal(sd_f32(got), sd_f32(x_host), (size_t)sd_numel(got) / B * sizeof(float));
            snprintf(key, sizeof key, "flow%s_s%d_mask", tc->name, step);
            sd_tensor *want_mask = testutil_fixture(FIXTURE, key);
            const float *mask = sd_p2p_blend_mask(p);
            assert_non_null(mask);
            if (memcmp(mask, sd_f32(want_mask), sd_nbytes(want_mask))) fail_msg("%s differs", key);
            sd_tensor_free(want);
            sd_tensor_free(got);
            sd_tensor_free(want_mask);
            blended_steps++;
        }
        sd_tensor_free(x_host);
        sd_arena_reset(c.arena, mark);
    }
    assert_int_equal(blended_steps, FLOW_STEPS - start);
    assert_int_equal(sd_p2p_stored_passes(p), FLOW_STEPS);
    assert_int_equal(sd_p2p_stored_layers(p), 5); /* down_cross[2:4] + up_cross[:3] */

    /* aggregate_attention and show_cross_attention */
    char dir[128];
    assert_int_equal(testutil_make_tmpdir(dir, sizeof dir, "sd_p2p_heat_"), 0);
    assert_sd_ok(sd_p2p_save_heatmaps(p, &c, g_tok, dir, NULL));
    double worst_avg = 0, worst_heat = 0;
    for (int b = 0; b < B; b++) {
        char key[64];
        snprintf(key, sizeof key, "flow%s_avg_p%d", tc->name, b);
        sd_tensor *want = testutil_fixture(FIXTURE, key);
        float *avg = malloc(sd_nbytes(want));
        int64_t rh = 0, rw = 0;
        assert_sd_ok(sd_p2p_average_cross_maps(p, &c, b, avg, &rh, &rw));
        assert_int_equal(rh * rw * T, sd_numel(want));
        const double e = testutil_max_rel_err(avg, sd_f32(want), sd_numel(want));
        worst_avg = fmax(worst_avg, e);
        if (e > TOL) fail_msg("%s: averaged maps off by %.3g", key, e);
        free(avg);
        sd_tensor_free(want);

        snprintf(key, sizeof key, "flow%s_heat_p%d", tc->name, b);
        sd_tensor *heat = testutil_fixture(FIXTURE, key);
        int n_tokens = 0;
        assert_sd_ok(sd_tokenize(g_tok, tc->prompts[b], NULL, 0, &n_tokens));
        assert_int_equal(heat->shape[0], n_tokens + 2);
        /* the k-th file of prompt b, whatever its token text */
        for (int k = 0; k < n_tokens + 2; k++) {
            char prefix[32], path[512] = "";
            snprintf(prefix, sizeof prefix, "p%d_%02d_", b, k);
            DIR *d = opendir(dir);
            struct dirent *e;
            while ((e = readdir(d)))
                if (!strncmp(e->d_name, prefix, strlen(prefix))) snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            closedir(d);
            if (!path[0]) fail_msg("no heatmap %s* in %s", prefix, dir);
            double all, even;
            png_sums(path, &all, &even);
            const double d_all = fabs(all - sd_f32(heat)[2 * k]), d_even = fabs(even - sd_f32(heat)[2 * k + 1]);
            worst_heat = fmax(worst_heat, fmax(d_all, d_even));
            if (d_all != 0 || d_even != 0)
                fail_msg("%s: pixel sums %.0f / %.0f, reference %.0f / %.0f", path, all, even, sd_f32(heat)[2 * k],
                         sd_f32(heat)[2 * k + 1]);
        }
        sd_tensor_free(heat);
    }
    assert_int_equal(testutil_remove_tree(dir), 0);
    print_message("flow %s (%d prompts): %d blended steps (latents and masks exact, max |diff| %.1g), "
                  "averaged maps max rel err %.2e, heatmap tiles exact\n",
                  tc->name, B, blended_steps, worst_latent, worst_avg);
    sd_ctx_free(&c);
    sd_p2p_free(p);
}

static void test_local_blend_flows(void **state) {
    (void)state;
    run_flow(0, "A");
    run_flow(1, "C");
    run_flow(2, "E");
}

/* ------------------------------------------------------------------------------------------------
 * Which maps are materialised at SD v1 resolutions (64x64 latent: store 16², inject up to 32²)
 * --------------------------------------------------------------------------------------------- */

static void test_site_policy_sd_resolution(void **state) {
    (void)state;
    const char *prompts[2] = {"a cat", "a dog"};
    sd_p2p_config cfg = sd_p2p_config_default(); /* τ_c .6, τ_s .8, τ_u .5 */
    sd_p2p *p;
    assert_sd_ok(sd_p2p_create(g_tok, prompts, 2, 30, 64, 64, &cfg, &p));
    sd_attn_hook *h = sd_p2p_hook(p);
    sd_attn_site s = {.heads = 8, .batch = 2};
    const int64_t sides[4] = {64, 32, 16, 8};
    struct {
        int step;
        sd_branch branch;
        int self[4], cross[4];
    } expect[] = {
        {0, SD_BRANCH_COND, {0, 1, 1, 1}, {1, 1, 1, 1}},    /* all windows open */
        {14, SD_BRANCH_UNCOND, {0, 1, 1, 1}, {0, 0, 0, 0}}, /* τ_u: [0, 15) */
        {15, SD_BRANCH_UNCOND, {0, 0, 0, 0}, {0, 0, 0, 0}},
        {17, SD_BRANCH_COND, {0, 1, 1, 1}, {1, 1, 1, 1}},   /* τ_c: int(0.6·31) = 18 rows */
        {18, SD_BRANCH_COND, {0, 1, 1, 1}, {0, 0, 1, 0}},   /* only the store's 16² cross maps */
        {24, SD_BRANCH_COND, {0, 0, 0, 0}, {0, 0, 1, 0}},   /* τ_s: [0, 24) */
    };
    for (size_t e = 0; e < sizeof expect / sizeof expect[0]; e++) {
        assert_sd_ok(sd_p2p_begin_pass(p, expect[e].step, expect[e].branch));
        for (int r = 0; r < 4; r++) {
            s.res_h = s.res_w = sides[r];
            s.q_len = sides[r] * sides[r];
            s.is_cross = 0;
            s.kv_len = s.q_len;
            if (h->wants_probs(h, &s) != expect[e].self[r])
                fail_msg("step %d: self-attention at %lld² wants %d", expect[e].step, (long long)sides[r], !expect[e].self[r]);
            s.is_cross = 1;
            s.kv_len = T;
            if (h->wants_probs(h, &s) != expect[e].cross[r])
                fail_msg("step %d: cross-attention at %lld² wants %d", expect[e].step, (long long)sides[r], !expect[e].cross[r]);
        }
    }
    sd_p2p_free(p);
}

/* ------------------------------------------------------------------------------------------------
 * End to end on the tiny UNet
 * --------------------------------------------------------------------------------------------- */

/* Records, per pass, the layers whose maps the controller asked for. */
typedef struct recording_hook {
    sd_attn_hook base;
    sd_attn_hook *inner;
    int pass;
    int n_wanted[8];
    int wanted[8][32];
} recording_hook;

static sd_tensor *rec_value(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *context) {
    recording_hook *r = (recording_hook *)h;
    return r->inner->value_input ? r->inner->value_input(r->inner, c, s, context) : NULL;
}

static int rec_wants(sd_attn_hook *h, const sd_attn_site *s) {
    recording_hook *r = (recording_hook *)h;
    const int w = r->inner->wants_probs(r->inner, s);
    if (w && r->n_wanted[r->pass] < 32) r->wanted[r->pass][r->n_wanted[r->pass]++] = s->layer;
    return w;
}

static sd_tensor *rec_edit(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs) {
    recording_hook *r = (recording_hook *)h;
    return r->inner->edit_probs(r->inner, c, s, probs);
}

static int value_calls;
static sd_tensor *count_value_calls(void *user, sd_ctx *c, const sd_attn_site *s, sd_tensor *context) {
    (void)user, (void)c, (void)s, (void)context;
    value_calls++;
    return NULL; /* keep the context: the edit must not depend on it */
}

static sd_tensor *embed(sd_ctx *c, const sd_clip_text *text, const char *const *prompts, int n) {
    sd_tensor *ids = sd_tensor_new4(SD_I32, 2, n, T, 0, 0);
    for (int b = 0; b < n; b++) assert_sd_ok(sd_tokenize_padded(g_tok, prompts[b], (int *)ids->data + b * T, NULL));
    sd_tensor *e = sd_keep(c, sd_clip_text_forward(c, text, ids));
    sd_tensor_free(ids);
    assert_sd_ok(sd_ctx_status(c));
    return e;
}

/* Three guided DDIM steps with two UNet calls each, as the editing loop makes them. */
static sd_tensor *edit_loop(sd_ctx *c, const sd_unet *unet, const sd_ddim *sched, sd_tensor *z_T,
                            sd_tensor *uncond, sd_tensor *cond, sd_p2p *p, recording_hook *rec) {
    sd_tensor *z = sd_keep(c, z_T);
    for (int i = 0; i < sched->n_steps; i++) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const int t = sched->timesteps[i];
        if (p) {
            assert_sd_ok(sd_p2p_begin_pass(p, i, SD_BRANCH_UNCOND));
            rec->pass = 2 * i;
        }
        sd_tensor *eps_u = sd_unet_forward(c, unet, z, (float)t, uncond);
        if (p) {
            assert_sd_ok(sd_p2p_begin_pass(p, i, SD_BRANCH_COND));
            rec->pass = 2 * i + 1;
        }
        sd_tensor *eps_c = sd_unet_forward(c, unet, z, (float)t, cond);
        sd_tensor *next = sd_ddim_prev_step(c, sched, sd_cfg_combine(c, eps_u, eps_c, 7.5f), t, z);
        if (p) next = sd_p2p_end_step(p, c, next);
        sd_assign(c, z, next);
        sd_arena_reset(c->arena, mark);
        if (sd_ctx_status(c)) fail_msg("step %d: %s", i, sd_last_error());
    }
    return sd_download_new(c, z);
}

static void test_tiny_unet_editing(void **state) {
    (void)state;
    sd_model_files files;
    sd_unet unet;
    sd_clip_text text;
    sd_ctx c;
    assert_sd_ok(sd_model_files_open("models/tiny", TOKENIZER_DIR, &files));
    assert_sd_ok(sd_unet_bind(&unet, &files.unet_config, files.unet));
    assert_sd_ok(sd_clip_text_bind(&text, &files.text_config, files.text));
    assert_sd_ok(sd_ctx_init_cpu(&c));

    const char *prompts[2] = {MIRROR_CAT, "a tiger sitting next to a mirror"};
    const char *empty[2] = {"", ""};
    sd_tensor *cond = embed(&c, &text, prompts, 2);
    sd_tensor *uncond = embed(&c, &text, empty, 2);
    sd_ddim sched;
    assert_sd_ok(sd_ddim_init(&sched, 3));
    /* x_T expanded to both rows, as the editing loop starts */
    sd_tensor *x1 = synthetic_latents(42, 1);
    sd_tensor *z_T = sd_keep(&c, sd_concat0(&c, sd_upload(&c, x1), sd_upload(&c, x1)));
    sd_tensor_free(x1);

    sd_tensor *plain = edit_loop(&c, &unet, &sched, z_T, uncond, cond, NULL, NULL);

    /* τ_c .6 -> steps 0, 1 (int(0.6·4) = 2); τ_s .8 -> steps 0, 1 (int(2.4)); τ_u .5 -> step 0
     * (int(1.5)); LocalBlend from the first step (int(0.2·3) = 0) */
    sd_p2p_config cfg = sd_p2p_config_default();
    const char *eq_words[1] = {"tiger"};
    const double eq_values[1] = {2.0};
    const char *cat[1] = {"cat"}, *tiger[1] = {"tiger"};
    const sd_p2p_word_list blend[2] = {{cat, 1}, {tiger, 1}};
    cfg.eq_words = eq_words;
    cfg.eq_values = eq_values;
    cfg.n_eq_words = 1;
    cfg.blend_words = blend;
    cfg.n_blend_lists = 2;
    sd_p2p *p;
    assert_sd_ok(sd_p2p_create(g_tok, prompts, 2, 3, LATENT, LATENT, &cfg, &p));
    sd_p2p_set_value_input(p, count_value_calls, NULL);
    recording_hook rec = {{rec_value, rec_wants, rec_edit}, sd_p2p_hook(p), 0, {0}, {{0}}};
    c.hook = &rec.base;
    value_calls = 0;
    sd_tensor *edited = edit_loop(&c, &unet, &sched, z_T, uncond, cond, p, &rec);
    c.hook = NULL;

    /* which layers materialised maps, per pass (odd layers are cross-attention) */
    static const int self_small[11] = {4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24}; /* q <= 16² */
    static const int store_layers[5] = {9, 11, 15, 17, 19};                      /* q == 8² cross */
    for (int pass = 0; pass < 6; pass++) {
        const int step = pass / 2, cond_pass = pass % 2;
        int want[32], n = 0;
        for (int l = 0; l < 32; l++) {
            const int is_cross = l % 2 == 1;
            int in_self = 0, in_store = 0;
            for (int k = 0; k < 11; k++) in_self |= self_small[k] == l;
            for (int k = 0; k < 5; k++) in_store |= store_layers[k] == l;
            int w;
            if (!cond_pass) w = !is_cross && in_self && step < 1;
            else if (is_cross) w = step < 2 || in_store;
            else w = in_self && step < 2;
            if (w) want[n++] = l;
        }
        if (rec.n_wanted[pass] != n || memcmp(rec.wanted[pass], want, (size_t)n * sizeof(int)))
            fail_msg("step %d %s pass: %d maps materialised, expected %d", step, cond_pass ? "cond" : "uncond",
                     rec.n_wanted[pass], n);
    }
    assert_int_equal(value_calls, 6 * 32); /* forwarded at every attention call */
    assert_int_equal(sd_p2p_stored_passes(p), 3);
    assert_non_null(sd_p2p_blend_mask(p));

    /* row 0 follows the unedited trajectory; row 1 is edited */
    const int64_t half = sd_numel(plain) / 2;
    const double e_src = testutil_max_rel_err(sd_f32(edited), sd_f32(plain), half);
    const double e_tgt = testutil_max_rel_err(sd_f32(edited) + half, sd_f32(plain) + half, half);
    print_message("tiny UNet, 3 editing steps: source row vs unedited run max rel err %.2e, target row "
                  "changed by %.2e\n", e_src, e_tgt);
    assert_true(e_src <= 1e-5);
    assert_true(e_tgt > 1e-3);

    /* heatmaps: one tile per token of each prompt, gray or over a background */
    char dir[128], path[512];
    assert_int_equal(testutil_make_tmpdir(dir, sizeof dir, "sd_p2p_tiny_"), 0);
    assert_sd_ok(sd_p2p_save_heatmaps(p, &c, g_tok, dir, NULL));
    int files_written = 0;
    DIR *d = opendir(dir);
    struct dirent *e;
    while ((e = readdir(d))) files_written += strstr(e->d_name, ".png") != NULL;
    closedir(d);
    assert_int_equal(files_written, 2 * 9); /* BOS + 7 words + EOS per prompt */
    static const char *expected_names[] = {"p0_00_startoftext.png", "p0_02_cat.png", "p1_02_tiger.png",
                                           "p1_08_endoftext.png"};
    for (size_t k = 0; k < sizeof expected_names / sizeof expected_names[0]; k++) {
        snprintf(path, sizeof path, "%s/%s", dir, expected_names[k]);
        if (!sd_file_exists(path)) fail_msg("heatmap %s missing", path);
    }
    sd_image bg = {0}, tile = {0};
    assert_sd_ok(sd_image_load("data/images/chelsea.png", &bg));
    char over[600];
    snprintf(over, sizeof over, "%s/over", dir);
    assert_sd_ok(sd_p2p_save_heatmaps(p, &c, g_tok, over, &bg));
    snprintf(path, sizeof path, "%s/p1_02_tiger.png", over);
    assert_sd_ok(sd_image_load(path, &tile));
    assert_int_equal(tile.width, 256);
    sd_image_free(&tile);
    sd_image_free(&bg);
    assert_int_equal(testutil_remove_tree(dir), 0);

    sd_tensor_free(plain);
    sd_tensor_free(edited);
    sd_p2p_free(p);
    sd_ctx_free(&c);
    sd_clip_text_release(&text);
    sd_model_files_close(&files);
}

/* ------------------------------------------------------------------------------------------------
 * Errors
 * --------------------------------------------------------------------------------------------- */

static void test_errors(void **state) {
    (void)state;
    sd_p2p_config cfg = sd_p2p_config_default();
    sd_p2p *p = NULL;
    const char *one[1] = {"a cat"};
    assert_sd_fails(sd_p2p_create(g_tok, one, 1, 30, 64, 64, &cfg, &p), SD_ERR_ARG, "1 prompts");
    const char *uneven[2] = {"a cat", "a big dog"};
    assert_sd_fails(sd_p2p_create(g_tok, uneven, 2, 30, 64, 64, &cfg, &p), SD_ERR_ARG, "a big dog");
    assert_null(p);
    const char *pair[2] = {"a cat", "a dog"};
    const char *missing[1] = {"tiger"};
    const double two[1] = {2.0};
    cfg.eq_words = missing;
    cfg.eq_values = two;
    cfg.n_eq_words = 1;
    assert_sd_fails(sd_p2p_create(g_tok, pair, 2, 30, 64, 64, &cfg, &p), SD_ERR_ARG, "tiger");
    cfg.n_eq_words = 0;
    const char *cow[1] = {"cow"};
    const sd_p2p_word_list blend[1] = {{cow, 1}};
    cfg.blend_words = blend;
    cfg.n_blend_lists = 1;
    assert_sd_fails(sd_p2p_create(g_tok, pair, 2, 30, 64, 64, &cfg, &p), SD_ERR_ARG, "cow");
    const char *cat[1] = {"cat"};
    const sd_p2p_word_list blend_cat[1] = {{cat, 1}};
    cfg.blend_words = blend_cat;
    assert_sd_fails(sd_p2p_create(g_tok, pair, 2, 0, 64, 64, &cfg, &p), SD_ERR_ARG, "0 diffusion steps");
    assert_sd_ok(sd_p2p_create(g_tok, pair, 2, 10, 64, 64, &cfg, &p));

    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_attn_hook *h = sd_p2p_hook(p);
    sd_attn_site s = {.layer = 5, .is_cross = 1, .place = SD_PLACE_DOWN, .res_h = 16, .res_w = 16, .heads = 8,
                      .batch = 2, .q_len = 256, .kv_len = T};
    sd_tensor *maps = sd_new4(&c, 3, 16, 256, T, 0);
    /* a map before any pass began: loud, not silently unedited */
    assert_true(h->wants_probs(h, &s));
    assert_null(h->edit_probs(h, &c, &s, maps));
    assert_int_equal(sd_ctx_status(&c), SD_ERR_ARG);
    assert_true(testutil_contains(sd_last_error(), "sd_p2p_begin_pass"));
    sd_ctx_free(&c);

    assert_sd_fails(sd_p2p_begin_pass(p, 10, SD_BRANCH_COND), SD_ERR_ARG, "step 10");
    assert_sd_ok(sd_ctx_init_cpu(&c));
    /* LocalBlend with an empty store (blend from counter > int(0.2·10) = 2) */
    sd_tensor *z = sd_new4(&c, 4, 2, 4, 64, 64);
    for (int k = 0; k < 2; k++) assert_ptr_equal(sd_p2p_end_step(p, &c, z), z);
    assert_null(sd_p2p_end_step(p, &c, z));
    assert_true(testutil_contains(sd_last_error(), "store is empty"));
    sd_ctx_free(&c);

    /* a batch that is not the prompt count, and a recording tape */
    assert_sd_ok(sd_ctx_init_cpu(&c));
    assert_sd_ok(sd_p2p_begin_pass(p, 0, SD_BRANCH_COND));
    sd_attn_site wrong = s;
    wrong.batch = 4;
    maps = sd_new4(&c, 3, 32, 256, T, 0);
    assert_null(h->edit_probs(h, &c, &wrong, maps));
    assert_int_equal(sd_ctx_status(&c), SD_ERR_SHAPE);
    assert_true(testutil_contains(sd_last_error(), "layer 5"));
    sd_ctx_free(&c);
    assert_sd_ok(sd_ctx_init_cpu(&c));
    sd_tape *tape = sd_tape_new();
    sd_ctx_set_tape(&c, tape);
    maps = sd_new4(&c, 3, 16, 256, T, 0);
    assert_null(h->edit_probs(h, &c, &s, maps));
    assert_int_equal(sd_ctx_status(&c), SD_ERR_UNSUPPORTED);
    sd_ctx_set_tape(&c, NULL);
    sd_tape_free(tape);
    sd_ctx_free(&c);
    assert_int_equal(sd_p2p_stored_passes(p), 0);
    sd_p2p_free(p);
}

int main(void) {
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_edit_cases),
        cmocka_unit_test(test_local_blend_flows),
        cmocka_unit_test(test_site_policy_sd_resolution),
        cmocka_unit_test(test_tiny_unet_editing),
        cmocka_unit_test(test_errors),
    };
    return cmocka_run_group_tests(tests, setup_all, teardown_all);
}
