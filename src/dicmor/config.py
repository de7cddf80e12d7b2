"""Run configuration: frozen dataclasses, loaded from YAML and validated.

Every number a run uses lives here. A YAML file mirrors the dataclasses: unknown keys, wrong
types and out-of-range values are errors naming the file and the dotted key. Presets ship in
``configs/``; ``load_config("demo")`` finds them by name.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from dicmor import registry
from dicmor.errors import ConfigError
from dicmor.fusion.mult import MulTConfig
from dicmor.missing.protocols import MissingProtocol

PRESET_DIR = Path(__file__).resolve().parent / "configs"


__all__ = ["Config", "ConfigError", "DataConfig", "ModelConfig", "RecoveryConfig", "TrainConfig"]


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from."""

    source: str = "mfeat"
    """A dataset name (``mfeat``) or a path to an MMSA ``.pkl`` or generic ``.npz`` file."""
    modalities: tuple[str, ...] | None = None
    """The modalities to use, in order; ``None`` keeps all (or the embedded default views)."""
    seq_len: int | None = None
    """Resample every modality of an MMSA file to this length (needed for unaligned files)."""
    split_seed: int = 0
    """Seed of the stratified train/valid/test split of the embedded dataset."""

    def __post_init__(self) -> None:
        if self.seq_len is not None and self.seq_len < 1:
            raise ConfigError(f"data.seq_len must be positive, got {self.seq_len}")


@dataclass(frozen=True)
class RecoveryConfig:
    """What the methods that recover missing features share (``cross_regression``, ``dicmor``):
    the refinement / regression network, the reconstruction weight, simulated missingness."""

    refine_blocks: int = 20
    """Residual channel-attention blocks R of the refinement (or regression) network."""
    refine_reduction: int = 16
    """Channel reduction of the channel attention."""
    reconstruction_weight: float = 0.1
    """Weight of the reconstruction MSE of recovered features in the total loss."""
    stage1_recovery_rate: float = 0.0
    """Random missing rate of masks simulated on the complete-data stage (or DiCMoR's flow
    stage, if any) that train the recovery alone, so that stage 2 does not start it at random;
    the fusion still sees complete data. 0 disables."""

    def __post_init__(self) -> None:
        if self.refine_blocks < 0:
            raise ConfigError(
                f"model.recovery.refine_blocks must be >= 0, got {self.refine_blocks}"
            )
        if self.refine_reduction < 1:
            raise ConfigError(
                f"model.recovery.refine_reduction must be >= 1, got {self.refine_reduction}"
            )
        if self.reconstruction_weight < 0:
            raise ConfigError(
                "model.recovery.reconstruction_weight must be >= 0, "
                f"got {self.reconstruction_weight}"
            )
        if not 0.0 <= self.stage1_recovery_rate < 1.0:
            raise ConfigError(
                "model.recovery.stage1_recovery_rate must lie in [0, 1), "
                f"got {self.stage1_recovery_rate}"
            )


