"""The routed schedule: the one place that knows graph names, the order graphs run in, and the
arithmetic over them. Everything else (the split, the manifest, the reference composition used by
parity and golden vectors, the bundle runtime, the monolithic baseline, active FLOPs/params)
is derived from here.

A schedule is a list of steps, stored as data in every bundle's manifest:

    run        graph: inputs -> outputs               (trunk, router, head)
    route      k experts from router logits            -> experts, gates
    moe_layer  attention: tokens -> tokens_out, hidden; then
               tokens = tokens_out + sum_j gates[j] * experts[ids[j]](hidden)
    expert_path  (k=1 only) tokens = experts[id](tokens, gate): one graph per expert holding every
               MoE layer's attention and that expert's MLP

`execute` walks those steps over any array type (torch tensors for the reference, numpy
arrays from a backend's runtime) given a `run(graph, *inputs)` and a `select(router_logits)`.
Two schedules exist (KINDS). "per-layer" is exact for every k: per MoE layer, the shared attention
graph, then the routed experts' per-layer graphs, mixed by their gates. "fused" (k=1 only) runs three
graphs per image: the trunk with the router as a second output, the routed expert's whole path
(every MoE layer's attention and that expert's MLP), the head. Where the router converts in another
precision than the trunk (an int8 bundle keeps its router fp32: a quantized router can flip which
experts run), it stays a graph of its own: four calls. With one expert per image the
per-layer mix is a single term, so the fused path computes the same thing with 2L fewer graph calls;
the price is the MoE layers' attention held by every expert path, stored once per expert unless the
backend stores what the paths hold alike once (shared_weights.py; ONNX does). The head, 1000 classes x D
weights on ImageNet, stays shared: a copy per expert would add more load time than the one call it saves.

This module imports nothing from the package but its error type: it is the lowest room.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

from .errors import VmoeError

TRUNK, ROUTER, HEAD = "trunk", "router", "head"
KINDS = ("per-layer", "fused")
ROLES = ("trunk", "router", "attention", "expert", "head")

# Tensor names at the graph boundaries (also the names exported graphs give their inputs and outputs).
IMAGES, TOKENS, ROUTER_LOGITS, LOGITS = "images", "tokens", "router_logits", "logits"
TOKENS_OUT, HIDDEN, EXPERT_OUT = "tokens_out", "hidden", "expert_out"
GATE = "gate"  # the routed expert's gate as a (1, 1) tensor: the fused path's second input


def check_kind(kind: str, top_k: int) -> None:
    """Refuse a schedule kind that does not exist or would not be exact for a model routing to top_k experts."""
    if kind not in KINDS:
        raise ScheduleError(f"unknown schedule {kind!r}: use auto, per-layer or fused")
    if kind == "fused" and top_k != 1:
        raise ScheduleError(f"the fused schedule is exact only for top_k=1 (this model routes to {top_k} experts, "
                            "mixed inside every MoE layer); use --schedule per-layer or auto")


def attention_graph(layer: int) -> str:
    return f"moe{layer}_attn"


def expert_graph(layer: int, expert: int) -> str:
    return f"moe{layer}_e{expert}"


def expert_path_graph(expert: int) -> str:
    return f"e{expert}_path"


def layer_output(layer: int) -> str:
    """Trace key of the tokens after MoE layer `layer` (parity compares every stage)."""
    return f"moe{layer}_out"


def artifact_relpath(spec: "GraphSpec", suffix: str, shared_weights: bool = False) -> str:
    """Where a graph's artifact lives inside a bundle: an expert's graphs share one folder. Expert paths that
    read their common weights from one shared file (shared_weights.py) lie beside it instead, in experts/: a
    runtime may refuse a model's external data outside the model's own folder (ONNX Runtime does)."""
    if spec.role == "expert":
        if spec.layer is None and shared_weights:
            return f"experts/e{spec.expert}{suffix}"
        part = "path" if spec.layer is None else f"moe{spec.layer}"
        return f"experts/e{spec.expert}/{part}{suffix}"
    return f"shared/{spec.name}{suffix}"


@dataclass(frozen=True)
class GraphSpec:
    """One graph of the split as the schedule sees it: name, role and tensor names."""

    name: str
    role: str  # one of ROLES
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    layer: int | None = None
    expert: int | None = None


# ---------------------------------------------------------------- steps

@dataclass(frozen=True)
class Run:
    graph: str
    role: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]


@dataclass(frozen=True)
class Route:
    logits: str
    k: int


@dataclass(frozen=True)
class MoELayer:
    layer: int
    attention: str
    experts: tuple[str, ...]  # index = expert id


@dataclass(frozen=True)
class ExpertPath:
    moe_layers: int  # how many MoE layers each path holds
    experts: tuple[str, ...]  # index = expert id


Step = Run | Route | MoELayer | ExpertPath


@dataclass(frozen=True)
class FusedLine:
    """The graphs a fused schedule calls, in order: trunk (with the router's logits as its second output unless
    `router` names a graph of its own), the routed expert's path, the head."""

    trunk: str
    router: str | None
    paths: tuple[str, ...]  # index = expert id
    head: str


