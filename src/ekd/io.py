"""Writing files safely: every write is atomic, and a disk problem is one line naming the directory.

One mechanism for every writer (run files, checkpoints, cache shards and manifests, tokenizers):

- :func:`atomic_file` yields a binary file at ``<path>.tmp``; on success it is flushed, fsynced and renamed
  onto ``path`` (``os.replace``), on any error the temp file is removed. Readers never see half a file. The
  bytes written are hashed on the way (``.sha256``) so a checkpoint records its checksums without reading
  the file back.
- :func:`atomic_dir` does the same for a directory (a tokenizer or model saved by ``save_pretrained``);
  :func:`replace_dir` puts a finished directory in place of another so that a kill at any instant leaves one
  of them whole, and :func:`restore_dir` finishes a replacement a kill interrupted.
- :func:`writing` turns an ``OSError`` raised while writing — also one that torch wraps in its own
  ``RuntimeError`` (``unexpected pos 3200 vs 3092`` on a full disk) — into a :class:`DiskError`:
  ``no space left on device writing to runs/x/checkpoints; free space there and rerun``.

safetensors' ``save_file`` is never called: it reports no error on a full disk, so tensors are serialized
with ``safetensors.torch.save`` (bytes) and written here.
"""

from __future__ import annotations

import errno
import hashlib
import json
import math
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from ekd.errors import EkdError

_REASONS = {
    errno.ENOSPC: ("no space left on device", "free space there"),
    errno.EDQUOT: ("disk quota exceeded", "free space there"),
    errno.EACCES: ("permission denied", "make it writable or choose another directory"),
    errno.EPERM: ("permission denied", "make it writable or choose another directory"),
    errno.EROFS: ("read-only file system", "choose a writable directory"),
    errno.ENOTDIR: ("a path component is a file, not a directory", "choose another path"),
    errno.EISDIR: ("a directory is in the way of a file", "choose another path"),
    errno.EEXIST: ("a file is in the way", "choose another path"),
    errno.ENAMETOOLONG: ("file name too long", "choose a shorter name"),
    errno.EFBIG: (  # try-out 36: a scheduler's file-size cap (ulimit -f), FAT32 past 4 GiB — was a traceback
        "file too large for the file-size limit (ulimit -f) or the file system",
        "raise the limit or choose another file system",
    ),
}


class DiskError(EkdError):
    """Writing failed for a reason of the file system (full disk, permissions, a file in the way)."""


