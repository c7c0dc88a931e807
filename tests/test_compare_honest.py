"""``ekd compare`` reports no figure it cannot stand behind (try-out 45): no mean of KL or agreement over seeds
measured against two teachers (F1), one line for a malformed eval.json or a config.yaml that is no run's config
(F3, F4), and a word when a run's figures come from metrics.jsonl instead of eval.json (F10)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from ekd.eval.compare import compare_runs, group_runs, kl_by_entropy, read_run
from hostile import cli, one_error_line


def _run(
    root: Path, name: str, preset: str, seed: int, kl: float, weights: str = "aa", path: str = "/m/t"
) -> Path:
    """A finished run whose eval.json entry ``held`` records the teacher (by its weights) its KL and agreement
    were measured against, as ``ekd eval`` writes it."""
    d = root / name
    d.mkdir(parents=True)
    cfg = {"run": {"name": name, "seed": seed}, "method": {"preset": preset}, "model": {"teacher": "/m/t"}}
    (d / "config.yaml").write_text(yaml.safe_dump(cfg))
    teacher = {"model": path, "revision": "", "weights": f"sha256:{weights}", "dtype": "auto"}
    entry = {"ppl": 10.0 + seed, "kl": kl, "agree": 1.0 - kl / 10, "kl@H0": kl, "teacher": teacher}
    (d / "eval.json").write_text(
        json.dumps({"held": entry, "held/teacher": {"ppl": 2.0, "teacher": teacher}})
    )
    return d


def test_a_mean_of_kl_is_over_the_seeds_measured_against_one_teacher(tmp_path):
    """F1: kd seed 0 re-evaluated against another teacher (KL 0.058) beside seeds 1, 2 (3.98, 3.99) read
    ``2.677 ± 2.268`` (n=3): the mean is over the seeds measured against the teacher most seeds were, the cell
    says n=2, and a note names the seed left out; ppl (not measured against the teacher) keeps all three; the
    paired difference, the Pareto plot and the KL-by-entropy bars follow the same seeds."""
    runs = [_run(tmp_path, "kd0", "kd", 0, 0.058, weights="bb")]
    runs += [_run(tmp_path, f"kd{s}", "kd", s, kl) for s, kl in ((1, 3.98), (2, 3.99))]
    runs += [_run(tmp_path, f"ce{s}", "ce", s, 4.0 + s / 100) for s in (0, 1, 2)]
    s = compare_runs(runs, tmp_path / "o", baselines=("ce",), plots=True)
    kd = next(g for g in s["groups"] if g["method"] == "kd")
    assert kd["metrics"]["held/kl"]["mean"] == pytest.approx(3.985)
    assert kd["metrics"]["held/kl"]["n"] == 2 and kd["metrics"]["held/kl"]["other_teacher"] == [0]
    assert kd["metrics"]["held/agree"]["n"] == 2
    assert kd["metrics"]["held/ppl"]["n"] == 3 and "other_teacher" not in kd["metrics"]["held/ppl"]
    assert kd["vs"]["ce"]["held/kl"]["n"] == 2  # as the paired difference already was
    text = (tmp_path / "o" / "compare.md").read_text()
    assert "3.985 ± 0.007 (n=2)" in text
    assert "`kd`: seed 0 measured against another teacher on `held`" in text
    rows = {
        (r[0], r[1]): r
        for r in (line.split(",") for line in (tmp_path / "o" / "compare.csv").read_text().splitlines())
    }
    assert float(rows[("kd", "held/kl")][2]) == pytest.approx(3.985) and rows[("kd", "held/kl")][4] == "2"
    assert kl_by_entropy(group_runs([read_run(r) for r in runs]), "held")["kd"][0] == pytest.approx(3.985)


def test_a_tie_of_teachers_keeps_the_first_runs_and_one_teacher_leaves_nothing_out(tmp_path):
    """Two seeds, two teachers: the first run given's teacher; every seed against one teacher: no note."""
    runs = [_run(tmp_path, "a0", "kd", 0, 1.0, "aa"), _run(tmp_path, "a1", "kd", 1, 2.0, "bb", "/m/other")]
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    cell = s["groups"][0]["metrics"]["held/kl"]
    assert (cell["mean"], cell["n"], cell["other_teacher"]) == (1.0, 1, [1])
    # try-out 47, F2: both rows were '(teacher of kd)', the second naming the config's path, not the recorded one
    rows = {t["label"]: t["teacher"] for t in s["teachers"]}
    assert rows == {"(teacher of kd: weights aa)": "/m/t", "(teacher of kd: weights bb)": "/m/other"}, rows
    same = [_run(tmp_path, "b0", "kd", 0, 1.0), _run(tmp_path, "b1", "kd", 1, 2.0)]
    s = compare_runs(same, tmp_path / "o2", baselines=(), plots=False)
    assert s["groups"][0]["metrics"]["held/kl"]["n"] == 2 and not s["teacher_notes"]


