"""Recorded eval-set settings against today's (``ekd.eval.eval_json.recorded_settings``): a key added to ``data``
since an older ekd wrote a record is read at its default, so the checks that compare recorded settings still run
(try-out 101, F1: every eval.json written before ``data.max_document_chars`` existed skipped ``ekd eval``'s
held-out-split check, and a re-evaluation dropped the starting student's figures); a named set is not told apart
by the training split's keys (try-out 102, F1)."""

from __future__ import annotations

import json
import logging

import pytest

from ekd.cli import main
from ekd.config import Config
from ekd.data.documents import TEXT_SPLIT_RULE
from ekd.eval.eval_json import (
    BLOCKS_KEY,
    SETTINGS_KEY,
    STUDENT_INIT_FILE,
    _scored_alike,
    recorded_settings,
    set_settings,
)
from tiny import tiny_overrides, write_corpus

DATA_KEYS = sorted(Config().to_dict()["data"])


@pytest.mark.parametrize("key", DATA_KEYS)
def test_an_entry_without_a_key_added_since_is_read_at_its_default(key):
    today = {**set_settings(Config().to_dict()["data"], "eval"), BLOCKS_KEY: "ab" * 32}
    older = {k: v for k, v in today.items() if k != key}  # written before `key` existed
    assert recorded_settings(older) == recorded_settings(today)
    assert _scored_alike({SETTINGS_KEY: older}, {SETTINGS_KEY: today})
    changed = {**today, "block_length": today["block_length"] * 2}  # a recorded difference still tells apart
    assert not _scored_alike(
        {SETTINGS_KEY: older if key != "block_length" else today}, {SETTINGS_KEY: changed}
    )


def _as_older_ekd(run, dropped=("max_document_chars", "max_documents")) -> None:
    """Rewrite ``run``'s records as an ekd before the ``data`` keys ``dropped`` and the held-out record existed
    wrote them (today's ekd does not record ``max_document_chars``: it never changes a set's blocks)."""
    for path in (run / "eval.json", run / STUDENT_INIT_FILE):
        saved = json.loads(path.read_text())
        for entry in saved.values():
            if isinstance(entry, dict) and isinstance(entry.get(SETTINGS_KEY), dict):
                popped = [entry[SETTINGS_KEY].pop(key, None) for key in dropped]
                assert (
                    popped != [None] * len(dropped) or path.name == STUDENT_INIT_FILE
                )  # kept from the last call
        path.write_text(json.dumps(saved, indent=2))
    marker = json.loads((run / "ekd-run.json").read_text())
    marker.pop("held_out_documents", None)
    (run / "ekd-run.json").write_text(json.dumps(marker, indent=2))


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err, err
    return err


