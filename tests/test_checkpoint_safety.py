"""Checkpoints and run files under damage (issue 11, items 6, 7, 10): every checkpoint file carries a sha256
checked on resume (a corrupt newest checkpoint falls back to the previous intact one, with a log line), a
checkpoint that verifies but does not load is one line, a torn ``metrics.jsonl`` resumes, a full or
read-only disk is one line naming the directory, and nothing that existed is changed by a refused command.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
from pathlib import Path

import pytest
import torch
import yaml

from ekd.io import DiskError, atomic_dir, atomic_write_text, writing
from hostile import cli, copy_workspace, failing_open, make_workspace, one_error_line, snapshot, unchanged
from tiny import config_file

EXTRA = {"train.max_steps": 2, "train.checkpoint_every": 1, "method.preset": "kd", "method.ce_weight": 0.5}
RUN = Path("runs/ck")
CKPT = RUN / "checkpoints"


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """``runs/ck``: a finished 2-step KD run with checkpoints at steps 1 and 2."""
    return make_workspace(tmp_path_factory.mktemp("ckpt-safety"), "ck", EXTRA)


@pytest.fixture
def ws(template, tmp_path, monkeypatch):
    return copy_workspace(template, tmp_path, monkeypatch)


def _config(**extra) -> str:
    return config_file(Path("."), Path("corpus"), "ck", **{**EXTRA, **extra})


def _resume(capsys, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "distill", _config(), "train.max_steps=3", *extra, "--resume")


def _flip(path: Path, offset: int = 200) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x55
    path.write_bytes(bytes(data))


def _forge(path: Path, data: bytes) -> None:
    """Replace a checkpoint file and update its manifest so that it verifies (a hand-made or hostile file)."""
    path.write_bytes(data)
    manifest_path = path.parent / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["files"][path.name] = hashlib.sha256(data).hexdigest()
    manifest_path.write_text(json.dumps(manifest))


def _train_steps(run: Path) -> list[int]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if "train/loss" in r]


def test_checkpoints_record_a_sha256_per_file(ws):
    manifest = json.loads((CKPT / "step-000002" / "manifest.json").read_text())
    assert manifest["step"] == 2
    assert set(manifest["files"]) == {"student.safetensors", "optimizer.pt", "state.pt"}
    for name, digest in manifest["files"].items():
        assert hashlib.sha256((CKPT / "step-000002" / name).read_bytes()).hexdigest() == digest


# ------------------------------------------------------------------------------------------- item 10


@pytest.mark.parametrize(
    "damage",
    [
        lambda d: _flip(d / "student.safetensors", 5000),  # 1 byte of the weights: loads fine, but wrong
        lambda d: _flip(d / "optimizer.pt", 3000),
        lambda d: _flip(d / "state.pt", 400),
        lambda d: (d / "student.safetensors").write_bytes((d / "student.safetensors").read_bytes()[:1000]),
        lambda d: (d / "manifest.json").unlink(),
        lambda d: (d / "manifest.json").write_text("{"),
        lambda d: (d / "state.pt").unlink(),
    ],
    ids=[
        "weights-flip",
        "optimizer-flip",
        "state-flip",
        "weights-truncated",
        "no-manifest",
        "bad-manifest",
        "no-state",
    ],
)
def test_corrupt_newest_checkpoint_falls_back_to_the_previous_intact_one(ws, capsys, caplog, damage):
    damage(CKPT / "step-000002")
    with caplog.at_level(logging.INFO):
        rc, _, err = _resume(capsys)
    assert rc == 0, err
    log = caplog.text
    assert "skipping checkpoint step-000002" in log and "resumed from" in log and "step-000001" in log
    assert _train_steps(RUN) == [1, 2, 3]  # steps 2 and 3 retrained from the step-1 checkpoint


@pytest.mark.parametrize("pointer", ["step-000002/../..", "../../corpus", "", "\xff"])
def test_a_bad_latest_pointer_is_ignored(ws, capsys, pointer):
    (CKPT / "latest").write_text(pointer)
    rc, _, err = _resume(capsys)
    assert rc == 0, err
    assert _train_steps(RUN) == [1, 2, 3]  # resumed from step-000002, the newest checkpoint directory


def test_no_intact_checkpoint_is_refused_in_one_line(ws, capsys, caplog):
    _flip(CKPT / "step-000002" / "student.safetensors", 5000)
    _flip(CKPT / "step-000001" / "optimizer.pt", 3000)
    before = snapshot(ws)
    with caplog.at_level(logging.INFO):
        rc, _, err = _resume(capsys)
    line = one_error_line(rc, err)
    assert "no intact checkpoint" in line and "student.safetensors is corrupt" in line
    assert "the older step-000001 fails verification too" in line  # every rejected checkpoint is named
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], "the error line alone says it"
    unchanged(before, ws)


def test_non_finite_stop_names_a_verified_checkpoint(ws):
    from ekd.errors import NonFiniteLossError
    from ekd.train.trainer import _stop_non_finite

    _flip(CKPT / "step-000002" / "optimizer.pt", 3000)
    with pytest.raises(NonFiniteLossError, match="step-000001 is kept"):
        _stop_non_finite(2, RUN)


# ------------------------------------------------------------------------------------------- item 6


class _Evil:
    """Unpickling this would run a shell command (a hostile state.pt)."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def _torch_bytes(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


