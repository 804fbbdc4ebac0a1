"""vmoe-bench --device adb up to the phone (none is attached here): the refusals, each one `error:` line and
exit 2 before any work; the adb command plan; the push / start / poll / parse loop against a scripted adb; and
the report reader's refusals. The report the app's Kotlin core writes is parsed in test_apps.py."""

import copy
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from vmoe_export.bench.device import (ACTIVITY, AdbDevice, DeviceError, DeviceRun, connect, ensure_app,
                                      parse_device_report, parse_device_spec, push_commands, run_on_device,
                                      start_command)
from vmoe_export.errors import BundleError, ConfigError

BENCH = Path(sys.executable).parent / "vmoe-bench"


def _fake_adb(tmp_path: Path, devices_output: str) -> Path:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    adb = bin_dir / "adb"
    adb.write_text(f"#!/bin/sh\nif [ \"$1\" = devices ]; then printf '{devices_output}'; exit 0; fi\n"
                   "echo \"unexpected adb $*\" >&2; exit 1\n")
    adb.chmod(adb.stat().st_mode | stat.S_IEXEC)
    return bin_dir


@pytest.mark.parametrize("devices, message", [
    (None, "adb not found on PATH: install Android platform-tools"),
    ("List of devices attached\\n\\n", "no Android device attached"),
    ("List of devices attached\\nABC123\\tunauthorized\\n\\n", "device ABC123 is unauthorized: accept the USB debugging prompt"),
])
def test_bench_device_refuses_in_one_line_before_any_work(tmp_path, devices, message):
    path = str(_fake_adb(tmp_path, devices)) if devices is not None else str(tmp_path)  # an empty PATH: no adb
    r = subprocess.run([str(BENCH), "--device", "adb", "--bundles", str(tmp_path / "none"), "--out", str(tmp_path / "r")],
                       capture_output=True, text=True, timeout=300, env={**os.environ, "PATH": path})
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("vmoe-bench: error: ") and message in lines[0], r.stderr
    assert not (tmp_path / "none").exists() and not (tmp_path / "r").exists()  # nothing exported, nothing written


