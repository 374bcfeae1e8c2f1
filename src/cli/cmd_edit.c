/* cmd_edit.c: `stylediff edit INVERSION --target PROMPT -o OUT.png`: Prompt-to-Prompt / P2Plus
 * editing of an inverted photo, with the windows of the inversion's method as defaults. */
#include <cjson/cJSON.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/edit.h"
#include "sd/presets.h"

/* "cat+kitten" -> words (pointers into a writable copy). */
static sd_status split_words(char *text, const char *flag, const char **words, int *n) {
    *n = 0;
    for (char *tok = strtok(text, "+"); tok; tok = strtok(NULL, "+")) {
        if (*n >= SD_EDIT_MAX_WORDS) return sd_fail(SD_ERR_ARG, "%s: at most %d words per prompt", flag, SD_EDIT_MAX_WORDS);
        if (!*tok) continue;
        words[(*n)++] = tok;
    }
    return SD_OK;
}

/* --blend SRC,TGT where each side may list several words joined by '+'. */
static sd_status parse_blend(char *spec, sd_edit_options *o) {
    char *comma = strchr(spec, ',');
    if (!comma || strchr(comma + 1, ','))
        return sd_fail(SD_ERR_ARG, "--blend '%s': expected SOURCE_WORD,TARGET_WORD (several words joined by '+')", spec);
    *comma = '\0';
    SD_TRY(split_words(spec, "--blend", o->blend_source, &o->n_blend_source));
    SD_TRY(split_words(comma + 1, "--blend", o->blend_target, &o->n_blend_target));
    if (!o->n_blend_source || !o->n_blend_target)
        return sd_fail(SD_ERR_ARG, "--blend: both the source and the target word are needed");
    return SD_OK;
}

/* --reweight WORD=VALUE[,WORD=VALUE...] */
static sd_status parse_reweight(char *spec, sd_edit_options *o) {
    for (char *item = strtok(spec, ","); item; item = strtok(NULL, ",")) {
        char *eq = strchr(item, '=');
        char *end = NULL;
        if (!eq || eq == item) return sd_fail(SD_ERR_ARG, "--reweight '%s': expected WORD=VALUE", item);
        *eq = '\0';
        const double v = strtod(eq + 1, &end);
        if (!eq[1] || *end || !(v > -1e6 && v < 1e6))
            return sd_fail(SD_ERR_ARG, "--reweight %s=%s: the value must be a number", item, eq + 1);
        if (o->n_reweight >= SD_EDIT_MAX_WORDS) return sd_fail(SD_ERR_ARG, "--reweight: at most %d words", SD_EDIT_MAX_WORDS);
        o->reweight_words[o->n_reweight] = item;
        o->reweight_values[o->n_reweight++] = v;
    }
    return SD_OK;
}

