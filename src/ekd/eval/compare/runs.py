"""What one finished run contributes to ``ekd compare``: the metrics a comparison reports, the
:class:`RunRecord` of a run (its config as far as it decides what was trained, the eval sets as it scored
them, its teacher) and :func:`read_run`, which reads it from the run directory (``config.yaml``, ``eval.json``
or ``metrics.jsonl``, ``ekd-run.json``, the exported tokenizer)."""

from __future__ import annotations

import json
import logging
import math
import shlex
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ekd.config import Config, with_todays_defaults
from ekd.errors import EkdError
from ekd.eval.eval_json import (
    BLOCKS_KEY,
    CONTENT_KEYS,
    PRECISION,
    SCORING_SETTINGS,
    STUDENT_INIT_KEY,
    read_eval_json,
    recorded_settings,
    set_of,
    set_settings,
    split_settings,
)
from ekd.eval.saved_files import config_problem, eval_json_problem
from ekd.eval.task_metrics import UNRECORDED_GROUP, task_sets, task_starts, task_ways
from ekd.eval.tasks import TASKS_DIR_HASH
from ekd.models.identity import comparable, ran_in
from ekd.teacher.cache.manifest import cache_teacher_parts, computed_with
from ekd.teacher.cache.signature import hub_commit
from ekd.train.run_dir import changes_training, read_marker

log = logging.getLogger(__name__)


class Metric(NamedTuple):
    higher_is_better: bool
    fmt: str
    header: str


# every per-eval-set metric a comparison reports, in column order; score: a downstream task's primary metric
METRIC_INFO = {
    "ppl": Metric(False, ".2f", "ppl"),
    "ppl_no_boundary": Metric(False, ".2f", "ppl w/o EOS"),
    "acc": Metric(True, ".3f", "acc"),
    "ece": Metric(False, ".2f", "ECE %"),
    "kl": Metric(False, ".3f", "KL(t‖s)"),
    "agree": Metric(True, ".3f", "top-1 agree"),
    "score": Metric(True, ".4f", "score"),
}
METRICS = tuple(METRIC_INFO)
HIGHER_IS_BETTER = {k: m.higher_is_better for k, m in METRIC_INFO.items()}
RUN_KEYS = ("name", "seed", "output_dir")
TEACHER_RELATIVE = ("kl", "agree")
"""Metrics measured against the run's teacher (also their per-entropy-bucket ``kl@H<i>``, ``agree@H<i>``): figures
against two teachers are neither averaged nor paired."""
UNPAIRED = ("different eval sets", "different teachers", "other ECE bins")
"""Why a paired difference is not computed (its verdict): the runs scored the set another way (another column),
or the figure differs apart from the training (:meth:`RunRecord.figure_differs`)."""
METRIC_SETTINGS = {"ece": "ece_bins"}
"""A metric → the scoring setting that it alone reads (ECE's equal-width confidence bins, on a text set or a
multiple-choice task). A set scored with another value of that setting is the same set — its other figures pair
and share means — and the metric itself is averaged and paired only over seeds scored with one value
(:meth:`RunRecord.metric_setting`; try-out 55, F10: a seed re-scored with ``eval.ece_bins=10`` put its ppl, acc and
KL in another column, 'n/a (different eval sets)')."""


def setting_said(metric: str, value: Any) -> str:
    """How a value of the setting ``metric`` alone reads is named in notes and compare.json: 'eval.ece_bins=15'."""
    return f"eval.{METRIC_SETTINGS[metric]}={value}"


def most_common(values: list[Any]) -> Any:
    """The value most of ``values`` hold, the first given on a tie (the group's teacher, its ECE bins)."""
    return max(values, key=values.count)


NOT_A_WAY = ("ece_bins", "entropy_buckets", UNRECORDED_GROUP)
"""Scoring settings that do not make another way of scoring a set (:meth:`RunRecord.eval_set`): ``ece_bins`` is
read by ECE alone (:data:`METRIC_SETTINGS`), ``entropy_buckets`` only by the per-bucket ``@H<i>`` figures, which a
comparison does not show."""
EVAL_SET_KEYS = ("data.eval_sources", "data.max_eval_blocks")
"""The ``data.*`` keys that choose the eval sets and how much of them is scored, not what a run trains (every
``eval.*`` key is of that kind too: :func:`evaluation_only`): runs differing in them are one config, and each set
or task is paired only where both runs scored it alike (:meth:`RunRecord.eval_set`; try-out 26: an eval file
copied to another path split two seeds into two configs)."""


def evaluation_only(key: str) -> bool:
    """Whether config key ``key`` (section.field) decides only what is evaluated and how — any ``eval.*`` key (each
    step seeds its draws anew, so an evaluation changes nothing trained; seeds differing in ``eval.teacher`` or
    ``eval.tasks_cache_dir`` were two methods, try-out 116 F6) or one of :data:`EVAL_SET_KEYS` —, not what the run
    trains: runs differing in it are one config, their figures paired where they were scored alike."""
    return key.startswith("eval.") or key in EVAL_SET_KEYS


CACHE_BUILT_KEY = "cache built with"
"""The key of :meth:`RunRecord.trained_config`'s ``teacher`` section for the arithmetic a cache run's cache was built
in (``built_with``): 'a bfloat16 teacher under bf16'."""
GLOBAL_BATCH_KEY = "ranks × micro_batch_size"
"""The key of :meth:`RunRecord.trained_config`'s ``train`` section for the rows of a micro-batch over all ranks."""


