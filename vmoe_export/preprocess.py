"""Image file -> model input, in NumPy: decoding with the header checks, resize + centre crop, the polarity
rule and normalisation. This is the device side's copy of the rule the manifest's preprocessing block
declares (training's torch version, data.preprocess, is tested bit for bit against it on the golden images),
and the one the Kotlin and Swift cores mirror."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Mapping

import numpy as np

from .errors import DataError

MAX_IMAGE_PIXELS = 100_000_000  # a 100 MP photo; larger is refused from the header, before decoding
MAX_ASPECT = 50  # width/height beyond 50:1 is no photo of an object (and resizes to absurd sizes)


def read_image(path: Path, in_chans: int, transform: Callable, draft: int | None = None) -> np.ndarray:
    """Decode one image file as grayscale or RGB, apply `transform` (PIL image -> PIL image), return uint8 C,H,W.
    Sizes are checked from the header first: decompression bombs and absurd shapes are refused. `draft`: let a
    JPEG decode at a reduced scale that still covers draft x draft pixels."""
    import warnings

    from PIL import Image, UnidentifiedImageError

    mode = "L" if in_chans == 1 else "RGB"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(path)
        with img:
            w, h = img.size
            if w < 1 or h < 1 or w * h > MAX_IMAGE_PIXELS or max(w, h) > MAX_ASPECT * min(w, h):
                raise DataError(f"image {path} is {w}x{h}: refused before decoding (at most {MAX_IMAGE_PIXELS // 10**6} "
                                f"megapixels and a {MAX_ASPECT}:1 aspect ratio); crop or resize it first")
            if draft:
                img.draft(mode, (draft, draft))
            arr = np.asarray(transform(img.convert(mode)), dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise DataError(f"image {path} refused: {e}") from None
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise DataError(f"cannot read image {path}: {e}") from None
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr)


def load_image(path: Path, image_size: int, in_chans: int) -> np.ndarray:
    """One image file as uint8 C,H,W, resized (shorter side, then centre crop) to image_size."""
    from PIL import Image

    def centre_crop(img):
        w, h = img.size
        scale = image_size / min(w, h)
        img = img.resize((max(image_size, round(w * scale)), max(image_size, round(h * scale))), Image.Resampling.BILINEAR)
        w, h = img.size
        left, top = (w - image_size) // 2, (h - image_size) // 2
        return img.crop((left, top, left + image_size, top + image_size))

    return read_image(path, in_chans, centre_crop)


def bright_border(images: np.ndarray) -> np.ndarray:
    """Per image (uint8 N,C,H,W): is the mean of its outermost ring of pixels (all channels) above mid-grey? In
    integers (2 * sum > 255 * count) so that every runtime decides exactly alike."""
    h, w = images.shape[-2:]
    ring = np.ones((h, w), dtype=bool)
    ring[1:-1, 1:-1] = False
    border = images[:, :, ring].astype(np.int64)
    return 2 * border.sum(axis=(1, 2)) > 255 * border.shape[1] * border.shape[2]


def normalize_polarity(images: np.ndarray, polarity: str) -> np.ndarray:
    """'dark-background': invert (255 - pixel) the images whose border is bright; 'as-is': unchanged."""
    if polarity == "as-is":
        return images
    flip = bright_border(images)
    if not flip.any():
        return images
    out = images.copy()
    out[flip] = 255 - out[flip]
    return out


def normalize(images_u8: np.ndarray, preprocessing: Mapping) -> np.ndarray:
    """uint8 N,C,H,W -> float32 model input by a manifest's preprocessing block: polarity, then
    (pixel / 255 - mean[c]) / std[c], in float32 in that order (as torch computes it in training)."""
    x = normalize_polarity(np.asarray(images_u8, dtype=np.uint8), preprocessing["polarity"]).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(preprocessing["mean"], dtype=np.float32).reshape(1, -1, 1, 1)
    std = np.asarray(preprocessing["std"], dtype=np.float32).reshape(1, -1, 1, 1)
    return ((x - mean) / std).astype(np.float32)


def preprocess_image(path: Path, preprocessing: Mapping) -> np.ndarray:
    """An image file -> the trunk's float32 input (1,C,H,W), by a manifest's preprocessing block."""
    img = load_image(Path(path), preprocessing["image_size"], preprocessing["channels"])
    return normalize(img[None], preprocessing)
