/* image.c: PNG/JPEG decoding and PNG encoding, the reference's load_512 crop, and the conversions
 * between uint8 images and [-1, 1] float tensors (stylediffusion.md §1.3).
 *
 * The decoders reproduce what `np.array(PIL.Image.open(path))[:, :, :3]` yields, because the
 * reference feeds exactly those pixels to the VAE. libpng and libjpeg report errors by calling a
 * handler that must not return; both handlers here record the message and longjmp back to the
 * decoding function, so a corrupt file becomes an sd_status instead of an abort. Whole files are
 * read into memory first, so a truncated file ends in a clean "truncated" error rather than a
 * blocking read. */
#include "sd/image.h"

#include <math.h>
#include <setjmp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <png.h>
/* jpeglib.h needs stdio.h (FILE) and size_t before it; jerror.h names the warning codes. */
#include <jpeglib.h>
#include <jerror.h>

/* ------------------------------------------------------------------------------------------------
 * Allocation and size limits
 * --------------------------------------------------------------------------------------------- */

static int size_within_limits(long long width, long long height) {
    return width > 0 && height > 0 && width <= SD_IMAGE_MAX_SIDE && height <= SD_IMAGE_MAX_SIDE &&
           width * height <= SD_IMAGE_MAX_PIXELS;
}

sd_status sd_image_alloc(sd_image *img, int width, int height) {
    memset(img, 0, sizeof *img);
    if (!size_within_limits(width, height))
        return sd_fail(SD_ERR_ARG,
                       "image size %d x %d is not allowed (each side must be 1..%d and the area at "
                       "most %lld pixels)",
                       width, height, SD_IMAGE_MAX_SIDE, SD_IMAGE_MAX_PIXELS);
    size_t bytes = (size_t)width * (size_t)height * 3;
    img->data = malloc(bytes);
    if (!img->data)
        return sd_fail(SD_ERR_OOM, "out of memory allocating a %d x %d image (%zu bytes)", width,
                       height, bytes);
    img->width = width;
    img->height = height;
    return SD_OK;
}

void sd_image_free(sd_image *img) {
    if (!img) return;
    free(img->data);
    memset(img, 0, sizeof *img);
}

