/* model_files.c: the one front door for Stable Diffusion checkpoints.
 *
 *   a diffusers folder:  model_index.json, {unet,vae,text_encoder}/config.json + safetensors weights,
 *                        tokenizer/{vocab.json,merges.txt}
 *   a single file:       the original SD v1.x layout (model.diffusion_model.*, first_stage_model.*,
 *                        cond_stage_model.transformer.*) in one .safetensors
 *
 * Whatever the source, the result is three weight stores under diffusers names, all F32, plus the
 * configurations and the tokenizer folder. Names are normalised here so that the model code binds
 * one spelling (see io.h). */
#include "sd/io.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

#define NAME_CAP 256

static int ends_with(const char *s, const char *suffix) {
    size_t n = strlen(s), m = strlen(suffix);
    return n >= m && strcmp(s + n - m, suffix) == 0;
}

static int starts_with(const char *s, const char *prefix) { return strncmp(s, prefix, strlen(prefix)) == 0; }

/* Copies src into dst[cap]; 0 (and dst left empty) when it does not fit. */
static int copy_string(char *dst, size_t cap, const char *src) {
    size_t n = strlen(src);
    if (n >= cap) {
        dst[0] = '\0';
        return 0;
    }
    memcpy(dst, src, n + 1);
    return 1;
}

static int is_float_dtype(sd_dtype t) { return t == SD_F32 || t == SD_F16 || t == SD_BF16 || t == SD_F64; }

void sd_model_files_close(sd_model_files *m) {
    if (!m) return;
    sd_weights_free(m->unet);
    sd_weights_free(m->vae);
    sd_weights_free(m->text);
    m->unet = m->vae = m->text = NULL;
}

/* diffusers stores the VAE mid attention projections as linears (C, C); LDM files and some old
 * conversions keep the 1x1 conv shape (C, C, 1, 1). Same numbers, so only the header changes. */
static int is_vae_attention_projection(const char *name) {
    const char *attention = strstr(name, "mid_block.attentions.0.");
    if (!attention) return 0;
    const char *leaf = attention + strlen("mid_block.attentions.0.");
    return strcmp(leaf, "to_q.weight") == 0 || strcmp(leaf, "to_k.weight") == 0 ||
           strcmp(leaf, "to_v.weight") == 0 || strcmp(leaf, "to_out.0.weight") == 0;
}

static sd_status squeeze_1x1(sd_tensor *t, const char *file, const char *name) {
    if (t->ndim == 2) return SD_OK;
    if (t->ndim != 4 || t->shape[2] != 1 || t->shape[3] != 1) {
        char buf[128];
        return sd_fail(SD_ERR_SHAPE, "%s: tensor '%s' has shape %s; expected a 1x1 conv (C, C, 1, 1) or a "
                       "linear (C, C)", file, name, sd_shape_str(t->ndim, t->shape, buf, sizeof buf));
    }
    t->ndim = 2;
    t->shape[2] = t->shape[3] = 0;
    return SD_OK;
}

static int tokenizer_ok(const char *dir) {
    char path[2048];
    return dir && dir[0] && strlen(dir) < 1000 && sd_file_exists(sd_path_join(path, sizeof path, dir, "vocab.json")) &&
           sd_file_exists(sd_path_join(path, sizeof path, dir, "merges.txt"));
}

/* ------------------------------------------------------------------------------------------------
 * diffusers folders
 * --------------------------------------------------------------------------------------------- */

typedef enum { FOLDER_UNET, FOLDER_VAE, FOLDER_TEXT } folder_part;

