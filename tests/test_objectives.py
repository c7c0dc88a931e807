"""Decoupled (DKD / AT-KD), feature-branch and self-distillation objectives against float64 references
and identities (METHODS §6–7)."""

from __future__ import annotations

import math

import pytest
import torch

from ekd.losses.decoupled import atkd_hard_mask, atkd_loss_sum, atkd_terms, dkd, nckd, tckd
from ekd.losses.divergences import forward_kl
from ekd.losses.features import FeatureProjection, feature_loss_sum, hard_token_mask
from ekd.losses.self_distill import (
    EmaTeacher,
    ema_self_distill_sum,
    uncertainty_loss_sum,
    uncertainty_split,
)

M, V = 47, 123


def make_inputs(seed: int = 0, gold_at: str = "random", scale: float = 3.0):
    g = torch.Generator().manual_seed(seed)
    student = torch.randn(M, V, generator=g) * scale
    teacher = torch.randn(M, V, generator=g) * scale
    if gold_at == "argmax":
        gold = teacher.argmax(-1)
    elif gold_at == "argmin":
        gold = teacher.argmin(-1)
    else:
        gold = torch.randint(0, V, (M,), generator=g)
    tau = 0.5 + 2.5 * torch.rand(M, generator=g)  # (M,) τ ≠ 1, different per row
    return student, teacher, gold, tau


# ------------------------------------------------------------------ float64 references (naive, probability space)


def ref_probs(logits, tau):
    return torch.softmax(logits.double() / torch.as_tensor(tau, dtype=torch.float64).reshape(-1, 1), -1)


def ref_kl(p, q):
    terms = torch.where(p > 0, p * (p.log() - q.log()), torch.zeros_like(p))
    return terms.sum(-1)


def ref_split(probs, gold):
    """(p_y (M,), 1 − p_y (M,) summed over the non-gold entries, p̂ (M, V−1) with the gold column removed)."""
    onehot = torch.nn.functional.one_hot(gold, probs.shape[-1]).bool()
    p_y = probs[onehot]  # (M,)
    rest = probs[~onehot].reshape(probs.shape[0], -1)  # (M, V−1) gold column dropped
    mass = rest.sum(-1)  # (M,)
    return p_y, mass, rest / mass[:, None]


def ref_tckd(s, t, gold, tau):
    p_y, p_rest, _ = ref_split(ref_probs(t, tau), gold)
    q_y, q_rest, _ = ref_split(ref_probs(s, tau), gold)
    return ref_kl(torch.stack([p_y, p_rest], -1), torch.stack([q_y, q_rest], -1))


def ref_nckd(s, t, gold, tau):
    _, _, p_hat = ref_split(ref_probs(t, tau), gold)
    _, _, q_hat = ref_split(ref_probs(s, tau), gold)
    return ref_kl(p_hat, q_hat)


