import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from dicmor.nn.dropout import Dropout, _bits, dropout, dropout_matmul, thin_right_product


def test_drops_the_given_fraction_and_stays_unbiased() -> None:
    torch.manual_seed(0)
    x = torch.ones(200_000)
    y = dropout(x, 0.3)
    assert (y == 0).float().mean().item() == pytest.approx(0.3, abs=0.005)
    assert y.mean().item() == pytest.approx(1.0, abs=0.01)
    assert y.unique().tolist() == [0.0, pytest.approx(1 / 0.7, rel=1e-4)]


def test_one_probability_per_group() -> None:
    torch.manual_seed(0)
    x = torch.ones(3, 100, 1000)
    y = dropout(x, [0.0, 0.5, 0.9])
    torch.testing.assert_close(y[0], x[0], rtol=0.0, atol=0.0)
    dropped = (y == 0).float().mean(dim=(1, 2))
    torch.testing.assert_close(dropped, torch.tensor([0.0, 0.5, 0.9]), rtol=0.0, atol=0.01)
    torch.testing.assert_close(y.mean(dim=(1, 2)), torch.ones(3), rtol=0.0, atol=0.03)


def test_identity_in_eval_and_follows_the_seed() -> None:
    layer = Dropout([0.2, 0.4])
    x = torch.randn(2, 50)
    torch.manual_seed(1)
    first = layer(x)
    torch.manual_seed(1)
    torch.testing.assert_close(layer(x), first, rtol=0.0, atol=0.0)
    assert not torch.equal(layer(x), first)
    layer.eval()
    assert layer(x) is x


def test_equal_probabilities_collapse_to_one() -> None:
    assert Dropout([0.2, 0.2]).p == 0.2
    assert Dropout([0.0, 0.1]).p == (0.0, 0.1)


def test_bad_probabilities_are_rejected() -> None:
    with pytest.raises(ValueError, match=r"Dropout\.p: must be in \[0, 1\)"):
        Dropout(1.0)
    with pytest.raises(ValueError, match=r"dropout\.p: must be in \[0, 1\)"):
        dropout(torch.ones(2, 3), [0.1, -0.1])
    with pytest.raises(ValueError, match="2 probabilities for a first dimension of size 3"):
        dropout(torch.ones(3, 4), [0.1, 0.2])


def _saved_bytes(fn) -> int:
    """Bytes of the distinct tensors autograd saves while ``fn()`` runs."""
    saved: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        fn()
    return sum(saved.values())


