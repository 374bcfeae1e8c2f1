/* step_graph.c: repeated steps replayed as CUDA graphs (autograd.h, sd_graph_step).
 *
 * Why a graph can stand in for a whole step: the step's host code (nn layers, the tape, the
 * reverse pass) makes the same decisions every time, so with the arena at the same position it
 * allocates the same addresses and launches the same kernels with the same arguments. What may
 * differ between steps is only what device memory holds; the key checks that everything read from
 * outside the step still lives where it did at capture. */
#include <string.h>

#include "sd/autograd.h"
#include "sd/device.h"
#include "tape.h"

void sd_step_graph_init(sd_step_graph *g, const sd_ctx *c) {
    memset(g, 0, sizeof *g);
    g->enabled = sd_ctx_on_cuda(c) && !c->eager;
}

static void drop_graph(sd_step_graph *g) {
    sd_cuda_graph_free(g->graph);
    g->graph = NULL;
}

void sd_step_graph_free(sd_step_graph *g) { drop_graph(g); }

/* FNV-1a over raw bytes: a fingerprint of positions and addresses, not of values. */
static uint64_t fnv1a(uint64_t h, const void *p, size_t n) {
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++) h = (h ^ b[i]) * 1099511628211ull;
    return h;
}

static uint64_t step_key(const sd_ctx *c, int backward, const void *const *inputs, int n_inputs,
                         sd_tensor *const *leaves, int n_leaves) {
    uint64_t h = 1469598103934665603ull;
    const sd_arena_mark m = sd_arena_get_mark(c->arena);
    const size_t pos[6] = {m.chunk, m.offset, m.used, m.host_chunk, m.host_offset, m.host_used};
    h = fnv1a(h, pos, sizeof pos);
    if (n_inputs > 0) h = fnv1a(h, inputs, (size_t)n_inputs * sizeof *inputs);
    for (int i = 0; i < n_leaves; i++) h = fnv1a(h, &leaves[i]->data, sizeof leaves[i]->data);
    h = fnv1a(h, &c->recompute, sizeof c->recompute);
    h = fnv1a(h, &backward, sizeof backward);
    return h;
}

static sd_tensor *run_eagerly(sd_ctx *c, sd_tape *tape, sd_step_forward_fn forward, void *arg) {
    sd_tape *outer = c->tape;
    sd_ctx_set_tape(c, tape);
    sd_tensor *out = forward(c, arg);
    if (tape && c->status == SD_OK) sd_backward(c, out);
    sd_ctx_set_tape(c, outer);
    return c->status == SD_OK ? out : NULL;
}

/* Records the step into a graph (nothing runs while recording), then runs the graph once. A
 * failed capture leaves the tape and arena as they were and returns NULL with c->status SD_OK
 * after a warning: the caller then runs the step op by op. */
static sd_tensor *capture(sd_ctx *c, sd_step_graph *g, sd_tape *tape, sd_step_forward_fn forward, void *arg,
                          sd_tensor *const *leaves, int n_leaves) {
    const sd_arena_mark start = sd_arena_get_mark(c->arena);
    sd_status st = sd_cuda_graph_begin();
    sd_tensor *out = NULL;
    if (st == SD_OK) {
        out = run_eagerly(c, tape, forward, arg);
        sd_cuda_graph *graph = NULL;
        const sd_status end = sd_cuda_graph_end(&graph); /* always ends the capture */
        st = c->status != SD_OK ? c->status : end;
        if (st == SD_OK) g->graph = graph;
        else sd_cuda_graph_free(graph);
    }
    if (st != SD_OK) {
        sd_warn("capturing a repeated step into a CUDA graph failed (%s); the steps run op by op instead",
                sd_last_error());
        if (tape) sd_tape_reset(tape);
        sd_arena_reset(c->arena, start);
        c->status = SD_OK;
        g->enabled = 0;
        return NULL;
    }
    g->captures++;
    g->workspace = sd_cuda_workspace_generation(); /* a capture cannot grow it (cu_workspace) */
    g->out = *out;
    g->end_mark = sd_arena_get_mark(c->arena);
    for (int i = 0; i < n_leaves; i++) {
        g->has_grad[i] = leaves[i]->grad != NULL;
        if (g->has_grad[i]) g->grads[i] = *leaves[i]->grad;
    }
    if (!sd_ctx_check(c, sd_cuda_graph_replay(g->graph))) return NULL; /* the capture ran nothing */
    g->replays++;
    c->graph_replays++;
    return out;
}

static sd_tensor *replay(sd_ctx *c, sd_step_graph *g, sd_tape *tape, sd_tensor *const *leaves, int n_leaves) {
    if (!sd_ctx_check(c, sd_cuda_graph_replay(g->graph))) return NULL;
    g->replays++;
    c->graph_replays++;
    /* The step's activations, output and gradients now sit where the capture put them: claim that
     * memory until the caller resets the arena, as an op-by-op step would have. */
    sd_arena_reset(c->arena, g->end_mark);
    for (int i = 0; tape && i < n_leaves; i++) {
        if (!g->has_grad[i]) continue;
        leaves[i]->grad = &g->grads[i];
        if (sd_tape_note_leaf(c, tape, leaves[i])) return NULL;
    }
    return &g->out;
}

sd_tensor *sd_graph_step(sd_ctx *c, sd_step_graph *g, sd_tape *tape, sd_step_forward_fn forward, void *arg,
                        const void *const *inputs, int n_inputs, sd_tensor *const *leaves, int n_leaves) {
    if (c->status != SD_OK) return NULL;
    if (n_leaves > SD_STEP_GRAPH_MAX_LEAVES)
        return sd_ctx_fail(c, SD_ERR_INTERNAL, "sd_graph_step: %d leaves, at most %d", n_leaves,
                           SD_STEP_GRAPH_MAX_LEAVES);
    g->steps++;
    /* c->eager is read on every call: a caller may set it for one step (a profiling run, whose
     * timing backend a replayed graph would bypass); the captured graph stays for later steps */
    if (!g->enabled || c->eager) return run_eagerly(c, tape, forward, arg);
    const uint64_t key = step_key(c, tape != NULL, inputs, n_inputs, leaves, n_leaves);
    if (g->graph && g->key == key) {
        if (g->workspace == sd_cuda_workspace_generation()) return replay(c, g, tape, leaves, n_leaves);
        /* an op outside the step grew the device's workspace since the capture: the graph's
         * kernels would use the freed buffer. The step already ran with this key, so it is
         * captured again at once (the workspace is large enough for it: it only grows). */
        drop_graph(g);
    }
    if (g->key != key) {
        drop_graph(g);
        g->key = key;
        g->eager_runs = 0;
    }
    if (g->eager_runs == 0) {
        g->eager_runs++;
        return run_eagerly(c, tape, forward, arg);
    }
    sd_tensor *out = capture(c, g, tape, forward, arg, leaves, n_leaves);
    if (out || c->status != SD_OK) return out;
    return run_eagerly(c, tape, forward, arg); /* the capture failed and said why */
}
