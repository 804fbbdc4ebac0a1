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
                "--router-weight", "--seed", "--overwrite", "--holdout-fraction", "--moe-init", "--dense-checkpoint",
                "--no-equal-compute", "--data-loader", "--workers"]:
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


# ---- any model, any data (issue 10): --config + --random-init, synthetic images labelled as such

def _in_process(main, argv, capsys):
    code = main(argv)
    err = capsys.readouterr().err.strip().splitlines()
    return code, err


def test_random_init_export_is_labelled_synthetic(tmp_path, capsys):
    import json

    from conftest import tiny_config
    from vmoe_export.bundle import read_manifest
    from vmoe_export.cli import export_main

    cfg = tmp_path / "rgb.json"
    cfg.write_text(json.dumps(tiny_config(name="rgb-tiny", image_size=16, in_chans=3, mean=(0.5,) * 3, std=(0.25,) * 3).to_dict()))
    code = export_main(["--target", "onnx", "--config", str(cfg), "--random-init", "--output", str(tmp_path / "b"),
                        "--parity-images", "20", "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "[synthetic: latency only, not accuracy]" in out and "% (torch" not in out  # no accuracy figure
    m = read_manifest(tmp_path / "b" / "onnx")
    assert m["eval_data"]["kind"] == "synthetic" and m["parity"]["data"] == "synthetic: latency only, not accuracy"
    assert m["model"]["config"]["image_size"] == 16 and m["class_names"][0] == "class 0"


@pytest.mark.parametrize("args,message", [
    (["--config", "no-such-config", "--random-init"], "known configs"),
    (["--config", "vit-12x192-moe", "--random-init", "--checkpoint", "x.pt"], "takes no --checkpoint"),
    (["--config", "vit-12x192-moe"], "--config without --random-init"),
    (["--random-init"], "needs --config"),
])
def test_model_choice_errors_are_one_line(tmp_path, capsys, args, message):
    from vmoe_export.bench.cli import main as bench_main
    from vmoe_export.cli import export_main

    for main, prog in ((export_main, "vmoe-export"), (bench_main, "vmoe-bench")):
        extra = ["--target", "onnx", "--output", str(tmp_path / "b")] if prog == "vmoe-export" else \
            ["--target", "onnx", "--bundles", str(tmp_path / "b"), "--out", str(tmp_path / "r")]
        code, err = _in_process(main, [*args, *extra], capsys)
        assert code == 2 and len(err) == 1 and err[0].startswith(f"{prog}: error:") and message in err[0], err
    assert not (tmp_path / "b").exists() and not (tmp_path / "r").exists()


def test_data_dir_that_does_not_fit_the_config(tmp_path, capsys, image_folder):
    from vmoe_export.cli import export_main

    code, err = _in_process(export_main, ["--target", "onnx", "--config", "vit-12x192-moe", "--random-init",
                                          "--data-dir", str(image_folder), "--output", str(tmp_path / "b")], capsys)
    assert code == 2 and len(err) == 1 and "holds grayscale images" in err[0] and "takes colour input" in err[0]
    from PIL import Image

    small = tmp_path / "small"
    for split in ("train", "test"):
        (small / split / "a").mkdir(parents=True)
        Image.new("RGB", (20, 20)).save(small / split / "a" / "0.png")
    code, err = _in_process(export_main, ["--target", "onnx", "--config", "vit-12x192-moe", "--random-init",
                                          "--data-dir", str(small), "--output", str(tmp_path / "b")], capsys)
    assert code == 2 and "upscaled over 2x" in err[0]
    assert not (tmp_path / "b").exists()


def test_train_bad_data_sets_are_one_error_line(tmp_path, image_folder):
    """Fewer classes than experts, an empty class folder: one error line naming the fix, exit 2, nothing
    written. A corrupt image among readable ones is skipped and counted instead."""
    import json
    import shutil

    from conftest import tiny_config

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(tiny_config(num_classes=3, num_experts=4).to_dict(), name="too-many-experts")))
    r = run("vmoe-train", "--config", str(cfg), "--data-dir", str(image_folder), "--out", str(tmp_path / "o1"))
    assert r.returncode == 2 and "num_experts 4 exceeds the 3 classes" in _error_line(r), r.stderr[-2000:]
    assert "Traceback" not in r.stderr and not (tmp_path / "o1").exists()

    root = tmp_path / "f"
    shutil.copytree(image_folder, root)
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    cfg.write_text(json.dumps(dict(tiny_config(num_classes=3, num_experts=2).to_dict(), name="ok")))
    r = run("vmoe-train", "--config", str(cfg), "--data-dir", str(root), "--out", str(tmp_path / "o2"))
    assert r.returncode == 2 and "test/b has no images" in _error_line(r) and "remove the folder" in _error_line(r)
    assert not (tmp_path / "o2").exists()

    (root / "test" / "b" / "0.png").write_bytes((image_folder / "test" / "b" / "0.png").read_bytes())
    (root / "train" / "a" / "bad.png").write_bytes(b"garbage")
    r = run("vmoe-train", "--config", str(cfg), "--data-dir", str(root), "--out", str(tmp_path / "o3"),
            "--dense-epochs", "1", "--moe-epochs", "1", "--batch-size", "32", "--threads", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "vmoe-train: skipped 1 unreadable image(s) in f (first: cannot read image" in r.stderr


def test_train_dense_checkpoint_of_another_width_is_one_error_line(tmp_path, image_folder):
    import json

    import torch
    from conftest import tiny_config

    from vmoe_export.checkpoint import Checkpoint, save_checkpoint
    from vmoe_export.model import MobileVMoE

    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps(dict(tiny_config(num_classes=3, num_experts=2).to_dict(), name="narrow")))
    torch.manual_seed(0)
    wide = MobileVMoE(tiny_config(num_classes=3, num_experts=2, embed_dim=32).dense_twin())
    save_checkpoint(Checkpoint(wide.cfg, wide.state_dict(), ["a", "b", "c"]), tmp_path / "dense.pt")
    r = run("vmoe-train", "--config", str(cfg), "--data-dir", str(image_folder), "--moe-init", "dense",
            "--dense-checkpoint", str(tmp_path / "dense.pt"), "--out", str(tmp_path / "o"))
    line = _error_line(r)
    assert r.returncode == 2 and "is not the dense twin of 'narrow' (embed_dim: 32, needs 16" in line, r.stderr[-2000:]
    assert "pass a dense.pt trained for this config" in line and "Traceback" not in r.stderr
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("args,message", [
    (["--config", "fmnist-tiny-k2", "--random-init", "--schedule", "fused"], "exact only for top_k=1"),
])
def test_fused_schedule_where_it_does_not_apply_is_one_error_line(tmp_path, capsys, args, message):
    from vmoe_export.bench.cli import main as bench_main
    from vmoe_export.cli import export_main

    code, err = _in_process(export_main, [*args, "--target", "onnx", "--output", str(tmp_path / "b")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("vmoe-export: error:") and message in err[0], err
    code, err = _in_process(bench_main, [*args, "--target", "onnx", "--bundles", str(tmp_path / "b"),
                                         "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and len(err) == 1 and err[0].startswith("vmoe-bench: error:") and message in err[0], err
    assert not (tmp_path / "b").exists() and not (tmp_path / "r").exists()
