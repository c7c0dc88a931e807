"""A student trained with dropout on is named once by ``ekd distill`` (``ekd.models.dropout``)."""

from __future__ import annotations

import logging

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ekd.cli import main
from ekd.config import load_config
from ekd.models.dropout import active_dropout, dropout_fix
from ekd.models.lora import LoraStudent
from tiny import tiny_overrides, write_corpus


def _model(model_type: str, **kwargs):
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=320, **kwargs))


def test_active_dropout_reads_the_config_and_skips_heads_an_lm_does_not_use():
    gpt2 = _model("gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=64)  # HF defaults: 0.1 everywhere
    assert active_dropout(gpt2) == {"attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1}  # no summary_*
    llama = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    assert active_dropout(_model("llama", **llama)) == {}  # attention_dropout 0.0: off
    assert active_dropout(_model("llama", attention_dropout=0.2, **llama)) == {"attention_dropout": 0.2}
    assert (
        active_dropout(
            _model("gpt2", n_embd=16, n_layer=1, n_head=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
        )
        == {}
    )


def test_lora_adapter_dropout_is_named_with_its_key():
    """Try-out 8: ``model.lora_dropout=0.1`` (peft's dropout on the adapters' input, random per rank like any
    dropout) went unnamed; it is read off the adapters injected into the model, beside the config's."""
    pytest.importorskip("peft")
    llama = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2)
    for rate, expected in ((0.1, {"model.lora_dropout": 0.1}), (0.0, {})):
        model = _model("llama", **llama)
        LoraStudent.wrap(model, load_config(overrides=["model.lora_r=4", f"model.lora_dropout={rate}"]).model)
        assert active_dropout(model) == expected
    assert dropout_fix({"model.lora_dropout": 0.1}) == "model.lora_dropout=0"
    gpt2 = _model("gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=64)
    LoraStudent.wrap(gpt2, load_config(overrides=["model.lora_r=4", "model.lora_dropout=0.05"]).model)
    both = active_dropout(gpt2)
    assert both == {"attn_pdrop": 0.1, "embd_pdrop": 0.1, "resid_pdrop": 0.1, "model.lora_dropout": 0.05}
    assert dropout_fix(both) == "0 in its config.json and model.lora_dropout=0"


def test_distill_says_once_that_the_student_trains_with_dropout(tmp_path, caplog):
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    with caplog.at_level(logging.INFO):  # preset models (no dropout): nothing said
        assert main(["distill", *tiny_overrides(tmp_path, corpus, "llama"), "train.max_steps=1"]) == 0
    assert not [r for r in caplog.records if "trains with dropout" in r.getMessage()]
    gpt2 = tmp_path / "gpt2"  # a GPT-2 student (HF's default dropout) with that run's BPE tokenizer
    ids = dict(bos_token_id=0, eos_token_id=0)  # the BPE tokenizer's end of text
    _model("gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=64, **ids).save_pretrained(gpt2)
    AutoTokenizer.from_pretrained(tmp_path / "runs" / "llama" / "student").save_pretrained(gpt2)
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run = tiny_overrides(
            tmp_path, corpus, "gpt2", **{"model.student": gpt2, "model.tokenizer": "student"}
        )
        assert main(["distill", *run, "train.max_steps=1"]) == 0
    said = [r.getMessage() for r in caplog.records if "trains with dropout" in r.getMessage()]
    assert len(said) == 1 and "(attn_pdrop=0.1, embd_pdrop=0.1, resid_pdrop=0.1)" in said[0], said
