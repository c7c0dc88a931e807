"""``ekd plan``: per-rank GPU memory of a distillation run, estimated before renting the GPUs.

    ekd plan configs/qwen7b-to-1.5b.yaml --gpus 8 --gpu-memory 80GiB

Parameter counts are exact: each model is built from its config on the ``meta`` device (transformers'
``AutoConfig`` for a local Hugging Face directory or hub id, ekd's presets otherwise), so no weight is read or
allocated. Bytes per rank, for N ranks (P = student parameters, Q = teacher parameters):

===================  ======================================  =======================================
term                 ``ddp``                                 ``fsdp``
===================  ======================================  =======================================
teacher              replicate: 2·Q (one bf16 copy); shard: 2·Q/N (its shards)
student params       s·P (s = 4: fp32 master weights)         s·P/N (its shards)
gradients            s·P, + s·P of DDP's buckets              s·P/N (reduced in fp32, sharded)
AdamW state          2·s·P (exp_avg, exp_avg_sq)              2·s·P/N
gathered             shard: 2·(Q_root + 2 Q_layer)            + c·(P_root + 2·P_layer)
===================  ======================================  =======================================

Gradients, DDP's buckets and AdamW state are of the parameters that train: a LoRA student's adapters (and head, with
``model.lora_train_head``), built on the meta device as distill injects them; its parameters are all of them. A
self-distillation objective's whole student copy (its EMA, its initial weights: s·P, on every rank) is counted in
the teacher term. With FSDP2's CPU offload (``train.cpu_offload``; rows ``fsdp+cpu``) the student's shards, their
gradients and AdamW state are in CPU memory (:func:`host_bytes`), none of them on the GPU.

``s`` is the bytes of the student's parameter dtype (``--param-dtype``: fp32 master weights, ekd's default,
or bf16); AdamW keeps its moments in the parameter dtype. The first four terms are what a rank holds all the
time (tensor bytes, tested against FSDP2 and DDP runs: ``tests/test_plan.py``). *gathered* is FSDP2's
working set of unsharded parameters during a step: the root group (embeddings, final norm, head — a sharded
teacher's stays gathered from its head's first use to the end of the step) plus the decoder layer computing
and the next one being gathered (prefetch), the student's in the compute dtype (c = 2 for bf16, 4 with
``train.precision=fp32``), the teacher's in its dtype. Activations per micro-batch (t = micro-batch ×
block length tokens, h = hidden size, f = MLP width, L = decoder layers, a = bytes of the autocast dtype, 2 for
bf16; r = bytes of the residual stream, the parameters' s under DDP, a under FSDP2's mixed precision):

- the values autograd keeps per token of one decoder layer, read off its module tree
  (:mod:`ekd.models.stored_activations`, measured in ``tests/test_stored_activations.py``): the norms' inputs
  and normalized values at r bytes; the attention's and the MLP's normalized inputs (under autocast one a-byte
  copy per projection reading them), q, k, v and the attention output (SDPA/flash stores no s² scores) and the
  MLP's tensors (gated: gate, up, act(gate), product = 4·f) at a bytes — ≈ 21·h values for a Llama with GQA and
  f = 3h, 30·h for Qwen2.5-0.5B (f = 5.4h), 28·h for GPT-2 (its ``gelu_new`` keeps 4 values per input). A layer
  not recognized falls back to 17·h at a bytes (Korthikanti et al. 2022, "Reducing Activation Recomputation in
  Large Transformer Models", eq. 1: 34·s·b·h bytes at 16 bit for a GPT block with a 4h GeLU MLP);
- plus one layer's backward in flight: ``t · (3f | 2f) · a`` (the MLP's gradients, gated | plain; derived, not
  measured);
- without activation checkpointing: L layers' stored values + the backward term;
- with it: ``L · t · h · r`` (each layer's input, the one tensor a checkpointed layer keeps — measured) + one
  layer's stored values (recomputed in backward) + the backward term;
- the chunked head: ``4 · min(chunk, t) · V · 4`` (about four fp32 (chunk, V) buffers at its peak, see
  ``ekd.losses.chunked.auto_chunk_rows``) plus the teacher's last hidden states ``t · h_T · 2``.

A fixed overhead (2 GiB: CUDA context, allocator fragmentation, NCCL buffers; ``estimate(overhead=)``) is
added. The teacher, parameter, gradient and optimizer terms are tensor bytes and match measurement
(tests/test_plan.py: one process, 2-rank DDP, 2-rank FSDP2 with a sharded teacher, within 10%); the gathered
and activation terms are estimates, not bounds. ``--gpu-memory`` needs a unit (``80GiB``, ``141GB``): a bare
number is refused rather than guessed (GiB? bytes?).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import nn

from ekd.errors import ConfigError, EkdError, first_line
from ekd.models.stored_activations import LayerActivations, layer_activations
from ekd.words import counted

if TYPE_CHECKING:
    from ekd.config.sections import ModelConfig

GIB = 2**30
HEAD_BUFFERS = 4  # fp32 (chunk, V) buffers of the fused head at its peak
PARALLEL = ("ddp", "fsdp")
PLACEMENT = ("replicate", "shard")
DTYPE_BYTES = {"fp32": 4, "bf16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the plan needs of one causal LM (counts exact, from a meta-device build)."""

    params: int  # unique parameters (a tied head counted once)
    layers: int
    hidden: int
    vocab: int
    layer_params: int  # parameters of the largest decoder layer
    root_params: int  # parameters outside the decoder layers (embeddings, head, final norm)
    layer_activations: LayerActivations  # values autograd keeps per token of a decoder layer
    trainable: int  # parameters that train: all of them, or a LoRA student's adapters (and head, if trained)


