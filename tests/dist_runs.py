"""Run several ``ekd distill`` argument lists in one ``torchrun`` process group (for test_distributed.py).

    torchrun --nproc_per_node=2 tests/dist_runs.py RUNS.json     # RUNS.json: a list of argument lists

One spawn serves every method of the test: the process group and the imports are paid once. Tests start it
with :func:`torchrun_runs`.

``EKD_TEST_KILL_AT=RUN:STEP`` sends SIGKILL to rank 0 of run RUN while it writes checkpoint STEP (its shards
are written, the manifest not yet): a kill -9 in the middle of a checkpoint (test_sharded_checkpoint.py).
``EKD_TEST_LOUD=1`` keeps INFO log lines (``-q`` otherwise).
``EKD_TEST_CODES=DIR`` runs every argument list whatever the exit codes and writes them to ``DIR/rank<r>.json``
(runs that are meant to be refused, test_rank_errors.py).
``EKD_TEST_TRACE=DIR`` writes ``DIR/rank<r>.json``: every ``torch.distributed`` collective this rank entered and
left (monotonic clock, run index, whether on the default group) and the span of ``run_end_tasks`` (rank 0's
lm-eval tasks), for test_fsdp.py to check who waits where while rank 0 runs the tasks.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import torch.distributed as dist

from ekd.cli import main


def _kill_while_writing(run: str, step: int) -> None:
    """SIGKILL this process when it is about to write the manifest of run ``run``'s checkpoint ``step``."""
    from ekd.train import sharded_checkpoint

    write = sharded_checkpoint.atomic_write_text

    def write_or_die(path, text):
        p = Path(path)
        if p.name == "manifest.json" and p.parent.name == f"step-{step:06d}.tmp" and p.parents[2].name == run:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(path, text)

    sharded_checkpoint.atomic_write_text = write_or_die


COLLECTIVES = (
    "barrier",
    "all_reduce",
    "broadcast",
    "reduce",
    "all_gather",
    "all_gather_into_tensor",
    "reduce_scatter_tensor",
    "broadcast_object_list",
    "all_gather_object",
    "gather_object",
)


def _trace(events: list, current: list) -> None:
    """Record every collective of ``torch.distributed`` and the span of the trainer's ``run_end_tasks``."""
    import inspect
    import time

    from ekd.train import trainer

    def traced(name, fn):
        signature = inspect.signature(fn)

        def call(*args, **kwargs):
            group = signature.bind(*args, **kwargs).arguments.get("group")
            event = {"what": name, "run": current[0], "world": group in (None, dist.group.WORLD)}
            event["t0"] = time.monotonic()
            try:
                return fn(*args, **kwargs)
            finally:
                events.append({**event, "t1": time.monotonic()})

        return call

    for name in COLLECTIVES:
        setattr(dist, name, traced(name, getattr(dist, name)))
    trainer.run_end_tasks = traced("run_end_tasks", trainer.run_end_tasks)


def run_all(path: str) -> int:
    if kill := os.environ.get("EKD_TEST_KILL_AT"):
        run, step = kill.split(":")
        _kill_while_writing(run, int(step))
    quiet = [] if os.environ.get("EKD_TEST_LOUD") else ["-q"]
    events: list = []
    current = [0]
    if trace := os.environ.get("EKD_TEST_TRACE"):
        _trace(events, current)
    codes_dir = os.environ.get("EKD_TEST_CODES")
    codes: list[int] = []
    dist.init_process_group("gloo")
    try:
        for i, args in enumerate(json.loads(Path(path).read_text())):
            current[0] = i
            code = main([*quiet, "distill", *args])
            codes.append(code)
            if code != 0 and not codes_dir:
                return code
        if codes_dir:
            Path(codes_dir, f"rank{dist.get_rank()}.json").write_text(json.dumps(codes))
        return 0
    finally:
        if trace:
            Path(trace, f"rank{dist.get_rank()}.json").write_text(json.dumps(events))
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (for ``--master_port``)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun_runs(
    runs: list[list[str]], path: Path, env: dict[str, str] | None = None, timeout: int = 600
) -> subprocess.CompletedProcess:
    """``runs`` (argument lists of ``ekd distill``) written to ``path`` and run by this script in one 2-rank
    ``torchrun``, one OpenMP thread per rank; ``env``: extra variables (the ``EKD_TEST_*`` switches above)."""
    path.write_text(json.dumps(runs))
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={free_port()}",
        str(Path(__file__)),
        str(path),
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env)


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1]))
