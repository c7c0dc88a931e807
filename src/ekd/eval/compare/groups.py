"""Runs grouped for ``ekd compare``: a :class:`Group` is one config (a method) at several seeds, a seed's
other runs kept apart as replicas; :func:`group_runs` forms the groups and labels them by preset, and
:func:`metric_keys` names the figures a comparison reports over them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

from ekd.errors import EkdError
from ekd.eval.compare.eval_sets import label_eval_sets
from ekd.eval.compare.runs import (
    METRIC_SETTINGS,
    METRICS,
    TEACHER_RELATIVE,
    RunRecord,
    _config_differences,
    _text_set,
    most_common,
    setting_said,
)
from ekd.eval.eval_json import BLOCKS_KEY, PPL_OF
from ekd.eval.tasks import TASKS_DIR_HASH
from ekd.models.identity import comparable
from ekd.models.load import is_preset

ANOTHER_TEACHER = "another teacher"  # why a seed is left out of a KL or agreement mean (Group.one_way_values)


@dataclass
class Group:
    label: str
    runs: list[RunRecord] = field(default_factory=list)
    note: str = ""  # for a second config of a preset: the keys where it differs from the first
    # seed → the group's other runs of that seed (:func:`group_runs`): trained apart, counted once
    replicas: dict[int, list[RunRecord]] = field(default_factory=dict)

    def values(self, key: str) -> dict[int, float]:
        """seed → value of ``key`` (``<column>/<metric>``, ``kd_pct`` or ``bytes_per_token``): only the seeds
        whose run scored the column's set the column's way (:func:`label_eval_sets`)."""
        out = {}
        for r in self.runs:
            v = _value(r, key)
            if v is not None and not math.isnan(v) and not not_finite(r, key):
                out[r.seed] = v
        return out

    def not_finite(self, key: str) -> list[int]:
        """The seeds whose run scored ``key`` without a finite figure (:func:`not_finite`): left out of
        :meth:`values`, named wherever a mean or a difference is over the others (review 128, R2/R3: a seed that
        diverged dropped out of its method's mean and the verdict said *better* over the rest)."""
        return [r.seed for r in self.runs if not_finite(r, key)]

    def one_way_values(self, key: str) -> tuple[dict[int, float], dict[int, str]]:
        """:meth:`values` for a mean over seeds, and seed → why it is left out: of a figure measured against the
        teacher (KL, agreement, their per-bucket ``@H<i>``), only the seeds measured against the group's teacher on
        the column (:meth:`teacher_seeds`; try-out 45, F1: a mean over 0.058 against one teacher and 3.98, 3.99
        against another read 2.68 ± 2.27) — the others ``"another teacher"``; of a figure that reads a setting of
        its own (ECE's bins: :data:`~ekd.eval.compare.runs.METRIC_SETTINGS`), only the seeds scored with the
        group's value (:meth:`setting_seeds`) — the others ``"eval.ece_bins=5"``. Any other key: :meth:`values`
        and {}."""
        values = self.values(key)
        column, _, metric = key.rpartition("/")
        if not column:
            return values, {}
        left_out: dict[int, str] = {}
        if metric.split("@")[0] in TEACHER_RELATIVE:
            _, others = self.teacher_seeds(column)
            left_out = {s: ANOTHER_TEACHER for s in values if s in others}
        elif metric in METRIC_SETTINGS:
            _, others = self.setting_seeds(column, metric)
            left_out = {
                s: setting_said(metric, self.run(s).metric_setting(self.run(s).entry_name(column), metric))
                for s in values
                if s in others
            }
        return {s: v for s, v in values.items() if s not in left_out}, left_out

    def setting_seeds(self, column: str, metric: str) -> tuple[list[int], list[int]]:
        """(the seeds whose ``metric`` in ``column`` was scored with the group's value of the setting it reads,
        those scored with another: :meth:`RunRecord.metric_setting`): the group's value is the one most of its
        seeds that scored the column used, the first run given's on a tie."""
        runs = [r for r in self.runs if r.entry(column)]
        values = [r.metric_setting(r.entry_name(column), metric) for r in runs]
        if not values:
            return [], []
        ref = most_common(values)
        return [r.seed for r, v in zip(runs, values) if v == ref], [
            r.seed for r, v in zip(runs, values) if v != ref
        ]

    def teacher_seeds(self, column: str) -> tuple[list[int], list[int]]:
        """(the seeds whose figures in ``column`` were measured against the group's teacher there, those measured
        against another): the group's teacher is the one most of its seeds that scored the column were measured
        against (:meth:`RunRecord.teacher`, :meth:`TeacherKey.same_as`), the first run given's on a tie."""
        runs = [r for r in self.runs if r.entry(column)]
        keys = [r.teacher(column) for r in runs]
        if not keys:
            return [], []
        counts = [sum(k.same_as(o) for o in keys) for k in keys]
        ref = keys[counts.index(max(counts))]  # index(): the first of the most
        same = [r.seed for r, k in zip(runs, keys) if k.same_as(ref)]
        return same, [r.seed for r in runs if r.seed not in same]

    def run(self, seed: int) -> RunRecord:
        """The group's run with ``seed`` (one per seed: :func:`group_runs` keeps a seed's replicas apart)."""
        return next(r for r in self.runs if r.seed == seed)


MAY_BE_NAN = ("loss_no_boundary", "ppl_no_boundary")
"""Figures a finite student legitimately has none of (a set whose every target ends a document), besides the
per-bucket ``@H<i>`` ones (a bucket without tokens)."""


def not_finite(run: RunRecord, key: str) -> bool:
    """Whether ``run`` scored ``key`` (``<text set>/<metric>``) but its figure is not a finite number: the student's
    logits were not finite at some scored position (the set's ``loss`` NaN: every figure of the set is), or a
    perplexity overflowed (``exp`` of a finite mean loss above 709.8 nats is +inf, written as null). A figure a set
    legitimately has none of (a KL by entropy bucket without tokens) is no such figure."""
    column, _, metric = key.rpartition("/")
    if not column or not _text_set(column):
        return False
    entry = run.entry(column)
    if metric not in entry:
        return False
    loss, value, own = entry.get("loss"), entry.get(metric), entry.get(PPL_OF.get(metric, ""))
    if isinstance(loss, float) and math.isnan(loss):
        return True
    nan = isinstance(value, float) and math.isnan(value)
    if nan and metric not in MAY_BE_NAN and "@" not in metric:  # a KL or agreement against a teacher whose
        return True  # logits were not finite (review 132, R8), a ppl whose exp overflowed
    return (nan and isinstance(own, (int, float)) and math.isfinite(own)) or (
        isinstance(value, float) and math.isinf(value)
    )


def _value(run: RunRecord, key: str) -> float | None:
    if key in ("kd_pct", "bytes_per_token"):  # NaN: unknown (an older run's, a cache gone)
        cost = 100.0 * run.kd_fraction if key == "kd_pct" else run.bytes_per_token
        return None if math.isnan(cost) else cost
    column, _, metric = key.rpartition("/")
    v = run.entry(column).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def group_runs(runs: list[RunRecord]) -> list[Group]:
    """Groups in first-seen order, labelled by preset (``preset#2`` … when one preset has several configs).
    When every run records its training blocks' sha256, ``data.source`` is told apart by that content, not
    by its path (:meth:`RunRecord._source_as_content`); else by path for all, so old and new runs still pair.

    Runs of one group with the same seed are *replicas* of one training (a one-process run and its DDP or FSDP
    twin, a resumed run and an uninterrupted one): the first given counts for the seed, the others go to
    :attr:`Group.replicas`, and :func:`replica_note` says where their layouts and metrics differ — a seed
    counted twice would shrink the spread over seeds.

    Raises:
        EkdError: one run directory given twice.
    """
    seen_dirs: dict[Path, str] = {}
    for r in runs:
        real = Path(r.run_dir).resolve()
        if real in seen_dirs:
            raise EkdError(
                f"ekd compare: {seen_dirs[real]} and {r.run_dir} are the same run directory; pass each run once"
                if seen_dirs[real] != str(r.run_dir)
                else f"ekd compare: {r.run_dir} is given twice; pass each run once"
            )
        seen_dirs[real] = str(r.run_dir)
    by_content = all(r.data_fingerprint for r in runs)
    scored = {n for r in runs for n in r.eval}
    # an older ekd's entry records no autocast: it reads as the one value the others record (try-out 48: reading
    # it as 'either' joined bf16 and fp32 seeds in one mean), or as unrecorded where they record two
    precision_fill: dict[str, str | None] = {}
    for n in scored:
        values = {r.recorded_precision(n) for r in runs if n in r.eval} - {None}
        precision_fill[n] = next(iter(values)) if len(values) == 1 else ("unrecorded" if values else None)
    sets_by_content = frozenset(  # text sets by their blocks, tasks by their directory's files
        n
        for n in scored
        if all(
            BLOCKS_KEY in r.scored_with.get(n, {}) or TASKS_DIR_HASH in r.task_ways.get(n, {})
            for r in runs
            if n in r.eval
        )
    )
    taught_online = [
        r for r in runs if ((r.config.get("teacher") or {}).get("source") or "online") == "online"
    ]
    recorded = [r.teacher_weights for r in taught_online]  # every one, by one scheme
    teacher_by_content = bool(recorded) and all(comparable(recorded[0], w) for w in recorded)
    local_students = [  # a preset student is built from run.seed: its name and seed are what it is
        r.student_weights
        for r in runs
        if not is_preset(str((r.config.get("model") or {}).get("student", "")))
    ]
    student_by_content = bool(local_students) and all(
        comparable(local_students[0], w) for w in local_students
    )
    # what encoded each run's sets, recorded by every run: read as such (try-out 70, F2: a finished run whose
    # student/ is gone fell back to the config's spelling), and model.tokenizer by it too (try-out 123, F2: a
    # tokenizer copied with its teacher made two methods)
    tokenizer_by_content = all(r.tokenizer_sha256 for r in runs)
    for r in runs:
        r.tokenizer_by_content = tokenizer_by_content
        if tokenizer_by_content:
            r.tokenizer = f"encodings sha256:{r.tokenizer_sha256}"
    # train.precision / model.teacher_dtype as they ran, when every run records how (an older ekd's 'auto' stays
    # comparable with the others' settings); a cache run's teacher as its cache pins it, likewise
    arithmetic_by_record = all("train.precision" in r.ran_as for r in runs)
    from_cache = [r for r in runs if (r.config.get("teacher") or {}).get("source") == "cache"]
    cache_by_content = all(r.cache_teacher for r in from_cache)
    for r in runs:
        r.arithmetic_by_record, r.cache_by_content = arithmetic_by_record, cache_by_content
        r.source_by_content, r.sets_by_content = by_content, sets_by_content
        r.precision_fill = precision_fill
        r.teacher_by_content = teacher_by_content
        r.student_by_content = student_by_content
    groups: dict[str, Group] = {}
    for r in runs:
        g = groups.setdefault(r.group_key(), Group(label=""))
        if any(o.seed == r.seed for o in g.runs):
            g.replicas.setdefault(r.seed, []).append(r)
        else:
            g.runs.append(r)
    seen: dict[str, int] = {}
    # method → (group, its differences from the method's first group), for every later group
    seen_diffs: dict[str, list[tuple[Group, list[str]]]] = {}
    for g in groups.values():
        method = g.runs[0].method
        seen[method] = seen.get(method, 0) + 1
        g.label = method if seen[method] == 1 else f"{method}#{seen[method]}"
        if seen[method] > 1:
            first = next(o for o in groups.values() if o.runs[0].method == method)
            a, b = first.runs[0], g.runs[0]
            diffs = _config_differences(a.trained_config(), b.trained_config())
            if any(d.startswith("teacher.source=") for d in diffs):
                # an online run and a cache run pin one teacher by two fingerprints (its weights' sha256; the
                # cache's safetensors hash and arithmetic): told apart by teacher.source, said alone (try-out 133,
                # F1: "model.teacher='weights ea56…' (vs 'weights 2d24…')" sent a user to rebuild a sound cache)
                diffs = [d for d in diffs if not d.startswith(("model.teacher=", "model.teacher_dtype="))]
            if by_content and any(d.startswith("data.source=") for d in diffs):
                # the files, beside the blocks; the same files packed otherwise (try-out 55, F5: "(x vs x)" where
                # only the tokenizer differed)
                paths = [(r.config.get("data") or {}).get("source") for r in (b, a)]
                files = f"({paths[0]} vs {paths[1]})" if paths[0] != paths[1] else f"(both {paths[0]})"
                diffs = [d + (f" {files}" if d.startswith("data.source=") else "") for d in diffs]
            g.note = f"`{g.label}` differs from `{method}` in " + ", ".join(diffs)
            # try-out 84, F1: two groups can differ from the first alike (a merged and an adapter LoRA export
            # against a full fine-tune, which reads no model.lora_export): what sets them apart is said too
            for twin, twin_diffs in seen_diffs.get(method, []):
                if twin_diffs == diffs:
                    apart = _config_differences(twin.runs[0].trained_config(), b.trained_config())
                    g.note += f"; from `{twin.label}` in " + ", ".join(apart)
            seen_diffs.setdefault(method, []).append((g, diffs))
    label_eval_sets(list(groups.values()))
    return list(groups.values())


def metric_keys(groups: list[Group]) -> list[str]:
    """``<column>/<metric>`` for every student eval set column (:func:`label_eval_sets`; teacher rows
    excluded), then cost columns."""
    sets = sorted({c for g in groups for r in g.runs for c in r.column_names() if not c.endswith("/teacher")})
    return [f"{s}/{m}" for s in sets for m in METRICS if _shown(groups, s, m)] + ["kd_pct", "bytes_per_token"]


def _shown(groups: list[Group], column: str, metric: str) -> bool:
    """Whether ``metric`` says anything in ``column``: 'ppl w/o EOS' not where no run's set holds an
    end-of-document target (``data.separator=none``: it would repeat ppl; try-out 48)."""
    if metric != "ppl_no_boundary":
        return True
    entries = [r.entry(column) for g in groups for r in g.runs if r.entry(column)]
    return any(e.get("boundary_tokens") != 0 for e in entries)
