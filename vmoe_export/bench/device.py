"""The phone half of vmoe-bench (--device adb[:SERIAL]): find the device, install or find the demo app, push a
bundle (and the dense twin), start the app's headless BenchmarkActivity, pull the JSON its shared Kotlin core
wrote (dev.vmoe.core.DeviceBench), and put the phone's figures beside the host's in the same report.

Everything up to the device is plain functions on argv lists, so it is tested without a phone: the command
plan, the refusals (no adb, no device, several devices, an unauthorized one), and the report the Kotlin core
writes, parsed by the same function that merges it.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from ..errors import BundleError, ConfigError, VmoeError

APP_ID = "dev.vmoe.demo"
ACTIVITY = f"{APP_ID}/.BenchmarkActivity"
ANDROID_TARGETS = ("executorch", "tflite")  # what the demo app runs
REMOTE_ROOT = "/data/local/tmp/vmoe"  # adb can write here; the app reads its copy (run-as) in its own files/
SCHEMA = "vmoe-export/device-bench"
SCHEMA_VERSION = 1


class DeviceError(VmoeError):
    """No usable device, app or report: the message names the fix."""


@dataclass(frozen=True)
class AdbDevice:
    adb: str
    serial: str

    def argv(self, *args: str) -> list[str]:
        return [self.adb, "-s", self.serial, *args]


@dataclass(frozen=True)
class DeviceRun:
    """One routed benchmark on the phone: the bundle to push, its settings, and the dense twin's graph."""

    target: str
    bundle: Path
    warmup: int
    runs: int
    threads: int
    cold_trials: int
    dense: Path | None = None


def _call(run, cmd: list[str], timeout: float) -> subprocess.CompletedProcess:
    """One adb call; a hung or missing adb is a DeviceError naming the command, not a traceback."""
    try:
        return run(cmd, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"`{' '.join(cmd)}` did not answer within {timeout:.0f} s: check the USB connection "
                          "(`adb kill-server` restarts adb)") from None
    except OSError as e:
        raise DeviceError(f"cannot run {cmd[0]}: {e}") from None


def parse_device_spec(spec: str) -> str | None:
    """'adb' -> None (the one attached device), 'adb:SERIAL' -> SERIAL."""
    kind, _, serial = spec.partition(":")
    if kind != "adb" or (spec.endswith(":") and not serial):
        raise ConfigError(f"--device {spec!r}: use adb (the one attached device) or adb:SERIAL (see `adb devices`)")
    return serial or None


def connect(spec: str, which=shutil.which, run=subprocess.run) -> AdbDevice:
    """The device `spec` names, after adb says it is attached and authorized."""
    wanted = parse_device_spec(spec)
    adb = which("adb")
    if adb is None:
        raise DeviceError("adb not found on PATH: install Android platform-tools (Debian: apt-get install adb), attach "
                          "a phone with USB debugging on, or run vmoe-bench without --device")
    r = _call(run, [adb, "devices"], 60)
    if r.returncode != 0:
        raise DeviceError(f"`adb devices` failed ({(r.stderr or r.stdout).strip()[:200]}): restart the server with "
                          "`adb kill-server`, then try again")
    listed = {}
    for line in r.stdout.splitlines():
        parts = line.split()
        if len(parts) >= 2 and not line.startswith(("List of devices", "*")):
            listed[parts[0]] = parts[1]
    if not listed:
        raise DeviceError("no Android device attached (`adb devices` lists none): connect a phone with USB debugging "
                          "on and accept its prompt, or run vmoe-bench without --device")
    if wanted is None:
        if len(listed) > 1:
            raise DeviceError(f"{len(listed)} devices attached ({', '.join(sorted(listed))}): pick one with "
                              "--device adb:SERIAL")
        wanted = next(iter(listed))
    if wanted not in listed:
        raise DeviceError(f"device {wanted} is not attached (`adb devices` lists {', '.join(sorted(listed))})")
    state = listed[wanted]
    if state != "device":
        fix = "accept the USB debugging prompt on the phone" if state == "unauthorized" else "reconnect it"
        raise DeviceError(f"device {wanted} is {state}: {fix}, then run again")
    return AdbDevice(adb, wanted)