int cmd_edit(int argc, char **argv) {
    const char *model_path = NULL, *target = NULL, *output = "edit.png", *source_out = NULL;
    const char *blend = NULL, *reweight = NULL, *heatmaps = NULL, *config_path = NULL, *report_path = NULL;
    const char *device = NULL, *precision = NULL;
    int replace = 0, refine = 0, quiet = 0, truncate = 0;
    float tau_v = -1, tau_c = -1, tau_s = -1, tau_u = -1;
    const cli_opt opts[] = {
        {"target", 't', CLI_STR, &target, "TEXT", "the edited prompt (required)", 1, 0},
        {"output", 'o', CLI_STR, &output, "FILE", "edited PNG (default edit.png)", 1, 0},
        {"source-output", 0, CLI_STR, &source_out, "FILE", "the source row's PNG (default: OUT with _source)", 1, 0},
        {"replace", 0, CLI_FLAG, &replace, NULL, "word swap: the prompts have equal word counts (default)", 1, 0},
        {"refine", 0, CLI_FLAG, &refine, NULL, "refinement: words added or removed", 1, 0},
        {"blend", 0, CLI_STR, &blend, "SRC,TGT", "LocalBlend: edit only where these words attend (e.g. cat,tiger)", 1, 0},
        {"reweight", 0, CLI_STR, &reweight, "W=V,...", "scale the attention of target words (e.g. tiger=2)", 1, 0},
        {"tau-v", 0, CLI_FLOAT, &tau_v, "X", "stylediffusion: mapping network on the target row for steps < X·N", 0, 1},
        {"tau-c", 0, CLI_FLOAT, &tau_c, "X", "cross-attention replacement for steps < X·N", 0, 1},
        {"tau-s", 0, CLI_FLOAT, &tau_s, "X", "self-attention replacement for steps < X·N", 0, 1},
        {"tau-u", 0, CLI_FLOAT, &tau_u, "X", "P2Plus: unconditional self-attention replacement for steps < X·N", 0, 1},
        {"config", 0, CLI_STR, &config_path, "FILE", "preset with the tau values (see configs/methods/)", 1, 0},
        {"save-attention", 0, CLI_STR, &heatmaps, "DIR", "write per-token cross-attention heatmaps (PNG) here", 1, 0},
        {"model", 'm', CLI_STR, &model_path, "MODEL", "the model the inversion was made with (default: built-in tiny)", 1, 0},
        {"report", 0, CLI_STR, &report_path, "FILE", "JSON report (default: OUT with .json)", 1, 0},
        {"truncate", 0, CLI_FLAG, &truncate, NULL, "cut prompts over 75 tokens instead of failing", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bar or notices", 1, 0},
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"edit", NULL, "INVERSION --target PROMPT [-o OUT.png] [options]",
                             "Edits an inverted photo (stylediff invert) with a new prompt: Prompt-to-Prompt attention\n"
                             "control (word swap or refinement, reweighting, LocalBlend) with P2Plus's unconditional\n"
                             "self-attention injection. The tau windows default to the inversion method's preset.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    if (!target) {
        fprintf(stderr, "stylediff edit: --target is required\n");
        return 2;
    }
    if (replace && refine) {
        fprintf(stderr, "stylediff edit: --replace and --refine exclude each other\n");
        return 2;
    }
    const char *inv_path = pos[0];
    char source_buf[4096], report_buf[4096], blend_buf[1024], reweight_buf[1024];
    if (!source_out) {
        cli_replace_extension(source_buf, sizeof source_buf, output, "_source.png");
        source_out = source_buf;
    }
    if (!report_path) {
        cli_replace_extension(report_buf, sizeof report_buf, output, ".json");
        report_path = report_buf;
    }

    sd_inversion inv;
    sd_status st = sd_inversion_load(inv_path, &inv);
    if (st) return cli_fail("edit", st);
    sd_edit_options o;
    sd_edit_options_default(inv.method, &o);
    if (config_path) {
        sd_method_preset preset;
        sd_method_preset_default(inv.method, &preset);
        if (!(st = sd_method_preset_load(config_path, &preset))) {
            o.tau_v = preset.tau_v;
            o.tau_c = preset.tau_c;
            o.tau_s = preset.tau_s;
            o.tau_u = preset.tau_u;
        }
    }
    o.target = target;
    o.edit = refine ? SD_P2P_REFINE : SD_P2P_REPLACE;
    if (tau_v >= 0) o.tau_v = tau_v;
    if (tau_c >= 0) o.tau_c = tau_c;
    if (tau_s >= 0) o.tau_s = tau_s;
    if (tau_u >= 0) o.tau_u = tau_u;
    o.heatmap_dir = heatmaps;
    if (!st && blend) {
        snprintf(blend_buf, sizeof blend_buf, "%s", blend);
        st = parse_blend(blend_buf, &o);
    }
    if (!st && reweight) {
        snprintf(reweight_buf, sizeof reweight_buf, "%s", reweight);
        st = parse_reweight(reweight_buf, &o);
    }
    sd_model m;
    int have_model = 0;
    if (!st && !(st = sd_model_load(model_path, &m))) have_model = 1;
    if (!st) st = sd_inversion_check_model(&inv, &m, inv_path);
    if (!st) st = cli_check_prompt(m.tokenizer, target, "--target", truncate);
    sd_ctx c;
    char where[256] = "";
    int have_ctx = 0;
    if (!st && !(st = cli_open_context(device, precision, &m, &c, where, sizeof where))) have_ctx = 1;
    sd_edit_result res = {0};
    if (!st) st = sd_edit(&c, &m, &inv, &o, &res);
    if (!st) st = cli_write_edit_images(&c, &m, res.latents, output, source_out);
    if (!st) {
        cJSON *doc = cJSON_CreateObject();
        cJSON_AddStringToObject(doc, "command", "edit");
        cJSON_AddStringToObject(doc, "inversion", inv_path);
        cJSON_AddStringToObject(doc, "method", sd_invert_method_name(inv.method));
        cJSON_AddStringToObject(doc, "source_prompt", inv.prompt);
        cJSON_AddStringToObject(doc, "target_prompt", target);
        cJSON_AddStringToObject(doc, "edit", o.edit == SD_P2P_REFINE ? "refine" : "replace");
        cJSON_AddNumberToObject(doc, "tau_v", o.tau_v);
        cJSON_AddNumberToObject(doc, "tau_c", o.tau_c);
        cJSON_AddNumberToObject(doc, "tau_s", o.tau_s);
        cJSON_AddNumberToObject(doc, "tau_u", o.tau_u);
        cJSON_AddStringToObject(doc, "output", output);
        cJSON_AddStringToObject(doc, "source_output", source_out);
        cJSON_AddStringToObject(doc, "device", where);
        cJSON_AddNumberToObject(doc, "seconds", res.seconds);
        st = cli_write_json(report_path, doc);
        if (!st)
            printf("edit %s: \"%s\" -> \"%s\" (%s, %s, tau_v %.2g tau_c %.2g tau_s %.2g tau_u %.2g) in %.1f s\n"
                   "  edit %s, source %s%s%s\n  on %s\n",
                   inv_path, inv.prompt, target, sd_invert_method_name(inv.method),
                   o.edit == SD_P2P_REFINE ? "refine" : "replace", o.tau_v, o.tau_c, o.tau_s, o.tau_u,
                   res.seconds, output, source_out, heatmaps ? ", heatmaps in " : "", heatmaps ? heatmaps : "", where);
    }
    sd_edit_result_free(&res);
    if (have_ctx) sd_ctx_free(&c);
    if (have_model) sd_model_free(&m);
    sd_inversion_free(&inv);
    return st ? cli_fail("edit", st) : 0;
}
