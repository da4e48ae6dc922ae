/* net.h -- networks: ordered lists of layers (internal; the layer specs users write are
 * vaec.h's vaec_layer_spec).
 *
 * A network maps R rows of an input tensor to R rows of an output tensor. A row is one
 * example's tensor, (C, H, W) or flat (D), stored contiguously (NCHW order, so a flat row
 * is the same memory as the spatial one); rows follow each other at a row stride (`ld`,
 * in floats, usually the size rounded up to 16).
 *
 * A layer is "an operation, then an activation": y = act(op(x)), act the identity unless
 * an activation layer was fused into it. Each layer kind is one file (layer_linear.c,
 * layer_act.c, ...) with
 *   shape     its output shape from its input shape (or a message naming what is wrong),
 *   params    its tensors, added to the model's arena with torch names ("encoder.0.weight"),
 *   plan      the workspace it needs for R rows (counts with no buffer, lays out with one),
 *   forward   y(R, out) = act(op(x(R, in))),
 *   backward  from g = dL/d(op's output) (the gradient BEFORE the layer's activation):
 *             its parameter gradients (the gradient protocol below) and, when asked,
 *             din = dL/dx multiplied by in_act'(x), the derivative of the activation that
 *             produced x (the layer below's; identity for the network's input) -- so
 *             every buffer of gradients holds what the layer below needs,
 * and one line in layers.c's table (vaec_layer_ops_of). The network code never looks
 * inside a layer.
 *
 * An activation layer (VAEC_LAYER_ACT) that follows a layer which can carry an activation
 * (Linear: its GEMM epilogue) is fused into it: it keeps its place in the list (and its
 * index for the names of the layers after it) but does no work. Otherwise it runs alone
 * as "the identity, then the activation".
 *
 * Gradient protocol (the rule, stated here once): within one call of a model, the first
 * backward pass through a layer WRITES its parameter gradients and later ones ADD to them,
 * when the model began the call with vaec_nets_grads_begin (which also zeroes every other
 * gradient of the arena: flow parameters, padding) and ends it with vaec_nets_grads_end
 * (which zeroes the gradients of a layer no backward reached). A network whose model did
 * not begin the call that way (M2, the stand-alone flow and Real NVP's s/t networks, whose
 * models zero the arena's gradients first) always adds. So no pass clears gradients that a
 * backward is about to write.
 *
 * Workspace (one plan per network): vaec_net_plan(net, NULL, rows) counts the floats the
 * network needs for `rows` rows -- every layer's output and output-gradient buffers and its
 * own workspace -- and vaec_net_plan(net, buf, rows) lays them out in buf (64-byte aligned
 * blocks). No size is summed by hand anywhere else.
 */
#ifndef VAEC_NET_H
#define VAEC_NET_H

#include "internal.h"

#define VAEC_NET_MAX_LAYERS 64
#define VAEC_NET_PREFIX_LEN 24

/* One example's tensor: (c, h, w); flat = 1 for a (D) row (then c = D, h = w = 1).
 * Layout: channels first (NCHW, torch's: the data and every flat row are so) or, with nhwc,
 * channels last, (h, w, c) in memory: what the spatial layers make, so that convolutions
 * copy runs of C floats; a one-channel tensor is both. The network's output is channels
 * first (vaec_net_finish). */
typedef struct {
    int flat;
    int64_t c, h, w;
    int nhwc;
} vaec_dims;
static inline int64_t vaec_dims_size(vaec_dims d) { return d.c * d.h * d.w; }
static inline vaec_dims vaec_dims_flat(int64_t n) { vaec_dims d = {1, n, 1, 1, 0}; return d; }
/* (c, h, w) channels last (a spatial layer's output) */
static inline vaec_dims vaec_dims_nhwc(int64_t c, int64_t h, int64_t w) { vaec_dims d = {0, c, h, w, 1}; return d; }
/* whether a tensor's channels lie apart from one another in memory (a transpose away from
 * the other layout): channels last, with more than one channel */
static inline int vaec_dims_channels_last(vaec_dims d) { return !d.flat && d.nhwc && d.c > 1; }
/* "(32, 7, 7)" or "(784)" into buf */
char *vaec_dims_format(vaec_dims d, char *buf, size_t n);

typedef struct vaec_net vaec_net;
typedef struct vaec_layer vaec_layer;

/* Per-layer flags given by the model when it adds a layer (vaec_net_add). */
enum {
    VAEC_NET_SPARSE_INPUT = 1   /* Linear reading the model's data: keeps W^T in the arena and takes
                                   the sparse path (sparse.c) when its input is mostly zeros */
};

