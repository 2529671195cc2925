"""gpuhook: decide which NVIDIA GPUs / MIG devices a container may use, and enforce it."""

__version__ = "0.1.0"
