"""``ekd eval RUN`` refuses in one line what it cannot read, before it scores anything (try-out 45): a path that
does not exist (F10), a config.yaml that is not a run's config (F4), an eval.json whose entries it would keep or
drop as they are (F3), one that is not a JSON object (review 126, R4: it was replaced)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import yaml

from hostile import cli, one_error_line, snapshot, unchanged


def _finished(root: Path) -> Path:
    """A directory ``ekd eval`` takes for a finished run (config.yaml, student/config.json) with an eval.json;
    every refusal below comes before its student is loaded."""
    run = root / "runs" / "r"
    (run / "student").mkdir(parents=True)
    (run / "student" / "config.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump({"run": {"seed": 1}, "method": {"preset": "kd"}}))
    ev = {"eval": {"ppl": 9.0, "kl": 1.0}, "eval/teacher": {"ppl": 2.0}, "held": {"ppl": 8.0}}
    (run / "eval.json").write_text(json.dumps(ev))
    return run


def test_a_path_that_does_not_exist_is_said_so(tmp_path, capsys):
    """F10: 'is not a finished ekd run (needs config.yaml and student/); run ekd distill first'."""
    line = one_error_line(*cli(capsys, "eval", tmp_path / "nonexistent")[::2])
    assert f"{tmp_path / 'nonexistent'} does not exist" in line, line
    assert not (tmp_path / "nonexistent").exists()


@pytest.mark.parametrize(
    "text, says",
    [
        ("::: not yaml [\n", "section '::' is a YAML string, not a mapping"),  # ValueError: not enough values
        ("run: {seed: 1\n", "not valid YAML"),  # truncated: yaml ScannerError / ParserError traceback
        ("- a list\n", "a YAML list, not a mapping of sections"),  # AttributeError
        ("run: 5\n", "section 'run' is a YAML number, not a mapping"),
    ],
)
def test_a_config_yaml_that_is_no_runs_config_is_one_line(tmp_path, capsys, text, says):
    """F4: tracebacks (ValueError, yaml.ScannerError, AttributeError); nothing is written."""
    run = _finished(tmp_path)
    (run / "config.yaml").write_text(text)
    before = snapshot(tmp_path)
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert f"{run / 'config.yaml'} is not a run's config ({says}" in line, line
    unchanged(before, tmp_path)


@pytest.mark.parametrize(
    "edit, says",
    [
        (lambda ev: ev.update(held=5), "entry 'held' is a JSON number (5), not an object of metrics"),
        (
            lambda ev: ev["held"].update(ece=[1, 2]),
            "'held' metric 'ece' is a JSON list ([1, 2]), not a number",
        ),
        (
            lambda ev: ev["eval"].update(ppl="abc"),
            "'eval' metric 'ppl' is a JSON string (\"abc\"), not a number",
        ),
    ],
)
def test_a_malformed_entry_of_eval_json_is_refused_not_kept_or_dropped(tmp_path, capsys, edit, says):
    """F3: ``held = 5`` was dropped from the written file while the log said ``keeps held ... as it was``; a list
    where a number belongs was kept without a word, for ekd compare to crash on later."""
    run = _finished(tmp_path)
    ev = json.loads((run / "eval.json").read_text())
    edit(ev)
    (run / "eval.json").write_text(json.dumps(ev))
    before = snapshot(tmp_path)
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert (
        f"{run / 'eval.json'} is malformed: {says}; ekd eval keeps the results it does not score" in line
    ), line
    unchanged(before, tmp_path)


@pytest.mark.parametrize(
    "damage, says",
    [
        (lambda text: text[:-1], "is not valid JSON (Expecting"),  # one byte short: a hand edit, a cut copy
        (lambda text: "[]", "is not valid JSON for ekd (a JSON list, not an object)"),
        (lambda text: "\xff", "is not valid JSON ("),
    ],
)
@pytest.mark.parametrize("tasks", [False, True])
def test_an_eval_json_that_cannot_be_read_is_refused_not_replaced(tmp_path, capsys, damage, says, tasks):
    """Review 126, R4 (try-out 45 F3 had it said, then replaced): an eval.json one byte short of valid JSON was
    replaced by the sets scored now — every other set's figures lost — with a warning; on the tasks' path it was
    rewritten with the task results only. It is refused in one line, the file as it was."""
    run = _finished(tmp_path)
    (run / "eval.json").write_text(damage((run / "eval.json").read_text()))
    before = snapshot(tmp_path)
    line = one_error_line(*cli(capsys, "eval", run, *(["--tasks", "arc_easy"] if tasks else []))[::2])
    assert f"ekd eval: {run / 'eval.json'} {says}" in line, line
    assert line.endswith(f"so fix it, or move the file away to write only what `ekd eval {run}` scores"), line
    unchanged(before, tmp_path)


def test_a_record_a_later_ekd_writes_is_no_malformed_entry(tmp_path, caplog):
    """Review 106, item 13: an object under a key this ekd does not know is a later ekd's record, not a metric
    of the wrong type: ekd eval reads past it (and its merge keeps the sets it does not score as they were)."""
    from ekd.cli import _check_run_files
    from ekd.eval.eval_json import merge

    run = _finished(tmp_path)
    ev = json.loads((run / "eval.json").read_text())
    name = next(k for k in ev if k != "tasks")
    ev[name]["per_domain"] = {"code": [1.5, 2.0]}
    (run / "eval.json").write_text(json.dumps(ev))
    with caplog.at_level(logging.WARNING):
        _check_run_files(run)
    assert not caplog.text
    kept, names = merge(ev, {"other": {"ppl": 3.0}})
    assert kept[name]["per_domain"] == {"code": [1.5, 2.0]} and name in names


def test_the_directory_that_holds_runs_names_them(tmp_path, capsys):
    """``ekd eval runs`` (run.output_dir, not a run in it) said 'run ekd distill first' beside finished runs."""
    run = _finished(tmp_path)
    line = one_error_line(*cli(capsys, "eval", run.parent)[::2])
    assert line.endswith(
        f"is not a finished ekd run (needs config.yaml and student/); it holds the run r: give one, "
        f"e.g. `ekd eval {run}`"
    ), line
    # try-out 83, F2: a run ekd distill started and did not finish is named too, after the finished ones
    from ekd.train.run_dir import MARKER

    cut = run.parent / "a-cut"
    cut.mkdir()
    (cut / MARKER).write_text('{"state": "started"}')
    line = one_error_line(*cli(capsys, "eval", run.parent)[::2])
    assert line.endswith(f"it holds the runs r, a-cut: give one, e.g. `ekd eval {run}`"), line


def test_an_eval_json_that_is_a_directory_or_cannot_be_read_is_said_for_what_it_is(
    tmp_path, capsys, monkeypatch
):
    """Try-out 127, F5/F6: a directory in eval.json's place was read as no file (ekd eval scored, then failed to write
    `eval.json.tmp`), and a file without read permission was called invalid JSON and told to be moved away (every
    other set's figures with it); its fix is its permissions."""
    run = _finished(tmp_path)
    (run / "eval.json").unlink()
    (run / "eval.json").mkdir()
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert (
        f"ekd eval: {run / 'eval.json'} is not a file; remove it, or put the run's eval.json back" in line
    ), line
    (run / "eval.json").rmdir()
    (run / "eval.json").write_text('{"eval": {"ppl": 9.0}}')
    real = Path.read_bytes

    def denied(self, *args, **kwargs):
        if self.name == "eval.json":
            raise PermissionError(13, "Permission denied")
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_bytes", denied)
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert line.endswith(f"{run / 'eval.json'} cannot be read (Permission denied); check its permissions"), (
        line
    )


def test_a_run_path_with_braces_keeps_the_one_line(tmp_path, capsys):
    """Review 132, R3: the refusal's text was built with str.format over the run's path: `runs/kd{lr}` was a
    KeyError traceback in place of the line."""
    run = _finished(tmp_path)
    braced = run.with_name("kd{lr}")
    run.rename(braced)
    (braced / "eval.json").write_text("{")
    line = one_error_line(*cli(capsys, "eval", braced)[::2])
    assert (
        f"{braced / 'eval.json'} is not valid JSON (" in line and "so fix it, or move the file away" in line
    ), line


def test_a_saved_tasks_directory_that_is_gone_gets_the_ways_on(tmp_path, capsys):
    """Try-out 138, F7: the run's saved eval.tasks_dir gone since (a tasks dir in /tmp) was refused as "not a
    directory of lm-eval task YAMLs" with no way on — the user looked for a key they never typed."""
    run = _finished(tmp_path)
    gone = tmp_path / "tasks-gone"
    cfg = {
        "run": {"seed": 1},
        "method": {"preset": "kd"},
        "eval": {"tasks": ["tiny_mc"], "tasks_dir": str(gone)},
    }
    (run / "config.yaml").write_text(yaml.safe_dump(cfg))
    before = snapshot(tmp_path)
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert f"eval.tasks_dir: {gone} does not exist" in line, line
    assert f"`ekd eval {run} eval.tasks_dir=PATH` reads them from where they are now" in line, line
    assert f"`ekd eval {run} 'eval.tasks=[]'` evaluates without them" in line, line
    unchanged(before, tmp_path)
