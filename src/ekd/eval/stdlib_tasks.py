"""The demo's downstream tasks: two local lm-eval tasks made from held-out Python source (no network).

- ``stdlib_name_choice`` (multiple choice, ``acc`` and MC-ECE): the 8 lines before a position of a held-out
  module and the line up to a code identifier; four candidate identifiers — the true one and three other
  identifiers of the *same module* that take exactly as many tokens at that position (so the summed
  log-likelihoods lm-eval compares are sums over equally many tokens: length cannot decide).
- ``stdlib_name_complete`` (generation, strict exact match): the same kind of prompt, cut right after a ``.``,
  ``(`` or ``[``; the answer is the identifier that follows (an attribute, argument or subscript name).
  Greedy decoding; the prediction is the leading identifier characters of the output (regex ``^\\w+``).

Identifiers are Python ``NAME`` tokens of the module's code (:mod:`tokenize`: never words of strings or
comments), not keywords, starting with a letter, 3–20 characters, not the first token of their line. The
generation prompt never ends in a space: a byte-level BPE merges the space into the next word, so a prompt
ending in one would ask for a token split the model never saw. Both tasks are written as lm-eval task YAMLs
over JSONL files (``eval.tasks_dir``); items are drawn with a fixed seed, only from the documents given
(the demo passes the held-out ``eval`` split). Why names and not whole next lines: the demo teacher cannot tell its next line
from another line of the same token length (0.37–0.46 of 4 choices), but it does pick and copy the right
name; measurements in docs/evaluation.md ("The demo's task set").
"""

from __future__ import annotations

import io
import json
import keyword
import random
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ekd.data.document import Document
from ekd.io import make_dirs

NAME_CHOICE = "stdlib_name_choice"
NAME_COMPLETE = "stdlib_name_complete"
TASKS = (NAME_CHOICE, NAME_COMPLETE)
CONTEXT_LINES = 8
MIN_NAME, MAX_NAME = 3, 20
COMPLETE_AFTER = ".(["  # generation prompts end in one of these
N_CHOICES = 4

# counts the tokens ``word`` takes after ``prefix`` (the line up to it), as lm-eval scores a continuation
TokenCounter = Callable[[str, Sequence[str]], list[int]]

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
      - function: regex
        regex_pattern: "^\\\\w+"
        fallback: ""
      - function: take_first
metric_list:
  - metric: exact_match
"""


@dataclass(frozen=True)
class NameSite:
    """An identifier in a module's code: the prompt before it and the line prefix that ends the prompt."""

    module: str
    context: str  # CONTEXT_LINES lines + "\n" + prefix
    prefix: str  # the line up to the identifier (non-blank)
    name: str


def _is_candidate(name: str) -> bool:
    return MIN_NAME <= len(name) <= MAX_NAME and name[0].isalpha() and not keyword.iskeyword(name)


def name_sites(doc: Document) -> list[NameSite]:
    """Every qualifying identifier of ``doc``'s code, in order; [] when the text does not tokenize as Python."""
    lines = doc.text.split("\n")
    try:
        tokens = list(tokenize.generate_tokens(io.StringIO(doc.text).readline))
    except (tokenize.TokenError, SyntaxError):
        return []
    sites = []
    for tok in tokens:
        row, col = tok.start[0] - 1, tok.start[1]  # 0-based line, column
        if tok.type != tokenize.NAME or not _is_candidate(tok.string) or row < CONTEXT_LINES:
            continue
        prefix = lines[row][:col]
        if not prefix.strip():
            continue
        context = "\n".join(lines[row - CONTEXT_LINES : row]) + "\n" + prefix
        sites.append(NameSite(doc.doc_id, context, prefix, tok.string))
    return sites


def hf_token_counter(tokenizer) -> TokenCounter:
    """A :data:`TokenCounter` from a Hugging Face tokenizer: tokens of ``prefix + word`` minus those of
    ``prefix`` (lm-eval encodes context and continuation together the same way)."""

    def count(prefix: str, words: Sequence[str]) -> list[int]:
        base = len(tokenizer(prefix, add_special_tokens=False)["input_ids"])
        whole = tokenizer([prefix + w for w in words], add_special_tokens=False)["input_ids"]
        return [len(ids) - base for ids in whole]

    return count


