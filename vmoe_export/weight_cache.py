"""Where a runtime keeps the weights it repacks for this CPU (LiteRT's XNNPACK weight cache), one file per artifact.

XNNPACK packs every weight of a graph into its kernels' layout when the graph loads. Without a cache the packed
copy lives on the heap beside the mmapped artifact, so a loaded expert holds its weights twice. With a cache file
the packing is written to disk once and mmapped from then on: one clean copy the OS may drop and read back, and
the artifact's own weight pages are not read again (benchmarks/results/litert_weight_cache.md).

XNNPACK's header check covers only its own build, while its packing differs by CPU and a cache built for another
model with the same tensor layout would load silently; so a file is keyed by the artifact's verified sha256 (with
the shared-weights file's, for an expert path that reads one: backends/tflite.cache_key), the runtime's version,
the CPU architecture and the kernel features (machine.cpu_features). Native code reads these
files without bounds checks, so they live in a directory only this user can write (0700, owned by us; anything
else is refused with a warning and the runtime packs on the heap) and are published atomically: built under a
temporary name, synced, checked complete, then renamed. The directory is pruned to a byte budget, least recently
used first.

    VMOE_WEIGHT_CACHE_DIR=DIR   where the files go (default $XDG_CACHE_HOME/vmoe-export/weight-cache or
                                ~/.cache/...); "off" (or empty) packs on the heap, as before
    VMOE_WEIGHT_CACHE_MAX_MB=N  the budget (default 1024)
"""

from __future__ import annotations

import hashlib
import os
import platform
import stat
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

ENV_DIR, ENV_MAX_MB = "VMOE_WEIGHT_CACHE_DIR", "VMOE_WEIGHT_CACHE_MAX_MB"
DEFAULT_MAX_MB = 1024
TEMP_SUFFIX = ".tmp"
STALE_TEMP_S = 3600  # a temporary file this old is a build that died; younger ones may be another process's


def default_dir() -> Path | None:
    """The cache directory the environment names, or the per-user default; None when it says "off"."""
    named = os.environ.get(ENV_DIR)
    if named is not None:
        return None if named.strip().lower() in ("", "off", "none", "0") else Path(named).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "vmoe-export" / "weight-cache"


@dataclass
class Entry:
    """One artifact's cache file: `path` is what to hand the runtime ("" = no cache); after the runtime loaded,
    `publish()` makes a file it built visible to later loads, `discard()` drops it after a failed load."""

    path: str = ""
    final: Path | None = None
    is_complete: Callable[[Path], bool] = lambda p: True

    @property
    def building(self) -> bool:
        return self.final is not None and self.path != str(self.final)

    def publish(self) -> None:
        if not self.building:
            return
        built = Path(self.path)
        if not built.exists() or not self.is_complete(built):  # the runtime did not use it: nothing to keep
            self.discard()
            return
        with open(built, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(built, self.final)  # the runtime keeps its open mapping of the same file
        _prune(self.final.parent, keep=self.final)

    def discard(self) -> None:
        if self.building:
            Path(self.path).unlink(missing_ok=True)


def entry(cache_dir: Path | None, sha256: str, runtime: str, is_complete: Callable[[Path], bool]) -> Entry:
    """The cache entry for an artifact with content hash `sha256` under `runtime` (name and version): the
    published file when a complete one exists, else a fresh temporary file to build into, else no cache."""
    if cache_dir is None or not sha256:
        return Entry()
    reason = _private_dir(cache_dir)
    if reason:
        _warn_once(f"weight cache {cache_dir} is not used: {reason}; weights are packed on the heap instead (about "
                   f"twice the resident memory). Fix it, or set {ENV_DIR}=DIR to a directory of your own, or "
                   f"{ENV_DIR}=off")
        return Entry()
    final = cache_dir / f"{sha256}-{_machine_key(runtime)}.bin"
    if final.exists():
        if is_complete(final):
            try:
                os.utime(final)  # recently used: the last to be pruned
            except OSError:
                pass
            return Entry(str(final), final, is_complete)
        final.unlink(missing_ok=True)  # an incomplete file, never ours to publish: build it again
    temp = cache_dir / f"{final.name}.{os.getpid()}.{time.monotonic_ns()}{TEMP_SUFFIX}"
    return Entry(str(temp), final, is_complete)


def _machine_key(runtime: str) -> str:
    from .machine import cpu_features

    fingerprint = "|".join([runtime, platform.machine(), *cpu_features()])
    return hashlib.sha256(fingerprint.encode()).hexdigest()[:16]


def _private_dir(path: Path) -> str | None:
    """Why `path` cannot hold cache files native code will trust, or None (it is created, 0700, if missing)."""
    try:
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        st = path.lstat()
    except OSError as e:
        return f"it cannot be created ({e.strerror})"
    if stat.S_ISLNK(st.st_mode) or not stat.S_ISDIR(st.st_mode):
        return "it is not a directory"
    if hasattr(os, "geteuid") and st.st_uid != os.geteuid():
        return "another user owns it"
    if st.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        return "other users can write to it"
    if not os.access(path, os.W_OK | os.X_OK):
        return "it is not writable"
    return None


_warned: set[str] = set()


def _warn_once(message: str) -> None:
    if message not in _warned:
        _warned.add(message)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _budget_bytes() -> int:
    try:
        return max(0, int(os.environ.get(ENV_MAX_MB, DEFAULT_MAX_MB))) * 2**20
    except ValueError:
        return DEFAULT_MAX_MB * 2**20


def _prune(cache_dir: Path, keep: Path) -> None:
    """Least recently used files out until the directory fits its budget (`keep`, just built, stays), and
    temporary files of builds that died."""
    now, files = time.time(), []
    for p in cache_dir.iterdir():
        try:
            st = p.stat()
        except OSError:
            continue
        if p.name.endswith(TEMP_SUFFIX):
            if now - st.st_mtime > STALE_TEMP_S:
                p.unlink(missing_ok=True)
        elif p != keep:
            files.append((st.st_mtime, st.st_size, p))
    total = sum(size for _, size, _ in files) + keep.stat().st_size
    for _, size, p in sorted(files):
        if total <= _budget_bytes():
            break
        p.unlink(missing_ok=True)  # a process that has it mapped keeps its pages
        total -= size
