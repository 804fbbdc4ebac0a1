"""The bundle self-test: the golden vectors recorded at export, run again on *this* machine.

Export writes golden/golden.json: a few test images as raw pixels (`pixels_u8`), the model input the
export computed from them, and the value at every stage (trunk tokens, router logits, each MoE layer's
output, logits), plus the tolerance per stage that this bundle was measured to meet. The self-test
starts from the pixels, applies the manifest's preprocessing, runs the bundle through its real runtime
and compares every stage with the reference:

- the input must equal the export's (catches a manifest whose preprocessing was edited coherently);
- every later stage must reach the recorded SNR against fp32 PyTorch (and, for fp32 bundles, the
  recorded max abs diff). For int8 bundles the floor is what the export machine measured on these very
  images minus SELF_TEST_MARGIN_DB, never below the mode's parity floor: int8 kernels differ by CPU
  (ONNX Runtime's U8S8 on AVX2 without VNNI, XNNPACK's NEON / dot-product / i8mm paths), and a bundle
  whose numbers degrade on this CPU is refused here rather than trusted.

Stages after a routing decision that differs from the reference are not comparable and are skipped for
that image (routing agreement is reported). NumPy only: this runs where the bundle runs.
"""

from __future__ import annotations

import binascii
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .bundle import GOLDEN, MAX_GOLDEN_BYTES, golden_path, sha256_of
from .compare import StageStats
from .errors import BundleError
from .machine import cpu_info, describe
from .preprocess import normalize

GOLDEN_FORMAT = 2
SELF_TEST_MARGIN_DB = 6.0  # an int8 stage may lose this much SNR against what the export machine measured
INPUT_TOLERANCE = 1e-5  # the stored input is rounded to 7 decimals; preprocessing must reproduce it


class SelfTestError(BundleError):
    """The bundle does not reproduce its golden vectors on this machine."""


@dataclass
class SelfTestReport:
    cases: int
    stage_max_abs_diff: dict[str, float]
    stage_snr_db: dict[str, float]
    top1_agreement: float
    routing_agreement: float
    tolerances: dict[str, dict]
    machine: dict
    export_machine: dict | None
    seconds: float = 0.0
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def to_json(self) -> dict:
        return {"passed": self.passed, "cases": self.cases, "stage_max_abs_diff": self.stage_max_abs_diff,
                "stage_snr_db": self.stage_snr_db, "top1_agreement": self.top1_agreement,
                "routing_agreement": self.routing_agreement, "tolerances": self.tolerances, "machine": self.machine,
                "export_machine": self.export_machine, "seconds": round(self.seconds, 4), "failures": self.failures}


def pack(values) -> dict:
    """A stage tensor as base64 little-endian float32: a quarter of the size of a JSON number list (a vit-12x192
    token tensor is 37,632 values per image)."""
    import base64

    return {"f32": base64.b64encode(np.asarray(values, dtype="<f4").reshape(-1).tobytes()).decode()}


def unpack(obj) -> np.ndarray:
    import base64

    if isinstance(obj, dict):
        return np.frombuffer(base64.b64decode(obj["f32"], validate=True), dtype="<f4").astype(np.float32)
    return np.asarray(obj, dtype=np.float32)


def read_golden(bundle_dir: Path, manifest: dict) -> dict:
    """golden.json of a bundle whose manifest read_manifest accepted: its sha256 must match the manifest's."""
    path = golden_path(bundle_dir, manifest)
    if path is None:
        raise BundleError(f"{bundle_dir} has no golden vectors to self-test with; re-export it with vmoe-export "
                          "(every bundle it writes has them)")
    if not path.is_file():
        raise BundleError(f"{GOLDEN} listed in the manifest is missing from {bundle_dir}: the bundle is incomplete; "
                          "copy the whole bundle directory or re-export it")
    if path.stat().st_size > MAX_GOLDEN_BYTES:
        raise BundleError(f"{path} is larger than {MAX_GOLDEN_BYTES >> 20} MiB: not a vmoe-export golden file")
    if sha256_of(path) != manifest["golden_sha256"]:
        raise BundleError(f"{path} fails its checksum (manifest golden_sha256): the bundle was modified or "
                          "corrupted; re-export it")
    try:
        golden = json.loads(path.read_bytes())
        shape = [int(v) for v in golden["shape"]]
        cases, block = golden["cases"], golden["self_test"]
        if golden.get("format") != GOLDEN_FORMAT or not isinstance(cases, list) or not cases:
            raise ValueError(f"format {golden.get('format')!r}, {len(cases) if isinstance(cases, list) else 0} cases")
        for c in cases:
            if len(c["pixels_u8"]) != int(np.prod(shape)) or len(c["input"]) != len(c["pixels_u8"]):
                raise ValueError("a case's pixels or input do not have the golden shape")
        if not isinstance(block["stages"], dict):
            raise ValueError("self_test.stages is not an object")
    except (ValueError, KeyError, TypeError, RecursionError, UnicodeDecodeError, binascii.Error) as e:
        raise BundleError(f"{path} is not a golden file this vmoe-export reads ({type(e).__name__}: {str(e)[:120]}); "
                          "re-export the bundle") from None
    return golden


