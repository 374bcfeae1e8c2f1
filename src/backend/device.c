/* device.c: device selection for the CLI and the tests (see device.h): parse "cpu" | "cuda" |
 * "cuda:N" | auto, open the backend, set the precision, initialise the context. */
#include "sd/device.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/nn.h"

const char *sd_precision_name(sd_precision p) { return p == SD_PRECISION_FAST ? "fast" : "exact"; }

const char *sd_precision_describe(sd_precision p) {
    return p == SD_PRECISION_FAST ? "fast (bf16 tensor cores, fp32 accumulate)" : "exact (fp32, no TF32)";
}

sd_status sd_precision_parse(const char *s, sd_precision *out) {
    if (s && (!strcmp(s, "exact") || !strcmp(s, "fp32"))) {
        *out = SD_PRECISION_EXACT;
        return SD_OK;
    }
    if (s && !strcmp(s, "fast")) {
        *out = SD_PRECISION_FAST;
        return SD_OK;
    }
    return sd_fail(SD_ERR_ARG, "--precision '%s': expected exact (fp32, for parity) or fast (tensor cores)",
                   s ? s : "(null)");
}

sd_status sd_device_parse(const char *spec, int *device_out) {
    if (!spec || !*spec || !strcmp(spec, "auto")) {
        *device_out = SD_DEVICE_AUTO;
        return SD_OK;
    }
    if (!strcmp(spec, "cpu")) {
        *device_out = SD_DEVICE_CPU;
        return SD_OK;
    }
    if (!strcmp(spec, "cuda") || !strcmp(spec, "gpu")) {
        *device_out = 0;
        return SD_OK;
    }
    if (!strncmp(spec, "cuda:", 5) && spec[5] >= '0' && spec[5] <= '9') {
        char *end = NULL;
        const long n = strtol(spec + 5, &end, 10);
        if (end && *end == '\0' && n >= 0 && n < 1024) {
            *device_out = (int)n;
            return SD_OK;
        }
    }
    return sd_fail(SD_ERR_ARG, "--device '%s': expected cpu, cuda or cuda:N (N = 0, 1, ...)", spec);
}

/* Fast mode stores the UNet's forward activations in fp16 (sd_ctx.activations); the environment
 * variable SD_FAST_ACTIVATIONS=f32 keeps them F32 (to measure what the storage buys, or to rule it
 * out when chasing a difference). */
static sd_dtype fast_activations(void) {
    const char *e = getenv("SD_FAST_ACTIVATIONS");
    if (!e || !*e || !strcmp(e, "f16")) return SD_F16;
    if (!strcmp(e, "f32")) return SD_F32;
    sd_warn("SD_FAST_ACTIVATIONS=%s is neither f16 nor f32: storing fp16 activations", e);
    return SD_F16;
}

/* Whether fast mode's gradient steps store fp16 activations too (sd_ctx.f16_steps): yes by
 * default, since on an H100 it is the faster step (SD v1.5: 13.6 against 14.1 ms, Null-text 147
 * against 152 ms per timestep; bench/NOTES.md, nineteenth session) at half the activation memory;
 * the environment variable SD_STEP_ACTIVATIONS=f32 keeps the steps' F32 activations on fp16
 * weight copies. */
static int fast_f16_steps(void) {
    const char *e = getenv("SD_STEP_ACTIVATIONS");
    if (!e || !*e || !strcmp(e, "f16")) return 1;
    if (!strcmp(e, "f32")) return 0;
    sd_warn("SD_STEP_ACTIVATIONS=%s is neither f16 nor f32: gradient steps store fp16 activations", e);
    return 1;
}

/* An on/off environment switch of fast mode, on unless set to 0 (to measure what its feature
 * buys); `on_means` names the feature in the warning about any other value. */
static int env_switch_on(const char *name, const char *on_means) {
    const char *e = getenv(name);
    if (!e || !*e || !strcmp(e, "1")) return 1;
    if (!strcmp(e, "0")) return 0;
    sd_warn("%s=%s is neither 0 nor 1: %s", name, e, on_means);
    return 1;
}

sd_status sd_device_open(const char *spec, sd_precision precision, sd_ctx *ctx_out) {
    int device = SD_DEVICE_AUTO;
    SD_TRY(sd_device_parse(spec, &device));
    if (device == SD_DEVICE_CPU) return sd_ctx_init_cpu(ctx_out);

    const int automatic = device == SD_DEVICE_AUTO;
    const int ordinal = automatic ? 0 : device;
    sd_status st = sd_cuda_check_device(ordinal); /* driver, index, compute capability */
    const sd_backend *be = st == SD_OK ? sd_backend_cuda(ordinal) : NULL;
    if (!be) {
        if (st == SD_OK) st = SD_ERR_DEVICE; /* opening failed after the checks (message set) */
        if (!automatic) return sd_fail_context(st, "--device %s: ", spec);
        /* one line, then the CPU */
        sd_info("running on the CPU: %s", sd_last_error());
        sd_clear_error();
        return sd_ctx_init_cpu(ctx_out);
    }
    SD_TRY(sd_cuda_set_precision(precision));
    SD_TRY(sd_ctx_init(ctx_out, be, ordinal));
    ctx_out->activations = precision == SD_PRECISION_FAST ? fast_activations() : SD_F32;
    /* fp16 feature maps channels-last (sd_ctx.channels_last); a gradient step's data gradients on
     * bf16 weight copies (sd_ctx.f32_data_grads) */
    ctx_out->channels_last =
        precision == SD_PRECISION_FAST && env_switch_on("SD_CHANNELS_LAST", "channels-last feature maps");
    ctx_out->f32_data_grads = !env_switch_on("SD_BF16_GRADS", "data gradients on bf16 weight copies");
    ctx_out->f16_steps = ctx_out->activations == SD_F16 && fast_f16_steps();
    return SD_OK;
}

int sd_ctx_on_cuda(const sd_ctx *c) {
    return c && c->device != SD_DEVICE_CPU && c->be && strcmp(c->be->name, "cuda") == 0;
}

const char *sd_device_describe(const sd_ctx *c, char *buf, size_t n) {
    if (!sd_ctx_on_cuda(c)) {
        snprintf(buf, n, "cpu (reference backend, exact fp32)");
        return buf;
    }
    char name[256];
    if (sd_cuda_device_name(c->device, name, sizeof name) != SD_OK) snprintf(name, sizeof name, "?");
    snprintf(buf, n, "cuda:%d %s, %s%s%s", c->device, name, sd_precision_describe(sd_cuda_get_precision()),
             c->activations != SD_F16 ? ""
             : sd_ctx_channels_last(c) ? ", fp16 UNet activations (channels-last)"
                                       : ", fp16 UNet activations (NCHW)",
             c->activations == SD_F16 && c->f16_steps ? ", in gradient steps too" : "");
    return buf;
}
