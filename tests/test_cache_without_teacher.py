"""A teacher cache trains where its teacher is not (try-out 64, F13): the cache keeps the teacher's config and
tokenizer files, and a run from it reads those where an online run reads ``model.teacher``'s — the run's
tokenizer, the check that the teacher's tokenizer and head fit it, and the end-of-document id of
``data.separator=auto``. A cache copied to a machine without the teacher used to be refused ("model.teacher: …
does not exist") whatever the run's settings."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from ekd.cli import main
from ekd.teacher.cache.kept_teacher import KEPT_DIR, KEPT_RECORD, keep_teacher_files, kept_teacher_dir
from tiny import config_file, loss_curve, write_corpus

TEACHER_EOS = (
    7  # the teacher's config ends documents with id 7, not the tokenizer's EOS: only its config says
)


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A real (saved) teacher whose config names its own end-of-document id, its RS cache, and a run trained
    from the cache while the teacher is there (the reference)."""
    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import build_preset

    root = tmp_path_factory.mktemp("away")
    corpus = write_corpus(root / "corpus", n_docs=24)
    tok = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 320, None)
    assert tok.eos_token_id != TEACHER_EOS
    teacher = root / "teacher"
    build_preset("llama-micro", len(tok), TEACHER_EOS).save_pretrained(teacher)
    tok.save_pretrained(teacher)
    cfg = config_file(
        root,
        corpus,
        "ref",
        **{
            "method.preset": "rskd",
            "teacher.cache_dir": str(root / "cache"),
            "model.teacher": str(teacher),
            "model.tokenizer": "teacher",
            "data.separator": "auto",
        },
    )
    assert main(["-q", "cache", cfg]) == 0
    assert main(["-q", "distill", cfg, "teacher.source=cache", "eval.teacher=false"]) == 0
    return {"root": root, "teacher": teacher, "cfg": cfg, "cache": root / "cache"}


@contextmanager
def teacher_away(teacher: Path):
    """The teacher's directory moved away meanwhile (a machine without it), put back after."""
    away = teacher.with_name("moved-away")
    teacher.rename(away)
    try:
        yield
    finally:
        away.rename(teacher)


def _from_cache(built: dict, *extra: str) -> list[str]:
    """`ekd -q distill CONFIG` from the cache, not evaluating the teacher, with ``extra`` overrides."""
    return ["-q", "distill", built["cfg"], "teacher.source=cache", "eval.teacher=false", *extra]


def _older_cache(built: dict, monkeypatch, cache: Path) -> None:
    """Build ``cache`` as an ekd before the copy did: no ``teacher/``, none recorded in the manifest."""
    from ekd.teacher.cache import build

    with monkeypatch.context() as older:
        older.setattr(build, "teacher_files_record", lambda *args: None)
        older.setattr(build, "keep_teacher_files", lambda *args: [])
        assert main(["-q", "cache", built["cfg"], f"teacher.cache_dir={cache}"]) == 0


def _without_its_copy(cache: Path, to: Path) -> Path:
    """The cache's files copied to ``to`` without its ``teacher/`` directory (as `cp cache/* to` does)."""
    to.mkdir()
    for path in cache.iterdir():
        if path.is_file():
            shutil.copy2(path, to / path.name)
    return to


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line, no traceback
    assert err[0].startswith("ekd: error: ")
    return err[0]


def _shards_sha256(cache: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(cache.glob("shard-*"))}


def test_the_cache_keeps_the_teachers_small_files_and_no_weights(built, capsys):
    kept = kept_teacher_dir(built["cache"])
    assert kept == built["cache"] / KEPT_DIR
    names = {p.name for p in kept.iterdir()} - {KEPT_RECORD}
    assert {"config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json"} <= names
    assert not any(n.endswith(".safetensors") for n in names)
    for name in names:  # byte for byte the teacher's
        assert (kept / name).read_bytes() == (built["teacher"] / name).read_bytes(), name
    assert set(json.loads((kept / KEPT_RECORD).read_text())) == names  # each file's sha256
    assert main(["cache", "info", str(built["cache"])]) == 0
    info = capsys.readouterr().out
    assert "teacher_files" in info and "tokenizer.json" in info


@pytest.mark.slow
@pytest.mark.parametrize("tokenizer", ["teacher", "path"])
def test_a_run_from_the_cache_trains_where_the_teacher_is_not(built, tokenizer, capsys):
    """The tokenizer (``teacher``, or the teacher's directory by its path) and the teacher's end-of-document id
    (its config's 7, which ``data.separator=auto`` reads) come from the cache's copy: the run trains exactly as
    the one made while the teacher was there."""
    root = built["root"]
    name = f"away-{tokenizer}"
    spec = "teacher" if tokenizer == "teacher" else f"{built['teacher']}/"
    with teacher_away(built["teacher"]):
        code = main(_from_cache(built, f"run.name={name}", f"model.tokenizer={spec}"))
        assert code == 0, capsys.readouterr().err
    run, reference = root / "runs" / name, root / "runs" / "ref"
    assert loss_curve(run) == loss_curve(reference)
    marker = json.loads((run / "ekd-run.json").read_text())
    assert marker["document_boundary"]["eos_id"] == TEACHER_EOS


