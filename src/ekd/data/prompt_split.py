"""Prompt/response rows (``data.prompt_field`` + ``data.response_field``) that split a word between the prompt
and the response.

ekd tokenizes the prompt and the response as two strings, so the loss boundary falls exactly between them
(:func:`ekd.data.packing.token_chunks`). Where a word straddles the boundary (prompt ``"… Answer: Ca"``,
response ``"ts sleep"``), the response's first tokens are pieces the tokenizer never produces for the whole text
(``' Cats'``), and the student learns to emit them. :class:`PromptBoundaryCheck` tokenizes the first rows' joined
text with character offsets and counts those where a token of it spans the boundary — reporting, once per split,
how many and where the first one parts (TRL checks its prompt-completion rows likewise). Offsets make the check
hold for every fast tokenizer: a SentencePiece tokenizer that starts every string with a prefix space tokenizes
the two strings otherwise than their concatenation in every row, though no word is split (review 106).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from transformers import PreTrainedTokenizerBase

from ekd.words import counted

logger = logging.getLogger(__name__)

CHECKED_ROWS = 1_000  # rows of a split checked (each costs one more encode)
SHOWN = 12  # pieces shown at most where a row parts


@dataclass
class PromptBoundaryCheck:
    """Count of prompt/response rows that split a word between prompt and response (a token of their joined text
    spans the prompt's end), over the first ``limit`` such rows of a split, and the first one, for a one-line
    report.

    Attributes:
        split: The split, e.g. ``train``, for the line.
        limit: Rows to check; later rows are not checked.
        checked: Rows checked.
        differing: Rows whose joined text has a token across the prompt's end.
        first: ``doc_id`` of the first differing row, and ``where`` its two tokenizations part.
    """

    split: str = ""
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
        rows: list[tuple[str, str, str]],
        prompts: list[list[int]],
        responses: list[list[int]],
        tokenizer: PreTrainedTokenizerBase,
    ) -> None:
        """Count the rows whose joined text has a token spanning the prompt's end. ``rows``: (doc_id, prompt,
        response) per row; ``prompts``, ``responses``: their ids as two strings (for the line). At most
        :attr:`wanted` rows; a slow tokenizer (no character offsets) checks none."""
        if not getattr(tokenizer, "is_fast", False):
            return
        joined = tokenizer(
            [p + r for _, p, r in rows], add_special_tokens=False, return_offsets_mapping=True, verbose=False
        )
        word_start = prefixes_a_space(tokenizer)
        for (doc_id, prompt, response), ids, offsets, p_ids, r_ids in zip(
            rows, joined["input_ids"], joined["offset_mapping"], prompts, responses
        ):
            self.checked += 1
            if not splits_a_word(prompt + response, len(prompt), offsets, word_start):
                continue
            if not self.differing:
                self.first, self.where = doc_id, _parting(p_ids + r_ids, len(p_ids), ids, tokenizer)
            self.differing += 1

    def report(self) -> None:
        """Log one warning when any checked row differs."""
        if not self.differing:
            return
        logger.warning(
            "data.prompt_field/response_field: %s%s of %s%s split a token of their joined text between prompt "
            "and response (first: %s, %s); the student is trained on pieces the tokenizer never makes for that "
            "text — end each prompt where the tokenizer splits anyway (for byte-level BPEs before a word's "
            "leading space: prompt 'Answer:', response ' Cats sleep'; README, data.source)",
            f"{self.split}: " if self.split else "",
            self.differing,
            "the first " if self.checked >= self.limit else "",
            counted(self.checked, "prompt/response row"),
            self.first or "a row",
            self.where,
        )


def splits_a_word(text: str, cut: int, offsets: list[tuple[int, int]], word_start: bool = False) -> bool:
    """Whether a token of ``text`` (its character ``offsets``) holds text on both sides of character ``cut``: a
    word split there. A token that only begins with the whitespace before the cut (a SentencePiece '▁runs' after
    a prompt ending in a space; try-out 48) splits nothing. ``word_start`` (a tokenizer that starts every string
    with a prefix space, :func:`prefixes_a_space`): only a token that begins a word counts ('▁river' across
    'riv' | 'er'), since such a tokenizer trains prompt 'that' + response 'alpha' as 'that alpha' — a piece of the
    run-together 'thatalpha' across the cut is no word (try-out 49)."""
    for start, end in offsets:
        if not (start < cut < end and text[start:cut].strip() and text[cut:end].strip()):
            continue
        if not word_start or start == 0 or text[start - 1].isspace() or text[start].isspace():
            return True
    return False


def prefixes_a_space(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether ``tokenizer`` starts every string it encodes with a word mark (SentencePiece's '▁' prefix space):
    then prompt and response, tokenized apart, are always two words."""
    ids = tokenizer("a", add_special_tokens=False)["input_ids"]
    return bool(ids) and str(tokenizer.convert_ids_to_tokens(ids[0]) or "").startswith("▁")


def _parting(apart: list[int], boundary: int, whole: list[int], tokenizer: PreTrainedTokenizerBase) -> str:
    """Where a row's two tokenizations part, as a user reads it: the pieces from just before the first difference
    to past the prompt's end (``|``), e.g. ``as two strings ':' ' Ca' | 'ts' …; joined ':' ' Cats' …``."""
    k = next((i for i, (a, b) in enumerate(zip(apart, whole)) if a != b), min(len(apart), len(whole)))
    start = max(0, min(k, boundary) - 1)
    end = min(max(start + 4, boundary + 2), start + SHOWN)

    def pieces(ids: list[int], cut: int | None) -> str:
        shown = []
        for i, t in enumerate(ids[start:end], start):
            if i == cut:
                shown.append("|")
            shown.append(repr(_piece(t, tokenizer)))
        return " ".join(shown) + (" …" if len(ids) > end else "")

    return f"as two strings {pieces(apart, boundary)}; joined {pieces(whole, None)}"


def _piece(token_id: int, tokenizer: PreTrainedTokenizerBase) -> str:
    """A token as text, its word boundary kept: SentencePiece's '▁cat' decodes alone to 'cat' (the prefix space
    dropped), shown ' cat' as a byte-level BPE's 'Ġcat' is (try-out 48: 'dog' 'cat' showed no boundary)."""
    text = tokenizer.decode([token_id])
    marked = str(tokenizer.convert_ids_to_tokens(token_id) or "")
    return " " + text if marked.startswith("▁") and not text.startswith(" ") else text
