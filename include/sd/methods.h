/* methods.h: the inversion and sampling loops built on a model and the DDIM scheduler. */
#ifndef SD_METHODS_H
#define SD_METHODS_H

#include "sd/model.h"
#include "sd/sched.h"

/* DDIM inversion (the reference's ddim_loop, stylediffusion.md §2): conditional only, guidance 1.
 * latents[0] = z0 and latents[k] sits at level timesteps[N - k]; latents must hold N + 1 slots,
 * filled with tensors in the keep arena. Attention calls go through c->hook. */
sd_status sd_ddim_invert(sd_ctx *c, const sd_model *m, const sd_ddim *s, sd_tensor *z0,
                         sd_tensor *cond, sd_tensor **latents);

/* DDIM sampling from z_T through all N steps with classifier-free guidance: ε = ε_u + w(ε_c − ε_u),
 * one batched UNet call on [z; z] with [uncond; cond] per step (only the conditional call when
 * w == 1). Returns z_0 in the keep arena. */
sd_tensor *sd_ddim_sample(sd_ctx *c, const sd_model *m, const sd_ddim *s, sd_tensor *z_T,
                          sd_tensor *uncond, sd_tensor *cond, float guidance);

/* One guided ε prediction at timestep t: the building block of sampling and of the editing loops. */
sd_tensor *sd_guided_eps(sd_ctx *c, const sd_model *m, sd_tensor *z, int t, sd_tensor *uncond,
                         sd_tensor *cond, float guidance);

#endif
