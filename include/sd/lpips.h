/* lpips.h: LPIPS with the AlexNet trunk, and NS-LPIPS, StyleDiffusion's non-edited-region LPIPS
 * (stylediffusion.md §6.1), exactly as the `lpips` PyPI package (0.1.x, weights v0.1) and the
 * reference's eval_metrics/ns_lpips.py compute them.
 *
 * LPIPS(x0, x1), lpips.LPIPS(net='alex', version='0.1', spatial=False) in eval mode:
 *   1. ScalingLayer: (x - shift[c]) / scale[c], shift (-0.030, -0.088, -0.188), scale (0.458, 0.448,
 *      0.450) (float32, as torch.Tensor holds them);
 *   2. torchvision AlexNet `features`, cut after each ReLU into relu1..relu5:
 *        conv 11x11/4 pad 2 (3 -> 64), ReLU                          -> relu1 (64 ch)
 *        maxpool 3/2, conv 5x5 pad 2 (64 -> 192), ReLU               -> relu2 (192 ch)
 *        maxpool 3/2, conv 3x3 pad 1 (192 -> 384), ReLU              -> relu3 (384 ch)
 *        conv 3x3 pad 1 (384 -> 256), ReLU                           -> relu4 (256 ch)
 *        conv 3x3 pad 1 (256 -> 256), ReLU                           -> relu5 (256 ch)
 *      (a 256x256 input gives 63², 31², 15², 15², 15²);
 *   3. per layer k: unit-normalise each position's channel vector, f / (sqrt(Σ_c f²) + 1e-10)
 *      (lpips.normalize_tensor), for both images; d = (f0 - f1)²;
 *   4. lin_k: a 1x1 conv C_k -> 1 without bias (its Dropout is the identity in eval mode), then
 *      the mean over the positions;
 *   5. the distance is the sum of the five layer values.
 * LPIPS expects inputs in [-1, 1]; forward(..., normalize=True) first maps [0, 1] inputs there.
 *
 * Weights: one safetensors file with torchvision's AlexNet names for the trunk
 * ("features.0.weight" (64, 3, 11, 11), "features.0.bias", "features.3.*", "features.6.*",
 * "features.8.*", "features.10.*") and the lpips package's names for the lin layers
 * ("lin0.model.1.weight" (1, 64, 1, 1) ... "lin4.model.1.weight" (1, 256, 1, 1)).
 * tools/convert_lpips.py writes it from torchvision's alexnet-owt-7be5be79.pth and the package's
 * weights/v0.1/alex.pth.
 *
 * Precision: the trunk runs in fp32 on the context's backend; the head (steps 3-5) runs on the
 * host, with the sums over channels and positions in double, so the distance agrees with the
 * package's fp32 result to ~1e-6 relative. */
#ifndef SD_LPIPS_H
#define SD_LPIPS_H

#include "sd/image.h"
#include "sd/io.h"
#include "sd/nn.h"

