"""The teacher's own small files (config, generation config, tokenizer), kept in the cache it built.

A run from the cache reads them where an online run reads ``model.teacher``'s (the run's tokenizer under
``model.tokenizer=teacher``, the check that the teacher's tokenizer and head fit it, the end-of-document id of
``data.separator=auto``), so the teacher's directory need not exist where the cache trains: a cache copied to a
machine without the teacher trains there (try-out 64, F13). Weights are never copied; the cache's signature
(tokenizer hash, vocabulary, document boundary) still decides whether a config matches the cache.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ekd.io import file_sha256, make_dirs
from ekd.teacher.cache.manifest import KEPT_FILES, MANIFEST, is_imported

KEPT_DIR = "teacher"
"""``<cache_dir>/teacher``: the copy of the teacher's small files."""
STAGING_DIR = ".teacher-staging"
KEPT_RECORD = ".ekd-kept.json"
"""In the copy: {file name: sha256} of the files copied, checked before a run reads them."""
WEIGHT_SUFFIXES = (
    ".safetensors",
    ".bin",
    ".pt",
    ".pth",
    ".ckpt",
    ".h5",
    ".msgpack",
    ".gguf",
    ".onnx",
    ".pkl",
)
MAX_FILE_BYTES = 64 << 20  # a tokenizer.json of a 256k vocabulary is ~35 MB; weights are larger still


def small_files(directory: Path) -> list[Path]:
    """The regular files of ``directory`` (top level) that are not weights: configs, tokenizer files, chat
    templates, a remote-code model's modules."""
    return sorted(
        p
        for p in directory.iterdir()
        if p.is_file()
        and not p.name.startswith(".")
        and p.suffix not in WEIGHT_SUFFIXES
        and p.stat().st_size <= MAX_FILE_BYTES
    )


