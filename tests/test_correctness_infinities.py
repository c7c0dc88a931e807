"""Issue 10 item 13: the reference and chunked loss paths agree on every input, infinities included.

A KL whose first argument has mass where the second has none is +∞ (reverse KL with a teacher −∞ logit and a
finite student one; forward KL the other way round). The reference path used to return a finite 1e35–1e37
there (the −∞ floor of ``log_probs_at`` leaking into the value) while the chunked path returned inf. Every
divergence × masking pattern × path is checked against a float64 reference written here in probability space.
"""

from __future__ import annotations

import math

import pytest
import torch

from ekd.losses.divergences import make_divergence
from ekd.losses.head_loss import kd_loss_sum
from ekd.losses.sparse import sparse_forward_kl
from ekd.losses.targets import DenseTarget, Head, SparseTarget

V, D, M = 11, 6, 5
DIVERGENCES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {"jsd_beta": 0.0}),
    ("jsd", {"jsd_beta": 0.3}),
    ("jsd", {"jsd_beta": 1.0}),
    ("skew_forward_kl", {"skew_alpha": 0.0}),
    ("skew_forward_kl", {"skew_alpha": 0.2}),
    ("skew_reverse_kl", {"skew_alpha": 0.0}),
    ("skew_reverse_kl", {"skew_alpha": 0.2}),
    ("tvd", {}),
]
# which vocabulary entries get a -inf logit in the teacher / the student head
MASKS = {
    "none": ([], []),
    "teacher": ([2, 7], []),
    "student": ([], [4, 9]),
    "both_same": ([3, 8], [3, 8]),
    "both_different": ([1], [5]),
}
PATHS = ["reference", "chunked", "chunked_recompute"]


def _kl64(a, b):
    """Σ a·(log a − log b) in float64 with 0·log 0 = 0 and a > 0 = b → +inf. (M, V) → (M,)."""
    with torch.no_grad():
        ratio = torch.where(a > 0, a.log() - b.log(), torch.zeros_like(a))
        return torch.where(a > 0, a * ratio, torch.zeros_like(a)).sum(-1)


def _reference64(name: str, params: dict, zs, zt, tau):
    """The divergence of METHODS §1 in float64, mixtures formed in probability space."""
    p = torch.softmax(zt.double() / tau[:, None].double(), -1)  # (M, V), exact zeros at -inf
    q = torch.softmax(zs.double() / tau[:, None].double(), -1)
    if name == "forward_kl":
        return _kl64(p, q)
    if name == "reverse_kl":
        return _kl64(q, p)
    if name == "jsd":
        beta = params["jsd_beta"]
        if beta in (0.0, 1.0):  # TRL convention: the endpoints are the plain KLs
            return _kl64(p, q) if beta == 0.0 else _kl64(q, p)
        m = beta * p + (1 - beta) * q
        return beta * _kl64(p, m) + (1 - beta) * _kl64(q, m)
    if name == "skew_forward_kl":
        a = params["skew_alpha"]
        return _kl64(p, a * p + (1 - a) * q)
    if name == "skew_reverse_kl":
        a = params["skew_alpha"]
        return _kl64(q, (1 - a) * p + a * q)
    assert name == "tvd"
    return 0.5 * (p - q).abs().sum(-1)


def _setup(mask_kind: str):
    g = torch.Generator().manual_seed(7)
    teacher_w, teacher_b = torch.randn(V, D, generator=g), torch.randn(V, generator=g)
    hidden_t = torch.randn(M, D, generator=g)
    student_w, student_b = torch.randn(V, D, generator=g), torch.randn(V, generator=g)
    hidden_s = torch.randn(M, D, generator=g)
    t_ids, s_ids = MASKS[mask_kind]
    teacher_b[t_ids] = float("-inf")
    student_b[s_ids] = float("-inf")
    tau = torch.tensor([1.0, 2.0, 0.5, 1.5, 1.0])
    return hidden_s, Head(student_w, student_b), DenseTarget(hidden_t, Head(teacher_w, teacher_b)), tau


