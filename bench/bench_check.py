"""Times `xent check` on 10,000 samples x 10 classes against the start-up of Python with numpy.

    python bench/bench_check.py [--repeat 5]

The target: a full central-difference check of 10,000 x 10 takes under 1 s beyond start-up,
i.e. (whole `xent check` process) − (`python -c "import numpy"`) < 1 s. The in-process time of
the check alone (derivative + comparison) is printed too. Each figure is the best of --repeat
runs, the usual way to time on a shared machine.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time

import numpy as np

from xent_cli import gradcheck

CHECK = [sys.executable, "-m", "xent_cli", "check", "--random", "10000", "--k", "10",
         "--format", "json"]
BASELINE = [sys.executable, "-c", "import numpy"]


def best_wall_time(argv: list[str], repeat: int) -> float:
    """Returns the shortest wall time of running argv, in seconds."""
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return min(times)


def best_in_process(method: str, repeat: int) -> float:
    """Returns the shortest time of one full check of 10,000 x 10 inside this process."""
    problem = gradcheck.random_problem(10_000, 10, 0)
    loss = gradcheck.xent_loss(problem.a)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        report = gradcheck.check_gradient(problem, problem.grad, loss,
                                          gradcheck.tolerance(method), analytic_source="xent")
        times.append(time.perf_counter() - start)
        assert report.passed
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    repeat = parser.parse_args().repeat
    baseline = best_wall_time(BASELINE, repeat)
    whole = best_wall_time(CHECK, repeat)
    print(f"python -c 'import numpy'            {baseline:7.3f} s")
    print(f"xent check --random 10000 --k 10    {whole:7.3f} s")
    print(f"beyond start-up                     {whole - baseline:7.3f} s  (target < 1 s)")
    symbolic = best_wall_time(CHECK + ["--symbolic"], repeat)
    print(f"  with --symbolic (loads SymPy)     {symbolic:7.3f} s  "
          f"({symbolic - baseline:.3f} s beyond start-up)")
    for method in gradcheck.METHODS:
        print(f"in-process check, {method:<10}        {best_in_process(method, repeat):7.3f} s")
    print(f"numpy {np.__version__}, python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
