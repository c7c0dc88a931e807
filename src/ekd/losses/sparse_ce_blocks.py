"""``sparse_kd_chunk`` and ``ce_chunk`` on CPU in eager mode, one cache-sized block of rows at a time: the same
operations on the same values as the whole-chunk code (``ekd.losses.logit_grads``), so the same bits.

The whole-chunk code runs its log-softmax in row blocks (``row_reductions.log_softmax_``) but then streams the
chunk's (m, V) buffer — 128–155 MB at ``auto_chunk_rows`` — through memory once per ``exp_``, ``scatter_``,
``sum``, ``mul_`` and ``scatter_add_``. Here every step runs on a block of rows while it is in cache::

    sparse   s ← z_s/τ → log q;  log q[ids] → (m, K);  s ← q = exp s
             (tail)  s[ids] ← q·1[v∉H];  T = Σ s;  s ← s·(Σt + t_tail − t_tail/T);  s[ids] ← (Σt + t_tail)·q on H
             (none)  s ← s·Σt
             s[ids] += −t;  s ← s·scale
    CE       s ← log q;  log q[y] → (m,);  s ← q·1[y ≠ −100] (only blocks with an ignored row; q·1 = q);
             s[y] += −1[y ≠ −100]

(s: the block's rows of the logits, overwritten with the gradient.) The row values are then formed from the
gathered (m, K) or (m,) log-probabilities exactly as the whole-chunk code forms them.

Why the bits agree: the ops are elementwise, gathers and scatters (each row's scatter_add_ adds its K slots in
slot order, duplicates included, in both), and two kinds of row sum. (1) The log-softmax normalizer: the
blocks are those ``log_softmax_`` uses (``block_rows`` rows, from the chunk's start).
(2) The tail mass T, which the whole-chunk code sums over the (m, V) buffer at once: a ``Tensor.sum`` over the
last axis gives each row the same bits whatever the number of rows, *except* for a single row (torch then
splits the row between threads and adds the parts; measured, 2–8 threads), which ``row_sum`` sums as a pair of
rows. The blocks are ``log_softmax_``'s (``block_rows`` rows from the chunk's start).
"""

from __future__ import annotations

import bisect

import torch
from torch import Tensor

from ekd.losses.row_reductions import block_rows, block_scratch, log_softmax_block_, row_sum


