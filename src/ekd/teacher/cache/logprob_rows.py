"""Rows of teacher top-K log-probabilities written by other tools, read into one next-token layout.

Two column layouts are read from Parquet or JSONL (one row per document):

``columns`` — a token column (``input_ids``; L ids), an ids column (L lists of K token ids) and a log-prob
column (L lists of K floats): row j is the teacher's distribution *after reading tokens 0..j*, i.e. over the
token at j + 1 (the ``logits[j]`` convention of a causal LM). Axolotl's KD datasets (``kd.chat_template``
v2: ``input_ids``, ``target_token_ids`` and the ``logprobs_field``), DistillKit-style captures stored as
top-K ids + logprobs, and Tinker's ``TopkPromptLogprobs`` (``token_ids``/``logprobs``) have this layout.

``vllm`` — vLLM's ``prompt_logprobs`` (``SamplingParams(prompt_logprobs=K)``) serialized per row: a list of L
entries, the first ``null``, entry i a mapping ``{token_id: logprob}`` (or ``{token_id: {"logprob": ...}}``,
vLLM's ``Logprob`` as a dict) for the token *at* i given tokens < i — K entries, plus the prompt token when it
is not among them. Entry i becomes row i − 1; the last position has no row. The token column is
``prompt_token_ids`` (``RequestOutput.prompt_token_ids``) or ``input_ids``.

Values are natural-log probabilities of the teacher's *full* softmax at τ = 1: the K of a row need not sum
to 1 (what they miss is the tail). A row may hold more than K entries (vLLM adds the prompt token); its K
largest are kept, which are the teacher's top K. Not read: DistillKit's compressed logit columns (decompress
them to ids + logprobs first) and logits instead of log-probabilities (rows whose exp sums above 1 are
refused).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ekd.teacher.cache.format import CacheError
from ekd.words import counted

TOKEN_COLUMNS = ("input_ids", "prompt_token_ids")
ID_COLUMNS = ("target_token_ids", "topk_ids", "top_ids", "token_ids")
LOGPROB_COLUMNS = ("prompt_logprobs", "target_logprobs", "logprobs", "topk_logprobs", "top_logprobs")
MASS_SLACK = 1e-3  # Σ_K p may exceed 1 by rounding of the stored logprobs (fp16/fp32 storage)


@dataclass(frozen=True)
class Columns:
    """Column names (None = find one of the usual names)."""

    text: str
    tokens: str | None = None
    ids: str | None = None
    logprobs: str | None = None


@dataclass
class SourceRow:
    """One document's teacher data, next-token aligned.

    tokens (L,) int64; ids (R, K') int64 and logprobs (R, K') float32 with R ≤ L rows, row j over token j+1;
    K' ≥ K, entries sorted by descending logprob (padding −inf)."""

    tokens: np.ndarray
    ids: np.ndarray
    logprobs: np.ndarray