@dataclass
class RunRecord:
    """What one finished run contributes: its config, final eval metrics and supervision cost."""

    run_dir: Path
    config: dict[str, Any]
    eval: dict[str, dict[str, float]]  # set name → metrics (teacher rows under "<set>/teacher")
    kd_fraction: float
    bytes_per_token: float
    tokenizer: str = ""  # what encoded the eval sets (``_tokenizer_identity``)
    # set → the data settings its eval.json entry records (:meth:`set_data`)
    scored_with: dict[str, dict[str, Any]] = field(default_factory=dict)
    # rows of one micro-batch over all ranks (ekd-run.json); None for a run of an older ekd (taken as 1 rank)
    global_micro_batch: int | None = None
    # sha256 of the packed training blocks (ekd-run.json); None for a run of an older ekd
    data_fingerprint: str | None = None
    # data.source is read as its content (the training blocks' sha256): every compared run records one
    source_by_content: bool = False
    # the weights fingerprint of a local teacher (ekd-run.json ``teacher_weights``); None for a hub id, a preset, a
    # cache-trained run or a run of an older ekd
    teacher_weights: str | None = None
    # model.teacher is read as its weights (:attr:`teacher_weights`): every compared run taught online records them
    teacher_by_content: bool = False
    # the weights fingerprint of a local starting student (ekd-run.json ``student_weights``); None for a hub id, a
    # preset (built from run.seed) or a run of an older ekd
    student_weights: str | None = None
    # model.student is read as its weights: every compared run with a local student records them
    student_by_content: bool = False
    # the sha256 of the run's tokenizer's encodings (ekd-run.json ``tokenizer_sha256``, recorded at its export);
    # None for a run of an older ekd
    tokenizer_sha256: str | None = None
    # eval sets told apart by their blocks' sha256, not their files' paths: every run that scored them records it
    sets_by_content: frozenset[str] = frozenset()
    # set or task → the forward autocast (``precision``) an entry that records none (an older ekd's) reads as: the
    # one value the compared runs' entries record, or 'unrecorded' where they record two (:func:`group_runs`)
    precision_fill: dict[str, str | None] = field(default_factory=dict)
    # the ranks of the run's last segment (ekd-run.json); None for a run of an older ekd
    ranks: int | None = None
    # every segment's {"ranks", "parallel", "micro_batch_size", "autocast", "teacher_dtype"} (ekd-run.json), where
    # the run knows them all; None otherwise
    segments: list[dict[str, Any]] | None = None
    # train.precision and model.teacher_dtype read as the segments record them ran (:attr:`ran_as`): every compared
    # run records it
    arithmetic_by_record: bool = False
    # a cache-trained run's teacher as its cache pins it (ekd-run.json ``cache_teacher``); None otherwise
    cache_teacher: str | None = None
    # model.teacher and teacher.cache_dir of a cache run read as :attr:`cache_teacher`: every cache run records it
    cache_by_content: bool = False
    # model.tokenizer read as :attr:`tokenizer_sha256`: every compared run records it
    tokenizer_by_content: bool = False
    # set → the eval settings its figures were computed with, where its eval.json entry records them (:meth:`scoring`)
    scored_by: dict[str, dict[str, Any]] = field(default_factory=dict)
    # task entry (``task:<name>``, ``tasks[<tag>]``) → how it was scored (:func:`~ekd.eval.task_metrics.task_ways`)
    task_ways: dict[str, dict[str, Any]] = field(default_factory=dict)
    # column → its eval.json entry (``eval#2`` → ``eval``, ``eval#2/teacher`` → ``eval/teacher``): the set as this
    # run scored it (:func:`label_eval_sets`); None before grouping: each entry under its own name
    columns: dict[str, str] | None = None
    # eval.json entry → the teacher its figures were measured with, where it records one (:meth:`teacher`)
    teachers: dict[str, dict[str, Any]] = field(default_factory=dict)
    # eval set entry → the starting student's figures on it (eval.json's ``student_init``); {} where none
    starts: dict[str, dict[str, float]] = field(default_factory=dict)

    def entry_name(self, column: str) -> str | None:
        """The eval.json entry shown in ``column`` (``eval#2``: this run's ``eval``, scored the second way;
        None when this run scored the set another way or not at all)."""
        return column if self.columns is None else self.columns.get(column)

    def entry(self, column: str) -> dict[str, float]:
        """The metrics this run shows in ``column`` (:meth:`entry_name`); {} when none."""
        name = self.entry_name(column)
        return (self.eval.get(name) or {}) if name else {}

    def column_names(self) -> list[str]:
        """The columns this run has figures in (its eval.json entries before grouping)."""
        return list(self.eval if self.columns is None else self.columns)

    @property
    def method(self) -> str:
        return str(self.config.get("method", {}).get("preset", "?"))

    @property
    def seed(self) -> int:
        return int(self.config.get("run", {}).get("seed", 0))

    def trained_config(self) -> dict[str, Any]:
        """The config as far as it decides what the run trained: without ``run.*`` identity keys and the keys that
        make no other run (:func:`~ekd.train.run_dir.changes_training`: reporting, checkpointing, eval batching,
        the device layout, the same math) or only decide what is evaluated (:func:`evaluation_only`: each set is
        paired on its own, :meth:`eval_set`), with the micro-batch over all ranks (:data:`GLOBAL_BATCH_KEY`) instead
        — a ``torchrun`` run of 2 × 4 rows trains what one process of 8 does —, content for paths where every run
        records it (the training blocks, a teacher's or student's weights, the teacher and arithmetic a cache
        pins: :attr:`cache_by_content`), and ``train.precision`` / ``model.teacher_dtype`` as they ran
        (:attr:`ran_as`, :attr:`arithmetic_by_record`)."""
        cfg = {
            s: {
                k: x for k, x in v.items() if changes_training(f"{s}.{k}") and not evaluation_only(f"{s}.{k}")
            }
            for s, v in self.config.items()
            if isinstance(v, dict)
        }
        for k in RUN_KEYS:
            cfg.get("run", {}).pop(k, None)
        micro = (self.config.get("train") or {}).get("micro_batch_size")
        cfg.setdefault("train", {})[GLOBAL_BATCH_KEY] = self.global_micro_batch or micro
        if "data" in cfg:
            cfg["data"] = self._source_as_content(cfg["data"])
        if {"revision", "teacher_revision"} & set(cfg.get("model", {})):
            cfg["model"] = {**cfg["model"], **self._pins()}
        if self.teacher_by_content and self.teacher_weights and "teacher" in cfg.get("model", {}):
            # a copy elsewhere is the same teacher, one retrained in place another (try-out 43: the seeds of one
            # method taught by two teachers were averaged in one row)
            cfg["model"] = {
                **cfg["model"],
                "teacher": f"weights {self.teacher_weights.rpartition(':')[2][:16]}",
            }
        if self.tokenizer_by_content and self.tokenizer_sha256 and "tokenizer" in cfg.get("model", {}):
            # a copy elsewhere (the teacher's directory on a node's disk) is the same tokenizer
            cfg["model"] = {**cfg["model"], "tokenizer": f"encodings {self.tokenizer_sha256[:16]}"}
        if self.student_by_content and self.student_weights and "student" in cfg.get("model", {}):
            # try-out 70, F1: two students written to one path (`ekd student init --overwrite`) were seeds of
            # one method, the ± their difference; a copy elsewhere is the same student
            cfg["model"] = {
                **cfg["model"],
                "student": f"weights {self.student_weights.rpartition(':')[2][:16]}",
            }
        # (ce) which teacher decides its eval figures alone, paired by their own
        if not self.trains_with_teacher():
            # record (try-out 44: ce seeds evaluated against a teacher retrained between them were split in two)
            cfg["model"] = {k: v for k, v in cfg.get("model", {}).items() if k not in TEACHER_MODEL_KEYS}
        if (
            self.cache_by_content
            and self.cache_teacher
            and (self.config.get("teacher") or {}).get("source") == "cache"
        ):
            # the cache by what it holds: a copy elsewhere (a node's disk), or each seed's own RS cache, is the same
            # teacher's targets for this config, which the run checked at its start (try-out 120, F2)
            teacher, dtype, autocast = cache_teacher_parts(self.cache_teacher)
            # its pin and the dtype the run evaluates it in decide no training (try-out 160, F1/F2): the eval
            # figures are paired by the teacher each entry records
            model = cfg.get("model", {})
            kept = {k: v for k, v in model.items() if k not in ("teacher_revision", "teacher_dtype")}
            cfg["model"] = {**kept, "teacher": f"weights {_cached_teacher_short(teacher)}"}
            cfg.get("teacher", {}).pop("cache_dir", None)
            # said as such in a note, not as an encoded teacher (try-out 122, F8)
            cfg.setdefault("teacher", {})[CACHE_BUILT_KEY] = computed_with(dtype, autocast)
        # the arithmetic as it ran: 'auto' is fp32 and a float32 teacher on a CPU (try-out 120, F1)
        if self.arithmetic_by_record:
            for key, value in self.ran_as.items():
                section, name = key.split(".")
                if name in cfg.get(section, {}):  # a key left out above (a ce run's teacher) stays out
                    cfg[section][name] = value
        if "model" in cfg:
            cfg["model"] = _unread_model_keys_dropped(cfg["model"])
        # keys the trainer calls unread or idle (the warning at a run's start, --resume) count at their defaults:
        # a value they do not read makes no other run, whichever side reads the default (review of session 33, F5)
        for key in self.unread_keys:
            section, name = key.split(".", 1)
            if name in (cfg.get(section) or {}):
                cfg[section][name] = _DEFAULTS[section][name]
        return {s: v for s, v in cfg.items() if v}  # a section left empty (reporting keys alone): as absent

    @cached_property
    def ran_as(self) -> dict[str, str]:
        """``train.precision`` and ``model.teacher_dtype`` as the run computed them — the forward autocast
        ('fp32', 'bf16') and the dtype its teacher's weights ran in ('float32', ...) that every segment records
        (``autocast``, ``teacher_dtype`` in ekd-run.json), 'x then y' where a resume changed them; no
        ``model.teacher_dtype`` where the teacher took no part in training. A run of an older ekd, which records
        none: the autocast its eval sets record (its evaluation at the end ran in the training's), and the teacher's
        dtype setting read by it (:func:`~ekd.models.identity.ran_in`: ``auto`` is float32 under fp32) — try-out
        122, F4: one such run made every run compare as set, splitting today's seeds; {} where it records none.
        Once per run: grouping asks for its trained config often."""
        out: dict[str, str] = {}
        segments = self.segments or []
        for key, recorded in (("train.precision", "autocast"), ("model.teacher_dtype", "teacher_dtype")):
            values = [s.get(recorded) for s in segments]
            if values and None not in values:
                out[key] = " then ".join(dict.fromkeys(map(str, values)))
        if "train.precision" not in out:
            precisions = {self.recorded_precision(n) for n in self.eval if _text_set(n)} - {None}
            if len(precisions) == 1:
                out["train.precision"] = precision = precisions.pop()
                if self.trains_with_teacher():
                    # as its eval.json records it (`ekd eval RUN` re-records an older `auto`: try-out 123, F3),
                    # else its setting read by the autocast
                    recorded = {
                        (t or {}).get("dtype") for n, t in self.teachers.items() if _text_set(set_of(n))
                    }
                    recorded -= {None, "auto"}
                    setting = (self.config.get("model") or {}).get("teacher_dtype", "auto")
                    out["model.teacher_dtype"] = (
                        recorded.pop() if len(recorded) == 1 else ran_in(setting, precision)
                    )
        return out

    @cached_property
    def unread_keys(self) -> frozenset[str]:
        """The keys the run does not read, by the trainer's own rules (:func:`ekd.config.inert.unread_keys`); none
        for a config today's rules refuse (an older ekd's). Once per run: grouping asks for its config often."""
        from ekd.config import config_from_dict
        from ekd.config.inert import unread_keys

        try:
            return frozenset(unread_keys(config_from_dict(self.config)))
        except EkdError:
            return frozenset()

    def trains_with_teacher(self) -> bool:
        """Whether the teacher took part in training (a KD term against it, or TopSmp scoring with it): the
        trainer's own rules (:func:`~ekd.train.prepare.teacher_needed`,
        :func:`~ekd.train.prepare.scores_samples_with_teacher`) read off the saved config."""
        from types import SimpleNamespace

        from ekd.train.prepare import scores_samples_with_teacher, teacher_needed

        view = SimpleNamespace(
            **{s: SimpleNamespace(**v) for s, v in self.config.items() if isinstance(v, dict)}
        )
        try:
            return bool(teacher_needed(view) or scores_samples_with_teacher(view))
        except (AttributeError, TypeError):  # a config without these keys: as if it did
            return True

    def _source_as_content(self, data: dict[str, Any]) -> dict[str, Any]:
        """``data`` whose ``source`` is the run's training data read as its content when the runs compared are
        told apart so (:attr:`source_by_content`): the same file copied to another path (another machine's
        scratch directory) is the same data; a file changed in place is not."""
        trained_on = (self.config.get("data") or {}).get("source")
        if not self.source_by_content or data.get("source") != trained_on:
            return data
        return {**data, "source": f"training blocks sha256:{self.data_fingerprint[:16]}"}

    def group_key(self) -> str:
        """:meth:`trained_config` as text: runs that differ only by seed (or device layout) share it."""
        return json.dumps(self.trained_config(), sort_keys=True, default=str)

    def set_data(self, name: str) -> dict[str, Any]:
        """The data settings eval set ``name`` was scored with: those its eval.json entry records (``ekd eval
        RUN data.…=…`` scores with settings config.yaml does not hold), else the run's config's, narrowed
        alike (:func:`ekd.eval.eval_json.set_settings`); both read as they are compared
        (:func:`ekd.eval.eval_json.recorded_settings`: keys added to ekd since at their defaults)."""
        recorded = self.scored_with.get(name)
        data = recorded_settings(
            recorded if recorded is not None else set_settings(self.config.get("data") or {}, name)
        )
        if name in self.sets_by_content:  # what the set holds, not where its files are nor how they were read
            data = {k: v for k, v in data.items() if k not in CONTENT_KEYS}
        else:
            data = {k: v for k, v in data.items() if k != BLOCKS_KEY}
        return set_settings(data, name)  # narrowed and without the keys that only change how it is read

    def eval_set(self, name: str) -> str:
        """What eval set ``name`` of this run is: its data settings (:meth:`set_data`), the tokenizer, the
        set's scored tokens and documents (runs evaluated before sets were spread samples record none); for a
        downstream task, how it was scored (:meth:`task_way`). Two runs' metrics on a set are comparable only
        when these are equal."""
        if _task_entry(name):
            return json.dumps(self.task_way(name), sort_keys=True, default=str)
        metrics = self.eval.get(name) or {}
        return json.dumps(
            [
                self.set_data(name),
                {k: v for k, v in self.scoring(name).items() if k not in NOT_A_WAY},
                self.tokenizer,
                metrics.get("tokens"),
                metrics.get("documents"),
            ],
            sort_keys=True,
            default=str,
        )

    def scoring(self, name: str) -> dict[str, Any]:
        """The ``eval.*`` settings eval set ``name``'s figures were computed with (ECE bins, entropy buckets):
        those its eval.json entry records (``ekd eval RUN eval.ece_bins=5`` scores otherwise than config.yaml
        says), else the run's config's."""
        fill = {PRECISION: self.precision_fill.get(name)}
        if name in self.scored_by:
            return {k: self.scored_by[name].get(k, fill.get(k)) for k in SCORING_SETTINGS}
        section = with_todays_defaults({"eval": self.config.get("eval") or {}})["eval"]
        return {k: section.get(k, fill.get(k)) for k in SCORING_SETTINGS}

    def metric_setting(self, name: str, metric: str) -> Any:
        """The value of the setting ``metric`` alone reads (:data:`METRIC_SETTINGS`) in entry ``name``: ECE's
        bins as the entry records them, else as the run's config says (:meth:`scoring`); for a downstream task, its
        section's settings (None where an older ekd recorded none). A teacher row (``eval/teacher``) is scored as
        its set (try-out 59, F1: it read the config's bins, so a replica's teacher ECE over other bins was compared).
        None for a metric that reads no such setting."""
        key = METRIC_SETTINGS.get(metric)
        if key is None:
            return None
        name = set_of(name)
        if _task_entry(name):
            return (self.task_ways.get(name) or {}).get(key)
        return self.scoring(name).get(key)

    def figure_differs(self, other: RunRecord, column: str, metric: str) -> str | None:
        """Why this run's ``metric`` in ``column`` is not comparable with ``other``'s though both scored the set
        alike: ``different teachers`` (KL, agreement and their ``@H<i>``: :meth:`teacher`), ``other ECE bins``
        (:meth:`metric_setting`); None when it is."""
        if metric.split("@")[0] in TEACHER_RELATIVE and not self.teacher(column).same_as(
            other.teacher(column)
        ):
            return UNPAIRED[1]
        mine, theirs = self.entry_name(column), other.entry_name(column)
        if self.metric_setting(mine or column, metric) != other.metric_setting(theirs or column, metric):
            return UNPAIRED[2]
        return None

    def recorded_precision(self, name: str) -> str | None:
        """The forward autocast set or task ``name``'s entry records (``fp32``, ``bf16``); None: none recorded."""
        recorded = self.scored_by[name] if name in self.scored_by else self.task_ways.get(name) or {}
        return recorded.get(PRECISION)

    def task_way(self, name: str) -> dict[str, Any]:
        """How task entry ``name`` was scored (:func:`~ekd.eval.task_metrics.task_ways`), its tasks directory
        told by content (``tasks_dir_hash``) when every run that scored it records that
        (:attr:`sets_by_content`), else by path — so runs of an older ekd still pair."""
        way = {k: v for k, v in (self.task_ways.get(name) or {}).items() if k not in NOT_A_WAY}
        way.pop("tasks_dir" if name in self.sets_by_content else TASKS_DIR_HASH, None)
        way.setdefault(PRECISION, self.precision_fill.get(name))
        return way

    def _pins(self) -> dict[str, str]:
        """The revisions that tell the run's hub models apart, not as the keys were spelled: ``teacher_revision``
        the teacher's, ``revision`` where it reaches a hub id beside the teacher (:func:`~ekd.config.inert.same_pins`),
        each none where what it reads is identified by its content (weights, encodings)."""
        from ekd.config.inert import own_hub_tokenizer, teacher_pin
        from ekd.models.load import is_hub_id

        model = self.config.get("model") or {}
        by_weights = self.teacher_by_content and self.teacher_weights
        pins = {"teacher_revision": "" if by_weights else teacher_pin(model)}
        # model.revision, where what it reaches beside the teacher is not identified by its content (try-out 160,
        # F1: a student pinned as main's commit and as '' read the same weights, and were two configs)
        student = is_hub_id(str(model.get("student") or "")) and not (
            self.student_by_content and self.student_weights
        )
        tokenizer = own_hub_tokenizer(model) and not (self.tokenizer_by_content and self.tokenizer_sha256)
        pins["revision"] = str(model.get("revision") or "") if student or tokenizer else ""
        return pins

    def teacher(self, column: str | None = None) -> TeacherKey:
        """The teacher the run's figures in ``column`` (a set's KL and agreement, its teacher row) are measured
        against: what its eval.json entry records (:func:`ekd.models.identity.teacher_identity`), else — an entry
        of an older ekd, or no column — the config's ``model.teacher``, revision and dtype."""
        name = self.entry_name(column) if column else None
        recorded = self.teachers.get(name) if name else None
        if recorded is not None:
            named = [recorded.get(k) or "" for k in ("model", "revision")]
            dtype = ran_in(recorded.get("dtype") or "", self.recorded_precision(set_of(name)))
            return TeacherKey(json.dumps(named, default=str), recorded.get("weights"), dtype)
        model = self.config.get("model") or {}
        from ekd.config.inert import teacher_pin

        named = [model.get("teacher") or "", teacher_pin(model)]
        return TeacherKey(json.dumps(named, default=str), None, model.get("teacher_dtype") or "")


