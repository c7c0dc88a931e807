"""Local paths are resolved once, when the config is built: a run directory, a teacher cache, a token store and
an exported adapter hold absolute paths, so they work from any working directory; caches and stores built
before (which hold a path as it was typed, relative to where they were built) are still accepted for the same
teacher and files, and a different teacher is still refused."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import pytest
import yaml

from ekd.cli import main
from ekd.config import load_config
from ekd.errors import EkdError
from ekd.teacher.cache.manifest import MANIFEST, write_json_atomic
from tiny import tiny_overrides, write_corpus


def _error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err  # one clear line, no traceback
    assert err[0].startswith("ekd: error: ")
    return err[0]


@pytest.fixture(scope="module")
def work(tmp_path_factory):
    """``w/`` holding a corpus, a BPE tokenizer and two saved tiny models sharing it (teacher ``t``, student
    ``s``) and a second teacher ``t2`` with other weights."""
    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import build_preset

    root = tmp_path_factory.mktemp("paths")
    w = root / "w"
    corpus = write_corpus(w / "corpus", n_docs=24)
    tok = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 320, None)
    for name, seed in (("t", 0), ("s", 1), ("t2", 2)):
        build_preset("llama-micro", len(tok), tok.eos_token_id, seed=seed).save_pretrained(w / name)
        tok.save_pretrained(w / name)
    (root / "elsewhere").mkdir()
    return root


def _relative(name: str, w: str | Path = "w", **extra: object) -> list[str]:
    """Overrides naming every path under ``w`` (default: relative to the test's working directory, the work
    root); ``extra`` values starting with 'w/' are under ``w`` too."""
    extra = {k: f"{w}/{v[2:]}" if isinstance(v, str) and v.startswith("w/") else v for k, v in extra.items()}
    over = {
        "run.output_dir": f"{w}/runs",
        "data.source": f"{w}/corpus",
        "model.student": f"{w}/s",
        "model.teacher": f"{w}/t",
        "model.tokenizer": "teacher",
        **extra,
    }
    return tiny_overrides(Path("."), Path("."), name, **over)


def test_local_paths_are_resolved_when_the_config_is_built(work, monkeypatch):
    monkeypatch.chdir(work)
    cfg = load_config(
        None,
        [
            "model.student=w/s/",
            "model.teacher=./w/../w/t",
            "model.tokenizer=teacher",
            "data.source=w/corpus/*.py",
            "data.eval_sources={a: w/corpus, b: pystdlib:test, c: hf:wikitext, d: hf:w/corpus}",
            "data.store_dir=auto",
            "teacher.cache_dir=w/cache",
            "run.output_dir=w/runs",
        ],
    )
    w = work.resolve() / "w"
    assert (cfg.model.student, cfg.model.teacher, cfg.model.tokenizer) == (
        str(w / "s"),
        str(w / "t"),
        "teacher",
    )
    assert cfg.data.source == str(w / "corpus" / "*.py")  # a glob: absolute, still a glob
    assert cfg.data.eval_sources == {
        "a": str(w / "corpus"),
        "b": "pystdlib:test",
        "c": "hf:wikitext",  # a hub dataset: as given
        "d": f"hf:{w / 'corpus'}",
    }
    assert (cfg.data.store_dir, cfg.teacher.cache_dir, cfg.run.output_dir) == (
        "auto",
        str(w / "cache"),  # always a directory: resolved before it exists
        str(w / "runs"),
    )
    hub = load_config(None, ["model.student=Qwen/Qwen2.5-0.5B", "model.teacher=preset:llama-small"])
    assert (hub.model.student, hub.model.teacher) == ("Qwen/Qwen2.5-0.5B", "preset:llama-small")
    monkeypatch.setenv("HOME", str(work))  # a glob under ~: expanded (glob.glob would not), review finding
    assert load_config(None, ["data.source=~/w/corpus/*.py"]).data.source == str(w / "corpus" / "*.py")
    # a path in a config file is relative to the working directory, as on the command line
    (work / "elsewhere" / "c.yaml").write_text("model: {student: w/s}\n")
    assert load_config(work / "elsewhere" / "c.yaml").model.student == str(w / "s")


@pytest.mark.slow
def test_eval_of_a_run_from_another_directory(work, monkeypatch, capsys):
    """`ekd distill` with relative paths, then `ekd eval RUN` from another directory: the saved config.yaml
    holds absolute paths (before: `w/s`, and eval failed blaming data.separator=auto after a hub probe)."""
    monkeypatch.chdir(work)
    assert main(["-q", "distill", *_relative("rel")]) == 0, capsys.readouterr().err
    run_dir = work / "w" / "runs" / "rel"
    saved = yaml.safe_load((run_dir / "config.yaml").read_text())
    w = str(work.resolve() / "w")
    assert saved["model"]["student"] == f"{w}/s" and saved["data"]["source"] == f"{w}/corpus"
    trained = json.loads((run_dir / "eval.json").read_text())
    monkeypatch.chdir(work / "elsewhere")
    assert main(["-q", "eval", str(run_dir)]) == 0, capsys.readouterr().err
    evaluated = json.loads((run_dir / "eval.json").read_text())
    assert evaluated["eval"]["ppl"] == pytest.approx(trained["eval"]["ppl"], rel=1e-4)
    # a run saved before paths were resolved (relative config.yaml) resumes from its own directory
    monkeypatch.chdir(work)
    old = yaml.safe_load((run_dir / "config.yaml").read_text())
    old["model"].update(student="w/s", teacher="w/t")
    old["data"]["source"], old["run"]["output_dir"] = "w/corpus", "w/runs"
    (run_dir / "config.yaml").write_text(yaml.safe_dump(old, sort_keys=False))
    assert main(["-q", "distill", *_relative("rel", **{"train.max_steps": 4}), "--resume"]) == 0, (
        capsys.readouterr().err
    )


def test_a_missing_model_path_is_named_by_its_own_key(work, monkeypatch, capsys):
    """The saved run names a student directory that is gone: the error names model.student, at once."""
    run_dir = work / "gone-run"
    (run_dir / "student").mkdir(parents=True)
    shutil.copy(work / "w" / "s" / "config.json", run_dir / "student" / "config.json")
    cfg = load_config(
        None, [*_relative("gone", work / "w"), f"model.student={work / 'w' / 'no-such-student'}"]
    )
    (run_dir / "config.yaml").write_text(cfg.to_yaml())
    for f in (work / "w" / "s").glob("tokenizer*"):
        shutil.copy(f, run_dir / "student" / f.name)
    monkeypatch.chdir(work / "elsewhere")
    assert main(["-q", "eval", str(run_dir), "eval.teacher=false"]) == 2
    line = _error_line(capsys)
    assert "model.student" in line and "no-such-student" in line and "data.separator" not in line, line


@pytest.mark.parametrize(
    "override",
    [
        "model.teacher=./t",
        "model.student=s",
        "model.tokenizer=./tok",
        "data.source=./corpus",
        "data.source=c.jsonl",
    ],
)
@pytest.mark.parametrize("offline", [False, True])
def test_a_missing_relative_path_names_the_path_it_was_read_as(work, monkeypatch, capsys, override, offline):
    """Try-out 84, F2: from another directory than the config file's, `teacher: ./teacher` was refused as
    './teacher does not exist (no config.json)' — neither where it was looked for nor why. The line names the
    absolute path and that relative paths start at the working directory."""
    monkeypatch.chdir(work / "elsewhere")
    if offline:  # a bare name is then read as a cached hub id, and fails as such: the line names the path too
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    key, value = override.split("=")
    assert main(["-q", "distill", *_relative("rel-missing", work / "w"), override]) == 2
    line = _error_line(capsys)
    assert line.startswith(f"ekd: error: {key}") and str(work / "elsewhere" / value.lstrip("./")) in line, (
        line
    )
    assert "no config.json" not in line, line
    if value.startswith("./"):
        assert "relative paths start at the working directory" in line, line


def test_a_missing_name_that_is_no_hub_id_or_a_home_path_names_where_it_was_read(
    work, monkeypatch, capsys, tmp_path
):
    """Try-out 86, F3/F4: 'my student' (no valid hub id) got no absolute path, and ~/nope not what it expanded
    to; F2: student init, which refuses presets, was told to pass preset:<name>."""
    monkeypatch.chdir(work / "elsewhere")
    monkeypatch.setenv("HOME", str(tmp_path))
    for override, said in (
        (
            "model.student=my student",
            f"'my student' is not an existing path (read as {work / 'elsewhere' / 'my student'}",
        ),
        ("model.teacher=~/nope", f"~/nope does not exist (read as {tmp_path / 'nope'})"),
    ):
        assert main(["-q", "distill", *_relative("home-missing", work / "w"), override]) == 2
        line = _error_line(capsys)
        assert said in line, line
    assert main(["student", "init", "nope", str(tmp_path / "s"), "--layers", "1"]) == 2
    line = _error_line(capsys)
    assert "student init: teacher" in line and "preset:" not in line, line


def test_eval_of_a_run_whose_teacher_moved(work, tmp_path, monkeypatch, capsys):
    """Try-out 32 (left then): with the run's teacher directory moved, `ekd eval RUN` said 'model.teacher: … pass
    a hub id, … or preset:<name>', and with `eval.teacher=false` still failed — packing the eval sets read the
    teacher's config for its end-of-document id. The run records the boundary it packed with (ekd-run.json), so
    the student is scored alone without its teacher, and the refusal says both ways on."""
    teacher = tmp_path / "teacher"
    shutil.copytree(work / "w" / "t", teacher)
    monkeypatch.chdir(work)
    over = {"model.teacher": str(teacher), "run.output_dir": str(tmp_path / "runs")}
    assert main(["-q", "distill", *_relative("moved", **over)]) == 0, capsys.readouterr().err
    run_dir = tmp_path / "runs" / "moved"
    trained = json.loads((run_dir / "eval.json").read_text())
    assert json.loads((run_dir / "ekd-run.json").read_text())["document_boundary"]["separator"] == "auto"
    teacher.rename(tmp_path / "teacher-moved")
    assert main(["-q", "eval", str(run_dir)]) == 2
    line = _error_line(capsys)
    assert f"the run's teacher {teacher} (model.teacher) is not there any more" in line, line
    assert "model.teacher=PATH" in line and "eval.teacher=false" in line and "preset" not in line, line
    # try-out 138, F1: the way's cost is said before it is taken (the warning came after eval.json was rewritten)
    assert line.endswith(
        "which keeps the KL, agreement and teacher rows eval.json holds where the student scores as before"
    ), line
    assert json.loads((run_dir / "eval.json").read_text()) == trained
    assert main(["-q", "eval", str(run_dir), "eval.teacher=false"]) == 0, capsys.readouterr().err
    alone = json.loads((run_dir / "eval.json").read_text())
    # try-out 138: the teacher gone, what was measured with it stays (the student scores as before)
    assert alone["eval"]["ppl"] == pytest.approx(trained["eval"]["ppl"], rel=1e-5)
    assert alone["eval/teacher"] == trained["eval/teacher"] and alone["eval"]["kl"] == trained["eval"]["kl"]
    assert main(["-q", "eval", str(run_dir), f"model.teacher={tmp_path / 'teacher-moved'}"]) == 0
    again = json.loads((run_dir / "eval.json").read_text())
    assert again["eval/teacher"]["ppl"] == pytest.approx(trained["eval/teacher"]["ppl"], rel=1e-5)
    # try-out 38: the run's downstream tasks score the teacher too — eval.teacher=false alone still read it
    # (after rewriting eval.json); the line comes first and names both switches
    from ekd.train.evaluation import check_saved_teacher, load_run_config

    with_tasks = load_run_config(run_dir, ["eval.teacher=false", "eval.tasks=[arc_easy]"])
    with pytest.raises(EkdError) as info:
        check_saved_teacher(run_dir, with_tasks, ["eval.teacher=false"])
    assert "it is read for its task scores" in str(info.value), info.value
    assert "eval.tasks_teacher=false" in str(info.value) and "eval.teacher=false" not in str(info.value)
    with pytest.raises(EkdError, match=f"the teacher {tmp_path}/typo \\(model.teacher\\) is not there; "):
        over = [f"model.teacher={tmp_path}/typo"]  # typed now: not "the run's", not "any more"
        check_saved_teacher(run_dir, load_run_config(run_dir, over), over)
    # a run of an older ekd recorded no boundary: the teacher's config is read for it, and the line says so
    marker = json.loads((run_dir / "ekd-run.json").read_text())
    del marker["document_boundary"]
    (run_dir / "ekd-run.json").write_text(json.dumps(marker))
    assert main(["-q", "eval", str(run_dir), "eval.teacher=false"]) == 2
    line = _error_line(capsys)
    assert "end-of-document id" in line and "data.separator=eos" in line and "model.teacher=PATH" in line, (
        line
    )


def _reseal_with_teacher_id(cache: Path, teacher_id: str) -> None:
    """Make ``cache`` look built before config paths were resolved: its teacher_id as typed (relative)."""
    manifest = json.loads((cache / MANIFEST).read_text())
    manifest["signature"]["teacher_id"] = teacher_id
    write_json_atomic(cache / MANIFEST, manifest)


@pytest.mark.slow
def test_a_cache_with_a_relative_teacher_path_is_the_same_teacher_spelled_otherwise(
    work, monkeypatch, capsys
):
    monkeypatch.chdir(work)
    extra = {"method.preset": "rskd", "teacher.cache_dir": "w/cache-rel", "train.max_steps": 2}
    assert main(["-q", "cache", *_relative("c", **extra)]) == 0, capsys.readouterr().err
    cache = work / "w" / "cache-rel"
    signature = json.loads((cache / MANIFEST).read_text())["signature"]
    teacher = work.resolve() / "w" / "t"
    assert signature["teacher_id"] == str(teacher)  # recorded absolute
    assert signature["teacher_revision"].startswith("safetensors-sha256:")
    _reseal_with_teacher_id(cache, "w/t")  # as a cache built before this change holds it
    args = _relative("c", work / "w", **extra)  # absolute paths, but for the teacher's spelling below
    for where, spelling in ((work, "w/t"), (work, f"{teacher}/"), (work / "elsewhere", str(teacher))):
        monkeypatch.chdir(where)
        run = [*args, f"model.teacher={spelling}", "teacher.source=cache", f"run.name=c-{len(spelling)}"]
        assert main(["-q", "distill", *run]) == 0, (where, spelling, capsys.readouterr().err)
        # building again under another spelling finds the cache complete, not "built differently"
        assert main(["-q", "cache", *args, f"model.teacher={spelling}"]) == 0, capsys.readouterr().err
    # another teacher (other weights) is still refused, named by its key
    run = [*args, f"model.teacher={work / 'w' / 't2'}", "teacher.source=cache", "run.name=c-other"]
    assert main(["-q", "distill", *run]) == 2
    line = _error_line(capsys)
    assert "teacher_id [model.teacher]" in line and "teacher_revision [model.teacher]" in line, line
    assert main(["-q", "cache", *args, f"model.teacher={work / 'w' / 't2'}"]) == 2
    assert "teacher_id" in _error_line(capsys)


@pytest.mark.slow
def test_a_token_store_keyed_by_a_relative_source_is_reused(work, monkeypatch, capsys, caplog):
    """A store built before paths were resolved is keyed by the source as typed; a run naming the same files
    (now absolute) reuses it instead of building a second store."""
    monkeypatch.chdir(work)
    extra = {"data.store_dir": "w/store", "train.max_steps": 1, "method.preset": "kd"}
    assert main(["distill", *_relative("st", **extra)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    (store,) = [p for p in (work / "w" / "store").iterdir() if p.is_dir()]
    manifest = json.loads((store / "manifest.json").read_text())
    manifest["signature"]["source"]["source"] = "w/corpus"  # the spelling an old store was keyed by
    del manifest[
        "manifest_sha256"
    ]  # an old store's manifest holds no seal (one edited since its build is rebuilt)
    (store / "manifest.json").write_text(json.dumps(manifest))
    store.rename(store.with_name("0123456789abcdef"))
    monkeypatch.chdir(work / "elsewhere")
    caplog.clear()
    assert main(["distill", *_relative("st2", work / "w", **extra)]) == 0, capsys.readouterr().err
    assert "reusing it" in caplog.text
    assert [p.name for p in (work / "w" / "store").iterdir() if p.is_dir()] == ["0123456789abcdef"]


@pytest.mark.slow
def test_a_lora_adapter_records_its_base_as_an_absolute_path(work, monkeypatch, capsys):
    pytest.importorskip("peft")
    monkeypatch.chdir(work)
    over = _relative("lora", **{"model.lora_r": 2, "model.lora_export": "adapter", "train.max_steps": 1})
    assert main(["-q", "distill", *over]) == 0, capsys.readouterr().err
    student = work / "w" / "runs" / "lora" / "student"
    base = str(work.resolve() / "w" / "s")
    assert json.loads((student / "ekd_base.json").read_text())["base_model"] == base
    assert json.loads((student / "adapter_config.json").read_text())["base_model_name_or_path"] == base
    monkeypatch.chdir(work / "elsewhere")
    assert main(["-q", "eval", str(student.parent), "eval.teacher=false"]) == 0, capsys.readouterr().err


def test_task_results_of_a_local_model_survive_a_respelling():
    from ekd.train.task_evaluation import same_model

    assert same_model("w/t#0123456789ab", "/abs/w/t#0123456789ab")
    assert not same_model("w/t#0123456789ab", "/abs/w/t#ba9876543210")
    assert not same_model("preset:llama-tiny#seed0", "preset:llama-micro#seed0")
    assert not same_model("org/a@main", "org/b@main")


def test_task_results_belong_to_a_models_bytes_not_its_files_times(tmp_path):
    """A task cache was keyed by the weight files' names, sizes and mtimes: other weights of the same sizes with
    the times put back (rsync -a, cp -p of another checkpoint) read the old model's scores, and a plain copy was
    scored again. Now the bytes of the weights and of the ``*.json`` files decide."""
    from ekd.train.task_evaluation import model_identity, same_model

    model = tmp_path / "m"
    model.mkdir()
    (model / "model.safetensors").write_bytes(b"\x00" * 64)
    (model / "config.json").write_text('{"model_type": "llama"}')
    first = model_identity(str(model))
    copy = tmp_path / "copy"
    shutil.copytree(model, copy, copy_function=shutil.copyfile)  # new mtimes
    assert same_model(first, model_identity(str(copy)))
    weights = model / "model.safetensors"
    st = weights.stat()
    weights.write_bytes(b"\x00" * 63 + b"\x01")  # same size, its times put back
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert not same_model(first, model_identity(str(model)))
    weights.write_bytes(b"\x00" * 64)
    assert model_identity(str(model)) == first
    (model / "config.json").write_text('{"model_type": "llama", "final_logit_softcapping": 30.0}')
    assert not same_model(first, model_identity(str(model)))


def test_a_path_that_cannot_be_a_file_name_is_kept(monkeypatch, tmp_path):
    """A Jinja template too long for a file name is no path: kept as given (no OSError)."""
    monkeypatch.chdir(tmp_path)
    template = "{% for m in messages %}{{ m['content'] }}{% endfor %}" * 20
    cfg = load_config(None, ["data.format=chat", "data.source=x.jsonl", f"data.chat_template={template}"])
    assert cfg.data.chat_template == template
    assert os.path.isabs(cfg.run.output_dir)


@pytest.mark.slow
def test_a_teacher_retrained_in_place_is_refused_and_a_touched_one_accepted(
    work, monkeypatch, capsys, caplog
):
    """Try-out 8: other weights copied over the cache's own teacher directory trained from the stale cache; the
    cache recorded only the weights' hash, which a run from the cache copies instead of reading the teacher.
    The build now records the files' sizes, times and inodes: when they changed, the run hashes the weights again
    — also for bytes written in place with the mtime put back (the change time tells)."""
    monkeypatch.chdir(work)
    teacher = work / "w" / "t-inplace"
    shutil.copytree(work / "w" / "t", teacher)
    extra = {"method.preset": "rskd", "teacher.cache_dir": "w/cache-inplace", "model.teacher": "w/t-inplace"}
    assert main(["-q", "cache", *_relative("ip", **extra)]) == 0, capsys.readouterr().err
    signature = json.loads((work / "w" / "cache-inplace" / MANIFEST).read_text())["signature"]
    assert list(signature["teacher_files"]) == ["model.safetensors"]
    run = [*_relative("ip", **extra), "teacher.source=cache", "train.max_steps=1"]
    weights = teacher / "model.safetensors"
    os.utime(weights, ns=(weights.stat().st_atime_ns, weights.stat().st_mtime_ns + 10**9))  # same bytes
    with caplog.at_level(logging.INFO):
        assert main(["distill", *run, "run.name=ip-touched"]) == 0, capsys.readouterr().err
    assert "comparing the weights' hash" in caplog.text
    assert main(["-q", "cache", *_relative("ip", **extra)]) == 0  # records the new times: no hash next run
    caplog.clear()
    with caplog.at_level(logging.INFO):
        assert main(["distill", *run, "run.name=ip-again"]) == 0, capsys.readouterr().err
    assert "comparing the weights' hash" not in caplog.text
    kept = weights.stat()
    shutil.copy(work / "w" / "t2" / "model.safetensors", weights)  # retrained in place: other weights
    assert weights.stat().st_size == kept.st_size
    os.utime(weights, ns=(kept.st_atime_ns, kept.st_mtime_ns))  # ... with the mtime put back (try-out 44)
    assert main(["-q", "distill", *run, "run.name=ip-retrained"]) == 2
    assert "teacher_revision [model.teacher]" in _error_line(capsys)
    assert not (work / "w" / "runs" / "ip-retrained").exists()


def test_gone_paths_are_the_paths_a_run_read_that_no_longer_exist(tmp_path, monkeypatch):
    """``--resume`` tells a moved data file or model directory (today's value names nothing, so it stays as typed)
    from a config that names another one (try-out 23)."""
    from ekd.config.paths import gone_paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "here.jsonl").write_text("{}\n")
    saved = {
        "data.source": str(tmp_path / "data" / "text.jsonl"),
        "model.teacher": "/old/project/m/teacher",  # a project directory since moved: the trailing parts
        "model.student": str(tmp_path / "here.jsonl"),
        "data.eval_sources": {"held": str(tmp_path / "held.jsonl"), "other": str(tmp_path / "here.jsonl")},
        "model.tokenizer": "Qwen/Qwen2.5-0.5B",
    }
    current = {
        "data.source": "data/text.jsonl",
        "model.teacher": "m/teacher",
        "model.student": "elsewhere.jsonl",  # another path: a config change, not a missing one
        "data.eval_sources": {"held": "held.jsonl", "other": "other.jsonl"},
        "model.tokenizer": "Qwen/Qwen2.5-1.5B",  # a hub id
    }
    assert gone_paths(saved, current, sorted(saved)) == [
        f"data.eval_sources: held.jsonl (the run read {tmp_path / 'held.jsonl'})",
        f"data.source: data/text.jsonl (the run read {tmp_path / 'data' / 'text.jsonl'})",
        "model.teacher: m/teacher (the run read /old/project/m/teacher)",
    ]


@pytest.mark.parametrize(
    "args",
    [
        ["eval", "{loop}"],
        ["cache", "info", "{loop}"],
        ["compare", "{loop}"],
        ["student", "init", "{loop}", "{tmp}/out", "--layers", "1"],
        ["distill", "{config}", "model.teacher={loop}"],
        ["distill", "{config}", "data.source={loop}"],
    ],
)
def test_a_symlink_loop_anywhere_a_path_goes_is_one_line(tmp_path, capsys, monkeypatch, args):
    """Try-out 137, F5: a relative path that is a symbolic link leading back to itself was Path.resolve's
    RuntimeError traceback in every command that takes a path (15 places)."""
    from ekd.cli import main
    from tiny import config_file, write_corpus

    monkeypatch.chdir(tmp_path)
    Path("lp").symlink_to("lp")
    config = config_file(tmp_path, write_corpus(tmp_path / "corpus"), "r")
    given = [a.format(loop="lp", tmp=tmp_path, config=config) for a in args]
    assert main(given) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "lp is a symbolic link that leads back to itself (a loop)" in err[0], err


def test_overwrite_of_a_run_that_is_a_symbolic_link_replaces_it_where_it_lies(tmp_path, capsys, monkeypatch):
    """Try-out 137, F3: --overwrite of runs/exp1 -> bigdisk/exp1 moved the link aside (runs/.exp1.replaced), made the
    new run on runs/'s disk, and every later command of the run was a traceback (rmtree of a symbolic link). The run
    is replaced in the directory the link leads to; the link stays; a link an older ekd moved aside is removed."""
    from tiny import tiny_overrides, write_corpus

    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path / "corpus")
    big = tmp_path / "bigdisk"
    base = tiny_overrides(tmp_path, corpus, "exp1", **{"train.max_steps": 1})
    assert main(["-q", "distill", *base, f"run.output_dir={big}"]) == 0
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "exp1").symlink_to(big / "exp1")
    first = json.loads((big / "exp1" / "ekd-run.json").read_text())["run_id"]
    assert main(["-q", "distill", *base, "train.lr=0.002", "--overwrite"]) == 0, capsys.readouterr().err
    link = tmp_path / "runs" / "exp1"
    assert link.is_symlink() and link.resolve() == (big / "exp1").resolve()
    assert json.loads((big / "exp1" / "ekd-run.json").read_text())["run_id"] != first  # the new run, there
    assert sorted(p.name for p in (tmp_path / "runs").iterdir() if "replaced" in p.name) == []
    assert sorted(p.name for p in big.iterdir() if "replaced" in p.name) == []
    assert main(["-q", "eval", str(link), "eval.teacher=false"]) == 0, capsys.readouterr().err
    # the state an older ekd left: the user's link moved aside beside a new run directory
    link.unlink()
    shutil.copytree(big / "exp1", link)
    (tmp_path / "runs" / ".exp1.replaced").symlink_to(big / "exp1")
    assert main(["-q", "eval", str(link), "eval.teacher=false"]) == 0, capsys.readouterr().err
    assert not (tmp_path / "runs" / ".exp1.replaced").exists() and (big / "exp1" / "ekd-run.json").is_file()


def test_a_directory_source_reads_the_files_behind_a_linked_directory(tmp_path):
    """Try-out 137, F2: a corpus directory holding a symbolic link to a directory of shards (on another disk) was
    read without the shards' files — Path.rglob of Python 3.11 does not descend into a linked directory — while the
    log line read as complete; a glob of the same tree read them. A link back up is walked once."""
    from ekd.data.text_dir import list_directory, list_glob, signed_files

    corpus, shards = tmp_path / "corpus", tmp_path / "elsewhere" / "shards"
    (corpus / "sub").mkdir(parents=True)
    shards.mkdir(parents=True)
    (corpus / "a.txt").write_text("a\n")
    (corpus / "sub" / "b.txt").write_text("b\n")
    (shards / "e.txt").write_text("e\n")
    (corpus / "ext").symlink_to(shards)
    (corpus / "sub" / "up").symlink_to(corpus)  # a loop: not walked again
    listed = [p.relative_to(corpus).as_posix() for p in list_directory(corpus).files]
    assert listed == ["a.txt", "ext/e.txt", "sub/b.txt"], listed
    assert {p.name for p in list_glob(f"{corpus}/*/*.txt").files} == {"b.txt", "e.txt"}
    assert corpus / "ext" / "e.txt" in signed_files(corpus)  # the token store's signature sees them too


def test_a_data_file_named_with_a_globs_characters_is_that_file(tmp_path, capsys):
    """Try-out 137, F4: `data.source=notes[v1].txt`, an existing file, was refused as "a glob that matches no files;
    check the pattern" before it was read (the reader itself reads the literal file first); the escaped spelling that
    passed read it by the glob rule, as one document without an eval split."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    text = "\n\n\n".join(p.read_text() for p in sorted(corpus.iterdir()))
    named = tmp_path / "d [1]" / "notes[v1].txt"
    named.parent.mkdir()
    named.write_text(text)
    plain = tmp_path / "plain.txt"
    plain.write_text(text)
    for name, source in (("bracket", named), ("plain", plain)):
        args = tiny_overrides(tmp_path, source, name, **{"train.max_steps": 1, "data.eval_fraction": 0.3})
        assert main(["-q", "distill", *args]) == 0, capsys.readouterr().err
    marker = {
        n: json.loads((tmp_path / "runs" / n / "ekd-run.json").read_text()) for n in ("bracket", "plain")
    }
    assert marker["bracket"]["data_fingerprint"] == marker["plain"]["data_fingerprint"]  # the same documents


def test_a_home_path_that_reaches_ekd_unexpanded_is_read_as_the_home_directory(tmp_path, capsys, monkeypatch):
    """Try-out 137, F6: `~/runs/x` quoted (or from a launcher's argument list) was expanded by ekd distill and every
    config key but read literally by ekd eval / compare / cache info, which refused it as missing "(read as <the
    home path, which exists>)". F9: a run named '~' is refused (`ekd eval ~` read its files from the home
    directory)."""
    from tiny import tiny_overrides, write_corpus

    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    corpus = write_corpus(tmp_path / "corpus")
    args = tiny_overrides(tmp_path, corpus, "h1", **{"train.max_steps": 1, "run.output_dir": "~/ekdruns"})
    assert main(["-q", "distill", *args]) == 0, capsys.readouterr().err
    assert (tmp_path / "home" / "ekdruns" / "h1" / "student").is_dir()
    assert main(["-q", "eval", "~/ekdruns/h1", "eval.teacher=false"]) == 0, capsys.readouterr().err
    out = tmp_path / "cmp"
    assert main(["-q", "compare", "~/ekdruns/h1", "--out", str(out), "--no-plots"]) == 0, (
        capsys.readouterr().err
    )
    assert main(["cache", "info", "~/nocache"]) == 2
    assert f"read as {tmp_path / 'home' / 'nocache'}" not in capsys.readouterr().err  # named as what it reads
    assert main(["-q", "distill", *args, "run.name=~"]) == 2
    assert "run.name" in capsys.readouterr().err


def test_resume_with_the_student_directory_moved_is_told_to_put_it_back(work, tmp_path, monkeypatch, capsys):
    """Try-out 138, F2: --resume of a run whose model.student directory moved was told "pass a hub id, a saved model
    directory or preset:<name>", and passing the moved directory was refused as a change to what the run computes.
    The line says to put it back."""
    student = tmp_path / "student"
    shutil.copytree(work / "w" / "s", student)
    monkeypatch.chdir(work)
    over = {"model.student": str(student), "run.output_dir": str(tmp_path / "runs"), "train.max_steps": 1}
    assert main(["-q", "distill", *_relative("smoved", **over)]) == 0, capsys.readouterr().err
    student.rename(tmp_path / "student-moved")
    assert main(["-q", "distill", *_relative("smoved", **over), "train.max_steps=2", "--resume"]) == 2
    line = _error_line(capsys)
    assert line.endswith(f"--resume: model.student={student} no longer exists: put it back there (the run reads the "
                         "student it started from there: its architecture, and with LoRA its base weights)"), line  # fmt: skip


@pytest.mark.parametrize("command, config", [("distill", "demo.yaml"), ("cache", "cache-demo.yaml")])
def test_the_shipped_demo_configs_before_ekd_demo_are_told_to_run_it(
    tmp_path, capsys, monkeypatch, command, config
):
    """Try-out 138, F9: configs/demo.yaml and configs/cache-demo.yaml run before `ekd demo` were told to "check the
    spelling" of runs/demo/student-init and runs/demo/teacher, which `ekd demo` writes."""
    shipped = Path(__file__).resolve().parents[1] / "configs" / config
    monkeypatch.chdir(tmp_path)
    assert main([command, str(shipped)]) == 2
    line = _error_line(capsys)
    assert "`ekd demo` writes it: run `ekd demo` first (or name your own models)" in line, line
    assert "check the spelling" not in line, line


@pytest.mark.parametrize("folder", ["c,d", "{lr}"])
def test_an_eval_source_path_holding_yaml_flow_characters_is_told_to_quote_it(
    tmp_path, capsys, monkeypatch, folder
):
    """Try-out 137, F7: `data.eval_sources={ho: dd/c,d/held.txt}` blamed the set's *name* ('d/held.txt'), `{lr}` in
    the path read "expected dict" of what was written as one, and the spelling ekd suggested for
    `data.eval_sources.ho=…` was the one that fails. Each line now says to quote the path, and the way it gives
    works."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    held = tmp_path / "dd" / folder / "held.txt"
    held.parent.mkdir(parents=True)
    held.write_text((corpus / "doc_000.py").read_text())
    monkeypatch.chdir(tmp_path)
    base = tiny_overrides(tmp_path, corpus, "q", **{"train.max_steps": 1})
    assert main(["-q", "distill", *base, f"data.eval_sources={{ho: dd/{folder}/held.txt}}"]) == 2
    assert "in quotes" in _error_line(capsys)
    assert main(["-q", "distill", *base, f"data.eval_sources.ho=dd/{folder}/held.txt"]) == 2
    line = _error_line(capsys)
    suggested = line.split('write "', 1)[1].split('"', 1)[0]
    assert suggested == f"data.eval_sources={{ho: 'dd/{folder}/held.txt'}}", line
    assert main(["-q", "distill", *base, suggested]) == 0, capsys.readouterr().err


def test_a_keyword_over_a_local_directory_of_its_name_is_said(tmp_path, monkeypatch, caplog):
    """Try-out 137, F10: with ./pystdlib (./auto, ./teacher) here, data.source=pystdlib read the builtin corpus
    (data.store_dir=auto the run's store, model.tokenizer=teacher the teacher's) without a word about the directory
    passed over."""
    monkeypatch.chdir(tmp_path)
    for name in ("pystdlib", "auto", "teacher"):
        (tmp_path / name).mkdir()
    from ekd.config import paths

    monkeypatch.setattr(paths, "_SAID", set())
    with caplog.at_level(logging.WARNING, logger="ekd.config.paths"):
        cfg = load_config(None, ["data.source=pystdlib", "data.store_dir=auto", "model.tokenizer=teacher"])
        load_config(None, ["data.source=pystdlib"])  # once a process (review 140, R8)
    assert cfg.data.source == "pystdlib" and cfg.data.store_dir == "auto" and cfg.model.tokenizer == "teacher"
    said = [r.getMessage() for r in caplog.records]
    for key, value in (
        ("data.source", "pystdlib"),
        ("data.store_dir", "auto"),
        ("model.tokenizer", "teacher"),
    ):
        assert f"{key}={value} is ekd's keyword, not the directory ./{value} here, which is not used; write {key}=./{value} to use it" in said, said  # fmt: skip
    assert len(said) == 3, said


def test_a_hub_id_read_from_a_local_directory_of_its_name_is_said(tmp_path, monkeypatch, caplog):
    """Try-out 152, F6: ./acme/tiny-teacher here replaced the hub id acme/tiny-teacher without a word (an old
    copy, a fine-tune saved under the hub id's name), and model.revision was recorded though never read. A warning
    where the hub cache holds the id too; a debug line otherwise (try-out 154, N4: every project's
    `models/student` was warned of as shadowing a hub model that does not exist)."""
    from huggingface_hub import constants

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    (tmp_path / "hub" / "models--acme--tiny-teacher" / "snapshots" / ("a" * 40)).mkdir(parents=True)
    (tmp_path / "acme" / "tiny-teacher").mkdir(parents=True)
    (tmp_path / "models" / "student").mkdir(parents=True)
    from ekd.config import paths

    monkeypatch.setattr(paths, "_SAID", set())
    with caplog.at_level(logging.DEBUG, logger="ekd.config.paths"):
        cfg = load_config(None, ["model.teacher=acme/tiny-teacher", "model.revision=v1"])
        # said so; a hub id
        load_config(None, ["model.teacher=./acme/tiny-teacher", "model.student=acme/other"])
        load_config(None, ["model.student=models/student"])
    assert cfg.model.teacher == str(tmp_path / "acme" / "tiny-teacher")
    info = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert len(info) == 1 and info[0].startswith(
        "model.student=models/student is read from the local directory"
    )
    said = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert said == [
        "model.teacher=acme/tiny-teacher is read from the local directory ./acme/tiny-teacher (model.revision=v1 is "
        "not read for it), not the hub id acme/tiny-teacher; write model.teacher=./acme/tiny-teacher to say so, or "
        "move the directory away to use the hub's model"
    ], said


def test_a_runs_recorded_keywords_are_not_said_of_a_directory_where_eval_or_compare_runs(
    tmp_path, monkeypatch, caplog
):
    """Try-out 143, F1: with a ./teacher where `ekd eval RUN` and `ekd compare` ran, both warned that the run's
    recorded model.tokenizer=teacher was a keyword and told to write ./teacher — which `ekd eval` refuses (it scores
    with the run's own tokenizer) and which compare never reads. Said of a config a user gives, not of a record."""
    from ekd.config import paths
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    overrides = tiny_overrides(tmp_path, corpus, "kw", **{"train.max_steps": 1, "model.tokenizer": "teacher"})
    assert main(["-q", "distill", *overrides]) == 0
    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    monkeypatch.setattr(paths, "_SAID", set())
    run = str(tmp_path / "runs" / "kw")
    with caplog.at_level(logging.WARNING, logger="ekd.config.paths"):
        assert main(["-q", "eval", run]) == 0
        assert main(["-q", "compare", run, "--out", str(tmp_path / "cmp"), "--no-plots"]) == 0
        assert not [r.getMessage() for r in caplog.records if "keyword" in r.getMessage()]
        load_config(None, ["model.tokenizer=teacher"])  # a config given here: said
    assert any("model.tokenizer=teacher is ekd's keyword" in r.getMessage() for r in caplog.records)
    (tmp_path / "pystdlib").mkdir()  # a keyword typed to `ekd eval RUN` is (review 149, R6)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="ekd.config.paths"):
        assert main(["-q", "eval", run, "data.eval_sources={std: pystdlib}", "data.max_chars=20000"]) == 0
    said = [r.getMessage() for r in caplog.records if "keyword" in r.getMessage()]
    assert said == [
        "data.eval_sources=pystdlib is ekd's keyword, not the directory ./pystdlib here, which is not used; write "
        "data.eval_sources=./pystdlib to use it"
    ], said


def test_a_default_keyword_or_one_naming_the_directory_it_means_is_not_said(tmp_path, monkeypatch, caplog):
    """Try-out 145, F4: with `model.teacher=./teacher`, the default `model.tokenizer=teacher` (never written) was
    warned about as a keyword passing over ./teacher, 'not read' — the teacher's tokenizer is read from there."""
    from ekd.config import paths

    monkeypatch.chdir(tmp_path)
    (tmp_path / "teacher").mkdir()
    monkeypatch.setattr(paths, "_SAID", set())
    with caplog.at_level(logging.WARNING, logger="ekd.config.paths"):
        load_config(None, ["model.teacher=./teacher"])  # the default tokenizer keyword: not given
        load_config(None, ["model.teacher=./teacher", "model.tokenizer=teacher"])  # it means ./teacher
        assert not [r.getMessage() for r in caplog.records], caplog.text
        load_config(None, ["model.tokenizer=teacher"])  # the preset teacher's: ./teacher is passed over
    assert any("model.tokenizer=teacher is ekd's keyword" in r.getMessage() for r in caplog.records)


def test_a_link_to_nothing_in_the_way_of_a_write_is_said_so(tmp_path, capsys):
    """Try-out 137, F11: a symbolic link whose target does not exist, where ekd writes (`ekd compare --out`), was "a
    file is in the way"; it is said to be a link to nothing, with its target."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "r", **{"train.max_steps": 1})]) == 0
    out = tmp_path / "cmp"
    out.symlink_to(tmp_path / "nowhere")
    assert main(["compare", str(tmp_path / "runs" / "r"), "--out", str(out), "--no-plots"]) == 2
    line = _error_line(capsys)
    assert f"{out} is a symbolic link to {tmp_path / 'nowhere'}, which does not exist" in line, line
    assert "mount its disk or create it, or remove the link" in line, line


def test_a_run_directory_starting_with_a_dash_is_told_how_to_write_it(tmp_path, capsys, monkeypatch):
    """Try-out 137, F11: `ekd eval -dash` said the run directory was missing; the line says the word reads as an
    option and how to write it."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit):
        main(["eval", "-dash"])
    err = capsys.readouterr().err
    assert "-dash reads as an option: write a path starting with '-' as ./-dash" in err, err


def test_compare_of_a_linked_run_whose_overwrite_was_killed_names_the_run_kept(tmp_path, capsys):
    """Try-out 139, F2: a killed --overwrite of a linked run keeps the old run beside the directory the link leads
    to; `ekd compare` through the link looked beside the link, missed it, and offered --overwrite again (which
    deletes it once the new run starts)."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    disk = tmp_path / "otherdisk"
    base = tiny_overrides(tmp_path, corpus, "real1", **{"train.max_steps": 1, "run.output_dir": disk})
    assert main(["-q", "distill", *base]) == 0, capsys.readouterr().err
    (tmp_path / "lruns").mkdir()
    link = tmp_path / "lruns" / "lk"
    link.symlink_to(disk / "real1")
    (disk / "real1").rename(disk / ".real1.replaced")  # the state a kill -9 during the new run's start leaves
    (disk / "real1").mkdir()
    shutil.copy(disk / ".real1.replaced" / "config.yaml", disk / "real1" / "config.yaml")
    (disk / "real1" / "ekd-run.json").write_text(
        json.dumps({"format": "ekd-run", "version": 1, "state": "starting"})
    )
    assert main(["compare", str(link), "--out", str(tmp_path / "cmp")]) == 2
    line = _error_line(capsys)
    assert f"the run it replaced is kept in {disk / '.real1.replaced'}" in line, line


@pytest.mark.parametrize("store", [False, True])
def test_a_directory_source_holding_a_link_to_nothing_is_refused(tmp_path, capsys, store):
    """Try-out 139, F3: a symbolic link to a directory that is not there (a shard on an unmounted disk) was left out
    of a directory source without a word: the corpus read in part, its eval split and store key changed."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    (corpus / "shard2").symlink_to(tmp_path / "mnt" / "disk2" / "shard2")
    extra = {"train.max_steps": 1, **({"data.store_dir": "auto"} if store else {})}
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "dang", **extra)]) == 2
    line = _error_line(capsys)
    assert f"{corpus / 'shard2'} is a symbolic link to {tmp_path / 'mnt' / 'disk2' / 'shard2'}, which does not exist" in line, line  # fmt: skip


