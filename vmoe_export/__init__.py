"""vmoe-export: train, split and export Mobile V-MoE models to on-device runtimes.

The Python API (see api.py and the README's "Python API" section):

    import vmoe_export as v
    [bundle] = v.export("models/fmnist-tiny/model.pt", ["onnx"], "bundles")
    rt = v.load(bundle.path, expect_digest=bundle.digest)

export / benchmark / train need the build side (`pip install 'vmoe-export[export]'`); load / verify run on
the runtime-only install. Names are imported on first use, so `import vmoe_export` loads no PyTorch.
"""

from ._version import __version__

_API = ("export", "load", "verify", "benchmark", "train", "BundleResult", "VerifyResult", "BenchmarkResult",
        "TrainResult")
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'vmoe_export' has no attribute {name!r}")
