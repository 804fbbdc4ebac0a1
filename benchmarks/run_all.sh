#!/usr/bin/env bash
# Record a full benchmark run of the shipped model into benchmarks/results/ (JSON, Markdown, PNGs).
# Exports fresh bundles for every backend with a Linux runtime first, so the run measures this checkout.
# Usage: benchmarks/run_all.sh [extra vmoe-bench options, e.g. --threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# Every backend with a runtime on this OS, from the registry (CoreML needs macOS).
for target in $("$bin/python" -c 'from vmoe_export.backends import runtime_targets; print(*runtime_targets())'); do
    "$bin/vmoe-export" --target "$target" --output "$work/bundles" --quiet
done
"$bin/vmoe-bench" --bundles "$work/bundles" --out benchmarks/results --quiet "$@"
