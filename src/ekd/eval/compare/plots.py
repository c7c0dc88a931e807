"""The plots of ``ekd compare``: held-out metrics against teacher bytes per training token with the Pareto
frontier, the groups' reliability diagrams side by side, and KL to the teacher per teacher-entropy bucket."""

from __future__ import annotations

import math
import statistics
from pathlib import Path
from typing import Any

from ekd.eval.compare.groups import Group
from ekd.eval.report import SMALL_EVAL_DOCUMENTS, TINY_MARK, _figure, _save_png
from ekd.words import counted


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
    # CE (0 B/token) drawn at the left edge of the log axis, and labelled so: its x is no cost of 0.1 B (try-out 55,
    # F4); the edge a decade below the cheapest method that reads a teacher
    edge = min([p[0] for p in pts if p[0] > 0] or [1.0]) / 10
    xs = [p[0] if p[0] > 0 else edge for p in pts]
    ax.scatter(xs, [p[1] for p in pts], color="tab:blue")
    for x, (cost, y), label in zip(xs, pts, labels):
        text = label if cost > 0 else f"{label} (0 B: no teacher)"
        ax.annotate(text, (x, y), fontsize="small", xytext=(3, 3), textcoords="offset points")
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
    scored on column ``eval_set`` (:meth:`Group.values`: never over two sets) against the group's teacher there
    (:meth:`Group.teacher_seeds`: never over two teachers); groups without it are left out. A bucket where a seed's
    KL is not finite (its student diverged) has no bar, and the group's label names the seed: never a mean over the
    other seeds under the method's name (review 128, S3; as its cells in compare.md)."""
    series = {}
    for g in groups:
        buckets: dict[int, list[float]] = {}
        diverged: set[int] = set()
        seeds, _ = g.teacher_seeds(eval_set)
        for r in (r for r in g.runs if r.seed in seeds):
            entry = r.entry(eval_set)
            for k, v in entry.items():
                if not k.startswith("kl@H"):
                    continue
                value, scored = math.nan if v is None else float(v), entry.get(f"tokens@H{k[4:]}")
                if math.isfinite(value):
                    buckets.setdefault(int(k[4:]), []).append(value)
                elif isinstance(scored, (int, float)) and scored > 0:
                    # a bucket with tokens: not an empty one
                    buckets.setdefault(int(k[4:]), []).append(value)
                    diverged.add(r.seed)
        if buckets:
            label = g.label + (f" ({_seeds_not_finite(sorted(diverged))})" if diverged else "")
            series[label] = {
                b: statistics.fmean(v) if all(map(math.isfinite, v)) else math.nan for b, v in buckets.items()
            }
    return series


def _seeds_not_finite(seeds: list[int]) -> str:
    """``seed 2 not finite`` / ``seeds 1, 2 not finite``."""
    return f"seed{'s' if len(seeds) > 1 else ''} {', '.join(map(str, seeds))} not finite"


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
    counts = _bucket_tokens(groups, eval_set, nb)  # a bucket of 2 tokens reads as loud as one of 2,000
    ticks = [f"H{b}" + (f"\nn={counts[b]:,}" if b in counts else "") for b in range(nb)]
    ax.set_xticks([b + 0.4 - width / 2 for b in range(nb)], ticks)
    ax.set_xlabel("teacher-entropy bucket (low → high; n = the bucket's scored tokens)")
    ax.set_ylabel("KL(teacher ‖ student)")
    ax.legend(fontsize="x-small", loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars, not on them
    size = summary.get("set_sizes", {}).get(eval_set)  # [documents, tokens]
    tiny = f" ({TINY_MARK} {counted(size[0], 'document')})" if size and size[0] < SMALL_EVAL_DOCUMENTS else ""
    ax.set_title(f"KL by teacher entropy on {eval_set}{tiny}")
    return _save_png(fig, path)


def _bucket_tokens(groups: list[Group], eval_set: str, buckets: int) -> dict[int, int]:
    """Bucket → its scored tokens (``tokens@H<b>``) as the first run recording them has them: the buckets split
    one set by the teacher's entropy, so every run of a column has the same counts (try-out 89, F2)."""
    for g in groups:
        for r in g.runs:
            entry = r.entry(eval_set)
            counts = {b: entry.get(f"tokens@H{b}") for b in range(buckets)}
            if any(isinstance(n, (int, float)) and math.isfinite(n) for n in counts.values()):
                return {
                    b: int(n) for b, n in counts.items() if isinstance(n, (int, float)) and math.isfinite(n)
                }
    return {}
