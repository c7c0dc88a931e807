"""The online teacher: a frozen model in eval mode, run under no_grad on each micro-batch."""

from __future__ import annotations

import torch
from torch import nn

from ekd.models.body import body_outputs
from ekd.models.load import output_head
from ekd.teacher.signal import TeacherSignal
from ekd.train.token_stats import TEACHER_STATS, token_stats


class OnlineTeacher:
    """Teacher model as a ``TeacherSource``: final hidden states + head; stats computed chunk-wise."""

    provides_distribution = True

    def __init__(
        self,
        model: nn.Module,
        vocab_size: int,
        chunk_rows: int = 1024,
        autocast_dtype: torch.dtype | None = None,
    ):
        self.model = model.eval().requires_grad_(False)
        self.head = output_head(model, vocab_size)
        self.chunk_rows = chunk_rows
        self.autocast_dtype = autocast_dtype

    def available(self, batch) -> torch.Tensor:
        """(B, T) bool: positions with a teacher target — every valid position for a model in memory."""
        return batch.labels != -100

    @torch.no_grad()
    def signal(self, batch, need_stats: set[str], feature_layer: int | None = None) -> TeacherSignal:
        device = batch.input_ids.device
        # body and head under autocast (head: operands in its dtype, softmax and sums in fp32)
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = body_outputs(self.model, batch, output_hidden_states=feature_layer is not None)
            hidden = out.last_hidden_state  # (B, T, Dt)
            stats = token_stats(
                set(need_stats) & TEACHER_STATS,
                batch.labels,
                teacher_hidden=hidden,
                teacher_head=self.head,
                chunk_rows=self.chunk_rows,
            )
        features = None
        if feature_layer is not None and feature_layer != -1:
            features = out.hidden_states[feature_layer]  # (B, T, Dt)
        elif feature_layer == -1:
            features = hidden
        return TeacherSignal(
            stats=stats, available=batch.labels != -100, hidden=hidden, head=self.head, features=features
        )
