"""vaec against an equivalent float32 PyTorch module.

TorchVAE's state_dict keys are exactly vaec's parameter names, so weights move
between the two with load_state_dict in either direction. With the same
weights and the same reparameterization noise, loss, gradients, ELBO and a few
Adam steps must agree to float32 precision.
"""


import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

import reference as R

import vaec

ACTIVATIONS = ("tanh", "relu", "softplus", "sigmoid", "elu", "leaky_relu")
LIKELIHOODS = ("bernoulli", "gaussian")
HIDDENS = [(), (7,), (13, 5)]
D, K, N = 30, 4, 16

RTOL = 1e-4          # per-tensor norm-based relative error (gradients, params)
RTOL_LOSS = 1e-5     # scalar loss

_ACT = {"tanh": torch.tanh, "relu": F.relu, "softplus": F.softplus,
        "sigmoid": torch.sigmoid, "elu": F.elu, "leaky_relu": F.leaky_relu}


class TorchVAE(nn.Module):
    """Same architecture and parameter names as vaec.VAE."""

    def __init__(self, input_dim, latent_dim=20, hidden=(400,), activation="tanh",
                 likelihood="bernoulli"):
        super().__init__()
        self.act = _ACT[activation]
        self.likelihood = likelihood
        enc, fan = {}, input_dim
        for i, w in enumerate(hidden):
            enc[str(i)] = nn.Linear(fan, w)
            fan = w
        enc["mu"] = nn.Linear(fan, latent_dim)
        enc["logvar"] = nn.Linear(fan, latent_dim)
        self.encoder = nn.ModuleDict(enc)
        dec, fan = {}, latent_dim
        for i, w in enumerate(tuple(hidden)[::-1]):
            dec[str(i)] = nn.Linear(fan, w)
            fan = w
        dec["out"] = nn.Linear(fan, input_dim)
        if likelihood == "gaussian":
            dec["logvar"] = nn.Linear(fan, input_dim)
        self.decoder = nn.ModuleDict(dec)
        self.n_hidden = len(hidden)

    def encode(self, x):
        h = x
        for i in range(self.n_hidden):
            h = self.act(self.encoder[str(i)](h))
        return self.encoder["mu"](h), self.encoder["logvar"](h)

    def decode_raw(self, z):
        g = z
        for i in range(self.n_hidden):
            g = self.act(self.decoder[str(i)](g))
        out = self.decoder["out"](g)
        lv = self.decoder["logvar"](g) if self.likelihood == "gaussian" else None
        return out, lv

    def decode(self, z):
        out, _ = self.decode_raw(z)
        return torch.sigmoid(out) if self.likelihood == "bernoulli" else out

    def elbo(self, x, eps):
        """Per-example ELBO; eps is (L, n, latent)."""
        mu, lv = self.encode(x)
        z = mu + torch.exp(0.5 * lv) * eps
        out, dlv = self.decode_raw(z)
        if self.likelihood == "bernoulli":
            logp = (x * out - F.softplus(out)).sum(-1)
        else:
            logp = -0.5 * (R.LOG2PI + dlv + (x - out) ** 2 * torch.exp(-dlv)).sum(-1)
        kl = 0.5 * (mu ** 2 + lv.exp() - 1 - lv).sum(-1)
        return logp.mean(0) - kl

    def forward(self, x, eps):
        return -self.elbo(x, eps).mean()


# ---------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------

def make_pair(hidden, activation, likelihood, seed=0, via_numpy=True):
    torch.manual_seed(seed)
    tm = TorchVAE(D, K, hidden, activation, likelihood)
    m = vaec.VAE(D, latent_dim=K, hidden=hidden, activation=activation,
                 likelihood=likelihood, seed=seed + 1)
    sd = tm.state_dict()
    if via_numpy:
        sd = {k: v.detach().numpy() for k, v in sd.items()}
    m.load_state_dict(sd)
    return tm, m


def make_x(likelihood, dtype="float32", seed=1):
    rng = np.random.default_rng(seed)
    if dtype == "uint8":
        x = rng.integers(0, 256, size=(N, D), dtype=np.uint8)
        return x, torch.from_numpy(x.astype(np.float32) / np.float32(255))
    if likelihood == "bernoulli":
        x = rng.random((N, D)).astype(np.float32)
    else:
        x = (0.3 + rng.standard_normal((N, D))).astype(np.float32)
    return x, torch.from_numpy(x.copy())


def make_eps(L, seed=2):
    return np.random.default_rng(seed).standard_normal((L, N, K)).astype(np.float32)


def torch_loss_and_grads(tm, xt, eps):
    tm.zero_grad(set_to_none=True)
    loss = tm(xt, torch.from_numpy(eps))
    loss.backward()
    return float(loss.item()), {k: p.grad.detach().numpy().copy()
                                for k, p in tm.named_parameters()}


def rel(a, b):
    return R.rel_err(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64))


# ---------------------------------------------------------------------------
# tests
# ---------------------------------------------------------------------------

