"""Sparse teacher targets (top-K tail modes, RS-KD) and the sparse forward-KL estimator (METHODS §2)."""

from __future__ import annotations

import math

import pytest
import torch

from ekd.losses.divergences import forward_kl
from ekd.losses.sparse import sparse_forward_kl
from ekd.losses.targets import SparseTarget
from ekd.teacher.cache.measure import zipf_logits
from ekd.teacher.targets import counter_uniforms, position_seeds, rs_target, topk_target


def dense_of(target: SparseTarget, vocab: int) -> torch.Tensor:
    """(M, K) sparse target → (M, V) dense values (duplicate ids add up)."""
    return torch.zeros(target.ids.shape[0], vocab, dtype=torch.float64).scatter_add_(
        1, target.ids, target.probs.double()
    )


def logit_grad(fn, student_logits: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    z = student_logits.clone().requires_grad_(True)
    loss = fn(z)
    loss.sum().backward()
    return loss.detach(), z.grad


def angle_deg(a: torch.Tensor, b: torch.Tensor) -> float:
    cos = (a.double() * b.double()).sum() / (a.double().norm() * b.double().norm())
    return math.degrees(math.acos(float(cos.clamp(-1, 1))))


# ---------------------------------------------------------------- top-K


@pytest.mark.parametrize("tail", ["renormalize", "ghost", "to_gold"])
@pytest.mark.parametrize("tau", [1.0, 2.0, "rows"])
def test_topk_with_k_equal_v_is_dense(tail, tau):
    m, v = 3 * 47, 123  # odd shapes
    g = torch.Generator().manual_seed(1)
    zt, zs = torch.randn(m, v, generator=g) * 3, torch.randn(m, v, generator=g) * 3
    tau = torch.rand(m, generator=g) + 0.5 if tau == "rows" else tau
    gold = torch.randint(0, v, (m,), generator=g)
    target = topk_target(zt, v, tail, gold=gold, tau=tau)
    loss_s, grad_s = logit_grad(lambda z: sparse_forward_kl(z, target, tau), zs)
    loss_d, grad_d = logit_grad(lambda z: forward_kl(z, zt, tau), zs)
    torch.testing.assert_close(loss_s, loss_d, atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(grad_s, grad_d, atol=1e-6, rtol=1e-4)


def test_topk_tail_modes_match_their_formulas():
    m, v, k = 64, 97, 5
    zt = zipf_logits(m, v, seed=2, exponents=(0.6, 1.5))
    zs = torch.randn(m, v, generator=torch.Generator().manual_seed(3))
    p = torch.softmax(zt.double(), -1)
    top_p, top_ids = p.topk(k, -1)
    gold = top_ids[:, 0].clone()
    gold[::2] = top_ids[::2, -1]  # gold inside the top-K...
    gold[1::4] = p[1::4].argmin(-1)  # ...and outside it
    tail = 1 - top_p.sum(-1)

    ren = topk_target(zt, k, "renormalize")
    torch.testing.assert_close(ren.ids, top_ids)
    torch.testing.assert_close(ren.probs.double(), top_p / top_p.sum(-1, keepdim=True), atol=1e-6, rtol=1e-5)
    assert ren.tail is None

    ghost = topk_target(zt, k, "ghost")
    torch.testing.assert_close(ghost.probs.double(), top_p, atol=1e-7, rtol=1e-5)
    torch.testing.assert_close(ghost.tail.double(), tail, atol=1e-7, rtol=1e-5)
    # ghost loss: Σ_K p log(p/q) + tail·log(tail / (1 − Σ_K q)), against float64
    q = torch.softmax(zs.double(), -1)
    q_k = q.gather(1, top_ids)
    ref = (top_p * (top_p / q_k).log()).sum(-1) + tail * (tail / (1 - q_k.sum(-1))).log()
    torch.testing.assert_close(sparse_forward_kl(zs, ghost).double(), ref, atol=1e-5, rtol=1e-5)

    to_gold = topk_target(zt, k, "to_gold", gold=gold)
    assert to_gold.ids.shape == (m, k + 1)
    dense = dense_of(to_gold, v)
    expected = torch.zeros_like(p).scatter_(1, top_ids, top_p)
    expected[torch.arange(m), gold] += tail
    torch.testing.assert_close(dense, expected, atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(dense.sum(-1), torch.ones(m, dtype=torch.float64), atol=1e-6, rtol=0)
    inside = (top_ids == gold[:, None]).any(-1)
    assert (to_gold.probs[inside, -1] == 0).all() and (to_gold.probs[~inside, -1] > 0).all()
    ref_gold = (expected * (expected.clamp_min(1e-300).log() - q.log())).sum(-1)
    torch.testing.assert_close(sparse_forward_kl(zs, to_gold).double(), ref_gold, atol=1e-5, rtol=1e-5)


def test_topk_errors():
    zt = torch.randn(4, 10)
    with pytest.raises(ValueError, match="gold"):
        topk_target(zt, 3, "to_gold")
    with pytest.raises(ValueError, match="gold id"):
        topk_target(zt, 3, "to_gold", gold=torch.tensor([0, 1, -100, 2]))
    with pytest.raises(ValueError, match="k must be"):
        topk_target(zt, 11)
    with pytest.raises(ValueError, match="tail"):
        topk_target(zt, 3, "drop")


def test_sparse_padding_slots_and_garbage_ids_change_nothing():
    m, v = 6, 50
    g = torch.Generator().manual_seed(4)
    zs, zt = torch.randn(m, v, generator=g), torch.randn(m, v, generator=g)
    for tail in ("renormalize", "ghost"):
        t = topk_target(zt, 7, tail)
        pad_ids = torch.randint(0, v, (m, 5), generator=g)
        pad_ids[:, 0] = t.ids[:, 0]  # a padding slot that duplicates a present id
        padded = SparseTarget(
            torch.cat([t.ids, pad_ids], 1), torch.cat([t.probs, torch.zeros(m, 5)], 1), t.tail
        )
        loss_a, grad_a = logit_grad(lambda z, t=t: sparse_forward_kl(z, t), zs)
        loss_b, grad_b = logit_grad(lambda z, p=padded: sparse_forward_kl(z, p), zs)
        torch.testing.assert_close(loss_a, loss_b)
        torch.testing.assert_close(grad_a, grad_b)


def test_sparse_rejects_mismatched_rows():
    with pytest.raises(ValueError, match="rows"):
        sparse_forward_kl(
            torch.randn(3, 10), SparseTarget(torch.zeros(4, 2, dtype=torch.long), torch.zeros(4, 2))
        )


# ---------------------------------------------------------------- RS-KD


def many_draws(logits: torch.Tensor, draws: int, n: int = 50, beta: float = 1.0, seed: int = 0):
    """RS targets for each of M rows, ``draws`` times: rows repeated, each copy a different sample id."""
    m = logits.shape[0]
    rows = logits.repeat(draws, 1)  # (D·M, V): copy d of row i at d·M + i
    sample = torch.arange(draws).repeat_interleave(m)
    seeds = position_seeds(seed, sample, torch.arange(m).repeat(draws))
    return rs_target(rows, n, seeds=seeds, proposal_power=beta)


def test_rs_target_structure():
    zt = zipf_logits(40, 300, seed=5)
    drawn = rs_target(zt, 50, seeds=position_seeds(0, torch.zeros(40, dtype=torch.long), torch.arange(40)))
    ids, counts, probs = drawn.target.ids, drawn.counts, drawn.target.probs
    assert (counts.sum(-1) == 50).all()
    torch.testing.assert_close(probs, counts.float() / 50)
    present = counts > 0
    assert (probs[~present] == 0).all()
    for i in range(40):  # unique, sorted ids per row
        row = ids[i][present[i]]
        assert (row[1:] > row[:-1]).all()
    assert ids.shape[1] == int(drawn.num_unique.max())
    assert 5 < drawn.num_unique.float().mean() < 20


def test_rs_never_draws_zero_probability_tokens():
    zt = torch.randn(30, 64)
    zt[:, 10:] = float("-inf")
    drawn = rs_target(zt, 63, seeds=position_seeds(3, torch.zeros(30, dtype=torch.long), torch.arange(30)))
    assert (drawn.target.ids[drawn.counts > 0] < 10).all()


@pytest.mark.parametrize("beta", [1.0, 0.5])
def test_rs_targets_average_to_p(beta):
    m, v = 8, 200
    zt = zipf_logits(m, v, seed=6)
    p = torch.softmax(zt.double(), -1)
    errors = []
    for draws in (16, 128, 2048):
        drawn = many_draws(zt, draws, beta=beta)
        mean = dense_of(drawn.target, v).view(draws, m, v).mean(0)  # (M, V)
        errors.append(float((mean - p).abs().sum(-1).mean()))  # per-position L1
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < errors[0] / 6  # ≈ 1/√draws: 128× more draws → ≈ 11× smaller
    if beta != 1.0:  # importance-weighted targets are unnormalized
        assert not torch.allclose(drawn.target.probs.sum(-1), torch.ones(m * 2048))


def test_rs_gradient_is_unbiased_and_topk_is_not():
    """Mean RS gradient ḡ over R draws vs the full-KD gradient g = q − p.

    Statistic: ‖ḡ − g‖² / (tr Σ̂ / R), with Σ̂ the per-draw covariance. Its expectation is 1 when E[ĝ] = g;
    top-12 (renormalized) has a fixed bias that makes it grow like R.
    """
    m, v, draws = 16, 300, 1000
    zt = zipf_logits(m, v, seed=7)
    zs = zt + 0.5 * torch.randn(m, v, generator=torch.Generator().manual_seed(8))
    _, g_full = logit_grad(lambda z: forward_kl(z, zt), zs)
    drawn = many_draws(zt, draws)
    _, g = logit_grad(lambda z: sparse_forward_kl(z, drawn.target), zs.repeat(draws, 1))
    g = g.double().view(draws, m, v)
    mean = g.mean(0)
    trace = g.var(0).sum()
    stat_rs = float(((mean - g_full) ** 2).sum() / (trace / draws))
    _, g_top = logit_grad(lambda z: sparse_forward_kl(z, topk_target(zt, 12)), zs)
    stat_top = float(((g_top.double() - g_full) ** 2).sum() / (trace / draws))
    print(f"\nunbiasedness statistic (≈1 if unbiased): RS {stat_rs:.2f}, top-12 renormalized {stat_top:.0f}")
    assert stat_rs < 2.0
    assert stat_top > 50.0


@pytest.mark.parametrize("beta", [1.0, 0.6])
def test_rs_cross_entropy_form_is_unbiased_in_value(beta):
    """With the teacher entropy, −Σ t̂ log q − H(p) averages to forward KL(p‖q); same gradient as the KL form."""
    m, v, draws = 8, 200, 2000
    zt = zipf_logits(m, v, seed=9)
    zs = torch.randn(m, v, generator=torch.Generator().manual_seed(10))
    log_p = torch.log_softmax(zt, -1)
    entropy = -(log_p.exp() * log_p).sum(-1)
    drawn = many_draws(zt, draws, beta=beta)
    zs_rep = zs.repeat(draws, 1)
    loss_ce, grad_ce = logit_grad(
        lambda z: sparse_forward_kl(z, drawn.target, teacher_entropy=entropy.repeat(draws)), zs_rep
    )
    _, grad_kl = logit_grad(lambda z: sparse_forward_kl(z, drawn.target), zs_rep)
    torch.testing.assert_close(grad_ce, grad_kl)
    per_draw = loss_ce.double().view(draws, m)
    err = (per_draw.mean(0) - forward_kl(zs, zt).double()).abs()
    assert (err < 4 * per_draw.std(0) / math.sqrt(draws) + 1e-4).all()


def test_rs_vs_topk_gradient_angle_table3():
    """RS-KD Table 3 on synthetic peaked logits: angle to the full-KD gradient w.r.t. student logits."""
    m, v = 64, 2048
    zt = zipf_logits(m, v, seed=11)
    zs = zt + 0.25 * torch.randn(
        m, v, generator=torch.Generator().manual_seed(12)
    )  # a student near its teacher
    _, g_full = logit_grad(lambda z: forward_kl(z, zt), zs)
    q = torch.softmax(zs, -1)
    angles, unique = {}, 0.0
    acc = torch.zeros_like(q, dtype=torch.float64)
    done = 0
    for block in (1, 24, 75, 75, 75, 75, 75):  # draws, in blocks (memory); angles after 1, 25 and 400 draws
        drawn = many_draws(zt, block, seed=done + 1)
        unique += float(drawn.num_unique.float().sum()) / m
        t = drawn.target
        q_rep = q.repeat(block, 1)
        g_all = q_rep * t.probs.sum(-1, keepdim=True) - torch.zeros_like(q_rep).scatter_add_(
            1, t.ids, t.probs
        )
        acc += g_all.double().view(block, m, v).sum(0)
        done += block
        angles[done] = angle_deg(acc / done, g_full)
    g_last, t = g_all[-m:], t.rows(torch.arange((block - 1) * m, block * m))
    _, g_one = logit_grad(lambda z, t=t: sparse_forward_kl(z, t), zs)
    torch.testing.assert_close(
        g_one, g_last, atol=1e-6, rtol=1e-4
    )  # the closed form used above is the gradient
    top = {}
    for tail in ("renormalize", "ghost"):
        _, g = logit_grad(lambda z, tail=tail: sparse_forward_kl(z, topk_target(zt, 12, tail)), zs)
        top[tail] = angle_deg(g, g_full)
    print(
        f"\ngradient angle to full KD (V={v}, {unique / 400:.1f} unique ids at N=50): RS 1 draw {angles[1]:.1f}°, "
        f"25 draws {angles[25]:.1f}°, 400 draws {angles[400]:.1f}°; top-12 renormalized {top['renormalize']:.1f}°, "
        f"top-12 ghost {top['ghost']:.1f}°"
    )
    assert 10 < unique / 400 < 16
    assert angles[400] < 6.0 and angles[400] < angles[25] < angles[1]
    assert top["renormalize"] > 30.0


# ---------------------------------------------------------------- determinism


def test_rs_draws_do_not_depend_on_batch_composition():
    b, t, v = 4, 16, 500
    logits = zipf_logits(b * t, v, seed=13).view(b, t, v)
    sample_ids = torch.tensor([5, 9, 2, 11])
    seeds = position_seeds(7, sample_ids, torch.arange(t).expand(b, t))  # (B, T)
    full = rs_target(logits.view(-1, v), 50, seeds=seeds.view(-1), chunk_rows=7)

    def row_draws(res, i):
        keep = res.counts[i] > 0
        return res.target.ids[i][keep].tolist(), res.counts[i][keep].tolist()

    # one sample alone, a shuffled subset of positions from two samples, different chunking
    alone = rs_target(logits[2], 50, seeds=position_seeds(7, sample_ids[2:3], torch.arange(t)[None]).view(-1))
    for j in range(t):
        assert row_draws(alone, j) == row_draws(full, 2 * t + j)
    pick = torch.tensor([3 * t + 5, 0, 17, 2 * t + 1, 3 * t + 15])
    flat_sample = sample_ids.repeat_interleave(t)[pick]
    subset = rs_target(
        logits.view(-1, v)[pick], 50, seeds=position_seeds(7, flat_sample, pick % t), chunk_rows=2
    )
    for j, row in enumerate(pick.tolist()):
        assert row_draws(subset, j) == row_draws(full, row)
    # another seed or another sample id gives other draws
    other = rs_target(logits[2], 50, seeds=position_seeds(8, sample_ids[2:3], torch.arange(t)[None]).view(-1))
    assert any(row_draws(other, j) != row_draws(alone, j) for j in range(t))


def test_position_seeds_are_a_fixed_hash():
    """The hash is part of the cache format: pin its values."""
    s = position_seeds(0, torch.tensor([0, 7]), torch.tensor([[0, 1], [2, 3]]))
    assert s.tolist() == [
        [2468158665661929940, 1753963119009468742],
        [-2797549001178486553, 7192770249634639121],
    ]
    assert position_seeds(12345, torch.tensor([2**40]), torch.tensor([[1023]])).tolist() == [
        [-3397160284005399474]
    ]
    u = counter_uniforms(s[0, :1], 3)
    assert u.dtype == torch.float64 and u.tolist() == [
        [0.8339573262656893, 0.642092118779768, 0.33403803913593666]
    ]
    flat = position_seeds(0, torch.tensor([0, 0, 7, 7]), torch.tensor([0, 1, 2, 3]))
    assert flat.tolist() == s.view(-1).tolist()
    grid = position_seeds(3, torch.arange(64), torch.arange(256).expand(64, 256))
    assert grid.unique().numel() == 64 * 256
    uni = counter_uniforms(grid.view(-1)[:200], 50)
    assert float(uni.min()) >= 0 and float(uni.max()) < 1 and abs(float(uni.mean()) - 0.5) < 0.01
    with pytest.raises(ValueError, match="does not match"):
        position_seeds(0, torch.arange(3), torch.zeros(4, 5, dtype=torch.long))
