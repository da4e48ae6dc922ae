"""The command line, end to end in quick mode, and its one-line errors."""
import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import vaec

ENV = {**os.environ, "VAEC_OFFLINE": "1", "MPLBACKEND": "Agg"}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vaec", *args], capture_output=True, text=True, env=ENV,
                          cwd=cwd, timeout=300)


def test_train_writes_model_metrics_and_pictures(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--epochs", "2", "--limit", "2000", "--latent", "2", "--hidden", "64",
            "--out", str(out), "--quiet", "--seed", "3")
    assert r.returncode == 0, r.stderr
    lines = [l for l in r.stdout.splitlines() if l.startswith("epoch")]
    assert len(lines) == 2 and "train loss" in lines[0] and "test ELBO" in lines[0] and "ex/s" in lines[0]
    assert "shipped" in r.stdout  # the offline fallback is announced once, as a note
    files = sorted(os.listdir(out))
    assert files == ["history.png", "latent.png", "metrics.json", "model.vaec", "reconstructions.png",
                     "samples.png"]
    for f in files:
        if f.endswith(".png"):
            assert (out / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["latent_dim"] == 2 and metrics["model"]["hidden"] == [64]
    assert len(metrics["history"]["loss"]) == 2
    m = vaec.load(out / "model.vaec")
    assert m.latent_dim == 2
    r2 = run("eval", str(out / "model.vaec"), "--seed", "0")
    assert r2.returncode == 0, r2.stderr
    elbo = float(r2.stdout.split("test ELBO:")[1].split()[0])
    assert -400 < elbo < -100


def test_sample_writes_a_png(tmp_path):
    m = vaec.VAE(784, 3, hidden=(16,), seed=0)
    m.save(tmp_path / "m.vaec")
    r = run("sample", str(tmp_path / "m.vaec"), "--n", "16", "--out", str(tmp_path / "s.png"), "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "s.png").read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("args,message", [
    (["train", "--bogus"], "unrecognized arguments: --bogus"),
    (["train", "--epochs", "-1"], "--epochs: expected a non-negative integer"),
    (["train", "--lr", "0"], "--lr: expected a positive number"),
    (["train", "--hidden", "40,x"], "--hidden: expected widths"),
    (["train", "--dataset", "cifar"], "--dataset: invalid choice"),
    (["train", "--likelihood", "gaussian", "--binarize", "dynamic", "--epochs", "0"], "needs --likelihood bernoulli"),
    (["sample", "/no/such/model.vaec"], "model file not found"),
    (["eval", "/no/such/model.vaec"], "model file not found"),
    (["nonsense"], "invalid choice"),
])
def test_errors_are_one_line_with_status_2(args, message):
    r = run(*args)
    assert r.returncode == 2
    err = r.stderr.strip().splitlines()
    assert len(err) == 1 and message in err[0] and "Traceback" not in r.stderr, r.stderr


def test_corrupt_model_file_is_one_line(tmp_path):
    p = tmp_path / "bad.vaec"
    p.write_bytes(b"not a model at all" * 20)
    r = run("eval", str(p))
    assert r.returncode == 2 and "not a vaec model file" in r.stderr and "Traceback" not in r.stderr


def test_missing_dataset_is_one_line(tmp_path):
    r = run("train", "--dataset", "frey", "--data", str(tmp_path), "--epochs", "1")
    assert r.returncode == 2 and "frey_rawface.mat not found" in r.stderr


