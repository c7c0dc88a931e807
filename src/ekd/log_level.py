"""``log.level`` applied to ekd's own loggers (``ekd.*``): ERROR hides INFO lines, DEBUG shows debug lines.

The CLI installs the handler (``logging.basicConfig``) and calls :func:`apply_log_level` once it has the
config; ``ekd -q`` sets a floor of WARNING that the config cannot lower.
"""

from __future__ import annotations

import logging

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
