"""A hub model is identified by the weights its id resolves to in the hub cache, as a local directory is by its
own (try-out 152, F1/F8): a teacher or LoRA base named ``org/name`` was recorded by its name and an empty revision,
so new weights downloaded under ``main`` taught a resumed run, were paired with the old ones by ``ekd compare`` and
scored an adapter trained on another base — without a word."""

from __future__ import annotations

import json
import logging

import pytest
from huggingface_hub import constants

from ekd.cli import main
from ekd.data import train_bpe_tokenizer
from ekd.hub import model_directory
from ekd.models.identity import weights_fingerprint
from ekd.models.load import build_preset
from hub_cache import point_ref, put_in_hub_cache
from tiny import tiny_overrides, write_corpus

A, B = "a" * 40, "b" * 40


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=24)


@pytest.fixture
def hub(tmp_path, corpus, monkeypatch, hub_unreachable):
    """``org/teacher`` cached at commits A (main, v1) and B (other weights), ``org/student`` at A: the hub
    unreachable, as on a cluster's compute node."""
    root = tmp_path / "hub"
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(root))
    tok = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 300, None)
    for seed, commit in ((0, A), (1, B)):
        build_preset("llama-tiny", len(tok), tok.eos_token_id, seed=seed).save_pretrained(
            tmp_path / f"t{seed}"
        )
        tok.save_pretrained(tmp_path / f"t{seed}")
        put_in_hub_cache(
            root, "org/teacher", tmp_path / f"t{seed}", commit, ("main", "v1") if seed == 0 else ()
        )
    build_preset("llama-micro", len(tok), tok.eos_token_id, seed=2).save_pretrained(tmp_path / "s")
    tok.save_pretrained(tmp_path / "s")
    put_in_hub_cache(root, "org/student", tmp_path / "s", A)
    return root


def test_a_hub_ids_weights_are_those_of_the_snapshot_its_revision_names(hub, tmp_path):
    local = weights_fingerprint(str(tmp_path / "t0"))
    assert model_directory("org/teacher") == hub / "models--org--teacher" / "snapshots" / A
    assert weights_fingerprint("org/teacher") == local == weights_fingerprint("org/teacher", "v1")
    assert weights_fingerprint("org/teacher", B) == weights_fingerprint(str(tmp_path / "t1")) != local
    assert (
        weights_fingerprint("org/not-cached") is None and weights_fingerprint("org/teacher", "c" * 40) is None
    )
    point_ref(hub, "org/teacher", B)  # newer weights downloaded under main: another teacher
    assert weights_fingerprint("org/teacher") != local


