"""``ekd cache import``: teacher top-K log-probabilities from another tool → an ekd top-K cache.

    ekd cache import teacher-logprobs.parquet --config run.yaml --out runs/imported-cache
    ekd distill run.yaml teacher.source=cache teacher.cache_dir=runs/imported-cache

The config's data settings decide the training blocks exactly as for ``ekd cache`` (tokenizer, separator,
block length, packing, eval hold-out). Every training document is looked up in SRC by its text (the
``--text-column``); SRC's tokens for it must equal ours — ``[BOS] text [EOS]`` as the config frames a
document, SRC may lack the final EOS — or the import stops with one line naming the SRC row and the first
differing position. Each document's rows (:mod:`ekd.teacher.cache.logprob_rows`) are then laid onto the
packed stream: the target of block position t (a token of document d at offset j) is SRC's row j of d.
Positions SRC has no row for are not cached (training skips them, as with any partial cache).

Targets are those the native top-K cache stores (``ekd.teacher.targets.topk_target``) from the K largest
log-probabilities ℓ_K of the full softmax at τ=1: ``renormalize`` t = softmax(ℓ_K/τ) (exact at any τ: the
top K at τ are the top K at 1, and their ratios need no partition function); ``ghost`` t = exp ℓ_K with tail
1 − Σ_K exp ℓ_K (the mass the K miss); ``to_gold`` that tail added to the gold token. ``ghost`` and
``to_gold`` need τ = 1 (the tail at τ ≠ 1 needs the whole distribution).

Teacher statistics are estimates from the K entries (the full distribution is not in SRC): entropy
−Σ_K p log p − r log r with r = 1 − Σ_K p (the tail as one token: a lower bound of H(p)); log p(gold) exact
when the gold token is in the top K, else log min(r, min_K p) (an upper bound). Methods that select by
teacher statistics use these estimates.

The signature is the one ``ekd cache`` writes for the config, with ``teacher_revision`` =
``import-sha256:<sha256 of SRC>`` in place of a weights hash: training refuses the cache for another
tokenizer, data, block length, target, K, tail or τ exactly as it refuses a native cache.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
from collections.abc import Iterable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ekd.config import Config, ConfigError
from ekd.data.chat import RejectedRow, import_key, parse_messages, parse_tools
from ekd.data.document import Document
from ekd.io import DiskError, file_sha256, make_dirs, removed_if_left_empty
from ekd.locks import holding
from ekd.log_level import info_said_already
from ekd.teacher.cache.format import CacheError
from ekd.teacher.cache.kept_teacher import keep_teacher_files, teacher_files_record
from ekd.teacher.cache.logprob_rows import (
    Columns,
    SourceRow,
    SourceTable,
    first_mismatch,
    resolve_columns,
    source_row,
)
from ekd.teacher.cache.manifest import (
    IMPORTED,
    KEPT_FILES,
    MANIFEST,
    check_cache_directory,
    check_cache_kind,
)
from ekd.teacher.cache.readers import no_readers
from ekd.teacher.cache.signature import cache_signature, check_cacheable
from ekd.teacher.cache.source import check_trains_from_cache
from ekd.teacher.cache.writer import CacheWriter
from ekd.temperature import fixed_tau, varying_tau

log = logging.getLogger(__name__)
WINDOW_TOKENS = 1 << 15  # stream positions laid and written together (rounded to whole blocks)


def check_importable(cfg: Config) -> None:
    """Refuse configs an imported top-K cache cannot serve (one line naming the key)."""
    check_cacheable(cfg)
    m = cfg.method
    if m.target != "topk":
        raise ConfigError(
            f"method.target={m.target}: imported teacher logprobs give top-K targets; set method.target=topk"
        )
    if fixed_tau(m, cfg.train.max_steps) is None:
        raise ConfigError(
            f"{varying_tau(m, cfg.train.max_steps)}: an imported cache is made at one τ; use method.temperature=constant"
        )
    if m.topk_tail != "renormalize" and m.kd_temperature != 1.0:
        raise ConfigError(
            f"method.topk_tail={m.topk_tail} at method.kd_temperature={m.kd_temperature}: the tail at τ ≠ 1 needs "
            "the whole distribution; use method.kd_temperature=1 or method.topk_tail=renormalize"
        )
    check_trains_from_cache(cfg)  # and what distill would refuse of this config
    if cfg.data.prompt_field:
        raise ConfigError("data.prompt_field: ekd cache import reads plain documents (data.text_field) only")


def topk_from_logprobs(
    logprobs: torch.Tensor, ids: torch.Tensor, k: int, tail: str, gold: torch.Tensor, tau: float
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """The native top-K target from the K largest full-softmax log-probabilities.

    Args:
        logprobs: (M, K') fp32 log p at τ=1, largest first; ids (M, K') their token ids; K' ≥ k.
        tail: 'renormalize', 'ghost' or 'to_gold'; gold (M,) the gold ids; tau the KD temperature.

    Returns:
        ids (M, K) or (M, K+1) for to_gold, probs of the same shape, tail (M,) for ghost else None.
    """
    top, top_ids = logprobs[:, :k], ids[:, :k]  # (M, K)
    if tail == "renormalize":
        return top_ids, torch.softmax(top / tau, dim=-1), None
    p_k = top.exp()  # (M, K)
    rest = (1.0 - p_k.sum(-1)).clamp(min=0.0)  # (M,) mass outside the K ids
    if tail == "ghost":
        return top_ids, p_k, rest
    is_gold = top_ids == gold[:, None]  # (M, K)
    probs = p_k + is_gold * rest[:, None]
    extra = torch.where(is_gold.any(-1), torch.zeros_like(rest), rest)  # (M,)
    return torch.cat([top_ids, gold[:, None]], -1), torch.cat([probs, extra[:, None]], -1), None


def estimated_stats(logprobs: torch.Tensor, gold_logprob: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(entropy, log p(gold)) (M,) at τ=1 from the top-K log-probabilities (M, K) (see the module docstring).

    ``gold_logprob`` (M,): the gold token's log p where SRC lists it (NaN elsewhere; then the bound
    log min(r, min_K p) is used)."""
    lp = logprobs.double()
    p = lp.exp()  # (M, K) 0 at padding (−inf)
    rest = (1.0 - p.sum(-1)).clamp(min=0.0)  # (M,) the tail
    entropy = -torch.where(p > 0, p * lp, torch.zeros_like(p)).sum(-1)
    entropy = entropy - torch.where(rest > 0, rest * rest.clamp(min=1e-300).log(), torch.zeros_like(rest))
    smallest = torch.where(torch.isfinite(lp), lp, torch.zeros_like(lp)).min(-1).values  # (M,)
    bound = torch.minimum(smallest, rest.clamp(min=1e-300).log())
    known = ~torch.isnan(gold_logprob)
    return entropy.float(), torch.where(known, gold_logprob.double(), bound).float()


