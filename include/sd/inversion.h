/* inversion.h: inverting a real image (stylediffusion.md §2, §3, §5).
 *
 *   ddim            DDIM inversion only (conditional, guidance 1); sampling back uses CFG with "".
 *   npi             negative-prompt inversion: DDIM inversion, then the source prompt's embedding
 *                   replaces the null embedding when sampling (no optimisation).
 *   nulltext        Null-text inversion: one null embedding per timestep, optimised with Adam so
 *                   the CFG trajectory follows the DDIM inversion (§5).
 *   stylediffusion  one mapping network per timestep turns CLIP image features into the value
 *                   input of every cross-attention layer of the conditional pass, trained with
 *                   L_rec + L_att (§3).
 *
 * An sd_inversion holds everything editing needs (host tensors): z_T, the per-step variables,
 * the prompt and the settings; it is saved as one safetensors file with the prompt, image hash,
 * model and settings in its metadata. */
#ifndef SD_INVERSION_H
#define SD_INVERSION_H

#include "sd/mapping_net.h"
#include "sd/methods.h"

typedef enum sd_invert_method {
    SD_INVERT_DDIM = 0,
    SD_INVERT_NPI,
    SD_INVERT_NULLTEXT,
    SD_INVERT_STYLEDIFFUSION,
} sd_invert_method;

const char *sd_invert_method_name(sd_invert_method m);
/* "ddim" | "npi" | "nulltext" | "stylediffusion" -> method; SD_ERR_ARG naming the value otherwise. */
sd_status sd_invert_method_parse(const char *name, sd_invert_method *out);

typedef struct sd_invert_options {
    sd_invert_method method;
    int n_steps;            /* DDIM steps: 30 for StyleDiffusion, 50 for the others (reference) */
    float guidance;         /* 7.5 */
    int inner_steps;        /* Null-text: 10 per step; StyleDiffusion: ceil(inner·e^(-0.1 i)), inner 100 */
    double early_stop;      /* stop a step's loop when loss < early_stop + i·2e-5 (1e-5) */
    double lr;              /* Adam learning rate at step 0; step i uses lr·(1 - i/100) (1e-2) */
    int attention_loss;     /* StyleDiffusion: add L_att (1) */
    uint64_t seed;          /* StyleDiffusion: initialisation of the first mapping network */
    /* StyleDiffusion: start M_0 from these host tensors (sd_mapping_param_names order) instead of
     * a random initialisation — e.g. another image's M_0, or a test's reference weights. */
    sd_tensor *const *mapping_init;
    /* Stop after this many timesteps (0 = all): per-timestep benchmarks and tests. The result
     * then holds only those steps' variables and cannot be edited. */
    int stop_after;
} sd_invert_options;

/* The reference's defaults for a method (stylediffusion.md §9). */
void sd_invert_options_default(sd_invert_method method, sd_invert_options *o);

typedef struct sd_step_stats {
    int t;              /* timestep */
    int iterations;     /* optimiser steps taken (0 for ddim/npi) */
    float first_loss;   /* loss before the first update */
    float last_loss;    /* loss of the last iteration */
    double seconds;     /* wall time of this timestep (optimisation + trajectory advance) */
} sd_step_stats;

typedef struct sd_inversion {
    sd_invert_method method;
    int n_steps;
    float guidance;
    char *prompt;
    sd_tensor *z0;                /* (1, 4, h, w) encoded image (scaled posterior mean) */
    sd_tensor *z_T;               /* (1, 4, h, w) end of the DDIM inversion */
    sd_tensor **null_embeddings;  /* nulltext: n_steps x (1, 77, D); npi: 1 (the prompt's) */
    sd_tensor *(*mapping)[SD_MAP_N_PARAMS]; /* stylediffusion: n_steps networks (host) */
    sd_tensor *image_features;    /* stylediffusion: (1, tokens, D) CLIP features of the image */
    sd_step_stats *stats;         /* n_steps entries (inversion order of the reverse steps) */
    int gradient_steps;           /* optimiser iterations run (nulltext, stylediffusion) */
    int graph_steps;              /* of which replayed from a CUDA graph (autograd.h, sd_graph_step) */
    double seconds_encode;        /* the photo's VAE encode and the prompts' text encoding */
    double seconds_ddim;          /* the DDIM inversion z0 -> z_T (StyleDiffusion: with its maps) */
    double seconds_total;         /* all of it: encode, DDIM inversion, optimisation */
    uint64_t image_hash;          /* sd_hash64 of the 8-bit crop fed to the VAE */
    int image_size;               /* side of that crop in pixels */
    char model_id[256];           /* what the model was loaded from */
    uint64_t model_fingerprint;   /* sd_model.fingerprint of that model */
} sd_inversion;

/* Inverts `image` (1, 3, H, W) in [-1, 1] with `prompt`. `features` are the CLIP image features
 * (1, tokens, D) for StyleDiffusion (NULL otherwise). A NaN or Inf in a loss or gradient stops
 * with SD_ERR_NUMERIC naming the timestep and iteration. */
sd_status sd_invert(sd_ctx *c, const sd_model *m, const sd_invert_options *o, sd_tensor *image,
                    const char *prompt, sd_tensor *features, sd_inversion *out);
void sd_inversion_free(sd_inversion *inv);

/* Samples z_0 back from an inversion with its own method (the reconstruction), guidance as
 * recorded. Returns a tensor in the keep arena. */
sd_tensor *sd_inversion_reconstruct(sd_ctx *c, const sd_model *m, const sd_inversion *inv);

/* Save / load (safetensors, atomic write). Loading checks the file's kind and shapes and names
 * what is wrong; sd_inversion_check_model verifies it was made with a model of the same shapes
 * and latent size. */
sd_status sd_inversion_save(const sd_inversion *inv, const char *path);
sd_status sd_inversion_load(const char *path, sd_inversion *out);
sd_status sd_inversion_check_model(const sd_inversion *inv, const sd_model *m, const char *path);

/* The StyleDiffusion learning-rate and inner-iteration schedules (§3.6). */
double sd_step_lr(double lr, int i);
int sd_stylediffusion_inner_steps(int inner, int i);

#endif