/* A decoder calls this as soon as it knows the declared size, before allocating pixels. */
static sd_status check_declared_size(const char *path, const char *kind, unsigned long long width,
                                     unsigned long long height) {
    if (width == 0 || height == 0)
        return sd_fail(SD_ERR_FORMAT, "%s: %s declares an empty image (%llu x %llu)", path, kind,
                       width, height);
    if (width > SD_IMAGE_MAX_SIDE || height > SD_IMAGE_MAX_SIDE ||
        width * height > (unsigned long long)SD_IMAGE_MAX_PIXELS)
        return sd_fail(SD_ERR_UNSUPPORTED,
                       "%s: %s declares %llu x %llu pixels; stylediff refuses images over %d "
                       "pixels per side or %lld pixels in all (a limit against corrupt headers)",
                       path, kind, width, height, SD_IMAGE_MAX_SIDE, SD_IMAGE_MAX_PIXELS);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * PNG decoding (libpng)
 * --------------------------------------------------------------------------------------------- */

typedef struct png_memory_source {
    const uint8_t *bytes;
    size_t size;
    size_t pos;
    const char *path;
    char message[256]; /* libpng's description of the failure */
} png_memory_source;

static void png_on_error(png_structp png, png_const_charp message) {
    png_memory_source *src = png_get_error_ptr(png);
    snprintf(src->message, sizeof src->message, "%s", message);
    png_longjmp(png, 1);
}

/* Warnings (bad ancillary chunks, odd ICC profiles) do not stop Pillow either. */
static void png_on_warning(png_structp png, png_const_charp message) {
    png_memory_source *src = png_get_error_ptr(png);
    sd_debug("%s: libpng warning: %s", src->path, message);
}

static void png_read_from_memory(png_structp png, png_bytep dst, size_t n) {
    png_memory_source *src = png_get_io_ptr(png);
    if (n > src->size - src->pos) png_error(png, "unexpected end of file (the PNG is truncated)");
    memcpy(dst, src->bytes + src->pos, n);
    src->pos += n;
}

static sd_status decode_png(const char *path, const uint8_t *bytes, size_t size, sd_image *out) {
    png_memory_source src = {.bytes = bytes, .size = size, .pos = 0, .path = path, .message = ""};
    png_structp png =
        png_create_read_struct(PNG_LIBPNG_VER_STRING, &src, png_on_error, png_on_warning);
    if (!png) return sd_fail(SD_ERR_OOM, "%s: cannot create a PNG decoder", path);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_read_struct(&png, NULL, NULL);
        return sd_fail(SD_ERR_OOM, "%s: cannot create a PNG decoder", path);
    }
    /* Written between setjmp and a possible longjmp, so they must be volatile to be reliable. */
    uint8_t *volatile pixels = NULL;
    png_bytep *volatile rows = NULL;

    if (setjmp(png_jmpbuf(png))) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return sd_fail(SD_ERR_FORMAT, "%s: corrupt PNG: %s", path, src.message);
    }
    png_set_read_fn(png, &src, png_read_from_memory);
    png_read_info(png, info);

    png_uint_32 width = 0, height = 0;
    int bit_depth = 0, color_type = 0;
    png_get_IHDR(png, info, &width, &height, &bit_depth, &color_type, NULL, NULL, NULL);
    sd_status st = check_declared_size(path, "PNG header", width, height);
    if (st != SD_OK) {
        png_destroy_read_struct(&png, &info, NULL);
        return st;
    }

    /* Bring every kind to 8-bit RGB(A) the way Pillow does. strip_16 keeps the high byte (not a
     * rounded rescale), matching Pillow's ";16B" unpackers. Palette expansion also expands a tRNS
     * chunk into alpha, which is dropped below. Gamma, sBIT and ICC chunks are ignored, as in
     * PIL. */
    if (bit_depth == 16) png_set_strip_16(png);
    if (color_type == PNG_COLOR_TYPE_PALETTE) png_set_palette_to_rgb(png);
    if (color_type == PNG_COLOR_TYPE_GRAY && bit_depth < 8) png_set_expand_gray_1_2_4_to_8(png);
    if (color_type == PNG_COLOR_TYPE_GRAY || color_type == PNG_COLOR_TYPE_GRAY_ALPHA)
        png_set_gray_to_rgb(png);
    png_set_interlace_handling(png);
    png_read_update_info(png, info);

    const int channels = png_get_channels(png, info);
    const size_t row_bytes = png_get_rowbytes(png, info);
    if (png_get_bit_depth(png, info) != 8 || (channels != 3 && channels != 4) ||
        row_bytes != (size_t)width * channels) {
        png_destroy_read_struct(&png, &info, NULL);
        return sd_fail(SD_ERR_INTERNAL, "%s: PNG (colour type %d, %d-bit) did not expand to 8-bit "
                       "RGB (got %d channels)", path, color_type, bit_depth, channels);
    }
    pixels = malloc(row_bytes * height);
    rows = malloc(sizeof(png_bytep) * height);
    if (!pixels || !rows) {
        free(pixels);
        free(rows);
        png_destroy_read_struct(&png, &info, NULL);
        return sd_fail(SD_ERR_OOM, "%s: out of memory for a %u x %u PNG", path, (unsigned)width,
                       (unsigned)height);
    }
    for (png_uint_32 y = 0; y < height; y++) rows[y] = pixels + (size_t)y * row_bytes;
    png_read_image(png, rows);
    /* No png_read_end: like Pillow, accept a file whose chunks after the image data are damaged
     * or missing, since they cannot change a pixel. */
    png_destroy_read_struct(&png, &info, NULL);
    free(rows);

    uint8_t *rgb = pixels;
    if (channels == 4) {
        /* Drop alpha in place; the write position never passes the read position. */
        const size_t n = (size_t)width * height;
        for (size_t i = 0; i < n; i++) {
            rgb[3 * i + 0] = rgb[4 * i + 0];
            rgb[3 * i + 1] = rgb[4 * i + 1];
            rgb[3 * i + 2] = rgb[4 * i + 2];
        }
        uint8_t *shrunk = realloc(rgb, n * 3);
        if (shrunk) rgb = shrunk;
    }
    out->width = (int)width;
    out->height = (int)height;
    out->data = rgb;
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * JPEG decoding (libjpeg-turbo)
 * --------------------------------------------------------------------------------------------- */

