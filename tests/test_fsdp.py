"""FSDP2 (``train.parallel=fsdp``) and a sharded teacher (``teacher.placement=shard``): 2 gloo processes under
torchrun equal one process with the same global batch.

One torchrun spawn runs every case below on 2 ranks (micro-batch 2 each, 2 accumulation micro-batches); the
test process runs the same cases in one process (micro-batch 4). Per-step losses, KD terms and gradient norms
(of the sharded gradients: FSDP2 sums, never averages) agree within 1e-5 relative, the exported students
(gathered from the shards) within the tolerance of ``test_distributed``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from dist_runs import COLLECTIVES, torchrun_runs
from test_distributed import _metrics
from tiny import config_file, loss_curve, tiny_overrides, write_corpus

FSDP = ["train.parallel=fsdp"]
# name → (overrides of both runs, overrides of the 2-rank run only)
CASES = {
    "kd": (["method=kd", "method.ce_weight=0.5"], FSDP),
    "sekd": (["method=sekd"], FSDP),
    "atkd": (["method=atkd"], FSDP),  # TCKD + NCKD in closed form on the sharded head; hard/easy over ranks
    "random_pos": (["method=random_pos"], FSDP),
    "pos_rs": (["method=pos_rs"], FSDP),
    "selective_kd": (["method=selective_kd", "method.ce_weight=0"], FSDP),
    "adakd": (
        [
            "method=adakd",
            "train.max_steps=4",
            "method.latf_warmup_fraction=0",
            "method.latf_tolerance=0",
            "method.latf_step=0.5",
            "method.latf_ema_decay=0",
        ],
        FSDP,
    ),
    "gkd": (["method=gkd", "method.student_data_fraction=1", "method.prompt_tokens=8"], FSDP),
    # EGAD's trained projection lives in the FSDP2 root beside the student
    "egad": (["method=egad"], FSDP),
    # a tied head (one parameter for embeddings and head) and activation checkpointing under FSDP2
    # (2 ranks only: equal to one process without it)
    "tied": (
        ["method=kd", "model.student=preset:llama-micro-tied"],
        [*FSDP, "train.activation_checkpointing=true"],
    ),
    # the teacher under FSDP2 (DDP student, with activation checkpointing), and both sharded
    "shard_teacher": (["method=sekd"], ["teacher.placement=shard", "train.activation_checkpointing=true"]),
    "shard_both": (["method=kd"], [*FSDP, "teacher.placement=shard"]),
    # the export rounded to bf16 on each rank's shards before the final evaluation (ekd.models.export)
    "bf16_export": (["method=kd", "model.export_dtype=bfloat16"], FSDP),
}
COMMON = ["train.max_steps=3", "train.grad_accum_steps=2", "eval.teacher=false"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["train.cpu_offload=true"], "train.cpu_offload needs train.parallel=fsdp"),
        (["train.parallel=fsdp", "method.objective=ema_self_distill"], "use train.parallel=ddp"),
        (
            ["teacher.placement=shard", "teacher.source=cache", "teacher.cache_dir=c", "method=rskd"],
            "teacher.placement=shard shards an online teacher",
        ),
        (
            ["teacher.placement=shard", "teacher.source=none", "method.kd_weight=0", "method.ce_weight=1"],
            "loads none",
        ),
        (["train.parallel=fsdp", "model.lora_r=4"], "LoRA student"),
        (["train.gradient_checkpointing=true"], "activation_checkpointing"),  # the old key names the new one
    ],
)
def test_parallel_options_refused_where_meaningless(overrides, message):
    from ekd.config import ConfigError, load_config

    with pytest.raises(ConfigError, match=message) as e:
        load_config(None, overrides)
    assert "\n" not in str(e.value)  # one line


def test_parallel_options_accepted():
    from ekd.config import load_config

    cfg = load_config(None, ["train.parallel=fsdp", "train.cpu_offload=true", "teacher.placement=shard"])
    assert (cfg.train.parallel, cfg.train.cpu_offload, cfg.teacher.placement) == ("fsdp", True, "shard")


@pytest.fixture(scope="module")
def launch(tmp_path_factory) -> dict:
    """Every case trained in this process (micro-batch 4) and, in one 2-rank torchrun, on 2 ranks (micro-batch
    2 each), the collectives traced (who waits where while rank 0 runs the lm-eval tasks, dist_runs.py); after
    the runs the same launch's ranks run :func:`_fsdp_worker` (``EKD_TEST_BODY``: its 2 ranks without a spawn
    of their own), which records ``worker/body-rank<r>.txt``."""
    from ekd.cli import main

    tmp_path = tmp_path_factory.mktemp("fsdp")
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    cache = tmp_path / "cache"  # rskd from a cache: no teacher in memory, targets drawn at build time
    cache_cfg = config_file(
        tmp_path, corpus, "cache", **{"method.preset": "rskd", "teacher.cache_dir": str(cache)}
    )
    assert main(["-q", "cache", cache_cfg]) == 0
    cases = {**CASES, "rskd": (["method=rskd", "teacher.source=cache", f"teacher.cache_dir={cache}"], FSDP)}
    tasks_dir = _tasks_case(tmp_path, cases)
    runs = []
    for name, (both, ranked) in cases.items():
        single = tiny_overrides(tmp_path, corpus, f"single-{name}", **{"train.micro_batch_size": 4})
        assert main(["-q", "distill", *single, *COMMON, *both]) == 0, name
        two = tiny_overrides(tmp_path, corpus, f"two-{name}", **{"train.micro_batch_size": 2})
        runs.append([*two, *COMMON, *both, *ranked])
    trace, worker = tmp_path / "trace", tmp_path / "worker"
    trace.mkdir()
    worker.mkdir()
    env = {"EKD_TEST_TRACE": str(trace), "EKD_TEST_BODY": f"test_fsdp:_fsdp_worker:{worker}"}
    out = torchrun_runs(runs, tmp_path / "runs.json", env, timeout=900)
    return {
        "tmp": tmp_path,
        "cases": cases,
        "tasks_dir": tasks_dir,
        "trace": trace,
        "worker": worker,
        "out": out,
    }


@pytest.mark.slow
def test_fsdp_and_sharded_teacher_equal_one_process(launch):
    """The cases of ``launch``: 2 ranks equal one process (see the module's docstring)."""
    from transformers import AutoModelForCausalLM

    from ekd.cli import main

    tmp_path, cases, tasks_dir, trace, out = (
        launch[k] for k in ("tmp", "cases", "tasks_dir", "trace", "out")
    )
    assert out.returncode == 0, out.stderr[-3000:]
    mismatches = []
    for name in cases:
        a, b = tmp_path / "runs" / f"single-{name}", tmp_path / "runs" / f"two-{name}"
        for key in ("train/loss", "train/kd", "train/grad_norm"):
            one, two = torch.tensor(_metrics(a, key)), torch.tensor(_metrics(b, key))
            if one.shape != two.shape or not torch.allclose(two, one, rtol=1e-5, atol=1e-8):
                mismatches.append((name, key, one.tolist(), two.tolist()))
        wa = AutoModelForCausalLM.from_pretrained(a / "student").state_dict()
        wb = AutoModelForCausalLM.from_pretrained(b / "student").state_dict()
        if sorted(wa) != sorted(wb):
            mismatches.append((name, "keys", sorted(set(wa) ^ set(wb))))
            continue
        saved_a, saved_b = _file_keys(a / "student"), _file_keys(b / "student")  # a tied head stored once
        if saved_a != saved_b:
            mismatches.append((name, "saved keys", sorted(set(saved_a) ^ set(saved_b))))
        # atol 5e-6: see test_distributed (Adam turns fp32 reassociation into ~1e-6 updates); rounded to bf16,
        # such a difference may land on neighbouring bf16 values (2⁻⁸ apart, relative)
        rtol, atol = (2**-7, 5e-6) if name == "bf16_export" else (1e-5, 5e-6)
        for k in wa:
            if not torch.allclose(wb[k], wa[k], rtol=rtol, atol=atol):
                mismatches.append((name, k, float((wb[k] - wa[k]).abs().max())))
                break
    assert mismatches == [], mismatches
    # the sharded run's final evaluation scored the rounded weights it shipped: `ekd eval` of the export agrees
    shipped = tmp_path / "runs" / "two-bf16_export"
    assert json.loads((shipped / "student" / "config.json").read_text())["dtype"] == "bfloat16"
    scored = json.loads((shipped / "eval.json").read_text())["eval"]
    assert main(["-q", "eval", str(shipped)]) == 0
    again = json.loads((shipped / "eval.json").read_text())["eval"]
    assert again["ppl"] == pytest.approx(scored["ppl"], rel=1e-9)
    if tasks_dir is not None:
        _check_tasks_under_torchrun(tmp_path, list(cases).index("tasks"), trace)


def _file_keys(model_dir: Path) -> list[str]:
    """The tensor names in an exported student's ``model.safetensors``."""
    from safetensors import safe_open

    with safe_open(str(model_dir / "model.safetensors"), "pt") as f:
        return sorted(f.keys())


def _tasks_case(tmp_path: Path, cases: dict) -> Path | None:
    """Add the case "tasks" (when lm-eval is installed): ``eval.tasks`` at the end of a run with an FSDP2
    student and a sharded teacher; the local multiple-choice task of test_tasks.py."""
    import importlib.util

    if importlib.util.find_spec("lm_eval") is None:
        return None
    from test_tasks import MC_YAML, _mc_rows, _write_task

    tasks_dir = tmp_path / "tasks"
    tasks_dir.mkdir()
    _write_task(tasks_dir, "tiny_mc", _mc_rows(), MC_YAML)
    # the teacher's tasks run on the sharded teacher, gathered for evaluation (eval.teacher)
    both = ["method=kd", "eval.tasks=[tiny_mc]", f"eval.tasks_dir={tasks_dir}", "eval.teacher=true"]
    cases["tasks"] = (both, [*FSDP, "teacher.placement=shard"])
    return tasks_dir


def _check_tasks_under_torchrun(tmp_path: Path, run: int, trace: Path) -> None:
    """Rank 0 ran the tasks on the whole student and teacher (the numbers of a hand count and of one process)
    and communicated with no one meanwhile; rank 1 waited for its outcome on the host (gloo) group
    (run_on_main) — never in a collective of the default group, which is NCCL on GPUs and would time out."""
    from test_tasks import _loglikelihood, _mc_rows, _student

    def tasks(name: str) -> dict:
        return json.loads((tmp_path / "runs" / name / "eval.json").read_text())["tasks"]

    two, one = tasks("two-tasks"), tasks("single-tasks")
    model, tok = _student(tmp_path / "runs" / "two-tasks")
    rows = _mc_rows()
    hits = sum(
        max(range(3), key=lambda c: _loglikelihood(model, tok, r["question"], " " + r["choices"][c]))
        == r["answer"]
        for r in rows
    )
    assert two["student"]["tiny_mc"]["value"] == pytest.approx(hits / len(rows), abs=1e-12)
    for role in ("teacher", "student_init"):
        assert two[role]["tiny_mc"]["value"] == one[role]["tiny_mc"]["value"], role
    events = {
        r: [e for e in json.loads((trace / f"rank{r}.json").read_text()) if e["run"] == run] for r in (0, 1)
    }
    (span,) = [e for e in events[0] if e["what"] == "run_end_tasks"]
    t0, t1 = span["t0"], span["t1"]
    assert [e["what"] for e in events[0] if e is not span and t0 <= e["t0"] <= t1] == []
    # both ranks make the same collectives in the same order: rank 1's next one after those rank 0 finished
    # before its tasks is where it waits. (Rank 1's previous one may end a few ms after t0 — gloo tells it
    # later that rank 0 finished — so "overlapping the span" would count it: a flake under load.)
    before = [(e["what"], e["world"]) for e in events[0] if e["what"] in COLLECTIVES and e["t1"] <= t0]
    collectives = [e for e in events[1] if e["what"] in COLLECTIVES]
    calls = [(e["what"], e["world"]) for e in collectives]
    assert calls[: len(before)] == before, (calls, before)
    wait = collectives[len(before)]
    assert (wait["what"], wait["world"]) == ("broadcast_object_list", False), wait
    assert wait["t0"] <= t1 <= wait["t1"], (wait, t1)


def _toy_student(tied: bool, meta: bool = False) -> torch.nn.Module:
    """A 2-layer Llama (seeded: alike on every rank); ``meta``: on the meta device, no values."""
    from transformers import LlamaConfig, LlamaForCausalLM

    if meta:
        with torch.device("meta"):
            return _toy_student(tied)
    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=40,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        tie_word_embeddings=tied,
    )
    return LlamaForCausalLM(cfg)


