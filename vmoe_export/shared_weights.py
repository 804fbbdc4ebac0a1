"""Weights every expert path of a fused bundle holds byte for byte, stored once.

A fused expert path (schedule.py) computes every MoE layer for one expert, so it holds both layers'
attention and norms, which are the same in all E paths; only the MLP is the expert's own. Exported as
they are, the shared weights are stored E times (at vit-12x192, E=10: a fused bundle 1.24x the per-layer
one). A backend with `share_weights` (backends/__init__.py) rewrites the paths so that each such tensor is
stored once in FILE, beside the paths, and they refer to it; the manifest's shared_weights block records the file's
checksum and where each tensor lies in it, and the runtime reads and hashes the file once, when the bundle
opens, then hands the verified tensors to every path it loads (an expert switch reads only its own MLP).

The runtime side needs only NumPy. The file is read into memory and hashed from those same bytes, so what
runs is what was verified (no window between the check and a second read).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from .errors import BundleError

FILE = "experts/shared.bin"  # inside the bundle, beside the expert paths that read it (schedule.artifact_relpath)
ALIGN = 64  # every tensor starts on a cache-line (and SIMD-load) boundary
MIN_BYTES = 128  # smaller common tensors (shape constants, scalars) stay inside each path: not worth an entry
DTYPES = ("float32", "float16", "int8", "uint8", "int32", "int64")


def common_tensors(per_graph: dict[str, dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """The tensors (by name) that every graph holds with the same dtype, shape and bytes, of at least MIN_BYTES."""
    tables = list(per_graph.values())
    if len(tables) < 2:
        return {}
    out = {}
    for name, a in tables[0].items():
        if a.nbytes < MIN_BYTES or a.dtype.name not in DTYPES:
            continue
        if all(name in t and t[name].dtype == a.dtype and t[name].shape == a.shape and np.array_equal(t[name], a)
               for t in tables[1:]):
            out[name] = a
    return out


def write(path: Path, tensors: dict[str, np.ndarray]) -> dict[str, dict]:
    """Write `tensors` into one file, each at an ALIGN-ed offset, little-endian; returns their table."""
    table, offset = {}, 0
    with open(path, "wb") as f:
        for name, a in tensors.items():
            pad = -offset % ALIGN
            f.write(b"\0" * pad)
            offset += pad
            data = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<")).tobytes()
            f.write(data)
            table[name] = {"offset": offset, "dtype": a.dtype.name, "shape": list(a.shape)}
            offset += len(data)
    return table


def applies(schedule, backend) -> bool:
    """Does an export of `schedule` on `backend` store the expert paths' common weights once?"""
    return schedule.kind == "fused" and schedule.num_experts >= 2 and backend.share_weights is not None


def nbytes(entry: dict) -> int:
    return int(np.dtype(entry["dtype"]).itemsize * np.prod(entry["shape"], dtype=np.int64))


def block(bundle_dir: Path, graphs: list[str], table: dict[str, dict], sha256_of, size_of) -> dict:
    """The manifest's shared_weights block for FILE as written in `bundle_dir`."""
    path = Path(bundle_dir) / FILE
    return {"path": FILE, "sha256": sha256_of(path), "size_bytes": size_of(path), "graphs": graphs, "tensors": table}


def check_table(tensors: dict[str, dict], size_bytes: int) -> None:
    """Each tensor inside the file, aligned, and no two overlapping (raises BundleError)."""
    spans = []
    for name, t in tensors.items():
        if t["dtype"] not in DTYPES:
            raise BundleError(f"shared weight {name}: dtype {t['dtype']!r} is not one of {', '.join(DTYPES)}")
        start, end = t["offset"], t["offset"] + nbytes(t)
        if start % ALIGN or end > size_bytes:
            raise BundleError(f"shared weight {name} at bytes {start}-{end} is misaligned or outside the "
                              f"{size_bytes}-byte shared-weights file: the manifest was edited; re-export the bundle")
        spans.append((start, end, name))
    spans.sort()
    for (_, end, a), (start, _, b) in zip(spans, spans[1:]):
        if start < end:
            raise BundleError(f"shared weights {a} and {b} overlap in the shared-weights file: re-export the bundle")


def read(bundle_dir: Path, manifest: dict, safe_join) -> dict[str, np.ndarray]:
    """The verified shared tensors of a bundle ({} when it has none), as read-only arrays over one buffer."""
    b = manifest.get("shared_weights")
    if not b:
        return {}
    path = safe_join(bundle_dir, b["path"])
    if not path.is_file():
        raise BundleError(f"{b['path']} listed in the manifest is missing from {bundle_dir}: re-export the bundle")
    data = path.read_bytes()
    if len(data) != b["size_bytes"] or hashlib.sha256(data).hexdigest() != b["sha256"]:
        raise BundleError(f"{b['path']} fails its checksum (or size): the bundle was modified or corrupted; re-export it")
    return {name: np.frombuffer(data, dtype=np.dtype(t["dtype"]).newbyteorder("<"), count=nbytes(t) //
                                np.dtype(t["dtype"]).itemsize, offset=t["offset"]).reshape(t["shape"])
            for name, t in b["tensors"].items()}
