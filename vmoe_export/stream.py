"""Streaming ImageFolder for data sets too large to decode into memory (ImageNet at 224 px is ~190 GB as uint8),
and `load_dataset`, which picks it or the in-memory path of vmoe_export.data.

Images stay on disk as (path, label) lists; DataLoader workers decode and augment them with Pillow (already
the toolkit's image reader; torchvision's PyPI wheel does not load against the CPU torch 2.13 wheel pinned
here): the standard ImageNet training crop (random resized crop, area 25-100%, aspect 3/4-4/3, then a
horizontal flip), resized with Pillow's box-filtered reduce so large photos are not aliased; evaluation uses
`data.load_image`, the very resize + centre crop the bundle manifest declares and the runtimes apply. Every random draw is seeded from (seed, epoch, image index), so a batch is the same for
any number of workers or ranks; per-rank sharding is torch's DistributedSampler, whose global order does
not depend on the world size, so N ranks see exactly the batches one process sees, split N ways.

An image that cannot be decoded is replaced by the next readable one and counted (one bad file does not
stop a long run); the count is reported per epoch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .data import (IMAGE_SUFFIXES, DataError, Dataset, check_folder_fits, check_shape, empty_class_error, folder_layout,
                   load_fashion_mnist, load_image, load_image_folder, read_image)

MEMORY_BUDGET_BYTES = 2 << 30  # above this many decoded uint8 bytes, an ImageFolder is streamed
LOADERS = ("auto", "memory", "stream")


@dataclass
class FileSplit:
    """A split kept on disk: image paths and their labels, read through DataLoader workers."""

    paths: list[str]
    labels: torch.Tensor  # int64 N
    image_size: int
    in_chans: int
    workers: int = field(default_factory=lambda: min(8, os.cpu_count() or 1))

    def __len__(self) -> int:
        return len(self.labels)

    def subset(self, index: torch.Tensor | slice) -> FileSplit:
        idx = range(len(self.paths))[index] if isinstance(index, slice) else index.tolist()
        return FileSplit([self.paths[i] for i in idx], self.labels[index], self.image_size, self.in_chans, self.workers)


def scan(root: Path, class_names: tuple[str, ...], image_size: int, in_chans: int) -> FileSplit:
    """Paths and labels of every image file under root/<class>/, classes in the given order."""
    paths, labels = [], []
    for label, name in enumerate(class_names):
        files = [str(p) for p in sorted((root / name).iterdir()) if p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise empty_class_error(root / name)
        paths += files
        labels += [label] * len(files)
    return FileSplit(paths, torch.tensor(labels, dtype=torch.int64), image_size, in_chans)


def _sample_seed(seed: int, epoch: int, index: int) -> int:
    return (seed * 1_000_003 + epoch * 7_919 + index * 104_729) % (2**63 - 1)


def random_resized_crop(width: int, height: int, g: torch.Generator, scale=(0.25, 1.0), ratio=(3 / 4, 4 / 3)):
    """The Inception/ImageNet crop box (left, top, right, bottom): a random area share and log-uniform aspect
    ratio, ten tries, else the largest centred box within the ratio range."""
    area = width * height
    for _ in range(10):
        target = area * float(torch.empty(1).uniform_(scale[0], scale[1], generator=g))
        aspect = math.exp(float(torch.empty(1).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=g)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            left = int(torch.randint(0, width - w + 1, (1,), generator=g))
            top = int(torch.randint(0, height - h + 1, (1,), generator=g))
            return left, top, left + w, top + h
    w, h = width, height
    if width / height < ratio[0]:
        h = round(width / ratio[0])
    elif width / height > ratio[1]:
        w = round(height * ratio[1])
    left, top = (width - w) // 2, (height - h) // 2
    return left, top, left + w, top + h


def decode_for_training(path: str, image_size: int, in_chans: int, seed: int) -> torch.Tensor:
    """Full image -> random resized crop -> random horizontal flip, uint8 C,H,W; the draws come from `seed`.
    Read through data.read_image, so the same header checks refuse bombs and absurd shapes."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)

    def crop_and_flip(img):
        box = random_resized_crop(img.width, img.height, g)
        img = img.resize((image_size, image_size), Image.Resampling.BILINEAR, box=box, reducing_gap=2.0)
        return img.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if bool(torch.rand(1, generator=g) < 0.5) else img

    return read_image(Path(path), in_chans, crop_and_flip, draft=2 * image_size)


