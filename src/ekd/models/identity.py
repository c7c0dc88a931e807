"""Which teacher a figure was measured with: a fingerprint of a model's weight files by every one of their bytes.

``ekd compare`` pairs KL and top-1 agreement only between runs measured against the same teacher and gives each
teacher its own row, and ``--resume`` refuses a teacher other than the run's (try-outs 39, 42). Paths and
modification times do not tell: a copy on every node, a re-download or a moved project is the same teacher, and
a retrained one keeps its path. A sample of the bytes does not tell either (try-out 44: a LoRA merged into one
projection, or one edited tensor, fell between 16 sampled windows per file and was "the same teacher"), so
:func:`weights_fingerprint` hashes every byte of every weight file.

Reading a 16 GB teacher at every evaluation is what made the sample tempting; two things make the whole hash
cheap instead: a file is hashed in :data:`PIECE`-sized pieces on several threads (sha256 releases the GIL), and
each file's digest is remembered (:data:`MEMO_NAME` in ekd's user cache directory, :func:`cache_home`) under
its path and its state — size, modification and change times, inode, device. A file written in place, or with
its modification time put back, has a new change time (the kernel sets it on every write and ``utime``), so it
is hashed again; an unchanged file is a ``stat``. The memo is a convenience: unreadable or unwritable, every
file is simply hashed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
SCHEME = "sha256"  # weights_fingerprint's prefix
PIECE = 64 << 20  # bytes hashed by one thread at a time
BLOCK = 8 << 20  # bytes read at once
MEMO_NAME = "weight-file-sha256.json"
MEMO_ENTRIES = 4096  # files remembered; the oldest are dropped

_memo_lock = threading.Lock()
log = logging.getLogger(__name__)


def cache_home() -> Path:
    """ekd's user cache directory: ``$EKD_CACHE_HOME``, else ``$XDG_CACHE_HOME/ekd``, else ``~/.cache/ekd``."""
    if home := os.environ.get("EKD_CACHE_HOME"):
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ekd"


def weight_files(spec: str) -> list[Path]:
    """The weight files (:data:`WEIGHT_SUFFIXES`) of the local model directory ``spec``, sorted by name; [] for a
    hub id, a preset or a directory without any."""
    path = Path(spec).expanduser()
    if spec.startswith("preset:") or not path.is_dir():
        return []
    return sorted(f for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)


def weights_fingerprint(spec: str) -> str | None:
    """``sha256:<hex>`` over the names and :func:`file_digest` of the weight files of the local model directory
    ``spec``; None for a hub id, a preset or a directory without weight files. Equal for a copy anywhere,
    different as soon as one byte of one weight differs."""
    files = weight_files(spec)
    if not files:
        return None
    h = hashlib.sha256()
    for f, digest in zip(files, _digests(files)):
        h.update(f"{f.name}:{digest};".encode())
    return f"{SCHEME}:{h.hexdigest()}"


def same_weights(recorded: str, spec: str) -> bool | None:
    """Whether ``spec``'s weights are those a run recorded as ``recorded`` (a :func:`weights_fingerprint`, or the
    ``sampled-sha256:`` fingerprint an ekd before this one recorded, computed the old way for it); None when
    ``spec`` has no weight files to fingerprint."""
    current = sampled_fingerprint(spec) if recorded.startswith(SAMPLED) else weights_fingerprint(spec)
    return None if current is None else current == recorded


def comparable(a: str | None, b: str | None) -> bool:
    """Whether two recorded fingerprints can be compared: both recorded, by the same scheme (an entry of an ekd
    that sampled the bytes is compared by name instead)."""
    return a is not None and b is not None and a.startswith(SAMPLED) == b.startswith(SAMPLED)


def file_digest(path: Path) -> str:
    """sha256 over the sha256 of every :data:`PIECE` of the file (hashed on several threads) and its size;
    remembered under the file's state (see the module docstring)."""
    return _digests([path])[0]