class SourceTable:
    """A ``.parquet`` or ``.jsonl`` file of rows, read without loading it: one column streamed, rows fetched by
    number.

    JSONL is read line by line; :meth:`column` records each row's byte offset, so :meth:`row` is one seek and
    one line. Parquet is read in record batches of ``batch_rows`` rows; :meth:`row` keeps a cursor in the row
    group holding the row and moves forward through it, so rows asked for in increasing order read the file
    once (asking for an earlier row restarts its row group). Memory: one batch and one row group's cursor.

    Raises (every method):
        CacheError: one line naming the file (unreadable, not .parquet/.jsonl, a row out of range).
    """

    def __init__(self, path: Path, batch_rows: int = 64) -> None:
        self.path, self.batch_rows = path, batch_rows
        self.suffix = path.suffix.lower()
        if self.suffix not in (".parquet", ".jsonl", ".json"):
            raise CacheError(f"{path}: ekd cache import reads .parquet or .jsonl files")
        self._offsets: list[int] | None = None  # JSONL: byte offset of every row (after column())
        self._lines: list[int] = []  # JSONL: the file's line (1-based) of every row (after column())
        self._group_starts: list[int] = []  # Parquet: first row of every row group, then the row count
        self._cursor: tuple | None = None  # Parquet: (group, batches iterator, first row of batch, batch)
        with self._reading():
            if self.suffix == ".parquet":
                import pyarrow.parquet as pq

                self._file = pq.ParquetFile(path)
                meta = self._file.metadata
                self.names = list(self._file.schema_arrow.names)
                self._group_starts = np.cumsum(
                    [0] + [meta.row_group(g).num_rows for g in range(meta.num_row_groups)]
                ).tolist()
            else:
                with open(path, encoding="utf-8") as f:
                    first = next((line for line in f if line.strip()), None)
                self.names = list(json.loads(first)) if first else []

    def _reading(self):
        return _ReadErrors(self.path, self.suffix)

    def column(self, name: str) -> Iterator[Any]:
        """The values of column ``name``, row by row (a missing value is None)."""
        with self._reading():
            if self.suffix == ".parquet":
                for batch in self._file.iter_batches(batch_size=1024, columns=[name]):
                    yield from batch.column(0).to_pylist()
                return
            offsets: list[int] = []
            self._lines = []
            with open(self.path, "rb") as f:
                for number in itertools.count(1):  # the file's line, named in an error (try-out 56, F11)
                    at = f.tell()
                    line = f.readline()
                    if not line:
                        break
                    if line.strip():
                        offsets.append(at)
                        self._lines.append(number)
                        yield _json_object(line, f"{self.path} line {number}").get(name)
            self._offsets = offsets

    def where(self, index: int) -> str:
        """How an error names row ``index``: ``FILE line N`` (the file's line, 1-based) for JSONL after
        :meth:`column`, ``FILE row N`` (0-based) for Parquet (try-out 57, F6: a JSONL row was 'row 6', 0-based
        among the non-blank lines, where the file's line 7 or 9 held it)."""
        if self.suffix != ".parquet" and index < len(self._lines):
            return f"{self.path} line {self._lines[index]}"
        return f"{self.path} row {index}"

    def row(self, index: int, columns: list[str]) -> dict:
        """Row ``index`` (counted from 0 over the rows :meth:`column` read) with ``columns``."""
        with self._reading():
            if self.suffix != ".parquet":
                assert self._offsets is not None, "column() reads the offsets first"
                with open(self.path, "rb") as f:
                    f.seek(self._offsets[index])
                    return json.loads(f.readline())
            group = int(np.searchsorted(self._group_starts, index, side="right")) - 1
            cursor = self._cursor
            if cursor is None or cursor[0] != group or index < cursor[2]:
                batches = self._file.iter_batches(
                    batch_size=self.batch_rows, row_groups=[group], columns=columns
                )
                cursor = (group, batches, self._group_starts[group], None)
            group, batches, first, batch = cursor
            while batch is None or index >= first + batch.num_rows:
                first += 0 if batch is None else batch.num_rows
                batch = next(batches)
            self._cursor = (group, batches, first, batch)
            return batch.slice(index - first, 1).to_pylist()[0]


def _json_object(line: bytes, where: str) -> dict:
    """One JSONL line parsed as a JSON object; CacheError naming ``where`` (file and line) otherwise."""
    try:
        value = json.loads(line)
    except ValueError as e:
        reason = f"{e.msg} at column {e.colno}" if isinstance(e, json.JSONDecodeError) else str(e)
        raise CacheError(f"{where} is not JSON ({reason}); fix or remove that line") from None
    if not isinstance(value, dict):
        raise CacheError(f"{where} is not a JSON object (one row per line: {{column: value, ...}})")
    return value


class _ReadErrors:
    """Turn a read error of ``path`` into one CacheError line."""

    def __init__(self, path: Path, suffix: str) -> None:
        self.path, self.suffix = path, suffix

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, error, tb) -> bool:
        if (
            error is not None
            and isinstance(error, (OSError, ValueError, StopIteration))
            and not isinstance(error, CacheError)
        ):
            what = str(error).splitlines()[0] if str(error) else type(error).__name__
            raise CacheError(f"{self.path} cannot be read as {self.suffix[1:]} ({what})") from None
        return False


def resolve_columns(path: Path, names: set[str], given: Columns) -> tuple[str, Columns]:
    """The layout ('columns' or 'vllm') and the columns to read; CacheError naming a missing column."""

    def pick(value: str | None, candidates: tuple[str, ...], what: str, flag: str) -> str:
        if value:
            if value not in names:
                raise CacheError(f"{path} has no column '{value}' ({flag}); it has {sorted(names)}")
            return value
        for name in candidates:
            if name in names:
                return name
        raise CacheError(f"{path} has no {what} column (one of {list(candidates)}); name it with {flag}")

    text = pick(given.text, (), "text", "--text-column")
    tokens = pick(given.tokens, TOKEN_COLUMNS, "token", "--tokens-column")
    logprobs = pick(given.logprobs, LOGPROB_COLUMNS, "log-probability", "--logprobs-column")
    if given.ids is None and logprobs == "prompt_logprobs":
        return "vllm", Columns(text, tokens, None, logprobs)
    ids = pick(given.ids, ID_COLUMNS, "top-K token id", "--ids-column")
    return "columns", Columns(text, tokens, ids, logprobs)


def _bad(where: str, what: str) -> CacheError:
    return CacheError(f"{where}: {what}")


