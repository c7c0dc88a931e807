"""Compare finished runs (``ekd compare RUN...``): one table over methods × seeds, paired differences against
baselines, and the plots the EKD draft asks for.

Runs whose resolved configs are equal except for ``run.*`` keys (name, seed, output directory), ``log.*`` and
the device layout — with the micro-batch over all ranks the run recorded instead (:meth:`RunRecord.trained_config`)
— form one *group* (a method at several seeds). Runs of a group with the same seed are *replicas* of one training
(a one-process run and its DDP twin, a resumed run and an uninterrupted one): the first given counts for the
seed, and a note names where the others' layouts differ and their largest metric difference from it. Per group:
the mean ± sample standard deviation over seeds of every eval metric, the fraction of positions that received
KD and the teacher bytes per training token. An eval set some runs scored another way (``ekd eval RUN
data.max_eval_blocks=48``: other blocks, tokenizer or scored tokens) is one *column* per way (``eval``,
``eval#2``, :func:`label_eval_sets`): a mean, a spread and a paired difference are over the seeds scored one
way, never over two sets. Against
each baseline present (``kd``, ``ce`` by default): the paired difference over the seeds both have,
``mean(d) ± std(d)``, and a verdict — a method *beats* the baseline only when the mean difference, in the
metric's better direction, exceeds the spread of the paired differences; a difference inside the spread is
"within spread"; one shared seed is "1 seed" (no spread to compare against).

Outputs (``--out DIR``): ``compare.md``, ``compare.csv``, ``compare.json`` and ``plots/``:
``pareto-<metric>.png`` (held-out KL and perplexity vs teacher bytes per training token, the Pareto
frontier marked), ``reliability.png`` (each group's reliability diagram side by side, from the runs'
``plots/``) and ``kl-by-entropy.png`` (KL to the teacher per teacher-entropy bucket).
"""

from __future__ import annotations

import csv
import io
import json
import math
import shlex
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import yaml

from ekd.config import flat_config, with_todays_defaults
from ekd.errors import EkdError
from ekd.eval.eval_json import BLOCKS_KEY, set_of, set_settings, split_settings
from ekd.eval.report import _atomic_write, _figure, _save_png, results_table
from ekd.eval.task_metrics import task_sets
from ekd.nearest import did_you_mean
from ekd.train.run_dir import SAME_RUN_KEYS, changes_training, read_marker


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
EVAL_SET_KEYS = ("data.eval_sources", "data.max_eval_blocks")
"""Keys that choose the eval sets and how much of them is scored, not what a run trains: runs differing in them
are one config, and each set is paired only where both runs scored it alike (try-out 26: an eval file copied
to another path split two seeds into two configs)."""
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
    # eval sets told apart by their blocks' sha256, not their files' paths: every run that scored them records it
    sets_by_content: frozenset[str] = frozenset()
    # the ranks of the run's last segment (ekd-run.json); None for a run of an older ekd
    ranks: int | None = None
    # column → its eval.json entry (``eval#2`` → ``eval``, ``eval#2/teacher`` → ``eval/teacher``): the set as this
    # run scored it (:func:`label_eval_sets`); None before grouping: each entry under its own name
    columns: dict[str, str] | None = None

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
        the device layout, the same math) or only choose the eval sets (:data:`EVAL_SET_KEYS`: each set is paired
        on its own, :meth:`eval_set`), with the micro-batch over all ranks (:data:`GLOBAL_BATCH_KEY`) instead — a
        ``torchrun`` run of 2 × 4 rows trains what one process of 8 does."""
        cfg = {
            s: {
                k: x for k, x in v.items() if changes_training(f"{s}.{k}") and f"{s}.{k}" not in EVAL_SET_KEYS
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
        return {s: v for s, v in cfg.items() if v}  # a section left empty (reporting keys alone): as absent

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
        alike (:func:`ekd.eval.eval_json.set_settings`); keys added to ekd after the entry was written at their
        defaults, as in the config (:func:`~ekd.config.with_todays_defaults`)."""
        if name in self.scored_with:
            data = with_todays_defaults({"data": self.scored_with[name]})["data"]
        else:
            data = self.config.get("data") or {}
        if name in self.sets_by_content:  # what the set holds, not where its files are
            data = {k: v for k, v in data.items() if k not in ("source", "eval_sources")}
        else:
            data = {k: v for k, v in data.items() if k != BLOCKS_KEY}
        return set_settings(data, name)  # narrowed and without the keys that only change how it is read

    def eval_set(self, name: str) -> str:
        """What eval set ``name`` of this run is: its data settings (:meth:`set_data`), the tokenizer, the
        set's scored tokens and documents (runs evaluated before sets were spread samples record none). Two
        runs' metrics on a set are comparable only when these are equal."""
        metrics = self.eval.get(name) or {}
        return json.dumps(
            [self.set_data(name), self.tokenizer, metrics.get("tokens"), metrics.get("documents")],
            sort_keys=True,
            default=str,
        )

    def teacher(self) -> str:
        """The teacher the run's KL and agreement are measured against (``model.teacher``, revision, dtype)."""
        model = self.config.get("model") or {}
        return json.dumps([model.get(k) for k in TEACHER_KEYS], default=str)


