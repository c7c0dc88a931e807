"""Byte fuzzing of a teacher cache and of a run with checkpoints (issue 11, "Done means"): flip or cut bytes
of any file, run the command that reads it, and require exit 2 with one line or success — never a traceback
(an exception escaping ``ekd.cli.main``), never a change to a file that existed before a refused command.

Few examples (the same on every run under ``make test``; new ones under ``make fuzz``: tests/conftest.py) on one
tiny cache and one tiny run made once per module.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hostile import cli, make_workspace, one_error_line, snapshot, unchanged
from tiny import config_file, write_corpus

FUZZ = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
# (kind, where in the file as a fraction of its length, xor mask or kept fraction)
DAMAGE = st.tuples(st.sampled_from(["flip", "truncate"]), st.floats(0, 1), st.integers(1, 255))


def _damage(path: Path, kind: str, where: float, mask: int) -> None:
    data = bytearray(path.read_bytes())
    if kind == "truncate":
        path.write_bytes(bytes(data[: int(where * len(data))]))
    elif data:
        data[min(int(where * len(data)), len(data) - 1)] ^= mask
        path.write_bytes(bytes(data))


# ------------------------------------------------------------------------------------------- cache


@pytest.fixture(scope="module")
def cache_template(tmp_path_factory):
    root = tmp_path_factory.mktemp("fuzz-cache")
    corpus = write_corpus(root / "corpus", n_docs=24)
    config = config_file(
        root,
        corpus,
        "rs",
        **{
            "method.preset": "rskd",
            "teacher.cache_dir": str(root / "cache"),
            "teacher.cache_shard_samples": 8,
        },
    )
    from ekd.cli import main

    assert main(["-q", "cache", config]) == 0
    return root / "cache"


@FUZZ
@given(
    name=st.sampled_from(
        ["manifest.json", "shard-00000.bin", "shard-00000.idx", "shard-00002.bin", "shard-00002.idx"]
    ),
    damage=DAMAGE,
)
def test_fuzzed_cache_verify_and_info(cache_template, capsys, name, damage):
    with tempfile.TemporaryDirectory() as tmp:
        cache = Path(tmp) / "cache"
        shutil.copytree(cache_template, cache)
        _damage(cache / name, *damage)
        changed = snapshot(cache) != snapshot(cache_template)
        before = snapshot(cache)
        for command in ("verify", "info"):
            rc, _, err = cli(capsys, "cache", command, cache)
            if rc != 0:
                one_error_line(rc, err)
            unchanged(before, cache)  # reading a cache never writes it
        if changed and name.startswith("shard"):
            assert rc == 2 or command == "info"
            rc, _, err = cli(capsys, "cache", "verify", cache)
            one_error_line(rc, err)  # every byte of a shard is covered by its sha256


# ------------------------------------------------------------------------------------------- checkpoint

RUN_EXTRA = {"train.max_steps": 2, "train.checkpoint_every": 1, "method.preset": "ce"}
RUN_FILES = [
    "checkpoints/step-000002/student.safetensors",
    "checkpoints/step-000002/optimizer.pt",
    "checkpoints/step-000002/state.pt",
    "checkpoints/step-000002/manifest.json",
    "checkpoints/latest",
    "ekd-run.json",
    "metrics.jsonl",
    "config.yaml",
]


@pytest.fixture(scope="module")
def run_template(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("fuzz-run"), "fz", RUN_EXTRA)


@settings(FUZZ, max_examples=6)
@given(name=st.sampled_from(RUN_FILES), damage=DAMAGE)
def test_fuzzed_checkpoint_resume(run_template, capsys, name, damage):
    cwd = os.getcwd()
    with tempfile.TemporaryDirectory() as tmp:
        ws = Path(tmp) / "ws"
        shutil.copytree(run_template, ws)
        os.chdir(ws)
        try:
            _damage(Path("runs/fz") / name, *damage)
            config = config_file(Path("."), Path("corpus"), "fz", **RUN_EXTRA)
            before = snapshot(ws)
            rc, _, err = cli(capsys, "distill", config, "train.max_steps=3", "--resume")
            if rc != 0:
                one_error_line(rc, err)
                unchanged(before, ws)
        finally:
            os.chdir(cwd)
