"""Training on real digits (the MNIST subset shipped with vaec) improves the model."""
import warnings

import numpy as np

import vaec
from vaec import datasets


def mnist_subset():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return datasets.load_mnist("train")[0][:3000], datasets.load_mnist("test")[0][:1000]


def test_a_short_fit_on_real_digits_lowers_the_loss():
    Xtr, Xte = mnist_subset()
    m = vaec.VAE(784, 10, hidden=(200,), seed=0)
    before = float(np.mean(m.elbo(Xte, seed=0, binarize="dynamic")))
    hist = m.fit(Xtr, epochs=3, batch_size=100, progress=False, validation_data=Xte, binarize="dynamic", seed=1)
    after = float(np.mean(m.elbo(Xte, seed=0, binarize="dynamic")))
    assert hist["loss"][-1] < hist["loss"][0] - 20
    assert hist["val_elbo"][-1] > hist["val_elbo"][0]
    assert after > before + 300, (before, after)  # -543 nats untrained, about -200 after 3 epochs
    assert len(hist["seconds"]) == 3 and all(s > 0 for s in hist["seconds"])


def test_fit_history_appends_and_callback_can_stop():
    Xtr, _ = mnist_subset()
    m = vaec.VAE(784, 5, hidden=(32,), seed=0)
    seen = []
    m.fit(Xtr[:500], epochs=5, progress=False, callback=lambda e, logs: seen.append(e) or e == 2)
    assert seen == [1, 2] and len(m.history["loss"]) == 2
    m.fit(Xtr[:500], epochs=1, progress=False)
    assert len(m.history["loss"]) == 3


def test_gaussian_decoder_trains_on_grey_levels():
    Xtr, _ = mnist_subset()
    m = vaec.VAE(784, 5, hidden=(64,), likelihood="gaussian", seed=0)
    hist = m.fit(Xtr[:1000], epochs=3, progress=False, lr=1e-3)
    assert hist["loss"][-1] < hist["loss"][0]
    mean = m.decode(np.zeros((2, 5), np.float32))
    assert mean.shape == (2, 784) and np.all(np.isfinite(mean))
