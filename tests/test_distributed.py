"""Data parallelism: 2 gloo processes under torchrun equal one process with the same global batch.

One torchrun spawn trains every method below on 2 ranks (micro-batch 2 each); the test process trains the
same methods in one process (micro-batch 4). Per-step losses, per-step KD terms and the final weights must
agree within 1e-5 (fp32): random draws are keyed by sample id (``ekd.selection.draws``) and batch-scoped
rules rank the global micro-batch (``ekd.selection.global_batch``). Not bit for bit: a student-side score
(``sekd``'s entropy, ``gls``'s CE) computed on 2 rows can round otherwise than on 4, and over longer runs a
near-tie at a threshold can flip (docs/methods.md §5); none does in these 3 steps.
"""

from __future__ import annotations

import json
import os
import traceback
import warnings
from pathlib import Path

import pytest
import torch

from dist_runs import assert_groups_ended, free_port, gloo_rank, torchrun_runs
from ekd.eval.compare import read_run
from ekd.train.distributed import Ranks, data_parallel, distributed, micro_batch_sync
from tiny import tiny_overrides, write_corpus

# name → overrides; each exercises a random draw or a batch-scoped rule that differs per rank if done locally
METHODS = {
    "kd+ce": ["method=kd", "method.ce_weight=0.5"],
    "sekd": ["method=sekd"],
    "random_pos": ["method=random_pos"],  # random scores per row
    "pos_rs": ["method=pos_rs", "train.grad_accum_steps=2"],  # positions drawn per row; 2 micro-batches
    "selective_kd": ["method=selective_kd", "method.ce_weight=0"],  # top-k over the batch
    # LATF's top r over the batch (r moves from step 2: no warm-up, any change of the loss EMA) + IDTS median
    "adakd": [
        "method=adakd",
        "train.max_steps=4",
        "method.latf_warmup_fraction=0",
        "method.latf_tolerance=0",
        "method.latf_step=0.5",
        "method.latf_ema_decay=0",
    ],
    "atkd": ["method=atkd"],  # hard/easy split over the batch
    "gls": ["method=gls", "method.gls_queue_size=64"],  # one queue of every rank's scores
    "gkd": ["method=gkd", "method.student_data_fraction=1", "method.prompt_tokens=8"],  # sampled per row
    # TopSmp: each rank scores half of the blocks, all select alike; periodic evaluation split over ranks
    "topsmp": ["method=sekd", "method.sample_fraction=0.5", "eval.every=2"],
    # a LoRA student: DDP over the adapters and the head only (the frozen base is identical on every rank)
    "lora": ["method=kd", "model.lora_r=4", "model.lora_train_head=true"],
    # EGAD's projection, used on hard tokens only: DDP without find_unused_parameters (its zero term)
    "egad": ["method=egad"],
    # online RS targets at the selected rows: train/rs_unique_ids is the global mean, not rank 0's
    "sekd_rs": ["method=sekd", "method.target=rs"],
}


def _metrics(run_dir: Path, key: str) -> list[float]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r[key] for r in rows if key in r]


