"""Bytes a rank holds for parameters, gradients and optimizer state: its local shards only; its peak memory.

Pure counting over tensors, for the start-of-run log line (and ``ekd plan`` to compare its estimate with).
A DTensor (FSDP2) counts its local shard; a plain tensor counts whole; a tensor reached twice (tied
embeddings) counts once.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable

import torch
from torch import nn


def _local(t: torch.Tensor) -> torch.Tensor:
    """This rank's part of ``t``: a DTensor's local shard, else ``t``."""
    to_local = getattr(t, "to_local", None)
    return to_local() if callable(to_local) else t


def tensor_bytes(tensors: Iterable[torch.Tensor | None]) -> int:
    """Σ bytes of the local parts of ``tensors`` (None skipped), each storage view counted once."""
    seen: set[tuple] = set()
    total = 0
    for t in tensors:
        if t is None:
            continue
        local = _local(t)
        key = (local.device, local.data_ptr(), local.numel(), local.dtype)
        if local.numel() and key in seen:
            continue
        seen.add(key)
        total += local.numel() * local.element_size()
    return total


def param_bytes(module: nn.Module | None) -> int:
    """Bytes of ``module``'s parameters held by this rank (0 for None)."""
    return 0 if module is None else tensor_bytes(p for p in module.parameters())


def grad_bytes(module: nn.Module | None) -> int:
    """Bytes of ``module``'s gradients held by this rank (after a backward; 0 before)."""
    return 0 if module is None else tensor_bytes(p.grad for p in module.parameters())


def optimizer_bytes(optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the optimizer's tensor state (AdamW: exp_avg, exp_avg_sq, step) held by this rank."""
    return tensor_bytes(v for state in optimizer.state.values() for v in state.values() if torch.is_tensor(v))


def memory_line(rank: int, teacher: int, params: int, grads: int, optim: int, copies: int = 0) -> str:
    """One log line of a rank's bytes, in MiB; ``copies``: the frozen student copies a self-distillation
    objective teaches with (its EMA, its initial weights), said where there are any (try-out 144, F2)."""
    mib = 2.0**20
    copy = f", student copy {copies / mib:.1f} MiB" if copies else ""
    return (
        f"rank {rank} holds: teacher params {teacher / mib:.1f} MiB, student params {params / mib:.1f} MiB{copy}, "
        f"grads {grads / mib:.1f} MiB, optimizer state {optim / mib:.1f} MiB"
    )


def peak_memory_bytes(device: torch.device) -> int:
    """This process's peak memory so far, in bytes: on a CUDA ``device`` the most torch has had allocated there
    (``torch.cuda.max_memory_allocated``: tensors; the CUDA context and the caching allocator's reserve come on
    top, as ``nvidia-smi`` shows), elsewhere the process's peak resident set (``getrusage``'s ``ru_maxrss``: every
    host allocation, data preparation included); 0 where neither can be read."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    try:
        import resource
    except ImportError:  # not a POSIX system
        return 0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)  # bytes on macOS, KiB on Linux
