"""IEEE fp32 arithmetic for the model probes, whatever the run's precision settings.

The probes that accept or refuse a model (:func:`ekd.models.load.check_output_head`,
:func:`ekd.models.isolation.check_document_isolation`) compare two computations of the same numbers — the
model's logits against ekd's head on its hidden states, a document alone against the same document packed —
and read a difference beyond rounding as a transform ekd does not know. Under TF32, which a GPU run turns on
before it loads its models (:func:`ekd.train.precision.enable_tf32`), an fp32 GEMM rounds its operands to 10
mantissa bits and two GEMM shapes of one product differ by ~1e-3 of their scale: on an H200 the demo's own
llama student was refused (2.8e-4 > the 1e-4 tolerance). Run inside :func:`ieee_fp32`, a probe of an fp32 model
measures the model, not the run's matmul precision; a 16-bit model computes in its own dtype either way.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch


@contextmanager
def ieee_fp32(device_type: str) -> Iterator[None]:
    """fp32 matmuls and convolutions in IEEE fp32 (no TF32) and autocast off on ``device_type`` ('cuda',
    'cpu', ...) for the block; the process-wide settings are restored after it, also when it raises."""
    matmul, conv = torch.backends.cuda.matmul, torch.backends.cudnn.conv
    saved = matmul.fp32_precision, conv.fp32_precision
    matmul.fp32_precision = conv.fp32_precision = "ieee"
    try:
        with torch.autocast(device_type, enabled=False):
            yield
    finally:
        matmul.fp32_precision, conv.fp32_precision = saved


__all__ = ["ieee_fp32"]
