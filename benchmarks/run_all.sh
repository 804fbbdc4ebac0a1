#!/usr/bin/env bash
# Record a full benchmark run of the shipped model into benchmarks/results/ (JSON, Markdown, PNGs).
# Exports fresh bundles for every backend with a Linux runtime first, so the run measures this checkout.
# Usage: benchmarks/run_all.sh [extra vmoe-bench options, e.g. --threads 2]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=.venv/bin
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for target in executorch tflite onnx; do
    "$bin/vmoe-export" --target "$target" --output "$work/bundles" --quiet
done
"$bin/vmoe-bench" --bundles "$work/bundles" --out benchmarks/results --quiet "$@"
