"""FLOP counts with torch.utils.flop_counter.FlopCounterMode, on the exported program.

FlopCounterMode counts matmul-like ops (mm, addmm, bmm, conv, ...) as 2 FLOPs per MAC.
The model writes attention as explicit matmuls, so they are counted; for modules that use
F.scaled_dot_product_attention, the CPU path dispatches to an op with no registered
formula (counted 0), so we register the standard 4*B*H*Nq*Nk*d formula for it.
"""

from __future__ import annotations

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula

_aten = torch.ops.aten


def _sdpa_flops(query_shape, key_shape, value_shape) -> int:
    b, h, q_len, d = query_shape
    k_len = key_shape[-2]
    d_v = value_shape[-1]
    return 2 * b * h * q_len * k_len * d + 2 * b * h * q_len * k_len * d_v  # QK^T and (softmax) V


def _register_sdpa() -> None:
    op = getattr(_aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if op is None:
        return

    @register_flop_formula(op, get_raw=True)
    def _(query, key, value, *args, out_val=None, **kwargs) -> int:
        return _sdpa_flops(query.shape, key.shape, value.shape)


try:
    _register_sdpa()
except Exception:  # already registered by torch itself in a newer release
    pass


def count_flops(module: torch.nn.Module, inputs: tuple[torch.Tensor, ...], exported: bool = True) -> int:
    """FLOPs of one call. With exported=True the count runs on torch.export's graph, i.e. the
    program the converters see, not the eager Python."""
    runnable = torch.export.export(module, inputs).module() if exported else module
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        runnable(*inputs)
    return int(counter.get_total_flops())
