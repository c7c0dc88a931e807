"""On-policy distillation (GKD): the coin, the prompt rule, the rebuilt batch, seeding, modes, end to end."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from ekd.config import MethodConfig, load_config
from ekd.data.collate import IGNORE_INDEX, Batch, collate, shift_labels
from ekd.train import onpolicy
from ekd.train.onpolicy import maybe_on_policy, on_policy_generator, prompt_lengths
from tiny import tiny_overrides, write_corpus

torch.set_num_threads(1)

EOS, PAD, V, T = 1, 2, 97, 24


@pytest.fixture(scope="module")
def student():
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=V,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=64,
        bos_token_id=0,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    return LlamaForCausalLM(cfg)


def _cfg(fraction=1.0, max_new=10, prompt=8, temperature=1.0) -> MethodConfig:
    return MethodConfig(
        student_data_fraction=fraction,
        max_new_tokens=max_new,
        prompt_tokens=prompt,
        sampling_temperature=temperature,
    )


def _packed_batch(B=3, seed=0) -> Batch:
    """Packed pretraining text: every token but the first is a target (as the collator builds it)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, V, (B, T), generator=g)
    target = torch.ones_like(ids, dtype=torch.bool)
    target[:, 0] = False
    return Batch(ids, shift_labels(ids, target), torch.ones_like(ids), torch.arange(10, 10 + B))


def _prompt_batch() -> tuple[Batch, list[int]]:
    """Rows laid out like packed prompt/response documents (prompt tokens and a document's first token untargeted).

    Row 0: EOS · 4-token prompt · response → prompt 5.  Row 1: 3-token prompt · response → prompt 3.
    Row 2: plain text starting on an EOS (one ignored label) → prompt_tokens.  Row 3: no target at all → unchanged.
    """
    ids = torch.randint(3, V, (4, T), generator=torch.Generator().manual_seed(1))
    ids[0, 0] = EOS
    ids[2, 0] = EOS
    target = torch.ones_like(ids, dtype=torch.bool)
    target[0, :5] = False
    target[1, :3] = False
    target[2, :2] = False
    target[3, :] = False
    return Batch(ids, shift_labels(ids, target), torch.ones_like(ids), torch.arange(4)), [5, 3, 8, 0]


def _expected(batch: Batch, outputs: dict[int, torch.Tensor], lengths: list[int], eos: int, pad: int):
    """Naive per-row reference of the on-policy batch from the generate outputs (rows of each prompt length)."""
    ids, labels, mask = batch.input_ids.clone(), batch.labels.clone(), batch.attention_mask.clone()
    seen: dict[int, int] = {}
    for r, p in enumerate(lengths):
        if p == 0:
            continue
        out = outputs[p][seen.get(p, 0)]
        seen[p] = seen.get(p, 0) + 1
        cont = out[p:].tolist()
        if eos in cont:
            cont = cont[: cont.index(eos) + 1]
        row = ids[r, :p].tolist() + cont + [pad] * (T - p - len(cont))
        ids[r] = torch.tensor(row)
        mask[r] = torch.tensor(
            [int(m) for m in batch.attention_mask[r, :p].tolist()]
            + [1] * len(cont)
            + [0] * (T - p - len(cont))
        )
        end = p + len(cont)  # one past the last real token
        for t in range(T):
            labels[r, t] = row[t + 1] if p <= t + 1 < end else IGNORE_INDEX
    return ids, labels, mask


def _spy_generate(monkeypatch):
    """Record each _generate call: prompt length, output, keyword arguments and the student's mode."""
    real = onpolicy._generate
    calls: list[dict] = []

    def spy(student, prompts, attention_mask, **kw):
        out = real(student, prompts, attention_mask, **kw)
        calls.append({"p": prompts.shape[1], "out": out, "training": student.training, **kw})
        return out

    monkeypatch.setattr(onpolicy, "_generate", spy)
    return calls


def _fake_generate(continuations: dict[int, list[list[int]]]):
    """A stand-in for _generate that appends fixed continuations (prompt length → one list per row)."""

    def fake(student, prompts, attention_mask, *, max_new_tokens, **kw):
        rows = continuations[prompts.shape[1]]
        n = max(len(c) for c in rows)
        assert n <= max_new_tokens
        tail = torch.tensor([c + [kw["pad_id"]] * (n - len(c)) for c in rows], dtype=prompts.dtype)
        return torch.cat([prompts, tail], dim=1)

    return fake


