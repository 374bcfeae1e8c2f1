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

/* Null-text inversion (§5) on a prepared state: fills out->null_embeddings, stats, seconds
 * (seconds_ddim: its DDIM inversion, which it starts at once, at the clock t_ddim). */
sd_status sd_nulltext_optimize(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                               sd_invert_state *s, sd_inversion *out, double t_ddim);
/* StyleDiffusion (§3.5, §3.6) on a prepared state: fills out->mapping, stats, seconds (likewise). */
sd_status sd_stylediffusion_optimize(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                                     sd_invert_state *s, sd_tensor *features, sd_inversion *out, double t_ddim);

/* The conditional eps of StyleDiffusion, UNet(z, tvec[1], cond) (device memory) or, with `prefix`
 * set, from that prefix of the call (z and tvec unused): every cross-attention layer's value
 * input is c ⊙ S + B from the mapping network; when `capture` is given it also collects the maps
 * the attention loss reads (q_len = capture->capture_q_len). */
struct sd_value_capture_hook;
sd_tensor *sd_stylediffusion_cond_eps(sd_ctx *c, const sd_model *m, const sd_mapping_net *net,
                                      sd_tensor *features, sd_unet_prefix *prefix, sd_tensor *z, sd_tensor *tvec,
                                      sd_tensor *cond, struct sd_value_capture_hook *capture);

/* What a repeated step (sd_graph_step) reads that changes from one timestep to the next, in
 * keep-arena buffers whose addresses stay put for the whole loop, so that one CUDA graph of the
 * step serves every timestep: the timestep tvec[rows] (one value per batch row of the UNet calls;
 * sd_step_tvec gives the first B), the DDIM factors[4] of the step (sd_ddim_step_dev) and, for
 * the inversions' losses, the latent the reconstruction aims at (target, shaped like `latent`;
 * NULL when latent is NULL). */
typedef struct sd_step_inputs {
    sd_tensor *tvec, *factors, *target;
    int64_t rows;
} sd_step_inputs;
/* After a loop of `steps` UNet steps ending in latent z: with fp16 activations (which can overflow
 * where F32 would not), fails naming `what` when z holds NaN or Inf. One host sync, so once per
 * loop, not per step; a no-op with F32 activations. */
sd_status sd_check_fp16_result(sd_ctx *c, const sd_tensor *z, const char *what, int steps);
/* sd_now() once the device has finished the work queued so far: the phases' seconds (encode, DDIM
 * inversion, optimisation) then hold their own device time, not their predecessor's tail. */
double sd_invert_clock(sd_ctx *c);
sd_status sd_step_inputs_init(sd_ctx *c, sd_step_inputs *in, int64_t rows, const sd_tensor *latent);
/* Writes one timestep's values (uploads and one copy, outside any graph); target may be NULL. */
sd_status sd_step_inputs_set(sd_ctx *c, sd_step_inputs *in, int t, const float factors[4], const sd_tensor *target);
sd_tensor *sd_step_tvec(sd_ctx *c, const sd_step_inputs *in, int64_t B);

/* One DDIM step as a pure function of device memory (sd_graph_step may replay it): z' from z with
 * eps = sd_guided_eps's (the conditional call alone when uncond is NULL or w == 1: inversion;
 * else the CFG of one batched call [uncond; cond]: sampling, the inversions' advance); t and the
 * step's factors come from `in` (rows >= 2·batch when guided). Returns z'. */
typedef struct sd_ddim_step {
    const sd_model *m;
    sd_tensor *z, *uncond, *cond;
    float guidance;
    sd_step_inputs *in;
} sd_ddim_step;
sd_tensor *sd_ddim_step_forward(sd_ctx *c, void *arg);

/* The end of optimiser iteration j of timestep i (t), shared by Null-text and StyleDiffusion,
 * as the reference runs it, after sd_graph_step: read the loss, stop with SD_ERR_NUMERIC naming the
 * timestep, t and iteration when the loss or a gradient of opt's parameters is not finite, else
 * take the Adam step; then reset the tape and the activations to `mark` and record the loss in
 * `stat`. Returns 1 when the loop ends here (early stop: loss < early_stop + i·2e-5, compared as
 * Python does; or a failure), 0 to go on. */
struct sd_tape;
int sd_invert_finish_iteration(sd_ctx *c, struct sd_tape *tape, sd_arena_mark mark, sd_tensor *loss, sd_adam *opt,
                               const sd_invert_options *o, sd_step_stats *stat, int i, int t, int j);
/* The UNet prefix of a timestep's optimiser iterations (sd_unet_prefix of UNet(z, tvec[0], ·)):
 * made once per timestep with the iterations' tape attached, so that it stores what their
 * forwards store (it records nothing: fails if it would), and replayable (sd_graph_step on g).
 * Each iteration then calls sd_unet_forward_from(p, its context): SD v1.5 at 512 px, 5% of a
 * call's arithmetic (its longest attention among it) less per iteration, the same bits. */
sd_status sd_invert_prefix(sd_ctx *c, sd_step_graph *g, const sd_model *m, sd_tensor *z, sd_step_inputs *in,
                           sd_tape *tape, sd_unet_prefix *p);
/* Adds a finished optimisation's graph counters to the inversion's report. */
void sd_invert_count_graph_steps(sd_inversion *out, const sd_step_graph *g);

/* A host copy of a device tensor. */
sd_tensor *sd_to_host(sd_ctx *c, const sd_tensor *t);

#endif
