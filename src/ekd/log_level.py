"""``log.level`` applied to ekd's own loggers (``ekd.*``): ERROR hides INFO lines, DEBUG shows debug lines.

The CLI installs the handler (``logging.basicConfig``) and calls :func:`apply_log_level` once it has the
config; ``ekd -q`` sets a floor of WARNING that the config cannot lower. Under ``torchrun``,
:func:`said_by_rank0` keeps the log the job's: ranks other than 0 say only errors and lines marked
:data:`EVERY_RANK`.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import sys
from collections.abc import Iterator

_floor = logging.NOTSET


def set_level_floor(level: int) -> None:
    """Reset the ``ekd`` logger to ``level``, the lowest level it logs at whatever ``log.level`` says
    (``ekd -q``: WARNING; NOTSET: inherit the root logger's level until a config is applied)."""
    global _floor
    _floor = level
    logging.getLogger("ekd").setLevel(level)


EVERY_RANK = {"every_rank": True}
"""``extra=`` of a log call whose line is a fact of the rank that says it (its memory, its share of a cache build,
its node's download): under ``torchrun`` every rank says it. Every other ekd line is the job's, said by global
rank 0 alone (:func:`said_by_rank0`)."""


class _JobLines(logging.Filter):
    """Drops the ekd lines below ERROR that are not marked :data:`EVERY_RANK` (another logger's pass)."""

    def filter(self, record: logging.LogRecord) -> bool:
        ours = record.name == "ekd" or record.name.startswith("ekd.")
        return not ours or record.levelno >= logging.ERROR or getattr(record, "every_rank", False)


@contextlib.contextmanager
def said_by_rank0(rank: int) -> Iterator[None]:
    """While inside, a rank other than 0 of a ``torchrun`` job says only the ekd lines marked :data:`EVERY_RANK`
    (and errors): what every rank does alike — load a model, align its head, select samples, reshard a
    checkpoint — is said once, by rank 0, not once per rank (a filter on the root logger's handlers)."""
    if rank == 0:
        yield
        return
    lines, handlers = _JobLines(), list(logging.getLogger().handlers)
    for handler in handlers:
        handler.addFilter(lines)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(lines)


def apply_log_level(level: str) -> None:
    """Set the ``ekd`` logger to ``level`` ('DEBUG', 'INFO', 'WARNING', 'ERROR'; any case), not below the floor."""
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown logging level {level!r}")  # validated config values never get here
    logging.getLogger("ekd").setLevel(max(value, _floor))


@contextlib.contextmanager
def info_said_already(name: str) -> Iterator[None]:
    """While inside, the logger ``name`` (an ekd module's) says only warnings and errors: for a second pass
    over what was logged once already (``ekd cache import`` reads the training documents the data preparation
    has just read and counted)."""
    logger = logging.getLogger(name)
    level = logger.level
    logger.setLevel(max(logging.WARNING, logger.getEffectiveLevel()))
    try:
        yield
    finally:
        logger.setLevel(level)


@contextlib.contextmanager
def quiet_dataset_progress() -> Iterator[None]:
    """Hide the ``datasets`` library's progress bars ("Generating test split: ...") while ekd itself loads a
    dataset (``hf:`` data sources, lm-eval tasks), so they do not interleave with ekd's output; they are
    switched back on afterwards. A user's ``HF_DATASETS_DISABLE_PROGRESS_BARS`` wins; without ``datasets``
    this does nothing."""
    try:
        import datasets.config
        from datasets.utils.tqdm import (
            are_progress_bars_disabled,
            disable_progress_bars,
            enable_progress_bars,
        )
    except ImportError:
        yield
        return
    change = datasets.config.HF_DATASETS_DISABLE_PROGRESS_BARS is None and not are_progress_bars_disabled()
    if change:
        disable_progress_bars()
    try:
        yield
    finally:
        if change:
            enable_progress_bars()


@contextlib.contextmanager
def quiet_progress_bars(quiet: bool = True) -> Iterator[None]:
    """``log.progress=false`` for libraries that draw their own tqdm bars with no switch to turn them off
    (lm-eval: "Running loglikelihood requests", "Tokenizing inputs" and its per-task request bar, which
    ``lm_eval.evaluator.evaluate`` gives no way to disable): while inside, every tqdm bar made in this process
    is created disabled (it still iterates and counts, it draws nothing). Afterwards tqdm is as it was.

    Args:
        quiet: False does nothing (the bars show, as ``log.progress=true`` asks); inside another such block it
            does nothing either (the outer one restores tqdm).
    """
    from tqdm import std

    if not quiet or getattr(std.tqdm.__init__, "quiets_tqdm", False):  # not asked, or quiet already (nested:
        yield  # try-out 81, F1: a tag's leaves are read inside the tasks' own quiet block)
        return
    original = vars(std.tqdm)["__init__"]  # tqdm wraps it (env-var defaults): restore the object itself
    init = std.tqdm.__init__
    at = list(inspect.signature(init).parameters).index("disable") - 1  # its index in *args (after self)

    def disabled_init(self, *args, **kwargs):  # subclasses (tqdm.auto, datasets', hub's) call it via super()
        if len(args) > at:
            args = (*args[:at], True, *args[at + 1 :])
        else:
            kwargs["disable"] = True
        init(self, *args, **kwargs)

    disabled_init.quiets_tqdm = True  # type: ignore[attr-defined]
    std.tqdm.__init__ = disabled_init
    try:
        yield
    finally:
        std.tqdm.__init__ = original


def close_progress_bars() -> None:
    """Close every tqdm bar still open in this process, before the command's last line (``ekd: error: …``,
    ``ekd: interrupted; …``): a bar that an exception left open (a loop ended by Ctrl-C or an error) is closed only
    when its frame is freed, after that line, and draws itself again below it (try-out 85, F1: ``ekd cache``'s
    interrupt line hidden above the bar's last repaint). A bar whose stream is gone is left as it is."""
    std = sys.modules.get("tqdm.std")  # no tqdm imported: no bar
    for bar in list(getattr(getattr(std, "tqdm", None), "_instances", ())):
        with contextlib.suppress(OSError, ValueError):  # its stream closed (a pipe's reader gone)
            bar.close()
