/* io.h: safetensors files, the named weight store, and the one front door that opens a Stable
 * Diffusion checkpoint (diffusers folder or single-file original SD v1.x .safetensors). */
#ifndef SD_IO_H
#define SD_IO_H

#include "sd/config.h"
#include "sd/core.h"

/* ------------------------------------------------------------------------------------------------
 * safetensors: 8-byte little-endian header length N, N bytes of JSON, then the byte buffer.
 * https://github.com/huggingface/safetensors — every entry is {"dtype", "shape", "data_offsets"}
 * relative to the buffer; "__metadata__" is a string->string map.
 * --------------------------------------------------------------------------------------------- */

typedef struct sd_st_entry {
    char *name;
    sd_dtype dtype;
    int ndim;
    int64_t shape[SD_MAX_DIMS];
    uint64_t begin, end; /* byte range inside the data buffer */
} sd_st_entry;

typedef struct sd_safetensors {
    char path[1024];
    void *map;           /* the whole file, mmap'd read-only */
    size_t map_len;
    const uint8_t *data; /* start of the byte buffer (map + 8 + header length) */
    uint64_t data_len;
    int n_entries;
    sd_st_entry *entries; /* sorted by name */
    int n_meta;
    char **meta_keys, **meta_values;
} sd_safetensors;

/* Opens and validates: the file is at least 8 bytes; the header length fits the file (a length
 * of 2^60 or one past the end is rejected before any allocation; so is a header over 100 MB, the
 * reference implementation's limit); the header is a valid JSON object; each entry has a known
 * dtype, a shape of <= SD_MAX_DIMS non-negative integer dims, offsets with begin <= end inside the
 * buffer, and end - begin == numel * dtype size (computed without overflow); no two non-empty
 * ranges overlap; names are unique; "__metadata__" is a string->string map.
 * Failures: SD_ERR_IO (cannot open, a directory, mmap), SD_ERR_FORMAT (any malformed header or
 * range), SD_ERR_UNSUPPORTED (a valid safetensors dtype stylediff does not read, e.g. I8, F8_E4M3).
 * Every message names the path and, where there is one, the tensor. meta_keys keep file order. */
sd_status sd_safetensors_open(const char *path, sd_safetensors *out);
void sd_safetensors_close(sd_safetensors *st);
const sd_st_entry *sd_safetensors_find(const sd_safetensors *st, const char *name);
/* A value of "__metadata__", or NULL. */
const char *sd_safetensors_meta(const sd_safetensors *st, const char *key);
/* Copies an entry into an F32 heap tensor (converting F16/BF16/F64 exactly as sd_f16_to_f32 /
 * sd_bf16_to_f32 do), named after the entry. An integer or bool entry fails with SD_ERR_SHAPE. */
sd_status sd_safetensors_load_f32(const sd_safetensors *st, const sd_st_entry *e, sd_tensor **out);
/* Copies an entry into a heap tensor of its own dtype (ids, masks). */
sd_status sd_safetensors_load_raw(const sd_safetensors *st, const sd_st_entry *e, sd_tensor **out);

/* Writes CPU tensors (their own dtype) and string metadata atomically (temp file + rename).
 * Names must be unique and non-empty. meta_kv holds 2*n_meta strings: key, value, key, value...
 * The layout is the reference writer's (the Python/Rust `safetensors` package): compact JSON with
 * "__metadata__" first (keys in the order given), data ordered by dtype (I64, F64, F32, I32, BF16,
 * F16, U8, BOOL: widest first, so every tensor is aligned to its element size) then by name, and
 * the header padded with spaces to a multiple of 8 bytes. Given the same tensors and metadata, the
 * file is byte-identical to the one safetensors.torch.save_file writes. */
sd_status sd_safetensors_write(const char *path, const sd_tensor *const *tensors,
                               const char *const *names, int n, const char *const *meta_kv,
                               int n_meta);

/* ------------------------------------------------------------------------------------------------
 * Weight store: diffusers tensor name -> F32 heap tensor.
 * Binding a model is a lookup by the name diffusers gives the parameter, with a shape check; the
 * store remembers where its tensors came from so a message can name the file.
 * --------------------------------------------------------------------------------------------- */

typedef struct sd_weights sd_weights;

sd_weights *sd_weights_new(const char *source);  /* source: file or folder, for messages */
void sd_weights_free(sd_weights *w);
const char *sd_weights_source(const sd_weights *w);
/* Takes ownership of t, also when it fails (t is then freed), so callers need no cleanup path.
 * Replaces nothing: a duplicate name fails (SD_ERR_FORMAT, naming the source and the tensor). */
sd_status sd_weights_add(sd_weights *w, const char *name, sd_tensor *t);
sd_tensor *sd_weights_find(const sd_weights *w, const char *name);
/* Looks up `name` and checks its shape; marks it used. Missing: SD_ERR_MISSING "<source>: missing
 * tensor 'name' (expected shape (...))". Wrong shape: SD_ERR_SHAPE "<source>: tensor 'name':
 * expected shape (...), got (...)". A -1 in `shape` matches any size. */
sd_status sd_weights_get(sd_weights *w, const char *name, int ndim, const int64_t *shape,
                         sd_tensor **out);
/* From now on sd_weights_get creates any tensor it is asked for and does not hold (norm scales 1,
 * biases 0, weights uniform ±1/sqrt(fan_in) from `seed`): binds a model of any config with
 * random weights, for benchmarks and memory tests without a checkpoint. */
