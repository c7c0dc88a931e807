"""Eval sets scored several ways (other blocks, tokenizer or scored tokens): :func:`label_eval_sets` gives
each way its own column (``eval``, ``eval#2``) so that no figure is over two sets, and
:func:`eval_set_columns` says which runs each column holds and how the ways differ."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ekd.eval.compare.runs import NOT_A_WAY, RunRecord, _config_differences, _scored_set, _task_entry
from ekd.eval.eval_json import set_of
from ekd.eval.task_metrics import DOCUMENTS_SHA256, GENERATION_SETTINGS, UNRECORDED_GROUP

if TYPE_CHECKING:
    from ekd.eval.compare.groups import Group


def label_eval_sets(groups: list[Group]) -> None:
    """Give each run its columns (:attr:`RunRecord.columns`): an eval set every run that has it scored alike
    (:meth:`RunRecord.eval_set`) keeps its name; a set scored several ways is one column per way, the set's
    name for the way of the first run given, ``<set>#2``, ``<set>#3`` … for the others in order, so that a
    mean, a spread or a paired difference over seeds is over one set (try-out 29: ``2.93 ± 0.05`` averaged
    2.96 on 24 blocks and 2.90 on 48). Downstream tasks likewise (``task:arc_easy#2``: another ``--limit``,
    few-shot count, generation budget, chat template or tasks directory; a tag's mean over other tasks). A set's
    teacher row goes to its set's column. Counted runs are labelled first, replicas after them: a way only a replica scored is no column of
    the table."""
    ways: dict[str, list[str]] = {}  # set → the ways (eval_set) it was scored, in order
    ordered = [r for g in groups for r in g.runs]
    ordered += [r for g in groups for seed in sorted(g.replicas) for r in g.replicas[seed]]
    for r in ordered:
        r.columns = {}
        for name in r.eval:
            base = set_of(name)
            if not _scored_set(base) or base not in r.eval:
                r.columns[name] = name  # a teacher row without its set: no way to tell apart
                continue
            seen = ways.setdefault(base, [])
            way = r.eval_set(base)
            if way not in seen:
                seen.append(way)
            k = seen.index(way)
            r.columns[(base if k == 0 else f"{base}#{k + 1}") + name[len(base) :]] = name


def eval_set_columns(groups: list[Group]) -> list[dict[str, Any]]:
    """The columns of the eval sets some runs scored another way (:func:`label_eval_sets`), in table order:
    per column its set, the counted runs scored that way, and how they differ from the set's first column
    (:func:`_eval_set_difference`; '' for the first). [] when every run that scored a set scored it alike — a
    set only some runs scored is no difference: its cells count fewer seeds."""
    columns: dict[str, dict[str, list[tuple[Group, RunRecord]]]] = {}  # set → column → (group, run)
    for g in groups:
        for r in g.runs:
            for c in r.column_names():
                if _scored_set(c):
                    columns.setdefault(set_of(r.entry_name(c)), {}).setdefault(c, []).append((g, r))
    out = []
    for name in sorted(columns):
        if len(columns[name]) < 2:
            continue
        ordered = sorted(
            columns[name].items(), key=lambda kv: 0 if kv[0] == name else int(kv[0].rpartition("#")[2])
        )
        ref = ordered[0][1][0][1]
        for column, runs in ordered:
            out.append(
                {
                    "column": column,
                    "set": name,
                    "runs": [str(r.run_dir) for _, r in runs],
                    "labels": _labels(runs),
                    "differs": (
                        ""
                        if column == name
                        else _eval_set_difference(ref, runs[0][1], name, [r for _, r in ordered[0][1] + runs])
                    ),
                }
            )
    return out


def _eval_set_notes(columns: list[dict[str, Any]]) -> list[str]:
    """:func:`eval_set_columns` as one line per set: its columns and which groups (and seeds) each holds, with
    how the set differs from its first way: '`eval` was scored 2 ways: `eval` by `kd` (seed 0), `sekd`;
    `eval#2` by `kd` (seed 1) (data.max_eval_blocks=48 (vs 24))'."""
    by_set: dict[str, list[dict[str, Any]]] = {}
    for c in columns:
        by_set.setdefault(c["set"], []).append(c)
    notes = []
    for name, cols in by_set.items():
        ways = "; ".join(
            f"`{c['column']}` by {c['labels']}" + (f" ({c['differs']})" if c["differs"] else "") for c in cols
        )
        notes.append(f"`{name}` was scored {len(cols)} ways: {ways}")
    return notes


def _labels(runs: list[tuple[Group, RunRecord]]) -> str:
    """'`kd` (seed 0), `sekd`': the groups of ``runs``, naming the seeds of a group not all of whose runs are there."""
    groups: list[Group] = []  # in order of first appearance (a Group is not hashable)
    for g, _ in runs:
        if not any(g is h for h in groups):
            groups.append(g)
    labels = []
    for g in groups:
        seeds = sorted(r.seed for h, r in runs if h is g)
        some = "" if len(seeds) == len(g.runs) else f" ({'seed' if len(seeds) == 1 else 'seeds'} "
        labels.append(f"`{g.label}`" + (some + ", ".join(map(str, seeds)) + ")" if some else ""))
    return ", ".join(labels)


def _eval_set_difference(a: RunRecord, b: RunRecord, name: str, both: list[RunRecord] | None = None) -> str:
    """How ``b``'s eval set ``name`` differs from ``a``'s: data keys (:meth:`RunRecord.set_data`), the
    tokenizer, the scored tokens, or else the documents (a run evaluated before eval sets were spread samples
    records none); for a downstream task, :func:`_task_difference`."""
    if _task_entry(name):
        return _task_difference(a.task_way(name), b.task_way(name), _unrecorded(both or [a, b], name))
    keys = _config_differences({"data": a.set_data(name)}, {"data": b.set_data(name)})
    scored = []
    for scoring in (a.scoring(name), b.scoring(name)):  # the autocast is named by the key that sets it
        scoring = {k: v for k, v in scoring.items() if k not in NOT_A_WAY}  # ECE's bins: no other way
        precision = scoring.pop("precision", None)
        scored.append({"eval": scoring, "train": {"precision": precision}})
    keys += _config_differences(*scored)
    if keys:
        return ", ".join(keys)
    if a.tokenizer != b.tokenizer:
        return "another tokenizer"
    if (a.eval.get(name) or {}).get("tokens") != (b.eval.get(name) or {}).get("tokens"):
        return "the same data settings, other scored token counts"
    return "the same data settings, other scored documents (an older ekd took an eval set's first blocks)"


TASK_SETTING_KEYS = {
    "limit": "eval.tasks_limit",
    "num_fewshot": "eval.tasks_num_fewshot",
    "max_new_tokens": "eval.tasks_max_new_tokens",
    "chat_template": "eval.tasks_chat_template",
    "tasks_dir": "eval.tasks_dir",
    "ece_bins": "eval.ece_bins",
}
"""eval.json ``tasks.settings`` keys → the config keys (and ``ekd eval`` flags) that set them."""


def _unrecorded(runs: list[RunRecord], name: str) -> list[str]:
    """The paths of ``runs`` whose task entry ``name`` was scored by an ekd that did not record whether the task's
    group generates (:data:`~ekd.eval.task_metrics.UNRECORDED_GROUP`; try-out 123, F8: the note said "that run")."""
    return [str(r.run_dir) for r in runs if (r.task_ways.get(name) or {}).get(UNRECORDED_GROUP)]


def _task_difference(a: dict[str, Any], b: dict[str, Any], older_runs: list[str] | None = None) -> str:
    """How task way ``b`` (:meth:`RunRecord.task_way`) differs from ``a``: 'eval.tasks_limit=5 (vs 0)', 'the task's
    config or documents', '5 documents (vs 20)', 'a mean over other tasks (arc_easy, piqa vs arc_easy)'; a split
    by a generation setting one way does not record names ``older_runs`` (:func:`_unrecorded`)."""
    out = []
    unrecorded = False  # a generation setting in one way only: one of an ekd that did not record its group
    order = [
        *TASK_SETTING_KEYS,
        "tasks_dir_hash",
        DOCUMENTS_SHA256,
        "documents",
        "tasks",
    ]  # settings, then data
    for key in sorted(set(a) | set(b), key=lambda k: (order.index(k) if k in order else len(order), k)):
        va, vb = a.get(key), b.get(key)
        if va == vb:
            continue
        if key in GENERATION_SETTINGS and None in (va, vb):  # no task of one way reads it (try-out 120, F9)
            unrecorded = True
            continue
        if key in TASK_SETTING_KEYS:
            out.append(f"{TASK_SETTING_KEYS[key]}={vb!r} (vs {va!r})")
        elif key == "documents":
            out.append(f"{vb} documents (vs {va})")
        elif key == "tasks":
            if set(va or {}) != set(vb or {}):
                out.append(f"a mean over other tasks ({', '.join(vb or {})} vs {', '.join(va or {})})")
            else:
                out.append("a mean over other documents or configs of its tasks")
        elif key == "tasks_dir_hash":
            out.append("the tasks directory's content")
        elif key == DOCUMENTS_SHA256:
            out.append("the task's config or documents")
        else:
            out.append(f"{key}={vb!r} (vs {va!r})")
    if unrecorded and not out:  # try-out 122, F5: "(the same settings)" for a split it did not explain
        older = ", ".join(older_runs or []) or "the run scored so"
        out.append(
            "scored by an ekd that did not record whether the task's group generates (its chat template may "
            f"apply), alike otherwise: `ekd eval RUN --tasks …` records it, for RUN in {older}"
        )
    return ", ".join(out) or "the same settings"
