"""The run directory never loses data (issue 11, items 1, 11, 13): ``--overwrite`` replaces only an ekd run,
only after everything is checked and the new run has started; a failed start leaves nothing behind; a
finished, moved or re-fed run is handled in one line.

Each test works in a copy of one small finished run (relative paths, so the copy is the same run).
"""

from __future__ import annotations

import json
import shlex
import shutil
from pathlib import Path

import pytest
import torch

from ekd.config import load_config
from ekd.train import trainer as trainer_mod
from ekd.train.run_dir import MARKER, RunStart
from hostile import cli, copy_workspace, make_workspace, one_error_line, snapshot, unchanged
from tiny import config_file, tiny_overrides, write_corpus

EXTRA = {"train.max_steps": 2, "train.checkpoint_every": 1, "method.preset": "ce"}


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A workspace ``corpus/``, ``runs/base`` (finished, checkpoints at steps 1 and 2) and ``base.yaml``."""
    return make_workspace(tmp_path_factory.mktemp("run-safety"), "base", EXTRA)


@pytest.fixture
def ws(template, tmp_path, monkeypatch):
    return copy_workspace(template, tmp_path, monkeypatch)


def _config(name: str = "base", **extra) -> str:
    return config_file(Path("."), Path("corpus"), name, **{**EXTRA, **extra})


# ------------------------------------------------------------------------------------------- lost data


@pytest.mark.parametrize(
    "args",
    [
        ["run.name=..", "--overwrite"],
        ["run.name=.", "--overwrite"],
        ["run.name=../corpus", "--overwrite"],
        ["run.name=", "--overwrite"],
        ["run.name=.hidden", "--overwrite"],
        ["run.output_dir=.", "run.name=corpus", "--overwrite"],  # the run directory is the data directory
        ["run.output_dir=.", "run.name=runs", "--overwrite"],  # a directory of runs is not a run
        ["data.source=corpus-typo", "--overwrite"],  # a typo must not delete the old run first
        ["model.student=preset:no-such-model", "--overwrite"],
        ["model.tokenizer=/no/such/tokenizer", "model.student=/no/such/model", "--overwrite"],
        ["data.min_chars=100000000", "--overwrite"],  # no documents left: found after the data are read
    ],
    ids=[
        "name-dotdot",
        "name-dot",
        "name-path",
        "name-empty",
        "name-hidden",
        "run-is-data-dir",
        "run-is-runs-dir",
        "data-typo",
        "bad-student",
        "bad-model-path",
        "empty-data",
    ],
)
def test_overwrite_never_loses_data(ws, capsys, args):
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), *args)
    one_error_line(rc, err)
    unchanged(before, ws)
    assert set(snapshot(ws)) == set(before)  # and nothing half-made is left


def test_overwrite_replaces_an_ekd_run_only_after_the_new_one_started(ws, capsys, monkeypatch):
    old = snapshot(ws / "runs" / "base")
    seen = {}
    real = trainer_mod.forward_backward

    def each_step(*args, **kwargs):  # the old run stays on disk (moved aside) until the first step completed
        seen.setdefault("aside", []).append((ws / "runs" / ".base.replaced" / "ekd-run.json").is_file())
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "forward_backward", each_step)
    rc, _, _ = cli(capsys, "distill", _config(**{"method.preset": "kd"}), "--overwrite")
    assert rc == 0 and seen == {"aside": [True, False]}  # committed (aside removed) once step 1 completed
    assert sorted(p.name for p in (ws / "runs").iterdir()) == ["base"]
    assert snapshot(ws / "runs" / "base") != old
    assert json.loads((ws / "runs" / "base" / MARKER).read_text())["state"] == "finished"


@pytest.mark.parametrize("where", ["load_student", "forward_backward"], ids=["loading", "first-step"])
@pytest.mark.parametrize("failure", [KeyboardInterrupt, RuntimeError], ids=["interrupt", "crash"])
def test_a_start_that_fails_puts_the_old_run_back(ws, capsys, monkeypatch, failure, where):
    """Also a failure in the first step (a corrupt cache shard read there, a step that runs out of memory): the
    finished run that --overwrite was to replace comes back whole."""
    config = _config("other", **{"method.preset": "kd", "run.name": "base"})
    before = snapshot(ws)

    def fail(*args, **kwargs):
        raise failure(f"killed in {where}")

    monkeypatch.setattr(trainer_mod, where, fail)
    if failure is KeyboardInterrupt:  # Ctrl-C: the CLI says "interrupted" and exits 130
        rc, _, err = cli(capsys, "distill", config, "--overwrite")
        assert rc == 130 and "the run had not started, so nothing in it was changed" in err
        assert "token store" not in err  # none here (try-out 103, F2: said of every run)
    else:
        with pytest.raises(failure):
            cli(capsys, "distill", config, "--overwrite")
    unchanged(before, ws)
    assert set(snapshot(ws)) == set(before)


@pytest.mark.parametrize(
    "every, hint", [(1, "checkpoint step-000001 is kept"), (0, "no checkpoint was saved yet")]
)
def test_ctrl_c_after_the_start_says_how_to_continue_from_what_was_saved(
    ws, capsys, monkeypatch, every, hint
):
    """Ctrl-C in step 2: with a checkpoint at step 1 the way on is --resume; with none, --overwrite."""
    real, calls = trainer_mod.forward_backward, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "forward_backward", step)
    config = _config("fresh", **{"train.max_steps": 3, "train.checkpoint_every": every})
    rc, _, err = cli(capsys, "distill", config)
    assert rc == 130 and hint in err and ("--resume" if every else "--overwrite") in err, err


@pytest.mark.parametrize(
    "every, hint",
    [
        (1, "; checkpoint step-000001 is kept: once fixed, continue with the same command and --resume"),
        (0, "; the run saved no checkpoint: once fixed, start again with the same command and --overwrite"),
    ],
)
def test_an_error_that_stops_a_started_run_says_how_to_go_on(ws, capsys, monkeypatch, every, hint):
    """Try-out 21: a teacher-cache record failing its CRC in a later step ended the run with the cache's fix
    alone; the run directory then held a started run, and the next command was refused. An ekd error after the
    start ends with the way on, as Ctrl-C's line does; before the start (nothing changed) it is the error alone."""
    from ekd.teacher.cache import CacheError

    real, calls = trainer_mod.forward_backward, []

    def step(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise CacheError("shard-00000.bin is corrupted: run `ekd cache CONFIG` again")
        return real(*args, **kwargs)

    monkeypatch.setattr(trainer_mod, "forward_backward", step)
    config = _config("fresh", **{"train.max_steps": 3, "train.checkpoint_every": every})
    line = one_error_line(*cli(capsys, "distill", config)[::2])
    assert line == f"ekd: error: shard-00000.bin is corrupted: run `ekd cache CONFIG` again{hint}", line
    calls.clear()
    calls.append(1)  # the first step of the next run fails: the start is rolled back, the error is alone
    config = _config("other", **{"train.max_steps": 3})
    line = one_error_line(*cli(capsys, "distill", config)[::2])
    assert line == "ekd: error: shard-00000.bin is corrupted: run `ekd cache CONFIG` again", line
    assert not (ws / "runs" / "other").exists()


def test_a_start_killed_hard_is_recovered_next_time(ws, capsys):
    """kill -9 between moving the old run aside and committing: the next start puts it back."""
    cfg = load_config(_config(**{"method.preset": "kd"}), ["train.max_steps=3"])
    RunStart(cfg, resume=False, overwrite=True).open()  # ...and the process dies here
    assert (ws / "runs" / ".base.replaced").is_dir()
    rc, _, _ = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
    assert rc == 0  # the old run was restored and resumed from its step-2 checkpoint
    rows = [json.loads(line) for line in (ws / "runs" / "base" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "train/loss" in r] == [1, 2, 3]
    assert not (ws / "runs" / ".base.replaced").exists()


def test_eval_after_a_killed_overwrite_restores_the_run_and_evaluates_it(ws, capsys, caplog):
    """Try-out 23: `ekd eval RUN` after `kill -9` of a `--overwrite` said "not a finished ekd run ... run ekd
    distill first" while the finished run waited in runs/.RUN.replaced. Eval puts it back, as distill does (the
    same function, under the run's lock), and evaluates it."""
    old = snapshot(ws / "runs" / "base")
    cfg = load_config(_config(**{"method.preset": "kd"}), ["train.max_steps=3"])
    start = RunStart(cfg, resume=False, overwrite=True)
    start.open()  # the old run moved aside, the new one "starting"...
    start.close()  # ...and the process dies here (the OS releases its lock)
    assert (ws / "runs" / ".base.replaced").is_dir()
    with caplog.at_level("WARNING", logger="ekd"):
        rc, out, err = cli(capsys, "eval", "runs/base")
    assert rc == 0, err
    assert "restored runs/base, which an interrupted --overwrite had moved aside" in caplog.text
    assert sorted(p.name for p in (ws / "runs").iterdir()) == ["base"]  # the lock released, nothing aside
    after = snapshot(ws / "runs" / "base")
    kept = [k for k in old if k != "eval.json"]  # the run as it was, its evaluation written again
    assert {k: after.get(k) for k in kept} == {k: old[k] for k in kept}
    assert "eval" in json.loads((ws / "runs" / "base" / "eval.json").read_text())


def test_eval_names_the_run_a_killed_overwrite_left_aside_when_it_cannot_put_it_back(ws, capsys):
    """Something that is not an ekd run's start in the way: both are left alone, and the line says where the run
    is, not "run ekd distill first"."""
    Path("runs/base").rename("runs/.base.replaced")
    Path("runs/base").mkdir()
    Path("runs/base/notes.txt").write_text("mine\n")
    before = snapshot(ws)
    line = one_error_line(*cli(capsys, "eval", "runs/base")[::2])
    assert "an interrupted --overwrite moved the run aside to runs/.base.replaced" in line, line
    assert "run ekd distill first" not in line
    unchanged(before, ws)


# ------------------------------------------------------------------------------------------- item 13


def test_failed_start_leaves_no_half_made_run(ws, capsys):
    rc, _, err = cli(capsys, "distill", _config("fresh"), "data.source=corpus-typo")
    one_error_line(rc, err)
    assert not (ws / "runs" / "fresh").exists()
    rc, _, _ = cli(capsys, "distill", _config("fresh"))  # not "a different run": nothing was left
    assert rc == 0


def test_start_killed_before_training_is_not_a_different_run(ws, capsys):
    cfg = load_config(_config("half", **{"method.preset": "kd"}))
    RunStart(cfg, resume=False, overwrite=False).open()  # killed before the first step
    rc, _, _ = cli(capsys, "distill", _config("half"))  # another config, no flag: the half run is replaced
    assert rc == 0


def test_empty_config_file_is_refused(ws, capsys):
    Path("empty.yaml").write_text("# nothing yet\n")
    rc, _, err = cli(capsys, "distill", "empty.yaml")
    assert "config file empty.yaml is empty" in one_error_line(rc, err)
    assert not (ws / "runs" / "default").exists()


def test_resume_of_a_finished_run_appends_nothing(ws, capsys):
    before = snapshot(ws)
    rc, out, err = cli(capsys, "distill", _config(), "--resume")
    assert rc == 0 and not err.strip()
    assert "already finished (2 steps)" in out
    unchanged(before, ws)


def test_resume_of_a_moved_run(ws, capsys):
    shutil.move("runs", "elsewhere")
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
    assert "holds no run to resume" in one_error_line(rc, err)
    rc, _, err = cli(
        capsys, "distill", _config(), "run.output_dir=elsewhere", "train.max_steps=3", "--resume"
    )
    assert rc == 0, err
    rc, _, err = cli(
        capsys,
        "distill",
        _config(),
        "run.output_dir=elsewhere",
        "train.lr=0.5",
        "train.max_steps=4",
        "--resume",
    )
    line = one_error_line(rc, err)
    assert "train.lr" in line and "--overwrite" not in line  # never suggest deleting the run to resume it


def test_resume_of_a_run_copied_alone_keeps_its_data_and_models(ws, capsys):
    """Try-out 9: a run directory copied alone under another ``runs/`` (``ws/runs/base`` → ``ws/copy/runs/base``)
    had its saved paths rebased as if the whole project had moved (``ws/corpus`` → ``ws/copy/corpus``, which does not
    exist) and --resume refused a config that differed in nothing. A saved path is rebased only when its
    rebased form exists."""
    assert cli(capsys, "distill", _config("solo"))[0] == 0  # saved paths: this workspace's
    shutil.copytree(Path("runs") / "solo", Path("copy") / "runs" / "solo")
    rc, _, err = cli(
        capsys, "distill", _config("solo"), "run.output_dir=copy/runs", "train.max_steps=3", "--resume"
    )
    assert rc == 0, err
    # try-out 25: with look-alike copies where the rebase points (copy/...), the paths as saved — still there,
    # and what the config names — are the run's, not "a config that differs in data.eval_sources"
    held = next(Path("corpus").iterdir())
    shutil.copy(held, "held.txt")
    two = _config("solo2", **{"data.eval_sources": "{held: held.txt}"})
    rc, _, err = cli(capsys, "distill", two)
    assert rc == 0, err
    shutil.copytree(Path("runs") / "solo2", Path("copy") / "runs" / "solo2")
    shutil.copy("held.txt", Path("copy") / "held.txt")
    rc, _, err = cli(capsys, "distill", two, "run.output_dir=copy/runs", "train.max_steps=3", "--resume")
    assert rc == 0, err


# ------------------------------------------------------------------------------------------- item 11


def test_resume_over_different_data_is_refused(ws, capsys):
    for i in range(6):  # the same data.source, different content
        Path("corpus", f"extra_{i}.py").write_text("while index in range(len(items)): yield value\n" * 20)
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
    assert "differ from the run's" in one_error_line(rc, err)
    unchanged(before, ws)


@pytest.mark.parametrize(
    "change",
    [
        "data.source=corpus_typo",
        "data.eval_sources={x: nope.txt}",
        "data.source=corpus/*.tx",  # try-out 95, F6: a glob matching nothing, an hf: path that is not there
        "data.source=hf:./no-dataset",
    ],
)
def test_a_mistyped_data_path_on_an_existing_run_is_named_first(ws, capsys, change):
    """Try-out 93, F3: a mistyped data.source on an existing run name was told to pass --overwrite (a destructive
    flag for a typo); the missing path was said only after it."""
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), change)
    line = one_error_line(rc, err)
    assert any(s in line for s in ("no such file", "matches no files", "does not exist")), line
    assert "--overwrite" not in line, line
    unchanged(before, ws)