def _cached_teacher_short(teacher: str) -> str:
    """A cache's teacher pin (:func:`~ekd.teacher.cache.manifest.cache_teacher_parts`) as compare keys it: a hub id
    at its commit however recorded ('org/t@<sha>' pinned, 'org/t@commit:<sha>' unpinned: one teacher), a content
    pin by its hash's first 16 digits, else as written."""
    name, at, revision = teacher.rpartition("@")
    if at and (commit := hub_commit(revision)):
        return f"{name}@{commit[:16]}"
    return teacher.rpartition(":")[2][:16] if ":" in teacher else teacher


@dataclass(frozen=True)
class TeacherKey:
    """A teacher as :meth:`RunRecord.teacher` knows it: ``named`` (model and revision as JSON), ``weights``,
    the fingerprint of a local teacher's weight files where recorded (None: a hub id, a preset, an older ekd),
    and ``dtype``, the dtype it ran in (:func:`~ekd.models.identity.ran_in`: an older ekd's ``auto`` read by its
    entry's autocast)."""

    named: str
    weights: str | None
    dtype: str | None

    def same_as(self, other: TeacherKey) -> bool:
        """The same teacher: by its weights and dtype when both record weights by one scheme — a copy or a moved
        directory is the same, one retrained in place is not (try-out 39) —, else by name, revision and dtype (an
        older ekd's entry still pairs with today's)."""
        if comparable(self.weights, other.weights):
            return (self.weights, self.dtype) == (other.weights, other.dtype)
        return (self.named, self.dtype) == (other.named, other.dtype)


