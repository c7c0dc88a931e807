"""The token store: packed splits on disk, memory-mapped and read lazily by every run and rank.

One store is one directory ``<store_dir>/<key>/`` (the key: a hash of its :func:`ekd.data.store_build`
signature — data source, tokenizer hash, packing settings) holding ``manifest.json`` and one folder per
split, ``split-<i>/`` (``i``: the split's position among the configured splits), with flat files over the split's packed stream of S tokens:

- ``tokens.u32``: (S,) uint32 token ids, the stream ``[BOS] · prompt · text · [EOS]`` of every document
  (:func:`ekd.data.packing.token_chunks`), then the padding of a lone partial block if there is one;
- ``target.u8``, ``starts.u8``, ``ends.u8``: (S,) 0/1 bytes, the target mask, document starts and
  end-of-document marks (one byte each rather than three bits of one: read as bool tensors with no decoding,
  so batches come off the store as fast as from memory);
- ``documents.i64``: (D,) int64 offset of every document's first token in the stream.

Block ``b`` is tokens ``[b·T, (b+1)·T)``; the manifest records N (blocks) per split, so a ragged tail past
``N·T`` is never read. The block index is thus the manifest's (N, T) and needs no file of its own.
``manifest.json`` is written last and the directory renamed into place after it (see
:mod:`ekd.data.store_build`), so a store that has a manifest whose sizes match its files is complete.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import torch

from ekd.data.boundary import DocumentBoundary
from ekd.data.packing import PackedBlocks, TokenChunk
from ekd.io import fsync_dir, make_dirs
from ekd.json_record import SEAL, seal_sha256

logger = logging.getLogger(__name__)

STORE_FORMAT = 1
MANIFEST = "manifest.json"
MASKS = ("target", "starts", "ends")  # the (S,) bool files, in PackedBlocks field order
FILES = {
    "tokens": ("tokens.u32", np.uint32),
    "target": ("target.u8", np.uint8),
    "starts": ("starts.u8", np.uint8),
    "ends": ("ends.u8", np.uint8),
    "documents": ("documents.i64", np.int64),
}
STORE_FILE_NAMES = tuple(name for name, _ in FILES.values())


class MappedColumn:
    """An (N, T) read-only view of a store file that reads only the rows it is indexed with.

    ``column[rows]`` (an int, slice, index tensor or array, optionally with a column index) returns a torch
    tensor: long ids, or bool for a mask. The gather runs in torch over the mapped file (no
    copy of the file; pages are read as rows are touched). Ids are viewed as int32 (every vocabulary is
    below 2**31) because torch gathers int32, not uint32. A run of rows (``column[a:b]``, the chunks of a scan
    over the whole split: the blocks with a target, the documents) is read from ``path`` with plain reads, not
    through the mapping, whose pages would stay in the process's resident memory (try-out 98, F5: a run over a
    390 M-token store held 522 MiB of them and reported them as its peak memory).
    """

    def __init__(self, array: np.ndarray, mask: bool = False, path: Path | None = None) -> None:
        self.array = array  # (N, T) np.memmap, uint32 ids or 0/1 uint8 mask
        self.mask = mask
        self.path = path  # the file ``array`` maps from its first byte (rows read by :meth:`_read_rows`)
        with warnings.catch_warnings():  # read-only by design: nothing writes through this tensor
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            tensor = torch.from_numpy(array.view(np.uint8 if mask else np.int32))  # (N, T), no copy
        self.tensor = tensor.view(torch.bool) if mask else tensor

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    def __len__(self) -> int:
        return int(self.tensor.shape[0])

    def __getitem__(self, index: Any) -> torch.Tensor:
        if isinstance(index, slice) and index.step in (None, 1) and self.path is not None:
            rows = self._read_rows(*index.indices(len(self))[:2])
        else:
            rows = self.tensor[torch.from_numpy(index) if isinstance(index, np.ndarray) else index]
        return rows if self.mask else rows.long()

    def _read_rows(self, start: int, stop: int) -> torch.Tensor:
        """Rows ``[start, stop)`` (m, T) read from the file (a copy; no page of the mapping touched)."""
        m, width = max(0, stop - start), self.array.shape[1]
        itemsize = self.array.dtype.itemsize
        flat = np.fromfile(
            self.path, dtype=self.array.dtype, count=m * width, offset=start * width * itemsize
        )
        rows = torch.from_numpy(flat.view(np.uint8 if self.mask else np.int32).reshape(m, width))  # (m, T)
        return rows.view(torch.bool) if self.mask else rows


@dataclass
class SplitFiles:
    """The files of one split being written, appended to chunk by chunk.

    ``tokens``/``documents`` count what was appended (tokens in the stream, documents in it); ``sizes``
    gives the byte length of each file, recorded in a checkpoint and restored by :meth:`open`.
    """

    directory: Path
    tokens: int = 0
    documents: int = 0
    handles: dict[str, BinaryIO] = field(default_factory=dict)

    @classmethod
    def open(cls, directory: Path, tokens: int = 0, documents: int = 0) -> SplitFiles:
        """Open (create) the files; an existing file is cut back to ``tokens``/``documents`` (resume)."""
        make_dirs(directory)
        files = cls(directory, tokens, documents)
        for name, (filename, dtype) in FILES.items():
            path = directory / filename
            f = open(path, "r+b" if path.exists() else "w+b")  # noqa: SIM115 (closed by close())
            f.truncate((documents if name == "documents" else tokens) * np.dtype(dtype).itemsize)
            f.seek(0, os.SEEK_END)
            files.handles[name] = f
        return files

    def append(self, chunk: TokenChunk) -> None:
        """Append a piece of the packed stream (ids, masks and the offsets of the documents that start in it)."""
        ids = chunk.input_ids.numpy()  # (s,)
        starts = np.flatnonzero(chunk.document_starts.numpy()).astype(np.int64) + self.tokens  # (d,)
        self.handles["tokens"].write(ids.astype(np.uint32).tobytes())
        for name, mask in zip(MASKS, (chunk.target_mask, chunk.document_starts, chunk.boundary_mask)):
            self.handles[name].write(mask.numpy().astype(np.uint8).tobytes())
        self.handles["documents"].write(starts.tobytes())
        self.tokens += ids.size
        self.documents += int(chunk.documents)

    def pad(self, count: int, pad_id: int) -> None:
        """Append ``count`` padding tokens: one document of their own, never a target (a lone partial block)."""
        starts = np.zeros(count, dtype=np.uint8)
        starts[0] = 1
        self.handles["tokens"].write(np.full(count, pad_id, dtype=np.uint32).tobytes())
        self.handles["target"].write(np.zeros(count, dtype=np.uint8).tobytes())
        self.handles["starts"].write(starts.tobytes())
        self.handles["ends"].write(np.zeros(count, dtype=np.uint8).tobytes())
        self.tokens += count

    def sync(self) -> None:
        """Flush and fsync every file (before a checkpoint records their sizes)."""
        for f in self.handles.values():
            f.flush()
            os.fsync(f.fileno())

    def close(self) -> None:
        self.sync()
        for f in self.handles.values():
            f.close()
        self.handles.clear()
        fsync_dir(self.directory)


def read_manifest(directory: Path) -> dict | None:
    """The manifest of a complete store, or None when it is missing, unreadable, not of the shape a build writes
    (:func:`_well_formed`) or its files are short."""
    try:
        manifest = json.loads((directory / MANIFEST).read_text())
        if not _well_formed(manifest) or not _seal_holds(manifest):
            return None
        for split in manifest["splits"]:
            for name, (filename, dtype) in FILES.items():
                count = split["documents"] if name == "documents" else split["tokens"]
                if (directory / f"split-{split['folder']}" / filename).stat().st_size != count * np.dtype(
                    dtype
                ).itemsize:
                    return None
            if split["blocks"] * manifest["block_length"] > split["tokens"]:
                return None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return manifest


def _well_formed(manifest: Any) -> bool:
    """Whether ``manifest`` has the shape :func:`ekd.data.store_build` writes: this format, a signature with its data
    settings, a positive block length and a non-empty list of splits, each named, with whole counts and (where
    recorded) its files' sha256 and fingerprint as text."""

    count = _count

    def texts(x: Any) -> bool:
        return isinstance(x, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in x.items())

    if not isinstance(manifest, dict) or manifest.get("format") != STORE_FORMAT:
        return False
    signature, splits = manifest.get("signature"), manifest.get("splits")
    if not (isinstance(signature, dict) and isinstance(signature.get("data"), dict)):
        return False
    if not (
        count(manifest.get("block_length"))
        and manifest["block_length"] > 0
        and "document_attention" in manifest
    ):
        return False
    if not (isinstance(splits, list) and splits and all(isinstance(s, dict) for s in splits)):
        return False

    def counts(x: Any, keys: tuple[str, ...]) -> bool:
        return isinstance(x, dict) and all(count(x.get(k)) for k in keys)

    # figures a reuse reads, recorded since some version: absent, or of their shape
    optional = ("num_targets", "packed_documents", "packed_tokens")
    return all(
        isinstance(s.get("name"), str)
        and isinstance(s.get("folder"), (int, str))
        and all(count(s.get(k)) for k in ("blocks", "tokens", "documents"))
        and all(k not in s or count(s[k]) for k in optional)
        and ("packed_documents" not in s or "packed_tokens" in s and "num_targets" in s)
        and ("tail" not in s or counts(s["tail"], ("tokens", "targets")))
        and ("trained_documents" not in s or _pair_of_counts(s["trained_documents"]))
        and (s.get("sha256") is None or texts(s["sha256"]) and set(s["sha256"]) == set(STORE_FILE_NAMES))
        and (s.get("fingerprint") is None or isinstance(s["fingerprint"], str))
        for s in splits
    )


