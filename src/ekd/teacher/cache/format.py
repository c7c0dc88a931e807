"""Binary format of the teacher cache (version 1): bit codes, one sample's record, index entries.

A shard is two files, written once and never modified:

``shard-NNNNN.bin`` — a 16-byte header (``EKDCBIN1``, u32 format version, u32 0), then one record per
sample in sample-id order. A record (little-endian; each section starts on a byte boundary; bit streams
are LSB-first):

==============  ===================================  ==================================================
section         size                                 content
==============  ===================================  ==================================================
header          17 B                                 u64 sample_id, u32 P (cached positions),
                                                     u32 E (entries), u8 position coding
positions       ⌈T/8⌉ B (coding 0) or P varints (1)  bitmask over the block's T positions, or LEB128 of
                                                     the first position then gaps − 1; the writer
                                                     picks the smaller per record
statistics      2P B (``q8``) or 4P B (``fp16``)     P entropies, then P values of −log p(gold)
row lengths     ⌈P·k_bits/8⌉ B                       K_i entries per position, k_bits each
id low bits     ⌈Σ_i K_i·l_i / 8⌉ B                  low l_i bits of each id (Elias–Fano lower part)
id high bits    ⌈Σ_i u_i / 8⌉ B                      per row a bitvector of u_i = K_i + ((V−1) >> l_i)
                                                     bits with a 1 at (id_j >> l_i) + j (Elias–Fano
                                                     upper part); u_i = 0 when l_i = ⌈log2 V⌉
counts          gamma lengths + gamma bits (RS)      Elias-gamma code of each count c ≥ 1: ⌊log2 c⌋ in
                                                     unary (all counts), then the ⌊log2 c⌋ bits of c
                                                     below its leading 1 (all counts)
weights         4E B (RS with β ≠ 1)                 fp32 importance weights p/r
probs           2E B (top-K)                         fp16 target probabilities
tail            4P B (top-K ghost)                   fp32 tail mass 1 − Σ_K p
==============  ===================================  ==================================================

Entries of a row are stored sorted by token id (the loss does not depend on their order). No padding
slots: position i owns exactly K_i consecutive entries. The Elias–Fano split l_i = l(K_i, V) is a fixed
function of the row length (the cheapest of l ∈ [0, ⌈log2 V⌉], where ⌈log2 V⌉ means plain fixed-width ids),
so it is never stored; a row costs min(K·⌈log2 V⌉, min_l K·l + K + ((V−1) >> l)) bits of ids — at most the
fixed width, ≈ log2(V/K) + 2 bits per id for larger K (15.4 instead of 18 at K = 13, V = 151,936). Counts
take 2⌊log2 c⌋ + 1 bits (1 bit for c = 1, the common case) instead of a fixed 6. Both codes are exact:
every id in [0, V) and every count in [1, 63] round-trips; a value out of range raises at write time.

``shard-NNNNN.idx`` — a 16-byte header (``EKDCIDX1``, u64 count), then one fixed 24-byte entry per
record sorted by sample id: u64 sample_id, u64 byte offset in the .bin, u32 length, u32 CRC-32 of the
record — O(1) random access through ``numpy.memmap`` and a per-record integrity check on every read.

Statistics in ``q8`` (default) use a square-root code c = round(255·√(v/s)), v̂ = s·(c/255)², with
v = H(p), s = ln V for the entropy and v = −log p(gold), s = 32 (clamped: p(gold) < 1.3e-14 reads as
e^-32) for the gold log-probability. The absolute error is ≤ √(s·v)/255 + s/255²/4: 0.019 nats at H = 2
for V = 151,936, 0.022 at −log p = 1, 0.07 at −log p = 10 — finer where values are small. ``fp16``
stores both as IEEE half (relative error ≤ 2^-11).
"""

from __future__ import annotations

import dataclasses
import math
import struct
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from ekd.errors import EkdError
from ekd.teacher.cache.codes import (
    decode_gamma,
    decode_ids,
    decode_varints,
    dequantize_stat,
    id_bits_for,
    id_section_sizes,
    packed_size,
    unpack_bits,
)

FORMAT_NAME = "ekd-teacher-cache"
FORMAT_VERSION = 1
BIN_HEADER = b"EKDCBIN1" + struct.pack("<II", FORMAT_VERSION, 0)  # 16 B
IDX_MAGIC = b"EKDCIDX1"
IDX_HEADER_BYTES = 16
IDX_DTYPE = np.dtype([("sample_id", "<u8"), ("offset", "<u8"), ("length", "<u4"), ("crc32", "<u4")])
RECORD_HEADER = struct.Struct("<QIIB")  # sample_id, P, E, position coding
POSITIONS_BITMASK, POSITIONS_VARINT = 0, 1
STAT_FORMATS = ("q8", "fp16")
LOGP_SCALE = 32.0  # q8 range of −log p(gold)


