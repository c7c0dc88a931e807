"""SIGTERM ends an ekd command as Ctrl-C does.

Job schedulers (Slurm, Kubernetes, torchrun's agent) stop a job with SIGTERM, whose default action ends the
process at once, without a word and without the ``except``/``finally`` blocks that Ctrl-C runs. Within
:func:`sigterm_as_interrupt` SIGTERM raises :class:`Terminated`, a ``KeyboardInterrupt``, so it takes Ctrl-C's
path: a start that had not finished is rolled back, the CLI prints ``ekd: interrupted (SIGTERM); checkpoint
step-N is kept: continue with the same command and --resume`` and exits 143 (128 + 15, the shell's code for
SIGTERM; Ctrl-C exits 130 = 128 + 2).
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


def interrupt_exit_code(e: KeyboardInterrupt) -> int:
    """The exit code of a command ended by ``e``: 143 for SIGTERM, 130 for Ctrl-C."""
    return SIGTERM_EXIT if isinstance(e, Terminated) else SIGINT_EXIT


def interrupted_by(e: KeyboardInterrupt) -> str:
    """``"interrupted"``, naming SIGTERM when that was the cause (Ctrl-C needs no name)."""
    return "interrupted (SIGTERM)" if isinstance(e, Terminated) else "interrupted"
