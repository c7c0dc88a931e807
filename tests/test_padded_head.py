"""A head padded past the tokenizer (Qwen's 151,936 rows for 151,665 tokens): on-policy sampling never draws
a padded row, so no id ≥ V becomes an input or a label (the teacher's 300-row embedding would fail on it)."""

from __future__ import annotations

import json

import pytest
import torch

from ekd.config import MethodConfig
from ekd.data.collate import Batch, shift_labels
from ekd.models.load import build_preset, save_model_dir
from ekd.train.onpolicy import maybe_on_policy
from tiny import tiny_overrides, write_corpus

V, ROWS, EOS = 300, 308, 1


def _padded_student(vocab: int = V, rows: int = ROWS) -> torch.nn.Module:
    """llama-micro with ``rows`` head rows for ``vocab`` tokens; the padded rows would win every draw."""
    model = build_preset("llama-micro", rows, EOS, seed=0)
    with torch.no_grad():
        model.lm_head.weight[vocab:] = model.lm_head.weight[:vocab].sum(0) * 0.0 + 3.0  # logits ≫ real rows
    return model


def _batch(B=2, T=24) -> Batch:
    ids = torch.randint(3, V, (B, T), generator=torch.Generator().manual_seed(0))  # (B, T)
    target = torch.ones_like(ids, dtype=torch.bool)
    target[:, 0] = False
    return Batch(ids, shift_labels(ids, target), torch.ones_like(ids), torch.arange(B))


def test_on_policy_samples_only_tokenizer_ids():
    student = _padded_student()
    method = MethodConfig(student_data_fraction=1.0, max_new_tokens=16, prompt_tokens=8)
    batch = _batch()
    unmasked, _ = maybe_on_policy(batch, student, method, torch.Generator().manual_seed(0), EOS)
    generated = unmasked.input_ids[:, 8:]  # (B, 16) sampled continuations
    assert int((generated >= V).sum()) > 0  # the fault: padded ids are drawn when nothing masks them

    out, on = maybe_on_policy(batch, student, method, torch.Generator().manual_seed(0), EOS, vocab_size=V)
    assert on
    assert int(out.input_ids.max()) < V
    assert int(out.labels[out.labels != -100].max()) < V
    assert (out.input_ids[:, 8:] != batch.input_ids[:, 8:]).any()  # it did sample


def test_gkd_with_a_padded_student_head_trains(tmp_path):
    """End to end: a saved student with 8 padded head rows, its tokenizer, a preset teacher of V rows."""
    from ekd.cli import main
    from ekd.data import train_bpe_tokenizer

    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    texts = [p.read_text() for p in sorted(corpus.iterdir())]
    tokenizer = train_bpe_tokenizer(texts, 300)
    vocab = len(tokenizer)
    student_dir = save_model_dir(
        _padded_student(vocab, vocab + 8), tokenizer, tmp_path / "padded-student"
    )  # HF directory: 8 padded rows
    args = tiny_overrides(
        tmp_path,
        corpus,
        "gkd-padded",
        **{
            "model.student": str(student_dir),
            "model.tokenizer": "student",
            "model.teacher": "preset:llama-micro",
            "train.max_steps": 2,
            "eval.teacher": False,
        },
    )
    extra = [
        "method=gkd",
        "method.student_data_fraction=1.0",
        "method.max_new_tokens=12",
        "method.prompt_tokens=8",
    ]
    assert main(["distill", *args, *extra]) == 0
    metrics = [json.loads(line) for line in (tmp_path / "runs" / "gkd-padded" / "metrics.jsonl").open()]
    assert any("train/loss" in m for m in metrics)


def test_a_teacher_with_mass_on_its_padded_rows_is_named_at_load(tmp_path, caplog):
    """Try-out 12: a teacher whose full-head softmax put 40% of its probability on the rows past the tokenizer
    (a sign of a teacher trained with another tokenizer) loaded with the same line as a clean one; only a
    'ppl (full head)' column at the very end showed it. One warning line at load now, with the share; a
    teacher without padded rows (0%) gives none."""
    from ekd.cli import main
    from ekd.data import train_bpe_tokenizer

    corpus = write_corpus(tmp_path / "corpus", n_docs=12)
    tokenizer = train_bpe_tokenizer([p.read_text() for p in sorted(corpus.iterdir())], 300)
    vocab = len(tokenizer)
    hot = save_model_dir(_padded_student(vocab, vocab + 8), tokenizer, tmp_path / "hot-teacher")
    plain = save_model_dir(
        build_preset("llama-micro", vocab, EOS, seed=0), tokenizer, tmp_path / "plain-teacher"
    )
    for teacher, warned in ((hot, True), (plain, False)):
        args = tiny_overrides(
            tmp_path,
            corpus,
            teacher.name,
            **{
                "model.teacher": str(teacher),
                "model.student": "preset:llama-micro",
                "model.tokenizer": "teacher",
                "train.max_steps": 1,
            },
        )
        caplog.clear()
        assert main(["distill", *args, "eval.teacher=false"]) == 0
        lines = [r.getMessage() for r in caplog.records if "past the tokenizer's" in r.getMessage()]
        assert len(lines) == int(warned), lines
        if warned:
            share = float(lines[0].split("model.teacher puts ")[1].split("%")[0])
            assert 50 < share <= 100 and f"past the tokenizer's {vocab:,} tokens" in lines[0], lines


def test_padded_head_mass_is_the_full_head_softmax_past_the_tokenizer():
    """Review: the warning test's clean teacher had no padded rows (0.0 before any softmax). The measure itself,
    on logits with 8 rows past V: ~0 when they are far below the rest (a trained head), large when they win."""
    from types import SimpleNamespace

    from ekd.models.load import padded_head_mass

    class Fixed(torch.nn.Module):
        def __init__(self, padded: float):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(()))
            self.head = torch.nn.Linear(1, V + 8, bias=False)  # the rows the logits have
            self.padded = padded

        def get_output_embeddings(self):
            return self.head

        def forward(self, input_ids, use_cache=False):
            logits = torch.zeros(1, input_ids.shape[1], V + 8)
            logits[..., V:] = self.padded
            return SimpleNamespace(logits=logits)

    ids = torch.zeros(1, 4, dtype=torch.long)
    assert padded_head_mass(Fixed(-30.0), V, ids) < 1e-9
    assert padded_head_mass(Fixed(0.0), V, ids) == pytest.approx(8 / (V + 8))
    assert padded_head_mass(Fixed(10.0), V, ids) > 0.9
    assert padded_head_mass(Fixed(10.0), V + 8, ids) == 0.0  # no row past the tokenizer

    class Unpadded(Fixed):
        def forward(self, input_ids, use_cache=False):
            raise AssertionError(
                "a head of V rows needs no forward (try-out 16: it crashed a short-position teacher)"
            )

    unpadded = Unpadded(0.0)
    unpadded.head = torch.nn.Linear(1, V, bias=False)
    assert padded_head_mass(unpadded, V, ids) == 0.0
