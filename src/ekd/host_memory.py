"""Keep freed large host-memory blocks in the process for the next step (glibc), as CUDA's caching allocator does.

A training step on CPU allocates and frees the same large blocks every time: the chunked heads' (chunk, V) fp32
logits and gradients (128 MiB each at 1,024 × 32,768), the autograd temporaries of the model bodies. glibc
serves every block above its mmap threshold (dynamic, never above 32 MiB) with fresh anonymous pages and
unmaps it when freed, so each step pays again for the page faults and zeroing of every such block: measured
on a 2-core Xeon (``benchmarks.step_phases``, V=32,768, 2,044 rows), 11% of a `kd` step and 17% of a `sekd`
step. :func:`retain_freed_memory` sets glibc's mmap threshold to 1 GiB and its trim threshold to 2 GiB
(``mallopt``), so those blocks come from the heap and stay mapped between steps. A glibc that refuses a
threshold above 32 MiB (some versions cap it at half their 64 MiB arena heap) gets ``M_MMAP_MAX`` = 0 instead:
no block is mmapped, which keeps the large ones too.

What it costs: the resident set stays near its high-water mark between steps instead of falling back, and the
heap's fragmentation raises the process peak somewhat (11–17% for ekd's steps at V=151,936; TRL's GKD step 25%). Every command
that computes on CPU turns it on where it resolves its device (``ekd.train.prepare.resolve_device``); a GPU run
keeps glibc's own behaviour (its step buffers are CUDA memory, cached by torch, and a model copy freed in host
memory after loading should go back to the OS). It does nothing (``skip_reason`` says why) when:

- the platform's C library is not glibc (macOS, musl), or another allocator is preloaded (``LD_PRELOAD``
  naming jemalloc or tcmalloc: they keep freed memory themselves);
- the user set glibc's own settings (``MALLOC_MMAP_THRESHOLD_``, ``MALLOC_TRIM_THRESHOLD_``,
  ``MALLOC_TOP_PAD_``, ``MALLOC_MMAP_MAX_`` or ``glibc.malloc`` in ``GLIBC_TUNABLES``): theirs win;
- ``EKD_RETAIN_HOST_MEMORY=0``.
"""

from __future__ import annotations

import ctypes
import os
import platform
import sys

from ekd.errors import ConfigError

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_MMAP_MAX = -4
"""``mallopt`` parameter numbers (glibc ``malloc.h``)."""

MMAP_THRESHOLD = 1 << 30
"""Blocks of at least this many bytes are still mmapped (and returned on free): 1 GiB."""
TRIM_THRESHOLD = (1 << 31) - 1
"""Free memory at the top of the heap beyond this many bytes is returned to the OS: 2 GiB (``int`` max)."""

USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "MALLOC_MMAP_MAX_")
OPT_OUT = "EKD_RETAIN_HOST_MEMORY"
OFF = ("0", "false", "no", "off")
ON = ("", "1", "true", "yes", "on")
"""The values of ``EKD_RETAIN_HOST_MEMORY`` (case-insensitive); any other is a ConfigError."""

_applied: bool | None = None


def skip_reason(environ: dict[str, str] | None = None) -> str | None:
    """Why :func:`retain_freed_memory` leaves the allocator alone here (see the module docstring), or None.

    Raises:
        ConfigError: ``EKD_RETAIN_HOST_MEMORY`` is neither an "on" nor an "off" word (``disable`` would
            otherwise leave it on without a word).
    """
    env = os.environ if environ is None else environ
    switch = env.get(OPT_OUT, "1").strip().lower()
    if switch in OFF:
        return f"{OPT_OUT}={env[OPT_OUT]}"
    if switch not in ON:
        raise ConfigError(
            f"{OPT_OUT}={env[OPT_OUT]!r} is not understood; use 0 (or false, no, off) to leave glibc's allocator "
            "as it is, 1 (or true, yes, on) to keep freed blocks"
        )
    if not sys.platform.startswith("linux") or platform.libc_ver()[0] != "glibc":
        return "the C library is not glibc"
    preload = env.get("LD_PRELOAD", "").lower()
    if "jemalloc" in preload or "tcmalloc" in preload or "mimalloc" in preload:
        return "another allocator is preloaded (LD_PRELOAD)"
    chosen = [k for k in USER_SETTINGS if k in env]
    if "glibc.malloc" in env.get("GLIBC_TUNABLES", ""):
        chosen.append("GLIBC_TUNABLES")
    if chosen:
        return f"the user's glibc settings ({', '.join(chosen)}) apply"
    return None


def retain_freed_memory() -> bool:
    """Make glibc keep freed blocks below 1 GiB in the heap, once per process; True if it now does.

    Idempotent (a C library without ``mallopt`` leaves the allocator as it is).

    Raises:
        ConfigError: an ``EKD_RETAIN_HOST_MEMORY`` value that is neither on nor off (``skip_reason``).
    """
    global _applied
    if _applied is None:
        _applied = skip_reason() is None and (
            _mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) or _mallopt(M_MMAP_MAX, 0)
        )
        if _applied:  # the trim threshold matters only once large blocks live in the heap
            _mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    return _applied


def _mallopt(param: int, value: int) -> bool:
    try:
        return bool(ctypes.CDLL(None).mallopt(ctypes.c_int(param), ctypes.c_int(value)))
    except (OSError, AttributeError):
        return False


__all__ = ["retain_freed_memory", "skip_reason"]
