"""A differential fuzzer: `xent eval`, run as a user runs it, against PyTorch.

Each seed makes a random case: softmax (labels or soft targets) or binary cross-entropy, k from
1 to 1000, edge cases (ties, ±1e300, -inf masked classes, ignored samples, zero weights, targets
off 1), every option (--weight, --pos-weight, --ignore-index, --label-smoothing, --reduction,
--dtype), an input format (CSV, TSV, stdin, .npy, .npz, .parquet, with every kind of --labels or
--targets file, float16/float32 arrays, int8 labels) and an --output (.csv, .tsv, .npy,
.parquet, with a random --columns). The JSON summary, the worked sample and every output column
are compared with torch in float64 (or float32), the gradient with .backward() on the reduced
loss. Where torch gives NaN or inf, xent must refuse (exit 2), but for a masked class that no
target weighs, where xent's 0 log 0 = 0 is documented; a refusal where torch is finite is a
disagreement. With --stream the case runs again through tiny chunks and blocks, the fast CSV
readers forced: the --output bytes must not change, nor the summary but its last bit.

Not part of the suite (torch, and minutes for thousands of cases); test_eval.py runs a few seeds.

    python tests/fuzz_eval_torch.py 0 2000 [--stream] [--subprocess]

prints one line per disagreement, then how many there were.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import traceback

import numpy as np
import polars as pl
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from xent_cli import losses, stream
from xent_cli.cli import app

runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})
DEFAULTS = {name: getattr(stream, name) for name in
            ("FAST_CSV_BYTES", "BLOCK_BYTES", "CHUNK_ROWS", "CHUNK_LOGITS", "PARQUET_ROWS",
             "WIDE_CSV_COLUMNS")}
DEFAULT_BLOCK_LOGITS = losses.BLOCK_LOGITS
DEFAULT_THREADED_LOGITS = losses.THREADED_LOGITS
PROBLEMS = []


def problem(seed, what, case):
    """Records a disagreement, with the case that shows it."""
    PROBLEMS.append(f"seed {seed}: {what} | {case_text(case)}")


def case_text(c):
    """Returns the case's options in one line (its arrays: make_case(seed) again)."""
    keys = ("loss", "fmt", "compressed", "fortran", "zstore", "ystore", "n", "k", "kind", "weight",
            "pos_weight", "ignore_index", "eps", "reduction", "dtype", "out", "columns", "edge")
    return " ".join(f"{key}={c.get(key)!r}" for key in keys if c.get(key) is not None)


# --- random cases ---------------------------------------------------------------------------