def _run_as(dev: AdbDevice, script: str) -> list[str]:
    # adb joins its shell arguments into one remote command line: quote the app-side script as one word.
    return dev.argv("shell", f"run-as {APP_ID} sh -c {shlex.quote(script)}")


def dense_remote_name(job: DeviceRun) -> str:
    return f"dense-{job.target}{job.dense.suffix}" if job.dense else ""


def push_commands(dev: AdbDevice, job: DeviceRun) -> list[list[str]]:
    """Bundle (and dense twin) to the device, then into the app's files/bench/ (run-as: the debug build's own
    storage, readable whatever the device's SELinux policy says about /data/local/tmp)."""
    remote = f"{REMOTE_ROOT}/{job.target}"
    cmds = [dev.argv("shell", f"rm -rf {remote} && mkdir -p {REMOTE_ROOT}"), dev.argv("push", str(job.bundle), remote)]
    copy = f"rm -rf files/bench/{job.target} && mkdir -p files/bench && cp -r {remote} files/bench/{job.target}"
    if job.dense is not None:
        name = dense_remote_name(job)
        cmds.append(dev.argv("push", str(job.dense), f"{REMOTE_ROOT}/{name}"))
        copy += f" && cp {REMOTE_ROOT}/{name} files/bench/{name}"
    cmds.append(_run_as(dev, copy))
    return cmds


def start_command(dev: AdbDevice, job: DeviceRun, digest: str, dense_sha256: str | None = None) -> list[str]:
    """`am start` of the app's BenchmarkActivity with the extras BenchmarkActivity.kt reads."""
    cmd = ["shell", "am", "start", "-W", "-n", ACTIVITY, "--es", "bundle_dir", f"bench/{job.target}",
           "--es", "name", job.target, "--es", "digest", digest, "--ei", "warmup", str(job.warmup),
           "--ei", "runs", str(job.runs), "--ei", "threads", str(job.threads), "--ei", "cold_trials", str(job.cold_trials)]
    if job.dense is not None:
        cmd += ["--es", "dense_graph", f"bench/{dense_remote_name(job)}", "--es", "dense_sha256", dense_sha256 or ""]
    return dev.argv(*cmd)


def result_command(dev: AdbDevice, target: str, suffix: str = "json") -> list[str]:
    return dev.argv("exec-out", "run-as", APP_ID, "cat", f"files/bench/{target}.{suffix}")


def _check(run, cmd: list[str], what: str, timeout: float = 600) -> subprocess.CompletedProcess:
    r = _call(run, cmd, timeout)
    if r.returncode != 0:
        raise DeviceError(f"{what} failed: {' '.join(cmd[3:])}: {(r.stderr or r.stdout).strip()[:300]}")
    return r


def ensure_app(dev: AdbDevice, apk: Path | None, run=subprocess.run) -> None:
    """Installs `apk` (a debug build of android_demo), or checks the app is already there."""
    if apk is not None:
        if not Path(apk).is_file():
            raise DeviceError(f"--apk {apk} does not exist: build it with `./gradlew :app:assembleDebug` in android_demo/")
        _check(run, dev.argv("install", "-r", str(apk)), f"installing {apk}")
        return
    r = _call(run, dev.argv("shell", "pm", "path", APP_ID), 60)
    if "package:" not in r.stdout:
        raise DeviceError(f"the demo app ({APP_ID}) is not installed on {dev.serial}: build it (android_demo/README.md) "
                          "and pass --apk android_demo/app/build/outputs/apk/debug/app-debug.apk")