@pytest.mark.parametrize(
    "name, data",
    [
        ("student.safetensors", b"\xff" * 8 + b"{garbage" * 20),  # a corrupt safetensors header
        ("student.safetensors", (1 << 40).to_bytes(8, "little") + b"{}"),  # header length past the end
        ("state.pt", _torch_bytes({"step": _Evil(), "loader": {}, "policy": {}, "rng": None})),
        ("state.pt", _torch_bytes({"step": 1})),  # loads, lacks the data position
        ("state.pt", _torch_bytes({"step": "x", "loader": 1, "policy": 2, "rng": 3})),
        ("state.pt", b"not a pickle"),
        ("optimizer.pt", _torch_bytes({"state": {}, "param_groups": []})),  # another optimizer
    ],
    ids=[
        "header",
        "header-length",
        "hostile-pickle",
        "state-lacks-keys",
        "state-wrong-types",
        "state-bytes",
        "optimizer",
    ],
)
def test_checkpoint_that_verifies_but_does_not_load_is_one_line(ws, capsys, name, data):
    _forge(CKPT / "step-000002" / name, data)
    before = snapshot(ws)
    rc, _, err = _resume(capsys)
    assert "step-000002 is unreadable" in one_error_line(rc, err)
    assert not Path("PWNED").exists()  # nothing was executed
    unchanged(before, ws)


def test_torn_last_line_of_metrics_resumes(ws, capsys, caplog):
    metrics = RUN / "metrics.jsonl"
    metrics.write_bytes(metrics.read_bytes() + b'{"step": 3, "train/lo')  # as after ENOSPC mid-write
    with caplog.at_level(logging.WARNING):
        rc, _, err = _resume(capsys)
    assert rc == 0, err
    assert "torn last line" in caplog.text
    assert _train_steps(RUN) == [1, 2, 3]


def test_bad_line_inside_metrics_is_one_line(ws, capsys):
    metrics = RUN / "metrics.jsonl"
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{torn", *lines[1:]]) + "\n")
    before = snapshot(ws)
    rc, _, err = _resume(capsys)
    assert "metrics.jsonl line 2 is not a JSON object" in one_error_line(rc, err)
    unchanged(before, ws)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["run.name=file"], "is a file, not a run directory"),
        (["run.output_dir=corpus/doc_000.py"], "is a file, not a directory"),
    ],
    ids=["run-name-is-a-file", "output-dir-is-a-file"],
)
def test_a_file_in_the_way_is_one_line(ws, capsys, overrides, message):
    Path("runs/file").write_text("not a run\n")
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), *overrides)
    assert message in one_error_line(rc, err)
    unchanged(before, ws)


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only directories")
def test_read_only_output_directory_is_one_line(ws, capsys):
    Path("ro").mkdir()
    Path("ro").chmod(0o555)
    try:
        rc, _, err = cli(capsys, "distill", _config(), "run.output_dir=ro")
        assert "permission denied writing to ro" in one_error_line(rc, err)
    finally:
        Path("ro").chmod(0o755)


# ------------------------------------------------------------------------------------------- item 7


