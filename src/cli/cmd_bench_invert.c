/* cmd_bench_invert.c: `stylediff bench invert`: the cost of inverting one photo with each method
 * (DDIM, negative-prompt, Null-text, StyleDiffusion) beside the quality of its reconstruction —
 * the table the paper leaves empty ("Inference Time (per timestep)") — and the memory it took
 * (peak of the activation, kept-result and recomputation arenas during the inversion; weights
 * not included). */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "cli.h"
#include "sd/autograd.h"
#include "sd/clip_vision.h"
#include "sd/presets.h"

#define STEADY_FROM 2

typedef struct {
    sd_invert_method method;
    int steps, timesteps_run, iterations;
    int graph_iterations; /* of the iterations, those replayed from a CUDA graph */
    double seconds_total, seconds_encode, seconds_ddim, seconds_opt; /* opt: total - encode - ddim */
    /* The first STEADY_FROM timesteps carry one-time costs (plans, each repeated step's first,
     * op-by-op run, the CUDA graphs' captures: the optimiser iteration's within timestep 0, the
     * per-timestep forwards' in timestep 1); a whole inversion spreads them over every timestep.
     * Steady state: the timesteps after those (NAN without any), per timestep and per iteration;
     * seconds_first: the first STEADY_FROM timesteps together. */
    double seconds_first, steady_timestep_s, steady_iteration_s;
    double latent_mse, psnr;
    double peak_mib; /* activations (arena + recomputation scratch) and kept results, over the method */
    sd_status status;
} bench_row;

static void print_rows(const bench_row *rows, int n, const char *where, int tsv) {
    if (tsv) {
        for (int i = 0; i < n; i++)
            printf("invert\t%s\t%d\t%d\t%d\t%.4f\t%.4f\t%.4f\t%.6g\t%.3f\t%.0f\t%d\t%.4f\t%.4f\t%.5f\t%.6f\n",
                   sd_invert_method_name(rows[i].method), rows[i].steps, rows[i].timesteps_run, rows[i].iterations,
                   rows[i].seconds_total, rows[i].seconds_ddim, rows[i].seconds_opt, rows[i].latent_mse, rows[i].psnr,
                   rows[i].peak_mib, rows[i].graph_iterations, rows[i].seconds_encode, rows[i].seconds_first,
                   rows[i].steady_timestep_s, rows[i].steady_iteration_s);
        return;
    }
    printf("inversion cost and reconstruction quality on %s\n", where);
    printf("%-15s %6s %6s %10s %7s %9s %11s %14s %14s %10s %12s %9s %9s\n", "method", "steps", "timed", "iterations",
           "graphed", "encode s", "ddim inv s", "per timestep s", "per iter ms", "total s", "latent MSE", "PSNR dB",
           "peak MiB");
    int steady = 0;
    for (int i = 0; i < n; i++) {
        const bench_row *r = &rows[i];
        if (r->status) {
            printf("%-15s failed: %s\n", sd_invert_method_name(r->method), sd_status_name(r->status));
            continue;
        }
        char per_iter[32] = "-", mse[32] = "-", psnr[32] = "-";
        if (r->iterations) snprintf(per_iter, sizeof per_iter, "%.1f", 1e3 * r->seconds_opt / r->iterations);
        if (isfinite(r->latent_mse)) snprintf(mse, sizeof mse, "%.5g", r->latent_mse);
        if (isfinite(r->psnr)) snprintf(psnr, sizeof psnr, "%.2f", r->psnr);
        char per_step[32] = "-";
        if (r->timesteps_run) snprintf(per_step, sizeof per_step, "%.3f", r->seconds_opt / r->timesteps_run);
        printf("%-15s %6d %6d %10d %7d %9.3f %11.3f %14s %14s %10.2f %12s %9s %9.0f\n", sd_invert_method_name(r->method),
               r->steps, r->timesteps_run, r->iterations, r->graph_iterations, r->seconds_encode, r->seconds_ddim,
               per_step, per_iter, r->seconds_total, mse, psnr, r->peak_mib);
        steady |= isfinite(r->steady_timestep_s);
    }
    if (!steady) return;
    printf("steady state: the timed timesteps after the first %d (those carry the one-time plans and CUDA graph "
           "captures):\n", STEADY_FROM);
    for (int i = 0; i < n; i++) {
        const bench_row *r = &rows[i];
        if (r->status || !isfinite(r->steady_timestep_s)) continue;
        char per_iter[32] = "-";
        if (isfinite(r->steady_iteration_s)) snprintf(per_iter, sizeof per_iter, "%.1f", 1e3 * r->steady_iteration_s);
        printf("%-15s first %d timesteps %.3f s, then %.3f s per timestep, %s ms per iteration\n",
               sd_invert_method_name(r->method), STEADY_FROM, r->seconds_first, r->steady_timestep_s, per_iter);
    }
}

