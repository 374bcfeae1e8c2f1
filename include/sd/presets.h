/* presets.h: a method's settings as one bundle (the spec's hyperparameter table, §9): inversion
 * options plus the editing windows. configs/methods/<method>.json hold the reference defaults;
 * `--config FILE` replaces any of them. */
#ifndef SD_PRESETS_H
#define SD_PRESETS_H

#include "sd/inversion.h"

typedef struct sd_method_preset {
    sd_invert_options invert;
    float tau_v; /* StyleDiffusion: steps i < tau_v·N use the mapping network for the target row */
    float tau_c; /* cross-attention replacement window (0, tau_c) */
    float tau_s; /* self-attention replacement window (0, tau_s) */
    float tau_u; /* P2Plus: unconditional self-attention replacement window (0, tau_u); 0 = off */
} sd_method_preset;

/* The reference defaults of a method (the values configs/methods/<method>.json also holds). */
void sd_method_preset_default(sd_invert_method method, sd_method_preset *p);

/* Overrides the fields a JSON file sets: "steps", "guidance", "inner_steps", "early_stop", "lr",
 * "attention_loss", "seed", "tau_v", "tau_c", "tau_s", "tau_u" (keys starting with "_" are
 * comments). An unknown key, a wrong type or a value out of range fails naming the file and key. */
sd_status sd_method_preset_load(const char *path, sd_method_preset *p);

#endif
