/* cmd_batch.c: `stylediff batch CSV --method M -o DIR`: the reference's dataset runner
 * (stylediffusion_csv.py): every row of an editing CSV is inverted (once per image, prompt and
 * method: the inversion is cached in DIR/inversions/ and reused while it matches) and edited.
 * A bad row is reported and skipped; rows already written stay; the exit status says whether any
 * row failed.
 *
 * It runs in one of three roles:
 *   - alone (no --devices): this process runs every row and rewrites DIR/batch_report.json after
 *     each one;
 *   - parent (--devices LIST): splits the rows into one shard per device (batch_shard.c: rows that
 *     share an image and prompt share an inversion, so they stay together) and starts one worker
 *     process per device (workers.c: this same binary with the original arguments plus
 *     --shard K/N --device DEV). The parent loads no model; it waits, then merges the workers'
 *     report parts into DIR/batch_report.json. Rows are independent (no gradient or tensor ever crosses devices), so
 *     the workers never talk to each other and no NCCL is needed: all they share is the folder
 *     (the inversion cache, written atomically, and their own report parts);
 *   - worker (--shard K/N, set by the parent): runs shard K's rows and rewrites
 *     DIR/batch_report.part-K.json after each one; its output goes to DIR/logs/worker-K.log.
 * With --resume, a row an earlier run with the same settings recorded as done, and whose edit PNG
 * still exists, is skipped in every role. */
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
#include "sd/clip_vision.h"
#include "sd/device.h"
#include "sd/edit.h"
#include "sd/presets.h"
#include "workers.h"

static sd_status make_dir(const char *path) {
    if (mkdir(path, 0755) == 0 || errno == EEXIST) return SD_OK;
    return sd_fail(SD_ERR_IO, "%s: cannot create the folder: %s", path, strerror(errno));
}

/* Replaces characters that do not belong in a file name. */
static void safe_name(char *out, size_t n, const char *text) {
    static const char forbidden[] = "/\\:*?\"<>|\n\r\t";
    size_t k = 0;
    for (const char *p = text; *p && k + 1 < n; p++) out[k++] = strchr(forbidden, *p) ? '_' : *p;
    out[k] = '\0';
}

typedef struct {
    sd_model *m;
    sd_clip_vision *clip; /* NULL unless stylediffusion */
    sd_ctx *c;
    const sd_invert_options *invert;
    const char *out_dir, *root;
    int size;
} batch_env;

/* The inversion of one row: loaded from the cache when prompt, image and model match, else made. */
static sd_status row_inversion(const batch_env *e, const csv_edit *row, sd_inversion *inv, int *reused) {
    char image_path[4096], cache[4096];
    snprintf(image_path, sizeof image_path, "%s/%s", e->root, row->image_path);
    sd_image input = {0};
    SD_TRY(sd_image_load_512(image_path, 0, 0, 0, 0, e->size, &input));
    const uint64_t hash = sd_hash64(input.data, (size_t)input.width * input.height * 3);
    /* one inversion per (image, prompt, method, settings): rows editing the same photo share it */
    char key_text[4096];
    snprintf(key_text, sizeof key_text, "%016llx|%s|%s|%d|%d|%.9g|%llu", (unsigned long long)hash, row->prompt,
             sd_invert_method_name(e->invert->method), e->invert->n_steps, e->invert->inner_steps, e->invert->lr,
             (unsigned long long)e->invert->seed);
    snprintf(cache, sizeof cache, "%s/inversions/%s_%016llx.safetensors", e->out_dir,
             sd_invert_method_name(e->invert->method), (unsigned long long)sd_hash64(key_text, strlen(key_text)));
    *reused = 0;
    if (sd_file_exists(cache) && sd_inversion_load(cache, inv) == SD_OK) {
        if (inv->image_hash == hash && !strcmp(inv->prompt, row->prompt) && inv->method == e->invert->method &&
            sd_inversion_check_model(inv, e->m, cache) == SD_OK) {
            *reused = 1;
            sd_image_free(&input);
            return SD_OK;
        }
        sd_inversion_free(inv);
    }
    sd_clear_error();
    const sd_arena_mark keep = sd_arena_get_mark(e->c->keep);
    sd_tensor *x = sd_keep(e->c, sd_image_upload(e->c, &input));
    const sd_arena_mark act = sd_arena_get_mark(e->c->arena);
    sd_tensor *features = e->clip ? sd_keep(e->c, sd_clip_vision_encode(e->c, e->clip, x)) : NULL;
    sd_arena_reset(e->c->arena, act); /* only the kept features outlive the encoder */
    sd_status st = sd_ctx_status(e->c);
    if (!st) st = sd_invert(e->c, e->m, e->invert, x, row->prompt, features, inv);
    if (!st) {
        inv->image_hash = hash;
        inv->image_size = e->size;
        st = sd_inversion_save(inv, cache);
    }
    sd_arena_reset(e->c->keep, keep);
    sd_image_free(&input);
    return st;
}

