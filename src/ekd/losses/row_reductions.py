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
"""Elements per row block (1 MiB of fp32): the temporaries of one block stay in cache on CPU."""


def block_rows(x: Tensor) -> int:
    """Rows per block of about ``_BLOCK_ELEMENTS`` elements (at least one)."""
    return max(1, _BLOCK_ELEMENTS // max(1, x.shape[-1]))


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
        torch.sum(prod, -1, out=out[r : r + step])  # (rows,)
    return out


def _logsumexp_into(x: Tensor, work: Tensor, out: Tensor) -> Tensor:
    """``torch.logsumexp(x, -1)`` of a (rows, V) block into ``out`` (rows,), its exp in ``work`` (rows, V).

    The same operations as the stock CPU kernel (max, infinite max → 0, Σ exp(x − max), log, + max), so
    the same bits, without its (rows, V) temporary.
    """
    top = x.amax(-1, keepdim=True)  # (rows, 1)
    top.masked_fill_(top.abs() == float("inf"), 0.0)
    torch.sub(x, top, out=work).exp_()
    return torch.sum(work, -1, out=out).log_().add_(top.squeeze(1))


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


def row_logsumexp_entropy(z: Tensor) -> tuple[Tensor, Tensor]:
    """log Σ_v exp z_v and the entropy H(softmax(z)) per row, one exp pass. (m, V) fp32 → (m,), (m,).

    Per block of rows (two reused (rows, V) buffers, in cache): x = z − max, e = exp x, s = Σ e, then
    lse = max + log s and H = log s − Σ e·x / s. Summing the shifted x (≤ 0) avoids the cancellation of
    H = lse − Σ p·z when the logits are large; sums are ``Tensor.sum``'s (pairwise). −inf logits (masked
    ids) contribute nothing; a row of only −inf logits is uniform over the most negative finite fp32 value
    (lse ≈ that value + log V, H = log V), as ``ekd.train.token_stats.softmax_entropy`` treats it.
    """
    m, v = z.shape
    lse = torch.empty(m, dtype=z.dtype, device=z.device)
    entropy = torch.empty(m, dtype=z.dtype, device=z.device)
    lowest = torch.finfo(z.dtype).min
    step = block_rows(z) if _eager() else max(m, 1)
    eager = _eager() and m > 0 and not _tracked(z)
    shifted_buf = block_scratch(min(step, m), z) if eager else None  # (rows, V) x − max
    exp_buf = block_scratch(min(step, m), z) if eager else None  # (rows, V) exp, then exp·x
    for r in range(0, m, step):
        x = z[r : r + step]  # (rows, V) view
        k = x.shape[0]
        top = x.amax(-1, keepdim=True)  # (rows, 1)
        if not bool(torch.isfinite(top).all()):  # an all −inf row: the finite-floor convention
            x = x.nan_to_num(neginf=lowest)
            top = x.amax(-1, keepdim=True)
        if eager:
            _block_lse_entropy(x, top, shifted_buf[:k], exp_buf[:k], lse[r : r + k], entropy[r : r + k])
        else:
            shifted = (x - top).clamp_min(lowest)  # x − max ≤ 0; −inf → lowest, so that 0·x is 0
            e = shifted.exp()
            total = e.sum(-1)  # (rows,)
            log_total = total.log()
            lse[r : r + step] = top.squeeze(1) + log_total
            entropy[r : r + step] = (log_total - (e * shifted).sum(-1) / total).clamp_min_(0.0)
    return lse, entropy


def _block_lse_entropy(
    x: Tensor, top: Tensor, shifted: Tensor, e: Tensor, lse: Tensor, entropy: Tensor, clamp: bool = False
) -> None:
    """:func:`row_logsumexp_entropy` of one (rows, V) block with a finite row max ``top`` (rows, 1), into
    ``lse`` and ``entropy`` (rows,), through the block buffers ``shifted`` and ``e`` (rows, V).

    x − max is −inf only at −inf logits (or an fp32 overflow of the difference); there e·x = 0·(−inf) is NaN
    and the convention needs −inf → the lowest finite value. Rather than clamping every block (one more pass
    over it), a block whose entropy comes out NaN is computed again with the clamp: the same bits either way.
    """
    torch.sub(x, top, out=shifted)
    if clamp:
        shifted.clamp_min_(torch.finfo(x.dtype).min)
    torch.exp(shifted, out=e)
    total = e.sum(-1)  # (rows,)
    log_total = total.log()
    torch.add(top.squeeze(1), log_total, out=lse)
    torch.sub(log_total, e.mul_(shifted).sum(-1) / total, out=entropy).clamp_min_(0.0)
    if not clamp and bool(entropy.isnan().any()):
        _block_lse_entropy(x, top, shifted, e, lse, entropy, clamp=True)


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
    torch.sum(torch.exp(x, out=work), -1, out=lse).log_()
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
