"""Packed documents attend only to themselves (data.document_attention=isolated), for every forward of the
project (teacher signal, student body, feature layers, evaluation, on-policy) and for sdpa and eager.

Right value: replacing the document packed before another one changes none of its logits (≤ 1e-6), and its
logits equal those of the document run alone, computed in float64 by the plain ``model(...)`` forward.
"""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from ekd.data import Document, collate, pack_documents
from ekd.data.collate import document_positions, model_inputs
from ekd.eval import evaluate
from ekd.models.load import build_preset, output_head
from ekd.teacher.online import OnlineTeacher
from ekd.train.step import student_hidden

EOS = "<|endoftext|>"
WORDS = ["a", "b", "c", "d", "e", "f", "g", "h"]
ATTENTION = ["sdpa", "eager"]


@pytest.fixture(scope="module")
def tok() -> PreTrainedTokenizerFast:
    vocab = {EOS: 0, "<unk>": 1, **{w: i + 2 for i, w in enumerate(WORDS)}}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token=EOS, pad_token=EOS, unk_token="<unk>")


def _model(preset: str, vocab: int, attn: str, seed: int):
    model = build_preset(preset, vocab, eos_token_id=0, seed=seed).eval()
    model.set_attn_implementation(attn)
    return model


DOC2 = Document("c d e f g h a b c d")
NEIGHBOURS = [Document("a b c"), Document("h g f e d c b a h g f")]  # two different first documents


def _blocks(tok, first: Document, mode: str, T: int = 32):
    return pack_documents([first, DOC2], tok, T, document_attention=mode)


def _doc2_rows(tok, first: Document) -> slice:
    start = len(tok(first.text, add_special_tokens=False)["input_ids"]) + 1  # text · EOS
    return slice(start, start + len(tok(DOC2.text, add_special_tokens=False)["input_ids"]) + 1)


def _teacher_logits(model, batch, vocab):
    signal = OnlineTeacher(model, vocab).signal(batch, set())
    return signal.head(signal.hidden[0])  # (T, V)


def _student_logits(model, batch, vocab, layer=None):
    hidden, features = student_hidden(model, batch, None, layer)
    return output_head(model, vocab)(hidden[0]), features  # (T, V)


def _reference(model, tok) -> torch.Tensor:
    """DOC2 · EOS alone, plain HF forward in float64 → (n, V)."""
    ids = tok(DOC2.text, add_special_tokens=False)["input_ids"] + [0]
    double = _copy_double(model)
    with torch.no_grad():
        return double(input_ids=torch.tensor([ids])).logits[0]


def _copy_double(model):
    import copy

    return copy.deepcopy(model).double()


@pytest.mark.parametrize("attn", ATTENTION)
def test_changing_document_one_changes_no_logit_of_document_two(tok, attn: str) -> None:
    vocab = len(tok)
    teacher = _model("llama-tiny", vocab, attn, seed=1)
    student = _model("llama-micro", vocab, attn, seed=2)
    ref_t, ref_s = _reference(teacher, tok), _reference(student, tok)
    outs = {}
    for mode in ("isolated", "packed"):
        for i, first in enumerate(NEIGHBOURS):
            batch = collate(_blocks(tok, first, mode), torch.tensor([0]))
            rows = _doc2_rows(tok, first)
            with torch.no_grad():
                s_logits, s_feat = _student_logits(student, batch, vocab, layer=1)
            outs[mode, i] = (
                _teacher_logits(teacher, batch, vocab)[rows],
                s_logits[rows],
                s_feat[0, rows],  # feature branch: hidden states of layer 1
            )
    for k in range(3):
        assert (outs["isolated", 0][k] - outs["isolated", 1][k]).abs().max() <= 1e-6
        assert (
            outs["packed", 0][k] - outs["packed", 1][k]
        ).abs().max() > 1e-3  # the fault, without isolation
    # and the isolated logits are those of the document alone (float64 reference)
    torch.testing.assert_close(outs["isolated", 1][0].double(), ref_t, atol=2e-5, rtol=0)
    torch.testing.assert_close(outs["isolated", 1][1].double(), ref_s, atol=2e-5, rtol=0)


def test_positions_restart_per_document_and_block() -> None:
    starts = torch.tensor([[0, 0, 1, 0, 1, 0], [1, 0, 0, 0, 0, 0]], dtype=torch.bool)
    assert document_positions(starts).tolist() == [[0, 1, 0, 1, 0, 1], [0, 1, 2, 3, 4, 5]]