def model_shape(model: nn.Module, what: str = "the model") -> ModelShape:
    """Count a (meta-device) causal LM's parameters: total, per decoder layer, outside the layers.

    Args:
        what: the model as the config names it (``model.student 'gpt2-s'``), for the error.

    Raises:
        ModelError: the model has no list of decoder layers (:func:`ekd.models.layers.decoder_layers`).
    """
    from ekd.models.layers import decoder_layers

    config = model.config
    unique = {id(p): p.numel() for p in model.parameters()}
    layers = list(
        decoder_layers(model, f"ekd plan counts memory per decoder layer, so it cannot plan {what}")
    )
    in_layers = {id(p) for layer in layers for p in layer.parameters()}
    layer_params = max((sum(p.numel() for p in layer.parameters()) for layer in layers), default=0)
    return ModelShape(
        params=sum(unique.values()),
        layers=len(layers),
        hidden=int(config.hidden_size),
        vocab=int(model.get_output_embeddings().weight.shape[0]),
        layer_params=layer_params,
        root_params=sum(n for i, n in unique.items() if i not in in_layers),
        layer_activations=layer_activations(model, layers[0], int(config.hidden_size)),
        trainable=sum(p.numel() for p in model.parameters() if p.requires_grad),  # parameters() is unique
    )


MAX_VOCAB = 1 << 24
"""The largest ``--vocab-size`` planned: 16,777,216 (Gemma 3's 262,144 is the largest vocabulary in use)."""


def shape_of(
    spec: str,
    vocab_size: int,
    role: str = "student",
    block_length: int | None = None,
    lora: ModelConfig | None = None,
    revision: str = "",
    trust_remote_code: bool = False,
) -> ModelShape:
    """The shape of ``model.student``/``model.teacher``: a preset (with the run's vocabulary) or a Hugging Face
    directory or hub id (its config.json only, at ``revision``, read as distill reads it:
    :func:`ekd.models.load.model_config`), built on the meta device — a model of its own code only with
    ``trust_remote_code`` (try-out 152, F9: the plan read the default branch's config and asked on a terminal
    whether to run a repository's code); with ``block_length``, the run's blocks
    are checked against its positions as at load (:func:`ekd.models.positions.check_block_fits_positions`); with
    ``lora`` (``model.*`` of a run with ``model.lora_r > 0``), the adapters distill injects are injected
    (:meth:`ekd.models.lora.LoraStudent.wrap`, on the meta device too) and only what then trains is ``trainable``.

    Raises:
        ModelError: an unknown preset, a directory without a readable config, a model without a list of
            decoder layers, or learned positions fewer than ``block_length``.
        ConfigError: ``lora`` names no layer of the model, or peft is not installed (as distill refuses them).
    """
    from transformers import AutoConfig, AutoModelForCausalLM

    from ekd.models.load import PRESET_PREFIX, is_preset, model_config
    from ekd.models.presets import architectures

    if is_preset(spec):
        from ekd.models.load import build_preset

        name = spec[len(PRESET_PREFIX) :]
        if name not in architectures:
            build_preset(name, vocab_size)  # raises the one-line unknown-preset error
        values = dict(architectures.get(name))
        config = AutoConfig.for_model(values.pop("model_type"), vocab_size=vocab_size, **values)
    else:
        from ekd.hub import check_model_spec

        # try-out 56, F4: a missing path or a directory of no model got transformers' "should have a model_type"
        check_model_spec(spec, f"model.{role}", revision, weights=False)
        config = model_config(spec, revision, trust_remote_code, role)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, trust_remote_code=trust_remote_code)
        if lora is not None and lora.lora_r > 0:
            from ekd.models.lora import LoraStudent

            LoraStudent.wrap(model, lora)  # in place; its log line says what trains
    if block_length is not None:
        from ekd.models.positions import check_block_fits_positions

        check_block_fits_positions(model, block_length, role)
    return model_shape(model, f"model.{role} '{spec}'")


@dataclass(frozen=True)
class RankMemory:
    """Bytes one rank holds, by term."""

    teacher: int
    params: int
    grads: int
    ddp_buckets: int
    optimizer: int
    gathered: int  # FSDP2's unsharded working set (sharded student and/or teacher) during a step
    activations: int
    head: int
    overhead: int

    @property
    def total(self) -> int:
        return sum(vars(self).values())


