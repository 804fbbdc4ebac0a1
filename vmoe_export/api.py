"""The Python API: what the commands do, callable from a notebook or a training script.

    import vmoe_export as v
    results = v.export("models/fmnist-tiny/model.pt", ["onnx"], "bundles")
    rt = v.load(results[0].path)           # self-tests at open
    report = v.verify(results[0].path)     # the same check, figures returned

Each function validates everything before any work (plan.py), returns typed results, raises the
project's typed errors (errors.VmoeError and its kinds: ConfigError, DataError, BundleError,
ParityError, SelfTestError, ...), and reports progress through an optional `progress(line)` callback
instead of printing. The commands (cli.py, bench/cli.py) parse flags, call these, and print.
Build-side functions (export, benchmark, train) import PyTorch when called; load and verify need only
the runtime install.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Mapping, Sequence

if TYPE_CHECKING:
    from .checkpoint import Checkpoint
    from .parity import ParityBounds, ParityReport
    from .runtime import BundleRuntime
    from .selftest import SelfTestReport

Progress = Callable[[str], None]
PathLike = str | os.PathLike


def _silent(_: str) -> None:
    pass


def _quiet(fn):
    """Run an API call with the converters' Python-side chatter hidden (restored after; VMOE_VERBOSE=1 shows it)."""
    import functools

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        from .clitools import converters_quiet

        with converters_quiet():
            return fn(*args, **kwargs)

    return wrapper


@dataclass(frozen=True)
class BundleResult:
    """One exported bundle."""

    target: str
    path: Path  # the published bundle directory
    digest: str  # sha256 of its manifest.json: pin it (load(..., expect_digest=...), the apps' pinned digest)
    size_bytes: int  # all artifacts
    graphs: int
    schedule: str  # per-layer | fused
    quantization: str  # a precision.Mode value
    export_seconds: float
    parity: "ParityReport"
    schedule_reason: str | None = None  # why this schedule (manifest schedule.reason)

    def summary(self) -> str:
        return (f"{self.target}: wrote {self.path} ({self.size_bytes / 1e6:.2f} MB, {self.graphs} graphs, "
                f"{self.schedule} schedule, "
                f"{self.export_seconds:.1f}s); manifest digest {self.digest} (pin it: vmoe-predict --expect-digest "
                f"{self.digest})")


def as_checkpoint(model: "PathLike | Checkpoint | Any", class_names: Sequence[str] | None = None,
                  superclass_of: Sequence[int] | None = None) -> "Checkpoint":
    """A checkpoint from a path (model.pt from vmoe-train, loaded weights-only), a Checkpoint, or a MobileVMoE
    module (its weights; class names default to 'class i', and it has no data set behind it, so parity runs
    on synthetic images unless `data` is given)."""
    from .checkpoint import SYNTHETIC, Checkpoint, load_checkpoint
    from .errors import ConfigError
    from .model import MobileVMoE

    if isinstance(model, Checkpoint):
        return model
    if isinstance(model, (str, os.PathLike)):
        return load_checkpoint(Path(model))
    if isinstance(model, MobileVMoE):
        cfg = model.cfg
        names = list(class_names) if class_names is not None else [f"class {i}" for i in range(cfg.num_classes)]
        state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        return Checkpoint(cfg, state, names, list(superclass_of) if superclass_of is not None else None,
                          metrics={"dataset": SYNTHETIC})
    raise ConfigError(f"cannot export a {type(model).__name__}: pass a checkpoint path (model.pt from vmoe-train), "
                      "a vmoe_export.checkpoint.Checkpoint or a vmoe_export.model.MobileVMoE")


