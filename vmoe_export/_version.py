"""The package version, in a module of its own so that modules can read it without importing the package
facade (__init__ lazily imports the API, which imports them)."""

__version__ = "0.1.0"
