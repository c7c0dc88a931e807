"""Accurate sums over the vocabulary axis: log-softmax, logsumexp and row dot products of (m, V) tensors.

At V = 151,936 in fp32 two stock kernels lose precision on CPU (measured, torch 2.13, 1 thread):

- ``torch.log_softmax`` / ``torch.softmax`` sum exp(z − max) sequentially in SIMD lanes: the
  log-normalizer errs by ~2e-5 (every log-probability shifted by it), 50× the fp32 rounding of z.
- ``einsum('mv,mv->m')`` runs as a batched GEMV that accumulates 152k products in a few lanes: a
  forward-KL row value errs by up to 1e-4 relative.

``Tensor.sum`` is accurate on every device (cascade / pairwise summation on CPU, tree reductions on
CUDA), so everything here is built on it: ``logsumexp`` = max + log Σ exp(z − max) and dot products as
Σ(a·b), taken a few rows at a time so that no (m, V) temporary is allocated, with one block buffer per call
reused by every block (``out=`` ops): no allocation per block, which glibc may serve with fresh mmapped
pages each time. On CUDA the fused log-softmax kernel already reduces in a tree and is used as is.
"""

from __future__ import annotations

import torch
from torch import Tensor

_BLOCK_ELEMENTS = 1 << 18
"""Elements per row block on CPU (1 MiB of fp32): the temporaries of one block stay in cache."""
_DEVICE_BLOCK_ELEMENTS = 1 << 24
"""Elements per row block on an accelerator (64 MiB of fp32): no cache to stay in, so blocks only bound the
scratch memory; 1 MiB blocks would be one row at V = 151,936, i.e. ~7 kernel launches per row."""


