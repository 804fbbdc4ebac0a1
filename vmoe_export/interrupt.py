"""A stop request (SIGTERM), remembered as well as raised.

The signal handler raises KeyboardInterrupt at once, but Python swallows an exception raised while a
finalizer runs (it prints "Exception ignored in ..." and carries on). So the request is also recorded here,
and long jobs call `check()` at safe points (after each graph, before publishing) to honour it.
"""

requested = False


def request() -> None:
    global requested
    requested = True
    raise KeyboardInterrupt


def check() -> None:
    if requested:
        raise KeyboardInterrupt


def stop_requested() -> bool:
    return requested