def test_a_run_directory_that_links_to_nothing_is_refused_and_an_older_killed_overwrite_restored(
    tmp_path, capsys
):
    """Review 140, R1: a run directory linked to a disk not mounted (runs/x -> /mnt/disk2/x) was trained into the
    empty mount point, exit 0. R2: the link an older ekd's killed --overwrite moved aside, the new run only
    starting, is put back (it was deleted, the new run then made on runs/'s disk)."""
    from ekd.train.run_dir import recover_interrupted_replace
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    (tmp_path / "runs").mkdir()
    (tmp_path / "runs" / "x").symlink_to(tmp_path / "mnt" / "disk2" / "x")
    base = tiny_overrides(tmp_path, corpus, "x", **{"train.max_steps": 1})
    assert main(["-q", "distill", *base]) == 2
    line = _error_line(capsys)
    assert f"runs/x is a symbolic link to {tmp_path / 'mnt' / 'disk2' / 'x'}, which does not exist" in line, (
        line
    )
    assert not (tmp_path / "mnt").exists()
    # R2: an older ekd moved the link aside and was killed while the new run was starting
    big = tmp_path / "big"
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "y", **{"train.max_steps": 1, "run.output_dir": big})]) == 0  # fmt: skip
    (tmp_path / "runs" / ".y.replaced").symlink_to(big / "y")
    (tmp_path / "runs" / "y").mkdir()
    (tmp_path / "runs" / "y" / "ekd-run.json").write_text(
        '{"format": "ekd-run", "version": 1, "state": "starting"}'
    )
    assert recover_interrupted_replace(tmp_path / "runs" / "y")
    assert (tmp_path / "runs" / "y").is_symlink() and (tmp_path / "runs" / "y" / "student").is_dir()


