"""The training batch and the collator: the one and only place labels are shifted.

``labels[:, t]`` is the token that position ``t`` must predict, ``input_ids[:, t + 1]``, or -100 where
that token is not a target (prompt, first token of a document, padding) and at the last position of
every row ("pad the end with -100"). So ``logits[:, t]`` is compared with ``labels[:, t]`` and no loss
ever slices logits.

Document attention. For blocks packed with ``document_attention='isolated'`` the batch carries
``position_ids`` that restart at every document (and at the block start). :func:`model_inputs` then passes
them with ``attention_mask=None`` and ``use_cache=False``: from position ids that restart, transformers'
mask builder (``masking_utils.find_packed_sequence_indices``) makes block-diagonal causal attention for
sdpa, eager and flex attention, and flash-attention-2 runs varlen over the same segments. Every model
forward of the project goes through :func:`model_inputs`.
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
        position_ids: (B, T) long, restarting at 0 at every document start and block start, when each
            document attends only to itself (``data.document_attention=isolated``); None = packed attention.
        boundary: (B, T) bool, aligned with ``labels``: True where ``labels[:, t]`` is an end-of-document
            token added by packing (reported apart by evaluation); None = unknown.
    """

    input_ids: torch.Tensor
    labels: torch.Tensor
    attention_mask: torch.Tensor
    sample_ids: torch.Tensor
    position_ids: torch.Tensor | None = None
    boundary: torch.Tensor | None = None

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        """A copy with every tensor on ``device``."""
        return replace(
            self,
            input_ids=self.input_ids.to(device, non_blocking=non_blocking),
            labels=self.labels.to(device, non_blocking=non_blocking),
            attention_mask=self.attention_mask.to(device, non_blocking=non_blocking),
            sample_ids=self.sample_ids.to(device, non_blocking=non_blocking),
            position_ids=None
            if self.position_ids is None
            else self.position_ids.to(device, non_blocking=non_blocking),
            boundary=None if self.boundary is None else self.boundary.to(device, non_blocking=non_blocking),
        )

    def rows(self, index: slice | torch.Tensor) -> Batch:
        """The rows ``index`` of every (B, ...) tensor as a new Batch."""
        return replace(
            self,
            input_ids=self.input_ids[index],
            labels=self.labels[index],
            attention_mask=self.attention_mask[index],
            sample_ids=self.sample_ids[index],
            position_ids=None if self.position_ids is None else self.position_ids[index],
            boundary=None if self.boundary is None else self.boundary[index],
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


def document_positions(document_starts: torch.Tensor) -> torch.Tensor:
    """Position of every token inside its document, restarting at each start and at column 0.

    Args:
        document_starts: (B, T) bool; True at the first token of a document.

    Returns:
        (B, T) long: ``t − (last start ≤ t)``; e.g. starts ``[0,0,1,0,1]`` → ``[0,1,0,1,0]``.
    """
    B, T = document_starts.shape
    column = torch.arange(T, device=document_starts.device).expand(B, T)  # (B, T)
    starts = document_starts.clone()
    starts[:, 0] = True  # a block that begins mid-document restarts its positions too
    last_start = torch.where(starts, column, torch.zeros_like(column)).cummax(dim=1).values  # (B, T)
    return column - last_start


def model_inputs(batch) -> dict[str, torch.Tensor | bool | None]:
    """Keyword arguments of a Hugging Face model (or body) forward for ``batch``.

    Packed attention: ``input_ids`` and ``attention_mask``. Isolated documents: ``input_ids``,
    ``position_ids`` (restarting per document), ``attention_mask=None`` and ``use_cache=False`` — the
    transformers-supported way to run packed sequences (a 2-D mask or a KV cache would turn its packed-sequence
    detection off). Padding in isolated batches always follows every real token, so causal attention keeps it
    out of them, and it never carries a target.
    """
    position_ids = getattr(batch, "position_ids", None)
    if position_ids is None:
        return {"input_ids": batch.input_ids, "attention_mask": batch.attention_mask}
    return {
        "input_ids": batch.input_ids,
        "position_ids": position_ids,
        "attention_mask": None,
        "use_cache": False,
    }


def collate(blocks: PackedBlocks, indices: torch.Tensor) -> Batch:
    """Gather blocks into a Batch and shift the labels (the only shift in the pipeline).

    Args:
        blocks: The packed set.
        indices: (B,) long row indices into ``blocks``.

    Returns:
        Batch with ``input_ids``, ``labels``, ``attention_mask`` (B, T), ``sample_ids`` (B,), and
        ``position_ids`` (B, T) when the blocks isolate documents, ``boundary`` (B, T) when packing marked
        the end-of-document tokens.
    """
    idx = torch.as_tensor(indices, dtype=torch.long)
    input_ids = blocks.input_ids[idx]  # (B, T)
    target_mask = blocks.target_mask[idx]  # (B, T)
    position_ids = None
    if blocks.document_attention == "isolated":
        starts = blocks.document_starts[idx] if blocks.document_starts is not None else None
        # (B, T)
        position_ids = document_positions(starts if starts is not None else torch.zeros_like(target_mask))
    boundary = None
    if blocks.boundary_mask is not None:
        boundary = torch.zeros_like(target_mask)
        boundary[:, :-1] = blocks.boundary_mask[idx][:, 1:] & target_mask[:, 1:]  # (B, T) aligned with labels
    return Batch(
        input_ids=input_ids,
        labels=shift_labels(input_ids, target_mask),
        attention_mask=torch.ones_like(input_ids),
        sample_ids=blocks.sample_ids[idx],
        position_ids=position_ids,
        boundary=boundary,
    )