def check_against_reference(fn, ref, s, t, extra_args, rtol=1e-4, atol=1e-5):
    """Values and gradients w.r.t. the student logits (upstream weights random) match the reference."""
    upstream = torch.rand(s.shape[0], generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    s32 = s.clone().float().requires_grad_(True)
    out = fn(s32, t.float(), *extra_args)
    assert out.shape == (s.shape[0],) and out.dtype == torch.float32
    (out.double() * upstream).sum().backward()
    s64 = s.clone().double().requires_grad_(True)
    expected = ref(s64, t.double(), *extra_args)
    (expected * upstream).sum().backward()
    torch.testing.assert_close(out.double(), expected.detach(), rtol=rtol, atol=atol)
    torch.testing.assert_close(s32.grad.double(), s64.grad, rtol=rtol, atol=atol)
    return out


# ------------------------------------------------------------------ TCKD / NCKD / DKD


@pytest.mark.parametrize("gold_at", ["random", "argmax", "argmin"])
def test_tckd_nckd_dkd_match_reference(gold_at):
    s, t, gold, tau = make_inputs(1, gold_at)
    check_against_reference(tckd, ref_tckd, s, t, (gold, tau))
    check_against_reference(nckd, ref_nckd, s, t, (gold, tau))
    check_against_reference(
        lambda a, b, g, tt: dkd(a, b, g, tt, beta=8.0),
        lambda a, b, g, tt: ref_tckd(a, b, g, tt) + 8.0 * ref_nckd(a, b, g, tt),
        s,
        t,
        (gold, tau),
    )


def test_scalar_tau_matches_per_row_tau():
    s, t, gold, _ = make_inputs(2)
    torch.testing.assert_close(dkd(s, t, gold, 1.7), dkd(s, t, gold, torch.full((M,), 1.7)))


@pytest.mark.parametrize("gold_at", ["random", "argmax"])
def test_dkd_decomposition_identity(gold_at):
    """Zhao et al. 2022 eq. 4: KL(p‖q) = TCKD + (1 − p_y)·NCKD with p_y the teacher's gold probability."""
    s, t, gold, tau = make_inputs(3, gold_at)
    p_y = torch.softmax(t / tau[:, None], -1).gather(-1, gold[:, None]).squeeze(-1)
    lhs = tckd(s, t, gold, tau) + (1.0 - p_y) * nckd(s, t, gold, tau)
    torch.testing.assert_close(lhs, forward_kl(s, t, tau), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(dkd(s, t, gold, tau, beta=1.0), tckd(s, t, gold, tau) + nckd(s, t, gold, tau))


def test_nckd_zero_when_non_gold_distributions_equal():
    _, t, gold, tau = make_inputs(4)
    s = t.clone()
    s[torch.arange(M), gold] += 2.5  # only the gold logit differs → same p̂, different p_y
    assert tckd(s, t, gold, tau).sum() > 0.1
    torch.testing.assert_close(nckd(s, t, gold, tau), torch.zeros(M), rtol=0, atol=1e-5)


def test_tckd_zero_when_gold_probabilities_equal():
    s, t, gold, tau = make_inputs(5)
    s, t = s.double(), t.double()
    # set the student's gold logit so that q_y = p_y at τ while the non-gold logits stay different
    p_y = ref_probs(t, tau).gather(-1, gold[:, None]).squeeze(-1)
    rest = s / tau[:, None].double()
    rest[torch.arange(M), gold] = -math.inf
    lse_rest = torch.logsumexp(rest, -1)  # (M,)
    s[torch.arange(M), gold] = tau.double() * (torch.log(p_y) - torch.log1p(-p_y) + lse_rest)
    torch.testing.assert_close(tckd(s.float(), t.float(), gold, tau), torch.zeros(M), rtol=0, atol=2e-5)
    assert (nckd(s.float(), t.float(), gold, tau) > 1e-2).all()


def test_identical_logits_give_zero():
    _, t, gold, tau = make_inputs(6)
    for fn in (tckd, nckd, dkd):
        torch.testing.assert_close(fn(t, t, gold, tau), torch.zeros(M), rtol=0, atol=1e-6)


def test_masked_vocab_entries_equal_removing_them():
    """−inf columns (masked vocabulary) in both models: finite values and grads, equal to dropping them."""
    s, t, gold, tau = make_inputs(7)
    keep = torch.ones(V, dtype=torch.bool)
    keep[torch.arange(3, V, 10)] = False
    gold = torch.nonzero(keep).squeeze(-1)[torch.randint(0, int(keep.sum()), (M,))]
    s_m, t_m = s.masked_fill(~keep, -math.inf), t.masked_fill(~keep, -math.inf)
    gold_small = torch.cumsum(keep.long(), 0)[gold] - 1  # index among kept columns
    for fn in (tckd, nckd, dkd):
        s_req = s_m.clone().requires_grad_(True)
        out = fn(s_req, t_m, gold, tau)
        out.sum().backward()
        assert torch.isfinite(out).all() and torch.isfinite(s_req.grad).all()
        assert (s_req.grad[:, ~keep] == 0).all()
        torch.testing.assert_close(out, fn(s[:, keep], t[:, keep], gold_small, tau), rtol=1e-5, atol=1e-6)
    u = atkd_terms(s_m, t_m, gold, tau)[2]
    assert torch.isfinite(u).all()
    s_req = s_m.clone().requires_grad_(True)
    atkd_loss_sum(s_req, t_m, gold, tau, atkd_hard_mask(u)).backward()
    assert torch.isfinite(s_req.grad).all()


def test_rows_without_non_gold_mass_are_finite():
    """Only the gold entry finite (p_y = q_y = 1): TCKD = NCKD = 0, finite gradients."""
    s, t, gold, tau = make_inputs(8)
    dead = torch.full((V,), -math.inf)
    for x in (s, t):
        x[0] = dead
        x[0, gold[0]] = 1.0
    s = s.requires_grad_(True)
    t_, n_ = tckd(s, t, gold, tau), nckd(s, t, gold, tau)
    assert t_[0] == 0 and n_[0] == 0 and torch.isfinite(t_).all() and torch.isfinite(n_).all()
    (t_ + n_).sum().backward()
    assert torch.isfinite(s.grad).all()


def test_a_teacher_without_non_gold_mass_has_zero_nckd():
    """Only the teacher's gold logit finite: NCKD is 0 by definition (its DKD weight 1 − p_y is 0), also though
    ``log_probs_at`` floors the −inf logits to a finite value (they were once taken for a uniform p̂)."""
    s, t, gold, tau = make_inputs(8)
    t[0] = -math.inf
    t[0, gold[0]] = 1.0
    assert float(nckd(s, t, gold, tau)[0]) == 0.0
    torch.testing.assert_close(tckd(s, t, gold, tau)[0].double(), ref_tckd(s, t, gold, tau)[0])


def test_near_certain_gold_is_accurate():
    """p_y, q_y → 1 (1 − p_y ≈ 1e-11, far below fp32 resolution of p_y): TCKD ≈ 1e-9 still matches float64."""
    s, t, gold, _ = make_inputs(9)
    t[torch.arange(M), gold] = t.max(-1).values + 25.0
    s[torch.arange(M), gold] = s.max(-1).values + 20.0
    got = tckd(s, t, gold, 1.0)
    torch.testing.assert_close(got.double(), ref_tckd(s, t, gold, 1.0), rtol=1e-4, atol=0)
    assert (got > 0).all()


# ------------------------------------------------------------------ AT-KD


@pytest.mark.parametrize("m", [0, 1, 2, 7, 47, 48])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.3, 0.5, 1.0])
def test_top_fraction_counts_exact(m, fraction):
    u = torch.rand(m, generator=torch.Generator().manual_seed(m))
    expected = math.ceil(round(fraction * m, 9))
    for fn in (atkd_hard_mask, hard_token_mask, uncertainty_split):
        mask = fn(u, fraction)
        assert mask.shape == (m,) and mask.dtype == torch.bool
        assert int(mask.sum()) == expected
        if 0 < expected < m:
            assert u[mask].min() >= u[~mask].max()


