"""The offline teacher cache end to end on tiny models: ``ekd cache`` build/info/verify, training from the
cache with no teacher loaded, online-vs-cache equivalence of a step, every bad input's error, kill -9 and
resume, and a 2-process ``torchrun`` build equal to the 1-process build."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from dist_runs import free_port
from ekd.cli import main
from ekd.config import load_config
from ekd.data import BlockLoader, collate
from ekd.locks import lock_directory
from ekd.losses.targets import Head
from ekd.teacher.cache import CacheError, CacheReader
from ekd.teacher.cache.build import run_build
from ekd.teacher.cache.entries import batch_entries
from ekd.teacher.signal import TargetSpec
from ekd.teacher.targets import position_seeds, rs_target
from ekd.train.method_parts import MethodParts
from ekd.train.prepare import build_teacher_source, load_student, load_teacher, prepare_data
from ekd.train.token_stats import token_stats
from ekd.train.trainer import forward_backward
from tiny import config_file, write_corpus

REPO = Path(__file__).resolve().parents[1]
CPU = torch.device("cpu")


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny ops are ~100× slower with 2 threads on a loaded 2-core box."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _config_file(root: Path, corpus: Path, name: str, **extra) -> str:
    return config_file(root, corpus, name, **extra)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """An RS cache (N=50, all positions, 8 samples per shard) built once through the CLI, and its config."""
    root = tmp_path_factory.mktemp("cache")
    corpus = write_corpus(root / "corpus", n_docs=24)
    cache = root / "cache-rs"
    cfg = _config_file(
        root,
        corpus,
        "rs",
        **{"method.preset": "rskd", "teacher.cache_dir": str(cache), "teacher.cache_shard_samples": 8},
    )
    assert main(["-q", "cache", cfg]) == 0
    return {"root": root, "corpus": corpus, "cache": cache, "cfg": cfg}


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line, no traceback
    assert err[0].startswith("ekd: error: ")
    return err[0]


def _tree_sha256(directory: Path) -> dict[str, str]:
    return {
        str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}


# ---------------------------------------------------------------------------------------------------------
# build, info, verify
# ---------------------------------------------------------------------------------------------------------


def test_the_bytes_on_disk_are_the_whole_directory_and_the_per_position_figures_the_shards(setup, capsys):
    """Try-out 144, F4: "on disk" counted the shards and the manifest, bytes/position the shards alone (their
    product did not give it back), and neither the teacher's kept files that copying the cache takes (`du`)."""
    cache = setup["cache"]
    info = CacheReader(cache).info()
    every_file = sum(p.stat().st_size for p in cache.rglob("*") if p.is_file())
    shards = sum(p.stat().st_size for p in cache.glob("shard-*"))
    assert info["bytes_on_disk"] == every_file > shards
    assert info["shard_bytes"] == shards and info["bytes_per_position"] == shards / info["positions"]
    assert main(["cache", setup["cfg"]]) == 0  # complete: the summary of what is there
    out = capsys.readouterr().out
    assert f"on disk            {every_file:,} bytes (shards {shards:,}: what bytes/position" in out, out


def test_cli_build_info_verify_round_trip(setup, capsys):
    cache = setup["root"] / "cli-cache"
    assert main(["cache", setup["cfg"], f"teacher.cache_dir={cache}"]) == 0
    out = capsys.readouterr().out
    for word in ("samples", "positions", "bytes/position", "bytes/train token", "forward-only"):
        assert word in out, out
    assert main(["cache", "info", str(cache)]) == 0
    info = capsys.readouterr().out
    assert "bytes_per_position" in info and "teacher_revision" in info and "state-dict-sha256:" in info
    assert main(["cache", "verify", str(cache)]) == 0
    assert capsys.readouterr().out.startswith("ok:")
    # every valid position is cached, with counts summing to N, and the statistics are sane
    cfg = load_config([setup["cfg"]], [f"teacher.cache_dir={cache}"])
    data = prepare_data(cfg, cache)
    reader = CacheReader(cache)
    assert reader.num_samples == len(data.blocks["train"])
    batch = collate(data.blocks["train"], torch.arange(4))
    stats, cached, target = reader.batch(batch.sample_ids, batch.labels.shape[1])
    assert torch.equal(cached, batch.labels != -100)
    sample = reader.get(1)
    assert (sample.counts.sum(-1) == 50).all()
    assert torch.allclose(target.probs.sum(-1), torch.ones(len(target)))
    assert (stats["entropy"][cached] > 0).all() and (
        stats["entropy"][cached] <= math.log(data.vocab_size) + 0.05
    ).all()
    # a rerun resumes: nothing is rebuilt and the files stay byte-identical
    before = _tree_sha256(cache)
    assert main(["cache", setup["cfg"], f"teacher.cache_dir={cache}"]) == 0
    out = capsys.readouterr().out
    assert "0 built now" in out and f"teacher cache {cache} was complete: nothing to build (1 process)" in out
    assert "written to" not in out  # try-out 17: a rerun that wrote nothing said it wrote the cache
    assert _tree_sha256(cache) == before


def test_build_throughput_is_reported(setup):
    cfg = load_config([setup["cfg"]], [f"teacher.cache_dir={setup['root'] / 'tp-cache'}"])
    result = run_build(cfg)
    assert result.samples_built == result.samples_total > 0
    assert result.throughput_ratio is not None and result.throughput_ratio > 0
    assert result.forward_throughput > 0 and result.build_throughput > 0


def test_teacher_entropy_positions_pick_the_highest_entropy():
    """batch_entries with teacher_entropy_topk: ⌈f·n⌉ positions per sequence, the highest H(p) ones."""
    g = torch.Generator().manual_seed(0)
    B, T, D, V = 3, 16, 8, 40
    hidden = torch.randn(B, T, D, generator=g) * torch.rand(B, T, 1, generator=g) * 3  # varied entropies
    head = Head(torch.randn(V, D, generator=g))
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[:, -1] = -100
    labels[1, :5] = -100
    spec = TargetSpec("rs", rs_samples=20, seed=3)
    all_rows = batch_entries(hidden, head, labels, torch.arange(B), spec)
    top = batch_entries(
        hidden,
        head,
        labels,
        torch.arange(B),
        spec,
        positions="teacher_entropy_topk",
        fraction=0.25,
        chunk_rows=5,
    )
    for b in range(B):
        n = int((labels[b] != -100).sum())
        assert len(all_rows[b]["positions"]) == n and all_rows[b]["num_tokens"] == n
        assert len(top[b]["positions"]) == math.ceil(0.25 * n)
        ent = dict(zip(all_rows[b]["positions"].tolist(), all_rows[b]["stats"]["entropy"].tolist()))
        chosen = set(top[b]["positions"].tolist())
        assert min(ent[p] for p in chosen) >= max(ent[p] for p in ent if p not in chosen)
        # same draws at a position whichever rule (and chunking) picked it: draws depend on (seed, id, position)
        for i, p in enumerate(top[b]["positions"].tolist()):
            j = all_rows[b]["positions"].tolist().index(p)
            a, c = top[b]["values"][i], all_rows[b]["values"][j]
            assert sorted(zip(top[b]["ids"][i][a > 0], a[a > 0])) == sorted(
                zip(all_rows[b]["ids"][j][c > 0], c[c > 0])
            )


