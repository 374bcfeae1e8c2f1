/* image_metrics.h: reconstruction quality of 8-bit RGB images (stylediffusion.md §6.4), as
 * scikit-image computes it, which is what users of the reference's notebooks report:
 *   PSNR   sd_image_psnr (image.h): 10 log10(255² / MSE) over every sample, which is
 *          skimage.metrics.peak_signal_noise_ratio with data_range 255; +inf for identical images.
 *   SSIM   skimage.metrics.structural_similarity(a, b, channel_axis=-1, data_range=255) with its
 *          defaults: 7x7 uniform window, K1 0.01, K2 0.03, sample covariance (49/48), the mean of
 *          the SSIM map over the pixels at least 3 from the border, averaged over the channels.
 * Both are computed in double on the host (the images are small next to a UNet call). */
#ifndef SD_IMAGE_METRICS_H
#define SD_IMAGE_METRICS_H

#include "sd/image.h"

/* Fails with SD_ERR_SHAPE naming `what` when the sizes differ or a side is under 7 pixels. */
sd_status sd_image_ssim(const sd_image *a, const sd_image *b, const char *what, double *out);

#endif
