"""SIGTERM ends an ekd command as Ctrl-C does.

Job schedulers (Slurm, Kubernetes, torchrun's agent) stop a job with SIGTERM, whose default action ends the
process at once, without a word and without the ``except``/``finally`` blocks that Ctrl-C runs. Within
:func:`sigterm_as_interrupt` SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so it takes Ctrl-C's
path: a start that had not finished is rolled back, the CLI prints ``ekd: interrupted (SIGTERM); checkpoint
step-N is kept: continue with the same command and --resume`` and exits 143 (128 + 15, the shell's code for
SIGTERM; Ctrl-C exits 130 = 128 + 2). Once an error is ending the command (:func:`already_stopping`), SIGTERM is
ignored: under torchrun it is what the agent sends the ranks still alive when one has ended, and it would cut
their clean-up and replace the error they report.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

SIGTERM_EXIT = 128 + signal.SIGTERM
SIGINT_EXIT = 128 + signal.SIGINT


class Terminated(KeyboardInterrupt):
    """SIGTERM received: raised where the main thread is, as Ctrl-C raises KeyboardInterrupt."""


def _raise_terminated(signum: int, frame: object) -> None:
    signal.signal(
        signal.SIGTERM, signal.SIG_IGN
    )  # a second SIGTERM must not cut the clean-up this one starts
    raise Terminated


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises :class:`Terminated`; the previous handler is restored after it. A no-op
    outside the main thread (where Python cannot set signal handlers)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        # None: the previous handler was not set from Python; SIG_DFL is the closest that can be restored
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


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


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    """The exit code of a command ended by ``e``: 143 for SIGTERM, 130 for Ctrl-C."""
    return SIGTERM_EXIT if isinstance(e, Terminated) else SIGINT_EXIT


def interrupted_by(e: KeyboardInterrupt) -> str:
    """``"interrupted"``, naming SIGTERM when that was the cause (Ctrl-C needs no name)."""
    return "interrupted (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
