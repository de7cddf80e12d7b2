"""Training in bfloat16: autocast reaches the hand-written products, flows stay float32."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import op_dtypes, product_dtypes

from dicmor.nn.dropout import dropout_matmul
from dicmor.nn.precision import autocast, autocast_operands, full_precision, widened
from dicmor.nn.temporal import temporal_conv
from dicmor.nn.transformer import TransformerLayer

CPU = torch.device("cpu")
SOFTMAX = ("_softmax", "_softmax_backward_data")


def relative(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().float(), b.detach().float()
    return float((a - b).norm() / b.norm())


def test_float32_is_no_autocast_and_an_unknown_precision_is_refused() -> None:
    with autocast("float32", CPU):
        assert not torch.is_autocast_enabled("cpu")
    with autocast("bfloat16", CPU):
        assert torch.is_autocast_enabled("cpu")
        assert torch.get_autocast_dtype("cpu") == torch.bfloat16
    with pytest.raises(ValueError, match="precision must be one of"):
        autocast("half", CPU)


def test_full_precision_turns_autocast_off_for_its_block_only() -> None:
    a, b = torch.randn(8, 8), torch.randn(8, 8)
    with autocast("bfloat16", CPU):
        assert (a @ b).dtype == torch.bfloat16
        with full_precision(a):
            assert (a @ b).dtype == torch.float32
        assert (a @ b).dtype == torch.bfloat16
    with full_precision(a):  # autocast off already: nothing changes
        assert (a @ b).dtype == torch.float32


def test_widened_and_autocast_operands_cast_only_what_they_should() -> None:
    half, double = torch.ones(2, dtype=torch.bfloat16), torch.ones(2, dtype=torch.float64)
    index = torch.arange(2)
    assert widened(half).dtype == torch.float32
    assert widened(double).dtype == torch.float64
    x = torch.ones(2)
    assert autocast_operands(x, None)[0] is x  # autocast off: unchanged
    with autocast("bfloat16", CPU):
        cast, none, kept = autocast_operands(x, None, index)
    assert cast.dtype == torch.bfloat16 and none is None and kept.dtype == torch.int64


def test_temporal_conv_runs_in_bfloat16_with_float32_gradients() -> None:
    torch.manual_seed(0)
    x = torch.randn(3, 12, 40, requires_grad=True)
    weight = torch.randn(16, 40, 3, requires_grad=True)
    with autocast("bfloat16", CPU):
        out = temporal_conv(x, weight)
    assert out.dtype == torch.bfloat16
    grad = torch.randn(out.shape)
    out.backward(grad)
    reference = F.conv1d(x.detach().transpose(1, 2), weight.detach())
    assert relative(out, reference) < 1e-2
    x_ref, w_ref = x.detach().clone().requires_grad_(), weight.detach().clone().requires_grad_()
    F.conv1d(x_ref.transpose(1, 2), w_ref).backward(grad)
    assert x.grad.dtype == weight.grad.dtype == torch.float32
    assert relative(x.grad, x_ref.grad) < 1e-2
    assert relative(weight.grad, w_ref.grad) < 1e-2


@pytest.mark.parametrize("p", [0.0, 0.3, (0.0, 0.2)])
def test_dropout_matmul_runs_in_bfloat16_with_float32_gradients(p) -> None:
    weights = torch.softmax(torch.randn(4, 2, 10, 10), dim=-1).requires_grad_()
    values = torch.randn(4, 2, 10, 8, requires_grad=True)
    torch.manual_seed(3)
    with autocast("bfloat16", CPU):
        out = dropout_matmul(weights.to(torch.bfloat16), values, p)
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert weights.grad.dtype == values.grad.dtype == torch.float32
    w_ref = weights.detach().clone().requires_grad_()
    v_ref = values.detach().clone().requires_grad_()
    torch.manual_seed(3)
    dropout_matmul(w_ref, v_ref, p).sum().backward()
    assert relative(values.grad, v_ref.grad) < 2e-2
    assert relative(weights.grad, w_ref.grad) < 2e-2


def test_a_transformer_layer_trains_in_bfloat16_close_to_float32() -> None:
    torch.manual_seed(0)
    layer = TransformerLayer(16, 4, attn_dropout=0.1, groups=2, attn_mask=True).train()
    x = torch.randn(2, 3, 7, 16)
    source = torch.randn(2, 3, 9, 16)
    torch.manual_seed(1)
    reference = layer(x, source)
    reference.square().mean().backward()
    expected = {n: p.grad.clone() for n, p in layer.named_parameters()}
    layer.zero_grad()
    torch.manual_seed(1)
    with autocast("bfloat16", CPU), product_dtypes() as dtypes, op_dtypes(SOFTMAX) as softmax:
        out = layer(x, source)
        out.float().square().mean().backward()
    # The residual stream stays float32; every product, forward and backward, is bfloat16;
    # the attention's softmax (and its backward) runs in float32 on the bfloat16 scores.
    assert dtypes and set(dtypes) == {torch.bfloat16}, dtypes
    assert softmax and set(softmax) == {torch.float32}, softmax
    assert relative(out, reference) < 2e-2
    for name, parameter in layer.named_parameters():
        assert parameter.grad.dtype == torch.float32, name
        assert relative(parameter.grad, expected[name]) < 5e-2, name


def test_bfloat16_on_a_cpu_without_bfloat16_products_warns(monkeypatch) -> None:
    import warnings

    from dicmor.nn import precision

    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "fma"}))
    with pytest.warns(UserWarning, match="no bfloat16 products"):
        precision.check_precision("bfloat16", CPU)
    monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset({"avx2", "avx512_bf16"}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        precision.check_precision("bfloat16", CPU)
        precision.check_precision("float32", CPU)
        monkeypatch.setattr(precision, "cpu_flags", lambda: frozenset())  # unknown: no warning
        precision.check_precision("bfloat16", CPU)
