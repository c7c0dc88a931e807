"""Matrix products with fp32 results for fp32 or 16-bit operands: the output heads' GEMMs.

Rounding logits to bf16 moves a logit of 20 by up to 0.04 (2⁻⁹ relative), i.e. each probability by up to
4%, and a bf16 weight-gradient accumulator rounds every chunk's addition; so the heads keep their operands
in the weights' dtype (tensor cores on GPU) but accumulate and return fp32, as TRL's fused loss does:

- CUDA, 16-bit operands: ``torch.mm(a, b, out_dtype=torch.float32)`` (cuBLAS accumulates in fp32 and
  writes fp32; no copy of either operand).
- anywhere else (CPU has no 16-bit GEMM with an fp32 output): the operands are cast to fp32 first.

Products that sum over the vocabulary (the hidden-state gradient g·W) are split into blocks of V.

Under ``torch.autocast`` the heads follow autocast (``compute_dtype``): their operands are rounded to the
autocast dtype (bf16 on GPU), their products still accumulated and returned in fp32. The GEMMs here never let
autocast round their *output*: they run with autocast off, on operands already in the dtype chosen.
"""

from __future__ import annotations

import torch
from torch import Tensor

VOCAB_BLOCK = 4096
"""Vocabulary entries per GEMM when a product sums over the vocabulary (``contract_vocab_fp32``)."""

_FP32_OUT_BLOCK_ELEMENTS = 1 << 24
"""Rows of ``addmm_fp32_``'s fp32 partial product per block on CUDA: 64 MiB of fp32."""


def compute_dtype(weight: Tensor) -> torch.dtype:
    """Operand dtype of a head's GEMMs: the autocast dtype where autocast is on for ``weight``'s device
    (the training step turns it on for the heads on GPU, ``train.precision``), else the weight's dtype."""
    device = weight.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return weight.dtype


def gemm_operand(x: Tensor, dtype: torch.dtype) -> Tensor:
    """``x`` rounded to ``dtype`` as a GEMM operand: 16-bit stays 16-bit on CUDA; elsewhere (no 16-bit GEMM
    with an fp32 output) the rounded values are widened back to fp32, so the CPU computes what CUDA does."""
    x = x.to(dtype)
    return x if x.is_cuda or x.dtype == torch.float32 else x.float()


def _no_autocast(t: Tensor):
    return torch.autocast(t.device.type, enabled=False)


def _fp32_out_gemm(a: Tensor, b: Tensor) -> bool:
    """Whether ``torch.mm(a, b, out_dtype=float32)`` applies: 16-bit CUDA operands."""
    sixteen = (torch.float16, torch.bfloat16)
    return a.is_cuda and a.dtype in sixteen and b.dtype == a.dtype


