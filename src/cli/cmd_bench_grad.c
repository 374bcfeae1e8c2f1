/* cmd_bench_grad.c: `stylediff bench grad`: the cost of one gradient step through the UNet, the
 * unit of work of every optimising inversion, beside one forward call; and (--save-io) the exact
 * inputs, losses and gradients, so bench/reference/invert_torch.py --grad-io can check them
 * against torch autograd on the same weights and time PyTorch on the same card.
 *
 * The steps (t = 981, guidance 7.5, batch 1, random inputs from seed 1):
 *   forward  eps = UNet(z, t, c), no tape: the yardstick.
 *   context  Null-text's step: eps_u = UNet(z, t, u) with u a trainable leaf, eps = eps_u +
 *            w (eps_c - eps_u) with eps_c computed once beforehand, L = mse(eps, target),
 *            backward to u. (Null-text also maps eps through prev_step and runs Adam: elementwise
 *            work on 16 K values, left out so that the row measures the UNet.)
 *   value    StyleDiffusion's step: eps_c = UNet(z, t, c) with a trainable value input v (starting
 *            at c) substituted in all 16 cross-attention layers (keys read c), eps = eps_u +
 *            w (eps_c - eps_u) with eps_u fixed, L = mse(eps, target), backward to v.
 * Both gradient steps start from the UNet prefix of (z, t), made once beforehand, as a timestep's
 * iterations do (sd_invert_prefix): what precedes the first cross-attention is not in their time.
 * On a GPU each kind of step is captured into a CUDA graph and replayed (sd_graph_step), as the
 * inversions run them; --eager times them op by op.
 * Memory: the activation arena's peak during each row's steps (with --recompute, plus the
 * recomputation arena's: one block's activations), and the weights (F32) it runs with; on CUDA also the device memory in use at the end (cudaMemGetInfo: total - free, CUDA
 * context, library workspaces and arena chunks included). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "bench_common.h"
#include "cli.h"
#include "sd/autograd.h"
#include "sd/control.h"
#include "sd/device.h"
#include "sd/sched.h"

#define GRAD_T 981.0f
#define GRAD_GUIDANCE 7.5f

typedef enum { WORK_FORWARD, WORK_CONTEXT, WORK_VALUE } grad_work;
static const char *const WORK_NAME[] = {"forward", "context", "value"};

typedef struct {
    sd_ctx *c;
    const sd_unet *u;
    sd_tensor *z, *cond, *target; /* (1, 4, h, w), (1, 77, D), (1, 4, h, w) */
    sd_tensor *eps_c, *eps_u;     /* kept: eps with the plain cond / uncond context */
    sd_tensor *leaf_u, *leaf_v;   /* trainable (1, 77, D): the null embedding, the value input */
    sd_tape *tape;
    sd_unet_prefix *prefix;       /* of UNet(z, t, ·), made once, as a timestep's iterations read it */
    sd_step_graph graphs[3];      /* one per step kind: replayed on a GPU unless --eager */
    grad_work work;               /* the step grad_forward computes */
} grad_env;

/* The loss of one step of e->work (the eps of a forward), a pure function of the env's tensors. */
static sd_tensor *grad_forward(sd_ctx *c, void *arg) {
    const grad_env *e = arg;
    if (e->work == WORK_FORWARD) return sd_unet_forward(c, e->u, e->z, GRAD_T, e->cond);
    sd_tensor *eps;
    if (e->work == WORK_CONTEXT) {
        sd_tensor *eps_u = sd_unet_forward_from(c, e->u, e->prefix, e->leaf_u);
        eps = sd_cfg_combine(c, eps_u, e->eps_c, GRAD_GUIDANCE);
    } else {
        sd_value_capture_hook hook;
        sd_value_capture_hook_init(&hook, e->leaf_v, 0);
        struct sd_attn_hook *saved = c->hook;
        c->hook = &hook.base;
        sd_tensor *eps_c = sd_unet_forward_from(c, e->u, e->prefix, e->cond);
        c->hook = saved;
        eps = sd_cfg_combine(c, e->eps_u, eps_c, GRAD_GUIDANCE);
    }
    return sd_mse(c, eps, e->target);
}