@pytest.mark.parametrize("target", ["rs", "topk"])
def test_batch_entries_do_not_depend_on_chunking(target):
    """Head chunks and softmax slices of any size (a slice size that does not divide the chunk included)
    give the same statistics and targets as one pass over all rows."""
    g = torch.Generator().manual_seed(1)
    B, T, D, V = 3, 16, 8, 50
    hidden = torch.randn(B, T, D, generator=g) * 2
    head = Head(torch.randn(V, D, generator=g))
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[0, :3] = -100
    spec = TargetSpec(target, topk=5, rs_samples=20, seed=4)
    whole = batch_entries(hidden, head, labels, torch.arange(B), spec, chunk_rows=B * T)
    sliced = batch_entries(hidden, head, labels, torch.arange(B), spec, chunk_rows=7, work_rows=3)
    for a, b in zip(whole, sliced):
        np.testing.assert_array_equal(a["positions"], b["positions"])
        np.testing.assert_allclose(a["stats"]["entropy"], b["stats"]["entropy"], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(a["stats"]["logp_gold"], b["stats"]["logp_gold"], rtol=1e-5, atol=1e-6)
        k = min(a["ids"].shape[1], b["ids"].shape[1])  # K is padded to the widest row of a chunk
        np.testing.assert_array_equal(a["ids"][:, :k], b["ids"][:, :k])
        np.testing.assert_allclose(a["values"][:, :k], b["values"][:, :k], rtol=1e-5)
        assert (a["values"][:, k:] == 0).all() and (b["values"][:, k:] == 0).all()


@pytest.mark.parametrize("chunk_rows, work_rows", [(64, None), (64, 9), (50, 7)])
def test_cached_statistics_are_the_online_teachers_bit_for_bit(chunk_rows, work_rows):
    """The cache stores the teacher entropy and log p(gold) that the online teacher's ``token_stats`` computes,
    to the last bit (one function, ``row_logsumexp_entropy``), also when its softmax slices are smaller."""
    g = torch.Generator().manual_seed(5)
    B, T, D, V = 3, 40, 16, 3_001
    hidden = torch.randn(B, T, D, generator=g) * torch.rand(B, T, 1, generator=g) * 4  # varied entropies
    head = Head(torch.randn(V, D, generator=g))
    labels = torch.randint(0, V, (B, T), generator=g)
    labels[1, :7] = -100
    spec = TargetSpec("rs", rs_samples=20, seed=3)
    entries = batch_entries(
        hidden, head, labels, torch.arange(B), spec, chunk_rows=chunk_rows, work_rows=work_rows
    )
    online = token_stats(
        {"teacher_entropy", "teacher_logp_gold"},
        labels,
        teacher_hidden=hidden,
        teacher_head=head,
        chunk_rows=64,
    )
    for b, entry in enumerate(entries):
        pos = torch.from_numpy(entry["positions"])
        assert pos.tolist() == (labels[b] != -100).nonzero().view(-1).tolist()
        np.testing.assert_array_equal(entry["stats"]["entropy"], online["teacher_entropy"][b, pos].numpy())
        np.testing.assert_array_equal(
            entry["stats"]["logp_gold"], online["teacher_logp_gold"][b, pos].numpy()
        )


@pytest.mark.parametrize("positions", ["all", "teacher_entropy_topk"])
def test_cached_rs_draws_are_the_online_teachers_draw_for_draw(positions):
    """The cache's RS draws are those of the online teacher (``rs_target``) at every cached position, to the
    last draw: both sample from one p (``row_softmax`` = the p of the cache's statistics pass). With
    ``torch.softmax``'s p online (the code before), a few rows of these 1,024 at V=32,000 drew another id."""
    g = torch.Generator().manual_seed(11)
    B, T, D, V = 4, 256, 16, 32_000
    hidden = torch.randn(B, T, D, generator=g) * 0.5  # logits of std ~2: broad rows, many ids near a CDF step
    head = Head(torch.randn(V, D, generator=g))
    labels = torch.randint(0, V, (B, T), generator=g)
    spec = TargetSpec("rs", rs_samples=50, seed=9)
    entries = batch_entries(
        hidden, head, labels, torch.arange(B), spec, positions=positions, fraction=0.5, chunk_rows=200
    )
    for b, entry in enumerate(entries):
        pos = torch.from_numpy(entry["positions"]).long()
        online = rs_target(head(hidden[b, pos]).float(), 50, seeds=position_seeds(9, torch.tensor(b), pos))
        for i in range(pos.numel()):
            drawn = online.counts[i] > 0
            assert entry["ids"][i][entry["values"][i] > 0].tolist() == online.target.ids[i, drawn].tolist()
            assert entry["values"][i][entry["values"][i] > 0].tolist() == online.counts[i, drawn].tolist()


def test_a_cache_another_process_is_writing_is_refused(setup, capsys):
    """One writer per cache directory (``ekd.locks``, as for run directories): a second ``ekd cache``, resuming or
    with ``--overwrite``, is one line naming the holder, and the cache is untouched (``ekd cache import``:
    tests/test_cache_import.py)."""
    cache = setup["cache"]
    before = _tree_sha256(cache)
    lock = lock_directory(cache, "fix")  # another build holds it (flock: another open file, even in-process)
    try:
        for extra in ([], ["--overwrite"]):
            assert main(["cache", setup["cfg"], *extra]) == 2
            line = _error_line(capsys)
            assert f"{cache} is in use by another ekd process (pid {os.getpid()})" in line, line
            assert "teacher.cache_dir" in line
    finally:
        lock.release()
    assert _tree_sha256(cache) == before
    assert main(["-q", "cache", setup["cfg"]]) == 0  # free again: a finished cache, nothing to build
    assert _tree_sha256(cache) == before


def test_building_a_finished_cache_again_writes_nothing(setup, capsys):
    """Try-out 9: ``ekd cache`` of a finished cache on a read-only mount failed (it unlinked temp files that
    were not there and rewrote an unchanged manifest). Now nothing in the cache directory is written."""
    cache = setup["cache"]

    def stamps():
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(cache.iterdir())}

    before = stamps()
    assert main(["cache", setup["cfg"]]) == 0, capsys.readouterr().err
    assert stamps() == before


def test_an_unfinished_cache_that_a_build_holds_says_wait_not_rerun(setup, tmp_path, capsys):
    """Try-outs 8 and 9: `ekd cache info` of a cache being built said "unfinished: rerun the cache build", which the
    running build's lock would refuse. With its lock held the line says another process is building it."""
    from ekd.teacher.cache.manifest import MANIFEST, write_json_atomic

    cache = tmp_path / "half"
    shutil.copytree(setup["cache"], cache)
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest.update(complete=False, shards=manifest["shards"][:1])
    write_json_atomic(cache / MANIFEST, manifest)
    assert main(["cache", "info", str(cache)]) == 2
    assert "rerun the cache build" in _error_line(capsys)
    lock = lock_directory(cache, "fix")  # a build runs on it
    try:
        assert main(["cache", "info", str(cache)]) == 2
        line = _error_line(capsys)
        assert f"another ekd process (pid {os.getpid()}) is building it now; wait for it to finish" in line, (
            line
        )
    finally:
        lock.release()


def test_topk_ghost_cache_at_teacher_entropy_positions(setup):
    """A top-K ghost cache of the top 25% teacher-entropy positions holds the online top-K targets there."""
    over = [
        "method=topk_ghost",
        "teacher.cache_positions=teacher_entropy_topk",
        "teacher.cache_fraction=0.25",
    ]
    cache = setup["root"] / "cache-topk"
    cfg_online = load_config([setup["cfg"]], [*over, f"teacher.cache_dir={cache}"])
    run_build(cfg_online, stat_format="fp16", measure_forward=False)
    cfg_cache = load_config([setup["cfg"]], [*over, f"teacher.cache_dir={cache}", "teacher.source=cache"])
    data = prepare_data(cfg_online, cache)
    online = build_teacher_source(cfg_online, data, CPU, load_teacher(cfg_online, data, CPU))
    cached = build_teacher_source(cfg_cache, data, CPU, None)
    batch = collate(data.blocks["train"], torch.arange(8, 12))
    valid = batch.labels != -100
    sig_o = online.signal(batch, {"teacher_entropy", "teacher_logp_gold"})
    sig_c = cached.signal(batch, set())
    from ekd.selection.base import topk_mask

    assert torch.equal(sig_c.available, topk_mask(sig_o.stats["teacher_entropy"], valid, 0.25, "sequence"))
    for name in ("teacher_entropy", "teacher_logp_gold"):  # fp16 statistics
        torch.testing.assert_close(
            sig_c.stats[name][sig_c.available], sig_o.stats[name][sig_c.available], rtol=2e-3, atol=1e-3
        )
    rows = sig_c.available.reshape(-1).nonzero().squeeze(-1)
    spec, tau = MethodParts.build(cfg_online, 3).target, torch.ones(rows.numel())
    t_o = sig_o.target_at(rows, spec, tau, batch.labels, batch.sample_ids)
    t_c = sig_c.target_at(rows, spec, tau, batch.labels, batch.sample_ids)
    order = t_o.ids.argsort(-1)  # the cache stores each row sorted by token id
    assert torch.equal(t_o.ids.gather(1, order), t_c.ids)
    torch.testing.assert_close(
        t_c.probs, t_o.probs.gather(1, order), rtol=1e-3, atol=1e-6
    )  # fp16 probabilities
    torch.testing.assert_close(t_c.tail, t_o.tail)


# ---------------------------------------------------------------------------------------------------------
# training from the cache
# ---------------------------------------------------------------------------------------------------------


