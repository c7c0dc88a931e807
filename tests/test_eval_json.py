"""``RUN/eval.json``: each set's entry records the data settings it was scored with, and ``ekd eval RUN`` with
other eval sets keeps the results of the sets it does not score (try-out 10: they were deleted)."""

from __future__ import annotations

import json
import logging
from types import SimpleNamespace

import pytest
import yaml

from ekd.cli import main
from ekd.config import READ_ONLY_DATA_KEYS
from ekd.eval.compare import read_run
from ekd.eval.eval_json import (
    BLOCKS_KEY,
    TRAINING_SPLIT_KEYS,
    merge,
    set_settings,
    with_settings,
)
from tiny import tiny_overrides, write_corpus


def test_set_settings_narrow_eval_sources_to_the_set_and_merge_keeps_the_others():
    data = {"block_length": 32, "eval_sources": {"held": "/h", "e": "/e"}}
    assert set_settings(data, "held") == {"block_length": 32, "eval_sources": {"held": "/h"}}
    assert set_settings(data, "eval") == {"block_length": 32, "eval_sources": {}}
    assert data["eval_sources"] == {"held": "/h", "e": "/e"}  # not modified
    new = with_settings({"e": {"ppl": 2.0}, "e/teacher": {"ppl": 1.0}}, data)
    assert new["e"]["data"]["eval_sources"] == {"e": "/e"} and "data" not in new["e/teacher"]
    old = {
        "held": {"ppl": 3.0},
        "held/teacher": {"ppl": 1.5},
        "e": {"ppl": 9.0},
        "e/teacher": {},
        "tasks": {},
    }
    merged, kept = merge(old, new)
    assert kept == ["held"] and list(merged) == ["e", "e/teacher", "held", "held/teacher", "tasks"]
    assert merged["e"] == new["e"] and merged["held"] == old["held"]
    # a set scored again without its teacher loses the old teacher row (another evaluation's)
    assert merge(old, {"e": {"ppl": 2.0}})[0].keys() == {"e", "held", "held/teacher", "tasks"}


@pytest.mark.slow
def test_eval_with_other_eval_sets_keeps_the_others_and_records_each_sets_settings(tmp_path, capsys, caplog):
    corpus = write_corpus(tmp_path / "corpus", n_docs=16)
    held = write_corpus(tmp_path / "held", n_docs=4, seed=1)
    other = tmp_path / "other.txt"
    other.write_text("def index(self):\n    return sorted(items)\n" * 20)
    extra = {"data.eval_sources": f"{{held: {held}}}"}
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "r", **extra)]) == 0, (
        capsys.readouterr().err
    )
    run = tmp_path / "runs" / "r"
    config_data = yaml.safe_load((run / "config.yaml").read_text())["data"]
    for key in READ_ONLY_DATA_KEYS:  # how a set is read, not what it holds
        config_data.pop(key)
    trained = json.loads((run / "eval.json").read_text())
    assert set(trained) == {"eval", "eval/teacher", "held", "held/teacher"}
    blocks = {n: trained[n]["data"].pop(BLOCKS_KEY) for n in ("held", "eval")}  # what each set holds
    assert all(len(b) == 64 for b in blocks.values()) and blocks["held"] != blocks["eval"]
    assert trained["held"]["data"] == {**config_data, "eval_sources": {"held": str(held)}}
    assert trained["eval"]["data"] == {**config_data, "eval_sources": {}}
    trained = json.loads((run / "eval.json").read_text())
    capsys.readouterr()

    with caplog.at_level(logging.INFO, logger="ekd.train.evaluation"):
        assert main(["eval", str(run), f"data.eval_sources={{e: {other}}}"]) == 0
    after = json.loads((run / "eval.json").read_text())
    assert set(after) == {"eval", "eval/teacher", "e", "e/teacher", "held", "held/teacher"}
    assert after["held"] == trained["held"] and after["held/teacher"] == trained["held/teacher"]  # kept
    assert after["e"]["data"]["eval_sources"] == {"e": str(other)} and after["e"]["tokens"] > 0
    assert "eval.json keeps held (not scored now)" in caplog.text
    record = read_run(run)  # ekd compare reads each set with the settings it was scored with
    unread = (BLOCKS_KEY, *TRAINING_SPLIT_KEYS)  # a named set is not told apart by the training split's keys
    recorded = {n: {k: v for k, v in after[n]["data"].items() if k not in unread} for n in ("e", "held")}
    assert record.set_data("e") == recorded["e"] and record.set_data("held") == recorded["held"]
    assert "data" not in record.eval["held"]  # the settings are not a metric

    # held scored again (all its blocks, no teacher): its entry and teacher row are replaced, e is kept
    assert main(["-q", "eval", str(run), "data.max_eval_blocks=0", "eval.teacher=false"]) == 0
    again = json.loads((run / "eval.json").read_text())
    assert set(again) == {"eval", "e", "e/teacher", "held"}
    assert again["held"]["data"]["max_eval_blocks"] == 0 and again["e"] == after["e"]