/* One step of `work` (sd_graph_step: op by op the first time, then captured and replayed as a
 * CUDA graph on a GPU unless --eager; the timestep is a constant here, so by value is fine); the
 * loss goes to *loss (host) when loss is not NULL. Leaves the leaf's gradient in leaf->grad (arena
 * memory: read it before the caller resets the arena). */
static sd_status grad_step(grad_env *e, grad_work work, float *loss) {
    sd_ctx *c = e->c;
    sd_tape_reset(e->tape);
    e->work = work;
    sd_tensor *leaf = work == WORK_CONTEXT ? e->leaf_u : work == WORK_VALUE ? e->leaf_v : NULL;
    const void *inputs[] = {e->z->data, e->cond->data, e->target->data, e->eps_c->data, e->eps_u->data,
                            e->prefix->stream.data};
    sd_tensor *out = sd_graph_step(c, &e->graphs[work], leaf ? e->tape : NULL, grad_forward, e, inputs, 6,
                                   leaf ? &leaf : NULL, leaf ? 1 : 0);
    if (loss && out) *loss = sd_item(c, out);
    return sd_ctx_status(c);
}

/* Times `iters` steps after the warm-up (one step, two when the step is replayed as a CUDA graph:
 * the first runs op by op, the second is captured); the activation peak covers all of them. */
static sd_status time_work(grad_env *e, grad_work work, int iters, int cuda, double *ms, double *peak_mib) {
    sd_ctx *c = e->c;
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_arena_reset_peak(c->arena);
    if (c->scratch) sd_arena_reset_peak(c->scratch);
    for (int w = 0; w < (e->graphs[work].enabled ? 2 : 1); w++) {
        SD_TRY(grad_step(e, work, NULL)); /* warm-up: arena chunks, library plans, the graph */
        sd_tape_reset(e->tape);
        sd_arena_reset(c->arena, mark);
    }
    for (int i = 0; i < iters; i++) {
        const double t0 = sd_now();
        if (cuda) SD_TRY(sd_cuda_timer_start());
        SD_TRY(grad_step(e, work, NULL));
        if (cuda) {
            float t = 0.0f;
            SD_TRY(sd_cuda_timer_stop(&t));
            ms[i] = t;
        } else {
            ms[i] = 1e3 * (sd_now() - t0);
        }
        sd_tape_reset(e->tape);
        sd_arena_reset(c->arena, mark);
    }
    *peak_mib = (double)(sd_arena_peak(c->arena) - sd_arena_used(c->arena)) / (1 << 20);
    if (c->scratch) *peak_mib += (double)sd_arena_peak(c->scratch) / (1 << 20); /* one recomputed block */
    return SD_OK;
}

/* One step of `work` run op by op with every op timed alone (sd_backend_profiled), printed. */
static sd_status profile_work(grad_env *e, grad_work work, const char *what) {
    sd_ctx *c = e->c;
    const sd_backend *be = c->be;
    const int eager = c->eager;
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_profile prof;
    SD_TRY(be->synchronize());
    const double t0 = sd_now();
    c->be = sd_backend_profiled(be, &prof);
    c->eager = 1; /* a replayed graph would bypass the timing */
    const sd_status st = grad_step(e, work, NULL);
    c->eager = eager;
    c->be = be;
    const sd_status synced = be->synchronize();
    const double wall = sd_now() - t0;
    sd_tape_reset(e->tape);
    sd_arena_reset(c->arena, mark);
    SD_TRY(st);
    SD_TRY(synced);
    cli_bench_print_profile(&prof, wall, what);
    return SD_OK;
}

