"""Bundles checked on CPUs other than the one that exported them: an AVX2-only x86 CPU and arm64 (the phones'
instruction set), both under qemu-user emulation on this x86 machine, beside the native run.

    python benchmarks/cross_cpu.py [--work DIR] [--images N] [--full-test-set] [--cpus native,haswell,arm64,cortex-a53]

For the shipped model, every runtime backend and mode (fp32, dynamic-int8, static-int8, and weight-int8 where the
backend has it) is exported once natively with `vmoe-export`; then on each CPU, in a fresh process that imports
no PyTorch (the device side of vmoe-export, NumPy and the backend's runtime only):

- `vmoe-export verify`'s self-test: every stage of the golden images against fp32 PyTorch, within the bundle's
  recorded tolerances (pass/fail, worst stage SNR);
- the first N test images through the bundle: accuracy, top-1 and routing agreement with fp32 PyTorch and with
  the same bundle run natively, logits SNR against fp32 PyTorch.

CPUs: `native` (this machine), `haswell` (qemu-x86_64 -cpu Haswell: AVX2 and FMA, no AVX-512, no VNNI: ONNX
Runtime and XNNPACK take their AVX2 kernels; QEMU's TCG has no AVX-512, so AVX-512 without VNNI cannot be
emulated here), `arm64` (qemu-aarch64 -cpu max: Armv8 with dot product, i8mm and SVE) and `cortex-a53`
(Armv8.0: NEON without dot product, the int8 path of older phones). The arm64 user space comes from Debian's
packages and PyPI's aarch64 wheels (benchmarks/arm64/make_root.sh). Times under emulation are not latencies
and are never reported as such. Also one paper-scale bundle pair (vit-12x192-moe, random init, ONNX fp32 and
dynamic-int8) is self-tested on arm64.

Writes benchmarks/results/cross_cpu.{json,md} (or --out).
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

FMNIST = Path("/usr/share/datasets/fashion-mnist")
TARGETS = ("executorch", "tflite", "onnx")
MODES = {"executorch": ("none", "dynamic-int8", "static-int8"), "tflite": ("none", "dynamic-int8", "static-int8", "weight-int8"),
         "onnx": ("none", "dynamic-int8", "static-int8")}
# ExecuTorch's Python runtime exchanges torch tensors. On arm64 it runs as executorch 1.0.1 with torch 2.9.1 (CPU),
# the newest pairing whose torch imports there (benchmarks/arm64/requirements-executorch.txt says why); the
# bundles are still exported by the x86 pins (executorch 1.5.1).
NEEDS_TORCH = ("executorch",)


def cpu_command(cpu: str, root: Path | None) -> list[str]:
    py = str(REPO / ".venv" / "bin" / "python")
    if cpu == "native":
        return [py]
    if cpu == "haswell":
        return ["qemu-x86_64-static", "-cpu", "Haswell", py]
    if cpu in ("arm64", "cortex-a53"):
        return ["qemu-aarch64-static", "-cpu", "max" if cpu == "arm64" else "cortex-a53", "-L", str(root),
                str(root / "usr" / "bin" / "python3.11")]
    raise SystemExit(f"unknown cpu {cpu!r}")


def read_test_set(n: int) -> tuple[np.ndarray, np.ndarray]:
    """The first n Fashion-MNIST test images (uint8 N,1,28,28) and labels, NumPy only (no torch in the worker)."""
    def idx(name):
        with gzip.open(FMNIST / name) as f:
            data = f.read()
        dims = data[3]
        shape = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(dims))
        return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * dims).reshape(shape)

    return idx("t10k-images-idx3-ubyte.gz")[:n, None], idx("t10k-labels-idx1-ubyte.gz")[:n].astype(np.int64)


def worker(bundle: Path, n: int, out: Path) -> None:
    """Runs on the (emulated) CPU: self-test, then n test images. Imports no torch (but for ExecuTorch's runtime,
    which exchanges torch tensors) and no converter."""
    target = json.loads((bundle / "manifest.json").read_text())["target"]
    for blocked in ("torch", "onnx", "onnxscript", "coremltools", "litert_torch", "ai_edge_quantizer", "torchao"):
        if not (blocked == "torch" and target in NEEDS_TORCH):
            sys.modules.setdefault(blocked, None)
    from vmoe_export.machine import cpu_info
    from vmoe_export.preprocess import normalize
    from vmoe_export.runtime import BundleRuntime
    from vmoe_export.selftest import self_test

    rt = BundleRuntime(bundle, self_test=False)
    report = self_test(rt).to_json()
    result = {"machine": cpu_info(), "self_test": report}
    if n:
        images, labels = read_test_set(n)
        x = normalize(images, rt.manifest["preprocessing"])
        logits, experts = [], []
        for i in range(n):
            p = rt.predict(x[i: i + 1])
            logits.append(p.logits)
            experts.append(p.experts)
        np.savez(out.with_suffix(".npz"), logits=np.stack(logits), experts=np.asarray(experts), labels=labels)
    out.write_text(json.dumps(result))


def export_all(work: Path, log) -> dict[tuple[str, str], Path]:
    bundles = {}
    for target in TARGETS:
        for mode in MODES[target]:
            out = work / "bundles" / mode
            path = out / target
            if not (path / "manifest.sha256").exists():
                log(f"export {target} {mode}")
                cmd = [str(REPO / ".venv" / "bin" / "vmoe-export"), "--target", target, "--output", str(out), "--quiet"]
                if mode != "none":
                    cmd += ["--quantize", mode]
                subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            bundles[(target, mode)] = path
    return bundles


def torch_reference(work: Path, n: int) -> dict:
    """fp32 PyTorch's logits and routing on the first n test images (natively, with torch)."""
    path = work / f"torch_ref_{n}.npz"
    if not path.exists():
        import torch

        from vmoe_export.checkpoint import load_checkpoint
        from vmoe_export.data import preprocess
        from vmoe_export.split import run_split, split_model

        ckpt = load_checkpoint(REPO / "models" / "fmnist-tiny" / "model.pt")
        model = ckpt.build_model()
        images, labels = read_test_set(n)
        traces: list[dict] = []
        with torch.no_grad():
            logits = run_split(split_model(model), model.schedule, preprocess(torch.from_numpy(images), ckpt.config), traces)
        np.savez(path, logits=logits.numpy(), experts=np.asarray([[int(e) for e in t["experts"]] for t in traces]), labels=labels)
    return dict(np.load(path))