@dataclass(frozen=True)
class ModelConfig:
    """The method, the values several methods share, and each method's own options.

    A method registered with options (``@register(name, config=...)``) reads them from
    ``model.<name>``; :meth:`options_for` gives them, its defaults when the block is absent.
    """

    method: str = "zero_fill"
    """A name from the model registry (``dicmor models`` lists them)."""
    dim: int = 32
    """Feature width d: of the shallow extractors' outputs, and so of everything that works on
    features (the fusion's transformers, DiCMoR's flows, the refinement networks)."""
    kernel_size: int = 1
    """Temporal kernel of the shallow Conv1d extractor (no padding)."""
    input_dropout: dict[str, float] = field(default_factory=dict)
    """Dropout on a modality's raw input, by modality name (the published text dropout)."""
    text_encoder: str | None = None
    """A local Hugging Face BERT-like model directory run on ``text_bert`` tokens."""
    stage1_epochs: int | None = None
    """Maximum epochs of the complete-data stage of every two-stage method (``None``:
    ``train.max_epochs``), so that comparing two of them changes nothing but the method."""
    recovery: RecoveryConfig = field(default_factory=RecoveryConfig)
    """Shared by the methods that recover missing features."""
    mult: MulTConfig = field(default_factory=lambda: MulTConfig())
    """The Multimodal Transformer fusion, shared by the methods that fuse with it."""
    methods: dict[str, Any] = field(default_factory=dict)
    """The methods' own option blocks given (``model.<name>`` in YAML), by method name; not a
    YAML key of its own."""

    def __post_init__(self) -> None:
        if self.dim < 1:
            raise ConfigError(f"model.dim must be >= 1, got {self.dim}")
        if self.dim % self.mult.num_heads != 0:
            raise ConfigError(
                f"model.dim {self.dim} is not divisible by model.mult.num_heads "
                f"{self.mult.num_heads}"
            )
        if self.kernel_size < 1:
            raise ConfigError(f"model.kernel_size must be >= 1, got {self.kernel_size}")
        if self.stage1_epochs is not None and self.stage1_epochs < 1:
            raise ConfigError(f"model.stage1_epochs must be >= 1, got {self.stage1_epochs}")
        for name, p in self.input_dropout.items():
            if not 0.0 <= p < 1.0:
                raise ConfigError(f"model.input_dropout.{name} must lie in [0, 1), got {p}")

    def options_for(self, method: str) -> Any:
        """The options of ``method``: its ``model.<method>`` block, or its defaults."""
        given = self.methods.get(method)
        if given is not None:
            return given
        types_ = registry.method_config_types()
        if method not in types_:
            raise ConfigError(f"method '{method}' has no options of its own (model.{method})")
        return types_[method]()

    @property
    def options(self) -> Any:
        """The options of the configured method."""
        return self.options_for(self.method)


