"""``ekd cache import`` on chat data, and a LoRA student (with W&B offline) trained from the import.

A chat row's "text" in SRC is its messages (``data.messages_field``, or ``--text-column``): a list of
``{role, content}`` objects or a JSON string of one, matched on ``(role, content)`` per message. Its tokens
must equal our rendering with the run's chat template. A tiny teacher scores the chat stream; the test writes
its top-K rows per conversation (tokens from the independent rendering of ``test_chat_data.reference``, SRC
rows shuffled, extra rows, small Parquet row groups), imports them and compares with ``ekd cache``'s own top-K
cache; then a LoRA student distils from each cache (W&B offline on the imported one) to the same loss.
"""

from __future__ import annotations

import json
import random
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch

from ekd.cli import main
from ekd.config import load_config
from ekd.data import collate
from ekd.data.collate import model_inputs
from ekd.data.tokenizer import train_bpe_tokenizer
from ekd.teacher.cache import CacheReader
from ekd.teacher.cache.build import run_build
from ekd.train.prepare import load_teacher, prepare_data
from test_cache_import import K, _one_line
from test_chat_data import MARKED, SPECIAL, WORDS, conversations, reference, write_chat_jsonl
from test_wandb import _read_run
from tiny import config_file, loss_curve

CPU = torch.device("cpu")
SCHEMA = pa.schema(
    [
        ("messages", pa.list_(pa.struct([("role", pa.string()), ("content", pa.string())]))),
        ("input_ids", pa.list_(pa.int64())),
        ("target_token_ids", pa.list_(pa.list_(pa.int64()))),
        ("logprobs", pa.list_(pa.list_(pa.float32()))),
    ]
)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("chat-import")
    rng = random.Random(0)
    tok = train_bpe_tokenizer([" ".join(rng.choice(WORDS) for _ in range(12)) for _ in range(60)], 320)
    tok.add_special_tokens({"additional_special_tokens": SPECIAL})
    tok.chat_template = MARKED  # the tokenizer's own template
    tok.save_pretrained(str(root / "tok"))
    rows = conversations(20, seed=7)
    src = write_chat_jsonl(root / "chat.jsonl", rows)
    over = {
        "data.format": "chat",
        "data.eval_fraction": 0.0,
        "model.tokenizer": str(root / "tok"),
        "method.target": "topk",
        "method.topk": K,
        "train.max_steps": 3,
        "teacher.cache_shard_samples": 8,
    }
    cfg_path = config_file(root, src, "chat-imp", **over)
    native = root / "native"
    cfg = load_config([cfg_path], [f"teacher.cache_dir={native}"])
    run_build(cfg, measure_forward=False)
    data = prepare_data(cfg, native)
    blocks = data.blocks["train"]
    with torch.no_grad():
        logits = load_teacher(cfg, data, CPU)(
            **model_inputs(collate(blocks, torch.arange(len(blocks))))
        ).logits
    stream = torch.log_softmax(logits.float(), -1).reshape(-1, logits.shape[-1])  # (S, V)
    top_lp, top_ids = stream.topk(K + 2, dim=-1)  # (S, K+2)
    table, at = [], 0
    for messages in rows:
        tokens, _ = reference(data.tokenizer, messages)  # our rendering, computed apart from the importer
        ids = [top_ids[min(at + j, len(stream) - 1)].tolist() for j in range(len(tokens))]
        lps = [top_lp[min(at + j, len(stream) - 1)].tolist() for j in range(len(tokens))]
        table.append({"messages": messages, "input_ids": tokens, "target_token_ids": ids, "logprobs": lps})
        at += len(tokens)
    assert at > len(stream)  # the last conversation is cut by the last block
    return {"root": root, "cfg": cfg_path, "native": native, "table": table}


def _write(path: Path, table: list[dict], seed: int = 1) -> Path:
    """SRC as another tool writes it: rows shuffled, two rows that are not training documents, Parquet row
    groups of 4 rows (the import reads row groups out of order)."""
    rows = list(table) + [
        {**table[0], "messages": [{"role": "user", "content": "not in training"}]},
        {**table[1], "messages": [{"role": "user", "content": "neither"}]},
    ]
    random.Random(seed).shuffle(rows)
    pq.write_table(pa.Table.from_pylist(rows, schema=SCHEMA), path, row_group_size=4)
    return path


def _import(setup, src: Path, out: Path, *extra: str) -> int:
    return main(["-q", "cache", "import", str(src), "--config", setup["cfg"], "--out", str(out), *extra])


