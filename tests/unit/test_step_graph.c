/* test_step_graph.c: repeated steps replayed as CUDA graphs (sd_graph_step, autograd.h).
 *
 * A small gradient step (linear layer -> axpby_dev with per-step coefficients in device memory ->
 * mse against a target, backward to the input) is run several times with new coefficient and
 * leaf values each time:
 *  - on the CPU it always runs op by op, and its gradients match the closed form;
 *  - on a GPU (the host simulator in CI) the first step runs op by op, the second is captured,
 *    the rest replay; losses and gradients must be bit-identical to the same steps run with
 *    c->eager (same kernels, same arguments), which also shows that per-step values written to
 *    device memory reach the replayed kernels;
 *  - moving an input (a new key) drops the graph and captures again;
 *  - an op outside the step that grows the device's workspace after the capture (the graph holds
 *    the old buffer's address) makes the next step capture again instead of replaying;
 *  - c->eager set for one step (as a profiling run does) runs that step op by op through c->be
 *    even after a capture, and the graph is replayed again afterwards;
 *  - a forward that synchronises with the host cannot be captured: the step warns, runs op by
 *    op, and its results are still right. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sd/autograd.h"
#include "sd/device.h"
#include "testutil.h"

#define M 6 /* rows */
#define K 5 /* inputs */
#define N 4 /* outputs */
#define STEPS 5

typedef struct step_env {
    sd_linear_w lin;      /* frozen (N, K) weight and (N) bias */
    sd_tensor *x;         /* leaf (M, K) */
    sd_tensor *z;         /* (M, N) second axpby operand */
    sd_tensor *coef;      /* (2) per-step coefficients, device memory */
    sd_tensor *target[2]; /* (M, N): two buffers, to move the input between steps */
    int which_target;
    int sync_inside;      /* the forward reads a value back to the host (not capturable) */
} step_env;

static sd_tensor *step_forward(sd_ctx *c, void *arg) {
    step_env *e = arg;
    sd_tensor *y = sd_linear(c, e->x, &e->lin);
    y = sd_axpby_dev(c, e->coef, y, e->z);
    if (e->sync_inside) (void)sd_item(c, e->coef); /* a host read: refused while capturing */
    return sd_mse(c, y, e->target[e->which_target]);
}

static sd_tensor *device_tensor(sd_ctx *c, int ndim, const int64_t *shape, uint64_t seed, int trainable) {
    sd_tensor *h = sd_tensor_new(SD_F32, ndim, shape);
    testutil_fill_normal(sd_f32(h), sd_numel(h), seed, 0.8f);
    sd_tensor *d = sd_param_new(c, h, "t");
    sd_tensor_free(h);
    assert_non_null(d);
    d->requires_grad = trainable;
    return d;
}

static void env_init(sd_ctx *c, step_env *e) {
    memset(e, 0, sizeof *e);
    const int64_t wk[2] = {N, K}, bn[1] = {N}, xk[2] = {M, K}, mn[2] = {M, N}, two[1] = {2};
    e->lin.weight = device_tensor(c, 2, wk, 1, 0);
    e->lin.bias = device_tensor(c, 1, bn, 2, 0);
    e->x = device_tensor(c, 2, xk, 3, 1);
    e->z = device_tensor(c, 2, mn, 4, 0);
    e->coef = device_tensor(c, 1, two, 5, 0);
    e->target[0] = device_tensor(c, 2, mn, 6, 0);
    e->target[1] = device_tensor(c, 2, mn, 7, 0);
}

static void env_free(step_env *e) {
    sd_tensor *all[] = {e->lin.weight, e->lin.bias, e->x, e->z, e->coef, e->target[0], e->target[1]};
    for (size_t i = 0; i < sizeof all / sizeof all[0]; i++) sd_tensor_free(all[i]);
}

/* Step s's values: coefficients and leaf written to device memory before the step runs. */
static void set_step_values(sd_ctx *c, step_env *e, int s) {
    const float coef[2] = {0.5f + 0.25f * (float)s, -1.0f + 0.125f * (float)s};
    assert_sd_ok(c->be->upload(e->coef->data, coef, sizeof coef));
    float x[M * K];
    for (int i = 0; i < M * K; i++) x[i] = sinf(0.37f * (float)(i + 1) + 0.9f * (float)s);
    assert_sd_ok(c->be->upload(e->x->data, x, sizeof x));
}

typedef struct step_result {
    float loss;
    float grad[M * K];
} step_result;

/* An op outside the step that needs more workspace than anything so far (a 4096 x 8192 bf16 data
 * gradient: 64 MiB for dy's bf16 copy): the device reallocates its workspace. */