def test_run_records_its_data_fingerprint(ws):
    marker = json.loads((ws / "runs" / "base" / MARKER).read_text())
    assert len(marker["data_fingerprint"]) == 64 and marker["train_blocks"] > 0


def test_overwrite_never_deletes_a_foreign_directory_in_the_aside_place(ws, capsys):
    Path("runs/.base.replaced").mkdir()
    Path("runs/.base.replaced/notes.txt").write_text("mine\n")
    config = _config(**{"method.preset": "kd"})
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", config, "--overwrite")
    assert "is in the way of --overwrite" in one_error_line(rc, err)
    unchanged(before, ws)


@pytest.mark.parametrize(
    "order", [["--resume", "--overwrite"], ["--overwrite", "train.max_steps=3", "--resume"]]
)
def test_resume_with_overwrite_is_refused_and_deletes_nothing(ws, capsys, order):
    """`--resume --overwrite` once deleted the run it meant to continue (overwrite won silently)."""
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), *order)
    assert "--resume continues a run and --overwrite replaces it" in one_error_line(rc, err)
    unchanged(before, ws)


def test_resume_without_any_checkpoint_is_refused_not_retrained_from_step_0(ws, capsys):
    for step in (Path("runs/base/checkpoints")).iterdir():
        shutil.rmtree(step) if step.is_dir() else step.unlink()
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
    assert "holds no checkpoint to resume from" in one_error_line(rc, err)
    unchanged(before, ws)


