/* p2p.c: the Prompt-to-Prompt / P2Plus attention controller, LocalBlend and the cross-attention
 * heatmaps (see include/sd/p2p.h; stylediffusion.md §4).
 *
 * How the reference's edits become nn ops. Every cross edit is linear along the key axis, per
 * target t and step s, with α = cross_alpha[s][t] (0/1 per token n), e = the equalizer (or 1):
 *   replace:  new[n] = Σ_w base[w]·M[w][n]·e[n]·α[n]            + tgt[n]·(1 − α[n])
 *   refine:   new[n] = base[m(n)]·a[n]·e[n]·α[n]                 + tgt[n]·((1 − a[n])·e[n]·α[n] + 1 − α[n])
 * (m: the alignment mapper, -1 wrapping to token 76 as a negative Python index does; a: the
 * refinement alphas, 0/1). So new = base·Wbᵀ + tgt·Wtᵀ with two 77x77 matrices per (target, α row):
 * two sd_linear calls and an add. Because α, a ∈ {0, 1}, every output is a single product of one
 * input with the same factor the reference multiplies by (the other terms are exact zeros), so the
 * result is bit-identical to the reference's einsum / gather / multiply chain, except where a
 * fractional word-swap weight (1/k) meets an equalizer value that is not a power of two (one
 * rounding instead of two, ~1 ulp).
 *
 * Reference quirks reproduced here (the prompt-side ones live in p2p_align.c):
 *  - cross edits run in every cross layer, 64² included; self injection only up to 32² (the
 *    StyleDiffusion / NTI / P2Plus `32 ** 2`, not the P2P notebook's 16²), as (side/2)²;
 *  - the equalizer multiplies without renormalising, and scales every target although it was
 *    built from prompts[1];
 *  - the store is a running SUM over conditional passes of post-edit maps; LocalBlend reads that
 *    sum (not an average: the per-sample max normalisation makes the scale irrelevant, but the
 *    maxpool and threshold see exactly the reference's numbers);
 *  - LocalBlend's counter counts step callbacks, and blends only once counter > int(0.2·N); the
 *    mask of row 0 is ORed into every target row (mask[:1] + mask on booleans), and row 0 itself
 *    is rewritten as x0 + 0·(x0 − x0), which is x0;
 *  - the unconditional pass stores nothing and edits only self-attention (replace_uncond). */
#include "sd/p2p.h"

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "sd/text.h"

#define T SD_P2P_TOKENS
#define MAX_SLOTS SD_MAX_CAPTURED
#define HEATMAP_SIZE 256

/* One distinct (target, α row): the folded weights of the cross edit. */
typedef struct edit_pattern {
    int target;             /* 0-based target (prompt target + 1) */
    float alpha[T];         /* the α row it was built from (for deduplication) */
    float *w_base, *w_tgt;  /* host (77, 77) linear weights [n][w] */
    sd_tensor *dev_base, *dev_tgt; /* device copies, uploaded on first use */
} edit_pattern;

/* One stored layer: the running sum of its post-edit conditional maps. */
typedef struct store_slot {
    sd_tensor *sum; /* [B·heads, q_len, 77] on the device, owned */
    int layer;
    sd_unet_place place;
    int heads;
    int64_t res_h, res_w;
    int passes; /* conditional passes added into sum */
} store_slot;

struct sd_p2p {
    sd_attn_hook base; /* first member: the hook pointer is the controller pointer */

    int n_prompts, n_targets, n_steps;
    int64_t latent_h, latent_w;
    int64_t loss_q_len; /* stored cross maps: (side/4)² */
    int64_t max_q_len;  /* self injection limit: (side/2)² */
    char **prompts;

    /* cross edits: step_pattern[s·n_targets + t] indexes patterns, -1 when α is all zero */
    edit_pattern *patterns;
    int n_patterns;
    int *step_pattern;
    unsigned char *step_cross_active; /* [n_steps]: some target has a nonzero α */
    sd_p2p_steps self_steps, uncond_steps;

    /* LocalBlend */
    int blend;
    float alpha_layers[SD_P2P_MAX_PROMPTS][T];
    float blend_threshold;
    int blend_start_steps; /* int(start·N) */
    int blend_counter;
    sd_tensor *dev_alpha_layers; /* (B, 77), uploaded on first use */
    float *mask;                 /* host [B, latent_h, latent_w] */
    int have_mask;

    /* the current pass */
    int pass_valid;
    int step;
    sd_branch branch;
    int pass_slot;   /* next store slot of this pass */
    int pass_stored; /* this pass added to the store */
    int n_stored_passes;

    store_slot slots[MAX_SLOTS];
    int n_slots;

    /* device binding and the device memory the controller owns */
    const sd_backend *be;
    int device;
    int bound;
    sd_tensor **owned;
    int n_owned, cap_owned;

    sd_p2p_value_fn value_fn;
    void *value_user;
};

sd_p2p_config sd_p2p_config_default(void) {
    sd_p2p_config cfg;
    memset(&cfg, 0, sizeof cfg);
    cfg.edit = SD_P2P_REPLACE;
    cfg.cross.default_window = sd_p2p_window_until(0.6);
    cfg.self_window = sd_p2p_window_until(0.8);
    cfg.uncond_window = sd_p2p_window_until(0.5);
    cfg.blend_threshold = 0.3;
    cfg.blend_start = 0.2;
    return cfg;
}

/* ------------------------------------------------------------------------------------------------
 * Device memory owned by the controller
 * --------------------------------------------------------------------------------------------- */

/* Binds the controller to the context's backend and device on first use; later contexts must
 * match, because the store and the weights live in that device's memory. */
