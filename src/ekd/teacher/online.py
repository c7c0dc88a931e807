"""The online teacher: a frozen model in eval mode, run under no_grad on each micro-batch.

Replicated (one full copy per rank) or sharded with FSDP2 (``teacher.placement=shard``, ``shard`` below):
then the root group (embeddings, norm, head) is gathered when a signal or the head is asked for and stays
gathered until :meth:`OnlineTeacher.release` (the step's KD targets use the head after the forward); each
decoder layer is gathered for its own forward and freed after it.
"""

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
        shard: nn.Module | None = None,
    ):
        """``shard``: the model's FSDP2 root (:func:`ekd.train.fsdp.shard_frozen`), None when replicated."""
        self.model = model.eval().requires_grad_(False)
        self.vocab_size = vocab_size
        self.shard = shard
        self._head = None if shard is not None else output_head(model, vocab_size)
        self.chunk_rows = chunk_rows
        self.autocast_dtype = autocast_dtype

    @property
    def head(self):
        """The output head (V, D); sharded: gathered now (collective, idempotent) until :meth:`release`."""
        if self.shard is None:
            return self._head
        self.shard.unshard()  # a no-op when already gathered
        return output_head(self.model, self.vocab_size)  # views of the gathered weight

    def release(self) -> None:
        """Free the gathered root group of a sharded teacher (every rank calls it alike), and forget the step's
        forwards FSDP2 recorded for a backward the frozen teacher never runs (``reset_iter_state``: they were a
        list growing every step, a host-memory leak of long runs); no-op if replicated."""
        if self.shard is not None:
            from ekd.train.fsdp import forget_recorded_forwards

            forget_recorded_forwards(self.shard)

    def available(self, batch) -> torch.Tensor:
        """(B, T) bool: positions with a teacher target — every valid position for a model in memory."""
        return batch.labels != -100

    @torch.no_grad()
    def signal(self, batch, need_stats: set[str], feature_layer: int | None = None) -> TeacherSignal:
        device = batch.input_ids.device
        head = self.head  # sharded: gathers the embeddings and head before the body runs
        # body and head under autocast (head: operands in its dtype, softmax and sums in fp32)
        with torch.autocast(device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None):
            out = body_outputs(self.model, batch, output_hidden_states=feature_layer is not None)
            hidden = out.last_hidden_state  # (B, T, Dt)
            stats = token_stats(
                set(need_stats) & TEACHER_STATS,
                batch.labels,
                teacher_hidden=hidden,
                teacher_head=head,
                chunk_rows=self.chunk_rows,
            )
        features = None
        if feature_layer is not None and feature_layer != -1:
            features = out.hidden_states[feature_layer]  # (B, T, Dt)
        elif feature_layer == -1:
            features = hidden
        return TeacherSignal(
            stats=stats, available=batch.labels != -100, hidden=hidden, head=head, features=features
        )