def _step(cfg, data, source, batches, run_dir):
    student = load_student(cfg, data, CPU)  # seeded by run.seed: the same init every call
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    loss, sums, *_ = forward_backward(batches, student, source, parts, 0, cfg, data.vocab_size, None, run_dir)
    return loss, sums, {n: p.grad.clone() for n, p in student.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("method", ["rskd", "sekd3x"])
def test_online_and_cache_give_the_same_step(setup, method):
    """Same RS draws online and cached → the same loss and gradients, bit for bit (rskd: all tokens; sekd3x:
    student-entropy top 20%). Try-out 61 F1: a cached target kept the K width of every cached row of the
    micro-batch, online the width of the widest selected row; the padding changed the gradients' last bits and a
    near-tie of the selection flipped a few steps later (tolerances here had hidden it)."""
    over = [f"method={method}", "method.sample_fraction=1.0"]
    cfg_online = load_config([setup["cfg"]], [*over, "teacher.source=online"])
    cfg_cache = load_config([setup["cfg"]], [*over, "teacher.source=cache"])
    data = prepare_data(cfg_online, setup["cache"])
    loader = BlockLoader(data.blocks["train"], 4, seed=5, shuffle=True, drop_last=True)
    batches = [loader.next_batch() for _ in range(2)]
    online = build_teacher_source(cfg_online, data, CPU, load_teacher(cfg_online, data, CPU))
    cached = build_teacher_source(cfg_cache, data, CPU, None)
    assert not cached.provides_distribution
    loss_o, sums_o, grads_o = _step(cfg_online, data, online, batches, setup["root"])
    loss_c, sums_c, grads_c = _step(cfg_cache, data, cached, batches, setup["root"])
    assert sums_o["selected"] == sums_c["selected"] > 0
    assert loss_c == loss_o
    assert grads_o.keys() == grads_c.keys()
    assert [n for n in grads_o if not torch.equal(grads_c[n], grads_o[n])] == []
    # the targets themselves at every valid row and at a selection of them: the same ids and t̂ = c/N, as wide
    b = batches[0]
    valid = (b.labels != -100).reshape(-1).nonzero().squeeze(-1)
    spec = MethodParts.build(cfg_online, 3).target
    sig = cached.signal(b, {"teacher_entropy"})
    assert torch.equal(sig.available, b.labels != -100)
    for rows in (valid, valid[::7]):
        tau = torch.ones(rows.numel())
        t_o = online.signal(b, set()).target_at(rows, spec, tau, b.labels, b.sample_ids)
        t_c = sig.target_at(rows, spec, tau, b.labels, b.sample_ids)
        assert t_c.ids.shape == t_o.ids.shape
        assert torch.equal(t_c.probs, t_o.probs)
        assert torch.equal(t_c.ids * (t_c.probs > 0), t_o.ids * (t_o.probs > 0))


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ekd", "sekd3x"])
def test_distill_from_cache_loads_no_teacher(setup, method, monkeypatch, capsys, caplog):
    """ekd: teacher-entropy coverage schedule on cached stats; sekd3x: student-entropy positions + samples. Its
    preset teacher is not evaluated at the end, and the run says so (try-out 80, F4: the table's teacher columns
    were left blank without a word)."""

    def no_teacher(*args, **kwargs):
        raise AssertionError("a teacher model was loaded")

    monkeypatch.setattr("ekd.train.prepare.load_teacher", no_teacher)
    monkeypatch.setattr("ekd.train.trainer.load_teacher", no_teacher)
    name = f"from-cache-{method}"
    args = [
        f"run.name={name}",
        f"method={method}",
        "teacher.source=cache",
        f"teacher.cache_dir={setup['cache']}",
    ]
    with caplog.at_level(logging.INFO, logger="ekd.train.trainer"):
        assert main(["distill", setup["cfg"], *args]) == 0, capsys.readouterr().err
    assert (
        "eval.teacher: no teacher figures at the end (KL, top-1 agreement, the eval/teacher row): "
        in caplog.text
    )
    run_dir = setup["root"] / "runs" / name
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    fractions = [m["select/fraction"] for m in metrics if "select/fraction" in m]
    assert fractions and all(0 < f < 1 for f in fractions)
    if method == "ekd":
        assert any("select/teacher_entropy_selected" in m for m in metrics)
    assert (run_dir / "student" / "config.json").is_file()


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.scorer=forward_kl", "method.policy=topk", "method.select_fraction=0.5"],
        ["method.scorer=hellinger", "method.policy=topk"],
        ["method=dkd", "method.target=rs"],
        ["method=dkd"],
        ["method=atkd"],
    ],
    ids=["forward_kl", "hellinger", "dkd-rs", "dkd", "atkd"],
)
def test_full_distribution_policies_are_refused(setup, overrides, capsys):
    """One refusal with the fix that helps: another score for a scorer; the online teacher for DKD / AT-KD (no
    method.target or score lets them train from a cache)."""
    args = ["run.name=refused", "teacher.source=cache", f"teacher.cache_dir={setup['cache']}", *overrides]
    assert main(["distill", setup["cfg"], *args, "--overwrite"]) == 2
    line = _error_line(capsys)
    assert "full distribution" in line and "teacher.source=online" in line
    objective = overrides[0] in ("method=dkd", "method=atkd")
    assert ("score" in line) is not objective and "method.target" not in line.split(":", 1)[1]


@pytest.mark.parametrize(
    "overrides",
    [
        ["method.policy=bandit", "method.bandit_kind=exp3", "method.scorer=student_entropy"],
        ["method=bandit", "method.target=rs"],
        ["method.policy=bandit", "method.bandit_kind=exp3", "method.scorer=forward_kl"],
    ],
    ids=["exp3", "linucb", "exp3-forward_kl"],
)
def test_a_bandit_from_a_cache_is_refused_for_its_own_reward(setup, overrides, capsys):
    """Try-out 125, F2: a bandit from a cache was refused as 'forward_kl needs the teacher's full distribution ...
    use a teacher-side/student-side score (teacher_entropy, student_entropy, ...)' for an EXP3 bandit scored by
    student_entropy already, and for LinUCB, which takes no scorer: the bandit's reward reads the KL."""
    args = ["run.name=refused", "teacher.source=cache", f"teacher.cache_dir={setup['cache']}", *overrides]
    assert main(["distill", setup["cfg"], *args, "--overwrite"]) == 2
    line = _error_line(capsys)
    assert (
        ": method.policy=bandit reads forward_kl (its reward is the KL before and after the step)" in line
    ), line
    assert line.endswith("use teacher.source=online, or another method.policy"), line
    assert "student_entropy" not in line, line


def test_the_feature_branch_from_a_cache_is_refused_for_its_hidden_states(setup, capsys):
    """Try-out 73, F3: EGAD's feature branch was refused for 'the teacher's full distribution' (it needs the
    teacher's hidden states) and the key that turns it off went unsaid."""
    args = ["run.name=refused", "teacher.source=cache", f"teacher.cache_dir={setup['cache']}", "method=egad"]
    args += ["method.target=rs", "method.temperature=constant"]
    assert main(["distill", setup["cfg"], *args, "--overwrite"]) == 2
    line = _error_line(capsys)
    assert (
        "the feature branch needs the teacher's hidden states" in line and "method.feature_weight=0" in line
    )


@pytest.mark.parametrize("state", ["missing", "empty", "unfinished"])
def test_a_cache_dir_without_a_cache_is_refused_before_the_data_is_read(setup, tmp_path, capsys, state):
    """The corpus does not exist either: the cache is what is reported, so the data was never read."""
    cache = tmp_path / "not-built"
    if state != "missing":
        cache.mkdir()
    if state == "unfinished":
        (cache / "manifest.rank0.json").write_text("{}")
    corpus = tmp_path / "no-corpus.jsonl"
    args = [
        "run.name=no-cache",
        "teacher.source=cache",
        f"teacher.cache_dir={cache}",
        f"data.source={corpus}",
    ]
    assert main(["distill", setup["cfg"], *args]) == 2
    line = _error_line(capsys)
    assert line.startswith("ekd: error: teacher.cache_dir") and str(cache) in line, line
    assert ("ekd cache CONFIG" if state != "unfinished" else "rerun the cache build") in line, line
    assert str(corpus) not in line
    assert not (setup["root"] / "runs" / "no-cache").exists()  # nothing started


def test_a_cache_dir_naming_a_file_says_so_and_names_the_directory(setup, tmp_path, capsys):
    """Try-out 46, F3: teacher.cache_dir=CACHE/manifest.json said 'manifest.json missing' of the manifest itself."""
    manifest = Path(setup["cache"]) / "manifest.json"
    other = tmp_path / "notes.txt"
    other.write_text("x")
    for path, fix in ((manifest, f"teacher.cache_dir={setup['cache']}"), (other, "ekd cache CONFIG")):
        for command in (
            ["distill", setup["cfg"], "run.name=file", "teacher.source=cache"],
            ["cache", setup["cfg"]],
        ):
            assert main([*command, f"teacher.cache_dir={path}"]) == 2
            line = _error_line(capsys)
            assert (
                f"teacher.cache_dir={path} is a file, not a teacher cache directory" in line and fix in line
            ), line
            assert line.count("teacher.cache_dir") == 1 + fix.count("teacher.cache_dir"), line  # try-out 47
    assert not (setup["root"] / "runs" / "file").exists() and other.read_text() == "x"
    # try-out 48, F5: a path under a file, and a device, were told to build the cache there
    for path, says in (
        (other / "sub", f"lies under {other}, which is a file"),
        (Path("/dev/null"), "is no directory"),
    ):
        for command in (
            ["distill", setup["cfg"], "run.name=file", "teacher.source=cache"],
            ["cache", setup["cfg"]],
        ):
            assert main([*command, f"teacher.cache_dir={path}"]) == 2
            line = _error_line(capsys)
            assert f"teacher.cache_dir={path} {says}" in line and line.count("teacher.cache_dir") == 1, line
    # try-out 49, F4: `ekd cache info|verify DIR` names DIR as typed, not as a setting the user did not write
    for path, says in (
        (
            manifest,
            f"{manifest} is a file, not a teacher cache directory; name the directory that holds it (",
        ),
        (other, f"{other} is a file"),
        (other / "sub", f"{other / 'sub'} lies under {other}, which is a file"),
        (Path("/dev/null"), "/dev/null is no directory"),
    ):
        for command in ("info", "verify"):
            assert main(["cache", command, str(path)]) == 2
            line = _error_line(capsys)
            assert line.startswith(f"ekd: error: {says}") and "teacher.cache_dir" not in line, line


