"""The exported student is the model ekd scored (``ekd.models.export``): a padded head's untrained rows never
reach ``generate`` and their probability is reported (or the head is trimmed); the export keeps the student's
dtype and the final evaluation scores the rounded weights that are shipped, while checkpoints keep the fp32
master weights; LoRA exports alike; ``ekd compare``'s teacher bytes per token span the tokenizer's V, not the
padded head, for a merged and an adapter export alike."""

from __future__ import annotations

import importlib.util
import json
import math

import pytest
import safetensors.torch
import torch
from transformers import AutoModelForCausalLM

from ekd.cli import main
from ekd.data import train_bpe_tokenizer
from ekd.eval.metrics import StreamingMetrics
from ekd.models.load import build_preset, save_model_dir
from tiny import tiny_overrides, write_corpus

PADDED = 8  # head rows beyond the tokenizer


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=16)


@pytest.fixture(scope="module")
def tokenizer(corpus):
    return train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 300)


def _student(root, tokenizer, dtype=torch.float32, padded=PADDED, name="student-in"):
    """A saved 'pre-trained' student: llama-micro with ``padded`` head rows past the tokenizer, stored in
    ``dtype``. The padded rows get large logits (3.0 per unit of hidden), as untrained rows may: they would win
    every unmasked draw."""
    vocab = len(tokenizer)
    model = build_preset("llama-micro", vocab + padded, tokenizer.eos_token_id, seed=0)
    with torch.no_grad():
        model.lm_head.weight[vocab:] = 3.0
    return save_model_dir(model.to(dtype), tokenizer, root / name)


def _distill(tmp_path, corpus, name, student, *extra: str, **keys) -> dict:
    """``ekd distill`` from the command line (dense KD, a preset teacher on the student's tokenizer); eval.json."""
    keys = {
        "model.student": str(student),
        "model.tokenizer": "student",
        "model.teacher": "preset:llama-micro",
        **keys,
    }
    assert main(["distill", *tiny_overrides(tmp_path, corpus, name, **keys), "method=kd", *extra]) == 0
    return json.loads((tmp_path / "runs" / name / "eval.json").read_text())


def _ekd_eval(run_dir) -> dict:
    """``ekd eval RUN``: the export reloaded with transformers and scored again."""
    assert main(["eval", str(run_dir)]) == 0
    return json.loads((run_dir / "eval.json").read_text())


def _same_scores(a: dict, b: dict, keys=("ppl", "kl", "acc", "ppl_full_head"), rel=0.0) -> None:
    for name in ("eval",):
        for k in keys:
            if k in a[name] or k in b[name]:
                assert b[name][k] == pytest.approx(a[name][k], rel=rel, abs=0), (name, k)


def test_padded_rows_are_never_generated_and_their_mass_is_reported(tmp_path, corpus, tokenizer, caplog):
    vocab = len(tokenizer)
    results = _distill(tmp_path, corpus, "padded", _student(tmp_path, tokenizer))
    run = tmp_path / "runs" / "padded"
    generation = json.loads((run / "student" / "generation_config.json").read_text())
    assert generation["suppress_tokens"] == list(range(vocab, vocab + PADDED))
    model = AutoModelForCausalLM.from_pretrained(run / "student")
    assert model.config.vocab_size == vocab + PADDED  # the architecture's shape is kept
    prompt = torch.tensor([tokenizer.encode("def value(self):")])
    torch.manual_seed(0)
    out = model.generate(prompt, do_sample=True, top_k=0, top_p=1.0, max_new_tokens=40, min_new_tokens=40)
    assert int(out[:, prompt.shape[1] :].max()) < vocab  # pure sampling: never a padded id
    # what a full-head softmax of the export gives the padded rows, reported beside ekd's ppl over V rows
    held = results["eval"]
    assert 0.5 < held["padded_mass"] < 1.0  # rows at logit 3·Σh: most of the full-head mass
    assert held["ppl_full_head"] > held["ppl"]
    assert held["loss_full_head"] == pytest.approx(math.log(held["ppl_full_head"]))
    _same_scores(results, _ekd_eval(run))  # the export scores what the run reported
    said = caplog.text
    assert f"head keeps {vocab + PADDED} rows for {vocab} tokens" in said
    assert "suppressed in generation_config" in said


