#!/usr/bin/env python3
"""Stored vs inverted test accuracy of a Fashion-MNIST checkpoint, with and without the polarity rule.

A phone photo of a garment is a dark object on a light ground, the inverse of Fashion-MNIST. The config's
`polarity: dark-background` rule inverts an input whose outermost pixel ring is brighter than mid-grey before
normalising (vmoe_export.data.normalize_polarity; mirrored by the runtime and both app cores). This script
measures what the rule does: top-1 on the test set as stored and inverted, rule off and on, for the MoE and
its dense twin, and how many stored training/test images the rule would flip (it must flip none, or training
and evaluation would change).

--update-shipped declares the rule in the shipped checkpoints' configs (models/<config>/model.pt, dense.pt;
weights unchanged, so accuracy as stored is unchanged) and records the inverted accuracy in their
metrics.json and card.md.

Usage: .venv/bin/python benchmarks/polarity.py [--model-dir models/fmnist-tiny] [--update-shipped]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

from vmoe_export.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from vmoe_export.data import bright_border, load_fashion_mnist, preprocess
from vmoe_export.model import MODELS_DIR, MobileVMoE
from vmoe_export.training import model_card

ROOT = Path(__file__).resolve().parent.parent


@torch.no_grad()
def top1(model: MobileVMoE, images: torch.Tensor, labels: torch.Tensor, polarity: str) -> float:
    cfg = replace(model.cfg, polarity=polarity)
    preds = [model(preprocess(images[i : i + 500], cfg))[0].argmax(1) for i in range(0, len(images), 500)]
    return float((torch.cat(preds) == labels).float().mean())


def measure(model_dir: Path) -> dict:
    data = load_fashion_mnist()
    test, train = data.test, data.train
    out = {"measured": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "model_dir": str(model_dir),
           "test_images": len(test),
           "flipped_by_rule": {"train stored": int(bright_border(train.images).sum()),
                               "test stored": int(bright_border(test.images).sum()),
                               "test inverted": int(bright_border(255 - test.images).sum())},
           "top1": {}}
    for name in ("model.pt", "dense.pt"):
        model = load_checkpoint(model_dir / name).build_model()
        kind = "moe" if model.cfg.is_moe else "dense"
        out["top1"][kind] = {f"{split} / rule {p}": top1(model, imgs, test.labels, p)
                             for p in ("as-is", "dark-background")
                             for split, imgs in (("stored", test.images), ("inverted", 255 - test.images))}
    return out


def markdown(r: dict) -> str:
    lines = [
        "# Polarity: stored vs inverted Fashion-MNIST test accuracy",
        "",
        f"Written by `benchmarks/polarity.py` on {r['measured']} for `{r['model_dir']}`, {r['test_images']:,} test "
        "images. Inverted = 255 - pixel: a dark garment on a light ground, as a phone photo shows it. Rule "
        "`dark-background`: invert an input whose outermost pixel ring averages above mid-grey.",
        "",
        "| model | stored, no rule | inverted, no rule | stored, rule | inverted, rule |",
        "|---|---|---|---|---|",
    ]
    for kind, t in r["top1"].items():
        cells = [t[k] for k in ("stored / rule as-is", "inverted / rule as-is", "stored / rule dark-background",
                                "inverted / rule dark-background")]
        lines.append(f"| {kind} | " + " | ".join(f"{100 * v:.2f}%" for v in cells) + " |")
    f = r["flipped_by_rule"]
    lines += ["", f"Images the rule inverts: {f['train stored']} of the stored training set, {f['test stored']} of "
              f"the stored test set, {f['test inverted']} of the inverted test set.", ""]
    return "\n".join(lines)


def update_shipped(model_dir: Path, r: dict) -> None:
    """Declare the rule in the shipped checkpoints (weights unchanged) and record the inverted accuracy."""
    if r["flipped_by_rule"]["train stored"]:
        raise SystemExit("the rule inverts stored training images: the model must be retrained with it, not relabelled")
    metrics = json.loads((model_dir / "metrics.json").read_text())
    for kind in ("moe", "dense"):
        metrics[kind]["top1_inverted"] = r["top1"][kind]["inverted / rule dark-background"]
    note = (f"Polarity rule declared on {r['measured'][:10]} by `benchmarks/polarity.py --update-shipped` (weights "
            f"unchanged; the rule inverts none of the stored training images, so training with it would have been "
            f"identical). Without the rule the MoE scored {100 * r['top1']['moe']['inverted / rule as-is']:.2f}% "
            "on the inverted test set.")
    metrics["notes"] = [n for n in metrics.get("notes", []) if not n.startswith("Polarity rule")] + [note]
    for name, m in (("model.pt", metrics), ("dense.pt", metrics["dense"])):
        ck = load_checkpoint(model_dir / name)
        cfg = replace(ck.config, polarity="dark-background")
        save_checkpoint(Checkpoint(cfg, ck.state_dict, ck.class_names, ck.superclass_of, metrics=m), model_dir / name)
    cfg = load_checkpoint(model_dir / "model.pt").config
    (model_dir / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n")
    (model_dir / "card.md").write_text(model_card(cfg, metrics))


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=MODELS_DIR / "fmnist-tiny",
                   help="a vmoe-train output directory (default: the shipped models/fmnist-tiny)")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "polarity",
                   help="output path without suffix (default benchmarks/results/polarity)")
    p.add_argument("--update-shipped", action="store_true",
                   help="declare the dark-background rule in MODEL_DIR's checkpoints and record the inverted accuracy")
    args = p.parse_args()
    r = measure(args.model_dir)
    text = markdown(r)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    args.out.with_suffix(".md").write_text(text)
    print(text)
    if args.update_shipped:
        update_shipped(args.model_dir, r)
        print(f"updated {args.model_dir}: model.pt, dense.pt, metrics.json, card.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
