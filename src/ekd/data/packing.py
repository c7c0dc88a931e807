"""Tokenize documents and pack them into fixed-length blocks with a per-token target mask.

Stream layout: every document contributes ``[BOS] · prompt tokens · text tokens · [EOS]`` (BOS and EOS as
the :class:`~ekd.data.boundary.DocumentBoundary` says; by default the tokenizer's EOS only), and the
documents are concatenated in order. ``target_mask[j]`` says whether token ``j`` may be predicted from the
tokens before it: False for BOS, for prompt tokens and for the first token of a document without BOS (it must
not be predicted from the previous document); True for the other text tokens and for the EOS that ends the
document (ending is part of the document). ``document_starts`` marks the first token of every document and
``boundary_mask`` the end-of-document tokens that packing added. The stream is cut into non-overlapping
blocks of T tokens; the ragged tail is dropped, unless it is the only block, in which case it is padded and
the padding (a document of its own, after every real token) is masked out. The shift into labels happens
once, later, in :func:`ekd.data.collate.collate`.

A chat row (``Document.messages``) contributes its rendering by the tokenizer's chat template
(:class:`~ekd.data.chat.ChatRenderer`) with no BOS/EOS added, and ``target_mask`` is its assistant mask (the
first token excepted); it is a document like any other for ``document_starts``, isolation and block cuts. Rows
the renderer rejects are skipped and reported in one warning line.

``document_attention``: 'isolated' (default) makes each document attend only to itself — the collator
gives position ids that restart at every document start (and at every block start), from which
transformers builds block-diagonal causal attention; 'packed' lets every token see the whole block before
it (the behaviour before isolation).
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
from transformers import PreTrainedTokenizerBase

from ekd.config import ConfigError
from ekd.data.boundary import DocumentBoundary
from ekd.data.chat import ChatRenderer, RejectedRow, SkippedRows
from ekd.data.document import Document
from ekd.data.prompt_split import PromptBoundaryCheck
from ekd.words import counted

logger = logging.getLogger(__name__)


@dataclass
class PackedBlocks:
    """A packed token set.

    The (N, T) fields are tensors, or for a set read from a token store (:mod:`ekd.data.store`) read-only
    columns that load only the rows they are indexed with (``blocks.input_ids[rows]`` is a tensor either way).

    Attributes:
        input_ids: (N, T) long token ids.
        target_mask: (N, T) bool; True where the token may be a target (predicted from the previous
            position of the same document).
        sample_ids: (N,) long; the block's index in this set (``arange(N)``), stable for a given set and
            used to address per-sample state such as teacher-cache rows.
        document_starts: (N, T) bool; True at the first token of every document (BOS, or its first token),
            and at the padding of a lone partial block. None = each block is one document.
        boundary_mask: (N, T) bool; True at the end-of-document tokens packing added (EOS). None = none.
        document_attention: 'isolated' (each document attends only to itself) or 'packed'.
        boundary: The document boundary used, or None (blocks built by hand).
        documents: :attr:`num_documents` when the blocks are a sample of a longer stream, whose documents
            the blocks alone cannot tell apart (:func:`ekd.data.eval_sample.spread_blocks`); None = count them.
    """

    input_ids: torch.Tensor
    target_mask: torch.Tensor
    sample_ids: torch.Tensor
    document_starts: torch.Tensor | None = None
    boundary_mask: torch.Tensor | None = None
    document_attention: str = "isolated"
    boundary: DocumentBoundary | None = None
    documents: int | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    @property
    def block_length(self) -> int:
        """T, tokens per block."""
        return int(self.input_ids.shape[1])

    @property
    def num_targets(self) -> int:
        """Number of positions that carry a label after the shift (targets not in column 0)."""
        return sum(int(self.target_mask[rows][:, 1:].sum()) for rows in self._row_chunks())

    def rows_with_targets(self) -> torch.Tensor:
        """(n,) long, ascending: the indices of the blocks with at least one target after the shift. A block
        without one (a long prompt, tool definitions or template markup cut off from its answer) trains nothing:
        its step would only move the weights by the optimizer's momentum and weight decay."""
        kept = [
            rows.start + torch.nonzero(self.target_mask[rows][:, 1:].any(dim=1)).flatten()
            for rows in self._row_chunks()
        ]
        return torch.cat(kept) if kept else torch.zeros(0, dtype=torch.long)

    @property
    def num_documents(self) -> int:
        """Number of documents with at least one target (of :attr:`num_targets`) in the blocks: what an eval
        set's figures are averaged over (a document split across blocks counts once; padding is none)."""
        if self.documents is not None:
            return self.documents
        count, last = 0, -1  # last: the stream-wide index of the previous chunk's last counted document
        offset = 0
        for rows in self._row_chunks():
            mask = self.target_mask[rows].clone()
            mask[:, 0] = False  # column 0 carries no label after the shift
            if self.document_starts is None:  # each block is one document
                count += int(mask.any(dim=1).sum())
                continue
            starts = self.document_starts[rows].reshape(-1).long()  # (n*T,)
            segment = offset + torch.cumsum(starts, 0)  # (n*T,) stream-wide document index of each token
            offset = int(segment[-1])
            scored = torch.unique(segment[mask.reshape(-1)])  # sorted document indices with a target
            if scored.numel():
                count += scored.numel() - int(int(scored[0]) == last)
                last = int(scored[-1])
        return count

    def fingerprint(self) -> str:
        """sha256 hex of the shape, ``input_ids``, ``target_mask`` and ``document_starts``; equal sets give
        equal fingerprints (read in row chunks, so a memory-mapped set is never loaded whole)."""
        h = hashlib.sha256()
        h.update(repr(tuple(self.input_ids.shape)).encode())
        for rows in self._row_chunks():
            h.update(self.input_ids[rows].to(torch.int64).contiguous().numpy().tobytes())
        for rows in self._row_chunks():
            h.update(self.target_mask[rows].to(torch.uint8).contiguous().numpy().tobytes())
        if self.document_starts is not None:
            h.update(b"starts")
            for rows in self._row_chunks():
                h.update(self.document_starts[rows].to(torch.uint8).contiguous().numpy().tobytes())
        return h.hexdigest()

    def _row_chunks(self, tokens: int = 1 << 22) -> Iterator[slice]:
        """Slices of whole blocks holding about ``tokens`` tokens each."""
        step = max(1, tokens // max(1, self.block_length))
        for start in range(0, len(self), step):
            yield slice(start, min(start + step, len(self)))

    def select(self, indices: torch.Tensor | Sequence[int]) -> PackedBlocks:
        """The blocks at ``indices`` as a new set, renumbered so that ``sample_ids == arange(len(indices))``."""
        idx = torch.as_tensor(indices, dtype=torch.long)
        return PackedBlocks(
            input_ids=self.input_ids[idx],
            target_mask=self.target_mask[idx],
            sample_ids=torch.arange(idx.numel(), dtype=torch.long),
            document_starts=None if self.document_starts is None else self.document_starts[idx],
            boundary_mask=None if self.boundary_mask is None else self.boundary_mask[idx],
            document_attention=self.document_attention,
            boundary=self.boundary,
        )


def pack_documents(
    docs: Sequence[Document],
    tokenizer: PreTrainedTokenizerBase,
    block_length: int,
    eos_id: int | None = None,
    allow_partial_block: bool = True,
    max_blocks: int | None = None,
    boundary: DocumentBoundary | None = None,
    document_attention: str = "isolated",
    split: str = "",
    max_document_chars: int = 0,
) -> PackedBlocks:
    """Tokenize documents (batched, no special tokens added by the tokenizer) and pack them into blocks.

    Args:
        docs: Documents in order; ``doc.prompt`` and ``doc.text`` are tokenized separately so the loss
            boundary falls exactly between them.
        tokenizer: Any Hugging Face tokenizer.
        block_length: T, tokens per block (≥ 2).
        eos_id: End-of-document id when no ``boundary`` is given; default ``tokenizer.eos_token_id``.
        allow_partial_block: When the whole stream is shorter than T, return it as one EOS-padded block
            (eval sets). When False, that is an error (training needs at least one full block).
        max_blocks: Keep only the first this many blocks (``None`` or 0 = all); documents past them are
            not tokenized at all.
        boundary: BOS/EOS framing of every document (:func:`ekd.data.boundary.resolve_boundary`); default
            EOS after every document (``data.separator=eos``).
        document_attention: 'isolated' or 'packed' (``data.document_attention``), kept with the blocks.
        split: The split's name, for the log line (:func:`packed_line`).
        max_document_chars: ``data.max_document_chars`` (0 = no limit; :func:`check_document_length`).

    Returns:
        PackedBlocks with ``input_ids``, ``target_mask``, ``document_starts``, ``boundary_mask`` (N, T) and
        ``sample_ids`` (N,).

    Raises:
        ConfigError: ``block_length < 2``; no tokens; fewer than T tokens with ``allow_partial_block=False``;
            no EOS id without a boundary; an unknown ``document_attention``; a document over
            ``max_document_chars``; chat rows and a tokenizer without
            a chat template, or every chat row skipped (see :class:`~ekd.data.chat.ChatRenderer`).
    """
    if block_length < 2:
        raise ConfigError(
            f"data.block_length must be ≥ 2 (a block needs an input and a target), got {block_length}"
        )
    if document_attention not in ("isolated", "packed"):
        raise ConfigError(f"data.document_attention must be isolated or packed, got '{document_attention}'")
    if boundary is None:
        eos_id = tokenizer.eos_token_id if eos_id is None else eos_id
        if eos_id is None:
            raise ConfigError("the tokenizer has no eos_token; set one (it separates packed documents)")
        boundary = DocumentBoundary("eos", None, int(eos_id), int(eos_id))
    max_tokens = max_blocks * block_length if max_blocks else None
    # each (S,)
    ids, mask, starts, ends = _token_stream(
        docs, tokenizer, boundary, max_tokens, split=split, max_document_chars=max_document_chars
    )
    total = ids.numel()
    n_blocks = block_count(total, block_length, max_blocks, allow_partial_block, split)
    real = min(total, n_blocks * block_length) if n_blocks else total  # real tokens in the blocks
    documents = int(starts[:real].sum())  # documents that start in the blocks (before any padding)
    if n_blocks == 0:
        pad = block_length - total
        ids = torch.cat([ids, torch.full((pad,), boundary.pad_id, dtype=torch.long)])
        mask = torch.cat([mask, torch.zeros(pad, dtype=torch.bool)])
        pad_starts = torch.zeros(pad, dtype=torch.bool)
        pad_starts[0] = True  # the padding is a document of its own: it never joins the last real one
        starts = torch.cat([starts, pad_starts])
        ends = torch.cat([ends, torch.zeros(pad, dtype=torch.bool)])
        n_blocks = 1
        logger.info("packed %s into one block padded with %s", counted(total, "token"), counted(pad, "token"))
    keep = n_blocks * block_length
    blocks = PackedBlocks(
        input_ids=ids[:keep].view(n_blocks, block_length),  # (N, T)
        target_mask=mask[:keep].view(n_blocks, block_length),  # (N, T)
        sample_ids=torch.arange(n_blocks, dtype=torch.long),  # (N,)
        document_starts=starts[:keep].view(n_blocks, block_length),  # (N, T)
        boundary_mask=ends[:keep].view(n_blocks, block_length),  # (N, T)
        document_attention=document_attention,
        boundary=boundary,
    )
    logger.info("%s", packed_line(split, documents, real, n_blocks, block_length, blocks.num_targets))
    tail = dropped_tail(total, n_blocks, block_length, max_blocks)
    say_dropped_tail(
        split, tail, int(mask[keep : keep + tail].sum()), block_length, eval_set=allow_partial_block
    )
    return blocks


def dropped_tail(tokens: int, blocks: int, block_length: int, max_blocks: int | None) -> int:
    """Tokens of a split's stream (``tokens`` long) after its last full block (``blocks`` of ``block_length``)
    that no block holds for want of data: 0 when the blocks hold the whole stream (a lone partial block is
    padded), or when the cap ``max_blocks`` stopped the split (``data.max_tokens``, an eval set's pool: the
    rest is left out on purpose, and in memory never tokenized)."""
    if max_blocks and blocks >= max_blocks:
        return 0
    return max(0, tokens - blocks * block_length)


def say_dropped_tail(split: str, tokens: int, targets: int, block_length: int, eval_set: bool) -> None:
    """Log, when ``tokens`` > 0 (:func:`dropped_tail`), one info line on the ``tokens`` after a split's last full
    block of ``block_length``, ``targets`` of them targets, which no block holds: an eval set does not score them
    (try-out 21: a user's 6-document set scored 5, its last document's turn in the tail, said only at debug
    level); training never trains them, in any epoch, as documents are packed once in order (try-out 40: 17 of a
    small chat set's 79 assistant targets). Both data paths (in memory, token store) log it."""
    if tokens <= 0:
        return
    verb = "scored" if eval_set else "trained, in any epoch"
    logger.info(
        "%s: its last %s (%s; after its last full block of %d) %s not %s; a shorter data.block_length %s more "
        "of them",
        split or ("eval set" if eval_set else "train"),
        counted(tokens, "token"),
        counted(targets, "target"),
        block_length,
        "is" if tokens == 1 else "are",
        verb,
        "scores" if eval_set else "trains",
    )


def packed_line(split: str, documents: int, tokens: int, blocks: int, block_length: int, targets: int) -> str:
    """The line both data paths (in memory, token store) log per packed split:
    ``train: packed D documents, S tokens into N blocks of T (K targets)``.

    Args:
        split: The split's name ('' when not known: no prefix).
        documents: D, the documents whose first token lies in the N blocks — not those read or tokenized
            past the last block, nor the ones that gave no tokens (empty, or a chat row the template rejects).
        tokens: S, the real tokens in the blocks (a lone partial block's padding not counted).
        blocks: N. block_length: T. targets: K, as :attr:`PackedBlocks.num_targets`.
    """
    prefix = f"{split}: " if split else ""
    return (
        f"{prefix}packed {counted(documents, 'document')}, {counted(tokens, 'token')} into "
        f"{counted(blocks, 'block')} of {block_length} ({counted(targets, 'target')})"
    )


def token_chunks(
    docs: Iterable[Document],
    tokenizer: PreTrainedTokenizerBase,
    boundary: DocumentBoundary,
    chunk: int = 32,
    skipped: SkippedRows | None = None,
    prompt_checks: PromptBoundaryCheck | None = None,
    max_document_chars: int = 0,
    split: str = "",
) -> Iterator[TokenChunk]:
    """The packed stream of ``docs`` in pieces: one :class:`TokenChunk` per ``chunk`` documents.

    Each document is ``[BOS] · prompt · text · [EOS]`` (a chat row: its template's rendering, targets on the
    assistant tokens). Documents are tokenized in batches of ``chunk`` (the batching never changes the ids).
    A document with no tokens at all is skipped, and so is a chat row the renderer rejects (counted, one
    warning line once ``docs`` is exhausted; with ``skipped`` given, they are counted there and the caller
    reports them with :func:`settle_skipped`, as the token store does over its many calls per split). The first
    prompt/response rows are checked for a word split between the two
    (:class:`~ekd.data.prompt_split.PromptBoundaryCheck`, reported likewise: here, or by the caller that gives
    ``prompt_checks``).
    Concatenating the chunks gives the stream :func:`pack_documents` cuts into blocks; the token store
    (:mod:`ekd.data.store`) writes the same chunks to disk.

    A document longer than ``max_document_chars`` characters is refused only when the stream reaches it: the
    documents of its batch before it come out as a chunk first, so a consumer that stops once its budget is full
    (``data.max_tokens``, an eval pool) never meets the refusal of a document past it, however the documents
    are batched (review of session 31: a document past the budget was refused when it shared a batch of 32
    with the one that filled it, and memory and the token store batch differently).

    Raises:
        ConfigError: every chat row was rejected (at the end of ``docs``, without ``skipped``); a document
            longer than ``max_document_chars`` characters (:func:`check_document_length`).
    """
    bos = [] if boundary.bos_id is None else [boundary.bos_id]
    eos = [] if boundary.eos_id is None else [boundary.eos_id]
    chat: ChatRenderer | None = None  # built at the first chat row
    own = skipped is None
    skipped = SkippedRows("data.format=chat: rows") if skipped is None else skipped
    own_prompt_checks = prompt_checks is None
    prompt_checks = PromptBoundaryCheck() if prompt_checks is None else prompt_checks
    skipped.tokenizer, skipped.split = type(tokenizer).__name__, split
    total = 0
    for batch in _batched(docs, chunk):
        # the first document over the length limit: the chunk stops before it, the refusal comes after
        too_long = (
            i for i, d in enumerate(batch) if max_document_chars and document_chars(d) > max_document_chars
        )
        at = next(too_long, None)
        refused, batch = (None, batch) if at is None else (batch[at], batch[:at])
        if refused is not None and not batch:
            check_document_length(refused, max_document_chars, split)  # raises
        if chat is None and any(d.messages is not None for d in batch):
            chat = ChatRenderer(tokenizer)
        ids: list[int] = []
        mask: list[bool] = []
        starts: list[bool] = []
        ends: list[bool] = []
        used = 0
        for doc, tokens, targets, framed in _tokenized(batch, tokenizer, chat, skipped, prompt_checks):
            skipped.documents += 1
            if not tokens:  # text the tokenizer reads none of (or only whitespace, kept by data.min_chars=0)
                skipped.tokenless += 1
                skipped.tokenless_first = skipped.tokenless_first or doc.doc_id
                continue
            head, tail = (bos, eos) if framed else ([], [])
            doc = head + tokens + tail
            doc_mask = [False] * len(head) + targets + [True] * len(tail)
            doc_mask[0] = False  # the first token of a document is never predicted from the previous one
            ids.extend(doc)
            mask.extend(doc_mask)
            starts.extend([True] + [False] * (len(doc) - 1))
            ends.extend([False] * (len(doc) - len(tail)) + [True] * len(tail))
            used += 1
        total += len(ids)
        yield TokenChunk(
            torch.tensor(ids, dtype=torch.long),
            torch.tensor(mask, dtype=torch.bool),
            torch.tensor(starts, dtype=torch.bool),
            torch.tensor(ends, dtype=torch.bool),
            used,
        )
        if refused is not None:  # the consumer wants more of the stream: the long document is next
            check_document_length(refused, max_document_chars, split)  # raises
    if own:
        settle_skipped(skipped, total)
    if own_prompt_checks:
        prompt_checks.report()


def settle_skipped(skipped: SkippedRows, tokens: int) -> None:
    """Report the chat rows ``skipped`` counted (one warning line), or, when every row was skipped and no token
    came out, raise the one error that says so (not the warning and then the same words again); likewise the
    documents the tokenizer gave no token for (try-out 147, F1: every document of a tokenizer that read none of
    the text was dropped unsaid, and the run refused "0 tokens, fewer than one block: lower data.block_length").

    Raises:
        ConfigError: every chat row was rejected; no document gave a token.
    """
    if skipped.count and skipped.count == skipped.seen and not tokens:
        raise ConfigError(f"{skipped.line()}: no chat row is left; check the rows and the chat template")
    skipped.report()
    if not skipped.tokenless:
        return
    tokenizer = f"the run's tokenizer ({skipped.tokenizer})" if skipped.tokenizer else "the run's tokenizer"
    split = f"{skipped.split}: " if skipped.split else ""
    if not tokens:
        raise ConfigError(
            f"{split}{tokenizer} gives no token for any of its {counted(skipped.documents, 'document')} (first: "
            f"{skipped.tokenless_first}): it reads none of this text; check that model.tokenizer is the models' "
            "own (one saved beside a model is loaded as the class its tokenizer_config.json names, or as that "
            "model's)"
        )
    logger.warning(
        "%s%s of %s gave no token with %s and are left out (first: %s): text it reads none of",
        split,
        skipped.tokenless,
        counted(skipped.documents, "document"),
        tokenizer,
        skipped.tokenless_first,
    )


def framed_documents(
    docs: Iterable[Document],
    tokenizer: PreTrainedTokenizerBase,
    boundary: DocumentBoundary,
    chunk: int = 32,
) -> Iterator[tuple[Document, list[int]]]:
    """Every document of ``docs`` that enters the packed stream, with its ids there (``[BOS] · prompt · text ·
    [EOS]``, a chat row its template's rendering), in stream order: the documents :func:`token_chunks`
    concatenates, tokenized the same way (empty documents and rejected chat rows left out, not reported)."""
    bos = [] if boundary.bos_id is None else [boundary.bos_id]
    eos = [] if boundary.eos_id is None else [boundary.eos_id]
    chat: ChatRenderer | None = None
    skipped = SkippedRows("data.format=chat: rows")  # token_chunks reports them
    for batch in _batched(docs, chunk):
        if chat is None and any(d.messages is not None for d in batch):
            chat = ChatRenderer(tokenizer)
        for doc, tokens, _, framed in _tokenized(batch, tokenizer, chat, skipped):
            if tokens:
                yield doc, (bos + tokens + eos) if framed else tokens


@dataclass
class TokenChunk:
    """A piece of the packed stream: ``input_ids``, ``target_mask``, ``document_starts``, ``boundary_mask``
    (each (S,), as in :class:`PackedBlocks` before the cut into blocks) and the number of documents in it."""

    input_ids: torch.Tensor
    target_mask: torch.Tensor
    document_starts: torch.Tensor
    boundary_mask: torch.Tensor
    documents: int

    def __len__(self) -> int:
        return int(self.input_ids.numel())


def block_count(
    total: int, block_length: int, max_blocks: int | None, allow_partial_block: bool, split: str = ""
) -> int:
    """Blocks cut from a stream of ``total`` tokens: ``total // T``, at most ``max_blocks`` (None or 0 = no cap);
    0 means one padded block (only when ``allow_partial_block``).

    Raises:
        ConfigError: fewer than T tokens (or none) where a full block is needed.
    """
    n_blocks = total // block_length if not max_blocks else min(total // block_length, max_blocks)
    if n_blocks == 0 and (total == 0 or not allow_partial_block):
        whose = _whose(split)  # which split (try-out 96, F5: not said)
        raise ConfigError(
            f"data: {whose}{counted(total, 'token')} {'is' if total == 1 else 'are'} fewer than one block of "
            f"data.block_length={block_length}; lower it or add data (or raise a cap: data.max_chars, "
            "data.max_documents)"
        )
    return n_blocks


def _token_stream(
    docs: Sequence[Document],
    tokenizer: PreTrainedTokenizerBase,
    boundary: DocumentBoundary,
    max_tokens: int | None = None,
    chunk: int = 32,
    split: str = "",
    max_document_chars: int = 0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Concatenated ids, target mask, document starts and end-of-document marks of :func:`token_chunks`,
    each (S,); with ``max_tokens`` tokenization stops once the stream holds that many tokens. Skipped chat rows
    of ``split`` (named in the line) are reported once, or refused when no row is left, and so are its
    prompt/response rows that split a word between the two (:class:`~ekd.data.prompt_split.PromptBoundaryCheck`)."""
    pieces: list[TokenChunk] = []
    held = 0
    skipped = SkippedRows(f"data.format=chat: {split} rows" if split else "data.format=chat: rows")
    prompt_checks = PromptBoundaryCheck(split)
    for piece in token_chunks(
        docs, tokenizer, boundary, chunk, skipped, prompt_checks, max_document_chars, split
    ):
        pieces.append(piece)
        held += len(piece)
        if max_tokens is not None and held >= max_tokens:
            break
    settle_skipped(skipped, held)
    prompt_checks.report()
    if not pieces:
        pieces = [TokenChunk(*(torch.zeros(0, dtype=d) for d in (torch.long, *[torch.bool] * 3)), 0)]
    return (
        torch.cat([p.input_ids for p in pieces]),
        torch.cat([p.target_mask for p in pieces]),
        torch.cat([p.document_starts for p in pieces]),
        torch.cat([p.boundary_mask for p in pieces]),
    )


TOKENIZER_BYTES_PER_CHAR = 170
"""Peak memory of a fast tokenizer per character of one text it encodes (ids, offsets, per-byte alignments):
164 B measured on a 8.8 M-character document (``tokenizers`` 0.22, a byte-level BPE; try-out 98)."""


def document_chars(doc: Document) -> int:
    """The characters of ``doc`` that are tokenized at once: prompt and text, or a chat row's contents and its tool
    definitions (as JSON), which its template renders into the text."""
    if doc.messages is None:
        return len(doc.prompt) + len(doc.text)
    return len(doc.full_text) + (len(json.dumps(doc.tools)) if doc.tools else 0)


def _whose(split: str) -> str:
    """The owner of a split's figure in a message: "the train split's ", a named eval set's name (no split of
    ``data.source``: try-out 104, F5 read "the dl split's document"), or '' when unnamed."""
    if not split:
        return ""
    return f"the {split} split's " if split in ("train", "eval") else f"eval set '{split}': "


def check_document_length(doc: Document, limit: int, split: str = "") -> None:
    """Refuse ``doc`` when it holds more than ``limit`` characters (``data.max_document_chars``; 0 = no limit):
    it would be tokenized whole, at :data:`TOKENIZER_BYTES_PER_CHAR` bytes of memory per character, before any
    cap applies (try-out 98, F1: a 176 MB text file without two blank lines was one document; the tokenizer took
    24 GB and the kernel killed ekd without a word).

    Raises:
        ConfigError: naming the split and the document, its length, the memory it would take and the ways out.
    """
    if not limit:
        return
    length = document_chars(doc)
    if length <= limit:
        return
    memory = length * TOKENIZER_BYTES_PER_CHAR
    size = next(
        f"{memory / 2**e:.1f} {unit}"
        for e, unit in ((30, "GiB"), (20, "MiB"), (10, "KiB"), (0, "B"))
        if memory >= 2**e or e == 0
    )
    if doc.messages is not None:  # a chat row is rendered whole, its tool definitions too (try-out 104, F5)
        fix = "shorten the row (its messages and tool definitions are rendered and tokenized as one)"
    else:
        fix = (
            "split it into documents (a text file named alone is split only at two or more blank lines in a row; "
            "JSONL rows are a document each)"
        )
    raise ConfigError(
        f"data: {_whose(split)}document {doc.doc_id or '(unnamed)'} holds {length:,} characters, over "
        f"data.max_document_chars={limit:,}: a document is tokenized whole, at ~{size} of memory for this "
        f"one; {fix} or raise data.max_document_chars (0 = no limit)"
    )


def _tokenized(
    batch: Sequence[Document],
    tokenizer: PreTrainedTokenizerBase,
    chat: ChatRenderer | None,
    skipped: SkippedRows,
    prompt_checks: PromptBoundaryCheck | None = None,
) -> list[tuple[Document, list[int], list[bool], bool]]:
    """Per document of ``batch`` (rejected chat rows left out): the document, its token ids, which of them are
    targets, and whether the boundary's BOS/EOS frame it (not for chat rows, whose template frames them).
    Prompt/response rows are checked for a word split between the two while ``prompt_checks`` wants more."""
    plain = [d for d in batch if d.messages is None]
    texts = _encode([d.text for d in plain], tokenizer)
    prompt_rows = [i for i, d in enumerate(plain) if d.prompt]
    prompts: list[list[int]] = [[] for _ in plain]
    for i, encoded in zip(prompt_rows, _encode([plain[i].prompt for i in prompt_rows], tokenizer)):
        prompts[i] = encoded
    if prompt_checks is not None and prompt_checks.wanted and prompt_rows:
        rows = prompt_rows[: prompt_checks.wanted]
        prompt_checks.check(
            [(plain[i].doc_id, plain[i].prompt, plain[i].text) for i in rows],
            [prompts[i] for i in rows],
            [texts[i] for i in rows],
            tokenizer,
        )
    plain_docs = iter(zip(prompts, texts))
    out = []
    for doc in batch:
        if doc.messages is None:
            prompt, text = next(plain_docs)
            out.append((doc, prompt + text, [False] * len(prompt) + [True] * len(text), True))
            continue
        assert chat is not None
        skipped.seen += 1
        try:
            rendered = chat(doc.messages, doc.doc_id, doc.tools)
        except RejectedRow as e:
            skipped.add(doc.doc_id, e)
            continue
        out.append((doc, rendered.input_ids, rendered.assistant_mask, False))
    return out


def _batched(docs: Iterable[Document], size: int) -> Iterator[list[Document]]:
    batch: list[Document] = []
    for doc in docs:
        batch.append(doc)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def _encode(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
    if not texts:
        return []
    return tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
