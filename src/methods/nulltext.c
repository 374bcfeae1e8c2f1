/* nulltext.c: Null-text inversion (stylediffusion.md §5, the NTI notebook's NullInversion).
 *
 * Per timestep i: a fresh Adam (lr 1e-2·(1 - i/100)) on the null embedding, warm-started from
 * the previous step's result; up to 10 iterations of
 *     eps = eps_u(∅) + w (eps_c - eps_u(∅)),  L = mse(prev_step(eps, t, z), latents[N-1-i])
 * stopping once L < 1e-5 + i·2e-5 (L taken before the update); then the trajectory advances with
 * the optimised ∅. Only ∅ is optimised; eps_c is computed once per step, and the advance reuses it:
 * the reference's batched CFG call [∅; c] recomputes the conditional row from the same z, t and
 * prompt, so one unconditional row gives the same step (a third less work than two rows). The
 * iterations start from the timestep's UNet prefix (sd_invert_prefix): ∅ enters only at the first
 * cross-attention. Where the steps store activations as plain forwards do (exact mode, fp16 steps:
 * sd_ctx_steps_store_as_forwards), eps_c and the advance start from it too. */
#include <stdlib.h>
#include <string.h>

#include "invert_internal.h"

/* One iteration's loss, a pure function of device memory (so sd_graph_step may replay it). */
typedef struct nulltext_step {
    const sd_model *m;
    float guidance;
    sd_tensor *z, *eps_c, *null_text, *cond;
    sd_step_inputs *in;
    sd_unet_prefix *prefix; /* the timestep's, for the iterations */
    int forwards_from_prefix; /* eps_c and the advance too (sd_ctx_steps_store_as_forwards) */
} nulltext_step;

/* UNet(z, t, context) without a gradient: from the timestep's prefix where it serves, else whole
 * (bit for bit the same result) */
static sd_tensor *nulltext_forward(sd_ctx *c, const nulltext_step *a, sd_tensor *context) {
    return a->forwards_from_prefix ? sd_unet_forward_from(c, &a->m->unet, a->prefix, context)
                                   : sd_unet_forward_tvec(c, &a->m->unet, a->z, sd_step_tvec(c, a->in, 1), context);
}

/* prev_step(eps_u(∅) + w (eps_c - eps_u(∅)), t, z) */
static sd_tensor *nulltext_prev(sd_ctx *c, const nulltext_step *a, sd_tensor *eps_u) {
    return sd_ddim_step_dev(c, a->in->factors, sd_cfg_combine(c, eps_u, a->eps_c, a->guidance), a->z);
}

static sd_tensor *nulltext_loss(sd_ctx *c, void *arg) {
    const nulltext_step *a = arg;
    sd_tensor *eps_u = sd_unet_forward_from(c, &a->m->unet, a->prefix, a->null_text);
    return sd_mse(c, nulltext_prev(c, a, eps_u), a->in->target);
}

/* The advance along the trajectory with the optimised ∅ (no gradient: its maps are stored as a
 * forward's), replayable. */
static sd_tensor *nulltext_advance(sd_ctx *c, void *arg) {
    const nulltext_step *a = arg;
    return nulltext_prev(c, a, nulltext_forward(c, a, a->null_text));
}

/* The conditional eps of a timestep: UNet(z, t, c), replayable. */
static sd_tensor *cond_eps(sd_ctx *c, void *arg) {
    const nulltext_step *a = arg;
    return nulltext_forward(c, a, a->cond);
}

