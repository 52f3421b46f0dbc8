"""Times `xent eval` as whole processes against a plain parser, numpy.loadtxt and start-up,
beside two references that bound what it can reach: its block reader with no loss computed,
and Polars parsing the file and writing float columns as CSV.

Every figure is a whole process (start-up included) timed with wall-clock, its peak RSS read
from getrusage(RUSAGE_CHILDREN) in a fresh wrapper process. Data goes to bench/data/ (ignored
by git): a large CSV of N x 10 logits plus a label column, and one a tenth of its size.
"""

from __future__ import annotations

import json
import pathlib
import subprocess
import sys
import time

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
DATA = HERE / "data"
K = 10

# A child that runs a command and prints its wall time, the peak RSS of its children (KiB) and
# their CPU time (user + system), which the load of a shared machine moves far less than wall time.
WRAPPER = (
    "import resource, subprocess, sys, time\n"
    "start = time.perf_counter()\n"
    "code = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL).returncode\n"
    "seconds = time.perf_counter() - start\n"
    "usage = resource.getrusage(resource.RUSAGE_CHILDREN)\n"
    "print(seconds, usage.ru_maxrss, code, usage.ru_utime + usage.ru_stime)\n"
)

# The fastest plain parser we found, run as a whole process: Polars parsing every cell and
# summing each column (so nothing is skipped), streaming in batches.
POLARS_PARSE = (
    "import sys, polars as pl\n"
    "pl.scan_csv(sys.argv[1], schema_overrides={'label': pl.Float64})"
    ".select(pl.all().sum()).collect(engine='streaming')\n"
)
PANDAS_PARSE = (
    "import sys, pandas as pd\n"
    "for part in pd.read_csv(sys.argv[1], engine='c', dtype='float64', chunksize=1 << 18):\n"
    "    part.sum()\n"
)
# References that bound what xent can reach: xent's own block reader with nothing computed (the
# summary's ceiling: the parse, checks and copies, no loss), and Polars parsing the file and
# writing as many full-precision float columns as CSV (what --output .csv costs at the least).
READER_ONLY = (
    "import os, sys\n"
    "os.environ.setdefault('OPENBLAS_NUM_THREADS', '1')  # as xent eval does\n"
    "from xent_cli import stream\n"
    "print(sum(len(chunk.data.lines) for chunk in stream.open_source(sys.argv[1]).chunks()))\n"
)
POLARS_WRITE_CSV = (
    "import sys, polars as pl\n"
    "pl.scan_csv(sys.argv[1], schema_overrides={'label': pl.Float64})"
    ".select(pl.all() / 3).sink_csv(sys.argv[2])\n"
)
# The straightforward route a notebook takes: numpy.loadtxt, then a stable NumPy loss and grad.
LOADTXT_LOSS = (
    "import sys, numpy as np\n"
    "table = np.loadtxt(sys.argv[1], delimiter=',', skiprows=1)\n"
    "z, y = table[:, :-1], table[:, -1].astype(np.int64)\n"
    "shifted = z - z.max(axis=1, keepdims=True)\n"
    "log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))\n"
    "loss = -log_p[np.arange(len(y)), y].mean()\n"
    "grad = np.exp(log_p)\n"
    "grad[np.arange(len(y)), y] -= 1\n"
    "grad /= len(y)\n"
    "print(loss)\n"
)


def make_csv(path: pathlib.Path, rows: int, seed: int = 0) -> pathlib.Path:
    """Writes rows x K logits (6 decimals) and a label column, in blocks, unless it exists."""
    if path.exists():
        return path
    import polars as pl

    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    temporary = path.with_suffix(".tmp")
    with open(temporary, "wb") as file:
        done = 0
        while done < rows:
            count = min(1 << 20, rows - done)
            z = rng.normal(scale=2.0, size=(count, K))
            frame = pl.DataFrame({**{f"z{c}": z[:, c] for c in range(K)},
                                  "label": rng.integers(0, K, count)})
            file.write(frame.write_csv(include_header=done == 0, float_precision=6).encode())
            done += count
    temporary.replace(path)
    return path


