"""The blockwise inverse-CDF sampler behind RS-KD draws (ekd.teacher.sampling)."""

from __future__ import annotations

import pytest
import torch

from ekd.teacher.cache.manifest import RS_SAMPLER
from ekd.teacher.cache.measure import zipf_logits
from ekd.teacher.sampling import block_masses, inverse_cdf_draws, sampling_block, unique_counts
from ekd.teacher.targets import counter_uniforms, position_seeds, rs_target, rs_target_from_probs


def flat_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor) -> torch.Tensor:
    """Reference: a float64 cumsum over the whole vocabulary, first id with R_v > u·R_V."""
    cdf = torch.cumsum(probs.double(), -1)  # (m, V)
    return torch.searchsorted(cdf, uniforms * cdf[:, -1:], right=True).clamp_(max=probs.shape[1] - 1)


def uniforms_for(rows: int, num: int, seed: int = 0) -> torch.Tensor:
    return counter_uniforms(
        position_seeds(seed, torch.zeros(rows, dtype=torch.long), torch.arange(rows)), num
    )


def test_block_size_is_a_power_of_two_near_sqrt_v_over_n():
    assert sampling_block(2_048, 50) == 8
    assert sampling_block(32_000, 50) == 32
    assert sampling_block(151_936, 50) == 64
    assert sampling_block(262_144, 50) == 64
    assert sampling_block(300, 50) == 8  # never below 8
    assert sampling_block(151_936, 1) == 512