def _mm_fp32(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a @ b in fp32, a (..., K), b (K, N) → (..., N); no autograd, autocast off. fp32 operands write into
    ``out`` when given (fp32, the result's shape); other operands ignore it."""
    with _no_autocast(a):
        if a.dtype == torch.float32 and b.dtype == torch.float32:
            return a @ b if out is None else torch.matmul(a, b, out=out)
        if _fp32_out_gemm(a, b):
            out = torch.mm(a.reshape(-1, a.shape[-1]), b, out_dtype=torch.float32)  # (rows, N)
            return out.reshape(*a.shape[:-1], b.shape[-1])
        return a.float() @ b.float()


def contract_vocab_fp32(g: Tensor, w: Tensor) -> Tensor:
    """g @ w summed over the long axis in blocks of ``VOCAB_BLOCK``: g (..., V), w (V, D) → (..., D) fp32.

    One GEMM accumulates its V products in order (a relative error ~3.7e-5 at V = 151,936 when the
    gradient's entries cancel, as q − p's do); blocks of 4,096 bring it to ~1e-6 for the same FLOPs.
    """
    out = _mm_fp32(g[..., :VOCAB_BLOCK], w[:VOCAB_BLOCK])  # (..., D)
    for v in range(VOCAB_BLOCK, w.shape[0], VOCAB_BLOCK):
        out += _mm_fp32(g[..., v : v + VOCAB_BLOCK], w[v : v + VOCAB_BLOCK])
    return out


class _MatmulFp32(torch.autograd.Function):
    """a @ b in fp32 whose backward contracts the vocabulary axis in blocks (``contract_vocab_fp32``)."""

    @staticmethod
    def forward(ctx, a, b):  # type: ignore[override]
        ctx.save_for_backward(a, b)
        return _mm_fp32(a, b)

    @staticmethod
    def backward(ctx, grad):  # type: ignore[override]
        a, b = ctx.saved_tensors
        grad_a = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_a = contract_vocab_fp32(grad, b.t()).to(a.dtype)  # (..., K) = (..., N)·(N, K)
        if ctx.needs_input_grad[1]:
            # (rows, K), (rows, N)
            flat_a, flat_g = (
                a.reshape(-1, a.shape[-1]),
                grad.reshape(-1, grad.shape[-1]),
            )
            grad_b = _mm_fp32(flat_a.t(), flat_g.to(flat_a.dtype)).to(b.dtype)  # (K, N)
        return grad_a, grad_b


def matmul_fp32(a: Tensor, b: Tensor, out: Tensor | None = None) -> Tensor:
    """a @ b accumulated and returned in fp32. a (..., K), b (K, N) → (..., N) fp32; differentiable, with
    the backward's sum over N (the vocabulary, for a head) in blocks. ``out`` (no-grad fp32 products only,
    else ignored): write the result there, e.g. a ``RowBuffer`` view reused chunk after chunk."""
    if torch.is_grad_enabled() and (a.requires_grad or b.requires_grad):
        return _MatmulFp32.apply(a, b)
    return _mm_fp32(a, b, out)


class RowBuffer:
    """One fp32 (rows, N) buffer handed out chunk after chunk: ``take(m, n)`` is a view of its first m rows.

    A chunked loop that allocates its (chunk, V) logits afresh pays for new zeroed pages every chunk (a
    128 MiB buffer is above any glibc mmap threshold: ~21 ms of page faults at 1,024 × 32,768 on CPU, about
    the cost of four elementwise passes over it); reusing one buffer pays once per call. The holder must
    be done with the previous view before taking the next. Grows when asked for more rows.
    """

    def __init__(self) -> None:
        self._buf: Tensor | None = None

    def take(self, rows: int, cols: int, device: torch.device) -> Tensor:
        """A (rows, cols) fp32 view, contents undefined."""
        buf = self._buf
        if buf is None or buf.shape[0] < rows or buf.shape[1] != cols or buf.device != device:
            self._buf = buf = torch.empty((rows, cols), dtype=torch.float32, device=device)
        return buf[:rows]


def addmm_fp32_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc += a @ b in place, acc (N, K) fp32, a (N, m), b (m, K) in any float dtype. → acc.

    16-bit CUDA operands: fp32 partial products of ~64 MiB row blocks added into acc (no full-size
    temporary); otherwise an fp32 ``addmm_`` on fp32 copies of the (small) operands.
    """
    with _no_autocast(acc):
        if not _fp32_out_gemm(a, b):
            return acc.addmm_(a.float(), b.float())
        rows = max(1, _FP32_OUT_BLOCK_ELEMENTS // max(1, acc.shape[1]))
        for r in range(0, acc.shape[0], rows):
            acc[r : r + rows].add_(torch.mm(a[r : r + rows], b, out_dtype=torch.float32))  # (rows, K)
        return acc


def mm_fp32_into_(out: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """out = a @ b for fp32 a (N, m), b (m, K) into fp32 ``out`` (N, K) without a zero-fill; autocast off."""
    with _no_autocast(out):
        return torch.mm(a, b, out=out)