def test_bench_apk_needs_device(tmp_path):
    r = subprocess.run([str(BENCH), "--apk", str(tmp_path / "app.apk")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 2 and "pass it with --device" in r.stderr


def test_device_spec_and_device_choice():
    assert parse_device_spec("adb") is None and parse_device_spec("adb:emulator-5554") == "emulator-5554"
    for bad in ("usb", "adb:", "ios:x"):
        with pytest.raises(ConfigError, match="adb:SERIAL"):
            parse_device_spec(bad)

    def listing(text):
        return lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, text, "")

    two = "List of devices attached\nA1\tdevice\nB2\tdevice\n\n"
    with pytest.raises(DeviceError, match="2 devices attached \\(A1, B2\\): pick one with --device adb:SERIAL"):
        connect("adb", which=lambda _: "/usr/bin/adb", run=listing(two))
    assert connect("adb:B2", which=lambda _: "/usr/bin/adb", run=listing(two)) == AdbDevice("/usr/bin/adb", "B2")
    with pytest.raises(DeviceError, match="device C3 is not attached"):
        connect("adb:C3", which=lambda _: "/usr/bin/adb", run=listing(two))
    with pytest.raises(DeviceError, match="offline: reconnect it"):
        connect("adb", which=lambda _: "adb", run=listing("List of devices attached\nA1\toffline\n"))
    def hung(cmd, **kw):
        raise subprocess.TimeoutExpired(cmd, kw["timeout"])

    with pytest.raises(DeviceError, match="did not answer within 60 s"):
        connect("adb", which=lambda _: "adb", run=hung)
    daemon = "* daemon not running; starting now at tcp:5037\n* daemon started successfully\nList of devices attached\nA1\tdevice\n"
    assert connect("adb", which=lambda _: "adb", run=listing(daemon)).serial == "A1"


def test_command_plan():
    dev = AdbDevice("adb", "S1")
    job = DeviceRun("executorch", Path("/b/executorch"), warmup=5, runs=40, threads=2, cold_trials=1,
                    dense=Path("/t/dense.pte"))
    cmds = push_commands(dev, job)
    assert cmds[1] == ["adb", "-s", "S1", "push", "/b/executorch", "/data/local/tmp/vmoe/executorch"]
    assert cmds[2] == ["adb", "-s", "S1", "push", "/t/dense.pte", "/data/local/tmp/vmoe/dense-executorch.pte"]
    run_as = cmds[3]
    assert run_as[:4] == ["adb", "-s", "S1", "shell"] and run_as[4].startswith("run-as dev.vmoe.demo sh -c '")
    assert "cp -r /data/local/tmp/vmoe/executorch files/bench/executorch" in run_as[4]
    start = start_command(dev, job, "d" * 64, "e" * 64)
    assert start[:9] == ["adb", "-s", "S1", "shell", "am", "start", "-W", "-n", ACTIVITY]
    extras = dict(zip(start[10::3], start[11::3]))
    assert extras == {"bundle_dir": "bench/executorch", "name": "executorch", "digest": "d" * 64, "warmup": "5",
                      "runs": "40", "threads": "2", "cold_trials": "1", "dense_graph": "bench/dense-executorch.pte",
                      "dense_sha256": "e" * 64}
    assert start[9::3] == ["--es"] * 3 + ["--ei"] * 4 + ["--es"] * 2


def _stats(ms=1.0, n=10):
    return {"median_ms": ms, "p90_ms": ms * 1.2, "mean_ms": ms, "n": n}


def _report(digest: str) -> dict:
    return {"schema": "vmoe-export/device-bench", "schema_version": 1, "created_at": "2026-12-02T00:00:00Z",
            "device": {"manufacturer": "Google", "model": "Pixel 8", "android_release": "15", "sdk_int": 35, "abis": ["arm64-v8a"]},
            "settings": {"warmup": 5, "runs": 10, "threads": 1, "cold_trials": 1},
            "bundle": {"target": "executorch", "digest": digest, "schedule": "per-layer"},
            "split": {"end_to_end": _stats(3.0), "stages": {"trunk": _stats(1.0), "experts": _stats(0.5)},
                      "open_ms": 9.0, "shared_load_ms": 5.0, "self_test_ms": 20.0, "expert_cold_load": _stats(2.0),
                      "expert_warm_lookup": _stats(0.001), "expert_bytes": [1, 1], "routed_histogram": [4, 6]},
            "dense_twin": _stats(2.5),
            "memory": {"pss_kb": {"before_open": 1000, "shared_graphs": 2000, "first_image": 2500, "all_experts": 3000},
                       "shared_graphs_mb": 1.0, "routed_resident_mb": 1.5, "all_experts_mb": 2.0}}


def test_run_on_device_pushes_starts_polls_and_parses(tmp_path):
    bundle = tmp_path / "executorch"
    bundle.mkdir()
    digest = "ab" * 32
    (bundle / "manifest.sha256").write_text(digest + "\n")
    dense = tmp_path / "dense.pte"
    dense.write_bytes(b"graph")
    calls, polls = [], []

    def adb(cmd, **kw):
        calls.append(cmd)
        if cmd[-1].endswith(".json"):
            polls.append(cmd)
            out = json.dumps(_report(digest)) if len(polls) >= 3 else ""  # the app takes a while
            return subprocess.CompletedProcess(cmd, 0 if out else 1, out, "")
        if cmd[-1].endswith(".error"):
            return subprocess.CompletedProcess(cmd, 1, "", "No such file")
        return subprocess.CompletedProcess(cmd, 0, "", "")

    job = DeviceRun("executorch", bundle, 5, 10, 1, 1, dense)
    r = run_on_device(AdbDevice("adb", "S1"), job, run=adb, sleep=lambda s: None)
    assert r["device"]["model"] == "Pixel 8" and len(polls) == 3
    started = next(c for c in calls if "am" in c)
    assert started[started.index("dense_sha256") + 1] == __import__("hashlib").sha256(b"graph").hexdigest()

    def failing(cmd, **kw):
        if cmd[-1].endswith(".error"):
            return subprocess.CompletedProcess(cmd, 0, "ManifestException: self-test failed at stage logits\n", "")
        return subprocess.CompletedProcess(cmd, 1 if cmd[-1].endswith(".json") else 0, "", "")

    with pytest.raises(DeviceError, match="benchmark failed on S1: ManifestException: self-test failed"):
        run_on_device(AdbDevice("adb", "S1"), job, run=failing, sleep=lambda s: None)

    def other_bundle(cmd, **kw):
        out = json.dumps(_report("cd" * 32)) if cmd[-1].endswith(".json") else ""
        return subprocess.CompletedProcess(cmd, 0, out, "")

    with pytest.raises(DeviceError, match="not the pushed"):
        run_on_device(AdbDevice("adb", "S1"), job, run=other_bundle, sleep=lambda s: None)


def test_app_must_be_installed_or_given(tmp_path):
    dev = AdbDevice("adb", "S1")
    with pytest.raises(DeviceError, match="not installed on S1: build it .* --apk"):
        ensure_app(dev, None, run=lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "", ""))
    ensure_app(dev, None, run=lambda cmd, **kw: subprocess.CompletedProcess(cmd, 0, "package:/data/app/base.apk\n", ""))
    with pytest.raises(DeviceError, match="does not exist: build it"):
        ensure_app(dev, tmp_path / "missing.apk")


@pytest.mark.parametrize("edit, message", [
    (lambda r: r.update(schema="other"), "not a vmoe-export device benchmark report"),
    (lambda r: r.update(schema_version=2), "rebuild the demo app"),
    (lambda r: r["split"].pop("expert_cold_load"), "has no split.expert_cold_load"),
    (lambda r: r["split"]["end_to_end"].update(median_ms="fast"), "must hold numbers"),
    (lambda r: r["memory"]["pss_kb"].update(all_experts=1.5), "must be an integer"),
    (lambda r: r["device"].update(sdk_int="35"), "sdk_int must be an integer"),
])
def test_report_reader_refuses_malformed_reports(edit, message):
    r = copy.deepcopy(_report("ab" * 32))
    parse_device_report(json.dumps(r))
    edit(r)
    with pytest.raises(BundleError, match=message):
        parse_device_report(json.dumps(r))
    with pytest.raises(BundleError, match="cut short"):
        parse_device_report('{"schema": "vmoe-export/device-bench", "split": {')
