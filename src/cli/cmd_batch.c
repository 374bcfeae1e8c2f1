/* cmd_batch.c: `stylediff batch CSV --method M -o DIR`: the reference's dataset runner
 * (stylediffusion_csv.py): every row of an editing CSV is inverted (once per image, prompt and
 * method: the inversion is cached in DIR/inversions/ and reused while it matches) and edited.
 * A bad row is reported and skipped; rows already written stay; the exit status says whether any
 * row failed. */
#include <cjson/cJSON.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "cli.h"
#include "csv_rows.h"
#include "sd/clip_vision.h"
#include "sd/edit.h"
#include "sd/presets.h"

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

int cmd_batch(int argc, char **argv) {
    const char *model_path = NULL, *method_name = "stylediffusion", *out_dir = "stylediff-results";
    const char *root = ".", *clip_dir = NULL, *config_path = NULL, *device = NULL, *precision = NULL;
    int from_case = 0, to_case = -1, steps = 0, inner = -1, quiet = 0;
    const cli_opt opts[] = {
        {"method", 0, CLI_STR, &method_name, "M", "inversion method: stylediffusion (default), nulltext, npi, ddim", 1, 0},
        {"output", 'o', CLI_STR, &out_dir, "DIR", "results folder (default stylediff-results)", 1, 0},
        {"root", 0, CLI_STR, &root, "DIR", "folder the CSV's image paths are relative to (default .)", 1, 0},
        {"model", 'm', CLI_STR, &model_path, "MODEL", "checkpoint (default: built-in tiny model)", 1, 0},
        {"clip", 0, CLI_STR, &clip_dir, "DIR", "CLIP ViT-B/16 folder for stylediffusion", 1, 0},
        {"config", 0, CLI_STR, &config_path, "FILE", "method preset replacing the defaults", 1, 0},
        {"steps", 0, CLI_INT, &steps, "N", "DDIM steps (default: the method's)", 1, 1000},
        {"inner", 0, CLI_INT, &inner, "N", "optimiser iterations per step (default: the method's)", 0, 100000},
        {"from", 0, CLI_INT, &from_case, "N", "skip cases below N (the reference's --from_case)", 0, 2147483647},
        {"to", 0, CLI_INT, &to_case, "N", "stop before case N (the reference's --end_case)", 0, 2147483647},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bars or notices", 1, 0},
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"batch", NULL, "CSV [--method M] [-o DIR] [options]",
                             "Runs the reference's editing CSV (data/stylediffusion_editing.csv format: case_number,\n"
                             "prompt, image_path, target, blend_word, eq_params, tau_v..tau_u, edit_type): inverts each\n"
                             "image once (cached in DIR/inversions/), edits it, writes \"DIR/<case> <target>.png\" and\n"
                             "DIR/batch_report.json. A bad row is reported and skipped; the others go on.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    const char *csv_path = pos[0];

    sd_invert_method method;
    sd_status st = sd_invert_method_parse(method_name, &method);
    if (st) return cli_fail("batch", st);
    sd_method_preset preset;
    sd_method_preset_default(method, &preset);
    if (config_path && (st = sd_method_preset_load(config_path, &preset))) return cli_fail("batch", st);
    sd_invert_options io = preset.invert;
    io.method = method;
    if (steps) io.n_steps = steps;
    if (inner >= 0) io.inner_steps = inner;

    csv_table table;
    if ((st = csv_read(csv_path, &table))) return cli_fail("batch", st);
    char inv_dir[4096];
    snprintf(inv_dir, sizeof inv_dir, "%s/inversions", out_dir);
    if (!st) st = make_dir(out_dir);
    if (!st) st = make_dir(inv_dir);
    sd_model m;
    int have_model = 0, have_clip = 0, have_ctx = 0;
    if (!st && !(st = sd_model_load(model_path, &m))) have_model = 1;
    sd_clip_vision clip;
    memset(&clip, 0, sizeof clip);
    if (!st && method == SD_INVERT_STYLEDIFFUSION) {
        if (!clip_dir && !m.builtin)
            st = sd_fail(SD_ERR_ARG, "stylediffusion needs the CLIP ViT-B/16 image encoder: pass --clip DIR");
        else if (!(st = sd_clip_vision_load(clip_dir ? clip_dir : sd_builtin_clip_vision_dir(), &clip)))
            have_clip = 1;
    }
    sd_ctx c;
    char where[256] = "";
    if (!st && !(st = cli_open_context(device, precision, &m, &c, where, sizeof where))) have_ctx = 1;
    if (!st && have_clip) st = sd_ctx_adopt_weights(&c, clip.owned);
    if (st) {
        csv_free(&table);
        if (have_ctx) sd_ctx_free(&c);
        if (have_clip) sd_clip_vision_release(&clip);
        if (have_model) sd_model_free(&m);
        return cli_fail("batch", st);
    }

    batch_env env = {&m, have_clip ? &clip : NULL, &c, &io, out_dir, root, 8 * m.unet.cfg.sample_size};
    cJSON *report = cJSON_CreateObject();
    cJSON_AddStringToObject(report, "csv", csv_path);
    cJSON_AddStringToObject(report, "method", method_name);
    cJSON_AddStringToObject(report, "device", where);
    cJSON *rows_json = cJSON_AddArrayToObject(report, "rows");
    int done = 0, failed = 0;
    char report_path[4200];
    snprintf(report_path, sizeof report_path, "%s/batch_report.json", out_dir);
    for (int row = 0; row < table.n_rows; row++) {
        csv_edit e;
        cJSON *entry = cJSON_CreateObject();
        cJSON_AddNumberToObject(entry, "line", table.line[row]);
        sd_status rs = csv_edit_decode(&table, row, csv_path, &e);
        if (!rs && (e.case_number < from_case || (to_case >= 0 && e.case_number >= to_case))) {
            cJSON_Delete(entry);
            continue;
        }
        if (!rs) {
            cJSON_AddNumberToObject(entry, "case_number", (double)e.case_number);
            cJSON_AddStringToObject(entry, "target", e.target);
            if (!quiet) printf("case %ld: \"%s\" -> \"%s\"\n", e.case_number, e.prompt, e.target);
            rs = run_row(&env, &e, entry);
        }
        c.status = SD_OK; /* a failed row must not poison the next */
        c.hook = NULL;
        c.tape = NULL;
        if (rs) {
            failed++;
            fprintf(stderr, "stylediff batch: %s line %d: %s\n", csv_path, table.line[row], sd_last_error());
            cJSON_AddStringToObject(entry, "error", sd_last_error());
        } else {
            done++;
        }
        cJSON_AddItemToArray(rows_json, entry);
        /* rewrite the report after every row: a crash later loses nothing already done */
        cJSON *snapshot = cJSON_Duplicate(report, 1);
        if (snapshot && cli_write_json(report_path, snapshot) != SD_OK)
            fprintf(stderr, "stylediff batch: %s\n", sd_last_error());
    }
    cJSON_Delete(report);
    printf("batch %s: %d rows done, %d failed (%s, %s); report %s\n", csv_path, done, failed, method_name, where,
           report_path);
    csv_free(&table);
    sd_ctx_free(&c);
    if (have_clip) sd_clip_vision_release(&clip);
    sd_model_free(&m);
    return failed ? 1 : 0;
}