def _vllm_rows(entries: list, where: str) -> tuple[list[list[int]], list[list[float]]]:
    """prompt_logprobs entries 1..L−1 → (ids, logprobs) rows 0..L−2 (entry i is over token i)."""
    ids, lps = [], []
    for i, entry in enumerate(entries[1:], start=1):
        if not isinstance(entry, dict):
            raise _bad(where, f"prompt_logprobs[{i}] is not a mapping token id → logprob")
        row_ids, row_lps = [], []
        for key, value in entry.items():
            if value is None:  # Parquet stores a mapping column as a struct with nulls for absent ids
                continue
            row_ids.append(int(key))
            row_lps.append(float(value["logprob"] if isinstance(value, dict) else value))
        ids.append(row_ids)
        lps.append(row_lps)
    return ids, lps


def source_row(row: dict, layout: str, columns: Columns, k: int, where: str) -> SourceRow:
    """Check one row and bring it to the next-token layout with its K' largest entries first.

    Raises:
        CacheError: one line naming ``where`` (file and row) and the problem: a missing or null column,
            ragged ids/logprobs, fewer than K entries in a row, a NaN or positive log-probability, or a row
            whose probabilities sum above 1.
    """
    for name in (columns.tokens, columns.ids, columns.logprobs):
        if name is not None and row.get(name) is None:
            raise _bad(where, f"column '{name}' is null")
    tokens = np.asarray(row[columns.tokens], dtype=np.int64).reshape(-1)
    if layout == "vllm":
        raw_ids, raw_lps = _vllm_rows(list(row[columns.logprobs]), where)
        if len(raw_ids) != max(len(tokens) - 1, 0):
            raise _bad(
                where,
                f"{counted(len(raw_ids) + 1, 'prompt_logprobs entry')} for {counted(len(tokens), 'token')}",
            )
    else:
        raw_ids, raw_lps = list(row[columns.ids]), list(row[columns.logprobs])
        if len(raw_ids) != len(tokens) or len(raw_lps) != len(tokens):
            raise _bad(
                where,
                f"{counted(len(raw_ids), 'id row')} and {counted(len(raw_lps), 'logprob row')} for "
                f"{counted(len(tokens), 'token')}; need one per token",
            )
    width = max((len(r) for r in raw_ids), default=k)
    ids = np.zeros((len(raw_ids), max(width, k)), dtype=np.int64)
    lps = np.full(ids.shape, -np.inf, dtype=np.float32)
    for j, (r_ids, r_lps) in enumerate(zip(raw_ids, raw_lps)):
        if len(r_ids) != len(r_lps) or len(r_ids) < k:
            raise _bad(
                where,
                f"position {j} has {len(r_ids)} ids and {len(r_lps)} logprobs; method.topk={k} needs ≥ {k} of each (K mismatch)",
            )
        ids[j, : len(r_ids)] = r_ids
        lps[j, : len(r_lps)] = np.asarray(r_lps, dtype=np.float32)
    finite = np.isfinite(lps)
    if np.isnan(lps).any():
        j = int(np.argwhere(np.isnan(lps))[0, 0])
        raise _bad(where, f"position {j} has a NaN logprob")
    if (lps[finite] > MASS_SLACK).any():
        j = int(np.argwhere(lps > MASS_SLACK)[0, 0])
        raise _bad(
            where, f"position {j} has a logprob > 0 (values must be natural-log probabilities, not logits)"
        )
    mass = np.exp(lps.astype(np.float64)).sum(1)  # (R,) Σ p over the stored entries
    if (mass > 1 + MASS_SLACK).any():
        j = int(np.argmax(mass > 1 + MASS_SLACK))
        raise _bad(
            where,
            f"position {j}: probabilities sum to {mass[j]:.4f} > 1 (not log-probabilities of one softmax)",
        )
    order = np.argsort(-lps, axis=1, kind="stable")  # (R, K') largest first
    return SourceRow(tokens, np.take_along_axis(ids, order, 1), np.take_along_axis(lps, order, 1))


def first_mismatch(ours: list[int], theirs: np.ndarray) -> int | None:
    """First position where the source tokens differ from ours, or None. The source may lack our final
    token (a document scored without its EOS); any other length difference is a mismatch at the shorter end."""
    n = min(len(ours), len(theirs))
    diff = np.flatnonzero(np.asarray(ours[:n]) != theirs[:n])
    if diff.size:
        return int(diff[0])
    if len(theirs) == len(ours) or len(theirs) == len(ours) - 1:
        return None
    return n


__all__ = [
    "Columns",
    "SourceRow",
    "first_mismatch",
    "SourceTable",
    "resolve_columns",
    "source_row",
]
