"""Forward-KL estimator for sparse teacher targets (top-K, RS-KD; METHODS §2).

    loss_i = Σ_k t̂_ik (log t̂_ik − log q_i[id_ik])             (KL form; same gradient as −Σ t̂ log q)
           + t_tail,i (log t_tail,i − log Σ_{v∉ids} q_i[v])    (ghost top-K only)

q is the student's softmax over the **full** vocabulary at temperature τ: re-softmaxing the student over
the sampled ids is biased (RS-KD, arXiv 2503.16870) and never done. Padding slots have t̂ = 0 and
contribute nothing (their ids may be anything valid, duplicates included).

RS targets: E[t̂] = p, so the gradient w.r.t. student logits, q·Σ_k t̂_k − t̂ (at τ=1), is unbiased for the
full-KD gradient q − p — also with importance-weighted (unnormalized, Σ t̂ ≠ 1) targets. The *value*
Σ t̂ log(t̂/q) is KL(t̂‖q) for count targets: ≥ 0 but biased upwards as an estimate of KL(p‖q). Pass
``teacher_entropy`` = H(p) (stored in the cache, cheap online) to get the cross-entropy form
−Σ t̂ log q − H(p) instead, whose expectation over draws is exactly KL(p‖q), with the same gradient.
Online RS targets are drawn from the teacher at the student's τ (so E[t̂] = p_τ); cached ones at τ=1, which is
why a cache with RS targets is refused at τ ≠ 1 (METHODS §1.3).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ekd.losses.divergences import LOG_ZERO, log_probs_at
from ekd.losses.targets import SparseTarget


def sparse_forward_kl(
    student_logits: Tensor,
    target: SparseTarget,
    tau: Tensor | float = 1.0,
    teacher_entropy: Tensor | None = None,
) -> Tensor:
    """Per-row forward-KL estimate against sparse targets.

    Args:
        student_logits: (M, V) student logits (grad flows through them).
        target: ids (M, K), probs (M, K) ≥ 0 (0 = padding), optional ghost ``tail`` (M,).
        tau: temperature of the student softmax, float or (M,).
        teacher_entropy: optional (M,) H(p) of the distribution the targets estimate; switches the value to
            the unbiased cross-entropy form −Σ t̂ log q − H(p) (same gradient). Not with a ghost tail.

    Returns:
        (M,) fp32 per-row loss.
    """
    if target.ids.shape != target.probs.shape or target.ids.shape[0] != student_logits.shape[0]:
        raise ValueError(
            f"sparse target ids {tuple(target.ids.shape)} / probs {tuple(target.probs.shape)} do not match "
            f"student logits {tuple(student_logits.shape)} (rows must agree)"
        )
    log_q = log_probs_at(student_logits, tau)  # (M, V)
    ids = target.ids.long()
    log_q_at = log_q.gather(-1, ids)  # (M, K) student log-probs at the target ids
    t = target.probs.float()  # (M, K)
    present = ~(t <= 0)  # padding is t ≤ 0; a NaN value (a NaN teacher) is kept, so the loss is NaN
    # a target id the student gives probability 0 exactly (-inf logit): the KL is +inf, as on the chunked path
    outside_support = (present & (log_q_at <= LOG_ZERO)).any(-1)  # (M,)
    if teacher_entropy is not None:
        if target.tail is not None:
            raise ValueError("teacher_entropy (cross-entropy form) does not apply to ghost top-K targets")
        cross = torch.where(present, -t * log_q_at, torch.zeros_like(t)).sum(-1)  # (M,)
        return (cross - teacher_entropy.float()).masked_fill(outside_support, float("inf"))
    safe_t = torch.where(present, t, torch.ones_like(t))
    loss = torch.where(present, t * (safe_t.log() - log_q_at), torch.zeros_like(t)).sum(-1)  # (M,)
    if target.tail is not None:
        tail = target.tail.float()  # (M,)
        has_tail = tail > 0
        # student tail mass Σ_{v∉ids} q_v by logsumexp over the complement: exact even when Σ_K q → 1.
        # scatter_add (not scatter) so duplicate padding ids never overwrite a present id.
        hits = torch.zeros_like(log_q).scatter_add_(-1, ids, (present & has_tail[:, None]).float())  # (M, V)
        log_tail_q = torch.logsumexp(log_q.masked_fill(hits > 0, float("-inf")), dim=-1)  # (M,)
        safe_tail = torch.where(has_tail, tail, torch.ones_like(tail))
        loss = loss + torch.where(has_tail, tail * (safe_tail.log() - log_tail_q), torch.zeros_like(tail))
        outside_support = outside_support | (has_tail & (log_tail_q <= LOG_ZERO))  # no student tail mass
    return loss.masked_fill(outside_support, float("inf"))