@pytest.mark.parametrize(
    "code, message",
    [
        (errno.ENOSPC, "no space left on device"),
        (errno.EACCES, "permission denied"),
        (errno.EROFS, "read-only"),
        (errno.EFBIG, "file too large for the file-size limit (ulimit -f)"),  # try-out 36: was a traceback
    ],
    ids=["enospc", "eacces", "erofs", "efbig"],
)
def test_disk_failure_during_a_checkpoint_is_one_line_and_resumable(ws, capsys, monkeypatch, code, message):
    failing_open(monkeypatch, code, "step-000003")
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    line = one_error_line(rc, err)
    assert message in line and "checkpoints" in line and "unexpected pos" not in line
    names = sorted(p.name for p in CKPT.iterdir())
    assert names == ["latest", "step-000001", "step-000002"]  # no half checkpoint left behind
    monkeypatch.undo()
    monkeypatch.chdir(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    assert rc == 0, err
    assert _train_steps(RUN) == [1, 2, 3, 4]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_an_interrupt_inside_torch_save_is_said_as_an_interrupt(ws, capsys, monkeypatch, signum):
    """Try-out 52, F1: an interrupt that lands inside ``torch.save`` ends its zip file half written, whose
    clean-up raises ``RuntimeError: [enforce fail at inline_container.cc:672] . unexpected pos`` with the
    interrupt only in its ``__context__``: a traceback instead of ``ekd: interrupted``. The command was stopped
    from outside, and says so with the checkpoint kept; the half-written one is removed."""
    import signal
    import threading

    from ekd import io

    write = io._HashingFile.write
    sent, writes = [], []

    def write_or_signal(self, data):
        name = Path(self._f.name)
        if name.name == "optimizer.pt.tmp" and name.parent.name == "step-000003.tmp":
            writes.append(len(data))
        if len(writes) == 3 and not sent:  # past the zip file's first record
            sent.append((signum, signal.getsignal(getattr(signal, signum))))  # before: the handler raises
            # to this (the main) thread: a signal to the process may be taken by another thread (gloo's,
            # the tokenizers'), which sets Python's flag only later — once after torch.save had returned
            signal.pthread_kill(threading.get_ident(), getattr(signal, signum))
            sum(range(10_000))  # Python runs the handler between bytecodes: here, inside torch.save
        return write(self, data)

    monkeypatch.setattr(io._HashingFile, "write", write_or_signal)
    # Ctrl-C as a terminal delivers it: a suite started in the background by a non-interactive shell inherits
    # SIGINT ignored, which Python (and ekd) leave ignored — the signal then did nothing, and the run finished
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and rc == (143 if signum == "SIGTERM" else 130), (sent, err)  # the handler it met, if not
    by = " (SIGTERM)" if signum == "SIGTERM" else ""
    kept = "checkpoint step-000002 is kept: continue with the same command (--resume)"  # it has --resume
    assert err.strip().splitlines() == [f"ekd: interrupted{by}; {kept}"]
    assert sorted(p.name for p in CKPT.iterdir()) == ["latest", "step-000001", "step-000002"]
    monkeypatch.undo()
    monkeypatch.chdir(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    assert rc == 0, err
    assert _train_steps(RUN) == [1, 2, 3, 4]


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
@pytest.mark.parametrize("at", ["fsync_dir", "_prune"])
def test_an_interrupt_after_a_checkpoint_is_in_place_waits_for_the_pruning(
    ws, capsys, monkeypatch, signum, at
):
    """Try-out 84, F4: a Ctrl-C between putting a checkpoint in place and pruning the oldest left three with
    ``keep_checkpoints=2`` (or, inside the pruning, an old one half deleted). The pointer and the pruning finish
    first; the interrupt is said as usual and --resume continues from the new checkpoint."""
    import signal
    import threading

    from ekd.train import checkpoint

    real = getattr(checkpoint, at)
    sent = []

    def signal_then_run(*args, **kwargs):
        if not sent and any("step-000003" in str(a) or str(a).endswith("checkpoints") for a in args):
            sent.append(signum)
            signal.pthread_kill(threading.get_ident(), getattr(signal, signum))
            sum(range(10_000))  # Python runs the handler between bytecodes: here, before the real call
        return real(*args, **kwargs)

    monkeypatch.setattr(checkpoint, at, signal_then_run)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C (above)
    try:
        rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert sent and rc == (143 if signum == "SIGTERM" else 130), (sent, err)
    by = " (SIGTERM)" if signum == "SIGTERM" else ""
    kept = "checkpoint step-000003 is kept: continue with the same command (--resume)"
    assert err.strip().splitlines() == [f"ekd: interrupted{by}; {kept}"]
    assert sorted(p.name for p in CKPT.iterdir()) == ["latest", "step-000002", "step-000003"]
    assert (CKPT / "latest").read_text() == "step-000003"
    monkeypatch.undo()
    monkeypatch.chdir(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    assert rc == 0, err
    assert _train_steps(RUN) == [1, 2, 3, 4]


def test_a_full_disk_at_the_export_says_that_resume_finishes_the_run(ws, capsys, monkeypatch):
    """Try-out 36, F3: a full disk while exporting the student (after the last step's checkpoint) ended with
    '… free space there and rerun' alone; the rerun was refused (the directory holds a run). The line says how to
    finish: --resume from the last step's checkpoint exports and evaluates."""
    from ekd.train import trainer as trainer_mod

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_mod, "save_model_dir", full_disk)
    line = one_error_line(*_resume(capsys)[::2])
    assert "no space left on device" in line and "student" in line, line  # the export named (try-out 87, F4)
    assert line.endswith(
        "; checkpoint step-000003 of the last step is kept: once fixed, finish the run (export and evaluation) "
        "with the same command (--resume)"  # the command given resumed already
    ), line
    monkeypatch.undo()
    monkeypatch.chdir(ws)
    rc, _, err = _resume(capsys)
    assert rc == 0, err
    assert json.loads((RUN / "ekd-run.json").read_text())["state"] == "finished"


@pytest.mark.skipif(not Path("/dev/full").is_char_device(), reason="needs the /dev/full device")
def test_torch_full_disk_error_is_reported_as_such():
    """torch wraps ENOSPC in RuntimeError('unexpected pos ...'); the cause is found and named."""
    full = open("/dev/full", "wb")  # opened, never replaced: /dev/full stays the device  # noqa: SIM115
    with pytest.raises(DiskError, match="no space left on device writing to /dev"), writing("/dev"), full:
        torch.save({"w": torch.zeros(1000)}, full)


def test_atomic_writes_leave_the_old_file_or_directory_on_failure(tmp_path, monkeypatch):
    atomic_write_text(tmp_path / "a.txt", "old")
    with atomic_dir(tmp_path / "tok") as staging:
        (staging / "tokenizer.json").write_text("{}")
    failing_open(monkeypatch, errno.ENOSPC, "a.txt")
    with pytest.raises(DiskError, match=f"no space left on device writing to {tmp_path}"):
        atomic_write_text(tmp_path / "a.txt", "new" * 100)
    assert (tmp_path / "a.txt").read_text() == "old"
    with pytest.raises(DiskError, match="no space left"), atomic_dir(tmp_path / "tok") as staging:
        (staging / "tokenizer.json").write_text("")  # a half-written tokenizer, then the disk is full
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "tok" / "tokenizer.json").read_text() == "{}"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "tok"]


