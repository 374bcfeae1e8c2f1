/* log.c: leveled logging and the stderr progress bar. */
#define _POSIX_C_SOURCE 200809L
#include "sd/core.h"

#include <time.h>
#include <unistd.h>

static sd_log_level log_level = SD_LOG_INFO;
static int quiet_mode = 0;

void sd_log_set_level(sd_log_level level) { log_level = level; }
sd_log_level sd_log_get_level(void) { return log_level; }
void sd_set_quiet(int quiet) { quiet_mode = quiet; }
int sd_is_quiet(void) { return quiet_mode; }

void sd_log(sd_log_level level, const char *fmt, ...) {
    if (level > log_level) return;
    if (quiet_mode && level >= SD_LOG_INFO) return;
    static const char *const prefix[] = {"error: ", "warning: ", "", "debug: "};
    va_list ap;
    va_start(ap, fmt);
    fputs(prefix[level], stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
}

double sd_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void progress_draw(const sd_progress *p) {
    const int width = 30;
    int filled = p->total > 0 ? (int)((long)width * p->done / p->total) : width;
    double elapsed = sd_now() - p->t_start;
    double eta = p->done > 0 ? elapsed * (p->total - p->done) / p->done : 0.0;
    fprintf(stderr, "\r%-18s [", p->label);
    for (int i = 0; i < width; i++) fputc(i < filled ? '#' : '.', stderr);
    fprintf(stderr, "] %d/%d  %.1fs  eta %.1fs ", p->done, p->total, elapsed, eta);
    fflush(stderr);
}

void sd_progress_begin(sd_progress *p, const char *label, int total) {
    p->label = label;
    p->total = total;
    p->done = 0;
    p->t_start = sd_now();
    p->enabled = !quiet_mode && isatty(fileno(stderr));
    if (p->enabled) progress_draw(p);
}

void sd_progress_step(sd_progress *p) {
    p->done++;
    if (p->enabled) progress_draw(p);
}

void sd_progress_end(sd_progress *p) {
    if (p->enabled) {
        progress_draw(p);
        fputc('\n', stderr);
    }
    p->enabled = 0;
}