TEACHER_KEYS = ("teacher", "revision", "teacher_dtype")
TEACHER_RELATIVE = ("kl", "agree")  # metrics measured against the run's teacher (also kl@H<i>)
UNPAIRED = ("different eval sets", "different teachers")  # verdicts of a difference that is not computed


def _text_set(name: str) -> bool:
    """A text eval set of the run (``eval``, a shifted set), not its teacher row nor an lm-eval task."""
    return not name.endswith("/teacher") and not name.startswith(("task:", "tasks["))


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
            if v is not None and not math.isnan(v):
                out[r.seed] = v
        return out

    def run(self, seed: int) -> RunRecord:
        """The group's run with ``seed`` (one per seed: :func:`group_runs` keeps a seed's replicas apart)."""
        return next(r for r in self.runs if r.seed == seed)


def _value(run: RunRecord, key: str) -> float | None:
    if key == "kd_pct":
        return 100.0 * run.kd_fraction
    if key == "bytes_per_token":
        return run.bytes_per_token
    column, _, metric = key.rpartition("/")
    v = run.entry(column).get(metric)
    return None if v is None or (isinstance(v, float) and math.isnan(v)) else float(v)


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


def paired_difference(group: Group, baseline: Group, key: str) -> dict[str, Any]:
    """``group − baseline`` on the seeds both have: mean, std, n and a verdict for ``key``'s metric.

    A seed pairs only runs scored alike: on the same eval set (the column's: :meth:`Group.values`) for a text
    eval set's metric, and against the same teacher for KL and agreement. When no seed pairs, the verdict says
    why (``different eval sets``: the baseline's run of a seed scored the set another way; ``different
    teachers``) and there is no number.
    """
    a, b = group.values(key), baseline.values(key)
    why_not = _unpaired(group, baseline, key, sorted(a))
    seeds = [s for s in sorted(set(a) & set(b)) if s not in why_not]
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = mean_std(diffs)
    higher = HIGHER_IS_BETTER.get(key.rpartition("/")[2], True)
    if not diffs:
        verdict = next(iter(why_not.values()), "no shared seed")
    elif len(diffs) == 1:
        verdict = "1 seed"
    elif abs(mean) > std:
        verdict = "better" if (mean > 0) == higher else "worse"
    else:
        verdict = "within spread"
    return {"mean": mean, "std": std, "n": len(diffs), "verdict": verdict}


def _unpaired(group: Group, baseline: Group, key: str, seeds: list[int]) -> dict[int, str]:
    """seed → why ``group``'s run of the seed cannot be paired with ``baseline``'s on ``key`` (only the seeds
    that cannot; ``seeds``: those ``group`` has a value for)."""
    column, _, metric = key.rpartition("/")
    if not column or not _text_set(column):
        return {}  # cost columns and lm-eval tasks: no eval set to match
    out = {}
    for seed in seeds:
        base = next((r for r in baseline.runs if r.seed == seed), None)
        run = group.run(seed)
        name = run.entry_name(column)
        if base is None or name is None or (not base.entry(column) and name not in base.eval):
            continue  # no such seed, or a set the baseline's run did not score: nothing to pair
        if not base.entry(column) or run.eval_set(name) != base.eval_set(name):
            out[seed] = UNPAIRED[0]  # scored another way: in another column
        elif metric.split("@")[0] in TEACHER_RELATIVE and run.teacher() != base.teacher():
            out[seed] = UNPAIRED[1]
    return out


# ---------------------------------------------------------------------------------------------------------
# Reading runs
# ---------------------------------------------------------------------------------------------------------


