"""Fused ops (torch.library custom ops under the ``fused_resnet`` namespace)."""
from .add_relu import add_relu
from .fused_conv2d import fused_conv2d

__all__ = ["fused_conv2d", "add_relu"]
