/* clip_vision.h: the CLIP vision tower StyleDiffusion uses as its image encoder E
 * (stylediffusion.md §3.2): openai-CLIP ViT-B/16, returning ln_post applied to every token
 * (CLS + 14x14 patches = 197 tokens x 768), without the 768 -> 512 projection, fed with the
 * reference's Trainer.preprocess of the (1, 3, 512, 512) image in [-1, 1].
 *
 * Weights use the transformers CLIPVisionModel layout of openai/clip-vit-base-patch16
 * ("vision_model.embeddings.patch_embedding.weight", ...). In transformers terms the output is
 * post_layernorm(last_hidden_state): transformers' last_hidden_state stops before post_layernorm
 * and its pooler_output applies it to the CLS token only.
 *
 * Precision: everything is fp32. The reference runs CLIP in fp16 on CUDA (clip.load keeps conv,
 * linear and attention weights in half precision, LayerNorms in fp32), so its features differ
 * from these by fp16 rounding (~1e-3 relative); a GPU fast mode may emulate that later. */
#ifndef SD_CLIP_VISION_H
#define SD_CLIP_VISION_H

#include "sd/io.h"
#include "sd/models.h"
#include "sd/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

/* transformers CLIPVisionConfig. Comments give the ViT-B/16 values; a key absent from a
 * config.json takes CLIPVisionConfig's default, which is the ViT-B/32 value where they differ
 * (patch_size 32). */
typedef struct sd_clip_vision_config {
    int hidden_size;         /* "hidden_size", 768 */
    int intermediate_size;   /* "intermediate_size", 3072 */
    int num_hidden_layers;   /* "num_hidden_layers", 12 */
    int num_attention_heads; /* "num_attention_heads", 12 */
    int num_channels;        /* "num_channels", 3 (must be 3: the preprocessing is RGB) */
    int image_size;          /* "image_size", 224: the side the preprocessing resizes and crops to */
    int patch_size;          /* "patch_size", 16 */
    int projection_dim;      /* "projection_dim", 512: informational; E applies no projection, and
                                sd_clip_vision_image_features takes its width from the tensor */
    int quick_gelu;          /* "hidden_act": "quick_gelu" = 1, "gelu" (exact erf) = 0 */
    float layer_norm_eps;    /* "layer_norm_eps", 1e-5 */
} sd_clip_vision_config;

/* openai/clip-vit-base-patch16, the encoder the reference loads with clip.load('ViT-B/16'). */
void sd_clip_vision_config_vit_b16(sd_clip_vision_config *c);

/* Parses a config.json: a CLIPVisionModel config (model_type "clip_vision_model") or a full
 * CLIPModel config (model_type "clip") with a "vision_config" object; keys of an old-style
 * "vision_config_dict" object, when present, override those of "vision_config". Unknown keys are
 * ignored. A malformed file, a wrong-typed key or an unsupported architecture (another model_type,
 * an activation other than quick_gelu/gelu, num_channels != 3, hidden_size not divisible by the
 * heads, image_size < patch_size) fails with a message naming `path` and the key.
 *
 * Token count: (image_size / patch_size)² + 1 (integer division, as the patch convolution drops a
 * remainder). StyleDiffusion's mapping networks need 197 (224 / 16); other sizes are accepted and
 * encode fine, the result just has another token count (sd_clip_vision_num_tokens). */
sd_status sd_clip_vision_config_parse(const char *json, const char *path, sd_clip_vision_config *out);
sd_status sd_clip_vision_config_load(const char *path, sd_clip_vision_config *out);
int sd_clip_vision_num_tokens(const sd_clip_vision_config *c);

typedef struct sd_clip_vision {
    sd_clip_vision_config cfg;
    sd_conv_w patch_embedding;     /* weight (hidden, 3, patch, patch), no bias */
    sd_tensor *class_embedding;    /* (hidden) */
    sd_tensor *position_embedding; /* (tokens, hidden) */
    sd_norm_w pre_layernorm;       /* "pre_layrnorm" in the checkpoint (sic) */
    sd_clip_layer *layers;         /* num_hidden_layers */
    sd_norm_w post_layernorm;
    sd_linear_w visual_projection; /* (projection_dim, hidden), no bias; NULL weight when the file has none */
    sd_weights *owned;             /* the store sd_clip_vision_load filled, freed on release */
} sd_clip_vision;

/* Binds every tensor by its published name ("vision_model.embeddings.class_embedding", ...) with a
 * shape check; fails naming the first missing or wrong-shaped tensor and the store's source. Warns
 * about tensors left unused. The model borrows `w`'s tensors: keep `w` alive while it is used. */
sd_status sd_clip_vision_bind(sd_clip_vision *m, const sd_clip_vision_config *cfg, sd_weights *w);

/* Fills `w` with the vision tower's tensors of a safetensors file, converted to F32 and named
 * "vision_model.*" whatever the file's spelling:
 *   - "vision_model.*" keys (CLIPVisionModel / CLIPModel checkpoints such as
 *     openai/clip-vit-base-patch16's model.safetensors) are taken as they are;
 *   - a file with no "vision_model." key is taken to be a transformers >= 5 CLIPVisionModel save,
 *     which drops that level ("embeddings.patch_embedding.weight"): its keys get the prefix;
 *   - "visual_projection.weight" (CLIPModel, CLIPVisionModelWithProjection) is kept under that
 *     name: sd_clip_vision_bind binds it when present (sd_clip_vision_image_features needs it);
 *   - the text tower ("text_model.*"), "text_projection.weight", "logit_scale" and the
 *     position_ids buffer are skipped. */
