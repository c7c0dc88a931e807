"""Under torchrun what rank 0 alone decides reaches every rank (``ekd.train.rank_work.run_on_main``): a
refusal, or a finished run's ``--resume``, ends every rank with the same exit code and one line printed by
rank 0 — never a rank left waiting in a collective (a gloo "Connection closed by peer" traceback).
Ctrl-C is reported once, by rank 0; ``train.cpu_offload`` is refused on CPU ranks and logged in one process.
"""

from __future__ import annotations

import json
import logging
import os

import pytest
import torch

from dist_runs import torchrun_runs
from ekd.train.run_dir import lock_run
from tiny import tiny_overrides, write_corpus


@pytest.mark.slow
def test_rank0_refusals_end_every_rank_alike(tmp_path):
    """One 2-rank torchrun: a run, its --resume once finished (exit 0 on both ranks, said once), the same
    run again without flags (exit 2 on both, one error line), ``train.cpu_offload`` on CPU ranks (exit 2, one
    line, no run directory), a run whose directory another process holds (exit 2, one line), then --resume with more steps: the ranks still work together."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    fin = [
        *tiny_overrides(tmp_path, corpus, "fin", **{"train.micro_batch_size": 2, "train.max_steps": 2}),
        "eval.teacher=false",
    ]
    off = [
        *tiny_overrides(tmp_path, corpus, "off", **{"train.micro_batch_size": 2}),
        "train.parallel=fsdp",
        "train.cpu_offload=true",
    ]
    # a run directory another ekd process uses (this one holds its lock): the job's rank 0 is refused, every
    # rank ends alike; the ranks of the job never lock each other out (the other runs train)
    busy = tiny_overrides(tmp_path, corpus, "busy", **{"train.micro_batch_size": 2})
    (tmp_path / "runs").mkdir()
    lock = lock_run(tmp_path / "runs" / "busy", "fix")
    # a --resume that would change the global batch (2 ranks × 1 row vs the checkpoint's 2 × 2): every rank finds
    # it alike, rank 0 says it (try-out 14: every rank printed it)
    other_batch = [*fin, "train.micro_batch_size=1", "train.max_steps=3", "--resume"]
    runs = [fin, [*fin, "--resume"], fin, off, busy, other_batch, [*fin, "train.max_steps=3", "--resume"]]
    codes = tmp_path / "codes"
    codes.mkdir()
    try:
        out = torchrun_runs(runs, tmp_path / "runs.json", {"EKD_TEST_CODES": str(codes)}, timeout=300)
    finally:
        lock.release()
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((codes / f"rank{rank}.json").read_text()) == [0, 0, 2, 2, 2, 2, 0], rank
    assert out.stdout.count("is already finished (2 steps)") == 1, out.stdout
    assert out.stderr.count("ekd: error:") == 4, out.stderr
    assert out.stderr.count("was trained with 2 ranks × micro-batch 2 = 4 rows per micro-batch") == 1, (
        out.stderr
    )
    assert out.stderr.count(f"is in use by another ekd process (pid {os.getpid()})") == 1, out.stderr
    assert not (tmp_path / "runs" / "busy").exists()
    assert out.stderr.count("already holds a run, finished (2 steps)") == 1
    assert out.stderr.count("train.cpu_offload needs a GPU") == 1
    assert "Traceback" not in out.stderr and "Connection closed" not in out.stderr
    assert not (tmp_path / "runs" / "off").exists()  # refused before anything was made
    rows = [
        json.loads(line) for line in (tmp_path / "runs" / "fin" / "metrics.jsonl").read_text().splitlines()
    ]
    assert max(r["step"] for r in rows) == 3


def test_ctrl_c_is_reported_by_rank_0_only(monkeypatch, capsys):
    import ekd.cli as cli_mod

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setitem(cli_mod.COMMANDS, "distill", interrupted)
    for rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("RANK", rank)
        assert cli_mod.main(["distill", "x.yaml"]) == 130
        err = capsys.readouterr().err
        assert len(err.splitlines()) == lines and err.count("ekd: interrupted") == lines, (rank, err)


def test_a_config_error_is_printed_once_per_node(monkeypatch, capsys):
    """Every rank of a node loads the same config and raises the same error before any process group exists:
    local rank 0 prints it, the others exit 2 silently (it was printed once per rank). Other errors are each
    rank's own data and still printed."""
    import ekd.cli as cli_mod
    from ekd.errors import ModelError
    from ekd.teacher.cache.format import CacheError

    monkeypatch.setenv("RANK", "1")
    for local_rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        assert cli_mod.main(["distill", "train.max_step=3"]) == 2
        err = capsys.readouterr().err
        assert err.count("unknown key 'train.max_step'") == lines, (local_rank, err)

    def raises(e):
        def command(args):
            raise e

        return command

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setitem(cli_mod.COMMANDS, "distill", raises(ModelError("model.student: no such directory")))
    assert cli_mod.main(["distill", "x.yaml"]) == 2
    assert (
        capsys.readouterr().err == ""
    )  # the same name check fails on local rank 0, which says it (try-out 6)
    monkeypatch.setitem(cli_mod.COMMANDS, "distill", raises(CacheError("shard-00001.bin is corrupted")))
    assert cli_mod.main(["distill", "x.yaml"]) == 2
    assert "shard-00001.bin is corrupted" in capsys.readouterr().err  # this rank's own shard: its own line


