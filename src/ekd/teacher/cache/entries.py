"""What a teacher cache stores for one batch: teacher statistics and sparse targets at the cached positions.

For every training block the teacher body runs once; its head is applied chunk-wise at the valid rows only
(never a (B, T, V) tensor). Each chunk's softmax yields the teacher entropy H(p) and log p(gold) at τ=1 of
every valid position and — with ``teacher.cache_positions=all`` — the RS draws from the same probabilities.
With ``teacher_entropy_topk`` the ⌈f·n⌉ highest-entropy positions of each sequence
(``teacher.cache_fraction`` = f) are chosen from those statistics and the head runs again at those rows
only. Targets follow ``method.target``: ``rs`` draws with :func:`~ekd.teacher.targets.position_seeds` of
``(run.seed, sample_id, position)`` — the very draws the online teacher makes — and ``topk`` keeps K
probabilities at τ = ``method.kd_temperature``.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from ekd.config import Config
from ekd.losses.matmul import RowBuffer
from ekd.losses.targets import Head
from ekd.models.body import body_outputs
from ekd.teacher.cache.format import CacheError
from ekd.teacher.cache.signature import target_spec
from ekd.teacher.signal import TargetSpec
from ekd.teacher.targets import position_seeds, rs_target, rs_target_from_probs, topk_target
from ekd.train.precision import teacher_dtype_advice
from ekd.train.token_stats import logp_at, softmax_entropy


@dataclass
class _Targets:
    """Sparse targets at m rows: ids/values (m, K), weights (m, K) or None, tail (m,) or None."""

    ids: Tensor
    values: Tensor
    weights: Tensor | None = None
    tail: Tensor | None = None


def _targets_at(
    logits: Tensor,
    flat_rows: Tensor,
    gold: Tensor,
    sample_ids: Tensor,
    T: int,
    spec: TargetSpec,
    tau: float,
    probs: Tensor | None = None,
) -> _Targets:
    """Targets from teacher logits (m, V) at flat rows (m,) of a (B, T) batch — the online teacher's math.

    ``probs`` = p at τ=1 when the caller already has it (RS then reuses it)."""
    if spec.kind == "rs":
        r = flat_rows.cpu()
        # (m,) as online: (seed, sample, position)
        seeds = position_seeds(spec.seed, sample_ids[r // T], r % T)
        if probs is None or spec.rs_proposal_power != 1.0:
            res = rs_target(logits, spec.rs_samples, seeds=seeds, proposal_power=spec.rs_proposal_power)
        else:
            res = rs_target_from_probs(probs, spec.rs_samples, seeds=seeds)
        return _Targets(res.target.ids, res.counts, res.weights)
    t = topk_target(logits, spec.topk, spec.topk_tail, gold, tau)
    return _Targets(t.ids, t.probs, None, t.tail)


def _concat(parts: list[_Targets]) -> _Targets:
    """Rows of all parts, K padded to the widest (value 0 = padding, dropped by the writer)."""
    k = max(p.ids.shape[1] for p in parts)
    pad = lambda x: torch.nn.functional.pad(x, (0, k - x.shape[1]))  # noqa: E731
    return _Targets(
        torch.cat([pad(p.ids) for p in parts]),  # (P, K)
        torch.cat([pad(p.values) for p in parts]),  # (P, K)
        None if parts[0].weights is None else torch.cat([pad(p.weights) for p in parts]),
        None if parts[0].tail is None else torch.cat([p.tail for p in parts]),  # (P,)
    )


def _balanced(n: int, chunk_rows: int) -> int:
    """Equal chunks of at most ``chunk_rows`` rows covering n: 1,020 rows by 883 → 510 + 510, not 883 + 137
    (a short GEMM tail runs far below peak)."""
    pieces = max(1, -(-n // max(chunk_rows, 1)))
    return max(1, -(-n // pieces))


@torch.no_grad()
def batch_entries(
    hidden: Tensor,
    head: Head,
    labels: Tensor,
    sample_ids: Tensor,
    spec: TargetSpec,
    *,
    positions: str = "all",
    fraction: float = 1.0,
    tau: float = 1.0,
    chunk_rows: int = 1024,
    work_rows: int | None = None,
    logits_buffer: RowBuffer | None = None,
) -> list[dict]:
    """What the cache stores for each sample of a batch, as keyword arguments of ``CacheWriter.add``.

    Args:
        hidden: (B, T, Dt) teacher final hidden states.
        head: the teacher head sliced to the shared vocabulary.
        labels: (B, T) shifted labels, -100 = no target.
        sample_ids: (B,) sample ids (CPU).
        spec: the target (``rs`` or ``topk``) and RS seed.
        positions: 'all' valid positions or 'teacher_entropy_topk' (per sequence, ⌈fraction·n⌉ by H(p)).
        tau: top-K temperature.
        chunk_rows: teacher rows whose (m, V) logits exist at once (the online teacher's chunking).
        work_rows: rows per slice of those logits for the softmax/sampling passes (None = the whole chunk);
            on CPU ~1 MB slices stay in cache across the passes. Does not change any value.
        logits_buffer: where the teacher logits of every chunk are written (one buffer for a whole build,
            ``teacher_entries``), instead of fresh memory per chunk. Does not change any value.

    Returns:
        B dicts: sample_id, positions (P,), stats {'entropy', 'logp_gold'} (P,), ids/values (P, K),
        weights, tail, num_tokens (valid positions of the sample).
    """
    from ekd.selection.base import topk_mask

    B, T = labels.shape
    valid = labels != -100  # (B, T)
    rows = valid.reshape(-1).nonzero().squeeze(-1)  # (N,) flat valid positions
    gold = labels.reshape(-1)[rows]  # (N,)
    h = hidden.reshape(B * T, -1)  # (B·T, Dt)
    n = rows.numel()
    entropy = torch.zeros(n, device=labels.device)  # (N,)
    logp_gold = torch.zeros(n, device=labels.device)
    fused = positions == "all"  # targets from the same logits as the statistics: one head pass
    parts: list[_Targets] = []
    chunk_rows = _balanced(n, chunk_rows)
    buffer = logits_buffer or RowBuffer()
    for start in range(0, n, chunk_rows):
        # (m, V) teacher logits at valid rows
        logits = head(h[rows[start : start + chunk_rows]], buffer).float()
        # one exp pass per slice feeds the statistics and the RS draws (row_logsumexp_entropy with its p)
        step = work_rows or logits.shape[0]
        for sub in range(0, logits.shape[0], step):
            z = logits[sub : sub + step]  # (w, V)
            sl = slice(start + sub, start + sub + z.shape[0])  # the same w rows of the batch
            p, lse, entropy[sl] = softmax_entropy(z)  # (w, V), (w,), (w,)
            logp_gold[sl] = logp_at(z, lse, gold[sl])
            if fused:
                parts.append(_targets_at(z, rows[sl], gold[sl], sample_ids, T, spec, tau, probs=p))
    entropy_host, rows_host = entropy.cpu().numpy(), rows.cpu().numpy()  # (N,) each, copied to the host once
    _refuse_nan_teacher(entropy_host, rows_host, sample_ids, T, head.weight.dtype)  # before any row is chosen
    if fused:
        chosen = torch.arange(n, device=labels.device)  # (P,) indices into rows
    else:
        grid = torch.zeros(B * T, device=labels.device)
        grid[rows] = entropy
        mask = topk_mask(grid.view(B, T), valid, fraction, "sequence")  # (B, T) highest teacher entropy
        chosen = mask.reshape(-1)[rows].nonzero().squeeze(-1)  # (P,)
        step = _balanced(chosen.numel(), chunk_rows)
        for start in range(0, chosen.numel(), step):
            c = chosen[start : start + step]
            logits = head(h[rows[c]], buffer).float()  # (m, V) at the chosen rows only
            parts.append(_targets_at(logits, rows[c], gold[c], sample_ids, T, spec, tau))
    chosen_host = chosen.cpu().numpy()  # (P,)
    flat = rows_host[chosen_host]  # (P,) chosen flat positions, ascending
    ent, lpg = entropy_host[chosen_host], logp_gold[chosen].cpu().numpy()
    if parts:
        t = _concat(parts)
        arrays = {k: None if v is None else v.cpu().numpy() for k, v in vars(t).items()}
    else:  # no valid position in the whole batch
        arrays = {
            "ids": np.zeros((0, 0), np.int64),
            "values": np.zeros((0, 0), np.int64),
            "weights": None,
            "tail": None,
        }
    bounds = np.searchsorted(flat, np.arange(B + 1) * T)  # (B+1,) each sample's slice of the chosen rows
    num_tokens = valid.sum(1).tolist()
    out = []
    for b in range(B):
        s = slice(bounds[b], bounds[b + 1])
        out.append(
            {
                "sample_id": int(sample_ids[b]),
                "positions": flat[s] - b * T,
                "stats": {"entropy": ent[s], "logp_gold": lpg[s]},
                **{k: None if v is None else v[s] for k, v in arrays.items()},  # ids, values, weights, tail
                "num_tokens": int(num_tokens[b]),
            }
        )
    return out


def _refuse_nan_teacher(
    entropy: np.ndarray, flat_rows: np.ndarray, sample_ids: Tensor, T: int, dtype: torch.dtype
) -> None:
    """Refuse a batch whose teacher logits are NaN at some valid position (its entropy (N,) is NaN there): its
    statistics and draws would be stored as made-up numbers (a quantized NaN entropy reads 0). ``dtype``: the
    teacher head's, said with the advice (float32 only to a 16-bit teacher).

    Raises:
        CacheError: naming the first sample and position, and the likely causes.
    """
    bad = np.flatnonzero(np.isnan(entropy))
    if not bad.size:
        return
    row = int(flat_rows[bad[0]])
    raise CacheError(
        f"the teacher's logits are not finite (NaN or +inf) at {bad.size:,} position(s) of this batch (first: sample "
        f"{int(sample_ids[row // T])}, position {row % T}): nothing of it is written; check the teacher's weights "
        f"({teacher_dtype_advice(dtype)})"
    )


@dataclass(frozen=True)
class EntryOptions:
    """How :func:`batch_entries` runs: the target, which positions, and the row chunking (see there)."""

    spec: TargetSpec
    positions: str = "all"
    fraction: float = 1.0
    tau: float = 1.0
    chunk_rows: int = 1024
    work_rows: int | None = None

    @classmethod
    def from_config(cls, cfg: Config, vocab_size: int, device: torch.device) -> EntryOptions:
        return cls(
            spec=target_spec(cfg),
            positions=cfg.teacher.cache_positions,
            fraction=cfg.teacher.cache_fraction,
            tau=cfg.method.kd_temperature,
            chunk_rows=cfg.train.head_chunk_size or build_chunk_rows(vocab_size),
            work_rows=work_rows_for(device, vocab_size),
        )


def build_chunk_rows(vocab_size: int) -> int:
    """Teacher rows whose logits exist at once while building: ~512 MB of fp32 logits (no gradient is
    kept, so the chunk can be larger than the training head's; a long GEMM runs ~15% faster than 256 rows)."""
    from ekd.losses.chunked import auto_chunk_rows

    return max(auto_chunk_rows(vocab_size), (1 << 29) // (4 * vocab_size))


def work_rows_for(device: torch.device, vocab_size: int) -> int | None:
    """Rows per softmax slice: ~8 MB of fp32 logits on CPU (few enough slices that the RS draws' ~20 small ops
    per slice stay cheap: at V=2,048 1,024 rows build 17% faster than 512; at V=32,000 slices of 4× and 16×
    the rows measured no faster, as the statistics run in ~1 MiB row blocks inside a slice); whole chunks on
    GPU."""
    if device.type != "cpu":
        return None
    return max(16, (1 << 23) // (4 * vocab_size))


def teacher_entries(
    teacher: nn.Module,
    head: Head,
    batches: Iterable,
    options: EntryOptions,
    amp: torch.dtype | None = None,
) -> Iterator[list[dict]]:
    """Per batch (an :class:`~ekd.data.collate.Batch` on the teacher's device): the teacher body once (no
    grad, autocast as online), then :func:`batch_entries`, all batches' logits in one reused buffer."""
    logits_buffer = RowBuffer()
    for batch in batches:
        device = batch.input_ids.device
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            body = body_outputs(teacher, batch)
        yield batch_entries(
            body.last_hidden_state,  # (B, T, Dt)
            head,
            batch.labels,
            batch.sample_ids.cpu(),
            options.spec,
            positions=options.positions,
            fraction=options.fraction,
            tau=options.tau,
            chunk_rows=options.chunk_rows,
            work_rows=options.work_rows,
            logits_buffer=logits_buffer,
        )


__all__ = ["EntryOptions", "batch_entries", "build_chunk_rows", "teacher_entries", "work_rows_for"]