def test_trimmed_head_is_the_scored_model_for_any_evaluator(tmp_path, corpus, tokenizer):
    vocab = len(tokenizer)
    results = _distill(
        tmp_path, corpus, "trim", _student(tmp_path, tokenizer), **{"model.export_head_rows": "trim"}
    )
    run = tmp_path / "runs" / "trim"
    model = AutoModelForCausalLM.from_pretrained(run / "student")
    assert model.config.vocab_size == vocab and model.lm_head.weight.shape[0] == vocab
    assert "padded_mass" not in results["eval"]  # no row beyond V is shipped
    _same_scores(results, _ekd_eval(run))


@pytest.mark.parametrize("export, stored", [("auto", torch.bfloat16), ("float32", torch.float32)])
def test_a_bf16_student_ships_in_bf16_and_is_evaluated_so(tmp_path, corpus, tokenizer, export, stored):
    student = _student(tmp_path, tokenizer, torch.bfloat16)
    chosen = {} if export == "auto" else {"model.export_dtype": export}  # auto: the default
    results = _distill(tmp_path, corpus, "bf16", student, **chosen)
    run = tmp_path / "runs" / "bf16"
    config = json.loads((run / "student" / "config.json").read_text())
    assert config["dtype"] == str(stored).removeprefix("torch.")
    shipped = safetensors.torch.load_file(run / "student" / "model.safetensors")
    assert {t.dtype for t in shipped.values()} == {stored}
    # the final checkpoint keeps the fp32 master weights (a --resume continues from them) ...
    master = safetensors.torch.load_file(run / "checkpoints" / "step-000003" / "student.safetensors")
    weight = master["model.layers.0.mlp.up_proj.weight"]
    assert weight.dtype == torch.float32
    assert not torch.equal(weight, weight.bfloat16().float())  # trained off the bf16 grid
    # ... and the export is their rounding, which the final evaluation scored: `ekd eval` of the export agrees
    assert torch.equal(shipped["model.layers.0.mlp.up_proj.weight"], weight.to(stored))
    _same_scores(results, _ekd_eval(run))


