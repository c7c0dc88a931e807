"""Data parallelism under ``torchrun``: one process group, rank-sliced batches, summed gradients.

    torchrun --nproc_per_node=2 -m ekd distill CONFIG train.micro_batch_size=4

Every loss term is already divided by its *global* token count (all micro-batches, all ranks; see
``ekd.losses.reduce``), so the right gradient is the plain **sum** of the ranks' gradients: a run on W ranks
with micro-batch b equals one rank with W micro-batches of b (tested with 2 gloo processes). The teacher
is replicated, inference-only (no optimizer state), or absent with a cache.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass
class Ranks:
    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


@contextmanager
def distributed(device: torch.device) -> Iterator[Ranks]:
    """Join the ``torchrun`` process group (WORLD_SIZE/RANK in the environment): gloo on CPU, NCCL on GPU."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Ranks(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    try:
        yield Ranks(dist.get_rank(), dist.get_world_size(), device)
    finally:
        if started:
            dist.destroy_process_group()


def rank_slice(batch, ranks: Ranks):
    """This rank's rows of a global batch of ``world_size · b`` rows. (W·b, T) → (b, T)."""
    if ranks.world_size == 1:
        return batch
    b = batch.input_ids.shape[0] // ranks.world_size
    sl = slice(ranks.rank * b, (ranks.rank + 1) * b)
    return batch.rows(sl)


def sum_gradients(params: list[nn.Parameter], ranks: Ranks) -> None:
    """Σ over ranks of every parameter's gradient (missing gradients count as zeros), in one flat buffer."""
    if ranks.world_size == 1:
        return
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
    flat = torch.cat([p.grad.reshape(-1) for p in params])  # (Σ numel,)
    dist.all_reduce(flat)
    offset = 0
    for p in params:
        n = p.numel()
        p.grad.copy_(flat[offset : offset + n].view_as(p.grad))
        offset += n


def global_sum(value: float, ranks: Ranks) -> float:
    """Σ of a Python float over ranks."""
    if ranks.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ranks.device)
    dist.all_reduce(t)
    return float(t.item())