static void grow_workspace(sd_ctx *c) {
    const int64_t rows = 4096, cols = 8192;
    const uint64_t before = sd_cuda_workspace_generation();
    float *dy = c->be->mem_alloc((size_t)(rows * cols) * sizeof(float)), *dx = c->be->mem_alloc((size_t)rows * sizeof(float));
    sd_f16 *w = c->be->mem_alloc((size_t)cols * sizeof(sd_f16));
    assert_true(dy && dx && w);
    assert_sd_ok(c->be->zero(dy, (size_t)(rows * cols) * sizeof(float)));
    assert_sd_ok(c->be->zero(w, (size_t)cols * sizeof(sd_f16)));
    assert_sd_ok(c->be->f16->linear_backward_data_bf16w(dy, w, dx, rows, 1, cols, 0));
    assert_sd_ok(c->be->synchronize());
    assert_true(sd_cuda_workspace_generation() > before);
    c->be->mem_free(dy);
    c->be->mem_free(dx);
    c->be->mem_free(w);
}

/* Runs STEPS steps through g and returns each step's loss and gradient (the workspace grown before
 * step grow_at, when >= 0). */
static void run_steps_growing(sd_ctx *c, step_env *e, sd_step_graph *g, step_result *out, int move_target_at,
                              int grow_at) {
    sd_tape *tape = sd_tape_new();
    for (int s = 0; s < STEPS; s++) {
        set_step_values(c, e, s);
        if (s == move_target_at) e->which_target = 1;
        if (s == grow_at) grow_workspace(c);
        const sd_arena_mark mark = sd_arena_get_mark(c->arena);
        const void *inputs[] = {e->z->data, e->coef->data, e->target[e->which_target]->data};
        sd_tensor *loss = sd_graph_step(c, g, tape, step_forward, e, inputs, 3, &e->x, 1);
        assert_non_null(loss);
        assert_non_null(e->x->grad);
        out[s].loss = sd_item(c, loss);
        assert_sd_ok(c->be->download(out[s].grad, e->x->grad->data, sizeof out[s].grad));
        sd_tape_reset(tape);
        assert_null(e->x->grad);
        sd_arena_reset(c->arena, mark);
    }
    sd_tape_free(tape);
}

static void run_steps(sd_ctx *c, step_env *e, sd_step_graph *g, step_result *out, int move_target_at) {
    run_steps_growing(c, e, g, out, move_target_at, -1);
}

/* The same steps on the host in double: loss = mean((a (x Wᵀ + b) + β z − t)²), dL/dx. */
static void closed_form(sd_ctx *c, step_env *e, int s, step_result *want) {
    float W[N * K], b[N], z[M * N], t[M * N], x[M * K], coef[2];
    set_step_values(c, e, s);
    assert_sd_ok(c->be->download(W, e->lin.weight->data, sizeof W));
    assert_sd_ok(c->be->download(b, e->lin.bias->data, sizeof b));
    assert_sd_ok(c->be->download(z, e->z->data, sizeof z));
    assert_sd_ok(c->be->download(t, e->target[e->which_target]->data, sizeof t));
    assert_sd_ok(c->be->download(x, e->x->data, sizeof x));
    assert_sd_ok(c->be->download(coef, e->coef->data, sizeof coef));
    double r[M * N], loss = 0.0;
    for (int i = 0; i < M; i++)
        for (int j = 0; j < N; j++) {
            double y = b[j];
            for (int k = 0; k < K; k++) y += (double)x[i * K + k] * W[j * K + k];
            r[i * N + j] = coef[0] * y + coef[1] * z[i * N + j] - t[i * N + j];
            loss += r[i * N + j] * r[i * N + j];
        }
    want->loss = (float)(loss / (M * N));
    for (int i = 0; i < M; i++)
        for (int k = 0; k < K; k++) {
            double gsum = 0.0;
            for (int j = 0; j < N; j++) gsum += 2.0 * r[i * N + j] / (M * N) * coef[0] * W[j * K + k];
            want->grad[i * K + k] = (float)gsum;
        }
}

static void expect_close_to_closed_form(sd_ctx *c, step_env *e, const step_result *got) {
    for (int s = 0; s < STEPS; s++) {
        step_result want;
        closed_form(c, e, s, &want);
        if (fabsf(got[s].loss - want.loss) > 1e-5f * fmaxf(1.0f, fabsf(want.loss)))
            fail_msg("step %d: loss %.9g, closed form %.9g", s, got[s].loss, want.loss);
        for (int i = 0; i < M * K; i++)
            if (fabsf(got[s].grad[i] - want.grad[i]) > 1e-5f)
                fail_msg("step %d: d loss / d x[%d] = %.9g, closed form %.9g", s, i, got[s].grad[i], want.grad[i]);
    }
}

