"""Bytes per cached position of the teacher cache, measured on disk with synthetic Zipf-like teacher logits.

Run::

    python -m ekd.teacher.cache.measure [--vocab-size 151936] [--rs-samples 50] [--fraction 1.0]

Synthetic teacher: at each position the token of rank r gets logit −s·ln r (Zipf), with s drawn per
position from U(1.3, 2.4), and ranks are placed on token ids by a per-position affine permutation.
That range gives a mean teacher entropy of ≈ 2.2 nats and ≈ 13 unique ids per position at N = 50 for
V = 151,936 — in line with real LM teachers (RS-KD reports ≈ 12 unique ids at N = 50). Bytes depend on the
teacher mostly through K̄ (entries per position): see ``fixed_width_bound_bytes_per_position`` for other K̄.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import torch
from torch import Tensor

from ekd.teacher.cache.manifest import make_signature
from ekd.teacher.cache.reader import CacheReader
from ekd.teacher.cache.writer import CacheWriter
from ekd.teacher.targets import position_seeds, rs_target

ZIPF_EXPONENTS = (1.3, 2.4)


def zipf_logits(
    rows: int, vocab: int, seed: int = 0, exponents: tuple[float, float] = ZIPF_EXPONENTS
) -> Tensor:
    """Peaked LM-like teacher logits (rows, V): rank r gets −s·ln r, s ~ U(exponents) per row, and an
    independent random id permutation per row (for small V; :class:`SyntheticTeacher` scales to large V)."""
    g = torch.Generator().manual_seed(seed)
    s = torch.empty(rows).uniform_(*exponents, generator=g)
    perm = torch.argsort(torch.rand(rows, vocab, generator=g), -1)  # (M, V) id of each rank
    log_rank = torch.log(torch.arange(1, vocab + 1, dtype=torch.float32))
    return torch.empty(rows, vocab).scatter_(1, perm, -s[:, None] * log_rank[None, :])


class SyntheticTeacher:
    """Zipf-like teacher logits for ``rows`` positions, generated on demand for any subset of rows."""

    def __init__(
        self, rows: int, vocab_size: int, seed: int = 0, exponents: tuple[float, float] = ZIPF_EXPONENTS
    ):
        g = torch.Generator().manual_seed(seed)
        self.vocab_size = vocab_size
        self.exponent = torch.empty(rows).uniform_(*exponents, generator=g)  # (rows,) Zipf s
        self.offset = torch.randint(0, vocab_size, (rows,), generator=g)  # (rows,)
        mult = 1_000_003 % vocab_size
        while math.gcd(mult, vocab_size) != 1:
            mult += 1
        # rank r sits on id (mult·r + offset) mod V: a cyclic shift (by offset) of one fixed permutation
        ids = torch.arange(vocab_size) * mult % vocab_size  # (V,) id of rank r at offset 0
        log_rank = torch.log(torch.arange(1, vocab_size + 1, dtype=torch.float32))
        self.base = torch.empty(vocab_size).scatter_(0, ids, log_rank)  # (V,) ln(rank) of each id

    def logits(self, rows: Tensor) -> Tensor:
        """(m,) row indices → (m, V) logits."""
        shifted = torch.stack([torch.roll(self.base, int(self.offset[r])) for r in rows.tolist()])  # (m, V)
        return shifted.mul_(-self.exponent[rows, None])


def measure_bytes_per_position(
    vocab_size: int = 151_936,
    rs_samples: int = 50,
    *,
    num_blocks: int = 4,
    block_length: int = 512,
    position_fraction: float = 1.0,
    stat_format: str = "q8",
    seed: int = 0,
    chunk_rows: int = 128,
    directory: str | None = None,
) -> dict:
    """Build an RS cache from synthetic teacher logits and report its size per position and per token.

    Args:
        vocab_size: V.
        rs_samples: N draws per position.
        num_blocks, block_length: synthetic samples and T.
        position_fraction: 1.0 caches every position; < 1 caches the top fraction of each block by teacher
            entropy (``teacher_entropy_topk``), so bytes/token < bytes/position.
        stat_format: 'q8' or 'fp16' statistics.
        seed: seed of the synthetic teacher and the RS draws.
        chunk_rows: teacher rows generated at once (memory O(chunk_rows·V)).
        directory: where to build (default: a temporary directory, removed afterwards).

    Returns:
        dict with measured ``bytes_per_position`` and ``bytes_per_token`` (shards on disk), the
        ``fixed_width_bound_bytes_per_position``, ``entries_per_position``, ``mean_teacher_entropy``, and, for
        comparison, ``full_fp16_logits_bytes`` (2V) and ``top64_int32_fp16_bytes`` (64·6).
    """
    rows = num_blocks * block_length
    teacher = SyntheticTeacher(rows, vocab_size, seed)
    entropy = torch.empty(rows)
    logp_top = torch.empty(rows)
    drawn: dict[int, tuple[Tensor, Tensor]] = {}  # row → (ids, counts) when drawn in the statistics pass
    all_positions = position_fraction >= 1.0
    for start in range(0, rows, chunk_rows):
        idx = torch.arange(start, min(start + chunk_rows, rows))
        logits = teacher.logits(idx)  # (m, V)
        log_p = torch.log_softmax(logits, -1)
        entropy[idx] = -(log_p.exp() * log_p).sum(-1)
        logp_top[idx] = log_p.max(-1).values  # gold = the teacher's top token (size does not depend on it)
        if all_positions:  # every position is cached: draw now, one pass over the teacher
            seeds = position_seeds(seed, idx // block_length, idx % block_length)
            res = rs_target(logits, rs_samples, seeds=seeds)
            for j, row in enumerate(idx.tolist()):
                drawn[row] = (res.target.ids[j], res.counts[j])
    entropy_2d = entropy.view(num_blocks, block_length)  # (B, T)
    if all_positions:
        positions = torch.arange(block_length).expand(num_blocks, -1)
    else:
        keep = max(1, math.ceil(position_fraction * block_length))
        positions = entropy_2d.topk(keep, dim=-1).indices.sort(-1).values  # (B, P) highest-entropy positions
    signature = make_signature(
        teacher_id="synthetic-zipf",
        teacher_revision=f"s~U{ZIPF_EXPONENTS}",
        tokenizer_hash="synthetic",
        data_fingerprint=f"synthetic-{seed}",
        block_length=block_length,
        packing=True,
        vocab_size=vocab_size,
        target="rs",
        rs_samples=rs_samples,
        positions="all" if position_fraction >= 1.0 else "teacher_entropy_topk",
        position_fraction=None if position_fraction >= 1.0 else position_fraction,
        seed=seed,
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(directory or tmp)
        writer = CacheWriter(out, signature, num_blocks, num_blocks, stat_format=stat_format, overwrite=True)
        for b in range(num_blocks):
            pos = positions[b]  # (P,)
            rows_b = b * block_length + pos  # (P,) flat rows of the synthetic teacher
            seeds = position_seeds(seed, torch.full_like(pos, b), pos)  # (P,)
            if not all_positions:
                for start in range(0, len(pos), chunk_rows):
                    sl = slice(start, start + chunk_rows)
                    res = rs_target(teacher.logits(rows_b[sl]), rs_samples, seeds=seeds[sl])
                    for j, row in enumerate(rows_b[sl].tolist()):
                        drawn[row] = (res.target.ids[j], res.counts[j])
            ids = torch.nn.utils.rnn.pad_sequence([drawn[r][0] for r in rows_b.tolist()], batch_first=True)
            counts = torch.nn.utils.rnn.pad_sequence([drawn[r][1] for r in rows_b.tolist()], batch_first=True)
            stats = {"entropy": entropy[rows_b], "logp_gold": logp_top[rows_b]}
            writer.add(b, pos, stats, ids, counts)
        writer.close()
        info = CacheReader(out).info()
    return {
        "vocab_size": vocab_size,
        "rs_samples": rs_samples,
        "position_fraction": position_fraction,
        "stat_format": stat_format,
        "bytes_per_position": info["bytes_per_position"],
        "bytes_per_token": info["bytes_per_token"],
        "fixed_width_bound_bytes_per_position": info["fixed_width_bound_bytes_per_position"],
        "fixed_width_bound_formula": info["fixed_width_bound_formula"],
        "entries_per_position": info["entries_per_position"],
        "mean_teacher_entropy": float(entropy.mean()),
        "mean_cached_entropy": float(entropy_2d.gather(1, positions).mean()),
        "full_fp16_logits_bytes": 2 * vocab_size,
        "top64_int32_fp16_bytes": 64 * (4 + 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vocab-size", type=int, default=151_936)
    parser.add_argument("--rs-samples", type=int, default=50)
    parser.add_argument("--fraction", type=float, default=1.0)
    parser.add_argument("--blocks", type=int, default=4)
    parser.add_argument("--block-length", type=int, default=1024)
    parser.add_argument("--stat-format", default="q8")
    args = parser.parse_args()
    result = measure_bytes_per_position(
        args.vocab_size,
        args.rs_samples,
        num_blocks=args.blocks,
        block_length=args.block_length,
        position_fraction=args.fraction,
        stat_format=args.stat_format,
    )
    for key, value in result.items():
        print(f"{key:32s} {value:.3f}" if isinstance(value, float) else f"{key:32s} {value}")


if __name__ == "__main__":
    main()
