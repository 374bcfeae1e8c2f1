/* sched.h: the DDIM scheduler exactly as the reference uses it (stylediffusion.md §1.2, §2):
 * scaled-linear betas 0.00085 -> 0.012 over 1000 steps, set_alpha_to_one = False,
 * steps_offset = 1 (forced by the diffusers pipeline), eta = 0, epsilon prediction. */
#ifndef SD_SCHED_H
#define SD_SCHED_H

#include "sd/nn.h"

#define SD_TRAIN_STEPS 1000
#define SD_MAX_STEPS 1000

typedef struct sd_ddim {
    float alphas_cumprod[SD_TRAIN_STEPS]; /* ᾱ_i, float32 cumprod as torch computes it */
    float final_alpha_cumprod;            /* ᾱ_0 (set_alpha_to_one = False) */
    int n_steps;                          /* N inference steps */
    int step_ratio;                       /* Δ = 1000 / N */
    int timesteps[SD_MAX_STEPS];          /* descending: (N-1)Δ + 1, ..., 1 */
} sd_ddim;

/* Fails with SD_ERR_ARG when n_steps is outside [1, 1000]. */
sd_status sd_ddim_init(sd_ddim *s, int n_steps);

/* ᾱ at timestep t, or ᾱ_final for t < 0. */
float sd_ddim_alpha(const sd_ddim *s, int t);

/* Sampling step (prev_step / DDIMScheduler.step, eta 0): z_{t-Δ} from z_t and ε predicted at t. */
sd_tensor *sd_ddim_prev_step(sd_ctx *c, const sd_ddim *s, sd_tensor *eps, int t, sd_tensor *z);
/* Inversion step (next_step): ε was predicted by UNet(z, t) at the TARGET timestep t; moves z from
 * level t - Δ (or ᾱ_final) up to t. */
sd_tensor *sd_ddim_next_step(sd_ctx *c, const sd_ddim *s, sd_tensor *eps, int t, sd_tensor *z);

/* The same steps with their factors in device memory, for work replayed as a CUDA graph: each
 * step is two axpby passes, x0 = f0·z + f1·ε and z' = f2·x0 + f3·ε. sd_ddim_prev_factors /
 * sd_ddim_next_factors fill f on the host (the caller uploads it into a [4] F32 tensor of the
 * device before the work runs); sd_ddim_step_dev applies it. Results are bit-identical to
 * sd_ddim_prev_step / sd_ddim_next_step, which compute the same factors. */
void sd_ddim_prev_factors(const sd_ddim *s, int t, float f[4]);
void sd_ddim_next_factors(const sd_ddim *s, int t, float f[4]);
sd_tensor *sd_ddim_step_dev(sd_ctx *c, sd_tensor *factors, sd_tensor *eps, sd_tensor *z);

/* Classifier-free guidance: ε_u + w·(ε_c − ε_u). */
sd_tensor *sd_cfg_combine(sd_ctx *c, sd_tensor *eps_uncond, sd_tensor *eps_cond, float guidance);

#endif
