"""Position scores, selection policies and sample selection (METHODS §3–§4 "must hold" lines)."""

from __future__ import annotations

import functools
import io
import json
import math
import os
import tempfile

import pytest
import torch
import torch.nn.functional as F

from dist_runs import gloo_ranks
from ekd.config import MethodConfig
from ekd.selection.base import ceil_count
from ekd.selection.draws import RowDraws, micro_batch_key
from ekd.selection.policies import StepContext, build_policy, policies
from ekd.selection.sample_selection import (
    load_sample_selection,
    save_sample_selection,
    score_samples,
    score_samples_by_id,
    select_samples,
)
from ekd.selection.scores import (
    STAT_NAMES,
    compute_scores,
    needs_teacher_distribution,
    normalize_per_sequence,
    score_needs,
    scorers,
)
from ekd.selection.types import Selection

V = 37
SEEDS = range(12)

# Every policy (and bandit kind) with a config that exercises it.
POLICY_CONFIGS = {
    "all": dict(policy="all"),
    "topk_seq": dict(policy="topk", scorer="student_ce", select_fraction=0.3),
    "topk_batch": dict(policy="topk", scorer="student_ce", select_fraction=0.3, select_per="batch"),
    "gls": dict(policy="gls", scorer="teacher_entropy", select_fraction=0.3, gls_queue_size=50),
    "curriculum": dict(policy="curriculum", scorer="teacher_entropy", select_fraction=0.4),
    "coverage": dict(policy="coverage_schedule", scorer="teacher_entropy", coverage_shape="cosine"),
    "bucket": dict(policy="bucket", scorer="student_entropy", bucket_low=20.0, bucket_high=70.0),
    "pos_rs": dict(policy="pos_rs", scorer="forward_kl", select_fraction=0.3, pos_rs_power=0.7),
    "pos_rs_sn": dict(policy="pos_rs", scorer="forward_kl", select_fraction=0.3, pos_rs_self_normalized=True),
    "latf": dict(policy="latf", scorer="hellinger", latf_warmup_fraction=0.1),
    "linucb": dict(policy="bandit", bandit_kind="linucb", scorer="forward_kl"),
    "exp3": dict(policy="bandit", bandit_kind="exp3", scorer="student_ce"),
}
EXACT = ["all", "topk_seq", "topk_batch", "curriculum", "coverage", "bucket", "latf", "exp3"]


def cfg(**kw) -> MethodConfig:
    return MethodConfig(**kw)


def row_draws(seed: int, b: int) -> RowDraws:
    """Per-row streams of a micro-batch of ``b`` rows with sample ids 0 … b−1."""
    return RowDraws(micro_batch_key(0, seed, 0), torch.arange(b))


def ctx(
    step: int = 0, total: int = 20, seed: int = 0, features: dict | None = None, b: int | None = None
) -> StepContext:
    """A step context; its row streams have ``b`` rows (default: the rows of ``features``, else none)."""
    if b is None and features:
        b = next(iter(features.values())).shape[0]
    rows = row_draws(seed, b) if b is not None else None
    return StepContext(step, total, torch.Generator().manual_seed(seed), V, features or {}, rows)


def logits_batch(seed: int, b: int = 4, t: int = 23):
    """Random teacher/student logits (float64), labels with ignored positions, one fully ignored row."""
    g = torch.Generator().manual_seed(seed)
    zt = torch.randn(b, t, V, generator=g, dtype=torch.float64) * 2.0
    zs = torch.randn(b, t, V, generator=g, dtype=torch.float64) * 2.0
    labels = torch.randint(0, V, (b, t), generator=g)
    labels[torch.rand(b, t, generator=g) < 0.3] = -100
    labels[b - 1] = -100  # an all-ignored sequence
    labels[0, :2] = torch.randint(0, V, (2,), generator=g)  # row 0 has valid positions
    return zt, zs, labels


def reference_stats(zt, zs, labels) -> dict[str, torch.Tensor]:
    """Float64 statistics, straight from the definitions."""
    lp, lq = torch.log_softmax(zt, -1), torch.log_softmax(zs, -1)
    p, q = lp.exp(), lq.exp()
    gold = labels.clamp(min=0).unsqueeze(-1)
    return {
        "teacher_entropy": -(p * lp).sum(-1),
        "teacher_logp_gold": lp.gather(-1, gold).squeeze(-1),
        "student_entropy": -(q * lq).sum(-1),
        "student_logp_gold": lq.gather(-1, gold).squeeze(-1),
        "forward_kl": (p * (lp - lq)).sum(-1),
        "reverse_kl": (q * (lq - lp)).sum(-1),
        "hellinger": ((p.sqrt() - q.sqrt()).pow(2).sum(-1)).sqrt() / math.sqrt(2.0),
    }


def step_stats(zt, zs, labels, garbage: bool = True) -> dict[str, torch.Tensor]:
    """What the training step passes: fp32 stats; garbage (not 0) at ignored positions to prove masking."""
    ref = reference_stats(zt.float().double(), zs.float().double(), labels)
    valid = labels != -100
    out = {}
    for k, v in ref.items():
        v = v.float()
        out[k] = v.masked_fill(~valid, 1e4) if garbage else v.masked_fill(~valid, 0.0)
    return out


@functools.cache
def _random_case(seed: int):
    zt, zs, labels = logits_batch(seed, 5, 17)
    valid = labels != -100
    if seed % 4 == 0:
        valid[1] = False
    return step_stats(zt, zs, labels, garbage=False), valid


def random_case(seed: int):
    """(stats, valid, generator) with random masks (including empty rows), for the policy property loops."""
    stats, valid = _random_case(seed)
    return {k: v.clone() for k, v in stats.items()}, valid.clone(), torch.Generator().manual_seed(1000 + seed)


def scores_for(method: MethodConfig, stats, valid, seed: int = 0):
    return compute_scores(method, stats, valid, row_draws(seed, valid.shape[0]), V)