@pytest.mark.slow
def test_a_run_that_would_evaluate_the_absent_teacher_is_refused_at_its_start(built, capsys):
    """The evaluation at the end loads the teacher (``eval.teacher``, on by default): refused before the run
    starts, naming the key that trains without it — not after the whole training."""
    with teacher_away(built["teacher"]):
        code = main(["-q", "distill", built["cfg"], "teacher.source=cache", "run.name=evaluates"])
    assert code != 0
    line = _error_line(capsys)
    assert str(built["teacher"]) in line and "eval.teacher=false" in line
    assert not (built["root"] / "runs" / "evaluates").exists()


@pytest.mark.slow
def test_a_cache_of_an_older_ekd_gets_the_teachers_files_from_a_rerun(built, monkeypatch, capsys):
    """A cache built before the copy: refused where the teacher is not, in one line naming the rerun that adds
    the files; that rerun writes no shard, and the cache then trains without the teacher."""
    old = built["root"] / "old-cache"
    _older_cache(built, monkeypatch, old)
    assert kept_teacher_dir(old) is None
    shards = _shards_sha256(old)
    run = _from_cache(built, f"teacher.cache_dir={old}")
    with teacher_away(built["teacher"]):
        assert main([*run, "run.name=old-away"]) != 0
        line = _error_line(capsys)
        assert "keeps no copy of the teacher's config and tokenizer" in line and "`ekd cache CONFIG`" in line
    assert main(["-q", "cache", built["cfg"], f"teacher.cache_dir={old}"]) == 0
    assert kept_teacher_dir(old) is not None and _shards_sha256(old) == shards
    with teacher_away(built["teacher"]):
        assert main([*run, "run.name=old-away"]) == 0, capsys.readouterr().err
    assert loss_curve(built["root"] / "runs" / "old-away") == loss_curve(built["root"] / "runs" / "ref")


@pytest.mark.slow
def test_a_cache_copied_without_its_copy_or_with_a_file_added_is_named_by_verify_and_runs(built, capsys):
    """Try-out 66, F4: `cp cache/* dst` skips teacher/; `ekd cache verify` said ok and the run blamed an older
    ekd — the manifest now records the copy (sealed with it). F9: a file added to the copy (a loader reads
    special_tokens_map.json) passed verify and changed the tokenizer."""
    shipped = _without_its_copy(built["cache"], built["root"] / "shipped")
    assert main(["cache", "verify", str(shipped)]) != 0
    assert f"is missing (copied without its {KEPT_DIR}/ directory?)" in _error_line(capsys)
    with teacher_away(built["teacher"]):
        assert main(_from_cache(built, f"teacher.cache_dir={shipped}", "run.name=shipped")) != 0
        line = _error_line(capsys)
        assert "copied without its teacher/ directory?" in line and "older ekd" not in line
    added = built["root"] / "added"
    shutil.copytree(built["cache"], added)
    (added / KEPT_DIR / "special_tokens_map.json").write_text('{"eos_token": "<|x|>"}')
    assert main(["cache", "verify", str(added)]) != 0
    assert "special_tokens_map.json was not in the copy made" in _error_line(capsys)


def test_a_hub_teachers_files_are_copied_from_its_snapshot(tmp_path, monkeypatch):
    """A hub id's files are the hub cache's snapshot (links to blobs: their bytes are copied); weights are not
    copied, and a teacher whose files are not found removes an earlier teacher's copy."""
    from huggingface_hub import constants

    hub = tmp_path / "hub"
    repo = hub / "models--org--teacher"
    commit = "0" * 40
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    (repo / "blobs").mkdir()
    snapshot = repo / "snapshots" / commit
    snapshot.mkdir(parents=True)
    for name, text in [
        ("config.json", '{"eos_token_id": 2}'),
        ("tokenizer.json", "{}"),
        ("model.safetensors", "w"),
    ]:
        blob = repo / "blobs" / hashlib.sha256(text.encode()).hexdigest()
        blob.write_text(text)
        (snapshot / name).symlink_to(Path("..") / ".." / "blobs" / blob.name)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(hub))
    cache = tmp_path / "cache"
    cache.mkdir()
    assert keep_teacher_files("org/teacher", "", cache) == ["config.json", "tokenizer.json"]
    assert keep_teacher_files("org/teacher", "", cache) == []  # whole and the same: nothing written
    kept = kept_teacher_dir(cache)
    assert (kept / "config.json").read_text() == '{"eos_token_id": 2}' and not (
        kept / "config.json"
    ).is_symlink()
    assert not (kept / "model.safetensors").exists()
    assert keep_teacher_files("org/not-fetched", "", cache) == [] and kept_teacher_dir(cache) is None


