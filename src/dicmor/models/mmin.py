"""MMIN: Missing Modality Imagination Network (Zhao, Li, Jin; ACL 2021).

Stage 1 trains a teacher on complete data: one encoder per modality (text: a TextCNN; the
others: an LSTM max-pooled over time), each to 128 dimensions, concatenated, then a classifier.
Stage 2 trains the student, whose encoders start from the teacher's: missing modalities are
zero-filled, and the concatenated embedding goes through a cascade residual autoencoder (forward
imagination) that imagines the complete embedding, which a backward imagination network maps
back to the input embedding (the cycle). The latents of the autoencoder blocks, concatenated,
feed the student's classifier.

Faithful: the encoders and widths, 5 residual autoencoder blocks of layers 256-128-64, the
classifier FC 128-128, the loss (task × 1 + imagination MSE × 4 + cycle MSE × 2), the teacher's
complete embedding as the imagination target, Adam 2e-4 and batch 128 for the student.

Adaptations here:
- The teacher is kept (frozen) in the model, and its complete embedding is computed from the
  real features of the batch (``batch["targets"]``, a training batch) — per modality, only for
  the samples that really have that modality; other blocks of the target are left out of the
  imagination loss. At test time only the student runs.
- The student trains under our missing protocol (one mask per sample and epoch, as every
  method here), not by expanding each sample into every missing condition; its stage runs
  whatever is missing (at MR 0 it learns to imagine nothing).
- A modality not called ``text`` gets the LSTM encoder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from dicmor.data.batches import Batch
from dicmor.errors import ConfigError
from dicmor.models.base import DataInfo, ModelOutput, MultimodalModel, Stage
from dicmor.models.utterance import mlp
from dicmor.nn.precision import widened
from dicmor.registry import register


@dataclass(frozen=True)
class MMINConfig:
    """Options of ``mmin`` (``model.mmin``), the published values as defaults."""

    embed_dim: int = 128
    """Width of each modality's embedding."""
    text_kernels: tuple[int, ...] = (3, 4, 5)
    """Kernel sizes of the TextCNN (each with ``embed_dim`` filters, max-pooled, projected)."""
    ae_layers: tuple[int, ...] = (256, 128, 64)
    """Encoder widths of each residual autoencoder block (its decoder mirrors them)."""
    ae_blocks: int = 5
    """Residual autoencoder blocks of the cascade."""
    classifier: tuple[int, ...] = (128, 128)
    """Hidden widths of both classifiers."""
    dropout: float = 0.5
    """Dropout of the classifiers."""
    imagination_weight: float = 4.0
    """Weight of the MSE between the imagined and the teacher's complete embedding."""
    cycle_weight: float = 2.0
    """Weight of the backward imagination (cycle) MSE."""
    student_lr: float = 2e-4
    """Adam learning rate of the student stage."""
    batch_size: int = 128
    """Batch size of both stages."""
    teacher_epochs: int | None = None
    """Epoch budget of the teacher stage; ``None``: ``model.stage1_epochs`` or
    ``train.max_epochs``."""

    def __post_init__(self) -> None:
        if self.embed_dim < 1 or self.ae_blocks < 1 or not self.ae_layers:
            raise ConfigError("model.mmin: embed_dim, ae_blocks and ae_layers must be positive")
        if self.imagination_weight < 0 or self.cycle_weight < 0:
            raise ConfigError("model.mmin: loss weights must be >= 0")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"model.mmin.dropout must lie in [0, 1), got {self.dropout}")


