"""CacheReader: O(1) random access to cached teacher data through memory maps; verify; info.

``get(sample_id)`` maps the shard's ``.idx`` and ``.bin`` files (``numpy.memmap``, a bounded number kept
open) — the small ``.idx`` (24 B per sample) checked whole against the manifest's sha256 when it is mapped —
looks the record up by its fixed-width index entry, checks its CRC-32 and decodes it — only the record's
own pages of the ``.bin`` are read. A damaged ``.idx`` (an entry pointing at the wrong bytes) is thus named
as such, never reported as a CRC failure of the ``.bin``. ``batch`` lays a micro-batch out as the training
step wants it: (B, T) statistics, the (B, T) mask of cached positions and one SparseTarget for the cached
positions in flat (b·T + t) order, padded in memory only.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from ekd.io import bytes_under
from ekd.locks import holder_of, holder_said
from ekd.losses.targets import SparseTarget
from ekd.teacher.cache.format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    IDX_DTYPE,
    IDX_HEADER_BYTES,
    IDX_MAGIC,
    CacheError,
    Layout,
    MissingSampleError,
    Record,
    crc32,
    decode_record,
)
from ekd.teacher.cache.manifest import (
    KEPT_FILES,
    MANIFEST,
    compare_signatures,
    diff_summary,
    is_imported,
    read_manifest,
    rebuild_advice,
    refuse_a_file,
    refuse_missing_cache,
)
from ekd.words import counted


@dataclass
class CachedSample:
    """One sample's cached teacher data (P cached positions, rows padded to Kmax in memory).

    Attributes:
        sample_id: the sample id.
        positions: (P,) long, sorted positions in [0, T).
        entropy: (P,) fp32 teacher entropy H(p) at τ=1 (dequantized).
        logp_gold: (P,) fp32 teacher log p(gold) at τ=1 (dequantized).
        ids: (P, Kmax) long token ids (0 at padding).
        probs: (P, Kmax) fp32 targets t̂: c/N (RS), c/N·p/r (RS with a proposal) or top-K probs (0 at padding).
        num_entries: (P,) long K_i.
        counts: (P, Kmax) long RS counts, or None for top-K.
        tail: (P,) fp32 ghost tail mass, or None.
    """

    sample_id: int
    positions: Tensor
    entropy: Tensor
    logp_gold: Tensor
    ids: Tensor
    probs: Tensor
    num_entries: Tensor
    counts: Tensor | None = None
    tail: Tensor | None = None

    def target(self) -> SparseTarget:
        """SparseTarget over the P cached positions."""
        return SparseTarget(self.ids, self.probs, self.tail)


def _pad_rows(row_lengths: np.ndarray, values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Flat entries (E,) grouped by row lengths (P,) → (P, Kmax) zero-padded."""
    p = len(row_lengths)
    width = int(row_lengths.max(initial=0))
    out = np.zeros((p, width), dtype=dtype)
    rows = np.repeat(np.arange(p), row_lengths)  # (E,) row of each entry
    starts = np.cumsum(row_lengths) - row_lengths
    cols = np.arange(len(values)) - np.repeat(starts, row_lengths)  # (E,) slot within its row
    out[rows, cols] = values
    return out


def _target_values(layout: Layout, rec: Record) -> np.ndarray:
    """(E,) float32 target values t̂ from the stored form."""
    if layout.value == "prob":
        return rec.probs
    t = rec.counts.astype(np.float32) / layout.rs_samples
    return t * rec.weights if layout.value == "count_weight" else t


def _being_built(directory: Path) -> str:
    """For an unfinished cache: the advice when a build is running on it (its lock is held), else ""."""
    pid = holder_of(directory)
    if pid is None:
        return ""
    return f"{holder_said(directory, pid)} is building it now; wait for it to finish"