@_quiet
def export(model: "PathLike | Checkpoint | Any", targets: str | Sequence[str], output: PathLike, *,
           quantize: str = "none", schedule: str = "auto", data: PathLike | None = None,
           parity_images: int | None = None, bounds: "ParityBounds | None" = None,
           calibration: str = "auto", calibration_images: int = 256, min_calibration_samples: int = 16,
           router_precision: str = "fp32", golden_images: int = 4, backend_options: Mapping[str, Any] | None = None,
           artifact_cache: PathLike | None = None, progress: Progress | None = None,
           progress_bars: bool = False) -> list[BundleResult]:
    """Export `model` to each target into OUTPUT/<target>/, each validated against PyTorch (parity) and
    carrying golden vectors for its self-test. `targets`: names ("onnx", ...) or "all" (targets without the
    quantization mode are then skipped and named through `progress`). `data`: an ImageFolder whose test/
    images run parity (and train/ images calibrate static-int8); default: the data set the checkpoint was
    trained on (Fashion-MNIST for the shipped model), or synthetic images for a model with none.
    `bounds`: parity bounds (default per mode, see parity.ParityBounds). Raises ParityError, naming every
    target that failed (the others are published; `error.results` lists them)."""
    from .data import calibration_split, eval_split
    from .exporter import ExportOptions, calibrate, export_bundle
    from .parity import ParityError
    from .plan import plan_export
    from .quantize import QuantOptions
    from .split import split_model
    from .staging import check_output_dir

    say = progress or _silent
    ckpt = as_checkpoint(model)
    cfg = ckpt.config
    quant = QuantOptions(quantize, calibration_images, calibration, min_calibration_samples, router_precision)
    plan = plan_export(cfg, targets, quant, schedule=schedule, bounds=bounds, parity_images=parity_images,
                       golden_images=golden_images, backend_options=backend_options)
    output = check_output_dir(Path(output))
    for t, why in plan.skipped:
        say(f"{t}: skipped: {why}")
    say(f"schedule: {plan.schedule_reason}")
    trained_on = ckpt.metrics.get("dataset", "fashion-mnist")
    data_dir = Path(data) if data is not None else None
    evaluation = eval_split(data_dir, trained_on, cfg.image_size, cfg.in_chans)
    built = ckpt.build_model()  # once, shared by calibration and every target
    calibration_u8, calibrated = None, {}
    if plan.calibration_strategies:
        split, what = calibration_split(data_dir, trained_on, cfg.image_size, cfg.in_chans, quant.calibration_images)
        calibration_u8 = split.images
        say(f"calibration: {what}")
        # One calibration pass per strategy, shared by the targets that use it: the fp32 model's routing does
        # not depend on the backend.
        converted = plan.schedule_for(cfg)  # the graphs this export converts: per expert path when fused
        graphs = split_model(built, converted)
        for strategy in plan.calibration_strategies:
            q = replace(quant, calibration=strategy)
            calibrated[strategy] = calibrate(cfg, graphs, converted, q, calibration_u8, log=say)
    options = ExportOptions(
        parity_images=plan.parity_images, bounds=plan.bounds, quant=quant, schedule=schedule,
        golden_images=plan.golden_images, progress=progress_bars, backend_options=dict(backend_options or {}),
        artifact_cache=Path(artifact_cache) if artifact_cache is not None else None,
        eval_data={"kind": evaluation.kind, "description": evaluation.description},
    )
    results, failed = [], []
    for tp in plan.targets:
        try:
            path, _ = export_bundle(ckpt, tp.target, output, evaluation.split.images, evaluation.split.labels, options,
                                    log=say, calibration_images=calibration_u8,
                                    plan=calibrated.get(tp.quant.calibration) if tp.quant.calibrated else None,
                                    model=built)
        except ParityError as e:
            failed.append(e)
            continue
        results.append(bundle_result(path))
        say(results[-1].summary())
    if failed:
        error = ParityError("\n".join(map(str, failed)), failed[0].target if len(failed) == 1 else None,
                            tuple(f for e in failed for f in e.failures), failed[0].rejected if len(failed) == 1 else None)
        error.errors, error.results = failed, results  # every failed target, and the bundles that were published
        raise error
    return results


def bundle_result(path: Path) -> BundleResult:
    """What a published bundle directory holds, read back through the validating reader."""
    from .bundle import DIGEST, bundle_bytes, read_manifest
    from .parity import ParityReport

    m = read_manifest(path)
    return BundleResult(m["target"], Path(path), (Path(path) / DIGEST).read_text().strip(), bundle_bytes(m),
                        len(m["graphs"]), m["schedule"]["kind"], m["quantization"]["mode"], m["export_seconds"],
                        ParityReport.from_json(m["parity"]), m["schedule"].get("reason"))


