"""Mobile V-MoE (Daxberger et al., 2023, arXiv 2309.04354) in one file.

A plain pre-LN ViT whose last `moe_layers` blocks are MoE-ViT blocks: attention is shared,
the MLP is one of `num_experts` experts. Routing is per *image*: one router reads the mean
token after the dense blocks, picks `top_k` experts, and every MoE block of that image uses
the same experts, mixed by the same gate values. The dense baseline is the same code with
`moe_layers=0`.

Gates follow V-MoE: softmax over all E router logits, the top-k probabilities are used as
weights without renormalisation, so the classification loss also reaches the router.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from . import schedule as sched
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
        if name == sched.IMAGES:
            return (1, self.in_chans, self.image_size, self.image_size)
        if name in (sched.TOKENS, sched.TOKENS_OUT, sched.HIDDEN, sched.EXPERT_OUT):
            return (1, self.num_patches, self.embed_dim)
        if name == sched.ROUTER_LOGITS:
            return (1, self.num_experts)
        if name == sched.GATE:
            return (1, 1)
        if name == sched.LOGITS:
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


class PatchEmbed(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.proj = nn.Conv2d(cfg.in_chans, cfg.embed_dim, cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)  # B, N, D


class Attention(nn.Module):
    # Written out rather than F.scaled_dot_product_attention: every converter lowers plain
    # matmul/softmax, and FLOP counters see the two attention matmuls.
    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        qkv = self.qkv(x).reshape(B, N, 3, self.num_heads, D // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        attn = (q * self.scale) @ k.transpose(-2, -1)
        x = attn.softmax(dim=-1) @ v
        return self.proj(x.transpose(1, 2).reshape(B, N, D))


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        self.mlp = Mlp(cfg.embed_dim, cfg.mlp_hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class MoEBlock(nn.Module):
    """Shared attention, then a gate-weighted sum of the image's selected expert MLPs."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.embed_dim)
        self.attn = Attention(cfg.embed_dim, cfg.num_heads)
        self.norm2 = nn.LayerNorm(cfg.embed_dim)
        self.experts = nn.ModuleList(Mlp(cfg.embed_dim, cfg.mlp_hidden) for _ in range(cfg.num_experts))

    def attend(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Shared part: residual attention, and the normalised input every expert reads."""
        x = x + self.attn(self.norm1(x))
        return x, self.norm2(x)

    def forward(self, x: torch.Tensor, gates: torch.Tensor, experts: torch.Tensor,
                plan: "Dispatch | None" = None) -> torch.Tensor:
        x, h = self.attend(x)
        plan = plan or dispatch(gates, experts, len(self.experts))
        out = x.clone()
        # Each expert runs only on the images routed to it: the sparse compute the paper is about.
        start = 0
        for mlp, n in zip(self.experts, plan.counts, strict=True):
            if n:
                rows, weight = plan.rows[start : start + n], plan.weights[start : start + n]
                out = out.index_add(0, rows, weight[:, None, None] * mlp(h[rows]))
            start += n
        return out


@dataclass(frozen=True)
class Dispatch:
    """The batch's (image, expert) assignments sorted by expert: expert e reads rows[sum(counts[:e]):][:counts[e]]."""

    rows: torch.Tensor  # image index per assignment, B*k
    weights: torch.Tensor  # its gate
    counts: list[int]  # assignments per expert, on the host


def dispatch(gates: torch.Tensor, experts: torch.Tensor, num_experts: int) -> Dispatch:
    """One host read (the per-expert counts) per forward, shared by every MoE layer since routing is per image;
    a nonzero() per expert and layer would stall a GPU E x L times a step. Within an expert, images keep
    ascending order, so results are bit-identical to masking image by image."""
    flat = experts.flatten()
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=num_experts).tolist()
    return Dispatch(order // experts.shape[1], gates.flatten()[order], counts)


class Router(nn.Module):
    """One routing decision per image from the mean token after the dense blocks."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.proj = nn.Linear(cfg.embed_dim, cfg.num_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.norm(x.mean(dim=1)))


def route(router_logits: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Return (gates, expert indices), each B x k, gates = top-k of softmax over all experts."""
    probs = router_logits.softmax(dim=-1)
    gates, experts = probs.topk(k, dim=-1)
    return gates, experts


class GraphView(nn.Module):
    """One graph of the split: a method of the model run on a module that holds only the submodules
    (and parameters) that method uses. Its parameters are exactly that graph's weights, and the code
    is the model's own method, not a second copy of it."""

    def __init__(self, method, **parts: nn.Module | nn.Parameter):
        super().__init__()
        for name, part in parts.items():
            setattr(self, name, part)
        self._method = method

    def forward(self, *inputs: torch.Tensor):
        return self._method(self, *inputs)


class MobileVMoE(nn.Module):
    """The model, and the split protocol (vmoe_export.split.SplittableModel): `schedule`,
    `graph_module(spec)` and `tensor_shape(name)`."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.num_patches, cfg.embed_dim))
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth - cfg.moe_layers))
        self.router = Router(cfg) if cfg.is_moe else None
        self.moe_blocks = nn.ModuleList(MoEBlock(cfg) for _ in range(cfg.moe_layers))
        self.norm = nn.LayerNorm(cfg.embed_dim)
        self.head = nn.Linear(cfg.embed_dim, cfg.num_classes)
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        self.apply(_init_weights)

    def trunk(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images) + self.pos_embed
        for blk in self.blocks:
            x = blk(x)
        return x

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(x).mean(dim=1))

    def trunk_and_route(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = MobileVMoE.trunk(self, images)
        return x, self.router(x)

    def expert_path(self, x: torch.Tensor, gate: torch.Tensor) -> torch.Tensor:
        """k=1, one expert's road through every MoE layer: the shared attention, then tokens + gate * MLP,
        as MoEBlock.forward computes it for an image routed to this expert alone."""
        for attend, mlp in zip(self.attend, self.mlps, strict=True):
            x, h = attend(x)
            x = x + gate * mlp(h)
        return x

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Return (class logits, router logits or None for a dense model)."""
        x = self.trunk(images)
        if self.router is None:
            return self.classify(x), None
        router_logits = self.router(x)
        gates, experts = route(router_logits, self.cfg.top_k)
        plan = dispatch(gates, experts, self.cfg.num_experts)
        for blk in self.moe_blocks:
            x = blk(x, gates, experts, plan)
        return self.classify(x), router_logits

    # ---- the split protocol
    @property
    def schedule(self) -> sched.Schedule:
        """The per-layer schedule: one graph per weight set, so its graphs' parameters sum to the model's."""
        return self.schedule_of("per-layer")

    def schedule_of(self, kind: str) -> sched.Schedule:
        c = self.cfg
        return sched.Schedule.of_kind(kind, c.num_experts, c.moe_layers, c.top_k)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.cfg.tensor_shape(name)

    def graph_module(self, spec: sched.GraphSpec) -> nn.Module:
        """The module computing one graph of the schedule, holding only that graph's weights."""
        if spec.role == "trunk" and sched.ROUTER_LOGITS in spec.outputs:
            return GraphView(MobileVMoE.trunk_and_route, patch_embed=self.patch_embed, pos_embed=self.pos_embed,
                             blocks=self.blocks, router=self.router)
        if spec.role == "trunk":
            return GraphView(MobileVMoE.trunk, patch_embed=self.patch_embed, pos_embed=self.pos_embed, blocks=self.blocks)
        if spec.role == "router":
            return self.router
        if spec.role == "attention":
            return _attention_view(self.moe_blocks[spec.layer])
        if spec.role == "expert" and spec.layer is None:
            attend = nn.ModuleList(_attention_view(b) for b in self.moe_blocks)
            mlps = nn.ModuleList(b.experts[spec.expert] for b in self.moe_blocks)
            return GraphView(MobileVMoE.expert_path, attend=attend, mlps=mlps)
        if spec.role == "expert":
            return self.moe_blocks[spec.layer].experts[spec.expert]
        if spec.role == "head":
            return GraphView(MobileVMoE.classify, norm=self.norm, head=self.head)
        raise KeyError(f"unknown graph role {spec.role!r}")


def _attention_view(blk: MoEBlock) -> GraphView:
    """An MoE layer's shared part: its attention graph, and the first half of every fused expert path."""
    return GraphView(MoEBlock.attend, norm1=blk.norm1, attn=blk.attn, norm2=blk.norm2)


def _init_weights(m: nn.Module) -> None:
    if isinstance(m, nn.Linear):
        nn.init.trunc_normal_(m.weight, std=0.02)
        nn.init.zeros_(m.bias)
    elif isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


def count_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def graph_params(model: MobileVMoE) -> dict[str, int]:
    """Parameters of every graph of the model's schedule; they sum to count_params(model)."""
    return {spec.name: count_params(model.graph_module(spec)) for spec in model.schedule.graphs()}


def active_params(model: MobileVMoE) -> int:
    """Parameters one image touches: the shared graphs and k experts."""
    return int(model.schedule.active(graph_params(model)))


def dense_twin_mismatch(moe_cfg: ModelConfig, dense_cfg: ModelConfig) -> list[str]:
    """How dense_cfg differs from the dense twin of moe_cfg, one 'field: have X, need Y' per difference.
    Expert count and top-k mean nothing to a dense model, so they are not compared."""
    want = moe_cfg.dense_twin()
    ignore = {"name", "num_experts", "top_k"}
    return [f"{k}: {v!r}, needs {getattr(want, k)!r}" for k, v in dense_cfg.to_dict().items()
            if k not in ignore and getattr(want, k) != v]


@torch.no_grad()
def upcycle(moe: MobileVMoE, dense: MobileVMoE) -> None:
    """Sparse upcycling (Komatsuzaki et al., 2023): start the MoE from its trained dense twin. Everything shared
    is copied (patch and position embeddings, dense blocks, each MoE layer's attention and norms, final norm,
    head); every expert of an MoE layer starts as a copy of the dense MLP at that depth; the router keeps its
    fresh init, so the experts diverge as the router loss sends each super-class to its own expert."""
    differ = dense_twin_mismatch(moe.cfg, dense.cfg)
    if differ:
        raise ConfigError(f"cannot upcycle from dense model '{dense.cfg.name}': it is not the dense twin of "
                          f"'{moe.cfg.name}' ({'; '.join(differ)}); train the dense twin of this config, "
                          "or use --moe-init scratch")
    source = dense.state_dict()
    first_moe = moe.cfg.depth - moe.cfg.moe_layers
    state = moe.state_dict()
    for key in state:
        parts = key.split(".")
        if parts[0] == "router":
            continue
        if parts[0] == "moe_blocks":  # moe_blocks.j.<attn|norm*>... or moe_blocks.j.experts.e.<mlp param>
            rest = ["mlp", *parts[4:]] if parts[2] == "experts" else parts[2:]
            parts = ["blocks", str(first_moe + int(parts[1])), *rest]
        state[key] = source[".".join(parts)].clone()
    moe.load_state_dict(state)
