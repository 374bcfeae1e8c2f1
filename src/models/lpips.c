/* lpips.c: LPIPS with the AlexNet trunk (lpips 0.1.x, weights v0.1), see lpips.h.
 *
 * The trunk (convolutions, ReLUs, max pools) runs through the nn layer on the context's backend.
 * The ScalingLayer and the head (channel normalisation, squared difference, lin 1x1 conv, spatial
 * mean, sum over layers) run on the host: the scaling needs a per-channel divide the op table
 * does not have, and the head reduces a few hundred thousand values to five numbers, which is
 * cheaper to do after one download per layer than in kernels, and lets the sums run in double. */
#include "sd/lpips.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "layers.h"

const int64_t SD_LPIPS_CHANNELS[SD_LPIPS_LAYERS] = {64, 192, 384, 256, 256};

/* torchvision AlexNet `features`: the index of each conv in the Sequential (its checkpoint name),
 * its input channels, kernel, stride and padding. A 3x3/2 max pool precedes convs 1 and 2. */
static const struct {
    int index;
    int64_t c_in;
    int kernel, stride, pad, pool_before;
} TRUNK[SD_LPIPS_LAYERS] = {
    {0, 3, 11, 4, 2, 0},
    {3, 64, 5, 1, 2, 1},
    {6, 192, 3, 1, 1, 1},
    {8, 384, 3, 1, 1, 0},
    {10, 256, 3, 1, 1, 0},
};
#define POOL_KERNEL 3
#define POOL_STRIDE 2

/* lpips.ScalingLayer's buffers, torch.Tensor([...]) of Python floats: float32 values. */
static const float SCALING_SHIFT[3] = {-0.030f, -0.088f, -0.188f};
static const float SCALING_SCALE[3] = {0.458f, 0.448f, 0.450f};
/* lpips.normalize_tensor's eps, added to the float32 norm (a Python scalar rounds to float). */
static const float NORMALIZE_EPS = 1e-10f;

/* The smallest side the trunk accepts: conv1 then two 3x3/2 pools must leave >= 1 position
 * ((31 + 4 - 11) / 4 + 1 = 7, (7 - 3) / 2 + 1 = 3, (3 - 3) / 2 + 1 = 1). */
#define MIN_SIDE 31

/* ================================================================================================
 * Weights
 * ============================================================================================= */

sd_status sd_lpips_bind(sd_lpips *m, sd_weights *w) {
    memset(m, 0, sizeof *m);
    char name[64];
    for (int k = 0; k < SD_LPIPS_LAYERS; k++) {
        snprintf(name, sizeof name, "features.%d", TRUNK[k].index);
        SD_TRY(sd_bind_conv(w, name, SD_LPIPS_CHANNELS[k], TRUNK[k].c_in, TRUNK[k].kernel, &m->conv[k]));
        snprintf(name, sizeof name, "lin%d.model.1.weight", k);
        const int64_t lin_shape[4] = {1, SD_LPIPS_CHANNELS[k], 1, 1};
        SD_TRY(sd_weights_get(w, name, 4, lin_shape, &m->lin[k]));
    }
    const char *unused_name = NULL;
    const int unused = sd_weights_unused(w, &unused_name);
    if (unused > 0)
        sd_warn("%s: %d tensors are not part of LPIPS (AlexNet features + lin layers) and were ignored "
                "(first: '%s')", sd_weights_source(w), unused, unused_name);
    return SD_OK;
}

sd_status sd_lpips_load(const char *path, sd_lpips *m) {
    memset(m, 0, sizeof *m);
    if (!path || !*path) return sd_fail(SD_ERR_ARG, "LPIPS weights: no file given");
    if (!sd_file_exists(path))
        return sd_fail(SD_ERR_MISSING, "%s: missing (the LPIPS AlexNet weights: tools/convert_lpips.py writes "
                       "them from torchvision's AlexNet checkpoint and the lpips package's alex.pth)", path);
    sd_weights *w = sd_weights_new(path);
    if (!w) return sd_fail(SD_ERR_OOM, "out of host memory opening %s", path);
    sd_status status = sd_weights_load_file(w, path, "");
    if (status == SD_OK) status = sd_lpips_bind(m, w);
    if (status != SD_OK) {
        sd_weights_free(w);
        memset(m, 0, sizeof *m);
        return status;
    }
    m->owned = w;
    return SD_OK;
}