# -- the coin -----------------------------------------------------------------------------------------------


def test_fraction_zero_never_generates_nor_draws(student, monkeypatch):
    def boom(*a, **k):
        raise AssertionError("generate must not be called at λ=0")

    monkeypatch.setattr(onpolicy, "_generate", boom)
    monkeypatch.setattr(student, "generate", boom)
    batch = _packed_batch()
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        state = g.get_state()
        out, on = maybe_on_policy(batch, student, _cfg(fraction=0.0), g, EOS)
        assert out is batch and on is False
        assert torch.equal(g.get_state(), state)


def test_fraction_one_always_generates(student, monkeypatch):
    calls = _spy_generate(monkeypatch)
    for seed in range(5):
        _, on = maybe_on_policy(
            _packed_batch(), student, _cfg(fraction=1.0), torch.Generator().manual_seed(seed), EOS
        )
        assert on is True
    assert len(calls) == 5


def test_fraction_is_the_probability_of_an_on_policy_batch(student, monkeypatch):
    monkeypatch.setattr(onpolicy, "_generate", _fake_generate({8: [[5]] * 3}))
    hits = sum(
        maybe_on_policy(_packed_batch(), student, _cfg(fraction=0.3), on_policy_generator(0, s, 0), EOS)[1]
        for s in range(400)
    )
    assert 85 <= hits <= 155  # 400·0.3 = 120, ±~4σ


# -- the rebuilt batch ---------------------------------------------------------------------------------------


def test_real_student_batch_matches_naive_reference(student, monkeypatch):
    calls = _spy_generate(monkeypatch)
    batch = _packed_batch(B=5)
    out, on = maybe_on_policy(
        batch, student, _cfg(max_new=10, prompt=8), torch.Generator().manual_seed(3), EOS, pad_id=PAD
    )
    assert on and len(calls) == 1 and calls[0]["p"] == 8 and calls[0]["max_new_tokens"] == 10
    for name in ("input_ids", "labels", "attention_mask", "sample_ids"):
        a, b = getattr(out, name), getattr(batch, name)
        assert a.shape == b.shape and a.dtype == b.dtype, name
    assert torch.equal(out.sample_ids, batch.sample_ids)
    assert torch.equal(out.input_ids[:, :8], batch.input_ids[:, :8])  # prompt tokens unchanged
    ids, labels, mask = _expected(batch, {8: calls[0]["out"]}, [8] * 5, EOS, PAD)
    assert torch.equal(out.input_ids, ids)
    assert torch.equal(out.labels, labels)
    assert torch.equal(out.attention_mask, mask)
    assert (out.labels[:, :7] == IGNORE_INDEX).all() and (out.labels[:, -1] == IGNORE_INDEX).all()
    valid = out.labels != IGNORE_INDEX
    assert torch.equal(
        out.labels[:, :-1][valid[:, :-1]], out.input_ids[:, 1:][valid[:, :-1]]
    )  # shifted generated tokens


def test_labels_stop_after_the_first_generated_eos(student, monkeypatch):
    # row 0: EOS mid-way then junk (must be dropped); row 1: EOS first; row 2: no EOS (runs to the end); pad ≠ eos
    conts = {8: [[5, 6, EOS, 7, 8], [EOS, 9, 9, 9, 9], [10, 11, 12, 13, 14]]}
    monkeypatch.setattr(onpolicy, "_generate", _fake_generate(conts))
    batch = _packed_batch()
    out, _ = maybe_on_policy(
        batch, student, _cfg(max_new=5, prompt=8), torch.Generator().manual_seed(0), EOS, pad_id=PAD
    )
    ign = IGNORE_INDEX
    assert out.input_ids[0, 8:].tolist() == [5, 6, EOS] + [PAD] * (T - 11)
    assert out.labels[0, 7:].tolist() == [5, 6, EOS] + [ign] * (
        T - 10
    )  # the EOS is a target; nothing after it
    assert out.attention_mask[0].tolist() == [1] * 11 + [0] * (T - 11)
    assert out.input_ids[1, 8:].tolist() == [EOS] + [PAD] * (T - 9)
    assert out.labels[1, 7:].tolist() == [EOS] + [ign] * (T - 8)
    assert out.input_ids[2, 8:].tolist() == [10, 11, 12, 13, 14] + [PAD] * (T - 13)
    assert out.labels[2, 7:].tolist() == [10, 11, 12, 13, 14] + [ign] * (T - 12)  # last real token: no target
    assert out.attention_mask[2].tolist() == [1] * 13 + [0] * (T - 13)
    assert (out.labels[:, :7] == ign).all()
    # pad defaults to EOS
    out, _ = maybe_on_policy(batch, student, _cfg(max_new=5, prompt=8), torch.Generator().manual_seed(0), EOS)
    assert out.input_ids[1, 8:].tolist() == [EOS] * (T - 8) and out.labels[1, 8:].tolist() == [ign] * (T - 8)


