"""The starting student's eval-set figures (``eval.student_init``, try-out 84 F3): scored before the first step,
recorded in each set's eval.json entry (``student_init``) and shown beside the result by ``ekd distill`` and
``ekd eval``; kept across --resume and a re-evaluation of the same blocks, left out where they would describe
other blocks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ekd.eval.eval_json import STUDENT_INIT_FILE, STUDENT_INIT_KEY, malformed
from hostile import cli, copy_workspace, make_workspace
from tiny import config_file

EXTRA = {"train.max_steps": 2, "train.checkpoint_every": 1, "method.preset": "kd"}
RUN = Path("runs/si")
FIGURES = ("ppl", "acc", "ece", "kl", "agree", "tokens", "documents")


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """``runs/si``: a finished 2-step KD run (eval.every = 0, the default: the start is scored for eval.json)."""
    return make_workspace(tmp_path_factory.mktemp("student-init"), "si", EXTRA)


@pytest.fixture
def ws(template, tmp_path, monkeypatch):
    return copy_workspace(template, tmp_path, monkeypatch)


def _eval_json(run: Path = RUN) -> dict:
    return json.loads((run / "eval.json").read_text())


def _step0(run: Path = RUN) -> dict[str, float]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {k: v for r in rows if r["step"] == 0 for k, v in r.items() if k.startswith("eval/")}


def test_every_set_records_the_starting_students_figures(ws, capsys):
    saved = _eval_json()
    start = saved["eval"][STUDENT_INIT_KEY]
    assert set(FIGURES) <= set(start)
    logged = _step0()  # the same evaluation, logged at step 0
    assert all(start[k] == pytest.approx(logged[f"eval/eval/{k}"], rel=1e-12) for k in FIGURES)
    assert start["ppl"] != saved["eval"]["ppl"]  # two steps at lr 1e-3 moved the student
    assert STUDENT_INIT_KEY not in saved.get("eval/teacher", {})  # the teacher did not start anywhere
    assert malformed(saved) is None
    assert (RUN / STUDENT_INIT_FILE).is_file()


def test_an_unmoved_student_scores_its_start_bit_for_bit(ws, capsys):
    """lr 1e-30: AdamW's updates vanish in fp32, so the trained student is the starting one and its figures are
    those recorded as the start — the start is what the student was before the first step."""
    rc, out, err = cli(
        capsys, "distill", config_file(Path("."), Path("corpus"), "still", **EXTRA, **{"train.lr": 1e-30})
    )
    assert rc == 0, err
    saved = _eval_json(Path("runs/still"))
    start = saved["eval"][STUDENT_INIT_KEY]
    assert {k: start[k] for k in FIGURES} == {k: saved["eval"][k] for k in FIGURES}
    # the table shows the start beside the result
    lines = out.splitlines()
    at = next(i for i, line in enumerate(lines) if line.startswith("| eval |"))
    assert lines[at + 1].startswith("| eval/student_init |"), out


def test_a_resumed_run_keeps_the_start_of_its_first_segment(ws, capsys):
    rc, _, err = cli(
        capsys,
        "distill",
        config_file(Path("."), Path("corpus"), "si", **EXTRA),
        "train.max_steps=3",
        "--resume",
    )
    assert rc == 0, err
    start = _eval_json()["eval"][STUDENT_INIT_KEY]
    assert {k: start[k] for k in FIGURES} == {
        k: v for k, v in json.loads((RUN / STUDENT_INIT_FILE).read_text())["eval"].items() if k in FIGURES
    }
    assert len([1 for k in _step0() if k == "eval/eval/ppl"]) == 1  # not scored again


def test_ekd_eval_keeps_the_start_of_the_same_blocks_only(ws, capsys):
    before = _eval_json()["eval"][STUDENT_INIT_KEY]
    rc, out, err = cli(capsys, "eval", str(RUN))
    assert rc == 0, err
    assert _eval_json()["eval"][STUDENT_INIT_KEY] == before  # the same blocks, bins and teacher
    assert "eval/student_init" in out
    rc, out, err = cli(capsys, "eval", str(RUN), "data.max_eval_blocks=2")  # other blocks: not the same set
    assert rc == 0, err
    assert STUDENT_INIT_KEY not in _eval_json()["eval"]
    assert "eval/student_init" not in out


def test_ekd_eval_without_the_teacher_keeps_the_starts_other_figures(ws, capsys):
    """A start scored against a teacher, re-evaluated without one (``eval.teacher=false``): its ppl, acc and ECE are
    the same set's figures; its KL and agreement stay beside a result that keeps its own (try-out 138: scored alike,
    the student's figures the same), and are not shown beside a result that has none (scored otherwise)."""
    before = _eval_json()["eval"][STUDENT_INIT_KEY]
    rc, out, err = cli(capsys, "eval", str(RUN), "eval.teacher=false")
    assert rc == 0, err
    entry = _eval_json()["eval"]
    assert entry[STUDENT_INIT_KEY] == before and "kl" in entry  # the teacher's figures kept, the start's too
    # a result without teacher figures of its own to keep (an eval.json whose entry records none)
    saved = _eval_json()
    saved["eval"] = {k: v for k, v in saved["eval"].items() if k not in ("kl", "agree", "teacher")}
    (RUN / "eval.json").write_text(json.dumps(saved))
    rc, out, err = cli(capsys, "eval", str(RUN), "eval.teacher=false")
    assert rc == 0, err
    entry = _eval_json()["eval"]
    kept = entry[STUDENT_INIT_KEY]
    assert {k: kept[k] for k in ("ppl", "acc", "ece", "tokens")} == {
        k: before[k] for k in ("ppl", "acc", "ece", "tokens")
    }
    assert "kl" not in entry
    assert not {"kl", "agree", "teacher_entropy"} & set(kept) and not any("@H" in k for k in kept)
    assert "eval/student_init" in out


