"""The demo's local downstream tasks: names of held-out code, choices length-matched, lm-eval scores them as
a hand count does."""

from __future__ import annotations

import json
import random
import re
from pathlib import Path

import pytest
import torch
import yaml

from ekd.data.document import Document
from ekd.data.tokenizer import train_bpe_tokenizer
from ekd.eval.stdlib_tasks import (
    COMPLETE_AFTER,
    NAME_CHOICE,
    NAME_COMPLETE,
    TASKS,
    hf_token_counter,
    name_choice_items,
    name_complete_items,
    write_stdlib_tasks,
)

WORDS = [
    "alpha",
    "beta",
    "gamma",
    "delta",
    "epsilon",
    "zeta",
    "theta",
    "kappa",
    "lambda",
    "omicron",
    "sigma",
    "upsilon",
    "omega",
]
WORDS += [
    "parse",
    "render",
    "encode",
    "decode",
    "buffer",
    "stream",
    "reader",
    "writer",
    "handler",
    "cursor",
    "token",
    "offset",
]


def _module_text(m: int) -> str:
    rng = random.Random(m)
    out = [f'"""Module {m}."""', "import os", ""]
    for f in range(14):
        a, b, c, d = rng.sample(WORDS, 4)
        out += [
            f"def {a}_{f}(self, {b}, {c}=None):",
            f"    # a comment naming {d}",
            f"    result = {b}.{d}({c}, '{a} in a string')",
            f"    if {c} is None:",
            f"        return self.{a}[{b}]",
            "    return result",
            "",
        ]
    return "\n".join(out)


def _docs(n: int = 6) -> list[Document]:
    return [Document(text=_module_text(m), doc_id=f"mod{m}.py") for m in range(n)]


@pytest.fixture(scope="module")
def tokenizer():
    return train_bpe_tokenizer([d.text for d in _docs()], vocab_size=400)


def _lm_eval_continuation_tokens(tok, context: str, continuation: str) -> int:
    """Tokens lm-eval scores for ``continuation``: trailing spaces of the context move to the continuation,
    the pair is encoded whole and the context's tokens are cut off (lm_eval HFLM._encode_pair)."""
    spaces = len(context) - len(context.rstrip())
    if spaces:
        context, continuation = context[:-spaces], context[-spaces:] + continuation
    whole = tok(context + continuation, add_special_tokens=False)["input_ids"]
    return len(whole) - len(tok(context, add_special_tokens=False)["input_ids"])


def test_choices_are_names_of_the_module_taking_equally_many_tokens(tokenizer):
    """Fails on length-biased distractors: a model that scores by length alone must tie on every item."""
    docs = _docs()
    items = name_choice_items(docs, 30, hf_token_counter(tokenizer), seed=3)
    assert len(items) == 30
    for item in items:
        choices, truth = item["choices"], item["choices"][item["answer"]]
        assert len(choices) == 4 and len(set(choices)) == 4
        module = next(d.text for d in docs if item["context"] + truth in d.text)  # a true continuation
        code = re.sub(r"#[^\n]*|'[^']*'|\"\"\".*?\"\"\"", "", module, flags=re.S)  # names of the code only
        assert all(re.search(rf"\b{c}\b", code) for c in choices)
        counts = {_lm_eval_continuation_tokens(tokenizer, item["context"], c) for c in choices}
        assert len(counts) == 1, (item, counts)
    assert name_choice_items(docs, 30, hf_token_counter(tokenizer), seed=3) == items  # seeded


def test_unmatched_lengths_would_be_caught():
    """The length check above has teeth: with a counter that ignores length, choices differ in tokens."""
    docs = _docs()
    tok = train_bpe_tokenizer([d.text for d in docs], vocab_size=400)
    items = name_choice_items(docs, 30, lambda prefix, words: [1] * len(words), seed=3)
    assert any(
        len({_lm_eval_continuation_tokens(tok, i["context"], c) for c in i["choices"]}) > 1 for i in items
    )


def test_completion_prompts_end_before_a_name_after_dot_paren_or_bracket():
    docs = _docs()
    items = name_complete_items(docs, 20)
    for item in items:
        assert any(item["context"] + item["answer"] in d.text for d in docs)
        assert item["context"][-1] in COMPLETE_AFTER and re.fullmatch(r"[A-Za-z]\w{2,19}", item["answer"])
        assert item["context"].count("\n") == 8
    with pytest.raises(ValueError, match="need 10000"):
        name_complete_items(docs, 10_000)


