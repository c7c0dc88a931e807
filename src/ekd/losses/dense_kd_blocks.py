"""``dense_kd_chunk`` for forward KL, reverse KL, JSD(β), skew reverse KL(α) and TVD on CPU in eager mode, one
cache-sized block of rows at a time: the same operations on the same values as the whole-chunk code, so the
same bits (JSD and skew reverse KL: up to an ulp at a few entries when V is not a multiple of 64, below).

The whole-chunk code (``ekd.losses.logit_grads``) runs each step of the math over the chunk's (m, V) buffers
— 128–155 MB each at ``auto_chunk_rows``, far beyond the L2 cache — so every ``exp``, ``sub_`` and ``mul_``
streams the chunk through memory. Here, per block of ``row_reductions.block_rows`` rows (~1 MiB of fp32), the
two log-softmaxes, the divergence's row values and its gradient all run while the block is in cache::

    s ← z_s/τ → log q            t ← z_t/τ → log p                    (``log_softmax_block_``, in place)
    forward KL   w ← p = exp t;  t ← (t − s)·w → Σ = D;               s ← (exp s − w)·scale
    reverse KL   w ← q = exp s;  s ← s − t;  t ← w·s → Σ = D;         s ← (s − D)·w·scale
    JSD(β)       u ← log(βp + (1−β)q);  w ← p;  t ← (t − u)·w → Σ = KL(p‖m)
                 w ← q;  s ← s − u;  t ← w·s → Σ = KL(q‖m);           s ← (s − KL(q‖m))·w·(1−β)·scale
    skew RKL(α)  u ← log((1−α)p + αq);  w ← q;  s ← s − u;  t ← w·s → Σ = D;  s ← s − α·exp s
                 t ← w·s → Σ = c;  s ← (s − c)·w·scale
    TVD          s ← q = exp s;  t ← exp t − s (p − q);  u ← rtol·(max(t, 0) + s);  tie ← |t| ≤ u
                 w ← sign t, 0 at ties;  u ← t·w → Σ = 2D;  w ← −½w;  u ← s·w → Σ = c;  s ← (w − c)·s·scale

(s, t: the block's rows of the student and teacher buffers; w, u: (rows, V) block buffers reused by every
block.) Peak: the two (m, V) inputs — consumed, the gradient is written over the student logits — plus one
block buffer (two for JSD and skew reverse KL, two and a bool one for TVD), against three to four (m, V) buffers for the whole-chunk code.

Why the bits agree: every step is an elementwise op or a ``Tensor.sum`` of one row over the same row blocks
as ``row_reductions.row_dot`` (whose result depends on the block only through its row count, equal here).
Arithmetic ops round the same way at every position, and ``exp`` runs SLEEF's vector code on every element
(partial vectors at the end). ``torch.logaddexp`` (the mixture of JSD and skew reverse KL) does not: the last (len mod 2·SIMD width)
elements of each thread's range go through glibc's ``log1p``/``exp`` instead of SLEEF's, so where the block
calls and the whole-chunk call split differently, log m can differ by an ulp at those few entries (≤ 2·31 per
call on AVX-512) and with it the gradient there (|Δg| ≲ 2·q·scale·ulp(log m)) and a row value by an ulp. With
2 threads no range has such a tail when V is a multiple of 64 (32,000, 32,768, 128,256, 151,936): then JSD and skew
reverse KL are bit-identical too; at V = 50,257 one gradient entry in 25.7 M differed (2e-6 relative), no loss value.

One convention is kept per block instead of per chunk: where a row value is NaN (0·±inf at a zero probability,
i.e. a −inf logit), the zero-probability terms are masked and the block summed again. Masking changes only
the sign of zero terms, which never changes a sum that also has a nonzero term, so row values and forward-KL
gradients are bit-identical either way; the reverse-KL and JSD gradients can differ only in the *sign of a
zero* entry (at an underflowed q, in a block without NaN of a chunk that has one), as they already differ
between two chunkings of the same rows.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ekd.losses.divergences import TVD_TIE_RTOL
from ekd.losses.row_reductions import block_rows, block_scratch, log_softmax_block_, row_sum

BLOCKED_KINDS = ("forward_kl", "reverse_kl", "jsd", "skew_reverse_kl", "tvd")


def _sum_rows(prod: Tensor, rows: Tensor, prob: Tensor, masked: Tensor) -> None:
    """Σ_v prod per row into ``rows`` (k,); if a row is NaN, ``masked`` ← 0 where ``prob`` = 0 and sum again.

    ``prod``, ``prob``, ``masked``: (k, V) block views. ``prod`` is prob·``masked`` (the log-ratio), or
    ``masked`` itself holds the product (forward KL): either way the product at prob = 0 becomes +0, as
    ``logit_grads._kl_rows`` makes it (0·0).
    """
    row_sum(prod, rows)
    if bool(rows.isnan().any()):
        masked.masked_fill_(prob == 0, 0.0)
        if prod is not masked:
            torch.mul(prob, masked, out=prod)
        row_sum(prod, rows)


def dense_kd_rows_blocked(
    student_logits: Tensor, teacher_logits: Tensor, tau: Tensor, scale: Tensor, kind: str, param: float
) -> tuple[Tensor, Tensor]:
    """Row values D_i and ∂(Σ_i coef_i·D_i)/∂z_s of one chunk, in row blocks (CPU, eager).

    Args:
        student_logits: (m, V) fp32 student logits (consumed: the gradient is written over them).
        teacher_logits: (m, V) fp32 teacher logits (consumed: left holding scratch values).
        tau: (m,) temperatures.
        scale: (m,) coef/τ, the factor of ∂D/∂s in ∂/∂z_s.
        kind: one of ``BLOCKED_KINDS`` (β ∈ {0, 1} already mapped to the plain KLs by the caller).
        param: β for ``jsd``, in (0, 1); α for ``skew_reverse_kl``, in (0, 1).

    Returns:
        (row values D (m,), gradient (m, V) = ``student_logits``), fp32.
    """
    m, _ = student_logits.shape
    step = block_rows(student_logits)
    k0 = min(step, m)
    work = block_scratch(k0, student_logits)  # (rows, V) exp of the log-softmax, then p or q
    two = kind in ("jsd", "skew_reverse_kl", "tvd")
    mix = block_scratch(k0, student_logits) if two else None  # (rows, V) log m or log r; TVD: scratch
    tie = block_scratch(k0, student_logits, torch.bool) if kind == "tvd" else None  # (rows, V)
    lse = torch.empty(k0, dtype=student_logits.dtype, device=student_logits.device)  # (rows,)
    inv_tau = None if bool((tau == 1).all()) else tau.reciprocal().unsqueeze(1)  # (m, 1); z·1 = z exactly
    scale = (scale * (1.0 - param) if kind == "jsd" else scale).unsqueeze(1)  # (m, 1)
    rows = torch.empty(m, dtype=student_logits.dtype, device=student_logits.device)  # (m,) D or KL(q‖m)
    kl_p = torch.empty_like(rows) if kind == "jsd" else None  # (m,) KL(p‖m)
    rows_vjp = torch.empty_like(rows)  # (m,) Σ q·G of _softmax_vjp (skew reverse KL, TVD)
    for r in range(0, m, step):
        s, t = student_logits[r : r + step], teacher_logits[r : r + step]  # (k, V) views of the block
        k = s.shape[0]
        w, block = work[:k], slice(r, r + k)
        for x in (s, t):
            if inv_tau is not None:
                x.mul_(inv_tau[block])
            log_softmax_block_(x, w, lse[:k])  # log q, then log p
        if kind == "forward_kl":
            p = torch.exp(t, out=w)
            _sum_rows(t.sub_(s).mul_(p), rows[block], p, t)  # p·log(p/q)
            s.exp_().sub_(p).mul_(scale[block])  # (q − p)·scale
        elif kind == "reverse_kl":
            q = torch.exp(s, out=w)
            log_ratio = s.sub_(t)  # log q − log p
            _sum_rows(torch.mul(q, log_ratio, out=t), rows[block], q, log_ratio)
            log_ratio.sub_(rows[block].unsqueeze(1)).mul_(q).mul_(scale[block])  # q·(log q/p − D)·scale
        elif kind == "skew_reverse_kl":  # logit_grads._log_mix, _kl_rows and _softmax_vjp
            weight = 1.0 - param  # _log_mix(log p, log q, 1 − α), its constants to the bit
            log_r = torch.add(t, math.log(weight / (1.0 - weight)), out=mix[:k])
            torch.logaddexp(log_r, s, out=log_r).add_(math.log(1.0 - weight))  # log((1−α)p + αq)
            q = torch.exp(s, out=w)
            log_ratio = s.sub_(log_r)  # log q − log r
            _sum_rows(torch.mul(q, log_ratio, out=t), rows[block], q, log_ratio)
            g = log_ratio.sub_(torch.exp(log_ratio, out=t).mul_(param))  # log q/r − α·q/r
            _vjp_(q, g, t, rows_vjp[block], scale[block])
        elif kind == "tvd":
            q = s.exp_()
            diff = t.exp_().sub_(q)  # p − q
            u = mix[:k]
            bound = torch.clamp_min(diff, 0.0, out=u).add_(q).mul_(TVD_TIE_RTOL)  # rtol·max(p, q)
            ties = torch.le(torch.abs(diff, out=w), bound, out=tie[:k])  # |p − q| ≤ rtol·max(p, q)
            sign = torch.sign(diff, out=w).masked_fill_(ties, 0.0)  # subgradient 0 at ties
            row_sum(torch.mul(diff, sign, out=u), rows[block])  # Σ |p − q| over the non-ties
            g = _vjp_(q, sign.mul_(-0.5), u, rows_vjp[block], None)  # g − Σ q·g
            torch.mul(g, q, out=s).mul_(scale[block])  # into the student block, which held q
        else:  # jsd: logit_grads._log_mix, then the two KLs to the mixture and _softmax_vjp
            log_m = torch.add(t, math.log(param / (1.0 - param)), out=mix[:k])
            torch.logaddexp(log_m, s, out=log_m).add_(math.log(1.0 - param))  # log(βp + (1−β)q)
            p = torch.exp(t, out=w)
            _sum_rows(t.sub_(log_m).mul_(p), kl_p[block], p, t)  # p·log(p/m)
            q = torch.exp(s, out=w)
            log_ratio = s.sub_(log_m)  # log q − log m
            _sum_rows(torch.mul(q, log_ratio, out=t), rows[block], q, log_ratio)
            log_ratio.sub_(rows[block].unsqueeze(1)).mul_(q).mul_(scale[block])
    if kind == "jsd":
        rows = param * kl_p + (1.0 - param) * rows
    elif kind == "tvd":
        rows = 0.5 * rows
    return rows, student_logits


def _vjp_(q: Tensor, g: Tensor, work: Tensor, dot: Tensor, scale: Tensor | None) -> Tensor:
    """``logit_grads._softmax_vjp`` of one block: g ← (g − Σ q·g)·q·scale in place, Σ q·g into ``dot`` (k,).

    ``q``, ``g``, ``work``: (k, V); ``scale``: (k, 1), or None to stop after the subtraction (TVD, whose q is
    the student block that the gradient goes into).
    """
    row_sum(torch.mul(q, g, out=work), dot)
    g.sub_(dot.unsqueeze(1))
    if scale is not None:
        g.mul_(q).mul_(scale)
    return g