@pytest.mark.parametrize("start_teacher", [None, {"model": "other", "weights": "sha256:bbb"}])
def test_a_start_without_the_runs_teacher_keeps_its_teacher_free_figures(start_teacher):
    """Try-out 93, F1: a run from a teacher cache scores its start with no teacher in memory and its result against
    the teacher loaded at the end: the start was dropped whole, ppl, acc and ECE with it. Measured against another
    teacher, its KL and agreement are not this teacher's."""
    from ekd.eval.eval_json import SCORING_KEY, SETTINGS_KEY, TEACHER_KEY, with_student_init

    records = {SETTINGS_KEY: {"block_length": 32, "blocks_sha256": "aaa"}, SCORING_KEY: {"ece_bins": 15}}
    teacher = {"model": "/t", "weights": "sha256:aaa"}
    final = {
        "eval": {"ppl": 9.0, "acc": 0.5, "ece": 1.0, "kl": 0.2, "agree": 0.6, **records, TEACHER_KEY: teacher}
    }
    start = {"ppl": 20.0, "acc": 0.3, "ece": 4.0, "tokens": 100, **records}
    if start_teacher is not None:
        start |= {
            "kl": 0.9,
            "agree": 0.2,
            "kl@H0": 1.0,
            "acc@H0": 0.1,
            "teacher_entropy": 2.0,
            TEACHER_KEY: start_teacher,
        }
    got = with_student_init(final, {"eval": start})["eval"][STUDENT_INIT_KEY]
    assert got == {"ppl": 20.0, "acc": 0.3, "ece": 4.0, "tokens": 100}
    same = with_student_init(final, {"eval": {**start, TEACHER_KEY: teacher}})["eval"][STUDENT_INIT_KEY]
    assert ("kl" in same) == (start_teacher is not None)  # against the same teacher: all of them
    other_blocks = {**start, SETTINGS_KEY: {"block_length": 32, "blocks_sha256": "ccc"}}
    assert STUDENT_INIT_KEY not in with_student_init(final, {"eval": other_blocks})["eval"]


def test_another_block_budget_over_the_same_blocks_keeps_the_start():
    """Try-out 95, F5: `ekd eval RUN data.max_eval_blocks=4` of a set of 3 blocks (all of them either way: the same
    sha256) dropped the start: the budget only picks the blocks, which the sha256 already tells apart."""
    from ekd.eval.eval_json import SCORING_KEY, SETTINGS_KEY, with_student_init

    def entry(budget: int, sha: str) -> dict:
        return {"ppl": 9.0, SETTINGS_KEY: {"max_eval_blocks": budget, "blocks_sha256": sha}, SCORING_KEY: {}}

    start = {"eval": {**entry(64, "aaa"), "ppl": 20.0}}
    assert with_student_init({"eval": entry(4, "aaa")}, start)["eval"][STUDENT_INIT_KEY] == {"ppl": 20.0}
    assert STUDENT_INIT_KEY not in with_student_init({"eval": entry(4, "bbb")}, start)["eval"]