def document_key(doc: Document, with_tools: bool = False) -> str:
    """What a training document is looked up by in SRC: its text, or for a chat row its messages as the JSON
    list of its messages' roles, contents and tool calls, and its tool definitions when SRC has a column of
    them (``with_tools``; :func:`ekd.data.chat.import_key`)."""
    if doc.messages is None:
        return doc.text
    return import_key(doc.messages, doc.tools if with_tools else None)


def row_key(value: Any, chat: bool, where: str, column: str, tools: Any = None) -> str:
    """The lookup key of SRC's text column value (see :func:`document_key`); a chat row's messages may be a
    list of ``{role, content}`` objects or a JSON string of one, its ``tools`` (the value of SRC's
    ``data.tools_field`` column, if it has one) as the training rows' are read. Raises CacheError naming
    ``where``."""
    if chat:
        if isinstance(value, str):
            with contextlib.suppress(ValueError):  # a JSON string of the messages; else refused below
                value = json.loads(value)
        try:
            return import_key(parse_messages(value), parse_tools(tools))
        except RejectedRow as e:
            raise CacheError(
                f"{where}: column '{column}' is not chat messages ({e}); name the messages column with "
                "--text-column"
            ) from None
    if not isinstance(value, str):
        raise CacheError(f"{where}: column '{column}' is not text; name the text column with --text-column")
    return value


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode("utf-8")).digest()[:16]


