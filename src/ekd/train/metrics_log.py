"""Metrics sinks: ``metrics.jsonl`` (one JSON object per logged step), TensorBoard events and, optionally,
Weights & Biases (:mod:`ekd.train.wandb_log`).

A last line cut short (the disk filled up, or the process was killed mid-write) is dropped with a warning
when the file is read or resumed; a bad line before the last one is an error naming its line number.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from ekd.errors import RunDirError
from ekd.io import atomic_write_text, writing
from ekd.json_record import record_bytes, record_text
from ekd.json_words import shown, value_kind
from ekd.words import counted

log = logging.getLogger(__name__)


class MetricsLog:
    """Append-only JSONL + optional TensorBoard. On resume, lines after the resumed step are dropped so the
    file holds one continuous curve; so is the final evaluation of a run resumed at its last step
    (``final_step``), which writes it again once it has exported the student (try-out 52, F10)."""

    def __init__(
        self,
        run_dir: Path,
        tensorboard: bool,
        resume_step: int | None = None,
        wandb=None,
        final_step: int | None = None,
    ):
        self.path = run_dir / "metrics.jsonl"
        with writing(run_dir):
            if resume_step is not None and self.path.is_file():
                end = resume_step if final_step is None or resume_step < final_step else resume_step - 1
                kept = [
                    row
                    for row in read_metrics(run_dir)
                    if row.get("step", 0) <= end or (row.get("step", 0) <= resume_step and not _is_eval(row))
                ]
                atomic_write_text(self.path, "".join(json.dumps(row) + "\n" for row in kept))
            elif resume_step is None and self.path.exists():
                self.path.unlink()
            self.file = self.path.open("a")
        self.tb = None
        self.wandb = wandb  # an ekd.train.wandb_log.WandbLog, or None
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter

                self.tb = SummaryWriter(
                    str(run_dir / "tb"), purge_step=resume_step + 1 if resume_step else None
                )
            except ImportError:  # pragma: no cover - tensorboard is a dependency
                log.warning("tensorboard is not installed; metrics go to metrics.jsonl only")

    def write(self, step: int, metrics: dict[str, float]) -> None:
        if not metrics:  # an evaluation of a run without an eval set: no row (try-out 135, F2: {"step": N})
            return
        clean = {
            k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()
        }
        with writing(self.path.parent):
            self.file.write(json.dumps({"step": step, **clean}) + "\n")
            self.file.flush()
        if self.tb is not None:
            for k, v in metrics.items():
                if isinstance(v, (int, float)) and math.isfinite(v):
                    self.tb.add_scalar(k, v, step)
        if self.wandb is not None:
            self.wandb.log(step, metrics)

    def close(self) -> None:
        with writing(self.path.parent):
            self.file.close()
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.close()


def _parse(path: Path, raw: bytes, fix: str = "fix or delete that line, and rerun") -> list[dict]:
    """Rows of a metrics.jsonl (its bytes ``raw``); a torn last line is dropped with a warning; ``fix``: the way out
    a refusal names.

    Raises:
        RunDirError: the file is not UTF-8, a line other than the last is not a JSON object, or a row holds a
            value that is not a number (every figure ekd logs is one, or null: try-out 127, F4 — a text where a
            count belongs was a traceback in ``ekd compare``).
    """
    try:  # decoded once; a byte-order mark an editor wrote is read past (try-out 129, F10)
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        last = raw.rstrip(b"\n").rfind(b"\n")  # the last line starts after it
        if e.start > last:
            # a write cut inside a character of the last line: torn, as any cut (try-out 141, F5)
            log.warning("%s: dropping a torn last line (%s)", path, counted(len(raw) - last - 1, "byte"))
            raw = raw[: last + 1]
        text = record_text(raw, path, fix, RunDirError)  # any other: refused, naming its line
    lines = text.split("\n")
    rows = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            if not isinstance(row, dict):
                raise ValueError
        except ValueError:
            if all(not rest.strip() for rest in lines[number:]):
                log.warning("%s: dropping a torn last line (%s)", path, counted(len(line), "byte"))
                break
            raise RunDirError(f"{path} line {number} is not a JSON object; {fix}") from None
        if (
            key := next((k for k, v in row.items() if k.startswith(READ_KEYS) and not _figure(v)), None)
        ) is not None:
            raise RunDirError(
                f"{path} line {number}: '{key}' is a JSON {value_kind(row[key])} ({shown(row[key])}), not a number: write it "
                f"as a number, or {fix}"
            )
        rows.append(row)
    return rows


READ_KEYS = ("step", "train/", "select/", "eval/")
"""The metrics.jsonl keys this ekd reads (and writes): checked to hold numbers; a later ekd's other keys are read
past, as ekd-run.json's unknown fields are."""


def _figure(value: object) -> bool:
    """A value a metrics row may hold: a number, or null (a figure not finite, or not measured)."""
    return value is None or (isinstance(value, (int, float)) and not isinstance(value, bool))


def read_metrics(run_dir: Path, fix: str = "fix or delete that line, and rerun") -> list[dict]:
    """The rows of ``run_dir/metrics.jsonl`` ([] if there is none; :func:`_parse`).

    Raises:
        RunDirError: something other than a file is in its place, or :func:`_parse`'s.
    """
    path = Path(run_dir) / "metrics.jsonl"
    raw = record_bytes(path, fix, RunDirError, not_a_file="put the run's metrics back (or remove it)")
    return [] if raw is None else _parse(path, raw, fix)


def _is_eval(row: dict) -> bool:
    """Whether a metrics row is an evaluation's (its keys ``eval/...``), not a training step's."""
    return any(key.startswith("eval/") for key in row)
