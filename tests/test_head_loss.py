"""Fused chunked head + loss (``path='chunked'``) against the plain reference path.

Every comparison runs both paths on the same fp32 inputs and compares the loss value and the gradients
w.r.t. the student hidden states, head weight and head bias. Tolerances (fp32): rtol 1e-5 on values;
gradients atol 1e-5·max|g| + rtol 1e-4 — the two paths sum the same terms in a different order (per-chunk
accumulation of the weight gradient, closed-form vs autograd softmax backward), so they agree to a few
ulps, not bit for bit. bf16 inputs: rtol 2e-2 (both paths round logits and GEMMs to bf16 differently).
Memory and time are measured by ``make bench``, never here.
"""

from __future__ import annotations

import logging

import pytest
import torch

from ekd.losses import chunked
from ekd.losses.chunked import closed_form_of
from ekd.losses.divergences import hellinger, make_divergence
from ekd.losses.head_loss import ce_loss_sum, kd_loss_sum
from ekd.losses.targets import DenseTarget, Head, SparseTarget

M, DS, DT, V, CHUNK = 47, 16, 24, 101, 16  # odd M, chunk not dividing M

DIVERGENCES = [
    ("forward_kl", {}),
    ("reverse_kl", {}),
    ("jsd", {}),
    ("jsd", {"jsd_beta": 0.0}),
    ("jsd", {"jsd_beta": 1.0}),
    ("jsd", {"jsd_beta": 0.9}),
    ("skew_forward_kl", {}),
    ("skew_forward_kl", {"skew_alpha": 0.0}),
    ("skew_reverse_kl", {}),
    ("skew_reverse_kl", {"skew_alpha": 0.0}),
    ("tvd", {}),
]
FINITE_WITH_MASKED_TEACHER = {"forward_kl", "jsd", "skew_forward_kl", "skew_reverse_kl", "tvd"}


def _close(a: torch.Tensor | None, b: torch.Tensor | None, rtol: float = 1e-4) -> None:
    assert (a is None) == (b is None)
    if a is None:
        return
    assert a.shape == b.shape and a.dtype == b.dtype
    a, b = a.double(), b.double()
    assert torch.isfinite(a).all() and torch.isfinite(b).all()
    atol = 1e-5 * float(b.abs().max().clamp_min(1e-12)) if rtol < 1e-3 else rtol * float(b.abs().max())
    torch.testing.assert_close(a, b, rtol=rtol, atol=atol)