def test_chat_rows_import_to_the_native_cache_and_train_a_lora_student(setup, monkeypatch, capsys):
    root = setup["root"]
    imported = root / "imported"
    assert _import(setup, _write(root / "teacher.parquet", setup["table"]), imported) == 0, (
        capsys.readouterr().err
    )
    native, imp = CacheReader(setup["native"]), CacheReader(imported)
    assert imp.num_samples == native.num_samples
    for sid in range(native.num_samples):
        a, b = native.get(sid), imp.get(sid)
        assert torch.equal(a.positions, b.positions)  # assistant targets only, as the native cache
        assert torch.equal(a.ids, b.ids)
        torch.testing.assert_close(b.probs, a.probs, rtol=2e-3, atol=1e-6)
    # JSONL with the messages as a JSON string gives the same cache
    jsonl = root / "teacher.jsonl"
    jsonl.write_text(
        "".join(json.dumps({**r, "messages": json.dumps(r["messages"])}) + "\n" for r in setup["table"])
    )
    assert _import(setup, jsonl, root / "from-jsonl") == 0, capsys.readouterr().err
    # through the token store: training documents streamed in the store's order, the same cache
    store = main(
        ["-q", "cache", "import", str(jsonl), f"data.store_dir={root / 'store'}", "--config", setup["cfg"]]
        + ["--out", str(root / "from-store")]
    )
    assert store == 0, capsys.readouterr().err
    for other in (CacheReader(root / "from-jsonl"), CacheReader(root / "from-store")):
        for sid in range(native.num_samples):
            assert torch.equal(other.get(sid).ids, imp.get(sid).ids)
            assert torch.equal(other.get(sid).probs, imp.get(sid).probs)

    # a LoRA student from each cache; W&B offline on the imported run
    pytest.importorskip("peft")
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(root / "wandb-dir"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    (root / "wandb-dir").mkdir()
    curves = {}
    for name, cache in (("native", setup["native"]), ("imported", imported)):
        args = [f"run.name={name}", "teacher.source=cache", f"teacher.cache_dir={cache}", "method=kd"]
        args += ["method.target=topk", f"method.topk={K}", "model.lora_r=4", "model.lora_alpha=8"]
        args += ["model.lora_export=adapter", "eval.teacher=false"]
        if name == "imported":
            args += ["log.wandb_project=ekd-test", "log.wandb_mode=offline"]
        assert main(["-q", "distill", setup["cfg"], *args]) == 0, capsys.readouterr().err
        curves[name] = loss_curve(root / "runs" / name)
        assert (root / "runs" / name / "student" / "adapter_config.json").is_file()
    assert len(curves["native"]) == 3
    for step, loss in curves["native"].items():
        assert curves["imported"][step] == pytest.approx(loss, rel=1e-4), step
    (log_file,) = (root / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb")
    config, history = _read_run(log_file)
    assert config["model"]["lora_r"] == 4 and config["teacher"]["source"] == "cache"
    assert {s for s in history if "train/loss" in history[s]} == set(curves["imported"])


def test_chat_source_that_is_not_messages_or_lacks_a_row_is_one_line(setup, tmp_path, capsys):
    bad = [
        {**r, "messages": "plain text, not messages"} if i == 3 else r for i, r in enumerate(setup["table"])
    ]
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in bad))
    assert _import(setup, path, tmp_path / "c1") == 2
    assert "bad.jsonl line 4: column 'messages' is not chat messages" in _one_line(capsys)  # the file's line
    missing = tmp_path / "missing.parquet"
    pq.write_table(pa.Table.from_pylist(setup["table"][1:], schema=SCHEMA), missing)
    assert _import(setup, missing, tmp_path / "c2") == 2
    assert "has no row whose 'messages' is the training document chat.jsonl:1" in _one_line(capsys)


def test_rows_with_the_same_messages_and_other_tools_are_told_apart(tmp_path):
    """Try-out 24: two training rows with the same messages and other tool definitions (which render
    differently) were both looked up as SRC's first such row, and the import then blamed SRC's tokenization.
    With a tools column in SRC (``data.tools_field``), the definitions are part of the key — as a list or as a
    JSON string, as the training rows read them; an SRC without the column matches on the messages alone."""
    from ekd.data.chat import parse_messages
    from ekd.data.document import Document
    from ekd.teacher.cache.importer import _digest, _index_rows, document_key
    from ekd.teacher.cache.logprob_rows import SourceTable

    messages = [{"role": "user", "content": "what"}, {"role": "assistant", "content": "sorted"}]
    weather = [{"type": "function", "function": {"name": "weather", "parameters": {"x": {"default": None}}}}]
    clock = [{"type": "function", "function": {"name": "clock"}}]
    docs = [
        Document("", "t:1", messages=parse_messages(messages), tools=tuple(weather)),
        Document("", "t:2", messages=parse_messages(messages), tools=tuple(clock)),
    ]
    src = tmp_path / "src.jsonl"
    rows = [{"messages": messages, "tools": clock}, {"messages": messages, "tools": json.dumps(weather)}]
    src.write_text("".join(json.dumps(r) + "\n" for r in rows))
    index = _index_rows(SourceTable(src), "messages", chat=True, tools="tools")
    assert [index.get(_digest(document_key(d, with_tools=True))) for d in docs] == [1, 0]
    alone = _index_rows(SourceTable(src), "messages", chat=True)  # no tools column: the messages alone
    assert [alone.get(_digest(document_key(d))) for d in docs] == [0, 0]