typedef struct jpeg_failure {
    struct jpeg_error_mgr manager; /* first, so libjpeg's err pointer is also ours */
    jmp_buf jump;
    const char *path;
    int unsupported; /* a valid JPEG variant this build cannot decode (12-bit, lossless) */
    char message[JMSG_LENGTH_MAX + 64];
} jpeg_failure;

static void jpeg_on_error(j_common_ptr cinfo) {
    jpeg_failure *failure = (jpeg_failure *)cinfo->err;
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    snprintf(failure->message, sizeof failure->message, "%s", text);
    failure->unsupported = cinfo->err->msg_code == JERR_BAD_PRECISION ||
                           cinfo->err->msg_code == JERR_SOF_UNSUPPORTED;
    longjmp(failure->jump, 1);
}

/* libjpeg reports running out of data as a warning and then decodes grey. Pillow refuses such a
 * file ("image file is truncated"), even when only the final EOI marker is missing, so that
 * warning is fatal here. Other warnings (extraneous bytes, corrupt entropy data) do not stop
 * Pillow, whose message hook discards them; they are only logged at debug level. */
static void jpeg_on_message(j_common_ptr cinfo, int level) {
    if (level >= 0) return; /* trace output */
    jpeg_failure *failure = (jpeg_failure *)cinfo->err;
    char text[JMSG_LENGTH_MAX];
    (*cinfo->err->format_message)(cinfo, text);
    if (cinfo->err->msg_code == JWRN_JPEG_EOF) {
        snprintf(failure->message, sizeof failure->message,
                 "unexpected end of file (the JPEG is truncated): %s", text);
        longjmp(failure->jump, 1);
    }
    sd_debug("%s: libjpeg warning: %s", failure->path, text);
}

