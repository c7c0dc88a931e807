"""Per-row objectives other than "divergence vs the teacher" (METHODS §7): DKD, AT-KD, EMA
self-distillation and uncertainty-aware masked MLE. Each is summed over the selected rows, chunk by chunk
(``rowwise_loss_sum``); the step normalizes it like the KD term.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ekd.losses.decoupled import atkd_hard_mask, atkd_loss_sum, dkd
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
        if parts.objective == "dkd":

            def loss(zs: Tensor, sl: slice) -> Tensor:
                with torch.no_grad():
                    zt = head_t(h_t[sl]).float()  # (m, V)
                return (scale[sl] * dkd(zs, zt, gold[sl], tau[sl], m.dkd_beta)).sum()

        else:
            u = 1.0 - stats["teacher_logp_gold"].reshape(-1)[rows].exp()  # (M,) teacher uncertainty 1 − p(y)
            hard = atkd_hard_mask(u, 0.5)

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
