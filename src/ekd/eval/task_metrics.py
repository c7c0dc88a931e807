"""Downstream-task metrics from lm-evaluation-harness output: the primary metric per task, multiple-choice
ECE from the per-choice log-likelihoods, macro means per eval tag, and the gap closed.

Pure functions over plain Python data (lm-eval's ``results`` and ``samples`` dicts); no lm-eval import.

Multiple-choice ECE (as SE-KD reports it): per document, p = softmax over the choices' summed
log-likelihoods, confidence = max p, correct = the arg-max choice is gold (lm-eval's own per-sample
``acc``); equal-width bins (lo, hi], ECE = Σ_b (n_b/N)·|acc_b − conf_b|, in %. Fewer than
``MIN_ECE_SAMPLES`` documents give NaN: the estimate would mean nothing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from ekd.eval.eval_json import TEACHER_KEY

MIN_ECE_SAMPLES = 10
TAGS = ("in_distribution", "shift", "diversity_shift", "correlation_shift")

# (metric, preferred filter) in order: the paper metric of each task family comes first.
PRIMARY_METRICS: tuple[tuple[str, str | None], ...] = (
    ("acc", "none"),  # multiple choice (ARC, HellaSwag, PIQA), LAMBADA's last-word accuracy
    ("exact_match", "strict-match"),  # GSM8K strict match
    ("exact_match", None),  # other generation tasks: their first filter
    ("prompt_level_strict_acc", None),  # IFEval
    ("acc", None),
)

Bin = tuple[float, float, int, float, float]  # (lo, hi, count, mean confidence, accuracy)


def primary_metric(task_results: Mapping[str, Any]) -> tuple[str, str, float]:
    """(metric, filter, value) of one task's lm-eval results entry (keys ``"<metric>,<filter>"``).

    Raises:
        ValueError: the entry has no numeric metric.
    """
    numeric = {
        tuple(k.split(",", 1)): float(v)
        for k, v in task_results.items()
        if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    for metric, filt in PRIMARY_METRICS:
        for (m, f), v in numeric.items():
            if m == metric and (filt is None or f == filt):
                return m, f, v
    if not numeric:
        raise ValueError("no numeric metric in the task results")
    (m, f), v = next(iter(numeric.items()))
    return m, f, v


def softmax(values: Sequence[float]) -> list[float]:
    """Softmax in float64 (max-shifted)."""
    top = max(values)
    exps = [math.exp(v - top) for v in values]
    total = sum(exps)
    return [e / total for e in exps]


def mc_confidences(samples: Iterable[Mapping[str, Any]]) -> tuple[list[float], list[bool]]:
    """Top-1 confidence and correctness per multiple-choice document.

    Args:
        samples: lm-eval logged samples of one task and filter; ``filtered_resps`` holds one
            (log-likelihood, is_greedy) per choice, ``acc`` is 1.0 when the arg-max choice is gold.

    Returns:
        (confidences, correct), one entry per document.
    """
    conf, correct = [], []
    for s in samples:
        lls = [float(r[0]) for r in s["filtered_resps"]]
        conf.append(max(softmax(lls)))
        correct.append(bool(s["acc"]))
    return conf, correct


def reliability_bins(conf: Sequence[float], correct: Sequence[bool], n_bins: int = 15) -> list[Bin]:
    """Equal-width bins (lo, hi] over [0, 1]: (lo, hi, count, mean confidence, accuracy); empty bins NaN. A
    confidence that is not finite (a student whose log-likelihoods are NaN) leaves every bin empty, so the ECE
    is NaN and the diagram draws no bar, as a text set's of such a student (review 128, S7: ``math.ceil(nan)``
    was a ValueError traceback that ended the task evaluation)."""
    counts = [0] * n_bins
    conf_sum = [0.0] * n_bins
    hits = [0] * n_bins
    if not all(math.isfinite(c) for c in conf):
        conf, correct = [], []
    for c, ok in zip(conf, correct, strict=True):
        b = min(max(math.ceil(c * n_bins) - 1, 0), n_bins - 1)  # (lo, hi]: c = k/n falls in bin k-1
        counts[b] += 1
        conf_sum[b] += c
        hits[b] += int(ok)
    return [
        (
            i / n_bins,
            (i + 1) / n_bins,
            counts[i],
            conf_sum[i] / counts[i] if counts[i] else math.nan,
            hits[i] / counts[i] if counts[i] else math.nan,
        )
        for i in range(n_bins)
    ]


def ece_percent(bins: Sequence[Bin], min_samples: int = MIN_ECE_SAMPLES) -> float:
    """ECE in % from reliability bins; NaN below ``min_samples`` documents."""
    n = sum(b[2] for b in bins)
    if n < max(min_samples, 1):
        return math.nan
    return 100.0 * sum(c * abs(acc - cf) for _, _, c, cf, acc in bins if c) / n


def tag_of(name: str, tags: Mapping[str, str]) -> str:
    """An eval set's or task's tag: ``tags[name]``, else 'shift' for names starting with 'shift', else
    'in_distribution'."""
    return tags.get(name) or ("shift" if name.startswith("shift") else "in_distribution")


def macro_means(values: Mapping[str, float], tags: Mapping[str, str]) -> dict[str, float]:
    """Mean of the values per tag (tag → mean); sets with different tags are never averaged. A tag with a value
    that is not finite (or None) has a NaN mean: never the mean of its other members under the tag's name (review
    136, R3; callers leave out beforehand what has no figure by design, and say so: :func:`mc_ece_means`)."""
    by_tag: dict[str, list[float]] = {}
    for name, v in values.items():
        by_tag.setdefault(tag_of(name, tags), []).append(math.nan if v is None else float(v))
    return {
        t: sum(vs) / len(vs) if all(math.isfinite(v) for v in vs) else math.nan for t, vs in by_tag.items()
    }


def mc_ece_means(
    results: Mapping[str, Mapping[str, Any]], tags: Mapping[str, str]
) -> tuple[dict[str, float], dict[str, list[str]]]:
    """The MC-ECE of each tag: the mean over its multiple-choice tasks that have an estimate (tag → %), and the
    multiple-choice tasks left out for having none (tag → names: fewer than :data:`MIN_ECE_SAMPLES` documents, or
    log-likelihoods that are not finite). A tag none of whose multiple-choice tasks has one has no mean, its tasks
    listed (review 136, R3: a tag's MC-ECE "mean" was one task's of two, unsaid)."""
    estimated: dict[str, float] = {}
    without: dict[str, list[str]] = {}
    for name, r in results.items():
        if r.get("output_type") != "multiple_choice":
            continue
        ece = r.get("ece")
        if isinstance(ece, (int, float)) and math.isfinite(ece):
            estimated[name] = float(ece)
        else:
            without.setdefault(tag_of(name, tags), []).append(name)
    return macro_means(estimated, tags), without


def gap_closed(student: float, teacher: float, init: float) -> float:
    """(student − init) / (teacher − init): 0 = no better than the initial student, 1 = the teacher.

    NaN when a value is missing, the teacher equals the initial student (nothing to close) or scores below it
    (:func:`teacher_not_better`: no gap to close). Callers with item counts check :func:`gap_within_noise`
    first: a ratio over a gap the items cannot resolve is noise.
    """
    vals = (student, teacher, init)
    if (
        any(v is None or not math.isfinite(v) for v in vals)
        or teacher == init
        or teacher_not_better(teacher, init)
    ):
        return math.nan
    return (student - init) / (teacher - init) + 0.0  # + 0.0: no "-0.000" in tables


MIN_GAP_ITEMS = 3
"""A teacher − initial-student gap of fewer items than this is never resolved, whatever the standard error."""

GAP_WITHIN_NOISE = "n/a (gap within noise)"
"""What tables print instead of a gap closed whose teacher − init gap is within noise."""

GAP_TEACHER_NOT_BETTER = "n/a (teacher below init)"
"""What tables print instead of a gap closed where the teacher scores below the initial student (a resolved gap)."""

GAP_NOTE = (
    "Gap closed: (student − init)/(teacher − init); "
    f"'{GAP_WITHIN_NOISE}' where teacher − init is under two standard errors of a difference of two "
    f"accuracies on the task's items (or under {MIN_GAP_ITEMS} items): that ratio would be noise; "
    f"'{GAP_TEACHER_NOT_BETTER}' where the teacher scores below the initial student: there is no gap to close."
)
"""The line under every table with a gap-closed column."""


def teacher_not_better(teacher: float, init: float) -> bool:
    """True when the teacher's score, a proportion in [0, 1] (accuracy, exact match: higher is better), is below the
    initial student's: (student − init)/(teacher − init) then reads a student that lost items as one that closed
    the gap (try-out 45, F5: teacher 0.017, init 0.300, a student at 0.000 gave 1.059). False for a missing score
    or one that is not a proportion (its better direction unknown: not judged)."""
    vals = (teacher, init)
    if any(v is None or not math.isfinite(v) or not 0.0 <= v <= 1.0 for v in vals):
        return False
    return teacher < init


def gap_noise(teacher: float, init: float, n: int | None) -> float:
    """The smallest |teacher − init| that ``n`` items resolve, for a score that is a proportion (accuracy,
    exact match): two standard errors of the difference of two accuracies on ``n`` items,
    2·√((t(1−t) + i(1−i))/n) (as if independent: conservative for the same items), and at least
    ``MIN_GAP_ITEMS``/n. NaN (cannot judge) when ``n`` is unknown or a score is missing or outside [0, 1].
    """
    vals = (teacher, init)
    if not n or n < 1 or any(v is None or not math.isfinite(v) or not 0.0 <= v <= 1.0 for v in vals):
        return math.nan
    se = math.sqrt((teacher * (1 - teacher) + init * (1 - init)) / n)
    return max(2.0 * se, MIN_GAP_ITEMS / n)


def mean_noise(noises: Sequence[float]) -> float:
    """:func:`gap_noise` of a macro mean over tasks: √(Σ noise²)/k (independent tasks); NaN if any is NaN."""
    if not noises or any(not math.isfinite(x) for x in noises):
        return math.nan
    return math.sqrt(sum(x * x for x in noises)) / len(noises)


def gap_within_noise(teacher: float, init: float, noise: float) -> bool:
    """True when |teacher − init| is below ``noise`` (:func:`gap_noise`): the gap closed would be a ratio of
    noise. False when the noise is unknown (NaN): the ratio is then reported as it is."""
    if any(v is None or not math.isfinite(v) for v in (teacher, init, noise)):
        return False
    return abs(teacher - init) < noise


def format_gap(value: Any, fmt: str = ".3f") -> str:
    """A table cell of a figure that may be words: the number, or words (:data:`GAP_WITHIN_NOISE`, a mean's
    "(1 of 2 MC tasks)") passed through."""
    return value if isinstance(value, str) else format(value, fmt)


def task_starts(eval_json: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """The initial student's downstream-task figures an eval.json records (its ``tasks`` section's
    ``student_init`` results and tag means), keyed as :func:`task_sets` keys the student's: ``task:<name>`` and
    ``tasks[<tag>]`` → ``score`` and ``ece`` (NaN where none) — what ``ekd compare``'s ``(student init)`` row
    shows beside the eval sets' starting figures (try-out 119, F5: it showed '—' in every task column)."""
    section = eval_json.get("tasks") or {}
    out = {
        f"task:{task}": {"score": _nan(r.get("value")), "ece": _nan(r.get("ece"))}
        for task, r in (section.get("student_init") or {}).items()
        if isinstance(r, Mapping)
    }
    summary = (section.get("summary") or {}).get("student_init") or {}
    for tag, mean in (summary.get("mean") or {}).items():
        out[f"tasks[{tag}]"] = {"score": _nan(mean), "ece": _nan(_whole_tag_ece(summary, tag))}
    return out


