"""Normalizing flows (csrc/flows.c, flow_planar.c, flow_radial.c, flow_realnvp.c,
flow_model.c; vaec/flows.py): log-determinants against Jacobians, the Real NVP inverse,
finite-difference gradients of every parameter (energy and maximum-likelihood losses)
and of the input, planar invertibility for any u, the potentials U1-U4, spec errors,
non-finite errors naming the layer, the model file, zero-copy views, thread-count
independence, and parity with PyTorch.

The C core computes in float32 (dots and log-dets accumulated in float64), so it is held
to a float64 NumPy re-implementation of each flow written here, and that reference is
held to float64 central differences of itself."""
import pickle

import numpy as np
import pytest

import vaec
from vaec import _core
from vaec.flows import potentials

SPECS = ["planar:3", "radial:3", "realnvp:3:8", "realnvp:2:6:relu:1.5"]


# ----------------------------------------------------------------- references
def softplus(x):
    return np.logaddexp(0.0, x)


def ref_forward(flow, z, inverse=False):
    """float64 NumPy version of the flow: (output, log|det|) of f (or of f⁻¹)."""
    p = {k: v.astype(np.float64) for k, v in flow.params.items()}
    cfg = flow._core.config()
    z = np.array(z, dtype=np.float64)
    D, ld = flow.dim, np.zeros(len(z))
    order = range(flow.K - 1, -1, -1) if inverse else range(flow.K)
    for k in order:
        q = lambda name: p[f"flow.{k}.{name}"]  # noqa: E731
        if flow.kind == "planar":
            u, w, b = q("u"), q("w"), q("b")[0]
            wu = w @ u
            uh = u + (softplus(wu) - 1.0 - wu) * w / (w @ w)
            h = np.tanh(z @ w + b)
            # 1 + (1 - h²) w·û with w·û = softplus(w·u) - 1, written without the
            # cancellation that ruins it in float64 when w·u << 0 (w·û -> -1)
            ld += np.log(h ** 2 + (1.0 - h ** 2) * softplus(wu))
            z = z + h[:, None] * uh
        elif flow.kind == "radial":
            z0, a = q("z0"), softplus(q("alpha")[0])
            beta = -a + softplus(q("beta")[0])
            d = z - z0
            r = np.linalg.norm(d, axis=1)
            hh = 1.0 / (a + r)
            ld += (D - 1) * np.log1p(beta * hh) + np.log1p(beta * hh - beta * r * hh ** 2)
            z = z + (beta * hh)[:, None] * d
        else:
            half = D // 2
            c, x = (slice(0, half), slice(half, D)) if k % 2 == 0 else (slice(half, D), slice(0, half))
            act = np.tanh if cfg["activation"] == "tanh" else (lambda v: np.maximum(v, 0.0))
            hs = act(z[:, c] @ q("s.0.weight").T + q("s.0.bias"))
            ht = act(z[:, c] @ q("t.0.weight").T + q("t.0.bias"))
            scale = q("scale") if f"flow.{k}.scale" in p else cfg["fixed_scale"]
            s = scale * np.tanh(hs @ q("s.2.weight").T + q("s.2.bias"))
            t = ht @ q("t.2.weight").T + q("t.2.bias")
            z = z.copy()
            if inverse:
                z[:, x] = (z[:, x] - t) * np.exp(-s)
                ld -= s.sum(1)
            else:
                z[:, x] = z[:, x] * np.exp(s) + t
                ld += s.sum(1)
    return z, ld


def np_potential(name, z, box=0.0):
    z1, z2 = z[:, 0], z[:, 1]
    w1 = np.sin(2 * np.pi * z1 / 4)
    w2 = 3 * np.exp(-0.5 * ((z1 - 1) / 0.6) ** 2)
    w3 = 3 / (1 + np.exp(-(z1 - 1) / 0.3))
    if name == "U1":
        U = 0.5 * ((np.linalg.norm(z, axis=1) - 2) / 0.4) ** 2 - np.logaddexp(-0.5 * ((z1 - 2) / 0.6) ** 2,
                                                                              -0.5 * ((z1 + 2) / 0.6) ** 2)
    elif name == "U2":
        U = 0.5 * ((z2 - w1) / 0.4) ** 2
    elif name == "U3":
        U = -np.logaddexp(-0.5 * ((z2 - w1) / 0.35) ** 2, -0.5 * ((z2 - w1 + w2) / 0.35) ** 2)
    else:
        U = -np.logaddexp(-0.5 * ((z2 - w1) / 0.4) ** 2, -0.5 * ((z2 - w1 + w3) / 0.35) ** 2)
    if box > 0:
        U = U + np.sum(0.5 * (np.maximum(np.abs(z) - box, 0) / 0.25) ** 2, axis=1)
    return U


