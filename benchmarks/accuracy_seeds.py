#!/usr/bin/env python3
"""Dense twin vs Mobile V-MoE (from scratch and upcycled) vs a dense twin given the same total training,
over several training seeds: is a gap larger than seed noise, and is it more than the gain of training longer?

Per seed two runs (kept in RUNS_DIR; missing ones are trained with `vmoe-train`, an interrupted one resumes):
  <config>-s<seed>-upcycled  `vmoe-train --moe-init dense`: the dense twin (stage a), the upcycled MoE, and the
                             equal-compute dense twin (the dense twin trained on for the MoE epochs)
  <config>-s<seed>-scratch   `vmoe-train --moe-init scratch --dense-checkpoint <upcycled>/dense.pt
                             --no-equal-compute`: the MoE from its own init, on the same dense twin and super-classes
                             (the shipped models/<config> serves when it is that run for this seed)
About 45 + 15 epochs per seed, ~1.5 min each at 1 thread on this project's 2-core machine for fmnist-tiny.
Runs are compared on their recipe (epochs, batch, optimiser, augmentation); a run with another recipe is refused.

Usage: .venv/bin/python benchmarks/accuracy_seeds.py [--config fmnist-tiny] [--seeds 0 1 2] [--no-train]
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
RECIPE = ("dense_epochs", "moe_epochs", "batch_size", "lr", "weight_decay", "warmup_steps", "router_weight",
          "holdout_fraction", "augment", "train_limit")
ARMS = ("upcycled", "scratch")


def run_dir(config: str, seed: int, arm: str, runs_dir: Path) -> Path:
    return runs_dir / f"{config}-s{seed}-{arm}"


def _metrics(run: Path) -> dict:
    return json.loads((run / "metrics.json").read_text())


def find_run(config: str, seed: int, arm: str, runs_dir: Path) -> Path | None:
    run = run_dir(config, seed, arm, runs_dir)
    if (run / "metrics.json").is_file():
        return run
    shipped = MODELS_DIR / config
    if arm == "scratch" and (shipped / "metrics.json").is_file():
        m = _metrics(shipped)
        if m["train_config"]["seed"] == seed and m.get("moe_init", "scratch") == "scratch":
            return shipped
    return None


def train_command(config: str, seed: int, arm: str, runs_dir: Path) -> list[str]:
    cmd = [str(Path(sys.executable).parent / "vmoe-train"), "--config", config, "--seed", str(seed),
           "--out", str(run_dir(config, seed, arm, runs_dir))]
    if arm == "upcycled":
        return [*cmd, "--moe-init", "dense"]
    dense = run_dir(config, seed, "upcycled", runs_dir) / "dense.pt"
    return [*cmd, "--moe-init", "scratch", "--dense-checkpoint", str(dense), "--no-equal-compute"]


def train(config: str, seed: int, arm: str, runs_dir: Path) -> Path:
    cmd = train_command(config, seed, arm, runs_dir)
    print("training:", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)
    return run_dir(config, seed, arm, runs_dir)


def _rel(run: Path) -> str:
    return str(run.relative_to(ROOT) if run.is_relative_to(ROOT) else run)


def summarize(runs: dict[int, dict[str, Path]]) -> dict:
    rows = []
    for seed, arms in sorted(runs.items()):
        up, sc = _metrics(arms["upcycled"]), _metrics(arms["scratch"])
        if "dense_equal_compute" not in up:
            raise SystemExit(f"{arms['upcycled']} has no equal-compute dense twin; train it without --no-equal-compute")
        if abs(up["dense"]["top1"] - sc["dense"]["top1"]) > 1e-9:
            raise SystemExit(f"seed {seed}: the scratch and upcycled runs start from different dense twins")
        rows.append({
            "seed": seed, "dataset": up.get("dataset", "?"), "test_images": up["moe"].get("images"),
            "dense_top1": up["dense"]["top1"], "scratch_top1": sc["moe"]["top1"], "upcycled_top1": up["moe"]["top1"],
            "dense_equal_compute_top1": up["dense_equal_compute"]["top1"],
            "router_scratch": sc["moe"]["router_top1_vs_superclass"], "router_upcycled": up["moe"]["router_top1_vs_superclass"],
            "runs": {"upcycled": _rel(arms["upcycled"]), "scratch": _rel(arms["scratch"])},
            "commands": {"upcycled": up["command"], "scratch": sc["command"]},
            "notes": [n for m in (up, sc) for n in m.get("notes", [])],
            "recipe": [{k: m["train_config"].get(k) for k in RECIPE} for m in (up, sc)],
        })
    recipes = [recipe for r in rows for recipe in r.pop("recipe")]
    if any(o != recipes[0] for o in recipes):
        raise SystemExit("the runs differ in more than their seed; compare runs trained with the same options")
    for r in rows:
        r["scratch_minus_dense"] = r["scratch_top1"] - r["dense_top1"]
        r["upcycled_minus_dense"] = r["upcycled_top1"] - r["dense_top1"]
        r["upcycled_minus_equal_compute"] = r["upcycled_top1"] - r["dense_equal_compute_top1"]
        r["scratch_minus_equal_compute"] = r["scratch_top1"] - r["dense_equal_compute_top1"]

    def spread(key: str) -> dict:
        values = [r[key] for r in rows]
        return {"mean": statistics.fmean(values), "stdev": statistics.stdev(values) if len(values) > 1 else 0.0,
                "min": min(values), "max": max(values), "wins": sum(v > 0 for v in values)}

    keys = ("dense_top1", "scratch_top1", "upcycled_top1", "dense_equal_compute_top1", "scratch_minus_dense",
            "upcycled_minus_dense", "upcycled_minus_equal_compute", "scratch_minus_equal_compute")
    return {
        "measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "train_options": recipes[0],
        "seeds": rows,
        **{k: spread(k) for k in keys},
    }


def _test_set(rows: list[dict]) -> str:
    sets = sorted({f"{r['test_images']:,}-image {r['dataset']}" if r["test_images"] else r["dataset"] for r in rows})
    return " / ".join(sets)


def markdown(config: str, s: dict) -> str:
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    pts = lambda v: f"{100 * v:+.2f}"  # noqa: E731
    o = s["train_options"]
    total = o["dense_epochs"] + o["moe_epochs"]
    n = len(s["seeds"])
    lines = [
        f"# Dense twin vs Mobile V-MoE (scratch, upcycled) vs equal-compute dense twin, {n} seeds: {config}",
        "",
        f"Written by `benchmarks/accuracy_seeds.py` on {s['measured']}. Top-1 on the {_test_set(s['seeds'])} "
        f"test set. Dense twin and MoE have the same active FLOPs per image. Producing either MoE took "
        f"{o['dense_epochs']} dense + {o['moe_epochs']} MoE epochs; the equal-compute dense twin is the dense twin "
        f"trained on for {o['moe_epochs']} more epochs (fresh schedule, same shuffles): {total} epochs, the same "
        "total training. Recipe:",
        f"`{json.dumps(o)}`.",
        "",
        f"| seed | dense {o['dense_epochs']} ep | MoE scratch | MoE upcycled | dense {total} ep (equal compute) "
        "| upcycled - equal compute | scratch - dense | router vs super-class (scratch / upcycled) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in s["seeds"]:
        lines.append(f"| {r['seed']} | {pct(r['dense_top1'])} | {pct(r['scratch_top1'])} | {pct(r['upcycled_top1'])} "
                     f"| {pct(r['dense_equal_compute_top1'])} | {pts(r['upcycled_minus_equal_compute'])} "
                     f"| {pts(r['scratch_minus_dense'])} | {pct(r['router_scratch'])} / {pct(r['router_upcycled'])} |")

    def line(label: str, key: str, points: bool = False) -> str:
        v = s[key]
        if points:
            return (f"- {label}: mean {pts(v['mean'])} points, sd {100 * v['stdev']:.2f}; positive on {v['wins']} of {n} "
                    "seeds")
        return f"- {label}: mean {pct(v['mean'])}, sd {100 * v['stdev']:.2f} points (range {pct(v['min'])}-{pct(v['max'])})"

    lines += [
        "",
        line(f"dense twin, {o['dense_epochs']} epochs", "dense_top1"),
        line("MoE from scratch", "scratch_top1"),
        line("MoE upcycled from the dense twin", "upcycled_top1"),
        line(f"dense twin, {total} epochs (equal compute)", "dense_equal_compute_top1"),
        line("MoE scratch - dense (equal active FLOPs)", "scratch_minus_dense", True),
        line("MoE upcycled - dense (equal active FLOPs)", "upcycled_minus_dense", True),
        line("MoE upcycled - dense at equal total training", "upcycled_minus_equal_compute", True),
        line("MoE scratch - dense at equal total training", "scratch_minus_equal_compute", True),
        "",
        "Commands:",
        "",
        *[f"- seed {r['seed']}: `{r['commands']['upcycled']}`; `{r['commands']['scratch']}`" for r in s["seeds"]],
        "",
        *[f"Note, seed {r['seed']}: {n}" for r in s["seeds"] for n in r.get("notes", [])],
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
    p.add_argument("--print-commands", action="store_true",
                   help="print the vmoe-train commands of the missing runs (to run them in parallel) and exit")
    args = p.parse_args()
    runs: dict[int, dict[str, Path]] = {}
    for seed in args.seeds:
        for arm in ARMS:  # upcycled first: the scratch run starts from its dense twin
            run = find_run(args.config, seed, arm, args.runs_dir)
            if run is None and args.print_commands:
                print(" ".join(train_command(args.config, seed, arm, args.runs_dir)))
                continue
            if run is None:
                if args.no_train:
                    raise SystemExit(f"no finished {arm} run for seed {seed} in {args.runs_dir}; drop --no-train to train it")
                run = train(args.config, seed, arm, args.runs_dir)
            runs.setdefault(seed, {})[arm] = run
    if args.print_commands:
        return 0
    summary = summarize(runs)
    text = markdown(args.config, summary)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(summary, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
