/* error.c: the thread-local error message behind sd_fail / sd_last_error. */
#include "sd/core.h"

#include <string.h>

#define SD_ERROR_CAP 2048
static _Thread_local char error_message[SD_ERROR_CAP];

sd_status sd_fail(sd_status code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(error_message, sizeof error_message, fmt, ap);
    va_end(ap);
    return code;
}

sd_status sd_fail_context(sd_status code, const char *fmt, ...) {
    char prefix[SD_ERROR_CAP];
    char old[SD_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(prefix, sizeof prefix, fmt, ap);
    va_end(ap);
    memcpy(old, error_message, sizeof old);
    /* prefix + old message, truncated to the buffer */
    size_t pl = strnlen(prefix, SD_ERROR_CAP - 1);
    size_t ol = strnlen(old, SD_ERROR_CAP - 1 - pl);
    memcpy(error_message, prefix, pl);
    memcpy(error_message + pl, old, ol);
    error_message[pl + ol] = '\0';
    return code;
}

const char *sd_last_error(void) { return error_message; }

void sd_clear_error(void) { error_message[0] = '\0'; }

const char *sd_status_name(sd_status s) {
    switch (s) {
    case SD_OK: return "ok";
    case SD_ERR_IO: return "i/o error";
    case SD_ERR_FORMAT: return "format error";
    case SD_ERR_SHAPE: return "shape error";
    case SD_ERR_MISSING: return "missing";
    case SD_ERR_ARG: return "bad argument";
    case SD_ERR_OOM: return "out of memory";
    case SD_ERR_DEVICE: return "device error";
    case SD_ERR_NUMERIC: return "numerical error";
    case SD_ERR_UNSUPPORTED: return "unsupported";
    case SD_ERR_INTERNAL: return "internal error";
    }
    return "unknown error";
}
