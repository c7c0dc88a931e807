"""The closed-form DKD / AT-KD chunk (``ekd.losses.decoupled_grads``) against float64 references and against the
autograd path it replaces on the fused head (values and gradients; masked vocabularies, dead rows, p_y → 1)."""

from __future__ import annotations

import math

import pytest
import torch

from ekd.losses.decoupled import atkd_hard_mask, atkd_loss_sum, nckd, tckd
from ekd.losses.decoupled_grads import decoupled_kd_chunk
from test_objectives import M, V, make_inputs, ref_nckd, ref_tckd


def _coefs(seed: int = 3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(M, generator=g), 8.0 * torch.rand(M, generator=g)  # c_T, c_N


def _closed_form(s, t, gold, tau, c_t, c_n):
    return decoupled_kd_chunk(s.clone(), t.clone(), gold, tau, c_t, c_n)


def _autograd(s, t, gold, tau, c_t, c_n, terms=(tckd, nckd)):
    """Σ c_T·TCKD + c_N·NCKD and its gradient through autograd of the given per-row functions."""
    z = s.clone().requires_grad_(True)
    tc, nc = terms[0](z, t, gold, tau), terms[1](z, t, gold, tau)
    zero = torch.zeros_like(tc)
    loss = (
        torch.where(c_t != 0, c_t.to(tc.dtype) * tc, zero)
        + torch.where(c_n != 0, c_n.to(nc.dtype) * nc, zero)
    ).sum()
    (grad,) = torch.autograd.grad(loss, z)
    return loss.detach(), grad


@pytest.mark.parametrize("gold_at", ["random", "argmax", "argmin"])
def test_matches_float64_reference_values_and_gradients(gold_at):
    s, t, gold, tau = make_inputs(0, gold_at)
    c_t, c_n = _coefs()
    loss, grad = _closed_form(s, t, gold, tau, c_t, c_n)
    loss64, grad64 = _autograd(
        s.double(), t.double(), gold, tau.double(), c_t.double(), c_n.double(), (ref_tckd, ref_nckd)
    )
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad.double(), grad64, rtol=1e-4, atol=1e-6)


def test_near_certain_gold_keeps_its_digits():
    """1 − p_y ≈ 1e-11 (below fp32 resolution of p_y): TCKD and its gradient still match float64."""
    s, t, gold, tau = make_inputs(9)
    t[torch.arange(M), gold] = t.max(-1).values + 25.0
    s[torch.arange(M), gold] = s.max(-1).values + 20.0
    tau = torch.ones(M)
    c_t, c_n = torch.ones(M), torch.zeros(M)
    loss, grad = _closed_form(s, t, gold, tau, c_t, c_n)
    loss64, grad64 = _autograd(
        s.double(), t.double(), gold, tau.double(), c_t.double(), c_n.double(), (ref_tckd, ref_nckd)
    )
    torch.testing.assert_close(loss.double(), loss64, rtol=1e-4, atol=0)
    torch.testing.assert_close(grad.double(), grad64, rtol=1e-4, atol=1e-12)


MASKS = {
    "teacher": ([2, 7, 40], []),
    "student": ([], [4, 9]),
    "both_same": ([3, 8], [3, 8]),
    "both_different": ([1], [5]),
}


@pytest.mark.parametrize("mask", list(MASKS))
def test_masked_vocabulary_equals_the_autograd_path(mask):
    """−inf logits: the same value as the autograd path (+inf included) and, where finite, the same gradient."""
    s, t, gold, tau = make_inputs(4)
    t_ids, s_ids = MASKS[mask]
    gold = torch.where(torch.isin(gold, torch.tensor(t_ids + s_ids)), torch.zeros_like(gold), gold)
    t[:, t_ids] = -math.inf
    s[:, s_ids] = -math.inf
    c_t, c_n = _coefs()
    loss, grad = _closed_form(s, t, gold, tau, c_t, c_n)
    ref_loss, ref_grad = _autograd(s, t, gold, tau, c_t, c_n)
    assert math.isinf(loss) == math.isinf(ref_loss)
    if math.isfinite(ref_loss):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
        if s_ids:
            assert float(grad[:, s_ids].abs().max()) == 0.0  # masked student ids get no gradient


