"""The comparison as plain data (what ``compare.json`` holds): per group the mean ± sample std over seeds of
every figure, paired differences against each baseline with their verdict (:func:`paired_difference`), the
teacher rows, the eval-set columns and the replicas."""

from __future__ import annotations

import math
import statistics
from typing import Any

from ekd.config import ConfigError
from ekd.eval.compare.eval_sets import _eval_set_notes, eval_set_columns
from ekd.eval.compare.groups import ANOTHER_TEACHER, Group, metric_keys
from ekd.eval.compare.replicas import replica_note, replica_record
from ekd.eval.compare.runs import (
    HIGHER_IS_BETTER,
    METRIC_INFO,
    METRIC_SETTINGS,
    METRICS,
    TEACHER_RELATIVE,
    UNPAIRED,
    _scored_set,
    _task_entry,
    _text_set,
    most_common,
    setting_said,
)
from ekd.eval.eval_json import block_sums_of, set_of


def mean_std(values: list[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof=1; NaN for a single value)."""
    if not values:
        return math.nan, math.nan
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else math.nan


COST_KEYS = ("kd_pct", "bytes_per_token")  # what a method spends (try-out 31: fewer bytes were "worse")


def paired_difference(group: Group, baseline: Group, key: str) -> dict[str, Any]:
    """``group − baseline`` on the seeds both have: mean, std, n, the 95% confidence half-width (``ci95``,
    :func:`ci95_half_width`) and a verdict for ``key``'s metric: better/worse (higher/lower for a cost) only when
    the interval excludes 0 (a paired t-test), else :data:`NOT_SIGNIFICANT`.

    A seed pairs only runs scored alike: on the same eval set (the column's: :meth:`Group.values`) for a text
    eval set's metric, and against the same teacher for KL and agreement. When no seed pairs, the verdict says
    why (``different eval sets``: the baseline's run of a seed scored the set another way; ``different
    teachers``) and there is no number.
    """
    a, b = group.values(key), baseline.values(key)
    diverged = [
        f"`{g.label}` seed {s}"
        for g, other in ((group, baseline), (baseline, group))
        for s in g.not_finite(key)
        if any(r.seed == s for r in other.runs)
    ]
    why_not = _unpaired(group, baseline, key, sorted(a))
    seeds = [s for s in sorted(set(a) & set(b)) if s not in why_not]
    diffs = [a[s] - b[s] for s in seeds]
    mean, std = mean_std(diffs)
    half = ci95_half_width(std, len(diffs))
    higher = HIGHER_IS_BETTER.get(key.rpartition("/")[2], True)
    if diverged:  # a seed that diverged is part of the method's result: no verdict over the others alone
        verdict = f"{NOT_FINITE} ({', '.join(diverged)})"
    elif not diffs:
        verdict = next(iter(why_not.values()), "no shared seed" if b else f"no `{baseline.label}` figure")
    elif len(diffs) == 1:
        verdict = "1 seed"
    elif not abs(mean) > half:
        verdict = NOT_SIGNIFICANT
    elif key in COST_KEYS:  # a cost, not a quality: which way is better is the user's call
        verdict = "higher" if mean > 0 else "lower"
    else:
        verdict = "better" if (mean > 0) == higher else "worse"
    out = {"mean": mean, "std": std, "n": len(diffs), "verdict": verdict}
    if math.isfinite(half):
        out["ci95"] = half
    noise = item_noise(group, baseline, key, seeds)
    if verdict in ("better", "worse", "1 seed") and abs(mean) < noise:
        out["verdict"] = ITEM_NOISE  # a fixed set of n items: seeds cannot average its sampling error away
    if math.isfinite(noise):
        out["item_noise"] = noise
    return out


ITEM_NOISE = "within item noise"
NOT_FINITE = "not finite"  # a paired seed's figure is not a finite number (its student diverged): no verdict
NOT_SIGNIFICANT = "not significant"  # the 95% confidence interval of the mean difference holds 0


def ci95_half_width(std: float, n: int) -> float:
    """The half-width of the two-sided 95% confidence interval of the mean of ``n`` paired differences of sample
    standard deviation ``std``: t₀.₉₇₅,ₙ₋₁ · std / √n (Student's t; the paired t-test at the 5% level, two-sided).
    NaN for n < 2. With 2 seeds t is 12.7: a difference resolves only if it is ~9 times its spread (try-out 45,
    F8: 'better' needed only the mean to exceed the sample std, ~60% confidence at 2 seeds)."""
    if n < 2 or not math.isfinite(std):
        return math.nan
    from scipy.stats import t

    return float(t.ppf(0.975, n - 1)) * std / math.sqrt(n)


def item_noise(group: Group, baseline: Group, key: str, seeds: list[int] | None = None) -> float:
    """The smallest difference ``group − baseline`` of ``key`` that the fixed items every seed is scored on
    resolve — seeds cannot average their sampling error away (try-out 34: 'better' on 2 seeds that differed by
    3 and 1 items of 70, one standard error being ~0.08). ``seeds``: the paired seeds the difference is over
    (None: every seed both groups have); the figures are over those alone (try-out 39: a method's seed that no
    baseline run pairs moved the noise and flipped a verdict).

    - A downstream task's score (a proportion: accuracy, exact match): :func:`~ekd.eval.task_metrics.gap_noise`
      of the two groups' means — 2·√((a(1−a) + b(1−b))/n), at least 3/n — and for a tag's mean over tasks,
      :func:`~ekd.eval.task_metrics.mean_noise` of its tasks'.
    - A text eval set's ``ppl``, ``ppl_no_boundary``, ``loss``, ``acc``: :func:`text_set_noise` of the runs'
      per-block sums.

    NaN (no judgement) for any other key, an unknown item count, a score outside [0, 1], or a text set whose runs
    record no per-block sums (an older ekd's) or blocks that do not pair."""
    column, _, metric = key.rpartition("/")
    if not group.runs or not column:
        return math.nan
    if column.startswith(("task:", "tasks[")):
        return _task_noise(group, baseline, key, seeds) if metric == "score" else math.nan
    if _text_set(column) and metric in TEXT_SET_NOISE_METRICS:
        if seeds is None:
            seeds = sorted(set(group.values(key)) & set(baseline.values(key)))
        sums = [_mean_block_sums(g, column, seeds) for g in (group, baseline)]
        if sums[0] is None or sums[1] is None:
            return math.nan
        base = [v for seed, v in baseline.values(key).items() if seed in seeds]
        return text_set_noise(sums[0], sums[1], metric, statistics.fmean(base) if base else math.nan)
    return math.nan


def _task_noise(group: Group, baseline: Group, key: str, seeds: list[int] | None) -> float:
    """:func:`item_noise` of a downstream task's score ``key`` (``task:<name>/score``, ``tasks[<tag>]/score``)."""
    from ekd.eval import task_metrics as tm

    column = key.rpartition("/")[0]
    run = next((r for r in group.runs if r.entry_name(column)), None)
    way = run.task_way(run.entry_name(column)) if run is not None else {}

    def mean_of(g: Group, k: str) -> float:
        values = [v for seed, v in g.values(k).items() if seeds is None or seed in seeds]
        return statistics.fmean(values) if values else math.nan

    if column.startswith("task:"):
        return tm.gap_noise(mean_of(group, key), mean_of(baseline, key), way.get("documents"))
    return tm.mean_noise(
        [
            tm.gap_noise(mean_of(group, f"task:{t}/score"), mean_of(baseline, f"task:{t}/score"), n)
            for t, n in tm.tag_documents(way).items()
        ]
    )


TEXT_SET_NOISE_METRICS = ("ppl", "ppl_no_boundary", "loss", "acc")
"""A text eval set's figures :func:`text_set_noise` judges: per-token means over its blocks (and exp of one)."""


def _mean_block_sums(group: Group, column: str, seeds: list[int]) -> dict[str, list[float]] | None:
    """The per-block sums (:func:`~ekd.eval.eval_json.block_sums_of`) of ``group``'s runs of ``seeds`` on
    ``column``, each block's averaged over the seeds: name → (B,) values. None when a run records none, or the
    runs' block counts differ."""
    recorded = [block_sums_of(group.run(seed).entry(column)) for seed in seeds]
    if not recorded or any(r is None for r in recorded):
        return None
    names = set.intersection(*(set(r) for r in recorded))
    lengths = {len(r[k]) for r in recorded for k in names}
    if len(lengths) != 1:
        return None
    return {k: [statistics.fmean(vs) for vs in zip(*(r[k] for r in recorded))] for k in names}


def cluster_standard_error(differences: list[float], counts: list[float]) -> tuple[float, float]:
    """The ratio estimator D of a per-token mean difference over B blocks (clusters), and its cluster standard
    error: with d_b a block's summed difference (e.g. NLL sums, nats, of two models on the block's n_b tokens),

        D = Σ_b d_b / Σ_b n_b,    SE = √(B/(B−1) · Σ_b (d_b − D·n_b)²) / Σ_b n_b,

    the linearized (delta-method) variance of a ratio of sums over sampled clusters, B/(B−1) the small-sample
    correction. Blocks, not tokens, are the independent draws: the tokens of a document are correlated.

    Args:
        differences: (B,) d_b per block.
        counts: (B,) n_b per block (tokens; a block with none counts no block).

    Returns:
        (D, SE); SE is NaN for fewer than 2 blocks with tokens, D NaN for no token, both NaN for a NaN input.
    """
    if len(differences) != len(counts):
        raise ValueError(f"{len(differences)} block differences for {len(counts)} block counts")
    pairs = [(d, n) for d, n in zip(differences, counts) if n != 0 or not math.isfinite(d)]
    total = math.fsum(n for _, n in pairs)
    if not total > 0:
        return math.nan, math.nan
    mean = math.fsum(d for d, _ in pairs) / total
    blocks = len(pairs)
    if blocks < 2:
        return mean, math.nan
    spread = math.fsum((d - mean * n) ** 2 for d, n in pairs)
    return mean, math.sqrt(blocks / (blocks - 1) * spread) / total


def text_set_noise(
    group: dict[str, list[float]], baseline: dict[str, list[float]], metric: str, baseline_value: float
) -> float:
    """Two cluster standard errors (:func:`cluster_standard_error`) of ``metric``'s difference group − baseline
    on a text eval set, from the two sides' per-block sums (:data:`~ekd.eval.metrics.BLOCK_SUMS` name → (B,), each
    side's averaged over its seeds), in the metric's own units:

    - ``loss`` (nats/token): d_b = NLL_b(group) − NLL_b(baseline), n_b = tokens_b; noise 2·SE;
    - ``ppl``: the same, times ``baseline_value`` (the baseline's ppl): Δppl ≈ ppl·Δloss to first order;
    - ``ppl_no_boundary``: likewise without the end-of-document targets (NLL_b − boundary NLL_b, tokens_b −
      boundary tokens_b);
    - ``acc``: d_b = correct_b(group) − correct_b(baseline); noise 2·SE.

    NaN when a sum it needs is missing, the block counts differ, or the two sides' blocks hold other token
    counts (not one eval set)."""
    if metric == "ppl_no_boundary":
        names, tokens = ("nll", "boundary_nll"), ("tokens", "boundary_tokens")
    elif metric == "acc":
        names, tokens = ("correct",), ("tokens",)
    elif metric in ("ppl", "loss"):
        names, tokens = ("nll",), ("tokens",)
    else:
        return math.nan
    if any(k not in side for k in (*names, *tokens) for side in (group, baseline)):
        return math.nan

    def net(side: dict[str, list[float]], keys: tuple[str, ...]) -> list[float]:  # (B,) first − the rest
        return [v[0] - math.fsum(v[1:]) for v in zip(*(side[k] for k in keys))]

    counts, other_counts = net(baseline, tokens), net(group, tokens)
    a, b = net(group, names), net(baseline, names)
    if len(a) != len(b) or counts != other_counts:
        return math.nan
    _, se = cluster_standard_error([x - y for x, y in zip(a, b)], counts)
    scale = baseline_value if metric.startswith("ppl") else 1.0
    return 2.0 * se * scale


def _unpaired(group: Group, baseline: Group, key: str, seeds: list[int]) -> dict[int, str]:
    """seed → why ``group``'s run of the seed cannot be paired with ``baseline``'s on ``key`` (only the seeds
    that cannot; ``seeds``: those ``group`` has a value for)."""
    column, _, metric = key.rpartition("/")
    if not column or not _scored_set(column):
        return {}  # cost columns: no eval set to match
    out = {}
    for seed in seeds:
        base = next((r for r in baseline.runs if r.seed == seed), None)
        run = group.run(seed)
        name = run.entry_name(column)
        if base is None or name is None or (not base.entry(column) and name not in base.eval):
            continue  # no such seed, or a set the baseline's run did not score: nothing to pair
        if base.entry(column) and metric not in base.entry(column):
            continue  # a figure the baseline does not measure (a ce run's KL: try-out 129, F12, "different teachers")
        if not base.entry(column) or run.eval_set(name) != base.eval_set(name):
            out[seed] = UNPAIRED[0]  # scored another way: in another column
        elif why := run.figure_differs(base, column, metric):  # another teacher; ECE over other bins
            out[seed] = why
    return out


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
            # never a mean over two teachers' figures, nor ECE over two binnings
            values, left_out = g.one_way_values(key)
            diverged = g.not_finite(key)
            if values or diverged:
                mean, std = mean_std(list(values.values()))
                cell = entry["metrics"][key] = {"mean": mean, "std": std, "n": len(values)}
                if diverged:  # the mean is over the others; said in the cell and in every verdict with it
                    cell["not_finite"] = diverged
                other_teacher = [s for s, why in left_out.items() if why == ANOTHER_TEACHER]
                if other_teacher:
                    cell["other_teacher"] = other_teacher
                other_setting = {s: why for s, why in left_out.items() if why != ANOTHER_TEACHER}
                if other_setting:  # seed → 'eval.ece_bins=5'; the mean's own: 'eval.ece_bins=15'
                    cell["other_setting"] = other_setting
                    column, _, metric = key.rpartition("/")
                    kept = g.run(next(iter(values)))
                    cell["setting"] = setting_said(
                        metric, kept.metric_setting(kept.entry_name(column) or column, metric)
                    )
        for b in out["baselines"]:
            if b != g.label:
                entry["vs"][b] = {
                    k: paired_difference(g, by_label[b], k) for k in keys if k in entry["metrics"]
                }
        out["groups"].append(entry)
    out["teacher_notes"] = _other_teacher_notes(out["groups"])
    out["setting_notes"] = _other_setting_notes(out["groups"])
    out["starts"] = _start_rows(groups)
    out["teachers"] = _teacher_rows(groups)
    out["setting_notes"] += _teacher_setting_notes(out["teachers"])
    out["non_finite"] = _non_finite_students(groups)
    # review of session 34, R9: one run that records no arithmetic makes every run compare it as set
    runs = [r for g in groups for r in [*g.runs, *(x for xs in g.replicas.values() for x in xs)]]
    unrecorded = [str(r.run_dir) for r in runs if "train.precision" not in r.ran_as]
    out["arithmetic_as_set"] = unrecorded if 0 < len(unrecorded) < len(runs) else []
    if not out["teachers"] and groups and groups[0].runs:  # try-out 42, F9: no row, and no word why
        first = groups[0].runs[0]
        out["no_teacher"] = _no_teacher_sets(first.config, groups[0].label, first.eval)
    out["set_sizes"] = set_sizes(groups)
    # teacher B/token: measured on disk for a cache run, the fixed-width size of its targets otherwise (try-out 133,
    # F2: one column held 65.3 and 37.7 for the same draws, unexplained)
    sources = {(g.runs[0].config.get("teacher") or {}).get("source", "online") for g in groups if g.runs}
    out["bytes_mixed"] = "cache" in sources and len(sources - {"none"}) > 1
    out["eval_set_columns"] = eval_set_columns(groups)
    out["eval_sets"] = "; ".join(_eval_set_notes(out["eval_set_columns"]))
    out["replicas"] = [
        {"method": g.label, **replica_record(g, seed)} for g in groups for seed in sorted(g.replicas)
    ]
    out["replica_notes"] = [replica_note(r) for r in out["replicas"]]
    return out


def set_sizes(groups: list[Group]) -> dict[str, list[int]]:
    """Text-set column → [documents, scored tokens], as the first run that records both has them (every run in a
    column scored the same set: :meth:`~ekd.eval.compare.runs.RunRecord.eval_set` includes both): what marks a tiny
    set under the table as ``ekd distill``'s does (try-out 89, F1: compare gave verdicts on a 1-document set
    unmarked)."""
    sizes: dict[str, list[int]] = {}
    for g in groups:
        for r in g.runs:
            for column in r.column_names():
                entry = r.entry(column)
                if column in sizes or not _text_set(column) or not {"documents", "tokens"} <= entry.keys():
                    continue
                if all(
                    isinstance(entry[k], (int, float)) and math.isfinite(entry[k])
                    for k in ("documents", "tokens")
                ):
                    sizes[column] = [int(entry["documents"]), int(entry["tokens"])]
    return sizes


def _other_teacher_notes(groups: list[dict[str, Any]]) -> list[str]:
    """One line per group whose KL or agreement means left seeds out, measured against another teacher than the
    group's (:meth:`Group.one_way_values`): '`kd`: seed 0 measured against another teacher on `eval`, `held`,
    left out of their KL and agreement (n=2 of 3)'."""
    notes = []
    for g in groups:
        said: dict[
            tuple[tuple[int, ...], int, int], list[str]
        ] = {}  # (seeds left out, n, not finite) → columns
        for key, cell in g["metrics"].items():
            if cell.get("other_teacher"):
                nan = len(cell.get("not_finite") or ())
                columns = said.setdefault((tuple(sorted(cell["other_teacher"])), cell["n"], nan), [])
                if (column := key.rpartition("/")[0]) not in columns:
                    columns.append(column)
        for (seeds, n, nan), columns in said.items():
            which = f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))}"
            # every seed counted: the mean's, those left out, those not finite (try-out 160, F11: "n=0 of 1")
            of = f"n={n} of {n + len(seeds) + nan}" + (f", {nan} not finite" if nan else "")
            notes.append(
                f"`{g['method']}`: {which} measured against another teacher on "
                f"{', '.join(f'`{c}`' for c in columns)}, left out of their KL and agreement ({of})"
            )
    return notes


def _other_setting_notes(groups: list[dict[str, Any]]) -> list[str]:
    """One line per group figure whose mean left seeds out, scored with another value of the setting the figure
    alone reads (:meth:`Group.one_way_values`): '`kd`: ECE % on `eval` is over the seeds scored with
    eval.ece_bins=15 (n=2 of 3); seed 1 (eval.ece_bins=5) left out'."""
    return [
        _setting_note(g["method"], key, cell["setting"], cell["n"], cell["other_setting"])
        for g in groups
        for key, cell in g["metrics"].items()
        if cell.get("other_setting")
    ]


def _teacher_setting_notes(rows: list[dict[str, Any]]) -> list[str]:
    """:func:`_other_setting_notes` for the teacher rows (:func:`_teacher_rows`' ``other_setting``)."""
    return [
        _setting_note(row["label"], key, left["setting"], row["n"].get(key, 0), left["seeds"])
        for row in rows
        for key, left in (row.get("other_setting") or {}).items()
    ]


def _setting_note(label: str, key: str, setting: str, n: int, left_out: dict[int, str]) -> str:
    """'`kd`: ECE % on `eval` is over the seeds scored with eval.ece_bins=15 (n=1 of 2); seed 1 (eval.ece_bins=10)
    left out' for figure ``key`` of row ``label``, its mean over ``n`` seeds, ``left_out`` seed → its setting."""
    column, _, metric = key.rpartition("/")
    header = METRIC_INFO[metric].header if metric in METRIC_INFO else metric
    others = ", ".join(f"seed {s} ({why})" for s, why in sorted(left_out.items()))
    return (
        f"`{label}`: {header} on `{column}` is over the seeds scored with {setting} "
        f"(n={n} of {n + len(left_out)}); {others} left out"
    )


def _start_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """Rows of the starting students' eval-set figures (eval.json's ``student_init``, ``eval.student_init``): what
    training moved each method from. Groups whose runs started from the same students — equal figures at every
    seed and column both have, one at least — share a row: ``(student init)`` when all do, else
    ``(student init of kd, sekd)``. Each figure is the mean over the seeds of its column (a preset student is built
    from the seed: one start per seed), with ``n`` and ``spread`` (std) as the teacher rows have; ECE over the
    bins most of those seeds were scored with; none for a set whose runs record no start (an older ekd's,
    ``eval.student_init=false``)."""
    rows: list[dict[str, Any]] = []
    for g in groups:
        values: dict[str, dict[int, tuple[float, Any]]] = {}  # key → seed → (figure, its setting)
        for r in g.runs:
            for column in r.column_names():
                entry = r.entry_name(column)
                figures = r.starts.get(entry or "") if _text_set(column) or _task_entry(column) else None
                # KL and agreement over the seeds measured against the group's teacher, as its own row's
                # (try-out 122, F3: a float32 and a bfloat16 teacher's in one mean)
                apart = figures and r.seed in g.teacher_seeds(column)[1]
                for m, v in (figures or {}).items():
                    if m not in METRICS or not isinstance(v, (int, float)) or not math.isfinite(v):
                        continue
                    if apart and m.split("@")[0] in TEACHER_RELATIVE:
                        continue
                    if m == "ppl_no_boundary" and figures.get("boundary_tokens") == 0:  # it would repeat ppl
                        continue
                    setting = r.metric_setting(entry, m) if m in METRIC_SETTINGS else None
                    values.setdefault(f"{column}/{m}", {})[r.seed] = (float(v), setting)
        if not values:
            continue
        same = next((row for row in rows if _same_starts(row["values"], values)), None)
        if same is None:
            rows.append({"of": [g.label], "values": values})
        else:
            same["of"].append(g.label)
            for k, seeds in values.items():
                same["values"].setdefault(k, {}).update(seeds)
    for row in rows:
        row["label"] = "(student init)" if len(rows) == 1 else f"(student init of {', '.join(row['of'])})"
        per_seed: dict[str, list[float]] = {}
        for k, seeds in row.pop("values").items():
            ref = most_common([setting for _, setting in seeds.values()])
            per_seed[k] = [v for _, (v, setting) in sorted(seeds.items()) if setting == ref]
        row.update(_over_seeds(per_seed))
    return rows


def _over_seeds(per_seed: dict[str, list[float]]) -> dict[str, dict[str, Any]]:
    """A teacher or starting-student row's figures from one value per seed (key → values): ``metrics`` (their
    mean), ``n`` (how many seeds) and ``spread`` (std, n) where the seeds differ."""
    return {
        "metrics": {k: statistics.fmean(vs) for k, vs in per_seed.items()},
        "n": {k: len(vs) for k, vs in per_seed.items()},
        "spread": {
            k: {"std": statistics.stdev(vs), "n": len(vs)} for k, vs in per_seed.items() if len(set(vs)) > 1
        },
    }


def _same_starts(a: dict[str, dict[int, Any]], b: dict[str, dict[int, Any]]) -> bool:
    """Whether two groups' starting figures (key → seed → (figure, setting)) are those of the same students: equal
    wherever both have a figure, and both have one somewhere."""
    shared = [(k, seed) for k in a.keys() & b.keys() for seed in a[k].keys() & b[k].keys()]
    return bool(shared) and all(a[k][seed] == b[k][seed] for k, seed in shared)


def _teacher_rows(groups: list[Group]) -> list[dict[str, Any]]:
    """One row per distinct teacher (:meth:`RunRecord.teacher`; the runs' ``<set>/teacher`` metrics): the
    teacher, the groups it taught, its metrics — the mean over the seeds of a column (each seed's the mean of its
    runs': every method's run of a seed scores the same teacher alike), with ``spread`` (std, n) where seeds
    differ (a few-shot task's examples are drawn per seed), ``n`` the seeds of each figure — and a label:
    '(teacher)' when there is one, else '(teacher of kd, ...)'. Its figures on a set go to the set's column
    (:func:`label_eval_sets`): the same teacher on a set scored two ways has a figure in each column, told apart
    by the column, not by a second row of one label (try-out 29: two rows '(teacher of kd)'); a run with one set
    more than the others adds that set's figures. ``without_sets``: why its runs have no figures of it on a text
    eval set (only its downstream tasks), from their configs."""
    rows: list[dict[str, Any]] = []
    for g in groups:
        for r in g.runs:
            columns = [c for c in r.column_names() if c.endswith("/teacher") and r.entry(c)]
            for c in columns:  # each column's figures under the teacher it recorded (try-out 39)
                key = r.teacher(c)
                row = next((row for row in rows if row["key"].same_as(key)), None)
                # the teacher the entry records it was measured with (try-out 47: the config's)
                if row is None:
                    recorded = r.teachers.get(r.entry_name(c) or "") or {}
                    teacher = recorded.get("model") or (r.config.get("model") or {}).get("teacher")
                    row = {"key": key, "teacher": teacher, "of": [], "values": {}, "runs": [], "settings": {}}
                    rows.append(row)
                no_boundary = r.entry(c[: -len("/teacher")]).get("boundary_tokens") == 0  # separator=none
                for m, v in r.entry(c).items():
                    if m in METRICS and not (m == "ppl_no_boundary" and no_boundary):  # it would repeat ppl
                        row["values"].setdefault(f"{set_of(c)}/{m}", {}).setdefault(r.seed, []).append(v)
                        if m in METRIC_SETTINGS:  # the teacher's ECE: scored with its set's bins
                            setting = r.metric_setting(r.entry_name(c) or c, m)
                            row["settings"].setdefault(f"{set_of(c)}/{m}", []).append((r.seed, v, setting))
                if g.label not in row["of"]:
                    row["of"].append(g.label)
                row["runs"].append((r.config, g.label, r.eval))
    labels = ["(teacher)" if len(rows) == 1 else f"(teacher of {', '.join(row['of'])})" for row in rows]
    keys = [row.pop("key") for row in rows]
    # two teachers of one method (try-out 47; try-out 55, F3: also where the rows name other methods too,
    # '(teacher of kd, sekd)' and '(teacher of kd)'): told apart by weights or path, and by the dtype they ran in
    # where that alone differs (try-out 116, F6: two rows labelled alike)
    which = [
        f"weights {k.weights.rpartition(':')[2][:8]}" if k.weights else str(row["teacher"])
        for row, k in zip(rows, keys)
    ]
    which = [f"{w}, {k.dtype or 'auto'}" if which.count(w) > 1 else w for w, k in zip(which, keys)]
    for row, label, told in zip(rows, labels, which):
        if any(set(row["of"]) & set(other["of"]) for other in rows if other is not row):
            label = f"{label[:-1]}: {told})"
        row["label"] = label
        runs = row.pop("runs")
        # ECE over the bins most of its runs used (try-out 55, F10), the seeds left out named (try-out 59, F2)
        for k, scored in row.pop("settings").items():
            ref = most_common([setting for _, _, setting in scored])
            row["values"][k] = {}
            for seed, v, setting in scored:
                if setting == ref:
                    row["values"][k].setdefault(seed, []).append(v)
            other = {
                seed: setting
                for seed, _, setting in scored
                if setting != ref and seed not in row["values"][k]
            }
            if other:
                metric = k.rpartition("/")[2]
                row.setdefault("other_setting", {})[k] = {
                    "setting": setting_said(metric, ref),
                    "seeds": {seed: setting_said(metric, setting) for seed, setting in sorted(other.items())},
                }
        # one figure per seed (try-out 39: seeds with more methods counted more); a few-shot task draws its
        # examples per seed (try-out 38: the row showed the first seed's teacher beside a mean)
        per_seed = {k: _seed_figures(seeds) for k, seeds in row.pop("values").items()}
        # a figure no seed has (a generation task's MC-ECE; every figure of a NaN teacher) is left out
        per_seed = {k: vs for k, vs in per_seed.items() if vs}
        if not any(_text_set(k.rpartition("/")[0]) for k in per_seed):  # its downstream tasks only, or NaN
            row["without_sets"] = _no_teacher_sets(*runs[0])
        row.update(_over_seeds(per_seed))
    return rows


def _seed_figures(seeds: dict[int, list[Any]]) -> list[float]:
    """One teacher figure per seed from its runs' (every method's run of a seed scores the same teacher alike):
    the value itself where they agree — their mean would round, and seeds with 3 and 2 runs then 'differ' by
    1e-16, a spread of ± 0.00 (try-out 55, F2) — else their mean; a seed without a figure (null or NaN: a
    generation task has no MC-ECE) has none (try-out 55, F7: NaN ≠ NaN made a 'spread' whose stdev raised)."""
    out = []
    for values in seeds.values():
        kept = [float(v) for v in values if v is not None and not math.isnan(v)]
        if kept:
            out.append(kept[0] if len(set(kept)) == 1 else statistics.fmean(kept))
    return out


def _non_finite_students(groups: list[Any]) -> list[str]:
    """``"`kd` seed 0 on `held`"``: each run whose student figures of a text eval set are NaN (its logits not
    finite at some scored position), which the tables show as '—' as if not evaluated (try-out 117, F3); and
    ``"`kd` seed 0's starting student on `held`"`` for the starting students' figures (eval.json's
    ``student_init``), which the ``(student init)`` row leaves out."""
    out = []
    for g in groups:
        for r in g.runs:
            for name in sorted(
                n for n, m in r.eval.items() if _text_set(n) and math.isnan(m.get("loss", 0.0))
            ):
                out.append(f"`{g.label}` seed {r.seed} on `{name}`")
            for replica in g.replicas.get(r.seed, []):  # review 128, R4: a replica that diverged, named too
                sets = [n for n, m in replica.eval.items() if _text_set(n) and math.isnan(m.get("loss", 0.0))]
                out += [
                    f"`{g.label}` seed {r.seed}'s replica {replica.run_dir} on `{n}`" for n in sorted(sets)
                ]
            starts = [n for n, m in r.starts.items() if _text_set(n) and math.isnan(m.get("loss", 0.0))]
            out += [f"`{g.label}` seed {r.seed}'s starting student on `{name}`" for name in sorted(starts)]
    return out


def _no_teacher_sets(
    config: dict[str, Any], method: str, evals: dict[str, dict[str, float]] | None = None
) -> dict[str, str]:
    """Why a run's eval.json has no teacher figures on its text eval sets, from its ``config.yaml``:
    ``{"switch": key}``, the switch that turned them off (``ekd eval RUN <key>=true`` adds them), else
    ``{"reason": text}``, the rule of :func:`ekd.train.prepare.evaluates_teacher` (a ``preset:`` teacher is random,
    rebuilt for evaluation only by a method that trains with it; try-out 39: a ``ce`` run was said to have
    ``eval.teacher_metrics=false``, and following the advice added nothing). ``evals``: the run's eval entries,
    whose teacher rows may hold NaN figures (a teacher whose logits are not finite: try-out 116, F4 — that run
    was said to have turned them off)."""
    from ekd.config.load import config_from_dict
    from ekd.train.prepare import evaluates_teacher

    for name, metrics in (evals or {}).items():
        if (
            name.endswith("/teacher")
            and _text_set(name.rpartition("/")[0])
            and math.isnan(metrics.get("loss", 0.0))
        ):
            return {
                "reason": "they are NaN: the teacher's logits are not finite (NaN or +inf) at some scored position; "
                "check its weights (and a 16-bit model.teacher_dtype)"
            }

    evaluation = config.get("eval") or {}
    for key in ("teacher", "teacher_metrics"):
        if evaluation.get(key) is False:
            return {"switch": f"eval.{key}"}
    try:
        evaluated = evaluates_teacher(config_from_dict(config))
    except (ConfigError, ValueError, TypeError):  # a config an older or newer ekd wrote: no rule to apply
        evaluated = True
    if not evaluated:
        return {"reason": f"`{method}` evaluates without its teacher: a random `preset:` teacher, or none"}
    return {"switch": "eval.teacher_metrics"}  # an ekd that recorded no switch turned them off so
