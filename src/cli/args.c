/* args.c: the option parser and shared helpers of the command line (see cli.h). */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/device.h"
#include "sd/model.h"
#include "sd/text.h"

#include <cjson/cJSON.h>

void cli_print_help(const cli_command *cmd, FILE *out) {
    fprintf(out, "usage: stylediff %s %s\n\n%s\n\noptions:\n", cmd->name, cmd->usage, cmd->description);
    for (int i = 0; i < cmd->n_opts; i++) {
        const cli_opt *o = &cmd->opts[i];
        char flag[64];
        if (o->short_name)
            snprintf(flag, sizeof flag, "-%c, --%s%s%s", o->short_name, o->long_name,
                     o->metavar ? " " : "", o->metavar ? o->metavar : "");
        else
            snprintf(flag, sizeof flag, "    --%s%s%s", o->long_name, o->metavar ? " " : "",
                     o->metavar ? o->metavar : "");
        fprintf(out, "  %-26s %s\n", flag, o->help);
    }
    fprintf(out, "  %-26s %s\n", "-h, --help", "show this help");
}

static const cli_opt *find_opt(const cli_command *cmd, const char *arg) {
    for (int i = 0; i < cmd->n_opts; i++) {
        const cli_opt *o = &cmd->opts[i];
        if (arg[1] == '-' && !strcmp(arg + 2, o->long_name)) return o;
        if (arg[1] != '-' && o->short_name && arg[1] == o->short_name && arg[2] == '\0') return o;
    }
    return NULL;
}

static int set_value(const cli_command *cmd, const cli_opt *o, const char *flag, const char *val) {
    char *end = NULL;
    errno = 0;
    switch (o->type) {
    case CLI_STR:
        *(const char **)o->dst = val;
        return 0;
    case CLI_INT: {
        long v = strtol(val, &end, 10);
        if (errno || !*val || *end || (o->min <= o->max && (v < o->min || v > o->max))) {
            if (o->min <= o->max)
                fprintf(stderr, "stylediff %s: %s: expected an integer in [%g, %g], got '%s'\n",
                        cmd->name, flag, o->min, o->max, val);
            else
                fprintf(stderr, "stylediff %s: %s: expected an integer, got '%s'\n", cmd->name, flag, val);
            return 2;
        }
        *(int *)o->dst = (int)v;
        return 0;
    }
    case CLI_DOUBLE:
    case CLI_FLOAT: {
        double v = strtod(val, &end);
        if (errno || !*val || *end || !isfinite(v) || (o->min <= o->max && (v < o->min || v > o->max))) {
            if (o->min <= o->max)
                fprintf(stderr, "stylediff %s: %s: expected a number in [%g, %g], got '%s'\n",
                        cmd->name, flag, o->min, o->max, val);
            else
                fprintf(stderr, "stylediff %s: %s: expected a number, got '%s'\n", cmd->name, flag, val);
            return 2;
        }
        if (o->type == CLI_DOUBLE)
            *(double *)o->dst = v;
        else
            *(float *)o->dst = (float)v;
        return 0;
    }
    case CLI_FLAG:
        *(int *)o->dst = 1;
        return 0;
    }
    return 2;
}

int cli_parse(const cli_command *cmd, int argc, char **argv, const char **positional, int *n_positional) {
    *n_positional = 0;
    int only_positional = 0;
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i];
        if (!only_positional && !strcmp(arg, "--")) {
            only_positional = 1;
            continue;
        }
        if (!only_positional && arg[0] == '-' && arg[1] != '\0') {
            if (!strcmp(arg, "-h") || !strcmp(arg, "--help")) {
                cli_print_help(cmd, stdout);
                return 1;
            }
            /* --name=value */
            char name_buf[128];
            const char *inline_val = NULL;
            const char *eq = arg[1] == '-' ? strchr(arg, '=') : NULL;
            if (eq && (size_t)(eq - arg) < sizeof name_buf) {
                memcpy(name_buf, arg, (size_t)(eq - arg));
                name_buf[eq - arg] = '\0';
                inline_val = eq + 1;
                arg = name_buf;
            }
            const cli_opt *o = find_opt(cmd, arg);
            if (!o) {
                fprintf(stderr, "stylediff %s: unknown option '%s' (see stylediff %s --help)\n",
                        cmd->name, arg, cmd->name);
                return 2;
            }
            if (o->type == CLI_FLAG) {
                if (inline_val) {
                    fprintf(stderr, "stylediff %s: %s takes no value\n", cmd->name, arg);
                    return 2;
                }
                *(int *)o->dst = 1;
                continue;
            }
            const char *val = inline_val;
            if (!val) {
                if (i + 1 >= argc) {
                    fprintf(stderr, "stylediff %s: %s needs a value (%s)\n", cmd->name, arg,
                            o->metavar ? o->metavar : "value");
                    return 2;
                }
                val = argv[++i];
            }
            if (set_value(cmd, o, arg, val)) return 2;
            continue;
        }
        if (*n_positional >= cmd->max_positional) {
            fprintf(stderr, "stylediff %s: unexpected argument '%s' (see stylediff %s --help)\n",
                    cmd->name, arg, cmd->name);
            return 2;
        }
        positional[(*n_positional)++] = arg;
    }
    if (*n_positional < cmd->min_positional) {
        fprintf(stderr, "stylediff %s: missing argument\nusage: stylediff %s %s\n", cmd->name,
                cmd->name, cmd->usage);
        return 2;
    }
    return 0;
}

