"""Single-graph baselines the split bundle is benchmarked against.

- dense: the dense ViT with the same widths, i.e. equal active FLOPs per image (minus the router).
- monolithic: the whole MoE in one graph. Static graphs cannot skip experts, so every expert
  runs and a dense gate vector (zero for unselected experts) masks the mix: the usual way
  to ship an MoE without a routing runtime. Same outputs as the routed model.
"""

from __future__ import annotations

import torch
from torch import nn

from .model import MobileVMoE
from .split import Graph


class MonolithicMoE(nn.Module):
    def __init__(self, model: MobileVMoE):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        m = self.model
        x = m.trunk(images)
        probs = m.router(x).softmax(dim=-1)
        gates, experts = probs.topk(m.cfg.top_k, dim=-1)
        weights = torch.zeros_like(probs).scatter(1, experts, gates)  # B x E, zero where not routed
        for blk in m.moe_blocks:
            x, h = blk.attend(x)
            for e, mlp in enumerate(blk.experts):
                x = x + weights[:, e, None, None] * mlp(h)
        return m.classify(x)


class DenseLogits(nn.Module):
    def __init__(self, model: MobileVMoE):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)[0]


def _images(model: MobileVMoE) -> dict[str, torch.Tensor]:
    c = model.cfg
    return {"images": torch.zeros(1, c.in_chans, c.image_size, c.image_size)}


def monolithic_graph(model: MobileVMoE) -> Graph:
    return Graph("monolithic", "baseline", MonolithicMoE(model.eval()), _images(model), ["logits"])


def dense_graph(dense: MobileVMoE) -> Graph:
    if dense.cfg.is_moe:
        raise ValueError("dense_graph needs a dense model (moe_layers=0)")
    return Graph("dense", "baseline", DenseLogits(dense.eval()), _images(dense), ["logits"])