static sd_status run_row(const batch_env *e, const csv_edit *row, cJSON *entry) {
    sd_inversion inv;
    int reused = 0;
    SD_TRY(row_inversion(e, row, &inv, &reused));
    cJSON_AddBoolToObject(entry, "inversion_reused", reused);
    cJSON_AddNumberToObject(entry, "inversion_seconds", reused ? 0.0 : inv.seconds_total);
    sd_edit_options o;
    sd_edit_options_default(inv.method, &o);
    o.target = row->target;
    o.edit = row->refine ? SD_P2P_REFINE : SD_P2P_REPLACE;
    if (!isnan(row->tau_v)) o.tau_v = (float)row->tau_v;
    if (!isnan(row->tau_c)) o.tau_c = (float)row->tau_c;
    if (!isnan(row->tau_s)) o.tau_s = (float)row->tau_s;
    if (!isnan(row->tau_u)) o.tau_u = (float)row->tau_u;
    for (int k = 0; k < row->n_blend[0]; k++) o.blend_source[k] = row->blend[0][k];
    for (int k = 0; k < row->n_blend[1]; k++) o.blend_target[k] = row->blend[1][k];
    o.n_blend_source = row->n_blend[0];
    o.n_blend_target = row->n_blend[1];
    for (int k = 0; k < row->n_eq; k++) {
        o.reweight_words[k] = row->eq_words[k];
        o.reweight_values[k] = row->eq_values[k];
    }
    o.n_reweight = row->n_eq;
    sd_edit_result res = {0};
    sd_status st = sd_edit(e->c, e->m, &inv, &o, &res);
    if (!st) {
        char name[1024], edit_path[4096], source_path[4096];
        safe_name(name, sizeof name, row->target);
        snprintf(edit_path, sizeof edit_path, "%s/%ld %s.png", e->out_dir, row->case_number, name);
        safe_name(name, sizeof name, row->prompt);
        snprintf(source_path, sizeof source_path, "%s/%ld %s (source).png", e->out_dir, row->case_number, name);
        st = cli_write_edit_images(e->c, e->m, res.latents, edit_path, source_path);
        if (!st) {
            cJSON_AddStringToObject(entry, "edit", edit_path);
            cJSON_AddStringToObject(entry, "source", source_path);
            cJSON_AddNumberToObject(entry, "edit_seconds", res.seconds);
        }
    }
    sd_edit_result_free(&res);
    sd_inversion_free(&inv);
    return st;
}

/* What every role shares: the command line, decoded. */
typedef struct batch_settings {
    const char *csv_path, *method_name, *out_dir, *root, *model_path, *clip_dir, *config_path;
    const char *device, *precision;
    sd_invert_options invert;
    int from_case, to_case, quiet, resume, recompute, eager;
    /* what makes results comparable: --resume trusts only rows recorded under the same key */
    char run_key[8192];
} batch_settings;

/* The model, CLIP encoder and device context, opened on the first row that needs them: a resumed
 * shard whose rows are all done never loads a model. */
typedef struct batch_runtime {
    int opened, have_model, have_clip, have_ctx;
    sd_model m;
    sd_clip_vision clip;
    sd_ctx c;
    char where[256];
    batch_env env;
} batch_runtime;

static void runtime_close(batch_runtime *rt) {
    if (rt->have_ctx) sd_ctx_free(&rt->c);
    if (rt->have_clip) sd_clip_vision_release(&rt->clip);
    if (rt->have_model) sd_model_free(&rt->m);
    rt->opened = rt->have_ctx = rt->have_clip = rt->have_model = 0;
}

