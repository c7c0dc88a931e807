"""Batches from packed blocks: an endless, resumable training loader and an ordered eval iterator.

The training order of epoch ``e`` is a permutation drawn from a ``torch.Generator`` seeded from
``(seed, e)`` alone, so it never depends on how many batches were drawn before. An optimizer step draws its
micro-batches together (:meth:`BlockLoader.next_step`) from one epoch. The loader's state is a few integers,
``{"epoch", "position", ...}``; a loader restored from it yields exactly the batches the uninterrupted one
would have.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from ekd.config import ConfigError
from ekd.data.collate import Batch, collate
from ekd.data.packing import PackedBlocks
from ekd.words import counted

log = logging.getLogger(__name__)


def blocks_with_targets(blocks: PackedBlocks) -> torch.Tensor:
    """(n,) the training blocks a step can learn from (:meth:`~ekd.data.packing.PackedBlocks.rows_with_targets`);
    the others are left out of the loader's order, said in one line (try-out 24: tool-heavy chat rows cut into
    128-token blocks left 150 of 282 blocks without a target, and their steps moved the weights on nothing).

    Raises:
        ConfigError: no block holds a target.
    """
    with_targets = blocks.rows_with_targets()
    if not with_targets.numel():
        raise ConfigError(
            f"train: none of its {counted(len(blocks), 'block')} holds a target (only prompt, tool or template "
            "tokens); raise data.block_length so that answers share blocks with their prompts"
        )
    if (left := len(blocks) - with_targets.numel()) > 0:
        log.info(
            "train: %s of %s hold no target (only prompt, tool or template tokens) and are not trained on; "
            "a larger data.block_length keeps more prompts beside their answers",
            left,
            counted(len(blocks), "block"),
        )
    return with_targets


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit generator seed that depends only on ``(seed, epoch)``."""
    digest = hashlib.sha256(f"ekd-loader:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)


class BlockLoader:
    """Endless iterator of training Batches over (a subset of) packed blocks.

    Args:
        blocks: The packed training set.
        batch_size: Rows per batch (B).
        seed: Seed of the per-epoch permutation (``run.seed``).
        shuffle: Permute each epoch; False = ascending order every epoch.
        drop_last: Skip an epoch's last incomplete batch (keeps every batch B rows); with False the
            last batch of an epoch is smaller.
        indices: Restrict to these block indices (sample selection); default all blocks. Their order
            does not matter: they are sorted.
        step_batches: Batches per optimizer step (``train.grad_accum_steps``), drawn together by
            :meth:`next_step`: with ``drop_last`` an epoch ends when fewer than ``step_batches × batch_size`` rows
            are left, so a step never spans two epochs and every split of one step's rows into micro-batches
            and ranks draws the same rows (try-out 28: 1 rank × 4 micro-batches of 4 dropped no block at an
            epoch's end where 16 × 1 dropped 4, and trained on other blocks from then on).

    Raises:
        ConfigError: No blocks, or ``drop_last`` with fewer blocks than ``batch_size``.
    """

    def __init__(
        self,
        blocks: PackedBlocks,
        batch_size: int,
        seed: int,
        shuffle: bool = True,
        drop_last: bool = True,
        indices: torch.Tensor | Sequence[int] | None = None,
        step_batches: int = 1,
    ) -> None:
        if batch_size < 1:
            raise ConfigError(f"train.micro_batch_size must be ≥ 1, got {batch_size}")
        if indices is None:
            pool = torch.arange(len(blocks), dtype=torch.long)
        else:
            pool = torch.as_tensor(indices, dtype=torch.long).unique(sorted=True)
            if pool.numel() and (pool.min() < 0 or pool.max() >= len(blocks)):
                raise ValueError(
                    f"indices must lie in [0, {len(blocks)}), got min {int(pool.min())} max {int(pool.max())}"
                )
        if pool.numel() == 0:
            raise ConfigError("no training blocks to load; add data or lower data.block_length")
        if drop_last and pool.numel() < batch_size:
            raise ConfigError(
                f"train.micro_batch_size={batch_size} is larger than the {pool.numel()} training blocks; "
                "lower it, lower data.block_length or add data"
            )
        self.blocks = blocks
        self.batch_size = batch_size
        self.seed = seed
        self.shuffle = shuffle
        self.drop_last = drop_last
        self.indices = pool  # (n,) sorted block indices this loader draws from
        self.step_batches = step_batches
        self.step_rows = step_batches * batch_size  # rows an epoch must have left for a step to start in it
        self.epoch = 0
        self.position = 0  # rows of the current epoch's order already yielded
        self._order: torch.Tensor | None = None
        self._order_epoch = -1

    def __len__(self) -> int:
        """Batches per epoch."""
        n = self.indices.numel()
        return n // self.batch_size if self.drop_last else -(-n // self.batch_size)

    def subset(self, indices: torch.Tensor | Sequence[int]) -> BlockLoader:
        """A fresh loader (epoch 0) with the same settings over only ``indices`` (block indices)."""
        return BlockLoader(
            self.blocks, self.batch_size, self.seed, self.shuffle, self.drop_last, indices, self.step_batches
        )

    def epoch_order(self, epoch: int) -> torch.Tensor:
        """(n,) block indices in the order of ``epoch``."""
        if not self.shuffle:
            return self.indices
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, epoch))
        return self.indices[torch.randperm(self.indices.numel(), generator=generator)]

    @property
    def steps_within_epochs(self) -> bool:
        """Whether a step's rows all come from one epoch (False: a run of an older ekd, restored from a checkpoint
        without ``step_rows``, whose epochs end per batch and whose steps may span two)."""
        return self.step_rows == self.step_batches * self.batch_size

    def next_step(self) -> list[Batch]:
        """The ``step_batches`` Batches of one optimizer step: consecutive rows of one epoch's order, the next
        epoch begun first when fewer than ``step_rows`` rows are left (``drop_last``)."""
        self._end_epoch_if_short(self.step_rows)
        return [self.next_batch() for _ in range(self.step_batches)]

    def next_batch(self) -> Batch:
        """The next Batch, moving to the next epoch when the current one is used up."""
        self._end_epoch_if_short(self.batch_size)
        if self._order_epoch != self.epoch:
            self._order = self.epoch_order(self.epoch)
            self._order_epoch = self.epoch
        assert self._order is not None
        rows = self._order[self.position : self.position + self.batch_size]  # (B,)
        self.position += rows.numel()
        return collate(self.blocks, rows)

    def _end_epoch_if_short(self, rows: int) -> None:
        """Begin the next epoch when this one is used up, or has fewer than ``rows`` left (``drop_last``)."""
        remaining = self.indices.numel() - self.position
        if remaining <= 0 or (self.drop_last and remaining < rows):
            self.epoch += 1
            self.position = 0

    def __iter__(self) -> Iterator[Batch]:
        while True:
            yield self.next_batch()

    def state_dict(self) -> dict[str, Any]:
        """``{"epoch", "position", "blocks", "blocks_sha256", "step_rows"}``: enough to resume exactly (with the
        same blocks and seed); ``blocks``, how many blocks the order is drawn from, and ``blocks_sha256``, which
        (:meth:`indices_sha256`), tell a checkpoint of another draw apart; ``step_rows``, the rows a step needs
        left in an epoch, keeps an older run's epoch rule (below)."""
        return {
            "epoch": self.epoch,
            "position": self.position,
            "blocks": self.indices.numel(),
            "blocks_sha256": self.indices_sha256(),
            "step_rows": self.step_rows,
        }

    def indices_sha256(self) -> str:
        """sha256 of the block indices the order is drawn from (int64, little-endian): the same count of other
        blocks — a sample selection edited or damaged since the checkpoint (try-out 41) — is another draw."""
        return hashlib.sha256(self.indices.to(torch.int64).cpu().numpy().astype("<i8").tobytes()).hexdigest()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` output."""
        missing = {"epoch", "position"} - set(state)
        if missing:
            raise ValueError(f"loader state is missing {sorted(missing)}")
        epoch, position = int(state["epoch"]), int(state["position"])
        if epoch < 0 or not 0 <= position <= self.indices.numel():
            raise ValueError(f"loader state out of range for {self.indices.numel()} blocks: {state}")
        if "blocks" in state and int(state["blocks"]) != self.indices.numel():  # absent: an older checkpoint
            raise ValueError(
                f"the loader drew from {state['blocks']} blocks, this run from {self.indices.numel()}"
            )
        if state.get("blocks_sha256", self.indices_sha256()) != self.indices_sha256():
            raise ValueError(f"the loader drew from other blocks than this run's {self.indices.numel()}")
        self.epoch, self.position = epoch, position
        # a checkpoint of an ekd that ended epochs per batch records no step_rows: it continues with that rule
        self.step_rows = int(state.get("step_rows", self.batch_size))


def iter_eval(blocks: PackedBlocks, batch_size: int, max_blocks: int | None = None) -> Iterator[Batch]:
    """Batches over the blocks in order, without shuffling; the last batch may be smaller.

    Args:
        blocks: An eval set.
        batch_size: Rows per batch.
        max_blocks: Only the first this many blocks (``None`` or 0 = all).
    """
    n = len(blocks) if not max_blocks else min(max_blocks, len(blocks))
    for start in range(0, n, batch_size):
        yield collate(blocks, torch.arange(start, min(start + batch_size, n)))
