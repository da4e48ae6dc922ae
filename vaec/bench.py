"""``python -m vaec bench``: vaec against PyTorch on the same VAE, side by side.

The model is the one of the performance issue: 784-400-20, tanh, Bernoulli decoder, Adam,
one sample per example, on statically binarized MNIST digits; and the convolutional VAE of
the conv issue (conv_network) on the same digits as images. vaec and PyTorch (when it
can be imported) run in this one process, interleaved repeat by repeat, with the same
batch size and thread count. Each figure is the median of several timed repeats, with the
min-max range. The machine's peak FP32 FMA throughput is measured on the spot by a small
C probe (vaec._core.peak_gflops).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
import warnings

import numpy as np

D, H, Z = 784, 400, 20


def _train_macs(batch):
    """Multiply-adds of one training step: forward, then dW and dX of every layer (no dX
    for the first), per example; 2 flops each."""
    layers = [(D, H), (H, 2 * Z), (Z, H), (H, D)]
    fwd = sum(i * o for i, o in layers)
    bwd = 2 * fwd - D * H
    return batch * (fwd + bwd)


def _data(n):
    from . import datasets

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X, _ = datasets.load_mnist("train")
    rng = np.random.default_rng(0)
    X = X[rng.permutation(len(X))[:n]]
    return (rng.random(X.shape) < X / 255.0).astype(np.float32)


def _timed(fn, seconds, min_calls=3):
    """Calls fn repeatedly for about `seconds`; returns (calls, elapsed)."""
    fn()  # warm
    calls, t0 = 0, time.perf_counter()
    while True:
        fn()
        calls += 1
        el = time.perf_counter() - t0
        if el >= seconds and calls >= min_calls:
            return calls, el


class _Torch:
    """The same VAE in PyTorch: nn.Linear layers, Adam, BCE-with-logits, analytic KL."""

    def __init__(self, threads):
        import torch

        self.torch = torch
        torch.set_num_threads(threads)
        torch.manual_seed(0)
        nn = torch.nn
        self.enc = nn.Linear(D, H)
        self.heads = nn.Linear(H, 2 * Z)
        self.dec = nn.Linear(Z, H)
        self.out = nn.Linear(H, D)
        self.params = [p for m in (self.enc, self.heads, self.dec, self.out) for p in m.parameters()]
        self.opt = torch.optim.Adam(self.params, lr=1e-3)

    def loss(self, x):
        t = self.torch
        h = t.tanh(self.enc(x))
        mu, lv = self.heads(h).chunk(2, dim=1)
        z = mu + t.exp(0.5 * lv) * t.randn_like(mu)
        logits = self.out(t.tanh(self.dec(z)))
        rec = t.nn.functional.binary_cross_entropy_with_logits(logits, x, reduction="sum")
        kl = 0.5 * (mu * mu + lv.exp() - 1 - lv).sum()
        return (rec + kl) / x.shape[0]

    def step(self, x):
        loss = self.loss(x)
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


    def encode(self, x):
        with self.torch.no_grad():
            return self.heads(self.torch.tanh(self.enc(x))).chunk(2, dim=1)

    def log_likelihood(self, x, k, chunk=100):
        t = self.torch
        with t.no_grad():
            h = t.tanh(self.enc(x))
            mu, lv = self.heads(h).chunk(2, dim=1)
            std = t.exp(0.5 * lv)
            out = []
            for i in range(x.shape[0]):
                lws = []
                for s in range(0, k, chunk):
                    eps = t.randn(min(chunk, k - s), Z)
                    z = mu[i] + std[i] * eps
                    logits = self.out(t.tanh(self.dec(z)))
                    lpx = -t.nn.functional.binary_cross_entropy_with_logits(
                        logits, x[i].expand_as(logits), reduction="none").sum(1)
                    lw = lpx - 0.5 * (z * z).sum(1) + 0.5 * (eps * eps + lv[i]).sum(1)
                    lws.append(lw)
                lw = t.cat(lws)
                out.append(t.logsumexp(lw, 0) - np.log(k))
            return t.stack(out)


class _TorchCompiled(_Torch):
    """The same model and step with the loss (forward and, through AOTAutograd, backward)
    compiled by torch.compile; the optimizer stays eager. Each batch size compiles on its
    first call, which the benchmark makes before timing."""

    def __init__(self, threads):
        super().__init__(threads)
        self.loss = self.torch.compile(self.loss, dynamic=False)


def conv_network():
    """The conv VAE of the convolutional issue: 1x28x28, latent 32."""
    from . import layers as L
    enc = [L.Conv2d(32, 4, stride=2, padding=1), L.ReLU(), L.Conv2d(64, 4, stride=2, padding=1), L.ReLU(),
           L.Flatten(), L.Linear(256), L.ReLU()]
    dec = [L.Linear(256), L.ReLU(), L.Linear(64 * 7 * 7), L.ReLU(), L.Unflatten(64, 7, 7),
           L.ConvTranspose2d(32, 4, stride=2, padding=1), L.ReLU(), L.ConvTranspose2d(1, 4, stride=2, padding=1)]
    return enc, dec


def conv_macs(model):
    """Multiply-adds of one training step of a conv VAE per example, as in _train_macs: each
    layer's forward, its weight gradient and (but for the first) its input gradient; and
    those of the convolution layers alone."""
    from . import layers as L
    total = conv = 0
    for layers, shape, first in ((model.encoder, model.input_shape, True), (model.decoder, (model.latent_dim,), False)):
        for layer in layers:
            if isinstance(layer, L.Linear):
                fwd = int(np.prod(shape)) * layer.out_features
                shape = (layer.out_features,)
            elif isinstance(layer, L.Conv2d):
                C, H, W = shape
                Ho = (H + 2 * layer.padding[0] - layer.kernel_size[0]) // layer.stride[0] + 1
                Wo = (W + 2 * layer.padding[1] - layer.kernel_size[1]) // layer.stride[1] + 1
                fwd = Ho * Wo * layer.out_channels * C * layer.kernel_size[0] * layer.kernel_size[1]
                shape = (layer.out_channels, Ho, Wo)
            elif isinstance(layer, L.ConvTranspose2d):
                C, H, W = shape
                fwd = H * W * C * layer.out_channels * layer.kernel_size[0] * layer.kernel_size[1]
                shape = (layer.out_channels, (H - 1) * layer.stride[0] - 2 * layer.padding[0] + layer.kernel_size[0]
                         + layer.output_padding[0], (W - 1) * layer.stride[1] - 2 * layer.padding[1]
                         + layer.kernel_size[1] + layer.output_padding[1])
            elif isinstance(layer, L.Unflatten):
                shape = layer.shape
                continue
            elif isinstance(layer, L.Flatten):
                shape = (int(np.prod(shape)),)
                continue
            else:
                continue
            macs = fwd * (2 if first else 3)
            total += macs
            if isinstance(layer, (L.Conv2d, L.ConvTranspose2d)):
                conv += macs
            first = False
        # the heads after the encoder
        if layers is model.encoder:
            macs = int(np.prod(shape)) * 2 * model.latent_dim * 3
            total += macs
    return total, conv


class _TorchConv:
    """The same conv VAE in PyTorch (vaec.to_torch's module: the same layers), Adam,
    BCE-with-logits, analytic KL."""

    def __init__(self, model, threads):
        import torch
        from .torch_export import to_torch

        self.torch = torch
        torch.set_num_threads(threads)
        self.m = to_torch(model).train()
        self.opt = torch.optim.Adam(self.m.parameters(), lr=1e-3)

    def step(self, x):
        t = self.torch
        mu, lv = self.m.encode(x)
        z = mu + t.exp(0.5 * lv) * t.randn_like(mu)
        logits = self.m.decoder(z).reshape(x.shape[0], -1)
        rec = t.nn.functional.binary_cross_entropy_with_logits(logits, x.reshape(x.shape[0], -1), reduction="sum")
        kl = 0.5 * (mu * mu + lv.exp() - 1 - lv).sum()
        loss = (rec + kl) / x.shape[0]
        self.opt.zero_grad(set_to_none=True)
        loss.backward()
        self.opt.step()
        return loss


# The products of one training step of the 784-400-20 VAE (M, N, K, op(A) transposed, op(B)
# transposed) at batch B, in the layouts vaec uses (tests/c/gemm_shapes.c has the same list).
def _step_products(B):
    return [("enc0 forward (W^T stored)", B, H, D, 0, 0), ("enc0 dW^T", D, H, B, 1, 0),
            ("heads forward", B, 2 * Z, H, 0, 1), ("heads dW", 2 * Z, H, B, 1, 0), ("heads dX", B, H, 2 * Z, 0, 0),
            ("dec0 forward", B, H, Z, 0, 1), ("dec0 dW", H, Z, B, 1, 0), ("dec0 dX", B, Z, H, 0, 0),
            ("out forward", B, D, H, 0, 1), ("out dW", D, H, B, 1, 0), ("out dX", B, H, D, 0, 0)]


# OpenBLAS's threads keep spinning for a while after a call (about 0.1 s by default), on the
# cores vaec's threads are about to use: each vaec timing waits this long after NumPy's.
BLAS_SPIN_S = 0.25
# a round trip between two threads this long: the two CPUs share no cache level (docs/PERFORMANCE.md)
FAR_NS = 200


def _blas_limits(threads):
    """NumPy's BLAS held to `threads` threads (threadpoolctl), or a note that it could not be."""
    try:
        from threadpoolctl import threadpool_limits
        return threadpool_limits(limits=threads, user_api="blas"), None
    except ImportError:
        import contextlib
        return contextlib.nullcontext(), ("threadpoolctl is not installed (pip install 'vaec[bench]'), so NumPy's "
                                          "BLAS ran on its default threads")


def gemm_table(threads, batches=(100, 1000), repeats=5, seconds=0.2, out=None):
    """Every product of the training step, and encode, against NumPy (its BLAS, usually
    OpenBLAS) with the same operands, layouts and threads: medians of interleaved repeats.
    Returns the table's lines."""
    import vaec
    from . import _core

    rng = np.random.default_rng(0)
    peak = _core.peak_gflops(threads, seconds)
    limits, note = _blas_limits(threads)
    probe = threads > 1   # a cache line's round trip between two threads before each repeat
    lines = ["| product, batch | M×N×K | vaec µs | NumPy µs | vaec / NumPy speed | vaec % of peak |"
             + (f" repeats at ≥ {FAR_NS} ns round trip |" if probe else ""),
             "|---|---|---|---|---|---|" + ("---|" if probe else "")]
    with limits:
        for B in batches:
            for name, M, N, K, ta, tb in _step_products(B):
                A = rng.standard_normal((K, M) if ta else (M, K)).astype(np.float32)
                Bm = rng.standard_normal((N, K) if tb else (K, N)).astype(np.float32)
                opA, opB = (A.T if ta else A), (Bm.T if tb else Bm)
                C = np.empty((M, N), np.float32)
                calls = max(3, int(seconds * peak * 1e9 / (2 * M * N * K) * 0.5))
                tv, tn, rts = [], [], []
                for _ in range(repeats):
                    if probe:
                        rts.append(_core.roundtrip_ns(threads))
                    time.sleep(BLAS_SPIN_S)
                    tv.append(_core.sgemm(A, Bm, bool(ta), bool(tb), threads=threads, calls=calls, out=C)[1])
                    np.matmul(opA, opB, out=C)
                    t0 = time.perf_counter()
                    for _ in range(calls):
                        np.matmul(opA, opB, out=C)
                    tn.append((time.perf_counter() - t0) / calls)
                fl = 2.0 * M * N * K
                lines.append(f"| {name}, {B} | {M}×{N}×{K} | {statistics.median(tv) * 1e6:,.1f} | "
                             f"{statistics.median(tn) * 1e6:,.1f} | {_paired_ratio(tn, tv)} | "
                             f"{100 * fl / statistics.median(tv) / 1e9 / peak:.0f} % |"
                             + (f" {_far_count(rts)} |" if probe else ""))
        # encode at the largest batch: vaec's call against the same arithmetic in NumPy
        B = max(batches)
        m = vaec.VAE(D, Z, hidden=(H,), activation="tanh", seed=0, threads=threads)
        P = m.params
        W0, b0 = P["encoder.0.weight"].copy(), P["encoder.0.bias"].copy()
        Wh = np.concatenate([P["encoder.mu.weight"], P["encoder.logvar.weight"]])
        bh = np.concatenate([P["encoder.mu.bias"], P["encoder.logvar.bias"]])
        X = _data(B)
        hbuf, obuf = np.empty((B, H), np.float32), np.empty((B, 2 * Z), np.float32)

        def np_encode():
            np.matmul(X, W0.T, out=hbuf)
            np.add(hbuf, b0, out=hbuf)
            np.tanh(hbuf, out=hbuf)
            np.matmul(hbuf, Wh.T, out=obuf)
            np.add(obuf, bh, out=obuf)

        tv, tn, rts = [], [], []
        for _ in range(repeats):
            if probe:
                rts.append(_core.roundtrip_ns(threads))
            time.sleep(BLAS_SPIN_S)
            calls, el = _timed(lambda: m.encode(X), seconds)
            tv.append(el / calls)
            calls, el = _timed(np_encode, seconds)
            tn.append(el / calls)
        fl = 2.0 * B * H * (D + 2 * Z)
        lines.append(f"| encode (the tanh layer and both heads), {B} | {B}×{H}×{D} + {B}×{2 * Z}×{H} | "
                     f"{statistics.median(tv) * 1e6:,.1f} | {statistics.median(tn) * 1e6:,.1f} | "
                     f"{_paired_ratio(tn, tv)} | {100 * fl / statistics.median(tv) / 1e9 / peak:.0f} % |"
                     + (f" {_far_count(rts)} |" if probe else ""))
    lines.append("")
    lines.append(f"Each product on random operands in the layouts vaec's training step uses, {threads} thread(s) on "
                 "both sides, both writing the same output array; vaec's time is the mean of a run of calls on one "
                 "thread pool, NumPy's of the same number of np.matmul calls, each vaec timing "
                 f"{BLAS_SPIN_S:g} s after NumPy's (OpenBLAS's threads spin on after a call); medians of "
                 f"{repeats} interleaved repeats, the speed ratio the median of their paired ratios (above 1: vaec "
                 f"faster). The first layer's products are the dense ones (vaec's training skips the input's "
                 f"zeros instead). % of peak against a {peak:.0f} GFLOP/s probe. "
                 + (note + "." if note else f"NumPy's BLAS held to {threads} thread(s) by threadpoolctl.")
                 + " encode's first layer skips the zeros of its input as in training, so its % of peak is "
                 "dense-equivalent and can pass 100 %."
                 + (" The last column: the repeats whose round-trip probe (as above the training table) found "
                    "the two CPUs sharing no cache level." if probe else ""))
    for line in lines if out else ():
        out(line)
    return lines


def _far_count(roundtrips):
    """The cell of the round-trip column: how many of the repeats' probes (None: the probe
    timed nothing) found the CPUs far apart, of those that measured."""
    done = [r for r in roundtrips if r is not None]
    return f"{sum(r >= FAR_NS for r in done)} of {len(done)}" if done else "—"


def _paired_ratio(num, den):
    """Median (min–max) of num[i] / den[i] over the interleaved repeats: the two sides of
    a pair ran back to back, so a slow spell of the machine cancels out of each ratio
    instead of landing on one side's median. "—" when either side is missing."""
    if not num or not den:
        return "—"
    r = [a / b for a, b in zip(num, den)]
    return f"{statistics.median(r):.2f}× ({min(r):.2f}–{max(r):.2f})"


def run(threads=None, vs_torch=True, quick=False, batches=(1, 20, 100, 1000), out=print, conv_batches=(20, 100, 1000),
        compile_torch=True, gemm_batches=(100, 1000)):
    import vaec
    from . import _core

    threads = threads or vaec.cpu_features()["cores"]
    seconds = 0.3 if quick else 1.0
    repeats = 3 if quick else 5
    X = _data(4000)
    torch_model = compiled = None
    if vs_torch:
        try:
            torch_model = _Torch(threads)
        except ImportError:
            out("(PyTorch is not installed: vaec alone)")
    if torch_model and compile_torch:
        try:
            compiled = _TorchCompiled(threads)
            compiled.step(torch_model.torch.from_numpy(X[:2]))   # fails here when it cannot compile
        except Exception as e:   # no C++ compiler, an unsupported platform: the column stays empty
            out(f"(torch.compile is not usable here: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})")
            compiled = None
    peak1 = _core.peak_gflops(1, 0.3 if quick else 1.0)
    peak = _core.peak_gflops(threads, 0.3 if quick else 1.0)
    probe_s = 0.1 if quick else 0.2
    feats = vaec.cpu_features()
    rows = []
    m = vaec.VAE(D, Z, hidden=(H,), activation="tanh", seed=0, threads=threads)

    def rate(fn, n_per_call):
        calls, el = _timed(fn, seconds)
        return calls * n_per_call / el

    # the first layer skips the input's zeros (vaec.set_sparse_input); the largest batch
    # runs once more with that off, so the dense layers' own throughput shows too
    configs = [(B, None) for B in batches]
    dense_row = None
    if batches and max(batches) >= 256:
        configs.append((max(batches), "off"))
    for B, sparse in configs:
        xs = [X[i:i + B] for i in range(0, len(X) - B + 1, B)] or [X[:B]]
        it = {"v": 0, "t": 0}

        def v_step():
            m.train_step(xs[it["v"] % len(xs)])
            it["v"] += 1

        tx = [torch_model.torch.from_numpy(x) for x in xs] if torch_model else None

        def t_step():
            torch_model.step(tx[it["t"] % len(tx)])
            it["t"] += 1

        use_c = compiled is not None and sparse is None

        def c_step():
            compiled.step(tx[it["c"] % len(tx)])
            it["c"] += 1

        it["c"] = 0
        if use_c:
            compiled.step(tx[0])   # this batch size's compilation, outside the timing
        v, t, c, peaks, dense = [], [], [], [], []
        roundtrips = []   # a cache line's round trip between two threads before each repeat
        before = vaec.set_sparse_input(sparse) if sparse else None
        try:
            for _ in range(repeats):  # interleaved, each repeat after a short peak probe: the
                # machine's speed drifts (a VM), so each row is set against the peak of its time
                peaks.append(_core.peak_gflops(threads, probe_s))
                if threads > 1:
                    roundtrips.append(_core.roundtrip_ns(threads))
                _core.gemm_timing(sparse == "off")   # the dense path's GEMMs timed inside vaec
                v.append(rate(v_step, B))
                gemm_s, gemm_flops = _core.gemm_timing(False)
                if gemm_s > 0:
                    dense.append((gemm_flops / gemm_s / 1e9, peaks[-1]))
                if torch_model:
                    t.append(rate(t_step, B))
                if use_c:
                    c.append(rate(c_step, B))
        finally:
            _core.gemm_timing(False)
            if before:
                vaec.set_sparse_input(before)
        rows.append(("train", B, v, t, _train_macs(1), sparse, peaks, c, roundtrips))
        if sparse == "off" and dense:
            dense_row = (B, dense)

    # the conv VAE of the convolutional issue, the same network in PyTorch
    conv_rows = []
    if conv_batches:
        enc, dec = conv_network()
        cm = vaec.VAE(input_shape=(1, 28, 28), latent_dim=32, encoder=enc, decoder=dec, seed=0, threads=threads)
        ctorch = None
        if torch_model:
            ctorch = _TorchConv(cm, threads)
        macs, cmacs = conv_macs(cm)
        Xc = X.reshape(-1, 1, 28, 28)
        for B in conv_batches:
            xs = [Xc[i:i + B] for i in range(0, len(Xc) - B + 1, B)] or [Xc[:B]]
            it = {"v": 0, "t": 0}

            def cv_step():
                cm.train_step(xs[it["v"] % len(xs)])
                it["v"] += 1

            tx = [ctorch.torch.from_numpy(x) for x in xs] if ctorch else None

            def ct_step():
                ctorch.step(tx[it["t"] % len(tx)])
                it["t"] += 1

            v, t, peaks, convs, rts = [], [], [], [], []
            try:
                for _ in range(repeats):
                    peaks.append(_core.peak_gflops(threads, probe_s))
                    if threads > 1:
                        rts.append(_core.roundtrip_ns(threads))
                    _core.conv_timing(True)
                    v.append(rate(cv_step, B))
                    conv_s, conv_macs_done = _core.conv_timing(False)
                    if conv_s > 0:
                        convs.append((2 * conv_macs_done / conv_s / 1e9, peaks[-1]))
                    if ctorch:
                        t.append(rate(ct_step, B))
            finally:
                _core.conv_timing(False)
            conv_rows.append((B, v, t, macs, peaks, convs, rts))

    # single-example encode latency (microseconds; lower is better)
    x1 = X[:1]
    lat_v, lat_t = [], []
    tx1 = torch_model.torch.from_numpy(x1) if torch_model else None
    for _ in range(repeats):
        calls, el = _timed(lambda: m.encode(x1), seconds / 2, 100)
        lat_v.append(el / calls * 1e6)
        if torch_model:
            calls, el = _timed(lambda: torch_model.encode(tx1), seconds / 2, 100)
            lat_t.append(el / calls * 1e6)

    # importance-sampled log-likelihood, k = 1000 (examples per second)
    k, n_ll = 1000, (8 if quick else 32)
    xl = X[:n_ll]
    ll_v, ll_t = [], []
    # one untimed call each first: vaec's first one sizes its workspace for k-row chunks
    m.log_likelihood(xl[:1], samples=k, seed=0)
    if torch_model:
        torch_model.log_likelihood(torch_model.torch.from_numpy(xl[:1]), k)
    for _ in range(max(2, repeats - 2)):
        t0 = time.perf_counter()
        m.log_likelihood(xl, samples=k, seed=0)
        ll_v.append(n_ll / (time.perf_counter() - t0))
        if torch_model:
            t0 = time.perf_counter()
            torch_model.log_likelihood(torch_model.torch.from_numpy(xl), k)
            ll_t.append(n_ll / (time.perf_counter() - t0))

    def fmt(vals):
        if not vals:
            return "—"
        return f"{statistics.median(vals):,.0f} ({min(vals):,.0f}–{max(vals):,.0f})"


    lines = []
    lines.append(f"vaec {vaec.__version__} on {platform.machine()} ({feats['isa']} kernels; CPU features "
                 f"{feats['features']}), {threads} thread(s); "
                 + (f"PyTorch {torch_model.torch.__version__}" if torch_model else "no PyTorch"))
    during = [p for row in rows for p in row[6]]
    cc = compiled is not None
    lines.append(f"measured FP32 FMA peak: {peak1:.0f} GFLOP/s on 1 thread, {peak:.0f} GFLOP/s on {threads}"
                 + (f"; {min(during):.0f}–{max(during):.0f} GFLOP/s on {threads} in the probes between the "
                    "training repeats" if during else ""))
    rt = [r for row in rows for r in row[8] if r is not None] + [r for row in conv_rows for r in row[6] if r is not None]
    if rt:
        lines.append(f"cache-line round trip between two threads, probed before each training repeat (both models): "
                     f"{min(rt):.0f}–{max(rt):.0f} ns (median {statistics.median(rt):.0f}); at {FAR_NS} ns or more "
                     "(the last column) two CPUs share no cache level (another core complex or socket) and "
                     "threads that hand data to each other slow down (docs/PERFORMANCE.md)")
    lines.append("")
    # the torch.compile columns only when it ran: "| a | b |" -> "| a | b | c | d |" on every row
    comp = (lambda cells: cells) if cc else (lambda cells: "")
    # the round-trip column on more than one thread, as in gemm_table ("—" where no probe measured)
    far = (lambda cells: cells) if threads > 1 else (lambda cells: "")
    lines.append("| measure | vaec | PyTorch | vaec / PyTorch |" + comp(" torch.compile | vaec / torch.compile |")
                 + " vaec GFLOP/s | % of peak |" + far(f" repeats at ≥ {FAR_NS} ns round trip |"))
    lines.append("|---|---|---|---|" + comp("---|---|") + "---|---|" + far("---|"))
    for kind, B, v, t, macs, sparse, peaks, c, rts in rows:
        gf = statistics.median(v) * macs * 2 / 1e9
        pct = statistics.median(r * macs * 2 / 1e9 / p for r, p in zip(v, peaks))
        ratio = _paired_ratio(v, t)
        what = f"batch {B}, zeros not skipped" if sparse == "off" else f"batch {B}"
        lines.append(f"| training ex/s, {what} | {fmt(v)} | {fmt(t)} | {ratio} |"
                     + comp(f" {fmt(c)} | {_paired_ratio(v, c)} |") + f" {gf:.1f} | {100 * pct:.0f} % |"
                     + far(f" {_far_count(rts)} |"))
    if dense_row:
        B, dense = dense_row
        gf = statistics.median(g for g, _ in dense)
        pcts = [g / p for g, p in dense]
        lines.append(f"| dense layers alone (their GEMMs' time in vaec), batch {B}, zeros not skipped | | | |"
                     + comp(" | |") + f" {gf:.1f} | {100 * statistics.median(pcts):.0f} % ({100 * min(pcts):.0f}–"
                     f"{100 * max(pcts):.0f}) |" + far(" |"))
    for B, v, t, macs, peaks, convs, rts in conv_rows:
        gf = statistics.median(v) * macs * 2 / 1e9
        pct = statistics.median(r * macs * 2 / 1e9 / p for r, p in zip(v, peaks))
        lines.append(f"| conv VAE training ex/s, batch {B} | {fmt(v)} | {fmt(t)} | {_paired_ratio(v, t)} |"
                     + comp(" | |") + f" {gf:.1f} | {100 * pct:.0f} % |"
                     + far(f" {_far_count(rts)} |"))
        if convs:
            cg = statistics.median(g for g, _ in convs)
            cp = [g / p for g, p in convs]
            lines.append(f"| conv VAE: its convolution layers alone (all their work), batch {B} | | | |" + comp(" | |")
                         + f" {cg:.1f} | {100 * statistics.median(cp):.0f} % ({100 * min(cp):.0f}–{100 * max(cp):.0f}) |"
                         + far(" |"))
    ratio = _paired_ratio(lat_t, lat_v)
    lines.append(f"| encode one example, µs (lower is better) | {fmt(lat_v).replace(',', '')} | "
                 f"{fmt(lat_t).replace(',', '')} | {ratio} |" + comp(" | |") + " | |" + far(" |"))
    ratio = _paired_ratio(ll_v, ll_t)
    lines.append(f"| log-likelihood ex/s, k = {k} | {fmt(ll_v)} | {fmt(ll_t)} | {ratio} |" + comp(" | |") + " | |"
                 + far(" |"))
    lines.append("")
    lines.append(f"Medians of {repeats} interleaved repeats of about {seconds:g} s each (min–max in brackets); "
                 f"vaec / PyTorch is the median of the {repeats} ratios of back-to-back pairs; "
                 "GFLOP/s counts the multiply-adds of the dense layers' forward and backward passes; "
                 "% of peak is the median over the repeats of that throughput over the peak probe run just "
                 "before the repeat (min–max in brackets on the dense-layer row). "
                 "vaec's first layer skips the zeros of its input (these digits are about 13 % ones; "
                 "`vaec.set_sparse_input`), so it does fewer multiply-adds than counted: its GFLOP/s and % of "
                 "peak are dense-equivalent, except on the row whose zeros are not skipped, where all "
                 "the products are done. The conv VAE is the convolutional issue's (Conv2d 32 and 64, 4x4 "
                 "stride 2; Linear 256; the mirror with ConvTranspose2d; latent 32) against the same layers "
                 "in PyTorch (vaec.to_torch's module); its convolution-layer row times everything those "
                 "layers do (im2col, the GEMMs, col2im, the layout changes) against their multiply-adds."
                 + (" torch.compile: the same PyTorch model with its loss (forward and backward) compiled, "
                    "Adam eager, each batch size compiled before its timing; on the training rows with "
                    "the zeros skipped, interleaved with the others." if cc else ""))
    if gemm_batches:
        lines += [""] + gemm_table(threads, gemm_batches[:1] if quick else gemm_batches, repeats=repeats,
                                   seconds=0.1 if quick else 0.2)
    for l in lines:
        out(l)
    return lines


def write_report(lines, path, command):
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    text = ["# Performance", "", f"The latest `{command}`, run {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} "
            f"on {platform.node() or 'this machine'} ({os.cpu_count()} CPUs visible, "
            f"{platform.processor() or platform.machine()}).", ""] + lines + [""]
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        f.write("\n".join(text))
    os.replace(tmp, path)
