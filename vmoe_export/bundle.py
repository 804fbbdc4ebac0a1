"""The bundle: one directory per target holding every graph and a versioned manifest.json.

Everything that reads a bundle goes through `read_manifest` and `artifact_path`: paths must
stay inside the bundle, and an artifact is only handed out after its sha256 matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from . import shared_weights
from .manifest import check as check_manifest, parse as parse_manifest
from .manifest import GOLDEN  # noqa: F401 (re-exported)
from .backends import REGISTRY, describe
from .errors import BundleError
from .schedule import Schedule

SCHEMA = "vmoe-export/bundle"
# 2: the schedule is stored as data (schedule.steps) and runtimes execute it; the manifest is
# validated against a strict schema and cross-checked against its model config; manifest.sha256.
# 1: prose schedule steps.
# 3: golden vectors are required, pinned by golden_sha256, and carry per-stage self-test tolerances;
# the parity report records the machine it ran on.
SCHEMA_VERSION = 3
MANIFEST = "manifest.json"
MAX_GOLDEN_BYTES = 256 << 20
DIGEST = "manifest.sha256"  # sha256 of the exact manifest.json bytes, written by export
MAX_MANIFEST_BYTES = 16 << 20

__all__ = ["BundleError", "read_manifest", "manifest_digest", "artifact_path", "safe_join", "sha256_of"]


def sha256_of(path: Path) -> str:
    """sha256 of a file, or of a directory (an .mlpackage) as its sorted relative paths + contents."""
    h = hashlib.sha256()
    path = Path(path)
    if path.is_dir():
        for f in sorted(p for p in path.rglob("*") if p.is_file()):
            h.update(f.relative_to(path).as_posix().encode() + b"\0")
            h.update(_file_digest(f).encode())
        return h.hexdigest()
    return _file_digest(path)


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def size_of(path: Path) -> int:
    path = Path(path)
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def safe_join(root: Path, relative: str) -> Path:
    """Resolve a manifest path inside root; refuse absolute paths, '..' and symlinks out."""
    if not isinstance(relative, str) or not relative or Path(relative).is_absolute() or "\\" in relative:
        raise BundleError(f"manifest path {relative!r} is not a relative path inside the bundle")
    root = Path(root).resolve()
    target = (root / relative).resolve()
    if target != root and root not in target.parents:
        raise BundleError(f"manifest path {relative!r} escapes the bundle directory {root}")
    return target


def manifest_digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def read_manifest(bundle_dir: Path, expect_digest: str | None = None, require_parity: bool = True) -> dict:
    """Read, validate and cross-check a bundle's manifest; return it as a dict.

    expect_digest pins the manifest: the sha256 of its exact bytes must equal it (what `vmoe-export`
    printed, or what an app was built with). Without it everything else is still checked: types and
    bounds, consistency with the embedded model config, paths inside the bundle, a completed parity.
    """
    bundle_dir = Path(bundle_dir)
    if not bundle_dir.is_dir():
        raise BundleError(f"{bundle_dir} is not a directory: pass a bundle directory written by vmoe-export (e.g. bundles/onnx)")
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a vmoe-export bundle (no {MANIFEST}); export one with vmoe-export --target ...")
    if path.stat().st_size > MAX_MANIFEST_BYTES:
        raise BundleError(f"{path} is larger than {MAX_MANIFEST_BYTES >> 20} MiB: not a vmoe-export manifest")
    data = path.read_bytes()
    digest = manifest_digest(data)
    if expect_digest is not None and digest != expect_digest.strip().lower():
        raise BundleError(f"{path} has digest {digest[:16]}..., not the pinned {expect_digest.strip()[:16]}...: "
                          "this is not the bundle you pinned (edited, or another export)")
    sidecar = bundle_dir / DIGEST
    if sidecar.is_file() and sidecar.read_text(errors="replace").strip() != digest:
        raise BundleError(f"{path} does not match {DIGEST}: the manifest was edited after export; re-export the bundle")
    try:
        manifest = json.loads(data)
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise BundleError(f"{path} is not valid JSON ({type(e).__name__}: {str(e)[:120]})") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{path} is not a vmoe-export manifest (schema is not '{SCHEMA}')")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        target = manifest.get("target") if isinstance(manifest.get("target"), str) else "TARGET"
        if isinstance(version, int) and not isinstance(version, bool) and version < SCHEMA_VERSION:
            raise BundleError(f"{path} was written by an older vmoe-export (schema_version {version}); this version reads "
                              f"{SCHEMA_VERSION}: re-export the bundle with vmoe-export --target {target}")
        raise BundleError(f"{path} has schema_version {version!r}; this vmoe-export reads {SCHEMA_VERSION}: upgrade vmoe-export")
    target = manifest.get("target")
    if target not in REGISTRY:
        raise BundleError(f"{path}: target {target!r} is not one of {', '.join(REGISTRY)}")
    backend = describe(target)
    m = parse_manifest(manifest)
    check_manifest(m, backend.suffix, backend.runtime_unavailable(), require_parity)
    for entry in [*manifest["graphs"].values(), manifest.get("shared_weights") or {"path": MANIFEST}]:
        safe_join(bundle_dir, entry["path"])
    return manifest


def golden_path(bundle_dir: Path, manifest: dict) -> Path | None:
    """Where a bundle's golden vectors are (inside the bundle), or None when the manifest names none."""
    return None if manifest.get("golden") is None else safe_join(bundle_dir, manifest["golden"])


