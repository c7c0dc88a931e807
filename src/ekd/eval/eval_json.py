"""What ``RUN/eval.json`` holds for each text eval set, and how a later ``ekd eval RUN`` updates it.

``eval.json`` maps a set name (``eval``, a ``data.eval_sources`` name, a builtin ``shift_*`` set) to its
metrics, ``<set>/teacher`` to the teacher's on the same blocks, and ``tasks`` to the lm-eval section. Each
set's entry also records, under :data:`SETTINGS_KEY`, the data settings it was scored with
(:func:`set_settings`): ``ekd eval RUN data.max_eval_blocks=0`` scores sets the run's ``config.yaml`` does
not describe, and ``ekd compare`` pairs two runs on a set only when these agree. An ``eval.json`` written
before sets recorded them is read through the run's config (the same function, so old and new runs pair).

Each set's entry also holds, under :data:`BLOCK_SUMS_KEY`, its sums per block (:data:`ekd.eval.metrics.BLOCK_SUMS`):
what ``ekd compare`` needs to say how much of a difference the fixed sample of eval text could make. An entry
written before they were recorded has none, and is read as before.

``ekd eval RUN`` replaces the entries of the sets it scores (with their teacher rows) and keeps every other
set and the ``tasks`` section (:func:`merge`): evaluating one more set never deletes the results of another.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ekd.config.sections import READ_ONLY_DATA_KEYS
from ekd.errors import EkdError
from ekd.json_record import read_json_record
from ekd.json_words import shown, value_kind
from ekd.models.identity import ran_in

EVAL_JSON = "eval.json"


def read_eval_json(run_dir: Path, fix: str = "fix it, or move it away") -> dict[str, Any] | None:
    """``run_dir/eval.json`` as a JSON object; None when there is none. The one reader of the file for every
    command that reads what it holds (``ekd eval``, the tasks' merge, the held-out check, ``ekd compare``): a file
    that is there but cannot be read is never taken for none (review 126, R4: one byte short of valid JSON, it was
    replaced by the sets scored then — the others' figures lost — with a warning). ``fix``: the way out named for
    a file that is not a JSON object (:func:`ekd.json_record.read_json_record`).

    Raises:
        EkdError: one line — something other than a file is in its place, it cannot be read (its permissions:
            try-out 127, F6 — it was called invalid JSON and told to be moved away), or it is not a JSON object.
    """
    path = Path(run_dir) / EVAL_JSON
    saved = read_json_record(path, fix, not_a_file="remove it, or put the run's eval.json back")
    if saved is None:
        return None
    if not isinstance(saved, dict):
        raise EkdError(f"{path} is not valid JSON for ekd (a JSON {value_kind(saved)}, not an object); {fix}")
    return with_overflowed_perplexities(saved)


SETTINGS_KEY = "data"
"""The key of a set's entry holding the ``data.*`` settings it was scored with (not a metric)."""
BLOCKS_KEY = "blocks_sha256"
"""The key, within a set's :data:`SETTINGS_KEY`, of the sha256 of the set's packed blocks (what it holds, wherever
its files are): ``ekd compare`` identifies sets by it when every run compared records it."""
SCORING_KEY = "scoring"
"""The key of a set's entry holding the settings its figures were computed with (``ece_bins``,
``entropy_buckets``, and ``precision``, the forward passes' autocast: ``fp32`` or ``bf16``): ECE over 5 bins is
another figure than over 15 (try-out 34: ``ekd compare`` averaged the two), and a bf16 forward another than an
fp32 one (try-out 45: ``ekd eval RUN train.precision=bf16`` moved the teacher's ECE by 6%, recorded nowhere)."""
PRECISION = "precision"
SCORING_SETTINGS = ("ece_bins", "entropy_buckets", PRECISION)
TEACHER_KEY = "teacher"
"""The key of a set's entry and of its teacher row holding the teacher its KL, agreement and teacher figures were
measured with (:func:`ekd.models.identity.teacher_identity`: a local directory's weights by the sha256 of their
bytes, so a teacher retrained or edited in place is another teacher; try-outs 39, 44)."""
TEACHER_SUFFIX = "/teacher"
STUDENT_INIT_KEY = "student_init"
"""The key of a set's entry holding the starting student's figures on the same blocks (``ekd distill``'s
evaluation before its first step, ``eval.student_init``): the set's metrics as numbers, no per-block sums.
Recorded only where that evaluation scored the set with the same data settings, blocks, scoring and teacher as
the entry (:func:`with_student_init`)."""
STUDENT_INIT_FILE = "eval_student_init.json"
"""The run's file of the starting student's eval.json entries, written before the first step and read at the end
(a --resume included) to fill :data:`STUDENT_INIT_KEY`."""
BLOCK_SUMS_KEY = "block_sums"
"""The key of a set's entry holding its per-block sums: :data:`ekd.eval.metrics.BLOCK_SUMS` name → one number per
block, block i the i-th row of the set's packed eval batches (counts as whole numbers, NLL sums in nats)."""
CONTENT_KEYS = (
    "source",
    "eval_sources",
    "format",
    "text_field",
    "prompt_field",
    "response_field",
    "messages_field",
    "tools_field",
    "chat_template",
    "chat_template_from",
    "hf_name",
    "hf_split",
)
"""``data.*`` keys that decide only what text a set's blocks hold — where it is, which fields of its rows, how a
chat is rendered — all of which the blocks' sha256 (:data:`BLOCKS_KEY`: token ids, targets and document starts)
captures: a set identified by that sha256 is not told apart by them (try-out 53, F1: ``ekd eval RUN
data.prompt_field=prompt ...`` to add a prompt/completion set split the run's text ``eval`` set off its own)."""


def precision_name(autocast: Any) -> str:
    """``bf16`` / ``fp16`` for an autocast dtype (a ``torch.dtype`` or None), ``fp32`` without autocast: the
    ``precision`` an eval.json entry records."""
    names = {"torch.bfloat16": "bf16", "torch.float16": "fp16"}
    return "fp32" if autocast is None else names.get(str(autocast), str(autocast))


def set_settings(data: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The data settings that decide eval set ``name``'s blocks: the ``data`` section as ``config.yaml``
    writes it, without :data:`~ekd.config.READ_ONLY_DATA_KEYS`, with ``eval_sources`` narrowed to ``name``'s own entry (``{}`` for
    the ``eval`` split and the builtin sets). Each source is read on its own (:func:`ekd.data.build.load_splits`), so the other sets
    named beside it do not change it; every other key is kept, whether or not it matters to this set.

    Args:
        data: The ``data`` section (``Config.to_dict()["data"]`` or a saved config's); not modified.
        name: The set's name.
    """
    out = {k: v for k, v in data.items() if k not in READ_ONLY_DATA_KEYS}
    sources = out.get("eval_sources") or {}
    out["eval_sources"] = {name: sources[name]} if name in sources else {}
    return out


TRAINING_SPLIT_KEYS = ("source", "eval_fraction", "max_tokens")
"""``data.*`` keys only the training split and the split held out of it depend on (the training source, its
held-out fraction and its token budget): a named set's blocks (``data.eval_sources``, each read on its own) never
do."""


def recorded_settings(recorded: Mapping[str, Any]) -> dict[str, Any]:
    """A set's recorded data settings (an entry's :data:`SETTINGS_KEY`, :data:`BLOCKS_KEY` kept) as they are
    compared, as JSON reads them back: ``data`` keys added to ekd after the entry was written at their defaults (a
    key is added with a default that keeps what earlier runs computed: :func:`~ekd.config.with_todays_defaults`),
    without :data:`~ekd.config.READ_ONLY_DATA_KEYS`, and for a named set (its ``eval_sources`` entry) without
    :data:`TRAINING_SPLIT_KEYS`. So an entry of an older ekd is not told apart from today's by a key it could not
    record (try-out 101, F1: every eval.json written before ``data.max_document_chars`` existed skipped ``ekd
    eval``'s check that the held-out split is the one the run scored), nor a named set by a training key
    (try-out 102, F1: ``ekd eval RUN data.eval_fraction=0 ...``, the way on ekd's own refusal gives, scored a
    changed named set without a word and dropped its start's figures)."""
    from ekd.config import with_todays_defaults

    filled = with_todays_defaults({"data": dict(recorded)})["data"]
    unread = (*READ_ONLY_DATA_KEYS, *(TRAINING_SPLIT_KEYS if filled.get("eval_sources") else ()))
    return json.loads(json.dumps({k: v for k, v in filled.items() if k not in unread}, default=str))


class EvalResults(dict):
    """Set → metrics (numbers: what ``metrics.jsonl`` logs and ``ekd distill`` prints), as
    :func:`ekd.train.evaluation.evaluate_run` returns them, with :attr:`block_sums`: set → its per-block sums
    (:meth:`ekd.eval.metrics.StreamingMetrics.block_sums`), which eval.json records beside the metrics
    (:data:`BLOCK_SUMS_KEY`) and nothing logs, and :attr:`teacher_dtype`, which its teacher identity records."""

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.block_sums: dict[str, dict[str, list[float]]] = {}
        self.teacher_dtype: Any = None  # the evaluated teacher's torch.dtype (None: no teacher evaluated)


def block_sums_record(sums: Mapping[str, list[float]]) -> dict[str, list[float] | list[int | None]]:
    """Per-block sums as eval.json records them: the counts as whole numbers (``tokens``, ``correct``,
    ``boundary_tokens``; a NaN count — ``correct`` of a block with a non-finite student row — as None, which
    :func:`block_sums_of` reads back as NaN), the NLL sums as float64 (JSON's shortest repr: no precision lost)."""

    def count(x: float) -> int | None:  # review of session 33: int(round(nan)) was a traceback
        return int(round(x)) if math.isfinite(x) else None

    return {
        k: [count(x) if k in ("tokens", "correct", "boundary_tokens") else float(x) for x in v]
        for k, v in sums.items()
    }


def block_sums_of(entry: Mapping[str, Any]) -> dict[str, list[float]] | None:
    """The per-block sums an eval.json entry (or :class:`~ekd.eval.compare.runs.RunRecord` metrics) records,
    ``null`` read back as NaN; None for an entry without them (an older ekd's, a teacher row, a task)."""
    sums = entry.get(BLOCK_SUMS_KEY)
    if not isinstance(sums, Mapping):
        return None
    return {k: [math.nan if x is None else float(x) for x in v] for k, v in sums.items()}


def set_of(entry: str) -> str:
    """The eval set an eval.json entry belongs to: ``held`` for ``held`` and ``held/teacher``."""
    return entry[: -len(TEACHER_SUFFIX)] if entry.endswith(TEACHER_SUFFIX) else entry


def with_settings(
    results: Mapping[str, Mapping[str, Any]],
    data: Mapping[str, Any],
    blocks: Mapping[str, str] | None = None,
    scoring: Mapping[str, Any] | None = None,
    teacher: Mapping[str, Any] | None = None,
    block_sums: Mapping[str, Mapping[str, list[float]]] | None = None,
) -> dict[str, Any]:
    """``results`` (set → metrics, as :func:`ekd.train.evaluation.evaluate_run` returns) as eval.json
    entries: each set's own entry gains :data:`SETTINGS_KEY` (its :func:`set_settings`, and the sha256 of its
    blocks, ``blocks[set]``, under :data:`BLOCKS_KEY`) and :data:`SCORING_KEY` (``scoring``: the ``eval``
    section, narrowed to :data:`SCORING_SETTINGS`); teacher rows are scored on their set's blocks the set's way
    and carry none. Every entry measured with the teacher (its row, a set's KL and agreement) records
    ``teacher`` under :data:`TEACHER_KEY`. A set in ``block_sums`` (set → its per-block sums) records them
    under :data:`BLOCK_SUMS_KEY` (:func:`block_sums_record`)."""
    out: dict[str, Any] = {}
    for name, metrics in results.items():
        out[name] = dict(metrics)
        if teacher is not None and (name.endswith(TEACHER_SUFFIX) or "kl" in metrics or "agree" in metrics):
            out[name][TEACHER_KEY] = dict(teacher)
        if not name.endswith(TEACHER_SUFFIX):
            out[name][SETTINGS_KEY] = set_settings(data, name)
            if blocks and name in blocks:
                out[name][SETTINGS_KEY][BLOCKS_KEY] = blocks[name]
            if scoring is not None:
                out[name][SCORING_KEY] = {k: scoring[k] for k in SCORING_SETTINGS if k in scoring}
            if block_sums and name in block_sums:
                out[name][BLOCK_SUMS_KEY] = block_sums_record(block_sums[name])
    return out


def with_student_init(entries: Mapping[str, Any], init: Mapping[str, Any] | None) -> dict[str, Any]:
    """``entries`` (eval.json entries, as :func:`with_settings` writes them) with each set's starting-student
    figures under :data:`STUDENT_INIT_KEY`, taken from ``init`` (entries of the same form: the evaluation before the
    first step, or :func:`student_init_entries` of an earlier eval.json), where ``init`` scored that set with the
    same recorded data settings (blocks included) and scoring settings: figures of other blocks or bins are not the
    same set's (left out). The figures measured against the teacher (:func:`teacher_relative`) come along only
    where ``init`` measured them against the same teacher: a start scored without one (a run from a teacher cache
    holds no teacher while it trains; try-out 93, F1 — its ppl, acc and ECE were dropped with them) or against
    another keeps its other figures. Teacher rows get none. ``entries`` is not modified."""
    out = {name: dict(entry) if isinstance(entry, dict) else entry for name, entry in entries.items()}
    for name, entry in out.items():
        if name == "tasks" or name.endswith(TEACHER_SUFFIX) or not isinstance(entry, dict):
            continue
        entry.pop(STUDENT_INIT_KEY, None)
        start = (init or {}).get(name)
        if not isinstance(start, dict) or not _scored_alike(entry, start):
            continue
        same_teacher = _same_teacher(entry, start)
        numbers = {
            k: v for k, v in start.items() if _is_metric(k, v) and (same_teacher or not teacher_relative(k))
        }
        if numbers:
            entry[STUDENT_INIT_KEY] = numbers
    return out


def teacher_relative(key: str) -> bool:
    """Whether a set's metric ``key`` is measured against the teacher: KL, top-1 agreement, the teacher's entropy
    and tokens, and every figure per teacher-entropy bucket (``kl@H<i>``, ``acc@H<i>``, ...)."""
    return key in ("kl", "agree", "teacher_entropy", "teacher_tokens") or "@H" in key


def _scored_alike(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two entries of one set were scored on the same blocks the same way: equal scoring settings; data
    settings equal but for :data:`CONTENT_KEYS` and ``max_eval_blocks`` (which only picks the blocks) where both
    record their blocks' sha256 (equal too: a resumed run's data read from another path is the same set; try-out
    95, F5: ``ekd eval RUN data.max_eval_blocks=4`` of a set of 3 blocks dropped its start)."""
    if a.get(SCORING_KEY) != b.get(SCORING_KEY):
        return False
    da, db = a.get(SETTINGS_KEY) or {}, b.get(SETTINGS_KEY) or {}
    if da and db:  # both recorded: an older ekd's entry read with the keys added since at their defaults
        da, db = recorded_settings(da), recorded_settings(db)
    if BLOCKS_KEY in da and BLOCKS_KEY in db:
        moot = (*CONTENT_KEYS, "max_eval_blocks")
        da, db = ({k: v for k, v in d.items() if k not in moot} for d in (da, db))
    return da == db


def _same_teacher(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two entries record the same teacher, a local one by its weights (the same files moved are the same
    teacher); two entries without one (no teacher figures) are alike."""
    ta, tb = a.get(TEACHER_KEY), b.get(TEACHER_KEY)
    if not (isinstance(ta, Mapping) and isinstance(tb, Mapping)):
        return ta == tb
    skip = ("model", "dtype") if ta.get("weights") and tb.get("weights") else ("dtype",)
    dtypes = [ran_in(e[TEACHER_KEY].get("dtype"), (e.get(SCORING_KEY) or {}).get(PRECISION)) for e in (a, b)]
    ta, tb = ({k: v for k, v in t.items() if k not in skip} for t in (ta, tb))
    return ta == tb and dtypes[0] == dtypes[1]


def student_init_entries(saved: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The starting student's entries an eval.json records (set → its :data:`STUDENT_INIT_KEY` figures with the
    set's records, :data:`RECORD_KEYS`): what :func:`with_student_init` carries into a re-evaluation of the set
    (``ekd eval RUN``: the start did not change)."""
    return {
        name: {**{k: entry[k] for k in RECORD_KEYS if k in entry}, **entry[STUDENT_INIT_KEY]}
        for name, entry in saved.items()
        if isinstance(entry, dict) and isinstance(entry.get(STUDENT_INIT_KEY), dict)
    }


def student_init_rows(entries: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """``<set>/student_init`` → the starting student's figures, for each set entry of ``entries`` that records
    them (:data:`STUDENT_INIT_KEY`): the rows of ``ekd distill``'s and ``ekd eval``'s tables."""
    return {
        f"{name}/{STUDENT_INIT_KEY}": dict(entry[STUDENT_INIT_KEY])
        for name, entry in entries.items()
        if isinstance(entry, dict) and isinstance(entry.get(STUDENT_INIT_KEY), dict)
    }


def student_init_rows_of(run_dir: Path) -> dict[str, dict[str, Any]]:
    """:func:`student_init_rows` of ``run_dir``/eval.json (:func:`read_eval_json`); {} where there is none, or
    none that can be read — said in a warning, the table then printed without them (review 132, R2: left out
    without a word)."""
    import logging

    try:
        saved = read_eval_json(run_dir)
    except EkdError as e:
        logging.getLogger(__name__).warning("%s; the table leaves out the starting student's figures", e)
        return {}
    return student_init_rows(saved) if saved is not None else {}


def with_teacher_figures(new: Mapping[str, Any], old: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """``new`` (a re-evaluation of a run's export) with ``old``'s figures against the teacher for each set ``new``
    scored without one (``eval.teacher=false``) and ``old`` scored with one, alike (:func:`_scored_alike`), where the
    student's own figures agree (to 1e-5, relative: the same export on the same blocks, another thread count): its
    teacher-relative metrics (:func:`teacher_relative`), the teacher it measured them with and the ``<set>/teacher``
    row. A re-evaluation without a teacher that is gone no longer drops what was measured with it (try-out 138).

    Returns:
        The entries (``new`` is not modified) and the sets whose teacher figures were kept.
    """
    out: dict[str, Any] = {}
    kept: list[str] = []
    for name, entry in new.items():
        out[name] = entry = dict(entry) if isinstance(entry, dict) else entry
        if (
            name == "tasks"
            or name.endswith(TEACHER_SUFFIX)
            or not isinstance(entry, dict)
            or TEACHER_KEY in entry
        ):
            continue
        before = old.get(name)
        if not isinstance(before, dict) or not isinstance(before.get(TEACHER_KEY), Mapping):
            continue
        own = [k for k, v in entry.items() if _is_metric(k, v) and not teacher_relative(k)]
        if (
            not _scored_alike(entry, before)
            or not own
            or not all(_close(entry[k], before.get(k)) for k in own)
        ):
            continue
        entry.update({k: v for k, v in before.items() if _is_metric(k, v) and teacher_relative(k)})
        entry[TEACHER_KEY] = before[TEACHER_KEY]
        if isinstance(row := old.get(f"{name}{TEACHER_SUFFIX}"), dict):
            out[f"{name}{TEACHER_SUFFIX}"] = row  # its teacher row after it, as the evaluation writes them
        kept.append(name)
    return out, kept


def _close(a: Any, b: Any) -> bool:
    """Two recorded figures equal to 1e-5 relative; NaN (``null`` in eval.json) equals NaN."""
    a, b = (math.nan if x is None else x for x in (a, b))
    if not all(isinstance(x, (int, float)) for x in (a, b)):
        return a == b
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-12)


def merge(old: Mapping[str, Any], new: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """eval.json after a re-evaluation: ``new``'s entries, and those of ``old`` whose set ``new`` did not
    score (with their teacher rows) and ``old``'s ``tasks`` section, kept as they were.

    Returns:
        The merged entries (``new``'s sets first, then the kept ones in ``old``'s order, then ``tasks``) and
        the names of the sets kept from ``old``.
    """
    scored = {set_of(k) for k in new}
    out = dict(new)
    kept: list[str] = []
    for key, value in old.items():
        if key == "tasks" or not isinstance(value, dict) or set_of(key) in scored:
            continue
        out[key] = value
        if set_of(key) not in kept:
            kept.append(set_of(key))
    if isinstance(old.get("tasks"), dict):
        out["tasks"] = old["tasks"]
    return out, kept


def split_settings(
    entries: Mapping[str, Mapping[str, Any]],
) -> tuple[
    dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, dict[str, Any]], dict[str, dict[str, Any]]
]:
    """eval.json's set entries → (set → metrics alone, set → recorded data settings, set → recorded scoring
    settings (:data:`SCORING_KEY`), entry → the teacher it was measured with (:data:`TEACHER_KEY`); the last three
    for the entries that record them). The metrics keep a set's per-block sums (:data:`BLOCK_SUMS_KEY`, read by
    :func:`block_sums_of`): figures at the grain of blocks, which ``ekd compare`` reports none of."""
    metrics: dict[str, dict[str, Any]] = {}
    settings: dict[str, dict[str, Any]] = {}
    scoring: dict[str, dict[str, Any]] = {}
    teachers: dict[str, dict[str, Any]] = {}
    for name, entry in entries.items():
        # an object under a key not known here is a later ekd's record, not a metric (see malformed)
        metrics[name] = {k: v for k, v in entry.items() if _is_metric(k, v) or k == BLOCK_SUMS_KEY}
        if isinstance(entry.get(SETTINGS_KEY), dict):
            settings[name] = dict(entry[SETTINGS_KEY])
        if isinstance(entry.get(SCORING_KEY), dict):
            scoring[name] = dict(entry[SCORING_KEY])
        if isinstance(entry.get(TEACHER_KEY), dict):
            teachers[name] = dict(entry[TEACHER_KEY])
    return metrics, settings, scoring, teachers


RECORD_KEYS = (SETTINGS_KEY, SCORING_KEY, TEACHER_KEY)
"""The keys of an entry that record how it was scored (objects), not metrics (numbers)."""


def _is_metric(key: str, value: Any) -> bool:
    """Whether an entry's ``key`` holds a metric: not a record (:data:`RECORD_KEYS`, ``block_sums``, or an object
    a later ekd writes)."""
    return key not in RECORD_KEYS and key != BLOCK_SUMS_KEY and not isinstance(value, dict)


def malformed(saved: Any) -> str | None:
    """What is wrong with a parsed ``eval.json`` for a reader that takes its entries' metrics as numbers, as
    words ('entry 'held' is 5, not an object of metrics'); None when every set entry is an object whose metrics
    are numbers or null and each record (:data:`RECORD_KEYS`) and the ``tasks`` section is an object (try-out
    45, F3: a string, a list or an object where a number is expected was a traceback in ``ekd compare`` and was
    kept without a word, or dropped while said kept, by ``ekd eval``). An object under a key this ekd does not
    know is a record a later ekd writes beside the metrics (as ``block_sums`` once was): accepted, kept by
    ``ekd eval``'s merge and read by nothing, so a newer run's eval.json stays readable (review 106, item 13)."""
    if not isinstance(saved, dict):
        return f"it holds a JSON {value_kind(saved)}, not an object of eval sets"
    for name, entry in saved.items():
        if name == "tasks":
            if not isinstance(entry, dict):
                return f"its 'tasks' section is a JSON {value_kind(entry)}, not an object"
            continue
        if not isinstance(entry, dict):
            return f"entry '{name}' is a JSON {value_kind(entry)} ({shown(entry)}), not an object of metrics"
        for key, value in entry.items():
            if key in RECORD_KEYS:
                if not isinstance(value, dict):
                    return f"'{name}' records '{key}' as a JSON {value_kind(value)}, not an object"
            elif key == BLOCK_SUMS_KEY:
                if problem := _block_sums_problem(value):
                    return f"'{name}' records '{key}' {problem}"
            elif key == STUDENT_INIT_KEY:
                if not isinstance(value, dict):
                    return f"'{name}' records '{key}' as a JSON {value_kind(value)}, not an object of metrics"
                if problem := malformed({f"{name}/{key}": value}):
                    return problem
            elif isinstance(value, dict):
                continue  # a record a later ekd writes (review 106, item 13): kept, not read as a metric
            elif value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                return f"'{name}' metric '{key}' is a JSON {value_kind(value)} ({shown(value)}), not a number"
        if problem := _disagreement(entry):
            return f"'{name}' {problem}"
    return None


PPL_OF = {"ppl": "loss", "ppl_no_boundary": "loss_no_boundary", "ppl_full_head": "loss_full_head"}
"""A perplexity figure → the mean loss (nats per token) it is ``exp`` of."""

OVERFLOW_NATS = math.log(sys.float_info.max)
"""A mean loss (nats per token) above which its perplexity, ``exp`` of it, is +inf in float64 (~709.78)."""


def with_overflowed_perplexities(entries: Mapping[str, Any]) -> dict[str, Any]:
    """``entries`` (eval.json's, or eval_student_init.json's, as JSON reads them) with each perplexity written as
    ``null`` beside a finite loss above :data:`OVERFLOW_NATS` as +inf again, in the sets' entries and their
    :data:`STUDENT_INIT_KEY` figures: strict JSON has no infinity (:func:`ekd.io.json_safe` writes it as null, as
    NaN), and a perplexity that overflowed read back as NaN showed "—" (not scored) beside the same kind of figure
    shown "inf" where it was never written (try-out 150, F3). ``entries`` is not modified."""

    def restored(figures: dict[str, Any]) -> dict[str, Any]:
        out = dict(figures)
        for ppl_key, loss_key in PPL_OF.items():
            loss = out.get(loss_key)
            number = isinstance(loss, (int, float)) and not isinstance(loss, bool)
            if ppl_key in out and out[ppl_key] is None and number and OVERFLOW_NATS < loss < math.inf:
                out[ppl_key] = math.inf
        return out

    out = dict(entries)
    for name, entry in out.items():
        if name == "tasks" or not isinstance(entry, dict):
            continue
        out[name] = restored(entry)
        if isinstance(start := entry.get(STUDENT_INIT_KEY), dict):
            out[name][STUDENT_INIT_KEY] = restored(start)
    return out


_RANGES = {"acc": (0.0, 1.0), "agree": (0.0, 1.0), "ece": (0.0, 100.0), "kl": (-1e-3, math.inf)}
"""Figures with bounds (ECE in percent; a KL above −1e-3: float noise of a mean of non-negative terms)."""


def _disagreement(entry: dict[str, Any]) -> str | None:
    """Where an entry's figures contradict each other or their bounds, as words; None when they agree (the entry
    passed :func:`malformed`'s checks of each value, its block sums included). Each
    perplexity is exp of its loss, and a set's loss, accuracy and token count are its per-block sums' ratios
    (try-out 55, F6: a ppl edited by hand was compared as it stood, beside the loss and block sums it
    contradicts); NaN or ±inf where those give a finite figure contradicts it too, and acc, agreement, ECE and KL
    stay in their ranges (try-out 57, F1). A null (JSON's NaN as ekd writes it) or missing figure is not compared;
    the block sums to a relative 1e-6 (float32 sums on the device)."""

    def raw(key: str) -> float | None:
        value = entry.get(key)
        return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else None

    def agree(value: float, figure: float, rel: float) -> bool:
        return math.isfinite(value) and math.isclose(value, figure, rel_tol=rel)

    for ppl_key, loss_key in PPL_OF.items():
        ppl, loss = raw(ppl_key), raw(loss_key)
        if ppl is None or loss is None or not math.isfinite(loss) or loss > 700:  # exp overflows past ~709
            continue
        if not agree(ppl, math.exp(loss), 1e-9):
            return f"{ppl_key} {ppl:g} is not exp({loss_key} {loss:g}) = {math.exp(loss):g}"
    for key, (low, high) in _RANGES.items():
        value = raw(key)
        if value is not None and not math.isnan(value) and not low <= value <= high:
            return f"{key} {value:g} is outside [{max(low, 0):g}, {high:g}]"
    sums = entry.get(BLOCK_SUMS_KEY)  # checked well-formed by malformed, before
    if not isinstance(sums, dict):
        return None
    totals = {k: math.fsum(x for x in v if x is not None) for k, v in sums.items()}
    tokens = totals.get("tokens")
    if not tokens:
        return None
    for key, figure in (("tokens", tokens), ("loss", totals.get("nll", math.nan) / tokens),
                        ("acc", totals.get("correct", math.nan) / tokens)):  # fmt: skip
        value = raw(key)
        if value is not None and math.isfinite(figure) and not agree(value, figure, 1e-6):
            return f"{key} {value:g} is not what its block sums give ({figure:g})"
    return None


def _block_sums_problem(value: Any) -> str | None:
    """What makes ``value`` no :data:`BLOCK_SUMS_KEY` record, as words ('as a JSON list, not an object'); None
    when it is an object of lists of numbers (or null, a NaN) of one length."""
    if not isinstance(value, dict):
        return f"as a JSON {value_kind(value)}, not an object of per-block lists"
    lengths = set()
    for key, values in value.items():
        if not isinstance(values, list):
            return f"with '{key}' a JSON {value_kind(values)}, not a list of numbers"
        bad = next(
            (x for x in values if x is not None and (isinstance(x, bool) or not isinstance(x, (int, float)))),
            None,
        )
        if bad is not None:
            return f"with '{key}' holding a JSON {value_kind(bad)} ({shown(bad)}), not a number"
        lengths.add(len(values))
    if len(lengths) > 1:
        return f"with lists of different lengths ({', '.join(map(str, sorted(lengths)))})"
    return None
