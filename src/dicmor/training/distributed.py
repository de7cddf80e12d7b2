"""One run on several processes: ``torchrun --nproc-per-node N -m dicmor train …``.

Every process (rank) loads the data, draws the same masks and the same shuffled order; each
global batch of ``train.batch_size`` samples is split between the ranks (rank r takes rows r,
r + N, …), the model is wrapped in :class:`~torch.nn.parallel.DistributedDataParallel` and the
gradients are all-reduced, with each rank's loss weighted by its share of the batch, so an
update is that of one process on the whole global batch (same batch size, same accumulation,
same clipping of the reduced gradient). Validation is split the same way and its sums
all-reduced, so every rank takes the same early-stopping and learning-rate decisions. Rank 0
alone writes the run folder, the stage cache and the logs, and scores the test split.

The equality with one process holds for losses that are means over samples (every method here
except DCCA's and DCCAE's correlation terms, which each rank computes on its share). Dropout
and other random draws differ between ranks, as between the samples of one process. ``gloo``
is the backend on CPU, ``nccl`` on CUDA (each rank on ``cuda:LOCAL_RANK``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of one run."""

    rank: int
    size: int
    local_rank: int

    @property
    def main(self) -> bool:
        return self.rank == 0


def launched() -> bool:
    """Whether this process is one of several started by ``torchrun``."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def start(device_name: str) -> World | None:
    """Join the process group ``torchrun`` set up (``nccl`` for CUDA, else ``gloo``); ``None``
    in a single process."""
    if not launched():
        return None
    if not dist.is_initialized():
        cuda = device_name != "cpu" and torch.cuda.is_available()
        dist.init_process_group("nccl" if cuda else "gloo")
    return current()


def current() -> World | None:
    """The running process group's world, or ``None`` without one of several ranks."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() < 2:
        return None
    return World(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def broadcast(value: object) -> object:
    """Rank 0's ``value``, on every rank."""
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def all_sum(values: list[float], device: torch.device) -> list[float]:
    """Each of ``values`` summed over the ranks (in float64)."""
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return tensor.tolist()


def finish() -> None:
    """Wait for every rank, then leave the process group."""
    dist.barrier()
    dist.destroy_process_group()
