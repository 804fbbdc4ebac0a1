"""The names of the quantization modes and their settings, shared by the build side (quantize.py, the
backends' export flows) and the device side (manifest validation), and the one rule both apply to every
graph: which mode it is converted in. Plain constants: no PyTorch."""

from enum import StrEnum


class Mode(StrEnum):
    NONE = "none"
    DYNAMIC_INT8 = "dynamic-int8"  # int8 weights, activations quantized per call
    STATIC_INT8 = "static-int8"  # W8A8, activation ranges from calibration
    WEIGHT_INT8 = "weight-int8"  # int8 weights, float compute


class Calibration(StrEnum):
    AUTO = "auto"  # the backend's measured choice (Backend.calibration)
    ROUTED = "routed"  # each expert on the images the fp32 model routes to it
    ALL = "all"  # every expert on every image (the ablation)


class RouterPrecision(StrEnum):
    FP32 = "fp32"
    INT8 = "int8"


# Plain strings, for argparse choices and pydantic Literals (StrEnum members compare equal to them).
MODES = tuple(m.value for m in Mode)
CALIBRATION = tuple(c.value for c in Calibration)
ROUTER_PRECISION = tuple(r.value for r in RouterPrecision)


def graph_mode(mode: str, router: str | None, role: str) -> str:
    """The mode one graph is converted in: the bundle's mode, except a router kept in fp32 (a quantized router
    can flip which experts run; benchmarks/results/quantization.md). quantize.plan applies it at export,
    manifest validation checks every graph against it."""
    if mode == Mode.NONE or (role == "router" and router == RouterPrecision.FP32):
        return Mode.NONE.value
    return str(mode)


def router_apart(mode: str, router: str | None) -> bool:
    """Whether the router must be a graph of its own: where it converts in another mode than the trunk (an int8
    bundle with an fp32 router). The fused schedule otherwise folds it into the trunk graph."""
    return graph_mode(mode, router, "router") != graph_mode(mode, router, "trunk")
