"""Token-sample noise of a text eval set (a user's finding: "no token-level noise for text sets"): every seed is
scored on the same fixed blocks of eval text, so ``ekd compare`` judges a ppl / acc difference against two cluster
standard errors over those blocks, from the per-block sums each run's eval.json records (``block_sums``).

Every expected value is computed here, independently, in float64 numpy."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ekd.cli import main
from ekd.errors import EkdError
from ekd.eval import StreamingMetrics, evaluate
from ekd.eval.compare import compare_runs
from ekd.eval.compare.summary import cluster_standard_error, text_set_noise
from ekd.eval.saved_files import eval_json_problem
from test_eval import V, make_batches, tiny_llama
from tiny import tiny_overrides, write_corpus


def reference_se(d, n) -> tuple[float, float]:
    """D = Σd/Σn and SE = √(B/(B−1)·Σ(d − D·n)²)/Σn over the blocks with tokens, in numpy float64."""
    d, n = np.asarray(d, dtype=np.float64), np.asarray(n, dtype=np.float64)
    d, n = d[n > 0], n[n > 0]
    mean = d.sum() / n.sum()
    b = len(d)
    return float(mean), float(np.sqrt(b / (b - 1) * ((d - mean * n) ** 2).sum()) / n.sum())


# ------------------------------------------------------------------ (a) the formula


def test_cluster_standard_error_by_hand_and_against_numpy():
    # by hand: Σd = 2, Σn = 8, D = 0.25; residuals 0.5, −1.5, 1 → Σ² = 3.5; ·3/2 = 5.25; √5.25/8
    mean, se = cluster_standard_error([1.0, -1.0, 2.0], [2.0, 2.0, 4.0])
    assert mean == pytest.approx(0.25) and se == pytest.approx(math.sqrt(5.25) / 8, rel=1e-12)
    rng = np.random.default_rng(0)
    for blocks in (2, 7, 48):
        n = rng.integers(20, 128, blocks).astype(float)
        d = rng.normal(0.05, 0.3, blocks) * n + rng.normal(0, 2.0, blocks)
        got = cluster_standard_error(d.tolist(), n.tolist())
        assert got == pytest.approx(reference_se(d, n), rel=1e-10)
    # a block without tokens is no block (its difference is 0 too)
    with_empty = cluster_standard_error([1.0, -1.0, 0.0, 2.0], [2.0, 2.0, 0.0, 4.0])
    assert with_empty == pytest.approx((mean, se), rel=1e-12)
    # identities: the same per-token shift on every block has no sampling noise; one block has no spread
    assert cluster_standard_error([0.3 * 10, 0.3 * 30, 0.3 * 5], [10, 30, 5]) == pytest.approx(
        (0.3, 0.0), abs=1e-12
    )
    assert math.isnan(cluster_standard_error([1.0], [4.0])[1])
    assert all(math.isnan(x) for x in cluster_standard_error([0.0, 0.0], [0.0, 0.0]))
    with pytest.raises(ValueError, match="3 block differences for 2 block counts"):
        cluster_standard_error([1.0, 2.0, 3.0], [1.0, 2.0])


def _sums(rng, n, boundary_tokens) -> dict[str, list[float]]:
    nll = rng.uniform(2.0, 4.0, len(n)) * n
    return {
        "tokens": n.tolist(),
        "nll": nll.tolist(),
        "correct": np.floor(rng.uniform(0.1, 0.5, len(n)) * n).tolist(),
        "boundary_tokens": boundary_tokens.tolist(),
        "boundary_nll": (boundary_tokens * rng.uniform(1.0, 3.0, len(n))).tolist(),
    }


def test_text_set_noise_in_each_metrics_own_units():
    rng = np.random.default_rng(1)
    n = rng.integers(30, 64, 12).astype(float)
    eos = rng.integers(0, 3, 12).astype(float)
    g, b = _sums(rng, n, eos), _sums(rng, n, eos)
    arr = {k: (np.array(g[k]), np.array(b[k])) for k in g}
    loss_se = reference_se(arr["nll"][0] - arr["nll"][1], n)[1]
    assert text_set_noise(g, b, "loss", math.nan) == pytest.approx(2 * loss_se, rel=1e-10)
    assert text_set_noise(g, b, "ppl", 20.0) == pytest.approx(
        2 * loss_se * 20.0, rel=1e-10
    )  # Δppl ≈ ppl·Δloss
    acc_se = reference_se(arr["correct"][0] - arr["correct"][1], n)[1]
    assert text_set_noise(g, b, "acc", 0.3) == pytest.approx(2 * acc_se, rel=1e-10)  # no scale
    text = [(arr["nll"][i] - arr["boundary_nll"][i]) for i in (0, 1)]  # the end-of-document targets left out
    nb_se = reference_se(text[0] - text[1], n - eos)[1]
    assert text_set_noise(g, b, "ppl_no_boundary", 25.0) == pytest.approx(2 * nb_se * 25.0, rel=1e-10)
    # not one eval set, not recorded, not such a metric: no judgement
    other = {**b, "tokens": (n + 1).tolist()}
    shorter = {k: v[:-1] for k, v in b.items()}
    assert math.isnan(text_set_noise(g, other, "ppl", 20.0))
    assert math.isnan(text_set_noise(g, shorter, "ppl", 20.0))
    assert math.isnan(text_set_noise(g, {k: v for k, v in b.items() if k != "correct"}, "acc", 0.3))
    assert math.isnan(text_set_noise(g, b, "ece", 1.0))


# ------------------------------------------------------------------ per-block sums at evaluation


def _same(a: dict, b: dict) -> bool:
    """Equal dicts of floats, NaN equal to NaN (bit-identical figures)."""
    return a.keys() == b.keys() and all(
        (isinstance(a[k], float) and math.isnan(a[k]) and math.isnan(b[k])) or a[k] == b[k] for k in a
    )


def test_block_sums_leave_the_metrics_bit_identical_and_add_up_to_them():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(50, V, generator=g) * 3  # (N, V)
    labels = torch.randint(0, V, (50,), generator=g)
    labels[[3, 17, 40]] = -100
    boundary = torch.zeros(50, dtype=torch.bool)
    boundary[[5, 20, 21, 49]] = True
    block = torch.arange(50) // 8  # (N,) 7 blocks of 8 rows (the last of 2)
    plain, blocked = StreamingMetrics(V, chunk_rows=7), StreamingMetrics(V, chunk_rows=7)
    plain.update(logits, labels, boundary=boundary)
    blocked.update(logits, labels, boundary=boundary, block=block)
    assert _same(plain.compute(), blocked.compute())
    sums = blocked.block_sums(9)  # two more blocks no row was passed for: zeros
    assert all(len(v) == 9 for v in sums.values()) and sums["tokens"][7:] == [0.0, 0.0]
    keep = labels != -100
    nll = -torch.log_softmax(logits.double(), -1)[torch.arange(50), labels.clamp(min=0)]  # (N,) float64
    correct = (logits.argmax(-1) == labels) & keep
    for i in range(7):
        rows = (block == i) & keep
        assert sums["tokens"][i] == int(rows.sum()) and sums["correct"][i] == int(correct[rows].sum())
        assert sums["nll"][i] == pytest.approx(float(nll[rows].sum()), rel=1e-6)
        assert sums["boundary_tokens"][i] == int((rows & boundary).sum())
        assert sums["boundary_nll"][i] == pytest.approx(float(nll[rows & boundary].sum()), rel=1e-6, abs=1e-9)
    m = blocked.compute()
    assert sum(sums["tokens"]) == m["tokens"] and sum(sums["nll"]) == pytest.approx(m["loss"] * m["tokens"])
    with pytest.raises(ValueError, match="rows of block 6 were passed, but the set has 3 blocks"):
        blocked.block_sums(3)


def test_evaluate_numbers_blocks_over_every_ranks_batches(monkeypatch):
    """Rank r of W evaluates the batches i ≡ r (mod W); its per-block sums are indexed by the block's position in
    the whole set, so the all-reduce (a sum) gives every rank all of them. Simulated: each rank's share with the
    collective a no-op, then summed here."""
    student = tiny_llama(V, 32, seed=0)
    batches = make_batches(
        5, b=3, seed=2
    )  # 15 blocks; rank 0 of 2 scores batches 0, 2, 4, rank 1 batches 1, 3
    whole: dict[str, list[float]] = {}
    metrics, _ = evaluate(student, batches, vocab_size=V, block_sums=whole)
    assert len(whole["tokens"]) == 15 and sum(whole["tokens"]) == metrics["tokens"]
    assert sum(whole["nll"]) == pytest.approx(metrics["loss"] * metrics["tokens"], rel=1e-12)
    for i, batch in enumerate(batches):  # block 3i + r is row r of batch i
        counts = (batch.labels != -100).sum(1).tolist()
        assert whole["tokens"][3 * i : 3 * i + 3] == counts
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda *a, **k: None)
    shares = []
    for rank in (0, 1):
        share: dict[str, list[float]] = {}
        evaluate(student, batches, vocab_size=V, rank=rank, world_size=2, block_sums=share)
        shares.append(share)
    for rank, share in enumerate(shares):
        assert len(share["tokens"]) == 15  # the whole set's blocks on every rank
        scored = [b for b in range(15) if share["tokens"][b]]
        assert scored == [b for b in range(15) if (b // 3) % 2 == rank and whole["tokens"][b]]
    for name, values in whole.items():
        assert [a + b for a, b in zip(shares[0][name], shares[1][name])] == pytest.approx(values, rel=1e-6)


# ------------------------------------------------------------------ end to end: ekd distill, ekd eval, ekd compare


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    """Two tiny finished runs, one seed each: kd (the baseline) and ce."""
    tmp = tmp_path_factory.mktemp("text_set_noise")
    corpus = write_corpus(tmp / "corpus", n_docs=24)
    out = {}
    for preset in ("kd", "ce"):
        extra = {"method.preset": preset, "train.max_steps": 2, "data.max_eval_blocks": 6}
        assert main(["-q", "distill", *tiny_overrides(tmp, corpus, preset, **extra)]) == 0
        out[preset] = tmp / "runs" / preset
    return out


def _copy(runs: dict[str, Path], root: Path) -> dict[str, Path]:
    return {k: Path(shutil.copytree(v, root / k)) for k, v in runs.items()}


def _eval_json(run: Path) -> dict:
    return json.loads((run / "eval.json").read_text())


@pytest.mark.slow
def test_eval_json_records_per_block_sums_that_add_up_to_the_sets_figures(runs, tmp_path, capsys):
    saved = _eval_json(runs["kd"])
    entry = saved["eval"]
    sums = entry["block_sums"]
    assert set(sums) == {"tokens", "nll", "correct", "boundary_tokens", "boundary_nll"}
    assert len({len(v) for v in sums.values()}) == 1 and 2 <= len(sums["tokens"]) <= 6  # one per block
    assert all(isinstance(x, int) for k in ("tokens", "correct", "boundary_tokens") for x in sums[k])
    tokens, nll = np.array(sums["tokens"], float), np.array(sums["nll"])
    assert tokens.sum() == entry["tokens"] and sum(sums["boundary_tokens"]) == entry["boundary_tokens"] > 0
    assert nll.sum() == pytest.approx(entry["loss"] * entry["tokens"], rel=1e-12)
    assert sum(sums["correct"]) == round(entry["acc"] * entry["tokens"])
    text = nll.sum() - sum(sums["boundary_nll"])
    assert text / (tokens.sum() - entry["boundary_tokens"]) == pytest.approx(
        entry["loss_no_boundary"], rel=1e-12
    )
    assert math.exp(entry["loss"]) == pytest.approx(entry["ppl"], rel=1e-12)  # the figures as they were
    assert "block_sums" not in saved["eval/teacher"]  # the teacher row: no difference is taken against it
    rows = [json.loads(line) for line in (runs["kd"] / "metrics.jsonl").read_text().splitlines()]
    assert not any("block_sums" in k for r in rows for k in r)  # not logged: a figure per block is no metric
    # ekd eval RUN scores the blocks again, alike
    run = _copy(runs, tmp_path)["kd"]
    assert main(["-q", "eval", str(run)]) == 0, capsys.readouterr().err
    again = _eval_json(run)["eval"]
    assert again["block_sums"]["tokens"] == sums["tokens"]
    assert again["block_sums"]["nll"] == pytest.approx(sums["nll"], rel=1e-9)


def _noise(saved_group: dict, saved_base: dict, metric: str = "ppl") -> float:
    """Two cluster standard errors of group − baseline on ``eval``, computed here from the two eval.json files."""
    g, b = saved_group["eval"]["block_sums"], saved_base["eval"]["block_sums"]
    _, se = reference_se(np.array(g["nll"]) - np.array(b["nll"]), b["tokens"])
    return 2 * se * saved_base["eval"][metric]


def _set_block_nll(run: Path, nll: list[float]) -> None:
    """Rewrite ``run``'s eval entry as if its blocks had these NLL sums (loss and ppl to match)."""
    saved = _eval_json(run)
    entry = saved["eval"]
    entry["block_sums"]["nll"] = nll
    entry["loss"] = sum(nll) / entry["tokens"]
    entry["ppl"] = math.exp(entry["loss"])
    (run / "eval.json").write_text(json.dumps(saved))


