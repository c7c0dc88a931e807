"""Inverse-CDF draws from rows of a categorical distribution, in two levels: blocks, then ids in a block.

Draw j of row i is the id v whose CDF interval holds x_ij = u_ij · Σ_v r_iv:

    v = min{ v : R_iv > x_ij },   R_iv = Σ_{w ≤ v} r_iw,

the classic inverse CDF (ids in vocabulary order). The obvious implementation, a float64 ``cumsum`` over
the vocabulary, is the slowest pass of an RS-KD cache build on CPU (~5 ns per logit, more than the softmax
that precedes it). Here the same inverse CDF is found in two steps, without any (m, V) float64 tensor:

1. block masses S_ib = Σ_{v ∈ block b} r_iv (fp32 sums of ``block`` consecutive ids, one read of r) and
   their float64 prefix C_ib; each draw picks the block b with C_i,b−1 ≤ x_ij < C_ib;
2. the ``block`` probabilities of that block, their float64 prefix L, and the residual
   y = (x_ij − C_i,b−1) · L_B / S_ib rescaled to that prefix; the id is the first with L > y.

In exact arithmetic this is the flat inverse CDF. In floating point every id's probability of being
drawn is r_v/Σr up to a relative error of ~``block``·ε_fp32 from the fp32 block sums (a block's ids are
scaled together); as in any float64 CDF, an id below ~1e-16 of its block's running mass is absorbed by
rounding, and an id with r_v = 0 is never drawn.

Cost per row: one read of r, a float64 prefix over V/``block`` blocks, and ``block`` values per draw.
:func:`sampling_block` picks ``block`` ≈ √(V/N) (a power of two), which minimises V/block + N·block.
The block size is a pure function of (V, N), so the online teacher and the cache builder make the same draws.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def sampling_block(vocab_size: int, num_samples: int) -> int:
    """Ids per block: the power of two nearest √(V/N), at least 8. 2,048 ids, N=50 → 8; 151,936 → 64."""
    ideal = math.sqrt(max(vocab_size, 1) / max(num_samples, 1))
    return max(8, 1 << max(0, round(math.log2(max(ideal, 1.0)))))


def block_masses(probs: Tensor, block: int) -> Tensor:
    """S (m, ⌈V/block⌉) fp32: sums of ``block`` consecutive columns of probs (m, V); the last block may be short."""
    m, vocab = probs.shape
    full = vocab // block
    sums = probs[:, : full * block].reshape(m, full, block).sum(-1)  # (m, V // block)
    if full * block < vocab:
        sums = torch.cat([sums, probs[:, full * block :].sum(-1, keepdim=True)], dim=1)
    return sums


def inverse_cdf_draws(probs: Tensor, uniforms: Tensor, block: int) -> Tensor:
    """Ids drawn by the inverse CDF of each row of ``probs`` at ``uniforms`` (see the module docstring).

    Args:
        probs: (m, V) non-negative fp32 weights r (need not sum to 1; each row needs some positive mass).
        uniforms: (m, N) float64 in [0, 1).
        block: ids per block (see :func:`sampling_block`).

    Returns:
        (m, N) int64 ids, each with r_v > 0.
    """
    m, vocab = probs.shape
    num = uniforms.shape[1]
    masses = block_masses(probs, block).double()  # (m, nb)
    prefix = torch.nn.functional.pad(masses.cumsum(-1), (1, 0))  # (m, nb+1) C_i,b−1 then C_ib
    total_mass = prefix[:, -1:]  # (m, 1) Σr
    x = torch.minimum(uniforms * total_mass, total_mass * (1.0 - 2.0**-51))  # (m, N) in [0, Σr)
    nb = masses.shape[1]
    # (m, N) block of each draw: the number of block prefixes C_ib ≤ x
    b = torch.searchsorted(prefix[:, 1:].contiguous(), x, right=True).clamp_(max=nb - 1)
    residual = x - prefix.gather(1, b)  # (m, N) offset inside the block, in [0, S_ib)
    local = _block_values(probs, b, block)  # (m, N, block) the block's own probabilities, per draw
    within = torch.cumsum(local, -1, dtype=torch.float64)  # (m, N, block) float64 prefix L inside the block
    total = within[..., -1]  # (m, N) L_B, the block mass in float64
    y = residual * total / masses.gather(1, b)  # (m, N) rescaled to [0, L_B)
    y = torch.minimum(y, total * (1.0 - 2.0**-51))  # strictly below L_B (at least one ulp)
    j = torch.searchsorted(within, y.unsqueeze(-1), right=True).squeeze(-1)  # (m, N) first L > y
    return (b * block + j).clamp_(max=vocab - 1).view(m, num)


def _block_values(probs: Tensor, b: Tensor, block: int) -> Tensor:
    """probs (m, V) at the ``block`` ids of block b (m, N) of each draw → (m, N, block); ids ≥ V (the short
    last block) read as 0."""
    m, vocab = probs.shape
    num = b.shape[1]
    nb = -(-vocab // block)
    if nb * block == vocab:  # whole blocks: one contiguous row of `block` values each
        flat_block = (torch.arange(m, device=probs.device).view(m, 1) * nb + b).view(-1)  # (m·N,)
        return probs.reshape(m * nb, block).index_select(0, flat_block).view(m, num, block)
    ids = b.unsqueeze(-1) * block + torch.arange(block, device=probs.device)  # (m, N, block)
    local = probs.gather(1, ids.view(m, -1).clamp(max=vocab - 1)).view(m, num, block)
    return local.masked_fill_(ids >= vocab, 0.0)  # zero mass past the vocabulary, no padded copy of probs


def unique_counts(draws: Tensor) -> tuple[Tensor, Tensor]:
    """Draws (m, N) → unique ids (m, K) ascending and their counts (m, K); K = most unique ids in a row,
    shorter rows padded with id 0 and count 0."""
    draws, _ = draws.sort(-1)
    new = torch.ones_like(draws, dtype=torch.bool)
    new[:, 1:] = draws[:, 1:] != draws[:, :-1]
    slot = new.cumsum(-1) - 1  # (m, N) unique slot of each draw
    width = int(new.sum(-1).max()) if draws.numel() else 0
    ids = torch.zeros(draws.shape[0], width, dtype=torch.long, device=draws.device).scatter_(1, slot, draws)
    counts = torch.zeros_like(ids).scatter_add_(1, slot, torch.ones_like(draws))  # (m, K)
    return ids, counts


__all__ = ["block_masses", "inverse_cdf_draws", "sampling_block", "unique_counts"]
