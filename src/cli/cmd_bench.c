/* cmd_bench.c: `stylediff bench unet`: time UNet calls of a real checkpoint, or of any config
 * (e.g. configs/sd-v1.5) with random weights, and print one table. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/model.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A UNet bound either from a model (-m / built-in) or from a config folder with synthesized
 * random weights. */
static sd_status load_unet(const char *model_path, const char *config_dir, sd_unet *u,
                           sd_model *m, sd_weights **synth, const char **label) {
    if (config_dir) {
        char path[4096];
        sd_unet_config cfg;
        snprintf(path, sizeof path, "%s/unet.json", config_dir);
        if (!sd_file_exists(path)) snprintf(path, sizeof path, "%s/unet/config.json", config_dir);
        SD_TRY(sd_unet_config_load(path, &cfg));
        *synth = sd_weights_new("random weights");
        if (!*synth) return SD_ERR_OOM;
        sd_weights_synthesize(*synth, 0);
        *label = config_dir;
        return sd_unet_bind(u, &cfg, *synth);
    }
    SD_TRY(sd_model_load(model_path, m));
    *u = m->unet;
    *label = m->builtin ? "built-in tiny" : m->files.source;
    return SD_OK;
}

int cmd_bench(int argc, char **argv) {
    const char *model_path = NULL, *config_dir = NULL;
    int batch = 2, size = 0, iters = 3, quiet = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_path, "MODEL", "checkpoint to time (default: built-in tiny model)", 1, 0},
        {"config", 0, CLI_STR, &config_dir, "DIR", "time this config with random weights instead (e.g. configs/sd-v1.5)", 1, 0},
        {"batch", 0, CLI_INT, &batch, "B", "batch size (default 2: one classifier-free-guidance step)", 1, 64},
        {"size", 0, CLI_INT, &size, "PX", "image side (latent = PX/8; default: the model's sample size)", 64, 2048},
        {"iters", 0, CLI_INT, &iters, "N", "timed calls after one warm-up (default 3)", 1, 1000},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no notices", 1, 0},
    };
    const cli_command cmd = {"bench", NULL, "unet [options]",
                             "Times UNet forward calls on this machine (CPU build: the reference backend).\n"
                             "Prints the median and the minimum over --iters calls after a warm-up.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    if (strcmp(pos[0], "unet")) {
        fprintf(stderr, "stylediff bench: unknown target '%s' (available: unet)\n", pos[0]);
        return 2;
    }
    sd_set_quiet(quiet);
    sd_unet unet;
    sd_model m;
    memset(&m, 0, sizeof m);
    sd_weights *synth = NULL;
    const char *label = "";
    sd_status st = load_unet(model_path, config_dir, &unet, &m, &synth, &label);
    sd_ctx c;
    if (st == SD_OK) st = sd_ctx_init_cpu(&c);
    if (st) {
        sd_weights_free(synth);
        if (!config_dir) sd_model_free(&m);
        return cli_fail("bench", st);
    }
    const int64_t side = size ? size / 8 : unet.cfg.sample_size;
    sd_tensor *x = sd_new4(&c, 4, batch, unet.cfg.in_channels, side, side);
    sd_tensor *ctx = sd_new4(&c, 3, batch, 77, unet.cfg.cross_attention_dim, 0);
    if (x && ctx) {
        sd_rng rng;
        sd_rng_seed(&rng, 1);
        sd_rng_randn(&rng, sd_f32(x), sd_numel(x));
        sd_rng_randn(&rng, sd_f32(ctx), sd_numel(ctx));
    }
    double *ms = calloc((size_t)iters, sizeof *ms);
    for (int i = -1; i < iters && sd_ctx_status(&c) == SD_OK; i++) {
        const sd_arena_mark mark = sd_arena_get_mark(c.arena);
        const double t0 = sd_now();
        sd_unet_forward(&c, &unet, x, 981.0f, ctx);
        if (i >= 0) ms[i] = 1e3 * (sd_now() - t0);
        sd_arena_reset(c.arena, mark);
    }
    st = sd_ctx_status(&c);
    if (st == SD_OK) {
        qsort(ms, (size_t)iters, sizeof *ms, cmp_double);
        printf("%-28s %-8s %-6s %-8s %12s %12s %10s\n", "unet", "device", "batch", "latent", "median ms",
               "min ms", "peak MiB");
        printf("%-28s %-8s %-6d %lldx%-5lld %12.1f %12.1f %10.0f\n", label, "cpu", batch,
               (long long)side, (long long)side, ms[iters / 2], ms[0],
               (double)sd_arena_peak(c.arena) / (1 << 20));
    }
    free(ms);
    sd_ctx_free(&c);
    sd_weights_free(synth);
    if (!config_dir) sd_model_free(&m);
    return st ? cli_fail("bench", st) : 0;
}
