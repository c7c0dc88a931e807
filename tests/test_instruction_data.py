"""Try-out 40 (instruction data): the training tail said, eval budgets spent on blocks with targets, one-line
refusals before the corpus is read (no template, a template that does not compile, a split of a single saved
Dataset, a directory of chat rows), and a template difference that is only the trained tokens named as such."""

# ruff: noqa: F811 — pytest fixtures imported from other test modules

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import pytest
import torch

from ekd.cli import main
from ekd.config import Config, ConfigError, DataConfig
from ekd.data import Document, load_documents, pack_documents
from ekd.data.chat_template import settle_chat_template
from ekd.data.eval_sample import spread_blocks, spread_indices
from ekd.train.prepare import prepare_data
from test_chat_data import MARKED, chat_tok, conversations, write_chat_jsonl  # noqa: F401 — the fixture
from test_data import word_tok  # noqa: F401 — the module fixture
from test_token_store import config, tokenizer_dir  # noqa: F401 — the module fixture
from tiny import tiny_overrides

README = Path(__file__).resolve().parents[1] / "README.md"


def _messages(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records]


# ---------------------------------------------------------------------------------------------------------
# F1: the training split's tail after its last full block
# ---------------------------------------------------------------------------------------------------------


def test_the_training_tail_is_said_with_its_targets(word_tok, caplog) -> None:
    """16 tokens in blocks of 6: the last 4 (the EOS of 'a b c', then 'x y' and its EOS) are never trained; 3 of
    them are targets ('x' starts a document: not one)."""
    docs = [Document(text="a b c p q x y z"), Document(text="a b c"), Document(text="x y")]  # 9 + 4 + 3 = 16
    with caplog.at_level(logging.INFO, logger="ekd"):
        blocks = pack_documents(docs, word_tok, block_length=6, allow_partial_block=False, split="train")
    assert len(blocks) == 2
    line = (
        "train: its last 4 tokens (3 targets; after its last full block of 6) are not trained, in any epoch"
    )
    assert any(m.startswith(line) and "a shorter data.block_length" in m for m in _messages(caplog))
    caplog.clear()
    with caplog.at_level(
        logging.INFO, logger="ekd"
    ):  # a cap (data.max_tokens) leaves the rest out on purpose
        pack_documents(docs, word_tok, block_length=6, allow_partial_block=False, max_blocks=1, split="train")
        pack_documents(
            docs[:1] + docs[2:], word_tok, block_length=6, allow_partial_block=False, split="train"
        )
    assert "not trained" not in caplog.text  # 9 + 3 = 12: no tail


def test_store_and_memory_say_the_same_training_tail_on_build_and_reuse(
    tmp_path, tokenizer_dir, caplog
) -> None:
    corpus = tmp_path / "c.jsonl"
    corpus.write_text(
        "".join(json.dumps({"text": "a b c p q x y z " * (i % 5 + 1)}) + "\n" for i in range(30))
    )
    said = {}
    for store, run in ((False, "r1"), (True, "r2"), (True, "r3")):  # r3 reuses the store r2 built
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ekd.data"):
            data = prepare_data(
                config(tmp_path, tokenizer_dir, corpus, store, eval_fraction=0), tmp_path / run
            )
        said[run] = [m for m in _messages(caplog) if m.startswith("train: its last")]
    train = data.blocks["train"]
    stream = sum(len(("a b c p q x y z " * (i % 5 + 1)).split()) + 1 for i in range(30))  # words + EOS
    tail = stream - len(train) * 16
    assert 0 < tail < 16 and said["r1"] == said["r2"] == said["r3"] and len(said["r1"]) == 1
    assert said["r1"][0].startswith(f"train: its last {tail} tokens (")


# ---------------------------------------------------------------------------------------------------------
# F2: eval sampling spends its budget on blocks that hold a target
# ---------------------------------------------------------------------------------------------------------


def _prompted_docs() -> list[Document]:
    """Documents whose long prompts (no loss) fill whole blocks of 4: 12 words of prompt, 3 of response."""
    return [Document(text="x y z", prompt=" ".join(["a", "b", "c"] * 4), doc_id=str(i)) for i in range(8)]