def test_written_tasks_are_lm_eval_yamls_over_jsonl(tmp_path, tokenizer, monkeypatch):
    count = hf_token_counter(tokenizer)
    monkeypatch.chdir(tmp_path)  # relative folders, as `ekd demo --out runs/demo` passes them
    names = write_stdlib_tasks(_docs(), Path("tasks"), Path("hf"), count, n_mc=7, n_gen=3)
    assert names == TASKS
    for name, n in zip(TASKS, (7, 3)):
        spec = yaml.safe_load((tmp_path / "tasks" / f"{name}.yaml").read_text())
        assert spec["task"] == name and spec["target_delimiter"] == ""
        # absolute: lm-eval reads them from the working directory of a later `ekd eval` (try-out 62, F5)
        kwargs = spec["dataset_kwargs"]
        assert kwargs["data_files"]["test"] == str(tmp_path / "tasks" / f"{name}.jsonl")
        assert kwargs["cache_dir"] == str(tmp_path / "hf")
        rows = (tmp_path / "tasks" / f"{name}.jsonl").read_text().splitlines()
        assert len(rows) == n and all(json.loads(r)["answer"] is not None for r in rows)
    gen = yaml.safe_load((tmp_path / "tasks" / f"{NAME_COMPLETE}.yaml").read_text())
    assert gen["filter_list"][0]["filter"][0]["regex_pattern"] == r"^\w+"
    before = (tmp_path / "tasks" / f"{NAME_CHOICE}.jsonl").read_bytes()
    write_stdlib_tasks(_docs(), tmp_path / "tasks", tmp_path / "hf", count, n_mc=7, n_gen=3)
    assert (tmp_path / "tasks" / f"{NAME_CHOICE}.jsonl").read_bytes() == before


def test_demo_tasks_come_from_the_held_out_modules_only(tmp_path, tokenizer, monkeypatch):
    pytest.importorskip("lm_eval")
    from ekd.data import pystdlib
    from ekd.demo import DemoBudget, write_demo_tasks

    root = tmp_path / "stdlib"
    root.mkdir()
    for m in range(60):
        (root / f"mod{m}.py").write_text(_module_text(m))
    monkeypatch.setattr(pystdlib, "stdlib_root", lambda: root)
    splits = pystdlib.pystdlib_splits(root=root, names=["train", "eval"])
    assert splits["eval"] and splits["train"]
    tokenizer.save_pretrained(tmp_path / "out" / "teacher")
    budget = DemoBudget(100_000, 400, 32, 1, 1, 1, 1, 1, task_items=(10, 5))
    assert write_demo_tasks(tmp_path / "out", budget) == TASKS
    for name in TASKS:
        for row in map(json.loads, (tmp_path / "out" / "tasks" / f"{name}.jsonl").read_text().splitlines()):
            answer = row["answer"] if name == NAME_COMPLETE else row["choices"][row["answer"]]
            assert any(row["context"] + answer in d.text for d in splits["eval"])
            assert not any(row["context"] in d.text for d in splits["train"])


@pytest.mark.slow
def test_lm_eval_scores_equal_a_hand_count_on_a_tiny_model(tmp_path, tokenizer):
    """acc = arg-max of the per-choice log-likelihoods (float64 here); EM = greedy output's leading name."""
    pytest.importorskip("lm_eval.models.huggingface")
    from ekd.eval.tasks import TaskSettings, run_tasks
    from ekd.models.load import build_preset

    model = build_preset("llama-micro-tied", len(tokenizer), tokenizer.eos_token_id, seed=1).eval()
    write_stdlib_tasks(_docs(), tmp_path / "tasks", tmp_path / "hf", hf_token_counter(tokenizer), 12, 6)
    settings = TaskSettings(tasks=TASKS, tasks_dir=str(tmp_path / "tasks"), batch_size=4, max_new_tokens=4)
    results = run_tasks(model, tokenizer, settings)

    def enc(text: str) -> list[int]:
        return tokenizer(text, add_special_tokens=False)["input_ids"]

    @torch.no_grad()
    def loglikelihood(context: str, choice: str) -> float:
        n = _lm_eval_continuation_tokens(tokenizer, context, choice)
        ids = enc(context + choice)  # no trailing spaces in these contexts: the pair encodes whole
        logp = model(torch.tensor([ids])).logits[0].double().log_softmax(-1)  # (T, V)
        return sum(logp[t - 1, ids[t]].item() for t in range(len(ids) - n, len(ids)))

    rows = [json.loads(r) for r in (tmp_path / "tasks" / f"{NAME_CHOICE}.jsonl").read_text().splitlines()]
    hits = 0
    for row in rows:
        scores = [loglikelihood(row["context"], c) for c in row["choices"]]
        hits += max(range(4), key=scores.__getitem__) == row["answer"]
    assert results[NAME_CHOICE]["value"] == pytest.approx(hits / len(rows))

    rows = [json.loads(r) for r in (tmp_path / "tasks" / f"{NAME_COMPLETE}.jsonl").read_text().splitlines()]
    hits = 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([enc(row["context"])])
            out = model.generate(ids, max_new_tokens=4, do_sample=False, pad_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, ids.shape[1] :]).split("\n")[0]
            hits += (re.match(r"\w+", text) or [""])[0] == row["answer"]
    assert results[NAME_COMPLETE]["value"] == pytest.approx(hits / len(rows))