@pytest.mark.parametrize("cmd", [[], ["train"], ["sample"], ["eval"]])
def test_help_everywhere(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout


def test_eval_reports_bounds_log_likelihood_and_active_units(tmp_path):
    m = vaec.VAE(784, 4, hidden=(32,), seed=0)
    m.save(tmp_path / "m.vaec")
    r = run("eval", str(tmp_path / "m.vaec"), "--samples", "60", "--limit", "40")
    assert r.returncode == 0, r.stderr
    vals = {}
    for line in r.stdout.splitlines():
        if ":" in line and "nats" in line:
            name, rest = line.split(":", 1)
            vals[name.strip()] = float(rest.split()[0])
    assert list(vals) == ["test ELBO", "IWAE bound, k=5", "IWAE bound, k=50", "log p(x), IS k=60"]
    assert vals["test ELBO"] <= vals["IWAE bound, k=5"] + 1 and vals["IWAE bound, k=5"] <= vals["log p(x), IS k=60"] + 1
    assert "active units:" in r.stdout
    # the figures do not depend on the thread count
    r1 = run("eval", str(tmp_path / "m.vaec"), "--samples", "60", "--limit", "40", "--threads", "1")
    r2 = run("eval", str(tmp_path / "m.vaec"), "--samples", "60", "--limit", "40", "--threads", "2")
    assert r1.returncode == 0 and r2.returncode == 0, r1.stderr + r2.stderr

    def figures(out):
        return [line.split("(")[0] for line in out.splitlines() if "nats" in line]
    assert figures(r1.stdout) == figures(r2.stdout) == figures(r.stdout)


def test_compare_gives_paired_differences_with_standard_errors(tmp_path):
    """compare: the first model against itself differs by exactly 0; a trained model against
    an untrained one by the difference of their mean bounds, with a positive standard error
    that the thread count does not change; mismatched models are refused."""
    from vaec import commands
    X = vaec.datasets.load_mnist("test")[0][:200]
    a = vaec.VAE(784, 4, hidden=(32,), seed=0)
    b = vaec.VAE(784, 4, hidden=(32,), seed=0)
    b.fit(X, epochs=3, batch_size=50, verbose=False)
    a.save(tmp_path / "a.vaec")
    b.save(tmp_path / "b.vaec")
    rows = commands.compare([a, a, b], X[:60], samples=3, out=lambda *_: None)
    assert rows[1]["diff"] == 0.0 and rows[1]["se"] == 0.0
    ea = -np.mean([a.elbo(X[:60], seed=s, binarize="dynamic") for s in range(3)], axis=0)
    eb = -np.mean([b.elbo(X[:60], seed=s, binarize="dynamic") for s in range(3)], axis=0)
    assert np.isclose(rows[2]["diff"], (eb - ea).mean()) and rows[2]["diff"] < 0 < rows[2]["se"]
    outs = []
    for t in ("1", "2"):
        r = run("compare", str(tmp_path / "a.vaec"), str(tmp_path / "b.vaec"), "--samples", "3", "--limit", "60",
                "--threads", t)
        assert r.returncode == 0, r.stderr
        outs.append([line for line in r.stdout.splitlines() if "-ELBO " in line and "std err" in line])
    assert outs[0] == outs[1] and len(outs[0]) == 2 and "+0.000 +- 0.000" in outs[0][0]
    vaec.VAE(784, 3, hidden=(8,), likelihood="gaussian").save(tmp_path / "g.vaec")
    r = run("compare", str(tmp_path / "a.vaec"), str(tmp_path / "g.vaec"), "--limit", "10")
    assert r.returncode == 2 and "different likelihoods" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_eval_and_compare_say_when_binarizing_cannot_change_the_images(tmp_path):
    """Drawing 0/1 pixels from 0/1 images gives the images back: on the statically binarized
    set eval and compare say the draws have no effect; on grey MNIST they do not."""
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        X = (rng.random((30, 784)) < 0.2).astype(int)
        np.savetxt(tmp_path / f"binarized_mnist_{split}.amat", X, fmt="%d")
    vaec.VAE(784, 3, hidden=(8,), seed=0).save(tmp_path / "a.vaec")
    for cmd in (("eval", str(tmp_path / "a.vaec")), ("compare", str(tmp_path / "a.vaec"), str(tmp_path / "a.vaec"))):
        r = run(*cmd, "--dataset", "binarized-mnist", "--data", str(tmp_path))
        assert r.returncode == 0, r.stderr
        assert "30 images, binarize=dynamic (no effect: the images are already 0/1)" in r.stdout, r.stdout
        r = run(*cmd, "--limit", "20")
        assert r.returncode == 0, r.stderr
        assert "20 images, binarize=dynamic\n" in r.stdout, r.stdout


def test_a_source_tree_without_the_extension_says_how_to_build_it(tmp_path):
    """`python -m vaec` inside a clone finds the source folder first; without the built
    extension it must say so, not fail with a bare ModuleNotFoundError."""
    import shutil

    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "vaec")
    shutil.copytree(src, tmp_path / "vaec", ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    # -S: no site-packages, so an editable install's import hook cannot redirect to the real tree
    r = subprocess.run([sys.executable, "-S", "-m", "vaec", "--help"], capture_output=True, text=True, cwd=tmp_path,
                       env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"})
    assert r.returncode != 0 and "pip install -e ." in r.stderr and "C extension is not built" in r.stderr, r.stderr


def test_eval_of_an_m2_model_gives_its_test_error_and_bound(tmp_path):
    m = vaec.M2(784, 10, latent_dim=4, hidden=(16,), seed=0)
    m.save(tmp_path / "m2.vaec")
    r = run("eval", str(tmp_path / "m2.vaec"), "--limit", "50")
    assert r.returncode == 0, r.stderr
    X, y = vaec.datasets.load_mnist("test")
    err = float(next(line for line in r.stdout.splitlines() if line.startswith("test error")).split()[2])
    assert abs(err - 100 * m.error_rate(X[:50], y[:50])) < 0.01
    assert "test ELBO (labels unseen)" in r.stdout
    r = run("eval", str(tmp_path / "m2.vaec"), "--limit", "50", "--samples", "20")
    assert r.returncode == 2 and "holds an M2 model" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_eval_and_sample_refuse_an_autoencoder(tmp_path):
    vaec.Autoencoder(784, 2, hidden=(8,)).save(tmp_path / "ae.vaec")
    for cmd in (["eval", str(tmp_path / "ae.vaec")], ["sample", str(tmp_path / "ae.vaec"), "--out", str(tmp_path / "s.png")]):
        r = run(*cmd)
        assert r.returncode == 2 and "holds an Autoencoder" in r.stderr and "Traceback" not in r.stderr, r.stderr


def test_reproduce_rezende_flows_records_one_row_per_posterior(tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 60), ("test", 20)):
        B = (rng.random((n, 784)) < 0.2).astype(np.uint8)
        (tmp_path / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, r)) for r in B) + "\n")
    results = tmp_path / "RESULTS.md"
    r = run("reproduce", "rezende-flows", "--data", str(tmp_path), "--epochs", "1", "--flows", "none,planar:2",
            "--eval-samples", "10", "--eval-limit", "10", "--out", str(tmp_path / "out"), "--results", str(results),
            "--quiet", "--threads", "1")
    assert r.returncode == 0, r.stderr
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 2")]
    assert [row.split("|")[2].strip() for row in rows] == ["diagonal Gaussian", "planar:2"]
    assert "better than the diagonal posterior" in r.stdout
    assert json.loads((tmp_path / "out" / "result.json").read_text())["rows"][1]["eval_n"] == 10


