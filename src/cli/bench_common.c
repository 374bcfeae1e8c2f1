/* bench_common.c: see bench_common.h. */
#include "bench_common.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int cmp_double(const void *a, const void *b) {
    const double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

/* The UNet of a model or of a config with random weights (see cli_bench_unet). */
static sd_status load_unet(cli_bench_unet *b, const char *model_path, const char *config_dir) {
    if (config_dir) {
        char path[4096];
        sd_unet_config cfg;
        snprintf(path, sizeof path, "%s/unet.json", config_dir);
        if (!sd_file_exists(path)) snprintf(path, sizeof path, "%s/unet/config.json", config_dir);
        SD_TRY(sd_unet_config_load(path, &cfg));
        b->synth = sd_weights_new("random weights");
        if (!b->synth) return SD_ERR_OOM;
        sd_weights_synthesize(b->synth, 0);
        b->label = config_dir;
        b->store = b->synth;
        return sd_unet_bind(&b->unet, &cfg, b->synth);
    }
    SD_TRY(sd_model_load(model_path, &b->model));
    b->have_model = 1;
    b->unet = b->model.unet;
    b->store = b->model.files.unet;
    b->label = b->model.builtin ? "built-in tiny" : b->model.files.source;
    return SD_OK;
}

sd_status cli_bench_open(cli_bench_unet *b, const char *model_path, const char *config_dir, const char *weights_out,
                         const char *device, const char *precision_name, int quiet, const char *who) {
    memset(b, 0, sizeof *b);
    sd_status st = sd_precision_parse(precision_name, &b->precision);
    if (st == SD_OK) st = load_unet(b, model_path, config_dir);
    if (st == SD_OK && weights_out) {
        st = cli_bench_save_weights(b->store, weights_out);
        if (st == SD_OK && !quiet)
            fprintf(stderr, "%s: wrote %d UNet tensors to %s\n", who, sd_weights_count(b->store), weights_out);
    }
    if (st == SD_OK && (st = sd_device_open(device, b->precision, &b->ctx)) == SD_OK) b->have_ctx = 1;
    if (st == SD_OK) st = sd_ctx_adopt_weights(&b->ctx, b->store); /* no-op on the CPU */
    if (st) {
        cli_bench_close(b);
        return st;
    }
    b->cuda = b->ctx.device != SD_DEVICE_CPU;
    sd_device_describe(&b->ctx, b->where, sizeof b->where);
    if (!quiet) fprintf(stderr, "%s: %s\n", who, b->where);
    return SD_OK;
}

void cli_bench_close(cli_bench_unet *b) {
    if (b->have_ctx) sd_ctx_free(&b->ctx);
    sd_weights_free(b->synth);
    if (b->have_model) sd_model_free(&b->model);
    b->have_ctx = b->have_model = 0;
    b->synth = NULL;
}

