"""Replicas: a group's runs of one seed trained apart (another device layout, a resume). The first given
counts for the seed; :func:`replica_record` and :func:`replica_note` say where the others' layouts differ
and their largest metric difference from it."""

from __future__ import annotations

import math
from typing import Any

from ekd.config import flat_config
from ekd.eval.compare.groups import Group, _value, metric_keys, not_finite
from ekd.eval.compare.runs import METRICS, RunRecord, _scored_set
from ekd.train.run_dir import SAME_RUN_KEYS


def _layout(run: RunRecord) -> dict[str, Any]:
    """How ``run`` was laid out and batched without changing what it trained: the keys of
    :data:`~ekd.train.run_dir.SAME_RUN_KEYS` (parallel engine, offload, teacher placement, micro-batch split,
    the same math in another summation order, checkpointing, eval batching) and the ranks it ran on — every
    segment's, in order ('2 then 1'), and the micro-batch and engine likewise, where a resume changed them and the
    run records them all."""
    flat = flat_config(run.config)
    layout = {k: flat.get(k) for k in SAME_RUN_KEYS}
    layout["ranks"] = run.ranks or 1  # a run of an older ekd records none: one process
    segments = run.segments or []
    # resumed on other ranks, engine or micro-batch split (try-out 39, F8: the micro-batch was the last segment's)
    for key, name in (
        ("ranks", "ranks"),
        ("parallel", "train.parallel"),
        ("micro_batch_size", "train.micro_batch_size"),
    ):
        values = [s.get(key) for s in segments]
        if None not in values and len(set(map(str, values))) > 1:  # older segments record no micro-batch
            layout[name] = " then ".join(map(str, values))  # e.g. '2 then 1', 'fsdp then ddp'
    return layout


def _content_keys(run: RunRecord) -> dict[str, Any]:
    """The config keys of ``run`` that say where its models and data were read from and in what form, which
    ``ekd compare`` groups by content (training blocks, weights) rather than by value: a replica may differ there
    with the same training (``data.source``, ``data.format``, ``model.teacher``, ...); ``run.*``, ``log.*`` and
    :data:`~ekd.train.run_dir.SAME_RUN_KEYS` are not among them."""
    flat = flat_config(run.config)
    return {
        k: v
        for k, v in flat.items()
        if k.startswith(("data.", "model.", "teacher.")) and k not in SAME_RUN_KEYS
    }


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
        if _scored_set(c) and n in counted_columns and counted_columns[n] != c
    ]
    compared = 0  # eval figures (``<column>/<metric>``) both runs scored alike
    alone: list[dict[str, Any]] = []  # eval figures one run of the pair has and the other does not
    counted_config = _content_keys(counted_run)
    for r in group.replicas[seed]:
        mine, config = _layout(r), _content_keys(r)
        # where its files were read from (try-out 88, F2: a JSONL copy of the text read as 'a resume or a rerun')
        read_from = [
            f"{k}={config.get(k)!r} (vs {counted_config.get(k)!r})"
            for k in sorted(config.keys() | counted_config.keys())
            if config.get(k) != counted_config.get(k)
        ]
        replicas.append(
            {
                "run": str(r.run_dir),
                "differs_in": [f"{k}={mine[k]!r} (vs {base[k]!r})" for k in base if mine[k] != base[k]]
                + read_from,
            }
        )
        for key in keys:
            a, b = _value(counted_run, key), _value(r, key)
            column, _, metric = key.rpartition("/")
            scored = bool(column) and all(metric in x.entry(column) for x in (counted_run, r))
            diverged = scored and not_finite(counted_run, key) != not_finite(r, key)  # review 128, R4
            unknown = not column and (a is None) != (b is None)  # a cost one run has (try-out 129, F2)
            if diverged or unknown:  # they read "identical metrics"
                if diverged:
                    a, b = (math.nan if not_finite(x, key) else _value(x, key) for x in (counted_run, r))
                largest = {"key": key, "counted": a, "replica": b, "abs": math.inf, "relative": math.inf}
                largest["run"] = str(r.run_dir)
                compared += bool(column)
                continue
            lacking = r if b is None else counted_run
            # it scored the set, not this figure
            if column and (a is None) != (b is None) and lacking.entry(column):
                # a figure one run measured alone (the other evaluated without its teacher: try-out 127, F11 —
                # the replica's KL was shown nowhere, the note read "identical metrics")
                value, holder = (a, counted_run) if b is None else (b, r)
                alone.append({"key": key, "run": str(holder.run_dir), "value": value})
                continue
            if a is None or b is None or (column and r.figure_differs(counted_run, column, metric)):
                continue  # a figure against another teacher, ECE over other bins: no training difference
            compared += "/" in key
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
        "eval_figures_compared": compared,
        "measured_alone": alone,
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
    elif math.isinf(big["abs"]):  # one side's figure is not finite (its student diverged)
        # an eval figure; a cost (KD share, bytes/token)
        gone = "not finite" if "/" in big["key"] else "unknown"
        said = [gone if v is None or math.isnan(v) else f"{v:.10g}" for v in (big["counted"], big["replica"])]
        agree = f"largest difference {big['key']} {said[0]} vs {said[1]} ({big['run']})"
    else:
        agree = (
            f"largest difference {big['key']} {big['counted']:.10g} vs {big['replica']:.10g} "
            f"(|Δ| {big['abs']:.2g}, {big['relative']:.2g} relative, {big['run']})"
        )
    # try-out 31: "identical" over no eval figure
    if otherwise and not record.get("eval_figures_compared", 1):
        agree = agree.replace("metrics", "training figures") + (
            f"; no eval figure compared ({', '.join(otherwise)} scored another way)"
        )
    elif otherwise:  # the eval sets themselves differ there: not a difference between the trainings
        agree += f" where scored alike ({', '.join(otherwise)} scored another way, not compared)"
    if alone := record.get("measured_alone"):
        shown = [f"{x['key']} {x['value']:.4g} ({x['run']})" for x in alone[:3]]
        more = f" and {len(alone) - 3} more" if len(alone) > 3 else ""
        agree += f"; measured by one run alone, not compared: {', '.join(shown)}{more}"
    return (
        f"`{record['method']}` seed {record['seed']}: {record['counted']} counts; replicas {others}: {agree}"
    )
