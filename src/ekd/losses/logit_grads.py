"""Per-chunk loss values with their gradients w.r.t. the student logits, in closed form (fp32).

The fused head (``ekd.losses.chunked``) needs, for one chunk of m rows, the loss sum Σ_i c_i·D_i and
∂/∂z_s of it — an (m, V) tensor — without keeping an autograd graph. Every function here returns both::

    fn(student_logits (m, V), <target>, tau (m,), coef (m,)) -> (loss_sum (), grad_logits (m, V))

with c_i = ``coef`` (w_i·τ_i² or w_i) and the divergences of METHODS §1 taken at p = softmax(z_t/τ),
q = softmax(z_s/τ). The gradients follow from one identity: for any D(q), with s = z_s/τ,

    ∂D/∂s_v = q_v·(G_v − Σ_u q_u·G_u),  G = ∂D/∂q,      ∂/∂z_s = ∂/∂s / τ

which gives (constants in G cancel):

    forward_kl        G = −p/q                             →  ∂D/∂s = q − p
    reverse_kl        G = log q − log p                    →  q·(G − D)
    jsd(β)            G = (1−β)·(log q − log m), m = βp + (1−β)q
    skew_forward_kl   ∂D/∂s = −p·a + q·Σ p·a,  a = (1−α)·q/r, r = αp + (1−α)q
    skew_reverse_kl   G = log q − log r − α·q/r,  r = (1−α)p + αq
    tvd               G = −½·sign(p − q), 0 at p = q (ties up to rounding: ``divergences.tvd``)
    sparse (RS/top-K) ∂/∂s = q·Σ_k t_k − Σ_k t_k·e_{id_k}  (+ the ghost-tail term, see ``sparse_kd_chunk``)
    CE                ∂/∂z = q − e_y

**Ownership**: the logits passed in are consumed (overwritten in place in eager mode, to keep the chunk at
3–4 (m, V) buffers; on CPU forward KL, reverse KL, JSD, skew reverse KL and TVD run in cache-sized row blocks with no (m, V) buffer
beyond the two inputs, ``ekd.losses.dense_kd_blocks``, and the sparse and CE chunks all their steps per row
block, ``ekd.losses.sparse_ce_blocks``, with the same bits); callers pass freshly computed logits and keep no
other reference. Zero-probability entries (``-inf`` logits) contribute exactly zero to values and gradients, as on the reference path.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ekd.losses.dense_kd_blocks import BLOCKED_KINDS, dense_kd_rows_blocked
from ekd.losses.divergences import TVD_TIE_RTOL
from ekd.losses.row_reductions import log_softmax_, row_dot
from ekd.losses.sparse_ce_blocks import ce_rows_blocked, sparse_kd_rows_blocked

DENSE_KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd")


def _eager() -> bool:
    """In-place ops save memory in eager mode; under torch.compile they would mutate graph inputs."""
    return not torch.compiler.is_compiling()


def _blocked(*logits: Tensor) -> bool:
    """Whether the row-block code runs the chunk (``dense_kd_blocks`` for a student/teacher pair,
    ``sparse_ce_blocks`` for one): CPU, eager, contiguous (m, V) fp32 logits of one shape (its row sums then run
    over the same memory order as ``row_dot``'s, so the same bits)."""
    first = logits[0]
    return _eager() and all(
        z.device.type == "cpu"
        and z.dim() == 2
        and z.shape == first.shape
        and z.dtype == torch.float32
        and z.is_contiguous()
        for z in logits
    )


def _log_softmax_at(logits: Tensor, tau: Tensor | None) -> Tensor:
    """log softmax(logits / τ) over the vocabulary, overwriting ``logits`` in eager mode. (m, V) → (m, V).

    Accurate at any V (``ekd.losses.row_reductions``: the stock CPU kernel's normalizer errs by ~2e-5 at
    V = 151,936).
    """
    inv_tau = None if tau is None else tau.reciprocal().unsqueeze(1)  # (m, 1)
    if not _eager():
        return log_softmax_(logits if inv_tau is None else logits * inv_tau)
    if inv_tau is not None:
        logits.mul_(inv_tau)
    return log_softmax_(logits)


def _rowdot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a·b per row, summed pairwise without an (m, V) temporary. (m, V) × 2 → (m,)."""
    return row_dot(a, b)


def _softmax_vjp(q: Tensor, g: Tensor, scale: Tensor) -> Tensor:
    """scale·q·(G − Σ q·G) per row, in place on ``g``. → (m, V).

    G must be finite where q = 0 (callers mask log-ratios there first), so those entries give exactly 0.
    """
    return g.sub_(_rowdot(q, g).unsqueeze(1)).mul_(q).mul_(scale.unsqueeze(1))


def _log_mix(log_a: Tensor, log_b: Tensor, weight_a: float) -> Tensor:
    """log(w·a + (1−w)·b) from log a, log b (0 < w < 1) with one new (m, V) buffer."""
    out = log_a + math.log(weight_a / (1.0 - weight_a))
    out = torch.logaddexp(out, log_b, out=out) if _eager() else torch.logaddexp(out, log_b)
    return out.add_(math.log(1.0 - weight_a))


def _kl_rows(p: Tensor, log_ratio: Tensor) -> Tensor:
    """Σ_v p·log_ratio with 0·(anything) = 0. → (m,). Overwrites ``log_ratio`` with 0 at p = 0 when needed.

    A log-ratio is non-finite at p = 0 only where a logit is ``-inf`` (masked vocabulary; underflowed
    probabilities keep finite logs), and then 0·(±inf or NaN) makes the row's sum NaN: only then is the
    log-ratio masked (two passes over (m, V)) and the sum taken again — no scan of the logits beforehand.
    Under torch.compile (no data branch) it is always masked. Callers that go on using ``log_ratio`` (the
    gradients) rely on the mask being applied in place whenever it matters.
    """
    if _eager():
        rows = _rowdot(p, log_ratio)
        if not bool(rows.isnan().any()):
            return rows
    return _rowdot(p, log_ratio.masked_fill_(p == 0, 0.0))


def dense_kd_chunk(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Tensor,
    coef: Tensor,
    kind: str,
    param: float = 0.0,
) -> tuple[Tensor, Tensor]:
    """Σ_i coef_i·D_kind(p_i ‖ q_i) and its gradient w.r.t. the student logits.

    Args:
        student_logits: (m, V) fp32 student logits z_s (consumed).
        teacher_logits: (m, V) fp32 teacher logits z_t (consumed).
        tau: (m,) temperatures.
        coef: (m,) row coefficients (w·τ² or w).
        kind: one of ``DENSE_KINDS``.
        param: β for ``jsd``, α for the skew KLs (β ∈ {0, 1} and α = 0 are the plain KLs).

    Returns:
        (loss sum (), ∂loss/∂z_s (m, V)), fp32.
    """
    scale = coef / tau  # (m,) ∂/∂z_s = coef·∂D/∂s / τ
    if kind == "jsd" and param == 0.0 or kind == "skew_forward_kl" and param == 0.0:
        kind = "forward_kl"
    elif kind == "jsd" and param == 1.0 or kind == "skew_reverse_kl" and param == 0.0:
        kind = "reverse_kl"
    if kind in BLOCKED_KINDS and _blocked(student_logits, teacher_logits):
        rows, grad = dense_kd_rows_blocked(student_logits, teacher_logits, tau, scale, kind, param)
        return (coef * rows).sum(), grad
    log_q = _log_softmax_at(student_logits, tau)  # (m, V)
    log_p = _log_softmax_at(teacher_logits, tau)  # (m, V)
    if kind == "forward_kl":
        p = log_p.exp()
        rows = _kl_rows(p, log_p.sub_(log_q))
        del log_p
        grad = log_q.exp_().sub_(p).mul_(scale.unsqueeze(1))  # q − p
    elif kind == "reverse_kl":
        q = log_q.exp()
        log_ratio = log_q.sub_(log_p)  # log q − log p
        del log_p
        rows = _kl_rows(q, log_ratio)
        grad = log_ratio.sub_(rows.unsqueeze(1)).mul_(q).mul_(scale.unsqueeze(1))  # q·(log q/p − D)
    elif kind == "jsd":
        beta = param
        log_m = _log_mix(log_p, log_q, beta)  # (m, V) log(βp + (1−β)q)
        p = log_p.exp()
        kl_p = _kl_rows(p, log_p.sub_(log_m))
        del p, log_p
        q = log_q.exp()
        log_ratio = log_q.sub_(log_m)  # log q − log m
        del log_m
        kl_q = _kl_rows(q, log_ratio)
        rows = beta * kl_p + (1.0 - beta) * kl_q
        grad = _softmax_vjp(q, log_ratio, (1.0 - beta) * scale)
    elif kind == "skew_forward_kl":
        alpha = param
        log_r = _log_mix(log_p, log_q, alpha)  # log(αp + (1−α)q)
        p = log_p.exp()
        rows = _kl_rows(p, log_p.sub_(log_r))
        del log_p
        q = log_q.exp()
        a = log_q.sub_(log_r).add_(math.log(1.0 - alpha)).exp_()  # (1−α)q/r ∈ [0, 1]
        del log_r
        pa = a.mul_(p)  # p·a; NaN only where q = r = 0 (so p = 0): masked when the row sum shows it
        pa_sum = pa.sum(-1, keepdim=True)  # (m, 1)
        if not _eager() or bool(pa_sum.isnan().any()):
            pa_sum = pa.masked_fill_(p == 0, 0.0).sum(-1, keepdim=True)
        del p
        grad = q.mul_(pa_sum).sub_(pa).mul_(scale.unsqueeze(1))  # q·Σpa − pa
    elif kind == "skew_reverse_kl":
        alpha = param
        log_r = _log_mix(log_p, log_q, 1.0 - alpha)  # log((1−α)p + αq)
        del log_p
        q = log_q.exp()
        log_ratio = log_q.sub_(log_r)  # log q − log r
        del log_r
        rows = _kl_rows(q, log_ratio)
        g = log_ratio.sub_(log_ratio.exp().mul_(alpha))  # log q/r − α·q/r
        grad = _softmax_vjp(q, g, scale)
    elif kind == "tvd":
        q = log_q.exp_()
        diff = log_p.exp_().sub_(q)  # (m, V) p − q
        tie = diff.abs() <= diff.clamp_min(0.0).add_(q).mul_(TVD_TIE_RTOL)  # (m, V) |p − q| ≤ rtol·max(p, q)
        sign = diff.sign().masked_fill_(tie, 0.0)  # (m, V) subgradient 0 at ties (``divergences.tvd``)
        del tie
        rows = 0.5 * row_dot(diff, sign)  # ½ Σ |p − q| over the non-ties
        del diff
        grad = _softmax_vjp(q, sign.mul_(-0.5), scale)
    else:
        raise ValueError(f"no closed-form gradient for divergence {kind!r}; known: {', '.join(DENSE_KINDS)}")
    return (coef * rows).sum(), grad


def sparse_kd_chunk(
    student_logits: Tensor,
    ids: Tensor,
    probs: Tensor,
    tail: Tensor | None,
    tau: Tensor,
    coef: Tensor,
) -> tuple[Tensor, Tensor]:
    """Sparse forward-KL estimate (``ekd.losses.sparse``) and its gradient w.r.t. the student logits.

    Per row, with t the K target values (padding slots t ≤ 0; a NaN value is kept), H the set of ids with t > 0 (duplicates
    counted once) and the student's tail mass T = Σ_{v∉H} q_v (summed over the complement, exact as q → 1
    on H)::

        D = Σ_k t_k (log t_k − log q[id_k]) + t_tail (log t_tail − log T)
        ∂D/∂s = q·(Σ_k t_k + t_tail) − (t_tail/T)·q·1[v∉H] − Σ_k t_k·e_{id_k}

    Args:
        student_logits: (m, V) fp32 (consumed).
        ids: (m, K) target ids.
        probs: (m, K) target values t̂ (RS counts/N, importance-weighted, or tail-handled top-K probs).
        tail: (m,) teacher tail mass for the ghost bucket, or None.
        tau: (m,) temperatures.
        coef: (m,) row coefficients.

    Returns:
        (loss sum (), ∂loss/∂z_s (m, V)), fp32.
    """
    scale = coef / tau  # (m,)
    ids = ids.long()
    t = probs.float()
    present = ~(t <= 0)  # padding is t ≤ 0; a NaN value (a NaN teacher) is kept, so the loss is NaN
    t = torch.where(present, t, torch.zeros_like(t))
    safe_t = torch.where(present, t, torch.ones_like(t))
    tail = None if tail is None else tail.float()
    if _blocked(student_logits) and ids.shape[0] == student_logits.shape[0]:
        log_q_at, tail_q, grad = sparse_kd_rows_blocked(student_logits, ids, t, present, tail, tau, scale)
    else:
        log_q_at, tail_q, grad = _sparse_grad(student_logits, ids, t, present, tail, tau, scale)
    rows = torch.where(present, t * (safe_t.log() - log_q_at), torch.zeros_like(t)).sum(-1)  # (m,)
    if tail is not None:
        has_tail = tail > 0
        safe_tail = torch.where(has_tail, tail, torch.ones_like(tail))
        rows = rows + torch.where(has_tail, tail * (safe_tail.log() - tail_q.log()), torch.zeros_like(tail))
    return (coef * rows).sum(), grad


def _sparse_grad(
    student_logits: Tensor,
    ids: Tensor,
    t: Tensor,
    present: Tensor,
    tail: Tensor | None,
    tau: Tensor,
    scale: Tensor,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The (m, V) part of :func:`sparse_kd_chunk` over the whole chunk (under compile, on CUDA): the arguments
    and results of ``sparse_ce_blocks.sparse_kd_rows_blocked``."""
    log_q = _log_softmax_at(student_logits, tau)  # (m, V)
    log_q_at = log_q.gather(-1, ids)  # (m, K) student log-probs at the target ids
    row_mass = t.sum(-1)  # (m,)
    q = log_q.exp_() if _eager() else log_q.exp()
    tail_q = None
    if tail is None:
        grad = q.mul_(row_mass.unsqueeze(1))
    else:
        has_tail = tail > 0
        hit = present & has_tail.unsqueeze(1)  # (m, K) slots whose id is in H
        # in_h[k]: id_k ∈ H, equal for every slot holding the same id (so scatter_ writes agree)
        in_h = ((ids.unsqueeze(2) == ids.unsqueeze(1)) & hit.unsqueeze(1)).any(-1)  # (m, K)
        q_at = log_q_at.exp()  # (m, K)
        q.scatter_(-1, ids, torch.where(in_h, torch.zeros_like(q_at), q_at))  # q·1[v∉H]
        tail_q = q.sum(-1)  # (m,) T
        b = torch.where(has_tail, tail / tail_q, torch.zeros_like(tail))  # (m,)
        full = row_mass + torch.where(has_tail, tail, torch.zeros_like(tail))  # (m,) Σt + t_tail
        grad = q.mul_((full - b).unsqueeze(1))  # right off H
        on_h = q_at * full.unsqueeze(1)  # (m, K) value at v ∈ H
        grad.scatter_(-1, ids, torch.where(in_h, on_h, grad.gather(-1, ids)))
    grad = grad.scatter_add_(-1, ids, -t).mul_(scale.unsqueeze(1))
    return log_q_at, tail_q, grad