static int bind_device(sd_p2p *p, sd_ctx *c) {
    if (!p->bound) {
        p->be = c->be;
        p->device = c->device;
        p->bound = 1;
        return 1;
    }
    if (p->be != c->be || p->device != c->device) {
        sd_ctx_fail(c, SD_ERR_ARG, "p2p controller: used on device %d (%s) after device %d (%s); "
                    "create one controller per device", c->device, c->be->name, p->device, p->be->name);
        return 0;
    }
    return 1;
}

/* A tensor in device memory that lives as long as the controller. */
static sd_tensor *owned_tensor(sd_p2p *p, sd_ctx *c, int ndim, const int64_t *shape, const char *name) {
    if (p->n_owned == p->cap_owned) {
        int cap = p->cap_owned ? 2 * p->cap_owned : 16;
        sd_tensor **grown = realloc(p->owned, (size_t)cap * sizeof *grown);
        if (!grown) return sd_ctx_fail(c, SD_ERR_OOM, "p2p controller: out of host memory");
        p->owned = grown;
        p->cap_owned = cap;
    }
    sd_tensor *t = calloc(1, sizeof *t);
    if (!t) return sd_ctx_fail(c, SD_ERR_OOM, "p2p controller: out of host memory");
    t->ndim = ndim;
    memcpy(t->shape, shape, (size_t)ndim * sizeof *shape);
    t->dtype = SD_F32;
    t->device = c->device;
    t->tape_index = -1;
    sd_tensor_set_name(t, name);
    t->data = c->be->mem_alloc(sd_nbytes(t));
    if (!t->data) {
        free(t);
        if (c->status == SD_OK) c->status = SD_ERR_OOM; /* mem_alloc wrote the message */
        return NULL;
    }
    p->owned[p->n_owned++] = t;
    return t;
}

static sd_tensor *owned_upload(sd_p2p *p, sd_ctx *c, int ndim, const int64_t *shape, const float *host,
                               const char *name) {
    sd_tensor *t = owned_tensor(p, c, ndim, shape, name);
    if (!t) return NULL;
    return sd_ctx_check(c, c->be->upload(t->data, host, sd_nbytes(t))) ? t : NULL;
}

/* ------------------------------------------------------------------------------------------------
 * Creation
 * --------------------------------------------------------------------------------------------- */

/* Folds mapper, equalizer and α of one (target, α row) into the two linear weights (see the top
 * of the file). Weights are in sd_linear's (out, in) layout: w[n·77 + w_in]. */
static void fold_replace(const float mapper[T][T], const float *eq, const float *alpha, float *w_base,
                         float *w_tgt) {
    for (int n = 0; n < T; n++) {
        const float scale = eq[n] * alpha[n]; /* exact: alpha is 0 or 1 */
        for (int w = 0; w < T; w++) {
            w_base[n * T + w] = mapper[w][n] * scale;
            w_tgt[n * T + w] = w == n ? 1.0f - alpha[n] : 0.0f;
        }
    }
}

static void fold_refine(const int *mapper, const float *ref_alpha, const float *eq, const float *alpha,
                        float *w_base, float *w_tgt) {
    memset(w_base, 0, sizeof(float) * T * T);
    memset(w_tgt, 0, sizeof(float) * T * T);
    for (int n = 0; n < T; n++) {
        /* base[:, :, mapper]: a -1 (a new target token) indexes the last token, as in Python; its
         * weight is zero anyway (ref_alpha = 0) */
        const int src = mapper[n] < 0 ? T + mapper[n] : mapper[n];
        w_base[n * T + src] = ref_alpha[n] * eq[n] * alpha[n];
        w_tgt[n * T + n] = (1.0f - ref_alpha[n]) * eq[n] * alpha[n] + (1.0f - alpha[n]);
    }
}

static int row_is_zero(const float *row) {
    for (int n = 0; n < T; n++)
        if (row[n] != 0.0f) return 0;
    return 1;
}

/* One pattern per distinct α row of each target; step_pattern maps (step, target) to it. */
static sd_status build_patterns(sd_p2p *p, const sd_p2p_config *cfg, const float *cross_alpha,
                                const float (*replace_mappers)[T][T], const int (*refine_mappers)[T],
                                const float (*refine_alphas)[T], const float *eq) {
    const int N = p->n_steps, nt = p->n_targets;
    p->step_pattern = malloc((size_t)N * nt * sizeof *p->step_pattern);
    p->step_cross_active = calloc((size_t)N, 1);
    p->patterns = calloc((size_t)N * nt, sizeof *p->patterns); /* at most one per (step, target) */
    if (!p->step_pattern || !p->step_cross_active || !p->patterns)
        return sd_fail(SD_ERR_OOM, "p2p controller: out of memory for %d steps x %d targets", N, nt);
    for (int s = 0; s < N; s++) {
        for (int t = 0; t < nt; t++) {
            const float *alpha = cross_alpha + ((size_t)s * nt + t) * T; /* row s of (N+1, B-1, 77) */
            int found = -1;
            if (!row_is_zero(alpha)) {
                for (int k = 0; k < p->n_patterns && found < 0; k++)
                    if (p->patterns[k].target == t && !memcmp(p->patterns[k].alpha, alpha, sizeof(float) * T))
                        found = k;
                if (found < 0) {
                    edit_pattern *pat = &p->patterns[p->n_patterns];
                    pat->target = t;
                    memcpy(pat->alpha, alpha, sizeof(float) * T);
                    pat->w_base = malloc(sizeof(float) * T * T);
                    pat->w_tgt = malloc(sizeof(float) * T * T);
                    if (!pat->w_base || !pat->w_tgt) {
                        free(pat->w_base);
                        free(pat->w_tgt);
                        return sd_fail(SD_ERR_OOM, "p2p controller: out of memory for edit weights");
                    }
                    if (cfg->edit == SD_P2P_REPLACE)
                        fold_replace(replace_mappers[t], eq, alpha, pat->w_base, pat->w_tgt);
                    else
                        fold_refine(refine_mappers[t], refine_alphas[t], eq, alpha, pat->w_base, pat->w_tgt);
                    found = p->n_patterns++;
                }
                p->step_cross_active[s] = 1;
            }
            p->step_pattern[(size_t)s * nt + t] = found;
        }
    }
    return SD_OK;
}

