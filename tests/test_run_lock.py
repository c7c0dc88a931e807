"""One run directory, one ekd process (try-out 7, findings 1 and 7): a second ``ekd distill`` (or ``--resume``,
``--overwrite``, ``ekd eval RUN``) on a run that a live process is writing is refused in one line naming the
pid, and touches nothing; a run killed with SIGKILL leaves no stale lock; SIGTERM ends a run as Ctrl-C does.

The first process is a real subprocess (``_HELD``: ``ekd`` with its training step held at a given call until
the test lets it go), so the locks are those between two processes.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import ekd
from hostile import cli, copy_workspace, make_workspace, one_error_line, snapshot, unchanged
from tiny import config_file

EXTRA = {"train.max_steps": 2, "train.checkpoint_every": 1, "method.preset": "ce"}

# ekd's CLI with trainer.forward_backward held at its EKD_TEST_HOLD_AT-th call (1 = the first step): it touches
# EKD_TEST_HELD, then waits for EKD_TEST_GO to exist (forever if unset: until a signal ends it)
_HELD = """
import os, sys, time
from pathlib import Path
from ekd.train import trainer
real, calls = trainer.forward_backward, []
def held(*args, **kwargs):
    calls.append(1)
    if len(calls) == int(os.environ["EKD_TEST_HOLD_AT"]):
        Path(os.environ["EKD_TEST_HELD"]).touch()
        go = os.environ.get("EKD_TEST_GO")
        while not (go and Path(go).exists()):
            time.sleep(0.05)
    return real(*args, **kwargs)
trainer.forward_backward = held
from ekd.cli import main
sys.exit(main(sys.argv[1:]))
"""


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workspace ``corpus/``, ``runs/base`` (finished, checkpoints at steps 1 and 2) and ``base.yaml``."""
    return make_workspace(tmp_path_factory.mktemp("run-lock"), "base", EXTRA)


@pytest.fixture
def ws(template, tmp_path, monkeypatch):
    return copy_workspace(template, tmp_path, monkeypatch)


def _config(name: str = "base", **extra) -> str:
    return config_file(Path("."), Path("corpus"), name, **{**EXTRA, **extra})


