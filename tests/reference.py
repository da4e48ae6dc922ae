"""Independent float64 NumPy reference VAE (no vaec import).

This module mirrors the vaec specification with plain functions so that the
C implementation can be held against it:

* parameters are a dict ``name -> float64 array`` with torch.nn.Linear
  conventions (``weight`` is ``(out, in)``, ``bias`` is ``(out,)``);
* encoder ``encoder.{i}`` (widths ``hidden``), heads ``encoder.mu`` and
  ``encoder.logvar``; decoder ``decoder.{i}`` (widths ``hidden`` reversed),
  head ``decoder.out`` and, for the Gaussian likelihood, ``decoder.logvar``;
* z = mu + exp(logvar / 2) * eps, eps of shape (L, n, latent);
* loss = mean over examples of -ELBO, ELBO = mean_l log p(x|z_l) - KL.

Gradients are written out by hand (reverse-mode, layer by layer); nothing here
uses autograd or finite differences.
"""

import numpy as np

ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu")
LIKELIHOODS = ("bernoulli", "gaussian")
LOG2PI = float(np.log(2.0 * np.pi))
LEAKY_SLOPE = 0.01
ELU_ALPHA = 1.0


# ---------------------------------------------------------------------------
# elementwise helpers
# ---------------------------------------------------------------------------

def sigmoid(a):
    a = np.asarray(a, dtype=np.float64)
    # exp(-softplus(-a)) is exact and never overflows
    return np.exp(-np.logaddexp(0.0, -a))


def softplus(a):
    return np.logaddexp(0.0, np.asarray(a, dtype=np.float64))


def activate(name, a):
    if name == "tanh":
        return np.tanh(a)
    if name == "relu":
        return np.maximum(a, 0.0)
    if name == "softplus":
        return softplus(a)
    if name == "sigmoid":
        return sigmoid(a)
    if name == "elu":
        return np.where(a > 0, a, ELU_ALPHA * np.expm1(np.minimum(a, 0.0)))
    if name == "leaky_relu":
        return np.where(a > 0, a, LEAKY_SLOPE * a)
    raise ValueError(f"unknown activation {name!r}")


def activate_grad(name, a, h):
    """d act(a) / d a, given pre-activation a and output h = act(a)."""
    if name == "tanh":
        return 1.0 - h * h
    if name == "relu":
        return (a > 0).astype(np.float64)
    if name == "softplus":
        return sigmoid(a)
    if name == "sigmoid":
        return h * (1.0 - h)
    if name == "elu":
        return np.where(a > 0, 1.0, ELU_ALPHA * np.exp(np.minimum(a, 0.0)))
    if name == "leaky_relu":
        return np.where(a > 0, 1.0, LEAKY_SLOPE)
    raise ValueError(f"unknown activation {name!r}")


# ---------------------------------------------------------------------------
# parameters
# ---------------------------------------------------------------------------

def param_shapes(input_dim, latent_dim, hidden, likelihood):
    """Ordered dict name -> shape, following the vaec naming scheme."""
    if likelihood not in LIKELIHOODS:
        raise ValueError(f"unknown likelihood {likelihood!r}")
    hidden = tuple(int(h) for h in hidden)
    shapes = {}
    fan_in = input_dim
    for i, w in enumerate(hidden):
        shapes[f"encoder.{i}.weight"] = (w, fan_in)
        shapes[f"encoder.{i}.bias"] = (w,)
        fan_in = w
    for head in ("mu", "logvar"):
        shapes[f"encoder.{head}.weight"] = (latent_dim, fan_in)
        shapes[f"encoder.{head}.bias"] = (latent_dim,)
    fan_in = latent_dim
    for i, w in enumerate(hidden[::-1]):
        shapes[f"decoder.{i}.weight"] = (w, fan_in)
        shapes[f"decoder.{i}.bias"] = (w,)
        fan_in = w
    heads = ("out", "logvar") if likelihood == "gaussian" else ("out",)
    for head in heads:
        shapes[f"decoder.{head}.weight"] = (input_dim, fan_in)
        shapes[f"decoder.{head}.bias"] = (input_dim,)
    return shapes


def init_params(input_dim, latent_dim, hidden, likelihood, rng):
    """Uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) for weights and biases."""
    if not isinstance(rng, np.random.Generator):
        rng = np.random.default_rng(rng)
    params = {}
    for name, shape in param_shapes(input_dim, latent_dim, hidden, likelihood).items():
        layer = name.rsplit(".", 1)[0]
        fan_in = param_shapes(input_dim, latent_dim, hidden, likelihood)[layer + ".weight"][1]
        bound = 1.0 / np.sqrt(fan_in)
        params[name] = rng.uniform(-bound, bound, size=shape).astype(np.float64)
    return params


