"""What every method shares: the data description, training stages and the model interface.

A method is an ``nn.Module`` whose ``forward(batch)`` reads only ``batch["inputs"]``,
``batch["available"]`` (and ``batch["text_bert"]``) and never a label, and returns a
`ModelOutput`; its ``loss(output, batch)`` turns the output and the batch (labels, real
features) into named loss terms. Its ``stages()`` say how it trains, as data; its
``batching()`` how its batches are made (by default, consecutive samples of the epoch's order).

A new method is one file: a subclass registered with ``@register("name", config=NameConfig)``
(``dicmor.registry``), reading its options as ``self.options``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import Any, ClassVar, Literal, Required, TypedDict

import torch
import torch.nn.functional as F
from torch import nn

from dicmor import registry
from dicmor.config import ModelConfig
from dicmor.data.batches import Batch, Batching
from dicmor.data.dataset import MultimodalDataset
from dicmor.data.labels import SENTIMENT_CLASSES


class ModelOutput(TypedDict, total=False):
    """What ``forward`` returns.

    Keys:
        prediction: (B,) regression scores or (B, K) class logits; always there.
        features: {m: (B, d, T')} the features the prediction was made from, missing entries
            recovered or filled in as the method does (absent for methods without such
            features).
        recovered: {m: (index (n,), features (n, d, T'))} the recovered entries of the samples
            missing m (methods that recover).
        latents: method-specific auxiliary tensors (DiCMoR's flow latents).
    """

    prediction: Required[torch.Tensor]
    features: dict[str, torch.Tensor]
    recovered: dict[str, tuple[torch.Tensor, torch.Tensor]]
    latents: dict[str, Any]


Output = ModelOutput


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about its data to be built."""

    modality_names: tuple[str, ...]
    feature_dims: dict[str, int]
    seq_lens: dict[str, int]
    task: str
    num_classes: int | None
    has_text_tokens: bool = False

    @classmethod
    def from_dataset(cls, dataset: MultimodalDataset) -> DataInfo:
        return cls(
            modality_names=dataset.modality_names,
            feature_dims=dataset.feature_dims,
            seq_lens=dataset.seq_lens,
            task=dataset.task,
            num_classes=dataset.num_classes,
            has_text_tokens="text_bert" in dataset.splits["train"].extras,
        )

    @property
    def output_dim(self) -> int:
        """1 for regression, the number of classes for classification."""
        return 1 if self.task == "regression" else int(self.num_classes or 0)

    @property
    def prior_classes(self) -> int:
        """Classes of a class-conditional prior: the labels, or the 7 sentiment bins."""
        return SENTIMENT_CLASSES if self.task == "regression" else int(self.num_classes or 0)


@dataclass(frozen=True)
class Stage:
    """One training stage of a method, as data: what it trains, on what, with which settings.

    Attributes:
        name: used in logs, histories and checkpoint names (no rule is keyed on it).
        complete_data: train and validate on complete data whatever the missing protocol; such a
            stage does not depend on the protocol, so its checkpoint can be cached and reused.
        max_epochs: overrides ``train.max_epochs`` when set.
        objective: the loss term optimised (default ``total``).
        monitor: the validation loss term that selects the best epoch and drives the schedule
            and early stopping (default ``train.select_on``).
        lr: overrides ``train.lr`` when set.
        batch_size: overrides ``train.batch_size`` when set (e.g. a covariance-based objective
            that needs large batches).
        optimizer: ``adam`` (the default, with ``train.weight_decay``), ``adamw`` or ``sgd``
            (momentum 0.9).
        weight_decay: overrides ``train.weight_decay`` when set.
        simulate_rate: on a complete-data stage, a random missing rate at which masks are drawn
            every epoch and given to the model as ``batch["simulated"]``: the model may train
            its recovery on them while everything else sees complete data.
        frozen: names of the model's top-level modules that this stage does not train.
        idle: names of top-level modules that this stage neither runs nor trains (the model
            reads them in ``begin_stage``; they are frozen too).
        skip_when_complete: if set, the reason this stage is skipped when nothing is missing
            in the training and validation data (logged); ``None``: the stage always runs.
    """

    name: str
    complete_data: bool = False
    max_epochs: int | None = None
    objective: str = "total"
    monitor: str | None = None
    lr: float | None = None
    batch_size: int | None = None
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    weight_decay: float | None = None
    simulate_rate: float = 0.0
    frozen: tuple[str, ...] = ()
    idle: tuple[str, ...] = ()
    skip_when_complete: str | None = None

    def __post_init__(self) -> None:
        if self.batch_size is not None and self.batch_size < 1:
            raise ValueError(f"stage {self.name!r}: batch_size must be >= 1")
        if self.max_epochs is not None and self.max_epochs < 1:
            raise ValueError(f"stage {self.name!r}: max_epochs must be >= 1")
        if self.lr is not None and not self.lr > 0:
            raise ValueError(f"stage {self.name!r}: lr must be positive")
        if self.optimizer not in ("adam", "adamw", "sgd"):
            raise ValueError(f"stage {self.name!r}: unknown optimizer {self.optimizer!r}")


class MultimodalModel(nn.Module, abc.ABC):
    """Base class of every registered method."""

    name: ClassVar[str] = ""
    concurrent_batches: ClassVar[bool] = False
    """Whether two training micro-batches of this method may run at once
    (``train.concurrent_batches``): its forward and loss draw random numbers only from
    `dicmor.concurrency.generator` and change the model's state only in `in_turn` sections or
    before `concurrency_ready` holds."""

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__()
        self.info = info
        self.config = config
        # The method's own options (``model.<name>``), when it registered a type for them.
        self.options: Any = None
        if self.name in registry.method_config_types():
            self.options = config.options_for(self.name)
        # Counts the switches to training mode and the moves and casts: what was derived from
        # the weights in eval mode (traced inference graphs) is stale after either.
        self.revision = 0

    def train(self, mode: bool = True) -> MultimodalModel:
        if mode:
            self.revision += 1
        return super().train(mode)

    def _apply(self, fn: Any, recurse: bool = True) -> MultimodalModel:
        self.revision += 1
        return super()._apply(fn, recurse)

    def batching(self) -> Batching:
        """How batches are made for this method, in training, evaluation and prediction: by
        default consecutive samples of the epoch's order, batches as the data layer builds
        them. A method may group samples (a sampler) or add to each batch (a collate)."""
        return Batching()

    def stages(self) -> list[Stage]:
        """The training stages, in order. Single-stage methods train under the protocol."""
        return [Stage("main")]

    def begin_stage(self, stage: Stage) -> None:
        """Prepare for ``stage``: freeze the modules it names, unfreeze the others; called
        before its optimiser is built."""
        children = dict(self.named_children())
        for name, module in children.items():
            for p in module.parameters():
                p.requires_grad_(name not in stage.frozen)

    def concurrency_ready(self) -> bool:
        """Whether the next training micro-batches may run two at a time now (for a method whose
        first batch initialises state from the data: once it has)."""
        return True

    @abc.abstractmethod
    def forward(self, batch: Batch) -> ModelOutput:
        """Map a batch to ``{"prediction": (B,) or (B, K), ...}`` without reading labels."""

    def loss(self, output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """Named loss terms; ``"total"`` is optimised. Default: the task loss only."""
        task = self.task_loss(output["prediction"], batch["label"])
        return {"total": task, "task": task}

    def task_loss(self, prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """L1 for regression, cross-entropy for classification (SPEC §5.8)."""
        if self.info.task == "regression":
            return F.l1_loss(prediction, label.float())
        return F.cross_entropy(prediction, label.long())
