"""One reader for ekd's own JSON records (``ekd.json_record``, review 132 R2): absent is None, a record that is there
but cannot be read is one line naming it — whichever record it is (a run's, eval.json's, a LoRA export's base note,
the starting student's figures, the demo's stamps, metrics.jsonl)."""

from __future__ import annotations

import json
import logging

import pytest

from ekd.errors import EkdError, ModelError, RunDirError
from ekd.json_record import read_json_record
from ekd.models.adapter_dir import BASE_NOTE
from ekd.models.lora import load_exported_student
from ekd.train.metrics_log import read_metrics

BOM = b"\xef\xbb\xbf"


def test_absent_is_none_and_every_other_state_is_one_line(tmp_path):
    path = tmp_path / "r.json"
    assert read_json_record(path, "fix it") is None
    path.write_bytes(BOM + b'{"a": 1}')
    assert read_json_record(path, "fix it") == {"a": 1}  # an editor's byte-order mark is read past
    path.write_bytes(b'{"a": "\xff"}')
    with pytest.raises(RunDirError, match=r"r\.json is not UTF-8 text \(line 1, byte 7\); fix it$"):
        read_json_record(path, "fix it", RunDirError)
    path.write_bytes(b'{"a": 1')
    with pytest.raises(
        EkdError, match=r"is not valid JSON \(Expecting ',' delimiter: line 1 column 8 \(char 7\)\); fix"
    ):
        read_json_record(path, "fix it")
    path.unlink()
    path.mkdir()
    with pytest.raises(EkdError, match=r"r\.json is not a file; move it away$"):
        read_json_record(path, "fix it", not_a_file="move it away")


def test_a_metrics_file_that_is_not_utf8_is_refused_not_read_with_replacement_characters(tmp_path):
    # before: decoded with errors="replace", the bad byte became U+FFFD inside a key, and the row was read
    row = json.dumps({"step": 1, "train/loss": 2.0}).encode()
    (tmp_path / "metrics.jsonl").write_bytes(row.replace(b"loss", b"lo\xffss") + b"\n" + row + b"\n")
    with pytest.raises(RunDirError, match=r"metrics\.jsonl is not UTF-8 text \(line 1, byte \d+\)"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_bytes(BOM + row + b"\n")
    assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 2.0}]


def _adapter_dir(tmp_path, note: bytes):
    (tmp_path / "adapter_config.json").write_text("{}")
    (tmp_path / BASE_NOTE).write_bytes(note)
    return tmp_path


@pytest.mark.parametrize(
    "note, words",
    [
        (b'{"base_model": "preset:llama-small", "head_rows": 64', "is not valid JSON (Expecting"),
        (b'{"head_rows": 64}', "names no base model and head size"),
        (b'{"base_model": "preset:llama-small", "head_rows": "64"}', "names no base model and head size"),
        (b'["preset:llama-small"]', "names no base model and head size"),
    ],
)
def test_a_damaged_lora_base_note_is_one_line_not_a_traceback(tmp_path, note, words):
    # before: json.loads / note["base_model"] raised JSONDecodeError or KeyError out of `ekd eval`
    pytest.importorskip("peft")
    with pytest.raises(ModelError) as e:
        load_exported_student(_adapter_dir(tmp_path, note))
    assert words in str(e.value) and "\n" not in str(e.value), e.value
    assert "restore it from a copy of the run" in str(e.value), e.value


def test_the_starting_students_figures_are_read_past_a_byte_order_mark(tmp_path, caplog):
    from ekd.eval.eval_json import STUDENT_INIT_FILE
    from ekd.train.evaluation import read_student_init

    entries = {"eval": {"ppl": 9.5, "ece": 0.1}}
    (tmp_path / STUDENT_INIT_FILE).write_bytes(BOM + json.dumps(entries).encode())
    with caplog.at_level(logging.WARNING):
        assert read_student_init(tmp_path) == entries  # before: a warning, and no starting student's rows
    assert not caplog.records
    (tmp_path / STUDENT_INIT_FILE).write_text('{"eval": ')
    with caplog.at_level(logging.WARNING):
        assert read_student_init(tmp_path) is None
    assert "is not valid JSON" in caplog.text and "no starting student's figures" in caplog.text


def test_a_damaged_demo_stamp_is_said_and_read_as_none(tmp_path, capsys):
    from ekd.demo import _teacher_row

    stamp = tmp_path / "teacher" / "ekd_demo.json"
    stamp.parent.mkdir()
    stamp.write_text('{"signature": "x", "eval": {"eval": {"ppl": 3')
    assert _teacher_row(tmp_path) == {}  # before: a JSONDecodeError out of the demo
    assert "ekd_demo.json is not valid JSON" in capsys.readouterr().out
    stamp.write_bytes(BOM + json.dumps({"eval": {"eval": {"ppl": 3.0}}}).encode())
    assert _teacher_row(tmp_path) == {"method": "(teacher)", "eval/ppl": 3.0}


def test_try_out_141_links_to_nothing_and_a_torn_character(tmp_path, capsys, caplog):
    """Try-out 141: F6 a record that is a link to nothing was read as absent (every check off); F3 a link that leads
    back to itself was called a link to something that does not exist, to be mounted; F2 `ekd eval` / `ekd compare`
    of a run directory linked to nothing blamed relative paths / a missing config.yaml; F5 a metrics.jsonl whose last
    line was cut inside a character refused the run, where any other cut is dropped as torn."""
    from ekd.cli import main

    record = tmp_path / "ekd-run.json"
    record.symlink_to(tmp_path / "nowhere.json")
    with pytest.raises(
        EkdError, match=r"ekd-run\.json is a symbolic link to .*nowhere\.json, which does not exist"
    ):
        read_json_record(record, "fix it")
    loop = tmp_path / "loop.json"
    loop.symlink_to(loop)
    with pytest.raises(EkdError, match=r"loop\.json is a symbolic link that leads back to itself \(a loop\)"):
        read_json_record(loop, "fix it")
    run = tmp_path / "run"
    run.symlink_to(tmp_path / "mnt" / "run")
    for command in (["eval", str(run)], ["compare", str(run), "--out", str(tmp_path / "o")]):
        assert main(command) == 2
        err = capsys.readouterr().err
        assert f"{run} is a symbolic link to {tmp_path / 'mnt' / 'run'}, which does not exist" in err, err
    row = json.dumps({"step": 1, "train/loss": 2.0}).encode()
    (tmp_path / "metrics.jsonl").write_bytes(row + b"\n" + '{"step": 2, "name": "é'.encode()[:-1])
    with caplog.at_level(logging.WARNING):
        assert read_metrics(tmp_path) == [{"step": 1, "train/loss": 2.0}]
    assert "dropping a torn last line" in caplog.text
