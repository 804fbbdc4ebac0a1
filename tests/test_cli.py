"""Command-line behaviour: help everywhere, one clear line for bad input, nothing partial written."""

import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent


def run(*args, **kw):
    return subprocess.run([str(BIN / args[0]), *args[1:]], capture_output=True, text=True, timeout=300, **kw)


def _error_line(result):
    lines = [line for line in result.stderr.strip().splitlines() if line.strip()]
    return lines[-1] if lines else ""


@pytest.mark.parametrize("cmd", [["vmoe-train"], ["vmoe-export"], ["vmoe-export", "run"], ["vmoe-predict"], ["vmoe-bench"]])
def test_every_command_has_help(cmd):
    r = run(*cmd, "--help")
    assert r.returncode == 0 and "usage:" in r.stdout and len(r.stdout) > 300


def test_train_help_documents_every_option():
    out = run("vmoe-train", "--help").stdout
    for opt in ["--config", "--data-dir", "--out", "--dense-epochs", "--moe-epochs", "--batch-size", "--lr",
                "--router-weight", "--seed", "--overwrite", "--holdout-fraction"]:
        assert opt in out


def test_train_bad_option_value(tmp_path):
    r = run("vmoe-train", "--dense-epochs", "0", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "must be at least 1" in _error_line(r) and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_train_unknown_config(tmp_path):
    r = run("vmoe-train", "--config", "nope", "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "known configs" in _error_line(r)
    assert not (tmp_path / "o").exists()


def test_models_dir_override_and_missing_default_checkpoint(tmp_path):
    """A non-editable install finds no models/ beside the package: VMOE_MODELS_DIR names one, and a
    missing default checkpoint says how to fix it."""
    import os
    import shutil

    models = tmp_path / "models"
    models.mkdir()
    shutil.copy(Path(__file__).parent.parent / "models" / "fmnist-tiny.json", models / "only-this.json")
    env = {**os.environ, "VMOE_MODELS_DIR": str(models)}
    r = run("vmoe-train", "--config", "nope", "--out", str(tmp_path / "o"), env=env)
    assert r.returncode == 2 and "known configs: only-this" in _error_line(r)
    r = run("vmoe-export", "--target", "onnx", "--output", str(tmp_path / "b"), env=env)
    assert r.returncode == 2 and "VMOE_MODELS_DIR" in _error_line(r) and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


def test_train_missing_data_dir_writes_nothing(tmp_path):
    r = run("vmoe-train", "--data-dir", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "not an ImageFolder dataset" in _error_line(r) and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


def test_train_corrupt_resume_state(tmp_path, image_folder):
    import json

    from conftest import tiny_config

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny_config(num_classes=3, num_experts=2).to_dict()))
    state = tmp_path / "o" / ".state"
    state.mkdir(parents=True)
    (state / "dense.pt").write_bytes(b"\x80\x02garbage")
    r = run("vmoe-train", "--config", str(cfg), "--data-dir", str(image_folder), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "corrupt" in _error_line(r) and "Traceback" not in r.stderr
    assert sorted(p.name for p in (tmp_path / "o").rglob("*")) == [".state", "dense.pt"]


def test_export_corrupt_checkpoint(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"nonsense")
    r = run("vmoe-export", "--target", "onnx", "--checkpoint", str(bad), "--output", str(tmp_path / "b"))
    assert r.returncode == 2 and "corrupt" in _error_line(r) and "Traceback" not in r.stderr
    assert not (tmp_path / "b").exists()


@pytest.mark.slow
def test_export_and_run_through_the_cli(tmp_path):
    """The commands a user types, end to end: export the shipped model, then classify a test image with
    the bundle. Converter chatter from Python loggers stays hidden."""
    import numpy as np
    from PIL import Image

    from vmoe_export.data import load_fashion_mnist

    r = run("vmoe-export", "--target", "onnx", "--output", str(tmp_path / "b"), "--parity-images", "50", "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "onnx: parity PASS on 50 test images" in r.stdout and "onnx: wrote" in r.stdout
    for noise in ("torchvision is not installed", "Failed to load", "FutureWarning"):
        assert noise not in r.stderr
    assert [p.name for p in tmp_path.joinpath("b").iterdir()] == ["onnx"]

    test = load_fashion_mnist().test
    img = tmp_path / "x.png"
    Image.fromarray(test.images[0, 0].numpy().astype(np.uint8)).save(img)
    r = run("vmoe-predict", "--bundle", str(tmp_path / "b" / "onnx"), "--json", str(img))
    assert r.returncode == 0, r.stderr[-2000:]
    assert '"class_id"' in r.stdout and '"experts"' in r.stdout


def test_export_unknown_target(tmp_path):
    r = run("vmoe-export", "--target", "tensorrt", "--output", str(tmp_path / "b"))
    assert r.returncode == 2 and "invalid choice: 'tensorrt'" in r.stderr


def test_predict_not_a_bundle(tmp_path):
    img = tmp_path / "x.png"
    img.write_bytes(b"")
    r = run("vmoe-export", "run", "--bundle", str(tmp_path), str(img))
    assert r.returncode == 2 and "not a vmoe-export bundle" in _error_line(r)


def test_train_resume_with_mismatched_config(tmp_path, image_folder):
    import json

    from conftest import tiny_config
    from vmoe_export.checkpoint import Checkpoint, save_checkpoint
    from vmoe_export.model import MobileVMoE

    cfg = tmp_path / "c.json"
    cfg.write_text(json.dumps(tiny_config(num_classes=3, num_experts=2).to_dict()))
    other = tiny_config(num_classes=3, num_experts=2, embed_dim=32).dense_twin()
    save_checkpoint(Checkpoint(other, MobileVMoE(other).state_dict(), ["a", "b", "c"]), tmp_path / "o" / ".state" / "dense.pt")
    before = (tmp_path / "o" / ".state" / "dense.pt").read_bytes()
    r = run("vmoe-train", "--config", str(cfg), "--data-dir", str(image_folder), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and "different model config" in _error_line(r) and "embed_dim" in _error_line(r)
    assert (tmp_path / "o" / ".state" / "dense.pt").read_bytes() == before
    assert not (tmp_path / "o" / "model.pt").exists()
