import pytest
import torch

from dicmor.nn import ChannelAttention, RefinementNetwork, ResidualChannelAttentionBlock


@pytest.mark.parametrize(("channels", "length"), [(32, 46), (5, 1), (8, 7)])
def test_refinement_preserves_shape(channels: int, length: int) -> None:
    torch.manual_seed(0)
    net = RefinementNetwork(channels, num_blocks=3)
    x = torch.randn(2, channels, length)
    out = net(x)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert not torch.allclose(out, x)


def test_refinement_default_depth() -> None:
    assert len(RefinementNetwork(4).group.blocks) == 20


def test_refinement_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    net = RefinementNetwork(16, num_blocks=2)
    net(torch.randn(2, 16, 9)).square().sum().backward()
    missing = [name for name, p in net.named_parameters() if p.grad is None]
    assert not missing


def test_refinement_rejects_wrong_width() -> None:
    with pytest.raises(ValueError, match=r"\(B, 8, T\)"):
        RefinementNetwork(8, num_blocks=1)(torch.randn(2, 16, 5))


def test_even_kernel_is_an_error() -> None:
    with pytest.raises(ValueError, match="kernel_size"):
        RefinementNetwork(8, num_blocks=1, kernel_size=4)


def test_channel_attention_rescales_by_formula() -> None:
    torch.manual_seed(0)
    attention = ChannelAttention(32, reduction=16)
    assert attention.down.out_features == 2
    x = torch.randn(3, 32, 10) + 1.0
    out = attention(x)
    hidden = torch.relu(x.mean(-1) @ attention.down.weight.T + attention.down.bias)
    scale = torch.sigmoid(hidden @ attention.up.weight.T + attention.up.bias)  # (B, C)
    torch.testing.assert_close(out, x * scale.unsqueeze(-1))
    # A real rescaling: not identity, different per channel, constant over time.
    ratio = out / x
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert ratio[0, :, 0].std() > 1e-3
    torch.testing.assert_close(ratio, ratio[..., :1].expand_as(ratio))


def test_channel_attention_depends_on_input() -> None:
    torch.manual_seed(0)
    attention = ChannelAttention(16, reduction=4)
    a, b = torch.randn(1, 16, 8), 3.0 * torch.randn(1, 16, 8)
    assert not torch.allclose(attention.gate(a), attention.gate(b))


def test_channel_attention_hidden_width_at_least_one() -> None:
    assert ChannelAttention(4, reduction=16).down.out_features == 1


def test_block_is_residual() -> None:
    torch.manual_seed(0)
    block = ResidualChannelAttentionBlock(8, reduction=4)
    x = torch.randn(2, 8, 6)
    assert not torch.allclose(block(x), x)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    torch.testing.assert_close(block(x), x)
