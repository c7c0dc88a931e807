"""Run several ``ekd distill`` argument lists in one ``torchrun`` process group (for test_distributed.py).

    torchrun --nproc_per_node=2 tests/dist_runs.py RUNS.json     # RUNS.json: a list of argument lists

One spawn serves every method of the test: the process group and the imports are paid once. Tests start it
with :func:`torchrun_runs`. The tests' own multi-process workers start with :func:`gloo_ranks`; every process
here ends its groups through ekd's teardown and checks that none is left (:func:`assert_groups_ended`).

``EKD_TEST_KILL_AT=RUN:STEP`` sends SIGKILL to rank 0 of run RUN while it writes checkpoint STEP (its shards
are written, the manifest not yet): a kill -9 in the middle of a checkpoint (test_sharded_checkpoint.py).
``EKD_TEST_SIGTERM_IN_SAVE=RUN:STEP`` sends every rank of run RUN SIGTERM (torchrun's forward of a scheduler's)
from inside ``torch.save`` while DCP writes that rank's shard of checkpoint STEP: the interrupt ends the zip file
half written, whose clean-up raises torch's ``unexpected pos`` RuntimeError (try-out 52, F1).
``EKD_TEST_STOP_AT=RUN:STEP:RANK:HOW`` ends rank RANK of run RUN when it starts step STEP (0-based): ``error``
raises a CacheError there (a record of its own shard failing its CRC), ``kill`` sends it SIGKILL (``kill -9``),
``interrupt`` raises KeyboardInterrupt (Ctrl-C reaching that rank first),
while the other ranks go on into the step's collectives (test_rank_errors.py).
``EKD_TEST_LOUD=1`` keeps INFO log lines (``-q`` otherwise).
``EKD_TEST_MARK_RUNS=1`` writes the line ``RUN_MARK`` + index to stderr before each run, between two barriers: every
rank's output of the runs before it is written, none of this run's yet; :func:`run_outputs` cuts the launch's
stderr at those lines (several tests' runs in one launch, each test reading its own runs' lines:
test_sharded_checkpoint.py).
``EKD_TEST_CODES=DIR`` runs every argument list whatever the exit codes and writes them to ``DIR/rank<r>.json``
(runs that are meant to be refused, test_rank_errors.py).
``EKD_TEST_BODY=MODULE:FUNCTION:DIR`` then calls ``MODULE.FUNCTION(rank, DIR)`` on every rank in the job's group
(a test's own 2-rank worker, as :func:`gloo_ranks` runs it, after the runs: one launch where a spawn would start
2 more processes) and writes ``DIR/body-rank<r>.txt``: ``ok``, or its traceback (raised again: the launch ends),
or that it did not run (a run failed before it) (test_fsdp.py).
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
import threading
from collections.abc import Callable
from pathlib import Path

import torch.distributed as dist

from ekd.cli import main
from ekd.train.distributed import in_process_group, start_process_group


def _kill_while_writing(run: str, step: int) -> None:
    """SIGKILL this process when it is about to write the manifest of run ``run``'s checkpoint ``step``."""
    from ekd.train import checkpoint  # seal_checkpoint writes the manifest of both formats

    write = checkpoint.atomic_write_text

    def write_or_die(path, text):
        p = Path(path)
        if p.name == "manifest.json" and p.parent.name == f"step-{step:06d}.tmp" and p.parents[2].name == run:
            os.kill(os.getpid(), signal.SIGKILL)
        return write(path, text)

    checkpoint.atomic_write_text = write_or_die


def _sigterm_in_save(run: str, step: int) -> None:
    """SIGTERM to this process at the second write of its shard of run ``run``'s checkpoint ``step``."""
    from torch.distributed.checkpoint import filesystem

    write_item = filesystem._write_item

    class Stream:  # the shard's file, which signals at its second write: inside torch.save's zip writer
        def __init__(self, stream):
            self.stream, self.writes = stream, 0

        def write(self, data):
            self.writes += 1
            if self.writes == 2:
                # to the main thread: one sent to the process may be taken by a gloo thread, later
                signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
                sum(range(10_000))  # Python runs the handler between bytecodes: here, within torch.save
            return self.stream.write(data)

        def __getattr__(self, name):
            return getattr(self.stream, name)

    def write_or_signal(transforms, stream, *args):
        p = Path(getattr(stream, "name", "") or "")
        if p.parent.name == f"step-{step:06d}.tmp" and p.parents[2].name == run:
            stream = Stream(stream)
        return write_item(transforms, stream, *args)

    filesystem._write_item = write_or_signal