def test_a_ce_run_whose_eval_teacher_is_missing_says_how_to_skip_it(tmp_path, capsys):
    """method=ce trains without a teacher; a teacher that fails to load only for the evaluation's KL says so and
    names the keys that skip it (a try-out papercut: the bare load error sent users looking for a bug)."""
    from ekd.cli import main

    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    args = tiny_overrides(tmp_path, corpus, "ce", **{"method": "ce", "model.teacher": str(tmp_path / "nope")})
    assert main(["-q", "distill", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "eval.teacher=false" in err[0] and "does not exist" in err[0], err
    assert main(["-q", "distill", *args, "eval.teacher=false"]) == 0


def test_a_run_stopped_before_its_first_checkpoint_is_not_offered_to_resume(ws, capsys):
    """A started run without a checkpoint (Ctrl-C in the first steps): the advice is --overwrite, which works."""
    rc, _, _ = cli(capsys, "distill", _config("early"), "train.checkpoint_every=0", "train.max_steps=1")
    assert rc == 0
    shutil.rmtree(ws / "runs" / "early" / "checkpoints")  # as if stopped before the first checkpoint
    marker = ws / "runs" / "early" / MARKER
    marker.write_text(json.dumps({**json.loads(marker.read_text()), "state": "started"}))
    rc, _, err = cli(capsys, "distill", _config("early"))
    one_error_line(rc, err)
    assert "saved no checkpoint" in err and "--overwrite" in err and "--resume" not in err
    assert cli(capsys, "distill", _config("early"), "--overwrite")[0] == 0


def test_a_mistyped_model_is_named_before_the_run_directory_is_judged(ws, capsys):
    rc, _, err = cli(capsys, "distill", _config(), "model.student=preset:llama-huge")  # same run.name as base
    one_error_line(rc, err)
    assert "llama-huge" in err and "already holds" not in err


# ------------------------------------------------------------------------------------------- try-out 7 (6, 9)


def test_resume_accepts_memory_and_speed_knobs_and_says_so(ws, capsys, caplog):
    """Lowering train.head_chunk_size (the documented way to fit a smaller GPU), another loss path or activation
    checkpointing computes the same math: --resume takes them, in one info line."""
    caplog.set_level("INFO", logger="ekd.train.run_dir")
    knobs = ["train.head_chunk_size=16", "train.loss_path=reference", "train.activation_checkpointing=true"]
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", *knobs, "--resume")
    assert rc == 0, err
    lines = [r.getMessage() for r in caplog.records if "the same math" in r.getMessage()]
    assert len(lines) == 1, lines
    for change in ("head_chunk_size 0 → 16", "loss_path chunked → reference", "checkpointing False → True"):
        assert change in lines[0], lines[0]
    assert "last bits" in lines[0]


def test_resume_accepts_other_eval_sets_and_scores_them(ws, capsys, caplog):
    """Try-out 50, F3: `--resume data.max_eval_blocks=4` was refused as a change of 'what the run computes';
    which eval sets are scored and how much of them changes no trained weight, like `eval.*`. The change is said
    in one line (try-out 52, F11: the eval curves changed sets without a word)."""
    caplog.set_level("INFO", logger="ekd.train.run_dir")
    Path("held.txt").write_text("def held(x):\n    return x * 2\n" * 40)
    over = ["data.max_eval_blocks=3", "data.eval_sources={held: held.txt}"]
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", *over, "--resume")
    assert rc == 0, err
    (line,) = [r.getMessage() for r in caplog.records if "score other eval sets" in r.getMessage()]
    assert (
        line.startswith("--resume with data.eval_sources {} → {'held': '")
        and "held.txt'}, data.max_e" in line
    )
    assert "→ 3: the evaluations from step 3 on score other eval sets" in line, line
    scored = json.loads(Path("runs", "base", "eval.json").read_text())
    assert "held" in scored and scored["eval"]["documents"] >= 1


def test_resume_on_another_device_layout_says_so_in_the_same_line(ws, capsys, caplog):
    """Try-out 23: `--resume train.parallel=fsdp` of a run checkpointed under ddp resumed without a word, while a
    head_chunk_size change had its info line. A layout change (engine, offload, teacher placement, micro-batch
    split) is named in that one line."""
    caplog.set_level("INFO", logger="ekd.train.run_dir")
    layout = ["train.parallel=fsdp", "teacher.placement=shard", "train.head_chunk_size=16"]
    rc, _, err = cli(
        capsys, "distill", _config(**{"method.preset": "ce"}), "train.max_steps=3", *layout, "--resume"
    )
    assert rc == 0, err
    said = [r.getMessage() for r in caplog.records]
    lines = [
        m for m in said if m.startswith("--resume with") and not m.startswith("--resume with train.max_steps")
    ]
    assert len(lines) == 1, lines
    for change in (
        "train.parallel ddp → fsdp",
        "teacher.placement replicate → shard",
        "head_chunk_size 0 → 16",
    ):
        assert change in lines[0], lines[0]
    assert (
        "another engine over the same sums of gradients" in lines[0] and "sharded or replicated" in lines[0]
    )


def test_resume_with_precision_fp32_of_an_auto_run_on_cpu_is_the_same_run(ws, capsys):
    """Try-outs 8 and 9: a run saved with train.precision=auto on CPU was refused on --resume with fp32 as
    "different arithmetic"; on CPU 'auto' is fp32 (bf16 is still refused, above)."""
    if torch.cuda.is_available():
        pytest.skip("on a GPU 'auto' is bf16")
    assert cli(capsys, "distill", _config(), "train.max_steps=3", "train.precision=fp32", "--resume")[0] == 0


@pytest.mark.parametrize(
    "change, why",
    [
        (["train.micro_batch_size=2", "train.grad_accum_steps=2"], "is the optimizer step's batch"),
        (["method=kd"], ""),
    ],
    ids=["same-global-batch", "method"],
)
def test_resume_refuses_what_changes_the_math_and_says_why(ws, capsys, change, why):
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", *change, "--resume")
    line = one_error_line(rc, err)
    keys = line.split("differs from the saved run in ")[1].split(", which ")[0].split(", ")
    verb = "changes" if len(keys) == 1 else "change"  # one key changes, several change (try-out 8)
    assert f"which {verb} what the run computes" in line and why in line, line
    assert "under another run.name" in line
    unchanged(before, ws)


def test_resume_refuses_other_arithmetic_and_names_the_settings_that_keep_it(ws, capsys):
    """A run records the arithmetic it computes in: --resume with train.precision=bf16 of an fp32 run (auto on a
    CPU) is refused, naming the setting that continues it as it was (try-out 123, F4)."""
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "train.precision=bf16", "--resume")
    line = one_error_line(rc, err)
    assert (
        "this run computed in fp32; this config computes in bf16 here: pass train.precision=fp32" in line
    ), line
    assert "under another run.name" in line
    unchanged(before, ws)


def test_one_refused_key_is_grammatical(ws, capsys):
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "train.lr=0.5", "--resume")
    assert "saved run in train.lr, which changes what the run computes" in one_error_line(rc, err)


