"""Which teacher a figure was measured with: a fingerprint of a model's weight files by every one of their bytes.

``ekd compare`` pairs KL and top-1 agreement only between runs measured against the same teacher and gives each
teacher its own row, and ``--resume`` refuses a teacher other than the run's (try-outs 39, 42). Paths and
modification times do not tell: a copy on every node, a re-download or a moved project is the same teacher, and
a retrained one keeps its path. A sample of the bytes does not tell either (try-out 44: a LoRA merged into one
projection, or one edited tensor, fell between 16 sampled windows per file and was "the same teacher"), so
:func:`weights_fingerprint` hashes every byte of every weight file.

Reading a 16 GB teacher at every evaluation is what made the sample tempting; two things make the whole hash
cheap instead: a file is hashed in :data:`PIECE`-sized pieces on several threads (sha256 releases the GIL), and
each file's digest is remembered (:func:`memo_path`, in ekd's user cache directory :func:`cache_home`) under
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
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from ekd.io import make_dirs

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth")
TRAINER_STATE = ("optimizer", "scheduler", "scaler", "rng_state", "training_args", "trainer_state")
"""Names of a transformers Trainer checkpoint's own files beside the weights (``optimizer.pt``, 2–4× the model):
no weights, never hashed."""
SCHEME = "sha256"  # weights_fingerprint's prefix
PIECE = 64 << 20
"""Bytes of a file hashed by one thread: part of what a file's digest is (a sha256 over its pieces' sha256, not
the file's ``sha256sum``), so the memo's name carries it (:func:`memo_path`)."""
BLOCK = 8 << 20  # bytes read at once
MEMO_ENTRIES = 4096  # file states remembered, first in, first out

log = logging.getLogger(__name__)


def cache_home() -> Path:
    """ekd's user cache directory: ``$EKD_CACHE_HOME``, else ``$XDG_CACHE_HOME/ekd``, else ``~/.cache/ekd``."""
    if home := os.environ.get("EKD_CACHE_HOME"):
        return Path(home).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "ekd"


def memo_path() -> Path:
    """The file digests' memo: ``weight-file-sha256-p64m.json`` in :func:`cache_home` (the scheme and
    :data:`PIECE` in its name: digests of another piece size are another memo)."""
    return cache_home() / f"weight-file-{SCHEME}-p{PIECE >> 20}m.json"


def weight_files(spec: str, revision: str = "") -> list[Path]:
    """The files the model ``spec`` loads its weights from, sorted by name: its ``*.safetensors`` when it has any
    (transformers prefers them), else its ``.bin`` / ``.pt`` / ``.pth`` files but a Trainer checkpoint's own
    (:data:`TRAINER_STATE`) — of a local directory, or of a hub id's snapshot of ``revision`` in the hub cache
    (:func:`ekd.hub.model_directory`: new weights pushed under ``main`` are another model); [] for a preset, a hub id
    not cached here or a directory without any."""
    from ekd.hub import model_directory

    path = model_directory(spec, revision)
    if path is None:
        return []
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)
    safetensors = [f for f in files if f.suffix == ".safetensors"]
    return safetensors or [f for f in files if not f.name.startswith(TRAINER_STATE)]


def weights_fingerprint(spec: str, revision: str = "") -> str | None:
    """``sha256:<hex>`` over the names and :func:`file_digest` of the weight files (:func:`weight_files`) of the
    model ``spec`` (a local directory, or a hub id's cached snapshot of ``revision``); None for a preset, a hub id
    not cached or a directory without weight files. Equal for a copy anywhere (a hub snapshot and its
    ``save_pretrained`` copy alike), different as soon as one byte of one weight differs."""
    files = weight_files(spec, revision)
    if not files:
        return None
    h = hashlib.sha256()
    for f, digest in zip(files, _digests(files)):
        h.update(f"{f.name}:{digest};".encode())
    return f"{SCHEME}:{h.hexdigest()}"


def same_weights(recorded: str, spec: str, revision: str = "") -> bool | None:
    """Whether ``spec``'s weights (at ``revision``, for a hub id) are those a run recorded as ``recorded`` (a
    :func:`weights_fingerprint`, or the ``sampled-sha256:`` fingerprint an ekd before this one recorded, computed
    the old way for it); None when ``spec`` has no weight files to fingerprint."""
    if recorded.startswith(SAMPLED):
        current = sampled_fingerprint(spec)
    else:
        current = weights_fingerprint(spec, revision)
    return None if current is None else current == recorded


def comparable(a: str | None, b: str | None) -> bool:
    """Whether two recorded fingerprints can be compared: both recorded, by the same scheme (an entry of an ekd
    that sampled the bytes is compared by name instead)."""
    return a is not None and b is not None and a.startswith(SAMPLED) == b.startswith(SAMPLED)


def file_digest(path: Path) -> str:
    """sha256 over the file's size and the sha256 of each of its :data:`PIECE`-sized pieces (hashed on several
    threads); remembered under the file's state (see the module docstring)."""
    return _digests([path])[0]


