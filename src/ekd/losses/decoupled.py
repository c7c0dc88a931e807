"""Decoupled KD objectives: TCKD, NCKD, DKD and AT-KD (METHODS §7), per token of a causal LM.

Pure math on rows of logits, like ``ekd.losses.divergences``::

    fn(student_logits (M, V), teacher_logits (M, V), gold (M,), tau (M,) or float) -> (M,) per-token loss

Notation: teacher p, student q, gold next token y, both at temperature τ. The DKD decomposition
(Zhao et al. 2022, "Decoupled Knowledge Distillation", CVPR, arXiv 2203.08679, eq. 4) splits forward KL as

    KL(p‖q) = TCKD + (1 − p_y)·NCKD,
    TCKD = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y])          (binary target / non-target)
    NCKD = KL(p̂ ‖ q̂),  p̂_v = p_v / (1 − p_y) for v ≠ y   (non-target distributions renormalized)

where the weight (1 − p_y) is the *teacher's* non-target mass. Everything is fp32 and computed in log
space: log(1 − p_y) is the logsumexp of the non-gold log-probabilities, never ``log1p(-p_y)``, so it stays
exact when p_y → 1. ``-inf`` logits (masked vocabulary entries) contribute exactly zero. The τ² factor,
per-token weights and normalization are applied outside (STYLE 3), except in ``atkd_loss_sum``, which is
a sum by construction.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ekd.losses.divergences import LOG_ZERO, _kl_from_log, log_probs_at
from ekd.selection.base import topk_rows_mask
from ekd.selection.global_batch import gather_segments

_LN2 = math.log(2.0)


def _gold_mask(logits: Tensor, gold: Tensor) -> Tensor:
    """(M, V) bool, True at the gold column of each row."""
    return torch.zeros(logits.shape, dtype=torch.bool, device=logits.device).scatter_(
        -1, gold.long().reshape(-1, 1), True
    )


def split_gold(log_probs: Tensor, gold_mask: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Split a row's log-distribution at the gold token.

    Args:
        log_probs: (M, V) log-probabilities (log softmax at τ).
        gold_mask: (M, V) bool, one True per row.

    Returns:
        log_gold: (M,) log p_y, accurate also when p_y → 1.
        log_rest: (M,) log(1 − p_y) = logsumexp_{v≠y} log p_v (−inf where no non-gold mass).
        log_non_gold: (M, V) log p̂, the non-gold distribution renormalized (−inf at the gold column).
            Rows without non-gold mass ("dead" rows: every non-gold logit is −inf) get a finite placeholder
            (log-uniform) so gradients stay finite; callers zero their contribution with ``dead``.
        dead: (M,) bool, rows with no non-gold mass.
    """
    masked = log_probs.masked_fill(gold_mask, float("-inf"))  # (M, V) non-gold entries only
    # (M,) no non-gold mass: every other entry −inf or ``log_probs_at``'s floor for a −inf logit
    dead = (masked.detach() <= LOG_ZERO).all(-1)
    # A row of only −inf would make logsumexp's backward 0·NaN; substitute zeros there, undo it below.
    safe = torch.where(dead[:, None], torch.zeros_like(masked), masked)  # (M, V)
    lse = torch.logsumexp(safe, dim=-1)  # (M,) log(1 − p_y) on live rows
    log_rest = torch.where(dead, torch.full_like(lse, float("-inf")), lse)  # (M,)
    log_non_gold = safe - lse[:, None]  # (M, V) log p̂
    # log p_y: read off the log-softmax when p_y ≤ ½. Above ½ that value loses the digits of 1 − p_y
    # (it is exactly 0 once 1 − p_y < 6e-8 in fp32), so take log1p(−(1 − p_y)) from the non-gold mass.
    direct = log_probs.masked_fill(~gold_mask, 0.0).sum(-1)  # (M,) the one gold entry per row
    via_rest = torch.log1p(-torch.exp(log_rest.clamp(max=-_LN2)))  # (M,) clamped: finite on both branches
    log_gold = torch.where(log_rest < -_LN2, via_rest, direct)  # (M,)
    return log_gold, log_rest, log_non_gold, dead


