"""Datasets: Fashion-MNIST from IDX files (the embedded default) and ImageFolder directories.

Everything is returned as uint8 image tensors (N, C, H, W) plus int64 labels; normalisation
happens in `preprocess` with the mean/std stored in the model config, the same function the
exporter and the apps mirror.
"""

from __future__ import annotations

import gzip
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .errors import DataError
from .preprocess import load_image as _np_load_image
from .preprocess import read_image as _np_read_image

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


@dataclass
class Split:
    images: torch.Tensor  # uint8 N,C,H,W
    labels: torch.Tensor  # int64 N

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice) -> "Split":
        return Split(self.images[index], self.labels[index])


@dataclass
class Dataset:
    name: str
    class_names: tuple[str, ...]
    train: Split
    test: Split
    skipped: tuple[str, ...] = ()  # "path: reason" for each image that could not be read (ImageFolder)

    def skipped_note(self) -> str:
        """One line for the log when images were skipped, else ''."""
        if not self.skipped:
            return ""
        return f"skipped {len(self.skipped)} unreadable image(s) in {self.name} (first: {self.skipped[0]})"


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped): the format MNIST and Fashion-MNIST ship in."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:
        raise DataError(f"cannot read IDX file {path}: {e}") from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise DataError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    expected = int(np.prod(dims))
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != expected:
        raise DataError(f"{path} is truncated: header says {expected} values, file has {body.size}")
    return body.reshape(dims)


def load_fashion_mnist(root: Path = FASHION_MNIST_DIR) -> Dataset:
    files = {
        "train_x": "train-images-idx3-ubyte.gz", "train_y": "train-labels-idx1-ubyte.gz",
        "test_x": "t10k-images-idx3-ubyte.gz", "test_y": "t10k-labels-idx1-ubyte.gz",
    }
    missing = [name for name in files.values() if not (root / name).is_file()]
    if missing:
        raise DataError(
            f"Fashion-MNIST not found in {root} (missing {', '.join(missing)}). "
            "Install it with `sudo apt-get install dataset-fashion-mnist` (Debian/Ubuntu), "
            "or pass --data-dir with an ImageFolder-style directory."
        )
    arrays = {key: read_idx(root / name) for key, name in files.items()}

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        if len(x) != len(y):
            raise DataError(f"Fashion-MNIST in {root}: {len(x)} images but {len(y)} labels")
        return Split(torch.from_numpy(x.copy()).unsqueeze(1), torch.from_numpy(y.astype(np.int64)))

    return Dataset(
        "fashion-mnist", FASHION_MNIST_CLASSES,
        split(arrays["train_x"], arrays["train_y"]), split(arrays["test_x"], arrays["test_y"]),
    )


def load_image(path: Path, image_size: int, in_chans: int) -> torch.Tensor:
    """One image file as uint8 C,H,W, resized (shorter side, then centre crop) to image_size (preprocess.load_image)."""
    return torch.from_numpy(_np_load_image(path, image_size, in_chans))


def read_image(path: Path, in_chans: int, transform, draft: int | None = None) -> torch.Tensor:
    """preprocess.read_image as a torch tensor: decode with the header checks, transform, uint8 C,H,W."""
    return torch.from_numpy(_np_read_image(path, in_chans, transform, draft))


def empty_class_error(folder: Path, unreadable: int = 0) -> DataError:
    what = f"has no readable images ({unreadable} unreadable)" if unreadable else "has no images"
    return DataError(f"class folder {folder} {what} ({', '.join(sorted(IMAGE_SUFFIXES))}): add images to it or "
                     "remove the folder from every split")


