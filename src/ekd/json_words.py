"""A parsed JSON (or YAML) value in words, for the one-line refusals of a record ekd wrote and reads back:
``'held' metric 'ece' is a JSON list ([1, 2]), not a number``."""

from __future__ import annotations

import json
from typing import Any


def value_kind(value: Any) -> str:
    """The kind of a parsed JSON or YAML value, in words: 'object', 'list', 'string', 'number', 'boolean',
    'null' (another YAML type: its Python name)."""
    if isinstance(value, bool):
        return "boolean"
    kinds = {dict: "object", list: "list", str: "string", int: "number", float: "number", type(None): "null"}
    return next((w for t, w in kinds.items() if isinstance(value, t)), type(value).__name__)


def is_count(value: Any) -> bool:
    """Whether a parsed JSON value is a whole number ≥ 0: ``78``, or ``78.0`` as a hand edit may write it
    (try-out 129, F9); never a boolean."""
    whole = isinstance(value, int) or (isinstance(value, float) and value.is_integer())
    return whole and not isinstance(value, bool) and value >= 0


def shown(value: Any, limit: int = 40) -> str:
    """``value`` as JSON, cut at ``limit`` characters (an ellipsis where cut)."""
    text = json.dumps(value, default=str)
    return text if len(text) <= limit else text[: limit - 1] + "…"
