"""SIGTERM ends an ekd command as Ctrl-C does.

Job schedulers (Slurm, Kubernetes, torchrun's agent) stop a job with SIGTERM, whose default action ends the
process at once, without a word and without the ``except``/``finally`` blocks that Ctrl-C runs. Within
:func:`sigterm_as_interrupt` SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so it takes Ctrl-C's
path: a start that had not finished is rolled back, the CLI prints ``ekd: interrupted (SIGTERM); checkpoint
step-N is kept: continue with the same command and --resume`` and exits 143 (128 + 15, the shell's code for
SIGTERM; Ctrl-C exits 130 = 128 + 2). Once an error is ending the command (:func:`already_stopping`), SIGTERM is
ignored: under torchrun it is what the agent sends the ranks still alive when one has ended, and it would cut
their clean-up and replace the error they report. An interrupt that lands inside a library's code and comes out
as the library's own error (``torch.save``'s zip writer) is still said as an interrupt (:func:`interrupt_behind`).
"""

from __future__ import annotations

import gc
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM received: raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""


_received: list[type[KeyboardInterrupt]] = []
"""The kinds of interrupt this module's handlers raised in the current :func:`sigterm_as_interrupt` block (not
the exceptions: their tracebacks would keep the frames they were raised in, and what those hold, alive)."""


def _raise_terminated(signum: int, frame: object) -> None:
    # a second SIGTERM must not cut the clean-up this one starts
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _received.append(Terminated)
    raise Terminated