def reference_stages(case: dict) -> dict[str, np.ndarray]:
    """fp32 PyTorch's value at every stage of one golden case. Quantized bundles store it apart (`reference`),
    since their `stages`, `router_logits` and `logits` are the bundle's own outputs on the export machine."""
    if "reference" in case:
        return {k: unpack(v) for k, v in case["reference"].items()}
    own = {k: unpack(v) for k, v in case.get("stages", {}).items()}
    own["router_logits"] = np.asarray(case["router_logits"], dtype=np.float32)
    own["logits"] = np.asarray(case["logits"], dtype=np.float32)
    return own


def self_test(runtime, golden: dict | None = None) -> SelfTestReport:
    """Run a loaded BundleRuntime on its golden cases from raw pixels; compare every stage with the reference
    within the bundle's recorded tolerances. Returns the report (`failures` empty when it passed)."""
    import time

    t0 = time.perf_counter()
    golden = golden if golden is not None else read_golden(runtime.dir, runtime.manifest)
    shape = tuple(int(v) for v in golden["shape"])
    tolerances = golden["self_test"]["stages"]
    inputs, stages = StageStats(), StageStats()
    top1 = routed = 0
    for case in golden["cases"]:
        pixels = np.asarray(case["pixels_u8"], dtype=np.uint8).reshape(shape)
        x = normalize(pixels, runtime.manifest["preprocessing"])
        inputs.add("input", np.asarray(case["input"], dtype=np.float32), x)
        pred = runtime.predict(x, trace=True)
        ref = reference_stages(case)
        same_route = sorted(pred.experts) == sorted(int(e) for e in ref.get("experts", case["experts"]))
        routed += same_route
        top1 += pred.label == int(np.argmax(ref["logits"]))
        for stage, value in pred.trace.items():
            if stage in ref and (stage in ("tokens", "router_logits") or same_route):
                stages.add(stage, ref[stage], value)
    n = len(golden["cases"])
    report = SelfTestReport(
        cases=n, stage_max_abs_diff={**inputs.max_abs_diff, **stages.max_abs_diff},
        stage_snr_db={**inputs.snr_db(), **stages.snr_db()}, top1_agreement=top1 / n, routing_agreement=routed / n,
        tolerances=tolerances, machine=cpu_info(), export_machine=golden["self_test"].get("machine"))
    report.failures = _failures(report, runtime.target)
    report.seconds = time.perf_counter() - t0
    return report


def _failures(report: SelfTestReport, target: str) -> list[str]:
    out = []
    if report.stage_max_abs_diff["input"] > INPUT_TOLERANCE:
        out.append(f"stage input: the manifest's preprocessing gives inputs {report.stage_max_abs_diff['input']:.3g} away "
                   "from the ones the bundle was exported with (was the preprocessing block edited?): re-export the bundle")
    for stage, tol in report.tolerances.items():
        if stage not in report.stage_snr_db:
            continue  # no golden image was routed as the reference routes it: reported as routing agreement
        snr, diff = report.stage_snr_db[stage], report.stage_max_abs_diff[stage]
        if tol.get("min_snr_db") is not None and snr < tol["min_snr_db"]:
            out.append(f"stage {stage}: SNR {snr:.1f} dB against fp32 on this machine, below the {tol['min_snr_db']:.1f} dB "
                       f"this {target} bundle was measured to meet: this CPU's kernels change its numbers; use the fp32 "
                       "bundle here, or re-export on (and for) this machine")
        elif tol.get("max_abs_diff") is not None and diff > tol["max_abs_diff"]:
            out.append(f"stage {stage}: max abs diff {diff:.3g} > {tol['max_abs_diff']:.3g} recorded at export: re-export the bundle")
    return out


