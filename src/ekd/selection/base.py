"""The selection-policy interface and the helpers every policy shares (METHODS §4).

- ``StepContext``: what a policy may read about the current optimizer step.
- ``SelectionPolicy``: the base class (``select``, ``planned_count``, ``observe``, state, diagnostics).
- Counting and ranking helpers, so the "⌈k·n⌉ highest / lowest of each row" rule has one implementation.
- Batch-scoped rules (``topk_mask`` with ``per="batch"``) rank the global micro-batch: under
  ``torch.distributed`` they gather every rank's scores (``ekd.selection.global_batch``), so W ranks select
  what one process with the same micro-batch selects.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor

from ekd.errors import ConfigError
from ekd.selection.draws import RowDraws
from ekd.selection.global_batch import gather_segments
from ekd.selection.types import Selection

# Slack for ⌈k·n⌉ / ⌊x⌋ on products that should be integers but are not in binary (0.1·30 = 3.0000000000000004).
COUNT_SLACK = 1e-6


@dataclass
class StepContext:
    """What a policy may read about the current step.

    Attributes:
        step: optimizer steps completed before this one (0-based); all micro-batches of a step share it.
        total_steps: optimizer steps of the whole run (``train.max_steps``).
        generator: randomness of decisions taken once per micro-batch (the EXP3 budget), seeded by the
            trainer from (seed, step, global micro-batch index): every rank holds the same one. May live on
            the CPU or on the scores' device.
        vocab_size: V, for scores normalized by log V.
        features: the per-token statistics dict of the step (name → (B, T) fp32); the LinUCB bandit reads its
            token features here.
        rows: per-row random streams keyed by sample id (``pos_rs`` draws); None outside training.
    """

    step: int
    total_steps: int
    generator: torch.Generator
    vocab_size: int
    features: dict[str, Tensor] = field(default_factory=dict)
    rows: RowDraws | None = None

    def row_uniforms(self, stream: str, num: int, device: torch.device | str | None = None) -> Tensor:
        """(B, num) float64 uniforms of ``stream`` per row (:class:`ekd.selection.draws.RowDraws`)."""
        if self.rows is None:
            raise ValueError(f"'{stream}' draws per row: pass StepContext(rows=RowDraws(key, sample_ids))")
        return self.rows.uniforms(stream, num, device)


class SelectionPolicy:
    """Base class: which valid positions of a micro-batch receive the KD term, with what weight.

    Subclasses implement ``select`` and ``planned_count``; stateful ones also ``observe``, ``state_dict``
    and ``load_state_dict``. ``select`` never returns an ignored position.
    """

    name: str = ""
    needs_scores: bool = True
    """True if ``select`` reads the (B, T) scores of ``compute_scores``; False means it may be passed None."""

    def select(self, scores: Tensor | None, valid: Tensor, ctx: StepContext) -> Selection:
        """Choose KD positions of one micro-batch.

        Args:
            scores: (B, T) fp32 detached position scores (0 at invalid positions), or None when
                ``needs_scores`` is False.
            valid: (B, T) bool, label ≠ -100.
            ctx: the step context.

        Returns:
            Selection with rows (M,) flat indices into B·T (valid positions only) and weights (M,) fp32.
        """
        raise NotImplementedError

    def planned_count(self, valid: Tensor, ctx: StepContext) -> float:
        """KD tokens a micro-batch contributes to the loss normalizer, from the mask alone (no forward).

        Under torch.distributed ``valid`` is the mask of the *global* micro-batch (every rank's rows, gathered
        by the trainer), so batch-wide rules count ⌈k·N⌉ over all ranks and every rank gets the same total.
        """
        raise NotImplementedError

    def observe(self, kd_loss: float | None = None, **feedback: Tensor | float) -> None:
        """Feedback once after each optimizer step (LATF: the all-reduced mean KD loss; bandit: KL drops)."""

    def state_dict(self) -> dict:
        """Plain tensors and Python scalars only (loadable with ``torch.load(weights_only=True)``)."""
        return {"policy": self.name}

    def load_state_dict(self, state: dict) -> None:
        check_state_name(state, self.name)

    def diagnostics(self) -> dict[str, float]:
        """The policy's own state for logging (``select/...``); computed lazily here, not in the hot path. The
        step's counts (``select/count``, ``select/ratio``) come from the trainer's global sums, not from here."""
        return {}

    def micro_batch_sums(self) -> dict[str, float]:
        """Figures of the last ``select`` that the trainer adds over the step's micro-batches and ranks (keys
        ending ``_min`` / ``_max`` take the extreme, NaN when this micro-batch has none), so what is logged from
        them covers the whole step, as ``select/count`` does. Called once per micro-batch, after ``select``."""
        return {}

    # -- helpers for subclasses --
    def _require_scores(self, scores: Tensor | None, valid: Tensor) -> Tensor:
        if scores is None:
            raise ValueError(
                f"selection policy '{self.name}' needs position scores; pass compute_scores(...)"
            )
        if scores.shape != valid.shape:
            raise ValueError(
                f"scores shape {tuple(scores.shape)} does not match the mask {tuple(valid.shape)}"
            )
        return scores


def finite_only(metrics: dict[str, float]) -> dict[str, float]:
    """Drop values that are not finite yet (e.g. a loss EMA before the first loss): loggers expect numbers."""
    return {k: v for k, v in metrics.items() if math.isfinite(v)}


def check_state_name(state: dict, name: str) -> None:
    """Refuse to load a state saved by another policy (a config change between save and resume)."""
    saved = state.get("policy")
    if saved != name:
        raise ConfigError(
            f"selection state was saved by policy '{saved}' but method.policy is '{name}'; "
            "resume with the same method.policy or start a new run"
        )


# ---------------------------------------------------------------------------------------------------------
# Counting and ranking
# ---------------------------------------------------------------------------------------------------------


def ceil_count(fraction: float, n: Tensor) -> Tensor:
    """⌈fraction·n⌉, at least 1 where n > 0, at most n. n: long (R,) → long (R,)."""
    k = torch.ceil(n.double() * fraction - COUNT_SLACK).long()
    k = torch.where(n > 0, k.clamp(min=1), torch.zeros_like(k))
    return torch.minimum(k, n)


def ceil_count_scalar(fraction: float, n: int) -> int:
    """Python-int version of ``ceil_count`` (for ``planned_count`` of batch-wide rules)."""
    if n <= 0:
        return 0
    return min(n, max(1, math.ceil(n * fraction - COUNT_SLACK)))


def rank_within_rows(scores: Tensor, valid: Tensor, descending: bool) -> Tensor:
    """Rank of every valid position among the valid positions of its row.

    Valid positions are ordered by score (descending or ascending), ties broken by the lower index
    (stable sort), so selection is deterministic. Invalid positions get ranks ≥ n_r (after all valid ones),
    whatever their score, so ``valid & (rank < k)`` never picks an ignored position.

    Args:
        scores: (R, C) scores (garbage at invalid positions is ignored).
        valid: (R, C) bool.
        descending: rank 0 = highest score if True, lowest if False.

    Returns:
        (R, C) long ranks.
    """
    key = scores.float().masked_fill(~valid, 0.0)
    order = torch.sort(key, dim=-1, descending=descending, stable=True).indices  # (R, C) by score
    valid_sorted = valid.gather(-1, order)  # (R, C) validity in score order
    regroup = torch.sort((~valid_sorted).to(torch.uint8), dim=-1, stable=True).indices  # (R, C) valid first
    order = order.gather(-1, regroup)  # (R, C) positions: valid by score, then invalid
    ranks = torch.empty_like(order)
    arange = torch.arange(order.shape[-1], device=order.device).expand_as(order)  # (R, C)
    ranks.scatter_(-1, order, arange)
    return ranks


def topk_rows_mask(scores: Tensor, valid: Tensor, fraction: float) -> Tensor:
    """(R, C) bool: the ⌈k·n_r⌉ highest valid scores of each row r (at least 1 if any), ties → lower index."""
    counts = ceil_count(fraction, valid.sum(-1))  # (R,)
    ranks = rank_within_rows(scores, valid, descending=True)  # (R, C)
    return valid & (ranks < counts[:, None])


def topk_mask(scores: Tensor, valid: Tensor, fraction: float, per: str) -> Tensor:
    """(B, T) bool: the ⌈k·n_i⌉ highest valid scores per sequence, or ⌈k·N⌉ over the batch (≥ 1 if any).

    ``per="batch"`` ranks the global micro-batch: under torch.distributed the scores of every rank are
    gathered (a collective: all ranks call it) and each rank keeps its rows of the global top ⌈k·N⌉.
    """
    if per == "sequence":
        return topk_rows_mask(scores, valid, fraction)
    if per != "batch":
        raise ConfigError(f"method.select_per must be 'sequence' or 'batch', got '{per}'")
    flat = torch.stack([scores.detach().reshape(-1).double(), valid.reshape(-1).double()], -1)  # (B·T, 2)
    both, own = gather_segments(flat)  # (Σ_ranks B·T, 2) in the global micro-batch's order
    mask = topk_rows_mask(both[None, :, 0], both[None, :, 1] > 0, fraction)[0]  # (Σ B·T,)
    return mask[own].reshape(valid.shape)  # (B, T) this rank's rows


def topk_planned(valid: Tensor, fraction: float, per: str) -> float:
    """Exact count of ``topk_mask`` from the mask alone (for ``per="batch"``, pass the global micro-batch's)."""
    if per == "batch":
        return float(ceil_count_scalar(fraction, int(valid.sum())))
    return float(ceil_count(fraction, valid.sum(-1)).sum())


def empty_selection(valid: Tensor) -> Selection:
    return Selection(
        torch.zeros(0, dtype=torch.long, device=valid.device),
        torch.zeros(0, dtype=torch.float32, device=valid.device),
        valid.numel(),
    )
