"""The whole VAE on every kernel path this CPU has (each forced in turn): loss,
gradients and ELBO against the float64 reference, on shapes that exercise the GEMM's
edge tiles and more than one 512-row chunk."""
import numpy as np
import pytest

import vaec
import reference as ref

from _helpers import available_isas, forced_isa


@pytest.mark.parametrize("isa", available_isas())
@pytest.mark.parametrize("likelihood", ["bernoulli", "gaussian"])
def test_vae_matches_reference_on_every_isa(isa, likelihood):
    rng = np.random.default_rng(5)
    D, Z, n, L = 37, 5, 600, 2
    m = vaec.VAE(D, Z, hidden=(33, 17), activation="softplus", likelihood=likelihood, seed=2, threads=2)
    x = rng.random((n, D), dtype=np.float32)
    eps = rng.standard_normal((L, n, Z)).astype(np.float32)
    params = {k: v.astype(np.float64) for k, v in m.params.items()}
    want_loss, want_grads = ref.loss_and_grad(params, x.astype(np.float64), eps.astype(np.float64),
                                              "softplus", likelihood)
    want_elbo = ref.forward(params, x.astype(np.float64), eps.astype(np.float64), "softplus", likelihood)["elbo"]
    with forced_isa(isa):
        loss = m.loss_and_grad(x, eps=eps)
        elbo = m.elbo(x, eps=eps)
        mu = m.encode(x)[0]
    assert abs(loss - want_loss) <= 2e-5 * abs(want_loss)
    for k, g in want_grads.items():
        assert ref.rel_err(m.grads[k], g) < 1e-4, (isa, k)
    assert ref.rel_err(elbo, want_elbo) < 1e-5
    assert ref.rel_err(mu, ref.encode(params, x.astype(np.float64), "softplus")[0]) < 1e-5


def test_every_isa_trains_to_the_same_place():
    """Ten Adam steps on each path end within float32 rounding of each other."""
    rng = np.random.default_rng(0)
    x = rng.random((200, 50), dtype=np.float32)
    finals = {}
    for isa in available_isas():
        with forced_isa(isa):
            m = vaec.VAE(50, 4, hidden=(40,), seed=1, threads=2)
            for i in range(10):
                m.train_step(x, lr=1e-3, seed=i)
            finals[isa] = m.state_dict()
    base = finals[available_isas()[0]]
    for isa, sd in finals.items():
        for k in sd:
            assert np.allclose(sd[k], base[k], rtol=1e-3, atol=1e-5), (isa, k)
