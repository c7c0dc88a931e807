"""CacheWriter: append samples, write shards atomically, resume after a crash, split across ranks.

Shard k holds the samples with ids in [k·shard_samples, (k+1)·shard_samples) in sample-id order, so its
bytes are a pure function of its sample range whatever order samples arrive in. A shard is buffered
(compact, encoded records) until all its samples are in, then written to ``*.tmp`` files, fsynced, renamed,
and only then listed in the manifest (written atomically). A build killed at any point leaves at worst a
temp file or an unlisted shard; the next ``CacheWriter`` on the same directory removes the temp files,
skips listed shards whose files match their recorded sha256 (``pending_sample_ids``) and rewrites the rest
identically — a shard corrupted in place (same size, other bytes) is rebuilt, with a log line.

Distributed: rank r of W owns shards k ≡ r (mod W) and writes them under their global names with its own
partial manifest; after all ranks close, ``assemble_manifest(dir, W)`` merges them. The directory then
equals a single-process build byte for byte.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from ekd.io import atomic_write_bytes, file_sha256, fsync_dir, make_dirs, writing
from ekd.log_level import EVERY_RANK
from ekd.teacher.cache.encode import encode_records
from ekd.teacher.cache.format import (
    BIN_HEADER,
    IDX_DTYPE,
    CacheError,
    Layout,
    crc32,
    encode_index,
)
from ekd.teacher.cache.manifest import (
    BUILT_WITH,
    MANIFEST,
    REBUILD,
    REBUILD_ELSEWHERE,
    build_manifest,
    check_compatible,
    computed_with,
    dumps,
    manifest_paths,
    manifest_sha256,
    rank_manifest_path,
    read_manifest,
    remove_rank_manifests,
    write_json_atomic,
)
from ekd.teacher.cache.samples import STAT_NAMES, make_record_batch
from ekd.words import counted

log = logging.getLogger(__name__)


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def _intact(directory: Path, entry: dict) -> bool:
    """Whether both files of a listed shard exist with the recorded size and sha256."""
    for ext in ("bin", "idx"):
        path = directory / f"{entry['name']}.{ext}"
        if not path.is_file() or path.stat().st_size != entry[f"{ext}_bytes"]:
            return False
        if file_sha256(path) != entry[f"{ext}_sha256"]:
            log.warning(  # this rank's shard
                "cache %s: %s fails its sha256; rebuilding that shard", directory, path.name, extra=EVERY_RANK
            )
            return False
    return True


def log_resuming(directory: Path, done: int, shards: int) -> None:
    """The line of a build that resumes: ``done`` of the whole cache's ``shards`` already on disk (every rank's
    together under torchrun: :func:`ekd.teacher.cache.build.run_build` adds them up); nothing when none is, and
    that nothing is left when all are (try-out 102, F3: a rerun of a finished import said "resuming")."""
    if done == shards:
        log.info(
            "cache %s: complete (%s on disk): nothing left to write", directory, counted(shards, "shard")
        )
    elif done:
        log.info("cache %s: resuming, %d of %s done", directory, done, counted(shards, "shard"))


class CacheWriter:
    """Writes one rank's share of a teacher cache.

    Args:
        directory: cache directory (created if needed).
        signature: from :func:`~ekd.teacher.cache.manifest.make_signature`.
        num_samples: S; sample ids are 0..S−1.
        shard_samples: samples per shard.
        rank, world_size: this process's share (shards k with k % world_size == rank).
        stat_format: 'q8' (2 B/position) or 'fp16' (4 B/position) for entropy and log p(gold).
        overwrite: delete this rank's earlier shards and manifests instead of resuming.
        rebuild: the way out named when the directory's cache is refused (the command that wrote it, with
            --overwrite: ``ekd cache CONFIG`` or ``ekd cache import``).

    Raises:
        CacheError: the directory holds a cache with another signature/layout (and ``overwrite`` is off).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        signature: dict,
        num_samples: int,
        shard_samples: int = 1024,
        *,
        rank: int = 0,
        world_size: int = 1,
        stat_format: str = "q8",
        overwrite: bool = False,
        rebuild: str = REBUILD,
    ) -> None:
        if num_samples < 1 or shard_samples < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"need num_samples ≥ 1, shard_samples ≥ 1, 0 ≤ rank < world_size; got {num_samples}, "
                f"{shard_samples}, rank {rank} of {world_size}"
            )
        self.directory = Path(directory)
        self.signature = dict(signature)
        self.layout = Layout.from_signature(signature, stat_format)
        self.num_samples, self.shard_samples = int(num_samples), int(shard_samples)
        self.rank, self.world_size = rank, world_size
        self.rebuild = rebuild
        self.num_shards = -(-self.num_samples // self.shard_samples)
        self.owned = [k for k in range(self.num_shards) if k % world_size == rank]
        self._manifest_path = (
            self.directory / MANIFEST if world_size == 1 else rank_manifest_path(directory, rank)
        )
        with writing(self.directory.parent):
            make_dirs(self.directory)
        self._template = build_manifest(
            self.signature, self.layout.to_dict(), self.num_samples, self.shard_samples, [], False
        )
        if overwrite:
            self._remove_previous()
        self._completed: dict[int, dict] = self._load_completed()
        # temp files of an interrupted write (only if any: a finished cache is not written)
        for k in self.owned:
            for ext in ("bin", "idx"):
                if (tmp := self.directory / f"{shard_name(k)}.{ext}.tmp").exists():
                    tmp.unlink()
        self._pending: dict[int, dict[int, tuple[bytes, int, int, int]]] = {}
        if len(self._completed) < len(self.owned):  # work left: the partial manifest a resume starts from
            self._write_manifest()
        if world_size == 1:  # under torchrun each rank holds a share: the build says the whole count
            log_resuming(self.directory, self.completed_shards, self.num_shards)

    @property
    def completed_shards(self) -> int:
        """This rank's shards already on disk, intact (of ``len(self.owned)``)."""
        return len(self._completed)

    # ------------------------------------------------------------ resume

    def _remove_previous(self) -> None:
        names = [
            f"{shard_name(k)}.{ext}{tmp}"
            for k in self.owned
            for ext in ("bin", "idx")
            for tmp in ("", ".tmp")
        ]
        names.append(self._manifest_path.name)
        if self.rank == 0:
            names.append(MANIFEST)
            names += [p.name for p in self.directory.glob("manifest.rank*.json")]
            stale = (
                re.fullmatch(r"shard-(\d+)\.(bin|idx)(\.tmp)?", p.name) for p in self.directory.iterdir()
            )
            names += [m.group(0) for m in stale if m and int(m.group(1)) >= self.num_shards]
        for name in names:
            (self.directory / name).unlink(missing_ok=True)

    def _load_completed(self) -> dict[int, dict]:
        """Shards of this rank listed by any earlier manifest in the directory whose files are intact
        (size and sha256 as recorded)."""
        done: dict[int, dict] = {}
        paths = manifest_paths(self.directory)
        for path in paths:
            if not path.exists():
                continue
            found = read_manifest(path, self.rebuild)
            # it may be good for its settings
            fix = REBUILD_ELSEWHERE if self.rebuild == REBUILD else self.rebuild
            check_compatible(self._template, found, f"the existing cache {path}", fix)
            if found["shards"]:
                self._continue_arithmetic(found["signature"].get(BUILT_WITH), path)
            for entry in found["shards"]:
                k = entry["index"]
                if k in self.owned and k not in done and _intact(self.directory, entry):
                    done[k] = entry
        return done

    def _continue_arithmetic(self, prior: object, path: Path) -> None:
        """A build continued over shards an earlier one wrote: they were computed in ``prior`` (their manifest's
        :data:`~ekd.teacher.cache.manifest.BUILT_WITH`), which this one must compute in too — a bfloat16 start
        finished in float32 was one cache of mixed targets labelled float32 (try-out 122, F1). Shards of an ekd
        that recorded none: the cache records none (what they were computed in is not known).

        Raises:
            CacheError: this build computes otherwise than the shards already there.
        """
        ours = self.signature.get(BUILT_WITH)
        if ours is None or prior == ours:
            return
        if prior is None:  # said, not checked (try-out 123, F6)
            self.signature.pop(BUILT_WITH)
            log.info(
                "teacher cache %s: the shards already there record no arithmetic (an older ekd's build): the cache "
                "records none, and whether they were computed as this build computes is not checked",
                self.directory,
            )
            return
        were = computed_with(prior.get("teacher_dtype"), prior.get("autocast"))
        now = computed_with(ours.get("teacher_dtype"), ours.get("autocast"))
        raise CacheError(
            f"teacher cache at {self.directory}: its built shards ({path.name}) were computed with {were}, this build "
            f"would compute the rest with {now}; continue it as it was built (model.teacher_dtype="
            f"{prior.get('teacher_dtype')} train.precision={prior.get('autocast')}), or rebuild it with `ekd cache "
            "CONFIG --overwrite`"
        )

    def completed_sample_ranges(self) -> list[tuple[int, int]]:
        """[start, end) sample-id ranges of this rank's shards already on disk."""
        return [
            (self._completed[k]["first_sample"], self._completed[k]["end_sample"])
            for k in sorted(self._completed)
        ]

    def pending_sample_ids(self) -> list[int]:
        """Sample ids this rank still has to compute (its incomplete shards, minus samples already added)."""
        ids: list[int] = []
        for k in self.owned:
            if k not in self._completed:
                start, end = self._shard_range(k)
                added = self._pending.get(k, {})
                ids.extend(i for i in range(start, end) if i not in added)
        return ids

    def _shard_range(self, k: int) -> tuple[int, int]:
        return k * self.shard_samples, min((k + 1) * self.shard_samples, self.num_samples)

    # ------------------------------------------------------------ adding samples

    def add(
        self,
        sample_id: int,
        positions: Any,
        stats: dict[str, Any],
        ids: Any,
        values: Any,
        *,
        weights: Any = None,
        tail: Any = None,
        num_tokens: int | None = None,
    ) -> bool:
        """Add one sample's teacher data; returns False (and ignores it) if its shard is already written.

        Args:
            sample_id: in [0, num_samples), owned by this rank.
            positions: (P,) distinct cached positions in [0, T) (any order; stored sorted).
            stats: {'entropy': (P,), 'logp_gold': (P,)} teacher H(p) and log p(gold) at τ=1.
            ids: (P, Kmax) token ids.
            values: (P, Kmax) RS counts (int, rows summing to N) or top-K probabilities; entries with value 0
                are padding and are not stored. Entries are stored (and read back) sorted by id per row.
            weights: (P, Kmax) importance weights p/r (RS with proposal β ≠ 1 only).
            tail: (P,) ghost tail mass (top-K 'ghost' only).
            num_tokens: training tokens of the sample (valid labels), for bytes/token; default T.
        """
        sample = dict(sample_id=sample_id, positions=positions, stats=stats, ids=ids, values=values)
        return self.add_batch([dict(sample, weights=weights, tail=tail, num_tokens=num_tokens)])[0]

    def add_batch(self, samples: list[dict]) -> list[bool]:
        """Add many samples (dicts of :meth:`add`'s arguments), checked and encoded together.

        One numpy pass per check and per record section for the whole batch (:mod:`ekd.teacher.cache.encode`)
        instead of one per sample; the bytes are the same. Returns, per sample, whether it was added (False:
        its shard is already written). A bad sample raises ValueError naming it, and nothing of the batch is
        added.
        """
        added, fresh = [], []
        for sample in samples:
            sid = int(sample["sample_id"])
            if not 0 <= sid < self.num_samples:
                raise ValueError(f"sample id {sid} outside [0, {self.num_samples})")
            k = sid // self.shard_samples
            if k % self.world_size != self.rank:
                raise ValueError(
                    f"sample {sid} belongs to shard {k}, owned by rank {k % self.world_size}, not {self.rank}"
                )
            added.append(k not in self._completed)
            if added[-1]:
                if sid in self._pending.get(k, {}) or any(int(s["sample_id"]) == sid for s in fresh):
                    raise ValueError(f"sample {sid} was already added")
                fresh.append(sample)
        if not fresh:
            return added
        batch = make_record_batch(self.layout, self.signature["vocab_size"], fresh)
        encoded = encode_records(self.layout, batch)
        entries = np.bincount(
            np.repeat(np.arange(len(fresh)), batch.num_positions),
            weights=batch.row_lengths,
            minlength=len(fresh),
        )
        full = []
        for sample, data, p, e in zip(fresh, encoded, batch.num_positions.tolist(), entries.tolist()):
            sid = int(sample["sample_id"])
            k = sid // self.shard_samples
            tokens = sample.get("num_tokens")
            pending = self._pending.setdefault(k, {})
            pending[sid] = (data, p, int(e), self.layout.block_length if tokens is None else int(tokens))
            start, end = self._shard_range(k)
            if len(pending) == end - start:
                full.append(k)
        for k in full:
            self._flush(k)
        return added

    # ------------------------------------------------------------ writing

    def _flush(self, k: int) -> None:
        records = self._pending.pop(k)
        start, end = self._shard_range(k)
        offsets = np.zeros(len(records), dtype=IDX_DTYPE)
        chunks, at = [BIN_HEADER], len(BIN_HEADER)
        positions = entries = tokens = 0
        for i, sid in enumerate(sorted(records)):
            data, p, e, tok = records[sid]
            offsets[i] = (sid, at, len(data), crc32(data))
            chunks.append(data)
            at += len(data)
            positions, entries, tokens = positions + p, entries + e, tokens + tok
        bin_bytes, idx_bytes = b"".join(chunks), encode_index(offsets)
        name = shard_name(k)
        atomic_write_bytes(self.directory / f"{name}.bin", bin_bytes)
        atomic_write_bytes(self.directory / f"{name}.idx", idx_bytes)
        fsync_dir(self.directory)
        self._completed[k] = {
            "index": k,
            "name": name,
            "first_sample": start,
            "end_sample": end,
            "samples": end - start,
            "positions": positions,
            "entries": entries,
            "tokens": tokens,
            "bin_bytes": len(bin_bytes),
            "idx_bytes": len(idx_bytes),
            "bin_sha256": hashlib.sha256(bin_bytes).hexdigest(),
            "idx_sha256": hashlib.sha256(idx_bytes).hexdigest(),
        }
        self._write_manifest()

    def _write_manifest(self, complete: bool = False) -> dict:
        manifest = build_manifest(
            self.signature,
            self.layout.to_dict(),
            self.num_samples,
            self.shard_samples,
            list(self._completed.values()),
            complete,
        )
        if self.world_size > 1:
            manifest.update(rank=self.rank, world_size=self.world_size)
        sealed = {**manifest, "manifest_sha256": manifest_sha256(manifest)}
        if self._manifest_path.is_file() and self._manifest_path.read_text(encoding="utf-8") == dumps(sealed):
            return sealed  # already on disk: a finished cache (on a read-only mount too) is not written again
        write_json_atomic(self._manifest_path, manifest)
        return manifest

    def close(self) -> dict:
        """Finish this rank: every owned shard must be written. Returns the (rank's) manifest.

        With world_size 1 this writes the final ``manifest.json`` (``complete: true``); otherwise call
        :func:`~ekd.teacher.cache.manifest.assemble_manifest` on one rank once all ranks have closed.
        """
        missing = [k for k in self.owned if k not in self._completed]
        if missing:
            start, end = self._shard_range(missing[0])
            have = len(self._pending.get(missing[0], {}))
            raise CacheError(
                f"cache build incomplete: shard {missing[0]} has {have} of {counted(end - start, 'sample')} "
                f"(ids {start}..{end - 1}) and {len(missing) - 1} more "
                f"{'shard is' if len(missing) == 2 else 'shards are'} "
                "unfinished; add every sample "
                f"from pending_sample_ids() before close()"
            )
        manifest = self._write_manifest(complete=self.world_size == 1)
        if self.world_size == 1:
            remove_rank_manifests(self.directory)  # of an earlier build on several ranks, killed
        return manifest


__all__ = ["CacheWriter", "STAT_NAMES", "REBUILD", "shard_name"]