def _read_folder(root: Path, class_names: tuple[str, ...], image_size: int, in_chans: int,
                 skipped: list[str]) -> Split:
    """Every image of every class folder. An image that cannot be read (corrupt, truncated, refused by its
    header) is skipped and appended to `skipped`, so one bad file does not stop a large data set; a class
    folder left with no images is an error, since the model would never see that class."""
    images, labels = [], []
    for label, name in enumerate(class_names):
        files = [p for p in sorted((root / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        read = 0
        for path in files:
            try:
                images.append(load_image(path, image_size, in_chans))
            except DataError as e:
                skipped.append(str(e))
                continue
            labels.append(label)
            read += 1
        if read == 0:
            raise empty_class_error(root / name, unreadable=len(files))
    return Split(torch.stack(images), torch.tensor(labels, dtype=torch.int64))


def folder_layout(root: Path) -> tuple[Path, Path, tuple[str, ...]]:
    """train/ and test/ (or val/) directories of an ImageFolder, and its class names (sorted)."""
    train_dir = root / "train"
    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if not train_dir.is_dir() or test_dir is None:
        raise DataError(
            f"{root} is not an ImageFolder dataset: expected {root}/train/<class>/*.png and "
            f"{root}/test/<class>/*.png (or val/ instead of test/)"
        )
    class_names = tuple(sorted(p.name for p in train_dir.iterdir() if p.is_dir()))
    if len(class_names) < 2:
        raise DataError(f"{train_dir} needs at least two class sub-directories, found {len(class_names)}")
    test_classes = tuple(sorted(p.name for p in test_dir.iterdir() if p.is_dir()))
    if test_classes != class_names:
        raise DataError(f"class directories differ between {train_dir} and {test_dir}")
    return train_dir, test_dir, class_names


def load_image_folder(root: Path, image_size: int, in_chans: int, train: bool = True) -> Dataset:
    """ROOT/train/<class>/*.png and ROOT/test/<class>/*.png (or val/), classes sorted by name.
    With train=False only the test split is read (the train split is left empty).

    Images are decoded once into memory at the model's resolution; data sets over the memory budget
    are streamed instead (vmoe_export.stream.load_dataset).
    """
    root = Path(root)
    train_dir, test_dir, class_names = folder_layout(root)
    skipped: list[str] = []
    test = _read_folder(test_dir, class_names, image_size, in_chans, skipped)
    empty = Split(torch.zeros((0, *test.images.shape[1:]), dtype=torch.uint8), torch.zeros(0, dtype=torch.int64))
    train_split = _read_folder(train_dir, class_names, image_size, in_chans, skipped) if train else empty
    return Dataset(root.name, class_names, train_split, test, tuple(skipped))


def check_shape(ds: Dataset, image_size: int, in_chans: int) -> Dataset:
    _, c, h, w = ds.test.images.shape
    if (c, h, w) != (in_chans, image_size, image_size):
        raise DataError(
            f"dataset {ds.name} has images {c}x{h}x{w} but the model config expects "
            f"{in_chans}x{image_size}x{image_size}; pick a matching --config"
        )
    return ds


@dataclass
class EvalData:
    """Images parity and benchmarks run on, and what they are (recorded in manifests and reports)."""

    split: Split
    kind: str  # fashion-mnist | imagefolder | synthetic
    description: str


SYNTHETIC_NOTE = "synthetic: latency only, not accuracy"


def synthetic_split(image_size: int, in_chans: int, n: int = 500, seed: int = 0) -> Split:
    """Seeded uniform-noise images of the model's input shape, for models with no data (random init)."""
    g = torch.Generator().manual_seed(seed)
    images = torch.randint(0, 256, (n, in_chans, image_size, image_size), generator=g, dtype=torch.uint8)
    return Split(images, torch.zeros(n, dtype=torch.int64))


def eval_split(data_dir: Path | None, trained_on: str, image_size: int, in_chans: int) -> EvalData:
    """Held-out images for parity and benchmarks: the ImageFolder's test/ split when given; else
    Fashion-MNIST's test set for a model trained on it; else, for a random-init model, seeded
    synthetic images (good for latency and numerical parity, meaningless for accuracy)."""
    if data_dir is not None:
        check_folder_fits(Path(data_dir), image_size, in_chans)
        ds = check_shape(load_image_folder(Path(data_dir), image_size, in_chans, train=False), image_size, in_chans)
        skipped = f" ({len(ds.skipped)} unreadable skipped)" if ds.skipped else ""
        return EvalData(ds.test, "imagefolder", f"ImageFolder {Path(data_dir).name}: {len(ds.test)} test images{skipped}")
    if trained_on == "synthetic":
        return EvalData(synthetic_split(image_size, in_chans), "synthetic", SYNTHETIC_NOTE)
    if trained_on != "fashion-mnist":
        raise DataError(f"the checkpoint was trained on {trained_on}: pass --data-dir with its ImageFolder dataset "
                        "(its test/ images are used)")
    ds = check_shape(load_fashion_mnist(), image_size, in_chans)
    return EvalData(ds.test, "fashion-mnist", "Fashion-MNIST test set (10,000 images)")


def calibration_split(data_dir: Path | None, trained_on: str, image_size: int, in_chans: int, n: int,
                      seed: int = 0) -> tuple[Split, str]:
    """`n` images drawn (seeded) from the training split, for quantization calibration: never the test
    images parity runs on. Returns the images and what they are."""
    if data_dir is not None:
        ds = check_shape(load_image_folder(Path(data_dir), image_size, in_chans), image_size, in_chans)
        train, what = ds.train, f"ImageFolder {Path(data_dir).name} train/"
    elif trained_on == "synthetic":
        return synthetic_split(image_size, in_chans, n, seed=seed + 1), SYNTHETIC_NOTE
    elif trained_on == "fashion-mnist":
        train, what = check_shape(load_fashion_mnist(), image_size, in_chans).train, "Fashion-MNIST train set"
    else:
        raise DataError(f"the checkpoint was trained on {trained_on}: pass --data-dir with its ImageFolder dataset "
                        "(its train/ images calibrate quantization)")
    if len(train) == 0:
        raise DataError(f"{what} has no images to calibrate quantization on")
    pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))[:n]
    return train.subset(pick), f"{len(pick)} images from the {what} (seed {seed})"


def check_folder_fits(root: Path, image_size: int, in_chans: int, sample: int = 8) -> None:
    """Refuse an ImageFolder whose images cannot be the model's input: grayscale images for an RGB model
    (or colour for a grayscale one), or images under half the model's input size (upscaled noise).
    Reads only the headers of the first few images of each class."""
    from PIL import Image

    test_dir = next((root / d for d in ("test", "val") if (root / d).is_dir()), None)
    if test_dir is None:
        return  # load_image_folder names the problem
    for class_dir in sorted(p for p in test_dir.iterdir() if p.is_dir()):
        for path in sorted(p for p in class_dir.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES)[:sample]:
            try:
                with Image.open(path) as img:
                    (w, h), mode = img.size, img.mode
            except (OSError, ValueError, Image.DecompressionBombError):
                continue  # unreadable: reported when loaded
            chans = 1 if mode in ("L", "LA", "I", "I;16", "F", "1") else 3
            if chans != in_chans:
                kind = {1: "grayscale", 3: "colour"}
                raise DataError(f"--data-dir {root} holds {kind[chans]} images ({path.name}: mode {mode}) but the model "
                                f"takes {kind.get(in_chans, in_chans)} input: pick the matching --config or data")
            if min(w, h) * 2 < image_size:
                raise DataError(f"--data-dir {root} holds {w}x{h} images ({path.name}) but the model takes "
                                f"{image_size}x{image_size}: they would be upscaled over 2x; pick the matching --config or data")


def holdout_split(train: Split, fraction: float, seed: int) -> tuple[Split, Split]:
    """Carve a held-out split off the training set (for the confusion matrix), reproducibly."""
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(train), generator=g)
    n_hold = int(len(train) * fraction)
    return train.subset(perm[n_hold:]), train.subset(perm[:n_hold])


