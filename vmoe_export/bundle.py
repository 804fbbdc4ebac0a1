"""The bundle: one directory per target holding every graph and a versioned manifest.json.

Everything that reads a bundle goes through `read_manifest` and `artifact_path`: paths must
stay inside the bundle, and an artifact is only handed out after its sha256 matches.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from .schedule import Schedule, ScheduleError

SCHEMA = "vmoe-export/bundle"
# 2: the schedule is stored as data (schedule.steps) and runtimes execute it; 1 had prose steps.
SCHEMA_VERSION = 2
MANIFEST = "manifest.json"


class BundleError(RuntimeError):
    """A bundle that is malformed, tampered with, or unsafe to load."""


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


def read_manifest(bundle_dir: Path) -> dict:
    bundle_dir = Path(bundle_dir)
    path = bundle_dir / MANIFEST
    if not path.is_file():
        raise BundleError(f"{bundle_dir} is not a vmoe-export bundle (no {MANIFEST}); export one with vmoe-export --target ...")
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise BundleError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise BundleError(f"{path} is not a vmoe-export manifest (schema is not '{SCHEMA}')")
    version = manifest.get("schema_version")
    if version != SCHEMA_VERSION:
        if isinstance(version, int) and version < SCHEMA_VERSION:
            raise BundleError(f"{path} was written by an older vmoe-export (schema_version {version}); this version reads "
                              f"{SCHEMA_VERSION}: re-export the bundle with vmoe-export --target {manifest.get('target', 'TARGET')}")
        raise BundleError(f"{path} has schema_version {version!r}; this vmoe-export reads {SCHEMA_VERSION}: upgrade vmoe-export")
    validate_manifest(manifest, bundle_dir)
    return manifest


def manifest_schedule(manifest: dict) -> Schedule:
    """The schedule a bundle runs: parsed from the manifest's steps."""
    try:
        return Schedule.from_json(manifest["schedule"]["steps"])
    except (KeyError, TypeError):
        raise BundleError("manifest has no schedule.steps") from None
    except ScheduleError as e:
        raise BundleError(f"manifest schedule: {e}") from None


def validate_manifest(manifest: dict, bundle_dir: Path) -> None:
    """Structural checks that do not touch artifact contents (those are checked on load)."""
    try:
        graphs = manifest["graphs"]
        model = manifest["model"]
        E, L, k = model["num_experts"], model["moe_layers"], model["top_k"]
    except (KeyError, TypeError) as e:
        raise BundleError(f"manifest is missing {e}") from None
    if not isinstance(graphs, dict):
        raise BundleError("manifest graphs is not an object")
    if not 1 <= k <= E:
        raise BundleError(f"manifest top_k {k} is not between 1 and num_experts {E}")
    schedule = manifest_schedule(manifest)
    if schedule != Schedule.per_layer(E, L, k):
        raise BundleError(f"manifest schedule does not match its model (E={E}, L={L}, k={k}); re-export the bundle")
    missing = [g.name for g in schedule.graphs() if g.name not in graphs]
    if missing:
        raise BundleError(f"manifest lacks graphs {', '.join(missing)} (E={E}, L={L})")
    for name, entry in graphs.items():
        if not isinstance(entry, dict):
            raise BundleError(f"graph {name} in the manifest is not an object")
        safe_join(bundle_dir, entry.get("path"))
        if not isinstance(entry.get("sha256"), str) or len(entry["sha256"]) != 64:
            raise BundleError(f"graph {name} has no valid sha256 in the manifest")


def artifact_path(bundle_dir: Path, manifest: dict, graph: str) -> Path:
    """The verified path of one graph's artifact: inside the bundle and matching its sha256."""
    entry = manifest["graphs"].get(graph)
    if entry is None:
        raise BundleError(f"graph {graph!r} is not in the manifest")
    path = safe_join(bundle_dir, entry["path"])
    if not path.exists():
        raise BundleError(f"artifact {entry['path']} listed in the manifest is missing from {bundle_dir}")
    actual = sha256_of(path)
    if actual != entry["sha256"]:
        raise BundleError(
            f"artifact {entry['path']} fails its checksum (manifest {entry['sha256'][:12]}..., file {actual[:12]}...): "
            "the bundle was modified or corrupted; re-export it"
        )
    return path


def graph_sizes(manifest: dict) -> dict[str, int]:
    return {name: entry["size_bytes"] for name, entry in manifest["graphs"].items()}