def _raise_interrupt(signum: int, frame: object) -> None:
    """Ctrl-C, as Python's own handler (``signal.default_int_handler``), remembered for :func:`interrupt_behind`."""
    _received.append(KeyboardInterrupt)
    raise KeyboardInterrupt


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`; the previous handler is restored after it. A no-op
    outside the main thread (where Python cannot set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    _received.clear()
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    # Ctrl-C keeps Python's behaviour (KeyboardInterrupt), remembered; a caller's own SIGINT handler is left alone
    ours_for_sigint = signal.getsignal(signal.SIGINT) is signal.default_int_handler
    if ours_for_sigint:
        signal.signal(signal.SIGINT, _raise_interrupt)
    try:
        yield
    finally:
        # None: the previous handler was not set from Python; SIG_DFL is the closest that can be restored
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
        if ours_for_sigint and signal.getsignal(signal.SIGINT) in (_raise_interrupt, _ignore):
            signal.signal(signal.SIGINT, signal.default_int_handler)
        _received.clear()  # a later command of this process (tests, a library caller) starts afresh


@contextmanager
def deferred_interrupts() -> Iterator[None]:
    """Ctrl-C and SIGTERM arriving inside the block take effect when it ends: steps that must finish together
    (a checkpoint's ``latest`` pointer and the pruning of older checkpoints after it is in place) are not cut
    half way. The handlers in place when the block started are restored at its end and the first signal
    received is then handed to its handler (so :func:`sigterm_as_interrupt`'s raise :class:`Terminated`, Python's
    raise ``KeyboardInterrupt``). A no-op outside the main thread (where Python runs signal handlers); keep the
    block short: nothing can stop it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    arrived: list[int] = []
    kinds = (signal.SIGINT, signal.SIGTERM)
    previous = {kind: signal.getsignal(kind) for kind in kinds}
    for kind in kinds:
        if callable(previous[kind]):  # an ignored signal stays ignored
            signal.signal(kind, lambda signum, frame: arrived.append(signum))
    try:
        yield
    finally:
        for kind in kinds:
            if callable(previous[kind]):
                signal.signal(kind, previous[kind])
    if arrived:
        handler = previous[arrived[0]]
        handler(arrived[0], None)  # e.g. raises KeyboardInterrupt now that the block is done


def interrupt_behind(e: BaseException) -> KeyboardInterrupt | None:
    """The interrupt that ``e`` stands for, else None: ``e`` itself when it is one, one in its chain of causes
    (``__cause__``/``__context__``), or one this module's handlers raised in the current
    :func:`sigterm_as_interrupt` block.

    An interrupt raised inside a library's code can come out as the library's own error: SIGTERM inside
    ``torch.save`` under DCP's checkpoint writer ends its zip file half written, whose clean-up raises
    ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos``, and DCP gathers the ranks'
    failures (copies, without their chains) into a ``CheckpointException`` (try-out 52, F1). The command was
    still stopped from outside, and says so.
    """
    seen: set[int] = set()
    link: BaseException | None = e
    while link is not None and id(link) not in seen:
        if isinstance(link, KeyboardInterrupt):
            return link
        seen.add(id(link))
        link = link.__cause__ or link.__context__
    return _received[-1]() if _received else None


def raise_swallowed_interrupt() -> None:
    """Raise again the interrupt this module's handlers raised in the current :func:`sigterm_as_interrupt` block
    when it has not ended the command: a library on its way swallowed it (an ``except BaseException`` that goes
    on). The first SIGTERM's handler sets SIGTERM ignored before it raises, so a scheduler's stop was then lost:
    the run trained to its end and exited 0 (try-out 117, F1: once in 88 SIGTERMs, under load). Call it only on
    a command's main line — a training step's or a cache batch's start —, where no interrupt can be on its way
    out (never in clean-up code, which an interrupt that did propagate runs through)."""
    if _received:
        raise _received[-1]()


def already_stopping() -> None:
    """An exception is ending the command: from now on SIGTERM is ignored, as after a first SIGTERM.

    Under torchrun, when one rank ends (its own error, ``kill -9``), the agent sends SIGTERM to the others, which
    by then are often ending too (their collective lost its peer): raised in their clean-up (a start's
    rollback, the process groups' teardown), it would cut it and replace the error being reported, and the
    continue hint with it, by a bare ``interrupted (SIGTERM)``. Only within :func:`sigterm_as_interrupt` (the
    handler is ours; its end restores the previous one): a library caller's own handler is left alone.
    """
    main_thread = threading.current_thread() is threading.main_thread()  # where Python sets handlers
    if main_thread and signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)


def _ignore(signum: int, frame: object) -> None:
    """A handler that does nothing: the command's work is done (:func:`work_done`)."""


def work_done() -> None:
    """The command's work is done and written (a finished run's last file): from now on Ctrl-C and SIGTERM are
    ignored within :func:`sigterm_as_interrupt` (whose end restores the handlers before it), so one landing while
    the command prints its results or returns cannot make a finished run exit 143 with ``interrupted ... --resume``
    (try-out 90, F4). Only this module's handlers are replaced: a library caller's own are left alone."""
    if threading.current_thread() is not threading.main_thread():
        return
    if signal.getsignal(signal.SIGTERM) is _raise_terminated:
        signal.signal(signal.SIGTERM, _ignore)
    if signal.getsignal(signal.SIGINT) is _raise_interrupt:
        signal.signal(signal.SIGINT, _ignore)


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    """The exit code of a command ended by ``e``: 143 for SIGTERM, 130 for Ctrl-C."""
    return SIGTERM_EXIT if isinstance(e, Terminated) else SIGINT_EXIT


def interrupted_by(e: KeyboardInterrupt) -> str:
    """``"interrupted"``, naming SIGTERM when that was the cause (Ctrl-C needs no name)."""
    return "interrupted (SIGTERM)" if isinstance(e, Terminated) else "interrupted"


EXIT_GRACE_S = 20.0
"""Seconds an interrupted command's process may take to end (joining threads, at-exit handlers) before it ends at
once with its exit code (:func:`exit_promptly`)."""


def exit_promptly(code: int, grace: float = EXIT_GRACE_S) -> None:
    """Let an interrupted command's process end with ``code`` even where a thread left behind would hold its exit.

    Python's exit joins every non-daemon thread, with SIGTERM and Ctrl-C ignored by then (:func:`ekd.cli.main`).
    An interrupt landing in ``ThreadPoolExecutor.submit`` while it starts a pool's first worker (``Thread.start``
    waiting for the thread to run) leaves that worker running, unknown to the pool and to concurrent.futures' exit
    hook, waiting for work until the pool is shut down or collected; transformers' weight loading shuts its pool
    down only in a ``finally`` it enters after submitting every tensor, and the interrupt's traceback (a reference
    cycle: a frame holding its exception) kept the pool alive — the process said ``ekd: interrupted (SIGTERM)``
    and never ended (try-out 103, F1; found by try-out 114 with gdb). The cycles are collected here (the pool's
    collection wakes its worker), and a daemon thread ends the process with ``code`` should its exit still take
    longer than ``grace`` seconds (whatever else a library left running)."""
    gc.collect()

    def end() -> None:
        time.sleep(grace)
        for stream in (sys.stdout, sys.stderr):
            with suppress(OSError, ValueError):  # a closed or broken stream: nothing more to say
                stream.flush()
        os._exit(code)

    threading.Thread(target=end, name="ekd-exit-watchdog", daemon=True).start()
