"""Sparse teacher targets from full teacher logits: top-K and RS-KD (METHODS §2).

Pure functions on rows of teacher logits ``(M, V)`` → :class:`~ekd.losses.targets.SparseTarget`. Every
target starts from the teacher's **full** softmax (never a softmax over the kept ids).

- :func:`topk_target` — the K largest teacher probabilities with ``renormalize``, ``ghost`` or ``to_gold``
  tail handling.
- :func:`rs_target` — Random-Sampling KD (Anshumann et al. 2025, arXiv 2503.16870): N draws with
  replacement from the teacher softmax at the KD temperature, p_τ = softmax(z_t/τ) (or from a proposal
  r ∝ p_τ^β with importance weights), target t̂ = c/N over the unique ids. E[t̂] = p_τ, so the gradient of
  the forward KL(p_τ‖q_τ) is unbiased.
  :func:`rs_target_from_probs` does the same from probabilities already computed.

RS draws are a pure function of ``(seed, sample_id, position)``: :func:`position_seeds` hashes the triple
with splitmix64, and draw j of a row uses the uniform u_j = splitmix64(seed_pos, j) → [0, 1) through the
inverse CDF of that row alone (:mod:`ekd.teacher.sampling`: blockwise, no (M, V) float64 tensor). No
global RNG is touched, so a position gets the same draws online in a batch of any size and composition,
and in the cache builder (one softmax for both, ``row_softmax``: the same p to the last bit on CPU). The hash
and the sampler are part of the cache format: changing either changes
every cached RS target.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ekd.losses.divergences import check_temperature, log_probs_at
from ekd.losses.row_reductions import row_softmax
from ekd.losses.targets import SparseTarget
from ekd.teacher.sampling import inverse_cdf_draws, sampling_block, unique_counts

TAIL_MODES = ("renormalize", "ghost", "to_gold")

# splitmix64 constants (Steele, Lea, Flood 2014); arithmetic in uint64, wrapping mod 2^64.
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_DOMAIN_SAMPLE = np.uint64(0x5A17_E5D5_0000_0001)  # separate the sample and position hash stages
_DOMAIN_POSITION = np.uint64(0x705F_0E55_0000_0002)


def _mix64(z: np.ndarray) -> np.ndarray:
    """splitmix64 finalizer on a uint64 array (wraps mod 2^64)."""
    z = (z ^ (z >> np.uint64(30))) * _MIX1
    z = (z ^ (z >> np.uint64(27))) * _MIX2
    return z ^ (z >> np.uint64(31))


def _as_uint64(x: Tensor | np.ndarray | int) -> np.ndarray:
    if isinstance(x, Tensor):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.int64).view(np.uint64)


def position_seeds(seed: int, sample_ids: Tensor, positions: Tensor) -> Tensor:
    """Per-position RS seeds: a fixed hash of (seed, sample_id, position).

    Args:
        seed: run seed (``run.seed``; recorded in the cache signature).
        sample_ids: (B,) int sample ids with positions (B, T), or the same shape as ``positions`` (one
            sample id per flat row, e.g. (M,) with positions (M,)).
        positions: (B, T) or (M,) token positions inside the block (``logits[:, t]`` predicts ``labels[:, t]``).

    Returns:
        int64 tensor with the shape of ``positions`` (on CPU).
    """
    pos = _as_uint64(positions)
    sid = _as_uint64(sample_ids)
    if sid.ndim == 1 and pos.ndim == 2:
        sid = sid[:, None]  # (B, 1) broadcast over T
    try:
        shape_ok = np.broadcast_shapes(sid.shape, pos.shape) == pos.shape
    except ValueError:
        shape_ok = False
    if not shape_ok:
        raise ValueError(f"sample_ids {tuple(sid.shape)} does not match positions {tuple(pos.shape)}")
    with np.errstate(over="ignore"):
        h = _mix64(np.full(1, seed, dtype=np.int64).view(np.uint64) + _GOLDEN)
        h = _mix64((h ^ sid) + _DOMAIN_SAMPLE)
        h = _mix64((h ^ pos) + _DOMAIN_POSITION)  # (B, T) or (M,)
    return torch.from_numpy(np.ascontiguousarray(h).view(np.int64))


def counter_uniforms(seeds: Tensor, num: int) -> Tensor:
    """u_ij = splitmix64(seeds_i, j) mapped to [0, 1) with 53 bits. seeds (M,) int64 → (M, num) float64."""
    s = _as_uint64(seeds).reshape(-1, 1)  # (M, 1)
    j = np.arange(1, num + 1, dtype=np.uint64)[None, :]  # (1, num) counters
    with np.errstate(over="ignore"):
        z = _mix64(s + j * _GOLDEN)  # (M, num): the j-th splitmix64 output from state seeds_i
    return torch.from_numpy((z >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53)))


def topk_target(
    teacher_logits: Tensor,
    k: int,
    tail: str = "renormalize",
    gold: Tensor | None = None,
    tau: Tensor | float = 1.0,
) -> SparseTarget:
    """Top-K teacher target from the full teacher softmax at temperature τ.

    With p = softmax(z_t/τ) and K the k largest entries of p:

    - ``renormalize``: t = p_K / Σ_K p (biased; known to miscalibrate the student).
    - ``ghost``: t = p_K unchanged and ``tail`` = 1 − Σ_K p (computed as the sum over the complement, exact
      for small tails); the loss matches it against the student's tail mass 1 − Σ_K q.
    - ``to_gold``: the tail mass 1 − Σ_K p is added to the gold token. The result always has K+1 slots:
      if the gold id is among the K, its slot gets the tail and slot K+1 is padding (gold id, probability
      0); otherwise slot K+1 is (gold id, tail mass) — the tail includes p(gold) itself. Rows sum to 1.

    Args:
        teacher_logits: (M, V) teacher logits.
        k: number of kept ids, 1 ≤ k ≤ V.
        tail: one of ``renormalize``, ``ghost``, ``to_gold``.
        gold: (M,) gold token ids, required (all in [0, V)) for ``to_gold``.
        tau: temperature, float or (M,).

    Returns:
        SparseTarget with ids/probs (M, K), or (M, K+1) for ``to_gold``; ``tail`` (M,) for ``ghost``.
    """
    if tail not in TAIL_MODES:
        raise ValueError(f"top-K tail must be one of {TAIL_MODES}, got {tail!r}")
    check_temperature(tau, "topk_target")
    vocab = teacher_logits.shape[-1]
    if not 1 <= k <= vocab:
        raise ValueError(f"top-K k must be in [1, V={vocab}], got {k}")
    with torch.no_grad():
        log_p = log_probs_at(teacher_logits, tau)  # (M, V) full teacher softmax, fp32
        top_log_p, ids = log_p.topk(k, dim=-1)  # (M, K)
        if tail == "renormalize":
            return SparseTarget(ids, torch.softmax(top_log_p, dim=-1))  # p_K / Σ_K p, in log space
        p_k = top_log_p.exp()  # (M, K)
        tail_mass = log_p.exp().scatter(-1, ids, 0.0).sum(-1)  # (M,) mass outside the K ids
        if tail == "ghost":
            return SparseTarget(ids, p_k, tail_mass)
        if gold is None:
            raise ValueError("top-K tail 'to_gold' needs the gold token ids")
        gold = gold.to(ids.device, torch.long).reshape(-1)  # (M,)
        if gold.shape[0] != ids.shape[0] or bool(((gold < 0) | (gold >= vocab)).any()):
            raise ValueError(
                f"top-K 'to_gold' needs one gold id in [0, {vocab}) per row (ignored rows cannot be targets)"
            )
        is_gold = ids == gold[:, None]  # (M, K)
        probs = p_k + is_gold * tail_mass[:, None]
        extra = torch.where(is_gold.any(-1), torch.zeros_like(tail_mass), tail_mass)  # (M,)
        return SparseTarget(torch.cat([ids, gold[:, None]], -1), torch.cat([probs, extra[:, None]], -1))


@dataclass
class SampledTarget:
    """RS-KD draws at M rows: the training target plus what the cache stores.

    Attributes:
        target: SparseTarget with ids (M, Kmax) and probs t̂ (M, Kmax) = c/N (× p/r with a proposal);
            padding slots have id 0 and probability 0.
        counts: (M, Kmax) int64 draw counts c (0 at padding); each row sums to N.
        weights: (M, Kmax) fp32 importance weights p/r (0 at padding), or None when sampling from p.
        num_samples: N.
    """

    target: SparseTarget
    counts: Tensor
    weights: Tensor | None
    num_samples: int

    @property
    def num_unique(self) -> Tensor:
        """(M,) number of unique ids per row."""
        return (self.counts > 0).sum(-1)


def rs_target(
    teacher_logits: Tensor,
    num_samples: int = 50,
    *,
    seeds: Tensor,
    proposal_power: float = 1.0,
    chunk_rows: int = 256,
    tau: Tensor | float = 1.0,
) -> SampledTarget:
    """Random-Sampling KD target: N draws with replacement, unique ids and counts, t̂ = c/N.

    Draws come from the teacher softmax at the KD temperature, p = softmax(z_t/τ) — the distribution the
    student is compared with at τ, so RS and dense targets have the same fixed point — or, with
    ``proposal_power`` β ≠ 1, from r ∝ p^β with importance weights: t̂ = (c/N)·p/r, unbiased and
    unnormalized (Σ t̂ ≠ 1 in general; E[t̂] = p). τ changes the distribution, never the uniforms: a row
    keeps its seeds at every τ. One softmax per row chunk, then :func:`rs_target_from_probs`.

    Args:
        teacher_logits: (M, V) teacher logits.
        num_samples: N draws per row.
        seeds: (M,) int64 per-row seeds from :func:`position_seeds`.
        proposal_power: β of the proposal r ∝ p^β (> 0; 1 samples from p itself).
        chunk_rows: rows per chunk (peak memory O(chunk_rows · V)); does not change the result.
        tau: KD temperature, a float or (M,) per row (> 0).

    Returns:
        SampledTarget; Kmax is the largest unique count over the M rows.
    """
    rows = teacher_logits.shape[0]
    seeds = seeds.reshape(-1)
    if seeds.shape[0] != rows:
        raise ValueError(f"rs_target needs one seed per row: {seeds.shape[0]} seeds for {rows} rows")
    check_temperature(tau, "rs_target")
    if isinstance(tau, Tensor) and tau.dim() == 0:
        tau = float(tau)  # one τ for every row (checked above)
    if isinstance(tau, Tensor):
        tau = tau.float().reshape(-1, 1)  # (M, 1) broadcast over the vocabulary
        if tau.shape[0] != rows:
            raise ValueError(f"rs_target needs one temperature per row: {tau.shape[0]} for {rows} rows")
    parts = []
    with torch.no_grad():
        for start in range(0, max(rows, 1), chunk_rows):  # one (empty) chunk when there are no rows
            tau_m = tau[start : start + chunk_rows] if isinstance(tau, Tensor) else tau  # (m, 1) or float
            z = teacher_logits[start : start + chunk_rows].float() / tau_m  # (m, V) logits at τ
            log_p = None if proposal_power == 1.0 else torch.log_softmax(z, -1)  # (m, V) at τ
            probs = row_softmax(z) if log_p is None else log_p.exp()  # the cache's p (bit for bit on CPU)
            seeds_m = seeds[start : start + chunk_rows]
            parts.append(
                rs_target_from_probs(
                    probs, num_samples, seeds=seeds_m, proposal_power=proposal_power, log_probs=log_p
                )
            )
    return concat_sampled(parts)


def rs_target_from_probs(
    probs: Tensor,
    num_samples: int = 50,
    *,
    seeds: Tensor,
    proposal_power: float = 1.0,
    log_probs: Tensor | None = None,
) -> SampledTarget:
    """:func:`rs_target` from the teacher's probabilities p (m, V) at the target temperature, e.g. the
    softmax at τ=1 the cache builder already computed for the teacher entropy.

    Draw j of row i is the inverse CDF of the proposal at the counter-based uniform u_ij
    (:func:`counter_uniforms`), found blockwise by :func:`~ekd.teacher.sampling.inverse_cdf_draws`. With
    β ≠ 1 the proposal needs log p: ``log_probs`` if given, else log(probs).
    """
    if num_samples < 1:
        raise ValueError(f"RS num_samples must be ≥ 1, got {num_samples}")
    if not proposal_power > 0:
        raise ValueError(f"RS proposal_power must be > 0, got {proposal_power}")
    rows, vocab = probs.shape
    seeds = seeds.reshape(-1)
    if seeds.shape[0] != rows:
        raise ValueError(f"rs_target needs one seed per row: {seeds.shape[0]} seeds for {rows} rows")
    device = probs.device
    if rows == 0:
        empty = torch.zeros(0, 0, dtype=torch.long, device=device)
        weights = None if proposal_power == 1.0 else empty.float()
        return SampledTarget(SparseTarget(empty, empty.float()), empty, weights, num_samples)
    with torch.no_grad():
        proposal, log_p, log_r = probs, None, None
        if proposal_power != 1.0:
            log_p = log_probs if log_probs is not None else probs.log()  # (m, V)
            log_r = torch.log_softmax(proposal_power * log_p, -1)  # (m, V) proposal ∝ p^β
            proposal = log_r.exp()
        uniforms = counter_uniforms(seeds, num_samples).to(device)  # (m, N) float64
        draws = inverse_cdf_draws(proposal, uniforms, sampling_block(vocab, num_samples))  # (m, N)
        ids, counts = unique_counts(draws)  # (m, K)
        target = counts.float() / num_samples
        # a row of NaN probabilities (a NaN or +inf teacher logit) draws arbitrary ids: its values are NaN, so a
        # loss on it is NaN (the trainer stops), never a finite loss on made-up targets
        target = target.masked_fill(probs.gather(1, ids).isnan(), float("nan"))
        weights = None
        if log_p is not None and log_r is not None:
            log_w = log_p.gather(1, ids) - log_r.gather(1, ids)  # (m, K) log p/r
            weights = torch.where(counts > 0, log_w.exp(), torch.zeros_like(log_w))
            target = target * weights
    return SampledTarget(SparseTarget(ids, target), counts, weights, num_samples)


def concat_sampled(parts: list[SampledTarget]) -> SampledTarget:
    """Rows of all parts in order; K padded to the widest (id 0, count 0)."""
    kmax = max(p.counts.shape[1] for p in parts)
    pad = lambda x: torch.nn.functional.pad(x, (0, kmax - x.shape[1]))  # noqa: E731
    ids = torch.cat([pad(p.target.ids) for p in parts])  # (M, Kmax)
    probs = torch.cat([pad(p.target.probs) for p in parts])
    counts = torch.cat([pad(p.counts) for p in parts])
    weights = None if parts[0].weights is None else torch.cat([pad(p.weights) for p in parts])
    return SampledTarget(SparseTarget(ids, probs), counts, weights, parts[0].num_samples)


__all__ = [
    "TAIL_MODES",
    "SampledTarget",
    "concat_sampled",
    "counter_uniforms",
    "position_seeds",
    "rs_target",
    "rs_target_from_probs",
    "topk_target",
]