def test_tokenizer_save_is_atomic(tmp_path, monkeypatch):
    """A full disk while saving the trained tokenizer leaves no 0-byte tokenizer.json for --resume to reload."""
    from transformers import PreTrainedTokenizerFast

    from ekd.data import train_bpe_tokenizer

    def full_disk(self, directory, *args, **kwargs):
        Path(directory, "tokenizer.json").write_text("")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(PreTrainedTokenizerFast, "save_pretrained", full_disk)
    with pytest.raises(DiskError, match="no space left on device"):
        train_bpe_tokenizer(["def value(self): return self.items"] * 50, 300, tmp_path / "tokenizer")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("every, written", [(1, [3, 4]), (3, [3, 4]), (2, [4])])
def test_the_last_step_is_checkpointed_once(ws, capsys, monkeypatch, every, written):
    """Try-out 38, F7: with train.checkpoint_every dividing train.max_steps the last step's checkpoint (fp32 weights
    and AdamW state) was written twice, in the loop and again after it."""
    from ekd.train import checkpointed_run

    steps, real = [], checkpointed_run.save_checkpoint

    def save(run_dir, step, *args, **kwargs):
        steps.append(step)
        return real(run_dir, step, *args, **kwargs)

    monkeypatch.setattr(checkpointed_run, "save_checkpoint", save)
    rc, _, err = cli(
        capsys, "distill", _config(**{"train.checkpoint_every": every}), "train.max_steps=4", "--resume"
    )
    assert rc == 0, err
    assert steps == written
    # every segment's layout is recorded (try-out 37): one process throughout is one segment layout
    (segment,) = json.loads((RUN / "ekd-run.json").read_text())["segments"]
    micro_batch = yaml.safe_load((RUN / "config.yaml").read_text())["train"]["micro_batch_size"]
    # with the arithmetic as it ran (what ekd compare groups by): 'auto' is fp32 and a float32 teacher on a CPU
    layout = {"ranks": 1, "parallel": "ddp", "micro_batch_size": micro_batch}
    assert segment == {**layout, "autocast": "fp32", "teacher_dtype": "float32"}