static void test_cpu_runs_op_by_op(void **state) {
    (void)state;
    sd_ctx c;
    assert_sd_ok(sd_ctx_init_cpu(&c));
    step_env e;
    env_init(&c, &e);
    sd_step_graph g;
    sd_step_graph_init(&g, &c);
    assert_int_equal(g.enabled, 0);
    step_result got[STEPS];
    run_steps(&c, &e, &g, got, -1);
    assert_int_equal(g.steps, STEPS);
    assert_int_equal(g.replays, 0);
    expect_close_to_closed_form(&c, &e, got);
    sd_step_graph_free(&g);
    env_free(&e);
    sd_ctx_free(&c);
}

static sd_ctx gpu;
static int have_gpu_ctx;

static void require_gpu_ctx(void) {
    testutil_skip_without_gpu();
    if (!have_gpu_ctx) {
        assert_sd_ok(sd_device_open("cuda", SD_PRECISION_EXACT, &gpu));
        have_gpu_ctx = 1;
    }
}

static void test_replay_matches_op_by_op(void **state) {
    (void)state;
    require_gpu_ctx();
    step_env e;
    env_init(&gpu, &e);
    step_result graphed[STEPS], eager[STEPS];
    sd_step_graph g;
    sd_step_graph_init(&g, &gpu);
    assert_int_equal(g.enabled, 1);
    run_steps(&gpu, &e, &g, graphed, -1);
    print_message("    %d steps: %d graph captured, %d run from it\n", g.steps, g.captures, g.replays);
    assert_int_equal(g.captures, 1);
    assert_int_equal(g.replays, STEPS - 1);
    sd_step_graph_free(&g);

    gpu.eager = 1;
    sd_step_graph_init(&g, &gpu);
    assert_int_equal(g.enabled, 0);
    run_steps(&gpu, &e, &g, eager, -1);
    gpu.eager = 0;
    assert_int_equal(g.replays, 0);
    sd_step_graph_free(&g);
    for (int s = 0; s < STEPS; s++) {
        assert_memory_equal(&graphed[s].loss, &eager[s].loss, sizeof(float));
        assert_memory_equal(graphed[s].grad, eager[s].grad, sizeof graphed[s].grad);
    }
    expect_close_to_closed_form(&gpu, &e, graphed);
    env_free(&e);
}

/* Runs the steps through a fresh graph and checks how many graphs they captured and replayed. */
static void run_and_count(step_env *e, step_result *got, int move_target_at, int grow_at, const char *what,
                          int captures, int replays) {
    sd_step_graph g;
    sd_step_graph_init(&g, &gpu);
    run_steps_growing(&gpu, e, &g, got, move_target_at, grow_at);
    print_message("    %s: %d graphs captured, %d steps run from one\n", what, g.captures, g.replays);
    assert_int_equal(g.captures, captures);
    assert_int_equal(g.replays, replays);
    sd_step_graph_free(&g);
}

static void test_moved_input_recaptures(void **state) {
    (void)state;
    require_gpu_ctx();
    step_env e;
    env_init(&gpu, &e);
    step_result got[STEPS];
    /* steps 0-2 on target[0], 3-4 on target[1]: 0 op by op, 1 captured, 2 replayed; 3 op by op
     * (new key), 4 captured */
    run_and_count(&e, got, 3, -1, "target moved at step 3", 2, 3);
    /* the closed form of steps 3 and 4 reads target[1]: compare them with it */
    for (int s = 3; s < STEPS; s++) {
        step_result want;
        closed_form(&gpu, &e, s, &want);
        assert_true(fabsf(got[s].loss - want.loss) <= 1e-5f * fmaxf(1.0f, fabsf(want.loss)));
    }
    env_free(&e);
}

static void test_workspace_growth_recaptures(void **state) {
    (void)state;
    require_gpu_ctx();
    step_env e;
    env_init(&gpu, &e);
    step_result got[STEPS];
    /* 0 op by op, 1 captured, 2 replayed; 3 captured again (same key, new workspace), 4 replayed */
    run_and_count(&e, got, -1, 3, "workspace reallocated before step 3", 2, 4);
    expect_close_to_closed_form(&gpu, &e, got);
    env_free(&e);
}

