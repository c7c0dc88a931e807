"""Reading a JSON record ekd wrote (``ekd-run.json``, ``eval.json``, a LoRA export's base note, ...): one reader.

A record that is absent is ``None``: each caller's documented fallback (an older ekd's run, a run not evaluated
yet). A record that is there but cannot be read is never taken for absent (review 126: a second, tolerant parser
read a damaged ``ekd-run.json`` as none, and every check that needed it was off): one line names the file and what
is wrong with it — something else in its place, its permissions, bytes that are not UTF-8 JSON (where the parser
stopped) — and the caller's way out. ekd writes UTF-8 whatever the locale, so it reads UTF-8 whatever the locale;
a byte-order mark an editor wrote is read past (try-out 129, F8).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from ekd.errors import EkdError
from ekd.io import dangling_link


def record_bytes(
    path: Path | str, fix: str, error: type[EkdError] = EkdError, not_a_file: str | None = None
) -> bytes | None:
    """The bytes of ``path``; None when nothing is there.

    Raises:
        error: something other than a file is in its place (try-out 127, F5: a directory was read as no record;
            named with ``not_a_file``, else ``fix``), or it cannot be read (try-out 127, F6: its permissions, not
            its content).
    """
    path = Path(path)
    # a link to nothing is never read as absent: every check the record carries would be off (try-out 141, F6)
    if dangling := dangling_link(path):
        raise error(f"{dangling}; {not_a_file or fix}")
    if not path.exists():
        return None
    if not path.is_file():
        raise error(f"{path} is not a file; {not_a_file or fix}")
    try:
        return path.read_bytes()
    except OSError as e:
        raise error(f"{path} cannot be read ({e.strerror}); check its permissions") from None


def record_text(raw: bytes, path: Path | str, fix: str, error: type[EkdError] = EkdError) -> str:
    """``raw`` (a record's bytes) as text: UTF-8, a leading byte-order mark read past.

    Raises:
        error: the bytes are not UTF-8 (where they stop being so, and ``fix``).
    """
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:  # the line too: a JSONL record's fix names a line (try-out 139, F6)
        line = raw[: e.start].count(b"\n") + 1
        raise error(f"{path} is not UTF-8 text (line {line}, byte {e.start}); {fix}") from None


def read_json_record(
    path: Path | str, fix: str, error: type[EkdError] = EkdError, not_a_file: str | None = None
) -> Any | None:
    """The JSON value in ``path`` (any JSON type: the caller checks its shape); None when there is no such file.

    Args:
        fix: the way out a refusal names (restore the file, rebuild it, leave the run out, ...).
        error: the class of the refusal (the caller's own: ``RunDirError``, ``ModelError``, ...).
        not_a_file: the way out named when something other than a file is in its place (default ``fix``).

    Raises:
        error: one line — something other than a file is in its place, it cannot be read, or it is not UTF-8
            JSON (the parser's words, with the line and column where it stopped).
    """
    raw = record_bytes(path, fix, error, not_a_file)
    if raw is None:
        return None
    try:
        return json.loads(record_text(raw, path, fix, error))
    except json.JSONDecodeError as e:
        raise error(f"{path} is not valid JSON ({str(e).splitlines()[0]}); {fix}") from None


__all__ = ["read_json_record", "record_bytes", "record_text"]


SEAL = "manifest_sha256"
"""The field of a manifest that seals it: :func:`seal_sha256` of the rest. A teacher cache's and a token store's
manifest carry one, so a manifest edited since it was written is told from one as written."""


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and a fixed indentation (and a final newline): equal content gives equal bytes."""
    return json.dumps(value, indent=2, sort_keys=True) + "\n"


def seal_sha256(record: dict) -> str:
    """sha256 hex of :func:`canonical_json` of ``record`` without its :data:`SEAL` field."""
    import hashlib

    body = {k: v for k, v in record.items() if k != SEAL}
    return hashlib.sha256(canonical_json(body).encode("utf-8")).hexdigest()
