"""Writes the redesign fixtures: run once, at commit 6ece87c (before the network redesign).

    python tests/data/redesign/make.py

For every kernel path this CPU has, every case of tests/redesign_cases.py runs and its
numbers go to numbers_<isa>.npz ("<case>/<name>" keys); the model files of the cases that
save one are written once (on the best path), and what each loaded file gives on every
path goes to the same npz ("file:<file>/<name>")."""
import os
import subprocess
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(os.path.dirname(HERE)))   # tests/

import redesign_cases as rc  # noqa: E402
from _helpers import available_isas, forced_isa  # noqa: E402

import vaec  # noqa: E402


def compact(key, v, out):
    """Arrays of more than BIG elements are kept as their sha256 and their float64 sum (for a
    message when they differ); smaller ones whole."""
    v = np.asarray(v)
    if v.size > rc.BIG:
        out[key + "#sha"] = rc.digest(v)
        out[key + "#sum"] = np.array(np.sum(v, dtype=np.float64))
    else:
        out[key] = v


def main():
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    isas = available_isas()
    best = isas[-1]
    with forced_isa(best):
        for name, fn in rc.CASES.items():
            fn(save=HERE)
    for isa in isas:
        out = {"meta/commit": np.array(commit), "meta/isa": np.array(isa)}
        with forced_isa(isa):
            for name, fn in rc.CASES.items():
                for k, v in fn().items():
                    compact(f"{name}/{k}", v, out)
            for f in rc.FILES:
                for k, v in rc.file_numbers(os.path.join(HERE, f)).items():
                    compact(f"file:{f}/{k}", v, out)
        np.savez_compressed(os.path.join(HERE, f"numbers_{isa}.npz"), **out)
        print(isa, len(out), "arrays")


if __name__ == "__main__":
    print(vaec.cpu_features())
    main()