def make_case(seed):
    """Returns the random case of a seed: its arrays, options, input format and output."""
    rng = np.random.default_rng(seed)
    c = {"seed": seed}
    c["loss"] = "bce" if rng.random() < 0.25 else "ce"
    ks = [2, 2, 3, 4, 5, 7, 12, 33]
    if c["loss"] == "bce":
        ks = [1] + ks
    k = int(rng.choice(ks)) if rng.random() > 0.04 else 1000
    n = int(rng.integers(1, 5)) if k == 1000 else int(rng.integers(1, 26))
    c["n"], c["k"] = n, k
    scale = float(rng.choice([0.5, 3, 30]))
    z = rng.normal(scale=scale, size=(n, k))
    edges = []
    if rng.random() < 0.2:  # ties for the argmax
        z = np.round(z / scale)
        edges.append("ties")
    if rng.random() < 0.1:
        z[rng.random((n, k)) < 0.3] = rng.choice([1e300, -1e300])
        edges.append("huge")
    if rng.random() < 0.08:
        z = np.round(z, 2)
        edges.append("rounded")
    c["kind"] = "soft" if c["loss"] == "bce" else ("soft" if rng.random() < 0.3 else "labels")
    if c["kind"] == "labels":
        c["ignore_index"] = -100 if rng.random() < 0.6 else int(rng.choice([-1, 0, k - 1, 5]))
        y = rng.integers(0, k, size=n)
        if rng.random() < 0.4:
            frac = rng.choice([0.2, 0.5, 1.0])
            y[rng.random(n) < frac] = c["ignore_index"]
            edges.append("ignored")
        c["y"] = y
    elif c["loss"] == "ce":
        alpha = float(rng.choice([0.1, 1, 10]))
        t = rng.dirichlet([alpha] * k, size=n)
        if rng.random() < 0.3:
            t[rng.random((n, k)) < 0.3] = 0
            sums = t.sum(axis=1, keepdims=True)
            t = np.where(sums > 0, t / np.where(sums > 0, sums, 1), 1.0 / k)
        if rng.random() < 0.15:  # a target off 1, within or beyond the tolerance
            t[0] *= float(rng.choice([1 + 1e-9, 1 + 3e-7, 0.9, 1.2]))
            edges.append("offsum")
        if rng.random() < 0.1:
            t = np.eye(k)[rng.integers(0, k, n)]
            edges.append("onehot")
        c["t"] = t
    else:
        if rng.random() < 0.5:
            t = (rng.random((n, k)) < 0.4).astype(float)
        else:
            t = rng.random((n, k))
        c["t"] = t
    if rng.random() < 0.12 and k >= 2:  # masked classes
        mask = rng.random((n, k)) < 0.3
        mask[np.arange(n), rng.integers(0, k, n)] = False  # one finite logit a row at least
        if c["kind"] == "labels" and rng.random() < 0.7:
            mask[np.arange(n), np.clip(c["y"], 0, k - 1)] = False
        z[mask] = -np.inf
        edges.append("masked")
    c["z"] = z
    if rng.random() < 0.5:
        w = (rng.choice([0.0, 0.5, 1.0, 2.0, 3.25], size=k) if rng.random() < 0.5
             else rng.random(k) * 3)
        if rng.random() < 0.1:
            w[:] = 0
            edges.append("zero-weights")
        c["weight"] = [float(v) for v in w]
    if c["loss"] == "bce" and rng.random() < 0.5:
        c["pos_weight"] = [float(v) for v in rng.random(k) * 4]
    c["eps"] = 0.0 if c["loss"] == "bce" else float(rng.choice([0.0, 0.0, 0.1, 0.37, 1.0]))
    c["reduction"] = str(rng.choice(["mean", "sum", "none"]))
    c["dtype"] = "float32" if rng.random() < 0.15 else "float64"
    if c["kind"] == "labels":
        c["fmt"] = str(rng.choice(["csv", "tsv", "csv+labels.csv", "csv+labels.npy",
                                   "npy+labels.npy",
                                   "npy+labels.csv", "npz", "parquet", "parquet+labels.parquet",
                                   "stdin", "npy+labels.parquet", "csv+labels.npz",
                                   "stdin+labels.csv", "parquet+labels.npy", "tsv+labels.csv"]))
    else:
        c["fmt"] = str(rng.choice(["csv+targets.csv", "npy+targets.npy", "npz",
                                   "parquet+targets.parquet",
                                   "csv+targets.parquet", "stdin+targets.csv", "npy+targets.csv",
                                   "parquet+targets.npy", "csv+targets.npz", "tsv+targets.csv"]))
    if rng.random() < 0.7:
        c["out"] = str(rng.choice([".csv", ".npy", ".parquet", ".tsv"]))
        if c["out"] == ".parquet" and 2 * k + 5 > 2048:
            c["out"] = ".npy"
        if rng.random() < 0.5:
            names = ["sample", "line", "label", "pred", "loss", "prob", "grad"]
            if c["kind"] != "labels":
                names.remove("label")
            if c["loss"] == "bce":
                names.remove("pred")
            chosen = [x for x in names if rng.random() < 0.5] or ["grad"]
            c["columns"] = ",".join(chosen)
    c["format"] = str(rng.choice(["json", "json", "json", "csv", "rich"]))
    c["zstore"] = str(rng.choice(["float64", "float64", "float32", "float16"]))
    if c["zstore"] != "float64":
        if (np.abs(z[np.isfinite(z)]) > 6e4).any() or k == 1000:
            c["zstore"] = "float64"
        else:
            c["z"] = z.astype(c["zstore"]).astype(np.float64)
    if c["kind"] == "labels":
        stores = ["int64", "int32", "float64"]
        if k < 100 and -128 <= c["ignore_index"]:
            stores.append("int8")
        if (c["y"] >= 0).all() and k < 200:
            stores.append("uint8")
        c["ystore"] = str(rng.choice(stores))
    # where and under what name the label column stands, line ends, a labels file's header
    c["label_name"] = "y" if rng.random() < 0.2 else "label"
    c["label_at"] = int(rng.integers(0, k + 1))
    c["crlf"] = bool(rng.random() < 0.2)
    c["labels_header"] = bool(rng.random() < 0.7)
    # array layouts: np.savez_compressed, Fortran order, Parquet row groups
    c["compressed"] = bool(rng.random() < 0.3)
    c["fortran"] = bool(rng.random() < 0.2)
    c["row_group"] = int(rng.choice([3, 1 << 20]))
    c["edge"] = ",".join(edges) or None
    c["stream"] = rng.random() < 0.5
    return c