def load(bundle_dir: PathLike, *, threads: int = 0, max_experts: int | None = None, max_bytes: int | None = None,
         expect_digest: str | None = None, verify: str = "every-load", self_test: bool = True,
         pack_shared_weights: bool | None = None) -> "BundleRuntime":
    """Open a bundle for routed inference through its backend's runtime (no PyTorch needed): every integrity
    check, then the self-test (SelfTestError if this machine computes it wrong). `rt.classify(path)` on an
    image file, `rt.predict(x)` on a preprocessed one (runtime.preprocess_image(path, rt.manifest)).
    pack_shared_weights: True or False overrides the runtime's choice by size (backends.RunOptions)."""
    from .backends import RunOptions
    from .runtime import BundleRuntime

    return BundleRuntime(Path(bundle_dir), max_experts, max_bytes,
                         RunOptions(threads=threads, pack_shared_weights=pack_shared_weights),
                         expect_digest=expect_digest, verify=verify, self_test=self_test)


@dataclass(frozen=True)
class VerifyResult:
    bundle: Path
    target: str
    quantization: str
    schedule: str
    report: "SelfTestReport"  # per-stage max diff and SNR, agreement, machine
    images: dict | None = None  # with images=: predictions, accuracy or agreement on them

    @property
    def passed(self) -> bool:
        return self.report.passed


def verify(bundle_dir: PathLike, *, expect_digest: str | None = None, threads: int = 0,
           images: PathLike | None = None, reference: PathLike | None = None, check: bool = True) -> VerifyResult:
    """The bundle self-test on this machine, with its figures. check=True raises SelfTestError when outside
    tolerance; check=False returns the failing report. `images`: a folder of your own images (or
    DIR/<class>/*) to also report predictions or accuracy; `reference`: an fp32 bundle to compare with."""
    from .backends import RunOptions
    from .errors import ConfigError
    from .runtime import BundleRuntime
    from .selftest import SelfTestError, check_images, self_test

    if reference is not None and images is None:
        raise ConfigError("--reference compares on --images: pass --images DIR too")
    rt = BundleRuntime(Path(bundle_dir), run=RunOptions(threads=threads), expect_digest=expect_digest,
                       self_test=False)  # run below, to return the figures rather than raise at open
    report = self_test(rt)
    extra = None
    if images is not None:
        ref = BundleRuntime(Path(reference), run=RunOptions(threads=threads)) if reference is not None else None
        extra = check_images(rt, Path(images), ref)
    result = VerifyResult(Path(bundle_dir), rt.target, rt.manifest["quantization"]["mode"], rt.schedule.kind, report, extra)
    if check and not report.passed:
        raise SelfTestError(f"{bundle_dir}: " + "; ".join(report.failures))
    return result


@dataclass(frozen=True)
class BenchmarkResult:
    report: dict  # bench.json's content: per backend, stage timings, memory, ratios, machine
    out_dir: Path | None

    @property
    def ratios(self) -> dict:
        return self.report["ratios"]