/* Loads every tensor of one safetensors file of a diffusers part, normalising names. */
static sd_status load_part_file(sd_weights *w, const char *file, folder_part part) {
    sd_safetensors st;
    SD_TRY(sd_safetensors_open(file, &st));
    sd_status status = SD_OK;
    int skipped = 0;
    for (int i = 0; i < st.n_entries && status == SD_OK; i++) {
        const sd_st_entry *e = &st.entries[i];
        char name[NAME_CAP];
        if (snprintf(name, sizeof name, "%s", e->name) >= (int)sizeof name) {
            status = sd_fail(SD_ERR_FORMAT, "%s: tensor name '%.64s...' is too long", file, e->name);
            break;
        }
        if (part == FOLDER_TEXT) {
            /* The CLIP position_ids buffer (int64) older transformers saved: not a weight. */
            if (ends_with(name, "embeddings.position_ids")) {
                skipped++;
                continue;
            }
            /* transformers >= 5.6 saves CLIPTextModel without its text_model level. */
            if (!starts_with(name, "text_model.") &&
                snprintf(name, sizeof name, "text_model.%s", e->name) >= (int)sizeof name) {
                status = sd_fail(SD_ERR_FORMAT, "%s: tensor name '%.64s...' is too long", file, e->name);
                break;
            }
        }
        if (part == FOLDER_VAE && sd_vae_modern_name(e->name, name, sizeof name) < 0) {
            status = sd_fail(SD_ERR_FORMAT, "%s: tensor name '%.64s...' is too long", file, e->name);
            break;
        }
        if (!is_float_dtype(e->dtype)) {
            status = sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' has dtype %s; model weights must be floating "
                             "point", file, e->name, sd_dtype_name(e->dtype));
            break;
        }
        sd_tensor *t;
        status = sd_safetensors_load_f32(&st, e, &t);
        if (status != SD_OK) break;
        if (part == FOLDER_VAE && is_vae_attention_projection(name)) {
            status = squeeze_1x1(t, file, e->name);
            if (status != SD_OK) {
                sd_tensor_free(t);
                break;
            }
        }
        status = sd_weights_add(w, name, t);
        if (status != SD_OK) sd_fail_context(status, "%s: ", file);
    }
    if (skipped) sd_debug("%s: skipped %d buffer(s) that are not weights", file, skipped);
    sd_safetensors_close(&st);
    return status;
}

/* A sharded checkpoint: <weights>.index.json maps each tensor to one of several files. */
static sd_status load_sharded(sd_weights *w, const char *dir, const char *index_path, folder_part part) {
    char *text;
    SD_TRY(sd_read_file(index_path, &text, NULL));
    cJSON *root = cJSON_Parse(text);
    free(text);
    const cJSON *map = root ? cJSON_GetObjectItemCaseSensitive(root, "weight_map") : NULL;
    if (!cJSON_IsObject(map)) {
        cJSON_Delete(root);
        return sd_fail(SD_ERR_FORMAT, "%s: not a sharded-weights index (expected a \"weight_map\" object)",
                       index_path);
    }
    /* Each shard once, in first-mention order. */
    const char *shards[256];
    int n_shards = 0;
    sd_status status = SD_OK;
    const cJSON *item;
    cJSON_ArrayForEach(item, map) {
        if (!cJSON_IsString(item) || strchr(item->valuestring, '/') || !ends_with(item->valuestring, ".safetensors")) {
            status = sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' maps to an invalid shard file name", index_path,
                             item->string);
            break;
        }
        int seen = 0;
        for (int i = 0; i < n_shards && !seen; i++) seen = strcmp(shards[i], item->valuestring) == 0;
        if (seen) continue;
        if (n_shards == (int)(sizeof shards / sizeof shards[0])) {
            status = sd_fail(SD_ERR_UNSUPPORTED, "%s: more than %d shards", index_path, n_shards);
            break;
        }
        shards[n_shards++] = item->valuestring;
    }
    for (int i = 0; i < n_shards && status == SD_OK; i++) {
        char path[2048];
        status = load_part_file(w, sd_path_join(path, sizeof path, dir, shards[i]), part);
    }
    cJSON_Delete(root);
    return status;
}

