"""A teacher's identity for ``ekd compare`` and ``--resume``: a fingerprint of every byte of its weight files — the
same for a copy or a moved directory, another as soon as one weight differs (try-out 39, F3; review 99; try-out
44, F1: one tensor edited in place fell between the 16 windows the fingerprint sampled) — remembered per file
state, so an unchanged teacher is a ``stat``."""

from __future__ import annotations

import json
import os
import shutil
import threading
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import AutoModelForCausalLM, LlamaConfig

from ekd.models import identity
from ekd.models.identity import comparable, same_weights, sampled_fingerprint, weights_fingerprint

CONFIG = LlamaConfig(  # ~0.4 MB of weights: the old windows covered 16% of them
    vocab_size=256, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=2
)


@pytest.fixture
def teacher(tmp_path):
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(CONFIG).save_pretrained(tmp_path / "t")
    return tmp_path / "t"


def test_a_copy_is_the_same_teacher_and_a_retrained_one_is_not(teacher, tmp_path):
    first = weights_fingerprint(str(teacher))
    assert first is not None and first.startswith("sha256:")
    shutil.copytree(teacher, tmp_path / "copy")  # other mtimes, other path
    os.utime(tmp_path / "copy" / "model.safetensors", (1, 1))
    assert weights_fingerprint(str(tmp_path / "copy")) == first
    torch.manual_seed(1)  # the same architecture trained on: every weight moves
    AutoModelForCausalLM.from_config(CONFIG).save_pretrained(teacher)
    assert weights_fingerprint(str(teacher)) != first
    assert (
        weights_fingerprint("preset:llama-micro") is None and weights_fingerprint("Qwen/Qwen2.5-0.5B") is None
    )


def test_one_tensor_edited_in_place_is_another_teacher_even_with_its_mtime_put_back(teacher):
    file = teacher / "model.safetensors"
    before, st = weights_fingerprint(str(teacher)), file.stat()
    tensors = load_file(str(file))
    tensors["model.layers.0.self_attn.q_proj.weight"] *= 1.5  # try-out 44: a LoRA merged into one projection
    save_file(tensors, str(file), metadata={"format": "pt"})
    os.utime(file, ns=(st.st_atime_ns, st.st_mtime_ns))  # the modification time put back
    assert weights_fingerprint(str(teacher)) != before
    assert same_weights(before, str(teacher)) is False