def _whole_tag_ece(summary: Mapping[str, Any], tag: str) -> Any:
    """A tag's MC-ECE mean as ``ekd compare`` shows it: only where it is over every multiple-choice task of the
    tag — None where some have no estimate (``mc_ece_without``): a mean over a subset under the tag's name, which
    two runs may draw differently (try-out 139, F4; ``ekd eval``'s table says "(1 of 2 MC tasks)")."""
    if (summary.get("mc_ece_without") or {}).get(tag):
        return None
    return (summary.get("mc_ece") or {}).get(tag)


def task_sets(eval_json: Mapping[str, Any]) -> dict[str, dict[str, float]]:
    """eval.json with its ``tasks`` section flattened into eval-set-like entries for ``ekd compare``.

    Each task becomes ``task:<name>`` (``/teacher`` for the teacher) with ``score`` (its primary metric) and
    ``ece`` (MC-ECE %); each tag's macro mean becomes ``tasks[<tag>]``. Other entries pass through.
    """
    out = {k: v for k, v in eval_json.items() if k != "tasks"}
    section = eval_json.get("tasks") or {}
    for role, suffix in (("student", ""), ("teacher", "/teacher")):
        teachers = set()
        for task, r in (section.get(role) or {}).items():
            out[f"task:{task}{suffix}"] = {"score": _nan(r.get("value")), "ece": _nan(r.get("ece"))}
            if isinstance(r.get(TEACHER_KEY), dict):  # the teacher a teacher result was scored with
                out[f"task:{task}{suffix}"][TEACHER_KEY] = r[TEACHER_KEY]
            teachers.add(json.dumps(r.get(TEACHER_KEY), sort_keys=True))
        summary = (section.get("summary") or {}).get(role) or {}
        for tag, mean in (summary.get("mean") or {}).items():
            ece = _whole_tag_ece(summary, tag)
            out[f"tasks[{tag}]{suffix}"] = {"score": _nan(mean), "ece": _nan(ece)}
            if suffix and len(teachers) == 1 and (one := json.loads(next(iter(teachers)))) is not None:
                out[f"tasks[{tag}]{suffix}"][TEACHER_KEY] = one  # every task of the means by one teacher
    return out