def randomize(flow, rng, scale=0.5):
    """Parameters away from their (partly zero) initial values, |w| not tiny."""
    for name, v in flow.params.items():
        v[...] = (rng.standard_normal(v.shape) * scale).astype(np.float32)
        if name.endswith(".w"):
            v += np.sign(v) * 0.3
    return flow


def make(dim, spec, seed=1, threads=1, rng=None):
    return randomize(vaec.Flow(dim, spec, seed=seed, threads=threads), rng or np.random.default_rng(seed))


def quad_potential(z):
    """A smooth non-Gaussian U in float64 for any dim, with its gradient."""
    z = z.astype(np.float64)
    a = np.arange(1, z.shape[1] + 1)
    U = 0.5 * np.sum(a * (z - 0.3) ** 2, axis=1) + np.sin(z[:, 0])
    g = a * (z - 0.3)
    g[:, 0] += np.cos(z[:, 0])
    return U, g


def directional_errors(flow, lossfn, rng, h=1e-2, directions=1):
    """Per tensor: median relative error of the central difference of the loss along
    random unit directions against grad . v (cf. tests/test_gradcheck.py)."""
    lossfn()
    grads = {k: v.copy() for k, v in flow.grads.items()}
    errors = {}
    for name, p in flow.params.items():
        errs = []
        for _ in range(directions):
            v = rng.standard_normal(p.shape).astype(np.float32)
            v /= np.linalg.norm(v)
            p0 = p.copy()
            p[...] = p0 + h * v
            lp = lossfn()
            p[...] = p0 - h * v
            lm = lossfn()
            p[...] = p0
            fd = (lp - lm) / (2 * h)
            an = float(np.sum(grads[name].astype(np.float64) * v))
            errs.append(abs(fd - an) / max(abs(an), abs(fd), 1e-2))
        errors[name] = float(np.median(errs))
    return errors


def dims_for(spec):
    return [2, 5, 16] if spec.startswith("realnvp") else [1, 2, 5, 16]


# ------------------------------------------------------------- log-dets
@pytest.mark.parametrize("spec", SPECS)
def test_forward_and_logdet_match_the_float64_reference(spec):
    rng = np.random.default_rng(0)
    for D in dims_for(spec):
        f = make(D, spec, rng=rng)
        z = rng.standard_normal((40, D)).astype(np.float32)
        x, ld = f.transform(z)
        xr, ldr = ref_forward(f, z)
        assert x.dtype == np.float32 and ld.dtype == np.float64 and x.shape == z.shape and ld.shape == (40,)
        assert np.allclose(x, xr, rtol=1e-4, atol=1e-4), (spec, D, np.abs(x - xr).max())
        assert np.allclose(ld, ldr, rtol=1e-4, atol=1e-4), (spec, D, np.abs(ld - ldr).max())


def numerical_logdet(fn, z, h=1e-5):
    """log|det J| of fn at each row of z by float64 central differences."""
    n, D = z.shape
    J = np.zeros((n, D, D))
    for j in range(D):
        e = np.zeros(D)
        e[j] = h
        J[:, :, j] = (fn(z + e) - fn(z - e)) / (2 * h)
    return np.linalg.slogdet(J)[1]


@pytest.mark.parametrize("spec", SPECS)
def test_logdet_matches_the_numerical_jacobian(spec):
    """The float64 reference's log-det equals log|det| of its finite-difference Jacobian
    (to 1e-7), and the C log-det equals it to float32 accuracy; the C transform's own
    Jacobian by float64 central differences (step 1e-2 on float32; 1e-3 across ReLU kinks)
    agrees too."""
    rng = np.random.default_rng(1)
    for D in dims_for(spec):
        f = make(D, spec, rng=rng)
        z = rng.standard_normal((6, D))
        ref = numerical_logdet(lambda v: ref_forward(f, v)[0], z)
        _, ld_ref = ref_forward(f, z)
        assert np.abs(ref - ld_ref).max() < 1e-7, (spec, D)
        _, ld = f.transform(z.astype(np.float32))
        assert np.abs(ld - ref).max() < 1e-4 * max(1.0, np.abs(ref).max()), (spec, D, np.abs(ld - ref).max())
        if D <= 5:
            num_c = numerical_logdet(lambda v: f.transform(v.astype(np.float32))[0].astype(np.float64),
                                     z.astype(np.float32).astype(np.float64), h=1e-3 if "relu" in spec else 1e-2)
            assert np.abs(num_c - ld).max() < 5e-3, (spec, D, np.abs(num_c - ld).max())