def block_rows(x: Tensor) -> int:
    """Rows per block of about ``_BLOCK_ELEMENTS`` elements (``_DEVICE_BLOCK_ELEMENTS`` off the CPU), at least
    two (a one-row block pays a second sum in :func:`row_sum`). Row results do not depend on it: every sum is
    per row, through :func:`row_sum`."""
    elements = _BLOCK_ELEMENTS if x.device.type == "cpu" else _DEVICE_BLOCK_ELEMENTS
    return max(2, elements // max(1, x.shape[-1]))


def row_sum(x: Tensor, out: Tensor | None = None) -> Tensor:
    """Σ over the last axis of a (k, V) block into ``out`` (k,), each row with the bits of that row reduced
    alone by one thread, whatever k and the thread count, on CPU (CUDA's reduction kernels lay rows out their own
    way: not measured, no GPU here). Returns ``out``; without one, a new (k,) tensor (functional ops: autograd
    records them).

    torch reduces a tensor with a single output by splitting its row among the threads and adding the parts
    (measured at V = 151,936, 2 threads: other bits than the same row in a block of several, and bits that
    change with the thread count), and with several outputs gives each row to one thread. A one-row block is
    therefore summed as a stride-0 (2, V) view of itself, the first of the two equal results kept: the cache's
    statistics, a row alone at the end of a chunk and a run on another machine all get the same bits.
    """
    if x.shape[0] == 1 and x.dim() == 2:
        pair = x.expand(2, x.shape[1]).sum(-1)[:1]  # (2,) → (1,): the per-row reduction
        return pair if out is None else out.copy_(pair)
    return x.sum(-1) if out is None else torch.sum(x, -1, out=out)


def _eager() -> bool:
    return not torch.compiler.is_compiling()


def _tracked(*xs: Tensor) -> bool:
    """Whether autograd records ops on ``xs``: then no ``out=`` buffers (they do not differentiate)."""
    return torch.is_grad_enabled() and any(x.requires_grad for x in xs)


def block_scratch(rows: int, like: Tensor, dtype: torch.dtype | None = None) -> Tensor:
    """One (rows, V) block buffer per call, reused by every block (views of it, ``out=`` ops).

    A fresh temporary per block would be a ~1 MiB allocation each time; glibc serves those with mmap whenever
    its threshold is low (the default before the first such free, or ``MALLOC_MMAP_THRESHOLD_``), and every
    block then pays for zeroed pages: the entropy pass of 2,048 × 32,768 logits took 0.13–0.22 s that way
    against 0.043 s with one buffer (same bits).
    """
    return torch.empty((rows, like.shape[-1]), dtype=dtype or like.dtype, device=like.device)


def row_dot(a: Tensor, b: Tensor) -> Tensor:
    """Σ_v a_v·b_v per row, summed pairwise (never a GEMV). (m, V) × 2 → (m,), dtype of a·b.

    Eager: row blocks of ~1 MiB with one reused product buffer. Under torch.compile the product is fused
    into the reduction.
    """
    if not _eager() or a.shape[0] == 0 or a.shape != b.shape or _tracked(a, b):
        return (a * b).sum(-1)
    dtype = torch.promote_types(a.dtype, b.dtype)
    out = torch.empty(a.shape[0], dtype=dtype, device=a.device)
    step = block_rows(a)
    work = block_scratch(min(step, a.shape[0]), a, dtype)  # (rows, V) products of one block
    for r in range(0, a.shape[0], step):
        prod = torch.mul(a[r : r + step], b[r : r + step], out=work[: min(step, a.shape[0] - r)])
        row_sum(prod, out[r : r + step])  # (rows,)
    return out


def _logsumexp_into(x: Tensor, work: Tensor, out: Tensor) -> Tensor:
    """``torch.logsumexp(x, -1)`` of a (rows, V) block into ``out`` (rows,), its exp in ``work`` (rows, V).

    The same operations as the stock CPU kernel (max, infinite max → 0, Σ exp(x − max), log, + max), so
    the same bits, without its (rows, V) temporary.
    """
    top = x.amax(-1, keepdim=True)  # (rows, 1)
    top.masked_fill_(top.abs() == float("inf"), 0.0)
    torch.sub(x, top, out=work).exp_()
    return row_sum(work, out).log_().add_(top.squeeze(1))


def row_logsumexp(z: Tensor) -> Tensor:
    """log Σ_v exp z_v per row, accurate at any V. (m, V) → (m,). −inf entries count 0; an all −inf row → −inf."""
    if z.device.type != "cpu" or not _eager() or z.shape[0] == 0 or _tracked(z):
        return torch.logsumexp(z, dim=-1)  # amax, then a (tree or cascade) sum of exp(z − max)
    out = torch.empty(z.shape[0], dtype=z.dtype, device=z.device)
    step = block_rows(z)
    work = block_scratch(min(step, z.shape[0]), z)
    for r in range(0, z.shape[0], step):
        k = min(step, z.shape[0] - r)
        _logsumexp_into(z[r : r + k], work[:k], out[r : r + k])
    return out


def row_logsumexp_entropy(z: Tensor, probs: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """log Σ_v exp z_v and the entropy H(softmax(z)) per row, one exp pass. (m, V) fp32 → (m,), (m,).

    Per block of rows (two reused (rows, V) buffers, in cache): x = z − max, e = exp x, s = Σ e, then
    lse = max + log s and H = log s − Σ e·x / s. Summing the shifted x (≤ 0) avoids the cancellation of
    H = lse − Σ p·z when the logits are large; sums are ``Tensor.sum``'s (pairwise). −inf logits (masked
    ids) contribute nothing; a row of only −inf logits is uniform over the most negative finite fp32 value
    (lse ≈ that value + log V, H = log V, p = 1/V).

    Args:
        z: (m, V) fp32 logits.
        probs: an (m, V) fp32 tensor (not ``z``) that receives p = softmax(z) = e / s, block by block from the
            same exp pass (e is kept there instead of in a scratch buffer): no second exp, and lse and H have
            the same bits with or without it.
    """
    m = z.shape[0]
    if not _eager() or m == 0 or _tracked(z):
        return _lse_entropy_functional(z, probs)
    step = block_rows(z)
    top = torch.empty(m, 1, dtype=z.dtype, device=z.device)  # (m, 1) row max
    total = torch.empty(m, dtype=z.dtype, device=z.device)  # (m,) s = Σ e
    dot = torch.empty(m, dtype=z.dtype, device=z.device)  # (m,) Σ e·x
    shifted = block_scratch(min(step, m), z)  # (rows, V) x − max, then x·e
    exp_buf = block_scratch(min(step, m), z) if probs is None else None  # (rows, V) e
    normal = probs is not None
    for r in range(0, m, step):
        k = min(step, m - r)
        e = exp_buf[:k] if probs is None else probs[r : r + k]  # (rows, V)
        _block_sums(z[r : r + k], shifted[:k], e, top[r : r + k], total[r : r + k], dot[r : r + k], normal)
    # NaN marks the rows that need the −inf conventions: 0·(−inf) at a masked id (or an fp32 overflow of
    # x − max), −inf − (−inf) in an all −inf row. Found once per call (no scan of z, no sync per block), and
    # their blocks computed again with the floors: rows without −inf keep their bits.
    bad = dot.isnan()
    if bool(bad.any()):
        for r in sorted({int(i) // step * step for i in bad.nonzero().view(-1)}):
            k = min(step, m - r)
            x = z[r : r + k]  # (rows, V)
            if not bool(torch.isfinite(x.amax(-1)).all()):  # an all −inf row: the finite floor
                x = _floored(x)
            e = exp_buf[:k] if probs is None else probs[r : r + k]
            _block_sums(x, shifted[:k], e, top[r : r + k], total[r : r + k], dot[r : r + k], normal, True)
    log_total = total.log()
    lse = top.squeeze(1) + log_total
    return lse, (log_total - dot / total).clamp_min_(0.0)


def _floored(x: Tensor) -> Tensor:
    """x with −inf at the lowest finite value (an all −inf row is then uniform), NaN kept and +inf made NaN: a
    non-finite logit is never read as a number (``nan_to_num``'s defaults turned NaN into 0 and +inf into the
    largest finite value, so a NaN or +inf teacher row became a valid distribution: try-out 109, F3)."""
    return x.nan_to_num(nan=float("nan"), posinf=float("nan"), neginf=torch.finfo(x.dtype).min)


def row_softmax(z: Tensor) -> Tensor:
    """softmax(z) per row: the p of ``row_logsumexp_entropy(z, probs=p)`` bit for bit, without its entropy pass.
    (m, V) fp32 → (m, V) fp32.

    p = e / Σ e with e = exp(z − max) per ~1 MiB row block and a pairwise sum (the stock CPU softmax sums
    sequentially: other bits, ~2e-5 off at V = 151,936). −inf logits get p = 0; a row of only −inf logits is
    uniform. Raises nothing; under autograd or torch.compile the functional path gives the same values.
    """
    m = z.shape[0]
    probs = torch.empty_like(z)  # (m, V)
    if not _eager() or m == 0 or _tracked(z):
        _lse_entropy_functional(z, probs)
        return probs
    step = block_rows(z)
    top = torch.empty(m, 1, dtype=z.dtype, device=z.device)  # (m, 1) row max
    total = torch.empty(m, dtype=z.dtype, device=z.device)  # (m,) Σ e
    shifted = block_scratch(min(step, m), z)  # (rows, V) x − max
    for r in range(0, m, step):
        k = min(step, m - r)
        _block_sums(z[r : r + k], shifted[:k], probs[r : r + k], top[r : r + k], total[r : r + k], None, True)
    bad = total.isnan()  # an all −inf row (−inf − (−inf)): computed again with the finite floor (a NaN stays)
    if bool(bad.any()):
        for r in sorted({int(i) // step * step for i in bad.nonzero().view(-1)}):
            k = min(step, m - r)
            x = _floored(z[r : r + k])  # (rows, V)
            _block_sums(x, shifted[:k], probs[r : r + k], top[r : r + k], total[r : r + k], None, True, True)
    return probs


def _block_sums(
    x: Tensor,
    shifted: Tensor,
    e: Tensor,
    top: Tensor,
    total: Tensor,
    dot: Tensor | None,
    normalize: bool,
    floor: bool = False,
) -> None:
    """One (rows, V) block of :func:`row_logsumexp_entropy`: its row max into ``top`` (rows, 1), s = Σ e and
    Σ e·(x − max) into ``total`` and ``dot`` (rows,), through ``shifted`` (rows, V: x − max, then (x − max)·e)
    and ``e`` (rows, V), which keeps e = exp(x − max), divided by s in place with ``normalize`` (while the block
    is in cache). ``dot=None`` (:func:`row_softmax`) skips Σ e·(x − max): e and s keep their bits.

    ``floor``: x − max ≥ the lowest finite value, so that e·(x − max) is 0, not NaN, at a −inf logit (the
    clamp is the identity on every row without one: the same bits).
    """
    torch.amax(x, -1, keepdim=True, out=top)
    torch.sub(x, top, out=shifted)
    if floor:
        shifted.clamp_min_(torch.finfo(x.dtype).min)
    torch.exp(shifted, out=e)
    row_sum(e, total)
    if dot is not None:
        row_sum(shifted.mul_(e), dot)
    if normalize:
        e.div_(total.unsqueeze(1))  # p = e / s


def _lse_entropy_functional(z: Tensor, probs: Tensor | None) -> tuple[Tensor, Tensor]:
    """:func:`row_logsumexp_entropy` with functional ops only (under torch.compile: one block; with autograd:
    ~1 MiB row blocks, whose temporaries stay in cache)."""
    m = z.shape[0]
    lowest = torch.finfo(z.dtype).min
    step = block_rows(z) if _eager() else max(m, 1)
    lse, entropy = [], []
    for r in range(0, m, step):
        x = z[r : r + step]  # (rows, V) view
        if not bool(torch.isfinite(x.amax(-1)).all()):  # an all −inf row: the finite floor
            x = _floored(x)
        top = x.amax(-1, keepdim=True)  # (rows, 1)
        shifted = (x - top).clamp_min(lowest)  # x − max ≤ 0; −inf → lowest, so that 0·x is 0
        e = shifted.exp()
        total = row_sum(e)  # (rows,)
        log_total = total.log()
        if probs is not None:
            probs[r : r + step] = e / total.unsqueeze(1)
        lse.append(top.squeeze(1) + log_total)
        entropy.append((log_total - row_sum(e * shifted) / total).clamp_min(0.0))
    if not lse:
        return z.new_empty(0), z.new_empty(0)
    return torch.cat(lse), torch.cat(entropy)


def log_softmax_(z: Tensor) -> Tensor:
    """log softmax over the last axis, **in place** on ``z`` (m, V) (eager; a new tensor under compile).

    CPU: per block of rows, (z − max) − log Σ exp(z − max) with ``Tensor.sum`` (the rounding of the stock
    kernel, with an accurate sum); CUDA: the fused kernel (tree reduction). Not differentiable (it overwrites
    its input): for autograd use :func:`log_softmax`.
    """
    if not _eager():
        return log_softmax(z)
    if z.device.type != "cpu":
        return torch.log_softmax(z, dim=-1)
    if z.dim() != 2:
        log_softmax_(z.view(-1, z.shape[-1]))  # (…, V) → (rows, V) view, in place
        return z
    m = z.shape[0]
    step = block_rows(z)
    work = block_scratch(min(step, m), z)  # (rows, V) exp of one block
    lse = torch.empty(min(step, m), dtype=z.dtype, device=z.device)  # (rows,)
    for r in range(0, m, step):
        x = z[r : r + step]  # (rows, V) view, stays in cache
        k = x.shape[0]
        log_softmax_block_(x, work[:k], lse[:k])
    return z


def log_softmax_block_(x: Tensor, work: Tensor, lse: Tensor) -> Tensor:
    """:func:`log_softmax_`'s step for one CPU block of rows: x (rows, V) in place, through the block buffers
    ``work`` (rows, V) and ``lse`` (rows,). Returns ``x``.

    (x − max) − log Σ exp(x − max). An all −inf row (its max counts as 0) comes out NaN: −inf − log 0.
    """
    x.sub_(x.amax(-1, keepdim=True).nan_to_num_(neginf=0.0))  # z − max ≤ 0 (an all −inf row stays −inf)
    # log Σ exp(z − max): its max is already 0, so no second max and shift (the stock kernel's bits)
    row_sum(torch.exp(x, out=work), lse).log_()
    return x.sub_(lse.unsqueeze(1))


def log_softmax(z: Tensor) -> Tensor:
    """Differentiable log softmax over the last axis, accurate at any V. (..., V) → (..., V).

    CPU: (z − max) − logsumexp(z − max), whose backward g − softmax(z)·Σg also sums with ``Tensor.sum``
    (the stock log-softmax backward sums sequentially, like its forward). CUDA: ``torch.log_softmax``.
    """
    if z.device.type != "cpu" and not torch.compiler.is_compiling():
        return torch.log_softmax(z, dim=-1)
    shifted = z - z.detach().amax(-1, keepdim=True).nan_to_num(neginf=0.0)  # the gradient ignores the shift
    return shifted - torch.logsumexp(shifted, dim=-1, keepdim=True)