def estimate(
    student: ModelShape,
    teacher: ModelShape | None,
    *,
    gpus: int,
    parallel: str,
    placement: str,
    tokens: int,
    chunk_rows: int,
    activation_checkpointing: bool,
    param_dtype: str = "fp32",
    activation_bytes: int = 2,
    teacher_bytes_per_param: int = 2,
    student_copies: int = 0,
    cpu_offload: bool = False,
    overhead: int = 2 * GIB,
) -> RankMemory:
    """Per-rank bytes of one configuration (formulas in the module docstring).

    Args:
        student: its gradients, DDP buckets and AdamW state are of its ``trainable`` parameters (a LoRA
            student's adapters), its parameters of all of them.
        teacher: None when no teacher model is loaded (a cache, CE only, a self-distillation objective).
        tokens: tokens of one micro-batch on one rank (micro_batch_size × block_length).
        chunk_rows: rows of the chunked head (``train.head_chunk_size`` or the automatic size).
        activation_bytes: bytes of the autocast dtype (2 for bf16 on GPU), also FSDP2's gathered copies.
        teacher_bytes_per_param: 2 (bf16, ``model.teacher_dtype: auto`` on GPU) or 4 (float32).
        student_copies: whole frozen copies of the student a self-distillation objective keeps on every rank (1
            for ``method.objective`` ``ema_self_distill`` and ``uncertainty``): s·P bytes each, counted in the
            ``teacher`` term, the model that teaches.
        cpu_offload: FSDP2's ``CPUOffloadPolicy`` (``train.cpu_offload``): the student's shards, their gradients
            and AdamW state live in CPU memory (:func:`host_bytes`), none of them on the GPU; the gathered working
            set stays. Only with ``parallel='fsdp'``.
    """
    if cpu_offload and parallel != "fsdp":
        raise ValueError("cpu_offload needs parallel='fsdp'")
    if parallel not in PARALLEL or placement not in PLACEMENT:
        raise ValueError(f"parallel must be one of {PARALLEL}, placement one of {PLACEMENT}")
    n, s, p, trained = max(gpus, 1), DTYPE_BYTES[param_dtype], student.params, student.trainable
    sharded = parallel == "fsdp"
    gathered = 0  # unsharded copies: the root (embeddings, head) and a layer plus the prefetched next one
    if teacher is None:
        teacher_bytes = 0
    elif placement == "shard":
        teacher_bytes = teacher_bytes_per_param * _ceil_div(teacher.params, n)
        gathered += teacher_bytes_per_param * (teacher.root_params + 2 * teacher.layer_params)
    else:
        teacher_bytes = teacher_bytes_per_param * teacher.params
    teacher_bytes += student_copies * s * p  # whole on every rank, in the student's dtype
    params = s * _ceil_div(p, n) if sharded else s * p
    if sharded:  # in the compute dtype (MixedPrecisionPolicy's param_dtype)
        gathered += activation_bytes * (student.root_params + 2 * student.layer_params)
    grads = s * (_ceil_div(trained, n) if sharded else trained)
    buckets = 0 if sharded or n == 1 else s * trained
    optimizer = 2 * s * (_ceil_div(trained, n) if sharded else trained)
    if cpu_offload:  # in CPU memory: host_bytes
        params = grads = optimizer = 0
    stored = student.layer_activations
    residual_bytes = activation_bytes if sharded else s  # FSDP2 gathers the student in the compute dtype
    per_layer = tokens * stored.bytes_per_token(residual_bytes, activation_bytes)
    backward = tokens * stored.backward * activation_bytes  # one layer's gradients in flight
    if activation_checkpointing:  # each layer's input kept, one layer recomputed and its backward
        activations = student.layers * tokens * student.hidden * residual_bytes + per_layer + backward
    else:
        activations = student.layers * per_layer + backward
    # a chunk holds at most the micro-batch's rows (try-out 56, F3: 4·2048·V·4 at 512 tokens, 4× too much)
    rows = min(chunk_rows, tokens)
    head = HEAD_BUFFERS * rows * student.vocab * 4 + (tokens * teacher.hidden * 2 if teacher else 0)
    return RankMemory(teacher_bytes, params, grads, buckets, optimizer, gathered, activations, head, overhead)


def host_bytes(student: ModelShape, gpus: int, param_dtype: str = "fp32") -> int:
    """CPU memory per rank of FSDP2's offloaded student (``train.cpu_offload``): its shards, their gradients and
    AdamW state, s·P/N + s·T/N + 2·s·T/N bytes (T = trainable parameters)."""
    s, n = DTYPE_BYTES[param_dtype], max(gpus, 1)
    return s * _ceil_div(student.params, n) + 3 * s * _ceil_div(student.trainable, n)


