"""Which files a directory or glob ``data.source`` reads, and the log line that says what was read.

A directory is searched recursively; its files are read in sorted path order, one document each. Skipped:

- hidden files and directories (a name starting with '.': ``.git``, ``.cache``, ...);
- ekd's own outputs, with all they hold, which lie below a corpus directory when ``run.output_dir``,
  ``teacher.cache_dir`` or ``data.store_dir`` is inside it: run directories (``ekd-run.json``, or
  ``config.yaml`` beside ``metrics.jsonl``: their metrics, checkpoints and exported students), teacher caches
  (a manifest of format ``ekd-teacher-cache``) and token stores: a store's key directory (a ``manifest.json``
  of ``STORE_FORMAT`` with its signature and splits, or ``split-<i>/tokens.u32`` while it is being built)
  and the store root (``data.store_dir``: a directory holding nothing but key directories and their locks), and
  comparisons (``ekd compare --out``: a compare.json of format ``ekd-compare``);
- ekd's lock files (:func:`is_lock_file`: ``<name>.lock`` holding at most a pid, as :class:`ekd.locks.FileLock`
  writes them; run and cache locks are also hidden, a token store's ``<key>.lock`` is not);
- row files (``.jsonl``, ``.ndjson``, ``.parquet``, ``.pq``): each line of them is a row, not text; a glob
  (``DIR/*.jsonl``) reads their rows.

Everything else is read as before (a directory of .py/.txt/.md files reads exactly the files it always did);
files that are not UTF-8 are skipped by the reader (:mod:`ekd.data.documents`). One info line names what was
read (file count by extension, the first paths) and what was skipped, so a stray file type shows.

A glob (:func:`list_glob`) reads every file it matches, each by its format (the reader's rule), but ekd's own
outputs below the glob's fixed leading directories and ekd's lock files are skipped as in a directory, so
``corpus/**/*.json`` does not read a cache's manifest. :func:`signed_files` and :func:`list_glob` give the
files a token store's signature is made of: never a lock file (its pid changes every run).
"""

from __future__ import annotations

import glob
import json
import os
import re
import shlex
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from ekd.io import dangling_link
from ekd.words import counted

FIRST_PATHS = 3  # paths named in the log line
LOCK_SUFFIX = ".lock"
# what ekd.locks.FileLock writes: nothing yet, or a line of its pid and host (a pid alone: an older ekd's)
LOCK_CONTENT = re.compile(rb"([0-9]+( [A-Za-z0-9._-]+)?)?\n?")
READERS_SUFFIX = ".readers"  # ekd.locks.readers_lock: a teacher cache's readers' lock, hidden and empty
LOCK_MAX_BYTES = 300  # a pid and a host name (at most 253 characters)


@dataclass
class DirectoryListing:
    """The files of a directory source: ``files`` to read (sorted), what was left out and why."""

    root: Path  # the directory; for a glob, its fixed leading directories
    files: list[Path] = field(default_factory=list)
    outputs: list[tuple[Path, str]] = field(default_factory=list)  # (ekd output directory, its kind)
    row_files: list[Path] = field(default_factory=list)
    locks: list[Path] = field(default_factory=list)  # ekd lock files that are not hidden
    broken: list[Path] = field(default_factory=list)  # symbolic links to nothing (refused by the reader)
    relative: bool = True  # name paths relative to ``root`` (a glob names them as it matched them)

    def describe(self, key: str, source: str) -> str:
        """'data.source=DIR: 24 files (.py 20, .md 4; first: a.py, b.py, c.py); skipped ...' (one line)."""
        return f"{key}={source}: {describe_files(self.files, self._root())}{self._skipped(key, source)}"

    def row_glob(self, key: str, source: str) -> str:
        """The glob that reads the row files' rows, as a config override: ``data.source='DIR/*.jsonl'``
        (``**/`` when some lie in sub-directories; the most common extension)."""
        suffix = Counter(p.suffix for p in self.row_files).most_common(1)[0][0]
        nested = any(p.parent != self.root for p in self.row_files)
        pattern = source.rstrip("/") + ("/**/*" if nested else "/*") + suffix
        return f"{key}={shlex.quote(pattern)}"

    def _root(self) -> Path | None:
        return self.root if self.relative else None

    def _skipped(self, key: str, source: str) -> str:
        parts = []
        if self.outputs:
            named = ", ".join(f"{_rel(p, self._root())} ({kind})" for p, kind in self.outputs[:FIRST_PATHS])
            more = f", +{len(self.outputs) - FIRST_PATHS} more" if len(self.outputs) > FIRST_PATHS else ""
            parts.append(f"{counted(len(self.outputs), 'ekd output directory')} ({named}{more})")
        if self.locks:
            parts.append(counted(len(self.locks), "ekd lock file"))
        if self.row_files:
            parts.append(
                f"{counted(len(self.row_files), 'row file')} ({by_suffix(self.row_files)}: read their rows with "
                f"{self.row_glob(key, source)})"
            )
        return f"; skipped {' and '.join(parts)}" if parts else ""