def _good(tmp_path: Path) -> Path:
    return _run(tmp_path, "ce0", "ce", 0, 4.0)


@pytest.mark.parametrize(
    "edit, says",
    [
        (
            lambda ev: ev["held"].update(ppl="abc"),
            "'held' metric 'ppl' is a JSON string (\"abc\"), not a number",
        ),
        (
            lambda ev: ev["held"].update(ece=[1, 2]),
            "'held' metric 'ece' is a JSON list ([1, 2]), not a number",
        ),
        (lambda ev: ev.update(held=5), "entry 'held' is a JSON number (5), not an object of metrics"),
        (
            lambda ev: ev["held"].update(teacher="x"),
            "'held' records 'teacher' as a JSON string, not an object",
        ),
        (lambda ev: ev.update(tasks=[1]), "its 'tasks' section is a JSON list, not an object"),
        (
            lambda ev: ev.update(tasks={"student": {"t": {"value": "x"}}}),
            "its 'tasks' section: could not convert string to float",
        ),
        (lambda ev: [], "is not valid JSON for ekd (a JSON list, not an object)"),  # eval.json's one reader
    ],
)
def test_a_malformed_eval_json_is_one_line_naming_the_file(tmp_path, capsys, edit, says):
    """F3: a string, a list or a number where a number or an object is expected was a traceback (float(),
    .items())."""
    bad = _run(tmp_path, "kd1", "kd", 1, 3.0)
    ev = json.loads((bad / "eval.json").read_text())
    replaced = edit(ev)  # None: edited in place
    ev = ev if replaced is None else replaced
    (bad / "eval.json").write_text(json.dumps(ev))
    line = one_error_line(*cli(capsys, "compare", _good(tmp_path), bad, "--out", tmp_path / "o")[::2])
    said = says if says.startswith("is not valid JSON") else f"is malformed: {says}"
    assert f"{bad / 'eval.json'} {said}" in line and "rerun `ekd eval" in line, line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize(
    "text, says",
    [
        ("::: not yaml [\n", "section '::' is a YAML string, not a mapping"),
        ("- a list\n", "a YAML list, not a mapping of sections"),
        ("method: {preset: kdd}\n", "no run.seed"),
        ("run: {seed: 1}\n", "no method.preset"),
        ("run: {seed: one}\nmethod: {preset: kd}\n", "run.seed='one', not a whole number"),
        # try-out 47, F4: taken as a setting the runs differ in
        (
            "run: {seed: 1}\nmethod: {preset: kd}\ntrain: {max_steps: four}\n",
            "train.max_steps: expected int, got 'four'",
        ),
    ],
)
def test_a_config_yaml_that_is_no_runs_config_is_refused_in_one_line(tmp_path, capsys, text, says):
    """F4: a config.yaml that parses to no run's config became method '?' at seed 0 (paired with another run's
    seed 0, exit 0), or an AttributeError traceback for a list."""
    bad = _run(tmp_path, "kd1", "kd", 1, 3.0)
    (bad / "config.yaml").write_text(text)
    line = one_error_line(*cli(capsys, "compare", _good(tmp_path), bad, "--out", tmp_path / "o")[::2])
    assert f"{bad / 'config.yaml'} is not a run's config ({says})" in line, line


def test_figures_read_from_metrics_jsonl_are_said(tmp_path, caplog):
    """F10: a run without eval.json was compared on its metrics.jsonl's last evaluation without a word."""
    run = _good(tmp_path)
    (run / "eval.json").unlink()
    (run / "metrics.jsonl").write_text(json.dumps({"step": 7, "eval/held/ppl": 9.0}) + "\n")
    with caplog.at_level(logging.WARNING):
        record = read_run(run)
    assert record.eval == {"held": {"ppl": 9.0}}
    assert (
        f"{run} has no eval.json; its figures are the last evaluation in metrics.jsonl (step 7)"
        in caplog.text
    )