class ScheduleError(VmoeError, ValueError):
    """A schedule description that is malformed or does not fit the model."""


@dataclass(frozen=True)
class Schedule:
    steps: tuple[Step, ...]

    @classmethod
    def per_layer(cls, num_experts: int, moe_layers: int, top_k: int) -> "Schedule":
        """The schedule exact for every k: per MoE layer, shared attention then the gate-weighted
        sum of the routed experts' per-layer graphs. moe_layers=0 gives the dense twin's schedule."""
        steps: list[Step] = [Run(TRUNK, "trunk", (IMAGES,), (TOKENS,))]
        if moe_layers:
            steps += [Run(ROUTER, "router", (TOKENS,), (ROUTER_LOGITS,)), Route(ROUTER_LOGITS, top_k)]
            steps += [MoELayer(layer, attention_graph(layer), tuple(expert_graph(layer, e) for e in range(num_experts)))
                      for layer in range(moe_layers)]
        steps.append(Run(HEAD, "head", (TOKENS,), (LOGITS,)))
        return cls(tuple(steps))

    @classmethod
    def fused(cls, num_experts: int, moe_layers: int, router_graph: bool = False) -> "Schedule":
        """k=1: trunk+router in one graph (or, with `router_graph`, the trunk then the router on its own), the
        routed expert's path through every MoE layer, the head."""
        front: tuple[Step, ...] = (Run(TRUNK, "trunk", (IMAGES,), (TOKENS, ROUTER_LOGITS)),)
        if router_graph:
            front = (Run(TRUNK, "trunk", (IMAGES,), (TOKENS,)), Run(ROUTER, "router", (TOKENS,), (ROUTER_LOGITS,)))
        return cls((*front, Route(ROUTER_LOGITS, 1),
                    ExpertPath(moe_layers, tuple(expert_path_graph(e) for e in range(num_experts))),
                    Run(HEAD, "head", (TOKENS,), (LOGITS,))))

    @classmethod
    def of_kind(cls, kind: str, num_experts: int, moe_layers: int, top_k: int, router_graph: bool = False
                ) -> "Schedule":
        """The schedule `kind` (one of KINDS) for a model. `router_graph`: the fused schedule keeps the router a
        graph of its own (precision.router_apart); the per-layer schedule always does."""
        check_kind(kind, top_k)
        if kind == "fused":
            return cls.fused(num_experts, moe_layers, router_graph)
        return cls.per_layer(num_experts, moe_layers, top_k)

    # ---- derived facts
    @property
    def kind(self) -> str:
        return "fused" if any(isinstance(s, ExpertPath) for s in self.steps) else "per-layer"

    @property
    def calls_per_image(self) -> int:
        """Graph calls one image makes: each run step, per MoE layer its attention and k experts, one path."""
        k = self.top_k
        return sum(1 if isinstance(s, (Run, ExpertPath)) else 1 + k if isinstance(s, MoELayer) else 0 for s in self.steps)

    @property
    def moe_layers(self) -> list[MoELayer]:
        return [s for s in self.steps if isinstance(s, MoELayer)]

    @property
    def _expert_steps(self) -> list[MoELayer | ExpertPath]:
        return [s for s in self.steps if isinstance(s, (MoELayer, ExpertPath))]

    @property
    def num_experts(self) -> int:
        steps = self._expert_steps
        return len(steps[0].experts) if steps else 0

    @property
    def top_k(self) -> int:
        return next((s.k for s in self.steps if isinstance(s, Route)), 0)

    def graphs(self) -> list[GraphSpec]:
        """Every graph in the order the schedule first runs it (experts of a layer after its attention)."""
        out = []
        for s in self.steps:
            if isinstance(s, Run):
                out.append(GraphSpec(s.graph, s.role, s.inputs, s.outputs))
            elif isinstance(s, MoELayer):
                out.append(GraphSpec(s.attention, "attention", (TOKENS,), (TOKENS_OUT, HIDDEN), layer=s.layer))
                out += [GraphSpec(g, "expert", (HIDDEN,), (EXPERT_OUT,), layer=s.layer, expert=e)
                        for e, g in enumerate(s.experts)]
            elif isinstance(s, ExpertPath):
                out += [GraphSpec(g, "expert", (TOKENS, GATE), (TOKENS_OUT,), expert=e) for e, g in enumerate(s.experts)]
        return out

    @property
    def shared_graphs(self) -> list[str]:
        return [g.name for g in self.graphs() if g.role != "expert"]

    def expert_graphs(self, expert: int) -> list[str]:
        """Expert `expert`'s graphs (one per MoE layer, or its one path): loaded and evicted as one unit."""
        return [s.experts[expert] for s in self._expert_steps]

    def role_of(self, graph: str) -> str:
        return next(g.role for g in self.graphs() if g.name == graph)

    def fused_line(self) -> "FusedLine | None":
        """This schedule as the straight line of graph calls it is, when it is a fused schedule of the one shape
        Schedule.fused builds (trunk [router] route path head), else None: what a runtime may run without walking
        the steps (execute), where the walk costs more than a graph call on a small model."""
        path = next((s for s in self.steps if isinstance(s, ExpertPath)), None)
        if path is None:
            return None
        for router_graph in (False, True):
            if self == Schedule.fused(len(path.experts), path.moe_layers, router_graph):
                return FusedLine(TRUNK, ROUTER if router_graph else None, path.experts, HEAD)
        return None

    # ---- arithmetic over per-graph numbers (FLOPs, parameters, bytes)
    def expert_total(self, per_graph: Mapping[str, float], expert: int) -> float:
        return sum(per_graph[g] for g in self.expert_graphs(expert))

    def routed_experts_max(self, per_graph: Mapping[str, float]) -> float:
        """The most any k experts together can take: the k largest (what one image may need)."""
        totals = sorted((self.expert_total(per_graph, e) for e in range(self.num_experts)), reverse=True)
        return sum(totals[: self.top_k])

    def active(self, per_graph: Mapping[str, float]) -> float:
        """Per image: every shared graph plus k experts (the k largest; all experts are the same size here)."""
        return sum(per_graph[g] for g in self.shared_graphs) + self.routed_experts_max(per_graph)

    def total(self, per_graph: Mapping[str, float]) -> float:
        return sum(per_graph[g.name] for g in self.graphs())

    # ---- manifest form
    def to_json(self) -> list[dict]:
        out = []
        for s in self.steps:
            if isinstance(s, Run):
                out.append({"op": "run", "graph": s.graph, "role": s.role, "inputs": list(s.inputs), "outputs": list(s.outputs)})
            elif isinstance(s, Route):
                out.append({"op": "route", "logits": s.logits, "k": s.k,
                            "rule": "probs = softmax(logits); experts = top_k(probs), ties to the lower id; "
                                    "gates = probs[experts], not renormalised"})
            elif isinstance(s, MoELayer):
                out.append({"op": "moe_layer", "layer": s.layer, "attention": s.attention, "experts": list(s.experts),
                            "rule": "tokens_out, hidden = attention(tokens); "
                                    "tokens = tokens_out + sum_j gates[j] * experts[ids[j]](hidden)"})
            else:
                out.append({"op": "expert_path", "moe_layers": s.moe_layers, "experts": list(s.experts),
                            "rule": "k=1: tokens = experts[ids[0]](tokens, gate = [[gates[0]]])"})
        return out

    @classmethod
    def from_json(cls, steps: Any) -> "Schedule":
        if not isinstance(steps, list) or not steps:
            raise ScheduleError("schedule steps must be a non-empty list")
        parsed: list[Step] = []
        for i, s in enumerate(steps):
            if not isinstance(s, dict):
                raise ScheduleError(f"schedule step {i} is not an object")
            try:
                op = s["op"]
                if op == "run":
                    parsed.append(Run(_str(s["graph"]), _str(s["role"]), _strs(s["inputs"]), _strs(s["outputs"])))
                elif op == "route":
                    parsed.append(Route(_str(s["logits"]), _int(s["k"])))
                elif op == "moe_layer":
                    parsed.append(MoELayer(_int(s["layer"]), _str(s["attention"]), _strs(s["experts"])))
                elif op == "expert_path":
                    parsed.append(ExpertPath(_int(s["moe_layers"]), _strs(s["experts"])))
                else:
                    raise ScheduleError(f"schedule step {i} has unknown op {op!r}")
            except KeyError as e:
                raise ScheduleError(f"schedule step {i} lacks {e}") from None
            except TypeError as e:
                raise ScheduleError(f"schedule step {i}: {e}") from None
        schedule = cls(tuple(parsed))
        if schedule.kind == "fused" and schedule.top_k != 1:
            raise ScheduleError(f"an expert_path step needs k=1, the route step says k={schedule.top_k}")
        return schedule