@pytest.mark.parametrize("hidden", HIDDENS, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_state_dict_keys_match(likelihood, hidden):
    tm = TorchVAE(D, K, hidden, "tanh", likelihood)
    m = vaec.VAE(D, latent_dim=K, hidden=hidden, likelihood=likelihood)
    tsd = tm.state_dict()
    vsd = m.state_dict()
    assert set(tsd) == set(vsd)
    assert set(tsd) == set(m.params) == set(m.grads)
    for k in tsd:
        assert tuple(tsd[k].shape) == np.asarray(vsd[k]).shape, k


@pytest.mark.parametrize("L", [1, 3])
@pytest.mark.parametrize("hidden", HIDDENS, ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("activation", ACTIVATIONS)
def test_loss_and_grad_parity(activation, likelihood, hidden, L):
    tm, m = make_pair(hidden, activation, likelihood)
    x, xt = make_x(likelihood)
    eps = make_eps(L)
    tloss, tgrads = torch_loss_and_grads(tm, xt, eps)
    loss = m.loss_and_grad(x, eps=eps)
    assert abs(loss - tloss) <= RTOL_LOSS * abs(tloss), (loss, tloss)
    errs = {k: rel(m.grads[k], g) for k, g in tgrads.items()}
    bad = {k: e for k, e in errs.items() if not e <= RTOL}
    assert not bad, f"gradient rel errors above {RTOL}: {bad}"
    with torch.no_grad():
        telbo = tm.elbo(xt, torch.from_numpy(eps)).numpy()
    assert rel(m.elbo(x, samples=L, eps=eps), telbo) <= RTOL


@pytest.mark.parametrize("hidden", [(7,), (13, 5)], ids=str)
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus"])
def test_uint8_and_encode_decode_parity(activation, likelihood, hidden):
    tm, m = make_pair(hidden, activation, likelihood, seed=3)
    x, xt = make_x(likelihood, "uint8")
    eps = make_eps(2, seed=4)
    tloss, tgrads = torch_loss_and_grads(tm, xt, eps)
    loss = m.loss_and_grad(x, eps=eps)
    assert abs(loss - tloss) <= RTOL_LOSS * abs(tloss), (loss, tloss)
    for k, g in tgrads.items():
        assert rel(m.grads[k], g) <= RTOL, k
    with torch.no_grad():
        tmu, tlv = tm.encode(xt)
        z = torch.from_numpy(make_eps(1, seed=5)[0])
        tdec = tm.decode(z).numpy()
    mu, lv = m.encode(x)
    assert rel(mu, tmu.numpy()) <= RTOL
    assert rel(lv, tlv.numpy()) <= RTOL
    assert rel(m.decode(z.numpy()), tdec) <= RTOL


@pytest.mark.parametrize("form", ["tensors", "numpy"])
@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_load_torch_state_dict(form, likelihood):
    hidden = (13, 5)
    torch.manual_seed(7)
    tm = TorchVAE(D, K, hidden, "softplus", likelihood)
    m = vaec.VAE(D, latent_dim=K, hidden=hidden, activation="softplus",
                 likelihood=likelihood, seed=123)
    sd = tm.state_dict()
    if form == "numpy":
        sd = {k: v.detach().numpy() for k, v in sd.items()}
    m.load_state_dict(sd)                       # must accept torch tensors directly
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(m.params[k], v.numpy(), err_msg=k)
        np.testing.assert_array_equal(m.state_dict()[k], v.numpy(), err_msg=k)
    x, xt = make_x(likelihood)
    eps = make_eps(1)
    tloss, _ = torch_loss_and_grads(tm, xt, eps)
    assert m.loss_and_grad(x, eps=eps) == pytest.approx(tloss, rel=RTOL_LOSS)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
def test_vaec_state_dict_loads_into_torch(likelihood):
    hidden = (7,)
    m = vaec.VAE(D, latent_dim=K, hidden=hidden, activation="elu",
                 likelihood=likelihood, seed=5)
    tm = TorchVAE(D, K, hidden, "elu", likelihood)
    tm.load_state_dict({k: torch.from_numpy(np.array(v, dtype=np.float32))
                        for k, v in m.state_dict().items()}, strict=True)
    for k, v in tm.state_dict().items():
        np.testing.assert_array_equal(v.numpy(), m.params[k], err_msg=k)
    x, xt = make_x(likelihood)
    eps = make_eps(2)
    tloss, _ = torch_loss_and_grads(tm, xt, eps)
    assert m.loss_and_grad(x, eps=eps) == pytest.approx(tloss, rel=RTOL_LOSS)


@pytest.mark.parametrize("likelihood", LIKELIHOODS)
@pytest.mark.parametrize("activation", ["tanh", "relu", "softplus"])
def test_adam_training_parity(activation, likelihood):
    hidden, lr, steps, L = (13, 5), 1e-2, 5, 2
    tm, m = make_pair(hidden, activation, likelihood, seed=11)
    start = {k: v.detach().numpy().copy() for k, v in tm.state_dict().items()}
    opt = torch.optim.Adam(tm.parameters(), lr=lr)     # betas (0.9, 0.999), eps 1e-8
    x, xt = make_x(likelihood)
    for step in range(steps):
        eps = make_eps(L, seed=100 + step)
        opt.zero_grad(set_to_none=True)
        tloss = tm(xt, torch.from_numpy(eps))
        tloss.backward()
        opt.step()
        loss = m.train_step(x, lr=lr, eps=eps)
        assert loss == pytest.approx(tloss.item(), rel=RTOL_LOSS), step
    for k, v in tm.state_dict().items():
        v = v.numpy()
        assert rel(m.params[k], v) <= RTOL, k
        # the 5-step displacement itself must match too (not only the sum)
        assert rel(m.params[k] - start[k], v - start[k]) <= 1e-3, k