@pytest.mark.parametrize("vocab", [37, 300, 2_048, 5_003])
def test_draws_match_the_flat_float64_inverse_cdf(vocab):
    """The same inverse CDF as one float64 cumsum: only rounding at interval edges may differ."""
    rows, num = 64, 200
    logits = zipf_logits(rows, vocab, seed=vocab)
    logits[:, vocab // 3 : vocab // 3 + 20] = float("-inf")  # whole zero-mass blocks inside the row
    logits[:5, -3:] = float("-inf")  # and a zero-mass tail in the last (short) block
    probs = torch.softmax(logits, -1)
    uniforms = uniforms_for(rows, num, seed=vocab)
    draws = inverse_cdf_draws(probs, uniforms, sampling_block(vocab, 50))
    reference = flat_inverse_cdf(probs, uniforms)
    assert draws.shape == (rows, num) and draws.dtype == torch.long
    assert (draws == reference).float().mean() >= 0.999
    assert (probs.gather(1, draws) > 0).all()  # never an id of probability 0


def padded_inverse_cdf(probs: torch.Tensor, uniforms: torch.Tensor, block: int) -> torch.Tensor:
    """The blockwise sampler as first written: probs padded with zeros to whole blocks, each draw's block read
    by row, its float64 prefix through a float64 copy. The sampler must make these draws to the bit."""
    m, vocab = probs.shape
    masses = block_masses(probs, block).double()  # (m, nb)
    prefix = torch.nn.functional.pad(masses.cumsum(-1), (1, 0))
    total_mass = prefix[:, -1:]
    x = torch.minimum(uniforms * total_mass, total_mass * (1.0 - 2.0**-51))
    nb = masses.shape[1]
    b = torch.searchsorted(prefix[:, 1:].contiguous(), x, right=True).clamp_(max=nb - 1)
    residual = x - prefix.gather(1, b)
    padded = torch.nn.functional.pad(probs, (0, nb * block - vocab))  # (m, nb·block)
    flat_block = (torch.arange(m).view(m, 1) * nb + b).view(-1)
    within = padded.reshape(m * nb, block)[flat_block].view(m, -1, block).double().cumsum(-1)
    total = within[..., -1]
    y = torch.minimum(residual * total / masses.gather(1, b), total * (1.0 - 2.0**-51))
    j = torch.searchsorted(within, y.unsqueeze(-1), right=True).squeeze(-1)
    return (b * block + j).clamp_(max=vocab - 1)


@pytest.mark.parametrize("vocab, block", [(37, 8), (300, 8), (5_003, 8), (50_257, 32), (2_048, 8), (640, 64)])
def test_draws_equal_the_padded_sampler_bit_for_bit(vocab, block):
    """No padded copy of probs for a short last block (gathered ids past V read 0): the same draws, zero-mass
    ids in that block included."""
    rows, num = 24, 300
    logits = zipf_logits(rows, vocab, seed=vocab)
    logits[:4, -3:] = float("-inf")  # zero mass at the end of the last block
    logits[4:8, -(vocab % block or block) :] = float("-inf")  # the whole last block without mass
    probs = torch.softmax(logits, -1)
    uniforms = uniforms_for(rows, num, seed=vocab)
    uniforms[:, :2] = torch.tensor([0.0, 1.0 - 2.0**-53], dtype=torch.float64)  # both ends
    draws = inverse_cdf_draws(probs, uniforms, block)
    assert torch.equal(draws, padded_inverse_cdf(probs, uniforms, block))
    assert (probs.gather(1, draws) > 0).all()


def test_draw_frequencies_follow_the_probabilities():
    """200,000 draws from one row of V=37 (the last block short): each frequency within 5σ of p_v."""
    vocab, num = 37, 200_000
    probs = torch.softmax(zipf_logits(1, vocab, seed=3, exponents=(0.8, 0.8)), -1)
    probs[0, 5] = 0.0
    draws = inverse_cdf_draws(probs, uniforms_for(1, num, seed=9), block=8)
    freq = torch.bincount(draws.view(-1), minlength=vocab).double() / num
    p = probs[0].double() / probs[0].double().sum()
    sigma = (p * (1 - p) / num).sqrt()
    assert ((freq - p).abs() <= 5 * sigma + 1e-12).all()
    assert freq[5] == 0


def test_unnormalized_weights_and_edge_uniforms():
    """Rows need not sum to 1; u → 1 still lands on the last positive id, u = 0 on the first."""
    probs = torch.tensor([[0.0, 2.0, 0.0, 0.0, 3.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    uniforms = torch.tensor([[0.0, 0.39999, 0.4, 1.0 - 2.0**-53]], dtype=torch.float64)
    assert inverse_cdf_draws(probs, uniforms, block=8).tolist() == [[1, 1, 4, 4]]


def test_unique_counts():
    ids, counts = unique_counts(torch.tensor([[5, 1, 5, 5], [2, 2, 2, 2]]))
    assert ids.tolist() == [[1, 5], [2, 0]] and counts.tolist() == [[1, 3], [4, 0]]


def test_rs_from_probs_equals_rs_from_logits():
    logits = zipf_logits(40, 700, seed=4)
    seeds = position_seeds(1, torch.arange(40), torch.arange(40))
    for beta in (1.0, 0.5):
        a = rs_target(logits, 50, seeds=seeds, proposal_power=beta, chunk_rows=7)
        log_p = torch.log_softmax(logits, -1)
        b = rs_target_from_probs(log_p.exp(), 50, seeds=seeds, proposal_power=beta, log_probs=log_p)
        assert torch.equal(a.target.ids, b.target.ids) and torch.equal(a.counts, b.counts)
        torch.testing.assert_close(a.target.probs, b.target.probs)


def test_rs_draws_are_pinned():
    """The draws are part of the cache format. If this fails, the sampler or the hash changed: rename
    ekd.teacher.cache.manifest.RS_SAMPLER (old caches then name the field instead of mixing draws)."""
    assert RS_SAMPLER == "splitmix64-inverse-cdf-blocked-v1"
    drawn = rs_target(
        zipf_logits(3, 1000, seed=21), 50, seeds=position_seeds(5, torch.tensor([1, 2, 3]), torch.arange(3))
    )
    keep = drawn.counts[0] > 0
    assert list(zip(drawn.target.ids[0][keep].tolist(), drawn.counts[0][keep].tolist())) == [
        (137, 14), (206, 1), (239, 1), (305, 1), (379, 1), (592, 2), (696, 3), (827, 1), (879, 1), (959, 25)
    ]  # fmt: skip