class Held:
    """``ekd ARGS`` in a subprocess, held at its ``at``-th training step (see ``_HELD``)."""

    def __init__(self, ws: Path, at: int, *args: str, go: bool = True) -> None:
        self.held, self.go = ws / "held.flag", ws / "go.flag"
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(
                [str(Path(ekd.__file__).parents[1]), os.environ.get("PYTHONPATH", "")]
            ),
            "OMP_NUM_THREADS": "1",
            "EKD_TEST_HOLD_AT": str(at),
            "EKD_TEST_HELD": str(self.held),
            **({"EKD_TEST_GO": str(self.go)} if go else {}),
        }
        cmd = [sys.executable, "-c", _HELD, *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

    def wait_held(self, timeout: float = 240) -> None:
        deadline = time.monotonic() + timeout
        while not self.held.exists():
            if self.proc.poll() is not None:
                pytest.fail(f"ended before its held step: {self.proc.communicate()[1][-3000:]}")
            assert time.monotonic() < deadline, "never reached its held step"
            time.sleep(0.05)

    def release(self, timeout: float = 240) -> tuple[int, str, str]:
        self.go.touch()
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.communicate()


@pytest.mark.slow
def test_a_second_start_on_a_live_run_is_refused_and_touches_nothing(ws, capsys):
    """The try-out's race: run 1 is before its first step (marker ``starting``) when run 2 starts on the same
    run.name. Run 2 (and --overwrite, --resume, ``ekd eval``) is refused at once; run 1 trains to the end."""
    first = Held(ws, 1, "-q", "distill", _config("twin"), "run.seed=1")
    try:
        first.wait_held()
        run = ws / "runs" / "twin"
        before = snapshot(ws)
        for extra in ([], ["--overwrite"], ["--resume"]):
            rc, _, err = cli(capsys, "distill", _config("twin"), "run.seed=2", *extra)
            line = one_error_line(rc, err)
            assert f"{run.relative_to(ws)} is in use by another ekd process (pid {first.proc.pid})" in line, (
                line
            )
            fix = "then run the same command again" if extra else "or choose another run.name"
            assert f"wait for it to end, {fix}" in line, line
        assert first.proc.poll() is None  # refused while run 1 is still alive
        unchanged(before, ws)
        assert set(snapshot(ws)) == set(before)
        rc, _, err = first.release()
    finally:
        first.kill()
    assert rc == 0, err
    assert yaml.safe_load((run / "config.yaml").read_text())["run"]["seed"] == 1  # run 1's, not run 2's
    assert json.loads((run / "ekd-run.json").read_text())["state"] == "finished"
    steps = [json.loads(r)["step"] for r in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(1) == 1 and steps.count(2) >= 1  # one run's rows, no second writer
    assert not (ws / "runs" / ".twin.lock").exists()  # released (and removed) at the end


@pytest.mark.slow
def test_eval_of_a_run_being_resumed_is_refused(ws, capsys):
    """``ekd eval RUN`` writes eval.json and plots into the run: not while a --resume of it trains."""
    first = Held(ws, 1, "-q", "distill", _config(), "train.max_steps=3", "--resume")
    try:
        first.wait_held()
        before = snapshot(ws)
        rc, _, err = cli(capsys, "eval", "runs/base")
        line = one_error_line(rc, err)
        assert f"runs/base is in use by another ekd process (pid {first.proc.pid})" in line, line
        assert "wait for it to end, then run the same command again" in line
        unchanged(before, ws)
        rc, _, err = first.release()
    finally:
        first.kill()
    assert rc == 0, err
    assert cli(capsys, "eval", "runs/base")[0] == 0  # and once it has finished, eval runs


@pytest.mark.slow
def test_a_run_killed_with_sigkill_leaves_no_stale_lock(ws, capsys):
    first = Held(ws, 1, "-q", "distill", _config(), "train.max_steps=4", "--resume", go=False)
    try:
        first.wait_held()
        os.kill(first.proc.pid, signal.SIGKILL)
        first.proc.communicate(timeout=60)
    finally:
        first.kill()
    assert first.proc.returncode == -signal.SIGKILL
    assert (ws / "runs" / ".base.lock").exists()  # the file stays; the OS released its lock
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    assert rc == 0, err
    assert not (ws / "runs" / ".base.lock").exists()


@pytest.mark.slow
def test_sigterm_ends_a_run_as_ctrl_c_does(ws, capsys):
    """What a job scheduler sends: the same line as Ctrl-C naming the checkpoint kept, exit 143 (128 + SIGTERM),
    the lock released; --resume then finishes the run."""
    first = Held(ws, 2, "-q", "distill", _config("term", **{"train.max_steps": 3}), go=False)
    try:
        first.wait_held()  # in step 2: the checkpoint of step 1 is written
        first.proc.send_signal(signal.SIGTERM)
        out, err = first.proc.communicate(timeout=120)
    finally:
        first.kill()
    assert first.proc.returncode == 143, err
    lines = err.strip().splitlines()
    assert lines[-1] == (
        "ekd: interrupted (SIGTERM); checkpoint step-000001 is kept: continue with the same command and --resume"
    ), err
    assert "Traceback" not in err
    assert not (ws / "runs" / ".term.lock").exists()
    rc, _, err = cli(capsys, "distill", _config("term", **{"train.max_steps": 3}), "--resume")
    assert rc == 0, err


def test_sigterm_handler_is_restored_after_the_command(monkeypatch, capsys):
    """Within ``main`` SIGTERM raises; after it (a library caller, a test runner) the previous handler is back."""
    import ekd.cli as cli_mod
    from ekd.signals import Terminated

    seen = []

    def terminated(args):
        seen.append(signal.getsignal(signal.SIGTERM))
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(5)  # the handler raises before this ends
        return 0

    def previous(signum, frame):
        raise AssertionError("the previous handler must not run during the command")

    old = signal.signal(signal.SIGTERM, previous)
    try:
        monkeypatch.setitem(cli_mod.COMMANDS, "distill", terminated)
        assert cli_mod.main(["distill", "x.yaml"]) == 143
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, old)
    assert seen and seen[0] is not previous
    assert "ekd: interrupted (SIGTERM)" in capsys.readouterr().err
    assert issubclass(Terminated, KeyboardInterrupt)


def test_lock_is_shared_by_every_spelling_of_the_run_directory(tmp_path):
    """Relative, absolute, with a symlinked parent: one lock; a second holder is refused, the first releases."""
    from ekd.errors import RunDirError
    from ekd.train.run_dir import lock_run

    (tmp_path / "runs" / "r").mkdir(parents=True)
    (tmp_path / "link").symlink_to(tmp_path / "runs")
    lock = lock_run(tmp_path / "runs" / "r", "fix")
    try:
        for spelling in (tmp_path / "link" / "r", tmp_path / "runs" / "r" / ".." / "r"):
            with pytest.raises(
                RunDirError, match=f"in use by another ekd process \\(pid {os.getpid()}\\); fix"
            ):
                lock_run(spelling, "fix")
    finally:
        lock.release()
    lock_run(tmp_path / "link" / "r", "fix").release()
    assert sorted(p.name for p in (tmp_path / "runs").iterdir()) == ["r"]


def _read_only(monkeypatch, *paths: Path) -> None:
    """``os.access(path, W_OK)`` is False for ``paths`` (a read-only mount, simulated: tests may run as root)."""
    real = os.access
    denied = {Path(p).resolve() for p in paths}
    monkeypatch.setattr(
        "ekd.locks.os.access", lambda p, mode: False if Path(p).resolve() in denied else real(p, mode)
    )


def test_a_run_under_a_read_only_parent_is_locked_inside_and_still_evaluates(ws, capsys, monkeypatch):
    """Try-out 8: a writable run directory under a read-only ``runs/`` (per-user runs in a shared folder, a run
    bind-mounted into a container) could no longer be evaluated or resumed: its lock file was to be created
    in the parent. The lock is then ``.ekd.lock`` inside the run; with the run read-only too no lock can be
    taken, and ``ekd eval``, which writes into the run, is refused in one line before it evaluates (try-out 9:
    it evaluated, then failed on a plot with a traceback)."""
    from ekd.locks import INSIDE, directory_lock, lock_directory

    run = ws / "runs" / "base"
    _read_only(monkeypatch, ws / "runs")
    assert directory_lock(run).path == run.resolve() / INSIDE
    held = lock_directory(run, "fix")  # another process evaluating it: the same lock file, refused
    try:
        rc, _, err = cli(capsys, "eval", str(run))
        assert f"{run} is in use by another ekd process (pid {os.getpid()})" in one_error_line(rc, err)
    finally:
        held.release()
    assert not (run / INSIDE).exists()
    assert cli(capsys, "eval", str(run))[0] == 0  # evaluates, writes eval.json in the run, releases the lock
    assert (run / "eval.json").is_file() and not (run / INSIDE).exists()
    assert cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")[0] == 0  # resumes there too
    assert not (ws / "runs" / ".base.lock").exists() and not (run / INSIDE).exists()
    _read_only(monkeypatch, ws / "runs", run)  # nothing writable: no lock, nothing refused on its account
    lock = lock_directory(run, "fix")
    assert not lock.held and not (run / INSIDE).exists()
    lock.release()
    before = (run / "eval.json").read_bytes()  # ekd eval writes into the run: refused before evaluating
    rc, _, err = cli(capsys, "eval", str(run))
    assert f"{run} is read-only: ekd eval writes eval.json" in one_error_line(rc, err)
    assert (run / "eval.json").read_bytes() == before


def test_overwrite_under_a_read_only_parent_says_it_needs_the_parent(ws, capsys, monkeypatch):
    """Try-out 9: ``--overwrite`` of a writable run under a read-only ``runs/`` said only "read-only file system
    writing to runs; choose a writable directory" (the run directory *is* writable). The line says why: the run
    is moved aside within its parent. Nothing is changed, and the lock inside the run is released."""
    from ekd.locks import INSIDE

    run = ws / "runs" / "base"
    _read_only(monkeypatch, ws / "runs")
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), "--overwrite")
    line = one_error_line(rc, err)
    assert (
        f"--overwrite cannot replace {run.resolve()}: replacing a run directory moves it aside within its "
        in line
    )
    assert (
        f"and {(ws / 'runs').resolve()} is not writable; set run.output_dir to a writable directory" in line
    )
    unchanged(before, ws)
    assert not (run / INSIDE).exists()