def test_review_140_a_renamed_run_a_loop_on_other_ranks_and_two_paths_to_one_directory(
    tmp_path, capsys, monkeypatch
):
    """Review 140: R5 a run renamed in place is evaluated under its new name (its old one came back from
    config.yaml); R3 a symbolic-link loop is said once a node (every torchrun rank printed it); R7 a directory
    reached by two paths is named by the first in name order, whatever order the disk lists them in."""
    from ekd.data.text_dir import files_below
    from ekd.train.evaluation import load_run_config
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "x", **{"train.max_steps": 1})]) == 0
    (tmp_path / "runs" / "x").rename(tmp_path / "runs" / "x-v2")
    cfg = load_run_config(tmp_path / "runs" / "x-v2")
    assert cfg.run.name == "x-v2" and cfg.run_dir == tmp_path / "runs" / "x-v2"
    monkeypatch.chdir(tmp_path)
    Path("lp").symlink_to("lp")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert main(["eval", "lp"]) == 2
    assert capsys.readouterr().err == ""  # local rank 0 says it
    monkeypatch.delenv("LOCAL_RANK")
    for first in ("all", "shards"):  # the link made before or after the directory
        tree = tmp_path / f"tree-{first}"
        tree.mkdir()
        if first == "all":
            (tree / "all").symlink_to(tree / "shards")
        (tree / "shards").mkdir()
        (tree / "shards" / "e.txt").write_text("e\n")
        if first == "shards":
            (tree / "all").symlink_to(tree / "shards")
        assert [p.relative_to(tree).as_posix() for p in files_below(tree)] == ["all/e.txt"]


