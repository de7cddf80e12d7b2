import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dicmor.nn import (
    TransformerEncoder,
    TransformerLayer,
    causal_mask,
    sinusoidal_positions,
    transformer,
)
from dicmor.nn.grouped import (
    GroupedLayerNorm,
    GroupedLinear,
    grouped_linear,
    select_groups,
)


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
    """The same layer from torch.nn parts, with the weights of group 0."""
    attention = nn.MultiheadAttention(layer.dim, layer.num_heads, batch_first=True)
    with torch.no_grad():
        attention.in_proj_weight.copy_(layer.in_proj.weight[0].T)
        attention.in_proj_bias.copy_(layer.in_proj.bias[0])
        attention.out_proj.weight.copy_(layer.out_proj.weight[0].T)
        attention.out_proj.bias.copy_(layer.out_proj.bias[0])
    q, kv = layer.attn_norm(x), layer.attn_norm(src)
    blocked = None if mask is None else ~mask
    y = x + attention(q, kv, kv, attn_mask=blocked, need_weights=False)[0]
    hidden = F.linear(layer.ff_norm(y), layer.fc1.weight[0].T, layer.fc1.bias[0]).relu()
    return y + F.linear(hidden, layer.fc2.weight[0].T, layer.fc2.bias[0])


@pytest.mark.parametrize("fused", [False, True])
@pytest.mark.parametrize("attn_mask", [False, True])
@pytest.mark.parametrize("source_len", [None, 5, 11])
def test_layer_matches_reference_attention(
    attn_mask: bool, source_len: int | None, fused: bool, monkeypatch
) -> None:
    # Small attention on CPU is written out; the fused kernel runs above the threshold.
    if fused:
        monkeypatch.setattr(transformer, "WRITTEN_OUT_CPU_SCORES", 0)
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
    assert expected.shape == (3, 6, 16)
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
    grouped = TransformerEncoder(8, 2, 1, groups=3)
    with pytest.raises(ValueError, match=r"expected input \(3, B, T, 8\), got \(2, 4, 5, 8\)"):
        grouped(torch.randn(2, 4, 5, 8))
    with pytest.raises(ValueError, match=r"expected input \(B, T, 8\)"):
        grouped(torch.randn(3, 4, 5, 8), group=0)
    with pytest.raises(ValueError, match=r"group must be in \[0, 3\), got 3"):
        grouped(torch.randn(4, 5, 8), group=3)
    with pytest.raises(ValueError, match="one value per group"):
        TransformerEncoder(8, 2, 1, attn_dropout=[0.1, 0.2], groups=3)
    with pytest.raises(ValueError, match=r"TransformerLayer\.attn_dropout"):
        TransformerEncoder(8, 2, 1, attn_dropout=[0.1, 1.0], groups=2)


def _copy_group(grouped: nn.Module, single: nn.Module, g: int) -> None:
    """Load group g of a grouped module's parameters into a single-group module."""
    state = grouped.state_dict()
    single.load_state_dict({key: value[g : g + 1] for key, value in state.items()})