class CacheError(EkdError):
    """A teacher cache problem the user can fix; the message is one line naming the problem and the fix.

    An ``EkdError``: the CLI prints it as one ``ekd: error: ...`` line and exits 2.
    """


class CacheMismatch(CacheError):
    """A cache built for other settings than the run's (:func:`ekd.teacher.cache.source.check_signature`):
    ``directory``, and ``differences``, the differing fields as the message names them."""

    def __init__(self, message: str, directory: object, differences: str) -> None:
        super().__init__(message)
        self.directory, self.differences = directory, differences


class MissingSampleError(CacheError, KeyError):
    """A sample id that the cache does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """What every record of one cache holds (stored in the manifest as ``layout``).

    Attributes:
        block_length: T, positions per sample.
        vocab_size: V; ids take at most id_bits = ⌈log2 V⌉ bits (Elias–Fano makes them fewer).
        k_bits: bits per row length K_i (bit length of the largest K_i: N for RS, K or K+1 for top-K).
        value: 'count' (RS), 'count_weight' (RS with a proposal β ≠ 1) or 'prob' (top-K, fp16).
        rs_samples: N for RS (counts define t̂ = c/N; each row's counts sum to N), else 0.
        tail: whether each row stores a fp32 ghost tail mass.
        stat_format: 'q8' or 'fp16'.
        entropy_scale: ln V, the q8 entropy range.
        logp_scale: the q8 range of −log p(gold).
    """

    block_length: int
    vocab_size: int
    k_bits: int
    value: str
    rs_samples: int
    tail: bool
    stat_format: str
    entropy_scale: float
    logp_scale: float = LOGP_SCALE

    @classmethod
    def from_signature(cls, signature: dict, stat_format: str = "q8") -> Layout:
        if stat_format not in STAT_FORMATS:
            raise ValueError(f"stat_format must be one of {STAT_FORMATS}, got {stat_format!r}")
        vocab = int(signature["vocab_size"])
        common = dict(
            block_length=int(signature["block_length"]),
            vocab_size=vocab,
            stat_format=stat_format,
            entropy_scale=math.log(vocab),
        )
        if signature["target"] == "rs":
            n = int(signature["rs_samples"])
            weighted = float(signature["rs_proposal_power"]) != 1.0
            return cls(
                k_bits=n.bit_length(),
                value="count_weight" if weighted else "count",
                rs_samples=n,
                tail=False,
                **common,
            )
        max_k = int(signature["topk"]) + (1 if signature["topk_tail"] == "to_gold" else 0)
        return cls(
            k_bits=max_k.bit_length(),
            value="prob",
            rs_samples=0,
            tail=signature["topk_tail"] == "ghost",
            **common,
        )

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        """The layout stored in a manifest. Raises ValueError for a missing, unknown or mistyped field."""
        types = {"int": int, "str": str, "bool": bool, "float": (int, float)}
        fields = {f.name: types[f.type] for f in dataclasses.fields(cls)}
        if not isinstance(d, dict) or set(d) - set(fields) or set(fields) - set(d) - {"logp_scale"}:
            raise ValueError(f"layout fields must be {sorted(fields)}")
        for key, value in d.items():
            if not isinstance(value, fields[key]) or (fields[key] is not bool and isinstance(value, bool)):
                raise ValueError(f"layout field {key} has the wrong type")
        if d["block_length"] < 1 or d["vocab_size"] < 2 or not 1 <= d["k_bits"] <= 32:
            raise ValueError("layout sizes out of range")
        if d["value"] not in ("count", "count_weight", "prob") or d["stat_format"] not in STAT_FORMATS:
            raise ValueError("layout value or stat_format unknown")
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def id_bits(self) -> int:
        return id_bits_for(self.vocab_size)

    @property
    def stat_bytes(self) -> int:
        """Bytes per position for the two statistics."""
        return 2 if self.stat_format == "q8" else 4

    @property
    def max_row_length(self) -> int:
        return (1 << self.k_bits) - 1

    @property
    def fixed_entry_bits(self) -> int:
        """Bits per (id, value) entry at fixed widths: ⌈log2 V⌉ + (bit length of N | 16 fp16) (+32 weight)."""
        value_bits = {"count": 0, "count_weight": 32, "prob": 16}[self.value] + self.rs_samples.bit_length()
        return self.id_bits + value_bits

    @property
    def row_bits(self) -> int:
        """Bits per cached position outside its entries: K_i, statistics, ghost tail."""
        return self.k_bits + 8 * self.stat_bytes + (32 if self.tail else 0)

    def fixed_width_bound_bytes_per_position(
        self, entries_per_position: float, positions_per_sample: float
    ) -> float:
        """Fixed-width bound: (row_bits + K̄·fixed_entry_bits)/8 + (header + index entry + ⌈T/8⌉)/P̄.

        What plain bit packing (⌈log2 V⌉-bit ids, ⌈log2(N+1)⌉-bit counts) would take; the Elias–Fano ids and
        Elias-gamma counts on disk come in below it. Excludes byte-alignment padding.
        """
        per_sample = RECORD_HEADER.size + IDX_DTYPE.itemsize + (self.block_length + 7) // 8
        entries = entries_per_position * self.fixed_entry_bits
        return (self.row_bits + entries) / 8 + per_sample / max(positions_per_sample, 1e-9)

    def formula(self) -> str:
        return (
            f"({self.row_bits} + K̄·{self.fixed_entry_bits}) bits / 8 + "
            f"({RECORD_HEADER.size} + {IDX_DTYPE.itemsize} + {(self.block_length + 7) // 8}) B / P̄"
        )


# ---------------------------------------------------------------- one record


@dataclass
class Record:
    """One sample's cached data, in its compact (unpadded) form. P positions, E = Σ K_i entries.

    positions (P,) int64 sorted; entropy, logp_gold (P,) float32; row_lengths (P,) int64; ids (E,) int64,
    strictly increasing within each row; counts (E,) int64 (RS) or None; weights (E,) float32 (RS, β ≠ 1)
    or None; probs (E,) float32 (top-K) or None; tail (P,) float32 (ghost) or None.
    """

    sample_id: int
    positions: np.ndarray
    entropy: np.ndarray
    logp_gold: np.ndarray
    row_lengths: np.ndarray
    ids: np.ndarray
    counts: np.ndarray | None = None
    weights: np.ndarray | None = None
    probs: np.ndarray | None = None
    tail: np.ndarray | None = None


def decode_record(layout: Layout, buf: np.ndarray) -> Record:
    """bytes (uint8 array of exactly one record) → Record. Raises ValueError if the bytes do not parse."""
    if buf.size < RECORD_HEADER.size:
        raise ValueError("record shorter than its header")
    sample_id, p, e, coding = RECORD_HEADER.unpack(buf[: RECORD_HEADER.size].tobytes())
    at = RECORD_HEADER.size
    if coding == POSITIONS_BITMASK:
        n = (layout.block_length + 7) // 8
        mask = np.unpackbits(buf[at : at + n], count=layout.block_length, bitorder="little")
        positions = np.flatnonzero(mask).astype(np.int64)
        at += n
    elif coding == POSITIONS_VARINT:
        gaps, used = decode_varints(buf[at:], p)
        positions = np.cumsum(gaps + 1) - 1
        at += used
    else:
        raise ValueError(f"unknown position coding {coding}")
    if len(positions) != p or (p and positions[-1] >= layout.block_length):
        raise ValueError(f"position section does not hold {p} positions in [0, {layout.block_length})")

    def take(n: int) -> np.ndarray:
        nonlocal at
        if at + n > buf.size:
            raise ValueError("record shorter than its sections")
        out = buf[at : at + n]
        at += n
        return out

    sb = layout.stat_bytes // 2
    entropy = dequantize_stat(take(sb * p), p, layout.entropy_scale, layout.stat_format)
    logp_gold = -dequantize_stat(take(sb * p), p, layout.logp_scale, layout.stat_format)
    row_lengths = unpack_bits(take(packed_size(p * layout.k_bits)), p, layout.k_bits)
    if int(row_lengths.sum()) != e:
        raise ValueError(f"row lengths sum to {int(row_lengths.sum())}, header says {e} entries")
    low_bytes, high_bytes = id_section_sizes(layout.vocab_size, layout.max_row_length, row_lengths)
    ids = decode_ids(layout.vocab_size, layout.max_row_length, row_lengths, take(low_bytes), take(high_bytes))
    rec = Record(sample_id, positions, entropy, logp_gold, row_lengths, ids)
    if layout.value in ("count", "count_weight"):
        rec.counts, used = decode_gamma(buf[at:], e)
        at += used
        if p and (
            (row_lengths == 0).any()
            or (np.add.reduceat(rec.counts, np.cumsum(row_lengths) - row_lengths) != layout.rs_samples).any()
        ):
            raise ValueError(f"counts do not sum to N = {layout.rs_samples} in every row")
    if layout.value == "count_weight":
        rec.weights = take(4 * e).view("<f4").astype(np.float32)
    if layout.value == "prob":
        rec.probs = take(2 * e).view("<f2").astype(np.float32)
    if layout.tail:
        rec.tail = take(4 * p).view("<f4").astype(np.float32)
    if at != buf.size:
        raise ValueError(f"record has {buf.size - at} trailing bytes")
    return rec


def crc32(data: bytes | np.ndarray) -> int:
    return zlib.crc32(data) & 0xFFFFFFFF


def encode_index(entries: np.ndarray) -> bytes:
    """Index entries (n,) of IDX_DTYPE, sorted by sample id → .idx bytes."""
    return IDX_MAGIC + struct.pack("<Q", len(entries)) + entries.astype(IDX_DTYPE).tobytes()
