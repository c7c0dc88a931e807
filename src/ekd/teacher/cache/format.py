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

import math
import struct
import zlib
from dataclasses import asdict, dataclass
from functools import lru_cache

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
_U1 = np.uint64(1)


class CacheError(Exception):
    """A teacher cache problem the user can fix; the message is one line naming the problem and the fix."""


class MissingSampleError(CacheError, KeyError):
    """A sample id that the cache does not hold."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


def id_bits_for(vocab_size: int) -> int:
    """⌈log2 V⌉ bits: enough for every id in [0, V). 151,936 → 18, 262,144 → 18, 2^20 → 20."""
    return max(1, (int(vocab_size) - 1).bit_length())


# ---------------------------------------------------------------- bit streams (vectorized, LSB first)


def pack_bits(values: np.ndarray, width: int) -> bytes:
    """Pack non-negative integers (n,) into ⌈n·width/8⌉ bytes, ``width`` bits each. Raises if one does not fit."""
    v = np.asarray(values).astype(np.uint64, copy=False).reshape(-1)
    if v.size == 0:
        return b""
    if width < 64 and int(v.max()) >> width:
        raise ValueError(f"value {int(v.max())} does not fit in {width} bits")
    bits = (v[:, None] >> np.arange(width, dtype=np.uint64)) & _U1  # (n, width)
    return np.packbits(bits.astype(np.uint8).reshape(-1), bitorder="little").tobytes()


def unpack_bits(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values of ``width`` bits from uint8 ``buf`` → (count,) int64."""
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    bits = np.unpackbits(buf, count=count * width, bitorder="little").reshape(count, width)  # (n, width)
    weights = np.left_shift(_U1, np.arange(width, dtype=np.uint64))
    return (bits.astype(np.uint64) * weights).sum(1, dtype=np.uint64).astype(np.int64)