sd_status sd_nulltext_optimize(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                               sd_invert_state *s, sd_inversion *out, double t_ddim) {
    const int N = o->n_steps;
    SD_TRY(sd_ddim_invert(c, m, &s->sched, s->z0, s->cond, s->latents));
    out->seconds_ddim = sd_invert_clock(c) - t_ddim;
    out->null_embeddings = calloc((size_t)N, sizeof *out->null_embeddings);
    if (!out->null_embeddings) return c->status = sd_fail(SD_ERR_OOM, "out of memory");

    sd_tensor *host0 = sd_to_host(c, s->uncond); /* ∅_0 = E("") */
    sd_tensor *null_text = host0 ? sd_param_new(c, host0, "null_text") : NULL;
    sd_tensor_free(host0);
    sd_tensor *z = sd_keep(c, s->latents[N]);
    sd_step_inputs in;
    sd_step_inputs_init(c, &in, 1, z);
    sd_tape *tape = sd_tape_new();
    sd_unet_prefix *prefix = calloc(1, sizeof *prefix);
    if (!null_text || !z || !tape || !prefix || c->status != SD_OK) {
        sd_tensor_free(null_text);
        sd_tape_free(tape);
        free(prefix);
        return c->status ? c->status : SD_ERR_OOM;
    }
    /* four repeated steps per timestep, each replayed from its own CUDA graph on a GPU: the
     * iterations' UNet prefix, the conditional eps, the optimiser iterations and the advance along
     * the trajectory */
    sd_step_graph cond_graph, prefix_graph, graph, advance_graph;
    sd_step_graph_init(&cond_graph, c);
    sd_step_graph_init(&prefix_graph, c);
    sd_step_graph_init(&graph, c);
    sd_step_graph_init(&advance_graph, c);
    const int forwards_from_prefix = sd_ctx_steps_store_as_forwards(c);
    sd_progress bar;
    sd_progress_begin(&bar, "null-text inversion", N);
    const int last = o->stop_after > 0 && o->stop_after < N ? o->stop_after : N;
    sd_adam opt = {0};
    for (int i = 0; i < last && c->status == SD_OK; i++) {
        const double ts = sd_now();
        const int t = s->sched.timesteps[i];
        sd_step_stats *stat = &out->stats[i];
        stat->t = t;
        /* a new Adam per timestep, as the reference makes one: moments zeroed, step 0 */
        if ((i == 0 ? sd_adam_init(c, &opt, &null_text, 1, sd_step_lr(o->lr, i))
                    : sd_adam_restart(c, &opt, sd_step_lr(o->lr, i))))
            break;
        float factors[4];
        sd_ddim_prev_factors(&s->sched, t, factors);
        sd_step_inputs_set(c, &in, t, factors, s->latents[N - 1 - i]);
        const sd_arena_mark step_mark = sd_arena_get_mark(c->arena);
        nulltext_step step = {m, o->guidance, z, NULL, null_text, s->cond, &in, prefix, forwards_from_prefix};
        if (o->inner_steps > 0 || forwards_from_prefix) sd_invert_prefix(c, &prefix_graph, m, z, &in, tape, prefix);
        /* what the conditional forward reads (the key of its graph) */
        const void *forward_inputs[] = {z->data, s->cond->data, in.tvec->data, in.factors->data, prefix->stream.data};
        step.eps_c = sd_graph_step(c, &cond_graph, NULL, cond_eps, &step, forward_inputs, 5, NULL, 0);
        /* what the iterations and the advance read (the advance: all but the target) */
        const void *inputs[] = {z->data, step.eps_c ? step.eps_c->data : NULL, null_text->data, in.tvec->data,
                                in.factors->data, prefix->stream.data, in.target->data};
        for (int j = 0; j < o->inner_steps && c->status == SD_OK; j++) {
            const sd_arena_mark mark = sd_arena_get_mark(c->arena);
            sd_tensor *loss = sd_graph_step(c, &graph, tape, nulltext_loss, &step, inputs, 7, &null_text, 1);
            if (sd_invert_finish_iteration(c, tape, mark, loss, &opt, o, stat, i, t, j)) break;
        }
        out->null_embeddings[i] = sd_to_host(c, null_text);
        sd_assign(c, z, sd_graph_step(c, &advance_graph, NULL, nulltext_advance, &step, inputs, 6, NULL, 0));
        sd_arena_reset(c->arena, step_mark);
        stat->seconds = sd_now() - ts;
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    sd_adam_free(&opt);
    sd_invert_count_graph_steps(out, &graph);
    sd_step_graph_free(&cond_graph);
    sd_step_graph_free(&prefix_graph);
    sd_step_graph_free(&graph);
    sd_step_graph_free(&advance_graph);
    sd_ctx_set_tape(c, NULL);
    sd_tape_free(tape);
    free(prefix);
    sd_tensor_free(null_text);
    return sd_ctx_status(c);
}
