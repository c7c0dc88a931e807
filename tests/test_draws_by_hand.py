"""docs/methods.md "Reproducing a step by hand" gives every random draw of a step as plain integer arithmetic (the
hash, the RS seeds, the per-row streams): computed here from that text alone, in Python integers, they equal
ekd's draws bit for bit (try-out 58, F6: the recipe left out the key string, the streams, the 0-based step and
the constants, so a reader had to import ekd's own helpers)."""

from __future__ import annotations

import hashlib

import torch

from ekd.selection.draws import RowDraws, micro_batch_key
from ekd.teacher.targets import counter_uniforms, position_seeds

M64 = 2**64
GAMMA = 0x9E3779B97F4A7C15


def _mix(z: int) -> int:
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9 % M64
    z = (z ^ (z >> 27)) * 0x94D049BB133111EB % M64
    return z ^ (z >> 31)


def _seed(a: int, i: int, t: int) -> int:
    h0 = _mix((a + GAMMA) % M64)
    h1 = _mix(((h0 ^ i) + 0x5A17E5D500000001) % M64)
    return _mix(((h1 ^ t) + 0x705F0E5500000002) % M64)


def _uniforms(seed: int, n: int) -> list[float]:
    return [(_mix((seed + j * GAMMA) % M64) >> 11) * 2.0**-53 for j in range(1, n + 1)]


def _h(text: str) -> int:
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") & (2**63 - 1)


def test_rs_draws_follow_the_documented_hash():
    run_seed, samples, positions = 11, torch.tensor([0, 3, 40]), torch.tensor([0, 7, 31])
    seeds = position_seeds(run_seed, samples, positions)
    mine = [_seed(run_seed, int(i), int(t)) for i, t in zip(samples, positions)]
    assert [s % M64 for s in seeds.tolist()] == mine
    assert counter_uniforms(seeds, 5).tolist() == [_uniforms(s, 5) for s in mine]


def test_per_row_streams_follow_the_documented_keys():
    run_seed, step, sample_ids = 3, 5, torch.tensor([4, 9, 120])
    key = _h(f"ekd-rows:{run_seed}:{step}:0")
    assert micro_batch_key(run_seed, step, 0) == key
    rows = RowDraws(key, sample_ids)
    for stream in ("random_scorer", "pos_rs"):
        stream_key = _h(f"{key}:{stream}")
        want = [_uniforms(_seed(stream_key, int(i), 0), 6) for i in sample_ids]
        assert rows.uniforms(stream, 6).tolist() == want, stream


def test_on_policy_coin_and_key_follow_the_documented_generator():
    """Try-out 60, F1: the recipe gave the on-policy stream the step's key; it is keyed by the micro-batch's own
    generator (coin, then key), which the recipe now spells out."""
    from ekd.selection.draws import row_uniforms
    from ekd.train.onpolicy import on_policy_generator

    run_seed, step, micro, sample_ids = 7, 4, 3, torch.tensor([2, 30])
    b = (run_seed * 1000003 + step * 1009 + micro) % 2**63
    mine = torch.Generator().manual_seed((b * 6364136223846793005 + 1442695040888963407) % 2**63)
    theirs = on_policy_generator(run_seed, step, micro)
    coin = float(torch.rand((), generator=mine))
    assert coin == float(torch.rand((), generator=theirs))
    key = int(torch.randint(0, 2**62, (), generator=mine))
    assert key == int(torch.randint(0, 2**62, (), generator=theirs))
    want = [_uniforms(_seed(_h(f"{key}:on_policy"), int(i), 0), 5) for i in sample_ids]
    assert row_uniforms(key, "on_policy", sample_ids, 5).tolist() == want