def ce_chunk(logits: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Σ_i −log softmax(z_i)[y_i] over rows with y_i ≠ −100, and ∂/∂z = softmax(z) − e_y. (m, V), (m,)."""
    valid = labels != -100  # (m,)
    safe = torch.where(valid, labels, torch.zeros_like(labels)).unsqueeze(1)  # (m, 1)
    keep = valid.to(logits.dtype).unsqueeze(1)  # (m, 1)
    if _blocked(logits) and labels.shape[0] == logits.shape[0]:
        log_q_at, grad = ce_rows_blocked(logits, safe, keep)  # (m, 1), (m, V)
    else:
        log_q = _log_softmax_at(logits, None)  # (m, V)
        log_q_at = log_q.gather(-1, safe)  # (m, 1)
        grad = (log_q.exp_() if _eager() else log_q.exp()).mul_(keep).scatter_add_(-1, safe, -keep)
    loss = -torch.where(valid, log_q_at.squeeze(1), torch.zeros_like(labels, dtype=logits.dtype)).sum()
    return loss, grad


def autograd_chunk(
    student_logits: Tensor,
    teacher_logits: Tensor,
    tau: Tensor,
    coef: Tensor,
    divergence,
) -> tuple[Tensor, Tensor]:
    """Fallback for divergences without a closed form (e.g. a user-registered one): autograd on this
    chunk's logits only, so no graph outlives the chunk. Same contract as ``dense_kd_chunk``."""
    with torch.enable_grad():
        z = student_logits.detach().requires_grad_(True)
        loss = (coef * divergence(z, teacher_logits, tau)).sum()
        (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad
