"""Forward KL, reverse KL and JSD of ``dense_kd_chunk`` in cache-sized row blocks (``ekd.losses.dense_kd_blocks``)
give the same bits as the whole-chunk code (what ran before, and still runs under torch.compile and on CUDA).

The whole-chunk code is reached by turning the block dispatch off (``logit_grads._blocked``), so the comparison
holds against whatever that code is. Bits are compared as int32 views: NaN where NaN, and the sign of zero.
JSD's ``torch.logaddexp`` rounds the scalar tail of each thread's range differently (``dense_kd_blocks``): its
bits are compared where V is a multiple of 64 (no tail with 1 or 2 threads), an ulp-level bound elsewhere.
"""

from __future__ import annotations

import pytest
import torch

from ekd.losses import logit_grads
from ekd.losses.logit_grads import dense_kd_chunk

# (kind, param); JSD at β = 1 is reverse KL
CASES = [("forward_kl", 0.0), ("reverse_kl", 0.0), ("jsd", 0.5), ("jsd", 0.1), ("jsd", 1.0)]
CASES += [("skew_reverse_kl", 0.1), ("skew_reverse_kl", 0.5), ("tvd", 0.0)]
NEG_INF = float("-inf")


def _bits(x: torch.Tensor) -> torch.Tensor:
    return x.contiguous().view(torch.int32)


def _whole_chunk(monkeypatch, *args):
    with monkeypatch.context() as patch:
        patch.setattr(logit_grads, "_blocked", lambda *_: False)
        return dense_kd_chunk(*args)


def _both(monkeypatch, zs, zt, tau, coef, kind, param):
    """(blocked, whole-chunk) results on copies of the same inputs; asserts the block path really ran."""
    blocked_zs = zs.clone()
    blocked = dense_kd_chunk(blocked_zs, zt.clone(), tau, coef, kind, param)
    assert blocked[1].data_ptr() == blocked_zs.data_ptr()  # gradient over the student logits
    return blocked, _whole_chunk(monkeypatch, zs.clone(), zt.clone(), tau, coef, kind, param)


def _inputs(m: int, v: int, seed: int, spread: float = 4.0):
    g = torch.Generator().manual_seed(seed)
    zs = torch.randn(m, v, generator=g) * spread
    zt = torch.randn(m, v, generator=g) * spread
    tau = torch.rand(m, generator=g) * 1.5 + 0.5  # per-row τ in [0.5, 2)
    coef = torch.rand(m, generator=g) * tau**2  # w·τ²
    return zs, zt, tau, coef


@pytest.mark.parametrize("kind,param", CASES)
@pytest.mark.parametrize(
    "m,v",
    [(1, 5), (7, 33), (600, 1000), (600, 1024), (13, 40_000), (13, 40_000 + 64), (3, 151_936), (9, 32_768)],
)
# blocks of 262 rows at V = 1,000 (the last one partial), 256 at 1,024, 6 at 40,000, 1 at 151,936 (the row split
# over threads)
def test_blocked_chunk_has_the_bits_of_the_whole_chunk(monkeypatch, kind, param, m, v):
    zs, zt, tau, coef = _inputs(m, v, seed=m + v, spread=30.0 if v == 1000 else 4.0)  # 30: underflowed p, q
    (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, zs, zt, tau, coef, kind, param)
    mixture = kind == "skew_reverse_kl" or kind == "jsd" and 0 < param < 1  # torch.logaddexp
    if mixture and (v % 64 or torch.get_num_threads() > 2):
        torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)
        torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6 * float(ref_grad.abs().max()))
        return
    assert torch.equal(_bits(loss), _bits(ref_loss))
    assert torch.equal(_bits(grad), _bits(ref_grad))


@pytest.mark.parametrize("kind,param", [("jsd", 0.5), ("jsd", 0.9), ("skew_reverse_kl", 0.1)])
def test_jsd_at_an_unaligned_vocabulary_differs_by_an_ulp_at_most_at_a_few_entries(monkeypatch, kind, param):
    """V = 50,257 (GPT-2): the logaddexp tails of the block calls and of the whole-chunk call fall on different
    entries; log m differs there by about an ulp, so at most 2·31 entries per call, each relatively ≲ 1e-5."""
    zs, zt, tau, coef = _inputs(40, 50_257, seed=8, spread=1.0)
    (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, zs, zt, tau, coef, kind, param)
    calls = 40 // 5 + 1  # 5 rows per block, plus the whole-chunk call
    assert int((grad != ref_grad).sum()) <= 62 * calls
    torch.testing.assert_close(grad, ref_grad, rtol=1e-4, atol=1e-6 * float(ref_grad.abs().max()))
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=0)