_DEFAULTS = Config().to_dict()
"""Every key's default, as a saved config.yaml writes it (what :meth:`RunRecord.trained_config` counts an unread
key at)."""

# model.* keys that choose the teacher alone
TEACHER_MODEL_KEYS = ("teacher", "teacher_revision", "teacher_dtype")


def _text_set(name: str) -> bool:
    """A text eval set of the run (``eval``, a shifted set), not its teacher row nor an lm-eval task."""
    return not name.endswith("/teacher") and not name.startswith(("task:", "tasks["))


def _task_entry(name: str) -> bool:
    """A downstream task's entry (``task:<name>``, a tag's macro mean ``tasks[<tag>]``), not its teacher row."""
    return name.startswith(("task:", "tasks[")) and not name.endswith("/teacher")


def _scored_set(name: str) -> bool:
    """An entry a run scored some way (a text eval set or a downstream task; not a teacher row): runs are
    paired on it only where they scored it alike (:meth:`RunRecord.eval_set`)."""
    return not name.endswith("/teacher")


def _unread_model_keys_dropped(model: dict[str, Any]) -> dict[str, Any]:
    """``model`` without the keys its run did not read (try-out 55, F5: two runs were said to differ in
    ``model.bpe_vocab_size=400 (vs 4096)``, a default the other never used): ``bpe_vocab_size`` unless the
    tokenizer was trained (``train_bpe``, or ``teacher``/``student`` naming two presets:
    :func:`ekd.train.prepare.tokenizer_source`), the ``lora_*`` knobs without a LoRA student (``lora_r`` 0)."""
    spec = model.get("tokenizer", "teacher")
    presets = all(str(model.get(r, "")).startswith("preset:") for r in ("teacher", "student"))
    unread = set()
    if not (spec == "train_bpe" or (spec in ("teacher", "student") and presets)):
        unread.add("bpe_vocab_size")
    if not model.get("lora_r"):
        unread.update(k for k in model if k.startswith("lora_") and k != "lora_r")
    return {k: v for k, v in model.items() if k not in unread}


