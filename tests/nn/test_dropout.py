import pytest
import torch

from dicmor.nn.dropout import Dropout, dropout


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
