"""An interrupted command's process ends, whatever threads a library left behind (try-out 103, F1; try-out 114).

SIGTERM landing in ``ThreadPoolExecutor.submit`` while it starts a pool's first worker leaves that worker running,
unknown to the pool and to concurrent.futures' exit hook; when a reference cycle (a frame holding its exception's
traceback) keeps the pool alive, Python's exit joins that worker forever — ``ekd: interrupted (SIGTERM)`` was
printed and the process never ended (transformers' weight loading, found with gdb). These tests run the mechanism
in a subprocess and end it the way ``ekd.cli.main`` does (:func:`ekd.signals.exit_promptly`).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

SRC = str(Path(__file__).resolve().parents[1] / "src")

ORPHAN = textwrap.dedent(
    """
    import os, signal, sys, threading
    from concurrent.futures import ThreadPoolExecutor

    from ekd.signals import exit_promptly

    class Terminated(KeyboardInterrupt):
        pass

    def handler(signum, frame):
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        raise Terminated

    signal.signal(signal.SIGTERM, handler)
    armed = False
    real_wait = threading.Event.wait

    def wait(self, timeout=None):  # SIGTERM while Thread.start waits for the pool's first worker to run
        global armed
        if armed and threading.current_thread() is threading.main_thread():
            armed = False
            os.kill(os.getpid(), signal.SIGTERM)
        return real_wait(self, timeout)

    threading.Event.wait = wait

    def load():  # as transformers' loading: every submit before the try/finally that shuts the pool down
        global armed
        pool = ThreadPoolExecutor(max_workers=2)
        armed = True
        futures = [pool.submit(lambda i=i: i) for i in range(4)]
        try:
            return [f.result() for f in futures]
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def train():
        try:
            return load()
        except BaseException as e:
            stop = e  # kept after the block: frame -> stop -> traceback -> frame, a cycle holding the pool
            raise

    try:
        train()
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
    from concurrent.futures import thread as futures_thread

    known = set(futures_thread._threads_queues)
    orphans = [t for t in threading.enumerate() if t is not threading.main_thread() and t not in known]
    print(f"orphaned: {bool(orphans)}", file=sys.stderr, flush=True)  # (a race: not every run forms one)
    if sys.argv[1] == "promptly":
        exit_promptly(143, grace=float(sys.argv[2]))
    sys.exit(143)
    """
)


def _run(script: Path, *args: str, timeout: float = 60.0) -> tuple[int | None, float, str]:
    """(exit code, or None when it had to be killed; seconds; stderr) of ``script`` (a file: run as ``-c`` the
    same code's cycle does not form)."""
    env = {**os.environ, "PYTHONPATH": SRC}
    t0 = time.perf_counter()
    p = subprocess.Popen([sys.executable, str(script), *args], env=env, stderr=subprocess.PIPE, text=True)
    try:
        _, err = p.communicate(timeout=timeout)
        return p.returncode, time.perf_counter() - t0, err
    except subprocess.TimeoutExpired:
        p.kill()
        _, err = p.communicate()
        return None, time.perf_counter() - t0, err


def test_an_interrupted_process_with_an_orphaned_pool_worker_ends_at_once(tmp_path):
    """The cycle is collected (the pool's collection wakes its worker): the process ends long before the grace
    period's watchdog would act. (Ended by ``sys.exit`` alone, such a process never ends: try-out 114 saw it hang
    under gdb, and its script, this one run ``plain``, hangs whenever the worker is orphaned.)"""
    script = tmp_path / "orphan.py"
    script.write_text(ORPHAN)
    for _ in range(10):  # until the race orphans the worker (most runs do)
        code, seconds, err = _run(script, "promptly", "30")
        assert "interrupted" in err and code == 143, (code, err)
        assert seconds < 20, seconds  # not the 30 s watchdog: the collection freed the worker
        if "orphaned: True" in err:
            return
    raise AssertionError(f"the worker was never orphaned in 10 runs: {err}")


BLOCKED = textwrap.dedent(
    """
    import sys, threading

    from ekd.signals import exit_promptly

    threading.Thread(target=threading.Event().wait, name="a library's own thread").start()  # never ends
    exit_promptly(143, grace=1.0)
    sys.exit(143)
    """
)


def test_a_thread_that_never_ends_cannot_hold_an_interrupted_process():
    """Whatever else a library leaves running (a non-daemon thread that never ends), the process ends with its
    exit code after the grace period."""
    env = {**os.environ, "PYTHONPATH": SRC}
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", BLOCKED], env=env, timeout=60, capture_output=True)
    assert done.returncode == 143 and time.perf_counter() - t0 < 30


def test_sigterm_as_a_finished_run_releases_its_lock_changes_nothing(tmp_path, capsys, monkeypatch):
    """Try-out 114, F2: a SIGTERM landing after the run had written its student and eval.json, as it released its
    lock, said "the run had not started … run the same command again" (an --overwrite would train it anew), exited
    143 and left the lock file. The release is not cut, and the interrupt of a finished run changes nothing."""
    import signal

    from ekd.train.run_dir import RunStart
    from hostile import cli
    from tiny import config_file, write_corpus

    real_close = RunStart.close

    def close_under_sigterm(self):
        os.kill(os.getpid(), signal.SIGTERM)  # handled by ekd's handler (sigterm_as_interrupt) at once
        real_close(self)

    monkeypatch.setattr(RunStart, "close", close_under_sigterm)
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "done", **{"train.max_steps": 1})
    code, out, err = cli(capsys, "distill", config)
    assert code == 0, err
    assert "student saved to" in out and (tmp_path / "runs" / "done" / "eval.json").is_file()
    assert not list((tmp_path / "runs").glob(".*lock")), list((tmp_path / "runs").iterdir())


def test_a_sigterm_a_library_swallowed_still_stops_the_run(tmp_path, capsys, monkeypatch):
    """Try-out 117, F1: once in 88 SIGTERMs (under load, during loading) the run trained on to its end and exited
    0: the handler sets SIGTERM ignored before it raises, so an interrupt a library swallowed on its way (an
    ``except BaseException`` that goes on) lost the scheduler's stop. The run stops at its first step."""
    import signal

    import ekd.train.trainer as trainer_mod
    from hostile import cli
    from tiny import config_file, write_corpus

    real = trainer_mod.load_student

    def loaded_under_a_swallowed_sigterm(*args, **kwargs):
        try:
            os.kill(os.getpid(), signal.SIGTERM)  # ekd's handler raises Terminated here...
            time.sleep(1)
        except BaseException:  # noqa: BLE001 - ...which a library's own handler swallows
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "load_student", loaded_under_a_swallowed_sigterm)
    monkeypatch.chdir(tmp_path)
    write_corpus(Path("corpus"), n_docs=8)
    config = config_file(Path("."), Path("corpus"), "swallowed", **{"train.max_steps": 3})
    code, _, err = cli(capsys, "distill", config)
    assert code == 143, (code, err)
    assert "ekd: interrupted (SIGTERM)" in err and "Traceback" not in err, err