static sd_status runtime_open(const batch_settings *s, batch_runtime *rt) {
    sd_status st = sd_model_load(s->model_path, &rt->m);
    if (!st) rt->have_model = 1;
    if (!st && s->invert.method == SD_INVERT_STYLEDIFFUSION) {
        if (!s->clip_dir && !rt->m.builtin)
            st = sd_fail(SD_ERR_ARG, "stylediffusion needs the CLIP ViT-B/16 image encoder: pass --clip DIR");
        else if (!(st = sd_clip_vision_load(s->clip_dir ? s->clip_dir : sd_builtin_clip_vision_dir(), &rt->clip)))
            rt->have_clip = 1;
    }
    if (!st && !(st = cli_open_context(s->device, s->precision, &rt->m, &rt->c, rt->where, sizeof rt->where))) {
        rt->have_ctx = 1;
        rt->c.recompute = s->recompute;
        rt->c.eager = s->eager;
    }
    if (!st && rt->have_clip) st = sd_ctx_adopt_weights(&rt->c, rt->clip.owned);
    if (st) {
        runtime_close(rt);
        return st;
    }
    rt->env = (batch_env){&rt->m, rt->have_clip ? &rt->clip : NULL, &rt->c, &s->invert, s->out_dir, s->root,
                          8 * rt->m.unet.cfg.sample_size};
    rt->opened = 1;
    return SD_OK;
}

/* FNV-1a of every cell of the row: --resume recognises a row by it, so editing any cell of a row
 * (prompt, target, blend words, taus) makes it run again. */
static void row_hash(const csv_table *t, int row, char out[17]) {
    size_t len = 0;
    for (int col = 0; col < t->n_columns; col++) len += (t->cells[row][col] ? strlen(t->cells[row][col]) : 0) + 1;
    char *text = malloc(len + 1), *p = text;
    for (int col = 0; text && col < t->n_columns; col++) {
        const char *cell = t->cells[row][col] ? t->cells[row][col] : "";
        const size_t n = strlen(cell);
        memcpy(p, cell, n);
        p += n;
        *p++ = '\x1f';
    }
    snprintf(out, 17, "%016llx", (unsigned long long)(text ? sd_hash64(text, len) : 0));
    free(text);
}

/* The fields every report gives a row: where it is in the CSV, what it asks, the hash --resume
 * recognises it by. e is NULL for a row that does not decode. */
static cJSON *row_entry(const csv_table *t, int row, const csv_edit *e) {
    cJSON *entry = cJSON_CreateObject();
    cJSON_AddNumberToObject(entry, "line", t->line[row]);
    cJSON_AddNumberToObject(entry, "row", row);
    if (e) {
        cJSON_AddNumberToObject(entry, "case_number", (double)e->case_number);
        cJSON_AddStringToObject(entry, "prompt", e->prompt);
        cJSON_AddStringToObject(entry, "image", e->image_path);
        cJSON_AddStringToObject(entry, "target", e->target);
    }
    char hash[17];
    row_hash(t, row, hash);
    cJSON_AddStringToObject(entry, "row_hash", hash);
    return entry;
}

static int row_in_range(const batch_settings *s, const csv_edit *e) {
    return e->case_number >= s->from_case && (s->to_case < 0 || e->case_number < s->to_case);
}

/* The shard of every row, the same in the parent and in each worker (they read the same CSV):
 * rows in --from/--to are grouped by image and prompt (one inversion each); a row that does not
 * decode runs alone (its worker reports why); rows outside the range get -1. Grouping by the
 * path rather than the image's bytes: one photo under two paths is merely inverted twice. */
static sd_status plan_rows(const batch_settings *s, const csv_table *t, int n_shards, int *shard_of_row) {
    char **keys = calloc((size_t)(t->n_rows > 0 ? t->n_rows : 1), sizeof *keys);
    sd_status st = keys ? SD_OK : sd_fail(SD_ERR_OOM, "out of memory planning %d rows", t->n_rows);
    for (int row = 0; row < t->n_rows && !st; row++) {
        csv_edit e;
        int written = 0;
        if (csv_edit_decode(t, row, s->csv_path, &e) != SD_OK) {
            sd_clear_error();
            written = asprintf(&keys[row], "\x1erow %d", row);
        } else if (row_in_range(s, &e)) {
            written = asprintf(&keys[row], "%s\x1f%s", e.image_path, e.prompt);
        }
        if (written < 0) {
            keys[row] = NULL; /* asprintf leaves it undefined on failure */
            st = sd_fail(SD_ERR_OOM, "out of memory planning %d rows", t->n_rows);
        }
    }
    if (!st) st = batch_plan_shards(t->n_rows, (const char *const *)keys, n_shards, shard_of_row);
    for (int row = 0; keys && row < t->n_rows; row++) free(keys[row]);
    free(keys);
    return st;
}

