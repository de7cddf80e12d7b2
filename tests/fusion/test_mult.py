import dataclasses

import pytest
import torch
from torch import nn

from dicmor.fusion import MulT, MulTConfig
from dicmor.nn import TransformerEncoder

SMALL = MulTConfig(num_heads=2, num_layers=1, attn_dropout=0.1, embed_dropout=0.1)


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
    model = MulT(list(lengths), 8, SMALL, output_dim=4).eval()
    features = _features(lengths)
    assert model.representation(features).shape == (3, num * (num - 1) * 8)
    assert model.representation_dim == num * (num - 1) * 8
    assert model(features).shape == (3, 4)
    names = list(lengths)
    assert model.pairs == tuple((t, s) for t in names for s in names if s != t)
    assert model.crossmodal.groups == num * (num - 1)
    assert model.self_attention.groups == num
    assert len(model.self_attention.layers) == 3


def test_forward_is_head_of_residual_mlp_over_representation() -> None:
    torch.manual_seed(0)
    model = MulT(["a", "b"], 8, SMALL, output_dim=2).eval()
    features = _features({"a": 4, "b": 6})
    fused = model.representation(features)
    expected = model.head(fused + model.proj2(torch.relu(model.proj1(fused))))
    torch.testing.assert_close(model(features), expected)


def test_representation_uses_last_time_step_of_each_target() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, attn_mask=True)
    model = MulT(["a", "b"], 8, config, output_dim=1).eval()
    features = _features({"a": 6, "b": 6})
    changed = {name: x.clone() for name, x in features.items()}
    changed["a"][:, :, -1] += torch.randn(3, 8)
    before, after = model.representation(features), model.representation(changed)
    # With causal attention only the last step of "a" moved, and that step is the summary of "a".
    assert not torch.allclose(before[:, :8], after[:, :8])


def test_gradients_reach_every_parameter() -> None:
    torch.manual_seed(0)
    model = MulT(["text", "audio", "vision"], 8, SMALL, output_dim=1)
    model(_features({"text": 5, "audio": 7, "vision": 3})).sum().backward()
    missing = [name for name, p in model.named_parameters() if p.grad is None]
    zero = [name for name, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert not missing and not zero


def test_eval_is_deterministic_and_train_is_not() -> None:
    torch.manual_seed(0)
    config = dataclasses.replace(SMALL, out_dropout=0.5)
    model = MulT(["a", "b", "c"], 8, config, output_dim=2)
    features = _features({"a": 5, "b": 5, "c": 5})
    assert not torch.allclose(model(features), model(features))
    model.eval()
    torch.testing.assert_close(model(features), model(features))


@pytest.mark.parametrize(
    ("keyed_by", "by_pair"),
    [
        # pairs (target, source): (t,a) (t,v) (a,t) (a,v) (v,t) (v,a)
        ("source", (0.2, 0.0, 0.3, 0.0, 0.3, 0.2)),
        ("target", (0.3, 0.3, 0.2, 0.2, 0.0, 0.0)),
    ],
)
def test_per_modality_attention_dropout_override(keyed_by, by_pair) -> None:
    config = dataclasses.replace(
        SMALL,
        attn_dropout=0.3,
        attn_dropout_by_modality={"audio": 0.2, "vision": 0.0},
        attn_dropout_keyed_by=keyed_by,
    )
    model = MulT(["text", "audio", "vision"], 8, config, output_dim=1)
    assert model.pairs[0] == ("text", "audio")
    for layer in model.crossmodal.layers:
        assert layer.attn_dropout == by_pair
    for layer in model.self_attention.layers:
        assert layer.attn_dropout == (0.3, 0.3, 0.3)


def test_source_keyed_dropout_is_the_default() -> None:
    # The public MulT / DiCMoR code: the block "text with audio" uses the audio dropout.
    assert MulTConfig().attn_dropout_keyed_by == "source"
    with pytest.raises(ValueError, match="attn_dropout_keyed_by"):
        dataclasses.replace(SMALL, attn_dropout_keyed_by="query")


def _separate_representation(model: MulT, features: dict[str, torch.Tensor]) -> torch.Tensor:
    """MulT as separate single-group encoders, one per (target, source) and one per target,
    with the weights copied from the grouped model."""
    config = model.config
    names = model.modality_names
    crossed: dict[str, list[torch.Tensor]] = {name: [] for name in names}
    for g, (target, source) in enumerate(model.pairs):
        encoder = TransformerEncoder(model.dim, config.num_heads, config.num_layers).eval()
        encoder.load_state_dict({k: v[g : g + 1] for k, v in model.crossmodal.state_dict().items()})
        out = encoder(features[target].transpose(1, 2), features[source].transpose(1, 2))
        crossed[target].append(out)
    summaries = []
    for j, target in enumerate(names):
        width = (len(names) - 1) * model.dim
        encoder = TransformerEncoder(width, config.num_heads, max(config.num_layers, 3)).eval()
        encoder.load_state_dict(
            {k: v[j : j + 1] for k, v in model.self_attention.state_dict().items()}
        )
        summaries.append(encoder(torch.cat(crossed[target], dim=-1))[:, -1])
    return torch.cat(summaries, dim=-1)


@pytest.mark.parametrize(
    "lengths",
    [{"text": 5, "audio": 5, "vision": 5}, {"text": 6, "audio": 9, "vision": 4}],
    ids=["grouped", "by-group"],
)
def test_grouped_model_equals_separate_encoders(lengths: dict[str, int]) -> None:
    torch.manual_seed(0)
    model = MulT(list(lengths), 8, SMALL, output_dim=1).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.1 * torch.randn_like(p))  # every group's norms differ from the identity
    features = _features(lengths)
    torch.testing.assert_close(
        model.representation(features), _separate_representation(model, features)
    )


