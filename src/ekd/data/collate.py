"""The training batch and the collator: the one and only place labels are shifted.

``labels[:, t]`` is the token that position ``t`` must predict, ``input_ids[:, t + 1]``, or -100 where
that token is not a target (prompt, first token of a document, padding) and at the last position of
every row ("pad the end with -100"). So ``logits[:, t]`` is compared with ``labels[:, t]`` and no loss
ever slices logits.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from ekd.data.packing import PackedBlocks

IGNORE_INDEX = -100


@dataclass
class Batch:
    """One micro-batch.

    Attributes:
        input_ids: (B, T) long.
        labels: (B, T) long, already shifted; -100 = no target at this position.
        attention_mask: (B, T) long; all ones for packed blocks (the EOS padding of a lone partial block
            sits after every real token, so causal attention never lets it influence them); zeros mark
            padding in batches built elsewhere.
        sample_ids: (B,) long; ``PackedBlocks.sample_ids`` of the rows.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    sample_ids: torch.Tensor

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
            sample_ids=self.sample_ids.to(device, non_blocking=non_blocking),
        )

    @property
    def valid(self) -> torch.Tensor:
        """(B, T) bool: positions that have a target (``labels != -100``)."""
        return self.labels != IGNORE_INDEX

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def shift_labels(input_ids: torch.Tensor, target_mask: torch.Tensor) -> torch.Tensor:
    """Labels from tokens and their target mask.

    Args:
        input_ids: (B, T) long.
        target_mask: (B, T) bool; whether each token may be a target.

    Returns:
        (B, T) long: ``labels[:, t] = input_ids[:, t+1]`` where ``target_mask[:, t+1]``, else -100;
        ``labels[:, -1] = -100``.
    """
    labels = torch.full_like(input_ids, IGNORE_INDEX)
    next_ids = input_ids[:, 1:]  # (B, T-1) the token each position predicts
    labels[:, :-1] = next_ids.masked_fill(~target_mask[:, 1:], IGNORE_INDEX)
    return labels


def collate(blocks: PackedBlocks, indices: torch.Tensor) -> Batch:
    """Gather blocks into a Batch and shift the labels (the only shift in the pipeline).

    Args:
        blocks: The packed set.
        indices: (B,) long row indices into ``blocks``.

    Returns:
        Batch with ``input_ids``, ``labels``, ``attention_mask`` (B, T) and ``sample_ids`` (B,).
    """
    idx = torch.as_tensor(indices, dtype=torch.long)
    input_ids = blocks.input_ids[idx]  # (B, T)
    return Batch(
        input_ids=input_ids,
        labels=shift_labels(input_ids, blocks.target_mask[idx]),
        attention_mask=torch.ones_like(input_ids),
        sample_ids=blocks.sample_ids[idx],
    )