def _toy_step(student, extra, micro_batches, engine, rows: slice, count: float) -> None:
    """Σ over micro-batches of CE-like sums / the global count; the head applied outside the model's forward;
    ``extra`` used only on rows 0–3 of the first micro-batch (on rank 0 only, under 2 ranks)."""
    from ekd.train.distributed import micro_batch_sync

    for i, ids in enumerate(micro_batches):

        def run(ids=ids, i=i) -> torch.Tensor:
            h = student.model(input_ids=ids[rows]).last_hidden_state  # (b, T, D)
            logits = h @ student.lm_head.weight.T  # (b, T, V)
            loss = torch.nn.functional.cross_entropy(
                logits.flatten(0, 1), ids[rows].flatten(), reduction="sum"
            )
            if i == 0 and rows.start == 0:
                loss = loss + extra(h[:4]).pow(2).sum()
            return loss / count

        with micro_batch_sync(engine, last=i == len(micro_batches) - 1):
            (engine(run) if engine is not None else run()).backward()


def _fsdp_worker(rank: int, out_dir: str) -> None:
    import copy

    from ekd.train.checkpoint import verify_checkpoint
    from ekd.train.distributed import Ranks
    from ekd.train.fsdp import clip_grad_norm, full_state_dict, shard_frozen, shard_student, submodule_state
    from ekd.train.memory import param_bytes, tensor_bytes
    from ekd.train.sharded_checkpoint import restore_checkpoint, save_sharded_checkpoint, training_state

    torch.set_num_threads(1)
    data = torch.randint(0, 40, (2, 8, 6), generator=torch.Generator().manual_seed(1))  # 2 micro-batches
    count = float(data[0].numel() * 2)
    for tied in (True, False):
        # tied: rank 1 builds the student on the meta device and receives its shards from rank 0
        torch.manual_seed(1)
        extra = torch.nn.Linear(16, 3)
        student, ref_student = _toy_student(tied, meta=tied and rank == 1), _toy_student(tied)
        ref_extra = copy.deepcopy(extra)
        full = param_bytes(ref_student) + param_bytes(extra)
        root = shard_student(student, {"extra": extra}, torch.device("cpu"), from_rank0=tied)
        assert (student.lm_head.weight is student.model.embed_tokens.weight) == tied  # still one parameter
        assert tensor_bytes(root.parameters()) <= 0.55 * full  # each rank holds about half
        _toy_step(student, extra, list(data), root, slice(rank * 4, rank * 4 + 4), count)
        _toy_step(ref_student, ref_extra, list(data), None, slice(0, 8), count)  # one process, 8 rows
        ref = dict(ref_student.named_parameters()) | {
            f"extra.{k}": p for k, p in ref_extra.named_parameters()
        }
        got = dict(student.named_parameters()) | {f"extra.{k}": p for k, p in extra.named_parameters()}
        for k, p in ref.items():  # gradients: the sum over ranks, not an average
            torch.testing.assert_close(got[k].grad.full_tensor(), p.grad, rtol=1e-5, atol=1e-7)
        want = torch.nn.utils.clip_grad_norm_(list(ref.values()), 0.01)
        norm = clip_grad_norm(list(got.values()), 0.01)  # the norm of the whole (sharded) gradient
        assert abs(norm - float(want)) <= 1e-5 * float(want), (norm, float(want))
        for k, p in ref.items():
            torch.testing.assert_close(got[k].grad.full_tensor(), p.grad, rtol=1e-5, atol=1e-8)
        # a sharded (DCP) checkpoint, every rank writing its shards, read back into fresh shards
        opt = torch.optim.AdamW(root.parameters(), lr=1e-2)
        opt.step()
        ranks = Ranks(rank, 2, torch.device("cpu"))
        state = {"step": 1, "loader": {}, "policy": {}, "temperature": {}}
        run = Path(out_dir) / f"run{tied}"
        ckpt = save_sharded_checkpoint(run, 1, training_state(student, {"extra": extra}), opt, state, ranks)
        if rank == 0:
            verify_checkpoint(ckpt)
        fresh_student, fresh_extra = _toy_student(tied), torch.nn.Linear(16, 3)
        fresh = shard_student(fresh_student, {"extra": fresh_extra}, torch.device("cpu"))
        fresh_opt = torch.optim.AdamW(fresh.parameters(), lr=1e-2)
        got_state = restore_checkpoint(ckpt, fresh_student, fresh_opt, {"extra": fresh_extra}, ranks, 1)
        assert got_state["step"] == 1
        a, b = full_state_dict(root), full_state_dict(fresh)
        assert sorted(a) == sorted(b)
        for k in a:
            torch.testing.assert_close(b[k], a[k], rtol=0, atol=0)
        for p, q in zip(root.parameters(), fresh.parameters()):
            sa, sb = opt.state[p], fresh_opt.state[q]
            torch.testing.assert_close(sb["exp_avg_sq"].to_local(), sa["exp_avg_sq"].to_local())
        if rank == 0:
            assert sorted(submodule_state(a, "extras")) == ["extra.bias", "extra.weight"]
            # the export of the sharded student holds the keys of the one-process export (a tied head once)
            assert _saved_keys(student, Path(out_dir, f"fsdp{tied}"), submodule_state(a, "student")) == (
                _saved_keys(ref_student, Path(out_dir, f"one{tied}"))
            )
    # a sharded frozen teacher received from rank 0 (rank 1 builds it on the meta device): about half the
    # bytes, the same hidden states as the whole model (rotary inv_freq, a non-persistent buffer, included)
    teacher = _toy_student(False, meta=rank == 1).eval().requires_grad_(False)
    whole = _toy_student(False).eval().requires_grad_(False)
    shard = shard_frozen(teacher, torch.device("cpu"), from_rank0=True)
    assert param_bytes(teacher) <= 0.55 * param_bytes(whole)
    with torch.no_grad():
        shard.unshard()
        h = teacher.model(input_ids=data[0]).last_hidden_state
        torch.testing.assert_close(h, whole.model(input_ids=data[0]).last_hidden_state)
        shard.reshard()
    _load_failures_reach_every_rank(rank)


