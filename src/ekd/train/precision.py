"""Numerical precision of a run (``train.precision``): autocast for the bodies and heads, TF32 on GPU.

- The student's and teacher's bodies, and their output heads, run under ``torch.autocast`` in the run's
  dtype (``ekd.train.prepare.autocast_dtype``: bf16 on GPU by default, none — fp32 — on CPU). The heads
  follow autocast through ``ekd.losses.matmul.compute_dtype``: GEMM operands in bf16, products accumulated
  and returned in fp32; softmax, divergences, their gradients and every sum stay fp32.
- On CUDA, unless ``train.precision=fp32``, the matmuls that remain fp32 (the EGAD projection, anything
  outside autocast) use TF32 tensor cores.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def autocast_for(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on a device type ('cuda', 'cpu', ...): none (fp32) for 'fp32',
    and for 'auto' off CUDA; bf16 otherwise ('bf16'; 'auto' on CUDA). One rule for the run's autocast
    (``ekd.train.prepare.autocast_dtype``) and for which saved precisions compute alike
    (``ekd.train.run_dir``)."""
    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return None
    return torch.bfloat16


def head_precision(device: torch.device, autocast_dtype: torch.dtype | None) -> torch.autocast:
    """Autocast for a body or the output heads: GEMM operands in ``autocast_dtype``; disabled when None."""
    return torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None)


def enable_tf32(precision: str, device: torch.device) -> bool:
    """Let fp32 matmuls and convolutions use TF32 on CUDA unless ``precision`` is 'fp32' (process-wide).

    Returns whether TF32 was turned on (never on CPU, which has no TF32).
    """
    if device.type != "cuda" or precision == "fp32":
        return False
    torch.backends.cuda.matmul.fp32_precision = "tf32"
    torch.backends.cudnn.conv.fp32_precision = "tf32"
    log.info("TF32 on for fp32 matmuls (train.precision=%s)", precision)
    return True