def test_the_end_of_training_names_the_results_it_drops(tmp_path, caplog):
    """Try-out 11: a --resume that trained further rewrote eval.json with its own sets only; the extra sets and
    tasks an ``ekd eval`` had added (scored on the older student) vanished without a word. They are still dropped
    (they describe another student), and one line names them."""
    import logging

    from ekd.config import load_config
    from ekd.train.evaluation import write_eval_json

    (tmp_path / "eval.json").write_text(json.dumps({"eval": {"ppl": 9.0}, "e": {"ppl": 3.0}, "tasks": {}}))
    with caplog.at_level(logging.INFO, logger="ekd.train.evaluation"):
        write_eval_json(
            tmp_path, load_config(), {"eval": {"ppl": 8.0}}, keep=False, data=SimpleNamespace(blocks={})
        )
    assert set(json.loads((tmp_path / "eval.json").read_text())) == {"eval"}
    assert "e, tasks dropped (scored on the student before these steps" in caplog.text


def test_the_starting_students_rows_of_an_unreadable_eval_json_are_left_out_with_a_word(tmp_path, caplog):
    """Review 132, R2: `student_init_rows_of` parsed eval.json alone and swallowed a damaged file: the printed table
    lost the `(student init)` rows without a word. It reads through `read_eval_json` and says so."""
    import logging

    from ekd.eval.eval_json import student_init_rows_of

    (tmp_path / "eval.json").write_text("{")
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert student_init_rows_of(tmp_path) == {}
    assert "is not valid JSON" in caplog.text and "leaves out the starting student's figures" in caplog.text
    (tmp_path / "eval.json").write_text("\ufeff{}")  # a byte-order mark: read past
    assert student_init_rows_of(tmp_path) == {}


def test_a_perplexity_that_overflowed_reads_back_as_inf_not_as_unscored(tmp_path):
    """Try-out 150, F3: strict JSON writes +inf as null, so a starting student whose perplexity overflowed (a mean
    loss over ~709.8 nats) read back as NaN and its row showed "—" (not scored) beside the trained row's "inf". Read
    back as +inf where its finite loss says it overflowed; a null beside a loss that does not overflow stays null."""
    import math

    from ekd.eval.eval_json import read_eval_json, student_init_rows_of
    from ekd.eval.report import results_table
    from ekd.io import atomic_write_text, strict_json
    from ekd.train.evaluation import read_student_init, write_student_init

    figures = {"loss": 59954.3, "ppl": math.inf, "loss_no_boundary": 2.5, "ppl_no_boundary": math.nan}
    entries = {"eval": {**figures, "tokens": 10, "student_init": dict(figures)}, "tasks": {"ppl": None}}
    write_student_init(tmp_path, {"eval": dict(figures)})
    assert json.loads((tmp_path / "eval_student_init.json").read_text())["eval"]["ppl"] is None  # strict JSON
    start = read_student_init(tmp_path)["eval"]
    assert start["ppl"] == math.inf and start["ppl_no_boundary"] is None, start
    atomic_write_text(tmp_path / "eval.json", strict_json(entries))
    (row,) = student_init_rows_of(tmp_path).values()
    assert row["ppl"] == math.inf and row["ppl_no_boundary"] is None, row
    saved = json.loads((tmp_path / "eval.json").read_text())
    read = read_eval_json(tmp_path)
    assert read["eval"]["ppl"] == math.inf and read["tasks"] == {"ppl": None} and saved["eval"]["ppl"] is None
    table = results_table([{"ppl": row["ppl"]}], [("ppl", "ppl", ".2f")])
    assert "| inf |" in table, table


