/* invert_internal.h (src/methods only): what the inversion methods share. */
#ifndef SD_INVERT_INTERNAL_H
#define SD_INVERT_INTERNAL_H

#include "sd/autograd.h"
#include "sd/inversion.h"

/* What every inversion starts from: the schedule, the prompt and null embeddings, the encoded
 * image and room for the DDIM trajectory (tensors in the keep arena). */
typedef struct sd_invert_state {
    sd_ddim sched;
    sd_tensor *cond, *uncond; /* (1, 77, D) */
    sd_tensor *z0;            /* (1, 4, h, w) */
    sd_tensor **latents;      /* N + 1 slots: latents[k] at level timesteps[N - k] */
} sd_invert_state;

sd_status sd_invert_prepare(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                            sd_tensor *image, const char *prompt, sd_invert_state *s);
void sd_invert_state_free(sd_invert_state *s);

/* Null-text inversion (§5) on a prepared state: fills out->null_embeddings, stats, seconds. */
sd_status sd_nulltext_optimize(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                               sd_invert_state *s, sd_inversion *out, double t0);
/* StyleDiffusion (§3.5, §3.6) on a prepared state: fills out->mapping, stats, seconds. */
sd_status sd_stylediffusion_optimize(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                                     sd_invert_state *s, sd_tensor *features, sd_inversion *out,
                                     double t0);

/* The conditional eps of StyleDiffusion: every cross-attention layer's value input is
 * c ⊙ S + B from the mapping network; when `capture` is given it also collects the maps the
 * attention loss reads (q_len = capture->capture_q_len). */
struct sd_value_capture_hook;
sd_tensor *sd_stylediffusion_cond_eps(sd_ctx *c, const sd_model *m, const sd_mapping_net *net,
                                      sd_tensor *features, sd_tensor *z, int t, sd_tensor *cond,
                                      struct sd_value_capture_hook *capture);

/* The end of optimiser iteration j of timestep i (t), shared by Null-text and StyleDiffusion,
 * as the reference runs it: read the loss, back-propagate, stop with SD_ERR_NUMERIC naming the
 * timestep, t and iteration when the loss or a gradient of opt's parameters is not finite, else
 * take the Adam step; then reset the tape and the activations to `mark` and record the loss in
 * `stat`. Returns 1 when the loop ends here (early stop: loss < early_stop + i·2e-5, compared as
 * Python does; or a failure), 0 to go on. */
struct sd_tape;
int sd_invert_finish_iteration(sd_ctx *c, struct sd_tape *tape, sd_arena_mark mark, sd_tensor *loss, sd_adam *opt,
                               const sd_invert_options *o, sd_step_stats *stat, int i, int t, int j);

/* A host copy of a device tensor. */
sd_tensor *sd_to_host(sd_ctx *c, const sd_tensor *t);

#endif
