"""Local paths in a config, resolved once when the config is built: one spelling from there on.

A path in a config file or on the command line is read relative to the working directory (not to the
config file). :func:`resolve_paths` turns every local path into an absolute, resolved one (``~`` expanded,
``..``, ``.`` and a trailing ``/`` gone, symlinks followed) when the config is built, so the saved
``config.yaml``, cache and token-store signatures, an exported adapter's base and ``ekd eval RUN`` from any
directory all see the same spelling. Two kinds of keys:

- ``DIRECTORIES`` are always paths (where runs, caches and stores go): resolved even before they exist;
- ``SPECS`` name a local path *or* something else — a hub id (``Qwen/Qwen2.5-0.5B``), ``preset:<name>``,
  ``pystdlib``, a Jinja template, a keyword (``model.tokenizer=teacher``): resolved only when the local path
  exists, the rule the loaders use to tell a local directory from a hub id (:mod:`ekd.hub`); anything else is
  kept as given. ``hf:<path>`` keeps its prefix; a relative glob (``data/*.txt``) becomes an absolute one.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable
from glob import has_magic
from pathlib import Path
from typing import Any

DIRECTORIES = (
    "run.output_dir",
    "data.store_dir",
    "teacher.cache_dir",
    "eval.tasks_dir",
    "eval.tasks_cache_dir",
)
"""Keys that always name a local directory ('' = unset; ``data.store_dir=auto`` is a keyword)."""
SPECS = (
    "model.student",
    "model.teacher",
    "model.tokenizer",
    "data.source",
    "data.eval_sources",
    "data.chat_template",
)
"""Keys that name a local path or a hub id / preset / builtin / template; ``data.eval_sources``: each value."""
log = logging.getLogger(__name__)
_SAID: set[tuple[str, str]] = set()  # keywords over a local directory of their name, said once a process

KEYWORDS = {
    "model.tokenizer": ("teacher", "student", "train_bpe"),
    "data.store_dir": ("auto",),
}


def absolute(path: str) -> str:
    """``path`` absolute and resolved (``~`` expanded, symlinks followed); it need not exist."""
    return str(Path(path).expanduser().resolve())


def read_as(path: str) -> str:
    """What a refusal of a missing ``path`` adds: for a relative path, the absolute one it was read as (try-out
    84, F2: ``./teacher`` from another directory than the config file's), " (read as /w/teacher: relative paths
    start at the working directory)"; for a ``~`` path, what it expands to; "" for an absolute path."""
    if not path.strip() or Path(path).is_absolute():
        return ""
    if path.startswith("~"):  # what it expanded to (try-out 86, F4)
        return f" (read as {absolute(path)})"
    return f" (read as {absolute(path)}: relative paths start at the working directory)"


def _existing(path: str) -> bool:
    """Whether ``path`` names something here — a symbolic link too, to nothing or to itself (a loop): a local path,
    never a hub id (try-out 137, F5: ``model.teacher=lp``, a loop, was taken for the hub id 'lp')."""
    try:
        return Path(path).expanduser().exists() or os.path.islink(os.path.expanduser(path))
    except (OSError, ValueError):  # a Jinja template too long for a file name, a NUL byte
        return False


def local_spec(value: str, glob: bool = False) -> str:
    """A spec naming an existing local path, resolved; a hub id, preset, builtin or template as given.
    ``glob``: a data source, where a relative glob pattern becomes an absolute one."""
    if (
        not value.strip()
        or value.startswith("preset:")
        or value == "pystdlib"
        or value.startswith("pystdlib:")
    ):
        return value  # Path("") is the working directory
    if value.startswith("hf:"):
        return "hf:" + local_spec(value.removeprefix("hf:"))  # a dataset directory; a hub name as given
    if _existing(value):
        return absolute(value)
    if glob and has_magic(value):  # a glob: absolute, ~ expanded (glob.glob does neither)
        return os.path.normpath(os.path.join(os.getcwd(), os.path.expanduser(value)))
    return value


def _is_keyword(key: str, value: Any) -> bool:
    return isinstance(value, str) and (
        value in KEYWORDS.get(key, ())
        or (key in ("data.source", "data.eval_sources") and value == "pystdlib")
    )


def resolve_path(key: str, value: Any) -> Any:
    """The value of dotted ``key`` with its local path(s) resolved (other keys' values, and keywords, as given)."""
    if key not in DIRECTORIES and key not in SPECS:
        return value
    if isinstance(value, dict):  # data.eval_sources: name → source
        return {name: resolve_path(key, v) for name, v in value.items()}
    if not isinstance(value, str) or _is_keyword(key, value):
        return value
    if key in DIRECTORIES:
        return absolute(value) if value.strip() else value
    return local_spec(value, glob=key in ("data.source", "data.eval_sources"))


