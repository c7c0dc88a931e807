"""Which files a directory ``data.source`` reads as text, and the log line that says what was read.

A directory is searched recursively; its files are read in sorted path order, one document each. Skipped:

- hidden files and directories (a name starting with '.': ``.git``, ``.cache``, ...);
- ekd's own outputs, with all they hold, which lie below a corpus directory when ``run.output_dir``,
  ``teacher.cache_dir`` or ``data.store_dir`` is inside it: run directories (``ekd-run.json``, or
  ``config.yaml`` beside ``metrics.jsonl``: their metrics, checkpoints and exported students), teacher caches
  (a manifest of format ``ekd-teacher-cache``) and token stores (``tokens.u32``);
- row files (``.jsonl``, ``.ndjson``, ``.parquet``, ``.pq``): each line of them is a row, not text; name the
  file itself as ``data.source`` to read its rows.

Everything else is read as before (a directory of .py/.txt/.md files reads exactly the files it always did);
files that are not UTF-8 are skipped by the reader (:mod:`ekd.data.documents`). One info line names what was
read (file count by extension, the first paths) and what was skipped, so a stray file type shows.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

FIRST_PATHS = 3  # paths named in the log line


@dataclass
class DirectoryListing:
    """The files of a directory source: ``files`` to read (sorted), what was left out and why."""

    root: Path
    files: list[Path] = field(default_factory=list)
    outputs: list[tuple[Path, str]] = field(default_factory=list)  # (ekd output directory, its kind)
    row_files: list[Path] = field(default_factory=list)

    def describe(self, key: str, source: str) -> str:
        """'data.source=DIR: 24 files (.py 20, .md 4; first: a.py, b.py, c.py); skipped ...' (one line)."""
        return f"{key}={source}: {describe_files(self.files, self.root)}{self._skipped()}"

    def _skipped(self) -> str:
        parts = []
        if self.outputs:
            named = ", ".join(f"{_rel(p, self.root)} ({kind})" for p, kind in self.outputs[:FIRST_PATHS])
            more = f", +{len(self.outputs) - FIRST_PATHS} more" if len(self.outputs) > FIRST_PATHS else ""
            parts.append(f"{_count(len(self.outputs), 'ekd output directory')} ({named}{more})")
        if self.row_files:
            parts.append(
                f"{_count(len(self.row_files), 'row file')} ({_by_suffix(self.row_files)}: name one as "
                "data.source to read its rows)"
            )
        return f"; skipped {' and '.join(parts)}" if parts else ""


def list_directory(root: Path) -> DirectoryListing:
    """The files below ``root`` a directory source reads (the rules of this module's docstring)."""
    from ekd.data.documents import JSONL_SUFFIXES, PARQUET_SUFFIXES  # what a row source is named by

    row_suffixes = JSONL_SUFFIXES + PARQUET_SUFFIXES
    listing = DirectoryListing(root)
    kinds: dict[Path, str | None] = {}  # directory → its ekd output kind, or None

    def output_above(path: Path) -> Path | None:
        """The outermost ekd output directory between ``root`` (excluded) and ``path``, if any."""
        for parent in reversed(path.relative_to(root).parents[:-1]):  # outermost first
            directory = root / parent
            if directory not in kinds:
                kinds[directory] = ekd_output_kind(directory)
            if kinds[directory] is not None:
                return directory
        return None

    for path in sorted(root.rglob("*")):
        if not path.is_file() or any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if (output := output_above(path)) is not None:
            if output not in (p for p, _ in listing.outputs):
                listing.outputs.append((output, kinds[output] or ""))
        elif path.suffix.lower() in row_suffixes:
            listing.row_files.append(path)
        else:
            listing.files.append(path)
    return listing


def signed_files(root: Path) -> list[Path]:
    """Every file below ``root`` (sorted) but those inside ekd's own outputs: what identifies a directory
    source's content in the token store's signature. A superset of what a reader reads (hidden and row files
    stay, so an ``hf:`` directory of Parquet files is signed by them) that runs writing below the corpus do
    not change."""
    outputs = {p for p, _ in list_directory(root).outputs}
    return [p for p in sorted(root.rglob("*")) if p.is_file() and not any(o in outputs for o in p.parents)]


def ekd_output_kind(directory: Path) -> str | None:
    """'run directory', 'teacher cache' or 'token store' when ``directory`` is one ekd wrote, else None."""
    from ekd.data.store import FILES
    from ekd.teacher.cache.format import FORMAT_NAME

    if (directory / "ekd-run.json").is_file() or (
        (directory / "config.yaml").is_file() and (directory / "metrics.jsonl").is_file()
    ):
        return "run directory"
    for manifest in (directory / "manifest.json", *sorted(directory.glob("manifest.rank*.json"))):
        if manifest.is_file() and _json_format(manifest) == FORMAT_NAME:
            return "teacher cache"
    if (directory / FILES["tokens"][0]).is_file():
        return "token store"
    return None


def describe_files(files: list[Path], root: Path | None) -> str:
    """'24 files (.py 20, .md 4; first: a.py, b.py, c.py)' (paths relative to ``root`` when given)."""
    if not files:
        return "no files"
    first = ", ".join(_rel(p, root) for p in files[:FIRST_PATHS])
    more = ", …" if len(files) > FIRST_PATHS else ""
    return f"{_count(len(files), 'file')} ({_by_suffix(files)}; first: {first}{more})"


def _json_format(path: Path) -> object:
    try:
        with path.open(encoding="utf-8") as f:
            head = json.load(f)
    except (OSError, ValueError):
        return None
    return head.get("format") if isinstance(head, dict) else None


def _by_suffix(files: list[Path]) -> str:
    counts = Counter(p.suffix.lower() or "(no extension)" for p in files)
    return ", ".join(f"{suffix} {n}" for suffix, n in counts.most_common())


def _count(n: int, noun: str) -> str:
    plural = noun[:-1] + "ies" if noun.endswith("y") else noun + "s"
    return f"{n} {noun if n == 1 else plural}"


def _rel(path: Path, root: Path | None) -> str:
    return path.relative_to(root).as_posix() if root is not None else path.as_posix()


__all__ = ["DirectoryListing", "describe_files", "ekd_output_kind", "list_directory", "signed_files"]
