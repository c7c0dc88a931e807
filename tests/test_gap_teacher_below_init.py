"""The gap closed, (student − init)/(teacher − init), "0 = no better than the initial student, 1 = the teacher"
(docs/evaluation.md), has no gap to close where the teacher scores below the initial student: n/a with that
reason, never a ratio (try-out 45, F5: a student that lost 18 of 60 items read 1.059)."""

from __future__ import annotations

import math

import pytest

from ekd.eval import task_metrics as tm


def _results(values: dict[str, float], n: int = 60) -> dict:
    return {
        t: {"value": v, "ece": math.nan, "n": n, "metric": "acc", "wall_s": 0.1} for t, v in values.items()
    }


def test_a_teacher_below_the_initial_student_gives_no_gap_closed():
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section, tasks_markdown

    assert math.isnan(tm.gap_closed(0.0, 1 / 60, 0.3))  # was (0 − 0.3)/(0.0167 − 0.3) = 1.059
    assert tm.gap_closed(0.7, 1.0, 0.4667) == pytest.approx((0.7 - 0.4667) / (1.0 - 0.4667))
    assert tm.teacher_not_better(1 / 60, 0.3) and not tm.teacher_not_better(0.9, 0.3)
    assert not tm.teacher_not_better(2.0, 9.0)  # not a proportion: its better direction is unknown
    section = task_section(
        {
            "student": _results({"syn_mc": 0.7, "syn_ds": 0.0}),
            "teacher": _results({"syn_mc": 1.0, "syn_ds": 1 / 60}),
            "student_init": _results({"syn_mc": 0.4667, "syn_ds": 0.3}),
        },
        TaskSettings(tasks=("syn_mc", "syn_ds")),
        {},
    )
    assert section["gap_closed"]["syn_ds"] is None and section["gap_teacher_below_init"] == ["syn_ds"]
    assert section["gap_closed"]["syn_mc"] == pytest.approx(0.4375, abs=1e-4)
    # the tag's mean: teacher 0.508 above init 0.383, the student below both: a negative ratio, as it is
    assert section["summary"]["gap_closed"]["in_distribution"] == pytest.approx(
        (0.35 - 0.38335) / (0.50833 - 0.38335), abs=1e-4
    )
    table = tasks_markdown(section)
    assert f"| {tm.GAP_TEACHER_NOT_BETTER} |" in table and "1.059" not in table
    assert tm.GAP_TEACHER_NOT_BETTER in tm.GAP_NOTE
    below = task_section(
        {
            "student": _results({"a": 0.0}),
            "teacher": _results({"a": 0.05}),
            "student_init": _results({"a": 0.5}),
        },
        TaskSettings(tasks=("a",)),
        {},
    )
    assert below["summary"]["gap_teacher_below_init"] == ["in_distribution"]
    assert tasks_markdown(below).count(f"| {tm.GAP_TEACHER_NOT_BETTER} |") == 2  # the task and its tag's mean
