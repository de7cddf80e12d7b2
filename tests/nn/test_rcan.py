import pytest
import torch
import torch.nn.functional as F

from dicmor.nn import ChannelAttention, RefinementNetwork, ResidualChannelAttentionBlock
from dicmor.nn.rcan import TimeConv


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
    x = torch.randn(1, 3, 10, 32) + 1.0  # (G, B, T, C)
    out = attention(x)
    hidden = torch.relu(x.mean(2) @ attention.down.weight + attention.down.bias[:, None])
    scale = torch.sigmoid(hidden @ attention.up.weight + attention.up.bias[:, None])  # (G, B, C)
    torch.testing.assert_close(out, x * scale.unsqueeze(2))
    # A real rescaling: not identity, different per channel, constant over time.
    ratio = out / x
    assert not torch.allclose(ratio, torch.ones_like(ratio))
    assert ratio[0, 0, 0].std() > 1e-3
    torch.testing.assert_close(ratio, ratio[:, :, :1].expand_as(ratio))


def test_channel_attention_depends_on_input() -> None:
    torch.manual_seed(0)
    attention = ChannelAttention(16, reduction=4)
    a, b = torch.randn(1, 1, 8, 16), 3.0 * torch.randn(1, 1, 8, 16)
    assert not torch.allclose(attention.gate(a), attention.gate(b))


def test_channel_attention_hidden_width_at_least_one() -> None:
    assert ChannelAttention(4, reduction=16).down.out_features == 1


def test_block_is_residual() -> None:
    torch.manual_seed(0)
    block = ResidualChannelAttentionBlock(8, reduction=4)
    x = torch.randn(1, 2, 6, 8)
    assert not torch.allclose(block(x), x)
    with torch.no_grad():
        block.conv2.weight.zero_()
        block.conv2.bias.zero_()
    torch.testing.assert_close(block(x), x)


@pytest.mark.parametrize("kernel_size", [1, 3, 5])
def test_time_conv_is_a_same_padded_convolution(kernel_size: int) -> None:
    torch.manual_seed(0)
    conv = TimeConv(6, 4, kernel_size, groups=2)
    bound = (6 * kernel_size) ** -0.5
    assert conv.weight.abs().max() <= bound and conv.weight.std() > 0.3 * bound
    x = torch.randn(2, 3, 7, 6)  # (G, B, T, C)
    out = conv(x)
    for g in range(2):
        # Row block i of the weight is the kernel tap i of torch's (out, in, k) layout.
        weight = conv.weight[g].T.reshape(4, kernel_size, 6).permute(0, 2, 1)  # (out, in, k)
        expected = F.conv1d(x[g].transpose(1, 2), weight, conv.bias[g], padding=kernel_size // 2)
        torch.testing.assert_close(out[g], expected.transpose(1, 2))
    torch.testing.assert_close(conv(x[1:], group=1), out[1:])


def test_time_conv_rejects_even_kernels() -> None:
    with pytest.raises(ValueError, match=r"TimeConv\.kernel_size: must be odd"):
        TimeConv(4, 4, 2)


def test_groups_are_independent_networks_selected_by_group() -> None:
    torch.manual_seed(0)
    grouped = RefinementNetwork(8, num_blocks=2, reduction=4, groups=3)
    x = torch.randn(3, 2, 8, 5)  # (G, B, d, T)
    out = grouped(x)
    assert out.shape == x.shape
    torch.testing.assert_close(grouped(x[[0, 2]], group=[0, 2]), out[[0, 2]])
    torch.testing.assert_close(grouped(x[1], group=1), out[1])
    # Changing one group's input changes that group's output only.
    other = x.clone()
    other[1] += 1.0
    changed = grouped(other)
    torch.testing.assert_close(changed[[0, 2]], out[[0, 2]])
    assert not torch.allclose(changed[1], out[1])
    with pytest.raises(ValueError, match=r"\(2, B, 8, T\)"):
        grouped(x, group=[0, 1])


def test_groups_start_as_separately_built_networks() -> None:
    # The same draws, in the same order, as G networks of one group built one after another.
    torch.manual_seed(0)
    separate = [RefinementNetwork(8, num_blocks=2, reduction=4) for _ in range(3)]
    after_separate = torch.rand(4)
    torch.manual_seed(0)
    grouped = RefinementNetwork(8, num_blocks=2, reduction=4, groups=3)
    torch.testing.assert_close(torch.rand(4), after_separate)
    for g, network in enumerate(separate):
        for (name, mine), (_, theirs) in zip(
            grouped.named_parameters(), network.named_parameters(), strict=True
        ):
            torch.testing.assert_close(mine[g], theirs[0], msg=name)