def load_peak(
    student: ModelShape,
    teacher: ModelShape | None,
    *,
    gpus: int,
    parallel: str,
    placement: str,
    cpu_offload: bool = False,
    student_copies: int = 0,
    param_dtype: str = "fp32",
    teacher_bytes_per_param: int = 2,
    overhead: int = 2 * GIB,
) -> int:
    """GPU bytes of the most loaded rank while the models load, before FSDP2 has sharded them (review 149, R1: an
    ``fsdp+cpu`` row said a student fits that every rank loads whole first); 0 under DDP, whose steady state holds
    more. The student is read whole by rank 0, which keeps it beside its own shard until the others have theirs
    (:mod:`ekd.train.rank0_load`): s·P + s·P/N — or, with ``cpu_offload`` or a self-distillation copy, by every rank,
    kept whole until the teacher is loaded and the copy made (the shards go to CPU after). A sharded teacher is
    read whole by rank 0 beside its shard too. An estimate, as the activations are."""
    if parallel != "fsdp":
        return 0
    n, s, p = max(gpus, 1), DTYPE_BYTES[param_dtype], student.params
    held_whole = cpu_offload or student_copies > 0  # every rank keeps the whole student until it is sharded
    student_load = s * p + (0 if held_whole else s * _ceil_div(p, n))
    student_then = s * p if held_whole else s * _ceil_div(p, n)  # while the teacher loads
    whole = teacher_bytes_per_param * teacher.params if teacher is not None else 0
    shard = teacher_bytes_per_param * _ceil_div(teacher.params, n) if whole and placement == "shard" else 0
    teacher_load = whole + shard  # a sharded teacher: rank 0's whole copy beside its shard
    teacher_after = shard or whole
    return overhead + max(
        student_load, student_then + teacher_load, student_then + teacher_after + student_copies * s * p
    )


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def _size(b: int) -> str:
    """'24.0 GiB', or '1.0 MiB' under a tenth of a GiB (a small size is not '0.0 GiB')."""
    return f"{b / GIB:.1f} GiB" if b >= GIB // 10 else f"{b / 2**20:.1f} MiB"


@dataclass(frozen=True)
class Option:
    parallel: str
    placement: str
    activation_checkpointing: bool
    memory: RankMemory
    cpu_offload: bool = False
    host: int = 0  # CPU memory per rank of the offloaded student (host_bytes); 0 without offload
    load: int = 0  # GPU bytes while the models load, before FSDP2 shards them (load_peak); 0 under DDP

    @property
    def peak(self) -> int:
        """What the GPU must hold: the steady total, or the load's peak where it is higher."""
        return max(self.memory.total, self.load)

    @property
    def mode(self) -> str:
        """The table's ``parallel`` cell: ``ddp``, ``fsdp`` or ``fsdp+cpu`` (offloaded)."""
        return f"{self.parallel}+cpu" if self.cpu_offload else self.parallel


def plan_options(
    student: ModelShape,
    teacher: ModelShape | None,
    *,
    gpus: int,
    tokens: int,
    chunk_rows: int,
    parallel: tuple[str, ...] = PARALLEL,
    placement: tuple[str, ...] = PLACEMENT,
    activation_checkpointing: tuple[bool, ...] = (False, True),
    param_dtype: str = "fp32",
    activation_bytes: int = 2,
    teacher_bytes_per_param: int = 2,
    student_copies: int = 0,
    cpu_offload: bool = False,
    overhead: int = 2 * GIB,
) -> list[Option]:
    """Every combination asked for, fastest first: DDP before FSDP before FSDP with its shards in CPU memory
    (``cpu_offload``: those rows too), a replicated teacher before a sharded one, no activation checkpointing before
    it (each step of the order trades speed for memory)."""
    modes = [(par, False) for par in parallel] + (
        [("fsdp", True)] if cpu_offload and "fsdp" in parallel else []
    )
    out = []
    for (par, offload), ac, place in itertools.product(modes, activation_checkpointing, placement):
        if teacher is None and place == "shard":
            continue  # nothing to place
        # what the steady state and the load share: the layout, the dtypes, the copies, the overhead
        layout = dict(
            gpus=gpus,
            parallel=par,
            placement=place,
            cpu_offload=offload,
            student_copies=student_copies,
            param_dtype=param_dtype,
            teacher_bytes_per_param=teacher_bytes_per_param,
            overhead=overhead,
        )
        memory = estimate(
            student,
            teacher,
            tokens=tokens,
            chunk_rows=chunk_rows,
            activation_checkpointing=ac,
            activation_bytes=activation_bytes,
            **layout,
        )
        host = host_bytes(student, gpus, param_dtype) if offload else 0
        load = load_peak(student, teacher, **layout)
        out.append(Option(par, place if teacher is not None else "-", ac, memory, offload, host, load))
    return out


