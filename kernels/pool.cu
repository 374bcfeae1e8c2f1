/* pool.cu: max pooling (torch MaxPool2d(kernel, stride), no padding, floor mode), the AlexNet
 * trunk's only op the rest of the table lacks. Forward only: LPIPS is a metric.
 *
 * One thread per output value reads its kernel x kernel window straight from global memory: the
 * layer is tiny next to the convolutions around it (AlexNet's three pools touch a few MB), so a
 * shared-memory tiled version would buy nothing measurable. The comparison is the CPU's and
 * torch's, `v > best || isnan(v)`, so outputs are bit-identical to the CPU backend (a max has no
 * rounding) and a NaN in a window propagates. */
#include "cuda_common.cuh"

#include <math.h>

#define POOL_THREADS 256

__global__ void k_max_pool2d(const float *__restrict__ x, float *__restrict__ y, int64_t N, int64_t H,
                             int64_t W, int64_t Ho, int64_t Wo, int kernel, int stride) {
    CU_PDL_ENTRY();
    /* x: [N, H, W] planes -> y: [N, Ho, Wo] */
    GRID_STRIDE(i, N * Ho * Wo) {
        const int64_t ox = i % Wo, t = i / Wo, oy = t % Ho, n = t / Ho;
        const float *window = x + (n * H + oy * stride) * W + ox * stride;
        float best = -INFINITY;
        for (int ky = 0; ky < kernel; ky++)
            for (int kx = 0; kx < kernel; kx++) {
                const float v = window[(int64_t)ky * W + kx];
                if (v > best || isnan(v)) best = v;
            }
        y[i] = best;
    }
}

sd_status cu_max_pool2d(const float *x, float *y, int64_t N, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                        int kernel, int stride) {
    const int64_t n = N * Ho * Wo;
    if (n <= 0) return SD_OK;
    CU_LAUNCH(k_max_pool2d, cu_blocks(n, POOL_THREADS), POOL_THREADS, 0, cu_cur()->stream)(x, y, N, H, W, Ho, Wo,
                                                                                     kernel, stride);
    LAUNCH_CHECK("max_pool2d");
    return SD_OK;
}
