/* cmd_bench.c: `stylediff bench unet`: time UNet calls of a real checkpoint, or of any config
 * (e.g. configs/sd-v1.5) with random weights, on the CPU or a CUDA GPU, and print one table.
 *
 * On CUDA every call is timed with CUDA events on the backend stream, eagerly and (unless
 * --no-graph) as a replay of a CUDA graph captured from one call; both rows are printed.
 * --save-weights and --save-io write the exact weights and one call's input and output as
 * safetensors, so bench/reference/unet_torch.py can run PyTorch on the same weights and check
 * the numbers before timing it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cli.h"
#include "sd/device.h"
#include "sd/model.h"

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* A UNet bound either from a model (-m / built-in) or from a config folder with synthesized
 * random weights; *store is the weight store it was bound from. */
static sd_status load_unet(const char *model_path, const char *config_dir, sd_unet *u, sd_model *m,
                           sd_weights **synth, sd_weights **store, const char **label) {
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
        *store = *synth;
        return sd_unet_bind(u, &cfg, *synth);
    }
    SD_TRY(sd_model_load(model_path, m));
    *u = m->unet;
    *store = m->files.unet;
    *label = m->builtin ? "built-in tiny" : m->files.source;
    return SD_OK;
}

/* Every tensor of a weight store, under its diffusers name, into one safetensors file. */
static sd_status save_weights(const sd_weights *w, const char *path) {
    const int n = sd_weights_count(w);
    const sd_tensor **tensors = calloc((size_t)n, sizeof *tensors);
    const char **names = calloc((size_t)n, sizeof *names);
    if (!tensors || !names) {
        free(tensors);
        free(names);
        return sd_fail(SD_ERR_OOM, "out of memory listing %d tensors", n);
    }
    for (int i = 0; i < n; i++) {
        tensors[i] = sd_weights_tensor_at(w, i);
        names[i] = sd_weights_name_at(w, i);
    }
    const char *meta[2] = {"format", "pt"};
    sd_status st = sd_safetensors_write(path, (const sd_tensor *const *)tensors, names, n, meta, 1);
    free(tensors);
    free(names);
    return st;
}

/* x, context, t and eps of one call, for the reference's parity check. */
static sd_status save_io(const char *path, const sd_tensor *x, const sd_tensor *context, float t,
                         const sd_tensor *eps) {
    const int64_t one = 1;
    sd_tensor tt = sd_tensor_wrap(&t, SD_F32, 1, &one);
    const sd_tensor *tensors[4] = {x, context, &tt, eps};
    const char *names[4] = {"sample", "encoder_hidden_states", "timestep", "eps"};
    return sd_safetensors_write(path, tensors, names, 4, NULL, 0);
}

typedef struct bench_result {
    double median_ms, min_ms;
} bench_result;

static bench_result summarize(double *ms, int n) {
    qsort(ms, (size_t)n, sizeof *ms, cmp_double);
    bench_result r = {ms[n / 2], ms[0]};
    return r;
}

/* One timed call: host wall clock around a synchronised call on the CPU, CUDA events on the GPU. */
static sd_status timed_unet(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *ctx, int cuda,
                            sd_cuda_graph *graph, double *ms) {
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    if (cuda) {
        float t = 0.0f;
        SD_TRY(sd_cuda_timer_start());
        if (graph) {
            SD_TRY(sd_cuda_graph_replay(graph));
        } else {
            sd_unet_forward(c, u, x, 981.0f, ctx);
            SD_TRY(sd_ctx_status(c));
        }
        SD_TRY(sd_cuda_timer_stop(&t));
        *ms = t;
    } else {
        const double t0 = sd_now();
        sd_unet_forward(c, u, x, 981.0f, ctx);
        SD_TRY(sd_ctx_status(c));
        *ms = 1e3 * (sd_now() - t0);
    }
    sd_arena_reset(c->arena, mark);
    return SD_OK;
}

