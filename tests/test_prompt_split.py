"""Prompt/response rows that tokenize otherwise as two strings than joined are said in one warning per split,
from both data paths (in memory and the token store)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from ekd.config import load_config
from ekd.data.boundary import DocumentBoundary
from ekd.data.document import Document
from ekd.data.packing import pack_documents, token_chunks
from ekd.data.prompt_split import PromptBoundaryCheck
from ekd.train.prepare import prepare_data

SENTENCES = ["Answer: Cats sleep all day.", "Answer: Dogs run in the park."] * 50


@pytest.fixture(scope="module")
def bpe(tmp_path_factory: pytest.TempPathFactory) -> tuple[PreTrainedTokenizerFast, Path]:
    """A byte-level BPE trained on the sentences above, in which ' Cats' is one token; saved."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<eos>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    backend.train_from_iterator(SENTENCES, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<eos>", pad_token="<eos>")
    path = tmp_path_factory.mktemp("bpe")
    tok.save_pretrained(str(path))
    assert len(tok(" Cats", add_special_tokens=False)["input_ids"]) == 1
    return tok, path


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.WARNING and "prompt_field" in r.getMessage()
    ]


def test_a_word_split_across_the_boundary_is_said_with_its_pieces(bpe, caplog) -> None:
    tok, _ = bpe
    docs = [
        Document(" Cats sleep all day.", "rows.jsonl:1", prompt="Answer:"),  # splits where the tokenizer does
        Document("ts sleep all day.", "rows.jsonl:2", prompt="Answer: Ca"),  # splits ' Cats'
        Document(" run in the park.", "rows.jsonl:3", prompt="Answer: Dogs"),
        Document("ogs run in the park.", "rows.jsonl:4", prompt="Answer: D"),
    ]
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(docs, tok, block_length=8, split="train")
    (line,) = warnings_of(caplog)
    assert line.startswith("data.prompt_field/response_field: train: 2 of 4 prompt/response rows ")
    assert "first: rows.jsonl:2" in line and "' Ca' | 'ts'" in line and "joined ':' ' Cats'" in line, line
    assert "end each prompt where the tokenizer splits anyway" in line


def test_rows_that_split_where_the_tokenizer_does_say_nothing(bpe, caplog) -> None:
    tok, _ = bpe
    docs = [Document(" Cats sleep all day.", f"r:{i}", prompt="Answer:") for i in range(5)]
    docs.append(Document("no prompt here", "r:6"))
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(docs, tok, block_length=8, split="train")
    assert warnings_of(caplog) == []


def test_only_the_first_rows_are_encoded_again(bpe, caplog) -> None:
    tok, _ = bpe
    checks = PromptBoundaryCheck("train", limit=3)
    docs = [Document("ts sleep.", f"r:{i}", prompt="Answer: Ca") for i in range(10)]
    eos = tok.eos_token_id
    list(token_chunks(docs, tok, DocumentBoundary("eos", None, eos, eos), chunk=4, prompt_checks=checks))
    assert (checks.checked, checks.differing, checks.first) == (3, 3, "r:0")
    with caplog.at_level(logging.INFO, logger="ekd"):
        checks.report()
    assert "train: 3 of the first 3 prompt/response rows" in warnings_of(caplog)[0]


@pytest.mark.parametrize("store", [False, True])
def test_both_data_paths_say_it_once_per_split(bpe, tmp_path: Path, caplog, store: bool) -> None:
    _, tokenizer_dir = bpe
    rows = [{"q": "Answer: Ca", "a": "ts sleep all day."}] * 3 + [{"q": "Answer:", "a": " Dogs run."}] * 37
    source = tmp_path / "rows.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    overrides = {
        "run.output_dir": str(tmp_path / "runs"),
        "model.student": "preset:llama-micro",
        "model.teacher": "preset:llama-tiny",
        "model.tokenizer": str(tokenizer_dir),
        "data.source": str(source),
        "data.prompt_field": "q",
        "data.response_field": "a",
        "data.block_length": 16,
        "data.eval_fraction": 0,
        "data.store_dir": "auto" if store else "",
    }
    cfg = load_config(overrides=[f"{k}={v}" for k, v in overrides.items()])
    with caplog.at_level(logging.INFO, logger="ekd"):
        prepare_data(cfg, tmp_path / "run")
    (line,) = warnings_of(caplog)
    assert "train: 3 of 40 prompt/response rows" in line and "first: rows.jsonl:1" in line, line


