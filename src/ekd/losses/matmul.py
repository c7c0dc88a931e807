"""Matrix products with fp32 results for fp32 or 16-bit operands: the output heads' GEMMs.

Rounding logits to bf16 moves a logit of 20 by up to 0.04 (2⁻⁹ relative), i.e. each probability by up to
4%, and a bf16 weight-gradient accumulator rounds every chunk's addition; so the heads keep their operands
in the weights' dtype (tensor cores on GPU) but accumulate and return fp32, as TRL's fused loss does:

- CUDA, 16-bit operands, no autograd: ``torch.mm(a, b, out_dtype=torch.float32)`` (cuBLAS accumulates
  in fp32 and writes fp32; no copy of either operand).
- anywhere else (CPU has no 16-bit GEMM with an fp32 output; under autograd): the operands are cast to
  fp32 first, so the product is exact in the operands given.
"""

from __future__ import annotations

import torch
from torch import Tensor

_FP32_OUT_BLOCK_ELEMENTS = 1 << 24
"""Rows of ``addmm_fp32_``'s fp32 partial product per block on CUDA: 64 MiB of fp32."""


def _fp32_out_gemm(a: Tensor, b: Tensor) -> bool:
    """Whether ``torch.mm(a, b, out_dtype=float32)`` applies: 16-bit CUDA operands outside autograd."""
    sixteen = (torch.float16, torch.bfloat16)
    needs_graph = torch.is_grad_enabled() and (a.requires_grad or b.requires_grad)
    return a.is_cuda and a.dtype in sixteen and b.dtype == a.dtype and not needs_graph


def matmul_fp32(a: Tensor, b: Tensor) -> Tensor:
    """a @ b accumulated and returned in fp32. a (..., K), b (K, N) → (..., N) fp32; differentiable."""
    if a.dtype == torch.float32 and b.dtype == torch.float32:
        return a @ b
    if _fp32_out_gemm(a, b):
        out = torch.mm(a.reshape(-1, a.shape[-1]), b, out_dtype=torch.float32)  # (rows, N)
        return out.reshape(*a.shape[:-1], b.shape[-1])
    return a.float() @ b.float()


def addmm_fp32_(acc: Tensor, a: Tensor, b: Tensor) -> Tensor:
    """acc += a @ b in place, acc (N, K) fp32, a (N, m), b (m, K) in any float dtype. → acc.

    16-bit CUDA operands: fp32 partial products of ~64 MiB row blocks added into acc (no full-size
    temporary); otherwise an fp32 ``addmm_`` on fp32 copies of the (small) operands.
    """
    if not _fp32_out_gemm(a, b):
        return acc.addmm_(a.float(), b.float())
    rows = max(1, _FP32_OUT_BLOCK_ELEMENTS // max(1, acc.shape[1]))
    for r in range(0, acc.shape[0], rows):
        acc[r : r + rows].add_(torch.mm(a[r : r + rows], b, out_dtype=torch.float32))  # (rows, K)
    return acc