class CacheReader:
    """Read a teacher cache built by :class:`~ekd.teacher.cache.writer.CacheWriter`.

    Args:
        directory: the cache directory.
        expected_signature: if given, the cache's signature must equal it (else CacheError naming each field).
        max_open_shards: memory maps kept open at once (least recently used are closed).

    Raises:
        CacheError: no manifest, an unfinished build, another format version, or a signature mismatch.
    """

    def __init__(
        self, directory: str | os.PathLike, expected_signature: dict | None = None, max_open_shards: int = 64
    ) -> None:
        self.directory = Path(directory)
        path = self.directory / MANIFEST
        building = _being_built(self.directory)  # "" or why an unfinished cache is no one's to rerun now
        refuse_a_file(self.directory)
        if not path.exists():
            if any(self.directory.glob("manifest.rank*.json")):
                raise CacheError(
                    f"teacher cache at {self.directory} is unfinished (only per-rank manifests): "
                    + (building or "rerun the cache build to finish and assemble it")
                )
            refuse_missing_cache(self.directory)
            raise CacheError(
                f"no teacher cache at {self.directory} (manifest.json missing): build it with `ekd cache CONFIG` (or "
                "`ekd cache import SRC --config CONFIG --out DIR`)"
            )
        self.manifest = read_manifest(path)
        signature = self.manifest.get("signature")
        self._rebuild = rebuild_advice(signature)  # `ekd cache CONFIG --overwrite`, or the import again
        self._rebuild_shards = rebuild_advice(signature, shards=True)
        # ends a shard's damage
        self._repair = f" in the teacher cache at {self.directory}: {self._rebuild_shards}"
        if (
            self.manifest.get("format") != FORMAT_NAME
            or self.manifest.get("format_version") != FORMAT_VERSION
        ):
            raise CacheError(
                f"{path} is format {self.manifest.get('format')!r} version {self.manifest.get('format_version')}, "
                f"this ekd reads {FORMAT_NAME!r} version {FORMAT_VERSION}: {self._rebuild}"
            )
        if not self.manifest.get("complete"):
            done, total = len(self.manifest["shards"]), self.manifest["num_shards"]
            again = (  # try-out 67, F5: an import's was told to rerun the build
                "rerun `ekd cache import SRC --config CONFIG --out DIR` (finished shards are skipped)"
                if is_imported(signature)
                else "rerun the cache build (finished shards are skipped)"
            )
            # every shard written, the manifest not yet sealed (killed at the end): try-out 104, F6 read "6 of 6"
            left = (
                "every shard written, not sealed" if done == total else f"{done} of {counted(total, 'shard')}"
            )
            raise CacheError(
                f"teacher cache at {self.directory} is unfinished ({left}): " + (building or again)
            )
        self.signature: dict = self.manifest["signature"]
        if expected_signature is not None:
            diffs = compare_signatures(expected_signature, self.signature)
            if diffs:
                raise CacheError(
                    f"teacher cache at {self.directory} does not match the training config ({diff_summary(diffs)}): "
                    f"{self._rebuild} or set teacher.cache_dir to a matching cache"
                )
        self.layout = Layout.from_dict(self.manifest["layout"])  # checked by read_manifest
        self.num_samples: int = self.manifest["num_samples"]
        self.shard_samples: int = self.manifest["shard_samples"]
        self._shards = {s["index"]: s for s in self.manifest["shards"]}
        self._maps: OrderedDict[int, tuple[np.ndarray, np.memmap]] = OrderedDict()
        self._max_open = max_open_shards

    @property
    def block_length(self) -> int:
        return self.layout.block_length

    def __len__(self) -> int:
        return self.num_samples

    # ------------------------------------------------------------ shard access

    def _open(self, k: int) -> tuple[np.ndarray, np.memmap]:
        """(index entries (n,) of IDX_DTYPE, .bin memmap) of shard k, size- and .idx-sha256-checked; LRU-cached.

        Raises:
            CacheError: a shard file missing, of the wrong size or unreadable, or its ``.idx`` corrupted
                (sha256 not the manifest's, or a bad header); one line naming the file and the fix.
        """
        if k in self._maps:
            self._maps.move_to_end(k)
            return self._maps[k]
        try:
            return self._map(k)
        except OSError as e:
            name = self._shards[k]["name"]
            raise CacheError(
                f"{name} of the teacher cache at {self.directory} cannot be read ({e.strerror or e})"
            ) from None

    def _map(self, k: int) -> tuple[np.ndarray, np.memmap]:
        entry = self._shards[k]
        paths = {ext: self.directory / f"{entry['name']}.{ext}" for ext in ("bin", "idx")}
        for ext, p in paths.items():
            if (problem := _size_problem(p, entry[f"{ext}_bytes"])) is not None:
                raise CacheError(f"{problem}{self._repair}")
        # the index says where each record lies: a damaged entry would point the CRC-32 check at the wrong
        # bytes and blame the .bin, so the whole .idx (small) is checked before any entry is trusted; the
        # mapped bytes are hashed and then read as entries, so the bytes checked are the bytes used
        if entry["idx_bytes"] < IDX_HEADER_BYTES:  # an old unsealed manifest; np.memmap refuses empty files
            raise CacheError(f"{paths['idx'].name} has a bad header{self._repair}")
        raw = np.memmap(paths["idx"], dtype=np.uint8, mode="r")  # (16 + 24·n,) header, then n entries
        if hashlib.sha256(raw).hexdigest() != entry["idx_sha256"]:
            raise CacheError(f"{paths['idx'].name} is corrupted (sha256 checksum mismatch){self._repair}")
        header = bytes(raw[:IDX_HEADER_BYTES])
        count = struct.unpack("<Q", header[8:16])[0] if header[:8] == IDX_MAGIC else -1
        if count != entry["samples"] or raw.size != IDX_HEADER_BYTES + count * IDX_DTYPE.itemsize:
            raise CacheError(f"{paths['idx'].name} has a bad header{self._repair}")
        index = raw[IDX_HEADER_BYTES:].view(IDX_DTYPE)  # (n,) entries
        data = np.memmap(paths["bin"], dtype=np.uint8, mode="r")
        self._maps[k] = (index, data)
        if len(self._maps) > self._max_open:
            self._maps.popitem(last=False)
        return index, data

    def _record(self, sample_id: int) -> Record:
        sample_id = int(sample_id)
        k = sample_id // self.shard_samples if sample_id >= 0 else -1
        if not 0 <= sample_id < self.num_samples or k not in self._shards:
            raise MissingSampleError(
                f"sample {sample_id} is not in the teacher cache at {self.directory} (it holds samples "
                f"0..{self.num_samples - 1}): the data does not match the cache; {self._rebuild}"
            )
        index, data = self._open(k)
        name = self._shards[k]["name"]
        i = sample_id - self._shards[k]["first_sample"]  # dense ids: the slot is the offset in the range
        if not (0 <= i < len(index) and int(index[i]["sample_id"]) == sample_id):
            i = int(np.searchsorted(index["sample_id"], sample_id))
            if i >= len(index) or int(index[i]["sample_id"]) != sample_id:
                raise MissingSampleError(f"sample {sample_id} is missing from {name}.idx{self._repair}")
        offset, length, checksum = int(index[i]["offset"]), int(index[i]["length"]), int(index[i]["crc32"])
        if offset + length > len(data):
            raise CacheError(
                f"{name}.bin is truncated (record of sample {sample_id} ends past the file){self._repair}"
            )
        buf = np.asarray(data[offset : offset + length])  # (length,) uint8: only this record's pages
        if crc32(buf) != checksum:
            raise CacheError(
                f"{name}.bin is corrupted (record of sample {sample_id} fails its CRC-32){self._repair}"
            )
        try:
            rec = decode_record(self.layout, buf)
        except ValueError as e:
            raise CacheError(
                f"{name}.bin is corrupted (record of sample {sample_id}: {e}){self._repair}"
            ) from None
        if rec.sample_id != sample_id:
            raise CacheError(
                f"{name}.bin is corrupted (record for sample {sample_id} holds {rec.sample_id}){self._repair}"
            )
        return rec

    # ------------------------------------------------------------ public reads

    def get(self, sample_id: int) -> CachedSample:
        """The cached data of one sample. Raises MissingSampleError (a CacheError and KeyError) if absent."""
        rec = self._record(sample_id)
        values = _target_values(self.layout, rec)
        counts = (
            None if rec.counts is None else torch.from_numpy(_pad_rows(rec.row_lengths, rec.counts, np.int64))
        )
        return CachedSample(
            sample_id=rec.sample_id,
            positions=torch.from_numpy(rec.positions),
            entropy=torch.from_numpy(rec.entropy),
            logp_gold=torch.from_numpy(rec.logp_gold),
            ids=torch.from_numpy(_pad_rows(rec.row_lengths, rec.ids, np.int64)),
            probs=torch.from_numpy(_pad_rows(rec.row_lengths, values, np.float32)),
            num_entries=torch.from_numpy(rec.row_lengths),
            counts=counts,
            tail=None if rec.tail is None else torch.from_numpy(rec.tail),
        )

    def batch(
        self, sample_ids: list[int] | Tensor, block_length: int
    ) -> tuple[dict[str, Tensor], Tensor, SparseTarget]:
        """Cached teacher data of a micro-batch.

        Args:
            sample_ids: (B,) sample ids.
            block_length: T of the batch; must equal the cache's.

        Returns:
            stats: {'entropy': (B, T), 'logp_gold': (B, T)} fp32, NaN where nothing is cached.
            cached: (B, T) bool mask of cached positions.
            target: SparseTarget with (M, Kmax) ids/probs (and (M,) tail for ghost top-K) for the M cached
                positions in flat order b·T + t.
        """
        if block_length != self.block_length:
            raise CacheError(
                f"batch block length {block_length} differs from the cache's {self.block_length} "
                f"(CacheReader.block_length): read it at {self.block_length}, or build a cache at data.block_length="
                f"{block_length}: {self._rebuild}"
            )
        ids_list = [int(s) for s in (sample_ids.tolist() if isinstance(sample_ids, Tensor) else sample_ids)]
        records = [self._record(s) for s in ids_list]
        b, t = len(records), block_length
        flat = (
            np.concatenate([r.positions + i * t for i, r in enumerate(records)])
            if records
            else np.zeros(0, np.int64)
        )
        stats = {}
        for name in ("entropy", "logp_gold"):
            grid = np.full(b * t, np.nan, dtype=np.float32)
            if records:
                grid[flat] = np.concatenate([getattr(r, name) for r in records])
            stats[name] = torch.from_numpy(grid.reshape(b, t))
        cached = np.zeros(b * t, dtype=bool)
        cached[flat] = True
        row_lengths = np.concatenate([r.row_lengths for r in records]) if records else np.zeros(0, np.int64)
        entry_ids = np.concatenate([r.ids for r in records]) if records else np.zeros(0, np.int64)
        values = (
            np.concatenate([_target_values(self.layout, r) for r in records])
            if records
            else np.zeros(0, np.float32)
        )
        target = SparseTarget(
            torch.from_numpy(_pad_rows(row_lengths, entry_ids, np.int64)),  # (M, Kmax)
            torch.from_numpy(_pad_rows(row_lengths, values, np.float32)),  # (M, Kmax)
            torch.from_numpy(np.concatenate([r.tail for r in records]))
            if self.layout.tail and records
            else None,
        )
        return stats, torch.from_numpy(cached.reshape(b, t)), target

    # ------------------------------------------------------------ checks and figures

    def verify(self) -> dict:
        """Recompute every shard checksum and parse every record. Raises CacheError naming each bad shard."""
        problems = []
        samples = 0
        for k in sorted(self._shards):
            entry = self._shards[k]
            name = entry["name"]
            try:
                for ext in ("bin", "idx"):
                    path = self.directory / f"{name}.{ext}"
                    if (problem := _size_problem(path, entry[f"{ext}_bytes"])) is not None:
                        raise CacheError(problem)
                    if _sha256(path) != entry[f"{ext}_sha256"]:
                        raise CacheError(f"{path.name} is corrupted (sha256 checksum mismatch)")
                positions = entries = 0
                for sid in range(entry["first_sample"], entry["end_sample"]):
                    rec = self._record(sid)
                    positions, entries = positions + len(rec.positions), entries + len(rec.ids)
                    samples += 1
                if (positions, entries) != (entry["positions"], entry["entries"]):
                    raise CacheError(
                        f"{name} holds {positions} positions / {entries} entries, manifest says otherwise"
                    )
            except CacheError as e:
                problems.append(str(e).removesuffix(self._repair))
            except OSError as e:
                problems.append(f"{name} cannot be read ({e.strerror or e})")
        if problems:
            raise CacheError(
                f"teacher cache at {self.directory} failed verification: {'; '.join(problems)}: {self._rebuild_shards}"
            )
        from ekd.teacher.cache.kept_teacher import teacher_files_in_cache

        teacher_files_in_cache(self.directory, "")  # its copy of the teacher's files, when it keeps one
        return {"shards": len(self._shards), "samples": samples, "ok": True}

    def size_problems(self) -> list[str]:
        """Shard files missing or not of the size the manifest records (a ``stat`` each: no read, no checksum)."""
        problems = []
        for k in sorted(self._shards):
            entry = self._shards[k]
            for ext in ("bin", "idx"):
                problem = _size_problem(self.directory / f"{entry['name']}.{ext}", entry[f"{ext}_bytes"])
                if problem is not None:
                    problems.append(problem)
        return problems

    def check_files(self) -> None:
        """Refuse a cache whose shard files are not all there at the sizes the manifest records (a ``stat``
        each), before a run trains from it — not when training reaches the shard, hours in.

        Raises:
            CacheError: the first :data:`SHARD_PROBLEMS_SHOWN` problems and how many more, and the fix.
        """
        if problems := self.size_problems():
            more = len(problems) - SHARD_PROBLEMS_SHOWN
            shown = "; ".join(problems[:SHARD_PROBLEMS_SHOWN]) + (f" (and {more} more)" if more > 0 else "")
            raise CacheError(f"{shown}{self._repair}")

    def bytes_per_token(self) -> float:
        """The cache's shard bytes per training token it covers: what a run from it records as its teacher's cost
        (``cache_bytes_per_token``), without :meth:`info`'s other figures (the kept teacher files are read there)."""
        shard_bytes = sum(s["bin_bytes"] + s["idx_bytes"] for s in self._shards.values())
        return shard_bytes / max(self.manifest["counts"]["tokens"], 1)

    def info(self) -> dict:
        """Sizes and figures: samples, positions, entries/position, bytes/position and bytes/token.

        ``shard_bytes``, ``bytes_per_position`` and ``bytes_per_token`` are the shards' (the targets and statistics
        a run reads); ``bytes_on_disk`` is every file under the directory — the shards, the manifest, the teacher's
        kept files: what copying the cache takes (try-out 144, F4: shards and manifest, neither figure's sum)."""
        counts = self.manifest["counts"]
        shard_bytes = sum(s["bin_bytes"] + s["idx_bytes"] for s in self._shards.values())
        positions = max(counts["positions"], 1)
        epp = counts["entries"] / positions
        pps = counts["positions"] / max(counts["samples"], 1)
        return {
            "directory": str(self.directory),
            "samples": counts["samples"],
            "positions": counts["positions"],
            "entries": counts["entries"],
            "tokens": counts["tokens"],
            "shards": len(self._shards),
            "entries_per_position": epp,
            "positions_per_sample": pps,
            "shard_bytes": shard_bytes,
            "bytes_on_disk": bytes_under(self.directory),
            "bytes_per_position": shard_bytes / positions,
            "bytes_per_token": self.bytes_per_token(),
            "fixed_width_bound_bytes_per_position": self.layout.fixed_width_bound_bytes_per_position(
                epp, pps
            ),
            "fixed_width_bound_formula": self.layout.formula(),
            "kept_teacher_files": _kept_teacher_files(self.directory),
            "layout": self.layout.to_dict(),
            "signature": self.signature,
        }


