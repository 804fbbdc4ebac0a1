"""Write a benchmark report: bench.json, a Markdown summary and PNG plots (matplotlib, Agg)."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .memory import packing_note


def write_report(report: dict, out_dir: Path) -> None:
    """Written into a temp dir and moved into place file by file, so a failed run leaves the previous report."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir, prefix=".report.") as tmp:
        tmp = Path(tmp)
        (tmp / "bench.json").write_text(json.dumps(report, indent=2) + "\n")
        _plots(report, tmp)
        (tmp / "README.md").write_text(markdown(report))
        for f in tmp.iterdir():
            os.replace(f, out_dir / f.name)


def save_figure(fig, ax, path: Path, ylabel: str, title: str) -> None:
    """Label, lay out, write and close a figure: the same finish for every plot the benchmarks draw."""
    import matplotlib.pyplot as plt

    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _grouped_bars(plt, path: Path, names: list[str], series: dict[str, list[float]], ylabel: str, title: str,
                  hline: tuple[float, str] | None = None) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    width = 0.8 / len(series)
    for i, (label, vals) in enumerate(series.items()):
        ax.bar([j + (i - (len(series) - 1) / 2) * width for j in range(len(names))], vals, width, label=label)
    if hline:
        ax.axhline(hline[0], color="k", ls="--", lw=1, label=hline[1])
    ax.set_xticks(range(len(names)), names)
    save_figure(fig, ax, path, ylabel, title)


