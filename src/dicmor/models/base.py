"""What every method shares: the data description, training stages and the model interface.

A method is an ``nn.Module`` whose ``forward(batch)`` reads only ``batch["inputs"]``,
``batch["available"]`` (and ``batch["text_bert"]``) and never a label; its ``loss(output,
batch)`` turns the output and the batch (labels, real features) into named loss terms.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from dicmor.config import ModelConfig
from dicmor.data.dataset import MultimodalDataset
from dicmor.data.labels import SENTIMENT_CLASSES

Output = dict[str, torch.Tensor]


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
    """One training stage of a method.

    Attributes:
        name: used in logs and checkpoint names.
        complete_data: train and validate on complete data whatever the missing protocol; such a
            stage does not depend on the protocol, so its checkpoint can be cached and reused.
        max_epochs: overrides ``train.max_epochs`` when set.
        objective: the loss term optimised (default ``total``).
        monitor: the validation loss term that selects the best epoch and drives the schedule
            and early stopping (default ``train.select_on``).
        lr: overrides ``train.lr`` when set.
        simulate_rate: on a complete-data stage, a random missing rate at which masks are drawn
            every epoch and given to the model as ``batch["simulated"]``: the model may train
            its recovery on them while everything else sees complete data.
        frozen: names of the model's top-level modules that this stage does not train.
    """

    name: str
    complete_data: bool = False
    max_epochs: int | None = None
    objective: str = "total"
    monitor: str | None = None
    lr: float | None = None
    simulate_rate: float = 0.0
    frozen: tuple[str, ...] = ()


class MultimodalModel(nn.Module, abc.ABC):
    """Base class of every registered method."""

    name: ClassVar[str] = ""

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__()
        self.info = info
        self.config = config

    def stages(self) -> list[Stage]:
        """The training stages, in order. Single-stage methods train under the protocol."""
        return [Stage("main")]

    def begin_stage(self, stage: Stage) -> None:
        """Prepare for ``stage``: freeze the modules it names, unfreeze the others; called
        before its optimiser is built."""
        children = dict(self.named_children())
        unknown = sorted(set(stage.frozen) - set(children))
        if unknown:
            raise ValueError(f"stage {stage.name!r} freezes unknown modules {unknown}")
        for name, module in children.items():
            for p in module.parameters():
                p.requires_grad_(name not in stage.frozen)

    @abc.abstractmethod
    def forward(self, batch: dict) -> Output:
        """Map a batch to ``{"prediction": (B,) or (B, K), ...}`` without reading labels."""

    def loss(self, output: Output, batch: dict) -> dict[str, torch.Tensor]:
        """Named loss terms; ``"total"`` is optimised. Default: the task loss only."""
        task = self.task_loss(output["prediction"], batch["label"])
        return {"total": task, "task": task}

    def task_loss(self, prediction: torch.Tensor, label: torch.Tensor) -> torch.Tensor:
        """L1 for regression, cross-entropy for classification (SPEC §5.8)."""
        if self.info.task == "regression":
            return F.l1_loss(prediction, label.float())
        return F.cross_entropy(prediction, label.long())