def test_eval_of_a_path_inside_a_run_in_use_names_the_process(ws, capsys):
    """Try-outs 8 and 9: ``ekd eval RUN/student`` while another ekd process trains RUN (a ``--resume``) said "it
    lies inside the finished run RUN: evaluate that", which would be refused as in use. The line names the
    process and says to wait, then evaluate RUN; once it has ended, the finished run is suggested again."""
    run = ws / "runs" / "base"
    marker = json.loads((run / "ekd-run.json").read_text())
    (run / "ekd-run.json").write_text(json.dumps({**marker, "state": "started"}))  # a --resume under way
    # another process holds the run's lock, as ekd distill does while it trains
    code = (
        "import sys; from ekd.locks import lock_directory; held = lock_directory(sys.argv[1], 'x'); "
        "print('held', flush=True); sys.stdin.read()"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(ekd.__file__).parents[1])}
    holder = subprocess.Popen(
        [sys.executable, "-c", code, str(run)],
        env=env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "held"
        for inside in ("runs/base/student", "runs/base/checkpoints/step-000002"):
            line = one_error_line(*cli(capsys, "eval", inside)[::2])
            assert f"{inside} is not a finished ekd run" in line, line
            assert (
                f"it lies inside the run runs/base, and another ekd process (pid {holder.pid}) is training it: "
                in line
            )
            assert line.endswith("wait for it to end, then `ekd eval runs/base`"), line
            assert "finished run" not in line, line
    finally:
        holder.communicate("")
    (run / "ekd-run.json").write_text(json.dumps(marker))
    line = one_error_line(*cli(capsys, "eval", "runs/base/student")[::2])
    assert line.endswith(
        "it lies inside the finished run runs/base: evaluate that with `ekd eval runs/base`"
    ), line


def test_a_released_lock_never_removes_another_processes_lock_file(tmp_path):
    """Review finding: a lock file removed under its holder (a rollback emptying a run) and taken by a second
    process must survive the first holder's release, or a third process gets in beside the second."""
    from ekd.locks import FileLock

    path = tmp_path / ".r.lock"
    first = FileLock(path)
    assert first.acquire(wait=False)
    path.unlink()  # removed under the holder
    second = FileLock(path)
    assert second.acquire(wait=False)  # a new file: a second holder
    first.release()
    assert path.exists() and not FileLock(path).acquire(wait=False)  # still the second's, still held
    second.release()
    assert not path.exists()


def test_a_with_block_releases_a_taken_lock_however_it_ends(tmp_path):
    """``with lock:`` on a taken FileLock releases it at the block's end, an error included; ``holder_of``
    names this process while it is held, nobody after."""
    from ekd.locks import FileLock, directory_lock, holder_of

    run = tmp_path / "r"
    run.mkdir()
    lock = directory_lock(run)
    assert lock.acquire(wait=False)
    with pytest.raises(KeyError), lock:
        assert holder_of(run) == os.getpid() and not FileLock(lock.path).acquire(wait=False)
        raise KeyError
    assert not lock.held and not lock.path.exists() and holder_of(run) is None
    with FileLock(tmp_path / "never.lock"):  # one not taken (a read-only directory's): nothing to release
        pass


def test_a_second_sigterm_does_not_cut_the_clean_up_of_the_first():
    """Review finding: the handler stayed in place, so a second SIGTERM (a scheduler resending) raised inside the
    rollback that the first one started."""
    from ekd.signals import Terminated, sigterm_as_interrupt

    before, cleaned = signal.getsignal(signal.SIGTERM), False
    with sigterm_as_interrupt():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)
        except Terminated:  # the clean-up: a second SIGTERM arrives meanwhile
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.2)
            cleaned = True
    assert cleaned and signal.getsignal(signal.SIGTERM) == before  # restored after the command


