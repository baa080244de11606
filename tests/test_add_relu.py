"""fused_resnet.ops.add_relu on CPU (eager backend)."""
import pytest
import torch

from fused_resnet.ops import add_relu


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_add_relu(dtype):
    x = torch.randn(2, 8, 5, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)
    y = torch.randn(2, 8, 5, 5, dtype=dtype).contiguous(memory_format=torch.channels_last)
    x[0, 0, 0, 0] = float("nan")
    out = add_relu(x, y)
    torch.testing.assert_close(out, torch.relu(x + y), equal_nan=True, rtol=0, atol=0)
    assert out.is_contiguous(memory_format=torch.channels_last)


def test_add_relu_checks():
    with pytest.raises(ValueError, match="shapes differ"):
        add_relu(torch.randn(2, 3), torch.randn(3, 2))
    with pytest.raises(RuntimeError, match="dtypes differ"):
        add_relu(torch.randn(2, 3), torch.randn(2, 3, dtype=torch.float64))