def test_eval_sampling_takes_only_blocks_that_hold_a_target(word_tok, caplog) -> None:
    pool = pack_documents(_prompted_docs(), word_tok, 4, split="e")  # 8 × 16 tokens: 32 blocks of 4
    held = [b for b in range(len(pool)) if pool.target_mask[b, 1:].any()]
    assert 0 < len(held) < len(pool)
    old = spread_indices(len(pool), 6).tolist()
    assert any(r not in held for r in old)  # the old sample spent budget on blocks that score nothing
    with caplog.at_level(logging.INFO, logger="ekd"):
        scored = spread_blocks(pool, 6, "e")
    rows = [held[i] for i in spread_indices(len(held), 6).tolist()]
    assert torch.equal(scored.input_ids, pool.input_ids[rows]) and len(scored) == 6
    assert scored.num_targets == sum(int(pool.target_mask[r, 1:].sum()) for r in rows)
    assert bool(scored.target_mask[:, 1:].any(dim=1).all())
    empty = len(pool) - len(held)
    line = f"e: scoring 6 of its 32 blocks, spread evenly over the {len(held)} that hold a target ({empty} hold none;"
    assert any(m.startswith(line) for m in _messages(caplog)), caplog.text
    assert scored.fingerprint() == spread_blocks(pool, 6).fingerprint()  # deterministic
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ekd"):
        every = spread_blocks(
            pool, len(held) + 1, "e"
        )  # fewer blocks hold a target than the budget: all of them
    assert torch.equal(every.input_ids, pool.input_ids[held])
    line = f"e: scoring {len(held)} of its 32 blocks, all {len(held)} that hold a target ({empty} hold none;"
    assert any(m.startswith(line) for m in _messages(caplog)), caplog.text  # try-out 159, F4


# ---------------------------------------------------------------------------------------------------------
# F3: prompt and response are tokenized apart, as README says
# ---------------------------------------------------------------------------------------------------------


def test_prompt_and_response_are_tokenized_apart_and_readme_says_so(chat_tok) -> None:
    chat_tok.chat_template = None
    doc = Document(text="urned sorted", prompt="hello there ret")  # 'return' split across the boundary
    blocks = pack_documents([doc], chat_tok, 64)
    apart = chat_tok("hello there ret", add_special_tokens=False)["input_ids"]
    apart += chat_tok("urned sorted", add_special_tokens=False)["input_ids"]
    whole = chat_tok("hello there returned sorted", add_special_tokens=False)["input_ids"]
    assert apart != whole
    assert blocks.input_ids[0, : len(apart)].tolist() == apart
    text = " ".join(README.read_text().split())
    assert "The prompt and the response are tokenized as two separate strings" in text
    assert "a word split across the boundary" in text


# ---------------------------------------------------------------------------------------------------------
# F4: templates that render the same tokens but train others
# ---------------------------------------------------------------------------------------------------------


def test_templates_that_differ_only_in_the_trained_tokens_are_said_so(tmp_path, chat_tok) -> None:
    docs = load_documents(
        str(write_chat_jsonl(tmp_path / "c.jsonl", conversations(4))), DataConfig(format="chat")
    )
    teacher, student = copy.deepcopy(chat_tok), copy.deepcopy(chat_tok)
    teacher.chat_template = MARKED
    student.chat_template = MARKED.replace("<|end|>{% endgeneration %}", "{% endgeneration %}<|end|>")
    chat_tok.chat_template = MARKED
    cfg = Config()
    cfg.data = DataConfig(format="chat")
    with pytest.raises(ConfigError) as e:
        settle_chat_template(cfg, chat_tok, docs, {"teacher": teacher, "student": student})
    message = str(e.value)
    ours = teacher.apply_chat_template(
        [m.as_dict() for m in docs[0].messages], return_dict=True, return_assistant_tokens_mask=True
    )["assistant_masks"]
    n_assistant = sum(m.role == "assistant" for m in docs[0].messages)
    assert "renders row c.jsonl:1 to the same tokens as the run tokenizer's but trains others" in message
    assert f"{sum(ours) - n_assistant} assistant tokens against {sum(ours)}" in message  # <|end|> each turn
    assert "unlike" not in message and "\n" not in message and "data.chat_template_from" in message


# ---------------------------------------------------------------------------------------------------------
# F5: a split of a single saved Dataset
# ---------------------------------------------------------------------------------------------------------