MANIFEST_SHA256 = SEAL
"""The manifest's own seal (:func:`ekd.json_record.seal_sha256`, as a teacher cache's): a manifest edited since its
build (a split's ``blocks`` lowered, a file's sha256 entry or the fingerprint replaced) no longer matches, and the
store is rebuilt (try-out 160, F5/F6: a lowered block count trained on 10 of 157 blocks under the whole store's
fingerprint). A manifest of an ekd that wrote none is checked against its files (:func:`changed_files`)."""


def seal(manifest: dict) -> dict:
    """``manifest`` with its :data:`MANIFEST_SHA256`."""
    return {**manifest, MANIFEST_SHA256: seal_sha256(manifest)}


def _seal_holds(manifest: dict) -> bool:
    """Whether ``manifest`` is as its build sealed it (or was written before manifests were sealed)."""
    return MANIFEST_SHA256 not in manifest or manifest[MANIFEST_SHA256] == seal_sha256(manifest)


def _count(x: Any) -> bool:
    """A whole number ≥ 0 as a build writes it (an int: a hand edit's ``78.0`` is no store's)."""
    return isinstance(x, int) and not isinstance(x, bool) and x >= 0


def _pair_of_counts(x: Any) -> bool:
    """A list of two :func:`_count` (a split's ``trained_documents``: trained, of documents)."""
    return isinstance(x, list) and len(x) == 2 and all(_count(n) for n in x)


