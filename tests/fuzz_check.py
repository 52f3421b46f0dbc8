"""A differential fuzzer of `xent check`: right code must pass, wrong code must fail.

Each seed makes a random case: softmax (labels or soft targets) or binary cross-entropy, k from
2 to 300, --weight, --pos-weight, --ignore-index, --label-smoothing, --dtype, --method and
sometimes --hessian, inputs from --random or a file of hard cases (logits of scale 1 to 3,000,
near-ties at the top, -inf masked classes, ignored labels, confident samples). The code under
test is xent's own gradient, an --expr, or a .py file written for the case: a RIGHT gradient or
loss (plain NumPy closed forms in float64 or float32, or torch autograd when torch is there),
which must exit 0, or a WRONG gradient from a list of realistic bugs, which must exit 1 (NaN
from an overflowing softmax may also be refused, exit 2).

A wrong gradient whose every entry lies within the check's own tolerance of the right one (the
fuzzer's float64 oracle) cannot be caught by design: it is counted apart, not as a miss.

Not part of the suite (minutes for hundreds of cases).

    python tests/fuzz_check.py 0 500 [--subprocess N] [--table] [--log FILE]

prints one line per disagreement, then counts per method, precision and scale; --subprocess N
runs every N-th case as a real `python -m xent_cli check` process too (default 25); --log
writes each seed's outcome on a line, to compare two versions of xent seed by seed.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import traceback
from collections import Counter, defaultdict

import numpy as np
from typer.testing import CliRunner

from xent_cli.cli import app

try:
    import torch  # noqa: F401  (a second oracle, where installed)
    HAVE_TORCH = True
except ImportError:
    HAVE_TORCH = False

runner = CliRunner(env={"COLUMNS": "100", "NO_COLOR": "1", "TERM": "dumb"})

CE_BUGS = ("case1", "sign", "noshift", "label_shift", "weights_ignored", "mean_by_n",
           "smoothing_ignored", "ignored_kept", "scaled", "float16")
BCE_BUGS = ("sign", "noshift", "weights_ignored", "pos_weight_ignored", "mean_by_nk",
            "positives_only", "softmax", "scaled", "float16")
SCALES = (1.0, 30.0, 100.0, 1000.0, 3000.0)


# --- the user's file ------------------------------------------------------------------------

USER_FILE = '''
import numpy as np

LOSS = {loss!r}
WEIGHT = {weight!r}
POS_WEIGHT = {pos_weight!r}
SMOOTHING = {smoothing!r}
IGNORE = {ignore!r}
PREC = np.{prec}
BUG = {bug!r}


def _cast(z):
    return z if np.iscomplexobj(z) else np.asarray(z).astype(PREC)


def _out(g):
    """g in PREC; complex (the complex step through a gradient, --hessian) kept complex."""
    return g if np.iscomplexobj(g) else g.astype(PREC)


def _ce_coefficients(y, k, weight=WEIGHT, smoothing=SMOOTHING, shift=0):
    """a of loss = -sum_c a_c log p_c, as PyTorch weighs it."""
    w = np.ones(k) if weight is None else np.asarray(weight, dtype=np.float64)
    if y.ndim == 1:
        keep = y != IGNORE
        t = np.zeros((len(y), k))
        t[np.flatnonzero(keep), (y[keep] + shift) % k] = 1.0
    else:
        keep = np.ones(len(y), dtype=bool)
        t = np.asarray(y, dtype=np.float64)
    return w * ((1 - smoothing) * t + smoothing / k) * keep[:, None]


def _softmax(z, shift=True):
    m = np.max(z.real, axis=1, keepdims=True) if shift else 0
    e = np.exp(z - m)
    return e / e.sum(axis=1, keepdims=True)


def _sigmoid_pair(z):
    """sigma(z), sigma(-z) without overflow, complex-safe."""
    upper = z.real >= 0
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.exp(np.where(upper, -z, z))
    return np.where(upper, 1 / (1 + e), e / (1 + e)), np.where(upper, e / (1 + e), 1 / (1 + e))


def _bce_ab(y, k, weight=WEIGHT, pos_weight=POS_WEIGHT):
    w = np.ones(k) if weight is None else np.asarray(weight, dtype=np.float64)
    pw = np.ones(k) if pos_weight is None else np.asarray(pos_weight, dtype=np.float64)
    t = np.asarray(y, dtype=np.float64)
    return w * pw * t, w * (1 - t)


def right_grad(z, y):
    z = _cast(z)
    k = z.shape[1]
    with np.errstate(under="ignore"):
        if LOSS == "bce":
            a, b = _bce_ab(y, k)
            s, s_neg = _sigmoid_pair(z)
            return _out(b * s - a * s_neg)
        a = _ce_coefficients(y, k)
        return _out(a.sum(axis=1, keepdims=True) * _softmax(z) - a)


def right_loss(z, y):
    z = _cast(z)
    k = z.shape[1]
    with np.errstate(over="ignore", invalid="ignore", under="ignore"):
        if LOSS == "bce":
            a, b = (x.astype(PREC) for x in _bce_ab(y, k))
            upper = z.real >= 0
            log_term = np.log1p(np.exp(np.where(upper, -z, z)))
            softplus = np.where(upper, z, 0) + log_term
            softplus_neg = np.where(upper, 0, -z) + log_term
            return (a * softplus_neg + b * softplus).sum(axis=1)
        a = _ce_coefficients(y, k).astype(PREC)
        m = np.max(z.real, axis=1, keepdims=True)
        lse = m + np.log(np.exp(z - m).sum(axis=1, keepdims=True))
        return np.where(a > 0, a * (lse - np.where(a > 0, z, 0)), 0).sum(axis=1)


def torch_grad(z, y):
    import torch
    import torch.nn.functional as F
    dt = torch.float32 if PREC == np.float32 else torch.float64
    zt = torch.tensor(np.asarray(z), dtype=dt, requires_grad=True)
    kw = {{}}
    if WEIGHT is not None:
        kw["weight"] = torch.tensor(WEIGHT, dtype=dt)
    if LOSS == "bce":
        if POS_WEIGHT is not None:
            kw["pos_weight"] = torch.tensor(POS_WEIGHT, dtype=dt)
        out = F.binary_cross_entropy_with_logits(zt, torch.tensor(y, dtype=dt), reduction="none",
                                                 **kw).sum()
    else:
        target = (torch.tensor(y, dtype=torch.int64) if np.ndim(y) == 1
                  else torch.tensor(y, dtype=dt))
        if np.ndim(y) == 1:
            kw["ignore_index"] = IGNORE
        out = F.cross_entropy(zt, target, reduction="sum", label_smoothing=SMOOTHING, **kw)
    out.backward()
    return zt.grad.numpy()


def wrong_grad(z, y):
    z = _cast(z)
    k, n = z.shape[1], z.shape[0]
    g = right_grad(z, y)
    with np.errstate(all="ignore"):
        if BUG == "sign":
            return -g
        if BUG == "scaled":
            return _out(g * 1.01)
        if BUG == "float16":
            return (g if np.iscomplexobj(g) else g.astype(np.float16))
        if LOSS == "bce":
            a, b = _bce_ab(y, k)
            if BUG == "noshift":
                e = np.exp(z)
                s = e / (1 + e)
                return _out(b * s - a * (1 - s))
            if BUG == "weights_ignored":
                a, b = _bce_ab(y, k, weight=None)
            elif BUG == "pos_weight_ignored":
                a, b = _bce_ab(y, k, pos_weight=None)
            elif BUG == "mean_by_nk":
                return _out(g / (n * k))
            elif BUG == "positives_only":
                return _out(np.where(np.asarray(y) > 0, g, 0))
            elif BUG == "softmax":
                return _out(_softmax(z) - np.asarray(y))
            s, s_neg = _sigmoid_pair(z)
            return _out(b * s - a * s_neg)
        a = _ce_coefficients(y, k)
        p = _softmax(z)
        if BUG == "case1":
            # the right entry at the label, 0 off it (the seed's Case 1)
            return _out(np.where(_ce_coefficients(y, k, smoothing=0) > 0, g, 0))
        if BUG == "noshift":
            p = _softmax(z, shift=False)
        elif BUG == "label_shift":
            a = _ce_coefficients(y, k, shift=1)
        elif BUG == "weights_ignored":
            a = _ce_coefficients(y, k, weight=None)
        elif BUG == "mean_by_n":
            return _out(g / n)
        elif BUG == "smoothing_ignored":
            a = _ce_coefficients(y, k, smoothing=0)
        elif BUG == "ignored_kept" and np.ndim(y) == 1:
            ignored = np.flatnonzero(y == IGNORE)
            g = g.copy()
            g[ignored] = p[ignored]
            labels = y[ignored]
            inside = (labels >= -k) & (labels < k)
            g[ignored[inside], labels[inside] % k] -= 1
            return _out(g)
        return _out(a.sum(axis=1, keepdims=True) * p - a)
'''


# --- random cases ---------------------------------------------------------------------------

def make_case(seed):
    """Returns the random case of a seed: arrays, options and the code under test."""
    rng = np.random.default_rng(seed)
    c = {"seed": seed}
    c["loss"] = "bce" if rng.random() < 0.3 else "ce"
    k = int(rng.choice([2, 2, 3, 4, 5, 7, 10, 33, 100, 300]))
    n = int(rng.integers(1, 6)) if k >= 100 else int(rng.integers(1, 25))
    c["n"], c["k"] = n, k
    c["scale"] = float(rng.choice(SCALES))
    c["method"] = str(rng.choice(["central", "central", "complex", "richardson"]))
    c["dtype"] = "float32" if rng.random() < 0.35 else "float64"
    # the code's own precision: float32 also under --dtype float64 (a gradient that comes back so)
    c["prec"] = "float32" if c["dtype"] == "float32" or rng.random() < 0.15 else "float64"
    c["hessian"] = bool(rng.random() < 0.12 and n * k * k <= 20000)
    c["input"] = "random" if rng.random() < 0.3 else "file"
    if c["loss"] == "ce":
        c["kind"] = "soft" if c["input"] == "file" and rng.random() < 0.15 else "labels"
        c["smoothing"] = float(rng.choice([0.0, 0.0, 0.1, 0.37]))
        c["ignore"] = -100 if rng.random() < 0.7 else int(rng.choice([-1, 0, k - 1]))
    else:
        c["kind"], c["smoothing"], c["ignore"] = "targets", 0.0, -100
    if rng.random() < 0.4:
        w = rng.choice([0.0, 0.5, 1.0, 2.0, 3.25], size=k) if rng.random() < 0.5 else \
            0.2 + rng.random(k) * 3
        c["weight"] = [float(v) for v in w]
    c["pos_weight"] = ([float(v) for v in 0.1 + rng.random(k) * 4]
                       if c["loss"] == "bce" and rng.random() < 0.4 else None)
    edges = []
    if c["input"] == "file":
        s = c["scale"]
        z = s * rng.standard_normal((n, k))
        if rng.random() < 0.35:  # near-ties at the top: the two largest a hair apart
            top = z.max(axis=1)
            z[:, 0] = top + float(rng.choice([0.0, 1e-3, 0.5]))
            edges.append("ties")
        if rng.random() < 0.25:  # confident samples: one logit far above the rest
            z[rng.random(n) < 0.5, int(rng.integers(0, k))] += 3 * s
            edges.append("confident")
        if rng.random() < 0.3:
            z = np.round(z)
        if c["kind"] == "labels":
            y = rng.integers(0, k, size=n)
            if rng.random() < 0.35:
                y[rng.random(n) < 0.4] = c["ignore"]
                edges.append("ignored")
            c["y"] = y
        elif c["kind"] == "soft":
            c["t"] = rng.dirichlet([float(rng.choice([0.1, 1.0]))] * k, size=n)
        else:
            c["t"] = ((rng.random((n, k)) < 0.4).astype(float) if rng.random() < 0.6
                      else rng.random((n, k)))
        # -inf masks a class no target weighs: softmax labels, unsmoothed
        if c["kind"] == "labels" and c["smoothing"] == 0 and k > 2 and rng.random() < 0.2:
            mask = rng.random((n, k)) < 0.3
            mask[np.arange(n), np.clip(c["y"], 0, k - 1)] = False
            mask[np.arange(n), (np.clip(c["y"], 0, k - 1) + 1) % k] = False
            z[mask] = -np.inf
            edges.append("masked")
        c["z"] = z
        c["fmt"] = str(rng.choice(["npy", "csv", "npz"]))
    else:
        c["scale"] = 1.0  # --random draws 2·N(0, 1)
        c["seed_arg"] = int(rng.integers(0, 1000))
    c["edge"] = ",".join(edges) or None
    # the code under test
    roll = rng.random()
    if roll < 0.12:
        c["code"] = "xent"
    elif roll < 0.18:
        c["code"] = "expr"
    elif roll < 0.40:
        c["code"] = "grad"
    elif roll < 0.52:
        c["code"] = "loss"
    elif roll < 0.58:
        c["code"] = "torch"
    else:
        c["code"] = "wrong"
        c["bug"] = str(rng.choice(applicable_bugs(c)))
    if c["method"] == "complex" and c["code"] == "torch":
        c["code"] = "grad"
    # drawn last, so that the seeds before it drew the same cases
    c["directional"] = bool(rng.random() < 0.1 and not c["hessian"])
    return c


def applicable_bugs(c):
    """Returns the bugs that can show in the case: weights ignored needs weights, and so on."""
    bugs = list(BCE_BUGS if c["loss"] == "bce" else CE_BUGS)
    limit = 88.7 if c["prec"] == "float32" else 709.8  # where exp overflows
    z = c.get("z")
    if z is None or not (np.abs(z[np.isfinite(z)]) > limit).any():
        bugs.remove("noshift")
    if not c.get("weight") or len(set(c["weight"])) == 1:
        bugs.remove("weights_ignored")
    if c["loss"] == "bce":
        if not c.get("pos_weight"):
            bugs.remove("pos_weight_ignored")
        return bugs
    if c["kind"] != "labels":
        bugs.remove("case1")
        bugs.remove("label_shift")
    if not c["smoothing"]:
        bugs.remove("smoothing_ignored")
    labels = c.get("y")
    if labels is None or not (labels == c["ignore"]).any():
        bugs.remove("ignored_kept")
    return bugs


def case_text(c):
    keys = ("loss", "input", "n", "k", "scale", "edge", "kind", "code", "bug", "method", "dtype",
            "prec", "hessian", "directional", "smoothing", "ignore")
    text = " ".join(f"{key}={c.get(key)!r}" for key in keys if c.get(key) is not None)
    return text + (" weight" if c.get("weight") else "") + \
        (" pos_weight" if c.get("pos_weight") else "")


# --- files and argv -------------------------------------------------------------------------

def write_inputs(c, d):
    """Returns the argv of the inputs: a file of the case's logits, or --random."""
    if c["input"] == "random":
        return ["--random", str(c["n"]), "--k", str(c["k"]), "--seed", str(c["seed_arg"])]
    z, fmt = c["z"], c["fmt"]
    side = c.get("y") if c["kind"] == "labels" else c["t"]
    if fmt == "npz":
        np.savez(os.path.join(d, "z.npz"), logits=z,
                 **({"labels": side} if c["kind"] == "labels" else {"targets": side}))
        return [os.path.join(d, "z.npz")]
    if fmt == "npy":
        np.save(os.path.join(d, "z.npy"), z)
        argv = [os.path.join(d, "z.npy")]
    else:
        with open(os.path.join(d, "z.csv"), "w") as f:
            f.write(",".join(f"z{j}" for j in range(c["k"])) + "\n")
            for row in z:
                f.write(",".join("-inf" if v == -np.inf else repr(float(v)) for v in row) + "\n")
        argv = [os.path.join(d, "z.csv")]
    if c["kind"] == "labels":
        np.save(os.path.join(d, "y.npy"), side)
        return argv + ["--labels", os.path.join(d, "y.npy")]
    np.save(os.path.join(d, "t.npy"), side)
    return argv + ["--targets", os.path.join(d, "t.npy")]


