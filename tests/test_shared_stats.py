"""The selection's student statistics read off the CE pass (``StudentStatsObserver``) equal a separate pass.

``ekd.train.step`` takes the student entropy / log q(y) from the fused CE head's chunk logits over all valid
rows instead of a second student head GEMM; these tests hold that to bit-equality with ``token_stats`` and
check that a whole micro-batch selects the same positions and yields the same loss and gradients either way.
"""

from __future__ import annotations

import math

import pytest
import torch

from ekd.losses.head_loss import ce_loss_sum
from ekd.losses.logit_transform import LogitTransform
from ekd.losses.targets import Head
from ekd.train import step as step_mod
from ekd.train.token_stats import STUDENT_STATS, StudentStatsObserver, token_stats

V, D = 97, 16


def _labels(b: int, t: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, V, (b, t), generator=g)
    labels[0, :3] = -100  # a masked prefix and scattered masked positions
    labels[1, 5::4] = -100
    return labels


@pytest.mark.parametrize(
    "transform, bias, chunk",
    [
        (LogitTransform(), False, 7),
        (LogitTransform(), True, 64),
        (LogitTransform(multiplier=0.5, divisor=1.3), True, 5),
        (LogitTransform(softcap=3.0), False, 11),
    ],
)
def test_observer_equals_token_stats_bit_for_bit(transform, bias, chunk):
    torch.manual_seed(0)
    labels = _labels(2, 19, 1)  # (B, T)
    hidden = torch.randn(2, 19, D) * 2  # (B, T, D)
    head = Head(torch.randn(V, D) * 0.5, torch.randn(V) if bias else None, transform)
    expected = token_stats(STUDENT_STATS, labels, student_hidden=hidden, student_head=head, chunk_rows=chunk)
    observer = StudentStatsObserver(STUDENT_STATS, labels)
    rows = observer.rows  # (N,) flat valid positions
    h = hidden.reshape(-1, D)[rows].requires_grad_(True)  # (N, D)
    loss = ce_loss_sum(h, head, labels.reshape(-1)[rows], "chunked", chunk, observe=observer)
    got = observer.stats()
    for name in STUDENT_STATS:
        assert torch.equal(got[name], expected[name]), name
    # the CE value is the observer's −Σ log q(y) (same logits), and the observer left the logits intact
    torch.testing.assert_close(loss, -got["student_logp_gold"].sum(), rtol=1e-5, atol=1e-5)
    reference = ce_loss_sum(h, head, labels.reshape(-1)[rows], "chunked", chunk)
    assert torch.equal(loss, reference)


def test_observer_needs_student_stats_and_the_chunked_path():
    labels = _labels(2, 8, 2)
    with pytest.raises(ValueError, match="StudentStatsObserver"):
        StudentStatsObserver({"teacher_entropy"}, labels)
    observer = StudentStatsObserver({"student_entropy"}, labels)
    with pytest.raises(ValueError, match="observe needs path='chunked'"):
        ce_loss_sum(
            torch.randn(4, D),
            Head(torch.randn(V, D)),
            torch.zeros(4, dtype=torch.long),
            "reference",
            4,
            observe=observer,
        )


def test_same_logits_only_where_the_fused_head_multiplies_the_same_operands():
    w32, w16 = torch.randn(V, D), torch.randn(V, D).bfloat16()
    assert StudentStatsObserver.same_logits(torch.randn(3, D), Head(w32))
    assert StudentStatsObserver.same_logits(torch.randn(3, D).bfloat16(), Head(w32))
    assert StudentStatsObserver.same_logits(torch.randn(3, D).bfloat16(), Head(w16))
    assert not StudentStatsObserver.same_logits(torch.randn(3, D), Head(w16))  # Head rounds h to bf16 on CPU