def test_generation_that_stops_early_is_padded_to_the_block(student, monkeypatch):
    # every row ended with EOS, so generate returned fewer than max_new_tokens
    monkeypatch.setattr(onpolicy, "_generate", _fake_generate({8: [[5, EOS], [EOS], [6, 7, EOS]]}))
    batch = _packed_batch()
    out, _ = maybe_on_policy(
        batch, student, _cfg(max_new=10, prompt=8), torch.Generator().manual_seed(0), EOS, pad_id=PAD
    )
    assert out.input_ids.shape == (3, T)
    assert out.attention_mask.sum(1).tolist() == [10, 9, 11]
    assert out.labels[2, 7:].tolist() == [6, 7, EOS] + [IGNORE_INDEX] * (T - 10)
    assert (out.input_ids[0, 10:] == PAD).all()


def test_prompt_rule_groups_rows_by_prompt_length(student, monkeypatch):
    batch, lengths = _prompt_batch()
    assert prompt_lengths(batch.labels, 8).tolist() == lengths
    assert prompt_lengths(batch.labels, 100).tolist() == [5, 3, T - 1, 0]  # prompt_tokens capped at T − 1
    calls = _spy_generate(monkeypatch)
    out, on = maybe_on_policy(
        batch, student, _cfg(max_new=6, prompt=8), torch.Generator().manual_seed(0), EOS, pad_id=PAD
    )
    assert on and sorted(c["p"] for c in calls) == [3, 5, 8]
    ids, labels, mask = _expected(batch, {c["p"]: c["out"] for c in calls}, lengths, EOS, PAD)
    assert (
        torch.equal(out.input_ids, ids)
        and torch.equal(out.labels, labels)
        and torch.equal(out.attention_mask, mask)
    )
    assert (
        torch.equal(out.input_ids[3], batch.input_ids[3]) and (out.labels[3] == IGNORE_INDEX).all()
    )  # no target: unchanged


def test_an_isolated_prompt_ending_on_a_documents_eos_continues_that_document(student, monkeypatch):
    """Try-out 155, F1: with isolated documents, a prompt whose last token was a document's EOS had the student
    generate after that EOS inside the finished document (positions continuing it), and made the EOS position a
    target; the prompt ends before the EOS, the student continuing the document, as its own generate does."""
    ids = torch.randint(3, V, (1, T), generator=torch.Generator().manual_seed(3))
    ids[0, 7] = EOS  # document 0 is tokens 0..7, its EOS last; document 1 starts at 8
    target = torch.ones_like(ids, dtype=torch.bool)
    target[0, [0, 8]] = False  # a document's first token is no target
    positions = torch.cat([torch.arange(8), torch.arange(T - 8)])[None]  # (1, T)
    batch = Batch(
        ids, shift_labels(ids, target), torch.ones_like(ids), torch.arange(1), position_ids=positions
    )
    monkeypatch.setattr(onpolicy, "_generate", _fake_generate({7: [[5, 6, EOS]]}))
    out, on = maybe_on_policy(
        batch, student, _cfg(prompt=8), torch.Generator().manual_seed(0), EOS, pad_id=PAD
    )
    assert on and torch.equal(out.input_ids[0, :10], torch.cat([ids[0, :7], torch.tensor([5, 6, EOS])]))
    assert out.labels[0, :10].tolist() == [IGNORE_INDEX] * 6 + [
        5,
        6,
        EOS,
        IGNORE_INDEX,
    ]  # the prompt: no target
    assert out.position_ids[0, :10].tolist() == list(range(10))  # document 0 continued from its token 6


