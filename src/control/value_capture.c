/* value_capture.c: StyleDiffusion's value substitution and map capture (see control.h). */
#include "sd/control.h"

#include <string.h>

static sd_tensor *substitute(sd_attn_hook *base, sd_ctx *c, const sd_attn_site *s, sd_tensor *context) {
    sd_value_capture_hook *h = (sd_value_capture_hook *)base;
    if (!s->is_cross) return NULL;
    if (!h->value || !context || h->value->dtype == context->dtype) return h->value;
    /* the same answer at every site, so idempotent as unet.c asks of a gradient step's hook */
    if (h->value_converted_from != h->value || !h->value_as_context || h->value_as_context->dtype != context->dtype) {
        h->value_as_context = sd_to_dtype(c, h->value, context->dtype);
        h->value_converted_from = h->value_as_context ? h->value : NULL;
    }
    return h->value_as_context;
}

static int wants(sd_attn_hook *base, const sd_attn_site *s) {
    const sd_value_capture_hook *h = (const sd_value_capture_hook *)base;
    return s->is_cross && h->capture_q_len > 0 && s->q_len == h->capture_q_len;
}

static sd_tensor *capture(sd_attn_hook *base, sd_ctx *c, const sd_attn_site *s, sd_tensor *probs) {
    sd_value_capture_hook *h = (sd_value_capture_hook *)base;
    if (h->n_captured >= SD_MAX_CAPTURED)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "attention capture: more than %d maps in one call", SD_MAX_CAPTURED);
    h->captured_layer[h->n_captured] = s->layer;
    h->captured[h->n_captured++] = probs;
    return probs;
}

void sd_value_capture_hook_init(sd_value_capture_hook *h, sd_tensor *value, int64_t capture_q_len) {
    memset(h, 0, sizeof *h);
    h->base.value_input = substitute;
    h->base.wants_probs = wants;
    h->base.edit_probs = capture;
    h->value = value;
    h->capture_q_len = capture_q_len;
}

void sd_value_capture_hook_clear(sd_value_capture_hook *h) {
    h->n_captured = 0;
    h->value_as_context = h->value_converted_from = NULL;
}
