/* device.h: choosing where the work runs (CPU or a CUDA GPU) and how precisely, plus what only the
 * CUDA backend offers beyond the op table: CUDA graphs, GPU timers, attention with batch-row maps
 * (the self-attention injection of P2P/P2Plus), and memory figures.
 *
 *     sd_ctx c;
 *     if (sd_device_open(device_flag, SD_PRECISION_EXACT, &c)) return cli_fail("cmd", ...);
 *     ... sd_ctx_adopt_weights(&c, weights) ... sd_unet_forward(&c, ...) ...
 *     sd_ctx_free(&c);
 *
 * Device specs: "cpu", "cuda" (= "cuda:0"), "cuda:N", or NULL / "" / "auto": CUDA device 0 when
 * a usable GPU exists, else the CPU with a one-line notice saying why the GPU was not used.
 *
 * Precision (a property of the CUDA backend; the CPU backend is always exact):
 *   SD_PRECISION_EXACT  fp32 everywhere, no TF32: cuBLAS CUBLAS_COMPUTE_32F, cuDNN CUDNN_FMA_MATH
 *                       (no FFT / Winograd algorithms), fp32 attention kernels. Used for parity.
 *   SD_PRECISION_FAST   tensor cores with fp32 storage and fp32 accumulation: GEMMs with
 *                       CUBLAS_COMPUTE_32F_FAST_16BF (inputs rounded to bf16; SD_FAST_GEMM=tf32 or
 *                       fp16 in the environment picks another), convolutions with
 *                       CUDNN_TENSOR_OP_MATH (TF32), attention (forward and, head dims <= 80,
 *                       backward) with bf16 mma.sync and an fp32 online softmax. About 3 significant digits (max relative error <= 2e-2).
 *
 * Threads: the op table's functions take no context, so the CUDA backend keeps one state per
 * device (stream, library handles, workspace, precision) and binds it to the thread that called
 * sd_backend_cuda(ordinal) (a thread that never called it uses the last device opened). Use one
 * host thread per GPU. */
#ifndef SD_DEVICE_H
#define SD_DEVICE_H

#include <stddef.h>
#include <stdint.h>

#include "sd/backend.h"
#include "sd/core.h"

