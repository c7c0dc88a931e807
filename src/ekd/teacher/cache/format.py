"""Binary format of the teacher cache (version 1): bit packing, one sample's record, index entries.

A shard is two files, written once and never modified:

``shard-NNNNN.bin`` — a 16-byte header (``EKDCBIN1``, u32 format version, u32 0), then one record per
sample in sample-id order. A record (all little-endian; each section starts on a byte boundary):

==================  =======================================  ===========================================
section             size                                     content
==================  =======================================  ===========================================
header              17 B                                     u64 sample_id, u32 P (cached positions),
                                                             u32 E (entries), u8 position coding
positions           ⌈T/8⌉ B (coding 0) or P varints (1)      bitmask over the block's T positions, or
                                                             LEB128 of the first position then gaps − 1;
                                                             the writer picks the smaller per record
statistics          2P B (``q8``) or 4P B (``fp16``)         P entropies then P log p(gold)
row lengths         ⌈P·k_bits/8⌉ B                           K_i entries per position, k_bits each
ids                 ⌈E·id_bits/8⌉ B                          token ids, id_bits = ⌈log2 V⌉ each
counts              ⌈E·count_bits/8⌉ B      (RS)             draw counts, count_bits = bit length of N
weights             4E B                    (RS, β ≠ 1)      fp32 importance weights p/r
probs               2E B                    (top-K)          fp16 target probabilities
tail                4P B                    (top-K ghost)    fp32 tail mass 1 − Σ_K p
==================  =======================================  ===========================================

No padding slots: position i owns exactly K_i consecutive entries. Fixed bit widths come from the
signature (vocabulary, N, K), so no field can alias: packing a value ≥ 2^bits raises.

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

import math
import struct
import zlib
from dataclasses import asdict, dataclass

import numpy as np

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
VALUE_KINDS = ("count", "count_weight", "prob")


class CacheError(Exception):
    """A teacher cache problem the user can fix; the message is one line naming the problem and the fix."""


class MissingSampleError(CacheError, KeyError):
    """A sample id that the cache does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def id_bits_for(vocab_size: int) -> int:
    """⌈log2 V⌉ bits: enough for every id in [0, V). 151,936 → 18, 262,144 → 18, 2^20 → 20."""
    return max(1, (int(vocab_size) - 1).bit_length())