def _saved_keys(model, out: Path, state: dict | None = None) -> list[str]:
    """The tensor names ``save_model_dir`` writes for ``model`` (with ``state`` instead of its own weights)."""
    from ekd.models.load import save_model_dir

    save_model_dir(model, None, out, state_dict=state)
    return _file_keys(out)


def _load_failures_reach_every_rank(rank: int) -> None:
    """A load that fails on rank 0 (the real weights) or on rank 1 (the meta build) is an error on every rank:
    no rank is left waiting in the shard broadcast."""
    from ekd.errors import EkdError, ModelError
    from ekd.train.distributed import Ranks
    from ekd.train.rank0_load import load_on_rank0

    ranks = Ranks(rank, 2, torch.device("cpu"))

    def fails() -> torch.nn.Module:
        raise ModelError("model.student: cannot load a model from 'x' (broken)")

    works = lambda: torch.nn.Linear(2, 2)  # noqa: E731
    for load, empty, failing in ((fails, works, 0), (works, fails, 1)):
        with pytest.raises(EkdError) as e:
            load_on_rank0(ranks, "model.student", load, empty)
        if rank == failing:  # its own error, unchanged
            assert type(e.value) is ModelError
        else:
            assert str(e.value) == (
                f"rank {failing} could not load model.student: model.student: cannot load a model from 'x' (broken)"
            )


