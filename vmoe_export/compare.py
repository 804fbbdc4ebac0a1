"""Scale-free comparison of a runtime's values with reference values: signal-to-noise ratio in dB and max abs
diff, accumulated per stage. Used by export parity (bundle vs PyTorch) and by the self-test (this machine vs
the values recorded at export). NumPy only: the device side uses it."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

MAX_SNR_DB = 200.0  # reported for identical outputs (JSON has no infinity)


def snr_db(signal: float, noise: float) -> float:
    """Signal-to-noise ratio in dB from sums of squares (reference, reference - value): scale-free, the
    PSNR-style check Apple's ml-stable-diffusion applies to converted chunks."""
    if noise <= 0.0:
        return MAX_SNR_DB
    return min(MAX_SNR_DB, 10.0 * float(np.log10(max(signal, 1e-30) / noise)))


def power(x: np.ndarray) -> float:
    return float((np.asarray(x, dtype=np.float64) ** 2).sum())


@dataclass
class StageStats:
    """Per stage: max abs diff and the signal/noise sums over every value compared."""

    max_abs_diff: dict[str, float] = field(default_factory=dict)
    _power: dict[str, list[float]] = field(default_factory=dict)

    def add(self, stage: str, want: np.ndarray, got: np.ndarray) -> None:
        want = np.asarray(want, dtype=np.float64).reshape(-1)
        got = np.asarray(got, dtype=np.float64).reshape(-1)
        diff = float(np.abs(got - want).max()) if want.size else 0.0
        self.max_abs_diff[stage] = max(self.max_abs_diff.get(stage, 0.0), diff)
        acc = self._power.setdefault(stage, [0.0, 0.0])
        acc[0] += power(want)
        acc[1] += power(want - got)

    def snr_db(self) -> dict[str, float]:
        return {k: round(snr_db(*v), 2) for k, v in self._power.items()}
