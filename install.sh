#!/usr/bin/env bash
# Set up a fresh Linux machine for vmoe-export: system packages (Fashion-MNIST; JUnit, org.json and npm for the
# Android core's tests), the Kotlin compiler the Android build declares (android_demo/gradle/libs.versions.toml,
# from the npm registry, into .toolchain/), then a Python 3.11 virtual environment in .venv with the pinned toolchain.
set -euo pipefail
cd "$(dirname "$0")"

if command -v apt-get >/dev/null 2>&1; then
    sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    need=""
    for pkg in dataset-fashion-mnist junit4 libandroid-json-java; do
        dpkg -s "$pkg" >/dev/null 2>&1 || need="$need $pkg"
    done
    command -v npm >/dev/null 2>&1 || need="$need npm"
    if [ -n "$need" ]; then
        echo "installing system packages:$need"
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq $need >/dev/null
    fi
else
    echo "no apt-get: install Fashion-MNIST's IDX files under /usr/share/datasets/fashion-mnist (or train with --data-dir)," >&2
    echo "and junit4 + org.json (libandroid-json-java) + npm for the Android core's tests" >&2
fi
# The Android core's tests compile with exactly the Kotlin version the Gradle build declares.
android_demo/tools/install_kotlin.sh >/dev/null

python=${PYTHON:-python3.11}
command -v "$python" >/dev/null 2>&1 || python=python3
"$python" -c 'import sys; sys.exit(sys.version_info[:2] != (3, 11))' || { echo "vmoe-export needs Python 3.11 (set PYTHON=...)" >&2; exit 1; }
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch is pinned to 2.13.0: this machine's pip finds its CPU wheel locally. Elsewhere, install the
# CPU build of torch 2.13.0 first, or a bare resolve pulls the CUDA build (several GB).
.venv/bin/pip install -q --disable-pip-version-check -e '.[export,test]'
.venv/bin/pip check
