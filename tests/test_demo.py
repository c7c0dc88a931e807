"""`ekd demo` end to end on a tiny budget: builtin corpus, tokenizer, teacher pre-training (cached), students,
report. The real budgets are measured with GNU time (README)."""

from __future__ import annotations

import json

import pytest

from ekd.cli import main
from ekd.demo import DemoBudget, run_demo

TINY = DemoBudget(
    max_chars=60_000,
    bpe_vocab=300,
    block_length=32,
    teacher_steps=15,
    student_steps=4,
    student_pretrain_steps=6,
    micro_batch=4,
    max_eval_blocks=2,
    task_items=(12, 4),
)


@pytest.mark.slow
def test_demo_runs_end_to_end_and_reuses_the_teacher(tmp_path, capsys):
    rows = run_demo(tmp_path / "demo", methods=["ce", "kd", "sekd", "sekd3x"], budget=TINY)
    assert [r["method"] for r in rows] == ["ce", "kd", "sekd", "sekd3x"]
    assert 0 < rows[3]["bytes_per_token"] < 64  # measured on the demo's RS cache
    for r in rows:
        assert r["eval/ppl"] > 1 and "eval/kl" in r  # KL to the teacher is reported for ce too
    assert rows[0]["kd_pct"] == 0 and rows[1]["kd_pct"] == pytest.approx(100.0)
    assert 0 < rows[2]["kd_pct"] < 40  # sekd: top 20% per sequence
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| method |" in report and "sekd" in report and "(teacher)" in report
    assert any((tmp_path / "demo" / "plots").glob("*.png"))
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results[0]["method"] == "ce"
    out = capsys.readouterr().out
    assert "pre-trained" in out
    # downstream tasks: every student has them; the teacher's and initial student's are computed once
    assert "Downstream tasks" in report and "name choice acc" in report and "(student init)" in report
    for r in rows:
        tasks = json.loads((tmp_path / "demo" / "runs" / r["run"] / "eval.json").read_text())["tasks"]
        assert set(tasks["student"]) == {"stdlib_name_choice", "stdlib_name_complete"}
        assert tasks["student"]["stdlib_name_choice"]["n"] == 12
        assert (
            tasks["teacher"]
            == json.loads((tmp_path / "demo" / "runs" / "ce" / "eval.json").read_text())["tasks"]["teacher"]
        )
    cached = tmp_path / "demo" / "tasks-cache" / "teacher.json"
    stamp = (tmp_path / "demo" / "teacher" / "ekd_demo.json").stat().st_mtime_ns
    task_stamp = cached.stat().st_mtime_ns
    run_demo(tmp_path / "demo", methods=["ce"], budget=TINY)
    assert "reusing" in capsys.readouterr().out
    assert (tmp_path / "demo" / "teacher" / "ekd_demo.json").stat().st_mtime_ns == stamp
    assert cached.stat().st_mtime_ns == task_stamp  # the teacher's task results were not recomputed


def test_demo_rejects_an_unknown_method(tmp_path, capsys):
    assert main(["demo", "--methods", "kd,sekdd", "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err
    assert "sekdd" in err and "did you mean 'sekd'" in err


@pytest.mark.slow
def test_demo_seeds_compare_and_claims(tmp_path, capsys):
    """Pre-trained student (default protocol), 2 seeds, the compare table and one claims row per claim."""
    import yaml

    methods = ["kd", "sekd", "rskd", "egad", "egad_nocurriculum"]
    rows = run_demo(tmp_path / "demo", methods=methods, budget=TINY, seeds=2, tasks=False)
    assert [(r["method"], r["seed"]) for r in rows][:2] == [("kd", 0), ("sekd", 0)] and len(rows) == 10
    out = capsys.readouterr().out
    assert "pre-trained with CE" in out and "distilling: kd-s1" in out
    init = tmp_path / "demo" / "student-init"
    saved = yaml.safe_load((tmp_path / "demo" / "runs" / "kd-s1" / "config.yaml").read_text())
    assert (init / "config.json").is_file() and saved["model"]["student"] == str(init)
    assert saved["run"]["seed"] == 1
    summary = json.loads((tmp_path / "demo" / "compare" / "compare.json").read_text())
    by = {g["method"]: g for g in summary["groups"]}
    assert by["kd"]["seeds"] == [0, 1] and by["kd"]["metrics"]["eval/ppl"]["n"] == 2
    claims = json.loads((tmp_path / "demo" / "claims.json").read_text())
    assert len(claims) == 6 and all(c["verdict"] for c in claims)
    verdicts = {c["claim"].split(":")[0]: c["verdict"] for c in claims}
    assert verdicts["AdaKD (LATF + IDTS) better than its base divergence (reverse KL) alone"] == "not run"
    assert not any(
        c["verdict"] == "not run" for c in claims if c["claim"].startswith(("RS-KD", "SE-KD", "EGAD"))
    )
    report = (tmp_path / "demo" / "report.md").read_text()
    assert (
        "The papers' claims on this run" in report and "Over seeds" in report and "CE-pre-trained" in report
    )