def argv_of(c, d):
    """Returns the whole argv of the case's check, its user file written to d."""
    argv = ["check", *write_inputs(c, d), "--method", c["method"], "--dtype", c["dtype"],
            "--format", "json"]
    if c["loss"] == "bce":
        argv += ["--loss", "bce"]
    if c.get("weight"):
        argv += ["--weight", ",".join(repr(w) for w in c["weight"])]
    if c.get("pos_weight"):
        argv += ["--pos-weight", ",".join(repr(w) for w in c["pos_weight"])]
    if c["loss"] == "ce":
        if c["smoothing"]:
            argv += ["--label-smoothing", repr(c["smoothing"])]
        if c["ignore"] != -100:
            argv += ["--ignore-index", str(c["ignore"])]
    if c["hessian"]:
        argv += ["--hessian"]
    if c["directional"]:
        argv += ["--directional"]  # v drawn from --seed: a file's case sets it, random's has it
        if c["input"] == "file":
            argv += ["--seed", str(c["seed"])]
    path = os.path.join(d, f"user_{c['seed']}.py")
    with open(path, "w") as f:
        f.write(USER_FILE.format(loss=c["loss"], weight=c.get("weight"),
                                 pos_weight=c.get("pos_weight"), smoothing=c["smoothing"],
                                 ignore=c["ignore"], prec=c["prec"], bug=c.get("bug")))
    code = c["code"]
    if code == "expr":
        argv += ["--expr", "p - y"]
    elif code == "grad":
        argv += ["--grad-fn", f"{path}:right_grad"]
    elif code == "torch":
        argv += ["--grad-fn", f"{path}:torch_grad"]
    elif code == "loss":
        argv += ["--loss-fn", f"{path}:right_loss"]
    elif code == "wrong":
        argv += ["--grad-fn", f"{path}:wrong_grad"]
    return argv, path


