"""Build a run's token store once — streaming, resumable — or reuse it: ``data.store_dir``.

:func:`stored_blocks` is the store path of :func:`ekd.train.prepare.prepare_data`. It keys the store by a
hash of its signature (:func:`store_signature`: the data sources and every data setting that changes the
documents, the tokenizer hash, the packing settings), so a second run with the same data, tokenizer and
packing reuses it (one log line) and any difference builds a new store under a new key — a store is never
reused for other settings. A store whose manifest disagrees with its key or whose files are short is
rebuilt, with one warning line. A store built before config paths were resolved (its key hashes the
sources' relative spelling) is found by its content and reused all the same.

Building reads the sources lazily (:func:`ekd.data.documents.iter_documents`), routes each document to its
split, tokenizes and packs it with the in-memory path's own functions
(:func:`ekd.data.packing.token_chunks`, :func:`ekd.data.packing.block_count`) and appends it to the split's
files, so memory stays flat and the blocks equal the in-memory path's. It stops reading once every split is
full (``data.max_tokens`` for ``train``; for an eval set the pool its ``data.max_eval_blocks`` blocks are spread
over, :mod:`ekd.data.eval_sample`) and logs its progress every ``PROGRESS_SECONDS``.

Crash safety: the build holds ``<key>.lock`` (:mod:`ekd.locks`: other ranks and runs wait, then reuse), writes into
``<key>.partial/`` and every ``CHECKPOINT_TOKENS`` records its position in ``progress.json`` (files fsynced
first). A killed build resumes there: the files are cut back to the recorded sizes and the sources skip the
documents already read. The manifest is written last, then the directory renamed to ``<key>/``.

Split rule of user data: a document is held out for ``eval`` when :func:`ekd.data.split.stable_unit` of
its content hash is below ``data.eval_fraction`` — decided as it streams by, so it equals the in-memory
rule except on corpora so small that no document (or every one) falls below the fraction, where the
in-memory path forces one to each side.
"""

from __future__ import annotations

import hashlib
import json
import logging
import platform
import shutil
import time
from array import array
from bisect import bisect_left
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields
from glob import has_magic
from itertools import islice
from pathlib import Path

from transformers import PreTrainedTokenizerBase

from ekd.config import READ_ONLY_DATA_KEYS, Config, ConfigError, DataConfig
from ekd.data.boundary import DocumentBoundary
from ekd.data.build import (
    builtin_splits,
    content_key,
    eval_source_format,
    say_chars_cap,
    say_empty_split,
    say_eval_documents,
    say_trained_documents,
)
from ekd.data.chat import SkippedRows, chat_template_of
from ekd.data.document import Document
from ekd.data.documents import TEXT_SPLIT_RULE, iter_documents, no_documents, split_as_text
from ekd.data.eval_sample import EVAL_POOL, pool_blocks, spread_blocks
from ekd.data.packing import (
    PackedBlocks,
    block_count,
    dropped_tail,
    packed_line,
    say_dropped_tail,
    settle_skipped,
    token_chunks,
)
from ekd.data.prompt_split import PromptBoundaryCheck
from ekd.data.pystdlib import PYSTDLIB_SPLITS, stdlib_root
from ekd.data.split import stable_unit
from ekd.data.store import (
    FILES,
    MANIFEST,
    STORE_FORMAT,
    SplitFiles,
    changed_files,
    documents_before,
    fingerprint_files,
    open_split,
    read_manifest,
    seal,
    targets_between,
)
from ekd.data.text_dir import list_glob, signed_files
from ekd.data.tokenizer import tokenizer_hash
from ekd.io import atomic_write_text, file_sha256, fsync_dir, make_dirs, writing
from ekd.locks import lock_holder, locked
from ekd.words import counted

logger = logging.getLogger(__name__)

PACKING_RULE = "concat-documents-blocks-v2"  # ekd.teacher.cache.signature.PACKING_RULE: the same stream
CHECKPOINT_TOKENS = 1 << 23  # tokens written between two resumable checkpoints
PROGRESS_SECONDS = 10.0
WINDOW_DOCUMENTS = 256  # documents routed between two rounds of tokenizing
PROGRESS = "progress.json"
# data keys outside the signature's "data"
NOT_SIGNED = (
    *READ_ONLY_DATA_KEYS,
    "source",
    "eval_sources",
)


def store_root(cfg: Config) -> Path:
    """``data.store_dir`` as a directory: 'auto' = ``<run.output_dir>/token-store``.

    Raises:
        ConfigError: the path, or a directory above it, is a file (try-out 108, F14: "a file is in the way" did not
            name the key).
    """
    value = cfg.data.store_dir
    root = Path(cfg.run.output_dir) / "token-store" if value == "auto" else Path(value)
    taken = next((p for p in (root, *root.parents) if p.exists() and not p.is_dir()), None)
    if taken is not None:
        key = "run.output_dir" if value == "auto" and taken != root else "data.store_dir"
        raise ConfigError(
            f"{key}: {taken} is a file, not a directory, so no token store can be kept at {root}; name a directory"
        )
    return root