def test_signature_mismatch_names_each_field(setup, capsys):
    args = [
        "run.name=mismatch",
        "teacher.source=cache",
        f"teacher.cache_dir={setup['cache']}",
        "data.block_length=16",
        "method.rs_samples=20",
    ]
    assert main(["distill", setup["cfg"], *args]) == 2
    line = _error_line(capsys)
    for field in (
        "block_length [data.block_length]: expected 16, found 32",
        "rs_samples [method.rs_samples]: expected 20, found 50",
        "data_fingerprint [from data.block_length]: ",  # what explains the other blocks
    ):
        assert field in line, line
    assert "tokenizer_hash" not in line and "teacher_id" not in line
    # the block length explains the other blocks: the build's settings give them back (try-out 52, F3)
    assert (
        "train as it was built (data.block_length=32 method.rs_samples=50), or build this config's" in line
    ), line


def test_a_cache_of_other_settings_says_how_to_train_on_it_as_built(setup, capsys):
    """Try-out 50, F6: where every differing field is a setting (here the RS draws), the refusal's first way on
    keeps the cache — train as it was built — rather than rebuilding it (which deletes a good cache)."""
    args = ["teacher.source=cache", f"teacher.cache_dir={setup['cache']}", "train.max_steps=1"]
    assert main(["distill", setup["cfg"], "run.name=as-built", *args, "method.rs_samples=20"]) == 2
    line = _error_line(capsys)
    assert (
        "rs_samples [method.rs_samples]: expected 20, found 50): train as it was built (method.rs_samples=50), "
        in (line)
    ), line
    assert (
        main(["distill", setup["cfg"], "run.name=as-built", *args, "method.rs_samples=50"]) == 0
    )  # the advice
    # a data key beside a packing key: both come back (try-out 64, F12: the data key was left out)
    assert (
        main(["distill", setup["cfg"], "run.name=two", *args, "data.block_length=16", "data.max_chars=2000"])
        == 2
    )
    assert "train as it was built (data.max_chars=0 data.block_length=32), or " in _error_line(capsys)
    assert main(["distill", setup["cfg"], "run.name=other-data", *args, "data.max_chars=2000"]) == 2
    line = _error_line(capsys)  # other documents: the build's data.max_chars gives its blocks back
    assert "data_fingerprint [data.max_chars=2000, built with 0]: " in line, line  # the key that changed
    # a way on that keeps the cache, good for the settings it was built with (try-out 64, F8)
    assert (
        "build this config's cache in another teacher.cache_dir with `ekd cache CONFIG` (keeping this one)"
        in line
    )
    assert "train as it was built (data.max_chars=0), or " in line, line  # the build's value gives its blocks


def test_a_cache_whose_data_changed_under_the_same_settings_says_so(tmp_path, capsys):
    """Try-out 61: a data mismatch said `data_fingerprint [data.*]`, not which data key changed, nor that the
    documents themselves changed since the build under the same settings (a file edited). Try-out 64, F3: with a
    BPE trained on the training data, its hash and vocabulary size changed too, and were blamed on model.tokenizer,
    which no one had changed."""
    from ekd.data import train_bpe_tokenizer

    corpus = write_corpus(tmp_path / "corpus", n_docs=6)
    tokenizer = tmp_path / "tokenizer"  # a tokenizer of its own: it does not learn the edit
    train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 320, tokenizer)
    caches = {"own": tmp_path / "cache-own", "bpe": tmp_path / "cache-bpe"}
    cfgs = {
        name: _config_file(
            tmp_path,
            corpus,
            name,
            **{
                "method.preset": "rskd",
                "teacher.cache_dir": str(cache),
                "model.tokenizer": str(tokenizer) if name == "own" else "train_bpe",
            },
        )
        for name, cache in caches.items()
    }
    for cfg in cfgs.values():
        assert main(["-q", "cache", cfg]) == 0
    capsys.readouterr()
    assert main(["cache", "info", str(caches["own"])]) == 0  # the recorded settings, as key=value pairs
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("  data_settings "))
    # each value as JSON: exact and pasteable (try-out 64, F9: 0.0512 was shown 0.051, 4000000 as 4,000,000)
    assert f'data.source="{corpus}", ' in line and ' data.format="auto", ' in line, line
    assert (
        " data.eval_fraction=0.2, " in line
        and " data.max_chars=0, " in line
        and " data.hf_streaming=false" in line
    )
    assert "bpe_vocab_size" not in line, line  # its own tokenizer: not trained on the data
    doc = sorted(corpus.iterdir())[0]
    doc.write_text(doc.read_text() + "return value:\n")
    changed = f"the same data settings: the data at data.source={corpus} changed since the build"
    assert main(["distill", cfgs["own"], "teacher.source=cache", "train.max_steps=1"]) == 2
    line = _error_line(capsys)
    assert f"data_fingerprint [{changed}]: " in line and "tokenizer_hash" not in line, line
    assert main(["distill", cfgs["bpe"], "teacher.source=cache", "train.max_steps=1"]) == 2
    line = _error_line(capsys)
    assert f"data_fingerprint [{changed}]: " in line, line
    trained = "tokenizer_hash [model.tokenizer: a BPE trained on the training data, see data_fingerprint]: "
    assert trained in line and "from model.tokenizer" not in line, line
    # a BPE of another size: the key that changed, not the data
    assert main(["distill", cfgs["bpe"], "teacher.source=cache", "model.bpe_vocab_size=300"]) == 2
    assert "data_fingerprint [model.bpe_vocab_size=300, built with 320]: " in _error_line(capsys)


def test_a_cache_built_before_data_settings_were_recorded(setup, capsys):
    """A cache whose manifest has no `data_settings` (built by an ekd before them) trains as before, and a data
    mismatch names `data.*` as it did; a finished build of it records them without rebuilding a shard."""
    from ekd.teacher.cache.manifest import DATA_SETTINGS, write_json_atomic

    old = _damaged_copy(setup, "before-data-settings")
    manifest = json.loads((old / "manifest.json").read_text())
    del manifest["signature"][DATA_SETTINGS]
    write_json_atomic(old / "manifest.json", manifest)  # sealed again, as that ekd wrote it
    shards = {p.name: p.stat().st_mtime_ns for p in old.glob("shard-*")}
    args = ["teacher.source=cache", f"teacher.cache_dir={old}", "train.max_steps=1"]
    assert main(["-q", "distill", setup["cfg"], "run.name=before-settings", *args]) == 0
    assert main(["distill", setup["cfg"], "run.name=before-settings-2", *args, "data.max_chars=2000"]) == 2
    assert "data_fingerprint [data.*]: " in _error_line(capsys)
    assert main(["-q", "cache", setup["cfg"], f"teacher.cache_dir={old}"]) == 0
    assert DATA_SETTINGS in json.loads((old / "manifest.json").read_text())["signature"]
    assert {p.name: p.stat().st_mtime_ns for p in old.glob("shard-*")} == shards


def test_cache_built_with_another_separator_or_attention_is_refused(setup, capsys):
    """The cache was built with data.separator=auto (BPE: EOS only) and isolated documents."""
    args = ["run.name=boundary", "teacher.source=cache", f"teacher.cache_dir={setup['cache']}"]
    assert main(["distill", setup["cfg"], *args, "data.separator=bos_eos", "--overwrite"]) == 2
    line = _error_line(capsys)
    assert 'separator [data.separator]: expected "bos_eos:bos=0,eos=0", found "auto:bos=-,eos=0"' in line, (
        line
    )
    # the fix names a value data.separator takes (try-out 64, F1: it said data.separator=auto:bos=-,eos=0)
    assert "train as it was built (data.separator=auto), or" in line, line
    # another mode that picks the same ids packs the same blocks: accepted (try-out 64, F2)
    assert (
        main(["-q", "distill", setup["cfg"], *args, "data.separator=eos", "train.max_steps=1", "--overwrite"])
        == 0
    )
    assert main(["distill", setup["cfg"], *args, "data.document_attention=packed", "--overwrite"]) == 2
    line = _error_line(capsys)
    assert 'document_attention [data.document_attention]: expected "packed", found "isolated"' in line, line
    assert "separator" not in line