int cmd_bench(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "invert")) return cmd_bench_invert(argc - 1, argv + 1);
    const char *model_path = NULL, *config_dir = NULL, *device = NULL, *precision_name = "exact";
    const char *weights_out = NULL, *io_out = NULL;
    int batch = 2, size = 0, iters = 3, quiet = 0, no_graph = 0, tsv = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_path, "MODEL", "checkpoint to time (default: built-in tiny model)", 1, 0},
        {"config", 0, CLI_STR, &config_dir, "DIR", "time this config with random weights instead (e.g. configs/sd-v1.5)", 1, 0},
        {"batch", 0, CLI_INT, &batch, "B", "batch size (default 2: one classifier-free-guidance step)", 1, 64},
        {"size", 0, CLI_INT, &size, "PX", "image side (latent = PX/8; default: the model's sample size)", 64, 2048},
        {"iters", 0, CLI_INT, &iters, "N", "timed calls after one warm-up (default 3)", 1, 1000},
        {"device", 0, CLI_STR, &device, "DEV", "cpu, cuda or cuda:N (default: cuda when a usable GPU exists, else cpu)", 1, 0},
        {"precision", 0, CLI_STR, &precision_name, "P", "exact (fp32, no TF32; default) or fast (tensor cores)", 1, 0},
        {"no-graph", 0, CLI_FLAG, &no_graph, NULL, "CUDA: time eager calls only (no CUDA-graph replay row)", 1, 0},
        {"save-weights", 0, CLI_STR, &weights_out, "FILE", "write the UNet weights used (diffusers names) to a .safetensors file", 1, 0},
        {"save-io", 0, CLI_STR, &io_out, "FILE", "write one call's sample, context, timestep and eps to a .safetensors file", 1, 0},
        {"tsv", 0, CLI_FLAG, &tsv, NULL, "print tab-separated result rows (for bench/gpu_check.sh) instead of the table", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no notices", 1, 0},
    };
    const cli_command cmd = {"bench", NULL, "unet [options]",
                             "Times UNet forward calls (t = 981, random inputs from seed 1) on the CPU or a GPU.\n"
                             "Prints the median and the minimum over --iters calls after a warm-up; on a GPU\n"
                             "with CUDA events, eagerly and as a CUDA-graph replay.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 1, 1};
    const char *pos[1];
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, pos, &n_pos);
    if (r) return r == 1 ? 0 : r;
    if (strcmp(pos[0], "unet")) {
        fprintf(stderr, "stylediff bench: unknown target '%s' (available: unet, invert)\n", pos[0]);
        return 2;
    }
    sd_set_quiet(quiet);
    sd_precision precision;
    if (sd_precision_parse(precision_name, &precision)) return cli_fail("bench", SD_ERR_ARG);
    sd_unet unet;
    sd_model m;
    memset(&m, 0, sizeof m);
    sd_weights *synth = NULL, *store = NULL;
    const char *label = "";
    sd_status st = load_unet(model_path, config_dir, &unet, &m, &synth, &store, &label);
    if (st == SD_OK && weights_out) {
        st = save_weights(store, weights_out);
        if (st == SD_OK && !quiet) fprintf(stderr, "bench: wrote %d UNet tensors to %s\n", sd_weights_count(store), weights_out);
    }
    sd_ctx c;
    int have_ctx = 0;
    if (st == SD_OK) {
        st = sd_device_open(device, precision, &c);
        have_ctx = st == SD_OK;
    }
    if (st == SD_OK) st = sd_ctx_adopt_weights(&c, store); /* no-op on the CPU */
    if (st) {
        if (have_ctx) sd_ctx_free(&c);
        sd_weights_free(synth);
        if (!config_dir) sd_model_free(&m);
        return cli_fail("bench", st);
    }
    const int cuda = c.device != SD_DEVICE_CPU;
    char where[512];
    sd_device_describe(&c, where, sizeof where);
    if (!quiet) fprintf(stderr, "bench: %s\n", where);

    const int64_t side = size ? size / 8 : unet.cfg.sample_size;
    sd_tensor *hx = sd_tensor_new4(SD_F32, 4, batch, unet.cfg.in_channels, side, side);
    sd_tensor *hctx = sd_tensor_new4(SD_F32, 3, batch, 77, unet.cfg.cross_attention_dim, 0);
    double *ms_eager = calloc((size_t)iters, sizeof(double)), *ms_graph = calloc((size_t)iters, sizeof(double));
    sd_cuda_graph *graph = NULL;
    int graph_ok = 0;
    if (!hx || !hctx || !ms_eager || !ms_graph) st = sd_fail(SD_ERR_OOM, "out of host memory for the bench inputs");
    sd_tensor *x = NULL, *ctx = NULL;
    if (st == SD_OK) {
        sd_rng rng;
        sd_rng_seed(&rng, 1);
        sd_rng_randn(&rng, sd_f32(hx), sd_numel(hx));
        sd_rng_randn(&rng, sd_f32(hctx), sd_numel(hctx));
        x = sd_upload(&c, hx);
        ctx = sd_upload(&c, hctx);
        st = sd_ctx_status(&c);
    }
    /* warm-up (allocates the arena chunks, the workspace and every library plan); its output
     * is what --save-io records */
    if (st == SD_OK) {
        const sd_arena_mark mark = sd_arena_get_mark(c.arena);
        sd_tensor *eps = sd_unet_forward(&c, &unet, x, 981.0f, ctx);
        st = sd_ctx_status(&c);
        if (st == SD_OK && io_out) {
            sd_tensor *heps = sd_download_new(&c, eps);
            st = heps ? save_io(io_out, hx, hctx, 981.0f, heps) : sd_ctx_status(&c);
            sd_tensor_free(heps);
        }
        sd_arena_reset(c.arena, mark);
    }
    for (int i = 0; i < iters && st == SD_OK; i++) st = timed_unet(&c, &unet, x, ctx, cuda, NULL, &ms_eager[i]);
    if (st == SD_OK && cuda && !no_graph) {
        /* capture one call at the same arena mark; replays reuse its addresses */
        const sd_arena_mark mark = sd_arena_get_mark(c.arena);
        st = sd_cuda_graph_begin();
        if (st == SD_OK) {
            sd_unet_forward(&c, &unet, x, 981.0f, ctx);
            const sd_status during = sd_ctx_status(&c);
            const sd_status ended = sd_cuda_graph_end(&graph);
            st = during != SD_OK ? during : ended;
        }
        sd_arena_reset(c.arena, mark);
        if (st == SD_OK) {
            st = sd_cuda_graph_replay(graph); /* one warm-up replay */
            for (int i = 0; i < iters && st == SD_OK; i++) st = timed_unet(&c, &unet, x, ctx, 1, graph, &ms_graph[i]);
            graph_ok = st == SD_OK;
        }
    }
    if (st == SD_OK) {
        const bench_result e = summarize(ms_eager, iters);
        const double peak = (double)sd_arena_peak(c.arena) / (1 << 20);
        const char *dev = cuda ? "cuda" : "cpu";
        const char *prec = cuda ? sd_precision_name(precision) : "exact";
        char latent[32];
        snprintf(latent, sizeof latent, "%lldx%lld", (long long)side, (long long)side);
        if (tsv) {
            /* impl, model, device, precision, mode, batch, latent, median ms, min ms, peak MiB */
            printf("stylediff\t%s\t%s\t%s\teager\t%d\t%s\t%.3f\t%.3f\t%.0f\n", label, dev, prec, batch, latent,
                   e.median_ms, e.min_ms, peak);
            if (graph_ok) {
                const bench_result g = summarize(ms_graph, iters);
                printf("stylediff\t%s\t%s\t%s\tgraph\t%d\t%s\t%.3f\t%.3f\t%.0f\n", label, dev, prec, batch, latent,
                       g.median_ms, g.min_ms, peak);
            }
        } else {
            printf("%-28s %-6s %-6s %-6s %-6s %-8s %12s %12s %10s\n", "unet", "device", "prec", "mode", "batch",
                   "latent", "median ms", "min ms", "peak MiB");
            printf("%-28s %-6s %-6s %-6s %-6d %-8s %12.2f %12.2f %10.0f\n", label, dev, prec, "eager", batch, latent,
                   e.median_ms, e.min_ms, peak);
            if (graph_ok) {
                const bench_result g = summarize(ms_graph, iters);
                printf("%-28s %-6s %-6s %-6s %-6d %-8s %12.2f %12.2f %10.0f\n", label, dev, prec, "graph", batch,
                       latent, g.median_ms, g.min_ms, peak);
            }
        }
    }
    sd_cuda_graph_free(graph);
    free(ms_eager);
    free(ms_graph);
    sd_tensor_free(hx);
    sd_tensor_free(hctx);
    sd_ctx_free(&c);
    sd_weights_free(synth);
    if (!config_dir) sd_model_free(&m);
    return st ? cli_fail("bench", st) : 0;
}