def test_teacher_figures_stay_where_the_student_is_scored_alike_without_the_teacher():
    """Try-out 138: `ekd eval RUN eval.teacher=false` (the teacher gone) dropped the KL, agreement and teacher rows
    measured at the end of training, though the run's export scored the same there: kept where the set is scored
    alike and the student's own figures agree; another student's figures or another scoring drop them."""
    from ekd.eval.eval_json import with_teacher_figures

    record = {"data": {"source": "c", "blocks_sha256": "ab"}, "scoring": {"ece_bins": 15}}
    teacher = {"model": "org/t", "revision": "", "weights": "w", "dtype": "float32"}
    old = {
        "eval": {
            **record,
            "loss": 2.5,
            "ppl": 12.18,
            "tokens": 120,
            "kl": 0.4,
            "agree": 0.3,
            "teacher": teacher,
        },
        "eval/teacher": {"loss": 2.0, "tokens": 120},
        "other": {**record, "loss": 3.0, "tokens": 60, "kl": 0.5, "teacher": teacher},
    }
    new = {
        "eval": {**record, "loss": 2.5000001, "ppl": 12.18, "tokens": 120},  # another thread count's rounding
        "other": {**record, "loss": 3.1, "tokens": 60},  # another student
    }
    out, kept = with_teacher_figures(new, old)
    assert kept == ["eval"] and list(out) == ["eval", "eval/teacher", "other"]
    assert out["eval"]["kl"] == 0.4 and out["eval"]["agree"] == 0.3 and out["eval"]["teacher"] == teacher
    assert out["eval"]["loss"] == 2.5000001 and out["eval/teacher"] == old["eval/teacher"]
    assert "kl" not in out["other"] and "teacher" not in out["other"]
    assert "kl" not in new["eval"]  # not modified
    scored_otherwise = {"eval": {**new["eval"], "scoring": {"ece_bins": 5}}}
    assert with_teacher_figures(scored_otherwise, old)[1] == []
    with_teacher = {
        "eval": {**new["eval"], "kl": 0.41, "teacher": teacher}
    }  # scored with one: its own figures
    assert with_teacher_figures(with_teacher, old) == (with_teacher, [])


def test_a_finite_kl_replaced_by_a_non_finite_teachers_is_said(tmp_path, caplog):
    """Try-out 158, F4: `ekd eval RUN model.teacher_dtype=float16` (a teacher that overflows) replaced the run's finite
    KL with null; the warning said only that the new figures were NaN."""
    from ekd.train.evaluation import say_teacher_figures_nulled

    teacher = {"model": "/t", "dtype": "float32"}
    old = {
        "eval": {"loss": 2.0, "kl": 0.4, "teacher": teacher},
        "other": {"loss": 2.0, "kl": None},
        "third": {"loss": 1.0, "kl": 0.1},
        "fourth": {"loss": 1.0, "kl": 0.1},
    }
    new = {
        "eval": {"loss": 2.0, "kl": float("nan")},
        "other": {"loss": 2.0, "kl": float("nan")},
        "third": {"kl": 0.2},
        "fourth": {
            "loss": float("nan"),
            "kl": float("nan"),
        },  # the student's own figures NaN: not the teacher's
    }
    with caplog.at_level(logging.WARNING, logger="ekd"):
        say_teacher_figures_nulled(tmp_path / "eval.json", old, new)
        say_teacher_figures_nulled(tmp_path / "eval.json", old, old)
    said = [r.getMessage() for r in caplog.records]
    assert (
        len(said) == 1 and "the finite KL, agreement and entropy figures of eval measured before" in said[0]
    ), said
    assert said[0].endswith("model.teacher_dtype=float32 scores them again"), said
