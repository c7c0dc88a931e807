"""ekd.losses divergences, sparse estimator, head loss and reduction against float64 references (METHODS §1).

Every divergence is checked against an independent float64 reference written here from the METHODS §1
definitions (probabilities built in probability space, the mixtures of jsd/skew formed as β·p + (1−β)·q,
not via the module's logsumexp), on a grid of shapes (including an odd one), temperatures (scalar and
per-row) and input dtypes; gradients w.r.t. student logits are compared with float64 autograd. Then the
identities of §1, masked (-inf) vocabulary entries, garbage at ignored positions, the sparse estimator, the
chunked head loss against the reference path, and the one normalization rule.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from ekd.losses.divergences import (
    TVD_TIE_RTOL,
    divergences,
    forward_kl,
    hellinger,
    jsd,
    make_divergence,
    reverse_kl,
    skew_forward_kl,
    skew_reverse_kl,
    tvd,
)
from ekd.losses.head_loss import kd_loss_sum
from ekd.losses.reduce import global_count, normalize
from ekd.losses.sparse import sparse_forward_kl
from ekd.losses.targets import DenseTarget, Head, SparseTarget

NAMES = ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd", "hellinger"]
# Non-default parameters so that "make_divergence binds the parameter" is visible in the reference checks.
BETA, ALPHA = 0.3, 0.2
SHAPES = [(3 * 47, 123), (1, 5), (64, 1000)]  # (M, V); 3·47 rows × 123 is the odd one (Liger)
TAUS = ["one", "two", "per_row"]  # τ = 1.0, τ = 2.0 (scalar), τ (M,) ∈ [0.5, 3]

# Tolerances per input dtype, against the float64 reference evaluated on the *same* input values.
# The module computes in fp32 whatever the input dtype (it upcasts bf16), so fp32 and bf16 inputs share
# the fp32 value tolerance: fp32 log-softmax/KL rounding is ~1e-7 relative, summed over V ≤ 1000 terms.
# A bf16 *leaf* receives its gradient rounded to bf16 (8 mantissa bits: relative error ≤ 2⁻⁸), hence the
# looser gradient tolerance for bf16.
VALUE_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-5), torch.bfloat16: dict(rtol=1e-4, atol=1e-5)}
GRAD_TOL = {torch.float32: dict(rtol=1e-4, atol=1e-6), torch.bfloat16: dict(rtol=1e-2, atol=1e-4)}
# bf16 inputs against the reference on the original (unrounded) fp32 logits: the logits themselves are off
# by up to 2⁻⁹ relative (|z| ≲ 14 → ≲ 0.03 absolute), which moves the per-token divergence by up to ~1%
# relative on this grid (measured 1.1%), hence 2%.
BF16_VS_FP32_VALUE_TOL = dict(rtol=2e-2, atol=1e-3)


# ---------------------------------------------------------------------------------------------------------
# float64 reference, written from METHODS §1 (no ekd helpers)
# ---------------------------------------------------------------------------------------------------------


def _ref_log_softmax(z: Tensor, tau: Tensor | float) -> Tensor:
    """log softmax(z/τ) in float64: (M, V), τ scalar or (M,)."""
    z = z.double()
    t = tau.double().reshape(-1, 1) if isinstance(tau, Tensor) else float(tau)
    x = z / t
    return x - torch.logsumexp(x, dim=-1, keepdim=True)


def _ref_kl(a: Tensor, log_a: Tensor, log_b: Tensor) -> Tensor:
    """Σ a (log a − log b), 0·log 0 = 0. (M, V) → (M,)."""
    return torch.where(a > 0, a * (log_a - log_b), torch.zeros_like(a)).sum(-1)


def reference(
    name: str, zs: Tensor, zt: Tensor, tau: Tensor | float, beta: float = BETA, alpha: float = ALPHA
):
    """Float64 per-token divergence D(p, q), p = softmax(zt/τ) teacher, q = softmax(zs/τ) student → (M,)."""
    log_p, log_q = _ref_log_softmax(zt, tau), _ref_log_softmax(zs, tau)
    p, q = log_p.exp(), log_q.exp()
    if name == "forward_kl":
        return _ref_kl(p, log_p, log_q)
    if name == "reverse_kl":
        return _ref_kl(q, log_q, log_p)
    if name == "jsd":
        m = beta * p + (1 - beta) * q
        return beta * _ref_kl(p, log_p, m.log()) + (1 - beta) * _ref_kl(q, log_q, m.log())
    if name == "skew_forward_kl":
        return _ref_kl(p, log_p, (alpha * p + (1 - alpha) * q).log())
    if name == "skew_reverse_kl":
        return _ref_kl(q, log_q, ((1 - alpha) * p + alpha * q).log())
    if name == "tvd":  # ties up to TVD_TIE_RTOL contribute 0 (the documented subgradient convention)
        d = p - q
        tie = d.abs() <= TVD_TIE_RTOL * torch.maximum(p, q)
        return 0.5 * torch.where(tie, torch.zeros_like(d), d.abs()).sum(-1)
    if name == "hellinger":
        return ((p.sqrt() - q.sqrt()).pow(2).sum(-1)).sqrt() / math.sqrt(2.0)
    raise AssertionError(name)


def _div(name: str):
    return make_divergence(name, jsd_beta=BETA, skew_alpha=ALPHA)


def _logits(m: int, v: int, seed: int, scale: float = 3.0) -> tuple[Tensor, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(m, v, generator=g) * scale, torch.randn(m, v, generator=g) * scale


def _tau(kind: str, m: int, seed: int = 0) -> Tensor | float:
    if kind == "one":
        return 1.0
    if kind == "two":
        return 2.0
    g = torch.Generator().manual_seed(seed + 1)
    return 0.5 + 2.5 * torch.rand(m, generator=g)  # (M,)


# ---------------------------------------------------------------------------------------------------------
# Values and gradients vs the float64 reference
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tau_kind", TAUS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_value_matches_float64_reference(name, shape, tau_kind, dtype):
    m, v = shape
    zs, zt = _logits(m, v, seed=m * 7 + v)
    zs, zt = zs.to(dtype), zt.to(dtype)
    tau = _tau(tau_kind, m)
    out = _div(name)(zs, zt, tau)
    assert out.shape == (m,)
    assert out.dtype == torch.float32  # computed in fp32 whatever the input dtype
    ref = reference(name, zs, zt, tau)
    torch.testing.assert_close(out.double(), ref, **VALUE_TOL[dtype])
    if dtype == torch.bfloat16:  # and close to the divergence of the unrounded logits
        zs32, zt32 = _logits(m, v, seed=m * 7 + v)
        torch.testing.assert_close(out.double(), reference(name, zs32, zt32, tau), **BF16_VS_FP32_VALUE_TOL)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("tau_kind", TAUS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
@pytest.mark.parametrize("name", NAMES)
def test_grad_matches_float64_autograd(name, shape, tau_kind, dtype):
    m, v = shape
    zs, zt = _logits(m, v, seed=m * 11 + v)
    zs, zt = zs.to(dtype), zt.to(dtype)
    tau = _tau(tau_kind, m)
    cot = torch.rand(m, generator=torch.Generator().manual_seed(5)) + 0.5  # (M,) per-row cotangent

    s = zs.clone().requires_grad_(True)
    (_div(name)(s, zt, tau) * cot).sum().backward()
    assert s.grad is not None and s.grad.dtype == dtype

    s64 = zs.double().requires_grad_(True)
    (reference(name, s64, zt, tau) * cot.double()).sum().backward()
    assert torch.isfinite(s.grad).all()
    torch.testing.assert_close(s.grad.double(), s64.grad, **GRAD_TOL[dtype])


def test_teacher_logits_get_no_special_treatment_under_grad():
    """Gradients also flow correctly to teacher logits (used by self-distillation terms)."""
    zs, zt = _logits(9, 31, seed=3)
    for name in NAMES:
        t = zt.clone().requires_grad_(True)
        _div(name)(zs, t, 1.5).sum().backward()
        t64 = zt.double().requires_grad_(True)
        reference(name, zs, t64, 1.5).sum().backward()
        torch.testing.assert_close(t.grad.double(), t64.grad, rtol=1e-4, atol=1e-6, msg=name)


# ---------------------------------------------------------------------------------------------------------
# Identities (METHODS §1 "must hold")
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("tau_kind", TAUS)
@pytest.mark.parametrize("name", NAMES)
def test_divergence_of_a_distribution_with_itself_is_zero(name, tau_kind):
    z, _ = _logits(3 * 47, 123, seed=1, scale=5.0)
    tau = _tau(tau_kind, z.shape[0])
    torch.testing.assert_close(_div(name)(z, z, tau), torch.zeros(z.shape[0]), rtol=0, atol=1e-6)
    # softmax is shift-invariant: z and z + c (per row) are the same distribution
    shift = torch.linspace(-20, 20, z.shape[0]).unsqueeze(-1)  # (M, 1)
    torch.testing.assert_close(_div(name)(z + shift, z, tau), torch.zeros(z.shape[0]), rtol=0, atol=2e-5)


@pytest.mark.parametrize("name", ["forward_kl", "reverse_kl", "jsd", "skew_forward_kl", "skew_reverse_kl"])
def test_smooth_divergences_have_zero_grad_at_their_minimum(name):
    z, _ = _logits(20, 77, seed=2)
    s = z.clone().requires_grad_(True)
    _div(name)(s, z, 1.7).sum().backward()
    torch.testing.assert_close(s.grad, torch.zeros_like(z), rtol=0, atol=1e-6)


def test_hellinger_grad_at_p_equals_q_is_finite():
    z, _ = _logits(4, 10, seed=2)
    s = z.clone().requires_grad_(True)
    hellinger(s, z, 1.0).sum().backward()
    assert torch.isfinite(s.grad).all()


@pytest.mark.parametrize("tau_kind", TAUS)
def test_jsd_endpoints_are_forward_and_reverse_kl_exactly(tau_kind):
    zs, zt = _logits(3 * 47, 123, seed=4)
    tau = _tau(tau_kind, zs.shape[0])
    assert torch.equal(jsd(zs, zt, tau, beta=0.0), forward_kl(zs, zt, tau))
    assert torch.equal(jsd(zs, zt, tau, beta=1.0), reverse_kl(zs, zt, tau))
    # and the generic formula is not what is used at the ends (it is identically 0 there)
    assert forward_kl(zs, zt, tau).min() > 0 and reverse_kl(zs, zt, tau).min() > 0


@pytest.mark.parametrize("beta", [0.1, 0.3, 0.5, 0.9])
def test_jsd_beta_swaps_with_the_arguments(beta):
    zs, zt = _logits(3 * 47, 123, seed=5)
    tau = _tau("per_row", zs.shape[0])
    torch.testing.assert_close(
        jsd(zs, zt, tau, beta=beta), jsd(zt, zs, tau, beta=1.0 - beta), rtol=1e-5, atol=1e-6
    )


def test_jsd_is_continuous_at_its_endpoints():
    zs, zt = _logits(10, 50, seed=6)
    # JSD_β → 0 as β → 0 or 1 (the formula), which is why the ends are special-cased to the KLs
    assert jsd(zs, zt, 1.0, beta=1e-6).max() < 1e-4
    assert jsd(zs, zt, 1.0, beta=1 - 1e-6).max() < 1e-4


def test_skew_with_alpha_zero_is_plain_kl():
    zs, zt = _logits(3 * 47, 123, seed=7)
    tau = _tau("per_row", zs.shape[0])
    assert torch.equal(skew_forward_kl(zs, zt, tau, alpha=0.0), forward_kl(zs, zt, tau))
    assert torch.equal(skew_reverse_kl(zs, zt, tau, alpha=0.0), reverse_kl(zs, zt, tau))


def test_parameters_out_of_range_raise():
    zs, zt = _logits(2, 5, seed=8)
    for beta in (-0.1, 1.1):
        with pytest.raises(ValueError, match="beta"):
            jsd(zs, zt, 1.0, beta=beta)
    for fn in (skew_forward_kl, skew_reverse_kl):
        for alpha in (-0.1, 1.0):
            with pytest.raises(ValueError, match="alpha"):
                fn(zs, zt, 1.0, alpha=alpha)


# fp32 rounding: p and q each sum to 1 only within a few ulp, so ½Σ|p−q| for disjoint distributions may
# exceed 1 by ~1e-7; the bound is checked with that slack.
BOUND_SLACK = 1e-6


@pytest.mark.parametrize("name", ["tvd", "hellinger"])
def test_tvd_and_hellinger_are_in_unit_interval(name):
    fn = _div(name)
    zs, zt = _logits(500, 300, seed=9, scale=20.0)  # peaky, nearly disjoint distributions
    out = fn(zs, zt, 1.0)
    assert out.min() >= 0 and out.max() <= 1 + BOUND_SLACK
    # disjoint one-hot-like distributions reach the upper end
    a = torch.full((3, 50), -60.0)
    b = a.clone()
    a[:, 0], b[:, 1] = 60.0, 60.0
    torch.testing.assert_close(fn(a, b, 1.0), torch.ones(3), rtol=0, atol=BOUND_SLACK)


# ---------------------------------------------------------------------------------------------------------
# Masked (-inf) vocabulary entries
# ---------------------------------------------------------------------------------------------------------


def _masked_logits(m: int = 12, v: int = 40, seed: int = 10):
    """Student and teacher logits sharing a -inf mask (last 5 columns + scattered entries; ≥ 2 live per row)."""
    zs, zt = _logits(m, v, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(m, v, generator=g) < 0.2  # (M, V)
    mask[:, -5:] = True
    mask[:, :2] = False
    zs, zt = zs.masked_fill(mask, float("-inf")), zt.masked_fill(mask, float("-inf"))
    return zs, zt, mask


def _reference_without_masked(name: str, zs: Tensor, zt: Tensor, mask: Tensor, tau, requires_grad=False):
    """Per-row float64 reference over the live entries only; returns (values (M,), grad (M, V) or None)."""
    vals, grads = [], []
    for i in range(zs.shape[0]):
        live = ~mask[i]
        t_i = tau[i : i + 1] if isinstance(tau, Tensor) else tau
        s_i = zs[i, live].double().unsqueeze(0).requires_grad_(requires_grad)
        val = reference(name, s_i, zt[i, live].unsqueeze(0), t_i)
        vals.append(val)
        if requires_grad:
            val.sum().backward()
            g = torch.zeros(zs.shape[1], dtype=torch.float64)
            g[live] = s_i.grad[0]
            grads.append(g)
    return torch.cat(vals), (torch.stack(grads) if requires_grad else None)


@pytest.mark.parametrize("tau_kind", TAUS)
@pytest.mark.parametrize("name", NAMES)
def test_masked_vocab_entries_give_the_loss_over_the_live_vocabulary(name, tau_kind):
    zs, zt, mask = _masked_logits()
    tau = _tau(tau_kind, zs.shape[0])
    out = _div(name)(zs, zt, tau)
    assert torch.isfinite(out).all()
    ref, _ = _reference_without_masked(name, zs, zt, mask, tau)
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize(
    "name",
    [
        "forward_kl",
        "reverse_kl",
        "jsd",
        "skew_forward_kl",
        "skew_reverse_kl",
        "tvd",
        "hellinger",
    ],
)
def test_masked_vocab_entries_give_finite_grads(name):
    zs, zt, mask = _masked_logits()
    tau = _tau("per_row", zs.shape[0])
    s = zs.clone().requires_grad_(True)
    _div(name)(s, zt, tau).sum().backward()
    assert not torch.isnan(s.grad).any(), f"{name}: NaN in the student gradient"
    assert (s.grad[mask] == 0).all()
    _, ref_grad = _reference_without_masked(name, zs, zt, mask, tau, requires_grad=True)
    torch.testing.assert_close(s.grad.double(), ref_grad, rtol=1e-4, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Garbage at ignored positions; all-ignored batch
# ---------------------------------------------------------------------------------------------------------

B, T, V = 3, 47, 123


def _batch_with_garbage(seed: int = 12):
    """Clean (B, T, V) logits, labels with -100 at ~30% of positions, and copies with garbage there."""
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(B, T, V, generator=g) * 3
    zt = torch.randn(B, T, V, generator=g) * 3
    labels = torch.randint(0, V, (B, T), generator=g)
    ignored = torch.rand(B, T, generator=g) < 0.3
    ignored[0, :5] = True  # a run of ignored positions at the start (prompt-like)
    ignored[-1, -1] = True  # and the final position (shifted labels)
    labels[ignored] = -100
    garbage = torch.randn(B, T, V, generator=g) * 1e30  # huge, finite
    garbage[..., ::7] = float("inf")
    garbage[..., 3::7] = float("-inf")  # ±inf too (no NaN)
    zs_bad = torch.where(ignored.unsqueeze(-1), garbage, zs)
    zt_bad = torch.where(ignored.unsqueeze(-1), garbage.flip(-1), zt)
    return zs, zt, zs_bad, zt_bad, labels


def _selected_loss(name: str, zs: Tensor, zt: Tensor, labels: Tensor, tau: float) -> Tensor:
    """As the step does: flat indices of label != -100, then the per-token loss at those rows, summed."""
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(-1)  # (M,)
    s = zs.reshape(-1, zs.shape[-1])[rows]  # (M, V) student logits at valid rows
    t = zt.reshape(-1, zt.shape[-1])[rows]  # (M, V)
    return (tau**2 * _div(name)(s, t, tau)).sum()


@pytest.mark.parametrize("name", NAMES)
def test_garbage_logits_at_ignored_positions_change_nothing(name):
    zs, zt, zs_bad, zt_bad, labels = _batch_with_garbage()
    tau = 1.7
    clean = zs.clone().requires_grad_(True)
    bad = zs_bad.clone().requires_grad_(True)
    loss_clean = _selected_loss(name, clean, zt, labels, tau)
    loss_bad = _selected_loss(name, bad, zt_bad, labels, tau)
    loss_clean.backward()
    loss_bad.backward()
    assert torch.isfinite(loss_bad)
    assert torch.equal(loss_bad, loss_clean)
    assert torch.isfinite(bad.grad).all()
    assert torch.equal(bad.grad, clean.grad)
    assert (bad.grad[labels == -100] == 0).all()


@pytest.mark.parametrize("path", ["reference", "chunked"])
@pytest.mark.parametrize("name", NAMES)
def test_garbage_hidden_states_at_ignored_positions_change_nothing_through_kd_loss_sum(name, path):
    g = torch.Generator().manual_seed(13)
    ds, dt = 16, 24
    h_s = torch.randn(B, T, ds, generator=g)
    h_t = torch.randn(B, T, dt, generator=g)
    _, _, _, _, labels = _batch_with_garbage()
    ignored = labels == -100
    h_s_bad = torch.where(ignored.unsqueeze(-1), torch.full_like(h_s, 3e38), h_s)
    h_t_bad = torch.where(ignored.unsqueeze(-1), torch.full_like(h_t, -3e38), h_t)
    w_s = torch.randn(V, ds, generator=g) * 0.3
    head_t = Head(torch.randn(V, dt, generator=g) * 0.3)
    rows = (~ignored).reshape(-1).nonzero().squeeze(-1)  # (M,)
    m = rows.numel()
    tau, weights = torch.full((m,), 1.5), torch.ones(m)

    results = []
    for hs, ht in ((h_s, h_t), (h_s_bad, h_t_bad)):
        hs = hs.clone().requires_grad_(True)
        w = w_s.clone().requires_grad_(True)
        loss = kd_loss_sum(
            hs.reshape(B * T, ds)[rows],  # (M, Ds)
            Head(w),
            DenseTarget(ht.reshape(B * T, dt)[rows], head_t),
            tau,
            weights,
            _div(name),
            path=path,
            chunk_size=10,
        )
        loss.backward()
        results.append((loss.detach(), hs.grad, w.grad))
    (l0, gh0, gw0), (l1, gh1, gw1) = results
    assert torch.isfinite(l1) and torch.isfinite(gh1).all() and torch.isfinite(gw1).all()
    torch.testing.assert_close(l1, l0, rtol=0, atol=0)
    torch.testing.assert_close(gh1, gh0, rtol=0, atol=0)
    torch.testing.assert_close(gw1, gw0, rtol=0, atol=0)
    assert (gh1[ignored] == 0).all()


@pytest.mark.parametrize("path", ["reference", "chunked"])
@pytest.mark.parametrize("target_kind", ["dense", "sparse"])
@pytest.mark.parametrize("name", NAMES)
def test_all_ignored_batch_gives_zero_loss_and_finite_grads(name, target_kind, path):
    g = torch.Generator().manual_seed(14)
    labels = torch.full((2, 9), -100)
    h_s = torch.randn(2, 9, 8, generator=g).requires_grad_(True)
    w = (torch.randn(V, 8, generator=g) * 0.3).requires_grad_(True)
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(-1)  # (0,)
    assert rows.numel() == 0
    if target_kind == "dense":
        target = DenseTarget(torch.randn(18, 8, generator=g)[rows], Head(torch.randn(V, 8, generator=g)))
    else:
        target = SparseTarget(
            torch.zeros(18, 4, dtype=torch.long)[rows], torch.zeros(18, 4)[rows], torch.zeros(18)[rows]
        )
    loss = kd_loss_sum(
        h_s.reshape(18, 8)[rows],
        Head(w),
        target,
        torch.ones(0),
        torch.ones(0),
        _div(name if target_kind == "dense" else "forward_kl"),  # a sparse target takes forward KL only
        path=path,
        chunk_size=4,
    )
    assert loss.shape == () and loss.item() == 0.0
    loss.backward()
    assert h_s.grad is not None and torch.isfinite(h_s.grad).all() and (h_s.grad == 0).all()
    # the head is not touched by an empty batch: no gradient, or a zero one
    assert w.grad is None or (torch.isfinite(w.grad).all() and (w.grad == 0).all())


# ---------------------------------------------------------------------------------------------------------
# Sparse forward-KL estimator
# ---------------------------------------------------------------------------------------------------------


def _teacher_probs(zt: Tensor, tau) -> Tensor:
    return _ref_log_softmax(zt, tau).exp().float()  # (M, V)


@pytest.mark.parametrize("tau_kind", TAUS)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: f"{s[0]}x{s[1]}")
def test_sparse_with_k_equal_v_is_forward_kl(shape, tau_kind):
    m, v = shape
    zs, zt = _logits(m, v, seed=15)
    tau = _tau(tau_kind, m)
    g = torch.Generator().manual_seed(16)
    ids = torch.stack([torch.randperm(v, generator=g) for _ in range(m)])  # (M, V) every id, shuffled per row
    probs = _teacher_probs(zt, tau).gather(-1, ids)  # (M, V)
    target = SparseTarget(ids, probs)

    s1 = zs.clone().requires_grad_(True)
    sparse = sparse_forward_kl(s1, target, tau)
    s2 = zs.clone().requires_grad_(True)
    dense = forward_kl(s2, zt, tau)
    assert sparse.shape == (m,)
    torch.testing.assert_close(sparse, dense, rtol=1e-4, atol=1e-5)
    cot = torch.rand(m, generator=g)
    (sparse * cot).sum().backward()
    (dense * cot).sum().backward()
    torch.testing.assert_close(s1.grad, s2.grad, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("with_tail", [False, True])
def test_sparse_padding_slots_change_nothing(with_tail):
    m, v, k, pad = 3 * 47, 123, 12, 7
    zs, zt = _logits(m, v, seed=17)
    tau = _tau("per_row", m)
    p = _teacher_probs(zt, tau)
    top_p, top_ids = p.topk(k, dim=-1)  # (M, K)
    tail = (1 - top_p.double().sum(-1)).float() if with_tail else None
    g = torch.Generator().manual_seed(18)
    pad_ids = torch.cat([top_ids[:, :3], torch.randint(0, v, (m, pad - 3), generator=g)], dim=-1)  # dupes too
    padded = SparseTarget(
        torch.cat([top_ids, pad_ids], -1), torch.cat([top_p, torch.zeros(m, pad)], -1), tail
    )
    # padding in the middle of the row as well
    perm = torch.randperm(k + pad, generator=g)
    shuffled = SparseTarget(padded.ids[:, perm], padded.probs[:, perm], tail)

    grads, vals = [], []
    for target in (SparseTarget(top_ids, top_p, tail), padded, shuffled):
        s = zs.clone().requires_grad_(True)
        out = sparse_forward_kl(s, target, tau)
        out.sum().backward()
        vals.append(out)
        grads.append(s.grad)
    for val, grad in zip(vals[1:], grads[1:]):
        torch.testing.assert_close(val, vals[0], rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(grad, grads[0], rtol=1e-6, atol=1e-7)


def test_sparse_ghost_tail_matches_hand_formula():
    m, v, k = 3 * 47, 123, 12
    zs, zt = _logits(m, v, seed=19)
    tau = _tau("per_row", m)
    p = _teacher_probs(zt, tau)
    top_p, top_ids = p.topk(k, dim=-1)  # (M, K)
    tail = (1 - top_p.double().sum(-1)).float()  # (M,) teacher tail mass
    tail[0] = 0.0  # a row without tail mass: no tail term
    target = SparseTarget(top_ids, top_p, tail)

    s = zs.clone().requires_grad_(True)
    out = sparse_forward_kl(s, target, tau)
    out.sum().backward()

    # Σ_k t_k (log t_k − log q_k) + t_tail (log t_tail − log(1 − Σ_k q_k)), q the full student softmax
    s64 = zs.double().requires_grad_(True)
    q = _ref_log_softmax(s64, tau).exp()  # (M, V)
    q_k = q.gather(-1, top_ids)  # (M, K)
    t, tl = top_p.double(), tail.double()
    head_term = (t * (t.log() - q_k.log())).sum(-1)
    tail_term = torch.where(
        tl > 0, tl * (tl.clamp_min(1e-300).log() - (1 - q_k.sum(-1)).log()), torch.zeros_like(tl)
    )
    ref = head_term + tail_term
    ref.sum().backward()
    torch.testing.assert_close(out.double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(s.grad.double(), s64.grad, rtol=1e-3, atol=1e-6)
    # the tail term is really there: without it the value differs
    no_tail = sparse_forward_kl(zs, SparseTarget(top_ids, top_p), tau)
    assert (out[1:] - no_tail[1:]).abs().min() > 0
    assert torch.equal(out[0], no_tail[0])


def test_sparse_rs_counts_are_an_unbiased_estimate_of_forward_kl_gradient():
    """E[t̂] = p ⇒ the estimator's gradient, averaged over draws, tends to the dense forward-KL gradient."""
    m, v, n, draws = 4, 30, 50, 400
    zs, zt = _logits(m, v, seed=20, scale=1.5)
    p = _teacher_probs(zt, 1.0)
    g = torch.Generator().manual_seed(21)
    s = zs.clone().requires_grad_(True)
    dense_grad = torch.autograd.grad(forward_kl(s, zt).sum(), s)[0]
    acc = torch.zeros_like(zs)
    for _ in range(draws):
        samples = torch.multinomial(p, n, replacement=True, generator=g)  # (M, N)
        counts = torch.zeros(m, v).scatter_add_(-1, samples, torch.ones(m, n))  # (M, V)
        target = SparseTarget(torch.arange(v).expand(m, v), counts / n)  # zero counts act as padding
        acc += torch.autograd.grad(sparse_forward_kl(s, target).sum(), s)[0]
    torch.testing.assert_close(acc / draws, dense_grad, rtol=0, atol=0.01)