/* Finds and loads the weights of one part folder (unet/, vae/ or text_encoder/). */
static sd_status load_part_weights(const char *dir, folder_part part, sd_weights **out) {
    /* diffusers' name first for diffusers models, transformers' first for the text encoder. */
    static const char *const model_names[] = {"diffusion_pytorch_model", "model"};
    static const char *const text_names[] = {"model", "diffusion_pytorch_model"};
    const char *const *bases = part == FOLDER_TEXT ? text_names : model_names;
    static const char *const variants[] = {"", ".fp16"};
    char path[2048], file[128];
    *out = NULL;

    for (int v = 0; v < 2; v++)
        for (int b = 0; b < 2; b++) {
            snprintf(file, sizeof file, "%s%s.safetensors", bases[b], variants[v]);
            sd_path_join(path, sizeof path, dir, file);
            int single = sd_file_exists(path);
            char index[2100];
            snprintf(index, sizeof index, "%s.index.json", path);
            if (!single && !sd_file_exists(index)) continue;
            sd_weights *w = sd_weights_new(single ? path : index);
            if (!w) return SD_ERR_OOM;
            sd_status status = single ? load_part_file(w, path, part) : load_sharded(w, dir, index, part);
            if (status != SD_OK) {
                sd_weights_free(w);
                return status;
            }
            *out = w;
            return SD_OK;
        }

    /* No safetensors: say what is there instead. */
    static const char *const pickles[] = {"diffusion_pytorch_model.bin", "pytorch_model.bin",
                                          "diffusion_pytorch_model.fp16.bin", "pytorch_model.fp16.bin",
                                          "model.bin"};
    for (size_t i = 0; i < sizeof pickles / sizeof pickles[0]; i++) {
        sd_path_join(path, sizeof path, dir, pickles[i]);
        if (!sd_file_exists(path)) continue;
        char target[2048];
        snprintf(target, sizeof target, "%.*s.safetensors", (int)(strlen(path) - strlen(".bin")), path);
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: only PyTorch pickle weights (%s), which stylediff does not load (pickles can run "
                       "code); convert to safetensors: python -c \"import torch, safetensors.torch as st; "
                       "st.save_file(torch.load('%s', map_location='cpu'), '%s')\"",
                       dir, pickles[i], path, target);
    }
    return sd_fail(SD_ERR_MISSING, "%s: no weights (expected %s.safetensors)", dir, bases[0]);
}

/* Checks that <root>/<part_name>/ and its config.json exist; the config path goes to config_path. */
static sd_status find_part(const char *root, const char *part_name, char *dir, size_t dir_cap, char *config_path,
                           size_t config_cap) {
    sd_path_join(dir, dir_cap, root, part_name);
    if (!sd_dir_exists(dir))
        return sd_fail(SD_ERR_MISSING, "%s: missing (a diffusers Stable Diffusion folder has unet/, vae/, "
                       "text_encoder/ and tokenizer/)", dir);
    sd_path_join(config_path, config_cap, dir, "config.json");
    if (!sd_file_exists(config_path)) return sd_fail(SD_ERR_MISSING, "%s: missing", config_path);
    return SD_OK;
}