static cJSON *report_header(const batch_settings *s) {
    cJSON *report = cJSON_CreateObject();
    cJSON_AddStringToObject(report, "csv", s->csv_path);
    cJSON_AddStringToObject(report, "method", s->method_name);
    cJSON_AddStringToObject(report, "run_key", s->run_key);
    /* what `stylediff eval` needs to find the photos and make the NS-LPIPS masks with the same model */
    cJSON_AddStringToObject(report, "root", s->root);
    if (s->model_path) cJSON_AddStringToObject(report, "model", s->model_path);
    return report;
}

/* Writes a copy of the report (cli_write_json frees what it writes); a failure is printed, not
 * fatal: the rows go on, and the next write may succeed. */
static void write_report(const char *path, const cJSON *report) {
    cJSON *snapshot = cJSON_Duplicate(report, 1);
    if (snapshot && cli_write_json(path, snapshot) != SD_OK) fprintf(stderr, "stylediff batch: %s\n", sd_last_error());
}

/* Alone (shard 0 of 1, report DIR/batch_report.json) or as worker `shard` (its report part): runs
 * the rows planned for `shard`, in CSV order. */
static int run_rows(const batch_settings *s, const csv_table *t, const int *shard_of_row, int shard, int n_shards,
                    int is_worker) {
    char report_path[4400];
    if (is_worker)
        snprintf(report_path, sizeof report_path, "%s/batch_report.part-%d.json", s->out_dir, shard);
    else
        snprintf(report_path, sizeof report_path, "%s/batch_report.json", s->out_dir);
    cJSON *done_before = s->resume ? batch_load_done(s->out_dir, s->run_key) : NULL;
    cJSON *report = report_header(s);
    if (is_worker) {
        cJSON_AddNumberToObject(report, "worker", shard);
        cJSON_AddNumberToObject(report, "n_workers", n_shards);
    }
    cJSON *rows_json = cJSON_AddArrayToObject(report, "rows");
    batch_runtime rt;
    memset(&rt, 0, sizeof rt);
    int done = 0, failed = 0, skipped = 0;
    sd_status fatal = SD_OK;
    char fatal_message[1024] = "";
    for (int row = 0; row < t->n_rows; row++) {
        if (shard_of_row[row] != shard) continue;
        csv_edit e;
        sd_status rs = csv_edit_decode(t, row, s->csv_path, &e);
        cJSON *entry = row_entry(t, row, rs ? NULL : &e);
        const cJSON *earlier =
            !rs && done_before
                ? batch_find_done(done_before, cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(entry, "row_hash")))
                : NULL;
        if (earlier) {
            const char *edit = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(earlier, "edit"));
            const char *source = cJSON_GetStringValue(cJSON_GetObjectItemCaseSensitive(earlier, "source"));
            cJSON_AddStringToObject(entry, "status", BATCH_SKIPPED);
            cJSON_AddStringToObject(entry, "reason", "done earlier");
            cJSON_AddStringToObject(entry, "edit", edit);
            if (source) cJSON_AddStringToObject(entry, "source", source);
            if (!s->quiet) printf("case %ld: skipped: done earlier (%s)\n", e.case_number, edit);
            skipped++;
            /* no rewrite here: the earlier report still holds this row, so nothing can be lost */
            cJSON_AddItemToArray(rows_json, entry);
            continue;
        }
        if (!rs) {
            if (!s->quiet) printf("case %ld: \"%s\" -> \"%s\"\n", e.case_number, e.prompt, e.target);
            fflush(stdout); /* a worker's log is a file: show progress as it happens */
            if (!rt.opened) {
                if ((fatal = runtime_open(s, &rt))) {
                    snprintf(fatal_message, sizeof fatal_message, "%s", sd_last_error());
                    cJSON_Delete(entry);
                    break;
                }
                cJSON_AddStringToObject(report, "device", rt.where);
            }
            rs = run_row(&rt.env, &e, entry);
            rt.c.status = SD_OK; /* a failed row must not poison the next */
            rt.c.hook = NULL;
            rt.c.tape = NULL;
        }
        if (rs) {
            failed++;
            fprintf(stderr, "stylediff batch: %s line %d: %s\n", s->csv_path, t->line[row], sd_last_error());
            cJSON_AddStringToObject(entry, "status", BATCH_FAILED);
            cJSON_AddStringToObject(entry, "error", sd_last_error());
        } else {
            done++;
            cJSON_AddStringToObject(entry, "status", BATCH_DONE);
        }
        cJSON_AddItemToArray(rows_json, entry);
        /* rewrite the report after every row: a crash later loses nothing already done */
        write_report(report_path, report);
    }
    if (!rt.opened) cJSON_AddStringToObject(report, "device", "none opened (no row needed the model)");
    cJSON_AddBoolToObject(report, "finished", !fatal);
    if (fatal) cJSON_AddStringToObject(report, "error", fatal_message);
    /* a run that could not even open its model leaves an earlier report alone */
    if (!fatal || cJSON_GetArraySize(rows_json) > 0) write_report(report_path, report);
    cJSON_Delete(report);
    cJSON_Delete(done_before);
    runtime_close(&rt);
    if (fatal) {
        sd_fail(fatal, "%s", fatal_message);
        return cli_fail("batch", fatal);
    }
    printf("batch %s: %d rows done, %d failed, %d skipped (%s, %s); report %s\n", s->csv_path, done, failed, skipped,
           s->method_name, rt.where[0] ? rt.where : "no model needed", report_path);
    return failed ? 1 : 0;
}

