"""Shallow per-modality feature extractors shared by the fusion-based methods (SPEC §5.1)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from dicmor.config import ConfigError, ModelConfig
from dicmor.models.base import DataInfo
from dicmor.nn.temporal import TemporalConv


class TextEncoder(nn.Module):
    """A local Hugging Face BERT-like model run on MMSA ``text_bert`` tokens.

    Only a local directory is read (``local_files_only``): nothing is downloaded.
    """

    def __init__(self, path: str) -> None:
        super().__init__()
        if not (Path(path) / "config.json").is_file():
            raise FileNotFoundError(
                f"model.text_encoder: {path} is not a Hugging Face model directory "
                "(no config.json); point it at a locally saved model"
            )
        from transformers import AutoModel

        self.model = AutoModel.from_pretrained(path, local_files_only=True)
        self.hidden_size = int(self.model.config.hidden_size)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """tokens: (B, 3, T) ids, attention mask, segment ids → (B, T, H)."""
        tokens = tokens.long()
        out = self.model(
            input_ids=tokens[:, 0], attention_mask=tokens[:, 1], token_type_ids=tokens[:, 2]
        )
        return out.last_hidden_state


class ShallowExtractors(nn.Module):
    """Per modality: raw features (B, T, D_m) → X_m (B, d, T') by a bias-free temporal Conv1d.

    With ``model.text_encoder`` set, the text modality is first encoded from its tokens.
    A missing modality's input is zero (the batch contract, `dicmor.data.batches`), and a
    bias-free convolution keeps it zero. In evaluation a modality missing from the whole batch is
    therefore not computed; a model that fills missing inputs with something else sets
    ``skip_missing`` to False.
    """

    skip_missing: bool = True

    def __init__(self, info: DataInfo, config: ModelConfig) -> None:
        super().__init__()
        dim = config.dim
        self.text_encoder: TextEncoder | None = None
        dims = dict(info.feature_dims)
        if config.text_encoder is not None:
            if "text" not in info.modality_names or not info.has_text_tokens:
                raise ConfigError(
                    "model.text_encoder needs a 'text' modality with text_bert tokens in the data"
                )
            self.text_encoder = TextEncoder(config.text_encoder)
            dims["text"] = self.text_encoder.hidden_size
        for m in info.modality_names:
            if info.seq_lens[m] < config.kernel_size:
                raise ConfigError(
                    f"model.kernel_size {config.kernel_size} exceeds the length "
                    f"{info.seq_lens[m]} of modality '{m}'"
                )
        self.convs = nn.ModuleDict(
            {
                m: TemporalConv(
                    dims[m], dim, config.kernel_size, dropout=config.input_dropout.get(m, 0.0)
                )
                for m in info.modality_names
            }
        )

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Extract every modality of ``batch["inputs"]``: {m: (B, d, T')}."""
        inputs = dict(batch["inputs"])
        names = list(self.convs)
        # In evaluation a modality missing from the whole batch (as when a clip arrives without
        # its audio) is neither encoded nor convolved: its features are the zeros the
        # convolution of its zero input gives. Training runs every extractor (dropout draws).
        if self.training or not self.skip_missing:
            shown = [True] * len(names)
        else:
            shown = batch["available"].any(0).tolist()
        if self.text_encoder is not None:
            tokens = batch["text_bert"]
            if shown[names.index("text")]:
                keep = batch["available"][:, names.index("text")]
                text = self.text_encoder(tokens)  # (B, T, H)
                inputs["text"] = text * keep[:, None, None].to(text.dtype)
            else:
                # Only its shape is read: a zero-stride view, nothing allocated.
                size = (tokens.shape[0], tokens.shape[-1], self.text_encoder.hidden_size)
                inputs["text"] = self.convs["text"].conv.weight.new_zeros(()).expand(size)
        return {
            m: conv(inputs[m]) if shown[j] else conv.zeros(inputs[m])
            for j, (m, conv) in enumerate(self.convs.items())
        }