def _ppl_diff(summary: dict) -> dict:
    return next(g for g in summary["groups"] if g["method"] == "ce")["vs"]["kd"]["eval/ppl"]


@pytest.mark.slow
def test_compare_judges_a_one_seed_ppl_gap_against_the_eval_blocks_noise(runs, tmp_path):
    copies = _copy(runs, tmp_path / "runs")
    s = compare_runs(list(copies.values()), tmp_path / "out", baselines=("kd",), plots=False)
    d = _ppl_diff(s)
    kd, ce = _eval_json(copies["kd"]), _eval_json(copies["ce"])
    noise = _noise(ce, kd)
    assert d["n"] == 1 and d["item_noise"] == pytest.approx(noise, rel=1e-9)
    assert d["verdict"] == ("within item noise" if abs(d["mean"]) < noise else "1 seed")
    # forced: a gap of ~1 nat on 3 of its blocks, with its opposite on the others — smaller than the noise
    base = kd["eval"]["block_sums"]["nll"]
    swing = [(1.0 if i % 2 else -1.0) * 30 + (0.5 if i == 0 else 0.0) for i in range(len(base))]
    _set_block_nll(copies["ce"], [x + y for x, y in zip(base, swing)])
    s = compare_runs(list(copies.values()), tmp_path / "out2", baselines=("kd",), plots=False)
    d = _ppl_diff(s)
    noise = _noise(_eval_json(copies["ce"]), kd)
    assert abs(d["mean"]) < noise and d["item_noise"] == pytest.approx(noise, rel=1e-9)
    assert d["verdict"] == "within item noise"
    md = (tmp_path / "out2" / "compare.md").read_text()
    assert "within item noise: smaller than two standard errors of the fixed sample" in md
    # forced: 0.5 nats a token worse on every block, give or take 0.1 nats a block — far beyond the noise
    tokens = kd["eval"]["block_sums"]["tokens"]
    shift = [0.5 * n + (0.1 if i % 2 else -0.1) for i, n in enumerate(tokens)]
    _set_block_nll(copies["ce"], [x + y for x, y in zip(base, shift)])
    s = compare_runs(list(copies.values()), tmp_path / "out3", baselines=("kd",), plots=False)
    d = _ppl_diff(s)
    noise = _noise(_eval_json(copies["ce"]), kd)
    assert d["mean"] > noise > 0 and d["item_noise"] == pytest.approx(noise, rel=1e-9)
    assert d["verdict"] == "1 seed"