def run_on_device(dev: AdbDevice, job: DeviceRun, run=subprocess.run, timeout_s: float = 1800,
                  poll_s: float = 2.0, sleep=time.sleep) -> dict:
    """Push, start, wait for the report (or the app's error file), parse it. The app must already be installed."""
    from ..bundle import sha256_of

    digest = (job.bundle / "manifest.sha256").read_text().strip()
    for cmd in push_commands(dev, job):
        _check(run, cmd, f"copying {job.bundle} to {dev.serial}")
    _check(run, start_command(dev, job, digest, sha256_of(job.dense) if job.dense else None),
           f"starting the benchmark on {dev.serial}")
    deadline = time.monotonic() + timeout_s
    while True:
        r = _call(run, result_command(dev, job.target), 120)
        if r.returncode == 0 and r.stdout.strip():
            report = parse_device_report(r.stdout, f"{dev.serial}:files/bench/{job.target}.json")
            if report["bundle"]["digest"] != digest:
                raise DeviceError(f"the device report is of bundle {report['bundle']['digest'][:16]}..., not the pushed "
                                  f"{digest[:16]}...: run again")
            return report
        e = _call(run, result_command(dev, job.target, "error"), 120)
        if e.returncode == 0 and e.stdout.strip():
            raise DeviceError(f"the benchmark failed on {dev.serial}: {e.stdout.strip()[:500]} "
                              f"(full log: adb -s {dev.serial} logcat -s vmoe-bench)")
        if time.monotonic() > deadline:
            raise DeviceError(f"no report from {dev.serial} after {timeout_s:.0f} s: see adb -s {dev.serial} logcat -s vmoe-bench")
        sleep(poll_s)


# ---- the report the app's shared Kotlin core writes ---------------------------------------------------------

_STATS = ("median_ms", "p90_ms", "mean_ms", "n")


def _need(d: dict, path: str, source: str):
    cur = d
    for key in path.split("."):
        if not isinstance(cur, dict) or key not in cur:
            raise BundleError(f"{source} has no {path}: not a report of this vmoe-export's demo app (rebuild the app)")
        cur = cur[key]
    return cur


def _stats(d: dict, path: str, source: str) -> dict:
    s = _need(d, path, source)
    if not isinstance(s, dict) or not all(isinstance(s.get(k), (int, float)) and not isinstance(s.get(k), bool)
                                          for k in _STATS):
        raise BundleError(f"{source}: {path} must hold numbers {', '.join(_STATS)}")
    return s


def parse_device_report(text: str, source: str = "device report") -> dict:
    """The JSON dev.vmoe.core.DeviceBench writes, checked field by field (it comes from a device: untrusted)."""
    if len(text) > 16 << 20:
        raise BundleError(f"{source} is too large to be a device benchmark report")
    try:
        r = json.loads(text)
    except json.JSONDecodeError as e:
        raise BundleError(f"{source} is not valid JSON ({e.msg} at line {e.lineno}): the run was cut short; run again") from None
    if not isinstance(r, dict) or r.get("schema") != SCHEMA:
        raise BundleError(f"{source} is not a vmoe-export device benchmark report")
    if r.get("schema_version") != SCHEMA_VERSION:
        raise BundleError(f"{source} has schema_version {r.get('schema_version')!r}, this vmoe-export reads "
                          f"{SCHEMA_VERSION}: rebuild the demo app from this checkout")
    for key in ("device.manufacturer", "device.model", "device.android_release", "bundle.target", "bundle.digest"):
        if not isinstance(_need(r, key, source), str):
            raise BundleError(f"{source}: {key} must be a string")
    if not isinstance(_need(r, "device.sdk_int", source), int):
        raise BundleError(f"{source}: device.sdk_int must be an integer")
    for key in ("split.end_to_end", "split.expert_cold_load", "split.expert_warm_lookup"):
        _stats(r, key, source)
    for stage in _need(r, "split.stages", source):
        _stats(r, f"split.stages.{stage}", source)
    if r.get("dense_twin") is not None:
        _stats(r, "dense_twin", source)
    for key in ("before_open", "shared_graphs", "first_image", "all_experts"):
        if not isinstance(_need(r, f"memory.pss_kb.{key}", source), int):
            raise BundleError(f"{source}: memory.pss_kb.{key} must be an integer (kB)")
    for key in ("split.self_test_ms", "split.shared_load_ms", "settings.threads", "settings.runs"):
        v = _need(r, key, source)
        if not isinstance(v, (int, float)) or isinstance(v, bool):
            raise BundleError(f"{source}: {key} must be a number")
    return r


