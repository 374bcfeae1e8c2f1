/* cmd_eval.c: `stylediff eval RESULTS`: the quality of a batch run (stylediff.md §6), row by row
 * and over the dataset, from the folder `stylediff batch` wrote:
 *   reconstruction  PSNR and SSIM (scikit-image's definitions) of the edit's source row — the
 *                   inversion sampled back under the editing loop — against the input photo
 *                   cropped and resized as the batch fed it (§6.4);
 *   CLIPScore       of the edit against the target prompt (--clip-score DIR: a CLIPModel folder;
 *                   torchmetrics' 100·max(cos, 0) per row, and the dataset mean both as torchmetrics
 *                   (clamp of the mean) and as Hessel et al. (mean of clamps, weight 2.5)) (§6.3);
 *   Structure-dist  DINO ViT self-similarity distance between the photo and the edit (--dino DIR:
 *                   a ViTModel folder such as facebook/dino-vitb8) (§6.2);
 *   NS-LPIPS        LPIPS outside the edited region (--lpips FILE: tools/convert_lpips.py's
 *                   weights) with the background mask storemask.py makes: a DDIM inversion of
 *                   the photo with the source prompt and the row's first source blend word
 *                   (§6.1), cached in RESULTS/masks/ (foreground and background PNGs named by case,
 *                   word, model fingerprint and steps); --masks DIR takes "<case>.png" background
 *                   masks instead.
 * Each metric runs only when its model is given; a row or metric that fails is reported and the
 * others go on (the exit status is then 1). RESULTS/eval_report.json is rewritten atomically after every row. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "csv_rows.h"
#include "sd/blend_mask.h"
#include "sd/eval_models.h"
#include "sd/image_metrics.h"
#include "sd/lpips.h"

enum { M_PSNR, M_SSIM, M_CLIP, M_STRUCT, M_NSLPIPS, N_METRICS };
static const char *const METRIC_KEY[N_METRICS] = {"psnr_db", "ssim", "clip_score", "structure_dist", "ns_lpips"};

typedef struct {
    sd_ctx *c;
    sd_model *model; /* NULL unless masks are made here */
    sd_clip_score_model *clip;
    sd_vit *dino;
    sd_lpips *lpips;
    const char *masks_dir, *results_dir, *root;
    int mask_steps, range_fix;
    double sum[N_METRICS];
    int count[N_METRICS];
    double *cosines; /* per evaluated row, for the dataset CLIPScore means */
    int n_cosines;
    int metric_failures;
} eval_env;

static void add_metric(eval_env *e, cJSON *entry, int metric, double value) {
    cJSON_AddNumberToObject(entry, METRIC_KEY[metric], isinf(value) ? 1e308 : value);
    if (isfinite(value)) {
        e->sum[metric] += value;
        e->count[metric]++;
    }
}

static void metric_failed(eval_env *e, cJSON *entry, int metric) {
    e->metric_failures++;
    char key[64];
    snprintf(key, sizeof key, "%s_error", METRIC_KEY[metric]);
    cJSON_AddStringToObject(entry, key, sd_last_error());
    fprintf(stderr, "stylediff eval: %s: %s\n", METRIC_KEY[metric], sd_last_error());
    sd_clear_error();
}

