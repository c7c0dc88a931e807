"""Checkpoints under torchrun (issue 12 part 4): DCP shards per rank, verified by the sha256 manifest, read
without unpickling arbitrary objects; kill -9 and ``--resume`` is exact; resuming on another number of ranks
reshards (2 → 1 and 1 → 2) with the global micro-batch kept, and says so in one log line.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import shutil
import subprocess
from pathlib import Path

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from dist_runs import run_outputs, torchrun_runs
from ekd.models.layers import checkpoint_decoder_layers
from ekd.train.checkpoint import CheckpointError, save_checkpoint, verify_checkpoint
from ekd.train.distributed import Ranks
from ekd.train.sharded_checkpoint import (
    check_global_batch,
    load_full_checkpoint,
    restore_checkpoint,
    save_sharded_checkpoint,
    training_state,
)
from tiny import tiny_overrides, write_corpus

ONE = Ranks(0, 1, torch.device("cpu"))


def _student(seed: int, wrapped: bool = False) -> LlamaForCausalLM:
    """``wrapped``: each decoder layer in torch's activation-checkpoint wrapper (parameter names change,
    state-dict keys do not)."""
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=True,
    )
    model = LlamaForCausalLM(cfg)
    if wrapped:
        checkpoint_decoder_layers(model)
    return model


def _extras() -> dict[str, torch.nn.Module]:
    """A trained projection, and a trained module that gets no gradient before the checkpoint."""
    return {"proj": torch.nn.Linear(4, 4), "unused": torch.nn.Linear(2, 2)}


def _optimizer(student, extra) -> torch.optim.AdamW:
    params = [*student.parameters(), *extra["proj"].parameters(), *extra["unused"].parameters()]
    return torch.optim.AdamW(params, lr=1e-2)


def _trained(seed: int, wrapped: bool = False):
    """A tied-embedding student and extra modules, AdamW after one step (no state for ``unused``)."""
    student, extra = _student(seed, wrapped), _extras()
    opt = _optimizer(student, extra)
    x = torch.randint(0, 40, (2, 8), generator=torch.Generator().manual_seed(seed))
    (student(x, labels=x).loss + extra["proj"](torch.ones(4)).sum()).backward()
    opt.step()
    return student, extra, opt


def _fresh(seed: int, wrapped: bool = False):
    student, extra = _student(seed, wrapped), _extras()
    return student, extra, _optimizer(student, extra)


STATE = {
    "step": 1,
    "loader": {"epoch": 0, "position": 4},
    "policy": {},
    "world_size": 1,
    "micro_batch_size": 4,
}


def _restore(path: Path, parts) -> dict:
    student, extra, opt = parts
    return restore_checkpoint(path, student, opt, extra, ONE, 4)


def _assert_same(a, b) -> None:
    (sa, ea, oa), (sb, eb, ob) = a, b
    for (k, x), y in zip(sa.state_dict().items(), sb.state_dict().values()):
        assert torch.equal(x, y), k
    assert torch.equal(ea["proj"].weight, eb["proj"].weight)
    assert sb.lm_head.weight is sb.model.embed_tokens.weight  # still tied
    da, db = oa.state_dict(), ob.state_dict()
    assert da["state"].keys() == db["state"].keys() and da["state"]  # none for a parameter without gradient
    assert len(da["state"]) == len(oa.param_groups[0]["params"]) - 2  # `unused`'s weight and bias
    for i, s in da["state"].items():
        for k, v in s.items():
            assert torch.equal(v, db["state"][i][k]), (i, k)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "activation_checkpointing"])
def test_dcp_checkpoint_round_trip(tmp_path, wrapped):
    """Model (tied embeddings), extra module and AdamW state come back exactly through DCP; the manifest
    lists every shard and verifies. With activation checkpointing the wrapped layers' AdamW state comes back
    too (it was dropped: their parameter names differ from the state-dict names)."""
    saved = _trained(0, wrapped)
    path = save_sharded_checkpoint(tmp_path, 1, training_state(saved[0], saved[1]), saved[2], STATE, ONE)
    verify_checkpoint(path)
    manifest = json.loads((path / "manifest.json").read_text())
    assert manifest["layout"] == "dcp" and manifest["world_size"] == 1
    assert set(manifest["files"]) == {"__0_0.distcp", ".metadata", "state.pt"}
    assert (tmp_path / "checkpoints" / "latest").read_text() == path.name
    loaded = _fresh(1, wrapped)
    assert _restore(path, loaded) == STATE
    _assert_same(saved, loaded)


@pytest.mark.parametrize("wrapped", [False, True], ids=["plain", "activation_checkpointing"])
def test_one_process_checkpoint_loads_through_set_state_dict(tmp_path, wrapped):
    """The one-process format read as full tensors through ``set_state_dict`` (the 1 → W path)."""
    saved = _trained(0, wrapped)
    path = save_checkpoint(tmp_path, 2, saved[0], saved[2], STATE, saved[1])
    loaded = _fresh(1, wrapped)
    load_full_checkpoint(path, training_state(loaded[0], loaded[1]), loaded[2])
    _assert_same(saved, loaded)


def test_corrupt_shard_is_refused_by_the_manifest(tmp_path):
    saved = _trained(0)
    path = save_sharded_checkpoint(tmp_path, 1, training_state(saved[0], saved[1]), saved[2], STATE, ONE)
    shard = path / "__0_0.distcp"
    data = bytearray(shard.read_bytes())
    data[len(data) // 2] ^= 0x55
    shard.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"__0_0.distcp is corrupt"):
        verify_checkpoint(path)


class _Evil:
    """Unpickling this would run a shell command."""

    def __reduce__(self):
        return (os.system, ("touch pwned",))


def _forge(path: Path, data: bytes) -> None:
    path.write_bytes(data)
    manifest = json.loads((path.parent / "manifest.json").read_text())
    manifest["files"][path.name] = hashlib.sha256(data).hexdigest()
    (path.parent / "manifest.json").write_text(json.dumps(manifest))


def test_hostile_metadata_is_not_unpickled(tmp_path, monkeypatch):
    """A ``.metadata`` that verifies (forged manifest) but names ``os.system``: one CheckpointError line,
    nothing executed."""
    monkeypatch.chdir(tmp_path)
    saved = _trained(0)
    path = save_sharded_checkpoint(tmp_path, 1, training_state(saved[0], saved[1]), saved[2], STATE, ONE)
    _forge(path / ".metadata", pickle.dumps(_Evil()))
    verify_checkpoint(path)
    with pytest.raises(CheckpointError, match=r"unreadable .*os.*system") as e:
        _restore(path, _fresh(1))
    assert "\n" not in str(e.value) and not (tmp_path / "pwned").exists()


def test_hostile_non_tensor_leaf_is_not_unpickled(tmp_path, monkeypatch):
    """An optimizer hyper-parameter saved as an arbitrary object (DCP writes non-tensors with torch.save):
    read back with ``weights_only=True``, refused."""
    monkeypatch.chdir(tmp_path)
    saved = _trained(0)
    saved[2].param_groups[0]["eps"] = _Evil()
    path = save_sharded_checkpoint(tmp_path, 1, training_state(saved[0], saved[1]), saved[2], STATE, ONE)
    with pytest.raises(CheckpointError, match="unreadable"):
        _restore(path, _fresh(1))
    assert not (tmp_path / "pwned").exists()


def test_another_global_micro_batch_is_refused(tmp_path):
    with pytest.raises(CheckpointError, match=r"2 ranks × micro-batch 2 = 4 rows.*train.micro_batch_size=4"):
        check_global_batch(tmp_path, {"micro_batch_size": 2}, 2, 1, 2)
    with pytest.raises(CheckpointError, match="number of ranks that divides 4"):
        check_global_batch(tmp_path, {"micro_batch_size": 4}, 1, 3, 1)
    check_global_batch(tmp_path, {"micro_batch_size": 2}, 2, 1, 4)  # same 4 rows: accepted


# ---- 2 gloo processes: kill -9, exact resume, resharding ------------------------------------------------

COMMON = ["train.max_steps=4", "train.checkpoint_every=1", "train.keep_checkpoints=10", "eval.teacher=false"]
METHOD = ["method=pos_rs", "train.grad_accum_steps=2"]  # per-row draws and 2 micro-batches per step
LORA = ["model.lora_r=4", "model.lora_train_head=true", "train.activation_checkpointing=true"]
FSDP = ["train.parallel=fsdp"]
SAID_FSDP = ["train.parallel=fsdp", "teacher.placement=shard"]


def _torchrun(
    tmp_path: Path, name: str, runs: list[list[str]], kill: str = ""
) -> subprocess.CompletedProcess:
    """``runs`` in one 2-rank torchrun (tests/dist_runs.py), INFO log lines kept and each run's lines marked
    (:func:`dist_runs.run_outputs`); ``kill``: RUN:STEP."""
    env = {"EKD_TEST_LOUD": "1", "EKD_TEST_KILL_AT": kill, "EKD_TEST_MARK_RUNS": "1"}
    return torchrun_runs(runs, tmp_path / f"{name}.json", env)


def _args(tmp: Path, name: str, micro: int, *extra: str) -> list[str]:
    """A 4-step pos_rs run checkpointed at every step, ``tmp/runs/NAME`` on ``tmp/corpus``."""
    over = {"train.micro_batch_size": micro}
    return [*tiny_overrides(tmp, tmp / "corpus", name, **over), *COMMON, *METHOD, *extra]


def _said_args(tmp: Path, name: str, micro: int, steps: int) -> list[str]:
    """A sekd run with sample selection of the padded student ``tmp/padded-student``, checkpointed each step."""
    common = [
        f"model.student={tmp / 'padded-student'}",
        "model.tokenizer=student",
        "method=sekd",
        "method.sample_fraction=0.5",
        "train.checkpoint_every=1",
        "eval.teacher=false",
    ]
    extra = {"train.micro_batch_size": micro, "train.max_steps": steps}
    return [*tiny_overrides(tmp, tmp / "corpus", name, **extra), *common]


def _padded_student(tmp: Path) -> None:
    """``tmp/padded-student``: llama-micro with 8 head rows past the BPE tokenizer of ``tmp/corpus``."""
    from ekd.data import train_bpe_tokenizer
    from ekd.models.load import build_preset, save_model_dir

    tokenizer = train_bpe_tokenizer([p.read_text() for p in sorted((tmp / "corpus").iterdir())], 300)
    padded = build_preset("llama-micro", len(tokenizer) + 8, tokenizer.eos_token_id, seed=0)
    save_model_dir(padded, tokenizer, tmp / "padded-student")


@pytest.fixture(scope="module")
def launches(tmp_path_factory) -> dict:
    """The 2-rank runs of the three tests below in three torchrun launches (each launch starts 3 Python
    processes that import torch: seconds apiece). A kill ends its launch, so each test's killed run has a
    launch of its own: ``first`` (plain and LoRA references, then the plain run "killed"), ``second`` (the
    FSDP reference, then the FSDP run "killed"); ``resumes`` holds every 2-rank resume and the said-once
    runs, each run's stderr apart (:func:`dist_runs.run_outputs`): the plain test's 3 resumes, the FSDP
    test's resume, then the said-once test's fresh FSDP run and its 1 → 2 resume. Each test's runs lie in a
    directory of its own (``kill``, ``fsdp``, ``said``); the one-process runs resumed on 2 ranks are
    trained first, in this process."""
    from ekd.cli import main

    root = tmp_path_factory.mktemp("sharded-checkpoint")
    kill, fsdp, said = root / "kill", root / "fsdp", root / "said"
    for tmp in (kill, fsdp, said):
        write_corpus(tmp / "corpus", n_docs=24)
    _padded_student(said)
    first = _torchrun(
        root,
        "first",
        [_args(kill, "ref", 2), _args(kill, "lora-ref", 2, *LORA), _args(kill, "killed", 2)],
        kill="killed:3",
    )
    second = _torchrun(
        root, "second", [_args(fsdp, "ref", 2, *FSDP), _args(fsdp, "killed", 2, *FSDP)], kill="killed:3"
    )
    killed = {"kill": _left_by_the_kill(kill), "fsdp": _left_by_the_kill(fsdp)}  # before the resumes below
    assert main(["-q", "distill", *_args(kill, "single", 4)]) == 0
    assert main(["-q", "distill", *_said_args(said, "one", 4, 1)]) == 0
    try:
        _interrupted_copy(kill / "runs" / "lora-ref", kill / "runs" / "lora-resumed", 2)
        _interrupted_copy(kill / "runs" / "single", kill / "runs" / "one-to-two", 2)
        _interrupted_copy(kill / "runs" / "ref", kill / "runs" / "two-to-one", 2)
        _interrupted_copy(fsdp / "runs" / "ref", fsdp / "runs" / "two-to-one", 2)
    except OSError as e:
        pytest.fail(f"{e}\nfirst launch:\n{first.stderr[-3000:]}\nsecond launch:\n{second.stderr[-3000:]}")
    resumes = [
        [*_args(kill, "killed", 2), "--resume"],
        [*_args(kill, "one-to-two", 2), "--resume"],
        [*_args(kill, "lora-resumed", 2, *LORA), "--resume"],
        [*_args(fsdp, "killed", 2, *FSDP), "--resume"],
        [*_said_args(said, "two", 2, 1), *SAID_FSDP],
        [*_said_args(said, "one", 2, 2), "--resume"],
    ]
    out = _torchrun(root, "resumes", resumes)
    return {
        "root": root,
        "first": first,
        "second": second,
        "resumes": out,
        "outputs": run_outputs(out.stderr),
        "killed": killed,
    }


def _left_by_the_kill(tmp: Path) -> dict:
    """What the run ``tmp/runs/killed`` holds after its kill: the names under ``checkpoints/`` and the text of
    ``latest`` and of checkpoint 2's manifest (None where missing)."""
    ckpts = tmp / "runs" / "killed" / "checkpoints"

    def text(path: Path) -> str | None:
        return path.read_text() if path.is_file() else None

    return {
        "names": sorted(p.name for p in ckpts.iterdir()) if ckpts.is_dir() else [],
        "latest": text(ckpts / "latest"),
        "manifest 2": text(ckpts / "step-000002" / "manifest.json"),
    }