def format_plan(
    student_spec: str,
    student: ModelShape,
    teacher_spec: str | None,
    teacher: ModelShape | None,
    options: list[Option],
    gpus: int,
    gpu_memory: int,
    tokens: int,
    smaller_chunk: tuple[int, int] | None = None,
    self_teacher: str = "",
    config_offload: bool = False,
) -> str:
    """The plan as text: model sizes, one row per option (GiB per rank), and the verdict. ``smaller_chunk``:
    when nothing fits, the largest ``train.head_chunk_size`` with which some option fits, and that option's
    bytes per rank (None: none does). ``self_teacher``: the student copy a self-distillation objective teaches
    with, as words ('' for none), in the teacher column. ``config_offload``: the config sets ``train.cpu_offload``,
    which a verdict without it turns off (distill refuses it beside ``ddp``: try-out 145, F1)."""

    def gib(b: int) -> str:
        return f"{b / GIB:8.2f}"

    trains = (
        f" ({student.trainable:,} of them train: LoRA adapters; grads and adam are theirs)"
        if student.trainable != student.params
        else ""
    )
    if teacher:
        teacher_line = (
            f"teacher {teacher_spec}: {teacher.params:,} parameters, {counted(teacher.layers, 'layer')}, "
            f"d={teacher.hidden}" + (f"; and {self_teacher}" if self_teacher else "")
        )
    else:
        teacher_line = (
            f"teacher: {self_teacher}"
            if self_teacher
            else "teacher: none loaded for training (cache or CE only)"
        )
    lines = [
        f"student {student_spec}: {student.params:,} parameters{trains}, {counted(student.layers, 'layer')}, "
        f"d={student.hidden}, V={student.vocab}",
        teacher_line,
        f"{counted(gpus, 'GPU')} × {_size(gpu_memory)}; {tokens:,} tokens per micro-batch per rank",
        "",
        f"{'parallel':9} {'teacher':10} {'act-ckpt':8}"
        + "".join(
            f"{h:>8}"
            for h in ("teacher", "params", "grads", "buckets", "adam", "gather", "activ.", "head", "total")
        )
        + "  fits  (GiB per rank)",
    ]
    for o in options:
        m = o.memory
        fits = "yes" if o.peak <= gpu_memory else "no (load)" if m.total <= gpu_memory else "no"
        lines.append(
            f"{o.mode:9} {o.placement:10} {'on' if o.activation_checkpointing else 'off':8}"
            f"{gib(m.teacher)}{gib(m.params)}{gib(m.grads)}{gib(m.ddp_buckets)}{gib(m.optimizer)}"
            f"{gib(m.gathered)}{gib(m.activations)}{gib(m.head)}{gib(m.total)}  {fits}"
        )
    fitting = [o for o in options if o.peak <= gpu_memory]
    lines.append("")
    if fitting:
        best = fitting[0]
        keys = [f"train.parallel={best.parallel}"]
        if best.placement != "-":
            keys.append(f"teacher.placement={best.placement}")
        keys.append(f"train.activation_checkpointing={str(best.activation_checkpointing).lower()}")
        if best.cpu_offload or config_offload:
            keys.append(f"train.cpu_offload={str(best.cpu_offload).lower()}")
        host = (
            f"; and {_size(best.host)} of CPU memory per rank for the offloaded student" if best.host else ""
        )
        loading = (
            f"; loading, before the shards, peaks at {best.load / GIB:.1f}"
            if best.load > best.memory.total
            else ""
        )
        lines.append(
            f"fits: {' '.join(keys)} ({best.memory.total / GIB:.1f} of {gpu_memory / GIB:.1f} GiB per rank"
            f"{loading}{host})"
        )
    else:
        least = min(options, key=lambda o: o.peak)
        if least.memory.overhead >= gpu_memory:  # no mode, GPU count or batch size can help
            fix = (
                f"the fixed {_size(least.memory.overhead)} of CUDA overhead (context, allocator, NCCL buffers) "
                "alone fills it; check --gpu-memory, the memory of one GPU (e.g. 80GiB)"
            )
        elif least.load > least.memory.total:  # try-out 150, F1: batch, block and chunk do not shrink a load
            fix = (
                f"the smallest option needs {least.load / GIB:.1f} GiB per rank while its models load (rank 0, or "
                "every rank with train.cpu_offload, reads the whole student before FSDP2 shards it), "
                f"{least.memory.total / GIB:.1f} after; only GPUs with more memory help"
            )
        else:
            fix = f"the smallest option needs {least.peak / GIB:.1f} GiB per rank; "
            if smaller_chunk is not None:  # try-out 118, F1: the head's buffers do not shrink with the batch
                rows, total = smaller_chunk
                fix += (
                    f"train.head_chunk_size={rows} fits ({total / GIB:.1f} GiB per rank: the head's "
                    f"{least.memory.head / GIB:.2f} GiB are buffers of chunk rows × V, the same math in smaller "
                    "pieces), or use more GPUs"
                )
            else:
                fix += "use more GPUs"
            fix += ", a smaller train.micro_batch_size or data.block_length"
        lines.append(f"nothing fits in {_size(gpu_memory)}: {fix}")
    if any(o.memory.total <= gpu_memory < o.peak for o in options):
        lines.append(
            "no (load): the steady total fits, but loading peaks higher (rank 0 reads the whole student, and a "
            "sharded teacher, before FSDP2 shards them; with train.cpu_offload every rank reads the whole student)"
        )
    if any(o.cpu_offload for o in options):
        lines.append(
            "fsdp+cpu: FSDP2 with the student's shards, their gradients and AdamW state in CPU memory "
            "(train.cpu_offload=true), the optimizer step on the CPU"
        )
    lines.append(
        "teacher/params/grads/adam are tensor bytes; gather (FSDP2's unsharded working set), activations and head are estimates (formulas: ekd.plan)"
    )
    return "\n".join(lines)