def read_run(run_dir: str | Path) -> RunRecord:
    """A finished run directory written by ``ekd distill`` (``config.yaml`` + ``eval.json`` or the final eval
    rows of ``metrics.jsonl``).

    Raises:
        EkdError: not a run directory, or a run without a final evaluation.
    """
    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if not cfg_path.is_file():
        from ekd.train.evaluation import enclosing_run

        run = enclosing_run(run_dir)  # RUN/student, the exported model: did you mean RUN?
        fix = f"it lies inside the run {run}: pass that" if run is not None else "pass runs/<name>"
        raise EkdError(f"ekd compare: {run_dir} is not a run directory (no config.yaml); {fix}")
    try:
        config = yaml.safe_load(cfg_path.read_text()) or {}
    except yaml.YAMLError as e:
        raise EkdError(f"ekd compare: {cfg_path} is not valid YAML ({str(e).splitlines()[0]})") from None
    if isinstance(config, dict):  # a run of an older ekd: the keys added since, at their defaults
        config = with_todays_defaults(config)
    rows = metric_rows(run_dir)
    results, scored_with = _eval_results(run_dir, rows)
    if not results:
        raise EkdError(
            f"ekd compare: {run_dir} has no final evaluation (unfinished run?); finish it or run `ekd eval {shlex.quote(str(run_dir))}`"
        )
    kd_fraction = _kd_fraction(rows)
    marker = _marker(run_dir)
    return RunRecord(
        run_dir,
        config,
        results,
        kd_fraction,
        _bytes_per_token(run_dir, config, kd_fraction, measured_rs_unique_ids(rows)),
        _tokenizer_identity(run_dir, config),
        scored_with,
        marker.get("global_micro_batch"),
        marker.get("data_fingerprint") or None,
        ranks=marker.get("ranks"),
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
    """The rows of a run's ``metrics.jsonl`` (none when it is absent; a torn last line is skipped)."""
    path = run_dir / "metrics.jsonl"
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                continue  # a torn last line (interrupted write) carries nothing we need
    return rows


def _eval_results(
    run_dir: Path, rows: list[dict[str, Any]]
) -> tuple[dict[str, dict[str, float]], dict[str, dict[str, Any]]]:
    """``eval.json`` if ``ekd eval`` wrote one, else the last evaluation logged in ``metrics.jsonl``: set →
    metrics, and set → the data settings it was scored with, for the sets whose eval.json entry records them
    (:mod:`ekd.eval.eval_json`; none from metrics.jsonl or an older eval.json)."""
    path = run_dir / "eval.json"
    if path.is_file():
        try:
            sets, scored_with = split_settings(task_sets(json.loads(path.read_text())))  # tasks: task:<name>
            # eval.json writes NaN as null (strict JSON): back to NaN
            metrics = {n: {k: math.nan if v is None else v for k, v in m.items()} for n, m in sets.items()}
            return metrics, scored_with
        except json.JSONDecodeError:
            raise EkdError(
                f"ekd compare: {path} is not valid JSON; rerun `ekd eval {shlex.quote(str(run_dir))}`"
            ) from None
    last = next((r for r in reversed(rows) if any(k.startswith("eval/") for k in r)), None)
    results: dict[str, dict[str, float]] = {}
    for key, value in (last or {}).items():
        if not key.startswith("eval/") or value is None:
            continue
        name, _, metric = key[len("eval/") :].rpartition("/")  # "eval/<set>[/teacher]/<metric>"
        results.setdefault(name, {})[metric] = value
    return results, {}


def _kd_fraction(rows: list[dict[str, Any]]) -> float:
    """Selected / valid positions over the run, from the per-step ``select/count`` and ``select/fraction``."""
    selected = valid = 0.0
    for r in rows:
        count, fraction = r.get("select/count"), r.get("select/fraction")
        if count is not None and fraction:
            selected += count
            valid += count / fraction
    return selected / valid if valid else 0.0


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
    run_dir: Path, config: dict[str, Any], kd_fraction: float, rs_unique_ids: float | None
) -> float:
    """:func:`ekd.demo.teacher_bytes_per_token` of a run; ``rs_unique_ids``: :func:`measured_rs_unique_ids`."""
    from ekd.config import config_from_dict
    from ekd.demo import teacher_bytes_per_token

    try:
        cfg = config_from_dict(config)
    except EkdError:
        return math.nan
    vocab = _vocab_size(run_dir)
    cache_info = None
    if cfg.teacher.source == "cache" and cfg.teacher.cache_dir:
        try:
            from ekd.teacher.cache import CacheReader

            cache_info = CacheReader(cfg.teacher.cache_dir).info()
        except EkdError:
            cache_info = None
    return teacher_bytes_per_token(cfg, kd_fraction, cache_info, vocab, rs_unique_ids) if vocab else math.nan


def _marker(run_dir: Path) -> dict[str, Any]:
    """The run's ``ekd-run.json`` (what it recorded when it finished); {} when absent or unreadable."""
    try:
        return read_marker(run_dir) or {}
    except EkdError:
        return {}


def _vocab_size(run_dir: Path) -> int:
    """V, the vocabulary the run's teacher targets spanned: the tokenizer length the run recorded when it
    finished (``ekd-run.json``'s ``tokenizer_tokens``), else (a run of an older ekd) the length of the tokenizer
    exported with the student (a model or an adapter directory alike); 0 when neither is there. Never the
    student head's ``vocab_size``: a padded head has more rows than the targets span."""
    recorded = _marker(run_dir).get("tokenizer_tokens")
    if recorded:
        return int(recorded)
    try:
        from ekd.models.load import load_tokenizer

        return len(load_tokenizer(str(run_dir / "student"), role="student"))
    except EkdError:
        return 0


