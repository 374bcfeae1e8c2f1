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
 * others go on (the exit status is then 1). RESULTS/eval_report.json is rewritten atomically after every row.
 *
 * Like `stylediff batch`, it runs alone, as the parent of --devices LIST (one worker process per
 * device, workers.c; the rows of a case stay on one worker, since the NS-LPIPS mask cache is per
 * case; the parent loads no model and merges the workers' RESULTS/eval_report.part-K.json into the
 * report, recomputing the dataset means from the merged rows), or as worker --shard K/N. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "batch_shard.h"
#include "cli.h"
#include "csv_rows.h"
#include "sd/blend_mask.h"
#include "sd/device.h"
#include "sd/eval_models.h"
#include "sd/image_metrics.h"
#include "sd/lpips.h"
#include "workers.h"

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
    int metric_failures;
} eval_env;

/* An infinite value (the PSNR of identical images) is written as 1e308, which JSON can hold, and
 * left out of the means (dataset_means). */
static void add_metric(eval_env *e, cJSON *entry, int metric, double value) {
    cJSON_AddNumberToObject(entry, METRIC_KEY[metric], isinf(value) ? 1e308 : value);
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

/* Whether a batch report row has an edit to score: done, or skipped because done earlier. */
static int has_edit(const cJSON *entry) {
    const char *status = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "status"));
    const char *edit = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "edit"));
    return edit && (!status || !strcmp(status, BATCH_DONE) || !strcmp(status, BATCH_SKIPPED));
}

/* The shard of every row of the batch report, the same in the parent and in each worker (they read
 * the same report): rows with an edit, grouped by case (a case's rows share its NS-LPIPS mask, made
 * once and cached), balanced over n_shards; -1 for rows without an edit. */
static sd_status plan_rows(const cJSON *rows, int n_rows, int n_shards, int *shard_of_row) {
    char **keys = calloc((size_t)(n_rows > 0 ? n_rows : 1), sizeof *keys);
    sd_status st = keys ? SD_OK : sd_fail(SD_ERR_OOM, "out of memory planning %d rows", n_rows);
    for (int i = 0; i < n_rows && !st; i++) {
        const cJSON *entry = cJSON_GetArrayItem(rows, i);
        if (!has_edit(entry)) continue;
        const cJSON *case_number = cJSON_GetObjectItemCaseSensitive(entry, "case_number");
        /* a row without a case number is grouped alone: its worker reports what is wrong with it */
        const int written = cJSON_IsNumber(case_number) ? asprintf(&keys[i], "case %.17g", case_number->valuedouble)
                                                        : asprintf(&keys[i], "\x1erow %d", i);
        if (written < 0) {
            keys[i] = NULL; /* asprintf leaves it undefined on failure */
            st = sd_fail(SD_ERR_OOM, "out of memory planning %d rows", n_rows);
        }
    }
    if (!st) st = batch_plan_shards(n_rows, (const char *const *)keys, n_shards, shard_of_row);
    for (int i = 0; keys && i < n_rows; i++) free(keys[i]);
    free(keys);
    return st;
}

/* The dataset means of evaluated rows: each metric over the rows with a finite value of it (the
 * 1e308 standing for an infinite PSNR is left out), and the dataset CLIPScore both ways from the
 * rows' "clip_cosine". Computed from the rows, not while measuring, so that a merged report's means
 * are those of all its rows. counts receives how many rows each metric has. */