# ---------------------------------------------------------------------------------------------------------
# Head loss: chunked vs reference
# ---------------------------------------------------------------------------------------------------------

M_ODD, CHUNK = 37, 8  # 8 does not divide 37


def _head_setup(seed: int = 22, m: int = M_ODD, v: int = 53, ds: int = 16, dt: int = 24):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, ds, generator=g)
    w = torch.randn(v, ds, generator=g) * 0.4
    b = torch.randn(v, generator=g) * 0.1
    teacher = DenseTarget(torch.randn(m, dt, generator=g), Head(torch.randn(v, dt, generator=g) * 0.4))
    tau = 0.5 + 2.5 * torch.rand(m, generator=g)  # (M,)
    weights = torch.rand(m, generator=g) + 0.25  # (M,)
    return hidden, w, b, teacher, tau, weights


def _run_kd(hidden, w, b, target, tau, weights, divergence, path, chunk_size=CHUNK, scale=True):
    h = hidden.clone().requires_grad_(True)
    w = w.clone().requires_grad_(True)
    b = b.clone().requires_grad_(True)
    loss = kd_loss_sum(
        h, Head(w, b), target, tau, weights, divergence, scale, path=path, chunk_size=chunk_size
    )
    loss.backward()
    return loss.detach(), h.grad, w.grad, b.grad