/* bench grad --profile swaps in the profiling backend and sets c->eager for one step after the
 * step's graph exists: that step must run its ops through c->be (a replay would time nothing). */
static void test_eager_for_one_step_after_capture(void **state) {
    (void)state;
    require_gpu_ctx();
    step_env e;
    env_init(&gpu, &e);
    sd_step_graph g;
    sd_step_graph_init(&g, &gpu);
    sd_tape *tape = sd_tape_new();
    float loss[4];
    for (int s = 0; s < 4; s++) { /* 0 op by op, 1 captured, 2 profiled op by op, 3 replayed */
        set_step_values(&gpu, &e, 0);
        const sd_arena_mark mark = sd_arena_get_mark(gpu.arena);
        const void *inputs[] = {e.z->data, e.coef->data, e.target[0]->data};
        const sd_backend *be = gpu.be;
        sd_profile prof;
        if (s == 2) {
            gpu.be = sd_backend_profiled(be, &prof);
            gpu.eager = 1;
        }
        sd_tensor *out = sd_graph_step(&gpu, &g, tape, step_forward, &e, inputs, 3, &e.x, 1);
        assert_non_null(out);
        loss[s] = sd_item(&gpu, out);
        if (s == 2) {
            gpu.eager = 0;
            gpu.be = be;
            print_message("    profiled step after the capture: %lld linear, %lld elementwise calls timed\n",
                          (long long)prof.calls[SD_PROF_GEMM], (long long)prof.calls[SD_PROF_MEMORY]);
            assert_true(prof.calls[SD_PROF_GEMM] >= 2); /* the forward's and the backward's products */
            /* the CUDA backend's ops are timed by events behind a held stream (profile.c), unless
             * SD_PROFILE_CLOCK=wall asks for the wall clock */
            assert_int_equal(prof.device_timed, 1);
            /* the events' elapsed time reached the classes (a broken timer pair would leave 0) */
            assert_true(prof.seconds[SD_PROF_GEMM] > 0.0);
            /* the leaf's gradient is zero-filled on first use, and the profile shows the fill */
            int zero_fills = 0;
            for (int k = 0; k < prof.n_shapes; k++)
                if (!strcmp(prof.shapes[k].what, "zero fill")) zero_fills += (int)prof.shapes[k].calls;
            assert_true(zero_fills >= 1);
            sd_profile walled;
            setenv("SD_PROFILE_CLOCK", "wall", 1);
            sd_backend_profiled(be, &walled);
            unsetenv("SD_PROFILE_CLOCK");
            assert_int_equal(walled.device_timed, 0);
        }
        sd_tape_reset(tape);
        sd_arena_reset(gpu.arena, mark);
    }
    assert_int_equal(g.captures, 1);
    assert_int_equal(g.replays, 2); /* step 1 (a capture runs its graph) and step 3: the graph
                                     * survived the eager step */
    for (int s = 1; s < 4; s++) assert_memory_equal(&loss[s], &loss[0], sizeof(float));
    sd_tape_free(tape);
    sd_step_graph_free(&g);
    env_free(&e);
}

static void test_uncapturable_step_runs_op_by_op(void **state) {
    (void)state;
    require_gpu_ctx();
    step_env e;
    env_init(&gpu, &e);
    e.sync_inside = 1;
    step_result got[STEPS];
    sd_step_graph g;
    sd_step_graph_init(&g, &gpu);
    run_steps(&gpu, &e, &g, got, -1); /* the second step's capture fails and warns */
    print_message("    a host read inside the step: capture refused, graphs %s, %d of %d steps from a graph\n",
                  g.enabled ? "still on" : "off", g.replays, g.steps);
    assert_int_equal(g.enabled, 0);
    assert_int_equal(g.replays, 0);
    assert_int_equal(gpu.status, SD_OK);
    sd_step_graph_free(&g);
    expect_close_to_closed_form(&gpu, &e, got);
    env_free(&e);
}

static int teardown(void **state) {
    (void)state;
    if (have_gpu_ctx) sd_ctx_free(&gpu);
    return 0;
}

int main(void) {
    sd_set_quiet(1);
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_cpu_runs_op_by_op),
        cmocka_unit_test(test_replay_matches_op_by_op),
        cmocka_unit_test(test_moved_input_recaptures),
        cmocka_unit_test(test_workspace_growth_recaptures),
        cmocka_unit_test(test_eager_for_one_step_after_capture),
        cmocka_unit_test(test_uncapturable_step_runs_op_by_op),
    };
    return cmocka_run_group_tests_name("step_graph", tests, NULL, teardown);
}
