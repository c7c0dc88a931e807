"""Reused buffers in the chunked loops: the same bits as fresh temporaries, one allocation per call; passes
saved over the logits (no second max in ``log_softmax_``, no clamp or −inf scan before an entropy) keep the bits.

``ekd.losses.row_reductions`` computes each row block into one buffer per call (``out=`` ops) and the chunked
loops write every chunk's logits into one ``RowBuffer``; allocating per block or per chunk gave the same
values but paid for fresh pages each time (docs/benchmarks.md, "The selective step").
"""

from __future__ import annotations

import math

import pytest
import torch

from ekd.losses.divergences import forward_kl
from ekd.losses.head_loss import kd_loss_sum
from ekd.losses.matmul import RowBuffer
from ekd.losses.row_reductions import (
    block_rows,
    log_softmax_,
    row_dot,
    row_logsumexp,
    row_logsumexp_entropy,
    row_softmax,
)
from ekd.losses.targets import DenseTarget, Head
from ekd.train.token_stats import softmax_entropy

LOWEST = torch.finfo(torch.float32).min


def _per_block(z: torch.Tensor, fn) -> torch.Tensor:
    """``fn`` of each ~1 MiB row block with the stock kernels' temporaries (what the code did before)."""
    step = block_rows(z)
    return torch.cat([fn(z[r : r + step]) for r in range(0, z.shape[0], step)])


