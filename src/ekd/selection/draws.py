"""Per-row random streams: a training row's random draws depend on its sample, never on its rank or slot.

Under ``torchrun`` rank r holds rows r·b … r·b+b−1 of each micro-batch. A generator seeded by
(seed, step, micro-batch) alone gives row j of every rank the same numbers, so W ranks would differ from one
process with the same micro-batch. Here draw j of row i in stream ``s`` is the uniform

    u_ij = splitmix64(h(key, s, sample_id_i), j) → [0, 1)            (53 bits, float64)

with ``key`` a hash of (seed, step, 0) — :func:`micro_batch_key`; the training loop passes micro-batch 0 for
every micro-batch of a step, whose rows are distinct blocks of one epoch (a run resumed from an older ekd,
whose steps could hold a block twice, keeps the micro-batch index) — the same splitmix64 hash and counter as
the RS-KD targets (:func:`ekd.teacher.targets.position_seeds`, :func:`~ekd.teacher.targets.counter_uniforms`).
A row gets the same draws on any rank, in a micro-batch of any size, for any split of a step into
micro-batches, on CPU or GPU, and after ``--resume``;
``u_ij`` does not depend on how many draws are asked for. Users: the ``random`` scorer, ``pos_rs`` and
on-policy sampling. Decisions taken once per micro-batch (the EXP3 budget, the on-policy coin) use the
micro-batch generator instead, which every rank holds alike.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from ekd.teacher.targets import counter_uniforms, position_seeds


def _hash63(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def micro_batch_key(seed: int, step: int, micro: int) -> int:
    """A 63-bit key of the global micro-batch ``micro`` of optimizer step ``step`` (the same on every rank)."""
    return _hash63(f"ekd-rows:{seed}:{step}:{micro}")


def row_uniforms(key: int, stream: str, sample_ids: Tensor, num: int) -> Tensor:
    """u_ij for rows with ``sample_ids`` (B,) and j < ``num`` → (B, num) float64 in [0, 1), on CPU."""
    stream_key = _hash63(f"{key}:{stream}")
    ids = sample_ids.detach().cpu().long().reshape(-1)  # (B,)
    seeds = position_seeds(stream_key, ids, torch.zeros_like(ids))  # (B,) one stream per row
    return counter_uniforms(seeds, num)  # (B, num)


@dataclass(frozen=True)
class RowDraws:
    """The per-row random streams of one micro-batch.

    Attributes:
        key: :func:`micro_batch_key` of (seed, step, micro-batch index).
        sample_ids: (B,) long sample ids of the rows (unique within a micro-batch).
    """

    key: int
    sample_ids: Tensor

    def uniforms(self, stream: str, num: int, device: torch.device | str | None = None) -> Tensor:
        """(B, num) float64 uniforms of stream ``stream`` (e.g. ``"pos_rs"``), on ``device`` (default CPU)."""
        return row_uniforms(self.key, stream, self.sample_ids, num).to(device or "cpu")
