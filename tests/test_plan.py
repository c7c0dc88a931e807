"""``ekd plan`` (issue 12 part 2): exact parameter counts from a meta-device build, and per-rank bytes of
parameters, gradients and AdamW state that match what a tiny run holds, in one process, under 2-rank DDP and
under 2-rank FSDP2 with a sharded teacher (within 10%)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
import torch

from dist_runs import gloo_ranks
from ekd.config import Config
from ekd.models.load import build_preset
from ekd.plan import GIB, estimate, shape_of
from ekd.sizes import parse_bytes
from ekd.train.distributed import Ranks, data_parallel
from ekd.train.optim import build_optimizer
from hostile import cli, one_error_line
from tiny import config_file

VOCAB = 320


def _unique_bytes(tensors) -> int:
    """Bytes of distinct storages (a tied head is one tensor)."""
    seen: dict[int, int] = {}
    for t in tensors:
        seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def _measured(rank: int = 0, world: int = 1) -> dict[str, int]:
    """Train llama-tiny one step (AdamW as ekd builds it, DDP when world > 1); bytes of what each rank holds."""
    model = build_preset("llama-tiny", VOCAB, seed=0)
    optimizer = build_optimizer(list(model.named_parameters()), Config())
    engine = data_parallel(model, {}, Ranks(rank, world, torch.device("cpu")))
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(rank))
    run = lambda: model(x, labels=x).loss  # noqa: E731
    (engine(run) if engine is not None else run()).backward()
    optimizer.step()
    return {
        "params": _unique_bytes(model.parameters()),
        "grads": _unique_bytes(p.grad for p in model.parameters() if p.grad is not None),
        "optimizer": _unique_bytes(
            v for s in optimizer.state.values() for v in s.values() if torch.is_tensor(v)
        ),
    }


def _measured_fsdp() -> dict[str, int]:
    """Under 2 ranks: llama-tiny sharded by FSDP2 trained one step, llama-small as a sharded frozen teacher
    (fp32, as on CPU); the bytes of this rank's shards (``ekd.train.memory``, what the trainer logs)."""
    from ekd.train.fsdp import shard_frozen, shard_student
    from ekd.train.memory import optimizer_bytes, param_bytes, tensor_bytes

    model = build_preset("llama-tiny", VOCAB, seed=0)
    root = shard_student(model, {}, torch.device("cpu"))
    optimizer = build_optimizer(list(model.named_parameters()), Config())
    x = torch.randint(0, VOCAB, (2, 16), generator=torch.Generator().manual_seed(0))
    root(lambda: model(x, labels=x).loss).backward()
    optimizer.step()
    teacher = build_preset("llama-small", VOCAB, seed=1).eval().requires_grad_(False)
    shard_frozen(teacher)
    return {
        "params": tensor_bytes(model.parameters()),
        "grads": tensor_bytes(p.grad for p in model.parameters()),
        "optimizer": optimizer_bytes(optimizer),
        "teacher": param_bytes(teacher),
    }


def _planned(gpus: int, parallel: str = "ddp") -> dict[str, int]:
    sharded = parallel == "fsdp"
    m = estimate(
        shape_of("preset:llama-tiny", VOCAB),
        shape_of("preset:llama-small", VOCAB) if sharded else None,
        gpus=gpus,
        parallel=parallel,
        placement="shard" if sharded else "replicate",
        tokens=32,
        chunk_rows=64,
        activation_checkpointing=False,
        teacher_bytes_per_param=4,  # fp32 on CPU
    )
    return {"params": m.params, "grads": m.grads, "optimizer": m.optimizer, "teacher": m.teacher}


def _within(measured: dict[str, int], planned: dict[str, int], tol: float = 0.10) -> None:
    for k, v in measured.items():
        assert abs(planned[k] - v) <= tol * v, (k, planned[k], v)


def test_parameter_counts_are_exact_on_the_meta_device():
    """Counts from the meta build equal the real model's, a tied head counted once."""
    for name in ("llama-tiny", "llama-micro-tied"):
        shape = shape_of(f"preset:{name}", VOCAB)
        real = build_preset(name, VOCAB)
        assert shape.params == sum(p.numel() for p in real.parameters())  # parameters() deduplicates
        per_layer = [sum(p.numel() for p in layer.parameters()) for layer in real.model.layers]
        assert shape.layer_params == max(per_layer)
        assert shape.root_params == shape.params - sum(per_layer)
        assert (shape.layers, shape.hidden, shape.vocab) == (len(per_layer), real.config.hidden_size, VOCAB)
        assert shape.layer_activations.recognized


def test_plan_matches_one_process():
    _within(_measured(), _planned(1))