def _binary_kl(log_a: Tensor, log_b: Tensor) -> Tensor:
    """KL between binary distributions given as (M, 2) log-probabilities, 0·log 0 = 0. → (M,)."""
    return _kl_from_log(log_a, log_b)


def _terms(
    student_logits: Tensor, teacher_logits: Tensor, gold: Tensor, tau: Tensor | float
) -> tuple[Tensor, Tensor, Tensor]:
    """(tckd (M,), nckd (M,), teacher log(1 − p_y) (M,)) at temperature τ, sharing one softmax per model."""
    gold_mask = _gold_mask(teacher_logits, gold)  # (M, V)
    log_p = log_probs_at(teacher_logits, tau)  # (M, V) teacher
    log_q = log_probs_at(student_logits, tau)  # (M, V) student
    p_gold, p_rest, p_hat, p_dead = split_gold(log_p, gold_mask)
    q_gold, q_rest, q_hat, _ = split_gold(log_q, gold_mask)
    tckd = _binary_kl(torch.stack([p_gold, p_rest], -1), torch.stack([q_gold, q_rest], -1))  # (M,)
    # NCKD: KL(p̂‖q̂). Where the teacher has no non-gold mass, p̂ is undefined and its DKD weight
    # (1 − p_y) is 0: define NCKD = 0 there. (A student with no non-gold mass against a teacher with some
    # would be +inf; finite student logits never do that.)
    nckd = _kl_from_log(p_hat, q_hat)  # (M,)
    nckd = torch.where(p_dead, torch.zeros_like(nckd), nckd)
    return tckd, nckd, p_rest


