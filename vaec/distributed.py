"""Synchronous data-parallel training over MPI: ``fit(..., comm=MPI.COMM_WORLD)``.

Every rank holds the whole model and the same data; each global batch of ``batch_size``
rows is split into contiguous shares, rank k taking rows [k*n//P, (k+1)*n//P) of it (n
rows, P ranks). Each rank computes its share's loss and gradients with the share's place
in the batch (the binding's ``row_offset=``/``n_total=``): the noise and the dynamic
binarization of those rows of the batch, sums divided by the global n. One in-place
``Allreduce`` (SUM) on the model's gradient buffer -- the C arena itself, no copy -- gives
every rank the gradient of the whole batch; every rank then takes the same Adam step, so
the parameters stay the same on all ranks. A checksum of the parameters is compared every
``CHECK_EVERY`` steps and at the end of every epoch.

What the ranks must agree on is checked once, before the first step: vaec's version, the
model's class, configuration (seed included), parameters, optimizer and RNG state, the
fit's settings, every data array's shape, dtype and contents (a CRC-32), and the kernel
path (the elementwise Adam step is compiled per path; different paths could round
differently). A disagreement, or an error on any rank while the fit checks its
arguments, raises on every rank, naming the ranks and what differs -- never a hang.

Rank 0 alone prints, writes checkpoints and runs the callback (its return value stops
every rank); every rank returns the same history. Resuming reads the checkpoint on rank 0
and broadcasts its bytes, so the other ranks need no copy of the file, and any number of
ranks resumes any checkpoint: nothing in it depends on the number of ranks.

This module needs mpi4py (``pip install 'vaec[mpi]'``) and an MPI library (Debian:
``apt-get install openmpi-bin libopenmpi-dev``) only when a communicator is given.
"""
from __future__ import annotations

import os
import tempfile
import zlib

import numpy as np

from . import _core

__all__ = ["CHECK_EVERY", "DistributedError", "world"]

CHECK_EVERY = 100   # optimizer steps between checksums of the parameters (and every epoch's end)
_MAX_SHOWN = 240    # characters of a value shown in a mismatch message


class DistributedError(RuntimeError):
    """Raised on every rank together: the ranks disagree (configuration, data, parameters)
    or one of them failed. Its message says which ranks and what."""


def world():
    """mpi4py's ``MPI.COMM_WORLD`` (ImportError with the install line when mpi4py is missing)."""
    return _mpi().COMM_WORLD


def _mpi():
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError("comm: data-parallel training needs mpi4py: pip install 'vaec[mpi]' (and an MPI library, "
                          "e.g. Debian's openmpi-bin and libopenmpi-dev)") from e
    return MPI


def _crc(arr, crc=0, rows=1 << 14):
    """CRC-32 of an array's bytes in C order, a block of rows at a time (no whole copy of a
    non-contiguous array)."""
    arr = np.asarray(arr)
    if arr.ndim == 0 or arr.flags.c_contiguous:
        return zlib.crc32(memoryview(np.ascontiguousarray(arr)).cast("B"), crc)
    for i in range(0, arr.shape[0], rows):
        crc = zlib.crc32(memoryview(np.ascontiguousarray(arr[i:i + rows])).cast("B"), crc)
    return crc


def data_fingerprint(**arrays):
    """name -> (shape, dtype, CRC-32) of each array given (None: absent)."""
    return {k: None if a is None else (tuple(np.shape(a)), str(np.asarray(a).dtype), _crc(a))
            for k, a in arrays.items()}


def _show(value):
    text = repr(value)
    return text if len(text) <= _MAX_SHOWN else text[:_MAX_SHOWN] + "..."


