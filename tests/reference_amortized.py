"""Independent float64 NumPy reference for the VAE with an *amortized* planar flow
posterior, spec "planar:K:amortized" (no vaec import).

Rezende & Mohamed (2015): the inference network outputs the flow's parameters per data
point (van den Berg et al.'s Sylvester-flows code does the same with its amor_u / amor_w /
amor_b heads). Here:

* the parameters are those of the plain VAE (see reference.py) plus a third encoder head
  ``encoder.flow`` (weight (K*(2Z+1), H_last), bias (K*(2Z+1),)) on the encoder's last
  hidden layer h, the same h that ``encoder.mu`` and ``encoder.logvar`` read;
* per example c = W_flow h + b_flow, and layer k uses the block
  c[k*(2Z+1):(k+1)*(2Z+1)] = [u (Z) | w (Z) | b (1)];
* planar layer: p = w.u, u_hat = u + (softplus(p) - 1 - p) w / |w|^2, a = w.z + b,
  z' = z + u_hat tanh(a), log|det| = log(1 + (1 - tanh(a)^2) w.u_hat)
  = log(h^2 + (1 - h^2) softplus(p)), h = tanh(a);
* z0 = mu + exp(logvar / 2) eps, zK = f_K o ... o f_1(z0) and the per-sample term is
  log p(x|zK) + log N(zK; 0, I) - log q0(z0|x) + sum_k log|det_k|, with
  log q0(z0|x) = -1/2 sum_j (log 2 pi + logvar_j + eps_j^2).

Everything is float64. The planar layer is also written out on its own
(``planar_layer``, ``planar_flow``) so that its log-determinant can be held to a
central-difference Jacobian.
"""

import numpy as np

from reference import (LOG2PI, _linear, _mlp, as_eps, as_input, decode_raw, likelihood_of,
                       softplus)


def block_width(latent_dim):
    """Columns of one layer's block [u | w | b]."""
    return 2 * int(latent_dim) + 1


def flow_head_shapes(latent_dim, hidden_last, K):
    """Shapes of the amortized flow's encoder head (the only extra parameters)."""
    out = int(K) * block_width(latent_dim)
    return {"encoder.flow.weight": (out, int(hidden_last)), "encoder.flow.bias": (out,)}


def split_blocks(c, latent_dim, K):
    """c (..., K*(2Z+1)) -> list of K tuples (u (..., Z), w (..., Z), b (...))."""
    c = np.asarray(c, dtype=np.float64)
    Z, W = int(latent_dim), block_width(latent_dim)
    if c.shape[-1] != K * W:
        raise ValueError(f"flow parameters: expected {K * W} columns, got {c.shape[-1]}")
    out = []
    for k in range(K):
        blk = c[..., k * W:(k + 1) * W]
        out.append((blk[..., :Z], blk[..., Z:2 * Z], blk[..., 2 * Z]))
    return out