static sd_tensor *value_input(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *context);
static int wants_probs(sd_attn_hook *h, const sd_attn_site *s);
static sd_tensor *edit_probs(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs);

static sd_status check_config(const char *const *prompts, int n_prompts, int n_steps, int64_t latent_h,
                              int64_t latent_w, const sd_p2p_config *cfg) {
    if (!prompts) return sd_fail(SD_ERR_ARG, "p2p controller: prompts is NULL");
    if (n_prompts < 2 || n_prompts > SD_P2P_MAX_PROMPTS)
        return sd_fail(SD_ERR_ARG, "p2p controller: %d prompts; need a source and 1 to %d targets", n_prompts,
                       SD_P2P_MAX_TARGETS);
    for (int b = 0; b < n_prompts; b++)
        if (!prompts[b]) return sd_fail(SD_ERR_ARG, "p2p controller: prompt %d is NULL", b);
    if (n_steps < 1 || n_steps > 100000)
        return sd_fail(SD_ERR_ARG, "p2p controller: %d diffusion steps (need 1 or more)", n_steps);
    if (latent_h < 4 || latent_w < 4 || latent_h > 65536 || latent_w > 65536)
        return sd_fail(SD_ERR_ARG, "p2p controller: latent size %lldx%lld (need at least 4x4)",
                       (long long)latent_h, (long long)latent_w);
    if (!cfg) return sd_fail(SD_ERR_ARG, "p2p controller: config is NULL");
    if (cfg->edit != SD_P2P_REPLACE && cfg->edit != SD_P2P_REFINE)
        return sd_fail(SD_ERR_ARG, "p2p controller: unknown edit type %d (replace or refine)", (int)cfg->edit);
    if (cfg->n_blend_lists < 0 || (cfg->n_blend_lists > 0 && !cfg->blend_words))
        return sd_fail(SD_ERR_ARG, "p2p controller: %d blend word lists without words", cfg->n_blend_lists);
    if (cfg->n_eq_words < 0 || (cfg->n_eq_words > 0 && (!cfg->eq_words || !cfg->eq_values)))
        return sd_fail(SD_ERR_ARG, "p2p controller: %d equalizer words without words or values", cfg->n_eq_words);
    if (cfg->n_blend_lists > 0) {
        if (!isfinite(cfg->blend_threshold))
            return sd_fail(SD_ERR_ARG, "p2p controller: LocalBlend threshold %g is not finite", cfg->blend_threshold);
        if (!isfinite(cfg->blend_start) || fabs(cfg->blend_start * n_steps) > 1e9)
            return sd_fail(SD_ERR_ARG, "p2p controller: LocalBlend start %g is not a usable fraction of %d steps",
                           cfg->blend_start, n_steps);
    }
    return SD_OK;
}

sd_status sd_p2p_create(const sd_tokenizer *tok, const char *const *prompts, int n_prompts, int n_steps,
                        int64_t latent_h, int64_t latent_w, const sd_p2p_config *cfg, sd_p2p **out) {
    if (!out) return sd_fail(SD_ERR_ARG, "p2p controller: out is NULL");
    *out = NULL;
    if (!tok) return sd_fail(SD_ERR_ARG, "p2p controller: tokenizer is NULL");
    SD_TRY(check_config(prompts, n_prompts, n_steps, latent_h, latent_w, cfg));

    sd_p2p *p = calloc(1, sizeof *p);
    if (!p) return sd_fail(SD_ERR_OOM, "p2p controller: out of memory");
    p->base.value_input = value_input;
    p->base.wants_probs = wants_probs;
    p->base.edit_probs = edit_probs;
    p->n_prompts = n_prompts;
    p->n_targets = n_prompts - 1;
    p->n_steps = n_steps;
    p->latent_h = latent_h;
    p->latent_w = latent_w;
    p->loss_q_len = sd_loss_map_q_len(latent_h, latent_w);
    p->max_q_len = sd_store_max_q_len(latent_h, latent_w);

    const int nt = p->n_targets;
    sd_status st = SD_OK;
    float *cross_alpha = malloc(sd_p2p_cross_alpha_count(n_steps, n_prompts) * sizeof(float));
    float (*replace_mappers)[T][T] = NULL;
    int (*refine_mappers)[T] = NULL;
    float (*refine_alphas)[T] = NULL;
    float eq[T];
    p->prompts = calloc((size_t)n_prompts, sizeof *p->prompts);
    if (!cross_alpha || !p->prompts) {
        st = sd_fail(SD_ERR_OOM, "p2p controller: out of memory");
        goto done;
    }
    for (int b = 0; b < n_prompts; b++) {
        p->prompts[b] = strdup(prompts[b]);
        if (!p->prompts[b]) {
            st = sd_fail(SD_ERR_OOM, "p2p controller: out of memory");
            goto done;
        }
    }

    /* the prompt-side arrays, exactly as the reference builds them (p2p_align.h) */
    if ((st = sd_p2p_cross_alpha(tok, prompts, n_prompts, n_steps, &cfg->cross, cross_alpha))) goto done;
    if ((st = sd_p2p_replace_steps(n_steps, cfg->self_window, &p->self_steps))) goto done;
    if ((st = sd_p2p_replace_steps(n_steps, cfg->uncond_window, &p->uncond_steps))) goto done;
    if (cfg->edit == SD_P2P_REPLACE) {
        replace_mappers = malloc((size_t)nt * sizeof *replace_mappers);
        if (!replace_mappers) {
            st = sd_fail(SD_ERR_OOM, "p2p controller: out of memory");
            goto done;
        }
        if ((st = sd_p2p_replacement_mappers(tok, prompts, n_prompts, replace_mappers))) goto done;
    } else {
        refine_mappers = malloc((size_t)nt * sizeof *refine_mappers);
        refine_alphas = malloc((size_t)nt * sizeof *refine_alphas);
        if (!refine_mappers || !refine_alphas) {
            st = sd_fail(SD_ERR_OOM, "p2p controller: out of memory");
            goto done;
        }
        if ((st = sd_p2p_refinement_mappers(tok, prompts, n_prompts, refine_mappers, refine_alphas))) goto done;
    }
    for (int n = 0; n < T; n++) eq[n] = 1.0f;
    if (cfg->n_eq_words > 0 &&
        (st = sd_p2p_equalizer(tok, prompts[1], cfg->eq_words, cfg->eq_values, cfg->n_eq_words, eq)))
        goto done;
    if (cfg->n_blend_lists > 0) {
        if ((st = sd_p2p_blend_alpha_layers(tok, prompts, n_prompts, cfg->blend_words, cfg->n_blend_lists,
                                            p->alpha_layers)))
            goto done;
        p->blend = 1;
        p->blend_threshold = (float)cfg->blend_threshold;
        p->blend_start_steps = (int)(cfg->blend_start * n_steps); /* Python int(): toward zero */
        p->mask = malloc((size_t)n_prompts * latent_h * latent_w * sizeof *p->mask);
        if (!p->mask) {
            st = sd_fail(SD_ERR_OOM, "p2p controller: out of memory for the LocalBlend mask");
            goto done;
        }
    }
    st = build_patterns(p, cfg, cross_alpha, (const float(*)[T][T])replace_mappers,
                        (const int(*)[T])refine_mappers, (const float(*)[T])refine_alphas, eq);

done:
    free(cross_alpha);
    free(replace_mappers);
    free(refine_mappers);
    free(refine_alphas);
    if (st != SD_OK) {
        sd_fail_context(st, "building the P2P controller: ");
        sd_p2p_free(p);
        return st;
    }
    *out = p;
    return SD_OK;
}

