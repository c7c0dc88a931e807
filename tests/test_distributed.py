"""Data parallelism: 2 gloo processes under torchrun equal one process with the same global batch."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from ekd.cli import main
from tiny import loss_curve, tiny_overrides, write_corpus


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
@pytest.mark.parametrize(
    "method", [["method=kd", "method.ce_weight=0.5"], ["method=sekd"]], ids=["kd+ce", "sekd"]
)
def test_two_ranks_equal_one_process(tmp_path, method):
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    common = ["train.max_steps=3", "eval.teacher=false", *method]
    single = tiny_overrides(tmp_path, corpus, "single", **{"train.micro_batch_size": 4}) + common
    assert main(["distill", *single]) == 0
    ddp = tiny_overrides(tmp_path, corpus, "ddp", **{"train.micro_batch_size": 2}) + common
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={_free_port()}",
        "-m",
        "ekd",
        "-q",
        "distill",
        *ddp,
    ]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stderr[-3000:]
    a, b = tmp_path / "runs" / "single", tmp_path / "runs" / "ddp"
    assert list(loss_curve(a).values()) == pytest.approx(list(loss_curve(b).values()), rel=1e-5)
    wa = AutoModelForCausalLM.from_pretrained(a / "student").state_dict()
    wb = AutoModelForCausalLM.from_pretrained(b / "student").state_dict()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=1e-4, atol=1e-5, msg=k)