int cli_fail(const char *cmd, sd_status st) {
    fprintf(stderr, "stylediff %s: %s\n", cmd, sd_last_error()[0] ? sd_last_error() : sd_status_name(st));
    return st == SD_ERR_ARG ? 2 : 1;
}

void cli_replace_extension(char *out, size_t n, const char *path, const char *ext) {
    const char *slash = strrchr(path, '/');
    const char *dot = strrchr(path, '.');
    size_t stem = (dot && (!slash || dot > slash)) ? (size_t)(dot - path) : strlen(path);
    snprintf(out, n, "%.*s%s", (int)stem, path, ext);
}

sd_status cli_check_prompt(const struct sd_tokenizer *tok, const char *prompt, const char *flag,
                           int truncate) {
    const char *p = prompt;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r') p++;
    if (!*p)
        return sd_fail(SD_ERR_ARG, "%s is empty: describe the image in words (the null text \"\" is "
                                   "already used for the unconditional branch)", flag);
    int n = 0;
    SD_TRY(sd_tokenize(tok, prompt, NULL, 0, &n)); /* count only */
    const int max_tokens = SD_CLIP_MAX_LEN - 2;
    if (n > max_tokens && !truncate)
        return sd_fail(SD_ERR_ARG, "%s has %d tokens; the text encoder reads at most %d: shorten it, "
                                   "or pass --truncate to cut it as the reference pipeline does", flag, n,
                       max_tokens);
    return SD_OK;
}

sd_status cli_write_json(const char *path, struct cJSON *doc) {
    char *text = cJSON_Print(doc);
    cJSON_Delete(doc);
    if (!text) return sd_fail(SD_ERR_OOM, "%s: out of memory formatting the report", path);
    size_t len = strlen(text);
    text[len] = '\n'; /* cJSON leaves room for the terminator: reuse it for a final newline */
    sd_status st = sd_write_file_atomic(path, text, len + 1);
    cJSON_free(text);
    return st;
}

sd_status cli_open_context(const char *device, const char *precision, struct sd_model *m,
                           struct sd_ctx *c, char *describe, size_t describe_len) {
    sd_precision p = SD_PRECISION_EXACT;
    if (precision) SD_TRY(sd_precision_parse(precision, &p));
    SD_TRY(sd_device_open(device, p, c));
    sd_status st = m ? sd_model_to_device(c, m) : SD_OK;
    if (st != SD_OK) {
        sd_ctx_free(c);
        return st;
    }
    if (describe) sd_device_describe(c, describe, describe_len);
    return SD_OK;
}

sd_status cli_write_edit_images(struct sd_ctx *c, const struct sd_model *m, const sd_tensor *latents,
                                const char *edit_path, const char *source_path) {
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_tensor *img = sd_latent_to_image(c, m, sd_upload(c, latents));
    sd_image rows[2] = {{0}, {0}};
    sd_status st = sd_ctx_status(c);
    for (int r = 0; r < 2 && !st; r++) st = sd_image_download(c, img, r, &rows[r]);
    if (!st) st = sd_image_save_png(edit_path, &rows[1]);
    if (!st) st = sd_image_save_png(source_path, &rows[0]);
    sd_image_free(&rows[0]);
    sd_image_free(&rows[1]);
    sd_arena_reset(c->arena, mark);
    return st;
}