# every key distill refuses against a cache: `ekd cache` of the same config refuses it first (the same rules)
CACHE_AND_DISTILL_REFUSE = {
    "rs-tau2": ["method.kd_temperature=2"],  # RS targets are drawn at τ=1
    "rs-tau-per-token": ["method.temperature=entropy_map"],
    # try-out 41, F2: idts needs hellinger, and was refused as a scorer to change, not as a per-token τ
    "rs-tau-per-token-idts": ["method.temperature=idts"],
    "rs-tau-schedule": ["method.temperature=schedule", "method.temperature_end=2"],
    "topk-tau-per-token": ["method=topk", "method.temperature=entropy_map"],
    "on-policy": ["method.student_data_fraction=0.5", "method.prompt_tokens=8"],
    "full-distribution-score": [
        "method.scorer=forward_kl",
        "method.policy=topk",
        "method.select_fraction=0.5",
    ],
    "feature-branch": ["method.feature_weight=1"],
    "teacher-scored-samples": ["method.sample_fraction=0.5", "method.sample_scorer=forward_kl"],
    "dkd-rs": ["method=dkd", "method.target=rs"],
    "sharded-teacher": ["teacher.placement=shard"],
}


@pytest.mark.parametrize("overrides", CACHE_AND_DISTILL_REFUSE.values(), ids=CACHE_AND_DISTILL_REFUSE)
def test_cache_refuses_what_distill_would_refuse_of_its_cache(setup, overrides, capsys):
    """A config ``ekd cache`` accepts builds a cache ``ekd distill`` of the same config trains from: the build
    refuses, before any data or teacher is read, each config that distill would refuse with the cache; distill
    refuses it up front too (before the run directory), with the same line."""
    cache = setup["root"] / "refused-cache"
    assert main(["cache", setup["cfg"], f"teacher.cache_dir={cache}", *overrides]) == 2
    built = _error_line(capsys)
    assert "ekd distill with teacher.source=cache would refuse" in built, built
    assert not cache.exists()  # nothing built, nothing created
    args = ["run.name=refused-up-front", "teacher.source=cache", f"teacher.cache_dir={setup['cache']}"]
    assert main(["distill", setup["cfg"], *args, *overrides]) == 2
    trained = _error_line(capsys)
    assert trained.removeprefix("ekd: error: ") in built, (trained, built)
    assert not (setup["root"] / "runs" / "refused-up-front").exists()


def test_a_schedule_that_never_leaves_tau_1_trains_from_the_rs_cache(setup, capsys, caplog):
    """A τ schedule is refused from an RS cache because it changes τ over the steps, named so; one that holds
    τ = 1 throughout (τ1 = τ0 = 1, or a hold that outlasts the run) is τ = 1 at every token and trains from it. A
    hold fraction of 1 beside a temperature_end trains too, its temperature_end said to act not (try-out 58, F3)."""
    args = ["teacher.source=cache", f"teacher.cache_dir={setup['cache']}", "train.max_steps=2", "--overwrite"]
    over = ["method.temperature=schedule", "method.temperature_end=2"]
    assert main(["distill", setup["cfg"], "run.name=schedule-refused", *args, *over]) == 2
    line = _error_line(capsys)
    assert "method.temperature=schedule changes τ over the steps of train.max_steps=2 (1.0 → 2.0)" in line, (
        line
    )
    held = [*over, "method.temperature_hold_fraction=1"]  # τ = 1 throughout: trains, and the idle key is said
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main(["distill", setup["cfg"], "run.name=schedule-held", *args, *held]) == 0
    assert "method.temperature_end=2.0 has no effect in this run: it acts only with" in caplog.text
    for name, fixed in {
        "schedule-1-to-1": ["method.temperature=schedule", "method.temperature_end=1"],
        # u of the last step = 1/2 ≤ 0.9: τ holds at 1 through the run (and a warning says temperature_end never acts)
        "schedule-held-past-the-run": [*over, "method.temperature_hold_fraction=0.9"],
    }.items():
        assert main(["-q", "distill", setup["cfg"], f"run.name={name}", *args, *fixed]) == 0, (
            capsys.readouterr()
        )
        assert (setup["root"] / "runs" / name / "student" / "config.json").is_file()


def test_topk_cache_at_tau_2_trains_with_the_same_config(setup, capsys):
    """Top-K targets are stored at τ = method.kd_temperature: ``ekd cache`` and ``ekd distill`` of one config
    both accept τ=2."""
    over = ["method=topk", "method.kd_temperature=2", f"teacher.cache_dir={setup['root'] / 'cache-topk-t2'}"]
    assert main(["-q", "cache", setup["cfg"], *over]) == 0, capsys.readouterr().err
    args = ["run.name=topk-t2", "teacher.source=cache", "train.max_steps=2"]
    assert main(["-q", "distill", setup["cfg"], *over, *args]) == 0, capsys.readouterr().err
    assert (setup["root"] / "runs" / "topk-t2" / "student" / "config.json").is_file()


# ---------------------------------------------------------------------------------------------------------
# damaged caches
# ---------------------------------------------------------------------------------------------------------


def _damaged_copy(setup, name: str) -> Path:
    copy = setup["root"] / name
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(setup["cache"], copy)
    return copy


def _cache_teacher(setup, cache: Path):
    cfg = load_config([setup["cfg"]], ["teacher.source=cache", f"teacher.cache_dir={cache}"])
    data = prepare_data(cfg, setup["cache"])
    return build_teacher_source(cfg, data, CPU, None), data


