import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from conftest import tiny_config
from vmoe_export.checkpoint import load_checkpoint
from vmoe_export.data import Dataset, Split
from vmoe_export.training import TrainConfig, _Interrupt, run_training


def synthetic_dataset(n=256, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 6, (n + 60,), generator=g)
    images = torch.randint(0, 50, (n + 60, 1, 8, 8), generator=g, dtype=torch.uint8)
    for c in range(6):  # a learnable signal: a bright stripe whose position is the class
        images[labels == c, :, c, :] = 250
    return Dataset("synthetic", tuple(f"c{i}" for i in range(6)), Split(images[:n], labels[:n]), Split(images[n:], labels[n:]))


CFG = TrainConfig(dense_epochs=2, moe_epochs=2, batch_size=32, warmup_steps=5, augment=False, moe_init="scratch")


def _weights(path):
    return load_checkpoint(path).state_dict


def test_pipeline_reports_metrics_and_is_reproducible(tmp_path):
    ds = synthetic_dataset()
    m1 = run_training(tiny_config(), ds, CFG, tmp_path / "a")
    run_training(tiny_config(), ds, CFG, tmp_path / "b")
    for key in ("top1", "router_top1_vs_superclass", "expert_usage", "active_params"):
        assert key in m1["moe"]
    assert sum(m1["moe"]["expert_usage"]) == len(ds.test)
    assert len(m1["superclasses"]) == 3
    a, b = _weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)  # seeded: bit-identical
    card = (tmp_path / "a" / "card.md").read_text()
    assert f"| {100 * m1['moe']['top1']:.2f}% |" in card and f"| {100 * m1['dense']['top1']:.2f}% |" in card
    assert not (tmp_path / "a" / ".state").exists()
    ck = load_checkpoint(tmp_path / "a" / "model.pt")
    assert ck.superclass_of is not None and ck.train_state is None


@pytest.mark.parametrize("stage", ["dense", "moe", "dense+"])
def test_resume_after_kill_matches_uninterrupted_run(tmp_path, stage):
    ds = synthetic_dataset()
    full = run_training(tiny_config(), ds, CFG, tmp_path / "full")
    with pytest.raises(_Interrupt):
        run_training(tiny_config(), ds, CFG, tmp_path / "resumed", stop_after=(stage, 1))
    assert (tmp_path / "resumed" / ".state" / f"{stage}.pt").exists()
    assert not (tmp_path / "resumed" / "model.pt").exists()
    resumed = run_training(tiny_config(), ds, CFG, tmp_path / "resumed")
    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["dense_equal_compute"] == full["dense_equal_compute"]


def test_equal_compute_twin_and_a_given_dense_checkpoint(tmp_path):
    """The equal-compute dense twin is reported beside the MoE; a run started from a saved dense twin
    (--dense-checkpoint) skips stage (a) and trains the very same MoE, so arms can share one dense stage."""
    from dataclasses import replace

    ds = synthetic_dataset()
    m = run_training(tiny_config(), ds, CFG, tmp_path / "a")
    eq = m["dense_equal_compute"]
    assert eq["epochs"] == CFG.dense_epochs + CFG.moe_epochs and m["dense"]["epochs"] == CFG.dense_epochs
    assert m["moe_minus_dense_equal_compute_top1"] == pytest.approx(m["moe"]["top1"] - eq["top1"])
    card = (tmp_path / "a" / "card.md").read_text()
    assert "| dense twin, equal total training (4 epochs: dense twin + 2 more epochs" in card
    assert f"| {100 * eq['top1']:.2f}% |" in card and "MoE minus the dense twin at equal total training" in card

    given = replace(CFG, dense_checkpoint=str(tmp_path / "a" / "dense.pt"), equal_compute=False)
    mb = run_training(tiny_config(), ds, given, tmp_path / "b")
    a, b = _weights(tmp_path / "a" / "model.pt"), _weights(tmp_path / "b" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert mb["dense"]["top1"] == m["dense"]["top1"] and mb["dense_source"] == str(tmp_path / "a" / "dense.pt")
    assert "dense_equal_compute" not in mb and "No equal-compute dense twin" in (tmp_path / "b" / "card.md").read_text()


def test_weight_decay_skips_biases_norms_and_position_embedding():
    from vmoe_export.model import MobileVMoE
    from vmoe_export.training import param_groups

    model = MobileVMoE(tiny_config())
    decay, no_decay = param_groups(model, 0.05)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert "pos_embed" not in decayed and "patch_embed.proj.weight" in decayed and "head.weight" in decayed
    assert not [n for n in decayed if n.endswith(".bias") or ".norm" in n or n.startswith("norm")]
    assert len(decay["params"]) + len(no_decay["params"]) == len(list(model.parameters()))


def test_resume_refuses_a_different_config(tmp_path):
    ds = synthetic_dataset()
    with pytest.raises(_Interrupt):
        run_training(tiny_config(), ds, CFG, tmp_path / "r", stop_after=("dense", 1))
    from vmoe_export.checkpoint import CheckpointError

    with pytest.raises(CheckpointError, match="different model config"):
        run_training(tiny_config(embed_dim=32), ds, CFG, tmp_path / "r")


@pytest.mark.slow
@pytest.mark.parametrize("moe_init", ["scratch", "dense"])
def test_torchrun_two_gloo_ranks_matches_single_process(tmp_path, image_folder, moe_init):
    """2 ranks x half batch with DDP's gradient averaging = 1 process with the full batch."""
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(dict(tiny_config(num_classes=3, num_experts=2).to_dict(), name="ddp-test")))
    common = ["--config", str(cfg_path), "--data-dir", str(image_folder), "--dense-epochs", "2", "--moe-epochs", "2",
              "--batch-size", "16", "--warmup-steps", "3", "--no-augment", "--threads", "1", "--moe-init", moe_init]
    bindir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [str(bindir / "torchrun"), "--nproc-per-node=2", f"--master-port={29517 + (moe_init == 'dense')}", "--no-python", str(bindir / "vmoe-train"),
         *common, "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "world size 2" in ddp.stdout
    single = subprocess.run([str(bindir / "vmoe-train"), *common, "--out", str(tmp_path / "single")],
                            capture_output=True, text=True, env=env, timeout=600)
    assert single.returncode == 0, single.stderr[-3000:]
    a, b = _weights(tmp_path / "ddp" / "model.pt"), _weights(tmp_path / "single" / "model.pt")
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3, msg=k)


