"""Checkpoints: config + weights + class names + super-class map (+ optional training state).

Files are written atomically (temp file in the same directory, fsync, rename) so a kill never
leaves a truncated checkpoint, and read with `torch.load(weights_only=True)` so a hostile
file cannot execute code.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .model import MODELS_DIR, MobileVMoE, ModelConfig

FORMAT = "vmoe-export/checkpoint"
FORMAT_VERSION = 1


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be used, with the reason and what to do."""


@dataclass
class Checkpoint:
    config: ModelConfig
    state_dict: dict[str, torch.Tensor]
    class_names: list[str]
    superclass_of: list[int] | None = None  # super-class id per class; None for a dense model
    metrics: dict = field(default_factory=dict)
    train_state: dict | None = None  # optimizer, epoch, train options: only in resumable run checkpoints (RNG streams are re-derived from seed and epoch)

    def build_model(self) -> MobileVMoE:
        model = MobileVMoE(self.config)
        try:
            model.load_state_dict(self.state_dict)
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0]
            raise CheckpointError(f"checkpoint weights do not match its config '{self.config.name}': {first}") from None
        return model.eval()


def atomic_write_bytes(path: Path, write) -> None:
    """Call write(fileobj) on a temp file next to `path`, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; published files get normal permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": ckpt.config.to_dict(),
        "state_dict": {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()},
        "class_names": list(ckpt.class_names),
        "superclass_of": ckpt.superclass_of,
        "metrics": ckpt.metrics,
        "train_state": ckpt.train_state,
    }
    atomic_write_bytes(Path(path), lambda f: torch.save(payload, f))


def load_checkpoint(path: Path, expect_config: ModelConfig | None = None) -> Checkpoint:
    path = Path(path)
    if not path.is_file():
        hint = "pass --checkpoint PATH (a model.pt written by vmoe-train)"
        if MODELS_DIR.resolve() in path.resolve().parents:
            hint += ("; the shipped models/ folder is only found in a source checkout installed with `pip install -e .`,"
                     " or set VMOE_MODELS_DIR to a copy of it")
        raise CheckpointError(f"checkpoint {path} does not exist: {hint}")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for corrupt or unsafe pickles
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or not a vmoe-export checkpoint ({reason[:200]})") from None
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a vmoe-export checkpoint (no '{FORMAT}' header)")
    if payload.get("format_version") != FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {payload.get('format_version')}, this vmoe-export reads {FORMAT_VERSION}"
        )
    try:
        config = ModelConfig.from_dict(payload["config"])
    except (ValueError, TypeError) as e:
        raise CheckpointError(f"{path} holds an invalid model config: {e}") from None
    if expect_config is not None and config != expect_config:
        diff = {k: (v, getattr(expect_config, k)) for k, v in config.to_dict().items() if getattr(expect_config, k) != v}
        detail = ", ".join(f"{k}: checkpoint {a!r} vs requested {b!r}" for k, (a, b) in diff.items())
        raise CheckpointError(
            f"checkpoint {path} was made for a different model config ({detail}); "
            "use the matching --config or a fresh --out directory"
        )
    ckpt = Checkpoint(
        config=config,
        state_dict=payload["state_dict"],
        class_names=list(payload["class_names"]),
        superclass_of=payload.get("superclass_of"),
        metrics=payload.get("metrics") or {},
        train_state=payload.get("train_state"),
    )
    if len(ckpt.class_names) != config.num_classes:
        raise CheckpointError(f"{path}: {len(ckpt.class_names)} class names for {config.num_classes} classes")
    if config.is_moe and ckpt.superclass_of is not None and len(ckpt.superclass_of) != config.num_classes:
        raise CheckpointError(f"{path}: super-class map has {len(ckpt.superclass_of)} entries for {config.num_classes} classes")
    ckpt.build_model()  # fail here, with a clear message, if weights and config disagree
    return ckpt
