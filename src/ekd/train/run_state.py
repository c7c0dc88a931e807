"""What a run directory is to ``ekd eval`` and ``ekd compare``: finished, unfinished (and how to finish it), or
no run — then the run a path lies inside, holds, or was moved aside from. No torch import: ``ekd eval`` of a
directory that is no run is answered at once."""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import yaml

from ekd.errors import EkdError
from ekd.locks import holder_of, holder_said
from ekd.models.adapter_dir import is_adapter_dir
from ekd.train.checkpoint_dirs import latest_checkpoint
from ekd.train.run_dir import aside_of, is_ekd_run, override_arg, read_marker


def not_a_finished_run(run_dir: Path) -> str | None:
    """Why ``ekd eval`` cannot score ``run_dir`` — a run that has not finished (with the way to finish it) or no
    run (with where to look) — or None for a finished run."""
    if is_finished_run(run_dir):
        return None
    if unfinished := _unfinished_run(run_dir):
        return unfinished
    return f"{run_dir} is not a finished ekd run (needs config.yaml and student/){_not_a_run_hint(run_dir)}"


RUN_PARTS_DEPTH = 3  # how far above a path a run is looked for (RUN/checkpoints/step-000100/...: 3)


def is_finished_run(path: Path) -> bool:
    """Whether ``path`` is a run ``ekd distill`` finished: config.yaml and an exported student/ (a model
    directory or a LoRA adapter)."""
    student = path / "student"
    return (path / "config.yaml").is_file() and (
        (student / "config.json").is_file() or is_adapter_dir(student)
    )


def enclosing_run(path: Path) -> str | None:
    """The finished run ``path`` lies inside (``RUN/student``, the exported model; ``RUN/checkpoints/step-N``),
    at most ``RUN_PARTS_DEPTH`` levels up, spelled as ``path`` is (relative stays relative); None if none."""
    path = Path(path)
    run = next((p for p in list(path.resolve().parents)[:RUN_PARTS_DEPTH] if is_finished_run(p)), None)
    return None if run is None else _as_given(run, path)


def _unfinished_run(path: Path) -> str | None:
    """The line for ``ekd eval`` of a run ``ekd distill`` started and did not finish (interrupted, failed, or
    training now: :func:`_not_a_run_hint` says that one), with the way on from what it holds: its newest
    checkpoint → ``--resume``, none → ``--overwrite`` (try-out 50, F5: 'needs config.yaml and student/; run ekd
    distill first' of a run holding config.yaml, which plain ekd distill refuses); of a finished run whose
    student/ is gone, ``--resume`` exports it again from the last checkpoint (try-out 52, F10). None for
    anything else."""
    if not (path / "config.yaml").is_file() or holder_of(path.resolve()) not in (None, os.getpid()):
        return None
    try:  # "starting": a start that did not finish (see the hint); "finished" without student/: exported again
        state = (read_marker(path) or {}).get("state")
    except EkdError:
        return None
    if state not in ("started", "finished"):
        return None
    newest = latest_checkpoint(path)
    if state == "finished":  # try-out 52, F10: its student/ removed or moved since
        if newest is None:
            return None
        return (
            f"{path} is a finished run whose exported student/ is gone; export it again from its last checkpoint "
            f"{newest.name} with `{_distill_command(path)} --resume` (no step is trained), then `ekd eval` it"
        )
    return f"{path} is a run that has not finished (no exported student/ yet); {way_to_finish(path)}, then `ekd eval` it"


def damaged_export(path: Path, error: Exception) -> str:
    """``error`` (the run ``path``'s exported ``student/`` did not load) with the way back where the run has a
    checkpoint: move ``student/`` away and export it again with ``--resume``, which trains no step (try-out 135,
    F5: a student/ synced short was blamed on model.student, and ``--resume`` called the run finished)."""
    from ekd.models.lora import AdapterBaseError

    newest = latest_checkpoint(path)
    if newest is None or isinstance(error, AdapterBaseError):  # its base, not the export: no re-export helps
        return str(error)
    return (
        f"{error}; if {path / 'student'} was damaged (copied or synced short), move it away and export it again "
        f"from checkpoint {newest.name} with `{_distill_command(path)} --resume` (no step is trained)"
    )


def way_to_finish(path: Path) -> str:
    """How to finish the run ``path`` that ``ekd distill`` started and did not finish: "its newest checkpoint is
    step-…: finish it with `ekd distill …/config.yaml --resume`", or, without a checkpoint, start it again with
    ``--overwrite``."""
    newest, command = latest_checkpoint(path), _distill_command(path)
    if newest is None:
        return f"it saved no checkpoint: start it again with `{command} --overwrite`"
    return f"its newest checkpoint is {newest.name}: finish it with `{command} --resume`"


