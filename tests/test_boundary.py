"""Document boundaries follow each model's convention (data.separator): BOS where the tokenizer adds one, the
models' own end-of-document id (a list picks one), teacher and student must agree; explicit overrides."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers, processors
from transformers import GenerationConfig, LlamaConfig, PreTrainedTokenizerFast

from ekd.config import ConfigError, DataConfig
from ekd.data import Document, collate, document_boundary, pack_documents, resolve_boundary
from ekd.data.boundary import end_of_document_id, read_model_eos, tokenizer_adds_bos
from ekd.eval.metrics import StreamingMetrics

IGNORE = -100
VOCAB = {"<s>": 0, "</s>": 1, "<unk>": 2, "a": 3, "b": 4, "c": 5, "p": 6, "<|end|>": 7}


def _tokenizer(adds_bos: bool) -> PreTrainedTokenizerFast:
    """Word-level: <s>=0 </s>=1 <unk>=2 a=3 b=4 c=5 p=6 <|end|>=7; with ``adds_bos`` a Llama-3-style BOS template."""
    backend = Tokenizer(models.WordLevel(VOCAB, unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    if adds_bos:
        backend.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 0)])
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        additional_special_tokens=["<|end|>"],
    )


DOCS = [Document("a b"), Document("c", prompt="p")]


def _packed(tok, boundary, T):
    blocks = pack_documents(DOCS, tok, T, boundary=boundary)
    batch = collate(blocks, torch.tensor([0]))
    return blocks.input_ids[0].tolist(), batch.labels[0].tolist(), batch.boundary[0].tolist()


def test_tokenizer_without_bos_auto_uses_the_models_eos():
    tok = _tokenizer(adds_bos=False)
    assert not tokenizer_adds_bos(tok)
    boundary = resolve_boundary("auto", tok, {"teacher": 1, "student": None})
    assert (boundary.bos_id, boundary.eos_id) == (None, 1)
    ids, labels, ends = _packed(tok, boundary, 8)
    # a b </s> | p c </s> | pad pad
    assert ids == [3, 4, 1, 6, 5, 1, 1, 1]
    assert labels == [4, 1, IGNORE, 5, 1, IGNORE, IGNORE, IGNORE]
    assert ends == [False, True, False, False, True, False, False, False]


def test_tokenizer_with_bos_auto_prepends_it():
    tok = _tokenizer(adds_bos=True)
    assert tokenizer_adds_bos(tok)
    boundary = resolve_boundary("auto", tok, {"teacher": 1, "student": 1})
    assert (boundary.bos_id, boundary.eos_id) == (0, 1)
    ids, labels, _ = _packed(tok, boundary, 10)
    # <s> a b </s> | <s> p c </s> | pad pad: a is predicted from <s>; the prompt p is not a target
    assert ids == [0, 3, 4, 1, 0, 6, 5, 1, 1, 1]
    assert labels == [3, 4, 1, IGNORE, IGNORE, 5, 1, IGNORE, IGNORE, IGNORE]


def test_eos_list_picks_the_tokenizers_eos_if_listed_else_the_first():
    tok = _tokenizer(adds_bos=False)
    assert end_of_document_id([7, 1], 1) == 1
    assert end_of_document_id([7, 5], 1) == 7
    assert end_of_document_id(None, 1) == 1
    boundary = resolve_boundary("auto", tok, {"teacher": [7, 5], "student": 7})
    assert boundary.eos_id == 7
    ids, labels, _ = _packed(tok, boundary, 8)
    assert ids == [3, 4, 7, 6, 5, 7, 7, 7]
    assert labels == [4, 7, IGNORE, 5, 7, IGNORE, IGNORE, IGNORE]


def test_teacher_and_student_that_disagree_are_refused_in_one_line():
    tok = _tokenizer(adds_bos=False)
    with pytest.raises(ConfigError, match="data.separator=eos") as e:
        resolve_boundary("auto", tok, {"teacher": [7], "student": 1})
    assert "\n" not in str(e.value) and "'<|end|>'" in str(e.value)


def test_explicit_separators():
    tok = _tokenizer(adds_bos=True)
    eos = resolve_boundary("eos", tok, {"teacher": 7})
    assert (eos.bos_id, eos.eos_id) == (None, 1)
    ids, labels, _ = _packed(tok, resolve_boundary("bos_eos", _tokenizer(False)), 10)
    assert ids == [0, 3, 4, 1, 0, 6, 5, 1, 1, 1]
    ids, labels, ends = _packed(tok, resolve_boundary("none", tok), 6)
    # a b | p c | pad pad: no end-of-document target, the first token of each document is not a target
    assert ids[:4] == [3, 4, 6, 5] and labels[:4] == [4, IGNORE, 5, IGNORE]
    assert not any(ends)
    with pytest.raises(ConfigError, match="data.separator must be one of"):
        resolve_boundary("eol", tok)


def test_model_eos_read_from_generation_config_then_model_config(tmp_path: Path):
    both = tmp_path / "both"
    LlamaConfig(eos_token_id=1).save_pretrained(both)
    GenerationConfig(eos_token_id=[7, 1]).save_pretrained(both)
    assert read_model_eos(str(both), key="model.teacher") == [7, 1]
    only_model = tmp_path / "model"
    LlamaConfig(eos_token_id=7).save_pretrained(only_model)
    assert read_model_eos(str(only_model), key="model.teacher") == 7
    tok = _tokenizer(adds_bos=False)
    boundary = document_boundary(DataConfig(), tok, {"teacher": (str(both), ""), "student": (str(both), "")})
    assert boundary.eos_id == 1 and boundary.describe() == "auto:bos=-,eos=1"
    with pytest.raises(ConfigError, match="documents end differently"):
        document_boundary(DataConfig(), tok, {"teacher": (str(both), ""), "student": (str(only_model), "")})
    assert document_boundary(DataConfig(separator="eos"), tok, {"teacher": (str(only_model), "")}).eos_id == 1


def test_perplexity_with_and_without_boundary_targets():
    """ppl counts every target; ppl_no_boundary leaves the end-of-document ones out (float64 reference)."""
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6, 8, generator=gen)
    labels = torch.tensor([3, 1, 5, 1, IGNORE, 2])
    boundary = torch.tensor([False, True, False, True, False, False])
    m = StreamingMetrics(8)
    m.update(logits[:3], labels[:3], boundary=boundary[:3])
    m.update(logits[3:], labels[3:], boundary=boundary[3:])
    out = m.compute()
    nll = -torch.log_softmax(logits.double(), -1)[torch.arange(6), labels.clamp(min=0)]  # (6,)
    valid = labels != IGNORE
    assert out["boundary_tokens"] == 2
    assert out["ppl"] == pytest.approx(float(nll[valid].mean().exp()), rel=1e-6)
    assert out["ppl_no_boundary"] == pytest.approx(float(nll[valid & ~boundary].mean().exp()), rel=1e-6)


@pytest.mark.parametrize("adds_bos", [False, True])
def test_the_advice_for_models_that_end_differently_says_when_eos_drops_a_bos(tmp_path: Path, adds_bos):
    """Try-out 44, F7: the advised data.separator=eos frames documents with the EOS alone, dropping the BOS that
    the tokenizer adds (and auto prepends); the line said nothing of it, nor that bos_eos keeps it."""
    for name, eos in (("teacher", 1), ("student", 7)):
        LlamaConfig(eos_token_id=eos).save_pretrained(tmp_path / name)
    models = {role: (str(tmp_path / role), "") for role in ("teacher", "student")}
    with pytest.raises(ConfigError) as e:
        document_boundary(DataConfig(), _tokenizer(adds_bos), models)
    dropped = "it drops the BOS '<s>' the tokenizer adds, which data.separator=bos_eos keeps"
    assert "set data.separator=eos (the tokenizer's EOS '</s>' for both" in str(e.value)
    assert (dropped in str(e.value)) is adds_bos, str(e.value)
