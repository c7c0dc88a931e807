"""Documents and the sources they come from: text files, directories/globs, JSONL, Parquet, HF datasets.

A :class:`~ekd.data.document.Document` is the unit of data before tokenization. ``load_documents(source, data_cfg)`` reads
one source (the syntax of ``data.source``) and applies ``data.min_chars`` and ``data.max_documents``:

- ``pystdlib`` / ``pystdlib:<split>``: the builtin corpus (see :mod:`ekd.data.pystdlib`); the bare name is
  its ``train`` split.
- ``hf:<name or local path>``: a Hugging Face dataset, via ``load_from_disk`` when the path is a directory
  written by ``Dataset.save_to_disk`` (a ``DatasetDict``: its ``data.hf_split``; a single ``Dataset``: all its
  rows, and a ``data.hf_split`` other than the default is refused, as it has no splits), else ``load_dataset(name, data.hf_name or None, split=data.hf_split)``
  (``streaming=True`` with ``data.hf_streaming``); rows are read in batches, never all at once.
- a ``.jsonl`` / ``.parquet`` file: one document per row, from ``data.text_field`` or from the
  ``data.prompt_field`` / ``data.response_field`` pair (the prompt gets no loss).
- ``data.format=chat``: JSONL, Parquet or HF rows (told apart as above) whose ``data.messages_field`` holds a
  conversation (:mod:`ekd.data.chat`); a row without that field or whose messages are not a list of
  ``{role, content}`` strings is skipped and counted (one warning line with the count and the first row). A
  field that no row has (a Parquet/HF column that does not exist, or none of the first ``FIELD_PROBE_ROWS``
  JSONL rows, so that a large file is not read to its end first) is instead one error naming
  ``data.messages_field`` and the fields present: the likely cause is a wrong field name.
- a single text file: documents are separated by two or more blank lines (a run of ``\\n\\n\\n``); a file
  without such a separator is one document. Single blank lines (paragraphs) never split a document.
- a directory (searched recursively; hidden files, ekd's own run directories, caches, token stores and lock
  files, and JSONL/Parquet files skipped: :mod:`ekd.data.text_dir`): one document per file, in sorted path
  order, with one info line naming the files read by extension; files that are not text (not UTF-8, or with
  NUL bytes as a binary file has) are skipped with a warning naming the first few. A directory holding only row files is refused with the glob that reads them.
- a glob (``shards/*.jsonl``, ``corpus/**/*``; ekd's own outputs and lock files skipped as in a directory):
  every matched file in sorted path order, read by its format as naming it alone would — JSONL/Parquet files
  give their rows (chat rows with ``data.format=chat``, which refuses a matched text file), any other file is
  one document, as in a directory; ``data.format`` text, jsonl or parquet reads every file so.

:func:`iter_documents` reads a source lazily (text files in 1 MiB chunks) for corpora larger than memory.

Every failure is raised as :class:`ekd.config.ConfigError` with one line naming the problem and the fix.
"""

from __future__ import annotations

import glob
import json
import logging
import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from ekd.config import ConfigError, DataConfig
from ekd.config.paths import read_as
from ekd.data.chat import NO_MESSAGES, RejectedRow, SkippedRows, parse_messages, parse_tools
from ekd.data.document import Document
from ekd.data.pystdlib import PYSTDLIB_SPLITS, pystdlib_splits
from ekd.data.text_dir import (
    DirectoryListing,
    by_suffix,
    enclosing_output,
    glob_root,
    list_directory,
    list_glob,
)
from ekd.errors import first_line
from ekd.hub import check_dataset_path, check_dataset_reachable
from ekd.io import dangling_link
from ekd.nearest import did_you_mean
from ekd.words import counted

logger = logging.getLogger(__name__)

FORMATS = ("auto", "text", "jsonl", "parquet", "hf", "chat")
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSONL_SUFFIXES = (".jsonl", ".ndjson")
PARQUET_SUFFIXES = (".parquet", ".pq")
SUFFIX_FORMATS = {
    **dict.fromkeys(TEXT_SUFFIXES, "text"),
    **dict.fromkeys(JSONL_SUFFIXES, "jsonl"),
    **dict.fromkeys(PARQUET_SUFFIXES, "parquet"),
}  # file suffix (lower case) → the data.format that reads it
# chat JSONL: when none of this many first rows has data.messages_field, the name is wrong (refused at once)
FIELD_PROBE_ROWS = 256
# two or more blank lines (spaces and tabs allowed on them), whole lines only: the next document keeps the
# indentation of its first line (try-out 94, F1: a trailing \s* took it from every document but the first)
DOCUMENT_SEPARATOR = re.compile(r"\n[ \t]*\n[ \t]*\n(?:[ \t]*\n)*")
TEXT_SPLIT_RULE = "blank-lines-v2"  # in a token store's key: a store of the rule before is not reused
TEXT_SPLIT_COMMIT = "731a482"  # the commit that made the rule (ekd's version number did not change)


def split_as_text(source: str) -> bool:
    """Whether ``source`` is a single file read as text, so split into documents at blank lines by
    :data:`DOCUMENT_SEPARATOR` (a row file is not; a directory or glob reads one document per file)."""
    path = Path(source)
    rows = path.suffix.lower() in (*JSONL_SUFFIXES, *PARQUET_SUFFIXES)
    return not rows and not source.startswith(("hf:", "pystdlib")) and path.is_file()


def text_split_note(source: str, recorded: str | None = None) -> str:
    """For a refusal that says a run's data changed: where ``source`` is a text file named alone, that ekd's split of
    such a file changed on 2026-12-04 (:data:`TEXT_SPLIT_RULE`), which changes the documents of a file that was not
    touched (try-out 95, F8), and what such a run can do then: naming the file "as it was" cannot bring its
    documents back (try-out 101, F2); else ''. ``recorded``: the rule the run recorded (ekd-run.json
    ``text_split``); a run that records today's rule gets no note (try-out 102, F2: a run made today whose file was
    edited was sent to an older ekd)."""
    if not split_as_text(source) or recorded == TEXT_SPLIT_RULE:
        return ""
    return (
        " (or ekd's split of a text file named alone: since 2026-12-04 each document keeps its first line's "
        "indentation, so a run made before then on such a file reads other documents now from the same file; "
        f"only an ekd older than that change (commit {TEXT_SPLIT_COMMIT}) continues such a run or scores its split)"
    )