# --- files ----------------------------------------------------------------------------------

def cell(v):
    """Returns a logit as CSV text: the shortest round-trip digits, -inf as such."""
    if v == -np.inf:
        return "-inf"
    return repr(float(v))


def write_csv(path, columns, sep=",", end="\n", header=True):
    """Writes named columns as CSV text."""
    names = list(columns)
    rows = zip(*[columns[name] for name in names])
    with open(path, "w", newline="") as f:
        if header:
            f.write(sep.join(names) + end)
        for row in rows:
            f.write(sep.join(cell(v) if isinstance(v, float) else str(v) for v in row) + end)


def logit_columns(z):
    """Returns the logits as columns z0, z1, ..."""
    return {f"z{c}": [float(v) for v in z[:, c]] for c in range(z.shape[1])}


def write_inputs(c, d):
    """Returns (argv for the input, stdin text or None, line numbers of the rows)."""
    z, k = c["z"], c["k"]
    fmt = c["fmt"]
    base, _, side = fmt.partition("+")
    lines = np.arange(c["n"])
    stdin = None
    label_cols = {"label": [int(v) for v in c["y"]]} if c["kind"] == "labels" else None
    argv = []
    savez = np.savez_compressed if c["compressed"] else np.savez
    layout = np.asfortranarray if c["fortran"] else np.ascontiguousarray
    stored = (lambda a: layout(a.astype(c["zstore"])))  # noqa: E731
    parquet = (lambda frame, path: frame.write_parquet(path, row_group_size=c["row_group"]))  # noqa

    def with_label(cols, labels):  # the label column at its place, under its name
        items = list(cols.items())
        items.insert(c["label_at"], (c["label_name"], labels))
        return dict(items)

    if c["label_name"] != "label" and c["kind"] == "labels" and not side and base != "npz":
        argv_tail = ["--label-col", c["label_name"]]
    else:
        argv_tail = []
    if base in ("csv", "tsv", "stdin"):
        sep = "\t" if base == "tsv" else ","
        cols = logit_columns(z)
        if not side:
            cols = with_label(cols, label_cols["label"])
        path = os.path.join(d, f"z.{'tsv' if base == 'tsv' else 'csv'}")
        write_csv(path, cols, sep, "\r\n" if c["crlf"] else "\n")
        lines = lines + 2
        if base == "stdin":
            stdin = open(path, newline="").read()
            argv = ["-"]
        else:
            argv = [path]
    elif base == "npy":
        path = os.path.join(d, "z.npy")
        np.save(path, stored(z))
        argv = [path]
    elif base == "npz":
        path = os.path.join(d, "z.npz")
        if c["kind"] == "labels":
            savez(path, logits=stored(z), labels=c["y"].astype(c["ystore"]))
        else:
            savez(path, logits=stored(z), targets=layout(c["t"]))
        argv = [path]
    elif base == "parquet":
        path = os.path.join(d, "z.parquet")
        cols = {name: np.asarray(v).astype(c["zstore"]) for name, v in logit_columns(z).items()}
        if not side:
            cols = with_label(cols, c["y"].astype(c["ystore"]))
        parquet(pl.DataFrame(cols), path)
        argv = [path]
    if side:
        what, ext = side.split(".")
        spath = os.path.join(d, f"{what[0]}.{ext}")
        if what == "labels":
            if ext == "csv":
                write_csv(spath, label_cols, header=c["labels_header"])
            elif ext == "npy":
                np.save(spath, c["y"].astype(c["ystore"]))
            elif ext == "npz":
                savez(spath, labels=c["y"].astype(c["ystore"]))
            elif ext == "parquet":
                parquet(pl.DataFrame({"label": c["y"].astype(c["ystore"])}), spath)
            argv += ["--labels", spath]
        else:
            t = c["t"]
            tcols = {f"t{j}": [float(v) for v in t[:, j]] for j in range(k)}
            if ext == "csv":
                write_csv(spath, tcols)
            elif ext == "npy":
                np.save(spath, layout(t))
            elif ext == "parquet":
                parquet(pl.DataFrame(tcols), spath)
            elif ext == "npz":
                savez(spath, targets=layout(t))
            argv += ["--targets", spath]
    return argv + argv_tail, stdin, lines