def test_compare_out_refuses_a_data_or_run_directory_and_a_corpus_skips_a_comparison(tmp_path, capsys):
    """Try-out 51, F3: `ekd compare --out CORPUS` wrote compare.md/.csv/.json into a text directory, and the next
    `ekd distill` of it trained on the tables (+37% tokens); `--out RUN` mixed the plots into the run's own."""
    from ekd.config import load_config
    from ekd.data.documents import load_documents
    from hostile import snapshot, unchanged

    runs = [_run(tmp_path, f"kd{s}", "kd", s, 1.0 + s) for s in (0, 1)]
    (runs[1] / "metrics.jsonl").write_text('{"step": 1}\n')
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "doc.txt").write_text("a document\n")
    for out, says in (
        (corpus, f"--out {corpus} holds 1 other file (doc.txt), not a comparison's directory; name a new"),
        (runs[1], f"--out {runs[1]} is a run directory, not a comparison's directory"),
        (corpus / "doc.txt", f"--out {corpus / 'doc.txt'} is a file; name a directory"),
        (corpus / "doc.txt" / "x", f"lies under {corpus / 'doc.txt'}, which is a file"),
        # try-out 52, F5: mkdir says "no such file or directory" where nothing can be created (was a traceback)
        *(
            [(Path("/proc/ekd-compare"), "cannot create the directory /proc/ekd-compare")]
            if Path("/proc").is_dir()
            else []
        ),
    ):
        before = snapshot(tmp_path)
        line = one_error_line(*cli(capsys, "compare", *runs, "--out", out, "--no-plots")[::2])
        assert says in line, line
        unchanged(before, tmp_path)
        assert snapshot(tmp_path).keys() == before.keys()  # nothing written
    # a comparison below a corpus (compare's default --out, ./compare, run from the corpus root) is not read
    assert cli(capsys, "compare", *runs, "--out", corpus / "compare", "--no-plots")[0] == 0
    assert json.loads((corpus / "compare" / "compare.json").read_text())["format"] == "ekd-compare"
    assert cli(capsys, "compare", *runs, "--out", corpus / "compare", "--no-plots")[0] == 0  # written again
    cfg = load_config(overrides=[f"data.source={corpus}"])
    assert [d.doc_id for d in load_documents(str(corpus), cfg.data)] == ["doc.txt"]
    (corpus / "compare" / "compare.json").write_text("{}")  # an older ekd's: no format, the three files
    assert [d.doc_id for d in load_documents(str(corpus), cfg.data)] == ["doc.txt"]


def test_a_record_a_later_ekd_writes_is_read_past_not_refused(tmp_path):
    """Review 106, item 13: eval.json entries gained an object-valued record (`block_sums`), which an older ekd
    refused as a malformed metric; an object under a key this ekd does not know is a later ekd's record: the
    comparison reads the metrics beside it as before and reports nothing of it."""
    runs = [_run(tmp_path, f"kd{s}", "kd", s, 1.0 + s) for s in (0, 1)]
    before = compare_runs(runs, tmp_path / "o1", baselines=(), plots=False)["groups"][0]["metrics"]
    for run in runs:
        ev = json.loads((run / "eval.json").read_text())
        ev["held"]["per_domain"] = {"code": [1.5, 2.0], "prose": {"ppl": 3.0}}  # a future record
        (run / "eval.json").write_text(json.dumps(ev))
    after = compare_runs(runs, tmp_path / "o2", baselines=(), plots=False)["groups"][0]["metrics"]
    assert after == before and not any("per_domain" in key for key in after)
    assert "per_domain" not in (tmp_path / "o2" / "compare.md").read_text()


def test_a_saved_config_of_another_version_is_no_problem():
    """Keys another version knows and this one does not, and every preset's whole saved config, read."""
    from ekd.config import load_config
    from ekd.eval.saved_files import config_problem
    from ekd.methods import presets

    for name in presets.names():
        assert config_problem(load_config(None, [f"method={name}"]).to_dict()) is None, name
    old = {
        "run": {"seed": 0, "gone_key": "x"},
        "method": {"preset": "no-longer-a-preset"},
        "retired": {"a": 1},
    }
    assert config_problem(old) is None


def test_the_teacher_row_of_figures_alike_in_every_run_has_no_spread_and_a_missing_figure_no_crash(tmp_path):
    """Try-out 55, F7: two seeds scored on a generation task with the teacher crashed `ekd compare` (its MC-ECE is
    null: NaN ≠ NaN made a 'spread', and stdev raised); F2: bit-identical teacher figures showed '± 0.00' (each
    seed's mean over 3 and 2 runs rounded apart)."""
    ppl = 3.0859652715295374
    runs = []
    for name, preset, seed in (("kd0", "kd", 0), ("sekd0", "sekd", 0), ("ce0", "ce", 0), ("kd1", "kd", 1),
                               ("sekd1", "sekd", 1)):  # fmt: skip
        run = _run(tmp_path, name, preset, seed, 1.0 + seed)
        ev = json.loads((run / "eval.json").read_text())
        ev["held/teacher"].update(ppl=ppl, ece=None)
        (run / "eval.json").write_text(json.dumps(ev))
        runs.append(run)
    assert sum([ppl] * 3) / 3 != sum([ppl] * 2) / 2  # the premise: the means round apart
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    (teacher,) = s["teachers"]
    assert teacher["metrics"]["held/ppl"] == ppl and not teacher["spread"], teacher
    assert "held/ece" not in teacher["metrics"]
    assert f"{ppl:.2f} ±" not in (tmp_path / "o" / "compare.md").read_text()