def _logits(m: int, v: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(m, v, generator=g) * 4
    z[0, : v // 3] = float("-inf")  # a masked vocabulary slice
    if m > 2:
        z[1] = float("-inf")  # a row with no mass at all
        z[2, 0], z[2, -1] = 3e38, -3e38  # finite logits whose difference overflows to −inf
    return z


@pytest.mark.parametrize("v", [5, 2048, 40_000, 151_936])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_row_reductions_equal_the_stock_kernels_block_by_block(m, v):
    z = _logits(m, v)
    a, b = torch.randn(m, v), torch.randn(m, v)
    assert torch.equal(row_logsumexp(z), _per_block(z, lambda x: torch.logsumexp(x, -1)))
    assert torch.equal(
        row_dot(a, b), _per_block(torch.stack([a, b], 1), lambda x: (x[:, 0] * x[:, 1]).sum(-1))
    )

    def stock_log_softmax(x):
        x = x - x.amax(-1, keepdim=True).nan_to_num(neginf=0.0)
        return x - torch.logsumexp(x, -1, keepdim=True)

    got = log_softmax_(z.clone())
    assert torch.equal(got.nan_to_num(nan=1.0), _per_block(z, stock_log_softmax).nan_to_num(nan=1.0))

    def stock_entropy(x):
        x = x.nan_to_num(neginf=LOWEST) if not bool(torch.isfinite(x.amax(-1)).all()) else x
        top = x.amax(-1, keepdim=True)
        shifted = (x - top).clamp_min(LOWEST)
        e = shifted.exp()
        total = e.sum(-1)
        return torch.stack(
            [top.squeeze(1) + total.log(), (total.log() - (e * shifted).sum(-1) / total).clamp_min(0)]
        )

    lse, entropy = row_logsumexp_entropy(z)
    step = block_rows(z)
    expected = torch.cat([stock_entropy(z[r : r + step]) for r in range(0, m, step)], dim=1)
    assert torch.equal(lse, expected[0]) and torch.equal(entropy, expected[1])


@pytest.mark.parametrize("v", [5, 2048, 40_000, 151_936])
@pytest.mark.parametrize("m", [1, 3, 17])
def test_softmax_entropy_is_the_one_exp_pass_with_its_probabilities(m, v):
    """The cache's statistics (``softmax_entropy``) are the online teacher's (``row_logsumexp_entropy``) bit for
    bit, with or without the probabilities; p = e / s of that pass (the floors at −inf logits), against float64;
    ``row_softmax`` (the online teacher's RS proposal) is that p."""
    for masked, z in enumerate(
        (torch.randn(m, v, generator=torch.Generator().manual_seed(1)) * 4, _logits(m, v))
    ):
        lse, entropy = row_logsumexp_entropy(z)
        p, lse_p, entropy_p = softmax_entropy(z)
        assert torch.equal(lse_p, lse) and torch.equal(entropy_p, entropy)

        def stock_probs(x):
            x = x.nan_to_num(neginf=LOWEST) if not bool(torch.isfinite(x.amax(-1)).all()) else x
            e = (x - x.amax(-1, keepdim=True)).clamp_min(LOWEST).exp()
            return e / e.sum(-1, keepdim=True)

        assert torch.equal(p, _per_block(z, stock_probs))
        assert torch.equal(row_softmax(z), p)  # the online RS proposal is the cache's p, without the entropy
        assert torch.equal(row_softmax(z.clone().requires_grad_()), p)
        p_graph = torch.empty_like(z)  # autograd records: the functional path, the same bits
        lse_g, entropy_g = row_logsumexp_entropy(z.clone().requires_grad_(), probs=p_graph)
        assert torch.equal(lse_g, lse) and torch.equal(entropy_g, entropy) and torch.equal(p_graph, p)
        finite = torch.isfinite(z).any(-1) & (z.amax(-1) < 1e38)  # rows with a defined softmax
        ref = torch.softmax(z.double(), -1)
        assert (p[finite].double() - ref[finite]).abs().max() < 1e-6
        assert (p[torch.isneginf(z) & finite.unsqueeze(1)] == 0).all()  # masked ids
        if masked and m > 2:  # the all −inf row: uniform, H = log V
            assert torch.equal(p[1], torch.full((v,), 1.0 / v)) and entropy[1].item() == pytest.approx(
                math.log(v)
            )


def test_row_buffer_reuses_its_storage_and_grows_on_demand():
    buf = RowBuffer()
    first = buf.take(8, 16, torch.device("cpu"))
    again = buf.take(5, 16, torch.device("cpu"))
    assert first.shape == (8, 16) and again.shape == (5, 16) and again.data_ptr() == first.data_ptr()
    bigger = buf.take(12, 16, torch.device("cpu"))
    assert bigger.shape == (12, 16) and bigger.dtype == torch.float32
    assert buf.take(3, 7, torch.device("cpu")).shape == (3, 7)  # another width: a new buffer


@pytest.mark.parametrize("bias", [False, True])
def test_head_into_a_reused_buffer_equals_a_fresh_product(bias):
    g = torch.Generator().manual_seed(1)
    head = Head(torch.randn(300, 24, generator=g), torch.randn(300, generator=g) if bias else None)
    buf = RowBuffer()
    with torch.no_grad():
        for rows in (64, 40):  # the second call reuses (a view of) the first's storage
            h = torch.randn(rows, 24, generator=g)
            assert torch.equal(head(h, buf), head(h))


def test_fused_head_over_many_chunks_equals_one_chunk():
    """Every chunk writes its logits (and the dense target's teacher logits) into the same buffers."""
    g = torch.Generator().manual_seed(2)
    n, d, v = 50, 16, 257
    hidden = torch.randn(n, d, generator=g, requires_grad=True)
    student = Head(torch.randn(v, d, generator=g, requires_grad=True))
    target = DenseTarget(torch.randn(n, 8, generator=g), Head(torch.randn(v, 8, generator=g)))
    tau, coef = torch.full((n,), 2.0), torch.rand(n, generator=g)
    results = []
    for chunk in (7, n):
        loss = kd_loss_sum(hidden, student, target, tau, coef, forward_kl, path="chunked", chunk_size=chunk)
        grads = torch.autograd.grad(loss, (hidden, student.weight))
        results.append((loss.detach(), *grads))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_row_reductions_still_differentiate_when_autograd_records():
    """The reused buffers are for no-grad passes; inputs that require grad take the stock (differentiable) ops
    (``log_softmax_`` overwrites its input and never differentiated: ``log_softmax`` does)."""
    z = torch.randn(5, 33, dtype=torch.float64, requires_grad=True)
    a, b = (
        torch.randn(5, 33, dtype=torch.float64, requires_grad=True),
        torch.randn(5, 33, dtype=torch.float64),
    )
    for got, expected in [
        (row_logsumexp(z), torch.logsumexp(z, -1)),
        (row_dot(a, b), (a * b).sum(-1)),
        (row_logsumexp_entropy(z)[1], -(torch.softmax(z, -1) * torch.log_softmax(z, -1)).sum(-1)),
    ]:
        torch.testing.assert_close(got, expected)
        w = torch.randn_like(expected)
        g_got = torch.autograd.grad((got * w).sum(), (z, a), allow_unused=True)
        g_exp = torch.autograd.grad((expected * w).sum(), (z, a), allow_unused=True)
        for x, y in zip(g_got, g_exp, strict=True):
            assert (x is None) == (y is None)
            if x is not None:
                torch.testing.assert_close(x, y)


@pytest.mark.parametrize("v", [40_000, 151_936])
def test_row_results_do_not_depend_on_the_block_or_the_thread_count(v):
    """Each row's bits are its own: alone, in a block of several, on 1 or 2 threads. torch sums a tensor with one
    output row by splitting it among threads (other bits, following the thread count); ``row_sum`` sums a
    one-row block as a stride-0 pair of rows. (Before: a row alone, or every row at V > 131,072, whose blocks
    were one row, took the split sum: a cache built on 8 threads and a run on 16 drew from other bits of p.)"""
    z = torch.randn(5, v, generator=torch.Generator().manual_seed(3)) * 4
    other = torch.randn(5, v, generator=torch.Generator().manual_seed(4))

    def every(x, y):
        lse, entropy = row_logsumexp_entropy(x)
        return [row_logsumexp(x), lse, entropy, row_softmax(x), log_softmax_(x.clone()), row_dot(x, y)]

    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        together = every(z, other)
        alone = [every(z[i : i + 1], other[i : i + 1]) for i in range(5)]
        torch.set_num_threads(1)
        one_thread = every(z, other)
    finally:
        torch.set_num_threads(threads)
    for k, value in enumerate(together):
        assert torch.equal(value, one_thread[k]), k
        assert torch.equal(value, torch.cat([a[k] for a in alone])), k
