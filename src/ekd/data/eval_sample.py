"""The blocks an eval set is scored on: ``data.max_eval_blocks`` blocks spread evenly over the set.

An eval set capped at its *first* k blocks is the first few documents: one long source file filled the
demo's whole in-distribution budget (48 blocks of 128 tokens = 2 of its 17 documents), so its figures
described two texts. Here the set is packed up to ``EVAL_POOL`` · k blocks (the pool: documents past it are
not tokenized) and k blocks are taken at even strides through the pool — a systematic sample of the token
stream, each scored block standing for the same share of the pool's tokens, as token-level metrics (ppl,
KL, ECE) weigh them. Same budget, many more documents. Only blocks that hold a target are candidates (try-out
40: chat sets, whose system prompts and tool definitions fill blocks with no assistant token, spent half the
budget on blocks that scored nothing); the log line says how many hold none. Both data paths (in memory, token
store) sample through :func:`spread_blocks`.
"""

from __future__ import annotations

import logging
from dataclasses import replace

import torch

from ekd.data.packing import PackedBlocks
from ekd.words import counted

logger = logging.getLogger(__name__)

EVAL_POOL = 32
"""An eval set is packed up to this many times ``data.max_eval_blocks`` blocks, then sampled down to them."""


def pool_blocks(max_eval_blocks: int) -> int:
    """Blocks packed for an eval set before sampling (0 = all, as ``data.max_eval_blocks=0``)."""
    return max_eval_blocks * EVAL_POOL


def spread_indices(n: int, k: int) -> torch.Tensor:
    """k of n block indices at even strides, each the middle of its n/k stretch: ⌊(2i+1)·n / 2k⌋, i < k.

    Returns (min(n, k),) long, strictly increasing; ``arange(n)`` when k ≥ n or k = 0 (no cap).
    """
    if k <= 0 or k >= n:
        return torch.arange(n, dtype=torch.long)
    return (2 * torch.arange(k, dtype=torch.long) + 1) * n // (2 * k)  # (k,)


def spread_blocks(pool: PackedBlocks, k: int, split: str = "") -> PackedBlocks:
    """k blocks of ``pool`` at :func:`spread_indices` strides through its blocks that hold a target (through all
    of them when none does), as tensors (store columns load only those rows), renumbered ``sample_ids =
    arange(k)`` (:meth:`PackedBlocks.select`): deterministic, a function of the pool alone. Their
    :attr:`~PackedBlocks.num_documents` counts the pool's documents with a target in the chosen blocks (a
    document seen in two of them, unchosen blocks between, counts once). ``pool`` itself when k = 0 or k ≥ its
    blocks (no cap); every block that holds a target when fewer than k do.
    """
    n = len(pool)
    if k <= 0 or k >= n:
        return pool
    held = pool.rows_with_targets()  # (h,) ascending
    candidates = held if held.numel() else torch.arange(n, dtype=torch.long)
    rows = candidates[spread_indices(len(candidates), k)]  # (min(h, k),)
    blocks = replace(pool.select(rows), documents=_documents_in(pool, rows))  # (k, T) fields
    read = (
        f"its first {n} blocks (the set goes on: {EVAL_POOL} × data.max_eval_blocks are read)"
        if n >= pool_blocks(k)
        else f"its {n} blocks"
    )
    logger.info(
        "%sscoring %d of %s, %s%s, %s)",
        f"{split}: " if split else "",
        len(blocks),
        read,
        _how_chosen(len(rows), held.numel(), n - held.numel()),
        counted(blocks.num_documents, "document"),
        counted(blocks.num_targets, "target"),
    )
    return blocks


def _how_chosen(chosen: int, held: int, empty: int) -> str:
    """How :func:`spread_blocks` chose ``chosen`` blocks of a pool where ``held`` blocks hold a target and
    ``empty`` hold none, up to the open parenthesis its line's counts follow."""
    if not empty:
        return "spread evenly ("
    if not held:
        return "spread evenly (none holds a target; "
    if chosen >= held:  # try-out 159, F4: "spread evenly every one that holds a target"
        return f"all {held} that hold a target ({empty} hold none; "
    return f"spread evenly over the {held} that hold a target ({empty} hold none; "


def _documents_in(pool: PackedBlocks, rows: torch.Tensor) -> int:
    """Documents of ``pool`` with a target (not in column 0) in blocks ``rows``."""
    mask = pool.target_mask[rows].clone()  # (k, T)
    mask[:, 0] = False  # column 0 carries no label after the shift
    if pool.document_starts is None:  # each block is one document
        return int(mask.any(dim=1).sum())
    starts = pool.document_starts[:].reshape(-1).long()  # (n·T,) the pool's stream
    document = torch.cumsum(starts, 0).view(len(pool), -1)[rows]  # (k, T) stream-wide document index
    return int(torch.unique(document[mask]).numel())


__all__ = ["EVAL_POOL", "pool_blocks", "spread_blocks", "spread_indices"]
