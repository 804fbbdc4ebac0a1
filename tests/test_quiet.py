"""Quiet by default: what native converter and runtime code prints to file descriptors 1 and 2 (ExecuTorch's
cpuinfo probe, TensorFlow's absl/oneDNN notices, TFLite's delegate line) stays off the terminal around each
call, goes into the error when the call fails, and shows with --verbose / VMOE_VERBOSE=1."""

import ctypes
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from vmoe_export.native_output import quiet

BIN = Path(sys.executable).parent
# The lines a fresh user saw in the main job's output (issue 22), one pattern each.
CHATTER = [re.compile(p) for p in (r"\[cpuinfo_utils\.cpp:\d+\]", r"Created TensorFlow Lite XNNPACK delegate",
                                   r"absl::InitializeLog\(\)", r"^[IWE]\d{4} [\d:.]+ +\d+ \S+\.cc:\d+\]",
                                   r"flatbuffer_export", r"oneDNN custom operations",
                                   r"^(INFO|WARNING|ERROR): \[\w+\.cc:\d+\]")]  # LiteRT's own log lines


def _chatter(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p.search(line) for p in CHATTER)]


def _native_print(text: str) -> None:
    libc = ctypes.CDLL(None)
    libc.printf(text.encode() + b"\n")  # C stdio, buffered: quiet() must flush it into the capture
    os.write(2, b"stderr " + text.encode() + b"\n")


def test_quiet_captures_native_output_and_keeps_it_for_errors(capfd, monkeypatch):
    monkeypatch.delenv("VMOE_VERBOSE", raising=False)
    with quiet("a call"):
        _native_print("hidden")
    print("after", flush=True)
    out, err = capfd.readouterr()
    assert "hidden" not in out + err and "after" in out
    with pytest.raises(RuntimeError) as e:
        with quiet("the converter"):
            _native_print("why it failed")
            raise RuntimeError("conversion failed")
    note = "\n".join(e.value.__notes__)
    assert "the converter printed before it failed" in note and "why it failed" in note
    monkeypatch.setenv("VMOE_VERBOSE", "1")
    with quiet("a call"):
        _native_print("shown")
    out, err = capfd.readouterr()
    assert "shown" in out and "stderr shown" in err


def test_main_job_prints_no_native_chatter(tmp_path, image_folder):
    """The main job's commands on a tiny model, every backend with a runtime here: none of their output is native
    chatter; with --verbose the same runtime's notices do show (so the patterns match something real)."""
    from vmoe_export.checkpoint import Checkpoint, save_checkpoint
    from vmoe_export.model import MobileVMoE

    torch.manual_seed(0)
    cfg = tiny_config(num_classes=3, num_experts=2)
    ckpt = tmp_path / "model.pt"
    save_checkpoint(Checkpoint(cfg, MobileVMoE(cfg).state_dict(), ["a", "b", "c"], [0, 1, 1],
                               metrics={"dataset": image_folder.name}), ckpt)
    env = {k: v for k, v in os.environ.items() if k != "VMOE_VERBOSE"}

    def run(*args):
        r = subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=900, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
        return r

    outputs = [run("vmoe-export", "--target", "all", "--checkpoint", str(ckpt), "--data-dir", str(image_folder),
                   "--output", str(tmp_path / "b"), "--parity-images", "8", "--quiet"),
               run("vmoe-bench", "--checkpoint", str(ckpt), "--data-dir", str(image_folder), "--bundles", str(tmp_path / "b"),
                   "--out", str(tmp_path / "r"), "--quick", "--images", "4", "--quiet")]
    image = next((image_folder / "test" / "a").iterdir())
    for target in ("executorch", "tflite", "onnx"):
        outputs.append(run("vmoe-predict", "--bundle", str(tmp_path / "b" / target), str(image)))
    for r in outputs:
        assert _chatter(r.stdout + r.stderr) == [], r.args
    assert "executorch: split" in outputs[1].stdout  # the benchmark really ran the runtimes
    verbose = run("vmoe-predict", "--verbose", "--bundle", str(tmp_path / "b" / "tflite"), str(image))
    assert _chatter(verbose.stdout + verbose.stderr), verbose.stderr