def _student(m: int = M, dtype: torch.dtype = torch.float32, bias: bool = True, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(m, DS, generator=g).to(dtype).requires_grad_(True)
    weight = (torch.randn(V, DS, generator=g) * 0.4).to(dtype).requires_grad_(True)
    b = (torch.randn(V, generator=g) * 0.2).to(dtype).requires_grad_(True) if bias else None
    return hidden, weight, b


def _dense_target(m: int = M, masked: bool = False, dtype: torch.dtype = torch.float32, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    bias = torch.randn(V, generator=g) * 0.2
    if masked:
        bias[[3, 17, 60]] = float("-inf")  # vocabulary entries the teacher never predicts
    head = Head((torch.randn(V, DT, generator=g) * 0.4).to(dtype), bias.to(dtype))
    return DenseTarget(torch.randn(m, DT, generator=g).to(dtype), head)


def _rows(m: int = M, seed: int = 2):
    g = torch.Generator().manual_seed(seed)
    tau = 0.5 + 1.5 * torch.rand(m, generator=g)  # per-row τ ≠ 1
    weights = torch.rand(m, generator=g)
    return tau, weights


def _run_kd(path, target, divergence, *, m=M, dtype=torch.float32, scale=True, bias=True, tau=None, **kw):
    hidden, weight, b = _student(m, dtype, bias)
    row_tau, weights = _rows(m)
    loss = kd_loss_sum(
        hidden,
        Head(weight, b),
        target,
        row_tau if tau is None else tau,
        weights,
        divergence,
        scale_by_tau_squared=scale,
        path=path,
        chunk_size=CHUNK,
        **kw,
    )
    (0.37 * loss).backward()  # grad_output ≠ 1, as after normalization
    return loss.detach(), hidden.grad, weight.grad, None if b is None else b.grad


def _assert_paths_agree(target, divergence, rtol_value=1e-5, **kw):
    ref = _run_kd("reference", target, divergence, **kw)
    fast = _run_kd("chunked", target, divergence, **kw)
    torch.testing.assert_close(fast[0], ref[0], rtol=rtol_value, atol=1e-6)
    for a, b in zip(fast[1:], ref[1:]):
        _close(a, b)
    return ref, fast


@pytest.mark.parametrize("name,params", DIVERGENCES, ids=[f"{n}{p}" for n, p in DIVERGENCES])
@pytest.mark.parametrize("scale", [True, False])
def test_dense_fast_equals_reference(name, params, scale):
    divergence = make_divergence(name, **params)
    assert closed_form_of(divergence) is not None  # exercised the closed form, not the fallback
    _assert_paths_agree(_dense_target(), divergence, scale=scale)


@pytest.mark.parametrize("name", sorted(FINITE_WITH_MASKED_TEACHER))
def test_dense_masked_teacher_vocabulary(name):
    """-inf teacher logits: zero-probability terms contribute exactly 0, never NaN, on both paths."""
    ref, _ = _assert_paths_agree(_dense_target(masked=True), make_divergence(name))
    assert torch.isfinite(ref[0])


@pytest.mark.parametrize("name,params", DIVERGENCES, ids=[f"{n}{p}" for n, p in DIVERGENCES])
def test_vocabulary_masked_for_both_models(name, params):
    """Entries both models mask (-inf logits) add exactly 0 and leave every gradient finite."""
    target, divergence = _dense_target(masked=True), make_divergence(name, **params)
    tau, w = _rows()
    outs = []
    for path in ("reference", "chunked"):
        hidden, weight, b = _student()
        with torch.no_grad():
            b[[3, 17, 60]] = float("-inf")
        loss = kd_loss_sum(hidden, Head(weight, b), target, tau, w, divergence, path=path, chunk_size=CHUNK)
        loss.backward()
        outs.append((loss.detach(), hidden.grad, weight.grad, b.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for a, b_ in zip(outs[1][1:], outs[0][1:]):
        _close(a, b_)
    assert float(outs[1][3][[3, 17, 60]].abs().max()) == 0.0


def test_reverse_kl_of_masked_teacher_is_inf_on_both_paths():
    target, divergence = _dense_target(masked=True), make_divergence("reverse_kl")
    for path in ("reference", "chunked"):
        hidden, weight, b = _student()
        tau, w = _rows()
        assert torch.isinf(kd_loss_sum(hidden, Head(weight, b), target, tau, w, divergence, path=path))


def test_identical_distributions_give_zero_loss_and_gradient():
    hidden, weight, b = _student()
    target = DenseTarget(hidden.detach().clone(), Head(weight.detach().clone(), b.detach().clone()))
    tau, w = _rows()
    for name, params in DIVERGENCES:
        hidden.grad = weight.grad = b.grad = None
        loss = kd_loss_sum(
            hidden, Head(weight, b), target, tau, w, make_divergence(name, **params), chunk_size=CHUNK
        )
        loss.backward()
        assert abs(float(loss.detach())) < 1e-4, name
        assert float(hidden.grad.abs().max()) < 1e-4, name


def test_unrecognized_divergence_uses_chunk_autograd():
    assert closed_form_of(hellinger) is None
    _assert_paths_agree(_dense_target(), hellinger)


def test_float_tau_and_no_bias():
    _assert_paths_agree(_dense_target(), make_divergence("jsd"), tau=2.0, bias=False)


def _sparse_targets():
    """Top-K (renormalize / to_gold / ghost) and RS-style targets, built by hand, K=7, with padding slots."""
    g = torch.Generator().manual_seed(3)
    teacher = torch.softmax(torch.randn(M, V, generator=g) * 2, -1)
    top_p, top_ids = teacher.topk(7, dim=-1)  # (M, 7)
    renorm = top_p / top_p.sum(-1, keepdim=True)
    gold = torch.randint(0, V, (M,), generator=g)
    to_gold = torch.cat([top_p, (1 - top_p.sum(-1, keepdim=True))], -1)
    to_gold_ids = torch.cat([top_ids, gold[:, None]], -1)  # gold may duplicate a top id: summed, as it should
    ghost_tail = 1 - top_p.sum(-1)
    ghost_tail[::5] = 0.0  # rows without a tail bucket
    # RS: 50 draws with replacement → unique ids with counts; rows padded to 12 slots (prob 0, duplicate ids)
    draws = torch.multinomial(teacher, 50, replacement=True, generator=g)  # (M, 50)
    rs_ids = torch.zeros(M, 12, dtype=torch.long)
    rs_probs = torch.zeros(M, 12)
    for i in range(M):
        uniq, counts = draws[i].unique(return_counts=True)
        k = min(12, len(uniq))
        rs_ids[i, :k], rs_probs[i, :k] = uniq[:k], counts[:k].float() / 50
        rs_ids[i, k:] = uniq[0]  # padding duplicates a present id
    importance = rs_probs * (0.5 + torch.rand(M, 12, generator=g))  # unnormalized importance weights
    padded = top_p.clone()
    padded[:, 4:] = 0.0  # padding slots inside a ghost target
    return {
        "topk_renormalize": SparseTarget(top_ids, renorm),
        "topk_to_gold": SparseTarget(to_gold_ids, to_gold),
        "topk_ghost": SparseTarget(top_ids, top_p, ghost_tail),
        "topk_ghost_padded": SparseTarget(top_ids, padded, 1 - padded.sum(-1)),
        "rs_counts": SparseTarget(rs_ids, rs_probs),
        "rs_importance": SparseTarget(rs_ids, importance),
        "rs_ghost_duplicate_padding": SparseTarget(rs_ids, rs_probs, torch.full((M,), 0.1)),
    }


@pytest.mark.parametrize("kind", list(_sparse_targets()))
def test_sparse_fast_equals_reference(kind):
    _assert_paths_agree(_sparse_targets()[kind], make_divergence("forward_kl"))


def test_sparse_with_all_ids_equals_dense_forward_kl():
    """Top-K with K = V (no tail) is the dense forward KL, on the fast path too."""
    target = _dense_target()
    tau, _ = _rows()
    with torch.no_grad():
        p = torch.softmax(target.logits() / tau[:, None], -1)  # (M, V)
    ids = torch.arange(V).expand(M, V)
    dense = _run_kd("chunked", target, make_divergence("forward_kl"))
    sparse = _run_kd("chunked", SparseTarget(ids, p), make_divergence("forward_kl"))
    torch.testing.assert_close(sparse[0], dense[0], rtol=1e-4, atol=1e-5)
    for a, b in zip(sparse[1:], dense[1:]):
        _close(a, b, rtol=1e-3)


def test_chunked_recompute_equals_reference():
    ref = _run_kd("reference", _dense_target(), make_divergence("jsd"))
    rec = _run_kd("chunked_recompute", _dense_target(), make_divergence("jsd"))
    torch.testing.assert_close(rec[0], ref[0], rtol=1e-5, atol=1e-6)
    for a, b in zip(rec[1:], ref[1:]):
        _close(a, b)


@pytest.mark.parametrize("chunk_size", [1, 16, 47, 1024])
def test_chunk_sizes(chunk_size):
    hidden, weight, b = _student()
    tau, w = _rows()
    target, divergence = _dense_target(), make_divergence("skew_reverse_kl")
    outs = []
    for path in ("reference", "chunked"):
        hidden.grad = weight.grad = b.grad = None
        loss = kd_loss_sum(
            hidden, Head(weight, b), target, tau, w, divergence, path=path, chunk_size=chunk_size
        )
        loss.backward()
        outs.append((loss.detach(), hidden.grad, weight.grad, b.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for a, b_ in zip(outs[1][1:], outs[0][1:]):
        _close(a, b_)


@pytest.mark.parametrize("path", ["chunked", "chunked_recompute", "reference"])
@pytest.mark.parametrize("sparse", [False, True])
def test_no_rows_gives_zero_loss_and_finite_zero_grads(path, sparse):
    hidden, weight, b = _student(m=0)
    target = (
        SparseTarget(torch.zeros(0, 4, dtype=torch.long), torch.zeros(0, 4)) if sparse else _dense_target(m=0)
    )
    loss = kd_loss_sum(
        hidden,
        Head(weight, b),
        target,
        torch.ones(0),
        torch.ones(0),
        make_divergence("forward_kl" if sparse else "jsd"),  # a sparse target takes forward KL only
        path=path,
    )
    loss.backward()
    assert float(loss.detach()) == 0.0
    assert hidden.grad is not None and hidden.grad.shape == (0, DS)
    for g in (weight.grad, b.grad):
        assert g is None or (torch.isfinite(g).all() and float(g.abs().max()) == 0.0)


@pytest.mark.parametrize("name", ["reverse_kl", "jsd", "tvd"])
def test_a_sparse_target_refuses_a_divergence_it_cannot_estimate(name):
    """Try-out 109, F9: a sparse target with reverse KL returned the forward-KL value without a word."""
    hidden, weight, b = _student(m=3)
    target = SparseTarget(torch.zeros(3, 2, dtype=torch.long), torch.full((3, 2), 0.5))
    with pytest.raises(ValueError, match="scored by forward KL only"):
        kd_loss_sum(hidden, Head(weight, b), target, 1.0, torch.ones(3), make_divergence(name))


def test_ce_fast_equals_reference_with_ignored_rows():
    g = torch.Generator().manual_seed(4)
    labels = torch.randint(0, V, (M,), generator=g)
    labels[::7] = -100
    outs = []
    for path in ("reference", "chunked"):
        hidden, weight, b = _student()
        loss = ce_loss_sum(hidden, Head(weight, b), labels, path=path, chunk_size=CHUNK)
        (0.37 * loss).backward()
        outs.append((loss.detach(), hidden.grad, weight.grad, b.grad))
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=1e-5, atol=1e-6)
    for a, b_ in zip(outs[1][1:], outs[0][1:]):
        _close(a, b_)


def test_tied_embedding_gradients_accumulate_into_one_parameter():
    """Head weight = input embedding: KD + CE through the fused head add into the same .grad."""
    g = torch.Generator().manual_seed(5)
    ids = torch.randint(0, V, (M,), generator=g)
    labels = torch.randint(0, V, (M,), generator=g)
    proj = torch.randn(DS, DS, generator=g) * 0.3
    target, (tau, w) = _dense_target(), _rows()
    grads = []
    for path in ("reference", "chunked"):
        emb = torch.nn.Embedding(V, DS)
        with torch.no_grad():
            emb.weight.copy_(torch.randn(V, DS, generator=torch.Generator().manual_seed(6)) * 0.4)
        hidden = torch.tanh(emb(ids) @ proj)  # (M, DS) a tiny "body"
        head = Head(emb.weight)  # tied
        kd = kd_loss_sum(
            hidden, head, target, tau, w, make_divergence("forward_kl"), path=path, chunk_size=CHUNK
        )
        ce = ce_loss_sum(hidden, head, labels, path=path, chunk_size=CHUNK)
        (kd / M + 0.5 * ce / M).backward()
        grads.append(emb.weight.grad)
    _close(grads[1], grads[0])


@pytest.mark.parametrize("weight_dtype", [torch.bfloat16, torch.float32])
def test_bf16_hidden_states(weight_dtype):
    """bf16 hidden states (and bf16 heads): fp32 math per chunk; gradients come back in the inputs' dtypes."""
    g = torch.Generator().manual_seed(7)
    hidden0 = torch.randn(M, DS, generator=g).bfloat16()
    weight0 = (torch.randn(V, DS, generator=g) * 0.4).to(weight_dtype)
    target = _dense_target(dtype=weight_dtype)
    tau, w = _rows()
    outs = []
    for path in ("reference", "chunked"):
        hidden, weight = hidden0.clone().requires_grad_(True), weight0.clone().requires_grad_(True)
        loss = kd_loss_sum(
            hidden, Head(weight), target, tau, w, make_divergence("jsd"), path=path, chunk_size=CHUNK
        )
        loss.backward()
        assert loss.dtype == torch.float32
        outs.append((loss.detach(), hidden.grad, weight.grad))
    assert outs[1][1].dtype == torch.bfloat16 and outs[1][2].dtype == weight_dtype
    torch.testing.assert_close(outs[1][0], outs[0][0], rtol=2e-2, atol=1e-3)
    for a, b in zip(outs[1][1:], outs[0][1:]):
        _close(a, b, rtol=2e-2)


def test_second_backward_raises_a_clear_error():
    hidden, weight, b = _student()
    tau, w = _rows()
    loss = kd_loss_sum(
        hidden, Head(weight, b), _dense_target(), tau, w, make_divergence("jsd"), chunk_size=CHUNK
    )
    loss.backward(retain_graph=True)
    with pytest.raises(RuntimeError, match="already backpropagated"):
        loss.backward()


def test_no_grad_mode_and_frozen_head():
    hidden, weight, b = _student()
    tau, w = _rows()
    target, divergence = _dense_target(), make_divergence("forward_kl")
    ref = kd_loss_sum(hidden, Head(weight, b), target, tau, w, divergence, path="reference")
    with torch.no_grad():
        value = kd_loss_sum(hidden, Head(weight, b), target, tau, w, divergence, chunk_size=CHUNK)
    assert not value.requires_grad
    torch.testing.assert_close(value, ref.detach(), rtol=1e-5, atol=1e-6)
    frozen = Head(weight.detach(), b.detach())
    kd_loss_sum(hidden, frozen, target, tau, w, divergence, chunk_size=CHUNK).backward()
    ref_hidden = hidden.grad.clone()
    hidden.grad = None
    kd_loss_sum(hidden, frozen, target, tau, w, divergence, path="reference").backward()
    _close(ref_hidden, hidden.grad)


def test_bad_arguments_are_clear_errors():
    hidden, weight, b = _student()
    tau, w = _rows()
    with pytest.raises(ValueError, match="loss path"):
        kd_loss_sum(hidden, Head(weight, b), _dense_target(), tau, w, make_divergence("jsd"), path="fast")
    with pytest.raises(ValueError, match="chunk_size"):
        ce_loss_sum(hidden, Head(weight, b), torch.zeros(M, dtype=torch.long), chunk_size=0)
    with pytest.raises(ValueError, match="beta"):
        closed_form_of(make_divergence("jsd", jsd_beta=1.5))


def test_compile_failure_falls_back_to_eager_with_a_warning(monkeypatch, caplog):
    def broken_compile(*args, **kwargs):
        raise RuntimeError("no compiler here")

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(chunked, "_COMPILED", {fn: chunked._MaybeCompiled(fn) for fn in chunked._COMPILED})
    with caplog.at_level(logging.WARNING, logger="ekd.losses.chunked"):
        fast = _run_kd("chunked", _dense_target(), make_divergence("jsd"), compile=True)
    assert "torch.compile of dense_kd_chunk failed" in caplog.text
    ref = _run_kd("reference", _dense_target(), make_divergence("jsd"))
    torch.testing.assert_close(fast[0], ref[0], rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_compiled_chunk_math_equals_reference(monkeypatch):
    """torch.compile of the per-chunk math (CPU inductor): same values and gradients (dense and sparse)."""
    monkeypatch.setattr(chunked, "_COMPILED", {fn: chunked._MaybeCompiled(fn) for fn in chunked._COMPILED})
    _assert_paths_agree(_dense_target(), make_divergence("jsd"), compile=True)
    assert not chunked._COMPILED[chunked.dense_kd_chunk].failed
    _assert_paths_agree(_sparse_targets()["topk_ghost"], make_divergence("forward_kl"), compile=True)
    assert not chunked._COMPILED[chunked.sparse_kd_chunk].failed


def test_auto_chunk_rows():
    """One fp32 (rows, V) buffer ≈ 128 MiB, a power of two in [64, 1024] (values quoted in docs)."""
    assert chunked.auto_chunk_rows(32_768) == 1024
    assert chunked.auto_chunk_rows(151_936) == 256
    assert chunked.auto_chunk_rows(100) == 1024 and chunked.auto_chunk_rows(10**8) == 64
    # a GPU: 4× the buffer (an H200 took half the head's time at 1024 rows than at 256, V=151,936)
    assert (
        chunked.auto_chunk_rows(151_936, "cuda") == 1024 and chunked.auto_chunk_rows(32_768, "cuda") == 1024
    )
    assert chunked.auto_chunk_rows(10**8, "cuda") == 64 and chunked.auto_chunk_rows(600_000, "cuda") == 256