def test_model_inputs_packed_keeps_mask_isolated_passes_positions(tok) -> None:
    packed = collate(_blocks(tok, NEIGHBOURS[0], "packed"), torch.tensor([0]))
    isolated = collate(_blocks(tok, NEIGHBOURS[0], "isolated"), torch.tensor([0]))
    assert packed.position_ids is None and set(model_inputs(packed)) == {"input_ids", "attention_mask"}
    kw = model_inputs(isolated)
    assert kw["attention_mask"] is None and kw["use_cache"] is False
    # "a b c" EOS | DOC2 (10 tokens) EOS | padding (its own document)
    assert kw["position_ids"][0, :4].tolist() == [0, 1, 2, 3]
    assert kw["position_ids"][0, 4:15].tolist() == list(range(11))
    assert kw["position_ids"][0, 15:].tolist() == list(range(32 - 15))


@pytest.mark.parametrize("attn", ATTENTION)
def test_eval_perplexity_of_a_document_is_independent_of_its_neighbours(tok, attn: str) -> None:
    """Σ NLL over [doc1, doc2] packed together = Σ NLL of doc1 alone + Σ NLL of doc2 alone (isolated only)."""
    vocab = len(tok)
    student = _model("llama-micro", vocab, attn, seed=3)
    with torch.no_grad():  # sharper attention than at init, so that a leak across documents shows in the NLL
        for p in student.parameters():
            p.mul_(3.0)

    def total_nll(docs, mode):
        blocks = pack_documents(docs, tok, 40, document_attention=mode)
        metrics, _ = evaluate(student, [collate(blocks, torch.tensor([0]))], vocab_size=vocab)
        return metrics["loss"] * metrics["tokens"], metrics["tokens"]

    first = NEIGHBOURS[1]
    for mode, equal in (("isolated", True), ("packed", False)):
        together, n = total_nll([first, DOC2], mode)
        apart = total_nll([first], mode)[0] + total_nll([DOC2], mode)[0]
        # each document's first token is not a target, so the counts agree
        assert n == total_nll([first], mode)[1] + total_nll([DOC2], mode)[1]
        assert abs(together - apart) <= 1e-5 if equal else abs(together - apart) > 0.1


def test_on_policy_prompt_is_the_last_document_only(tok) -> None:
    """Isolated on-policy: the continuation sampled for a row depends only on the document being continued."""
    from ekd.config import MethodConfig
    from ekd.train.onpolicy import maybe_on_policy, on_policy_generator

    vocab = len(tok)
    student = _model("llama-micro", vocab, "sdpa", seed=4)
    cfg = MethodConfig(student_data_fraction=1.0, max_new_tokens=6, prompt_tokens=8)
    rows = []
    for first in (Document("a b"), Document("h g")):  # same length: the prompt holds the same DOC2 tokens
        # the 8-token prompt holds the first document and the start of DOC2
        blocks = pack_documents([first, DOC2], tok, 24, document_attention="isolated")
        batch = collate(blocks, torch.tensor([0]))
        new, on = maybe_on_policy(batch, student, cfg, on_policy_generator(0, 0, 0), eos_id=0)
        assert on
        start = len(first.text.split()) + 1
        sample = new.input_ids[0, 8:14]
        eos = (sample == 0).nonzero()
        end = 8 + (int(eos[0]) + 1 if len(eos) else 6)  # the sample up to and including its first EOS
        rows.append((sample, new.position_ids[0, start:end], end - start))
    assert torch.equal(rows[0][0], rows[1][0])  # same continuation whatever came before
    for _, positions, n in rows:  # DOC2's positions continue through the sample
        assert positions.tolist() == list(range(n))


def test_flattened_batch_equals_the_batched_forward(tok) -> None:
    """Flash attention runs packed sequences as one (1, B·T) row: that route gives the batched result."""
    from ekd.models.body import body_outputs, needs_flat_batch

    model = _model("llama-tiny", len(tok), "sdpa", seed=5)
    blocks = pack_documents([*NEIGHBOURS, DOC2, *NEIGHBOURS], tok, 16)
    batch = collate(blocks, torch.arange(len(blocks)))  # (B, 16), rows begin mid-document
    assert len(blocks) >= 2
    with torch.no_grad():
        batched = body_outputs(model, batch, flatten=False, output_hidden_states=True)
        flat = body_outputs(model, batch, flatten=True, output_hidden_states=True)
    assert flat.last_hidden_state.shape == batched.last_hidden_state.shape
    assert (flat.last_hidden_state - batched.last_hidden_state).abs().max() <= 1e-6
    assert (flat.hidden_states[1] - batched.hidden_states[1]).abs().max() <= 1e-6
    assert not needs_flat_batch(model)
    model.config._attn_implementation = "flash_attention_2"
    assert needs_flat_batch(model)
