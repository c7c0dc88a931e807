"""A teacher's identity for ``ekd compare``: a fingerprint of its weight files by a sample of their bytes — the same
for a copy or a moved directory, another for a teacher retrained in place (try-out 39, F3; review 99)."""

from __future__ import annotations

import os
import shutil

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

from ekd.models.identity import weights_fingerprint


def test_a_copy_is_the_same_teacher_and_a_retrained_one_is_not(tmp_path):
    config = LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "t")
    first = weights_fingerprint(str(tmp_path / "t"))
    assert first is not None and first.startswith("sampled-sha256:")
    shutil.copytree(tmp_path / "t", tmp_path / "copy")  # other mtimes, other path
    os.utime(tmp_path / "copy" / "model.safetensors", (1, 1))
    assert weights_fingerprint(str(tmp_path / "copy")) == first
    torch.manual_seed(1)  # the same architecture trained on: every weight moves
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "t")
    assert weights_fingerprint(str(tmp_path / "t")) != first
    assert (
        weights_fingerprint("preset:llama-micro") is None and weights_fingerprint("Qwen/Qwen2.5-0.5B") is None
    )