class ImageFiles(torch.utils.data.Dataset):
    """Item i -> (uint8 image, label, 1 if image i itself was read else 0)."""

    def __init__(self, split: FileSplit, train: bool, seed: int = 0, epoch: int = 0):
        self.split, self.train, self.seed, self.epoch = split, train, seed, epoch

    def __len__(self) -> int:
        return len(self.split)

    def _read(self, i: int) -> torch.Tensor:
        s = self.split
        if self.train:
            return decode_for_training(s.paths[i], s.image_size, s.in_chans, _sample_seed(self.seed, self.epoch, i))
        return load_image(Path(s.paths[i]), s.image_size, s.in_chans)

    def __getitem__(self, i: int):
        for step in range(len(self)):  # the next readable image stands in for an unreadable one
            j = (i + step) % len(self)
            try:
                return self._read(j), self.split.labels[j], int(step == 0)
            except DataError:
                continue
        raise DataError(f"none of the {len(self)} images of the data set can be read")


def train_batches(split: FileSplit, batch_size: int, seed: int, epoch: int, world: int = 1, rank: int = 0,
                  augment: bool = True):
    """One epoch of this rank's training batches: (uint8 images, labels, images read as themselves). Without
    augmentation, the evaluation crop in the same sharded order."""
    from torch.utils.data import DataLoader, DistributedSampler

    sampler = DistributedSampler(range(len(split)), num_replicas=world, rank=rank, shuffle=True, seed=seed,
                                 drop_last=True)
    sampler.set_epoch(epoch)
    return DataLoader(ImageFiles(split, train=augment, seed=seed, epoch=epoch), batch_size=batch_size, sampler=sampler,
                      num_workers=split.workers, drop_last=True, pin_memory=torch.cuda.is_available(),
                      persistent_workers=False, **worker_start(split.workers))


def eval_batches(split: FileSplit, batch_size: int):
    """The split in order, resized and centre-cropped as the runtimes do: (uint8 images, labels, read flags)."""
    from torch.utils.data import DataLoader

    return DataLoader(ImageFiles(split, train=False), batch_size=batch_size, shuffle=False, num_workers=split.workers,
                      **worker_start(split.workers))


def worker_start(workers: int) -> dict:
    """DataLoader workers start from a fork server (this module preloaded), not as forks of this process. A fork
    copies every native runtime the process holds: in CI a worker forked after the tests had used ONNX Runtime
    hung for good when the garbage collector freed the copy of a session, whose destructor waited on a condition
    variable of a thread that exists only in the parent."""
    import multiprocessing

    if not workers or "forkserver" not in multiprocessing.get_all_start_methods():
        return {}
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__])
    return {"multiprocessing_context": context}


def decoded_bytes(n_images: int, image_size: int, in_chans: int) -> int:
    return n_images * in_chans * image_size * image_size


def load_dataset(data_dir: Path | None, image_size: int, in_chans: int, loader: str = "auto",
                 workers: int | None = None) -> Dataset:
    """The training data set. Fashion-MNIST and ImageFolders that fit the memory budget are decoded into memory;
    larger ImageFolders (or loader="stream") are streamed from disk by `workers` DataLoader workers per rank."""
    if loader not in LOADERS:
        raise DataError(f"unknown data loader {loader!r}; choose one of: {', '.join(LOADERS)}")
    if data_dir is None:
        if loader == "stream":
            raise DataError("--data-loader stream needs --data-dir (Fashion-MNIST is always read into memory)")
        return check_shape(load_fashion_mnist(), image_size, in_chans)
    root = Path(data_dir)
    if loader == "memory":
        return check_shape(load_image_folder(root, image_size, in_chans), image_size, in_chans)
    train_dir, test_dir, class_names = folder_layout(root)
    train = scan(train_dir, class_names, image_size, in_chans)  # listed once, also to size the data set
    if loader == "auto" and decoded_bytes(len(train), image_size, in_chans) <= MEMORY_BUDGET_BYTES:
        return check_shape(load_image_folder(root, image_size, in_chans), image_size, in_chans)
    check_folder_fits(root, image_size, in_chans)
    test = scan(test_dir, class_names, image_size, in_chans)
    if workers is not None:
        train.workers = test.workers = workers
    return Dataset(root.name, class_names, train, test)