# --- torch ----------------------------------------------------------------------------------

def torch_result(c, z):
    """Returns (reduced, per-sample (N,) or (N,k) elements, grad, probs) in c's dtype."""
    tdt = torch.float64 if c["dtype"] == "float64" else torch.float32
    zt = torch.tensor(z, dtype=tdt, requires_grad=True)
    kw = {}
    if c.get("weight") is not None:
        kw["weight"] = torch.tensor(c["weight"], dtype=tdt)
    if c["loss"] == "bce":
        if c.get("pos_weight") is not None:
            kw["pos_weight"] = torch.tensor(c["pos_weight"], dtype=tdt)
        t = torch.tensor(c["t"], dtype=tdt)
        fn = lambda red: F.binary_cross_entropy_with_logits(zt, t, reduction=red, **kw)  # noqa
        probs = torch.sigmoid(zt)
    else:
        if c["kind"] == "labels":
            target = torch.tensor(c["y"], dtype=torch.int64)
            kw["ignore_index"] = c["ignore_index"]
        else:
            target = torch.tensor(c["t"], dtype=tdt)
        kw["label_smoothing"] = c["eps"]
        fn = lambda red: F.cross_entropy(zt, target, reduction=red, **kw)  # noqa
        probs = torch.softmax(zt, dim=1)
    out = fn(c["reduction"])
    (out.sum() if c["reduction"] == "none" else out).backward()
    grad = zt.grad.detach().numpy().copy()
    none = fn("none").detach().numpy()
    mean = fn("mean").detach().numpy()
    return {"reduced": out.detach().numpy(), "none": none, "grad": grad,
            "probs": probs.detach().numpy(), "mean": float(mean),
            "sum": float(fn("sum").detach().numpy())}


def unmasked(z):
    """-inf replaced by a finite logit whose exp underflows to 0 beside its row's maximum."""
    z = z.copy()
    for row in z:
        finite = row[np.isfinite(row)]
        top = finite.max()
        row[np.isneginf(row)] = top - 1e4 * max(1.0, abs(top))
    return z


def masked_has_weight(c):
    """Whether a masked class carries a positive coefficient (the loss is truly infinite)."""
    z, k = c["z"], c["k"]
    w = np.array(c.get("weight") or [1.0] * k)
    masked = np.isneginf(z)
    if c["loss"] == "bce":
        return True  # a -inf logit is refused: torch gives NaN
    if c["kind"] == "labels":
        y = c["y"]
        counted = y != c["ignore_index"]
        a = np.zeros_like(z)
        yy = np.where(counted, y, 0)
        a[np.arange(len(y)), yy] += (1 - c["eps"]) * w[yy]
        a += c["eps"] / k * w
        a[~counted] = 0
    else:
        a = w * (c["t"] * (1 - c["eps"]) + c["eps"] / k)
    return bool((a[masked] > 0).any())


# --- running --------------------------------------------------------------------------------

