"""``ekd compare``'s verdict on a downstream task's score: a difference its n items cannot resolve is "within item
noise", however many seeds agree (they are all scored on the same items)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from ekd.eval.compare import compare_runs


def _run(
    root: Path, name: str, preset: str, seed: int, scores: dict[str, float], n: int, identified: bool
) -> Path:
    """A finished run whose eval.json holds a tasks section as ``ekd eval --tasks`` writes it (``identified``:
    each result records its task's identity, as today; else as an older ekd wrote it)."""
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(
        yaml.safe_dump({"run": {"name": name, "seed": seed}, "method": {"preset": preset}})
    )
    student = {t: {"value": v, "ece": 5.0, "n": n} for t, v in scores.items()}
    for t in student if identified else ():
        student[t]["documents_sha256"] = f"{t}-data"
    section = {
        "settings": {"limit": 0, "num_fewshot": -1, "tasks": list(scores), "tasks_dir": "", "seed": seed},
        "tags": {t: "in_distribution" for t in scores},
        "student": student,
        "summary": {
            "student": {"mean": {"in_distribution": sum(scores.values()) / len(scores)}, "mc_ece": {}}
        },
    }
    (d / "eval.json").write_text(json.dumps({"eval": {"ppl": 10.0}, "tasks": section}))
    return d


@pytest.mark.parametrize("identified", [True, False], ids=["today", "older-ekd"])
def test_a_difference_of_a_few_items_is_within_item_noise_however_the_seeds_agree(tmp_path, identified):
    """Try-out 34: sekd − kd on a 70-item task, +3 and +1 items on two seeds, was 'better' (+0.0286 ± 0.0202);
    two standard errors of a difference of two accuracies near 0.32 on 70 items are ~0.16. Here +2, +2 and +3
    items on three seeds: the paired t-test over the seeds alone would say better."""
    runs = [
        _run(tmp_path, "kd0", "kd", 0, {"mc": 20 / 70, "big": 0.30}, 70, identified),
        _run(tmp_path, "kd1", "kd", 1, {"mc": 22 / 70, "big": 0.31}, 70, identified),
        _run(tmp_path, "kd2", "kd", 2, {"mc": 21 / 70, "big": 0.32}, 70, identified),
        _run(tmp_path, "se0", "sekd", 0, {"mc": 22 / 70, "big": 0.60}, 70, identified),
        _run(tmp_path, "se1", "sekd", 1, {"mc": 24 / 70, "big": 0.62}, 70, identified),
        _run(tmp_path, "se2", "sekd", 2, {"mc": 24 / 70, "big": 0.61}, 70, identified),
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    vs = next(g for g in s["groups"] if g["method"] == "sekd")["vs"]["kd"]
    mc = vs["task:mc/score"]
    assert mc["mean"] == pytest.approx(7 / 3 / 70) and mc["ci95"] < mc["mean"]  # the seeds alone: better
    a, b = 70 / 3 / 70, 21 / 70
    assert mc["item_noise"] == pytest.approx(2 * math.sqrt((a * (1 - a) + b * (1 - b)) / 70))
    assert mc["verdict"] == "within item noise"
    assert vs["task:big/score"]["verdict"] == "better"  # +0.305 on 70 items is resolved
    tag = vs["tasks[in_distribution]/score"]  # the mean of the two: their noises combined, √(Σ noise²)/2
    assert tag["verdict"] == "better" and tag["item_noise"] < mc["item_noise"]
    assert "within item noise" in (tmp_path / "out" / "compare.md").read_text()
    assert "item_noise" not in vs["eval/ppl"]  # not a proportion on items: no such judgement


def test_the_item_noise_is_over_the_seeds_the_difference_is_over(tmp_path):
    """Try-out 39, F4: kd had a third seed no sekd run pairs; the noise took kd's mean over all three, the
    difference only the two shared seeds, and a verdict flipped with that choice."""
    runs = [
        _run(tmp_path, "kd0", "kd", 0, {"mc": 0.50}, 40, True),
        _run(tmp_path, "kd1", "kd", 1, {"mc": 0.52}, 40, True),
        _run(tmp_path, "kd2", "kd", 2, {"mc": 0.05}, 40, True),  # far from the others: moves kd's mean a lot
        _run(tmp_path, "se0", "sekd", 0, {"mc": 0.80}, 40, True),
        _run(tmp_path, "se1", "sekd", 1, {"mc": 0.83}, 40, True),
    ]
    s = compare_runs(runs, tmp_path / "out", baselines=("kd",), plots=False)
    mc = next(g for g in s["groups"] if g["method"] == "sekd")["vs"]["kd"]["task:mc/score"]
    a, b = (0.80 + 0.83) / 2, (0.50 + 0.52) / 2  # over seeds 0 and 1, as the difference
    assert mc["n"] == 2 and mc["item_noise"] == pytest.approx(2 * math.sqrt((a * (1 - a) + b * (1 - b)) / 40))