def test_reproduce_rezende_flows_with_patience_keeps_the_best_validation_epoch(tmp_path):
    """--patience scores the validation split after every epoch, keeps the best parameters and
    says which epoch they are from; the amortized planar flow runs through the same command."""
    rng = np.random.default_rng(2)
    for split, n in (("train", 60), ("valid", 30), ("test", 20)):
        B = (rng.random((n, 784)) < 0.2).astype(np.uint8)
        (tmp_path / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, r)) for r in B) + "\n")
    results = tmp_path / "RESULTS.md"
    r = run("reproduce", "rezende-flows", "--data", str(tmp_path), "--epochs", "3", "--patience", "2", "--flows",
            "planar:2:amortized", "--eval-samples", "4", "--eval-limit", "5", "--out", str(tmp_path / "out"),
            "--results", str(results), "--threads", "1", "--lr", "3e-4")
    assert r.returncode == 0, r.stderr
    assert "valid -ELBO" in r.stdout
    row = json.loads((tmp_path / "out" / "result-planar2amortized.json").read_text())
    val = row["val_elbo"]
    assert len(val) == row["epochs_run"] and row["best_epoch"] == int(np.argmax(val)) + 1
    m = vaec.load(tmp_path / "out" / "model-planar2amortized.vaec")
    assert m.flow == "planar:2:amortized" and "encoder.flow.weight" in m.params
    assert f"best {row['best_epoch']})" in results.read_text() and "--lr 0.0003" in results.read_text()
    assert row["lr"] == 3e-4 and "Adam lr 0.0003" in r.stdout