def snr(ref: np.ndarray, got: np.ndarray) -> float:
    from vmoe_export.compare import power, snr_db

    return round(snr_db(power(ref), power(ref - got)), 1)


def compare(run: dict, ref: dict, native: dict | None) -> dict:
    out = {"images": int(len(run["logits"]))}
    n = out["images"]
    top, route = run["logits"].argmax(1), run["experts"]
    out["accuracy"] = float((top == run["labels"]).mean())
    out["accuracy_torch"] = float((ref["logits"][:n].argmax(1) == run["labels"]).mean())
    out["top1_vs_torch"] = float((top == ref["logits"][:n].argmax(1)).mean())
    out["routing_vs_torch"] = float((route == ref["experts"][:n]).all(1).mean())
    out["logits_snr_vs_torch_db"] = snr(ref["logits"][:n], run["logits"])
    if native is not None:
        out["top1_vs_native"] = float((top == native["logits"].argmax(1)).mean())
        out["routing_vs_native"] = float((route == native["experts"]).all(1).mean())
        out["logits_snr_vs_native_db"] = snr(native["logits"], run["logits"])
    return out


def run_on(cpu: str, bundle: Path, n: int, work: Path, root: Path | None, tag: str) -> dict:
    out = work / "runs" / f"{tag}-{cpu}-{n}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    if not out.exists():
        arm = cpu in ("arm64", "cortex-a53")
        sites = ([str(root / "site-executorch")] if arm and tag.startswith(NEEDS_TORCH) else []) + ([str(root / "site")] if arm else [])
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([*sites, str(REPO)])}
        t0 = time.time()
        r = subprocess.run([*cpu_command(cpu, root), __file__, "--worker", str(bundle), "--images", str(n), "--out", str(out)],
                           env=env, capture_output=True, text=True)
        if r.returncode != 0:
            return {"error": (r.stderr.strip().splitlines() or ["exit %d" % r.returncode])[-1][:300]}
        data = json.loads(out.read_text())
        data["wall_s"] = round(time.time() - t0, 1)
        out.write_text(json.dumps(data))
    data = json.loads(out.read_text())
    npz = out.with_suffix(".npz")
    if npz.exists():
        data["run"] = dict(np.load(npz))
    return data


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=None)
    p.add_argument("--work", type=Path, default=Path("/tmp/vmoe-cross-cpu"))
    p.add_argument("--images", type=int, default=500, help="test images per bundle and CPU (default 500)")
    p.add_argument("--full-test-set", action="store_true",
                   help="also run all 10,000 test images through the ONNX int8 bundles on the emulated AVX2 CPU")
    p.add_argument("--cpus", default="native,haswell,arm64,cortex-a53")
    p.add_argument("--merge", type=Path, action="append", default=[],
                   help="results JSON of another run of this script (e.g. one that ran --full-test-set) to include")
    p.add_argument("--arm64-root", type=Path, default=None, help="arm64 user space (default WORK/arm64root, built if missing)")
    p.add_argument("--no-paper", action="store_true", help="skip the vit-12x192-moe bundles on arm64")
    args = p.parse_args()
    if args.worker:
        worker(args.worker, args.images, args.out)
        return 0
    t_start = time.time()
    work = args.work
    work.mkdir(parents=True, exist_ok=True)
    cpus = args.cpus.split(",")
    log = lambda s: print(f"[{time.time() - t_start:6.0f}s] {s}", flush=True)  # noqa: E731
    root = None
    if any(c in ("arm64", "cortex-a53") for c in cpus):
        root = args.arm64_root or work / "arm64root"
        log(f"arm64 user space in {root}")
        subprocess.run([str(REPO / "benchmarks" / "arm64" / "make_root.sh"), str(root)], check=True, stdout=subprocess.DEVNULL)
    bundles = export_all(work, log)
    ref = torch_reference(work, args.images)
    rows = []
    for (target, mode), path in bundles.items():
        native = None
        for cpu in cpus:
            log(f"{target} {mode} on {cpu}")
            data = run_on(cpu, path, args.images, work, root, f"{target}-{mode}")
            row = {"target": target, "mode": mode, "cpu": cpu}
            if "error" in data:
                row["error"] = data["error"]
            else:
                run = data.pop("run")
                if cpu == "native":
                    native = run
                row.update(machine=data["machine"], self_test=data["self_test"], wall_s=data.get("wall_s"),
                           **compare(run, ref, None if cpu == "native" else native))
            rows.append(row)
    full = []
    if args.full_test_set:
        ref_full = torch_reference(work, 10_000)
        for mode in ("dynamic-int8", "static-int8"):
            for cpu in ("native", "haswell"):
                log(f"onnx {mode} on {cpu}: all 10,000 test images")
                data = run_on(cpu, bundles[("onnx", mode)], 10_000, work, root, f"onnx-{mode}")
                if "error" in data:
                    full.append({"mode": mode, "cpu": cpu, "error": data["error"]})
                    continue
                full.append({"mode": mode, "cpu": cpu, "machine": data["machine"], **compare(data.pop("run"), ref_full, None)})
    paper = []
    if root is not None and not args.no_paper:
        for mode in ("none", "dynamic-int8"):
            out = work / "paper" / mode
            if not (out / "onnx" / "manifest.sha256").exists():
                log(f"export vit-12x192-moe onnx {mode}")
                cmd = [str(REPO / ".venv" / "bin" / "vmoe-export"), "--target", "onnx", "--config", "vit-12x192-moe",
                       "--random-init", "--output", str(out), "--quiet", "--parity-images", "50"]
                subprocess.run(cmd + (["--quantize", mode] if mode != "none" else []), check=True, stdout=subprocess.DEVNULL)
            for cpu in ("native", "arm64"):
                log(f"vit-12x192-moe onnx {mode} on {cpu}")
                data = run_on(cpu, out / "onnx", 0, work, root, f"paper-onnx-{mode}")
                paper.append({"mode": mode, "cpu": cpu, **({"error": data["error"]} if "error" in data else
                                                          {"machine": data["machine"], "self_test": data["self_test"]})})
    result = {"command": " ".join(["python", "benchmarks/cross_cpu.py", *sys.argv[1:]]), "images": args.images,
              "rows": rows, "full_test_set": full, "paper": paper, "minutes": round((time.time() - t_start) / 60, 1)}
    for other in map(lambda f: json.loads(f.read_text()), args.merge):
        result["full_test_set"] = result["full_test_set"] or other["full_test_set"]
        result["paper"] = result["paper"] or other["paper"]
        result["command"] += f"; {other['command']}"
        result["minutes"] += other["minutes"]
    out = args.out or REPO / "benchmarks" / "results" / "cross_cpu.json"
    out.write_text(json.dumps(result, indent=1) + "\n")
    out.with_suffix(".md").write_text(render(result))
    log(f"wrote {out} and {out.with_suffix('.md')}")
    return 0


