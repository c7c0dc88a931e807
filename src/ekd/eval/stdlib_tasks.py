"""The demo's downstream tasks: two local lm-eval tasks made from held-out Python source (no network).

- ``stdlib_nextline`` (multiple choice, ``acc`` and MC-ECE): the lines before a position of a held-out
  module, then four candidate next lines — the true one and three true lines of *other* held-out positions.
- ``stdlib_complete`` (generation, strict exact match): the lines before a position plus the first half of
  the next line; the answer is the rest of that line, greedy, up to the newline.

Both are written as lm-eval task YAMLs over JSONL files (``eval.tasks_dir``), so ``ekd eval --tasks`` runs
them as it runs any local task. Items are drawn with a fixed seed from lines of 24–100 characters that are
not comments and occur once in their module (a duplicated line cannot be told apart by its context).
"""

from __future__ import annotations

import json
import random
from collections.abc import Sequence
from pathlib import Path

from ekd.data.document import Document

NEXTLINE = "stdlib_nextline"
COMPLETE = "stdlib_complete"
TASKS = (NEXTLINE, COMPLETE)
CONTEXT_LINES = 8
MIN_LINE, MAX_LINE = 24, 100

_MC_BODY = """output_type: multiple_choice
doc_to_text: "{{context}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
target_delimiter: ""
metric_list:
  - metric: acc
"""

_GEN_BODY = """output_type: generate_until
doc_to_text: "{{context}}"
doc_to_target: "{{answer}}"
target_delimiter: ""
generation_kwargs:
  until: ["\\n"]
  do_sample: false
filter_list:
  - name: strict-match
    filter:
      - function: take_first
metric_list:
  - metric: exact_match
"""


def _positions(docs: Sequence[Document]) -> list[tuple[str, str]]:
    """(context, next line) pairs: CONTEXT_LINES lines of a module, then a line that qualifies."""
    out = []
    for doc in docs:
        lines = doc.text.split("\n")
        counts: dict[str, int] = {}
        for line in lines:
            counts[line] = counts.get(line, 0) + 1
        for i in range(CONTEXT_LINES, len(lines)):
            line = lines[i]
            body = line.strip()
            if not (MIN_LINE <= len(line) <= MAX_LINE) or body.startswith("#") or counts[line] > 1:
                continue
            out.append(("\n".join(lines[i - CONTEXT_LINES : i]) + "\n", line))
    return out


def nextline_items(docs: Sequence[Document], n: int, seed: int = 0) -> list[dict]:
    """``n`` multiple-choice items: {context, choices (4 lines), answer (index of the true line)}."""
    rng = random.Random(seed)
    pool = _positions(docs)
    if len(pool) < 4:
        raise ValueError(f"{len(pool)} usable lines in the held-out documents; need at least 4")
    picked = rng.sample(pool, min(n, len(pool)))
    items = []
    for context, line in picked:
        distractors: list[str] = []
        while len(distractors) < 3:
            other = rng.choice(pool)[1]
            if other != line and other not in distractors:
                distractors.append(other)
        choices = [line, *distractors]
        rng.shuffle(choices)
        items.append({"context": context, "choices": choices, "answer": choices.index(line)})
    return items


def complete_items(docs: Sequence[Document], n: int, seed: int = 0) -> list[dict]:
    """``n`` generation items: {context (with the first half of the line), answer (the rest of it)}."""
    rng = random.Random(seed + 1)
    pool = _positions(docs)
    items = []
    for context, line in rng.sample(pool, min(n, len(pool))):
        cut = len(line) // 2
        while cut < len(line) and line[cut - 1] != " ":  # cut after a space: the answer starts a word
            cut += 1
        if cut >= len(line) - 2:
            cut = len(line) // 2
        items.append({"context": context + line[:cut], "answer": line[cut:]})
    return items


def write_stdlib_tasks(
    docs: Sequence[Document], tasks_dir: Path, hf_cache: Path, n_mc: int = 100, n_gen: int = 40, seed: int = 0
) -> tuple[str, ...]:
    """Write both tasks (JSONL + YAML) into ``tasks_dir``; returns their names for ``eval.tasks``.

    ``hf_cache`` is the ``datasets`` cache for the JSONL files; it must lie outside ``tasks_dir`` (whose files
    enter the task signature). Rewriting the same items leaves the files byte-identical.
    """
    tasks_dir.mkdir(parents=True, exist_ok=True)
    for name, rows, body in (
        (NEXTLINE, nextline_items(docs, n_mc, seed), _MC_BODY),
        (COMPLETE, complete_items(docs, n_gen, seed), _GEN_BODY),
    ):
        data = tasks_dir / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tasks_dir / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {hf_cache}\ntest_split: test\n" + body
        )
    return TASKS


__all__ = ["TASKS", "complete_items", "nextline_items", "write_stdlib_tasks"]
