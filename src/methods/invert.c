/* invert.c: the inversion front door (method dispatch, DDIM and negative-prompt inversion),
 * reconstruction from an inversion, and the schedules the optimising methods share. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "invert_internal.h"
#include "sd/control.h"

const char *sd_invert_method_name(sd_invert_method m) {
    switch (m) {
    case SD_INVERT_DDIM: return "ddim";
    case SD_INVERT_NPI: return "npi";
    case SD_INVERT_NULLTEXT: return "nulltext";
    case SD_INVERT_STYLEDIFFUSION: return "stylediffusion";
    }
    return "?";
}

sd_status sd_invert_method_parse(const char *name, sd_invert_method *out) {
    for (int m = SD_INVERT_DDIM; m <= SD_INVERT_STYLEDIFFUSION; m++)
        if (name && !strcmp(name, sd_invert_method_name((sd_invert_method)m))) {
            *out = (sd_invert_method)m;
            return SD_OK;
        }
    return sd_fail(SD_ERR_ARG, "--method '%s': expected one of ddim, npi, nulltext, stylediffusion",
                   name ? name : "");
}

void sd_invert_options_default(sd_invert_method method, sd_invert_options *o) {
    memset(o, 0, sizeof *o);
    o->method = method;
    o->n_steps = method == SD_INVERT_STYLEDIFFUSION ? 30 : 50;
    o->guidance = 7.5f;
    o->inner_steps = method == SD_INVERT_STYLEDIFFUSION ? 100 : 10;
    o->early_stop = 1e-5;
    o->lr = 1e-2;
    o->attention_loss = 1;
    o->seed = 0;
}

double sd_step_lr(double lr, int i) { return lr * (1.0 - (double)i / 100.0); }

int sd_stylediffusion_inner_steps(int inner, int i) {
    /* the reference computes ceil(inner · exp(-0.1 i)) in double */
    return (int)ceil((double)inner * exp(-0.1 * (double)i));
}

sd_status sd_invert_prepare(sd_ctx *c, const sd_model *m, const sd_invert_options *o,
                            sd_tensor *image, const char *prompt, sd_invert_state *s) {
    memset(s, 0, sizeof *s);
    SD_TRY(sd_ddim_init(&s->sched, o->n_steps));
    /* the encoders' activations (the VAE's run to gigabytes at 512 px) are dropped once their
     * results are kept: the optimisation that follows needs the memory */
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    s->cond = sd_keep(c, sd_encode_prompt(c, m, prompt));
    s->uncond = sd_keep(c, sd_encode_prompt(c, m, ""));
    s->z0 = sd_keep(c, sd_image_to_latent(c, m, image));
    sd_arena_reset(c->arena, mark);
    s->latents = calloc((size_t)o->n_steps + 1, sizeof *s->latents);
    if (!s->latents) return c->status = sd_fail(SD_ERR_OOM, "out of memory");
    return sd_ctx_status(c);
}

void sd_invert_state_free(sd_invert_state *s) {
    free(s->latents);
    s->latents = NULL;
}

/* Host copy of a device tensor (NULL on failure; the context says why). */
sd_tensor *sd_to_host(sd_ctx *c, const sd_tensor *t) { return sd_download_new(c, t); }

static sd_status check_finite_loss(const sd_ctx *c, float loss, int i, int t, int j) {
    if (isfinite(loss)) return SD_OK;
    return sd_fail(SD_ERR_NUMERIC, "timestep %d (t = %d), iteration %d: the loss is %s; stopping%s", i, t, j,
                   isnan(loss) ? "NaN" : "infinite",
                   c->activations == SD_F16 ? " (the forwards without a gradient store fp16 activations: if one "
                                              "overflowed, SD_FAST_ACTIVATIONS=f32 keeps them F32)"
                                            : "");
}

