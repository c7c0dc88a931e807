"""Every method preset runs from the CLI on tiny models and changes the student; stateful methods resume exactly."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from ekd.cli import main
from ekd.config import load_config
from ekd.methods import presets
from ekd.models.load import build_preset
from ekd.train.trainer import train
from tiny import crash_then_resume, loss_curve, tiny_overrides, write_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return write_corpus(tmp_path_factory.mktemp("corpus"), n_docs=24)


# The model matrix: (student preset, teacher preset). Every method preset runs on plain Llama heads and on
# Granite-style heads (logits / logits_scaling) with a tied-embedding student: one extra run per preset
# covers tied checkpoints (EMA copy, initial student), scaled student logits and scaled teacher logits.
MODELS = {
    "llama": ("llama-micro", "llama-tiny"),
    "granite-tied": ("granite-micro", "granite-tiny"),
}
MATRIX = [(preset, models) for preset in presets.names() for models in MODELS]


@pytest.mark.slow
@pytest.mark.parametrize("preset, models", MATRIX, ids=[f"{p}-{m}" for p, m in MATRIX])
def test_preset_runs_from_the_cli_and_changes_the_student(tmp_path, corpus, preset, models):
    student_preset, teacher_preset = MODELS[models]
    extra = ["method.max_new_tokens=6", "method.prompt_tokens=8"] if preset == "gkd" else []
    overrides = {
        "train.max_steps": 2,
        "eval.teacher": False,
        "model.student": f"preset:{student_preset}",
        "model.teacher": f"preset:{teacher_preset}",
    }
    args = ["distill", *tiny_overrides(tmp_path, corpus, preset, **overrides), f"method={preset}", *extra]
    assert main(args) == 0
    run_dir = tmp_path / "runs" / preset
    student = AutoModelForCausalLM.from_pretrained(run_dir / "student")
    initial = build_preset(student_preset, student.config.vocab_size, student.config.eos_token_id, seed=0)
    assert type(student) is type(initial)
    assert student.config.tie_word_embeddings == initial.config.tie_word_embeddings
    changed = [
        n for (n, a), b in zip(student.named_parameters(), initial.parameters()) if not torch.equal(a, b)
    ]
    assert changed, f"{preset} did not change the student"
    metrics = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert all(torch.isfinite(torch.tensor(m["train/loss"])) for m in metrics if "train/loss" in m)


def test_feature_projection_is_trained_but_not_exported(tmp_path, corpus):
    cfg = load_config(
        overrides=tiny_overrides(tmp_path, corpus, "egad")
        + ["method=egad", "train.max_steps=2", "method.feature_weight=1.0"]
    )
    result = train(cfg)
    exported = AutoModelForCausalLM.from_pretrained(result.run_dir / "student").state_dict()
    assert not any("projection" in k for k in exported)
    from safetensors.torch import load_file

    extra = load_file(str(result.run_dir / "checkpoints" / "step-000002" / "extra.safetensors"))
    assert any(k.startswith("feature_projection.") for k in extra)
    from ekd.losses.features import FeatureProjection

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.run.seed + 17)  # the initial projection, as MethodParts.attach_models makes it
        initial = FeatureProjection(32, 64).state_dict()
    trained = {k.split(".", 1)[1]: v for k, v in extra.items() if k.startswith("feature_projection.")}
    assert trained.keys() == initial.keys()
    assert any(not torch.equal(trained[k], initial[k]) for k in initial), (
        "the projection must receive gradient updates"
    )
    logged = [
        m
        for m in map(json.loads, (result.run_dir / "metrics.jsonl").read_text().splitlines())
        if "train/loss" in m
    ]
    for key in (
        "select/fraction",
        "select/feature_share",
        "select/hard_fraction",
        "select/tau_mean",
        "select/phase",
    ):
        assert all(key in m for m in logged), key
    assert 0 < logged[-1]["select/feature_share"] < 1


@pytest.mark.slow
@pytest.mark.parametrize(
    "method",
    [
        ["method=gls", "method.gls_queue_size=50"],
        [
            "method=adakd",
            "method.latf_warmup_fraction=0.2",
            "method.latf_step=0.3",
            "method.latf_tolerance=0.0",
        ],
        ["method=bandit"],
        ["method=bandit", "method.bandit_kind=exp3", "method.scorer=student_entropy"],
        ["method=egad"],
        ["method=ema_self_distill"],
        ["method=ema_self_distill", "model.student=preset:llama-micro-tied"],
    ],
    ids=["gls", "latf", "linucb", "exp3", "egad-curriculum", "ema", "ema-tied"],
)
def test_stateful_methods_resume_exactly(tmp_path, corpus, monkeypatch, method):
    extra = ["train.max_steps=6", "train.checkpoint_every=3", "eval.teacher=false", *method]
    expected = loss_curve(
        train(load_config(overrides=tiny_overrides(tmp_path, corpus, "full") + extra)).run_dir
    )
    cfg = load_config(overrides=tiny_overrides(tmp_path, corpus, "crash") + extra)
    got = loss_curve(crash_then_resume(cfg, monkeypatch).run_dir)
    assert sorted(got) == sorted(expected) == [1, 2, 3, 4, 5, 6]
    for step in expected:
        assert got[step] == pytest.approx(expected[step], rel=1e-5, abs=1e-7), (step, got, expected)


def test_the_bandit_preset_selects_at_most_its_budget(tmp_path, corpus):
    """try-out 28: the `bandit` preset (budget 0.2, threshold 0) selected 50% at every step — UCB > 0 at every
    token — and its KD term, divided by the 0.2·N target, weighed 2.5× the per-token mean. Its most selected is
    now its budget, so the term weighs at most 1×."""
    run = train(
        load_config(
            overrides=tiny_overrides(tmp_path, corpus, "bandit") + ["method=bandit", "train.max_steps=4"]
        )
    )
    rows = [json.loads(line) for line in (run.run_dir / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if "select/count" in r]
    assert len(steps) == 4
    for r in steps:
        assert 0 < r["select/count"] <= r["train/kd_tokens"] + 4, r  # Σ⌈0.2·n_i⌉ over 4 rows ≤ 0.2·N + 4