# --- the oracle -----------------------------------------------------------------------------

def inputs_of(c):
    """Returns z and y as xent passes them to the user's code (for a --random case, drawn as
    gradcheck.random_problem draws them)."""
    if c["input"] == "random":
        rng = np.random.default_rng(c["seed_arg"])
        z = 2.0 * rng.standard_normal((c["n"], c["k"]))
        if c["loss"] == "bce":
            return z, rng.integers(0, 2, size=(c["n"], c["k"])).astype(np.float64)
        return z, rng.integers(0, c["k"], size=c["n"])
    return c["z"], (c["y"] if c["kind"] == "labels" else c["t"])


def load_user(path):
    namespace = {}
    exec(compile(open(path).read(), path, "exec"), namespace)  # the fuzzer's own file
    return namespace


def bug_effect(c, path, report):
    """Says whether the wrong gradient is beyond the check's tolerance of the right one
    (float64 oracle) somewhere: 'beyond', 'within' (no check can see it), 'within round-off'
    (beyond atol + rtol·|right|, within it and the report's largest round-off allowance),
    or 'nonfinite'."""
    user = load_user(path)
    z, y = inputs_of(c)
    zc = z.astype(np.float32) if c["dtype"] == "float32" else z
    with np.errstate(all="ignore"):
        wrong = np.asarray(user["wrong_grad"](zc, y), dtype=np.float64)
    user64 = dict(user)
    exec("PREC = np.float64", user64)
    with np.errstate(all="ignore"):
        right = np.asarray(user64["right_grad"](z, y), dtype=np.float64)
    if not np.isfinite(wrong).all():
        return "nonfinite"
    allowed = report["atol"] + report["rtol"] * np.abs(right)
    if not (np.abs(wrong - right) > allowed).any():
        return "within"
    roundoff = report.get("max_roundoff") or 0.0
    return "beyond" if (np.abs(wrong - right) > allowed + roundoff).any() else "within round-off"