GENERATION_SETTINGS = ("max_new_tokens", "chat_template")
"""Task settings (:class:`~ekd.eval.tasks.TaskSettings` fields) read by generation (``generate_until``) tasks
alone: a multiple-choice or log-likelihood task's score is the same under any value (try-out 119, F3: a budget
raised for GSM8K made ARC's results another way, scored again and split into another column)."""

GROUP_GENERATES = "group_generates"
"""The key of a task result recording whether the group it was requested in (a ``group:`` YAML, or the task
alone) holds a generation task: lm-eval renders every leaf of such a group through the chat template
(``eval.tasks_chat_template``), a multiple-choice one too (try-out 120, F5)."""
UNRECORDED_GROUP = "group_generates_unrecorded"
"""The key :func:`task_ways` sets on the way of a non-generating task beside generating ones whose result records no
:data:`GROUP_GENERATES` (an older ekd's; its way keeps the chat template): no part of the way (``ekd compare`` leaves
it out), it names the runs to evaluate again."""

SETTINGS_NOT_A_WAY = ("tasks", "seed")
"""``tasks.settings`` keys that do not make another way of scoring a task: the list of tasks scored with it, and
the seed (the run's: few-shot examples drawn per seed are part of what varies over seeds)."""


def generates(result: Mapping[str, Any]) -> bool:
    """Whether a task result is a generation task's (``generate_until``; one that records no output type, an older
    ekd's, is taken to be: its budget may have mattered)."""
    return result.get("output_type") in (None, "generate_until")