def test_two_teachers_of_a_method_are_told_apart_where_the_rows_name_other_methods_too(tmp_path):
    """Try-out 55, F3: '(teacher of kd, sekd, ce)' and '(teacher of kd)': the README promises the weights where
    one method's seeds were measured against two teachers; only identical labels got them."""
    runs = [_run(tmp_path, "kd0", "kd", 0, 1.0), _run(tmp_path, "kd1", "kd", 1, 2.0, "bb", "/m/other")]
    runs += [_run(tmp_path, "ce0", "ce", 0, 4.0), _run(tmp_path, "ce1", "ce", 1, 4.0)]
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    labels = sorted(t["label"] for t in s["teachers"])
    assert labels == ["(teacher of kd, ce: weights aa)", "(teacher of kd: weights bb)"], labels


def test_a_figure_that_contradicts_its_entry_is_refused_as_malformed(tmp_path, capsys):
    """Try-out 55, F6: a ppl edited by hand (5.0 beside loss 2.5138, exp = 12.35, and block sums saying the same)
    was compared as it stood. Each perplexity is exp of its loss, and loss, acc and tokens are the ratios of the
    per-block sums: an entry whose figures disagree is refused like a malformed one."""
    import math

    from ekd.eval.eval_json import malformed

    sums = {"tokens": [60, 40], "nll": [150.0, 101.38], "correct": [30, 14], "boundary_tokens": [1, 0],
            "boundary_nll": [3.0, 0.0]}  # fmt: skip
    loss = 251.38 / 100
    entry = {"tokens": 100, "loss": loss, "ppl": math.exp(loss), "acc": 0.44, "block_sums": sums}
    assert malformed({"eval": entry}) is None
    for edit, says in (
        ({"ppl": 5.0}, "'eval' ppl 5 is not exp(loss 2.5138) = 12.3518"),
        ({"acc": 0.5}, "'eval' acc 0.5 is not what its block sums give (0.44)"),
        ({"loss": 2.0, "ppl": math.exp(2.0)}, "'eval' loss 2 is not what its block sums give (2.5138)"),
        ({"tokens": 99}, "'eval' tokens 99 is not what its block sums give (100)"),
    ):
        assert malformed({"eval": entry | edit}) == says, edit
    assert malformed({"eval": entry | {"ppl": None, "acc": None}}) is None  # NaN written as null
    # try-out 57, F1: NaN or inf where the loss gives a finite figure, and figures outside their bounds
    for edit, says in (
        ({"ppl": math.nan}, "'eval' ppl nan is not exp(loss 2.5138) = 12.3518"),
        ({"ppl": math.inf}, "'eval' ppl inf is not exp(loss 2.5138) = 12.3518"),
        ({"loss": math.inf, "ppl": math.inf}, "'eval' loss inf is not what its block sums give (2.5138)"),
        ({"ece": -5.0}, "'eval' ece -5 is outside [0, 100]"),
        ({"kl": -1.0}, "'eval' kl -1 is outside [0, inf]"),
        ({"acc": 1.5}, "'eval' acc 1.5 is outside [0, 1]"),
    ):
        assert malformed({"eval": entry | edit}) == says, edit
    assert malformed({"eval": {"kl": -1e-9, "ece": math.nan}}) is None  # float noise; NaN an older ekd wrote
    assert malformed({"eval": {"loss": 800.0, "ppl": None}}) is None
    run = _run(tmp_path, "kd1", "kd", 1, 3.0)
    ev = json.loads((run / "eval.json").read_text())
    ev["held"].update(loss=2.5138, ppl=5.0)
    (run / "eval.json").write_text(json.dumps(ev))
    line = one_error_line(*cli(capsys, "compare", _good(tmp_path), run, "--out", tmp_path / "o")[::2])
    assert "is malformed: 'held' ppl 5 is not exp(loss 2.5138)" in line, line