def planar_layer(z, u, w, b):
    """One planar layer with per-row parameters, float64.

    z, u, w: (..., Z) (u, w broadcast against z), b: (...). Returns (z', log|det|) with
    z' of z's shape and log|det| of shape z.shape[:-1]. The log-det uses the
    cancellation-free form log(h^2 + (1 - h^2) softplus(w.u)), which equals
    log(1 + (1 - h^2) w.u_hat) whenever w != 0."""
    z = np.asarray(z, dtype=np.float64)
    u = np.asarray(u, dtype=np.float64)
    w = np.asarray(w, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    p = np.sum(w * u, axis=-1)
    q = np.sum(w * w, axis=-1)
    # (softplus(p) - 1 - p) / |w|^2, written as (softplus(-p) - 1) / |w|^2 (exact identity)
    gamma = np.where(q > 0, (softplus(-p) - 1.0) / np.where(q > 0, q, 1.0), 0.0)
    uh = u + gamma[..., None] * w
    h = np.tanh(np.sum(w * z, axis=-1) + b)
    zo = z + h[..., None] * uh
    logdet = np.log(h * h + (1.0 - h * h) * softplus(p))
    return zo, logdet


def planar_layer_logdet_direct(z, u, w, b):
    """The textbook log|det| = log|1 + (1 - h^2) w.u_hat| (for cross-checking the stable
    form away from the cancellation regime)."""
    z = np.asarray(z, dtype=np.float64)
    p = np.sum(w * u, axis=-1)
    q = np.sum(w * w, axis=-1)
    uh = u + ((softplus(p) - 1.0 - p) / q)[..., None] * w
    h = np.tanh(np.sum(w * z, axis=-1) + b)
    return np.log(np.abs(1.0 + (1.0 - h * h) * np.sum(w * uh, axis=-1)))


def planar_flow(z, c, K):
    """K amortized planar layers: z (..., Z), c (..., K*(2Z+1)) broadcast against z's
    leading dims. Returns (zK, sum_k log|det_k|)."""
    z = np.asarray(z, dtype=np.float64)
    ld = np.zeros(z.shape[:-1])
    for u, w, b in split_blocks(c, z.shape[-1], K):
        z, l = planar_layer(z, u, w, b)
        ld = ld + l
    return z, ld


def encoder_heads(params, x, activation):
    """(mu, logvar, c), each (n, .): the three heads on the encoder's last hidden layer."""
    h, _ = _mlp(params, "encoder", as_input(x), activation)
    return (_linear(params, "encoder.mu", h), _linear(params, "encoder.logvar", h),
            _linear(params, "encoder.flow", h))


def log_px(params, x, zK, activation, likelihood):
    """log p(x|z) for z of shape (L, n, Z) -> (L, n)."""
    x = as_input(x)[None]
    dec = decode_raw(params, zK, activation)
    out = dec["out"]
    if likelihood == "bernoulli":
        return (x * out - softplus(out)).sum(axis=-1)
    dlv = dec["logvar"]
    return -0.5 * (LOG2PI + dlv + (x - out) ** 2 * np.exp(-dlv)).sum(axis=-1)


def forward(params, x, eps, activation, likelihood, K):
    """Dict of per-sample quantities (L, n): z0, zK, logdet, log_px, log_prior, log_q0,
    terms (the ELBO terms); and per example mu, logvar, c."""
    if likelihood != likelihood_of(params):
        raise ValueError("likelihood does not match the parameter set")
    if "encoder.flow.weight" not in params:
        raise ValueError("no amortized flow head 'encoder.flow' in params")
    x = as_input(x)
    eps = as_eps(eps)
    L, n, Z = eps.shape
    if x.shape[0] != n:
        raise ValueError("eps batch size does not match x")
    mu, lv, c = encoder_heads(params, x, activation)
    z0 = mu[None] + np.exp(0.5 * lv)[None] * eps
    zK, ld = planar_flow(z0, c[None], K)
    lpx = log_px(params, x, zK, activation, likelihood)
    lprior = -0.5 * (LOG2PI + zK ** 2).sum(axis=-1)
    lq0 = -0.5 * (LOG2PI + lv[None] + eps ** 2).sum(axis=-1)
    return dict(mu=mu, logvar=lv, c=c, z0=z0, zK=zK, logdet=ld, log_px=lpx, log_prior=lprior,
                log_q0=lq0, terms=lpx + lprior - lq0 + ld)


def elbo_terms(params, x, eps, activation, likelihood, K):
    """The per-sample ELBO terms, float64 (L, n)."""
    return forward(params, x, eps, activation, likelihood, K)["terms"]


def elbo(params, x, eps, activation, likelihood, K):
    """Per-example ELBO: mean over the L samples, (n,)."""
    return elbo_terms(params, x, eps, activation, likelihood, K).mean(axis=0)


def iwae(params, x, eps, activation, likelihood, K):
    """Per-example L-sample importance-weighted bound log mean_l exp(term_l), (n,)."""
    t = elbo_terms(params, x, eps, activation, likelihood, K)
    m = t.max(axis=0)
    return m + np.log(np.mean(np.exp(t - m), axis=0))


def numerical_jacobian(fn, z, h=1e-4):
    """Central-difference Jacobian d fn(z) / d z of fn: R^Z -> R^Z at one point z (Z,),
    float64, with the fourth-order five-point stencil
    (-f(z+2h) + 8 f(z+h) - 8 f(z-h) + f(z-2h)) / 12h: truncation O(h^4), rounding
    O(1e-16 / h), so about 1e-12 per entry at h = 1e-4 (the plain two-point difference's
    ~1e-10 is too coarse for log|det J| of a nearly singular layer, where w.u_hat -> -1)."""
    z = np.asarray(z, dtype=np.float64)
    Z = z.shape[0]
    J = np.empty((Z, Z))
    for j in range(Z):
        e = np.zeros(Z)
        e[j] = h
        J[:, j] = (-fn(z + 2 * e) + 8 * fn(z + e) - 8 * fn(z - e) + fn(z - 2 * e)) / (12 * h)
    return J
