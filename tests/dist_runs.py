"""Run several ``ekd distill`` argument lists in one ``torchrun`` process group (for test_distributed.py).

    torchrun --nproc_per_node=2 tests/dist_runs.py RUNS.json     # RUNS.json: a list of argument lists

One spawn serves every method of the test: the process group and the imports are paid once.

``EKD_TEST_KILL_AT=RUN:STEP`` sends SIGKILL to rank 0 of run RUN while it writes checkpoint STEP (its shards
are written, the manifest not yet): a kill -9 in the middle of a checkpoint (test_sharded_checkpoint.py).
``EKD_TEST_LOUD=1`` keeps INFO log lines (``-q`` otherwise).
"""

from __future__ import annotations

import json
import os
import signal
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


def run_all(path: str) -> int:
    if kill := os.environ.get("EKD_TEST_KILL_AT"):
        run, step = kill.split(":")
        _kill_while_writing(run, int(step))
    quiet = [] if os.environ.get("EKD_TEST_LOUD") else ["-q"]
    dist.init_process_group("gloo")
    try:
        for args in json.loads(Path(path).read_text()):
            code = main([*quiet, "distill", *args])
            if code != 0:
                return code
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1]))
