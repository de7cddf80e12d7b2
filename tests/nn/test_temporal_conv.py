import pytest
import torch

from dicmor.nn import TemporalConv, count_parameters


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
