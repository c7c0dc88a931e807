"""Per-row objectives other than "divergence vs the teacher" (METHODS §7): DKD, AT-KD, EMA
self-distillation and uncertainty-aware masked MLE. Each is summed over the selected rows, chunk by chunk
(``rowwise_loss_sum``, autograd); the step normalizes it like the KD term. With ``train.loss_path=chunked``
DKD and AT-KD run on the fused head with their gradient in closed form (``decoupled_kd_chunk``).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ekd.losses.chunked import fused_linear_loss
from ekd.losses.decoupled import atkd_hard_mask, atkd_loss_sum, dkd
from ekd.losses.decoupled_grads import decoupled_kd_chunk
from ekd.losses.matmul import RowBuffer
from ekd.losses.rowwise import rowwise_loss_sum
from ekd.losses.self_distill import ema_self_distill_sum, uncertainty_loss_sum, uncertainty_split
from ekd.losses.targets import Head
from ekd.models.body import body_outputs
from ekd.models.load import output_head


@torch.no_grad()
def _hidden_at(model, batch, rows: Tensor, amp) -> Tensor:
    """(M, D) final hidden states of a frozen model at flat rows."""
    device = batch.input_ids.device
    with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        h = body_outputs(model, batch).last_hidden_state
    return h.reshape(-1, h.shape[-1])[rows]  # (M, D)


def objective_sum(
    parts,
    batch,
    rows: Tensor,
    weights: Tensor,
    tau: Tensor,
    h_s_flat: Tensor,
    head_s: Head,
    signal,
    stats,
    ctx,
) -> Tensor:
    """Σ over selected rows of the configured objective. rows/weights/tau (M,) → scalar."""
    m = parts.method_cfg
    gold = batch.labels.reshape(-1)[rows]  # (M,)
    scale = weights * tau.pow(2) if parts.scale_by_tau_squared else weights  # (M,)
    h_rows = h_s_flat[rows]  # (M, Ds)
    if parts.objective in ("dkd", "atkd"):
        h_t = signal.hidden.reshape(-1, signal.hidden.shape[-1])[rows]  # (M, Dt)
        head_t = signal.head
        if ctx.loss_path == "chunked":  # the fused head, gradient in closed form
            return _decoupled_fused(parts, h_rows, head_s, h_t, head_t, gold, tau, scale, stats, rows, ctx)
        if parts.objective == "dkd":

            def loss(zs: Tensor, sl: slice) -> Tensor:
                with torch.no_grad():
                    zt = head_t(h_t[sl]).float()  # (m, V)
                return (scale[sl] * dkd(zs, zt, gold[sl], tau[sl], m.dkd_beta)).sum()

        else:
            hard = _atkd_hard(stats, rows)

            def loss(zs: Tensor, sl: slice) -> Tensor:
                with torch.no_grad():
                    zt = head_t(h_t[sl]).float()
                return atkd_loss_sum(zs, zt, gold[sl], tau[sl], hard[sl], m.atkd_lambda, weights=scale[sl])

    elif parts.objective == "ema_self_distill":
        ema = parts.ema.module
        h_e = _hidden_at(ema, batch, rows, ctx.autocast_dtype)
        head_e = output_head(ema, ctx.vocab_size)

        def loss(zs: Tensor, sl: slice) -> Tensor:
            with torch.no_grad():
                ze = head_e(h_e[sl]).float()
            return ema_self_distill_sum(zs, ze, tau[sl], scale[sl])

    elif parts.objective == "uncertainty":
        initial = parts.frozen["initial_student"]
        h_i = _hidden_at(initial, batch, rows, ctx.autocast_dtype)
        head_i = output_head(initial, ctx.vocab_size)
        nll = -stats["student_logp_gold"].reshape(-1)[rows]  # (M,)
        mle = uncertainty_split(nll, m.uncertainty_fraction)

        def loss(zs: Tensor, sl: slice) -> Tensor:
            with torch.no_grad():
                zi = head_i(h_i[sl]).float()
            return uncertainty_loss_sum(zs, zi, gold[sl], mle[sl], m.uncertainty_weight)

    else:
        raise ValueError(f"unknown objective {parts.objective!r}")
    return rowwise_loss_sum(h_rows, head_s, loss, ctx.chunk_rows)


def _decoupled_fused(parts, h_rows, head_s, h_t, head_t, gold, tau, scale, stats, rows, ctx) -> Tensor:
    """DKD / AT-KD through the fused head (``decoupled_kd_chunk``): the same sums as the autograd path of
    ``objective_sum``, with the per-row TCKD and NCKD weights (c_T, c_N) of each objective."""
    m = parts.method_cfg
    if parts.objective == "dkd":
        coef_t, coef_n = scale, m.dkd_beta * scale  # (M,) TCKD + β·NCKD
    else:
        hard = _atkd_hard(stats, rows)
        lam = m.atkd_lambda
        coef_t = torch.where(hard, (1.0 - lam) * scale, 0.0)  # hard: (1 − λ)·(TCKD + NCKD)
        coef_n = torch.where(hard, 1.0 - lam, lam) * scale  # easy: λ·NCKD
    tau, coef_t, coef_n = tau.detach().float(), coef_t.detach().float(), coef_n.detach().float()
    teacher_buffer = RowBuffer()  # (chunk, V) teacher logits, reused chunk after chunk

    def chunk(logits: Tensor, start: int, end: int) -> tuple[Tensor, Tensor]:
        with torch.no_grad():
            zt = head_t(h_t[start:end], teacher_buffer).float()  # (m, V)
        sl = slice(start, end)
        return decoupled_kd_chunk(logits, zt, gold[sl], tau[sl], coef_t[sl], coef_n[sl])

    return fused_linear_loss(h_rows, head_s, chunk, ctx.chunk_rows)


def _atkd_hard(stats: dict[str, Tensor], rows: Tensor) -> Tensor:
    """AT-KD's hard rows among ``rows`` (M,): the top half by teacher uncertainty u = 1 − p(y) at τ=1 → (M,) bool."""
    u = 1.0 - stats["teacher_logp_gold"].reshape(-1)[rows].exp()  # (M,)
    return atkd_hard_mask(u, 0.5)