def test_corrupted_shard_is_named(setup, capsys):
    cache = _damaged_copy(setup, "corrupt")
    path = cache / "shard-00001.bin"
    raw = bytearray(path.read_bytes())
    raw[len(raw) // 2] ^= 0x10
    path.write_bytes(bytes(raw))
    assert main(["cache", "verify", str(cache)]) == 2
    line = _error_line(capsys)
    assert "shard-00001.bin is corrupted" in line and "shard-00000" not in line
    teacher, data = _cache_teacher(setup, cache)
    batch = collate(data.blocks["train"], torch.arange(8, 16))  # the samples of shard 1
    with pytest.raises(CacheError, match=r"shard-00001\.bin is corrupted"):
        teacher.signal(batch, set())


def test_truncated_shard_is_named(setup, capsys):
    cache = _damaged_copy(setup, "truncated")
    path = cache / "shard-00002.bin"
    path.write_bytes(path.read_bytes()[:-7])
    assert main(["cache", "verify", str(cache)]) == 2
    assert "shard-00002.bin is truncated" in _error_line(capsys)
    teacher, data = _cache_teacher(setup, cache)
    with pytest.raises(CacheError, match=r"shard-00002\.bin is truncated"):
        teacher.available(collate(data.blocks["train"], torch.arange(16, 20)))


def test_missing_sample_and_missing_shard_are_named(setup, capsys):
    teacher, data = _cache_teacher(setup, setup["cache"])
    batch = collate(data.blocks["train"], torch.arange(4))
    batch.sample_ids = torch.tensor([0, 1, 2, 9999])
    with pytest.raises(CacheError, match="sample 9999 is not in the teacher cache"):
        teacher.signal(batch, set())
    cache = _damaged_copy(setup, "missing")
    (cache / "shard-00003.idx").unlink()
    assert main(["cache", "verify", str(cache)]) == 2
    assert "shard-00003.idx is missing" in _error_line(capsys)
    teacher, data = _cache_teacher(setup, cache)
    with pytest.raises(CacheError, match=r"shard-00003\.idx is missing"):
        teacher.available(collate(data.blocks["train"], torch.arange(24, 28)))


@pytest.mark.parametrize("command", ["distill", "plan"])
def test_a_missing_shard_is_refused_at_the_start(setup, tmp_path, capsys, monkeypatch, command):
    """Try-out 85, F2: a deleted shard was found when training reached it (step 4 of 70: every step before it
    lost; a 3-step run never read it). distill and plan stat every shard file first, before any data is read."""
    import ekd.train.prepare as prepare_mod

    cache = _damaged_copy(setup, f"missing-at-start-{command}")
    (cache / "shard-00002.bin").unlink()
    path = cache / "shard-00001.idx"
    path.write_bytes(path.read_bytes()[:-3])
    monkeypatch.setattr(
        prepare_mod, "prepare_data", lambda *a, **k: pytest.fail("data read before the check")
    )
    over = ["teacher.source=cache", f"teacher.cache_dir={cache}", f"run.output_dir={tmp_path}"]
    argv = (
        ["distill", setup["cfg"], *over]
        if command == "distill"
        else ["plan", setup["cfg"], "--gpus", "1", *over]
    )
    assert main(argv) == 2
    line = _error_line(capsys)
    assert "shard-00001.idx is truncated" in line and "shard-00002.bin is missing" in line, line
    assert "`ekd cache CONFIG` again" in line, line
    assert not (tmp_path / "cached").exists()


@pytest.mark.parametrize(
    "override, field",
    [
        ("method.rs_samples=20", "rs_samples"),
        ("run.seed=7", "seed"),
        ("method=topk", "target"),
        ("data.block_length=16", "block_length"),  # try-out 86, F1: plan said "fits"
    ],
)
def test_target_settings_other_than_the_caches_are_refused_before_any_data_is_read(
    setup, tmp_path, capsys, monkeypatch, override, field
):
    """Try-out 85, F3: an RS run from a top-K cache (or another N or seed) was said to fit by `ekd plan`, and
    distill refused it only after packing the data; the settings the config alone decides are compared first
    (another data.block_length with the data keys that differ from the build's: try-out 86, F1;
    test_signature_mismatch_names_each_field)."""
    import ekd.train.prepare as prepare_mod

    monkeypatch.setattr(
        prepare_mod, "prepare_data", lambda *a, **k: pytest.fail("data read before the check")
    )
    over = [
        "teacher.source=cache",
        f"teacher.cache_dir={setup['cache']}",
        f"run.output_dir={tmp_path}",
        override,
    ]
    for argv in (["plan", setup["cfg"], "--gpus", "1", *over], ["distill", setup["cfg"], *over]):
        assert main(argv) == 2
        line = _error_line(capsys)
        assert "does not match the training config" in line and f"{field} [" in line, line


def test_a_topk_cache_trains_under_another_run_seed(tmp_path, capsys):
    """Top-K targets do not depend on the seed: the check at the start, like the one at data time, must not
    refuse a top-K cache for another run.seed (the first version of the early check did)."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=6)
    cfg = _config_file(tmp_path, corpus, "topk-seed", **{"method.preset": "topk", "method.topk": 4})
    over = ["teacher.source=cache", f"teacher.cache_dir={tmp_path / 'cache'}", "train.max_steps=1"]
    assert main(["-q", "cache", cfg, f"teacher.cache_dir={tmp_path / 'cache'}"]) == 0, capsys.readouterr().err
    assert main(["-q", "distill", cfg, *over, "run.seed=7"]) == 0, capsys.readouterr().err


def test_bad_cache_commands_give_one_line(setup, tmp_path, capsys):
    assert main(["cache", setup["cfg"], "method=kd"]) == 2
    assert "method=kd (method.target=dense): a teacher cache stores sparse targets" in _error_line(capsys)
    assert main(["cache", setup["cfg"], "method=ce"]) == 2  # try-out 85: it was told its (dense) target
    assert "method=ce (method.kd_weight=0) trains without a teacher term" in _error_line(capsys)
    assert main(["cache", setup["cfg"], "teacher.cache_dir="]) == 2
    assert "teacher.cache_dir must be set" in _error_line(capsys)
    for command in ("verify", "info"):  # try-out 52: not 'manifest.json missing' of a path that is not there
        assert main(["cache", command, str(tmp_path / "nowhere")]) == 2
        assert (
            f"no teacher cache at {tmp_path / 'nowhere'}: it does not exist; check the path"
            in _error_line(capsys)
        )
    if Path("/proc").is_dir():  # try-out 54, F2: the lock file beside it could not be made: a traceback
        assert main(["cache", setup["cfg"], "teacher.cache_dir=/proc/ekd-cache"]) == 2
        assert "cannot create the lock file /proc/.ekd-cache.lock" in _error_line(capsys)
    (tmp_path / "empty").mkdir()
    assert main(["cache", "info", str(tmp_path / "empty")]) == 2
    line = _error_line(capsys)  # or the import that writes one (try-out 105, F4)
    assert "(manifest.json missing): build it with `ekd cache CONFIG` (or `ekd cache import SRC" in line
    assert main(["cache", "info"]) == 2
    assert "usage: ekd cache info DIR" in _error_line(capsys)


# ---------------------------------------------------------------------------------------------------------
# crash safety and scale-out
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_kill_9_and_resume_equals_uninterrupted_build(setup):
    extra = ["teacher.cache_shard_samples=2", "eval.batch_size=1"]
    reference, killed = setup["root"] / "kill-ref", setup["root"] / "kill-resumed"
    assert main(["-q", "cache", setup["cfg"], *extra, f"teacher.cache_dir={reference}"]) == 0
    cmd = [sys.executable, "-m", "ekd", "-q", "cache", setup["cfg"], *extra, f"teacher.cache_dir={killed}"]
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while (
            not (killed / "shard-00000.bin").exists() and proc.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.002)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the build ended before it could be killed"
    manifest = json.loads((killed / "manifest.json").read_text())
    assert not manifest["complete"] and len(manifest["shards"]) < manifest["num_shards"]
    with pytest.raises(CacheError, match="unfinished"):
        CacheReader(killed)
    assert main(["-q", "cache", setup["cfg"], *extra, f"teacher.cache_dir={killed}"]) == 0
    assert _tree_sha256(killed) == _tree_sha256(reference)


def _torchrun_cache(cfg: str, out: Path, quiet: bool = True) -> str:
    """``torchrun --nproc_per_node=2 -m ekd -q cache CFG teacher.cache_dir=OUT`` (gloo); returns its stdout
    (and its log, on stderr, after it when not ``quiet``: no ``-q``)."""
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        "--master_addr=127.0.0.1",
        f"--master_port={free_port()}",
        "-m",
        "ekd",
        *(["-q"] if quiet else []),
        "cache",
        cfg,
        f"teacher.cache_dir={out}",
    ]
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = [line for line in proc.stdout.splitlines() if line.startswith("teacher cache ")]
    assert len(said) == 1 and "(2 processes)" in said[0], proc.stdout  # the summary, once
    return proc.stdout if quiet else proc.stdout + proc.stderr


def _summary_figures(out: str) -> dict:
    """The numbers of the ``ekd cache`` summary (command.format_summary)."""
    number = r"([\d,.]+)"
    patterns = {
        "samples": rf"samples +{number} \(",
        "built": rf"\({number} built now in",
        "positions": rf"positions +{number} \(",
        "entries_per_position": rf"\({number} entries/position\)",
        "bytes_per_position": rf"bytes/position +{number}",
        "bytes_on_disk": rf"on disk +{number} bytes",
        "throughput": rf"build throughput +{number} samples/s",
    }
    found = {}
    for key, pattern in patterns.items():
        match = re.search(pattern, out)
        assert match, (key, out)
        found[key] = match.group(1).replace(",", "")
    return found


def _figures_of(cache: Path) -> dict:
    """What the summary should say of the cache, from ``ekd cache info``'s figures (its manifest)."""
    info = CacheReader(cache).info()
    return {
        "samples": str(info["samples"]),
        "positions": str(info["positions"]),
        "entries_per_position": f"{info['entries_per_position']:.2f}",
        "bytes_per_position": f"{info['bytes_per_position']:.2f}",
        "bytes_on_disk": str(info["bytes_on_disk"]),
    }


@pytest.mark.slow
def test_torchrun_two_processes_equal_one_process(setup):
    out = setup["root"] / "cache-2proc"
    figures = _summary_figures(_torchrun_cache(setup["cfg"], out))
    assert not list(out.glob("manifest.rank*.json"))
    assert _tree_sha256(out) == _tree_sha256(setup["cache"])  # manifest and every shard, byte for byte
    # the summary describes the whole cache and every rank's build, not rank 0's half
    assert {k: figures[k] for k in _figures_of(out)} == _figures_of(out)
    assert figures["built"] == figures["samples"] == str(CacheReader(out).num_samples)
    # again: a finished cache is not written at all (no rank manifests, no reassembled manifest.json)
    stamps = {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.iterdir())}
    _torchrun_cache(setup["cfg"], out)
    assert {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in sorted(out.iterdir())} == stamps


@pytest.mark.slow
def test_torchrun_resumed_build_counts_the_shard_another_rank_rebuilt(setup):
    """Shard 1 (samples 8..15) is rank 1's of 2: rebuilt by rank 1 alone, yet rank 0's summary counts it
    (it used to say "0 built now" and "nothing left to build")."""
    out = _damaged_copy(setup, "cache-2proc-resumed")
    (out / "shard-00001.bin").unlink()
    said = _torchrun_cache(setup["cfg"], out, quiet=False)
    figures = _summary_figures(said)
    assert _tree_sha256(out) == _tree_sha256(setup["cache"])
    assert {k: figures[k] for k in _figures_of(out)} == _figures_of(out)
    assert figures["built"] == "8" and float(figures["throughput"]) > 0
    # try-out 23: "resuming, 50 of 68 shards done" was rank 0's share of 135; now the whole cache's count, once
    shards = len(json.loads((out / "manifest.json").read_text())["shards"])
    resuming = [line for line in said.splitlines() if "resuming," in line]
    whole = f"resuming, {shards - 1} of {shards} shards done"
    assert len(resuming) == 1 and resuming[0].endswith(whole), said
    assert "built 8 of" in said and "on rank 1/2" in said  # the rank that built, named (it is one of two)