def test_segment_layouts_follow_the_resumes():
    from ekd.train.run_totals import segment_layouts

    a, b = {"ranks": 2, "parallel": "fsdp"}, {"ranks": 1, "parallel": "ddp"}
    assert segment_layouts({"layouts": []}, a) == [a]
    assert segment_layouts({"layouts": [a]}, a) == [a]  # resumed alike: still one layout
    assert segment_layouts({"layouts": [a]}, b) == [a, b]
    # an older ekd's segment records no micro-batch: the same ranks and engine are no new segment (review 99)
    assert segment_layouts({"layouts": [b]}, {**b, "micro_batch_size": 4}) == [b]
    assert segment_layouts({"seconds": 1.0}, b) is None  # a checkpoint of an older ekd: earlier ones unknown
    assert segment_layouts(None, b) is None


def test_a_directory_built_atomically_has_files_readable_as_the_umask_says(tmp_path):
    """Try-out 38, F12: transformers writes model.safetensors through a private temp file, so every export's
    weights were 0600 beside a 0644 config.json — unreadable to another account that serves the model."""
    import stat

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "student") as staging:
            private = staging / "model.safetensors"
            private.write_bytes(b"w")
            private.chmod(0o600)
            (staging / "config.json").write_text("{}")
    finally:
        os.umask(old)
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in (tmp_path / "student").iterdir()}
    assert modes == {"model.safetensors": 0o644, "config.json": 0o644}


def test_a_resume_that_only_exports_writes_no_checkpoint(ws, capsys, monkeypatch):
    """Try-out 39, F1: a --resume finishing a run whose export failed after the last step trained no step but wrote
    the last checkpoint again (removing the intact one before renaming the new one in)."""
    from ekd.train import checkpointed_run
    from ekd.train import trainer as trainer_mod

    def full_disk(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(trainer_mod, "save_model_dir", full_disk)
    assert _resume(capsys)[0] == 2
    monkeypatch.undo()
    monkeypatch.chdir(ws)
    before = {p.name: p.stat().st_ino for p in (CKPT / "step-000003").iterdir()}
    steps = []
    monkeypatch.setattr(
        checkpointed_run, "save_checkpoint", lambda run_dir, step, *a, **k: steps.append(step)
    )
    rc, _, err = _resume(capsys)
    assert rc == 0, err
    assert steps == [] and {p.name: p.stat().st_ino for p in (CKPT / "step-000003").iterdir()} == before


def test_a_kill_while_a_checkpoint_is_replaced_leaves_one_whole(ws, capsys):
    """A checkpoint replaced by one of the same step (a resume that retrains past a corrupt newest one) is renamed
    aside before the new one is renamed in: a kill between the two renames leaves ``.step-N.replaced``, which the
    next resume puts back; a kill while the old one is removed leaves a part of it, which is dropped."""
    from ekd.train.checkpoint import latest_verified_checkpoint

    step2 = CKPT / "step-000002"
    aside = CKPT / ".step-000002.replaced"
    step2.rename(aside)  # killed between the renames: step-000002 missing, `latest` names it
    assert latest_verified_checkpoint(RUN) == step2
    assert sorted(p.name for p in CKPT.iterdir()) == ["latest", "step-000001", "step-000002"]
    aside.mkdir()
    (aside / "optimizer.pt").write_bytes(b"half")  # killed while removing the replaced one
    rc, _, err = _resume(capsys)
    assert rc == 0, err
    assert sorted(p.name for p in CKPT.iterdir()) == ["latest", "step-000002", "step-000003"]


def test_a_checkpoint_a_kill_left_half_written_is_removed_by_the_next_one(ws, capsys, caplog):
    """Try-out 134, F1: ``step-N.tmp/`` a ``kill -9`` left while checkpoint N was written stayed for good once no
    later checkpoint of step N came (a --resume with another train.checkpoint_every): a whole checkpoint's bytes
    outside keep_checkpoints, never named. The next checkpoint of the run removes it, and says so."""
    stray = CKPT / "step-000010.tmp"
    stray.mkdir()
    (stray / "student.safetensors.tmp").write_bytes(b"\0" * 4096)
    with caplog.at_level(logging.INFO, logger="ekd.train.checkpoint"):
        rc, _, err = _resume(capsys)
    assert rc == 0, err
    assert sorted(p.name for p in CKPT.iterdir()) == ["latest", "step-000002", "step-000003"]
    assert "step-000010.tmp, a checkpoint a killed run left half written (0.0 MiB)" in caplog.text, (
        caplog.text[-3000:]
    )


def test_an_export_that_no_longer_loads_is_told_the_way_back(ws, capsys):
    """Try-out 135, F5: a student/ synced short was blamed on model.student with no way on, and --resume called
    the run finished; the way back (move it away, --resume exports it again, no step trained) is named by both."""
    weights = RUN / "student" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    rc, _, err = cli(capsys, "eval", RUN)
    line = one_error_line(rc, err)
    assert "cannot load a model from" in line and f"if {RUN / 'student'} was damaged" in line, line
    assert "export it again from checkpoint step-000002 with `ekd distill" in line and "--resume`" in line, (
        line
    )
    rc, out, err = cli(capsys, "distill", _config(), "--resume")
    assert (
        "a student/ that no longer loads is exported again from the last checkpoint once moved away"
        in out + err
    )
    (RUN / "student").rename(RUN.parent / "student.damaged")
    rc, _, err = cli(capsys, "distill", _config(), "--resume")
    assert rc == 0, err
    rc, _, err = cli(capsys, "eval", RUN)
    assert rc == 0, err


def _failing_rename_onto(monkeypatch, target: str) -> None:
    """Make the rename of a directory onto a path named ``target`` fail once (the second rename of a replace)."""
    real, failed = Path.rename, []

    def rename(self, to):
        if Path(to).name == target and not failed:
            failed.append(to)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, to)

    monkeypatch.setattr(Path, "rename", rename)