static cJSON *dataset_means(const cJSON *rows, int counts[N_METRICS], double means[N_METRICS], int *n_cosines,
                            double clip_means[2]) {
    double sum[N_METRICS] = {0};
    const int n_rows = cJSON_GetArraySize(rows);
    double *cosines = calloc((size_t)n_rows + 1, sizeof *cosines);
    *n_cosines = 0;
    for (int k = 0; k < N_METRICS; k++) counts[k] = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, rows) {
        for (int k = 0; k < N_METRICS; k++) {
            const cJSON *value = cJSON_GetObjectItemCaseSensitive(row, METRIC_KEY[k]);
            if (cJSON_IsNumber(value) && isfinite(value->valuedouble) && fabs(value->valuedouble) < 1e308) {
                sum[k] += value->valuedouble;
                counts[k]++;
            }
        }
        const cJSON *cosine = cJSON_GetObjectItemCaseSensitive(row, "clip_cosine");
        if (cosines && cJSON_IsNumber(cosine)) cosines[(*n_cosines)++] = cosine->valuedouble;
    }
    cJSON *out = cJSON_CreateObject();
    for (int k = 0; k < N_METRICS; k++) {
        means[k] = counts[k] ? sum[k] / counts[k] : NAN;
        if (counts[k]) cJSON_AddNumberToObject(out, METRIC_KEY[k], means[k]);
    }
    if (*n_cosines) {
        clip_means[0] = sd_clip_score_mean_torchmetrics(cosines, *n_cosines);
        clip_means[1] = sd_clip_score_mean_hessel(cosines, *n_cosines, SD_CLIP_SCORE_WEIGHT_HESSEL);
        cJSON_AddNumberToObject(out, "clip_score_torchmetrics", clip_means[0]);
        cJSON_AddNumberToObject(out, "clip_score_hessel", clip_means[1]);
    }
    free(cosines);
    return out;
}

/* Replaces the report's "means" with those of its rows and prints them unless print is 0. */
static void update_means(cJSON *report, int print) {
    int counts[N_METRICS], n_cosines = 0;
    double means[N_METRICS], clip_means[2];
    cJSON *means_json =
        dataset_means(cJSON_GetObjectItemCaseSensitive(report, "rows"), counts, means, &n_cosines, clip_means);
    cJSON_DeleteItemFromObjectCaseSensitive(report, "means");
    cJSON_AddItemToObject(report, "means", means_json);
    if (!print) return;
    printf("%-16s %10s %8s\n", "metric", "mean", "rows");
    for (int k = 0; k < N_METRICS; k++)
        if (counts[k]) printf("%-16s %10.4f %8d\n", METRIC_KEY[k], means[k], counts[k]);
    if (n_cosines)
        printf("CLIPScore over the dataset: %.4f (torchmetrics: 100·max(mean cos, 0)), %.4f (Hessel: mean of "
               "2.5·max(cos, 0))\n",
               clip_means[0], clip_means[1]);
}

/* How many metrics of the rows could not be computed (their "<metric>_error" entries). */
static int count_metric_errors(const cJSON *rows) {
    int n = 0;
    const cJSON *row;
    cJSON_ArrayForEach(row, rows) {
        for (int k = 0; k < N_METRICS; k++) {
            char key[64];
            snprintf(key, sizeof key, "%s_error", METRIC_KEY[k]);
            n += cJSON_GetObjectItemCaseSensitive(row, key) != NULL;
        }
    }
    return n;
}

static void part_path_of(char *out, size_t n, const char *results, int k) {
    snprintf(out, n, "%s/eval_report.part-%d.json", results, k);
}

/* The entry worker's part holds for batch report row i (its "report_row"), or NULL. */
static const cJSON *part_row(const cJSON *part, int i) {
    const cJSON *rows = part ? cJSON_GetObjectItemCaseSensitive(part, "rows") : NULL, *entry;
    cJSON_ArrayForEach(entry, rows) {
        const cJSON *r = cJSON_GetObjectItemCaseSensitive(entry, "report_row");
        if (cJSON_IsNumber(r) && r->valueint == i) return entry;
    }
    return NULL;
}