def _assert_same_including_inf(value: torch.Tensor, expected: torch.Tensor, what: str) -> None:
    value, expected = value.double(), expected.double()
    assert bool(torch.isinf(value)) == bool(torch.isinf(expected)), f"{what}: {value} vs {expected}"
    if torch.isfinite(expected):
        torch.testing.assert_close(value, expected, rtol=1e-5, atol=1e-6, msg=what)


@pytest.mark.parametrize("mask_kind", list(MASKS))
@pytest.mark.parametrize("name,params", DIVERGENCES, ids=[f"{n}{p}" for n, p in DIVERGENCES])
def test_every_path_gives_the_float64_value_infinities_included(name, params, mask_kind):
    hidden, head, target, tau = _setup(mask_kind)
    divergence = make_divergence(name, **params)
    zs, zt = head(hidden), target.logits()
    weights = torch.ones(M)
    expected_rows = _reference64(name, params, zs, zt, tau)  # (M,)
    expected = (weights.double() * tau.double() ** 2 * expected_rows).sum()
    # per row, straight from the divergence function (what the reference path sums)
    rows = divergence(zs, zt, tau)
    for i in range(M):
        _assert_same_including_inf(rows[i], expected_rows[i], f"{name} row {i}")
    for path in PATHS:
        h = hidden.clone().requires_grad_(True)
        loss = kd_loss_sum(h, head, target, tau, weights, divergence, path=path, chunk_size=2)
        _assert_same_including_inf(loss.detach(), expected, f"{name}/{mask_kind}/{path}")


def test_reverse_kl_with_a_masked_teacher_entry_is_inf_not_a_huge_finite_number():
    """The issue's case: teacher −inf at one entry, student finite there → reverse KL = +inf on every path."""
    hidden, head, target, tau = _setup("teacher")
    for path in PATHS:
        loss = kd_loss_sum(hidden, head, target, tau, torch.ones(M), make_divergence("reverse_kl"), path=path)
        assert math.isinf(float(loss)), path


@pytest.mark.parametrize("with_tail", [False, True])
def test_sparse_target_on_an_id_the_student_masks_is_inf_on_every_path(with_tail):
    """Sparse forward KL: a target id with t > 0 where the student's logit is −inf → +inf (both paths)."""
    hidden, head, _, tau = _setup("student")  # student masks ids 4 and 9
    ids = torch.tensor([[0, 4, 1], [2, 3, 5], [9, 9, 0], [6, 7, 8], [1, 2, 4]])  # (M, K)
    probs = torch.tensor(
        [[0.5, 0.3, 0.2], [0.4, 0.4, 0.2], [0.7, 0.0, 0.3], [0.2, 0.2, 0.2], [0.5, 0.5, 0.0]]
    )
    tail = torch.tensor([0.0, 0.1, 0.0, 0.4, 0.0]) if with_tail else None
    target = SparseTarget(ids, probs, tail)
    expected_inf = [True, False, True, False, False]  # rows 0 and 2 put mass on a masked id
    q = torch.softmax(head(hidden).double() / tau[:, None].double(), -1)  # (M, V) float64
    q_at = q.gather(-1, ids)
    expected = []
    for i in range(M):
        live = probs[i] > 0
        value = (probs[i][live].double() * (probs[i][live].double().log() - q_at[i][live].log())).sum()
        if tail is not None and tail[i] > 0:
            outside = torch.ones(V, dtype=torch.bool)
            outside[ids[i][live]] = False
            value = value + tail[i].double() * (tail[i].double().log() - q[i][outside].sum().log())
        expected.append(value)
    rows = sparse_forward_kl(head(hidden), target, tau)
    for i in range(M):
        assert bool(torch.isinf(rows[i])) == expected_inf[i]
        _assert_same_including_inf(rows[i], expected[i], f"sparse row {i}")
    total = (tau.double() ** 2 * torch.stack(expected)).sum()
    for path in PATHS:
        loss = kd_loss_sum(
            hidden.clone(), head, target, tau, torch.ones(M), make_divergence("forward_kl"), path=path
        )
        _assert_same_including_inf(loss.detach(), total, f"sparse/{path}")
