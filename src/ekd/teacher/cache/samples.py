"""Samples as ``CacheWriter.add`` takes them (padded (P, Kmax) rows) → one checked :class:`RecordBatch`.

All samples of a batch are checked and compacted together: the rows of every sample are concatenated and each
check is one numpy pass; an error names the first sample that fails it. Positions are sorted within each
sample, padding entries (value 0) dropped and the entries of each row sorted by token id.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ekd.teacher.cache.encode import RecordBatch
from ekd.teacher.cache.format import Layout

STAT_NAMES = ("entropy", "logp_gold")


def _np(x: Any, dtype: Any = None) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x) if dtype is None else np.asarray(x, dtype=dtype)


def _rows(x: np.ndarray, n: int) -> np.ndarray:
    """(P, Kmax) view of per-position data; (0, 0) when there are no positions."""
    return x.reshape(n, -1) if n else x.reshape(0, 0)


def _cat_rows(parts: list[np.ndarray]) -> np.ndarray:
    """(P_r, K_r) arrays → (Σ P_r, max K_r), narrower rows padded with 0 (= padding entries)."""
    width = max((p.shape[1] for p in parts), default=0)
    if all(p.shape[1] == width for p in parts):
        return np.concatenate(parts)
    return np.concatenate([np.pad(p, ((0, 0), (0, width - p.shape[1]))) for p in parts])


def _sort_within(group: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Stable order sorting ``key`` (n,) within runs of equal, non-decreasing ``group`` (n,); the identity
    (no sort) when it already is — the teacher's rows come sorted."""
    if key.size < 2 or ((np.diff(key) >= 0) | (np.diff(group) != 0)).all():
        return np.arange(key.size)
    return np.lexsort((key, group))


def make_record_batch(layout: Layout, vocab_size: int, samples: list[dict]) -> RecordBatch:
    """Check and compact samples (dicts of ``CacheWriter.add``'s arguments) into a RecordBatch.

    Raises:
        ValueError: naming the first sample with positions out of [0, T) or repeated, stats of other keys or
            lengths, NaN statistics, non-finite values, ids out of [0, V) or repeated in a row, too many
            entries in a row, RS counts not summing to N, top-K probabilities > 1, missing or unexpected
            weights / tail, or non-positive weights.
    """
    r = len(samples)
    sids = np.array([int(s["sample_id"]) for s in samples], dtype=np.int64)  # (R,)
    pos_parts, ent_parts, lpg_parts, id_parts, val_parts = [], [], [], [], []
    for s in samples:
        pos = _np(s["positions"], np.int64).reshape(-1)
        n = len(pos)
        stats = s["stats"]
        if set(stats) != set(STAT_NAMES):
            raise ValueError(f"stats must have exactly the keys {STAT_NAMES}, got {sorted(stats)}")
        ent = _np(stats["entropy"], np.float32).reshape(-1)
        lpg = _np(stats["logp_gold"], np.float32).reshape(-1)
        ids, vals = _rows(_np(s["ids"], np.int64), n), _rows(_np(s["values"]), n)
        if len(ent) != n or len(lpg) != n or ids.shape != vals.shape:
            raise ValueError(
                f"sample {int(s['sample_id'])}: stats, ids and values must have one row per position"
            )
        pos_parts.append(pos), ent_parts.append(ent), lpg_parts.append(lpg)
        id_parts.append(ids), val_parts.append(vals)
    counts = np.array([len(p) for p in pos_parts], dtype=np.int64)  # (R,) P_r
    row_rec = np.repeat(np.arange(r), counts)  # (P,) sample of each row

    def fail(bad_rows: np.ndarray, what: str) -> None:
        if bad_rows.any():
            raise ValueError(f"sample {sids[row_rec[np.flatnonzero(bad_rows)[0]]]}: {what}")

    pos = np.concatenate(pos_parts) if r else np.zeros(0, np.int64)
    order = _sort_within(row_rec, pos)  # (P,) positions sorted within each sample (stable)
    pos = pos[order]
    same_sample = row_rec[1:] == row_rec[:-1]
    repeated = np.zeros(len(pos), dtype=bool)
    repeated[1:] = same_sample & (np.diff(pos) == 0)
    fail(
        (pos < 0) | (pos >= layout.block_length) | repeated,
        f"positions must be distinct and in [0, {layout.block_length})",
    )
    entropy = np.concatenate(ent_parts)[order]
    logp_gold = np.concatenate(lpg_parts)[order]
    fail(np.isnan(entropy) | np.isnan(logp_gold), "NaN in teacher statistics")
    ids_2d = _cat_rows(id_parts)[order]  # (P, Kmax)
    vals_2d = _cat_rows(val_parts)[order]
    if vals_2d.dtype.kind == "f":
        fail(~np.isfinite(vals_2d).all(1), "target values must be finite")
    keep = vals_2d > 0  # (P, Kmax) padding slots dropped
    row_lengths = keep.sum(1)  # (P,)
    row_of = np.nonzero(keep)[0]  # (E,) row of each kept entry
    flat_ids = ids_2d[keep]  # (E,)
    by_id = _sort_within(row_of, flat_ids)  # entries sorted by token id within each row
    flat_ids, row_of = flat_ids[by_id], row_of[by_id]

    def fail_entries(bad: np.ndarray, what: str) -> None:
        fail(np.bincount(row_of[bad], minlength=len(pos)) > 0, what)

    fail_entries((flat_ids < 0) | (flat_ids >= vocab_size), f"token ids must be in [0, {vocab_size})")
    twice = np.zeros(len(flat_ids), dtype=bool)
    twice[1:] = (np.diff(flat_ids) == 0) & (np.diff(row_of) == 0)
    fail_entries(twice, "a token id appears twice in one row")
    too_long = row_lengths > layout.max_row_length
    if too_long.any():
        fail(too_long, f"{row_lengths.max()} entries in a row, format allows {layout.max_row_length}")
    batch = RecordBatch(sids, counts, pos, entropy, logp_gold, row_lengths, flat_ids)
    if layout.value in ("count", "count_weight"):
        ints = vals_2d.astype(np.int64)
        fail(
            (ints != vals_2d).any(1) | (ints.sum(1) != layout.rs_samples),
            f"RS values must be integer counts summing to N={layout.rs_samples} per row",
        )
        batch.counts = ints[keep][by_id]
    else:
        probs = vals_2d.astype(np.float32)[keep][by_id]
        fail_entries(probs > 1.0 + 1e-3, "top-K probabilities must be ≤ 1")
        batch.probs = probs
    for name, needed, per_entry in (
        ("weights", layout.value == "count_weight", True),
        ("tail", layout.tail, False),
    ):
        given = [s.get(name) is not None for s in samples]
        if any(g != needed for g in given):
            what = "importance weights" if per_entry else "the ghost tail"
            verb = "are" if per_entry else "is"
            raise ValueError(f"{what} {verb} {'required' if needed else 'not used'} for this cache")
    if layout.value == "count_weight":
        w = _cat_rows([_rows(_np(s["weights"], np.float32), n) for s, n in zip(samples, counts)])[order]
        w = w[keep][by_id]
        fail_entries(~(np.isfinite(w) & (w > 0)), "importance weights must be finite and > 0")
        batch.weights = w
    if layout.tail:
        batch.tail = np.concatenate([_np(s["tail"], np.float32).reshape(-1) for s in samples])[order]
    return batch


__all__ = ["STAT_NAMES", "make_record_batch"]
