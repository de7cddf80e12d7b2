"""GCNet: Graph Completion Network (Lian, Chen, Sun, Liu, Tao; TPAMI 2023).

Built for conversations; on MOSI / MOSEI each video is a conversation whose segments are the
nodes, one speaker. A node's input is the concatenation of its modalities' utterance vectors
(:func:`~dicmor.models.utterance.utterance_vectors`), missing ones zeroed; a 2-layer BiLSTM runs
over each conversation in segment order; two graph branches follow — a temporal graph (edges to
past and future segments within windows, relation types past / now / future; an RGCN layer then
a GraphConv layer) and a speaker graph (every pair of segments, one relation, as there is one
speaker) — whose outputs are summed, then a BiLSTM; the heads predict the task and reconstruct
the missing utterance vectors. Loss: task + reconstruction MSE on the missing parts only, 1 : 1.
Adam 1e-3 (``train.lr`` of the method's stage), L2 1e-5, 32 conversations per batch.

Segments are grouped by the MMSA id ``video$_$segment`` and ordered by the segment number (ids
without ``$_$``: each sample is a conversation of its own, and GCNet reduces to its per-node
path). A batch holds whole conversations of one split, built by this method's batch sampler, so
context comes only from the same video and split — in training, evaluation and prediction.
PyTorch Geometric provides the graph layers (``RGCNConv``, ``GraphConv``).

Adaptations here: the windows (2 past, 2 future by default), widths (hidden 100) are options;
the reconstruction target of a hidden entry is its real utterance vector where the data has it
(the protocol may hide it), never a genuinely absent one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from dicmor.data.batches import Batch, Batching
from dicmor.data.dataset import Split
from dicmor.errors import ConfigError
from dicmor.models.base import DataInfo, ModelOutput, MultimodalModel, Stage
from dicmor.models.utterance import utterance_vectors
from dicmor.registry import register

SEPARATOR = "$_$"


@dataclass(frozen=True)
class GCNetConfig:
    """Options of ``gcnet`` (``model.gcnet``)."""

    hidden: int = 100
    """Width of the node states (each BiLSTM direction has half)."""
    window_past: int = 2
    """Temporal edges reach this many earlier segments."""
    window_future: int = 2
    """Temporal edges reach this many later segments."""
    conversations: int = 32
    """Conversations (videos) per batch."""
    lr: float = 1e-3
    """Adam learning rate."""
    weight_decay: float = 1e-5
    """L2 weight decay."""
    reconstruction_weight: float = 1.0
    """Weight of the reconstruction MSE of the missing parts."""
    dropout: float = 0.2
    """Dropout on the node states."""

    def __post_init__(self) -> None:
        if self.hidden < 2 or self.hidden % 2:
            raise ConfigError(f"model.gcnet.hidden must be an even number >= 2, got {self.hidden}")
        if self.window_past < 0 or self.window_future < 0 or self.conversations < 1:
            raise ConfigError("model.gcnet: windows must be >= 0 and conversations >= 1")
        if self.reconstruction_weight < 0 or not 0 <= self.dropout < 1:
            raise ConfigError("model.gcnet: reconstruction_weight >= 0, dropout in [0, 1)")


def conversations_of(ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(conversation, position)`` of every sample: the video of an MMSA id
    ``video$_$segment`` (each sample its own for other ids) and the rank of its segment number
    within the video (order of appearance when the segment is not a number)."""
    texts = [str(i) for i in ids]
    keys = [t.split(SEPARATOR, 1)[0] if SEPARATOR in t else f"#{k}" for k, t in enumerate(texts)]
    index = {key: c for c, key in enumerate(dict.fromkeys(keys))}
    conversation = np.array([index[key] for key in keys], dtype=np.int64)
    segments = []
    for k, t in enumerate(texts):
        tail = t.split(SEPARATOR, 1)[1] if SEPARATOR in t else ""
        segments.append(int(tail) if tail.isdigit() else k)
    order = np.lexsort((np.arange(len(texts)), np.array(segments), conversation))
    position = np.zeros(len(texts), dtype=np.int64)
    counts: dict[int, int] = {}
    for row in order:
        c = int(conversation[row])
        position[row] = counts.get(c, 0)
        counts[c] = position[row] + 1
    return conversation, position


