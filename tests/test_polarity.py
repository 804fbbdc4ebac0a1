"""The polarity rule: a dark-background model inverts photo-like inputs (bright border) before normalising, the
same way in training, export, the Python runtime and vmoe-predict (the app cores check the golden vectors)."""

import json
from dataclasses import replace

import numpy as np
import pytest
import torch

from conftest import needs_fmnist, tiny_config
from vmoe_export.data import bright_border, normalize_polarity, preprocess
from vmoe_export.errors import ConfigError


def _garments(n=6, seed=0):
    """Light blobs on a black ground, like Fashion-MNIST."""
    g = torch.Generator().manual_seed(seed)
    images = torch.zeros(n, 1, 8, 8, dtype=torch.uint8)
    images[:, :, 2:6, 2:6] = torch.randint(120, 256, (n, 1, 4, 4), generator=g, dtype=torch.uint8)
    return images


def test_rule_inverts_bright_border_images_only_and_exactly():
    stored = _garments()
    photos = 255 - stored
    assert not bright_border(stored).any() and bright_border(photos).all()
    assert torch.equal(normalize_polarity(photos, "dark-background"), stored)
    assert torch.equal(normalize_polarity(stored, "dark-background"), stored)
    assert torch.equal(normalize_polarity(photos, "as-is"), photos)
    # the decision is the integer rule 2 * sum > 255 * count over the one-pixel ring
    ring = torch.full((1, 1, 3, 3), 127, dtype=torch.uint8)
    ring[0, 0, 1, 1] = 255
    assert not bright_border(ring)
    ring[0, 0, 0, 0] = 135  # ring sum 127 * 7 + 135 = 1024 > 255 * 8 / 2 = 1020
    assert bright_border(ring)
    dark, light = tiny_config(polarity="dark-background"), tiny_config()
    assert torch.equal(preprocess(photos, dark), preprocess(stored, dark))
    assert not torch.equal(preprocess(photos, light), preprocess(stored, light))
    with pytest.raises(ConfigError, match="polarity 'inverse' must be one of as-is, dark-background"):
        tiny_config(polarity="inverse")


@needs_fmnist
def test_fashion_mnist_stored_images_are_never_inverted():
    from vmoe_export.data import load_fashion_mnist

    ds = load_fashion_mnist()
    assert int(bright_border(ds.test.images).sum()) == 0 and int(bright_border(ds.train.images[:20000]).sum()) == 0


@needs_fmnist
def test_vmoe_predict_classifies_a_photo_like_image_like_the_stored_one(shipped_bundle, tmp_path, capsys):
    """The shipped model declares dark-background: an inverted test image (dark garment on light ground)
    goes through vmoe-predict exactly like the stored one; with the rule edited off, it would not."""
    from PIL import Image

    from vmoe_export.cli import predict_main
    from vmoe_export.data import load_fashion_mnist
    from vmoe_export.runtime import preprocess_image

    bundle, _ = shipped_bundle("onnx")
    manifest = json.loads((bundle / "manifest.json").read_text())
    images = load_fashion_mnist().test.images[:8]
    paths = []
    for i, img in enumerate(images):
        for kind, pixels in (("stored", img), ("photo", 255 - img)):
            paths.append(tmp_path / f"{i}-{kind}.png")
            Image.fromarray(pixels[0].numpy()).save(paths[-1])
    for stored, photo in zip(paths[::2], paths[1::2], strict=True):
        np.testing.assert_array_equal(preprocess_image(photo, manifest), preprocess_image(stored, manifest))
        as_is = dict(manifest, preprocessing=dict(manifest["preprocessing"], polarity="as-is"))
        assert not np.array_equal(preprocess_image(photo, as_is), preprocess_image(stored, manifest))
    assert predict_main(["--bundle", str(bundle), "--json", *map(str, paths)]) == 0
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    drop = lambda r: {k: v for k, v in r.items() if k not in ("image", "timings_ms")}  # noqa: E731
    assert [drop(r) for r in out[::2]] == [drop(r) for r in out[1::2]]


def test_training_reports_inverted_accuracy(tmp_path):
    from test_train import CFG, synthetic_dataset

    from vmoe_export.training import run_training

    m = run_training(replace(tiny_config(), polarity="as-is"), synthetic_dataset(), replace(CFG, equal_compute=False),
                     tmp_path / "r")
    assert 0 <= m["moe"]["top1_inverted"] <= 1 and 0 <= m["dense"]["top1_inverted"] <= 1
    assert "Top-1 on the test images inverted" in (tmp_path / "r" / "card.md").read_text()