SHARD_PROBLEMS_SHOWN = 3
"""Missing or cut-short shard files named in one refusal (:meth:`CacheReader.check_files`)."""


def _kept_teacher_files(directory: Path) -> str:
    """The teacher's files the cache keeps for runs without the teacher (:mod:`ekd.teacher.cache.kept_teacher`),
    in words, with what is wrong with them (:func:`~ekd.teacher.cache.kept_teacher.copy_state`)."""
    from ekd.teacher.cache.kept_teacher import copy_state, small_files

    kept, problem, signature = copy_state(directory)
    if kept is None and problem:
        recorded = (signature or {}).get(KEPT_FILES) or {}
        return f"missing: the manifest records {len(recorded)} (copied without its teacher/ directory?)"
    if kept is None:
        return "none (a run from the cache reads model.teacher's config and tokenizer)"
    return ", ".join(p.name for p in small_files(kept)) + (f" — damaged: {problem}" if problem else "")


def _size_problem(path: Path, want: int) -> str | None:
    """Why ``path`` is not a shard file of ``want`` bytes, or None."""
    if not path.exists():
        return f"{path.name} is missing"
    size = path.stat().st_size
    if size != want:
        return f"{path.name} is {'truncated' if size < want else 'longer than recorded'} ({size} of {want} bytes)"
    return None


def _sha256(path: Path, chunk: int = 1 << 22) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


__all__ = ["CacheReader", "CachedSample"]
