"""Counts in messages say '1 step', '2 steps' (``ekd.words.counted``; try-out 9: "1 steps", "1 documents",
"1 layers")."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from ekd.cli import _run_summary
from ekd.data.packing import packed_line
from ekd.words import counted


@pytest.mark.parametrize(
    "n, noun, said",
    [
        (1, "step", "1 step"),
        (0, "step", "0 steps"),
        (2, "step", "2 steps"),
        (1, "ekd output directory", "1 ekd output directory"),
        (3, "ekd output directory", "3 ekd output directories"),
        (2, "key", "2 keys"),  # a vowel before the y
        (2, "process", "2 processes"),
        (2, "prompt_logprobs entry", "2 prompt_logprobs entries"),
        (2, "GPU", "2 GPUs"),
    ],
)
def test_counted_says_one_thing_and_several_things(n, noun, said):
    assert counted(n, noun) == said


def test_counted_formats_the_number():
    assert counted(1234, "token", fmt=",") == "1,234 tokens"
    assert counted(1, "person", "people") == "1 person" and counted(5, "person", "people") == "5 people"


def test_the_messages_try_outs_found_say_one_in_the_singular():
    assert (
        packed_line("eval", 1, 1, 1, 32, 1)
        == "eval: packed 1 document, 1 token into 1 block of 32 (1 target)"
    )
    assert packed_line("train", 15, 2496, 78, 32, 2404) == (
        "train: packed 15 documents, 2496 tokens into 78 blocks of 32 (2404 targets)"  # as before
    )
    run = SimpleNamespace(steps=1, wall_time=3.0, kd_fraction=0.5, resumed_at=None)
    assert _run_summary(run) == "1 step, 3 s, KD positions 50.0%"
