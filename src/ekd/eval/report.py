"""The run report: markdown results tables, reliability diagrams and metric bar charts, ``report.md``.

Plots use matplotlib's Agg canvas directly (no pyplot): no global figure state, no display needed, and the
user's chosen backend is left alone. Every file is written atomically (temp file in the same directory, then
``os.replace``), so an interrupted write never leaves a half-written report or plot.
"""

from __future__ import annotations

import contextlib
import glob
import math
import os
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from ekd.eval.metrics import expected_calibration_error
from ekd.io import make_dirs, writing
from ekd.words import counted

Column = tuple[str, str, str | Callable[[Any], str]]
"""(key, header, format): a format spec such as ``".3f"``, or a callable value → text."""


def ppl_note(columns: Sequence[Column], boundary: bool = True) -> str:
    """The line under a results table that says which perplexity its ``ppl`` columns are, explaining only the
    columns it has: the 'ppl w/o EOS' sentence only beside a ``ppl_no_boundary`` column; "" without a ``ppl``
    column. Keys may carry an eval-set prefix (``eval/ppl``). ``boundary``: whether any set holds an
    end-of-document target (not under ``data.separator=none``)."""
    metrics = {key.rpartition("/")[2] for key, _, _ in columns}
    if "ppl" not in metrics:
        return ""
    if not boundary:  # data.separator=none, chat rows: no end-of-document target to include or leave out
        note = (  # try-out 68, F3: read as "EOS is never a target"; try-out 71, F4: a set's one EOS unscored
            "ppl is over every target (no end-of-document token between documents is among these sets' scored "
            "targets; an EOS the text holds itself, such as the end of an assistant turn, is an ordinary target)"
        )
    else:
        note = "ppl is over every target, the end-of-document tokens (EOS) included"
    if "ppl_no_boundary" in metrics and boundary:
        note += "; 'ppl w/o EOS' (eval key ppl_no_boundary) leaves those out"
    if "ppl_full_head" in metrics:
        note += (
            "; 'ppl (full head)' (ppl_full_head) takes the softmax over every head row, the padded rows past the "
            "tokenizer included, as an outside evaluator of the export does"
        )
    return note + "."


SMALL_EVAL_DOCUMENTS = 5
"""An eval set of fewer documents is marked tiny under results tables: a few texts decide its figures."""
TINY_MARK = "†"


def tiny_sets(sizes: dict[str, tuple[int, int]]) -> list[str]:
    """The eval sets of ``sizes`` (name → (documents, scored tokens)) under ``SMALL_EVAL_DOCUMENTS`` documents."""
    return [name for name, (documents, _) in sizes.items() if documents < SMALL_EVAL_DOCUMENTS]


def tiny_note(sizes: dict[str, tuple[int, int]]) -> str:
    """The sentence under a table that says what the mark of a tiny eval set means; "" when none is tiny."""
    if not tiny_sets(sizes):
        return ""
    return (
        f"{TINY_MARK} tiny (under {counted(SMALL_EVAL_DOCUMENTS, 'document')}): its figures describe those few "
        "texts, not the held-out distribution; differences between models there are weak evidence (a longer set "
        "scores more of its documents with a larger data.max_eval_blocks)."
    )


def sizes_note(sizes: dict[str, tuple[int, int]], labels: dict[str, str] | None = None) -> str:
    """The line under a results table with every eval set's documents and scored tokens, tiny ones marked
    (:func:`tiny_note`); ``labels``: display names of some sets. "" without sizes."""
    if not sizes:
        return ""
    mark = set(tiny_sets(sizes))
    parts = [
        f"{(labels or {}).get(name, name)}{TINY_MARK if name in mark else ''}: {counted(docs, 'document')}, "
        f"{tokens:,} tokens"
        for name, (docs, tokens) in sizes.items()
    ]
    note = "Eval sets (documents, scored tokens): " + "; ".join(parts) + "."
    return note + (f" {tiny_note(sizes)}" if mark else "")


def _atomic_write(path: Path, write: Callable[[Any], None], mode: str = "w") -> None:
    """Write ``path`` through ``write(file)`` into a temp file beside it, then rename over ``path``."""
    with writing(path.parent):  # a full or read-only disk: one DiskError line, not a traceback
        make_dirs(path.parent)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with writing(path), os.fdopen(fd, mode, **({"encoding": "utf-8"} if "b" not in mode else {})) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        with writing(path):
            os.chmod(tmp, 0o644)  # mkstemp makes 0600; a report is meant to be read
            os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _remove_stale_temps(path)


STALE_TEMP_S = 60.0
"""A temp file of an atomic write untouched this long was left by a writer killed before it could remove it."""


def _remove_stale_temps(path: Path) -> None:
    """Remove the ``.<name>.*.tmp`` files beside ``path`` that writers killed mid-write left (try-out 36: every
    SIGKILL during a plot or compare.json write left one, and nothing ever removed them); a temp file written in
    the last :data:`STALE_TEMP_S` seconds may be another live writer's and is kept."""
    now = time.time()
    for stale in path.parent.glob(f".{glob.escape(path.name)}.*.tmp"):
        with contextlib.suppress(OSError):  # gone already, or not ours to remove
            if now - stale.stat().st_mtime > STALE_TEMP_S:
                stale.unlink()