@pytest.mark.slow
def test_fsdp_sums_clips_checkpoints_and_shards(launch):
    """2 gloo ranks through ``shard_student``: after 2 micro-batches every rank's shards hold the one-process
    gradient of the global batch (a sum, including a parameter used on one rank only), the clipped norm is the
    one-process norm, each rank holds ≤ 0.55 of the parameter bytes, a sharded checkpoint round-trips into
    fresh shards through torch.distributed.checkpoint (tied and untied heads), and a sharded frozen teacher gives the whole model's hidden states.
    The tied student and the teacher are read by rank 0 only (rank 1 builds them on the meta device and
    receives its shards); a load failing on either rank is an error on both. (The ranks: those of
    ``launch``, after its runs.)"""
    for rank in (0, 1):
        said = launch["worker"] / f"body-rank{rank}.txt"
        text = said.read_text() if said.exists() else f"not run:\n{launch['out'].stderr[-3000:]}"
        assert text == "ok", f"rank {rank}: {text}"


@pytest.mark.slow
def test_fsdp_with_an_evaluation_on_one_rank_and_several_layers_does_not_hang(tmp_path):
    """Try-out 145, F3: a 2-rank FSDP2 run of a student with more than one decoder layer hung in its first backward
    when the starting evaluation gave rank 0 a batch and rank 1 none. FSDP2 records each forward's order of
    parameter groups for the backward's prefetch; rank 0's evaluation forwards (inside `gathered`) were recorded, so
    its backward prefetched another layer than rank 1's and the gloo collectives paired an all-gather with a
    reduce-scatter. Forwards inside `gathered` are forgotten on its exit; the periodic evaluation (eval.every) and
    on-policy generation of other lengths run there too."""
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    common = {"model.student": "preset:llama-tiny", "model.teacher": "preset:llama-small", "eval.every": 1}
    common |= {
        "train.max_steps": 2,
        "eval.batch_size": 4,
        "data.max_eval_blocks": 4,
    }  # one eval batch: rank 0's
    single = tiny_overrides(tmp_path, corpus, "single", **common, **{"train.micro_batch_size": 4})
    from ekd.cli import main

    assert main(["-q", "distill", *single]) == 0
    two = tiny_overrides(tmp_path, corpus, "two", **common, **{"train.micro_batch_size": 2})
    out = torchrun_runs([[*two, "train.parallel=fsdp"]], tmp_path / "runs.json", timeout=240)
    assert out.returncode == 0, out.stderr[-3000:]
    losses = [loss_curve(tmp_path / "runs" / name) for name in ("single", "two")]
    assert losses[0].keys() == losses[1].keys() == {1, 2}
    assert all(abs(losses[0][s] - losses[1][s]) < 1e-5 for s in (1, 2)), losses


