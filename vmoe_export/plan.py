"""The export plan: every decision an export makes, resolved once and checked before any work.

Which targets run (and which are skipped, and why), each backend's typed options, the quantization each
one applies (mode, calibration strategy with `auto` resolved to the backend's measured choice, router
precision), the schedule kind, the parity bounds and the image counts. The API (api.py),
export_bundle and the benchmarks all resolve through these functions; nothing downstream re-decides a
rule: a backend receives a TargetPlan, not a mode string to re-check.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

from .backends import TARGETS, Backend, describe, get_backend
from .config import ModelConfig
from .errors import ConfigError
from .parity import ParityBounds
from .precision import router_apart
from .quantize import QuantOptions
from .schedule import ROUTER, Schedule, ScheduleError, check_kind

FP32_PARITY_IMAGES = 500
QUANTIZED_PARITY_IMAGES = 10_000  # issue 11: at least 2,000; the toy's whole test set
AUTO_SCHEDULE = "auto"


def resolve_schedule(kind: str, top_k: int) -> str:
    """The schedule kind an export uses: auto is fused wherever it is exact (k=1: fp32 and every int8 mode),
    per-layer otherwise; refuses a kind that would not be exact."""
    if kind == AUTO_SCHEDULE:
        return "fused" if top_k == 1 else "per-layer"
    try:
        check_kind(kind, top_k)
    except ScheduleError as e:
        raise ConfigError(str(e)) from None
    return kind


def build_schedule(cfg: ModelConfig, kind: str, quant: QuantOptions) -> Schedule:
    """The schedule of a resolved kind for this model and quantization: a fused int8 bundle keeps an fp32 router
    as a graph of its own, as the per-layer one does."""
    return Schedule.of_kind(kind, cfg.num_experts, cfg.moe_layers, cfg.top_k, router_apart(quant.mode, quant.router))


def choose_schedule(cfg: ModelConfig, requested: str, quant: QuantOptions) -> tuple[Schedule, str]:
    """The schedule an export of `cfg` uses for the requested kind (auto, per-layer, fused), and why."""
    schedule = build_schedule(cfg, resolve_schedule(requested, cfg.top_k), quant)
    return schedule, schedule_reason(requested, cfg, schedule)


def schedule_reason(requested: str, cfg: ModelConfig, schedule: Schedule) -> str:
    """One line for the manifest and the reports: which schedule, chosen how, at what cost in graph calls."""
    calls = f"{schedule.calls_per_image} graph calls per image"
    if schedule.kind == "fused":
        per_layer = Schedule.per_layer(cfg.num_experts, cfg.moe_layers, cfg.top_k).calls_per_image
        calls += f" instead of {per_layer} per-layer"
        if ROUTER in schedule.shared_graphs:
            calls += "; the router is its own graph, as it converts in another precision than the trunk"
    if requested != AUTO_SCHEDULE:
        return f"requested ({requested}): {calls}"
    if schedule.kind == "fused":
        return f"auto: k=1, so fused: {calls}"
    return f"auto: k={cfg.top_k} mixes experts inside every MoE layer, so per-layer, the only exact schedule: {calls}"


def check_golden_images(n) -> None:
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ConfigError(f"golden images must be at least 1 (every bundle self-tests on them), got {n!r}")


def default_bounds(quant: QuantOptions) -> ParityBounds:
    """fp32 is held to float rounding; a quantized bundle to what its mode may cost."""
    return ParityBounds.quantized(quant.mode) if quant.quantized else ParityBounds()


def default_parity_images(quant: QuantOptions) -> int:
    return QUANTIZED_PARITY_IMAGES if quant.quantized else FP32_PARITY_IMAGES


@dataclass(frozen=True)
class TargetPlan:
    """One target, ready to export: its backend, typed options, and the quantization it applies."""

    target: str
    backend: Backend = field(repr=False)
    options: Any  # the backend's own options dataclass
    quant: QuantOptions  # calibration resolved to this backend's choice


def plan_target(target: str, quant: QuantOptions, backend_options: Any = None) -> TargetPlan:
    """Resolve one target; raises (ConfigError, a missing-package error) when it cannot export this."""
    backend = get_backend(target)
    options = backend.make_options(backend_options)
    backend.check_quantization(quant.mode, options)
    return TargetPlan(target, backend, options, quant.for_backend(backend.calibration))


def supports(target: str, mode: str) -> bool:
    return mode in describe(target).quantization


@dataclass(frozen=True)
class ExportPlan:
    targets: tuple[TargetPlan, ...]
    skipped: tuple[tuple[str, str], ...]  # (target, why): `all` skips the targets without the requested mode
    quant: QuantOptions  # as requested (calibration may still be `auto`; each TargetPlan has it resolved)
    schedule: str  # resolved: per-layer or fused
    schedule_reason: str  # why, for people (plan.schedule_reason)
    bounds: ParityBounds
    parity_images: int
    golden_images: int

    @property
    def calibration_strategies(self) -> list[str]:
        """The distinct calibration strategies the targets use: one calibration pass each, shared."""
        return sorted({t.quant.calibration for t in self.targets if t.quant.calibrated})

    def schedule_for(self, cfg: ModelConfig) -> Schedule:
        return build_schedule(cfg, self.schedule, self.quant)


def plan_export(cfg: ModelConfig, targets: str | Sequence[str], quant: QuantOptions | None = None, *,
              schedule: str = AUTO_SCHEDULE, bounds: ParityBounds | None = None, parity_images: int | None = None,
              golden_images: int = 4, backend_options: Mapping[str, Any] | None = None) -> ExportPlan:
    """Validate every choice for `cfg` before any work. `targets`: names, or "all" (every backend; those without
    the quantization mode are skipped and named rather than failing the export)."""
    quant = quant or QuantOptions()
    if not cfg.is_moe:
        raise ConfigError(f"model '{cfg.name}' is dense (moe_layers=0): export an MoE checkpoint (model.pt from "
                          "vmoe-train) or an MoE config")
    every = targets == "all"
    names = list(TARGETS) if every else [targets] if isinstance(targets, str) else list(targets)
    if not names:
        raise ConfigError("no targets: pass one or more of " + ", ".join(TARGETS) + ", or 'all'")
    unknown = [t for t in names if t not in TARGETS]
    if unknown:
        raise ConfigError(f"unknown target(s) {', '.join(map(repr, unknown))}: choose from {', '.join(TARGETS)} or 'all'")
    if len(set(names)) != len(names):
        raise ConfigError(f"target listed twice in {names}: each target is one bundle directory")
    if parity_images is not None and parity_images < 1:
        raise ConfigError("--parity-images must be at least 1: every export is validated")
    check_golden_images(golden_images)
    backend_options = dict(backend_options or {})
    stray = set(backend_options) - set(names)
    if stray:
        raise ConfigError(f"backend options given for {', '.join(sorted(stray))}, which is not being exported")
    chosen, reason = choose_schedule(cfg, schedule, quant)  # refuse fused + k>1 before any work
    plans, skipped = [], []
    for t in names:
        if every and not supports(t, quant.mode):
            skipped.append((t, f"it has no {quant.mode} mode (it supports: {', '.join(get_backend(t).quantization)})"))
            continue
        plans.append(plan_target(t, quant, backend_options.get(t)))  # a missing package fails here, before work
    if not plans:
        raise ConfigError(f"no target offers {quant.mode}")
    return ExportPlan(tuple(plans), tuple(skipped), quant, chosen.kind, reason,
                      bounds or default_bounds(quant), parity_images or default_parity_images(quant), golden_images)