def test_rows_without_non_gold_mass():
    """Teacher with only its gold logit finite (NCKD := 0, its weight 1 − p_y is 0), and both models so
    (everything 0): as the autograd path, finite gradients."""
    s, t, gold, tau = make_inputs(8)
    dead = torch.full((V,), -math.inf)
    t[0], t[1], s[1] = dead, dead, dead
    for row in (0, 1):
        t[row, gold[row]] = 1.0
    s[1, gold[1]] = 1.0
    c_t, c_n = _coefs()
    loss, grad = _closed_form(s, t, gold, tau, c_t, c_n)
    ref_loss, ref_grad = _autograd(s, t, gold, tau, c_t, c_n)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6)
    assert torch.isfinite(grad).all() and float(grad[1].abs().max()) == 0.0


def test_atkd_weights_give_atkd_loss_sum():
    """AT-KD as (c_T, c_N): hard rows (1 − λ)·(TCKD + NCKD), easy rows λ·NCKD, times the row weights."""
    s, t, gold, tau = make_inputs(5)
    lam, w = 0.2, torch.rand(M, generator=torch.Generator().manual_seed(1))
    hard = atkd_hard_mask(torch.rand(M, generator=torch.Generator().manual_seed(2)), 0.5)
    c_t = torch.where(hard, (1 - lam) * w, 0.0)
    c_n = torch.where(hard, 1 - lam, lam) * w
    loss, grad = _closed_form(s, t, gold, tau, c_t, c_n)
    z = s.clone().requires_grad_(True)
    expected = atkd_loss_sum(z, t, gold, tau, hard, lam, weights=w)
    (expected_grad,) = torch.autograd.grad(expected, z)
    torch.testing.assert_close(loss, expected.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad, expected_grad, rtol=1e-4, atol=1e-6)


def test_a_zero_weight_drops_an_infinite_term():
    """c_T = 0 on a row whose TCKD is +inf (the student has no mass on the teacher's gold): the sum stays finite."""
    s, t, gold, tau = make_inputs(6)
    s[0, gold[0]] = -math.inf
    c_t, c_n = torch.ones(M), torch.ones(M)
    assert math.isinf(_closed_form(s, t, gold, tau, c_t, c_n)[0])
    c_t[0] = 0.0
    loss, grad = _closed_form(s, t, gold, tau, c_t, c_n)
    assert math.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("student_arch, teacher_arch", [("gemma2", "granite"), ("cohere", "gemma2")])
def test_fused_head_with_scaled_or_capped_logits_equals_float64_dkd(student_arch, teacher_arch):
    """DKD through the fused head of models whose logits are not h·Wᵀ (soft-cap, scaling): the float64 DKD of
    ``model(...).logits``, values and gradients of the student's parameters."""
    import copy

    from ekd.losses.chunked import fused_linear_loss
    from ekd.models.load import output_head
    from test_logit_transform import BUILDERS, _hidden, _ids
    from test_logit_transform import B as TB
    from test_logit_transform import T as TT
    from test_logit_transform import V as TV

    student, teacher = BUILDERS[student_arch](), BUILDERS[teacher_arch]()
    ids = _ids(1)
    gold = torch.randint(0, TV, (TB * TT,), generator=torch.Generator().manual_seed(2))
    tau, beta = torch.full((TB * TT,), 2.0), 8.0
    student64, teacher64 = copy.deepcopy(student).double(), copy.deepcopy(teacher).double()
    zs64 = student64(input_ids=ids).logits.reshape(-1, TV)
    with torch.no_grad():
        zt64 = teacher64(input_ids=ids).logits.reshape(-1, TV)
    want = (ref_tckd(zs64, zt64, gold, tau.double()) + beta * ref_nckd(zs64, zt64, gold, tau.double())).sum()
    want.backward()

    h_s = _hidden(student, ids).reshape(TB * TT, -1)  # (M, Ds)
    with torch.no_grad():
        zt = output_head(teacher, TV)(_hidden(teacher, ids).reshape(TB * TT, -1)).float()  # (M, V)
    ones = torch.ones(TB * TT)

    def chunk(logits, start, end):
        s = slice(start, end)
        return decoupled_kd_chunk(logits, zt[s].clone(), gold[s], tau[s], ones[s], beta * ones[s])

    got = fused_linear_loss(h_s, output_head(student, TV), chunk, 7)
    got.backward()
    assert float(got.detach()) == pytest.approx(float(want.detach()), rel=1e-5)
    ref_grads = dict(student64.named_parameters())
    for name, p in student.named_parameters():
        want_grad = ref_grads[name].grad
        if want_grad is None:
            continue
        error = float((p.grad.double() - want_grad).norm() / want_grad.norm().clamp_min(1e-12))
        assert error < 1e-4, (name, error)
