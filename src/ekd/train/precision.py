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

from ekd.models.load import dtype_name

log = logging.getLogger(__name__)


def autocast_for(precision: str, device_type: str) -> torch.dtype | None:
    """The autocast dtype of ``train.precision`` on a device type ('cuda', 'cpu', ...): none (fp32) for 'fp32',
    and for 'auto' off CUDA; bf16 otherwise ('bf16'; 'auto' on CUDA). One rule for the run's autocast
    (``ekd.train.prepare.autocast_dtype``) and for which saved precisions compute alike
    (``ekd.train.run_dir``)."""
    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return None
    return torch.bfloat16


def teacher_dtype_advice(dtype: torch.dtype) -> str:
    """What a line about a teacher whose outputs are not finite says of the dtype its weights are in:
    ``it runs in float16, and model.teacher_dtype=float32 rules out a 16-bit overflow``, or ``it runs in float32``
    (try-out 112, F4: 'model.teacher_dtype=auto' said nothing, and float32 was advised to a float32 teacher)."""
    name = dtype_name(dtype)
    if dtype.itemsize == 2:
        return f"it runs in {name}, and model.teacher_dtype=float32 rules out a 16-bit overflow"
    return f"it runs in {name}"


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


def check_forward_under_autocast(
    model: torch.nn.Module,
    vocab_size: int,
    role: str,
    device: torch.device,
    autocast_dtype: torch.dtype | None,
) -> None:
    """One forward of a few token ids under the run's autocast, before training: a model that runs alone but not
    under it is refused in one line (try-out 78, F1: a float16 GPT-2 teacher under CPU bf16 autocast failed at
    the first step with a traceback, "mixed dtype (CPU)", in its LayerNorm; the model probes run without
    autocast, :func:`ekd.models.exact.ieee_fp32`). Nothing to check without autocast.

    Raises:
        ModelError: the forward raised; the line names the weights' dtype, the autocast and the settings to change.
    """
    from ekd.errors import ModelError, first_line

    if autocast_dtype is None:
        return
    ids = torch.arange(min(8, vocab_size), device=device)[None]  # (1, n)
    weights = next(model.parameters()).dtype
    try:
        with torch.no_grad(), head_precision(device, autocast_dtype):
            model(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    except RuntimeError as e:
        amp = dtype_name(autocast_dtype)
        fix = (
            f"load it in {amp} or float32 (model.teacher_dtype) or set train.precision=fp32"
            if role == "teacher"
            else "set train.precision=fp32"
        )
        raise ModelError(
            f"model.{role}: its forward fails under {device.type} autocast to {amp} with its "
            f"{str(weights).removeprefix('torch.')} weights ({type(e).__name__}: {first_line(e)}); {fix}"
        ) from None