@pytest.mark.parametrize(
    "flag, fix",
    [
        ([], "wait for it to end, or choose another run.name"),
        (["--resume"], "wait for it to end, then run the same command again"),
        (["--overwrite"], "wait for it to end, then run the same command again"),
    ],
    ids=["start", "resume", "overwrite"],
)
def test_a_run_in_use_offers_what_helps_this_command(ws, capsys, flag, fix):
    """Try-out 8: the refusal of a --resume (or --overwrite) on a run another process holds offered "or
    choose another run.name", which starts a new run instead of continuing or replacing this one."""
    from ekd.locks import lock_directory

    run = ws / "runs" / "base"
    before = snapshot(ws)
    lock = lock_directory(run, "fix")  # another ekd process (here: another open file) holds the run
    try:
        rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", *flag)
    finally:
        lock.release()
    line = one_error_line(rc, err)
    assert "is in use by another ekd process" in line and line.endswith(fix), line
    unchanged(before, ws)


def test_a_changed_eval_key_on_a_finished_run_suggests_ekd_eval_not_resume(ws, capsys):
    """Try-out 7: `eval.tasks=...` on a finished run was told "pass --resume", which had nothing to do. The
    advice now is the `ekd eval` command with the changed keys, and it works."""
    rc, _, err = cli(capsys, "distill", _config(), "eval.tasks=arc_easy")
    line = one_error_line(rc, err)
    run = ws / "runs" / "base"  # run.output_dir resolved at config load: the command works from any directory
    assert "finished (2 steps)" in line and f"`ekd eval {run} eval.tasks=arc_easy`" in line, line
    assert "pass --resume to continue" not in line
    rc, _, err = cli(capsys, "distill", _config(), "eval.batch_size=2")
    line = one_error_line(rc, err)
    command = line.split("`")[1].split()
    assert command[:3] == ["ekd", "eval", str(run)] and command[3:] == ["eval.batch_size=2"], line
    assert cli(capsys, *command[1:])[0] == 0