def n_layers(params, prefix):
    """Number of hidden layers ``{prefix}.{i}`` present in params."""
    k = 0
    while f"{prefix}.{k}.weight" in params:
        k += 1
    return k


def likelihood_of(params):
    return "gaussian" if "decoder.logvar.weight" in params else "bernoulli"


# ---------------------------------------------------------------------------
# inputs
# ---------------------------------------------------------------------------

def as_input(x):
    """uint8 -> x/255, anything else -> float64 (same values)."""
    x = np.asarray(x)
    if x.dtype == np.uint8:
        return x.astype(np.float64) / 255.0
    return x.astype(np.float64)


def as_eps(eps):
    eps = np.asarray(eps, dtype=np.float64)
    if eps.ndim == 2:
        eps = eps[None]
    if eps.ndim != 3:
        raise ValueError("eps must be (n, latent) or (L, n, latent)")
    return eps


# ---------------------------------------------------------------------------
# building blocks
# ---------------------------------------------------------------------------

def _linear(params, name, h):
    return h @ params[name + ".weight"].T + params[name + ".bias"]


def _linear_back(params, grads, name, h_in, d_out):
    """Accumulate dW, db for layer ``name``; return d h_in."""
    grads[name + ".weight"] += d_out.T @ h_in
    grads[name + ".bias"] += d_out.sum(axis=0)
    return d_out @ params[name + ".weight"]


def _mlp(params, prefix, h, activation):
    cache = []
    for i in range(n_layers(params, prefix)):
        name = f"{prefix}.{i}"
        a = _linear(params, name, h)
        out = activate(activation, a)
        cache.append((name, h, a, out))
        h = out
    return h, cache


def _mlp_back(params, grads, cache, activation, d_h):
    for name, h_in, a, out in reversed(cache):
        d_a = d_h * activate_grad(activation, a, out)
        d_h = _linear_back(params, grads, name, h_in, d_a)
    return d_h


def encode(params, x, activation):
    """Returns (mu, logvar), each (n, latent)."""
    h, _ = _mlp(params, "encoder", as_input(x), activation)
    return _linear(params, "encoder.mu", h), _linear(params, "encoder.logvar", h)


def decode_raw(params, z, activation):
    """Decoder heads for z of shape (..., latent): dict with 'out' (logits or
    Gaussian mean) and, for the Gaussian likelihood, 'logvar'."""
    z = np.asarray(z, dtype=np.float64)
    lead = z.shape[:-1]
    g, _ = _mlp(params, "decoder", z.reshape(-1, z.shape[-1]), activation)
    res = {"out": _linear(params, "decoder.out", g)}
    if likelihood_of(params) == "gaussian":
        res["logvar"] = _linear(params, "decoder.logvar", g)
    return {k: v.reshape(lead + v.shape[-1:]) for k, v in res.items()}


def decode(params, z, activation, likelihood=None):
    """Bernoulli probabilities or Gaussian means, shape (..., input_dim)."""
    likelihood = likelihood or likelihood_of(params)
    out = decode_raw(params, z, activation)["out"]
    return sigmoid(out) if likelihood == "bernoulli" else out


# ---------------------------------------------------------------------------
# forward / backward
# ---------------------------------------------------------------------------

def _forward(params, x, eps, activation, likelihood):
    if likelihood != likelihood_of(params):
        raise ValueError("likelihood does not match the parameter set")
    x = as_input(x)
    eps = as_eps(eps)
    L, n, k = eps.shape
    if x.shape[0] != n:
        raise ValueError("eps batch size does not match x")
    D = x.shape[1]

    h, enc_cache = _mlp(params, "encoder", x, activation)
    mu = _linear(params, "encoder.mu", h)
    lv = _linear(params, "encoder.logvar", h)
    std = np.exp(0.5 * lv)
    z = mu[None] + std[None] * eps                       # (L, n, k)
    z2 = z.reshape(L * n, k)
    g, dec_cache = _mlp(params, "decoder", z2, activation)
    out = _linear(params, "decoder.out", g).reshape(L, n, D)
    xx = x[None]                                         # (1, n, D)
    res = {}
    if likelihood == "bernoulli":
        logp = (xx * out - softplus(out)).sum(axis=-1)   # (L, n)
        decoded = sigmoid(out)
        res["logits"] = out
    else:
        dlv = _linear(params, "decoder.logvar", g).reshape(L, n, D)
        logp = -0.5 * (LOG2PI + dlv + (xx - out) ** 2 * np.exp(-dlv)).sum(axis=-1)
        decoded = out
        res["dec_logvar"] = dlv
    log_px = logp.mean(axis=0)
    kl = 0.5 * (mu ** 2 + np.exp(lv) - 1.0 - lv).sum(axis=-1)
    res.update(mu=mu, logvar=lv, z=z, decoded=decoded, log_px_samples=logp,
               log_px=log_px, kl=kl, elbo=log_px - kl)
    cache = dict(x=x, eps=eps, h=h, enc_cache=enc_cache, std=std, g=g,
                 dec_cache=dec_cache, L=L, n=n, k=k, D=D)
    return res, cache