def _digests(files: list[Path]) -> list[str]:
    memo = _read_memo()
    keys = [_state_key(f) for f in files]
    missing = [(f, k) for f, k in zip(files, keys) if k not in memo]
    if missing:
        total = sum(f.stat().st_size for f, _ in missing)
        if total >= 1 << 30:  # a pause worth a word: a 16 GB teacher takes seconds, once
            log.info(
                "hashing %.1f GB of weight files once (remembered in %s)",
                total / 1e9,
                cache_home() / MEMO_NAME,
            )
        pieces = [(f, start) for f, _ in missing for start in range(0, max(f.stat().st_size, 1), PIECE)]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(pieces))) as pool:
            hashed = dict(zip(pieces, pool.map(lambda p: _piece_sha256(*p), pieces)))
        for f, k in missing:
            h = hashlib.sha256(f"{f.stat().st_size};".encode())
            for start in range(0, max(f.stat().st_size, 1), PIECE):
                h.update(hashed[(f, start)])
            memo[k] = h.hexdigest()
        _write_memo(memo)
    return [memo[k] for k in keys]


def _piece_sha256(path: Path, start: int) -> bytes:
    h = hashlib.sha256()
    with path.open("rb") as f:
        f.seek(start)
        left = PIECE
        while left and (block := f.read(min(BLOCK, left))):
            h.update(block)
            left -= len(block)
    return h.digest()


def _state_key(path: Path) -> str:
    """The file's real path and state: any write (or ``utime``) changes its change time, a copy its inode."""
    st = path.stat()
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def _read_memo() -> dict[str, str]:
    try:
        memo = json.loads((cache_home() / MEMO_NAME).read_text())
    except (OSError, ValueError):
        return {}
    return (
        {k: v for k, v in memo.items() if isinstance(k, str) and isinstance(v, str)}
        if isinstance(memo, dict)
        else {}
    )


def _write_memo(memo: dict[str, str]) -> None:
    """Keep the newest :data:`MEMO_ENTRIES` entries; best effort (a read-only home, a race: hashed again)."""
    kept = dict(list(memo.items())[-MEMO_ENTRIES:])
    path = cache_home() / MEMO_NAME
    tmp = path.with_name(f".{MEMO_NAME}.{os.getpid()}.{threading.get_ident()}.tmp")
    with _memo_lock:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp.write_text(json.dumps(kept))
            os.replace(tmp, path)
        except OSError:
            tmp.unlink(missing_ok=True)


# --- the fingerprint of ekd before try-out 44, for the records it wrote ----------------------------------------

SAMPLED = "sampled-sha256:"
WINDOWS, WINDOW = 16, 4096


def sampled_fingerprint(spec: str) -> str | None:
    """``sampled-sha256:<hex>``: each weight file's name, size, safetensors header and 16 windows of 4 KiB spread
    over it — what runs and eval.json entries recorded before :func:`weights_fingerprint` hashed every byte;
    computed only to check such a record."""
    files = weight_files(spec)
    if not files:
        return None
    h = hashlib.sha256()
    for f in files:
        size = f.stat().st_size
        h.update(f"{f.name}:{size}".encode())
        with f.open("rb") as fh:
            if f.suffix == ".safetensors" and size >= 8:
                length = int.from_bytes(fh.read(8), "little")
                h.update(fh.read(min(length, size - 8)))
            last = max(size - WINDOW, 0)
            for k in range(WINDOWS):
                fh.seek(last * k // (WINDOWS - 1))
                h.update(fh.read(WINDOW))
    return f"{SAMPLED}{h.hexdigest()}"


def teacher_identity(cfg: Any) -> dict[str, Any]:
    """The teacher a run's KL, agreement and teacher figures are measured with, as eval.json records it
    (:data:`ekd.eval.eval_json.TEACHER_KEY`): ``model.teacher``, ``model.revision``, ``model.teacher_dtype`` and,
    for a local directory, :func:`weights_fingerprint` (``weights``; None otherwise). ``cfg``: a Config."""
    spec = cfg.model.teacher
    return {
        "model": spec,
        "revision": cfg.model.revision,
        "weights": weights_fingerprint(spec),
        "dtype": cfg.model.teacher_dtype,
    }