void sd_lpips_release(sd_lpips *m) {
    if (!m) return;
    sd_weights_free(m->owned);
    memset(m, 0, sizeof *m);
}

/* ================================================================================================
 * Trunk
 * ============================================================================================= */

static int valid_input(const sd_tensor *x) {
    return x && x->dtype == SD_F32 && x->ndim == 4 && x->shape[0] >= 1 && x->shape[1] == 3 &&
           x->shape[2] >= MIN_SIDE && x->shape[3] >= MIN_SIDE;
}

static sd_status bad_input(sd_ctx *c, const sd_tensor *x, const char *what) {
    char buf[96] = "(none)";
    if (x) sd_shape_str(x->ndim, x->shape, buf, sizeof buf);
    sd_ctx_fail(c, SD_ERR_SHAPE, "LPIPS: %s %s %s, expected an F32 (B, 3, H, W) tensor with H, W >= %d",
                what, buf, x ? sd_dtype_name(x->dtype) : "", MIN_SIDE);
    return c->status;
}

/* A host copy of x (which lives on the host or on the context's device), or NULL on failure. */
static sd_tensor *host_copy(sd_ctx *c, const sd_tensor *x) {
    if (x->device == SD_DEVICE_CPU) {
        sd_tensor *h = sd_tensor_clone(x);
        if (!h) sd_ctx_fail(c, SD_ERR_OOM, "LPIPS: out of host memory copying an input");
        return h;
    }
    return sd_download_new(c, x);
}

/* [normalize=True: 2x - 1, then] ScalingLayer (x - shift[c]) / scale[c], each step rounded to
 * float as torch computes it, into the arena of the context's device. */
static sd_tensor *scaled_input(sd_ctx *c, const sd_tensor *x, sd_lpips_range range) {
    sd_tensor *host = host_copy(c, x);
    if (!host) return NULL;
    const int64_t B = x->shape[0], S = x->shape[2] * x->shape[3];
    float *v = sd_f32(host);
    for (int64_t b = 0; b < B; b++)
        for (int ch = 0; ch < 3; ch++) {
            float *plane = v + (b * 3 + ch) * S;
            for (int64_t s = 0; s < S; s++) {
                float t = plane[s];
                if (range == SD_LPIPS_INPUT_UNIT) t = 2.0f * t - 1.0f;
                plane[s] = (t - SCALING_SHIFT[ch]) / SCALING_SCALE[ch];
            }
        }
    sd_tensor *scaled = sd_upload(c, host); /* [B, 3, H, W] */
    sd_tensor_free(host);
    return scaled;
}

/* The trunk on already scaled input [B, 3, H, W]. */
static void trunk_forward(sd_ctx *c, const sd_lpips *m, sd_tensor *h, sd_tensor *features[SD_LPIPS_LAYERS]) {
    for (int k = 0; k < SD_LPIPS_LAYERS; k++) {
        if (TRUNK[k].pool_before) h = sd_max_pool2d(c, h, POOL_KERNEL, POOL_STRIDE);
        h = sd_conv2d(c, h, &m->conv[k], TRUNK[k].stride, TRUNK[k].pad);
        /* ReLU as a leaky ReLU of slope 0: max(x, 0) up to the sign of zero (-0 for negative x,
         * which no later step can tell from 0), and NaN stays NaN as in torch. */
        h = sd_unary_param(c, SD_UNARY_LEAKY_RELU, h, 0.0f);
        features[k] = h; /* relu{k+1}: [B, C_k, H_k, W_k] */
    }
}

sd_status sd_lpips_features(sd_ctx *c, const sd_lpips *m, const sd_tensor *x, sd_lpips_range range,
                            sd_tensor *features[SD_LPIPS_LAYERS]) {
    for (int k = 0; k < SD_LPIPS_LAYERS; k++) features[k] = NULL;
    if (c->status != SD_OK) return c->status;
    if (!valid_input(x)) return bad_input(c, x, "input");
    trunk_forward(c, m, scaled_input(c, x, range), features);
    return c->status;
}

/* ================================================================================================
 * Head
 * ============================================================================================= */

/* Layer k's value for each image pair b: f [2B, C, H, W] on the host, rows b (first image) and
 * B + b (second image); lin [C]. Writes layer_value[b]. */