def _index_rows(table: SourceTable, column: str, chat: bool, tools: str | None = None) -> dict[bytes, int]:
    """sha256[:16] of every SRC row's key → its first row number (one streamed pass over one column, and over
    the ``tools`` column of a chat SRC that has one)."""
    index: dict[bytes, int] = {}
    values = table.column(column)
    rows = zip(values, table.column(tools)) if tools else ((v, None) for v in values)
    for r, (value, row_tools) in enumerate(rows):
        if value is not None:
            index.setdefault(_digest(row_key(value, chat, table.where(r), column, row_tools)), r)
    return index


class _Window:
    """The top-K rows of ``width`` consecutive training blocks, laid document by document and written to the
    cache as soon as the stream passes them (memory: one window, whatever the size of SRC).

    Arrays per flat position p of the window (p = (block − first) · T + t): top-K ids and log p, log p(gold)
    where SRC lists the gold token, whether SRC gave a row, and the token the documents put there."""

    def __init__(
        self, blocks, writer: CacheWriter, k: int, tail: str, tau: float, width: int, isolated: bool = True
    ) -> None:
        self.blocks, self.writer, self.k, self.tail, self.tau = blocks, writer, k, tail, tau
        self.n_blocks, self.T = blocks.input_ids.shape
        self.width, self.isolated = width, isolated
        self.first = 0  # first block of the window
        self.cached = self.targets = self.hits = 0
        self.other_context = 0  # cached positions whose block context is not the document prefix SRC scored
        size = width * self.T
        self.ids = np.zeros((size, k), dtype=np.int64)  # (W·T, K) top-K ids, largest first
        self.lp = np.full((size, k), -np.inf, dtype=np.float32)  # (W·T, K) their log p
        self.gold_lp = np.full(size, np.nan, dtype=np.float32)  # (W·T,) log p(next token) if SRC has it
        self.has = np.zeros(size, dtype=bool)  # (W·T,) positions SRC gives a row for
        self.tokens = np.full(size, -1, dtype=np.int64)  # (W·T,) the document tokens laid here
        # (W·T,) positions whose context in the block is not the whole document before them: the document began in
        # an earlier block, or (packed attention) other documents precede it in its block
        self.other = np.zeros(size, dtype=bool)

    @property
    def end(self) -> int:
        """Flat stream position after the window."""
        return (self.first + self.width) * self.T

    def lay(self, at: int, tokens: np.ndarray, row: SourceRow | None, n_rows: int) -> None:
        """Lay a document starting at stream position ``at``: its ``tokens`` (L,), and its first ``n_rows``
        SRC rows (row j at ``at + j``, over token j + 1)."""
        stream = self.n_blocks * self.T
        hit = gold = None
        if row is not None and n_rows:
            hit = row.ids[:n_rows] == tokens[1 : n_rows + 1, None]  # (n, K') next token among the entries
            gold = np.where(hit.any(1), np.where(hit, row.logprobs[:n_rows], 0).sum(1), np.nan)  # (n,)
        j, n = 0, min(len(tokens), stream - at)
        while j < n:
            while at + j >= self.end:
                self.flush()
            off = at + j - self.first * self.T
            m = min(n - j, self.width * self.T - off)
            self.tokens[off : off + m] = tokens[j : j + m]
            r = min(m, max(n_rows - j, 0))  # rows of SRC inside this piece
            if r and row is not None:
                self.ids[off : off + r] = row.ids[j : j + r, : self.k]
                self.lp[off : off + r] = row.logprobs[j : j + r, : self.k]
                self.gold_lp[off : off + r] = gold[j : j + r]
                self.has[off : off + r] = True
                # (r,) stream positions of the piece's rows; the block sees the document from its start only in
                # the block the document starts in, and (packed) only if the document starts that block
                rows_at = at + j + np.arange(r)
                self.other[off : off + r] = (rows_at // self.T != at // self.T) | (
                    not self.isolated and at % self.T != 0
                )
            j += m

    def flush(self) -> None:
        """Write the window's blocks (every document over them has been laid) and move to the next ones."""
        from ekd.data.collate import shift_labels

        stop = min(self.first + self.width, self.n_blocks)
        if stop <= self.first:
            return
        rows = slice(self.first, stop)
        block_ids = self.blocks.input_ids[rows]  # (B, T)
        used = (stop - self.first) * self.T
        laid = self.tokens[:used]
        if not np.array_equal(laid, block_ids.reshape(-1).numpy()):
            bad = int(np.flatnonzero(laid != block_ids.reshape(-1).numpy())[0]) // self.T + self.first
            raise CacheError(
                f"ekd cache import: the documents do not pack like the training data at block {bad}"
            )
        labels = shift_labels(block_ids, self.blocks.target_mask[rows]).reshape(-1)  # (B·T,) token predicted
        has_label = (labels != -100).numpy()
        cached = self.has[:used] & has_label
        at = np.flatnonzero(cached)  # (P,) window positions written, block by block
        gold = labels[at]  # (P,)
        lp, ids = torch.from_numpy(self.lp[at]), torch.from_numpy(self.ids[at])  # (P, K)
        t_ids, t_probs, t_tail = topk_from_logprobs(lp, ids, self.k, self.tail, gold, self.tau)  # one call
        entropy, logp_gold = estimated_stats(lp, torch.from_numpy(self.gold_lp[at]))
        self.hits += int((ids == gold[:, None]).any(-1).sum())
        cuts = np.searchsorted(at, np.arange(stop - self.first + 1) * self.T).tolist()  # block b: cuts[b:b+2]
        batch = []
        for b in range(stop - self.first):
            s = slice(cuts[b], cuts[b + 1])
            batch.append(
                dict(
                    sample_id=self.first + b,
                    positions=at[s] - b * self.T,
                    stats={"entropy": entropy[s], "logp_gold": logp_gold[s]},
                    ids=t_ids[s],
                    values=t_probs[s],
                    tail=None if t_tail is None else t_tail[s],
                    num_tokens=int(has_label[b * self.T : (b + 1) * self.T].sum()),
                )
            )
        self.writer.add_batch(batch)
        self.cached += int(cached.sum())
        self.other_context += int((cached & self.other[:used]).sum())
        self.targets += int(has_label.sum())
        self.first = stop
        self.ids[:] = 0
        self.lp[:] = -np.inf
        self.gold_lp[:] = np.nan
        self.has[:] = False
        self.other[:] = False
        self.tokens[:] = -1

    def close(self) -> None:
        while self.first < self.n_blocks:
            self.flush()