def test_a_resumed_one_process_build_says_its_shards_and_no_rank(setup, caplog):
    """Try-out 23: a one-process build said "built 1647 of 2159 samples on rank 0/1"."""
    import logging

    out = _damaged_copy(setup, "cache-1proc-resumed")
    (out / "shard-00001.bin").unlink()
    shards = len(json.loads((out / "manifest.json").read_text())["shards"])
    samples = CacheReader(setup["cache"]).num_samples
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert main(["cache", setup["cfg"], f"teacher.cache_dir={out}"]) == 0
    said = [r.getMessage() for r in caplog.records]
    assert f"cache {out}: resuming, {shards - 1} of {shards} shards done" in said, said
    built = [m for m in said if m.startswith(f"teacher cache {out}: built 8 of {samples} samples in ")]
    assert len(built) == 1 and "rank" not in built[0], said
    assert _tree_sha256(out) == _tree_sha256(setup["cache"])


def test_job_figures_add_up_the_ranks():
    """Built samples add up, the wall time is the slowest rank's, both throughputs are wall-clock ones over
    the same split of samples; a rank with nothing to build has no forward timing; one rank: its own."""
    from ekd.teacher.cache.build import job_figures

    def rank(built, seconds, forward, load=None, cores=2):
        return {"built": built, "positions": 10 * built, "seconds": seconds, "forward": forward}, load, cores

    def figures(*ranks):
        return job_figures([{**r, "load": load, "cores": cores} for r, load, cores in ranks])

    one = figures(rank(40, 2.0, 50.0, 0.5))
    assert one["samples_built"] == 40 and one["build_seconds"] == 2.0 and one["build_throughput"] == 20.0
    assert one["forward_throughput"] == pytest.approx(50.0) and one["throughput_ratio"] == pytest.approx(0.4)
    two = figures(rank(40, 2.0, 50.0, 0.5), rank(38, 2.5, 40.0, 3.0))
    assert (two["samples_built"], two["positions_built"], two["build_seconds"]) == (78, 780, 2.5)
    assert two["build_throughput"] == pytest.approx(78 / 2.5)
    assert two["forward_throughput"] == pytest.approx(78 / max(40 / 50, 38 / 40))
    assert two["throughput_ratio"] == pytest.approx(two["build_throughput"] / two["forward_throughput"])
    assert (two["load_at_start"], two["cores"]) == (3.0, 2)  # the busiest machine's
    resumed = figures(rank(0, 0.01, None), rank(8, 0.2, 80.0))
    assert resumed["samples_built"] == 8 and resumed["build_throughput"] == pytest.approx(40.0)
    assert resumed["forward_throughput"] == pytest.approx(80.0) and resumed[
        "throughput_ratio"
    ] == pytest.approx(0.5)
    done = figures(rank(0, 0.0, None), rank(0, 0.0, None))
    assert (
        done["samples_built"] == 0 and done["build_throughput"] is None and done["throughput_ratio"] is None
    )
    unmeasured = figures(rank(4, 1.0, None), rank(4, 1.0, None))  # measure_forward=False
    assert unmeasured["build_throughput"] == 8.0 and unmeasured["forward_throughput"] is None


def test_cache_demo_config_validates(capsys):
    assert main(["config", "show", str(REPO / "configs" / "cache-demo.yaml")]) == 0
    shown = yaml.safe_load(capsys.readouterr().out)
    assert shown["method"]["target"] == "rs" and shown["teacher"]["cache_dir"]


def test_background_writer_raises_the_writer_error():
    from ekd.teacher.cache.build import _BackgroundWriter

    class Failing:
        def add_batch(self, entries):
            raise ValueError(f"bad sample {entries[0]['sample_id']}")

    background = _BackgroundWriter(Failing(), depth=1)
    for k in range(4):  # never blocks after the error
        try:
            background.put([{"sample_id": k}])
        except ValueError:
            break
    with pytest.raises(ValueError, match="bad sample 0"):
        background.close()