def plan_config(
    cfg,
    gpus: int,
    gpu_memory: int,
    parallel: tuple[str, ...] = PARALLEL,
    placement: tuple[str, ...] = PLACEMENT,
    vocab_size: int | None = None,
    param_dtype: str = "fp32",
) -> str:
    """The plan of a loaded config (models from ``model.*``, tokens from train/data) as text.

    Args:
        vocab_size: the vocabulary of the preset models (``--vocab-size``); None: from the config.

    Raises:
        ConfigError: ``--gpus`` < 1, ``--vocab-size`` outside [2, ``MAX_VOCAB``] or given without a preset model to apply to, or
            the vocabulary size of preset models cannot be known.
        CacheError, ModelError: a run from a cache that ``ekd distill`` refuses at its start
            (:func:`ekd.train.prepare.check_cache_run`).
    """
    from ekd.config.inert import SELF_TARGETS
    from ekd.losses.chunked import auto_chunk_rows
    from ekd.train.prepare import loads_teacher_model

    if gpus < 1:
        raise ConfigError(f"--gpus must be ≥ 1, got {gpus}")
    # the models distill holds through training (try-out 144, F2: a self-distillation run was planned with a
    # teacher it never loads, and without the student copy it teaches with)
    teacher_spec = cfg.model.teacher if loads_teacher_model(cfg) else None
    objective = cfg.method.objective
    copies, self_teacher = 0, ""
    if objective in SELF_TARGETS:
        copies = 1
        self_teacher = (
            f"a whole copy of the student ({SELF_TARGETS[objective]}, method.objective={objective})"
        )
    if vocab_size is not None:
        _check_vocab_size_arg(cfg, vocab_size, teacher_spec)
    parallel, placement, note = planned_modes(cfg, gpus, parallel, placement)
    note += _teacher_note(cfg, teacher_spec)
    vocab, vocab_note = _planned_vocab(cfg, vocab_size, teacher_spec)
    note += vocab_note
    lora = cfg.model if cfg.model.lora_r > 0 else None  # its adapters alone train (try-out 144, F1)
    hub = {"revision": cfg.model.revision, "trust_remote_code": cfg.model.trust_remote_code}
    student = shape_of(cfg.model.student, vocab, "student", cfg.data.block_length, lora, **hub)
    hub["revision"] = cfg.model.teacher_hub_revision
    teacher = shape_of(teacher_spec, vocab, "teacher", cfg.data.block_length, **hub) if teacher_spec else None
    tokens = cfg.train.micro_batch_size * cfg.data.block_length
    chunk = cfg.train.head_chunk_size or auto_chunk_rows(student.vocab, "cuda")  # a plan is for GPUs
    # with and without activation checkpointing whatever the config says (try-out 118, F2: a config that asks for
    # it was never shown that it fits without, at ~1/3 less compute)
    options_at = partial(
        plan_options,
        student,
        teacher,
        gpus=gpus,
        tokens=tokens,
        parallel=parallel,
        placement=placement,
        param_dtype=param_dtype,
        teacher_bytes_per_param=4 if cfg.model.teacher_dtype == "float32" else 2,
        activation_bytes=4 if cfg.train.precision == "fp32" else 2,
        student_copies=copies,
    )
    # FSDP2 with its shards in CPU memory where the config asks for it, or nothing else fits (try-out 144, F3: the
    # mode for "not even 1/W fits" was never planned); in one process it offloads nothing
    can_offload = gpus > 1 and "fsdp" in parallel
    offload = can_offload and cfg.train.cpu_offload
    options = options_at(chunk_rows=chunk, cpu_offload=offload)
    if can_offload and not offload and all(o.peak > gpu_memory for o in options):
        offload = True
        options = options_at(chunk_rows=chunk, cpu_offload=True)
    smaller_chunk = None
    if all(o.peak > gpu_memory for o in options):  # the largest multiple of 64 rows that fits, if any
        rows = (min(chunk, tokens) - 1) // MIN_PLANNED_CHUNK * MIN_PLANNED_CHUNK
        while smaller_chunk is None and rows >= MIN_PLANNED_CHUNK:
            fitting = [o for o in options_at(chunk_rows=rows, cpu_offload=offload) if o.peak <= gpu_memory]
            smaller_chunk = (rows, fitting[0].peak) if fitting else None
            rows -= MIN_PLANNED_CHUNK
    return note + format_plan(
        cfg.model.student,
        student,
        teacher_spec,
        teacher,
        options,
        gpus,
        gpu_memory,
        tokens,
        smaller_chunk,
        self_teacher,
        cfg.train.cpu_offload,
    )


