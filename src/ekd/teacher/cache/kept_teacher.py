"""The teacher's own small files (config, generation config, tokenizer), kept in the cache it built.

A run from the cache reads them where an online run reads ``model.teacher``'s (the run's tokenizer under
``model.tokenizer=teacher``, the check that the teacher's tokenizer and head fit it, the end-of-document id of
``data.separator=auto``), so the teacher's directory need not exist where the cache trains: a cache copied to a
machine without the teacher trains there (try-out 64, F13). Weights are never copied; the cache's signature
(tokenizer hash, vocabulary, document boundary) still decides whether a config matches the cache.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

from ekd.io import make_dirs
from ekd.models.load import is_preset

log = logging.getLogger(__name__)

KEPT_DIR = "teacher"
"""``<cache_dir>/teacher``: the copy of the teacher's small files."""
STAGING_DIR = ".teacher-staging"
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


def _model_directory(spec: str, revision: str) -> Path | None:
    """The directory holding ``spec``'s files: a local directory, or the hub cache's snapshot of a hub id the
    build has loaded; None for a preset or files not found."""
    if is_preset(spec) or not spec.strip():
        return None
    local = Path(spec).expanduser()
    if local.is_dir():
        return local
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(spec, "config.json", revision=revision or None)
    except Exception:  # an id the hub would refuse: nothing cached
        return None
    return Path(found).parent if isinstance(found, str) else None


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


def keep_teacher_files(spec: str, revision: str, cache_dir: Path) -> list[str]:
    """Copy the teacher's small files into ``cache_dir/teacher``, replacing an earlier copy (through a staging
    directory, renamed into place: a kill mid-copy leaves no half copy); returns the names copied. A preset, or
    a teacher whose files are not found (a hub id whose config was never fetched), gives [] and no copy (an
    earlier one is removed: it was another teacher's).

    Raises:
        OSError: the cache directory cannot be written (the caller decides whether that matters).
    """
    source = _model_directory(spec, revision)
    files = small_files(source) if source is not None else []
    if not files:
        shutil.rmtree(cache_dir / KEPT_DIR, ignore_errors=True)
        return []
    staging = cache_dir / STAGING_DIR
    shutil.rmtree(staging, ignore_errors=True)
    make_dirs(staging)
    for path in files:
        shutil.copyfile(path, staging / path.name)  # a hub snapshot's links: their blobs' bytes
    kept = cache_dir / KEPT_DIR
    shutil.rmtree(kept, ignore_errors=True)
    os.replace(staging, kept)
    return [p.name for p in files]


def kept_teacher_dir(cache_dir: str | Path) -> Path | None:
    """``cache_dir/teacher`` when the cache keeps its teacher's files (one built by ekd since try-out 64's F13),
    else None."""
    kept = Path(cache_dir) / KEPT_DIR
    return kept if (kept / "config.json").is_file() else None


__all__ = ["KEPT_DIR", "keep_teacher_files", "kept_teacher_dir", "small_files"]
