"""Times `xent derive` as whole processes against the speed targets (best of 3)."""

import subprocess
import sys
import time

CASES = [(["derive", "--k", "200"], 3.0), (["derive", "--k", "50", "--hessian"], 5.0)]


def best_of(argv: list[str], runs: int = 3) -> float:
    """Returns the fastest wall-clock time of running xent with argv."""
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xent_cli", *argv], check=True,
                       stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    return min(times)


if __name__ == "__main__":
    for argv, target in CASES:
        seconds = best_of(argv)
        verdict = "ok" if seconds < target else "SLOW"
        print(f"xent {' '.join(argv):<28} {seconds:6.2f} s  (target {target:.0f} s)  {verdict}")