def run_cli(c, d, argv, stdin, subprocess_run=False):
    """Runs xent eval on the case; returns (exit code, stdout, stderr, --output path), the
    exit code -1 for a traceback."""
    args = ["eval", *argv, "--format", c["format"], "--reduction", c["reduction"],
            "--dtype", c["dtype"], "--show", "1"]
    if c["loss"] == "bce":
        args += ["--loss", "bce"]
    if c.get("weight") is not None:
        args += ["--weight", ",".join(repr(w) for w in c["weight"])]
    if c.get("pos_weight") is not None:
        args += ["--pos-weight", ",".join(repr(w) for w in c["pos_weight"])]
    if c["kind"] == "labels" and c["ignore_index"] != -100:
        args += ["--ignore-index", str(c["ignore_index"])]
    if c["eps"]:
        args += ["--label-smoothing", repr(c["eps"])]
    out = None
    if c.get("out"):
        out = os.path.join(d, "out" + c["out"])
        args += ["--output", out]
        if c.get("columns"):
            args += ["--columns", c["columns"]]
    if subprocess_run:
        p = subprocess.run([sys.executable, "-m", "xent_cli", *args], input=stdin, text=True,
                           capture_output=True, env={**os.environ, "NO_COLOR": "1"})
        return p.returncode, p.stdout, p.stderr, out
    r = runner.invoke(app, args, input=stdin)
    if r.exception and not isinstance(r.exception, SystemExit):
        tb = "".join(traceback.format_exception(r.exception))
        return -1, r.stdout, tb, out
    return r.exit_code, r.stdout, r.stderr, out


def read_output(path):
    """Returns the --output file's columns by name, prob and grad as prob_0, prob_1, ..."""
    if path.endswith(".npy"):
        a = np.load(path)
        cols = {}
        for name in a.dtype.names:
            v = a[name]
            if v.ndim == 2:
                for j in range(v.shape[1]):
                    cols[f"{name}_{j}"] = v[:, j]
            else:
                cols[name] = v
        return cols
    if path.endswith(".parquet"):
        df = pl.read_parquet(path)
    else:
        df = pl.read_csv(path, separator="\t" if path.endswith(".tsv") else ",",
                         infer_schema_length=None)
    return {name: df[name].to_numpy() for name in df.columns}


def close(got, want, rtol, atol):
    """Whether got is want within atol + rtol |want|, the same infinities and NaNs."""
    got, want = np.asarray(got, dtype=np.float64), np.asarray(want, dtype=np.float64)
    if got.shape != want.shape:
        return False
    same_inf = (got == want) | (np.isnan(got) & np.isnan(want))
    return bool((same_inf | (np.abs(got - want) <= atol + rtol * np.abs(want))).all())


def check_case(c, subprocess_run=False):
    """Runs a case and records where xent disagrees with torch."""
    seed = c["seed"]
    d = tempfile.mkdtemp(prefix="xf")
    try:
        argv, stdin, lines = write_inputs(c, d)
        code, stdout, stderr, out = run_cli(c, d, argv, stdin, subprocess_run)
        if code == -1:
            problem(seed, "TRACEBACK " + stderr.strip().splitlines()[-1], c)
            return None
        # torch's verdict
        with np.errstate(all="ignore"):
            ref = torch_result(c, c["z"])
        fin = (np.isfinite(ref["reduced"]).all() and np.isfinite(ref["grad"]).all()
               and np.isfinite(ref["none"]).all())
        expect_ok = fin
        masked = np.isneginf(c["z"]).any()
        if not fin and masked and not masked_has_weight(c):
            ref = torch_result(c, unmasked(c["z"]))  # the documented 0 log 0 = 0
            expect_ok = (np.isfinite(ref["reduced"]).all() and np.isfinite(ref["grad"]).all())
        offsum = c["kind"] == "soft" and c["loss"] == "ce" and (
            np.abs(c["t"].sum(axis=1) - 1) > losses.SOFT_TARGET_TOLERANCE * c["k"]).any()
        if offsum:
            expect_ok = False
        if c["dtype"] == "float32" and (np.abs(c["z"][np.isfinite(c["z"])]) > 3.4e38).any():
            expect_ok = False  # documented: a logit beyond float32 is refused
        if code != 0:
            if expect_ok:
                msg = stderr.strip().splitlines()[-1] if stderr.strip() else stdout[-200:]
                problem(seed, f"xent refused (exit {code}) where torch is finite: {msg}", c)
            return code, stdout, stderr, out
        if not expect_ok:
            problem(seed, f"xent exit 0 where a refusal is due (targets off 1: {offsum})", c)
            return code, stdout, stderr, out
        compare(c, ref, stdout, out, lines)
        return code, stdout, stderr, out
    finally:
        shutil.rmtree(d, ignore_errors=True)