def _losses(run_dir: Path) -> torch.Tensor:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return torch.tensor([r["train/loss"] for r in rows if "train/loss" in r], dtype=torch.float64)


def _weights(run_dir: Path) -> dict[str, torch.Tensor]:
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(run_dir / "student").state_dict()


def _interrupted_copy(run_dir: Path, to: Path, step: int) -> Path:
    """A copy of a run as it was after checkpoint ``step`` (later checkpoints removed)."""
    shutil.copytree(run_dir, to)
    for ckpt in (to / "checkpoints").glob("step-*"):
        if int(ckpt.name[5:]) > step:
            shutil.rmtree(ckpt)
    (to / "checkpoints" / "latest").write_text(f"step-{step:06d}")
    return to


def _same(a: Path, b: Path, rtol: float, atol: float) -> list:
    la, lb = _losses(a), _losses(b)
    bad = [] if la.shape == lb.shape and torch.allclose(la, lb, rtol=rtol, atol=0) else [("loss", la, lb)]
    wa, wb = _weights(a), _weights(b)
    bad += [k for k in wa if not torch.allclose(wb[k], wa[k], rtol=rtol, atol=atol)]
    return bad


@pytest.mark.slow
def test_kill_resume_and_resharding(launches, caplog):
    """2 gloo ranks: a run killed with SIGKILL while writing checkpoint 3 resumes from checkpoint 2 and
    equals the uninterrupted run bit for bit (losses of every step, final weights). The same DCP
    checkpoint resumed in one process (micro-batch 2 → 4) and a one-process checkpoint resumed on 2 ranks
    (4 → 2) equal the uninterrupted runs within DDP's 1e-5. A LoRA student with activation checkpointing
    (in the same torchrun launches) keeps only its trained tensors in each DCP checkpoint and resumes
    bit for bit (the wrapped layers' AdamW state was once dropped on resume). Its 2-rank runs: the
    module's ``launches``."""
    from ekd.cli import main
    from ekd.train.sharded_checkpoint import SafeReader

    tmp = launches["root"] / "kill"
    runs = tmp / "runs"
    out = launches["first"]  # ref, lora-ref, then killed
    assert out.returncode != 0 and "SIGKILL" in out.stderr + out.stdout, out.stderr[-3000:]
    left = launches["killed"]["kill"]  # the run killed, before the resumes
    assert left["latest"] == "step-000002" and "step-000003.tmp" in left["names"], left
    assert (
        json.loads((runs / "ref" / "checkpoints" / "step-000004" / "manifest.json").read_text())["layout"]
        == "dcp"
    )

    saved = SafeReader(runs / "lora-ref" / "checkpoints" / "step-000002").read_metadata().state_dict_metadata
    weights = [k.removeprefix("model.student.") for k in saved if k.startswith("model.")]
    assert weights and all("lora_" in k or "lm_head" in k for k in weights), weights

    out = launches["resumes"]
    assert out.returncode == 0, out.stderr[-3000:]
    said = "".join(launches["outputs"][:3])  # this test's resumes: killed, one-to-two, lora-resumed
    assert said.count("at step 2") >= 3  # every run resumed from its step-2 checkpoint (not from 0)
    assert said.count("resumed from") == 3  # said once per run (rank 0), not once per rank
    assert said.count("resharding checkpoint step-000002 of 1 rank onto 2") == 1  # rank 0's, once
    with caplog.at_level("INFO", logger="ekd.train.sharded_checkpoint"):
        assert main(["distill", *_args(tmp, "two-to-one", 4), "--resume"]) == 0
    assert "resharding checkpoint step-000002 of 2 ranks onto 1" in caplog.text

    assert _same(runs / "ref", runs / "killed", rtol=0, atol=0) == []  # exact
    assert _same(runs / "lora-ref", runs / "lora-resumed", rtol=0, atol=0) == []
    # atol 5e-6 on weights: see test_distributed (per-rank sums reassociated, Adam amplifies near-zero grads)
    assert _same(runs / "ref", runs / "two-to-one", rtol=1e-5, atol=5e-6) == []
    assert _same(runs / "single", runs / "one-to-two", rtol=1e-5, atol=5e-6) == []
    # and one process resumed with another global micro-batch is one line
    code = main(["distill", *_args(tmp, "two-to-one", 2), "train.max_steps=5", "--resume"])
    assert code == 2