@pytest.mark.parametrize(
    "p", [0.3, (0.0, 0.2, 0.5), (0.2, 0.0, 0.0, 0.3, 0.0, 0.2), (0.0, 0.0, 0.2, 0.0, 0.2, 0.0)]
)
def test_dropout_matmul_is_dropout_then_product_and_saves_less(p) -> None:
    # (G·B, h, T_q, T_kv) attention weights of G groups, B = 2, and their values.
    groups = 1 if isinstance(p, float) else len(p)
    logits = torch.randn(2 * groups, 2, 5, 7, dtype=torch.float64, requires_grad=True)
    values = torch.randn(2 * groups, 2, 7, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(2 * groups, 2, 5, 3, dtype=torch.float64)

    def reference() -> torch.Tensor:
        weights = logits.softmax(dim=-1)
        return dropout(weights.view(groups, -1), p).view_as(weights) @ values

    def fused() -> torch.Tensor:
        return dropout_matmul(logits.softmax(dim=-1), values, p)

    results = []
    for fn in (reference, fused):
        torch.manual_seed(7)
        out = fn()
        grads = torch.autograd.grad(out, (logits, values), upstream)
        results.append((out, *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=0, atol=0)
    # Something was dropped, so the test is not of the identity.
    torch.manual_seed(7)
    assert not torch.allclose(results[0][0], logits.softmax(dim=-1) @ values)
    # The dropped weights are not kept, nor a mask for the groups that drop nothing.
    kept_groups = 0 if isinstance(p, float) else p.count(0.0)
    mask_saved = logits.numel() * 8 * kept_groups // groups
    assert _saved_bytes(fused) <= _saved_bytes(reference) - logits.numel() * 8 - mask_saved


def test_dropout_matmul_without_dropout_in_training_is_the_product() -> None:
    weights = torch.rand(6, 2, 4, 5, dtype=torch.float64, requires_grad=True)
    values = torch.randn(6, 2, 5, 3, dtype=torch.float64, requires_grad=True)
    upstream = torch.randn(6, 2, 4, 3, dtype=torch.float64)
    results = []
    for out in (dropout_matmul(weights, values, (0.0, 0.0)), weights @ values):
        results.append((out, *torch.autograd.grad(out, (weights, values), upstream)))
    for got, want in zip(*results, strict=True):
        torch.testing.assert_close(got, want)


@pytest.mark.parametrize("width", [4, 16])
def test_thin_right_product_is_the_product(width: int) -> None:
    a = torch.randn(3, 2, 9, 7, dtype=torch.float64)
    b = torch.randn(3, 2, 7, width, dtype=torch.float64)
    torch.testing.assert_close(thin_right_product(a, b), a @ b)


def test_dropout_matmul_outside_training_is_the_product() -> None:
    weights, values = torch.rand(6, 2, 4, 4), torch.randn(6, 2, 4, 3)
    torch.testing.assert_close(
        dropout_matmul(weights, values, 0.5, training=False), weights @ values
    )
    with pytest.raises(ValueError, match="2 probabilities for a first dimension of size 5"):
        dropout_matmul(torch.rand(5, 1, 2, 2), torch.rand(5, 1, 2, 1), (0.1, 0.2))


def test_dropout_matmul_outside_training_takes_a_thin_value_on_the_left() -> None:
    """The inference product runs in the orientation the CPU batched product runs fastest."""
    weights, values = torch.rand(6, 2, 46, 46), torch.randn(6, 2, 46, 4)
    shapes = []

    class Products(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func.__name__.split(".")[0] in ("bmm", "mm"):
                shapes.append(tuple(args[0].shape))
            return func(*args, **(kwargs or {}))

    with Products():
        out = dropout_matmul(weights, values, 0.3, training=False)
    torch.testing.assert_close(out, weights @ values)
    assert shapes == [(12, 4, 46)]


def test_mask_bits_cover_every_16_bit_value_in_each_lane() -> None:
    """Each of the four 16-bit lanes of a 64-bit draw is uniform over [-32768, 32767]: a draw
    over [0, 2**63) instead would leave the top lane without its negative half."""
    torch.manual_seed(0)
    bits = _bits(torch.empty(4 * 1_000_000)).view(-1, 4).to(torch.float64)
    for lane in bits.T:
        assert lane.min() == -32768 and lane.max() == 32767
        assert abs(lane.mean()) < 150  # its standard error is 18919 / sqrt(1e6) = 19
        assert abs((lane < 0).double().mean() - 0.5) < 0.01


@pytest.mark.parametrize("use_matmul", [False, True])
def test_groups_that_drop_nothing_draw_nothing(use_matmul: bool) -> None:
    """With probabilities (0, 0.2, 0, 0.5) only groups 1 and 3 draw: the generator moves on by
    their words alone, and group 3 takes the bits right after group 1's."""
    p = (0.0, 0.2, 0.0, 0.5)
    weights = torch.rand(4 * 3, 2, 6, 6, dtype=torch.float64)  # G·B rows, B = 3
    values = torch.randn(4 * 3, 2, 6, 2, dtype=torch.float64)
    torch.manual_seed(5)
    if use_matmul:
        out = dropout_matmul(weights, values, p)
    else:
        out = dropout(weights.view(4, -1), p).view_as(weights) @ values
    after = torch.rand(8)
    torch.manual_seed(5)
    bits = _bits(torch.empty(2, 216))  # 216 elements per group
    torch.testing.assert_close(torch.rand(8), after, rtol=0, atol=0)
    levels = [round(v * 65536) for v in (0.2, 0.5)]
    masks = [(bits[i] >= lv - 32768).double() * 65536 / (65536 - lv) for i, lv in enumerate(levels)]
    expected = weights.view(4, -1).clone()
    expected[1] *= masks[0]
    expected[3] *= masks[1]
    torch.testing.assert_close(out, expected.view_as(weights) @ values)
