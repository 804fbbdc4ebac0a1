#!/usr/bin/env bash
# Build an arm64 (aarch64) user space for running bundles under qemu-user emulation on an x86 Debian machine:
# Debian's arm64 Python 3.11 and its libraries (apt-get download + dpkg -x, no chroot, no root filesystem
# image), then the runtimes' aarch64 wheels from PyPI into ROOT/site. Idempotent: reruns skip what is there.
#   benchmarks/arm64/make_root.sh ROOT
# Needs: apt-get (root or sudo), qemu-user-static, pip. Run a program with:
#   qemu-aarch64-static -cpu max -L ROOT ROOT/usr/bin/python3.11 ...   (PYTHONPATH=ROOT/site:<repo>)
set -euo pipefail
root=${1:?usage: make_root.sh ROOT}
here=$(cd "$(dirname "$0")" && pwd)
mkdir -p "$root"
root=$(cd "$root" && pwd)
sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"

if ! command -v qemu-aarch64-static >/dev/null; then
    $sudo apt-get update -qq && DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq qemu-user-static >/dev/null
fi
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    $sudo dpkg --add-architecture arm64
    $sudo apt-get update -qq
fi
if [ ! -x "$root/usr/bin/python3.11" ]; then
    debs=$(mktemp -d)
    # Python 3.11 and every shared library its standard library and the wheels below load.
    pkgs="libc6 libgcc-s1 libstdc++6 zlib1g libexpat1 libffi8 libssl3 libbz2-1.0 liblzma5 libsqlite3-0 libuuid1
          libncursesw6 libtinfo6 libreadline8 libcrypt1 libdb5.3 libgomp1 libnsl2 libtirpc3
          libgssapi-krb5-2 libkrb5-3 libk5crypto3 libcom-err2 libkrb5support0 libkeyutils1
          libpython3.11-minimal libpython3.11-stdlib python3.11-minimal"
    (cd "$debs" && apt-get download $(for p in $pkgs; do echo "$p:arm64"; done) media-types >/dev/null)
    for d in "$debs"/*.deb; do dpkg -x "$d" "$root"; done
    rm -rf "$debs"
fi
# Wheels for Python 3.11 on manylinux aarch64. numpy, pydantic and Pillow: the bundle reader; the runtimes as
# pinned in requirements.txt beside this script (why those versions: see the comments there).
platform="--only-binary=:all: --python-version 3.11 --implementation cp --platform manylinux_2_28_aarch64
          --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64"
if [ ! -f "$root/site/.complete" ]; then
    rm -rf "$root/site"
    python3 -m pip download -q --disable-pip-version-check --no-deps $platform -d "$root/wheels" -r "$here/requirements.txt"
    python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile $platform \
        --target "$root/site" "$root"/wheels/*.whl
    touch "$root/site/.complete"
fi
# ExecuTorch's Python runtime and the torch it exchanges tensors with (why these versions: the comments in
# requirements-executorch.txt), apart so that the ONNX and TFLite runs stay torch-free.
if [ ! -f "$root/site-executorch/.complete" ]; then
    rm -rf "$root/site-executorch"
    python3 -m pip download -q --disable-pip-version-check --no-deps $platform --platform any -d "$root/wheels-executorch" \
        -r "$here/requirements-executorch.txt"
    python3 -m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile $platform --platform any \
        --target "$root/site-executorch" "$root"/wheels-executorch/*.whl
    touch "$root/site-executorch/.complete"
fi
echo "$root"