/* The background mask of a row: --masks DIR/<case>.png, else made with the model (cached). */
static sd_status row_mask(eval_env *e, const csv_edit *row, const sd_image *photo, sd_image *mask) {
    char path[4096];
    if (e->masks_dir) {
        snprintf(path, sizeof path, "%s/%ld.png", e->masks_dir, row->case_number);
        return sd_image_load(path, mask);
    }
    if (row->n_blend[0] == 0)
        return sd_fail(SD_ERR_ARG, "case %ld has no blend word: NS-LPIPS needs one to place its mask (or pass --masks)",
                       row->case_number);
    /* cached per case, word, model and step count: another model or --mask-steps makes new masks */
    snprintf(path, sizeof path, "%s/masks/%ld %s (model %016llx, %d steps) background.png", e->results_dir,
             row->case_number, row->blend[0][0], (unsigned long long)e->model->fingerprint, e->mask_steps);
    if (sd_file_exists(path)) return sd_image_load(path, mask);
    sd_ctx *c = e->c;
    const sd_arena_mark keep = sd_arena_get_mark(c->keep);
    sd_tensor *x = sd_keep(c, sd_image_upload(c, photo));
    sd_image fg = {0};
    sd_status st = sd_ctx_status(c);
    if (st == SD_OK)
        st = sd_blend_word_mask(c, e->model, x, row->prompt, row->blend[0][0], e->mask_steps, &fg, mask, NULL);
    sd_arena_reset(c->keep, keep);
    if (st == SD_OK) {
        char dir[4096], fg_path[4096];
        snprintf(dir, sizeof dir, "%s/masks", e->results_dir);
        if (mkdir(dir, 0755) != 0 && errno != EEXIST) st = sd_fail(SD_ERR_IO, "%s: cannot create: %s", dir, strerror(errno));
        snprintf(fg_path, sizeof fg_path, "%s/masks/%ld %s (model %016llx, %d steps) foreground.png", e->results_dir,
                 row->case_number, row->blend[0][0], (unsigned long long)e->model->fingerprint, e->mask_steps);
        if (st == SD_OK) st = sd_image_save_png(fg_path, &fg);
        if (st == SD_OK) st = sd_image_save_png(path, mask);
    }
    sd_image_free(&fg);
    return st;
}

/* Every requested metric of one row; each failure is recorded in the entry, the others go on. */
static void eval_row(eval_env *e, const csv_edit *row, const char *edit_path, const char *source_path,
                     cJSON *entry) {
    sd_image edit = {0}, recon = {0}, photo = {0};
    if (sd_image_load(edit_path, &edit)) {
        cJSON_AddStringToObject(entry, "error", sd_last_error());
        sd_clear_error();
        return;
    }
    char photo_path[4096];
    snprintf(photo_path, sizeof photo_path, "%s/%s", e->root, row->image_path);
    /* the photo as the batch fed it: load_512 at the edit's size */
    if (sd_image_load_512(photo_path, 0, 0, 0, 0, edit.width, &photo)) {
        cJSON_AddStringToObject(entry, "error", sd_last_error());
        sd_clear_error();
        sd_image_free(&edit);
        return;
    }
    if (source_path && sd_image_load(source_path, &recon) == SD_OK) {
        add_metric(e, entry, M_PSNR, sd_image_psnr(&recon, &photo));
        double ssim = 0;
        if (sd_image_ssim(&recon, &photo, source_path, &ssim) == SD_OK) add_metric(e, entry, M_SSIM, ssim);
        else metric_failed(e, entry, M_SSIM);
    } else if (source_path) {
        metric_failed(e, entry, M_PSNR);
    }
    sd_ctx *c = e->c;
    if (e->clip) {
        double cosine = 0;
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        if (sd_clip_score_cosine(c, e->clip, &edit, edit_path, row->target, &cosine) == SD_OK) {
            add_metric(e, entry, M_CLIP, sd_clip_score_pair(cosine, SD_CLIP_SCORE_WEIGHT_TORCHMETRICS));
            cJSON_AddNumberToObject(entry, "clip_cosine", cosine);
            e->cosines[e->n_cosines++] = cosine;
        } else {
            metric_failed(e, entry, M_CLIP);
        }
        sd_arena_reset(c->arena, mark);
        c->status = SD_OK;
    }
    if (e->dino) {
        double dist = 0;
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        if (sd_structure_dist(c, e->dino, &photo, &edit, &dist) == SD_OK) add_metric(e, entry, M_STRUCT, dist);
        else metric_failed(e, entry, M_STRUCT);
        sd_arena_reset(c->arena, mark);
        c->status = SD_OK;
    }
    if (e->lpips) {
        sd_image mask = {0};
        double d = 0;
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const sd_ns_lpips_options o = {0, e->range_fix};
        if (row_mask(e, row, &photo, &mask) == SD_OK && sd_ns_lpips_images(c, e->lpips, &photo, &edit, &mask, &o, &d) == SD_OK)
            add_metric(e, entry, M_NSLPIPS, d);
        else
            metric_failed(e, entry, M_NSLPIPS);
        sd_arena_reset(c->arena, mark);
        c->status = SD_OK;
        c->hook = NULL;
        sd_image_free(&mask);
    }
    sd_image_free(&edit);
    sd_image_free(&recon);
    sd_image_free(&photo);
}