static sd_status decode_jpeg(const char *path, const uint8_t *bytes, size_t size, sd_image *out) {
    struct jpeg_decompress_struct cinfo;
    jpeg_failure failure;
    memset(&failure, 0, sizeof failure);
    failure.path = path;
    uint8_t *volatile pixels = NULL;

    cinfo.err = jpeg_std_error(&failure.manager);
    failure.manager.error_exit = jpeg_on_error;
    failure.manager.emit_message = jpeg_on_message;
    if (setjmp(failure.jump)) {
        jpeg_destroy_decompress(&cinfo);
        free(pixels);
        if (failure.unsupported)
            return sd_fail(SD_ERR_UNSUPPORTED,
                           "%s: unsupported JPEG variant (only 8-bit baseline/progressive): %s",
                           path, failure.message);
        return sd_fail(SD_ERR_FORMAT, "%s: corrupt JPEG: %s", path, failure.message);
    }
    jpeg_create_decompress(&cinfo);
    jpeg_mem_src(&cinfo, (unsigned char *)bytes, (unsigned long)size);
    jpeg_read_header(&cinfo, TRUE);

    sd_status st = SD_OK;
    if (cinfo.jpeg_color_space == JCS_CMYK || cinfo.jpeg_color_space == JCS_YCCK ||
        cinfo.num_components == 4) {
        st = sd_fail(SD_ERR_UNSUPPORTED,
                     "%s: CMYK JPEGs are not supported (convert the image to RGB first)", path);
    } else if (cinfo.num_components != 1 && cinfo.num_components != 3) {
        st = sd_fail(SD_ERR_UNSUPPORTED, "%s: JPEG with %d colour components is not supported",
                     path, cinfo.num_components);
    } else {
        st = check_declared_size(path, "JPEG header", cinfo.image_width, cinfo.image_height);
    }
    if (st != SD_OK) {
        jpeg_destroy_decompress(&cinfo);
        return st;
    }

    /* Pillow asks for RGB (or L) and leaves everything else at libjpeg's defaults: the accurate
     * integer IDCT (JDCT_ISLOW) and fancy (triangle) chroma upsampling. Grey converts to R=G=B. */
    cinfo.out_color_space = JCS_RGB;
    jpeg_start_decompress(&cinfo);
    if (cinfo.output_components != 3) {
        jpeg_destroy_decompress(&cinfo);
        return sd_fail(SD_ERR_INTERNAL, "%s: libjpeg produced %d components, expected RGB", path,
                       cinfo.output_components);
    }
    const size_t row_bytes = (size_t)cinfo.output_width * 3;
    pixels = malloc(row_bytes * cinfo.output_height);
    if (!pixels) {
        jpeg_destroy_decompress(&cinfo);
        return sd_fail(SD_ERR_OOM, "%s: out of memory for a %u x %u JPEG", path,
                       (unsigned)cinfo.output_width, (unsigned)cinfo.output_height);
    }
    while (cinfo.output_scanline < cinfo.output_height) {
        JSAMPROW row = pixels + (size_t)cinfo.output_scanline * row_bytes;
        jpeg_read_scanlines(&cinfo, &row, 1);
    }
    /* Reads up to EOI, which turns a file missing its last bytes into the truncation error. */
    jpeg_finish_decompress(&cinfo);
    out->width = (int)cinfo.output_width;
    out->height = (int)cinfo.output_height;
    out->data = pixels;
    jpeg_destroy_decompress(&cinfo);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * Loading
 * --------------------------------------------------------------------------------------------- */

static int starts_with(const uint8_t *bytes, size_t size, const char *magic, size_t n) {
    return size >= n && memcmp(bytes, magic, n) == 0;
}

/* Names formats that are images but that this build does not read, for a more useful message. */
static const char *other_image_format(const uint8_t *b, size_t n) {
    if (starts_with(b, n, "GIF87a", 6) || starts_with(b, n, "GIF89a", 6)) return "GIF";
    if (starts_with(b, n, "BM", 2)) return "BMP";
    if (n >= 12 && memcmp(b, "RIFF", 4) == 0 && memcmp(b + 8, "WEBP", 4) == 0) return "WebP";
    if (starts_with(b, n, "II*\0", 4) || starts_with(b, n, "MM\0*", 4)) return "TIFF";
    if (n >= 12 && memcmp(b + 4, "ftyp", 4) == 0) return "HEIF/AVIF";
    return NULL;
}

sd_status sd_image_load(const char *path, sd_image *out) {
    if (!out) return sd_fail(SD_ERR_ARG, "sd_image_load: no output image given");
    memset(out, 0, sizeof *out);
    if (!path || !*path) return sd_fail(SD_ERR_ARG, "sd_image_load: empty path");
    char *file = NULL;
    size_t size = 0;
    SD_TRY(sd_read_file(path, &file, &size));
    const uint8_t *bytes = (const uint8_t *)file;

    sd_status st;
    static const char png_magic[8] = {'\x89', 'P', 'N', 'G', '\r', '\n', '\x1a', '\n'};
    if (size == 0) {
        st = sd_fail(SD_ERR_FORMAT, "%s: empty file, not an image", path);
    } else if (starts_with(bytes, size, png_magic, sizeof png_magic)) {
        st = decode_png(path, bytes, size, out);
    } else if (starts_with(bytes, size, "\xff\xd8\xff", 3)) {
        st = decode_jpeg(path, bytes, size, out);
    } else {
        const char *other = other_image_format(bytes, size);
        if (other)
            st = sd_fail(SD_ERR_UNSUPPORTED,
                         "%s: is a %s image; stylediff reads only PNG and JPEG", path, other);
        else
            st = sd_fail(SD_ERR_FORMAT, "%s: not a PNG or JPEG image (unrecognised first bytes)",
                         path);
    }
    free(file);
    if (st != SD_OK) memset(out, 0, sizeof *out);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * load_512
 * --------------------------------------------------------------------------------------------- */

static long long min_ll(long long a, long long b) { return a < b ? a : b; }

/* Python's slice a[start:stop] on a sequence of length n, step 1: negative bounds count from the
 * end, everything is clipped to [0, n], and stop < start gives an empty range. */
static void python_slice(long long n, long long start, long long stop, long long *lo,
                         long long *hi) {
    if (start < 0) start = start + n < 0 ? 0 : start + n;
    if (start > n) start = n;
    if (stop < 0) stop = stop + n < 0 ? 0 : stop + n;
    if (stop > n) stop = n;
    *lo = start;
    *hi = stop < start ? start : stop;
}

static sd_status crop_image(const sd_image *src, int x0, int y0, int width, int height,
                            sd_image *out) {
    SD_TRY(sd_image_alloc(out, width, height));
    for (int y = 0; y < height; y++)
        memcpy(out->data + (size_t)y * width * 3,
               src->data + ((size_t)(y0 + y) * src->width + x0) * 3, (size_t)width * 3);
    return SD_OK;
}

sd_status sd_image_load_512(const char *path, int left, int right, int top, int bottom, int size,
                            sd_image *out) {
    if (!out) return sd_fail(SD_ERR_ARG, "load_512: no output image given");
    memset(out, 0, sizeof *out);
    if (size <= 0 || size > SD_IMAGE_MAX_SIDE)
        return sd_fail(SD_ERR_ARG, "%s: load_512 output size %d must be in 1..%d", path, size,
                       SD_IMAGE_MAX_SIDE);
    sd_image full = {0};
    SD_TRY(sd_image_load(path, &full));

    /* The reference, line by line (long long so that no offset can overflow):
     *   left = min(left, w - 1); right = min(right, w - left - 1)
     *   top = min(top, h - left - 1)          <- uses left, not top: a quirk kept on purpose
     *   bottom = min(bottom, h - top - 1)
     *   image = image[top:h - bottom, left:w - right] */
    const long long h = full.height, w = full.width;
    long long l = min_ll(left, w - 1);
    long long r = min_ll(right, w - l - 1);
    long long t = min_ll(top, h - l - 1);
    long long b = min_ll(bottom, h - t - 1);
    long long row_lo, row_hi, col_lo, col_hi;
    python_slice(h, t, h - b, &row_lo, &row_hi);
    python_slice(w, l, w - r, &col_lo, &col_hi);

    /* Then the centre square: the longer side loses (long - short) // 2 from its start. */
    long long ch = row_hi - row_lo, cw = col_hi - col_lo;
    if (ch < cw) {
        col_lo += (cw - ch) / 2;
        cw = ch;
    } else if (cw < ch) {
        row_lo += (ch - cw) / 2;
        ch = cw;
    }
    if (ch <= 0 || cw <= 0) {
        sd_image_free(&full);
        return sd_fail(SD_ERR_ARG,
                       "%s: offsets left=%d right=%d top=%d bottom=%d crop the %lld x %lld image "
                       "to nothing",
                       path, left, right, top, bottom, w, h);
    }

    sd_status st;
    if (ch == size) {
        st = crop_image(&full, (int)col_lo, (int)row_lo, (int)cw, (int)ch, out);
    } else {
        sd_image square = {0};
        st = crop_image(&full, (int)col_lo, (int)row_lo, (int)cw, (int)ch, &square);
        if (st == SD_OK) st = sd_image_resize_bicubic(&square, size, size, out);
        sd_image_free(&square);
    }
    sd_image_free(&full);
    if (st != SD_OK) return sd_fail_context(st, "%s: load_512: ", path);
    return SD_OK;
}

/* ------------------------------------------------------------------------------------------------
 * PNG encoding
 * --------------------------------------------------------------------------------------------- */

typedef struct png_memory_sink {
    uint8_t *bytes;
    size_t size, capacity;
    char message[256];
} png_memory_sink;

static void png_sink_on_error(png_structp png, png_const_charp message) {
    png_memory_sink *sink = png_get_error_ptr(png);
    snprintf(sink->message, sizeof sink->message, "%s", message);
    png_longjmp(png, 1);
}

static void png_sink_on_warning(png_structp png, png_const_charp message) {
    (void)png;
    sd_debug("libpng warning while encoding: %s", message);
}

static void png_write_to_memory(png_structp png, png_bytep data, size_t n) {
    png_memory_sink *sink = png_get_io_ptr(png);
    if (n > sink->capacity - sink->size) {
        size_t want = sink->capacity ? sink->capacity : 65536;
        while (want - sink->size < n) {
            if (want > SIZE_MAX / 2) png_error(png, "encoded PNG too large");
            want *= 2;
        }
        uint8_t *grown = realloc(sink->bytes, want);
        if (!grown) png_error(png, "out of memory");
        sink->bytes = grown;
        sink->capacity = want;
    }
    memcpy(sink->bytes + sink->size, data, n);
    sink->size += n;
}

static void png_flush_nothing(png_structp png) { (void)png; }

sd_status sd_image_save_png(const char *path, const sd_image *img) {
    if (!path || !*path) return sd_fail(SD_ERR_ARG, "sd_image_save_png: empty path");
    if (!img || !img->data || !size_within_limits(img->width, img->height))
        return sd_fail(SD_ERR_ARG, "%s: cannot save an empty or oversized image", path);

    png_memory_sink sink = {0};
    png_structp png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &sink, png_sink_on_error,
                                              png_sink_on_warning);
    if (!png) return sd_fail(SD_ERR_OOM, "%s: cannot create a PNG encoder", path);
    png_infop info = png_create_info_struct(png);
    if (!info) {
        png_destroy_write_struct(&png, NULL);
        return sd_fail(SD_ERR_OOM, "%s: cannot create a PNG encoder", path);
    }
    png_bytep *volatile rows = NULL;
    if (setjmp(png_jmpbuf(png))) {
        png_destroy_write_struct(&png, &info);
        free(rows);
        free(sink.bytes);
        return sd_fail(SD_ERR_IO, "%s: PNG encoding failed: %s", path, sink.message);
    }
    png_set_write_fn(png, &sink, png_write_to_memory, png_flush_nothing);
    png_set_IHDR(png, info, (png_uint_32)img->width, (png_uint_32)img->height, 8,
                 PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
                 PNG_FILTER_TYPE_DEFAULT);
    rows = malloc(sizeof(png_bytep) * (size_t)img->height);
    if (!rows) png_error(png, "out of memory");
    for (int y = 0; y < img->height; y++) rows[y] = img->data + (size_t)y * img->width * 3;
    png_write_info(png, info);
    png_write_image(png, rows);
    png_write_end(png, NULL);
    png_destroy_write_struct(&png, &info);
    free(rows);

    sd_status st = sd_write_file_atomic(path, sink.bytes, sink.size);
    free(sink.bytes);
    return st;
}

/* ------------------------------------------------------------------------------------------------
 * Tensor conversions and PSNR
 * --------------------------------------------------------------------------------------------- */

sd_status sd_image_to_tensor(const sd_image *img, sd_tensor *out) {
    if (!img || !img->data || img->width <= 0 || img->height <= 0)
        return sd_fail(SD_ERR_ARG, "image to tensor: the image is empty");
    if (!out) return sd_fail(SD_ERR_ARG, "image to tensor: no output tensor given");
    const int64_t want[4] = {1, 3, img->height, img->width};
    SD_TRY(sd_check_shape(out, "image tensor", SD_F32, 4, want));
    if (out->device != SD_DEVICE_CPU)
        return sd_fail(SD_ERR_ARG, "image tensor: must be on the CPU (device %d given)",
                       out->device);

    /* torch's `uint8.float() / 127.5 - 1`: a true float32 division (not a multiply by the
     * reciprocal, which differs for some values), then a float32 subtraction. */
    float value_of[256];
    for (int v = 0; v < 256; v++) value_of[v] = (float)v / 127.5f - 1.0f;

    const size_t plane = (size_t)img->width * img->height;
    float *dst = sd_f32(out);
    for (size_t i = 0; i < plane; i++) {
        dst[i] = value_of[img->data[3 * i + 0]];
        dst[plane + i] = value_of[img->data[3 * i + 1]];
        dst[2 * plane + i] = value_of[img->data[3 * i + 2]];
    }
    return SD_OK;
}

/* One sample of latent2image, in float32 throughout: torch's (x / 2 + 0.5).clamp(0, 1), numpy's
 * float32 `* 255` and `.astype(np.uint8)`, which truncates toward zero. x / 2 is exact, so a
 * fused multiply-add of x * 0.5 + 0.5 would round identically. */
static inline uint8_t latent2image_sample(float x) {
    float y = x / 2.0f + 0.5f;
    if (y < 0.0f) y = 0.0f;
    if (y > 1.0f) y = 1.0f;
    float scaled = y * 255.0f;
    return (uint8_t)scaled;
}

sd_status sd_image_from_tensor(const sd_tensor *t, int batch_index, sd_image *out) {
    if (!out) return sd_fail(SD_ERR_ARG, "tensor to image: no output image given");
    memset(out, 0, sizeof *out);
    if (!t || !t->data) return sd_fail(SD_ERR_ARG, "tensor to image: no tensor given");
    char shape[96];
    sd_shape_str(t->ndim, t->shape, shape, sizeof shape);
    if (t->dtype != SD_F32)
        return sd_fail(SD_ERR_SHAPE, "tensor to image: expected F32, got %s %s",
                       sd_dtype_name(t->dtype), shape);
    if (t->device != SD_DEVICE_CPU)
        return sd_fail(SD_ERR_ARG, "tensor to image: tensor %s must be on the CPU", shape);
    int64_t batch, height, width;
    if (t->ndim == 3 && t->shape[0] == 3) {
        batch = 1;
        height = t->shape[1];
        width = t->shape[2];
    } else if (t->ndim == 4 && t->shape[1] == 3) {
        batch = t->shape[0];
        height = t->shape[2];
        width = t->shape[3];
    } else {
        return sd_fail(SD_ERR_SHAPE, "tensor to image: expected (3, H, W) or (B, 3, H, W), got %s",
                       shape);
    }
    if (batch_index < 0 || batch_index >= batch)
        return sd_fail(SD_ERR_ARG, "tensor to image: batch index %d out of range for %s",
                       batch_index, shape);
    if (!size_within_limits(width, height))
        return sd_fail(SD_ERR_SHAPE, "tensor to image: %s is not a valid image size", shape);

    const size_t plane = (size_t)width * (size_t)height;
    const float *src = sd_f32(t) + (size_t)batch_index * 3 * plane;
    for (size_t i = 0; i < 3 * plane; i++)
        if (isnan(src[i]))
            return sd_fail(SD_ERR_NUMERIC, "tensor to image: NaN at channel %zu, pixel %zu of %s",
                           i / plane, i % plane, shape);
    SD_TRY(sd_image_alloc(out, (int)width, (int)height));
    for (size_t i = 0; i < plane; i++)
        for (int c = 0; c < 3; c++) out->data[3 * i + c] = latent2image_sample(src[c * plane + i]);
    return SD_OK;
}

double sd_image_psnr(const sd_image *a, const sd_image *b) {
    if (!a || !b || !a->data || !b->data || a->width != b->width || a->height != b->height ||
        a->width <= 0 || a->height <= 0)
        return NAN;
    const size_t n = (size_t)a->width * a->height * 3;
    double sum_sq = 0.0;
    for (size_t i = 0; i < n; i++) {
        const double d = (double)a->data[i] - (double)b->data[i];
        sum_sq += d * d;
    }
    if (sum_sq == 0.0) return INFINITY;
    return 10.0 * log10(255.0 * 255.0 / (sum_sq / (double)n));
}
