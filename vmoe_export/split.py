"""Split a model into separately exportable graphs, and compose them back with the schedule.

What a model must provide to be split (`SplittableModel`, in the spirit of timm's
forward_features / forward_head): a `schedule` (vmoe_export.schedule), a `graph_module(spec)`
returning the nn.Module that computes one graph of it and holds only that graph's weights, and
`tensor_shape(name)` for the batch-1 shape of every tensor the schedule names. MobileVMoE
implements it; a second model family plugs in by implementing the same three members, and
split, export, parity and the runtime need no change.

Two schedules (vmoe_export.schedule): per-layer expert graphs are exact for every k (for
k >= 2 the gate-weighted mix happens inside every MoE layer, so layer l+1 needs the mixed
output of layer l) and keep the shared attention stored once; the fused schedule, exact only
for k=1, gives each expert one graph through every MoE layer, 2L graph calls fewer per image;
each path holds the MoE attention (stored once where the backend shares weights: shared_weights.py). Either way an
expert is loaded as a unit (schedule.expert_graphs(e)); the benchmarks measure both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from .graphio import GraphIO, TensorSpec
from .model import route
from .schedule import GraphSpec, Schedule, execute


class SplittableModel(Protocol):
    @property
    def schedule(self) -> Schedule: ...

    def graph_module(self, spec: GraphSpec) -> nn.Module: ...

    def tensor_shape(self, name: str) -> tuple[int, ...]: ...


@dataclass
class Graph:
    """One exportable piece: its place in the schedule, its module and example (zero) inputs."""

    spec: GraphSpec
    module: nn.Module
    inputs: dict[str, torch.Tensor]  # name -> example input (batch 1)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def role(self) -> str:
        return self.spec.role

    @property
    def outputs(self) -> list[str]:
        return list(self.spec.outputs)

    def run(self, *args: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.module(*args)
        return out if isinstance(out, tuple) else (out,)

    @torch.no_grad()
    def io(self) -> GraphIO:
        outs = self.run(*self.inputs.values())
        return GraphIO(tuple(TensorSpec(n, tuple(t.shape)) for n, t in self.inputs.items()),
                       tuple(TensorSpec(n, tuple(t.shape)) for n, t in zip(self.outputs, outs, strict=True)))


def graph_of(model: SplittableModel, spec: GraphSpec) -> Graph:
    inputs = {name: torch.zeros(model.tensor_shape(name)) for name in spec.inputs}
    return Graph(spec, model.graph_module(spec), inputs)


def split_model(model: SplittableModel, schedule: Schedule | None = None) -> list[Graph]:
    """Every graph of `schedule` (default: the model's own), in schedule order."""
    schedule = schedule or model.schedule
    if not schedule.num_experts:
        raise ValueError("the model is dense (moe_layers=0): there is nothing to route; export an MoE checkpoint")
    if isinstance(model, nn.Module):
        model.eval()
    return [graph_of(model, spec) for spec in schedule.graphs()]


def torch_select(k: int):
    """The schedule's expert selection for one image in torch (model.route: ties to the lower id)."""

    def select(router_logits: torch.Tensor):
        gates, experts = route(router_logits, k)
        return experts[0].tolist(), list(gates[0])

    return select


@torch.no_grad()
def run_split(graphs: list[Graph], schedule: Schedule, images: torch.Tensor,
              traces: list[dict] | None = None) -> torch.Tensor:
    """Compose the split graphs exactly as the runtime does, image by image (routing is per image):
    the reference for tests, parity and golden vectors. Returns logits (N, classes); with `traces`,
    appends each image's stage-by-stage trace."""
    by_name = {g.name: g for g in graphs}
    select = torch_select(schedule.top_k)
    out = []
    for b in range(images.shape[0]):
        trace = {} if traces is not None else None
        out.append(execute(schedule, lambda name, *xs: by_name[name].run(*xs), select, images[b : b + 1], trace))
        if traces is not None:
            traces.append(trace)
    return torch.cat(out)
