/* ns_lpips.c: NS-LPIPS, StyleDiffusion's non-edited-region LPIPS (stylediffusion.md §6.1), as
 * eval_metrics/ns_lpips.py computes it; the definition and its quirks are in lpips.h.
 *
 * The preprocessing is torchvision's on PIL images, reproduced step by step on the host:
 * Resize((S, S)) is Pillow's BILINEAR resize (bit-exact, sd_image_resize_bilinear), ToTensor is
 * u8 / 255 in float32, and Grayscale on the mask *tensor* is torchvision's float formula. */
#include "sd/lpips.h"

#include <string.h>

/* The reference's Resize((256, 256)). */
#define NS_LPIPS_DEFAULT_SIZE 256

/* torchvision's _rgb_to_grayscale on a float tensor: 0.2989 r + 0.587 g + 0.114 b, each product
 * and sum a float32 tensor op (the Python constants round to float), left to right. The build
 * does not contract these into fused multiply-adds (-std=c11 implies -ffp-contract=off). */
static inline float torchvision_gray(float r, float g, float b) {
    const float wr = 0.2989f, wg = 0.587f, wb = 0.114f;
    const float rg = wr * r + wg * g;
    return rg + wb * b;
}

static sd_status check_image(const sd_image *img, const char *which) {
    if (!img || !img->data || img->width < 1 || img->height < 1)
        return sd_fail(SD_ERR_ARG, "NS-LPIPS: the %s image is empty", which);
    return SD_OK;
}

static sd_status check_output(const sd_tensor *t, int64_t numel, const char *what) {
    if (!t || t->dtype != SD_F32 || t->device != SD_DEVICE_CPU || sd_numel(t) != numel || !t->data)
        return sd_fail(SD_ERR_ARG, "NS-LPIPS: %s must be a preallocated F32 CPU tensor of %lld values", what,
                       (long long)numel);
    return SD_OK;
}

sd_status sd_ns_lpips_prepare(const sd_image *source, const sd_image *edited, const sd_image *mask, int size,
                              sd_tensor *source_bg, sd_tensor *edited_bg, sd_tensor *mask_gray) {
    SD_TRY(check_image(source, "source"));
    SD_TRY(check_image(edited, "edited"));
    SD_TRY(check_image(mask, "mask"));
    if (size < 1) return sd_fail(SD_ERR_ARG, "NS-LPIPS: image size %d must be positive", size);
    const int64_t S = (int64_t)size * size;
    SD_TRY(check_output(source_bg, 3 * S, "the masked source (1, 3, size, size)"));
    SD_TRY(check_output(edited_bg, 3 * S, "the masked edit (1, 3, size, size)"));
    if (mask_gray) SD_TRY(check_output(mask_gray, S, "the grey mask (size, size)"));

    /* Resize((size, size)) on each PIL image: Pillow BILINEAR, aspect ratio not kept. */
    sd_image src = {0}, edit = {0}, msk = {0};
    sd_status st = sd_image_resize_bilinear(source, size, size, &src);
    if (st == SD_OK) st = sd_image_resize_bilinear(edited, size, size, &edit);
    if (st == SD_OK) st = sd_image_resize_bilinear(mask, size, size, &msk);
    if (st == SD_OK) {
        float *out_src = sd_f32(source_bg), *out_edit = sd_f32(edited_bg); /* [3, S] each */
        for (int64_t p = 0; p < S; p++) {
            /* ToTensor: u8 / 255 in float32 */
            const uint8_t *m = msk.data + 3 * p;
            const float gray = torchvision_gray(m[0] / 255.0f, m[1] / 255.0f, m[2] / 255.0f);
            if (mask_gray) sd_f32(mask_gray)[p] = gray;
            /* the soft mask, repeated over the channels (the 0.5 threshold is discarded) */
            for (int ch = 0; ch < 3; ch++) {
                out_src[ch * S + p] = (src.data[3 * p + ch] / 255.0f) * gray;
                out_edit[ch * S + p] = (edit.data[3 * p + ch] / 255.0f) * gray;
            }
        }
    }
    sd_image_free(&src);
    sd_image_free(&edit);
    sd_image_free(&msk);
    return st;
}

sd_status sd_ns_lpips_images(sd_ctx *c, const sd_lpips *m, const sd_image *source, const sd_image *edited,
                             const sd_image *mask, const sd_ns_lpips_options *opts, double *out) {
    if (c->status != SD_OK) return c->status;
    if (!out) return c->status = sd_fail(SD_ERR_ARG, "NS-LPIPS: no output given");
    const int size = opts && opts->size > 0 ? opts->size : NS_LPIPS_DEFAULT_SIZE;
    const sd_lpips_range range = opts && opts->range_fix ? SD_LPIPS_INPUT_UNIT : SD_LPIPS_INPUT_AS_IS;
    sd_tensor *source_bg = sd_tensor_new4(SD_F32, 4, 1, 3, size, size);
    sd_tensor *edited_bg = sd_tensor_new4(SD_F32, 4, 1, 3, size, size);
    sd_status st = (source_bg && edited_bg) ? SD_OK : sd_fail(SD_ERR_OOM, "NS-LPIPS: out of host memory");
    if (st == SD_OK) st = sd_ns_lpips_prepare(source, edited, mask, size, source_bg, edited_bg, NULL);
    if (st == SD_OK) {
        st = sd_lpips_distance(c, m, source_bg, edited_bg, range, out, NULL);
    } else {
        sd_ctx_check(c, st);
    }
    sd_tensor_free(source_bg);
    sd_tensor_free(edited_bg);
    return c->status;
}

sd_status sd_ns_lpips_files(sd_ctx *c, const sd_lpips *m, const char *source_path, const char *edited_path,
                            const char *mask_path, const sd_ns_lpips_options *opts, double *out) {
    if (c->status != SD_OK) return c->status;
    const char *paths[3] = {source_path, edited_path, mask_path};
    static const char *const which[3] = {"source", "edited", "mask"};
    sd_image images[3] = {{0}};
    sd_status st = SD_OK;
    for (int i = 0; i < 3 && st == SD_OK; i++) {
        if (!paths[i] || !*paths[i]) {
            st = sd_fail(SD_ERR_ARG, "NS-LPIPS: no %s image given", which[i]);
        } else if ((st = sd_image_load(paths[i], &images[i])) != SD_OK) {
            /* sd_image_load's message names the file; say which of the three it is */
            sd_fail_context(st, "NS-LPIPS %s image: ", which[i]);
        }
    }
    if (st == SD_OK) {
        sd_ns_lpips_images(c, m, &images[0], &images[1], &images[2], opts, out);
    } else {
        sd_ctx_check(c, st);
    }
    for (int i = 0; i < 3; i++) sd_image_free(&images[i]);
    return c->status;
}