/* The exact inputs and results of one context step and one value step, for --save-io. */
static sd_status save_io(grad_env *e, const char *path, const sd_tensor *hz, const sd_tensor *hcond,
                         const sd_tensor *huncond, const sd_tensor *htarget) {
    sd_ctx *c = e->c;
    float loss[2] = {0, 0}, t = GRAD_T, w = GRAD_GUIDANCE;
    sd_tensor *grad[2] = {NULL, NULL};
    sd_status st = SD_OK;
    for (int k = 0; k < 2 && st == SD_OK; k++) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        st = grad_step(e, k == 0 ? WORK_CONTEXT : WORK_VALUE, &loss[k]);
        sd_tensor *leaf = k == 0 ? e->leaf_u : e->leaf_v;
        if (st == SD_OK && !leaf->grad)
            st = sd_fail(SD_ERR_INTERNAL, "bench grad: no gradient reached the %s leaf", WORK_NAME[k + 1]);
        if (st == SD_OK) {
            grad[k] = sd_download_new(c, leaf->grad);
            if (!grad[k]) st = sd_ctx_status(c) ? sd_ctx_status(c) : SD_ERR_OOM;
        }
        sd_tape_reset(e->tape);
        sd_arena_reset(c->arena, mark);
    }
    if (st == SD_OK) {
        const int64_t one = 1;
        sd_tensor tt = sd_tensor_wrap(&t, SD_F32, 1, &one), tw = sd_tensor_wrap(&w, SD_F32, 1, &one);
        sd_tensor l0 = sd_tensor_wrap(&loss[0], SD_F32, 1, &one), l1 = sd_tensor_wrap(&loss[1], SD_F32, 1, &one);
        const sd_tensor *tensors[10] = {hz, &tt, hcond, huncond, htarget, &tw, &l0, grad[0], &l1, grad[1]};
        const char *names[10] = {"sample", "timestep", "context", "uncond_context", "target",
                                 "guidance", "loss_context", "grad_context", "loss_value", "grad_value"};
        st = sd_safetensors_write(path, tensors, names, 10, NULL, 0);
    }
    sd_tensor_free(grad[0]);
    sd_tensor_free(grad[1]);
    return st;
}