def test_new_weights_under_main_are_another_teacher_for_resume_and_eval_json(hub, tmp_path, corpus, capsys):
    args = [
        "distill",
        *tiny_overrides(
            tmp_path, corpus, "hub", **{"model.teacher": "org/teacher", "model.tokenizer": "teacher"}
        ),
        "train.max_steps=2",
        "train.checkpoint_every=1",
    ]
    assert main(args) == 0
    run = tmp_path / "runs" / "hub"
    local = weights_fingerprint(str(tmp_path / "t0"))
    assert json.loads((run / "ekd-run.json").read_text())["teacher_weights"] == local
    assert json.loads((run / "eval.json").read_text())["eval"]["teacher"]["weights"] == local
    point_ref(hub, "org/teacher", B)
    capsys.readouterr()
    assert main([*args, "train.max_steps=3", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "than the teacher this run was taught by (retrained, replaced or a newer" in err[0]
    ), err
    assert f"(model.teacher_revision={A}, the commit it was taught by)" in err[0], err  # try-out 162, F5
    # another model named instead (try-out 154, N10: said as the run's teacher retrained or replaced)
    assert main([*args, "train.max_steps=3", "--resume", f"model.teacher={tmp_path / 't1'}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "than the teacher this run was taught by (another model)" in err[0], err
    snapshot = hub / "models--org--teacher" / "snapshots" / A  # the run's teacher named where its weights are
    assert main([*args, "train.max_steps=3", "--resume", f"model.teacher={snapshot}"]) == 0
    # or by the commit that holds them (try-out 160, F3: refused as a change of what the run computes)
    assert main([*args, "train.max_steps=4", "--resume", f"model.teacher_revision={A}"]) == 0
    assert main([*args, "train.max_steps=5", "--resume", f"model.revision={A}"]) == 0
    capsys.readouterr()
    assert main([*args, "train.max_steps=6", "--resume", f"model.teacher_revision={B}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other weights than the teacher this run was taught by" in err[0], err
    # the run's commit not on this machine (another node's cache): the pin is taken, its weights checked once
    # fetched — here the hub is unreachable, so the fetch is what is refused (review 163, R1: "config differs")
    import shutil

    shutil.rmtree(hub / "models--org--teacher" / "snapshots" / A)
    assert main([*args, "train.max_steps=6", "--resume", f"model.teacher_revision={A}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"its revision '{A}'" in err[0] and "config differs" not in err[0], err


def test_an_adapter_on_a_hub_base_is_not_scored_on_other_weights_under_its_id(
    hub, tmp_path, corpus, capsys, caplog
):
    pytest.importorskip("peft")
    args = [
        "distill",
        *tiny_overrides(
            tmp_path, corpus, "lora", **{"model.student": "org/student", "model.tokenizer": "student"}
        ),
        "train.max_steps=1",
        "model.lora_r=2",
        "model.lora_export=adapter",
    ]
    assert main(args) == 0
    run = tmp_path / "runs" / "lora"
    base = json.loads((run / "ekd-run.json").read_text())["student_base"]
    assert base["revision"].startswith("safetensors") and base["commit"] == A
    build_preset("llama-micro", 300, 0, seed=3).save_pretrained(tmp_path / "s2")  # the base retrained
    for f in (tmp_path / "s").glob("*token*"):
        (tmp_path / "s2" / f.name).write_bytes(f.read_bytes())
    put_in_hub_cache(hub, "org/student", tmp_path / "s2", B)  # main moves to B
    capsys.readouterr()  # --resume names the commit the adapters trained on (try-out 164, F5)
    assert main([*args, "train.max_steps=2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"put that base back (model.revision={A}, the commit it trained on" in err[0], (
        err
    )
    # the export pins the commit its base resolved to (try-out 154, N5): scored on that base, the run's figures
    note = json.loads((run / "student" / "ekd_base.json").read_text())
    assert (note["base_model"], note["revision"]) == ("org/student", A), note
    before = json.loads((run / "eval.json").read_text())["eval"]["ppl"]
    assert main(["eval", str(run), "eval.teacher=false"]) == 0
    assert json.loads((run / "eval.json").read_text())["eval"]["ppl"] == pytest.approx(before, rel=1e-6)
    note["revision"] = (
        ""  # an older export, which pinned no commit: whatever main holds, refused when changed
    )
    (run / "student" / "ekd_base.json").write_text(json.dumps(note))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "whose weights changed since the run trained it" in err[0], err
    # an older ekd's run recorded no base either: scored on main as it is now, said (try-out 157, N2)
    marker = json.loads((run / "ekd-run.json").read_text())
    del marker["student_base"]
    (run / "ekd-run.json").write_text(json.dumps(marker))
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main(["eval", str(run), "eval.teacher=false"]) == 0
    assert "recorded without the commit it trained on (an older ekd's export)" in caplog.text


def test_a_cache_run_is_not_evaluated_against_new_weights_under_its_hub_teachers_id(
    hub, tmp_path, corpus, capsys, caplog
):
    """Try-out 152, F2: a run from a cache built with org/teacher at A was evaluated against B after main moved —
    KL and agreement of a teacher the student never saw — while `ekd cache` itself refused the change. The cache
    pins a hub teacher by its loaded weights' hash; the teacher loaded to evaluate is compared with it."""
    import logging

    base = tiny_overrides(
        tmp_path, corpus, "c", **{"model.teacher": "org/teacher", "model.tokenizer": "teacher"}
    )
    cache = [f"teacher.cache_dir={tmp_path / 'cache'}", "method=rskd"]
    assert main(["cache", *base, *cache]) == 0
    from_cache = ["distill", *base, *cache, "teacher.source=cache", "train.max_steps=1"]
    assert main([*from_cache, "run.name=a"]) == 0
    assert "kl" in json.loads((tmp_path / "runs" / "a" / "eval.json").read_text())["eval"]
    point_ref(hub, "org/teacher", B)
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main([*from_cache, "run.name=b"]) == 0
    assert (
        "the teacher is not evaluated: org/teacher now loads other weights than the cache was built from"
        in caplog.text
    )
    assert "kl" not in json.loads((tmp_path / "runs" / "b" / "eval.json").read_text())["eval"]
    capsys.readouterr()
    assert main(["eval", str(tmp_path / "runs" / "a")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "now loads other weights than the cache was built from" in err[0], err
    point_ref(hub, "org/teacher", A)  # the teacher back: evaluated again
    assert main(["eval", str(tmp_path / "runs" / "a")]) == 0
    # in another dtype than the build's, the same weights (review 156, R2: refused, its hash taken in that dtype):
    # loaded in bfloat16 beside a float32 build it cannot be told (evaluated); the other way round, it is compared
    assert main(["eval", str(tmp_path / "runs" / "a"), "model.teacher_dtype=bfloat16"]) == 0
    # try-out 154, N3: the cache's teacher named by its snapshot directory (its files' hash is no state-dict hash)
    point_ref(hub, "org/teacher", B)
    snapshot = hub / "models--org--teacher" / "snapshots" / A
    assert main([*from_cache, "run.name=snap", f"model.teacher={snapshot}"]) == 0
    assert "kl" in json.loads((tmp_path / "runs" / "snap" / "eval.json").read_text())["eval"]


def test_a_cache_run_whose_hub_teacher_is_not_here_is_refused_at_its_start(hub, tmp_path, corpus, capsys):
    """Try-out 152, F12: a cache copied to a machine without its hub teacher trained to the end and then failed at
    the evaluation, told to check the network or HF_HOME; refused at the start, naming eval.teacher=false."""
    import shutil

    base = tiny_overrides(
        tmp_path, corpus, "c", **{"model.teacher": "org/teacher", "model.tokenizer": "teacher"}
    )
    cache = [f"teacher.cache_dir={tmp_path / 'cache'}", "method=rskd"]
    assert main(["cache", *base, *cache]) == 0
    shutil.rmtree(hub / "models--org--teacher")
    capsys.readouterr()
    from_cache = ["distill", *base, *cache, "teacher.source=cache", "train.max_steps=1"]
    assert main(from_cache) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "set eval.teacher=false to train and evaluate without it" in err[0], err
    # ekd went offline itself (the student's probe): not said as the user's HF_HUB_OFFLINE (try-out 154, N10)
    assert "while the hub cannot be reached (found earlier in this command)" in err[0], err
    assert not (tmp_path / "runs" / "c" / "metrics.jsonl").exists()
    assert main([*from_cache, "eval.teacher=false"]) == 0


def test_a_revision_not_in_the_cache_is_named_beside_those_that_are(hub, tmp_path, corpus, capsys):
    """Try-out 152, F4: model.revision=nosuch of a cached repository was said as the whole hub id not cached."""
    args = ["distill", *tiny_overrides(tmp_path, corpus, "r", **{"model.teacher": "org/teacher"})]
    assert main([*args, "model.revision=nosuch"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = (
        "as a hub id its revision 'nosuch' (model.teacher_revision, else model.revision: a teacher and a student "
        f"pinned apart take model.teacher_revision) is not in the local cache (cached: main, v1, {A}, {B})"
    )
    assert len(err) == 1 and said in err[0], err  # the key that set it named (try-out 160, F10)


def test_a_hub_id_cached_only_at_a_commit_names_its_missing_default_branch(hub, tmp_path, corpus, capsys):
    """Try-out 162, F3: org/teacher cached at its commits only (no refs/main), no revision set, was said as
    "its config.json is not in the local cache (a download not finished?)": the default branch is what is missing."""
    for ref in (hub / "models--org--teacher" / "refs").iterdir():
        ref.unlink()
    teacher = {"model.teacher": "org/teacher", "model.tokenizer": "teacher"}
    args = ["distill", *tiny_overrides(tmp_path, corpus, "m", **teacher)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = (
        "its default branch 'main' (neither model.teacher_revision nor model.revision set) is not in the local cache "
        f"(cached: {A}, {B})"
    )
    assert len(err) == 1 and said in err[0], err
    assert main([*args, f"model.teacher_revision={A}", "train.max_steps=1"]) == 0


def test_a_cached_tokenizer_only_repository_loads_offline(hub, tmp_path, corpus):
    """Try-out 152, F5: model.tokenizer=org/tok, cached as `hf download` leaves a tokenizer repository (no
    config.json), was refused as "not in the cached files": transformers 5 asks a hub id for its config.json."""
    from ekd.models.load import load_tokenizer

    tok = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 300, None)
    tok.save_pretrained(tmp_path / "tok")
    assert not (tmp_path / "tok" / "config.json").exists()
    put_in_hub_cache(hub, "org/tok", tmp_path / "tok", A)
    loaded = load_tokenizer("org/tok", role="tokenizer")
    assert loaded.get_vocab() == tok.get_vocab()


def test_a_hub_models_download_cut_short_is_said_before_the_data(hub, tmp_path, corpus, capsys, monkeypatch):
    """Try-out 152, F11: config.json cached, the weights not (a download cut short), was found only when the model
    loaded — after the data were read — as a file the repository has not got."""
    from ekd.train import trainer

    (tmp_path / "half").mkdir()
    (tmp_path / "half" / "config.json").write_bytes((tmp_path / "t0" / "config.json").read_bytes())
    put_in_hub_cache(hub, "org/half", tmp_path / "half", A)

    def no_data(*args, **kwargs):
        raise AssertionError("the data were read before the teacher's files were checked")

    monkeypatch.setattr(trainer, "prepare_data_once", no_data)
    args = ["distill", *tiny_overrides(tmp_path, corpus, "h", **{"model.teacher": "org/half"})]
    said = (
        "'org/half' in the hub cache has a config.json but no weights (a download not finished?); finish its "
    )
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"model.teacher: {said}" in err[0], err
    # ekd cache and ekd student init alike, before the data or anything is built (try-out 154, N7)
    from ekd.teacher.cache import build

    monkeypatch.setattr(build, "_prepare_data", no_data)
    assert main(["cache", *args[1:], f"teacher.cache_dir={tmp_path / 'cache'}", "method=rskd"]) == 2
    assert f"model.teacher: {said}" in capsys.readouterr().err
    assert main(["student", "init", "org/half", str(tmp_path / "s-half"), "--layers", "1"]) == 2
    assert f"student init: teacher: {said}" in capsys.readouterr().err and not (tmp_path / "s-half").exists()


def test_ekd_eval_refuses_new_weights_under_the_runs_teacher(hub, tmp_path, corpus, capsys):
    """Try-out 154, N2: `ekd eval RUN` of a run taught by org/teacher at A scored B after main moved, without a
    word, and replaced the run's recorded teacher in eval.json (ekd-run.json still said A); refused as --resume
    refuses it, and the run's teacher named by its commit evaluates."""
    args = [
        "distill",
        *tiny_overrides(
            tmp_path, corpus, "e", **{"model.teacher": "org/teacher", "model.tokenizer": "teacher"}
        ),
        "train.max_steps=1",
    ]
    assert main(args) == 0
    run = tmp_path / "runs" / "e"
    before = json.loads((run / "eval.json").read_text())["eval"]["teacher"]["weights"]
    point_ref(hub, "org/teacher", B)
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other weights than the teacher this run was taught by" in err[0], err
    # the run's own teacher restated is the run's, checked alike (try-out 164, F1: scored B under it, unchecked)
    assert main(["eval", str(run), "model.teacher=org/teacher"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other weights than the teacher this run was taught by" in err[0], err
    assert json.loads((run / "eval.json").read_text())["eval"]["teacher"]["weights"] == before
    assert main(["eval", str(run), f"model.revision={A}"]) == 0
    assert main(["eval", str(run), "eval.teacher=false"]) == 0
    import shutil

    shutil.rmtree(hub / "models--org--teacher")  # the teacher gone from this machine: the way round it named
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    said = "the run's teacher org/teacher (model.teacher) is not in the hub cache here and the hub cannot be reached"
    assert len(err) == 1 and said in err[0] and f"(ekd eval {run} eval.teacher=false)" in err[0], err


def test_a_cache_pinned_to_a_branch_pins_the_commit_it_resolves_to(hub, tmp_path, corpus, capsys, caplog):
    """Try-out 154, N1: a cache built with model.revision=v1 recorded the branch's name: after v1 moved, a resumed
    build finished with the other teacher's targets and a run from it was evaluated against it, without a word.
    The build pins the commit v1 resolves to (as a commit given is pinned), so a rebuild after the branch moved is
    refused and a run from the cache is not evaluated against the new weights; named by its commit it is."""
    import logging

    base = tiny_overrides(
        tmp_path, corpus, "c", **{"model.teacher": "org/teacher", "model.tokenizer": "teacher"}
    )
    cache = [f"teacher.cache_dir={tmp_path / 'cache'}", "method=rskd", "model.revision=v1"]
    assert main(["cache", *base, *cache]) == 0
    manifest = json.loads((tmp_path / "cache" / "manifest.json").read_text())
    assert manifest["signature"]["teacher_revision"] == A, manifest["signature"]
    point_ref(hub, "org/teacher", B, "v1")
    capsys.readouterr()
    assert main(["cache", *base, *cache]) == 2  # a build of other targets into this cache: refused
    err = capsys.readouterr().err
    said = f'teacher_revision [model.teacher_revision, else model.revision]: expected "{B[:37]}…", found "{A[:37]}…"'
    assert said in err, err
    assert f"keep it with model.teacher_revision={A} (the commit it was built from)" in err, err  # t162, F4
    from_cache = ["distill", *base, *cache, "teacher.source=cache", "train.max_steps=1"]
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main([*from_cache, "run.name=v1moved"]) == 0
    said = "the teacher is not evaluated: org/teacher now loads other weights than the cache was built from"
    assert said in caplog.text
    assert (
        f"model.revision=v1 reads another commit now: model.teacher_revision={A} names the cache's"
        in caplog.text
    )
    capsys.readouterr()  # ekd eval names the commit that holds the cache's teacher (try-out 160, F4)
    assert main(["eval", str(tmp_path / "runs" / "v1moved")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"(a hub id: model.teacher_revision={A})" in err[0], err
    assert main([*from_cache, "run.name=pinned", f"model.revision={A}"]) == 0
    assert "kl" in json.loads((tmp_path / "runs" / "pinned" / "eval.json").read_text())["eval"]
    # a cache an older ekd pinned by the branch's name: a rerun goes on with it, said (review 156, R4)
    point_ref(hub, "org/teacher", A, "v1")
    from ekd.teacher.cache.manifest import manifest_sha256

    path = tmp_path / "cache" / "manifest.json"
    manifest = json.loads(path.read_text())
    manifest["signature"]["teacher_revision"] = "v1"
    manifest["manifest_sha256"] = manifest_sha256(manifest)
    path.write_text(json.dumps(manifest))
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert main(["cache", *base, *cache]) == 0
    assert "pins its teacher by the branch name model.revision=v1" in caplog.text


def test_a_cache_of_a_local_teacher_trains_and_evaluates_with_the_same_weights_as_a_hub_id(
    hub, tmp_path, corpus
):
    """Try-out 154, N8: a cache built from a local teacher directory, trained from with model.teacher naming the
    hub id of the same bytes (cached here), said the hub id "is not there"."""
    base = tiny_overrides(tmp_path, corpus, "l", **{"model.tokenizer": "teacher"})
    cache = [f"teacher.cache_dir={tmp_path / 'cache'}", "method=rskd"]
    assert main(["cache", *base, *cache, f"model.teacher={tmp_path / 't0'}"]) == 0
    args = [
        "distill",
        *base,
        *cache,
        "model.teacher=org/teacher",
        "teacher.source=cache",
        "train.max_steps=1",
    ]
    assert main(args) == 0
    assert "kl" in json.loads((tmp_path / "runs" / "l" / "eval.json").read_text())["eval"]


def test_the_loaded_teacher_is_compared_with_each_kind_of_pin(hub, tmp_path):
    """Review 156, R2/R18: a state-dict pin compared in the build's dtype (a bfloat16 build, a float32 evaluation:
    the same weights), and transformers 4's `commit:<sha>` pin by the snapshot the revision resolves to now."""

    import torch
    from transformers import AutoModelForCausalLM

    from ekd.config import load_config
    from ekd.teacher.cache.signature import state_dict_sha256
    from ekd.teacher.cache.source import loaded_teacher_changed

    cfg = load_config(overrides=["model.teacher=org/teacher"])
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "t0")  # float32
    pin = f"state-dict-sha256:{state_dict_sha256(model.to(torch.bfloat16))}"
    assert loaded_teacher_changed(cfg, model.float(), pin, "bfloat16") == ""
    other = AutoModelForCausalLM.from_pretrained(tmp_path / "t1")
    assert "now loads other weights" in loaded_teacher_changed(cfg, other, pin, "bfloat16")
    assert loaded_teacher_changed(cfg, model, f"commit:{A}") == ""
    point_ref(hub, "org/teacher", B)
    assert "now loads other weights" in loaded_teacher_changed(cfg, model, f"commit:{A}")
    assert (
        loaded_teacher_changed(cfg, model, "safetensors-sha256:00") == ""
    )  # a file pin: checked before loading


def test_a_resume_whose_teacher_load_fetches_newer_weights_is_refused(
    hub, tmp_path, corpus, capsys, monkeypatch
):
    """Review 156, R1: the run's teacher was checked against the snapshot cached when the command started; online,
    the load then resolved main to newer weights and trained on them. Checked again once loaded."""
    from ekd.train import trainer

    models = {"model.teacher": "org/teacher", "model.tokenizer": "teacher"}
    args = ["distill", *tiny_overrides(tmp_path, corpus, "r1", **models), "train.max_steps=1"]
    assert main(args) == 0
    real = trainer.load_teacher

    def load_fetching_newer(*a, **k):  # what from_pretrained does online when main moved: the new snapshot
        point_ref(hub, "org/teacher", B)
        return real(*a, **k)

    monkeypatch.setattr(trainer, "load_teacher", load_fetching_newer)
    capsys.readouterr()
    assert main([*args, "train.max_steps=2", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other weights than the teacher this run was taught by" in err[0], err


def test_a_complete_safetensors_snapshot_beside_a_bin_index_is_not_a_download_cut_short(hub, tmp_path):
    """Review 156, R7: a repository shipping model.safetensors and a pytorch_model.bin.index.json, downloaded
    without its .bin shards as usual, was refused offline as "a download not finished"."""
    from ekd.hub import check_model_spec

    both = tmp_path / "both"
    both.mkdir()
    for f in (tmp_path / "t0").iterdir():
        (both / f.name).write_bytes(f.read_bytes())
    index = {"weight_map": {"lm_head.weight": "pytorch_model-00001-of-00002.bin"}}
    (both / "pytorch_model.bin.index.json").write_text(json.dumps(index))
    put_in_hub_cache(hub, "org/both", both, A)
    check_model_spec("org/both", "model.teacher")  # no refusal


C = "c" * 40


def _pinned_apart(hub, tmp_path) -> dict[str, str]:
    """The overrides of a hub teacher pinned at B and a hub student at C, a commit only its repository has."""
    put_in_hub_cache(hub, "org/student", tmp_path / "s", C, refs=())
    return {
        "model.teacher": "org/teacher",
        "model.teacher_revision": B,
        "model.student": "org/student",
        "model.revision": C,
        "model.tokenizer": "teacher",
    }


def test_a_teacher_and_a_student_of_the_hub_are_pinned_each_to_its_own_commit(
    hub, tmp_path, corpus, capsys, caplog
):
    """Try-out 152, F4: one model.revision for every model, so a hub teacher's commit could not be pinned beside a
    hub student's (no commit is in both repositories). model.teacher_revision pins the teacher alone: it is read
    for its weights, its tokenizer, its cache and its figures; model.revision stays the student's."""
    pins = _pinned_apart(hub, tmp_path)
    args = ["distill", *tiny_overrides(tmp_path, corpus, "pins", **pins), "train.max_steps=1"]
    assert main(args) == 0
    run = tmp_path / "runs" / "pins"
    teacher = json.loads((run / "eval.json").read_text())["eval"]["teacher"]
    assert teacher["revision"] == B and teacher["weights"] == weights_fingerprint(str(tmp_path / "t1"))
    assert json.loads((run / "ekd-run.json").read_text())["teacher_weights"] == teacher["weights"]
    # the run's teacher is B's weights: ekd eval of it at A is another teacher, at B the same
    capsys.readouterr()
    assert main(["eval", str(run), f"model.teacher_revision={A}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds other weights than the teacher this run was taught by" in err[0], err
    assert "model.teacher_revision=COMMIT" in err[0], err
    # review 161, R4: model.revision reaches nothing ekd eval reads here: refused, not ignored
    assert main(["eval", str(run), f"model.revision={A}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"pinned by model.teacher_revision={B}" in err[0], err
    assert main(["eval", str(run)]) == 0
    # a cache of the teacher pins B; a run from it pinning the teacher at A is refused at its start (try-out 160,
    # F4: it trained from B's targets and blamed a branch move at its end)
    cache = tmp_path / "cache"
    cache_args = [*tiny_overrides(tmp_path, corpus, "c", **pins), f"teacher.cache_dir={cache}", "method=rskd"]
    assert main(["cache", *cache_args]) == 0
    signature = json.loads((cache / "manifest.json").read_text())["signature"]
    assert signature["teacher_revision"] == B
    capsys.readouterr()
    from_cache = ["distill", *cache_args, "teacher.source=cache", "train.max_steps=1"]
    assert main([*from_cache, f"model.teacher_revision={A}"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"set model.teacher_revision={B} to train from this cache" in err[0], err
    assert not (tmp_path / "runs" / "c").exists()
    # B's files under another commit are B's teacher (try-out 164, F3: refused by the commit's name)
    D = "d" * 40
    put_in_hub_cache(hub, "org/teacher", tmp_path / "t1", D, refs=())
    assert main([*from_cache, f"model.teacher_revision={D}", "run.name=d"]) == 0
    caplog.clear()
    assert main([*from_cache, "--overwrite"]) == 0
    assert "the teacher is not evaluated" not in caplog.text
    teacher = json.loads((tmp_path / "runs" / "c" / "eval.json").read_text())["eval"]["teacher"]
    assert teacher["revision"] == B and teacher["weights"] == weights_fingerprint(str(tmp_path / "t1"))


def test_a_hub_teacher_cached_only_at_its_pin_stands_for_a_caches_local_teacher(
    hub, tmp_path, corpus, capsys
):
    """Review 161, R1: a cache built from a local copy (t1, the weights of B), trained from with the hub id pinned to
    B where only that commit is cached (no refs/main: `hf download --revision B`), was refused as "not there"; it
    was looked up at main."""
    cache = tmp_path / "cache"
    local = {"model.teacher": str(tmp_path / "t1"), "model.tokenizer": "teacher", "method.preset": "rskd"}
    build = [*tiny_overrides(tmp_path, corpus, "b", **local), f"teacher.cache_dir={cache}"]
    assert main(["cache", *build]) == 0
    for ref in (hub / "models--org--teacher" / "refs").iterdir():
        ref.unlink()
    pinned = {
        **local,
        "model.teacher": "org/teacher",
        "model.teacher_revision": B,
        "model.tokenizer": "teacher",
    }
    run = [
        *tiny_overrides(tmp_path, corpus, "r", **pinned),
        f"teacher.cache_dir={cache}",
        "teacher.source=cache",
    ]
    capsys.readouterr()
    assert main(["distill", *run, "train.max_steps=1"]) == 0, capsys.readouterr().err


def test_ekd_plan_reads_each_hub_model_at_its_own_pin(hub, tmp_path, corpus, capsys):
    """Review 161, R10: `ekd plan` read the teacher at model.revision (the student's commit, not in the teacher's
    repository): planned at model.teacher_revision it fits; the teacher at the student's commit is named missing."""
    pins = _pinned_apart(hub, tmp_path)
    plan = ["plan", *tiny_overrides(tmp_path, corpus, "p", **pins), "--gpus", "1", "--gpu-memory", "80GiB"]
    capsys.readouterr()
    assert main(plan) == 0, capsys.readouterr().err
    assert "fits: " in capsys.readouterr().out
    assert main([*plan, "model.teacher_revision="]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "org/teacher" in err[0] and C in err[0], err


@pytest.mark.parametrize(
    "key, revision, said",
    [
        ("student init: teacher", "", "its default branch 'main' (--revision not set)"),
        ("student init", "v9", "its revision 'v9' (--revision)"),
        ("model.tokenizer", "v9", "its revision 'v9' (model.revision)"),
        ("model.student", "", "its default branch 'main' (model.revision not set)"),
    ],
)
def test_a_missing_revision_names_the_key_of_the_command_that_set_it(hub, key, revision, said):
    """Review 163, R4: `ekd student init` was told of a model.revision it has no key for (its option is --revision),
    and a hub tokenizer's missing revision named no key."""
    from ekd.hub import _not_cached

    for ref in (hub / "models--org--teacher" / "refs").iterdir():
        ref.unlink()
    assert _not_cached("org/teacher", "config.json", revision, key).startswith(said)