/* The parent of --devices: one worker per device, then their parts merged into out_path. */
static int run_parent(const char *results, const char *out_path, const batch_devices *devices, const cJSON *rows,
                      const int *shard_of_row, int range_fix, int quiet, int argc, char **argv) {
    sd_status st = workers_check_devices(devices);
    if (st) return cli_fail("eval", st);
    const int n = devices->n, n_rows = cJSON_GetArraySize(rows);
    char logs_dir[4200], part_path[4400];
    snprintf(logs_dir, sizeof logs_dir, "%s/logs", results);
    if (mkdir(logs_dir, 0755) != 0 && errno != EEXIST)
        return cli_fail("eval", sd_fail(SD_ERR_IO, "%s: cannot create the folder: %s", logs_dir, strerror(errno)));
    /* a part left by an earlier run must not pass for the part of a worker that wrote none */
    for (int k = 0; k < n; k++) {
        part_path_of(part_path, sizeof part_path, results, k);
        if (remove(part_path) != 0 && errno != ENOENT)
            return cli_fail("eval", sd_fail(SD_ERR_IO, "%s: cannot remove the report part of an earlier run: %s",
                                            part_path, strerror(errno)));
    }
    batch_worker *workers = calloc((size_t)n, sizeof *workers);
    if (!workers) return cli_fail("eval", sd_fail(SD_ERR_OOM, "out of memory starting %d workers", n));
    int n_planned = 0;
    for (int i = 0; i < n_rows; i++)
        if (shard_of_row[i] >= 0) workers[shard_of_row[i]].rows_assigned++, n_planned++;
    for (int k = 0; k < n; k++) {
        snprintf(workers[k].device, sizeof workers[k].device, "%s", devices->name[k]);
        snprintf(workers[k].log_path, sizeof workers[k].log_path, "%s/eval-worker-%d.log", logs_dir, k);
    }
    if (!quiet) {
        printf("eval %s: %d rows over %d worker processes\n", results, n_planned, n);
        for (int k = 0; k < n; k++)
            printf("  worker %d: %s, %d rows, log %s\n", k, workers[k].device, workers[k].rows_assigned,
                   workers[k].log_path);
        fflush(stdout);
    }
    workers_run("eval", argc, argv, workers, n, quiet);
    for (int k = 0; k < n; k++) {
        part_path_of(part_path, sizeof part_path, results, k);
        if (workers[k].launched && sd_file_exists(part_path)) {
            workers[k].part = read_json(part_path);
            if (!workers[k].part) fprintf(stderr, "stylediff eval: %s; its rows count as not evaluated\n", sd_last_error());
        }
        sd_clear_error();
    }

    cJSON *report = cJSON_CreateObject();
    cJSON_AddStringToObject(report, "results", results);
    cJSON *devices_json = cJSON_AddArrayToObject(report, "devices");
    for (int k = 0; k < n; k++) cJSON_AddItemToArray(devices_json, cJSON_CreateString(devices->name[k]));
    cJSON_AddStringToObject(report, "ns_lpips_inputs", range_fix ? "[-1, 1] (range fix: a deviation)" : "[0, 1] (reference)");
    /* the "workers" entries as batch writes them; the rows are eval's own (matched by "report_row") */
    batch_totals totals;
    batch_merge(report, 0, shard_of_row, NULL, workers, n, &totals);
    cJSON *worker_json;
    cJSON_ArrayForEach(worker_json, cJSON_GetObjectItemCaseSensitive(report, "workers")) {
        const cJSON *k = cJSON_GetObjectItemCaseSensitive(worker_json, "worker");
        if (cJSON_IsNumber(k) && !workers[k->valueint].rows_assigned)
            cJSON_ReplaceItemInObjectCaseSensitive(worker_json, "status",
                                                   cJSON_CreateString("idle (no rows: fewer cases than devices)"));
    }
    cJSON *out_rows = cJSON_GetObjectItemCaseSensitive(report, "rows");
    int evaluated = 0, failed = 0, not_evaluated = 0;
    for (int i = 0; i < n_rows; i++) {
        const int k = shard_of_row[i];
        if (k < 0) continue;
        const batch_worker *w = &workers[k];
        const cJSON *reported = part_row(w->part, i);
        cJSON *entry = reported ? cJSON_Duplicate(reported, 1) : cJSON_CreateObject();
        if (!entry) continue;
        if (!reported) {
            const cJSON *batch_entry = cJSON_GetArrayItem(rows, i);
            const char *keys[] = {"case_number", "target", "edit"};
            for (int j = 0; j < 3; j++) {
                const cJSON *item = cJSON_GetObjectItemCaseSensitive(batch_entry, keys[j]);
                if (item) cJSON_AddItemToObject(entry, keys[j], cJSON_Duplicate(item, 1));
            }
            cJSON_AddNumberToObject(entry, "report_row", i);
            char failure[1024], why[2048];
            if (!batch_worker_failed(w, failure, sizeof failure))
                snprintf(why, sizeof why, "not evaluated: worker %d (%s) finished without reporting this row (did %s/"
                                          "batch_report.json change during the run?)", k, w->device, results);
            else
                snprintf(why, sizeof why, "not evaluated: worker %d (%s) %s before this row%s%s%s; see %s", k,
                         w->device, failure, w->last_log_line[0] ? " (its log ends: \"" : "", w->last_log_line,
                         w->last_log_line[0] ? "\")" : "", w->log_path);
            cJSON_AddStringToObject(entry, "error", why);
            not_evaluated++;
        }
        cJSON_DeleteItemFromObjectCaseSensitive(entry, "worker");
        cJSON_DeleteItemFromObjectCaseSensitive(entry, "device");
        cJSON_AddNumberToObject(entry, "worker", k);
        cJSON_AddStringToObject(entry, "device", w->device);
        failed += cJSON_GetObjectItemCaseSensitive(entry, "error") != NULL;
        evaluated++;
        cJSON_AddItemToArray(out_rows, entry);
    }
    const int metric_errors = count_metric_errors(out_rows);
    update_means(report, 0);
    st = cli_write_json(out_path, cJSON_Duplicate(report, 1)); /* atomic: an earlier report stays whole */
    if (st) fprintf(stderr, "stylediff eval: %s\n", sd_last_error());
    workers_report_and_release("eval", workers, n);
    printf("eval %s: %d rows (%d failed, %d not evaluated, %d metrics could not be computed) on %d workers "
           "(%d failed)\n",
           results, evaluated, failed, not_evaluated, metric_errors, n, totals.workers_failed);
    update_means(report, 1);
    printf("report: %s\n", out_path);
    cJSON_Delete(report);
    free(workers);
    return (st || failed || metric_errors || totals.workers_failed) ? 1 : 0;
}

