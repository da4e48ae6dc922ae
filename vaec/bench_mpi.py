"""Measures for docs/SCALING.md: training throughput of each model kind in one process or
over MPI ranks, and the time of one Allreduce of each model's gradient buffer.

    python -m vaec.bench_mpi --threads 2                     # one process, 2 threads
    mpirun -n 2 python -m vaec.bench_mpi --threads 1         # 2 ranks x 1 thread (fit(comm=))
    python -m vaec.bench_mpi --paper                          # the model on paper (below)

Each model trains ``--epochs`` epochs on its data through ``fit`` (the same code as
``train``); the throughput is the median of the epochs after the first (fit's own
``examples_per_s``, rank 0's clock). Under MPI the Allreduce of the model's gradient
buffer (in place, float32, SUM) is timed alone: ``--reps`` calls after a barrier, the
median of 5 such rounds per call; and inside training, the seconds rank 0 spends in the
step's Allreduce (which include waiting for the slower rank) per step. Prints one JSON
object per model (rank 0).

``--paper``: the step time of P ranks (one thread each) over a network, on paper, from
what is measured here in one process: the compute of one rank's share of a global batch
of B rows (a loss_grad call on ceil(B/P) rows, median of ``--reps``), the Adam step over
the whole arena (every rank takes it), and a ring Allreduce of the gradient's S bytes,
2 (P - 1) alpha + 2 (P - 1) / P * S / beta, for the networks of NETWORKS. Prints markdown
tables.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import time

import numpy as np

MODELS = ("mlp", "conv", "m2", "flow")


def _mnist(limit):
    from . import datasets
    X, y = datasets.load_mnist("train")
    return X[:limit], y[:limit]


def build(name, threads, limit):
    """(model, fit(comm) -> history, rows per epoch, batch size)."""
    import vaec
    if name == "mlp":
        X, _ = _mnist(limit)
        m = vaec.VAE(784, 20, hidden=(400,), seed=0, threads=threads)
        return m, lambda comm, epochs: m.fit(X, epochs=epochs, batch_size=100, seed=0, binarize="dynamic",
                                             progress=False, verbose=False, comm=comm), len(X), 100
    if name == "conv":
        X, _ = _mnist(limit // 4)
        m = vaec.VAE(input_shape=(1, 28, 28), latent_dim=20, architecture="conv", seed=0, threads=threads)
        return m, lambda comm, epochs: m.fit(X, epochs=epochs, batch_size=100, seed=0, binarize="dynamic",
                                             progress=False, verbose=False, comm=comm), len(X), 100
    if name == "m2":
        X, y = _mnist(limit // 2)
        m = vaec.M2(784, 10, latent_dim=50, hidden=(500,), seed=0, threads=threads)
        return m, lambda comm, epochs: m.fit(X[:100], y[:100], X[100:], epochs=epochs, batch_size=100, seed=0,
                                             binarize="dynamic", progress=False, verbose=False,
                                             comm=comm), len(X) - 100, 100
    if name == "flow":
        X = np.random.default_rng(0).standard_normal((limit * 4, 16)).astype(np.float32)
        m = vaec.Flow(16, "realnvp:8", seed=0, threads=threads)
        return m, lambda comm, epochs: m.fit(X, epochs=epochs, batch_size=256, seed=0, progress=False,
                                             verbose=False, comm=comm), len(X), 256
    raise ValueError(f"--models: unknown model {name!r}; expected some of {', '.join(MODELS)}")


# (name, latency alpha in seconds, bandwidth beta in bytes/s): typical MPI figures
NETWORKS = (("1 GbE", 50e-6, 0.117e9), ("10 GbE", 20e-6, 1.17e9), ("100 Gb/s InfiniBand", 2e-6, 12e9))


def ring_allreduce_seconds(P, nbytes, alpha, beta):
    """Reduce-scatter then allgather around a ring: 2 (P-1) messages of S/P bytes each."""
    return 0.0 if P == 1 else 2 * (P - 1) * alpha + 2 * (P - 1) / P * nbytes / beta


def _median_ms(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1e3 * statistics.median(times)


def paper(models, reps, batches=(100, 1000), ranks=(1, 4, 32)):
    import math
    for name in models:
        model, _, _, _ = build(name, 1, 4000)
        core, S = model._core, model._arenas["grads"].nbytes
        if name in ("mlp", "conv"):
            X, _ = _mnist(max(batches))
            X = X.reshape(len(X), -1)

            def share(rows, B):
                core.loss_grad(x=X[:rows], samples=1, binarize=True, lr=-1.0, row_offset=0, n_total=B)
        else:
            raise ValueError("--paper: the model on paper is for mlp and conv")
        adam = _median_ms(lambda: core.adam_step(lr=0.0), reps)
        print(f"\n{name}: gradient {S / 2**20:.2f} MiB, Adam step {adam:.2f} ms (one thread)\n")
        print("| global batch B | ranks P | rows per rank | share's compute (ms) | " +
              " | ".join(f"step on {n} (ms), speed-up" for n, _, _ in NETWORKS) + " |")
        print("|---:|---:|---:|---:|" + "---:|" * len(NETWORKS))
        for B in batches:
            base = None
            for P in ranks:
                rows = math.ceil(B / P)
                comp = _median_ms(lambda: share(rows, B), reps)
                cells = []
                for _, alpha, beta in NETWORKS:
                    t = comp + adam + 1e3 * ring_allreduce_seconds(P, S, alpha, beta)
                    if P == 1:
                        base = t
                    cells.append(f"{t:.2f}, {base / t:.2f}x")
                print(f"| {B} | {P} | {rows} | {comp:.2f} | " + " | ".join(cells) + " |", flush=True)


def allreduce_seconds(comm, buf, reps):
    from mpi4py import MPI
    rounds = []
    for _ in range(5):
        comm.Barrier()
        t0 = time.perf_counter()
        for _ in range(reps):
            comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        rounds.append((time.perf_counter() - t0) / reps)
    return comm.bcast(statistics.median(rounds))


def main(argv=None):
    p = argparse.ArgumentParser(prog="python -m vaec.bench_mpi", description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", type=int, default=1, help="threads per process (rank)")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--limit", type=int, default=4000, help="MNIST rows of the MLP VAE (conv: a quarter; M2: half)")
    p.add_argument("--reps", type=int, default=50)
    p.add_argument("--paper", action="store_true", help="the model on paper of P ranks over a network (mlp, conv)")
    args = p.parse_args(argv)
    os.environ.setdefault("VAEC_OFFLINE", "1")
    if args.paper:
        return paper([m for m in args.models.split(",") if m in ("mlp", "conv")], args.reps)
    comm = None
    if int(os.environ.get("OMPI_COMM_WORLD_SIZE") or os.environ.get("PMI_SIZE") or 1) > 1:
        from mpi4py import MPI
        comm = MPI.COMM_WORLD
    rank, size = (0, 1) if comm is None else (comm.Get_rank(), comm.Get_size())
    import vaec
    from . import distributed
    spent = []
    real = distributed.Dist.allreduce_grads

    def timed(self, grads):   # the step's Allreduce, timed on this rank
        t0 = time.perf_counter()
        real(self, grads)
        spent.append(time.perf_counter() - t0)
    distributed.Dist.allreduce_grads = timed
    for name in args.models.split(","):
        model, fit, rows, batch = build(name, args.threads, args.limit)
        spent.clear()
        hist = fit(comm, args.epochs)
        in_fit = statistics.median(spent) if spent else None
        ex_s = statistics.median(hist["examples_per_s"][1:] or hist["examples_per_s"])
        grads = model._arenas["grads"]
        out = {"model": name, "ranks": size, "threads": args.threads, "batch": batch, "rows": rows,
               "params": int(grads.size), "grad_mb": grads.nbytes / 2**20, "examples_per_s": ex_s,
               "step_ms": 1e3 * batch / ex_s, "isa": vaec.cpu_features()["isa"]}
        if comm is not None:
            out["allreduce_in_fit_ms"] = 1e3 * in_fit
            out["allreduce_ms"] = 1e3 * allreduce_seconds(comm, grads, args.reps)
            small = np.zeros(1, np.float32)
            out["allreduce_1float_us"] = 1e6 * allreduce_seconds(comm, small, args.reps * 10)
        if rank == 0:
            print(json.dumps(out), flush=True)


if __name__ == "__main__":
    main()