@pytest.mark.slow
def test_another_absent_teacher_is_refused_and_the_projects_relative_path_is_the_caches(
    built, tmp_path, monkeypatch, capsys, caplog
):
    """Try-out 65, F1: any missing ``model.teacher`` path trained from the cache (its content hash, copied from
    the cache, made it "the same weights") and config.yaml recorded the wrong teacher. F2: the config's own
    relative spelling (configs/cache-demo.yaml: ``runs/demo/teacher``) in another copy of the project tree, where
    the teacher is not, was refused with ways that need the teacher or delete the cache."""
    run = _from_cache(built)
    with teacher_away(built["teacher"]):
        assert main([*run, "run.name=other", f"model.teacher={tmp_path / 'nowhere' / 'teacher'}"]) != 0
        line = _error_line(capsys)
        assert f"is not the teacher of the cache at {built['cache']} ({built['teacher']})" in line
        assert f"set model.teacher={built['teacher']}" in line
        said = []
        monkeypatch.chdir(built["root"] / "runs")  # try-out 66, F1: `..` resolved from the working directory
        with caplog.at_level("INFO", logger="ekd.teacher.cache.source"):
            assert main([*run, "run.name=up", "model.teacher=../teacher"]) == 0, capsys.readouterr().err
            said.append(caplog.text)
            caplog.clear()
            monkeypatch.chdir(tmp_path)  # another tree: `teacher` names the end of the cache's teacher path
            assert main([*run, "run.name=relative", "model.teacher=teacher"]) == 0, capsys.readouterr().err
            said.append(caplog.text)
        taken = f"model.teacher %s is not on this machine; taken as the cache's teacher {built['teacher']}"
        assert taken % "../teacher" + " (" in said[0]  # the same path
        assert taken % "teacher" + f", by the end of its path (here it is {tmp_path / 'teacher'})" in said[1]
        shutil.copytree(built["cache"] / KEPT_DIR, built["teacher"])  # configs, no weights (try-out 66, F6)
        try:
            assert main([*run, "run.name=weightless"]) != 0
        finally:
            shutil.rmtree(built["teacher"])
        assert "holds no safetensors weights" in _error_line(capsys)
    assert not (built["root"] / "runs" / "other").exists()
    assert loss_curve(built["root"] / "runs" / "relative") == loss_curve(built["root"] / "runs" / "ref")


