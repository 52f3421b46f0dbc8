"""Times `xent derive` as whole processes against the speed targets (best of 3).

Wall-clock time is what a user waits and what the targets are about; the machine may be shared,
so each child's CPU time (user + system, from RUSAGE_CHILDREN) is printed beside it.
"""

import resource
import subprocess
import sys
import time

CASES = [
    (["derive", "--k", "200"], 3.0),
    (["derive", "--k", "50", "--hessian"], 5.0),
    (["derive", "--k", "100", "--soft"], None),
    (["derive", "--k", "30", "--soft", "--hessian"], None),
]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def best_of(argv: list[str], runs: int = 3) -> tuple[float, float]:
    """Returns the fastest wall-clock and the fastest CPU time of running xent with argv."""
    walls, cpus = [], []
    for _ in range(runs):
        cpu = _children_cpu()
        start = time.perf_counter()
        subprocess.run([sys.executable, "-m", "xent_cli", *argv], check=True,
                       stdout=subprocess.DEVNULL)
        walls.append(time.perf_counter() - start)
        cpus.append(_children_cpu() - cpu)
    return min(walls), min(cpus)


if __name__ == "__main__":
    for argv, target in CASES:
        wall, cpu = best_of(argv)
        verdict = "" if target is None else (
            f"(target {target:.0f} s)  " + ("ok" if wall < target else "SLOW"))
        print(f"xent {' '.join(argv):<32} wall {wall:5.2f} s  cpu {cpu:5.2f} s  {verdict}")
