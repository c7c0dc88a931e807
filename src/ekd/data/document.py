"""The ``Document``: the unit of data before tokenization, below every source that makes one."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Document:
    """One training or eval document.

    Attributes:
        text: The text that gets loss. For plain documents the whole document; for prompt/response rows
            the response.
        doc_id: Stable identifier relative to its source: a file's relative path (``a/b.txt``), a chunk of
            a file (``notes.txt#3``), a row (``data.jsonl:12`` with the 1-based line, ``data.parquet:0``
            with the 0-based row), or ``module/path.py::Class.method`` for docstrings.
        prompt: Text before ``text`` whose tokens get no loss (empty for plain documents). The full
            document the model reads is ``prompt + text``.
    """

    text: str
    doc_id: str = ""
    prompt: str = ""

    @property
    def full_text(self) -> str:
        """``prompt + text``: what the model reads."""
        return self.prompt + self.text