def test_a_checkpoint_whose_replacement_fails_is_left_whole(ws, monkeypatch):
    """Review 99: the tests above make the aside directory by hand; here the replace itself fails after the old
    checkpoint was renamed aside and before the new one is renamed in — the old one is put back, whole, and no
    temporary directory stays (the code before removed the old one first: none was left)."""
    from ekd.train.checkpoint import save_checkpoint, verify_checkpoint

    before = (CKPT / "step-000002" / "manifest.json").read_text()
    student = torch.nn.Linear(2, 2)
    optimizer = torch.optim.AdamW(student.parameters())
    _failing_rename_onto(monkeypatch, "step-000002")
    with pytest.raises(DiskError):
        save_checkpoint(RUN, 2, student, optimizer, {"step": 2, "loader": {}, "policy": {}})
    verify_checkpoint(CKPT / "step-000002")
    assert (CKPT / "step-000002" / "manifest.json").read_text() == before
    assert sorted(p.name for p in CKPT.iterdir()) == ["latest", "step-000001", "step-000002"]


def test_an_atomic_directory_a_kill_left_renamed_aside_is_put_back(tmp_path, monkeypatch):
    """``atomic_dir`` (exports, tokenizers) replaces a directory the same way: one left aside with no ``<dir>`` is
    restored before the next write, which then replaces it (or leaves it, on failure, also when the replace itself
    fails); a user's own ``<dir>.old`` is none of ekd's business (review 99: it was put in place and deleted)."""
    with atomic_dir(tmp_path / "student") as staging:
        (staging / "config.json").write_text("v1")
    (tmp_path / "student.old").mkdir()  # the user's backup
    (tmp_path / "student").rename(tmp_path / ".student.replaced")
    with pytest.raises(DiskError), atomic_dir(tmp_path / "student") as staging:
        raise OSError(errno.ENOSPC, "No space left on device")
    assert (tmp_path / "student" / "config.json").read_text() == "v1"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "student.old"]
    with monkeypatch.context() as m:
        _failing_rename_onto(m, "student")
        with pytest.raises(DiskError), atomic_dir(tmp_path / "student") as staging:
            (staging / "config.json").write_text("v2")
    assert (tmp_path / "student" / "config.json").read_text() == "v1"
    with atomic_dir(tmp_path / "student") as staging:
        (staging / "config.json").write_text("v2")
    assert (tmp_path / "student" / "config.json").read_text() == "v2"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student", "student.old"]


