/* no_cuda.c: what the C side needs from CUDA, in a build without it (no nvcc found, or
 * `make NVCC=`). Every entry point of include/sd/device.h's CUDA section and sd_backend_cuda
 * exist, so the CLI, the tests and device.c link the same way in both builds; each fails with
 * one clear sentence. In a CUDA build (SD_HAVE_CUDA) the real ones live in kernels/ and this file
 * compiles to nothing. */
#include "sd/backend.h"
#include "sd/device.h"

#ifndef SD_HAVE_CUDA

#define NO_CUDA_MSG "this build has no CUDA support (nvcc was not found when it was built)"

static sd_status no_cuda(void) { return sd_fail(SD_ERR_UNSUPPORTED, NO_CUDA_MSG); }

const sd_backend *sd_backend_cuda(int ordinal) {
    (void)ordinal;
    no_cuda();
    return NULL;
}

int sd_cuda_device_count(void) {
    no_cuda();
    return 0;
}

sd_status sd_cuda_check_device(int ordinal) {
    (void)ordinal;
    return no_cuda();
}

sd_status sd_cuda_device_name(int ordinal, char *buf, size_t n) {
    (void)ordinal;
    if (buf && n) buf[0] = '\0';
    return no_cuda();
}

sd_status sd_cuda_set_precision(sd_precision p) {
    (void)p;
    return no_cuda();
}

sd_precision sd_cuda_get_precision(void) { return SD_PRECISION_EXACT; }

sd_conv_algo sd_cuda_get_conv_algo(void) { return SD_CONV_ALGO_HEURISTIC; }

sd_gemm_algo sd_cuda_get_gemm_algo(void) { return SD_GEMM_ALGO_HEURISTIC; }

sd_status sd_cuda_set_gemm_algo(sd_gemm_algo algo) {
    (void)algo;
    return no_cuda();
}

void sd_cuda_gemm_plan_counts(int *plans, int *tuned) {
    if (plans) *plans = 0;
    if (tuned) *tuned = 0;
}

void sd_cuda_conv_plan_counts(int *plans, int *on_graph_api, int *winograd) {
    if (plans) *plans = 0;
    if (on_graph_api) *on_graph_api = 0;
    if (winograd) *winograd = 0;
}

double sd_cuda_bf16_peak_tflops(void) { return 0.0; }

const char *sd_cuda_fast_gemm_name(void) { return "bf16"; }

uint64_t sd_cuda_workspace_generation(void) { return 0; }

sd_conv_gemm sd_cuda_get_conv_gemm(void) { return SD_CONV_GEMM_AUTO; }

sd_conv_winograd sd_cuda_get_conv_winograd(void) { return SD_CONV_WINOGRAD_AUTO; }

sd_status sd_cuda_set_conv_winograd(sd_conv_winograd mode) {
    (void)mode;
    return no_cuda();
}

sd_status sd_cuda_set_conv_gemm(sd_conv_gemm mode) {
    (void)mode;
    return no_cuda();
}

sd_status sd_cuda_set_conv_algo(sd_conv_algo algo) {
    (void)algo;
    return no_cuda();
}

sd_status sd_cuda_set_flash_blocks_per_sm(int blocks) {
    (void)blocks;
    return no_cuda();
}

int sd_cuda_get_flash_blocks_per_sm(void) { return 2; }

int sd_cuda_flash_query_block(int64_t Sq, int64_t B, int H, int D, int backward) {
    (void)Sq, (void)B, (void)H, (void)D, (void)backward;
    return 0;
}

sd_status sd_cuda_set_flash_bwd_blocks_per_sm(int blocks) {
    (void)blocks;
    return no_cuda();
}

int sd_cuda_get_flash_bwd_blocks_per_sm(void) { return 1; }

sd_status sd_cuda_set_pdl(int on) {
    (void)on;
    return no_cuda();
}

int sd_cuda_get_pdl(void) { return 0; }

sd_status sd_cuda_mem_info(size_t *free_bytes, size_t *total_bytes) {
    if (free_bytes) *free_bytes = 0;
    if (total_bytes) *total_bytes = 0;
    return no_cuda();
}

sd_status sd_cuda_timer_start(void) { return no_cuda(); }

sd_status sd_cuda_hold(double microseconds) {
    (void)microseconds;
    return no_cuda();
}

sd_status sd_cuda_timer_stop(float *ms) {
    if (ms) *ms = 0.0f;
    return no_cuda();
}

sd_status sd_cuda_graph_begin(void) { return no_cuda(); }

sd_status sd_cuda_graph_end(sd_cuda_graph **out) {
    if (out) *out = NULL;
    return no_cuda();
}

sd_status sd_cuda_graph_replay(sd_cuda_graph *g) {
    (void)g;
    return no_cuda();
}

void sd_cuda_graph_free(sd_cuda_graph *g) { (void)g; }

sd_status sd_cuda_attention_rows(const float *q, const float *k, const float *v, float *out,
                                 int64_t B_out, const int32_t *q_rows, const int32_t *k_rows,
                                 const int32_t *v_rows, int64_t Sq, int64_t Sk, int H, int D,
                                 int Dv, float scale, int causal) {
    (void)q, (void)k, (void)v, (void)out, (void)B_out, (void)q_rows, (void)k_rows, (void)v_rows;
    (void)Sq, (void)Sk, (void)H, (void)D, (void)Dv, (void)scale, (void)causal;
    return no_cuda();
}

#else
/* ISO C forbids an empty translation unit. */
typedef int sd_no_cuda_translation_unit;
#endif
