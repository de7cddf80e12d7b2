import pytest
import torch

from dicmor.nn import grouped
from dicmor.nn.grouped import grouped_linear


def _reference(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return torch.einsum("g...i,gio->g...o", x, weight) + bias.view(
        bias.shape[0], *([1] * (x.dim() - 2)), -1
    )


@pytest.fixture
def two_threads():
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize(
    ("groups", "rows", "in_features", "out_features", "pieces"),
    [
        (3, 16 * 46, 128, 384, 2),  # MulT self-attention over three modalities, MOSEI batch
        (3, 512, 128, 96, 2),
        (3, 1000, 64, 256, 2),
        (2, 736, 128, 384, 1),  # two groups on two threads: already even
        (1, 736, 128, 384, 1),
        (3, 184, 128, 384, 1),  # too few rows
        (3, 736, 32, 64, 1),  # too small a weight
        (3, 737, 128, 384, 1),  # rows that do not halve
    ],
)
def test_grouped_linear_cut_in_pieces_is_the_same_map(
    two_threads, groups: int, rows: int, in_features: int, out_features: int, pieces: int
) -> None:
    """Whether a product is cut follows the thresholds; cut or not, values and gradients are
    the grouped affine map's (float64: to rounding)."""
    assert (
        grouped._balanced_pieces(torch.empty(0), groups, rows, in_features * out_features) == pieces
    )
    torch.manual_seed(0)
    x = torch.randn(groups, 2, rows // 2, in_features, dtype=torch.float64)
    if rows % 2:
        x = torch.randn(groups, rows, in_features, dtype=torch.float64)
    x.requires_grad_()
    weight = torch.randn(groups, in_features, out_features, dtype=torch.float64)
    bias = torch.randn(groups, out_features, dtype=torch.float64)
    weight.requires_grad_()
    bias.requires_grad_()
    out = grouped_linear(x, weight, bias)
    expected = _reference(x, weight, bias)
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-10)
    grad = torch.randn_like(out)
    got = torch.autograd.grad(out, (x, weight, bias), grad)
    want = torch.autograd.grad(expected, (x, weight, bias), grad)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-9)


def test_no_cut_off_the_cpu() -> None:
    assert grouped._balanced_pieces(torch.empty(0, device="meta"), 3, 736, 128 * 384) == 1