# ---------------------------------------------------------------------------------------------------------
# Grouping and tables
# ---------------------------------------------------------------------------------------------------------


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
    sets_by_content = frozenset(
        n for n in scored if all(BLOCKS_KEY in r.scored_with.get(n, {}) for r in runs if n in r.eval)
    )
    for r in runs:
        r.source_by_content, r.sets_by_content = by_content, sets_by_content
    groups: dict[str, Group] = {}
    for r in runs:
        g = groups.setdefault(r.group_key(), Group(label=""))
        if any(o.seed == r.seed for o in g.runs):
            g.replicas.setdefault(r.seed, []).append(r)
        else:
            g.runs.append(r)
    seen: dict[str, int] = {}
    for g in groups.values():
        method = g.runs[0].method
        seen[method] = seen.get(method, 0) + 1
        g.label = method if seen[method] == 1 else f"{method}#{seen[method]}"
        if seen[method] > 1:
            first = next(o for o in groups.values() if o.runs[0].method == method)
            a, b = first.runs[0], g.runs[0]
            diffs = _config_differences(a.trained_config(), b.trained_config())
            if by_content and any(d.startswith("data.source=") for d in diffs):
                # the files, beside the blocks
                paths = [(r.config.get("data") or {}).get("source") for r in (b, a)]
                diffs = [
                    d + (f" ({paths[0]} vs {paths[1]})" if d.startswith("data.source=") else "")
                    for d in diffs
                ]
            g.note = f"`{g.label}` differs from `{method}` in " + ", ".join(diffs)
    label_eval_sets(list(groups.values()))
    return list(groups.values())


def label_eval_sets(groups: list[Group]) -> None:
    """Give each run its columns (:attr:`RunRecord.columns`): an eval set every run that has it scored alike
    (:meth:`RunRecord.eval_set`) keeps its name; a set scored several ways is one column per way, the set's
    name for the way of the first run given, ``<set>#2``, ``<set>#3`` … for the others in order, so that a
    mean, a spread or a paired difference over seeds is over one set (try-out 29: ``2.93 ± 0.05`` averaged
    2.96 on 24 blocks and 2.90 on 48). A set's teacher row goes to its set's column; lm-eval tasks keep their
    names. Counted runs are labelled first, replicas after them: a way only a replica scored is no column of
    the table."""
    ways: dict[str, list[str]] = {}  # set → the ways (eval_set) it was scored, in order
    ordered = [r for g in groups for r in g.runs]
    ordered += [r for g in groups for seed in sorted(g.replicas) for r in g.replicas[seed]]
    for r in ordered:
        r.columns = {}
        for name in r.eval:
            base = set_of(name)
            if not _text_set(base) or base not in r.eval:
                r.columns[name] = name  # a task (or a teacher row without its set): no eval set to tell apart
                continue
            seen = ways.setdefault(base, [])
            way = r.eval_set(base)
            if way not in seen:
                seen.append(way)
            k = seen.index(way)
            r.columns[(base if k == 0 else f"{base}#{k + 1}") + name[len(base) :]] = name


def _layout(run: RunRecord) -> dict[str, Any]:
    """How ``run`` was laid out and batched without changing what it trained: the keys of
    :data:`~ekd.train.run_dir.SAME_RUN_KEYS` (parallel engine, offload, teacher placement, micro-batch split,
    the same math in another summation order, checkpointing, eval batching) and the ranks it ran on."""
    flat = flat_config(run.config)
    layout = {k: flat.get(k) for k in SAME_RUN_KEYS}
    layout["ranks"] = run.ranks or 1  # a run of an older ekd records none: one process
    return layout


def replica_record(group: Group, seed: int) -> dict[str, Any]:
    """What a seed's replicas are: the counted run, each replica with the layout keys where it differs from
    that run (``ranks=2``, ``train.parallel='fsdp'``; none for a resumed run or a rerun), and the largest
    metric difference between any replica and the counted run — the metric (``<column>/<metric>``, ``kd_pct``,
    ``bytes_per_token``), both values, |Δ| and |Δ| relative to the larger magnitude — over the figures both
    scored alike: an eval set a replica scored another way (:func:`label_eval_sets`) is listed in
    ``scored_otherwise`` (``eval#2 (vs eval)``), not compared."""
    counted_run = group.run(seed)
    base = _layout(counted_run)
    replicas = []
    largest: dict[str, Any] | None = None
    keys = metric_keys([group]) + [
        f"{c}/{m}" for c in counted_run.column_names() if c.endswith("/teacher") for m in METRICS
    ]
    counted_columns = {n: c for c, n in (counted_run.columns or {}).items()}  # entry → column
    otherwise = [
        f"{c} (vs {counted_columns[n]})"
        for r in group.replicas[seed]
        for c, n in (r.columns or {}).items()
        if _text_set(c) and n in counted_columns and counted_columns[n] != c
    ]
    for r in group.replicas[seed]:
        mine = _layout(r)
        replicas.append(
            {
                "run": str(r.run_dir),
                "differs_in": [f"{k}={mine[k]!r} (vs {base[k]!r})" for k in base if mine[k] != base[k]],
            }
        )
        for key in keys:
            a, b = _value(counted_run, key), _value(r, key)
            if a is None or b is None:
                continue
            diff = abs(a - b)
            rel = diff / max(abs(a), abs(b)) if diff else 0.0
            if largest is None or rel > largest["relative"]:
                largest = {
                    "key": key,
                    "counted": a,
                    "replica": b,
                    "abs": diff,
                    "relative": rel,
                    "run": str(r.run_dir),
                }
    return {
        "seed": seed,
        "counted": str(counted_run.run_dir),
        "replicas": replicas,
        "largest_difference": largest,
        "scored_otherwise": list(dict.fromkeys(otherwise)),
    }