@pytest.mark.slow
def test_two_ranks_equal_one_process(tmp_path):
    from transformers import AutoModelForCausalLM

    from ekd.cli import main

    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    common = ["train.max_steps=3", "eval.teacher=false"]
    runs = []
    for name, method in METHODS.items():
        single = tiny_overrides(tmp_path, corpus, f"single-{name}", **{"train.micro_batch_size": 4})
        assert main(["-q", "distill", *single, *common, *method]) == 0, name
        ddp = tiny_overrides(tmp_path, corpus, f"ddp-{name}", **{"train.micro_batch_size": 2})
        runs.append([*ddp, *common, *method])
    out = torchrun_runs(runs, tmp_path / "runs.json")
    assert out.returncode == 0, out.stderr[-3000:]
    mismatches = []
    for name in METHODS:
        a, b = tmp_path / "runs" / f"single-{name}", tmp_path / "runs" / f"ddp-{name}"
        # every figure a step logs (try-out 23: EGAD's train/feature was divided by the ranks): grad norm, DDP
        # sums, never averages; tokens, the job's count; tokens/s and step seconds are readings of the wall clock
        # and peak memory a measurement of the processes, not figures of the math
        step_rows = [json.loads(line) for line in (a / "metrics.jsonl").read_text().splitlines()]
        measured = {"step", "train/tokens_per_s", "train/step_s", "train/peak_memory_gib"}
        keys = sorted({k for r in step_rows if "train/loss" in r for k in r} - measured)
        assert {"train/loss", "train/grad_norm", "train/tokens"} <= set(keys), keys
        for key in keys:
            one, two = torch.tensor(_metrics(a, key)), torch.tensor(_metrics(b, key))
            if (
                one.numel() == 0
                or one.shape != two.shape
                or not torch.allclose(two, one, rtol=1e-5, atol=1e-8)
            ):
                mismatches.append((name, key, one.tolist(), two.tolist()))
        wa = AutoModelForCausalLM.from_pretrained(a / "student").state_dict()
        wb = AutoModelForCausalLM.from_pretrained(b / "student").state_dict()
        for k in wa:
            # atol 5e-6: per-rank gradient sums are reassociated (2 rows + all-reduce vs 4 rows, vocabulary
            # blocks of the pairwise head), and Adam's m/√v turns the fp32 rounding of a near-zero gradient
            # into an update difference of up to ~1e-6 after 3 steps at lr 1e-3; losses stay within 1e-5.
            if not torch.allclose(wb[k], wa[k], rtol=1e-5, atol=5e-6):
                mismatches.append((name, k, float((wb[k] - wa[k]).abs().max())))
                break
        # what config.yaml does not tell (2 × 2 rows vs 1 × 4): recorded, and ekd compare calls them one training
        markers = [json.loads((r / "ekd-run.json").read_text()) for r in (a, b)]
        if [(m["global_micro_batch"], m["ranks"]) for m in markers] != [(4, 1), (4, 2)]:
            mismatches.append((name, "ekd-run.json", markers))
        if read_run(a).group_key() != read_run(b).group_key():
            mismatches.append(
                (name, "ekd compare group", read_run(a).trained_config(), read_run(b).trained_config())
            )
    assert mismatches == [], mismatches


def _toy_model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.ModuleDict({"body": torch.nn.Linear(5, 3), "head": torch.nn.Linear(3, 2)})


def _toy_data() -> torch.Tensor:
    return torch.randn(2, 8, 5, generator=torch.Generator().manual_seed(1))  # 2 micro-batches of 8 rows


def _toy_grads(
    model, micro_batches: list[torch.Tensor], engine, extra: torch.nn.Module
) -> list[torch.Tensor]:
    """Σ over micro-batches of (Σ rows of a loss) / global row count; the head is used outside the body's
    forward, the extra module on the first micro-batch only (unused in the last one)."""
    count = 16.0  # rows of the global step (both micro-batches, all ranks)
    for i, x in enumerate(micro_batches):

        def run(x=x, i=i) -> torch.Tensor:
            h = torch.tanh(model["body"](x))
            loss = model["head"](h).pow(2).sum()
            if i == 0:
                loss = loss + extra(x).sum()
            return loss / count

        with micro_batch_sync(engine, last=i == len(micro_batches) - 1):
            (engine(run) if engine is not None else run()).backward()
    return [p.grad.clone() for p in [*model.parameters(), *extra.parameters()]]


