/* edit.c: the editing loop (see edit.h). */
#include "sd/edit.h"

#include <stdlib.h>
#include <string.h>

#include "invert_internal.h"
#include "sd/presets.h"

void sd_edit_options_default(sd_invert_method method, sd_edit_options *o) {
    memset(o, 0, sizeof *o);
    sd_method_preset p;
    sd_method_preset_default(method, &p);
    o->edit = SD_P2P_REPLACE;
    o->tau_v = p.tau_v;
    o->tau_c = p.tau_c;
    o->tau_s = p.tau_s;
    o->tau_u = p.tau_u;
}

void sd_edit_result_free(sd_edit_result *r) {
    sd_tensor_free(r->latents);
    r->latents = NULL;
}

/* StyleDiffusion's value input for the two rows of one step's conditional pass, built once per
 * step and handed to every cross-attention layer of that pass only. */
typedef struct {
    sd_tensor *value; /* (2, 77, D) or NULL outside the conditional pass */
} value_rows;

static sd_tensor *value_for_site(void *user, sd_ctx *c, const sd_attn_site *s, sd_tensor *context) {
    (void)c;
    (void)context;
    const value_rows *v = user;
    return s->is_cross ? v->value : NULL;
}

/* UNet(z, t, context) for one pass of a timestep: from the timestep's prefix (made without the
 * controller at the first pass that can use it, *have set) where the controller leaves the first
 * self-attention alone, else the whole call. Both passes of a timestep read the same z and t, so
 * at SD v1.5's 512 px they share conv_in, the first resnet and the 4096-query self-attention. */
static sd_tensor *pass_forward(sd_ctx *c, const sd_model *m, sd_tensor *z, int t, sd_tensor *context,
                               sd_unet_prefix *prefix, int *have) {
    if (!sd_unet_hook_spares_prefix(c, &m->unet, z)) return sd_unet_forward(c, &m->unet, z, (float)t, context);
    if (!*have) {
        sd_tensor *tvec = sd_new4(c, 1, z->shape[0], 0, 0, 0);
        if (tvec) sd_ctx_check(c, c->be->fill(sd_f32(tvec), (float)t, sd_numel(tvec)));
        struct sd_attn_hook *hook = c->hook;
        c->hook = NULL;
        *have = sd_unet_prefix_compute(c, &m->unet, z, tvec, prefix) == SD_OK;
        c->hook = hook;
    }
    return sd_unet_forward_from(c, &m->unet, prefix, context);
}

/* Row 0: c_src ⊙ S + B always; row 1: c_tgt ⊙ S + B while i < τ_v·N, c_tgt afterwards. */
static sd_tensor *stylediffusion_rows(sd_ctx *c, const sd_mapping_net *net, sd_tensor *features,
                                      sd_tensor *c_src, sd_tensor *c_tgt, int target_mapped) {
    sd_tensor *o = sd_mapping_forward(c, net, features);
    sd_tensor *src = sd_mapping_value_input(c, o, c_src);
    sd_tensor *tgt = target_mapped ? sd_mapping_value_input(c, o, c_tgt) : c_tgt;
    return sd_concat0(c, src, tgt);
}

static sd_status upload_mapping(sd_ctx *c, sd_mapping_net *net, sd_tensor *const host[SD_MAP_N_PARAMS]) {
    for (int p = 0; p < SD_MAP_N_PARAMS; p++)
        if (!sd_ctx_check(c, c->be->upload(net->params[p]->data, host[p]->data, sd_nbytes(host[p]))))
            return c->status;
    return SD_OK;
}