def make_arrays(csv: pathlib.Path) -> dict[str, list[str]]:
    """Writes the CSV's data as Parquet, float32 .npy logits with .npy labels, and an .npz,
    unless they exist; returns each one's arguments to xent eval."""
    import polars as pl

    stem = DATA / csv.stem
    parquet, logits, labels, npz = (stem.with_suffix(".parquet"), DATA / f"{csv.stem}_z32.npy",
                                    DATA / f"{csv.stem}_y.npy", stem.with_suffix(".npz"))
    if not parquet.exists():
        pl.scan_csv(csv).sink_parquet(parquet)
    if not (logits.exists() and labels.exists() and npz.exists()):
        frame = pl.read_parquet(parquet)
        z, y = frame.drop("label").to_numpy(), frame["label"].to_numpy()
        np.save(logits, z.astype(np.float32))
        np.save(labels, y)
        np.savez(npz, logits=z, labels=y)
    return {".parquet": [str(parquet)], ".npy float32 logits, .npy labels":
            [str(logits), "--labels", str(labels)], ".npz (np.savez)": [str(npz)]}


def make_masked(csv: pathlib.Path, every: int = 50_000) -> dict[str, list[str]]:
    """Writes the CSV with a masked class, z1 = -inf, on every every-th row whose label is not
    1 (a block of 8 MB holds some 86,000 rows: most blocks hold one), unless it exists; returns
    its arguments to xent eval. Without Polars' parse standing for -inf, each such block went to
    the strict reader, and the whole file had before."""
    masked = DATA / f"{csv.stem}_masked.csv"
    if not masked.exists():
        with open(csv) as source, open(masked.with_suffix(".tmp"), "w") as out:
            out.write(source.readline())
            for number, line in enumerate(source, 1):
                cells = line.split(",")
                if number % every == 0 and cells[-1].strip() != "1":
                    cells[1] = "-inf"
                    line = ",".join(cells)
                out.write(line)
        masked.with_suffix(".tmp").rename(masked)
    return {f"CSV, a masked class (-inf) every {every:,} rows": [str(masked)]}


def make_wide(quick: bool) -> dict[str, list[str]]:
    """Writes inputs of many classes, unless they exist: a language model's float16 logits over
    a vocabulary of 50,257 as .npy with .npy labels, and 1000 classes as a float32 Parquet table
    (one row group, as Polars writes so few rows); returns each one's arguments to xent eval."""
    import polars as pl

    DATA.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)
    tokens, images = (400, 5_000) if quick else (4_000, 50_000)
    vocabulary, labels = DATA / f"vocab_{tokens}x50257_f16.npy", DATA / f"vocab_{tokens}_y.npy"
    if not (vocabulary.exists() and labels.exists()):
        z = np.lib.format.open_memmap(vocabulary.with_suffix(".tmp"), mode="w+",
                                      dtype=np.float16, shape=(tokens, 50_257))
        for start in range(0, tokens, 500):
            z[start:start + 500] = rng.normal(scale=3.0, size=(len(z[start:start + 500]), 50_257))
        z.flush()
        del z
        np.save(labels, rng.integers(0, 50_257, tokens))
        vocabulary.with_suffix(".tmp").replace(vocabulary)
    table = DATA / f"classes_{images}x1000.parquet"
    if not table.exists():
        z = rng.normal(scale=3.0, size=(images, 1000)).astype(np.float32)
        pl.DataFrame({**{f"z{c}": z[:, c] for c in range(1000)},
                      "label": rng.integers(0, 1000, images)}).write_parquet(table)
    return {f"{tokens} x 50,257 float16 .npy logits, .npy labels":
            [str(vocabulary), "--labels", str(labels)],
            f"{images} x 1000 float32 .parquet": [str(table)]}


def measure(argv: list[str], remove: pathlib.Path | None = None) -> dict:
    """Returns the wall time and the peak RSS (MB) of one run of a command as a whole process.

    remove is a file the command writes: deleted before the run (so no run pays for freeing
    the last one's pages) and after it.
    """
    if remove is not None:
        remove.unlink(missing_ok=True)
    out = subprocess.run([sys.executable, "-c", WRAPPER, *argv], capture_output=True,
                         text=True, check=True).stdout.split()
    written = None
    if remove is not None:
        written = remove.stat().st_size / 1e6 if remove.exists() else 0.0
        remove.unlink(missing_ok=True)
    seconds, rss_kib, code, cpu = float(out[0]), int(out[1]), int(out[2]), float(out[3])
    if code != 0:
        raise RuntimeError(f"{' '.join(argv)} exited {code}")
    return {"seconds": seconds, "peak_mb": rss_kib / 1024, "cpu_seconds": cpu, "written_mb": written}


