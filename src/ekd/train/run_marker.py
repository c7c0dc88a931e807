"""The fields of ``RUN/ekd-run.json`` — what a run records of itself as it starts, resumes and finishes — and the
check that a record read back holds each as ekd writes it (review 126, try-out 127 F3: a field of another type was
a traceback in ``ekd compare``, or a figure: ``"tokenizer_tokens": true`` priced a kd run at 2 B/token)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from ekd.json_words import is_count, shown, value_kind


def _text(value: Any) -> bool:
    return isinstance(value, str)


def _positive(value: Any) -> bool:
    return is_count(value) and value > 0


def _amount(value: Any) -> bool:
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(value)
        and value >= 0
    )


def _mapping(value: Any) -> bool:
    return isinstance(value, dict)


def _texts(value: Any) -> bool:
    return isinstance(value, dict) and all(isinstance(v, str) for v in value.values())


def _mappings(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, dict) for v in value)


MARKER_FIELDS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "format": (_text, "a text"),
    "version": (is_count, "a whole number ≥ 0"),
    "state": (_text, "a text"),
    "run_id": (_text, "a text"),
    "data_fingerprint": (_text, "a sha256 text"),
    "train_blocks": (is_count, "a whole number ≥ 0"),
    "text_split": (_text, "a text"),
    "held_out_documents": (_text, "a sha256 text"),
    "eval_blocks": (_texts, "an object of sha256 texts"),
    "student_base": (_mapping, "an object"),
    "student_weights": (_text, "a sha256 text"),
    "teacher_weights": (_text, "a sha256 text"),
    "teacher_commit": (_text, "a text"),
    "arithmetic": (_texts, "an object of texts"),
    "tokenizer_sha256": (_text, "a sha256 text"),
    "tokenizer_class": (_text, "a text"),
    "cache_teacher": (_text, "a text"),
    "cache_bytes_per_token": (_amount, "a number ≥ 0"),
    "tokenizer_tokens": (_positive, "a whole number > 0"),
    "head_rows": (_positive, "a whole number > 0"),
    "global_micro_batch": (_positive, "a whole number > 0"),
    "ranks": (_positive, "a whole number > 0"),
    "segments": (_mappings, "a list of objects"),
    "document_boundary": (_mapping, "an object"),
    "kd_positions": (_amount, "a number ≥ 0"),
    "rs_unique_ids": (_amount, "a number ≥ 0"),
    "valid_positions": (_amount, "a number ≥ 0"),
}
"""ekd-run.json field → (its check, what it must be). A field not listed (a later ekd's) is read past; a listed one
may be absent (an older ekd's record) or null (not known), never of another type."""


def marker_problem(marker: dict[str, Any]) -> str:
    """``"field 'segments' is a JSON string ("x"), not a list of objects"`` for the first field of ``marker`` that is
    not what ekd writes; "" when every field is. A count written as a whole float (``78.0``) is made the int ekd
    writes, in ``marker``."""
    for key, (ok, what) in MARKER_FIELDS.items():
        value = marker.get(key)
        if ok in (is_count, _positive) and isinstance(value, float) and value.is_integer() and value >= 0:
            marker[key] = int(value)  # 78.0 as a hand edit wrote it: read as the count ekd writes
            continue
        if value is not None and not ok(value):
            return f"field '{key}' is a JSON {value_kind(value)} ({shown(value)}), not {what}"
    return ""