# --- running --------------------------------------------------------------------------------

def run_case(c, d, subprocess_too=False):
    """Returns (exit code, JSON report or None, output) of the case's check."""
    argv, path = argv_of(c, d)
    result = runner.invoke(app, argv)
    if subprocess_too:
        proc = subprocess.run([sys.executable, "-m", "xent_cli", *argv], capture_output=True,
                              text=True, cwd=d, timeout=300)
        if proc.returncode != result.exit_code:
            raise AssertionError(f"subprocess exit {proc.returncode}, in process "
                                 f"{result.exit_code}: {proc.stderr[-300:]}")
    report = None
    if result.exit_code in (0, 1):
        try:
            report = json.loads(result.stdout)
        except ValueError:
            pass
    return result.exit_code, report, result.output, path


def worst(report):
    """Returns the failing entry of the report farthest beyond the tolerance, for the line."""
    parts = []
    for name, r in (("gradient", report), ("Hessian", report.get("hessian"))):
        if not r or r.get("passed", r.get("failed") == 0) and not r.get("failed"):
            continue
        if r.get("failed"):
            f = r["failures"][0]
            parts.append(f"{name} {r['failed']} of {r['entries']} failed, first s{f['sample']} "
                         f"c{f['class']} a={f['analytic']:.6g} n={f['numeric']:.6g} "
                         f"(rtol {r['rtol']:g} atol {r['atol']:g})")
        if r.get("nonfinite"):
            parts.append(f"{name}: {r['nonfinite'][:80]}")
        for x in r.get("cross_checks", []):
            if not x["passed"]:
                parts.append(f"{x['first']} vs {x['second']}: {x['note'][:100]}")
    return "; ".join(parts)


