import math

import pytest
import torch
from torch import nn

from dicmor.nn import TransformerEncoder, TransformerLayer, causal_mask, sinusoidal_positions


def test_sinusoidal_positions_match_formula() -> None:
    dim = 8
    table = sinusoidal_positions(10, dim)
    assert table.shape == (10, dim)
    for pos in (0, 1, 7):
        for i in range(dim // 2):
            angle = pos / 10000 ** (2 * i / dim)
            assert table[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-6)
            assert table[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-6)


def test_sinusoidal_positions_odd_dim() -> None:
    table = sinusoidal_positions(4, 5)
    assert table.shape == (4, 5)
    assert table[3, 4].item() == pytest.approx(math.sin(3 / 10000 ** (4 / 5)), abs=1e-6)


def test_causal_mask_alignment() -> None:
    assert torch.equal(causal_mask(3, 3), torch.ones(3, 3, dtype=torch.bool).tril())
    longer_source = causal_mask(2, 4)
    assert longer_source[-1].all() and longer_source[0].tolist() == [True, True, True, False]
    shorter_source = causal_mask(4, 2)
    assert shorter_source.any(dim=1).all() and shorter_source[0].tolist() == [True, False]


def _reference_layer(layer: TransformerLayer, x: torch.Tensor, src: torch.Tensor, mask=None):
    attention = nn.MultiheadAttention(layer.dim, layer.num_heads, batch_first=True)
    with torch.no_grad():
        attention.in_proj_weight.copy_(layer.in_proj.weight)
        attention.in_proj_bias.copy_(layer.in_proj.bias)
        attention.out_proj.weight.copy_(layer.out_proj.weight)
        attention.out_proj.bias.copy_(layer.out_proj.bias)
    q, kv = layer.attn_norm(x), layer.attn_norm(src)
    blocked = None if mask is None else ~mask
    y = x + attention(q, kv, kv, attn_mask=blocked, need_weights=False)[0]
    return y + layer.fc2(torch.relu(layer.fc1(layer.ff_norm(y))))


@pytest.mark.parametrize("attn_mask", [False, True])
@pytest.mark.parametrize("source_len", [None, 5, 11])
def test_layer_matches_reference_attention(attn_mask: bool, source_len: int | None) -> None:
    torch.manual_seed(0)
    layer = TransformerLayer(16, 4, attn_mask=attn_mask).eval()
    x = torch.randn(2, 7, 16)
    src = x if source_len is None else torch.randn(2, source_len, 16)
    mask = causal_mask(7, src.shape[1]) if attn_mask else None
    out = layer(x, None if source_len is None else src)
    assert out.shape == (2, 7, 16)
    torch.testing.assert_close(out, _reference_layer(layer, x, src, mask), atol=1e-5, rtol=1e-5)


def test_encoder_scales_adds_positions_and_normalises() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 2, num_layers=1, relu_dropout=0.0, res_dropout=0.0).eval()
    x, src = torch.randn(3, 6, 16), torch.randn(3, 4, 16)
    embed_x = 4.0 * x + sinusoidal_positions(6, 16)
    embed_src = 4.0 * src + sinusoidal_positions(4, 16)
    expected = encoder.norm(encoder.layers[0](embed_x, embed_src))
    torch.testing.assert_close(encoder(x, src), expected)


@pytest.mark.parametrize("cross", [False, True])
def test_causal_mask_hides_future_steps(cross: bool) -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 4, num_layers=2, attn_mask=True).eval()
    x = torch.randn(2, 10, 16)
    src = torch.randn(2, 10, 16) if cross else None
    t = 6
    perturbed_x = x.clone()
    perturbed_x[:, t:] += 5.0 * torch.randn(2, 10 - t, 16)
    if cross:
        perturbed_src = src.clone()
        perturbed_src[:, t:] += 5.0 * torch.randn(2, 10 - t, 16)
    else:
        perturbed_src = None
    before, after = encoder(x, src), encoder(perturbed_x, perturbed_src)
    torch.testing.assert_close(before[:, :t], after[:, :t])
    assert not torch.allclose(before[:, t:], after[:, t:])


def test_without_mask_earlier_steps_see_later_ones() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 4, num_layers=1).eval()
    x = torch.randn(1, 8, 16)
    perturbed = x.clone()
    perturbed[:, -1] += 5.0 * torch.randn(16)
    assert not torch.allclose(encoder(x)[:, 0], encoder(perturbed)[:, 0])


def test_causal_cross_attention_with_shorter_source_is_finite() -> None:
    encoder = TransformerEncoder(8, 2, num_layers=1, attn_mask=True).eval()
    out = encoder(torch.randn(2, 9, 8), torch.randn(2, 3, 8))
    assert out.shape == (2, 9, 8) and torch.isfinite(out).all()


def test_dropout_active_only_in_training() -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 4, 2, attn_dropout=0.3, embed_dropout=0.3)
    x = torch.randn(2, 5, 16)
    assert not torch.allclose(encoder(x), encoder(x))
    encoder.eval()
    torch.testing.assert_close(encoder(x), encoder(x))


def test_position_cache_grows_with_length() -> None:
    encoder = TransformerEncoder(8, 2, 1).eval()
    short, long = torch.randn(1, 3, 8), torch.randn(1, 12, 8)
    encoder(short)
    out = encoder(long)
    fresh = TransformerEncoder(8, 2, 1).eval()
    fresh.load_state_dict(encoder.state_dict())
    torch.testing.assert_close(out, fresh(long))
    assert not any("position" in key for key in encoder.state_dict())


def test_invalid_arguments() -> None:
    with pytest.raises(ValueError, match="multiple of num_heads"):
        TransformerLayer(10, 4)
    with pytest.raises(ValueError, match="attn_dropout"):
        TransformerLayer(8, 2, attn_dropout=1.0)
    with pytest.raises(ValueError, match="num_layers"):
        TransformerEncoder(8, 2, 0)
    with pytest.raises(ValueError, match=r"\(B, T, 8\)"):
        TransformerEncoder(8, 2, 1)(torch.randn(2, 3, 4))
