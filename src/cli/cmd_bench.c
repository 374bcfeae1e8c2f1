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

#include "bench_common.h"
#include "cli.h"
#include "sd/device.h"
#include "sd/model.h"

/* x, context, t and eps of one call, for the reference's parity check. */
static sd_status save_io(const char *path, const sd_tensor *x, const sd_tensor *context, float t,
                         const sd_tensor *eps) {
    const int64_t one = 1;
    sd_tensor tt = sd_tensor_wrap(&t, SD_F32, 1, &one);
    const sd_tensor *tensors[4] = {x, context, &tt, eps};
    const char *names[4] = {"sample", "encoder_hidden_states", "timestep", "eps"};
    return sd_safetensors_write(path, tensors, names, 4, NULL, 0);
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

/* One eager call with every forward op timed alone (sd_backend_profiled). */
static sd_status profile_unet(sd_ctx *c, const sd_unet *u, sd_tensor *x, sd_tensor *ctx, const char *what) {
    sd_profile prof;
    const sd_backend *be = c->be;
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    SD_TRY(be->synchronize());
    const double t0 = sd_now();
    c->be = sd_backend_profiled(be, &prof);
    sd_unet_forward(c, u, x, 981.0f, ctx);
    c->be = be;
    const sd_status synced = be->synchronize();
    const double wall = sd_now() - t0;
    sd_arena_reset(c->arena, mark);
    SD_TRY(sd_ctx_status(c));
    SD_TRY(synced);
    cli_bench_print_profile(&prof, wall, what);
    return SD_OK;
}

int cmd_bench(int argc, char **argv) {
    if (argc > 1 && !strcmp(argv[1], "invert")) return cmd_bench_invert(argc - 1, argv + 1);
    if (argc > 1 && !strcmp(argv[1], "grad")) return cmd_bench_grad(argc - 1, argv + 1);
    const char *model_path = NULL, *config_dir = NULL, *device = NULL, *precision_name = "exact";
    const char *weights_out = NULL, *io_out = NULL;
    int batch = 2, size = 0, iters = 3, quiet = 0, no_graph = 0, tsv = 0, profile = 0;
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
        {"profile", 0, CLI_FLAG, &profile, NULL, "then one more call with every op timed alone: where the time goes, per class of op", 1, 0},
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
        fprintf(stderr, "stylediff bench: unknown target '%s' (available: unet, invert, grad)\n", pos[0]);
        return 2;
    }
    sd_set_quiet(quiet);
    cli_bench_unet b;
    sd_status st = cli_bench_open(&b, model_path, config_dir, weights_out, device, precision_name, quiet, "bench");
    if (st) return cli_fail("bench", st);
    sd_ctx *c = &b.ctx;
    const sd_unet unet = b.unet;
    const int cuda = b.cuda;
    const char *label = b.label;

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
        x = sd_upload(c, hx);
        ctx = sd_upload(c, hctx);
        st = sd_ctx_status(c);
    }
    /* warm-up (allocates the arena chunks, the workspace and every library plan); its output
     * is what --save-io records. It runs through the profiling table, untimed, to count the
     * call's arithmetic (for TFLOP/s and the share of the card's peak). */
    double call_flops = 0.0;
    if (st == SD_OK) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const sd_backend *be = c->be;
        sd_profile count;
        c->be = sd_backend_profiled(be, &count);
        sd_tensor *eps = sd_unet_forward(c, &unet, x, 981.0f, ctx);
        c->be = be;
        for (int k = 0; k < SD_PROF_N; k++) call_flops += count.flops[k];
        st = sd_ctx_status(c);
        if (st == SD_OK && io_out) {
            sd_tensor *heps = sd_download_new(c, eps);
            st = heps ? save_io(io_out, hx, hctx, 981.0f, heps) : sd_ctx_status(c);
            sd_tensor_free(heps);
        }
        sd_arena_reset(c->arena, mark);
    }
    for (int i = 0; i < iters && st == SD_OK; i++) st = timed_unet(c, &unet, x, ctx, cuda, NULL, &ms_eager[i]);
    if (st == SD_OK && cuda && !no_graph) {
        /* capture one call at the same arena mark; replays reuse its addresses */
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        st = sd_cuda_graph_begin();
        if (st == SD_OK) {
            sd_unet_forward(c, &unet, x, 981.0f, ctx);
            const sd_status during = sd_ctx_status(c);
            const sd_status ended = sd_cuda_graph_end(&graph);
            st = during != SD_OK ? during : ended;
        }
        sd_arena_reset(c->arena, mark);
        if (st == SD_OK) {
            st = sd_cuda_graph_replay(graph); /* one warm-up replay */
            for (int i = 0; i < iters && st == SD_OK; i++) st = timed_unet(c, &unet, x, ctx, 1, graph, &ms_graph[i]);
            graph_ok = st == SD_OK;
        }
    }
    if (st == SD_OK) {
        const cli_bench_times e = cli_bench_summarize(ms_eager, iters);
        /* the activation arena (skip connections, outputs) and the scratch arena (one block) */
        const double peak = (double)(sd_arena_peak(c->arena) + (c->scratch ? sd_arena_peak(c->scratch) : 0)) / (1 << 20);
        const char *dev = cuda ? "cuda" : "cpu";
        /* fast mode with SD_FAST_ACTIVATIONS=f32 or non-default convolution settings is a row of
         * its own in side-by-side tables */
        const int fast = cuda && b.precision == SD_PRECISION_FAST;
        char prec[48];
        snprintf(prec, sizeof prec, "%s%s%s%s", cuda ? sd_precision_name(b.precision) : "exact",
                 fast && c->activations == SD_F32 ? "+f32act" : "",
                 fast && c->activations == SD_F16 && !sd_ctx_channels_last(c) ? "+nchw" : "",
                 cuda ? cli_bench_settings_suffix(b.precision) : "");
        char latent[32];
        snprintf(latent, sizeof latent, "%lldx%lld", (long long)side, (long long)side);
        /* the call's rate at its median time, and its share of the card's dense bf16 peak (the
         * performance spec's yardstick, whatever the mode's own arithmetic) */
        const double peak_tflops = cuda ? sd_cuda_bf16_peak_tflops() : 0.0;
        const cli_bench_times g = graph_ok ? cli_bench_summarize(ms_graph, iters) : e;
        char rate[2][32], share[2][32];
        const double med[2] = {e.median_ms, g.median_ms};
        for (int k = 0; k < 2; k++) {
            const double tflops = med[k] > 0 ? call_flops / (med[k] * 1e-3) / 1e12 : 0.0;
            snprintf(rate[k], sizeof rate[k], "%.2f", tflops);
            if (peak_tflops > 0) snprintf(share[k], sizeof share[k], "%.1f%%", 100.0 * tflops / peak_tflops);
            else snprintf(share[k], sizeof share[k], "-");
        }
        if (tsv) {
            /* impl, model, device, precision, mode, batch, latent, median ms, min ms, peak MiB,
             * TFLOP/s, share of the bf16 peak */
            printf("stylediff\t%s\t%s\t%s\teager\t%d\t%s\t%.3f\t%.3f\t%.0f\t%s\t%s\n", label, dev, prec, batch,
                   latent, e.median_ms, e.min_ms, peak, rate[0], share[0]);
            if (graph_ok)
                printf("stylediff\t%s\t%s\t%s\tgraph\t%d\t%s\t%.3f\t%.3f\t%.0f\t%s\t%s\n", label, dev, prec, batch,
                       latent, g.median_ms, g.min_ms, peak, rate[1], share[1]);
        } else {
            printf("%-28s %-6s %-11s %-6s %-6s %-8s %12s %12s %10s %9s %9s\n", "unet", "device", "prec", "mode", "batch",
                   "latent", "median ms", "min ms", "peak MiB", "TFLOP/s", "of bf16");
            printf("%-28s %-6s %-11s %-6s %-6d %-8s %12.2f %12.2f %10.0f %9s %9s\n", label, dev, prec, "eager", batch,
                   latent, e.median_ms, e.min_ms, peak, rate[0], share[0]);
            if (graph_ok)
                printf("%-28s %-6s %-11s %-6s %-6d %-8s %12.2f %12.2f %10.0f %9s %9s\n", label, dev, prec, "graph", batch,
                       latent, g.median_ms, g.min_ms, peak, rate[1], share[1]);
            printf("one call: %.4g GFLOP (2 per multiply-add, counted op by op)%s", call_flops / 1e9,
                   peak_tflops > 0 ? "" : "\n");
            if (peak_tflops > 0) printf("; this card's dense bf16 peak: %.0f TFLOP/s at its max SM clock\n", peak_tflops);
            const size_t copies = sd_ctx_lowp_weight_bytes(c);
            if (copies)
                printf("fp16 activations: the fp16 copies of the weights take %.0f MiB besides the F32 weights\n",
                       (double)copies / (1 << 20));
        }
        const sd_conv_algo algo = sd_cuda_get_conv_algo();
        if (cuda && (algo == SD_CONV_ALGO_GRAPH || algo == SD_CONV_ALGO_TUNE)) {
            int plans = 0, on_graph = 0;
            sd_cuda_conv_plan_counts(&plans, &on_graph, NULL);
            fprintf(stderr, "convolution plans on cuDNN's graph API (SD_CONV_ALGO=%s): %d of %d\n",
                    algo == SD_CONV_ALGO_TUNE ? "tune" : "graph", on_graph, plans);
        }
        if (cuda) {
            int plans = 0, wino = 0;
            sd_cuda_conv_plan_counts(&plans, NULL, &wino);
            fprintf(stderr, "convolution plans as Winograd (SD_CONV_WINOGRAD): %d of %d\n", wino, plans);
        }
        if (cuda && sd_cuda_get_gemm_algo() == SD_GEMM_ALGO_TUNE) {
            int plans = 0, tuned = 0;
            sd_cuda_gemm_plan_counts(&plans, &tuned);
            fprintf(stderr, "cuBLASLt linear plans tuned between several algorithms (SD_GEMM_ALGO=tune): %d of %d\n",
                    tuned, plans);
        }
    }
    if (st == SD_OK && profile) {
        char what[128];
        snprintf(what, sizeof what, "%s, batch %d, %s", label, batch,
                 c->activations != SD_F16 ? "F32 activations"
                 : sd_ctx_channels_last(c) ? "fp16 channels-last activations" : "fp16 NCHW activations");
        st = profile_unet(c, &unet, x, ctx, what);
    }
    sd_cuda_graph_free(graph);
    free(ms_eager);
    free(ms_graph);
    sd_tensor_free(hx);
    sd_tensor_free(hctx);
    cli_bench_close(&b);
    return st ? cli_fail("bench", st) : 0;
}