@pytest.mark.parametrize("D", [2, 3, 5, 16])
def test_realnvp_inverse_undoes_the_forward(D):
    rng = np.random.default_rng(D)
    f = make(D, "realnvp:5:12", rng=rng)
    z = rng.standard_normal((300, D)).astype(np.float32)
    x, ld = f.transform(z)
    z2, ldi = f.inverse(x)
    assert np.abs(z2 - z).max() < 1e-4
    assert np.abs(ld + ldi).max() < 1e-5
    x2, _ = f.transform(f.inverse(z)[0])
    assert np.abs(x2 - z).max() < 1e-4
    xr, ldr = ref_forward(f, x, inverse=True)
    assert np.allclose(z2, xr, atol=1e-4) and np.allclose(ldi, ldr, atol=1e-4)
    # log_prob = log N(f^-1(x)) + log|det df^-1/dx|; samples carry their own log q
    lp = f.log_prob(x)
    assert np.allclose(lp, -0.5 * np.sum(z2.astype(np.float64) ** 2, 1) - D / 2 * np.log(2 * np.pi) + ldi)
    s, lps = f.sample(50, seed=3, return_log_prob=True)
    assert np.allclose(f.log_prob(s), lps, atol=1e-4)


def test_realnvp_masks_alternate_and_split_odd_dims_floor_ceil():
    D = 5
    rng = np.random.default_rng(2)
    z = rng.standard_normal((10, D)).astype(np.float32)
    one = make(D, "realnvp:1:8", rng=rng)
    x, _ = one.transform(z)
    assert np.array_equal(x[:, :2], z[:, :2]) and np.all(x[:, 2:] != z[:, 2:])   # layer 0: dims 2..4 given 0..1
    assert one.params["flow.0.s.0.weight"].shape == (8, 2) and one.params["flow.0.scale"].shape == (3,)
    two = make(D, "realnvp:2:8", rng=rng)
    assert two.params["flow.1.s.0.weight"].shape == (8, 3) and two.params["flow.1.s.2.weight"].shape == (2, 8)
    x, _ = two.transform(z)
    assert np.all(x != z)   # two layers touch every dimension


# ------------------------------------------------------------- gradients
@pytest.mark.parametrize("spec", SPECS)
def test_energy_loss_gradients_of_every_parameter(spec):
    rng = np.random.default_rng(3)
    kinked = "relu" in spec
    for D in [1, 2, 5]:
        if spec.startswith("realnvp") and D == 1:
            continue
        f = make(D, spec, rng=rng)
        eps = rng.standard_normal((23, D)).astype(np.float32)
        # ReLU kinks, and the radial flow's |z - z0| at D = 1, call for a small step
        h = 2e-3 if kinked else 1e-3 if spec.startswith("radial") and D == 1 else 5e-3
        errors = directional_errors(f, lambda: f.energy_loss_and_grad(quad_potential, eps=eps), rng,
                                    h=h, directions=7 if kinked else 1)
        assert set(errors) == set(f.params)
        worst = max(errors, key=errors.get)
        assert errors[worst] < 5e-3, (spec, D, worst, errors[worst])


@pytest.mark.parametrize("spec", ["realnvp:3:8", "realnvp:2:6:relu:1.5", "realnvp:2:5:tanh:0.7"])
def test_maximum_likelihood_gradients_of_every_parameter(spec):
    rng = np.random.default_rng(4)
    kinked = "relu" in spec
    for D in [2, 5]:
        f = make(D, spec, rng=rng)
        X = rng.standard_normal((31, D)).astype(np.float32)
        errors = directional_errors(f, lambda: f.nll_and_grad(X), rng, h=2e-3 if kinked else 5e-3,
                                    directions=7 if kinked else 1)
        worst = max(errors, key=errors.get)
        assert errors[worst] < 5e-3, (spec, D, worst, errors[worst])


