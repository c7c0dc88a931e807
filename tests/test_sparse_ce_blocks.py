"""``sparse_kd_chunk`` and ``ce_chunk`` in cache-sized row blocks (``ekd.losses.sparse_ce_blocks``) give the same
bits as the whole-chunk code (what ran before, and still runs under torch.compile and on CUDA).

The whole-chunk code is reached by turning the block dispatch off (``logit_grads._blocked``). Bits are
compared as int32 views: NaN where NaN, +inf where +inf, and the sign of zero.
"""

from __future__ import annotations

import pytest
import torch

from ekd.losses import logit_grads
from ekd.losses.logit_grads import ce_chunk, sparse_kd_chunk

NEG_INF = float("-inf")
# blocks: 262 rows at V = 1,000 (the last one partial), 6 at 40,000 (+64), 2 at 151,936 (a trailing single row
# merged; with 1-row blocks T differs from the whole-chunk sum at about half the 33 rows), 8 at 32,768; (1, 5): one row
# (13, 40_000), (3 | 33, 151_936), (9, 32_768): a last block of one row, whose tail sum T must keep the bits it has
# in the whole chunk (row_reductions.row_sum)
SHAPES = [(1, 5), (7, 33), (600, 1000), (13, 40_000), (13, 40_064), (3, 151_936), (33, 151_936), (9, 32_768)]


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def _whole_chunk(monkeypatch, fn, *args):
    with monkeypatch.context() as patch:
        patch.setattr(logit_grads, "_blocked", lambda *_: False)
        return fn(*args)


def _assert_same_bits(monkeypatch, fn, z, *rest):
    z_blocked = z.clone()
    loss, grad = fn(z_blocked, *rest)
    assert grad.data_ptr() == z_blocked.data_ptr()  # the block path ran: gradient over the logits
    ref_loss, ref_grad = _whole_chunk(monkeypatch, fn, z.clone(), *rest)
    assert torch.equal(_bits(loss), _bits(ref_loss))
    assert torch.equal(_bits(grad), _bits(ref_grad))
    return loss, grad


def _sparse_inputs(m: int, v: int, seed: int, k: int = 14, spread: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, v, generator=g) * spread
    ids = torch.randint(0, v, (m, k), generator=g)
    ids[:, 1] = ids[:, 0]  # a duplicate id in every row
    probs = torch.rand(m, k, generator=g)
    probs[:, -2:] = 0.0  # padding slots
    probs = probs / probs.sum(-1, keepdim=True) * 0.9
    tail = torch.rand(m, generator=g) * 0.1
    tail[::3] = 0.0  # rows without a ghost tail
    tau = torch.rand(m, generator=g) * 1.5 + 0.5  # per-row τ in [0.5, 2)
    coef = torch.rand(m, generator=g) * tau**2
    return z, ids, probs, tail, tau, coef


@pytest.mark.parametrize("with_tail", [False, True])
@pytest.mark.parametrize("m,v", SHAPES)
def test_sparse_blocked_chunk_has_the_bits_of_the_whole_chunk(monkeypatch, m, v, with_tail):
    z, ids, probs, tail, tau, coef = _sparse_inputs(m, v, seed=m + v, spread=30.0 if v == 1000 else 4.0)
    _assert_same_bits(monkeypatch, sparse_kd_chunk, z, ids, probs, tail if with_tail else None, tau, coef)


@pytest.mark.parametrize("with_tail", [False, True])
def test_sparse_with_neg_inf_student_logits_and_unit_tau(monkeypatch, with_tail):
    """−inf student logits (at target ids too: +inf row values, as before) and τ = 1."""
    z, ids, probs, tail, _, coef = _sparse_inputs(70, 4160, seed=3)  # 63 rows per block
    z[:, [0, 17, 4159]] = NEG_INF
    z[66, ids[66, 2]] = NEG_INF  # a target id with q = 0
    tau = torch.ones(70)
    loss, _ = _assert_same_bits(
        monkeypatch, sparse_kd_chunk, z, ids, probs, tail if with_tail else None, tau, coef
    )
    assert loss == float("inf")


def test_sparse_row_of_only_padding_and_int32_ids(monkeypatch):
    z, ids, probs, tail, tau, coef = _sparse_inputs(11, 3000, seed=9)
    probs[4] = 0.0  # nothing sampled: only the tail term (or nothing)
    _assert_same_bits(monkeypatch, sparse_kd_chunk, z, ids.int(), probs.half(), tail, tau, coef)


@pytest.mark.parametrize("ignored", ["every other row", "last rows"])
@pytest.mark.parametrize("m,v", SHAPES)
def test_ce_blocked_chunk_has_the_bits_of_the_whole_chunk(monkeypatch, m, v, ignored):
    """Ignored labels (−100) in every block, or only in the last rows (padding): blocks without one skip q·1."""
    g = torch.Generator().manual_seed(m * v)
    z = torch.randn(m, v, generator=g) * 4.0
    labels = torch.randint(0, v, (m,), generator=g)
    rows = slice(None, None, 2) if ignored == "every other row" else slice(m - m // 3 - 1, None)
    labels[rows] = -100  # zero gradient there
    z[:, 0] = NEG_INF
    loss, grad = _assert_same_bits(monkeypatch, ce_chunk, z, labels)
    assert torch.equal(grad[rows], torch.zeros_like(grad[rows]))


def test_other_layouts_and_dtypes_take_the_whole_chunk_code():
    z = torch.randn(6, 300)
    assert logit_grads._blocked(z)
    assert not logit_grads._blocked(z.t().contiguous().t())
    assert not logit_grads._blocked(z.double())
    assert not logit_grads._blocked(z[None])


def test_no_rows():
    empty = torch.empty(0, 50)
    loss, grad = sparse_kd_chunk(
        empty.clone(),
        torch.zeros(0, 3, dtype=torch.long),
        torch.zeros(0, 3),
        None,
        torch.ones(0),
        torch.ones(0),
    )
    assert float(loss) == 0.0 and grad.shape == (0, 50)
    loss, grad = ce_chunk(empty.clone(), torch.zeros(0, dtype=torch.long))
    assert float(loss) == 0.0 and grad.shape == (0, 50)