def test_reproduce_rezende_flows_resumes_where_it_was_cut_off(tmp_path):
    """A second start with the same --out reuses finished posteriors; a posterior cut off
    mid-training continues from its checkpoint and ends with the parameters of a run that
    was never interrupted."""
    rng = np.random.default_rng(1)
    for split, n in (("train", 60), ("test", 20)):
        B = (rng.random((n, 784)) < 0.2).astype(np.uint8)
        (tmp_path / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, r)) for r in B) + "\n")

    def go(out, epochs, results):
        r = run("reproduce", "rezende-flows", "--data", str(tmp_path), "--epochs", str(epochs), "--flows", "planar:2",
                "--eval-samples", "4", "--eval-limit", "5", "--out", str(tmp_path / out), "--results",
                str(tmp_path / results), "--threads", "1")
        assert r.returncode == 0, r.stderr
        return r

    go("straight", 2, "a.md")
    go("cut", 1, "b.md")
    # as if the 2-epoch run had been stopped after epoch 1: its checkpoint is there, no result yet
    (tmp_path / "cut" / "result-planar2.json").unlink()
    r = go("cut", 2, "b.md")
    trained = [line.split("epoch")[1].split()[0] for line in r.stdout.splitlines() if "] epoch" in line]
    assert trained == ["2"], r.stdout   # only the epoch the cut-off run had not done
    a = vaec.load(tmp_path / "straight" / "model-planar2.vaec")
    b = vaec.load(tmp_path / "cut" / "model-planar2.vaec")
    assert a.params.keys() == b.params.keys()
    assert all(np.array_equal(a.params[k], b.params[k]) for k in a.params)
    r = go("cut", 2, "b.md")
    assert "done before" in r.stdout
    rows = [line for line in (tmp_path / "b.md").read_text().splitlines() if line.startswith("| 2")]
    assert len(rows) == 2   # the cut-off 1-epoch row and the finished one; the third start added none


def test_reproduce_conv_flows_rows_and_resume(tmp_path):
    """One row per posterior and one for the MLP trained for the plain conv VAE's time; a
    second run finds the finished models and trains nothing again."""
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("test", 12)):
        B = (rng.random((n, 784)) < 0.2).astype(np.uint8)
        (tmp_path / f"binarized_mnist_{split}.amat").write_text("\n".join(" ".join(map(str, r)) for r in B) + "\n")
    results = tmp_path / "RESULTS.md"
    args = ("reproduce", "conv-flows", "--data", str(tmp_path), "--epochs", "1", "--flows", "none,realnvp:2",
            "--eval-samples", "4", "--eval-limit", "6", "--out", str(tmp_path / "out"), "--results", str(results),
            "--quiet", "--threads", "1")
    r = run(*args)
    assert r.returncode == 0, r.stderr
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 2")]
    assert [row.split("|")[2].strip() for row in rows] == ["conv diagonal Gaussian", "MLP 784-400-400-32, same time",
                                                            "conv realnvp:2"]
    res = json.loads((tmp_path / "out" / "result.json").read_text())["rows"]
    assert res[2]["flow"] == "realnvp:2" and res[0]["eval_n"] == 6 and res[0]["rec"] < 0 < res[0]["nll"]
    m = vaec.load(tmp_path / "out" / "model-conv-realnvp2.vaec")
    assert m.flow == "realnvp:2" and isinstance(m.encoder[2], vaec.layers.MaxPool2d)
    r2 = run(*args)
    assert r2.returncode == 0 and r2.stdout.count("done before") == 3


@pytest.mark.slow
def test_reproduce_wake_sleep_records_curves(tmp_path):
    results = tmp_path / "RESULTS.md"
    r = run("reproduce", "kingma-wake-sleep", "--datasets", "mnist", "--latents", "2", "--examples", "1",
            "--out", str(tmp_path / "out"), "--results", str(results), "--threads", "1")
    assert r.returncode == 0, r.stderr
    curves = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert set(curves["mnist"]["2"]) == {"aevb", "wake-sleep"}
    assert "| mnist | 2 |" in results.read_text()
    bad = run("reproduce", "kingma-wake-sleep", "--datasets", "mnist", "--latents", "x", "--out", str(tmp_path / "o2"),
              "--results", str(results))
    assert bad.returncode == 2 and "--latents" in bad.stderr


def test_reproduce_mcem_records_curves_and_resumes(tmp_path):
    results = tmp_path / "RESULTS.md"
    args = ("reproduce", "kingma-mcem", "--train-sizes", "100", "--examples", "600", "--lrs", "0.02,0.1",
            "--pilot-examples", "100", "--eval-limit", "20", "--hmc-samples", "10", "--points", "2",
            "--out", str(tmp_path / "out"), "--results", str(results), "--threads", "1")
    r = run(*args)
    assert r.returncode == 0, r.stderr
    curves = json.loads((tmp_path / "out" / "curves.json").read_text())
    assert set(curves["100"]) == {"aevb", "wake-sleep", "mcem"}
    for algo, c in curves["100"].items():
        assert c["examples"] == [100, 600] and c["lr"] in (0.02, 0.1) and set(c["pilot"]) == {"0.02", "0.1"}, algo
        assert all(-800 < v < 0 for v in c["train_ll"] + c["test_ll"]) and all(0.5 < a <= 1 for a in c["accept"])
    assert (tmp_path / "out" / "fig3.png").exists()
    rows = [line for line in results.read_text().splitlines() if line.startswith("| 2")]
    assert [row.split("|")[3].strip() for row in rows] == ["AEVB", "wake-sleep", "MCEM"]
    assert all("python -m vaec reproduce kingma-mcem --examples 600" in row for row in rows)
    # a second call finds every run done: no training, no estimate
    r2 = run(*args)
    assert r2.returncode == 0 and "examples: log p(x)" not in r2.stdout and "pilot" not in r2.stdout
    bad = run("reproduce", "kingma-mcem", "--train-sizes", "1000,x", "--out", str(tmp_path / "o2"), "--results",
              str(results))
    assert bad.returncode == 2 and "--train-sizes" in bad.stderr


