"""One graph in several variants (formats, quantizations, optimisers), compared with the first: SNR of its
outputs and latency, timed interleaved so a shared machine's drift falls on all of them alike. Used by the
benchmark scripts that choose how a backend converts (benchmarks/*_int8_*.py)."""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..compare import MAX_SNR_DB, StageStats
from .measure import round_ratios, time_interleaved


def compare_variants(runs: dict[str, Callable[[np.ndarray], object]], x: np.ndarray, probes: list[np.ndarray],
                     rounds: int, calls: int = 5) -> dict[str, dict]:
    """Variants of one graph (other formats, quantizations) against the first: per variant its SNR against the
    first's outputs on `probes` (MAX_SNR_DB when identical), and its ms per call on `x`, timed interleaved in
    `rounds` rounds of `calls` calls, with the median of its per-round ratios to the first and their range."""
    base = next(iter(runs))
    reference = [runs[base](p) for p in probes]
    out = {}
    for label, run in runs.items():
        acc = StageStats()
        for want, p in zip(reference, probes, strict=True):
            acc.add("out", want, run(p))
        out[label] = {"snr_db": acc.snr_db()["out"]}
    timed = time_interleaved({label: (lambda i, run=run: run(x)) for label, run in runs.items()},
                             warmup=1, runs=rounds * calls, rounds=rounds)
    for label, per_round in timed.items():
        ratios = round_ratios(per_round, timed[base])
        out[label].update(median_ms=float(np.median([ms for r in per_round for ms in r])),
                          over_first=float(np.median(ratios)), range=[min(ratios), max(ratios)])
    return out


def paper_trunk(config: str = "vit-12x192-moe"):
    """(the trunk graph of `config` with seeded random weights, the config): the bulk of the model's FLOPs, on
    which the conversion choices are measured. Latency does not depend on trained weights."""
    from ..checkpoint import random_checkpoint
    from ..model import load_config
    from ..split import split_model

    cfg = load_config(config)
    trunk = next(g for g in split_model(random_checkpoint(cfg, seed=0).build_model().eval()) if g.name == "trunk")
    return trunk, cfg


def script_args(doc: str, argv: list[str] | None, default_out: Path) -> argparse.Namespace:
    """--out and --rounds, the options every variant-comparison script takes."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--out", type=Path, default=default_out, help="where the results go")
    p.add_argument("--rounds", type=int, default=9, help="interleaved timing rounds")
    return p.parse_args(argv)


def random_inputs(shape: tuple[int, ...], seed: int = 0, probes: int = 8) -> tuple[np.ndarray, list[np.ndarray]]:
    """(the timed input, the SNR probes): standard-normal float32 images; latency does not depend on content."""
    rng = np.random.default_rng(seed)
    draw = lambda: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    return draw(), [draw() for _ in range(probes)]


def record(rounds: int, runtime: str, variants: dict[str, dict]) -> dict:
    """What a script saves: when, where (CPU kernel features decide int8 speed), the runtime's version, results."""
    from ..machine import cpu_info, describe
    from ..backends import package_version

    return {"created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "rounds": rounds,
            "machine": f"{describe(cpu_info())}, {runtime} {package_version(runtime)}", "variants": variants}


def variants_markdown(title: str, intro: str, variants: dict[str, dict], base: str,
                      extra: tuple[tuple[str, Callable[[dict], str]], ...] = ()) -> str:
    """A table of compare_variants' results; `extra` adds (header, cell) columns; each row's "ops" (op type ->
    count) goes last when present."""
    heads = ["variant", "ms", f"/ {base}", "SNR dB", *(h for h, _ in extra), "most frequent ops"]
    lines = [f"# {title}", "", intro, "", "| " + " | ".join(heads) + " |", "|" + "---|" * len(heads)]
    for label, r in variants.items():
        snr = "exact" if r["snr_db"] >= MAX_SNR_DB else f"{r['snr_db']:.1f}"
        cells = [label, f"{r['median_ms']:.2f}", f"{r['over_first']:.2f} ({r['range'][0]:.2f}-{r['range'][1]:.2f})", snr,
                 *(cell(r) for _, cell in extra), ", ".join(f"{k} {v}" for k, v in r.get("ops", {}).items())]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""])


def save_result(out: Path, stem: str, result: dict, markdown: str) -> None:
    """OUT/STEM.json and OUT/STEM.md, and the table on stdout."""
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{stem}.json").write_text(json.dumps(result, indent=1, default=float) + "\n")
    (out / f"{stem}.md").write_text(markdown)
    print(markdown)