#ifdef __cplusplus
extern "C" {
#endif

#define SD_LPIPS_LAYERS 5

/* Channels of relu1..relu5 (and the lin layers' inputs). */
extern const int64_t SD_LPIPS_CHANNELS[SD_LPIPS_LAYERS];

typedef struct sd_lpips {
    /* features.0, .3, .6, .8, .10: weight (C_out, C_in, k, k), bias (C_out) */
    sd_conv_w conv[SD_LPIPS_LAYERS];
    /* lin{k}.model.1.weight: (1, C_k, 1, 1), no bias */
    sd_tensor *lin[SD_LPIPS_LAYERS];
    sd_weights *owned; /* the store sd_lpips_load filled, freed on release */
} sd_lpips;

/* Binds every tensor by name with a shape check; fails naming the store's source and the first
 * missing or wrong-shaped tensor. Warns about tensors left unused (torchvision's classifier, when
 * a whole AlexNet checkpoint was merged in). Borrows `w`'s tensors: keep `w` alive. */
sd_status sd_lpips_bind(sd_lpips *m, sd_weights *w);

/* Loads and binds a safetensors file (see above); the model owns its weights. A missing or
 * unreadable file fails naming it. sd_lpips_release frees what it holds (safe on a zeroed or
 * failed model). The weights load on the host: to run on a CUDA context, move them there once
 * first with sd_ctx_adopt_weights(c, m->owned). */
sd_status sd_lpips_load(const char *safetensors_path, sd_lpips *m);
void sd_lpips_release(sd_lpips *m);

/* How LPIPS receives its inputs. */
typedef enum sd_lpips_range {
    /* As given: the package's default forward(normalize=False), which expects [-1, 1]. */
    SD_LPIPS_INPUT_AS_IS = 0,
    /* forward(normalize=True): inputs in [0, 1] are mapped to 2x - 1 first. */
    SD_LPIPS_INPUT_UNIT = 1,
} sd_lpips_range;

/* ScalingLayer + the AlexNet trunk: x [B, 3, H, W] (H, W >= 31: smaller inputs leave no
 * position after the second pool and fail) on the context's device, as passed to LPIPS.forward
 * (already in the range `range` says) -> features[k] = relu{k+1}, [B, C_k, H_k, W_k], arena
 * tensors on the context's device. Returns the context's status. */
sd_status sd_lpips_features(sd_ctx *c, const sd_lpips *m, const sd_tensor *x, sd_lpips_range range,
                            sd_tensor *features[SD_LPIPS_LAYERS]);

/* LPIPS between x0 and x1, both [B, 3, H, W] (equal shapes; host or context device):
 * distance[b] for b < B, and, when per_layer is not NULL, per_layer[b·5 + k] = layer k's
 * spatially averaged lin output (the package's retPerLayer values), whose sum is distance[b].
 * The activation arena is restored before returning. */
sd_status sd_lpips_distance(sd_ctx *c, const sd_lpips *m, const sd_tensor *x0, const sd_tensor *x1,
                            sd_lpips_range range, double *distance, double *per_layer);

/* ------------------------------------------------------------------------------------------------
 * NS-LPIPS (src/eval/ns_lpips.c): LPIPS on the non-edited region, eval_metrics/ns_lpips.py.
 *
 * For a source photo, its edit and a background mask (255 where nothing should change; the
 * reference's storemask.py writes it: producing it is not part of this function):
 *   1. each image, converted to RGB, is resized to size x size (256 in the reference) with
 *      torchvision's Resize on a PIL image: Pillow BILINEAR (sd_image_resize_bilinear), whatever
 *      its aspect ratio, then ToTensor: u8 / 255 in float32;
 *   2. the mask tensor goes through torchvision's Grayscale on a *tensor*:
 *      g = 0.2989 r + 0.587 g + 0.114 b in float32 (not PIL's integer "L" conversion); the
 *      reference then thresholds it at 0.5 and throws the result away, so the mask is SOFT, in
 *      [0, 1], repeated to 3 channels;
 *   3. d = LPIPS(source · m, edited · m) with normalize=False although the products are in
 *      [0, 1]: the reference's quirk, reproduced by default (range_fix = 0). range_fix = 1 maps
 *      them to [-1, 1] first (normalize=True), which is what LPIPS was calibrated for: a
 *      deliberate DEVIATION from the reference, whose numbers it does not reproduce.
 * The reference reports the mean of d over a dataset; each call gives one image's d.
 * --------------------------------------------------------------------------------------------- */

typedef struct sd_ns_lpips_options {
    int size;      /* square side the images are resized to; 0 means the reference's 256 */
    int range_fix; /* 0: the reference ([0, 1] into LPIPS as is); 1: mapped to [-1, 1] (deviation) */
} sd_ns_lpips_options;

/* Steps 1-2 on the host: source_bg, edited_bg [1, 3, S, S] = image · mask, and (when not NULL)
 * mask_gray [S, S] or [1, 1, S, S] (any shape of S·S values), all preallocated F32 CPU tensors.
 * The three images may have any sizes. */
sd_status sd_ns_lpips_prepare(const sd_image *source, const sd_image *edited, const sd_image *mask,
                              int size, sd_tensor *source_bg, sd_tensor *edited_bg,
                              sd_tensor *mask_gray);

/* NS-LPIPS of three decoded images (opts NULL: the reference's settings). */
sd_status sd_ns_lpips_images(sd_ctx *c, const sd_lpips *m, const sd_image *source,
                             const sd_image *edited, const sd_image *mask,
                             const sd_ns_lpips_options *opts, double *out);

/* NS-LPIPS of three image files (PNG or JPEG, as sd_image_load reads them); an unreadable file
 * fails naming it and saying which of the three it is. */
sd_status sd_ns_lpips_files(sd_ctx *c, const sd_lpips *m, const char *source_path,
                            const char *edited_path, const char *mask_path,
                            const sd_ns_lpips_options *opts, double *out);

#ifdef __cplusplus
}
#endif
#endif
