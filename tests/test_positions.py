"""A run's blocks must fit its models' positions (``ekd.models.positions``): a learned position table (GPT-2,
OPT) has no row past its limit, so a longer ``data.block_length`` is refused in one line at load (try-out 16: an
IndexError in the first step, a device assert on a GPU); a rotary model is warned about positions it never saw."""

from __future__ import annotations

import json
import logging

import pytest
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from ekd.cli import main
from ekd.models.positions import has_learned_positions, position_limit
from tiny import tiny_overrides, write_corpus

VOCAB = 320
IDS = dict(bos_token_id=0, eos_token_id=0)  # the BPE tokenizer's end of text


def _model(model_type: str, **kwargs):
    return AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, vocab_size=VOCAB, **kwargs))


def _gpt2(positions: int):
    return _model("gpt2", n_embd=16, n_layer=1, n_head=2, n_positions=positions, **IDS, **NO_DROPOUT)


NO_DROPOUT = dict(resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
LLAMA = dict(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, **IDS)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A corpus, the BPE tokenizer of a one-step run on it, and model directories with that tokenizer."""
    tmp = tmp_path_factory.mktemp("positions")
    corpus = write_corpus(tmp / "corpus", n_docs=12)
    assert main(["-q", "distill", *tiny_overrides(tmp, corpus, "tok"), "train.max_steps=1"]) == 0
    tokenizer = AutoTokenizer.from_pretrained(tmp / "runs" / "tok" / "student")
    models = {
        "gpt2-16": _gpt2(16),
        "gpt2-64": _gpt2(64),
        "llama-16": _model("llama", max_position_embeddings=16, **LLAMA),
    }
    for name, model in models.items():
        model.save_pretrained(tmp / name)
        tokenizer.save_pretrained(tmp / name)
    return tmp, corpus


def test_limits_and_learned_tables():
    assert position_limit(_gpt2(16)) == ("n_positions", 16) and has_learned_positions(_gpt2(16))
    llama = _model("llama", max_position_embeddings=16, **LLAMA)
    assert position_limit(llama) == ("max_position_embeddings", 16) and not has_learned_positions(llama)
    opt = _model("opt", hidden_size=16, ffn_dim=32, num_hidden_layers=1, num_attention_heads=2,
                 word_embed_proj_dim=16, max_position_embeddings=16)  # fmt: skip
    assert position_limit(opt) == ("max_position_embeddings", 16) and has_learned_positions(opt)


@pytest.mark.parametrize("role", ["student", "teacher"])
def test_a_block_longer_than_a_learned_position_table_is_one_line(setup, capsys, role):
    tmp, corpus = setup
    model = tmp / "gpt2-16"
    args = tiny_overrides(tmp, corpus, f"long-{role}", **{f"model.{role}": model, "model.tokenizer": model})
    assert main(["distill", *args]) == 2  # data.block_length=32
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert f"model.{role}: GPT2LMHeadModel has 16 positions (n_positions=16), learned" in err
    assert (
        "a block of data.block_length=32 tokens runs past them" in err and "set data.block_length ≤ 16" in err
    )
    assert not (tmp / "runs" / f"long-{role}" / "metrics.jsonl").exists() or not any(
        "train/loss" in json.loads(line)
        for line in (tmp / "runs" / f"long-{role}" / "metrics.jsonl").read_text().splitlines()
    )


def test_a_learned_position_table_too_short_is_refused_before_the_data_is_read(setup, capsys, monkeypatch):
    """Try-out 135, F4: the refusal came after the whole corpus was tokenized and packed (minutes to hours on a
    real corpus), though config.json says it; now with the other checks of the models' files, before any data."""
    from ekd.data import packing

    tmp, corpus = setup
    model = tmp / "gpt2-16"
    packed = []
    monkeypatch.setattr(packing, "_encode", lambda *a, **k: packed.append(1) or [])
    args = tiny_overrides(tmp, corpus, "early", **{"model.teacher": model, "model.tokenizer": model})
    assert main(["distill", *args]) == 2
    err = capsys.readouterr().err.strip()
    assert "model.teacher: GPT2LMHeadModel has 16 positions (n_positions=16), learned" in err, err
    assert not packed  # no document was tokenized


def test_blocks_that_fit_train_and_a_rotary_model_past_its_positions_is_warned(setup, caplog):
    tmp, corpus = setup
    fits = tmp / "gpt2-64"
    args = tiny_overrides(tmp, corpus, "fits", **{"model.student": fits, "model.tokenizer": fits})
    assert main(["-q", "distill", *args, "train.max_steps=1"]) == 0
    rotary = tmp / "llama-16"
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):
        args = tiny_overrides(tmp, corpus, "rotary", **{"model.student": rotary, "model.tokenizer": rotary})
        assert main(["distill", *args, "train.max_steps=1"]) == 0
    said = [r.getMessage() for r in caplog.records if "never saw positions" in r.getMessage()]
    assert said == [
        "model.student: LlamaForCausalLM has 16 positions (max_position_embeddings=16) and data.block_length=32: "
        "it never saw positions past 16 in training (its positions extrapolate, which usually degrades it); "
        "set data.block_length ≤ 16 unless it is meant to run that long"
    ]


def test_a_composite_models_limit_and_stop_ids_are_its_language_models():
    """Review 126, S2/S3: a composite config (Gemma-3, Qwen2.5-VL) keeps ``max_position_embeddings`` and
    ``eos_token_id`` in its text config; reading the outer one, the position check found no limit (no warning past
    the trained positions) and on-policy turns lost the end-of-turn id."""
    from types import SimpleNamespace

    from transformers import Gemma3Config

    from ekd.models.generation import stop_ids
    from ekd.models.positions import position_limit

    config = Gemma3Config(text_config={"max_position_embeddings": 4096, "eos_token_id": [1, 106]})
    model = SimpleNamespace(config=config, generation_config=None)
    assert position_limit(model) == ("max_position_embeddings", 4096)
    assert stop_ids(model, 1) == [1, 106]
