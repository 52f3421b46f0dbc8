"""Runs every xent benchmark in one go, prints a table of ratios against the targets, writes JSON.

    python bench/run.py           # the full run: a 0.9 GB CSV, a few minutes
    python bench/run.py --quick   # a tenth of the data, for a quick look

Data is generated under bench/data/ (ignored by git) on first use; the results go to
bench/results/latest.json with the machine they came from. Other engineers' benchmarks
(bench_kernel.py, bench_derive.py, bench_check.py) run when present and are skipped otherwise.
"""

from __future__ import annotations

import argparse
import datetime
import importlib.util
import json
import os
import pathlib
import platform
import subprocess
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(1, str(HERE.parent))  # xent_cli itself, should its install be missing

import bench_eval  # noqa: E402  (lives beside this file)


def machine() -> dict:
    """Returns what the figures depend on: the platform, CPUs, Python and library versions."""
    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpu_model": cpu_model(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "numpy": np.__version__}
    try:
        import polars
        info["polars"] = polars.__version__
    except ImportError:
        pass
    return info


def cpu_model() -> str | None:
    """Returns the processor's model name where Linux tells it: with the same code and versions
    the summary's ratio was 0.77-0.81 on an AMD EPYC host and about 0.7 on an Intel Xeon one."""
    try:
        with open("/proc/cpuinfo") as info:
            return next((line.split(":", 1)[1].strip() for line in info
                         if line.startswith("model name")), None)
    except OSError:
        return None


def kernel(quick: bool) -> list[dict] | str:
    """Runs bench_kernel.run() when the kernel's benchmark exists."""
    path = HERE / "bench_kernel.py"
    if not path.exists():
        return "skipped: bench/bench_kernel.py is absent"
    spec = importlib.util.spec_from_file_location("bench_kernel", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.run(repeat=2 if quick else 5, echo=False)


def script(name: str) -> str:
    """Runs another benchmark script as a process and returns what it printed."""
    path = HERE / name
    if not path.exists():
        return f"skipped: bench/{name} is absent"
    done = subprocess.run([sys.executable, str(path)], capture_output=True, text=True)
    text = done.stdout.strip()
    if done.returncode != 0:
        text += f"\n(exited {done.returncode}: {done.stderr.strip().splitlines()[-1:]})"
    return text


def compile_package() -> None:
    """Compiles xent_cli to bytecode, as pip does when it installs a package.

    An editable install under PYTHONDONTWRITEBYTECODE=1 would otherwise compile every module of
    xent at every start (40 ms), while the baselines' libraries load their installed bytecode.
    """
    import compileall

    compileall.compile_dir(str(HERE.parent / "xent_cli"), quiet=1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="a tenth of the data")
    parser.add_argument("--only-eval", action="store_true", help="skip kernel, derive and check")
    arguments = parser.parse_args()
    results = {"when": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
               "quick": arguments.quick, "machine": machine()}
    print(f"machine: {json.dumps(results['machine'])}\n")
    compile_package()
    results["eval"] = bench_eval.run(quick=arguments.quick)
    print("xent eval, whole processes (ratio >= target is met; time and RSS include start-up)")
    print(bench_eval.table(results["eval"]))
    if not arguments.only_eval:
        results["kernel"] = kernel(arguments.quick)
        print("\nloss-and-gradient kernel, in process")
        if isinstance(results["kernel"], str):
            print(results["kernel"])
        else:
            spec = importlib.util.spec_from_file_location("bench_kernel", HERE / "bench_kernel.py")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            print(module.table(results["kernel"]))
        for name in ("bench_derive.py", "bench_check.py"):
            results[name.removesuffix(".py")] = script(name)
            print(f"\n{name}\n{results[name.removesuffix('.py')]}")
    out = HERE / "results" / ("latest.json" if not arguments.quick else "quick.json")
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(results, indent=1, default=str) + "\n")
    print(f"\nwritten: {out.relative_to(HERE.parent)}")


if __name__ == "__main__":
    main()