def test_top_fraction_ties_are_deterministic():
    u = torch.tensor([0.5, 0.9, 0.5, 0.5, 0.9, 0.1])
    mask = atkd_hard_mask(u, 0.5)  # 3 of 6: both 0.9s, then the first 0.5
    assert mask.tolist() == [True, True, False, False, True, False]
    assert atkd_hard_mask(torch.ones(5), 0.4).tolist() == [True, True, False, False, False]
    with pytest.raises(ValueError):
        atkd_hard_mask(u, 1.5)


def test_atkd_terms_and_loss_equal_hand_written_sum():
    s, t, gold, tau = make_inputs(10)
    tc, nc, u = atkd_terms(s, t, gold, tau)
    torch.testing.assert_close(tc, tckd(s, t, gold, tau))
    torch.testing.assert_close(nc, nckd(s, t, gold, tau))
    p1 = ref_probs(t, 1.0)
    torch.testing.assert_close(
        u.double(), 1.0 - p1.gather(-1, gold[:, None]).squeeze(-1), rtol=1e-5, atol=1e-6
    )
    assert not u.requires_grad
    hard = atkd_hard_mask(u, 0.5)
    assert int(hard.sum()) == 24 and u[hard].min() >= u[~hard].max()
    lam = 0.2
    s_req = s.clone().requires_grad_(True)
    got = atkd_loss_sum(s_req, t, gold, tau, hard, lam)
    got.backward()
    s64 = s.clone().double().requires_grad_(True)
    tc64, nc64 = ref_tckd(s64, t, gold, tau), ref_nckd(s64, t, gold, tau)
    expected = sum((1 - lam) * (tc64[i] + nc64[i]) if hard[i] else lam * nc64[i] for i in range(M))
    expected.backward()
    torch.testing.assert_close(got.double(), expected.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_req.grad.double(), s64.grad, rtol=1e-4, atol=1e-5)
    w = torch.rand(M)
    weighted = atkd_loss_sum(s, t, gold, tau, hard, lam, weights=w)
    by_hand = (w * torch.where(hard, (1 - lam) * (tc + nc), lam * nc)).sum()
    torch.testing.assert_close(weighted, by_hand)
    # λ = 0.5 with every token hard is ½·Σ(TCKD + NCKD)
    all_hard = torch.ones(M, dtype=torch.bool)
    torch.testing.assert_close(atkd_loss_sum(s, t, gold, tau, all_hard, 0.5), 0.5 * (tc + nc).sum())