def device_label(r: dict) -> str:
    d = r["device"]
    return f"{d['manufacturer']} {d['model']} (Android {d['android_release']}, API {d['sdk_int']})"


def merge_device_reports(report: dict, device_reports: list[dict]) -> dict:
    """Puts each device report beside the host's figures: report["devices"][label] with its backends and, per
    backend, the ratios measured on the device (split / its dense twin there, cold load / warm expert compute)
    and how the device's time compares with this host's for the same bundle. Returns `report`."""
    devices = report.setdefault("devices", {})
    for r in device_reports:
        entry = devices.setdefault(device_label(r), {"device": r["device"], "backends": {}, "ratios": {}})
        target = r["bundle"]["target"]
        entry["backends"][target] = {k: r[k] for k in ("created_at", "settings", "bundle", "split", "dense_twin", "memory")
                                     if k in r}
        split = r["split"]["end_to_end"]["median_ms"]
        ratios = {"cold_load_over_warm_expert_exec": r["split"]["expert_cold_load"]["median_ms"]
                  / max(r["split"]["stages"].get("experts", {}).get("median_ms", 0.0), 1e-9)}
        if r.get("dense_twin"):
            ratios["split_over_dense_twin"] = split / r["dense_twin"]["median_ms"]
        host = report.get("backends", {}).get(target)
        if host:
            ratios["device_over_host_split"] = split / host["split"]["end_to_end"]["median_ms"]
        entry["ratios"][target] = ratios
    return report


def device_markdown(report: dict) -> list[str]:
    """The report's on-device section (empty without devices)."""
    if not report.get("devices"):
        return []
    lines = ["## On device (vmoe-bench --device adb)", "",
             "Measured on the phone by the demo app's BenchmarkActivity (the shared Kotlin core's DeviceBench, the "
             "real runtime): the same routed schedule and bundle as above. Times are the device's own; the ratios are "
             "measured on the device in one run. Memory is the app process's PSS (Debug.getPss) growth from before "
             "the bundle opened.", "",
             "| device | backend | routed split median / p90 ms | dense twin ms | split / dense on device | split / dense on host | device / host time | cold expert load ms | PSS shared / first image / all experts MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    host_ratios = report.get("ratios", {})
    for label, entry in report["devices"].items():
        for target, b in entry["backends"].items():
            q = entry["ratios"][target]
            e2e, mem = b["split"]["end_to_end"], b["memory"]
            dense = f"{b['dense_twin']['median_ms']:.3f}" if b.get("dense_twin") else "-"
            on_dev = f"{q['split_over_dense_twin']:.2f}" if "split_over_dense_twin" in q else "-"
            on_host = f"{host_ratios[target]['split_over_dense_twin']:.2f}" if target in host_ratios else "-"
            rel = f"{q['device_over_host_split']:.2f}" if "device_over_host_split" in q else "-"
            lines.append(f"| {label} | {target} | {e2e['median_ms']:.3f} / {e2e['p90_ms']:.3f} | {dense} | {on_dev} | "
                         f"{on_host} | {rel} | {b['split']['expert_cold_load']['median_ms']:.2f} | "
                         f"{mem['shared_graphs_mb']:.1f} / {mem['routed_resident_mb']:.1f} / {mem['all_experts_mb']:.1f} |")
    return lines + [""]