def tckd(student_logits: Tensor, teacher_logits: Tensor, gold: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    """Target-class KD: KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y]) (Zhao et al. 2022, DKD).

    Args:
        student_logits: (M, V) student logits (with grad).
        teacher_logits: (M, V) teacher logits.
        gold: (M,) long gold next-token ids.
        tau: scalar or (M,) temperature applied to both models.

    Returns:
        (M,) fp32 per-token TCKD (no τ² factor).
    """
    return _terms(student_logits, teacher_logits, gold, tau)[0]


def nckd(student_logits: Tensor, teacher_logits: Tensor, gold: Tensor, tau: Tensor | float = 1.0) -> Tensor:
    """Non-target-class KD: KL(p̂ ‖ q̂) with the gold logit masked to −inf in both models (DKD).

    p̂ = softmax over v ≠ y of z_t/τ, q̂ likewise for the student. Rows where the teacher has no non-gold
    mass give 0. Shapes as in ``tckd``; returns (M,) fp32.
    """
    return _terms(student_logits, teacher_logits, gold, tau)[1]


def dkd(
    student_logits: Tensor,
    teacher_logits: Tensor,
    gold: Tensor,
    tau: Tensor | float = 1.0,
    beta: float = 8.0,
) -> Tensor:
    """Decoupled KD, per token: TCKD + β·NCKD (Zhao et al. 2022, arXiv 2203.08679; α = 1 here).

    β (``method.dkd_beta``, default 8) replaces the coupled weight (1 − p_y) of plain KD; with β = 1 − p_y
    per row this is exactly forward KL. Shapes as in ``tckd``; returns (M,) fp32.
    """
    t, n, _ = _terms(student_logits, teacher_logits, gold, tau)
    return t + beta * n


def atkd_terms(
    student_logits: Tensor, teacher_logits: Tensor, gold: Tensor, tau: Tensor | float = 1.0
) -> tuple[Tensor, Tensor, Tensor]:
    """The per-token pieces of AT-KD (Zhong et al. 2024, ACL, "Revisiting Knowledge Distillation for
    Autoregressive Language Models").

    Returns:
        tckd: (M,) TCKD at τ.
        nckd: (M,) NCKD at τ.
        uncertainty: (M,) detached u = 1 − p_y of the **teacher** at τ = 1 (its non-target mass), the
            difficulty score that splits easy from hard tokens. Verified against the authors' code
            (WHU-ZQH/ATKD ``distill_trainer.py``: ``pnt_tea``, teacher non-target probability).
    """
    t, n, _ = _terms(student_logits, teacher_logits, gold, tau)
    with torch.no_grad():
        log_p1 = log_probs_at(teacher_logits, 1.0)  # (M, V) teacher at τ = 1
        _, log_rest1, _, _ = split_gold(log_p1, _gold_mask(teacher_logits, gold))
        uncertainty = log_rest1.exp()  # (M,) 1 − p_y, accurate even when p_y → 1
    return t, n, uncertainty


def top_fraction_mask(scores: Tensor, fraction: float) -> Tensor:
    """(M,) bool: the ⌈fraction·M⌉ highest scores, ties broken by the lower index (deterministic).

    fraction = 0 selects none, 1 selects all. The ⌈k·n⌉ rule and its ranking are those of the selection
    policies (``ekd.selection.base.topk_mask``), so every "top fraction" in the library counts alike.
    The rule is batch-scoped: under torch.distributed the scores of every rank are gathered (a collective:
    all ranks call it) and each rank keeps its part of the global top ⌈fraction·ΣM⌉, as one process would.
    """
    if not 0.0 <= fraction <= 1.0:
        raise ValueError(f"fraction must be in [0, 1], got {fraction}")
    all_scores, own = gather_segments(scores.detach().reshape(-1).float())  # (Σ_ranks M,)
    if fraction == 0.0 or all_scores.numel() == 0:
        return torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    row = all_scores.reshape(1, -1)  # (1, ΣM)
    mask = topk_rows_mask(row, torch.ones_like(row, dtype=torch.bool), fraction)[0]  # (ΣM,)
    return mask[own].reshape(scores.shape)


def atkd_hard_mask(uncertainty: Tensor, fraction: float = 0.5) -> Tensor:
    """AT-KD hard tokens: the top ⌈fraction·M⌉ of ``uncertainty`` (M,) → (M,) bool.

    The authors' code splits at the median (hard = u ≥ median, so ties can make it more than half); we take
    exactly ⌈fraction·M⌉ with index tie-breaking so the count is fixed.
    """
    return top_fraction_mask(uncertainty, fraction)


def atkd_loss_sum(
    student_logits: Tensor,
    teacher_logits: Tensor,
    gold: Tensor,
    tau: Tensor | float,
    hard_mask: Tensor,
    lam: float = 0.2,
    weights: Tensor | None = None,
) -> Tensor:
    """AT-KD loss summed over rows: λ·Σ_easy NCKD + (1 − λ)·Σ_hard (TCKD + NCKD) (METHODS §7).

    Easy tokens (low teacher uncertainty) skip TCKD, whose gradient mostly pushes the already-confident
    gold probability; hard tokens get both terms. The caller divides by the global valid-token count N once
    (``ekd.losses.reduce.normalize``). The authors' code instead averages the easy and hard parts over their
    own token counts, which with a 50/50 split only rescales the loss by ~2.

    Args:
        student_logits: (M, V) student logits (with grad).
        teacher_logits: (M, V) teacher logits.
        gold: (M,) gold ids.
        tau: scalar or (M,) temperature.
        hard_mask: (M,) bool, from ``atkd_hard_mask(atkd_terms(...)[2])``.
        lam: λ, weight of the easy part (``method.atkd_lambda``, default 0.2).
        weights: optional (M,) per-row scale (e.g. w_i·τ_i²), applied to both parts; None = 1.

    Returns:
        Scalar fp32 sum.
    """
    t, n, _ = _terms(student_logits, teacher_logits, gold, tau)
    hard = hard_mask.to(device=t.device, dtype=torch.bool)
    per_row = torch.where(hard, (1.0 - lam) * (t + n), lam * n)  # (M,)
    if weights is not None:
        per_row = weights.float() * per_row
    return per_row.sum()


__all__ = [
    "tckd",
    "nckd",
    "dkd",
    "atkd_terms",
    "atkd_hard_mask",
    "atkd_loss_sum",
    "top_fraction_mask",
    "split_gold",
]
