"""vmoe-export: train, split and export Mobile V-MoE models to on-device runtimes."""

__version__ = "0.1.0"
