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
