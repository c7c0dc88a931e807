"""Measurement machinery shared by the benchmarks: peak memory on CPU and one-case-per-process runs.

Peak memory is the process's resident-set high-water mark (``VmHWM``) after it was reset (Linux
``/proc/self/clear_refs`` = 5), minus the resident set just before the measured call: everything the call
allocated and touched — logits, temporaries, gradients — and nothing that existed before it (weights,
inputs). Each case runs in a fresh subprocess so cases never share allocator state, with glibc's mmap
threshold fixed at 128 KiB (``MALLOC_MMAP_THRESHOLD_``) so freed buffers go back to the OS at once and the
resident set tracks live memory for every contender alike.

Subprocesses also get ``OMP_WAIT_POLICY=PASSIVE`` (unless set): on a shared machine, OpenMP threads that
spin at barriers while a sibling is preempted made single cases up to 10× slower at random; passive waiting
removes those outliers at a small cost for tiny ops, the same for every contender.
"""

from __future__ import annotations

import gc
import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MMAP_THRESHOLD = "131072"


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
    while len(times) < repeats or sum(times) < min_seconds and len(times) < 10 * max(repeats, 1):
        gc.collect()
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return {"peak_mb": peak, "time_s": min(times), "runs": len(times)}


def run_case(module: str, case: dict, timeout_s: float) -> dict:
    """``python -m <module> '<case json>'`` in a fresh process; its last stdout line is the result (JSON)."""
    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_=MMAP_THRESHOLD, MALLOC_TRIM_THRESHOLD_="0")
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    try:
        proc = subprocess.run(
            [sys.executable, "-m", module, json.dumps(case)],
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