@pytest.mark.parametrize("scale", [True, False], ids=["tau2", "no_tau2"])
@pytest.mark.parametrize("name", NAMES)
def test_kd_loss_sum_chunked_equals_reference(name, scale):
    hidden, w, b, teacher, tau, weights = _head_setup()
    ref = _run_kd(hidden, w, b, teacher, tau, weights, _div(name), "reference", scale=scale)
    for chunk in (CHUNK, 1, 36):
        got = _run_kd(
            hidden, w, b, teacher, tau, weights, _div(name), "chunked", chunk_size=chunk, scale=scale
        )
        for a, r, what in zip(got, ref, ("loss", "grad hidden", "grad weight", "grad bias")):
            # fp32 only up to reduction order: a 1-row chunk runs a different matmul kernel (gemv vs gemm)
            torch.testing.assert_close(
                a, r, rtol=1e-4, atol=1e-5, msg=lambda e, c=chunk, w=what: f"{name} chunk={c}: {w}\n{e}"
            )


@pytest.mark.parametrize("name", NAMES)
def test_kd_loss_sum_reference_is_the_weighted_tau_squared_sum(name):
    hidden, w, b, teacher, tau, weights = _head_setup()
    loss, gh, gw, _ = _run_kd(hidden, w, b, teacher, tau, weights, _div(name), "reference")
    h64 = hidden.double().requires_grad_(True)
    w64 = w.double().requires_grad_(True)
    zs = h64 @ w64.T + b.double()  # (M, V)
    zt = teacher.hidden.double() @ teacher.head.weight.double().T  # (M, V)
    ref = (weights.double() * tau.double() ** 2 * reference(name, zs, zt, tau)).sum()
    ref.backward()
    torch.testing.assert_close(loss.double(), ref, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(gh.double(), h64.grad, rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(gw.double(), w64.grad, rtol=1e-3, atol=1e-5)


@pytest.mark.parametrize("with_tail", [False, True])
def test_kd_loss_sum_sparse_chunked_equals_reference(with_tail):
    hidden, w, b, teacher, tau, weights = _head_setup()
    p = _teacher_probs(teacher.logits(), tau)
    top_p, top_ids = p.topk(6, dim=-1)  # (M, K)
    target = SparseTarget(top_ids, top_p, (1 - top_p.sum(-1)) if with_tail else None)
    ref = _run_kd(hidden, w, b, target, tau, weights, forward_kl, "reference")
    got = _run_kd(hidden, w, b, target, tau, weights, forward_kl, "chunked")
    for a, r in zip(got, ref):
        torch.testing.assert_close(a, r, rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------------------------------------------
# Registry and make_divergence
# ---------------------------------------------------------------------------------------------------------


def test_registry_names():
    assert set(divergences.names()) == set(NAMES)
    for name in NAMES:
        assert divergences.describe(name).strip(), name
    with pytest.raises(KeyError, match="did you mean 'forward_kl'"):
        divergences.get("forward_k1")
    with pytest.raises(KeyError):
        make_divergence("kl")


def test_make_divergence_binds_parameters():
    zs, zt = _logits(3 * 47, 123, seed=23)
    tau = _tau("per_row", zs.shape[0])
    for beta in (0.0, 0.25, 0.5, 1.0):
        assert torch.equal(make_divergence("jsd", jsd_beta=beta)(zs, zt, tau), jsd(zs, zt, tau, beta=beta))
    assert torch.equal(make_divergence("jsd")(zs, zt, tau), jsd(zs, zt, tau, beta=0.5))  # default β
    assert not torch.equal(make_divergence("jsd", jsd_beta=0.25)(zs, zt, tau), jsd(zs, zt, tau, beta=0.5))
    for name, fn in (("skew_forward_kl", skew_forward_kl), ("skew_reverse_kl", skew_reverse_kl)):
        assert torch.equal(make_divergence(name, skew_alpha=0.3)(zs, zt, tau), fn(zs, zt, tau, alpha=0.3))
        assert torch.equal(make_divergence(name)(zs, zt, tau), fn(zs, zt, tau, alpha=0.1))  # default α
    for name, fn in (
        ("forward_kl", forward_kl),
        ("reverse_kl", reverse_kl),
        ("tvd", tvd),
        ("hellinger", hellinger),
    ):
        bound = make_divergence(name, jsd_beta=0.9, skew_alpha=0.9)  # parameters of others are ignored
        assert torch.equal(bound(zs, zt, tau), fn(zs, zt, tau))


# ---------------------------------------------------------------------------------------------------------
# Normalization (ekd.losses.reduce)
# ---------------------------------------------------------------------------------------------------------


def test_global_count():
    assert global_count([3.0, 4.0, 0.0]) == 7.0
    assert global_count([3, 4]) == 7.0 and isinstance(global_count([3, 4]), float)
    assert global_count(5) == 5.0
    assert global_count([]) == 1.0  # never divide by zero
    assert global_count([0.0, 0.0]) == 1.0
    assert global_count(0.25) == 1.0


def test_normalize_divides_once():
    x = torch.tensor(6.0, requires_grad=True)
    y = normalize(x, 3.0)
    assert y.item() == 2.0
    y.backward()
    assert x.grad.item() == pytest.approx(1 / 3)


def test_accumulated_grads_do_not_depend_on_micro_batching():
    """8 micro-batches of 1 or 2 of 4: Σ_mb normalize(sum_mb, global count) has the same gradient as the
    full-batch mean over valid tokens (the count is not divided again per micro-batch)."""
    g = torch.Generator().manual_seed(24)
    n_seq, t, d, v = 8, 6, 8, 19
    hidden = torch.randn(n_seq, t, d, generator=g)
    teacher_hidden = torch.randn(n_seq, t, d, generator=g)
    t_head = Head(torch.randn(v, d, generator=g))
    labels = torch.randint(0, v, (n_seq, t), generator=g)
    labels[torch.rand(n_seq, t, generator=g) < 0.4] = -100
    labels[2] = -100  # one sequence with no valid position at all
    w0 = torch.randn(v, d, generator=g) * 0.3

    def accumulated(mb: int) -> Tensor:
        w = w0.clone().requires_grad_(True)
        count = global_count([float((labels[i : i + mb] != -100).sum()) for i in range(0, n_seq, mb)])
        for i in range(0, n_seq, mb):
            lab = labels[i : i + mb]
            rows = (lab.reshape(-1) != -100).nonzero().squeeze(-1)  # (M,)
            hs = hidden[i : i + mb].reshape(-1, d)[rows]  # (M, D)
            ht = teacher_hidden[i : i + mb].reshape(-1, d)[rows]  # (M, D)
            m = rows.numel()
            s = kd_loss_sum(hs, Head(w), DenseTarget(ht, t_head), torch.ones(m), torch.ones(m), forward_kl)
            normalize(s, count).backward()
        return w.grad

    g1, g4, g8 = accumulated(1), accumulated(4), accumulated(8)
    torch.testing.assert_close(g1, g8, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g4, g8, rtol=1e-5, atol=1e-7)
    # g8 is one micro-batch: the mean over valid tokens
    w = w0.clone().requires_grad_(True)
    rows = (labels.reshape(-1) != -100).nonzero().squeeze(-1)
    zs = hidden.reshape(-1, d)[rows] @ w.T
    zt = teacher_hidden.reshape(-1, d)[rows] @ t_head.weight.T
    forward_kl(zs, zt).mean().backward()
    torch.testing.assert_close(g8, w.grad, rtol=1e-5, atol=1e-7)