@pytest.mark.parametrize("change", ["data.eval_sources={held: my held.txt}", "data.max_eval_blocks=2"])
def test_the_suggested_ekd_eval_carries_a_new_eval_set(ws, capsys, change):
    """Try-out 93, F2: a finished run refused for another data.eval_sources or data.max_eval_blocks was told
    `ekd eval RUN` "evaluates it again" — the command left the change out and never scored the new set."""
    (ws / "my held.txt").write_text("a held out text of a few words\n\n\nand a second one here\n")
    rc, _, err = cli(capsys, "distill", _config(), change)
    line = one_error_line(rc, err)
    command = shlex.split(line.split("`")[1])
    key = change.split("=")[0]
    assert command[:3] == ["ekd", "eval", str(ws / "runs" / "base")] and command[3].startswith(f"{key}="), (
        line
    )
    assert "with the new eval settings" in line
    rc, out, err = cli(capsys, *command[1:])
    assert rc == 0, err
    if key == "data.eval_sources":
        assert "| held" in out  # the new set is scored


def test_a_suggested_command_quotes_a_run_path_with_a_space(ws, capsys):
    """Try-out 8/9: `ekd eval /w/my runs/sp1 ...` was suggested unquoted and failed when pasted."""
    shutil.copytree(Path("runs") / "base", Path("my runs") / "base")
    rc, _, err = cli(capsys, "distill", _config(), "run.output_dir=my runs", "eval.batch_size=2")
    line = one_error_line(rc, err)
    command = shlex.split(line.split("`")[1])
    assert command[:3] == ["ekd", "eval", str(ws / "my runs" / "base")], line
    assert cli(capsys, *command[1:])[0] == 0


def test_a_change_resume_would_refuse_is_not_offered_resume(ws, capsys):
    """A run that --resume cannot continue with this config (train.lr changed): only --overwrite or a new name."""
    for step in ("step-000002",):  # an unfinished run: its last checkpoint is step 1
        shutil.rmtree(ws / "runs" / "base" / "checkpoints" / step)
    rc, _, err = cli(capsys, "distill", _config(), "train.lr=0.5")
    line = one_error_line(rc, err)
    assert "differs in train.lr, which --resume cannot change" in line and "--overwrite" in line, line
    assert "--resume to" not in line
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3")  # a change --resume accepts
    assert "pass --resume to continue it" in one_error_line(rc, err)
    assert cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")[0] == 0


def test_a_stopped_run_past_this_configs_length_is_offered_resume_with_the_length(ws, capsys):
    """Try-out 138, F8: a run stopped past the steps this config asks for was told "pass --resume", which was then
    refused for its checkpoint past train.max_steps: the line says the length --resume needs."""
    marker = ws / "runs" / "base" / "ekd-run.json"
    marker.write_text(marker.read_text().replace('"finished"', '"started"'))  # stopped at its checkpoint 2
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=1")
    line = one_error_line(rc, err)
    assert "pass --resume with train.max_steps ≥ 2 to continue it" in line, line
    assert cli(capsys, "distill", _config(), "train.max_steps=2", "--resume")[0] == 0


def test_log_keys_do_not_make_a_run_different(ws, capsys):
    """Try-out 9: a start refused only because ``log.progress`` differed called the finished run "a different
    run (differs in log.progress)". log.* keys change how a run reports itself, nothing it computes
    (``ekd.config.REPORTING_KEYS``): the run is the same run; a computed key still makes it different."""
    logs = ["log.progress=true", "log.level=DEBUG", "log.every=2", "log.tensorboard=true"]
    rc, _, err = cli(capsys, "distill", _config(), *logs)
    line = one_error_line(rc, err)
    assert "already holds a run, finished (2 steps)" in line and "different" not in line, line
    assert "log." not in line, line
    rc, _, err = cli(capsys, "distill", _config(), *logs, "run.seed=7")
    line = one_error_line(rc, err)
    assert "a different run (differs in run.seed" in line and "log." not in line, line


def _save_config_value(run: Path, key: str, value: object) -> None:
    """Edit ``key`` (section.field) of a run's saved config.yaml, as an older ekd would have written it."""
    import yaml

    path = run / "config.yaml"
    saved = yaml.safe_load(path.read_text())
    section, name = key.split(".")
    saved[section][name] = value
    path.write_text(yaml.safe_dump(saved, sort_keys=False))


def test_a_run_saved_under_older_rules_is_evaluated_with_the_suggested_override(ws, capsys):
    """Try-out 8: a run trained at τ = 0.05 (before method.kd_temperature ≥ 0.1) could not be re-evaluated,
    and nothing said that `method.kd_temperature=1` (a training setting, unread by evaluation) gets past it.
    The line names the key and the command; the command works; a new run at τ = 0.05 is still refused."""
    run = ws / "runs" / "base"
    _save_config_value(run, "method.kd_temperature", 0.05)
    before = snapshot(ws)
    rc, _, err = cli(capsys, "eval", "runs/base", "eval.batch_size=2")
    line = one_error_line(rc, err)
    assert "method.kd_temperature must be ≥ 0.1" in line and "got 0.05" in line, line
    assert "method.kd_temperature is a training setting that evaluation does not read" in line, line
    command = line.split("`")[1].split()
    assert command == ["ekd", "eval", "runs/base", "eval.batch_size=2", "method.kd_temperature=1.0"], line
    unchanged(before, ws)
    assert cli(capsys, *command[1:])[0] == 0
    rc, _, err = cli(capsys, "distill", _config(), "run.name=new", "method.kd_temperature=0.05")
    line = one_error_line(rc, err)  # validation of a new run is as strict as before
    assert "method.kd_temperature must be ≥ 0.1" in line and "ekd eval" not in line, line


def test_ekd_eval_loads_the_saved_config_once(ws, capsys, monkeypatch):
    """``ekd eval RUN`` reads config.yaml once and passes it to the tasks check, the eval sets and the tasks
    (each of which loads it itself when called alone)."""
    from ekd.train import evaluation

    loads = []
    load = evaluation.load_run_config
    monkeypatch.setattr(evaluation, "load_run_config", lambda *a, **k: loads.append(a) or load(*a, **k))
    assert cli(capsys, "eval", "runs/base", "eval.batch_size=2")[0] == 0
    assert len(loads) == 1, loads