@pytest.mark.slow
def test_runs_without_per_block_sums_compare_as_before(runs, tmp_path):
    """An eval.json of an older ekd (no ``block_sums``): no item noise for its text sets, everything else as with
    them; one side without them is enough to have none."""
    copies = _copy(runs, tmp_path / "runs")
    full = compare_runs(list(copies.values()), tmp_path / "full", baselines=("kd",), plots=False)
    assert "item_noise" in _ppl_diff(full)  # with the sums: judged
    for i, run in enumerate(copies.values()):
        saved = _eval_json(run)
        for entry in saved.values():
            if isinstance(entry, dict):
                entry.pop("block_sums", None)
        (run / "eval.json").write_text(json.dumps(saved))
        older = compare_runs(list(copies.values()), tmp_path / f"older{i}", baselines=("kd",), plots=False)
        vs_full = next(g for g in full["groups"] if g["method"] == "ce")["vs"]["kd"]
        vs_older = next(g for g in older["groups"] if g["method"] == "ce")["vs"]["kd"]
        assert vs_older.keys() == vs_full.keys()
        for key, d in vs_older.items():
            assert "item_noise" not in d, key
            was = vs_full[key]
            assert {k: d[k] for k in ("mean", "n")} == {k: was[k] for k in ("mean", "n")}
            assert d["verdict"] == ("1 seed" if was["verdict"] == "within item noise" else was["verdict"])
        means = [{k: c["mean"] for g in x["groups"] for k, c in g["metrics"].items()} for x in (older, full)]
        assert means[0] == means[1]