def _stop_at(run: int, step: int, rank: int, how: str, current: list) -> None:
    """End rank ``rank`` of run ``run`` at the start of step ``step`` (the trainer's ``lr_at``): ``how`` is
    ``error`` (a CacheError, its own line) or ``kill`` (SIGKILL)."""
    from ekd.teacher.cache.format import CacheError
    from ekd.train import trainer

    lr_at = trainer.lr_at

    def lr_or_stop(at, cfg):
        if current[0] == run and at == step and dist.get_rank() == rank:
            if how == "kill":
                os.kill(os.getpid(), signal.SIGKILL)
            if how == "interrupt":  # Ctrl-C reaching this rank alone (its peers' SIGINT not yet arrived)
                raise KeyboardInterrupt
            raise CacheError("shard-00003.bin is corrupted (record of sample 5 fails its CRC-32) (test)")
        return lr_at(at, cfg)

    trainer.lr_at = lr_or_stop


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
    if sigterm := os.environ.get("EKD_TEST_SIGTERM_IN_SAVE"):
        run, step = sigterm.split(":")
        _sigterm_in_save(run, int(step))
    events: list = []
    current = [0]
    if stop := os.environ.get("EKD_TEST_STOP_AT"):
        run, step, rank, how = stop.split(":")
        _stop_at(int(run), int(step), int(rank), how, current)
    if trace := os.environ.get("EKD_TEST_TRACE"):
        _trace(events, current)
    start_process_group("gloo")
    rank = dist.get_rank()
    try:
        code = in_process_group(_runs_then_body, json.loads(Path(path).read_text()), current, rank)
    finally:
        if trace:
            Path(trace, f"rank{rank}.json").write_text(json.dumps(events))
    assert_groups_ended()
    return code


def _runs_then_body(runs: list[list[str]], current: list[int], rank: int) -> int:
    """The runs, then ``EKD_TEST_BODY`` (``current[0]`` -1 while it works)."""
    code = _run_each(runs, current, rank)
    if body := os.environ.get("EKD_TEST_BODY"):
        import importlib
        import traceback

        module, function, out_dir = body.split(":", 2)
        said = Path(out_dir, f"body-rank{rank}.txt")
        if code != 0:
            said.write_text(f"not run: a run ended with exit code {code}")
            return code
        current[0] = -1
        try:
            getattr(importlib.import_module(module), function)(rank, out_dir)
        except BaseException:
            said.write_text(traceback.format_exc())
            raise
        said.write_text("ok")
    return code


RUN_MARK = "ekd-test: run "


def _run_each(runs: list[list[str] | dict[str, list[str]]], current: list[int], rank: int) -> int:
    """``ekd distill`` with each argument list (``current[0]``: the index of the one running); an entry that maps
    ranks ("0", "1") to argument lists gives each rank its own (a job whose nodes were launched differently)."""
    quiet = [] if os.environ.get("EKD_TEST_LOUD") else ["-q"]
    codes_dir = os.environ.get("EKD_TEST_CODES")
    mark = bool(os.environ.get("EKD_TEST_MARK_RUNS"))
    codes: list[int] = []
    for i, args in enumerate(runs):
        current[0] = i
        if mark:
            dist.barrier()
            if rank == 0:
                print(f"{RUN_MARK}{i}", file=sys.stderr, flush=True)
            dist.barrier()
        if isinstance(args, dict):
            args = args[str(rank)]
        try:
            code = main([*quiet, "distill", *args])
        except SystemExit as e:  # the command line refused by argparse
            code = int(e.code or 0)
        codes.append(code)
        if code != 0 and not codes_dir:
            return code
    if codes_dir:
        Path(codes_dir, f"rank{rank}.json").write_text(json.dumps(codes))
    return 0


def run_outputs(stderr: str) -> list[str]:
    """The stderr of a launch with ``EKD_TEST_MARK_RUNS=1`` cut at its run marks: item i from run i's mark to the
    next (the last to the end of the launch, its teardown and torchrun's summary); the lines before the first
    mark (the launch's start) go with run 0."""
    parts = stderr.split("\n" + RUN_MARK)
    head, rest = parts[0], parts[1:]
    if head.startswith(RUN_MARK):  # the mark on the very first line
        head, rest = "", [head[len(RUN_MARK) :], *rest]
    outputs = []
    for i, part in enumerate(rest):
        index, _, text = part.partition("\n")
        assert index == str(i), (index, i)
        outputs.append(text)
    if outputs:
        outputs[0] = f"{head}\n{outputs[0]}"
    return outputs


def gloo_ranks(body: Callable, out_dir: str | Path, *args: object, world: int = 2) -> None:
    """``body(rank, out_dir, *args)`` in ``world`` spawned processes of one gloo group (rendezvous through
    the file ``out_dir/init``), each ending its groups with ekd's own teardown
    (:func:`ekd.train.distributed.in_process_group`), checked (:func:`assert_groups_ended`)."""
    import torch.multiprocessing as mp

    mp.spawn(gloo_rank, args=(body, world, str(out_dir), args), nprocs=world, join=True)


def gloo_rank(rank: int, body: Callable, world: int, out_dir: str, args: tuple) -> None:
    """One process of :func:`gloo_ranks` (for a spawned worker that runs it beside other work)."""
    init = f"file://{os.path.join(out_dir, 'init')}"
    start_process_group("gloo", init_method=init, rank=rank, world_size=world)
    in_process_group(body, rank, out_dir, *args)
    assert_groups_ended()


def assert_groups_ended() -> None:
    """No thread of a gloo process group runs in this process (Linux: the thread names in /proc). A group
    still alive at interpreter exit can abort the process (``ekd.train.distributed.end_process_groups``)."""
    tasks = Path("/proc/self/task")
    if not tasks.is_dir():
        return
    names = []
    for task in tasks.iterdir():
        try:
            names.append((task / "comm").read_text().strip())
        except OSError:  # the thread ended meanwhile
            continue
    left = sorted(n for n in names if "gloo" in n)
    assert left == [], f"process group threads outlive the teardown: {left}"


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
