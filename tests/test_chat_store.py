"""Chat rows (``data.format=chat``) through the token store (``data.store_dir``).

The store must hold exactly what the in-memory chat path packs (labels on assistant tokens only, checked
against the independent rendering of ``test_chat_data.reference``), be reused by a second run without
rendering a row again, and be rebuilt when the chat template changes — the declared one, or the tokenizer's
own one under the same tokenizer path (the tokenizer hash does not cover the template).
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
import torch

from ekd.config import load_config
from ekd.data import IGNORE_INDEX, collate
from ekd.data import chat as chat_module
from ekd.data.tokenizer import train_bpe_tokenizer
from ekd.train.prepare import prepare_data
from test_chat_data import MARKED, PLAIN, SPECIAL, WORDS, conversations, reference, write_chat_jsonl
from tiny import tiny_overrides

T = 16
# MARKED with an extra end-of-turn token after every assistant turn: another rendering of the same rows.
DOUBLE_END = MARKED.replace("<|end|>{% endgeneration %}", "<|end|><|end|>{% endgeneration %}")


@pytest.fixture(scope="module")
def tok_dir(tmp_path_factory) -> Path:
    """A saved byte-level BPE with the role/turn markers as special tokens and no chat template."""
    rng = random.Random(0)
    tok = train_bpe_tokenizer([" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60)], 320)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    path = tmp_path_factory.mktemp("chat-tok")
    tok.save_pretrained(str(path))
    return path


def _cfg(tmp: Path, tok: Path, rows_file: Path, store: bool, **extra):
    over = {
        "data.format": "chat",
        "data.block_length": T,
        "data.eval_fraction": 0.0,
        "model.tokenizer": str(tok),
        **extra,
    }
    if store:
        over["data.store_dir"] = str(tmp / "store")
    return load_config([], tiny_overrides(tmp, rows_file, "c", **over))


def _stores(tmp: Path) -> list[Path]:
    return sorted(p for p in (tmp / "store").iterdir() if p.is_dir())


def _count_renders(monkeypatch) -> list[int]:
    calls: list[int] = []
    real = chat_module.ChatRenderer.__call__

    def counting(self, messages, doc_id="", tools=None):
        calls.append(1)
        return real(self, messages, doc_id, tools)

    monkeypatch.setattr(chat_module.ChatRenderer, "__call__", counting)
    return calls


def test_chat_rows_through_the_store_equal_memory_and_label_only_assistant_tokens(
    tmp_path, tok_dir, monkeypatch
):
    rows = conversations(24, seed=3)
    src = write_chat_jsonl(tmp_path / "chat.jsonl", rows)
    memory = prepare_data(
        _cfg(tmp_path, tok_dir, src, False, **{"data.chat_template": MARKED}), tmp_path / "r1"
    )
    calls = _count_renders(monkeypatch)
    stored = prepare_data(
        _cfg(tmp_path, tok_dir, src, True, **{"data.chat_template": MARKED}), tmp_path / "r2"
    )
    assert calls  # rendered once, to build the store
    a, b = memory.blocks["train"], stored.blocks["train"]
    n = len(a)
    assert len(b) == n
    for name in ("input_ids", "target_mask", "document_starts", "boundary_mask"):
        assert torch.equal(getattr(a, name)[:], getattr(b, name)[:]), name
    # labels only on assistant tokens, by the independent rendering
    stream, flags = [], []
    for r in rows:
        ids, f = reference(memory.tokenizer, r)
        stream += ids
        flags += f
    assert b.input_ids[:].flatten().tolist() == stream[: n * T]
    expected = torch.full((n, T), IGNORE_INDEX)
    for r in range(n):
        for t in range(T - 1):
            if flags[r * T + t + 1]:
                expected[r, t] = stream[r * T + t + 1]
    assert torch.equal(collate(b, torch.arange(n)).labels, expected)
    # a second run reuses the store: no row is rendered again
    calls.clear()
    again = prepare_data(
        _cfg(tmp_path, tok_dir, src, True, **{"data.chat_template": MARKED}), tmp_path / "r3"
    )
    assert calls == [] and len(_stores(tmp_path)) == 1
    assert again.blocks["train"].fingerprint() == a.fingerprint()
    # another declared template → a new store, equal to the in-memory path with that template
    other = prepare_data(
        _cfg(tmp_path, tok_dir, src, True, **{"data.chat_template": DOUBLE_END}), tmp_path / "r4"
    )
    other_mem = prepare_data(
        _cfg(tmp_path, tok_dir, src, False, **{"data.chat_template": DOUBLE_END}), tmp_path / "r5"
    )
    assert len(_stores(tmp_path)) == 2
    assert other.blocks["train"].fingerprint() == other_mem.blocks["train"].fingerprint() != a.fingerprint()


def test_the_tokenizers_own_template_is_part_of_the_store_key(tmp_path, tok_dir):
    """Same tokenizer path and vocabulary, its own template edited: the old store must not be reused."""
    import shutil

    from transformers import AutoTokenizer

    tok = tmp_path / "tok"
    shutil.copytree(tok_dir, tok)
    src = write_chat_jsonl(tmp_path / "chat.jsonl", conversations(24, seed=4))
    blocks = {}
    for template in (PLAIN, DOUBLE_END):
        own = AutoTokenizer.from_pretrained(str(tok))
        own.chat_template = template
        own.save_pretrained(str(tok))
        stored = prepare_data(_cfg(tmp_path, tok, src, True), tmp_path / f"s-{len(blocks)}")
        memory = prepare_data(_cfg(tmp_path, tok, src, False), tmp_path / f"m-{len(blocks)}")
        assert stored.blocks["train"].fingerprint() == memory.blocks["train"].fingerprint()
        blocks[template] = stored.blocks["train"].fingerprint()
    assert blocks[PLAIN] != blocks[DOUBLE_END] and len(_stores(tmp_path)) == 2


def test_a_glob_of_chat_jsonl_shards_reads_their_conversations(tmp_path, tok_dir):
    """data.format=chat with data.source='shards/*.jsonl': every shard's conversations, in memory and through the
    store alike, as one file holding them all; a text file matched by the glob is refused in one line."""
    from ekd.config import ConfigError

    rows = conversations(24, seed=5)
    whole = write_chat_jsonl(tmp_path / "whole.jsonl", rows)
    (tmp_path / "shards").mkdir()
    write_chat_jsonl(tmp_path / "shards" / "a.jsonl", rows[:10])
    write_chat_jsonl(tmp_path / "shards" / "b.jsonl", rows[10:])
    shards = tmp_path / "shards" / "*.jsonl"
    template = {"data.chat_template": MARKED}
    memory = prepare_data(_cfg(tmp_path, tok_dir, shards, False, **template), tmp_path / "r1")
    stored = prepare_data(_cfg(tmp_path, tok_dir, shards, True, **template), tmp_path / "r2")
    one_file = prepare_data(_cfg(tmp_path, tok_dir, whole, False, **template), tmp_path / "r3")
    for other in (stored, one_file):
        a, b = memory.blocks["train"], other.blocks["train"]
        assert len(a) == len(b) and a.fingerprint() == b.fingerprint()
        for name in ("input_ids", "target_mask", "document_starts"):
            assert torch.equal(getattr(a, name)[:], getattr(b, name)[:]), name
    (tmp_path / "shards" / "notes.txt").write_text("not a conversation")
    with pytest.raises(ConfigError, match=r"data.format=chat reads conversations .* matches .*notes.txt"):
        prepare_data(_cfg(tmp_path, tok_dir, tmp_path / "shards" / "*", False, **template), tmp_path / "r4")


def test_chat_eval_sources_through_the_store_are_read_as_chat(tmp_path, tok_dir):
    """A ``data.eval_sources`` JSONL of a chat run is chat rows in the store as in memory (labels on assistant
    tokens only), and its text files stay text in both."""
    src = write_chat_jsonl(tmp_path / "chat.jsonl", conversations(24, seed=5))
    held = write_chat_jsonl(tmp_path / "held.jsonl", conversations(8, seed=6))
    notes = tmp_path / "notes.txt"
    notes.write_text(" ".join(WORDS * 12) + "\n")
    extra = {"data.chat_template": MARKED, "data.eval_sources": f"{{held: {held}, notes: {notes}}}"}
    memory = prepare_data(_cfg(tmp_path, tok_dir, src, False, **extra), tmp_path / "r1")
    stored = prepare_data(_cfg(tmp_path, tok_dir, src, True, **extra), tmp_path / "r2")
    for name in ("held", "notes"):
        a, b = memory.blocks[name], stored.blocks[name]
        assert len(a) == len(b) > 0, name
        for field in ("input_ids", "target_mask"):
            assert torch.equal(getattr(a, field)[:], getattr(b, field)[:]), (name, field)
    assert memory.blocks["held"].target_mask[:].float().mean() < 0.8  # chat: user turns carry no labels
    assert (
        memory.blocks["notes"].target_mask[:].float().mean() > 0.95
    )  # text: every token but a document's first


def test_skipped_rows_are_one_line_per_split_and_an_all_skipped_window_is_no_error(
    tmp_path, tok_dir, monkeypatch, caplog
):
    """Try-out 18's reading of the code: the store tokenized a split window by window and each window reported
    and judged its own skipped rows, so a window whose rows the template all rejected ended the build ("no chat
    row is left") though the split had rows, and a warning came per window. Rows are counted per split over its
    windows: one warning line naming the split; the error only when the whole split has none (and then only the
    error, not the warning with the same words before it)."""
    import logging

    from ekd.config import ConfigError
    from ekd.data import store_build

    monkeypatch.setattr(store_build, "WINDOW_DOCUMENTS", 4)
    user_only = [{"role": "user", "content": "what is the value"}]
    rows = [user_only] * 4 + conversations(8, seed=5)  # the first window: no assistant turn at all
    src = write_chat_jsonl(tmp_path / "chat.jsonl", rows)
    with caplog.at_level(logging.WARNING, logger="ekd"):
        data = prepare_data(
            _cfg(tmp_path, tok_dir, src, True, **{"data.chat_template": MARKED}), tmp_path / "r"
        )
    said = [r.getMessage() for r in caplog.records if "skipped" in r.getMessage()]
    assert said == [said[0]] and said[0].startswith("data.format=chat: train rows: skipped 4 of 12"), said
    assert data.blocks["train"].num_targets > 0
    caplog.clear()
    src = write_chat_jsonl(tmp_path / "none.jsonl", [user_only] * 6)
    with (
        caplog.at_level(logging.WARNING, logger="ekd"),
        pytest.raises(ConfigError, match="no chat row is left"),
    ):
        prepare_data(
            _cfg(tmp_path / "b", tok_dir, src, True, **{"data.chat_template": MARKED}), tmp_path / "b" / "r"
        )
    assert not [r for r in caplog.records if "skipped" in r.getMessage()]  # the error alone says it
