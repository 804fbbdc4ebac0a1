"""The model config: sizes, routing and preprocessing of a Mobile V-MoE, with the bounds every config must
meet, and the named configs in models/. Plain data: the device side (manifest, bundle, runtime) reads it
without PyTorch; model.py builds the network from it.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

from .schedule import EXPERT_OUT, GATE, HIDDEN, IMAGES, LOGITS, ROUTER_LOGITS, TOKENS, TOKENS_OUT
from .errors import ConfigError

# models/ sits beside the package in a source checkout (the README installs it editable);
# VMOE_MODELS_DIR points a non-editable install at a copy of that folder.
MODELS_DIR = Path(os.environ.get("VMOE_MODELS_DIR") or Path(__file__).resolve().parent.parent / "models")


# Bounds checked before anything is allocated: a config (from a checkpoint or a bundle manifest) that
# names absurd sizes is refused with a message instead of exhausting memory. Generous for mobile ViTs.
LIMITS = {"image_size": 4096, "in_chans": 4, "patch_size": 512, "num_classes": 100_000, "embed_dim": 4096,
          "depth": 64, "num_heads": 64, "num_experts": 256}
MAX_PATCHES = 16_384
MAX_PARAMS = 200_000_000
_INT_FIELDS = (*LIMITS, "moe_layers", "top_k")


POLARITIES = ("as-is", "dark-background")


@dataclass(frozen=True)
class ModelConfig:
    name: str = "custom"
    image_size: int = 28
    in_chans: int = 1
    patch_size: int = 4
    num_classes: int = 10
    embed_dim: int = 64
    depth: int = 6
    num_heads: int = 4
    mlp_ratio: float = 4.0
    num_experts: int = 4
    moe_layers: int = 2  # L: the last L blocks are MoE blocks; 0 gives the dense baseline
    top_k: int = 1
    # Preprocessing travels with the model so that exports and apps normalise identically.
    mean: tuple[float, ...] = (0.2860,)
    std: tuple[float, ...] = (0.3530,)
    # "dark-background": inputs whose border ring is brighter than mid-grey are inverted before normalising,
    # so a photo of a dark object on a light ground meets a model trained on light-on-dark images
    polarity: str = "as-is"

    def __post_init__(self) -> None:
        problems = [f"{k} must be an integer, got {getattr(self, k)!r}" for k in _INT_FIELDS
                    if isinstance(getattr(self, k), bool) or not isinstance(getattr(self, k), int)]
        problems += [f"{k} must be a number, got {getattr(self, k)!r}" for k in ("mlp_ratio",)
                     if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float))]
        if not isinstance(self.name, str):
            problems.append(f"name must be a string, got {self.name!r}")
        if problems:
            raise ConfigError(f"invalid model config: {'; '.join(problems)}")
        problems += [f"{k} {getattr(self, k)} must be between 1 and {hi}" for k, hi in LIMITS.items()
                     if not 1 <= getattr(self, k) <= hi]
        if not 0 < self.mlp_ratio <= 16 or not math.isfinite(self.mlp_ratio):
            problems.append(f"mlp_ratio {self.mlp_ratio} must be in (0, 16]")
        if problems:
            raise ConfigError(f"invalid model config '{self.name}': " + "; ".join(problems))
        if self.image_size % self.patch_size:
            problems.append(f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}")
        if self.embed_dim % self.num_heads:
            problems.append(f"embed_dim {self.embed_dim} is not a multiple of num_heads {self.num_heads}")
        if self.polarity not in POLARITIES:
            problems.append(f"polarity {self.polarity!r} must be one of {', '.join(POLARITIES)}")
        if not 0 <= self.moe_layers <= self.depth:
            problems.append(f"moe_layers {self.moe_layers} must be between 0 and depth {self.depth}")
        if self.moe_layers and not 1 <= self.top_k <= self.num_experts:
            problems.append(f"top_k {self.top_k} must be between 1 and num_experts {self.num_experts}")
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            problems.append(f"mean/std need one value per input channel ({self.in_chans})")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std)) or not all(v > 0 for v in self.std):
            problems.append(f"mean/std must be finite with std > 0 (mean {list(self.mean)}, std {list(self.std)})")
        if not problems and self.num_patches > MAX_PATCHES:
            problems.append(f"{self.num_patches} patches exceed {MAX_PATCHES}: use a larger patch_size")
        if not problems and self.estimated_params() > MAX_PARAMS:
            problems.append(f"about {self.estimated_params():,} parameters exceed the {MAX_PARAMS:,} this tool builds")
        if problems:
            raise ConfigError(f"invalid model config '{self.name}': " + "; ".join(problems))

    @property
    def num_patches(self) -> int:
        return (self.image_size // self.patch_size) ** 2

    @property
    def mlp_hidden(self) -> int:
        return int(self.embed_dim * self.mlp_ratio)

    @property
    def is_moe(self) -> bool:
        return self.moe_layers > 0

    def estimated_params(self) -> int:
        """Parameter count from the config alone (exact for MobileVMoE), to refuse a huge model before building it."""
        D, H, C, E = self.embed_dim, self.mlp_hidden, self.num_classes, self.num_experts
        attention = 2 * D + 4 * D * D + 4 * D  # norm1, qkv, proj
        mlp = D * H + H + H * D + D
        dense_block = attention + 2 * D + mlp
        moe_block = attention + 2 * D + E * mlp
        router = (2 * D + D * E + E) if self.moe_layers else 0
        stem = self.in_chans * self.patch_size**2 * D + D + self.num_patches * D
        return (stem + (self.depth - self.moe_layers) * dense_block + self.moe_layers * moe_block + router
                + 2 * D + D * C + C)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        """Batch-1 shape of a tensor the schedule names."""
        if name == IMAGES:
            return (1, self.in_chans, self.image_size, self.image_size)
        if name in (TOKENS, TOKENS_OUT, HIDDEN, EXPERT_OUT):
            return (1, self.num_patches, self.embed_dim)
        if name == ROUTER_LOGITS:
            return (1, self.num_experts)
        if name == GATE:
            return (1, 1)
        if name == LOGITS:
            return (1, self.num_classes)
        raise KeyError(f"unknown tensor {name!r}")

    def dense_twin(self) -> "ModelConfig":
        """The dense ViT with the same active FLOPs (same widths, every block dense)."""
        return replace(self, name=f"{self.name}-dense", moe_layers=0)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        if not isinstance(d, dict):
            raise ConfigError(f"a model config must be a JSON object, got {type(d).__name__}")
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ConfigError(f"unknown model config keys: {sorted(map(str, unknown))}")
        d = dict(d)
        for key in ("mean", "std"):
            if key in d:
                values = d[key]
                if not isinstance(values, (list, tuple)) or not all(
                        isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
                    raise ConfigError(f"model config {key} must be a list of numbers, got {values!r}")
                d[key] = tuple(float(v) for v in values)
        return cls(**d)


def list_configs() -> list[str]:
    return sorted(p.stem for p in MODELS_DIR.glob("*.json") if not p.stem.endswith(".card"))


def load_config(name_or_path: str) -> ModelConfig:
    """Load a config by name (models/<name>.json) or by path to a JSON file."""
    path = Path(name_or_path)
    if not path.suffix:
        path = MODELS_DIR / f"{name_or_path}.json"
    if not path.is_file():
        raise FileNotFoundError(
            f"model config '{name_or_path}' not found; known configs: {', '.join(list_configs())} "
            f"(or pass a path to a JSON file)"
        )
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        raise ConfigError(f"model config {path} is not valid JSON: {e}") from None
    data.setdefault("name", path.stem)
    return ModelConfig.from_dict(data)