@pytest.mark.slow
def test_fsdp_kill_resume_is_exact_and_reshards_to_one_process(launches, caplog):
    """``train.parallel=fsdp`` on 2 gloo ranks: every rank writes its DTensor shards with DCP; a run killed with
    SIGKILL while writing checkpoint 3 resumes from checkpoint 2 and equals the uninterrupted FSDP2 run bit
    for bit; the same sharded checkpoint resumes in one process (micro-batch 2 → 4) within 1e-5. Its 2-rank
    runs: the module's ``launches``."""
    from ekd.cli import main

    tmp = launches["root"] / "fsdp"
    runs = tmp / "runs"
    out = launches["second"]  # ref, then killed
    assert out.returncode != 0 and "SIGKILL" in out.stderr + out.stdout, out.stderr[-3000:]
    left = launches["killed"]["fsdp"]  # the run killed, before the resumes
    assert left["latest"] == "step-000002", left
    manifest = json.loads(left["manifest 2"])
    assert manifest["layout"] == "dcp" and manifest["world_size"] == 2
    assert sorted(f for f in manifest["files"] if f.endswith(".distcp")) == ["__0_0.distcp", "__1_0.distcp"]

    out = launches["resumes"]
    assert out.returncode == 0, out.stderr[-3000:]
    said = launches["outputs"][3]  # this test's resume of killed
    assert "at step 2" in said
    # what rank 0 does for all is said once (try-out 12: every rank said it)
    assert said.count("model.student: rank 0 reads the weights") == 1, said[-3000:]
    with caplog.at_level("INFO", logger="ekd.train.sharded_checkpoint"):
        assert main(["distill", *_args(tmp, "two-to-one", 4), "--resume"]) == 0
    assert "resharding checkpoint step-000002 of 2 ranks onto 1" in caplog.text

    assert _same(runs / "ref", runs / "killed", rtol=0, atol=0) == []  # exact
    assert _same(runs / "ref", runs / "two-to-one", rtol=1e-5, atol=5e-6) == []