def _micro_batch(method: str, overrides: list[str], monkeypatch, shared: bool):
    from transformers import LlamaConfig, LlamaForCausalLM

    from ekd.config import load_config
    from ekd.data.collate import Batch
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.method_parts import MethodParts

    if not shared:
        monkeypatch.setattr(step_mod, "_ce_gives_student_stats", lambda *a: False)
    else:
        monkeypatch.undo()
    cfg = load_config(None, [f"method={method}", "train.max_steps=10", "train.warmup_steps=0", *overrides])
    parts = MethodParts.build(cfg, total_steps=10)

    def model(width: int, seed: int):
        torch.manual_seed(seed)
        c = LlamaConfig(
            vocab_size=V,
            hidden_size=width,
            intermediate_size=2 * width,
            num_hidden_layers=1,
            num_attention_heads=2,
            num_key_value_heads=2,
            max_position_embeddings=64,
            tie_word_embeddings=False,
        )
        return LlamaForCausalLM(c)

    student = model(16, 0).train()
    teacher = OnlineTeacher(model(24, 1).eval(), V, 7)
    labels = _labels(2, 23, 3)  # (B, T)
    g = torch.Generator().manual_seed(4)
    batch = Batch(
        input_ids=torch.randint(0, V, (2, 23), generator=g),
        labels=labels,
        attention_mask=torch.ones(2, 23, dtype=torch.long),
        sample_ids=torch.arange(2),
    )
    n = float((labels != -100).sum())
    ctx = step_mod.StepContextData(
        step=0, total_steps=10, vocab_size=V, generator=torch.Generator().manual_seed(5), chunk_rows=7
    )
    calls = []
    real = step_mod.token_stats
    monkeypatch.setattr(step_mod, "token_stats", lambda *a, **k: calls.append(1) or real(*a, **k))
    out = step_mod.distill_micro_batch(batch, student, teacher, parts, n, n, ctx)
    out.loss.backward()
    grads = {k: p.grad.clone() for k, p in student.named_parameters() if p.grad is not None}
    return out, grads, len(calls)


@pytest.mark.parametrize(
    "method, overrides",
    [
        ("selective_kd", []),  # student-CE scores, CE on all tokens
        ("sekd", ["method.ce_weight=0.5", "method.divergence=jsd"]),  # student entropy
    ],
)
def test_micro_batch_selects_the_same_positions_with_the_same_loss_and_gradients(
    method, overrides, monkeypatch
):
    before, g_before, passes_before = _micro_batch(method, overrides, monkeypatch, shared=False)
    after, g_after, passes_after = _micro_batch(method, overrides, monkeypatch, shared=True)
    assert passes_before == 1 and passes_after == 0  # the second student head pass is gone
    assert before.selection.count > 0
    assert torch.equal(before.selection.rows, after.selection.rows)
    assert torch.equal(before.selection.weights, after.selection.weights)
    assert torch.equal(before.loss, after.loss)
    assert before.kd_sum == after.kd_sum and before.ce_sum == after.ce_sum
    assert g_before.keys() == g_after.keys()
    for k in g_before:
        assert torch.equal(g_before[k], g_after[k]), k


def test_without_ce_on_all_tokens_the_statistics_pass_stays(monkeypatch):
    """sekd has no CE term: its student entropy needs its own pass (the floor docs/benchmarks.md explains)."""
    out, _, passes = _micro_batch("sekd", [], monkeypatch, shared=True)
    assert passes == 1 and out.ce_sum == 0.0 and out.selection.count > 0


@pytest.mark.parametrize("scale", [1.0, 5.0, 30.0])
def test_one_exp_entropy_matches_float64_and_selects_as_float64(scale):
    """``row_logsumexp_entropy`` (the statistics pass) against float64, masked ids included; the top-20%
    positions by its entropy are those of the float64 entropy."""
    from ekd.losses.row_reductions import row_logsumexp_entropy

    g = torch.Generator().manual_seed(int(scale))
    z = torch.randn(64, 32_003, generator=g) * scale  # (m, V), an odd V
    z[3, :100] = float("-inf")
    lse, h = row_logsumexp_entropy(z)
    zd = z.double()
    lse64 = torch.logsumexp(zd, -1)  # (m,)
    logp = (zd - lse64[:, None]).nan_to_num(neginf=0.0)  # (m, V), 0 where p = 0
    h64 = -(logp.exp() * logp).sum(-1)
    torch.testing.assert_close(lse.double(), lse64, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(h.double(), h64, rtol=1e-5, atol=2e-6)
    assert torch.equal(h.topk(13).indices.sort().values, h64.topk(13).indices.sort().values)
    z[5] = float("-inf")  # a fully masked row: uniform over the finite floor, finite statistics
    lse, h = row_logsumexp_entropy(z)
    assert torch.isfinite(h).all() and h[5].item() == pytest.approx(math.log(32_003), rel=1e-6)