void sd_p2p_free(sd_p2p *p) {
    if (!p) return;
    for (int i = 0; i < p->n_owned; i++) {
        p->be->mem_free(p->owned[i]->data);
        free(p->owned[i]);
    }
    free(p->owned);
    for (int k = 0; k < p->n_patterns; k++) {
        free(p->patterns[k].w_base);
        free(p->patterns[k].w_tgt);
    }
    free(p->patterns);
    free(p->step_pattern);
    free(p->step_cross_active);
    if (p->prompts)
        for (int b = 0; b < p->n_prompts; b++) free(p->prompts[b]);
    free(p->prompts);
    free(p->mask);
    free(p);
}

sd_attn_hook *sd_p2p_hook(sd_p2p *p) { return p ? &p->base : NULL; }

void sd_p2p_set_value_input(sd_p2p *p, sd_p2p_value_fn fn, void *user) {
    p->value_fn = fn;
    p->value_user = user;
}

sd_status sd_p2p_begin_pass(sd_p2p *p, int step, sd_branch branch) {
    p->pass_valid = 0;
    if (step < 0 || step >= p->n_steps)
        return sd_fail(SD_ERR_ARG, "p2p controller: step %d outside the %d steps it was built for", step,
                       p->n_steps);
    if (branch != SD_BRANCH_UNCOND && branch != SD_BRANCH_COND)
        return sd_fail(SD_ERR_ARG, "p2p controller: unknown branch %d", (int)branch);
    p->step = step;
    p->branch = branch;
    p->pass_slot = 0;
    p->pass_stored = 0;
    p->pass_valid = 1;
    return SD_OK;
}

const float *sd_p2p_blend_mask(const sd_p2p *p) { return p->have_mask ? p->mask : NULL; }
int sd_p2p_stored_passes(const sd_p2p *p) { return p->n_stored_passes; }
int sd_p2p_stored_layers(const sd_p2p *p) { return p->n_slots; }

/* ------------------------------------------------------------------------------------------------
 * The hook
 * --------------------------------------------------------------------------------------------- */

enum {
    ACT_CROSS_EDIT = 1,  /* conditional cross layer, some target's α is nonzero this step */
    ACT_SELF_INJECT = 2, /* self layer <= max q_len inside the branch's window */
    ACT_STORE = 4,       /* conditional cross layer at the loss resolution */
    ACT_NO_PASS = 8,     /* no valid sd_p2p_begin_pass: fail loudly at the map */
};

/* What the controller does at a site in the current pass (the reference's forward /
 * replace_uncond, §4.1-§4.3). wants_probs and edit_probs both ask this, so they cannot disagree. */
static int site_action(const sd_p2p *p, const sd_attn_site *s) {
    if (!p->pass_valid) return ACT_NO_PASS;
    if (p->branch == SD_BRANCH_COND) {
        if (s->is_cross)
            return (p->step_cross_active[p->step] ? ACT_CROSS_EDIT : 0) |
                   (s->q_len == p->loss_q_len ? ACT_STORE : 0);
        return s->q_len <= p->max_q_len && sd_p2p_steps_contain(p->self_steps, p->step) ? ACT_SELF_INJECT : 0;
    }
    /* P2Plus replace_uncond: self-attention only, nothing stored */
    return !s->is_cross && s->q_len <= p->max_q_len && sd_p2p_steps_contain(p->uncond_steps, p->step)
               ? ACT_SELF_INJECT
               : 0;
}