def test_builtin_potential_gradients_through_the_flow():
    rng = np.random.default_rng(5)
    f = make(2, "planar:4", rng=rng)
    eps = rng.standard_normal((64, 2)).astype(np.float32)
    for pot in potentials:
        for p in (pot, pot.in_box(1.5)):
            errors = directional_errors(f, lambda: f.energy_loss_and_grad(p, eps=eps), rng)
            worst = max(errors, key=errors.get)
            assert errors[worst] < 5e-3, (p.name, worst, errors[worst])
    # the built-in C path equals the same potential called from Python
    U1 = potentials.U1.in_box(2.0)
    a = f.energy_loss_and_grad(U1, eps=eps)
    ga = {k: v.copy() for k, v in f.grads.items()}
    b = f.energy_loss_and_grad(lambda z: U1(z), eps=eps)
    assert abs(a - b) < 1e-9
    for k in ga:
        assert np.array_equal(ga[k], f.grads[k])


@pytest.mark.parametrize("spec", SPECS + ["realnvp:3:8:inverse"])
def test_input_gradient_of_the_backward_pass(spec):
    """dL/dz0 from the backward pass (what a VAE needs) against central differences of
    L(z) = Σ g·f(z) + Σ c·logdet(z); for Real NVP also through the inverse."""
    inverse = spec.endswith(":inverse")
    spec = spec.replace(":inverse", "")
    rng = np.random.default_rng(6)
    for D in [2, 5] if spec.startswith("realnvp") else [1, 2, 5]:
        f = make(D, spec, rng=rng)
        z = rng.standard_normal((9, D)).astype(np.float32)
        g = rng.standard_normal((9, D)).astype(np.float32)
        c = rng.standard_normal(9)
        dz = f.vjp(z, g, c, inverse=inverse)
        fn = f.inverse if inverse else f.transform

        def L(v):
            x, ld = fn(v.astype(np.float32))
            return float(np.sum(g.astype(np.float64) * x) + np.sum(c * ld))

        for _ in range(3):
            v = rng.standard_normal(z.shape)
            v /= np.linalg.norm(v)
            h = 1e-2
            fd = (L(z + h * v) - L(z - h * v)) / (2 * h)
            an = float(np.sum(dz.astype(np.float64) * v))
            assert abs(fd - an) / max(abs(an), abs(fd), 1e-2) < 5e-3 if "relu" not in spec else 3e-2, (spec, D)


# ------------------------------------------------------- planar invertibility
def test_planar_stays_invertible_for_any_u():
    """w·û = m(w·u) > -1 whatever u is (even u = -c w, c up to 1e4): every layer is
    strictly increasing along w, and its log-det finite and equal to the reference."""
    rng = np.random.default_rng(7)
    for trial in range(40):
        D = int(rng.integers(1, 6))
        f = vaec.Flow(D, "planar:1", seed=trial, threads=1)
        w = rng.standard_normal(D) * rng.choice([0.05, 1.0, 10.0])
        if trial % 2:
            u = -rng.choice([1.0, 10.0, 1e2, 1e4]) * w          # adversarial: w·u very negative
        else:
            u = rng.standard_normal(D) * rng.choice([0.1, 1.0, 100.0])
        f.params["flow.0.w"][...] = w
        f.params["flow.0.u"][...] = u
        f.params["flow.0.b"][...] = rng.standard_normal()
        w64 = f.params["flow.0.w"].astype(np.float64)
        u64 = f.params["flow.0.u"].astype(np.float64)
        wu = w64 @ u64
        uh = u64 + (softplus(wu) - 1 - wu) * w64 / (w64 @ w64)
        assert w64 @ uh > -1 - 1e-9
        # along the line z = t w/|w|^2 + offset, w·f(z) must increase strictly with t
        off = rng.standard_normal(D)
        off -= (off @ w64) / (w64 @ w64) * w64
        t = np.linspace(-6, 6, 2001)
        Z = (t[:, None] * w64 / (w64 @ w64) + off).astype(np.float32)
        x, ld = f.transform(Z)
        proj = x.astype(np.float64) @ w64
        assert np.all(np.diff(proj) > -1e-6 * max(1.0, np.abs(proj).max())), trial
        assert np.all(np.isfinite(ld))
        _, ldr = ref_forward(f, Z)
        assert np.allclose(ld, ldr, atol=1e-3), trial


