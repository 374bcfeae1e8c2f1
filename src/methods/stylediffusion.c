/* stylediffusion.c: StyleDiffusion inversion (stylediffusion.md §3.5, §3.6).
 *
 * Ground truth: DDIM inversion of the image with the source prompt, capturing at every step the
 * cross-attention maps the attention loss reads (the 16x16 layers at 512 px); GT_i is the capture
 * of inversion step N - i (so index N duplicates N - 1, as the reference's list does).
 * Training, for each timestep i: M_i starts as a copy of M_{i-1} (M_0 random), a new Adam
 * (lr 1e-2·(1 - i/100)); eps_u = UNet(z, t, "") once; then ceil(100 e^(-0.1 i)) iterations of
 *     v = c ⊙ S_i + B_i (S, B = M_i(E(x)));  eps_c, maps = UNet(z, t, c; value input v)
 *     L = mse(prev_step(eps_u + w (eps_c - eps_u)), latents[N-1-i]) + Σ_l mse(GT_i[l], maps[l])
 * stopping once L < 1e-5 + i·2e-5; then z advances with eps_c from the trained M_i. The UNet,
 * VAE, text and image encoders are frozen: gradients flow only to M_i. The iterations start from
 * the timestep's UNet prefix (sd_invert_prefix): v enters only at the cross-attentions. Where the
 * steps store activations as plain forwards do (exact mode, fp16 steps:
 * sd_ctx_steps_store_as_forwards), eps_u and the advance start from it too. */
#include <stdlib.h>
#include <string.h>

#include "invert_internal.h"
#include "sd/control.h"

sd_tensor *sd_stylediffusion_cond_eps(sd_ctx *c, const sd_model *m, const sd_mapping_net *net,
                                      sd_tensor *features, sd_unet_prefix *prefix, sd_tensor *z, sd_tensor *tvec,
                                      sd_tensor *cond, sd_value_capture_hook *capture) {
    sd_tensor *value = sd_mapping_value_input(c, sd_mapping_forward(c, net, features), cond);
    sd_value_capture_hook plain;
    sd_value_capture_hook *hook = capture ? capture : &plain;
    if (!capture) sd_value_capture_hook_init(&plain, NULL, 0);
    hook->value = value;
    sd_value_capture_hook_clear(hook);
    struct sd_attn_hook *saved = c->hook;
    c->hook = &hook->base;
    sd_tensor *eps = prefix ? sd_unet_forward_from(c, &m->unet, prefix, cond) : sd_unet_forward_tvec(c, &m->unet, z, tvec, cond);
    c->hook = saved;
    hook->value = NULL;
    return eps;
}

/* One iteration's loss, L_rec + L_att, a pure function of device memory (so sd_graph_step may
 * replay it): the ground-truth maps of the timestep are copied into gt[] beforehand. */
typedef struct stylediffusion_step {
    const sd_model *m;
    const sd_mapping_net *net;
    float guidance;
    int attention_loss, n_maps;
    sd_tensor *features, *z, *cond, *uncond, *eps_u;
    sd_tensor *gt[SD_MAX_CAPTURED];
    sd_step_inputs *in;
    sd_value_capture_hook *capture;
    sd_unet_prefix *prefix;   /* the timestep's, for the iterations */
    int forwards_from_prefix; /* eps_u and the advance too (sd_ctx_steps_store_as_forwards) */
} stylediffusion_step;

static sd_tensor *stylediffusion_loss(sd_ctx *c, void *arg) {
    const stylediffusion_step *a = arg;
    sd_value_capture_hook *capture = a->capture;
    sd_tensor *eps_c = sd_stylediffusion_cond_eps(c, a->m, a->net, a->features, a->prefix, NULL, NULL, a->cond, capture);
    sd_tensor *eps = sd_cfg_combine(c, a->eps_u, eps_c, a->guidance);
    sd_tensor *loss = sd_mse(c, sd_ddim_step_dev(c, a->in->factors, eps, a->z), a->in->target);
    if (!a->attention_loss || c->status != SD_OK) return loss;
    if (capture->n_captured != a->n_maps)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "stylediffusion: %d maps captured, %d in the ground truth",
                           capture->n_captured, a->n_maps);
    for (int l = 0; l < capture->n_captured; l++) loss = sd_add(c, loss, sd_mse(c, a->gt[l], capture->captured[l]));
    return loss;
}

/* One step of the DDIM inversion that keeps the attention-loss maps, replayable: z' from z, and
 * the maps the hook captured, kept by value (their data lies where a replay writes it again). */
typedef struct maps_step {
    const sd_model *m;
    sd_tensor *z, *cond;
    sd_step_inputs *in;
    sd_value_capture_hook *hook;
    int n_maps;
    sd_tensor maps[SD_MAX_CAPTURED];
} maps_step;

