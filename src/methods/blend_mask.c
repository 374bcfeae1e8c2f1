/* blend_mask.c: NS-LPIPS masks as eval_metrics/storemask.py makes them (see blend_mask.h). */
#include "sd/blend_mask.h"

#include <stdlib.h>
#include <string.h>

#include "invert_internal.h"
#include "sd/control.h"

/* Python's prompt.split(' ').index(word) + 1, or -1 when the word is not among them. */
static int word_token_quirk(const char *prompt, const char *word) {
    const size_t wl = strlen(word);
    int index = 0;
    for (const char *p = prompt;; index++) {
        const char *end = strchr(p, ' ');
        const size_t len = end ? (size_t)(end - p) : strlen(p);
        if (len == wl && !strncmp(p, word, wl)) return index + 1;
        if (!end) return -1;
        p = end + 1;
    }
}

/* acc[l] += rows h/2.. of every captured map (the stored half of the heads). Allocates acc[l]
 * (keep arena, zeroed) on the first step. */
static void accumulate_maps(sd_ctx *c, const sd_value_capture_hook *hook, sd_tensor **acc, int *n_acc) {
    for (int l = 0; l < hook->n_captured && c->status == SD_OK; l++) {
        const sd_tensor *map = hook->captured[l]; /* (heads, q_len, 77): batch 1 */
        const int64_t h = map->shape[0], per_row = map->shape[1] * map->shape[2];
        const int64_t kept = (h - h / 2) * per_row;
        if (!acc[l]) {
            const int64_t shape[3] = {h - h / 2, map->shape[1], map->shape[2]};
            acc[l] = sd_arena_tensor(c->keep, SD_F32, 3, shape);
            if (!acc[l]) {
                c->status = SD_ERR_OOM;
                return;
            }
            acc[l]->device = c->device;
            sd_ctx_check(c, c->be->zero(acc[l]->data, sd_nbytes(acc[l])));
        }
        sd_ctx_check(c, c->be->axpy(1.0f, sd_f32(map) + (h / 2) * per_row, sd_f32(acc[l]), kept));
    }
    if (hook->n_captured > *n_acc) *n_acc = hook->n_captured;
}

/* The reference's average: each layer's sum / steps (float32), then the mean over every stored
 * (layer, head) map. Host tensors in, (res, res, 77) out. */
static sd_tensor *aggregate(sd_tensor **host_acc, int n_layers, int n_steps, int64_t res) {
    const int64_t per_map = res * res * 77;
    sd_tensor *out = sd_tensor_new4(SD_F32, 3, res, res, 77, 0);
    if (!out) return NULL;
    int64_t count = 0;
    for (int l = 0; l < n_layers; l++) count += host_acc[l]->shape[0];
    for (int64_t i = 0; i < per_map; i++) {
        float sum = 0.0f;
        for (int l = 0; l < n_layers; l++)
            for (int64_t r = 0; r < host_acc[l]->shape[0]; r++)
                sum += sd_f32(host_acc[l])[r * per_map + i] / (float)n_steps;
        sd_f32(out)[i] = sum / (float)count;
    }
    return out;
}

sd_status sd_blend_word_mask(sd_ctx *c, const sd_model *m, sd_tensor *image, const char *prompt,
                             const char *word, int n_steps, sd_image *foreground, sd_image *background,
                             sd_tensor **attention) {
    const int token = word_token_quirk(prompt, word);
    if (token < 0)
        return sd_fail(SD_ERR_ARG, "mask word \"%s\" is not one of the space-separated words of prompt \"%s\"", word,
                       prompt);
    if (token >= 77) return sd_fail(SD_ERR_ARG, "mask word \"%s\" lies past the 77 tokens of prompt \"%s\"", word, prompt);
    sd_invert_options o;
    sd_invert_options_default(SD_INVERT_DDIM, &o);
    o.n_steps = n_steps;
    const sd_arena_mark keep = sd_arena_get_mark(c->keep);
    sd_invert_state s;
    sd_status st = sd_invert_prepare(c, m, &o, image, prompt, &s);
    const int64_t side = st == SD_OK ? s.z0->shape[2] : 0, res = side / 4;
    sd_tensor *acc[SD_MAX_CAPTURED] = {0};
    int n_layers = 0;
    sd_value_capture_hook hook;
    sd_value_capture_hook_init(&hook, NULL, res * res);
    sd_tensor *z = st == SD_OK ? s.z0 : NULL;
    sd_progress bar;
    sd_progress_begin(&bar, "attention masks", n_steps);
    for (int k = 0; k < n_steps && st == SD_OK; k++) {
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const int t = s.sched.timesteps[n_steps - 1 - k];
        sd_value_capture_hook_clear(&hook);
        c->hook = &hook.base;
        sd_tensor *eps = sd_unet_forward(c, &m->unet, z, (float)t, s.cond);
        c->hook = NULL;
        accumulate_maps(c, &hook, acc, &n_layers);
        if (c->status == SD_OK) sd_assign(c, z, sd_ddim_next_step(c, &s.sched, eps, t, z));
        sd_arena_reset(c->arena, mark);
        st = sd_ctx_status(c);
        sd_progress_step(&bar);
    }
    sd_progress_end(&bar);
    if (st == SD_OK && n_layers == 0)
        st = sd_fail(SD_ERR_UNSUPPORTED, "masks: the UNet has no cross-attention layer at %lldx%lld", (long long)res,
                     (long long)res);
    sd_tensor *host[SD_MAX_CAPTURED] = {0};
    for (int l = 0; l < n_layers && st == SD_OK; l++)
        if (!(host[l] = sd_download_new(c, acc[l]))) st = sd_ctx_status(c) ? sd_ctx_status(c) : SD_ERR_OOM;
    sd_tensor *agg = st == SD_OK ? aggregate(host, n_layers, n_steps, res) : NULL;
    if (st == SD_OK && !agg) st = sd_fail(SD_ERR_OOM, "masks: out of host memory");
    sd_image small = {0};
    if (st == SD_OK) st = sd_image_alloc(&small, (int)res, (int)res);
    if (st == SD_OK) {
        float max = 0.0f;
        for (int64_t p = 0; p < res * res; p++) {
            const float v = sd_f32(agg)[p * 77 + token];
            if (v > max) max = v;
        }
        for (int64_t p = 0; p < res * res; p++) {
            /* numpy: (255 * map / max) in float32, then astype(uint8) truncates */
            const float v = 255.0f * sd_f32(agg)[p * 77 + token] / max;
            const uint8_t u = v >= 255.0f ? 255 : v <= 0.0f ? 0 : (uint8_t)v;
            small.data[3 * p] = small.data[3 * p + 1] = small.data[3 * p + 2] = u;
        }
        st = sd_image_resize_bicubic(&small, SD_BLEND_MASK_SIDE, SD_BLEND_MASK_SIDE, foreground);
    }
    if (st == SD_OK) st = sd_image_alloc(background, SD_BLEND_MASK_SIDE, SD_BLEND_MASK_SIDE);
    if (st == SD_OK) {
        const size_t n = (size_t)SD_BLEND_MASK_SIDE * SD_BLEND_MASK_SIDE * 3;
        for (size_t i = 0; i < n; i++) background->data[i] = (uint8_t)(255 - foreground->data[i]);
    } else {
        sd_image_free(foreground);
    }
    sd_image_free(&small);
    for (int l = 0; l < n_layers; l++) sd_tensor_free(host[l]);
    if (st == SD_OK && attention) *attention = agg;
    else sd_tensor_free(agg);
    sd_invert_state_free(&s);
    sd_arena_reset(c->keep, keep);
    return st;
}