def test_resume_of_a_read_only_run_is_refused_before_anything_loads(ws, capsys, monkeypatch):
    """Try-out 21: ``--resume`` of a run on a read-only mount loaded the data, both models and the checkpoint,
    then failed on its first write with advice for a new run ("choose a writable directory"). The run directory
    is checked when it is opened, and the line says how to resume: a writable copy."""
    from ekd.train import trainer

    run = ws / "runs" / "base"
    _read_only(monkeypatch, ws / "runs", run)
    monkeypatch.setattr(
        trainer, "prepare_data_once", lambda *a, **k: pytest.fail("data loaded before the refusal")
    )
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
    line = one_error_line(rc, err)
    assert f"--resume: {run.resolve()} is read-only" in line or f"--resume: {run} is read-only" in line, line
    assert "copy it to a writable directory (cp -r) and resume the copy there" in line
    unchanged(before, ws)


def test_a_lock_whose_pid_cannot_be_written_is_one_disk_error_and_leaves_no_file(tmp_path, monkeypatch):
    """Try-out 87, F1/F2: with no space left, `ekd eval RUN` and a token-store build ended in a traceback — the
    lock file was created (an inode needs no block) but its pid could not be flushed, outside the handler that
    says a full disk in one line — and left an empty lock file behind."""
    import errno

    import ekd.locks as locks_mod
    from ekd.io import DiskError
    from ekd.locks import FileLock

    real_open = open

    class _Full:  # a file on a full disk: writes buffer, flushing them fails
        def __init__(self, f):
            self._f = f

        def __getattr__(self, name):
            return getattr(self._f, name)

        def flush(self):
            raise OSError(errno.ENOSPC, "No space left on device")

        def close(self):
            self._f.close()
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(locks_mod, "open", lambda *a, **k: _Full(real_open(*a, **k)), raising=False)
    lock = FileLock(tmp_path / "run.lock")
    with pytest.raises(DiskError, match="no space left on device") as e:
        lock.acquire(wait=False)
    assert str(tmp_path) in str(e.value) and "\n" not in str(e.value)
    assert not lock.held and not (tmp_path / "run.lock").exists()