def test_reproduce_runs_and_records_its_result(tmp_path):
    results = tmp_path / "RESULTS.md"
    r = run("reproduce", "burda-iwae", "--epochs", "1", "--k", "2", "--eval-samples", "20", "--eval-limit", "30",
            "--out", str(tmp_path / "out"), "--results", str(results), "--quiet", "--threads", "2")
    assert r.returncode == 0, r.stderr
    assert "test -log p(x) (IS k=20)" in r.stdout and "no published figure for k=2" in r.stdout
    text = results.read_text()
    rows = [l for l in text.splitlines() if l.startswith("| 20")]
    assert len(rows) == 1 and "burda-iwae (k=2)" in rows[0] and "python -m vaec reproduce burda-iwae" in rows[0]
    header = next(l for l in text.splitlines() if l.startswith("| date"))
    assert rows[0].count(" | ") == header.count(" | ")   # the row fills the table's columns
    assert (tmp_path / "out" / "model.vaec").exists() and (tmp_path / "out" / "result.json").exists()


@pytest.mark.slow
def test_bench_quick_prints_the_table(tmp_path):
    r = run("bench", "--quick", "--vs", "none", "--threads", "1", "--write", str(tmp_path / "PERF.md"))
    assert r.returncode == 0, r.stderr
    assert "measured FP32 FMA peak" in r.stdout and "| training ex/s, batch 100 |" in r.stdout
    assert "| training ex/s, batch 100 |" in (tmp_path / "PERF.md").read_text()


@pytest.mark.slow
@pytest.mark.parametrize("compile_torch,threads", [(True, 1), (False, 1), (False, 2)])
def test_bench_table_rows_fill_its_columns_with_and_without_torch_compile(compile_torch, threads):
    pytest.importorskip("torch")
    from vaec import bench
    lines = bench.run(threads=threads, batches=(20,), conv_batches=(20,), quick=True, out=lambda *_: None,
                      compile_torch=compile_torch, gemm_batches=())
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1, table
    # on 2 threads a last column counts the repeats whose round-trip probe found the CPUs far apart
    far = threads > 1
    assert ("vaec / torch.compile" in table[0]) == compile_torch
    assert table[0].count("|") == (9 if compile_torch else 7) + far, table[0]
    row = next(line for line in table if line.startswith("| training ex/s, batch 20 |"))
    if compile_torch:   # the compiled model's rate and the paired ratio are there
        assert row.split("|")[5].strip() not in ("", "—") and "×" in row.split("|")[6]
    if far:   # k of the repeats whose probe measured (3, or fewer on a loaded machine)
        assert re.fullmatch(r" ([0-3] of [1-3]|—) ", row.split("|")[-2]), row
        conv = next(x for x in table if x.startswith("| conv VAE training"))
        assert re.fullmatch(r" ([0-3] of [1-3]|—) ", conv.split("|")[-2]), conv
        if len(os.sched_getaffinity(0)) >= 2:   # two free CPUs: some probe measured
            assert any(x.startswith("cache-line round trip between two threads") for x in lines)


