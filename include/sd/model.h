/* model.h: a loaded Stable Diffusion v1.x model (text encoder, UNet, VAE, tokenizer) and the
 * reference's conversions around it: prompt -> embedding, image -> latent, latent -> image. */
#ifndef SD_MODEL_H
#define SD_MODEL_H

#include "sd/image.h"
#include "sd/io.h"
#include "sd/models.h"
#include "sd/text.h"

typedef struct sd_model {
    sd_model_files files;
    sd_unet unet;
    sd_vae vae;
    sd_clip_text text;
    sd_tokenizer *tokenizer;
    int builtin; /* 1: the tiny random-weight model shipped with stylediff */
    uint64_t fingerprint; /* hash of a few weight tensors: tells checkpoints apart in saved files */
} sd_model;

/* The folder of the built-in tiny model: $STYLEDIFF_HOME/models/tiny when set, else found next to
 * the executable (../models/tiny from build/), else the source tree it was built from. */
const char *sd_builtin_model_dir(void);
/* The real CLIP tokenizer folder shipped with stylediff (used by single-file checkpoints). */
const char *sd_builtin_tokenizer_dir(void);
/* The tiny random-weight CLIP vision tower paired with the built-in model (StyleDiffusion's
 * image encoder in tests and demos): models/tiny-clip-vision beside models/tiny. */
const char *sd_builtin_clip_vision_dir(void);

/* Loads and binds a diffusers folder or a single-file .safetensors; path NULL loads the built-in
 * tiny model and prints a one-line notice that its weights are random. */
sd_status sd_model_load(const char *path, sd_model *m);
void sd_model_free(sd_model *m);

/* A photo as the model's input: uint8 RGB -> (1, 3, H, W) in [-1, 1] on the context's device. */
sd_tensor *sd_image_upload(sd_ctx *c, const sd_image *img);
/* Row `row` of a decoded image batch (B, 3, H, W) on the device -> 8-bit RGB (the reference's
 * clamp and truncation). */
sd_status sd_image_download(sd_ctx *c, const sd_tensor *images, int row, sd_image *out);
/* Moves the model's weights to the context's device (no-op on the CPU). */
sd_status sd_model_to_device(sd_ctx *c, sd_model *m);

/* Text embedding [1, 77, D] of a prompt ("" gives the null-text embedding). */
sd_tensor *sd_encode_prompt(sd_ctx *c, const sd_model *m, const char *prompt);
/* image [B, 3, H, W] in [-1, 1] -> z0 = scaling_factor · posterior mean. */
sd_tensor *sd_image_to_latent(sd_ctx *c, const sd_model *m, sd_tensor *image);
/* z [B, 4, h, w] -> decoded image [B, 3, 8h, 8w] in about [-1, 1]. */
sd_tensor *sd_latent_to_image(sd_ctx *c, const sd_model *m, sd_tensor *z);

#endif