def test_a_sample_selection_changed_since_the_checkpoint_is_restored_from_it(
    tmp_path, capsys, monkeypatch, caplog
):
    """Try-out 41, F1: TopSmp's ``sample_selection.json`` edited (valid JSON, other block ids) was used by --resume
    without a word, so steps after it trained on other blocks. The checkpoint holds the kept blocks: a file edited,
    damaged or scored again since (review 99: near-ties may rank otherwise on another layout) is written back from
    it, with a warning, and the run goes on with the blocks it trained on. A checkpoint of an older ekd, which holds
    none, is refused in one line by the blocks' sha256 it records."""
    from ekd.train import top_samples

    extra = {**EXTRA, "method.sample_fraction": 0.5}
    make_workspace(tmp_path, "ck", extra)
    monkeypatch.chdir(tmp_path)
    path = RUN / "sample_selection.json"
    written = json.loads(path.read_text())
    kept = written["sample_ids"]
    others = [i for i in range(written["meta"]["samples"]) if i not in kept][: len(kept)]
    assert len(others) == len(kept) > 0
    config = config_file(Path("."), Path("corpus"), "ck", **extra)
    for damage, steps in (("edited", 3), ("deleted", 4), ("truncated", 5)):
        if damage == "edited":
            path.write_text(json.dumps(written | {"sample_ids": others}))
        elif (
            damage == "deleted"
        ):  # try-out 43, F3: the samples were scored again, a pass over the training set
            path.unlink()
            monkeypatch.setattr(top_samples, "sharded_sample_scores", _never_called)
        else:  # try-out 44, F9: refused with 'delete it', though the warning said damaged files were restored
            path.write_text(json.dumps(written)[:40])
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ekd"):
            rc, _, err = cli(capsys, "distill", config, f"train.max_steps={steps}", "--resume")
        assert rc == 0, err
        restored = json.loads(path.read_text())
        assert restored["sample_ids"] == kept
        assert restored["meta"] == written["meta"] | {"restored_from": f"step-00000{steps - 1}"}  # F9: kept
        assert f"than checkpoint step-00000{steps - 1} trained on" in caplog.text, caplog.text
    # a checkpoint without the kept blocks (an older ekd's): refused by the sha256 of the blocks it drew from
    state_path = CKPT / "step-000005" / "state.pt"
    state = torch.load(state_path, weights_only=True)
    del state["sample_ids"]
    _forge(state_path, _pickled(state))
    path.write_text(json.dumps(written | {"sample_ids": others}))
    line = one_error_line(*cli(capsys, "distill", config, "train.max_steps=6", "--resume")[::2])
    assert "sample_selection.json keeps other training blocks than checkpoint step-000005" in line, line
    assert "--overwrite" in line


def _pickled(obj) -> bytes:
    import io

    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def test_something_in_the_way_of_a_write_is_named(tmp_path):
    """Try-out 42, F7: a stray file where ekd writes a directory (``student.tmp``) was 'a file is in the way writing
    to runs/x; choose another path' — the run directory, not the file to move."""
    (tmp_path / "student.tmp").write_text("stray")
    with pytest.raises(DiskError) as e, atomic_dir(tmp_path / "student"):
        pass
    assert str(tmp_path / "student.tmp") in str(e.value) and "move or remove it" in str(e.value), e.value
    assert (tmp_path / "student.tmp").read_text() == "stray"


def _never_called(*args, **kwargs):
    raise AssertionError("the samples were scored again")


@pytest.mark.parametrize(
    "given, said",
    [
        ({}, "continue with the same command and --resume"),
        ({"overwrite": True}, "continue with the same command with --resume in place of --overwrite"),
        ({"resume": True}, "continue with the same command (--resume)"),
    ],
)
def test_the_way_on_reads_as_the_command_given(tmp_path, monkeypatch, given, said):
    """Try-out 87, F3: an --overwrite that failed after its first step (a full disk) was told to go on with "the
    same command and --resume", which is refused beside --overwrite; a --resume was told to add it again."""
    from types import SimpleNamespace

    from ekd.train import trainer as trainer_mod

    start = SimpleNamespace(
        committed=True, run_dir=tmp_path, **{"overwrite": False, "resume": False, **given}
    )
    monkeypatch.setattr(trainer_mod, "latest_checkpoint", lambda run_dir: tmp_path / "step-000002")
    monkeypatch.setattr(trainer_mod, "read_marker", lambda run_dir: {"state": "started"})
    for hint in (trainer_mod.interrupted_hint(start), trainer_mod.failed_hint(start, max_steps=10)):
        assert hint.endswith(said) and "--resume --" not in hint, hint


