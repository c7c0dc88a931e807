"""Per-row random streams: on-policy sampling and position draws depend on the row's sample, not its slot.

Under torchrun a row sits at another index of a smaller micro-batch on every rank; these tests put the same
rows in batches of other sizes and orders and require identical draws, and check the draws' distribution
against the float64 softmax.
"""

from __future__ import annotations

import math

import torch
from transformers import LlamaConfig, LlamaForCausalLM, LogitsProcessorList

from ekd.config import MethodConfig
from ekd.data.collate import Batch, shift_labels
from ekd.selection.draws import micro_batch_key, row_uniforms
from ekd.train.onpolicy import maybe_on_policy
from ekd.train.row_sampler import RowSampler

EOS, PAD, V, T = 1, 2, 61, 20


def _student() -> LlamaForCausalLM:
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(cfg).eval()


def _batch(rows: list[int]) -> Batch:
    """Packed text rows; row content and sample id are functions of the sample id alone."""
    ids = torch.stack([torch.randint(3, V, (T,), generator=torch.Generator().manual_seed(r)) for r in rows])
    target = torch.ones_like(ids, dtype=torch.bool)
    target[:, 0] = False
    return Batch(ids, shift_labels(ids, target), torch.ones_like(ids), torch.tensor(rows))


def test_uniforms_depend_on_the_sample_id_not_the_slot_or_count():
    a = row_uniforms(123, "s", torch.tensor([4, 9, 2]), 7)  # (3, 7)
    b = row_uniforms(123, "s", torch.tensor([2, 4]), 12)  # other slots, more draws
    assert a.dtype == torch.float64 and a.shape == (3, 7) and bool(((a >= 0) & (a < 1)).all())
    assert torch.equal(b[0, :7], a[2]) and torch.equal(b[1, :7], a[0])
    assert not torch.equal(row_uniforms(123, "t", torch.tensor([4]), 7)[0], a[0])  # streams are separate
    assert not torch.equal(row_uniforms(124, "s", torch.tensor([4]), 7)[0], a[0])  # keys are separate
    assert micro_batch_key(0, 3, 1) != micro_batch_key(0, 1, 3)


def test_row_sampler_draws_from_the_tempered_softmax():
    z = torch.randn(1, V, generator=torch.Generator().manual_seed(0), dtype=torch.float64) * 2
    z[0, 5] = -math.inf  # a masked id is never drawn
    temperature, n = 0.7, 20000
    u = row_uniforms(9, "on_policy", torch.arange(n), 1)  # (n, 1): n independent rows
    sampler = RowSampler(u, prompt_length=4, temperature=temperature)
    out = sampler(torch.zeros(n, 4, dtype=torch.long), z.float().expand(n, V))  # (n, V)
    assert bool((out.max(-1).values == 0).all()) and bool((torch.isinf(out).sum(-1) == V - 1).all())
    counts = torch.bincount(out.argmax(-1), minlength=V).double()
    p = torch.softmax(z / temperature, -1)[0]  # float64 reference
    assert counts[5] == 0
    sd = (n * p * (1 - p)).sqrt()
    assert bool(((counts - n * p).abs() <= 5 * sd + 2).all())


def test_a_temperature_too_small_for_float32_draws_the_maximum_not_the_last_id():
    """Try-out 155, F5: method.sampling_temperature=1e-45 made z / T_s overflow float32, softmax NaN, and the
    inverse CDF drew the last vocabulary id every time; from the row's maximum it is greedy."""
    z = torch.randn(8, V, generator=torch.Generator().manual_seed(1))
    z[:, 3] = -math.inf  # a masked id
    u = row_uniforms(5, "on_policy", torch.arange(8), 1)
    for temperature in (1e-45, 1e-30):
        out = RowSampler(u, prompt_length=2, temperature=temperature)(torch.zeros(8, 2, dtype=torch.long), z)
        assert torch.equal(out.argmax(-1), z.argmax(-1)), temperature


def test_on_policy_rows_are_the_same_in_any_batch_composition():
    student, method = _student(), MethodConfig(student_data_fraction=1.0, max_new_tokens=8, prompt_tokens=5)

    def on_policy(rows: list[int]) -> Batch:
        out, on = maybe_on_policy(_batch(rows), student, method, torch.Generator().manual_seed(3), EOS, PAD)
        assert on
        return out

    whole = on_policy([10, 11, 12, 13])  # one process: the global micro-batch
    rank0, rank1 = on_policy([10, 11]), on_policy([12, 13])  # two ranks: its halves
    reordered = on_policy([13, 10])
    for name in ("input_ids", "labels", "attention_mask"):
        w = getattr(whole, name)
        assert torch.equal(torch.cat([getattr(rank0, name), getattr(rank1, name)]), w), name
        assert torch.equal(getattr(reordered, name), w[[3, 0]]), name
    assert not torch.equal(whole.input_ids[:, 5:], _batch([10, 11, 12, 13]).input_ids[:, 5:])  # generated


def test_greedy_generate_with_the_sampler_follows_the_uniforms():
    """Through HF ``generate``: token t of row i is the inverse CDF of the student's softmax at u[i, t]."""
    student = _student()
    prompts = _batch([1, 2]).input_ids[:, :4]  # (2, 4)
    u = row_uniforms(5, "x", torch.tensor([1, 2]), 6)  # (2, 6)
    out = student.generate(
        input_ids=prompts,
        attention_mask=torch.ones_like(prompts),
        do_sample=False,
        logits_processor=LogitsProcessorList([RowSampler(u, prompt_length=4, temperature=1.0)]),
        max_new_tokens=6,
        min_new_tokens=6,
        pad_token_id=PAD,
        eos_token_id=None,
    )
    ids = prompts
    for t in range(6):  # naive reference: full forward, float64 softmax, inverse CDF
        with torch.no_grad():
            z = student(input_ids=ids).logits[:, -1].double()  # (2, V)
        cdf = torch.softmax(z, -1).cumsum(-1)
        nxt = torch.searchsorted(cdf, u[:, t : t + 1] * cdf[:, -1:], right=True)  # (2, 1)
        ids = torch.cat([ids, nxt], dim=1)
    assert torch.equal(out, ids)