def planned_modes(
    cfg, gpus: int, parallel: tuple[str, ...], placement: tuple[str, ...]
) -> tuple[tuple[str, ...], tuple[str, ...], str]:
    """The ``train.parallel`` and ``teacher.placement`` values a plan weighs, of those asked for, and the lines
    that say what was left out: ``ddp`` with a replicated teacher on one GPU (FSDP2, a sharded teacher and CPU
    offload do nothing in one process; try-out 24: rows of no choice), ``ddp`` alone where distill refuses the
    config under FSDP2 (:func:`ekd.config.validate.fsdp_refusal`; try-out 144, F1: a LoRA run was advised fsdp)."""
    from ekd.config.validate import fsdp_refusal

    note = ""
    if gpus == 1:
        if (parallel, placement) != (PARALLEL, PLACEMENT) and {"fsdp", "shard"} & {*parallel, *placement}:
            note = (  # asked for by name (try-out 25: silently planned otherwise)
                "one GPU: train.parallel=fsdp and teacher.placement=shard do nothing in one process; planned as "
                "ddp with a replicated teacher\n"
            )
        parallel, placement = ("ddp",), ("replicate",)
        if cfg.train.cpu_offload:
            note += "one GPU: train.cpu_offload offloads nothing in one process; planned without it\n"
    if "fsdp" in parallel and (refusal := fsdp_refusal(cfg)) is not None:
        key, _ = refusal
        note += f"{key}={cfg.value(key)} cannot run under train.parallel=fsdp: planned as ddp only\n"
        parallel = ("ddp",)
    return parallel, placement, note


def _teacher_note(cfg, teacher_spec: str | None) -> str:
    """What the plan says of a teacher it does not count: a cache not built yet (planned as the run from it), the
    teacher the end's evaluation loads after training. A cache run that distill refuses at its start is refused
    here too (try-out 66, F8).

    Raises:
        CacheError, ModelError: :func:`ekd.train.prepare.check_cache_run`'s refusals.
    """
    from ekd.train.prepare import check_cache_run, check_evaluation_teacher, evaluates_teacher, teacher_needed

    note = ""
    if cfg.teacher.source == "cache":
        if cfg.teacher.cache_dir and not Path(cfg.teacher.cache_dir).exists() and teacher_needed(cfg):
            check_evaluation_teacher(cfg)  # a plan made before the cache is built: the rest needs the cache
            note += (
                f"teacher.cache_dir {cfg.teacher.cache_dir} is not built yet (`ekd cache CONFIG` builds it): planned "
                "as the run from it\n"
            )
        else:
            check_cache_run(cfg)
    if teacher_spec is None and evaluates_teacher(cfg):  # try-out 65, F10: a plan that said nothing of it
        note += (
            f"the evaluation at the end loads the teacher ({cfg.model.teacher}) after training (eval.teacher=true): "
            "not in these figures; eval.teacher=false skips it\n"
        )
    return note


def _check_vocab_size_arg(cfg, vocab_size: int, teacher_spec: str | None) -> None:
    """``--vocab-size`` where it can mean something: within [2, ``MAX_VOCAB``], with a preset model to apply to.

    Raises:
        ConfigError: either is not so (one line).
    """
    from ekd.models.load import is_preset

    if not 2 <= vocab_size <= MAX_VOCAB:
        raise ConfigError(
            f"--vocab-size must be between 2 and {MAX_VOCAB:,} (the largest tokenizers in use have ~262k "
            f"entries), got {vocab_size:,}"
        )
    planned = {"model.student": cfg.model.student, "model.teacher": teacher_spec}
    planned = {k: v for k, v in planned.items() if v}
    if not any(is_preset(v) for v in planned.values()):
        what = "is a Hugging Face model" if len(planned) == 1 else "are Hugging Face models"
        raise ConfigError(
            f"--vocab-size sets the vocabulary of preset:<name> models only, and {' and '.join(planned)} "
            f"{what} here (V comes from config.json); drop --vocab-size"
        )


