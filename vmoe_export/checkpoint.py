"""Checkpoints: config + weights + class names + super-class map (+ optional training state).

Files are written atomically (temp file in the same directory, fsync, rename) so a kill never
leaves a truncated checkpoint, and read with `torch.load(weights_only=True)` so a hostile
file cannot execute code.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .tensor_digest import update_tensors
from .errors import VmoeError
from .config import MODELS_DIR, ModelConfig
from .model import MobileVMoE

FORMAT = "vmoe-export/checkpoint"
# 2: carries a content digest (config, labels, super-classes, tensors), required and verified on load.
FORMAT_VERSION = 2


class CheckpointError(VmoeError):
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


SYNTHETIC = "synthetic"  # the `dataset` of a random-init checkpoint: no real data behind it


def random_checkpoint(config: ModelConfig, seed: int = 0) -> Checkpoint:
    """A checkpoint with the model's own initial weights: for latency, memory and FLOPs, which do not depend
    on trained weights. Its metrics say so, and exports from it are labelled synthetic."""
    torch.manual_seed(seed)
    model = MobileVMoE(config)
    names = [f"class {i}" for i in range(config.num_classes)]
    return Checkpoint(config, model.state_dict(), names, None,
                      metrics={"dataset": SYNTHETIC, "random_init": True, "seed": seed})


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


def content_digest(config: dict, state_dict: dict, class_names, superclass_of) -> str:
    """sha256 over everything that defines the model's answers: config, labels, super-classes, every tensor's
    name, dtype, shape and bytes. Stored in the checkpoint so a one-field edit (say num_heads, which changes
    no tensor shape) is caught on load; metrics and optimizer state are not part of it."""
    h = hashlib.sha256(json.dumps({"config": config, "class_names": list(class_names), "superclass_of": superclass_of},
                                  sort_keys=True).encode())
    update_tensors(h, ((key, state_dict[key]) for key in sorted(state_dict)))
    return h.hexdigest()


def save_checkpoint(ckpt: Checkpoint, path: Path) -> None:
    state = {k: v.detach().cpu().contiguous() for k, v in ckpt.state_dict.items()}
    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": ckpt.config.to_dict(),
        "state_dict": state,
        "class_names": list(ckpt.class_names),
        "superclass_of": ckpt.superclass_of,
        "metrics": ckpt.metrics,
        "train_state": ckpt.train_state,
        "digest": content_digest(ckpt.config.to_dict(), state, ckpt.class_names, ckpt.superclass_of),
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
        hint = (": it has no content digest, so it cannot be verified; retrain it with this version of vmoe-train"
                if payload.get("format_version") == 1 else "")
        raise CheckpointError(f"{path} has checkpoint format version {payload.get('format_version')!r}, this vmoe-export "
                              f"reads {FORMAT_VERSION}{hint}")
    _check_payload(path, payload)
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
    if len(ckpt.class_names) != config.num_classes or len(set(ckpt.class_names)) != config.num_classes:
        raise CheckpointError(f"{path}: {len(ckpt.class_names)} class names for {config.num_classes} classes (they must be distinct)")
    sc = ckpt.superclass_of
    if sc is not None and (not config.is_moe or len(sc) != config.num_classes or not all(0 <= s < config.num_experts for s in sc)):
        raise CheckpointError(f"{path}: super-class map must give each of {config.num_classes} classes an expert id below "
                              f"{config.num_experts}")
    _check_shapes(path, ckpt)
    # Last, so the checks above name what is wrong; this one catches what they cannot see (num_heads edited,
    # two experts' weights exchanged, a label renamed).
    if payload["digest"] != _digest_or_none(payload):
        raise CheckpointError(f"checkpoint {path} does not match its own digest: it was edited or corrupted after "
                              "vmoe-train wrote it; use the original file")
    ckpt.build_model()  # fail here, with a clear message, if weights and config disagree
    return ckpt


def _digest_or_none(p: dict) -> str | None:
    try:
        return content_digest(p["config"], p["state_dict"], p["class_names"], p.get("superclass_of"))
    except (TypeError, ValueError, RuntimeError):  # values json or torch cannot serialise: not what we wrote
        return None


def _check_payload(path: Path, p: dict) -> None:
    """Keys and types, before anything is built from them."""
    problems = []
    if not isinstance(p.get("config"), dict):
        problems.append("'config' must be a dict")
    sd = p.get("state_dict")
    if not isinstance(sd, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        problems.append("'state_dict' must map parameter names to tensors")
    names = p.get("class_names")
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) and n for n in names):
        problems.append("'class_names' must be a list of non-empty strings")
    sc = p.get("superclass_of")
    if sc is not None and (not isinstance(sc, list) or not all(isinstance(s, int) and not isinstance(s, bool) for s in sc)):
        problems.append("'superclass_of' must be a list of integers or None")
    if not isinstance(p.get("metrics") or {}, dict) or not isinstance(p.get("train_state") or {}, dict):
        problems.append("'metrics' and 'train_state' must be dicts")
    if not isinstance(p.get("digest"), str):
        problems.append("'digest' must be the content digest string vmoe-train writes")
    if problems:
        raise CheckpointError(f"{path} is not a usable vmoe-export checkpoint: {'; '.join(problems)}")


def _check_shapes(path: Path, ckpt: Checkpoint) -> None:
    """Refuse weights whose total size disagrees with the config before allocating the model."""
    stored = sum(t.numel() for t in ckpt.state_dict.values())
    expected = ckpt.config.estimated_params()
    if stored != expected:
        raise CheckpointError(f"checkpoint {path}: its weights hold {stored:,} values but config '{ckpt.config.name}' "
                              f"needs {expected:,}: weights and config do not match")