sd_status cli_bench_save_weights(const sd_weights *w, const char *path) {
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

size_t cli_bench_weights_bytes(const sd_weights *w) {
    size_t bytes = 0;
    for (int i = 0; i < sd_weights_count(w); i++) bytes += (size_t)sd_numel(sd_weights_tensor_at(w, i)) * sizeof(float);
    return bytes;
}

cli_bench_times cli_bench_summarize(double *ms, int n) {
    qsort(ms, (size_t)n, sizeof *ms, cmp_double);
    cli_bench_times r = {ms[n / 2], ms[0]};
    return r;
}

void cli_bench_print_profile(const sd_profile *prof, double wall_s, const char *what) {
    double timed = 0.0;
    for (int k = 0; k < SD_PROF_N; k++) timed += prof->seconds[k];
    if (prof->device_timed)
        printf("\nwhere the time goes (%s; one eager call, %.2f ms with every op synchronised and timed alone\n"
               "on the GPU, CUDA events behind a held stream: kernels back to back, launches left out;\n"
               "%lld ops launched slower than the hold, their times upper bounds; weights not counted in the traffic):\n",
               what, 1e3 * wall_s, (long long)prof->launch_bound_ops);
    else
        printf("\nwhere the time goes (%s; one eager call, %.2f ms with every op synchronised and timed alone,\n"
               "%.1f us of synchronisation subtracted per op; weights not counted in the traffic):\n",
               what, 1e3 * wall_s, 1e6 * prof->sync_overhead_s);
    printf("%-20s %7s %10s %7s %10s %10s\n", "class", "calls", "ms", "share", "TFLOP/s", "GB/s");
    for (int k = 0; k < SD_PROF_N; k++) {
        const double sec = prof->seconds[k];
        char rate[32] = "-";
        if (prof->flops[k] > 0 && sec > 0) snprintf(rate, sizeof rate, "%.1f", prof->flops[k] / sec / 1e12);
        printf("%-20s %7lld %10.3f %6.1f%% %10s %10.0f\n", sd_prof_class_name((sd_prof_class)k),
               (long long)prof->calls[k], 1e3 * sec, timed > 0 ? 100.0 * sec / timed : 0.0, rate,
               sec > 0 ? prof->bytes[k] / sec / 1e9 : 0.0);
    }
    printf("%-20s %7s %10.3f   (timed ops; the rest of the wall time is launches, syncs and untimed ops)\n", "total",
           "", 1e3 * timed);
    /* the heaviest ops by kind and shape: which kernels to work on; SD_PROFILE_TOP=N lists N of
     * them (default 15; a large N lists every kind, whatever their times' order) */
    int top = 15;
    const char *top_env = getenv("SD_PROFILE_TOP");
    if (top_env && *top_env) {
        char *end = NULL;
        const long v = strtol(top_env, &end, 10);
        if (*end || v < 1) sd_warn("SD_PROFILE_TOP=%s is not a positive count: listing 15 kinds", top_env);
        else top = v > SD_PROF_MAX_SHAPES ? SD_PROF_MAX_SHAPES : (int)v;
    }
    int order[SD_PROF_MAX_SHAPES];
    const int n = prof->n_shapes;
    for (int i = 0; i < n; i++) order[i] = i;
    for (int i = 1; i < n; i++) { /* insertion sort by time, descending (n <= 256) */
        const int o = order[i];
        int j = i;
        for (; j > 0 && prof->shapes[order[j - 1]].seconds < prof->shapes[o].seconds; j--) order[j] = order[j - 1];
        order[j] = o;
    }
    printf("heaviest ops by kind and shape (%d of %d kinds):\n", n < top ? n : top, n);
    printf("  %-52s %6s %9s %7s %9s %8s\n", "op", "calls", "ms", "share", "TFLOP/s", "GB/s");
    for (int r = 0; r < n && r < top; r++) {
        const sd_prof_shape *e = &prof->shapes[order[r]];
        char rate[32] = "-";
        if (e->flops > 0 && e->seconds > 0) snprintf(rate, sizeof rate, "%.1f", e->flops / e->seconds / 1e12);
        printf("  %-52s %6lld %9.3f %6.1f%% %9s %8.0f\n", e->what, (long long)e->calls, 1e3 * e->seconds,
               timed > 0 ? 100.0 * e->seconds / timed : 0.0, rate, e->seconds > 0 ? e->bytes / e->seconds / 1e9 : 0.0);
    }
}

/* What the Winograd setting changes from the default (auto: exact mode F(4x4, 3x3) at 64x64 and
 * 32x32, fast mode none): "" where nothing; "+direct" (exact mode without Winograd); "+wino" (F(2x2,
 * 3x3) at 64x64 and 32x32: exact mode under on, fast mode under on and f4); "+wino-all" (F(2x2) on
 * every 3x3 "same" convolution); "+wino4-all" (exact mode's F(4x4) on every one); "+wino-mixed"
 * (exact mode's F(4x4) at 64x64 and 32x32, F(2x2) on the others). */
static const char *winograd_suffix(sd_precision precision) {
    const int exact = precision != SD_PRECISION_FAST;
    switch (sd_cuda_get_conv_winograd()) {
    case SD_CONV_WINOGRAD_OFF: /* "+cudnn" (conv_suffix) already says every convolution is direct */
        return exact && sd_cuda_get_conv_gemm() != SD_CONV_GEMM_OFF ? "+direct" : "";
    case SD_CONV_WINOGRAD_ON: return "+wino";
    case SD_CONV_WINOGRAD_ALL: return "+wino-all";
    case SD_CONV_WINOGRAD_F4: return exact ? "" : "+wino";
    case SD_CONV_WINOGRAD_F4_ALL: return exact ? "+wino4-all" : "+wino-all";
    case SD_CONV_WINOGRAD_F4_MIXED: return exact ? "+wino-mixed" : "+wino-all";
    case SD_CONV_WINOGRAD_AUTO: break;
    }
    return "";
}

static const char *conv_suffix(sd_precision precision) {
    const sd_conv_gemm gemm = sd_cuda_get_conv_gemm();
    if (gemm == SD_CONV_GEMM_OFF) return "+cudnn";
    if (precision != SD_PRECISION_FAST) return ""; /* exact mode: GEMMs under AUTO and ALL alike */
    if (gemm == SD_CONV_GEMM_ALL) return "+gemm";
    switch (sd_cuda_get_conv_algo()) {
    case SD_CONV_ALGO_FIND: return "+find";
    case SD_CONV_ALGO_GRAPH: return "+graph";
    case SD_CONV_ALGO_TUNE: return "+tune";
    default: return "";
    }
}

const char *cli_bench_settings_suffix(sd_precision precision) {
    static char buf[64];
    const char *gemm = sd_cuda_fast_gemm_name();
    const char *gemm_tag = "";
    if (precision == SD_PRECISION_FAST)
        gemm_tag = !strcmp(gemm, "tf32") ? "+tf32" : !strcmp(gemm, "fp16") ? "+fp16gemm" : "";
    const char *flash_tag = precision == SD_PRECISION_FAST && sd_cuda_get_flash_blocks_per_sm() == 1 ? "+fa1" : "";
    const char *flash_bwd_tag = precision == SD_PRECISION_FAST && sd_cuda_get_flash_bwd_blocks_per_sm() == 2 ? "+fb2" : "";
    const char *tune_tag = precision == SD_PRECISION_FAST && sd_cuda_get_gemm_algo() == SD_GEMM_ALGO_TUNE ? "+gtune" : "";
    const char *pdl_tag = sd_cuda_get_pdl() ? "+pdl" : "";
    snprintf(buf, sizeof buf, "%s%s%s%s%s%s%s", winograd_suffix(precision), conv_suffix(precision), gemm_tag, tune_tag,
             flash_tag, flash_bwd_tag, pdl_tag);
    return buf;
}