def _teacher_steps(rank: int, out_dir: str) -> None:
    """Four steps of a sharded frozen teacher (signal, then the step's release), and what FSDP2 still records."""
    from types import SimpleNamespace

    from ekd.models.load import build_preset
    from ekd.teacher.online import OnlineTeacher
    from ekd.train.fsdp import fsdp_modules, shard_frozen

    teacher = build_preset("llama-tiny", 64, seed=0).eval().requires_grad_(False)
    root = shard_frozen(teacher, torch.device("cpu"))
    source = OnlineTeacher(teacher, 64, shard=root)
    x = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(0))
    batch = SimpleNamespace(input_ids=x, attention_mask=torch.ones_like(x), labels=x)
    for _ in range(4):
        source.signal(batch, set())
        source.release()
    # an FSDP2 without reset_iter_state (an older torch; this process only): the fallback forgets them too
    type(root).reset_iter_state = property(lambda self: (_ for _ in ()).throw(AttributeError))
    assert not hasattr(root, "reset_iter_state")
    for _ in range(2):
        source.signal(batch, set())
        source.release()
    states = [m._get_fsdp_state() for m in fsdp_modules(root)]
    recorded = sum(len(g._post_forward_indices) for s in states for g in s._fsdp_param_groups)
    recorded += sum(len(s._comm_ctx.post_forward_order) for s in states)
    Path(out_dir, f"recorded-{rank}.txt").write_text(str(recorded))