/* NaN/Inf guard: the loss and every gradient of the step. */
static sd_status check_step(sd_ctx *c, float loss, const sd_adam *opt, int i, int t, int j) {
    sd_status st = check_finite_loss(c, loss, i, t, j);
    if (st) return c->status = st;
    /* every gradient in one check: one wait for the device per iteration, not one per parameter */
    for (int g = 0; g < opt->n;) {
        const sd_tensor *grads[SD_ALL_FINITE_MAX];
        int which[SD_ALL_FINITE_MAX], ok[SD_ALL_FINITE_MAX], n = 0;
        for (; g < opt->n && n < SD_ALL_FINITE_MAX; g++)
            if (opt->params[g]->grad) which[n] = g, grads[n++] = opt->params[g]->grad;
        if (n > 0 && sd_all_finite_each(c, grads, n, ok)) return c->status;
        for (int k = 0; k < n; k++)
            if (!ok[k]) {
                const sd_tensor *p = opt->params[which[k]];
                return c->status = sd_fail(SD_ERR_NUMERIC,
                                           "timestep %d (t = %d), iteration %d: the gradient of '%s' has NaN or Inf; stopping",
                                           i, t, j, p->name[0] ? p->name : "a parameter");
            }
    }
    return sd_ctx_status(c);
}

double sd_invert_clock(sd_ctx *c) {
    if (c->status == SD_OK && c->be->synchronize) sd_ctx_check(c, c->be->synchronize());
    return sd_now();
}

sd_status sd_check_fp16_result(sd_ctx *c, const sd_tensor *z, const char *what, int steps) {
    if (c->status != SD_OK || c->activations != SD_F16 || !z) return c->status;
    if (!sd_all_finite(c, z) && c->status == SD_OK)
        sd_ctx_fail(c, SD_ERR_NUMERIC,
                    "%s: the latent holds NaN or Inf after %d steps with fp16 UNet activations (a value overflowed "
                    "fp16's range); rerun with SD_FAST_ACTIVATIONS=f32 or --precision exact", what, steps);
    return c->status;
}

sd_status sd_step_inputs_init(sd_ctx *c, sd_step_inputs *in, int64_t rows, const sd_tensor *latent) {
    const int64_t four = 4;
    in->rows = rows;
    in->tvec = sd_keep_new(c, 1, &rows);
    in->factors = sd_keep_new(c, 1, &four);
    in->target = latent ? sd_keep_new(c, latent->ndim, latent->shape) : NULL;
    return sd_ctx_status(c);
}

sd_status sd_step_inputs_set(sd_ctx *c, sd_step_inputs *in, int t, const float factors[4], const sd_tensor *target) {
    if (c->status != SD_OK) return c->status;
    sd_ctx_check(c, c->be->fill(sd_f32(in->tvec), (float)t, in->rows));
    sd_ctx_check(c, c->be->upload(in->factors->data, factors, 4 * sizeof *factors));
    if (target) sd_assign(c, in->target, target);
    return sd_ctx_status(c);
}

sd_tensor *sd_step_tvec(sd_ctx *c, const sd_step_inputs *in, int64_t B) { return sd_slice0(c, in->tvec, 0, B); }

typedef struct prefix_step {
    const sd_model *m;
    sd_tensor *z;
    sd_step_inputs *in;
    sd_tape *tape;
    sd_unet_prefix *p;
} prefix_step;

static sd_tensor *prefix_forward(sd_ctx *c, void *arg) {
    const prefix_step *a = arg;
    sd_unet_prefix_for_tape(c, &a->m->unet, a->z, sd_step_tvec(c, a->in, 1), a->tape, a->p);
    return c->status == SD_OK ? &a->p->h : NULL;
}

sd_status sd_invert_prefix(sd_ctx *c, sd_step_graph *g, const sd_model *m, sd_tensor *z, sd_step_inputs *in,
                           sd_tape *tape, sd_unet_prefix *p) {
    prefix_step a = {m, z, in, tape, p};
    const void *inputs[] = {z->data, in->tvec->data};
    sd_graph_step(c, g, NULL, prefix_forward, &a, inputs, 2, NULL, 0);
    return sd_ctx_status(c);
}

void sd_invert_count_graph_steps(sd_inversion *out, const sd_step_graph *g) {
    out->graph_steps += g->replays;
    out->gradient_steps += g->steps;
}

int sd_invert_finish_iteration(sd_ctx *c, sd_tape *tape, sd_arena_mark mark, sd_tensor *loss, sd_adam *opt,
                               const sd_invert_options *o, sd_step_stats *stat, int i, int t, int j) {
    const float value = sd_item(c, loss); /* the reference's loss.item(): the early stop reads it */
    if (check_step(c, value, opt, i, t, j) == SD_OK) sd_adam_step(c, opt);
    sd_tape_reset(tape);
    sd_arena_reset(c->arena, mark);
    if (j == 0) stat->first_loss = value;
    stat->last_loss = value;
    stat->iterations = j + 1;
    return c->status != SD_OK || (double)value < o->early_stop + (double)i * 2e-5;
}

