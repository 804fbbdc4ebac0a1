"""The model card vmoe-train writes beside a checkpoint (card.md): how it was made, what it scores against its
dense twin (and the equal-compute control), its super-classes and expert usage, from metrics.json alone."""

from __future__ import annotations

import json

from .config import ModelConfig


_INIT_TEXT = {
    "scratch": "from scratch (the MoE's own random init), trained for the MoE epochs after the dense twin.",
    "dense": "sparse upcycling: shared weights and every expert copied from the trained dense twin (experts = its "
             "MLP at that depth), router fresh; the MoE had dense epochs + MoE epochs of training in all.",
}


def _inverted_text(cfg: ModelConfig, m: dict) -> str:
    if "top1_inverted" not in m["moe"]:
        return ""
    rule = ("polarity rule `dark-background`: an input whose border ring is brighter than mid-grey is inverted "
            "before normalising, in training, export, vmoe-predict, the Python runtime and both app cores"
            if cfg.polarity == "dark-background" else "polarity `as-is`: inputs are used as they are")
    notes = "".join(f"\n{n}\n" for n in m.get("notes", []))
    return (f"Top-1 on the test images inverted (dark object on a light ground, like a phone photo): MoE "
            f"{100 * m['moe']['top1_inverted']:.2f}% (as stored {100 * m['moe']['top1']:.2f}%), dense twin "
            f"{100 * m['dense']['top1_inverted']:.2f}%; {rule}.\n{notes}")


def _equal_compute_row(m: dict) -> str:
    eq = m.get("dense_equal_compute")
    if eq is None:
        return ""
    return (f"| dense twin, equal total training ({eq['epochs'] or '?'} epochs: {eq['schedule']}) | "
            f"{100 * eq['top1']:.2f}% | {m['dense']['params']:,} | {m['dense']['params']:,} |")


def _equal_compute_text(m: dict) -> str:
    if "dense_equal_compute" not in m:
        return ("\nNo equal-compute dense twin was trained for this model (`vmoe-train --no-equal-compute`, or a run "
                "from before it existed): the MoE had more training than the dense row, so part of any gap may be the "
                "extra training.\n")
    return (f"\nMoE minus the dense twin at equal total training: {100 * m['moe_minus_dense_equal_compute_top1']:+.2f} "
            "points. This is the fair comparison: producing the MoE took the dense epochs plus the MoE epochs of training.\n")


def _sources_text(m: dict) -> str:
    """Where the dense twin came from, and the MoE-from-scratch comparison when one is recorded beside the run."""
    lines = []
    if m.get("dense_source", "trained in this run") != "trained in this run":
        lines.append(f"Dense twin loaded from `{m['dense_source']}` (`--dense-checkpoint`), not trained in this run.")
    scratch = m.get("scratch_reference")
    if scratch:
        lines.append(f"MoE from scratch for comparison: {100 * scratch['top1']:.2f}% top-1 ({scratch['source']}); "
                     f"this model minus it: {100 * (m['moe']['top1'] - scratch['top1']):+.2f} points.")
    return "\n" + "\n\n".join(lines) + "\n" if lines else ""


def model_card(cfg: ModelConfig, m: dict) -> str:
    usage = m["moe"]["expert_usage"]
    total = sum(usage)
    groups = "\n".join(
        f"| {e} | {', '.join(g)} | {usage[e]} ({100 * usage[e] / total:.1f}%) |" for e, g in enumerate(m["superclasses"])
    )
    return f"""# Model card: {cfg.name}

Mobile V-MoE (per-image routing, arXiv 2309.04354) trained by vmoe-export on {m['dataset']}.

## Produced by

```
{m['command']}
```

## Config

```json
{json.dumps(cfg.to_dict(), indent=2)}
```

Training options: `{json.dumps(m['train_config'])}`

MoE initialisation: {_INIT_TEXT[m.get('moe_init', 'scratch')]}

## Results on the {m['moe']['images']}-image test set

| model | top-1 | params | active params / image |
|---|---|---|---|
| dense twin (same widths, all blocks dense) | {100 * m['dense']['top1']:.2f}% | {m['dense']['params']:,} | {m['dense']['params']:,} |
| Mobile V-MoE (E={cfg.num_experts}, L={cfg.moe_layers}, k={cfg.top_k}) | {100 * m['moe']['top1']:.2f}% | {m['moe']['params']:,} | {m['moe']['active_params']:,} |
{_equal_compute_row(m)}
{_sources_text(m)}
MoE minus dense: {100 * m['moe_minus_dense_top1']:+.2f} points top-1 at equal active FLOPs (the router adds
{cfg.embed_dim * cfg.num_experts + cfg.num_experts + 2 * cfg.embed_dim} parameters).
{_equal_compute_text(m)}

{_inverted_text(cfg, m)}
Router top-1 accuracy against the super-class of the true label: {100 * m['moe']['router_top1_vs_superclass']:.2f}%.

## Super-classes (clustered from the dense model's confusion graph) and expert usage on test

| expert | classes | images routed (top-{cfg.top_k}) |
|---|---|---|
{groups}
"""