def manifest_schedule(manifest: dict) -> Schedule:
    """The schedule of a manifest that read_manifest accepted."""
    return Schedule.from_json(manifest["schedule"]["steps"])


def fingerprint(path: Path) -> tuple:
    """What changes when a file is written, replaced or touched: device, inode, size, mtime and ctime (which
    no user can set back), for each file of a directory artifact (.mlpackage)."""
    files = sorted(p for p in Path(path).rglob("*") if p.is_file()) if Path(path).is_dir() else [Path(path)]
    out = []
    for f in files:
        st = f.stat()
        out.append((str(f), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns))
    return tuple(out)


def artifact_path(bundle_dir: Path, manifest: dict, graph: str, verified: dict | None = None) -> Path:
    """The verified path of one graph's artifact: inside the bundle and matching its sha256.

    `verified` (graph -> (resolved path, fingerprint)) is the verified-once mode: an artifact whose sha256 and
    place were checked earlier in this process and whose file has not changed since is not checked again; any
    change (rewrite, replacement, touch, a directory swapped for a link elsewhere: another inode) checks it
    all again. An expert switch then costs one stat, not a path resolution and a hash. Without it, every call
    checks everything."""
    entry = manifest["graphs"].get(graph)
    if entry is None:
        raise BundleError(f"graph {graph!r} is not in the manifest")
    return _checked(bundle_dir, entry, graph, verified, "artifact")


SHARED_WEIGHTS_KEY = "shared_weights"  # its entry in a `verified` table (never a graph's name: those are the schedule's)


def shared_weights_path(bundle_dir: Path, manifest: dict, verified: dict | None = None) -> Path:
    """The bundle's shared-weights file, checked as artifact_path checks an artifact, for a runtime that reads it
    itself (LiteRT maps it by the name its expert paths give it)."""
    entry = manifest.get("shared_weights")
    if not entry:
        raise BundleError("the manifest has no shared_weights block")
    return _checked(bundle_dir, entry, SHARED_WEIGHTS_KEY, verified, "shared-weights file")


def _checked(bundle_dir: Path, entry: dict, key: str, verified: dict | None, what: str) -> Path:
    """entry's file (its manifest path, size_bytes and sha256), inside the bundle and matching its sha256."""
    known = verified.get(key) if verified is not None else None
    if known is not None:
        try:
            if fingerprint(known[0]) == known[1]:
                return known[0]
        except OSError:
            pass  # gone or unreadable: the full check below says which
    path = safe_join(bundle_dir, entry["path"])
    if not path.exists():
        raise BundleError(f"{what} {entry['path']} listed in the manifest is missing from {bundle_dir}")
    if size_of(path) != entry["size_bytes"]:
        raise BundleError(f"{what} {entry['path']} has {size_of(path)} bytes, the manifest says {entry['size_bytes']}: "
                          "the bundle was modified or corrupted; re-export it")
    before = fingerprint(path)
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"{what} {entry['path']} fails its checksum (manifest {entry['sha256'][:12]}..., file {actual[:12]}...): "
            "the bundle was modified or corrupted; re-export it"
        )
    if verified is not None and fingerprint(path) == before:  # unchanged while it was hashed
        verified[key] = (path, before)
    return path


def graph_sizes(manifest: dict) -> dict[str, int]:
    return {name: entry["size_bytes"] for name, entry in manifest["graphs"].items()}


def bundle_bytes(manifest: dict) -> int:
    """Every artifact of the bundle together, and its shared-weights file (what a device stores)."""
    return sum(graph_sizes(manifest).values()) + shared_weights_bytes(manifest)


def shared_weights_bytes(manifest: dict) -> int:
    return (manifest.get("shared_weights") or {}).get("size_bytes", 0)


def read_shared_weights(bundle_dir: Path, manifest: dict) -> dict:
    """The bundle's verified shared tensors by name ({} when it stores none): read and hashed once."""
    return shared_weights.read(bundle_dir, manifest, safe_join)
