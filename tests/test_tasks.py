"""Downstream tasks through lm-evaluation-harness (``eval.tasks``, ``ekd eval --tasks``), CPU, no network.

A tiny local multiple-choice task (20 items) and a tiny generation task, both JSONL + YAML written here,
run on a 3-step distilled micro student. Accuracy is checked against a hand count from the model's own
log-likelihoods, MC-ECE against an independent float64 computation, the generation score against greedy
decoding with ``model.generate``; the teacher's results are cached; ``eval.tasks`` at the end of
``ekd distill`` writes the numbers ``ekd eval`` writes.
"""

from __future__ import annotations

import copy
import json
import math
import random
import sys
import types

import pytest
import torch
import yaml

from ekd.cli import main
from ekd.errors import EkdError
from ekd.eval import task_metrics as tm
from tiny import WORDS, config_file, write_corpus

MC_ITEMS = 20


def _mc_rows(seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {
            "question": " ".join(rng.choice(WORDS) for _ in range(5)),
            "choices": rng.sample(WORDS, 3),
            "answer": rng.randrange(3),
        }
        for _ in range(MC_ITEMS)
    ]


def _write_task(tasks_dir, name: str, rows: list[dict], body: str) -> None:
    data = tasks_dir / f"{name}.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks_dir / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {tasks_dir / 'hf-cache'}\ntest_split: test\n" + body
    )


MC_YAML = """output_type: multiple_choice
doc_to_text: "{{question}}"
doc_to_choice: "{{choices}}"
doc_to_target: answer
metric_list:
  - metric: acc
"""

GEN_YAML = """output_type: generate_until
doc_to_text: "{{question}} :"
doc_to_target: "{{answer}}"
generation_kwargs:
  until: ["\\n"]
filter_list:
  - name: strict-match
    filter:
      - function: regex
        regex_pattern: "(\\\\w+)"
      - function: take_first
metric_list:
  - metric: exact_match
"""


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One 3-step distill with eval.tasks = [tiny_mc, tiny_gen]: (run_dir, tasks_dir)."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    tmp = tmp_path_factory.mktemp("tasks")
    tasks_dir = tmp / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML)
    rng = random.Random(1)
    gen_rows = [{"question": " ".join(rng.sample(WORDS, 4)), "answer": rng.choice(WORDS)} for _ in range(6)]
    _write_task(tasks_dir, "tiny_gen", gen_rows, GEN_YAML)
    corpus = write_corpus(tmp / "corpus")
    cfg = config_file(tmp, corpus, "t", **{"eval.tasks_max_new_tokens": 4, "eval.plots": True})
    args = ["eval.tasks=[tiny_mc,tiny_gen]", f"eval.tasks_dir={tasks_dir}"]
    assert main(["-q", "distill", cfg, *args]) == 0
    return tmp / "runs" / "t", tasks_dir


def _student(run_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model = AutoModelForCausalLM.from_pretrained(run_dir / "student").eval()
    return model, AutoTokenizer.from_pretrained(run_dir / "student")


def _loglikelihood(model, tok, context: str, continuation: str) -> float:
    """Σ log p(continuation tokens | context), float64, encoding as lm-eval does (whole, then split)."""
    ctx = tok.encode(context)
    whole = tok.encode(context + continuation)
    cont = whole[len(ctx) :]
    with torch.no_grad():
        logits = model(torch.tensor([whole[:-1]])).logits[0].double()  # (T-1, V)
    logp = torch.log_softmax(logits, dim=-1)
    rows = torch.arange(len(whole) - 1 - len(cont), len(whole) - 1)  # (C,) rows predicting the continuation
    return float(logp[rows, torch.tensor(cont)].sum())


def _eval_json(run_dir) -> dict:
    return json.loads((run_dir / "eval.json").read_text())


@pytest.mark.slow
def test_mc_accuracy_is_a_hand_count_and_ece_matches_an_independent_computation(run):
    run_dir, _ = run
    model, tok = _student(run_dir)
    conf, correct = [], []
    for row in _mc_rows():
        lls = [_loglikelihood(model, tok, row["question"], " " + c) for c in row["choices"]]
        probs = torch.softmax(torch.tensor(lls, dtype=torch.float64), 0)
        conf.append(float(probs.max()))
        correct.append(int(torch.tensor(lls).argmax()) == row["answer"])
    result = _eval_json(run_dir)["tasks"]["student"]["tiny_mc"]
    assert result["metric"] == "acc" and result["n"] == MC_ITEMS
    assert result["value"] == pytest.approx(sum(correct) / MC_ITEMS, abs=1e-12)
    # ECE, 15 equal-width bins (lo, hi], computed here with numpy-free plain loops
    edges = [i / 15 for i in range(16)]
    ece = 0.0
    for lo, hi in zip(edges[:-1], edges[1:]):
        idx = [i for i, c in enumerate(conf) if (lo < c <= hi) or (lo == 0 and c == 0)]
        if idx:
            gap = abs(sum(correct[i] for i in idx) / len(idx) - sum(conf[i] for i in idx) / len(idx))
            ece += len(idx) / len(conf) * gap
    assert result["ece"] == pytest.approx(100 * ece, abs=1e-4)
    assert (run_dir / "plots" / "tasks" / "reliability-tiny_mc.png").is_file()


@pytest.mark.slow
def test_generation_is_greedy_within_the_token_budget(run):
    run_dir, _ = run
    model, tok = _student(run_dir)
    rng = random.Random(1)
    rows = [{"question": " ".join(rng.sample(WORDS, 4)), "answer": rng.choice(WORDS)} for _ in range(6)]
    hits = 0
    for row in rows:
        ids = torch.tensor([tok.encode(row["question"] + " :")])
        out = model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=4)
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n")[0]
        words = __import__("re").findall(r"\w+", text)
        hits += bool(words) and words[0] == row["answer"]
    result = _eval_json(run_dir)["tasks"]["student"]["tiny_gen"]
    assert (result["metric"], result["filter"]) == ("exact_match", "strict-match")
    assert result["value"] == pytest.approx(hits / len(rows))
    assert result["ece"] is None  # MC-ECE is for multiple-choice tasks only


@pytest.mark.slow
def test_task_datasets_draw_no_progress_bars_into_ekds_output(run, tmp_path, capfd):
    """lm-eval loads a task's data with ``datasets``, whose 'Generating test split' bars used to interleave
    with ekd's tables; ekd hides them while it loads and leaves the switch as it found it."""
    from datasets.utils.tqdm import are_progress_bars_disabled

    from ekd.eval.tasks import TaskSettings, run_tasks

    run_dir, _ = run
    model, tok = _student(run_dir)
    fresh = tmp_path / "tasks"  # a new datasets cache: the split is generated (and would draw its bar)
    fresh.mkdir()
    _write_task(fresh, "tiny_mc_fresh", _mc_rows(3), MC_YAML)
    capfd.readouterr()
    before = are_progress_bars_disabled()
    run_tasks(model, tok, TaskSettings(tasks=("tiny_mc_fresh",), tasks_dir=str(fresh)))
    err = capfd.readouterr().err
    assert "Generating" not in err and "examples/s" not in err
    assert are_progress_bars_disabled() == before
    assert (fresh / "hf-cache").is_dir()  # the split was generated here, not reused


TQDM_LIKE = ("%|", "it/s", "s/it", "Running loglikelihood", "Running generate_until", "Tokenizing", "\r")


def _tiny_model_and_tasks(tmp_path):
    """A random micro model and the tiny local MC + generation tasks (no distill run)."""
    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import build_preset

    tok = train_bpe_tokenizer([" ".join(WORDS)] * 4, 280, None)
    model = build_preset("llama-micro", len(tok), tok.eos_token_id)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML)
    rng = random.Random(1)
    gen_rows = [{"question": " ".join(rng.sample(WORDS, 4)), "answer": rng.choice(WORDS)} for _ in range(3)]
    _write_task(tasks_dir, "tiny_gen", gen_rows, GEN_YAML)
    return model, tok, tasks_dir


def test_progress_off_silences_lm_evals_own_bars(tmp_path, capfd):
    """log.progress=false: nothing tqdm-like from lm-eval ('Running loglikelihood requests: 100%|…',
    'Tokenizing inputs', the per-task request bar) reaches stdout or stderr; they were ~100 of the 131 lines of
    ``ekd demo --quick``. With progress on they show (so this test would see them), and the setting changes
    neither a score nor a result's signature (the teacher's cached results stay valid either way)."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from tqdm import std

    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    init = vars(std.tqdm)["__init__"]
    results = {}
    for progress in (True, False):
        settings = TaskSettings(
            tasks=("tiny_mc", "tiny_gen"), tasks_dir=str(tasks_dir), max_new_tokens=2, progress=progress
        )
        capfd.readouterr()
        results[progress] = run_tasks(model, tok, settings)
        out, err = capfd.readouterr()
        drawn = [m for m in TQDM_LIKE if m in out + err]
        assert bool(drawn) == progress, (progress, drawn, err[-2000:])
    assert vars(std.tqdm)["__init__"] is init  # tqdm is left as it was
    for task in ("tiny_mc", "tiny_gen"):
        assert results[True][task]["metrics"] == results[False][task]["metrics"]
    from ekd.eval.task_data import LeafTask

    on, off = (TaskSettings(tasks=("tiny_mc",), progress=p) for p in (True, False))
    leaves = {"tiny_mc": LeafTask("0123456789abcdef", 0)}
    assert on.signature("tiny_mc", leaves) == off.signature("tiny_mc", leaves)


def test_the_tasks_budget_and_greedy_decoding_win_over_the_models_generation_config(tmp_path, capfd):
    """Try-out 10: a student whose generation_config.json sets ``max_new_tokens=20`` generated 20 tokens for a
    task with ``max_gen_toks: 5`` (transformers warned 'Both max_new_tokens and max_length' every batch), and a
    checkpoint's repetition_penalty / sampling fields reshaped what a task scored. The task's budget and plain
    greedy decoding decide now; the model's own config is back, untouched, afterwards."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from transformers import GenerationConfig

    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    rng = random.Random(2)
    rows = [{"question": " ".join(rng.sample(WORDS, 4)), "answer": rng.choice(WORDS)} for _ in range(3)]
    no_stop = GEN_YAML.replace('until: ["\\n"]', "until: []\n  max_gen_toks: 5")
    assert "max_gen_toks: 5" in no_stop
    _write_task(tasks_dir, "gen_no_stop", rows, no_stop)
    # the reference model keeps transformers' defaults (a config passed to generate() is merged with the
    # model's own, so passing one would not give a plain reference)
    plain = copy.deepcopy(model)
    plain.generation_config = GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    own = dict(max_new_tokens=20, do_sample=True, temperature=0.7, top_k=3, top_p=0.5, repetition_penalty=5.0)
    model.generation_config = GenerationConfig(**own, eos_token_id=tok.eos_token_id)
    saved = model.generation_config
    generated, real_generate = [], model.generate

    def generate(input_ids, **kwargs):
        out = real_generate(input_ids=input_ids, **kwargs)
        generated.append((input_ids, out[:, input_ids.shape[1] :]))
        return out

    model.generate = generate
    capfd.readouterr()
    run_tasks(model, tok, TaskSettings(tasks=("gen_no_stop",), tasks_dir=str(tasks_dir), batch_size=1))
    err = capfd.readouterr().err
    del model.generate
    assert "max_new_tokens" not in err, err
    assert (
        model.generation_config is saved
        and saved.to_diff_dict() == GenerationConfig(**own, eos_token_id=tok.eos_token_id).to_diff_dict()
    )
    assert len(generated) == len(rows)
    for prompt, continuation in generated:
        ones = torch.ones_like(prompt)  # plain greedy decoding, 5 new tokens (fewer only at EOS)
        reference = plain.generate(input_ids=prompt, attention_mask=ones, do_sample=False, max_new_tokens=5)
        assert continuation.tolist() == reference[:, prompt.shape[1] :].tolist()