sd_status sd_clip_vision_weights_load(sd_weights *w, const char *safetensors_path);

/* Opens a folder holding config.json and model.safetensors (a CLIPVisionModel or a full CLIPModel
 * checkpoint), loads and binds it; the model owns its weights (sd_clip_vision_release frees them).
 * A missing file fails with SD_ERR_MISSING naming it; a folder with only pytorch_model.bin is told
 * to convert it to safetensors. */
sd_status sd_clip_vision_load(const char *dir, sd_clip_vision *m);
void sd_clip_vision_release(sd_clip_vision *m);

/* Trainer.preprocess: image [B, 3, H, W] in [-1, 1] (any H, W >= 1) -> pixels [B, 3, S, S],
 * S = cfg->image_size:
 *   (x + 1) / 2;
 *   torchvision Resize(S, bicubic) on a tensor, which torchvision 0.13 runs without antialiasing:
 *     the short side becomes S, the long side int(S·long/short), resampled like
 *     F.interpolate(mode="bicubic", align_corners=False) (skipped when the size is unchanged);
 *   CenterCrop(S): offset int(round((side - S) / 2)), Python's half-to-even round;
 *   Normalize(mean (0.48145466, 0.4578275, 0.40821073), std (0.26862954, 0.26130258, 0.27577711)).
 * Computed on the host (the image is copied there first when it lives on a device). */
sd_tensor *sd_clip_vision_preprocess(sd_ctx *c, const sd_clip_vision_config *cfg, const sd_tensor *image);

/* The tower on preprocessed pixels [B, 3, S, S] -> [B, tokens, hidden], ln_post on every token:
 * patch conv (stride = patch, no bias) -> tokens, CLS row prepended, position embedding added,
 * pre-LayerNorm, pre-LN transformer layers (bidirectional attention, QuickGELU MLP), post-LN. */
sd_tensor *sd_clip_vision_forward(sd_ctx *c, const sd_clip_vision *m, sd_tensor *pixels);

/* E(x): sd_clip_vision_preprocess then sd_clip_vision_forward. image [B, 3, H, W] in [-1, 1] ->
 * [B, tokens, hidden] ([1, 197, 768] for ViT-B/16 on the reference's 512x512 image). The result
 * is the same at every step of a run, so compute it once per image (the reference recomputes it
 * in every cross-attention call). */
sd_tensor *sd_clip_vision_encode(sd_ctx *c, const sd_clip_vision *m, const sd_tensor *image);

/* CLIPModel.get_image_features: visual_projection(post_layernorm(CLS)) on preprocessed pixels
 * [B, 3, S, S] -> [B, projection_dim]. Fails (SD_ERR_MISSING, naming "visual_projection.weight")
 * when the checkpoint had no projection (a plain CLIPVisionModel). */
sd_tensor *sd_clip_vision_image_features(sd_ctx *c, const sd_clip_vision *m, sd_tensor *pixels);

struct sd_image;
/* transformers' CLIPProcessor / CLIPImageProcessor preprocessing of an 8-bit RGB image, PIL
 * backend (CLIPImageProcessorPil in transformers 5, the default CLIPImageProcessor of 4.x, which
 * is what torchmetrics' CLIPScore feeds uint8 images through) -> pixels [1, 3, S, S],
 * S = cfg->image_size (the shortest_edge and crop size of the openai preprocessor configs):
 *   resize the short side to S with PIL BICUBIC (sd_image_resize_bicubic; long side
 *   int(S·long/short)); center-crop S x S at ((h - S) // 2, (w - S) // 2); rescale
 *   float32(float64(v) / 255); normalize with the CLIP mean / std in float32.
 * transformers 5's default (torchvision) backend differs: antialiased bicubic on a uint8 tensor,
 * rounded back to uint8, changes some pixels by one level (see tests/oracle/gen_eval_models.py
 * for the measured effect). `what` names the image in messages (e.g. its path). */
sd_tensor *sd_clip_vision_processor(sd_ctx *c, const sd_clip_vision_config *cfg, const struct sd_image *image,
                                    const char *what);

/* ------------------------------------------------------------------------------------------------
 * Bicubic resize of PyTorch's F.interpolate(mode="bicubic", align_corners=False, antialias=False),
 * CPU only, on host F32 memory. It lives here until it joins the backend op table; its signature
 * is the op's (planes x[N, H, W] -> y[N, Ho, Wo], like upsample_nearest).
 *
 * Per output index i of an axis (in -> out): scale = (float)in / out; src = scale·(i + 0.5) - 0.5;
 * i0 = floor(src) (at most in - 1); t = src - i0 clamped to [0, 1]; four taps at i0-1 .. i0+2,
 * each clamped into [0, in - 1], weighted by Keys' cubic convolution with A = -0.75; rows are
 * resampled along W first, then the four row results are combined along H. All in float, with
 * fused multiply-adds exactly where PyTorch's x86-64 CPU build has them, so the taps are
 * bit-identical to PyTorch's and outputs agree to a few float ulps (measured ~2e-7).
 * --------------------------------------------------------------------------------------------- */
sd_status sd_clip_vision_resize_bicubic(const float *x, float *y, int64_t N, int64_t H, int64_t W,
                                        int64_t Ho, int64_t Wo);

#ifdef __cplusplus
}
#endif
#endif
