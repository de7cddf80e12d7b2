"""Config loading: every shipped preset parses, and bad files fail naming the key."""

from pathlib import Path

import pytest

from dicmor.config import (
    Config,
    ConfigError,
    load_config,
    parse_override,
    preset_names,
    to_dict,
)
from dicmor.missing.protocols import MissingProtocol
from dicmor.registry import model_names


@pytest.mark.parametrize("name", preset_names())
def test_every_preset_loads_and_names_a_registered_method(name: str) -> None:
    config = load_config(name)
    assert isinstance(config, Config)
    assert config.model.method in model_names()


def test_presets_include_the_published_ones() -> None:
    assert {"demo", "mosi", "mosei", "sims"} <= set(preset_names())
    mosi = load_config("mosi")
    assert (mosi.model.dim, mosi.model.mult.num_heads, mosi.model.mult.num_layers) == (
        32,
        8,
        4,
    )
    assert (mosi.train.batch_size, mosi.train.grad_accum, mosi.model.kernel_size) == (4, 8, 5)
    assert mosi.model.input_dropout == {"text": 0.5}
    mosei = load_config("mosei")
    assert (mosei.model.dim, mosei.model.mult.num_layers, mosei.train.batch_size) == (
        64,
        6,
        16,
    )


def test_round_trip_through_dict() -> None:
    config = load_config("mosi")
    assert load_config_from_dict(to_dict(config)) == config


def load_config_from_dict(data: dict) -> Config:
    from dicmor.config import from_dict

    return from_dict(Config, data)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("model:\n  mult:\n    dimm: 3\n", "unknown key 'model.mult.dimm'"),
        ("train:\n  lr: fast\n", "train.lr must be a number"),
        ("train:\n  batch_size: 0\n", "train.batch_size must be >= 1"),
        ("missing:\n  kind: random\n  rate: 0.9\n  keep: [a]\n", "missing"),
        ("model:\n  dicmor:\n    transfer: average\n", "model.dicmor.transfer must be one of"),
        ("train:\n  precision: half\n", "train.precision must be one of"),
        ("- a\n- b\n", "top level must be a mapping"),
        ("train: [\n", "not valid YAML"),
    ],
)
def test_bad_files_name_the_problem(tmp_path: Path, text: str, message: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")) as info:
        load_config(path)
    assert str(path) in str(info.value)


def test_missing_file_lists_presets() -> None:
    with pytest.raises(ConfigError, match="presets"):
        load_config("no-such-preset")


def test_overrides_apply_and_validate() -> None:
    config = load_config("demo", {"train.lr": 0.01, "model.mult.num_layers": 3})
    assert config.train.lr == 0.01 and config.model.mult.num_layers == 3
    with pytest.raises(ConfigError, match=r"unknown key 'train\.learning_rate'"):
        load_config("demo", {"train.learning_rate": 0.01})
    assert parse_override("train.max_epochs=5") == ("train.max_epochs", 5)
    with pytest.raises(ConfigError, match="key=value"):
        parse_override("train.max_epochs")


def test_exponent_floats_are_numbers_on_the_command_line_and_in_files(tmp_path: Path) -> None:
    # YAML 1.1 reads 1e-3 (no dot) as a string; a learning rate written so is a number here.
    assert parse_override("train.lr=1e-3") == ("train.lr", 0.001)
    assert parse_override("train.lr=5E-4") == ("train.lr", 0.0005)
    assert parse_override("model.name=1e") == ("model.name", "1e")
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: 2e-4\n")
    assert load_config(path).train.lr == 0.0002


def test_missing_protocol_section_builds_the_protocol(tmp_path: Path) -> None:
    path = tmp_path / "c.yaml"
    path.write_text("missing:\n  kind: fixed\n  keep: [fourier, zernike]\n")
    assert load_config(path).missing == MissingProtocol(kind="fixed", keep=("fourier", "zernike"))


def test_mosi_and_mosei_presets_carry_the_public_code_settings() -> None:
    # SPEC §9: source-keyed attention dropout, no ReLU / residual dropout, causal masks, summed
    # accumulation clipped per micro-batch, selection on the validation task loss.
    for name in ("mosi", "mosei"):
        config = load_config(name)
        mult = config.model.mult
        assert mult.attn_dropout_keyed_by == "source", name
        assert (mult.relu_dropout, mult.res_dropout, mult.attn_mask) == (0.0, 0.0, True), name
        assert (config.train.accumulation, config.train.select_on) == ("sum", "task"), name
    mosi = load_config("mosi").model.mult
    assert mosi.crossmodal_attn_dropout("text", "audio") == 0.2
    assert mosi.crossmodal_attn_dropout("audio", "text") == 0.3
    assert mosi.crossmodal_attn_dropout("text", "vision") == 0.0
    mosei = load_config("mosei").model.mult
    assert mosei.attn_dropout_by_modality == {"audio": 0.0, "vision": 0.0}
    assert mosei.crossmodal_attn_dropout("audio", "text") == 0.2
