"""Checkpoint -> split -> one backend's artifacts -> manifest -> parity -> published bundle.

With QuantOptions.mode other than "none", each graph is converted in that mode by its backend's
official flow, static-int8 graphs calibrated on training images as quantize.plan lays out, and
parity bounds what quantization may cost (accuracy, routing) instead of float rounding.

A bundle is built in a hidden temp directory next to its destination and renamed into place
only after parity passes, so an interrupted or failed export never leaves a directory that
looks like a complete bundle. A bundle that fails parity is kept as <target>.rejected/ for
inspection.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import time
import uuid
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Mapping

import torch
from tqdm import tqdm

from . import __version__, interrupt
from .backends import Backend, get_backend
from .bundle import DIGEST, GOLDEN, MANIFEST, SCHEMA, SCHEMA_VERSION, manifest_digest, sha256_of, size_of
from .checkpoint import Checkpoint, atomic_write_bytes
from .data import preprocess
from .errors import ConfigError
from .flops import count_flops
from .golden import build_golden
from .machine import cpu_info
from .manifest import preprocessing_block, superclass_names
from .model import count_params
from .parity import ParityBounds, ParityError, check_bundle, format_report, reject_path, verify_specs
from .quantize import FP32, GraphQuant, QuantOptions
from .quantize import plan as quantize_plan
from .runtime import BundleRuntime
from .schedule import Schedule, artifact_relpath
from .split import Graph, split_model


FP32_PARITY_IMAGES = 500
QUANTIZED_PARITY_IMAGES = 10_000  # issue 11: at least 2,000; the toy's whole test set


@dataclass
class ExportOptions:
    parity_images: int | None = None  # None: FP32_PARITY_IMAGES, or QUANTIZED_PARITY_IMAGES when quantized
    bounds: ParityBounds | None = None  # None: ParityBounds() for fp32, ParityBounds.quantized(mode) when quantized
    quant: QuantOptions = field(default_factory=QuantOptions)
    # "per-layer" (exact for every k), "fused" (k=1: three graph calls per image instead of 3 + 2L) or "auto": fused
    # where it is exact and the bundle is fp32 (the fused graphs have no int8 path yet), per-layer otherwise
    schedule: str = "per-layer"
    golden_images: int = 4  # at least 1: every bundle carries golden vectors for its self-test
    progress: bool = True
    # Per-target backend options (e.g. {"coreml": CoreMLOptions(compress="palettize4")}); a target without
    # an entry uses its backend's defaults.
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    # Reuse converted graphs across exports (e.g. the same model at k=1 and k=2, whose graphs are identical):
    # artifacts are stored under this directory by a key over the graph's weights, tensors, backend, backend
    # options and tool versions. None converts every graph.
    artifact_cache: Path | None = None
    # What the test images are, recorded in the manifest (synthetic images say: latency only, not accuracy).
    eval_data: Mapping[str, str] = field(default_factory=lambda: {"kind": "unspecified",
                                                                  "description": "images passed to export_bundle"})

    def __post_init__(self) -> None:
        if isinstance(self.golden_images, bool) or not isinstance(self.golden_images, int) or self.golden_images < 1:
            raise ConfigError(f"golden images must be at least 1 (every bundle self-tests on them), got {self.golden_images!r}")

    def parity_bounds(self) -> ParityBounds:
        if self.bounds is not None:
            return self.bounds
        return ParityBounds.quantized(self.quant.mode) if self.quant.quantized else ParityBounds()

    def n_parity_images(self) -> int:
        if self.parity_images is not None:
            return self.parity_images
        return QUANTIZED_PARITY_IMAGES if self.quant.quantized else FP32_PARITY_IMAGES


def quantization_block(options: QuantOptions, calibration_images: int) -> dict:
    if not options.quantized:
        return {"mode": "none"}
    block = {"mode": options.mode, "router": options.router}
    if options.calibrated:
        block["calibration"] = {"images": calibration_images, "strategy": options.calibration,
                                "min_samples": options.min_samples, "source": "training split (never the parity images)"}
    return block


def build_manifest(ckpt: Checkpoint, target: str, schedule: Schedule, entries: dict, backend: Backend,
                   backend_options: Any, options: ExportOptions, calibration_images: int = 0) -> dict:
    cfg = ckpt.config
    groups = superclass_names(list(ckpt.class_names), ckpt.superclass_of, cfg.num_experts)
    params = {name: e["params"] for name, e in entries.items()}
    sizes = {name: e["size_bytes"] for name, e in entries.items()}
    return {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "target": target,
        "created_by": {"vmoe_export": __version__, **backend.versions()},
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "backend_options": asdict(backend_options),
        "quantization": quantization_block(options.quant, calibration_images),
        "model": {
            "name": cfg.name, "config": cfg.to_dict(), "num_experts": cfg.num_experts,
            "moe_layers": cfg.moe_layers, "top_k": cfg.top_k, "num_classes": cfg.num_classes,
            "params_total": int(schedule.total(params)),
            "params_active": int(schedule.active(params)),
        },
        "preprocessing": preprocessing_block(cfg),
        "class_names": list(ckpt.class_names),
        "superclass_of_class": ckpt.superclass_of,
        "experts": [
            {"id": e, "superclass": groups[e], "graphs": schedule.expert_graphs(e),
             "size_bytes": int(schedule.expert_total(sizes, e))}
            for e in range(cfg.num_experts)
        ],
        "schedule": {"kind": schedule.kind, "batch_size": 1, "steps": schedule.to_json()},
        "graphs": entries,
        "golden": None,  # written after parity, with golden_sha256
        "golden_sha256": None,
        "eval_data": dict(options.eval_data),
    }


def _write_json(path: Path, data) -> bytes:
    raw = (json.dumps(data, indent=1) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(raw))
    return raw


PARTIAL = ".partial."  # .<target>.partial.<random>/ : a bundle being built
OWNER = ".owner.json"  # inside a partial directory: which process builds it


def _process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux), to tell a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def _claim(partial: Path) -> None:
    owner = {"pid": os.getpid(), "start": _process_start(os.getpid()), "host": socket.gethostname()}
    (partial / OWNER).write_text(json.dumps(owner))


def _is_dead(partial: Path) -> bool:
    """True only when the directory's owner file proves its exporter is gone: same host, and no process
    with that pid and start time. Anything unreadable or ambiguous counts as alive."""
    try:
        owner = json.loads((partial / OWNER).read_text())
        pid, start, host = int(owner["pid"]), owner["start"], owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start is not None and _process_start(pid) not in (None, start)


def remove_dead_partials(out_dir: Path, log=print) -> list[Path]:
    """Remove partial bundles left in out_dir by exports that were killed (SIGKILL, power loss). Only
    `.<target>.partial.*` directories whose owner file names a process that no longer runs."""
    removed = []
    for d in Path(out_dir).glob(f".*{PARTIAL}*"):
        if d.is_dir() and not d.is_symlink() and _is_dead(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log(f"removed {d.name}: left by an export that no longer runs")
    return removed


def artifact_key(graph: Graph, backend: Backend, backend_options: Any, quant: GraphQuant = FP32) -> str:
    """Identifies a converted artifact: the graph's code path (role), tensors and weights, the backend, its
    options, the quantization (mode and calibration data) and the tool versions. Two graphs with the same key
    convert to the same artifact."""
    import hashlib

    # A module that runs a schedule (the baselines) computes differently for another k: its schedule is part of it.
    schedule = repr(getattr(graph.module, "schedule", None))
    h = hashlib.sha256(json.dumps({"role": graph.role, "schedule": schedule, "io": repr(graph.io()), "backend": backend.name,
                                   "options": repr(backend_options), "quant": quant.key(), "versions": backend.versions(),
                                   "vmoe_export": __version__}, sort_keys=True).encode())
    for name, t in sorted(graph.module.state_dict().items()):
        t = t.detach().contiguous()
        h.update(f"{name}{tuple(t.shape)}{t.dtype}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def convert(graph: Graph, backend: Backend, backend_options: Any, path: Path, cache: Path | None,
            quant: GraphQuant = FP32) -> None:
    """Write one graph's artifact to `path`: from the cache when it holds the same key, else by converting
    (and then filling the cache, atomically)."""
    if cache is None:
        backend.export(graph, path, backend_options, quant)
        return
    cached = Path(cache) / f"{artifact_key(graph, backend, backend_options, quant)}{backend.suffix}"
    if not cached.exists():
        Path(cache).mkdir(parents=True, exist_ok=True)
        tmp = cached.with_name(f".{cached.name}.{uuid.uuid4().hex[:8]}")
        backend.export(graph, tmp, backend_options, quant)
        os.replace(tmp, cached) if tmp.is_file() else tmp.rename(cached)
    if cached.is_dir():
        shutil.copytree(cached, path)
    else:
        shutil.copyfile(cached, path)


def check_output_dir(out_dir: Path) -> Path:
    """Refuse an output path that is, or lies below, a regular file: before any work is done."""
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == out_dir else f"lies below the file {p}"
                raise FileExistsError(f"--output {out_dir} {where}: pass a directory (each target goes to OUTPUT/<target>/)")
            break
    return out_dir


def export_bundle(ckpt: Checkpoint, target: str, out_dir: Path, test_images: torch.Tensor, test_labels: torch.Tensor,
                  options: ExportOptions | None = None, log=print, calibration_images: torch.Tensor | None = None,
                  plan: dict[str, GraphQuant] | None = None) -> tuple[Path, dict]:
    """Export one target; returns (bundle dir, parity report). Raises ParityError on a parity failure.
    static-int8 needs `calibration_images` (uint8, from the training split) or a `plan` made by
    quantize.plan (pass one to reuse a calibration across targets)."""
    options = options or ExportOptions()
    backend = get_backend(target)
    backend_options = backend.make_options(options.backend_options.get(target))
    backend.check_quantization(options.quant.mode, backend_options)
    options = replace(options, quant=options.quant.for_backend(backend.calibration))
    model = ckpt.build_model()
    schedule = model.schedule_of(resolve_schedule(options.schedule, ckpt.config.top_k, options.quant))
    graphs = split_model(model, schedule)
    if plan is None:
        plan = make_plan(ckpt, graphs, schedule, options.quant, calibration_images, log)
    n_calibration = 0 if calibration_images is None else min(len(calibration_images), options.quant.calibration_images)
    out_dir = check_output_dir(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    remove_dead_partials(out_dir, log)
    final = out_dir / target
    tmp = Path(tempfile.mkdtemp(prefix=f".{target}{PARTIAL}", dir=out_dir))
    try:
        _claim(tmp)
        t0 = time.time()
        entries = {}
        for g in tqdm(graphs, desc=f"export {target}", disable=not options.progress or None, leave=False):
            interrupt.check()
            rel = artifact_relpath(g.spec, backend.suffix)
            path = tmp / rel
            path.parent.mkdir(parents=True, exist_ok=True)
            quant = plan[g.name]
            convert(g, backend, backend_options, path, options.artifact_cache, quant)
            io = g.io()
            entries[g.name] = {
                "path": rel, "role": g.role, "layer": g.spec.layer, "expert": g.spec.expert,
                "sha256": sha256_of(path), "size_bytes": size_of(path),
                "quantization": {"mode": quant.mode, "calibration": quant.calibration},
                "inputs": [t.to_json() for t in io.inputs], "outputs": [t.to_json() for t in io.outputs],
                "flops": count_flops(g.module, tuple(g.inputs.values())), "params": count_params(g.module),
            }
        manifest = build_manifest(ckpt, target, schedule, entries, backend, backend_options, options, n_calibration)
        manifest["export_seconds"] = round(time.time() - t0, 2)
        _write_json(tmp / MANIFEST, manifest)

        report, runtime = _parity(backend, tmp, manifest, model, graphs, ckpt, test_images, test_labels, options)
        report["data"] = options.eval_data["description"]
        report["machine"] = cpu_info()  # int8 kernels (and so these figures) depend on the CPU: say which
        n = options.golden_images
        golden = build_golden(model, graphs, schedule, ckpt.config, test_images[:n], test_labels[:n], runtime,
                              options.quant.mode, target, options.parity_bounds().min_snr_db)
        if options.quant.quantized and runtime is None:
            log(f"{target}: golden vectors are PyTorch fp32 values: this quantized bundle cannot run here "
                "to record its own (the apps' exact checks need a bundle exported where it runs)")
        raw = _write_json(tmp / GOLDEN, golden)
        manifest.update(golden=GOLDEN, golden_sha256=manifest_digest(raw), parity=report)
        data = _write_json(tmp / MANIFEST, manifest)
        atomic_write_bytes(tmp / DIGEST, lambda f: f.write((manifest_digest(data) + "\n").encode()))
        log(format_report(target, report))
        interrupt.check()  # never publish after a stop request, even one an exception handler swallowed
        (tmp / OWNER).unlink()
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


def _parity(backend, bundle_dir: Path, manifest: dict, model, graphs, ckpt, images_u8, labels, options
            ) -> tuple[dict, BundleRuntime | None]:
    reason = backend.runtime_unavailable()
    if reason:
        return verify_specs(backend, bundle_dir, manifest, reason), None
    n = min(options.n_parity_images(), len(images_u8))
    x = preprocess(images_u8[:n], ckpt.config)
    runtime = BundleRuntime(bundle_dir, require_parity=False, self_test=False)  # no parity or golden yet
    labelled = options.eval_data["kind"] != "synthetic"  # noise images have no labels: accuracy would mean nothing
    return check_bundle(runtime, model, graphs, x, labels[:n], options.parity_bounds(), options.progress, labelled), runtime


def resolve_schedule(kind: str, top_k: int, quant: QuantOptions) -> str:
    """The schedule kind an export uses; refuses the combinations that would not be exact or not supported."""
    if kind == "auto":
        return "fused" if top_k == 1 and not quant.quantized else "per-layer"
    if kind == "fused" and quant.quantized:
        raise ConfigError("--schedule fused exports fp32 only in this version (its graphs hold the router and the "
                          "MoE attention, which the int8 paths calibrate per layer); use --schedule per-layer or auto")
    if kind == "fused" and top_k != 1:
        raise ConfigError(f"--schedule fused is exact only for top_k=1 (this model routes to {top_k} experts, mixed "
                          "inside every MoE layer); use --schedule per-layer or auto")
    if kind not in ("per-layer", "fused"):
        raise ConfigError(f"unknown schedule {kind!r}: use auto, per-layer or fused")
    return kind


def make_plan(ckpt: Checkpoint, graphs: list[Graph], schedule: Schedule, quant: QuantOptions,
              calibration_images: torch.Tensor | None, log=print) -> dict[str, GraphQuant]:
    """Each graph's quantization; static-int8 calibrates on `calibration_images` (uint8 N,C,H,W)."""
    x = None
    if quant.calibrated and calibration_images is not None:
        x = preprocess(calibration_images[: quant.calibration_images], ckpt.config)
    return quantize_plan(graphs, schedule, quant, x, log)


def _publish(tmp: Path, final: Path) -> None:
    """Swap the finished bundle into place; the old one is removed only after the rename."""
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{uuid.uuid4().hex[:8]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
