"""Shared helpers for end-to-end tests: a tiny text corpus on disk and a tiny-model config."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = [
    "def",
    "class",
    "return",
    "import",
    "self",
    "value",
    "index",
    "items",
    "result",
    "yield",
    "lambda",
    "while",
    "for",
    "in",
    "if",
    "else",
    "print",
    "open",
    "read",
    "write",
    "list",
    "dict",
    "tuple",
    "set",
    "range",
    "len",
    "sum",
    "min",
    "max",
    "sorted",
]


def write_corpus(root: Path, n_docs: int = 24, seed: int = 0) -> Path:
    """A directory of small Python-like text files (deterministic)."""
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(n_docs):
        lines = []
        for _ in range(rng.randint(8, 16)):
            indent = "    " * rng.randint(0, 2)
            lines.append(indent + " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8))) + ":")
        (root / f"doc_{i:03d}.py").write_text("\n".join(lines) + "\n")
    return root


def tiny_overrides(tmp: Path, corpus: Path, name: str = "t", **extra: object) -> list[str]:
    """Overrides for a few-second CPU run on the corpus: micro student, tiny random teacher, BPE 320."""
    base = {
        "run.name": name,
        "run.output_dir": str(tmp / "runs"),
        "data.source": str(corpus),
        "data.block_length": 32,
        "data.eval_fraction": 0.2,
        "data.max_eval_blocks": 4,
        "model.student": "preset:llama-micro",
        "model.teacher": "preset:llama-tiny",
        "model.tokenizer": "train_bpe",
        "model.bpe_vocab_size": 320,
        "train.max_steps": 3,
        "train.micro_batch_size": 4,
        "train.warmup_steps": 1,
        "train.lr": 1e-3,
        "eval.batch_size": 4,
        "eval.plots": False,
        "log.progress": False,
        "log.tensorboard": False,
    }
    base.update(extra)
    return [f"{k}={v}" for k, v in base.items()]


def config_file(tmp: Path, corpus: Path, name: str, **extra: object) -> str:
    """The tiny overrides written as a YAML config file (so the CLI is driven by a file, as users do)."""
    import yaml

    nested: dict = {}
    for item in tiny_overrides(tmp, corpus, name, **extra):
        key, value = item.split("=", 1)
        section, field = key.split(".", 1)
        nested.setdefault(section, {})[field] = yaml.safe_load(value)
    path = tmp / f"{name}.yaml"
    path.write_text(yaml.safe_dump(nested))
    return str(path)


def loss_curve(run_dir: Path) -> dict[int, float]:
    """step → train/loss from a run's metrics.jsonl."""
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


def crash_then_resume(cfg, monkeypatch, crash_step: int = 4):
    """Train ``cfg`` until it is killed at ``crash_step`` (after a checkpoint), then ``--resume`` it."""
    import pytest

    from ekd.train import trainer as trainer_mod

    real = trainer_mod.forward_backward

    def crash(micro, student, teacher, parts, step, *args, **kwargs):
        if step == crash_step:
            raise KeyboardInterrupt  # killed mid-run, after the last checkpoint
        return real(micro, student, teacher, parts, step, *args, **kwargs)

    monkeypatch.setattr(trainer_mod, "forward_backward", crash)
    with pytest.raises(KeyboardInterrupt):
        trainer_mod.train(cfg)
    monkeypatch.setattr(trainer_mod, "forward_backward", real)
    return trainer_mod.train(cfg, resume=True)