def replica_note(record: dict[str, Any]) -> str:
    """A :func:`replica_record` (with its group's ``method`` label) as one sentence: which run counts, where each
    replica's layout differs, and the largest metric difference (``identical metrics`` when there is none)."""
    others = ", ".join(
        f"{r['run']} ({', '.join(r['differs_in']) if r['differs_in'] else 'the same layout: a resume or a rerun'})"
        for r in record["replicas"]
    )
    big, otherwise = record["largest_difference"], record.get("scored_otherwise")
    if big is None or big["abs"] == 0:
        agree = "identical metrics"
    else:
        agree = (
            f"largest difference {big['key']} {big['counted']:.10g} vs {big['replica']:.10g} "
            f"(|Δ| {big['abs']:.2g}, {big['relative']:.2g} relative, {big['run']})"
        )
    if otherwise:  # the eval sets themselves differ there: not a difference between the trainings
        agree += f" where scored alike ({', '.join(otherwise)} scored another way, not compared)"
    return (
        f"`{record['method']}` seed {record['seed']}: {record['counted']} counts; replicas {others}: {agree}"
    )


def _config_differences(a: dict[str, Any], b: dict[str, Any], limit: int = 6) -> list[str]:
    """``section.key=value (vs other)`` for the keys (outside ``run.*`` identity and ``log.*``) where two configs
    differ."""
    out = []
    for section in sorted(set(a) | set(b)):
        sa, sb = a.get(section) or {}, b.get(section) or {}
        for key in sorted(set(sa) | set(sb)):
            if (section == "run" and key in RUN_KEYS) or not changes_training(f"{section}.{key}"):
                continue
            if sa.get(key) != sb.get(key):
                out.append(f"{section}.{key}={sb.get(key)!r} (vs {sa.get(key)!r})")
    return out[:limit] + (["…"] if len(out) > limit else [])


def metric_keys(groups: list[Group]) -> list[str]:
    """``<column>/<metric>`` for every student eval set column (:func:`label_eval_sets`; teacher rows
    excluded), then cost columns."""
    sets = sorted({c for g in groups for r in g.runs for c in r.column_names() if not c.endswith("/teacher")})
    return [f"{s}/{m}" for s in sets for m in METRICS] + ["kd_pct", "bytes_per_token"]


def summarize(groups: list[Group], baselines: list[str]) -> dict[str, Any]:
    """The comparison as plain data (what ``compare.json`` holds)."""
    keys = metric_keys(groups)
    by_label = {g.label: g for g in groups}
    out: dict[str, Any] = {"groups": [], "baselines": [b for b in baselines if b in by_label]}
    for g in groups:
        entry: dict[str, Any] = {
            "method": g.label,
            "seeds": sorted(r.seed for r in g.runs),
            "runs": [str(r.run_dir) for r in g.runs],
            "note": g.note,
            "metrics": {},
            "vs": {},
        }
        for key in keys:
            vals = list(g.values(key).values())
            if vals:
                mean, std = mean_std(vals)
                entry["metrics"][key] = {"mean": mean, "std": std, "n": len(vals)}
        for b in out["baselines"]:
            if b != g.label:
                entry["vs"][b] = {
                    k: paired_difference(g, by_label[b], k) for k in keys if k in entry["metrics"]
                }
        out["groups"].append(entry)
    out["teachers"] = _teacher_rows(groups)
    out["eval_set_columns"] = eval_set_columns(groups)
    out["eval_sets"] = "; ".join(_eval_set_notes(out["eval_set_columns"]))
    out["replicas"] = [
        {"method": g.label, **replica_record(g, seed)} for g in groups for seed in sorted(g.replicas)
    ]
    out["replica_notes"] = [replica_note(r) for r in out["replicas"]]
    return out


def _teacher_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per distinct teacher (:meth:`RunRecord.teacher`; the runs' ``<set>/teacher`` metrics): the
    teacher, the groups it taught, its metrics, and a label — '(teacher)' when there is one, else '(teacher of
    kd, ...)'. Its figures on a set go to the set's column (:func:`label_eval_sets`): the same teacher on a set
    scored two ways has a figure in each column, told apart by the column, not by a second row of one label
    (try-out 29: two rows '(teacher of kd)'); a run with one set more than the others adds that set's figures."""
    rows: list[dict[str, Any]] = []
    for g in groups:
        for r in g.runs:
            metrics = {
                f"{set_of(c)}/{m}": v
                for c in r.column_names()
                if c.endswith("/teacher")
                for m, v in r.entry(c).items()
                if m in METRICS
            }
            if not metrics:
                continue
            row = next((row for row in rows if row["key"] == r.teacher()), None)
            if row is None:
                teacher = (r.config.get("model") or {}).get("teacher")
                row = {"key": r.teacher(), "teacher": teacher, "of": [], "metrics": {}}
                rows.append(row)
            row["metrics"] = metrics | row["metrics"]  # a column is one set: the first run's figure stands
            if g.label not in row["of"]:
                row["of"].append(g.label)
    for row in rows:
        del row["key"]
        row["label"] = "(teacher)" if len(rows) == 1 else f"(teacher of {', '.join(row['of'])})"
    return rows


