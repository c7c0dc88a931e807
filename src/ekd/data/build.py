"""From a config to named document splits, and from splits to packed blocks.

``load_splits`` returns ``train``, the in-distribution ``eval`` set and every extra eval set:

- ``data.source=pystdlib``: the builtin splits (``train``, ``eval`` held out by module, ``shift_tests``,
  ``shift_docstrings``), see :mod:`ekd.data.pystdlib`; ``data.eval_fraction`` is the held-out fraction of
  modules.
- any other source: ``eval`` is the documents whose content hash falls below ``data.eval_fraction``
  (identical documents land on the same side; at least one is held out when the fraction is > 0 and
  there are two or more documents), ``train`` the rest.
- each ``data.eval_sources`` entry ``name: source`` adds a set ``name`` (format detected from the source; with
  ``data.format=chat`` its JSONL/Parquet/HF rows are chat rows too, its text files stay text).

Splits that come out empty are dropped (``eval`` with ``data.eval_fraction=0``).
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Sequence
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ekd.config import Config, ConfigError, DataConfig
from ekd.data.boundary import DocumentBoundary, read_model_eos, resolve_boundary
from ekd.data.chat import messages_key
from ekd.data.document import Document
from ekd.data.documents import (
    JSONL_SUFFIXES,
    PARQUET_SUFFIXES,
    TEXT_SUFFIXES,
    filter_documents,
    load_documents,
)
from ekd.data.eval_sample import pool_blocks, spread_blocks
from ekd.data.packing import PackedBlocks, pack_documents
from ekd.data.pystdlib import pystdlib_splits
from ekd.data.split import held_out_keys, stable_unit
from ekd.words import counted

logger = logging.getLogger(__name__)


def load_splits(cfg: Config, max_chars: int | None = None, train: bool = True) -> dict[str, list[Document]]:
    """Load the documents of every split named by the config.

    Args:
        cfg: The run config (its ``data`` section is used).
        max_chars: Cap on the total characters of each split (``None`` = no cap); documents are kept in
            order while they fit. ``pystdlib`` applies it before reading files.
        train: False: the eval sets only (``ekd eval RUN``): a user ``data.source`` that holds nothing out
            (``data.eval_fraction=0``) is not read at all — a run moved elsewhere, or whose corpus is gone, is
            evaluated on its named sets (try-out 74, F7).

    Returns:
        Split name → documents; ``train`` first, then ``eval``, then the other sets.

    Raises:
        ConfigError: Any source error (see :func:`ekd.data.documents.load_documents`), or an eval set name
            that collides with a built-in split.
    """
    data = cfg.data
    if data.source == "pystdlib":
        splits = builtin_splits(data, max_chars)
    elif not train and data.eval_fraction == 0:
        splits = {}
    else:
        docs = load_documents(data.source, data)
        keys = [content_key(d) for d in docs]
        held = held_out_keys(keys, data.eval_fraction)
        # none held out of two or more documents: only copies keep every one in (try-out 96, F6)
        if not held and data.eval_fraction > 0 and len(set(keys)) > 1:
            logger.warning(
                "data.source: every document has more copies than data.eval_fraction=%g of its %s allows "
                "(identical documents share a side): none is held out",
                data.eval_fraction,
                counted(len(docs), "document"),
            )
        splits = {
            "train": cap_chars([d for d, k in zip(docs, keys) if k not in held], max_chars, "train"),
            "eval": cap_chars([d for d, k in zip(docs, keys) if k in held], max_chars, "eval"),
        }
        held_ids = [d.doc_id or f"#{i}" for i, d in enumerate(splits["eval"])]
        # else the smallest hash's (held_out_keys)
        below = any(stable_unit(k) < data.eval_fraction for k in held)
        say_eval_documents(held_ids, len(held_ids), len(docs), data.eval_fraction, below)
    for name, source in data.eval_sources.items():
        if name in splits or name == "eval":
            raise ConfigError(f"data.eval_sources: the name '{name}' is already a split; rename it")
        fmt = eval_source_format(source, data)
        splits[name] = cap_chars(
            load_documents(source, data, format=fmt, key=f"data.eval_sources.{name}"), max_chars, name
        )
    if data.eval_sources and splits.get("train"):
        trained = {content_key(d) for d in splits["train"]}
        for name in data.eval_sources:
            docs = splits.get(name) or []
            say_trained_documents(
                name, sum(content_key(d) in trained for d in docs), len(docs), data.max_tokens
            )
    for name in [n for n, d in splits.items() if not d]:
        say_empty_split(name, data, len(splits.get("train", [])))
        del splits[name]
    return splits


def say_trained_documents(name: str, trained: int, documents: int, max_tokens: int = 0) -> None:
    """A warning when ``trained`` of the ``documents`` of the eval set ``name`` (``data.eval_sources``) are training
    documents too (the same :func:`content_key`): its figures on them are not held-out figures (try-out 94, F4: a
    set that was the training file itself was scored like any other). Said by the in-memory path and by the token
    store's build and reuse. With ``data.max_tokens`` the training split is counted whole, the documents past the
    budget too (try-out 95, F4), and the line says so."""
    if trained:
        logger.warning(
            "data.eval_sources.%s: %s of its %s %s in the training split too (the same text)%s: its figures on them "
            "are not held-out figures; take them out of the set or out of the training data",
            name,
            f"{trained:,}",
            counted(documents, "document"),
            "is" if trained == 1 else "are",
            f" — some may be past data.max_tokens={max_tokens}, which trains only the start of it"
            if max_tokens
            else "",
        )


def document_boundary(
    data: DataConfig,
    tokenizer: PreTrainedTokenizerBase,
    models: dict[str, tuple[str, str]] | None = None,
    trust_remote_code: bool = False,
) -> DocumentBoundary:
    """``data.separator`` resolved for the tokenizer and the models.

    Args:
        data: The data section (``separator``).
        tokenizer: The shared tokenizer.
        models: Role → (hub id or local directory, revision) of every non-preset model whose convention
            counts (read only with ``separator=auto``; configs only, no weights).
        trust_remote_code: ``model.trust_remote_code``, for reading custom configs.
    """
    model_eos = {}
    if data.separator == "auto":
        model_eos = {
            role: read_model_eos(spec, revision, trust_remote_code, key=f"model.{role}")
            for role, (spec, revision) in (models or {}).items()
        }
    boundary = resolve_boundary(data.separator, tokenizer, model_eos)
    if data.format == "chat":  # try-out 74, F11: the line above announced a framing no conversation gets
        logger.info(
            "data.format=chat: conversations are framed by their chat template alone (no BOS/EOS added)"
        )
    return boundary


def pack_splits(
    splits: dict[str, list[Document]],
    tokenizer: PreTrainedTokenizerBase,
    block_length: int,
    max_eval_blocks: int = 0,
    boundary: DocumentBoundary | None = None,
    document_attention: str = "isolated",
    max_train_tokens: int = 0,
    max_document_chars: int = 0,
) -> dict[str, PackedBlocks]:
    """Pack every split; an eval set is ``max_eval_blocks`` blocks spread evenly over its first
    ``EVAL_POOL × max_eval_blocks`` (:mod:`ekd.data.eval_sample`).

    Args:
        splits: Output of :func:`load_splits`.
        tokenizer: The shared tokenizer.
        block_length: T (``data.block_length``).
        max_eval_blocks: Blocks kept per eval set (0 = all), spread evenly over the pool of its first
            ``EVAL_POOL`` times as many blocks: only the documents the pool needs are tokenized, and a few long
            documents cannot fill the budget. Documents are in a deterministic order that spreads over the
            source (content-hash held-out split; hash order for pystdlib).
        boundary: BOS/EOS framing (:func:`document_boundary`); default the tokenizer's EOS after each document.
        document_attention: 'isolated' or 'packed' (``data.document_attention``).
        max_train_tokens: ``data.max_tokens``: ``train`` keeps its first ``max_train_tokens // block_length``
            blocks and tokenizes only the documents they need (0 = all).
        max_document_chars: ``data.max_document_chars``: a longer document is refused before it is tokenized.

    Returns:
        Split name → PackedBlocks. ``train`` must fill at least one full block; an eval set shorter than
        one block becomes one padded block.
    """
    packed: dict[str, PackedBlocks] = {}
    train_blocks = max_train_tokens // block_length or None
    for name, docs in splits.items():
        is_train = name == "train"
        blocks = pack_documents(
            docs,
            tokenizer,
            block_length,
            allow_partial_block=not is_train,
            max_blocks=train_blocks if is_train else pool_blocks(max_eval_blocks),
            boundary=boundary,
            document_attention=document_attention,
            split=name,
            max_document_chars=max_document_chars,
        )
        packed[name] = blocks if is_train else spread_blocks(blocks, max_eval_blocks, name)
    return packed


def cap_chars(docs: Sequence[Document], max_chars: int | None, split: str = "") -> list[Document]:
    """The leading documents whose ``full_text`` fits under ``max_chars`` in total (``None`` = all); where the cap
    stops the split ``split`` before its end, :func:`say_chars_cap` says so.

    The first document is always kept, so a non-empty set stays non-empty.
    """
    if max_chars is None:
        return list(docs)
    kept: list[Document] = []
    total = 0
    for doc in docs:
        chars = len(doc.full_text)
        if total + chars > max_chars and kept:
            say_chars_cap(split, len(kept), total, chars, max_chars)
            break
        total += chars
        kept.append(doc)
    return kept


def say_chars_cap(split: str, kept: int, kept_chars: int, next_chars: int, max_chars: int) -> None:
    """One line when ``data.max_chars`` stops ``split`` at a document of ``next_chars`` characters that would pass
    it, having kept ``kept`` documents of ``kept_chars`` characters; a warning when that is under half the cap (the
    cap keeps whole documents in order: try-out 94, F2 — one 8,000-character document early in a file left a
    5,000-character cap with one document of 28 characters, unsaid). Both data paths (in memory, token store)
    say it."""
    # the first document alone is over the cap: kept, as a split keeps one (try-out 95, F3)
    if kept_chars > max_chars:
        logger.warning(
            "data.max_chars=%d: the %s split's first document alone has %s characters, more than the cap: it keeps "
            "that one document and stops there; raise data.max_chars",
            max_chars,
            split or "data",
            f"{kept_chars:,}",
        )
        return
    short = kept_chars < max_chars // 2
    logger.log(
        logging.WARNING if short else logging.INFO,
        "data.max_chars=%d: the %s split stops at its document %d (%s characters, more than the %s left): it keeps "
        "%s, %s characters%s",
        max_chars,
        split or "data",
        kept + 1,
        f"{next_chars:,}",
        f"{max_chars - kept_chars:,}",
        counted(kept, "document"),
        f"{kept_chars:,}",
        "; the cap keeps whole documents in order, so raise it or cap with data.max_tokens or data.max_documents"
        if short
        else "",
    )


def builtin_splits(data: DataConfig, max_chars: int | None) -> dict[str, list[Document]]:
    """The ``pystdlib`` splits with ``data.min_chars``/``data.max_documents`` applied (``train`` must keep one)."""
    return {
        name: _filter_optional(docs, data, name)
        if name != "train"
        else filter_documents(docs, data, "pystdlib", "data.source")
        for name, docs in pystdlib_splits(max_chars=max_chars, eval_fraction=data.eval_fraction).items()
    }


def say_eval_documents(
    first_ids: list[str],
    held: int,
    total: int,
    fraction: float,
    below: bool = True,
    stopped: bool = False,
    resumed_at: int | None = None,
) -> None:
    """One info line: how many of the source's ``total`` documents the ``eval`` split holds (``held``), by the
    rule of :func:`content_key` and :func:`ekd.data.split.held_out_keys`, and the first ids; every id at debug
    level (``log.level=DEBUG``). A user can then tell which documents were scored (try-out 45, F6). The token
    store's build says it too, from the ids it saw (try-out 74, F2).

    Args:
        first_ids: the held documents' ids in order (at least the first 5, or all of them when fewer).
        below: False: no hash fell below the fraction, and the in-memory rule held out the document of the
            smallest one whose copies fit in the fraction (try-out 76, F5: the line said it fell below).
        stopped: the token store stopped reading the source at ``total`` documents, its splits full (a cap): said
            as "of the first N read" (try-out 96, F4: "4 of 5" read as 80% held out, where memory said 4 of 23).
        resumed_at: ``held`` and ``total`` count the documents a resumed token-store build read after document
            ``resumed_at``, where its checkpoint (an older ekd's) counted none before (try-out 101, F3).
    """
    if not held:
        return
    ids = ": " + ", ".join(first_ids[:5]) if first_ids else ""  # none from a resumed store build's pass
    rule = (
        f"those whose content hash falls below data.eval_fraction={fraction:g}"
        if below
        else f"no content hash falls below data.eval_fraction={fraction:g}: the smallest one whose copies fit in it"
    )
    if resumed_at is not None:
        read = (
            f"the {counted(total, 'document')} read since the build resumed at document {resumed_at} (its "
            "checkpoint, an older ekd's, counts none before)"
        )
    elif stopped:
        read = f"the first {counted(total, 'document')} read (its splits' caps stopped the reading)"
    else:
        read = counted(total, "document")
    logger.info(
        "data.source: the eval split holds %d of %s (%s: README, The eval split)%s%s",
        held,
        read,
        rule,
        ids,
        # the debug line lists them only where every id is known (not a resumed store build's, nor over 100,000)
        (", … (log.level=DEBUG lists every one)" if len(first_ids) == held else ", …")
        if ids and held > 5
        else "",
    )
    if len(first_ids) == held:
        logger.debug("data.source: eval split documents: %s", ", ".join(first_ids))


def say_empty_split(name: str, data: DataConfig, train_documents: int) -> None:
    """What an eval split that holds nothing means for the run: a warning when the held-out ``eval`` split
    was asked for and is the run's only eval set (it will score none: try-out 53, F3 — said at INFO only, its
    eval.json ``{}``), info for a named set, nothing when ``data.eval_fraction=0`` asked for none. Said by the
    in-memory path and the token store's build alike (try-out 74, F2)."""
    if name == "eval" and data.eval_fraction > 0 and not data.eval_sources:
        one_file = Path(data.source).is_file() and Path(data.source).suffix.lower() in TEXT_SUFFIXES
        logger.warning(
            "data.source %s: no document is held out for the eval set (%s; data.eval_fraction=%g holds out "
            "whole documents), so this run scores no eval set; name one with data.eval_sources={held_out: FILE}, %s",
            data.source,
            counted(train_documents, "document"),
            data.eval_fraction,
            "or split the text into documents (two blank lines between them)"
            if one_file  # a directory's files and a file's rows are documents already (try-out 76, F5)
            else "or raise data.eval_fraction",
        )
    elif not (name == "eval" and data.eval_fraction == 0):  # none was asked for: nothing to say
        logger.info("eval set '%s' is empty; skipping it", name)


