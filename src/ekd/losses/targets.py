"""In-memory forms of what the teacher delivers at M selected rows (the "how" of METHODS §2).

``DenseTarget`` carries the teacher's hidden states at the rows and its output head, so teacher logits are
computed only where needed (and, on the chunked path, one chunk at a time). ``SparseTarget`` carries K
(id, probability) pairs per row — top-K or Random-Sampling targets, online or read from a cache.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ekd.losses.logit_transform import IDENTITY, LogitTransform
from ekd.losses.matmul import RowBuffer, compute_dtype, gemm_operand, matmul_fp32


@dataclass
class Head:
    """An output head restricted to the shared vocabulary: logits = transform(hidden @ weight.T (+ bias)).

    weight (V, D), bias (V,) or None. V is the tokenizer length (padded rows already sliced off).
    transform: what the model applies after its GEMM (Granite's scaling, Gemma-2's soft-cap, ...;
    ``ekd.models.head_transform``), so that head(h) equals the model's own ``forward(...).logits``.
    """

    weight: Tensor
    bias: Tensor | None = None
    transform: LogitTransform = IDENTITY

    def __call__(self, hidden: Tensor, buffer: RowBuffer | None = None) -> Tensor:
        """(M, D) → (M, V) fp32 logits as the model computes them: operands in the weight's dtype (the
        autocast dtype under autocast, ``ekd.losses.matmul.compute_dtype``), fp32 accumulation and output,
        then the model's post-head transform (scale, soft-cap). ``buffer``: no-grad calls write the product into
        it (the returned logits may be a view of it, valid until its next ``take``)."""
        op = compute_dtype(self.weight)
        w = gemm_operand(self.weight, op)  # (V, D)
        into = None
        if buffer is not None and not torch.is_grad_enabled():
            into = buffer.take(hidden.shape[0], w.shape[0], hidden.device)  # (M, V)
        logits = matmul_fp32(gemm_operand(hidden, op), w.T, into)  # (M, V) fp32
        if self.bias is not None:
            logits = logits + self.bias if into is None else logits.add_(self.bias)
        return self.transform(logits)

    @property
    def vocab_size(self) -> int:
        return int(self.weight.shape[0])


@dataclass
class DenseTarget:
    """Full teacher distribution at M rows, as teacher hidden states + teacher head (no grad)."""

    hidden: Tensor  # (M, Dt)
    head: Head

    def logits(self, start: int = 0, end: int | None = None, buffer: RowBuffer | None = None) -> Tensor:
        """Teacher logits of rows [start, end): (m, V); ``buffer`` as in ``Head.__call__``."""
        with torch.no_grad():
            return self.head(self.hidden[start:end], buffer)

    def rows(self, index: Tensor) -> DenseTarget:
        return DenseTarget(self.hidden[index], self.head)

    def __len__(self) -> int:
        return int(self.hidden.shape[0])


@dataclass
class SparseTarget:
    """K (token id, target probability) pairs per row; padding slots have probability 0.

    Attributes:
        ids: (M, K) long token ids (any valid id at padding slots).
        probs: (M, K) fp32 target values t̂ (RS: c/N, or importance-weighted; top-K: tail-handled probs).
        tail: (M,) fp32 or None — teacher tail mass 1 − Σ_K p for the 'ghost' top-K mode, matched against
            the student's tail mass 1 − Σ_K q.
        drawn: (M,) int64 or None — RS targets drawn online: the number of distinct ids drawn at each row
            (its slots with a count > 0; ``SampledTarget.num_unique``); None for top-K and cached targets.
    """

    ids: Tensor
    probs: Tensor
    tail: Tensor | None = None
    drawn: Tensor | None = None

    def rows(self, index: Tensor) -> SparseTarget:
        return SparseTarget(
            self.ids[index],
            self.probs[index],
            None if self.tail is None else self.tail[index],
            None if self.drawn is None else self.drawn[index],
        )

    def narrowed(self) -> SparseTarget:
        """The same target without the trailing slots that are padding (probability 0) in every row: (M, K') with
        K' the last slot any row uses. An RS target drawn online is that wide (the widest row's distinct draws);
        cached RS rows read at a selection of positions are cut to it, so that both paths hand the loss the same
        tensors: a wider padding alone changes the sums' last bits, and a student-entropy selection then flips
        a near-tie a few steps later (try-out 61, F1)."""
        used = (self.probs != 0).any(0).nonzero()  # (K_used, 1) slots some row uses
        width = int(used.max()) + 1 if used.numel() else 0
        if width == self.probs.shape[1]:
            return self
        return SparseTarget(self.ids[:, :width], self.probs[:, :width], self.tail, self.drawn)

    def slice(self, start: int, end: int) -> SparseTarget:
        return SparseTarget(
            self.ids[start:end],
            self.probs[start:end],
            None if self.tail is None else self.tail[start:end],
            None if self.drawn is None else self.drawn[start:end],
        )

    def __len__(self) -> int:
        return int(self.ids.shape[0])


Target = DenseTarget | SparseTarget