def preprocess(images: torch.Tensor, cfg) -> torch.Tensor:
    """uint8 N,C,H,W -> float32 normalised with the model config's polarity rule, mean and std, on the images'
    device (training runs it on the GPU). The same arithmetic as preprocess.normalize, which the runtimes use:
    tests hold the two equal bit for bit on the golden images."""
    x = normalize_polarity(images, cfg.polarity).float() / 255.0
    m = torch.tensor(cfg.mean, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(cfg.std, dtype=torch.float32, device=images.device).view(1, -1, 1, 1)
    return (x - m) / s


def bright_border(images: torch.Tensor) -> torch.Tensor:
    """Per image: is the mean of its outermost ring of pixels (all channels) above mid-grey? In integers
    (2 * sum > 255 * count) so that every runtime decides exactly alike."""
    h, w = images.shape[-2:]
    ring = torch.ones(h, w, dtype=torch.bool, device=images.device)
    ring[1:-1, 1:-1] = False
    border = images[:, :, ring].long()
    return 2 * border.sum((1, 2)) > 255 * border.shape[1] * border.shape[2]


def normalize_polarity(images: torch.Tensor, polarity: str) -> torch.Tensor:
    """'dark-background': the model saw light objects on dark ground (Fashion-MNIST), so an image whose border
    is bright (a phone photo of a garment on a light table) is inverted first. 'as-is': unchanged."""
    if polarity == "as-is":
        return images
    flip = bright_border(images)
    if not flip.any():
        return images
    out = images.clone()
    out[flip] = 255 - out[flip]
    return out


def augment(images: torch.Tensor, generator: torch.Generator, max_shift: int = 2, flip: bool = True) -> torch.Tensor:
    """Cheap batch augmentation: random translation (zero padded) and horizontal flip."""
    n, c, h, w = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4)
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).view(n, 1, h, 1).expand(n, c, h, w + 2 * max_shift)
    out = padded.gather(2, rows)
    cols = (dx[:, None] + torch.arange(w)).view(n, 1, 1, w).expand(n, c, h, w)
    out = out.gather(3, cols)
    if flip:
        mask = torch.rand(n, generator=generator) < 0.5
        out[mask] = out[mask].flip(-1)
    return out