@_quiet
def benchmark(model: "PathLike | Checkpoint | Any", bundles: PathLike = "bundles", *, targets: str | Sequence[str] = "all",
              out: PathLike | None = None, dense: "PathLike | Checkpoint | Any | None" = None, threads: int = 1,
              quick: bool = False, images: int = 64, quantize: Sequence[str] = (), schedule: str = "auto",
              data: PathLike | None = None, seed: int = 0, progress: Progress | None = None,
              progress_bars: bool = False, device: str | None = None, apk: PathLike | None = None,
              pack_shared_weights: bool | None = None) -> BenchmarkResult:
    """Benchmark `model`'s bundles in BUNDLES/<target>/ (exported first where missing; int8 modes in
    BUNDLES/<mode>/<target>/) against its dense twin, a monolithic export and eager PyTorch, all in one run;
    with `out`, write bench.json, README.md and plots there. `dense`: the dense twin (default: dense.pt beside
    a checkpoint path when present, else fresh weights: latency does not depend on them). `device`: also run the
    executorch/tflite bundles on an Android phone over adb ("adb" or "adb:SERIAL"; `apk` installs the demo app
    first) and put its figures beside the host's (report["devices"]). pack_shared_weights: True or False measures the
    runtimes in that mode, None as they decide by size (backends.RunOptions)."""
    import torch

    from .backends import MAX_THREADS, RunOptions, get_backend, runtime_targets
    from .bench.measure import BenchSettings
    from .bench.quantized import bench_quantized
    from .bench.report import write_report
    from .bench.run import check_bundles_match, run_benchmarks
    from .data import eval_split
    from .errors import ConfigError
    from .model import MobileVMoE
    from .plan import plan_export, supports

    say = progress or _silent
    if images < 1 or threads < 1:  # RunOptions below bounds threads from above
        raise ConfigError(f"--threads (1 to {MAX_THREADS}) and --images must be at least 1")
    names = runtime_targets() if targets == "all" else [targets] if isinstance(targets, str) else list(targets)
    RunOptions(threads=threads)
    for t in names:
        get_backend(t)
    phone = _connect_phone(device, apk, names) if device is not None else None  # refuse before any work
    ckpt = as_checkpoint(model)
    built = ckpt.build_model()
    cfg = built.cfg
    if dense is None and isinstance(model, (str, os.PathLike)) and Path(model).with_name("dense.pt").exists():
        dense = Path(model).with_name("dense.pt")
    if dense is not None:
        dense_model = as_checkpoint(dense).build_model()
    else:
        torch.manual_seed(seed)
        dense_model = MobileVMoE(cfg.dense_twin()).eval()
    evaluation = eval_split(Path(data) if data is not None else None, ckpt.metrics.get("dataset", "fashion-mnist"),
                            cfg.image_size, cfg.in_chans)
    fp32_plan = plan_export(cfg, names, schedule=schedule)
    bundles = Path(bundles)
    if bundles.exists() and not bundles.is_dir():
        raise ConfigError(f"--bundles {bundles} is a file: pass the directory that holds <target>/ bundles")
    found = _find_or_export(ckpt, names, bundles, schedule, fp32_plan.schedule, "none", data, say, progress_bars)
    quantized = {}
    for mode in quantize:
        offered = [t for t in names if supports(t, mode)]
        for t in names:
            if t not in offered:
                say(f"{t} has no {mode} mode: skipped")
        # the same kind as the fp32 bundles: a schedule resolves from k alone
        quantized[mode] = _find_or_export(ckpt, offered, bundles / mode, schedule, fp32_plan.schedule, mode, data, say,
                                          progress_bars)
    source = str(model) if isinstance(model, (str, os.PathLike)) else f"this {cfg.name} model"
    for by_target in quantized.values():
        check_bundles_match(by_target, built, source)
    check_bundles_match(found, built, source)
    s = BenchSettings.make(quick, threads, pack_shared_weights)
    report = run_benchmarks(found, built, dense_model, s, evaluation.split.images[:images], progress_bars)
    if quantized:
        report["quantized"] = bench_quantized(quantized, report, s, evaluation.split.images[:images], cfg)
    report["data"] = {"kind": evaluation.kind, "description": evaluation.description}
    if phone is not None:
        _bench_on_phone(phone, report, found, dense_model, s, say)
    if out is not None:
        write_report(report, Path(out))
    return BenchmarkResult(report, Path(out) if out is not None else None)


def _connect_phone(device: str, apk, names: list[str]):
    from .bench.device import ANDROID_TARGETS, connect, ensure_app
    from .errors import ConfigError

    if not any(t in ANDROID_TARGETS for t in names):
        raise ConfigError(f"--device runs {' and '.join(ANDROID_TARGETS)} bundles (the demo app's runtimes): pass "
                          "--target all, executorch or tflite")
    phone = connect(device)
    ensure_app(phone, Path(apk) if apk is not None else None)
    return phone