@pytest.mark.slow
def test_a_damaged_copy_is_named_verified_and_restored_by_a_rerun(built, capsys):
    """Try-out 65, F4: a copy missing its tokenizer.json broke the cache even with the teacher there, blamed
    model.teacher in a line cut mid-sentence, passed `ekd cache verify`, and a rerun of `ekd cache` left it."""
    damaged = built["root"] / "damaged-cache"
    shutil.copytree(built["cache"], damaged)
    (damaged / KEPT_DIR / "tokenizer.json").unlink()
    run = _from_cache(built, f"teacher.cache_dir={damaged}")
    assert main([*run, "run.name=damaged"]) != 0
    line = _error_line(capsys)
    assert (
        "is damaged (tokenizer.json is missing)" in line
        and f"`ekd cache CONFIG` once where the teacher ({built['teacher']}) is" in line
    )
    assert main(["cache", "verify", str(damaged)]) != 0
    assert "tokenizer.json is missing" in _error_line(capsys)
    assert main(["cache", "info", str(damaged)]) == 0
    assert "damaged: tokenizer.json is missing" in capsys.readouterr().out
    shards = _shards_sha256(damaged)
    assert main(["-q", "cache", built["cfg"], f"teacher.cache_dir={damaged}"]) == 0
    assert _shards_sha256(damaged) == shards and main(["cache", "verify", str(damaged)]) == 0
    with teacher_away(built["teacher"]):
        assert main([*run, "run.name=restored"]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_a_finished_cache_whose_copy_cannot_be_written_still_says_nothing_to_build(
    built, monkeypatch, capsys
):
    """Try-out 65, F3: on a read-only mount the copy's write raised ekd's DiskError, which the build did not
    catch: the finished cache's rerun failed where it had said "nothing to build"."""
    from ekd.io import DiskError
    from ekd.teacher.cache import build

    old = built["root"] / "read-only-cache"
    shutil.copytree(built["cache"], old)
    shutil.rmtree(old / KEPT_DIR)

    def read_only(*args, **kwargs):
        raise DiskError(f"read-only file system writing to {old / '.teacher-staging'}")

    monkeypatch.setattr(build, "keep_teacher_files", read_only)
    assert main(["-q", "cache", built["cfg"], f"teacher.cache_dir={old}"]) == 0, capsys.readouterr().err


@pytest.mark.slow
def test_a_build_from_a_config_that_trains_from_the_cache_reads_the_teachers_own_files(built, capsys):
    """Try-out 65, F6: `ekd cache CONFIG teacher.source=cache` (one YAML for the build and the runs) read the
    copy of the cache it was making: where the teacher was not, a first build was told the cache was 'made by an
    older ekd' instead of that the teacher it runs is not there."""
    fresh = built["root"] / "fresh-cache"
    build = ["-q", "cache", built["cfg"], "teacher.source=cache", f"teacher.cache_dir={fresh}"]
    with teacher_away(built["teacher"]):
        assert main(build) != 0
        line = _error_line(capsys)
        assert f"model.teacher: {built['teacher']} does not exist" in line and "older ekd" not in line
        assert not fresh.exists()  # a refused build leaves no empty teacher.cache_dir behind
    assert main(build) == 0, capsys.readouterr().err
    assert kept_teacher_dir(fresh) is not None


def test_an_older_import_is_told_to_import_again_not_to_build(tmp_path):
    """Try-out 65, F5: an import made before the copy was told to run `ekd cache CONFIG`, which refuses an
    import; the import's own command adds the copy."""
    from ekd.teacher.cache import CacheError
    from ekd.teacher.cache.kept_teacher import teacher_files_in_cache
    from ekd.teacher.cache.manifest import IMPORTED, MANIFEST

    cache = tmp_path / "import"
    cache.mkdir()
    teacher = "/models/teacherB"
    signature = {"teacher_revision": f"{IMPORTED}abc", "teacher_id": teacher}
    (cache / MANIFEST).write_text(json.dumps({"signature": signature}))
    with pytest.raises(CacheError) as e:
        teacher_files_in_cache(cache, str(tmp_path / "gone"))
    # try-out 66, F7: the import compares the teacher's path, so its files must be back there
    said = f"run `ekd cache import SRC --config CONFIG --out DIR` again with the teacher's files at {teacher}"
    assert said in str(e.value), e.value


def test_train_as_built_is_not_offered_for_a_setting_the_run_has_already():
    """Try-out 65, F7: a boundary of other ids under the same mode (a teacher whose eos_token_id changed) was
    told "train as it was built (data.separator=auto)" while the run was `auto` already."""
    from ekd.teacher.cache.source import _train_as_built

    expected, found = {"separator": "auto:bos=-,eos=5"}, {"separator": "auto:bos=-,eos=0"}
    assert _train_as_built(["separator: …"], found, expected) == ""
    found = {"separator": "eos:bos=-,eos=5"}
    assert (
        _train_as_built(["separator: …"], found, expected)
        == "train as it was built (data.separator=eos), or "
    )


@pytest.mark.slow
def test_plan_of_a_cache_run_says_the_evaluation_loads_the_teacher(built, capsys):
    """Try-out 65, F10: `ekd plan` said "fits" for a run that loads the teacher at its end, without a word."""
    assert main(["plan", built["cfg"], "--gpus", "1", "teacher.source=cache"]) == 0
    out = capsys.readouterr().out
    assert f"the evaluation at the end loads the teacher ({built['teacher']})" in out
    assert main(["plan", built["cfg"], "--gpus", "1", "teacher.source=cache", "eval.teacher=false"]) == 0
    assert "loads the teacher" not in capsys.readouterr().out


def test_plan_refuses_what_distill_refuses_at_its_start_without_the_teacher(built, tmp_path, capsys):
    """Try-out 66, F8: `ekd plan` said "fits" for a cache run whose evaluation would load the absent teacher and
    for an absent ``model.teacher`` that is not the cache's teacher — both refused by `ekd distill` at its start.
    Plan now says distill's own line; the cache's teacher, not evaluated, is planned."""
    plan = ["plan", built["cfg"], "--gpus", "1", "teacher.source=cache"]
    with teacher_away(built["teacher"]):
        lines = []
        for extra in ([], ["eval.teacher=false", f"model.teacher={tmp_path / 'nowhere' / 'teacher'}"]):
            assert main([*plan, *extra]) != 0
            lines.append(_error_line(capsys))
            assert (
                main(["-q", "distill", built["cfg"], "teacher.source=cache", "run.name=planned", *extra]) != 0
            )
            assert _error_line(capsys) == lines[-1]
        assert "eval.teacher=false" in lines[0] and str(built["teacher"]) in lines[0]
        assert f"is not the teacher of the cache at {built['cache']}" in lines[1]
        assert main([*plan, "eval.teacher=false"]) == 0
        assert "fits" in capsys.readouterr().out
    assert not (built["root"] / "runs" / "planned").exists()


@pytest.mark.slow
def test_a_refused_overwrite_deletes_nothing(built, capsys):
    """Try-out 67, F1: `ekd cache CONFIG --overwrite` refused (a mistyped data.source) had already deleted the
    cache's teacher/ copy (and a trained BPE), leaving a cache that no longer trained without its teacher."""
    cache = built["root"] / "overwrite-refused"
    shutil.copytree(built["cache"], cache)
    missing = built["root"] / "no-such-corpus"
    assert (
        main(
            [
                "-q",
                "cache",
                built["cfg"],
                f"teacher.cache_dir={cache}",
                f"data.source={missing}",
                "--overwrite",
            ]
        )
        != 0
    )
    capsys.readouterr()
    assert kept_teacher_dir(cache) is not None and main(["cache", "verify", str(cache)]) == 0


@pytest.mark.slow
def test_a_read_only_finished_cache_reruns_with_nothing_to_build(built, monkeypatch, capsys, caplog):
    """Try-out 67, F2/F3: on a read-only cache a rerun whose only news is descriptive (the teacher's new file
    stamps, the record of its files, a copy to add) failed writing the manifest; it now says nothing to build and
    writes nothing, and the line about the copy it cannot add says the teacher's directory is then needed."""
    import os

    from ekd.io import DiskError
    from ekd.teacher.cache import build
    from ekd.teacher.cache.manifest import MANIFEST

    old = built["root"] / "read-only-older"
    _older_cache(built, monkeypatch, old)
    manifest = (old / MANIFEST).read_bytes()

    def read_only(*args, **kwargs):
        raise DiskError(f"read-only file system writing to {old / '.teacher-staging'}")

    writable = os.access
    monkeypatch.setattr(build, "keep_teacher_files", read_only)
    monkeypatch.setattr(os, "access", lambda path, mode, *a, **k: mode != os.W_OK and writable(path, mode))
    with caplog.at_level("INFO", logger="ekd.teacher.cache.build"):
        assert main(["cache", built["cfg"], f"teacher.cache_dir={old}"]) == 0, capsys.readouterr().err
    assert "nothing to build" in capsys.readouterr().out
    assert "the teacher's directory must be there" in caplog.text
    assert (old / MANIFEST).read_bytes() == manifest


@pytest.mark.slow
def test_info_of_a_cache_copied_without_its_copy_says_it_is_missing(built, capsys):
    """Try-out 67, F4: `ekd cache info` said "none" (an older cache's words) where verify and runs said missing."""
    shipped = _without_its_copy(built["cache"], built["root"] / "shipped-info")
    assert main(["cache", "info", str(shipped)]) == 0
    assert (
        "missing: the manifest records 4 (copied without its teacher/ directory?)" in capsys.readouterr().out
    )


@pytest.mark.slow
def test_a_teacher_whose_weights_file_is_cut_short_is_named(built, capsys):
    """Try-out 67, F6: a truncated model.safetensors (a half-copied teacher) got the generic mismatch, whose way
    on (--overwrite) needs the very teacher that is broken."""
    weights = built["teacher"] / "model.safetensors"
    whole = weights.read_bytes()
    try:
        weights.write_bytes(whole[: len(whole) // 2])
        assert main(_from_cache(built, "run.name=cut")) != 0
    finally:
        weights.write_bytes(whole)
    line = _error_line(capsys)
    assert "has model.safetensors, which safetensors cannot read" in line and "half-synced" in line


def test_a_resume_may_name_the_cache_where_it_is_now(built, capsys):
    """Try-out 119 (a sweep moving its cache to a node's disk): `--resume teacher.cache_dir=COPY` was refused as
    changing "what the run computes"; the cache's signature is checked before the first step, so a copy is
    taken (one line says so) and trains on exactly as the uninterrupted run; a cache built for other settings
    is still refused, and one that is not there is named."""
    root = built["root"]
    first = _from_cache(built, "run.name=moved", "train.checkpoint_every=1")
    assert main([*first, "train.max_steps=2"]) == 0
    copy = root / "cache-copy"
    shutil.copytree(built["cache"], copy)
    capsys.readouterr()
    assert main([*first, "--resume", f"teacher.cache_dir={copy}"]) == 0, capsys.readouterr().err
    assert loss_curve(root / "runs" / "moved") == loss_curve(root / "runs" / "ref")
    # try-out 120, F2: ekd compare made the run that read the copy another method (teacher.cache_dir by path):
    # a cache run is told by the teacher its cache pins (ekd-run.json's cache_teacher), not by the cache's path
    from ekd.eval.compare import compare_runs

    runs = [root / "runs" / "ref", root / "runs" / "moved"]
    marker = json.loads((runs[1] / "ekd-run.json").read_text())
    assert marker["cache_teacher"].startswith("safetensors-sha256:"), marker
    assert marker["cache_teacher"].endswith("|float32|fp32"), marker  # and the arithmetic of its build
    # review 126, R2: and the cache's measured bytes/token, which ekd compare reports once the cache is gone
    from ekd.teacher.cache import CacheReader

    assert marker["cache_bytes_per_token"] == CacheReader(built["cache"]).info()["bytes_per_token"] > 0, (
        marker
    )
    summary = compare_runs(runs, root / "cmp", plots=False)
    assert [g["method"] for g in summary["groups"]] == ["rskd"], summary["groups"]
    assert summary["replicas"][0]["replicas"][0]["run"] == str(runs[1]), summary["replicas"]
    other = root / "cache-topk"  # the same data and teacher, other targets: its signature differs
    assert main(["-q", "cache", built["cfg"], "method.preset=topk", f"teacher.cache_dir={other}"]) == 0
    capsys.readouterr()
    assert main([*first, "train.max_steps=7", "--resume", f"teacher.cache_dir={other}"]) != 0
    line = _error_line(capsys)  # try-out 120, F8: not "train as it was built", which --resume then refuses
    assert line.startswith("ekd: error: --resume: teacher cache at") and "target" in line, line
    assert (
        f"name that cache (teacher.cache_dir={copy}, as " in line and "train as it was built" not in line
    ), line
    # review of session 34, R3: a cache of this config's signature computed in other arithmetic (a GPU's bfloat16
    # teacher) is no copy of the run's: refused, where the path alone let it in
    bf16 = root / "cache-bf16"
    assert (
        main(["-q", "cache", built["cfg"], "model.teacher_dtype=bfloat16", f"teacher.cache_dir={bf16}"]) == 0
    )
    capsys.readouterr()
    assert main([*first, "train.max_steps=7", "--resume", f"teacher.cache_dir={bf16}"]) != 0
    line = _error_line(capsys)
    assert (
        "was computed otherwise than the run's (a bfloat16 teacher in fp32; the run's: a float32 teacher in fp32)"
        in line
    )
    # review of session 34, R4: the run's own cache, rebuilt in place for other settings, keeps its own advice (it
    # was told "trained from another cache; name that cache (teacher.cache_dir=<the same path>)")
    shutil.rmtree(copy)
    shutil.copytree(other, copy)
    assert main([*first, "train.max_steps=7", "--resume", f"teacher.cache_dir={copy}"]) != 0
    line = _error_line(capsys)
    # try-out 122, F6: not a new run's advice ("train as it was built", which --resume refuses): rebuild it for the run
    assert line.startswith(
        f"ekd: error: --resume: the run's teacher cache at {copy} was rebuilt since for other"
    ), line
    assert "config.yaml --overwrite`" in line and "train as it was built" not in line, line
    shutil.rmtree(
        copy
    )  # the run's own cache rebuilt in place in another arithmetic: told so, with the command
    shutil.copytree(bf16, copy)
    assert main([*first, "train.max_steps=7", "--resume", f"teacher.cache_dir={copy}"]) != 0
    line = _error_line(capsys)
    assert "it is the run's, rebuilt since: rebuild it as it was with `ekd cache" in line, line
    assert "--overwrite model.teacher_dtype=float32` on a device where that computes in fp32" in line, line
    gone = root / "cache-gone"
    assert main([*first, "train.max_steps=7", "--resume", f"teacher.cache_dir={gone}"]) != 0
    line = _error_line(capsys)
    assert f"teacher.cache_dir {gone} does not exist" in line, line


def test_a_build_continued_in_other_arithmetic_is_refused(built, capsys):
    """Try-out 122, F1: a build of a local teacher stopped under one teacher dtype and finished under another was
    one cache of mixed targets, recorded as the last build's arithmetic (which --resume and ekd compare trusted);
    the teacher's file hash is the same in both. Continuing over shards another arithmetic computed is refused in
    one line; in the same one it goes on."""
    out = built["root"] / "cache-continued"
    shutil.copytree(built["cache"], out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["signature"]["built_with"] == {"teacher_dtype": "float32", "autocast": "fp32"}, manifest
    (out / "shard-00000.bin").unlink()
    capsys.readouterr()
    assert main(["cache", built["cfg"], f"teacher.cache_dir={out}", "model.teacher_dtype=bfloat16"]) == 2
    line = _error_line(capsys)
    assert "its built shards (manifest.json) were computed with a float32 teacher in fp32" in line, line
    assert main(["-q", "cache", built["cfg"], f"teacher.cache_dir={out}"]) == 0
    assert _shards_sha256(out) == _shards_sha256(built["cache"])


def test_an_older_cache_run_is_sized_only_by_the_cache_it_trained_from(built, tmp_path, caplog):
    """Try-out 127, F2: an older ekd's cache run (no `cache_bytes_per_token` record) was sized by whatever cache
    sat at its path — one rebuilt for other settings priced an N=50 run at 12.1 B/token instead of 38.2."""
    import logging

    import yaml

    from ekd.eval.compare import read_run
    from ekd.teacher.cache import CacheReader

    older = tmp_path / "older"
    shutil.copytree(built["root"] / "runs" / "ref", older)
    marker = json.loads((older / "ekd-run.json").read_text())
    marker.pop("cache_bytes_per_token", None)
    (older / "ekd-run.json").write_text(json.dumps(marker))
    measured = CacheReader(built["cache"]).info()["bytes_per_token"]
    assert read_run(older).bytes_per_token == measured  # the cache it trained from, still there
    config = yaml.safe_load((older / "config.yaml").read_text())
    config["method"]["rs_samples"] = 8  # the run's settings are not those of the cache at the path
    (older / "config.yaml").write_text(yaml.safe_dump(config))
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert math.isnan(read_run(older).bytes_per_token)
    assert f"the cache at {built['cache']} cannot tell it (" in caplog.text, caplog.text


def test_a_teacher_replaced_while_a_cache_run_trained_is_not_evaluated(
    built, tmp_path, capsys, caplog, monkeypatch
):
    """Try-out 130, F1: a run trained from a cache loads the teacher again at its end to evaluate it; one replaced in
    the meantime (`ekd demo --fresh` rewrites runs/demo/teacher; a colleague retrains it) gave the run another
    model's KL and agreement, while ekd-run.json recorded the cache's teacher. Its weights are checked against the
    cache's (the files' stat first, their hash only when that differs); another teacher is not evaluated, said."""
    import logging

    from ekd.models.load import build_preset
    from ekd.teacher.cache import CacheReader
    from ekd.teacher.cache import source as cache_source

    signature = CacheReader(built["cache"]).signature
    assert cache_source.teacher_changed_since(str(built["teacher"]), signature) == ""
    other = tmp_path / "teacher"
    shutil.copytree(built["teacher"], other)
    assert (
        cache_source.teacher_changed_since(str(other), signature) == ""
    )  # a copy: its weights hashed, equal
    build_preset("llama-micro", 320, TEACHER_EOS, seed=7).save_pretrained(other)
    said = cache_source.teacher_changed_since(str(other), signature)
    assert (
        said == f"{other} holds other weights than the cache's teacher now (replaced while the run trained?)"
    )
    gone = tmp_path / "gone"  # try-out 131: a teacher moved away failed the run at its end, nothing exported
    assert cache_source.teacher_changed_since(str(gone), signature).startswith(f"{gone} is no longer there")
    # the end of a cache run: the teacher found replaced is not loaded, and the run says so
    real = cache_source.teacher_changed_since
    monkeypatch.setattr(
        cache_source, "teacher_changed_since", lambda spec, sig, revision="": real(str(other), sig, revision)
    )
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert (
            main(["-q", "distill", built["cfg"], "teacher.source=cache", "run.name=swapped", "--overwrite"])
            == 0
        )
    assert "the teacher is not evaluated: " in caplog.text and "holds other weights" in caplog.text
    saved = json.loads((built["root"] / "runs" / "swapped" / "eval.json").read_text())
    assert "kl" not in saved["eval"] and "eval/teacher" not in saved, saved["eval"].keys()


def test_a_cache_a_run_trains_from_is_not_overwritten_under_it(built, tmp_path, capsys):
    """Try-out 130, F2: `ekd cache --overwrite` deleted the shards under a run training from the cache (a run took
    no lock), which died at step 330 blaming a "damaged" shard, every step lost. A run holds the cache's readers'
    lock shared while it trains; --overwrite takes it exclusively and is refused meanwhile; a run starting during a
    rebuild is refused in one line."""
    from ekd.teacher.cache.readers import no_readers, reading

    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    before = _shards_sha256(cache)
    with reading(cache):  # a run training from it (another process's, as flock sees a second open file)
        assert main(["cache", built["cfg"], f"teacher.cache_dir={cache}", "--overwrite"]) == 2
        line = _error_line(capsys)
        assert line == (
            f"ekd: error: {cache} is being read by a run training from it (another ekd process); --overwrite would "
            "delete the shards under it: wait for it to end, or build into another teacher.cache_dir"
        ), line
        assert _shards_sha256(cache) == before
        with reading(cache):  # another reader beside it: shared
            pass
    with no_readers(cache):  # a rebuild under way: a run starting now is told so
        assert main([*_from_cache(built, f"teacher.cache_dir={cache}", "run.name=during")]) == 2
        assert (
            "is being rebuilt by another ekd process (ekd cache or ekd cache import, --overwrite)"
            in _error_line(capsys)
        )
    assert (
        main(["-q", "cache", built["cfg"], f"teacher.cache_dir={cache}", "--overwrite"]) == 0
    )  # none reads now
    # another process reading it is named by its pid (try-out 131: the refusal named no process)
    import subprocess
    import sys

    holder = subprocess.Popen(
        [sys.executable, "-c", f"from ekd.teacher.cache.readers import reading; r = reading({str(cache)!r}); "
         "print('held', flush=True); import sys; sys.stdin.read()"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert holder.stdout.readline().strip() == "held"
        assert main(["cache", built["cfg"], f"teacher.cache_dir={cache}", "--overwrite"]) == 2
        line = _error_line(capsys)
        assert f"(another ekd process, pid {holder.pid}); --overwrite" in line, line
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_the_readers_lock_is_given_back_by_a_refused_open_and_by_close(built):
    """Review 132, R5: the readers' lock lived as long as the CacheTeacher object — a refused open whose traceback
    is kept (a notebook, pytest) or a driver that trains then rebuilds in one process refused its own rebuild."""
    from ekd.config import load_config
    from ekd.teacher.cache import CacheError, CacheTeacher
    from ekd.teacher.cache.readers import no_readers
    from ekd.train.prepare import prepare_data

    cfg = load_config(built["cfg"], ["teacher.source=cache"])
    data = prepare_data(cfg, built["root"] / "runs" / "ref")
    teacher = CacheTeacher(cfg, data, torch.device("cpu"))
    teacher.close()
    with no_readers(built["cache"]):
        pass
    other = load_config(built["cfg"], ["teacher.source=cache", "method.rs_samples=7"])
    with pytest.raises(CacheError) as refused:  # the traceback (and the half-made object) kept alive
        CacheTeacher(other, data, torch.device("cpu"))
    assert refused.value is not None
    with no_readers(built["cache"]):
        pass


def test_a_reader_who_cannot_write_beside_the_cache_still_holds_its_lock(built, tmp_path, monkeypatch):
    """Try-out 131, F2: a reader that could not open `.<cache>.readers` for writing (another user's cache on a shared
    file system) took no lock, and the owner's --overwrite deleted the shards under it. A shared flock needs only
    to read the file, which the build makes."""
    import builtins

    from ekd.locks import readers_lock
    from ekd.teacher.cache.readers import no_readers, reading

    cache = tmp_path / "cache"
    shutil.copytree(built["cache"], cache)
    with no_readers(cache):  # the owner's command made the file
        pass
    assert readers_lock(cache).is_file()
    real = builtins.open

    def read_only(file, mode="r", *args, **kwargs):  # as another user who may only read it
        if Path(file) == readers_lock(cache) and mode != "r":
            raise PermissionError(13, "Permission denied", str(file))
        return real(file, mode, *args, **kwargs)

    with monkeypatch.context() as m:
        m.setattr(builtins, "open", read_only)
        lock = reading(cache)
    assert lock.held
    with pytest.raises(Exception, match="is being read by a run training from it"):
        no_readers(cache)
    lock.release()


def test_ekd_eval_of_a_cache_run_refuses_a_teacher_that_is_not_the_caches(built, tmp_path, capsys):
    """Try-out 131, F1: `ekd eval RUN` of a cache run, told to add the teacher's figures "once it is back", wrote
    another model's KL (5.705 for 0.189) into eval.json when the teacher was not back: it is checked against the
    teacher the run recorded (`cache_teacher`), refused in one line with the way to score the student alone."""
    from ekd.models.load import build_preset

    teacher = tmp_path / "teacher"
    shutil.copytree(built["teacher"], teacher)
    run = built["root"] / "runs" / "cachecheck"
    args = [
        "-q",
        "distill",
        built["cfg"],
        "teacher.source=cache",
        f"model.teacher={teacher}",
        "run.name=cachecheck",
    ]
    assert main([*args, "--overwrite"]) == 0
    before = (run / "eval.json").read_bytes()
    build_preset("llama-micro", 320, TEACHER_EOS, seed=7).save_pretrained(
        teacher
    )  # another model at its path
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    line = _error_line(capsys)
    assert f"ekd eval: {teacher} holds other weights than the cache's teacher now" in line, line
    assert f"score the student alone: `ekd eval {run} eval.teacher=false`, which keeps the KL" in line, line
    assert (run / "eval.json").read_bytes() == before
    assert main(["-q", "eval", str(run), "eval.teacher=false"]) == 0


def test_a_cache_run_evaluating_its_teacher_in_another_dtype_says_the_targets_are_the_caches(built, caplog):
    """Try-out 158, F3: model.teacher_dtype=bfloat16 beside a cache a float32 teacher computed reached only the
    teacher loaded at the end (its KL measured against a bfloat16 teacher), the targets staying the cache's, in
    silence: said at the start; the cache's own dtype says nothing."""
    import logging

    said = "applies to the teacher loaded at the end to evaluate (its KL and agreement), not to the targets"
    run = ["-q", "distill", built["cfg"], "teacher.source=cache", "train.max_steps=1", "run.name=dtype"]
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main([*run, "model.teacher_dtype=bfloat16"]) == 0
    line = next(r.getMessage() for r in caplog.records if said in r.getMessage())
    assert "computed by a float32 teacher in fp32 (its built_with); model.teacher_dtype=float32" in line, line
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main([*run, "model.teacher_dtype=float32", "--overwrite"]) == 0
        assert main([*run, "model.teacher_dtype=bfloat16", "eval.teacher=false", "--overwrite"]) == 0
    assert said not in caplog.text
    # try-out 160, F2: it decides only the teacher evaluated at the end: --resume may change it
    assert (
        main([*run, "model.teacher_dtype=float32", "eval.teacher=false", "train.max_steps=2", "--resume"])
        == 0
    )