def _sized_run(root: Path, name: str, preset: str, seed: int, documents: int, kl: float) -> Path:
    """A run whose eval set ``held`` (``documents`` documents, 480 scored tokens) records its per-bucket tokens."""
    d = _run(root, name, preset, seed, kl)
    saved = json.loads((d / "eval.json").read_text())
    saved["held"].update(
        {"documents": documents, "tokens": 480, "tokens@H0": 2, "kl@H1": kl, "tokens@H1": 478}
    )
    (d / "eval.json").write_text(json.dumps(saved))
    return d


@pytest.mark.parametrize("documents, marked", [(1, True), (5, False)])
def test_a_tiny_set_is_marked_in_every_table_and_its_size_said(tmp_path, documents, marked):
    """Try-out 89, F1: a 1-document set got 'better' verdicts unmarked, where ekd distill's table marks it † and
    says that its differences are weak evidence; compare now marks its columns in the table and the paired
    differences, and says every set's documents and tokens under the table, as distill does. F2: the KL-by-entropy
    plot's buckets say how many tokens they hold (a bucket of 2 tokens drew the tallest bars)."""
    runs = [_sized_run(tmp_path, f"kd{s}", "kd", s, documents, 0.5 + s / 100) for s in (0, 1)]
    runs += [_sized_run(tmp_path, f"ce{s}", "ce", s, documents, 0.9 + s / 50) for s in (0, 1)]
    compare_runs(runs, tmp_path / "o", baselines=("ce",), plots=False)
    text = (tmp_path / "o" / "compare.md").read_text()
    assert text.count("| held KL(t‖s)† |") == (2 if marked else 0)  # the means' table and the differences'
    said = f"held{'†' if marked else ''}: {documents} document{'s' if documents > 1 else ''}, 480 tokens"
    assert said in text
    assert ("† tiny (under 5 documents)" in text) == marked
    from ekd.eval.compare.plots import _bucket_tokens

    assert _bucket_tokens(group_runs([read_run(r) for r in runs]), "held", 2) == {0: 2, 1: 478}


def test_methods_from_other_starting_students_get_a_start_row_each(tmp_path):
    """The `(student init)` rows: one per set of starting students (eval.json's ``student_init``), shared by the
    methods that started from the same ones, labelled with them where there are several."""

    def started(name: str, preset: str, seed: int, start_ppl: float) -> Path:
        d = _run(tmp_path, name, preset, seed, 0.5)
        saved = json.loads((d / "eval.json").read_text())
        saved["held"]["student_init"] = {"ppl": start_ppl, "kl": 2.0}
        (d / "eval.json").write_text(json.dumps(saved))
        return d

    runs = [started(f"kd{s}", "kd", s, 50.0 + s) for s in (0, 1)]
    runs += [started(f"ce{s}", "ce", s, 50.0 + s) for s in (0, 1)]  # the same two starts
    runs += [started(f"rkl{s}", "rkl", s, 70.0) for s in (0, 1)]  # another student
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    rows = {r["label"]: r for r in s["starts"]}
    assert set(rows) == {"(student init of kd, ce)", "(student init of rkl)"}
    assert rows["(student init of kd, ce)"]["metrics"]["held/ppl"] == 50.5
    assert rows["(student init of kd, ce)"]["spread"]["held/ppl"]["n"] == 2
    assert rows["(student init of rkl)"]["metrics"] == {"held/ppl": 70.0, "held/kl": 2.0}
    text = (tmp_path / "o" / "compare.md").read_text()
    assert "| (student init of kd, ce) | 2 | 50.50 ± 0.71 |" in text
    assert "(student init of rkl)" in (tmp_path / "o" / "compare.csv").read_text()


def test_two_teachers_differing_only_in_dtype_are_told_apart_by_it(tmp_path):
    """Try-out 116, F6: one teacher's weights evaluated in bfloat16 by one seed and in the default dtype by another
    made two rows both labelled '(teacher of kd: weights aa)'."""
    runs = [_run(tmp_path, "a0", "kd", 0, 1.0, "aa"), _run(tmp_path, "a1", "kd", 1, 2.0, "aa")]
    for run, dtype in zip(
        runs, ("float32", "bfloat16")
    ):  # the dtypes they ran in (an older ekd's auto: either)
        record = json.loads((run / "eval.json").read_text())
        for entry in record.values():
            entry["teacher"]["dtype"] = dtype
        (run / "eval.json").write_text(json.dumps(record))
    s = compare_runs(runs, tmp_path / "o", baselines=(), plots=False)
    labels = sorted(t["label"] for t in s["teachers"])
    assert labels == ["(teacher of kd: weights aa, bfloat16)", "(teacher of kd: weights aa, float32)"], labels
