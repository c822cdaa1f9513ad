"""Command-line start-up: how long `remask ... --help` and an argument error take, against importing torch.

    python benchmarks/bench_startup.py --runs 5

Each command runs in a fresh process ``--runs`` times; the median wall time is reported. The baseline, in the
same run, is a bare ``import torch, transformers`` (what every command paid before the model package imported
them on first use instead of at start-up).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

COMMANDS = {
    "remask --help": [sys.executable, "-m", "ui.cli", "--help"],
    "remask fill --help": [sys.executable, "-m", "ui.cli", "fill", "--help"],
    "remask fill missing.py (an error)": [sys.executable, "-m", "ui.cli", "fill", "/nonexistent/missing.py"],
    "baseline: import torch, transformers": [sys.executable, "-c", "import torch, transformers"],
}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    a = ap.parse_args()
    rows = {}
    for name, cmd in COMMANDS.items():
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            subprocess.run(cmd, capture_output=True)
            times.append(time.perf_counter() - t0)
        rows[name] = statistics.median(times)
    base = rows["baseline: import torch, transformers"]
    print(f"| command | median s ({a.runs} runs) | / baseline |\n|---|---:|---:|")
    for name, t in rows.items():
        print(f"| {name} | {t:.2f} | {t / base:.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