static cJSON *read_json(const char *path) {
    char *text = NULL;
    size_t len = 0;
    if (sd_read_file(path, &text, &len)) return NULL;
    cJSON *doc = cJSON_Parse(text);
    free(text);
    if (!doc) sd_fail(SD_ERR_FORMAT, "%s: not valid JSON", path);
    return doc;
}

/* The decoded CSV row a report entry came from (by its "row" index), checked against the entry. */
static sd_status row_of(const csv_table *t, const char *csv_path, const cJSON *entry, csv_edit *out) {
    const cJSON *row = cJSON_GetObjectItemCaseSensitive(entry, "row");
    if (!cJSON_IsNumber(row) || row->valueint < 0 || row->valueint >= t->n_rows)
        return sd_fail(SD_ERR_FORMAT, "a report row has no valid \"row\" index into %s", csv_path);
    SD_TRY(csv_edit_decode(t, row->valueint, csv_path, out));
    const char *target = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "target"));
    if (target && strcmp(target, out->target))
        return sd_fail(SD_ERR_FORMAT, "%s line %d changed since the batch ran (target \"%s\", report \"%s\")", csv_path,
                       t->line[row->valueint], out->target, target);
    return SD_OK;
}

int cmd_eval(int argc, char **argv) {
    const char *model_path = NULL, *root = NULL, *clip_dir = NULL, *clip_tok = NULL, *dino_dir = NULL;
    const char *lpips_path = NULL, *masks_dir = NULL, *out_path = NULL, *device = NULL, *precision = NULL;
    int mask_steps = SD_BLEND_MASK_STEPS, range_fix = 0, quiet = 0;
    const cli_opt opts[] = {
        {"root", 0, CLI_STR, &root, "DIR", "folder the CSV's image paths are relative to (default: the batch's)", 1, 0},
        {"model", 'm', CLI_STR, &model_path, "MODEL", "SD model for the NS-LPIPS masks (default: the batch's)", 1, 0},
        {"clip-score", 0, CLI_STR, &clip_dir, "DIR", "CLIPModel folder (e.g. openai/clip-vit-large-patch14): CLIPScore", 1, 0},
        {"clip-tokenizer", 0, CLI_STR, &clip_tok, "DIR", "its vocab.json + merges.txt when not in DIR", 1, 0},
        {"dino", 0, CLI_STR, &dino_dir, "DIR", "ViTModel folder (facebook/dino-vitb8): Structure-dist", 1, 0},
        {"lpips", 0, CLI_STR, &lpips_path, "FILE", "LPIPS AlexNet weights (tools/convert_lpips.py): NS-LPIPS", 1, 0},
        {"masks", 0, CLI_STR, &masks_dir, "DIR", "background masks <case>.png instead of making them", 1, 0},
        {"mask-steps", 0, CLI_INT, &mask_steps, "N", "DDIM steps of the mask inversion (default 50)", 1, 1000},
        {"lpips-range-fix", 0, CLI_FLAG, &range_fix, NULL, "feed LPIPS [-1, 1] images (a deviation from the reference)", 1, 0},
        {"output", 'o', CLI_STR, &out_path, "FILE", "report (default RESULTS/eval_report.json)", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bars or notices", 1, 0},
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"eval", NULL, "RESULTS [--clip-score DIR] [--dino DIR] [--lpips FILE] [options]",
                             "Scores a `stylediff batch` results folder: reconstruction PSNR/SSIM always;\n"
                             "CLIPScore, Structure-dist and NS-LPIPS when their models are given. Writes\n"
                             "RESULTS/eval_report.json (per row and dataset means) and prints a table.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    const char *results = pos[0];
    char report_path[4096], default_out[4096];
    snprintf(report_path, sizeof report_path, "%s/batch_report.json", results);
    snprintf(default_out, sizeof default_out, "%s/eval_report.json", results);
    if (!out_path) out_path = default_out;
    cJSON *batch = read_json(report_path);
    if (!batch) return cli_fail("eval", SD_ERR_IO);
    const char *csv_path = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(batch, "csv"));
    if (!root) root = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(batch, "root"));
    if (!root) root = ".";
    if (!model_path) {
        const char *m = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(batch, "model"));
        if (m && *m) model_path = m;
    }
    const cJSON *rows = cJSON_GetObjectItemCaseSensitive(batch, "rows");
    csv_table table;
    memset(&table, 0, sizeof table);
    sd_status st = SD_OK;
    if (!csv_path || !cJSON_IsArray(rows))
        st = sd_fail(SD_ERR_FORMAT, "%s: not a stylediff batch report (no \"csv\" or \"rows\")", report_path);
    if (st == SD_OK) st = csv_read(csv_path, &table);

    sd_model model;
    sd_clip_score_model clip;
    sd_vit dino;
    sd_lpips lpips;
    memset(&model, 0, sizeof model);
    memset(&clip, 0, sizeof clip);
    memset(&dino, 0, sizeof dino);
    memset(&lpips, 0, sizeof lpips);
    int have_model = 0, have_clip = 0, have_dino = 0, have_lpips = 0, have_ctx = 0;
    const int need_model = lpips_path && !masks_dir;
    if (st == SD_OK && need_model && !(st = sd_model_load(model_path, &model))) have_model = 1;
    if (st == SD_OK && clip_dir && !(st = sd_clip_score_load(clip_dir, clip_tok, &clip))) have_clip = 1;
    if (st == SD_OK && dino_dir && !(st = sd_vit_load(dino_dir, &dino))) have_dino = 1;
    if (st == SD_OK && lpips_path && !(st = sd_lpips_load(lpips_path, &lpips))) have_lpips = 1;
    sd_ctx c;
    char where[256] = "";
    if (st == SD_OK && !(st = cli_open_context(device, precision, have_model ? &model : NULL, &c, where, sizeof where)))
        have_ctx = 1;
    if (st == SD_OK && have_clip) st = sd_ctx_adopt_weights(&c, clip.vision.owned);
    if (st == SD_OK && have_clip) st = sd_ctx_adopt_weights(&c, clip.text_weights);
    if (st == SD_OK && have_dino) st = sd_ctx_adopt_weights(&c, dino.owned);
    if (st == SD_OK && have_lpips) st = sd_ctx_adopt_weights(&c, lpips.owned);

    const int n_rows = cJSON_IsArray(rows) ? cJSON_GetArraySize(rows) : 0;
    eval_env e = {&c, have_model ? &model : NULL, have_clip ? &clip : NULL, have_dino ? &dino : NULL,
                  have_lpips ? &lpips : NULL, masks_dir, results, root, mask_steps, range_fix,
                  {0}, {0}, calloc((size_t)n_rows + 1, sizeof(double)), 0, 0};
    if (st == SD_OK && !e.cosines) st = sd_fail(SD_ERR_OOM, "out of memory");
    cJSON *report = cJSON_CreateObject();
    cJSON_AddStringToObject(report, "results", results);
    cJSON_AddStringToObject(report, "device", where);
    cJSON_AddStringToObject(report, "ns_lpips_inputs", range_fix ? "[-1, 1] (range fix: a deviation)" : "[0, 1] (reference)");
    cJSON *out_rows = cJSON_AddArrayToObject(report, "rows");
    int evaluated = 0, failed = 0;
    for (int i = 0; i < n_rows && st == SD_OK; i++) {
        const cJSON *entry = cJSON_GetArrayItem(rows, i);
        const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "status"));
        const char *edit = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "edit"));
        const char *source = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "source"));
        if (!edit || (status && strcmp(status, "done") && strcmp(status, "skipped"))) continue; /* not edited */
        cJSON *out = cJSON_CreateObject();
        csv_edit row;
        if (row_of(&table, csv_path, entry, &row) == SD_OK) {
            cJSON_AddNumberToObject(out, "case_number", (double)row.case_number);
            cJSON_AddStringToObject(out, "target", row.target);
            cJSON_AddStringToObject(out, "edit", edit);
            if (!quiet) fprintf(stderr, "eval: case %ld \"%s\"\n", row.case_number, row.target);
            eval_row(&e, &row, edit, source, out);
        } else {
            cJSON_AddStringToObject(out, "error", sd_last_error());
            fprintf(stderr, "stylediff eval: %s\n", sd_last_error());
            sd_clear_error();
        }
        failed += cJSON_GetObjectItemCaseSensitive(out, "error") != NULL;
        evaluated++;
        cJSON_AddItemToArray(out_rows, out);
        /* rewritten after every row: an interruption keeps what was measured */
        cJSON *means = cJSON_CreateObject();
        for (int k = 0; k < N_METRICS; k++)
            if (e.count[k]) cJSON_AddNumberToObject(means, METRIC_KEY[k], e.sum[k] / e.count[k]);
        if (e.n_cosines) {
            cJSON_AddNumberToObject(means, "clip_score_torchmetrics", sd_clip_score_mean_torchmetrics(e.cosines, e.n_cosines));
            cJSON_AddNumberToObject(means, "clip_score_hessel",
                                    sd_clip_score_mean_hessel(e.cosines, e.n_cosines, SD_CLIP_SCORE_WEIGHT_HESSEL));
        }
        cJSON_DeleteItemFromObjectCaseSensitive(report, "means");
        cJSON_AddItemToObject(report, "means", means);
        cJSON *snapshot = cJSON_Duplicate(report, 1);
        if (snapshot && cli_write_json(out_path, snapshot) != SD_OK) fprintf(stderr, "stylediff eval: %s\n", sd_last_error());
    }
    if (st == SD_OK) {
        printf("eval %s: %d rows (%d failed, %d metrics could not be computed), %s\n", results, evaluated, failed,
               e.metric_failures, where);
        printf("%-16s %10s %8s\n", "metric", "mean", "rows");
        for (int k = 0; k < N_METRICS; k++)
            if (e.count[k]) printf("%-16s %10.4f %8d\n", METRIC_KEY[k], e.sum[k] / e.count[k], e.count[k]);
        if (e.n_cosines)
            printf("CLIPScore over the dataset: %.4f (torchmetrics: 100·max(mean cos, 0)), %.4f (Hessel: mean of "
                   "2.5·max(cos, 0))\n",
                   sd_clip_score_mean_torchmetrics(e.cosines, e.n_cosines),
                   sd_clip_score_mean_hessel(e.cosines, e.n_cosines, SD_CLIP_SCORE_WEIGHT_HESSEL));
        printf("report: %s\n", out_path);
    }
    cJSON_Delete(report);
    cJSON_Delete(batch);
    free(e.cosines);
    csv_free(&table);
    if (have_ctx) sd_ctx_free(&c);
    if (have_lpips) sd_lpips_release(&lpips);
    if (have_dino) sd_vit_release(&dino);
    if (have_clip) sd_clip_score_release(&clip);
    if (have_model) sd_model_free(&model);
    if (st) return cli_fail("eval", st);
    return failed || e.metric_failures ? 1 : 0;
}