def _config_differences(a: dict[str, Any], b: dict[str, Any], limit: int = 6) -> list[str]:
    """``section.key=value (vs other)`` for the keys (outside ``run.*`` identity and ``log.*``) where two configs
    differ."""
    out, one_sided = [], []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section) or {}, b.get(section) or {}
        for key in sorted(set(sa) | set(sb)):
            if (section == "run" and key in RUN_KEYS) or not changes_training(f"{section}.{key}"):
                continue
            if sa.get(key) != sb.get(key):
                # a key one run did not read (lora_* beside lora_r=0) or an older ekd did not have: named only
                # where nothing else differs (try-out 57, F2: five lora keys "(vs None)" beside lora_r=4 (vs 0))
                kept = out if key in sa and key in sb else one_sided
                kept.append(f"{section}.{key}={sb.get(key)!r} (vs {sa.get(key)!r})")
    out = out or one_sided
    return out[:limit] + (["…"] if len(out) > limit else [])


def read_run(run_dir: str | Path) -> RunRecord:
    """A finished run directory written by ``ekd distill`` (``config.yaml`` + ``eval.json`` or the final eval
    rows of ``metrics.jsonl``).

    Raises:
        EkdError: not a run directory, or a run without a final evaluation.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        from ekd.io import dangling_link
        from ekd.train.run_state import enclosing_run

        if dangling := dangling_link(run_dir):  # a run kept on a disk not mounted (try-out 141, F2)
            raise EkdError(f"ekd compare: {dangling}, or leave the run out")

        run = enclosing_run(run_dir)  # RUN/student, the exported model: did you mean RUN?
        fix = f"it lies inside the run {run}: pass that" if run is not None else "pass runs/<name>"
        raise EkdError(f"ekd compare: {run_dir} is not a run directory (no config.yaml); {fix}")
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise EkdError(
            f"ekd compare: {cfg_path} is not valid YAML ({str(e).splitlines()[0]}); put back the config.yaml ekd "
            "distill wrote, or leave the run out"
        ) from None
    if problem := config_problem(config):  # try-out 45, F4: method '?', seed 0, paired with another seed 0
        raise EkdError(
            f"ekd compare: {cfg_path} is not a run's config ({problem}); put back the config.yaml ekd distill "
            "wrote, or leave the run out"
        )
    config = with_todays_defaults(config)  # a run of an older ekd: the keys added since, at their defaults
    rows = metric_rows(run_dir)
    marker = run_marker(run_dir)
    _refuse_unfinished(run_dir, marker, rows, config)
    results, scored_with, scored_by, ways, teachers, starts = _eval_results(run_dir, rows)
    if not results:
        command = f"ekd eval {shlex.quote(str(run_dir))}"
        if (run_dir / "eval.json").is_file():  # a finished run that had no eval set (try-out 135, F2: told to
            # finish it, or to run `ekd eval RUN`, which refuses a run without an eval set)
            raise EkdError(
                f"ekd compare: {run_dir} has no evaluated set (it was trained without one: data.eval_fraction=0 "
                f"and no data.eval_sources); score one with `{command} 'data.eval_sources={{name: FILE}}'`, or "
                "leave the run out"
            )
        raise EkdError(
            f"ekd compare: {run_dir} has no final evaluation (unfinished run?); finish it or run `{command}`"
        )
    kd_fraction = _kd_fraction(run_dir, rows, marker, config)
    return RunRecord(
        run_dir,
        config,
        results,
        kd_fraction,
        _bytes_per_token(run_dir, config, marker, kd_fraction, _rs_unique_ids(marker, rows)),
        _tokenizer_identity(run_dir, config),
        scored_with,
        marker.get("global_micro_batch"),
        marker.get("data_fingerprint") or None,
        teacher_weights=marker.get("teacher_weights") or None,
        cache_teacher=marker.get("cache_teacher") or None,
        student_weights=marker.get("student_weights") or None,
        tokenizer_sha256=marker.get("tokenizer_sha256") or None,
        ranks=marker.get("ranks"),
        segments=marker.get("segments") or None,
        scored_by=scored_by,
        task_ways=ways,
        teachers=teachers,
        starts=starts,
    )


def _refuse_unfinished(
    run_dir: Path, marker: dict[str, Any], rows: list[dict[str, Any]], config: dict
) -> None:
    """Refuse a run ``ekd distill`` started and has not finished — training now, or stopped — whose figures
    would be those of its last periodic evaluation (its starting student's, at step 0) beside finished runs
    (try-out 70, F2: read as a seed with one warning). A run of an older ekd, which recorded no state, is read.

    Raises:
        EkdError: one line: training now (wait), or stopped at step N of M (finish it with ``--resume``).
    """
    import os

    from ekd.locks import holder_of, holder_said
    from ekd.train.run_state import way_to_finish

    if marker.get("state") not in ("starting", "started"):
        return
    pid = holder_of(run_dir.resolve())
    if pid not in (None, os.getpid()):
        raise EkdError(
            f"ekd compare: {run_dir} is training now ({holder_said(run_dir.resolve(), pid)} holds it): compare it once it has finished, or leave "
            "it out"
        )
    from ekd.train.run_dir import aside_of, real_run_dir

    # try-out 130, F5: a killed --overwrite; the finished run is kept beside it — beside the directory a linked run
    # leads to (try-out 139, F2: looked for beside the link, missed, and --overwrite offered again)
    if (aside := aside_of(real_run_dir(run_dir))).is_dir():
        raise EkdError(
            f"ekd compare: {run_dir} is the start of an --overwrite that was killed; the run it replaced is kept in "
            f"{aside}: `ekd eval {shlex.quote(str(run_dir))}` puts it back (then compare it), or "
            "finish the new run with the same --overwrite command"
        )
    steps = [int(r["step"]) for r in rows if isinstance(r.get("step"), int | float)]
    total = (config.get("train") or {}).get("max_steps")
    at = f" (stopped at step {max(steps, default=0):,} of {total:,})" if isinstance(total, int) else ""
    raise EkdError(
        f"ekd compare: {run_dir} has not finished{at}; {way_to_finish(run_dir)}, then compare it (or leave it out)"
    )


def _tokenizer_identity(run_dir: Path, config: dict[str, Any]) -> str:
    """The tokenizer a run's eval sets were encoded with: the content of the exported student's
    ``tokenizer.json`` (vocabulary, merges, added tokens, normalization: not its formatting), else
    ``model.tokenizer`` as configured (a run without its student directory)."""
    import hashlib

    try:
        saved = json.loads((run_dir / "student" / "tokenizer.json").read_text())
        parts = {k: saved.get(k) for k in ("model", "added_tokens", "normalizer", "pre_tokenizer")}
        return "sha256:" + hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]
    except (OSError, ValueError, AttributeError):
        model = config.get("model") or {}
        spec = str(model.get("tokenizer", "teacher"))
        if spec in ("teacher", "student"):
            return f"{spec}:{model.get(spec)}"
        return f"train_bpe:{model.get('bpe_vocab_size')}" if spec == "train_bpe" else spec


def metric_rows(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's ``metrics.jsonl`` as the run's own reader reads them
    (:func:`ekd.train.metrics_log.read_metrics`: none when it is absent, a torn last line dropped with a warning).

    Raises:
        EkdError: a line other than the last is not a JSON object (review 126, R3: any damaged line was skipped,
            the KD fraction taken from the rest without a word, and a line holding a number was a traceback).
    """
    from ekd.train.metrics_log import read_metrics

    try:  # try-out 127, F1: "delete … the file" left the run at 0% KD positions
        return read_metrics(run_dir, fix="delete that line, or leave the run out")
    except EkdError as e:
        raise EkdError(f"ekd compare: {e}") from None


def run_marker(run_dir: Path) -> dict[str, Any]:
    """The run's ``ekd-run.json`` (what it recorded as it ran and when it finished); {} when there is none (a run
    of an older ekd, or one copied without it).

    Raises:
        EkdError: the file is there but cannot be read (review 126, R1: it was read as absent, which turned off
            every content check — two runs trained on different data became seeds of one method).
    """
    try:
        return read_marker(run_dir, otherwise="leave the run out") or {}
    except EkdError as e:
        raise EkdError(f"ekd compare: {e}") from None


def _eval_results(
    run_dir: Path, rows: list[dict[str, Any]]
) -> tuple[
    dict[str, dict[str, float]],
    dict[str, dict[str, Any]],
    dict[str, dict[str, Any]],
    dict[str, dict[str, Any]],
    dict[str, dict[str, Any]],
    dict[str, dict[str, float]],
]:
    """``eval.json`` if ``ekd eval`` wrote one, else the last evaluation logged in ``metrics.jsonl``: set →
    metrics, set → the data settings it was scored with, for the sets whose eval.json entry records them
    (:mod:`ekd.eval.eval_json`; none from metrics.jsonl or an older eval.json), set → the eval settings it was
    scored with (likewise), task entry → how it was scored (:func:`~ekd.eval.task_metrics.task_ways`),
    entry → the teacher it was measured with (likewise), and set → the starting student's figures on it (its
    ``student_init``, NaN for null; likewise)."""
    path = run_dir / "eval.json"
    rerun = f"rerun `ekd eval {shlex.quote(str(run_dir))}`"
    try:  # the one reader (try-out 127, F4/F7: an unreadable file was a traceback, a cut one told to rerun ekd eval,
        # which refuses it)
        saved = read_eval_json(run_dir, fix=f"restore it, or move it away and {rerun}")
    except EkdError as e:
        raise EkdError(f"ekd compare: {e}") from None
    if saved is not None:
        if problem := eval_json_problem(saved):  # try-out 45, F3: a traceback in float() or .items()
            raise EkdError(f"ekd compare: {path} is malformed: {problem}; move it away and {rerun}")
        ways = task_ways(saved)
        sets, scored_with, scored_by, teachers = split_settings(task_sets(saved))  # tasks: task:<name>
        # eval.json writes NaN as null (strict JSON): back to NaN
        metrics = {n: {k: math.nan if v is None else v for k, v in m.items()} for n, m in sets.items()}
        starts = {
            name: {k: math.nan if v is None else v for k, v in entry[STUDENT_INIT_KEY].items()}
            for name, entry in saved.items()
            if isinstance(entry, dict) and isinstance(entry.get(STUDENT_INIT_KEY), dict)
        }
        starts.update(task_starts(saved))  # the downstream tasks' initial student
        return metrics, scored_with, scored_by, ways, teachers, starts
    last = next((r for r in reversed(rows) if any(k.startswith("eval/") for k in r)), None)
    # try-out 45, F10: figures an `ekd eval` since may have replaced, read without a word
    if last is not None:
        log.warning(
            "ekd compare: %s has no eval.json; its figures are the last evaluation in metrics.jsonl (step %s)",
            run_dir,
            last.get("step", "?"),
        )
    results: dict[str, dict[str, float]] = {}
    for key, value in (last or {}).items():
        if not key.startswith("eval/"):
            continue
        name, _, metric = key[len("eval/") :].rpartition("/")  # "eval/<set>[/teacher]/<metric>"
        # null is a figure that was not finite, back to NaN as eval.json's is (review 128, S5: left out, the seed
        # read as one that did not score the set, and a diverged student was named nowhere)
        results.setdefault(name, {})[metric] = math.nan if value is None else value
    return results, {}, {}, {}, {}, {}


def _kd_fraction(run_dir: Path, rows: list[dict[str, Any]], marker: dict[str, Any], config: dict) -> float:
    """Positions given KD / valid positions over the run: as the run recorded them when it finished
    (``kd_positions``, ``valid_positions`` in ``marker``: every step of every segment). A run that records none
    (an older ekd's) gets them from the per-step ``select/positions`` (distinct positions; an older ekd's
    ``select/count``, rows: ``pos_rs`` counted each draw) and ``select/fraction`` of its logged rows — a sample
    of the steps under ``log.every`` > 1, without the steps that selected nothing (review 128, R1: 21.3% for a run
    that gave 2.6% of its positions KD) —, said in a line when that can differ; 0 for a run without a KD term;
    NaN, said, for one that logged no selection at all."""
    if isinstance(marker.get("kd_positions"), (int, float)) and "valid_positions" in marker:
        valid = float(marker["valid_positions"])
        return float(marker["kd_positions"]) / valid if valid else math.nan  # no valid position: no share
    method = config.get("method") or {}
    if not method.get("kd_weight", 1.0) or method.get("preset") == "ce":
        return 0.0
    selected = valid = 0.0
    skipped = 0  # logged steps that selected nothing: their valid positions are unknown
    for r in rows:
        count, fraction = r.get("select/positions", r.get("select/count")), r.get("select/fraction")
        if count is not None and fraction:
            selected += count
            valid += count / fraction
        elif count is not None:
            skipped += 1
    if not valid:
        why = (  # try-out 129, F3: "no selection figures" for logged steps that selected nothing
            f"the {skipped} steps its metrics.jsonl logged selected nothing"
            if skipped
            else "its metrics.jsonl holds no selection figures"
        )
        log.warning(
            "ekd compare: no KD share for %s: it records none (an older ekd's run) and %s", run_dir, why
        )
        return math.nan
    steps = sum(1 for r in rows if "train/loss" in r)
    if skipped or steps < int((config.get("train") or {}).get("max_steps", steps)):
        log.warning(
            "ekd compare: the KD share of %s (an older ekd's run, which records none) is estimated from its %d "
            "logged steps%s",
            run_dir,
            steps,
            f", {skipped} of which selected nothing" if skipped else "",
        )
    return selected / valid


def _rs_unique_ids(marker: dict[str, Any], rows: list[dict[str, Any]]) -> float | None:
    """The distinct ids an online RS run drew per KD row over every step, as the run recorded it when it finished
    (``rs_unique_ids`` in ekd-run.json); a run that records none (an older ekd's), over its logged rows
    (:func:`measured_rs_unique_ids`; a sample of the steps under ``log.every`` > 1)."""
    recorded = marker.get("rs_unique_ids")
    return float(recorded) if isinstance(recorded, (int, float)) else measured_rs_unique_ids(rows)


def measured_rs_unique_ids(rows: list[dict[str, Any]]) -> float | None:
    """Mean distinct ids an online RS run drew per KD position: the per-step ``train/rs_unique_ids`` weighted
    by the step's selected rows ``select/count`` (both global figures under torchrun; ``train/kd_tokens``, the
    planned normalizer, for a run that logged ``select/count`` per micro-batch). None for a run without it:
    another target, a cache, or a run of an ekd that did not log it."""
    drawn = positions = 0.0
    for r in rows:
        unique, count = r.get("train/rs_unique_ids"), r.get("select/count", r.get("train/kd_tokens"))
        if unique is not None and count:
            drawn += unique * count
            positions += count
    return drawn / positions if positions else None


def _bytes_per_token(
    run_dir: Path,
    config: dict[str, Any],
    marker: dict[str, Any],
    kd_fraction: float,
    rs_unique_ids: float | None,
) -> float:
    """:func:`ekd.demo.teacher_bytes_per_token` of a run; ``rs_unique_ids``: :func:`measured_rs_unique_ids`. A
    cache run's figure is the one measured on its cache: as the run recorded it (``cache_bytes_per_token`` in
    ``marker``), else (a run of an older ekd) read from the cache where its config names it; NaN, said in a line,
    when neither can be read or V is unknown — never the online formula's estimate for a cache run (review 126,
    R2: 23.9 for a cache measured at 38.2 B/token, once the cache was deleted)."""
    from ekd.config import config_from_dict
    from ekd.demo import teacher_bytes_per_token

    try:
        cfg = config_from_dict(config)
    except EkdError as e:
        log.warning(
            "ekd compare: no bytes/token for %s: its config is not read by today's ekd (%s)", run_dir, e
        )
        return math.nan
    cache_info = None
    if cfg.teacher.source == "cache":
        recorded = marker.get("cache_bytes_per_token")
        if isinstance(recorded, (int, float)):
            return float(recorded)
        try:
            from ekd.teacher.cache import CacheReader
            from ekd.teacher.cache.source import check_cache_settings

            cache_info = CacheReader(cfg.teacher.cache_dir).info()
            # the cache there now may be another (try-out 127, F2: rebuilt with N=8, it priced an N=50 run at 12.1)
            check_cache_settings(cfg, cache_info["signature"])
            recorded = marker.get("data_fingerprint")
            if recorded and cache_info["signature"].get("data_fingerprint") not in (None, recorded):
                raise EkdError("it was built from other training blocks than the run's")
        except EkdError as e:
            log.warning(
                "ekd compare: no bytes/token for %s: the run records no figure of its teacher cache (an older "
                "ekd's run), and the cache at %s cannot tell it (%s)",
                run_dir,
                cfg.teacher.cache_dir,
                str(e).split("\n")[0],
            )
            return math.nan
    vocab = _vocab_size(run_dir, marker)
    if not vocab:
        log.warning(
            "ekd compare: no bytes/token for %s: the size of its vocabulary is not recorded and its student "
            "directory holds no tokenizer",
            run_dir,
        )
        return math.nan
    return teacher_bytes_per_token(cfg, kd_fraction, cache_info, vocab, rs_unique_ids)


def _vocab_size(run_dir: Path, marker: dict[str, Any]) -> int:
    """V, the vocabulary the run's teacher targets spanned: the tokenizer length the run recorded when it
    finished (``ekd-run.json``'s ``tokenizer_tokens``), else (a run of an older ekd) the length of the tokenizer
    exported with the student (a model or an adapter directory alike); 0 when neither is there. Never the
    student head's ``vocab_size``: a padded head has more rows than the targets span."""
    recorded = marker.get("tokenizer_tokens")
    if recorded:
        return int(recorded)
    try:
        from ekd.models.load import load_tokenizer

        return len(load_tokenizer(str(run_dir / "student"), role="student"))
    except EkdError:
        return 0