def test_quiet_progress_bars_disables_every_tqdm_and_restores_it(capfd):
    from tqdm import std
    from tqdm.auto import tqdm as auto_tqdm

    from ekd.log_level import quiet_progress_bars

    init = vars(std.tqdm)["__init__"]
    capfd.readouterr()
    with quiet_progress_bars():
        assert sum(std.tqdm(range(4), desc="explicit", disable=False)) == 6  # iterates, draws nothing
        assert sum(auto_tqdm(range(4), desc="auto")) == 6
        positional = std.tqdm(range(2), "positional", None, True, None, None, 0.1, 10.0, None, None, False)
        assert positional.disable
    assert "%|" not in capfd.readouterr().err
    assert vars(std.tqdm)["__init__"] is init
    with quiet_progress_bars(), quiet_progress_bars():  # try-out 81, F1: nested, it raised a ValueError
        assert std.tqdm(range(2), "nested", disable=False).disable
    assert vars(std.tqdm)["__init__"] is init
    with quiet_progress_bars(False):
        list(std.tqdm(range(2), desc="shown"))
    assert "shown" in capfd.readouterr().err


def test_quiet_dataset_progress_restores_the_switch():
    pytest.importorskip("datasets")
    from datasets.utils.tqdm import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    from ekd.log_level import quiet_dataset_progress

    was = are_progress_bars_disabled()
    try:
        enable_progress_bars()
        with quiet_dataset_progress():
            assert are_progress_bars_disabled()
        assert not are_progress_bars_disabled()
        disable_progress_bars()  # a user who switched them off keeps them off
        with quiet_dataset_progress():
            pass
        assert are_progress_bars_disabled()
    finally:
        (disable_progress_bars if was else enable_progress_bars)()


@pytest.mark.slow
def test_ekd_eval_tasks_matches_distill_and_reuses_the_teacher(run, tmp_path, monkeypatch, capsys):
    import shutil

    run_dir, tasks_dir = tmp_path / "runs" / "t", run[1]
    shutil.copytree(run[0], run_dir)  # it rewrites eval.json: the module's run stays as distill left it
    at_distill = _eval_json(run_dir)["tasks"]
    assert {"teacher", "student_init"} <= set(at_distill) and "gap_closed" in at_distill
    assert "eval" in _eval_json(run_dir)  # the eval sets' entries are kept beside the tasks
    teacher_cache = run_dir / "tasks" / "teacher.json"
    stamp = teacher_cache.stat().st_mtime_ns
    from ekd.train import task_evaluation

    calls = []
    real = task_evaluation.run_tasks

    def spy(model, tokenizer, settings, **kw):
        calls.append((kw.get("label"), settings.tasks))
        return real(model, tokenizer, settings, **kw)

    monkeypatch.setattr(task_evaluation, "run_tasks", spy)
    argv = ["-q", "eval", str(run_dir), "--tasks", "tiny_mc,tiny_gen", "--tasks-dir", str(tasks_dir)]
    before = (run_dir / "eval.json").read_bytes()
    assert (
        main([*argv[:3], "eval.set_tags={tiny_gn: shift}", *argv[3:]]) == 2
    )  # try-out 70, F3: refused first
    assert "eval.set_tags.tiny_gn names no eval set or task" in capsys.readouterr().err
    assert (run_dir / "eval.json").read_bytes() == before and calls == []
    assert main([*argv[:3], "eval.set_tags={tiny_gen: shift}", *argv[3:]]) == 0
    assert [c[0] for c in calls] == ["student"]  # teacher and initial student came from the cache
    assert teacher_cache.stat().st_mtime_ns == stamp
    again = _eval_json(run_dir)["tasks"]
    for role in ("student", "teacher", "student_init"):
        for task in ("tiny_mc", "tiny_gen"):
            for key in ("value", "ece", "n"):
                assert again[role][task][key] == at_distill[role][task][key], (role, task, key)
    means = again["summary"]["student"]["mean"]  # tagged sets side by side, never averaged together
    assert means == {
        "in_distribution": again["student"]["tiny_mc"]["value"],
        "shift": again["student"]["tiny_gen"]["value"],
    }
    assert "tiny_mc" in capsys.readouterr().out
    report = (run_dir / "report.md").read_text()
    assert "Downstream tasks" in report
    entry = _eval_json(run_dir)[
        "eval"
    ]  # try-out 45, F11: the eval sets' table says what its figures average over
    sizes = f"eval: {int(entry['documents'])} documents, {int(entry['tokens']):,} tokens"
    assert "Eval sets (documents, scored tokens): " in report and sizes in report, report
    from ekd.eval.compare import compare_runs, markdown

    table = markdown(compare_runs([run_dir], run_dir.parent / "cmp", ("kd",), plots=False))
    assert "task:tiny_mc score" in table and f"{again['student']['tiny_mc']['value']:.4f}" in table
    # other task settings are another signature: the teacher is evaluated again, on that task only
    calls.clear()
    assert main([*argv[:4], "tiny_mc", *argv[5:], "--limit", "5"]) == 0
    assert [c[0] for c in calls] == ["student", "teacher", "student_init"]
    assert _eval_json(run_dir)["tasks"]["teacher"]["tiny_mc"]["n"] == 5
    # re-evaluating the text sets alone keeps the task results
    assert main(["-q", "eval", str(run_dir), "eval.tasks=[]"]) == 0
    assert _eval_json(run_dir)["tasks"]["student"]["tiny_mc"]["n"] == 5 and "eval" in _eval_json(run_dir)


