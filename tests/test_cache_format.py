"""Offline teacher cache: bit codes, record round trips, random access, crash safety, ranks, errors, size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.losses.sparse import sparse_forward_kl
from ekd.teacher.cache import (
    CacheError,
    CacheReader,
    CacheWriter,
    MissingSampleError,
    assemble_manifest,
    codes,
    compare_signatures,
    id_bits_for,
    make_signature,
)
from ekd.teacher.cache import writer as writer_module
from ekd.teacher.cache.format import LOGP_SCALE
from ekd.teacher.cache.measure import measure_bytes_per_position
from ekd.teacher.targets import position_seeds, rs_target, topk_target


def rs_signature(vocab=1000, block=64, n=50, **kw):
    base = dict(
        teacher_id="tiny-teacher",
        teacher_revision="abc123",
        tokenizer_hash="tok0",
        data_fingerprint="data0",
        block_length=block,
        packing=True,
        vocab_size=vocab,
        target="rs",
        rs_samples=n,
        seed=0,
    )
    base.update(kw)
    return make_signature(**base)


def random_sample(rng, vocab, block, n=50, fraction=1.0, max_k=16, edge_ids=False):
    """One sample's RS-like data: positions, stats, padded (P, Kmax) ids and counts."""
    p = block if fraction >= 1 else int(rng.integers(0, int(fraction * block) + 1))
    positions = np.sort(rng.choice(block, p, replace=False))
    k = rng.integers(1, min(n, max_k) + 1, size=p)
    kmax = int(k.max(initial=1))
    ids = np.zeros((p, kmax), dtype=np.int64)
    counts = np.zeros((p, kmax), dtype=np.int64)
    for i in range(p):
        row = np.sort(rng.choice(vocab, k[i], replace=False))
        if edge_ids and i % 3 == 0:  # the vocabulary edge: V−1 (and the top ids) and 0
            row = np.unique(np.concatenate([row[: max(0, k[i] - 2)], [0, vocab - 1]]))
            if i % 2 == 0 and k[i] > 2:
                row = np.arange(vocab - len(row), vocab)
        counts[i, : len(row)] = 1 + rng.multinomial(n - len(row), np.ones(len(row)) / len(row))
        ids[i, : len(row)] = row
    stats = {
        "entropy": rng.uniform(0, np.log(vocab), p).astype(np.float32),
        "logp_gold": -rng.exponential(2.0, p).astype(np.float32),
    }
    return dict(positions=positions, stats=stats, ids=ids, values=counts)


def write_cache(directory, signature, samples, shard_samples=3, order=None, **kw):
    w = CacheWriter(directory, signature, len(samples), shard_samples, **kw)
    for sid in order if order is not None else range(len(samples)):
        s = samples[sid]
        w.add(
            sid,
            s["positions"],
            s["stats"],
            s["ids"],
            s["values"],
            weights=s.get("weights"),
            tail=s.get("tail"),
        )
    return w.close()


def rows_of(ids, values):
    """Padded (P, K) → list of per-row {id: value} (padding dropped)."""
    ids, values = np.asarray(ids), np.asarray(values)
    return [{int(i): float(v) for i, v in zip(r_i, r_v) if v > 0} for r_i, r_v in zip(ids, values)]


def files_of(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(Path(directory).iterdir())}


# ---------------------------------------------------------------- bit codes