def _ddp_worker(rank: int, out_dir: str) -> None:
    model, extra = _toy_model(), torch.nn.Linear(5, 1)
    torch.manual_seed(rank)  # rank 1 starts from other weights: DDP must broadcast rank 0's
    if rank:
        for p in [*model.parameters(), *extra.parameters()]:
            p.data.normal_()
    with warnings.catch_warnings(record=True) as caught:  # no deprecated DDP argument
        warnings.simplefilter("always")
        engine = data_parallel(model, {"extra": extra}, Ranks(rank, 2, torch.device("cpu")))
    assert [str(w.message) for w in caught if issubclass(w.category, FutureWarning)] == []
    assert not engine.find_unused_parameters  # the unused extra gets a zero term instead
    data = _toy_data()
    mine = [mb[rank * 4 : (rank + 1) * 4] for mb in data]  # this rank's 4 rows of each micro-batch
    torch.save(_toy_grads(model, mine, engine, extra), os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_ddp_sums_gradients_once_per_step(spawned):
    """2 gloo ranks through ``data_parallel``: after the last micro-batch every rank holds the one-process
    gradient of the global batch (a sum over ranks, not DDP's average), including a parameter used outside
    the body and one unused in the last micro-batch; ``no_sync`` before it. (The ranks: ``spawned``.)"""
    _passed(spawned, "ddp")
    g0, g1 = (torch.load(spawned / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    torch.manual_seed(0)
    model, extra = _toy_model(), torch.nn.Linear(5, 1)
    data = _toy_data()
    want = _toy_grads(model, list(data), None, extra)  # one process, the same global micro-batches
    for a, b, w in zip(g0, g1, want):
        torch.testing.assert_close(a, w, rtol=1e-6, atol=1e-7)
        torch.testing.assert_close(b, w, rtol=1e-6, atol=1e-7)


def _sharded_then_fails() -> None:
    """A step of an FSDP2 module (its hooks and DTensor's caches now refer to the default group), then an
    error: the module stays referred to by the error's traceback."""
    from torch.distributed.fsdp import fully_shard

    model = torch.nn.Linear(4, 4)
    fully_shard(model)
    model(torch.ones(2, 4)).sum().backward()
    raise ValueError("the work failed")


def _failing_worker(rank: int, port: int) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank)
    )
    with pytest.raises(ValueError, match="the work failed"), distributed(torch.device("cpu")):
        _sharded_then_fails()
    assert_groups_ended()


def _spawned_checks(rank: int, out_dir: str, port: int) -> None:
    """The spawned checks of this module in one pair of processes (each spawned process imports torch, ekd and
    this module: seconds): the DDP worker in a gloo group started as :func:`dist_runs.gloo_ranks` does, then,
    that group ended, the failing work under ``distributed()``. Each check writes ``out_dir/CHECK-rank<r>.txt``:
    ``ok``, or its traceback, raised again (mp.spawn then ends the other rank: none left in a collective)."""
    checks = {
        "ddp": lambda: gloo_rank(rank, _ddp_worker, 2, out_dir, ()),
        "failing": lambda: _failing_worker(
            rank, port
        ),  # sets the env:// variables: after the file rendezvous
    }
    for name, check in checks.items():
        said = Path(out_dir, f"{name}-rank{rank}.txt")
        try:
            check()
        except BaseException:
            said.write_text(traceback.format_exc())
            raise
        said.write_text("ok")


@pytest.fixture(scope="module")
def spawned(tmp_path_factory) -> Path:
    """The directory of :func:`_spawned_checks`, run once on 2 spawned ranks; ``spawn.txt``: mp.spawn's error."""
    import torch.multiprocessing as mp

    out = tmp_path_factory.mktemp("spawned")
    try:
        mp.spawn(_spawned_checks, args=(str(out), free_port()), nprocs=2, join=True)
    except Exception as e:  # each test below fails on its own check's record
        (out / "spawn.txt").write_text(f"{type(e).__name__}: {e}")
    return out


def _passed(out: Path, check: str) -> None:
    """Both ranks of ``spawned`` ran ``check`` without error."""
    for rank in (0, 1):
        said = out / f"{check}-rank{rank}.txt"
        spawn = out / "spawn.txt"
        text = (
            said.read_text() if said.exists() else f"not run; {spawn.read_text() if spawn.exists() else ''}"
        )
        assert text == "ok", f"rank {rank}: {text}"


@pytest.mark.slow
def test_groups_end_with_distributed_after_an_error(spawned):
    """``distributed()`` ends its groups (their gloo threads joined) when the work in it fails too: a group
    left to interpreter exit can abort the process ("terminate called without an active exception"). (The
    ranks: ``spawned``.)"""
    _passed(spawned, "failing")
