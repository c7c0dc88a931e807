"""Blocks without a target are not trained on (try-out 24): chat or prompt/response rows whose prompt (tool
definitions, a long context) fills whole blocks made steps that learned nothing — logged as `train/kd 0.0` over
one token — while AdamW's momentum and weight decay still moved the weights."""

from __future__ import annotations

import json
import logging
import random
import re
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from ekd.cli import main
from ekd.config import ConfigError, load_config
from ekd.data.packing import PackedBlocks
from ekd.train.trainer import _check_enough_blocks
from tiny import WORDS, tiny_overrides


def _rows(path: Path, n: int = 40, seed: int = 0) -> Path:
    """Prompt/response rows: a prompt of ~100 words (several 32-token blocks), a response of ~6."""
    rng = random.Random(seed)
    with path.open("w") as f:
        for _ in range(n):
            prompt = " ".join(rng.choice(WORDS) for _ in range(100))
            response = " ".join(rng.choice(WORDS) for _ in range(6))
            f.write(json.dumps({"prompt": prompt, "response": response}) + "\n")
    return path


def test_rows_with_targets_are_the_blocks_with_a_label_after_the_shift():
    mask = torch.zeros(5, 4, dtype=torch.bool)
    mask[1, 2] = True  # a target
    mask[2, 0] = True  # column 0 carries no label after the shift: no target
    mask[4] = True
    ids = torch.zeros(5, 4, dtype=torch.long)
    blocks = PackedBlocks(ids, mask, torch.arange(5))
    assert blocks.rows_with_targets().tolist() == [1, 4]
    # the scan runs in row chunks (a memory-mapped store is never loaded whole): the same rows across chunks
    chunked = PackedBlocks(ids, mask, torch.arange(5))
    chunked._row_chunks = lambda tokens=0: iter([slice(0, 2), slice(2, 5)])  # type: ignore[method-assign]
    assert chunked.rows_with_targets().tolist() == [1, 4]


def test_training_draws_only_blocks_with_a_target_and_says_how_many_it_leaves_out(tmp_path, caplog):
    source = _rows(tmp_path / "rows.jsonl")
    over = tiny_overrides(
        tmp_path,
        source,
        "pr",
        **{
            "data.prompt_field": "prompt",
            "data.response_field": "response",
            "method.preset": "kd",
            "train.micro_batch_size": 1,
            "train.max_steps": 8,
        },
    )
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert main(["distill", *over]) == 0
    said = [r.getMessage() for r in caplog.records if "hold no target" in r.getMessage()]
    assert len(said) == 1 and said[0].startswith("train: ") and "are not trained on" in said[0], said
    rows = [
        json.loads(line) for line in (tmp_path / "runs" / "pr" / "metrics.jsonl").read_text().splitlines()
    ]
    steps = [r for r in rows if "train/loss" in r]
    assert len(steps) == 8
    assert all(r["train/kd_tokens"] >= 1 and r["train/kd"] > 0 for r in steps), steps  # no empty step


def test_a_run_of_an_ekd_that_drew_every_block_resumes_exactly(tmp_path, monkeypatch, caplog):
    """Try-out 25: a run started before blocks without a target were left out resumed on another order (its
    saved position pointed into the shorter one) or was refused as an unreadable checkpoint, "delete it". Its
    checkpoints record no block count: it keeps drawing from every block, and continues exactly."""
    from ekd.data.loader import BlockLoader
    from ekd.train import trainer

    source = _rows(tmp_path / "rows.jsonl", seed=1)
    extra = {
        "data.prompt_field": "prompt",
        "data.response_field": "response",
        "method.preset": "kd",
        "train.micro_batch_size": 1,
        "train.checkpoint_every": 2,
        "train.max_steps": 6,
    }

    def metrics(name):
        rows = [json.loads(x) for x in (tmp_path / "runs" / name / "metrics.jsonl").read_text().splitlines()]
        return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}

    over = {name: tiny_overrides(tmp_path, source, name, **extra) for name in ("whole", "cut")}
    real_step, calls = trainer.forward_backward, []

    def interrupted(*args, **kwargs):  # Ctrl-C in step 4 (the checkpoint of step 2 is kept)
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real_step(*args, **kwargs)

    with monkeypatch.context() as old:  # the ekd before: every block drawn, no count in the loader state
        old.setattr(trainer, "blocks_with_targets", lambda blocks: torch.arange(len(blocks)))
        old.setattr(BlockLoader, "state_dict", lambda self: {"epoch": self.epoch, "position": self.position})
        assert main(["distill", *over["whole"]]) == 0
        old.setattr(trainer, "forward_backward", interrupted)
        assert main(["distill", *over["cut"]]) == 130
    with caplog.at_level(logging.INFO, logger="ekd"):
        assert main(["distill", *over["cut"], "--resume"]) == 0
    assert any("so that its order continues exactly" in r.getMessage() for r in caplog.records)
    whole, cut = metrics("whole"), metrics("cut")
    assert cut == whole and 0.0 in whole.values()  # bit for bit, the old draw's empty steps included


def test_a_step_larger_than_the_blocks_with_a_target_is_refused_without_advising_shorter_blocks(
    tmp_path, capsys
):
    """try-out 25: 'larger than the 2 training blocks; lower it, lower data.block_length or add data' counted
    only the blocks with a target without saying so, and shorter blocks leave more of them without one."""
    source = _rows(tmp_path / "rows.jsonl", n=3)
    fields = {"data.prompt_field": "prompt", "data.response_field": "response", "method.preset": "kd"}
    over = tiny_overrides(tmp_path, source, "few", **fields, **{"train.micro_batch_size": 6})
    assert main(["distill", *over]) == 2
    line = capsys.readouterr().err.strip()
    assert "\n" not in line, line
    found = re.search(r"train\.micro_batch_size=6 is more than the (\d+) of the (\d+) training blocks", line)
    assert found and int(found[1]) < 6 < int(found[2]), line
    assert line.endswith("a step draws from (those with a target); lower it or add data"), line
    assert "block_length" not in line


def test_the_step_counts_every_rank_s_rows():
    cfg = load_config([], ["train.micro_batch_size=2"])
    with pytest.raises(ConfigError) as refused:
        _check_enough_blocks(3, 3, False, cfg, SimpleNamespace(world_size=2))
    assert str(refused.value) == (
        "train.micro_batch_size=2 × 2 ranks = 4 rows per step is more than the 3 training blocks; lower it, "
        "lower data.block_length or add data"
    )
    _check_enough_blocks(4, 9, False, cfg, SimpleNamespace(world_size=2))  # enough
