"""The project's own error type. Every refusal of bad input (a malformed or tampered bundle, a bad
checkpoint, config or image, a missing package) is a VmoeError subclass, so callers and the CLI
tell "the input is wrong, here is the fix" apart from a bug with one `except`."""


class VmoeError(Exception):
    """Bad input, with a message that names the problem and the fix."""


class ConfigError(VmoeError, ValueError):
    """A model config that is malformed, inconsistent or too large to build."""


class BundleError(VmoeError):
    """A bundle that is malformed, tampered with, unfinished, or unsafe to load."""


class DataError(VmoeError):
    """Missing or malformed data (a dataset, an image file), with a message that says how to fix it."""