sd_status sd_invert(sd_ctx *c, const sd_model *m, const sd_invert_options *o, sd_tensor *image,
                    const char *prompt, sd_tensor *features, sd_inversion *out) {
    memset(out, 0, sizeof *out);
    out->method = o->method;
    out->n_steps = o->n_steps;
    out->guidance = o->guidance;
    out->prompt = strdup(prompt);
    out->stats = calloc((size_t)o->n_steps, sizeof *out->stats);
    if (!out->prompt || !out->stats) return c->status = sd_fail(SD_ERR_OOM, "out of memory");
    snprintf(out->model_id, sizeof out->model_id, "%s", m->builtin ? "built-in tiny" : m->files.source);
    out->model_fingerprint = m->fingerprint;

    const double t0 = sd_invert_clock(c); /* not the tail of the caller's work */
    sd_invert_state s;
    sd_status st = sd_invert_prepare(c, m, o, image, prompt, &s);
    if (st == SD_OK) st = sd_ctx_status(c);
    const double t_ddim = sd_invert_clock(c);
    out->seconds_encode = t_ddim - t0;
    if (st == SD_OK) {
        switch (o->method) {
        case SD_INVERT_DDIM:
        case SD_INVERT_NPI:
            st = sd_ddim_invert(c, m, &s.sched, s.z0, s.cond, s.latents);
            out->seconds_ddim = sd_invert_clock(c) - t_ddim;
            if (st == SD_OK && o->method == SD_INVERT_NPI) {
                out->null_embeddings = calloc(1, sizeof *out->null_embeddings);
                if (!out->null_embeddings) st = sd_fail(SD_ERR_OOM, "out of memory");
                else if (!(out->null_embeddings[0] = sd_to_host(c, s.cond))) st = sd_ctx_status(c);
            }
            for (int i = 0; i < o->n_steps; i++) out->stats[i].t = s.sched.timesteps[i];
            break;
        case SD_INVERT_NULLTEXT:
            st = sd_nulltext_optimize(c, m, o, &s, out, t_ddim);
            break;
        case SD_INVERT_STYLEDIFFUSION:
            if (!features) {
                st = sd_fail(SD_ERR_ARG, "stylediffusion inversion needs the CLIP image features");
                break;
            }
            st = sd_stylediffusion_optimize(c, m, o, &s, features, out, t_ddim);
            break;
        }
    }
    if (st == SD_OK) {
        out->z0 = sd_to_host(c, s.z0);
        out->z_T = sd_to_host(c, s.latents[o->n_steps]);
        if (features && o->method == SD_INVERT_STYLEDIFFUSION) out->image_features = sd_to_host(c, features);
        st = sd_ctx_status(c);
    }
    out->seconds_total = sd_now() - t0;
    sd_invert_state_free(&s);
    return st;
}

void sd_inversion_free(sd_inversion *inv) {
    const int n = inv->n_steps;
    free(inv->prompt);
    sd_tensor_free(inv->z0);
    sd_tensor_free(inv->z_T);
    if (inv->null_embeddings) {
        const int count = inv->method == SD_INVERT_NPI ? 1 : n;
        for (int i = 0; i < count; i++) sd_tensor_free(inv->null_embeddings[i]);
        free(inv->null_embeddings);
    }
    if (inv->mapping) {
        for (int i = 0; i < n; i++)
            for (int p = 0; p < SD_MAP_N_PARAMS; p++) sd_tensor_free(inv->mapping[i][p]);
        free(inv->mapping);
    }
    sd_tensor_free(inv->image_features);
    free(inv->stats);
    memset(inv, 0, sizeof *inv);
}

/* ------------------------------------------------------------------------------------------------
 * Reconstruction: sampling back with the inversion's own variables
 * --------------------------------------------------------------------------------------------- */

/* One reconstruction step, replayable: the guided eps of the inversion's method and the DDIM
 * step. StyleDiffusion's eps_c reads the value input of the step's mapping network (net). */
typedef struct recon_step {
    sd_ddim_step ddim; /* z, uncond (the step's null embedding for Null-text), cond, guidance, in */
    const sd_mapping_net *net;
    sd_tensor *features;
} recon_step;