def test_a_file_system_without_locks_is_one_line_naming_the_way_on(tmp_path, capsys, monkeypatch):
    """Try-out 130, F3: on a file system without flock (Lustre without -o flock, NFSv3 without lockd) every command
    ended in an OSError traceback (Errno 38) and left an empty lock file behind."""
    import errno
    import fcntl

    from ekd.cli import main
    from tiny import tiny_overrides, write_corpus

    def no_locks(f, op):
        raise OSError(errno.ENOSYS, "Function not implemented")

    corpus = write_corpus(tmp_path / "corpus")
    monkeypatch.setattr(fcntl, "flock", no_locks)
    assert main(["distill", *tiny_overrides(tmp_path, corpus, "nf")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"ekd: error: the file system of {tmp_path / 'runs'} has no file locks ("), err
    assert "\n" not in err and "Traceback" not in err
    assert not (tmp_path / "runs" / ".nf.lock").exists()


def test_a_lock_held_on_another_host_names_the_host(tmp_path):
    """Try-out 130, F7: a lock named only a pid; on a shared file system whose locks span nodes, the holder may be
    a process of another machine that `ps` here cannot find. The lock file records the host; a refusal names it
    where it is not this one."""
    import socket

    from ekd.locks import FileLock

    lock = FileLock(tmp_path / ".r.lock")
    assert lock.acquire(wait=False)
    assert (tmp_path / ".r.lock").read_text().split() == [str(os.getpid()), socket.gethostname()]
    assert lock.holder_said() == f"another ekd process (pid {os.getpid()})"
    (tmp_path / ".r.lock").write_text("4242 node-7\n")  # as another node's holder wrote it
    assert lock.holder_said() == "another ekd process (pid 4242 on node-7)" and lock.holder() == 4242
    lock.release()