sd_status sd_edit(sd_ctx *c, const sd_model *m, const sd_inversion *inv, const sd_edit_options *o,
                  sd_edit_result *out) {
    memset(out, 0, sizeof *out);
    if (!o->target || !o->target[0]) return sd_fail(SD_ERR_ARG, "--target is empty: give the edited prompt");
    const float taus[4] = {o->tau_v, o->tau_c, o->tau_s, o->tau_u};
    const char *tau_names[4] = {"--tau-v", "--tau-c", "--tau-s", "--tau-u"};
    for (int k = 0; k < 4; k++)
        if (!(taus[k] >= 0.0f && taus[k] <= 1.0f))
            return sd_fail(SD_ERR_ARG, "%s %g: must lie in [0, 1]", tau_names[k], taus[k]);
    if (inv->method == SD_INVERT_STYLEDIFFUSION && (!inv->mapping || !inv->image_features))
        return sd_fail(SD_ERR_ARG, "the stylediffusion inversion holds no mapping networks (was it cut short?)");
    const int N = inv->n_steps;
    const double t0 = sd_now();

    /* the controller: prompts, windows, LocalBlend words, equalizer */
    const char *prompts[2] = {inv->prompt, o->target};
    sd_p2p_config cfg = sd_p2p_config_default();
    cfg.edit = o->edit;
    cfg.cross.default_window = sd_p2p_window_until(o->tau_c);
    cfg.self_window = sd_p2p_window_until(o->tau_s);
    cfg.uncond_window = sd_p2p_window_until(o->tau_u);
    sd_p2p_word_list blend[2] = {{o->blend_source, o->n_blend_source}, {o->blend_target, o->n_blend_target}};
    if (o->n_blend_source || o->n_blend_target) {
        cfg.blend_words = blend;
        cfg.n_blend_lists = 2;
    }
    cfg.eq_words = o->reweight_words;
    cfg.eq_values = o->reweight_values;
    cfg.n_eq_words = o->n_reweight;
    sd_p2p *p2p = NULL;
    SD_TRY(sd_p2p_create(m->tokenizer, prompts, 2, N, inv->z_T->shape[2], inv->z_T->shape[3], &cfg, &p2p));

    sd_ddim sched;
    sd_status st = sd_ddim_init(&sched, N);
    sd_tensor *c_src = sd_keep(c, sd_encode_prompt(c, m, inv->prompt));
    sd_tensor *c_tgt = sd_keep(c, sd_encode_prompt(c, m, o->target));
    sd_tensor *cond = sd_keep(c, sd_concat0(c, c_src, c_tgt));
    sd_tensor *empty = sd_keep(c, sd_encode_prompt(c, m, ""));
    sd_tensor *z_T = sd_upload(c, inv->z_T);
    sd_tensor *z = sd_keep(c, sd_concat0(c, z_T, z_T));
    sd_tensor *features = inv->image_features ? sd_keep(c, sd_upload(c, inv->image_features)) : NULL;
    sd_mapping_net net = {{0}};
    value_rows rows = {NULL};
    sd_unet_prefix *prefix = calloc(1, sizeof *prefix); /* a timestep's, shared by its two passes */
    if (!prefix && !st) st = sd_fail(SD_ERR_OOM, "out of memory");
    if (!st && inv->method == SD_INVERT_STYLEDIFFUSION) {
        st = sd_mapping_net_from_host(c, &net, inv->mapping[0]);
        sd_p2p_set_value_input(p2p, value_for_site, &rows);
    }
    if (!st) st = sd_ctx_status(c);

    sd_progress bar;
    sd_progress_begin(&bar, "editing", N);
    for (int i = 0; i < N && st == SD_OK; i++) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const int t = sched.timesteps[i];
        sd_tensor *uncond_row = empty;
        if (inv->method == SD_INVERT_NULLTEXT) uncond_row = sd_upload(c, inv->null_embeddings[i]);
        if (inv->method == SD_INVERT_NPI) uncond_row = sd_upload(c, inv->null_embeddings[0]);
        sd_tensor *uncond = sd_concat0(c, uncond_row, uncond_row);

        c->hook = sd_p2p_hook(p2p);
        int have_prefix = 0;
        st = sd_p2p_begin_pass(p2p, i, SD_BRANCH_UNCOND);
        sd_tensor *eps_u = st ? NULL : pass_forward(c, m, z, t, uncond, prefix, &have_prefix);
        if (!st && inv->method == SD_INVERT_STYLEDIFFUSION) {
            st = upload_mapping(c, &net, inv->mapping[i]);
            rows.value = stylediffusion_rows(c, &net, features, c_src, c_tgt, (float)i < o->tau_v * (float)N);
        }
        if (!st) st = sd_p2p_begin_pass(p2p, i, SD_BRANCH_COND);
        sd_tensor *eps_c = st ? NULL : pass_forward(c, m, z, t, cond, prefix, &have_prefix);
        rows.value = NULL;
        c->hook = NULL;
        sd_tensor *next = sd_ddim_prev_step(c, &sched, sd_cfg_combine(c, eps_u, eps_c, inv->guidance), t, z);
        if (!st && next) next = sd_p2p_end_step(p2p, c, next); /* LocalBlend */
        if (!st) sd_assign(c, z, next);
        if (!st) st = sd_ctx_status(c);
        sd_arena_reset(c->arena, mark);
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    c->hook = NULL;
    if (!st) st = sd_check_fp16_result(c, z, "editing", N);
    if (!st && o->heatmap_dir) st = sd_p2p_save_heatmaps(p2p, c, m->tokenizer, o->heatmap_dir, o->heatmap_background);
    if (!st) {
        out->latents = sd_download_new(c, z);
        st = sd_ctx_status(c);
    }
    out->seconds = sd_now() - t0;
    free(prefix);
    sd_mapping_net_free(&net);
    sd_p2p_free(p2p);
    return st;
}