@pytest.mark.slow
def test_what_rank_0_does_for_all_is_said_once(launches):
    """Try-out 12: under torchrun the resharding line, 'rank 0 reads the weights', the sample selection's 'kept N
    of M blocks' and a padded head's 'aligned to V' were printed by every rank (8 times on 8 GPUs). A 2-rank
    FSDP run of a padded student with a sharded teacher and sample selection, and a 2-rank resume of a 1-process
    checkpoint: no ekd log line twice, and each rank's own memory line once. Its 2-rank runs: the last two of
    the module's ``launches``, each run's lines apart."""
    out = launches["resumes"]
    assert out.returncode == 0, out.stderr[-3000:]
    assert len(launches["outputs"]) == 6, out.stderr[-3000:]
    said = []
    for stderr in launches["outputs"][4:]:  # the fresh FSDP run, then the 1 → 2 resume of "one"
        lines = [line for line in stderr.splitlines() if line.startswith(("INFO ekd", "WARNING ekd"))]
        assert [line for line in set(lines) if lines.count(line) > 1] == [], lines
        words = ("resharding", "rank 0 reads", "kept", "aligned to", "rank 0 holds", "rank 1 holds")
        said += [w for line in lines for w in words if w in line]
    assert sorted(said) == sorted(
        ["rank 0 reads"] * 2
        + ["kept", "resharding"]
        + ["aligned to"] * 2
        + ["rank 0 holds", "rank 1 holds"] * 2
    ), said


