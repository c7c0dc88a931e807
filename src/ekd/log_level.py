"""``log.level`` applied to ekd's own loggers (``ekd.*``): ERROR hides INFO lines, DEBUG shows debug lines.

The CLI installs the handler (``logging.basicConfig``) and calls :func:`apply_log_level` once it has the
config; ``ekd -q`` sets a floor of WARNING that the config cannot lower.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator

_floor = logging.NOTSET


def set_level_floor(level: int) -> None:
    """Reset the ``ekd`` logger to ``level``, the lowest level it logs at whatever ``log.level`` says
    (``ekd -q``: WARNING; NOTSET: inherit the root logger's level until a config is applied)."""
    global _floor
    _floor = level
    logging.getLogger("ekd").setLevel(level)


def apply_log_level(level: str) -> None:
    """Set the ``ekd`` logger to ``level`` ('DEBUG', 'INFO', 'WARNING', 'ERROR'; any case), not below the floor."""
    value = logging.getLevelName(level.upper())
    if not isinstance(value, int):
        raise ValueError(f"unknown logging level {level!r}")  # validated config values never get here
    logging.getLogger("ekd").setLevel(max(value, _floor))


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