class Dist:
    """One communicator as the fit driver uses it."""

    def __init__(self, comm):
        MPI = _mpi()
        if not isinstance(comm, MPI.Intracomm):
            raise TypeError(f"comm: expected an mpi4py intracommunicator such as MPI.COMM_WORLD, got "
                            f"{type(comm).__name__}")
        self.MPI, self.comm = MPI, comm
        self.rank, self.size = comm.Get_rank(), comm.Get_size()
        self.lead = self.rank == 0

    # ------------------------------------------------------------ shares
    def share(self, n):
        """(a, b): this rank's rows [a, b) of a batch of n rows (contiguous, sizes differing
        by at most one; empty for some ranks when n < size)."""
        return n * self.rank // self.size, n * (self.rank + 1) // self.size

    # ------------------------------------------------------- collectives
    def allreduce_grads(self, grads):
        """The one collective of a step: the gradient buffer summed over the ranks, in place."""
        self.comm.Allreduce(self.MPI.IN_PLACE, grads, op=self.MPI.SUM)

    def sum(self, values):
        """Float64 values summed over the ranks (a small array, one Allreduce)."""
        arr = np.array(values, dtype=np.float64)
        if arr.size:
            self.comm.Allreduce(self.MPI.IN_PLACE, arr, op=self.MPI.SUM)
        return arr

    def bcast(self, obj):
        return self.comm.bcast(obj, root=0)

    def agree(self, fn, what):
        """Run fn() on every rank; if it raised on any, raise on every rank (the rank's own
        exception where it failed, a DistributedError naming the failed ranks elsewhere)."""
        err = None
        try:
            out = fn()
        except Exception as e:   # noqa: BLE001 -- reported to every rank, then re-raised
            err, out = e, None
        self.raise_if_failed(err, what)
        return out

    def raise_if_failed(self, err, what):
        msgs = self.comm.allgather(None if err is None else f"{type(err).__name__}: {err}")
        bad = [(r, m) for r, m in enumerate(msgs) if m is not None]
        if not bad:
            return
        if err is not None:
            raise err
        raise DistributedError(f"{what} failed on rank{'s' if len(bad) > 1 else ''} "
                               + "; ".join(f"{r} ({m})" for r, m in bad))

    # ------------------------------------------------------------ checks
    def fail_start(self, err):
        """This rank's fit failed before training (its arguments): join the start-up
        exchange with the error, so that every rank raises."""
        self._exchange(None, err)

    def start(self, model, plan, resume):
        """The start-up exchange: every rank's fingerprint gathered and compared."""
        st = model._core.state()
        st.pop("threads", None)
        config = dict(model._core.config())
        mine = {
            "vaec version": _core.c_version,
            "model": type(model).__name__,
            "configuration": config,
            "parameters (CRC-32)": _crc(model._arenas["params"]),
            "optimizer and RNG state": st,
            "fit settings": dict(plan.settings, resume=resume is not None),
            "data": plan.data_fingerprint(),
            "kernel path (VAEC_ISA)": _core.cpu_features()["isa"],
        }
        self._exchange(mine, None)

    def _exchange(self, mine, err):
        prints = self.comm.allgather({"error": f"{type(err).__name__}: {err}"} if err is not None else mine)
        failed = [(r, p["error"]) for r, p in enumerate(prints) if "error" in p]
        if failed:
            if err is not None:
                raise err
            raise DistributedError("comm: the fit's arguments were refused on rank"
                                   f"{'s' if len(failed) > 1 else ''} " + "; ".join(f"{r} ({m})" for r, m in failed))
        ref = prints[0]
        diffs = []
        for key in ref:
            ranks = [r for r, p in enumerate(prints) if repr(p.get(key)) != repr(ref[key])]
            if not ranks:
                continue
            if key == "data":
                parts = []
                for name, v0 in ref[key].items():
                    for r in ranks:
                        v = prints[r][key].get(name)
                        if v != v0:
                            what = (f"contents differ (CRC-32 {v0[2]:08x} on rank 0, {v[2]:08x} on rank {r})"
                                    if v0 is not None and v is not None and v0[:2] == v[:2] else
                                    f"shape, dtype {v0 and v0[:2]} on rank 0, {v and v[:2]} on rank {r}")
                            parts.append(f"{name}: {what}")
                diffs.append("data: " + "; ".join(parts))
            elif isinstance(ref[key], dict):
                parts = []
                for r in ranks:
                    other = prints[r][key]
                    keys = [k for k in sorted(set(ref[key]) | set(other), key=str)
                            if repr(ref[key].get(k)) != repr(other.get(k))]
                    parts.append(", ".join(f"{k} = {_show(ref[key].get(k))} on rank 0, {_show(other.get(k))} "
                                           f"on rank {r}" for k in keys))
                diffs.append(f"{key}: " + "; ".join(parts))
            else:
                diffs.append(f"{key}: " + "; ".join(f"{_show(ref[key])} on rank 0, {_show(prints[r][key])} on rank {r}"
                                                    for r in ranks))
        if diffs:
            hint = (" (set VAEC_ISA to the same path, e.g. avx2, on every host)"
                    if any(d.startswith("kernel path") for d in diffs) else "")
            raise DistributedError(f"comm: the {self.size} ranks must train the same model on the same data; they "
                                   f"differ in {' | '.join(diffs)}{hint}")

    def check_params(self, model, where):
        """Raise on every rank unless the parameters are bitwise the same on all."""
        crcs = self.comm.allgather(_crc(model._arenas["params"]))
        if len(set(crcs)) > 1:
            groups = {}
            for r, c in enumerate(crcs):
                groups.setdefault(c, []).append(r)
            raise DistributedError(
                f"comm: the parameters differ between the ranks {where} (CRC-32 "
                + ", ".join(f"{c:08x} on ranks {rs}" for c, rs in groups.items())
                + "): they should never; every rank must take the same steps on the same summed gradient "
                "(same vaec build and kernel path, VAEC_ISA, on every host; no change to one rank's model "
                "during the fit)")

    # ------------------------------------------------------------- steps
    def step(self, model, plan, batch, lr, step):
        """One synchronous step: this rank's share (gradients only), the Allreduce, Adam.
        A rank whose share fails (a non-finite loss, or anything else) fills its gradients
        with NaN and still joins the Allreduce, so every rank sees a non-finite sum and
        raises too: no rank is left waiting."""
        grads = model._arenas["grads"]
        err = None
        try:
            loss, w = plan.step(batch, -1.0, step)
        except Exception as e:   # noqa: BLE001 -- re-raised below, after the collective
            err, loss, w = e, float("nan"), 0
            grads[...] = np.nan
        self.allreduce_grads(grads)
        if err is not None:
            raise err
        try:
            model._core.adam_step(lr=lr)
        except FloatingPointError:
            raise FloatingPointError("the gradient summed over the ranks is NaN or Inf (another rank's loss or "
                                     "gradient was not finite, or its step failed); the step was not taken") from None
        plan.after_step(self)
        return loss, w

    # ------------------------------------------------------------ resume
    def resume(self, model, path):
        """model._resume(path) on every rank from rank 0's copy of the file."""
        def read():
            if self.lead:
                with open(os.fspath(path), "rb") as f:
                    return f.read()
            return None
        blob = self.bcast(self.agree(read, "resume: reading the checkpoint on rank 0"))
        local, tmp = os.fspath(path), None
        try:
            if not self.lead:
                fd, tmp = tempfile.mkstemp(prefix="vaec-resume-", suffix="-" + os.path.basename(local))
                with os.fdopen(fd, "wb") as f:
                    f.write(blob)
                local = tmp
            return self.agree(lambda: model._resume(local), "resume")
        finally:
            if tmp is not None:
                os.unlink(tmp)