# ---------------------------------------------------------------------------------------------------------
# Scores (METHODS §3)
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("seed", [0, 1])
def test_scores_match_float64_reference(seed):
    zt, zs, labels = logits_batch(seed)
    valid = labels != -100
    ref = reference_stats(zt, zs, labels)
    stats = step_stats(zt, zs, labels, garbage=True)
    expected = {
        "teacher_entropy": ref["teacher_entropy"],
        "student_entropy": ref["student_entropy"],
        "student_ce": -ref["student_logp_gold"],
        "teacher_ce": -ref["teacher_logp_gold"],
        "forward_kl": ref["forward_kl"],
        "reverse_kl": ref["reverse_kl"],
        "hellinger": ref["hellinger"],
        "ce_ratio": -ref["student_logp_gold"] / (-ref["teacher_logp_gold"] + 1e-6),
        "ce_ratio_plus_student_entropy": -ref["student_logp_gold"] / (-ref["teacher_logp_gold"] + 1e-6)
        + ref["student_entropy"] / math.log(V),
    }
    assert set(expected) | {"random", "composite"} == set(scorers.names())
    for name, want in expected.items():
        got = scores_for(cfg(scorer=name), stats, valid)
        assert got.dtype == torch.float32 and got.shape == valid.shape and not got.requires_grad
        assert torch.all(got[~valid] == 0), name
        torch.testing.assert_close(got.double()[valid], want[valid], rtol=1e-4, atol=1e-5, msg=name)


def test_random_scorer_uses_the_row_streams():
    valid = torch.rand(3, 11, generator=torch.Generator().manual_seed(0)) > 0.3
    a = scores_for(cfg(scorer="random"), {}, valid, seed=5)
    b = scores_for(cfg(scorer="random"), {}, valid, seed=5)
    c = scores_for(cfg(scorer="random"), {}, valid, seed=6)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.all(a[~valid] == 0) and torch.all((a[valid] >= 0) & (a[valid] < 1))


def _norm_reference(x: torch.Tensor, v: torch.Tensor, kind: str) -> torch.Tensor:
    out = torch.zeros_like(x, dtype=torch.float64)
    for i in range(x.shape[0]):
        vals = x[i][v[i]].double()
        if vals.numel() == 0:
            continue
        if kind == "zscore":
            normed = (vals - vals.mean()) / max(float(vals.std(unbiased=False)), 1e-8)
        else:
            normed = (vals - vals.min()) / max(float(vals.max() - vals.min()), 1e-8)
        out[i][v[i]] = normed
    return out


@pytest.mark.parametrize("kind", ["zscore", "minmax"])
def test_composite_normalizes_per_sequence_over_valid_only(kind):
    zt, zs, labels = logits_batch(3)
    valid = labels != -100
    valid[2] = False
    valid[2, 5] = True  # a single valid token: normalizes to 0
    stats = step_stats(zt, zs, labels, garbage=True)  # 1e4 at ignored positions must not leak in
    ref = reference_stats(zt, zs, labels)
    weights = {"teacher_entropy": 0.7, "student_ce": -0.4, "forward_kl": 1.5}
    got = scores_for(cfg(scorer="composite", scorer_weights=weights, scorer_normalization=kind), stats, valid)
    want = (
        0.7 * _norm_reference(ref["teacher_entropy"], valid, kind)
        + -0.4 * _norm_reference(-ref["student_logp_gold"], valid, kind)
        + 1.5 * _norm_reference(ref["forward_kl"], valid, kind)
    )
    assert torch.all(got[~valid] == 0) and torch.all(got[2] == 0)
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-4)
    # changing ignored positions changes nothing
    other = {k: v.masked_fill(~valid, -7.0) for k, v in stats.items()}
    torch.testing.assert_close(
        scores_for(cfg(scorer="composite", scorer_weights=weights, scorer_normalization=kind), other, valid),
        got,
    )


def test_normalize_constant_row_is_zero():
    x = torch.full((2, 4), 3.0)
    v = torch.tensor([[True, True, False, True], [False] * 4])
    for kind in ("zscore", "minmax"):
        assert torch.all(normalize_per_sequence(x, v, kind) == 0)


def test_score_needs_and_teacher_distribution_flags():
    assert score_needs(cfg(scorer="none")) == set()
    assert score_needs(cfg(scorer="ce_ratio")) == {"student_logp_gold", "teacher_logp_gold"}
    assert score_needs(
        cfg(scorer="composite", scorer_weights={"hellinger": 1.0, "student_entropy": 2.0})
    ) == {
        "hellinger",
        "student_entropy",
    }
    assert score_needs(cfg(policy="bandit", bandit_kind="linucb")) == {"teacher_entropy", "student_logp_gold"}
    assert score_needs(cfg(policy="bandit", bandit_kind="linucb", scorer="forward_kl")) >= {"forward_kl"}
    for name in scorers.names():
        s = scorers.get(name)
        assert set(s.needs) <= set(STAT_NAMES)
        assert s.needs_teacher_distribution == (name in ("forward_kl", "reverse_kl", "hellinger"))
    assert needs_teacher_distribution({"hellinger", "teacher_entropy"})
    assert not needs_teacher_distribution({"teacher_entropy", "teacher_logp_gold"})


def test_compute_scores_errors_are_clear():
    valid = torch.ones(2, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="needs statistics"):
        scores_for(cfg(scorer="forward_kl"), {"teacher_entropy": torch.zeros(2, 3)}, valid)
    with pytest.raises(ValueError, match="set method.scorer"):
        scores_for(cfg(scorer="none"), {}, valid)
    with pytest.raises(ValueError, match="did you mean 'hellinger'"):
        scores_for(cfg(scorer="helinger"), {}, valid)
    with pytest.raises(ValueError, match="scorer_weights"):
        scores_for(cfg(scorer="composite"), {}, valid)


# ---------------------------------------------------------------------------------------------------------
# Policies: properties over all of them
# ---------------------------------------------------------------------------------------------------------


def feedback_for(policy, selection_count: int, seed: int) -> dict:
    g = torch.Generator().manual_seed(seed)
    before = torch.rand(selection_count, generator=g) * 2
    return {"kd_loss": 1.0 / (1 + seed), "kl_before": before, "kl_after": before * 0.8}


