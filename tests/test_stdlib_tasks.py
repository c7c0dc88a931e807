"""The demo's local downstream tasks: items are true continuations of held-out source, choices distinct."""

from __future__ import annotations

import json

import yaml

from ekd.data.document import Document
from ekd.eval.stdlib_tasks import TASKS, complete_items, nextline_items, write_stdlib_tasks


def _docs() -> list[Document]:
    docs = []
    for m in range(6):
        lines = [f"def function_{m}_{i}(argument_{i}, other={i}):  return {i} * {m}" for i in range(30)]
        lines[12] = "    # a comment line long enough to qualify but skipped"
        docs.append(Document(text="\n".join(lines), doc_id=f"mod{m}.py"))
    return docs


def test_nextline_items_are_true_next_lines_with_three_distinct_distractors():
    docs = _docs()
    items = nextline_items(docs, 20, seed=3)
    assert len(items) == 20
    texts = [d.text for d in docs]
    for item in items:
        choices = item["choices"]
        assert len(choices) == 4 and len(set(choices)) == 4
        truth = choices[item["answer"]]
        assert any(item["context"] + truth in t for t in texts)  # the true line follows its context
        assert item["context"].count("\n") == 8 and not truth.lstrip().startswith("#")
        for wrong in (c for i, c in enumerate(choices) if i != item["answer"]):
            assert not any(item["context"] + wrong + "\n" in t for t in texts)
    assert nextline_items(docs, 20, seed=3) == items  # seeded


def test_complete_items_split_a_line_after_a_space():
    docs = _docs()
    texts = [d.text for d in docs]
    for item in complete_items(docs, 10):
        assert any(item["context"] + item["answer"] in t for t in texts)
        assert item["context"].endswith(" ") and item["answer"] and "\n" not in item["answer"]


def test_written_tasks_are_lm_eval_yamls_over_jsonl(tmp_path):
    names = write_stdlib_tasks(_docs(), tmp_path / "tasks", tmp_path / "hf", n_mc=7, n_gen=3)
    assert names == TASKS
    for name, n in zip(TASKS, (7, 3)):
        spec = yaml.safe_load((tmp_path / "tasks" / f"{name}.yaml").read_text())
        assert spec["task"] == name and spec["target_delimiter"] == ""
        rows = (tmp_path / "tasks" / f"{name}.jsonl").read_text().splitlines()
        assert len(rows) == n and all(json.loads(r)["answer"] is not None for r in rows)
    before = (tmp_path / "tasks" / "stdlib_nextline.jsonl").read_bytes()
    write_stdlib_tasks(_docs(), tmp_path / "tasks", tmp_path / "hf", n_mc=7, n_gen=3)
    assert (tmp_path / "tasks" / "stdlib_nextline.jsonl").read_bytes() == before