@dataclass(frozen=True)
class TrainConfig:
    """The one training loop (SPEC §5.9)."""

    batch_size: int = 32
    """Samples per step (before accumulation)."""
    grad_accum: int = 1
    """Steps whose gradients are summed before one optimiser update."""
    lr: float = 1e-4
    """Adam learning rate."""
    weight_decay: float = 0.0
    """Adam weight decay."""
    clip_value: float | None = 0.6
    """Clip every gradient element to [-clip_value, clip_value]; ``None`` disables."""
    accumulation: Literal["sum", "mean"] = "sum"
    """How ``grad_accum`` micro-batches make one update. ``sum``, as the public DiCMoR code: each
    micro-batch's loss is back-propagated unscaled and the running sum of gradients is clipped
    after every micro-batch. ``mean``: the losses are divided by ``grad_accum`` and the mean
    gradient is clipped once, before the update (the textbook form). Identical when
    ``grad_accum`` is 1."""
    select_on: Literal["task", "total"] = "task"
    """The validation loss term that selects the best epoch, drives ReduceLROnPlateau and early
    stopping: ``task`` (the task loss alone, as the public code) or ``total`` (with the method's
    auxiliary terms, e.g. DiCMoR's NLL and reconstruction, whose scale differs between methods).
    A stage may name its own (a stage that trains only DiCMoR's flows selects on their NLL)."""
    redraw_masks: bool = False
    """Draw the training split's mask anew every epoch at the protocol's rate, from a generator
    seeded by ``seed`` and the epoch (the first epoch uses the saved mask), so every method
    sees the same sequence; validation and test masks stay those saved. Off: one training mask
    for the whole run. The public code redraws per batch."""
    max_epochs: int = 100
    """Upper bound on epochs per stage."""
    patience: int = 10
    """Stop after this many epochs without validation improvement."""
    lr_patience: int = 5
    """ReduceLROnPlateau patience (epochs) on the validation loss."""
    lr_factor: float = 0.5
    """ReduceLROnPlateau factor."""
    seed: int = 1111
    """Seed of weights, shuffling and missing masks."""
    device: str = "cpu"
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (CUDA when available)."""
    precision: Literal["float32", "bfloat16"] = "float32"
    """Arithmetic of the training steps and validation passes. ``bfloat16``: under
    `torch.autocast`, products and convolutions in bfloat16 (two to three times faster where the
    CPU has AVX512-BF16, and on GPUs; a MOSEI-sized step 1.2-1.3 times, a MOSI-sized one not at
    all), weights, gradients and optimiser state in float32, DiCMoR's flows, likelihoods and
    every loss in float32 (`dicmor.nn.precision`); a step's losses within 2 % of float32's.
    Test predictions are always float32."""
    num_threads: int | None = None
    """CPU threads for PyTorch; ``None`` keeps PyTorch's default."""
    concurrent_batches: int = 1
    """On CPU, run up to this many micro-batches of one accumulation window (``grad_accum``)
    at once, each on a thread of its own with an equal share of the CPU threads. Above 1,
    every micro-batch draws its dropout from generators of its own, seeded in micro-batch order
    from the global one (`dicmor.concurrency`): a different random stream from a run at 1, as
    another seed is. Given that, micro-batches at once compute exactly what they compute one
    after the other with the same threads each (the same weights, the gradients summed and
    clipped in micro-batch order), so only speed and memory change: the many small operations
    of a MOSEI-sized step keep two cores busier than one step can (README, "Micro-batches at
    once"), and each one in flight holds its activations. Methods that support it: ``dicmor``,
    ``zero_fill`` and ``zero_fill_pretrained``; one process only (not with ``--nproc``)."""
    progress: bool = True
    """Show progress bars."""
    save_recovered: bool = True
    """Keep the test split's recovered entries beside the real ones in the run folder
    (``recovered.npz``, compressed), for methods that recover features."""

    def __post_init__(self) -> None:
        positive = {
            "batch_size": self.batch_size,
            "grad_accum": self.grad_accum,
            "max_epochs": self.max_epochs,
            "patience": self.patience,
        }
        for key, value in positive.items():
            if value < 1:
                raise ConfigError(f"train.{key} must be >= 1, got {value}")
        # Written as `not (... )` so that NaN, which fails every comparison, is refused too.
        if not 0 < self.lr < math.inf:
            raise ConfigError(f"train.lr must be a positive finite number, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(
                f"train.weight_decay must be >= 0 and finite, got {self.weight_decay}"
            )
        if not 0 < self.lr_factor < 1:
            raise ConfigError(f"train.lr_factor must lie in (0, 1), got {self.lr_factor}")
        if self.lr_patience < 0:
            raise ConfigError(f"train.lr_patience must be >= 0, got {self.lr_patience}")
        if self.clip_value is not None and not 0 < self.clip_value < math.inf:
            raise ConfigError(
                f"train.clip_value must be a positive finite number, got {self.clip_value}"
            )
        if self.concurrent_batches < 1:
            raise ConfigError(
                f"train.concurrent_batches must be >= 1, got {self.concurrent_batches}"
            )
        if self.num_threads is not None and self.num_threads < 1:
            raise ConfigError(f"train.num_threads must be >= 1, got {self.num_threads}")
        if self.device != "auto" and not (self.device == "cpu" or self.device.startswith("cuda")):
            raise ConfigError(f"train.device must be cpu, cuda[:N] or auto, got {self.device}")


@dataclass(frozen=True)
class Config:
    """A whole run: data, model, training and the missing protocol of stage 2 / evaluation."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    missing: MissingProtocol = field(default_factory=MissingProtocol)
    output_dir: str = "runs"
    """Directory under which each run writes its own folder."""

    def replace(self, **changes: Any) -> Config:
        """A copy with dotted-key changes, e.g. ``replace(**{"train.lr": 1e-3})``."""
        return apply_overrides(self, changes)


def _is_dataclass_type(tp: Any) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Convert a YAML value to the annotated type ``tp``, or raise naming ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for option in args:
            if option is type(None):
                continue
            try:
                return _convert(value, option, key)
            except ConfigError as error:
                errors.append(str(error))
        raise ConfigError(errors[0] if errors else f"{key}: invalid value {value!r}")
    if origin is Literal:
        if value not in args:
            raise ConfigError(f"{key} must be one of {list(args)}, got {value!r}")
        return value
    if _is_dataclass_type(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return from_dict(tp, value, key)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{key} must be a mapping, got {value!r}")
        return {str(k): _convert(v, args[1], f"{key}.{k}") for k, v in value.items()}
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{key} must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{key} must be a string, got {value!r}")
        return value
    raise ConfigError(f"{key}: unsupported type {tp}")


def _method_blocks(data: dict[str, Any], prefix: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Split a ``model`` mapping into its shared keys and the methods' option blocks, each
    block built as its method's registered dataclass."""
    if "methods" in data:
        raise ConfigError(
            f"unknown key '{prefix}.methods' (a method's options go in {prefix}.NAME)"
        )
    types_ = registry.method_config_types()
    shared = {k: v for k, v in data.items() if k not in types_}
    blocks = {}
    for name in sorted(set(data) & set(types_)):
        value = data[name]
        if not isinstance(value, dict):
            raise ConfigError(f"{prefix}.{name} must be a mapping, got {value!r}")
        blocks[name] = from_dict(types_[name], value, f"{prefix}.{name}")
    return shared, blocks


