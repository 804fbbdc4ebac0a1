"""Single-graph baselines the split bundle is benchmarked against, both run by the schedule executor.

- dense: the dense ViT with the same widths, i.e. equal active FLOPs per image (minus the router).
- monolithic: the whole MoE in one graph. Static graphs cannot skip experts, so every expert
  runs and a dense gate vector (zero for unselected experts) masks the mix: the usual way
  to ship an MoE without a routing runtime. Same outputs as the routed model.
"""

from __future__ import annotations

import torch
from torch import nn

from ..model import route
from ..schedule import IMAGES, LOGITS, GraphSpec, execute
from ..split import Graph, SplittableModel


class ScheduledModule(nn.Module):
    """A model's whole schedule as one module (batched). Routing uses every expert, masked: each
    expert's gate is its routed gate or zero, so one static graph computes the routed result."""

    def __init__(self, model: SplittableModel):
        super().__init__()
        self.schedule = model.schedule
        self.parts = nn.ModuleDict({g.name: model.graph_module(g) for g in self.schedule.graphs()})

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        def run(name, *xs):
            out = self.parts[name](*xs)
            return out if isinstance(out, tuple) else (out,)

        def select_all(router_logits):
            gates, experts = route(router_logits, self.schedule.top_k)
            weights = torch.zeros_like(router_logits).scatter(1, experts, gates)  # B x E, zero where not routed
            return range(self.schedule.num_experts), [weights[:, e, None, None] for e in range(self.schedule.num_experts)]

        return execute(self.schedule, run, select_all, images)


def baseline_graph(name: str, model: SplittableModel) -> Graph:
    spec = GraphSpec(name, "baseline", (IMAGES,), (LOGITS,))
    return Graph(spec, ScheduledModule(model.eval()), {IMAGES: torch.zeros(model.tensor_shape(IMAGES))})


def monolithic_graph(model) -> Graph:
    return baseline_graph("monolithic", model)


def dense_graph(dense) -> Graph:
    if dense.schedule.moe_layers:
        raise ValueError("dense_graph needs a dense model (moe_layers=0)")
    return baseline_graph("dense", dense)