def _two_rank_worker(rank: int, out_dir: str) -> None:
    measured = {"ddp": _measured(rank, 2), "fsdp": _measured_fsdp()}
    torch.save(measured, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.mark.slow
def test_plan_matches_two_ranks():
    """Per rank under DDP: a full replica of parameters, gradients and AdamW state (the plan's ``ddp``);
    under FSDP2 with a sharded teacher: half of each, and half of the teacher (``fsdp``, ``shard``)."""
    with tempfile.TemporaryDirectory() as tmp:
        gloo_ranks(_two_rank_worker, tmp)
        measured = [torch.load(os.path.join(tmp, f"rank{r}.pt"), weights_only=True) for r in (0, 1)]
    for m in measured:
        _within(m["ddp"], _planned(2))
        _within(m["fsdp"], _planned(2, "fsdp"))
        assert set(m["fsdp"]) == {"params", "grads", "optimizer", "teacher"}


def test_sharding_divides_the_state_by_the_ranks():
    """FSDP's sharded state and a sharded teacher are the replicated bytes / N (plus the unsharded working
    set); DDP adds its gradient buckets."""
    s, t = shape_of("preset:llama-base", 4096), shape_of("preset:llama-small", 4096)
    kw = dict(gpus=4, tokens=256, chunk_rows=64, activation_checkpointing=False)
    ddp = estimate(s, t, parallel="ddp", placement="replicate", **kw)
    fsdp = estimate(s, t, parallel="fsdp", placement="shard", **kw)
    assert fsdp.optimizer == 8 * -(-s.params // 4) and ddp.optimizer == 8 * s.params
    assert fsdp.grads == 4 * -(-s.params // 4) and ddp.ddp_buckets == ddp.grads == 4 * s.params
    assert fsdp.teacher == 2 * -(-t.params // 4) and ddp.teacher == 2 * t.params
    # FSDP2's working set: the student's root and 2 layers (bf16), the teacher's root and 2 layers
    assert ddp.gathered == 0
    assert fsdp.gathered == 2 * (s.root_params + 2 * s.layer_params + t.root_params + 2 * t.layer_params)
    ac = estimate(s, t, parallel="ddp", placement="replicate", **{**kw, "activation_checkpointing": True})
    assert ac.activations < ddp.activations


def test_activations_follow_the_layer_and_the_dtypes():
    """Try-out 24, finding 5: a flat 17 values per (layer, token, h) was ~1.7× low for a SwiGLU student. The
    per-layer values come from the module tree (``tests/test_stored_activations.py`` measures them); the
    estimate adds one layer's backward, and with checkpointing keeps each layer's input in the residual dtype."""
    s = shape_of("preset:llama-base", 4096)  # h=256, 8 heads, 4 k/v heads, f=768
    stored, h, t, L = s.layer_activations, 256, 256, 6
    assert stored.values == 4 * h + 2 + 2 * h + (h + h // 2 + h // 2 + h + 8) + 4 * 768  # 21.04·h
    kw = dict(gpus=1, parallel="ddp", placement="replicate", tokens=t, chunk_rows=64)
    fp32 = estimate(s, None, activation_checkpointing=False, activation_bytes=4, **kw)
    assert fp32.activations == L * t * stored.values * 4 + t * 3 * 768 * 4
    bf16 = estimate(s, None, activation_checkpointing=False, **kw)  # autocast, fp32 parameters
    copies = 5 * h  # q, k, v, gate and up each save a bf16 copy of their normalized input
    assert bf16.activations == L * t * (stored.residual * 4 + (copies + stored.compute) * 2) + t * 3 * 768 * 2
    ac = estimate(s, None, activation_checkpointing=True, **kw)
    assert (
        ac.activations
        == L * t * h * 4 + t * (stored.residual * 4 + (copies + stored.compute) * 2) + t * 3 * 768 * 2
    )
    fsdp = estimate(s, None, activation_checkpointing=True, **{**kw, "parallel": "fsdp"})  # bf16 residual
    assert fsdp.activations == L * t * h * 2 + t * stored.values * 2 + t * 3 * 768 * 2


def test_parse_bytes():
    assert parse_bytes("80GiB") == 80 * GIB and parse_bytes("141GB") == 141 * 10**9
    assert parse_bytes("81920 MiB") == 80 * GIB and parse_bytes("1024B") == 1024


@pytest.mark.parametrize(
    "text, says",
    [
        ("80", "'80' has no unit; write 80GiB (or 80GB)"),  # was read as 80 bytes (try-out 4, finding 9)
        ("0GiB", "--gpu-memory must be at least 1 byte, got 0GiB (0 bytes)"),
        ("0", "--gpu-memory must be at least 1 byte, got 0 (0 bytes)"),
        ("-5GiB", "--gpu-memory must be at least 1 byte, got -5GiB"),
        ("0.5B", "got 0.5B (0 bytes)"),  # said "must be > 0" of 0.5 (try-out 6)
        ("nan", "'nan' is not a size"),
    ],
)
def test_gpu_memory_without_a_unit_or_not_positive_is_one_line(tmp_path, capsys, monkeypatch, text, says):
    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    rc, _, err = cli(capsys, "plan", config, "--gpus", "2", "--gpu-memory", text)
    assert says in one_error_line(rc, err)  # '-5GiB' was argparse's "expected one argument"


@pytest.mark.parametrize(
    "words", [["--gpu-memory", "80", "GiB"], ["--gpu-memory=80", "GiB"], ["--gpu-memory", "1.5", "tb"]]
)
def test_gpu_memory_written_with_a_space_names_the_option(tmp_path, capsys, monkeypatch, words):
    """'--gpu-memory 80 GiB': argparse took 'GiB' for a config file ("config file not found: GiB")."""
    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    rc, _, err = cli(capsys, "plan", config, "--gpus", "2", *words)
    size = "".join(words[-2:]).split("=")[-1]
    line = one_error_line(rc, err)
    assert line.startswith("ekd: error: --gpu-memory: ") and f"write --gpu-memory {size} (no space)" in line


@pytest.mark.parametrize(
    "value, says",
    [
        ("-3", "--vocab-size must be between 2 and 16,777,216"),
        ("0", "got 0"),
        ("1", "got 1"),  # was planned: a one-token vocabulary has nothing to distill
        ("100000000000", "got 100,000,000,000"),  # was planned at 1,215,941.9 GiB per rank
        ("1e11", "got 100,000,000,000"),  # was argparse's usage text (try-out 6)
    ],
)
def test_vocab_size_out_of_range_is_one_line(tmp_path, capsys, monkeypatch, value, says):
    """-3 was a torch traceback ('negative dimension'), 0 silently meant 'from the config'; 1 and 1e11 were
    planned."""
    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    rc, _, err = cli(capsys, "plan", config, "--gpus", "2", "--vocab-size", value)
    assert says in one_error_line(rc, err)
    rc, out, _ = cli(capsys, "plan", config, "--gpus", "2", "--vocab-size", "1000")
    assert rc == 0 and "V=1000" in out


def test_vocab_size_without_a_preset_model_is_refused(tmp_path, capsys, monkeypatch):
    """--vocab-size sizes preset models only; with Hugging Face models alone it was ignored silently."""
    monkeypatch.chdir(tmp_path)
    model_dir = tmp_path / "hf"
    build_preset("llama-micro", VOCAB).save_pretrained(model_dir)
    config = config_file(Path("."), Path("corpus"), "p")
    both = [f"model.student={model_dir}", f"model.teacher={model_dir}"]
    rc, _, err = cli(capsys, "plan", config, *both, "--gpus", "1", "--vocab-size", "5000")
    line = one_error_line(rc, err)
    assert "preset:<name> models only" in line and "model.student and model.teacher are" in line, line
    rc, out, _ = cli(capsys, "plan", config, *both, "--gpus", "1")
    assert rc == 0 and f"V={VOCAB}" in out
    # try-out 118, F3: beside a Hugging Face model the run builds its presets at that model's V, and a preset
    # teacher of 5000 (planned in silence before) never exists
    own = [both[0], "model.tokenizer=student"]  # (the tiny config trains a BPE: a what-if, said in a line)
    # a directory without a tokenizer, named as the run's tokenizer, is refused as distill refuses it (try-out 123,
    # F5: planned with a note); one with its tokenizer refuses another V (test_a_padded_hugging_face_head_…)
    line = one_error_line(*cli(capsys, "plan", config, *own, "--gpus", "1", "--vocab-size", "5000")[::2])
    assert f"model.student: {model_dir} holds no tokenizer files" in line, line
    line = one_error_line(*cli(capsys, "plan", config, *own, "--gpus", "1")[::2])
    assert f"model.student: {model_dir} holds no tokenizer files" in line, line


def test_plan_cli(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    rc, out, _ = cli(capsys, "plan", config, "--gpus", "2", "--gpu-memory", "4GiB")
    assert rc == 0
    assert "student preset:llama-micro:" in out and "teacher preset:llama-tiny:" in out
    assert "parameters, 1 layer, d=32" in out and "parameters, 2 layers, d=64" in out  # try-out 9: "1 layers"
    assert out.count("\nddp ") == 4 and "fits: train.parallel=ddp teacher.placement=replicate" in out
    rc, out, _ = cli(capsys, "plan", config, "--gpus", "2", "--parallel", "fsdp", "--placement", "shard")
    assert rc == 0 and "ddp " not in out and out.count("fsdp      shard") == 2
    rc, out, _ = cli(capsys, "plan", config, "--gpus", "1", "--gpu-memory", "1MiB")
    assert rc == 0 and "1 GPU × 1.0 MiB" in out  # not "0.0 GiB"
    # only the fixed overhead does not fit: more GPUs or a smaller batch cannot help (try-out 4, finding 9)
    assert "nothing fits in 1.0 MiB: the fixed 2.0 GiB of CUDA overhead" in out and "more GPUs" not in out
    rc, out, _ = cli(capsys, "plan", config, "--gpus", "1", "--gpu-memory", "2049MiB")  # overhead + 1 MiB
    assert rc == 0 and "nothing fits in 2.0 GiB: the smallest option needs" in out and "more GPUs" in out
    rc, _, err = cli(capsys, "plan", config, "--gpus", "2", "--gpu-memory", "lots")
    assert "--gpu-memory: 'lots' is not a size" in one_error_line(rc, err)
    rc, _, err = cli(capsys, "plan", config, "--gpus", "0")
    assert "--gpus must be ≥ 1" in one_error_line(rc, err)


def test_a_gpt2_student_is_planned_and_a_model_without_a_layer_list_is_one_line(
    tmp_path, capsys, monkeypatch
):
    """Try-out 8, bug 6: a GPT-2 student (its decoder layers in ``transformer.h``, not ``.layers``) ended
    ``ekd plan`` in an AttributeError traceback. Its layers are found as FSDP finds them
    (``ekd.models.layers.decoder_layers``); a body with no layer list at all (OPT's sit in
    ``model.decoder.layers``) is one line naming the model."""
    from transformers import AutoConfig, AutoModelForCausalLM

    monkeypatch.chdir(tmp_path)
    gpt2 = AutoConfig.for_model("gpt2", vocab_size=VOCAB, n_embd=32, n_layer=3, n_head=4, n_positions=64)
    AutoModelForCausalLM.from_config(gpt2).save_pretrained(tmp_path / "gpt2")
    config = config_file(Path("."), Path("corpus"), "p")
    rc, out, err = cli(capsys, "plan", config, "model.student=gpt2", "--gpus", "1", "--gpu-memory", "80GiB")
    assert rc == 0, err
    assert f"student {tmp_path / 'gpt2'}:" in out and "3 layers, d=32" in out, out
    shape = shape_of(str(tmp_path / "gpt2"), VOCAB)
    model = AutoModelForCausalLM.from_config(gpt2)
    block = sum(p.numel() for p in model.transformer.h[0].parameters())
    assert shape.layers == 3 and shape.layer_params == block
    assert shape.root_params == shape.params - 3 * block  # embeddings, final norm (the head is tied)
    opt = AutoConfig.for_model(
        "opt", vocab_size=VOCAB, hidden_size=32, ffn_dim=64, num_hidden_layers=2, num_attention_heads=4,
        word_embed_proj_dim=32, max_position_embeddings=64,
    )  # fmt: skip
    AutoModelForCausalLM.from_config(opt).save_pretrained(tmp_path / "opt")
    rc, _, err = cli(capsys, "plan", config, "model.student=opt", "--gpus", "1", "--gpu-memory", "80GiB")
    line = one_error_line(rc, err)
    assert "OPTForCausalLM has no list of decoder layers" in line and "ekd plan" in line, line
    assert f"model.student '{tmp_path / 'opt'}'" in line, line
    # try-out 16: blocks longer than GPT-2's learned positions fail the run at load; the plan says so first
    rc, _, err = cli(
        capsys,
        "plan",
        config,
        "model.student=gpt2",
        "data.block_length=128",
        "--gpus",
        "1",
        "--gpu-memory",
        "80GiB",
    )
    line = one_error_line(rc, err)
    assert "has 64 positions (n_positions=64), learned" in line and "set data.block_length ≤ 64" in line, line
    # try-out 21: a teacher path that does not exist was "pass --vocab-size V", then "drop --vocab-size"
    missing = ["model.teacher=runs/nowhere/teacher", "model.tokenizer=teacher"]
    rc, _, err = cli(capsys, "plan", config, *missing, "--gpus", "1", "--gpu-memory", "80GiB")
    line = one_error_line(rc, err)
    assert "model.teacher: 'runs/nowhere/teacher' is not an existing path (read as " in line, line
    assert "--vocab-size" not in line


def test_preset_models_with_a_tokenizer_of_their_own_are_planned_at_its_length(tmp_path, capsys, monkeypatch):
    """Try-out 24: with preset models and model.tokenizer naming a tokenizer directory, plan asked for
    --vocab-size though distill reads that tokenizer; V is now its length, as distill builds the presets."""
    from ekd.data.tokenizer import train_bpe_tokenizer

    monkeypatch.chdir(tmp_path)
    tok = train_bpe_tokenizer([f"a b c word{i} {i * 7}" for i in range(200)], 300)
    tok.save_pretrained(tmp_path / "tok")
    config = config_file(Path("."), Path("corpus"), "p")
    rc, out, err = cli(capsys, "plan", config, f"model.tokenizer={tmp_path / 'tok'}", "--gpus", "1")
    assert rc == 0 and f"V={len(tok)}" in out, err
    # one GPU: FSDP2 and a sharded teacher are no-ops in one process, so they are no rows to choose from
    rows = [line.split()[:2] for line in out.splitlines() if line.startswith(("ddp ", "fsdp "))]
    assert rows and all(r == ["ddp", "replicate"] for r in rows), out
    assert "one GPU:" not in out
    rc, out, _ = cli(
        capsys, "plan", config, f"model.tokenizer={tmp_path / 'tok'}", "--gpus", "1", "--parallel", "fsdp"
    )
    assert rc == 0 and out.startswith(
        "one GPU: train.parallel=fsdp and teacher.placement=shard do nothing"
    ), out


def test_the_head_holds_at_most_the_micro_batchs_rows(tmp_path, capsys, monkeypatch):
    """Try-out 56, F3: the head column was 4·chunk·V·4 with a 2048-row chunk over a 512-token micro-batch (4× the
    buffers the fused head allocates: it loops over the batch's rows, ``chunked.py``)."""
    from ekd.plan import HEAD_BUFFERS, estimate, shape_of

    student = shape_of("preset:llama-micro", 320)
    kw = dict(gpus=1, parallel="ddp", placement="replicate", activation_checkpointing=False)
    for tokens, chunk, rows in ((512, 2048, 512), (4096, 2048, 2048), (2048, 2048, 2048)):
        head = estimate(student, None, tokens=tokens, chunk_rows=chunk, **kw).head
        assert head == HEAD_BUFFERS * rows * 320 * 4, (tokens, chunk)


def test_a_model_path_that_is_no_model_is_named_so(tmp_path, capsys, monkeypatch):
    """Try-out 56, F4: a missing path or a directory of no model got transformers' 'Unrecognized model ...
    Should have a `model_type` key in its config.json'."""
    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    Path("corpus").mkdir()
    (Path("corpus") / "a.py").write_text("x = 1\n")
    missing = str(tmp_path / "nonexistent")
    for spec, says in (
        (missing, f"{missing} does not exist"),
        (str(tmp_path / "corpus"), "is not a Hugging Face"),
    ):
        rc, _, err = cli(
            capsys, "plan", config, "--gpus", "1", f"model.student={spec}", "--vocab-size", "320"
        )
        line = one_error_line(rc, err)
        assert f"model.student: {spec}" in line and says in line and "model_type" not in line, line


def test_a_reader_that_goes_away_ends_the_command_quietly(tmp_path, monkeypatch):
    """Try-out 56, F7: `ekd plan ... | head` (and `ekd cache info|verify`) ended in a BrokenPipeError traceback."""
    import subprocess
    import sys

    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    proc = subprocess.Popen(
        [sys.executable, "-m", "ekd", "plan", config, "--gpus", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "src")},
    )
    proc.stdout.close()  # the reader is gone before ekd writes
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 141 and "Traceback" not in err and "BrokenPipe" not in err, err


def test_a_plan_shows_both_checkpointing_modes_and_the_chunk_that_fits(tmp_path, capsys, monkeypatch):
    """Try-out 118, F1 and F2: a config asking for activation checkpointing was planned with it only (never shown
    that it fits without, at ~1/3 less compute); and when nothing fitted the plan advised more GPUs or a smaller
    micro-batch, which leave the head's chunk rows × V buffers as they are, not the train.head_chunk_size that
    fits. A config that asks for what-if presets beside a BPE it trains is said to be one."""
    monkeypatch.chdir(tmp_path)
    qwen = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-1.5b-to-0.5b.yaml"
    shapes = ["model.student=preset:qwen2.5-0.5b-shape", "model.teacher=preset:qwen2.5-1.5b-shape"]
    args = ["plan", str(qwen), *shapes, "--vocab-size", "151936", "--gpus", "2", "--parallel", "ddp"]
    rc, out, err = cli(capsys, *args, "--gpu-memory", "80GiB")
    assert rc == 0, err
    modes = {line.split()[2] for line in out.splitlines() if line.startswith("ddp ")}
    assert modes == {"on", "off"}, out  # the config sets activation_checkpointing: true
    assert "fits: train.parallel=ddp teacher.placement=replicate train.activation_checkpointing=false" in out
    assert out.startswith("preset models planned at V=151,936 (--vocab-size); this run trains a BPE"), out
    rc, out, err = cli(capsys, *args, "--gpu-memory", "16GiB")
    verdict = next(line for line in out.splitlines() if line.startswith("nothing fits"))
    rows = int(verdict.split("train.head_chunk_size=")[1].split()[0])
    assert rows < 2048 and "the same math in smaller pieces" in verdict, verdict
    rc, out, err = cli(capsys, *args, "--gpu-memory", "16GiB", f"train.head_chunk_size={rows}")
    assert rc == 0 and "\nfits: " in out, out
    assert rows % 64 == 0, rows
    rc, out, err = cli(capsys, *args, "--gpu-memory", "16GiB", f"train.head_chunk_size={rows + 64}")
    assert "nothing fits" in out, (
        out
    )  # the largest multiple of 64 that fits was named (try-out 120, F6: halving
    # named 512 where 576 fitted)


def test_a_padded_hugging_face_head_gives_the_presets_its_tokenizers_length(tmp_path, capsys, monkeypatch):
    """Try-out 120, F4: beside a model whose config.json pads its head (Qwen2.5: 151,936 rows for 151,665 tokens),
    plan sized the preset student at the padded rows and refused `--vocab-size` of the tokenizer's length — the V
    distill builds it at."""
    from ekd.data.tokenizer import train_bpe_tokenizer

    monkeypatch.chdir(tmp_path)
    tok = train_bpe_tokenizer([f"a b c word{i} {i * 7}" for i in range(200)], 300)
    padded = tmp_path / "padded"
    build_preset("llama-micro", len(tok) + 64).save_pretrained(padded)
    tok.save_pretrained(padded)
    config = config_file(Path("."), Path("corpus"), "p")
    own = [f"model.teacher={padded}", "model.tokenizer=teacher"]
    rc, out, err = cli(capsys, "plan", config, *own, "--gpus", "1")
    assert rc == 0 and f"V={len(tok)}" in out.splitlines()[0], (out, err)
    rc, out, err = cli(capsys, "plan", config, *own, "--gpus", "1", "--vocab-size", str(len(tok)))
    assert rc == 0, err
    line = one_error_line(
        *cli(capsys, "plan", config, *own, "--gpus", "1", "--vocab-size", str(len(tok) + 64))[::2]
    )
    assert f"V={len(tok):,}, the vocabulary of model.teacher={padded} (its tokenizer)" in line, line


def test_vocab_size_beside_a_tokenizer_that_cannot_be_loaded_here_is_planned_and_said(
    tmp_path, capsys, monkeypatch
):
    """Review of session 34, R5: with a hub tokenizer not in the cache (offline), `--vocab-size` — the way round it —
    was refused with the tokenizer's load error, since the check of try-out 118's F3 loaded it; it is planned as
    asked, with a line that it was not checked."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = config_file(Path("."), Path("corpus"), "p")
    hub = "model.tokenizer=ekd-tests/no-such-tokenizer"
    rc, out, err = cli(capsys, "plan", config, hub, "--gpus", "1", "--vocab-size", "5000")
    assert rc == 0, err
    assert out.startswith("V=5,000 (--vocab-size) not checked against the run's tokenizer: "), out
    assert "V=5000" in out


def test_vocab_size_beside_a_mistyped_tokenizer_path_is_refused(tmp_path, capsys, monkeypatch):
    """Try-out 122, F9: the best-effort check of --vocab-size (a hub tokenizer offline) also planned, and exited 0,
    with a local tokenizer path that does not exist, which distill refuses."""
    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    typo = tmp_path / "teachr"
    line = one_error_line(
        *cli(capsys, "plan", config, f"model.tokenizer={typo}", "--gpus", "1", "--vocab-size", "5000")[::2]
    )
    assert f"model.tokenizer: {typo} does not exist" in line, line


def test_a_hub_tokenizer_that_cannot_be_loaded_names_vocab_size_as_the_way_round(
    tmp_path, capsys, monkeypatch
):
    """Try-out 122, F9's rest: without --vocab-size, a hub tokenizer that cannot be loaded here (offline) was
    refused without naming --vocab-size, the way round it."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    config = config_file(Path("."), Path("corpus"), "p")
    line = one_error_line(
        *cli(capsys, "plan", config, "model.tokenizer=ekd-tests/no-such-tokenizer", "--gpus", "1")[::2]
    )
    assert line.endswith("; or plan without reading it: --vocab-size V"), line


def test_two_hugging_face_models_beside_a_mistyped_tokenizer_path_are_refused(tmp_path, capsys, monkeypatch):
    """Try-out 124, F1: with Hugging Face models alone plan needs no vocabulary, and planned (rc 0) a config whose
    model.tokenizer path does not exist, which distill refuses."""
    from ekd.models.load import build_preset

    monkeypatch.chdir(tmp_path)
    build_preset("llama-micro", VOCAB).save_pretrained(tmp_path / "hf")
    config = config_file(Path("."), Path("corpus"), "p")
    both = [f"model.student={tmp_path / 'hf'}", f"model.teacher={tmp_path / 'hf'}"]
    typo = tmp_path / "teachr"
    line = one_error_line(*cli(capsys, "plan", config, *both, f"model.tokenizer={typo}", "--gpus", "1")[::2])
    assert f"{typo}" in line and "does not exist" in line, line


def _one_micro_batch(parallel: str) -> dict:
    """``estimate``'s keywords for 2 GPUs, a replicated teacher and a 64-token micro-batch under ``parallel``."""
    return dict(
        gpus=2,
        parallel=parallel,
        placement="replicate",
        tokens=64,
        chunk_rows=64,
        activation_checkpointing=False,
    )


def test_a_lora_student_is_planned_with_its_adapters_gradients_and_under_ddp_only(
    tmp_path, capsys, monkeypatch
):
    """Try-out 144, F1: ``ekd plan`` ignored model.lora_r — a LoRA student's gradients and AdamW state planned as
    full fine-tuning (61× what the run held) — and advised train.parallel=fsdp, which distill refuses for it."""
    from ekd.config.sections import ModelConfig
    from ekd.models.lora import LoraStudent

    lora = ModelConfig(lora_r=4)
    planned = shape_of("preset:llama-tiny", VOCAB, lora=lora)
    real = build_preset("llama-tiny", VOCAB, seed=0)
    LoraStudent.wrap(real, lora)
    trains = sum(p.numel() for p in real.parameters() if p.requires_grad)
    assert planned.trainable == trains < planned.params == sum(p.numel() for p in real.parameters())
    assert shape_of("preset:llama-tiny", VOCAB).trainable == shape_of("preset:llama-tiny", VOCAB).params
    kw = _one_micro_batch("ddp")
    m = estimate(planned, None, **kw)
    assert (m.grads, m.ddp_buckets, m.optimizer, m.params) == (
        4 * trains,
        4 * trains,
        8 * trains,
        4 * planned.params,
    )
    monkeypatch.chdir(tmp_path)
    qwen = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-1.5b-to-0.5b.yaml"
    shapes = ["model.student=preset:qwen2.5-0.5b-shape", "model.teacher=preset:qwen2.5-1.5b-shape"]
    args = ["plan", str(qwen), *shapes, "--vocab-size", "151936", "--gpus", "2", "--gpu-memory", "16GiB"]
    rc, out, err = cli(capsys, *args, "model.lora_r=16")
    assert rc == 0, err
    assert "model.lora_r=16 cannot run under train.parallel=fsdp: planned as ddp only" in out
    # full fine-tuning needed fsdp here
    assert "\nfsdp" not in out and "fits: train.parallel=ddp " in out, out
    assert "of them train: LoRA adapters" in out
    rc, out, err = cli(capsys, *args)
    assert "fits: train.parallel=fsdp " in out, out
    # review 149, R2: what distill refuses under fsdp is one rule, the plan's too
    rc, out, err = cli(capsys, *args, "model.export_head_rows=trim")
    assert "model.export_head_rows=trim cannot run under train.parallel=fsdp" in out, out
    assert "\nfsdp" not in out, out


def test_a_self_distillation_objective_is_planned_with_its_student_copy_not_a_teacher(
    tmp_path, capsys, monkeypatch, caplog
):
    """Try-out 144, F2: for ema_self_distill and uncertainty the plan counted a teacher never loaded and left out
    the whole student copy that teaches; so did the run's `rank 0 holds:` line."""
    import logging

    from tiny import write_corpus

    monkeypatch.chdir(tmp_path)
    corpus = write_corpus(tmp_path / "corpus", n_docs=24)
    student = shape_of("preset:llama-micro", VOCAB)
    teacher = shape_of("preset:llama-tiny", VOCAB)

    def teacher_cell(out: str) -> float:  # the teacher column of the first row, GiB
        return float(next(line for line in out.splitlines() if line.startswith("ddp ")).split()[3])

    for method, copy in (("kd", False), ("uncertainty", True), ("ema_self_distill", True)):
        config = config_file(tmp_path, corpus, method, **{"method.preset": method, "eval.teacher": False})
        rc, out, err = cli(
            capsys, "plan", config, "--gpus", "2", "--vocab-size", str(VOCAB), "--gpu-memory", "80GiB"
        )
        assert rc == 0, err
        expected = 4 * student.params if copy else 2 * teacher.params  # fp32 copy; a bf16 teacher
        assert abs(teacher_cell(out) - expected / GIB) < 0.006, (method, out)
        assert ("a whole copy of the student" in out) is copy, out
        assert ("\nfsdp" in out) is (method != "ema_self_distill"), out  # distill refuses it under fsdp
    with caplog.at_level(logging.INFO, logger="ekd"):
        rc, _, err = cli(capsys, "distill", config, "train.max_steps=1")
    assert rc == 0, err
    holds = next(r.getMessage() for r in caplog.records if "rank 0 holds:" in r.getMessage())
    params = float(holds.split("student params ")[1].split()[0])
    assert f"student copy {params:.1f} MiB" in holds and "teacher params 0.0 MiB" in holds, holds


def test_cpu_offload_is_planned_and_offered_when_nothing_else_fits(tmp_path, capsys, monkeypatch):
    """Try-out 144, F3: ``ekd plan`` ignored train.cpu_offload (the student's shards, gradients and AdamW state
    planned on the GPU) and never named it when nothing fitted, the case the README gives it for."""
    from ekd.plan import host_bytes

    s = shape_of("preset:llama-tiny", VOCAB)
    kw = _one_micro_batch("fsdp")
    sharded, offloaded = estimate(s, None, **kw), estimate(s, None, **kw, cpu_offload=True)
    assert (offloaded.params, offloaded.grads, offloaded.optimizer) == (0, 0, 0)
    assert offloaded.total == sharded.total - sharded.params - sharded.grads - sharded.optimizer
    assert host_bytes(s, 2) == sharded.params + sharded.grads + sharded.optimizer
    with pytest.raises(ValueError):
        estimate(s, None, **{**kw, "parallel": "ddp"}, cpu_offload=True)
    monkeypatch.chdir(tmp_path)
    qwen = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-1.5b-to-0.5b.yaml"
    shapes = ["model.student=preset:qwen2.5-0.5b-shape", "model.teacher=preset:qwen2.5-1.5b-shape"]
    args = ["plan", str(qwen), *shapes, "--vocab-size", "151936", "--gpus", "2"]
    rc, out, err = cli(capsys, *args, "--gpu-memory", "80GiB")
    assert rc == 0 and "fsdp+cpu" not in out, out  # fits without: not shown
    rc, out, err = cli(
        capsys, *args, "--gpu-memory", "80GiB", "train.parallel=fsdp", "train.cpu_offload=true"
    )
    rows = [line.split() for line in out.splitlines() if line.startswith("fsdp+cpu ")]
    assert len(rows) == 4 and all(r[4:8] == ["0.00", "0.00", "0.00", "0.00"] for r in rows), out
    rc, out, err = cli(capsys, *args, "--gpu-memory", "10GiB")
    verdict = next(line for line in out.splitlines() if line.startswith("fits: "))
    assert "train.parallel=fsdp" in verdict and "train.cpu_offload=true" in verdict, out
    assert "GiB of CPU memory per rank for the offloaded student" in verdict
    rc, out, err = cli(capsys, *args, "--gpus", "1", "--gpu-memory", "10GiB")
    assert "fsdp+cpu" not in out  # one process offloads nothing
    # a config that sets offload, advised a mode without it: the verdict turns it off, or distill refuses the keys
    # it names (try-out 145, F1); one GPU says it offloads nothing
    offload = ["train.parallel=fsdp", "train.cpu_offload=true"]
    for gpus in ("2", "1"):
        rc, out, err = cli(capsys, *args, "--gpus", gpus, "--gpu-memory", "80GiB", *offload)
        verdict = next(line for line in out.splitlines() if line.startswith("fits: "))
        assert "train.parallel=ddp" in verdict and "train.cpu_offload=false" in verdict, out
        assert ("one GPU: train.cpu_offload offloads nothing in one process" in out) is (gpus == "1"), out
    # the plan weighs every train.parallel: a config's offload beside its ddp asks for the fsdp+cpu rows, not a
    # refusal (try-out 150, F4); a refusal of something else still comes
    rc, out, err = cli(capsys, *args, "--gpu-memory", "80GiB", "train.parallel=ddp", "train.cpu_offload=true")
    assert rc == 0 and len([line for line in out.splitlines() if line.startswith("fsdp+cpu ")]) == 4, err
    rc, out, err = cli(capsys, *args, "--gpu-memory", "80GiB", "train.cpu_offload=true", "train.lr=-1")
    assert rc == 2 and "train.lr" in err and len(err.strip().splitlines()) == 1, err


def test_a_mode_whose_loading_does_not_fit_is_not_advised(tmp_path, capsys, monkeypatch):
    """Review 149, R1: an fsdp+cpu row said a 1.5B student fits 5.5 GiB GPUs (4.9 GiB steady) — but every rank reads
    the whole 5.75 GiB student onto its GPU before FSDP2 shards it, and rank 0 does under plain FSDP2 too: the
    load's peak decides too (load_peak)."""
    from ekd.plan import load_peak

    s = shape_of("preset:llama-tiny", VOCAB)
    t = shape_of("preset:llama-small", VOCAB)
    kw = dict(gpus=2, placement="replicate", overhead=0)
    assert load_peak(s, t, parallel="ddp", **kw) == 0
    half = -(-s.params // 2)
    assert load_peak(s, None, parallel="fsdp", **kw) == 4 * s.params + 4 * half  # rank 0: whole + its shard
    assert load_peak(s, t, parallel="fsdp", cpu_offload=True, **kw) == 4 * s.params + 2 * t.params
    monkeypatch.chdir(tmp_path)
    qwen = Path(__file__).resolve().parents[1] / "configs" / "qwen2.5-1.5b-to-0.5b.yaml"
    shapes = ["model.student=preset:qwen2.5-1.5b-shape", "model.teacher=preset:qwen2.5-1.5b-shape"]
    batch = ["train.micro_batch_size=1", "data.block_length=512", "--vocab-size", "151936", "--gpus", "8"]
    rc, out, err = cli(capsys, "plan", str(qwen), *shapes, *batch, "--gpu-memory", "5.5GiB")
    assert rc == 0, err
    assert "\nfits: " not in out and "nothing fits in 5.5 GiB" in out, out
    verdict = out.split("nothing fits in 5.5 GiB")[1].splitlines()[0]  # try-out 150, F1: no advice that loops
    assert "GiB per rank while its models load" in verdict and "micro_batch_size" not in verdict, verdict
    assert "no (load)" in out and "no (load): the steady total fits, but loading peaks higher" in out, out
    rc, out, err = cli(capsys, "plan", str(qwen), *shapes, *batch, "--gpu-memory", "8.6GiB")
    verdict = next(line for line in out.splitlines() if line.startswith("fits: "))
    assert "; loading, before the shards, peaks at" in verdict, verdict


def test_the_plan_reads_the_revision_and_the_remote_code_setting_distill_reads(
    tmp_path, capsys, monkeypatch, hub_unreachable
):
    """Try-out 152, F9: ``ekd plan`` read a hub id's config.json at the default branch whatever ``model.revision``
    named (a 2-layer teacher planned for the 6-layer one the run held), and refused a model of its own code with
    ``model.trust_remote_code=true`` set, naming that setting as the fix (on a terminal it asked whether to run it)."""
    from huggingface_hub import constants

    from hub_cache import put_in_hub_cache
    from test_model_loading import _remote_code

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    for name, commit, refs in (("llama-micro", "a" * 40, ("main",)), ("llama-tiny", "b" * 40, ("big",))):
        build_preset(name, VOCAB).save_pretrained(tmp_path / name)
        put_in_hub_cache(tmp_path / "hub", "org/teacher", tmp_path / name, commit, refs)
    config = config_file(Path("."), Path("corpus"), "p")
    models = ["model.student=preset:llama-micro", "model.teacher=org/teacher", "--gpus", "1"]
    counts = {}
    for revision in ("", "big"):
        rc, out, err = cli(capsys, "plan", config, *models, f"model.revision={revision}")
        assert rc == 0, err
        counts[revision] = next(line for line in out.splitlines() if line.startswith("teacher org/teacher"))
    big = sum(p.numel() for p in build_preset("llama-tiny", VOCAB).parameters())
    assert f"{big:,} parameters" in counts["big"] and counts[""] != counts["big"], counts
    line = one_error_line(*cli(capsys, "plan", config, *models, "model.revision=nosuch")[::2])
    assert "model.teacher" in line, line
    remote = tmp_path / "remote"
    build_preset("llama-micro", VOCAB).save_pretrained(remote)
    _remote_code(remote)
    own = ["model.student=preset:llama-micro", f"model.teacher={remote}", "--gpus", "1"]
    line = one_error_line(*cli(capsys, "plan", config, *own)[::2])
    assert (
        "set model.trust_remote_code=true only if you trust that code" in line
        and not (remote / "RAN").exists()
    )
    cli(capsys, "plan", config, *own, "model.trust_remote_code=true")
    assert (remote / "RAN").exists()  # its configuration code read, as distill reads it


def test_a_bf16_parameter_plan_says_it_is_a_what_if(tmp_path, capsys, monkeypatch):
    """Try-out 158, F2: `--param-dtype bf16` said "fits: train.parallel=... (11.9 of 14.0 GiB)" as if ekd distill with
    those keys would fit, while distill keeps fp32 master weights (16 GiB there)."""
    monkeypatch.chdir(tmp_path)
    config = config_file(Path("."), Path("corpus"), "p")
    what_if = "--param-dtype bf16 is a what-if: ekd distill keeps fp32 master weights"
    rc, out, _ = cli(capsys, "plan", config, "--gpus", "1", "--vocab-size", "1000", "--param-dtype", "bf16")
    assert rc == 0 and what_if in out.splitlines()[-1], out
    rc, out, _ = cli(capsys, "plan", config, "--gpus", "1", "--vocab-size", "1000")
    assert rc == 0 and "what-if" not in out
