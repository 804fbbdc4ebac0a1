"""What machine a bundle was checked on: the CPU features that decide which kernels a runtime picks.

ONNX Runtime's MLAS and XNNPACK choose their int8 GEMM by CPU feature at run time (x86: AVX2, AVX-512,
VNNI; Arm: dot product, i8mm, SVE), so the same int8 bundle computes differently on different CPUs.
Export parity and `vmoe-export verify` record these features beside their figures, so a reader knows
where a number was obtained. The features are read the way the runtimes read them (CPUID on x86, the
kernel's hwcaps on Arm: NumPy's own run-time detection, plus AT_HWCAP2 for i8mm), so under an emulator
(qemu-user -cpu ...) they are the emulated CPU's."""

from __future__ import annotations

import platform
from pathlib import Path

# NumPy's names for the features that select a different int8 (or fp32) kernel family in MLAS or XNNPACK.
KERNEL_FEATURES = ("AVX2", "FMA3", "AVX512F", "AVX512BW", "AVX512VNNI", "AVX512BF16",  # x86
                   "ASIMD", "ASIMDHP", "ASIMDDP", "SVE")  # Arm
_AT_HWCAP2, _HWCAP2_I8MM = 26, 1 << 13  # linux/auxvec.h, arch/arm64/include/uapi/asm/hwcap.h


def cpu_features() -> list[str]:
    try:
        from numpy._core._multiarray_umath import __cpu_features__ as found
    except ImportError:  # NumPy < 2
        from numpy.core._multiarray_umath import __cpu_features__ as found
    out = [f for f in KERNEL_FEATURES if found.get(f)]
    if platform.machine() in ("aarch64", "arm64"):
        try:
            import ctypes

            libc = ctypes.CDLL(None)
            libc.getauxval.restype = ctypes.c_ulong
            if libc.getauxval(_AT_HWCAP2) & _HWCAP2_I8MM:
                out.append("I8MM")
        except (OSError, AttributeError):
            pass
    return out


def cpu_model(cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip().lower() in ("model name", "cpu model", "hardware"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_info() -> dict:
    """{"arch", "model", "features"}. Under qemu-user the model is the host's, the features the emulated CPU's."""
    return {"arch": platform.machine(), "model": cpu_model(), "features": cpu_features()}


def describe(info: dict) -> str:
    return f"{info['arch']} ({info['model']}; {' '.join(info['features']) or 'none of the listed kernel features'})"