class _Outputs:
    """ekd output directories below ``root`` (excluded), each directory looked at once."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.kinds: dict[Path, str | None] = {}  # directory → its ekd output kind, or None

    def above(self, path: Path) -> Path | None:
        """The outermost ekd output directory between ``root`` (excluded) and ``path``, if any."""
        for parent in reversed(path.relative_to(self.root).parents[:-1]):  # outermost first
            directory = self.root / parent
            if directory not in self.kinds:
                self.kinds[directory] = ekd_output_kind(directory)
            if self.kinds[directory] is not None:
                return directory
        return None

    def skip(self, path: Path, listing: DirectoryListing) -> bool:
        """Whether ``path`` lies in an ekd output (then recorded in ``listing``) or is an ekd lock file."""
        if (output := self.above(path)) is not None:
            if output not in (p for p, _ in listing.outputs):
                listing.outputs.append((output, self.kinds[output] or ""))
            return True
        if is_lock_file(path):
            if not path.name.startswith("."):
                listing.locks.append(path)
            return True
        return False


def list_directory(root: Path) -> DirectoryListing:
    """The files below ``root`` a directory source reads (the rules of this module's docstring)."""
    from ekd.data.documents import JSONL_SUFFIXES, PARQUET_SUFFIXES  # what a row source is named by

    row_suffixes = JSONL_SUFFIXES + PARQUET_SUFFIXES
    listing = DirectoryListing(root)
    outputs = _Outputs(root)
    for path in files_below(root):
        if any(part.startswith(".") for part in path.relative_to(root).parts):
            continue
        if dangling_link(path):  # an unmounted disk's shard, a mistyped link
            listing.broken.append(path)
            continue
        if not path.is_file():
            continue
        if outputs.skip(path, listing):
            continue
        if path.suffix.lower() in row_suffixes:
            listing.row_files.append(path)
        else:
            listing.files.append(path)
    return listing


def list_glob(pattern: str) -> DirectoryListing:
    """The files a glob source reads: every file ``pattern`` matches (``**`` recursive; sorted), but those in
    ekd's own outputs below its fixed leading directories and ekd's lock files. Row files stay in ``files``:
    the reader reads each file by its format."""
    root = glob_root(pattern)
    listing = DirectoryListing(root, relative=False)
    outputs = _Outputs(root)
    for path in sorted(Path(p) for p in glob.glob(pattern, recursive=True)):
        if path.is_file() and not outputs.skip(path, listing):
            listing.files.append(path)
    return listing


def glob_root(pattern: str) -> Path:
    """The fixed leading directories of a glob (``corpus/a`` of ``corpus/a/**/*.txt``; ``.`` of ``*.txt``)."""
    parts = Path(pattern).parts
    fixed = next(i for i, part in enumerate(parts) if glob.has_magic(part))
    return Path(*parts[:fixed]) if fixed else Path()


def enclosing_output(path: Path) -> tuple[Path, str] | None:
    """(directory, kind) of the ekd output (:func:`ekd_output_kind`) that ``path`` — a directory, or the directory
    of a file — is, or lies in, else None: a data source there reads ekd's own files (try-out 52, F9: a run
    directory named as data.source trained on its tokenizer.json, manifests and config.yaml)."""
    directory = path if path.is_dir() else path.parent
    for candidate in (directory, *directory.absolute().parents):
        if (kind := ekd_output_kind(candidate)) is not None:
            return candidate, kind
    return None


def signed_files(root: Path) -> list[Path]:
    """Every file below ``root`` (sorted) but those inside ekd's own outputs and ekd's lock files: what
    identifies a directory source's content in the token store's signature. A superset of what a reader reads
    (hidden and row files stay, so an ``hf:`` directory of Parquet files is signed by them) that runs writing
    below the corpus do not change — hidden outputs included: ``--overwrite`` moves the previous run aside to
    ``.<name>.replaced`` while the new one prepares its data."""
    outputs, listing = _Outputs(root), DirectoryListing(root)
    return [p for p in files_below(root) if p.is_file() and not outputs.skip(p, listing)]


def files_below(root: Path) -> list[Path]:
    """Every file below ``root``, sorted, named by the path through ``root`` — following symbolic links to
    directories, each directory once (a link back up is not walked again): a corpus assembled from links to shards on
    other disks is read whole, as a glob of it is (try-out 137, F2: ``Path.rglob`` of Python 3.11 does not descend
    into a linked directory, whose files were left out without a word)."""
    seen: set[str] = set()
    found: list[Path] = []
    for top, directories, files in os.walk(root, followlinks=True):
        real = os.path.realpath(top)
        if real in seen:
            directories[:] = []
            continue
        seen.add(real)
        directories.sort()  # a directory reached by two paths is named by the first in name order, on every disk
        found += [Path(top) / name for name in files]
    return sorted(found)


def is_lock_file(path: Path) -> bool:
    """Whether ``path`` is one of ekd's lock files (:mod:`ekd.locks`): named ``*.lock`` and holding nothing
    or a line of a pid and a host, the only content :class:`ekd.locks.FileLock` writes — the run lock
    ``.<name>.lock``, the cache lock ``.<cache>.lock`` and the token store's ``<key>.lock`` alike —, or
    ``.<cache>.readers``, empty (:class:`ekd.locks.ReadLock`). A user's ``*.lock`` file with
    other content (``yarn.lock``, ``Cargo.lock``) is not one."""
    if path.name.startswith(".") and path.name.endswith(READERS_SUFFIX):  # ekd.locks.ReadLock writes nothing
        return path.is_file() and path.stat().st_size == 0
    if not path.name.endswith(LOCK_SUFFIX):
        return False
    try:
        with path.open("rb") as f:
            head = f.read(LOCK_MAX_BYTES + 1)
    except OSError:
        return False
    return len(head) <= LOCK_MAX_BYTES and LOCK_CONTENT.fullmatch(head) is not None


COMPARE_FORMAT = "ekd-compare"  # compare.json's "format" (ekd.eval.compare.compare_runs writes it)
# what compare_runs writes under --out
COMPARE_OUTPUTS = (
    "compare.md",
    "compare.csv",
    "compare.json",
    "plots",
)


def is_comparison(directory: Path) -> bool:
    """Whether ``directory`` holds a comparison ``ekd compare`` wrote: a compare.json of :data:`COMPARE_FORMAT`,
    or (an ekd that wrote no format) compare.json, compare.md and compare.csv side by side."""
    path = directory / "compare.json"
    if not path.is_file():
        return False
    if all((directory / name).is_file() for name in COMPARE_OUTPUTS[:2]):
        return True
    try:
        with path.open(encoding="utf-8") as f:
            head = f.read(4096)
    except (OSError, UnicodeDecodeError):
        return False
    return f'"format": "{COMPARE_FORMAT}"' in head


def ekd_output_kind(directory: Path) -> str | None:
    """'run directory', 'teacher cache', 'token store' or 'comparison' (``ekd compare --out``: try-out 51, F3)
    when ``directory`` is one ekd wrote, else None."""
    from ekd.teacher.cache.format import FORMAT_NAME
    from ekd.teacher.cache.manifest import manifest_paths

    if (directory / "ekd-run.json").is_file() or (
        (directory / "config.yaml").is_file() and (directory / "metrics.jsonl").is_file()
    ):
        return "run directory"
    for manifest in manifest_paths(directory):
        if manifest.is_file() and _json_head(manifest).get("format") == FORMAT_NAME:
            return "teacher cache"
    if _is_token_store(directory) or _is_store_root(directory):
        return "token store"
    if is_comparison(directory):
        return "comparison"
    return None


def _is_token_store(directory: Path) -> bool:
    """A token store's key directory (:mod:`ekd.data.store`): a manifest of ``STORE_FORMAT`` that records a
    signature and splits, or split folders with token files (a build under way or killed, ``<key>.partial``),
    or a split folder itself."""
    from ekd.data.store import FILES, MANIFEST, STORE_FORMAT

    tokens = FILES["tokens"][0]
    if (directory / tokens).is_file() or any(directory.glob(f"split-*/{tokens}")):
        return True
    manifest = _json_head(directory / MANIFEST)
    return (
        type(manifest.get("format")) is int
        and manifest["format"] == STORE_FORMAT
        and isinstance(manifest.get("signature"), dict)
        and isinstance(manifest.get("splits"), list)
    )


def _is_store_root(directory: Path) -> bool:
    """A ``data.store_dir``: one or more token stores (:func:`_is_token_store`) and nothing else but their
    lock files and hidden entries. A directory that also holds other files is not one (those are read); its
    stores are then skipped one by one."""
    stores = 0
    try:
        for entry in directory.iterdir():  # an ordinary directory stops at its first entry
            if entry.name.startswith("."):
                continue
            if entry.is_dir() and _is_token_store(entry):
                stores += 1
            elif not (entry.is_file() and is_lock_file(entry)):
                return False
    except OSError:
        return False
    return stores > 0


def describe_files(files: list[Path], root: Path | None) -> str:
    """'24 files (.py 20, .md 4; first: a.py, b.py, c.py)' (paths relative to ``root`` when given)."""
    if not files:
        return "no files"
    first = ", ".join(_rel(p, root) for p in files[:FIRST_PATHS])
    more = ", …" if len(files) > FIRST_PATHS else ""
    return f"{counted(len(files), 'file')} ({by_suffix(files)}; first: {first}{more})"


def _json_head(path: Path) -> dict:
    """The JSON object in ``path``, or {} when it is absent, unreadable or not an object."""
    try:
        with path.open(encoding="utf-8") as f:
            head = json.load(f)
    except (OSError, ValueError):
        return {}
    return head if isinstance(head, dict) else {}


def by_suffix(files: list[Path]) -> str:
    counts = Counter(p.suffix.lower() or "(no extension)" for p in files)
    return ", ".join(f"{suffix} {n}" for suffix, n in counts.most_common())


def _rel(path: Path, root: Path | None) -> str:
    return path.relative_to(root).as_posix() if root is not None else path.as_posix()


__all__ = [
    "DirectoryListing",
    "describe_files",
    "by_suffix",
    "ekd_output_kind",
    "is_lock_file",
    "list_directory",
    "list_glob",
    "signed_files",
]
