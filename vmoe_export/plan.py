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
from .quantize import QuantOptions
from .schedule import ScheduleError, check_kind

FP32_PARITY_IMAGES = 500
QUANTIZED_PARITY_IMAGES = 10_000  # issue 11: at least 2,000; the toy's whole test set
AUTO_SCHEDULE = "auto"


def resolve_schedule(kind: str, top_k: int, quant: QuantOptions) -> str:
    """The schedule kind an export uses; refuses the combinations that would not be exact or not supported."""
    if kind == AUTO_SCHEDULE:
        return "fused" if top_k == 1 and not quant.quantized else "per-layer"
    try:
        check_kind(kind, top_k)
    except ScheduleError as e:
        raise ConfigError(str(e)) from None
    if kind == "fused" and quant.quantized:
        raise ConfigError("--schedule fused exports fp32 only in this version (its graphs hold the router and the "
                          "MoE attention, which the int8 paths calibrate per layer); use --schedule per-layer or auto")
    return kind


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
    bounds: ParityBounds
    parity_images: int
    golden_images: int

    @property
    def calibration_strategies(self) -> list[str]:
        """The distinct calibration strategies the targets use: one calibration pass each, shared."""
        return sorted({t.quant.calibration for t in self.targets if t.quant.calibrated})


def plan_export(cfg: ModelConfig, targets: str | Sequence[str], quant: QuantOptions | None = None, *,
              schedule: str = "per-layer", bounds: ParityBounds | None = None, parity_images: int | None = None,
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
    kind = resolve_schedule(schedule, cfg.top_k, quant)  # refuse fused + k>1 or int8 before any work
    plans, skipped = [], []
    for t in names:
        if every and not supports(t, quant.mode):
            skipped.append((t, f"it has no {quant.mode} mode (it supports: {', '.join(get_backend(t).quantization)})"))
            continue
        plans.append(plan_target(t, quant, backend_options.get(t)))  # a missing package fails here, before work
    if not plans:
        raise ConfigError(f"no target offers {quant.mode}")
    return ExportPlan(tuple(plans), tuple(skipped), quant, kind,
                      bounds or default_bounds(quant), parity_images or default_parity_images(quant), golden_images)