def gone_paths(saved: dict[str, Any], current: dict[str, Any], keys: list[str]) -> list[str]:
    """Of flat config ``keys`` where a saved run's config (``saved``) and today's (``current``) differ, those that
    differ only because the local path the run read no longer exists: today's value names nothing (so it was left
    as typed) and the saved absolute path ends with it (``text.jsonl``, ``data/text.jsonl`` for
    ``/w/data/text.jsonl``) — e.g. ``key: text.jsonl (the run read /w/text.jsonl)``. A ``--resume`` then names
    the missing path instead of a config change."""
    out = []
    for key in keys:
        if key not in SPECS:
            continue
        old, new = saved.get(key), current.get(key)
        pairs = (
            [(old.get(n), new.get(n)) for n in new]
            if isinstance(old, dict) and isinstance(new, dict)
            else [(old, new)]
        )
        for was, now in pairs:
            if isinstance(was, str) and isinstance(now, str) and was != now:
                was_path, now_path = (v.removeprefix("hf:") for v in (was, now))
                if now_path.strip() and not _existing(now_path) and _same_path(now_path, was_path):
                    out.append(f"{key}: {now} (the run read {was})")
    return out


def same_location(a: str, b: str) -> bool:
    """Whether two paths name one location from here, however spelled (relative, absolute, ``~``, a trailing '/',
    a symlink), whether or not it exists."""
    try:
        return Path(a).expanduser().resolve() == Path(b).expanduser().resolve()
    except (OSError, ValueError):
        return False


def _same_path(typed: str, saved: str) -> bool:
    """Whether ``typed`` (as given, not existing) names the saved absolute path ``saved``: the same path from
    here, or its trailing components (the run was made in a project directory since moved or copied)."""
    if absolute(typed) == saved:
        return True
    parts = [p for p in Path(os.path.expanduser(typed)).parts if p not in (".", "/")]
    return (
        Path(saved).is_absolute() and ".." not in parts and Path(saved).parts[-len(parts) :] == tuple(parts)
    )


def resolve_paths(cfg: Any) -> None:
    """Resolve, in place, the local paths of a built ``Config`` (defaults included: ``run.output_dir=runs``)."""
    for key in (*DIRECTORIES, *SPECS):
        section, name = key.split(".", 1)
        values = getattr(cfg, section)
        setattr(values, name, resolve_path(key, getattr(values, name)))


def say_keywords(cfg: Any, given: Iterable[str]) -> None:
    """Warn of a keyword a user gave (``given``: the dotted keys a config file or an override set, not defaults nor a
    run's record) where a directory of its name here is not read: once a process, by local rank 0 (try-out 137,
    F10; review 140, R8). Not of a run's recorded config read wherever a command runs (try-out 143, F1: `ekd eval
    RUN` was told to write a path it refuses), a default (try-out 145, F4), nor ``model.tokenizer=teacher|student``
    where that model is the directory (its tokenizer is read from there)."""
    for key in given:
        if key not in KEYWORDS and key not in ("data.source", "data.eval_sources"):
            continue
        value = cfg.value(key)
        for word in value.values() if isinstance(value, dict) else [value]:
            if not _is_keyword(key, word) or not _existing(word) or (key, word) in _SAID:
                continue
            # the model named is that directory: its tokenizer is read from there
            if (
                key == "model.tokenizer"
                and word in ("teacher", "student")
                and getattr(cfg.model, word) == absolute(word)
            ):
                continue
            _SAID.add((key, word))
            if os.environ.get("LOCAL_RANK", "0") == "0":
                log.warning(
                    "%s=%s is ekd's keyword, not the directory ./%s here, which is not used; write %s=./%s to use it",
                    key,
                    word,
                    word,
                    key,
                    word,
                )


HUB_SHAPED = ("model.student", "model.teacher", "model.tokenizer")
"""Keys whose value written ``org/name`` reads as a local directory where one is there, else as a hub id."""


def _hub_shaped(value: str) -> bool:
    """Whether ``value`` is written as a hub id is (``org/name``): no leading ``.``, ``/`` or ``~``, one slash."""
    return value.count("/") == 1 and not value.startswith((".", "/", "~")) and all(value.split("/"))


