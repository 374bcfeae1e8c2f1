/* ddim_loops.c: DDIM inversion and guided DDIM sampling (stylediffusion.md §2). */
#include "sd/methods.h"
#include "invert_internal.h"

/* The guided eps with the timestep in a device tensor tvec (at least 2·B values when guided):
 * the conditional call alone when uncond is NULL or w == 1, else one batched call, uncond rows
 * first, as the reference's diffusion_step does. */
static sd_tensor *guided_eps_tvec(sd_ctx *c, const sd_model *m, sd_tensor *z, sd_tensor *tvec, sd_tensor *uncond,
                                  sd_tensor *cond, float guidance) {
    if (c->status != SD_OK || !z) return NULL;
    const int64_t B = z->shape[0];
    if (!uncond || guidance == 1.0f) return sd_unet_forward_tvec(c, &m->unet, z, sd_slice0(c, tvec, 0, B), cond);
    sd_tensor *eps = sd_unet_forward_tvec(c, &m->unet, sd_concat0(c, z, z), sd_slice0(c, tvec, 0, 2 * B),
                                          sd_concat0(c, uncond, cond));
    if (!eps) return NULL;
    return sd_cfg_combine(c, sd_slice0(c, eps, 0, B), sd_slice0(c, eps, B, B), guidance);
}

sd_tensor *sd_guided_eps(sd_ctx *c, const sd_model *m, sd_tensor *z, int t, sd_tensor *uncond,
                         sd_tensor *cond, float guidance) {
    if (c->status != SD_OK || !z) return NULL;
    const int64_t rows = 2 * z->shape[0];
    sd_tensor *tvec = sd_new(c, 1, &rows);
    if (tvec) sd_ctx_check(c, c->be->fill(sd_f32(tvec), (float)t, rows));
    return guided_eps_tvec(c, m, z, tvec, uncond, cond, guidance);
}

sd_tensor *sd_ddim_step_forward(sd_ctx *c, void *arg) {
    const sd_ddim_step *a = arg;
    sd_tensor *eps = guided_eps_tvec(c, a->m, a->z, a->in->tvec, a->uncond, a->cond, a->guidance);
    return sd_ddim_step_dev(c, a->in->factors, eps, a->z);
}

/* Runs the N steps of a DDIM loop from the latent in `z` (a keep-arena tensor, updated in place):
 * step i at timestep t_i with the factors `next` (inversion) or prev (sampling) gives; each new
 * latent is also kept in latents[i + 1] when latents is given. Replayed as a CUDA graph on a GPU. */
static sd_status ddim_loop(sd_ctx *c, const sd_model *m, const sd_ddim *s, sd_tensor *z, sd_tensor *uncond,
                           sd_tensor *cond, float guidance, int inverting, sd_tensor **latents, const char *what) {
    const int N = s->n_steps;
    sd_step_inputs in;
    if (sd_step_inputs_init(c, &in, (uncond ? 2 : 1) * z->shape[0], NULL)) return c->status;
    sd_ddim_step step = {m, z, uncond, cond, guidance, &in};
    const void *inputs[] = {z->data, uncond ? uncond->data : NULL, cond->data, in.tvec->data, in.factors->data};
    sd_step_graph graph;
    sd_step_graph_init(&graph, c);
    sd_progress bar;
    sd_progress_begin(&bar, what, N);
    for (int i = 0; i < N && c->status == SD_OK; i++) {
        const int t = inverting ? s->timesteps[N - 1 - i] : s->timesteps[i]; /* inversion ascends: 1, 1 + Δ, ... */
        float f[4];
        if (inverting) sd_ddim_next_factors(s, t, f);
        else sd_ddim_prev_factors(s, t, f);
        sd_step_inputs_set(c, &in, t, f, NULL);
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        sd_tensor *next = sd_graph_step(c, &graph, NULL, sd_ddim_step_forward, &step, inputs, 5, NULL, 0);
        if (latents) latents[i + 1] = sd_keep(c, next);
        sd_assign(c, z, next);
        sd_arena_reset(c->arena, mark);
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    sd_step_graph_free(&graph);
    return sd_check_fp16_result(c, z, what, N);
}

sd_status sd_ddim_invert(sd_ctx *c, const sd_model *m, const sd_ddim *s, sd_tensor *z0,
                         sd_tensor *cond, sd_tensor **latents) {
    latents[0] = sd_keep(c, z0);
    sd_tensor *z = sd_keep(c, z0);
    if (!z) return c->status;
    return ddim_loop(c, m, s, z, NULL, cond, 1.0f, 1, latents, "DDIM inversion");
}

sd_tensor *sd_ddim_sample(sd_ctx *c, const sd_model *m, const sd_ddim *s, sd_tensor *z_T,
                          sd_tensor *uncond, sd_tensor *cond, float guidance) {
    sd_tensor *z = sd_keep(c, z_T);
    if (!z) return NULL;
    return ddim_loop(c, m, s, z, uncond, cond, guidance, 0, NULL, "DDIM sampling") == SD_OK ? z : NULL;
}