def _bit_layout(widths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For fields of the given widths (n,): the field of each bit and the bit's place in its field."""
    widths = widths.astype(np.int64)
    field = np.repeat(np.arange(len(widths)), widths)  # (Σw,)
    starts = np.cumsum(widths) - widths
    return field, np.arange(int(widths.sum())) - np.repeat(starts, widths)


def pack_varwidth(values: np.ndarray, widths: np.ndarray) -> bytes:
    """Pack values (n,) with per-value widths (n,) (< 53 bits) into ⌈Σ widths/8⌉ bytes."""
    if int(widths.sum()) == 0:
        return b""
    field, place = _bit_layout(widths)
    bits = (values.astype(np.uint64)[field] >> place.astype(np.uint64)) & _U1
    return np.packbits(bits.astype(np.uint8), bitorder="little").tobytes()


def unpack_varwidth(buf: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Inverse of :func:`pack_varwidth` → (n,) int64."""
    total = int(widths.sum())
    if total == 0:
        return np.zeros(len(widths), dtype=np.int64)
    bits = np.unpackbits(buf, count=total, bitorder="little")
    field, place = _bit_layout(widths)
    # exact: every value < 2^53
    return np.bincount(field, weights=np.ldexp(bits.astype(np.float64), place), minlength=len(widths)).astype(np.int64)


def packed_size(bits: int) -> int:
    return (int(bits) + 7) // 8


# ---------------------------------------------------------------- Elias–Fano ids, Elias-gamma counts


@lru_cache(maxsize=64)
def elias_fano_low_bits(vocab_size: int, max_k: int) -> np.ndarray:
    """l(K) for K = 0..max_k: the cheapest split, ⌈log2 V⌉ meaning plain fixed-width ids (no upper part)."""
    id_bits = id_bits_for(vocab_size)
    table = np.zeros(max_k + 1, dtype=np.int64)
    for k in range(1, max_k + 1):
        costs = [k * l + k + ((vocab_size - 1) >> l) for l in range(id_bits)] + [k * id_bits]
        table[k] = max(range(id_bits + 1), key=lambda l: (-costs[l], l))  # cheapest, larger l on ties
    return table


def _upper_sizes(vocab_size: int, row_lengths: np.ndarray, low: np.ndarray) -> np.ndarray:
    """Bits of each row's Elias–Fano upper bitvector: K + ((V−1) >> l), or 0 for fixed-width rows."""
    id_bits = id_bits_for(vocab_size)
    return np.where(low < id_bits, row_lengths + ((vocab_size - 1) >> low), 0)


def encode_ids(vocab_size: int, max_k: int, row_lengths: np.ndarray, ids: np.ndarray) -> tuple[bytes, bytes]:
    """Rows of strictly increasing ids → (low-bits section, high-bits section)."""
    low = elias_fano_low_bits(vocab_size, max_k)[row_lengths]  # (P,) split per row
    entry_low = np.repeat(low, row_lengths)  # (E,)
    ids_u = ids.astype(np.uint64)
    low_part = pack_varwidth(ids_u & ((_U1 << entry_low.astype(np.uint64)) - _U1), entry_low)
    upper = _upper_sizes(vocab_size, row_lengths, low)  # (P,)
    if int(upper.sum()) == 0:
        return low_part, b""
    row_start = np.cumsum(upper) - upper  # (P,) bit offset of each row's upper vector
    entry_start = np.cumsum(row_lengths) - row_lengths
    rank = np.arange(len(ids)) - np.repeat(entry_start, row_lengths)  # (E,) j within the row
    ef = np.repeat(upper > 0, row_lengths)  # (E,) entries of Elias–Fano rows
    ones = np.repeat(row_start, row_lengths) + (ids >> entry_low) + rank  # (E,) bit set per entry
    bits = np.zeros(int(upper.sum()), dtype=np.uint8)
    bits[ones[ef]] = 1
    return low_part, np.packbits(bits, bitorder="little").tobytes()


def id_section_sizes(vocab_size: int, max_k: int, row_lengths: np.ndarray) -> tuple[int, int]:
    """Bytes of the (low, high) id sections for these row lengths."""
    low = elias_fano_low_bits(vocab_size, max_k)[row_lengths]
    return packed_size((low * row_lengths).sum()), packed_size(_upper_sizes(vocab_size, row_lengths, low).sum())


def decode_ids(
    vocab_size: int, max_k: int, row_lengths: np.ndarray, low_buf: np.ndarray, high_buf: np.ndarray
) -> np.ndarray:
    """Inverse of :func:`encode_ids` → (E,) int64. Raises ValueError on inconsistent bits."""
    low = elias_fano_low_bits(vocab_size, max_k)[row_lengths]
    entry_low = np.repeat(low, row_lengths)
    ids = unpack_varwidth(low_buf, entry_low)
    upper = _upper_sizes(vocab_size, row_lengths, low)
    if int(upper.sum()):
        bits = np.unpackbits(high_buf, count=int(upper.sum()), bitorder="little")
        ones = np.flatnonzero(bits)  # (E_ef,) sorted
        ef = np.repeat(upper > 0, row_lengths)
        if len(ones) != int(ef.sum()):
            raise ValueError("Elias–Fano upper bits do not match the row lengths")
        row_start = np.cumsum(upper) - upper
        entry_start = np.cumsum(row_lengths) - row_lengths
        rank = np.arange(len(ids)) - np.repeat(entry_start, row_lengths)
        high = ones - np.repeat(row_start, row_lengths)[ef] - rank[ef]
        if (high < 0).any():
            raise ValueError("Elias–Fano upper bits cross a row boundary")
        ids[ef] |= high << entry_low[ef]
    if ids.size and (ids.max() >= vocab_size):
        raise ValueError(f"decoded token id ≥ V = {vocab_size}")
    return ids


def encode_gamma(values: np.ndarray) -> tuple[bytes, bytes]:
    """Elias-gamma of integers ≥ 1 as two streams: ⌊log2 v⌋ in unary (ones, then a 0), then the low bits."""
    v = values.astype(np.int64)
    if v.size and v.min() < 1:
        raise ValueError("Elias-gamma codes integers ≥ 1")
    n = np.frexp(v.astype(np.float64))[1].astype(np.int64) - 1  # (E,) ⌊log2 v⌋ (exact for v < 2^53)
    unary = np.ones(int((n + 1).sum()), dtype=np.uint8)
    unary[np.cumsum(n + 1) - 1] = 0  # terminators
    low = v - np.left_shift(1, n)  # v without its leading 1
    return np.packbits(unary, bitorder="little").tobytes(), pack_varwidth(low, n)


def decode_gamma(buf: np.ndarray, count: int) -> tuple[np.ndarray, int]:
    """Decode ``count`` gamma codes from uint8 ``buf`` → (values (count,) int64, bytes used)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64), 0
    bits = np.unpackbits(buf, bitorder="little")
    ends = np.flatnonzero(bits == 0)[:count]  # terminator of each unary length
    if len(ends) < count:
        raise ValueError("truncated gamma length stream")
    n = np.diff(ends, prepend=-1) - 1  # (count,)
    used = packed_size(int(ends[-1]) + 1)
    low_bytes = packed_size(n.sum())
    if used + low_bytes > buf.size:
        raise ValueError("truncated gamma value stream")
    low = unpack_varwidth(buf[used : used + low_bytes], n)
    return np.left_shift(1, n) + low, used + low_bytes


# ---------------------------------------------------------------- positions


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
            return cls(k_bits=n.bit_length(), value="count_weight" if weighted else "count", rs_samples=n, tail=False, **common)
        max_k = int(signature["topk"]) + (1 if signature["topk_tail"] == "to_gold" else 0)
        return cls(k_bits=max_k.bit_length(), value="prob", rs_samples=0, tail=signature["topk_tail"] == "ghost", **common)

    @classmethod
    def from_dict(cls, d: dict) -> Layout:
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

    def analytic_bytes_per_position(self, entries_per_position: float, positions_per_sample: float) -> float:
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


def encode_record(layout: Layout, rec: Record) -> bytes:
    """Record → bytes (see the module docstring for the sections)."""
    p, e = len(rec.positions), len(rec.ids)
    t = layout.block_length
    gaps = np.diff(rec.positions, prepend=-1) - 1  # first position, then gap − 1 (≥ 0)
    bitmask_bytes = (t + 7) // 8
    if p == 0 or int(varint_sizes(gaps).sum()) < bitmask_bytes:
        coding, pos_bytes = POSITIONS_VARINT, encode_varints(gaps)
    else:
        mask = np.zeros(t, dtype=np.uint8)
        mask[rec.positions] = 1
        coding, pos_bytes = POSITIONS_BITMASK, np.packbits(mask, bitorder="little").tobytes()
    low, high = encode_ids(layout.vocab_size, layout.max_row_length, rec.row_lengths, rec.ids)
    parts = [
        RECORD_HEADER.pack(rec.sample_id, p, e, coding),
        pos_bytes,
        quantize_stat(rec.entropy, layout.entropy_scale, layout.stat_format),
        quantize_stat(-np.asarray(rec.logp_gold, dtype=np.float32), layout.logp_scale, layout.stat_format),
        pack_bits(rec.row_lengths, layout.k_bits),
        low,
        high,
    ]
    if layout.value in ("count", "count_weight"):
        parts.extend(encode_gamma(rec.counts))
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
        if p and ((row_lengths == 0).any() or (np.add.reduceat(rec.counts, np.cumsum(row_lengths) - row_lengths) != layout.rs_samples).any()):
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