static sd_tensor *maps_step_forward(sd_ctx *c, void *arg) {
    maps_step *a = arg;
    sd_value_capture_hook_clear(a->hook);
    struct sd_attn_hook *saved = c->hook;
    c->hook = &a->hook->base;
    sd_tensor *eps = sd_unet_forward_tvec(c, &a->m->unet, a->z, sd_step_tvec(c, a->in, 1), a->cond);
    c->hook = saved;
    a->n_maps = a->hook->n_captured;
    for (int l = 0; l < a->n_maps; l++) a->maps[l] = *a->hook->captured[l];
    return sd_ddim_step_dev(c, a->in->factors, eps, a->z);
}

/* DDIM inversion that also keeps the attention-loss maps of every step (no gradient). */
static sd_status invert_with_maps(sd_ctx *c, const sd_model *m, sd_invert_state *s, int64_t q_len,
                                  sd_tensor *(*gt)[SD_MAX_CAPTURED], int *n_maps) {
    const int N = s->sched.n_steps;
    sd_value_capture_hook hook;
    sd_value_capture_hook_init(&hook, NULL, q_len);
    s->latents[0] = sd_keep(c, s->z0);
    sd_tensor *z = sd_keep(c, s->z0);
    sd_step_inputs in;
    if (!z || sd_step_inputs_init(c, &in, 1, NULL)) return sd_ctx_status(c) ? sd_ctx_status(c) : SD_ERR_OOM;
    maps_step step = {m, z, s->cond, &in, &hook, 0, {{0}}};
    const void *inputs[] = {z->data, s->cond->data, in.tvec->data, in.factors->data};
    sd_step_graph graph;
    sd_step_graph_init(&graph, c);
    sd_progress bar;
    sd_progress_begin(&bar, "DDIM inversion", N);
    for (int k = 0; k < N && c->status == SD_OK; k++) {
        const int t = s->sched.timesteps[N - 1 - k];
        float f[4];
        sd_ddim_next_factors(&s->sched, t, f);
        sd_step_inputs_set(c, &in, t, f, NULL);
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        sd_tensor *next = sd_graph_step(c, &graph, NULL, maps_step_forward, &step, inputs, 4, NULL, 0);
        s->latents[k + 1] = sd_keep(c, next);
        sd_assign(c, z, next);
        for (int l = 0; l < step.n_maps; l++) gt[k][l] = sd_keep(c, &step.maps[l]);
        *n_maps = step.n_maps;
        sd_arena_reset(c->arena, mark);
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    sd_step_graph_free(&graph);
    if (c->status == SD_OK && *n_maps == 0)
        return c->status = sd_fail(SD_ERR_UNSUPPORTED,
                                   "stylediffusion: no cross-attention layer at %lld positions to build the attention loss on",
                                   (long long)q_len);
    for (int l = 0; l < *n_maps; l++) gt[N][l] = gt[N - 1][l]; /* the reference appends the last again */
    return sd_ctx_status(c);
}

/* The unconditional eps of a timestep, UNet(z, t, ""), replayable. */
static sd_tensor *stylediffusion_uncond_eps(sd_ctx *c, void *arg) {
    const stylediffusion_step *a = arg;
    return a->forwards_from_prefix ? sd_unet_forward_from(c, &a->m->unet, a->prefix, a->uncond)
                                   : sd_unet_forward_tvec(c, &a->m->unet, a->z, sd_step_tvec(c, a->in, 1), a->uncond);
}

/* The advance along the trajectory with the trained network: z' = prev_step(eps_u + w (eps_c -
 * eps_u)), replayable. */
static sd_tensor *stylediffusion_advance(sd_ctx *c, void *arg) {
    const stylediffusion_step *a = arg;
    sd_tensor *eps_c = sd_stylediffusion_cond_eps(c, a->m, a->net, a->features, a->forwards_from_prefix ? a->prefix : NULL,
                                                  a->z, sd_step_tvec(c, a->in, 1), a->cond, NULL);
    return sd_ddim_step_dev(c, a->in->factors, sd_cfg_combine(c, a->eps_u, eps_c, a->guidance), a->z);
}

sd_status sd_stylediffusion_optimize(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                                     sd_invert_state *s, sd_tensor *features, sd_inversion *out,
                                     double t_ddim) {
    const int N = o->n_steps;
    const int64_t q_len = sd_loss_map_q_len(s->z0->shape[2], s->z0->shape[3]);
    sd_tensor *(*gt)[SD_MAX_CAPTURED] = calloc((size_t)N + 1, sizeof *gt);
    out->mapping = calloc((size_t)N, sizeof *out->mapping);
    if (!gt || !out->mapping) {
        free(gt);
        return c->status = sd_fail(SD_ERR_OOM, "out of memory");
    }
    int n_maps = 0;
    sd_status st = invert_with_maps(c, m, s, q_len, gt, &n_maps);
    out->seconds_ddim = sd_invert_clock(c) - t_ddim;
    if (st) {
        free(gt);
        return st;
    }

    sd_mapping_net net;
    sd_rng rng;
    sd_rng_seed(&rng, o->seed);
    const int tokens = (int)features->shape[1];
    const sd_status init = o->mapping_init ? sd_mapping_net_from_host(c, &net, o->mapping_init)
                                           : sd_mapping_net_init(c, &net, tokens, &rng);
    if (init) {
        c->status = init;
        free(gt);
        return sd_ctx_status(c) ? sd_ctx_status(c) : SD_ERR_OOM;
    }
    sd_tensor *z = sd_keep(c, s->latents[N]);
    sd_step_inputs in;
    sd_step_inputs_init(c, &in, 1, z);
    sd_tape *tape = sd_tape_new();
    sd_value_capture_hook capture;
    sd_value_capture_hook_init(&capture, NULL, o->attention_loss ? q_len : 0);
    sd_unet_prefix *prefix = calloc(1, sizeof *prefix);
    stylediffusion_step step = {m, &net, o->guidance, o->attention_loss, n_maps, features, z, s->cond, s->uncond,
                                NULL, {0}, &in, &capture, prefix, sd_ctx_steps_store_as_forwards(c)};
    /* the timestep's ground-truth maps are copied here, to addresses a graph of the step can keep */
    for (int l = 0; l < (o->attention_loss ? n_maps : 0); l++) step.gt[l] = sd_keep(c, gt[N][l]);
    /* four repeated steps per timestep, each replayed from its own CUDA graph on a GPU: the
     * iterations' UNet prefix, the unconditional eps, the optimiser iterations and the advance
     * along the trajectory */
    sd_step_graph uncond_graph, prefix_graph, graph, advance_graph;
    sd_step_graph_init(&uncond_graph, c);
    sd_step_graph_init(&prefix_graph, c);
    sd_step_graph_init(&graph, c);
    sd_step_graph_init(&advance_graph, c);
    sd_progress bar;
    sd_progress_begin(&bar, "stylediffusion", N);
    const int last = o->stop_after > 0 && o->stop_after < N ? o->stop_after : N;
    sd_adam opt = {0}; /* a new Adam per timestep (sd_adam_restart after the first) */
    for (int i = 0; i < last && c->status == SD_OK && tape && prefix; i++) {
        const double ts = sd_now();
        const int t = s->sched.timesteps[i];
        sd_step_stats *stat = &out->stats[i];
        stat->t = t;
        /* M_i continues from M_{i-1}: the live network already holds its weights */
        if ((i == 0 ? sd_adam_init(c, &opt, net.params, SD_MAP_N_PARAMS, sd_step_lr(o->lr, i))
                    : sd_adam_restart(c, &opt, sd_step_lr(o->lr, i))))
            break;
        float factors[4];
        sd_ddim_prev_factors(&s->sched, t, factors);
        sd_step_inputs_set(c, &in, t, factors, s->latents[N - 1 - i]);
        for (int l = 0; l < (o->attention_loss ? n_maps : 0); l++) sd_assign(c, step.gt[l], gt[N - i][l]);
        const sd_arena_mark step_mark = sd_arena_get_mark(c->arena);
        const int iterations = sd_stylediffusion_inner_steps(o->inner_steps, i);
        if (iterations > 0 || step.forwards_from_prefix) sd_invert_prefix(c, &prefix_graph, m, z, &in, tape, prefix);
        const void *inputs[9 + SD_MAX_CAPTURED] = {z->data, features->data, s->cond->data, s->uncond->data,
                                                   in.tvec->data, in.factors->data, in.target->data,
                                                   prefix->stream.data};
        step.eps_u = sd_graph_step(c, &uncond_graph, NULL, stylediffusion_uncond_eps, &step, inputs, 8, NULL, 0);
        inputs[8] = step.eps_u ? step.eps_u->data : NULL;
        int n_inputs = 9;
        for (int l = 0; l < (o->attention_loss ? n_maps : 0); l++) inputs[n_inputs++] = step.gt[l]->data;
        for (int j = 0; j < iterations && c->status == SD_OK; j++) {
            const sd_arena_mark mark = sd_arena_get_mark(c->arena);
            sd_tensor *loss = sd_graph_step(c, &graph, tape, stylediffusion_loss, &step, inputs, n_inputs,
                                           net.params, SD_MAP_N_PARAMS);
            if (sd_invert_finish_iteration(c, tape, mark, loss, &opt, o, stat, i, t, j)) break;
        }
        for (int p = 0; p < SD_MAP_N_PARAMS; p++) out->mapping[i][p] = sd_to_host(c, net.params[p]);
        /* advance with the trained M_i (eps_u is unchanged: same z, t and null text) */
        sd_assign(c, z, sd_graph_step(c, &advance_graph, NULL, stylediffusion_advance, &step, inputs, 9, net.params,
                                      SD_MAP_N_PARAMS));
        sd_arena_reset(c->arena, step_mark);
        stat->seconds = sd_now() - ts;
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    sd_adam_free(&opt);
    sd_invert_count_graph_steps(out, &graph);
    sd_step_graph_free(&uncond_graph);
    sd_step_graph_free(&prefix_graph);
    sd_step_graph_free(&graph);
    sd_step_graph_free(&advance_graph);
    if ((!tape || !prefix) && c->status == SD_OK) c->status = SD_ERR_OOM;
    free(prefix);
    sd_ctx_set_tape(c, NULL);
    sd_tape_free(tape);
    sd_mapping_net_free(&net);
    free(gt);
    return sd_ctx_status(c);
}