/* A layer kind's operations (one file each; layers.c lists them). */
typedef struct {
    const char *name;                /* "Linear", "ReLU", ... (messages) */
    int can_fuse_act;                /* an activation layer after it can be fused into it */
    /* out from L->in and L->spec; VAEC_ERR_ARG with a message naming the problem */
    vaec_status (*shape)(vaec_layer *L);
    /* tensors into the arena (names from L->names); NULL: no parameters */
    vaec_status (*params)(vaec_layer *L, vaec_arena *a);
    /* the kind's own workspace for `rows` rows: counts (buf NULL) or lays out; floats */
    int64_t (*plan)(vaec_layer *L, float *buf, int64_t rows);
    /* y(R, out) = act(op(x(R, in))), row strides ldx, ldy */
    void (*forward)(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx, int64_t R);
    /* g(R, out) = dL/d(op output): parameter gradients (added, or written when !accumulate);
     * din(R, in) = (dL/dx) * in_act'(x) when din != NULL. x is the layer's input. */
    void (*backward)(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act, const float *g,
                     int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate);
    /* its output may be its input's memory (flatten, unflatten): no buffers, no work, when
     * the layer's shape function leaves L->alias set */
    int alias;
} vaec_layer_ops;

/* The ops of a layer kind (NULL for an unknown kind). */
const vaec_layer_ops *vaec_layer_ops_of(int kind);

struct vaec_layer {
    vaec_layer_spec spec;
    const vaec_layer_ops *ops;
    vaec_dims in, out;
    vaec_act act;                /* the activation applied to the output (IDENTITY: none) */
    int fused;                   /* an activation layer done by the layer before it */
    int alias;                   /* its output is its input's memory (no buffers, no work) */
    int flags;                   /* VAEC_NET_* */
    int heads;                   /* Linear: output heads (1, or 2 for [mu | logvar]) */
    int64_t extra;               /* Linear: the columns of one more head after them (0: none) */
    char names[3][VAEC_NAME_LEN];  /* its tensors' name prefixes, one per head */
    vaec_linear lin;             /* Linear-like kinds: the weight and bias in the arena */
    int64_t p0, p1;              /* its parameters' range [p0, p1) in the arena (p0 == p1: none) */
    /* the plan (vaec_net_plan) */
    float *y, *g;                /* output and dL/d(op output), rows x ld */
    int64_t ld;
    float *ws;                   /* the kind's workspace */
    /* the spatial kinds: their geometry (conv.c) and how many examples a block of their
     * workspace holds (the work is done block by block: memory bounded, sums in a fixed
     * order whatever the thread count) */
    vaec_conv_geom geom;
    int64_t group;
    /* per-call state of a kind: the input rows of which the workspace holds a form the
     * forward made and the backward may use (Linear: its sparse copy spx; Conv2d: their
     * columns; ConvTranspose2d: them channels last); NULL: none */
    vaec_spx spx;
    const float *sp_for;
    int64_t sp_rows;
};

/* Extra per-call input of the label layer (M2's [x, onehot(y)] products, layer_label.c):
 * the class of each output row, and how many output rows share one input row. */
typedef struct {
    const int32_t *cls;
    int64_t reps;
} vaec_net_labels;

struct vaec_net {
    char prefix[VAEC_NET_PREFIX_LEN];
    vaec_dims in, out;
    int n, cap;
    vaec_layer *layer;           /* cap layers of the model's (a network owns no memory) */
    vaec_arena *arena;
    vaec_pool *pool;
    int64_t rows;                /* rows the plan holds */
    uint64_t fresh;              /* layers whose parameter gradients this call has not written yet */
    int track;                   /* the call began with vaec_nets_grads_begin */
    atomic_int nonfinite;        /* a gradient written by a backward of this call holds Inf or NaN */
    vaec_net_labels labels;
};

/* An empty network on rows of shape `in`, whose tensors are named "<prefix>.<index>...",
 * with room for `cap` (<= VAEC_NET_MAX_LAYERS) layers in `storage` (the model's). */
void vaec_net_init(vaec_net *net, const char *prefix, vaec_dims in, vaec_layer *storage, int cap);
/* Append a layer: its output shape from the network's current output, its tensors planned
 * into arena `a` (before vaec_arena_alloc). `names`: its tensors' name prefixes, `heads` of
 * them (Linear only: 2 stacks [mu | logvar] in one product); NULL names it
 * "<prefix>.<index>" with index = the spec's position. VAEC_ERR_ARG names the layer's
 * index and the shapes when they do not fit. */