def eval_set_columns(groups: list[Group]) -> list[dict[str, Any]]:
    """The columns of the eval sets some runs scored another way (:func:`label_eval_sets`), in table order:
    per column its set, the counted runs scored that way, and how they differ from the set's first column
    (:func:`_eval_set_difference`; '' for the first). [] when every run that scored a set scored it alike — a
    set only some runs scored is no difference: its cells count fewer seeds."""
    columns: dict[str, dict[str, list[tuple[Group, RunRecord]]]] = {}  # set → column → (group, run)
    for g in groups:
        for r in g.runs:
            for c in r.column_names():
                if _text_set(c):
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
                    "differs": "" if column == name else _eval_set_difference(ref, runs[0][1], name),
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


def _eval_set_difference(a: RunRecord, b: RunRecord, name: str) -> str:
    """How ``b``'s eval set ``name`` differs from ``a``'s: data keys (:meth:`RunRecord.set_data`), the
    tokenizer, the scored tokens, or else the documents (a run evaluated before eval sets were spread samples
    records none)."""
    keys = _config_differences({"data": a.set_data(name)}, {"data": b.set_data(name)})
    if keys:
        return ", ".join(keys)
    if a.tokenizer != b.tokenizer:
        return "another tokenizer"
    if (a.eval.get(name) or {}).get("tokens") != (b.eval.get(name) or {}).get("tokens"):
        return "the same data settings, other scored token counts"
    return "the same data settings, other scored documents (an older ekd took an eval set's first blocks)"


def _of(cell: dict[str, Any] | None, seeds: list[int]) -> dict[str, Any] | None:
    """``cell`` (mean, std, n) of a row of ``seeds``, knowing how many seeds its row has."""
    return None if cell is None else {**cell, "of": len(seeds)}


def _pm(cell: dict[str, Any] | None, fmt: str) -> str:
    """'mean ± std', 'mean' for one value; ' (n=1)' after a cell of fewer seeds than its row's."""
    if not cell or cell["mean"] is None or math.isnan(cell["mean"]):
        return "—"
    fewer = f" (n={cell['n']})" if cell["n"] < cell.get("of", 0) else ""
    if cell["n"] < 2 or math.isnan(cell["std"]):
        return format(cell["mean"], fmt) + fewer
    return f"{format(cell['mean'], fmt)} ± {format(cell['std'], fmt)}{fewer}"


FORMATS = {k: m.fmt for k, m in METRIC_INFO.items()} | {"kd_pct": ".1f", "bytes_per_token": ".1f"}


def _fmt(key: str) -> str:
    return FORMATS.get(key.rpartition("/")[2] or key, ".4g")


def markdown(summary: dict[str, Any]) -> str:
    """The results table (mean ± std over seeds) and one paired-difference table per baseline."""
    groups = summary["groups"]
    keys = [k for k in _ordered_keys(summary) if any(k in g["metrics"] for g in groups)]
    rows = [  # a cell of fewer seeds than its row (a set some runs did not score) says how many
        {
            "method": g["method"],
            "seeds": len(g["seeds"]),
            **{k: _of(g["metrics"].get(k), g["seeds"]) for k in keys},
        }
        for g in groups
    ]
    for teacher in summary.get("teachers", []):  # one per distinct teacher and eval sets
        rows.append(
            {
                "method": teacher["label"],
                **{k: {"mean": v, "std": math.nan, "n": 1} for k, v in teacher["metrics"].items()},
            }
        )
    cols = [("method", "method", ""), ("seeds", "seeds", "d")] + [
        (k, _header(k), (lambda f: lambda c: _pm(c, f))(_fmt(k))) for k in keys
    ]
    parts = ["Mean ± sample std over seeds.\n", results_table(rows, cols)]
    notes = [g["note"] for g in groups if g.get("note")]
    if notes:
        parts.append("Same preset, another config: " + "; ".join(notes) + ".\n")
    text_keys = [k for k in keys if _text_set(k.rpartition("/")[0])]
    blank = [
        t["label"]
        for t in summary.get("teachers", [])
        if text_keys and not set(t["metrics"]) & set(text_keys)
    ]
    if blank:  # e.g. the demo's runs: the teacher's downstream tasks were scored, its text sets were not
        parts.append(
            f"{', '.join(f'`{b}`' for b in blank)}: no eval-set figures in these runs (they were evaluated with "
            "`eval.teacher_metrics=false`; `ekd eval RUN eval.teacher_metrics=true` adds them).\n"
        )
    if summary.get("replica_notes"):
        parts.append(
            "Replicas (the same config and seed, trained apart: another device layout, a resume; each seed is "
            "counted once, by the first run given): " + "; ".join(summary["replica_notes"]) + ".\n"
        )
    if summary.get("eval_set_columns"):
        parts.append(
            "Scored on different eval sets: each way a set was scored is its own column (`<set>#2`, …), a cell "
            "averaging only the seeds scored that way; paired differences across them (and of KL and agreement "
            "across teachers) are n/a: those numbers are not comparable.\n"
            + "".join(f"- {line}\n" for line in _eval_set_notes(summary["eval_set_columns"]))
        )
    for b in summary["baselines"]:
        diff_rows = []
        for g in groups:
            if b not in g["vs"]:
                continue
            row: dict[str, Any] = {"method": g["method"]}
            for k, d in g["vs"][b].items():
                if d["n"]:
                    sign = format(d["mean"], "+" + _fmt(k))
                    spread = "" if math.isnan(d["std"]) else f" ± {format(d['std'], _fmt(k))}"
                    row[k] = f"{sign}{spread} ({d['verdict']})"
                elif d["verdict"] in UNPAIRED:
                    row[k] = f"n/a ({d['verdict']})"
            diff_rows.append(row)
        if diff_rows:
            dcols = [("method", "method", "")] + [
                (k, _header(k), "") for k in keys if k not in ("kd_pct", "bytes_per_token")
            ]
            parts.append(
                f"\nPaired difference vs `{b}` (same seeds; method − {b}; verdict: better/worse only "
                "when the mean difference exceeds the spread of the paired differences).\n"
            )
            parts.append(results_table(diff_rows, dcols))
    return "\n".join(parts)