static sd_tensor *value_input(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *context) {
    sd_p2p *p = (sd_p2p *)h;
    return p->value_fn ? p->value_fn(p->value_user, c, s, context) : NULL;
}

static int wants_probs(sd_attn_hook *h, const sd_attn_site *s) { return site_action((sd_p2p *)h, s) != 0; }

static int upload_pattern(sd_p2p *p, sd_ctx *c, edit_pattern *pat) {
    if (pat->dev_base) return 1;
    const int64_t shape[2] = {T, T};
    char name[96];
    snprintf(name, sizeof name, "p2p edit weights (target %d, source side)", pat->target + 1);
    pat->dev_base = owned_upload(p, c, 2, shape, pat->w_base, name);
    snprintf(name, sizeof name, "p2p edit weights (target %d, target side)", pat->target + 1);
    pat->dev_tgt = owned_upload(p, c, 2, shape, pat->w_tgt, name);
    return pat->dev_base && pat->dev_tgt;
}

/* attn[1:] = R(base, attn[1:])·α + (1 − α)·attn[1:] for every target with a nonzero α row. */
static void cross_edit(sd_p2p *p, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs) {
    const int64_t H = s->heads, rows = H * s->q_len, kv = s->kv_len;
    sd_tensor *base = sd_reshape4(c, sd_slice0(c, probs, 0, H), 2, rows, kv, 0, 0); /* [H·q, 77] */
    for (int t = 0; t < p->n_targets && c->status == SD_OK; t++) {
        const int k = p->step_pattern[(size_t)p->step * p->n_targets + t];
        if (k < 0) continue; /* α all zero: the edit is the identity */
        edit_pattern *pat = &p->patterns[k];
        if (!upload_pattern(p, c, pat)) return;
        sd_tensor *target = sd_reshape4(c, sd_slice0(c, probs, (t + 1) * H, H), 2, rows, kv, 0, 0);
        const sd_linear_w from_base = {pat->dev_base, NULL, 0}, from_target = {pat->dev_tgt, NULL, 0};
        /* both products are computed before the target block is overwritten */
        sd_tensor *edited = sd_add(c, sd_linear(c, base, &from_base), sd_linear(c, target, &from_target));
        if (edited) sd_assign(c, target, edited);
    }
}

/* attn[1:] = attn[0] (replace_self_attention, broadcast over the targets). */
static void self_inject(sd_p2p *p, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs) {
    const int64_t H = s->heads;
    sd_tensor *base = sd_slice0(c, probs, 0, H); /* [H, q, q] */
    for (int t = 0; t < p->n_targets && c->status == SD_OK; t++) {
        sd_tensor *target = sd_slice0(c, probs, (t + 1) * H, H);
        if (target) sd_assign(c, target, base);
    }
}

/* The store: slot k of a pass is its k-th loss-resolution cross map; sum += probs (post-edit). */
static void store_add(sd_p2p *p, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs) {
    const int k = p->pass_slot++;
    if (k >= MAX_SLOTS) {
        sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "p2p store: more than %d cross-attention layers at %lld positions",
                    MAX_SLOTS, (long long)p->loss_q_len);
        return;
    }
    if (k == p->n_slots) {
        char name[96];
        snprintf(name, sizeof name, "p2p attention store (layer %d)", s->layer);
        store_slot *slot = &p->slots[k];
        slot->sum = owned_tensor(p, c, probs->ndim, probs->shape, name);
        if (!slot->sum) return;
        slot->layer = s->layer;
        slot->place = s->place;
        slot->heads = s->heads;
        slot->res_h = s->res_h;
        slot->res_w = s->res_w;
        slot->passes = 0;
        p->n_slots++;
    }
    store_slot *slot = &p->slots[k];
    if (slot->layer != s->layer || !sd_same_shape(slot->sum, probs)) {
        char a[96], b[96];
        sd_ctx_fail(c, SD_ERR_ARG,
                    "p2p store: cross-attention call %d at %lld positions is layer %d with maps %s; earlier "
                    "passes had layer %d with %s (the UNet or batch changed under one controller)",
                    k + 1, (long long)p->loss_q_len, s->layer, sd_shape_str(probs->ndim, probs->shape, a, sizeof a),
                    slot->layer, sd_shape_str(slot->sum->ndim, slot->sum->shape, b, sizeof b));
        return;
    }
    /* the reference's between_steps: the first step's maps become the store, later ones are added */
    if (slot->passes == 0)
        sd_assign(c, slot->sum, probs);
    else
        sd_assign(c, slot->sum, sd_add(c, slot->sum, probs));
    if (c->status != SD_OK) return;
    slot->passes++;
    if (!p->pass_stored) {
        p->pass_stored = 1;
        p->n_stored_passes++;
    }
}