# --------------------------------------------------------------- potentials
@pytest.mark.parametrize("box", [0.0, 2.5])
def test_potentials_values_and_gradients_against_numpy(box):
    rng = np.random.default_rng(8)
    z = rng.uniform(-4, 4, (500, 2))
    z[0] = 0.0  # U1's kink at the origin
    for pot in potentials:
        p = pot.in_box(box)
        U, dU = p(z)
        assert U.shape == (500,) and dU.shape == (500, 2)
        assert np.allclose(U, np_potential(pot.name, z, box), rtol=1e-12, atol=1e-12)
        h = 1e-6
        for j in range(2):
            e = np.zeros(2)
            e[j] = h
            fd = (np_potential(pot.name, z[1:] + e, box) - np_potential(pot.name, z[1:] - e, box)) / (2 * h)
            assert np.allclose(dU[1:, j], fd, rtol=1e-5, atol=1e-5), (pot.name, j)
    # any leading shape; density = exp(-U)
    g = np.zeros((3, 4, 2))
    assert potentials.U2(g)[0].shape == (3, 4) and potentials.U2.density(g).shape == (3, 4)
    assert potentials["U3"] is potentials.U3 and "U4" in repr(potentials.U4)
    with pytest.raises(ValueError, match=r"\(\.\.\., 2\)"):
        potentials.U1(np.zeros((4, 3)))


# ------------------------------------------------------------------ errors
@pytest.mark.parametrize("spec", ["planar:0", "spline:3", "realnvp:x", "planar", "planar:", "radial:-1",
                                  "planar:1000", "planar:3:2", "realnvp:4:0", "realnvp:4:64:sigmoid",
                                  "realnvp:4:64:tanh:-1", "realnvp:4:64:tanh:1:9", "", ":", "Planar:3",
                                  "planar:3:amortize", "planar:3:amortized:1", "radial:3:amortized"])
def test_malformed_specs_list_what_is_accepted(spec):
    with pytest.raises(ValueError, match=r"accepted: 'planar:K', 'planar:K:amortized' \(a VAE's posterior only\), "
                                         r"'radial:K' or 'realnvp:K\[:WIDTH"):
        vaec.Flow(2, spec)


def test_realnvp_on_dim_1_is_refused_with_the_alternatives():
    with pytest.raises(ValueError, match=r"realnvp.*at least 2.*'planar:K' or 'radial:K'"):
        vaec.Flow(1, "realnvp:4")
    with pytest.raises(TypeError):
        vaec.Flow(2, 8)
    with pytest.raises(ValueError, match="dim"):
        vaec.Flow(0, "planar:2")


def test_flows_without_inverse_say_so():
    f = vaec.Flow(2, "planar:8")
    for call in (lambda: f.inverse(np.zeros((1, 2))), lambda: f.log_prob(np.zeros((1, 2))),
                 lambda: f.fit(np.zeros((4, 2)), epochs=1)):
        with pytest.raises(NotImplementedError, match=r"'planar:8'.*realnvp"):
            call()
    x, lq = f.sample(5, seed=0, return_log_prob=True)   # sampling needs only the forward pass
    assert x.shape == (5, 2) and np.all(np.isfinite(lq))


@pytest.mark.parametrize("spec,tensor,layer", [("planar:5", "flow.3.b", 3), ("radial:5", "flow.2.z0", 2),
                                               ("realnvp:4:8", "flow.1.t.2.bias", 1)])
def test_non_finite_values_name_the_layer(spec, tensor, layer):
    f = vaec.Flow(2, spec, seed=0, threads=1)
    f.params[tensor][...] = np.nan
    kind = spec.split(":")[0]
    msg = rf"flow\.{layer} \({kind}\) produced a non-finite value"
    with pytest.raises(FloatingPointError, match=msg):
        f.transform(np.ones((20, 2), np.float32))
    with pytest.raises(FloatingPointError, match=msg):
        f.fit_energy(potentials.U1, steps=3, batch_size=20, progress=False)
    if f.has_inverse:
        with pytest.raises(FloatingPointError, match=msg):
            f.fit(np.ones((20, 2), np.float32), epochs=1, progress=False)


