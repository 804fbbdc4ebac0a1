"""Where a bundle is built and how it is published: a hidden `.<target>.partial.<random>/` directory next
to its destination, claimed by the exporting process, renamed into place only when finished, so an
interrupted or failed export never leaves a directory that looks like a complete bundle. Partials left by
killed exporters (SIGKILL, power loss) are removed only when their owner provably no longer runs."""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
import uuid
from pathlib import Path

from .checkpoint import atomic_write_bytes

PARTIAL = ".partial."  # .<target>.partial.<random>/ : a bundle being built
OWNER = ".owner.json"  # inside a partial directory: which process builds it


def write_json(path: Path, data) -> bytes:
    """Write `data` as indented JSON atomically; returns the bytes written (to digest them)."""
    raw = (json.dumps(data, indent=1) + "\n").encode()
    atomic_write_bytes(path, lambda f: f.write(raw))
    return raw


def check_output_dir(out_dir: Path) -> Path:
    """Refuse an output path that is, or lies below, a regular file: before any work is done."""
    out_dir = Path(out_dir)
    for p in (out_dir, *out_dir.parents):
        if p.exists():
            if not p.is_dir():
                where = "is a file" if p == out_dir else f"lies below the file {p}"
                raise FileExistsError(f"--output {out_dir} {where}: pass a directory (each target goes to OUTPUT/<target>/)")
            break
    return out_dir


def _process_start(pid: int) -> int | None:
    """A process's start time in clock ticks since boot (Linux), to tell a live pid from a reused one."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return int(f.read().rsplit(")", 1)[1].split()[19])
    except (OSError, IndexError, ValueError):
        return None


def new_partial(out_dir: Path, target: str) -> Path:
    """A fresh partial directory for `target` in out_dir, claimed by this process."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{target}{PARTIAL}", dir=out_dir))
    owner = {"pid": os.getpid(), "start": _process_start(os.getpid()), "host": socket.gethostname()}
    (tmp / OWNER).write_text(json.dumps(owner))
    return tmp


def _is_dead(partial: Path) -> bool:
    """True only when the directory's owner file proves its exporter is gone: same host, and no process
    with that pid and start time. Anything unreadable or ambiguous counts as alive."""
    try:
        owner = json.loads((partial / OWNER).read_text())
        pid, start, host = int(owner["pid"]), owner["start"], owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return start is not None and _process_start(pid) not in (None, start)


def remove_dead_partials(out_dir: Path, log=print) -> list[Path]:
    """Remove partial bundles left in out_dir by exports that were killed (SIGKILL, power loss). Only
    `.<target>.partial.*` directories whose owner file names a process that no longer runs."""
    removed = []
    for d in Path(out_dir).glob(f".*{PARTIAL}*"):
        if d.is_dir() and not d.is_symlink() and _is_dead(d):
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
            log(f"removed {d.name}: left by an export that no longer runs")
    return removed


def reject_path(out_dir: Path, target: str) -> Path:
    return Path(out_dir) / f"{target}.rejected"


def reject(tmp: Path, out_dir: Path, target: str) -> Path:
    """Keep a finished bundle that failed parity as <target>.rejected/ (replacing an older one), for inspection."""
    (tmp / OWNER).unlink(missing_ok=True)
    rejected = reject_path(out_dir, target)
    shutil.rmtree(rejected, ignore_errors=True)
    tmp.rename(rejected)
    return rejected


def publish(tmp: Path, final: Path) -> None:
    """Swap the finished bundle into place; the old one is removed only after the rename."""
    (tmp / OWNER).unlink(missing_ok=True)
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{uuid.uuid4().hex[:8]}")
        final.rename(old)
    tmp.rename(final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
