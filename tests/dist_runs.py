"""Run several ``ekd distill`` argument lists in one ``torchrun`` process group (for test_distributed.py).

    torchrun --nproc_per_node=2 tests/dist_runs.py RUNS.json     # RUNS.json: a list of argument lists

One spawn serves every method of the test: the process group and the imports are paid once.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch.distributed as dist

from ekd.cli import main


def run_all(path: str) -> int:
    dist.init_process_group("gloo")
    try:
        for args in json.loads(Path(path).read_text()):
            code = main(["-q", "distill", *args])
            if code != 0:
                return code
        return 0
    finally:
        dist.destroy_process_group()


if __name__ == "__main__":
    sys.exit(run_all(sys.argv[1]))
