"""How checkpoint_c8b7f31.vaec and checkpoint_c8b7f31.npz were made: at commit c8b7f31
(before the shared fit driver of issue 17), built in place and run as

    VAEC_ISA=scalar python tests/data/make_checkpoint_c8b7f31.py tests/data

it trains a VAE for 5 epochs with early stopping, warmup and a decaying learning rate,
uninterrupted (the .npz: its losses and parameters), and the same run stopped after
epoch 2 with checkpoints (checkpoint.vaec, renamed). tests/test_fit.py resumes the
checkpoint with today's code and must end where the uninterrupted run ended."""
import os
import sys

import numpy as np

import vaec


def data():
    rng = np.random.default_rng(0)
    proto = rng.random((5, 64)) < 0.3
    return (proto[rng.integers(0, 5, 600)] ^ (rng.random((600, 64)) < 0.05)).astype(np.uint8) * 255


FIT = dict(epochs=5, batch_size=64, seed=11, progress=False, binarize="dynamic", warmup=2, lr_schedule="exponential",
           lr_decay=0.9, patience=10)

if __name__ == "__main__":
    out = sys.argv[1]
    X = data()
    full = vaec.VAE(64, 4, hidden=(32,), seed=3, threads=2)
    h = full.fit(X[:500], validation_data=X[500:], **FIT)
    part = vaec.VAE(64, 4, hidden=(32,), seed=3, threads=2)
    part.fit(X[:500], validation_data=X[500:], checkpoint_dir=out, callback=lambda e, logs: e == 2, **FIT)
    os.replace(os.path.join(out, "checkpoint.vaec"), os.path.join(out, "checkpoint_c8b7f31.vaec"))
    np.savez(os.path.join(out, "checkpoint_c8b7f31.npz"), loss=np.array(h["loss"]),
             params=np.concatenate([v.ravel() for v in full.params.values()]))
