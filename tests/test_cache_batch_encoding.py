"""Batched cache encoding (issue 16 part 3): ``CacheWriter.add_batch`` and ``encode_records`` write the same
bytes as the per-sample path did before batching.

The hashes in ``REFERENCE`` were computed by the per-record encoder before the batched one replaced it
(commit be71b74, ``CacheWriter.add`` one sample at a time); every layout the format has is covered: RS counts,
RS with importance weights, top-K renormalize / ghost tail / to_gold, q8 and fp16 statistics, bitmask and
varint positions, samples without positions, Elias–Fano and fixed-width id rows.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from ekd.teacher.cache import CacheReader, CacheWriter, make_signature

# (name, signature kwargs, stat_format, vocab)
CASES = (
    ("rs", dict(target="rs", rs_samples=50), "q8", 151_936),
    ("rs-weighted", dict(target="rs", rs_samples=30, rs_proposal_power=0.5), "q8", 1_000),
    ("topk-renormalize", dict(target="topk", topk=12, topk_tail="renormalize"), "q8", 151_936),
    ("topk-ghost-fp16", dict(target="topk", topk=8, topk_tail="ghost"), "fp16", 2_048),
    ("topk-to-gold", dict(target="topk", topk=5, topk_tail="to_gold"), "q8", 50),
)
BLOCK, SAMPLES = 37, 11


def case_samples(target: dict, vocab: int, seed: int) -> list[dict]:
    """Deterministic samples exercising every section: all positions (bitmask), a few (varint), none."""
    rng = np.random.default_rng(seed)
    out = []
    for s in range(SAMPLES):
        p = (BLOCK, 3, 0, int(rng.integers(1, BLOCK)))[s % 4]
        positions = rng.permutation(rng.choice(BLOCK, p, replace=False))  # any order: stored sorted
        kmax = target.get("topk", 0) + (1 if target.get("topk_tail") == "to_gold" else 0) or 13
        ids = np.zeros((p, kmax), dtype=np.int64)
        values = np.zeros((p, kmax))
        for i in range(p):
            k = int(rng.integers(1, kmax + 1))
            slots = rng.choice(kmax, k, replace=False)  # padding anywhere in the row
            ids[i, slots] = rng.choice(vocab, k, replace=False)
            if target["target"] == "rs":
                n = target["rs_samples"]
                k = min(k, n)
                values[i, slots[:k]] = 1 + rng.multinomial(n - k, np.ones(k) / k)
                ids[i, slots[k:]] = 0
            else:
                values[i, slots] = rng.uniform(1e-4, 1.0, k)
        sample = dict(
            sample_id=s,
            positions=positions,
            stats={
                "entropy": rng.uniform(0, np.log(vocab), p).astype(np.float32),
                "logp_gold": -rng.exponential(3.0, p).astype(np.float32),
            },
            ids=ids,
            values=values,
            num_tokens=int(rng.integers(p, BLOCK + 1)),
        )
        if target.get("rs_proposal_power", 1.0) != 1.0:
            sample["weights"] = np.where(values > 0, rng.uniform(0.1, 3.0, values.shape), 0).astype(
                np.float32
            )
        if target.get("topk_tail") == "ghost":
            sample["tail"] = rng.uniform(0, 0.5, p).astype(np.float32)
        out.append(sample)
    return out


def signature(target: dict, vocab: int) -> dict:
    return make_signature(
        teacher_id="t",
        teacher_revision="r",
        tokenizer_hash="h",
        data_fingerprint="d",
        block_length=BLOCK,
        packing="p",
        vocab_size=vocab,
        **target,
    )


def directory_sha256(directory: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(Path(directory).iterdir()):
        h.update(path.name.encode() + b"\0" + path.read_bytes())
    return h.hexdigest()


REFERENCE = {
    "rs": "c801789963a62aaf71ce30d0ec5565d3b8d9584bda906c96fde2b5c1f688c5bc",
    "rs-weighted": "cb8ec9f91795bd493bc6b3f7acbb53ffd623f04156d920ec4d8775a6bade0b5b",
    "topk-renormalize": "aa6c82b4b3061b569deabd3b04e0e8b16e37e8a26fed2148fa46c1882af819cb",
    "topk-ghost-fp16": "679278fb73908feb6e17b9c77d16074e645cc27a8953d74898aec4cd2eaac816",
    "topk-to-gold": "b9368893ddd7b7fb5266a67c9bba74359b296dc0b30f9ce53f1020fa00238806",
}


@pytest.mark.parametrize("name, target, stat_format, vocab", CASES, ids=[c[0] for c in CASES])
@pytest.mark.parametrize("batch", [1, 4, SAMPLES])
def test_batched_build_writes_the_pre_batching_bytes(tmp_path, name, target, stat_format, vocab, batch):
    """Samples added in batches of 1, 4 and all (out of order across shards) give the stored bytes."""
    samples = case_samples(target, vocab, seed=len(name))
    order = np.random.default_rng(batch).permutation(SAMPLES)
    writer = CacheWriter(tmp_path, signature(target, vocab), SAMPLES, 4, stat_format=stat_format)
    for start in range(0, SAMPLES, batch):
        assert all(writer.add_batch([samples[i] for i in order[start : start + batch]]))
    writer.close()
    assert CacheReader(tmp_path).verify()["samples"] == SAMPLES
    assert directory_sha256(tmp_path) == REFERENCE[name]


def test_add_batch_skips_written_shards_and_rejects_a_bad_sample_whole(tmp_path):
    target, vocab = dict(target="rs", rs_samples=50), 151_936
    samples = case_samples(target, vocab, seed=2)
    writer = CacheWriter(tmp_path, signature(target, vocab), SAMPLES, 4)
    assert writer.add_batch(samples[:4]) == [True] * 4  # shard 0 written
    bad = dict(samples[5], values=samples[5]["values"] * 2)  # counts sum to 2N
    with pytest.raises(ValueError, match=r"^sample 5: RS values must be integer counts summing to N=50"):
        writer.add_batch([samples[4], bad])
    assert writer.pending_sample_ids() == list(range(4, SAMPLES))  # nothing of the failed batch was kept
    with pytest.raises(ValueError, match="sample 6 was already added"):
        writer.add_batch([samples[6], samples[6]])
    assert writer.add_batch(samples[2:]) == [False, False] + [True] * (SAMPLES - 4)
    writer.close()
    assert CacheReader(tmp_path).verify()["samples"] == SAMPLES