def best_of(commands: dict[str, list[str]], repeat: int = 3,
            removes: dict[str, pathlib.Path] | None = None) -> dict[str, dict]:
    """Returns each command's best run of repeat, the commands taking turns round by round,
    with the largest peak RSS of its runs (the fastest run's own varies by 10% either way).

    Taking turns spreads the load of a shared machine over every command alike, so the ratios
    between them hold better than their times.
    """
    runs: dict[str, list[dict]] = {name: [] for name in commands}
    for _ in range(repeat):
        for name, argv in commands.items():
            runs[name].append(measure(argv, (removes or {}).get(name)))
    return {name: {**min(figures, key=lambda figure: figure["seconds"]),
                   "peak_mb": max(figure["peak_mb"] for figure in figures)}
            for name, figures in runs.items()}


def xent(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "xent_cli", *arguments]


def python(code: str, *arguments: str) -> list[str]:
    return [sys.executable, "-c", code, *arguments]


def _has(module: str) -> bool:
    return subprocess.run([sys.executable, "-c", f"import {module}"],
                          capture_output=True).returncode == 0


def run(quick: bool = False, repeat: int = 3) -> list[dict]:
    """Runs every eval comparison, best of repeat; returns rows with figures, ratios and targets."""
    big_rows = 850_000 if quick else 8_500_000
    big = make_csv(DATA / f"logits_{big_rows}.csv", big_rows)
    small = make_csv(DATA / f"logits_{big_rows // 10}.csv", big_rows // 10, seed=1)
    tiny = DATA / "logits_3.csv"
    tiny.write_text("z0,z1,z2,label\n1,2,3,0\n0.5,0.1,-1,1\n2,2,2,2\n")
    megabytes = big.stat().st_size / 1e6
    small_megabytes = small.stat().st_size / 1e6
    rows = []

    def add(name, figure, baseline_name=None, baseline=None, ratio=None, target=None, note=""):
        rows.append({"name": name, **figure, "baseline": baseline_name,
                     "baseline_seconds": None if baseline is None else baseline["seconds"],
                     "ratio": ratio, "target": target, "note": note})

    # The parsers and xent on the big file, taking turns; the fastest parser is the reference.
    # --output of the per-sample loss and gradient (the target) in each format with the
    # default reduction, 'mean' (its divisor is read first from the labels alone), .npy with
    # 'sum' for comparison, and .npy with every column (probabilities, prediction, line...).
    big_runs = {"polars scan_csv streaming": python(POLARS_PARSE, str(big))}
    if _has("pandas"):
        big_runs["pandas read_csv C chunks"] = python(PANDAS_PARSE, str(big))
    big_runs["xent"] = xent("eval", str(big), "--show", "0", "--format", "json", "--quiet")
    big_runs["reader"] = python(READER_ONLY, str(big))
    removes = {"polars csv": DATA / "polars_written.csv"}
    big_runs["polars csv"] = python(POLARS_WRITE_CSV, str(big), str(removes["polars csv"]))
    outputs = {}
    for suffix, reduction, columns in ((".npy", "mean", "loss,grad"), (".npy", "sum", "loss,grad"),
                                       (".parquet", "mean", "loss,grad"),
                                       (".csv", "mean", "loss,grad"), (".npy", "mean", None)):
        name = f"--output {suffix} {reduction}" + (f" --columns {columns}" if columns else "")
        removes[name] = DATA / f"per_sample{suffix}"
        big_runs[name] = xent("eval", str(big), "--show", "0", "--quiet", "--reduction", reduction,
                              "--output", str(removes[name]),
                              *(("--columns", columns) if columns else ()))
        outputs[name] = 0.5 if columns else None  # every column: for reference
    figures = best_of(big_runs, repeat, removes)
    summary, reader, polars_csv = figures.pop("xent"), figures.pop("reader"), figures.pop("polars csv")
    written = {name: figures.pop(name) for name in outputs}
    parser_name = min(figures, key=lambda name: figures[name]["seconds"])
    parser = figures[parser_name]
    for name, figure in figures.items():
        add(f"{name} ({megabytes:.0f} MB)", figure, note=f"{megabytes / figure['seconds']:.0f} MB/s")
    add(f"xent eval summary ({megabytes:.0f} MB)", summary, parser_name, parser,
        parser["seconds"] / summary["seconds"], 0.8,
        f"{megabytes / summary['seconds']:.0f} MB/s; CPU s {summary['cpu_seconds']:.2f} vs "
        f"{parser['cpu_seconds']:.2f}, ratio {parser['cpu_seconds'] / summary['cpu_seconds']:.2f}")
    add(f"xent block reader alone, no loss ({megabytes:.0f} MB)", reader, parser_name, parser,
        parser["seconds"] / reader["seconds"],
        note=f"the summary's ceiling; CPU ratio {parser['cpu_seconds'] / reader['cpu_seconds']:.2f}")
    add(f"polars scan_csv -> sink_csv, 11 float columns ({megabytes:.0f} MB)", polars_csv,
        parser_name, parser, parser["seconds"] / polars_csv["seconds"],
        note=f"writes {polars_csv['written_mb']:.0f} MB: --output .csv's floor")
    for name, figure in written.items():
        add(f"xent eval {name} ({megabytes:.0f} MB)", figure, parser_name, parser,
            parser["seconds"] / figure["seconds"], outputs[name],
            f"{megabytes / figure['seconds']:.0f} MB/s in, writes {figure['written_mb']:.0f} MB; "
            f"CPU ratio {parser['cpu_seconds'] / figure['cpu_seconds']:.2f}"
            + (f"; {polars_csv['seconds'] / figure['seconds']:.2f}x Polars' own parse and CSV write"
               if ".csv" in name else ""))

    # The same data with masked classes, and in the array formats, for reference: each is read
    # in bounded memory (a memory map's pages are let go as its chunks are done, else they would
    # count in the RSS). And inputs of many classes, whose chunks hold fewer rows (as many
    # logits): bounded memory whatever k. For reference too.
    inputs = {**make_masked(big), **make_arrays(big), **make_wide(quick)}
    arrays = {name: xent("eval", *arguments, "--show", "0", "--format", "json", "--quiet")
              for name, arguments in inputs.items()}
    for name, figure in best_of(arrays, repeat).items():
        logits = pathlib.Path(inputs[name][0])
        add(f"xent eval summary, {name}", figure, note=f"logits file {logits.stat().st_size / 1e6:.0f} MB")

    # On the small file: the RSS reference and numpy.loadtxt (a tenth of the speed, so compared
    # in MB/s).
    small_runs = {"summary": xent("eval", str(small), "--show", "0", "--format", "json", "--quiet"),
                  "loadtxt": python(LOADTXT_LOSS, str(small))}
    figures = best_of(small_runs, repeat)
    small_summary = figures["summary"]
    add(f"xent eval summary ({small_megabytes:.0f} MB)", small_summary,
        note=f"peak RSS ratio big/small {summary['peak_mb'] / small_summary['peak_mb']:.2f} "
             f"(target <= 1.2); big <= 300 MB: {'met' if summary['peak_mb'] <= 300 else 'MISSED'}")
    loadtxt = figures["loadtxt"]
    add(f"numpy.loadtxt + loss ({small_megabytes:.0f} MB)", loadtxt,
        note=f"{small_megabytes / loadtxt['seconds']:.0f} MB/s")
    ratio = (megabytes / summary["seconds"]) / (small_megabytes / loadtxt["seconds"])
    add("xent eval vs loadtxt (MB/s)", summary, "numpy.loadtxt + loss", loadtxt, ratio, 3.0)

    figures = best_of({"help": xent("--help"), "imports": python("import typer, rich")}, 5)
    add("xent --help", figures["help"], "python -c 'import typer, rich'", figures["imports"],
        figures["imports"]["seconds"] * 2 / figures["help"]["seconds"], 1.0,
        "ratio = 2x baseline / xent")
    figures = best_of({"eval": xent("eval", str(tiny)), "imports": python("import numpy, typer, rich")}, 5)
    add("xent eval (3 rows)", figures["eval"], "python -c 'import numpy, typer, rich'",
        figures["imports"], figures["imports"]["seconds"] * 2 / figures["eval"]["seconds"], 1.0,
        "ratio = 2x baseline / xent")
    return rows


def table(rows: list[dict]) -> str:
    """Returns the rows as a fixed-width text table."""
    width = max(len(row["name"]) for row in rows)
    lines = [f"{'case':<{width}} {'s':>7} {'cpu s':>6} {'peak MB':>8} {'ratio':>6} {'target':>7}  note"]
    for row in rows:
        ratio = "" if row["ratio"] is None else f"{row['ratio']:6.2f}"
        verdict = ""
        if row["target"] is not None:
            verdict = f">= {row['target']:<3} " + ("met" if row["ratio"] >= row["target"] else "MISSED")
        lines.append(f"{row['name']:<{width}} {row['seconds']:7.2f} {row['cpu_seconds']:6.2f} "
                     f"{row['peak_mb']:8.0f} {ratio:>6} "
                     f"{verdict:<14} {row['note']}")
    return "\n".join(lines)


if __name__ == "__main__":
    results = run(quick="--quick" in sys.argv)
    print(table(results))
    print(json.dumps(results, indent=1))