def content_key(doc: Document) -> str:
    """sha256 hex of a document's prompt and text (a chat row: its roles and contents): the unit of the
    held-out split of user data."""
    if doc.messages is not None:
        return hashlib.sha256(messages_key(doc.messages).encode()).hexdigest()
    return hashlib.sha256(f"{doc.prompt}\x00{doc.text}".encode()).hexdigest()


def held_out_fingerprint(docs: Sequence[Document]) -> str:
    """sha256 hex of the held-out split's documents (their sorted :func:`content_key`): which documents a run held
    out, whatever blocks they are packed into. ``ekd eval RUN`` refuses a split that differs (try-out 76, F10: an
    override of ``data.block_length`` got past the blocks' comparison and scored a trained document)."""
    return hashlib.sha256("\n".join(sorted(content_key(d) for d in docs)).encode()).hexdigest()


def eval_source_format(source: str, data: DataConfig) -> str:
    """The ``data.format`` a ``data.eval_sources`` entry is read with: ``chat`` for rows (``hf:``, JSONL or
    Parquet files or globs of them) of a ``data.format=chat`` run, else ``auto`` (text files stay text).
    The in-memory path and the token store both read eval sources through this rule."""
    suffix = Path(source).suffix.lower()
    rows = source.startswith("hf:") or suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES
    return "chat" if data.format == "chat" and rows else "auto"


def _filter_optional(docs: list[Document], data: DataConfig, name: str) -> list[Document]:
    """``data.min_chars``/``data.max_documents`` on a builtin eval set, which may end empty (then dropped)."""
    try:
        return filter_documents(docs, data, f"pystdlib:{name}", "data.source")
    except ConfigError:
        return []
