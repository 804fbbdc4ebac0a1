"""The streaming ImageFolder path: decode and augment in DataLoader workers, deterministic given the seed
for any number of workers, sharded per rank so that N ranks see one process's batches split N ways."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import tiny_config, write_image_folder
from vmoe_export.data import DataError
from vmoe_export.stream import FileSplit, ImageFiles, load_dataset, train_batches
from vmoe_export.training import TrainConfig, epoch_batches


@pytest.fixture(scope="module")
def rgb_folder(tmp_path_factory):
    """3 classes of 20x24 RGB JPEGs and PNGs (larger than the 8 px model input, so crops are real crops)."""

    def draw(rng, c):
        img = rng.integers(0, 80, (20, 24, 3)).astype(np.uint8)
        img[:, :, c] += 150
        return img

    return write_image_folder(tmp_path_factory.mktemp("rgb"), {"train": 24, "test": 4}, draw,
                              suffix=lambda i: "jpg" if i % 2 else "png")


def _load(root):
    return load_dataset(root, 8, 3, loader="stream")


def _epoch(split, cfg, epoch, world=1, rank=0, per_rank=8):
    steps = (len(split) // world) // per_rank
    return [(x.clone(), y.clone()) for x, y, _ in epoch_batches(split, cfg, epoch, per_rank, world, rank, steps)]


def test_stream_is_deterministic_for_any_worker_count(rgb_folder):
    ds = _load(rgb_folder)
    assert isinstance(ds.train, FileSplit) and len(ds.train) == 72 and ds.class_names == ("a", "b", "c")
    cfg = TrainConfig(seed=3)
    ds.train.workers = 0
    a = _epoch(ds.train, cfg, epoch=0)
    ds.train.workers = 2
    b = _epoch(ds.train, cfg, epoch=0)
    assert all(torch.equal(x1, x2) and torch.equal(y1, y2) for (x1, y1), (x2, y2) in zip(a, b, strict=True))
    assert a[0][0].shape == (8, 3, 8, 8) and a[0][0].dtype == torch.uint8
    c = _epoch(ds.train, cfg, epoch=1)
    assert not all(torch.equal(x1, x2) for (x1, _), (x2, _) in zip(a, c, strict=True))  # new epoch, new draws


def test_ranks_share_out_one_process_batches(rgb_folder):
    """Sharding: at every step the two ranks' images are disjoint and together are the single process's batch."""
    split = _load(rgb_folder).train
    split.workers = 0
    seed, epoch = 5, 2
    order = _order(split, seed, epoch, 1, 0)
    one = [set(order[s * 16 : s * 16 + 16]) for s in range(72 // 16)]
    r0, r1 = (_order(split, seed, epoch, 2, r) for r in (0, 1))
    for step in range(72 // 16):
        a, b = set(r0[step * 8 : step * 8 + 8]), set(r1[step * 8 : step * 8 + 8])
        assert not a & b and a | b == one[step]
    # and the pixels follow the image, not the rank: the same crop of image i on either rank
    rank_batch = next(iter(train_batches(split, 8, seed, epoch, 2, 1)))[0][0]
    assert torch.equal(rank_batch, ImageFiles(split, train=True, seed=seed, epoch=epoch)[r1[0]][0])


def _order(split, seed, epoch, world, rank):
    sampler = torch.utils.data.DistributedSampler(range(len(split)), num_replicas=world, rank=rank, seed=seed,
                                                  drop_last=True)
    sampler.set_epoch(epoch)
    return list(sampler)


def test_unreadable_image_is_replaced_and_counted(rgb_folder, tmp_path, capsys):
    import shutil

    from vmoe_export.model import MobileVMoE
    from vmoe_export.training import _train_stage

    root = tmp_path / "f"
    shutil.copytree(rgb_folder, root)
    (root / "train" / "a" / "0.png").write_bytes(b"not an image")
    ds = load_dataset(root, 8, 3, loader="stream")
    ds.train.workers = 0
    image, label, read = ImageFiles(ds.train, train=True)[0]
    assert read == 0 and int(label) == 0 and image.shape == (3, 8, 8)  # image 1 of class a stands in
    cfg = TrainConfig(batch_size=8, warmup_steps=2)
    model = MobileVMoE(tiny_config(in_chans=3, num_classes=3, moe_layers=0, mean=(0.5,) * 3, std=(0.25,) * 3))
    _train_stage("dense", model, ds.train, list(ds.class_names), 1, cfg, tmp_path / "state.pt")
    assert "; 1 unreadable image(s) replaced by the next readable one" in capsys.readouterr().out


def test_loader_choice_errors(rgb_folder):
    with pytest.raises(DataError, match="needs --data-dir"):
        load_dataset(None, 28, 1, loader="stream")
    with pytest.raises(DataError, match="unknown data loader"):
        load_dataset(rgb_folder, 8, 3, loader="disk")
    assert not isinstance(load_dataset(rgb_folder, 8, 3).train, FileSplit)  # small: decoded into memory


@pytest.mark.slow
def test_streaming_torchrun_two_gloo_ranks_matches_single_process(tmp_path, rgb_folder):
    """Trains through the streaming path (workers decoding and augmenting) on 2 gloo ranks and in one process:
    the same weights, since the ranks split the single process's batches and crops follow the image."""
    cfg_path = tmp_path / "cfg.json"
    cfg_path.write_text(json.dumps(dict(tiny_config(in_chans=3, num_classes=3, num_experts=2, mean=(0.5,) * 3,
                                                    std=(0.25,) * 3).to_dict(), name="stream-test")))
    common = ["--config", str(cfg_path), "--data-dir", str(rgb_folder), "--data-loader", "stream", "--workers", "1",
              "--dense-epochs", "2", "--moe-epochs", "2", "--batch-size", "16", "--warmup-steps", "3", "--threads", "1",
              "--no-equal-compute"]
    bindir = Path(sys.executable).parent
    env = dict(os.environ, OMP_NUM_THREADS="1")
    ddp = subprocess.run(
        [str(bindir / "torchrun"), "--nproc-per-node=2", "--master-port=29533", "--no-python", str(bindir / "vmoe-train"),
         *common, "--out", str(tmp_path / "ddp")], capture_output=True, text=True, env=env, timeout=600)
    assert ddp.returncode == 0, ddp.stderr[-3000:]
    assert "world size 2" in ddp.stdout
    for name in ("single", "again"):
        r = subprocess.run([str(bindir / "vmoe-train"), *common, "--out", str(tmp_path / name)],
                           capture_output=True, text=True, env=env, timeout=600)
        assert r.returncode == 0, r.stderr[-3000:]
    from vmoe_export.checkpoint import load_checkpoint

    a, b, c = (load_checkpoint(tmp_path / n / "model.pt").state_dict for n in ("ddp", "single", "again"))
    assert all(torch.equal(b[k], c[k]) for k in b)  # deterministic given the seed
    for k in a:
        torch.testing.assert_close(a[k], b[k], atol=2e-4, rtol=1e-3, msg=k)
