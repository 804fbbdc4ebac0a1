"""FLOPs and parameters of a bundle and its baselines, from the manifest's per-graph counts and the
schedule's arithmetic (active per image = shared graphs + k experts)."""

from __future__ import annotations

from ..bundle import manifest_schedule
from ..flops import count_flops
from ..model import MobileVMoE, count_params
from .baselines import dense_graph, monolithic_graph


def flop_report(manifest: dict, model: MobileVMoE, dense: MobileVMoE) -> dict:
    schedule = manifest_schedule(manifest)
    flops = {n: g["flops"] for n, g in manifest["graphs"].items()}
    params = {n: g["params"] for n, g in manifest["graphs"].items()}

    def count(graph):
        return count_flops(graph.module, tuple(graph.inputs.values()))

    dense_flops, mono_flops = count(dense_graph(dense)), count(monolithic_graph(model))
    active = int(schedule.active(flops))
    return {
        "per_graph": flops,
        "per_expert_all_layers": [int(schedule.expert_total(flops, e)) for e in range(schedule.num_experts)],
        "active_per_image": active,
        "total_all_graphs": int(schedule.total(flops)),
        "dense_twin": dense_flops,
        "monolithic_moe": mono_flops,
        "active_over_dense": active / dense_flops,
        "params": {"per_graph": params, "total": int(schedule.total(params)),
                   "active_per_image": int(schedule.active(params)), "dense_twin": count_params(dense)},
    }
