"""Times xent's loss-and-gradient kernel against a plain NumPy version and torch on CPU.

    python bench/bench_kernel.py [--repeat 5]

The kernel is ``losses.cross_entropy`` (reduction 'mean', class-index targets, float64) on
1M x 10 and 20k x 1000 logits. In the same process, on the same arrays: a straightforward
stable NumPy version written here, and ``torch.nn.functional.cross_entropy`` + ``backward()``
when torch imports (it is never a dependency of xent). Each figure is the best of --repeat
runs after one warm-up, the usual way to time on a shared machine. The target: xent at least
1.5x as fast as torch. The peak memory of one xent call is traced apart from the timing.
"""

from __future__ import annotations

import argparse
import time
import tracemalloc

import numpy as np

from xent_cli import losses

CASES = ((1_000_000, 10), (20_000, 1000))
TORCH_TARGET = 1.5  # xent must be at least this many times as fast as torch


def plain_numpy(z: np.ndarray, y: np.ndarray) -> tuple[float, np.ndarray]:
    """Returns the mean loss and its gradient the straightforward stable way, whole arrays."""
    n = len(y)
    rows = np.arange(n)
    shifted = z - z.max(axis=1, keepdims=True)
    log_p = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    loss = -log_p[rows, y].mean()
    grad = np.exp(log_p)
    grad[rows, y] -= 1
    grad /= n
    return float(loss), grad


def best_seconds(function, repeat: int) -> float:
    """Returns the shortest of repeat timed calls, after one untimed warm-up call."""
    function()
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return min(times)


def peak_megabytes(function) -> float:
    """Returns the peak of memory NumPy allocated during one call, in MB (tracemalloc)."""
    tracemalloc.start()
    try:
        function()
        return tracemalloc.get_traced_memory()[1] / 1e6
    finally:
        tracemalloc.stop()


def torch_step(z: np.ndarray, y: np.ndarray):
    """Returns a function running torch's cross_entropy + backward(), or None without torch."""
    try:
        import torch
    except ImportError:
        return None
    logits = torch.from_numpy(z).requires_grad_()
    labels = torch.from_numpy(y)

    def step():
        logits.grad = None
        torch.nn.functional.cross_entropy(logits, labels).backward()
        return logits.grad

    return step


def run(cases=CASES, repeat: int = 5, echo: bool = True) -> list[dict]:
    """Times every case against both baselines; returns one row per (case, baseline)."""
    rows = []
    for n, k in cases:
        rng = np.random.default_rng(0)
        z = rng.normal(scale=2.0, size=(n, k))
        y = rng.integers(0, k, n)
        name = f"kernel {n:,} x {k} float64"
        kernel = lambda: losses.cross_entropy(z, y)  # noqa: E731
        result = kernel()
        plain_loss, plain_grad = plain_numpy(z, y)
        # Timing a wrong answer would be pointless: both must agree first.
        assert abs(result.loss - plain_loss) <= 1e-12 * plain_loss, (result.loss, plain_loss)
        assert np.allclose(result.grad, plain_grad, rtol=1e-9, atol=1e-18)
        seconds = best_seconds(kernel, repeat)
        peak = peak_megabytes(kernel)
        common = {"name": name, "seconds": seconds, "peak_mb": peak, "n": n, "k": k}
        baseline = best_seconds(lambda: plain_numpy(z, y), repeat)
        rows.append({**common, "baseline": "numpy straightforward", "baseline_seconds": baseline,
                     "ratio": baseline / seconds, "target": None, "skipped": False})
        step = torch_step(z, y)
        if step is None:
            rows.append({**common, "baseline": "torch cross_entropy + backward",
                         "baseline_seconds": None, "ratio": None, "target": TORCH_TARGET,
                         "skipped": True})
            continue
        assert np.allclose(step().numpy(), result.grad, rtol=1e-9, atol=1e-18)
        baseline = best_seconds(step, repeat)
        rows.append({**common, "baseline": "torch cross_entropy + backward",
                     "baseline_seconds": baseline, "ratio": baseline / seconds,
                     "target": TORCH_TARGET, "skipped": False})
    if echo:
        print(table(rows))
    return rows


def table(rows: list[dict]) -> str:
    """Returns the rows as a fixed-width text table."""
    lines = [f"{'case':<28} {'xent ms':>8} {'peak MB':>8}  {'baseline':<31} {'ms':>8} "
             f"{'ratio':>6} {'target':>7}"]
    for row in rows:
        if row["skipped"]:
            baseline, ratio, verdict = "skipped", "-", "skipped"
        else:
            baseline = f"{row['baseline_seconds'] * 1e3:8.1f}"
            ratio = f"{row['ratio']:6.2f}"
            verdict = ("-" if row["target"] is None
                       else ("met" if row["ratio"] >= row["target"] else "MISSED"))
        target = "" if row["target"] is None else f">= {row['target']}"
        lines.append(f"{row['name']:<28} {row['seconds'] * 1e3:8.1f} {row['peak_mb']:8.0f}  "
                     f"{row['baseline']:<31} {baseline:>8} {ratio:>6} {target:>7} {verdict}")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    run(repeat=parser.parse_args().repeat)


if __name__ == "__main__":
    main()