static sd_tensor *recon_forward(sd_ctx *c, void *arg) {
    const recon_step *r = arg;
    if (!r->net) return sd_ddim_step_forward(c, (void *)&r->ddim);
    const sd_ddim_step *a = &r->ddim;
    /* both calls read one latent and timestep: one prefix (arena host memory, as the calls') */
    sd_unet_prefix *prefix = sd_arena_alloc_host(c->arena, sizeof *prefix);
    if (!prefix) return sd_ctx_fail(c, SD_ERR_OOM, "out of memory");
    if (sd_unet_prefix_compute(c, &a->m->unet, a->z, sd_step_tvec(c, a->in, 1), prefix)) return NULL;
    sd_tensor *eps_u = sd_unet_forward_from(c, &a->m->unet, prefix, a->uncond);
    sd_tensor *eps_c = sd_stylediffusion_cond_eps(c, a->m, r->net, r->features, prefix, NULL, NULL, a->cond, NULL);
    return sd_ddim_step_dev(c, a->in->factors, sd_cfg_combine(c, eps_u, eps_c, a->guidance), a->z);
}

sd_tensor *sd_inversion_reconstruct(sd_ctx *c, const sd_model *m, const sd_inversion *inv) {
    if (c->status != SD_OK) return NULL;
    sd_ddim sched;
    if (sd_ddim_init(&sched, inv->n_steps)) {
        c->status = SD_ERR_ARG;
        return NULL;
    }
    sd_tensor *cond = sd_keep(c, sd_encode_prompt(c, m, inv->prompt));
    sd_tensor *uncond = inv->method == SD_INVERT_NPI || inv->method == SD_INVERT_NULLTEXT
                            ? sd_upload(c, inv->null_embeddings[0]) /* Null-text: step i's is copied in below */
                            : sd_encode_prompt(c, m, "");
    uncond = sd_keep(c, uncond);
    sd_tensor *z = sd_keep(c, sd_upload(c, inv->z_T));
    sd_tensor *features = inv->image_features ? sd_keep(c, sd_upload(c, inv->image_features)) : NULL;
    sd_step_inputs in;
    sd_step_inputs_init(c, &in, 2, NULL);
    sd_mapping_net net = {{0}};
    const int sd_method = inv->method == SD_INVERT_STYLEDIFFUSION;
    if (sd_method && sd_ctx_check(c, sd_mapping_net_from_host(c, &net, inv->mapping[0])) == 0) return NULL;
    if (c->status != SD_OK) return NULL;
    recon_step step = {{m, z, uncond, cond, inv->guidance, &in}, sd_method ? &net : NULL, features};
    const void *inputs[] = {z->data, uncond->data, cond->data, features ? features->data : NULL, in.tvec->data,
                            in.factors->data};
    sd_step_graph graph;
    sd_step_graph_init(&graph, c);
    sd_progress bar;
    sd_progress_begin(&bar, "reconstruction", inv->n_steps);
    for (int i = 0; i < inv->n_steps && c->status == SD_OK; i++) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const int t = sched.timesteps[i];
        float f[4];
        sd_ddim_prev_factors(&sched, t, f);
        sd_step_inputs_set(c, &in, t, f, NULL);
        /* the step's variables, into the buffers the step reads */
        if (inv->method == SD_INVERT_NULLTEXT)
            sd_ctx_check(c, c->be->upload(uncond->data, inv->null_embeddings[i]->data, sd_nbytes(inv->null_embeddings[i])));
        for (int p = 0; sd_method && p < SD_MAP_N_PARAMS && c->status == SD_OK; p++)
            sd_ctx_check(c, c->be->upload(net.params[p]->data, inv->mapping[i][p]->data, sd_nbytes(inv->mapping[i][p])));
        sd_assign(c, z, sd_graph_step(c, &graph, NULL, recon_forward, &step, inputs, 6, sd_method ? net.params : NULL,
                                      sd_method ? SD_MAP_N_PARAMS : 0));
        sd_arena_reset(c->arena, mark);
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    sd_step_graph_free(&graph);
    sd_mapping_net_free(&net);
    sd_check_fp16_result(c, z, "reconstruction", inv->n_steps);
    return c->status == SD_OK ? z : NULL;
}