def test_a_saved_key_that_evaluation_reads_gets_no_default_suggested(ws, capsys):
    """A saved key evaluation reads (eval.batch_size): today's default would change what is evaluated, so
    the refusal is today's rule alone; the user's own bad override is named as it is."""
    run = ws / "runs" / "base"
    _save_config_value(run, "eval.batch_size", 0)
    rc, _, err = cli(capsys, "eval", "runs/base")
    line = one_error_line(rc, err)
    assert "eval.batch_size" in line and "ekd eval" not in line, line
    _save_config_value(run, "eval.batch_size", 4)
    _save_config_value(run, "method.kd_temperature", 0.05)
    rc, _, err = cli(capsys, "eval", "runs/base", "eval.batch_size=-1")
    line = one_error_line(rc, err)
    assert "eval.batch_size" in line and "got -1" in line and "ekd eval" not in line, line


def test_a_run_saved_before_a_key_existed_resumes_and_compares_as_its_default(ws, capsys):
    """A key added to ekd (here ``data.tools_field``) made every run saved before it differ from today's config in
    that key: ``--resume`` refused it as "changes what the run computes", with no setting that could match, and
    ``ekd compare`` put it in another group than a new run of the same config. A saved config's missing keys
    are read at today's defaults (:func:`ekd.config.with_todays_defaults`); a key set otherwise still differs."""
    import yaml

    from ekd.eval.compare import read_run

    saved = ws / "runs" / "base" / "config.yaml"
    raw = yaml.safe_load(saved.read_text())
    del raw["data"]["tools_field"]  # as an ekd before the key wrote it
    saved.write_text(yaml.safe_dump(raw, sort_keys=False))
    assert read_run(ws / "runs" / "base").config["data"]["tools_field"] == "tools"
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "data.tools_field=fns", "--resume")
    assert "differs from the saved run in data.tools_field" in one_error_line(rc, err)
    assert cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")[0] == 0


