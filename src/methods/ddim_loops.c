/* ddim_loops.c: DDIM inversion and guided DDIM sampling (stylediffusion.md §2). */
#include "sd/methods.h"

sd_tensor *sd_guided_eps(sd_ctx *c, const sd_model *m, sd_tensor *z, int t, sd_tensor *uncond,
                         sd_tensor *cond, float guidance) {
    if (guidance == 1.0f) return sd_unet_forward(c, &m->unet, z, (float)t, cond);
    /* One batched call, uncond rows first, as the reference's diffusion_step does. */
    sd_tensor *eps = sd_unet_forward(c, &m->unet, sd_concat0(c, z, z), (float)t,
                                     sd_concat0(c, uncond, cond));
    if (!eps) return NULL;
    const int64_t B = z->shape[0];
    return sd_cfg_combine(c, sd_slice0(c, eps, 0, B), sd_slice0(c, eps, B, B), guidance);
}

sd_status sd_ddim_invert(sd_ctx *c, const sd_model *m, const sd_ddim *s, sd_tensor *z0,
                         sd_tensor *cond, sd_tensor **latents) {
    const int N = s->n_steps;
    latents[0] = sd_keep(c, z0);
    sd_progress bar;
    sd_progress_begin(&bar, "DDIM inversion", N);
    for (int i = 0; i < N && c->status == SD_OK; i++) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const int t = s->timesteps[N - 1 - i]; /* ascending: 1, 1 + Δ, ... */
        sd_tensor *eps = sd_unet_forward(c, &m->unet, latents[i], (float)t, cond);
        latents[i + 1] = sd_keep(c, sd_ddim_next_step(c, s, eps, t, latents[i]));
        sd_arena_reset(c->arena, mark);
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    return c->status;
}

sd_tensor *sd_ddim_sample(sd_ctx *c, const sd_model *m, const sd_ddim *s, sd_tensor *z_T,
                          sd_tensor *uncond, sd_tensor *cond, float guidance) {
    sd_tensor *z = sd_keep(c, z_T);
    sd_progress bar;
    sd_progress_begin(&bar, "DDIM sampling", s->n_steps);
    for (int i = 0; i < s->n_steps && c->status == SD_OK; i++) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const int t = s->timesteps[i];
        sd_tensor *eps = sd_guided_eps(c, m, z, t, uncond, cond, guidance);
        sd_assign(c, z, sd_ddim_prev_step(c, s, eps, t, z));
        sd_arena_reset(c->arena, mark);
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    return c->status == SD_OK ? z : NULL;
}