static sd_status head_layer(const sd_tensor *f, int64_t B, const float *lin, double *layer_value) {
    const int64_t C = f->shape[1], S = f->shape[2] * f->shape[3];
    float *divisor = malloc((size_t)(2 * S) * sizeof(float));
    if (!divisor) return sd_fail(SD_ERR_OOM, "LPIPS: out of host memory for %lld norms", (long long)S);
    for (int64_t b = 0; b < B; b++) {
        const float *f0 = sd_f32(f) + b * C * S, *f1 = sd_f32(f) + (B + b) * C * S;
        /* normalize_tensor: norm = sqrt(Σ_c f²) (float32 result), then f / (norm + eps). The
         * divisor is kept, not its reciprocal, so the quotient rounds as torch's does. */
        for (int64_t s = 0; s < S; s++) {
            double sq0 = 0.0, sq1 = 0.0;
            for (int64_t ch = 0; ch < C; ch++) {
                sq0 += (double)f0[ch * S + s] * f0[ch * S + s];
                sq1 += (double)f1[ch * S + s] * f1[ch * S + s];
            }
            divisor[s] = sqrtf((float)sq0) + NORMALIZE_EPS;
            divisor[S + s] = sqrtf((float)sq1) + NORMALIZE_EPS;
        }
        /* lin (1x1 conv C -> 1, no bias) of (n0 - n1)², then the mean over positions. */
        double total = 0.0;
        for (int64_t s = 0; s < S; s++) {
            double at_s = 0.0;
            for (int64_t ch = 0; ch < C; ch++) {
                const float d = f0[ch * S + s] / divisor[s] - f1[ch * S + s] / divisor[S + s];
                at_s += (double)lin[ch] * (double)(d * d);
            }
            total += at_s;
        }
        layer_value[b] = total / (double)S;
    }
    free(divisor);
    return SD_OK;
}

sd_status sd_lpips_distance(sd_ctx *c, const sd_lpips *m, const sd_tensor *x0, const sd_tensor *x1,
                            sd_lpips_range range, double *distance, double *per_layer) {
    if (c->status != SD_OK) return c->status;
    if (!distance) return c->status = sd_fail(SD_ERR_ARG, "LPIPS: no output given for the distance");
    if (!valid_input(x0)) return bad_input(c, x0, "first input");
    if (!valid_input(x1)) return bad_input(c, x1, "second input");
    if (!sd_same_shape(x0, x1)) {
        char a[96], b[96];
        sd_ctx_fail(c, SD_ERR_SHAPE, "LPIPS: the inputs differ in shape: %s and %s",
                    sd_shape_str(x0->ndim, x0->shape, a, sizeof a), sd_shape_str(x1->ndim, x1->shape, b, sizeof b));
        return c->status;
    }
    const int64_t B = x0->shape[0];
    const sd_arena_mark mark = sd_arena_get_mark(c->arena);

    /* Both images through the trunk as one batch [2B, 3, H, W]: every image is computed alone
     * (per-sample convolutions), so this equals the package's two forward calls. */
    sd_tensor *features[SD_LPIPS_LAYERS];
    sd_tensor *both = sd_concat0(c, scaled_input(c, x0, range), scaled_input(c, x1, range));
    if (both) trunk_forward(c, m, both, features);

    double *layer_value = calloc((size_t)B, sizeof(double));
    if (!layer_value && c->status == SD_OK) sd_ctx_fail(c, SD_ERR_OOM, "LPIPS: out of host memory");
    for (int64_t b = 0; b < B && c->status == SD_OK; b++) distance[b] = 0.0;
    for (int k = 0; k < SD_LPIPS_LAYERS && c->status == SD_OK; k++) {
        sd_tensor *f = sd_download_new(c, features[k]);
        sd_tensor *lin = f ? host_copy(c, m->lin[k]) : NULL;
        if (f && lin) {
            sd_status st = head_layer(f, B, sd_f32(lin), layer_value);
            if (st != SD_OK) sd_ctx_check(c, st);
            for (int64_t b = 0; b < B && st == SD_OK; b++) {
                distance[b] += layer_value[b];
                if (per_layer) per_layer[b * SD_LPIPS_LAYERS + k] = layer_value[b];
            }
        }
        sd_tensor_free(f);
        sd_tensor_free(lin);
    }
    free(layer_value);
    sd_arena_reset(c->arena, mark);
    return c->status;
}