def _pct(v):
    return "-" if v is None else f"{100 * v:.2f}%"


def _worst(self_test: dict) -> str:
    stages = {k: v for k, v in self_test["stage_snr_db"].items() if k != "input"}
    k = min(stages, key=stages.get)
    return f"{k} {stages[k]:.1f}"


def render(r: dict) -> str:
    from vmoe_export.machine import describe

    lines = ["# Bundles on other CPUs: AVX2-only x86 and arm64 under emulation", "",
             f"Run: `{r['command']}` ({r['minutes']} min on this project's 2-core x86 machine). Shipped model "
             f"(fmnist-tiny), first {r['images']} Fashion-MNIST test images per bundle and CPU; every bundle exported "
             "once, natively. Each CPU runs the bundle in a process that imports no PyTorch. `haswell` is "
             "qemu-x86_64 -cpu Haswell (AVX2, no AVX-512, no VNNI); `arm64` qemu-aarch64 -cpu max (dot product, "
             "i8mm, SVE); `cortex-a53` qemu-aarch64 -cpu cortex-a53 (NEON, no dot product). Emulated times are not "
             "latencies and are not reported.", "",
             "Self-test: the golden images from raw pixels, every stage against fp32 PyTorch within the bundle's "
             "recorded tolerances (worst stage SNR shown). Agreement: with fp32 PyTorch, and with the same bundle "
             "run natively.", "",
             "| backend | mode | CPU | self-test (worst stage dB) | accuracy (torch) | top-1 / routing vs torch | "
             "logits SNR vs torch dB | top-1 / routing vs native | logits SNR vs native dB |",
             "|---|---|---|---|---|---|---|---|---|"]
    for x in r["rows"]:
        head = f"| {x['target']} | {x['mode']} | {x['cpu']} |"
        if "blocked" in x:
            lines.append(f"{head} not run: {x['blocked']} | | | | | |")
        elif "error" in x:
            lines.append(f"{head} failed to run: {x['error']} | | | | | |")
        else:
            st = x["self_test"]
            lines.append(f"{head} {'pass' if st['passed'] else 'FAIL'} ({_worst(st)}) | {_pct(x['accuracy'])} "
                         f"({_pct(x['accuracy_torch'])}) | {_pct(x['top1_vs_torch'])} / {_pct(x['routing_vs_torch'])} | "
                         f"{x['logits_snr_vs_torch_db']} | {_pct(x.get('top1_vs_native'))} / {_pct(x.get('routing_vs_native'))} "
                         f"| {x.get('logits_snr_vs_native_db', '-')} |")
    machines = {x["cpu"]: describe(x["machine"]) for x in r["rows"] if "machine" in x}
    lines += ["", "CPU features as the runtimes see them: " + "; ".join(f"{k}: {v}" for k, v in machines.items())]
    if r["full_test_set"]:
        lines += ["", "## ONNX Runtime int8 on all 10,000 test images", "",
                  "| mode | CPU | accuracy | fp32 torch | delta (pts) | top-1 / routing vs torch | logits SNR dB |", "|---|---|---|---|---|---|---|"]
        for x in r["full_test_set"]:
            if "error" in x:
                lines.append(f"| {x['mode']} | {x['cpu']} | failed: {x['error']} | | | | |")
                continue
            lines.append(f"| {x['mode']} | {x['cpu']} | {_pct(x['accuracy'])} | {_pct(x['accuracy_torch'])} | "
                         f"{100 * (x['accuracy'] - x['accuracy_torch']):+.2f} | {_pct(x['top1_vs_torch'])} / "
                         f"{_pct(x['routing_vs_torch'])} | {x['logits_snr_vs_torch_db']} |")
    if r["paper"]:
        lines += ["", "## Paper scale: vit-12x192-moe (random init), ONNX Runtime, self-test", "",
                  "| mode | CPU | self-test | worst stage dB | stage SNR dB |", "|---|---|---|---|---|"]
        for x in r["paper"]:
            if "error" in x:
                lines.append(f"| {x['mode']} | {x['cpu']} | failed to run: {x['error']} | | |")
                continue
            st = x["self_test"]
            stages = ", ".join(f"{k} {v:.1f}" for k, v in st["stage_snr_db"].items() if k != "input")
            lines.append(f"| {x['mode']} | {x['cpu']} | {'pass' if st['passed'] else 'FAIL'} | {_worst(st)} | {stages} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