def _ordered_keys(summary: dict[str, Any]) -> list[str]:
    keys = []
    for g in summary["groups"]:
        keys.extend(k for k in g["metrics"] if k not in keys)
    return keys


def _header(key: str) -> str:
    if key == "kd_pct":
        return "KD pos %"
    if key == "bytes_per_token":
        return "teacher B/token"
    name, _, metric = key.rpartition("/")
    return f"{name} {METRIC_INFO[metric].header if metric in METRIC_INFO else metric}"


def to_csv(summary: dict[str, Any]) -> str:
    """One row per group and metric: method, metric, mean, std, n, then ``<baseline>_diff/std/verdict``."""
    buf = io.StringIO()
    w = csv.writer(buf)
    baselines = summary["baselines"]
    w.writerow(
        ["method", "metric", "mean", "std", "n"]
        + [f"{b}_{x}" for b in baselines for x in ("diff", "diff_std", "verdict")]
    )
    for g in summary["groups"]:
        for key, cell in g["metrics"].items():
            extra = []
            for b in baselines:
                d = g["vs"].get(b, {}).get(key)
                extra += [d["mean"], d["std"], d["verdict"]] if d else ["", "", ""]
            w.writerow([g["method"], key, cell["mean"], cell["std"], cell["n"], *extra])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------------------
# Plots
# ---------------------------------------------------------------------------------------------------------


