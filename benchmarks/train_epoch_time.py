#!/usr/bin/env python3
"""Training epoch time of the shipped toy (fmnist-tiny, default recipe) on CPU: this checkout vs an earlier commit.

Runs `vmoe-train --dense-epochs 1 --moe-epochs 1` from each source tree in turn (ROUNDS rounds, alternating,
so drifting machine load hits both alike) and reads the seconds of the dense and the MoE epoch from the log.
The earlier commit is checked out into a temporary git worktree. Ratios are the figure to read; absolute
seconds depend on the machine and its load.

Usage: .venv/bin/python benchmarks/train_epoch_time.py --before aa3b66e [--threads 2] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
EPOCH = re.compile(r"\[(dense|moe)\] epoch 1/1: .*\[(\d+)s\]")


def epoch_seconds(source: Path, threads: int, out: Path) -> dict[str, float]:
    env = dict(os.environ, PYTHONPATH=str(source), OMP_NUM_THREADS=str(threads))
    cmd = [sys.executable, "-c", "from vmoe_export.cli import train_main; raise SystemExit(train_main())",
           "--dense-epochs", "1", "--moe-epochs", "1", "--threads", str(threads), "--out", str(out), "--overwrite"]
    # cwd as well as PYTHONPATH: `python -c` puts the working directory first on sys.path
    if "--no-equal-compute" in subprocess.run([*cmd, "--help"], env=env, capture_output=True, text=True,
                                              cwd=source).stdout:
        cmd.append("--no-equal-compute")
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=source)
    if r.returncode:
        raise SystemExit(f"training from {source} failed:\n{r.stderr[-2000:]}")
    # tqdm-free log: stdout holds one line per epoch with its wall seconds
    found = {m.group(1): float(m.group(2)) for m in EPOCH.finditer(r.stdout)}
    if set(found) != {"dense", "moe"}:
        raise SystemExit(f"no epoch times in the log of {source}:\n{r.stdout[-2000:]}")
    return found


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--before", required=True, help="git commit to compare against (e.g. the one before a change)")
    p.add_argument("--threads", type=int, default=2, help="torch threads per run (default 2)")
    p.add_argument("--rounds", type=int, default=2, help="alternating rounds (default 2)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "train_epoch_time",
                   help="output path without suffix (default benchmarks/results/train_epoch_time)")
    args = p.parse_args()
    commit = subprocess.run(["git", "rev-parse", "--short", args.before], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.strip()
    head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()
    dirty = bool(subprocess.run(["git", "status", "--porcelain", "vmoe_export"], cwd=ROOT, capture_output=True,
                                text=True).stdout.strip())
    with tempfile.TemporaryDirectory() as tmp:
        before = Path(tmp) / "before"
        subprocess.run(["git", "worktree", "add", "--detach", str(before), commit], cwd=ROOT, check=True,
                       capture_output=True)
        try:
            times: dict[str, list[dict]] = {"before": [], "after": []}
            for r in range(args.rounds):
                for name, source in (("before", before), ("after", ROOT)):
                    t = epoch_seconds(source, args.threads, Path(tmp) / f"run-{name}")
                    times[name].append(t)
                    print(f"round {r + 1}: {name:6s} dense {t['dense']:.0f} s, MoE {t['moe']:.0f} s", flush=True)
        finally:
            subprocess.run(["git", "worktree", "remove", "--force", str(before)], cwd=ROOT, capture_output=True)
    med = {n: {s: statistics.median(t[s] for t in runs) for s in ("dense", "moe")} for n, runs in times.items()}
    result = {"measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "before": commit,
              "after": head + ("+uncommitted" if dirty else ""), "threads": args.threads, "rounds": times,
              "median_seconds": med, "ratio_after_over_before": {s: med["after"][s] / med["before"][s] for s in ("dense", "moe")}}
    lines = [
        "# Training epoch time on CPU, fmnist-tiny, before and after",
        "",
        f"Written by `benchmarks/train_epoch_time.py --before {args.before}` on {result['measured']}: one dense and "
        f"one MoE epoch of the default recipe (54,000 Fashion-MNIST images, batch 128), {args.threads} threads, "
        f"{args.rounds} alternating rounds, medians. Before = {commit}, after = {result['after']}.",
        "",
        "| stage | before (s) | after (s) | after / before |",
        "|---|---|---|---|",
        *[f"| {s} | {med['before'][s]:.0f} | {med['after'][s]:.0f} | {result['ratio_after_over_before'][s]:.2f} |"
          for s in ("dense", "moe")],
        "",
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    args.out.with_suffix(".md").write_text("\n".join(lines))
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