def _cell(value: Any, fmt: str | Callable[[Any], str]) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(fmt, str) and fmt.endswith("f") and isinstance(value, float) and abs(value) >= 1e7:
        fmt = ".3e"  # a diverged student's ppl: 7.284e+65, not 66 digits (try-out 75, F1)
    text = fmt(value) if callable(fmt) else format(value, fmt)
    return text.replace("|", "\\|").replace("\n", " ")


def results_table(rows: Sequence[dict[str, Any]], columns: Sequence[Column]) -> str:
    """A markdown table: one line per row dict, one column per (key, header, format).

    Missing keys and NaN show as "—". Columns holding numbers are right-aligned.

    Example:
        ``results_table([{"method": "full_kd", "ppl": 12.3}], [("method", "Method", ""), ("ppl", "PPL", ".2f")])``
    """
    header = "| " + " | ".join(h for _, h, _ in columns) + " |"
    align = []
    for key, _, _ in columns:
        numeric = any(isinstance(r.get(key), (int, float)) and not isinstance(r.get(key), bool) for r in rows)
        align.append("---:" if numeric else "---")
    lines = [header, "| " + " | ".join(align) + " |"]
    for r in rows:
        lines.append("| " + " | ".join(_cell(r.get(key), fmt) for key, _, fmt in columns) + " |")
    return "\n".join(lines) + "\n"


def _figure(width: float = 5.0, height: float = 5.0) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save_png(fig: Any, path: str | Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    _atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")
    return path


def plot_reliability(
    bins: Sequence[tuple[float, float, int, float, float]],
    path: str | Path,
    title: str = "Reliability",
    unit: str = "tokens",
) -> Path:
    """Reliability diagram (PNG): accuracy per confidence bin as bars, the diagonal, ECE in the title.

    Args:
        bins: ``StreamingMetrics.reliability()`` — (lo, hi, count, mean confidence, accuracy) per bin.
        path: output PNG path (parent folders are created).
        title: plot title; " — ECE x.xx%" is appended.
        unit: what the bins count ("tokens"; "docs" for multiple-choice tasks).

    Returns:
        The path written.
    """
    fig = _figure()
    ax = fig.add_subplot(1, 1, 1)
    ece = expected_calibration_error(list(bins))
    n = sum(b[2] for b in bins)
    # a NaN row (a non-finite logit) makes the set's ECE NaN: no bars of the other rows, as if they were the
    # set's (review of session 32: finite bars under a title of 'ECE nan%')
    full = [b for b in bins if b[2] > 0] if math.isfinite(ece) else []
    if n > 0 and not math.isfinite(ece):
        ax.text(
            0.5,
            0.5,
            "not finite: the model's logits are NaN or +inf\nat some scored position",
            ha="center",
            va="center",
            transform=ax.transAxes,
        )
    if full:  # no legend entries for bars not drawn (try-out 116, F3)
        ax.bar(
            [b[0] for b in full],
            [b[4] for b in full],
            width=[b[1] - b[0] for b in full],
            align="edge",
            color="tab:blue",
            edgecolor="black",
            linewidth=0.5,
            label="accuracy",
        )
        ax.bar(
            [b[0] for b in full],
            [b[3] - b[4] for b in full],
            bottom=[b[4] for b in full],
            width=[b[1] - b[0] for b in full],
            align="edge",
            facecolor="none",
            hatch="//",
            edgecolor="tab:red",
            linewidth=0.5,
            label="gap to mean confidence",
        )
    ax.plot([0, 1], [0, 1], linestyle="--", color="gray", label="perfect calibration")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence (top-1)")
    ax.set_ylabel("accuracy")
    ax.legend(loc="upper left", fontsize="small")
    said = f"{ece:.2f}%" if math.isfinite(ece) else "—"
    ax.set_title(f"{title} — ECE {said} ({n:,} {unit})")
    return _save_png(fig, path)


def plot_metric_bars(
    results: dict[str, dict[str, float]], metric: str, path: str | Path, title: str | None = None
) -> Path:
    """One bar per method for one metric (e.g. ``kl`` to the teacher), value printed on each bar.

    Args:
        results: method name → metrics dict; methods without the metric (or NaN) are left out.
        metric: the metrics key to plot.
        path: output PNG path.
        title: plot title (default: the metric name).

    Returns:
        The path written.
    """
    names = [k for k, m in results.items() if metric in m and not math.isnan(float(m[metric]))]
    values = [float(results[k][metric]) for k in names]
    fig = _figure(max(4.0, 0.9 * len(names) + 2.0), 4.0)
    ax = fig.add_subplot(1, 1, 1)
    bars = ax.bar(range(len(names)), values, color="tab:blue")
    ax.bar_label(bars, labels=[f"{v:.4g}" for v in values], fontsize="small")
    ax.set_xticks(range(len(names)), names, rotation=30, ha="right")
    ax.set_ylabel(metric)
    ax.set_title(title or metric)
    return _save_png(fig, path)


def write_report(run_dir: str | Path, title: str, sections: Sequence[tuple[str, str]]) -> Path:
    """Write ``run_dir/report.md`` atomically: "# title", then "## heading" + markdown per section.

    Returns:
        The path written.
    """
    parts = [f"# {title}\n"]
    for heading, body in sections:
        parts.append(f"## {heading}\n\n{body.rstrip()}\n")
    text = "\n".join(parts)
    path = Path(run_dir) / "report.md"
    _atomic_write(path, lambda f: f.write(text))
    return path
