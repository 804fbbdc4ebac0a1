"""One way to hash tensors, for every digest over weights or data (checkpoint content, artifact-cache keys,
calibration samples): name, dtype, shape and raw bytes, so a reshaped or re-typed tensor never collides."""

from __future__ import annotations

from typing import Iterable

import torch


def update_tensors(h, tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
    """Feed (name, tensor) pairs into the hashlib object `h`, in the order given."""
    for name, t in tensors:
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