def test_a_row_cut_mid_response_answers_the_next_whole_prompt():
    """Try-out 71, F1: a row starting in the previous example's response took its first ``prompt_tokens`` tokens
    as the prompt, and the student generated over the rest of the next example's prompt (trained as targets).
    Its prompt now ends where the next example's does; plain text (boundaries: one ignored label each) and a
    prompt cut by the block's end keep the plain rule."""
    ids = torch.randint(3, V, (3, T), generator=torch.Generator().manual_seed(2))
    target = torch.ones_like(ids, dtype=torch.bool)
    ids[0, 3] = EOS  # row 0: response tail 0–3 (its EOS), next example: prompt 4–8, response from 9
    target[0, 4:9] = False
    target[1, 6] = target[1, 15] = False  # row 1: plain text, two document boundaries
    ids[2, 3] = EOS  # row 2: response tail, then a prompt the block's end cuts
    target[2, 4:] = False
    labels = shift_labels(ids, target)
    assert prompt_lengths(labels, 8).tolist() == [9, 8, 8]
    assert prompt_lengths(labels[:1], 8).tolist() == [9]  # a row's rule is its own


def test_new_tokens_are_capped_by_the_block(student, monkeypatch):
    calls = _spy_generate(monkeypatch)
    out, _ = maybe_on_policy(
        _packed_batch(), student, _cfg(max_new=64, prompt=T - 3), torch.Generator().manual_seed(0), EOS
    )
    assert calls[0]["max_new_tokens"] == 3 and out.input_ids.shape == (3, T)


# -- seeding, RNG, modes, gradients --------------------------------------------------------------------------


def test_same_generator_seed_same_batch_other_seed_other_batch(student):
    batch = _packed_batch()
    a, _ = maybe_on_policy(batch, student, _cfg(), on_policy_generator(0, 5, 1), EOS)
    torch.manual_seed(1234)  # the global RNG must not matter
    b, _ = maybe_on_policy(batch, student, _cfg(), on_policy_generator(0, 5, 1), EOS)
    c, _ = maybe_on_policy(batch, student, _cfg(), on_policy_generator(0, 6, 1), EOS)
    assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.input_ids, c.input_ids)


def test_sampling_temperature_reaches_generate(student, monkeypatch):
    calls = _spy_generate(monkeypatch)
    maybe_on_policy(_packed_batch(), student, _cfg(temperature=0.7), torch.Generator().manual_seed(0), EOS)
    assert calls[0]["temperature"] == 0.7


def test_global_rng_state_is_untouched(student):
    torch.manual_seed(7)
    state = torch.get_rng_state()
    maybe_on_policy(_packed_batch(), student, _cfg(), torch.Generator().manual_seed(0), EOS)
    assert torch.equal(torch.get_rng_state(), state)


def test_student_modes_and_generation_config_are_restored(student, monkeypatch):
    calls = _spy_generate(monkeypatch)
    saved_config = student.generation_config
    student.train()
    student.model.norm.eval()  # a submodule deliberately in eval stays so
    maybe_on_policy(_packed_batch(), student, _cfg(), torch.Generator().manual_seed(0), EOS)
    assert calls[-1]["training"] is False
    assert student.training and not student.model.norm.training
    assert all(m.training for n, m in student.named_modules() if n != "model.norm")
    assert student.generation_config is saved_config
    student.eval()
    maybe_on_policy(_packed_batch(), student, _cfg(), torch.Generator().manual_seed(0), EOS)
    assert not any(m.training for m in student.modules())
    student.train()


def test_a_models_own_generation_config_is_set_aside_also_under_a_peft_wrapper(student):
    """:func:`neutral_generation_config` swaps every config the model holds — a PEFT wrapper's base, whose own
    ``generate`` reads it — for defaults keeping the token ids, and puts each back (also on error)."""
    import copy

    peft = pytest.importorskip("peft")
    from transformers import GenerationConfig

    from ekd.models.generation import neutral_generation_config

    base = copy.deepcopy(student)
    own = GenerationConfig(
        max_new_tokens=20,
        do_sample=True,
        top_k=3,
        repetition_penalty=5.0,
        eos_token_id=EOS,
        suppress_tokens=[7],
    )
    base.generation_config = own
    wrapped = peft.get_peft_model(base, peft.LoraConfig(r=2, target_modules=["q_proj"]))
    with pytest.raises(RuntimeError), neutral_generation_config(wrapped):
        inside = base.generation_config
        assert inside is not own and inside.eos_token_id == EOS
        assert inside.suppress_tokens == [
            7
        ]  # ids that are no tokens (an export's padded rows) stay suppressed
        assert inside.max_new_tokens is None and not inside.do_sample
        assert inside.repetition_penalty in (None, 1.0) and inside.top_k in (None, 50)
        raise RuntimeError
    assert base.generation_config is own and own.max_new_tokens == 20


