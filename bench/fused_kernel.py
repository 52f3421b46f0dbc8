"""The experiment behind the summary's verdict: would a compiled loss kernel meet 0.8x Polars?

    python bench/fused_kernel.py            # 825 MB, 9 rounds taking turns (about 1.5 minutes)
    python bench/fused_kernel.py --rows 850000 --rounds 3

Not part of run.py, nor of xent: it needs a C compiler (gcc or cc). It compiles a fused C kernel
of the summary's loss (two passes: row maxima, first argmax, z - max and the label's entry; then
the other classes' sum and the label's exp, with NumPy's exp and log1p between them, the same
IEEE operations in the same order as xent's NumPy kernel, so the same bits), loads it with ctypes
into `xent eval` in place of the NumPy kernel, and times whole processes taking turns: Polars'
own scan, xent's block reader alone (no loss), xent's summary with the NumPy kernel and with the
C kernel. It checks that both summaries print the same JSON. docs/speed.md has its figures.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))

import bench_eval  # noqa: E402  (lives beside this file)

SOURCE = r"""
#include <math.h>
/* Row i of z (strides rs, cs in elements): its maximum's first class into pred, z - max into the
   class-major g (row stride ld), and the label's z - max into label_g. Returns the first row whose
   maximum is not finite (NaN, +inf, all -inf), or -1. */
long shift(const double *z, long rs, long cs, long n, long k, const long *y, double *g, long ld,
           double *label_g, long *pred) {
    long bad = -1;
    for (long i = 0; i < n; i++) {
        const double *row = z + i * rs;
        double top = row[0];
        long first = 0;
        for (long c = 1; c < k; c++)
            if (row[c * cs] > top) { top = row[c * cs]; first = c; }
        if (!isfinite(top) && bad < 0) bad = i;
        for (long c = 0; c < k; c++) g[c * ld + i] = row[c * cs] - top;
        pred[i] = first;
        label_g[i] = row[y[i] * cs] - top;
    }
    return bad;
}
/* e = exp(g), class-major: rest[i] the sum over the classes but the label's, in class order (as
   NumPy adds a class-major block's rows), label_e[i] the label's. */
void sums(const double *e, long n, long k, long ld, const long *y, double *rest, double *label_e) {
    for (long i = 0; i < n; i++) rest[i] = 0.0;
    for (long c = 0; c < k; c++)
        for (long i = 0; i < n; i++) rest[i] += y[i] == c ? 0.0 : e[c * ld + i];
    for (long i = 0; i < n; i++) label_e[i] = e[y[i] * ld + i];
}
"""

# Run as `python -c PATCHED LIBRARY xent ARGS...`: xent eval with the C kernel in place.
PATCHED = (
    "import sys\n"
    f"sys.path.insert(0, {str(HERE)!r})\n"
    "import fused_kernel\n"
    "fused_kernel.install(sys.argv.pop(1))\n"
    "from xent_cli.__main__ import run\n"
    "sys.argv[0] = 'xent'\n"
    "run()\n"
)


def build(directory: str) -> str:
    """Compiles the C kernel into directory; returns the shared library's path."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        raise SystemExit("fused_kernel.py needs a C compiler (gcc or cc)")
    source, library = os.path.join(directory, "fused.c"), os.path.join(directory, "fused.so")
    with open(source, "w") as file:
        file.write(SOURCE)
    subprocess.run([compiler, "-O3", "-march=native", "-shared", "-fPIC", "-o", library, source],
                   check=True)
    return library