def changed_files(directory: Path, manifest: dict) -> list[str]:
    """What changed in a store since its build: the files (``split-<folder>/<file>``) whose sha256 is not the one
    the build recorded — a file overwritten in place, at its size —, one read of every file (a 100M-token store:
    ~0.6 GB). A manifest without its seal (:data:`MANIFEST_SHA256`: an ekd's before the seal, or one whose seal was
    removed) is checked against its files too: each split's blocks by the fingerprint its build recorded
    (:func:`fingerprint_files` over the recorded block count, the run's data fingerprint; ~3× the sha256's time),
    named ``split-<folder>'s blocks`` (try-out 162, F1: a lowered block count trained on 10 of 157 blocks under the
    whole store's fingerprint); a split that recorded neither is trusted."""
    from ekd.io import file_sha256

    sealed = MANIFEST_SHA256 in manifest
    changed = []
    for split in manifest["splits"]:
        folder = directory / f"split-{split['folder']}"
        if (not sealed or not split.get("sha256")) and split.get("fingerprint"):
            fingerprint, targets = fingerprint_files(folder, split["blocks"], manifest["block_length"])
            if fingerprint != split["fingerprint"] or split.get("num_targets", targets) != targets:
                changed.append(f"split-{split['folder']}'s blocks")
                continue
        for filename, digest in (split.get("sha256") or {}).items():
            if file_sha256(folder / filename) != digest:
                changed.append(f"split-{split['folder']}/{filename}")
    return changed


@dataclass
class StoredBlocks(PackedBlocks):
    """PackedBlocks read from a token store; the fingerprint and target count recorded at build time are
    returned without reading the files again."""

    stored_fingerprint: str | None = None
    stored_targets: int | None = None

    @property
    def num_targets(self) -> int:
        return super().num_targets if self.stored_targets is None else self.stored_targets

    def fingerprint(self) -> str:
        return super().fingerprint() if self.stored_fingerprint is None else self.stored_fingerprint


