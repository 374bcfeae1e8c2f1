/* image_resize.c: Pillow's BICUBIC and BILINEAR resamplers for 8-bit RGB, reproduced bit for bit.
 *
 * The reference's load_512 ends in `Image.fromarray(x).resize((512, 512))`, whose default filter
 * is BICUBIC; NS-LPIPS (stylediffusion.md §6.1) resizes its images with torchvision's
 * Resize((256, 256)) on PIL images, which is `img.resize((256, 256), Image.BILINEAR)`. To feed the
 * models exactly the pixels the Python reference feeds them, this file follows Pillow's
 * libImaging/Resample.c (Pillow 13.0.0; the weight and fixed-point code is the same in every
 * version from 9.2 to 13.0) in every detail that can change a pixel. The two filters differ only
 * in their kernel and support (Pillow's `struct filter`); everything below is shared:
 *
 *  - Separable filtering in two passes with an 8-bit clipped intermediate image. Which pass runs
 *    first matters, because the intermediate is rounded: Pillow 13 runs the vertical pass first
 *    only when the height shrinks by more than twice as many pixels as the width does. A pass
 *    whose dimension does not change is skipped entirely.
 *    Version note: that rule appeared after Pillow 12.2 (it is in 13.0). Pillow 9.2 to 12.2
 *    (sources compared; the reference ran in a 2022 environment) always filter horizontally
 *    first. Both agree whenever the rule does not fire, in particular for every square-to-square
 *    resize, which is all load_512 ever does. This file follows Pillow 13, the project's oracle.
 *  - Per output sample, the window and weights are computed in double precision exactly as Pillow
 *    writes the expressions (same operation order, the kernel argument multiplied by the
 *    reciprocal of the filter scale, weights divided by their sum), then converted to 22-bit fixed
 *    point with round-half-away-from-zero. On downscale the kernel is stretched by the scale
 *    factor (antialiasing), so its support grows from `support` (2 for bicubic, 1 for bilinear)
 *    to support * scale input pixels on each side.
 *  - Accumulation in 32-bit integers starting from half a unit (1 << 21), then an arithmetic
 *    shift by 22 bits and a clip to [0, 255].
 *
 * Build note: the weight arithmetic must not be contracted into fused multiply-adds, or a weight
 * can differ in its last bit from Pillow's. The Makefile compiles with -std=c11, under which GCC
 * does not contract (-ffp-contract=off), and its x86-64-v2 target has no FMA instructions anyway.
 */
#include "sd/image.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Pillow's PRECISION_BITS: 32 bits minus 8 for the pixel and 2 of headroom for kernels whose
 * partial sums exceed 1 or go negative. */
enum { WEIGHT_FRACTION_BITS = 22 };

/* Pillow's `struct filter`: a kernel and the half-width of its support at scale 1. */
typedef struct resample_filter {
    double (*kernel)(double x);
    double support;
} resample_filter;

/* Keys' cubic convolution kernel with a = -0.5, written in the same Horner form as Pillow so the
 * double results agree to the last bit. */
static double bicubic_kernel(double x) {
    const double a = -0.5;
    if (x < 0.0) x = -x;
    if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
    if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
    return 0.0;
}
static const resample_filter BICUBIC_FILTER = {bicubic_kernel, 2.0};

/* The triangle (tent) kernel of Pillow's bilinear_filter. */
static double bilinear_kernel(double x) {
    if (x < 0.0) x = -x;
    if (x < 1.0) return 1.0 - x;
    return 0.0;
}
static const resample_filter BILINEAR_FILTER = {bilinear_kernel, 1.0};

/* The fixed-point filter for one axis: output sample i reads input samples
 * first[i] .. first[i] + count[i] - 1 with weights weight[i * stride ...]. */
typedef struct resample_axis {
    int out_size;
    int stride; /* weights reserved per output sample (Pillow's ksize) */
    int *first;
    int *count;
    int32_t *weight;
} resample_axis;

static void axis_free(resample_axis *axis) {
    free(axis->first);
    free(axis->count);
    free(axis->weight);
    memset(axis, 0, sizeof *axis);
}

/* Pillow's precompute_coeffs followed by normalize_coeffs_8bpc, for a box covering the whole
 * input (in0 = 0, in1 = in_size). */