def run_step(policy, method, step: int, seeds: list[int], total: int = 20):
    """One optimizer step of ``len(seeds)`` micro-batches; returns [(rows, weights)] and observes."""
    out, count = [], 0
    for i, s in enumerate(seeds):
        stats, valid, _ = random_case(s)
        c = ctx(step, total, seed=100 * step + i, features=stats)
        policy.planned_count(valid, c)
        scores = scores_for(method, stats, valid, seed=s) if policy.needs_scores else None
        sel = policy.select(scores, valid, c)
        out.append((sel.rows.clone(), sel.weights.clone()))
        count += sel.count
    policy.observe(**feedback_for(policy, count, step))
    return out


@pytest.mark.parametrize("name", list(POLICY_CONFIGS))
def test_never_selects_an_ignored_position(name):
    method = cfg(**POLICY_CONFIGS[name])
    policy = build_policy(method, total_steps=20)
    for seed in SEEDS:
        stats, valid, _ = random_case(seed)
        scores = scores_for(method, stats, valid, seed) if policy.needs_scores else None
        if scores is not None:  # tempt the policy: huge scores at ignored positions
            scores = scores.masked_fill(~valid, 1e9)
        sel = policy.select(scores, valid, ctx(seed, 20, seed, stats))
        assert sel.rows.dtype == torch.long and sel.weights.dtype == torch.float32
        assert sel.num_positions == valid.numel()
        assert bool(valid.reshape(-1)[sel.rows].all()), f"{name} selected an ignored position (seed {seed})"
        assert torch.isfinite(sel.weights).all() and (sel.weights > 0).all()
        if not name.startswith("pos_rs"):
            assert sel.rows.unique().numel() == sel.count and torch.all(sel.weights == 1)
        policy.observe(**feedback_for(policy, sel.count, seed))
    empty = torch.zeros(3, 9, dtype=torch.bool)  # an all-ignored micro-batch
    scores = torch.zeros(3, 9) if policy.needs_scores else None
    zeros = {k: torch.zeros(3, 9) for k in STAT_NAMES}
    sel = policy.select(scores, empty, ctx(0, 20, 0, zeros))
    assert sel.count == 0


@pytest.mark.parametrize("name", EXACT)
def test_planned_count_equals_actual_count(name):
    method = cfg(**POLICY_CONFIGS[name])
    policy = build_policy(method, total_steps=20)
    for seed in SEEDS:
        stats, valid, _ = random_case(seed)
        c = ctx(seed, 20, seed, stats)
        planned = policy.planned_count(valid, c)
        scores = scores_for(method, stats, valid, seed) if policy.needs_scores else None
        assert policy.select(scores, valid, c).count == planned, (name, seed)
        policy.observe(**feedback_for(policy, int(planned), seed))


@pytest.mark.parametrize("per", ["sequence", "batch"])
def test_topk_exact_counts_and_highest_scores(per):
    policy = build_policy(cfg(policy="topk", scorer="random", select_fraction=0.25, select_per=per), 10)
    for seed in SEEDS:
        stats, valid, g = random_case(seed)
        scores = torch.rand(valid.shape, generator=g)
        mask = policy.select(scores, valid, ctx()).mask(tuple(valid.shape))
        rows_s, rows_v, rows_m = (
            (scores, valid, mask)
            if per == "sequence"
            else (scores.reshape(1, -1), valid.reshape(1, -1), mask.reshape(1, -1))
        )
        for s, v, m in zip(rows_s, rows_v, rows_m):
            n = int(v.sum())
            assert int(m.sum()) == (min(n, max(1, math.ceil(0.25 * n))) if n else 0)
            if m.any() and (v & ~m).any():
                assert s[m].min() >= s[v & ~m].max()


def test_topk_ties_are_deterministic_first_positions():
    valid = torch.tensor([[False, True, True, True, False, True, True, True]])
    policy = build_policy(cfg(policy="topk", scorer="random", select_fraction=0.5), 10)
    sel = policy.select(torch.ones(1, 8), valid, ctx())
    assert sel.rows.tolist() == [1, 2, 3]  # ⌈0.5·6⌉ = 3, ties → earliest valid positions


def test_ceil_count_is_robust_to_binary_rounding():
    n = torch.tensor([30, 10, 0, 1, 7])
    assert ceil_count(0.1, n).tolist() == [3, 1, 0, 1, 1]  # 0.1·30 = 3.0000000000000004 → 3


def test_gls_threshold_is_the_queue_quantile_after_pushing():
    policy = build_policy(cfg(policy="gls", scorer="random", select_fraction=0.3, gls_queue_size=40), 10)
    pushed = []
    for seed in range(6):
        _, valid, g = random_case(seed)
        scores = torch.rand(valid.shape, generator=g)
        pushed.append(scores[valid])
        sel = policy.select(scores, valid, ctx(seed))
        expected_queue = torch.cat(pushed)[-40:]  # FIFO: the newest 40, oldest evicted first
        assert torch.equal(policy.queue, expected_queue)
        threshold = torch.quantile(expected_queue, 0.7)
        assert float(policy.threshold) == float(threshold)
        assert torch.equal(sel.mask(tuple(valid.shape)), valid & (scores >= threshold))
        assert policy.planned_count(valid, ctx()) == pytest.approx(0.3 * float(valid.sum()))
    assert policy.diagnostics()["select/threshold"] == pytest.approx(float(threshold))


def test_curriculum_phase_zero_lowest_phase_one_highest():
    method = cfg(policy="curriculum", scorer="random", select_fraction=0.3, curriculum_steps=10)
    policy = build_policy(method, total_steps=100)
    for seed in SEEDS:
        _, valid, g = random_case(seed)
        scores = torch.rand(valid.shape, generator=g)
        low = policy.select(scores, valid, ctx(step=0)).mask(tuple(valid.shape))
        high = policy.select(scores, valid, ctx(step=10)).mask(tuple(valid.shape))
        mid = policy.select(scores, valid, ctx(step=5)).mask(tuple(valid.shape))
        for i in range(valid.shape[0]):
            v, s = valid[i], scores[i]
            n = int(v.sum())
            if n == 0:
                assert not low[i].any() and not high[i].any()
                continue
            k = min(n, max(1, math.ceil(0.3 * n)))
            ordered = torch.sort(s[v]).values
            assert torch.equal(torch.sort(s[low[i]]).values, ordered[:k])
            assert torch.equal(torch.sort(s[high[i]]).values, ordered[n - k :])
            start = math.floor((n - k) * 0.5)
            assert torch.equal(torch.sort(s[mid[i]]).values, ordered[start : start + k])  # contiguous window
    assert policy.phase(0) == 0.0 and policy.phase(10) == 1.0 and policy.phase(50) == 1.0
    power = build_policy(
        cfg(policy="curriculum", scorer="random", curriculum_power=2.0, curriculum_start=0.2), 10
    )
    assert power.phase(5) == pytest.approx(0.2 + 0.8 * 0.25)