# ---------------------------------------------------------------- bit packing (vectorized, LSB first)


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers (n,) into ⌈n·width/8⌉ bytes, ``width`` bits each, LSB first."""
    v = np.asarray(values).astype(np.uint64, copy=False).reshape(-1)
    if v.size == 0:
        return b""
    if width < 64 and int(v.max()) >> width:
        raise ValueError(f"value {int(v.max())} does not fit in {width} bits")
    bits = (v[:, None] >> np.arange(width, dtype=np.uint64)) & np.uint64(1)  # (n, width)
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values of ``width`` bits from uint8 ``buf`` → (count,) int64."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    bits = np.unpackbits(buf, count=count * width, bitorder="little").reshape(count, width)  # (n, width)
    weights = np.left_shift(np.uint64(1), np.arange(width, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(1, dtype=np.uint64).astype(np.int64)


def packed_size(count: int, width: int) -> int:
    return (count * width + 7) // 8


def varint_sizes(values: np.ndarray) -> np.ndarray:
    """Bytes of each LEB128 varint: max(1, ⌈bit_length/7⌉). (n,) → (n,) int64."""
    v = np.asarray(values, dtype=np.uint64)
    sizes = np.ones(v.shape, dtype=np.int64)
    for b in range(1, 10):
        sizes += (v >> np.uint64(7 * b)) > 0
    return sizes


def encode_varints(values: np.ndarray) -> bytes:
    """LEB128 encoding of non-negative integers, vectorized over values (loop over ≤ 10 byte places)."""
    v = np.asarray(values, dtype=np.uint64).reshape(-1)
    sizes = varint_sizes(v)
    starts = np.cumsum(sizes) - sizes
    out = np.zeros(int(sizes.sum()), dtype=np.uint8)
    for b in range(int(sizes.max(initial=0))):
        sel = sizes > b
        byte = (v[sel] >> np.uint64(7 * b)) & np.uint64(0x7F)
        more = (sizes[sel] > b + 1).astype(np.uint64) << np.uint64(7)
        out[starts[sel] + b] = (byte | more).astype(np.uint8)
    return out.tobytes()


def decode_varints(buf: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Decode ``count`` LEB128 varints from the start of uint8 ``buf`` → (values (count,) int64, bytes used)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    ends = np.flatnonzero(buf < 0x80)[:count]  # last byte of each varint
    if ends.size < count:
        raise ValueError("truncated varint stream")
    starts = np.concatenate([[0], ends[:-1] + 1])
    sizes = ends - starts + 1
    values = np.zeros(count, dtype=np.uint64)
    for b in range(int(sizes.max())):
        sel = sizes > b
        values[sel] |= (buf[starts[sel] + b].astype(np.uint64) & np.uint64(0x7F)) << np.uint64(7 * b)
    return values.astype(np.int64), int(ends[-1]) + 1


# ---------------------------------------------------------------- statistics


def quantize_stat(values: np.ndarray, scale: float, stat_format: str) -> bytes:
    """Encode non-negative statistics (P,) (entropy, or −log p(gold)) in ``q8`` or ``fp16``."""
    v = np.asarray(values, dtype=np.float32)
    if stat_format == "fp16":
        return v.astype("<f2").tobytes()
    x = np.sqrt(np.clip(np.nan_to_num(v / scale, posinf=1.0), 0.0, 1.0))
    return np.rint(x * 255.0).astype(np.uint8).tobytes()


def dequantize_stat(buf: np.ndarray, count: int, scale: float, stat_format: str) -> np.ndarray:
    """Inverse of :func:`quantize_stat` → (count,) float32."""
    if stat_format == "fp16":
        return buf[: 2 * count].view("<f2").astype(np.float32)
    x = buf[:count].astype(np.float32) / 255.0
    return (scale * x * x).astype(np.float32)


# ---------------------------------------------------------------- layout


@dataclass(frozen=True)
class Layout:
    """Bit widths and sections of every record of one cache (stored in the manifest as ``layout``).

    Attributes:
        block_length: T, positions per sample.
        id_bits: bits per token id, ⌈log2 V⌉.
        k_bits: bits per row length K_i (bit length of the largest K_i: N for RS, K or K+1 for top-K).
        value: 'count' (RS), 'count_weight' (RS with a proposal β ≠ 1) or 'prob' (top-K, fp16).
        count_bits: bits per count (bit length of N; 0 for top-K).
        rs_samples: N for RS (counts define t̂ = c/N), else 0.
        tail: whether each row stores a fp32 ghost tail mass.
        stat_format: 'q8' or 'fp16'.
        entropy_scale: ln V, the q8 entropy range.
        logp_scale: the q8 range of −log p(gold).
    """

    block_length: int
    id_bits: int
    k_bits: int
    value: str
    count_bits: int
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
            id_bits=id_bits_for(vocab),
            stat_format=stat_format,
            entropy_scale=math.log(vocab),
        )
        if signature["target"] == "rs":
            n = int(signature["rs_samples"])
            weighted = float(signature["rs_proposal_power"]) != 1.0
            return cls(
                k_bits=n.bit_length(),
                value="count_weight" if weighted else "count",
                count_bits=n.bit_length(),
                rs_samples=n,
                tail=False,
                **common,
            )
        max_k = int(signature["topk"]) + (1 if signature["topk_tail"] == "to_gold" else 0)
        return cls(
            k_bits=max_k.bit_length(),
            value="prob",
            count_bits=0,
            rs_samples=0,
            tail=signature["topk_tail"] == "ghost",
            **common,
        )

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
        return cls(**d)

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def stat_bytes(self) -> int:
        """Bytes per position for the two statistics."""
        return 2 if self.stat_format == "q8" else 4

    @property
    def entry_bits(self) -> int:
        """Bits per (id, value) entry."""
        value_bits = {"count": self.count_bits, "count_weight": self.count_bits + 32, "prob": 16}[self.value]
        return self.id_bits + value_bits

    @property
    def row_bits(self) -> int:
        """Bits per cached position outside its entries: K_i, statistics, ghost tail."""
        return self.k_bits + 8 * self.stat_bytes + (32 if self.tail else 0)

    @property
    def max_row_length(self) -> int:
        return (1 << self.k_bits) - 1

    def analytic_bytes_per_position(self, entries_per_position: float, positions_per_sample: float) -> float:
        """(row_bits + K̄·entry_bits)/8 + (record header + index entry + ⌈T/8⌉ position bitmask)/P̄.

        Excludes byte-alignment padding (< 1 B per section per record) and the shard/manifest headers.
        """
        per_sample = RECORD_HEADER.size + IDX_DTYPE.itemsize + (self.block_length + 7) // 8
        return (self.row_bits + entries_per_position * self.entry_bits) / 8 + per_sample / max(
            positions_per_sample, 1e-9
        )

    def formula(self) -> str:
        return (
            f"({self.row_bits} + K̄·{self.entry_bits}) bits / 8 + "
            f"({RECORD_HEADER.size} + {IDX_DTYPE.itemsize} + {(self.block_length + 7) // 8}) B / P̄"
        )


# ---------------------------------------------------------------- one record


@dataclass
class Record:
    """One sample's cached data, in its compact (unpadded) form. P positions, E = Σ K_i entries.

    positions (P,) int64 sorted; entropy, logp_gold (P,) float32; row_lengths (P,) int64; ids (E,) int64;
    counts (E,) int64 (RS) or None; weights (E,) float32 (RS, β ≠ 1) or None; probs (E,) float32 (top-K)
    or None; tail (P,) float32 (ghost) or None.
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


