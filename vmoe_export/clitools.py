"""What every command shares: the defaults, the one-line error, the converter-noise filter and the
choice of evaluation images. Below cli.py and bench/cli.py, so neither imports the other."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .model import MODELS_DIR

DEFAULT_CONFIG = "fmnist-tiny"
DEFAULT_CHECKPOINT = MODELS_DIR / DEFAULT_CONFIG / "model.pt"


def interrupt_on_sigterm() -> None:
    """Treat SIGTERM (kill, a CI timeout, a container stop) like Ctrl-C: the command cleans up what it was
    writing, prints one line and exits 2, instead of dying silently mid-write."""
    import signal

    def handler(signum, frame):
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, handler)


def quiet_converters() -> None:
    """Hide the converters' Python-side chatter (deprecations, optional kernels they could not load) so our
    progress and errors stay readable. VMOE_VERBOSE=1 shows it all. Logs printed by native code (TF's oneDNN
    notice, ExecuTorch's cpuinfo probe) bypass Python and still appear."""
    if os.environ.get("VMOE_VERBOSE"):
        return
    import logging
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in ("torchao", "torch.onnx", "torch.utils._pytree"):
        logging.getLogger(name).setLevel(logging.ERROR)


def fail(prog: str, msg: str) -> int:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (one `error:` line, exit 2), never a bug."""
    from .errors import VmoeError

    return (VmoeError, ValueError, FileNotFoundError, FileExistsError)


def add_data_dir_argument(parser, what: str) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"ImageFolder dataset (DIR/test/<class>/*) whose test images are used for {what} "
                        "(default: the Fashion-MNIST test set, for checkpoints trained on it)")