def name_choice_items(
    docs: Sequence[Document], n: int, count_tokens: TokenCounter, seed: int = 0
) -> list[dict]:
    """``n`` multiple-choice items {context, choices (4 names), answer (index of the true one)}.

    Distractors are other identifiers of the same module that take exactly as many tokens after the same
    prefix (``count_tokens``); a site with fewer than three such names is skipped.

    Raises:
        ValueError: fewer than ``n`` usable sites in ``docs``.
    """
    rng = random.Random(seed)
    per_doc = {d.doc_id: name_sites(d) for d in docs}
    sites = [s for doc_sites in per_doc.values() for s in doc_sites]
    vocab = {module: sorted({s.name for s in doc_sites}) for module, doc_sites in per_doc.items()}
    items: list[dict] = []
    for site in rng.sample(sites, len(sites)):
        words = [w for w in vocab[site.module] if w != site.name]
        lengths = count_tokens(site.prefix, [site.name, *words])
        same = [w for w, k in zip(words, lengths[1:]) if k == lengths[0]]
        if len(same) < N_CHOICES - 1:
            continue
        choices = [site.name, *rng.sample(same, N_CHOICES - 1)]
        rng.shuffle(choices)
        items.append({"context": site.context, "choices": choices, "answer": choices.index(site.name)})
        if len(items) == n:
            return items
    raise ValueError(f"{len(items)} usable identifier sites in the held-out documents; need {n}")


def name_complete_items(docs: Sequence[Document], n: int, seed: int = 0) -> list[dict]:
    """``n`` generation items {context (ending in ``.``, ``(`` or ``[``), answer (the identifier that follows)}.

    Raises:
        ValueError: fewer than ``n`` usable sites in ``docs``.
    """
    rng = random.Random(seed + 1)
    sites = [s for d in docs for s in name_sites(d) if s.prefix[-1] in COMPLETE_AFTER]
    if len(sites) < n:
        raise ValueError(f"{len(sites)} usable completion sites in the held-out documents; need {n}")
    return [{"context": s.context, "answer": s.name} for s in rng.sample(sites, n)]


def write_stdlib_tasks(
    docs: Sequence[Document],
    tasks_dir: Path,
    hf_cache: Path,
    count_tokens: TokenCounter,
    n_mc: int = 100,
    n_gen: int = 40,
    seed: int = 0,
) -> tuple[str, ...]:
    """Write both tasks (JSONL + YAML) into ``tasks_dir``; returns their names for ``eval.tasks``.

    ``count_tokens`` is the evaluated models' tokenizer (:func:`hf_token_counter`). ``hf_cache`` is the
    ``datasets`` cache for the JSONL files; it must lie outside ``tasks_dir`` (whose files enter the task
    signature). Rewriting the same items leaves the files byte-identical. The YAMLs name both absolutely:
    lm-eval reads a relative ``data_files`` or ``cache_dir`` from the working directory of each later
    ``ekd eval``, not from the YAML's folder (try-out 62).
    """
    tasks_dir, hf_cache = tasks_dir.resolve(), hf_cache.resolve()
    make_dirs(tasks_dir)
    for name, rows, body in (
        (NAME_CHOICE, name_choice_items(docs, n_mc, count_tokens, seed), _MC_BODY),
        (NAME_COMPLETE, name_complete_items(docs, n_gen, seed), _GEN_BODY),
    ):
        data = tasks_dir / f"{name}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in rows))
        (tasks_dir / f"{name}.yaml").write_text(
            f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
            f"  cache_dir: {hf_cache}\ntest_split: test\n" + body
        )
    return TASKS


__all__ = [
    "NAME_CHOICE",
    "NAME_COMPLETE",
    "TASKS",
    "hf_token_counter",
    "name_choice_items",
    "name_complete_items",
    "name_sites",
    "write_stdlib_tasks",
]