def install(library: str) -> None:
    """Puts the C kernel in place of losses._fill_index for a plain float64 summary of k <= 32
    classes (labels, no weights, no ignored samples, no gradient): the bench's case."""
    from xent_cli import losses

    lib = ctypes.CDLL(library)
    P, L = ctypes.c_void_p, ctypes.c_long
    lib.shift.argtypes, lib.shift.restype = [P, L, L, L, L, P, P, L, P, P], L
    lib.sums.argtypes, lib.sums.restype = [P, L, L, L, P, P, P], None
    numpy_kernel = losses._fill_index

    def fill_index(z, y, ignored, weight, scale, grad, per_sample, probs, predictions):
        n, k = z.shape
        if (weight is not None or ignored.any() or grad is not None or probs is not None
                or predictions is None or k > losses.CLASS_MAJOR_MAX_K
                or z.dtype != np.float64 or per_sample.dtype != np.float64):
            return numpy_kernel(z, y, ignored, weight, scale, grad, per_sample, probs, predictions)
        y = y.astype(np.intp)
        rows = max(1, losses.BLOCK_LOGITS // k)
        g = np.empty((k, rows))
        label_g, rest, label_e = np.empty(rows), np.empty(rows), np.empty(rows)
        rs, cs = (stride // z.itemsize for stride in z.strides)
        for start in range(0, n, rows):
            stop = min(start + rows, n)
            count = stop - start
            if lib.shift(z[start:].ctypes.data, rs, cs, count, k, y[start:].ctypes.data,
                         g.ctypes.data, rows, label_g.ctypes.data,
                         predictions[start:].ctypes.data) >= 0:
                # a bad row: the NumPy kernel names it
                return numpy_kernel(z, y, ignored, weight, scale, grad, per_sample, probs,
                                    predictions)
            np.exp(g, out=g)
            lib.sums(g.ctypes.data, count, k, rows, y[start:].ctypes.data, rest.ctypes.data,
                     label_e.ctypes.data)
            out = per_sample[start:stop]
            np.log1p(rest[:count] + (label_e[:count] - 1), out=out)
            out -= label_g[:count]

    losses._fill_index = fill_index


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=8_500_000)
    parser.add_argument("--rounds", type=int, default=9)
    options = parser.parse_args()
    csv = bench_eval.make_csv(bench_eval.DATA / f"logits_{options.rows}.csv", options.rows)
    megabytes = csv.stat().st_size / 1e6
    with tempfile.TemporaryDirectory() as directory:
        library = build(directory)
        summary = ("eval", str(csv), "--show", "0", "--format", "json", "--quiet")
        numpy_json, c_json = (subprocess.run(argv, capture_output=True, check=True).stdout
                              for argv in (bench_eval.xent(*summary),
                                           bench_eval.python(PATCHED, library, *summary)))
        if numpy_json != c_json:
            raise SystemExit("the C kernel's summary differs from the NumPy kernel's")
        runs = {"polars scan_csv streaming": bench_eval.python(bench_eval.POLARS_PARSE, str(csv)),
                "xent block reader alone": bench_eval.python(bench_eval.READER_ONLY, str(csv)),
                "xent summary, NumPy kernel": bench_eval.xent(*summary),
                "xent summary, C kernel": bench_eval.python(PATCHED, library, *summary)}
        figures = median_of(runs, options.rounds)
    polars = figures["polars scan_csv streaming"]["seconds"]
    print(f"{megabytes:.0f} MB, median of {options.rounds} rounds taking turns; the summaries' "
          "JSON is the same")
    for name, figure in figures.items():
        print(f"{name:28s} {figure['seconds']:6.2f} s  CPU {figure['cpu_seconds']:5.2f} s  "
              f"vs Polars {polars / figure['seconds']:.2f}")
    print(f"left for any loss at 0.8x: {polars / 0.8 - figures['xent block reader alone']['seconds']:.2f} s")


def median_of(commands: dict[str, list[str]], rounds: int) -> dict[str, dict]:
    """Returns each command's run of median wall time, the commands taking turns."""
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(rounds):
        for name, argv in commands.items():
            runs[name].append(bench_eval.measure(argv))
    return {name: sorted(figures, key=lambda figure: figure["seconds"])[len(figures) // 2]
            for name, figures in runs.items()}


if __name__ == "__main__":
    main()
