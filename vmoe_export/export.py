"""Checkpoint -> split -> one backend's artifacts -> manifest -> parity -> published bundle.

A bundle is built in a hidden temp directory next to its destination and renamed into place
only after parity passes, so an interrupted or failed export never leaves a directory that
looks like a complete bundle. A bundle that fails parity is kept as <target>.rejected/ for
inspection.
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm import tqdm

from . import __version__
from .backends import get_backend
from .bundle import MANIFEST, SCHEMA, SCHEMA_VERSION, safe_join, sha256_of, size_of
from .checkpoint import Checkpoint, atomic_write_bytes
from .data import preprocess
from .flops import count_flops
from .model import count_params
from .parity import ParityBounds, ParityError, check_bundle, format_report, reference_trace, reject_path
from .runtime import BundleRuntime
from .split import Graph, split_model


@dataclass
class ExportOptions:
    parity_images: int = 500
    bounds: ParityBounds = field(default_factory=ParityBounds)
    coreml_compress: str = "none"  # none | int8 | palettize4
    coreml_fp16: bool = False
    golden_images: int = 4
    progress: bool = True

    def backend_options(self) -> dict:
        return {"coreml_compress": self.coreml_compress, "coreml_fp16": self.coreml_fp16}


def artifact_relpath(graph: Graph, suffix: str) -> str:
    if graph.role == "expert":
        return f"experts/e{graph.expert}/moe{graph.layer}{suffix}"
    return f"shared/{graph.name}{suffix}"


def _tensor_spec(name: str, t: torch.Tensor) -> dict:
    return {"name": name, "shape": list(t.shape), "dtype": "float32"}


def build_manifest(ckpt: Checkpoint, target: str, graphs: list[Graph], entries: dict, versions: dict,
                   options: ExportOptions) -> dict:
    cfg = ckpt.config
    groups = [[ckpt.class_names[c] for c, sc in enumerate(ckpt.superclass_of or []) if sc == e]
              for e in range(cfg.num_experts)]
    shared = [g.name for g in graphs if g.role != "expert"]
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "created_by": {"vmoe_export": __version__, **versions},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "model": {
            "name": cfg.name, "config": cfg.to_dict(), "num_experts": cfg.num_experts,
            "moe_layers": cfg.moe_layers, "top_k": cfg.top_k, "num_classes": cfg.num_classes,
            "params_total": sum(e["params"] for e in entries.values()),
            "params_active": sum(entries[n]["params"] for n in shared)
            + cfg.top_k * sum(entries[f"moe{layer}_e0"]["params"] for layer in range(cfg.moe_layers)),
        },
        "preprocessing": {
            "image_size": cfg.image_size, "channels": cfg.in_chans,
            "color": "grayscale" if cfg.in_chans == 1 else "rgb",
            "resize": "scale shorter side to image_size (bilinear), centre crop",
            "layout": "NCHW", "scale": 1 / 255, "mean": list(cfg.mean), "std": list(cfg.std),
            "formula": "x = (pixel / 255 - mean[c]) / std[c]",
        },
        "class_names": list(ckpt.class_names),
        "superclass_of_class": ckpt.superclass_of,
        "experts": [
            {"id": e, "superclass": groups[e], "graphs": [f"moe{layer}_e{e}" for layer in range(cfg.moe_layers)],
             "size_bytes": sum(entries[f"moe{layer}_e{e}"]["size_bytes"] for layer in range(cfg.moe_layers))}
            for e in range(cfg.num_experts)
        ],
        "schedule": {
            "steps": (["trunk: images -> tokens", "router: tokens -> router_logits",
                       "select: probs = softmax(router_logits); experts = top_k(probs) (ties: lower id); "
                       "gates = probs[experts] (not renormalised)"]
                      + [f"moe{layer}_attn: tokens -> tokens_out, hidden; then tokens = tokens_out + "
                         f"sum_j gates[j] * moe{layer}_e{{experts[j]}}(hidden)" for layer in range(cfg.moe_layers)]
                      + ["head: tokens -> logits"]),
            "shared_graphs": shared,
            "expert_graph_pattern": "moe{layer}_e{expert}",
            "batch_size": 1,
        },
        "graphs": entries,
        "golden": "golden/golden.json" if options.golden_images else None,
    }


def write_golden(path: Path, model, ckpt: Checkpoint, images_u8: torch.Tensor, labels: torch.Tensor) -> None:
    """A few test images with PyTorch's value at every stage: the apps' core tests check against these."""
    cfg = ckpt.config
    x = preprocess(images_u8, cfg.mean, cfg.std)
    ref = reference_trace(model, x)
    probs = torch.softmax(torch.from_numpy(ref["router_logits"]), -1)
    cases = []
    for i in range(len(images_u8)):
        experts = ref["experts"][i].tolist()
        cases.append({
            "label": int(labels[i]),
            "pixels_u8": images_u8[i].flatten().tolist(),
            "input": [round(float(v), 7) for v in x[i].flatten()],
            "router_logits": [float(v) for v in ref["router_logits"][i]],
            "experts": experts,
            "gates": [float(probs[i, e]) for e in experts],
            "logits": [float(v) for v in ref["logits"][i]],
            "predicted": int(ref["logits"][i].argmax()),
        })
    payload = {"shape": [1, cfg.in_chans, cfg.image_size, cfg.image_size], "tolerance": 1e-3, "cases": cases,
               "combine": _combine_vector(model, x[:1])}
    _write_json(path, payload)


@torch.no_grad()
def _combine_vector(model, image: torch.Tensor) -> dict:
    """First MoE layer of one image, stage by stage, so the apps can test their gate mixing."""
    from .model import route

    tokens = model.trunk(image)
    gates, experts = route(model.router(tokens), model.cfg.top_k)
    blk = model.moe_blocks[0]
    attn_out, hidden = blk.attend(tokens)
    outs = [blk.experts[int(e)](hidden) for e in experts[0]]
    mixed = blk(tokens, gates, experts)
    flat = lambda t: [float(v) for v in t.flatten()]  # noqa: E731
    return {"layer": 0, "experts": experts[0].tolist(), "gates": flat(gates[0]), "attention_out": flat(attn_out),
            "expert_outs": [flat(o) for o in outs], "expected": flat(mixed)}


def _write_json(path: Path, data) -> None:
    atomic_write_bytes(path, lambda f: f.write((json.dumps(data, indent=1) + "\n").encode()))


def export_bundle(ckpt: Checkpoint, target: str, out_dir: Path, test_images: torch.Tensor, test_labels: torch.Tensor,
                  options: ExportOptions | None = None, log=print) -> tuple[Path, dict]:
    """Export one target; returns (bundle dir, parity report). Raises ParityError on a parity failure."""
    options = options or ExportOptions()
    backend = get_backend(target)
    model = ckpt.build_model()
    graphs = split_model(model)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    final = out_dir / target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target}.partial.", dir=out_dir))
    try:
        t0 = time.time()
        entries = {}
        for g in tqdm(graphs, desc=f"export {target}", disable=not options.progress or None, leave=False):
            rel = artifact_relpath(g, backend.suffix)
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            backend.export(g, path, options.backend_options())
            example = tuple(g.inputs.values())
            with torch.no_grad():
                outs = g.run(*example)
            entries[g.name] = {
                "path": rel, "role": g.role, "layer": g.layer, "expert": g.expert,
                "sha256": sha256_of(path), "size_bytes": size_of(path),
                "inputs": [_tensor_spec(n, t) for n, t in g.inputs.items()],
                "outputs": [_tensor_spec(n, t) for n, t in zip(g.outputs, outs)],
                "flops": count_flops(g.module, example), "params": count_params(g.module),
            }
        manifest = build_manifest(ckpt, target, graphs, entries, backend.versions(), options)
        manifest["export_seconds"] = round(time.time() - t0, 2)
        if options.golden_images:
            n = options.golden_images
            write_golden(tmp / "golden" / "golden.json", model, ckpt, test_images[:n], test_labels[:n])
        _write_json(tmp / MANIFEST, manifest)

        report = _parity(backend, tmp, manifest, model, ckpt, test_images, test_labels, options)
        manifest["parity"] = report
        _write_json(tmp / MANIFEST, manifest)
        log(format_report(target, report))
        if report["status"] == "fail":
            rejected = reject_path(out_dir, target)
            shutil.rmtree(rejected, ignore_errors=True)
            tmp.rename(rejected)
            raise ParityError(f"{target} bundle failed parity ({'; '.join(report['failures'])}); "
                              f"kept for inspection in {rejected}, nothing was published to {final}")
        _publish(tmp, final)
        return final, report
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _parity(backend, bundle_dir: Path, manifest: dict, model, ckpt, images_u8, labels, options) -> dict:
    reason = backend.runtime_unavailable()
    if reason:
        # No runtime here: check every artifact's structure against the manifest instead.
        for entry in manifest["graphs"].values():
            if backend.check_artifact:
                backend.check_artifact(safe_join(bundle_dir, entry["path"]), entry)
        return {"status": "skipped", "reason": reason, "spec_verified_graphs": len(manifest["graphs"])}
    n = min(options.parity_images, len(images_u8))
    x = preprocess(images_u8[:n], ckpt.config.mean, ckpt.config.std)
    runtime = BundleRuntime(bundle_dir)
    return check_bundle(runtime, model, x, labels[:n], options.bounds, options.progress)


def _publish(tmp: Path, final: Path) -> None:
    """Swap the finished bundle into place; the old one is removed only after the rename."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{uuid.uuid4().hex[:8]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
