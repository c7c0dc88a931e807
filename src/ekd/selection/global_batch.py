"""The global micro-batch: what batch-scoped rules rank is gathered from every rank (DESIGN, "Scaling out").

Under ``torchrun`` each of W ranks holds b rows of a W·b-row micro-batch (rank r: global rows r·b … r·b+b−1).
A rule that ranks or takes a quantile over "the batch" — top-k per batch, LATF's top r, the IDTS median,
AT-KD's hard/easy split, EGAD's hard tokens, the uncertainty objective's MLE tokens, the GLS queue — must see
all W·b rows, or W ranks decide differently from one process with the same micro-batch. The helpers here
gather what such a rule reads (rank order = the order of the rows in the global micro-batch), so the rule
runs once, identically on every rank, and each rank keeps its own part.

Every helper is a **collective** under an initialized process group with more than one rank: all ranks call
it, in the same order (the training step does, once per micro-batch). Without one, each is the identity.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if world_size() > 1 else 0


def all_reduce_sum(t: Tensor) -> Tensor:
    """Sum of ``t`` over ranks (in place; returned for chaining)."""
    if world_size() > 1:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def gather_segments(t: Tensor) -> tuple[Tensor, slice]:
    """Concatenate every rank's ``t`` along dim 0, in rank order; the lengths may differ between ranks.

    Args:
        t: (n_r, ...) on rank r; the trailing shape and the dtype must agree across ranks (bool is allowed).

    Returns:
        (Σ_r n_r, ...) the concatenation, and the slice of dim 0 that holds this rank's ``t``.
    """
    ws = world_size()
    if ws == 1:
        return t, slice(0, t.shape[0])
    n = torch.tensor([t.shape[0]], dtype=torch.long, device=t.device)
    sizes_t = [torch.zeros_like(n) for _ in range(ws)]
    dist.all_gather(sizes_t, n)
    sizes = [int(s) for s in sizes_t]
    send = t.to(torch.uint8) if t.dtype == torch.bool else t  # gloo has no bool collectives
    padded = send.new_zeros((max(sizes), *t.shape[1:]))  # (n_max, ...) equal shapes for all_gather
    padded[: t.shape[0]] = send
    parts = [torch.empty_like(padded) for _ in range(ws)]
    dist.all_gather(parts, padded)
    out = torch.cat([p[:s] for p, s in zip(parts, sizes)])  # (Σ n_r, ...)
    start = sum(sizes[: rank()])
    return (out.bool() if t.dtype == torch.bool else out), slice(start, start + sizes[rank()])


def all_gather_1d(t: Tensor) -> Tensor:
    """Concatenation over ranks (rank order) of 1-D tensors of different lengths."""
    return gather_segments(t)[0]


def gather_rows(t: Tensor) -> Tensor:
    """(b, ...) rows of this rank → (W·b, ...) rows of the global micro-batch (each rank's rows in rank order)."""
    return gather_segments(t)[0]
