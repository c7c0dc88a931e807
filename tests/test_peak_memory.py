"""train/peak_memory_gib: a run's memory beside its time, in metrics.jsonl and the end-of-run log — on CPU the
process's peak resident set (ru_maxrss), on a GPU torch's max_memory_allocated (an H200 run measured the step;
docs/benchmarks.md "GPU checks")."""

from __future__ import annotations

import json
import logging
import resource

import torch

from ekd.cli import main
from ekd.train.memory import peak_memory_bytes
from tiny import tiny_overrides, write_corpus


def test_peak_memory_on_cpu_is_the_process_peak_rss() -> None:
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    peak = peak_memory_bytes(torch.device("cpu"))
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    assert before <= peak <= after and peak > 2**20


def test_every_logged_step_records_the_peak_so_far_and_the_run_says_it(tmp_path, caplog) -> None:
    corpus = write_corpus(tmp_path / "corpus")
    args = tiny_overrides(tmp_path, corpus, "mem", **{"train.max_steps": 4})
    with caplog.at_level(logging.INFO, logger="ekd.train.trainer"):
        assert main(["-q", "distill", "configs/demo.yaml", *args]) == 0
    rows = [json.loads(x) for x in (tmp_path / "runs" / "mem" / "metrics.jsonl").read_text().splitlines()]
    peaks = [r["train/peak_memory_gib"] for r in rows if "train/loss" in r]
    assert len(peaks) == 4 and peaks == sorted(peaks)  # a peak so far: never falls
    rss_now = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / 2**30
    assert peaks[0] > 0.01 and peaks[-1] <= rss_now  # this process's RSS, read while it trained
    said = [r.getMessage() for r in caplog.records if r.getMessage().startswith("peak ")]
    assert said == [f"peak host memory (peak RSS): {peaks[-1]:.2f} GiB (train/peak_memory_gib)"]


def test_every_training_row_records_the_wall_seconds_of_its_steps(tmp_path, monkeypatch) -> None:
    """Try-out 97 F1: no row said how long a step took — `train/tokens_per_s` averages the whole segment,
    evaluations and checkpoints included, so a slowdown late in a long run hardly moved it. `train/step_s` is the
    mean over the steps since the previous row, evaluations left out: here each periodic evaluation is made to
    take 2 s more, and no row's step time holds them."""
    import time

    import ekd.train.trainer as trainer

    evaluate = trainer.evaluate_run

    def slow_evaluation(*args, **kwargs):
        time.sleep(2.0)
        return evaluate(*args, **kwargs)

    monkeypatch.setattr(trainer, "evaluate_run", slow_evaluation)
    corpus = write_corpus(tmp_path / "corpus")
    overrides = {"train.max_steps": 6, "log.every": 2, "eval.every": 1, "train.checkpoint_every": 1}
    args = tiny_overrides(tmp_path, corpus, "times", **overrides)
    assert main(["-q", "distill", "configs/demo.yaml", *args]) == 0
    rows = [json.loads(x) for x in (tmp_path / "runs" / "times" / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in rows if "train/loss" in r]
    assert [r["step"] for r in train] == [2, 4, 6]
    # the loop's wall time at the last row, periodic evaluations (steps 1-5) and checkpoints included
    loop_s = sum(r["train/tokens"] for r in train) * 2 / train[-1]["train/tokens_per_s"]
    assert loop_s > 5 * 2.0
    step_s = [r["train/step_s"] for r in train]
    assert all(0 < s < 1.0 for s in step_s), step_s  # a tiny model's step; each window held 2 s evaluations
