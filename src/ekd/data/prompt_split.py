"""Rows whose prompt and response tokenize otherwise apart than joined (``data.prompt_field`` +
``data.response_field``).

ekd tokenizes the prompt and the response as two strings, so the loss boundary falls exactly between them
(:func:`ekd.data.packing.token_chunks`). Where a word straddles the boundary (prompt ``"… Answer: Ca"``,
response ``"ts sleep"``), or a tokenizer adds a prefix space to every string it starts (SentencePiece's dummy
prefix), the response's first tokens are pieces the tokenizer never produces for the whole text, and the
student learns to emit them. :class:`PromptSplits` checks the first rows of a split against the joined text's
tokenization and reports, once, how many differ and where the first one parts (TRL checks the same for its
prompt-completion rows).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ekd.words import counted

logger = logging.getLogger(__name__)

CHECKED_ROWS = 1_000  # rows of a split compared with their joined tokenization (each costs one more encode)


@dataclass
class PromptSplits:
    """Count of prompt/response rows whose ids as two strings differ from the joined text's, over the first
    ``limit`` such rows of a split, and the first one, for a one-line report.

    Attributes:
        what: The split, e.g. ``train``.
        limit: Rows to check; later rows are not encoded again.
        checked: Rows checked.
        differing: Rows whose ``ids(prompt) + ids(response) != ids(prompt + response)``.
        first: ``doc_id`` of the first differing row, and ``where`` the two tokenizations part in it.
    """

    what: str = ""
    limit: int = CHECKED_ROWS
    checked: int = 0
    differing: int = 0
    first: str = ""
    where: str = ""

    @property
    def wanted(self) -> int:
        """Rows still to check."""
        return max(0, self.limit - self.checked)

    def check(
        self,
        doc_ids: list[str],
        prompts: list[list[int]],
        texts: list[list[int]],
        joined: list[list[int]],
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        """Count the rows whose two-string ids (``prompts[i] + texts[i]``) differ from ``joined[i]``, the ids of
        their joined text. All lists are per row, of equal length (at most :attr:`wanted`)."""
        for doc_id, prompt, text, whole in zip(doc_ids, prompts, texts, joined):
            self.checked += 1
            apart = prompt + text
            if apart == whole:
                continue
            if not self.differing:
                self.first, self.where = doc_id, _parting(prompt, text, whole, tokenizer)
            self.differing += 1

    def report(self) -> None:
        """Log one warning when any checked row differs."""
        if not self.differing:
            return
        split = f"{self.what}: " if self.what else ""
        logger.warning(
            "data.prompt_field/response_field: %s%s of %s%s tokenize otherwise as prompt + response "
            "than as their joined text (first: %s, %s); the student is trained on pieces the tokenizer never "
            "makes for the whole text — end each prompt where the tokenizer splits anyway (for byte-level BPEs "
            "before a word's leading space: prompt 'Answer:', response ' Cats sleep'; README, data.source)",
            split,
            self.differing,
            "the first " if self.checked >= self.limit else "",
            counted(self.checked, "prompt/response row"),
            self.first or "a row",
            self.where,
        )


def _parting(prompt: list[int], text: list[int], whole: list[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """Where two tokenizations of one row part, as a user reads it: the pieces on each side from the first
    differing token on, e.g. ``apart: 'Ca' | 'ts' …; joined: 'Cats' …``."""
    apart = prompt + text
    k = next((i for i, (a, b) in enumerate(zip(apart, whole)) if a != b), min(len(apart), len(whole)))
    k = min(k, len(prompt))  # show the boundary's pieces when the difference starts at or after it
    start = max(0, k - 1)

    def pieces(ids: list[int], cut: int | None) -> str:
        shown = []
        for i, t in enumerate(ids[start : start + 4], start):
            if cut is not None and i == cut:
                shown.append("|")
            shown.append(repr(tokenizer.decode([t])))
        return " ".join(shown) + (" …" if len(ids) > start + 4 else "")

    return f"as two strings {pieces(apart, len(prompt))}; joined {pieces(whole, None)}"