class LSTMEncoder(nn.Module):
    """(B, T, D) → (B, E): an LSTM, max-pooled over time."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, out_dim, batch_first=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.rnn(x)[0].amax(dim=1)


class TextCNN(nn.Module):
    """(B, T, D) → (B, E): parallel 1-D convolutions, each max-pooled over time, projected."""

    def __init__(self, in_dim: int, out_dim: int, kernels: tuple[int, ...]) -> None:
        super().__init__()
        self.convs = nn.ModuleList(nn.Conv1d(in_dim, out_dim, k, padding=k // 2) for k in kernels)
        self.proj = nn.Linear(len(kernels) * out_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.transpose(1, 2)
        pooled = [F.relu(conv(x)).amax(dim=2) for conv in self.convs]
        return F.relu(self.proj(torch.cat(pooled, dim=1)))


def encoders(info: DataInfo, options: MMINConfig) -> nn.ModuleDict:
    """One encoder per modality: a TextCNN for ``text``, an LSTM for the others."""
    return nn.ModuleDict(
        {
            m: TextCNN(info.feature_dims[m], options.embed_dim, options.text_kernels)
            if m == "text"
            else LSTMEncoder(info.feature_dims[m], options.embed_dim)
            for m in info.modality_names
        }
    )


class ResidualAutoencoder(nn.Module):
    """The cascade: each block encodes the input plus the previous block's output to a latent
    and decodes it; returns the last output and every latent."""

    def __init__(self, width: int, layers: tuple[int, ...], blocks: int) -> None:
        super().__init__()
        self.encoders = nn.ModuleList(
            mlp([width, *layers], batch_norm=False) for _ in range(blocks)
        )
        self.decoders = nn.ModuleList(
            mlp([*reversed(layers), width], batch_norm=False) for _ in range(blocks)
        )

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        out = torch.zeros_like(x)
        latents = []
        for encode, decode in zip(self.encoders, self.decoders, strict=True):
            latent = encode(x + out)
            latents.append(latent)
            out = decode(latent)
        return out, latents


@register("mmin", config=MMINConfig)
class MMIN(MultimodalModel):
    """A complete-data teacher, then a student that imagines the missing embeddings."""

    def __init__(self, info: DataInfo, config) -> None:
        super().__init__(info, config)
        options: MMINConfig = self.options
        width = len(info.modality_names) * options.embed_dim
        head = [*options.classifier, info.output_dim]
        self.teacher = nn.ModuleDict(
            {
                "encoders": encoders(info, options),
                "classifier": mlp([width, *head], batch_norm=False, dropout=options.dropout),
            }
        )
        self.student = nn.ModuleDict(
            {
                "encoders": encoders(info, options),
                "forward_ae": ResidualAutoencoder(width, options.ae_layers, options.ae_blocks),
                "backward_ae": ResidualAutoencoder(width, options.ae_layers, options.ae_blocks),
                "classifier": mlp(
                    [options.ae_blocks * options.ae_layers[-1], *head],
                    batch_norm=False,
                    dropout=options.dropout,
                ),
            }
        )
        # The student starts from the teacher's encoders once, when its stage begins.
        self.register_buffer("student_initialized", torch.tensor(False))
        self._student_active = True

    def stages(self) -> list[Stage]:
        """The teacher on complete data (the student idle), then the student under the protocol
        with the teacher frozen; both stages always run."""
        options: MMINConfig = self.options
        return [
            Stage(
                "teacher",
                complete_data=True,
                idle=("student",),
                batch_size=options.batch_size,
                max_epochs=options.teacher_epochs or self.config.stage1_epochs,
            ),
            Stage(
                "student",
                frozen=("teacher",),
                batch_size=options.batch_size,
                lr=options.student_lr,
            ),
        ]

    def begin_stage(self, stage: Stage) -> None:
        super().begin_stage(stage)
        self._student_active = "student" not in stage.idle
        if self._student_active and not bool(self.student_initialized):
            self.student["encoders"].load_state_dict(self.teacher["encoders"].state_dict())
            self.student_initialized.fill_(True)

    def embed(self, encoders: nn.ModuleDict, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """(B, M · E): every modality's embedding, concatenated in modality order."""
        return torch.cat([encoders[m](inputs[m]) for m in self.info.modality_names], dim=1)

    def forward(self, batch: Batch) -> ModelOutput:
        """The teacher's prediction while it trains; otherwise the student's, with ``latents``:
        the zero-filled ``embedding``, the ``imagined`` complete one and its ``cycle``."""
        inputs = batch["inputs"]  # zeros where not available
        if not self._student_active:
            prediction = self.teacher["classifier"](self.embed(self.teacher["encoders"], inputs))
            latents = {}
        else:
            embedding = self.embed(self.student["encoders"], inputs)
            imagined, codes = self.student["forward_ae"](embedding)
            cycle, _ = self.student["backward_ae"](imagined)
            prediction = self.student["classifier"](torch.cat(codes, dim=1))
            latents = {"embedding": embedding, "imagined": imagined, "cycle": cycle}
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)
        return {"prediction": prediction, "latents": latents}

    def imagination_loss(self, output: ModelOutput, batch: Batch) -> torch.Tensor:
        """MSE between the imagined embedding and the teacher's complete embedding of the real
        features, over the (sample, modality) blocks whose real features exist."""
        imagined = output["latents"]["imagined"]
        with torch.no_grad():
            mode = self.teacher.training
            self.teacher.eval()
            target = self.embed(self.teacher["encoders"], batch["targets"])
            self.teacher.train(mode)
        size = self.options.embed_dim
        dtype = torch.promote_types(imagined.dtype, torch.float32)
        weight = batch["present"].to(dtype).repeat_interleave(size, dim=1)  # (B, M·E)
        if not bool(weight.any()):
            return imagined.new_zeros(())
        return ((widened(imagined) - widened(target)).square() * weight).sum() / weight.sum()

    def loss(self, output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """task; for the student also ``imagination`` (× 4) and ``cycle`` (× 2)."""
        task = self.task_loss(output["prediction"], batch["label"])
        latents = output["latents"]
        if not latents:
            return {"total": task, "task": task}
        options: MMINConfig = self.options
        cycle = F.mse_loss(latents["cycle"], latents["embedding"])
        imagination = task.new_zeros(())
        if "targets" in batch:
            imagination = self.imagination_loss(output, batch)
        total = task + options.imagination_weight * imagination + options.cycle_weight * cycle
        return {"total": total, "task": task, "imagination": imagination, "cycle": cycle}
