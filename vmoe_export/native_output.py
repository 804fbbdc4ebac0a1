"""Native libraries' chatter, kept off the terminal: ExecuTorch's cpuinfo probe, TensorFlow's absl and oneDNN
notices, TFLite's "Created ... XNNPACK delegate" line are written by C/C++ code straight to file descriptors 1
and 2, past sys.stdout and Python's warning filters. `quiet(what)` points both descriptors at a temp file for
the length of one converter or runtime call: on success the text is dropped; if the call fails, the text goes
into the exception (a note on it), so a real error is never swallowed. VMOE_VERBOSE=1 (or a command's
--verbose) leaves the descriptors alone.

Only calls that print nothing of the project's own are wrapped (one graph's conversion, one graph's load), so
progress bars and progress lines are never captured.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import sys
import tempfile
import threading

_lock = threading.RLock()  # fds 1 and 2 belong to the process: one redirection at a time
_libc = ctypes.CDLL(None)


def verbose() -> bool:
    return bool(os.environ.get("VMOE_VERBOSE"))


def _flush() -> None:
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (AttributeError, ValueError, OSError):
            pass
    _libc.fflush(None)  # C stdio buffers: text printf'd while captured must land in the capture, not after it


@contextlib.contextmanager
def quiet(what: str):
    """Run the body with fds 1 and 2 captured; `what` names the call in the note a failure carries."""
    if verbose():
        yield
        return
    with _lock, tempfile.TemporaryFile() as capture:
        _flush()
        saved = (os.dup(1), os.dup(2))
        try:
            os.dup2(capture.fileno(), 1)
            os.dup2(capture.fileno(), 2)
            try:
                yield
            except BaseException as e:
                _restore(saved)
                capture.seek(0)
                text = capture.read().decode("utf-8", "replace").strip()
                if text:
                    e.add_note(f"{what} printed before it failed (VMOE_VERBOSE=1 shows it live):\n{text[-4000:]}")
                raise
        finally:
            _restore(saved)
            for fd in saved:
                os.close(fd)


def _restore(saved: tuple[int, int]) -> None:
    _flush()
    os.dup2(saved[0], 1)
    os.dup2(saved[1], 2)


_silenced_at_exit = False


def quiet_at_exit() -> None:
    """Point fds 1 and 2 at /dev/null once Python starts shutting down, for a runtime whose native objects say
    goodbye when they are destroyed (LiteRT's environment: "DestroyAccelerator ..."), which is after the last call
    `quiet` can wrap. The project prints nothing then, and an uncaught exception's traceback is already written."""
    global _silenced_at_exit
    if _silenced_at_exit or verbose():
        return
    _silenced_at_exit = True
    import atexit

    def silence() -> None:
        _flush()
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, 1)
        os.dup2(devnull, 2)

    atexit.register(silence)