def _training_documents(cfg: Config) -> Iterable[Document]:
    """The training documents in packing order: streamed from the sources with a token store (its routing),
    else the in-memory path's split."""
    if cfg.data.store_dir:
        from ekd.data.store_build import train_documents

        return train_documents(cfg)
    from ekd.data import load_splits

    with info_said_already("ekd.data.documents"):  # the data preparation said each source's figures
        return load_splits(cfg, max_chars=cfg.data.max_chars or None)["train"]


# import's own ways out (the native build's name teacher.cache_dir and `ekd cache CONFIG --overwrite`)
IMPORT_IN_USE = "wait for it to end, or choose another --out"
IMPORT_AGAIN = "replace it by rerunning `ekd cache import` with --overwrite, or choose another --out"


def import_cache(
    cfg: Config, src: str | Path, columns: Columns, overwrite: bool = False
) -> tuple[Path, bool]:
    """Write the top-K cache of ``cfg`` (in ``teacher.cache_dir``) from SRC's teacher log-probabilities.

    SRC is streamed: one pass over its text column indexes the rows (a 16-byte hash per row), then the
    training documents are walked in packing order, each one's row read from SRC and laid onto a window of
    blocks that is written once the stream passes it. Memory: the index, one SRC row (and one Parquet batch),
    one window of ``WINDOW_TOKENS`` positions — not SRC, not the stream.

    Returns:
        The cache directory, and whether this call imported rows: False when it held this import, finished (the
        same SRC and config), whose rows are neither indexed nor laid again (try-out 102, F3: it read the
        training documents and SRC a second time and said "imported").

    Raises:
        ConfigError: a config an imported cache cannot serve (:func:`check_importable`).
        CacheError: SRC unreadable or malformed (one line naming row and position), a training document
            missing from SRC, or SRC's tokens differing from ours (row and first differing position named).
    """
    from ekd.teacher.cache.build import _prepare_data

    check_importable(cfg)
    src = Path(src)
    if not src.is_file():
        raise CacheError(f"{src} does not exist; give the Parquet/JSONL file of teacher logprobs")
    table = SourceTable(src)
    layout, columns = resolve_columns(src, set(table.names), columns)
    directory = Path(cfg.teacher.cache_dir)
    check_cache_directory(directory, "--out")
    check_cache_kind(directory, imported=True, overwrite=overwrite)  # not a cache `ekd cache` built
    with (
        removed_if_left_empty(directory),
        holding(directory, IMPORT_IN_USE, CacheError),  # no other writer
        no_readers(directory, "import into another --out")
        if overwrite
        else nullcontext(),  # nor a run training from it (try-out 130, F2)
    ):
        make_dirs(directory)
        data = _prepare_data(cfg, directory)
        n_blocks = len(data.blocks["train"].input_ids)
        revision = f"{IMPORTED}{file_sha256(src)}"
        signature = cache_signature(cfg, data, revision)
        signature.update(positions="all", position_fraction=None)
        if kept := teacher_files_record(cfg.model.teacher, cfg.model.teacher_hub_revision):
            signature[KEPT_FILES] = kept  # the copy kept below
        chat = cfg.data.format == "chat"
        tools = cfg.data.tools_field if chat and cfg.data.tools_field in table.names else None
        # this very import, finished before: SRC's rows are neither indexed nor laid again
        sealed = _sealed(directory, signature)
        # otherwise SRC is indexed first, so that a bad row is refused before anything is written
        index = None if sealed else _index_rows(table, columns.text, chat, tools)
        writer = CacheWriter(
            directory,
            signature,
            n_blocks,
            cfg.teacher.cache_shard_samples,
            stat_format=cfg.teacher.cache_stat_format,
            overwrite=overwrite,
            rebuild=IMPORT_AGAIN,
        )
        if held := sealed and writer.completed_shards == len(writer.owned):
            writer.close()  # the manifest as it is: a finished cache is not written again
        else:  # a new import, one killed before it finished, or one with damaged shards to rebuild
            if index is None:
                index = _index_rows(table, columns.text, chat, tools)
            _import_rows(cfg, table, index, tools, layout, columns, data, writer)
        try:  # its config and tokenizer, for runs from the import where the teacher is not
            keep_teacher_files(cfg.model.teacher, cfg.model.teacher_hub_revision, directory)
        except (OSError, DiskError) as e:  # a finished import on a read-only mount: runs read model.teacher's
            log.info("imported cache %s: the teacher's files not kept (%s)", directory, e)
        return directory, not held