static sd_tensor *edit_probs(sd_attn_hook *h, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs) {
    sd_p2p *p = (sd_p2p *)h;
    if (c->status != SD_OK) return NULL;
    const int act = site_action(p, s);
    if (act & ACT_NO_PASS)
        return sd_ctx_fail(c, SD_ERR_ARG, "p2p controller: attention layer %d ran without sd_p2p_begin_pass "
                           "(call it before every UNet call, with the step and the branch)", s->layer);
    if (!act) return probs;
    if (c->tape)
        return sd_ctx_fail(c, SD_ERR_UNSUPPORTED, "p2p controller: it edits attention maps in place, which a "
                           "recording tape cannot differentiate; detach the tape while editing");
    char a[96];
    if (!probs || probs->ndim != 3 || s->batch != p->n_prompts || probs->shape[0] != s->batch * s->heads ||
        probs->shape[1] != s->q_len || probs->shape[2] != s->kv_len || (s->is_cross && s->kv_len != T))
        return sd_ctx_fail(c, SD_ERR_SHAPE,
                           "p2p controller: layer %d (%s %s) has maps %s for batch %lld x %d heads; the "
                           "controller edits %d prompts%s",
                           s->layer, sd_place_name(s->place), s->is_cross ? "cross" : "self",
                           probs ? sd_shape_str(probs->ndim, probs->shape, a, sizeof a) : "NULL",
                           (long long)s->batch, s->heads, p->n_prompts, s->is_cross ? " over 77 tokens" : "");
    if (!bind_device(p, c)) return NULL;
    /* the edits' temporaries are released again: only `probs` (allocated before) leaves this call */
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    if (act & ACT_CROSS_EDIT) cross_edit(p, c, s, probs);
    if (act & ACT_SELF_INJECT) self_inject(p, c, s, probs);
    if (act & ACT_STORE) store_add(p, c, s, probs);
    sd_arena_reset(c->arena, mark);
    return c->status == SD_OK ? probs : NULL;
}

/* ------------------------------------------------------------------------------------------------
 * LocalBlend
 * --------------------------------------------------------------------------------------------- */

/* torch's 'nearest' source index (upsample_nearest2d: nearest_idx), float scale included. */
static int64_t nearest_source(int64_t dst, int64_t in, int64_t out) {
    if (out == in) return dst;
    if (out == 2 * in) return dst >> 1;
    const float scale = (float)in / (float)out;
    const int64_t src = (int64_t)floorf((float)dst * scale);
    return src < in - 1 ? src : in - 1;
}

/* mask[b] from the token-reduced maps y[b][l][h][p] (host), as LocalBlend.get_mask computes it. */
static void blend_mask(sd_p2p *p, const float *reduced, int n_maps, int64_t res_h, int64_t res_w) {
    const int B = p->n_prompts;
    const int64_t P = res_h * res_w, LH = p->latent_h, LW = p->latent_w;
    p->have_mask = 0;
    float *mean = malloc((size_t)P * sizeof *mean), *pooled = malloc((size_t)P * sizeof *pooled);
    if (!mean || !pooled) {
        free(mean);
        free(pooled);
        return;
    }
    for (int b = 0; b < B; b++) {
        const float *y = reduced + (size_t)b * n_maps * P;
        /* (maps·alpha).sum(-1) was done on the device; .mean(1) over the layers x heads maps */
        for (int64_t q = 0; q < P; q++) {
            float acc = 0.0f;
            for (int m = 0; m < n_maps; m++) acc += y[(size_t)m * P + q];
            mean[q] = acc / (float)n_maps;
        }
        /* max_pool2d(3x3, stride 1, padding 1): the window's maximum over the cells inside the map */
        for (int64_t i = 0; i < res_h; i++)
            for (int64_t j = 0; j < res_w; j++) {
                float best = -INFINITY;
                for (int64_t di = -1; di <= 1; di++)
                    for (int64_t dj = -1; dj <= 1; dj++) {
                        const int64_t ii = i + di, jj = j + dj;
                        if (ii < 0 || jj < 0 || ii >= res_h || jj >= res_w) continue;
                        const float v = mean[ii * res_w + jj];
                        if (v > best || isnan(v)) best = v;
                    }
                pooled[i * res_w + j] = best;
            }
        /* nearest resize to the latent size, then divide by the sample's maximum and threshold */
        float *mask = p->mask + (size_t)b * LH * LW;
        float peak = -INFINITY;
        for (int64_t i = 0; i < LH; i++)
            for (int64_t j = 0; j < LW; j++) {
                const float v = pooled[nearest_source(i, res_h, LH) * res_w + nearest_source(j, res_w, LW)];
                mask[i * LW + j] = v;
                if (v > peak) peak = v;
            }
        for (int64_t k = 0; k < LH * LW; k++) {
            const float normalised = mask[k] / peak; /* 0/0 is NaN, and NaN > th is false, as in torch */
            mask[k] = normalised > p->blend_threshold ? 1.0f : 0.0f;
        }
    }
    /* mask = mask[:1] + mask: boolean OR of the source's mask into every row */
    for (int b = 1; b < B; b++)
        for (int64_t k = 0; k < LH * LW; k++)
            if (p->mask[k] != 0.0f) p->mask[(size_t)b * LH * LW + k] = 1.0f;
    free(mean);
    free(pooled);
    p->have_mask = 1;
}