def sparse_kd_rows_blocked(
    student_logits: Tensor,
    ids: Tensor,
    t: Tensor,
    present: Tensor,
    tail: Tensor | None,
    tau: Tensor,
    scale: Tensor,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The (m, V) part of ``logit_grads.sparse_kd_chunk`` in row blocks (CPU, eager).

    Args:
        student_logits: (m, V) contiguous fp32 logits (consumed: the gradient is written over them).
        ids: (m, K) int64 target ids.
        t: (m, K) fp32 target values, 0 at padding slots (t ≤ 0 in the input).
        present: (m, K) bool, not t ≤ 0 (a NaN value is present).
        tail: (m,) fp32 teacher tail mass, or None.
        tau: (m,) temperatures.
        scale: (m,) coef/τ.

    Returns:
        (log q at ``ids`` (m, K), the student tail mass T (m,) or None, gradient (m, V) = ``student_logits``).
    """
    m, _ = student_logits.shape
    sub = block_rows(student_logits)  # rows per block: log_softmax_'s own blocks
    work = block_scratch(min(sub, m), student_logits)  # (sub, V) exp of the log-softmax
    lse = torch.empty(min(sub, m), dtype=student_logits.dtype)  # (sub,)
    # (m, 1), as ``logit_grads._log_softmax_at``; skipped at τ = 1 (z·1 = z exactly)
    inv_tau = None if bool((tau == 1).all()) else tau.reciprocal().unsqueeze(1)
    log_q_at = torch.empty(ids.shape, dtype=student_logits.dtype)  # (m, K)
    q_at = torch.empty_like(log_q_at)  # (m, K)
    row_mass = t.sum(-1)  # (m,) Σt
    scale = scale.unsqueeze(1)  # (m, 1)
    neg_t = -t  # (m, K)
    if tail is not None:
        has_tail = tail > 0
        hit = present & has_tail.unsqueeze(1)  # (m, K) slots whose id is in H
        in_h = ((ids.unsqueeze(2) == ids.unsqueeze(1)) & hit.unsqueeze(1)).any(-1)  # (m, K), equal per id
        tail_q = torch.empty(m, dtype=student_logits.dtype)  # (m,) T
        full = row_mass + torch.where(has_tail, tail, torch.zeros_like(tail))  # (m,) Σt + t_tail
        zero = torch.zeros(ids.shape, dtype=student_logits.dtype)  # (m, K)
    else:
        tail_q = None
        row_mass = row_mass.unsqueeze(1)  # (m, 1)
    for r0 in range(0, m, sub):
        s, blk = student_logits[r0 : r0 + sub], slice(r0, r0 + sub)  # (k, V) view of the block
        k = s.shape[0]
        if inv_tau is not None:
            s.mul_(inv_tau[blk])
        log_softmax_block_(s, work[:k], lse[:k])
        idx = ids[blk]  # (k, K)
        la = torch.gather(s, -1, idx, out=log_q_at[blk])
        s.exp_()  # q
        if tail is None:
            s.mul_(row_mass[blk])
        else:
            qa = torch.exp(la, out=q_at[blk])
            s.scatter_(-1, idx, torch.where(in_h[blk], zero[blk], qa))  # q·1[v∉H]
            tq = row_sum(s, tail_q[blk])  # (k,) T
            f = full[blk]
            b = torch.where(has_tail[blk], tail[blk] / tq, torch.zeros_like(tq))  # (k,) t_tail/T
            s.mul_((f - b).unsqueeze(1))  # right off H
            s.scatter_(-1, idx, torch.where(in_h[blk], qa * f.unsqueeze(1), s.gather(-1, idx)))
        s.scatter_add_(-1, idx, neg_t[blk]).mul_(scale[blk])
    return log_q_at, tail_q, student_logits


def ce_rows_blocked(logits: Tensor, safe: Tensor, keep: Tensor) -> tuple[Tensor, Tensor]:
    """The (m, V) part of ``logit_grads.ce_chunk`` in row blocks (CPU, eager).

    Args:
        logits: (m, V) contiguous fp32 logits (consumed: the gradient is written over them).
        safe: (m, 1) int64 labels, 0 where ignored.
        keep: (m, 1) fp32, 1 where the label is valid, else 0.

    Returns:
        (log q at ``safe`` (m, 1), gradient (m, V) = ``logits``).
    """
    m, _ = logits.shape
    sub = block_rows(logits)  # rows per block: log_softmax_'s own blocks
    work = block_scratch(min(sub, m), logits)  # (sub, V)
    lse = torch.empty(min(sub, m), dtype=logits.dtype)  # (sub,)
    log_q_at = torch.empty(m, 1, dtype=logits.dtype)  # (m, 1)
    neg_keep = -keep  # (m, 1)
    ignored = torch.nonzero(keep.squeeze(1) != 1).flatten().tolist()  # rows whose label is −100
    for r0 in range(0, m, sub):
        s, blk = logits[r0 : r0 + sub], slice(r0, r0 + sub)  # (k, V) view of the block
        log_softmax_block_(s, work[: s.shape[0]], lse[: s.shape[0]])
        torch.gather(s, -1, safe[blk], out=log_q_at[blk])
        s.exp_()
        first = bisect.bisect_left(ignored, r0)  # the first ignored row at or after r0, if any
        if first < len(ignored) and ignored[first] < r0 + sub:
            s.mul_(keep[blk])  # q·0 at ignored rows; q·1 = q exactly elsewhere, so blocks without one skip it
        s.scatter_add_(-1, safe[blk], neg_keep[blk])
    return log_q_at, logits