def test_missing_lm_eval_is_one_line_with_the_install_command(tmp_path, monkeypatch, capsys):
    from ekd.eval.tasks import require_lm_eval

    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval → ImportError
    with pytest.raises(EkdError, match=r"pip install 'ekd\[eval\]'"):
        require_lm_eval()
    run_dir = tmp_path / "r"
    (run_dir / "student").mkdir(parents=True)
    (run_dir / "student" / "config.json").write_text("{}")
    (run_dir / "config.yaml").write_text("run: {name: r}\n")
    assert main(["eval", str(run_dir), "--tasks", "arc_easy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "pip install 'ekd[eval]'" in err[0]


HUB_DATASET = "someorg/no-such-dataset"


def _hub_task(tasks_dir, name: str = "hub_mc", dataset: str = HUB_DATASET) -> None:
    """A task whose dataset is a hub id (as arc_easy's is ``allenai/ai2_arc``), in a private datasets cache."""
    tasks_dir.mkdir(exist_ok=True)
    (tasks_dir / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: {dataset}\ndataset_kwargs:\n  cache_dir: {tasks_dir / 'hf-cache'}\n"
        "test_split: test\n" + MC_YAML
    )


@pytest.mark.parametrize("user_offline", [False, True], ids=["no-network", "HF_HUB_OFFLINE"])
def test_a_hub_task_dataset_without_network_is_one_line(hub_unreachable, monkeypatch, tmp_path, user_offline):
    """No network: one probe of the hub (a closed port here), then one line naming the task, the dataset and
    the fixes — not 30 s of retries and a ConnectionError traceback; likewise under the user's own
    HF_HUB_OFFLINE=1, where ``datasets`` fails at once but with a traceback (try-out 4, finding 5)."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import time

    import datasets.config

    from ekd.data import train_bpe_tokenizer
    from ekd.eval.tasks import TaskSettings, run_tasks
    from ekd.models.load import build_preset

    tok = train_bpe_tokenizer([" ".join(WORDS)] * 4, 280, None)
    model = build_preset("llama-micro", len(tok), tok.eos_token_id)
    _hub_task(tmp_path / "tasks")
    if user_offline:  # as set before the process started: datasets read it at import
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    start = time.perf_counter()
    with pytest.raises(EkdError) as e:
        run_tasks(model, tok, TaskSettings(tasks=("hub_mc",), tasks_dir=str(tmp_path / "tasks")))
    message = str(e.value)
    assert "\n" not in message and f"task 'hub_mc' reads the dataset '{HUB_DATASET}'" in message, message
    assert "not in the datasets cache" in message and "--tasks-dir" in message, message
    assert ("offline mode is set" if user_offline else "127.0.0.1 cannot be reached") in message, message
    assert time.perf_counter() - start < 30  # the libraries' retries alone took 30 s


def test_every_task_whose_dataset_is_missing_is_named_at_once(hub_unreachable, monkeypatch, tmp_path):
    """--tasks a,b without network: the one line names both missing datasets, so one fetch fixes the run (it
    named the first only, and the user found the second on the next try: try-out 5, finding 6)."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import datasets.config

    from ekd.data import train_bpe_tokenizer
    from ekd.eval.tasks import TaskSettings, run_tasks
    from ekd.models.load import build_preset

    tok = train_bpe_tokenizer([" ".join(WORDS)] * 4, 280, None)
    model = build_preset("llama-micro", len(tok), tok.eos_token_id)
    _hub_task(tmp_path / "tasks")
    _hub_task(tmp_path / "tasks", "hub_mc2", "someorg/another-dataset")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    with pytest.raises(EkdError) as e:
        run_tasks(model, tok, TaskSettings(tasks=("hub_mc", "hub_mc2"), tasks_dir=str(tmp_path / "tasks")))
    message = str(e.value)
    assert "\n" not in message, message
    assert (
        f"task 'hub_mc' reads the dataset '{HUB_DATASET}', 'hub_mc2' reads 'someorg/another-dataset'"
        in message
    )
    assert "which are not in the datasets cache" in message and "fetch them once" in message, message


def test_a_missing_hub_dataset_is_refused_before_any_task_runs(hub_unreachable, monkeypatch, tmp_path):
    """--tasks local,hub without network: the hub task's missing dataset (also one a group reaches) is named
    before the local task is built or evaluated (the local task ran in full, then the hub one failed)."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import lm_eval.evaluator
    from lm_eval.api.task import ConfigurableTask

    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    _hub_task(tasks_dir)
    _hub_task(tasks_dir, "hub_mc2", "someorg/another-dataset")
    (tasks_dir / "hub_group.yaml").write_text("group: hub_group\ntask:\n  - tiny_gen\n  - hub_mc2\n")
    ran = []
    monkeypatch.setattr(lm_eval.evaluator, "evaluate", lambda **kw: ran.append("evaluate"))
    real_init = ConfigurableTask.__init__
    monkeypatch.setattr(
        ConfigurableTask, "__init__", lambda *a, **kw: ran.append("build") or real_init(*a, **kw)
    )
    tasks = ("tiny_mc", "hub_mc", "hub_group")
    with pytest.raises(EkdError) as e:
        run_tasks(model, tok, TaskSettings(tasks=tasks, tasks_dir=str(tasks_dir), progress=False))
    message = str(e.value)
    assert "\n" not in message, message
    expected = f"task 'hub_mc' reads the dataset '{HUB_DATASET}', 'hub_group' reads 'someorg/another-dataset'"
    assert expected in message and "127.0.0.1 cannot be reached" in message, message
    assert ran == []  # no task built, none evaluated


def test_distill_refuses_a_missing_hub_task_dataset_before_training(hub_unreachable, tmp_path, capsys):
    """eval.tasks runs after training: its missing hub dataset is one line before the first step, not after."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from hostile import one_error_line

    _hub_task(tmp_path / "tasks")
    cfg = config_file(tmp_path, write_corpus(tmp_path / "corpus"), "hub")
    rc = main(["distill", cfg, "eval.tasks=[hub_mc]", f"eval.tasks_dir={tmp_path / 'tasks'}"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert f"task 'hub_mc' reads the dataset '{HUB_DATASET}'" in line, line
    assert not (tmp_path / "runs" / "hub" / "metrics.jsonl").exists()  # no step was trained


def test_the_availability_probe_changes_no_result(monkeypatch, tmp_path):
    """The probe reads task configs and asks ``datasets`` for each hub dataset's builder: it builds no lm-eval
    task and draws no random number, so --tasks a,b scores exactly as without it. Here the probe is made to
    treat both local tasks as hub datasets (so it runs for them) and the results match a run without it."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import numpy as np

    from ekd.eval import tasks as tasks_mod
    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    settings = TaskSettings(tasks=("tiny_mc", "tiny_gen"), tasks_dir=str(tasks_dir), max_new_tokens=2)
    plain = run_tasks(model, tok, settings)

    probed = []
    real_not_cached = tasks_mod._not_cached
    monkeypatch.setattr(tasks_mod, "_reads_the_hub", lambda manager, tasks: True)
    monkeypatch.setattr(tasks_mod, "offline_unless_reachable", lambda key: "offline for the test")
    monkeypatch.setattr(tasks_mod, "_hub_dataset", lambda cfg: (cfg["dataset_path"], ""))
    monkeypatch.setattr(tasks_mod, "_not_cached", lambda *a: probed.append(a[0]) or real_not_cached(*a))
    states = random.getstate(), np.random.get_state()[1].copy(), torch.get_rng_state()
    manager = tasks_mod.task_manager(settings.tasks, settings.tasks_dir)
    assert tasks_mod.missing_hub_datasets(manager, settings.tasks) == []
    assert random.getstate() == states[0] and (np.random.get_state()[1] == states[1]).all()
    assert torch.equal(torch.get_rng_state(), states[2])
    with_probe = run_tasks(model, tok, settings)
    assert probed == ["json", "json", "json", "json"]  # both tasks probed, in both calls
    for task in settings.tasks:
        assert {k: v for k, v in with_probe[task].items() if k != "wall_s"} == {
            k: v for k, v in plain[task].items() if k != "wall_s"
        }


@pytest.mark.slow
def test_ekd_eval_of_a_hub_task_without_network_keeps_eval_json(run, hub_unreachable, tmp_path, capsys):
    from hostile import one_error_line

    run_dir, _ = run
    _hub_task(tmp_path / "tasks")
    before = (run_dir / "eval.json").read_bytes()
    capsys.readouterr()
    rc = main(["-q", "eval", str(run_dir), "--tasks", "hub_mc", "--tasks-dir", str(tmp_path / "tasks")])
    line = one_error_line(rc, capsys.readouterr().err)
    assert f"'{HUB_DATASET}'" in line and "docs/evaluation.md" in line, line
    assert (run_dir / "eval.json").read_bytes() == before


def test_bad_task_settings_fail_at_config_time():
    from ekd.config import load_config
    from ekd.errors import ConfigError

    with pytest.raises(ConfigError, match="eval.set_tags.x must be one of"):
        load_config([], ["eval.set_tags={x: nope}"])
    with pytest.raises(ConfigError, match="eval.tasks_num_fewshot"):
        load_config([], ["eval.tasks=[arc_easy]", "eval.tasks_num_fewshot=-2"])


def test_a_tag_that_names_no_set_or_task_is_refused(tmp_path):
    """Try-out 70, F3: `eval.set_tags={od: shift}` beside the set `ood` was dropped without a word, and `ood`
    averaged into the in-distribution mean; a task's typo likewise (checked against lm-eval's index, whose
    groups' subtasks a tag may name)."""
    from ekd.config import load_config
    from ekd.errors import ConfigError
    from ekd.eval.tasks import check_tag_names

    (tmp_path / "a.txt").write_text("a document")
    own = [f"data.source={tmp_path}", f"data.eval_sources={{ood: {tmp_path}}}"]
    assert load_config([], [*own, "eval.set_tags={ood: shift, eval: in_distribution}"])
    with pytest.raises(ConfigError) as e:
        load_config([], [*own, "eval.set_tags={od: shift}"])
    assert str(e.value) == (
        "eval.set_tags.od names no eval set or task of the run (eval sets: eval, ood; tasks: none): fix the name or "
        "drop the entry; did you mean 'ood'?"
    )
    # the builtin corpus's own shift sets (try-out 72, F1: refused, though docs/evaluation.md tags them)
    builtin = "eval.set_tags={shift_tests: diversity_shift, shift_docstrings: correlation_shift}"
    assert load_config([], ["data.source=pystdlib", builtin])
    with pytest.raises(ConfigError, match="eval.set_tags.shift_tests names no eval set"):
        load_config([], [*own, builtin])
    cfg = load_config([], ["eval.tasks=[my_mc, my_mc2]", "eval.set_tags={my_mc_2: shift}"])  # checked later
    with pytest.raises(ConfigError, match=r"eval.set_tags.my_mc_2 names no eval set or task .* 'my_mc2'"):
        check_tag_names(cfg, ["my_mc", "my_mc2"])
    check_tag_names(
        load_config([], ["eval.tasks=[mmlu]", "eval.set_tags={mmlu_anatomy: shift}"]), ["mmlu_anatomy"]
    )


def test_a_saved_tag_the_overrides_leave_without_its_set_says_whose_it_is(tmp_path):
    """Try-out 72, F4: `ekd eval RUN 'data.eval_sources={}'` of a run whose saved config tags its set `held` was
    told to "fix the name or drop the entry" — an entry the user never typed: the line names the saved config and
    the override that drops it too."""
    import yaml

    from ekd.config import load_config
    from ekd.errors import ConfigError
    from ekd.train.evaluation import load_run_config

    (tmp_path / "a.txt").write_text("a document")
    saved = [
        f"data.source={tmp_path}",
        f"data.eval_sources={{held: {tmp_path}}}",
        "eval.set_tags={held: shift}",
    ]
    run = tmp_path / "run"
    (run / "student").mkdir(parents=True)
    (run / "student" / "config.json").write_text("{}")
    (run / "config.yaml").write_text(yaml.safe_dump(load_config([], saved).to_dict()))
    with pytest.raises(ConfigError) as e:
        load_run_config(run, ["data.eval_sources={}"])
    assert str(e.value).startswith("eval.set_tags.held names no eval set or task of the run")
    assert str(e.value).endswith(
        f"(eval.set_tags is the run's saved value, from {run / 'config.yaml'}: override it too, e.g. "
        "'eval.set_tags={}')"
    ), e.value
    assert load_run_config(run, ["data.eval_sources={}", "eval.set_tags={}"]).eval.set_tags == {}


def test_task_metric_helpers():
    results = {"exact_match,strict-match": 0.25, "exact_match,flexible-extract": 0.5, "alias": "gsm8k"}
    assert tm.primary_metric(results) == ("exact_match", "strict-match", 0.25)
    assert tm.primary_metric({"perplexity,none": 9.0, "acc,none": 0.4})[:2] == ("acc", "none")
    bins = tm.reliability_bins([1 / 15, 0.5, 1.0], [True, False, True], 15)
    assert [b[2] for b in bins].count(1) == 3 and bins[0][2] == 1  # 1/15 falls in (0, 1/15]
    assert math.isnan(tm.ece_percent(bins))  # 3 documents < 10: no estimate
    assert tm.ece_percent(tm.reliability_bins([0.9] * 10, [True] * 9 + [False], 15)) == pytest.approx(0.0)
    # review 128, S7: a confidence that is not finite (a NaN student) was a ValueError traceback in math.ceil
    nan_student = tm.reliability_bins([math.nan] + [0.9] * 11, [True] * 12, 15)
    assert sum(b[2] for b in nan_student) == 0 and math.isnan(tm.ece_percent(nan_student))
    means = tm.macro_means({"a": 0.5, "b": 0.7, "shift_c": 0.1}, {"b": "shift"})
    assert means == pytest.approx({"in_distribution": 0.5, "shift": 0.4})
    assert tm.gap_closed(0.6, 0.8, 0.4) == pytest.approx(0.5)
    assert math.isnan(tm.gap_closed(0.6, 0.4, 0.4))


def _task_results(values: dict[str, float], n: int) -> dict:
    return {
        t: {"value": v, "ece": math.nan, "n": n, "metric": "acc", "wall_s": 0.1} for t, v in values.items()
    }


def test_gap_closed_is_na_when_the_teacher_init_gap_is_within_noise():
    """(student − init)/(teacher − init) over a one-item gap is a ratio of noise: n/a, never −2.00 / 1.00."""
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section, tasks_markdown

    # 60 items: 2 SE of a difference of two accuracies near 0.5 is ≈ 0.18 (11 items); a gap of 1 item is noise
    assert tm.gap_noise(0.5, 0.5, 60) == pytest.approx(2 * math.sqrt(0.5 / 60))
    assert tm.gap_within_noise(31 / 60, 30 / 60, tm.gap_noise(31 / 60, 30 / 60, 60))
    assert not tm.gap_within_noise(0.9, 0.3, tm.gap_noise(0.9, 0.3, 60))  # 36 items: resolved
    assert tm.gap_noise(1.0, 1.0, 60) == pytest.approx(3 / 60)  # no variance: the item floor still holds
    assert tm.gap_within_noise(1.0, 58 / 60, tm.gap_noise(1.0, 58 / 60, 60))  # 2 items: under the floor
    assert not tm.gap_within_noise(12.0, 3.0, tm.gap_noise(12.0, 3.0, 60))  # not a proportion: no judgement
    settings = TaskSettings(tasks=("mc", "gen"))
    section = task_section(
        {
            "student": _task_results({"mc": 28 / 60, "gen": 0.5}, 60),
            "teacher": _task_results({"mc": 31 / 60, "gen": 0.9}, 60),
            "student_init": _task_results({"mc": 30 / 60, "gen": 0.3}, 60),
        },
        settings,
        {},
    )
    assert section["gap_within_noise"] == ["mc"] and section["gap_closed"]["mc"] is None
    assert section["gap_closed"]["gen"] == pytest.approx((0.5 - 0.3) / (0.9 - 0.3))
    # the mean over both tasks: a gap of 0.2083 against √(noise_mc² + noise_gen²)/2 ≈ 0.13 is resolved
    assert section["summary"]["gap_within_noise"] == []
    table = tasks_markdown(section)
    assert "| n/a (gap within noise) |" in table and "| 0.333 |" in table and "-2.000" not in table
    one_item = task_section(
        {
            "student": _task_results({"mc": 28 / 60}, 60),
            "teacher": _task_results({"mc": 31 / 60}, 60),
            "student_init": _task_results({"mc": 30 / 60}, 60),
        },
        settings,
        {},
    )
    assert one_item["summary"]["gap_within_noise"] == ["in_distribution"]
    assert one_item["summary"]["gap_closed"]["in_distribution"] is None
    assert tasks_markdown(one_item).count(f"| {tm.GAP_WITHIN_NOISE} |") == 2  # the task row and its mean


@pytest.mark.parametrize("budget, expected", [(0, 4), (12, 12)])
def test_a_tasks_own_generation_budget_is_kept_unless_one_is_set(budget, expected):
    """``eval.tasks_max_new_tokens=0`` (the default) keeps a task's own ``max_gen_toks`` (a short-answer task
    used to decode 256 tokens per document); a set budget overrides it. Decoding is greedy either way."""
    from ekd.eval.tasks import TaskSettings, _configure

    class Task:  # the part of lm-eval's Task that _configure touches
        def __init__(self):
            self.config = {"output_type": "generate_until", "num_fewshot": 0}
            self.config["generation_kwargs"] = {"until": ["\n"], "max_gen_toks": 4, "do_sample": True}

        def get_config(self, key):
            return self.config.get(key)

        def set_config(self, key, value, update=False):
            self.config[key] = {**self.config[key], **value} if update else value

        def set_fewshot_seed(self, seed):
            pass

    task = Task()
    _configure(task, TaskSettings(tasks=("t",), max_new_tokens=budget))
    kwargs = task.config["generation_kwargs"]
    assert kwargs["max_gen_toks"] == expected and kwargs["do_sample"] is False and kwargs["until"] == ["\n"]


@pytest.fixture(scope="module")
def finished_template(tmp_path_factory):
    """A finished tiny run without eval.tasks (``runs/base`` in a workspace, see ``hostile.make_workspace``)."""
    from hostile import make_workspace

    return make_workspace(tmp_path_factory.mktemp("eval-tasks"), "base", {"train.max_steps": 2})


@pytest.mark.parametrize("task", ["unknown", "hub-offline", "saved"])
def test_ekd_eval_checks_eval_tasks_before_evaluating_or_writing(
    finished_template, tmp_path, monkeypatch, capsys, request, task
):
    """Try-out 8, bug 5: ``ekd eval RUN eval.tasks=a`` (the form the finished-run refusal suggests) evaluated
    the eval sets and rewrote eval.json, and only then refused the task name. The tasks are checked first,
    whether named in an override or in the run's saved config, as ``--tasks`` and ``ekd distill`` do."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.train import evaluation
    from hostile import copy_workspace, one_error_line, snapshot, unchanged

    ws = copy_workspace(finished_template, tmp_path, monkeypatch)
    run = ws / "runs" / "base"
    overrides = {
        "unknown": ["eval.tasks=no_such_task"],
        "hub-offline": ["eval.tasks=hub_mc", f"eval.tasks_dir={ws / 'tasks'}"],
        "saved": [],
    }[task]
    if task == "hub-offline":  # no network, the task's hub dataset not cached
        request.getfixturevalue("hub_unreachable")
        _hub_task(ws / "tasks")
    if task == "saved":  # eval.tasks set in the run's own config.yaml
        text = (run / "config.yaml").read_text()
        (run / "config.yaml").write_text(text.replace("  tasks: []\n", "  tasks:\n  - no_such_task\n", 1))
    evaluated = []
    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: evaluated.append(a))
    before, mtime = snapshot(ws), (run / "eval.json").stat().st_mtime_ns
    rc = main(["eval", str(run), *overrides])
    line = one_error_line(rc, capsys.readouterr().err)
    named = "hub_mc" if task == "hub-offline" else "no_such_task"
    assert f"'{named}'" in line or f"unknown task(s) {named}" in line, line
    assert evaluated == []  # no eval set evaluated
    unchanged(before, ws)
    assert (run / "eval.json").stat().st_mtime_ns == mtime  # not rewritten (with the same numbers)
    # try-out 9: a bad name in the run's own config.yaml is said to come from there, with the override past it
    saved = (
        f"these tasks come from the run's saved config {run / 'config.yaml'} (eval.tasks: [no_such_task]): "
    )
    assert (saved in line) == (task == "saved"), line
    if task == "saved":
        assert f"`ekd eval {run} 'eval.tasks=[]'` evaluates without them" in line, line
        from ekd.train.task_evaluation import check_saved_tasks

        check_saved_tasks(run, ["eval.tasks=[]"])  # the command given gets past the check


@pytest.mark.slow
def test_ekd_eval_of_other_tasks_keeps_the_earlier_ones_scored_alike(run, tmp_path, caplog):
    """``ekd eval RUN --tasks b`` after ``a`` replaced the whole tasks section of eval.json (a's results lost, as
    the eval sets' were: h32). Tasks scored with the same settings are kept beside the new ones, the summary
    covers both; tasks scored with other settings are dropped, with a warning that says so."""
    import logging
    import shutil

    run_dir, tasks_dir = tmp_path / "runs" / "t", run[1]
    shutil.copytree(run[0], run_dir)
    quick = ["eval.tasks_teacher=false", "eval.tasks_student_init=false"]  # the student's role is the case
    argv = ["-q", "eval", str(run_dir), *quick, "--tasks-dir", str(tasks_dir), "--tasks"]
    assert main([*argv, "tiny_mc"]) == 0
    mc = _eval_json(run_dir)["tasks"]["student"]["tiny_mc"]
    assert main([*argv, "tiny_gen"]) == 0
    tasks = _eval_json(run_dir)["tasks"]
    assert tasks["settings"]["tasks"] == ["tiny_mc", "tiny_gen"]
    assert tasks["student"]["tiny_mc"] == mc and "tiny_gen" in tasks["student"]
    assert set(tasks["tags"]) == {"tiny_mc", "tiny_gen"} and "teacher" not in tasks
    # try-out 38: a task scored from another --tasks-dir dropped the others; each result records its task by
    # content, so where a directory lies is no setting
    other_dir = tmp_path / "other_tasks"
    shutil.copytree(tasks_dir, other_dir)
    assert main([*argv[:-3], "--tasks-dir", str(other_dir), "--tasks", "tiny_gen"]) == 0
    tasks = _eval_json(run_dir)["tasks"]
    assert tasks["student"]["tiny_mc"] == mc and tasks["settings"]["tasks"] == ["tiny_mc", "tiny_gen"]
    # review 106: an eval.json of an ekd that recorded no autocast keeps its tasks too (it pairs with either); a
    # setting added since is read at its default (review of session 31: it dropped them as other settings)
    written = _eval_json(run_dir)
    assert written["tasks"]["settings"].pop("precision") == "fp32"
    assert written["tasks"]["settings"].pop("num_fewshot") == -1
    (run_dir / "eval.json").write_text(json.dumps(written))
    assert main([*argv, "tiny_gen"]) == 0
    assert _eval_json(run_dir)["tasks"]["student"]["tiny_mc"] == mc
    with caplog.at_level(logging.INFO, logger="ekd.train.task_evaluation"):
        assert main([*argv, "tiny_gen", "--limit", "3"]) == 0
    tasks = _eval_json(run_dir)["tasks"]
    assert tasks["settings"]["tasks"] == ["tiny_gen"] and "tiny_mc" not in tasks["student"]
    assert (
        "earlier task results of tiny_mc were scored with other settings (limit): dropped, not rescored"
        in caplog.text
    )
    # try-out 79, F5: a new generation budget dropped the multiple-choice results it cannot change; the earlier
    # generation task's go (scored with another budget), the multiple-choice task's stay
    assert main([*argv, "tiny_mc,tiny_gen"]) == 0
    mc = _eval_json(run_dir)["tasks"]["student"]["tiny_mc"]
    rng = random.Random(5)
    rows = [{"question": " ".join(rng.sample(WORDS, 4)), "answer": rng.choice(WORDS)} for _ in range(3)]
    _write_task(other_dir, "tiny_gen2", rows, GEN_YAML)
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="ekd.train.task_evaluation"):
        budget = [*argv[:-3], "--tasks-dir", str(other_dir), "eval.tasks_max_new_tokens=3", "--tasks"]
        assert main([*budget, "tiny_gen2"]) == 0
    tasks = _eval_json(run_dir)["tasks"]
    assert tasks["student"]["tiny_mc"] == mc and "tiny_gen" not in tasks["student"]
    assert tasks["settings"]["tasks"] == ["tiny_mc", "tiny_gen2"]
    assert (
        "earlier task results of tiny_gen were scored with other settings (max_new_tokens): dropped"
        in caplog.text
    )
    caplog.clear()  # only multiple-choice results earlier: kept, and no warning of an empty list dropped
    with caplog.at_level(logging.INFO, logger="ekd.train.task_evaluation"):
        assert main([*budget[:-2], "eval.tasks_max_new_tokens=4", "--tasks", "tiny_gen2"]) == 0
    assert _eval_json(run_dir)["tasks"]["student"]["tiny_mc"] == mc and "dropped" not in caplog.text


def test_compare_keeps_seeds_scored_with_other_task_settings_apart(run, tmp_path):
    """End to end: two seeds of one config, one scored with ``--limit 5`` — ``ekd compare`` gives the task one
    column per way, its mean over the seeds scored alike, and says how the ways differ; eval.json records the
    tasks directory by content, so the same files copied elsewhere score the same way."""
    import shutil

    from ekd.eval.compare import compare_runs

    tasks_copy = tmp_path / "copied_tasks"
    shutil.copytree(run[1], tasks_copy)
    runs = []
    for seed in (0, 1):
        run_dir = tmp_path / "runs" / f"t{seed}"
        shutil.copytree(run[0], run_dir)
        cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
        cfg["run"]["seed"], cfg["run"]["name"] = seed, f"t{seed}"
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg))
        runs.append(run_dir)
    quick = ["eval.tasks_teacher=false", "eval.tasks_student_init=false"]
    assert (
        main(["-q", "eval", str(runs[0]), *quick, "--tasks", "tiny_mc", "--tasks-dir", str(tasks_copy)]) == 0
    )
    tasks = _eval_json(runs[0])["tasks"]
    assert tasks["settings"]["tasks_dir"] == str(tasks_copy) and "tasks_dir_hash" not in tasks["settings"]
    assert len(tasks["student"]["tiny_mc"]["documents_sha256"]) == 16  # the task by content
    argv = ["-q", "eval", str(runs[1]), *quick, "--tasks", "tiny_mc", "--tasks-dir", str(run[1])]
    assert main([*argv, "--limit", "5"]) == 0
    s = compare_runs(runs, tmp_path / "cmp", ("kd",), plots=False)
    (group,) = s["groups"]
    full, five = (_eval_json(r)["tasks"]["student"]["tiny_mc"] for r in runs)
    assert five["n"] == 5 and full["n"] == 20
    assert group["metrics"]["task:tiny_mc/score"] == {
        "mean": full["value"],
        "std": pytest.approx(math.nan, nan_ok=True),
        "n": 1,
    }
    assert group["metrics"]["task:tiny_mc#2/score"]["mean"] == five["value"]
    assert "eval.tasks_limit=5 (vs 0), 5 documents (vs 20)" in s["eval_sets"]
    # scored alike (the same files at the other path, no limit): one column, two seeds
    assert main(argv) == 0
    s = compare_runs(runs, tmp_path / "cmp", ("kd",), plots=False)
    assert (
        s["groups"][0]["metrics"]["task:tiny_mc/score"]["n"] == 2 and "`task:tiny_mc`" not in s["eval_sets"]
    )
    # seed 0 kept its tiny_gen (scored alike at distill: another --tasks-dir is no setting), seed 1's went with
    # the --limit 5 scoring: their tag means are over other tasks, told apart
    assert "a mean over other tasks (tiny_mc vs tiny_gen, tiny_mc)" in s["eval_sets"], s["eval_sets"]
    # try-out 55, F10: other ECE bins are no other way of scoring the task — its score pairs, its MC-ECE alone is
    # over the seeds scored with one number of bins
    assert main([*argv, "eval.ece_bins=4"]) == 0
    s = compare_runs(runs, tmp_path / "cmp", ("kd",), plots=False)
    metrics = s["groups"][0]["metrics"]
    assert metrics["task:tiny_mc/score"]["n"] == 2 and "task:tiny_mc#2/score" not in metrics
    ece = metrics["task:tiny_mc/ece"]
    assert (ece["n"], ece["setting"], ece["other_setting"]) == (1, "eval.ece_bins=15", {1: "eval.ece_bins=4"})
    assert ece["mean"] == _eval_json(runs[0])["tasks"]["student"]["tiny_mc"]["ece"]


# --- a task's identity, bad task data, the cache across seeds (try-out 34) ------------------------------------


def _external_task(tasks_dir, data_dir, name: str, rows: list[dict], body: str = MC_YAML) -> None:
    """A task YAML in ``tasks_dir`` reading its JSONL from ``data_dir`` (docs/evaluation.md's own layout)."""
    data_dir.mkdir(exist_ok=True)
    (data_dir / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tasks_dir / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: json\ndataset_kwargs:\n  data_files:\n    test: {data_dir / name}.jsonl\n"
        f"  cache_dir: {data_dir / 'hf-cache'}\ntest_split: test\n" + body
    )


def _csv_task(tasks_dir, name: str, rows: list[dict]) -> None:
    """A generation task whose data is a CSV file inside ``tasks_dir`` (not one of the old hash's suffixes)."""
    lines = ["question,answer"] + [f"{r['question']},{r['answer']}" for r in rows]
    (tasks_dir / f"{name}.csv").write_text("\n".join(lines) + "\n")
    (tasks_dir / f"{name}.yaml").write_text(
        f"task: {name}\ndataset_path: csv\ndataset_kwargs:\n  data_files:\n    test: {tasks_dir / name}.csv\n"
        f"  cache_dir: {tasks_dir / 'hf-cache'}\ntest_split: test\n" + GEN_YAML
    )


def _gen_rows(seed: int, n: int = 3) -> list[dict]:
    rng = random.Random(seed)
    return [{"question": " ".join(rng.sample(WORDS, 4)), "answer": rng.choice(WORDS)} for _ in range(n)]


def test_a_tasks_identity_is_its_documents_and_config_wherever_they_lie(tmp_path):
    """Try-out 34, findings 1 and 6: the identity hashed only the .yaml/.json/.jsonl/.py files inside the tasks
    directory, so an edit of a JSONL outside it, or of a CSV inside it, went unseen (and any edit moved every
    task of the directory). Now each task is its config and documents as lm-eval loads them: an edit of one
    task's data moves that task alone, wherever the file lies and whatever its format; the same files copied
    elsewhere are the same tasks."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import shutil

    from ekd.eval.tasks import TaskSettings, task_identities

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _external_task(tasks_dir, tmp_path / "data", "ext_mc", _mc_rows())
    _csv_task(tasks_dir, "csv_gen", _gen_rows(1))
    settings = TaskSettings(tasks=("ext_mc", "csv_gen"), tasks_dir=str(tasks_dir))

    def ids(s=settings):
        return {t: task_identities(s, t)[t].sha256 for t in s.tasks}

    before = ids()
    edited = _mc_rows()
    edited[3]["answer"] = (edited[3]["answer"] + 1) % 3
    (tmp_path / "data" / "ext_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edited))
    after_mc = ids()
    assert after_mc["ext_mc"] != before["ext_mc"] and after_mc["csv_gen"] == before["csv_gen"]
    rows = _gen_rows(1)
    rows[0]["answer"] = "changed"
    _csv_task(tasks_dir, "csv_gen", rows)
    after_csv = ids()
    assert after_csv["csv_gen"] != after_mc["csv_gen"] and after_csv["ext_mc"] == after_mc["ext_mc"]
    copy = tmp_path / "elsewhere"
    shutil.copytree(tasks_dir, copy)
    assert ids(TaskSettings(tasks=settings.tasks, tasks_dir=str(copy))) == after_csv
    # the signature carries it, and the seed only where few-shot examples are drawn
    leaves = task_identities(settings, "ext_mc")
    sig = settings.signature("ext_mc", leaves)
    assert sig["documents_sha256"] == {"ext_mc": after_csv["ext_mc"]} and "tasks_dir_hash" not in sig
    assert "seed" not in sig
    shots = TaskSettings(tasks=settings.tasks, tasks_dir=str(tasks_dir), num_fewshot=2, seed=3)
    shot_leaves = task_identities(shots, "ext_mc")
    assert shot_leaves["ext_mc"].num_fewshot == 2 and shots.signature("ext_mc", shot_leaves)["seed"] == 3


def _scores(results: dict) -> dict:
    """task → (value, n, documents_sha256): what a cached result must give back (NaNs come back as null)."""
    return {t: (r["value"], r["n"], r["documents_sha256"]) for t, r in results.items()}


def _teacher_cache_calls(monkeypatch):
    """Spy on run_tasks in the teacher cache: the task tuples it computes, in order."""
    from ekd.train import task_evaluation

    calls = []
    real = task_evaluation.run_tasks

    def spy(model, tokenizer, settings, **kw):
        calls.append(settings.tasks)
        return real(model, tokenizer, settings, **kw)

    monkeypatch.setattr(task_evaluation, "run_tasks", spy)
    return calls


def test_the_teacher_cache_sees_data_edited_outside_the_tasks_dir(tmp_path, monkeypatch):
    """Try-out 34, finding 1: after an edit of a task's JSONL outside --tasks-dir, the teacher's (and the initial
    student's) cached results of the old data were reused (gap closed flipped sign). They are computed again,
    for the edited task only, and recorded with the data they were scored on."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import cached_tasks

    model, tok, _ = _tiny_model_and_tasks(tmp_path)
    tasks_dir = tmp_path / "ext_tasks"
    tasks_dir.mkdir()
    _external_task(tasks_dir, tmp_path / "data", "ext_mc", _mc_rows())
    _external_task(tasks_dir, tmp_path / "data", "ext_gen", _gen_rows(1), GEN_YAML)
    settings = TaskSettings(tasks=("ext_mc", "ext_gen"), tasks_dir=str(tasks_dir), max_new_tokens=2)
    calls = _teacher_cache_calls(monkeypatch)
    first = cached_tasks(tmp_path / "cache", "teacher", "t#1", settings, lambda: (model, tok))
    assert _scores(cached_tasks(tmp_path / "cache", "teacher", "t#1", settings, lambda: (model, tok))) == (
        _scores(first)
    )
    assert calls == [("ext_mc", "ext_gen")]  # the second call reused both
    edited = _mc_rows()
    for row in edited[:10]:
        row["answer"] = (row["answer"] + 1) % 3
    (tmp_path / "data" / "ext_mc.jsonl").write_text("".join(json.dumps(r) + "\n" for r in edited))
    again = cached_tasks(tmp_path / "cache", "teacher", "t#1", settings, lambda: (model, tok))
    assert calls[1:] == [("ext_mc",)]  # the edited task alone
    assert _scores(again)["ext_gen"] == _scores(first)["ext_gen"]
    assert again["ext_mc"]["documents_sha256"] != first["ext_mc"]["documents_sha256"]


def test_the_teacher_cache_is_shared_across_seeds_unless_few_shot_examples_are_drawn(tmp_path, monkeypatch):
    """Try-out 34, finding 5: the seed was in every signature and the cache file kept one entry per task, so
    each seed of a sweep recomputed the teacher (zero-shot: the same numbers) and overwrote the last seed's. The
    seed counts only where few-shot examples are drawn, and the file keeps one entry per signature; an entry of
    an older ekd is not matched, and is no error."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from dataclasses import replace

    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import cached_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    cache = tmp_path / "cache"
    cache.mkdir()
    old = {"signature": {"task": "tiny_mc", "seed": 0, "tasks_dir_hash": "aa"}, "results": {"tiny_mc": {}}}
    (cache / "teacher.json").write_text(json.dumps({"model": "t#1", "tasks": {"tiny_mc": old}}))
    calls = _teacher_cache_calls(monkeypatch)
    zero = TaskSettings(tasks=("tiny_mc",), tasks_dir=str(tasks_dir), seed=0)

    def teacher(settings):
        return cached_tasks(cache, "teacher", "t#1", settings, lambda: (model, tok))

    first = teacher(zero)
    assert _scores(teacher(replace(zero, seed=1))) == _scores(first) and calls == [
        ("tiny_mc",)
    ]  # zero-shot: any seed
    shots = replace(zero, num_fewshot=2)
    teacher(shots)
    teacher(replace(shots, seed=1))
    assert len(calls) == 3  # each few-shot seed once
    teacher(shots)  # seed 0 again, after seed 1: still cached
    teacher(replace(zero, seed=7))
    assert len(calls) == 3
    saved = json.loads((cache / "teacher.json").read_text())["tasks"]["tiny_mc"]
    assert len(saved) == 3 and sum("seed" in e["signature"] for e in saved) == 2
    teacher(replace(zero, precision="bf16"))  # try-out 45, F2: a bf16 forward's results are its own
    assert len(calls) == 4


def _bad_tasks(tmp_path, case: str):
    """A tasks dir whose tiny_mc has one bad row (``case``), and a good tiny_gen."""
    tasks_dir = tmp_path / "bad_tasks"
    tasks_dir.mkdir()
    rows = _mc_rows()
    _write_task(tasks_dir, "tiny_mc", rows, MC_YAML)
    _write_task(tasks_dir, "tiny_gen", _gen_rows(1), GEN_YAML)
    data = tasks_dir / "tiny_mc.jsonl"
    lines = data.read_text().splitlines()
    if case == "truncated":
        lines[10] = lines[10][:25]
    elif case == "no-answer":
        del rows[6]["answer"]
        lines[6] = json.dumps(rows[6])
    elif case == "answer-out-of-range":
        rows[4]["answer"] = 7
        lines[4] = json.dumps(rows[4])
    elif case in (
        "float-answer",
        "float-answer-template",
        "float-answer-and-bad-text",
    ):  # try-out 39, F2: the column reads as floats
        rows[3]["answer"] = float(rows[3]["answer"])
        lines[3] = json.dumps(rows[3])
        if case == "float-answer-and-bad-text":  # review 106: the row's own failure is said, not the column
            rows[5]["question"] = 5
            lines[5] = json.dumps(rows[5])
            yaml_path = tasks_dir / "tiny_mc.yaml"
            text = yaml_path.read_text()
            yaml_path.write_text(
                text.replace('doc_to_text: "{{question}}"', 'doc_to_text: "{{question.upper()}}"')
            )
        if case == "float-answer-template":  # try-out 44, F3: rendered '0.0', row 1 was blamed
            yaml_path = tasks_dir / "tiny_mc.yaml"
            text = yaml_path.read_text()
            assert "doc_to_target: answer\n" in text
            yaml_path.write_text(text.replace("doc_to_target: answer\n", 'doc_to_target: "{{answer}}"\n'))
    data.write_text("\n".join(lines) + "\n")
    return tasks_dir, data


BAD_ROW = {
    "truncated": "line 11 is not valid JSON",
    "no-answer": "test split row 7: its field 'answer' is missing or null",
    "answer-out-of-range": "test split row 5: its answer index 7 is outside its 3 choices (0–2)",
    "float-answer": "its answer column 'answer' reads as floats (line 4 holds",  # try-out 44, F4: the row
    "float-answer-template": "its answer column 'answer' reads as floats (line 4 holds",
    "float-answer-and-bad-text": "test split row 6: doc_to_text fails",
}


@pytest.mark.parametrize("case", list(BAD_ROW))
def test_a_bad_task_row_is_one_line_before_anything_runs(tmp_path, case):
    """Try-out 34, findings 3 and 4: a truncated JSONL line was a 99-line DatasetGenerationError traceback, a row
    without its answer a TypeError deep in lm-eval, and an answer index outside the choices was silently counted
    wrong for every model. The check before any task runs loads each local task and builds its rows as lm-eval
    builds its requests: one line naming the task, the file, the row and the fix."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import check_tasks_available

    tasks_dir, data = _bad_tasks(tmp_path, case)
    with pytest.raises(EkdError) as e:
        check_tasks_available(("tiny_gen", "tiny_mc"), str(tasks_dir))
    message = str(e.value)
    assert "\n" not in message and "task 'tiny_mc'" in message and str(data) in message, message
    assert BAD_ROW[case] in message and ("fix" in message), message
    check_tasks_available(("tiny_gen",), str(tasks_dir))  # the good task alone passes


def test_a_csv_task_with_an_empty_answer_cell_names_that_row(tmp_path):
    """Try-out 38, F4: an empty answer cell makes pandas read the whole column as floats, and row 1's answer 3.0
    was blamed ('neither a choice's index nor a choice'). An integral float is the index lm-eval compares it as;
    the empty cell (NaN) is the missing answer, named at its row."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import check_tasks_available

    tasks_dir = tmp_path / "csv_tasks"
    tasks_dir.mkdir()
    rows = ["question,c0,c1,c2,answer"] + [f"q{i},a{i},b{i},c{i},{i % 3}" for i in range(1, 10)]
    rows[7] = "q7,a7,b7,c7,"  # data row 7: no answer
    data = tmp_path / "mc.csv"  # outside the tasks dir
    data.write_text("\n".join(rows) + "\n")
    (tasks_dir / "csv_mc.yaml").write_text(
        f"task: csv_mc\ndataset_path: csv\ndataset_kwargs:\n  data_files:\n    test: {data}\n"
        f"  cache_dir: {tmp_path / 'hf-cache'}\ntest_split: test\noutput_type: multiple_choice\n"
        'doc_to_text: "{{question}}"\ndoc_to_choice: "{{[c0, c1, c2]}}"\ndoc_to_target: answer\n'
        "metric_list:\n  - metric: acc\n"
    )
    with pytest.raises(EkdError, match="test split row 7: its field 'answer' is missing or null"):
        check_tasks_available(("csv_mc",), str(tasks_dir))
    rows[7] = "q7,a7,b7,c7,1"
    data.write_text("\n".join(rows) + "\n")
    check_tasks_available(("csv_mc",), str(tasks_dir))  # float-free again: passes


def test_a_truncated_or_empty_task_file_is_one_line_on_stderr(tmp_path, capfd):
    """Try-out 38, F3 and F14: datasets' own logger added two lines ('Failed to load JSON from file … row 10',
    0-based against ekd's 'line 11'), even with -q; an empty file was 'StopIteration: StopIteration'."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    tasks_dir, data = _bad_tasks(tmp_path, "truncated")
    cfg = config_file(tmp_path, write_corpus(tmp_path / "corpus"), "bad")
    assert main(["distill", cfg, "eval.tasks=[tiny_mc]", f"eval.tasks_dir={tasks_dir}"]) == 2
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip() and not ln.startswith("INFO ")]
    assert len(err) == 1 and "line 11 is not valid JSON" in err[0], err
    data.write_text("")
    assert main(["distill", cfg, "eval.tasks=[tiny_mc]", f"eval.tasks_dir={tasks_dir}"]) == 2
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip() and not ln.startswith("INFO ")]
    assert len(err) == 1 and f"task 'tiny_mc' has no rows to read ({data})" in err[0], err


def test_distill_refuses_a_bad_task_row_before_training(tmp_path, capsys):
    """Try-out 34, finding 3: through ``ekd distill`` with eval.tasks, the check before training accepted a row
    without its answer; the run trained, then crashed with a traceback at the end."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from hostile import one_error_line

    tasks_dir, data = _bad_tasks(tmp_path, "no-answer")
    cfg = config_file(tmp_path, write_corpus(tmp_path / "corpus"), "bad")
    rc = main(["distill", cfg, "eval.tasks=[tiny_mc]", f"eval.tasks_dir={tasks_dir}"])
    line = one_error_line(rc, capsys.readouterr().err)
    assert BAD_ROW["no-answer"] in line and str(data) in line, line
    assert not (tmp_path / "runs" / "bad" / "metrics.jsonl").exists()  # no step was trained


# the tester's file: an indented key after a plain one (try-out 70, F4)
BROKEN_YAML = """task: broken
dataset_path: json
  dataset_kwargs: {data_files: {test: /nowhere/mc.jsonl}
output_type: multiple_choice
"""


def test_a_task_yaml_that_does_not_parse_is_named_with_its_error(tmp_path):
    """Try-out 70, F4: lm-eval's index skips a YAML it cannot parse without a word, so a task whose file had an
    indentation error was 'unknown ... neither in lm-eval's registry nor in DIR; check the names'. A missing
    name names the tasks dir's YAMLs that do not parse, with where and why; one with lm-eval's own tags
    (``!function``) parses."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import check_tasks_available

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML)
    (tasks_dir / "utils.py").write_text("def keep(dataset):\n    return dataset\n")
    _write_task(tasks_dir, "tagged_mc", _mc_rows(1), "process_docs: !function utils.keep\n" + MC_YAML)
    broken = tasks_dir / "broken.yaml"
    broken.write_text(BROKEN_YAML)
    with pytest.raises(EkdError) as e:
        check_tasks_available(("tiny_mc", "broken"), str(tasks_dir))
    assert str(e.value) == (
        f"eval.tasks: unknown task(s) broken: {broken} does not parse (mapping values are not allowed here, "
        "line 3 column 17); fix it"
    )
    # a name no broken file mentions: the usual line, the broken file said as a maybe
    with pytest.raises(EkdError) as e:
        check_tasks_available(("tiny_mcc",), str(tasks_dir))
    message = str(e.value)
    assert "\n" not in message and f"(and {broken} does not parse (mapping values" in message, message
    assert "fix it if it defines the task); did you mean 'tiny_mc'?" in message and "tagged_mc" not in message
    check_tasks_available(("tiny_mc", "tagged_mc"), str(tasks_dir))  # the good tasks still load


@pytest.mark.parametrize(
    "how, old, new",
    [
        ("doc_to_target", "doc_to_target: answer", "doc_to_target: label"),
        ("doc_to_choice", 'doc_to_choice: "{{choices}}"', "doc_to_choice: label"),
        ("doc_to_text", 'doc_to_text: "{{question}}"', "doc_to_text: label"),
    ],
)
def test_a_field_name_the_data_lacks_is_the_yamls_mistake(tmp_path, how, old, new):
    """Try-out 70, F5: ``doc_to_target: label`` where no row has 'label' was blamed on row 1 of the data ('its
    answer 'label' is not one of its choices'): lm-eval reads a bare name that is no field as plain text. Said of
    the task's YAML instead — also for doc_to_choice (a failed load) and doc_to_text (every prompt 'label')."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import check_tasks_available

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    assert old in MC_YAML
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML.replace(old, new))
    with pytest.raises(EkdError) as e:
        check_tasks_available(("tiny_mc",), str(tasks_dir))
    assert str(e.value) == (
        f"eval.tasks: task 'tiny_mc' (its YAML: {tasks_dir / 'tiny_mc.yaml'}): {how} 'label' is not a field of its "
        "data (fields: question, choices, answer); fix the task's YAML"
    )


@pytest.mark.parametrize(
    "how, old, new, name, meant",
    [
        ("doc_to_text", 'doc_to_text: "{{question}}"', 'doc_to_text: "{{questn}}"', "questn", "question"),
        ("doc_to_choice", 'doc_to_choice: "{{choices}}"', 'doc_to_choice: "{{choics}}"', "choics", "choices"),
        ("doc_to_target", "doc_to_target: answer", 'doc_to_target: "{{answr}}"', "answr", "answer"),
    ],
)
def test_a_template_reading_a_field_the_data_lacks_is_the_yamls_mistake(tmp_path, how, old, new, name, meant):
    """Try-out 72, F3: the template form (``{{answr}}``, README's own) failed the load as 'cannot be loaded (DATA
    FILE): UndefinedError: 'answr' is undefined' — the data file named, no field list, no suggestion."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import check_tasks_available

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML.replace(old, new))
    with pytest.raises(EkdError) as e:
        check_tasks_available(("tiny_mc",), str(tasks_dir))
    assert str(e.value) == (
        f"eval.tasks: task 'tiny_mc' (its YAML: {tasks_dir / 'tiny_mc.yaml'}): {how} reads '{name}', which is not a "
        f"field of its data (fields: question, choices, answer); fix the task's YAML; did you mean '{meant}'?"
    )


def test_an_unknown_metric_is_named_with_its_yaml_and_the_closest_metric(tmp_path, capfd, monkeypatch):
    """Try-out 70, F6: ``metric_list: [{metric: accuracy}]`` gave lm-eval's ERROR log line, then 'cannot be
    loaded (DATA FILE): KeyError: None'. One line, before training: the task, its YAML, the metric and the
    closest of lm-eval's metrics. ('accuracy' itself is an HF evaluate metric on the hub, which lm-eval loads
    where the hub is reachable: the test's name is found nowhere, and evaluate is kept offline.)"""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    evaluate_config = pytest.importorskip("evaluate.config")
    monkeypatch.setattr(evaluate_config, "HF_EVALUATE_OFFLINE", True)
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML.replace("metric: acc", "metric: accurracy"))
    cfg = config_file(tmp_path, write_corpus(tmp_path / "corpus"), "bad")
    assert main(["distill", cfg, "eval.tasks=[tiny_mc]", f"eval.tasks_dir={tasks_dir}"]) == 2
    err = [ln for ln in capfd.readouterr().err.splitlines() if ln.strip() and not ln.startswith("INFO ")]
    assert err == [
        f"ekd: error: eval.tasks: task 'tiny_mc' (its YAML: {tasks_dir / 'tiny_mc.yaml'}): metric 'accurracy' "
        "(metric_list) is not an lm-eval metric, nor an HF evaluate metric that loads here; did you mean 'acc'?"
    ], err
    assert not (tmp_path / "runs" / "bad" / "metrics.jsonl").exists()  # no step was trained


def test_a_failure_inside_lm_eval_while_scoring_is_one_line_with_its_cause(tmp_path, monkeypatch):
    """Whatever lm-eval or datasets raise while a task is scored is one line naming the task and the cause (the
    exception chained, for ``ekd --debug``), not a traceback."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import lm_eval.evaluator

    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)

    def broken(**kw):
        try:
            index = None
            (1, 2)[index]
        except TypeError as e:
            raise RuntimeError("wrapped") from e

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", broken)
    with pytest.raises(EkdError) as e:
        run_tasks(model, tok, TaskSettings(tasks=("tiny_mc",), tasks_dir=str(tasks_dir)), label="teacher")
    message = str(e.value)
    assert "\n" not in message and "task 'tiny_mc' failed while lm-eval scored the teacher" in message
    assert "TypeError: tuple indices must be integers or slices, not NoneType" in message, message
    assert isinstance(e.value.__cause__, RuntimeError)


def test_an_unknown_task_gets_did_you_mean(tmp_path):
    """Try-out 34, finding 7: an unknown task name had no 'did you mean', unlike every other unknown name."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import task_manager

    _, _, tasks_dir = _tiny_model_and_tasks(tmp_path)
    with pytest.raises(EkdError, match=r"unknown task\(s\) tiny_mcc: .*; did you mean 'tiny_mc'\?"):
        task_manager(("tiny_gen", "tiny_mcc"), str(tasks_dir))
    # the registry's thousands of names: a typo of a real task is suggested, a chance likeness is not (try-out 62)
    with pytest.raises(EkdError, match=r"unknown task\(s\) arc_esay: .*; did you mean 'arc_easy'\?"):
        task_manager(("arc_esay",), str(tasks_dir))
    with pytest.raises(EkdError, match=r"unknown task\(s\) nosuch_task: ") as e:
        task_manager(("nosuch_task",), str(tasks_dir))
    assert "did you mean" not in str(e.value), e.value


@pytest.mark.parametrize("flags", [["--limit", "5"], ["--num-fewshot", "2"], ["--tasks", ""]])
def test_ekd_eval_task_flags_without_tasks_are_one_line(
    finished_template, tmp_path, monkeypatch, capsys, flags
):
    """Try-out 34, finding 7: ``ekd eval RUN --limit 5`` with no task anywhere ignored --limit and re-scored the
    text sets (``--tasks ''`` too). Now one line, nothing evaluated or written."""
    from hostile import copy_workspace, one_error_line, snapshot, unchanged

    ws = copy_workspace(finished_template, tmp_path, monkeypatch)
    run = ws / "runs" / "base"
    before = snapshot(ws)
    line = one_error_line(main(["eval", str(run), *flags]), capsys.readouterr().err)
    assert (flags[0] in line and "no --tasks" in line) or "names no task" in line, line
    unchanged(before, ws)


def test_ece_bins_are_recorded_with_the_tasks_settings():
    """Try-out 34, finding 2: eval.json's tasks.settings had no ece_bins, so ekd compare averaged MC-ECEs
    computed with 5 and 15 bins into one mean; the bins recorded keep those apart (the score pairs: try-out 55,
    F10, in test_compare_keeps_seeds_scored_with_other_task_settings_apart)."""
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section_settings

    ways = []
    for bins in (15, 5):
        settings = task_section_settings(TaskSettings(tasks=("mc",), ece_bins=bins))
        assert settings["ece_bins"] == bins
        section = {"settings": settings, "student": {"mc": {"n": 20, "documents_sha256": "ab"}}}
        ways.append(tm.task_ways({"tasks": section})["task:mc"])
    assert ways[0] != ways[1]
    # try-out 45, F2: a bf16 forward is another way too
    bf16 = task_section_settings(TaskSettings(tasks=("mc",), precision="bf16"))
    fp32 = task_section_settings(TaskSettings(tasks=("mc",)))
    student = {"mc": {"n": 20, "documents_sha256": "ab"}}
    bf16_way, fp32_way = (
        tm.task_ways({"tasks": {"settings": s, "student": student}})["task:mc"] for s in (bf16, fp32)
    )
    assert (bf16_way["precision"], fp32_way["precision"]) == ("bf16", "fp32")


def test_task_ways_tell_each_task_by_its_own_data():
    """Editing one task's data moves that task alone; the tasks directory's path is no part of a task told by
    content; an older eval.json (no identity per result) is paired as before, by its directory."""
    settings = {"limit": 0, "num_fewshot": -1, "tasks_dir": "/x/t", "tasks": ["mc", "gen"], "seed": 0}

    def ways(mc_sha, tasks_dir="/x/t"):
        student = {"mc": {"n": 20, "documents_sha256": mc_sha}, "gen": {"n": 6, "documents_sha256": "g"}}
        section = {"settings": {**settings, "tasks_dir": tasks_dir}, "student": student, "tags": {}}
        return tm.task_ways({"tasks": section})

    a, edited, moved = ways("m1"), ways("m2"), ways("m1", "/y/t")
    assert a["task:gen"] == edited["task:gen"] and a["task:mc"] != edited["task:mc"]
    assert a == moved and "tasks_dir" not in a["task:mc"]
    assert a["tasks[in_distribution]"] != edited["tasks[in_distribution]"]
    old = {"settings": {**settings, "tasks_dir_hash": "aa"}, "student": {"mc": {"n": 20}}, "tags": {}}
    assert tm.task_ways({"tasks": old})["task:mc"] == {
        "limit": 0,
        "num_fewshot": -1,
        "tasks_dir": "/x/t",
        "tasks_dir_hash": "aa",
        "documents": 20,
    }


def test_an_untagged_extra_eval_set_is_said_to_be_tagged_in_distribution():
    """Try-out 55, F8: report.md labelled an extra set named `ood` in_distribution (the default tag) without a
    word; the note names it and how to tag it. The held-out split and `shift*` names follow the rule."""
    from ekd.train.task_evaluation import untagged_note

    sets = {"eval": {}, "ood": {}, "ood/teacher": {}, "shift_news": {}, "code": {}}
    assert untagged_note(sets, {"code": "in_distribution"}) == (
        "`ood`: no `eval.set_tags` entry, so tagged in_distribution; tag a shifted set with e.g. "
        "`ekd eval RUN 'eval.set_tags={ood: shift}'`"
    )
    assert untagged_note({"eval": {}, "shift_x": {}}, {}) == ""


def test_a_generation_budget_past_the_models_length_names_the_setting_that_fixes_it():
    """Try-out 77, F2: lm-eval's assertion said what (256 tokens asked of a 256-position model), not which ekd
    setting lowers the budget."""
    from ekd.eval.task_data import run_error

    said = str(
        run_error(
            "my_gen",
            "student",
            AssertionError(
                "Invalid configuration: requested max tokens to generate (256) must be less than model's maximum "
                "sequence length (256)."
            ),
        )
    )
    assert said.startswith(
        "eval.tasks: task 'my_gen' failed while lm-eval scored the student: AssertionError"
    )
    assert "the generation budget, 256 tokens, must be below the student's maximum length, 256: set " in said
    assert "eval.tasks_max_new_tokens lower" in said


def test_a_generation_budget_past_the_models_length_is_refused_before_any_task_is_scored(
    tmp_path, monkeypatch
):
    """Try-out 77, F2: lm-eval asserts the budget only when it reaches the generation task, so the tasks scored
    before it (here tiny_mc, first) were computed and then lost with the evaluation. Every task is now loaded and
    its budget checked before the first is scored; a budget that fits still scores both."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import lm_eval.evaluator

    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    length = model.config.max_position_embeddings
    scored, real_evaluate = [], lm_eval.evaluator.evaluate

    def evaluate(*, task_dict, **kwargs):
        scored.append(list(task_dict["tasks"]) if "tasks" in task_dict else list(task_dict))
        return real_evaluate(task_dict=task_dict, **kwargs)

    monkeypatch.setattr(lm_eval.evaluator, "evaluate", evaluate)
    tasks = ("tiny_mc", "tiny_gen")
    with pytest.raises(EkdError) as e:
        run_tasks(model, tok, TaskSettings(tasks=tasks, tasks_dir=str(tasks_dir), max_new_tokens=length))
    assert scored == []
    assert str(e.value) == (
        f"eval.tasks: the generation budget of 'tiny_gen' ({length}) new tokens leaves no room for a prompt "
        f"within the model's maximum length, {length} tokens; no task was scored: set eval.tasks_max_new_tokens "
        "lower"
    )
    # the tasks' own budget (no eval.tasks_max_new_tokens): both ways to lower it (try-out 82, F5: the task's
    # max_gen_toks was offered where eval.tasks_max_new_tokens replaces it)
    from ekd.eval.tasks import check_generation_budgets

    with pytest.raises(
        EkdError, match=r"set eval.tasks_max_new_tokens \(it replaces the tasks' own budgets\) or "
    ):
        check_generation_budgets([("'tiny_gen'", 300)], 256, "student")
    results = run_tasks(
        model, tok, TaskSettings(tasks=tasks, tasks_dir=str(tasks_dir), max_new_tokens=length - 1)
    )
    assert set(results) == {"tiny_mc", "tiny_gen"} and len(scored) == 2


def test_the_budgets_read_from_task_configs_are_the_ones_lm_eval_runs(tmp_path):
    """Try-out 79, F4: the up-front check reads each generation task's budget from its config (nothing loaded);
    it must be the budget lm-eval runs with — the task's own, ``eval.tasks_max_new_tokens``, or lm-eval's
    default where neither is set — and the length must be ``HFLM.max_length``'s, config or tokenizer."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from lm_eval.models.huggingface import HFLM

    from ekd.eval.tasks import (
        DEFAULT_GEN_TOKS,
        TaskSettings,
        _configure,
        config_budgets,
        loaded_budgets,
        model_max_length,
        task_manager,
    )

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    own = GEN_YAML.replace('  until: ["\\n"]\n', '  until: ["\\n"]\n  max_gen_toks: 7\n')
    _write_task(tasks_dir, "own_budget", _gen_rows(2), own)
    lm = HFLM(pretrained=model, tokenizer=tok, batch_size=1)
    assert lm.max_gen_toks == DEFAULT_GEN_TOKS
    tasks = ("tiny_mc", "tiny_gen", "own_budget")
    for max_new in (0, 5):
        settings = TaskSettings(tasks=tasks, tasks_dir=str(tasks_dir), max_new_tokens=max_new)
        manager = task_manager(tasks, str(tasks_dir))
        prepared = []
        for name in tasks:
            loaded = manager.load([name])
            for task in loaded["tasks"].values():
                _configure(task, settings)
            prepared.append((name, loaded, None, 0.0))
        expected = [("'tiny_gen'", max_new or DEFAULT_GEN_TOKS), ("'own_budget'", max_new or 7)]
        assert loaded_budgets(prepared, lm.max_gen_toks) == expected
        assert config_budgets(settings) == expected
    assert model_max_length(model.config, tok) == lm.max_length == model.config.max_position_embeddings
    tok.model_max_length = 77  # a config naming no length: the tokenizer's, as lm-eval reads it
    assert model_max_length(types.SimpleNamespace(vocab_size=len(tok)), tok) == 77


def test_a_budget_a_scored_models_length_cannot_hold_is_refused_before_training_and_before_ekd_eval_writes(
    tmp_path, monkeypatch, capsys
):
    """Try-out 79, F4: a generation budget that leaves the *teacher* (64 positions here) no room for a prompt
    was refused only when its tasks were scored — after the whole training in ``ekd distill``, after the eval
    sets were rescored and eval.json rewritten in ``ekd eval``. Both now refuse it before anything runs."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import build_preset
    from ekd.train import evaluation
    from hostile import one_error_line

    corpus = write_corpus(tmp_path / "corpus")
    tok = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 320, None)
    short = tmp_path / "short_teacher"
    teacher = build_preset("llama-tiny", len(tok), tok.eos_token_id)
    teacher.config.max_position_embeddings = 64
    teacher.save_pretrained(short)
    tok.save_pretrained(short)
    capsys.readouterr()  # transformers' saving bars
    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_gen", _gen_rows(3), GEN_YAML)
    common = {"model.teacher": str(short), "model.tokenizer": str(short), "train.max_steps": 1}
    tasks = ["eval.tasks=[tiny_gen]", f"eval.tasks_dir={tasks_dir}"]
    refusal = (
        "eval.tasks: the generation budget of 'tiny_gen' (64) new tokens leaves no room for a prompt within the "
        "teacher's maximum length, 64 tokens; no task was scored"
    )

    cfg = config_file(tmp_path, corpus, "over", **common, **{"eval.tasks_max_new_tokens": 64})
    rc = main(["-q", "distill", cfg, *tasks])
    assert refusal in one_error_line(rc, capsys.readouterr().err)
    assert not (tmp_path / "runs" / "over" / "metrics.jsonl").exists()  # no step was taken
    assert not list((tmp_path / "runs" / "over").glob("checkpoints/*"))

    cfg = config_file(tmp_path, corpus, "fits", **common, **{"eval.tasks_max_new_tokens": 4})
    assert main(["-q", "distill", cfg, *tasks]) == 0
    run = tmp_path / "runs" / "fits"
    evaluated = []
    monkeypatch.setattr(evaluation, "evaluate_run", lambda *a, **k: evaluated.append(a))
    before = (run / "eval.json").read_bytes()
    rc = main(["eval", str(run), "eval.tasks_max_new_tokens=64"])
    assert refusal in one_error_line(rc, capsys.readouterr().err)
    assert evaluated == [] and (run / "eval.json").read_bytes() == before


def test_a_tag_of_tasks_is_scored_with_progress_bars_off(tmp_path):
    """Try-out 81, F1: a tag (``tag: NAME`` in task YAMLs) under ``log.progress=false`` ended in a traceback
    ("'disable' is not in list": its leaves were read inside the tasks' own quiet block, which was not
    reentrant) — in ``ekd distill`` after the whole training. It scores as its tasks do."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    _write_task(tasks_dir, "tagged_mc", _mc_rows(3), "tag: tiny_tag\n" + MC_YAML)
    _write_task(tasks_dir, "tagged_gen", _gen_rows(4), "tag: tiny_tag\n" + GEN_YAML)
    settings = TaskSettings(tasks=("tiny_tag",), tasks_dir=str(tasks_dir), max_new_tokens=2, progress=False)
    results = run_tasks(model, tok, settings)
    assert set(results) == {"tagged_mc", "tagged_gen"}
    assert all(r["n"] > 0 for r in results.values())


def test_prompts_lm_eval_cuts_to_fit_the_model_are_said_per_task(tmp_path, caplog):
    """Try-out 81, F2: a budget that leaves the prompt one token (max length 4096, budget 4095) passed the check,
    and lm-eval scored prompts cut to their last token; its own warning was kept quiet with the rest of its
    output. Each task whose prompts were cut is now one warning; a task whose prompts fit is not."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    import logging

    from ekd.eval.tasks import TaskSettings, run_tasks

    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    length = model.config.max_position_embeddings
    tasks = ("tiny_mc", "tiny_gen")
    with caplog.at_level(logging.WARNING, logger="ekd.eval.tasks"):
        run_tasks(model, tok, TaskSettings(tasks=tasks, tasks_dir=str(tasks_dir), max_new_tokens=2, limit=2))
        assert "lm-eval cut prompts" not in caplog.text
        run_tasks(
            model,
            tok,
            TaskSettings(tasks=tasks, tasks_dir=str(tasks_dir), max_new_tokens=length - 1, limit=2),
        )
    cut = [r.getMessage() for r in caplog.records if "lm-eval cut prompts" in r.getMessage()]
    assert len(cut) == 1 and cut[0].startswith("task tiny_gen on model: lm-eval cut prompts from the left"), (
        cut
    )
    assert f"(1 generation batch to {length} tokens less the generation budget)" in cut[0]
    assert "a smaller eval.tasks_max_new_tokens" in cut[0]
    caplog.clear()
    model.config.max_position_embeddings = 6  # shorter than the MC questions (5 words + a choice)
    with caplog.at_level(logging.WARNING, logger="ekd.eval.tasks"):
        run_tasks(model, tok, TaskSettings(tasks=("tiny_mc",), tasks_dir=str(tasks_dir), limit=2))
    cut = [r.getMessage() for r in caplog.records if "lm-eval cut prompts" in r.getMessage()]
    assert len(cut) == 1 and "log-likelihood requests to 6 tokens)" in cut[0], cut
    assert "eval.tasks_max_new_tokens" not in cut[0]


def test_the_teacher_cache_keeps_results_of_each_dtype_apart(tmp_path, monkeypatch):
    """Try-out 119, F2: the teacher's cached task results were keyed by the model and the autocast, not by the
    dtype its weights ran in: a bfloat16 teacher's scores were reused for `model.teacher_dtype=float32` (and
    recorded as float32's). Each dtype has its own results; a result of an older ekd, without one, is computed
    again."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import cached_tasks

    model, tok, _ = _tiny_model_and_tasks(tmp_path)
    tasks_dir = tmp_path / "ext_tasks"
    tasks_dir.mkdir()
    _external_task(tasks_dir, tmp_path / "data", "ext_mc", _mc_rows())
    settings = TaskSettings(tasks=("ext_mc",), tasks_dir=str(tasks_dir))
    calls = _teacher_cache_calls(monkeypatch)
    cache = tmp_path / "cache"
    cached_tasks(cache, "teacher", "t#1", settings, lambda: (model, tok))  # as an older ekd: no dtype
    cached_tasks(cache, "teacher", "t#1", settings, lambda: (model, tok), dtype="float32")
    cached_tasks(cache, "teacher", "t#1", settings, lambda: (model, tok), dtype="bfloat16")
    assert calls == [("ext_mc",)] * 3
    cached_tasks(cache, "teacher", "t#1", settings, lambda: (model, tok), dtype="float32")
    cached_tasks(cache, "teacher", "t#1", settings, lambda: (model, tok), dtype="bfloat16")
    assert calls == [("ext_mc",)] * 3  # each dtype's own results reused


def test_a_task_that_does_not_generate_is_one_way_under_any_generation_budget():
    """Try-out 119, F3: a multiple-choice task scored by one seed with eval.tasks_max_new_tokens=5 and by another
    with 7 was two columns (`task:my_mc`, `task:my_mc#2`), and its cached results were recomputed; the budget and
    the chat template are read by generate_until tasks alone. A generation task (or one of an older ekd, which
    recorded no output type) is still another way, and so is a tag over it."""
    from ekd.eval.task_data import LeafTask
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section_settings

    def ways(budget: int, template: str = "auto") -> dict:
        settings = task_section_settings(
            TaskSettings(tasks=("mc", "gen", "old", "grouped"), max_new_tokens=budget, chat_template=template)
        )
        student = {
            "mc": {
                "n": 20,
                "documents_sha256": "m",
                "output_type": "multiple_choice",
                "group_generates": False,
            },
            # try-out 120, F5: a multiple-choice leaf of a group that generates is rendered through the template
            "grouped": {
                "n": 20,
                "documents_sha256": "q",
                "output_type": "multiple_choice",
                "group_generates": True,
            },
            "gen": {"n": 6, "documents_sha256": "g", "output_type": "generate_until"},
            "old": {"n": 6, "documents_sha256": "o"},
        }
        tags = {"mc": "mcs", "gen": "gens", "old": "gens", "grouped": "groups"}
        return tm.task_ways({"tasks": {"settings": settings, "student": student, "tags": tags}})

    five, seven, off = ways(5), ways(7), ways(5, "off")
    assert five["task:mc"] == seven["task:mc"] == off["task:mc"]
    assert five["tasks[mcs]"] == seven["tasks[mcs]"]
    assert five["task:grouped"] == seven["task:grouped"] != off["task:grouped"]
    assert five["tasks[groups]"] == seven["tasks[groups]"] != off["tasks[groups]"]
    for name in ("task:gen", "task:old", "tasks[gens]"):
        assert five[name] != seven[name] and five[name] != off[name], name
    # the cached results' signature likewise
    mc, gen = LeafTask("m", 0, generates=False), LeafTask("g", 0)
    sig = lambda budget, leaves: TaskSettings(tasks=("t",), max_new_tokens=budget).signature("t", leaves)  # noqa: E731
    assert sig(5, {"mc": mc}) == sig(7, {"mc": mc})
    assert sig(5, {"gen": gen}) != sig(7, {"gen": gen})
    assert sig(5, {"mc": mc, "gen": gen}) != sig(7, {"mc": mc, "gen": gen})  # a group with a generating leaf


def test_an_older_multiple_choice_result_is_the_way_of_todays():
    """Review of session 34, R6: a multiple-choice result an older ekd wrote (no `group_generates`) kept the chat
    template in its way, so the same task scored alike by an older and today's ekd made two columns. No ekd
    applied the template to a group that does not generate: a run whose tasks do not generate reads it so."""
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section_settings

    settings = task_section_settings(TaskSettings(tasks=("arc",)))
    old = {"arc": {"n": 20, "documents_sha256": "a", "output_type": "multiple_choice"}}
    new = {"arc": {**old["arc"], "group_generates": False}}
    ways = [tm.task_ways({"tasks": {"settings": settings, "student": s}})["task:arc"] for s in (old, new)]
    assert ways[0] == ways[1]
    with_gen = {**old, "gen": {"n": 6, "documents_sha256": "g", "output_type": "generate_until"}}
    assert "chat_template" in tm.task_ways({"tasks": {"settings": settings, "student": with_gen}})["task:arc"]


def _mc(value: float, ece: float, n: int, output_type: str = "multiple_choice") -> dict:
    return {"metric": "acc", "value": value, "ece": ece, "n": n, "wall_s": 1.0, "output_type": output_type}


def test_a_tags_mc_ece_mean_says_which_tasks_it_leaves_out_and_a_score_mean_is_never_over_a_subset():
    """review 136, R3: a multiple-choice task without an MC-ECE estimate (< 10 documents) dropped out of its tag's
    mean without a word — the "mean" of two MC tasks was one task's; a task score that is not finite did too."""
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section, tasks_markdown

    results = {
        role: {
            "mc_a": _mc(0.5 + d, 30.0 - d, 200),
            "mc_b": _mc(0.6 + d, math.nan, 8),
            "gen": _mc(0.2 + d, math.nan, 50, "generate_until"),  # no MC-ECE by design: not "left out"
        }
        for role, d in (("student", 0.0), ("teacher", 0.2), ("student_init", -0.1))
    }
    section = task_section(results, TaskSettings(tasks=("mc_a", "mc_b", "gen")), {})
    student = section["summary"]["student"]
    assert student["mc_ece"] == {"in_distribution": 30.0}
    assert student["mc_ece_without"] == {"in_distribution": ["mc_b"]}
    assert student["mean"]["in_distribution"] == pytest.approx((0.5 + 0.6 + 0.2) / 3)
    mean_row = next(line for line in tasks_markdown(section).splitlines() if "**mean (" in line)
    assert "30.00 (1 of 2 MC tasks)" in mean_row and "29.80 (1 of 2 MC tasks)" in mean_row, mean_row
    results["student"]["mc_b"]["ece"] = 12.0  # every MC task estimated: a plain mean, nothing listed
    results["student"]["gen"]["value"] = math.nan  # a score that is not finite: no mean over the others
    section = task_section(results, TaskSettings(tasks=("mc_a", "mc_b", "gen")), {})
    assert section["summary"]["student"]["mc_ece"] == {"in_distribution": 21.0}
    assert "mc_ece_without" not in section["summary"]["student"]
    assert section["summary"]["student"]["mean"]["in_distribution"] is None  # null, as eval.json holds NaN


def test_a_groups_leaves_share_its_wall_time_by_their_requests(tmp_path):
    """review 136, R4: lm-eval scores a group's leaves in one pass, and each leaf was given the pass's time divided
    evenly (a 3-document generation task the seconds of a 40-choice multiple-choice one). Each leaf's wall_s is
    its share by model calls (one per choice, one per generation; a document logged once per filter counted
    once), and the group's own time is recorded beside it."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import GROUP_WALL, TaskSettings, run_tasks, wall_shares

    logged = {
        "samples": {
            "mc": [{"doc_id": d, "arguments": [("c", " a")] * 4, "filter": "none"} for d in range(10)],
            "gen": [
                {"doc_id": d, "arguments": [("q", {})], "filter": f} for d in range(2) for f in ("a", "b")
            ],
        }
    }
    assert wall_shares(logged, ["mc", "gen"]) == pytest.approx({"mc": 40 / 42, "gen": 2 / 42})
    assert wall_shares({"samples": {}}, ["mc", "gen"]) == {"mc": 0.5, "gen": 0.5}
    model, tok, tasks_dir = _tiny_model_and_tasks(tmp_path)
    (tasks_dir / "both.yaml").write_text("group: both\ntask:\n  - tiny_mc\n  - tiny_gen\n")
    out = run_tasks(model, tok, TaskSettings(tasks=("both",), tasks_dir=str(tasks_dir), max_new_tokens=2))
    mc, gen = out["tiny_mc"], out["tiny_gen"]
    assert mc[GROUP_WALL]["task"] == gen[GROUP_WALL]["task"] == "both"
    whole = mc[GROUP_WALL]["wall_s"]
    assert mc["wall_s"] + gen["wall_s"] == pytest.approx(whole)
    calls = {"tiny_mc": sum(len(r["choices"]) for r in _mc_rows()), "tiny_gen": 3}
    assert mc["wall_s"] / whole == pytest.approx(calls["tiny_mc"] / sum(calls.values()))


def test_a_task_data_file_in_a_bracketed_directory_is_said_to_be_read_as_a_glob(tmp_path):
    """Try-out 137, F8: a local task whose data file lies under 'tasks [1]/' was refused as "has no rows to read",
    naming a file of 20 rows: `datasets` reads data_files as a glob, where '[1]' matches other names."""
    pytest.importorskip("lm_eval.models.huggingface", reason="needs ekd[eval]")
    from ekd.eval.tasks import check_tasks_available

    tasks_dir = tmp_path / "tasks [1]"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML)
    with pytest.raises(EkdError) as e:
        check_tasks_available(("tiny_mc",), str(tasks_dir))
    assert "is there, but `datasets` reads data_files as a glob pattern" in str(e.value), e.value
    assert "write '[' as '[[]'" in str(e.value) and "has no rows" not in str(e.value)


def test_compare_shows_a_tags_mc_ece_only_over_every_mc_task():
    """Try-out 139, F4: `ekd compare`'s `tasks[<tag>] ECE %` was the MC-ECE mean over the tasks that have an
    estimate, with nothing said — two runs may average different tasks in one column. It is given only where every
    multiple-choice task of the tag has one."""
    from ekd.eval.tasks import TaskSettings
    from ekd.train.task_evaluation import task_section

    results = {
        role: {"mc_a": _mc(0.5, 30.0, 200), "mc_b": _mc(0.6, math.nan, 8)}
        for role in ("student", "teacher", "student_init")
    }
    section = task_section(results, TaskSettings(tasks=("mc_a", "mc_b")), {})
    flat = tm.task_sets({"tasks": section})
    assert math.isnan(flat["tasks[in_distribution]"]["ece"]) and flat["task:mc_a"]["ece"] == 30.0
    assert math.isnan(tm.task_starts({"tasks": section})["tasks[in_distribution]"]["ece"])
    results["student"]["mc_b"]["ece"] = 10.0
    section = task_section(results, TaskSettings(tasks=("mc_a", "mc_b")), {})
    assert tm.task_sets({"tasks": section})["tasks[in_distribution]"]["ece"] == 20.0