/* ------------------------------------------------------------------------------------------------
 * The parent of --devices: one worker process per device.
 * --------------------------------------------------------------------------------------------- */

static int run_parent(const batch_settings *s, const batch_devices *devices, const csv_table *t,
                      const int *shard_of_row, int argc, char **argv) {
    sd_status st = workers_check_devices(devices);
    if (st) return cli_fail("batch", st);
    const int n = devices->n;
    char logs_dir[4200], report_path[4400];
    snprintf(logs_dir, sizeof logs_dir, "%s/logs", s->out_dir);
    snprintf(report_path, sizeof report_path, "%s/batch_report.json", s->out_dir);
    st = make_dir(logs_dir);
    if (!st && s->resume) {
        /* Fold the rows earlier runs finished (merged report and any parts a killed run left) into
         * DIR/batch_report.json before the workers start: they read it to skip those rows, and the
         * parts they are about to rewrite may be from a run split differently. */
        cJSON *done = batch_load_done(s->out_dir, s->run_key);
        cJSON *carried = report_header(s);
        cJSON_AddStringToObject(carried, "note", "rows done by earlier runs, carried over by --resume; the run in "
                                                 "progress rewrites this file when its workers end");
        cJSON_AddItemToObject(carried, "rows", done);
        st = cli_write_json(report_path, carried);
    }
    if (!st) st = batch_remove_parts(s->out_dir);
    if (st) return cli_fail("batch", st);

    batch_worker *workers = calloc((size_t)n, sizeof *workers);
    cJSON **placeholders = calloc((size_t)(t->n_rows > 0 ? t->n_rows : 1), sizeof *placeholders);
    if (!workers || !placeholders) {
        free(workers);
        free(placeholders);
        return cli_fail("batch", sd_fail(SD_ERR_OOM, "out of memory starting %d workers", n));
    }
    int n_planned = 0;
    for (int row = 0; row < t->n_rows; row++) {
        if (shard_of_row[row] < 0) continue;
        csv_edit e;
        const int decoded = csv_edit_decode(t, row, s->csv_path, &e) == SD_OK;
        sd_clear_error();
        placeholders[row] = row_entry(t, row, decoded ? &e : NULL);
        workers[shard_of_row[row]].rows_assigned++;
        n_planned++;
    }
    for (int k = 0; k < n; k++) {
        snprintf(workers[k].device, sizeof workers[k].device, "%s", devices->name[k]);
        snprintf(workers[k].log_path, sizeof workers[k].log_path, "%s/worker-%d.log", logs_dir, k);
    }
    if (!s->quiet) {
        printf("batch %s: %d rows over %d worker processes\n", s->csv_path, n_planned, n);
        for (int k = 0; k < n; k++)
            printf("  worker %d: %s, %d rows, log %s\n", k, workers[k].device, workers[k].rows_assigned,
                   workers[k].log_path);
        fflush(stdout);
    }

    workers_run("batch", argc, argv, workers, n, s->quiet);

    for (int k = 0; k < n; k++) {
        batch_worker *w = &workers[k];
        char part_path[4400];
        snprintf(part_path, sizeof part_path, "%s/batch_report.part-%d.json", s->out_dir, k);
        char *text = NULL;
        size_t len = 0;
        if (w->launched && sd_file_exists(part_path) && sd_read_file(part_path, &text, &len) == SD_OK) {
            w->part = cJSON_Parse(text);
            if (!w->part) fprintf(stderr, "stylediff batch: %s: not valid JSON; its rows count as not run\n", part_path);
        }
        sd_clear_error();
        free(text);
    }
    cJSON *report = report_header(s);
    cJSON *devices_json = cJSON_AddArrayToObject(report, "devices");
    for (int k = 0; k < n; k++) cJSON_AddItemToArray(devices_json, cJSON_CreateString(devices->name[k]));
    batch_totals totals;
    batch_merge(report, t->n_rows, shard_of_row, placeholders, workers, n, &totals);
    st = cli_write_json(report_path, report); /* atomic: an earlier report stays whole until replaced */
    if (st) fprintf(stderr, "stylediff batch: %s\n", sd_last_error());

    workers_report_and_release("batch", workers, n);
    printf("batch %s: %d rows done, %d failed, %d skipped, %d not run, on %d workers (%d failed) (%s); report %s\n",
           s->csv_path, totals.done, totals.failed, totals.skipped, totals.not_run, n, totals.workers_failed,
           s->method_name, report_path);
    for (int row = 0; row < t->n_rows; row++) cJSON_Delete(placeholders[row]);
    free(placeholders);
    free(workers);
    return (st || totals.failed || totals.not_run || totals.workers_failed) ? 1 : 0;
}