def _sealed(directory: Path, signature: dict) -> bool:
    """Whether ``directory``'s manifest is a finished cache of ``signature`` (its shards are checked after, by the
    writer)."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
    except (OSError, ValueError):
        return False
    same = json.loads(json.dumps(signature, default=str))
    return (
        isinstance(manifest, dict) and manifest.get("complete") is True and manifest.get("signature") == same
    )


def _import_rows(
    cfg: Config,
    table: SourceTable,
    index: dict[bytes, int],
    tools: str | None,
    layout: Any,
    columns: Columns,
    data: Any,
    writer: CacheWriter,
) -> None:
    """The rows of ``table`` (found by ``index``: :func:`_index_rows`) laid onto the training blocks of ``data`` in
    packing order and written (the body of :func:`import_cache`)."""
    from ekd.data.packing import framed_documents

    src = table.path
    blocks = data.blocks["train"]
    n_blocks, T = blocks.input_ids.shape
    k, tail, tau = cfg.method.topk, cfg.method.topk_tail, cfg.method.kd_temperature
    chat = cfg.data.format == "chat"
    needed = [c for c in (columns.tokens, columns.ids, columns.logprobs) if c is not None]
    isolated = blocks.document_attention == "isolated"
    window = _Window(blocks, writer, k, tail, tau, max(1, WINDOW_TOKENS // T), isolated)
    at, stream = 0, n_blocks * T
    for doc, ours in framed_documents(_training_documents(cfg), data.tokenizer, data.boundary):
        if at >= stream:
            break
        r = index.get(_digest(document_key(doc, with_tools=tools is not None)))
        if r is None:
            raise CacheError(
                f"{src} has no row whose '{columns.text}' is the training document {doc.doc_id}: "
                "SRC must hold every training document of the config's data"
            )
        where = table.where(r)
        row = source_row(table.row(r, needed), layout, columns, k, where)
        bad = first_mismatch(ours, row.tokens)
        if bad is not None:
            theirs = int(row.tokens[bad]) if bad < len(row.tokens) else "<end>"
            mine = ours[bad] if bad < len(ours) else "<end>"
            how = "data.chat_template" if chat else f"data.separator={cfg.data.separator}"
            untold = (  # try-out 25: SRC rows told apart by messages alone, one of them rendered with tools
                f"; the training row {doc.doc_id} has tool definitions and SRC no '{cfg.data.tools_field}' "
                "column to tell rows with the same messages apart (add it)"
                if chat and doc.tools and tools is None
                else ""
            )
            raise CacheError(
                f"{where}: token {bad} is {theirs} in SRC but {mine} in our tokenization of its text "
                f"(model.tokenizer={cfg.model.tokenizer}, {how}); tokenize SRC as the config does{untold}"
            )
        n = min(len(row.ids), len(ours) - 1)  # row j → stream position at + j, over token j + 1
        window.lay(at, np.asarray(ours, dtype=np.int64), row, n)
        at += len(ours)
    window.close()
    writer.close()
    log.info(
        "imported %s: %d of %d target positions cached; gold token in the top-%d at %.1f%% of them",
        src,
        window.cached,
        window.targets,
        k,
        100.0 * window.hits / max(window.cached, 1),
    )
    # try-out 56, F6: a per-document capture trained 14% of its positions off-context, without a word
    if window.other_context:
        why = (
            "their document began in an earlier block"
            if isolated
            else "their document began in an earlier block or follows others in its block "
            "(data.document_attention=packed)"
        )
        log.warning(
            "ekd cache import: %d of the %d cached positions (%.1f%%) see in their training block less than the "
            "document before them (%s): an SRC scored per document conditions their targets on context the "
            "student does not see there; one scored on the training blocks (ekd's packing) does not",
            window.other_context,
            window.cached,
            100.0 * window.other_context / max(window.cached, 1),
            why,
        )


__all__ = ["check_importable", "document_key", "estimated_stats", "import_cache", "topk_from_logprobs"]
