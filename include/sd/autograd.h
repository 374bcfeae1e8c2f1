/* autograd.h: autodiff-lite (design.md, "the tape").
 *
 * While a tape is attached to a context (sd_ctx_set_tape), every nn op whose inputs lead to a
 * trainable leaf records a node: the op, its inputs and output (arena tensors, so nothing is
 * copied), and its attributes. sd_backward(loss) walks the nodes in reverse and calls each op's
 * backward in the backend, computing gradients only along paths that reach a leaf marked
 * requires_grad: frozen model weights get no gradient, and layers before the first trainable
 * input record nothing at all (no memory, no time).
 *
 * Leaves are tensors with requires_grad = 1 (a null-text embedding, a substituted value input,
 * mapping-network weights). After sd_backward their gradient is in leaf->grad (arena memory,
 * valid until sd_tape_reset / the arena reset that ends the step).
 *
 * Rules: an op run under a tape must not modify a recorded tensor in place (the backward reads
 * the saved forward values); sd_keep and sd_assign copy without recording (they detach).
 *
 * Memory: a node's gradient buffer is recycled for later gradients once its backward has run, and
 * with c->recompute the UNet's blocks are recomputed in the backward instead of keeping their
 * activations (sd_checkpoint in nn.h: every resnet, and every transformer block whose maps the
 * attention hook does not need — StyleDiffusion's value substitution is passed in as an input;
 * the blocks whose maps its attention loss reads keep their activations). */
#ifndef SD_AUTOGRAD_H
#define SD_AUTOGRAD_H

#include "sd/nn.h"

typedef struct sd_tape sd_tape;

sd_tape *sd_tape_new(void);
void sd_tape_free(sd_tape *t);
/* Attach (start recording) or detach (NULL) a tape. */
void sd_ctx_set_tape(sd_ctx *c, sd_tape *t);
/* Forgets every node and clears the grads of the leaves it touched. Call it before resetting the
 * arena that holds the step's activations. */
void sd_tape_reset(sd_tape *t);
int sd_tape_size(const sd_tape *t);
/* 1 when t leads to a trainable leaf: a requires_grad leaf, or the output of a node of the
 * context's current tape. */
int sd_tape_needs_grad(const sd_ctx *c, const sd_tensor *t);

/* Back-propagates from a one-element loss recorded on the context's tape. Fails (naming the op)
 * when an op on the path has no backward on this backend. */
sd_status sd_backward(sd_ctx *c, sd_tensor *loss);

/* mean((a - b)^2) as a one-element tensor (recorded when a or b needs a gradient). */
sd_tensor *sd_mse(sd_ctx *c, sd_tensor *a, sd_tensor *b);
/* The value of a one-element tensor on the host (a device sync). NaN when the context failed. */
float sd_item(sd_ctx *c, const sd_tensor *x);
/* 1 when every value is finite (a device sync). */
int sd_all_finite(sd_ctx *c, const sd_tensor *x);
/* ok[k] = 1 when every value of xs[k] is finite (F32 tensors, 1 to SD_ALL_FINITE_MAX): one device
 * sync for all of them. */
sd_status sd_all_finite_each(sd_ctx *c, const sd_tensor *const *xs, int count, int *ok);

/* A trainable tensor on the context's device that outlives steps (heap / device memory, owned):
 * requires_grad = 1. Values copied from `init` (host F32, same shape) or zero when init is NULL. */
sd_tensor *sd_param_new(sd_ctx *c, const sd_tensor *init, const char *name);
/* Copies values between two tensors of the context's device with equal element counts. */
sd_status sd_param_copy(sd_ctx *c, sd_tensor *dst, const sd_tensor *src);

/* Adam over a set of parameters, as torch.optim.Adam (betas 0.9/0.999, eps 1e-8, no weight
 * decay unless added later). A parameter whose grad is NULL after backward is skipped, as torch
 * skips grads that are None. */
typedef struct sd_adam {
    sd_tensor **params;
    sd_tensor **m, **v; /* moment buffers, same shapes, on the device */
    int n;
    int step;
    double lr, beta1, beta2, eps; /* doubles, as torch holds them */
} sd_adam;