def _str(v) -> str:
    if not isinstance(v, str):
        raise TypeError(f"expected a string, got {v!r}")
    return v


def _int(v) -> int:
    if isinstance(v, bool) or not isinstance(v, int):
        raise TypeError(f"expected an integer, got {v!r}")
    return v


def _strs(v) -> tuple[str, ...]:
    if not isinstance(v, list):
        raise TypeError(f"expected a list of strings, got {v!r}")
    return tuple(_str(x) for x in v)


# ---------------------------------------------------------------- execution

RunGraph = Callable[..., Sequence[Any]]  # (graph name, *inputs) -> outputs in the graph's order
Select = Callable[[Any], tuple[Sequence[int], Sequence[Any]]]  # router logits -> (expert ids, gates)


def execute(schedule: Schedule, run: RunGraph, select: Select, images, trace: dict | None = None):
    """Run one image through the schedule; returns its logits. With `trace`, records every stage
    boundary (trunk tokens, router logits, experts, each MoE layer's output, logits) into it."""
    env = {IMAGES: images}
    for step in schedule.steps:
        if isinstance(step, Run):
            outs = run(step.graph, *(env[n] for n in step.inputs))
            for name, value in zip(step.outputs, outs, strict=True):
                env[name] = value
                if trace is not None:
                    trace.setdefault(name, value)  # "tokens": the trunk's, not a later layer's
        elif isinstance(step, Route):
            env["experts"], env["gates"] = select(env[step.logits])
            if trace is not None:
                trace["experts"], trace["gates"] = list(env["experts"]), list(env["gates"])
        elif isinstance(step, ExpertPath):
            (e,), (gate,) = env["experts"], env["gates"]
            (env[TOKENS],) = run(step.experts[int(e)], env[TOKENS], gate.reshape(1, 1))
            if trace is not None:
                trace[layer_output(step.moe_layers - 1)] = env[TOKENS]
        else:
            tokens_out, hidden = run(step.attention, env[TOKENS])
            mixed = tokens_out
            for e, gate in zip(env["experts"], env["gates"], strict=True):
                (y,) = run(step.experts[int(e)], hidden)
                mixed = mixed + gate * y
            env[TOKENS] = mixed
            if trace is not None:
                trace[layer_output(step.layer)] = mixed
    return env[LOGITS]