int cmd_bench_grad(int argc, char **argv) {
    const char *model_path = NULL, *config_dir = NULL, *device = NULL, *precision_name = "exact";
    const char *weights_out = NULL, *io_out = NULL, *what = "forward,context,value";
    int size = 0, iters = 3, quiet = 0, tsv = 0, recompute = 0, eager = 0, profile = 0;
    const cli_opt opts[] = {
        {"model", 'm', CLI_STR, &model_path, "MODEL", "checkpoint (default: built-in tiny model)", 1, 0},
        {"config", 0, CLI_STR, &config_dir, "DIR", "this config with random weights instead (e.g. configs/sd-v1.5)", 1, 0},
        {"what", 0, CLI_STR, &what, "LIST", "steps to time: forward, context, value (default all three)", 1, 0},
        {"size", 0, CLI_INT, &size, "PX", "image side (latent = PX/8; default: the model's sample size)", 64, 2048},
        {"iters", 0, CLI_INT, &iters, "N", "timed steps after one warm-up (default 3)", 1, 1000},
        {"device", 0, CLI_STR, &device, "DEV", "cpu, cuda or cuda:N (default: cuda when a usable GPU exists, else cpu)", 1, 0},
        {"precision", 0, CLI_STR, &precision_name, "P", "exact (fp32, no TF32; default) or fast (tensor cores)", 1, 0},
        {"save-weights", 0, CLI_STR, &weights_out, "FILE", "write the UNet weights used (diffusers names) to a .safetensors file", 1, 0},
        {"save-io", 0, CLI_STR, &io_out, "FILE", "write the inputs, losses and gradients of one context and one value step", 1, 0},
        {"recompute", 0, CLI_FLAG, &recompute, NULL, "recompute UNet blocks in the backward (less memory, more time)", 1, 0},
        CLI_EAGER_OPTION(eager),
        {"profile", 0, CLI_FLAG, &profile, NULL, "then one more step of each kind with every op timed alone: where the time goes", 1, 0},
        {"tsv", 0, CLI_FLAG, &tsv, NULL, "print tab-separated result rows instead of the table", 1, 0},
        {"quiet", 'q', CLI_FLAG, &quiet, NULL, "no notices", 1, 0},
    };
    const cli_command cmd = {"bench grad", NULL, "[options]",
                             "Times one gradient step through the UNet (forward with the tape, backward to a\n"
                             "leaf) beside one plain forward: 'context' is Null-text's step (gradient to the\n"
                             "unconditional context), 'value' StyleDiffusion's (gradient to a value input\n"
                             "substituted in all 16 cross-attention layers). Batch 1, t = 981, guidance 7.5,\n"
                             "random inputs from seed 1. Reports median and minimum ms and the activation peak.",
                             opts, (int)(sizeof opts / sizeof opts[0]), 0, 0};
    int n_pos;
    int r = cli_parse(&cmd, argc, argv, NULL, &n_pos);
    if (r) return r == 1 ? 0 : r;
    sd_set_quiet(quiet);
    int want[3] = {0, 0, 0};
    {
        char list[256];
        snprintf(list, sizeof list, "%s", what);
        for (char *save = NULL, *tok = strtok_r(list, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
            int k = 0;
            while (k < 3 && strcmp(tok, WORK_NAME[k])) k++;
            if (k == 3) {
                fprintf(stderr, "stylediff bench grad: --what: unknown step '%s' (forward, context, value)\n", tok);
                return 2;
            }
            want[k] = 1;
        }
    }
    cli_bench_unet b;
    sd_status st = cli_bench_open(&b, model_path, config_dir, weights_out, device, precision_name, quiet, "bench grad");
    if (st) return cli_fail("bench grad", st);
    sd_ctx *c = &b.ctx;
    c->recompute = recompute;
    c->eager = eager;
    const sd_unet unet = b.unet;
    const int cuda = b.cuda;
    sd_tape *tape = sd_tape_new();
    if (!tape) st = sd_fail(SD_ERR_OOM, "out of memory for the tape");

    const int64_t side = size ? size / 8 : unet.cfg.sample_size, D = unet.cfg.cross_attention_dim;
    sd_tensor *hz = sd_tensor_new4(SD_F32, 4, 1, unet.cfg.in_channels, side, side);
    sd_tensor *hcond = sd_tensor_new4(SD_F32, 3, 1, 77, D, 0), *huncond = sd_tensor_new4(SD_F32, 3, 1, 77, D, 0);
    sd_tensor *htarget = sd_tensor_new4(SD_F32, 4, 1, unet.cfg.out_channels, side, side);
    double *ms = calloc((size_t)iters, sizeof(double));
    if (!hz || !hcond || !huncond || !htarget || !ms) st = sd_fail(SD_ERR_OOM, "out of host memory for the bench inputs");
    grad_env e = {.c = c, .u = &unet, .tape = tape};
    for (int k = 0; k < 3; k++) sd_step_graph_init(&e.graphs[k], c);
    if (st == SD_OK) {
        sd_rng rng;
        sd_rng_seed(&rng, 1);
        sd_rng_randn(&rng, sd_f32(hz), sd_numel(hz));
        sd_rng_randn(&rng, sd_f32(hcond), sd_numel(hcond));
        sd_rng_randn(&rng, sd_f32(huncond), sd_numel(huncond));
        sd_rng_randn(&rng, sd_f32(htarget), sd_numel(htarget));
        e.z = sd_keep(c, sd_upload(c, hz));
        e.cond = sd_keep(c, sd_upload(c, hcond));
        e.target = sd_keep(c, sd_upload(c, htarget));
        e.leaf_u = sd_param_new(c, huncond, "uncond_context");
        e.leaf_v = sd_param_new(c, hcond, "value_input");
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        sd_tensor *u = sd_upload(c, huncond);
        e.eps_c = sd_keep(c, sd_unet_forward(c, &unet, e.z, GRAD_T, e.cond));
        e.eps_u = sd_keep(c, sd_unet_forward(c, &unet, e.z, GRAD_T, u));
        sd_arena_reset(c->arena, mark);
        /* the prefix stays in the activation arena below the rows' marks */
        sd_tensor *tvec = sd_new4(c, 1, 1, 0, 0, 0);
        if (tvec) sd_ctx_check(c, c->be->fill(sd_f32(tvec), GRAD_T, 1));
        if (!(e.prefix = calloc(1, sizeof *e.prefix))) sd_ctx_fail(c, SD_ERR_OOM, "out of memory");
        else sd_unet_prefix_for_tape(c, &unet, e.z, tvec, tape, e.prefix);
        st = sd_ctx_status(c);
    }
    if (st == SD_OK && io_out) {
        st = save_io(&e, io_out, hz, hcond, huncond, htarget);
        if (st == SD_OK && !quiet) fprintf(stderr, "bench grad: wrote the inputs, losses and gradients to %s\n", io_out);
    }
    const double weights_mib = (double)cli_bench_weights_bytes(b.store) / (1 << 20);
    const char *dev = cuda ? "cuda" : "cpu";
    char prec[48];
    /* +nchw: SD_CHANNELS_LAST=0, the forward's convolutions then stay F32 (nn.c, conv_f32_via_f16);
     * +f32grad: SD_BF16_GRADS=0, the data gradients on the F32 weights (autograd.c); +f32step:
     * SD_STEP_ACTIVATIONS=f32, the step's forward stores F32 (sd_ctx.f16_steps unset) */
    snprintf(prec, sizeof prec, "%s%s%s%s%s%s%s", cuda ? sd_precision_name(b.precision) : "exact",
             cuda && c->activations == SD_F16 && !sd_ctx_channels_last(c) ? "+nchw" : "",
             cuda && c->activations == SD_F16 && c->f32_data_grads ? "+f32grad" : "",
             cuda && c->activations == SD_F16 && !c->f16_steps ? "+f32step" : "",
             cuda ? cli_bench_settings_suffix(b.precision) : "", recompute ? "+recompute" : "",
             cuda && eager ? "+eager" : "");
    if (st == SD_OK && !tsv) {
        printf("one UNet step, batch 1, %lldx%lld latent, %s (%s), weights %.0f MiB F32%s%s\n", (long long)side,
               (long long)side, b.label, b.where, weights_mib, recompute ? ", blocks recomputed" : "",
               !cuda ? "" : eager ? ", op by op (--eager)" : ", replayed as CUDA graphs");
        printf("%-8s %12s %12s %12s %16s\n", "step", "median ms", "min ms", "x forward", "activation MiB");
    }
    double forward_ms = 0;
    for (int k = 0; k < 3 && st == SD_OK; k++) {
        if (!want[k]) continue;
        double peak = 0;
        st = time_work(&e, (grad_work)k, iters, cuda, ms, &peak);
        if (st) break;
        const cli_bench_times tm = cli_bench_summarize(ms, iters);
        if (k == WORK_FORWARD) forward_ms = tm.median_ms;
        size_t free_b = 0, total_b = 0;
        double device_mib = -1;
        if (cuda && sd_cuda_mem_info(&free_b, &total_b) == SD_OK) device_mib = (double)(total_b - free_b) / (1 << 20);
        if (tsv) {
            /* grad, model, device, precision, step, latent side, median ms, min ms, activation MiB,
             * weights MiB, device MiB in use (-1 on the CPU) */
            printf("grad\t%s\t%s\t%s\t%s\t%lld\t%.3f\t%.3f\t%.0f\t%.0f\t%.0f\n", b.label, dev, prec, WORK_NAME[k],
                   (long long)side, tm.median_ms, tm.min_ms, peak, weights_mib, device_mib);
        } else {
            char ratio[32] = "-";
            if (forward_ms > 0) snprintf(ratio, sizeof ratio, "%.2f", tm.median_ms / forward_ms);
            printf("%-8s %12.2f %12.2f %12s %16.0f\n", WORK_NAME[k], tm.median_ms, tm.min_ms, ratio, peak);
        }
        fflush(stdout);
    }
    for (int k = 0; k < 3 && st == SD_OK && profile; k++) {
        if (!want[k]) continue;
        char what[160];
        snprintf(what, sizeof what, "%s step, %s, %s", WORK_NAME[k], b.label, prec);
        st = profile_work(&e, (grad_work)k, what);
    }
    if (st == SD_OK && !tsv && cuda) {
        size_t free_b = 0, total_b = 0;
        if (sd_cuda_mem_info(&free_b, &total_b) == SD_OK)
            printf("device memory in use at the end: %.0f MiB of %.0f (CUDA context and workspaces included)\n",
                   (double)(total_b - free_b) / (1 << 20), (double)total_b / (1 << 20));
    }
    for (int k = 0; k < 3; k++) sd_step_graph_free(&e.graphs[k]);
    free(ms);
    free(e.prefix);
    sd_tensor_free(hz);
    sd_tensor_free(hcond);
    sd_tensor_free(huncond);
    sd_tensor_free(htarget);
    sd_tensor_free(e.leaf_u);
    sd_tensor_free(e.leaf_v);
    sd_tape_free(tape);
    cli_bench_close(&b);
    return st ? cli_fail("bench grad", st) : 0;
}
