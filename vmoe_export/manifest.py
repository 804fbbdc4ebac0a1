"""The bundle manifest's schema and its consistency rules.

Two layers, both run before any artifact is opened:

1. Types and bounds (pydantic, strict): every field has its JSON type (no "1" for 1, no 1.0 for
   an integer), counts and sizes are bounded, unknown keys are refused.
2. Cross-checks: everything that follows from the embedded model config must equal what the
   manifest says. E, L, k and class count; the schedule; every graph's role, path, and input and
   output shapes; the preprocessing block; the expert table; parameter totals; the parity result.
   A one-field edit therefore cannot change an answer: it is refused, or it touches a field no
   answer depends on. The file checksums tie artifacts to the manifest, and a pinned manifest
   digest (bundle.read_manifest(expect_digest=...)) ties the manifest to what was exported.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints, ValidationError

from . import shared_weights
from .errors import BundleError, ConfigError
from .config import LIMITS, POLARITIES, ModelConfig
from .precision import MODES, ROUTER_PRECISION, graph_mode, router_apart
from .schedule import KINDS, ROLES, Schedule, ScheduleError, artifact_relpath

MAX_GRAPHS = 4096
GOLDEN = "golden/golden.json"  # where every bundle keeps its golden vectors
MAX_NAME = 256

Name = Annotated[str, StringConstraints(min_length=1, max_length=MAX_NAME)]
Count = Annotated[int, Field(ge=0, le=2**62)]
Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$")]


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class TensorSpec(_Strict):
    name: Name
    shape: Annotated[list[Annotated[int, Field(ge=1, le=2**31)]], Field(min_length=1, max_length=8)]
    dtype: Literal["float32"]


class Calibration(_Strict):
    source: Annotated[str, StringConstraints(max_length=MAX_NAME)]
    samples: Annotated[int, Field(ge=1, le=2**31)]


class GraphQuantization(_Strict):
    mode: Literal[MODES]  # type: ignore[valid-type]
    calibration: Calibration | None


class GraphEntry(_Strict):
    path: Annotated[str, StringConstraints(min_length=1, max_length=1024)]
    role: Literal[ROLES]  # type: ignore[valid-type]
    layer: Annotated[int, Field(ge=0, le=1024)] | None
    expert: Annotated[int, Field(ge=0, le=1024)] | None
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=1, le=2**40)]
    inputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=8)]
    outputs: Annotated[list[TensorSpec], Field(min_length=1, max_length=8)]
    flops: Count
    params: Count
    quantization: GraphQuantization | None = None  # absent in bundles written before quantization existed


class ModelBlock(_Strict):
    name: Annotated[str, StringConstraints(max_length=MAX_NAME)]
    config: dict[str, Any]
    num_experts: Annotated[int, Field(ge=1, le=256)]
    moe_layers: Annotated[int, Field(ge=1, le=64)]
    top_k: Annotated[int, Field(ge=1, le=256)]
    num_classes: Annotated[int, Field(ge=2, le=100_000)]
    params_total: Count
    params_active: Count


class Preprocessing(_Strict):
    image_size: Annotated[int, Field(ge=1, le=LIMITS["image_size"])]
    channels: Annotated[int, Field(ge=1, le=LIMITS["in_chans"])]
    color: Literal["grayscale", "rgb"]
    resize: Annotated[str, StringConstraints(max_length=MAX_NAME)]
    layout: Literal["NCHW"]
    scale: float
    mean: Annotated[list[float], Field(min_length=1, max_length=LIMITS["in_chans"])]
    std: Annotated[list[float], Field(min_length=1, max_length=LIMITS["in_chans"])]
    formula: Annotated[str, StringConstraints(max_length=MAX_NAME)]
    polarity: Literal[POLARITIES] = "as-is"  # bundles from before the rule existed are "as-is"


class ExpertEntry(_Strict):
    id: Annotated[int, Field(ge=0, le=1024)]
    superclass: list[Name]
    graphs: list[Name]
    size_bytes: Count


class ScheduleBlock(_Strict):
    kind: Literal[KINDS]  # type: ignore[valid-type]
    # Why this kind: "auto: ..." or "requested: ..." (plan.schedule_reason). Read by people; no answer depends on it.
    reason: Annotated[str, StringConstraints(max_length=MAX_NAME)] | None = None
    batch_size: Literal[1]
    steps: Annotated[list[dict[str, Any]], Field(min_length=1, max_length=MAX_GRAPHS)]


class SharedTensor(_Strict):
    offset: Annotated[int, Field(ge=0, le=2**40)]
    dtype: Literal[shared_weights.DTYPES]  # type: ignore[valid-type]
    shape: Annotated[list[Annotated[int, Field(ge=1, le=2**31)]], Field(max_length=8)]


class SharedWeights(_Strict):
    """Weights every expert path holds alike, stored once (shared_weights.py)."""

    path: Literal[shared_weights.FILE]
    sha256: Sha256
    size_bytes: Annotated[int, Field(ge=1, le=2**40)]
    graphs: Annotated[list[Name], Field(min_length=2, max_length=MAX_GRAPHS)]
    tensors: Annotated[dict[Name, SharedTensor], Field(min_length=1, max_length=1 << 16)]


class EvalData(_Strict):
    kind: Literal["fashion-mnist", "imagefolder", "synthetic", "unspecified"]
    description: Annotated[str, StringConstraints(max_length=MAX_NAME)]


class CalibrationBlock(_Strict):
    images: Annotated[int, Field(ge=1, le=2**31)]
    strategy: Literal["routed", "all"]
    min_samples: Annotated[int, Field(ge=1, le=2**31)]
    source: Annotated[str, StringConstraints(max_length=MAX_NAME)]


class QuantizationBlock(_Strict):
    mode: Literal[MODES]  # type: ignore[valid-type]
    router: Literal[ROUTER_PRECISION] | None = None  # type: ignore[valid-type]
    calibration: CalibrationBlock | None = None


class Parity(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)
    status: Literal["pass", "skipped", "fail"]
    reason: str | None = None
    spec_verified_graphs: Count | None = None


class Manifest(_Strict):
    schema_: Literal["vmoe-export/bundle"] = Field(alias="schema")
    schema_version: int
    target: Name
    created_by: dict[Name, Annotated[str, StringConstraints(max_length=MAX_NAME)]]
    created_at: Annotated[str, StringConstraints(max_length=64)]
    backend_options: dict[str, Any]
    quantization: QuantizationBlock = QuantizationBlock(mode="none")
    model: ModelBlock
    preprocessing: Preprocessing
    class_names: Annotated[list[Name], Field(min_length=2, max_length=100_000)]
    superclass_of_class: Annotated[list[Annotated[int, Field(ge=0, le=1024)]], Field(max_length=100_000)] | None
    experts: Annotated[list[ExpertEntry], Field(max_length=256)]
    schedule: ScheduleBlock
    graphs: Annotated[dict[Name, GraphEntry], Field(max_length=MAX_GRAPHS)]
    shared_weights: SharedWeights | None = None  # fused bundles on backends that store common weights once
    golden: Annotated[str, StringConstraints(max_length=1024)] | None
    golden_sha256: Sha256 | None = None  # required with golden (checked below); written before parity ends
    export_seconds: Annotated[float, Field(ge=0)]
    eval_data: EvalData
    parity: Parity | None = None


ManifestError = BundleError  # a manifest that breaks its schema or contradicts itself


def preprocessing_block(cfg: ModelConfig) -> dict:
    """The preprocessing a bundle declares, derived from the model config: export writes exactly this and
    loading requires exactly this."""
    return {
        "image_size": cfg.image_size, "channels": cfg.in_chans,
        "color": "grayscale" if cfg.in_chans == 1 else "rgb",
        "resize": "scale shorter side to image_size (bilinear), centre crop",
        "layout": "NCHW", "scale": 1 / 255, "mean": list(cfg.mean), "std": list(cfg.std),
        "formula": ("if 2 * sum(outermost pixel ring, all channels) > 255 * ring pixels: pixel = 255 - pixel; "
                    if cfg.polarity == "dark-background" else "") + "x = (pixel / 255 - mean[c]) / std[c]",
        "polarity": cfg.polarity,
    }


def superclass_names(class_names: list[str], superclass_of: list[int] | None, num_experts: int) -> list[list[str]]:
    return [[class_names[c] for c, sc in enumerate(superclass_of or []) if sc == e] for e in range(num_experts)]


def parse(raw: Any) -> Manifest:
    """Types and bounds; raises ManifestError naming the first offending field."""
    try:
        return Manifest.model_validate(raw)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "manifest"
        got = repr(err.get("input"))[:80]
        raise ManifestError(f"manifest field '{where}': {err['msg']} (got {got}); "
                            f"{len(e.errors())} problem(s) in all: re-export the bundle") from None


def check(m: Manifest, suffix: str, runtime_unavailable: str | None, require_parity: bool = True
          ) -> tuple[ModelConfig, Schedule]:
    """Cross-check a parsed manifest against its own model config. `suffix` is the target's artifact
    suffix; `runtime_unavailable` is why the target cannot run here (then a skipped parity is fine).
    require_parity=False is for export, which loads the bundle it is building to run parity on it."""
    try:
        cfg = ModelConfig.from_dict(m.model.config)
    except (ConfigError, TypeError) as e:
        raise ManifestError(f"manifest model.config: {e}") from None
    model_fields = {"name": cfg.name, "num_experts": cfg.num_experts, "moe_layers": cfg.moe_layers,
                    "top_k": cfg.top_k, "num_classes": cfg.num_classes}
    for key, want in model_fields.items():
        if getattr(m.model, key) != want:
            raise ManifestError(f"manifest model.{key} is {getattr(m.model, key)!r} but its config says {want!r}: "
                                "the manifest was edited; re-export the bundle")
    try:
        schedule = Schedule.from_json(m.schedule.steps)
        # The router is a graph of its own exactly when the bundle's quantization block converts it apart.
        apart = router_apart(m.quantization.mode, m.quantization.router)
        want = Schedule.of_kind(m.schedule.kind, cfg.num_experts, cfg.moe_layers, cfg.top_k, apart)
    except ScheduleError as e:
        raise ManifestError(f"manifest schedule: {e}") from None
    # Compared as stored (prose rules included): a bundle runs exactly the schedule of its kind its model defines.
    if m.schedule.steps != want.to_json():
        raise ManifestError(f"manifest schedule does not match its model (E={cfg.num_experts}, L={cfg.moe_layers}, "
                            f"k={cfg.top_k}, {m.schedule.kind} schedule); re-export the bundle")
    specs = schedule.graphs()
    if set(m.graphs) != {s.name for s in specs}:
        extra, missing = set(m.graphs) - {s.name for s in specs}, [s.name for s in specs if s.name not in m.graphs]
        raise ManifestError(f"manifest lacks graphs {', '.join(missing)}" if missing else
                            f"manifest lists graphs the schedule never runs: {', '.join(sorted(extra))}")
    for spec in specs:
        entry = m.graphs[spec.name]
        path = artifact_relpath(spec, suffix, m.shared_weights is not None)
        if entry.path != path:
            raise ManifestError(f"graph {spec.name}: path {entry.path!r} should be {path!r} for a {m.target} bundle "
                                "(each graph has one place; was the manifest edited or the bundle built for another target?)")
        if (entry.role, entry.layer, entry.expert) != (spec.role, spec.layer, spec.expert):
            raise ManifestError(f"graph {spec.name}: role/layer/expert {(entry.role, entry.layer, entry.expert)} "
                                f"should be {(spec.role, spec.layer, spec.expert)}")
        for kind, names, got in (("inputs", spec.inputs, entry.inputs), ("outputs", spec.outputs, entry.outputs)):
            want = [(n, list(cfg.tensor_shape(n))) for n in names]
            if [(t.name, t.shape) for t in got] != want:
                raise ManifestError(f"graph {spec.name}: {kind} {[(t.name, t.shape) for t in got]} should be {want} "
                                    "for the model config")
    if m.preprocessing.model_dump() != preprocessing_block(cfg):
        raise ManifestError("manifest preprocessing does not follow from the model config (image size, channels, "
                            "mean, std, scale): the manifest was edited; re-export the bundle")
    if len(m.class_names) != cfg.num_classes or len(set(m.class_names)) != len(m.class_names):
        raise ManifestError(f"manifest class_names must be {cfg.num_classes} distinct names")
    if m.superclass_of_class is not None and (len(m.superclass_of_class) != cfg.num_classes
                                              or max(m.superclass_of_class) >= cfg.num_experts):
        raise ManifestError(f"manifest superclass_of_class must give each of {cfg.num_classes} classes an expert below "
                            f"{cfg.num_experts}")
    groups = superclass_names(m.class_names, m.superclass_of_class, cfg.num_experts)
    sizes = {n: g.size_bytes for n, g in m.graphs.items()}
    want_experts = [(e, groups[e], schedule.expert_graphs(e), int(schedule.expert_total(sizes, e)))
                    for e in range(cfg.num_experts)]
    if [(x.id, x.superclass, x.graphs, x.size_bytes) for x in m.experts] != want_experts:
        raise ManifestError("manifest experts table does not follow from the schedule, class names and super-classes")
    params = {n: g.params for n, g in m.graphs.items()}
    if (m.model.params_total, m.model.params_active) != (schedule.total(params), schedule.active(params)):
        raise ManifestError("manifest params_total/params_active do not add up from the graphs")
    _check_quantization(m)
    _check_shared_weights(m, schedule)
    if m.golden not in (None, GOLDEN):
        raise ManifestError(f"manifest golden {m.golden!r} should be {GOLDEN!r} or null")
    if require_parity and (m.golden is None or m.golden_sha256 is None):
        raise ManifestError("the manifest names no golden vectors (golden and golden_sha256): a bundle cannot self-test "
                            "without them; re-export it with this vmoe-export")
    if require_parity:
        _check_parity(m, runtime_unavailable)
    return cfg, schedule


def _check_quantization(m: Manifest) -> None:
    """Every graph's mode follows from the bundle's quantization block: the block's mode, except a router
    kept in fp32; calibration recorded exactly for static-int8 graphs."""
    q = m.quantization
    if (q.mode == "none") != (q.router is None) or (q.calibration is not None) != (q.mode == "static-int8"):
        raise ManifestError(f"manifest quantization block {q.model_dump()} is inconsistent: re-export the bundle")
    for name, g in m.graphs.items():
        want = graph_mode(q.mode, q.router, g.role)
        got = g.quantization.mode if g.quantization is not None else "none"
        if got != want:
            raise ManifestError(f"graph {name}: quantization {got!r} but the bundle's quantization block says {want!r}: "
                                "the manifest was edited; re-export the bundle")
        if g.quantization is not None and (g.quantization.calibration is not None) != (want == "static-int8"):
            raise ManifestError(f"graph {name}: calibration record does not match its mode {want!r}")


def _check_shared_weights(m: Manifest, schedule: Schedule) -> None:
    """Only a fused bundle shares weights, among all its expert paths, inside its file."""
    s = m.shared_weights
    if s is None:
        return
    paths = [g for e in range(schedule.num_experts) for g in schedule.expert_graphs(e)]
    if schedule.kind != "fused" or s.graphs != paths:
        raise ManifestError(f"manifest shared_weights names graphs {s.graphs} but only the expert paths of a fused "
                            f"bundle ({paths if schedule.kind == 'fused' else 'none here'}) share weights: "
                            "the manifest was edited; re-export the bundle")
    shared_weights.check_table({n: t.model_dump() for n, t in s.tensors.items()}, s.size_bytes)


def _check_parity(m: Manifest, runtime_unavailable: str | None) -> None:
    p = m.parity
    if p is None:
        raise ManifestError("the manifest has no parity result: this is an unfinished export (a crashed or running "
                            "vmoe-export), not a bundle; export it again")
    if p.status == "fail":
        raise ManifestError("this bundle failed its parity check and was kept only for inspection; do not run it")
    if p.status == "skipped" and not (runtime_unavailable and p.spec_verified_graphs == len(m.graphs)):
        raise ManifestError("this bundle's parity was skipped without every graph spec-verified on a system that "
                            "has no runtime for it; export it again where its parity can run")