def stored_blocks(
    cfg: Config, tokenizer: PreTrainedTokenizerBase, boundary: DocumentBoundary
) -> dict[str, PackedBlocks]:
    """Split name → memory-mapped PackedBlocks of the run's data, building the store first if needed; logs
    one :func:`~ekd.data.packing.packed_line` per split, the in-memory path's line with the same figures.

    Raises:
        ConfigError: as the in-memory path (no documents, fewer tokens than a block, ...).
        DiskError: the store directory cannot be written.
    """
    signature = store_signature(cfg, tokenizer, boundary)
    key = hashlib.sha256(json.dumps(signature, sort_keys=True).encode()).hexdigest()[:16]
    root = store_root(cfg)
    directory = root / key
    manifest = _complete(directory, signature, quiet=True)
    if manifest is None and (same := _same_store(root, signature)) is not None:
        directory, manifest = same  # built before config paths were resolved: other spellings, same files
    if manifest is None and (same := _store_of_a_shorter_corpus(root, signature)) is not None:
        directory, manifest = same  # data.max_tokens above the whole corpus there and here: the same files
    if manifest is not None:
        _log_reuse(directory, manifest)
    else:
        with writing(root):
            make_dirs(root)
        lock = root / f"{key}.lock"
        with locked(
            lock,
            lambda pid: logger.info(
                "token store: waiting for another process that is building it (%s%s)",
                f"pid {pid}, " if pid else "",
                lock,
            ),
        ):
            manifest = _complete(directory, signature, quiet=False)  # another process may have built it
            if manifest is None:
                shutil.rmtree(directory, ignore_errors=True)
                train_from = _store_with_other_eval_pools(root, signature)
                manifest = _build(cfg, tokenizer, boundary, signature, directory, train_from)
            else:  # the process we waited for built it
                _log_reuse(directory, manifest)
    for split in manifest["splits"]:
        if "packed_documents" in split:  # not in a store built before these figures were recorded
            logger.info(
                "%s",
                packed_line(
                    split["name"],
                    split["packed_documents"],
                    split["packed_tokens"],
                    split["blocks"],
                    manifest["block_length"],
                    split["num_targets"],
                ),
            )
        if "tail" in split:  # not in a store built before try-out 40
            tail = split["tail"]
            say_dropped_tail(
                split["name"],
                tail["tokens"],
                tail["targets"],
                manifest["block_length"],
                split["name"] != "train",
            )
    blocks = {
        s["name"]: open_split(directory, i, manifest, boundary) for i, s in enumerate(manifest["splits"])
    }
    return {  # an eval set is a spread sample of its stored pool, as in memory
        name: b if name == "train" else spread_blocks(b, cfg.data.max_eval_blocks, name)
        for name, b in blocks.items()
    }


def _log_reuse(directory: Path, manifest: dict) -> None:
    """The line of a run that reuses a complete store (found at once, or built by a process it waited for), and
    the warning of its eval sets that hold training documents (:func:`say_trained_documents`)."""
    train = next((s for s in manifest["splits"] if s["name"] == "train"), manifest["splits"][0])
    logger.info(
        "token store %s: reusing it (%s, %s) for the same data, tokenizer and packing",
        directory,
        counted(train["blocks"], "training block"),
        counted(train["blocks"] * manifest["block_length"], "token"),
    )
    max_tokens = manifest["signature"]["data"].get("max_tokens") or 0
    for split in manifest["splits"]:
        if isinstance(split.get("trained_documents"), list):
            say_trained_documents(split["name"], *split["trained_documents"], max_tokens)


def _count_trained(
    split: str, doc: Document, phase: int, train_keys: array, trained: dict[str, list[int]]
) -> None:
    """Phase 0 (``data.source``): keep 8 bytes of a training document's :func:`content_key`; a later phase (a
    ``data.eval_sources`` set, its keys sorted by then): count the set's documents and those among them."""
    key = int(content_key(doc)[:16], 16)
    if phase == 0:
        if split == "train":
            train_keys.append(key)
        return
    counts = trained.setdefault(split, [0, 0])
    at = bisect_left(train_keys, key)
    counts[0] += at < len(train_keys) and train_keys[at] == key
    counts[1] += 1