def _bench_on_phone(phone, report: dict, bundles: dict[str, Path], dense_model, s, say: Progress) -> None:
    """Each Android-runnable bundle, with its dense twin converted for the same runtime, benchmarked on the phone."""
    import tempfile

    from .artifact_cache import convert
    from .backends import get_backend
    from .bench.baselines import dense_graph
    from .bench.device import ANDROID_TARGETS, DeviceRun, merge_device_reports, run_on_device

    reports = []
    with tempfile.TemporaryDirectory() as tmp:
        for target in [t for t in bundles if t in ANDROID_TARGETS]:
            backend = get_backend(target)
            dense_path = Path(tmp) / f"dense{backend.suffix}"
            convert(dense_graph(dense_model), backend, backend.make_options(), dense_path, None)
            say(f"{target}: benchmarking on {phone.serial} ({s.warmup} warm-up + {s.runs} runs)")
            reports.append(run_on_device(phone, DeviceRun(target, bundles[target], s.warmup, s.runs, s.threads,
                                                          1 if s.quick else 3, dense_path)))
    merge_device_reports(report, reports)


def _find_or_export(ckpt, targets: list[str], bundles: Path, requested: str, schedule: str, mode: str, data,
                    say: Progress, progress_bars: bool) -> dict[str, Path]:
    """Each target's bundle of `schedule` (the kind `requested` resolves to) and mode from `bundles`, exported
    when missing."""
    from .bundle import read_manifest
    from .errors import ConfigError

    missing = [t for t in targets if not (bundles / t / "manifest.json").exists()]
    if missing:
        n = 100 if mode == "none" else 500
        say(f"no {mode if mode != 'none' else 'fp32'} bundle for {', '.join(missing)} in {bundles}: exporting "
            f"(parity on {n} images)")
        export(ckpt, missing, bundles, quantize=mode, schedule=requested, data=data, parity_images=n,
               progress=say, progress_bars=progress_bars)
    found = {}
    for t in targets:
        has = read_manifest(bundles / t)["schedule"]["kind"]
        if has != schedule:
            raise ConfigError(f"bundle {bundles / t} runs the {has} schedule, not {schedule}: pass --schedule {has}, or "
                              "another --bundles directory to export a fresh one")
        found[t] = bundles / t
    return found


@dataclass(frozen=True)
class TrainResult:
    out_dir: Path
    checkpoint: Path  # OUT/model.pt
    dense_checkpoint: Path  # OUT/dense.pt
    metrics: dict  # OUT/metrics.json


@_quiet
def train(config: str = "fmnist-tiny", out: PathLike | None = None, *, data: PathLike | None = None,
          data_loader: str = "auto", workers: int | None = None, overwrite: bool = False, command: str = "",
          progress: Progress | None = None, **train_options) -> TrainResult:
    """Train the dense twin, cluster its confusion graph into super-classes, then the Mobile V-MoE
    (L = L_cls + router_weight * CE(router, super-class)), as `vmoe-train` does. `train_options`: the fields
    of train.TrainConfig (moe_epochs=..., moe_init="dense", seed=...). Resumes an interrupted run in `out`."""
    from dataclasses import fields

    from .config import load_config
    from .errors import ConfigError
    from .stream import load_dataset
    from .training import TrainConfig, init_distributed, run_training

    known = {f.name for f in fields(TrainConfig)}
    unknown = sorted(set(train_options) - known)
    if unknown:
        raise ConfigError(f"unknown training option(s) {', '.join(unknown)}: choose from {', '.join(sorted(known))}")
    cfg = TrainConfig(**train_options)
    model_cfg = load_config(config)
    out_dir = Path(out) if out is not None else Path("runs") / model_cfg.name
    if (out_dir / "model.pt").exists() and not overwrite:
        raise FileExistsError(f"{out_dir} already holds a finished run (model.pt); pass --overwrite or another --out")
    if workers is not None and workers < 0:
        raise ConfigError("--workers must be 0 or more")
    dataset = load_dataset(Path(data) if data is not None else None, model_cfg.image_size, model_cfg.in_chans,
                           loader=data_loader, workers=workers)
    if dataset.skipped:
        (progress or _silent)(dataset.skipped_note())
    init_distributed()
    metrics = run_training(model_cfg, dataset, cfg, out_dir, command=command)
    return TrainResult(out_dir, out_dir / "model.pt", out_dir / "dense.pt", metrics)