sd_tensor *sd_p2p_end_step(sd_p2p *p, sd_ctx *c, sd_tensor *latents) {
    if (c->status != SD_OK) return NULL;
    if (!latents) return sd_ctx_fail(c, SD_ERR_ARG, "p2p LocalBlend: latents is NULL");
    p->pass_valid = 0; /* the next UNet call needs its own begin_pass */
    p->blend_counter++;
    if (!p->blend || p->blend_counter <= p->blend_start_steps) return latents;

    const int B = p->n_prompts;
    char a[96];
    if (latents->ndim != 4 || latents->shape[0] != B || latents->shape[2] != p->latent_h ||
        latents->shape[3] != p->latent_w)
        return sd_ctx_fail(c, SD_ERR_SHAPE, "p2p LocalBlend: latents %s, expected (%d, C, %lld, %lld)",
                           sd_shape_str(latents->ndim, latents->shape, a, sizeof a), B, (long long)p->latent_h,
                           (long long)p->latent_w);
    if (p->n_slots == 0 || p->n_stored_passes == 0)
        return sd_ctx_fail(c, SD_ERR_ARG, "p2p LocalBlend: the attention store is empty (no conditional pass "
                           "has run a cross-attention layer at %lld positions yet)", (long long)p->loss_q_len);
    if (!bind_device(p, c)) return NULL;
    if (!p->dev_alpha_layers) {
        const int64_t shape[2] = {B, T};
        p->dev_alpha_layers = owned_upload(p, c, 2, shape, &p->alpha_layers[0][0], "p2p LocalBlend alpha_layers");
        if (!p->dev_alpha_layers) return NULL;
    }
    const int64_t res_h = p->slots[0].res_h, res_w = p->slots[0].res_w, P = res_h * res_w;
    int n_maps = 0;
    for (int l = 0; l < p->n_slots; l++) {
        if (p->slots[l].res_h != res_h || p->slots[l].res_w != res_w)
            return sd_ctx_fail(c, SD_ERR_INTERNAL, "p2p LocalBlend: stored layers of different grids");
        n_maps += p->slots[l].heads;
    }

    /* Σ_tokens maps·alpha_layers[b] on the device, packed as [B, Σ heads, P], one download */
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_tensor *packed = sd_new4(c, 2, (int64_t)B * n_maps, P, 0, 0);
    for (int b = 0; b < B && c->status == SD_OK; b++) {
        const sd_linear_w blend_tokens = {sd_slice0(c, p->dev_alpha_layers, b, 1), NULL, 0}; /* (1, 77) */
        int row = b * n_maps;
        for (int l = 0; l < p->n_slots && c->status == SD_OK; l++) {
            const int H = p->slots[l].heads;
            sd_tensor *maps = sd_reshape4(c, sd_slice0(c, p->slots[l].sum, (int64_t)b * H, H), 2, H * P, T, 0, 0);
            sd_tensor *reduced = sd_linear(c, maps, &blend_tokens); /* [H·P, 1] */
            if (reduced) sd_assign(c, sd_slice0(c, packed, row, H), reduced);
            row += H;
        }
    }
    sd_tensor *host = sd_download_new(c, packed);
    sd_arena_reset(c->arena, mark);
    if (!host) return NULL;
    blend_mask(p, sd_f32(host), n_maps, res_h, res_w);
    sd_tensor_free(host);
    if (!p->have_mask) return sd_ctx_fail(c, SD_ERR_OOM, "p2p LocalBlend: out of host memory");

    /* z = z[0:1] + mask·(z − z[0:1]), the mask broadcast over the channels */
    const int64_t C = latents->shape[1], S = p->latent_h * p->latent_w;
    sd_tensor *mask_host = sd_tensor_new4(SD_F32, 4, B, C, p->latent_h, p->latent_w);
    if (!mask_host) return sd_ctx_fail(c, SD_ERR_OOM, "p2p LocalBlend: out of host memory");
    for (int b = 0; b < B; b++)
        for (int64_t ch = 0; ch < C; ch++)
            memcpy(sd_f32(mask_host) + ((size_t)b * C + ch) * S, p->mask + (size_t)b * S, (size_t)S * sizeof(float));
    sd_tensor *mask = sd_upload(c, mask_host);
    sd_tensor_free(mask_host);
    sd_tensor *source = sd_slice0(c, latents, 0, 1);
    sd_tensor *sources = source;
    for (int b = 1; b < B; b++) sources = sd_concat0(c, sources, source);
    return sd_add(c, sources, sd_mul(c, mask, sd_sub(c, latents, sources)));
}

/* ------------------------------------------------------------------------------------------------
 * Averaged maps and heatmaps
 * --------------------------------------------------------------------------------------------- */

sd_status sd_p2p_average_cross_maps(sd_p2p *p, sd_ctx *c, int prompt, float *out, int64_t *res_h,
                                    int64_t *res_w) {
    if (c->status != SD_OK) return c->status;
    if (prompt < 0 || prompt >= p->n_prompts)
        return sd_fail(SD_ERR_ARG, "p2p heatmaps: prompt %d of %d", prompt, p->n_prompts);
    if (p->n_stored_passes == 0 || p->n_slots == 0)
        return sd_fail(SD_ERR_ARG, "p2p heatmaps: nothing stored yet (run a conditional pass first)");
    if (!bind_device(p, c)) return c->status;
    const int64_t P = p->slots[0].res_h * p->slots[0].res_w;
    const size_t n = (size_t)P * T;
    float *acc = calloc(n, sizeof *acc);
    if (!acc) return sd_fail(SD_ERR_OOM, "p2p heatmaps: out of host memory");
    /* get_average_attention divides each stored sum by cur_step, then aggregate_attention
     * concatenates the selected prompt's heads of the "up" layers, then the "down" layers (mid is
     * not in from_where), and averages them */
    const float passes = (float)p->n_stored_passes;
    int count = 0;
    static const sd_unet_place order[2] = {SD_PLACE_UP, SD_PLACE_DOWN};
    for (int o = 0; o < 2 && c->status == SD_OK; o++)
        for (int l = 0; l < p->n_slots && c->status == SD_OK; l++) {
            const store_slot *slot = &p->slots[l];
            if (slot->place != order[o]) continue;
            const sd_arena_mark mark = sd_arena_get_mark(c->arena);
            sd_tensor *host = sd_download_new(c, sd_slice0(c, slot->sum, (int64_t)prompt * slot->heads, slot->heads));
            sd_arena_reset(c->arena, mark);
            if (!host) break;
            const float *v = sd_f32(host);
            for (int h = 0; h < slot->heads; h++, count++)
                for (size_t i = 0; i < n; i++) acc[i] += v[(size_t)h * n + i] / passes;
            sd_tensor_free(host);
        }
    if (c->status != SD_OK) {
        free(acc);
        return c->status;
    }
    if (count == 0) {
        free(acc);
        return sd_fail(SD_ERR_ARG, "p2p heatmaps: no stored layer in the up or down blocks");
    }
    for (size_t i = 0; i < n; i++) out[i] = acc[i] / (float)count;
    free(acc);
    if (res_h) *res_h = p->slots[0].res_h;
    if (res_w) *res_w = p->slots[0].res_w;
    return SD_OK;
}

