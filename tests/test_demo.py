"""`ekd demo` end to end on a tiny budget: builtin corpus, tokenizer, teacher pre-training (cached), students,
report. The real budgets are measured with GNU time (README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ekd.cli import main
from ekd.demo import DemoBudget, run_demo

REPO = Path(__file__).resolve().parents[1]

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
    rows = run_demo(tmp_path / "demo", quick=True, methods=["ce", "kd", "sekd", "sekd3x"], budget=TINY)
    assert [r["method"] for r in rows] == ["ce", "kd", "sekd", "sekd3x"]
    assert 0 < rows[3]["bytes_per_token"] < 64  # measured on the demo's RS cache
    for r in rows:
        assert r["eval/ppl"] > 1 and "eval/kl" in r  # KL to the teacher is reported for ce too
    assert rows[0]["kd_pct"] == 0 and rows[1]["kd_pct"] == pytest.approx(100.0)
    assert 0 < rows[2]["kd_pct"] < 40  # sekd: top 20% per sequence
    report = (tmp_path / "demo" / "report.md").read_text()
    assert "| method |" in report and "sekd" in report and "(teacher)" in report
    assert "--quick is a smoke test of the pipeline" in report  # try-out 21: not read as a ranking
    assert any((tmp_path / "demo" / "plots").glob("*.png"))
    results = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert results[0]["method"] == "ce"
    out = capsys.readouterr().out
    assert "pre-trained" in out and "--quick is a smoke test" in out
    # --quick: the claims its methods cannot check are one line; every eval set's size is printed and reported
    quick_line = (
        "5 of 6 claims not run: this --quick demo trains ce, kd, sekd, sekd3x; the other claims need the methods "
        "of a full `ekd demo`."
    )
    assert quick_line in out and quick_line in report and "| not run |" not in report
    assert "Eval sets (documents, scored tokens): ID (eval)" in out and "1 document, " in report
    assert "w/o EOS" not in report  # the demo table has no such column to explain
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

    methods = ["kd", "sekd", "rskd", "egad", "egad_nocurriculum", "sekd3x"]
    rows = run_demo(tmp_path / "demo", methods=methods, budget=TINY, seeds=2, tasks=False)
    assert [(r["method"], r["seed"]) for r in rows][:2] == [("kd", 0), ("sekd", 0)] and len(rows) == 12
    out = capsys.readouterr().out
    assert "pre-trained with CE" in out and "distilling: kd-s1" in out
    init = tmp_path / "demo" / "student-init"
    saved = yaml.safe_load((tmp_path / "demo" / "runs" / "kd-s1" / "config.yaml").read_text())
    assert (init / "config.json").is_file() and saved["model"]["student"] == str(init)
    assert saved["run"]["seed"] == 1
    summary = json.loads((tmp_path / "demo" / "compare" / "compare.json").read_text())
    by = {g["method"]: g for g in summary["groups"]}
    assert by["kd"]["seeds"] == [0, 1] and by["kd"]["metrics"]["eval/ppl"]["n"] == 2
    # try-out 120: seed 1's cached run stopped at a cache of seed 0's draws; each seed reads its own cache, and
    # ekd compare tells them by the teacher they pin, not by their paths (one method, two seeds)
    assert (tmp_path / "demo" / "cache-s1" / "manifest.json").is_file()
    assert by["sekd3x"]["seeds"] == [0, 1], by["sekd3x"]
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
    assert (
        "| not run |" in report and "--quick demo trains" not in report
    )  # the full demo keeps every claim's row


def test_results_footnotes_explain_only_present_columns_and_mark_a_tiny_eval_set():
    """The demo table has no 'ppl w/o EOS' column, so its footnote does not explain one; each eval set's size
    is printed, and a set of fewer than SMALL_EVAL_DOCUMENTS documents is marked tiny in the headers."""
    from ekd.demo import TINY_MARK, comparison_table
    from ekd.eval.report import ppl_note

    rows = [{"method": "ce", "eval/ppl": 9.5, "shift_a/ppl": 20.0, "shift_b/ppl": 30.0, "eval/kl": 0.4}]
    sizes = {"eval": (1, 1520), "shift_a": (9, 1512), "shift_b": (3, 1518)}
    table = comparison_table(rows, {}, sizes)
    header = table.splitlines()[0]
    assert f"ID ppl{TINY_MARK} |" in header and f"KL(t‖s){TINY_MARK}" in header
    assert f"shift_b ppl{TINY_MARK}" in header and "shift_a ppl |" in header
    assert "w/o EOS" not in table and "ppl is over every target" in table
    assert "ID (eval)†: 1 document, 1,520 tokens" in table
    assert "shift_a: 9 documents, 1,512 tokens" in table and "tiny (under 5 documents)" in table
    assert "†" not in comparison_table(rows, {}, {"eval": (17, 90_000)})
    assert "wall s:" not in table  # no wall-time column value, no caveat
    timed = comparison_table([{**rows[0], "wall_s": 21.0}], {}, sizes)
    assert "wall s: each student's run" in timed and "make bench" in timed  # a wall time says what it is not
    assert "w/o EOS" in ppl_note(
        [("set", "eval set", ""), ("ppl", "ppl", ".2f"), ("ppl_no_boundary", "x", "")]
    )
    assert ppl_note([("method", "method", ""), ("eval/acc", "ID acc", ".3f")]) == ""
    # try-out 53, F6: sets without an end-of-document target (chat rows) still explain 'ppl (full head)'
    full = [("set", "eval set", ""), ("ppl", "ppl", ".2f"), ("ppl_full_head", "ppl (full head)", ".2f")]
    assert ppl_note(full, boundary=False) == (
        "ppl is over every target (no end-of-document token between documents is among these sets' scored "
        "targets; an EOS the text holds itself, such as the end of an assistant turn, is an ordinary target); "
        "'ppl (full head)' (ppl_full_head) takes the softmax over every head row, the padded rows past the tokenizer included, as an outside "
        "evaluator of the export does."
    )


def test_quick_collapses_the_claims_it_cannot_check_into_one_line():
    from ekd.demo import QUICK_METHODS, claims_markdown
    from ekd.eval.claims import Claim

    claims = [
        Claim("RS-KD: ECE ≈ Full KD", "src", "rskd − kd: …", "reproduced (1 seed)"),
        Claim("Top-K renormalized: ECE worse than RS-KD", "src", "", "not run", "missing topk"),
        Claim("AdaKD better", "src", "", "not run", "missing adakd, rkl"),
    ]
    quick = claims_markdown(claims, QUICK_METHODS)
    assert "not run |" not in quick and "RS-KD: ECE ≈ Full KD" in quick
    assert quick.splitlines()[-1] == (
        f"2 of 3 claims not run: this --quick demo trains {', '.join(QUICK_METHODS)}; the other claims need the "
        "methods of a full `ekd demo`."
    )
    full = claims_markdown(claims)  # the full demo keeps one row per claim
    assert full.count("| not run |") == 2 and "--quick" not in full
    marked = claims_markdown(
        claims, QUICK_METHODS, tiny_id=True
    )  # judged on a tiny ID set: the verdicts say so
    assert "| reproduced (1 seed)† |" in marked and "† judged on the tiny ID set" in marked
    assert marked.splitlines()[-1].startswith("2 of 3 claims not run")
    assert "†" not in claims_markdown(claims, QUICK_METHODS)


def test_demo_downstream_gap_closed_is_na_within_noise(tmp_path):
    """A one-item teacher − init gap on 60 items prints n/a, not a ratio of noise."""
    from ekd.demo import downstream_table
    from ekd.eval.stdlib_tasks import NAME_CHOICE
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section

    def results(value: float) -> dict:
        return {NAME_CHOICE: {"value": value, "ece": 20.0, "n": 60, "metric": "acc", "wall_s": 0.5}}

    for run, value in (("ce", 28 / 60), ("kd", 32 / 60)):
        section = task_section(
            {"student": results(value), "teacher": results(31 / 60), "student_init": results(30 / 60)},
            TaskSettings(tasks=(NAME_CHOICE,)),
            {},
        )
        (tmp_path / "runs" / run).mkdir(parents=True)
        (tmp_path / "runs" / run / "eval.json").write_text(json.dumps({"tasks": section}))
    table, _ = downstream_table(tmp_path, [{"method": "ce", "run": "ce"}, {"method": "kd", "run": "kd"}])
    assert table.count("n/a (gap within noise)") == 2 and "-2.00" not in table and "2.00" not in table


@pytest.mark.parametrize("name", ["demo.yaml", "cache-demo.yaml"])
def test_demo_configs_are_the_demo_protocol(name):
    """configs/demo.yaml (and cache-demo.yaml, whose cache must fit it) resolve to what `ekd demo` trains
    each student with: the CE-pre-trained runs/demo/student-init, the FULL budget's data and steps."""
    from ekd.config import load_config
    from ekd.demo import FULL, student_config

    demo = student_config(Path("runs/demo"), FULL, "kd", FULL.student_steps, pretrained=True)
    cfg = load_config([str(REPO / "configs" / name)])
    for key in ("student", "teacher", "tokenizer"):
        assert getattr(cfg.model, key) == getattr(demo.model, key), f"model.{key}"
    assert cfg.data == demo.data and cfg.train == demo.train and cfg.run.seed == demo.run.seed