vaec_status vaec_net_add(vaec_net *net, vaec_arena *a, const vaec_layer_spec *spec, int index,
                         const char *const *names, int heads, int flags);
/* The same for a Linear layer with one more head, names[heads], of `extra` columns after
 * the `heads` heads of spec->out columns (the VAE's [mu | logvar | amortized flow]). */
vaec_status vaec_net_add_heads(vaec_net *net, vaec_arena *a, const vaec_layer_spec *spec, int index,
                               const char *const *names, int heads, int64_t extra, int flags);
/* After the last layer: a network whose output is channels last with several channels
 * gets a layer that puts them first (the models read NCHW). */
vaec_status vaec_net_finish(vaec_net *net, vaec_arena *a);
/* The pool the network's layers run on (the model creates it after planning). */
void vaec_net_bind(vaec_net *net, vaec_pool *pool, vaec_arena *a);
/* Counts (buf NULL) or lays out the workspace for `rows` rows (a multiple of 8); floats. */
int64_t vaec_net_plan(vaec_net *net, float *buf, int64_t rows);

/* Forward on R rows (R <= the planned rows) of x (stride ldx): returns the output rows
 * (stride *ldy). Every layer's output stays in the plan for the backward. */
const float *vaec_net_forward(vaec_net *net, const float *x, int64_t ldx, int64_t R, int64_t *ldy);
/* The buffer that holds the output of a forward (stride *ld): where the model reads it. */
float *vaec_net_out(vaec_net *net, int64_t *ld);
/* The buffer where the caller puts dL/d(output) of the last forward (stride *ld). */
float *vaec_net_dout(vaec_net *net, int64_t *ld);
/* Backward of the last forward on the same x and R: from dL/d(output) in vaec_net_dout
 * (multiplied first by the last layer's activation derivative when it has one), every
 * layer in reverse; parameter gradients by the gradient protocol; dx = dL/dx (stride lddx)
 * when dx != NULL. */
void vaec_net_backward(vaec_net *net, const float *x, int64_t ldx, int64_t R, float *dx, int64_t lddx);

/* Start a call's gradients for the networks of one arena (the gradient protocol): every
 * gradient outside their layers zeroed, every layer of theirs fresh. */
void vaec_nets_grads_begin(vaec_arena *a, vaec_net *const *nets, int n);
/* End it: a layer no backward reached gets zeros; returns 1 if a written gradient holds
 * Inf or NaN (0 otherwise). */
int vaec_nets_grads_end(vaec_net *const *nets, int n);
/* The arena range [lo, hi) of a network's parameters (lo == hi: none). */
void vaec_net_param_range(const vaec_net *net, int64_t *lo, int64_t *hi);

/* A layer spec in a model file's config record: VAEC_LAYER_RECORD bytes, little-endian:
 * i32 kind, i32 act, i64 out, i32 kernel[2], stride[2], padding[2], output_padding[2],
 * i32 scale, f32 slope, i64 shape[3], i64 classes. */
#define VAEC_LAYER_RECORD 88
void vaec_layer_record_put(unsigned char *p, const vaec_layer_spec *s);
void vaec_layer_record_get(const unsigned char *p, vaec_layer_spec *s);

/* A leaky ReLU layer whose slope is not the kernels' 0.01 (done by layer_act.c alone). */
static inline int vaec_act_custom_slope(const vaec_layer_spec *s) {
    return s->kind == VAEC_LAYER_ACT && s->act == VAEC_ACT_LEAKY_RELU && s->slope != 0.0f && s->slope != 0.01f;
}

/* Row-parallel helpers for layer kinds: rows [a, b) of task t with ROW_GRAIN rows a task. */
#define VAEC_ROW_GRAIN 8
static inline void vaec_task_rows(int64_t t, int64_t R, int64_t *a, int64_t *b) {
    *a = t * VAEC_ROW_GRAIN;
    *b = *a + VAEC_ROW_GRAIN < R ? *a + VAEC_ROW_GRAIN : R;
}
/* d(R, n) *= act'(y) row by row, on the pool (a separate pass, when no GEMM can fuse it). */
void vaec_rows_act_backward(vaec_pool *pool, vaec_act act, float *d, int64_t ldd, const float *y, int64_t ldy,
                            int64_t R, int64_t n);
void vaec_rows_act_forward(vaec_pool *pool, vaec_act act, float *y, int64_t ldy, const float *x, int64_t ldx,
                           int64_t R, int64_t n);

#endif