def pareto_front(points: list[tuple[float, float]]) -> list[int]:
    """Indices of the points not dominated in (cost ↓, loss ↓), sorted by cost."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1]))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


def plot_pareto(summary: dict[str, Any], metric_key: str, path: Path) -> Path | None:
    """``metric_key`` (e.g. ``eval/kl``) against teacher bytes per training token (log x), frontier marked."""
    pts, labels = [], []
    for g in summary["groups"]:
        m, c = g["metrics"].get(metric_key), g["metrics"].get("bytes_per_token")
        if m and c and not math.isnan(m["mean"]) and not math.isnan(c["mean"]):
            pts.append((c["mean"], m["mean"]))
            labels.append(g["method"])
    if not pts:
        return None
    fig = _figure(6.0, 4.5)
    ax = fig.add_subplot(1, 1, 1)
    xs = [max(p[0], 0.1) for p in pts]  # CE (0 B/token) drawn at the left edge of the log axis
    ax.scatter(xs, [p[1] for p in pts], color="tab:blue")
    for x, (_, y), label in zip(xs, pts, labels):
        ax.annotate(label, (x, y), fontsize="small", xytext=(3, 3), textcoords="offset points")
    front = pareto_front(pts)
    ax.plot(
        [xs[i] for i in front],
        [pts[i][1] for i in front],
        color="tab:red",
        linestyle="--",
        label="Pareto frontier",
    )
    ax.set_xscale("log")
    ax.set_xlabel("teacher bytes per training token (log)")
    ax.set_ylabel(metric_key)
    ax.legend(fontsize="small")
    ax.set_title(f"{metric_key} vs teacher supervision cost")
    return _save_png(fig, path)


def plot_reliability_grid(groups: list[Group], eval_set: str, path: Path) -> Path | None:
    """Each group's reliability diagram (``plots/reliability-<set>.png`` of its first run scored on column
    ``eval_set``, :func:`label_eval_sets`) side by side."""
    firsts = [(g.label, next((r for r in g.runs if r.entry(eval_set)), None)) for g in groups]
    images = [
        (label, r.run_dir / "plots" / f"reliability-{r.entry_name(eval_set)}.png") for label, r in firsts if r
    ]
    images = [(label, p) for label, p in images if p.is_file()]
    if not images:
        return None
    from matplotlib.image import imread

    cols = min(4, len(images))
    rows = math.ceil(len(images) / cols)
    fig = _figure(3.2 * cols, 3.2 * rows)
    for i, (label, p) in enumerate(images):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.imshow(imread(p))
        ax.set_title(label, fontsize="small")
        ax.axis("off")
    return _save_png(fig, path)


def kl_by_entropy(groups: list[Group], eval_set: str) -> dict[str, dict[int, float]]:
    """group label → teacher-entropy bucket → KL(teacher‖student) (``kl@H<i>``) averaged over the group's seeds
    scored on column ``eval_set`` (:meth:`Group.values`: never over two sets); groups without it are left out."""
    series = {}
    for g in groups:
        buckets = {}
        for r in g.runs:
            for k, v in r.entry(eval_set).items():
                if k.startswith("kl@H") and v is not None and not math.isnan(v):
                    buckets.setdefault(int(k[4:]), []).append(float(v))
        if buckets:
            series[g.label] = {b: statistics.fmean(v) for b, v in buckets.items()}
    return series


def plot_kl_by_entropy(
    summary: dict[str, Any], eval_set: str, path: Path, groups: list[Group]
) -> Path | None:
    """KL(teacher‖student) per teacher-entropy bucket (``kl@H<i>``), one bar group per method."""
    series = kl_by_entropy(groups, eval_set)
    if not series:
        return None
    nb = 1 + max(b for s in series.values() for b in s)
    fig = _figure(max(5.0, 1.2 * nb + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(series)
    for j, (label, s) in enumerate(series.items()):
        ax.bar(
            [b + j * width for b in range(nb)],
            [s.get(b, math.nan) for b in range(nb)],
            width=width,
            label=label,
        )
    ax.set_xticks([b + 0.4 - width / 2 for b in range(nb)], [f"H{b}" for b in range(nb)])
    ax.set_xlabel("teacher-entropy bucket (low → high)")
    ax.set_ylabel("KL(teacher ‖ student)")
    ax.legend(fontsize="x-small", ncol=2)
    ax.set_title(f"KL by teacher entropy on {eval_set}")
    return _save_png(fig, path)


# ---------------------------------------------------------------------------------------------------------
# Driver
# ---------------------------------------------------------------------------------------------------------


def compare_runs(
    run_dirs: list[str | Path],
    out: str | Path,
    baselines: tuple[str, ...] = ("kd", "ce"),
    plots: bool = True,
    require_baselines: bool = False,
) -> dict[str, Any]:
    """Read ``run_dirs``, write ``compare.{md,csv,json}`` (and plots) under ``out``; return the summary.

    Args:
        baselines: group labels to report paired differences against; those absent are skipped, unless
        require_baselines: (``--baselines`` given) each must name a group, else nothing is written.

    Raises:
        EkdError: a path that is not a finished run, one run directory given twice, or a required baseline
            that matches no run.
    """
    if not run_dirs:
        raise EkdError("ekd compare: give at least one run directory (runs/<name>)")
    runs = [read_run(d) for d in run_dirs]
    groups = group_runs(runs)
    labels = [g.label for g in groups]
    unknown = [b for b in baselines if b not in labels]
    if require_baselines and unknown:
        raise EkdError(
            f"ekd compare: --baselines {','.join(unknown)} matches no run; name methods of these runs "
            f"({', '.join(labels)}){did_you_mean(unknown[0], labels)}"
        )
    summary = summarize(groups, list(baselines))
    out = Path(out)
    _atomic_write(out / "compare.json", lambda f: f.write(json.dumps(_nan_to_none(summary), indent=2)))
    _atomic_write(out / "compare.csv", lambda f: f.write(to_csv(summary)))
    text = "# ekd compare\n\n" + markdown(summary)
    if plots:
        written = []
        for key in ("eval/kl", "eval/ppl"):
            p = plot_pareto(summary, key, out / "plots" / f"pareto-{key.replace('/', '-')}.png")
            written += [p] if p else []
        p = plot_reliability_grid(groups, "eval", out / "plots" / "reliability.png")
        written += [p] if p else []
        p = plot_kl_by_entropy(summary, "eval", out / "plots" / "kl-by-entropy.png", groups)
        written += [p] if p else []
        if written:
            text += "\n" + "\n".join(f"![{p.stem}](plots/{p.name})" for p in written) + "\n"
    _atomic_write(out / "compare.md", lambda f: f.write(text))
    return summary


def _nan_to_none(value: Any) -> Any:
    """JSON has no NaN: a missing spread (one seed) is written as null."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if isinstance(value, dict):
        return {k: _nan_to_none(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_to_none(v) for v in value]
    return value


__all__ = [
    "Group",
    "RunRecord",
    "compare_runs",
    "eval_set_columns",
    "group_runs",
    "kl_by_entropy",
    "label_eval_sets",
    "markdown",
    "mean_std",
    "paired_difference",
    "pareto_front",
    "read_run",
    "summarize",
    "to_csv",
]