def open_split(directory: Path, index: int, manifest: dict, boundary: DocumentBoundary) -> StoredBlocks:
    """Split ``index`` (position in ``manifest['splits']``; its files are in ``split-<folder>/``) of a store as PackedBlocks whose (N, T) fields are :class:`MappedColumn`."""
    split = manifest["splits"][index]
    n, t = int(split["blocks"]), int(manifest["block_length"])
    folder = directory / f"split-{split['folder']}"
    tokens = np.memmap(folder / FILES["tokens"][0], dtype=np.uint32, mode="r", shape=(split["tokens"],))
    ids_2d = tokens[: n * t].reshape(n, t)  # (N, T) a view: nothing read yet

    def mask(name: str) -> MappedColumn:
        flat = np.memmap(folder / FILES[name][0], dtype=np.uint8, mode="r", shape=(split["tokens"],))
        return MappedColumn(flat[: n * t].reshape(n, t), mask=True, path=folder / FILES[name][0])  # (N, T)

    return StoredBlocks(
        input_ids=MappedColumn(ids_2d, path=folder / FILES["tokens"][0]),  # type: ignore[arg-type]
        target_mask=mask("target"),  # type: ignore[arg-type]
        sample_ids=torch.arange(n, dtype=torch.long),
        document_starts=mask("starts"),  # type: ignore[arg-type]
        boundary_mask=mask("ends"),  # type: ignore[arg-type]
        document_attention=manifest["document_attention"],
        boundary=boundary,
        stored_fingerprint=split.get("fingerprint"),
        stored_targets=split.get("num_targets"),
    )


def fingerprint_files(folder: Path, blocks: int, block_length: int, chunk: int = 1 << 20) -> tuple[str, int]:
    """:meth:`PackedBlocks.fingerprint` and :attr:`PackedBlocks.num_targets` of a split, from its files.

    Read with plain reads of ``chunk`` tokens (not through a memory map, whose pages would count towards
    the builder's resident memory), so building stays flat in memory however large the split.
    """
    n = blocks * block_length
    h = hashlib.sha256()
    h.update(repr((blocks, block_length)).encode())
    for start in range(0, n, chunk):
        ids = np.fromfile(
            folder / FILES["tokens"][0], dtype=np.uint32, count=min(chunk, n - start), offset=4 * start
        )
        h.update(ids.astype(np.int64).tobytes())
    targets = 0
    for start in range(0, n, chunk):
        mask = np.fromfile(
            folder / FILES["target"][0], dtype=np.uint8, count=min(chunk, n - start), offset=start
        )
        h.update(mask.tobytes())
        column = (np.arange(start, start + mask.size) % block_length) != 0
        targets += int(np.count_nonzero(mask.astype(bool) & column))
    h.update(b"starts")
    for start in range(0, n, chunk):
        h.update(
            np.fromfile(
                folder / FILES["starts"][0], dtype=np.uint8, count=min(chunk, n - start), offset=start
            ).tobytes()
        )
    return h.hexdigest(), targets


def documents_before(folder: Path, documents: int, tokens: int) -> int:
    """How many of the ``documents`` of the split in ``folder`` start before token ``tokens`` (a binary search
    over the memory-mapped offsets: nothing else is read)."""
    if not documents:
        return 0
    offsets = np.memmap(folder / FILES["documents"][0], dtype=np.int64, mode="r", shape=(documents,))  # (D,)
    return int(np.searchsorted(offsets, tokens, side="left"))


def targets_between(folder: Path, start: int, stop: int) -> int:
    """Targets among tokens ``[start, stop)`` of the split's stream in ``folder`` (the target mask file,
    memory-mapped: only that range is read); 0 for an empty range."""
    if stop <= start:
        return 0
    mask = np.memmap(
        folder / FILES["target"][0], dtype=np.uint8, mode="r", offset=start, shape=(stop - start,)
    )
    return int(np.count_nonzero(mask))  # (stop - start,) read


def document_offsets(directory: Path, index: int, manifest: dict) -> np.ndarray:
    """(D,) int64 offset of every document's first token in split ``index`` (memory-mapped)."""
    count = manifest["splits"][index]["documents"]
    path = directory / f"split-{manifest['splits'][index]['folder']}" / FILES["documents"][0]
    return np.memmap(path, dtype=np.int64, mode="r", shape=(count,)) if count else np.zeros(0, np.int64)
