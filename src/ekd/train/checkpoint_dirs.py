"""Where a run's checkpoints live: ``<run>/checkpoints/step-NNNNNN/``, the ``latest`` pointer, and a step directory
a kill left renamed aside. Path functions only, with no torch import, so that commands which only look at a run
directory (``ekd eval`` of a mistyped path, the run lock's checks) answer without loading torch."""

from __future__ import annotations

import contextlib
import re
from pathlib import Path

from ekd.io import restore_dir


def checkpoint_dirs(root: Path) -> list[Path]:
    """Checkpoint directories ``step-NNNNNN`` in step order (temp directories excluded)."""
    return sorted(
        p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp") and p.name[5:].isdigit()
    )


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint (not verified), or None. A checkpoint a kill left renamed aside while
    it was being replaced (``.step-N.replaced``, :func:`ekd.io.replace_dir`) is put back first."""
    for old in (run_dir / "checkpoints").glob(".step-*.replaced"):
        with contextlib.suppress(OSError):  # a read-only copy of a run: listed as it is
            restore_dir(old.with_name(old.name[1 : -len(".replaced")]))
    pointer = run_dir / "checkpoints" / "latest"
    if pointer.is_file():
        name = pointer.read_text(errors="replace").strip()
        path = run_dir / "checkpoints" / name
        if re.fullmatch(r"step-\d{6,}", name) and path.is_dir():
            return path
    steps = checkpoint_dirs(run_dir / "checkpoints")
    return steps[-1] if steps else None


def checkpoint_step(path: Path) -> int:
    """The step a checkpoint directory ``step-NNNNNN`` was written at."""
    return int(path.name[5:])


__all__ = ["checkpoint_dirs", "checkpoint_step", "latest_checkpoint"]
