"""Class-conditional prior and the bits-per-dimension flow loss."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal

from dicmor.flows import ClassConditionalPrior, nll_bits_per_dim


def random_prior(num_classes: int, channels: int) -> ClassConditionalPrior:
    prior = ClassConditionalPrior(num_classes, channels)
    with torch.no_grad():
        prior.mean.normal_()
        prior.log_std.uniform_(-1.0, 1.0)
    return prior


def test_starts_as_standard_normal_for_every_class() -> None:
    prior = ClassConditionalPrior(3, 4)
    z = torch.randn(3, 4, 5)
    expected = Normal(0.0, 1.0).log_prob(z).sum(dim=(1, 2))
    torch.testing.assert_close(prior.log_prob(z, torch.tensor([0, 1, 2])), expected)


def test_log_prob_matches_torch_distributions() -> None:
    torch.manual_seed(0)
    prior = random_prior(3, 4)
    z = torch.randn(5, 4, 6)
    y = torch.tensor([0, 2, 1, 2, 0])
    mean = prior.mean[y][:, :, None]
    std = prior.log_std[y].exp()[:, :, None]
    expected = Normal(mean, std).log_prob(z).sum(dim=(1, 2))
    torch.testing.assert_close(prior.log_prob(z, y), expected)


def test_classes_give_different_densities_for_the_same_latent() -> None:
    torch.manual_seed(0)
    prior = random_prior(3, 4)
    z = torch.randn(1, 4, 6).expand(3, 4, 6)
    log_prob = prior.log_prob(z, torch.tensor([0, 1, 2]))
    assert len(set(log_prob.tolist())) == 3


def test_gradients_reach_only_the_rows_of_used_classes() -> None:
    torch.manual_seed(0)
    prior = random_prior(4, 3)
    prior.log_prob(torch.randn(3, 3, 5), torch.tensor([0, 2, 2])).sum().backward()
    for grad in (prior.mean.grad, prior.log_std.grad):
        assert grad is not None
        assert (grad[[0, 2]].abs() > 0).all()
        assert (grad[[1, 3]] == 0).all()


def test_sample_follows_the_class_distribution() -> None:
    torch.manual_seed(0)
    prior = random_prior(2, 3)
    y = torch.tensor([1, 0])
    samples = prior.sample(y, length=20000, temperature=0.5)
    assert samples.shape == (2, 3, 20000)
    torch.testing.assert_close(samples.mean(dim=2), prior.mean[y].detach(), rtol=0.0, atol=0.03)
    expected_std = 0.5 * prior.log_std[y].exp().detach()
    torch.testing.assert_close(samples.std(dim=2), expected_std, rtol=0.03, atol=0.0)


def test_sample_is_reproducible_with_a_generator() -> None:
    prior = random_prior(2, 3)
    y = torch.tensor([0, 1, 1])
    first = prior.sample(y, 4, generator=torch.Generator().manual_seed(3))
    second = prior.sample(y, 4, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(first, second, rtol=0.0, atol=0.0)
    at_zero_temperature = prior.sample(y, 4, temperature=0.0)
    torch.testing.assert_close(at_zero_temperature, prior.mean[y][:, :, None].expand(3, 3, 4))


def test_bad_inputs_are_rejected() -> None:
    prior = ClassConditionalPrior(2, 3)
    with pytest.raises(ValueError, match="y must be a 1-D long tensor"):
        prior.log_prob(torch.randn(2, 3, 4), torch.tensor([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"z must have shape \(2, 3, T\)"):
        prior.log_prob(torch.randn(2, 4, 4), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="length must be >= 1"):
        prior.sample(torch.tensor([0]), 0)


def test_nll_bits_per_dim_matches_hand_computation() -> None:
    log_prob = torch.tensor([-10.0, -20.0])
    logdet = torch.tensor([3.0, 1.0])
    expected = 26.0 / (math.log(2.0) * 2 * 6)
    torch.testing.assert_close(nll_bits_per_dim(log_prob, logdet, 6), torch.tensor(expected))


def test_nll_bits_per_dim_is_floored_at_zero() -> None:
    log_prob = torch.tensor([5.0, 2.0], requires_grad=True)
    loss = nll_bits_per_dim(log_prob, torch.tensor([1.0, 1.0]), 4)
    assert loss.item() == 0.0
    loss.backward()
    assert log_prob.grad is not None
    assert (log_prob.grad == 0).all()


def test_nll_bits_per_dim_rejects_mismatched_shapes() -> None:
    with pytest.raises(ValueError, match="must both have shape"):
        nll_bits_per_dim(torch.zeros(2), torch.zeros(3), 4)
    with pytest.raises(ValueError, match="num_dims must be >= 1"):
        nll_bits_per_dim(torch.zeros(2), torch.zeros(2), 0)
