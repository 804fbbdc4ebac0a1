"""Split a trained Mobile V-MoE into separately exportable graphs, and compose them back.

Design (one schedule for every k):

    trunk        images            -> tokens          patch embed + pos embed + dense blocks
    router       tokens            -> router_logits   mean pool, LayerNorm, Linear
    moe{l}_attn  tokens            -> tokens, hidden  shared attention of MoE layer l (+ norm2)
    moe{l}_e{e}  hidden            -> expert_out      expert e's MLP in MoE layer l
    head         tokens            -> logits          final norm, mean pool, classifier

and per MoE layer l the runtime does  tokens = tokens + sum_j gate_j * moe{l}_e{expert_j}(hidden).

Why per-layer expert graphs rather than one graph per expert covering all L layers: for
k >= 2 the gate-weighted mix happens inside every MoE layer, so layer l+1 needs the mixed
output of layer l; a fused per-expert graph is exact only for k=1. Per-layer graphs give one
exact schedule for every k, keep the shared attention stored once instead of once per
expert, and an expert is still loaded as a unit: the L graphs `moe*_e{e}`. The cost is L
more (tiny) graph calls per image, which the benchmarks measure.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .model import MobileVMoE, MoEBlock, Mlp, route


class Trunk(nn.Module):
    def __init__(self, model: MobileVMoE):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model.trunk(images)


class RouterGraph(nn.Module):
    def __init__(self, model: MobileVMoE):
        super().__init__()
        self.router = model.router

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.router(tokens)


class SharedAttention(nn.Module):
    def __init__(self, block: MoEBlock):
        super().__init__()
        self.block = block

    def forward(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.block.attend(tokens)


class ExpertMlp(nn.Module):
    def __init__(self, mlp: Mlp):
        super().__init__()
        self.mlp = mlp

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.mlp(hidden)


class Head(nn.Module):
    def __init__(self, model: MobileVMoE):
        super().__init__()
        self.model = model

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        return self.model.classify(tokens)


@dataclass
class Graph:
    """One exportable piece: a module, example inputs, and the names of its tensors."""

    name: str
    role: str  # trunk | router | attention | expert | head
    module: nn.Module
    inputs: dict[str, torch.Tensor]  # name -> example input (batch 1)
    outputs: list[str]
    layer: int | None = None
    expert: int | None = None

    def run(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*args)
        return out if isinstance(out, tuple) else (out,)


def expert_graph_name(layer: int, expert: int) -> str:
    return f"moe{layer}_e{expert}"


def split_model(model: MobileVMoE) -> list[Graph]:
    """Every graph of the split, in schedule order (trunk, router, then per layer attention + experts, head)."""
    cfg = model.cfg
    if not cfg.is_moe:
        raise ValueError(f"model '{cfg.name}' is dense (moe_layers=0): there is nothing to route; export an MoE checkpoint")
    model = model.eval()
    images = torch.zeros(1, cfg.in_chans, cfg.image_size, cfg.image_size)
    tokens = torch.zeros(1, cfg.num_patches, cfg.embed_dim)
    graphs = [
        Graph("trunk", "trunk", Trunk(model), {"images": images}, ["tokens"]),
        Graph("router", "router", RouterGraph(model), {"tokens": tokens}, ["router_logits"]),
    ]
    for layer, block in enumerate(model.moe_blocks):
        graphs.append(Graph(f"moe{layer}_attn", "attention", SharedAttention(block), {"tokens": tokens},
                            ["tokens_out", "hidden"], layer=layer))
        for e, mlp in enumerate(block.experts):
            graphs.append(Graph(expert_graph_name(layer, e), "expert", ExpertMlp(mlp), {"hidden": tokens},
                                ["expert_out"], layer=layer, expert=e))
    graphs.append(Graph("head", "head", Head(model), {"tokens": tokens}, ["logits"]))
    return graphs


@torch.no_grad()
def run_split(graphs: list[Graph], images: torch.Tensor, top_k: int) -> dict[str, torch.Tensor]:
    """Compose the split graphs exactly as the runtime does (reference for tests and parity)."""
    by_name = {g.name: g for g in graphs}
    (tokens,) = by_name["trunk"].run(images)
    (router_logits,) = by_name["router"].run(tokens)
    gates, experts = route(router_logits, top_k)
    layers = sorted({g.layer for g in graphs if g.role == "attention"})
    out = []
    for b in range(images.shape[0]):  # routing is per image, so each image takes its own path
        x = tokens[b : b + 1]
        for layer in layers:
            x, hidden = by_name[f"moe{layer}_attn"].run(x)
            for j in range(top_k):
                (y,) = by_name[expert_graph_name(layer, int(experts[b, j]))].run(hidden)
                x = x + gates[b, j] * y
        out.append(by_name["head"].run(x)[0])
    return {"logits": torch.cat(out), "router_logits": router_logits, "experts": experts, "gates": gates}