def test_the_pieces_shown_reach_past_the_prompts_end(bpe, caplog) -> None:
    """Try-out 47, F3: a prompt ending three tokens into a word ('… answer: sl') was shown up to before the '|'."""
    tok, _ = bpe
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(
            [Document("eep all day.", "r:1", prompt="Answer: Cats sl")], tok, block_length=8, split="train"
        )
    (line,) = warnings_of(caplog)
    assert " | " in line.split("; joined")[0], line


def test_a_tokenizer_that_starts_every_string_with_a_space_is_judged_by_the_text_it_spells(caplog) -> None:
    """Review 106: a SentencePiece-style tokenizer (a prefix space before every string it starts) gave every
    response an id the literal concatenation lacked, so every row was counted. A row is counted where a token of
    its joined text spans the prompt's end: a response starting a word is fine, a word split across is not."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    backend.decoder = decoders.Metaspace(prepend_scheme="always")
    trainer = trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"])
    backend.train_from_iterator(SENTENCES, trainer)
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    good = [Document("Cats sleep all day.", f"r:{i}", prompt="Answer:") for i in range(3)]
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(good, tok, block_length=8, split="train")
    assert warnings_of(caplog) == []
    bad = Document("ts sleep all day.", "r:9", prompt="Answer: Ca")
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents([*good, bad], tok, block_length=8, split="train")
    (line,) = warnings_of(caplog)
    assert "train: 1 of 4 prompt/response rows" in line and "first: r:9" in line, line


def test_a_prompt_ending_in_a_space_splits_no_word_and_pieces_show_their_word_marks(caplog) -> None:
    """Try-out 48, F2: a SentencePiece-style tokenizer's '▁runs' starts at the prompt's trailing space, so every row
    of prompts ending in a space was counted; F3: its pieces showed no word boundary ('dog' 'cat')."""
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    backend.decoder = decoders.Metaspace(prepend_scheme="always")
    backend.train_from_iterator(
        SENTENCES, trainers.BpeTrainer(vocab_size=200, special_tokens=["<unk>", "</s>"])
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    trailing = [Document("Cats sleep all day.", f"r:{i}", prompt="Answer: ") for i in range(3)]
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(trailing, tok, block_length=8, split="train")
    assert warnings_of(caplog) == []
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents([Document("ts sleep all day.", "r:9", prompt="Answer: Ca")], tok, block_length=8)
    (line,) = warnings_of(caplog)
    assert "joined ' Answer:' ' Cats'" in line, line


def test_with_a_prefix_space_tokenizer_a_run_together_piece_is_no_split_word(caplog) -> None:
    """Try-out 49, F1: prompt 'green that' + response 'alpha …' trains '▁that ▁alpha' with a SentencePiece-style
    tokenizer; a piece of the run-together 'thatalpha' across the cut warned on 1 row of 24 of that shape. Only a
    token that begins a word ('▁green' across 'gr' | 'een') is a split word there."""
    texts = [
        "green that alpha beta data tall talk",
        "the cat sat on the mat with data",
        "that alpha is a beta",
    ]
    backend = Tokenizer(models.BPE(unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.Metaspace(prepend_scheme="always")
    backend.decoder = decoders.Metaspace(prepend_scheme="always")
    backend.train_from_iterator(
        texts * 50, trainers.BpeTrainer(vocab_size=150, special_tokens=["<unk>", "</s>"])
    )
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="</s>", unk_token="<unk>")
    joined = tok(["green alphathat beta"], add_special_tokens=False)["input_ids"][0]
    assert "at" in tok.convert_ids_to_tokens(joined)  # a piece across 'alpha' | 'that', beginning no word
    rows = [Document("that beta", f"r:{i}", prompt="green alpha") for i in range(3)]
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents(rows, tok, block_length=4, split="train")
    assert warnings_of(caplog) == []
    with caplog.at_level(logging.INFO, logger="ekd"):
        pack_documents([*rows, Document("een that", "r:x", prompt="the gr")], tok, block_length=4)
    (line,) = warnings_of(caplog)
    assert "1 of 4" in line and "first: r:x" in line, line
