"""MCTN: Multimodal Cyclic Translation Network (Pham, Liang, Manzini, Morency, Póczos; AAAI 2019).

A sequence-to-sequence model translates the source modality (text) into a target modality
(vision); the translation is translated back to the source through the same encoder (the cycle);
a second sequence-to-sequence model reads the first encoder's states and translates them into
each remaining modality (audio). The prediction is made from the first encoder's states alone, so
at test time MCTN reads the source modality only; the other modalities are translation targets,
read in training only.

Faithful: the two-level structure, the cycle through the shared encoder, the loss (task × 1 +
0.1 × (translation + cycle + second-level MSE)), teacher forcing in training only, Adam 1e-4
(``train.lr``), hidden width 32.

Adaptations here:
- Modalities of different widths share the encoder through a linear input projection per
  modality (the original pads features to one width); the recurrent cells are GRUs; each
  decoder starts from the last encoder state and reads its previous output step (the previous
  real step under teacher forcing).
- For any number of modalities: ``source`` (default ``text``, else the first modality),
  ``target`` (default ``vision``, else the first other modality), and one second-level decoder
  per remaining modality (none with two modalities).
- The prediction: an MLP on the last encoder state concatenated with the mean over steps.
- A translation term covers the samples whose target modality really exists in the data (the
  protocol may hide it: the real values are a training target, as DiCMoR's reconstruction
  targets are); a sample whose *source* is missing has a zero source, in training and at test
  time, and still gets a prediction (of a zero source).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dicmor.data.batches import Batch
from dicmor.errors import ConfigError
from dicmor.models.base import DataInfo, ModelOutput, MultimodalModel
from dicmor.registry import register


@dataclass(frozen=True)
class MCTNConfig:
    """Options of ``mctn`` (``model.mctn``), the published values as defaults."""

    source: str = "text"
    """The modality read at test time (the first modality if the data has no such one)."""
    target: str = "vision"
    """The first-level translation target (the first other modality if there is no such one)."""
    hidden: int = 32
    """Width of the encoders' and decoders' states."""
    translation_weight: float = 0.1
    """Weight of the summed translation, cycle and second-level MSE terms."""
    teacher_forcing: bool = True
    """Decoders read the previous real target step in training (always their own previous
    output at test time)."""

    def __post_init__(self) -> None:
        if self.hidden < 1:
            raise ConfigError(f"model.mctn.hidden must be >= 1, got {self.hidden}")
        if self.translation_weight < 0:
            raise ConfigError("model.mctn.translation_weight must be >= 0")


class Decoder(nn.Module):
    """A GRU decoder: from a start state, one output step per input step."""

    def __init__(self, hidden: int, out_dim: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(out_dim, hidden)
        self.out = nn.Linear(hidden, out_dim)
        self.out_dim = out_dim

    def forward(
        self, state: torch.Tensor, steps: int, forced: torch.Tensor | None = None
    ) -> torch.Tensor:
        """``state: (B, H)`` → (B, steps, D). With ``forced: (B, steps, D)`` each step reads the
        previous forced step (teacher forcing); otherwise its own previous output."""
        previous = state.new_zeros(state.shape[0], self.out_dim)
        outputs = []
        for t in range(steps):
            state = self.cell(previous, state)
            step = self.out(state)
            outputs.append(step)
            previous = forced[:, t] if forced is not None else step
        return torch.stack(outputs, dim=1)


@register("mctn", config=MCTNConfig)
class MCTN(MultimodalModel):
    """Source → target translation with a cycle, source states → the other modalities, and a
    prediction from the source's encoding alone."""

    def __init__(self, info: DataInfo, config) -> None:
        super().__init__(info, config)
        options: MCTNConfig = self.options
        names = list(info.modality_names)
        self.source = options.source if options.source in names else names[0]
        others = [m for m in names if m != self.source]
        self.target = options.target if options.target in others else others[0]
        self.rest = [m for m in others if m != self.target]
        hidden = options.hidden
        dims = info.feature_dims
        translated = (self.source, self.target)
        self.inputs = nn.ModuleDict({m: nn.Linear(dims[m], hidden) for m in translated})
        self.encoder = nn.GRU(hidden, hidden, batch_first=True)
        self.decoders = nn.ModuleDict({m: Decoder(hidden, dims[m]) for m in translated})
        self.second_encoder = nn.GRU(hidden, hidden, batch_first=True)
        self.second_decoders = nn.ModuleDict({m: Decoder(hidden, dims[m]) for m in self.rest})
        self.head = nn.Sequential(
            nn.Linear(2 * hidden, hidden), nn.ReLU(), nn.Linear(hidden, info.output_dim)
        )

    def encode(self, modality: str, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``x: (B, T, D)`` of ``modality`` → states (B, T, H) and the last state (B, H)."""
        states, last = self.encoder(self.inputs[modality](x))
        return states, last[0]

    def forward(self, batch: Batch) -> ModelOutput:
        """``prediction`` from the source modality alone (zeros where it is missing), and
        ``latents``: the encoder's ``states`` and ``last`` state, for the translation losses."""
        source = batch["inputs"][self.source]  # zeros where the source is not available
        states, last = self.encode(self.source, source)
        prediction = self.head(torch.cat([last, states.mean(dim=1)], dim=1))
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)
        return {"prediction": prediction, "latents": {"states": states, "last": last}}

    def _decode(self, decoder: Decoder, state: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        forced = target if self.training and self.options.teacher_forcing else None
        return decoder(state, target.shape[1], forced)

    def translation_losses(self, output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """``translation`` (source → target), ``cycle`` (translated target → source, through
        the same encoder) and ``second`` (source states → each remaining modality) MSE terms,
        each over the samples that really have the modality translated into. The real features
        come from ``batch["targets"]`` (a training batch); without them every term is 0."""
        zero = output["prediction"].new_zeros(())
        terms = {"translation": zero, "cycle": zero, "second": zero}
        if "targets" not in batch:
            return terms
        names = self.info.modality_names
        present = batch["present"]
        targets = batch["targets"]
        states, last = output["latents"]["states"], output["latents"]["last"]
        has_source = batch["available"][:, names.index(self.source)]
        rows = (has_source & present[:, names.index(self.target)]).nonzero().squeeze(1)
        if len(rows):
            real = targets[self.target].index_select(0, rows)
            translated = self._decode(self.decoders[self.target], last.index_select(0, rows), real)
            terms["translation"] = F.mse_loss(translated, real)
            # The cycle: the translation, encoded by the same encoder, decoded to the source.
            _, back_state = self.encode(self.target, translated)
            source = targets[self.source].index_select(0, rows)
            back = self._decode(self.decoders[self.source], back_state, source)
            terms["cycle"] = F.mse_loss(back, source)
        second = []
        if self.rest:
            _, second_last = self.second_encoder(states)
            for m in self.rest:
                keep = (has_source & present[:, names.index(m)]).nonzero().squeeze(1)
                if len(keep) == 0:
                    continue
                real = targets[m].index_select(0, keep)
                decoded = self._decode(
                    self.second_decoders[m], second_last[0].index_select(0, keep), real
                )
                second.append(F.mse_loss(decoded, real))
        if second:
            terms["second"] = torch.stack(second).sum()
        return terms

    def loss(self, output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """task + translation_weight · (translation + cycle + second)."""
        task = self.task_loss(output["prediction"], batch["label"])
        terms = self.translation_losses(output, batch)
        weight = self.options.translation_weight
        total = task + weight * (terms["translation"] + terms["cycle"] + terms["second"])
        return {"total": total, "task": task, **terms}