@pytest.mark.parametrize("vocab, bits", [(151_936, 18), (262_144, 18), (1 << 20, 20), (152_064, 18), (2, 1)])
def test_bit_codes_round_trip_at_the_vocabulary_edge(vocab, bits):
    assert id_bits_for(vocab) == bits
    values = np.array([0, vocab - 1, vocab // 2, vocab - 2, 1][: max(2, min(5, vocab))])
    packed = codes.pack_bits(values, bits)
    assert len(packed) == codes.packed_size(len(values) * bits)
    np.testing.assert_array_equal(
        codes.unpack_bits(np.frombuffer(packed, np.uint8), len(values), bits), values
    )
    with pytest.raises(ValueError, match="does not fit"):
        codes.pack_bits(np.array([1 << bits]), bits)  # no aliasing: V-range ids never wrap
    # Elias–Fano rows of every length 1..63, each holding the top ids (V−1 included) or spread ids
    max_k = 63
    rng = np.random.default_rng(vocab)
    lengths = np.array([k for k in range(1, max_k + 1) if k <= vocab] * 2)
    rows = []
    for j, k in enumerate(lengths):
        if j % 2:
            rows.append(np.arange(vocab - k, vocab))
        else:
            rows.append(
                np.sort(
                    np.concatenate(
                        [
                            [0, vocab - 1][: min(2, k)],
                            rng.choice(np.arange(1, vocab - 1), k - min(2, k), replace=False),
                        ]
                    )
                )
            )
    ids = np.concatenate(rows)
    low, high = codes.encode_ids(vocab, max_k, lengths, ids)
    assert (len(low), len(high)) == codes.id_section_sizes(vocab, max_k, lengths)
    decoded = codes.decode_ids(
        vocab, max_k, lengths, np.frombuffer(low, np.uint8), np.frombuffer(high, np.uint8)
    )
    np.testing.assert_array_equal(decoded, ids)
    assert (len(low) + len(high)) * 8 <= lengths.sum() * bits + 16  # never (much) above fixed width
    counts = np.arange(1, 64)
    unary, rest = codes.encode_gamma(counts)
    buf = np.frombuffer(unary + rest + b"\xff", np.uint8)
    out, used = codes.decode_gamma(buf, len(counts))
    np.testing.assert_array_equal(out, counts)
    assert used == len(unary) + len(rest)
    gaps = np.array([0, 1, 127, 128, 16383, 16384, 1 << 30])
    dec, used = codes.decode_varints(np.frombuffer(codes.encode_varints(gaps) + b"\x05", np.uint8), len(gaps))
    np.testing.assert_array_equal(dec, gaps)


def test_elias_fano_is_compact_for_typical_rows():
    vocab = 151_936
    table = codes.elias_fano_low_bits(vocab, 63)
    assert table[1] == id_bits_for(vocab)  # single ids stay fixed-width
    k = 13
    ef_bits = k * table[k] + k + ((vocab - 1) >> table[k])
    assert ef_bits / k < 16.0 < 18  # ≈ log2(V/K) + 2 bits per id


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("stat_format, tol", [("q8", None), ("fp16", 2e-3)])
def test_rs_cache_round_trip(tmp_path, stat_format, tol):
    vocab, block = 262_144, 64
    rng = np.random.default_rng(0)
    samples = [
        random_sample(rng, vocab, block, fraction=1.0 if i % 2 else 0.3, edge_ids=True) for i in range(7)
    ]
    samples[4] = random_sample(rng, vocab, block, fraction=0.0)  # an empty sample
    assert len(samples[4]["positions"]) == 0
    sig = rs_signature(vocab, block)
    manifest = write_cache(
        tmp_path, sig, samples, shard_samples=3, order=[6, 0, 3, 1, 5, 2, 4], stat_format=stat_format
    )
    assert manifest["complete"] and manifest["num_shards"] == 3
    assert manifest["counts"]["positions"] == sum(len(s["positions"]) for s in samples)
    reader = CacheReader(tmp_path, expected_signature=sig)
    for sid, s in enumerate(samples):
        got = reader.get(sid)
        np.testing.assert_array_equal(got.positions.numpy(), s["positions"])
        assert rows_of(got.ids, got.counts) == rows_of(s["ids"], s["values"])
        assert rows_of(got.ids, got.probs) == rows_of(s["ids"], (s["values"] / 50).astype(np.float32))
        for key in ("entropy", "logp_gold"):
            want, have = s["stats"][key], getattr(got, key).numpy()
            scale = np.log(vocab) if key == "entropy" else LOGP_SCALE
            bound = (
                tol * np.abs(want) + 1e-6
                if tol
                else np.sqrt(scale * np.abs(want)) / 255 + scale / 255**2 / 4 + 1e-6
            )
            assert (np.abs(have - want) <= bound).all(), key
        assert got.ids.shape == got.probs.shape == got.counts.shape
        assert (got.num_entries.numpy() == (s["values"] > 0).sum(1)).all()
    assert reader.verify() == {"shards": 3, "samples": 7, "ok": True}


def test_batch_layout_and_online_equals_cache(tmp_path):
    """The cache gives the training step the same targets (and loss) as online RS with the same draws."""
    vocab, block, b = 300, 24, 3
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(b, block, vocab, generator=g) * 3  # (B, T, V)
    sample_ids = torch.tensor([0, 1, 2])
    sig = rs_signature(vocab, block, n=20, positions="teacher_entropy_topk", position_fraction=0.5)
    w = CacheWriter(tmp_path, sig, num_samples=3, shard_samples=2)
    cached_pos = [
        torch.arange(0, block, 2),
        torch.arange(block),
        torch.tensor([5, 1, 7]),
    ]  # unsorted on purpose
    for i, pos in enumerate(cached_pos):
        drawn = rs_target(
            logits[i, pos], 20, seeds=position_seeds(0, sample_ids[i : i + 1].expand(len(pos)), pos)
        )
        log_p = torch.log_softmax(logits[i, pos], -1)
        stats = {"entropy": -(log_p.exp() * log_p).sum(-1), "logp_gold": log_p[:, 0]}
        w.add(i, pos, stats, drawn.target.ids, drawn.counts)
    w.close()
    stats, cached, target = CacheReader(tmp_path).batch(sample_ids, block)
    assert stats["entropy"].shape == cached.shape == (b, block)
    expected_mask = torch.zeros(b, block, dtype=torch.bool)
    for i, pos in enumerate(cached_pos):
        expected_mask[i, pos] = True
    assert torch.equal(cached, expected_mask)
    assert torch.isnan(stats["entropy"][~cached]).all() and not torch.isnan(stats["entropy"][cached]).any()
    flat = expected_mask.view(-1).nonzero().squeeze(1)  # (M,) flat b·T + t, increasing
    assert len(target) == len(flat)
    seeds = position_seeds(0, sample_ids, torch.arange(block).expand(b, block)).view(-1)[flat]
    online = rs_target(logits.view(-1, vocab)[flat], 20, seeds=seeds).target
    student = torch.randn(len(flat), vocab, generator=g, requires_grad=True)
    loss_online = sparse_forward_kl(student, online, 2.0)
    loss_cache = sparse_forward_kl(student, target, 2.0)
    torch.testing.assert_close(loss_cache, loss_online)
    grads = [torch.autograd.grad(x.sum(), student)[0] for x in (loss_online, loss_cache)]
    torch.testing.assert_close(grads[0], grads[1])
    with pytest.raises(CacheError, match="block length"):
        CacheReader(tmp_path).batch(sample_ids, block + 1)


@pytest.mark.parametrize("tail", ["renormalize", "ghost", "to_gold"])
def test_topk_cache_round_trip(tmp_path, tail):
    vocab, block, k = 500, 16, 8
    logits = torch.randn(block, vocab, generator=torch.Generator().manual_seed(1)) * 3
    gold = torch.randint(0, vocab, (block,), generator=torch.Generator().manual_seed(2))
    gold[:4] = logits[:4].argmax(-1)  # gold inside the top-K for some rows
    target = topk_target(logits, k, tail, gold=gold)
    sig = rs_signature(vocab, block, target="topk", topk=k, topk_tail=tail)
    stats = {"entropy": torch.rand(block), "logp_gold": -torch.rand(block)}
    w = CacheWriter(tmp_path, sig, 1, 1)
    w.add(0, torch.arange(block), stats, target.ids, target.probs, tail=target.tail)
    w.close()
    got = CacheReader(tmp_path).get(0)
    want = rows_of(target.ids, target.probs)
    have = rows_of(got.ids, got.probs)
    for row_w, row_h in zip(want, have):
        assert sorted(row_w) == list(row_h)  # stored sorted by id
        np.testing.assert_allclose([row_h[i] for i in row_w], list(row_w.values()), rtol=1e-3)  # fp16
    if tail == "ghost":
        torch.testing.assert_close(got.tail, target.tail)
    if tail == "to_gold":
        assert (got.num_entries[:4] == k).all() and (got.num_entries[4:] >= k).all()  # no padding slot stored
    student = torch.randn(block, vocab)
    torch.testing.assert_close(
        sparse_forward_kl(student, got.target()), sparse_forward_kl(student, target), rtol=2e-3, atol=1e-4
    )


def test_importance_weighted_cache_round_trip(tmp_path):
    vocab, block = 400, 8
    logits = torch.randn(block, vocab, generator=torch.Generator().manual_seed(3)) * 2
    drawn = rs_target(
        logits,
        30,
        seeds=position_seeds(0, torch.zeros(block, dtype=torch.long), torch.arange(block)),
        proposal_power=0.5,
    )
    sig = rs_signature(vocab, block, n=30, rs_proposal_power=0.5)
    w = CacheWriter(tmp_path, sig, 1, 1)
    stats = {"entropy": torch.rand(block), "logp_gold": -torch.rand(block)}
    with pytest.raises(ValueError, match="weights are required"):
        w.add(0, torch.arange(block), stats, drawn.target.ids, drawn.counts)
    w.add(0, torch.arange(block), stats, drawn.target.ids, drawn.counts, weights=drawn.weights)
    w.close()
    got = CacheReader(tmp_path).get(0)
    assert rows_of(got.ids, got.counts) == rows_of(drawn.target.ids, drawn.counts)
    torch.testing.assert_close(got.probs, drawn.target.probs)


def test_writer_rejects_bad_input(tmp_path):
    vocab, block = 100, 8
    w = CacheWriter(tmp_path, rs_signature(vocab, block, n=10), 4, 2)
    stats = {"entropy": np.ones(2), "logp_gold": -np.ones(2)}
    ok_ids, ok_counts = np.array([[1, 2], [3, 0]]), np.array([[5, 5], [10, 0]])
    with pytest.raises(ValueError, match=r"\[0, 100\)"):
        w.add(0, [0, 1], stats, np.array([[1, 100], [3, 0]]), ok_counts)  # id V would alias
    with pytest.raises(ValueError, match="summing to N=10"):
        w.add(0, [0, 1], stats, ok_ids, np.array([[5, 4], [10, 0]]))
    with pytest.raises(ValueError, match="distinct"):
        w.add(0, [1, 1], stats, ok_ids, ok_counts)
    with pytest.raises(ValueError, match="twice"):
        w.add(0, [0, 1], stats, np.array([[2, 2], [3, 0]]), ok_counts)
    with pytest.raises(ValueError, match="outside"):
        w.add(4, [0, 1], stats, ok_ids, ok_counts)
    assert w.add(0, [0, 1], stats, ok_ids, ok_counts)
    with pytest.raises(ValueError, match="already added"):
        w.add(0, [0, 1], stats, ok_ids, ok_counts)
    with pytest.raises(CacheError, match="shard 0 has 1 of 2 samples"):
        w.close()
    with pytest.raises(ValueError, match="rs_samples"):
        rs_signature(n=64)


# ---------------------------------------------------------------- random access


def test_random_access_reads_one_record_through_memmap(tmp_path, monkeypatch):
    rng = np.random.default_rng(1)
    samples = [random_sample(rng, 5000, 128) for _ in range(6)]
    write_cache(tmp_path, rs_signature(5000, 128), samples, shard_samples=6)
    reader = CacheReader(tmp_path)

    def forbidden(*args, **kwargs):
        raise AssertionError("whole-file read")

    monkeypatch.setattr(np, "fromfile", forbidden)
    monkeypatch.setattr(Path, "read_bytes", forbidden)
    got = reader.get(4)
    assert rows_of(got.ids, got.counts) == rows_of(samples[4]["ids"], samples[4]["values"])
    index, data = reader._maps[0]
    assert isinstance(index, np.memmap) and isinstance(data, np.memmap)
    record = reader._record(4)
    assert record.sample_id == 4
    # the record spans a small part of the shard
    assert int(index[4]["length"]) < data.size / 4


# ---------------------------------------------------------------- crash safety and scale-out


def test_crash_mid_build_then_resume_is_byte_identical(tmp_path, monkeypatch):
    rng = np.random.default_rng(2)
    samples = [random_sample(rng, 3000, 32, fraction=0.5) for _ in range(11)]
    sig = rs_signature(3000, 32)
    write_cache(tmp_path / "clean", sig, samples, shard_samples=3)

    crash = tmp_path / "crash"
    calls = {"n": 0}
    real = writer_module.write_json_atomic

    def dies_on_third_shard(path, obj):
        calls["n"] += 1
        if calls["n"] == 4:  # initial manifest + 2 shards listed; shard 2 renamed but never listed
            raise KeyboardInterrupt("killed")
        real(path, obj)

    monkeypatch.setattr(writer_module, "write_json_atomic", dies_on_third_shard)
    w = CacheWriter(crash, sig, 11, 3)
    with pytest.raises(KeyboardInterrupt):
        for sid in range(11):
            s = samples[sid]
            w.add(sid, s["positions"], s["stats"], s["ids"], s["values"])
    monkeypatch.setattr(writer_module, "write_json_atomic", real)
    assert (crash / "shard-00002.bin").exists()  # written, not listed
    (crash / "shard-00003.bin.tmp").write_bytes(b"half a shard")  # an abandoned temp file
    with pytest.raises(CacheError, match="unfinished"):
        CacheReader(crash)

    resumed = CacheWriter(crash, sig, 11, 3)
    assert resumed.completed_sample_ranges() == [(0, 3), (3, 6)]
    pending = resumed.pending_sample_ids()
    assert pending == list(range(6, 11))
    assert not resumed.add(
        0, **{k: samples[0][k] for k in ("positions", "stats", "ids", "values")}
    )  # skipped
    for sid in pending:
        s = samples[sid]
        resumed.add(sid, s["positions"], s["stats"], s["ids"], s["values"])
    resumed.close()
    assert files_of(crash) == files_of(tmp_path / "clean")
    again = CacheWriter(crash, sig, 11, 3)  # re-running a finished build changes nothing
    assert again.pending_sample_ids() == []
    again.close()
    assert files_of(crash) == files_of(tmp_path / "clean")


KILL_SCRIPT = textwrap.dedent(
    """
    import os, signal, sys
    import numpy as np
    sys.path.insert(0, {tests!r})
    from test_cache_format import random_sample, rs_signature
    from ekd.teacher.cache import CacheWriter
    rng = np.random.default_rng(3)
    samples = [random_sample(rng, 3000, 32, fraction=0.5) for _ in range(10)]
    w = CacheWriter({directory!r}, rs_signature(3000, 32), 10, 2)
    for sid in w.pending_sample_ids():
        s = samples[sid]
        w.add(sid, s["positions"], s["stats"], s["ids"], s["values"])
        if {kill_after} is not None and sid == {kill_after}:
            os.kill(os.getpid(), signal.SIGKILL)
    w.close()
    """
)


def test_kill_9_and_resume_equals_uninterrupted(tmp_path):
    tests = str(Path(__file__).parent)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    def run(directory, kill_after):
        script = KILL_SCRIPT.format(tests=tests, directory=str(directory), kill_after=kill_after)
        return subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120
        )

    killed = run(tmp_path / "killed", 6)  # dies with shards 0–2 written and sample 6 buffered
    assert killed.returncode == -signal.SIGKILL, killed.stderr
    manifest = json.loads((tmp_path / "killed" / "manifest.json").read_text())
    assert not manifest["complete"] and [s["index"] for s in manifest["shards"]] == [0, 1, 2]
    resumed = run(tmp_path / "killed", None)
    assert resumed.returncode == 0, resumed.stderr
    rng = np.random.default_rng(3)  # the same samples, built in-process without interruption
    write_cache(
        tmp_path / "clean",
        rs_signature(3000, 32),
        [random_sample(rng, 3000, 32, fraction=0.5) for _ in range(10)],
        2,
    )
    assert files_of(tmp_path / "killed") == files_of(tmp_path / "clean")


def test_two_rank_build_equals_single_process(tmp_path):
    rng = np.random.default_rng(4)
    samples = [random_sample(rng, 151_936, 48, fraction=0.4, edge_ids=True) for _ in range(9)]
    sig = rs_signature(151_936, 48)
    single = write_cache(tmp_path / "one", sig, samples, shard_samples=2)
    ranks = tmp_path / "two"
    for rank in (1, 0):
        w = CacheWriter(ranks, sig, 9, 2, rank=rank, world_size=2)
        assert all((sid // 2) % 2 == rank for sid in w.pending_sample_ids())
        for sid in reversed(w.pending_sample_ids()):
            s = samples[sid]
            w.add(sid, s["positions"], s["stats"], s["ids"], s["values"])
        w.close()
    with pytest.raises(CacheError, match="unfinished"):
        CacheReader(ranks)
    assembled = assemble_manifest(ranks, 2)
    assert assembled == single
    assert files_of(ranks) == files_of(tmp_path / "one")
    a, b = CacheReader(tmp_path / "one"), CacheReader(ranks)
    for sid in range(9):
        x, y = a.get(sid), b.get(sid)
        assert (
            torch.equal(x.ids, y.ids)
            and torch.equal(x.counts, y.counts)
            and torch.equal(x.positions, y.positions)
        )


def test_a_build_killed_on_two_ranks_and_finished_in_one_process_keeps_no_partial_manifest(tmp_path):
    """Try-out 37: rank 1 of a 2-rank build killed after some shards, the build then finished in one process: the
    cache equalled a clean build, but manifest.rank0.json and manifest.rank1.json ('complete': false) stayed."""
    rng = np.random.default_rng(5)
    samples = [random_sample(rng, 3000, 16, fraction=0.5) for _ in range(8)]
    sig = rs_signature(3000, 16)
    clean = write_cache(tmp_path / "clean", sig, samples, shard_samples=2)
    d = tmp_path / "killed"
    for rank in (0, 1):  # each rank writes its first shard, then is killed
        w = CacheWriter(d, sig, 8, 2, rank=rank, world_size=2)
        for sid in w.pending_sample_ids()[:2]:
            s = samples[sid]
            w.add(sid, s["positions"], s["stats"], s["ids"], s["values"])
    assert sorted(p.name for p in d.glob("manifest*.json")) == ["manifest.rank0.json", "manifest.rank1.json"]
    w = CacheWriter(d, sig, 8, 2)
    assert len(w.pending_sample_ids()) == 4  # the shards the ranks wrote are kept
    for sid in w.pending_sample_ids():
        s = samples[sid]
        w.add(sid, s["positions"], s["stats"], s["ids"], s["values"])
    assert w.close() == clean
    assert files_of(d) == files_of(tmp_path / "clean")  # no manifest.rank*.json beside manifest.json


def test_assemble_reports_a_missing_rank(tmp_path):
    sig = rs_signature(100, 8, n=4)
    w = CacheWriter(tmp_path, sig, 4, 1, rank=0, world_size=2)
    for sid in w.pending_sample_ids():
        w.add(sid, [0], {"entropy": [1.0], "logp_gold": [-1.0]}, [[3]], [[4]])
    w.close()
    with pytest.raises(CacheError, match="rank 1 has not run"):
        assemble_manifest(tmp_path, 2)


# ---------------------------------------------------------------- errors


def test_signature_mismatch_names_each_field(tmp_path):
    sig = rs_signature(1000, 16)
    other = rs_signature(1000, 16, tokenizer_hash="tok1", rs_samples=40, seed=3)
    diffs = compare_signatures(sig, other)
    assert [d.split(":")[0] for d in diffs] == ["tokenizer_hash", "rs_samples", "seed"]
    assert diffs[0] == 'tokenizer_hash: expected "tok0", found "tok1"'
    assert compare_signatures(sig, dict(sig)) == []
    assert compare_signatures({"a": 1}, {}) == ["a: expected 1, found <absent>"]
    rng = np.random.default_rng(5)
    write_cache(tmp_path, sig, [random_sample(rng, 1000, 16) for _ in range(2)], shard_samples=2)
    with pytest.raises(CacheError) as err:
        CacheReader(tmp_path, expected_signature=other)
    message = str(err.value)
    assert "\n" not in message and all(f in message for f in ("tokenizer_hash", "rs_samples", "seed"))
    assert "--overwrite" in message
    with pytest.raises(CacheError, match="tokenizer_hash"):
        CacheWriter(tmp_path, other, 2, 2)  # resuming into a cache built for something else
    w = CacheWriter(tmp_path, other, 2, 2, overwrite=True)
    assert w.pending_sample_ids() == [0, 1]


def test_a_cache_built_very_differently_is_refused_in_one_short_line(tmp_path):
    """Try-out 9: an import over a cache of another target listed ten differing fields with whole layout dicts
    and 64-digit hashes (~1,400 characters). The first fields are shown with their values, cut short, the others
    named; a differing layout names its fields."""
    rng = np.random.default_rng(5)
    sig = rs_signature(1000, 16, teacher_revision="state-dict-sha256:" + "d1" * 32)
    write_cache(tmp_path, sig, [random_sample(rng, 1000, 16) for _ in range(2)], shard_samples=2)
    other = make_signature(
        teacher_id="other-teacher",
        teacher_revision="import-sha256:" + "44" * 32,
        tokenizer_hash="tok1",
        data_fingerprint="f" * 64,
        block_length=16,
        packing=True,
        vocab_size=1000,
        target="topk",
        topk=12,
        topk_tail="renormalize",
        seed=1,
    )
    with pytest.raises(CacheError) as err:
        CacheWriter(tmp_path, other, 2, 2)
    message = str(err.value)
    # was ~1,400 characters with two layout dicts; now ~700 with the first fields' config keys and two ways on
    assert len(message) < 800 and "{" not in message, message
    assert (
        'teacher_revision [model.teacher]: expected "import-sha256:44444444444444444444444…", found "state-dict-sha256:d1'
        in message
    )
    assert "; also " in message and "layout" in message.split("; also ")[1], (
        message
    )  # named, past the first 4


@pytest.fixture
def small_cache(tmp_path):
    rng = np.random.default_rng(6)
    write_cache(
        tmp_path, rs_signature(2000, 32), [random_sample(rng, 2000, 32) for _ in range(6)], shard_samples=3
    )
    return tmp_path


def test_corrupted_shard_gives_a_clear_error(small_cache):
    path = small_cache / "shard-00001.bin"
    data = bytearray(path.read_bytes())
    index = CacheReader(small_cache)._open(1)[0]
    data[int(index[1]["offset"]) + 40] ^= 0xFF  # a byte inside sample 4's record
    path.write_bytes(bytes(data))
    reader = CacheReader(small_cache)
    assert reader.get(3).sample_id == 3  # other records of the shard still read
    with pytest.raises(CacheError) as err:
        reader.get(4)
    assert "shard-00001.bin is corrupted" in str(err.value) and "sample 4" in str(err.value)
    assert f"in the teacher cache at {small_cache}: run `ekd cache CONFIG` again" in str(err.value)
    assert "--overwrite" not in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(CacheError) as err:
        reader.verify()
    message = str(err.value)
    assert "shard-00001.bin is corrupted (sha256 checksum mismatch)" in message
    assert message.endswith("run `ekd cache CONFIG` again to rebuild the damaged shard(s)")
    assert "shard-00000" not in message and "\n" not in message


def test_truncated_shard_gives_a_clear_error(small_cache):
    path = small_cache / "shard-00000.bin"
    path.write_bytes(path.read_bytes()[:-25])
    reader = CacheReader(small_cache)
    assert reader.get(5).sample_id == 5  # the intact shard still reads
    with pytest.raises(
        CacheError, match=r"shard-00000.bin is truncated \(\d+ of \d+ bytes\) in the teacher cache at"
    ):
        reader.get(0)
    with pytest.raises(CacheError, match="shard-00000.bin is truncated"):
        reader.verify()


def test_missing_sample_and_missing_cache(small_cache, tmp_path_factory):
    reader = CacheReader(small_cache)
    with pytest.raises(MissingSampleError) as err:
        reader.get(17)
    assert isinstance(err.value, KeyError) and isinstance(err.value, CacheError)
    assert str(err.value).startswith("sample 17 is not in the teacher cache") and "0..5" in str(err.value)
    with pytest.raises(KeyError):
        reader.batch([0, -1], 32)
    empty = tmp_path_factory.mktemp("empty")
    with pytest.raises(CacheError, match="no teacher cache"):
        CacheReader(empty)
    (small_cache / "shard-00001.idx").unlink()
    with pytest.raises(CacheError, match="shard-00001.idx is missing"):
        CacheReader(small_cache).get(3)


# ---------------------------------------------------------------- size


def test_bytes_per_position_at_qwen_vocabulary(tmp_path):
    result = measure_bytes_per_position(
        151_936, 50, num_blocks=2, block_length=256, chunk_rows=64, directory=str(tmp_path)
    )
    print(
        f"\nV=151,936 N=50: {result['bytes_per_position']:.1f} B/position on disk "
        f"({result['entries_per_position']:.1f} ids/position, teacher entropy {result['mean_teacher_entropy']:.2f} nats; "
        f"fixed-width bound {result['fixed_width_bound_bytes_per_position']:.1f} B; fp16 logits {result['full_fp16_logits_bytes']} B; "
        f"top-64 int32+fp16 {result['top64_int32_fp16_bytes']} B)"
    )
    assert 11 < result["entries_per_position"] < 15
    assert result["bytes_per_position"] <= 40.0
    assert result["bytes_per_position"] < result["fixed_width_bound_bytes_per_position"]
    info = CacheReader(tmp_path).info()
    assert info["samples"] == 2 and info["positions"] == 512
    assert info["bytes_per_position"] == result["bytes_per_position"]
    assert info["signature"]["vocab_size"] == 151_936 and info["layout"]["vocab_size"] == 151_936


@pytest.mark.parametrize("seed", range(4))
def test_bit_fields_round_trip_at_every_width_and_offset(seed):
    """Fixed and per-value widths from 0 to 64 bits at every bit offset: the 8-byte window read (≤ 57 bits)
    and the bit-by-bit path beyond it decode exactly what was packed."""
    rng = np.random.default_rng(seed)
    widths = rng.integers(0, 53, size=700)  # pack_varwidth takes < 53 bits
    widths[:60] = np.arange(60) % 53  # every width, at many offsets
    values = np.array([int(rng.integers(0, 1 << int(w))) if w else 0 for w in widths], dtype=np.int64)
    packed = np.frombuffer(codes.pack_varwidth(values, widths), np.uint8)
    np.testing.assert_array_equal(codes.unpack_varwidth(packed, widths), values)
    for width in (1, 7, 8, 9, 31, 56, 57, 58, 63, 64):
        fixed = rng.integers(0, 1 << min(width, 63), size=333, dtype=np.uint64)
        if width == 64:
            fixed[0] = np.uint64(2**64 - 1) >> np.uint64(1)
        stream = np.frombuffer(codes.pack_bits(fixed, width), np.uint8)
        np.testing.assert_array_equal(codes.unpack_bits(stream, len(fixed), width), fixed.astype(np.int64))


def test_cache_info_values_stand_in_one_column():
    """try-out 30: the renamed `fixed_width_bound_bytes_per_position` pushed its value out of the column."""
    from ekd.teacher.cache.command import format_info

    lines = format_info({"samples": 3, "fixed_width_bound_bytes_per_position": 10.959, "x": "y"}).splitlines()
    assert {line.index(line.split()[-1]) for line in lines} == {
        len("fixed_width_bound_bytes_per_position") + 1
    }
