"""vmoe-bench: FLOPs, latency, memory and expert-switch cost of exported bundles, per backend.

Rooms, in the order data flows through them:
    baselines.py  the single-graph models a bundle is compared with (dense twin, monolithic MoE)
    counts.py     FLOPs and parameters: per graph, active per image, baselines
    measure.py    timing: the routed bundle per stage, cold vs warm experts, single graphs, eager torch
    memory.py     resident memory, measured in a fresh process per bundle (python -m vmoe_export.bench.memory)
    run.py        one benchmark run: machine facts, every measurement, the ratios between them
    report.py     bench.json, a Markdown summary and PNG plots
    cli.py        the vmoe-bench command

Every ratio compares numbers measured in the same run on the same machine.
"""