# ------------------------------------------------------------------ feature branch


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_loss_matches_reference_and_gets_gradients(kind):
    g = torch.Generator().manual_seed(11)
    H, Ds, Dt = 13, 24, 40
    hs = torch.randn(H, Ds, generator=g).requires_grad_(True)
    ht = torch.randn(H, Dt, generator=g)
    proj = FeatureProjection(Ds, Dt)
    with torch.no_grad():
        proj.linear.bias.normal_(generator=g)
    got = feature_loss_sum(hs, ht, proj, kind)
    got.backward()
    assert proj.linear.weight.grad is not None and proj.linear.weight.grad.abs().sum() > 0
    assert proj.linear.bias.grad is not None and hs.grad is not None
    # float64 reference
    w64 = proj.linear.weight.detach().double().requires_grad_(True)
    b64 = proj.linear.bias.detach().double()
    hs64 = hs.detach().double().requires_grad_(True)
    y = hs64 @ w64.T + b64
    if kind == "mse":
        ref = ((y - ht.double()) ** 2).mean(-1).sum()
    else:
        cos = (y * ht.double()).sum(-1) / (y.norm(dim=-1) * ht.double().norm(dim=-1))
        ref = (1 - cos).sum()
    ref.backward()
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(hs.grad.double(), hs64.grad, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(proj.linear.weight.grad.double(), w64.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("kind", ["mse", "cosine"])
def test_feature_loss_zero_for_perfect_projection_and_teacher_detached(kind):
    hs = torch.randn(9, 16)
    proj = FeatureProjection(16, 32)
    ht = proj(hs).detach().requires_grad_(True)
    loss = feature_loss_sum(hs, ht, proj, kind)
    assert abs(loss.item()) < 1e-5
    loss.backward()
    assert ht.grad is None  # teacher side detached


def test_feature_projection_init_is_well_conditioned_and_empty_rows_are_zero():
    proj = FeatureProjection(24, 40)
    sv = torch.linalg.svdvals(proj.linear.weight.detach())
    torch.testing.assert_close(sv, torch.ones_like(sv), rtol=0, atol=1e-5)
    assert (proj.linear.bias == 0).all()
    hs = torch.zeros(0, 24, requires_grad=True)
    loss = feature_loss_sum(hs, torch.zeros(0, 40), proj, "mse")
    loss.backward()
    assert loss.item() == 0.0 and torch.isfinite(proj.linear.weight.grad).all()
    with pytest.raises(ValueError):
        feature_loss_sum(hs, torch.zeros(0, 40), proj, "l1")


def test_hard_token_mask_picks_highest_entropy():
    h = torch.tensor([0.1, 2.0, 0.5, 3.0, 1.0])
    assert hard_token_mask(h, 0.4).tolist() == [False, True, False, True, False]
    assert not hard_token_mask(h, 0.0).any() and hard_token_mask(h, 1.0).all()


# ------------------------------------------------------------------ EMA self-distillation


def tiny_llama(seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=61,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=32,
        tie_word_embeddings=True,
    )
    return LlamaForCausalLM(cfg)


def perturb(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=g))


def test_ema_update_math():
    student = tiny_llama(0)
    ema = EmaTeacher(student)
    assert all(not p.requires_grad for p in ema.module.parameters()) and not ema.module.training
    before = {k: v.clone() for k, v in ema.module.named_parameters()}
    perturb(student, 1)
    ema.update(student, 1.0)  # unchanged
    for k, v in ema.module.named_parameters():
        assert torch.equal(v, before[k])
    ema.update(student, 0.7)
    s_params = dict(student.named_parameters())
    for k, v in ema.module.named_parameters():
        torch.testing.assert_close(v, 0.7 * before[k] + 0.3 * s_params[k])
    ema.update(student, 0.0)  # exact copy
    for k, v in ema.module.named_parameters():
        assert torch.equal(v, s_params[k])
    with pytest.raises(ValueError):
        ema.update(student, 1.5)


def test_ema_tied_weights_stay_tied_and_finite_and_state_round_trips():
    student = tiny_llama(0)
    ema = EmaTeacher(student)
    m = ema.module
    assert m.lm_head.weight is m.model.embed_tokens.weight
    emb0 = m.model.embed_tokens.weight.clone()
    perturb(student, 2)
    ema.update(student, 0.9)
    assert m.lm_head.weight is m.model.embed_tokens.weight
    # updated once, not twice through the two names
    torch.testing.assert_close(
        m.model.embed_tokens.weight, 0.9 * emb0 + 0.1 * student.model.embed_tokens.weight
    )
    assert all(torch.isfinite(p).all() for p in m.parameters())
    with torch.no_grad():
        logits = m(input_ids=torch.randint(0, 61, (2, 7))).logits
    assert torch.isfinite(logits).all()
    # buffers are copied from the student
    for name, buf in student.named_buffers():
        if buf.is_floating_point():
            buf.mul_(1.5)
            ema.update(student, 0.9)
            assert torch.equal(dict(m.named_buffers())[name], buf)
            break
    # state round trip into a fresh EMA of a different student
    state = ema.state_dict()
    assert all(isinstance(v, torch.Tensor) and not v.requires_grad for v in state.values())
    other = EmaTeacher(tiny_llama(5))
    other.load_state_dict(state)
    for (k, a), (_, b) in zip(m.named_parameters(), other.module.named_parameters()):
        assert torch.equal(a, b), k
    assert other.module.lm_head.weight is other.module.model.embed_tokens.weight


def test_ema_self_distill_sum_matches_reference():
    s, t, _, tau = make_inputs(12)
    w = torch.rand(M, generator=torch.Generator().manual_seed(3))
    s_req = s.clone().requires_grad_(True)
    ema_logits = t.clone().requires_grad_(True)
    got = ema_self_distill_sum(s_req, ema_logits, tau, w)
    got.backward()
    assert ema_logits.grad is None
    s64 = s.clone().double().requires_grad_(True)
    ref = (w.double() * ref_kl(ref_probs(t, tau), ref_probs(s64, tau))).sum()
    ref.backward()
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_req.grad.double(), s64.grad, rtol=1e-4, atol=1e-5)
    assert float(ema_self_distill_sum(t, t, tau, w)) == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------ uncertainty-aware (Liu et al. 2025a)