def test_no_gradient_flows_through_generation(student, monkeypatch):
    grad_in_forward: list[bool] = []
    real_forward = student.forward

    def forward(*args, **kwargs):
        grad_in_forward.append(torch.is_grad_enabled())
        return real_forward(*args, **kwargs)

    monkeypatch.setattr(student, "forward", forward)
    student.zero_grad(set_to_none=True)
    with torch.enable_grad():
        out, _ = maybe_on_policy(_packed_batch(), student, _cfg(), torch.Generator().manual_seed(0), EOS)
    assert grad_in_forward and not any(grad_in_forward)
    assert all(p.grad is None for p in student.parameters())
    assert all(
        t.grad_fn is None and not t.requires_grad for t in (out.input_ids, out.labels, out.attention_mask)
    )


# -- with the trainer's parts ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=24)


def test_on_policy_batch_goes_through_a_distillation_step(tmp_path, corpus):
    from ekd.train.method_parts import MethodParts
    from ekd.train.prepare import build_teacher_source, load_student, load_teacher, prepare_data
    from ekd.train.trainer import forward_backward

    cfg = load_config(
        overrides=tiny_overrides(tmp_path, corpus)
        + ["method=gkd", "method.max_new_tokens=8", "method.prompt_tokens=8"]
    )
    assert cfg.method.divergence == "jsd" and cfg.method.student_data_fraction == 0.5
    data = prepare_data(cfg, tmp_path / "prep")
    cpu = torch.device("cpu")
    student = load_student(cfg, data, cpu)
    teacher = build_teacher_source(cfg, data, cpu, load_teacher(cfg, data, cpu))
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    batch = collate(data.blocks["train"], torch.arange(4))
    on_cfg = _cfg(fraction=1.0, max_new=8, prompt=8)
    new, on = maybe_on_policy(batch, student, on_cfg, on_policy_generator(0, 0, 0), data.eos_id)
    assert on and (new.labels[:, :7] == IGNORE_INDEX).all()
    loss, sums, kd_count, _, _, _, _ = forward_backward(
        [new], student, teacher, parts, 0, cfg, data.vocab_size, None, tmp_path
    )
    assert math.isfinite(loss) and kd_count == float((new.labels != IGNORE_INDEX).sum()) > 0
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters())


def test_distill_gkd_end_to_end(tmp_path, corpus, monkeypatch, caplog):
    import logging

    from ekd.cli import main

    calls = _spy_generate(monkeypatch)
    overrides = tiny_overrides(tmp_path, corpus, "gkd", **{"eval.teacher": False})
    with caplog.at_level(logging.WARNING, logger="ekd"):
        rc = main(
            [
                "distill",
                *overrides,
                "method=gkd",
                "method.student_data_fraction=1.0",
                "method.max_new_tokens=8",
                "method.prompt_tokens=8",
                "method.ce_weight=0.1",
                "train.max_steps=2",
            ]
        )
    assert rc == 0
    assert "on the micro-batches the student generates, CE is taken on its own samples" in caplog.text
    rows = [
        json.loads(line) for line in (tmp_path / "runs" / "gkd" / "metrics.jsonl").read_text().splitlines()
    ]
    assert all(math.isfinite(r["train/loss"]) for r in rows if "train/loss" in r)
    assert len(calls) >= 2 and all(
        c["p"] == 8 and c["max_new_tokens"] == 8 for c in calls
    )  # λ=1: every micro-batch


def _turns(student, monkeypatch, continuations: list[list[int]], **kw) -> Batch:
    """The on-policy batch of ``_packed_batch()`` (prompt 8) when generation returns ``continuations``."""
    monkeypatch.setattr(onpolicy, "_generate", _fake_generate({8: continuations}))
    cfg = _cfg(max_new=10, prompt=8)
    return maybe_on_policy(_packed_batch(), student, cfg, torch.Generator().manual_seed(0), EOS, PAD, **kw)[0]