def test_eval_json_with_per_block_sums_reads_and_a_malformed_record_is_one_line(tmp_path):
    entry = {"ppl": 9.0, "block_sums": {"tokens": [3, 4], "nll": [6.5, None], "correct": [1, 2]}}
    assert eval_json_problem({"eval": entry}) is None
    assert eval_json_problem({"eval": {**entry, "block_sums": [1, 2]}}) == (
        "'eval' records 'block_sums' as a JSON list, not an object of per-block lists"
    )
    bad = {**entry, "block_sums": {"tokens": [3, 4], "nll": ["x", 1.0]}}
    assert eval_json_problem({"eval": bad}) == (
        "'eval' records 'block_sums' with 'nll' holding a JSON string (\"x\"), not a number"
    )
    uneven = {**entry, "block_sums": {"tokens": [3, 4], "nll": [1.0]}}
    assert "lists of different lengths (1, 2)" in eval_json_problem({"eval": uneven})
    run = tmp_path / "r"
    run.mkdir()
    (run / "config.yaml").write_text("run: {name: r, seed: 0}\nmethod: {preset: kd}\n")
    (run / "eval.json").write_text(json.dumps({"eval": bad}))
    with pytest.raises(EkdError, match=r"eval.json is malformed: 'eval' records 'block_sums' with 'nll'"):
        compare_runs([run], tmp_path / "out", plots=False)


def test_lists_of_numbers_stay_on_one_line_in_written_json():
    """eval.json's per-block sums: one number per line made five lines per block of every set."""
    import json

    from ekd.io import strict_json

    value = {"eval": {"block_sums": {"nll": [1.5, 2.25e-05, -3, float("nan")], "tokens": [1, 2]}, "ppl": 3.0},
             "names": ["x", "y"], "empty": []}  # fmt: skip
    text = strict_json(value)
    assert '"nll": [1.5, 2.25e-05, -3, null],' in text and '"tokens": [1, 2]' in text, text
    assert '"names": [\n' in text  # lists of strings as json.dumps lays them out
    assert json.loads(text) == json.loads(strict_json(value, indent=None))
