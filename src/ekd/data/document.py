"""The ``Document``: the unit of data before tokenization, below every source that makes one."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ekd.data.chat import Message


@dataclass(frozen=True)
class Document:
    """One training or eval document.

    Attributes:
        text: The text that gets loss. For plain documents the whole document; for prompt/response rows
            the response; empty for chat rows (their loss is on assistant tokens, found when rendering).
        doc_id: Stable identifier relative to its source: a file's relative path (``a/b.txt``), a chunk of
            a file (``notes.txt#3``), a row (``data.jsonl:12`` with the 1-based line, ``data.parquet:0``
            with the 0-based row), or ``module/path.py::Class.method`` for docstrings.
        prompt: Text before ``text`` whose tokens get no loss (empty for plain documents). The full
            document the model reads is ``prompt + text``.
        messages: A chat row (``data.format=chat``): its conversation (:class:`ekd.data.chat.Message` each, in
            order), rendered by :mod:`ekd.data.chat` with the chat template; None for every other document.
        tools: A chat row's tool definitions (``data.tools_field``), which the template renders (usually into
            the system turn); None when the row has none.
    """

    text: str
    doc_id: str = ""
    prompt: str = ""
    messages: tuple[Message, ...] | None = None
    tools: tuple[dict[str, Any], ...] | None = None

    @property
    def full_text(self) -> str:
        """What the model reads: ``prompt + text``; for a chat row its contents joined by blank lines
        (the template's markup is added when rendering)."""
        if self.messages is not None:
            contents = (
                m.content
                if m.content is None or isinstance(m.content, str)
                else json.dumps(m.content, default=str)
                for m in self.messages
            )
            return "\n\n".join(c or "" for c in contents)
        return self.prompt + self.text
