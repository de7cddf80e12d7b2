import dataclasses

import pytest
import torch
from torch import nn

from dicmor.fusion import MulT, MulTConfig

SMALL = MulTConfig(dim=8, num_heads=2, num_layers=1, attn_dropout=0.1, embed_dropout=0.1)


def _features(lengths: dict[str, int], dim: int = 8, batch: int = 3) -> dict[str, torch.Tensor]:
    return {name: torch.randn(batch, dim, length) for name, length in lengths.items()}


@pytest.mark.parametrize(
    "lengths",
    [
        {"a": 5, "b": 5},
        {"text": 6, "audio": 9, "vision": 4},
        {"w": 3, "x": 7, "y": 5, "z": 2},
    ],
)
def test_shapes_for_any_number_of_modalities(lengths: dict[str, int]) -> None:
    torch.manual_seed(0)
    num = len(lengths)
    model = MulT(list(lengths), SMALL, output_dim=4).eval()
    features = _features(lengths)
    assert model.representation(features).shape == (3, num * (num - 1) * 8)
    assert model.representation_dim == num * (num - 1) * 8
    assert model(features).shape == (3, 4)
    assert isinstance(model.crossmodal, nn.ModuleDict)
    for target in lengths:
        assert isinstance(model.crossmodal[target], nn.ModuleDict)
        assert set(model.crossmodal[target]) == set(lengths) - {target}
        assert len(model.self_attention[target].layers) == 3


def test_forward_is_head_of_residual_mlp_over_representation() -> None:
    torch.manual_seed(0)
    model = MulT(["a", "b"], SMALL, output_dim=2).eval()
    features = _features({"a": 4, "b": 6})
    fused = model.representation(features)
    expected = model.head(fused + model.proj2(torch.relu(model.proj1(fused))))
    torch.testing.assert_close(model(features), expected)


def test_representation_uses_last_time_step_of_each_target() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, attn_mask=True)
    model = MulT(["a", "b"], config, output_dim=1).eval()
    features = _features({"a": 6, "b": 6})
    changed = {name: x.clone() for name, x in features.items()}
    changed["a"][:, :, -1] += torch.randn(3, 8)
    before, after = model.representation(features), model.representation(changed)
    # With causal attention only the last step of "a" moved, and that step is the summary of "a".
    assert not torch.allclose(before[:, :8], after[:, :8])


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = MulT(["text", "audio", "vision"], SMALL, output_dim=1)
    model(_features({"text": 5, "audio": 7, "vision": 3})).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    zero = [name for name, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing and not zero


def test_eval_is_deterministic_and_train_is_not() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, out_dropout=0.5)
    model = MulT(["a", "b", "c"], config, output_dim=2)
    features = _features({"a": 5, "b": 5, "c": 5})
    assert not torch.allclose(model(features), model(features))
    model.eval()
    torch.testing.assert_close(model(features), model(features))


def test_per_target_attention_dropout_override() -> None:
    config = dataclasses.replace(
        SMALL, attn_dropout=0.3, attn_dropout_by_modality={"audio": 0.2, "vision": 0.0}
    )
    model = MulT(["text", "audio", "vision"], config, output_dim=1)
    expected = {"text": 0.3, "audio": 0.2, "vision": 0.0}
    for target, sources in model.crossmodal.items():
        for encoder in sources.values():
            assert {layer.attn_dropout for layer in encoder.layers} == {expected[target]}
    for encoder in model.self_attention.values():
        assert {layer.attn_dropout for layer in encoder.layers} == {0.3}


def test_override_copy_is_private() -> None:
    overrides = {"a": 0.2}
    config = dataclasses.replace(SMALL, attn_dropout_by_modality=overrides)
    overrides["a"] = 0.9
    assert config.attn_dropout_for("a") == 0.2
    assert config.attn_dropout_for("b") == SMALL.attn_dropout


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"dim": 10, "num_heads": 4}, "MulTConfig.dim"),
        ({"dim": 0}, "MulTConfig.dim"),
        ({"num_heads": 0}, "MulTConfig.num_heads"),
        ({"num_layers": 0}, "MulTConfig.num_layers"),
        ({"attn_dropout": 1.0}, "MulTConfig.attn_dropout"),
        ({"relu_dropout": -0.1}, "MulTConfig.relu_dropout"),
        ({"res_dropout": 1.5}, "MulTConfig.res_dropout"),
        ({"embed_dropout": 1.0}, "MulTConfig.embed_dropout"),
        ({"out_dropout": 2.0}, "MulTConfig.out_dropout"),
        ({"attn_dropout_by_modality": {"audio": 1.0}}, "attn_dropout_by_modality"),
        ({"attn_dropout_by_modality": [0.1]}, "attn_dropout_by_modality"),
    ],
)
def test_config_validation(changes: dict, field: str) -> None:
    with pytest.raises(ValueError, match=field):
        MulTConfig(**changes)


def test_model_argument_errors() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        MulT(["a"], SMALL, 1)
    with pytest.raises(ValueError, match="unique"):
        MulT(["a", "a"], SMALL, 1)
    with pytest.raises(ValueError, match="output_dim"):
        MulT(["a", "b"], SMALL, 0)
    typo = dataclasses.replace(SMALL, attn_dropout_by_modality={"audoi": 0.2})
    with pytest.raises(ValueError, match="audoi"):
        MulT(["audio", "text"], typo, 1)


def test_feature_errors() -> None:
    model = MulT(["a", "b"], SMALL, 1)
    with pytest.raises(ValueError, match="exactly the modalities"):
        model({"a": torch.randn(2, 8, 4)})
    with pytest.raises(ValueError, match=r"features\['b'\] must be \(B, 8, T\)"):
        model({"a": torch.randn(2, 8, 4), "b": torch.randn(2, 4, 8)})
    with pytest.raises(ValueError, match="batch size"):
        model({"a": torch.randn(2, 8, 4), "b": torch.randn(3, 8, 4)})


def test_learns_a_target_from_random_features() -> None:
    torch.manual_seed(0)
    config = MulTConfig(
        dim=8,
        num_heads=2,
        num_layers=1,
        attn_dropout=0.0,
        relu_dropout=0.0,
        res_dropout=0.0,
        embed_dropout=0.0,
        out_dropout=0.0,
    )
    model = MulT(["a", "b"], config, output_dim=1)
    features = _features({"a": 4, "b": 6}, batch=32)
    target = features["a"][:, 0].mean(-1, keepdim=True) - features["b"][:, 1, -1:]  # (32, 1)
    optimiser = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(100):
        optimiser.zero_grad()
        loss = nn.functional.mse_loss(model(features), target)
        loss.backward()
        optimiser.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0]