def _plots(report: dict, out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    backends = report["backends"]
    names = list(backends)
    _grouped_bars(plt, out / "latency.png", names, {
        "routed split bundle": [backends[t]["split"]["end_to_end"]["median_ms"] for t in names],
        "dense twin (1 graph)": [backends[t]["dense_twin"]["median_ms"] for t in names],
        "monolithic MoE (1 graph)": [backends[t]["monolithic"]["median_ms"] for t in names],
    }, "median ms / image (batch 1)", f"End-to-end latency, {report['machine']['threads_requested']} thread(s)",
        hline=(report["eager"]["routed_model"]["median_ms"], "eager PyTorch (routed model)"))

    _grouped_bars(plt, out / "expert_load.png", names, {
        "cold: first use (checksum + read + init)": [backends[t]["split"]["expert_cold_load"]["median_ms"] for t in names],
        "warm: expert compute per image": [backends[t]["split"]["stages"]["experts"]["median_ms"] for t in names],
    }, "median ms", "Expert switch cost")

    ok = [t for t in names if "error" not in backends[t]["memory"]]
    _grouped_bars(plt, out / "memory.png", ok, {
        "shared graphs + routed expert(s)": [backends[t]["memory"]["routed_resident_mb"] for t in ok],
        "shared graphs + all experts": [backends[t]["memory"]["all_experts_mb"] for t in ok],
    }, "RSS growth over runtime baseline (MiB)", "Resident memory")

    fig, ax = plt.subplots(figsize=(7, 4))
    bottom = [0.0] * len(names)
    for st in ["trunk", "router", "attention", "experts", "head"]:
        vals = [backends[t]["split"]["stages"][st]["median_ms"] for t in names]
        ax.bar(names, vals, bottom=bottom, label=st)
        bottom = [b + v for b, v in zip(bottom, vals)]
    save_figure(fig, ax, out / "stages.png", "median ms / image", "Routed bundle: time per stage")


def spread(ratios: dict, baseline: str) -> str:
    """' (min-max over N rounds)' for a ratio measured interleaved; '' for a report from before."""
    lo_hi = ratios.get("spread_over_rounds", {}).get(baseline)
    return f" ({lo_hi[0]:.2f}-{lo_hi[1]:.2f})" if lo_hi else ""


def _ms(d: dict) -> str:
    return f"{d['median_ms']:.3f} / {d['p90_ms']:.3f}"


def _memory_kinds_table(backends: dict) -> list[str]:
    rows = [(t, b["memory"]) for t, b in backends.items() if "expert_marginal_anon_over_bytes" in b["memory"]]
    if not rows:  # a report from before the split was recorded
        return []
    lines = ["### By kind of page (/proc/self/smaps_rollup)", "",
             "Anonymous pages (heap, packed weights) are dirty: they stay resident until freed. File-backed pages "
             "(mapped libraries and artifacts) are clean: the OS may drop them under memory pressure and read them "
             "back, so a phone counts them differently. Bundle files = the file-backed pages that are mappings of the "
             "bundle's own artifacts. Growth over the runtime baseline, MiB, anonymous / file-backed.", "",
             "| backend | shared graphs | + routed expert(s) | + all experts | per further expert / its bytes: anonymous, file-backed (bundle files) |",
             "|---|---|---|---|---|"]
    for t, m in rows:
        cells = [f"{m[f'{stage}_anon_mb']:.2f} / {m[f'{stage}_file_mb']:.2f}"
                 for stage in ("shared_loaded", "routed_resident", "all_experts")]
        lines.append(f"| {t} | {' | '.join(cells)} | {m['expert_marginal_anon_over_bytes']:.2f}x, "
                     f"{m['expert_marginal_file_over_bytes']:.2f}x ({m['expert_marginal_bundle_mapped_over_bytes']:.2f}x) |")
    return lines + [""]


def markdown(r: dict) -> str:
    m, f, s = r["machine"], r["flops"], r["settings"]
    mdl = r["model"]
    lines = [
        f"# vmoe-bench report: {mdl['name']} (E={mdl['num_experts']}, L={mdl['moe_layers']}, k={mdl['top_k']}, "
        f"{r.get('schedule', 'per-layer')} schedule)",
        "",
        f"Measured {r['created_at']} on {m['cpu']} ({m['logical_cores']} logical cores, {m['os']}), "
        f"{m['threads_requested']} thread(s) per runtime, batch 1, {s['warmup']} warm-up + {s['runs']} timed runs"
        f"{' (--quick)' if s['quick'] else ''}"
        f"{packing_note(s.get('pack_shared_weights'))}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + ".",
        "",
        *([f"Schedule: {r['schedule_reason']}.", ""] if r.get("schedule_reason") else []),
        f"Inputs: {r.get('data', {}).get('description', 'test images')}. "
        "Shared machines are noisy: read the ratios (measured in this one run), not absolute milliseconds. The routed "
        f"bundle and its baselines were timed interleaved in {s.get('rounds', 1)} alternating rounds; a ratio is the median "
        "of its per-round ratios, with their range in brackets. "
        + ("Phone figures are in the on-device section at the end." if r.get("devices") else
         "Nothing here ran on a phone (vmoe-bench --device adb runs it there); see the README's on-device section."),
        "",
        "## FLOPs and parameters (torch.utils.flop_counter on the exported programs; 1 MAC = 2 FLOPs)",
        "",
        "| graph | FLOPs |",
        "|---|---|",
        *[f"| {n} | {v:,} |" for n, v in f["per_graph"].items()],
        "",
        f"- Active per image (shared graphs + k experts): **{f['active_per_image']:,}** FLOPs; "
        f"all graphs together: {f['total_all_graphs']:,}",
        f"- Dense twin (same widths, all blocks dense): {f['dense_twin']:,} FLOPs "
        f"(active MoE / dense = {f['active_over_dense']:.4f}; the difference is the router)",
        f"- Monolithic MoE graph (all experts computed, masked): {f['monolithic_moe']:,} FLOPs",
        f"- Parameters: {f['params']['total']:,} total, {f['params']['active_per_image']:,} active per image, "
        f"dense twin {f['params']['dense_twin']:,}",
        "",
        "## End-to-end latency, median / p90 ms per image",
        "",
        "| backend | routed split bundle | dense twin | monolithic MoE | split / dense (a) | split / monolithic (b) | split / eager (c) |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, b in r["backends"].items():
        q = r["ratios"][t]
        lines.append(f"| {t} | {_ms(b['split']['end_to_end'])} | {_ms(b['dense_twin'])} | {_ms(b['monolithic'])} | "
                     f"{q['split_over_dense_twin']:.2f}{spread(q, 'dense_twin')} | "
                     f"{q['split_over_monolithic']:.2f}{spread(q, 'monolithic')} | {q['split_over_eager_model']:.2f} |")
    e = r["eager"]
    lines += [
        f"| eager PyTorch | routed model {_ms(e['routed_model'])}; split schedule {_ms(e['routed_split'])} | "
        f"{_ms(e['dense_twin'])} | {_ms(e['monolithic'])} | | | |",
        "",
        "![latency](latency.png)",
        "",
        "## Per stage (routed bundle), median / p90 ms",
        "",
        "| backend | trunk | router | attention (all MoE layers) | experts (all MoE layers) | head | shared graphs load |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, b in r["backends"].items():
        st = b["split"]["stages"]
        lines.append(f"| {t} | {_ms(st['trunk'])} | {_ms(st['router'])} | {_ms(st['attention'])} | {_ms(st['experts'])} | "
                     f"{_ms(st['head'])} | {b['split']['shared_load_ms']:.1f} ms |")
    lines += [
        "",
        "![stages](stages.png)",
        "",
        "## Expert switch cost",
        "",
        "Cold = first use of an expert in a process: sha256 check, read, and runtime init of its graphs "
        "(files in the OS page cache). Uncached = the same after evicting the expert's files from the page cache "
        "(posix_fadvise DONTNEED, no root needed; a disk cache below the OS, e.g. a VM host's, may still serve the "
        "read). Verified once = page-cached with `verify=\"once\"` (`vmoe-predict --verify once`): every artifact "
        "was hashed when the bundle opened, so a switch is only the runtime's load. Warm = the expert is resident: a "
        "cache lookup, then only its compute.",
        "",
        "Self-test at open: the bundle's golden images run through it when it opens (the default; `--no-self-test` "
        "skips it), the shared graphs' first runs and the routed experts' cold loads included.",
        "",
        "| backend | cold load median / p90 ms | uncached | verified once | warm lookup ms | expert compute per image ms | cold / warm compute | expert size | self-test at open ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for t, b in r["backends"].items():
        sp = b["split"]
        uncached = _ms(sp["expert_cold_load_uncached"]) if sp.get("expert_cold_load_uncached") else "-"
        lines.append(f"| {t} | {_ms(sp['expert_cold_load'])} | {uncached} | {_ms(sp['expert_cold_load_verified_once'])} | "
                     f"{sp['expert_warm_lookup']['median_ms']:.4f} | "
                     f"{sp['stages']['experts']['median_ms']:.3f} | {r['ratios'][t]['cold_load_over_warm_expert_exec']:.1f} | "
                     f"{sp['expert_bytes'][0] / 1024:.0f} KiB | {sp.get('self_test_ms', 0.0):.1f} |")
    steps = [(t, b["split"]["expert_cold_load_steps"]) for t, b in r["backends"].items()
             if b["split"].get("expert_cold_load_steps")]
    if steps:
        lines += ["", "Where a cold load goes, per expert (its graphs together, page-cached), median ms: the checks "
                  "before a load (containment, size, sha256, which reads the file), the runtime's own load (read, parse, "
                  "init), and the expert's first run (one inference, plus arenas and weights packed on first use).", "",
                  "| backend | verify | runtime load | first run |", "|---|---|---|---|",
                  *[f"| {t} | {st['verify']['median_ms']:.2f} | {st['runtime_load']['median_ms']:.2f} | "
                    f"{st['first_run']['median_ms']:.2f} |" for t, st in steps]]
    lines += [
        "",
        "![expert load](expert_load.png)",
        "",
        "## Resident memory (separate process per backend, Linux VmRSS)",
        "",
        "Growth over the process after starting the runtime (each reading after malloc_trim, so heap the allocator "
        "kept after freeing is not counted): after loading the shared graphs; after the first image; after loading "
        "and running every other expert once too. The first image's growth is split in two: the shared graphs' "
        "first run (activation arenas, weights packed on first use) and the routed expert(s). Per expert = each "
        "further expert's growth after a warm-up image over its artifact bytes (median), once loaded and once run.",
        "",
        "| backend | shared graphs | + routed expert(s) | + all experts | first image: shared first run + routed experts | per expert / its bytes: loaded, run | process peak |",
        "|---|---|---|---|---|---|---|",
    ]
    for t, b in r["backends"].items():
        mem = b["memory"]
        if "error" in mem:
            lines.append(f"| {t} | error: {mem['error']} | | | | | |")
        else:
            lines.append(f"| {t} | {mem['shared_graphs_mb']:.2f} MiB | {mem['routed_resident_mb']:.2f} MiB | "
                         f"{mem['all_experts_mb']:.2f} MiB | {mem['shared_first_run_mb']:.2f} + "
                         f"{mem['routed_experts_mb']:.2f} MiB | {mem['expert_load_over_bytes']:.2f}x, "
                         f"{mem['expert_marginal_over_bytes']:.2f}x | {mem['peak_rss'] / 2**20:.0f} MiB |")
    lines += ["", "![memory](memory.png)", "", *_memory_kinds_table(r["backends"])]
    if r.get("quantized"):
        lines += ["## Quantized bundles against fp32 (same run)", "",
                  "Size and latency ratios are against the same backend's fp32 bundle above; accuracy, routing and SNR "
                  "come from each bundle's own parity report against fp32 PyTorch.", "",
                  "| backend | mode | size | size / fp32 | latency ms | latency / fp32 | cold expert load ms | parity |",
                  "|---|---|---|---|---|---|---|---|"]
        for q in r["quantized"]:
            lines.append(f"| {q['backend']} | {q['mode']} | {q['size_bytes'] / 1e6:.2f} MB | {q['size_ratio']:.2f} | "
                         f"{q['latency_ms']:.3f} | {q['latency_ratio']:.2f} | {q['expert_cold_load_ms']:.2f} | "
                         f"{q['parity_summary']} |")
        lines.append("")
    from .device import device_markdown

    lines += device_markdown(r)
    return "\n".join(lines)