def format_report(report: SelfTestReport) -> list[str]:
    """Lines for a person: the machine, then one line per stage, then the verdict."""
    lines = [f"self-test on {describe(report.machine)}: {report.cases} golden images; top-1 agreement "
             f"{100 * report.top1_agreement:.0f}%, routing agreement {100 * report.routing_agreement:.0f}%"]
    if report.export_machine:
        lines.append(f"  tolerances measured at export on {describe(report.export_machine)}")
    for stage, snr in report.stage_snr_db.items():
        tol = report.tolerances.get(stage, {"max_abs_diff": INPUT_TOLERANCE} if stage == "input" else {})
        bound = ", ".join(f"{k.replace('_', ' ')} {v:.3g}" for k, v in tol.items() if v is not None) or "reported only"
        lines.append(f"  {stage:>14}: max|diff| {report.stage_max_abs_diff[stage]:.3g}, SNR {snr:.1f} dB  (bound: {bound})")
    lines.append(f"  {'PASS' if report.passed else 'FAIL'} in {1e3 * report.seconds:.1f} ms")
    return lines


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")


def check_images(runtime, folder: Path, reference=None) -> dict:
    """The user's own images through the bundle: DIR/*.<image> or DIR/<class name>/*.<image> (then accuracy, by the
    bundle's class names). With `reference` (another loaded BundleRuntime of the same model, e.g. its fp32 bundle):
    top-1 and routing agreement and logits SNR against it."""
    from .preprocess import load_image

    folder = Path(folder)
    if not folder.is_dir():
        raise BundleError(f"--images {folder} is not a directory of images")
    names = runtime.manifest["class_names"]
    if reference is not None and reference.manifest["class_names"] != names:
        raise BundleError(f"--reference {reference.dir} is not a bundle of the same model (other class names)")
    # A class name may hold a '/' ("T-shirt/top"), which no folder name can: '_' or '-' stand in for it.
    folder_class = {alias: i for i, n in enumerate(names) for alias in (n, n.replace("/", "_"), n.replace("/", "-"))}
    files = [(p, None) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        if sub.name not in folder_class:
            raise BundleError(f"--images {folder}: folder {sub.name!r} is not one of the bundle's classes "
                              f"({', '.join(names[:10])}{', ...' if len(names) > 10 else ''})")
        files += [(p, folder_class[sub.name]) for p in sorted(sub.iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
    if not files:
        raise BundleError(f"--images {folder} holds no {'/'.join(IMAGE_SUFFIXES)} files")
    pre = runtime.manifest["preprocessing"]
    correct = labelled = top1 = routed = 0
    logits = StageStats()
    for path, label in files:
        x = normalize(load_image(path, pre["image_size"], pre["channels"])[None], pre)
        pred = runtime.predict(x)
        if label is not None:
            labelled += 1
            correct += pred.label == label
        if reference is not None:
            want = reference.predict(x)
            top1 += pred.label == want.label
            routed += sorted(pred.experts) == sorted(want.experts)
            logits.add("logits", want.logits, pred.logits)
    n = len(files)
    out = {"images": n, "labelled": labelled}
    parts = [f"{n} of your images"]
    if labelled:
        out["accuracy"] = correct / labelled
        parts.append(f"accuracy {100 * correct / labelled:.2f}% on {labelled} labelled")
    if reference is not None:
        out.update(reference=str(reference.dir), top1_agreement=top1 / n, routing_agreement=routed / n,
                   logits_snr_db=logits.snr_db()["logits"])
        parts.append(f"against {reference.dir}: top-1 agreement {100 * top1 / n:.2f}%, routing agreement "
                     f"{100 * routed / n:.2f}%, logits SNR {out['logits_snr_db']:.1f} dB")
    out["summary"] = "images: " + "; ".join(parts)
    return out
