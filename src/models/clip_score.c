/* clip_score.c: CLIPScore (stylediffusion.md §6.3) over a transformers CLIPModel folder.
 *
 * The towers are the project's CLIP models (clip_vision.c with its visual_projection and the
 * CLIPProcessor preprocessing; clip_text.c with its pooled row and text_projection): this file only
 * loads the pair, tokenises as torchmetrics does and turns the two feature vectors into a score.
 * The reference is torchmetrics 1.9's functional/multimodal/clip_score.py (_get_features,
 * _clip_score_update, clip_score), checked by tests/oracle/gen_eval_models.py. */
#include "sd/eval_models.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ================================================================================================
 * Loading
 * ============================================================================================= */

sd_status sd_clip_score_load(const char *dir, const char *tokenizer_dir, sd_clip_score_model *m) {
    memset(m, 0, sizeof *m);
    /* config.json, model.safetensors and their error messages: the vision loader's (it also takes
     * visual_projection.weight from a CLIPModel file). */
    SD_TRY(sd_clip_vision_load(dir, &m->vision));

    char config_path[1024], weights_path[1024];
    sd_path_join(config_path, sizeof config_path, dir, "config.json");
    sd_path_join(weights_path, sizeof weights_path, dir, "model.safetensors");
    sd_clip_text_config text_cfg;
    sd_status st = sd_clip_text_config_load(config_path, &text_cfg);
    if (st == SD_OK) {
        m->text_weights = sd_weights_new(weights_path);
        st = m->text_weights ? sd_clip_text_weights_load(m->text_weights, weights_path)
                             : sd_fail(SD_ERR_OOM, "out of host memory opening %s", weights_path);
    }
    if (st == SD_OK) st = sd_clip_text_bind(&m->text, &text_cfg, m->text_weights);

    /* Both projections are required here (they are optional for the towers alone) and must map to
     * the same space. */
    if (st == SD_OK && !m->vision.visual_projection.weight)
        st = sd_fail(SD_ERR_MISSING, "%s: missing tensor 'visual_projection.weight' (CLIPScore needs a full "
                     "CLIPModel checkpoint)", weights_path);
    if (st == SD_OK && !m->text.text_projection.weight)
        st = sd_fail(SD_ERR_MISSING, "%s: missing tensor 'text_projection.weight' (CLIPScore needs a full "
                     "CLIPModel checkpoint)", weights_path);
    if (st == SD_OK && m->vision.visual_projection.weight->shape[0] != m->text.text_projection.weight->shape[0])
        st = sd_fail(SD_ERR_SHAPE, "%s: 'visual_projection.weight' projects to %lld but 'text_projection.weight' "
                     "to %lld", weights_path, (long long)m->vision.visual_projection.weight->shape[0],
                     (long long)m->text.text_projection.weight->shape[0]);
    if (st == SD_OK) {
        m->projection_dim = (int)m->vision.visual_projection.weight->shape[0];
        st = sd_tokenizer_load(tokenizer_dir ? tokenizer_dir : dir, &m->tokenizer);
    }
    if (st != SD_OK) sd_clip_score_release(m);
    return st;
}

void sd_clip_score_release(sd_clip_score_model *m) {
    sd_clip_vision_release(&m->vision);
    sd_clip_text_release(&m->text);
    sd_weights_free(m->text_weights);
    sd_tokenizer_free(m->tokenizer);
    memset(m, 0, sizeof *m);
}

/* ================================================================================================
 * Features
 * ============================================================================================= */

sd_status sd_clip_score_tokenize(const sd_clip_score_model *m, const char *text, int *ids, int cap, int *n) {
    if (!text) return sd_fail(SD_ERR_ARG, "CLIPScore: no caption given");
    const int limit = m->text.cfg.max_position_embeddings;
    int n_tokens = 0;
    SD_TRY(sd_tokenize(m->tokenizer, text, NULL, 0, &n_tokens));
    int *tokens = malloc((size_t)(n_tokens > 0 ? n_tokens : 1) * sizeof(int));
    if (!tokens) return sd_fail(SD_ERR_OOM, "CLIPScore: out of host memory tokenizing a caption");
    sd_status st = sd_tokenize(m->tokenizer, text, tokens, n_tokens, &n_tokens);
    if (st != SD_OK) {
        free(tokens);
        return st;
    }
    /* [BOS, tokens..., EOS], then torchmetrics' input_ids[..., :max_position_embeddings] */
    int count = n_tokens + 2;
    if (count > limit) count = limit;
    if (count > cap) {
        free(tokens);
        return sd_fail(SD_ERR_ARG, "CLIPScore: %d ids do not fit a buffer of %d", count, cap);
    }
    for (int i = 0; i < count; i++)
        ids[i] = i == 0 ? sd_tokenizer_bos(m->tokenizer)
                        : (i <= n_tokens ? tokens[i - 1] : sd_tokenizer_eos(m->tokenizer));
    if (n_tokens + 2 > limit)
        sd_warn("CLIPScore: a caption of %d tokens is cut to %d ids, as torchmetrics cuts it (the EOS is lost)",
                n_tokens, limit);
    free(tokens);
    *n = count;
    return SD_OK;
}