@pytest.mark.parametrize("shape", ["linear", "cosine", "step"])
def test_coverage_k_grows(shape):
    method = cfg(
        policy="coverage_schedule",
        scorer="random",
        coverage_start=0.1,
        coverage_end=0.5,
        coverage_shape=shape,
    )
    policy = build_policy(method, total_steps=40)
    stats, valid, g = random_case(1)
    scores = torch.rand(valid.shape, generator=g)
    ks, counts = [], []
    for step in range(0, 41, 4):
        c = ctx(step, 40)
        counts.append(policy.select(scores, valid, c).count)
        ks.append(policy.diagnostics()["select/k"])
        assert counts[-1] == policy.planned_count(valid, c)
    assert ks[0] == pytest.approx(0.1) and ks[-1] == pytest.approx(0.5)
    assert all(a <= b for a, b in zip(ks, ks[1:])) and all(a <= b for a, b in zip(counts, counts[1:]))
    assert counts[-1] > counts[0]
    mid = {"linear": 0.3, "cosine": 0.3, "step": 0.5}[shape]  # step: one jump at mid-training
    assert policy.fraction_at(ctx(20, 40)) == pytest.approx(mid)
    assert policy.fraction_at(ctx(10, 40)) == pytest.approx(
        {"linear": 0.2, "cosine": 0.1 + 0.4 * (1 - math.cos(math.pi / 4)) / 2, "step": 0.1}[shape]
    )


def test_bucket_selects_between_percentiles():
    policy = build_policy(cfg(policy="bucket", scorer="random", bucket_low=25.0, bucket_high=75.0), 10)
    for seed in SEEDS:
        _, valid, g = random_case(seed)
        scores = torch.rand(valid.shape, generator=g)  # distinct almost surely
        mask = policy.select(scores, valid, ctx()).mask(tuple(valid.shape))
        for i in range(valid.shape[0]):
            vals = scores[i][valid[i]]
            if vals.numel() == 0:
                assert not mask[i].any()
                continue
            lo, hi = torch.quantile(vals, 0.25), torch.quantile(vals, 0.75)
            assert torch.equal(mask[i], valid[i] & (scores[i] >= lo) & (scores[i] <= hi))
        assert mask.sum() == policy.planned_count(valid, ctx())


def _pos_rs_case():
    g = torch.Generator().manual_seed(0)
    valid = torch.rand(3, 40, generator=g) > 0.2
    d = (torch.rand(3, 40, generator=g).pow(2) * 3 + 0.01).masked_fill(~valid, 0.0)
    scores = (d * torch.exp(0.5 * torch.randn(3, 40, generator=g))).masked_fill(~valid, 0.0)
    return valid, d, scores