def _record(kept: Path) -> dict[str, str] | None:
    """The copy's record {name: sha256}, None when missing or unreadable."""
    try:
        record = json.loads((kept / KEPT_RECORD).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(record, dict) and all(isinstance(v, str) for v in record.values())
    return record if ok else None


def kept_problem(kept: Path, recorded: dict | None = None) -> str | None:
    """What is wrong with the copy in ``kept`` against ``recorded`` (the manifest's :data:`KEPT_FILES`, sealed
    with it) or, for a cache whose manifest records none, the copy's own record: a file missing, changed, one
    the copy did not have (a loader would read it: try-out 66, F9), or the record itself, in words; None when
    it is whole."""
    record = recorded if isinstance(recorded, dict) else _record(kept)
    if record is None:
        return f"its record {KEPT_RECORD} is missing or unreadable"
    for name, digest in sorted(record.items()):
        path = kept / name
        if not path.is_file():
            return f"{name} is missing"
        if file_sha256(path) != digest:
            return f"{name} differs from the copy made (sha256)"
    if extra := sorted({p.name for p in small_files(kept)} - set(record)):
        return f"{', '.join(extra)} {'was' if len(extra) == 1 else 'were'} not in the copy made"
    return None


def teacher_files_record(spec: str, revision: str) -> dict[str, str] | None:
    """{file name: sha256} of the teacher's small files, as :func:`keep_teacher_files` copies them (the build
    records it in the cache's signature, :data:`KEPT_FILES`); None where none are found."""
    return _sha256s(_teacher_small_files(spec, revision)) or None


def _sha256s(files: list[Path]) -> dict[str, str]:
    return {p.name: file_sha256(p) for p in files}


def _teacher_small_files(spec: str, revision: str) -> list[Path]:
    from ekd.hub import model_directory  # a local directory, or the hub cache's snapshot of a hub id

    source = model_directory(spec, revision)
    return small_files(source) if source is not None else []


def keep_teacher_files(spec: str, revision: str, cache_dir: Path) -> list[str]:
    """Make ``cache_dir/teacher`` a whole copy of the teacher's small files, with a record of their sha256
    (:data:`KEPT_RECORD`, which :func:`kept_problem` and ``ekd cache verify`` check); returns the names written,
    [] when the copy was already whole and the same as the teacher's files (nothing is written: a read-only
    cache stays untouched). The copy is made in a staging directory and renamed into place: a kill mid-copy
    leaves no half copy. A preset, or a teacher whose files are not found (a hub id whose config was never
    fetched), gives [] and no copy (an earlier one is removed: it was another teacher's).

    Raises:
        OSError, DiskError: the cache directory cannot be written (the caller decides whether that matters).
    """
    files = _teacher_small_files(spec, revision)
    kept = cache_dir / KEPT_DIR
    if not files:
        shutil.rmtree(kept, ignore_errors=True)
        return []
    record = _sha256s(files)
    if kept.is_dir() and _record(kept) == record and kept_problem(kept) is None:
        return []
    staging = cache_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    make_dirs(staging)
    for path in files:
        shutil.copyfile(path, staging / path.name)  # a hub snapshot's links: their blobs' bytes
    (staging / KEPT_RECORD).write_text(json.dumps(record, indent=1, sort_keys=True))
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(staging, kept)
    return [p.name for p in files]


def kept_teacher_dir(cache_dir: str | Path) -> Path | None:
    """``cache_dir/teacher`` when the cache keeps its teacher's files (one built by ekd since try-out 64's F13),
    whole or not (:func:`kept_problem`), else None."""
    kept = Path(cache_dir) / KEPT_DIR
    return kept if kept.is_dir() else None


def _signature(cache_dir: Path) -> dict | None:
    try:
        signature = json.loads((cache_dir / MANIFEST).read_text()).get("signature")
    except (OSError, ValueError, AttributeError):
        return None
    return signature if isinstance(signature, dict) else None


def _again(signature: dict | None) -> str:
    """The command that (re)makes the copy where the teacher is: the build's, or an import's (try-out 65, F5)."""
    teacher = str((signature or {}).get("teacher_id", "")) or "the teacher"
    if is_imported(signature):  # try-out 66, F7: the import compares that path, so the files must be there
        return (
            f"run `ekd cache import SRC --config CONFIG --out DIR` again with the teacher's files at {teacher} "
            "(model.teacher)"
        )
    return f"run `ekd cache CONFIG` once where the teacher ({teacher}) is"


def copy_state(cache_dir: str | Path) -> tuple[Path | None, str | None, dict | None]:
    """(the copy, what is wrong with it, the manifest's signature) of the cache at ``cache_dir``: the copy is
    checked against the manifest's record when it has one (:data:`KEPT_FILES`), else against its own
    (:func:`kept_problem`); no copy where the manifest records one is "missing" (a cache copied without its
    ``teacher/``; try-out 66, F4); no copy and no record (an older ekd's cache) is (None, None, signature). The one
    reading of the copy's state that runs, ``ekd cache verify``/``info`` and the build's rerun share."""
    cache_dir = Path(cache_dir)
    signature = _signature(cache_dir)
    recorded = (signature or {}).get(KEPT_FILES)
    kept = kept_teacher_dir(cache_dir)
    if kept is None:
        missing = f"missing (copied without its {KEPT_DIR}/ directory?)" if recorded else None
        return None, missing, signature
    return kept, kept_problem(kept, recorded), signature


def teacher_files_in_cache(cache_dir: str | Path, spec: str) -> Path | None:
    """Where a run from the cache at ``cache_dir`` reads its teacher's files: the cache's whole copy; None (read
    ``spec``, ``model.teacher``) for a cache that keeps none while ``spec`` is there.

    Raises:
        CacheError: a damaged or missing copy (:func:`copy_state`), or no copy while ``spec`` is a local path that
            is not there; one line naming the command that makes the copy again, recomputing nothing.
    """
    from ekd.teacher.cache.format import CacheError

    cache_dir = Path(cache_dir)
    kept, problem, signature = copy_state(cache_dir)
    where = f"its copy of the teacher's config and tokenizer files ({cache_dir / KEPT_DIR})"
    if problem is not None:
        how = "copy it along with the cache, or " if kept is None else ""
        said = f"{problem}: {how}" if kept is None else f"damaged ({problem}); "
        raise CacheError(
            f"teacher cache {cache_dir}: {where} is {said}{_again(signature)} to restore it (the targets are kept)"
        )
    if kept is not None:
        return kept
    if spec.startswith((".", "/", "~")) and not Path(spec).expanduser().exists():
        raise CacheError(
            f"model.teacher: {spec} is not there, and the teacher cache {cache_dir} (made by an older ekd) keeps no "
            f"copy of the teacher's config and tokenizer, which a run from it reads: {_again(signature)} (it adds "
            "them, recomputing nothing), or set model.teacher to where the teacher is"
        )
    return None


__all__ = [
    "KEPT_DIR",
    "KEPT_RECORD",
    "copy_state",
    "keep_teacher_files",
    "kept_problem",
    "kept_teacher_dir",
    "small_files",
    "teacher_files_in_cache",
    "teacher_files_record",
]