int cmd_bench_invert(int argc, char **argv) {
    const char *model_path = NULL, *image_path = "data/images/chelsea.png", *prompt = "a cat sitting on a wooden floor";
    const char *methods = "ddim,npi,nulltext,stylediffusion", *clip_dir = NULL, *device = NULL, *precision = NULL;
    const char *save_dir = NULL;
    int steps = 0, steps_sd = 0, inner = -1, inner_sd = -1, timesteps = 0, quiet = 0, tsv = 0, recompute = 0, eager = 0;
    int profile = 0;
    const cli_opt opts[] = {
        {"image", 'i', CLI_STR, &image_path, "FILE", "photo (default data/images/chelsea.png)", 1, 0},
        {"prompt", 'p', CLI_STR, &prompt, "TEXT", "its description (default \"a cat sitting on a wooden floor\")", 1, 0},
        {"methods", 0, CLI_STR, &methods, "LIST", "comma-separated (default ddim,npi,nulltext,stylediffusion)", 1, 0},
        {"steps", 0, CLI_INT, &steps, "N", "DDIM steps of ddim/npi/nulltext (default 50)", 1, 1000},
        {"steps-sd", 0, CLI_INT, &steps_sd, "N", "DDIM steps of stylediffusion (default 30)", 1, 1000},
        {"inner", 0, CLI_INT, &inner, "N", "Null-text iterations per timestep (default 10)", 0, 100000},
        {"inner-sd", 0, CLI_INT, &inner_sd, "N", "StyleDiffusion iterations at the first timestep (default 100, decaying)", 0, 100000},
        {"timesteps", 0, CLI_INT, &timesteps, "K", "time only the first K timesteps of the optimising methods (no reconstruction)", 0, 1000},
        {"model", 'm', CLI_STR, &model_path, "MODEL", "checkpoint (default: built-in tiny model)", 1, 0},
        {"clip", 0, CLI_STR, &clip_dir, "DIR", "CLIP ViT-B/16 folder for stylediffusion (default with the built-in model: its tiny tower)", 1, 0},
        {"save", 0, CLI_STR, &save_dir, "DIR", "also write each method's inversion and reconstruction PNG into DIR", 1, 0},
        {"tsv", 0, CLI_FLAG, &tsv, NULL, "tab-separated rows instead of the table", 1, 0},
        {"profile", 0, CLI_FLAG, &profile, NULL,
         "also print where each method's time goes, op by op (runs eagerly, every op timed alone: slower)", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no progress bars or notices", 1, 0},
        CLI_RECOMPUTE_OPTION(recompute),
        CLI_EAGER_OPTION(eager),
        CLI_DEVICE_OPTIONS(device, precision),
    };
    const cli_command cmd = {"bench invert", NULL, "[options]",
                             "Inverts one photo with each method and prints, per method: the DDIM inversion time,\n"
                             "the optimisation time per timestep and per optimiser iteration, the total, and the\n"
                             "reconstruction's latent MSE and PSNR (sampled back with the method's own variables).\n"
                             "With more than 2 timesteps timed, also the steady state: the time per timestep and per\n"
                             "iteration after the first 2, which carry the one-time plans and CUDA graph captures.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 0, 0};
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, NULL, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);

    sd_invert_method list[4];
    int n_methods = 0;
    char buf[256];
    snprintf(buf, sizeof buf, "%s", methods);
    for (char *tok = strtok(buf, ","); tok; tok = strtok(NULL, ",")) {
        if (n_methods == 4) {
            fprintf(stderr, "stylediff bench invert: --methods lists more than 4 methods\n");
            return 2;
        }
        sd_status st = sd_invert_method_parse(tok, &list[n_methods]);
        if (st) return cli_fail("bench invert", st);
        n_methods++;
    }

    sd_model m;
    sd_status st = sd_model_load(model_path, &m);
    if (st) return cli_fail("bench invert", st);
    const int size = 8 * m.unet.cfg.sample_size;
    sd_image input = {0};
    sd_clip_vision clip;
    memset(&clip, 0, sizeof clip);
    int have_clip = 0, have_ctx = 0;
    for (int i = 0; i < n_methods && !st; i++)
        if (list[i] == SD_INVERT_STYLEDIFFUSION && !have_clip) {
            if (!clip_dir && !m.builtin)
                st = sd_fail(SD_ERR_ARG, "stylediffusion needs the CLIP ViT-B/16 image encoder: pass --clip DIR");
            else if (!(st = sd_clip_vision_load(clip_dir ? clip_dir : sd_builtin_clip_vision_dir(), &clip)))
                have_clip = 1;
        }
    if (!st) st = sd_image_load_512(image_path, 0, 0, 0, 0, size, &input);
    sd_ctx c;
    char where[256] = "";
    if (!st && !(st = cli_open_context(device, precision, &m, &c, where, sizeof where))) have_ctx = 1;
    if (have_ctx) {
        c.recompute = recompute;
        c.eager = eager;
    }
    if (!st && have_clip) st = sd_ctx_adopt_weights(&c, clip.owned);
    sd_tensor *x = NULL, *features = NULL;
    if (!st) {
        x = sd_keep(&c, sd_image_upload(&c, &input));
        const sd_arena_mark act = sd_arena_get_mark(c.arena);
        if (have_clip) features = sd_keep(&c, sd_clip_vision_encode(&c, &clip, x));
        sd_arena_reset(c.arena, act); /* only the kept features outlive the encoder */
        st = sd_ctx_status(&c);
    }

    bench_row rows[4];
    memset(rows, 0, sizeof rows);
    for (int i = 0; i < n_methods && !st; i++) {
        bench_row *row = &rows[i];
        row->method = list[i];
        row->latent_mse = row->psnr = NAN;
        row->seconds_first = row->steady_timestep_s = row->steady_iteration_s = NAN;
        sd_method_preset preset;
        sd_method_preset_default(list[i], &preset);
        sd_invert_options o = preset.invert;
        const int is_sd = list[i] == SD_INVERT_STYLEDIFFUSION;
        if (is_sd && steps_sd) o.n_steps = steps_sd;
        if (!is_sd && steps) o.n_steps = steps;
        if (is_sd && inner_sd >= 0) o.inner_steps = inner_sd;
        if (!is_sd && inner >= 0) o.inner_steps = inner;
        const int optimising = list[i] == SD_INVERT_NULLTEXT || is_sd;
        if (optimising) o.stop_after = timesteps;
        const sd_arena_mark keep = sd_arena_get_mark(c.keep), act = sd_arena_get_mark(c.arena);
        sd_arena_reset_peak(c.arena);
        sd_arena_reset_peak(c.keep);
        if (c.scratch) sd_arena_reset_peak(c.scratch);
        sd_inversion inv;
        const sd_backend *be = c.be;
        const int was_eager = c.eager;
        sd_profile prof;
        if (profile) {
            c.be = sd_backend_profiled(be, &prof);
            c.eager = 1; /* a replayed graph would bypass the timing */
        }
        row->status = sd_invert(&c, &m, &o, x, prompt, is_sd ? features : NULL, &inv);
        if (profile) {
            c.be = be;
            c.eager = was_eager;
            if (!row->status) {
                char what[160];
                snprintf(what, sizeof what, "bench invert %s, %d timestep(s)", sd_invert_method_name(list[i]),
                         optimising && o.stop_after ? o.stop_after : o.n_steps);
                cli_bench_print_profile(&prof, inv.seconds_total, what);
            }
        }
        row->peak_mib = (double)(sd_arena_peak(c.arena) - act.used + sd_arena_peak(c.keep) - keep.used +
                                 (c.scratch ? sd_arena_peak(c.scratch) : 0)) / (1 << 20);
        row->steps = o.n_steps;
        if (!row->status) {
            row->timesteps_run = optimising ? (o.stop_after ? o.stop_after : o.n_steps) : 0;
            double first_s = 0.0, later_s = 0.0;
            int later_iters = 0;
            for (int k = 0; k < row->timesteps_run; k++) {
                row->iterations += inv.stats[k].iterations;
                if (k < STEADY_FROM) {
                    first_s += inv.stats[k].seconds;
                } else {
                    later_s += inv.stats[k].seconds;
                    later_iters += inv.stats[k].iterations;
                }
            }
            if (row->timesteps_run > STEADY_FROM) {
                row->seconds_first = first_s;
                row->steady_timestep_s = later_s / (row->timesteps_run - STEADY_FROM);
                if (later_iters) row->steady_iteration_s = later_s / later_iters;
            }
            row->graph_iterations = inv.graph_steps;
            row->seconds_total = inv.seconds_total;
            row->seconds_encode = inv.seconds_encode;
            row->seconds_ddim = inv.seconds_ddim;
            row->seconds_opt = inv.seconds_total - inv.seconds_encode - inv.seconds_ddim;
            if (!optimising || !o.stop_after) {
                sd_tensor *z = sd_inversion_reconstruct(&c, &m, &inv);
                sd_tensor *z0 = sd_upload(&c, inv.z0);
                row->latent_mse = z ? sd_item(&c, sd_mse(&c, z, z0)) : NAN;
                sd_image rec = {0};
                if (z && sd_image_download(&c, sd_latent_to_image(&c, &m, z), 0, &rec) == SD_OK)
                    row->psnr = sd_image_psnr(&rec, &input);
                row->status = sd_ctx_status(&c);
                if (!row->status && save_dir) {
                    char path[4096];
                    inv.image_hash = sd_hash64(input.data, (size_t)input.width * input.height * 3);
                    inv.image_size = size;
                    snprintf(path, sizeof path, "%s/%s.safetensors", save_dir, sd_invert_method_name(list[i]));
                    row->status = sd_inversion_save(&inv, path);
                    snprintf(path, sizeof path, "%s/%s_reconstruction.png", save_dir, sd_invert_method_name(list[i]));
                    if (!row->status) row->status = sd_image_save_png(path, &rec);
                }
                sd_image_free(&rec);
            }
        }
        if (row->status) fprintf(stderr, "stylediff bench invert: %s: %s\n", sd_invert_method_name(list[i]), sd_last_error());
        c.status = SD_OK; /* one method failing does not stop the others */
        sd_inversion_free(&inv);
        sd_arena_reset(c.arena, act);
        sd_arena_reset(c.keep, keep);
    }
    if (!st) print_rows(rows, n_methods, where, tsv);
    sd_image_free(&input);
    if (have_ctx) sd_ctx_free(&c);
    if (have_clip) sd_clip_vision_release(&clip);
    sd_model_free(&m);
    if (st) return cli_fail("bench invert", st);
    for (int i = 0; i < n_methods; i++)
        if (rows[i].status) return 1;
    return 0;
}