def test_a_turn_stops_at_any_end_of_sequence_id_of_the_student(student, monkeypatch):
    """Try-out 18: generation stopped at the document EOS only, so Gemma-3, Phi-3 and Llama-3 instruct students
    (whose generation_config lists the end-of-turn token beside EOS) generated past their turn to the budget. A
    row now ends at the first of every end-of-sequence id the student names, which is its last target."""
    from ekd.models.generation import stop_ids

    EOT = 3
    student.generation_config.eos_token_id = [EOS, EOT]
    try:
        assert stop_ids(student, EOS) == [EOS, EOT] and stop_ids(student, 9) == [9, EOS, EOT]
        out = _turns(student, monkeypatch, [[5, EOT, 6, 7], [EOT, 4], [6, 7, EOS, 8]])
        assert out.attention_mask.sum(1).tolist() == [10, 9, 11]  # prompt 8 + the turn up to its stop
        assert out.labels[0, 7:].tolist() == [5, EOT] + [IGNORE_INDEX] * (T - 9)
        assert out.labels[1, 7:].tolist() == [EOT] + [IGNORE_INDEX] * (T - 8)
        assert (out.input_ids[0, 10:] == PAD).all()
        monkeypatch.undo()
        calls = _spy_generate(monkeypatch)
        maybe_on_policy(
            _packed_batch(), student, _cfg(max_new=4, prompt=8), torch.Generator().manual_seed(0), EOS
        )
        assert calls and all(c["stops"] == [EOS, EOT] for c in calls)  # generate stops at each of them too
    finally:
        student.generation_config.eos_token_id = EOS


def test_the_templates_end_of_turn_stops_a_base_students_turn(student, monkeypatch):
    """Try-out 19: `end_of_turn` (the chat template's token, ekd.data.chat.ChatRenderer.end_of_turn_ids) joins the
    stops when the student's own config names only its EOS."""
    EOT = 3
    out = _turns(student, monkeypatch, [[5, EOT, 6], [EOT], [6, 7, 8]], end_of_turn=[EOT])
    assert out.attention_mask.sum(1).tolist() == [10, 9, 11]
    assert out.labels[0, 7:].tolist() == [5, EOT] + [IGNORE_INDEX] * (T - 9)