def test_non_finite_gradients_and_potentials_are_refused():
    f = vaec.Flow(2, "planar:4", seed=0, threads=1)
    with pytest.raises(FloatingPointError, match=r"flow\.3 \(planar\) produced a non-finite gradient"):
        f.fit_energy(lambda z: (np.zeros(len(z)), np.full(z.shape, 1e300)), steps=1, batch_size=8, progress=False)
    with pytest.raises(FloatingPointError, match="potential U is non-finite"):
        f.fit_energy(lambda z: (np.full(len(z), np.nan), np.zeros(z.shape)), steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match=r"dU: expected shape \(8, 2\)"):
        f.fit_energy(lambda z: (np.zeros(len(z)), np.zeros((8, 3))), steps=1, batch_size=8, progress=False)
    with pytest.raises(ValueError, match="z: contains nan"):
        f.transform(np.array([[0.0, np.nan]]))
    with pytest.raises(ValueError, match=r"z: expected a 2-D array of shape \(n, 2\)"):
        f.transform(np.zeros((3, 5)))


def test_energy_backward_needs_its_forward():
    f = vaec.Flow(2, "planar:2", seed=0, threads=1)
    c = f._core
    with pytest.raises(ValueError, match="no energy_forward is pending"):
        c.energy_backward(np.zeros(4), np.zeros((4, 2)))
    z, _ = c.energy_forward(4, 0)
    c.transform(z)   # any other call discards the pending forward
    with pytest.raises(ValueError, match="no energy_forward is pending"):
        c.energy_backward(np.zeros(4), np.zeros((4, 2)))
    c.energy_forward(4, 0)
    with pytest.raises(ValueError, match="expected 4 values"):
        c.energy_backward(np.zeros(5), np.zeros((5, 2)))


# ------------------------------------------------------------ training works
def test_fit_energy_and_fit_reduce_their_losses():
    f = vaec.Flow(2, "planar:8", seed=0, threads=1)
    eps = np.random.default_rng(1).standard_normal((4000, 2)).astype(np.float32)
    before = f.energy_loss_and_grad(potentials.U1, eps=eps)
    h = f.fit_energy(potentials.U1, steps=600, batch_size=128, lr=1e-2, seed=0, beta_schedule=200, progress=False)
    assert len(h["loss"]) == 600 and h["beta"][0] == pytest.approx(0.01) and h["beta"][-1] == 1.0
    after = f.energy_loss_and_grad(potentials.U1, eps=eps)
    assert after < -1.6 < before   # KL(q||p) - log Z, and log Z of U1 is about 1.878
    rng = np.random.default_rng(0)
    X = (rng.standard_normal((1000, 2)) * [0.3, 2.0] + [1.0, -1.0]).astype(np.float32)
    g = vaec.Flow(2, "realnvp:4:16", seed=0, threads=1)
    hist = g.fit(X, epochs=8, batch_size=100, lr=1e-2, seed=0, progress=False)
    exact = np.mean(0.5 * np.sum(((X - [1.0, -1.0]) / [0.3, 2.0]) ** 2, 1)) + np.log(2 * np.pi * 0.6)
    assert hist["loss"][-1] < hist["loss"][0] and -g.log_prob(X).mean() < exact + 0.1