def load_documents(
    source: str,
    data_cfg: DataConfig,
    format: str | None = None,
    key: str = "data.source",
) -> list[Document]:
    """Read the documents of one source and apply ``data.min_chars`` and ``data.max_documents``.

    Args:
        source: ``pystdlib[:<split>]``, ``hf:<name or path>``, a file, a directory or a glob.
        data_cfg: Supplies the field names, HF name/split and the filters.
        format: 'auto', 'text', 'jsonl', 'parquet', 'hf' or 'chat'; ``None`` uses ``data_cfg.format``.
        key: Dotted config key named in error messages (e.g. ``data.eval_sources.shift``).

    Returns:
        The documents in source order; never empty.

    Raises:
        ConfigError: Missing path, unknown format, bad JSON or missing field (with the line/row), or no
            documents left after filtering.
    """
    docs = list(iter_documents(source, data_cfg, format, key))
    if not docs:
        raise no_documents(data_cfg, source, key)
    logger.info(
        "%s=%s: %s, %s",
        key,
        source,
        counted(len(docs), "document"),
        counted(sum(len(d.full_text) for d in docs), "character"),
    )
    return docs


def iter_documents(
    source: str,
    data_cfg: DataConfig,
    format: str | None = None,
    key: str = "data.source",
) -> Iterator[Document]:
    """The documents of :func:`load_documents`, read lazily: text files in chunks, Parquet in row batches, HF
    datasets in row batches (``data.hf_streaming`` streams them); may be empty (the caller decides).

    Raises:
        ConfigError: As :func:`load_documents` (a bad row when it is reached).
    """
    fmt = data_cfg.format if format is None else format
    if fmt not in FORMATS:
        raise ConfigError(f"data.format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    return _documents(source, fmt, data_cfg, key)


def _documents(source: str, fmt: str, data_cfg: DataConfig, key: str) -> Iterator[Document]:
    """The filtered rows; for chat rows, the malformed ones are counted and reported (one warning line)
    once the source is read to its end."""
    skipped = SkippedRows(f"{key}={source}: chat rows") if fmt == "chat" else None
    read = 0
    for doc in _filtered(_read_source(source, fmt, data_cfg, key, skipped), data_cfg, f"{key}={source}"):
        read += 1
        yield doc
    if skipped is not None and skipped.count and not read and skipped.count == skipped.seen:
        # every row was malformed: the rows' format is the problem, not a filter (try-out 18: ShareGPT rows)
        raise ConfigError(
            f"{key} {source}: none of its {skipped.seen} chat rows could be read ({skipped.kinds()}; first: "
            f"{skipped.first}: {skipped.first_reason}); data.format=chat needs data.messages_field "
            f"('{data_cfg.messages_field}') to hold a list of {{role, content}} objects (ShareGPT's from/value "
            "rows need converting)"
        )
    if skipped is not None:
        skipped.report()


def filter_documents(docs: Iterable[Document], data_cfg: DataConfig, source: str, key: str) -> list[Document]:
    """Drop documents whose ``text`` (a chat row: ``full_text``) is shorter than ``data.min_chars`` or, unless
    ``data.min_chars`` is 0, holds only whitespace; keep the first ``data.max_documents``.

    Raises:
        ConfigError: When no document is left.
    """
    kept = list(_filtered(docs, data_cfg, f"{key}={source}"))
    if not kept:
        raise no_documents(data_cfg, source, key)
    return kept


def _filtered(docs: Iterable[Document], data_cfg: DataConfig, where: str) -> Iterator[Document]:
    """``docs`` without those too short or of only whitespace, at most ``data.max_documents``; how many were
    dropped is one info line (``where``: the source, as its key names it) once the reading ends."""
    kept = dropped = 0
    for doc in docs:
        text = doc.text if doc.messages is None else doc.full_text
        if not text or len(text) < data_cfg.min_chars or (data_cfg.min_chars > 0 and text.isspace()):
            dropped += 1  # empty (no token to pack), too short, or only whitespace (kept with min_chars=0)
            continue
        yield doc
        kept += 1
        if 0 < data_cfg.max_documents <= kept:
            break
    if dropped:
        why = (
            "empty"
            if data_cfg.min_chars == 0
            else f"shorter than data.min_chars={data_cfg.min_chars}, or only whitespace"
        )
        logger.info("%s: %s dropped (%s)", where, counted(dropped, "document"), why)


def no_documents(data_cfg: DataConfig, source: str, key: str) -> ConfigError:
    """The error of a source with no document left after filtering: a file (or every file of a directory or
    glob) with nothing but whitespace had none to filter, and is named so (lowering ``data.min_chars`` is
    no fix for it); otherwise the filter is named."""
    empty = _empty_files(source)
    if empty:
        return ConfigError(
            f"{key} {source}: {empty}: no documents to read; fill it or point {key} at the data"
        )
    return ConfigError(
        f"{key} {source}: no documents left after filtering (min_chars={data_cfg.min_chars}); "
        "lower data.min_chars or check the source and its fields"
    )


EMPTY_PROBE_BYTES = 1 << 20  # a file larger than this is not read again to see whether it is blank


def _empty_files(source: str) -> str:
    """'the file is empty (0 bytes)', 'the file holds only whitespace', 'its 3 files are empty or only whitespace' for a
    local source with nothing but whitespace in it; '' otherwise (an ``hf:``/builtin source, some text)."""
    if source == "pystdlib" or source.startswith(("pystdlib:", "hf:")):
        return ""
    path = Path(source)
    try:
        if path.is_file():
            files = [path]
        elif path.is_dir():
            files = list_directory(path).files
        elif glob.has_magic(source):
            files = list_glob(source).files
        else:
            return ""
        if not files and path.is_dir() and (outputs := list_directory(path).outputs):
            shown = ", ".join(f"{o.relative_to(path)} ({kind})" for o, kind in outputs[:3])
            return f"it holds only ekd's own outputs ({shown}{', …' if len(outputs) > 3 else ''}), which are not data"
        if not files:
            return "the directory holds no files" if path.is_dir() else ""
        if not all(_blank(f) for f in files):
            return ""
        if path.is_file():
            return (
                "the file is empty (0 bytes)"
                if path.stat().st_size == 0
                else "the file holds only whitespace"
            )
        return (
            f"{'its file is' if len(files) == 1 else f'its {len(files)} files are'} empty or only whitespace"
        )
    except OSError:
        return ""


def _blank(path: Path) -> bool:
    """Whether ``path`` holds nothing but whitespace (read only when it is at most EMPTY_PROBE_BYTES)."""
    size = path.stat().st_size
    if size > EMPTY_PROBE_BYTES:
        return False
    return not path.read_bytes().strip()


# ---------------------------------------------------------------------------------------------------------
# Dispatch
# ---------------------------------------------------------------------------------------------------------


def _read_source(
    source: str, fmt: str, data_cfg: DataConfig, key: str, skipped: SkippedRows | None = None
) -> Iterator[Document]:
    if source == "pystdlib" or source.startswith("pystdlib:"):
        split = source.partition(":")[2] or "train"
        if split not in PYSTDLIB_SPLITS:
            raise ConfigError(
                f"{key}: pystdlib has no split '{split}'; use one of {', '.join(PYSTDLIB_SPLITS)}"
            )
        splits = pystdlib_splits(eval_fraction=data_cfg.eval_fraction, names=[split])
        return iter(splits.get(split, []))
    if fmt == "hf" or source.startswith("hf:"):
        return _read_hf(source.removeprefix("hf:"), data_cfg, key, skipped)
    path = Path(source)
    _refuse_ekd_output(
        glob_root(source) if glob.has_magic(source) and not path.exists() else path, source, key
    )
    if fmt == "chat" and path.is_dir():
        raise _chat_directory(path, source, key)
    if fmt == "chat" and path.exists() and _format_from_suffix(path, key) == "text":
        raise ConfigError(
            f"{key}: data.format=chat reads conversations from JSONL, Parquet or hf: rows, not text files ({source})"
        )
    if path.is_dir():
        if fmt not in ("auto", "text"):
            raise ConfigError(f"{key}: {source} is a directory, which only data.format=text (or auto) reads")
        listing = list_directory(path)  # hidden files, ekd's own outputs and row files left out
        if listing.broken:  # try-out 139, F3: left out without a word, the corpus read in part
            more = f" (and {len(listing.broken) - 1} more)" if len(listing.broken) > 1 else ""
            raise ConfigError(
                f"{key}: {dangling_link(listing.broken[0])}{more}, or remove the link (the rest of the directory "
                "would be read without it)"
            )
        _refuse_saved_datasets(listing.files + listing.row_files, path, key, source)
        logger.info("%s", listing.describe(key, source))
        if not listing.files and listing.row_files:
            raise ConfigError(
                f"{key}: {source} holds no text files to read, only row files ({by_suffix(listing.row_files)}), "
                f"which a directory source leaves out; read their rows with {listing.row_glob(key, source)}"
            )
        texts = ["text"] * len(listing.files)  # one document per file, ids relative to the directory
        return _read_files(listing.files, texts, data_cfg, key, source, skipped, ids_under=path)
    if not path.exists():
        if glob.has_magic(source):
            return _read_glob(source, fmt, data_cfg, key, skipped)
        raise _no_such_source(source, key)
    if fmt in ("auto", "chat"):
        fmt = _format_from_suffix(path, key)
    if fmt == "text":
        return _read_text_file(path, key)
    if fmt == "jsonl":
        return _read_jsonl(path, data_cfg, key, skipped)
    return _read_parquet(path, data_cfg, key, skipped)


def _no_such_source(source: str, key: str) -> ConfigError:
    return ConfigError(
        f"{key}: no such file or directory: {source}{read_as(source)}; check the path (or use 'pystdlib' or "
        "'hf:<name>')"
    )


def check_sources_exist(data_cfg: DataConfig) -> None:
    """Refuse a local ``data.source`` or ``data.eval_sources`` entry that names nothing, as reading it would — before
    a run directory is compared with the config (try-out 93, F3: a mistyped data.source on an existing run name was
    told to pass --overwrite first): a file or directory that is not there, a glob that matches no file (try-out
    95, F6), an ``hf:`` path spelled as one (``/``, ``./``, ``../``, ``~``). Hub names are left to the reader.

    Raises:
        ConfigError: naming the key and the path.
    """
    sources = [("data.source", data_cfg.source)]
    sources += [(f"data.eval_sources.{name}", src) for name, src in data_cfg.eval_sources.items()]
    for key, source in sources:
        if source.startswith("pystdlib"):
            continue
        if source.startswith("hf:") or (data_cfg.format == "hf" and key == "data.source"):
            if name := source.removeprefix("hf:").strip():  # hf: alone is said by the reader
                check_dataset_path(name, key)  # a well-formed hub name is left to datasets
        elif Path(source).exists():
            # a file named with a glob's characters (notes[v1].txt) is that file, as the reader reads it
            # (try-out 137, F4: refused as a glob that matches nothing)
            continue
        elif glob.has_magic(source):
            if not (listing := list_glob(source)).files:
                raise _no_glob_match(source, key, listing)
        else:
            raise _no_such_source(source, key)


def _no_glob_match(source: str, key: str, listing: DirectoryListing) -> ConfigError:
    left_out = " outside ekd's own outputs and lock files" if listing.outputs or listing.locks else ""
    return ConfigError(f"{key}: glob '{source}' matches no files{left_out}; check the pattern")


def _holds_weights(directory: Path) -> bool:
    """Whether ``directory`` holds a weights file ``from_pretrained`` reads (:data:`ekd.models.load.WEIGHT_FILES`)."""
    # torch and transformers are imported only for a directory with a config.json
    from ekd.models.load import WEIGHT_FILES

    return any(next(directory.glob(pattern), None) for pattern in WEIGHT_FILES)


def _saved_dataset(directory: Path) -> bool:
    """Whether ``directory`` is what ``datasets``' ``save_to_disk`` writes: a ``Dataset`` (``state.json``,
    ``dataset_info.json`` and ``.arrow`` files) or a ``DatasetDict`` (``dataset_dict.json`` and a directory per
    split)."""
    if (directory / "dataset_dict.json").is_file():
        return True
    state, info = directory / "state.json", directory / "dataset_info.json"
    return state.is_file() and info.is_file() and next(directory.glob("*.arrow"), None) is not None


def _refuse_saved_datasets(files: list[Path], root: Path, key: str, source: str) -> None:
    """Refuse a directory or glob source whose files lie in a ``datasets`` save_to_disk directory below ``root``
    (try-out 95, F1: one level down, its dataset_info.json and state.json trained and its rows were passed over).

    Raises:
        ConfigError: naming the dataset directory and ``hf:`` for it.
    """
    known: dict[Path, bool] = {}
    for f in files:
        for parent in f.parents:
            if parent == root or root not in parent.parents:
                break
            if known.setdefault(parent, _saved_dataset(parent)):
                other = "narrow the glob" if glob.has_magic(source) else f"move it out of {source}"
                raise ConfigError(
                    f"{key}: {source} holds a Hugging Face datasets directory, {parent} (save_to_disk), whose files "
                    f"are not text; name it hf:{parent} to read its rows, or {other}"
                )


def _refuse_ekd_output(path: Path, source: str, key: str) -> None:
    """Refuse a local source that is, or lies in, one of ekd's outputs — a run directory, teacher cache, token
    store or comparison (try-out 52, F9: ``data.source=runs/kd-s0`` trained on its JSON files without an error;
    outputs *below* a source were already left out).

    Raises:
        ConfigError: naming the output and its kind.
    """
    if not path.exists():
        return
    # try-out 57, F5: data.source=<model.teacher's directory> trained on its config and tokenizer JSON (a file
    # named beside a model's files may be a corpus: only the directory itself is refused)
    if path.is_dir() and (path / "config.json").is_file() and _holds_weights(path):
        raise ConfigError(
            f"{key}: {source} is a model directory (config.json and weights), not data; point {key} at your "
            "corpus (text files, JSONL or Parquet rows)"
        )
    # try-out 94, F3: a `datasets` save_to_disk directory was read as text files: its dataset_info.json and
    # state.json trained, its .arrow rows passed over as "not UTF-8"
    if path.is_dir() and not source.startswith("hf:") and _saved_dataset(path):
        raise ConfigError(
            f"{key}: {source} is a Hugging Face datasets directory (save_to_disk), not text files; name it "
            f"hf:{path} to read its rows"
        )
    if (found := enclosing_output(path)) is None:
        return
    directory, kind = found
    where = "is" if directory.absolute() == path.absolute() else f"lies in {directory}, which is"
    if glob.has_magic(source) and not Path(source).exists():
        where = f"reads {directory}, which is"
    raise ConfigError(
        f"{key}: {source} {where} a {kind} ekd wrote, not data; point {key} at your corpus (text files, JSONL or "
        "Parquet rows)"
    )


def _chat_directory(path: Path, source: str, key: str) -> ConfigError:
    """The refusal of a directory source under ``data.format=chat`` (a directory reads one text document per
    file), naming the glob that reads its row files' rows when it holds some (try-out 40: the message spoke of
    text files to a user whose directory held one ``chat.jsonl``)."""
    listing = list_directory(path)
    if not listing.row_files:
        return ConfigError(
            f"{key}: data.format=chat reads conversations from JSONL, Parquet or hf: rows, not a directory of "
            f"text files ({source} holds no .jsonl or .parquet file); name the row files, or a glob of them"
        )
    return ConfigError(
        f"{key}: data.format=chat reads conversations from JSONL, Parquet or hf: rows, and a directory source "
        f"reads text files only ({source} holds {by_suffix(listing.row_files)}); read their rows with a glob: "
        f"{listing.row_glob(key, source)}"
    )


def _read_glob(
    source: str, fmt: str, data_cfg: DataConfig, key: str, skipped: SkippedRows | None
) -> Iterator[Document]:
    """The documents of every file a glob matches (:func:`ekd.data.text_dir.list_glob`: ekd's outputs and lock
    files left out), in sorted path order, each read by its format as naming it alone would
    (``data.format=auto``/``chat``: JSONL and Parquet files give their rows) — but a text file is one document
    (a glob, like a directory, reads one document per file). ``data.format`` text, jsonl or parquet reads
    every file so.

    Raises:
        ConfigError: The glob matches no file; with ``data.format=chat``, it matches a text file.
    """
    listing = list_glob(source)
    if not listing.files:
        raise _no_glob_match(source, key, listing)
    _refuse_saved_datasets(listing.files, listing.root, key, source)
    logger.info("%s", listing.describe(key, source))
    formats = [_glob_format(p, fmt) for p in listing.files]
    if fmt == "chat" and "text" in formats:
        first = listing.files[formats.index("text")]
        raise ConfigError(
            f"{key}: data.format=chat reads conversations from JSONL, Parquet or hf: rows, not text files "
            f"({source} matches {first}); narrow the glob to the row files (e.g. *.jsonl)"
        )
    return _read_files(listing.files, formats, data_cfg, key, source, skipped)


def _glob_format(path: Path, fmt: str) -> str:
    """How a glob reads ``path``: ``fmt`` when it names one, else 'jsonl' / 'parquet' by suffix or 'text'."""
    if fmt not in ("auto", "chat"):
        return fmt
    return SUFFIX_FORMATS.get(path.suffix.lower(), "text")


def _read_files(
    files: list[Path],
    formats: list[str],
    data_cfg: DataConfig,
    key: str,
    source: str,
    skipped: SkippedRows | None,
    ids_under: Path | None = None,
) -> Iterator[Document]:
    """Each file's documents in turn: rows of a 'jsonl' or 'parquet' file, a 'text' file as one document, its
    id the path relative to ``ids_under`` (a directory source), else the path as matched (a glob); files that
    are not text (:func:`_whole_file`) are skipped, with one warning line naming the first few."""
    not_text: list[str] = []  # 'doc_id (why)' of each skipped file
    read = 0
    for path, fmt in zip(files, formats):
        doc_id = (path if ids_under is None else path.relative_to(ids_under)).as_posix()
        if fmt == "jsonl":
            for doc in _read_jsonl(path, data_cfg, key, skipped):
                read += 1
                yield doc
        elif fmt == "parquet":
            for doc in _read_parquet(path, data_cfg, key, skipped):
                read += 1
                yield doc
        elif isinstance(doc := _whole_file(path, doc_id), Document):
            read += 1
            yield doc
        else:
            not_text.append(f"{doc_id} ({doc})")
    if not_text and not read:  # try-out 52, F7: was 'no documents left after filtering; lower data.min_chars'
        raise ConfigError(
            f"{key} {source}: none of its files is text (skipped {counted(len(not_text), 'file')}: "
            f"{_first_skipped(not_text)}); point {key} at UTF-8 text files, or at JSONL/Parquet rows"
        )
    _warn_not_text(not_text, key, source)


# the first bytes of compressed files (try-out 94, F7: a .jsonl.gz was told to set data.format, then that its
# first line was not UTF-8 and to re-encode it)
COMPRESSED_MAGIC = {
    b"\x1f\x8b": ("gzip", "gunzip -c"),
    b"BZh": ("bzip2", "bunzip2 -c"),
    b"\xfd7zXZ\x00": ("xz", "unxz -c"),
    b"\x28\xb5\x2f\xfd": ("zstd", "unzstd -c"),
    b"PK\x03\x04": ("zip", "unzip -p"),
}


def _compressed(path: Path, key: str) -> ConfigError | None:
    """The refusal of a compressed file (by its first bytes: ekd reads text, JSONL and Parquet uncompressed), or
    None."""
    try:
        with path.open("rb") as f:
            head = f.read(8)
    except OSError:
        return None
    for magic, (name, command) in COMPRESSED_MAGIC.items():
        if head.startswith(magic):
            return ConfigError(
                f"{key}: {path} is {name}-compressed, which ekd does not read; decompress it ({command} FILE > NEW, "
                "whatever its name) and name NEW"
            )
    return None


def _array_hint(line_no: int, line: str) -> str:
    """What a first line opening a JSON array says (a file of ``json.dump(rows)``, not JSON Lines), or ''."""
    if line_no != 1 or not line.lstrip().startswith("["):
        return ""
    return (
        " (the file looks like one JSON array, not JSON Lines: one object per line; convert it, e.g. "
        "jq -c '.[]' FILE > FILE.jsonl)"
    )


def _format_from_suffix(path: Path, key: str) -> str:
    suffix = path.suffix.lower()
    if suffix in SUFFIX_FORMATS:
        return SUFFIX_FORMATS[suffix]
    if (compressed := _compressed(path, key)) is not None:
        raise compressed
    # an eval source is read by its extension alone (data.format is the training source's): its fix is a name
    fix = (
        f"name it with one of {', '.join(sorted(SUFFIX_FORMATS))} (data.format applies to data.source only)"
        if key.startswith("data.eval_sources")
        else "set data.format to text, jsonl or parquet"
    )
    raise ConfigError(f"{key}: cannot tell the format of {path} from its extension '{suffix}'; {fix}")


# ---------------------------------------------------------------------------------------------------------
# Text
# ---------------------------------------------------------------------------------------------------------


TEXT_CHUNK_CHARS = 1 << 20  # characters read at a time from a text file


def _read_text_file(path: Path, key: str) -> Iterator[Document]:
    """The documents of ``DOCUMENT_SEPARATOR.split(text)``, read ``TEXT_CHUNK_CHARS`` characters at a time.

    A separator is taken only once a line with text follows it in the buffer (it takes every blank line after
    the first two, and the buffer may end inside one), so the pieces are exactly those of splitting the whole
    file at once. Each chunk is searched once: what follows the last separator, up to the blank lines a new
    separator may start in, waits in ``pending`` (try-out 98, F1: the whole unfinished document was searched
    again for every chunk — quadratic in a file with no separator).
    """
    index = 0
    pending: list[str] = []  # the document being read, before ``buffer``: holds no separator
    buffer = ""  # the unsearched text: the blank tail a separator may start in, then the new chunk
    try:
        with path.open(encoding="utf-8-sig") as f:  # a leading byte-order mark is no text (try-out 53, F7)
            first = True
            while True:
                chunk = f.read(TEXT_CHUNK_CHARS)
                if first and "\x00" in chunk[:BINARY_PROBE_CHARS]:
                    raise ConfigError(
                        f"{key}: {path} holds NUL bytes: a binary file, not text; name a text file (or set "
                        "data.format for rows)"
                    )
                first = False
                buffer += chunk
                start = 0
                for m in DOCUMENT_SEPARATOR.finditer(buffer):
                    if chunk and not buffer[m.end() :].strip(" \t"):
                        break  # the separator may go on in the next chunk (more blank lines)
                    piece = "".join(pending) + buffer[start : m.start()]
                    pending = []
                    if piece.strip():
                        yield Document(text=piece.strip("\n"), doc_id=f"{path.name}#{index}")
                    index += 1
                    start = m.end()
                if not chunk:
                    buffer = buffer[start:]
                    break
                # a separator not yet taken starts in the blank lines at the end (after the last other character)
                tail = len(buffer.rstrip(" \t\n")) if buffer[-1:].isspace() else len(buffer)
                tail = max(tail, start)
                pending.append(buffer[start:tail])
                buffer = buffer[tail:]
    except UnicodeDecodeError:
        if (compressed := _compressed(path, key)) is not None:
            raise compressed from None
        raise ConfigError(
            f"{key}: {path} is not UTF-8 text ({_utf8_error_at(path)}); re-encode the file as UTF-8"
        ) from None
    if (rest := "".join(pending) + buffer).strip():
        yield Document(text=rest.strip("\n"), doc_id=f"{path.name}#{index}")


def _utf8_error_at(path: Path, chunk: int = 1 << 20) -> str:
    """Where ``path`` first stops being UTF-8: 'line 3, byte 12 of the line: 0xe9', as the JSONL reader names a
    row's (try-out 53, F2: a Latin-1 word in a text corpus was 'not UTF-8 text' with no place). Read in binary,
    ``chunk`` bytes at a time; a character cut at a chunk's end is carried into the next."""
    line, line_start, start, carry = 1, 0, 0, b""  # start: the file offset of data[0]
    with path.open("rb") as f:
        while more := f.read(chunk):
            data, carry = carry + more, b""
            bad = None
            try:
                data.decode("utf-8")
            except UnicodeDecodeError as e:
                if e.reason == "unexpected end of data" and e.end == len(data):  # cut by the chunk: carry it
                    carry = data[e.start :]
                else:
                    bad = e.start
            head = data[: len(data) - len(carry) if bad is None else bad]
            line += head.count(b"\n")
            if (last := head.rfind(b"\n")) >= 0:
                line_start = start + last + 1
            if bad is not None:
                return f"line {line}, byte {start + bad - line_start + 1} of the line: 0x{data[bad]:02x}"
            start += len(data) - len(carry)
    return f"line {line}: a character cut short at the end of the file" if carry else "the decoder's error"


BINARY_PROBE_CHARS = 8000  # a NUL among a file's first characters marks it binary (git's heuristic)


def _whole_file(path: Path, doc_id: str) -> Document | str:
    """The whole file as one document, or why it is not text: 'not UTF-8', or 'NUL bytes' — valid UTF-8 but
    binary, as a tar archive's padding or a zero-filled dump (try-out 51, F1: a .tar in a text directory was
    93% of the training tokens)."""
    try:
        text = path.read_text(encoding="utf-8-sig")  # a leading byte-order mark is no text
    except UnicodeDecodeError:
        return "compressed" if _compressed(path, "") is not None else "not UTF-8"
    if "\x00" in text[:BINARY_PROBE_CHARS]:
        return "NUL bytes"
    return Document(text=text, doc_id=doc_id)


SKIPPED_SHOWN = 3  # skipped files a warning names (all of them at DEBUG)


def _warn_not_text(skipped: list[str], key: str, source: str) -> None:
    """One warning line for the files of a directory or glob that are not text, naming the first
    :data:`SKIPPED_SHOWN` with why (try-out 51, F2: only their count was said; a latin-1 document was lost
    without a name); every one at DEBUG."""
    if not skipped:
        return
    recode = "re-encode a text file as UTF-8; " if any(s.endswith("(not UTF-8)") for s in skipped) else ""
    logger.warning(
        "%s=%s: skipped %s that %s not text: %s (%severy skipped file at log.level=DEBUG)",
        key,
        source,
        counted(len(skipped), "file"),
        "is" if len(skipped) == 1 else "are",
        _first_skipped(skipped),
        recode,  # not for binary files (NUL bytes): re-encoding is no fix there (try-out 52, F7)
    )
    for name in skipped:
        logger.debug("%s=%s: skipped %s", key, source, name)


def _first_skipped(skipped: list[str]) -> str:
    """'a.tar (NUL bytes), b.txt (not UTF-8), …': the first :data:`SKIPPED_SHOWN` skipped files, with why."""
    return ", ".join(skipped[:SKIPPED_SHOWN]) + (", …" if len(skipped) > SKIPPED_SHOWN else "")


# ---------------------------------------------------------------------------------------------------------
# Rows: JSONL, Parquet, HF datasets
# ---------------------------------------------------------------------------------------------------------


def _fields(data_cfg: DataConfig, skipped: SkippedRows | None = None) -> list[str]:
    if skipped is not None:  # chat rows
        return [data_cfg.messages_field]
    if data_cfg.prompt_field or data_cfg.response_field:
        if not (data_cfg.prompt_field and data_cfg.response_field):
            raise ConfigError("data.prompt_field and data.response_field must be set together")
        return [data_cfg.prompt_field, data_cfg.response_field]
    return [data_cfg.text_field]


def _field_key(data_cfg: DataConfig, field_name: str) -> str:
    if field_name == data_cfg.messages_field and data_cfg.format == "chat":
        return "data.messages_field"
    if field_name == data_cfg.prompt_field:
        return "data.prompt_field"
    if field_name == data_cfg.response_field:
        return "data.response_field"
    return "data.text_field"


def _set_field(data_cfg: DataConfig, name: str, present: Iterable[Any]) -> str:
    """The fix for text field ``name`` missing from a row or table that has ``present``: set its key, or — rows
    holding ``data.messages_field`` (conversations) read as text — ``data.format=chat`` (try-out 68, F2: told
    to set data.text_field to the conversations)."""
    fix = f"set {_field_key(data_cfg, name)}"
    if data_cfg.format != "chat" and data_cfg.messages_field in map(str, present):
        return f"set data.format=chat to read its '{data_cfg.messages_field}' as conversations, or {fix}"
    return fix


def _row_document(
    values: list[Any],
    fields: list[str],
    where: str,
    doc_id: str,
    data_cfg: DataConfig,
    skipped: SkippedRows | None = None,
    columnar: bool = False,
    tools: Any = None,
) -> Document | None:
    """The row's Document; a chat row (``skipped`` given) whose messages or tool definitions (``tools``, the
    value of ``data.tools_field``) are malformed is counted there and gives None. ``columnar``: a Parquet or
    datasets row (:func:`ekd.data.chat.parse_messages`)."""
    if skipped is not None:
        skipped.seen += 1
        try:
            messages = parse_messages(values[0], columnar)
            return Document(text="", doc_id=doc_id, messages=messages, tools=parse_tools(tools, columnar))
        except RejectedRow as e:
            skipped.add(doc_id, e)
            return None
    for name, value in zip(fields, values):
        if not isinstance(value, str):
            got = "null" if value is None else type(value).__name__
            raise ConfigError(
                f"{where}: field '{name}' must be a string, got {got}; fix the row or {_field_key(data_cfg, name)}"
            )
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # a lone surrogate ("\ud800" in JSON) is not text
            raise ConfigError(
                f"{where}: field '{name}' holds an unpaired surrogate at character {e.start}; fix the row"
            ) from None
    if len(fields) == 2:
        return Document(text=values[1], doc_id=doc_id, prompt=values[0])
    return Document(text=values[0], doc_id=doc_id)


def _read_jsonl(
    path: Path, data_cfg: DataConfig, key: str, skipped: SkippedRows | None = None
) -> Iterator[Document]:
    fields = _fields(data_cfg, skipped)
    rows = 0  # rows read (objects)
    missing = 0  # chat rows of this file without the messages field (a glob shares ``skipped`` among files)
    keys: dict[str, None] = {}  # chat rows without the messages field: their keys, in order of appearance
    has_tools = False  # a row has data.tools_field
    first_keys: list[str] = []  # the first row's fields
    with path.open("rb") as f:  # bytes, so that invalid UTF-8 is reported with its line number
        for line_no, raw in enumerate(f, start=1):
            where = f"{key} {path} line {line_no}"
            try:
                # a byte-order mark is no JSON: the file's, or a joined file's at a later line (`cat a b`)
                line = raw.decode("utf-8-sig")
            except UnicodeDecodeError as e:
                if line_no == 1 and (compressed := _compressed(path, key)) is not None:
                    raise compressed from None
                raise ConfigError(
                    f"{where}: not UTF-8 (byte {e.start + 1} of the line); re-encode the file as UTF-8"
                ) from None
            if not line.strip():
                continue
            try:
                row = json.loads(line.rstrip("\r\n"))  # the newline is no part of the row (nor of its error)
            except json.JSONDecodeError as e:
                raise ConfigError(
                    f"{where}: not valid JSON ({e.msg} column {e.colno}); fix or remove the line"
                    f"{_array_hint(line_no, line)}"
                ) from None
            if not isinstance(row, dict):
                raise ConfigError(
                    f"{where}: expected a JSON object, got {type(row).__name__}{_array_hint(line_no, line)}"
                )
            rows += 1
            if skipped is not None and fields[0] not in row:  # a chat row without messages: skipped, counted
                keys.update(dict.fromkeys(map(str, row)))
                skipped.seen += 1
                skipped.add(f"{path.name}:{line_no}", _no_messages(fields[0], row))
                missing += 1
                if missing == rows == FIELD_PROBE_ROWS:  # a wrong field name: stop now
                    raise _no_field_anywhere(key, path, fields[0], keys, f"none of the first {rows} rows has")
                continue
            for name in fields:
                if name not in row:  # after rows that had it, this row is the odd one, not the field name
                    fix = (
                        f"the {counted(rows - 1, 'row')} before it have it: fix or remove the line"
                        if rows > 1
                        else _set_field(data_cfg, name, row)
                    )
                    raise ConfigError(
                        f"{where}: missing field '{name}' (row keys: {', '.join(map(str, row)) or 'none'}); {fix}"
                    )
            tools = row.get(data_cfg.tools_field) if skipped is not None else None
            has_tools = has_tools or data_cfg.tools_field in row
            first_keys = first_keys or list(map(str, row))  # named if no row has the tools field
            doc = _row_document(
                [row[n] for n in fields],
                fields,
                where,
                f"{path.name}:{line_no}",
                data_cfg,
                skipped,
                tools=tools,
            )
            if doc is not None:
                yield doc
    if skipped is not None and rows and missing == rows:
        raise _no_field_anywhere(key, path, fields[0], keys, "no row has")
    if skipped is not None and rows and not has_tools:
        _say_no_tools_field(data_cfg, f"{key} {path}", "row", first_keys)


def _no_field_anywhere(key: str, path: Path, name: str, keys: Iterable[str], which: str) -> ConfigError:
    keys = list(keys)
    return ConfigError(
        f"{key} {path}: {which} the field '{name}' (data.messages_field; the rows have: "
        f"{_names(keys) or 'no fields'}){did_you_mean(name, map(str, keys))}; set data.messages_field to the "
        "field holding each conversation"
    )


def _no_messages(name: str, row: dict) -> RejectedRow:
    return RejectedRow(f"no field '{name}' (row keys: {_names(row) or 'none'})", NO_MESSAGES)


def _names(names: Iterable[Any], most: int = 12) -> str:
    """``a, b, c`` — at most ``most`` names, then ``…``."""
    names = [str(n) for n in names]
    return ", ".join(names[:most]) + (", …" if len(names) > most else "")


def _tools_column(
    columns: list[str], data_cfg: DataConfig, skipped: SkippedRows | None, where: str
) -> list[str]:
    """``[data.tools_field]`` when chat rows (``skipped`` given) come from a table that has that column, else []
    (said when the field was set by name: a typo would drop every row's definitions)."""
    if skipped is None:
        return []
    if data_cfg.tools_field not in columns:
        _say_no_tools_field(data_cfg, where, "column", columns)
        return []
    return [data_cfg.tools_field]


def _say_no_tools_field(data_cfg: DataConfig, where: str, what: str, names: Iterable[Any]) -> None:
    """A warning when ``data.tools_field`` names a field no row has and is not the default (rows without tool
    definitions are the common case; a field set by name that nothing holds is a typo). ``what``: ``row`` (JSONL:
    ``names`` the keys the rows have) or ``column`` (a table's columns); said as the messages field's error is, with
    the names there and the close one (try-out 76, F8: 'no row named ...')."""
    if data_cfg.tools_field != DataConfig().tools_field:
        names = list(names)
        has, there = (
            ("no row has the field", "the first row's") if what == "row" else ("no column is named", "the")
        )
        logger.warning(
            "%s: %s '%s' (data.tools_field; %s fields: %s): the rows are rendered without tool definitions%s",
            where,
            has,
            data_cfg.tools_field,
            there,
            _names(names) or "none",
            did_you_mean(data_cfg.tools_field, map(str, names)) or "; check the name",
        )


def _check_columns(columns: list[str], fields: list[str], what: str, data_cfg: DataConfig, key: str) -> None:
    for name in fields:
        if name not in columns:
            raise ConfigError(
                f"{key} {what}: no column '{name}' (columns: {', '.join(columns)}); "
                f"{_set_field(data_cfg, name, columns)}"
            )


def _read_parquet(
    path: Path, data_cfg: DataConfig, key: str, skipped: SkippedRows | None = None
) -> Iterator[Document]:
    import pyarrow.parquet as pq

    fields = _fields(data_cfg, skipped)
    try:
        parquet = pq.ParquetFile(path)
    except Exception as e:  # pyarrow raises several types for corrupt files
        raise ConfigError(
            f"{key}: {path} is not a readable Parquet file ({e}); check the file or data.format"
        ) from None
    _check_columns(parquet.schema_arrow.names, fields, str(path), data_cfg, key)
    tools = _tools_column(parquet.schema_arrow.names, data_cfg, skipped, f"{key} {path}")
    row = 0
    for batch in parquet.iter_batches(columns=fields + tools, batch_size=4096):
        columns = [batch.column(n).to_pylist() for n in fields + tools]
        for values in zip(*columns):
            row_tools = values[-1] if tools else None
            doc = _row_document(
                list(values[: len(fields)]),
                fields,
                f"{key} {path} row {row}",
                f"{path.name}:{row}",
                data_cfg,
                skipped,
                columnar=True,
                tools=row_tools,
            )
            if doc is not None:
                yield doc
            row += 1


def _wrong_hf_key(first: str, name: str, data_cfg: DataConfig, key: str) -> tuple[str, str] | None:
    """(the key, its line) for a ``datasets`` failure that names a split or configuration the dataset has not got
    — ``data.hf_split`` / ``data.hf_name`` —, None for any other failure: a cached dataset with a mistyped split was
    said to be missing from the cache and to need a download (try-out 152, F7)."""
    lowered = first.lower()
    if "unknown split" in lowered:
        split = data_cfg.hf_split
        return (
            "data.hf_split",
            f"data.hf_split={split}: {key} hf:{name} has no such split ({first}); set data.hf_split",
        )
    if "configurations in the cache" in lowered or "config name is missing" in lowered:
        return "data.hf_name", (
            f"data.hf_name: {key} hf:{name} has several configurations ({first}); set data.hf_name to one"
        )
    if ("for config" in lowered and "couldn't find cache" in lowered) or "builderconfig" in lowered:
        shown = data_cfg.hf_name or "(none)"
        return "data.hf_name", (
            f"data.hf_name={shown}: {key} hf:{name} has no such configuration ({first}); check data.hf_name"
        )
    return None


def _read_hf(
    name: str, data_cfg: DataConfig, key: str, skipped: SkippedRows | None = None
) -> Iterator[Document]:
    import datasets

    from ekd.log_level import quiet_dataset_progress

    fields = _fields(data_cfg, skipped)
    name = name.strip()
    if not name:
        raise ConfigError(
            f"{key}=hf: names no dataset; write hf:<hub id> or hf:<directory saved by save_to_disk>"
        )
    path = Path(name)
    _refuse_ekd_output(path, f"hf:{name}", key)  # a local directory datasets would read (try-out 54, F7)
    offline = check_dataset_reachable(name, key)  # "" or why the hub is not used (then: the cache only)
    from_disk = path.is_dir() and ((path / "state.json").exists() or (path / "dataset_dict.json").exists())
    try:
        with quiet_dataset_progress():
            if from_disk:
                ds: Any = datasets.load_from_disk(str(path))
            else:
                ds = datasets.load_dataset(
                    name, data_cfg.hf_name or None, split=data_cfg.hf_split, streaming=data_cfg.hf_streaming
                )
    except Exception as e:  # datasets raises many types (missing, offline, bad config); report one line
        first = first_line(e)
        if wrong := _wrong_hf_key(first, name, data_cfg, key):  # the dataset is there: a key is wrong
            raise ConfigError(wrong[1], keys=(wrong[0],)) from None
        if offline:
            raise ConfigError(
                f"{key}: cannot load dataset hf:{name} ({offline}) and it is not in the datasets cache ({first});"
                " save it with Dataset.save_to_disk where the hub is reachable and pass that directory, or fetch"
                " it into the cache (HF_HOME) there"
            ) from None
        raise ConfigError(
            f"{key}: could not load dataset hf:{name} ({first}); check the name/path and data.hf_name"
        ) from None
    if isinstance(ds, (datasets.DatasetDict, datasets.IterableDatasetDict)):
        if data_cfg.hf_split not in ds:
            raise ConfigError(
                f"data.hf_split: hf:{name} has no split '{data_cfg.hf_split}' (splits: {', '.join(ds)})"
            )
        ds = ds[data_cfg.hf_split]
    elif from_disk and data_cfg.hf_split != DataConfig().hf_split:
        # try-out 40: it was ignored without a word
        raise ConfigError(
            f"data.hf_split={data_cfg.hf_split}: hf:{name} is a single Dataset saved by save_to_disk, which has no "
            f"splits; leave data.hf_split at its default ({DataConfig().hf_split}) to read all its rows, or save a "
            "DatasetDict"
        )
    if ds.column_names is not None:  # a streamed dataset may know its columns only from its first rows
        _check_columns(list(ds.column_names), fields, f"hf:{name}", data_cfg, key)
    row = 0
    tools: list[str] = []  # [data.tools_field] when the rows have it (from the first batch)
    for batch in ds.iter(batch_size=1024):  # rows in batches, never the whole dataset at once
        if row == 0:
            _check_columns(list(batch), fields, f"hf:{name}", data_cfg, key)
        if row == 0:
            tools = _tools_column(list(batch), data_cfg, skipped, f"{key} hf:{name}")
        for values in zip(*(batch[n] for n in fields + tools)):
            row_tools = values[-1] if tools else None
            doc = _row_document(
                list(values[: len(fields)]),
                fields,
                f"{key} hf:{name} row {row}",
                f"{path.name or name}:{row}",
                data_cfg,
                skipped,
                columnar=True,
                tools=row_tools,
            )
            if doc is not None:
                yield doc
            row += 1
