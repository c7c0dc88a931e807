"""Weights & Biases logging (issue 15 part 4): an offline run writes its run directory with the resolved
config and the same scalars as metrics.jsonl; a missing wandb is one line."""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

import pytest

from ekd.cli import main
from ekd.config import load_config
from ekd.train.trainer import train
from tiny import tiny_overrides, write_corpus


def _log_records(path: Path) -> list[bytes]:
    """The records of a W&B transaction log (``run-<id>.wandb``): a 7-byte ``:W&B`` header, then LevelDB log
    blocks of 32 KiB, each record a 7-byte header (crc32c, little-endian length, type: 1 full, 2 first,
    3 middle, 4 last) and its bytes."""
    data = path.read_bytes()
    assert data[:4] == b":W&B"
    pos, block, records, pending = 7, 32768, [], b""
    while pos + 7 <= len(data):
        room = block - pos % block
        if room < 7:  # a block's trailer: zero padding
            pos += room
            continue
        length, kind = struct.unpack("<HB", data[pos + 4 : pos + 7])
        pending += data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind in (1, 4):
            records.append(pending)
            pending = b""
    return records


def _read_run(path: Path) -> tuple[dict, dict[int, dict[str, float]]]:
    """(config section → value, step → scalars) of an offline W&B run."""
    from wandb.proto import wandb_internal_pb2

    config: dict = {}
    history: dict[int, dict[str, float]] = {}
    for raw in _log_records(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(raw)
        kind = record.WhichOneof("record_type")
        if kind == "run":
            config.update({i.key: json.loads(i.value_json) for i in record.run.config.update})
        elif kind == "config":
            config.update({i.key: json.loads(i.value_json) for i in record.config.update})
        elif kind == "history":
            # a key with '/' is stored split into its parts (nested_key)
            row = {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in record.history.item}
            step = row.pop("_step", record.history.step.num)
            history.setdefault(int(step), {}).update(row)
    return config, history


def test_offline_run_writes_the_config_and_the_metrics(tmp_path, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_DIR", str(tmp_path / "wandb-dir"))
    monkeypatch.setenv("WANDB_MODE", "offline")
    (tmp_path / "wandb-dir").mkdir()
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    extra = {
        "log.wandb_project": "ekd-test",
        "log.wandb_mode": "offline",
        "eval.teacher": False,
        "train.max_steps": 2,
    }
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus, "wb", **extra))
    run_dir = train(cfg).run_dir

    (log_file,) = (tmp_path / "wandb-dir" / "wandb").glob("offline-run-*/run-*.wandb")
    assert log_file.stem == "run-" + (run_dir / "wandb-id").read_text().strip()
    config, history = _read_run(log_file)
    assert config["run"]["name"] == "wb"
    assert config["log"]["wandb_project"] == "ekd-test"
    assert config["train"]["max_steps"] == 2
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sorted(history) == [0, 1, 2]  # 0: the starting student's evaluation (eval.student_init)
    for row in rows:  # every finite scalar of metrics.jsonl, at its step
        logged = history[row["step"]]
        for key, value in row.items():
            if key != "step" and value is not None:
                assert logged[key] == pytest.approx(value, rel=1e-12), key
    assert "eval/eval/ppl" in history[2] and "eval/eval/ppl" in history[0]


def test_missing_wandb_is_one_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "wandb", None)  # import wandb → ImportError
    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    overrides = tiny_overrides(tmp_path, corpus, "nowb", **{"log.wandb_project": "p", "train.max_steps": 1})
    assert main(["distill", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'ekd[wandb]'" in err[0], err
    assert not (tmp_path / "runs" / "nowb").exists()  # nothing is left behind


@pytest.mark.parametrize("key", ["log.wandb_mode=offline", "log.wandb_name=x"])
def test_wandb_settings_without_a_project_are_refused_not_ignored(key):
    from ekd.config import ConfigError, load_config

    with pytest.raises(ConfigError, match="log.wandb_project is empty") as e:
        load_config(None, [key])
    assert "\n" not in str(e.value)