def test_a_float16_overflow_is_one_line_and_the_run_finishes_on_resume(tmp_path, corpus, tokenizer, capsys):
    """A weight beyond float16's range (here in a padded row, which training never touches) refuses the
    export in one line; the fp32 checkpoint is kept and `--resume` with another export dtype finishes the run."""
    student = _student(tmp_path, tokenizer)
    model = AutoModelForCausalLM.from_pretrained(student)
    with torch.no_grad():
        model.lm_head.weight[-1, 0] = 1e5
    save_model_dir(model, tokenizer, student)
    keys = {
        "model.student": str(student),
        "model.tokenizer": "student",
        "model.teacher": "preset:llama-micro",
    }
    args = ["distill", *tiny_overrides(tmp_path, corpus, "f16", **keys), "method=kd"]
    assert main([*args, "model.export_dtype=float16"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert "model.export_dtype=float16" in err and "--resume and model.export_dtype=bfloat16" in err
    run = tmp_path / "runs" / "f16"
    assert not (run / "student").exists() and (run / "checkpoints" / "step-000003").is_dir()
    assert main([*args, "model.export_dtype=bfloat16", "--resume"]) == 0
    assert json.loads((run / "student" / "config.json").read_text())["dtype"] == "bfloat16"


@pytest.mark.parametrize("how", ["merged", "adapter"])
def test_lora_exports_ship_the_base_dtype_and_record_the_vocabulary(tmp_path, corpus, tokenizer, how):
    pytest.importorskip("peft")
    vocab = len(tokenizer)
    student = _student(tmp_path, tokenizer, torch.bfloat16)
    lora = {"model.lora_r": 4, "model.lora_alpha": 8, "model.lora_export": how}
    results = _distill(tmp_path, corpus, "lora", student, **lora)
    out = tmp_path / "runs" / "lora" / "student"
    if how == "adapter":
        adapter = safetensors.torch.load_file(out / "adapter_model.safetensors")
        assert {t.dtype for t in adapter.values()} == {torch.bfloat16}
        note = json.loads((out / "ekd_base.json").read_text())
        assert note["tokenizer_tokens"] == vocab and note["head_rows"] == vocab + PADDED
        assert "vocab_size" not in note  # neither figure under an ambiguous name
    else:
        assert json.loads((out / "config.json").read_text())["dtype"] == "bfloat16"
        generation = json.loads((out / "generation_config.json").read_text())
        assert generation["suppress_tokens"] == list(range(vocab, vocab + PADDED))
    _same_scores(results, _ekd_eval(tmp_path / "runs" / "lora"), rel=1e-6)  # adapter: merged on reload


def test_compare_bytes_per_token_span_the_tokenizer_for_every_export(tmp_path, corpus, tokenizer):
    """Dense KD over V rows stores 2 bytes (fp16) per row and position: 2·V B/token at 100% KD positions — for
    the plain, the merged LoRA and the adapter LoRA run alike, and for a run that did not record V."""
    vocab = len(tokenizer)
    student = _student(tmp_path, tokenizer)
    _distill(tmp_path, corpus, "full", student)
    for how in ("merged", "adapter"):
        lora = {"model.lora_r": 4, "model.lora_alpha": 8, "model.lora_export": how}
        _distill(tmp_path, corpus, f"lora-{how}", student, **lora)
    runs = [tmp_path / "runs" / n for n in ("full", "lora-merged", "lora-adapter")]
    older = json.loads((runs[2] / "ekd-run.json").read_text())
    for key in ("tokenizer_tokens", "head_rows"):  # a run of an older ekd: read from its exported tokenizer
        older.pop(key, None)
    (runs[2] / "ekd-run.json").write_text(json.dumps(older))
    assert main(["compare", *map(str, runs), "--out", str(tmp_path / "cmp")]) == 0
    summary = json.loads((tmp_path / "cmp" / "compare.json").read_text())
    cost = [g["metrics"].get("bytes_per_token", {}).get("mean") for g in summary["groups"]]  # absent: '—'
    assert cost == [pytest.approx(2.0 * vocab)] * 3


def test_export_keys_are_checked_and_explained(tmp_path, corpus, capsys):
    base = tiny_overrides(tmp_path, corpus, "bad")
    assert main(["distill", *base, "model.export_dtype=fp8"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.export_dtype" in err and "bfloat16" in err
    lora = ["model.lora_r=4", "model.lora_export=adapter", "model.export_head_rows=trim"]
    assert main(["distill", *base, *lora]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "model.export_head_rows=trim" in err and "lora_export=merged" in err
    assert main(["config", "show", "--explain"]) == 0
    text = capsys.readouterr().out
    assert "model.export_dtype" in text and "model.export_head_rows" in text
    assert not (tmp_path / "runs" / "bad").exists()


def test_full_head_metrics_match_a_naive_softmax_over_every_row():
    """padded_mass and loss_full_head against log_softmax over all R rows, at an odd shape; padded rows at
    −inf change nothing."""
    g = torch.Generator().manual_seed(0)
    n, vocab, rows = 37, 123, 131
    logits = torch.randn(n, rows, generator=g) * 3  # (n, R)
    labels = torch.randint(0, vocab, (n,), generator=g)
    labels[5] = -100
    metrics = StreamingMetrics(vocab, chunk_rows=8)
    metrics.update(logits[:, :vocab], labels, padded_logsumexp=logits[:, vocab:].logsumexp(-1))
    got = metrics.compute()
    keep = labels != -100
    full = torch.log_softmax(logits.double(), -1)[keep]  # (n−1, R)
    assert got["padded_mass"] == pytest.approx(float(full[:, vocab:].exp().sum(-1).mean()), rel=1e-5)
    nll = -full.gather(1, labels[keep][:, None]).mean()
    assert got["loss_full_head"] == pytest.approx(float(nll), rel=1e-5)
    masked = StreamingMetrics(vocab)
    masked.update(logits[:, :vocab], labels, padded_logsumexp=torch.full((n,), -math.inf))
    inert = masked.compute()
    assert inert["padded_mass"] == 0.0 and inert["loss_full_head"] == pytest.approx(inert["loss"])


def test_a_tokenizer_read_back_from_a_directory_saves_the_same_files(tmp_path):
    """Try-out 39, F9: a resumed run's export, whose tokenizer was loaded from the run directory, wrote
    ``is_local`` and ``local_files_only`` into tokenizer_config.json, which an uninterrupted run's did not."""
    from transformers import AutoTokenizer

    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import save_tokenizer

    built = train_bpe_tokenizer(["def f(x): return x + 1\n" * 20], 300, tmp_path / "built")
    save_tokenizer(built, tmp_path / "a")
    loaded = AutoTokenizer.from_pretrained(tmp_path / "built")
    save_tokenizer(loaded, tmp_path / "b")
    for name in ("tokenizer_config.json", "tokenizer.json"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    assert "is_local" in loaded.init_kwargs  # the tokenizer itself is left as it was


def test_end_documents_with_puts_the_trained_end_first_and_keeps_the_models_own():
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM

    from ekd.models.export import end_documents_with

    config = LlamaConfig(
        vocab_size=16, hidden_size=8, num_attention_heads=2, num_hidden_layers=1, eos_token_id=2
    )
    model = LlamaForCausalLM(config)
    model.generation_config = GenerationConfig(eos_token_id=[2, 7])
    assert end_documents_with(model, None) == [] and end_documents_with(model, 7) == []  # already one of them
    assert model.config.eos_token_id == 2
    assert end_documents_with(model, 1) == [1, 2, 7]
    assert model.config.eos_token_id == model.generation_config.eos_token_id == [1, 2, 7]


def test_the_export_ends_sequences_where_the_run_ended_documents(tmp_path, corpus, tokenizer, caplog):
    """Try-out 44, F7: a student whose config and generation_config name eos_token_id 2, trained under the advised
    data.separator=eos to end documents with the tokenizer's EOS (another id), was exported with eos_token_id 2
    alone: generate() ran past the end the run trained. Under auto (documents end with its own id) nothing
    changes."""
    import logging

    student = _student(tmp_path, tokenizer, padded=0)
    own = tokenizer.eos_token_id + 2
    for name in ("config.json", "generation_config.json"):
        path = student / name
        path.write_text(json.dumps({**json.loads(path.read_text()), "eos_token_id": own}))
    with caplog.at_level(logging.INFO, logger="ekd"):
        _distill(tmp_path, corpus, "eos", student, **{"data.separator": "eos"})
    trained = [tokenizer.eos_token_id, own]
    for name in ("config.json", "generation_config.json"):
        assert (
            json.loads((tmp_path / "runs" / "eos" / "student" / name).read_text())["eos_token_id"] == trained
        )
    assert f"student: documents end with id {tokenizer.eos_token_id}" in caplog.text
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "runs" / "eos" / "student")
    assert exported.generation_config.eos_token_id == trained
    _distill(tmp_path, corpus, "auto", student)
    for name in ("config.json", "generation_config.json"):
        assert json.loads((tmp_path / "runs" / "auto" / "student" / name).read_text())["eos_token_id"] == own
    if importlib.util.find_spec("peft") is not None:  # review 106: an adapter export ships no config: said
        caplog.clear()
        with caplog.at_level(logging.INFO, logger="ekd"):
            lora = {"data.separator": "eos", "model.lora_r": 2, "model.lora_export": "adapter"}
            _distill(tmp_path, corpus, "adapter", student, **lora)
        assert f"an adapter export keeps its base's: pass eos_token_id={trained} to generate" in caplog.text
