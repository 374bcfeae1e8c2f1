/* cli.h: what the subcommands share: a table-driven option parser whose errors name the argument,
 * the common options (-m, --steps, --cfg, --seed, --quiet), and small output helpers. */
#ifndef SD_CLI_H
#define SD_CLI_H

#include "sd/core.h"

typedef enum { CLI_STR, CLI_INT, CLI_FLOAT, CLI_DOUBLE, CLI_FLAG } cli_type;

typedef struct cli_opt {
    const char *long_name; /* "steps" for --steps */
    char short_name;       /* 'm' for -m, 0 for none */
    cli_type type;
    void *dst;             /* const char **, int *, float *, double *, int * */
    const char *metavar;   /* "N", "FILE" */
    const char *help;
    double min, max;       /* inclusive range for numbers (ignored when min > max) */
} cli_opt;

typedef struct cli_command {
    const char *name;
    const char *summary;
    const char *usage;      /* after "stylediff NAME " */
    const char *description;
    const cli_opt *opts;
    int n_opts;
    int min_positional, max_positional;
} cli_command;

/* Parses argv (argv[0] is the subcommand name). Positional arguments go to positional[] (up to
 * max_positional). Returns 0 to go on, 1 when --help was printed, 2 on a usage error (printed). */
int cli_parse(const cli_command *cmd, int argc, char **argv, const char **positional, int *n_positional);
void cli_print_help(const cli_command *cmd, FILE *out);

/* Prints "stylediff NAME: <message of the last error>" and returns the exit status to use. */
int cli_fail(const char *cmd, sd_status st);

/* Report helpers: "out.png" -> "out.json". */
void cli_replace_extension(char *out, size_t n, const char *path, const char *ext);

/* Rejects an empty prompt, and one longer than the text encoder's 75 tokens unless `truncate`
 * (then the tokenizer truncates with a warning, as the reference does). `flag` names the option. */
struct sd_tokenizer;
sd_status cli_check_prompt(const struct sd_tokenizer *tok, const char *prompt, const char *flag,
                           int truncate);

/* The --device / --precision pair every command takes: opens the context (auto: CUDA when a usable
 * GPU exists, else the CPU with a notice) and moves the model's weights there (m may be NULL).
 * `describe` receives the line reports print (may be NULL). */
struct sd_ctx;
struct sd_model;
sd_status cli_open_context(const char *device, const char *precision, struct sd_model *m,
                           struct sd_ctx *c, char *describe, size_t describe_len);
/* --recompute: gradient steps recompute UNet blocks instead of keeping their activations (the
 * context's `recompute`): less device memory for about one more forward per step. */
#define CLI_RECOMPUTE_OPTION(flag_var)                                                                              \
    {"recompute", 0, CLI_FLAG, &(flag_var), NULL, "recompute UNet blocks in gradient steps (less memory, more time)", 1, 0}
#define CLI_EAGER_OPTION(flag_var)                                                                                  \
    {"eager", 0, CLI_FLAG, &(flag_var), NULL, "GPU: run repeated steps op by op instead of replaying CUDA graphs", 1, 0}
#define CLI_DEVICE_OPTIONS(device_var, precision_var)                                                            \
    {"device", 0, CLI_STR, &(device_var), "DEV", "cpu, cuda or cuda:N (default: cuda when a usable GPU exists)", 1, 0}, \
    {"precision", 0, CLI_STR, &(precision_var), "P", "exact (fp32, no TF32; default) or fast (tensor cores)", 1, 0}

/* Decodes the two rows of an edit's latents (host (2, 4, h, w)) and writes row 1 (the edit) and
 * row 0 (the source) as PNGs. */
sd_status cli_write_edit_images(struct sd_ctx *c, const struct sd_model *m, const sd_tensor *latents,
                                const char *edit_path, const char *source_path);

/* Writes a cJSON document atomically and frees it. */
struct cJSON;
sd_status cli_write_json(const char *path, struct cJSON *doc);

/* Subcommands. */
int cmd_generate(int argc, char **argv);
int cmd_reconstruct(int argc, char **argv);
int cmd_tokenize(int argc, char **argv);
int cmd_bench(int argc, char **argv);
int cmd_invert(int argc, char **argv);
int cmd_edit(int argc, char **argv);
int cmd_bench_invert(int argc, char **argv);
int cmd_bench_grad(int argc, char **argv);
int cmd_batch(int argc, char **argv);
int cmd_eval(int argc, char **argv);

#endif