@pytest.mark.parametrize("kind,param", CASES[:4] + CASES[-2:])
@pytest.mark.parametrize("masked", ["teacher", "both"])
def test_masked_vocabulary_has_the_bits_of_the_whole_chunk(monkeypatch, kind, param, masked):
    """−inf columns (masked ids) in every row: exactly 0 in the gradient where both models mask them, finite
    values (reverse KL: +inf where only the teacher masks, as on the reference path)."""
    zs, zt, tau, coef = _inputs(70, 4160, seed=3)  # 63 rows per block: two blocks, the second partial
    cols = [0, 17, 4159]
    zt[:, cols] = NEG_INF
    if masked == "both":
        zs[:, cols] = NEG_INF
    (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, zs, zt, tau, coef, kind, param)
    assert torch.equal(_bits(loss), _bits(ref_loss))
    assert torch.equal(_bits(grad), _bits(ref_grad))
    if masked == "both":  # q = p = 0 there
        assert torch.equal(grad[:, cols], torch.zeros(70, len(cols)))
    if not (kind == "reverse_kl" and masked == "teacher"):
        assert torch.isfinite(loss) and torch.isfinite(grad).all()


@pytest.mark.parametrize("kind,param", CASES[:4] + CASES[-2:])
def test_a_masked_row_in_one_block_only(monkeypatch, kind, param):
    """−inf student logits in one block (its rows summed again with the zero-probability terms masked) and
    none in the others: values and gradients equal the whole chunk's, which masks every row. Only the sign of a
    zero gradient entry at an underflowed q may differ (masked: (0 − D)·0, unmasked: (log q/m − D)·0)."""
    zs, zt, tau, coef = _inputs(70, 4160, seed=4, spread=30.0)  # 63 rows per block
    zs[66, :5] = NEG_INF
    zt[66, :3] = NEG_INF
    (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, zs, zt, tau, coef, kind, param)
    assert torch.equal(_bits(loss), _bits(ref_loss))
    assert torch.equal(grad, ref_grad)  # equal values (+0 == −0)
    assert torch.equal(_bits(grad[64:]), _bits(ref_grad[64:]))  # the masked block: every bit
    if kind in ("forward_kl", "tvd"):
        assert torch.equal(_bits(grad), _bits(ref_grad))  # no log-ratio in the gradient


def test_all_neg_inf_teacher_row_is_nan_as_before(monkeypatch):
    """A teacher row with no finite logit has no distribution: NaN on both paths (not masked to 0)."""
    for kind, param in CASES[:3] + CASES[-2:]:
        zs, zt, tau, coef = _inputs(5, 300, seed=5)
        zt[2] = NEG_INF
        (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, zs, zt, tau, coef, kind, param)
        assert torch.isnan(loss) and torch.isnan(ref_loss)
        assert torch.equal(_bits(grad), _bits(ref_grad))


def test_unit_temperature_skips_the_scaling_with_the_same_bits(monkeypatch):
    zs, zt, _, coef = _inputs(20, 5000, seed=6)
    tau = torch.ones(20)
    for kind, param in CASES[:3] + CASES[-2:]:
        (loss, grad), (ref_loss, ref_grad) = _both(monkeypatch, zs, zt, tau, coef, kind, param)
        assert torch.equal(_bits(loss), _bits(ref_loss)) and torch.equal(_bits(grad), _bits(ref_grad))


def test_other_layouts_and_dtypes_take_the_whole_chunk_code():
    """Strided or non-fp32 logits are not blocked (a strided row would be summed in another order)."""
    zs, zt, tau, coef = _inputs(6, 300, seed=7)
    assert logit_grads._blocked(zs, zt)
    assert not logit_grads._blocked(zs.t().contiguous().t(), zt)
    assert not logit_grads._blocked(zs.double(), zt.double())
    assert not logit_grads._blocked(zs[None], zt[None])


def test_no_rows():
    empty = torch.empty(0, 50)
    for kind, param in CASES[:3]:
        loss, grad = dense_kd_chunk(empty.clone(), empty.clone(), torch.ones(0), torch.ones(0), kind, param)
        assert float(loss) == 0.0 and grad.shape == (0, 50)
