import gzip
import struct

import numpy as np
import pytest
import torch

from conftest import needs_fmnist, tiny_config
from vmoe_export.checkpoint import Checkpoint, CheckpointError, load_checkpoint, save_checkpoint
from vmoe_export.data import DataError, load_fashion_mnist, load_image_folder, read_idx
from vmoe_export.model import MobileVMoE


def _write_idx(path, array):
    header = bytes([0, 0, 8, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def test_idx_round_trip_and_truncation(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", arr)
    assert (read_idx(tmp_path / "a.gz") == arr).all()
    with gzip.open(tmp_path / "b.gz", "wb") as f:
        f.write(bytes([0, 0, 8, 1]) + struct.pack(">I", 10) + b"\x01\x02")
    with pytest.raises(DataError, match="truncated"):
        read_idx(tmp_path / "b.gz")
    (tmp_path / "c.gz").write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_idx(tmp_path / "c.gz")


def test_missing_fashion_mnist_says_how_to_install(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        load_fashion_mnist(tmp_path)


@needs_fmnist
def test_fashion_mnist_loads():
    ds = load_fashion_mnist()
    assert ds.train.images.shape == (60000, 1, 28, 28) and ds.test.images.shape == (10000, 1, 28, 28)
    assert ds.train.images.dtype == torch.uint8 and int(ds.test.labels.max()) == 9


def test_image_folder(image_folder):
    ds = load_image_folder(image_folder, 8, 1)
    assert ds.class_names == ("a", "b", "c")
    assert ds.train.images.shape[1:] == (1, 8, 8) and len(ds.test) == 15


def test_image_folder_errors(tmp_path):
    with pytest.raises(DataError, match="not an ImageFolder dataset"):
        load_image_folder(tmp_path, 8, 1)


def _copy_folder(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return dst


def test_unreadable_images_are_skipped_and_counted(tmp_path, image_folder):
    root = _copy_folder(image_folder, tmp_path / "f")
    (root / "train" / "a" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    (root / "test" / "b" / "empty.jpg").write_bytes(b"")
    ds = load_image_folder(root, 8, 1)
    assert len(ds.train) == 180 and len(ds.test) == 15  # every readable image, nothing else
    assert len(ds.skipped) == 2 and any("broken.png" in s for s in ds.skipped)
    assert ds.skipped_note().startswith("skipped 2 unreadable image(s) in f (first: cannot read image ")


@pytest.mark.parametrize("how", ["empty", "unreadable"])
def test_class_folder_without_readable_images_is_refused(tmp_path, image_folder, how):
    root = _copy_folder(image_folder, tmp_path / "f")
    for f in (root / "train" / "c").iterdir():
        f.unlink()
    if how == "unreadable":
        (root / "train" / "c" / "x.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match=r"class folder .*train/c has no (readable )?images.*add images to it or remove"):
        load_image_folder(root, 8, 1)


def test_checkpoint_round_trip(tmp_path):
    cfg = tiny_config()
    model = MobileVMoE(cfg)
    save_checkpoint(Checkpoint(cfg, model.state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2], {"x": 1}),
                    tmp_path / "m.pt")
    assert not list(tmp_path.glob(".*tmp"))  # atomic write leaves no temp file
    ck = load_checkpoint(tmp_path / "m.pt")
    assert ck.config == cfg and ck.superclass_of == [0, 0, 1, 1, 2, 2] and ck.metrics == {"x": 1}
    x = torch.randn(3, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(ck.build_model()(x)[0], model.eval()(x)[0])


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"garbage" * 10)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(bad)
    cfg = tiny_config()
    save_checkpoint(Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)]), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="different model config"):
        load_checkpoint(tmp_path / "m.pt", expect_config=tiny_config(embed_dim=32))
    # Weights that do not fit the stored config.
    wrong = Checkpoint(tiny_config(embed_dim=32), MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)])
    save_checkpoint(wrong, tmp_path / "w.pt")
    with pytest.raises(CheckpointError, match="do not match"):
        load_checkpoint(tmp_path / "w.pt")


def test_checkpoint_refuses_pickled_code(tmp_path):
    """weights_only=True: a pickle that would run code on load is refused."""
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    torch.save({"format": "vmoe-export/checkpoint", "payload": Evil()}, tmp_path / "evil.pt")
    with pytest.raises(CheckpointError, match="corrupt or not"):
        load_checkpoint(tmp_path / "evil.pt")