# how Rust libraries (tokenizers, safetensors) spell an OS error in the message of a plain Exception
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)|Os \{ code: (\d+)")


def _os_error(e: BaseException) -> OSError | None:
    """The OSError behind ``e``: itself, its cause/context (torch wraps a failed write in RuntimeError), or
    the ``os error 28`` in the message of the Exception that tokenizers and safetensors raise."""
    seen = 0
    while e is not None and seen < 8:
        if isinstance(e, OSError) and e.errno is not None:
            return e
        if m := _RUST_OS_ERROR.search(str(e)):
            code = int(m.group(1) or m.group(2))
            return OSError(code, os.strerror(code))
        e = e.__cause__ or e.__context__
        seen += 1
    return None


IN_THE_WAY = (errno.ENOTDIR, errno.EISDIR, errno.EEXIST)
"""A path where ekd writes is taken by another file or directory: the error's own path is named, and moving it
is the fix (try-out 42: 'a file is in the way writing to runs/x; choose another path' of a stray runs/x/student.tmp)."""


def dangling_link(path: Path | str) -> str | None:
    """What is wrong with ``path`` when it is a symbolic link to nothing — ``"P is a symbolic link to T, which does
    not exist: mount its disk or create it"`` (a disk not mounted, a mistyped target) — or one that leads back to
    itself; else None. The one wording of every place a path may be one."""
    p = os.fspath(path)
    if not os.path.islink(p) or os.path.exists(p):
        return None
    try:
        os.stat(p)
    except OSError as e:
        if e.errno == errno.ELOOP:  # one that leads back to itself: no target to mount (try-out 141, F3)
            return f"{p} is a symbolic link that leads back to itself (a loop): point it at a real file or directory"
    return f"{p} is a symbolic link to {os.readlink(p)}, which does not exist: mount its disk or create it"


def disk_error(e: OSError, where: Path | str) -> DiskError:
    """One line: what went wrong, the directory it went wrong in (for something in the way, its path), and what
    to do."""
    reason, fix = _REASONS.get(e.errno, (e.strerror or type(e).__name__, "check the directory"))
    if e.errno in IN_THE_WAY and e.filename and (dangling := dangling_link(e.filename)):
        # a link to nothing, not a file (try-out 137, F11: "a file is in the way" of runs/dang -> /nowhere)
        return DiskError(f"{dangling}, or remove the link (writing to {where}), and rerun")
    if e.errno in IN_THE_WAY and e.filename:
        return DiskError(
            f"{reason} at {e.filename} (writing to {where}); move or remove it, or {fix}, and rerun"
        )
    return DiskError(f"{reason} writing to {where}; {fix} and rerun")


@contextmanager
def writing(where: Path | str) -> Iterator[None]:
    """Raise a :class:`DiskError` naming ``where`` for an OSError (even one wrapped by torch) in the block."""
    try:
        yield
    except EkdError:
        raise
    except Exception as e:
        cause = _os_error(e)
        if cause is None or cause.errno not in _REASONS:  # not a disk problem (a missing input, a bug)
            raise
        raise disk_error(cause, where) from None


def make_dirs(path: Path | str) -> None:
    """``path.mkdir(parents=True, exist_ok=True)`` for a directory ekd writes into: a refusal of the file system is
    one :class:`DiskError` line naming ``path`` — also "no such file or directory", which ``mkdir`` says where
    nothing can be created (under ``/proc``) or a parent vanished meanwhile (try-out 52, F5: a traceback).

    Raises:
        DiskError: the directory cannot be created.
    """
    path = Path(path)
    with writing(path):
        try:
            path.mkdir(parents=True, exist_ok=True)
        except FileNotFoundError as e:
            raise DiskError(
                f"cannot create the directory {path} ({e.strerror} at {e.filename}); choose another directory"
            ) from None


class _HashingFile:
    """A write-only file that hashes what passes through it (torch.save needs only write/flush)."""

    def __init__(self, f) -> None:  # noqa: ANN001
        self._f = f
        self._h = hashlib.sha256()
        self.bytes = 0

    def write(self, data) -> int:  # noqa: ANN001
        self._h.update(data)
        self.bytes += len(data)
        return self._f.write(data)

    def flush(self) -> None:
        self._f.flush()

    @property
    def sha256(self) -> str:
        return self._h.hexdigest()


@contextmanager
def removed_if_left_empty(directory: Path | str) -> Iterator[None]:
    """Run the block; when it raises and ``directory`` did not exist before it, remove ``directory`` if the block
    left it empty — a command refused before writing anything leaves no empty directory behind (try-out 65: a
    failed ``ekd cache`` or ``ekd cache import`` left its ``teacher.cache_dir`` / ``--out``, which later runs
    then took for an unfinished cache). Only an empty directory is removed (``rmdir``)."""
    directory = Path(directory)
    existed = directory.exists()
    try:
        yield
    except BaseException:
        if not existed:
            with suppress(OSError):  # not empty, or another rank removed it first
                directory.rmdir()
        raise


@contextmanager
def atomic_file(path: Path | str) -> Iterator[_HashingFile]:
    """Write ``path`` atomically: the block writes to ``<path>.tmp``, which is fsynced and renamed onto
    ``path`` on success and removed on failure. Yields a file with ``.sha256`` and ``.bytes`` of what was written.

    Raises:
        DiskError: the file system refused the write (no space, permissions, read-only, a file in the way).
    """
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with writing(path.parent):
        try:
            with open(tmp, "wb") as raw:
                f = _HashingFile(raw)
                yield f
                raw.flush()
                os.fsync(raw.fileno())
            os.replace(tmp, path)
        except BaseException:
            with suppress(OSError):
                tmp.unlink(missing_ok=True)
            raise
        fsync_dir(path.parent)


def atomic_write_bytes(path: Path | str, data: bytes) -> str:
    """Write ``data`` to ``path`` atomically; returns its sha256 hex."""
    with atomic_file(path) as f:
        f.write(data)
    return f.sha256


def atomic_write_text(path: Path | str, text: str) -> str:
    """Write UTF-8 ``text`` to ``path`` atomically; returns its sha256 hex."""
    return atomic_write_bytes(path, text.encode("utf-8"))


@contextmanager
def atomic_dir(path: Path | str) -> Iterator[Path]:
    """Build a directory atomically: the block fills ``<path>.tmp/``, which then replaces ``path``
    (:func:`replace_dir`).

    On failure the staging directory is removed and ``path`` is left as it was; a replacement an earlier
    process was killed in is finished first (:func:`restore_dir`).
    """
    path = Path(path)
    staging = path.with_name(path.name + ".tmp")
    with writing(path.parent):
        restore_dir(path)
        shutil.rmtree(staging, ignore_errors=True)
        staging.mkdir(parents=True)
        try:
            yield staging
            _readable_as_umask_says(staging)
            fsync_dir(staging)
            replace_dir(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            restore_dir(path)
            raise
        fsync_dir(path.parent)


def replaced_name(path: Path) -> Path:
    """Where :func:`replace_dir` keeps ``path`` while replacing it: ``.<name>.replaced`` beside it, a name of
    ekd's own (review 99: a user's ``<name>.old`` backup was taken for it, put in place and deleted)."""
    return path.with_name(f".{path.name}.replaced")


def replace_dir(staging: Path, path: Path) -> None:
    """Put the finished directory ``staging`` in place of ``path`` (which may not exist): ``path`` is renamed
    aside (:func:`replaced_name`), ``staging`` to ``path``, then the one aside is removed. A kill at any instant
    leaves ``path`` whole, or the one aside whole where ``path`` is missing — what :func:`restore_dir` puts back
    (try-out 39: a checkpoint removed before its replacement was renamed in left none intact)."""
    old = replaced_name(path)
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
        path.rename(old)
    staging.rename(path)
    shutil.rmtree(old, ignore_errors=True)


def restore_dir(path: Path) -> None:
    """Finish a :func:`replace_dir` a kill interrupted: the directory renamed aside is put back where ``path``
    is missing, and removed (a leftover, perhaps half deleted) where ``path`` is there. Nothing happens without
    one."""
    old = replaced_name(path)
    if not old.is_dir():
        return
    if path.exists():
        shutil.rmtree(old, ignore_errors=True)
    else:
        old.rename(path)


def bytes_under(directory: Path | str) -> int:
    """Bytes of the files under ``directory``, its subdirectories too; a link counted as itself, not followed."""
    total = 0
    for root, _, files in os.walk(directory):
        total += sum(os.lstat(os.path.join(root, name)).st_size for name in files)
    return total


def _readable_as_umask_says(directory: Path) -> None:
    """Give the files under ``directory`` the mode a plain ``open`` would (0666 less the umask): a library that
    writes through a private temp file leaves 0600 (try-out 38: transformers' ``model.safetensors`` of every export
    was -rw------- beside a 0644 config.json, unreadable to a serving account)."""
    umask = os.umask(0)
    os.umask(umask)
    for f in directory.rglob("*"):
        if f.is_file() and not f.is_symlink():
            f.chmod(0o666 & ~umask)


NO_DIRECTORY_FSYNC = frozenset({errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EBADF})
"""``errno`` of a file system that cannot fsync a directory (some network and FUSE mounts): nothing to do there."""


def fsync_dir(directory: Path | str) -> None:
    """fsync a directory so a rename in it survives a power cut (a no-op where directories cannot be opened, or
    the file system cannot fsync one).

    Raises:
        OSError: the fsync failed otherwise (``EIO``: the rename may not be on disk; review 126, S6 — every error
            was passed over).
    """
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError as e:
        if e.errno not in NO_DIRECTORY_FSYNC:
            raise
    finally:
        os.close(fd)


def file_sha256(path: Path | str, chunk: int = 1 << 22) -> str:
    """sha256 hex of a file's bytes, read in 4 MiB blocks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


__all__ = [
    "DiskError",
    "atomic_dir",
    "atomic_file",
    "atomic_write_bytes",
    "atomic_write_text",
    "disk_error",
    "file_sha256",
    "fsync_dir",
    "writing",
]


def json_safe(value: Any) -> Any:
    """``value`` with NaN and ±inf replaced by None, recursively (dicts, lists, tuples)."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    return value


_NUMBER_LIST = re.compile(r"\[(\s+(?:-?[0-9][0-9.eE+-]*|null),?)+\s+\]")  # an indented list of numbers


def strict_json(value: Any, indent: int | None = 2) -> str:
    """``json.dumps`` of :func:`json_safe` (NaN and ±inf as ``null``): strict JSON that every parser reads,
    as ``metrics.jsonl`` writes it; readers take ``null`` back as NaN. With ``indent``, a list of numbers stays on
    one line (eval.json's per-block sums: a number per line made 5 lines per block of every set)."""
    text = json.dumps(json_safe(value), indent=indent, allow_nan=False)
    if indent is None:
        return text
    return _NUMBER_LIST.sub(
        lambda m: "[" + ", ".join(x.rstrip(",") for x in m.group(0)[1:-1].split()) + "]", text
    )