int cmd_batch(int argc, char **argv) {
    batch_settings s = {.method_name = "stylediffusion", .out_dir = "stylediff-results", .root = ".", .to_case = -1};
    const char *devices_spec = NULL, *shard_spec = NULL;
    int steps = 0, inner = -1;
    const cli_opt opts[] = {
        {"method", 0, CLI_STR, &s.method_name, "M", "inversion method: stylediffusion (default), nulltext, npi, ddim", 1, 0},
        {"output", 'o', CLI_STR, &s.out_dir, "DIR", "results folder (default stylediff-results)", 1, 0},
        {"root", 0, CLI_STR, &s.root, "DIR", "folder the CSV's image paths are relative to (default .)", 1, 0},
        {"model", 'm', CLI_STR, &s.model_path, "MODEL", "checkpoint (default: built-in tiny model)", 1, 0},
        {"clip", 0, CLI_STR, &s.clip_dir, "DIR", "CLIP ViT-B/16 folder for stylediffusion", 1, 0},
        {"config", 0, CLI_STR, &s.config_path, "FILE", "method preset replacing the defaults", 1, 0},
        {"steps", 0, CLI_INT, &steps, "N", "DDIM steps (default: the method's)", 1, 1000},
        {"inner", 0, CLI_INT, &inner, "N", "optimiser iterations per step (default: the method's)", 0, 100000},
        {"from", 0, CLI_INT, &s.from_case, "N", "skip cases below N (the reference's --from_case)", 0, 2147483647},
        {"to", 0, CLI_INT, &s.to_case, "N", "stop before case N (the reference's --end_case)", 0, 2147483647},
        {"devices", 0, CLI_STR, &devices_spec, "LIST",
         "one worker process per device: cuda:0,cuda:1,... | all (every visible GPU) | cpu,cpu", 1, 0},
        {"resume", 0, CLI_FLAG, &s.resume, NULL, "skip rows an earlier run with the same settings finished", 1, 0},
        {"shard", 0, CLI_STR, &shard_spec, "K/N", "(internal, set by --devices) run worker K's rows of N", 1, 0},
        {"quiet", 'q', CLI_FLAG, &s.quiet, NULL, "no progress bars or notices", 1, 0},
        CLI_RECOMPUTE_OPTION(s.recompute),
        CLI_EAGER_OPTION(s.eager),
        CLI_DEVICE_OPTIONS(s.device, s.precision),
    };
    const cli_command cmd = {
        "batch", NULL, "CSV [--method M] [-o DIR] [--devices LIST] [--resume] [options]",
        "Runs the reference's editing CSV (data/stylediffusion_editing.csv format: case_number,\n"
        "prompt, image_path, target, blend_word, eq_params, tau_v..tau_u, edit_type): inverts each\n"
        "image once (cached in DIR/inversions/), edits it, writes \"DIR/<case> <target>.png\" and\n"
        "DIR/batch_report.json. A bad row is reported and skipped; the others go on.\n"
        "\n"
        "--devices LIST splits the rows over one worker process per device (rows sharing an image\n"
        "and prompt, hence an inversion, stay on one worker). Worker K writes\n"
        "DIR/batch_report.part-K.json after every row and logs to DIR/logs/worker-K.log; when all\n"
        "have ended, their parts are merged into DIR/batch_report.json (CSV order, each row with its\n"
        "worker and device). A worker that crashes or is killed loses none of the rows it finished;\n"
        "the rows it never reached are reported \"not run\" with the reason. Example, 8 GPUs:\n"
        "  stylediff batch edits.csv --method nulltext -o results --devices all\n"
        "\n"
        "--resume skips each row that DIR/batch_report.json (or a part) records as done under the\n"
        "same method and settings and whose edit PNG exists (\"skipped: done earlier\"); without it\n"
        "every row runs again (inversions are still reused from the cache).\n"
        "\n"
        "Exit status: 0 when every row was done or skipped, 1 when a row failed or did not run, or\n"
        "a worker failed; 2 on a usage error.",
        opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(s.quiet);
    s.csv_path = pos[0];

    int shard = 0, n_shards = 1;
    batch_devices devices;
    sd_status st = workers_parse_role(shard_spec, devices_spec, s.device, &devices, &shard, &n_shards);
    if (st) return cli_fail("batch", st);

    if ((st = sd_invert_method_parse(s.method_name, &s.invert.method))) return cli_fail("batch", st);
    sd_method_preset preset;
    sd_method_preset_default(s.invert.method, &preset);
    if (s.config_path && (st = sd_method_preset_load(s.config_path, &preset))) return cli_fail("batch", st);
    const sd_invert_method method = s.invert.method;
    s.invert = preset.invert;
    s.invert.method = method;
    if (steps) s.invert.n_steps = steps;
    if (inner >= 0) s.invert.inner_steps = inner;
    snprintf(s.run_key, sizeof s.run_key, "method=%s steps=%d inner=%d lr=%.9g seed=%llu model=%s config=%s root=%s",
             sd_invert_method_name(method), s.invert.n_steps, s.invert.inner_steps, s.invert.lr,
             (unsigned long long)s.invert.seed, s.model_path ? s.model_path : "(built-in)",
             s.config_path ? s.config_path : "(defaults)", s.root);

    csv_table table;
    if ((st = csv_read(s.csv_path, &table))) return cli_fail("batch", st);
    int *shard_of_row = malloc(sizeof *shard_of_row * (size_t)(table.n_rows > 0 ? table.n_rows : 1));
    char inv_dir[4096];
    snprintf(inv_dir, sizeof inv_dir, "%s/inversions", s.out_dir);
    st = shard_of_row ? plan_rows(&s, &table, n_shards, shard_of_row) : sd_fail(SD_ERR_OOM, "out of memory");
    if (!st) st = make_dir(s.out_dir);
    if (!st) st = make_dir(inv_dir);
    if (st) {
        free(shard_of_row);
        csv_free(&table);
        return cli_fail("batch", st);
    }
    if (devices_spec && !shard_spec)
        r = run_parent(&s, &devices, &table, shard_of_row, argc, argv);
    else
        r = run_rows(&s, &table, shard_of_row, shard, n_shards, shard_spec != NULL);
    free(shard_of_row);
    csv_free(&table);
    return r;
}
