"""Forward-KL estimator for sparse teacher targets (top-K, RS-KD; METHODS §2).

    loss_i = Σ_k t̂_ik (log t̂_ik − log q_i[id_ik])            (KL form; same gradient as −Σ t̂ log q)
           + t_tail,i (log t_tail,i − log(1 − Σ_k q_i[id_ik]))  (ghost top-K only)

q is the student's softmax over the **full** vocabulary at temperature τ: re-softmaxing the student over
the sampled ids is biased (RS-KD, arXiv 2503.16870) and never done. E[t̂] = p for RS targets, so the
gradient w.r.t. student logits is unbiased. Padding slots have t̂ = 0 and contribute nothing.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ekd.losses.divergences import log_probs_at
from ekd.losses.targets import SparseTarget


def sparse_forward_kl(student_logits: Tensor, target: SparseTarget, tau: Tensor | float = 1.0) -> Tensor:
    """Per-row forward-KL estimate against sparse targets. student_logits (M, V) → (M,)."""
    log_q = log_probs_at(student_logits, tau)  # (M, V)
    log_q_at = log_q.gather(-1, target.ids)  # (M, K) student log-probs at the target ids
    t = target.probs.float()  # (M, K)
    present = t > 0
    safe_t = torch.where(present, t, torch.ones_like(t))
    loss = torch.where(present, t * (safe_t.log() - log_q_at), torch.zeros_like(t)).sum(-1)  # (M,)
    if target.tail is not None:
        # student tail mass 1 − Σ_K q over the (present) target ids, in log space for stability
        log_in = torch.logsumexp(log_q_at.masked_fill(~present, float("-inf")), dim=-1)  # (M,)
        log_tail_q = torch.log1p(-log_in.exp().clamp(max=1.0 - 1e-7))
        tail = target.tail.float()
        has_tail = tail > 0
        safe_tail = torch.where(has_tail, tail, torch.ones_like(tail))
        loss = loss + torch.where(has_tail, tail * (safe_tail.log() - log_tail_q), torch.zeros_like(tail))
    return loss
