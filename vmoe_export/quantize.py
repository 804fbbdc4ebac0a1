"""Quantization plans: which mode each graph is converted in, and the calibration inputs each one sees.

The modes carry the ecosystem's names; every backend maps them to its own official flow (see the
backend modules) and declares which it supports:

    dynamic-int8  int8 weights, activations quantized on the fly per call (no calibration)
    static-int8   int8 weights and activations, activation ranges from calibration data (W8A8)
    weight-int8   int8 weights, float compute (smaller files, no int8 kernels)

Calibration respects routing. Trunk, router, shared attention and head see every calibration
image; an expert graph sees only the inputs of the images the fp32 model routes to that expert, the
distribution it meets on device: a per-layer expert their hidden states at its layer, a fused expert
path (k=1) their tokens and gate. An expert routed fewer than `min_samples` images
falls back to every image's input at its step, and the plan says so.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import torch

from .errors import ConfigError
from .precision import CALIBRATION, MODES, ROUTER_PRECISION, Calibration, Mode, RouterPrecision, graph_mode  # noqa: F401 (re-exported)
from .schedule import ExpertPath, MoELayer, Schedule, execute
from .split import Graph, torch_select
from .tensor_digest import update_tensors



@dataclass(frozen=True)
class QuantOptions:
    mode: str = Mode.NONE
    calibration_images: int = 256  # drawn from the training split, never the parity images
    calibration: str = Calibration.AUTO  # routed: each expert on its routed images; all: every expert on every image
    min_samples: int = 16  # fewer routed calibration images than this: the expert calibrates on all images
    # The router decides which experts run; a quantized router can flip them. fp32 was chosen from the
    # routing-agreement ablation in benchmarks/results/quantization.md.
    router: str = RouterPrecision.FP32

    def __post_init__(self) -> None:
        for name, value, allowed in (("quantize", self.mode, MODES), ("calibration", self.calibration, CALIBRATION),
                                     ("router precision", self.router, ROUTER_PRECISION)):
            if value not in allowed:
                raise ConfigError(f"unknown {name} '{value}'; choose one of: {', '.join(allowed)}")
        if self.calibration_images < 1 or self.min_samples < 1:
            raise ConfigError("--calibration-images and --min-calibration-samples must be at least 1")

    def for_backend(self, default_calibration: str) -> "QuantOptions":
        """These options with 'auto' calibration resolved to the backend's own default."""
        from dataclasses import replace

        return replace(self, calibration=default_calibration) if self.calibration == Calibration.AUTO else self

    @property
    def quantized(self) -> bool:
        return self.mode != Mode.NONE

    @property
    def calibrated(self) -> bool:
        return self.mode == Mode.STATIC_INT8


@dataclass(frozen=True)
class GraphQuant:
    """How one graph is converted. `samples`: calibration inputs, one tuple per sample (batch 1)."""

    mode: str = Mode.NONE
    samples: tuple[tuple[torch.Tensor, ...], ...] = field(default=(), repr=False, compare=False)
    calibration: dict | None = None  # what the manifest records: {"source": ..., "samples": n}

    def key(self) -> str:
        """Identifies the conversion for the artifact cache: the mode and the calibration data itself."""
        h = hashlib.sha256(self.mode.encode())
        update_tensors(h, ((f"{i}.{j}", t) for i, sample in enumerate(self.samples) for j, t in enumerate(sample)))
        return h.hexdigest()


FP32 = GraphQuant()


@torch.no_grad()
def record_inputs(graphs: list[Graph], schedule: Schedule, images: torch.Tensor) -> tuple[dict, dict]:
    """Run the fp32 split on each image (batch 1, as on device) and record every graph's inputs as it is
    called: routed experts (per-layer expert graphs, or fused expert paths) receive only their images. Also
    returns, per expert graph, the input every image brings to that expert's step (a per-layer expert: the
    hidden state of its layer's attention; a fused path: the tokens and gate the routed path received), the
    fallback calibration set."""
    by_name = {g.name: g for g in graphs}
    seen: dict[str, list[tuple[torch.Tensor, ...]]] = {g.name: [] for g in graphs}
    step_of = {g: s for s in schedule.steps if isinstance(s, (MoELayer, ExpertPath)) for g in s.experts}
    attention_step = {s.attention: s for s in schedule.steps if isinstance(s, MoELayer)}
    step_inputs: dict = {s: [] for s in set(step_of.values())}  # an expert step -> every image's input to it

    def run(name, *xs):
        recorded = tuple(x.clone() for x in xs)
        seen[name].append(recorded)
        if isinstance(step_of.get(name), ExpertPath):  # a fused path's input is the step's input
            step_inputs[step_of[name]].append(recorded)
        outs = by_name[name].run(*xs)
        if name in attention_step:  # a per-layer expert's input is its layer's hidden state
            step_inputs[attention_step[name]].append((outs[1].clone(),))
        return outs

    select = torch_select(schedule.top_k)
    for b in range(images.shape[0]):
        execute(schedule, run, select, images[b : b + 1])
    return seen, {g: step_inputs[s] for g, s in step_of.items()}


def plan(graphs: list[Graph], schedule: Schedule, options: QuantOptions, calibration: torch.Tensor | None,
         log=print) -> dict[str, GraphQuant]:
    """Each graph's GraphQuant. `calibration`: preprocessed calibration images (N,C,H,W); required for
    static-int8."""
    if not options.quantized:
        return {g.name: FP32 for g in graphs}
    mode_of = {g.name: graph_mode(options.mode, options.router, g.role) for g in graphs}
    if not options.calibrated:
        return {g.name: GraphQuant(mode_of[g.name]) for g in graphs}
    if options.calibration == Calibration.AUTO:
        raise ValueError("resolve 'auto' calibration with QuantOptions.for_backend before planning")
    if calibration is None or len(calibration) == 0:
        raise ConfigError("static-int8 needs calibration images (from the training split)")
    seen, every_image = record_inputs(graphs, schedule, calibration)
    out = {}
    for g in graphs:
        if mode_of[g.name] == Mode.NONE:
            out[g.name] = FP32
            continue
        samples, source = seen[g.name], "all-images"
        if g.role == "expert":
            if options.calibration == Calibration.ALL:
                samples, source = every_image[g.name], "all-images (ablation: every expert on every image)"
            elif len(samples) >= options.min_samples:
                source = "routed"
            else:
                log(f"calibration: {g.name} was routed {len(samples)} of {len(calibration)} calibration images "
                    f"(< {options.min_samples}); it calibrates on all {len(calibration)} images at its step instead")
                source = f"all-images (fallback: only {len(samples)} routed, minimum {options.min_samples})"
                samples = every_image[g.name]
        out[g.name] = GraphQuant(mode_of[g.name], tuple(samples), {"source": source, "samples": len(samples)})
    return out
