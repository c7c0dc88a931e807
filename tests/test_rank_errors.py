"""Under torchrun what rank 0 alone decides reaches every rank (``ekd.train.rank_work.run_on_main``): a
refusal, or a finished run's ``--resume``, ends every rank with the same exit code and one line printed by
rank 0 — never a rank left waiting in a collective (a gloo "Connection closed by peer" traceback). A rank that
ends on its own mid-run (its cache shard failing its CRC, ``kill -9``) leaves the others one line from rank 0
with the checkpoint kept, not a traceback, even when torchrun's SIGTERM reaches them while they end.
Ctrl-C is reported once, by rank 0; ``train.cpu_offload`` is refused on CPU ranks and logged in one process.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist

from dist_runs import gloo_ranks, torchrun_runs
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
    # a teacher cache not built: every rank would find it, rank 0 says it (try-out 23: printed by both ranks)
    no_cache = [
        *tiny_overrides(tmp_path, corpus, "nocache", **{"train.micro_batch_size": 2}),
        "method=rskd",
        "teacher.source=cache",
        f"teacher.cache_dir={tmp_path / 'no-cache'}",
    ]
    # try-out 80, F1/F2: ranks launched with different settings trained in silence (another lr on rank 1) or hung
    # (other step counts): refused at the start, by rank 0, on every rank alike, before anything is made
    mixed = tiny_overrides(tmp_path, corpus, "mixed", **{"train.micro_batch_size": 2})
    runs = [
        fin,
        [*fin, "--resume"],
        fin,
        off,
        busy,
        other_batch,
        no_cache,
        {"0": mixed, "1": [*mixed, "train.lr=0.002"]},
        {"0": mixed, "1": [*mixed, "train.max_steps=5", "log.level=DEBUG"]},
        {"0": mixed, "1": [*mixed, f"run.output_dir={tmp_path / 'elsewhere'}"]},
        # try-out 151, F2: a mistake in one rank's command line ended that rank before the job's group existed,
        # and left the other waiting in the rendezvous (a node held for the whole timeout): it joins to say it
        {"0": mixed, "1": [*mixed, "train.max_step=9"]},
        {"0": [*mixed, "train.max_step=9"], "1": mixed},
        {"0": mixed, "1": [*mixed, "--overwite"]},  # try-out 153, N1: a flag typo on one node alike
        [*fin, "train.max_steps=3", "--resume"],
    ]
    codes = tmp_path / "codes"
    codes.mkdir()
    try:
        out = torchrun_runs(runs, tmp_path / "runs.json", {"EKD_TEST_CODES": str(codes)}, timeout=300)
    finally:
        lock.release()
    assert out.returncode == 0, out.stderr[-3000:]
    for rank in (0, 1):
        assert json.loads((codes / f"rank{rank}.json").read_text()) == [0, 0, *[2] * 11, 0], rank
    assert out.stdout.count("is already finished (2 steps)") == 1, out.stdout
    assert out.stderr.count("ekd: error:") == 11, out.stderr
    assert (
        out.stderr.count(
            "could not read its command line or config files: ekd distill: unrecognized arguments: --overwite"
        )
        == 1
    ), out.stderr
    typo = "unknown key 'train.max_step'; did you mean 'train.max_steps'?"
    relayed = f"ekd: error: torchrun: rank 1 (host {socket.gethostname()}) could not read its command line or config"
    assert out.stderr.count(relayed) == 2, out.stderr  # a key typo, a flag typo
    assert out.stderr.count(typo) == 2, out.stderr  # rank 1's, said by rank 0; rank 0's own
    different = "ekd: error: torchrun: the ranks of this job were given different settings: "
    assert out.stderr.count(different + "train.lr (rank 0: 0.001, rank 1: 0.002); every rank must run ") == 1
    # the step count is compared, a log setting is not (rank 0 reports: try-out 82, F2)
    assert out.stderr.count(different + "train.max_steps (rank 0: 3, rank 1: 5); every rank must run ") == 1
    # on one machine a path is compared as given (try-out 82, F1: another cache_dir broke the build)
    elsewhere = f"run.output_dir (rank 0: {tmp_path / 'runs'}, rank 1: {tmp_path / 'elsewhere'}); every rank"
    assert out.stderr.count(different + elsewhere) == 1, out.stderr
    assert not (tmp_path / "runs" / "mixed").exists() and not (tmp_path / "elsewhere").exists()
    assert out.stderr.count(f"teacher.cache_dir {tmp_path / 'no-cache'} does not exist") == 1, out.stderr
    assert out.stderr.count("was trained with 2 ranks × micro-batch 2 = 4 rows per micro-batch") == 1, (
        out.stderr
    )
    assert out.stderr.count(f"is in use by another ekd process (pid {os.getpid()})") == 1, out.stderr
    assert not (tmp_path / "runs" / "busy").exists()
    assert out.stderr.count("already holds a run, finished (2 steps)") == 1
    assert out.stderr.count("train.cpu_offload needs a GPU") == 1
    assert "Traceback" not in out.stderr and "Connection closed" not in out.stderr
    assert not (tmp_path / "runs" / "off").exists()  # refused before anything was made
    assert not (tmp_path / "runs" / "nocache").exists()
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
    # try-out 37: a cache directory holding something else is the same on every rank: said once per node
    foreign = CacheError("teacher.cache_dir runs/kd is not empty and holds no teacher cache")
    foreign.same_on_every_rank = True
    monkeypatch.setitem(cli_mod.COMMANDS, "distill", raises(foreign))
    assert cli_mod.main(["distill", "x.yaml"]) == 2
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    "argv", [["distill", "x.yaml", "--resme"], ["distil", "x.yaml"], ["--debugg", "distill"]]
)
def test_a_command_line_argparse_refuses_is_printed_once_per_node(monkeypatch, capsys, argv):
    """Try-out 37: `torchrun ... -m ekd distill CONFIG --resme` printed its 'did you mean' line once per rank."""
    import ekd.cli as cli_mod

    for local_rank, lines in (("1", 0), ("0", 1)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        with pytest.raises(SystemExit) as stop:
            cli_mod.main(argv)
        assert stop.value.code == 2
        assert capsys.readouterr().err.count(": error:") == lines, (local_rank, argv)


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


def test_cpu_offload_needs_a_gpu_under_torchrun_and_is_a_warned_no_op_in_one_process(caplog):
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
        fsdp = load_config(None, ["train.parallel=fsdp"])  # try-out 23: said for teacher.placement only
        assert data_parallel(torch.nn.Linear(2, 2), {}, Ranks(0, 1, cpu), fsdp) is None
    offload = [r for r in caplog.records if "train.cpu_offload: one process" in r.getMessage()]
    assert [r.levelname for r in offload] == ["WARNING"]  # a setting that saves no memory is said as such
    assert (
        "nothing is sharded or offloaded — the student, its gradients and AdamW state stay whole on cpu"
        in (offload[0].getMessage())
    )
    assert "train.parallel=fsdp: one process, the student stays whole" in caplog.text


GLOO_CLOSED = (
    "[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/pair.cc:553] Connection closed by peer "
    "[127.0.0.1]:49387. This is typically caused by a remote worker crashing. GLHF!"
)
GLOO_RESET_IN_DDP_HOOK = (
    "Got the following error when running the callback: RuntimeError: [/__w/pytorch/pytorch/third_party/gloo/"
    "gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:29099: Connection reset by peer.\n\nAt:\n  x.py(1)"
)


def test_a_lost_peer_is_one_line_from_rank_0_and_exit_1(monkeypatch, capsys):
    """Under torchrun a collective whose peer has gone (gloo's RuntimeError, raised as is or inside DDP's
    hook; torch's DistBackendError) ends the rank with exit 1 and no traceback: rank 0 prints one line with the
    hint train() attached, the other ranks nothing. In one process, or for another RuntimeError, or with
    --debug, the traceback stays (try-out 23, finding 4)."""
    import torch.distributed as dist

    import ekd.cli as cli_mod

    def raises(e):
        def command(args):
            raise e

        return command

    hint = "; checkpoint step-000010 is kept: continue with the same command and --resume"
    monkeypatch.setenv("WORLD_SIZE", "2")
    for error in (
        RuntimeError(GLOO_CLOSED),
        RuntimeError(GLOO_RESET_IN_DDP_HOOK),
        dist.DistBackendError("x"),
    ):
        error.continue_hint = hint
        monkeypatch.setitem(cli_mod.COMMANDS, "distill", raises(error))
        for rank, said in (("0", [f"ekd: error: {cli_mod.LOST_PEER_LINE}{hint}"]), ("1", [])):
            monkeypatch.setenv("RANK", rank)
            assert cli_mod.main(["distill", "x.yaml"]) == 1
            assert capsys.readouterr().err.splitlines() == said, (error, rank)
        with pytest.raises(type(error)):
            cli_mod.main(["--debug", "distill", "x.yaml"])
    monkeypatch.setitem(
        cli_mod.COMMANDS, "distill", raises(RuntimeError("expected a tensor of shape (2, 3)"))
    )
    with pytest.raises(RuntimeError, match="expected a tensor"):  # a bug keeps its traceback
        cli_mod.main(["distill", "x.yaml"])
    monkeypatch.setenv("WORLD_SIZE", "1")
    monkeypatch.setitem(cli_mod.COMMANDS, "distill", raises(RuntimeError(GLOO_CLOSED)))
    with pytest.raises(RuntimeError, match="Connection closed by peer"):  # one process: no peer to lose
        cli_mod.main(["distill", "x.yaml"])


def test_sigterm_while_a_lost_peer_unwinds_keeps_the_line_and_the_checkpoint_hint(
    monkeypatch, tmp_path, capsys
):
    """torchrun sends SIGTERM to rank 0 once another rank has died, often while rank 0 is already ending on
    the lost peer (tearing down its process groups): the SIGTERM must not replace that error and its hint by
    the generic ``interrupted (SIGTERM); continue from the last checkpoint ...`` (try-out 23, finding 5)."""
    import signal
    from contextlib import contextmanager

    import ekd.cli as cli_mod
    from ekd.config import load_config
    from ekd.train import trainer
    from ekd.train.distributed import Ranks

    @contextmanager
    def distributed_whose_teardown_gets_sigterm(device, agree=None):
        try:
            yield Ranks(0, 2, torch.device("cpu"))
        except BaseException:
            os.kill(os.getpid(), signal.SIGTERM)  # torchrun's, while the groups end
            sum(range(10_000))  # Python runs the handler between bytecodes
            raise

    class Started:  # a run that has started and saved step 10
        run_dir, committed = tmp_path / "run", True
        resume, overwrite = False, False  # a plain `ekd distill CONFIG`

        def __init__(self, *args):
            (self.run_dir / "checkpoints" / "step-000010").mkdir(parents=True)

        def rollback(self):
            pass

        def close(self):
            pass

    def lost_peer_mid_step(*args):
        raise RuntimeError(GLOO_CLOSED)

    monkeypatch.setattr("ekd.config.load_config", lambda *a, **k: load_config(None, []))
    monkeypatch.setattr(trainer, "distributed", distributed_whose_teardown_gets_sigterm)
    monkeypatch.setattr(trainer, "RunStart", Started)
    monkeypatch.setattr(trainer, "_train", lost_peer_mid_step)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    before = signal.getsignal(signal.SIGTERM)
    assert cli_mod.main(["distill", "x.yaml"]) == 1
    hint = "; checkpoint step-000010 is kept: continue with the same command and --resume"
    assert capsys.readouterr().err.splitlines() == [f"ekd: error: {cli_mod.LOST_PEER_LINE}{hint}"]
    assert signal.getsignal(signal.SIGTERM) is before  # the command's end restores the handler


def _open_alike_or_own(rank: int, out_dir: str) -> None:
    from ekd.teacher.cache.format import CacheError
    from ekd.train.distributed import Ranks
    from ekd.train.rank_work import opened_on_main_first

    ranks = Ranks(rank, 2, torch.device("cpu"))
    seen = {}

    def refuse_alike():
        raise CacheError("teacher cache at c does not match the training config (data_fingerprint ...)")

    def refuse_on_rank1():
        if rank == 1:
            raise CacheError("shard-00001.bin is corrupted")
        return "reader"

    for name, open_ in (("alike", refuse_alike), ("own", refuse_on_rank1)):
        try:
            seen[name] = opened_on_main_first(ranks, open_, "open the teacher source")
        except CacheError as e:
            seen[name] = [str(e), getattr(e, "copy_of_rank0", False)]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))


def test_a_cache_every_rank_would_refuse_is_refused_once_by_rank_0(tmp_path):
    """``opened_on_main_first`` (the teacher source): rank 0 opens first, its refusal reaches rank 1 as a copy
    the CLI does not print again; a refusal only rank 1 makes (its own files) stays its own (printed by it)."""
    gloo_ranks(_open_alike_or_own, tmp_path)
    alike = "teacher cache at c does not match the training config (data_fingerprint ...)"
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0 == {"alike": [alike, False], "own": "reader"}
    assert rank1 == {"alike": [alike, True], "own": ["shard-00001.bin is corrupted", False]}


def _rank0_alive_then_silent(rank: int, out_dir: str) -> None:
    from datetime import timedelta

    from ekd.train import distributed as d

    d.RANK0_WAIT = timedelta(seconds=3)
    d.RANK0_BEAT_S = 0.2
    seen = []
    for beating in (True, False):
        if rank == 0:
            with d._rank0_heartbeat(0) if beating else contextlib.nullcontext():
                dist.barrier()  # rank 1 looks now
                dist.barrier()
        else:
            dist.barrier()
            seen.append(d._rank0_state())
            dist.barrier()
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))


def test_a_rank_stopped_from_outside_tells_a_live_rank_0_from_a_killed_one(tmp_path):
    """Try-out 151, F6: SIGTERM to node 1's torchrun made rank 1 say that rank 0 had been killed (the OOM killer?)
    while rank 0 trained on: rank 0's heartbeat in the job's store tells a live rank 0 from a silent one."""
    gloo_ranks(_rank0_alive_then_silent, tmp_path)
    assert json.loads((tmp_path / "rank1.json").read_text()) == ["alive", "killed"]


def _look_for_each_other(rank: int, out_dir: str) -> None:
    from ekd.errors import ConfigError
    from ekd.train import rank_work
    from ekd.train.distributed import Ranks

    ranks = Ranks(rank, 2, torch.device("cpu"))
    rank_work.SHARED_WAIT_S = 0.5
    seen = {}
    # "own": one path string, two filesystems — each node its own disk at that path; "store": each rank's own path
    # spelled otherwise, the store read at rank 0's; "read-only": rank 1 sees the directory but cannot write there
    cases = {
        "shared": (Path(out_dir, "shared"), {}),
        "own": (Path(out_dir, f"node{rank}"), {}),
        "store": (
            Path(out_dir, "store" if rank == 0 else "elsewhere"),
            {"every_rank_writes": False, "rank0_path": True},
        ),
        "read-only": (Path(out_dir, "ro"), {}),
        # review 156, R5: a prebuilt store on a read-only mount: rank 0 names a file already there
        "prebuilt": (Path(out_dir, "prebuilt"), {"every_rank_writes": False, "rank0_path": True}),
    }
    if rank == 0:
        Path(out_dir, "prebuilt").mkdir(exist_ok=True)
        Path(out_dir, "prebuilt", "manifest.json").write_text("{}")
    dist.barrier()
    for name, (directory, how) in cases.items():
        if name == "prebuilt" and rank == 0:
            import ekd.io

            def read_only_write(path, text):
                raise OSError(30, "Read-only file system")

            def read_only_unlink(
                self, missing_ok=False
            ):  # refused even for a file not there (try-out 157, N1)
                raise OSError(30, "Read-only file system")

            ekd.io.atomic_write_text = read_only_write
            Path.unlink = read_only_unlink
        if (
            name == "read-only" and rank == 1
        ):  # root writes in any mode: a read-only mount, as one node has it

            def read_only(self, data):
                raise OSError(30, "Read-only file system")

            Path.write_bytes = read_only
        try:
            rank_work.check_shared_directory(
                ranks, directory, "run.output_dir", "every rank writes there", **how
            )
            seen[name] = sorted(
                p.name for p in Path(out_dir, "store" if name == "store" else directory).iterdir()
            )
        except ConfigError as e:
            seen[name] = [str(e), getattr(e, "copy_of_rank0", False), list(e.keys)]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))


def test_a_directory_a_rank_does_not_see_is_refused_by_name_before_anything_is_written(tmp_path):
    """Try-out 151, F1/F3/F6: a node-local run.output_dir ended "finished" with checkpoints missing rank 1's shards
    (found at the --resume that needed them), a node-local data.store_dir in rank 1's traceback, a node-local
    teacher.cache_dir in "rank 1 has not run; rerun the cache build" at every rerun. Every rank looks for the file
    rank 0 writes; one that does not see it ends the job in one line, by rank 0, naming the rank and its host."""
    import socket

    gloo_ranks(_look_for_each_other, tmp_path)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["shared"] == rank1["shared"] == []  # the probe removed
    line, copy, keys = rank0["own"]
    assert line == (
        f"run.output_dir: rank 1 (host {socket.gethostname()}) does not see the files rank 0 writes in "
        f"{tmp_path / 'node0'} (every rank writes there): put it on a filesystem every node mounts, at that same "
        "path on every node"
    )
    assert (copy, keys) == (False, ["run.output_dir"]) and rank1["own"][:2] == [line, True]
    assert not (tmp_path / "node0").exists()  # made for the probe, removed with it (try-out 153, N7)
    assert rank0["store"] == rank1["store"] == []  # both looked at rank 0's path (try-out 153, N2)
    assert (
        rank0["prebuilt"] == rank1["prebuilt"] == ["manifest.json"]
    )  # seen by its existing file, nothing written
    line, copy, keys = rank0["read-only"]
    assert line == (
        f"run.output_dir: rank 1 (host {socket.gethostname()}) cannot write in {tmp_path / 'ro'} (Read-only file "
        "system; every rank writes there): mount it writable on every node"
    ), line


def _compare_teachers(rank: int, out_dir: str) -> None:
    from ekd.errors import ConfigError
    from ekd.train.distributed import Ranks
    from ekd.train.rank_work import check_same_weights

    ranks = Ranks(rank, 2, torch.device("cpu"), local_rank=0)  # two nodes of one process each ...
    socket.gethostname = lambda: f"node{rank}"  # ... on two machines (on one, nothing is compared)
    seen = {}
    for name in ("same", "other"):
        teacher = Path(out_dir, name, f"node{rank}", "teacher")  # each node's own copy, at its own path
        try:
            check_same_weights(ranks, str(teacher), "", "model.teacher")
            seen[name] = "ok"
        except ConfigError as e:
            seen[name] = [str(e), getattr(e, "copy_of_rank0", False)]
    Path(out_dir, f"rank{rank}.json").write_text(json.dumps(seen))


def test_a_node_holding_another_teacher_is_refused_by_name(tmp_path):
    """Try-out 151, F2: node 1's copy of the teacher held other weights (a stale copy, a later download of a hub
    id's main): the job trained half of every batch from another model, every record naming one teacher. Each node
    fingerprints what it reads; one that differs from rank 0's ends the job in one line naming it."""

    for name, other in (("same", b"weights"), ("other", b"other weights")):
        for node, weights in ((0, b"weights"), (1, other)):
            (tmp_path / name / f"node{node}" / "teacher").mkdir(parents=True)
            (tmp_path / name / f"node{node}" / "teacher" / "model.safetensors").write_bytes(weights)
    gloo_ranks(_compare_teachers, tmp_path)
    rank0 = json.loads((tmp_path / "rank0.json").read_text())
    rank1 = json.loads((tmp_path / "rank1.json").read_text())
    assert rank0["same"] == rank1["same"] == "ok"
    line, copy = rank0["other"]
    assert line.startswith(
        f"model.teacher={tmp_path / 'other' / 'node1' / 'teacher'}: rank 1 (host node1) holds "
        "other weights there than rank 0 ("
    ), line
    assert line.endswith("every node must hold the same model — copy rank 0's files there"), line
    assert not copy and rank1["other"] == [line, True]


@pytest.mark.slow
@pytest.mark.parametrize("how", ["error", "kill"])
def test_a_rank_that_ends_mid_run_leaves_one_line_with_the_checkpoint_kept(tmp_path, how):
    """Rank 1 ends at the start of step 3 (its cache record failing its CRC) while rank 0 goes into the step's
    collectives: rank 1's error line and one line from rank 0 naming the checkpoint kept; no gloo traceback, no
    generic hint (try-out 23, findings 4 and 5). Rank 0 killed there (``kill -9``, the OOM killer) says nothing:
    rank 1 says it, with rank 0's hint (try-out 69, F2: only torchrun's summary was left)."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    run = [
        *tiny_overrides(
            tmp_path,
            corpus,
            "mid",
            **{"train.micro_batch_size": 2, "train.max_steps": 4, "train.checkpoint_every": 1},
        ),
        "eval.teacher=false",
    ]
    ending = 1 if how == "error" else 0
    env = {"EKD_TEST_STOP_AT": f"0:2:{ending}:{how}"}
    out = torchrun_runs([run], tmp_path / "runs.json", env, timeout=300)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if line.startswith("ekd:")]
    kept = "checkpoint step-000002 is kept: continue with the same command and --resume"
    if how == "error":
        own = "ekd: error: shard-00003.bin is corrupted (record of sample 5 fails its CRC-32) (test)"
        assert said[0] == own and len(said) == 2, out.stderr
        # rank 0 ends on the lost peer, or (while it computes) on torchrun's SIGTERM: the same hint
        assert said[-1].startswith(
            ("ekd: error: rank 0 stopped: another rank ended first", "ekd: interrupted (SIGTERM)")
        ), out.stderr
    else:
        assert len(said) == 1, out.stderr
        assert said[0].startswith("ekd: error: rank 1 stopped: rank 0 ended without a word (killed: "), (
            out.stderr
        )
    assert said[-1].endswith(kept), out.stderr
    for noise in ("pair.cc", "[rank0]", "[rank1]", "ekd/train/", "continue from the last checkpoint"):
        assert noise not in out.stderr, out.stderr
    assert (tmp_path / "runs" / "mid" / "checkpoints" / "step-000002").is_dir()


@pytest.mark.slow
def test_a_rank_interrupted_first_is_said_as_an_interrupt_by_rank_0(tmp_path):
    """Try-out 50, F2: after Ctrl-C to the launcher, rank 0's collective sometimes lost rank 1 (interrupted first)
    before its own SIGINT arrived, and it said 'another rank ended first (its error ... is above)'. The rank
    interrupted records so in the job's store before its groups end; rank 0 says 'interrupted'."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    over = {"train.micro_batch_size": 2, "train.max_steps": 4, "train.checkpoint_every": 1}
    run = [*tiny_overrides(tmp_path, corpus, "int", **over), "eval.teacher=false"]
    out = torchrun_runs([run], tmp_path / "runs.json", {"EKD_TEST_STOP_AT": "0:2:1:interrupt"}, timeout=300)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if line.startswith("ekd:")]
    kept = "checkpoint step-000002 is kept: continue with the same command and --resume"
    assert said == [f"ekd: interrupted; {kept}"] or said == [f"ekd: interrupted (SIGTERM); {kept}"], (
        out.stderr
    )
    assert (tmp_path / "runs" / "int" / "checkpoints" / "step-000002").is_dir()