/* The token's text as a file-name piece: [A-Za-z0-9._-] kept, runs of anything else become one
 * '_', leading/trailing '_' dropped ("<|startoftext|>" -> "startoftext"), at most 40 bytes. */
static void token_file_name(const sd_tokenizer *tok, int id, char *out, size_t cap) {
    char text[128];
    sd_token_decode(tok, id, text, sizeof text);
    size_t n = 0;
    int pending_gap = 0;
    for (const char *s = text; *s && n + 2 < cap && n < 40; s++) {
        const char ch = *s;
        const int keep = (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
                         ch == '.' || ch == '-' || ch == '_';
        if (!keep || ch == '_') {
            pending_gap = n > 0;
            continue;
        }
        if (pending_gap) out[n++] = '_';
        pending_gap = 0;
        out[n++] = ch;
    }
    if (n == 0) n = (size_t)snprintf(out, cap, "token%d", id);
    out[n] = '\0';
}

/* One token's map as show_cross_attention draws it: gray = uint8(255·map / max(map)), then
 * Image.resize((256, 256)) (bicubic), optionally over the background. */
static sd_status write_heatmap(const float *avg, int64_t res_h, int64_t res_w, int token, const sd_image *bg256,
                               const char *path) {
    const int64_t P = res_h * res_w;
    float peak = -INFINITY;
    for (int64_t q = 0; q < P; q++)
        if (avg[q * T + token] > peak) peak = avg[q * T + token];
    sd_image small = {0}, big = {0};
    SD_TRY(sd_image_alloc(&small, (int)res_w, (int)res_h));
    for (int64_t q = 0; q < P; q++) {
        const float scaled = 255.0f * avg[q * T + token] / peak; /* (255·image) / image.max(), float32 */
        /* numpy's astype(uint8) truncates; a NaN (an all-zero map) is drawn black */
        const uint8_t gray = !(scaled > 0.0f) ? 0 : scaled >= 255.0f ? 255 : (uint8_t)scaled;
        memset(small.data + q * 3, gray, 3);
    }
    sd_status st = sd_image_resize_bicubic(&small, HEATMAP_SIZE, HEATMAP_SIZE, &big);
    sd_image_free(&small);
    if (st) return st;
    if (bg256) {
        for (size_t i = 0; i < (size_t)HEATMAP_SIZE * HEATMAP_SIZE * 3; i++) {
            const unsigned heat = big.data[i - i % 3]; /* the gray value of this pixel */
            big.data[i] = (uint8_t)((bg256->data[i] * (64u * 255u + 191u * heat) + 255u * 255u / 2) / (255u * 255u));
        }
    }
    st = sd_image_save_png(path, &big);
    sd_image_free(&big);
    return st;
}

sd_status sd_p2p_save_heatmaps(sd_p2p *p, sd_ctx *c, const sd_tokenizer *tok, const char *dir,
                               const sd_image *background) {
    if (!tok || !dir || !*dir) return sd_fail(SD_ERR_ARG, "p2p heatmaps: tokenizer or directory missing");
    if (!sd_dir_exists(dir) && mkdir(dir, 0777) != 0 && errno != EEXIST)
        return sd_fail(SD_ERR_IO, "p2p heatmaps: cannot create directory '%s': %s", dir, strerror(errno));
    sd_image bg256 = {0};
    if (background && background->data) SD_TRY(sd_image_resize_bicubic(background, HEATMAP_SIZE, HEATMAP_SIZE, &bg256));
    const int64_t P = p->n_slots ? p->slots[0].res_h * p->slots[0].res_w : 0;
    float *avg = malloc((size_t)(P ? P : 1) * T * sizeof *avg);
    int ids[T];
    sd_status st = avg ? SD_OK : sd_fail(SD_ERR_OOM, "p2p heatmaps: out of host memory");
    for (int b = 0; b < p->n_prompts && st == SD_OK; b++) {
        int64_t res_h = 0, res_w = 0;
        if ((st = sd_p2p_average_cross_maps(p, c, b, avg, &res_h, &res_w))) break;
        /* tokenizer.encode(prompt): BOS, tokens, EOS (a map has 77 token columns at most) */
        int n_text = 0;
        if ((st = sd_tokenize(tok, p->prompts[b], NULL, 0, &n_text))) break;
        int *text_ids = malloc((size_t)(n_text ? n_text : 1) * sizeof *text_ids);
        if (!text_ids) {
            st = sd_fail(SD_ERR_OOM, "p2p heatmaps: out of host memory");
            break;
        }
        if ((st = sd_tokenize(tok, p->prompts[b], text_ids, n_text, &n_text))) {
            free(text_ids);
            break;
        }
        int n_ids = 0;
        ids[n_ids++] = sd_tokenizer_bos(tok);
        for (int k = 0; k < n_text && n_ids < T - 1; k++) ids[n_ids++] = text_ids[k];
        ids[n_ids++] = sd_tokenizer_eos(tok);
        free(text_ids);
        for (int k = 0; k < n_ids && st == SD_OK; k++) {
            char piece[64], name[96], path[4096];
            token_file_name(tok, ids[k], piece, sizeof piece);
            snprintf(name, sizeof name, "p%d_%02d_%s.png", b, k, piece);
            sd_path_join(path, sizeof path, dir, name);
            st = write_heatmap(avg, res_h, res_w, k, bg256.data ? &bg256 : NULL, path);
        }
    }
    free(avg);
    sd_image_free(&bg256);
    return st;
}
