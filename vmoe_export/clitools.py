"""What every command shares: the defaults, the one-line error, the converter-noise filter and the
choice of evaluation images. Below cli.py and bench/cli.py, so neither imports the other."""

from __future__ import annotations

import contextlib
import os
import sys
from pathlib import Path

from .config import MODELS_DIR

DEFAULT_CONFIG = "fmnist-tiny"
DEFAULT_CHECKPOINT = MODELS_DIR / DEFAULT_CONFIG / "model.pt"


def interrupt_on_sigterm() -> None:
    """Treat SIGTERM (kill, a CI timeout, a container stop) like Ctrl-C: the command cleans up what it was
    writing, prints one line and exits 2, instead of dying silently mid-write."""
    import signal

    from .interrupt import request, stop_requested

    signal.signal(signal.SIGTERM, lambda signum, frame: request())
    default_hook = sys.unraisablehook

    def hook(unraisable):
        # A stop that landed inside a finalizer is swallowed there by Python; interrupt.check() honours it at
        # the next safe point, so its "Exception ignored in ..." traceback is noise, not a failure.
        if not (stop_requested() and isinstance(unraisable.exc_value, KeyboardInterrupt)):
            default_hook(unraisable)

    sys.unraisablehook = hook


_NOISY_LOGGERS = ("torchao", "torch.onnx", "torch.utils._pytree")


def quiet_converters() -> None:
    """Hide the converters' Python-side chatter (deprecations, optional kernels they could not load) so our
    progress and errors stay readable. VMOE_VERBOSE=1 shows it all. Logs printed by native code (TF's oneDNN
    notice, ExecuTorch's cpuinfo probe) bypass Python: native_output.quiet catches those around each call."""
    from .native_output import verbose

    if verbose():
        return
    import logging
    import warnings

    for category in (FutureWarning, DeprecationWarning):
        warnings.filterwarnings("ignore", category=category)
    for name in _NOISY_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def converters_quiet():
    """quiet_converters for the length of one API call, then the caller's warning filters and log levels back
    (a library must not change a notebook's settings for good)."""
    import logging
    import warnings

    import torch  # noqa: F401 (importing torch resets its loggers' levels: set ours after it)

    loggers = {name: logging.getLogger(name) for name in _NOISY_LOGGERS}
    levels = {name: lg.level for name, lg in loggers.items()}
    with warnings.catch_warnings():
        quiet_converters()
        try:
            yield
        finally:
            for name, lg in loggers.items():
                lg.setLevel(levels[name])


def add_verbose_argument(parser) -> None:
    parser.add_argument("--verbose", action="store_true",
                        help="show what the converters and runtimes print themselves (Python warnings, native log lines "
                        "such as ExecuTorch's cpuinfo probe or TFLite's delegate notice), hidden by default; same as "
                        "VMOE_VERBOSE=1")


def apply_verbose(args) -> None:
    """--verbose is VMOE_VERBOSE=1 for this process (native_output.quiet and quiet_converters read it)."""
    if getattr(args, "verbose", False):
        os.environ["VMOE_VERBOSE"] = "1"


def build_side_missing(prog: str) -> int | None:
    """Exit code 2 with one line when the build side (PyTorch and the converters) is not installed: a
    runtime-only install (`pip install 'vmoe-export[runtime]'`) runs and verifies bundles but cannot make them."""
    import importlib.util

    missing = [m for m in ("torch", "tqdm") if importlib.util.find_spec(m) is None]
    if not missing:
        return None
    return fail(prog, f"{prog} needs the build side ({', '.join(missing)} not installed): pip install 'vmoe-export[export]' "
                "(this install runs and verifies bundles: vmoe-predict, vmoe-export verify)")


def run_command(prog: str, body, interrupted: str = "interrupted") -> int:
    """The start-up and error handling every command shares: converter noise filtered, SIGTERM turned into a
    clean stop, expected failures (user_errors) as one `error:` line and exit 2, Ctrl-C / SIGTERM as one line
    saying what was left behind. `body()` does the work and returns the exit code (None: 0)."""
    quiet_converters()
    interrupt_on_sigterm()
    try:
        return body() or 0
    except user_errors() as e:
        return fail(prog, str(e))
    except KeyboardInterrupt:
        return fail(prog, interrupted)


def fail(prog: str, msg: str) -> int:
    print(f"{prog}: error: {msg}", file=sys.stderr)
    return 2


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input (one `error:` line, exit 2), never a bug."""
    from .errors import VmoeError

    return (VmoeError, ValueError, FileNotFoundError, FileExistsError)


def add_model_arguments(parser) -> None:
    """Which model: a trained checkpoint (default: the shipped one), or any config with its own fresh weights."""
    parser.add_argument("--checkpoint", type=Path, default=None,
                        help=f"MoE checkpoint from vmoe-train (default: the shipped {DEFAULT_CHECKPOINT})")
    parser.add_argument("--config", default=None,
                        help="with --random-init: a model config name in models/ or a JSON path (e.g. vit-12x192-moe, "
                        "the paper's ViT-Tiny MoE at 224 px, E=10)")
    parser.add_argument("--random-init", action="store_true",
                        help="use --config with its own initial weights instead of a checkpoint: latency, memory and "
                        "FLOPs do not depend on trained weights; parity then runs on seeded synthetic images unless "
                        "--data-dir is given, and everything is labelled 'synthetic: latency only, not accuracy'")
    parser.add_argument("--seed", type=int, default=0, help="with --random-init: the weight seed (default 0)")


def resolve_model(args):
    """The Checkpoint the arguments name (see add_model_arguments), or a ValueError naming the fix."""
    from .checkpoint import load_checkpoint, random_checkpoint
    from .config import load_config

    if args.random_init:
        if args.checkpoint is not None:
            raise ValueError("--random-init builds fresh weights from --config, so it takes no --checkpoint: "
                             "drop one of the two")
        if args.config is None:
            raise ValueError("--random-init needs --config NAME|FILE (e.g. --config vit-12x192-moe)")
        return random_checkpoint(load_config(args.config), args.seed)
    if args.config is not None:
        raise ValueError("--config without --random-init: a checkpoint carries its own config; add --random-init "
                         "to use this config with fresh weights, or pass --checkpoint")
    return load_checkpoint(args.checkpoint or DEFAULT_CHECKPOINT)


def add_data_dir_argument(parser, what: str) -> None:
    parser.add_argument("--data-dir", type=Path, default=None,
                        help=f"ImageFolder dataset (DIR/test/<class>/*) whose test images are used for {what} "
                        "(default: the Fashion-MNIST test set for checkpoints trained on it; seeded synthetic images "
                        "with --random-init)")


def add_schedule_argument(parser) -> None:
    parser.add_argument(
        "--schedule", default="auto", choices=["auto", "per-layer", "fused"],
        help="how a bundle runs its MoE layers. auto (default): fused for k=1 (fp32 and int8), per-layer otherwise; "
        "the manifest records which and why. fused (k=1 only): trunk+router, then one graph per expert through every "
        "MoE layer, then the head: 3 graph calls per image instead of 3 + 2L (4 where an int8 bundle keeps its "
        "router fp32), at the price of the MoE attention stored per expert (a larger bundle, a larger expert to "
        "load). per-layer (every k): shared attention graph + one graph per expert and layer: the smallest bundle "
        "and the cheapest expert switch. See benchmarks/results/paper_matrix.md for what each costs")