def tolerances(c):
    """Returns (rtol, atol) for the case's dtype."""
    return (1e-10, 1e-13) if c["dtype"] == "float64" else (2e-4, 1e-6)


def compare(c, ref, stdout, out, lines):
    """Compares xent's summary, worked sample and --output columns with torch's."""
    seed, n, k = c["seed"], c["n"], c["k"]
    rtol, atol = tolerances(c)
    bce = c["loss"] == "bce"
    per_ref = ref["none"].sum(axis=1) if bce else ref["none"]
    mag = max(1.0, float(np.abs(per_ref).max()))
    wmax = max([1.0] + list(c.get("weight") or [])) * max([1.0] + list(c.get("pos_weight") or []))
    # torch's p - 1 cancels: a gradient entry is no closer than that to the exact one (xent's)
    gmag = max(1e-300, float(np.abs(ref["grad"]).max()), (4e-3 if rtol < 1e-6 else 0.25) * wmax)
    if c["format"] in ("json", "csv"):
        s = json.loads(stdout) if c["format"] == "json" else summary_row(stdout)
        if s["n"] != n or s["k"] != k:
            problem(seed, f"n/k {s['n']},{s['k']}", c)
        if c["reduction"] == "none" and c["format"] == "csv":
            if s["loss"] is not None:
                problem(seed, f"csv: loss {s['loss']!r} for reduction 'none'", c)
        elif c["reduction"] == "none":
            want = ref["none"].tolist() if bce else ref["none"]
            if not close(s["loss"], want, rtol, atol * mag):
                problem(seed, f"json none loss {s['loss'][:3]} vs {np.asarray(want)[:3]}", c)
        elif not close(s["loss"], ref["reduced"], rtol, atol * mag):
            problem(seed, f"json loss {s['loss']!r} vs torch {float(ref['reduced'])!r}", c)
        if not close(s["loss_sum"], ref["sum"], rtol, atol * mag):
            problem(seed, f"loss_sum {s['loss_sum']!r} vs {ref['sum']!r}", c)
        if s["loss_mean"] is not None or math.isfinite(ref["mean"]):
            if s["loss_mean"] is None or not close(s["loss_mean"], ref["mean"], rtol, atol * mag):
                problem(seed, f"loss_mean {s['loss_mean']!r} vs torch mean {ref['mean']!r}", c)
        z = c["z"]
        if bce:
            right = (z > 0) == (c["t"] > 0.5)
            em, ham = right.all(axis=1).mean(), (~right).mean()
            if not (math.isclose(s["exact_match"], em) and math.isclose(s["hamming_loss"], ham)):
                problem(seed, f"exact/hamming {s['exact_match']},{s['hamming_loss']} vs "
                              f"{em},{ham}", c)
        else:
            pred = torch.tensor(z).argmax(dim=1).numpy()
            if c["kind"] == "labels":
                counted = c["y"] != c["ignore_index"]
                acc = (pred == c["y"])[counted].mean() if counted.any() else None
            else:
                acc = (pred == c["t"].argmax(axis=1)).mean()
            if (acc is None) != (s["accuracy"] is None) or (
                    acc is not None and not math.isclose(s["accuracy"], acc)):
                problem(seed, f"accuracy {s['accuracy']} vs {acc}", c)
            if c["kind"] == "labels" and math.isfinite(ref["mean"]) and ref["mean"] < 700:
                tolerance = max(rtol, 1e-12) * max(1, ref["mean"])
                if s["perplexity"] is None or not math.isclose(
                        s["perplexity"], math.exp(ref["mean"]), rel_tol=tolerance):
                    problem(seed, f"perplexity {s['perplexity']} vs {math.exp(ref['mean'])}", c)
            if c["kind"] == "labels" and s["ignored"] != int((c["y"] == c["ignore_index"]).sum()):
                problem(seed, f"ignored {s['ignored']}", c)
    if c["format"] == "rich" and k <= 5:
        check_rich(c, ref, stdout)
    if out is None:
        return
    cols = read_output(out)
    wanted = (c.get("columns") or "sample,line,label,pred,loss,prob,grad").split(",")
    if c["kind"] != "labels" and "label" in wanted:
        wanted.remove("label")
    if bce and "pred" in wanted:
        wanted.remove("pred")
    names = []
    for w in ["sample", "line", "label", "pred", "loss", "prob", "grad"]:
        if w in wanted:
            names += [f"{w}_{j}" for j in range(k)] if w in ("prob", "grad") else [w]
    if list(cols) != names:
        problem(seed, f"output columns {list(cols)[:8]} vs {names[:8]}", c)
        return
    if "sample" in cols and not (cols["sample"] == np.arange(n)).all():
        problem(seed, "sample column", c)
    if "line" in cols and not (cols["line"] == lines).all():
        problem(seed, f"line column {cols['line'][:4]} vs {lines[:4]}", c)
    if "label" in cols and not (cols["label"] == c["y"]).all():
        problem(seed, "label column", c)
    if "pred" in cols:
        pred = torch.tensor(c["z"]).argmax(dim=1).numpy()
        if not (cols["pred"] == pred).all():
            problem(seed, f"pred column {cols['pred'][:5]} vs {pred[:5]}", c)
    if "loss" in cols and not close(cols["loss"], per_ref, rtol, atol * mag):
        i = np.argmax(np.abs(cols["loss"] - per_ref))
        problem(seed, f"output loss row {i}: {cols['loss'][i]!r} vs {per_ref[i]!r}", c)
    if "prob_0" in cols:
        p = np.stack([cols[f"prob_{j}"] for j in range(k)], axis=1)
        if not close(p, ref["probs"], rtol, atol):
            problem(seed, f"probs max diff {np.nanmax(np.abs(p - ref['probs']))}", c)
    if "grad_0" in cols:
        g = np.stack([cols[f"grad_{j}"] for j in range(k)], axis=1)
        if not close(g, ref["grad"], rtol, atol * gmag):
            i, j = np.unravel_index(np.nanargmax(np.abs(g - ref["grad"])), g.shape)
            problem(seed, f"grad[{i},{j}] {g[i, j]!r} vs torch {ref['grad'][i, j]!r}", c)