static sd_status open_folder(const char *dir, const char *default_tokenizer_dir, sd_model_files *m) {
    char path[2048];
    sd_path_join(path, sizeof path, dir, "model_index.json");
    if (!sd_file_exists(path))
        return sd_fail(SD_ERR_MISSING, "%s: not a diffusers model folder (no model_index.json)", dir);
    char *text;
    SD_TRY(sd_read_file(path, &text, NULL));
    const char *end = NULL;
    cJSON *index = cJSON_ParseWithOpts(text, &end, 0);
    if (!index || !cJSON_IsObject(index)) {
        size_t at = end && end >= text ? (size_t)(end - text) : 0;
        cJSON_Delete(index);
        free(text);
        return sd_fail(SD_ERR_FORMAT, "%s: malformed JSON (at byte %zu)", path, at);
    }
    const cJSON *pipeline = cJSON_GetObjectItemCaseSensitive(index, "_class_name");
    if (cJSON_IsString(pipeline) && !strstr(pipeline->valuestring, "StableDiffusion"))
        sd_warn("%s: pipeline class is %s; stylediff expects a Stable Diffusion v1.x pipeline", path,
                pipeline->valuestring);
    cJSON_Delete(index);
    free(text);

    /* Each part's config before its weights: a bad config fails in microseconds, not after
     * gigabytes have been converted. */
    char part_dir[2048], config[2048];
    SD_TRY(find_part(dir, "unet", part_dir, sizeof part_dir, config, sizeof config));
    SD_TRY(sd_unet_config_load(config, &m->unet_config));
    SD_TRY(load_part_weights(part_dir, FOLDER_UNET, &m->unet));
    SD_TRY(find_part(dir, "vae", part_dir, sizeof part_dir, config, sizeof config));
    SD_TRY(sd_vae_config_load(config, &m->vae_config));
    SD_TRY(load_part_weights(part_dir, FOLDER_VAE, &m->vae));
    SD_TRY(find_part(dir, "text_encoder", part_dir, sizeof part_dir, config, sizeof config));
    SD_TRY(sd_clip_text_config_load(config, &m->text_config));
    SD_TRY(load_part_weights(part_dir, FOLDER_TEXT, &m->text));

    sd_path_join(path, sizeof path, dir, "tokenizer");
    if (tokenizer_ok(path)) {
        copy_string(m->tokenizer_dir, sizeof m->tokenizer_dir, path);
    } else if (tokenizer_ok(default_tokenizer_dir)) {
        sd_warn("%s: no tokenizer (vocab.json + merges.txt); using %s", dir, default_tokenizer_dir);
        copy_string(m->tokenizer_dir, sizeof m->tokenizer_dir, default_tokenizer_dir);
    } else {
        return sd_fail(SD_ERR_MISSING, "%s: no tokenizer (expected vocab.json and merges.txt)", path);
    }
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Single files
 * --------------------------------------------------------------------------------------------- */

static sd_status open_single(const char *path, const sd_unet_config *unet, const sd_vae_config *vae,
                             const sd_clip_text_config *text, const char *tokenizer_dir, sd_model_files *m) {
    m->single_file = 1;
    if (unet) m->unet_config = *unet; else sd_unet_config_sd15(&m->unet_config);
    if (vae) m->vae_config = *vae; else sd_vae_config_sd15(&m->vae_config);
    if (text) m->text_config = *text; else sd_clip_text_config_sd15(&m->text_config);
    if (!tokenizer_ok(tokenizer_dir))
        return sd_fail(SD_ERR_MISSING, "%s: a single-file checkpoint carries no tokenizer, and the tokenizer "
                       "folder '%s' has no vocab.json + merges.txt", path, tokenizer_dir ? tokenizer_dir : "");
    copy_string(m->tokenizer_dir, sizeof m->tokenizer_dir, tokenizer_dir);

    sd_safetensors st;
    SD_TRY(sd_safetensors_open(path, &st));
    sd_status status = SD_OK;
    int has_unet = 0;
    for (int i = 0; i < st.n_entries && status == SD_OK; i++) {
        const char *name = st.entries[i].name;
        has_unet |= starts_with(name, "model.diffusion_model.");
        if (starts_with(name, "cond_stage_model.model."))
            status = sd_fail(SD_ERR_UNSUPPORTED, "%s: has an OpenCLIP text encoder ('%s'): an SD 2.x "
                             "checkpoint; stylediff runs SD v1.x", path, name);
        else if (starts_with(name, "conditioner.embedders."))
            status = sd_fail(SD_ERR_UNSUPPORTED, "%s: has SDXL conditioners ('%s'); stylediff runs SD v1.x",
                             path, name);
    }
    if (status == SD_OK && !has_unet)
        status = sd_fail(SD_ERR_FORMAT, "%s: no 'model.diffusion_model.*' tensors: not an original SD v1.x "
                         "single-file checkpoint (for a diffusers model, pass its folder)", path);

    if (status == SD_OK) {
        m->unet = sd_weights_new(path);
        m->vae = sd_weights_new(path);
        m->text = sd_weights_new(path);
        if (!m->unet || !m->vae || !m->text) status = SD_ERR_OOM;
    }
    int skipped = 0;
    for (int i = 0; i < st.n_entries && status == SD_OK; i++) {
        const sd_st_entry *e = &st.entries[i];
        char name[NAME_CAP];
        int reshape = 0;
        sd_model_part part = sd_ldm_to_diffusers_name(&m->unet_config, &m->vae_config, e->name, name,
                                                      sizeof name, &reshape);
        if (part == SD_PART_NONE) {
            skipped++; /* EMA copies, schedule buffers, position_ids */
            continue;
        }
        sd_tensor *t;
        status = sd_safetensors_load_f32(&st, e, &t);
        if (status != SD_OK) break;
        if (reshape) {
            status = squeeze_1x1(t, path, e->name);
            if (status != SD_OK) {
                sd_tensor_free(t);
                break;
            }
        }
        sd_weights *w = part == SD_PART_UNET ? m->unet : part == SD_PART_VAE ? m->vae : m->text;
        status = sd_weights_add(w, name, t);
        if (status == SD_ERR_FORMAT) /* two spellings of one tensor, e.g. with and without text_model. */
            status = sd_fail(SD_ERR_FORMAT, "%s: tensor '%s' maps to '%s', which another tensor of the file "
                             "already provides", path, e->name, name);
    }
    sd_safetensors_close(&st);
    if (status != SD_OK) return status;
    sd_debug("%s: %d unet, %d vae, %d text tensors; skipped %d that belong to no part (EMA, schedule)",
             path, sd_weights_count(m->unet), sd_weights_count(m->vae), sd_weights_count(m->text), skipped);
    if (sd_weights_count(m->vae) == 0)
        return sd_fail(SD_ERR_MISSING, "%s: no VAE tensors (first_stage_model.*)", path);
    if (sd_weights_count(m->text) == 0)
        return sd_fail(SD_ERR_MISSING, "%s: no text encoder tensors (cond_stage_model.transformer.*)", path);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Entry points
 * --------------------------------------------------------------------------------------------- */

static sd_status begin(const char *path, sd_model_files *out) {
    memset(out, 0, sizeof *out);
    if (!path || !path[0]) return sd_fail(SD_ERR_ARG, "no model path given");
    /* Paths are joined into fixed buffers below; refuse rather than truncate. */
    if (!copy_string(out->source, sizeof out->source, path) || strlen(path) > 900)
        return sd_fail(SD_ERR_ARG, "%.200s...: path too long", path);
    return SD_OK;
}

static sd_status finish(sd_status status, sd_model_files *out) {
    if (status != SD_OK) sd_model_files_close(out);
    return status;
}

sd_status sd_model_files_open_single(const char *path, const sd_unet_config *unet, const sd_vae_config *vae,
                                     const sd_clip_text_config *text, const char *tokenizer_dir,
                                     sd_model_files *out) {
    SD_TRY(begin(path, out));
    return finish(open_single(path, unet, vae, text, tokenizer_dir, out), out);
}

sd_status sd_model_files_open(const char *path, const char *default_tokenizer_dir, sd_model_files *out) {
    SD_TRY(begin(path, out));
    if (sd_dir_exists(path)) return finish(open_folder(path, default_tokenizer_dir, out), out);
    if (!sd_file_exists(path))
        return sd_fail(SD_ERR_MISSING, "%s: no such file or folder (expected a diffusers model folder or an "
                       "SD v1.x .safetensors file)", path);
    if (ends_with(path, ".safetensors"))
        return finish(open_single(path, NULL, NULL, NULL, default_tokenizer_dir, out), out);
    if (ends_with(path, ".ckpt") || ends_with(path, ".pt") || ends_with(path, ".pth") || ends_with(path, ".bin"))
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: a PyTorch pickle, which stylediff does not load (pickles can run code); convert "
                       "to safetensors: python -c \"import torch, safetensors.torch as st; "
                       "sd = torch.load('%s', map_location='cpu'); "
                       "st.save_file(sd.get('state_dict', sd), '%s.safetensors')\"",
                       path, path, path);
    return sd_fail(SD_ERR_ARG, "%s: not a diffusers model folder or a .safetensors file", path);
}