def test_a_copy_of_rank_0s_error_is_not_printed_again(monkeypatch, capsys):
    """The other ranks' copy of rank 0's error (same class, same message) exits with rank 0's code, silently:
    2 for a refusal, 0 for a finished run's --resume; rank 0's own error is printed."""
    import ekd.cli as cli_mod
    from ekd.config import load_config
    from ekd.errors import RunDirError
    from ekd.train.rank_work import _rank0_error
    from ekd.train.run_dir import RunFinished

    def raises(e):
        def train(*args, **kwargs):
            raise e

        return train

    monkeypatch.setattr("ekd.config.load_config", lambda *a, **k: load_config(None, []))
    for kind, code, stream in ((RunDirError, 2, "err"), (RunFinished, 0, "out")):
        copy = _rank0_error(kind, "runs/x: the message", "open the run directory")
        assert type(copy) is kind and str(copy) == "runs/x: the message"
        for error, lines in ((copy, 0), (kind("runs/x: the message"), 1)):
            monkeypatch.setattr("ekd.train.trainer.train", raises(error))
            assert cli_mod.main(["distill", "x.yaml"]) == code
            captured = capsys.readouterr()
            assert getattr(captured, stream).count("runs/x: the message") == lines, (kind, captured)
    bug = _rank0_error(None, "OSError: boom", "open the run directory")  # a traceback on rank 0: said here
    assert str(bug) == "rank 0 could not open the run directory: OSError: boom"


def test_cpu_offload_needs_a_gpu_under_torchrun_and_is_a_logged_no_op_in_one_process(caplog):
    from ekd.config import ConfigError, load_config
    from ekd.train.distributed import Ranks, check_cpu_offload, data_parallel

    cfg = load_config(None, ["train.parallel=fsdp", "train.cpu_offload=true"])
    cpu = torch.device("cpu")
    with pytest.raises(ConfigError, match="train.cpu_offload needs a GPU") as e:
        check_cpu_offload(cfg, Ranks(0, 2, cpu))
    assert "\n" not in str(e.value)
    check_cpu_offload(cfg, Ranks(0, 1, cpu))  # one process: nothing to refuse
    check_cpu_offload(load_config(None, ["train.parallel=fsdp"]), Ranks(0, 2, cpu))
    with caplog.at_level(logging.INFO, logger="ekd.train.distributed"):
        assert data_parallel(torch.nn.Linear(2, 2), {}, Ranks(0, 1, cpu), cfg) is None
    assert "train.cpu_offload: one process, nothing is sharded or offloaded" in caplog.text