static sd_status axis_build(const resample_filter *filter, int in_size, int out_size,
                            resample_axis *axis) {
    memset(axis, 0, sizeof *axis);
    /* Pillow keeps the box edges as floats and subtracts them before widening; for sizes below
     * 2^24 that is exact, so the ratio below is the same double. */
    const double scale = (double)in_size / out_size;
    const double filter_scale = scale < 1.0 ? 1.0 : scale;
    const double support = filter->support * filter_scale;
    const int stride = (int)ceil(support) * 2 + 1;
    const double inv_filter_scale = 1.0 / filter_scale;

    axis->out_size = out_size;
    axis->stride = stride;
    axis->first = malloc((size_t)out_size * sizeof(int));
    axis->count = malloc((size_t)out_size * sizeof(int));
    axis->weight = calloc((size_t)out_size * (size_t)stride, sizeof(int32_t));
    double *w = malloc((size_t)stride * sizeof(double));
    if (!axis->first || !axis->count || !axis->weight || !w) {
        free(w);
        axis_free(axis);
        return sd_fail(SD_ERR_OOM, "image resize: out of memory for %d x %d filter weights",
                       out_size, stride);
    }

    for (int i = 0; i < out_size; i++) {
        const double center = (i + 0.5) * scale;
        /* Window edges rounded as Pillow does: add 0.5 and truncate toward zero. */
        int lo = (int)(center - support + 0.5);
        if (lo < 0) lo = 0;
        int hi = (int)(center + support + 0.5);
        if (hi > in_size) hi = in_size;
        const int n = hi - lo;

        double total = 0.0;
        for (int t = 0; t < n; t++) {
            w[t] = filter->kernel((t + lo - center + 0.5) * inv_filter_scale);
            total += w[t];
        }
        if (total != 0.0)
            for (int t = 0; t < n; t++) w[t] /= total;

        int32_t *fixed = &axis->weight[(size_t)i * stride];
        const double unit = (double)(1 << WEIGHT_FRACTION_BITS);
        for (int t = 0; t < n; t++)
            fixed[t] = w[t] < 0 ? (int32_t)(-0.5 + w[t] * unit) : (int32_t)(0.5 + w[t] * unit);
        axis->first[i] = lo;
        axis->count[i] = n;
    }
    free(w);
    return SD_OK;
}

/* Shifts the 22-bit fixed-point sum back to 8 bits and clips. Negative sums clip to 0 before the
 * shift, which is what Pillow's lookup table does for them, and keeps the shift well defined. */
static inline uint8_t clip_fixed_to_u8(int32_t sum) {
    if (sum < 0) return 0;
    int32_t v = sum >> WEIGHT_FRACTION_BITS;
    return v > 255 ? 255 : (uint8_t)v;
}

/* Horizontal pass: rows row_begin .. row_begin + out->height - 1 of `in` into `out`. */
static void resample_rows(const sd_image *in, int row_begin, const resample_axis *axis,
                          sd_image *out) {
    const int out_w = out->width;
#pragma omp parallel for schedule(static) if ((int64_t)out_w * out->height > (1 << 16))
    for (int y = 0; y < out->height; y++) {
        const uint8_t *src = in->data + (size_t)(y + row_begin) * in->width * 3;
        uint8_t *dst = out->data + (size_t)y * out_w * 3;
        for (int x = 0; x < out_w; x++) {
            const int32_t *w = &axis->weight[(size_t)x * axis->stride];
            const uint8_t *p = src + (size_t)axis->first[x] * 3;
            int32_t r = 1 << (WEIGHT_FRACTION_BITS - 1), g = r, b = r;
            for (int t = 0; t < axis->count[x]; t++) {
                r += p[3 * t + 0] * w[t];
                g += p[3 * t + 1] * w[t];
                b += p[3 * t + 2] * w[t];
            }
            dst[3 * x + 0] = clip_fixed_to_u8(r);
            dst[3 * x + 1] = clip_fixed_to_u8(g);
            dst[3 * x + 2] = clip_fixed_to_u8(b);
        }
    }
}

/* Vertical pass: output row y mixes input rows row_offset + first[y] ... The integer sums are
 * exact, so accumulating tap by tap over a whole row gives Pillow's per-pixel result. */
