/* ddim.c: DDIM timesteps, sampling and inversion steps (stylediffusion.md §1.2, §2). */
#include "sd/sched.h"

#include <math.h>
#include <string.h>

sd_status sd_ddim_init(sd_ddim *s, int n_steps) {
    if (n_steps < 1 || n_steps > SD_MAX_STEPS)
        return sd_fail(SD_ERR_ARG, "--steps %d: the number of DDIM steps must be in [1, %d]", n_steps,
                       SD_MAX_STEPS);
    memset(s, 0, sizeof *s);
    /* betas = linspace(sqrt(0.00085), sqrt(0.012), 1000, float32) ** 2; torch's linspace fills the
     * first half from the start and the second half from the end with step (end - start) / 999. */
    const float start = (float)0.029154759474226502, end = (float)0.10954451150103323;
    const float step = (end - start) / (float)(SD_TRAIN_STEPS - 1);
    const int halfway = SD_TRAIN_STEPS / 2;
    double prod = 1.0;
    for (int i = 0; i < SD_TRAIN_STEPS; i++) {
        const float root = i < halfway ? start + step * (float)i
                                       : end - step * (float)(SD_TRAIN_STEPS - i - 1);
        const float beta = root * root;
        prod *= (double)(1.0f - beta); /* torch.cumprod accumulates in double on the CPU */
        s->alphas_cumprod[i] = (float)prod;
    }
    s->final_alpha_cumprod = s->alphas_cumprod[0];
    s->n_steps = n_steps;
    s->step_ratio = SD_TRAIN_STEPS / n_steps;
    const int steps_offset = 1;
    for (int i = 0; i < n_steps; i++) s->timesteps[i] = (n_steps - 1 - i) * s->step_ratio + steps_offset;
    return SD_OK;
}

float sd_ddim_alpha(const sd_ddim *s, int t) {
    if (t < 0) return s->final_alpha_cumprod;
    if (t >= SD_TRAIN_STEPS) t = SD_TRAIN_STEPS - 1;
    return s->alphas_cumprod[t];
}

/* z' = sqrt(a_to)·x0 + sqrt(1 − a_to)·ε with x0 = (z − sqrt(1 − a_from)·ε) / sqrt(a_from),
 * computed as two axpby passes in float32 like the reference's tensor expressions:
 * x0 = f0·z + f1·ε, z' = f2·x0 + f3·ε. */
static void move_factors(float a_from, float a_to, float f[4]) {
    const float sqrt_a = sqrtf(a_from), sqrt_b = sqrtf(1.0f - a_from);
    f[0] = 1.0f / sqrt_a;
    f[1] = -sqrt_b / sqrt_a;
    f[2] = sqrtf(a_to);
    f[3] = sqrtf(1.0f - a_to);
}

void sd_ddim_prev_factors(const sd_ddim *s, int t, float f[4]) {
    move_factors(sd_ddim_alpha(s, t), sd_ddim_alpha(s, t - s->step_ratio), f);
}

void sd_ddim_next_factors(const sd_ddim *s, int t, float f[4]) {
    int t_cur = t - s->step_ratio;
    if (t_cur > SD_TRAIN_STEPS - 1) t_cur = SD_TRAIN_STEPS - 1;
    move_factors(sd_ddim_alpha(s, t_cur), sd_ddim_alpha(s, t), f);
}

static sd_tensor *ddim_move(sd_ctx *c, sd_tensor *eps, sd_tensor *z, const float f[4]) {
    sd_tensor *x0 = sd_axpby(c, f[0], z, f[1], eps);
    return sd_axpby(c, f[2], x0, f[3], eps);
}

sd_tensor *sd_ddim_prev_step(sd_ctx *c, const sd_ddim *s, sd_tensor *eps, int t, sd_tensor *z) {
    float f[4];
    sd_ddim_prev_factors(s, t, f);
    return ddim_move(c, eps, z, f);
}

sd_tensor *sd_ddim_next_step(sd_ctx *c, const sd_ddim *s, sd_tensor *eps, int t, sd_tensor *z) {
    float f[4];
    sd_ddim_next_factors(s, t, f);
    return ddim_move(c, eps, z, f);
}

sd_tensor *sd_ddim_step_dev(sd_ctx *c, sd_tensor *factors, sd_tensor *eps, sd_tensor *z) {
    if (c->status != SD_OK) return NULL;
    if (!factors || sd_numel(factors) != 4)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "ddim_step_dev: the factors must be a [4] tensor");
    sd_tensor *x0 = sd_axpby_dev(c, sd_slice0(c, factors, 0, 2), z, eps);
    return sd_axpby_dev(c, sd_slice0(c, factors, 2, 2), x0, eps);
}

sd_tensor *sd_cfg_combine(sd_ctx *c, sd_tensor *eps_uncond, sd_tensor *eps_cond, float guidance) {
    return sd_axpby(c, 1.0f - guidance, eps_uncond, guidance, eps_cond);
}