@pytest.mark.slow
def test_sigterm_inside_a_sharded_checkpoints_writer_is_said_as_an_interrupt(tmp_path):
    """Try-out 52, F1: SIGTERM (torchrun's forward of a scheduler's) that lands inside ``torch.save`` while DCP
    writes the shards ends their zip files half written; the writer's clean-up raises torch's ``unexpected pos``
    RuntimeError, DCP gathers the ranks' failures into a CheckpointException, and both ranks printed that
    traceback with no ekd line. The command was stopped from outside: one ``interrupted (SIGTERM)`` line naming
    the checkpoint kept, the torn one removed."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    over = {"train.micro_batch_size": 2, "train.max_steps": 4, "train.checkpoint_every": 1}
    run = [*tiny_overrides(tmp_path, corpus, "term", **over), "eval.teacher=false"]
    out = torchrun_runs([run], tmp_path / "runs.json", {"EKD_TEST_SIGTERM_IN_SAVE": "term:2"}, timeout=300)
    assert out.returncode != 0
    said = [line for line in out.stderr.splitlines() if line.startswith("ekd:")]
    kept = "checkpoint step-000001 is kept: continue with the same command and --resume"
    assert said == [f"ekd: interrupted (SIGTERM); {kept}"], out.stderr
    for noise in ("unexpected pos", "[rank0]", "[rank1]", "ekd/train/"):  # torchrun's own summary stays
        assert noise not in out.stderr, out.stderr
    checkpoints = tmp_path / "runs" / "term" / "checkpoints"
    assert sorted(p.name for p in checkpoints.iterdir()) == ["latest", "step-000001"]  # the torn one removed


def test_rank_0s_refusal_is_said_on_each_other_nodes_log(monkeypatch, capsys):
    """Try-out 153, N4: rank 0's refusals (a directory a node does not see, another teacher on a node) were
    printed on rank 0's node only — node 1, the node at fault, had no ekd line in its log. The first rank of each
    other node says it too, naming rank 0's host; ranks on rank 0's node stay quiet."""
    import ekd.cli as cli_mod
    from ekd.errors import ConfigError

    def refused(args):
        e = ConfigError("run.output_dir: rank 1 (host node1) does not see the files rank 0 writes in /x")
        e.copy_of_rank0, e.rank0_host = True, "node0"
        raise e

    monkeypatch.setitem(cli_mod.COMMANDS, "distill", refused)
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.delenv("TORCH_CPP_LOG_LEVEL", raising=False)  # main() sets it under torchrun: undone after
    for local_rank, host, said in (("0", "node1", True), ("1", "node1", False), ("0", "node0", False)):
        monkeypatch.setenv("LOCAL_RANK", local_rank)
        monkeypatch.setattr(socket, "gethostname", lambda host=host: host)
        assert cli_mod.main(["distill", "cfg.yaml"]) == 2
        err = capsys.readouterr().err
        assert (err == "ekd: error: run.output_dir: rank 1 (host node1) does not see the files rank 0 writes in /x "
                "(said by rank 0, on node0)\n") is said, (local_rank, host, err)  # fmt: skip
        assert said or err == ""


def test_a_probe_a_killed_start_left_does_not_make_a_cache_directory_foreign(tmp_path):
    """Review 156, R8: a probe file left by a torchrun start killed during its check made the next `ekd cache`
    refuse the directory as "not empty and holds no teacher cache"."""
    from ekd.teacher.cache.manifest import check_cache_directory
    from ekd.train.rank_work import PROBE_PREFIX

    (tmp_path / "c").mkdir()
    (tmp_path / "c" / f"{PROBE_PREFIX}0123456789abcdef").write_text("x")
    (tmp_path / "c" / f"{PROBE_PREFIX}0123456789abcdef-1").write_text("")
    check_cache_directory(tmp_path / "c")  # no refusal
