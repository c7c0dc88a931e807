"""Records an older ekd wrote (eval.json's data settings, ekd-run.json), read by today's: a key added to ``data``
since is read at its default, so the checks that compare recorded settings still run (try-out 101, F1: every
eval.json written before ``data.max_document_chars`` existed skipped ``ekd eval``'s held-out-split check, and a
re-evaluation dropped the starting student's figures)."""

from __future__ import annotations

import json
import logging

import pytest

from ekd.cli import main
from ekd.config import Config
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


def test_ekd_eval_of_an_older_run_still_checks_its_sets(tmp_path, capsys, caplog):
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    named = tmp_path / "named.txt"
    named.write_text("def value(self):\n    return self.items\n" * 4)
    base = tiny_overrides(tmp_path, corpus, "older", **{"data.eval_fraction": 0.3, "train.max_steps": 1})
    assert main(["distill", *base, f"data.eval_sources={{named: {named}}}"]) == 0
    run = tmp_path / "runs" / "older"
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
