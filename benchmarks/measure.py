"""Measurement machinery shared by the benchmarks: peak memory on CPU and one-case-per-process runs.

Peak memory is the process's resident-set high-water mark (``VmHWM``) after it was reset (Linux
``/proc/self/clear_refs`` = 5), minus the resident set just before the measured call: everything the call
allocated and touched — logits, temporaries, gradients — and nothing that existed before it (weights,
inputs).

Each case runs in two fresh subprocesses, so cases never share allocator state:

- **time** as an ekd run on CPU has it: OpenMP's defaults, and glibc keeping freed blocks below 1 GiB
  (``ekd.host_memory.retain_freed_memory``, which every ekd run on CPU turns on) — for every contender, TRL and
  Liger included, so that a ratio compares code, not allocator settings;
- **memory** (one call) with glibc's mmap threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``) and no heap
  trimming threshold, so freed buffers go back to the OS at once and the resident set tracks live memory for
  every contender alike.

Timing under those memory settings, or under ``OMP_WAIT_POLICY=PASSIVE`` (which this harness once set against
spin-wait outliers on a shared machine), measures another program: at V=151,936 PASSIVE made ekd's `kd` step
1.8× slower (thousands of small parallel ops each wake their threads) and TRL's GKD step 0.92×, and the fixed
mmap threshold added 4% and 10%.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from ekd.host_memory import retain_freed_memory

ROOT = Path(__file__).resolve().parent.parent
MMAP_THRESHOLD = "131072"
MEMORY_ONLY = "EKD_BENCH_MEMORY_ONLY"
"""Set in the memory subprocess: ``measure_call`` makes its one measured call and no timed repeats."""
MEMORY_KEYS = ("peak_mb", "step_mb", "rss_mb")
"""Result fields taken from the memory subprocess; every other field comes from the timing subprocess."""


def _status_mb(field: str) -> float:
    text = Path("/proc/self/status").read_text()
    return int(re.search(rf"{field}:\s+(\d+)", text).group(1)) / 1024.0


def measure_call(fn: Callable[[], None], repeats: int = 1, min_seconds: float = 0.0) -> dict[str, float]:
    """Run ``fn`` once under the peak-memory probe, then again while the total time is short.

    Returns:
        {"peak_mb": MB above the resident set before the first call, "time_s": fastest call, "runs": n}.
    """
    gc.collect()
    base = _status_mb("VmRSS")
    try:
        Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current resident set
        resettable = True
    except OSError:
        resettable = False
    t0 = time.perf_counter()
    fn()
    times = [time.perf_counter() - t0]
    peak = _status_mb("VmHWM") - base if resettable else float("nan")
    if os.environ.get(MEMORY_ONLY):
        return {"peak_mb": peak, "time_s": times[0], "runs": 1}
    while len(times) < repeats or sum(times) < min_seconds and len(times) < 10 * max(repeats, 1):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"peak_mb": peak, "time_s": min(times), "runs": len(times)}


def run_case(module: str, case: dict, timeout_s: float) -> dict:
    """``python -m <module> '<case json>'`` in two fresh processes (see the module docstring): the result
    (JSON, its last stdout line) of the timing process, with the ``MEMORY_KEYS`` of the memory process."""
    timed = _run_process(module, case, timeout_s, {})
    if "error" in timed or not _has_memory(timed):
        return timed
    memory = _run_process(
        module,
        case,
        timeout_s,
        {"MALLOC_MMAP_THRESHOLD_": MMAP_THRESHOLD, "MALLOC_TRIM_THRESHOLD_": "0", MEMORY_ONLY: "1"},
    )
    if "error" in memory:
        return memory
    return _with_memory(timed, memory)


def _has_memory(result: dict) -> bool:
    return any(k in MEMORY_KEYS or isinstance(v, dict) and _has_memory(v) for k, v in result.items())


def _with_memory(timed: dict, memory: dict) -> dict:
    """``timed`` with every ``MEMORY_KEYS`` field (at any depth, e.g. per N) replaced by ``memory``'s."""
    out = {}
    for k, v in timed.items():
        if k in MEMORY_KEYS and k in memory:
            out[k] = memory[k]
        elif isinstance(v, dict) and isinstance(memory.get(k), dict):
            out[k] = _with_memory(v, memory[k])
        else:
            out[k] = v
    return out


def allocator_option(parser: argparse.ArgumentParser) -> None:
    """``--default-malloc`` for a benchmark run in one process: leave glibc as it is instead of timing as an ekd
    run on CPU does (:func:`use_allocator`), for side-by-side figures of the allocator setting."""
    parser.add_argument(
        "--default-malloc",
        action="store_true",
        help="leave glibc's allocator as it is (an ekd run on CPU keeps freed blocks: ekd.host_memory)",
    )


def use_allocator(default_malloc: bool = False) -> None:
    """The allocator of an ekd run on CPU for this process (``ekd.host_memory``), unless ``default_malloc``."""
    if not default_malloc:
        retain_freed_memory()


LAUNCH = (
    "import runpy, sys; from ekd.host_memory import retain_freed_memory; retain_freed_memory(); "
    "sys.argv = sys.argv[1:]; runpy.run_module(sys.argv[0], run_name='__main__', alter_sys=True)"
)
"""``python -c LAUNCH module args``: ``python -m module args`` with an ekd CPU run's allocator setting (which
leaves the memory process's explicit glibc settings alone)."""


def _run_process(module: str, case: dict, timeout_s: float, extra_env: dict[str, str]) -> dict:
    env = {**os.environ, **extra_env}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", LAUNCH, module, json.dumps(case)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout_s,
        )
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout_s:.0f} s"}
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:160]}"}
    return json.loads(lines[-1])