def _digests(files: list[Path]) -> list[str]:
    states = [(f, f.stat()) for f in files]  # one stat per file: the pieces and the memo key agree
    keys = [_state_key(f, st) for f, st in states]
    memo = _read_memo()
    missing = [(f, st, k) for (f, st), k in zip(states, keys) if k not in memo]
    if missing:
        total = sum(st.st_size for _, st, _ in missing)
        if total >= 1 << 30:  # a pause worth a word: a 16 GB teacher takes seconds, once
            log.info(
                "hashing %.1f GiB of weight files once (remembered in %s)", total / (1 << 30), memo_path()
            )
        pieces = [(f, start) for f, st, _ in missing for start in range(0, max(st.st_size, 1), PIECE)]
        with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1, len(pieces))) as pool:
            hashed = dict(zip(pieces, pool.map(lambda p: _piece_sha256(*p), pieces)))
        unchanged = {}
        for f, st, k in missing:
            h = hashlib.sha256(f"{st.st_size};".encode())
            for start in range(0, max(st.st_size, 1), PIECE):
                h.update(hashed[(f, start)])
            memo[k] = h.hexdigest()
            if _state_key(f, f.stat()) == k:  # a file written while it was hashed is not remembered
                unchanged[k] = memo[k]
        _remember(unchanged)
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


def _state_key(path: Path, st: os.stat_result) -> str:
    """The file's real path and state: any write (or ``utime``) changes its change time, a copy its inode."""
    return f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}|{st.st_ctime_ns}|{st.st_ino}|{st.st_dev}"


def _read_memo() -> dict[str, str]:
    try:
        memo = json.loads(memo_path().read_text())
    except (OSError, ValueError):
        return {}
    if not isinstance(memo, dict):
        return {}
    return {k: v for k, v in memo.items() if isinstance(k, str) and isinstance(v, str)}


def _remember(digests: dict[str, str]) -> None:
    """Add ``digests`` to the memo under its lock, read again there (other processes' entries are kept), keeping
    the newest :data:`MEMO_ENTRIES`; best effort: a read-only home, or any other failure, only costs a hash."""
    from ekd.errors import EkdError
    from ekd.io import atomic_write_text
    from ekd.locks import locked

    if not digests:
        return
    path = memo_path()
    try:
        make_dirs(path.parent)
        with locked(path.with_name(f".{path.name}.lock")):
            memo = {**_read_memo(), **digests}
            atomic_write_text(path, json.dumps(dict(list(memo.items())[-MEMO_ENTRIES:])))
    except (OSError, EkdError):
        pass


# --- the fingerprint of ekd before try-out 44, for the records it wrote ----------------------------------------

SAMPLED = "sampled-sha256:"
WINDOWS, WINDOW = 16, 4096


def sampled_fingerprint(spec: str) -> str | None:
    """``sampled-sha256:<hex>``: each weight file's name, size, safetensors header and 16 windows of 4 KiB spread
    over it — what runs and eval.json entries recorded before :func:`weights_fingerprint` hashed every byte;
    computed only to check such a record."""
    path = Path(spec).expanduser()
    if spec.startswith("preset:") or not path.is_dir():
        return None
    files = sorted(f for f in path.iterdir() if f.is_file() and f.suffix in WEIGHT_SUFFIXES)  # its selection
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


def ran_in(recorded: Any, precision: Any) -> Any:
    """The dtype a teacher identity (:func:`teacher_identity`) says the teacher ran in: today's records hold it
    ('float32', 'bfloat16'); an older ekd's ``auto`` is read by the forward autocast its entry records — 'fp32'
    where 'auto' is a float32 teacher (a CPU), 'bf16'/'fp16' where it is bfloat16 (a GPU) — and stays ``auto``
    where none is recorded. (A GPU run with ``train.precision=fp32`` and an ``auto`` teacher ran a bfloat16 teacher
    under no autocast: read as float32; its figures are an older ekd's.)"""
    if recorded != "auto":
        return recorded
    return {"fp32": "float32", "bf16": "bfloat16", "fp16": "bfloat16"}.get(str(precision), recorded)


def teacher_identity(cfg: Any, dtype: str | None = None) -> dict[str, Any]:
    """The teacher a run's KL, agreement and teacher figures are measured with, as eval.json records it
    (:data:`ekd.eval.eval_json.TEACHER_KEY`): ``model.teacher``, its revision (``model.teacher_revision``, else
    ``model.revision``), the dtype its weights ran in
    and, for a local directory or a cached hub id, :func:`weights_fingerprint` (``weights``; None otherwise). ``cfg``: a Config;
    ``dtype``: the name of the evaluated teacher's dtype ('float32', :func:`ekd.models.load.dtype_name`) —
    ``model.teacher_dtype=auto`` is float32 on a CPU and
    bfloat16 on a GPU, so the setting alone told two runs of one teacher apart and paired two that differ
    (try-out 119, F2); None: the setting (no teacher was evaluated)."""
    spec = cfg.model.teacher
    return {
        "model": spec,
        "revision": cfg.model.teacher_hub_revision,
        "weights": weights_fingerprint(spec, cfg.model.teacher_hub_revision),
        "dtype": cfg.model.teacher_dtype if dtype is None else dtype,
    }