def _planned_vocab(cfg, vocab_size: int | None, teacher_spec: str | None) -> tuple[int, str]:
    """The vocabulary preset models are planned at (0 where no preset is planned: a Hugging Face model's V is its
    config.json's) and the lines that say how sure it is: ``--vocab-size`` where given (checked against the run's
    tokenizer where that can be read here), else the run's tokenizer's (:func:`_vocab_size`).

    Raises:
        ConfigError: ``--vocab-size`` other than the size the run builds its presets at.
        EkdError: a tokenizer or model config that cannot be read (the hub's offline: with the way round it).
    """
    from ekd.models.load import is_preset
    from ekd.train.prepare import tokenizer_source

    note = ""
    if vocab_size is None and not any(is_preset(s) for s in (cfg.model.student, teacher_spec) if s):
        vocab = 0  # unread: a Hugging Face model's V is its config.json's (plan loads no tokenizer for it)
        if (spec := tokenizer_source(cfg)) not in ("teacher", "student", "train_bpe"):
            from ekd.models.load import check_model_dir

            check_model_dir(spec, "model.tokenizer", tokenizer_only=True)  # distill's line (try-out 124, F1)
    elif vocab_size is None:
        try:
            vocab, source, inexact = _vocab_size(cfg)
        except EkdError as e:  # a hub tokenizer that cannot be read here: the way round (try-out 122, F9)
            spec = tokenizer_source(cfg)
            if spec in ("teacher", "student", "train_bpe") or spec.startswith((".", "/", "~")):
                raise
            raise type(e)(f"{first_line(str(e))}; or plan without reading it: --vocab-size V") from None
        if inexact:
            note += f"V={vocab:,} from {source}: {inexact}; distill builds preset models at its tokenizer's length\n"
    elif tokenizer_source(cfg) != "train_bpe":
        # a real model or a tokenizer of its own sets it (try-out 118, F3), where it can be read here (review of
        # session 34, R5: a hub tokenizer offline refused the --vocab-size that was the way round it)
        vocab = vocab_size
        try:
            fixed, source, inexact = _vocab_size(cfg)
        except EkdError as e:
            spec = tokenizer_source(cfg)
            spec = {"teacher": cfg.model.teacher, "student": cfg.model.student}.get(spec, spec)
            # a path (mistyped?), not a hub id offline: distill refuses it too
            if spec.startswith((".", "/", "~")):
                raise
            note += (
                f"V={vocab:,} (--vocab-size) not checked against the run's tokenizer: {first_line(str(e))}\n"
            )
        else:
            if fixed != vocab_size and inexact:
                note += f"V={vocab:,} (--vocab-size) not checked against {source}: {inexact}\n"
            elif fixed != vocab_size:
                raise ConfigError(
                    f"--vocab-size {vocab_size:,}: this run builds its preset models at V={fixed:,}, the vocabulary "
                    f"of {source}; drop --vocab-size"
                )
    else:  # a what-if over the size of a tokenizer not trained yet
        vocab = vocab_size
        if vocab != cfg.model.bpe_vocab_size:
            note += (
                f"preset models planned at V={vocab:,} (--vocab-size); this run trains a BPE tokenizer and builds "
                f"them at model.bpe_vocab_size={cfg.model.bpe_vocab_size:,}\n"
            )
    return vocab, note


MIN_PLANNED_CHUNK = 64
"""The step and the smallest value of the ``train.head_chunk_size`` a plan that fits nowhere suggests (the largest
multiple of it below the config's chunk that fits): below it the head's GEMMs are too thin to keep a GPU busy."""


def _vocab_size(cfg) -> tuple[int, str, str]:
    """The vocabulary a preset model is built with, where it comes from, and why it may not be exact (''): the BPE
    size when the run trains its tokenizer (the rules of ``ekd.train.prepare``), the length of ``model.tokenizer``
    when it names one of its own, else the length of the non-preset model's tokenizer, as distill builds the
    presets — its config.json's vocabulary (a padded head's rows, maybe) where it holds no tokenizer or that
    cannot be loaded here (a hub id offline: the third item says so).

    Raises:
        ConfigError: the size cannot be known without loading a tokenizer (pass ``--vocab-size``).
        ModelError: ``model.tokenizer`` or the model's config cannot be loaded.
    """
    from ekd.hub import check_model_spec, is_local
    from ekd.models.load import is_preset, load_tokenizer, model_config
    from ekd.train.prepare import names_teacher, teacher_config_source, tokenizer_source

    m = cfg.model
    spec = tokenizer_source(cfg)  # distill's rule for presets
    if spec == "train_bpe":
        return m.bpe_vocab_size, "model.bpe_vocab_size (the BPE tokenizer the run trains)", ""
    models = {
        "teacher": teacher_config_source(cfg),
        "student": (m.student, m.revision),
    }  # a cache run: its copy
    if spec not in models and names_teacher(cfg, spec):
        spec = "teacher"
    if spec not in models:  # a tokenizer of its own (try-out 24): what distill reads, its length
        tokenizer = load_tokenizer(spec, m.revision, m.trust_remote_code, "model.tokenizer")
        return len(tokenizer), f"model.tokenizer={spec}", ""
    for role in sorted(models, key=lambda r: r != spec):  # the named model's first
        model, revision = models[role]
        if not is_preset(model):  # its config.json says; one that cannot be read is the error (try-out 21:
            # "pass --vocab-size", then "drop --vocab-size" for a path that did not exist)
            check_model_spec(model, f"model.{role}", revision, weights=False)  # distill's check; config only
            config = model_config(model, revision, m.trust_remote_code, role)
            # distill builds presets at the tokenizer's length, not at a padded head's rows (try-out 120, F4:
            # Qwen2.5's config.json says 151,936 for 151,665 tokens)
            from_config = int(config.vocab_size), f"model.{role}={model} (its config.json)"
            try:  # a local directory without one is refused as distill refuses it (try-out 123, F5)
                tokenizer = load_tokenizer(model, revision, m.trust_remote_code, f"model.{role}")
            except EkdError as e:  # a hub id offline: its config.json's (review of session 34, R5)
                if is_local(model):
                    raise
                return *from_config, f"its tokenizer cannot be loaded here ({first_line(str(e))})"
            return len(tokenizer), f"model.{role}={model} (its tokenizer)", ""
    raise ConfigError(f"ekd plan: cannot tell the vocabulary size of '{spec}'; pass --vocab-size V")
