"""pykpatch: build and manage live patches for running Linux kernels."""

__version__ = "0.1.0"