#ifdef __cplusplus
extern "C" {
#endif

struct sd_ctx;

typedef enum sd_precision { SD_PRECISION_EXACT = 0, SD_PRECISION_FAST = 1 } sd_precision;

/* "exact" / "fast". */
const char *sd_precision_name(sd_precision p);
/* One line for reports: "exact (fp32, no TF32)" / "fast (bf16 tensor cores, fp32 accumulate)". */
const char *sd_precision_describe(sd_precision p);
/* "exact" | "fp32" -> EXACT, "fast" -> FAST; anything else fails (SD_ERR_ARG) naming the value. */
sd_status sd_precision_parse(const char *s, sd_precision *out);

#define SD_DEVICE_AUTO (-2)
/* "cpu" -> SD_DEVICE_CPU, "cuda" -> 0, "cuda:N" -> N, NULL / "" / "auto" -> SD_DEVICE_AUTO.
 * Anything else fails (SD_ERR_ARG) naming the spec and the accepted forms. */
sd_status sd_device_parse(const char *spec, int *device_out);

/* Opens the device `spec` names, sets the precision (CUDA only) and initialises *ctx_out on it
 * (sd_ctx_init). Explicit "cuda[:N]" fails when the GPU cannot be used, with the reason: no NVIDIA
 * driver, a driver older than this build's CUDA runtime, no GPU, an index out of range, a GPU
 * whose compute capability is below what this build carries (sm_90 / compute_90 PTX), or a build
 * without CUDA. Auto falls back to the CPU with one notice (sd_info) giving the same reason. */
sd_status sd_device_open(const char *spec, sd_precision precision, struct sd_ctx *ctx_out);

/* 1 when the context runs on a CUDA device (where CUDA graphs and the functions below apply). */
int sd_ctx_on_cuda(const struct sd_ctx *c);

/* "cpu (reference backend)" or "cuda:0 NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB), exact (fp32, no
 * TF32)": what a report prints about where it ran. */
const char *sd_device_describe(const struct sd_ctx *c, char *buf, size_t n);

/* ------------------------------------------------------------------------------------------------
 * CUDA specifics. In a build without CUDA every function below fails with SD_ERR_UNSUPPORTED
 * ("this build has no CUDA support ...") or returns 0.
 * --------------------------------------------------------------------------------------------- */

/* Number of CUDA devices (0 when none, no driver, or no CUDA in this build; the reason is then
 * the thread's last error). */
int sd_cuda_device_count(void);
/* Checks that device `ordinal` can run this build (driver, index, compute capability) without
 * creating library handles; fails with the reason. */
sd_status sd_cuda_check_device(int ordinal);
/* "NVIDIA H100 80GB HBM3 (sm_90, 79.1 GiB)" */
sd_status sd_cuda_device_name(int ordinal, char *buf, size_t n);

/* The dense bf16 tensor-core peak of the calling thread's device, TFLOP/s at its maximum SM clock
 * (SMs x clock x the architecture's bf16 FLOP per SM per clock: 2048 on sm_80, 1024 on sm_86/89,
 * 4096 on sm_90, 8192 on sm_100); 0 when unknown (other architectures, no clock, no CUDA). */
double sd_cuda_bf16_peak_tflops(void);

/* Precision of the calling thread's CUDA backend (see above). Takes effect for the next op. */
sd_status sd_cuda_set_precision(sd_precision p);
sd_precision sd_cuda_get_precision(void);
/* How fast mode picks cuDNN's convolution algorithms on the calling thread's device:
 *  HEURISTIC (the default) the legacy heuristic's first tensor-core algorithm;
 *  FIND the one cuDNN measures fastest per shape (cudnnFind*);
 *  GRAPH fp16 forward convolutions through cuDNN's graph API, its heuristic's first engine that
 *    runs here (deterministic, not compiled at run time); the others as HEURISTIC;
 *  TUNE fp16 forwards timed once per shape on their first call (outside a capture) between the
 *    im2col + GEMM path (unless SD_CONV_GEMM=off; SD_CONV_GEMM=all skips the tuning), the legacy
 *    algorithm and the graph API's best engines, the fastest kept; the others as HEURISTIC.
 * The environment's SD_CONV_ALGO=heuristic|find|graph|tune sets the start value; bench tables label
 * the last three "+find", "+graph", "+tune". Drops the convolution plans made so far; never call it
 * while a CUDA graph is captured, and recapture graphs made before. Exact mode's F32 convolutions
 * are not affected. */
typedef enum {
    SD_CONV_ALGO_HEURISTIC = 0,
    SD_CONV_ALGO_FIND = 1,
    SD_CONV_ALGO_GRAPH = 2,
    SD_CONV_ALGO_TUNE = 3
} sd_conv_algo;
sd_status sd_cuda_set_conv_algo(sd_conv_algo algo);
sd_conv_algo sd_cuda_get_conv_algo(void);
/* Of the calling thread's convolution plans (one per geometry, data type and layout seen since the
 * last sd_cuda_set_conv_* call), how many exist, how many run through cuDNN's graph API (what a
 * "+graph" or "+tune" run took from it) and how many as Winograd F(2x2, 3x3) (sd_conv_winograd).
 * Any pointer may be NULL. */
void sd_cuda_conv_plan_counts(int *plans, int *on_graph_api, int *winograd);
/* How fast mode's cuBLASLt linear layers pick their algorithm on the calling thread's device:
 * HEURISTIC (the default) cuBLASLt's first; TUNE its first few timed once per shape on the first
 * call outside a capture (a scratch output, so the call's own output and residual are untouched),
 * the fastest kept; the channels-last convolutions' GEMM path then runs through such plans too. The environment's SD_GEMM_ALGO=heuristic|tune sets the start value
 * (SD_GEMM_LOG=1 prints each tuned shape); bench tables label TUNE "+gtune". Drops the GEMM plans
 * made so far; not while a CUDA graph is captured. Exact mode keeps the heuristic's choice. */
typedef enum { SD_GEMM_ALGO_HEURISTIC = 0, SD_GEMM_ALGO_TUNE = 1 } sd_gemm_algo;
sd_status sd_cuda_set_gemm_algo(sd_gemm_algo algo);
sd_gemm_algo sd_cuda_get_gemm_algo(void);
/* Of the calling thread's cuBLASLt linear plans, how many exist and how many were tuned between
 * two or more candidates. */
void sd_cuda_gemm_plan_counts(int *plans, int *tuned);

/* How many blocks of fast mode's fp16 flash attention kernel share an SM at head dims <= 48 (SD's
 * D 40): 2 (the default, under a 128-register cap) or 1 (half the warps, up to 255 registers).
 * Same results bit for bit. The environment's SD_FLASH_BLOCKS_PER_SM sets the start value; bench
 * tables label 1 "+fa1". Not while a CUDA graph is captured (a graph keeps the kernel it captured). */
sd_status sd_cuda_set_flash_blocks_per_sm(int blocks);
int sd_cuda_get_flash_blocks_per_sm(void);

/* The same for fast mode's flash attention backward at head dims <= 48: 1 (the default) or 2 (a
 * 128-register cap, with spills, for twice the warps). Same results bit for bit. The environment's
 * SD_FLASH_BWD_BLOCKS_PER_SM sets the start value; bench tables label 2 "+fb2". */
sd_status sd_cuda_set_flash_bwd_blocks_per_sm(int blocks);
int sd_cuda_get_flash_bwd_blocks_per_sm(void);

/* The queries per block fast mode's flash kernels use for an attention of B·H heads of Sq queries
 * (head dim D) on the calling thread's GPU: 128, or 64 where twice the 128-query blocks would still
 * leave no SM with two (more SMs busy, each warp's rows computed as before: the same bits). The
 * forward's cp.async kernel (backward 0; the generic kernel for other head widths always takes 128)
 * or the backward's dQ kernel (backward 1, whose heads over 80 run two blocks per query block).
 * 0 without CUDA. Tests use it to see that both block sizes were exercised. */
int sd_cuda_flash_query_block(int64_t Sq, int64_t B, int H, int D, int backward);

/* Whether this backend's own kernels are launched by programmatic dependent launch on the calling
 * thread's device: each kernel's blocks may be scheduled while the previous kernel finishes, and
 * wait on the GPU for it (cuBLAS and cuDNN kernels keep the plain ordering). Same results bit for
 * bit. Needs compute capability 9.0 or later (SD_ERR_UNSUPPORTED before, and in the simulator). The
 * environment's SD_CUDA_PDL sets the start value (0, the default, or 1); bench tables label it
 * "+pdl". Not while a CUDA graph is captured (a graph keeps the launches it captured). */
sd_status sd_cuda_set_pdl(int on);
int sd_cuda_get_pdl(void);

/* How many times the calling thread's device has reallocated its shared op workspace (grown for
 * a larger op; 0 without a device). A CUDA graph holds the workspace's address as it was at
 * capture: a graph captured before a reallocation must be captured again, not replayed
 * (step_graph.c checks this before every replay). */
uint64_t sd_cuda_workspace_generation(void);

/* The tensor-core input type of fast mode's F32 GEMMs on the calling thread's device: "bf16" (the
 * default), "tf32" or "fp16" (the environment's SD_FAST_GEMM, read when the backend opens). */
const char *sd_cuda_fast_gemm_name(void);

/* Whether convolutions run as an unfold (im2col) and one cuBLAS GEMM instead of cuDNN (conv.cu): OFF
 * never; AUTO (the default) in fast mode for 1x1 convolutions (no unfold) and where the batch has at
 * most 512 output pixels and a pixel's sum at least 1024 terms (SD's 16x16 and 8x8 levels at batch 1
 * and 2), in exact mode (plain fp32
 * GEMMs) every convolution whose unfolded input fits 512 MiB; ALL that bound in fast mode too. The
 * environment's SD_CONV_GEMM=off|auto|all sets the start value. Drops the convolution plans made so
 * far, as sd_cuda_set_conv_algo. */
typedef enum { SD_CONV_GEMM_OFF = 0, SD_CONV_GEMM_AUTO = 1, SD_CONV_GEMM_ALL = 2 } sd_conv_gemm;
sd_status sd_cuda_set_conv_gemm(sd_conv_gemm mode);
sd_conv_gemm sd_cuda_get_conv_gemm(void);
/* Whether 3x3 stride-1 convolutions whose output keeps the input's size (SD's UNet and VAE
 * convolutions but the downsamplers) run as Winograd's minimal filtering (conv.cu): F(2x2, 3x3)
 * takes 16 products per 2x2 outputs and input channel instead of 36; F(4x4, 3x3) 36 per 4x4
 * instead of 144. Exact mode (F32 NCHW, forward and data gradient, fp32 throughout): F(2x2)'s
 * rounding about 1e-6 relative from the direct sums, F(4x4)'s 5e-6 to 1e-5. Fast mode's fp16
 * channels-last convolutions (forward, a gradient step's forward convolutions included): always
 * F(2x2), the transformed operands stored in fp16, about 5e-4 to 1e-3 relative (the direct fp16
 * convolution: up to 4e-4); and a gradient step's bf16 data gradients (sd_f16_ops
 * .conv2d_backward_data_bf16w): F(2x2) with bf16 operands, 2.5-4.5e-3 from the F32 data gradient,
 * about twice the direct bf16 path's. OFF never; ON F(2x2) where the batch has at least 1024 output
 * pixels (SD v1.x's 64x64 and 32x32 levels); ALL F(2x2) for every such convolution; F4 and F4_ALL
 * the same with F(4x4) in exact mode; F4_MIXED, in exact mode, F(4x4) where the batch has at least
 * 1024 output pixels and F(2x2) on every other such convolution (F(4x4)'s larger weight transform
 * may cost more than it saves on the thin GEMMs of 8x8 maps; fast mode: F(2x2) everywhere). AUTO
 * (the default) is what an H100 measured fastest: exact mode as F4 (SD v1.5 batch 2, 47.3 against
 * 57.8 ms, 9e-6 from PyTorch fp32), fp16 and bf16 as OFF (fast mode's F(2x2) tied cuDNN at batch 2
 * and lost at batch 1). The environment's SD_CONV_WINOGRAD=off|on|all|f4|f4-all|auto|f4-mixed sets
 * the start value; bench tables label what differs from AUTO: "+direct" (exact mode under OFF),
 * "+wino" (F(2x2)), "+wino-all", "+wino4-all" (F(4x4) everywhere), "+wino-mixed". Drops the
 * convolution plans made so far, as sd_cuda_set_conv_algo. */
typedef enum {
    SD_CONV_WINOGRAD_OFF = 0,
    SD_CONV_WINOGRAD_ON = 1,
    SD_CONV_WINOGRAD_ALL = 2,
    SD_CONV_WINOGRAD_F4 = 3,
    SD_CONV_WINOGRAD_F4_ALL = 4,
    SD_CONV_WINOGRAD_AUTO = 5,
    SD_CONV_WINOGRAD_F4_MIXED = 6
} sd_conv_winograd;
sd_status sd_cuda_set_conv_winograd(sd_conv_winograd mode);
sd_conv_winograd sd_cuda_get_conv_winograd(void);

/* Free and total memory of the calling thread's device (cudaMemGetInfo). */
sd_status sd_cuda_mem_info(size_t *free_bytes, size_t *total_bytes);

/* Timing on the backend stream with CUDA events: start, queue work, stop (waits for the stop
 * event) and read the milliseconds in between. */
sd_status sd_cuda_timer_start(void);
sd_status sd_cuda_timer_stop(float *ms);
/* Queues a kernel that keeps the backend stream busy for `microseconds`: work queued behind it
 * while it spins starts back to back, so events around that work time the GPU's part alone, not
 * the host's launches (the profiler's op timings). Not inside a graph capture. */
sd_status sd_cuda_hold(double microseconds);

/* Where the time of a forward or a gradient step goes: sd_backend_profiled(be, &prof) returns a
 * table that runs `be`'s ops, timing each forward and backward op alone and adding its time,
 * arithmetic and activation traffic to its class. On the CUDA backend an op's time is the GPU's:
 * CUDA events around it, queued behind sd_cuda_hold so that its kernels run back to back as in a
 * replayed graph (the host's launch latency, which made small ops look several times slower than
 * in a graph, is left out; an op whose launches outlast the hold is counted in
 * `launch_bound_ops`, its time then an upper bound). Elsewhere, or with the environment's
 * SD_PROFILE_CLOCK=wall, it is the wall time between two synchronisations, less the cost of an
 * empty synchronise pair.
 * Put it in a context (c->be) for one eager call, then restore the original; never inside a CUDA
 * graph capture. One profiled table at a time. Works on every backend (the CPU's synchronise is a
 * no-op). */
typedef enum sd_prof_class {
    SD_PROF_CONV = 0,
    SD_PROF_GEMM,      /* linear layers */
    SD_PROF_ATTENTION, /* fused attention, maps and their application, their backward */
    SD_PROF_NORM,      /* group norm (+SiLU), layer norm */
    SD_PROF_MEMORY,    /* elementwise, layout, conversions, copies */
    SD_PROF_N
} sd_prof_class;
/* One kind of op at one shape ("f16 conv 3x3 320->320 64x64 b2"): the finer table, to name the
 * individual kernels that take the time. */
#define SD_PROF_MAX_SHAPES 256
typedef struct sd_prof_shape {
    char what[72];
    sd_prof_class cls;
    int64_t calls;
    double seconds, flops, bytes;
} sd_prof_shape;
typedef struct sd_profile {
    int64_t calls[SD_PROF_N];
    double seconds[SD_PROF_N];
    double flops[SD_PROF_N]; /* 2 per multiply-add */
    double bytes[SD_PROF_N]; /* activations read and written (weights not counted) */
    double sync_overhead_s;  /* subtracted from every op timed by the wall clock */
    int device_timed;        /* 1: ops timed by CUDA events behind a hold (see above) */
    int64_t launch_bound_ops; /* device-timed ops whose launches took longer than the hold */
    sd_prof_shape shapes[SD_PROF_MAX_SHAPES]; /* by op and shape; the rest pooled in the last one */
    int n_shapes;
} sd_profile;
const sd_backend *sd_backend_profiled(const sd_backend *be, sd_profile *out);
const char *sd_prof_class_name(sd_prof_class k);

/* CUDA graphs: sd_cuda_graph_begin() starts capturing the backend stream; every op called until
 * sd_cuda_graph_end() is recorded, not run; sd_cuda_graph_replay() runs the recording again (and
 * returns without waiting: call the table's synchronize or download to wait).
 * Constraints, because a graph replays the same kernels with the same arguments:
 *   - run the work once before capturing it: the arena chunks, the workspace, cuDNN and cuBLASLt
 *     plans must exist already (growing them during capture fails with a clear error);
 *   - reset the arena to the same mark before capture and keep it there: outputs land at the
 *     same addresses every replay; inputs must be written into the same device buffers;
 *   - scalars passed by value are frozen: the UNet's `t` (it is fill()ed into a buffer, so a
 *     replay reuses the captured timestep) and attention-hook decisions (which maps to write).
 *     A per-step timestep needs the tvec buffer written before replay (an upload outside the
 *     graph), or one graph per timestep;
 *   - no host synchronisation inside: download, all_finite and synchronize fail while capturing. */
typedef struct sd_cuda_graph sd_cuda_graph;
sd_status sd_cuda_graph_begin(void);
sd_status sd_cuda_graph_end(sd_cuda_graph **out);
sd_status sd_cuda_graph_replay(sd_cuda_graph *g);
void sd_cuda_graph_free(sd_cuda_graph *g);

/* Attention with batch-row maps, the self-attention injection of Prompt-to-Prompt / P2Plus:
 *   out[b] = attention(q[q_rows[b]], k[k_rows[b]], v[v_rows[b]])   for b < B_out,
 * with the layouts of the table's attention (q[*, Sq, H·D], k[*, Sk, H·D], v[*, Sk, H·Dv], heads
 * packed in channels, out[B_out, Sq, H·Dv]). Row maps are host arrays of B_out ints (each an
 * index of a batch row of its input; NULL means the identity b); B_out <= SD_ATTN_MAX_ROWS when
 * a map is given. Example: target row 1 attending with the source row 0's queries and keys and
 * its own values: q_rows = k_rows = {0, 0}, v_rows = {0, 1}. Fused (no maps materialised). */
#define SD_ATTN_MAX_ROWS 64
sd_status sd_cuda_attention_rows(const float *q, const float *k, const float *v, float *out,
                                 int64_t B_out, const int32_t *q_rows, const int32_t *k_rows,
                                 const int32_t *v_rows, int64_t Sq, int64_t Sk, int H, int D,
                                 int Dv, float scale, int causal);

#ifdef __cplusplus
}
#endif
#endif