def test_a_sharded_teachers_forwards_are_not_kept_step_after_step(tmp_path):
    """FSDP2 records every forward's order of parameter groups for the next backward; a frozen sharded teacher never
    runs one, so each step's teacher forwards were kept for good — a list growing every step (host memory of a long
    run with teacher.placement=shard). The step's release forgets them."""
    from dist_runs import gloo_ranks

    gloo_ranks(_teacher_steps, tmp_path)
    assert [Path(tmp_path, f"recorded-{r}.txt").read_text() for r in (0, 1)] == ["0", "0"]


def _generation_inside_gathered(rank: int, out_dir: str) -> None:
    """Whether transformers sees the sharded student as FSDP-managed inside and after ``gathered``, and a generation
    on rank 0 alone (a number of calls the other rank does not make)."""
    from transformers.distributed.fsdp import is_fsdp_managed_module

    from ekd.models.load import build_preset
    from ekd.train.fsdp import gathered, shard_student

    student = build_preset("llama-tiny", 64, seed=0)
    root = shard_student(student, {}, torch.device("cpu"))
    with gathered(root):
        inside = is_fsdp_managed_module(student)
        if rank == 0:  # rank 1 generates nothing: no per-token collective may wait for it
            student.generate(torch.tensor([[1, 2, 3]]), max_new_tokens=4, do_sample=False, pad_token_id=0)
    torch.distributed.barrier()
    Path(out_dir, f"managed-{rank}.txt").write_text(f"{inside} {is_fsdp_managed_module(student)}")


def test_generation_inside_gathered_is_not_synced_across_ranks(tmp_path):
    """Try-out 148, F1: every 2-rank FSDP2 on-policy run whose ranks made different numbers of generate calls hung:
    transformers' generate syncs each token across ranks (synced_gpus) for a model torch marked FSDP-managed, though
    inside ``gathered`` the weights are whole on every rank. lm-eval's generation tasks on rank 0 alone likewise."""
    from dist_runs import gloo_ranks

    gloo_ranks(_generation_inside_gathered, tmp_path)
    assert [Path(tmp_path, f"managed-{r}.txt").read_text() for r in (0, 1)] == ["False True", "False True"]