def forward(params, x, eps, activation, likelihood):
    """Per-example quantities: mu, logvar (n, k); decoded (L, n, D);
    log_px, kl, elbo (n,). Extra keys: z, log_px_samples, logits/dec_logvar."""
    return _forward(params, x, eps, activation, likelihood)[0]


def loss_and_grad(params, x, eps, activation, likelihood):
    """loss = mean_i(-ELBO_i) and its gradient w.r.t. every parameter."""
    res, c = _forward(params, x, eps, activation, likelihood)
    L, n, k, D = c["L"], c["n"], c["k"], c["D"]
    x, eps = c["x"], c["eps"]
    mu, lv, std = res["mu"], res["logvar"], c["std"]
    loss = float(-res["elbo"].mean())
    grads = {name: np.zeros_like(p, dtype=np.float64) for name, p in params.items()}

    # loss = (1/n) sum_i [KL_i - (1/L) sum_l logp_il]
    w = 1.0 / (n * L)                       # d loss / d logp_il = -w
    g = c["g"]
    if likelihood == "bernoulli":
        d_out = -w * (x[None] - sigmoid(res["logits"]))             # (L, n, D)
        d_g = _linear_back(params, grads, "decoder.out", g, d_out.reshape(L * n, D))
    else:
        m, dlv = res["decoded"], res["dec_logvar"]
        r2 = (x[None] - m) ** 2 * np.exp(-dlv)
        d_m = -w * (x[None] - m) * np.exp(-dlv)
        d_dlv = -w * (-0.5 + 0.5 * r2)
        d_g = _linear_back(params, grads, "decoder.out", g, d_m.reshape(L * n, D))
        d_g = d_g + _linear_back(params, grads, "decoder.logvar", g, d_dlv.reshape(L * n, D))
    d_z = _mlp_back(params, grads, c["dec_cache"], activation, d_g).reshape(L, n, k)

    # z = mu + exp(lv/2) * eps ; KL = 0.5 sum(mu^2 + exp(lv) - 1 - lv)
    d_mu = d_z.sum(axis=0) + mu / n
    d_lv = (d_z * eps).sum(axis=0) * 0.5 * std + 0.5 * (np.exp(lv) - 1.0) / n
    h = c["h"]
    d_h = _linear_back(params, grads, "encoder.mu", h, d_mu)
    d_h = d_h + _linear_back(params, grads, "encoder.logvar", h, d_lv)
    _mlp_back(params, grads, c["enc_cache"], activation, d_h)
    return loss, grads


# ---------------------------------------------------------------------------
# optimizer (torch.optim.Adam semantics, float64)
# ---------------------------------------------------------------------------

def adam_init(params):
    return {"t": 0,
            "m": {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()},
            "v": {k: np.zeros_like(v, dtype=np.float64) for k, v in params.items()}}


def adam_step(params, grads, state, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
    """In-place torch-style bias-corrected Adam update of ``params``."""
    b1, b2 = betas
    state["t"] += 1
    t = state["t"]
    bc1 = 1.0 - b1 ** t
    bc2 = 1.0 - b2 ** t
    for k in params:
        gk = grads[k]
        state["m"][k] = b1 * state["m"][k] + (1.0 - b1) * gk
        state["v"][k] = b2 * state["v"][k] + (1.0 - b2) * gk * gk
        denom = np.sqrt(state["v"][k]) / np.sqrt(bc2) + eps
        params[k] = params[k] - (lr / bc1) * state["m"][k] / denom
    return params


def rel_err(a, b):
    """Norm-based relative error ||a - b|| / ||b|| (float64)."""
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    nb = np.linalg.norm(b.ravel())
    return float(np.linalg.norm((a - b).ravel()) / max(nb, 1e-300))