def test_pos_rs_is_unbiased_for_the_sum_over_valid_positions():
    valid, d, scores = _pos_rs_case()
    policy = build_policy(cfg(policy="pos_rs", scorer="random", select_fraction=0.2), 10)
    n, k = valid.sum(-1).double(), ceil_count(0.2, valid.sum(-1)).double()
    unbiased, naive = [], []
    for i in range(2000):
        sel = policy.select(scores, valid, ctx(i, 10, seed=i, b=3))
        assert sel.count == int(k.sum())
        drawn = d.reshape(-1)[sel.rows]
        unbiased.append(float((sel.weights * drawn).sum()))
        naive.append(float((drawn * (n / k)[sel.rows // 40]).sum()))  # ignores q: biased
    truth = float(d.sum())
    est, se = torch.tensor(unbiased).mean(), torch.tensor(unbiased).std() / math.sqrt(2000)
    assert abs(float(est) - truth) < 4 * float(se) and abs(float(est) - truth) / truth < 0.02
    assert abs(float(torch.tensor(naive).mean()) - truth) / truth > 0.2  # the test can tell bias apart
    assert policy.planned_count(valid, ctx()) == float(valid.sum())


def test_pos_rs_weights_are_exact_importance_weights():
    valid, d, scores = _pos_rs_case()
    policy = build_policy(cfg(policy="pos_rs", scorer="random", select_fraction=0.2, pos_rs_power=0.5), 10)
    sel = policy.select(scores, valid, ctx(b=3))
    w = scores.double().pow(0.5).masked_fill(~valid, 0)
    q = (w / w.sum(-1, keepdim=True)).reshape(-1)
    k = ceil_count(0.2, valid.sum(-1)).double()
    torch.testing.assert_close(
        sel.weights.double(), 1.0 / (k[sel.rows // 40] * q[sel.rows]), rtol=1e-6, atol=0
    )


def test_pos_rs_self_normalized_is_bounded():
    valid, d, scores = _pos_rs_case()
    policy = build_policy(
        cfg(policy="pos_rs", scorer="random", select_fraction=0.2, pos_rs_self_normalized=True), 10
    )
    for i in range(50):
        sel = policy.select(scores, valid, ctx(i, 10, seed=1000 + i, b=3))
        seq = sel.rows // 40
        for b in range(3):
            w, dd = sel.weights[seq == b].double(), d.reshape(-1)[sel.rows[seq == b]].double()
            n = float(valid[b].sum())
            assert float(w.sum()) == pytest.approx(n, rel=1e-5)
            est = float((w * dd).sum())
            assert n * float(d[b][valid[b]].min()) - 1e-4 <= est <= n * float(d[b][valid[b]].max()) + 1e-4


def test_pos_rs_rejects_negative_scores():
    policy = build_policy(cfg(policy="pos_rs", scorer="random"), 10)
    with pytest.raises(ValueError, match="nonnegative"):
        policy.select(-torch.ones(2, 4), torch.ones(2, 4, dtype=torch.bool), ctx())


# ---------------------------------------------------------------------------------------------------------
# LATF (AdaKD)
# ---------------------------------------------------------------------------------------------------------


def latf(total: int = 100, **kw):
    base = dict(policy="latf", scorer="hellinger", latf_warmup_fraction=0.05, latf_ema_decay=0.5)
    base.update(kw)
    return build_policy(cfg(**base), total_steps=total)


def test_latf_ratio_is_one_during_warmup_and_reference_set_after():
    policy = latf()
    for loss in [10.0, 1.0, 0.1, 5.0, 0.01]:  # 5 warm-up steps (0.05·100), wild losses
        policy.observe(kd_loss=loss)
        assert policy.ratio == 1.0 and policy.in_warmup
    policy.observe(kd_loss=0.01)  # step 6: reference set to the EMA, no change yet
    assert policy.ratio == 1.0 and not policy.in_warmup
    assert policy.reference == pytest.approx(policy.loss_ema)


def _ema(losses, beta):
    e = None
    for x in losses:
        e = x if e is None else beta * e + (1 - beta) * x
    return e


def test_latf_moves_down_when_ema_falls_and_up_when_it_rises():
    policy = latf(total=20, latf_warmup_fraction=0.1)  # warm-up: 2 steps
    losses = [1.0, 1.0, 1.0]
    for x in losses:
        policy.observe(kd_loss=x)
    ref = policy.reference
    assert ref == pytest.approx(1.0)
    policy.observe(kd_loss=1.02)  # EMA 1.01: inside the ±5% band → no change, reference kept
    losses.append(1.02)
    assert policy.ratio == 1.0 and policy.reference == ref
    policy.observe(kd_loss=0.5)  # EMA 0.755 < 0.95·ref → r·(1−δ), reference reset
    losses.append(0.5)
    assert policy.ratio == pytest.approx(0.95)
    assert policy.reference == pytest.approx(_ema(losses, 0.5))
    policy.observe(kd_loss=3.0)  # EMA rises above ref·1.05 → r·(1+δ)
    losses.append(3.0)
    assert policy.ratio == pytest.approx(0.95 * 1.05)
    assert policy.reference == pytest.approx(_ema(losses, 0.5))
    for _ in range(5):  # keeps rising: capped at 1
        losses.append(losses[-1] * 2)
        policy.observe(kd_loss=losses[-1])
    assert policy.ratio == 1.0
    diag = policy.diagnostics()
    assert diag["select/k"] == 1.0 and diag["select/loss_ema"] == pytest.approx(_ema(losses, 0.5))


def test_latf_floors_at_min_ratio_and_selects_top_r_of_the_batch():
    policy = latf(total=10, latf_warmup_fraction=0.0, latf_step=0.5)
    loss = 1.0
    for _ in range(30):
        policy.observe(kd_loss=loss)
        loss *= 0.5
    assert policy.ratio == pytest.approx(0.1)
    stats, valid, g = random_case(2)
    scores = torch.rand(valid.shape, generator=g)
    sel = policy.select(scores, valid, ctx())
    n = int(valid.sum())
    assert sel.count == math.ceil(0.1 * n) == policy.planned_count(valid, ctx())
    assert scores.reshape(-1)[sel.rows].min() >= scores[valid].topk(sel.count).values.min()


def test_latf_without_loss_changes_nothing():
    policy = latf(total=10, latf_warmup_fraction=0.0)
    policy.observe(kd_loss=None)
    policy.observe(kd_loss=float("nan"))
    assert math.isnan(policy.loss_ema) and policy.ratio == 1.0


# ---------------------------------------------------------------------------------------------------------
# Bandits
# ---------------------------------------------------------------------------------------------------------


def test_linucb_update_matches_hand_computation():
    method = cfg(
        policy="bandit",
        bandit_kind="linucb",
        bandit_ridge=2.0,
        bandit_alpha=0.7,
        bandit_min_fraction=0.2,
        bandit_max_fraction=0.6,
    )
    policy = build_policy(method, 10)
    stats, valid, _ = random_case(3)
    del stats["forward_kl"]  # KL feature falls back to 0
    c = ctx(features=stats)
    sel = policy.select(None, valid, c)
    t = valid.shape[1]
    pos = torch.arange(t, dtype=torch.float64) / (t - 1)
    x_all = torch.stack(
        [
            stats["teacher_entropy"].double(),
            -stats["student_logp_gold"].double(),
            torch.zeros(valid.shape, dtype=torch.float64),
            pos.expand(valid.shape),
        ],
        -1,
    ).reshape(-1, 4)
    x = x_all[sel.rows]  # (M, 4)
    before = torch.linspace(0.0, 9.0, sel.count, dtype=torch.float64)
    after = torch.full_like(before, 1.0)
    policy.observe(kl_before=before, kl_after=after)
    r = (before - after).clamp(-5, 5)
    a = 2.0 * torch.eye(4, dtype=torch.float64) + x.T @ x
    b = (r[:, None] * x).sum(0)
    torch.testing.assert_close(policy.A, a)
    torch.testing.assert_close(policy.b, b)
    assert float(r.max()) == 5.0  # the clip was exercised
    # UCB = θᵀx + α√(xᵀA⁻¹x)
    a_inv = torch.linalg.inv(a)
    theta = a_inv @ b
    want = x_all @ theta + 0.7 * torch.sqrt(torch.einsum("nd,de,ne->n", x_all, a_inv, x_all))
    torch.testing.assert_close(policy.ucb(x_all), want)
    assert policy.tokens_observed == sel.count


def test_linucb_budget_clamping_per_sequence():
    stats, valid, _ = random_case(5)
    n = valid.sum(-1)
    for threshold, fraction in [(-1e9, 0.6), (1e9, 0.2)]:
        method = cfg(
            policy="bandit",
            bandit_kind="linucb",
            bandit_min_fraction=0.2,
            bandit_max_fraction=0.6,
            bandit_threshold=threshold,
        )
        policy = build_policy(method, 10)
        mask = policy.select(None, valid, ctx(features=stats)).mask(tuple(valid.shape))
        want = torch.ceil(n.double() * fraction - 1e-6).long()
        assert mask.sum(-1).tolist() == want.tolist()
        u = policy.ucb(policy.features(valid, stats).reshape(-1, 4)).reshape(valid.shape)
        for i in range(valid.shape[0]):  # the top tokens by UCB within the budget
            if mask[i].any() and (valid[i] & ~mask[i]).any():
                assert u[i][mask[i]].min() >= u[i][valid[i] & ~mask[i]].max()


def test_linucb_rejects_mismatched_feedback():
    policy = build_policy(cfg(policy="bandit", bandit_kind="linucb"), 10)
    stats, valid, _ = random_case(1)
    sel = policy.select(None, valid, ctx(features=stats))
    with pytest.raises(ValueError, match="selected tokens"):
        policy.observe(kl_before=torch.zeros(sel.count + 1), kl_after=torch.zeros(sel.count + 1))


def test_exp3_weight_update_matches_hand_computation():
    budgets, gamma = [0.1, 0.3, 0.5], 0.2
    policy = build_policy(
        cfg(policy="bandit", bandit_kind="exp3", scorer="random", bandit_budgets=budgets, bandit_gamma=gamma),
        10,
    )
    log_w = torch.zeros(3, dtype=torch.float64)
    stats, valid, g = random_case(0)
    scores = torch.rand(valid.shape, generator=g)
    for step, (kb, ka) in enumerate([(2.0, 1.0), (1.0, 1.5), (4.0, 1.0)]):
        c = ctx(step)
        planned = policy.planned_count(valid, c)
        arm = policy.arm
        sel = policy.select(scores, valid, ctx(step, seed=99))  # another generator: the arm is kept
        assert policy.arm == arm and sel.count == planned
        assert planned == float(ceil_count(budgets[arm], valid.sum(-1)).sum())
        p = (1 - gamma) * torch.softmax(log_w, 0) + gamma / 3
        torch.testing.assert_close(policy.probabilities(), p)
        policy.observe(kl_before=torch.full((sel.count,), kb), kl_after=torch.full((sel.count,), ka))
        reward = 0.5 * (1 + max(-1.0, min(1.0, (kb - ka) / kb)))
        log_w[arm] += gamma * (reward / float(p[arm])) / 3
        assert policy.last_reward == pytest.approx(reward)
    torch.testing.assert_close(policy.probabilities(), (1 - gamma) * torch.softmax(log_w, 0) + gamma / 3)
    # review 128, S2: a KL that is not finite after the step (a student that diverged) earned the best reward,
    # max(-1, min(1, nan)) = 1; it is no reward, logged NaN, the weights as they were
    before = policy.probabilities().clone()
    policy.select(scores, valid, ctx(3))
    policy.observe(kl_before=torch.full((4,), 1.0), kl_after=torch.full((4,), math.nan))
    assert math.isnan(policy.last_reward)
    torch.testing.assert_close(policy.probabilities(), before)


# ---------------------------------------------------------------------------------------------------------
# Checkpoint / resume
# ---------------------------------------------------------------------------------------------------------


def _assert_plain(obj, where="state"):
    if isinstance(obj, dict):
        for k, v in obj.items():
            assert isinstance(k, str)
            _assert_plain(v, f"{where}.{k}")
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            _assert_plain(v, where)
    else:
        assert isinstance(obj, (torch.Tensor, int, float, bool, str)), f"{where} is {type(obj)}"


@pytest.mark.parametrize("name", list(POLICY_CONFIGS))
def test_resume_gives_identical_selections(name):
    method = cfg(**POLICY_CONFIGS[name])
    original = build_policy(method, total_steps=20)
    for step in range(4):
        run_step(original, method, step, [step, step + 7])
    state = original.state_dict()
    _assert_plain(state)
    buf = io.BytesIO()
    torch.save(state, buf)
    buf.seek(0)
    restored = build_policy(method, total_steps=20)
    restored.load_state_dict(torch.load(buf, weights_only=True))
    for step in range(4, 9):
        a = run_step(original, method, step, [step, step + 3])
        b = run_step(restored, method, step, [step, step + 3])
        for (ra, wa), (rb, wb) in zip(a, b):
            assert torch.equal(ra, rb) and torch.equal(wa, wb), (name, step)
    assert json.dumps(original.diagnostics(), default=float)  # plain floats for the logger


def test_loading_another_policys_state_fails_clearly():
    gls = build_policy(cfg(policy="gls", scorer="random"), 10)
    with pytest.raises(ValueError, match="method.policy"):
        build_policy(cfg(policy="latf", scorer="hellinger"), 10).load_state_dict(gls.state_dict())
    exp3 = build_policy(cfg(policy="bandit", bandit_kind="exp3", scorer="random"), 10)
    with pytest.raises(ValueError, match="bandit_kind"):
        build_policy(cfg(policy="bandit", bandit_kind="linucb"), 10).load_state_dict(exp3.state_dict())


def test_build_policy_errors_and_registry():
    assert set(policies.names()) == {
        "all",
        "topk",
        "gls",
        "curriculum",
        "coverage_schedule",
        "bucket",
        "pos_rs",
        "latf",
        "bandit",
    }
    assert all(policies.describe(n) for n in policies.names())
    with pytest.raises(ValueError, match="hellinger"):
        build_policy(cfg(policy="latf"), 10)
    with pytest.raises(ValueError, match="did you mean 'topk'"):
        build_policy(cfg(policy="topkk"), 10)
    with pytest.raises(ValueError, match="needs position scores"):
        build_policy(cfg(policy="topk", scorer="random"), 10).select(
            None, torch.ones(1, 2, dtype=torch.bool), ctx()
        )
    assert not build_policy(cfg(policy="all"), 10).needs_scores
    assert not build_policy(cfg(policy="bandit", bandit_kind="linucb"), 10).needs_scores


# ---------------------------------------------------------------------------------------------------------
# Under torch.distributed every rank decides alike (2 CPU processes, gloo)
# ---------------------------------------------------------------------------------------------------------


def _batch_scope_results(rank: int, world: int) -> dict[str, torch.Tensor]:
    """Every random or batch-scoped rule on this rank's rows of one 4-row micro-batch. Concatenated over the
    ranks (dim 0, rank order), each result must equal the one-process result on all 4 rows."""
    from ekd.losses.decoupled import top_fraction_mask
    from ekd.temperature import build_temperature

    zt, zs, labels = logits_batch(7, 4, 17)
    stats, valid = step_stats(zt, zs, labels, garbage=False), labels != -100
    b = 4 // world
    mine = slice(rank * b, (rank + 1) * b)  # this rank's rows of the global micro-batch
    stats, valid = {k: v[mine] for k, v in stats.items()}, valid[mine]
    offset = rank * b * valid.shape[1]  # flat index of this rank's first position in the global batch
    c = StepContext(3, 20, torch.Generator().manual_seed(11), V, stats, RowDraws(5, torch.arange(4)[mine]))
    out: dict[str, torch.Tensor] = {}
    for name, method in {
        "topk_batch": cfg(policy="topk", scorer="student_ce", select_fraction=0.3, select_per="batch"),
        "latf": cfg(policy="latf", scorer="hellinger"),
        "exp3_batch": cfg(policy="bandit", bandit_kind="exp3", scorer="student_ce", select_per="batch"),
        "random_pos": cfg(policy="topk", scorer="random", select_fraction=0.3),
        "pos_rs": cfg(policy="pos_rs", scorer="student_entropy", select_fraction=0.3),
    }.items():
        policy = build_policy(method, 20)
        if name == "latf":
            policy.ratio = 0.3  # past warm-up: the top 30% of the batch
        scores = compute_scores(method, stats, valid, c.rows, V)
        sel = policy.select(scores, valid, c)
        out[f"{name}/rows"], out[f"{name}/weights"] = sel.rows + offset, sel.weights
        out[f"{name}/scores"] = scores
    rows = out["topk_batch/rows"] - offset
    out["idts_tau"] = build_temperature(cfg(temperature="idts", kd_temperature=2.0), 20)(
        Selection(rows, torch.ones(rows.numel()), valid.numel()), stats, valid, c
    )
    hard = stats["teacher_entropy"].reshape(-1)[out["latf/rows"] - offset]  # (M_r,) EGAD / AT-KD style split
    out["top_fraction"] = top_fraction_mask(hard, 0.5)
    return out


def _dist_worker(rank: int, out_dir: str) -> None:
    world = torch.distributed.get_world_size()
    gls = build_policy(cfg(policy="gls", scorer="random", select_fraction=0.3, gls_queue_size=64), 10)
    bandit = build_policy(cfg(policy="bandit", bandit_kind="linucb"), 10)
    for step in range(3):
        stats, valid, g = random_case(10 * step + rank)  # different data on each rank
        gls.select(torch.rand(valid.shape, generator=g), valid, ctx(step))
        sel = bandit.select(None, valid, ctx(step, features=stats))
        before = torch.rand(sel.count, generator=g)
        bandit.observe(kl_before=before, kl_after=before * 0.5)
    torch.save(
        {
            "queue": gls.queue,
            "threshold": gls.threshold,
            "A": bandit.A,
            "b": bandit.b,
            "batch": _batch_scope_results(rank, world),
        },
        os.path.join(out_dir, f"rank{rank}.pt"),
    )


@pytest.mark.slow
def test_distributed_ranks_decide_as_one_process():
    """2 gloo ranks: GLS queue and bandit statistics are shared; every random draw and batch-scoped rule
    (top-k per batch, LATF, EXP3 per batch, random scores, pos_rs, the IDTS median, top-fraction splits)
    gives, concatenated over the ranks, exactly the one-process result on the whole micro-batch — from the same
    scores, which is what this test feeds both. (Scores a model computes on a rank's rows can differ in the last
    bits from one process's, and flip a near-tie: docs/methods.md §5.)"""
    with tempfile.TemporaryDirectory() as tmp:
        gloo_ranks(_dist_worker, tmp)
        r0, r1 = (torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in (0, 1))
    one = _batch_scope_results(0, 1)
    both = {k: torch.cat([r0["batch"][k], r1["batch"][k]]) for k in one}
    assert [k for k in one if both[k].shape != one[k].shape or not torch.equal(both[k], one[k])] == []
    for key in ("queue", "threshold", "A", "b"):
        assert torch.equal(r0[key], r1[key]), key
    assert one["top_fraction"].any() and not one["top_fraction"].all()  # the split is not trivial
    pushed = sum(int(random_case(10 * step + rank)[1].sum()) for step in range(3) for rank in range(2))
    assert r0["queue"].numel() == min(64, pushed)  # both ranks' scores went into one queue


# ---------------------------------------------------------------------------------------------------------
# Sample selection (SE-KD3X TopSmp)
# ---------------------------------------------------------------------------------------------------------


def test_select_samples_keeps_exactly_the_top_fraction():
    g = torch.Generator().manual_seed(0)
    for n in [1, 2, 7, 10, 30, 101]:
        for fraction in [0.05, 0.1, 0.2, 0.5, 1.0]:
            ids = torch.randperm(1000, generator=g)[:n]
            scores = torch.rand(n, generator=g)
            kept = select_samples(scores, ids, fraction)
            k = max(1, math.ceil(round(fraction * n, 9)))
            assert kept.numel() == min(n, k)
            assert torch.equal(kept, torch.sort(kept).values)
            chosen = torch.isin(ids, kept)
            if (~chosen).any():
                assert scores[chosen].min() >= scores[~chosen].max()
    ties = select_samples(torch.ones(5), torch.tensor([9, 3, 7, 1, 5]), 0.4)
    assert ties.tolist() == [1, 3]  # ties → smaller ids


def test_sample_selection_json_round_trip(tmp_path):
    ids = torch.tensor([4, 8, 15, 16, 23, 42])
    meta = {"scorer": "student_entropy", "fraction": 0.2, "num_samples": 30}
    path = save_sample_selection(tmp_path / "sel" / "sample_selection.json", ids, meta)
    payload = json.loads(path.read_text())  # plain JSON, not a pickle
    assert payload["sample_ids"] == ids.tolist()
    loaded, loaded_meta = load_sample_selection(path)
    assert torch.equal(loaded, ids) and loaded_meta == meta
    assert [p.name for p in path.parent.iterdir()] == ["sample_selection.json"]  # no temp files left
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"bad\.json is not valid JSON \(Expecting property name"):
        load_sample_selection(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text(json.dumps({"format": "x"}))
    with pytest.raises(ValueError, match="not an ekd sample selection"):
        load_sample_selection(tmp_path / "other.json")


def _tiny_lm(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=V,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
    )
    return LlamaForCausalLM(config).eval()


def _lm_batches():
    g = torch.Generator().manual_seed(0)
    out = []
    for j in range(3):
        input_ids = torch.randint(0, V, (2, 12), generator=g)
        labels = torch.cat([input_ids[:, 1:], torch.full((2, 1), -100)], 1)
        labels[torch.rand(2, 12, generator=g) < 0.2] = -100
        out.append(
            {
                "input_ids": input_ids,
                "labels": labels,
                "attention_mask": torch.ones(2, 12, dtype=torch.long),
                "sample_ids": torch.tensor([10 - 2 * j, 11 - 2 * j]),
            }
        )
    out[-1]["labels"][1] = -100  # a sample without valid tokens
    return out


def test_score_samples_student_entropy_and_teacher_scores():
    student, teacher = _tiny_lm(0), _tiny_lm(1)
    batches = _lm_batches()
    ids, scores = score_samples_by_id(student, batches, "student_entropy", V, "cpu", chunk_rows=5)
    assert ids.tolist() == sorted(int(i) for b in batches for i in b["sample_ids"])
    want = {}
    with torch.no_grad():
        for b in batches:
            lq = torch.log_softmax(student(input_ids=b["input_ids"]).logits.double(), -1)
            h = -(lq.exp() * lq).sum(-1)
            for r, sid in enumerate(b["sample_ids"].tolist()):
                v = b["labels"][r] != -100
                want[sid] = float(h[r][v].mean()) if v.any() else -math.inf
    torch.testing.assert_close(
        scores.double(),
        torch.tensor([want[i] for i in ids.tolist()], dtype=torch.float64),
        rtol=1e-5,
        atol=1e-5,
    )
    assert torch.equal(score_samples(student, batches, "student_entropy", V, "cpu"), scores)
    kept = select_samples(scores, ids, 0.5)
    assert kept.numel() == 3 and 7 not in kept.tolist()  # the empty sample (id 7) scores −inf
    # teacher-based scores: forward KL to itself is 0; CE ratio of a model to itself is ≈ 1
    _, self_kl = score_samples_by_id(student, batches, "forward_kl", V, "cpu", teacher=student)
    assert torch.all(self_kl[torch.isfinite(self_kl)].abs() < 1e-5)
    _, ratio = score_samples_by_id(student, batches, "ce_ratio", V, "cpu", teacher=student)
    torch.testing.assert_close(ratio[torch.isfinite(ratio)], torch.ones(5), rtol=1e-4, atol=1e-4)
    _, kl = score_samples_by_id(student, batches, "forward_kl", V, "cpu", teacher=teacher)
    assert torch.all(kl[torch.isfinite(kl)] > 0)
    with pytest.raises(ValueError, match="needs the teacher"):
        score_samples(student, batches, "forward_kl", V, "cpu")
    # random: deterministic and independent of batch order
    r1 = score_samples(student, batches, "random", V, "cpu", seed=3)
    r2 = score_samples(student, batches[::-1], "random", V, "cpu", seed=3)
    assert torch.equal(r1[torch.isfinite(r1)], r2[torch.isfinite(r2)])
    assert not student.training
    student.train()
    score_samples(student, batches[:1], "student_entropy", V, "cpu")
    assert student.training  # mode restored


def test_kl_feature_is_used_when_present():
    stats, valid, _ = random_case(2)
    x = build_policy(cfg(policy="bandit", bandit_kind="linucb"), 10).features(valid, stats)
    torch.testing.assert_close(x[..., 2], stats["forward_kl"].double().masked_fill(~valid, 0))
    assert F.relu(x[..., 3].max() - 1.0) == 0 and torch.all(x[~valid] == 0)


def test_latf_micro_batch_sums_give_the_lowest_score_given_kd():
    """select/threshold of LATF is the step's lowest selected score: each micro-batch reports its own minimum (NaN
    when it selected nothing, so an earlier micro-batch's value is not carried into a later one) and the trainer
    takes the minimum over micro-batches and ranks."""
    from ekd.train.step_metrics import combine

    policy = latf()
    policy.ratio = 0.5
    g = torch.Generator().manual_seed(3)
    lows, combined = [], None
    for _ in range(3):
        scores = torch.rand(2, 8, generator=g)
        valid = torch.ones(2, 8, dtype=torch.bool)
        sel = policy.select(scores, valid, ctx())
        lows.append(float(scores.flatten()[sel.rows].min()))
        ((key, value),) = policy.micro_batch_sums().items()
        assert key == "threshold_min" and value == lows[-1]
        combined = combine(key, combined, value)
    assert combined == min(lows)
    policy.select(torch.rand(2, 8, generator=g), torch.zeros(2, 8, dtype=torch.bool), ctx())
    assert math.isnan(policy.micro_batch_sums()["threshold_min"])
    assert "select/threshold" not in policy.diagnostics()  # the step's figure comes from the trainer's sums


@pytest.mark.parametrize("damage", ["binary", "directory", "not-a-list", "not-indices"])
def test_a_damaged_sample_selection_is_one_line(tmp_path, damage):
    """Try-out 42, F1: random bytes in sample_selection.json were a UnicodeDecodeError traceback, a directory in its
    place an IsADirectoryError after the samples were scored again."""
    from ekd.config import ConfigError
    from ekd.selection.sample_selection import FORMAT, VERSION, load_sample_selection

    path = tmp_path / "sample_selection.json"
    if damage == "binary":
        path.write_bytes(bytes(range(256)))
    elif damage == "directory":
        path.mkdir()
    else:
        ids = {"not-a-list": 3, "not-indices": ["a", None]}[damage]
        path.write_text(json.dumps({"format": FORMAT, "version": VERSION, "sample_ids": ids}))
    with pytest.raises(
        ConfigError, match="delete it: --resume takes the kept blocks from the checkpoint"
    ) as e:
        load_sample_selection(path)
    assert "\n" not in str(e.value)