@pytest.mark.slow
def test_eval_of_a_cache_trained_run_keeps_the_teacher_metrics(tmp_path, setup, capsys):
    """`ekd eval` loads the teacher by the same rule as the end of training: a run trained from a cache of a
    real teacher gets the teacher's KL, agreement and ``eval/teacher`` row from both, not only from training."""
    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import build_preset

    texts = [p.read_text() for p in sorted(setup["corpus"].iterdir())]
    tok = train_bpe_tokenizer(texts, 320, None)
    teacher = tmp_path / "teacher"
    build_preset("llama-micro", len(tok), tok.eos_token_id).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    cfg = _config_file(
        tmp_path,
        setup["corpus"],
        "real-teacher",
        **{
            "method.preset": "rskd",
            "teacher.cache_dir": str(tmp_path / "cache"),
            "model.teacher": str(teacher),
        },
    )
    over = ["model.tokenizer=teacher"]
    assert main(["-q", "cache", cfg, *over]) == 0, capsys.readouterr().err
    assert main(["-q", "distill", cfg, *over, "teacher.source=cache"]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "real-teacher"
    trained = json.loads((run_dir / "eval.json").read_text())
    assert {"kl", "agree"} <= set(trained["eval"]) and "eval/teacher" in trained
    assert main(["-q", "eval", str(run_dir)]) == 0, capsys.readouterr().err
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated.keys() == trained.keys()
    for split in trained:
        assert evaluated[split].keys() == trained[split].keys(), split
    assert evaluated["eval"]["kl"] == pytest.approx(trained["eval"]["kl"], rel=1e-4)


@pytest.mark.parametrize("load, caveat", [(0.1, False), (3.0, True), (None, False)])
def test_build_summary_says_when_the_throughput_ratio_is_not_clean(load, caveat):
    """Build and forward-only throughput are timed one after the other: a busy machine skews their ratio."""
    from ekd.teacher.cache.command import format_summary

    s = {
        "directory": "c",
        "world_size": 1,
        "samples": 10,
        "samples_built": 10,
        "build_seconds": 1.0,
        "positions": 100,
        "entries_per_position": 12.0,
        "bytes_per_position": 30.0,
        "bytes_per_token": 30.0,
        "bytes_on_disk": 3100,
        "shard_bytes": 3000,
        "build_samples_per_s": 10.0,
        "forward_samples_per_s": 20.0,
        "throughput_ratio": 0.5,
        "load_at_start": load,
        "cores": 2,
    }
    text = format_summary(s)
    assert "0.50× the teacher's forward-only" in text
    assert ("not a clean measurement: load average 3.0 on 2 cores" in text) is caveat
    assert "not a clean" not in format_summary({**s, "throughput_ratio": None, "build_samples_per_s": None})


@pytest.mark.parametrize("word, meant", [("verfy", "verify"), ("inf", "info"), ("imprt", "import")])
def test_a_misspelt_cache_subcommand_gets_a_did_you_mean(tmp_path, monkeypatch, capsys, word, meant):
    monkeypatch.chdir(tmp_path)  # no file of that name here
    assert main(["cache", word, "x"]) == 2
    line = _error_line(capsys)
    assert "neither a config file nor an `ekd cache` subcommand" in line and f"did you mean '{meant}'" in line


def test_a_build_with_fewer_shards_than_ranks_says_which_ranks_idle(caplog):
    """Try-out 12: `torchrun --nproc_per_node=2 ekd cache` of a corpus of one shard (826 samples, 1,024 per
    shard) left rank 1 idle ("built 0 of 826 samples on rank 1/2") without a word on why or how to spread it."""
    import logging

    from ekd.teacher.cache.build import _warn_idle_ranks

    with caplog.at_level(logging.WARNING, logger="ekd"):
        _warn_idle_ranks(826, 1024, 2)
        _warn_idle_ranks(826, 413, 2)  # a shard each: nothing to say
        _warn_idle_ranks(78, 30, 8)
        _warn_idle_ranks(3, 1024, 8)  # fewer samples than ranks: no shard size helps (review)
    assert [r.getMessage() for r in caplog.records] == [
        "teacher cache: 826 samples make 1 shard (teacher.cache_shard_samples=1024) for 2 ranks: 1 rank builds "
        "nothing; teacher.cache_shard_samples=413 gives every rank a shard",
        "teacher cache: 78 samples make 3 shards (teacher.cache_shard_samples=30) for 8 ranks: 5 ranks build "
        "nothing; teacher.cache_shard_samples=9 gives every rank a shard",
        "teacher cache: 3 samples for 8 ranks: only 3 ranks can get a shard",
    ]


def test_training_from_a_cache_of_other_positions_is_refused_by_name(setup, capsys):
    """Try-out 27: `method=rskd` (every position) from a teacher-entropy top-25% cache trained KD on 25% of the
    positions without a word, its config.yaml saying teacher.cache_positions=all; an explicit other fraction was
    accepted too. The positions rule is compared as every other signature field is."""
    cache = setup["root"] / "cache-topk"  # built by the test above (teacher_entropy_topk, 0.25)
    if not cache.is_dir():
        run_build(
            load_config(
                [setup["cfg"]],
                [
                    "method=topk_ghost",
                    "teacher.cache_positions=teacher_entropy_topk",
                    "teacher.cache_fraction=0.25",
                    f"teacher.cache_dir={cache}",
                ],
            ),
            stat_format="fp16",
            measure_forward=False,
        )
    common = [setup["cfg"], "method=topk_ghost", "teacher.source=cache", f"teacher.cache_dir={cache}"]
    assert main(["distill", *common]) == 2
    line = _error_line(capsys)
    assert 'positions [teacher.cache_positions]: expected "all", found "teacher_entropy_topk"' in line, line
    assert (
        main(
            ["distill", *common, "teacher.cache_positions=teacher_entropy_topk", "teacher.cache_fraction=0.5"]
        )
        == 2
    )
    assert "position_fraction [teacher.cache_fraction]: expected 0.5, found 0.25" in _error_line(capsys)


def test_idts_from_a_cache_is_refused_as_a_per_token_temperature(setup, capsys):
    """Try-out 41, F2: ``method.temperature=idts`` with a cache was told that hellinger (its score) needs the full
    distribution and to use 'a teacher-side/student-side score' — a key it had not set."""
    args = ["run.name=idts-cache", "teacher.source=cache", f"teacher.cache_dir={setup['cache']}"]
    assert main(["distill", setup["cfg"], *args, "method.temperature=idts"]) == 2
    line = _error_line(capsys)
    assert "method.temperature=idts changes τ per token, but cached RS targets are drawn at τ=1" in line, line


def test_a_selecting_method_over_a_top_f_cache_is_told_its_candidates():
    """Try-out 56, F8: EKD over a teacher-entropy top-20% cache selected its coverage of the cached positions
    (6.8% of the tokens over the run vs 29.8% online) and only the final 'KD positions' said so."""
    from ekd.teacher.cache.source import candidates_note

    ekd = load_config(None, ["method=ekd"]).method
    top = {"positions": "teacher_entropy_topk", "position_fraction": 0.2}
    assert candidates_note(top, ekd) == (
        "teacher cache: the KD candidates are the cached 20% of each sequence's positions (its teacher-entropy "
        "top 0.2); method.policy=coverage_schedule selects its fraction of those, so about 0.2× that fraction of "
        "all tokens"
    )
    assert candidates_note({"positions": "all", "position_fraction": None}, ekd) == ""
    assert candidates_note(top, load_config(None, ["method=rskd"]).method).endswith(  # try-out 57, F4
        "method.policy=all distills every one of them: about 20% of the tokens"
    )


def test_a_changed_data_setting_is_shown_whole_or_cut_to_100_characters():
    """A chat template (pages of Jinja) that changed is named and cut, not printed whole into the error line."""
    from ekd.teacher.cache.manifest import DATA_SETTINGS
    from ekd.teacher.cache.source import check_signature

    template = "{% for message in messages %}{{ message['content'] }}{% endfor %}" * 20
    found = {
        "data_fingerprint": "a" * 64,
        DATA_SETTINGS: {"data.chat_template": "", "data.source": "chat.jsonl"},
    }
    expected = {
        "data_fingerprint": "b" * 64,
        DATA_SETTINGS: {"data.chat_template": template, "data.source": "chat.jsonl"},
    }
    with pytest.raises(CacheError) as e:
        check_signature(Path("c"), expected, found)
    said = str(e.value)
    assert '[data.chat_template="{% for message in messages %}' in said and ', built with ""]: ' in said, said
    assert template not in said and len(said) < 600, said


def test_a_build_over_a_cache_of_other_settings_names_the_key_and_keeps_a_way_to_keep_it(setup, capsys):
    """Try-out 64, F7: `ekd cache CONFIG` over a finished cache with a data key changed said `data_fingerprint:
    expected .., found ..` and only `--overwrite`, which deletes a cache good for the settings it was built with."""
    cache = _damaged_copy(setup, "other-settings")
    before = _tree_sha256(cache)
    assert main(["cache", setup["cfg"], f"teacher.cache_dir={cache}", "data.max_chars=2000"]) == 2
    line = _error_line(capsys)
    assert "data_fingerprint [data.max_chars=2000, built with 0]: " in line, line
    assert line.endswith("or set teacher.cache_dir to another directory to keep it"), line
    assert _tree_sha256(cache) == before  # nothing written


def test_the_recorded_data_settings_hold_the_token_store_and_not_the_eval_sets():
    """Try-out 64, F4: the token store splits eval documents by its own rule, so `data.store_dir` can change the
    training blocks of a small corpus: recorded (a refusal names it); the eval sets' keys do not, and are not."""
    from ekd.teacher.cache.signature import data_settings

    settings = data_settings(load_config(None, ["model.tokenizer=train_bpe"]))
    assert "data.store_dir" in settings and "data.source" in settings and "model.bpe_vocab_size" in settings
    assert not {"data.eval_sources", "data.max_eval_blocks", "data.block_length"} & set(settings)
    assert "model.bpe_vocab_size" not in data_settings(load_config(None, ["model.tokenizer=gpt2"]))


def test_a_chat_template_file_edited_in_place_is_named(tmp_path):
    """Try-out 64, F6: a chat template file edited under the same path was said to be the data at data.source
    changing: the recorded settings hold the file's sha256, and the refusal names the template."""
    from ekd.teacher.cache.manifest import DATA_SETTINGS
    from ekd.teacher.cache.signature import TEMPLATE_FILE, data_settings
    from ekd.teacher.cache.source import check_signature

    template = tmp_path / "chat.jinja"
    template.write_text("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    cfg = load_config(
        None, [f"data.chat_template={template}", "data.format=chat", f"data.source={tmp_path}/c.jsonl"]
    )
    built = data_settings(cfg)
    template.write_text("{% for m in messages %}<<{{ m['content'] }}{% endfor %}")
    now = data_settings(cfg)
    assert built[TEMPLATE_FILE] != now[TEMPLATE_FILE] and built[TEMPLATE_FILE].startswith("sha256:")
    with pytest.raises(CacheError) as e:
        check_signature(
            Path("c"),
            {"data_fingerprint": "b" * 64, DATA_SETTINGS: now},
            {"data_fingerprint": "a" * 64, DATA_SETTINGS: built},
        )
    assert "data_fingerprint [data.chat_template (the file's text)=\"sha256:" in str(e.value), e.value
    assert "data.source" not in str(e.value), e.value


def test_a_rerun_that_builds_nothing_keeps_the_data_settings_the_shards_were_built_with(setup, capsys):
    """Try-out 64, F11: `ekd cache CONFIG` rerun over a finished cache with an inert key changed (max_documents
    above the corpus: the same blocks) recorded that value, and a later refusal said 'built with 500'."""
    from ekd.teacher.cache.manifest import DATA_SETTINGS

    cache = _damaged_copy(setup, "rerun-inert")
    shards = _tree_sha256(cache)
    shards.pop("manifest.json")
    assert main(["-q", "cache", setup["cfg"], f"teacher.cache_dir={cache}", "data.max_documents=500"]) == 0
    recorded = json.loads((cache / "manifest.json").read_text())["signature"][DATA_SETTINGS]
    assert recorded["data.max_documents"] == 0, recorded
    assert {k: v for k, v in _tree_sha256(cache).items() if k != "manifest.json"} == shards


def test_a_run_from_a_cache_is_told_its_write_settings_are_not_read(setup, capsys, caplog):
    """Try-out 108, F8: teacher.cache_stat_format=fp16 on a run from a q8 cache was accepted without a word and
    config.yaml recorded fp16; the run reads the cache as written, and now says so."""
    args = ["teacher.source=cache", f"teacher.cache_dir={setup['cache']}", "train.max_steps=1", "--overwrite"]
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert (
            main(
                ["-q", "distill", setup["cfg"], "run.name=fp16-said", *args, "teacher.cache_stat_format=fp16"]
            )
            == 0
        )
    assert "teacher.cache_stat_format=fp16 (the cache's: q8): how `ekd cache` writes a cache" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main(["-q", "distill", setup["cfg"], "run.name=q8-unsaid", *args]) == 0
    assert "how `ekd cache` writes a cache" not in caplog.text


def test_a_cache_built_with_another_shard_size_is_kept_by_asking_for_its_size(setup, capsys):
    """Try-out 138, F6: a rerun of `ekd cache` with another teacher.cache_shard_samples (the config's default after
    an interrupted build with a torchrun's size) was offered only deleting the cache — 27 finished shards — and the
    field was named without its key. The line names the key and the size that keeps the cache."""
    before = _tree_sha256(setup["cache"])
    assert main(["cache", setup["cfg"], "teacher.cache_shard_samples=16"]) == 2
    line = _error_line(capsys)
    assert "shard_samples [teacher.cache_shard_samples]: expected 16, found 8" in line, line
    assert "keep it with teacher.cache_shard_samples=8 (the size it was built with), or rebuild" in line, line
    assert _tree_sha256(setup["cache"]) == before
    # the way: kept, as it was
    assert main(["-q", "cache", setup["cfg"], "teacher.cache_shard_samples=8"]) == 0
    assert _tree_sha256(setup["cache"]) == before
