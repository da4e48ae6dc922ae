/* layer_linear.c -- Linear: y = act(x W^T + b), torch.nn.Linear's weight (out, in).
 *
 *   forward   y(R, OUT) = act(x(R, IN) . W(OUT, IN)^T + b(OUT)): one GEMM, the bias and the
 *             activation in its epilogue, tile by tile (dense.c);
 *   backward  dW(OUT, IN) (+)= g^T . x,  db(OUT) (+)= colsum(g),
 *             din(R, IN) = (g . W) * in_act'(x), the derivative in din's epilogue.
 * A (C, H, W) input is seen as its C*H*W features. With `heads` = 2 the layer is two
 * Linear layers on the same input stacked into one product ("encoder.mu" rows, then
 * "encoder.logvar"): the weights of both, then the biases (vaec_arena_add_linear).
 *
 * On the model's data (VAEC_NET_SPARSE_INPUT) the layer keeps W^T (IN, OUT) in the arena
 * (vaec_arena_add_linear_wt) and, when sparse.c says its input is mostly zeros, works on
 * the nonzeros: the forward sums the rows of W^T at each row's nonzero columns, the
 * weight gradient sums the rows of g at each column's nonzero rows into dW^T's rows. The
 * backward uses the sparse copy the forward made only for the same input rows.
 *
 * A channels-last input (a convolution's output with no Flatten between) is put channels
 * first in the workspace before the product, so that the features are in torch's order;
 * its input gradient is put back channels last. */
#include "net.h"

static vaec_status linear_shape(vaec_layer *L) {
    if (L->spec.out < 1 || L->spec.out > ((int64_t)1 << 26))
        return vaec_fail(VAEC_ERR_ARG, "%s: Linear(%lld): the output size must be between 1 and 2^26", L->names[0],
                         (long long)L->spec.out);
    if (L->heads > 1 && (L->flags & VAEC_NET_SPARSE_INPUT))
        return vaec_fail(VAEC_ERR_ARG, "%s: a Linear layer on sparse inputs has one head", L->names[0]);
    if (L->extra > 0 && (L->flags & VAEC_NET_SPARSE_INPUT))
        return vaec_fail(VAEC_ERR_ARG, "%s: a Linear layer on sparse inputs has one head", L->names[0]);
    L->out = vaec_dims_flat(L->spec.out * L->heads + L->extra);
    return VAEC_OK;
}

static vaec_status linear_params(vaec_layer *L, vaec_arena *a) {
    const int64_t in = vaec_dims_size(L->in);
    const char *names[3] = {L->names[0], L->names[1], L->names[2]};
    if (L->flags & VAEC_NET_SPARSE_INPUT) return vaec_arena_add_linear_wt(a, &L->lin, names[0], in, L->spec.out);
    return vaec_arena_add_linear_ex(a, &L->lin, names, L->heads, in, L->spec.out, L->extra);
}

/* the sparse copy of the input rows (only on the model's data), or the input channels first */
static int64_t linear_plan(vaec_layer *L, float *buf, int64_t rows) {
    if (vaec_dims_channels_last(L->in)) return rows * L->lin.in;
    if (!(L->flags & VAEC_NET_SPARSE_INPUT)) return 0;
    int64_t n = vaec_spx_layout(&L->spx, buf, rows, L->lin.in);
    if (buf) L->sp_for = NULL;
    return n;
}

/* a channels-last input, channels first in the workspace: the rows the product reads */
static const float *features(vaec_net *net, vaec_layer *L, const float *x, int64_t ldx, int64_t R, int64_t *ld) {
    if (!vaec_dims_channels_last(L->in)) {
        *ld = ldx;
        return x;
    }
    vaec_conv_nhwc_to_nchw(net->pool, x, ldx, L->ws, L->lin.in, R, L->in.h * L->in.w, L->in.c);
    *ld = L->lin.in;
    return L->ws;
}

/* y(R, OUT) = act(x(R, IN) . W^T + b) */
static void linear_forward(vaec_net *net, vaec_layer *L, float *y, int64_t ldy, const float *x, int64_t ldx,
                           int64_t R) {
    const float *P = net->arena->params;
    const vaec_linear *l = &L->lin;
    L->sp_for = NULL;
    if ((L->flags & VAEC_NET_SPARSE_INPUT) && L->spx.cap_rows && vaec_spx_build(net->pool, x, ldx, R, l->in, &L->spx)) {
        vaec_sparse_forward(net->pool, &L->spx, P + l->W, l->out, P + l->b, L->act, y, ldy, l->out);
        L->sp_for = x;
        L->sp_rows = R;
        return;
    }
    x = features(net, L, x, ldx, R, &ldx);
    vaec_dense_forward_act_strided(net->pool, y, ldy, x, ldx, P + l->W, l->wt, P + l->b, L->act, R, l->in, l->out);
}

/* dW (+)= g(R, OUT)^T . x(R, IN), db (+)= colsum(g), din(R, IN) = (g . W) * in_act'(x) */
static void linear_backward(vaec_net *net, vaec_layer *L, float *din, int64_t lddin, vaec_act in_act,
                            const float *g, int64_t ldg, const float *x, int64_t ldx, int64_t R, int accumulate) {
    const vaec_linear *l = &L->lin;
    float *G = net->arena->grads;
    const float *P = net->arena->params;
    if (L->sp_for == x && L->sp_rows == R) {
        vaec_sparse_weight_grad(net->pool, &L->spx, g, ldg, l->out, G + l->W, accumulate, &net->nonfinite);
        vaec_dense_bias_grad(net->pool, G + l->b, g, ldg, R, l->out, accumulate, &net->nonfinite);
        if (din)
            vaec_dense_backward_act_strided_ex(net->pool, din, lddin, NULL, NULL, g, ldg, x, ldx, P + l->W, l->wt,
                                               in_act, R, l->in, l->out, 1, NULL);
        return;
    }
    if (vaec_dims_channels_last(L->in)) {
        /* the product on the input channels first; its input gradient made there, then put
         * channels last and multiplied by in_act' */
        int64_t ldt;
        const float *xt = features(net, L, x, ldx, R, &ldt);
        vaec_dense_backward_act_strided_ex(net->pool, NULL, 0, G + l->W, G + l->b, g, ldg, xt, ldt, P + l->W, l->wt,
                                           VAEC_ACT_IDENTITY, R, l->in, l->out, accumulate, &net->nonfinite);
        if (!din) return;
        vaec_dense_backward_act_strided_ex(net->pool, L->ws, l->in, NULL, NULL, g, ldg, xt, ldt, P + l->W, l->wt,
                                           VAEC_ACT_IDENTITY, R, l->in, l->out, 1, NULL);
        vaec_conv_nchw_to_nhwc(net->pool, L->ws, l->in, din, lddin, R, L->in.h * L->in.w, L->in.c);
        vaec_rows_act_backward(net->pool, in_act, din, lddin, x, ldx, R, l->in);
        return;
    }
    vaec_dense_backward_act_strided_ex(net->pool, din, lddin, G + l->W, G + l->b, g, ldg, x, ldx, P + l->W, l->wt,
                                       in_act, R, l->in, l->out, accumulate, &net->nonfinite);
}

const vaec_layer_ops vaec_layer_linear = {
    "Linear", 1, linear_shape, linear_params, linear_plan, linear_forward, linear_backward, 0,
};