def test_grouped_and_by_group_paths_agree_for_equal_lengths() -> None:
    torch.manual_seed(0)
    model = MulT(["w", "x", "y", "z"], 8, SMALL, output_dim=1).eval()
    features = _features({"w": 5, "x": 5, "y": 5, "z": 5})
    torch.testing.assert_close(
        model.representation(features), model._representation_by_group(features)
    )


def test_override_copy_is_private() -> None:
    overrides = {"a": 0.2}
    config = dataclasses.replace(SMALL, attn_dropout_by_modality=overrides)
    overrides["a"] = 0.9
    assert config.attn_dropout_for("a") == 0.2
    assert config.attn_dropout_for("b") == SMALL.attn_dropout


@pytest.mark.parametrize(
    ("changes", "field"),
    [
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
        MulT(["a"], 8, SMALL, 1)
    with pytest.raises(ValueError, match="unique"):
        MulT(["a", "a"], 8, SMALL, 1)
    with pytest.raises(ValueError, match=r"MulT\.dim"):
        MulT(["a", "b"], 9, SMALL, 1)
    with pytest.raises(ValueError, match=r"MulT\.dim"):
        MulT(["a", "b"], 0, SMALL, 1)
    with pytest.raises(ValueError, match="output_dim"):
        MulT(["a", "b"], 8, SMALL, 0)
    typo = dataclasses.replace(SMALL, attn_dropout_by_modality={"audoi": 0.2})
    with pytest.raises(ValueError, match="audoi"):
        MulT(["audio", "text"], 8, typo, 1)


def test_feature_errors() -> None:
    model = MulT(["a", "b"], 8, SMALL, 1)
    with pytest.raises(ValueError, match="exactly the modalities"):
        model({"a": torch.randn(2, 8, 4)})
    with pytest.raises(ValueError, match=r"features\['b'\] must be \(B, 8, T\)"):
        model({"a": torch.randn(2, 8, 4), "b": torch.randn(2, 4, 8)})
    with pytest.raises(ValueError, match="batch size"):
        model({"a": torch.randn(2, 8, 4), "b": torch.randn(3, 8, 4)})


def test_learns_a_target_from_random_features() -> None:
    torch.manual_seed(0)
    config = MulTConfig(
        num_heads=2,
        num_layers=1,
        attn_dropout=0.0,
        relu_dropout=0.0,
        res_dropout=0.0,
        embed_dropout=0.0,
        out_dropout=0.0,
    )
    model = MulT(["a", "b"], 8, config, output_dim=1)
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