def summary_row(text):
    """Returns --format csv's one row as JSON's values: numbers, None for an empty cell."""
    import csv
    import io

    header, row = list(csv.reader(io.StringIO(text)))

    def value(cell):
        if cell == "":
            return None
        try:
            return int(cell)
        except ValueError:
            try:
                return float(cell)
            except ValueError:
                return cell

    return dict(zip(header, map(value, row)))


def check_rich(c, ref, stdout):
    """The worked sample 0's p and gradient rows, as printed to 6 digits."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("sample 1"):
            break
        cells = [x.strip() for x in line.split("│")]
        if len(cells) > 2 and cells[1] in ("gradient", "p = exp / sum", "σ(z) = 1/(1+e^−z)"):
            rows[cells[1]] = [float(x) for x in cells[2:-1]]
    if "gradient" not in rows:
        problem(c["seed"], "rich: no gradient row", c)
        return
    wmax = max([1.0] + list(c.get("weight") or [])) * max([1.0] + list(c.get("pos_weight") or []))
    if not close(rows["gradient"], ref["grad"][0], 1e-5,
                 (1e-15 if c["dtype"] == "float64" else 1e-6) * wmax):
        problem(c["seed"], f"rich gradient {rows['gradient']} vs {ref['grad'][0]}", c)
    p = rows.get("p = exp / sum", rows.get("σ(z) = 1/(1+e^−z)"))
    if c["dtype"] == "float32":  # the worked steps are float64 arithmetic of the logits
        return
    if p is None or not close(p, ref["probs"][0], 1e-5, 1e-300):
        problem(c["seed"], f"rich p {p} vs {ref['probs'][0]}", c)


# --- streaming: small chunks against the defaults -------------------------------------------

def set_small(rng):
    """Sets tiny chunks, blocks and thread thresholds, and forces the fast CSV readers."""
    stream.FAST_CSV_BYTES = 0
    stream.BLOCK_BYTES = int(rng.choice([16, 64, 200, 1000]))
    stream.CHUNK_ROWS = int(rng.integers(1, 8))
    stream.CHUNK_LOGITS = int(rng.choice([1 << 21, 7, 40]))
    stream.PARQUET_ROWS = int(rng.integers(1, 8))
    stream.WIDE_CSV_COLUMNS = int(rng.choice([0, 1 << 12]))
    losses.BLOCK_LOGITS = int(rng.choice([DEFAULT_BLOCK_LOGITS, 8, 40]))
    losses.THREADED_LOGITS = int(rng.choice([DEFAULT_THREADED_LOGITS, 4, 30]))


def set_defaults():
    """Restores the sizes set_small changed."""
    for name, value in DEFAULTS.items():
        setattr(stream, name, value)
    losses.BLOCK_LOGITS = DEFAULT_BLOCK_LOGITS
    losses.THREADED_LOGITS = DEFAULT_THREADED_LOGITS


def check_stream(c):
    """The same case with tiny chunks and forced fast readers: the same bytes."""
    seed = c["seed"]
    if c["format"] != "json":
        c = {**c, "format": "json"}
    rng = np.random.default_rng(seed + 10**9)
    d = tempfile.mkdtemp(prefix="xs")
    try:
        argv, stdin, _ = write_inputs(c, d)
        results = []
        for small in (False, True):
            if small:
                set_small(rng)
            try:
                code, stdout, stderr, out = run_cli(c, d, argv, stdin)
            finally:
                set_defaults()
            body = open(out, "rb").read() if out and os.path.exists(out) else None
            if code == -1:
                problem(seed, "STREAM TRACEBACK " + stderr.strip().splitlines()[-1], c)
                return
            results.append((code, stdout, stderr.strip().splitlines()[-1:] if code else None, body))
        (c0, s0, e0, b0), (c1, s1, e1, b1) = results
        if c0 != c1 or e0 != e1:
            problem(seed, f"stream: exit {c0} {e0} vs small chunks {c1} {e1}", c)
            return
        if b0 != b1:
            problem(seed, "stream: --output bytes differ with small chunks", c)
        if s0 != s1:
            if c["format"] == "json" and c0 == 0:
                j0, j1 = json.loads(s0), json.loads(s1)
                diff = [key for key in j0 if j0[key] != j1[key] and key != "notes"]
                far = [key for key in diff if not (isinstance(j0[key], float)
                       and abs(j0[key] - j1[key]) <= 2 * math.ulp(j0[key]))]
                if far:
                    pairs = [(j0[x], j1[x]) for x in far]
                    problem(seed, f"stream: json differs in {far}: {pairs[:2]}", c)
            else:
                problem(seed, "stream: stdout differs", c)
    finally:
        shutil.rmtree(d, ignore_errors=True)


def disagreements(seed: int, streamed: bool = False, subprocess_run: bool = False) -> list[str]:
    """Returns what xent and torch (or xent and itself, in tiny chunks) disagree on for a seed."""
    del PROBLEMS[:]
    c = make_case(seed)
    try:
        check_case(c, subprocess_run=subprocess_run)
        if streamed:
            check_stream(c)
    except Exception:
        problem(seed, "FUZZER " + traceback.format_exc().strip().splitlines()[-1], c)
    return list(PROBLEMS)


def main():
    """Runs the seeds of the command line and prints the disagreements."""
    start, stop = int(sys.argv[1]), int(sys.argv[2])
    found = 0
    for seed in range(start, stop):
        for line in disagreements(seed, "--stream" in sys.argv, "--subprocess" in sys.argv):
            print(line, flush=True)
            found += 1
    print(f"done {start}..{stop}: {found} disagreements", flush=True)


if __name__ == "__main__":
    main()