def test_a_rank_other_than_0_says_only_errors_and_its_own_facts(caplog):
    """The log filter behind the torchrun test above, in one process: on rank 1 an ekd INFO or WARNING line is
    dropped, a line marked EVERY_RANK and any ERROR are kept, other libraries' lines pass; rank 0 keeps all, and
    the filter is gone after the block."""
    import logging

    from ekd.log_level import EVERY_RANK, said_by_rank0

    ekd_log, other = logging.getLogger("ekd.x"), logging.getLogger("transformers.x")

    def said(rank: int) -> list[str]:
        caplog.clear()
        # the ekd logger's own level too: an earlier `ekd -q` in this process leaves it at WARNING
        with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="ekd"), said_by_rank0(rank):
            ekd_log.info("job info")
            ekd_log.warning("job warning")
            ekd_log.info("rank fact", extra=EVERY_RANK)
            ekd_log.error("rank error")
            other.warning("library line")
        return [r.getMessage() for r in caplog.records]

    assert said(1) == ["rank fact", "rank error", "library line"]
    assert said(0) == ["job info", "job warning", "rank fact", "rank error", "library line"]
    caplog.clear()
    with caplog.at_level(logging.INFO), caplog.at_level(logging.INFO, logger="ekd"):
        ekd_log.info("after")
    assert [r.getMessage() for r in caplog.records] == ["after"]