int cmd_eval(int argc, char **argv) {
    const char *model_path = NULL, *root = NULL, *clip_dir = NULL, *clip_tok = NULL, *dino_dir = NULL;
    const char *lpips_path = NULL, *masks_dir = NULL, *out_path = NULL, *device = NULL, *precision = NULL;
    const char *devices_spec = NULL, *shard_spec = NULL;
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
        {"devices", 0, CLI_STR, &devices_spec, "LIST",
         "one worker process per device: cuda:0,cuda:1,... | all (every visible GPU) | cpu,cpu", 1, 0},
        {"shard", 0, CLI_STR, &shard_spec, "K/N", "(internal, set by --devices) evaluate worker K's rows of N", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bars or notices", 1, 0},
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"eval", NULL, "RESULTS [--clip-score DIR] [--dino DIR] [--lpips FILE] [--devices LIST] [options]",
                             "Scores a `stylediff batch` results folder: reconstruction PSNR/SSIM always;\n"
                             "CLIPScore, Structure-dist and NS-LPIPS when their models are given. Writes\n"
                             "RESULTS/eval_report.json (per row and dataset means) and prints a table.\n"
                             "\n"
                             "--devices LIST splits the rows over one worker process per device (the rows of\n"
                             "a case stay on one worker: they share its NS-LPIPS mask). Worker K writes\n"
                             "RESULTS/eval_report.part-K.json after every row and logs to\n"
                             "RESULTS/logs/eval-worker-K.log; when all have ended, the parts are merged into\n"
                             "the report (batch report order, each row with its worker and device; the means\n"
                             "recomputed over all rows). A row a failed worker never reached is reported\n"
                             "\"not evaluated\" with the reason. Example: --devices cuda:0,cuda:1\n"
                             "\n"
                             "Exit status: 0 when every row and metric was computed, 1 when one was not or a\n"
                             "worker failed; 2 on a usage error.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    const char *results = pos[0];

    int shard = 0, n_shards = 1;
    batch_devices devices;
    sd_status st = workers_parse_role(shard_spec, devices_spec, device, &devices, &shard, &n_shards);
    if (st) return cli_fail("eval", st);

    char report_path[4096], default_out[4096], worker_out[4400];
    snprintf(report_path, sizeof report_path, "%s/batch_report.json", results);
    snprintf(default_out, sizeof default_out, "%s/eval_report.json", results);
    if (!out_path) out_path = default_out;
    /* a worker writes its part where the parent looks for it, whatever -o the user gave the parent */
    if (shard_spec) {
        part_path_of(worker_out, sizeof worker_out, results, shard);
        out_path = worker_out;
    }
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
    if (!csv_path || !cJSON_IsArray(rows)) {
        cJSON_Delete(batch);
        return cli_fail("eval", sd_fail(SD_ERR_FORMAT, "%s: not a stylediff batch report (no \"csv\" or \"rows\")",
                                        report_path));
    }
    const int n_rows = cJSON_GetArraySize(rows);
    int *shard_of_row = malloc(sizeof *shard_of_row * (size_t)(n_rows > 0 ? n_rows : 1));
    st = shard_of_row ? plan_rows(rows, n_rows, n_shards, shard_of_row) : sd_fail(SD_ERR_OOM, "out of memory");
    if (st) {
        free(shard_of_row);
        cJSON_Delete(batch);
        return cli_fail("eval", st);
    }
    if (devices_spec && !shard_spec) {
        r = run_parent(results, out_path, &devices, rows, shard_of_row, range_fix, quiet, argc, argv);
        free(shard_of_row);
        cJSON_Delete(batch);
        return r;
    }

    csv_table table;
    memset(&table, 0, sizeof table);
    st = csv_read(csv_path, &table);

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

    eval_env e = {&c, have_model ? &model : NULL, have_clip ? &clip : NULL, have_dino ? &dino : NULL,
                  have_lpips ? &lpips : NULL, masks_dir, results, root, mask_steps, range_fix, 0};
    cJSON *report = cJSON_CreateObject();
    cJSON_AddStringToObject(report, "results", results);
    cJSON_AddStringToObject(report, "device", where);
    cJSON_AddStringToObject(report, "ns_lpips_inputs", range_fix ? "[-1, 1] (range fix: a deviation)" : "[0, 1] (reference)");
    if (shard_spec) {
        cJSON_AddNumberToObject(report, "worker", shard);
        cJSON_AddNumberToObject(report, "n_workers", n_shards);
    }
    cJSON *out_rows = cJSON_AddArrayToObject(report, "rows");
    int evaluated = 0, failed = 0;
    for (int i = 0; i < n_rows && st == SD_OK; i++) {
        if (shard_of_row[i] != shard) continue; /* not edited, or another worker's */
        const cJSON *entry = cJSON_GetArrayItem(rows, i);
        const char *edit = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "edit"));
        const char *source = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "source"));
        cJSON *out = cJSON_CreateObject();
        cJSON_AddNumberToObject(out, "report_row", i); /* its place in batch_report.json: how parts merge */
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
        update_means(report, 0);
        cJSON *snapshot = cJSON_Duplicate(report, 1);
        if (snapshot && cli_write_json(out_path, snapshot) != SD_OK) fprintf(stderr, "stylediff eval: %s\n", sd_last_error());
    }
    if (st == SD_OK && shard_spec) {
        /* the parent trusts a part only when it says the worker got to its end */
        cJSON_AddBoolToObject(report, "finished", 1);
        update_means(report, 0);
        if (cli_write_json(out_path, cJSON_Duplicate(report, 1)) != SD_OK) {
            fprintf(stderr, "stylediff eval: %s\n", sd_last_error());
            failed++;
        }
    }
    if (st == SD_OK) {
        printf("eval %s: %d rows (%d failed, %d metrics could not be computed), %s\n", results, evaluated, failed,
               e.metric_failures, where);
        update_means(report, 1);
        printf("report: %s\n", out_path);
    }
    cJSON_Delete(report);
    cJSON_Delete(batch);
    free(shard_of_row);
    csv_free(&table);
    if (have_ctx) sd_ctx_free(&c);
    if (have_lpips) sd_lpips_release(&lpips);
    if (have_dino) sd_vit_release(&dino);
    if (have_clip) sd_clip_score_release(&clip);
    if (have_model) sd_model_free(&model);
    if (st) return cli_fail("eval", st);
    return failed || e.metric_failures ? 1 : 0;
}