def test_overwrite_after_an_older_ekds_killed_overwrite_of_a_linked_run_keeps_the_link(tmp_path, capsys):
    """Try-out 141, F1: where an older ekd had moved a run's link aside and its new start was killed, --overwrite
    put the link back, then moved the link itself aside (RunStart had taken the killed start's directory for the
    run), made the new run on runs/'s disk, and logged a removal that failed on the link."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    big = tmp_path / "big"
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "y", **{"train.max_steps": 1, "run.output_dir": big})]) == 0  # fmt: skip
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / ".y.replaced").symlink_to(big / "y")
    (runs / "y").mkdir()
    shutil.copy(big / "y" / "config.yaml", runs / "y" / "config.yaml")
    (runs / "y" / "ekd-run.json").write_text('{"format": "ekd-run", "version": 1, "state": "starting"}')
    first = json.loads((big / "y" / "ekd-run.json").read_text())["run_id"]
    base = tiny_overrides(tmp_path, corpus, "y", **{"train.max_steps": 1})
    assert main(["-q", "distill", *base, "train.lr=0.002", "--overwrite"]) == 0, capsys.readouterr().err
    assert (runs / "y").is_symlink() and (runs / "y").resolve() == (big / "y").resolve()
    # the new run, where it leads
    assert json.loads((big / "y" / "ekd-run.json").read_text())["run_id"] != first
    assert not [p for d in (runs, big) for p in d.iterdir() if p.name.endswith(".replaced")]


def test_the_way_on_for_a_linked_runs_kept_run_names_the_directory_to_move(tmp_path, capsys):
    """Try-out 141, F4: with a linked run's old run kept aside where the link leads and something else in its
    place, `ekd eval` told the user to move the link (the run then out of reach): it names the directory the link
    leads to."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    disk = tmp_path / "od2"
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "real1", **{"train.max_steps": 1, "run.output_dir": disk})]) == 0  # fmt: skip
    (disk / "real1").rename(disk / ".real1.replaced")
    (disk / "real1").mkdir()
    (disk / "real1" / "notes.txt").write_text("hi\n")
    (tmp_path / "lr2").mkdir()
    link = tmp_path / "lr2" / "lk"
    link.symlink_to(disk / "real1")
    assert main(["eval", str(link)]) == 2
    line = _error_line(capsys)
    assert f"and {(disk / 'real1').resolve()} holds something else: move that away" in line, line


@pytest.mark.parametrize("linked", [False, True])
def test_ekd_eval_puts_back_a_run_a_killed_overwrite_left_aside_with_nothing_in_its_place(
    tmp_path, capsys, linked
):
    """Try-out 142, F1: the way on ("move that away, then `ekd eval RUN` puts the run back") did not work — with
    nothing in the run's place `ekd eval` said it did not exist (a linked run: a link to nothing, to be removed:
    the last pointer to the run)."""
    from tiny import tiny_overrides, write_corpus

    corpus = write_corpus(tmp_path / "corpus")
    disk = tmp_path / "od"
    assert main(["-q", "distill", *tiny_overrides(tmp_path, corpus, "e9", **{"train.max_steps": 1, "run.output_dir": disk})]) == 0  # fmt: skip
    (disk / "e9").rename(disk / ".e9.replaced")  # the old run aside, nothing yet in its place
    run = disk / "e9"
    if linked:
        (tmp_path / "lr").mkdir()
        run = tmp_path / "lr" / "lk"
        run.symlink_to(disk / "e9")
    assert main(["-q", "eval", str(run), "eval.teacher=false"]) == 0, capsys.readouterr().err
    assert (disk / "e9" / "eval.json").is_file() and not (disk / ".e9.replaced").exists()
