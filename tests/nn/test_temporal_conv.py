import pytest
import torch

from dicmor.nn import TemporalConv, count_parameters
from dicmor.nn.temporal import temporal_conv


def test_output_shape_and_length() -> None:
    conv = TemporalConv(in_dim=7, out_dim=4, kernel_size=5)
    out = conv(torch.randn(3, 20, 7))
    assert out.shape == (3, 4, 16)
    assert conv.output_length(20) == 16
    assert conv.output_length(5) == 1


def test_matches_sliding_window_sum() -> None:
    torch.manual_seed(0)
    conv = TemporalConv(in_dim=3, out_dim=2, kernel_size=3)
    x = torch.randn(1, 6, 3)
    out = conv(x)
    weight = conv.conv.weight  # (d, D, k)
    t = 2
    expected = torch.einsum("odk,kd->o", weight, x[0, t : t + 3])
    torch.testing.assert_close(out[0, :, t], expected)


def test_zero_input_gives_zero_output() -> None:
    # No bias: a zero-filled missing modality stays exactly zero.
    conv = TemporalConv(in_dim=5, out_dim=3, kernel_size=2)
    assert torch.count_nonzero(conv(torch.zeros(2, 4, 5))) == 0


def test_sequence_shorter_than_kernel_is_an_error() -> None:
    conv = TemporalConv(in_dim=4, out_dim=4, kernel_size=5)
    with pytest.raises(ValueError, match="shorter than kernel_size 5"):
        conv(torch.randn(2, 4, 4))
    with pytest.raises(ValueError, match="shorter than kernel_size"):
        conv.output_length(3)


def test_wrong_feature_size_is_an_error() -> None:
    conv = TemporalConv(in_dim=4, out_dim=4, kernel_size=1)
    with pytest.raises(ValueError, match=r"\(B, T, 4\)"):
        conv(torch.randn(2, 6, 5))


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [({"kernel_size": 0}, "kernel_size"), ({"kernel_size": 3, "dropout": 1.0}, "dropout")],
)
def test_invalid_arguments(kwargs: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        TemporalConv(4, 4, **kwargs)


def test_input_dropout_only_in_training() -> None:
    torch.manual_seed(0)
    conv = TemporalConv(in_dim=8, out_dim=4, kernel_size=3, dropout=0.5)
    x = torch.randn(2, 10, 8)
    conv.train()
    assert not torch.allclose(conv(x), conv(x))
    conv.eval()
    torch.testing.assert_close(conv(x), conv(x))
    torch.testing.assert_close(conv(x), conv.conv(x.transpose(1, 2)))


def test_count_parameters() -> None:
    conv = TemporalConv(in_dim=6, out_dim=4, kernel_size=3)
    assert count_parameters(conv) == 6 * 4 * 3
    model = torch.nn.Sequential(torch.nn.Linear(3, 2), torch.nn.Linear(2, 1))
    model[0].requires_grad_(False)
    assert count_parameters(model) == 8 + 3
    assert count_parameters(model, trainable_only=True) == 3


@pytest.mark.parametrize(
    ("batch", "steps", "in_dim", "out_dim", "kernel_size"),
    [(3, 20, 7, 4, 5), (2, 6, 3, 2, 3), (1, 12, 40, 8, 5), (4, 9, 5, 6, 1), (2, 5, 4, 3, 5)],
)
def test_temporal_conv_is_the_library_convolution(
    batch: int, steps: int, in_dim: int, out_dim: int, kernel_size: int
) -> None:
    """Values and both gradients equal `F.conv1d`'s (float64: to rounding); also for an input
    that is a transposed view."""
    torch.manual_seed(0)
    weight = torch.randn(out_dim, in_dim, kernel_size, dtype=torch.float64, requires_grad=True)
    base = torch.randn(batch, in_dim, steps, dtype=torch.float64)
    for x in (base.transpose(1, 2).contiguous(), base.transpose(1, 2)):
        x = x.detach().requires_grad_()
        expected = torch.nn.functional.conv1d(x.transpose(1, 2), weight)
        out = temporal_conv(x, weight)
        assert out.shape == expected.shape == (batch, out_dim, steps - kernel_size + 1)
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        grad = torch.randn_like(expected)
        got = torch.autograd.grad(out, (x, weight), grad)
        want = torch.autograd.grad(expected, (x, weight), grad)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            torch.testing.assert_close(temporal_conv(x, weight), expected, rtol=1e-12, atol=1e-12)


def test_temporal_conv_gradcheck_and_weight_only_gradient() -> None:
    torch.manual_seed(0)
    x = torch.randn(2, 7, 3, dtype=torch.float64, requires_grad=True)
    weight = torch.randn(4, 3, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(temporal_conv, (x, weight))
    # An input without gradient (raw features) gets none, and the weight's is unchanged.
    frozen = x.detach()
    out = temporal_conv(frozen, weight)
    (grad,) = torch.autograd.grad(out.square().sum(), weight)
    (expected,) = torch.autograd.grad(
        torch.nn.functional.conv1d(frozen.transpose(1, 2), weight).square().sum(), weight
    )
    torch.testing.assert_close(grad, expected, rtol=1e-12, atol=1e-12)