void sd_weights_synthesize(sd_weights *w, uint64_t seed);
int sd_weights_count(const sd_weights *w);
const char *sd_weights_name_at(const sd_weights *w, int i); /* in insertion order */
sd_tensor *sd_weights_tensor_at(const sd_weights *w, int i);
/* Number of tensors never fetched with sd_weights_get, and the first such name (for warnings). */
int sd_weights_unused(const sd_weights *w, const char **first);

/* Loads every tensor of a safetensors file whose name starts with `prefix` ("" for all), stripping
 * the prefix, converting to F32 (a non-floating-point entry under the prefix fails). */
sd_status sd_weights_load_file(sd_weights *w, const char *path, const char *prefix);

/* ------------------------------------------------------------------------------------------------
 * Checkpoint name mapping: original SD v1.x single-file (LDM) names -> diffusers names.
 *   model.diffusion_model.*           -> UNet     (e.g. input_blocks.1.1.proj_in -> down_blocks.0.attentions.0.proj_in)
 *   first_stage_model.*               -> VAE      (mid attention q/k/v/proj_out 1x1 convs -> to_q/to_k/to_v/to_out.0 linears)
 *   cond_stage_model.transformer.*    -> CLIP text (text_model.* names kept)
 * Also old diffusers VAE attention names (query/key/value/proj_attn) -> to_q/to_k/to_v/to_out.0.
 * --------------------------------------------------------------------------------------------- */

typedef enum { SD_PART_UNET = 0, SD_PART_VAE = 1, SD_PART_TEXT = 2, SD_PART_NONE = 3 } sd_model_part;

/* Maps one LDM tensor name to (part, diffusers name) given the UNet config (block and layer counts
 * and which blocks have attention decide the input_blocks / output_blocks numbering) and the VAE
 * config (its block count decides the reversed decoder `up.N` numbering); NULL for either means the
 * SD v1.5 config. Returns SD_PART_NONE for
 * names that belong to no part stylediff uses (e.g. EMA copies "model_ema.*", the DDPM schedule
 * buffers "betas", "alphas_cumprod", ..., the CLIP "position_ids" buffer), and for an `out` too
 * small to hold the name. A name under a part's prefix whose layout is not recognised (e.g. an
 * input block past the configured count) keeps its name minus the prefix, so it lands in that part
 * and is reported as unused when the model binds. `reshape_1x1` (may be NULL) is set when the LDM
 * tensor is a 1x1 conv weight (C, C, 1, 1) that diffusers stores as a linear (C, C): the VAE mid
 * attention q/k/v/proj_out weights. */
sd_model_part sd_ldm_to_diffusers_name(const sd_unet_config *unet, const sd_vae_config *vae,
                                       const char *ldm_name, char *out, size_t out_len,
                                       int *reshape_1x1);

/* Older diffusers folders name the VAE mid attention layers query/key/value/proj_attn (some with
 * 1x1-conv shaped weights); current ones to_q/to_k/to_v/to_out.0. Writes the new name of `name`
 * into `out` and returns 1 when it was an old one, else copies it and returns 0; -1 (and "") when
 * `out` is too small. */
int sd_vae_modern_name(const char *name, char *out, size_t out_len);

/* ------------------------------------------------------------------------------------------------
 * The front door.
 * --------------------------------------------------------------------------------------------- */

typedef struct sd_model_files {
    char source[1024];     /* what the user passed */
    int single_file;       /* 1: original SD single .safetensors; 0: diffusers folder */
    sd_unet_config unet_config;
    sd_vae_config vae_config;
    sd_clip_text_config text_config;
    sd_weights *unet, *vae, *text; /* diffusers names, F32 */
    char tokenizer_dir[1024]; /* folder with vocab.json + merges.txt */
} sd_model_files;

/* Opens `path`:
 *  - a folder with model_index.json (diffusers layout): reads {unet,vae,text_encoder}/config.json
 *    and the weights {part}/diffusion_pytorch_model.safetensors or model.safetensors (also the
 *    *.fp16.safetensors variants and sharded *.safetensors.index.json), tokenizer/ for the
 *    tokenizer (falling back to `default_tokenizer_dir`, with a warning, when the folder has none);
 *    a folder holding only .bin pickles fails with a message saying to convert them to safetensors;
 *  - a file ending in .safetensors: the single-file original layout with the SD v1.5 configs and
 *    the tokenizer folder `default_tokenizer_dir` (the real CLIP vocabulary shipped with stylediff).
 *    Entries of no part (EMA copies, schedule buffers) are skipped; SD 2.x / SDXL single files
 *    (OpenCLIP text encoders) fail with SD_ERR_UNSUPPORTED.
 * Names are normalised so the model code sees one spelling whatever wrote the checkpoint:
 *    text encoder tensors are "text_model.*" (transformers >= 5.6 saves them without that level);
 *    old VAE attention names become to_q/to_k/to_v/to_out.0, and their 1x1-conv weights (C,C,1,1)
 *    become (C,C); the CLIP position_ids buffer is dropped.
 * Every tensor of each part is loaded as F32; binding (and thereby missing/wrong-shaped tensor
 * detection) happens in the model constructors. */
sd_status sd_model_files_open(const char *path, const char *default_tokenizer_dir,
                              sd_model_files *out);
/* The single-file path of sd_model_files_open with explicit configurations (NULL: SD v1.5), for
 * single files of other SD v1-shaped models (the tiny test model, for one). The configs decide the
 * name mapping, so they must describe the checkpoint. */
sd_status sd_model_files_open_single(const char *path, const sd_unet_config *unet,
                                     const sd_vae_config *vae, const sd_clip_text_config *text,
                                     const char *tokenizer_dir, sd_model_files *out);
void sd_model_files_close(sd_model_files *m);

#endif
