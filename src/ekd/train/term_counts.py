"""How many rows each loss term has in a micro-batch, planned from the candidate mask before any forward pass.

DESIGN decision 4: every term is a sum over its own rows divided by the global count of those rows. The KD
count is the policy's ``planned_count``; the CE term with ``method.ce_on=selected`` runs on the rows the
selection returns, whose number is the same for every policy except ``pos_rs``: its KD count is the candidate
count (its importance weights make Σ w·D estimate the sum over all candidates), while its selection returns
K_i = ⌈k·n_i⌉ draws per sequence (a position drawn twice is two rows). The EGAD feature term runs on the
hard rows, the top ⌈f·M⌉ of a micro-batch's M selected rows by teacher entropy.
"""

from __future__ import annotations

from torch import Tensor

from ekd.selection.base import SelectionPolicy, StepContext, ceil_count, ceil_count_scalar
from ekd.selection.policies import PositionSampling


def planned_selection_rows(policy: SelectionPolicy, candidates: Tensor, ctx: StepContext) -> float:
    """Rows ``policy.select`` will return for a (B, T) candidate mask: exact for the count rules and pos_rs,
    the target k·N for the threshold rules (gls, linucb), as their ``planned_count``."""
    if isinstance(policy, PositionSampling):
        return float(ceil_count(policy.fraction, candidates.sum(-1)).sum())  # Σ_i K_i draws
    return policy.planned_count(candidates, ctx)


def planned_hard_rows(hard_fraction: float, selection_rows: float) -> float:
    """Rows of the feature term in a micro-batch with ``selection_rows`` selected rows: ⌈f·M⌉ (at least 1 when
    M > 0), 0 for f = 0 — the count of ``ekd.losses.features.hard_token_mask``."""
    if hard_fraction <= 0:
        return 0.0
    return float(ceil_count_scalar(hard_fraction, int(round(selection_rows))))


__all__ = ["planned_hard_rows", "planned_selection_rows"]
