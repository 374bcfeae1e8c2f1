/* image_metrics.c: SSIM of 8-bit RGB images exactly as scikit-image (see image_metrics.h). */
#include "sd/image_metrics.h"

#include <math.h>
#include <stdlib.h>

#define SSIM_WIN 7
#define SSIM_K1 0.01
#define SSIM_K2 0.03
#define RANGE 255.0

static sd_status same_size(const sd_image *a, const sd_image *b, const char *what) {
    if (a->width != b->width || a->height != b->height)
        return sd_fail(SD_ERR_SHAPE, "%s: images of different sizes (%dx%d and %dx%d)", what, a->width, a->height,
                       b->width, b->height);
    return SD_OK;
}

/* Mean of a 7x7 window of every interior pixel of one channel of f (stride 3, interleaved RGB),
 * for the plane v = f(a, b) given by `kind`: 0 a, 1 b, 2 a², 3 b², 4 ab. Box sums through a
 * summed-area table of doubles: exact for 8-bit inputs (every partial sum is an integer < 2^53). */
static void window_means(const sd_image *a, const sd_image *b, int channel, int kind, double *sat, double *mean) {
    const int W = a->width, H = a->height;
    for (int y = 0; y <= H; y++) sat[(size_t)y * (W + 1)] = 0;
    for (int x = 0; x <= W; x++) sat[x] = 0;
    for (int y = 0; y < H; y++)
        for (int x = 0; x < W; x++) {
            const size_t i = ((size_t)y * W + x) * 3 + channel;
            const double p = a->data[i], q = b->data[i];
            const double v = kind == 0 ? p : kind == 1 ? q : kind == 2 ? p * p : kind == 3 ? q * q : p * q;
            sat[(size_t)(y + 1) * (W + 1) + x + 1] = v + sat[(size_t)y * (W + 1) + x + 1] +
                                                     sat[(size_t)(y + 1) * (W + 1) + x] - sat[(size_t)y * (W + 1) + x];
        }
    const int r = SSIM_WIN / 2, iw = W - 2 * r;
    for (int y = r; y < H - r; y++)
        for (int x = r; x < W - r; x++) {
            const size_t y0 = (size_t)(y - r), y1 = (size_t)(y + r + 1), x0 = (size_t)(x - r), x1 = (size_t)(x + r + 1);
            const double s = sat[y1 * (W + 1) + x1] - sat[y0 * (W + 1) + x1] - sat[y1 * (W + 1) + x0] + sat[y0 * (W + 1) + x0];
            mean[(size_t)(y - r) * iw + (x - r)] = s / (SSIM_WIN * SSIM_WIN);
        }
}

sd_status sd_image_ssim(const sd_image *a, const sd_image *b, const char *what, double *out) {
    SD_TRY(same_size(a, b, what));
    if (a->width < SSIM_WIN || a->height < SSIM_WIN)
        return sd_fail(SD_ERR_SHAPE, "%s: SSIM needs images of at least %dx%d pixels, got %dx%d", what, SSIM_WIN,
                       SSIM_WIN, a->width, a->height);
    const int W = a->width, H = a->height, r = SSIM_WIN / 2;
    const size_t interior = (size_t)(W - 2 * r) * (H - 2 * r);
    double *sat = malloc((size_t)(W + 1) * (H + 1) * sizeof *sat);
    double *m = malloc(5 * interior * sizeof *m);
    if (!sat || !m) {
        free(sat);
        free(m);
        return sd_fail(SD_ERR_OOM, "%s: out of memory for SSIM of %dx%d images", what, W, H);
    }
    const double np = SSIM_WIN * SSIM_WIN, cov_norm = np / (np - 1);
    const double c1 = (SSIM_K1 * RANGE) * (SSIM_K1 * RANGE), c2 = (SSIM_K2 * RANGE) * (SSIM_K2 * RANGE);
    double total = 0;
    for (int ch = 0; ch < 3; ch++) {
        for (int k = 0; k < 5; k++) window_means(a, b, ch, k, sat, m + k * interior);
        double sum = 0;
        for (size_t i = 0; i < interior; i++) {
            const double ux = m[i], uy = m[interior + i];
            const double vx = cov_norm * (m[2 * interior + i] - ux * ux);
            const double vy = cov_norm * (m[3 * interior + i] - uy * uy);
            const double vxy = cov_norm * (m[4 * interior + i] - ux * uy);
            sum += ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2));
        }
        total += sum / (double)interior;
    }
    free(sat);
    free(m);
    *out = total / 3.0;
    return SD_OK;
}