def _run_with_a_named_set(tmp_path, name: str):
    """A one-step run ``name`` holding 30% of a 12-document corpus out, with a named set: (run, corpus, named)."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    named = tmp_path / "named.txt"
    named.write_text("def value(self):\n    return self.items\n" * 4)
    base = tiny_overrides(tmp_path, corpus, name, **{"data.eval_fraction": 0.3, "train.max_steps": 1})
    assert main(["distill", *base, f"data.eval_sources={{named: {named}}}"]) == 0
    return tmp_path / "runs" / name, corpus, named


def test_ekd_eval_of_an_older_run_still_checks_its_sets(tmp_path, capsys, caplog):
    run, corpus, named = _run_with_a_named_set(tmp_path, "older")
    _as_older_ekd(run)
    starts = {
        k: v["student_init"] for k, v in json.loads((run / "eval.json").read_text()).items() if "/" not in k
    }

    assert main(["eval", str(run)]) == 0  # nothing changed: scored again, the start kept
    again = json.loads((run / "eval.json").read_text())
    assert {k: again[k].get("student_init") for k in starts} == starts

    named.write_text("class Items:\n    pass\n" * 4)  # a named set's text changed: said, then scored
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main(["eval", str(run)]) == 0
    assert "eval set 'named': its blocks differ from those the run scored under that name" in caplog.text

    _as_older_ekd(run)
    before = (run / "eval.json").read_text()
    for doc in corpus.iterdir():  # every document edited: the split holds other text now
        doc.write_text(doc.read_text() + "return value\n")
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    line = _error_line(capsys)
    assert "documents the student trained on may now be held out" in line, line
    assert (run / "eval.json").read_text() == before  # nothing written


def test_the_way_on_a_changed_split_keeps_checking_the_named_sets(tmp_path, capsys, caplog):
    """Try-out 102, F1: the refusal of a changed held-out split says to score the named sets only, `ekd eval RUN
    data.eval_fraction=0 'data.eval_sources={name: FILE}'`; that override turned off the check that a named set's
    text is unchanged (a changed one was scored without a word) and dropped the start's figures of an unchanged
    one."""
    run, corpus, named = _run_with_a_named_set(tmp_path, "way")
    start = json.loads((run / "eval.json").read_text())["named"]["student_init"]
    for doc in corpus.iterdir():  # the held-out split changed: refused, with the way on
        doc.write_text(doc.read_text() + "return value\n")
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    way = f"ekd eval {run} data.eval_fraction=0 'data.eval_sources={{name: FILE}}'"
    assert way in _error_line(capsys)
    named_only = ["eval", str(run), "data.eval_fraction=0", f"data.eval_sources={{named: {named}}}"]
    assert main(named_only) == 0  # the set unchanged: its start kept
    assert json.loads((run / "eval.json").read_text())["named"]["student_init"] == start
    named.write_text("class Items:\n    pass\n" * 4)  # its text changed: said, then scored
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main(named_only) == 0
    assert "eval set 'named': its blocks differ from those the run scored under that name" in caplog.text


def test_the_text_split_note_goes_to_runs_that_do_not_record_todays_rule(tmp_path, capsys):
    """Try-out 102, F2: a run made today on a text file named alone, its file then edited, was told that only an ekd
    older than the 2026-12-04 split change could continue it; a run records the rule (ekd-run.json text_split),
    and one that does not (an older ekd's) keeps the note."""
    notes = tmp_path / "notes.txt"
    body = "def f(x):\n    return x + 1\n\n\nclass A:\n    pass\n\n\n"
    notes.write_text("".join(body.replace("1", str(i)) for i in range(40)))
    args = tiny_overrides(tmp_path, notes, "txt", **{"train.max_steps": 1, "data.eval_fraction": 0.2})
    assert main(["distill", *args]) == 0
    marker = tmp_path / "runs" / "txt" / "ekd-run.json"
    assert json.loads(marker.read_text())["text_split"] == TEXT_SPLIT_RULE
    original = notes.read_text()
    notes.write_text(original.replace("pass", "return None"))
    capsys.readouterr()
    assert main(["distill", *args, "train.max_steps=2", "--resume"]) == 2
    line = _error_line(capsys)
    assert "the training data of data.source" in line and "731a482" not in line, line
    older = json.loads(marker.read_text())
    del older["text_split"]  # as an ekd before the record wrote it
    marker.write_text(json.dumps(older))
    assert main(["distill", *args, "train.max_steps=2", "--resume"]) == 2
    assert "only an ekd older than that change (commit 731a482)" in _error_line(capsys)
    notes.write_text(original)  # its data as it read them: today's rule reads them alike, recorded now
    assert main(["distill", *args, "train.max_steps=2", "--resume"]) == 0
    assert json.loads(marker.read_text())["text_split"] == TEXT_SPLIT_RULE


@pytest.mark.parametrize("change", ["extra", "missing"])
def test_ekd_eval_reads_a_document_boundary_record_of_another_ekd(tmp_path, capsys, change):
    """Review of session 31: ekd-run.json's document_boundary was read back as DocumentBoundary(**recorded), so a
    record with a field more (a newer ekd's) or less ended `ekd eval RUN` in a TypeError."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    assert main(["distill", *tiny_overrides(tmp_path, corpus, "b", **{"train.max_steps": 1})]) == 0
    run = tmp_path / "runs" / "b"
    before = json.loads((run / "eval.json").read_text())["eval"]["ppl"]
    marker = json.loads((run / "ekd-run.json").read_text())
    if change == "extra":
        marker["document_boundary"]["mask_id"] = 7
    else:
        del marker["document_boundary"]["pad_id"]
    (run / "ekd-run.json").write_text(json.dumps(marker))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 0, capsys.readouterr().err
    assert json.loads((run / "eval.json").read_text())["eval"]["ppl"] == before
