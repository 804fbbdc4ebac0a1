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

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .schedule import ROUTER_LOGITS, GraphSpec, Schedule
from .config import ModelConfig
from .config import MODELS_DIR, list_configs, load_config  # noqa: F401 (where scripts and tests have always found them)
from .errors import ConfigError


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
    """Return (gates, expert indices), each B x k: the experts of the k largest router logits, ties to the lower
    expert id, and their softmax probabilities over all E experts as gates. The choice is made on the logits
    the router graph outputs, not on probabilities, so float32 and float64 softmax cannot break a near-tie
    differently; runtime.select_experts and both app cores (Routing.selectExperts) apply the same rule."""
    # Written as comparisons rather than sort(stable=True) or topk: every converter lowers these (the monolithic
    # baseline exports this code), and topk's order among equal values is not specified.
    logits = router_logits
    idx = torch.arange(logits.shape[-1], device=logits.device)
    above = logits[..., None, :] > logits[..., :, None]  # [..., i, j]: expert j ranks above expert i
    tied_before = (logits[..., None, :] == logits[..., :, None]) & (idx[None, :] < idx[:, None])
    rank = (above | tied_before).sum(-1)  # expert i's place in the order, 0 = first
    at = rank[..., None, :] == torch.arange(k, device=logits.device)[:, None]  # [..., place, expert]
    experts = (at * idx).sum(-1)  # exactly one expert holds each place
    gates = logits.softmax(dim=-1).gather(-1, experts)
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
    def schedule(self) -> Schedule:
        """The per-layer schedule: one graph per weight set, so its graphs' parameters sum to the model's."""
        return self.schedule_of("per-layer")

    def schedule_of(self, kind: str) -> Schedule:
        c = self.cfg
        return Schedule.of_kind(kind, c.num_experts, c.moe_layers, c.top_k)

    def tensor_shape(self, name: str) -> tuple[int, ...]:
        return self.cfg.tensor_shape(name)

    def graph_module(self, spec: GraphSpec) -> nn.Module:
        """The module computing one graph of the schedule, holding only that graph's weights."""
        if spec.role == "trunk" and ROUTER_LOGITS in spec.outputs:
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