def store_signature(cfg: Config, tokenizer: PreTrainedTokenizerBase, boundary: DocumentBoundary) -> dict:
    """Everything the stored blocks depend on, as JSON values (the store's key is its hash): every ``data``
    key but ``NOT_SIGNED``, the sources' content signatures, the tokenizer hash and the document boundary; with
    ``data.format=chat`` the chat template the tokenizer carries (settled before: declared, a model's or its own)."""
    d = cfg.data
    # every data key, so a key added later (a chat format, a template) can never reuse a store built without
    # it; left out: where the store lives, how a hub dataset is fetched, and the sources (signed by content)
    data = {f.name: getattr(d, f.name) for f in fields(d) if f.name not in NOT_SIGNED}
    signature = {
        "format": STORE_FORMAT,
        "packing_rule": PACKING_RULE,
        "eval_pool": EVAL_POOL,  # eval sets hold EVAL_POOL × data.max_eval_blocks blocks (stores before: ×1)
        "tokenizer": tokenizer_hash(tokenizer),
        "vocab_size": len(tokenizer),
        "boundary": [boundary.describe(), boundary.pad_id],
        "data": data,
        "source": source_signature(d.source),
        "eval_sources": {name: _eval_source_signature(src, d) for name, src in d.eval_sources.items()},
    }
    if d.format == "chat":  # the template actually used (declared, a model's, or the tokenizer's own)
        signature["chat_template"] = chat_template_of(tokenizer)
    if any(split_as_text(src) for src in (d.source, *d.eval_sources.values())):
        signature["text_split"] = TEXT_SPLIT_RULE  # try-out 94, F1: stores of the rule before are not reused
    return json.loads(json.dumps(signature))  # JSON values, as read back from a manifest


def _eval_source_signature(source: str, data: DataConfig) -> dict:
    """A ``data.eval_sources`` entry's :func:`source_signature`, with the format it is read with when that is
    not ``auto`` (chat rows; stores built before read them as ``auto``: their key must differ)."""
    fmt = eval_source_format(source, data)
    return source_signature(source) | ({"read_as": fmt} if fmt != "auto" else {})