def test_uncertainty_split_and_loss_match_reference():
    s, init, gold, _ = make_inputs(13)
    nll = -torch.log_softmax(s, -1).gather(-1, gold[:, None]).squeeze(-1)
    mle = uncertainty_split(nll, 0.3)
    assert int(mle.sum()) == math.ceil(0.3 * M) and nll[mle].min() >= nll[~mle].max()
    lam = 0.7
    s_req = s.clone().requires_grad_(True)
    got = uncertainty_loss_sum(s_req, init, gold, mle, lam)
    got.backward()
    s64 = s.clone().double().requires_grad_(True)
    q = ref_probs(s64, 1.0)
    ce = -q.gather(-1, gold[:, None]).squeeze(-1).log()
    kl = ref_kl(ref_probs(init, 1.0), q)
    ref = ce[mle].sum() + lam * kl[~mle].sum()
    ref.backward()
    torch.testing.assert_close(got.double(), ref.detach(), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s_req.grad.double(), s64.grad, rtol=1e-4, atol=1e-5)
    # ρ = 1 is plain summed cross-entropy; ρ = 0 is pure self-distillation
    all_mle = uncertainty_split(nll, 1.0)
    torch.testing.assert_close(
        uncertainty_loss_sum(s, init, gold, all_mle, lam),
        torch.nn.functional.cross_entropy(s, gold, reduction="sum"),
    )
    none = uncertainty_split(nll, 0.0)
    torch.testing.assert_close(
        uncertainty_loss_sum(s, init, gold, none, lam), lam * forward_kl(s, init).sum()
    )


def test_self_distill_masked_vocab_finite():
    s, t, gold, tau = make_inputs(14)
    cols = torch.arange(0, V, 7)
    gold = torch.where(gold % 7 == 0, gold + 1, gold)
    s[:, cols] = -math.inf
    t[:, cols] = -math.inf
    s_req = s.clone().requires_grad_(True)
    mle = uncertainty_split(torch.rand(M), 0.5)
    loss = ema_self_distill_sum(s_req, t, tau, torch.ones(M)) + uncertainty_loss_sum(s_req, t, gold, mle, 1.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s_req.grad).all()