def test_one_float_changed_between_the_old_sampled_windows_is_another_teacher(teacher):
    """Try-out 44, F1: the fingerprint sampled 16 windows of 4 KiB per file; a change between two of them
    passed as the same teacher (the old fingerprint is kept, for the records it wrote, and shows it)."""
    file = teacher / "model.safetensors"
    before, sampled, size = (
        weights_fingerprint(str(teacher)),
        sampled_fingerprint(str(teacher)),
        file.stat().st_size,
    )
    last = size - identity.WINDOW
    at = (last * 8 // 15 + identity.WINDOW + last * 9 // 15) // 2  # midway between windows 8 and 9
    assert last * 9 // 15 - (last * 8 // 15 + identity.WINDOW) > 64, "the model is too small for the gap"
    with open(file, "r+b") as f:
        f.seek(at)
        byte = f.read(1)
        f.seek(at)
        f.write(bytes([byte[0] ^ 1]))
    assert sampled_fingerprint(str(teacher)) == sampled  # what the sample missed
    assert weights_fingerprint(str(teacher)) != before and same_weights(before, str(teacher)) is False


def test_an_unchanged_teacher_is_not_read_again_and_a_lost_memo_only_costs_a_hash(teacher, monkeypatch):
    reads = []
    piece = identity._piece_sha256
    monkeypatch.setattr(identity, "_piece_sha256", lambda *a: reads.append(a) or piece(*a))
    monkeypatch.setattr(identity, "PIECE", 4096)  # several pieces on several threads
    first = weights_fingerprint(str(teacher))
    assert len(reads) == -(-(teacher / "model.safetensors").stat().st_size // 4096)
    reads.clear()
    assert weights_fingerprint(str(teacher)) == first and reads == []  # a stat
    memo = identity.memo_path()
    memo.write_text("{not json")  # damaged: hashed again, rewritten
    assert weights_fingerprint(str(teacher)) == first and reads
    assert len(json.loads(memo.read_text())) >= 1
    for unwritable in (
        "/proc/no-such-dir",
        "/dev/null",
        str(memo),
    ):  # try-out 47, F1: /dev/null was a traceback
        monkeypatch.setenv("EKD_CACHE_HOME", unwritable)  # hashed every time, no error
        assert weights_fingerprint(str(teacher)) == first


def test_records_of_the_sampling_ekd_are_checked_their_way_and_compared_by_name(teacher):
    old = sampled_fingerprint(str(teacher))
    assert old.startswith("sampled-sha256:") and same_weights(old, str(teacher)) is True
    assert not comparable(
        old, weights_fingerprint(str(teacher))
    )  # compare falls back to name, revision, dtype
    assert comparable(weights_fingerprint(str(teacher)), "sha256:00") and not comparable(None, old)
    assert same_weights(old, "preset:llama-micro") is None


def test_a_fingerprint_taken_meanwhile_by_another_process_stays_in_the_memo(tmp_path, monkeypatch):
    """Review 106: the memo was read before hashing and written back whole after it, without a lock across
    processes: the digests another process remembered meanwhile were dropped (and it hashed them again)."""
    specs = []
    for seed in range(2):
        torch.manual_seed(seed)
        AutoModelForCausalLM.from_config(CONFIG).save_pretrained(tmp_path / f"t{seed}")
        specs.append(str(tmp_path / f"t{seed}"))
    piece, lock, started = identity._piece_sha256, threading.Lock(), []

    def meanwhile(path, start):  # while t0 is hashed, another process fingerprints t1 and remembers it
        with lock:
            first = not started
            started.append(path)
        if first:
            weights_fingerprint(specs[1])
        return piece(path, start)

    monkeypatch.setattr(identity, "_piece_sha256", meanwhile)
    weights_fingerprint(specs[0])
    memo = json.loads(identity.memo_path().read_text())
    assert {k.split("|")[0] for k in memo} >= {str(Path(s, "model.safetensors").resolve()) for s in specs}


def test_trainer_state_files_are_not_weights_and_a_file_written_while_hashed_is_not_remembered(
    teacher, monkeypatch
):
    first = weights_fingerprint(str(teacher))
    (teacher / "optimizer.pt").write_bytes(os.urandom(1 << 16))  # a Trainer checkpoint's own files
    (teacher / "training_args.bin").write_bytes(b"x")
    (teacher / "scaler.pt").write_bytes(b"y")  # try-out 48, F6: fp16 training's grad scaler
    assert weights_fingerprint(str(teacher)) == first
    file = teacher / "model.safetensors"
    piece = identity._piece_sha256

    def written_meanwhile(path, start):
        os.utime(path)  # the file changes state while it is hashed
        return piece(path, start)

    monkeypatch.setattr(identity, "PIECE", 1 << 20)  # another memo: hashed anew
    monkeypatch.setattr(identity, "_piece_sha256", written_meanwhile)
    weights_fingerprint(str(teacher))
    memo = identity.memo_path()
    assert not memo.exists() or str(file.resolve()) not in memo.read_text()


def test_file_states_an_older_ekd_recorded_are_compared_as_far_as_they_go(teacher):
    """Review 106: the teacher cache and a LoRA run's base recorded [size, mtime]; with ctime and inode added,
    every such record differed and the whole teacher was hashed at every run."""
    from ekd.teacher.cache.signature import same_files, teacher_files

    now = teacher_files(str(teacher))
    older = {name: state[:2] for name, state in now.items()}
    assert same_files(now, str(teacher)) and same_files(older, str(teacher))
    os.utime(teacher / "model.safetensors")  # a new mtime (and ctime)
    assert not same_files(now, str(teacher)) and not same_files(older, str(teacher))
    assert not same_files(None, str(teacher)) and not same_files({"other.safetensors": [1, 2]}, str(teacher))


def test_a_pickled_teachers_trainer_state_files_are_not_its_weights(tmp_path):
    """Review 106 / try-out 48, F6: beside pytorch_model.bin, a Trainer checkpoint's optimizer, scheduler, grad
    scaler, rng and args files are no weights: adding or changing them is the same teacher."""
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(CONFIG).save_pretrained(tmp_path / "t", safe_serialization=False)
    before = weights_fingerprint(str(tmp_path / "t"))
    assert before is not None
    for name in ("optimizer.pt", "scheduler.pt", "scaler.pt", "rng_state_0.pth", "training_args.bin"):
        (tmp_path / "t" / name).write_bytes(os.urandom(64))
    assert weights_fingerprint(str(tmp_path / "t")) == before


def test_an_interrupt_while_hashing_drops_the_pieces_not_begun(tmp_path, monkeypatch):
    """Session 33, in the hunt for a hang after SIGTERM (try-out 103, F1): Ctrl-C or SIGTERM during the first
    hashing of a teacher must not leave the pool to read every queued piece before the process can end (minutes
    for a 16 GB teacher on a slow file system). It does not: ``Executor.map`` cancels the futures not begun when
    its iteration ends early; this pins it."""
    import _thread
    import threading
    import time

    path = tmp_path / "w" / "model.safetensors"
    path.parent.mkdir()
    path.write_bytes(os.urandom(64 << 10))
    monkeypatch.setattr(identity, "PIECE", 256)  # 256 pieces
    hashed = []
    lock = threading.Lock()

    def slow_piece(p, start):
        with lock:
            hashed.append(start)
            if len(hashed) == 3:
                _thread.interrupt_main()  # KeyboardInterrupt in the main thread, as Ctrl-C
        time.sleep(0.02)
        return b""

    monkeypatch.setattr(identity, "_piece_sha256", slow_piece)
    with pytest.raises(KeyboardInterrupt):
        identity.file_digest(path)
    time.sleep(0.2)  # what the pool still does after the interrupt
    assert len(hashed) < 64, len(hashed)  # the running pieces finish, the queued ones are dropped
