"""Ctrl-C (#21): SIGINT sent to a child process during fit, or during one long C call (a
log-likelihood with k = 5000 on 10,000 images: minutes of work), stops it within a second
with KeyboardInterrupt; the model stays at its last completed step (bit for bit what that
many steps give without an interruption), keeps its history so far, and works on."""
import json
import os
import signal
import subprocess
import sys
import time

import pytest

import vaec



def _sigint_default():
    """The children start with SIGINT at its default, so Python installs its KeyboardInterrupt
    handler: a test run started in the background (``pytest &``, nohup) passes SIGINT down
    ignored, and a child would then never see the Ctrl-C these tests send."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [os.path.dirname(os.path.dirname(os.path.abspath(vaec.__file__)))] + os.environ.get("PYTHONPATH", "").split(os.pathsep)))

LOG_LIKELIHOOD = r"""
import hashlib, json, sys, time
import numpy as np, vaec
X = (np.random.default_rng(0).random((10000, 784)) < 0.2).astype(np.float32)
m = vaec.VAE(784, latent_dim=20, hidden=(400,), seed=0)
def digest():
    return hashlib.sha256(b"".join(v.tobytes() for v in m.params.values())).hexdigest()
before = (digest(), m.optimizer_state, m.elbo(X[:50], seed=3).tolist())
print("start", flush=True)
try:
    CALL
    print(json.dumps({"finished": True}), flush=True)
except KeyboardInterrupt:
    t = time.time()
    after = (digest(), m.optimizer_state, m.elbo(X[:50], seed=3).tolist())
    print(json.dumps({"caught": t, "unchanged": before == after,
                      "works": bool(np.isfinite(m.iwae_bound(X[:20], samples=10)).all())}), flush=True)
"""

FIT = r"""
import json, sys, time
import numpy as np, vaec
X = np.random.default_rng(0).random((5000, 784), dtype=np.float32)
def model():
    return vaec.VAE(784, latent_dim=20, hidden=(400,), seed=0, threads=1)
m = model()
kw = dict(epochs=10000, batch_size=100, seed=0, progress=False, binarize="dynamic")
try:
    m.fit(X, callback=lambda e, logs: print("epoch", e, flush=True), **kw)
except KeyboardInterrupt:
    t = time.time()
    steps = m.optimizer_state["step"]
    # the same run stopped after exactly that many steps, without an interruption
    class Stop(Exception):
        pass
    class Counting:
        def __init__(self, core):
            self.core, self.n = core, 0
        def __getattr__(self, k):
            return getattr(self.core, k)
        def loss_grad(self, **kw):
            if self.n == steps:
                raise Stop
            self.n += 1
            return self.core.loss_grad(**kw)
    r = model()
    r._core = Counting(r._core)
    try:
        r.fit(X, **kw)
    except Stop:
        pass
    same = all(np.array_equal(m.params[k], r.params[k]) for k in m.params)
    print(json.dumps({"caught": t, "steps": steps, "epochs": len(m.history["loss"]), "same_as_replay": same,
                      "history_keys": sorted(m.history)}), flush=True)
"""


def interrupt(script, ready, wait_after, budget=30.0):
    """Run script in a child; once it printed `ready` (a line starting with it), wait, send
    SIGINT; return (time sent, the child's last JSON line)."""
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=ENV,
                         preexec_fn=_sigint_default)
    try:
        seen = 0
        for line in p.stdout:
            if line.startswith(ready):
                seen += 1
                if seen == wait_after[0]:
                    break
        time.sleep(wait_after[1])
        sent = time.time()
        p.send_signal(signal.SIGINT)
        out, _ = p.communicate(timeout=budget)
    finally:
        if p.poll() is None:
            p.kill()
            p.wait()
    return sent, json.loads(out.strip().splitlines()[-1])


@pytest.mark.parametrize("call", [
    "m.log_likelihood(X, samples=5000)",                                  # importance sampling
    "m.log_likelihood(X[:2000], samples=1000, method='hmc')",             # HMC chains (appendix D)
    "m.sample_posterior(X[:2000], samples=1000, method='hmc')",
])
def test_ctrl_c_stops_a_long_log_likelihood_within_a_second(call):
    sent, r = interrupt(LOG_LIKELIHOOD.replace("CALL", call), "start", (1, 1.0), budget=20)
    assert "caught" in r, r
    assert r["caught"] - sent < 1.0, f"stopped {r['caught'] - sent:.2f} s after SIGINT"
    assert r["unchanged"] and r["works"], r


def test_ctrl_c_during_fit_keeps_the_last_completed_step_and_the_history():
    sent, r = interrupt(FIT, "epoch", (2, 0.3))
    assert r["caught"] - sent < 1.0, f"stopped {r['caught'] - sent:.2f} s after SIGINT"
    assert r["epochs"] >= 2 and r["steps"] >= 100, r          # 50 steps an epoch
    assert r["same_as_replay"], r
    assert {"loss", "val_elbo", "lr", "beta"} <= set(r["history_keys"])


def test_a_program_with_its_own_sigint_handler_keeps_it():
    """Only Python's default handler (KeyboardInterrupt) is chained: a handler of the
    program's own runs after the call, which is not cut short."""
    script = r"""
import signal, json, numpy as np, vaec
hits = []
signal.signal(signal.SIGINT, lambda s, f: hits.append(1))
m = vaec.VAE(20, latent_dim=2, hidden=(8,), seed=0)
X = np.random.default_rng(0).random((300, 20), dtype=np.float32)
import os, threading
threading.Timer(0.1, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
out = m.log_likelihood(X, samples=8000)
print(json.dumps({"n": int(np.isfinite(out).sum()), "hits": len(hits)}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120,
                         preexec_fn=_sigint_default)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r == {"n": 300, "hits": 1}, (r, out.stderr)


def test_other_threads_are_not_interrupted():
    """Only the main thread arms: Ctrl-C while another thread runs a long call interrupts the
    main thread (KeyboardInterrupt out of join) and leaves the other call to finish."""
    script = r"""
import json, os, signal, threading, numpy as np, vaec
m = vaec.VAE(50, latent_dim=4, hidden=(32,), seed=0)
X = np.random.default_rng(0).random((200, 50), dtype=np.float32)
got, done = {}, threading.Event()
def work():
    try:
        got["v"] = m.log_likelihood(X, samples=10000)
    except BaseException as e:
        got["error"] = type(e).__name__
    done.set()
threading.Thread(target=work).start()
threading.Timer(0.3, lambda: os.kill(os.getpid(), signal.SIGINT)).start()
main = None
try:
    while not done.wait(0.01):
        pass
except KeyboardInterrupt:
    main = "KeyboardInterrupt"
    done.wait()
print(json.dumps({"main": main, "error": got.get("error"), "n": int(np.isfinite(got["v"]).sum()) if "v" in got else 0}))
"""
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=ENV, timeout=120,
                         preexec_fn=_sigint_default)
    r = json.loads(out.stdout.strip().splitlines()[-1])
    assert r == {"main": "KeyboardInterrupt", "error": None, "n": 200}, (r, out.stderr)