# --------------------------------------------------------- files and views
def test_save_load_round_trip(tmp_path):
    rng = np.random.default_rng(9)
    X = rng.standard_normal((200, 3)).astype(np.float32)
    f = vaec.Flow(3, "realnvp:3:8:relu:2", seed=5, threads=1)
    f.set_optimizer(beta1=0.8)
    f.fit(X, epochs=2, batch_size=64, seed=1, progress=False)
    f.sample(3)   # advance the RNG stream
    path = tmp_path / "flow.vaec"
    f.save(path)
    assert _core.file_kind(str(path)) == _core.KIND_FLOW
    r = vaec.flows.load(path)
    assert (r.dim, r.flow, r.kind, r.K, r.seed) == (3, "realnvp:3:8:relu:2", "realnvp", 3, 5)
    for k in f.params:
        assert np.array_equal(f.params[k], r.params[k])
    assert r.optimizer_state["step"] == f.optimizer_state["step"] == 8
    assert r.optimizer_state["rng_counter"] == f.optimizer_state["rng_counter"]
    assert np.array_equal(f.sample(4), r.sample(4))
    assert [f.train_step(X, lr=1e-3) for _ in range(3)] == [r.train_step(X, lr=1e-3) for _ in range(3)]
    # a planar flow and its RNG position: the next energy steps are identical
    p = vaec.Flow(2, "planar:3", seed=2, threads=1)
    p.fit_energy(potentials.U2.in_box(4), steps=5, batch_size=16, progress=False)
    p.save(tmp_path / "p.vaec")
    q = vaec.flows.load_flow(tmp_path / "p.vaec")
    a = p.fit_energy(potentials.U2.in_box(4), steps=4, batch_size=16, progress=False)["loss"][-4:]
    b = q.fit_energy(potentials.U2.in_box(4), steps=4, batch_size=16, progress=False)["loss"]
    assert a == b
    # pickling goes through the same state
    s = pickle.loads(pickle.dumps(f))
    assert np.array_equal(s.transform(X)[0], f.transform(X)[0])
    # a VAE file is not a flow; a damaged flow file is refused
    vae = vaec.VAE(4, 2, hidden=(3,), seed=0)
    vae.save(tmp_path / "vae.vaec")
    with pytest.raises(ValueError, match="not a flow"):
        vaec.flows.load(tmp_path / "vae.vaec")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "bad.vaec").write_bytes(bytes(data))
    with pytest.raises(ValueError, match="checksum"):
        vaec.flows.load(tmp_path / "bad.vaec")
    with pytest.raises(FileNotFoundError):
        vaec.flows.load(tmp_path / "missing.vaec")


def test_params_and_grads_are_zero_copy_named_views():
    f = vaec.Flow(4, "realnvp:2:8", seed=0)
    flat = f._arenas["params"]
    names = list(f.params)
    assert names[:4] == ["flow.0.s.0.weight", "flow.0.s.0.bias", "flow.0.t.0.weight", "flow.0.t.0.bias"]
    assert f.params["flow.0.s.0.weight"].shape == (8, 2) and f.params["flow.1.t.2.weight"].shape == (2, 8)
    for v in f.params.values():
        assert np.shares_memory(v, flat) and v.dtype == np.float32
    z = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    before = f.transform(z)[0]
    f.params["flow.1.t.2.bias"][...] += 1.0   # writes go straight to C
    assert np.allclose(f.transform(z)[0][:, :2], before[:, :2] + 1.0)
    f.nll_and_grad(z)
    assert np.shares_memory(f.grads["flow.0.scale"], f._arenas["grads"]) and np.any(f.grads["flow.0.scale"] != 0)
    p = vaec.Flow(3, "planar:2", seed=0)
    assert list(p.params) == ["flow.0.u", "flow.0.w", "flow.0.b", "flow.1.u", "flow.1.w", "flow.1.b"]
    assert list(vaec.Flow(3, "radial:1").params) == ["flow.0.z0", "flow.0.alpha", "flow.0.beta"]
    assert p.num_params == 14
    sd = p.state_dict()
    sd["flow.0.b"][...] = 3.0
    p.load_state_dict(sd)
    assert p.params["flow.0.b"][0] == 3.0
    with pytest.raises(ValueError, match="shape"):
        p.load_state_dict({**sd, "flow.0.u": np.zeros(4)})


# ------------------------------------------------------------- determinism
def run_all(threads):
    out = []
    rng = np.random.default_rng(10)
    X = rng.standard_normal((700, 5)).astype(np.float32)
    Z = rng.standard_normal((2500, 5)).astype(np.float32)   # more than one 1024-row chunk
    for spec in ["planar:6", "radial:6", "realnvp:4:16"]:
        f = vaec.Flow(5, spec, seed=3, threads=threads)
        h = f.fit_energy(quad_potential, steps=6, batch_size=300, lr=1e-2, seed=1, progress=False)
        out += [h["loss"], f.state_dict(), f.transform(Z), f.sample(300, seed=4)]
        if f.has_inverse:
            out += [f.fit(X, epochs=2, batch_size=256, seed=2, progress=False)["loss"], f.state_dict(), f.log_prob(Z)]
    g = vaec.Flow(2, "planar:8", seed=3, threads=threads)
    out += [g.fit_energy(potentials.U3.in_box(4), steps=6, batch_size=400, seed=1, progress=False)["loss"],
            g.state_dict()]
    return out