def _generation_settings_read(result: Mapping[str, Any], any_generates: bool) -> set[str]:
    """The :data:`GENERATION_SETTINGS` a task's score depends on: both for a generation task (:func:`generates`),
    the chat template alone for another task of a group that generates (:data:`GROUP_GENERATES`; a result of an
    older ekd, which did not record it, by whether any task of its run generates — review of session 34, R6),
    none otherwise."""
    if generates(result):
        return set(GENERATION_SETTINGS)
    return {"chat_template"} if result.get(GROUP_GENERATES, any_generates) else set()


def task_ways(eval_json: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """How each task entry of :func:`task_sets` was scored, for ``ekd compare`` to pair runs only where it is
    the same: ``task:<name>`` → the section's ``settings`` (limit, few-shot, generation budget, chat template,
    ECE bins) but :data:`SETTINGS_NOT_A_WAY` (and :data:`GENERATION_SETTINGS` for a task that does not generate), the documents scored (``n``) and what the task was: its own
    identity (``documents_sha256``: its config and documents by content, :mod:`ekd.eval.task_data`) where the
    result records one — the tasks directory's path is then no part of it, and another task's edit changes
    nothing here; in eval.json of an older ekd, the tasks directory's path and, where recorded, its content hash
    (``tasks_dir_hash``), as that ekd paired them. ``tasks[<tag>]`` → those settings and the tasks its macro
    mean is over, each with its documents (and identity). Teacher rows are scored the way of their task. {}
    without a ``tasks`` section.

    Example: one seed scored with ``--limit 5`` and another in full give ``task:arc_easy`` two ways
    (``{"limit": 5, ..., "documents": 5}`` vs ``{"limit": 0, ..., "documents": 2376}``); their scores are
    two columns in ``ekd compare``, never one mean.
    """
    section = eval_json.get("tasks") or {}
    settings = {k: v for k, v in (section.get("settings") or {}).items() if k not in SETTINGS_NOT_A_WAY}
    student = section.get("student") or {}
    tags = section.get("tags") or {}
    out: dict[str, dict[str, Any]] = {}
    members: dict[str, dict[str, Any]] = {}  # tag → task → documents (and identity)
    reads: dict[str, set[str]] = {}  # tag → the generation settings some task of it reads
    any_generates = any(generates(r) for r in student.values())
    for task, r in student.items():
        read = _generation_settings_read(r, any_generates)
        own = {k: v for k, v in settings.items() if k in read or k not in GENERATION_SETTINGS}
        identity = r.get(DOCUMENTS_SHA256)
        if any_generates and not generates(r) and GROUP_GENERATES not in r:  # its way read with the template
            own[UNRECORDED_GROUP] = True
        if identity:  # the task by content: where its directory lies, and what else it holds, do not matter
            way = {k: v for k, v in own.items() if k not in ("tasks_dir", "tasks_dir_hash")}
            out[f"task:{task}"] = {**way, DOCUMENTS_SHA256: identity, "documents": r.get("n")}
            member: Any = [r.get("n"), identity]
        else:
            out[f"task:{task}"] = {**own, "documents": r.get("n")}
            member = r.get("n")
        tag = tags.get(task) or tag_of(task, {})
        members.setdefault(tag, {})[task] = member
        reads.setdefault(tag, set()).update(read)
    for tag, tasks in members.items():
        identified = all(isinstance(m, list) for m in tasks.values())
        way = {
            k: v
            for k, v in settings.items()
            if (not identified or k not in ("tasks_dir", "tasks_dir_hash"))
            and (k in reads[tag] or k not in GENERATION_SETTINGS)
        }
        out[f"tasks[{tag}]"] = {**way, "tasks": dict(sorted(tasks.items()))}
    return out


def tag_documents(way: Mapping[str, Any]) -> dict[str, int | None]:
    """task → documents scored, of a ``tasks[<tag>]`` way (:func:`task_ways`: each member is its documents, or
    [documents, identity] where the result records its task's identity)."""
    return {t: m[0] if isinstance(m, list) else m for t, m in (way.get("tasks") or {}).items()}


DOCUMENTS_SHA256 = "documents_sha256"
"""The key of a task's identity (:class:`ekd.eval.task_data.LeafTask`'s ``sha256``: its config and documents) in
each result of eval.json's ``tasks`` section and in a cached result's signature."""


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)
