import warnings
from pathlib import Path

import pytest
import torch

from vmoe_export.checkpoint import Checkpoint, save_checkpoint
from vmoe_export.data import FASHION_MNIST_DIR
from vmoe_export.model import MobileVMoE, ModelConfig

warnings.filterwarnings("ignore", category=DeprecationWarning)

REPO = Path(__file__).resolve().parent.parent
SHIPPED = REPO / "models" / "fmnist-tiny" / "model.pt"

needs_fmnist = pytest.mark.skipif(
    not (FASHION_MNIST_DIR / "t10k-images-idx3-ubyte.gz").exists(),
    reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist); the README's install command does this",
)


@pytest.fixture(scope="session", autouse=True)
def private_weight_cache(tmp_path_factory):
    """The suite's runtimes (and the CLIs it runs) keep packed weights in a directory of the session's own,
    never in the user's ~/.cache."""
    import os

    from vmoe_export.weight_cache import ENV_DIR

    path = tmp_path_factory.mktemp("weight-cache")
    path.chmod(0o700)
    saved = os.environ.get(ENV_DIR)
    os.environ[ENV_DIR] = str(path)
    yield path
    if saved is None:
        os.environ.pop(ENV_DIR, None)
    else:
        os.environ[ENV_DIR] = saved


def tiny_config(**overrides) -> ModelConfig:
    base = dict(name="test-tiny", image_size=8, in_chans=1, patch_size=4, num_classes=6, embed_dim=16, depth=3,
                num_heads=2, mlp_ratio=2.0, num_experts=3, moe_layers=2, top_k=1, mean=(0.5,), std=(0.25,))
    base.update(overrides)
    return ModelConfig(**base)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return MobileVMoE(tiny_config()).eval()


@pytest.fixture
def tiny_checkpoint(tmp_path):
    torch.manual_seed(0)
    cfg = tiny_config()
    model = MobileVMoE(cfg)
    path = tmp_path / "tiny.pt"
    save_checkpoint(Checkpoint(cfg, model.state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2],
                               metrics={"dataset": "synthetic"}), path)
    return path


def write_image_folder(root: Path, per_split: dict[str, int], draw, suffix=lambda i: "png") -> Path:
    """root/<split>/<a|b|c>/<i>.<suffix(i)>, per_split[split] images per class; draw(rng, class index) -> uint8 array."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, n in per_split.items():
        for c, name in enumerate("abc"):
            d = root / split / name
            d.mkdir(parents=True)
            for i in range(n):
                Image.fromarray(draw(rng, c)).save(d / f"{i}.{suffix(i)}")
    return root


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory):
    """A small 3-class ImageFolder of 8x8 PNGs whose classes differ in brightness pattern."""
    import numpy as np

    def draw(rng, c):
        img = rng.integers(0, 60, (8, 8)).astype(np.uint8)
        img[:, c * 3 : c * 3 + 2] += 180
        return img

    return write_image_folder(tmp_path_factory.mktemp("imgfolder"), {"train": 60, "test": 5}, draw)


@pytest.fixture(scope="session")
def shipped_bundle(tmp_path_factory):
    """export(target) -> (bundle dir, parity report): a fresh export of the shipped checkpoint on real
    Fashion-MNIST test images, made once per target per test session and shared."""
    from vmoe_export.checkpoint import load_checkpoint
    from vmoe_export.data import load_fashion_mnist
    from vmoe_export.exporter import ExportOptions, export_bundle

    cache = {}
    root = tmp_path_factory.mktemp("shipped_bundles")

    def export(target):
        if target not in cache:
            test = load_fashion_mnist().test
            cache[target] = export_bundle(load_checkpoint(SHIPPED), target, root, test.images, test.labels,
                                          ExportOptions(parity_images=100, progress=False), log=lambda s: None)
        return cache[target]

    return export


def synthetic_test_set(n=40, seed=0):
    """Random 8x8 uint8 images and labels for the tiny config."""
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 1, 8, 8), generator=g, dtype=torch.uint8), torch.randint(0, 6, (n,), generator=g)


@pytest.fixture(scope="session")
def tiny_onnx_bundle(tmp_path_factory):
    """(bundle dir, checkpoint): the tiny config exported to ONNX (the fastest real converter), once per session,
    in the per-layer schedule (every k; the tests edit its per-layer graphs). Tests copy it before changing anything."""
    from vmoe_export.exporter import ExportOptions, export_bundle

    torch.manual_seed(0)
    cfg = tiny_config(top_k=1)
    ckpt = Checkpoint(cfg, MobileVMoE(cfg).state_dict(), [f"c{i}" for i in range(6)], [0, 0, 1, 1, 2, 2])
    images, labels = synthetic_test_set()
    out = tmp_path_factory.mktemp("bundles")
    path, _ = export_bundle(ckpt, "onnx", out, images, labels,
                            ExportOptions(parity_images=40, progress=False, schedule="per-layer"), log=lambda s: None)
    return path, ckpt


def assert_straight_line_matches_walk(rt, inputs):
    """On a fused schedule, predict's straight line of calls gives what execute's walk (predict with a trace)
    gives, bit for bit; and a prediction's arrays stay the caller's, untouched by the images after it."""
    import numpy as np

    assert rt.schedule.fused_line() is not None
    kept = []
    for x in inputs:
        line, walk = rt.predict(x), rt.predict(x, trace=True)
        assert (line.experts, line.gates) == (walk.experts, walk.gates)
        assert np.array_equal(line.logits, walk.logits) and np.array_equal(line.router_logits, walk.router_logits)
        assert set(line.timings_ms) == set(walk.timings_ms)
        kept.append((line.logits, line.logits.copy(), walk.trace["tokens"], walk.trace["tokens"].copy()))
    for logits, logits_then, tokens, tokens_then in kept:
        assert np.array_equal(logits, logits_then) and np.array_equal(tokens, tokens_then)