def from_dict(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    """Build dataclass ``cls`` from a mapping; unknown keys and bad values raise ConfigError."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    blocks = None
    if cls is ModelConfig:
        data, blocks = _method_blocks(data, prefix or "model")
        names.discard("methods")
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        known = sorted(names | set(registry.method_config_types()) if blocks is not None else names)
        raise ConfigError(f"unknown key '{where}{unknown[0]}' (known: {known})")
    kwargs = {
        name: _convert(value, hints[name], f"{prefix}.{name}" if prefix else name)
        for name, value in data.items()
    }
    if blocks:
        kwargs["methods"] = blocks
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as error:
        raise ConfigError(f"{prefix or cls.__name__}: {error}") from error


def to_dict(obj: Any) -> Any:
    """A YAML-ready plain structure of a config (tuples become lists). A ``model`` block holds
    the configured method's options in full and any other method's options given."""
    if isinstance(obj, ModelConfig):
        data = {
            f.name: to_dict(getattr(obj, f.name))
            for f in dataclasses.fields(obj)
            if f.name != "methods"
        }
        blocks = dict(obj.methods)
        if obj.method in registry.method_config_types():
            blocks.setdefault(obj.method, obj.options)
        data.update({name: to_dict(block) for name, block in blocks.items()})
        return data
    if dataclasses.is_dataclass(obj):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, tuple | list):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def preset_names() -> list[str]:
    """Names of the shipped presets."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def load_config(source: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """Load a preset name or YAML path, apply dotted-key overrides, validate."""
    path = Path(source)
    if not path.suffix and (PRESET_DIR / f"{source}.yaml").exists():
        path = PRESET_DIR / f"{source}.yaml"
    if not path.exists():
        raise ConfigError(f"{source}: no such config file or preset (presets: {preset_names()})")
    try:
        data = _load_yaml(path.read_text()) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: not valid YAML ({error})") from error
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping")
    try:
        config = from_dict(Config, data)
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from error
    return apply_overrides(config, overrides or {})


def apply_overrides(config: Config, overrides: dict[str, Any]) -> Config:
    """Apply ``{"train.lr": 0.001, ...}`` to a config and re-validate."""
    if not overrides:
        return config
    data = to_dict(config)
    for dotted, value in overrides.items():
        node = data
        parts = dotted.split(".")
        for depth, part in enumerate(parts[:-1]):
            if depth == 1 and parts[0] == "model" and part not in node:
                # A method's options not given yet: its defaults, to be changed.
                types_ = registry.method_config_types()
                if part in types_:
                    node[part] = to_dict(types_[part]())
            if not isinstance(node, dict) or part not in node:
                raise ConfigError(f"unknown key '{dotted}'")
            node = node[part]
            if node is None:
                raise ConfigError(f"unknown key '{dotted}'")
        if not isinstance(node, dict) or parts[-1] not in node:
            raise ConfigError(f"unknown key '{dotted}'")
        node[parts[-1]] = value
    return from_dict(Config, data)


class _Loader(yaml.SafeLoader):
    """YAML 1.1 as `yaml.safe_load` reads it, but with YAML 1.2's floats: ``1e-3`` and ``1E4``
    (no dot, no exponent sign) are numbers, not strings."""


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def _load_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def parse_override(text: str) -> tuple[str, Any]:
    """Parse ``key=value`` (value read as YAML) from the command line."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value")
    key, raw = text.split("=", 1)
    try:
        return key.strip(), _load_yaml(raw)
    except yaml.YAMLError as error:
        problem = getattr(error, "problem", None) or "not valid YAML"
        raise ConfigError(f"override {key.strip()}: value {raw!r} is {problem}") from None