static sd_status resample_columns(const sd_image *in, int row_offset, const resample_axis *axis,
                                  sd_image *out) {
    const size_t row_len = (size_t)out->width * 3;
    sd_status status = SD_OK;
#pragma omp parallel if ((int64_t)out->width * out->height > (1 << 16))
    {
        int32_t *acc = malloc(row_len * sizeof(int32_t));
        if (!acc) {
#pragma omp critical(sd_image_resize_oom)
            status = SD_ERR_OOM;
        }
#pragma omp for schedule(static)
        for (int y = 0; y < out->height; y++) {
            if (!acc) continue;
            for (size_t j = 0; j < row_len; j++) acc[j] = 1 << (WEIGHT_FRACTION_BITS - 1);
            const int32_t *w = &axis->weight[(size_t)y * axis->stride];
            for (int t = 0; t < axis->count[y]; t++) {
                const uint8_t *src = in->data + (size_t)(row_offset + axis->first[y] + t) * row_len;
                const int32_t wt = w[t];
                for (size_t j = 0; j < row_len; j++) acc[j] += src[j] * wt;
            }
            uint8_t *dst = out->data + (size_t)y * row_len;
            for (size_t j = 0; j < row_len; j++) dst[j] = clip_fixed_to_u8(acc[j]);
        }
        free(acc);
    }
    if (status != SD_OK)
        return sd_fail(SD_ERR_OOM, "image resize: out of memory for a %zu-byte row buffer",
                       row_len * sizeof(int32_t));
    return SD_OK;
}

/* The resize both public entry points share: Pillow's ImagingResampleInner for one filter. */
static sd_status resize_with_filter(const resample_filter *filter, const sd_image *src, int width,
                                    int height, sd_image *out) {
    if (!out) return sd_fail(SD_ERR_ARG, "image resize: no output image given");
    memset(out, 0, sizeof *out);
    if (!src || !src->data || src->width <= 0 || src->height <= 0)
        return sd_fail(SD_ERR_ARG, "image resize: the source image is empty");
    if (width <= 0 || height <= 0)
        return sd_fail(SD_ERR_ARG, "image resize: target size %d x %d must be positive", width,
                       height);
    const int in_w = src->width, in_h = src->height;
    const int need_horizontal = width != in_w;
    const int need_vertical = height != in_h;

    if (!need_horizontal && !need_vertical) {
        SD_TRY(sd_image_alloc(out, width, height));
        memcpy(out->data, src->data, (size_t)width * height * 3);
        return SD_OK;
    }

    /* Pillow's pass order: vertical first only when the height loses more than twice as many
     * pixels as the width (to make the second pass cheaper). The order changes the rounding of
     * the 8-bit intermediate, so it has to be copied, not improved. */
    const int64_t height_loss = (int64_t)in_h - height, width_loss = (int64_t)in_w - width;
    const int horizontal_first = !(height_loss > 0 && height_loss > width_loss * 2);

    resample_axis horiz = {0}, vert = {0};
    sd_image temp = {0};
    sd_status st = SD_OK;
    if (need_vertical && (st = axis_build(filter, in_h, height, &vert)) != SD_OK) goto done;
    if (need_horizontal && (st = axis_build(filter, in_w, width, &horiz)) != SD_OK) goto done;

    if (horizontal_first) {
        if (need_horizontal) {
            /* Only rows that some vertical window touches are filtered horizontally (all rows
             * when there is no vertical pass). */
            const int row_begin = need_vertical ? vert.first[0] : 0;
            const int row_end =
                need_vertical ? vert.first[height - 1] + vert.count[height - 1] : in_h;
            sd_image *stage = need_vertical ? &temp : out;
            if ((st = sd_image_alloc(stage, width, row_end - row_begin)) != SD_OK) goto done;
            resample_rows(src, row_begin, &horiz, stage);
            if (need_vertical) {
                if ((st = sd_image_alloc(out, width, height)) != SD_OK) goto done;
                st = resample_columns(&temp, -row_begin, &vert, out);
            }
        } else {
            if ((st = sd_image_alloc(out, width, height)) != SD_OK) goto done;
            st = resample_columns(src, 0, &vert, out);
        }
    } else {
        /* need_vertical is certain here: the height shrinks. */
        sd_image *stage = need_horizontal ? &temp : out;
        if ((st = sd_image_alloc(stage, in_w, height)) != SD_OK) goto done;
        if ((st = resample_columns(src, 0, &vert, stage)) != SD_OK) goto done;
        if (need_horizontal) {
            if ((st = sd_image_alloc(out, width, height)) != SD_OK) goto done;
            resample_rows(&temp, 0, &horiz, out);
        }
    }

done:
    axis_free(&horiz);
    axis_free(&vert);
    sd_image_free(&temp);
    if (st != SD_OK) sd_image_free(out);
    return st;
}

sd_status sd_image_resize_bicubic(const sd_image *src, int width, int height, sd_image *out) {
    return resize_with_filter(&BICUBIC_FILTER, src, width, height, out);
}

sd_status sd_image_resize_bilinear(const sd_image *src, int width, int height, sd_image *out) {
    return resize_with_filter(&BILINEAR_FILTER, src, width, height, out);
}