def encode_record(layout: Layout, rec: Record) -> bytes:
    """Record → bytes (see the module docstring for the sections)."""
    p, e = len(rec.positions), len(rec.ids)
    t = layout.block_length
    gaps = np.diff(rec.positions, prepend=-1) - 1  # first position, then gap − 1 (≥ 0)
    bitmask_bytes = (t + 7) // 8
    if p and int(varint_sizes(gaps).sum()) < bitmask_bytes:
        coding, pos_bytes = POSITIONS_VARINT, encode_varints(gaps)
    elif p == 0:
        coding, pos_bytes = POSITIONS_VARINT, b""
    else:
        mask = np.zeros(t, dtype=np.uint8)
        mask[rec.positions] = 1
        coding, pos_bytes = POSITIONS_BITMASK, np.packbits(mask, bitorder="little").tobytes()
    parts = [
        RECORD_HEADER.pack(rec.sample_id, p, e, coding),
        pos_bytes,
        quantize_stat(rec.entropy, layout.entropy_scale, layout.stat_format),
        quantize_stat(-np.asarray(rec.logp_gold, dtype=np.float32), layout.logp_scale, layout.stat_format),
        pack_bits(rec.row_lengths, layout.k_bits),
        pack_bits(rec.ids, layout.id_bits),
    ]
    if layout.value in ("count", "count_weight"):
        parts.append(pack_bits(rec.counts, layout.count_bits))
    if layout.value == "count_weight":
        parts.append(np.asarray(rec.weights, dtype="<f4").tobytes())
    if layout.value == "prob":
        parts.append(np.asarray(rec.probs, dtype="<f2").tobytes())
    if layout.tail:
        parts.append(np.asarray(rec.tail, dtype="<f4").tobytes())
    return b"".join(parts)


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
    if len(positions) != p:
        raise ValueError(f"position section holds {len(positions)} positions, header says {p}")

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
    row_lengths = unpack_bits(take(packed_size(p, layout.k_bits)), p, layout.k_bits)
    if int(row_lengths.sum()) != e:
        raise ValueError(f"row lengths sum to {int(row_lengths.sum())}, header says {e} entries")
    ids = unpack_bits(take(packed_size(e, layout.id_bits)), e, layout.id_bits)
    rec = Record(sample_id, positions, entropy, logp_gold, row_lengths, ids)
    if layout.value in ("count", "count_weight"):
        rec.counts = unpack_bits(take(packed_size(e, layout.count_bits)), e, layout.count_bits)
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