def test_bitwise_identical_with_1_and_2_threads():
    a, b = run_all(1), run_all(2)

    def same(x, y):
        if isinstance(x, dict):
            return x.keys() == y.keys() and all(same(x[k], y[k]) for k in x)
        if isinstance(x, (tuple, list)):
            return len(x) == len(y) and all(same(p, q) for p, q in zip(x, y))
        return np.array_equal(x, y)

    for i, (x, y) in enumerate(zip(a, b)):
        assert same(x, y), i


def test_seeded_sampling_repeats_and_unseeded_advances():
    f = vaec.Flow(3, "radial:4", seed=0)
    assert np.array_equal(f.sample(10, seed=5), f.sample(10, seed=5))
    assert not np.array_equal(f.sample(10), f.sample(10))


# ------------------------------------------------------------- torch parity
def test_torch_parity_of_planar_and_realnvp_logdets_and_gradients():
    torch = pytest.importorskip("torch")
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        _torch_parity(torch)
    finally:
        torch.set_default_dtype(before)


def _torch_parity(torch):
    nn = torch.nn

    class Planar(nn.Module):
        def __init__(self, D):
            super().__init__()
            self.u, self.w, self.b = nn.Parameter(torch.zeros(D)), nn.Parameter(torch.zeros(D)), nn.Parameter(torch.zeros(1))

        def forward(self, z):
            wu = self.w @ self.u
            uh = self.u + (nn.functional.softplus(wu) - 1 - wu) * self.w / (self.w @ self.w)
            h = torch.tanh(z @ self.w + self.b)
            return z + h[:, None] * uh, torch.log(torch.abs(1 + (1 - h ** 2) * (self.w @ uh)))

    class Coupling(nn.Module):
        def __init__(self, D, H, k):
            super().__init__()
            half = D // 2
            self.c, self.x = (slice(0, half), slice(half, D)) if k % 2 == 0 else (slice(half, D), slice(0, half))
            dc, dt = (half, D - half) if k % 2 == 0 else (D - half, half)
            self.s = nn.Sequential(nn.Linear(dc, H), nn.Tanh(), nn.Linear(H, dt))
            self.t = nn.Sequential(nn.Linear(dc, H), nn.Tanh(), nn.Linear(H, dt))
            self.scale = nn.Parameter(torch.zeros(dt))

        def forward(self, z):
            c = z[:, self.c]
            s = self.scale * torch.tanh(self.s(c))
            out = z.clone()
            out[:, self.x] = z[:, self.x] * torch.exp(s) + self.t(c)
            return out, s.sum(1)

    class Stack(nn.Module):
        def __init__(self, layers):
            super().__init__()
            self.flow = nn.ModuleList(layers)

        def forward(self, z):
            ld = torch.zeros(len(z))
            for layer in self.flow:
                z, l = layer(z)
                ld = ld + l
            return z, ld

    rng = np.random.default_rng(11)
    D = 5
    for spec, layers in [("planar:6", [Planar(D) for _ in range(6)]),
                         ("realnvp:4:16", [Coupling(D, 16, k) for k in range(4)])]:
        f = make(D, spec, rng=rng)
        tm = Stack(layers)
        tm.load_state_dict({k: torch.from_numpy(v.astype(np.float64)) for k, v in f.params.items()})  # same names
        z = rng.standard_normal((64, D)).astype(np.float32)
        x, ld = f.transform(z)
        tx, tld = tm(torch.from_numpy(z.astype(np.float64)))
        assert np.abs(ld - tld.detach().numpy()).max() < 1e-4, spec
        assert np.abs(x - tx.detach().numpy()).max() < 1e-4, spec
        # the energy loss's gradients with the same noise and potential
        eps = z
        loss = f.energy_loss_and_grad(quad_potential, eps=eps)
        a = torch.arange(1, D + 1)
        tz, tld = tm(torch.from_numpy(eps.astype(np.float64)))
        U = 0.5 * torch.sum(a * (tz - 0.3) ** 2, 1) + torch.sin(tz[:, 0])
        logq0 = -0.5 * torch.sum(torch.from_numpy(eps.astype(np.float64)) ** 2, 1) - D / 2 * np.log(2 * np.pi)
        tloss = torch.mean(logq0 - tld + U)
        tloss.backward()
        assert abs(loss - tloss.item()) < 1e-4 * max(1, abs(loss))
        for name, p in tm.named_parameters():
            g = p.grad.numpy()
            assert np.abs(f.grads[name] - g).max() < 1e-4 * max(1.0, np.abs(g).max()), (spec, name)