def test_upcycled_moe_starts_as_its_dense_twin():
    """Every expert a copy of the dense MLP and the rest shared: with all experts selected (k=E, gates summing
    to 1) the upcycled MoE computes exactly the dense model's function before training. (At k < E the mix is
    scaled by the selected gates' share of the softmax, as the paper's routing defines it.)"""
    from vmoe_export.model import MobileVMoE, upcycle

    torch.manual_seed(0)
    cfg = tiny_config(top_k=3)
    dense, moe = MobileVMoE(cfg.dense_twin()).eval(), MobileVMoE(cfg).eval()
    router_before = {k: v.clone() for k, v in moe.state_dict().items() if k.startswith("router.")}
    upcycle(moe, dense)
    x = torch.randn(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(moe(x)[0], dense(x)[0], atol=1e-5, rtol=1e-5)
    assert all(torch.equal(moe.state_dict()[k], v) for k, v in router_before.items())  # router keeps its own init
    e = moe.moe_blocks[0].experts
    assert torch.equal(e[0].fc1.weight, e[2].fc1.weight) and e[0].fc1.weight.data_ptr() != e[2].fc1.weight.data_ptr()


def test_upcycling_refuses_a_dense_model_of_another_width():
    from vmoe_export.errors import ConfigError
    from vmoe_export.model import MobileVMoE, upcycle

    with pytest.raises(ConfigError, match="not the dense twin"):
        upcycle(MobileVMoE(tiny_config()), MobileVMoE(tiny_config(embed_dim=32).dense_twin()))
    with pytest.raises(ValueError, match="unknown --moe-init"):
        TrainConfig(moe_init="copy")


def test_upcycled_training_resumes_after_kill_and_records_its_init(tmp_path):
    ds = synthetic_dataset()
    cfg = TrainConfig(dense_epochs=2, moe_epochs=2, batch_size=32, warmup_steps=5, augment=False, moe_init="dense")
    m = run_training(tiny_config(), ds, cfg, tmp_path / "full")
    assert m["moe_init"] == "dense" and "sparse upcycling" in (tmp_path / "full" / "card.md").read_text()
    with pytest.raises(_Interrupt):
        run_training(tiny_config(), ds, cfg, tmp_path / "resumed", stop_after=("moe", 1))
    run_training(tiny_config(), ds, cfg, tmp_path / "resumed")
    a, b = _weights(tmp_path / "full" / "model.pt"), _weights(tmp_path / "resumed" / "model.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    scratch = _weights(run_training(tiny_config(), ds, CFG, tmp_path / "scratch") and tmp_path / "scratch" / "model.pt")
    assert not all(torch.equal(a[k], scratch[k]) for k in a)