def main(argv):
    start, count = int(argv[0]), int(argv[1])
    every = int(argv[argv.index("--subprocess") + 1]) if "--subprocess" in argv else 25
    tally = defaultdict(Counter)
    problems = []
    log = open(argv[argv.index("--log") + 1], "w") if "--log" in argv else None
    skipped = 0
    for seed in range(start, start + count):
        c = make_case(seed)
        if c["code"] == "torch" and not HAVE_TORCH:
            skipped += 1
            continue
        right = c["code"] != "wrong"
        key = (c["method"], c["prec"], c["scale"], c["loss"])
        d = tempfile.mkdtemp(prefix="xent_fuzz_check_")
        try:
            code, report, output, path = run_case(c, d, subprocess_too=seed % every == 0)
            if log:
                log.write(f"{seed} {'right' if right else 'wrong:' + c['bug']} exit {code} "
                          f"{(report or {}).get('failed')} | {case_text(c)}\n")
            if right:
                tally[key]["right"] += 1
                if code != 0:
                    tally[key]["false alarm" if code == 1 else f"right exit {code}"] += 1
                    detail = worst(report) if report else output.strip().splitlines()[-1:]
                    problems.append(f"seed {seed}: right code exit {code}: {detail} | "
                                    f"{case_text(c)}")
            else:
                tally[key]["wrong"] += 1
                if code == 1:
                    tally[key]["caught"] += 1
                elif code == 2 and c["bug"] == "noshift":
                    tally[key]["caught (refused)"] += 1
                elif code == 0:
                    effect = bug_effect(c, path, report)
                    if c["directional"] and effect != "nonfinite":
                        # one direction per sample: a wrong row it is nearly orthogonal to passes
                        tally[key]["miss (directional)"] += 1
                    elif effect == "within":
                        tally[key]["miss within tolerance"] += 1
                        tally["bug", c["bug"]]["within tolerance"] += 1
                    elif effect == "within round-off":
                        tally[key]["miss within round-off"] += 1
                        problems.append(f"seed {seed}: wrong gradient ({c['bug']}) passed within "
                                        f"the round-off allowance | {case_text(c)}")
                    else:
                        tally[key]["MISS"] += 1
                        problems.append(f"seed {seed}: wrong gradient ({c['bug']}, {effect}) "
                                        f"passed | {case_text(c)}")
                else:
                    tally[key][f"wrong exit {code}"] += 1
                    problems.append(f"seed {seed}: wrong gradient ({c['bug']}) exit {code}: "
                                    f"{output.strip().splitlines()[-1:]} | {case_text(c)}")
        except Exception:
            problems.append(f"seed {seed}: fuzzer error {traceback.format_exc(limit=3)} | "
                            f"{case_text(c)}")
        finally:
            shutil.rmtree(d, ignore_errors=True)
    for line in problems:
        print(line)
    if "--table" in argv:
        print_table(tally)
    totals = Counter()
    for key, counts in tally.items():
        if key[0] != "bug":
            totals.update(counts)
    print(f"{len(problems)} disagreements in {count} cases ({skipped} torch cases skipped); "
          + ", ".join(f"{name} {totals[name]}" for name in sorted(totals)))


def print_table(tally):
    """Prints the counts per method, precision, scale and loss."""
    names = sorted({name for key, counts in tally.items() if key[0] != "bug" for name in counts})
    print("method      prec    scale  loss | " + " | ".join(names))
    for key in sorted(k for k in tally if k[0] != "bug"):
        counts = tally[key]
        method, prec, scale, loss = key
        print(f"{method:<11} {prec:<7} {scale:>5g}  {loss:<4} | "
              + " | ".join(f"{counts[name]:>{len(name)}}" for name in names))
    for key in sorted(k for k in tally if k[0] == "bug"):
        print(f"bug {key[1]}: {dict(tally[key])}")


if __name__ == "__main__":
    main(sys.argv[1:])
