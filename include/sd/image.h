/* image.h: 8-bit RGB images in and out, and the reference pre/post-processing
 * (stylediffusion.md §1.3: load_512, image -> [-1, 1] tensor, latent decode -> uint8).
 *
 * Every function that fills an sd_image overwrites *out with a fresh allocation (it does not free
 * what *out held before); on failure *out is left empty ({0, 0, NULL}). Free with sd_image_free. */
#ifndef SD_IMAGE_H
#define SD_IMAGE_H

#include "sd/core.h"

/* Interleaved 8-bit RGB, row-major: pixel (x, y) channel c at data[(y * width + x) * 3 + c]. */
typedef struct sd_image {
    int width, height;
    uint8_t *data;
} sd_image;

/* Sanity limits against corrupt or hostile headers: a PNG or JPEG declaring more is refused
 * (SD_ERR_UNSUPPORTED) before any pixel memory is allocated. 100 megapixels is 300 MB of RGB. */
#define SD_IMAGE_MAX_SIDE 20000
#define SD_IMAGE_MAX_PIXELS 100000000LL

/* Reads a PNG or JPEG, detected by its first bytes, not by its name. Pixels equal what
 * `np.array(PIL.Image.open(path))[:, :, :3]` gives (Pillow 13):
 *  - RGB and RGBA PNGs: RGB as stored, alpha dropped without compositing.
 *  - 16-bit PNGs: the high byte of each sample (Pillow's RGB;16B / RGBA;16B unpackers).
 *  - palette PNGs are expanded through the palette (transparency ignored); grey and grey+alpha
 *    PNGs (1/2/4/8/16-bit) are expanded to R = G = B. Here the reference would crash (numpy has no
 *    third axis) or keep 2 channels; stylediff expands them instead.
 *  - JPEG: libjpeg-turbo with Pillow's settings (integer IDCT, fancy upsampling, RGB output);
 *    grey JPEGs are expanded to RGB; CMYK/YCCK JPEGs fail with SD_ERR_UNSUPPORTED. EXIF
 *    orientation is ignored, as PIL's Image.open ignores it.
 * Errors name the path: SD_ERR_IO (missing, unreadable, not a regular file), SD_ERR_FORMAT (empty,
 * not an image, corrupt or truncated data), SD_ERR_UNSUPPORTED (another image format, CMYK or
 * 12-bit JPEG, dimensions over the limits above). Corrupt or truncated data never aborts or hangs
 * the process. */
sd_status sd_image_load(const char *path, sd_image *out);
/* Writes an 8-bit RGB PNG atomically (temp file + rename). */
sd_status sd_image_save_png(const char *path, const sd_image *img);
void sd_image_free(sd_image *img);
/* Allocates width x height RGB (contents undefined). Fails with SD_ERR_ARG for a size that is not
 * positive or exceeds the limits above. */
sd_status sd_image_alloc(sd_image *img, int width, int height);

/* The reference load_512(path, left, right, top, bottom) with size x size output (size = 512 in
 * the reference): read as sd_image_load, clamp the offsets exactly as the reference does
 * (including its `top = min(top, h - left - 1)` quirk), crop rows top:h-bottom and columns
 * left:w-right with numpy slice semantics (so a negative value counts from the far edge, as in
 * Python), centre-crop to a square of side min(h, w), then resize with sd_image_resize_bicubic
 * (no resampling when the square is already size x size). An empty crop fails with SD_ERR_ARG. */
sd_status sd_image_load_512(const char *path, int left, int right, int top, int bottom, int size,
                            sd_image *out);
/* Bit-exact Pillow Image.resize((width, height), Image.BICUBIC) for 8-bit RGB: a = -0.5 kernel,
 * antialiased (support scaled) on downscale, Pillow's pass order and 22-bit fixed point.
 * Matches Pillow 13. Pillow 9.2 to 12.2 always filter horizontally first, so they differ in
 * rounding when the height shrinks by more than twice as many pixels as the width;
 * square-to-square resizes (all of load_512) are identical in every version. */
sd_status sd_image_resize_bicubic(const sd_image *src, int width, int height, sd_image *out);
/* Bit-exact Pillow Image.resize((width, height), Image.BILINEAR) for 8-bit RGB: the triangle
 * kernel (support 1), antialiased on downscale, with the same passes and fixed point as the
 * bicubic one (one shared implementation). This is what torchvision's Resize does to a PIL image
 * (NS-LPIPS, stylediffusion.md §6.1). Same Pillow-version note as above. */
sd_status sd_image_resize_bilinear(const sd_image *src, int width, int height, sd_image *out);

/* uint8 RGB -> F32 (1, 3, H, W) in [-1, 1]: x / 127.5 - 1 in float32, as torch computes it.
 * `out` must be a preallocated CPU tensor of shape (1, 3, H, W). */
sd_status sd_image_to_tensor(const sd_image *img, sd_tensor *out);
/* F32 CPU tensor (3, H, W) (batch_index 0) or (B, 3, H, W) in [-1, 1] -> uint8 RGB as the
 * reference's latent2image, every step in float32: clamp(x / 2 + 0.5, 0, 1) * 255, truncated (not
 * rounded). A NaN fails with SD_ERR_NUMERIC (numpy's uint8 cast of NaN is undefined). */
sd_status sd_image_from_tensor(const sd_tensor *t, int batch_index, sd_image *out);

/* PSNR in dB between two equal-size images over all channels, 10 log10(255^2 / MSE); +inf when
 * identical, NaN when the sizes differ or an image is empty. */
double sd_image_psnr(const sd_image *a, const sd_image *b);

#endif