def test_a_split_of_a_single_saved_dataset_is_one_line(tmp_path) -> None:
    import datasets

    rows = {"text": ["a b c", "x y z", "p q"]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "one"))
    datasets.DatasetDict({"test": datasets.Dataset.from_dict(rows)}).save_to_disk(str(tmp_path / "dict"))
    with pytest.raises(
        ConfigError, match="data.hf_split=test: hf:.*one is a single Dataset .* no splits"
    ) as e:
        load_documents(f"hf:{tmp_path / 'one'}", DataConfig(hf_split="test"))
    assert "\n" not in str(e.value)
    assert len(load_documents(f"hf:{tmp_path / 'one'}", DataConfig())) == 3  # the default: every row
    assert len(load_documents(f"hf:{tmp_path / 'dict'}", DataConfig(hf_split="test"))) == 3


# ---------------------------------------------------------------------------------------------------------
# F6, F7: refused before the corpus is read
# ---------------------------------------------------------------------------------------------------------


def _never_read(monkeypatch) -> None:
    import ekd.data
    from ekd.data import store_build

    def refuse(*args, **kwargs):
        raise AssertionError("the corpus was read before the refusal")

    def refuse_rows(*args, **kwargs):  # a generator, as train_documents: reading starts at the first row
        yield refuse()

    monkeypatch.setattr(ekd.data, "load_splits", refuse)
    monkeypatch.setattr(store_build, "train_documents", refuse_rows)


@pytest.mark.parametrize("store_dir", ["", "auto"], ids=["memory", "store"])
def test_a_tokenizer_without_a_template_is_refused_before_the_corpus_is_read(
    tmp_path, chat_tok, capsys, monkeypatch, store_dir
) -> None:
    chat_tok.chat_template = None
    chat_tok.save_pretrained(str(tmp_path / "tok"))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", conversations(8))
    _never_read(monkeypatch)
    overrides = tiny_overrides(
        tmp_path,
        data,
        "nochat",
        **{"data.format": "chat", "model.tokenizer": tmp_path / "tok", "data.store_dir": store_dir},
    )
    assert main(["distill", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "has no chat template; set data.chat_template" in err[0], err


@pytest.mark.parametrize("store_dir", ["", "auto"], ids=["memory", "store"])
@pytest.mark.parametrize("as_file", [False, True], ids=["text", "file"])
def test_a_template_that_does_not_compile_is_one_line_before_the_corpus_is_read(
    tmp_path,
    chat_tok,
    capsys,
    monkeypatch,
    store_dir,
    as_file,
) -> None:
    chat_tok.chat_template = MARKED
    chat_tok.save_pretrained(str(tmp_path / "tok"))
    data = write_chat_jsonl(tmp_path / "chat.jsonl", conversations(8))
    template = "{% for m in messages %}\n{{ m.content }"
    if as_file:
        (tmp_path / "bad.jinja").write_text(template)
        template = str(tmp_path / "bad.jinja")
    _never_read(monkeypatch)
    overrides = tiny_overrides(
        tmp_path,
        data,
        "badjinja",
        **{"data.format": "chat", "model.tokenizer": tmp_path / "tok", "data.store_dir": store_dir},
    )
    assert main(["distill", *overrides, f"data.chat_template={template}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert "the template does not compile: Jinja syntax error at line 2: unexpected '}'" in err[0]
    assert (f"({template})" in err[0]) == as_file


# ---------------------------------------------------------------------------------------------------------
# F8: a directory of chat rows
# ---------------------------------------------------------------------------------------------------------


def test_a_directory_of_chat_rows_names_the_glob(tmp_path) -> None:
    folder = tmp_path / "cdir"
    folder.mkdir()
    write_chat_jsonl(folder / "chat.jsonl", conversations(2))
    with pytest.raises(ConfigError) as e:
        load_documents(str(folder), DataConfig(format="chat"))
    assert f"data.source='{folder}/*.jsonl'" in str(e.value) and "\n" not in str(e.value)
    assert len(load_documents(f"{folder}/*.jsonl", DataConfig(format="chat"))) == 2  # the glob it names works
    (tmp_path / "tdir").mkdir()
    (tmp_path / "tdir" / "a.txt").write_text("hello\n")
    with pytest.raises(ConfigError, match="holds no .jsonl or .parquet file"):
        load_documents(str(tmp_path / "tdir"), DataConfig(format="chat"))
