"""Triton kernels (imported lazily: nothing here runs at ``import fused_resnet``)."""
