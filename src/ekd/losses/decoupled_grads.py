"""TCKD + NCKD of a chunk of rows (DKD, AT-KD) with its gradient w.r.t. the student logits, in closed form.

The fused head (``ekd.losses.chunked.fused_linear_loss``) takes a chunk loss returning the loss sum and
∂/∂z_s (``ekd.losses.logit_grads``' contract); this one serves the decoupled objectives of
``ekd.losses.decoupled`` (Zhao et al. 2022, arXiv 2203.08679, eq. 4; AT-KD: Zhong et al. 2024, ACL). Per row,
with p, q the teacher and student softmax at τ, y the gold id, p̂ and q̂ the distributions over v ≠ y renormalized,
and s = z_s/τ::

    D = c_T·TCKD + c_N·NCKD,   TCKD = KL([p_y, 1 − p_y] ‖ [q_y, 1 − q_y]),   NCKD = KL(p̂ ‖ q̂)

    ∂TCKD/∂s_y = q_y − p_y,    ∂TCKD/∂s_v = q̂_v·(p_y − q_y)    (v ≠ y)
    ∂NCKD/∂s_y = 0,            ∂NCKD/∂s_v = q̂_v − p̂_v          (v ≠ y)

(from ∂D/∂s_v = q_v·(G_v − Σ_u q_u·G_u) with G_y = −p_y/q_y and G_v = −(1 − p_y)/(1 − q_y) for TCKD). DKD is
c_T = w, c_N = β·w; AT-KD is c_T = (1 − λ)·w, c_N = (1 − λ)·w on hard rows and c_T = 0, c_N = λ·w on easy ones.

Everything is in log space as in ``ekd.losses.decoupled``: log(1 − p_y) is the logsumexp of the non-gold
log-probabilities and log p_y comes from log1p(−(1 − p_y)) when p_y > ½, so both stay exact as p_y → 1. Rows
where the teacher has no non-gold mass get NCKD = 0 (its weight 1 − p_y is 0), as there. A student row with
no non-gold mass (every other logit −inf) has TCKD = +inf; its NCKD is the reference's placeholder value
(q̂ uniform) and its gradient is only the TCKD one at y.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ekd.losses.logit_grads import _kl_rows, _log_softmax_at
from ekd.losses.row_reductions import row_logsumexp

_LN2 = math.log(2.0)


def _split_gold(log_x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
    """(log x_y, log(1 − x_y)) per row of the log-probabilities ``log_x`` (m, V) at ids y (m, 1).

    log(1 − x_y) = logsumexp over v ≠ y (the gold entry is set to −inf for that pass and put back); log x_y
    is read off ``log_x`` when x_y ≤ ½ and is log1p(−(1 − x_y)) above, where the direct value has lost the
    digits of 1 − x_y. As ``ekd.losses.decoupled.split_gold``.
    """
    direct = log_x.gather(1, y)  # (m, 1)
    log_rest = row_logsumexp(log_x.scatter_(1, y, float("-inf")))  # (m,) −inf where nothing else has mass
    log_x.scatter_(1, y, direct)
    via_rest = torch.log1p(-torch.exp(log_rest.clamp(max=-_LN2)))  # (m,) clamped: finite on both branches
    return torch.where(log_rest < -_LN2, via_rest, direct.squeeze(1)), log_rest


def _xdiff(x: Tensor, log_x: Tensor, log_z: Tensor) -> Tensor:
    """x·(log x − log z) with 0·(anything) = 0. (m,) × 3 → (m,)."""
    return torch.where(x == 0, torch.zeros_like(x), x * (log_x - log_z))  # a NaN x stays NaN


def decoupled_kd_chunk(
    student_logits: Tensor,
    teacher_logits: Tensor,
    gold: Tensor,
    tau: Tensor,
    coef_tckd: Tensor,
    coef_nckd: Tensor,
) -> tuple[Tensor, Tensor]:
    """Σ_i c_T,i·TCKD_i + c_N,i·NCKD_i and its gradient w.r.t. the student logits (module docstring).

    Args:
        student_logits: (m, V) fp32 student logits z_s (consumed: overwritten in place).
        teacher_logits: (m, V) fp32 teacher logits z_t (consumed).
        gold: (m,) gold ids in [0, V).
        tau: (m,) temperatures, applied to both models.
        coef_tckd: (m,) c_T, the TCKD weight of each row (0 drops the term, even where it is +inf).
        coef_nckd: (m,) c_N, the NCKD weight of each row.

    Returns:
        (loss sum (), ∂loss/∂z_s (m, V)), fp32.
    """
    y = gold.long().reshape(-1, 1)  # (m, 1)
    log_q = _log_softmax_at(student_logits, tau)  # (m, V)
    log_p = _log_softmax_at(teacher_logits, tau)  # (m, V)
    lqy, lqr = _split_gold(log_q, y)  # (m,) log q_y, log(1 − q_y)
    lpy, lpr = _split_gold(log_p, y)  # (m,) log p_y, log(1 − p_y)
    p_y, q_y, p_rest, q_rest = lpy.exp(), lqy.exp(), lpr.exp(), lqr.exp()
    # p_y − q_y, from the non-gold masses when both are above ½ (there p_y and q_y have lost those digits)
    gap = torch.where(torch.minimum(p_y, q_y) > 0.5, q_rest - p_rest, p_y - q_y)  # (m,)
    tckd = _xdiff(p_y, lpy, lqy) + _xdiff(p_rest, lpr, lqr)  # (m,) +inf where q has no mass p has
    teacher_live, student_live = torch.isfinite(lpr), torch.isfinite(lqr)  # (m,) some non-gold mass
    # log p̂, log q̂ over v ≠ y (the gold column is zeroed below); dead rows: p̂ = 0, q̂ the uniform placeholder
    log_p.sub_(torch.where(teacher_live, lpr, 0.0).unsqueeze(1))
    log_q.sub_(torch.where(student_live, lqr, 0.0).unsqueeze(1))
    log_q.masked_fill_(~student_live.unsqueeze(1), -math.log(log_q.shape[1]))
    p_hat = log_p.exp().masked_fill_(~teacher_live.unsqueeze(1), 0.0).scatter_(1, y, 0.0)  # (m, V)
    nckd = _kl_rows(p_hat, log_p.sub_(log_q))  # (m,) Σ p̂·(log p̂ − log q̂); log_p is now the log-ratio
    del log_p
    rows = torch.where(coef_tckd != 0, coef_tckd * tckd, 0.0) + torch.where(
        coef_nckd != 0, coef_nckd * nckd, 0.0
    )
    # gradient w.r.t. s: q̂_v·(c_T·(p_y − q_y) + c_N) − c_N·p̂_v off y, c_T·(q_y − p_y) at y
    c_n = torch.where(teacher_live & student_live, coef_nckd, 0.0)  # (m,) no NCKD gradient on dead rows
    c_t = coef_tckd
    q_hat = log_q.exp_().masked_fill_(~student_live.unsqueeze(1), 0.0)  # (m, V)
    grad = q_hat.mul_((c_t * gap + c_n).unsqueeze(1)).sub_(p_hat.mul_(c_n.unsqueeze(1)))
    grad.scatter_(1, y, (-c_t * gap).unsqueeze(1))
    return rows.sum(), grad.div_(tau.unsqueeze(1))  # ∂/∂z_s = ∂/∂s / τ


__all__ = ["decoupled_kd_chunk"]
