#!/usr/bin/env python3
"""Dense twin vs Mobile V-MoE top-1 over several training seeds: is the gap larger than seed noise?

For each seed, uses a finished run in RUNS_DIR/<config>-s<seed>/ (or the shipped models/<config>/ when
it was trained with that seed; runs whose other training options differ are refused), trains the missing ones with `vmoe-train` (about 30 min per seed
on 2 CPU cores for fmnist-tiny; an interrupted run resumes), then prints and records the per-seed
figures and their mean and standard deviation in OUT.json and OUT.md.

Usage: .venv/bin/python benchmarks/accuracy_seeds.py [--config fmnist-tiny] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

from vmoe_export.model import MODELS_DIR

ROOT = Path(__file__).resolve().parent.parent


def run_dir(config: str, seed: int, runs_dir: Path) -> Path:
    return runs_dir / f"{config}-s{seed}"


def find_run(config: str, seed: int, runs_dir: Path) -> Path | None:
    shipped = MODELS_DIR / config
    if (shipped / "metrics.json").is_file() and _metrics(shipped)["train_config"]["seed"] == seed:
        return shipped
    run = run_dir(config, seed, runs_dir)
    return run if (run / "metrics.json").is_file() else None


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def train(config: str, seed: int, runs_dir: Path) -> Path:
    out = run_dir(config, seed, runs_dir)
    cmd = [str(Path(sys.executable).parent / "vmoe-train"), "--config", config, "--seed", str(seed), "--out", str(out)]
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return out


def summarize(runs: dict[int, Path]) -> dict:
    rows = []
    for seed, run in sorted(runs.items()):
        m = _metrics(run)
        rows.append({
            "seed": seed, "run": str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run), "command": m["command"],
            "dataset": m.get("dataset", "?"), "test_images": m["moe"].get("images"),
            "dense_top1": m["dense"]["top1"], "moe_top1": m["moe"]["top1"],
            "moe_minus_dense": m["moe"]["top1"] - m["dense"]["top1"],
            "router_top1_vs_superclass": m["moe"]["router_top1_vs_superclass"],
            "superclasses": m["superclasses"], "train_config": m["train_config"],
        })
    options = [{k: v for k, v in r["train_config"].items() if k != "seed"} for r in rows]
    if any(o != options[0] for o in options):
        raise SystemExit("the runs differ in more than their seed; compare runs trained with the same options")

    def spread(key: str) -> dict:
        values = [r[key] for r in rows]
        return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values)}

    return {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_options": options[0],
        "seeds": rows,
        "dense_top1": spread("dense_top1"), "moe_top1": spread("moe_top1"),
        "moe_minus_dense": spread("moe_minus_dense"),
        "moe_wins": sum(r["moe_minus_dense"] > 0 for r in rows),
    }


def _test_set(rows: list[dict]) -> str:
    sets = sorted({f"{r['test_images']:,}-image {r['dataset']}" if r["test_images"] else r["dataset"] for r in rows})
    return " / ".join(sets)


def markdown(config: str, s: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    pts = lambda v: f"{100 * v:+.2f}"  # noqa: E731
    lines = [
        f"# Dense twin vs Mobile V-MoE over {len(s['seeds'])} seeds: {config}",
        "",
        f"Written by `benchmarks/accuracy_seeds.py` on {s['measured']}. Top-1 on the {_test_set(s['seeds'])} "
        "test set; both models have the same active FLOPs per image. Training options (all but the seed):",
        f"`{json.dumps(s['train_options'])}`.",
        "",
        "| seed | dense top-1 | MoE top-1 | MoE - dense (points) | router vs super-class | command |",
        "|---|---|---|---|---|---|",
    ]
    for r in s["seeds"]:
        lines.append(f"| {r['seed']} | {pct(r['dense_top1'])} | {pct(r['moe_top1'])} | {pts(r['moe_minus_dense'])} "
                     f"| {pct(r['router_top1_vs_superclass'])} | `{r['command']}` |")
    d, m, g = s["dense_top1"], s["moe_top1"], s["moe_minus_dense"]
    lines += [
        "",
        f"- dense twin: mean {pct(d['mean'])}, sd {100 * d['stdev']:.2f} points (range {pct(d['min'])}-{pct(d['max'])})",
        f"- Mobile V-MoE: mean {pct(m['mean'])}, sd {100 * m['stdev']:.2f} points (range {pct(m['min'])}-{pct(m['max'])})",
        f"- MoE - dense: mean {pts(g['mean'])} points, sd {100 * g['stdev']:.2f}; MoE ahead on {s['moe_wins']} of "
        f"{len(s['seeds'])} seeds",
        "",
    ]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--config", default="fmnist-tiny", help="model config name (default fmnist-tiny)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds (default 0 1 2)")
    p.add_argument("--runs-dir", type=Path, default=ROOT / "runs" / "seeds", help="where runs are kept (default runs/seeds)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "accuracy_seeds",
                   help="output path without suffix (default benchmarks/results/accuracy_seeds)")
    p.add_argument("--no-train", action="store_true", help="only summarize finished runs; fail if one is missing")
    args = p.parse_args()
    runs = {}
    for seed in args.seeds:
        run = find_run(args.config, seed, args.runs_dir)
        if run is None:
            if args.no_train:
                raise SystemExit(f"no finished run for seed {seed} in {args.runs_dir}; drop --no-train to train it")
            run = train(args.config, seed, args.runs_dir)
        runs[seed] = run
    summary = summarize(runs)
    text = markdown(args.config, summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