def source_signature(source: str) -> dict:
    """What identifies a source's content: its files (resolved paths, sizes, modification times), the
    interpreter for ``pystdlib``, the name for a hub dataset (its split and config are in the data settings)."""
    if source == "pystdlib" or source.startswith("pystdlib:"):
        return {"source": source, "python": platform.python_version(), "stdlib": str(stdlib_root())}
    path = Path(source.removeprefix("hf:"))
    if path.is_dir():
        files = signed_files(path)  # not ekd's outputs or lock files below it (runs there change freely)
    elif path.exists():
        files = [path]
    elif has_magic(source):
        files = list_glob(source).files  # the files read: ekd's outputs and lock files left out
    else:
        return {"source": source}
    h = hashlib.sha256()
    for f in files:
        stat = f.stat()
        h.update(f"{f.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
    return {"source": source, "files": len(files), "stat": h.hexdigest()}


SOURCE_FILES_PREFIX = "source-files:"


def held_out_source_key(cfg: Config) -> str | None:
    """What decides a token-store run's held-out split: its source's files (resolved paths, sizes, modification
    times: :func:`source_signature`, the identity the store keys its source by) and ``data.eval_fraction``, as
    ``source-files:<sha256>``. The store streams its documents, so unlike the in-memory path
    (:func:`ekd.data.build.held_out_fingerprint`) it has no list of them; ``ekd eval`` compares this key instead
    (a source copied or touched since reads as changed, as the store itself reads it). None: nothing is held out
    of ``data.source`` (the builtin corpus's eval set is its own modules; ``data.eval_fraction=0``)."""
    d = cfg.data
    if d.source == "pystdlib" or d.eval_fraction <= 0:
        return None
    what = json.dumps(
        {"source": source_signature(d.source), "eval_fraction": d.eval_fraction}, sort_keys=True
    )
    return SOURCE_FILES_PREFIX + hashlib.sha256(what.encode()).hexdigest()


def train_documents(cfg: Config) -> Iterator[Document]:
    """The training documents in the order the store packs them, streamed (routed and ``data.max_chars``-capped
    as :func:`_build` does; documents past ``data.max_tokens`` are included — the caller stops reading)."""
    for phase in _phases(cfg)[:1]:
        state = {name: _SplitState() for name in phase.splits}
        for split, doc in phase.documents():
            if split == "train" and _accept(state[split], doc, phase.max_chars):
                yield doc


# ---------------------------------------------------------------------------------------------------------
# Building
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _SplitState:
    """A split's progress: what was written, and whether it takes more documents."""

    tokens: int = 0
    documents: int = 0  # documents with tokens in the stream
    accepted: int = 0  # documents routed to the split (data.max_chars counts them)
    chars: int = 0
    closed: bool = False
    capped: bool = False  # closed by data.max_chars (not by its token budget)
    # documents the split holds: accepted, and those past its token budget, which are not tokenized (the line
    # of the eval split's size counts them, as the in-memory path does: try-out 98, F2)
    held: int = 0
    # the first held documents' ids (a resumed build's line)
    first_ids: list[str] = field(default_factory=list)
    # the first document ``held`` counts: a build resumed from a checkpoint of an older ekd, which counted none
    # (try-out 101, F3: its resumed pass said "291 of 12000" for 602); 0 otherwise
    counted_from: int = 0


@dataclass
class _Phase:
    """One source read in order: its documents routed to splits, as ``(split name, document)``."""

    key: str
    source: str
    splits: list[str]
    documents: Callable[[], Iterator[tuple[str, Document]]]
    max_chars: int | None  # data.max_chars applied per split as documents arrive (None: the source did)
    required: bool = True  # a source that yields no document is an error (the builtin one checks itself)


def _phases(cfg: Config) -> list[_Phase]:
    d = cfg.data
    cap = d.max_chars or None
    if d.source == "pystdlib":

        def builtin() -> Iterator[tuple[str, Document]]:
            for name, docs in builtin_splits(d, cap).items():
                yield from ((name, doc) for doc in docs)

        phases = [_Phase("data.source", d.source, list(PYSTDLIB_SPLITS), builtin, None, required=False)]
    else:

        def routed() -> Iterator[tuple[str, Document]]:
            for doc in iter_documents(d.source, d):
                # said at the phase's end (try-out 45, F6)
                held = stable_unit(content_key(doc)) < d.eval_fraction
                yield ("eval" if held else "train"), doc

        # a split that gets nothing never fills
        splits = ["train", "eval"] if d.eval_fraction > 0 else ["train"]
        phases = [_Phase("data.source", d.source, splits, routed, cap)]
    for name, source in d.eval_sources.items():
        if name in phases[0].splits or name == "eval":
            raise ConfigError(f"data.eval_sources: the name '{name}' is already a split; rename it")
        key = f"data.eval_sources.{name}"

        def extra(name: str = name, source: str = source, key: str = key) -> Iterator[tuple[str, Document]]:
            docs = iter_documents(source, d, format=eval_source_format(source, d), key=key)
            yield from ((name, doc) for doc in docs)

        phases.append(_Phase(key, source, [name], extra, cap))
    return phases


def say_other_unfinished_builds(staging: Path) -> None:
    """One warning per other ``<key>.partial/`` beside ``staging``: an unfinished build of other data or settings
    (try-out 98, F4: a build stopped by a bad row left one as large as what it had tokenized; fixing the row
    changed the store's key, so it was never resumed nor removed, and nothing said so). It resumes only for the
    same data and settings, so it is named, with its size, for the user to delete — never deleted here. One that a
    live process is building now (its ``<key>.lock`` held: runs of a sweep sharing ``data.store_dir``) is not
    named, and one that finishes or moves while it is measured is passed over (review of session 31: the warning
    told users to delete a live build, and its files' renames could end the run in a traceback)."""
    for other in sorted(staging.parent.glob("*.partial")):
        key = other.name.removesuffix(".partial")
        if other == staging or not other.is_dir() or lock_holder(other.with_name(f"{key}.lock")) is not None:
            continue
        try:
            stats = [f.stat() for f in other.rglob("*") if f.is_file()]
            written = max((st.st_mtime for st in stats), default=other.stat().st_mtime)
        except OSError:  # renamed or removed by a process that took it up meanwhile
            continue
        size = sum(st.st_size for st in stats)
        logger.warning(
            "token store: %s is an unfinished build of other data or settings (%s, last written %s UTC): it "
            "resumes only for the same data and settings; delete it if those have changed",
            other,
            f"{size / 2**20:,.1f} MiB",
            time.strftime("%Y-%m-%d %H:%M", time.gmtime(written)),
        )


FIRST_IDS = 5  # held-out ids a checkpoint keeps, for a resumed build's line (say_eval_documents names 5)
MAX_HELD_IDS = 100_000  # held-out ids kept for the log (every one at debug level when they all fit)


def _accept(state: _SplitState, doc: Document, max_chars: int | None, split: str = "") -> bool:
    """Route ``doc`` to a split unless it is closed; ``data.max_chars`` closes it (as ``cap_chars``, said as it
    says it where ``split`` is named)."""
    if state.closed:
        return False
    chars = len(doc.full_text)
    if max_chars is not None and state.chars + chars > max_chars and state.accepted:
        state.closed = state.capped = True
        if split:
            say_chars_cap(split, state.accepted, state.chars, chars, max_chars)
        return False
    state.chars += chars
    state.accepted += 1
    return True


def _build(
    cfg: Config,
    tokenizer: PreTrainedTokenizerBase,
    boundary: DocumentBoundary,
    signature: dict,
    directory: Path,
    train_from: tuple[Path, dict] | None = None,
) -> dict:
    """Build the store of ``signature`` into ``directory`` (resuming an unfinished build (killed, or stopped by an error) of it); with ``train_from``
    (a complete store that differs only in its eval pools, :func:`_store_with_other_eval_pools`) its training
    split's files are copied and only the eval sets are tokenized: the same files as a build from scratch."""
    d = cfg.data
    staging = directory.with_name(directory.name + ".partial")
    phases = _phases(cfg)
    names = [n for p in phases for n in p.splits]
    budgets = {
        n: (pool_blocks(d.max_eval_blocks) if n != "train" else d.max_tokens // d.block_length)
        * d.block_length
        for n in names
    }
    progress = _read_progress(staging, signature)
    if progress is None:
        with writing(staging):
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir(parents=True)
        progress = {"phase": 0, "consumed": 0, "splits": {n: asdict(_SplitState()) for n in names}}
        if train_from is not None:
            progress["splits"]["train"] = _copy_train_split(
                *train_from, staging / f"split-{names.index('train')}"
            )
            logger.info(
                "token store %s: building it with the training split of %s (the same data, tokenizer and packing; "
                "eval pools for data.max_eval_blocks=%s there): tokenizing the eval sets only",
                directory,
                train_from[0],
                train_from[1]["signature"]["data"]["max_eval_blocks"],
            )
        else:
            logger.info(
                "token store %s: building it (data.store_dir; tokenizing once for every run)", directory
            )
        say_other_unfinished_builds(staging)
    elif progress["phase"] >= len(phases):
        # killed while finishing, past every phase (try-out 56, F9: this log line raised an IndexError, every rerun)
        logger.info(
            "token store %s: resuming an unfinished build (killed, or stopped by an error) at its last step (cutting blocks, sealing)",
            directory,
        )
    else:
        logger.info(
            "token store %s: resuming an unfinished build (killed, or stopped by an error) at document %d of %s",
            directory,
            progress["consumed"],
            phases[progress["phase"]].key,
        )
    known = {f.name for f in fields(_SplitState)}  # a checkpoint of another ekd may record more or fewer
    states = {n: _SplitState(**{k: v for k, v in progress["splits"][n].items() if k in known}) for n in names}
    if "eval" in states and "held" not in progress["splits"]["eval"]:  # an older ekd's checkpoint
        states["eval"].counted_from = progress["consumed"]
    # 8 bytes of each training document's content_key, to find training documents in the named eval sets: only
    # where this build reads the whole training split itself (not a resumed build, not one copying another's)
    fresh = train_from is None and progress["phase"] == 0 and progress["consumed"] == 0
    train_keys = array("Q") if d.eval_sources and fresh else None
    trained: dict[str, list[int]] = {  # eval set → [its training documents, its documents]; a copied training
        # split's store counted them on the same documents (its eval pools differ, not its sets)
        split["name"]: split["trained_documents"]
        for split in (train_from[1]["splits"] if train_from is not None else [])
        if isinstance(split.get("trained_documents"), list)
    }
    t0, last_log, since_checkpoint = time.monotonic(), time.monotonic(), 0
    # tokens already there (a resumed build's, a copied training split's): not tokenized in these seconds
    tokens_before = sum(s.tokens for s in states.values())
    with writing(staging):
        files = {
            n: SplitFiles.open(staging / f"split-{i}", states[n].tokens, states[n].documents)
            for i, n in enumerate(names)
        }
        discard = False
        try:
            for index, phase in enumerate(phases):
                if index < progress["phase"]:
                    continue
                consumed = progress["consumed"] if index == progress["phase"] else 0
                resumed_pass = consumed > 0
                stream = islice(phase.documents(), consumed, None)
                # chat rows skipped in this phase, per split, over all its windows (reported once at its end)
                skipped = {n: SkippedRows(f"data.format=chat: {n} rows") for n in phase.splits}
                prompt_checks = {n: PromptBoundaryCheck(n) for n in phase.splits}  # prompt/response rows' ids
                held_ids: list[
                    str
                ] = []  # the held-out documents' ids this pass sees (a resumed one: the rest)
                exhausted = False  # the source read to its end (a short window), not stopped by the caps
                while not all(states[n].closed for n in phase.splits):
                    window = list(islice(stream, WINDOW_DOCUMENTS))
                    exhausted = len(window) < WINDOW_DOCUMENTS
                    if not window:
                        break
                    consumed += len(window)
                    routed: dict[str, list[Document]] = {n: [] for n in phase.splits}
                    for split, doc in window:
                        if _accept(states[split], doc, phase.max_chars, split):
                            routed[split].append(doc)
                            if train_keys is not None:
                                _count_trained(split, doc, index, train_keys, trained)
                        elif states[split].capped:
                            continue
                        states[split].held += 1  # accepted, or past the split's token budget
                        if split == "eval" and d.source != "pystdlib" and len(held_ids) < MAX_HELD_IDS:
                            held_ids.append(doc.doc_id or f"#{states[split].held - 1}")
                            if len(states[split].first_ids) < FIRST_IDS:
                                states[split].first_ids.append(held_ids[-1])
                    for split, docs in routed.items():
                        for chunk in token_chunks(
                            docs,
                            tokenizer,
                            boundary,
                            skipped=skipped[split],
                            prompt_checks=prompt_checks[split],
                            max_document_chars=d.max_document_chars,
                            split=split,
                        ):
                            files[split].append(chunk)
                            since_checkpoint += len(chunk)
                            if budgets[split] and files[split].tokens >= budgets[split]:
                                # full: the window's later documents are not tokenized, as in memory (try-out
                                # 99, F2: a long one past data.max_tokens was refused, and up to 255 tokenized)
                                break
                        states[split].tokens, states[split].documents = (
                            files[split].tokens,
                            files[split].documents,
                        )
                        if budgets[split] and states[split].tokens >= budgets[split]:
                            states[split].closed = True
                    if since_checkpoint >= CHECKPOINT_TOKENS:
                        _checkpoint(staging, signature, index, consumed, states, files)
                        since_checkpoint = 0
                    if time.monotonic() - last_log >= PROGRESS_SECONDS:
                        last_log = time.monotonic()
                        _log_progress(phase, consumed, states, budgets, last_log - t0, tokens_before)
                if consumed == 0 and phase.required:
                    raise no_documents(d, phase.source, phase.key)
                if "eval" in phase.splits and d.source != "pystdlib":
                    # every document the source's eval split holds, of every document read (not only the
                    # eval pool's, which are tokenized: try-out 98, F2 read "7 of 96,916" for 5,021 of 101,930)
                    since = states["eval"].counted_from
                    say_eval_documents(
                        # a resumed pass saw only the rest: the first ids come from the checkpoint (try-out 99, F3)
                        states["eval"].first_ids if resumed_pass and not since else held_ids,
                        states["eval"].held,
                        consumed - since,
                        d.eval_fraction,
                        stopped=not exhausted,  # the caps closed every split before the source's end
                        resumed_at=since or None,
                    )
                for split in phase.splits:  # a window whose rows were all skipped is no error; a split's is
                    settle_skipped(skipped[split], states[split].tokens)
                    prompt_checks[split].report()
                    if split in trained:
                        say_trained_documents(split, *trained[split], d.max_tokens)
                if index == 0 and train_keys is not None:  # sorted once, searched by the eval sets' phases
                    train_keys = array("Q", sorted(train_keys))
                _checkpoint(staging, signature, index + 1, 0, states, files)
            manifest = _finish(cfg, boundary, signature, staging, names, states, files, trained)
        except (ConfigError, KeyboardInterrupt):
            # stopped (by the data, or Ctrl-C / SIGTERM) before anything was stored: nothing to resume (try-out 99,
            # F4: an empty partial build was left, and every later build warned about it; try-out 104, F3: one of
            # an interrupt, which the rerun built afresh); a build copying another store's training split, whose
            # copy a rebuild makes again in seconds, wherever it stopped (review of session 31, try-out 104 F1:
            # kept, as large as that split, and orphaned once the refused named set was fixed)
            discard = train_from is not None or not (staging / PROGRESS).exists()
            raise
        finally:
            for f in files.values():
                f.close()
            if discard:
                shutil.rmtree(staging, ignore_errors=True)
        manifest = seal(manifest)
        atomic_write_text(staging / MANIFEST, json.dumps(manifest, indent=1))
        (staging / PROGRESS).unlink(missing_ok=True)
        staging.rename(directory)
        fsync_dir(directory.parent)
    logger.info("token store %s: built in %.1f s", directory, time.monotonic() - t0)
    return manifest


def _finish(
    cfg: Config,
    boundary: DocumentBoundary,
    signature: dict,
    staging: Path,
    names: list[str],
    states: dict[str, _SplitState],
    files: dict[str, SplitFiles],
    trained: dict[str, list[int]] | None = None,
) -> dict:
    """Cut every split into blocks (padding a lone partial block), drop empty eval sets, fingerprint them; an eval
    set's training documents (``trained``, set → [training documents, documents]) are recorded, said again on
    every reuse."""
    d, t = cfg.data, cfg.data.block_length
    splits = []
    for i, name in enumerate(names):
        state, split_files = states[name], files[name]
        is_train = name == "train"
        if not is_train and state.accepted == 0:
            say_empty_split(name, d, states["train"].accepted)
            continue
        max_blocks = (d.max_tokens // t if is_train else pool_blocks(d.max_eval_blocks)) or None
        n_blocks = block_count(state.tokens, t, max_blocks, allow_partial_block=not is_train, split=name)
        real = min(state.tokens, n_blocks * t) if n_blocks else state.tokens  # real tokens in the blocks
        if n_blocks == 0:
            split_files.pad(t - state.tokens, boundary.pad_id)
            n_blocks = 1
        split_files.sync()
        tail = dropped_tail(state.tokens, n_blocks, t, max_blocks)  # logged at every open (stored_blocks)
        splits.append(
            {
                "name": name,
                "tail": {
                    "tokens": tail,
                    "targets": targets_between(split_files.directory, real, real + tail),
                },
                "folder": i,
                "blocks": n_blocks,
                "tokens": split_files.tokens,
                "documents": split_files.documents,  # in the files, some maybe past the last block
                # what the in-memory path logs (ekd.data.packing.packed_line): documents starting in the blocks
                "packed_documents": documents_before(split_files.directory, split_files.documents, real),
                "packed_tokens": real,
                # what the files hold, checked when the store is reused (try-out 27: a file overwritten in place
                # at its size was read as the store, and its recorded fingerprint passed a cache's data check)
                "sha256": {f: file_sha256(split_files.directory / f) for f, _ in FILES.values()},
            }
        )
        if name in (trained or {}):
            splits[-1]["trained_documents"] = trained[name]
    manifest = {
        "format": STORE_FORMAT,
        "signature": signature,
        "block_length": t,
        "document_attention": d.document_attention,
        "splits": splits,
    }
    for split in splits:
        folder = staging / f"split-{split['folder']}"
        split["fingerprint"], split["num_targets"] = fingerprint_files(folder, split["blocks"], t)
    return manifest


def _checkpoint(
    staging: Path,
    signature: dict,
    phase: int,
    consumed: int,
    states: dict[str, _SplitState],
    files: dict[str, SplitFiles],
) -> None:
    for f in files.values():
        f.sync()
    progress = {
        "signature": signature,
        "phase": phase,
        "consumed": consumed,
        "splits": {n: asdict(s) for n, s in states.items()},
    }
    atomic_write_text(staging / PROGRESS, json.dumps(progress))


def _read_progress(staging: Path, signature: dict) -> dict | None:
    try:
        progress = json.loads((staging / PROGRESS).read_text())
    except (OSError, ValueError):
        return None
    return progress if isinstance(progress, dict) and progress.get("signature") == signature else None


def _log_progress(
    phase: _Phase,
    consumed: int,
    states: dict[str, _SplitState],
    budgets: dict[str, int],
    seconds: float,
    tokens_before: int = 0,
) -> None:
    """One progress line; its rate is of the tokens this process tokenized in its ``seconds`` (review 136, R1: a
    resumed build divided the killed one's tokens too by its own seconds, 1,878 for 425 tokens/s)."""
    budget = budgets.get(phase.splits[0], 0)
    share = f" ({100 * states[phase.splits[0]].tokens / budget:.0f}% of its budget)" if budget else ""
    logger.info(
        "token store: %s: %s read, %s: %s%s; %.0f tokens/s",
        phase.key,
        counted(consumed, "document"),
        phase.splits[0],
        counted(states[phase.splits[0]].tokens, "token"),
        share,
        (sum(s.tokens for s in states.values()) - tokens_before) / max(seconds, 1e-9),
    )


def _complete(directory: Path, signature: dict, quiet: bool) -> dict | None:
    """The manifest of a complete store for ``signature``; otherwise None (with one warning line for a store
    that exists but is corrupt or was built for other settings, unless ``quiet``)."""
    if not directory.exists():
        return None
    manifest = read_manifest(directory)
    problem = None
    if manifest is None:
        problem = "is incomplete, corrupt or edited (its manifest missing, unreadable or changed since its build, or its files short)"
    elif manifest.get("signature") != signature:
        problem = "was built for other data, tokenizer or packing settings"
    elif changed := changed_files(directory, manifest):
        problem = (
            f"has {', '.join(changed)} changed since it was built (the sha256 or fingerprint it recorded)"
        )
    if problem is None:
        return manifest
    if not quiet:
        logger.warning("token store %s %s; rebuilding it", directory, problem)
    return None


def _by_content(signature: dict) -> dict:
    """``signature`` without how its local paths were spelled: a local source's signature keeps its files'
    resolved paths, sizes and mtimes (``stat``) but not the source as typed; a chat template file's path goes
    when the template's text is signed (``chat_template``)."""
    out = json.loads(json.dumps(signature))
    for src in [out.get("source"), *(out.get("eval_sources") or {}).values()]:
        if isinstance(src, dict) and "stat" in src:
            src.pop("source", None)
    if "chat_template" in out and isinstance(out.get("data"), dict):
        out["data"].pop("chat_template", None)
    return out


def _complete_stores(root: Path) -> Iterator[tuple[Path, dict]]:
    """(directory, manifest) of every store under ``root`` with a manifest, in name order (builds in progress
    left out)."""
    for path in sorted(root.glob(f"*/{MANIFEST}")) if root.is_dir() else []:
        if not path.parent.name.endswith(".partial") and (manifest := read_manifest(path.parent)) is not None:
            yield path.parent, manifest


def _same_store(root: Path, signature: dict) -> tuple[Path, dict] | None:
    """A complete store under ``root`` whose signature differs from ``signature`` only in the spelling of its
    local paths (a store built before config paths were resolved at load time, keyed by the relative spelling):
    (its directory, its manifest), or None."""
    wanted = _by_content(signature)
    for directory, manifest in _complete_stores(root):
        if _by_content(manifest.get("signature") or {}) == wanted:
            return None if changed_files(directory, manifest) else (directory, manifest)
    return None


def _train_budget(signature: dict) -> int | None:
    """The training split's token budget of a store signature (``data.max_tokens`` in whole blocks); None for
    no budget (``max_tokens`` 0)."""
    data = signature["data"]
    budget = data["max_tokens"] // data["block_length"] * data["block_length"]
    return budget or None


# the data keys that size what a store reads without changing how any document is routed, tokenized or packed
SIZES = ("max_tokens", "max_eval_blocks")


def _same_training_split(manifest: dict, signature: dict) -> bool:
    """Whether the complete store of ``manifest`` holds the training split a build of ``signature`` makes: the
    signatures are the same by content (:func:`_by_content`) but for :data:`SIZES`, and ``data.max_tokens`` is
    the same or both budgets lie above the store's whole training corpus (it read every document, as a build of
    ``signature`` would). The eval pools (``data.max_eval_blocks``) never change the training split: it routes
    each document by its content and fills to its own budget."""
    found, wanted = _by_content(manifest.get("signature") or {}), _by_content(signature)
    data, wanted_data = found.get("data"), wanted.get("data")
    if not isinstance(data, dict) or not all(k in data for k in SIZES):
        return False
    train = next((s for s in manifest["splits"] if s["name"] == "train"), None)
    budgets = (_train_budget(found), _train_budget(wanted))
    for d in (data, wanted_data):
        for key in SIZES:
            d.pop(key, None)
    if found != wanted or train is None:
        return False
    # the whole corpus when below its budget: that build never closed the split
    return budgets[0] == budgets[1] or all(b is None or train["tokens"] < b for b in budgets)


def _store_of_a_shorter_corpus(root: Path, signature: dict) -> tuple[Path, dict] | None:
    """A complete, unchanged store under ``root`` that differs from ``signature`` only in ``data.max_tokens``
    (and path spellings), when the whole training corpus is below both budgets (:func:`_same_training_split`):
    its files are those a build of ``signature`` makes. (its directory, its manifest), or None."""
    eval_pools = signature["data"]["max_eval_blocks"]
    for directory, manifest in _complete_stores(root):
        same_pools = (manifest.get("signature") or {}).get("data", {}).get("max_eval_blocks") == eval_pools
        if (
            same_pools
            and _same_training_split(manifest, signature)
            and not changed_files(directory, manifest)
        ):
            return directory, manifest
    return None


def _store_with_other_eval_pools(root: Path, signature: dict) -> tuple[Path, dict] | None:
    """A complete, unchanged store under ``root`` whose training split is the one a build of ``signature`` makes
    (:func:`_same_training_split`: it differs in ``data.max_eval_blocks``, and maybe in a ``data.max_tokens``
    above the whole corpus): (its directory, its manifest), or None — so ``ekd eval RUN
    data.max_eval_blocks=…`` does not tokenize the training corpus again."""
    for directory, manifest in _complete_stores(root):
        if _same_training_split(manifest, signature) and not changed_files(directory, manifest):
            return directory, manifest
    return None


def _copy_train_split(directory: Path, manifest: dict, split_dir: Path) -> dict:
    """Copy the training split's files of the store at ``directory`` into ``split_dir``; its
    :class:`_SplitState` as a dict (closed: the build reads no more training documents)."""
    train = next(s for s in manifest["splits"] if s["name"] == "train")
    make_dirs(split_dir)
    for filename, _ in FILES.values():
        shutil.copyfile(directory / f"split-{train['folder']}" / filename, split_dir / filename)
    documents = train["documents"]
    return asdict(_SplitState(tokens=train["tokens"], documents=documents, accepted=documents, closed=True))