def temporal_edges(
    conversation: torch.Tensor, position: torch.Tensor, past: int, future: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Edges ``(2, E)`` (source, target) between segments of one conversation at most ``past``
    steps earlier / ``future`` later than the target, self-loops included, and their relation
    (0 past, 1 now, 2 future: where the source lies relative to the target)."""
    same = conversation[:, None] == conversation[None, :]  # (target, source)
    offset = position[None, :] - position[:, None]  # source − target
    keep = same & (offset >= -past) & (offset <= future)
    target, source = keep.nonzero(as_tuple=True)
    relation = torch.sign(offset[target, source]) + 1
    return torch.stack([source, target]), relation


def speaker_edges(conversation: torch.Tensor) -> torch.Tensor:
    """Edges ``(2, E)`` between every two segments of one conversation (one speaker)."""
    target, source = (conversation[:, None] == conversation[None, :]).nonzero(as_tuple=True)
    return torch.stack([source, target])


class ConversationLSTM(nn.Module):
    """A BiLSTM over each conversation's nodes in order: (N, D) → (N, H)."""

    def __init__(self, in_dim: int, hidden: int, layers: int) -> None:
        super().__init__()
        self.rnn = nn.LSTM(in_dim, hidden // 2, layers, batch_first=True, bidirectional=True)

    def forward(
        self, x: torch.Tensor, conversation: torch.Tensor, position: torch.Tensor
    ) -> torch.Tensor:
        count = int(conversation.max()) + 1
        lengths = torch.bincount(conversation, minlength=count)
        padded = x.new_zeros(count, int(lengths.max()), x.shape[1])
        padded[conversation, position] = x
        packed = pack_padded_sequence(padded, lengths.cpu(), batch_first=True, enforce_sorted=False)
        out, _ = pad_packed_sequence(self.rnn(packed)[0], batch_first=True)
        return out[conversation, position]


@register("gcnet", config=GCNetConfig)
class GCNet(MultimodalModel):
    """Utterance vectors → BiLSTM → temporal and speaker graphs → BiLSTM → task and
    reconstruction heads, over whole conversations."""

    def __init__(self, info: DataInfo, config) -> None:
        super().__init__(info, config)
        from torch_geometric.nn import GraphConv, RGCNConv

        options: GCNetConfig = self.options
        hidden = options.hidden
        width = sum(info.feature_dims.values())
        self.input = nn.Linear(width, hidden)
        self.context = ConversationLSTM(hidden, hidden, layers=2)
        self.temporal = nn.ModuleList([RGCNConv(hidden, hidden, 3), GraphConv(hidden, hidden)])
        self.speaker = nn.ModuleList([RGCNConv(hidden, hidden, 1), GraphConv(hidden, hidden)])
        self.smoother = ConversationLSTM(hidden, hidden, layers=1)
        self.dropout = nn.Dropout(options.dropout)
        self.head = nn.Linear(hidden, info.output_dim)
        self.reconstruct = nn.Linear(hidden, width)

    def stages(self) -> list[Stage]:
        """One stage under the protocol, with GCNet's optimiser settings."""
        options: GCNetConfig = self.options
        return [Stage("main", lr=options.lr, weight_decay=options.weight_decay)]

    def batching(self) -> Batching:
        """Whole conversations per batch (``conversations`` of them, in the epoch's order of
        their first segment), each conversation's segments in order; the collate adds
        ``extra["conversation"]`` (index within the batch) and ``extra["position"]``."""
        per_batch = self.options.conversations
        cache: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

        def structure(split: Split) -> tuple[np.ndarray, np.ndarray]:
            """The split's conversations and positions, computed once per split."""
            known = cache.get(id(split))
            if known is None or known[0] is not split.ids:
                known = (split.ids, *conversations_of(split.ids))
                cache[id(split)] = known
            return known[1], known[2]

        def sampler(split: Split, order: np.ndarray, batch_size: int) -> list[np.ndarray]:
            conversation, position = structure(split)
            members: dict[int, list[int]] = {}
            for row in order.tolist():
                members.setdefault(int(conversation[row]), []).append(row)
            groups = [sorted(rows, key=lambda r: position[r]) for rows in members.values()]
            return [
                np.array([r for group in groups[k : k + per_batch] for r in group])
                for k in range(0, len(groups), per_batch)
            ]

        def collate(batch: Batch, split: Split) -> Batch:
            rows = batch["index"].cpu().numpy()
            conversation, position = structure(split)
            _, local = np.unique(conversation[rows], return_inverse=True)
            device = batch["index"].device
            extra = {
                "conversation": torch.from_numpy(local.astype(np.int64)).to(device),
                "position": torch.from_numpy(position[rows]).to(device),
            }
            return {**batch, "extra": extra}

        return Batching(sampler=sampler, collate=collate)

    def _positions(self, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
        """Conversation and position of each node; a batch built without this method's
        batching (no ``extra``) is read as one conversation per sample."""
        extra = batch.get("extra") or {}
        if "conversation" in extra:
            conversation, position = extra["conversation"], extra["position"]
            # Positions within the batch's part of each conversation, from 0: rank in the
            # order (conversation, position), less the first rank of the conversation.
            order = (conversation * (int(position.max()) + 1) + position).argsort()
            ordered = conversation[order]
            first = torch.searchsorted(ordered, ordered)
            rank = torch.empty_like(position)
            rank[order] = torch.arange(len(order), device=order.device) - first
            return conversation, rank
        n = len(batch["available"])
        index = torch.arange(n, device=batch["available"].device)
        return index, torch.zeros_like(index)

    def forward(self, batch: Batch) -> ModelOutput:
        """``prediction`` per segment and ``latents["reconstruction"]``: (B, Σ D_m) the
        utterance vectors reconstructed from the graph."""
        vectors = [utterance_vectors(x) for x in batch["inputs"].values()]  # zeros if missing
        nodes = F.relu(self.input(torch.cat(vectors, dim=1)))
        conversation, position = self._positions(batch)
        states = self.dropout(self.context(nodes, conversation, position))
        edges, relation = temporal_edges(
            conversation, position, self.options.window_past, self.options.window_future
        )
        temporal = F.relu(self.temporal[0](states, edges, relation))
        temporal = self.temporal[1](temporal, edges)
        pairs = speaker_edges(conversation)
        speaker = F.relu(self.speaker[0](states, pairs, torch.zeros_like(pairs[0])))
        speaker = self.speaker[1](speaker, pairs)
        fused = self.dropout(self.smoother(temporal + speaker, conversation, position))
        prediction = self.head(fused)
        if self.info.task == "regression":
            prediction = prediction.squeeze(-1)
        return {"prediction": prediction, "latents": {"reconstruction": self.reconstruct(fused)}}

    def reconstruction_loss(self, output: ModelOutput, batch: Batch) -> torch.Tensor:
        """MSE over the missing parts only: the entries the mask hides whose real features
        exist (0 without targets or without such entries)."""
        reconstruction = output["latents"]["reconstruction"]
        if "targets" not in batch:
            return reconstruction.new_zeros(())
        hidden = batch["present"] & ~batch["available"]  # (B, M)
        names = self.info.modality_names
        dims = [self.info.feature_dims[m] for m in names]
        real = torch.cat([utterance_vectors(batch["targets"][m]) for m in names], dim=1)
        weight = torch.cat(
            [hidden[:, j : j + 1].expand(-1, d) for j, d in enumerate(dims)], dim=1
        ).to(real.dtype)
        if not bool(weight.any()):
            return reconstruction.new_zeros(())
        return ((reconstruction - real).square() * weight).sum() / weight.sum()

    def loss(self, output: ModelOutput, batch: Batch) -> dict[str, torch.Tensor]:
        """task + reconstruction_weight · reconstruction."""
        task = self.task_loss(output["prediction"], batch["label"])
        reconstruction = self.reconstruction_loss(output, batch)
        total = task + self.options.reconstruction_weight * reconstruction
        return {"total": total, "task": task, "reconstruction": reconstruction}
