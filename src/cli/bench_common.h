/* bench_common.h: what the `stylediff bench` subcommands share: binding the UNet they time (a
 * checkpoint's, or a config's with synthesized random weights), writing those weights for the
 * PyTorch side of a side-by-side run, and summarising timings. */
#ifndef SD_CLI_BENCH_COMMON_H
#define SD_CLI_BENCH_COMMON_H

#include "sd/device.h"
#include "sd/model.h"

/* What a UNet benchmark runs on: the UNet bound either from a model (model_path, or the built-in
 * one when NULL) or, when config_dir is set, from its unet.json (or unet/config.json) with random
 * weights; the weight store it was bound from (written to weights_out when set); a context on
 * the requested device with the weights moved there. */
typedef struct cli_bench_unet {
    sd_unet unet;
    sd_model model;      /* the model path */
    sd_weights *synth;   /* the config path's random weights */
    sd_weights *store;   /* what the UNet is bound to */
    const char *label;   /* what the reports call it */
    sd_ctx ctx;
    int have_model, have_ctx, cuda;
    sd_precision precision;
    char where[512];     /* sd_device_describe of the context */
} cli_bench_unet;

/* Opens everything above; `who` prefixes notices ("bench grad"). On failure what was opened is
 * closed again. */
sd_status cli_bench_open(cli_bench_unet *b, const char *model_path, const char *config_dir, const char *weights_out,
                         const char *device, const char *precision_name, int quiet, const char *who);
void cli_bench_close(cli_bench_unet *b);

/* Every tensor of a weight store, under its diffusers name, into one safetensors file (the
 * PyTorch references load it with the same names). */
sd_status cli_bench_save_weights(const sd_weights *w, const char *path);

/* Bytes of every tensor of a store once converted to F32 (what the backend holds). */
size_t cli_bench_weights_bytes(const sd_weights *w);

typedef struct cli_bench_times {
    double median_ms, min_ms;
} cli_bench_times;

/* Median (upper middle for an even count) and minimum; sorts ms in place. n >= 1. */
cli_bench_times cli_bench_summarize(double *ms, int n);

/* Prints where the time of one profiled call went (sd_backend_profiled): per class of op, calls,
 * ms, share of the timed total, TFLOP/s and GB/s; `wall_s` is the call's wall time, `what` names it. */
struct sd_profile;
void cli_bench_print_profile(const struct sd_profile *prof, double wall_s, const char *what);

/* The suffix that names a CUDA run's settings when they are not the defaults, so that side-by-side
 * tables keep them in rows of their own: convolutions "+cudnn" (SD_CONV_GEMM=off: cuDNN at every
 * size, either mode), in fast mode "+gemm" (SD_CONV_GEMM=all) or "+find", "+graph", "+tune"
 * (SD_CONV_ALGO); then fast mode's F32 GEMMs "+tf32" or "+fp16gemm" (SD_FAST_GEMM), "+gtune"
 * (SD_GEMM_ALGO=tune), "+fa1" (SD_FLASH_BLOCKS_PER_SM=1), "+fb2" (SD_FLASH_BWD_BLOCKS_PER_SM=2); in either mode
 * "+pdl" (SD_CUDA_PDL=1); "" for the defaults. */
const char *cli_bench_settings_suffix(sd_precision precision);

#endif
