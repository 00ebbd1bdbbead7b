"""Start-up time of the ``zeroshot`` command (issue: foundation; target: ``--help`` under 0.5 s).

Run from the repository root::

    python benchmarks/startup.py                  # 15 interleaved repeats
    python benchmarks/startup.py -n 30 --json startup.json

Every command is a fresh ``python -m zeroshot ...`` subprocess (output discarded), timed from
spawn to exit. The commands are interleaved (one round runs each once, in a shuffled order), so a
machine that gets busier or quieter during the run affects all of them alike. Two references are
measured in the same rounds: ``python -c pass`` (the interpreter alone) and ``python -c "import
torch"`` (what a command that loads torch pays at least). Reported: median and range (min-max)
of the wall time per command, and the median minus the bare interpreter's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_SECONDS = 0.5
ROOT = Path(__file__).resolve().parent.parent

COMMANDS: list[tuple[str, list[str]]] = [
    ("python -c pass", ["-c", "pass"]),
    ('python -c "import torch"', ["-c", "import torch"]),
    ("zeroshot --help", ["-m", "zeroshot", "--help"]),
    ("zeroshot templates", ["-m", "zeroshot", "templates"]),
    ("zeroshot classify --help", ["-m", "zeroshot", "classify", "--help"]),
]
TARGETED = {"zeroshot --help", "zeroshot classify --help"}


def time_once(args: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env,
                          cwd=ROOT, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(args)} exited {done.returncode}: {done.stderr.decode(errors='replace')}")
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("-n", "--repeats", type=int, default=15, help="rounds (each runs every command once)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed rounds first (file cache)")
    parser.add_argument("--json", type=Path, help="also write every sample and machine info here")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-round shuffle")
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error("--repeats must be at least 1")

    # This checkout's zeroshot, even when another copy is installed.
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    env.pop("PYTHONSTARTUP", None)
    rng = random.Random(args.seed)
    samples: dict[str, list[float]] = {name: [] for name, _ in COMMANDS}
    for round_no in range(args.warmup + args.repeats):
        order = list(COMMANDS)
        rng.shuffle(order)
        for name, command in order:
            seconds = time_once(command, env)
            if round_no >= args.warmup:
                samples[name].append(seconds)

    base = statistics.median(samples["python -c pass"])
    load = f", load average {os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else ""
    print(f"start-up wall time in seconds, {args.repeats} interleaved runs each ({sys.executable}{load})")
    print(f"{'command':<28} {'median':>8} {'min':>8} {'max':>8} {'- python':>9}")
    rows = []
    for name, _ in COMMANDS:
        values = samples[name]
        median = statistics.median(values)
        mark = ""
        if name in TARGETED:
            mark = "  ok" if median < TARGET_SECONDS else f"  over the {TARGET_SECONDS:g} s target"
        print(f"{name:<28} {median:8.3f} {min(values):8.3f} {max(values):8.3f} {median - base:9.3f}{mark}")
        rows.append({"command": name, "median_s": median, "min_s": min(values), "max_s": max(values),
                     "median_minus_python_s": median - base, "samples_s": values})

    if args.json:
        info = {
            "python": sys.version, "platform": platform.platform(), "cpu_count": os.cpu_count(),
            "load_average": os.getloadavg() if hasattr(os, "getloadavg") else None,
            "repeats": args.repeats, "warmup": args.warmup, "target_s": TARGET_SECONDS, "results": rows,
        }
        args.json.write_text(json.dumps(info, indent=2) + "\n", encoding="utf-8")
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
