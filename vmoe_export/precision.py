"""The names of the quantization modes and their settings, shared by the build side (quantize.py, the
backends' export flows) and the device side (manifest validation). Plain constants: no PyTorch."""

MODES = ("none", "dynamic-int8", "static-int8", "weight-int8")
CALIBRATION = ("auto", "routed", "all")  # auto: the backend's measured choice (Backend.calibration)
ROUTER_PRECISION = ("fp32", "int8")
