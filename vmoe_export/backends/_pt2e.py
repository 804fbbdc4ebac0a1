"""PT2E int8 quantization of one graph, shared by the backends that convert from a quantized torch
graph (ExecuTorch lowers it to XNNPACK; coremltools' PyTorch frontend maps its quantize/dequantize
ops to MIL). Not a backend itself: not in the registry."""

from __future__ import annotations

import torch

from ..quantize import GraphQuant


def quantize(graph_module: torch.nn.Module, quant: GraphQuant, example: tuple[torch.Tensor, ...]) -> torch.nn.Module:
    """prepare_pt2e -> calibrate on quant.samples (static) -> convert_pt2e, with XNNPACKQuantizer's
    per-channel symmetric int8 weights; activations per-tensor int8, dynamic or calibrated."""
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    config = get_symmetric_quantization_config(is_per_channel=True, is_dynamic=quant.mode == "dynamic-int8")
    prepared = prepare_pt2e(graph_module, XNNPACKQuantizer().set_global(config))
    with torch.no_grad():
        # Static: observers record activation ranges on the calibration inputs. Dynamic has none, but the
        # weight observers still need one forward pass, or convert_pt2e leaves per-channel weights with 1 scale.
        for sample in quant.samples or (example,):
            prepared(*sample)
    return convert_pt2e(prepared)