@pytest.mark.parametrize("signum", ["SIGTERM", "SIGINT"])
def test_an_interrupt_while_a_finished_run_prints_its_table_changes_nothing(ws, capsys, monkeypatch, signum):
    """Try-out 90, F4: a scheduler's SIGTERM landing as a finished run printed its results table ended it with
    exit 143 and 'interrupted ... --resume', which then said the run was finished: the run's work is done once
    training returns, and an interrupt from there on is ignored (the table printed, exit 0)."""
    import signal
    import threading

    from ekd import cli as cli_module

    real = cli_module._print_eval

    def signal_then_print(*args, **kwargs):
        signal.pthread_kill(threading.get_ident(), getattr(signal, signum))
        sum(range(10_000))  # Python runs the handler between bytecodes: here, before the table
        return real(*args, **kwargs)

    monkeypatch.setattr(cli_module, "_print_eval", signal_then_print)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)  # as a terminal's Ctrl-C
    try:
        rc, out, err = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the command
    finally:
        signal.signal(signal.SIGINT, previous)
    assert rc == 0, err
    assert "| eval |" in out and "interrupted" not in err


def test_a_directory_fsync_that_fails_is_raised_unless_the_file_system_cannot_fsync_one(
    tmp_path, monkeypatch
):
    """Review 126, S6: every OSError of a directory's fsync was passed over — EIO too, after which a rename (a
    checkpoint's, eval.json's) may not be on disk; a file system that cannot fsync a directory (EINVAL) is a no-op."""
    import errno
    import os

    from ekd.io import fsync_dir

    def failing(code):
        def fsync(fd):
            raise OSError(code, os.strerror(code))

        return fsync

    monkeypatch.setattr(os, "fsync", failing(errno.EINVAL))
    fsync_dir(tmp_path)
    monkeypatch.setattr(os, "fsync", failing(errno.EIO))
    with pytest.raises(OSError) as info:
        fsync_dir(tmp_path)
    assert info.value.errno == errno.EIO


def test_ekd_eval_of_a_damaged_run_record_names_no_run_name(ws, capsys):
    """Try-out 139, F7: `ekd eval` of a run whose ekd-run.json is damaged was told "or choose another run.name",
    which ekd eval does not read."""
    marker = RUN / "ekd-run.json"
    marker.write_text(marker.read_text().replace('"format": "ekd-run",', '"format": "ekd-run",,', 1))
    line = one_error_line(*cli(capsys, "eval", RUN)[::2])
    assert "ekd-run.json is not valid JSON" in line and "run.name" not in line, line
    assert line.endswith("fix it there, or restore it from a copy of the run"), line


def test_ekd_eval_of_a_run_without_its_record_says_what_goes_unchecked(ws, capsys, caplog):
    """Try-out 139, F1: with ekd-run.json removed, `ekd eval` scored a LoRA adapter on a changed base without a
    word — every check the record carries was off in silence, where the README says each command says what it
    does without it."""
    (RUN / "ekd-run.json").unlink()
    with caplog.at_level(logging.WARNING, logger="ekd.train.evaluation"):
        rc, _, err = cli(capsys, "eval", RUN)
    assert rc == 0, err
    said = [r.getMessage() for r in caplog.records if "holds no ekd-run.json" in r.getMessage()]
    assert said and "a LoRA base's weights" in said[0] and "put it back" in said[0], said


def test_a_checkpoint_under_another_steps_name_says_so(ws):
    """Try-out 145, F6: a checkpoint copied or renamed to another step's directory was refused as '…/manifest.json is
    corrupt' — an intact file naming another step; the line says which."""
    import shutil

    from ekd.train.checkpoint import CheckpointError, verify_checkpoint

    shutil.copytree(CKPT / "step-000002", CKPT / "step-000005")
    with pytest.raises(CheckpointError) as e:
        verify_checkpoint(CKPT / "step-000005")
    assert str(e.value) == (
        f"{CKPT / 'step-000005' / 'manifest.json'} is of step 2, not 5 as its directory step-000005 says (copied or "
        "renamed from another step?)"
    ), e.value