def _distill_command(path: Path) -> str:
    """``ekd distill RUN/config.yaml``, with the run's directory as overrides when the run was copied or moved
    (its config.yaml names where it was made; try-out 52, F2)."""
    command = f"ekd distill {shlex.quote(str(path / 'config.yaml'))}"
    try:
        run = yaml.safe_load((path / "config.yaml").read_text()).get("run") or {}
        saved = Path(str(run.get("output_dir", ""))).expanduser() / str(run.get("name", ""))
        elsewhere = not saved.is_absolute() or saved.resolve() != path.resolve()
    except (OSError, ValueError, AttributeError, yaml.YAMLError):
        elsewhere = True
    if elsewhere:
        here = path.resolve()
        command += (
            f" {override_arg('run.output_dir', str(here.parent))} {override_arg('run.name', here.name)}"
        )
    return command


def _not_a_run_hint(path: Path) -> str:
    """The way on for ``ekd eval PATH`` where PATH is no finished run: when another ekd process holds the run
    PATH is or lies inside (``RUN/student`` while RUN trains, or is resumed), wait for it to end; else
    say where a killed ``--overwrite`` left the run (:func:`~ekd.train.run_dir.using_run` puts it back unless
    something else is in the way); else evaluate the finished run PATH lies inside; else train one."""
    resolved = Path(path).resolve()
    for run in [resolved, *list(resolved.parents)[:RUN_PARTS_DEPTH]]:
        if not (is_finished_run(run) or is_ekd_run(run)):
            continue
        pid = holder_of(run)
        # nobody, or this process (``ekd eval`` holds what it evaluates)
        if pid is None or pid == os.getpid():
            break
        try:
            training = (read_marker(run) or {}).get("state") in ("starting", "started")
        except EkdError:
            training = False
        who = holder_said(run, pid)
        doing = "is training it" if training else "is using it (training or evaluating it)"
        given = shlex.quote(str(path) if run == resolved else _as_given(run, Path(path)))
        where = "" if run == resolved else f"it lies inside the run {given}, and "
        return f"; {where}{who} {doing}: wait for it to end, then `ekd eval {given}`"
    # a run a killed --overwrite left aside that using_run did not put back: something else is in the way
    aside = aside_of(resolved) if resolved.name else None  # ('/' has no name, and nothing beside it)
    if aside is not None and aside.is_dir() and is_ekd_run(aside):
        # beside the directory a linked run leads to, named there (review 140, R4: named beside the link)
        shown = Path(path).parent / aside.name if Path(path).name and not Path(path).is_symlink() else aside
        # what to move: where a linked run leads, not the link (try-out 141, F4)
        holder = resolved if Path(path).is_symlink() else path
        return (
            f"; an interrupted --overwrite moved the run aside to {shown}, and {holder} holds something else: "
            f"move that away, then `ekd eval {shlex.quote(str(path))}` puts the run back and evaluates it"
        )
    run = enclosing_run(path)  # RUN/student, the exported model: the run is what is evaluated
    if run is not None:
        return (
            f"; it lies inside the finished run {run}: evaluate that with `ekd eval {shlex.quote(str(run))}`"
        )
    held = _runs_in(Path(path))  # run.output_dir given for a run inside it
    if held:
        names = ", ".join(p.name for p in held[:RUNS_SHOWN]) + (", …" if len(held) > RUNS_SHOWN else "")
        which = f"the run {names}" if len(held) == 1 else f"the runs {names}"
        return f"; it holds {which}: give one, e.g. `ekd eval {shlex.quote(str(held[0]))}`"
    return "; run ekd distill first"


RUNS_SHOWN = 3  # runs named by the hint for a directory that holds them


def _runs_in(path: Path) -> list[Path]:
    """The runs directly inside ``path`` — finished first, then runs ekd distill started (``ekd eval`` of one says how
    to finish it) — each by name; none if it cannot be listed."""
    try:
        found = [
            (not is_finished_run(p), p.name, p) for p in path.iterdir() if p.is_dir()
        ]  # (unfinished, name, p)
    except OSError:
        return []
    return [p for unfinished, _, p in sorted(found) if not unfinished or is_ekd_run(p)]


def _as_given(run: Path, given: Path) -> str:
    """``run`` (a resolved ancestor of ``given``) spelled as the user spelled ``given``: 'w/runs/a' for
    'w/runs/a/student', '.' for 'student'; its absolute path when that cannot be read off ``given``."""
    up = len(given.resolve().relative_to(run).parts)
    if ".." not in given.parts and up <= len(given.parents):
        return str(given.parents[up - 1])
    return str(run)


__all__ = ["enclosing_run", "is_finished_run", "not_a_finished_run", "way_to_finish"]
