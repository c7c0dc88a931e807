"""A generic chunked "head + per-row loss" through autograd, for objectives that need more than (student,
teacher, τ): gold tokens, masks, an EMA or initial-student distribution (EMA self-distillation,
uncertainty-aware MLE; DKD and AT-KD on ``train.loss_path`` ``reference`` / ``chunked_recompute``, whose
``chunked`` path is the closed form of ``ekd.losses.decoupled_grads`` on the fused head).

Each chunk's student logits are recomputed in backward (activation checkpointing), so memory stays
O(chunk · V) like the KD fast path; the loss function receives one chunk at a time and returns its *sum*.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ekd.losses.targets import Head

ChunkLoss = Callable[[Tensor, slice], Tensor]
"""(student_logits (m, V) fp32 for rows [start, end), the slice) → scalar sum over those rows."""


def rowwise_loss_sum(
    student_hidden: Tensor, head: Head, loss_fn: ChunkLoss, chunk_rows: int = 1024
) -> Tensor:
    """Σ over chunks of ``loss_fn(head(student_hidden[chunk]), chunk)``. student_hidden (M, Ds) → scalar."""
    m = student_hidden.shape[0]
    if m == 0:
        return student_hidden.sum() * 0.0

    def chunk_sum(hidden: Tensor, start: int, end: int) -> Tensor:
        return loss_fn(head(hidden).float(), slice(start, end))  # (m, V) logits live only inside

    total = student_hidden.new_zeros((), dtype=torch.float32)
    for start in range(0, m, chunk_rows):
        end = min(start + chunk_rows, m)
        if m <= chunk_rows:
            return chunk_sum(student_hidden, 0, m)
        total = total + checkpoint(chunk_sum, student_hidden[start:end], start, end, use_reentrant=False)
    return total