sd_tensor *sd_clip_score_image_features(sd_ctx *c, const sd_clip_score_model *m, const sd_image *image,
                                        const char *what) {
    sd_tensor *pixels = sd_clip_vision_processor(c, &m->vision.cfg, image, what); /* [1, 3, S, S] */
    return sd_clip_vision_image_features(c, &m->vision, pixels);                  /* [1, projection] */
}

sd_tensor *sd_clip_score_text_features(sd_ctx *c, const sd_clip_score_model *m, const char *text) {
    if (c->status != SD_OK) return NULL;
    int ids[1024], n = 0;
    sd_status st = sd_clip_score_tokenize(m, text, ids, (int)(sizeof ids / sizeof ids[0]), &n);
    if (st != SD_OK) {
        sd_ctx_check(c, st);
        return NULL;
    }
    int32_t ids32[1024];
    for (int i = 0; i < n; i++) ids32[i] = (int32_t)ids[i];
    const int64_t shape[2] = {1, n};
    sd_tensor host_ids = sd_tensor_wrap(ids32, SD_I32, 2, shape); /* ids stay on the host */
    return sd_clip_text_features(c, &m->text, &host_ids);        /* [1, projection] */
}

/* ================================================================================================
 * Scores
 * ============================================================================================= */

/* cos of two [1, P] feature rows: each divided by its L2 norm, then the dot product. The vectors are
 * a few hundred floats, so they are read back and combined on the host in double. */
static sd_status cosine_of(sd_ctx *c, sd_tensor *a, sd_tensor *b, double *cosine) {
    if (c->status != SD_OK) return c->status;
    if (sd_numel(a) != sd_numel(b))
        return sd_fail(SD_ERR_SHAPE, "CLIPScore: image features of %lld values, text features of %lld",
                       (long long)sd_numel(a), (long long)sd_numel(b));
    sd_tensor *ha = sd_download_new(c, a), *hb = sd_download_new(c, b);
    if (!ha || !hb) {
        sd_tensor_free(ha);
        sd_tensor_free(hb);
        return sd_fail(SD_ERR_OOM, "CLIPScore: cannot read the features back");
    }
    double aa = 0, bb = 0, ab = 0;
    const float *x = sd_f32(ha), *y = sd_f32(hb);
    for (int64_t i = 0; i < sd_numel(ha); i++) {
        aa += (double)x[i] * x[i];
        bb += (double)y[i] * y[i];
        ab += (double)x[i] * y[i];
    }
    sd_tensor_free(ha);
    sd_tensor_free(hb);
    *cosine = ab / (sqrt(aa) * sqrt(bb));
    return SD_OK;
}

sd_status sd_clip_score_cosine(sd_ctx *c, const sd_clip_score_model *m, const sd_image *image,
                               const char *image_name, const char *text, double *cosine) {
    if (c->status != SD_OK) return c->status;
    sd_arena_mark mark = sd_arena_get_mark(c->arena);
    sd_tensor *img = sd_clip_score_image_features(c, m, image, image_name);
    sd_tensor *txt = sd_clip_score_text_features(c, m, text);
    sd_status st = c->status != SD_OK ? c->status : cosine_of(c, img, txt, cosine);
    sd_arena_reset(c->arena, mark);
    return st;
}

sd_status sd_clip_score_cosine_file(sd_ctx *c, const sd_clip_score_model *m, const char *image_path,
                                    const char *text, double *cosine) {
    sd_image image = {0};
    SD_TRY(sd_image_load(image_path, &image)); /* names the path */
    sd_status st = sd_clip_score_cosine(c, m, &image, image_path, text, cosine);
    sd_image_free(&image);
    return st;
}

double sd_clip_score_pair(double cosine, double weight) { return weight * fmax(cosine, 0.0); }

double sd_clip_score_mean_torchmetrics(const double *cosines, int n) {
    if (n < 1) return NAN;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += SD_CLIP_SCORE_WEIGHT_TORCHMETRICS * cosines[i];
    return fmax(sum / n, 0.0);
}

double sd_clip_score_mean_hessel(const double *cosines, int n, double weight) {
    if (n < 1) return NAN;
    double sum = 0;
    for (int i = 0; i < n; i++) sum += sd_clip_score_pair(cosines[i], weight);
    return sum / n;
}
