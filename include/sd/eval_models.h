/* eval_models.h: the two model-based editing-quality metrics of stylediffusion.md §6, each exact to
 * a stated PyTorch reference and built from the project's CLIP / ViT code:
 *
 *   - CLIPScore (§6.3) over a transformers CLIPModel folder, in both common definitions:
 *       torchmetrics' CLIPScore (default openai/clip-vit-large-patch14): 100 · max(cos, 0);
 *       Hessel et al. 2021 (ViT-B/32): w · max(cos, 0) with w = 2.5;
 *     cos = cos(get_image_features(CLIPProcessor(image)), get_text_features(tokens)).
 *   - Structure-dist (§6.2): MSE between the DINO ViT-B/8 key self-similarities of two images
 *     (Tumanyan et al.'s Splice loss), over a transformers ViTModel folder (facebook/dino-vitb8).
 *
 * Which CLIP model and definition the paper used is unverified (§6.3, §10): the weight is a
 * parameter and the model is whatever folder is given. */
#ifndef SD_EVAL_MODELS_H
#define SD_EVAL_MODELS_H

#include "sd/clip_vision.h"
#include "sd/image.h"
#include "sd/io.h"
#include "sd/models.h"
#include "sd/nn.h"
#include "sd/text.h"

#ifdef __cplusplus
extern "C" {
#endif

/* ================================================================================================
 * CLIPScore
 * ============================================================================================= */

#define SD_CLIP_SCORE_WEIGHT_TORCHMETRICS 100.0 /* torchmetrics.multimodal.CLIPScore */
#define SD_CLIP_SCORE_WEIGHT_HESSEL 2.5         /* Hessel et al. 2021, with ViT-B/32 */

typedef struct sd_clip_score_model {
    sd_clip_vision vision;  /* vision tower + visual_projection; owns its weights */
    sd_clip_text text;      /* text tower + text_projection */
    sd_weights *text_weights;
    sd_tokenizer *tokenizer;
    int projection_dim;
} sd_clip_score_model;

/* Loads a transformers CLIPModel folder: config.json (text_config + vision_config),
 * model.safetensors ("vision_model.*", "text_model.*", "visual_projection.weight",
 * "text_projection.weight"; "logit_scale" is not used) and the tokenizer's vocab.json + merges.txt
 * from `tokenizer_dir` (NULL: `dir` itself, where the openai folders keep them). Errors name the
 * file and the tensor or key (a missing projection: "missing tensor 'text_projection.weight'"). */
sd_status sd_clip_score_load(const char *dir, const char *tokenizer_dir, sd_clip_score_model *m);
void sd_clip_score_release(sd_clip_score_model *m);

/* The ids torchmetrics feeds CLIPModel.get_text_features for one caption: CLIPProcessor(text,
 * padding=True) gives BOS, every token, EOS, without truncation; torchmetrics then cuts the ids to
 * max_position_embeddings (77), so a caption over 75 tokens loses its EOS (and the pooled row
 * follows transformers' rule, sd_clip_text_pooled). Writes at most `cap` ids; *n gets the count.
 * The tokenizer is the project's (transformers 4.25's slow CLIPTokenizer with ftfy); transformers
 * 5's fast tokenizer agrees on ordinary text (it has no ftfy repair). */
sd_status sd_clip_score_tokenize(const sd_clip_score_model *m, const char *text, int *ids, int cap, int *n);

/* Image features [1, projection_dim] of an 8-bit image (sd_clip_vision_processor, then
 * get_image_features); `what` names the image in messages. Text features [1, projection_dim] of a
 * caption (sd_clip_score_tokenize, then get_text_features). */
sd_tensor *sd_clip_score_image_features(sd_ctx *c, const sd_clip_score_model *m, const sd_image *image,
                                        const char *what);
sd_tensor *sd_clip_score_text_features(sd_ctx *c, const sd_clip_score_model *m, const char *text);

/* cos(E_img, E_txt) of one image and caption, as torchmetrics computes it (each feature divided
 * by its L2 norm, then the dot product; here in double from the float features, ~1e-7 from
 * torch's float32). */
sd_status sd_clip_score_cosine(sd_ctx *c, const sd_clip_score_model *m, const sd_image *image,
                               const char *image_name, const char *text, double *cosine);
/* The same for an image file (PNG or JPEG; an unreadable file fails naming it). */
sd_status sd_clip_score_cosine_file(sd_ctx *c, const sd_clip_score_model *m, const char *image_path,
                                    const char *text, double *cosine);

/* One pair's score: weight · max(cos, 0) (weight SD_CLIP_SCORE_WEIGHT_TORCHMETRICS or _HESSEL). */
double sd_clip_score_pair(double cosine, double weight);
/* Over a set of n pairs the two definitions aggregate differently:
 *   torchmetrics (CLIPScore.compute, functional clip_score): max(100 · mean(cos), 0), the clamp
 *     applied once to the mean;
 *   Hessel et al.: mean(w · max(cos_i, 0)), each pair clamped.
 * They agree when no cosine is negative. n < 1 gives NaN. */
double sd_clip_score_mean_torchmetrics(const double *cosines, int n);
double sd_clip_score_mean_hessel(const double *cosines, int n, double weight);

/* ================================================================================================
 * ViT (transformers ViTModel) and Structure-dist
 * ============================================================================================= */

/* transformers ViTConfig; comments give facebook/dino-vitb8's values. */
typedef struct sd_vit_config {
    int hidden_size;         /* "hidden_size", 768 */
    int intermediate_size;   /* "intermediate_size", 3072 */
    int num_hidden_layers;   /* "num_hidden_layers", 12 */
    int num_attention_heads; /* "num_attention_heads", 12 */
    int num_channels;        /* "num_channels", 3 (must be 3) */
    int image_size;          /* "image_size", 224: the grid the position table was trained for */
    int patch_size;          /* "patch_size", 8 (ViTConfig's default is 16) */
    int qkv_bias;            /* "qkv_bias", true */
    float layer_norm_eps;    /* "layer_norm_eps", 1e-12 in the HF config (the DINO repo uses 1e-6) */
} sd_vit_config;

/* Parses a ViTModel config.json (model_type "vit"; "hidden_act" must be "gelu", the exact erf
 * GELU). Missing keys take ViTConfig's defaults; a malformed file, a wrong-typed key or an
 * unsupported value fails naming `path` and the key. */
sd_status sd_vit_config_parse(const char *json, const char *path, sd_vit_config *out);
sd_status sd_vit_config_load(const char *path, sd_vit_config *out);

typedef struct sd_vit {
    sd_vit_config cfg;
    sd_conv_w patch_embedding;      /* "embeddings.patch_embeddings.projection": (D, 3, P, P) + bias (D) */
    sd_tensor *cls_token;           /* "embeddings.cls_token": (1, 1, D) */
    sd_tensor *position_embeddings; /* "embeddings.position_embeddings": (1, 1 + (S/P)², D) */
    sd_clip_layer *layers;          /* "encoder.layer.N.*" (or "layers.N.*"), via sd_bind_vit_layer */
    sd_norm_w layernorm;            /* "layernorm" (final) */
    sd_weights *owned;              /* the store sd_vit_load filled */
} sd_vit;

/* Binds a store holding ViTModel names without prefix ("embeddings.cls_token", ...), the layers
 * in the hub's published names ("encoder.layer.N.attention.attention.query", as
 * facebook/dino-vitb8 has them) or in those transformers >= 5 saves ("layers.N.attention.q_proj",
 * "layers.N.mlp.fc1"; see sd_bind_vit_layer). Unused
 * "pooler.*" / "classifier.*" / "embeddings.mask_token" tensors are accepted silently. */
sd_status sd_vit_bind(sd_vit *m, const sd_vit_config *cfg, sd_weights *w);
/* A folder with config.json and model.safetensors: a ViTModel save ("embeddings.*", as
 * facebook/dino-vitb8) or one whose keys carry the "vit." prefix (ViTForImageClassification and
 * other heads); the prefix is stripped. Errors name the file and the tensor or key. */
sd_status sd_vit_load(const char *dir, sd_vit *m);
void sd_vit_release(sd_vit *m);

/* The position table for an image of pixel_h x pixel_w -> [1 + gh·gw, D], gh = pixel_h / P,
 * gw = pixel_w / P: transformers' ViTEmbeddings.interpolate_pos_encoding, i.e. the table itself
 * when the patch count is the trained one and pixel_h == pixel_w, else the trained grid resized
 * to gh x gw with F.interpolate(mode="bicubic", align_corners=False) and the class row kept. */
sd_tensor *sd_vit_position_table(sd_ctx *c, const sd_vit *m, int64_t pixel_h, int64_t pixel_w);

/* The keys of layer `layer` (0-based; -1 = the last) for pixels [B, 3, H, W] (H, W >= P; a
 * remainder is dropped by the patch conv): the key projection of layernorm_before(hidden state
 * entering that layer), heads concatenated -> [B, T, D], T = 1 + (H/P)(W/P). Runs
 * ViTModel(pixels, interpolate_pos_encoding=True) up to that point. */
sd_tensor *sd_vit_keys(sd_ctx *c, const sd_vit *m, sd_tensor *pixels, int layer);

/* Structure-dist preprocessing of an 8-bit image -> pixels [1, 3, h, w]: torchvision
 * Resize(224, max_size=480) on a PIL image (short side 224, long side int(224·long/short), both
 * scaled down so the long side is 480 when it would exceed it; PIL BILINEAR with antialias),
 * ToTensor (v / 255 in float32), Normalize(ImageNet mean (0.485, 0.456, 0.406), std (0.229,
 * 0.224, 0.225)). Splice applies the same Resize to float tensors (torchvision's tensor path),
 * which rounds differently; here the input is an image file, as in an evaluation. */
sd_tensor *sd_structure_dist_preprocess(sd_ctx *c, const sd_image *image, const char *what);

/* Splice's attn_cosine_sim of keys [T, D] (or [1, T, D]) -> S [T, T]:
 * S_ij = (k_i · k_j) / max(|k_i| |k_j|, 1e-8). */
sd_tensor *sd_key_self_similarity(sd_ctx *c, sd_tensor *keys);

/* Structure-dist of an edited image against its source: mean((S(edit) - S(source))²) with S the
 * self-similarity of the last layer's keys (layer 11 of ViT-B/8). Both images must give the same
 * token count (equal sizes after the resize), else SD_ERR_ARG naming both sizes. */
sd_status sd_structure_dist(sd_ctx *c, const sd_vit *m, const sd_image *source, const sd_image *edited,
                            double *dist);
/* The same for two image files (an unreadable file fails naming it). */
sd_status sd_structure_dist_files(sd_ctx *c, const sd_vit *m, const char *source_path, const char *edited_path,
                                  double *dist);

#ifdef __cplusplus
}
#endif
#endif