@pytest.mark.parametrize("attn_mask", [False, True])
@pytest.mark.parametrize("cross", [False, True])
def test_grouped_encoder_equals_separate_encoders(attn_mask: bool, cross: bool) -> None:
    torch.manual_seed(0)
    grouped = TransformerEncoder(16, 4, 2, attn_mask=attn_mask, groups=3).eval()
    with torch.no_grad():
        for p in grouped.parameters():
            p.add_(0.1 * torch.randn_like(p))  # every group's norms differ from the identity
    x = torch.randn(3, 2, 7, 16)
    src = torch.randn(3, 2, 7, 16) if cross else None
    out = grouped(x, src)
    for g in range(3):
        single = TransformerEncoder(16, 4, 2, attn_mask=attn_mask).eval()
        _copy_group(grouped, single, g)
        expected = single(x[g], None if src is None else src[g])
        torch.testing.assert_close(out[g], expected, rtol=1e-5, atol=1e-5)
        alone = grouped(x[g], None if src is None else src[g], group=g)
        torch.testing.assert_close(alone, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("attn_mask", [False, True])
@pytest.mark.parametrize("source_len", [None, 4, 9])
def test_attention_dropout_is_per_group(attn_mask: bool, source_len: int | None) -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(
        16,
        4,
        2,
        attn_dropout=[0.0, 0.5],
        relu_dropout=0.0,
        res_dropout=0.0,
        attn_mask=attn_mask,
        groups=2,
    )
    x = torch.randn(2, 3, 6, 16)
    source = None if source_len is None else torch.randn(2, 3, source_len, 16)
    first, second = encoder(x, source), encoder(x, source)
    encoder.eval()
    # The training path writes attention out (scaled product, mask, softmax, dropout); the
    # evaluation path is PyTorch's fused attention.
    reference = encoder(x, source)
    # Group 0 has no dropout at all; group 1 drops attention weights in training only.
    torch.testing.assert_close(first[0], reference[0])
    torch.testing.assert_close(second[0], reference[0])
    assert not torch.allclose(first[1], second[1])
    assert not torch.allclose(first[1], reference[1])


def test_grouped_linear_applies_each_groups_map() -> None:
    torch.manual_seed(0)
    layer = GroupedLinear(3, 5, 4)
    bound = 5**-0.5
    assert layer.weight.abs().max() <= bound and layer.bias.abs().max() <= bound
    assert layer.weight.std() > 0.3 * bound
    x = torch.randn(3, 2, 7, 5)
    y = layer(x)
    for g in range(3):
        expected = x[g] @ layer.weight[g] + layer.bias[g]
        torch.testing.assert_close(y[g], expected)
        torch.testing.assert_close(layer(x[g : g + 1], group=g)[0], expected)


def test_grouped_layer_norm_matches_layer_norm_per_group() -> None:
    torch.manual_seed(0)
    norm = GroupedLayerNorm(2, 6)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 3.0 * torch.randn(2, 4, 5, 6) + 1.0
    y = norm(x)
    for g in range(2):
        reference = nn.LayerNorm(6)
        with torch.no_grad():
            reference.weight.copy_(norm.weight[g])
            reference.bias.copy_(norm.bias[g])
        torch.testing.assert_close(y[g], reference(x[g]))
        torch.testing.assert_close(norm(x[g : g + 1], group=g)[0], reference(x[g]))


@pytest.mark.parametrize("attn_mask", [False, True])
@pytest.mark.parametrize("source_len", [None, 4, 9])
def test_last_step_only_equals_the_last_step_of_the_full_output(
    attn_mask: bool, source_len: int | None
) -> None:
    torch.manual_seed(0)
    encoder = TransformerEncoder(16, 4, 3, attn_mask=attn_mask, groups=2).eval()
    x = torch.randn(2, 3, 7, 16)
    src = None if source_len is None else torch.randn(2, 3, source_len, 16)
    full = encoder(x, src)
    last = encoder(x, src, last_step_only=True)
    assert last.shape == (2, 3, 1, 16)
    torch.testing.assert_close(last, full[:, :, -1:], rtol=1e-5, atol=1e-5)


def test_layer_norm_folds_into_the_following_linear_map() -> None:
    torch.manual_seed(0)
    norm, linear = GroupedLayerNorm(3, 6), GroupedLinear(3, 6, 5)
    with torch.no_grad():
        norm.weight.normal_()
        norm.bias.normal_()
    x = 2.0 * torch.randn(3, 4, 7, 6) + 1.0
    weight, bias = norm.fold(linear.weight, linear.bias)
    expected = linear(norm(x))
    torch.testing.assert_close(grouped_linear(norm.standardize(x), weight, bias), expected)
    weight, bias = norm.fold(linear.weight[1:2], linear.bias[1:2], group=1)
    torch.testing.assert_close(
        grouped_linear(norm.standardize(x[1:2]), weight, bias), expected[1:2]
    )


def test_select_groups() -> None:
    parameter = torch.arange(12.0).view(4, 3)
    assert select_groups(parameter, None) is parameter
    torch.testing.assert_close(select_groups(parameter, 2), parameter[2:3])
    consecutive = select_groups(parameter, [1, 2])
    torch.testing.assert_close(consecutive, parameter[1:3])
    assert consecutive.data_ptr() == parameter[1].data_ptr()  # a view, no copy
    torch.testing.assert_close(select_groups(parameter, [3, 0]), parameter[[3, 0]])
    with pytest.raises(ValueError, match="names no group"):
        select_groups(parameter, [])


@pytest.mark.parametrize("heads", [4, 1])
@pytest.mark.parametrize("attn_mask", [False, True])
@pytest.mark.parametrize("source_len", [None, 5, 11])
def test_training_gradients_match_plain_autograd(
    attn_mask: bool, source_len: int | None, heads: int
) -> None:
    # In training the written-out attention runs through its own backward (the products taken
    # with the thin operand on the left below a head width of 16); without dropout it gives
    # autograd's gradients.
    torch.manual_seed(0)
    layer = TransformerLayer(16, heads, attn_mask=attn_mask).double().train()
    x = torch.randn(2, 7, 16, dtype=torch.float64, requires_grad=True)
    src = None if source_len is None else torch.randn(2, source_len, 16, dtype=torch.float64)
    inputs = (x,) if src is None else (x, src.requires_grad_(True))
    mask = None if not attn_mask else causal_mask(7, 7 if src is None else source_len)
    upstream = torch.randn(2, 7, 16, dtype=torch.float64)
    results = []
    for fn in (layer, lambda a, b: _plain_layer(layer, a, b, mask)):
        out = fn(x, src)
        results.append((out, *torch.autograd.grad(out, (*inputs, *layer.parameters()), upstream)))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


def _plain_layer(layer: TransformerLayer, x, src, mask):
    """`TransformerLayer.forward` of group 0 written with autograd's own operations only."""
    weight, bias = layer.attn_norm.fold(layer.in_proj.weight, layer.in_proj.bias, None)
    normed = layer.attn_norm.standardize(x[None])
    source = normed if src is None else layer.attn_norm.standardize(src[None])
    d, h = layer.dim, layer.num_heads
    q = normed @ weight[0][:, :d] + bias[0][:d]
    k = source @ weight[0][:, d : 2 * d] + bias[0][d : 2 * d]
    v = source @ weight[0][:, 2 * d :] + bias[0][2 * d :]

    def heads(t):
        return t[0].reshape(t.shape[1], t.shape[2], h, d // h).transpose(1, 2)

    scores = heads(q) @ heads(k).transpose(-2, -1) / math.sqrt(d // h)
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    attended = (scores.softmax(-1) @ heads(v)).transpose(1, 2).reshape(x.shape)
    y = x + attended @ layer.out_proj.weight[0] + layer.out_proj.bias[0]
    w1, b1 = layer.ff_norm.fold(layer.fc1.weight, layer.fc1.bias, None)
    hidden = (layer.ff_norm.standardize(y[None])[0] @ w1[0] + b1[0]).relu()
    return y + hidden @ layer.fc2.weight[0] + layer.fc2.bias[0]
