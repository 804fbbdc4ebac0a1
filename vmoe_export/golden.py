"""Golden vectors: a few test images with the value at every stage, written into every bundle.

Two readers. The apps' core tests reproduce them exactly (so for a quantized bundle the cases hold the
bundle's own outputs on the export machine, and fp32 PyTorch's values apart, under `reference`). The
self-test (selftest.py) runs them on the machine that opens the bundle and compares every stage with fp32
PyTorch within the tolerances recorded here, which this export measured on these very images through
the real runtime (or, where no runtime runs here, the mode's parity floor).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch

from .data import preprocess
from .machine import cpu_info
from .parity import MIN_SNR_DB, reference_traces
from .schedule import Schedule, layer_output
from .split import Graph
from .selftest import GOLDEN_FORMAT, SELF_TEST_MARGIN_DB, pack, self_test

FP32_MIN_ABS_DIFF = 1e-4  # fp32 stages may differ by kernel summation order; never bound tighter than this
FP32_DIFF_FACTOR = 100.0  # ... or than 100x what the export machine measured
OWN_KEYS = ("router_logits", "logits", "experts", "gates")  # stored at the top of a case, as the apps read them


def golden_images(images_u8: torch.Tensor, labels: torch.Tensor, polarity: str) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
    """The golden images: the first test images, and for a dark-background model a photo-like (inverted) copy of
    the first, which every runtime must map back to the first image's input."""
    inverted = [False] * len(images_u8)
    if polarity != "as-is":
        images_u8, labels = torch.cat([images_u8, 255 - images_u8[:1]]), torch.cat([labels, labels[:1]])
        inverted.append(True)
    return images_u8, labels, inverted


def build_golden(model, graphs: list[Graph], schedule: Schedule, cfg, images_u8: torch.Tensor, labels: torch.Tensor,
                 runtime=None, mode: str = "none", target: str = "", min_snr_db: float | None = None) -> dict:
    """The golden payload. `runtime`: the loaded bundle (None where its runtime cannot run here); a quantized
    bundle's cases then hold its own outputs, and the tolerances are measured through it. `min_snr_db`: the SNR
    floor this export's parity applied (None: none), below which no self-test bound is set."""
    images_u8, labels, inverted = golden_images(images_u8, labels, cfg.polarity)
    x = preprocess(images_u8, cfg)
    refs = reference_traces(model, graphs, schedule, x)
    quantized = mode != "none"
    if quantized and runtime is not None:
        own = [_trace(runtime, x[i : i + 1].numpy()) for i in range(len(x))]
        produced_by, run_graph = f"this {target} bundle ({mode})", runtime.run_graph
    else:
        own, produced_by, run_graph = refs, "PyTorch fp32", _torch_runner(graphs)
    cases = []
    for i, (mine, ref) in enumerate(zip(own, refs, strict=True)):
        case = {
            "label": int(labels[i]), "inverted": inverted[i],
            "pixels_u8": images_u8[i].flatten().tolist(),
            "input": [round(float(v), 7) for v in x[i].flatten()],
            "router_logits": _floats(mine["router_logits"]),
            "experts": [int(e) for e in mine["experts"]], "gates": _floats(mine["gates"]),
            "logits": _floats(mine["logits"]), "predicted": int(np.argmax(mine["logits"])),
            "stages": {k: pack(v) for k, v in mine.items() if k not in OWN_KEYS},
        }
        if quantized:
            # Router logits, logits and experts as plain lists, which the app cores read; token tensors packed.
            case["reference"] = {k: ([int(e) for e in v] if k == "experts" else _floats(v) if k in OWN_KEYS else pack(v))
                                 for k, v in ref.items() if k != "gates"}
        cases.append(case)
    golden = {"format": GOLDEN_FORMAT, "shape": [1, cfg.in_chans, cfg.image_size, cfg.image_size],
              "tolerance": 1e-3, "produced_by": produced_by, "cases": cases,
              "combine": _combine_vector(run_graph, schedule, own[0])}
    golden["self_test"] = _tolerances(golden, runtime, mode, [k for k in refs[0] if k not in ("experts", "gates")], min_snr_db)
    return golden


def _tolerances(golden: dict, runtime, mode: str, stages: list[str], floor: float | None) -> dict:
    """Per stage, the bound the self-test holds this bundle to: measured through the runtime on these images
    (fp32: max abs diff and the parity SNR floor; int8: the SNR measured here minus SELF_TEST_MARGIN_DB, never below
    the floor parity applied nor above what was measured), or the mode's parity floor alone where no runtime runs."""
    floor = MIN_SNR_DB[mode] if floor is None and runtime is None else floor
    if runtime is None:
        tol = {s: {"max_abs_diff": None if mode != "none" else 1e-3, "min_snr_db": floor} for s in stages}
        return {"reference": "PyTorch fp32", "measured": False, "machine": None, "stages": tol}
    report = self_test(runtime, {**golden, "self_test": {"stages": {}}})  # no bounds yet: only measure
    tol = {}
    for s in stages:
        if s not in report.stage_snr_db:
            continue
        measured = report.stage_snr_db[s]
        if mode == "none":
            tol[s] = {"max_abs_diff": max(FP32_MIN_ABS_DIFF, FP32_DIFF_FACTOR * report.stage_max_abs_diff[s]),
                      "min_snr_db": None if floor is None else min(floor, measured)}
        else:
            bound = measured - SELF_TEST_MARGIN_DB if floor is None else max(floor, measured - SELF_TEST_MARGIN_DB)
            tol[s] = {"max_abs_diff": None, "min_snr_db": round(min(bound, measured), 2)}
    return {"reference": "PyTorch fp32", "measured": True, "machine": cpu_info(),
            "measured_snr_db": {s: report.stage_snr_db[s] for s in tol}, "stages": tol}


def _trace(runtime, x: np.ndarray) -> dict:
    pred = runtime.predict(x, trace=True)
    return {**pred.trace, "experts": np.asarray(pred.experts), "gates": np.asarray(pred.gates, dtype=np.float32)}


def _torch_runner(graphs: list[Graph]) -> Callable:
    by_name = {g.name: g for g in graphs}

    def run_graph(name: str, *xs: np.ndarray) -> list[np.ndarray]:
        with torch.no_grad():
            return [t.numpy() for t in by_name[name].run(*(torch.from_numpy(np.asarray(v)) for v in xs))]

    return run_graph


def _floats(values) -> list[float]:
    return [float(v) for v in np.asarray(values).reshape(-1)]


def _combine_vector(run_graph: Callable, schedule: Schedule, ref: dict) -> dict | None:
    """The first MoE layer of one image, graph by graph, so the apps can test their gate mixing
    (None for the fused schedule: its graphs mix inside, the cases' logits test them)."""
    if not schedule.moe_layers:
        return None
    layer = schedule.moe_layers[0]
    attn_out, hidden = run_graph(layer.attention, ref["tokens"])
    outs = [run_graph(layer.experts[int(e)], hidden)[0] for e in ref["experts"]]
    return {"layer": layer.layer, "experts": [int(e) for e in ref["experts"]], "gates": _floats(ref["gates"]),
            "attention_out": _floats(attn_out), "expert_outs": [_floats(o) for o in outs],
            "expected": _floats(ref[layer_output(layer.layer)])}