def test_a_prompt_that_fills_the_block_is_refused(tmp_path, corpus, capsys):
    """Try-out 54, F6: with data.block_length ≤ method.prompt_tokens + 1 a plain row's prompt is T − 1 tokens, so
    the student generated one token per row and max_new_tokens / sampling_temperature acted on nothing."""
    from ekd.cli import main

    for prompt in (31, 32, 100):
        overrides = tiny_overrides(tmp_path, corpus, "gkd")  # data.block_length=32
        rc = main(["distill", *overrides, "method=gkd", f"method.prompt_tokens={prompt}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert rc == 2 and len(err) == 1, err
        assert f"method.prompt_tokens={prompt} leaves at most one token" in err[0]
        # the bound (32 − 2), then a prompt with room for min(max_new_tokens, half the block): 32 − 1 − min(64, 16)
        assert "set method.prompt_tokens ≤ 30 (e.g. 15, which leaves room" in err[0], err[0]
    assert not (tmp_path / "runs" / "gkd").exists()
    # try-out 57, F7: a 2-token block was told to set prompt_tokens ≤ 1, then refused 1 alike
    over = tiny_overrides(tmp_path, corpus, "gkd") + [
        "method=gkd",
        "data.block_length=2",
        "method.prompt_tokens=1",
    ]
    assert main(["distill", *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "data.block_length=2 leaves at most one token" in err[0], err
    load_config(
        overrides=tiny_overrides(tmp_path, corpus) + ["method=gkd", "method.prompt_tokens=30"]
    )  # 2 tokens
    # λ = 0: nothing is generated, so nothing to refuse; prompt/response rows take their prompts from the data
    load_config(overrides=tiny_overrides(tmp_path, corpus) + ["method=kd", "data.block_length=16"])
    fields = ["data.prompt_field=q", "data.response_field=a"]
    load_config(overrides=tiny_overrides(tmp_path, corpus) + ["method=gkd", *fields])


@pytest.mark.parametrize(
    "overrides, message",
    [
        # try-out 61, F3: accepted, a teacher was loaded that no term read, and the student trained on its samples
        (
            ["method=ema_self_distill"],
            "but method.objective=ema_self_distill distills the student from its own EMA",
        ),
        (
            ["method=uncertainty"],
            "but method.objective=uncertainty distills the student from its initial copy",
        ),
        (["method=kd", "method.objective=ema_self_distill", "method.ce_weight=1"], "from its own EMA"),
        # try-out 63, F1: CE alone trained on the student's own samples (train/ce_tokens = generated targets)
        (["method=ce"], "but method.kd_weight=0 leaves no KD term"),
        (
            ["method=gkd", "method.kd_weight=0", "method.ce_weight=1"],
            "but method.kd_weight=0 leaves no KD term",
        ),
        # a cache holds no targets for generated tokens
        (
            ["method=gkd", "teacher.source=cache", "teacher.cache_dir=c"],
            "(a cache has no targets for student-gen",
        ),
        # try-out 155, F3: told to set method.kd_weight=0, refused next
        (["method=gkd", "teacher.source=none"], "set teacher.source=online (it scores the text the student"),
    ],
)
def test_on_policy_data_needs_a_teacher_to_score_it(tmp_path, corpus, capsys, overrides, message):
    from ekd.cli import main

    over = [*tiny_overrides(tmp_path, corpus, "onp"), *overrides, "method.student_data_fraction=0.5"]
    assert main(["distill", *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not (tmp_path / "runs" / "onp").exists()


def test_a_block_shorter_than_prompt_and_budget_is_logged(caplog):
    from ekd.train.onpolicy import log_generation_budget

    with caplog.at_level("INFO", logger="ekd.train.onpolicy"):
        log_generation_budget(_cfg(fraction=0.5, max_new=64, prompt=32), block_length=48)
        log_generation_budget(_cfg(fraction=0.5, max_new=16, prompt=32), block_length=48)  # fits: silent
        log_generation_budget(_cfg(fraction=0.0, max_new=64, prompt=32), block_length=48)  # off: silent
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "on-policy: rows without a prompt region generate at most 16 tokens (data.block_length=48 − "
        "method.prompt_tokens=32), not method.max_new_tokens=64"
    ]
    caplog.clear()  # try-out 121, F3: "at most 1 tokens (data.block_length=32 − method.prompt_tokens=32)"
    with caplog.at_level("INFO", logger="ekd.train.onpolicy"):
        log_generation_budget(_cfg(fraction=1.0, max_new=8, prompt=32), block_length=32)
    assert [r.getMessage() for r in caplog.records] == [
        "on-policy: rows without a prompt region generate at most 1 token (data.block_length=32 − "
        "method.prompt_tokens=32, taken as 31 to leave one to generate), not method.max_new_tokens=8"
    ]


def test_ce_beside_on_policy_data_is_said_to_train_on_the_students_own_samples():
    """Try-out 155, F2: method.ce_weight > 0 on an on-policy run took CE on the student's own samples on the
    micro-batches it generated, without a word (refused only where CE is the only term)."""
    from ekd.config.inert import ce_on_own_samples

    assert ce_on_own_samples(_cfg()) == ""  # gkd as published: no CE
    said = ce_on_own_samples(replace(_cfg(fraction=0.5), ce_weight=0.5))
    assert said.startswith("method.ce_weight=0.5 with on-policy data (method.student_data_fraction=0.5)"), (
        said
    )
    assert ce_on_own_samples(replace(_cfg(fraction=0.0), ce_weight=0.5)) == ""


def test_a_cache_of_an_on_policy_config_is_refused_for_its_on_policy_data_first(tmp_path, corpus, capsys):
    """Try-out 155, F3: `ekd cache` of a gkd config refused its dense target, then its divergence, then (last) its
    on-policy data — each fix leading to the next refusal; the decisive one comes first."""
    from ekd.cli import main

    over = [*tiny_overrides(tmp_path, corpus, "c"), "method=gkd", "method.prompt_tokens=8"]
    over.append(f"teacher.cache_dir={tmp_path / 'cache'}")
    assert main(["cache", *over]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1
        and "student_data_fraction > 0 needs teacher.source=online (a cache has no targets" in err[0]
    ), err
