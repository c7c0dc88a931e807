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
``mean(d) ± std(d)``, and a verdict — a method *beats* the baseline only when the 95% confidence interval of
the mean difference (Student's t over the seeds: a paired t-test) excludes 0 in the metric's better direction;
otherwise "not significant"; one shared seed is "1 seed" (no spread to compare against). A gap smaller than the
eval items resolve (a task's n items; a text set's blocks, from ``block_sums`` in eval.json) is "within item
noise" where the seeds alone would say better, worse or "1 seed".

Outputs (``--out DIR``: new, or an earlier comparison's; :func:`check_out_directory`): ``compare.md``, ``compare.csv``,
``compare.json`` (its ``format`` is ``ekd-compare``) and ``plots/``:
``pareto-<metric>.png`` (held-out KL and perplexity vs teacher bytes per training token, the Pareto
frontier marked), ``reliability.png`` (each group's reliability diagram side by side, from the runs'
``plots/``) and ``kl-by-entropy.png`` (KL to the teacher per teacher-entropy bucket).

- ``runs``      — the metrics reported, :class:`RunRecord` and :func:`read_run`
- ``groups``    — :class:`Group` and :func:`group_runs`: one config at several seeds
- ``eval_sets`` — one column per way an eval set was scored
- ``replicas``  — a seed's runs trained apart, counted once
- ``summary``   — means, spreads and paired differences (``compare.json``)
- ``render``    — ``compare.md`` and ``compare.csv``
- ``plots``     — Pareto, reliability and KL-by-entropy plots
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from ekd.data.text_dir import COMPARE_FORMAT, COMPARE_OUTPUTS, ekd_output_kind, is_comparison
from ekd.errors import EkdError
from ekd.eval.compare.eval_sets import eval_set_columns, label_eval_sets
from ekd.eval.compare.groups import Group, group_runs, metric_keys
from ekd.eval.compare.plots import (
    kl_by_entropy,
    pareto_front,
    plot_kl_by_entropy,
    plot_pareto,
    plot_reliability_grid,
)
from ekd.eval.compare.render import FORMATS, markdown, to_csv
from ekd.eval.compare.replicas import replica_note, replica_record
from ekd.eval.compare.runs import (
    EVAL_SET_KEYS,
    GLOBAL_BATCH_KEY,
    HIGHER_IS_BETTER,
    METRIC_INFO,
    METRICS,
    RUN_KEYS,
    TEACHER_RELATIVE,
    Metric,
    RunRecord,
    measured_rs_unique_ids,
    metric_rows,
    read_run,
)
from ekd.eval.compare.summary import UNPAIRED, mean_std, paired_difference, summarize
from ekd.eval.report import _atomic_write
from ekd.nearest import did_you_mean
from ekd.words import counted


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
    check_out_directory(Path(out))
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
    record = {
        "format": COMPARE_FORMAT,
        **_nan_to_none(summary),
    }  # the format marks the directory as ekd's output
    _atomic_write(out / "compare.json", lambda f: f.write(json.dumps(record, indent=2)))
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
        summary["plots_written"] = [p.name for p in written]  # none without an `eval` set (try-out 116, F7)
    _atomic_write(out / "compare.md", lambda f: f.write(text))
    return summary


def check_out_directory(out: Path) -> None:
    """Refuse an ``--out`` that compare must not write into: a file, a path under a file, or a directory that
    holds anything but an earlier comparison — a corpus directory (the next ``ekd distill`` of it trained on the
    tables: try-out 51, F3), a run directory (its plots mixed with the comparison's), any other data.

    Raises:
        EkdError: one line naming ``out`` and what to give instead.
    """
    above = next((p for p in [out, *out.parents] if p.exists()), None)
    if above is not None and not above.is_dir():
        where = "is a file" if above == out else f"lies under {above}, which is a file"
        raise EkdError(f"ekd compare: --out {out} {where}; name a directory")
    if not out.is_dir() or is_comparison(out):
        return
    others = sorted(
        p.name for p in out.iterdir() if p.name not in COMPARE_OUTPUTS and not p.name.startswith(".")
    )
    if not others:
        return
    shown = ", ".join(others[:3]) + (", …" if len(others) > 3 else "")
    kind = ekd_output_kind(out)
    what = f"is a {kind}" if kind else f"holds {counted(len(others), 'other file')} ({shown})"
    raise EkdError(
        f"ekd compare: --out {out} {what}, not a comparison's directory; name a new directory (or one an earlier "
        "ekd compare wrote), so that nothing else is mixed with its tables and plots"
    )


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
    "EVAL_SET_KEYS",
    "FORMATS",
    "GLOBAL_BATCH_KEY",
    "HIGHER_IS_BETTER",
    "METRICS",
    "METRIC_INFO",
    "RUN_KEYS",
    "TEACHER_RELATIVE",
    "UNPAIRED",
    "Group",
    "Metric",
    "RunRecord",
    "compare_runs",
    "eval_set_columns",
    "group_runs",
    "kl_by_entropy",
    "label_eval_sets",
    "markdown",
    "mean_std",
    "measured_rs_unique_ids",
    "metric_keys",
    "metric_rows",
    "paired_difference",
    "pareto_front",
    "plot_kl_by_entropy",
    "plot_pareto",
    "plot_reliability_grid",
    "read_run",
    "replica_note",
    "replica_record",
    "summarize",
    "to_csv",
]