def test_off_writes_no_start(ws, capsys):
    rc, out, err = cli(
        capsys,
        "distill",
        config_file(Path("."), Path("corpus"), "nostart", **EXTRA, **{"eval.student_init": False}),
    )
    assert rc == 0, err
    run = Path("runs/nostart")
    assert STUDENT_INIT_KEY not in _eval_json(run)["eval"]
    assert not (run / STUDENT_INIT_FILE).exists()
    assert _step0(run) == {}  # and no evaluation before the first step


@pytest.mark.parametrize("value", ["high", 3, [1.0]])
def test_a_starting_figure_that_is_no_number_is_malformed(value):
    saved = {"eval": {"ppl": 5.0, STUDENT_INIT_KEY: {"ppl": value}}}
    if not isinstance(value, dict) and isinstance(value, (int, float)):
        saved["eval"][STUDENT_INIT_KEY] = value  # not an object at all
    assert "student_init" in malformed(saved)


def test_compare_shows_the_starting_students_beside_the_methods(ws, capsys):
    """Seeds 0 and 1 of kd and ce start from the preset built from the seed (one start per seed, shared by the
    methods): one `(student init)` row, its figures the mean over the two starts; a run whose start is another
    student gets its own row."""
    from ekd.eval.compare import compare_runs

    runs = []
    for method in ("kd", "ce"):
        for seed in (0, 1):
            name = f"{method}{seed}"
            extra = {**EXTRA, "method.preset": method, "run.seed": seed}
            rc, _, err = cli(capsys, "distill", config_file(Path("."), Path("corpus"), name, **extra))
            assert rc == 0, err
            runs.append(Path("runs") / name)
    starts = [_eval_json(r)["eval"][STUDENT_INIT_KEY]["ppl"] for r in runs]
    assert (
        starts[0] == starts[2] and starts[1] == starts[3] and starts[0] != starts[1]
    )  # per seed, per method alike
    s = compare_runs(runs, Path("cmp"), baselines=("ce",), plots=False)
    (row,) = s["starts"]
    assert row["label"] == "(student init)" and row["of"] == ["kd", "ce"]
    assert (
        row["metrics"]["eval/ppl"] == pytest.approx((starts[0] + starts[1]) / 2) and row["n"]["eval/ppl"] == 2
    )
    assert "| (student init) | 2 |" in Path("cmp/compare.md").read_text()
    other = Path("runs") / "kd9"  # another start: seed 9's preset, compared as a seed of kd beside one of ce
    rc, _, err = cli(
        capsys, "distill", config_file(Path("."), Path("corpus"), "kd9", **{**EXTRA, "run.seed": 9})
    )
    assert rc == 0, err
    s = compare_runs([runs[0], other], Path("cmp2"), baselines=(), plots=False)
    assert [r["label"] for r in s["starts"]] == [
        "(student init)"
    ]  # one group (kd, seeds 0 and 9): two starts
    assert s["starts"][0]["n"]["eval/ppl"] == 2


def test_ekd_eval_restores_the_start_once_a_set_is_scored_as_it_was_again(ws, capsys):
    """Try-out 90, F3: after `ekd eval RUN data.max_eval_blocks=2` (the start left out: other blocks), a plain
    `ekd eval RUN` scores the start's blocks again, and the start comes back from the run's file."""
    before = _eval_json()["eval"][STUDENT_INIT_KEY]
    assert cli(capsys, "eval", str(RUN), "data.max_eval_blocks=2")[0] == 0
    assert STUDENT_INIT_KEY not in _eval_json()["eval"]
    rc, out, err = cli(capsys, "eval", str(RUN))
    assert rc == 0, err
    assert _eval_json()["eval"][STUDENT_INIT_KEY] == before and "eval/student_init" in out


def test_ekd_eval_refuses_another_seed_for_a_preset_teacher(ws, capsys):
    """Try-out 90, F1: `ekd eval RUN run.seed=7` rebuilt the random preset teacher from seed 7 and recorded its
    figures (and the start's beside them) as the run's teacher's."""
    before = (RUN / "eval.json").read_bytes()
    rc, _, err = cli(capsys, "eval", str(RUN), "run.seed=7")
    assert rc == 2 and "run.seed=7 would build the run's teacher preset:llama-tiny from another seed" in err
    assert "leave run.seed out" in err and len(err.strip().splitlines()) == 1
    assert (RUN / "eval.json").read_bytes() == before
    assert cli(capsys, "eval", str(RUN), "run.seed=0")[0] == 0  # the run's own seed: as without it
    assert cli(capsys, "eval", str(RUN), "run.seed=00")[0] == 0  # read as 0 (try-out 92, F6)
