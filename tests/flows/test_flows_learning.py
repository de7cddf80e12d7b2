"""A flow and the class-conditional prior learn a small two-class density."""

from __future__ import annotations

import torch

from dicmor.flows import ClassConditionalPrior, Flow, nll_bits_per_dim


def two_blob_data(n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Each class is a mixture of two Gaussian blobs in C = 4; x: (n, 4, 2), y: (n,)."""
    centers = torch.tensor(
        [
            [[3.0, 0.0, 1.0, -2.0], [-1.0, 3.0, 0.0, 2.0]],
            [[-3.0, -1.0, -2.0, 0.0], [1.0, -3.0, 2.0, 1.0]],
        ]
    )  # (classes, blobs, C)
    y = torch.randint(0, 2, (n,), generator=generator)
    blob = torch.randint(0, 2, (n,), generator=generator)
    noise = 0.5 * torch.randn(n, 4, 2, generator=generator)
    return centers[y, blob][:, :, None] + noise, y


def test_training_reduces_the_negative_log_likelihood() -> None:
    torch.manual_seed(0)
    generator = torch.Generator().manual_seed(0)
    flow = Flow(4, num_steps=4, hidden=32)
    prior = ClassConditionalPrior(2, 4)
    x_eval, y_eval = two_blob_data(512, generator)

    def evaluate() -> float:
        with torch.no_grad():
            z, logdet = flow(x_eval)
            return nll_bits_per_dim(prior.log_prob(z, y_eval), logdet, 8).item()

    flow(x_eval[:256])  # ActNorm's data-dependent initialisation
    before = evaluate()
    optimizer = torch.optim.Adam([*flow.parameters(), *prior.parameters()], lr=5e-3)
    for _ in range(100):
        x, y = two_blob_data(128, generator)
        z, logdet = flow(x)
        loss = nll_bits_per_dim(prior.log_prob(z, y), logdet, 8)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = evaluate()
    assert after < before - 0.5, (before, after)