@pytest.mark.parametrize("threads", [1, 2])
def test_bench_gemm_table_has_every_product_of_the_step_and_encode(threads):
    from vaec import bench
    lines = bench.gemm_table(threads, batches=(20,), repeats=1, seconds=0.01)
    table = [line for line in lines if line.startswith("|")]
    assert len({line.count("|") for line in table}) == 1
    # on 2 threads a last column counts the repeats whose round-trip probe found the CPUs far apart
    # ("—" when the probe timed nothing: a loaded machine; test_threads tests the probe itself)
    assert table[0].count("|") == 7 + (threads > 1)
    if threads > 1:
        assert all(re.fullmatch(r" ([01] of 1|—) ", line.split("|")[-2]) for line in table[2:]), table
    names = [line.split("|")[1].strip() for line in table[2:]]
    assert names == [f"{p[0]}, 20" for p in bench._step_products(20)] + ["encode (the tanh layer and both heads), 20"]
    for line in table[2:]:   # both sides timed, and a paired ratio
        cells = [c.strip() for c in line.split("|")[1:-1]]
        assert float(cells[2].replace(",", "")) > 0 and float(cells[3].replace(",", "")) > 0 and "×" in cells[4]


def test_bench_ratio_is_the_median_of_paired_ratios():
    from vaec.bench import _paired_ratio
    # the third pair ran in a slow spell on both sides: its ratio is ordinary
    assert _paired_ratio([10, 12, 5], [5, 6, 2.5]) == "2.00× (2.00–2.00)"
    # a ratio of medians would say 11/6 = 1.83; two of the three pairs say 1.67
    assert _paired_ratio([10, 11, 12], [6, 5, 7.2]) == "1.67× (1.67–2.20)"
    assert _paired_ratio([1.0], []) == "—"


@pytest.mark.slow
def test_train_m2_with_labels(tmp_path):
    r = run("train", "--model", "m2", "--labels", "100", "--epochs", "1", "--quiet", "--out", str(tmp_path / "m2"))
    assert r.returncode == 0, r.stderr
    err = float(r.stdout.split("test error ")[1].split("%")[0])
    assert err < 60, "one epoch with 100 labels is well above chance (90%)"
    assert isinstance(vaec.load(tmp_path / "m2" / "model.vaec"), vaec.M2)
    r = run("train", "--model", "m2", "--labels", "15")
    assert r.returncode == 2 and "--labels must be a positive multiple of 10" in r.stderr


def test_no_library_module_imports_the_command_line():
    """Parsing lives in vaec/__main__.py, the commands in vaec/commands.py: no other module
    of the package imports __main__, at its top or inside a function."""
    import ast

    pkg = os.path.dirname(vaec.__file__)
    offenders = []
    for name in sorted(os.listdir(pkg)):
        if not name.endswith(".py") or name == "__main__.py":
            continue
        tree = ast.parse(open(os.path.join(pkg, name)).read())
        for node in ast.walk(tree):
            mods = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                    [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            if any(m in ("__main__", "vaec.__main__") or m.endswith(".__main__") for m in mods):
                offenders.append(f"{name}:{node.lineno}")
    assert not offenders, offenders


def _write_pictures(folder, n, size=(20, 18), colour=True, seed=0):
    from PIL import Image
    folder.mkdir(parents=True, exist_ok=True)
    r = np.random.default_rng(seed)
    for i in range(n):
        a = np.zeros(size + (3,), np.uint8)
        a[r.integers(0, size[0] // 2):, :, r.integers(0, 3)] = 200
        Image.fromarray(a if colour else a[..., 0]).save(folder / f"p{i:02d}.png")


def test_train_a_conv_vae_on_a_folder_of_pictures(tmp_path):
    pytest.importorskip("PIL")
    _write_pictures(tmp_path / "pics", 30)
    out = tmp_path / "run"
    r = run("train", "--arch", "conv", "--dataset", "images", "--images", str(tmp_path / "pics"), "--size", "16", "12",
            "--mode", "RGB", "--epochs", "2", "--latent", "4", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    m = vaec.load(out / "model.vaec")
    assert m.input_shape == (3, 16, 12) and m.likelihood == "gaussian" and m.encoder[0] == vaec.layers.Conv2d(32, 4, 2, 1)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"]["arch"] == "conv" and metrics["model"]["input_shape"] == [3, 16, 12]
    r2 = run("sample", str(out / "model.vaec"), "--n", "4", "--out", str(tmp_path / "s.png"))
    assert r2.returncode == 0, r2.stderr
    r3 = run("train", "--dataset", "images", "--images", str(tmp_path / "nothing"), "--out", str(tmp_path / "x"))
    assert r3.returncode == 2 and "not a folder" in r3.stderr


def test_train_conv_on_mnist(tmp_path):
    out = tmp_path / "run"
    r = run("train", "--arch", "conv", "--epochs", "1", "--limit", "300", "--latent", "4", "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr
    m = vaec.load(out / "model.vaec")
    assert m.input_shape == (1, 28, 28) and m.decoder[-1].out_channels == 1