def test_resume_with_the_data_moved_away_names_the_missing_path_not_a_config_change(ws, capsys):
    """Try-out 23: `--resume` after the data file (or a model directory) was moved said "the config differs from
    the saved run in data.source ... resume with the settings in config.yaml", which holds the very path typed.
    A path that no longer exists is named as such."""
    import yaml

    read = yaml.safe_load((ws / "runs" / "base" / "config.yaml").read_text())["data"]["source"]
    shutil.move(ws / "corpus", ws / "corpus.away")
    before = snapshot(ws)
    line = one_error_line(*cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")[::2])
    assert line == (
        f"ekd: error: --resume: no such file or directory: data.source: corpus (the run read {read}); put it "
        "back where the run read it and rerun with --resume, or name where it is now with --resume "
        "data.source=PATH (the run checks that it holds the same training blocks)"
    ), line
    unchanged(before, ws)
    shutil.move(ws / "corpus.away", ws / "corpus")
    assert cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")[0] == 0


def test_resume_below_the_newest_checkpoint_is_refused(ws, capsys):
    """Try-out 23: an unfinished run with a checkpoint at step 2 resumed with train.max_steps=1 exited 0, wrote a
    checkpoint named step-000001 holding step 2's weights, marked the run finished and logged steps 1, 2, 1."""
    run = ws / "runs" / "base"
    marker = json.loads((run / MARKER).read_text())
    (run / MARKER).write_text(json.dumps({**marker, "state": "started"}))  # stopped after its last checkpoint
    before = snapshot(ws)
    line = one_error_line(*cli(capsys, "distill", _config(), "train.max_steps=1", "--resume")[::2])
    assert line == (
        f"ekd: error: --resume: {run.resolve()}'s newest checkpoint step-000002 is past train.max_steps=1; "
        "resume with train.max_steps ≥ 2 (the run's saved value: 2)"
    ), line
    unchanged(before, ws)
    assert cli(capsys, "distill", _config(), "train.max_steps=2", "--resume")[0] == 0  # finishes the run


def test_resume_with_more_steps_says_the_schedules_follow_the_new_length(ws, capsys, caplog):
    """Try-out 28: `--resume` of a finished 20-step EGAD run with train.max_steps=30 sent its curriculum back from
    phase 0.95 to 0.67 (and rescaled every schedule over the run's length) without a word; the README warned
    only of the learning rate. One line says it."""
    import logging

    with caplog.at_level(logging.INFO, logger="ekd"):
        assert cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")[0] == 0
    said = [r.getMessage() for r in caplog.records if "--resume with train.max_steps" in r.getMessage()]
    assert said == [
        "--resume with train.max_steps 2 → 4: what is scheduled over the run's length — the learning rate, and a "
        "curriculum, coverage or τ schedule or LATF's warm-up — follows the new length from step 3 on (a "
        "schedule at step 2 of 2 is at 50% of the new one)"
    ], said


def test_resume_with_more_steps_past_a_corrupt_checkpoint_says_the_step_it_resumes_from(ws, capsys, caplog):
    """Try-out 75, F3: with the newest checkpoint corrupt, the line named its step (2), while the run resumed
    from the intact one before it (1)."""
    import logging

    weights = Path("runs/base/checkpoints/step-000002/student.safetensors")
    weights.write_bytes(weights.read_bytes()[:1000])
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")[0] == 0
    said = [r.getMessage() for r in caplog.records if "--resume with train.max_steps" in r.getMessage()]
    assert len(said) == 1 and said[0].endswith(
        "follows the new length from step 2 on (a schedule at step 1 of 2 is at 25% of the new one)"
    ), said


def test_resume_reads_the_same_data_at_another_path_and_refuses_other_data(ws, capsys, caplog):
    """Try-out 25: `--resume` with the run's data copied to another path (another node's scratch directory) was
    refused as "the config differs in data.source", though the run records its training blocks' sha256 (and
    `ekd compare` calls them the same data). The path may change; the blocks are checked once read."""
    import logging

    shutil.copytree(ws / "corpus", ws / "copy")
    before = snapshot(ws / "runs")
    (ws / "copy" / next(p.name for p in (ws / "copy").iterdir())).write_text("other text entirely\\n" * 50)
    line = one_error_line(
        *cli(capsys, "distill", _config(), "train.max_steps=3", "data.source=copy", "--resume")[::2]
    )
    assert "--resume: the training data of data.source=" in line and "differ from the run's" in line, line
    unchanged(before, ws / "runs")
    shutil.rmtree(ws / "copy")
    shutil.copytree(ws / "corpus", ws / "copy")
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert cli(capsys, "distill", _config(), "train.max_steps=3", "data.source=copy", "--resume")[0] == 0
    assert any("--resume with data.source at another path" in r.getMessage() for r in caplog.records)
    # try-out 44, F9: the data moved away and named as the run saved it: the line says how to name it now
    (ws / "copy").rename(ws / "moved")
    before = snapshot(ws / "runs")
    line = one_error_line(
        *cli(capsys, "distill", _config(), "train.max_steps=4", "data.source=copy", "--resume")[::2]
    )
    assert "--resume: no such file or directory: data.source: copy" in line, line
    assert "or name where it is now with --resume data.source=PATH (the run checks that it holds the same training " \
        "blocks)" in line, line  # fmt: skip
    line = one_error_line(  # named as the run saved it, absolute
        *cli(capsys, "distill", _config(), "train.max_steps=4", f"data.source={ws / 'copy'}", "--resume")[::2]
    )
    assert (
        f"--resume: data.source={ws / 'copy'} no longer exists: put it back, or name where it is now" in line
    )
    unchanged(before, ws / "runs")


def test_a_runs_saved_config_naming_another_run_is_warned(ws, capsys, caplog):
    """Try-out 26: with a project copied elsewhere, `ekd distill COPY/runs/base/config.yaml --resume` resumed the
    original run (the file holds its absolute run.output_dir) and left the copy as it was, said only by the path
    in 'resumed from'. A warning names both runs and the override that uses the one beside the file."""
    import logging

    import yaml

    # the original is this workspace's run: its saved run.output_dir named the module's template, which the
    # resume below then trained a step further under every later test
    config = Path("runs") / "base" / "config.yaml"
    saved_cfg = yaml.safe_load(config.read_text())
    saved_cfg["run"]["output_dir"] = str((ws / "runs").resolve())
    config.write_text(yaml.safe_dump(saved_cfg))
    shutil.copytree(Path("runs") / "base", Path("copy") / "runs" / "base")
    saved = Path("copy") / "runs" / "base" / "config.yaml"
    with caplog.at_level(logging.WARNING, logger="ekd"):
        assert cli(capsys, "distill", str(saved), "train.max_steps=3", "--resume")[0] == 0
    said = [r.getMessage() for r in caplog.records if "is the saved config of the run" in r.getMessage()]
    assert len(said) == 1 and f"set run.output_dir={(ws / 'copy' / 'runs').resolve()}" in said[0], said


def test_a_checkpoint_of_another_run_is_refused_and_a_run_of_an_older_ekd_resumes(ws, capsys):
    """Try-out 50, F1: a checkpoint copied from another run into this run's checkpoints/ (a seed-1 run's into a
    seed-0 run; a kd run's into an rkl run) resumed without a word, the run then reporting itself as its own.
    Each run records a run id in ekd-run.json and every checkpoint the id of the run that wrote it."""
    assert cli(capsys, "distill", _config("seed1", **{"run.seed": 1}))[0] == 0
    base, other = Path("runs", "base"), Path("runs", "seed1")
    own_id = json.loads((base / MARKER).read_text())["run_id"]
    assert len(own_id) == 32 and own_id != json.loads((other / MARKER).read_text())["run_id"]
    shutil.move(str(base / "checkpoints" / "step-000001"), "own-step-000001")
    for step in ("step-000001", "step-000002"):
        shutil.rmtree(base / "checkpoints" / step, ignore_errors=True)
        shutil.copytree(other / "checkpoints" / step, base / "checkpoints" / step)
    # every foreign checkpoint named at once (try-out 52, F12)
    line = one_error_line(*cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")[::2])
    other_id = json.loads((other / MARKER).read_text())["run_id"][:8]
    assert (
        f"checkpoints step-000001 (seed1, run id {other_id}), step-000002 (seed1, run id {other_id}) in"
        in line
    ), line
    assert "were written by another run" in line and "move them out of checkpoints/ (this run has no " in line
    shutil.rmtree(base / "checkpoints" / "step-000001")
    shutil.move("own-step-000001", base / "checkpoints" / "step-000001")
    before = snapshot(ws)
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
    line = one_error_line(rc, err)
    assert "checkpoint step-000002 (seed1, run id" in line and "was written by another run" in line, line
    assert f"this run's id is {own_id[:8]}" in line and "move it out of checkpoints/" in line, line
    assert "(this run then resumes from its own newest, step-000001)" in line, line
    unchanged(before, ws)
    # moved out: the run resumes from its own newest checkpoint
    shutil.move(str(base / "checkpoints" / "step-000002"), "foreign-step-000002")
    (base / "checkpoints" / "latest").unlink()
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=3", "--resume")
    assert rc == 0, err
    # a run whose ekd-run.json records no run id (an older ekd's): its checkpoint's is taken
    marker = json.loads((base / MARKER).read_text())
    del marker["run_id"]
    (base / MARKER).write_text(json.dumps(marker))
    rc, _, err = cli(capsys, "distill", _config(), "train.max_steps=4", "--resume")
    assert rc == 0, err
    assert json.loads((base / MARKER).read_text())["run_id"] == own_id


def test_resume_of_a_mistyped_run_name_suggests_the_run_beside_it(ws, capsys):
    """Try-out 50, F4: `run.name=ada4 --resume` (the run is ada40) was told to drop --resume, which starts a new
    run under the typo."""
    rc, _, err = cli(capsys, "distill", _config("bas"), "--resume")
    line = one_error_line(rc, err)
    assert (
        "bas holds no run to resume; did you mean run.name=base? (drop --resume to start a new run" in line
    ), line
    assert not Path("runs", "bas").exists()
    rc, _, err = cli(capsys, "distill", _config("zzz"), "--resume")
    assert one_error_line(rc, err).endswith("holds no run to resume; drop --resume to start it")


def test_a_mistyped_run_output_dir_or_run_path_suggests_the_existing_one(ws, capsys):
    """Try-out 52, F8: `run.output_dir=rusn --resume` was told to drop --resume (a new run under the typo,
    made there), and `ekd eval runs/bas` had no suggestion."""
    rc, _, err = cli(capsys, "distill", _config(), "run.output_dir=rusn", "--resume")
    line = one_error_line(rc, err)
    assert (
        f"(run.output_dir {ws / 'rusn'} does not exist; did you mean run.output_dir={ws / 'runs'}?); drop "
        "--resume to start a new run there" in line
    ), line
    assert not Path("rusn").exists()  # refused before anything is made there
    rc, _, err = cli(capsys, "distill", _config(), "run.output_dir=elsewhere", "--resume")
    assert f"(run.output_dir {ws / 'elsewhere'} does not exist); drop --resume" in one_error_line(rc, err)
    # try-out 54, F7: a mistyped path inside the run means the run
    for typed, meant in (
        ("runs/bas", "runs/base"),
        ("rnus/base", "runs/base"),
        ("runs/base/studnt", "runs/base"),
    ):
        line = one_error_line(*cli(capsys, "eval", typed)[::2])
        assert f"ekd eval: {typed} does not exist (did you mean {meant}?); give the directory" in line, line
    line = one_error_line(*cli(capsys, "eval", "runs/zzz")[::2])  # nothing close: where it was looked for
    assert "runs/zzz does not exist (read as " in line and "; give the directory of a run" in line, line


def test_a_finished_run_whose_student_is_gone_is_exported_again_by_resume(ws, capsys):
    """Try-out 52, F10: `ekd eval` of a finished run whose student/ was removed said 'not a finished ekd run ...;
    run ekd distill first', and `--resume` said the run was finished: no way on. ekd eval names the resume that
    exports it again from the last checkpoint (no step trained, the final evaluation not logged twice)."""
    import yaml

    run = Path("runs", "base")
    saved = yaml.safe_load((run / "config.yaml").read_text())
    saved["run"]["output_dir"] = str((ws / "runs").resolve())
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    rows = (run / "metrics.jsonl").read_text().splitlines()
    exported = sorted(p.name for p in (run / "student").iterdir())
    shutil.rmtree(run / "student")
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert (
        "runs/base is a finished run whose exported student/ is gone; export it again from its last checkpoint "
        "step-000002 with `ekd distill runs/base/config.yaml --resume` (no step is trained), then `ekd eval` it"
        in line
    ), line
    assert cli(capsys, "distill", run / "config.yaml", "--resume")[0] == 0  # the advice works
    assert sorted(p.name for p in (run / "student").iterdir()) == exported
    good = (run / "student" / "config.json").read_text()
    (run / "student" / "config.json").write_text("{")  # try-out 54, F4: was blamed on the tokenizer files
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert "runs/base/student: config.json is not valid JSON (" in line and "put back the file" in line, line
    (run / "student" / "config.json").write_text(good)
    assert (run / "metrics.jsonl").read_text().splitlines() == rows  # its final evaluation once
    assert json.loads((run / MARKER).read_text())["state"] == "finished"
    assert cli(capsys, "eval", run, "eval.teacher=false")[0] == 0
    rc, out, err = cli(capsys, "distill", run / "config.yaml", "--resume")  # finished again: nothing to do
    assert rc == 0 and "is already finished" in out + err, (out, err)


def test_eval_of_an_unfinished_run_says_how_to_finish_it(ws, capsys):
    """Try-out 50, F5: `ekd eval` of an interrupted run said 'not a finished ekd run (needs config.yaml and
    student/); run ekd distill first' — it has config.yaml, and plain `ekd distill` is refused there."""
    import yaml

    run = Path("runs", "base")
    saved = yaml.safe_load((run / "config.yaml").read_text())  # as the run itself saved it: its own directory
    saved["run"]["output_dir"] = str((ws / "runs").resolve())
    (run / "config.yaml").write_text(yaml.safe_dump(saved))
    shutil.rmtree(run / "student")  # interrupted before its export
    marker = json.loads((run / MARKER).read_text())
    (run / MARKER).write_text(json.dumps({**marker, "state": "started"}))
    rc, _, err = cli(capsys, "eval", run)
    line = one_error_line(rc, err)
    assert (
        "runs/base is a run that has not finished (no exported student/ yet); its newest checkpoint is "
        in line
    )
    assert (
        "step-000002: finish it with `ekd distill runs/base/config.yaml --resume`, then `ekd eval` it" in line
    )
    # a copy (cp -r): its config.yaml names the original; the advice names the copy (try-out 52, F2)
    copy = Path("runs", "copy")
    shutil.copytree(run, copy)
    line = one_error_line(*cli(capsys, "eval", copy)[::2])
    where = f"run.output_dir={(ws / 'runs').resolve()} run.name=copy"
    assert f"finish it with `ekd distill runs/copy/config.yaml {where} --resume`" in line, line
    assert cli(capsys, "distill", copy / "config.yaml", *where.split(), "--resume")[0] == 0
    assert (copy / "student").is_dir() and not (
        run / "student"
    ).exists()  # the copy finished, not the original
    assert cli(capsys, "distill", run / "config.yaml", "--resume")[0] == 0  # the advice works
    assert cli(capsys, "eval", run, "eval.teacher=false")[0] == 0
    shutil.rmtree(run / "student")
    shutil.rmtree(run / "checkpoints")
    (run / MARKER).write_text(json.dumps({**marker, "state": "started"}))
    line = one_error_line(*cli(capsys, "eval", run)[::2])
    assert (
        "it saved no checkpoint: start it again with `ekd distill runs/base/config.yaml --overwrite`" in line
    )


def test_a_refusal_naming_many_keys_says_how_many_it_leaves_out():
    """Try-out 120, F7: a rerun refused for six keys --resume cannot change named five and dropped the sixth
    without a word, the line then reading as the complete list."""
    from ekd.train.run_dir import some_of

    keys = [f"train.k{i}" for i in range(7)]
    assert some_of(keys) == "train.k0, train.k1, train.k2, train.k3, train.k4 and 2 more"
    assert some_of(keys[:5]) == "train.k0, train.k1, train.k2, train.k3, train.k4"