sd_status sd_adam_init(sd_ctx *c, sd_adam *opt, sd_tensor **params, int n, double lr);
sd_status sd_adam_step(sd_ctx *c, sd_adam *opt);
/* The optimiser as sd_adam_init leaves it (moments zero, step 0) with learning rate lr, on the
 * buffers it has: the inversions' new Adam per timestep without allocating (and, on a GPU, freeing:
 * a device sync) its moments every timestep. */
sd_status sd_adam_restart(sd_ctx *c, sd_adam *opt, double lr);
void sd_adam_free(sd_adam *opt);

/* ------------------------------------------------------------------------------------------------
 * Repeated steps replayed as CUDA graphs.
 *
 * An optimisation loop runs the same forward + backward many times, a DDIM loop the same UNet call;
 * only values change (parameters, latents, and per-timestep inputs kept in device buffers). At
 * batch 1 on a GPU, launching the thousands of kernels of a UNet forward + backward one by one
 * costs the host about as long as the GPU takes to run them; a CUDA graph launches them with one call.
 *
 * sd_graph_step(c, g, tape, forward, arg, ...) computes out = forward(c, arg) and, when `tape` is
 * given, back-propagates out (a one-element loss) to the leaves with the tape recording; it
 * returns out, and each leaf's grad is then set as after sd_backward, until sd_tape_reset. With a
 * NULL tape it is a forward-only step (a DDIM step: out is the next latent). How it runs:
 *   - op by op, on the CPU, whenever c->eager is set (also when it is set only for one call, as
 *     a profiling run does: a replayed graph would bypass c->be), and the first time it sees a
 *     key (that run creates the library plans, workspaces and arena chunks a capture needs);
 *   - the second time with the same key, captured into a CUDA graph and run;
 *   - from then on, the graph is replayed: forward is not called at all.
 * The key covers the activation arena's position and `inputs`, the addresses of everything the
 * forward reads that lives outside the step (latents, embeddings, buffers of per-step values)
 * and the leaves: when any of them moves, the graph is dropped and the sequence starts again.
 * So the forward must be a pure function of what those addresses hold: per-step scalars go
 * through device memory (sd_unet_forward_tvec, sd_axpby_dev, sd_ddim_step_dev), never by value,
 * and it may not synchronise with the host (a capture refuses downloads). `out` and the
 * gradients stay in the activation arena until the caller resets it past them.
 * A capture that fails is reported once (sd_warn) and the steps go on op by op.
 * --------------------------------------------------------------------------------------------- */
#define SD_STEP_GRAPH_MAX_LEAVES 16
struct sd_cuda_graph;
typedef sd_tensor *(*sd_step_forward_fn)(sd_ctx *c, void *arg);
typedef struct sd_step_graph {
    int enabled;                  /* a CUDA context without c->eager at init */
    uint64_t key;                 /* what the current graph (or eager run) was made for */
    int eager_runs;               /* runs with this key so far, op by op */
    struct sd_cuda_graph *graph;  /* NULL until captured */
    uint64_t workspace;           /* sd_cuda_workspace_generation() when the graph was captured */
    sd_arena_mark end_mark;       /* the arena's position after the captured step */
    sd_tensor out;                /* header of the captured output (its data stays where it was) */
    sd_tensor grads[SD_STEP_GRAPH_MAX_LEAVES]; /* headers of the leaves' captured gradients */
    int has_grad[SD_STEP_GRAPH_MAX_LEAVES];
    int captures, replays, steps; /* for reports: graphs made, steps run from a graph, all steps */
} sd_step_graph;

void sd_step_graph_init(sd_step_graph *g, const sd_ctx *c);
void sd_step_graph_free(sd_step_graph *g);
sd_tensor *sd_graph_step(sd_ctx *c, sd_step_graph *g, sd_tape *tape, sd_step_forward_fn forward, void *arg,
                        const void *const *inputs, int n_inputs, sd_tensor *const *leaves, int n_leaves);

#endif
