"""Bit codes of the teacher cache format, vectorized with numpy (no Python loop per entry).

- fixed-width packing (:func:`pack_bits`) and per-value widths (:func:`pack_varwidth`), LSB first;
- Elias–Fano rows of sorted token ids (:func:`encode_ids`), never wider than ⌈log2 V⌉ bits per id;
- Elias-gamma counts (:func:`encode_gamma`), 1 bit for a count of 1;
- LEB128 varints for position gaps (:func:`encode_varints`);
- square-root 8-bit or fp16 teacher statistics (:func:`quantize_stat`).

How the record uses them is in :mod:`ekd.teacher.cache.format`.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

_U1 = np.uint64(1)


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


_WINDOW_BITS = 57
"""Widest field :func:`_read_fields` reads from one unaligned 64-bit little-endian window (64 − 7 shift bits)."""


def _read_fields(buf: np.ndarray, starts: np.ndarray, widths: np.ndarray) -> np.ndarray:
    """Fields of ``widths`` (n,) bits (each ≤ 57) at bit ``starts`` (n,) of the LSB-first stream ``buf`` → (n,) int64.

    Each field is one 8-byte window read from its first byte, shifted and masked: ~8 bytes of work per field
    instead of one pass per bit (the decoding of a training batch's cached ids is 10× faster).
    """
    starts = starts.astype(np.int64)
    first = starts >> 3  # (n,) byte holding each field's first bit
    buf = np.asarray(buf, dtype=np.uint8)
    # zero bytes past the end, as np.unpackbits pads a short stream (a record's lengths are checked elsewhere)
    padding = max(8, int(first.max()) + 8 - len(buf)) if len(first) else 8
    padded = np.concatenate([buf, np.zeros(padding, dtype=np.uint8)])
    window = padded[first[:, None] + np.arange(8)]  # (n, 8) bytes, little-endian
    words = np.ascontiguousarray(window).view("<u8").reshape(-1)  # (n,) uint64
    mask = (_U1 << widths.astype(np.uint64)) - _U1
    return ((words >> (starts & 7).astype(np.uint64)) & mask).astype(np.int64)


def unpack_bits(buf: np.ndarray, count: int, width: int) -> np.ndarray:
    """Inverse of :func:`pack_bits`: ``count`` values of ``width`` bits from uint8 ``buf`` → (count,) int64."""
    if count == 0 or width == 0:
        return np.zeros(count, dtype=np.int64)
    if width <= _WINDOW_BITS:
        starts = np.arange(count, dtype=np.int64) * width
        return _read_fields(buf, starts, np.full(count, width, dtype=np.int64))
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
    widths = widths.astype(np.int64)
    if int(widths.max()) <= _WINDOW_BITS:
        return _read_fields(buf, np.cumsum(widths) - widths, widths)
    bits = np.unpackbits(buf, count=total, bitorder="little")
    field, place = _bit_layout(widths)
    # exact: every value < 2^53
    return np.bincount(field, weights=np.ldexp(bits.astype(np.float64), place), minlength=len(widths)).astype(
        np.int64
    )


def packed_size(bits: int) -> int:
    return (int(bits) + 7) // 8


# ---------------------------------------------------------------- many records at once (byte-aligned segments)


def pack_segments(
    segment_bits: np.ndarray, at: np.ndarray, bits: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Bit streams of S segments (one per record), each padded to whole bytes, packed in one call.

    Args:
        segment_bits: (S,) bits of each segment.
        at: (n,) bit places in the concatenation of the *padded* segments (see :func:`segment_starts`).
        bits: (n,) 0/1 values at those places; None means all ones.

    Returns:
        (⌈·/8⌉ bytes of each segment concatenated, uint8 (Σ bytes,); bytes per segment (S,) int64) — segment j
        equals what :func:`pack_bits`/:func:`pack_varwidth` give for its own stream alone.
    """
    nbytes = (segment_bits.astype(np.int64) + 7) // 8  # (S,)
    stream = np.zeros(8 * int(nbytes.sum()), dtype=np.uint8)
    stream[at] = 1 if bits is None else bits
    return np.packbits(stream, bitorder="little"), nbytes


def segment_starts(segment_bits: np.ndarray) -> np.ndarray:
    """(S,) bit place where each byte-padded segment starts: 8 · (bytes of the segments before it)."""
    nbytes = (segment_bits.astype(np.int64) + 7) // 8
    return 8 * (np.cumsum(nbytes) - nbytes)


def pack_varwidth_segments(
    values: np.ndarray, widths: np.ndarray, segment: np.ndarray, num_segments: int
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`pack_varwidth` of each segment's fields (fields sorted by ``segment`` (n,)), all in one call.

    Returns (bytes of the segments concatenated (Σ bytes,) uint8, bytes per segment (S,) int64).
    """
    widths = widths.astype(np.int64)
    seg_bits = np.bincount(segment, weights=widths, minlength=num_segments).astype(np.int64)  # (S,)
    field, place = _bit_layout(widths)  # (Σw,) field of each bit and its place in the field
    field_start = np.cumsum(widths) - widths  # (n,) bit offset in the unpadded concatenation
    seg_first = np.cumsum(seg_bits) - seg_bits  # (S,) same offset of each segment's first bit
    at = (segment_starts(seg_bits)[segment] + field_start - seg_first[segment])[field] + place  # (Σw,)
    bits = (values.astype(np.uint64)[field] >> place.astype(np.uint64)) & _U1
    return pack_segments(seg_bits, at, bits.astype(np.uint8))


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
    return packed_size((low * row_lengths).sum()), packed_size(
        _upper_sizes(vocab_size, row_lengths, low).sum()
    )


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