def say_local_over_hub(cfg: Any, given: dict[str, Any]) -> None:
    """Warn where a model key given (``given``: dotted key → its value as written, or as a run recorded it) is written
    as a hub id, ``org/name``, and a directory of that relative path here is read instead — once a process, by local
    rank 0 (try-out 152, F6: ``./Qwen/Qwen2.5-0.5B`` beside a project, a fine-tune saved under the hub id's name or a
    clone without its weights, replaced the hub model without a word, for ``ekd distill`` and for ``ekd eval RUN``
    run there; ``model.revision`` was recorded though never read)."""
    for key in HUB_SHAPED:
        written = given.get(key)
        if not isinstance(written, str) or not _hub_shaped(written) or not _existing(written):
            continue
        if (key, written) in _SAID:
            continue
        _SAID.add((key, written))
        if os.environ.get("LOCAL_RANK", "0") != "0":
            continue
        key_read, value = (
            (cfg.model.teacher_revision_key, cfg.model.teacher_hub_revision)
            if key == "model.teacher"
            else ("model.revision", cfg.model.revision)
        )
        revision = f" ({key_read}={value} is not read for it)" if value else ""
        # a warning where the hub cache holds that id too (a real choice made); else an info line: most such
        # values are a project's own `models/student` (try-out 154, N4: warned of a hub model that does not exist)
        # a project's own models/student: a debug line (review 156, R14: the info line's advice was false there)
        level = logging.WARNING if _in_hub_cache(written) else logging.DEBUG
        log.log(
            level,
            "%s=%s is read from the local directory ./%s%s, not the hub id %s; write %s=./%s to say so, or move "
            "the directory away to use the hub's model",
            key,
            written,
            written,
            revision,
            written,
            key,
            written,
        )


def _in_hub_cache(repo_id: str) -> bool:
    """Whether the hub cache (``HF_HUB_CACHE``) holds a snapshot of the model ``repo_id`` (no network)."""
    from ekd.hub import cached_repo  # ekd.hub imports this module

    snapshots = cached_repo(repo_id) / "snapshots"
    return snapshots.is_dir() and any(snapshots.iterdir())


def resolve_saved(raw: dict, output_dir: str | None = None) -> dict:
    """A saved config as a nested dict (``config.yaml``), its local paths resolved as a built config's are:
    for comparing a run's saved config with the current one (a run saved before paths were resolved).

    ``output_dir``: the current ``run.output_dir``. When the run was saved under another one — the project
    directory was moved or copied with its runs — saved paths under the old project root are read under the
    new one (``/old/w/runs`` → ``/new/w/runs`` maps ``/old/w/data`` to ``/new/w/data``), as relative paths
    would have been (with no trailing name in common, the directories holding the two output directories) —
    where the new path exists: a run directory copied alone (``/w/runs/x`` to ``/w/ro/runs/x``) keeps reading the
    data and models where they are."""
    out = {}
    for section, values in raw.items():
        if isinstance(values, dict):
            values = {k: resolve_path(f"{section}.{k}", v) for k, v in values.items()}
        out[section] = values
    saved_dir = (out.get("run") or {}).get("output_dir")
    if output_dir and isinstance(saved_dir, str) and saved_dir != output_dir:
        old, new = Path(saved_dir).parts, Path(output_dir).parts
        same = 0  # trailing components both share (w/runs); none: the directories holding the two
        while same < min(len(old), len(new)) and old[-1 - same] == new[-1 - same]:
            same += 1
        same = max(same, 1)
        old_root, new_root = Path(*old[: len(old) - same]), Path(*new[: len(new) - same])
        if len(old_root.parts) > 1 and len(new_root.parts) > 1:  # never rebase from the filesystem root
            for key in (*DIRECTORIES, *SPECS):
                section, name = key.split(".", 1)
                if isinstance(out.get(section), dict) and name in out[section]:
                    out[section][name] = _rebase(out[section][name], old_root, new_root)
    return out


def _rebase(value: Any, old_root: Path, new_root: Path) -> Any:
    if isinstance(value, dict):
        return {k: _rebase(v, old_root, new_root) for k, v in value.items()}
    if not isinstance(value, str):
        return value
    prefix = "hf:" if value.startswith("hf:") else ""
    path = Path(value.removeprefix(prefix))
    if not path.is_absolute() or not path.is_relative_to(old_root):
        return value
    moved = new_root / path.relative_to(old_root)
    if not moved.exists():  # a run copied alone: its data and models are where they were
        return value
    return prefix + str(moved)


__all__ = [
    "DIRECTORIES",
    "SPECS",
    "absolute",
    "read_as",
    "local_spec",
    "resolve_path",
    "say_keywords",
    "resolve_paths",
    "resolve_saved",
]
