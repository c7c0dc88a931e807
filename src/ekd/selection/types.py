"""The value a selection policy returns: which flat positions of a micro-batch receive KD, with weights."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Selection:
    """Positions chosen for the KD term of one micro-batch.

    Attributes:
        rows: (M,) long — flat indices into the (B·T) positions of the micro-batch, each a valid position.
            May repeat (with-replacement policies such as ``pos_rs``).
        weights: (M,) fp32 — per-row weight w_i multiplying the row's loss (1 for plain selection).
        num_positions: B·T of the micro-batch (for diagnostics: selected fraction).
    """

    rows: Tensor
    weights: Tensor
    num_positions: int

    @classmethod
    def from_mask(cls, mask: Tensor) -> Selection:
        """Every True position of a (B, T) bool mask, with weight 1."""
        rows = mask.reshape(-1).nonzero().squeeze(-1)  # (M,)
        return cls(rows, torch.ones(rows.numel(), device=mask.device), mask.numel())

    @property
    def count(self) -> int:
        """M, the selected rows (a position drawn twice counts twice)."""
        return int(self.rows.numel())

    @property
    def positions(self) -> int:
        """The distinct positions among the rows, those that receive KD (= :attr:`count` unless rows repeat)."""
        return int(self.rows.unique().numel())

    def mask(self, shape: tuple[int, int]) -> Tensor:
        """(B, T) bool mask of the selected positions."""
        m = torch.zeros(shape[0] * shape[1], dtype=torch.bool, device=self.rows.device)
        m[self.rows] = True
        return m.view(shape)
