"""Pure-Python install by default. The optional CUDA extension (csrc/) is built ahead of time only
when FUSED_RESNET_BUILD_CUDA=1 (use `pip install --no-build-isolation -e .` so torch is importable);
otherwise it is JIT-built on first GPU use when a CUDA toolchain is present."""
from setuptools import setup

setup()