@pytest.mark.parametrize("steps", [1, 2, 10, 11])
def test_demo_steps_shorter_than_the_warmup_resolve(steps):
    """Try-out 15: `ekd demo --steps N` with N ≤ 10 was refused (warm-up 10 ≥ max_steps) and the error named
    train.warmup_steps, which `ekd demo` takes no override for: the warm-up follows --steps."""
    from ekd.config import load_config
    from ekd.demo import FULL, student_config

    cfg = student_config(Path("runs/demo"), FULL, "sekd", steps, pretrained=True)
    assert cfg.train.max_steps == steps and cfg.train.warmup_steps == min(10, steps // 2)
    assert load_config(overrides=[f"train.max_steps={steps}", f"train.warmup_steps={min(10, steps // 2)}"])


@pytest.mark.parametrize("flag", [["--steps", "0"], ["--steps", "-3"], ["--seeds", "0"]])
def test_demo_counts_below_one_are_one_line(tmp_path, capsys, flag):
    assert main(["demo", *flag, "--out", str(tmp_path / "d")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and f"ekd demo {flag[0]} must be ≥ 1" in err
    assert not (tmp_path / "d").exists()  # refused before anything is written


def test_the_starting_students_row_sits_between_the_students_and_the_teacher(tmp_path):
    """Try-out 84, F3: the demo's students all start from one CE-pre-trained student, and nothing showed how far
    training moved them from it; the first run's eval.json records its start (``student_init``)."""
    import json

    from ekd.demo import _student_init_row, comparison_table

    run = tmp_path / "kd"
    run.mkdir()
    start = {"ppl": 80.0, "acc": 0.1, "ece": 3.0, "kl": 0.5, "agree": 0.4, "tokens": 100.0}
    entry = {"ppl": 70.0, "student_init": start, "data": {}}
    (run / "eval.json").write_text(json.dumps({"eval": entry, "eval/teacher": {"ppl": 60.0}}))
    row = _student_init_row(run)
    assert row == {"method": "(student init)", "eval/ppl": 80.0, "eval/acc": 0.1, "eval/ece": 3.0} | {
        "eval/kl": 0.5,
        "eval/agree": 0.4,
    }
    table = comparison_table(
        [{"method": "kd", "eval/ppl": 70.0}], {"method": "(teacher)", "eval/ppl": 60.0}, {}, row
    )
    methods = [line.split("|")[1].strip() for line in table.splitlines() if line.startswith("| ")][2:]
    assert methods == ["kd", "(student init)", "(teacher)"]
    assert _student_init_row(tmp_path / "absent") == {}


def test_a_ce_student_without_a_finite_kl_is_compared_with_no_one(tmp_path):
    """Review 128, R6: with `ce`'s KL NaN (its student not finite), the report said no student had a lower KL than
    `ce` — a comparison never made."""
    import math

    from ekd.demo import QUICK, write_demo_report

    rows = [
        {"method": "ce", "run": "ce", "seed": 0, "eval/kl": math.nan, "eval/ppl": math.nan},
        {"method": "kd", "run": "kd", "seed": 0, "eval/kl": 0.30, "eval/ppl": 20.0},
    ]
    write_demo_report(tmp_path, QUICK, rows, {}, "(table)", 1.0)
    text = (tmp_path / "report.md").read_text()
    assert "Students with lower KL to the teacher than `ce`" not in text
    assert (
        "`ce`'s KL to the teacher on the held-out set is not finite: no student is compared with it." in text
    )


def test_a_teacher_no_better_than_ce_is_said_in_the_report(tmp_path):
    """Try-out 133, F3: the quick demo's teacher (ppl 66.09) was no better than the CE student (65.35), so every
    distilled student lost to CE, and the report never said why."""
    from ekd.demo import QUICK, write_demo_report

    rows = [
        {
            "method": "ce",
            "run": "ce",
            "seed": 0,
            "eval/kl": 0.17,
            "eval/ppl": 65.35,
            "_teacher": {"eval": {"ppl": 66.09}},
        },
        {"method": "kd", "run": "kd", "seed": 0, "eval/kl": 0.15, "eval/ppl": 74.96},
    ]
    write_demo_report(tmp_path, QUICK, rows, {}, "(table)", 1.0)
    text = (tmp_path / "report.md").read_text()
    assert "The teacher is no better than the CE student on the held-out set (ppl 66.09 vs 65.35)" in text


def test_only_the_run_that_trains_the_tokenizer_names_its_size(tmp_path):
    """Try-out 133, F4: every demo run was given model.bpe_vocab_size, which only the teacher's pre-training (it
    trains the tokenizer) reads: each student warned that the key had no effect (17 warnings in `make demo`)."""
    from ekd.demo import QUICK, base_overrides

    assert not any(o.startswith("model.bpe_vocab_size=") for o in base_overrides(tmp_path, QUICK))
