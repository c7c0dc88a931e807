"""The training loop, top to bottom (nanoGPT / litgpt style).

    ekd distill configs/demo.yaml train.max_steps=200 method=sekd

set LR → micro-batches → global counts → (teacher signal → student → select → loss → backward) × accum
→ clip → step → policy feedback → log → eval → checkpoint. AdamW, linear warm-up + cosine decay, bf16
autocast on GPU and fp32 on CPU, optional gradient checkpointing, atomic checkpoints, exact ``--resume``.
"""

from __future__ import annotations

import logging
import math
import shlex
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import TypeVar

import torch
from torch import nn
from tqdm.auto import tqdm

from ekd.config import Config, ConfigError
from ekd.config.inert import (
    ce_on_own_samples,
    idle_keys,
    idle_objective,
    idle_schedules,
    inert_data_message,
    inert_message,
    inert_run_message,
    refuse_inert_keys,
    unread_cache_keys,
    unread_eval_keys,
)
from ekd.config.paths import same_location
from ekd.data.loader import blocks_with_targets
from ekd.data.tokenizer import tokenizer_hash
from ekd.errors import EkdError, NonFiniteLossError
from ekd.eval.eval_json import precision_name
from ekd.io import writing
from ekd.log_level import EVERY_RANK
from ekd.models.dropout import active_dropout, dropout_fix
from ekd.models.export import export_dtype, export_line, head_rows, prepare_shipped
from ekd.models.layers import checkpoint_decoder_layers, uncheckpoint_decoder_layers
from ekd.models.load import dtype_name, is_preset, save_model_dir
from ekd.models.lora import LoraStudent, trainable_names
from ekd.selection.draws import RowDraws, micro_batch_key
from ekd.selection.global_batch import gather_rows
from ekd.selection.policies import StepContext
from ekd.signals import already_stopping, deferred_interrupts, interrupt_behind, raise_swallowed_interrupt
from ekd.teacher.cache.manifest import cache_teacher
from ekd.teacher.cache.source import evaluation_dtype_note
from ekd.train.checkpoint import (
    CheckpointError,
    checkpoint_step,
    latest_checkpoint,
    latest_verified_checkpoint,
)
from ekd.train.checkpointed_run import CheckpointedRun
from ekd.train.distributed import (
    Ranks,
    check_cpu_offload,
    data_parallel,
    distributed,
    global_sum,
    global_sums,
    is_sharded,
    lost_peer,
    micro_batch_sync,
    place_teacher,
    publish_continue_hint,
    rank0_ending,
    rank_seed,
    rank_slice,
)
from ekd.train.evaluation import (
    eval_entries,
    evaluate_run,
    read_student_init,
    starting_perplexities,
    write_eval_json,
    write_student_init,
)
from ekd.train.fsdp import clip_grad_norm, full_state_dict, gathered, submodule_state
from ekd.train.memory import memory_line, optimizer_bytes, param_bytes, peak_memory_bytes, tensor_bytes
from ekd.train.method_parts import MethodParts
from ekd.train.metrics_log import MetricsLog
from ekd.train.onpolicy import (
    log_generation_budget,
    maybe_on_policy,
    on_policy_generator,
    on_policy_turn_ends,
)
from ekd.train.optim import build_optimizer, lr_at
from ekd.train.precision import enable_tf32, teacher_dtype_advice
from ekd.train.prepare import (
    PreparedData,
    autocast_dtype,
    build_teacher_source,
    check_cache_run,
    chunk_rows,
    evaluates_teacher,
    load_student,
    load_teacher,
    loads_teacher_model,
    resolve_device,
    scores_samples_with_teacher,
    warn_smaller_teacher,
)
from ekd.train.rank0_load import load_for_rank, loads_on_rank0
from ekd.train.rank_work import (
    check_same_weights,
    check_shared_directory,
    check_shared_store,
    fetch_models_once,
    opened_on_main_first,
    prepare_data_once,
    run_on_main,
)
from ekd.train.run_dir import RunDirError, RunStart, moved_teacher, read_marker, saved_config
from ekd.train.run_tokenizer import say_if_auto_differs, tokenizer_facts
from ekd.train.run_totals import no_earlier_segments, run_totals, segment_layouts, totals_record
from ekd.train.same_settings import rank_settings
from ekd.train.sharded_checkpoint import (
    verified_on_main,
)
from ekd.train.step import MicroBatchResult, StepContextData, distill_micro_batch, kl_at_rows
from ekd.train.step_metrics import batch_counts, combine, eval_metrics, step_metrics
from ekd.train.task_evaluation import run_end_tasks
from ekd.train.term_counts import planned_hard_rows, planned_selection_rows
from ekd.train.top_samples import sample_selection
from ekd.train.wandb_log import open_wandb, require_wandb
from ekd.words import counted

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class TrainResult:
    run_dir: Path
    steps: int  # train.max_steps: the run's steps, all segments
    wall_time: float  # seconds of this segment (this call: loading, training, evaluation)
    kd_fraction: float  # selected KD positions / valid positions over the whole run (see ``whole_run``)
    last_metrics: dict[str, float] = field(default_factory=dict)
    eval: dict[str, dict[str, float]] = field(default_factory=dict)
    resumed_at: int | None = None  # the step --resume continued from; None for a run trained in one go
    total_time: float = 0.0  # seconds of every segment up to its last checkpoint, and this one
    whole_run: bool = True  # False: resumed from a checkpoint that did not record the run's totals (an older
    # ekd), so total_time and kd_fraction cover this segment only


def _resumed_cache(open_cache: Callable[[], T], resumed: Path | None, cache_dir: str) -> T:
    """``open_cache()`` (a check of ``teacher.cache_dir`` or the cache's opening); on ``--resume`` of the run in
    ``resumed``, a cache built for other settings is told to be the run's own (try-out 120, F8: the advice "train
    as it was built (method.rs_samples=20)" was then refused by --resume as a change of what the run computes):
    another cache named is told to name the run's, the run's own rebuilt since for other settings to be rebuilt
    for the run (try-out 122, F6: it kept the advice of a new run)."""
    from ekd.teacher.cache.format import CacheMismatch

    try:
        return open_cache()
    except CacheMismatch as e:
        saved = ((saved_config(resumed) or {}).get("teacher") or {}).get("cache_dir") if resumed else None
        if not saved:
            raise
        if same_location(saved, cache_dir):
            raise CacheMismatch(
                f"--resume: the run's teacher cache at {e.directory} was rebuilt since for other settings "
                f"({e.differences}): rebuild it for the run with `ekd cache {resumed / 'config.yaml'} --overwrite`, "
                "or name a copy of the cache the run was trained from",
                e.directory,
                e.differences,
            ) from None
        raise CacheMismatch(
            f"--resume: teacher cache at {e.directory} does not match the training config ({e.differences}): this "
            f"run was trained from another cache; name that cache (teacher.cache_dir={saved}, as "
            f"{resumed / 'config.yaml'} has it) or a copy of it",
            e.directory,
            e.differences,
        ) from None


def step_generator(seed: int, step: int, micro: int) -> torch.Generator:
    """The generator of decisions taken once per global micro-batch (the EXP3 budget): it depends only on
    (seed, step, micro-batch index), so every rank draws alike and resume is exact. Draws per row (random
    scores, ``pos_rs``) use :func:`row_draws` instead."""
    return torch.Generator().manual_seed((seed * 1_000_003 + step * 1_009 + micro) % (2**63 - 1))


def row_draws(seed: int, step: int, micro: int, batch) -> RowDraws:
    """Per-row random streams of global micro-batch ``micro``: row i's draws are keyed by its sample id, so
    W ranks draw what one process with the same micro-batch draws. :func:`forward_backward` passes micro 0 for
    every micro-batch of a step (its rows are distinct blocks of one epoch), so any split of a step into
    micro-batches draws alike; a run whose loader ended epochs per micro-batch (an older ekd's) keeps its
    per-micro-batch keys."""
    return RowDraws(micro_batch_key(seed, step, micro), batch.sample_ids)


def train(
    cfg: Config, *, resume: bool = False, overwrite: bool = False, data: PreparedData | None = None
) -> TrainResult:
    """Distill (or train with CE) a student per ``cfg``; returns where the run lives and its figures.

    Under ``torchrun`` every rank runs this; rank 0 owns the run directory (and holds its lock for the whole run:
    a second process on the same run is refused), logs, checkpoints and evaluation.
    The start is one transaction (:class:`~ekd.train.run_dir.RunStart`): whatever fails or is interrupted
    before the first optimizer step has completed leaves the run directory as it was (a corrupt cache, a
    teacher that does not fit, an out-of-memory step); a run replaced by ``--overwrite`` is deleted only then.
    """
    same = rank_settings(cfg, resume=resume, overwrite=overwrite)  # alike on every rank (try-out 80, F1/F2)
    with distributed(resolve_device(cfg.run.device), same) as ranks:
        # a method key the method never reads (try-out 53, F5): refused at a start, said on a resume (its run
        # trains on as it began)
        if not resume:
            refuse_inert_keys(cfg.method, cfg.teacher, cfg.data)
            if idle := idle_objective(cfg.method):  # try-out 60, F3: a run that would train on rounding noise
                raise ConfigError(idle, keys=("method.objective", "method.ce_weight"))
        elif ranks.is_main:
            for inert in (
                inert_message(cfg.method, resumed=True),
                inert_data_message(cfg.data, resumed=True),
            ):
                if inert:
                    log.warning("%s", inert)
        # keys of a shared YAML this run does not read: said, not refused (try-outs 54, 108, 110)
        if ranks.is_main:
            for unread in (unread_cache_keys(cfg.teacher), inert_run_message(cfg), unread_eval_keys(cfg)):
                if unread:
                    log.warning("%s", unread)
        if (
            ranks.is_main
            and cfg.eval.teacher
            and not evaluates_teacher(cfg)
            and cfg.teacher.source == "cache"
        ):
            log.info(  # try-out 80, F4: the table's KL and agreement columns and eval/teacher row were left blank
                "eval.teacher: no teacher figures at the end (KL, top-1 agreement, the eval/teacher row): "
                "model.teacher=%s is a preset, whose random weights a run from a cache does not rebuild to "
                "evaluate (they need not be those that built it); a saved teacher is evaluated",
                cfg.model.teacher,
            )
        if ranks.is_main:  # a schedule the run is too short to carry out (try-out 58, F3); CE on own samples
            for idle in (*idle_keys(cfg.method), *idle_schedules(cfg.method, cfg.train.max_steps)):
                log.warning("%s", idle)
            if said := ce_on_own_samples(cfg.method):
                log.warning("%s", said)
        start = RunStart(cfg, resume, overwrite) if ranks.is_main else None
        finished = False
        try:
            _publish_hint(start)  # inside: an interrupt here too rolls the start back and says how to go on
            result = _train(cfg, ranks, resume, start, data)
            finished = True
            return result
        except BaseException as e:
            already_stopping()  # torchrun's SIGTERM (another rank ended) must not cut the rollback or the hint
            rank0_ending(ranks)  # before the rollback: the other ranks read rank 0 as ending, not running
            # an interrupt that a library turned into its own error (DCP's writer: try-out 52, F1) is said as one
            stop = interrupt_behind(e) or e
            if start is not None:
                start.rollback()  # a no-op once the run has started
                if isinstance(stop, KeyboardInterrupt) or lost_peer(stop):  # stopped from outside this rank
                    stop.continue_hint = interrupted_hint(start)  # what the CLI prints after its line
                elif isinstance(stop, EkdError) and not isinstance(stop, NonFiniteLossError):
                    stop.args = (f"{stop}{failed_hint(start, cfg.train.max_steps)}", *stop.args[1:])
            try:
                if stop is e:
                    raise
                raise stop from e
            finally:
                # this frame holding its own exception (and so its traceback): a cycle that kept a library's
                # thread pool, and its threads, alive to the process's exit (try-out 114)
                del stop
        finally:
            if start is not None:
                try:
                    with deferred_interrupts():  # the run directory's lock, held by rank 0 for the whole run
                        start.close()
                except KeyboardInterrupt:
                    # try-out 114, F2: an interrupt as a finished run released its lock said "the run had not
                    # started … run the same command again" (143): the run is written, the interrupt changes nothing
                    if not finished:
                        raise


def _publish_hint(start: RunStart | None) -> None:
    """Rank 0: :func:`interrupted_hint` in the job's store, kept current (the run's start, its commit, each
    checkpoint) for the rank that speaks for a rank 0 killed without a word
    (:func:`~ekd.train.distributed.publish_continue_hint`)."""
    if start is not None:
        publish_continue_hint(lambda: interrupted_hint(start))


def interrupted_hint(start: RunStart) -> str:
    """How to go on after Ctrl-C, from what the run directory now holds: "; ..." for ``ekd: interrupted``."""
    if not start.committed:  # a token store being built is said only where one is (try-out 103, F2)
        store = (
            " (a token store build it began resumes from its last checkpoint)"
            if start.cfg.data.store_dir
            else ""
        )
        return f"; the run had not started, so nothing in it was changed: run the same command again{store}"
    newest = latest_checkpoint(start.run_dir)
    if newest is None:
        return f"; no checkpoint was saved yet: start again with {_same_command(start, '--overwrite')}"
    return f"; checkpoint {newest.name} is kept: continue with {_same_command(start, '--resume')}"


def failed_hint(start: RunStart, max_steps: int) -> str:
    """How to go on once an error that stopped a started run is fixed (a cache record failing its CRC, a full
    disk): "; ..." after the error's own line, from what the run directory holds; '' before the run started
    (nothing was changed: the error's fix is the way on) or once it has finished. A failure after the last step
    (the export, the final evaluation) is finished by ``--resume`` from the last step's checkpoint."""
    if not start.committed:
        return ""
    newest = latest_checkpoint(start.run_dir)
    if newest is None:
        return f"; the run saved no checkpoint: once fixed, start again with {_same_command(start, '--overwrite')}"
    try:
        if (read_marker(start.run_dir) or {}).get("state") == "finished":
            return ""
    except RunDirError:  # a marker torn by the failure itself: say what the checkpoints allow
        pass
    # the export or final evaluation failed (try-out 36: a full disk)
    if checkpoint_step(newest) >= max_steps:
        return (
            f"; checkpoint {newest.name} of the last step is kept: once fixed, finish the run (export and "
            f"evaluation) with {_same_command(start, '--resume')}"
        )
    return f"; checkpoint {newest.name} is kept: once fixed, continue with {_same_command(start, '--resume')}"


def _same_command(start: RunStart, flag: str) -> str:
    """'the same command and --resume' as the command given reads (try-out 87, F3: an ``--overwrite`` that failed
    after its first step was told to add --resume, which is refused beside --overwrite): with ``flag`` in place of
    the other flag where that was given, or 'the same command (--resume)' where it already has ``flag``."""
    given = "--overwrite" if start.overwrite else "--resume" if start.resume else ""
    if given == flag:
        return f"the same command ({flag})"
    return f"the same command with {flag} in place of {given}" if given else f"the same command and {flag}"


def _segment_layout(
    cfg: Config, ranks: Ranks, amp: torch.dtype | None, teacher_model: nn.Module | None, parts: MethodParts
) -> dict:
    """This segment's device layout, as :func:`~ekd.train.run_totals.segment_layouts` records it: ranks, engine,
    micro-batch, and the arithmetic as it ran, not as set ('auto' is fp32 and a float32 teacher on a CPU) — what
    ``ekd compare`` groups runs by (try-out 120, F1: auto and fp32 runs, bit-identical, were two methods)."""
    layout = {
        "ranks": ranks.world_size,
        "parallel": cfg.train.parallel,
        "micro_batch_size": cfg.train.micro_batch_size,
        "autocast": precision_name(amp),
    }
    # the teacher's, where it takes part in training (an evaluation-only teacher is eval.json's: review of session
    # 34, R2 — a ce seed evaluated with a teacher was another method than one without)
    if teacher_model is not None and (parts.needs_teacher or scores_samples_with_teacher(cfg)):
        layout["teacher_dtype"] = dtype_name(next(teacher_model.parameters()).dtype)
    return layout


def _check_enough_blocks(
    trained: int, blocks: int, sampled: bool, cfg: Config, ranks: Ranks, whole_step: bool = True
) -> None:
    """Refuse a step of more rows than the blocks a step draws from, naming why there are so few.

    ``trained`` of the ``blocks`` training blocks are drawn (those with a target, and of those the ones TopSmp
    kept when ``sampled``); a step takes ``train.micro_batch_size`` rows on each of the W ranks, for each of its
    ``train.grad_accum_steps`` micro-batches, all from one epoch (:meth:`~ekd.data.BlockLoader.next_step`).
    ``whole_step`` False checks one micro-batch's rows only: what the loader needs, and all that a run started
    by an ekd whose steps could span two epochs needs to continue (try-out 30: 4 × 4 on 7 blocks).

    Raises:
        ConfigError: one line; lowering ``data.block_length`` is advised only when every block holds a target
            (otherwise shorter blocks leave more of them without one, try-out 25).
    """
    micro = cfg.train.micro_batch_size
    accum = cfg.train.grad_accum_steps if whole_step else 1
    rows = micro * ranks.world_size * accum
    if trained >= rows:
        return
    factors = [f"train.micro_batch_size={micro}"]
    factors += [f"{ranks.world_size} ranks"] if ranks.world_size > 1 else []
    factors += [f"train.grad_accum_steps={accum}"] if accum > 1 else []
    step = " × ".join(factors) + (f" = {rows} rows per step" if len(factors) > 1 else "")
    lower = "lower train.micro_batch_size or train.grad_accum_steps" if accum > 1 else "lower it"
    if trained == blocks:
        raise ConfigError(
            f"{step} is more than the {counted(blocks, 'training block')}; {lower}, lower data.block_length "
            "or add data"
        )
    kept = f" that method.sample_fraction={cfg.method.sample_fraction:g} keeps" if sampled else ""
    raise ConfigError(
        f"{step} is more than the {trained} of the {counted(blocks, 'training block')} a step draws from (those "
        f"with a target{kept}); {lower} or add data"
    )


def _train(
    cfg: Config, ranks: Ranks, resume: bool, start: RunStart | None, data: PreparedData | None
) -> TrainResult:
    from ekd.data import BlockLoader
    from ekd.data.documents import check_sources_exist

    t_start = time.perf_counter()
    device, main = ranks.device, ranks.is_main
    parts = MethodParts.build(cfg, cfg.train.max_steps)
    # a typo in a model name or a cache not built yet is found first: before the run directory's checks
    # (whose advice would be --overwrite) and before the data is read
    _check_model_names(cfg, parts, resume)
    if cfg.teacher.source == "cache":
        # every rank would find the same: rank 0 checks, its refusal is said once (its node's files; another
        # node's are checked when its ranks open the cache)
        resumed = cfg.run_dir if resume else None
        run_on_main(
            ranks,
            lambda: _resumed_cache(lambda: check_cache_run(cfg), resumed, cfg.teacher.cache_dir),
            "check teacher.cache_dir",
        )
    # a mistyped data path is named before the run directory's advice (try-out 93, F3: "pass --overwrite"), by rank 0,
    # which reads the data; a --resume names a moved source against the path its run read (gone_paths)
    if not resume:
        run_on_main(ranks, lambda: check_sources_exist(cfg.data), "check the data sources")
    # rank 0 alone checks and prepares the run directory (and, below, the data and the end-of-run tools);
    # run_on_main sends its answer to every rank, so a refusal or a finished run ends every rank alike
    run_dir = run_on_main(ranks, lambda: _open_run(cfg, ranks, start), "open the run directory")
    # every rank writes its checkpoint shards there, and reads them on --resume; the token store rank 0 builds is
    # read by every rank: both must be one directory to all of them
    check_shared_directory(ranks, run_dir, "run.output_dir", "every rank writes its checkpoint shards there")
    if cfg.data.store_dir:
        check_shared_store(ranks, cfg.data.store_dir)
    torch.manual_seed(cfg.run.seed)
    amp = autocast_dtype(cfg, device)
    enable_tf32(cfg.train.precision, device)
    if data is None:  # tokenized and packed once, by rank 0; the other ranks receive it
        data = prepare_data_once(cfg, run_dir, ranks)
    run_on_main(ranks, lambda: _check_on_main(cfg, data, start), "check the data, eval.tasks and log.wandb")
    teacher_spec = [cfg.model.teacher] if loads_teacher_model(cfg) else []
    teacher_model = [(cfg.model.teacher, cfg.model.teacher_hub_revision)] if teacher_spec else []
    fetch_models_once([(cfg.model.student, cfg.model.revision), *teacher_model], ranks)  # once per node
    # what each rank reads itself must be rank 0's: a replicated teacher, a LoRA student's frozen base
    if teacher_spec and not loads_on_rank0(cfg, "teacher", ranks.world_size):
        check_same_weights(ranks, cfg.model.teacher, cfg.model.teacher_hub_revision, "model.teacher")
    if cfg.model.lora_r > 0:
        check_same_weights(ranks, cfg.model.student, cfg.model.revision, "model.student")
    # whole on every rank, or (FSDP2 / a sharded teacher) on rank 0 only: the others get their shards from it
    student = load_for_rank(cfg, "student", ranks, lambda empty: load_student(cfg, data, device, empty))
    lora = LoraStudent.wrap(student, cfg.model) if cfg.model.lora_r > 0 else None  # adapters in place
    saved_tensors = trainable_names(student) if lora is not None else None  # None: the whole student
    if cfg.train.activation_checkpointing:
        log.info("activation checkpointing on %d decoder layers", checkpoint_decoder_layers(student))
    if dropout := active_dropout(student):  # after the LoRA adapters are in: theirs too
        log.info(
            "the student trains with dropout (%s): its updates are random, so a run split over other ranks or "
            "micro-batches agrees with this one in distribution, not in value; %s makes it exact",
            ", ".join(f"{k}={v:g}" for k, v in dropout.items()),
            dropout_fix(dropout),
        )
    student.train()
    teacher_model = _load_teacher_model(cfg, parts, ranks, data, device)
    # again once loaded: a hub id resolves its branch at the load, online perhaps to weights newer than the run
    # recorded (review 156, R1: the check before it saw the snapshot cached then; a first start records them now)
    run_on_main(ranks, lambda: _check_loaded_models(start), "check the loaded models")
    if teacher_model is not None:
        warn_smaller_teacher(teacher_model, student)
    teacher_shard = place_teacher(teacher_model, cfg, ranks)
    teacher = None
    if parts.needs_teacher:  # a cache built for another config is refused alike by every rank: said once
        teacher = opened_on_main_first(
            ranks,
            lambda: _resumed_cache(
                lambda: build_teacher_source(cfg, data, device, teacher_model, teacher_shard),
                run_dir if resume else None,
                cfg.teacher.cache_dir,
            ),
            "open the teacher source",
        )
    if cfg.teacher.source == "cache" and teacher is not None:  # rank 0 records it; --resume refuses another
        pinned, size = cache_teacher(teacher.reader.signature), teacher.reader.bytes_per_token()
        run_on_main(ranks, lambda: start.check_cache_teacher(pinned, size), "check the cache's teacher")
        if ranks.is_main and (note := evaluation_dtype_note(cfg, teacher.reader.signature, device)):
            log.warning("%s", note)
    parts.attach_models(student, teacher_model, device)
    extra_modules = parts.checkpoint_modules()
    # DDP or FSDP2 under torchrun, None in one process; FSDP2 turns parameters into shards: before the optimizer
    engine = data_parallel(student, parts.modules, ranks, cfg)
    sharded = engine if is_sharded(engine) else None  # the FSDP2 root of the student, or None
    kept = None
    if cfg.method.sample_fraction < 1.0:  # TopSmp scores with the initial student, whole on every rank
        with gathered(sharded, teacher_shard):
            kept = sample_selection(cfg, run_dir, data, student, teacher_model, ranks, amp, resume)
    # evaluation on rank 0 gathers a sharded teacher only when it reports teacher metrics
    eval_shard = teacher_shard if cfg.eval.teacher else None
    eval_teacher = teacher_model if teacher_shard is None or cfg.eval.teacher else None
    params = list(student.named_parameters()) + [
        (f"{n}.{k}", p) for n, m in parts.modules.items() for k, p in m.named_parameters()
    ]
    optimizer = build_optimizer(params, cfg)
    # every rank walks the same global order and takes its slice of each (W·b)-row batch
    trained = blocks_with_targets(data.blocks["train"])
    if kept is not None:
        trained = kept[torch.isin(kept, trained)]
    _check_enough_blocks(trained.numel(), len(data.blocks["train"]), kept is not None, cfg, ranks, False)
    loader = BlockLoader(
        data.blocks["train"],
        cfg.train.micro_batch_size * ranks.world_size,
        seed=cfg.run.seed,
        shuffle=True,
        drop_last=True,
        indices=trained,
        step_batches=cfg.train.grad_accum_steps,
    )
    run = CheckpointedRun(
        cfg, ranks, run_dir, start, student, optimizer, extra_modules, parts, loader, kept, saved_tensors
    )
    del loader, kept  # run.loader and run.kept from here: a --resume may replace them

    start_step, resumed_at = 0, None
    # the segments before this one (a new run: none), and this one's device layout
    earlier: dict | None = no_earlier_segments()
    layout = _segment_layout(cfg, ranks, amp, teacher_model, parts)
    arithmetic = {k: layout[k] for k in ("autocast", "teacher_dtype") if k in layout}
    run_on_main(ranks, lambda: start.record_arithmetic(arithmetic), "record the run's arithmetic")
    if resume and (ckpt := verified_on_main(run_dir, ranks)) is not None:
        start_step, earlier = run.restore(ckpt, data.blocks["train"], device)
        resumed_at = start_step
        if start is not None:
            start.say_new_length(start_step)
    # a step's micro-batches come from one epoch, unless an older ekd's checkpoint keeps its per-batch rule
    trained_blocks, whole_step = run.loader.indices.numel(), run.loader.steps_within_epochs
    _check_enough_blocks(
        trained_blocks, len(data.blocks["train"]), run.kept is not None, cfg, ranks, whole_step
    )
    metrics_log = run_on_main(  # rank 0's log (wandb may refuse to start): every rank hears whether it opened
        ranks,
        lambda: MetricsLog(
            run_dir,
            cfg.log.tensorboard,
            resume_step=start_step if resume else None,
            wandb=open_wandb(cfg, run_dir, resumed=resume) if cfg.log.wandb_project else None,
            final_step=cfg.train.max_steps,
        ),
        "open the metrics log",
        share=False,
    )

    def checkpoint(step: int) -> Path:
        saved = run.save(step, run_totals(earlier, time.perf_counter() - t_start, totals, layout))
        if ranks.world_size > 1:
            _publish_hint(start)
        return saved

    def write_metrics(at: int, metrics: dict[str, float]) -> None:  # by rank 0; every rank hears how it went
        run_on_main(ranks, lambda: metrics_log.write(at, metrics), "write the metrics")

    # every rank stops alike (on a global figure); rank 0 says why, with the dtype of a teacher in the loss
    in_loss = teacher_model if parts.needs_teacher and cfg.teacher.source == "online" else None

    def stop(at: int, what: str, blamed: bool = False) -> None:
        dtype = next(in_loss.parameters()).dtype if in_loss is not None else None  # on rank 0: whole
        run_on_main(ranks, lambda: _stop_non_finite(at, run_dir, what, dtype, blamed), "stop")

    # the starting point, logged at step 0 (a pre-trained student's own figures) and kept for eval.json's
    # starting-student figures (eval.student_init); not again on --resume
    has_sets = bool(data.blocks.keys() - {"train"})
    said: set[str] = set()  # eval sets whose non-finite figures were said (once a run, teacher and student)
    # set → the starting student's perplexity: a student that started diverged is not blamed on train.lr (rank 0
    # says it; a resume reads the start's figures back)
    started: dict[str, float] = {}
    if start_step > 0 and main:
        started = starting_perplexities(read_student_init(run_dir), data)
    if start_step == 0 and (cfg.eval.every or cfg.eval.student_init and has_sets):
        with gathered(sharded, eval_shard):
            start_eval = evaluate_run(
                cfg, data, student, eval_teacher, device, amp, ranks=ranks, before_training=True, said=said
            )
        write_metrics(0, eval_metrics(start_eval))
        started = {name: m["ppl"] for name, m in start_eval.items() if name in data.blocks and "ppl" in m}
        # with their settings and blocks' sha256, by rank 0 (eval.json's form); kept whatever eval.student_init
        # (which decides whether eval.json records them): a --resume reads the start back for the divergence line
        run_on_main(
            ranks,
            lambda: write_student_init(run_dir, eval_entries(cfg, start_eval, data, amp)),
            "write the starting student's figures",
        )
        student.train()
    totals = {"selected": 0.0, "valid": 0.0, "rs_drawn": 0.0, "rs_rows": 0.0}
    last: dict[str, float] = {}
    bar = tqdm(
        range(start_step, cfg.train.max_steps),
        initial=start_step,
        total=cfg.train.max_steps,
        disable=not (cfg.log.progress and main),
        desc=cfg.run.name,
        dynamic_ncols=True,
    )
    # on-policy turns also end at the chat template's end-of-turn token (a base student's config may not name it)
    end_of_turn = on_policy_turn_ends(cfg, data.tokenizer)
    if main:
        log_generation_budget(cfg.method, cfg.data.block_length)
    tokens_seen, t_loop = 0, time.perf_counter()
    window_s, window_steps = 0.0, 0  # wall seconds of the steps since the last training row (train/step_s)
    for step in bar:
        raise_swallowed_interrupt()  # a SIGTERM a library swallowed while the run was loading still stops it
        t_step = time.perf_counter()
        # 1. this rank's global RNG (dropout) from (seed, step, rank): ranks differ, resume is exact
        torch.manual_seed(rank_seed(cfg.run.seed, step, ranks.rank))
        # learning rate for this step
        lr = lr_at(step, cfg)
        for group in optimizer.param_groups:
            group["lr"] = lr
        # 2. this step's micro-batches: forward + backward, each term normalized by its global count
        micro_batches = [rank_slice(b, ranks).to(device) for b in run.loader.next_step()]
        on_policy = [False] * len(micro_batches)  # which micro-batches the student generated
        if cfg.method.student_data_fraction > 0:  # GKD: some continuations sampled from the student
            with gathered(sharded):  # FSDP2: ranks generate different lengths; no collective inside
                sampled = [
                    maybe_on_policy(
                        b,
                        student,
                        cfg.method,
                        on_policy_generator(cfg.run.seed, step, i),
                        data.eos_id,
                        vocab_size=data.vocab_size,
                        end_of_turn=end_of_turn,
                    )
                    for i, b in enumerate(micro_batches)
                ]
            micro_batches, on_policy = [b for b, _ in sampled], [flag for _, flag in sampled]
        loss_value, sums, kd_count, ce_count, feature_count, feedback, teacher_not_finite = forward_backward(
            micro_batches,
            student,
            teacher,
            parts,
            step,
            cfg,
            data.vocab_size,
            amp,
            run_dir,
            engine,
            rows_keyed_per_micro_batch=not run.loader.steps_within_epochs,
        )
        sums.update(batch_counts(micro_batches, on_policy if cfg.method.student_data_fraction > 0 else None))
        # 3. gradients are summed over ranks by DDP / FSDP2 in the last backward; clip (sharded: the norm of the
        # whole gradient), step
        loss_value = global_sum(loss_value, ranks)
        if not math.isfinite(loss_value):  # the global loss: every rank stops alike (rank 0 says why)
            stop(step, "loss", global_sum(float(teacher_not_finite), ranks) > 0)
        sums["peak_memory_max"] = float(peak_memory_bytes(device))  # this rank's so far; the max over ranks
        sums = global_sums(sums, ranks)  # diagnostics of the global batch, alike on every rank
        tokens_seen += int(sums["tokens"])  # the job's tokens: train/tokens_per_s is not a rank's rate
        trainable = [p for _, p in params if p.grad is not None]
        grad_norm = clip_grad_norm(trainable, cfg.train.max_grad_norm)
        if not math.isfinite(grad_norm):  # the norm of the summed gradient: alike on every rank
            stop(step, "gradient norm")
        optimizer.step()
        if step == start_step:
            # the run has started (data, teacher or cache, model and optimizer went through one whole step): only
            # now is a run replaced by --overwrite deleted; from here a failure keeps the directory for --resume
            run_on_main(ranks, lambda: start.commit(), "mark the run started")
            _publish_hint(start)
        if step == start_step:  # every rank: what it holds once gradients and AdamW state exist
            log.info(
                memory_line(
                    ranks.rank,
                    param_bytes(teacher_model),
                    tensor_bytes(p for _, p in params),
                    tensor_bytes(p.grad for _, p in params),
                    optimizer_bytes(optimizer),
                    sum(param_bytes(m) for m in parts.frozen.values()),
                ),
                extra=EVERY_RANK,
            )
        optimizer.zero_grad(set_to_none=True)
        # 4. stateful parts learn from this step (LATF loss EMA, bandit KL drop, EMA student)
        kd_mean = sums.get("kd_sum", 0.0) / kd_count  # LATF sees the mean KD loss of the global batch
        with gathered(sharded if parts.wants_feedback else None):
            parts.policy.observe(
                kd_loss=kd_mean,
                **bandit_feedback(feedback, micro_batches, student, teacher, data.vocab_size, amp),
            )
        if teacher is not None and hasattr(teacher, "release"):
            teacher.release()  # a sharded teacher's gathered head, kept for the bandit's KL
        parts.after_optimizer_step(student)
        # 5. log
        totals["selected"] += sums.get("positions", 0.0)  # distinct positions given KD (the run's KD share)
        totals["valid"] += sums.get("valid", 0.0)
        if "rs_unique" in sums:  # online RS: distinct ids drawn over the step's KD rows
            totals["rs_drawn"] += sums["rs_unique"]
            totals["rs_rows"] += sums.get("selected", 0.0)
        now = time.perf_counter()
        window_s, window_steps = window_s + now - t_step, window_steps + 1
        last = step_metrics(
            step,
            lr,
            loss_value,
            grad_norm,
            sums,
            (kd_count, ce_count, feature_count),
            parts,
            tokens_seen / max(now - t_loop, 1e-9),
            window_s / window_steps,
        )
        if (step + 1) % cfg.log.every == 0 or step + 1 == cfg.train.max_steps:
            write_metrics(step + 1, last)
            window_s, window_steps = 0.0, 0
        bar.set_postfix(loss=f"{loss_value:.3f}", tok_s=f"{last['train/tokens_per_s']:.0f}")
        # 6. evaluate, checkpoint
        if cfg.eval.every and (step + 1) % cfg.eval.every == 0 and step + 1 < cfg.train.max_steps:
            # all ranks evaluate their share; sharded models are gathered whole on every rank meanwhile
            with gathered(sharded, eval_shard):
                periodic = evaluate_run(
                    cfg, data, student, eval_teacher, device, amp, ranks=ranks, said=said, started=started
                )
            write_metrics(step + 1, eval_metrics(periodic))
            student.train()
        if cfg.train.checkpoint_every and (step + 1) % cfg.train.checkpoint_every == 0:
            checkpoint(step + 1)
    bar.close()
    if start_step >= cfg.train.max_steps:  # no step was left to train (a resume at max_steps): commit now
        run_on_main(ranks, lambda: start.commit(), "mark the run started")
        _publish_hint(start)

    # the fp32 master weights, which a --resume with more steps continues from; once (try-out 38: written twice
    # when train.checkpoint_every divides train.max_steps), and not again by a resume that trained no step, which
    # started from it (try-out 39: a --resume finishing the export rewrote it)
    if start_step < cfg.train.max_steps and run.saved_at[-1:] != [cfg.train.max_steps]:
        checkpoint(cfg.train.max_steps)
    # a cache: read no more (its readers' lock given back)
    if teacher is not None and hasattr(teacher, "close"):
        teacher.close()
    if eval_teacher is None and evaluates_teacher(cfg):  # a cache-trained run: no teacher in memory
        eval_teacher = _teacher_of_the_cache(cfg, teacher, ranks, data, device, run_dir)
    # every rank turns the student into the model <run>/student holds (LoRA merged; padded head rows suppressed
    # or trimmed; weights rounded to the export dtype), so the final evaluation scores the shipped weights
    adapter = lora is not None and cfg.model.lora_export == "adapter"
    if cfg.train.activation_checkpointing and sharded is None:
        uncheckpoint_decoder_layers(student)  # the model's own module names, which peft's export walks
    if lora is not None and not adapter:
        lora.merge()  # the student is a plain HF model from here on (same logits)
    rows = head_rows(student)  # before a trim: the base's rows, for an adapter's ekd_base.json
    dtype = export_dtype(
        cfg.model.export_dtype, cfg.model.student, cfg.model.revision, cfg.model.trust_remote_code
    )
    shipped = prepare_shipped(
        student,
        data.vocab_size,
        dtype,
        cfg.model.export_head_rows,
        lora.shipped() if adapter else None,
        global_max=lambda x: global_sums({"w_max": x}, ranks)["w_max"],
    )
    exported = full_state_dict(sharded) if sharded is not None else None  # collective; on rank 0 only

    # rank 0's tokenizer record, its encodings hashed once (the export's check, then ekd-run.json)
    tokenizer_record: dict[str, str] = {}

    def export() -> None:
        tokenizer_record.update(tokenizer_facts(data.tokenizer))
        with writing(run_dir / "student"):  # the export named (try-out 87, F4: the run directory was)
            if adapter:
                lora.save_adapter(data.tokenizer, run_dir / "student", lora_base(cfg, data, rows), dtype)
            else:
                save_model_dir(
                    student,
                    data.tokenizer,
                    run_dir / "student",
                    state_dict=None if exported is None else submodule_state(exported, "student"),
                    dtype=dtype,
                )
        log.info(export_line(str(run_dir / "student"), dtype, data.vocab_size, rows, shipped, adapter))
        say_if_auto_differs(run_dir / "student", data.tokenizer, tokenizer_record["tokenizer_sha256"])

    def finish() -> None:
        metrics_log.write(cfg.train.max_steps, eval_metrics(results))
        start_figures = read_student_init(run_dir) if cfg.eval.student_init else None
        write_eval_json(
            run_dir, cfg, results, keep=False, data=data, autocast=amp, student_init=start_figures
        )
        run_end_tasks(cfg, run_dir, student, data.tokenizer, eval_teacher, device, amp)
        metrics_log.close()
        # what `ekd compare` reads back: the vocabulary the teacher's targets spanned, the shipped head's rows,
        # the batch over all ranks (a torchrun run's config.yaml is a one-process run's with another batch)
        start.finish(
            tokenizer_tokens=data.vocab_size,  # V, the vocabulary the teacher's targets spanned
            head_rows=shipped["head_rows"],
            global_micro_batch=ranks.world_size * cfg.train.micro_batch_size,
            ranks=ranks.world_size,
            **tokenizer_record,  # ekd eval reads the export with the run's tokenizer class
            # every segment's ranks and engine, where all are known: a resume may change them
            **({"segments": segments} if (segments := segment_layouts(earlier, layout)) else {}),
            # ekd eval packs the eval sets as the run did, without reading its models' configs again
            **({"document_boundary": asdict(data.boundary)} if data.boundary is not None else {}),
            **totals_record(earlier, totals),  # KD share and RS ids over every step, for ekd compare
        )

    run_on_main(ranks, export, "export the student", share=False)
    # every rank evaluates its share (collectives inside); then rank 0 alone writes and runs the tasks while
    # the others wait on the host group
    plots = run_dir / "plots" if main else None
    with gathered(sharded, eval_shard):
        results = evaluate_run(
            cfg,
            data,
            student,
            eval_teacher,
            device,
            amp,
            plots_dir=plots,
            ranks=ranks,
            said=said,
            started=started,
        )
        run_on_main(ranks, finish, "write the evaluation", share=False)
    wall_time = time.perf_counter() - t_start
    if last:  # the run's memory, beside its time: what the training steps needed at most on the largest rank
        where = "GPU memory allocated" if device.type == "cuda" else "host memory (peak RSS)"
        log.info("peak %s: %.2f GiB (train/peak_memory_gib)", where, last["train/peak_memory_gib"])
    whole = run_totals(earlier, wall_time, totals, layout)
    counts = whole or totals
    kd_fraction = counts["selected"] / counts["valid"] if counts["valid"] else 0.0
    return TrainResult(
        run_dir,
        cfg.train.max_steps,
        wall_time,
        kd_fraction,
        last,
        results,
        resumed_at=resumed_at,
        total_time=whole["seconds"] if whole else wall_time,
        whole_run=whole is not None,
    )


def _teacher_of_the_cache(
    cfg: Config, teacher, ranks: Ranks, data: PreparedData, device, run_dir: Path
) -> nn.Module | None:
    """The teacher a run trained from a cache is evaluated with: ``model.teacher`` loaded for evaluation only, when
    it is still the teacher the cache was built from; None (said in a warning) when it was replaced or moved since
    — never another model's KL under the cache's teacher (try-out 130, F1)."""
    from ekd.teacher.cache.manifest import BUILT_WITH
    from ekd.teacher.cache.source import loaded_teacher_changed, teacher_changed_since

    pinned = teacher.reader.signature if teacher is not None and hasattr(teacher, "reader") else {}

    model = None
    if not (changed := teacher_changed_since(cfg.model.teacher, pinned, cfg.model.teacher_hub_revision)):
        log.info("loading the teacher for evaluation only (training used the cache)")
        fetch_models_once([(cfg.model.teacher, cfg.model.teacher_hub_revision)], ranks)
        model = load_teacher(cfg, data, device)
        built_dtype = (pinned.get(BUILT_WITH) or {}).get("teacher_dtype")  # the weights' hash: in that dtype
        changed = loaded_teacher_changed(cfg, model, pinned.get("teacher_revision"), built_dtype)
    if changed:
        log.warning(
            "the teacher is not evaluated: %s; the student's KL and agreement need the teacher its cache was "
            "built from (`ekd eval %s` adds them once it is back)",
            changed,
            shlex.quote(str(run_dir)),
        )
        return None
    return model


def forward_backward(
    micro_batches,
    student,
    teacher,
    parts: MethodParts,
    step: int,
    cfg: Config,
    vocab_size: int,
    amp,
    run_dir: Path,
    engine=None,
    rows_keyed_per_micro_batch: bool = False,
):
    """Accumulate one optimizer step's gradients over its micro-batches.

    ``engine``: the DDP wrapper or FSDP2 root under torchrun (gradients summed over ranks in the last
    micro-batch's backward, no communication before it), None in one process.
    ``rows_keyed_per_micro_batch``: per-row draws keyed by the micro-batch index too (:func:`row_draws`: only
    for a run whose steps could hold a block twice, resumed from an older ekd's checkpoint).

    Every term is normalized by its global count over the whole step (all micro-batches, all ranks),
    planned before any forward pass from the masks alone: each rank gathers the masks of the global
    micro-batches (every rank's rows), so all ranks hold the same counts and a batch-wide rule counts
    ⌈k·N⌉ over the global micro-batch, as one process would.

    Returns:
        (loss, summed diagnostics of this rank, kd_count, ce_count, feature_count, bandit feedback, whether a
        KD term was NaN because of the teacher's outputs on this rank); the counts are the global micro-batches'
        already (every rank's rows), never summed over ranks again
    """
    planned, selected_rows, valid_counts = [], [], []
    for i, b in enumerate(micro_batches):
        valid = b.labels != -100  # (b, T)
        candidates = valid & (teacher.available(b) if teacher is not None else True)
        masks = gather_rows(torch.stack([valid, candidates], dim=1))  # (W·b, 2, T) global micro-batch
        pctx = StepContext(step, cfg.train.max_steps, step_generator(cfg.run.seed, step, i), vocab_size, {})
        planned.append(parts.policy.planned_count(masks[:, 1], pctx) if parts.kd_weight > 0 else 0.0)
        selected_rows.append(
            planned_selection_rows(parts.policy, masks[:, 1], pctx) if parts.kd_weight > 0 else 0.0
        )
        valid_counts.append(float(masks[:, 0].sum()))
    # the masks are the global micro-batches' (every rank's rows): these counts are global already.
    # Each term divides by the count of its own rows (ce_on=selected: the selection's; feature: hard rows).
    kd_count = max(float(sum(planned)), 1.0)  # never divide by zero
    ce_count = max(float(sum(valid_counts if parts.ce_on == "all" else selected_rows)), 1.0)
    hard_fraction = parts.method_cfg.feature_hard_fraction
    feature_count = max(float(sum(planned_hard_rows(hard_fraction, r) for r in selected_rows)), 1.0)
    sums: dict[str, float] = {}
    loss_value = 0.0
    feedback: list = []
    teacher_not_finite = False
    for i, batch in enumerate(micro_batches):
        ctx = StepContextData(
            step,
            cfg.train.max_steps,
            vocab_size,
            step_generator(cfg.run.seed, step, i),
            cfg.train.loss_path,
            chunk_rows(cfg, vocab_size, batch.input_ids.device),
            amp,
            cfg.train.compile,
            feature_count=feature_count,
            rows=row_draws(cfg.run.seed, step, i if rows_keyed_per_micro_batch else 0, batch),
        )
        with micro_batch_sync(engine, last=i == len(micro_batches) - 1):
            out = _micro_batch(engine, batch, student, teacher, parts, kd_count, ce_count, ctx)
            out.loss.backward()  # a non-finite loss stops the run after the step: the global one, on every rank
        if teacher is not None and hasattr(teacher, "release") and not parts.wants_feedback:
            teacher.release()  # a sharded teacher's gathered head (the bandit still needs it after the step)
        loss_value += float(out.loss.detach())
        for k, v in {**out.metrics, "kd_sum": out.kd_sum, "ce_sum": out.ce_sum}.items():
            sums[k] = combine(k, sums.get(k), v)
        feedback.append(out.feedback)
        teacher_not_finite |= out.teacher_not_finite
    return loss_value, sums, kd_count, ce_count, feature_count, feedback, teacher_not_finite


def _micro_batch(engine, *args) -> MicroBatchResult:
    """``distill_micro_batch(*args)``; under DDP/FSDP2 run inside the engine's forward (DDP sees every
    parameter use and prepares its gradient reduction; FSDP2 gathers the root's embeddings and head), with the
    engine's output as the loss."""
    if engine is None:
        return distill_micro_batch(*args)
    held: list[MicroBatchResult] = []

    def run() -> torch.Tensor:
        held.append(distill_micro_batch(*args))
        return held[0].loss

    loss = engine(run)
    return replace(held[0], loss=loss)


def bandit_feedback(feedback: list, micro_batches, student, teacher, vocab_size: int, amp) -> dict:
    """KL at each micro-batch's selected rows before and after the optimizer step (the bandit's reward)."""
    if not feedback or any(f is None for f in feedback):
        return {}
    after = [
        kl_at_rows(student, b, f["rows"], f["teacher_hidden"], teacher.head, vocab_size, amp)
        for f, b in zip(feedback, micro_batches)
    ]
    return {"kl_before": torch.cat([f["kl_before"] for f in feedback]), "kl_after": torch.cat(after)}


def lora_base(cfg: Config, data: PreparedData, head_rows: int) -> dict:
    """What an exported adapter applies to: the base model — a hub id at the commit its revision resolves to in the
    hub cache (try-out 154, N5: ``revision: ""`` meant whatever ``main`` held later, so the adapter could not be
    scored on its own base once main moved) — and, for a preset, how it was built; the tokenizer's length V (the
    rows ekd trained and scored) and the base head's ``head_rows`` (V or more, when padded)."""
    from ekd.hub import is_local, model_directory

    revision = cfg.model.revision
    if not is_preset(cfg.model.student) and not is_local(cfg.model.student):
        snapshot = model_directory(cfg.model.student, revision)
        revision = snapshot.name if snapshot is not None else revision
    note = {
        "base_model": cfg.model.student,
        "revision": revision,
        "tokenizer_tokens": data.vocab_size,
        "head_rows": head_rows,
    }
    if is_preset(cfg.model.student):  # random init: rebuilt by ekd.models.load.build_preset from these
        note.update(seed=cfg.run.seed, eos_token_id=data.eos_id)
    return note


def _open_run(cfg: Config, ranks: Ranks, start: RunStart) -> Path:
    """Rank 0's checks before anything is made (``train.cpu_offload`` without a GPU), then
    :meth:`RunStart.open`; the run directory."""
    check_cpu_offload(cfg, ranks)
    return start.open()


def _check_on_main(cfg: Config, data: PreparedData, start: RunStart) -> None:
    """Rank 0's checks once the data is read: a new run records its data, ``--resume`` refuses different
    data; an unknown ``eval.tasks`` name, a task's hub dataset that cannot be fetched (no network, not cached),
    a generation budget a scored model's length cannot hold and a missing wandb are refused now, before the
    models load (not after the whole training)."""
    start.check_data(data.blocks["train"].fingerprint(), len(data.blocks["train"]))
    start.check_eval_sets(
        {name: blocks.fingerprint() for name, blocks in data.blocks.items() if name != "train"}, data.held_out
    )
    start.check_student_base()
    start.check_student()
    start.check_teacher()
    start.check_tokenizer(tokenizer_hash(data.tokenizer))
    if cfg.eval.tasks:
        from ekd.eval.tasks import check_config_tasks
        from ekd.train.task_evaluation import check_task_lengths

        check_config_tasks(cfg)
        check_task_lengths(cfg, (cfg.model.student, cfg.model.revision), lambda: data.tokenizer)
    if cfg.log.wandb_project:
        require_wandb()


def _check_loaded_models(start: RunStart) -> None:
    """Rank 0: the teacher's and a LoRA base's weights as loaded, against what the run recorded
    (:meth:`RunStart.check_teacher`, :meth:`RunStart.check_student_base`); a new run's hub student, downloaded since
    the start's checks, recorded (:meth:`RunStart.check_student`; review 163, R2)."""
    start.check_student_base()
    start.check_teacher()
    start.check_student()


def _check_model_names(cfg: Config, parts: MethodParts, resume: bool = False) -> None:
    """:func:`ekd.hub.check_model_spec` on the student and the teacher this run loads (cheap: no download). A
    ``--resume`` whose local teacher directory is gone is told it may name where the teacher is now (try-out 44:
    it was told to pass 'a hub id, a saved model directory or preset:<name>')."""
    from ekd.hub import check_model_spec

    try:
        check_model_spec(cfg.model.student, "model.student", cfg.model.revision)
    except EkdError as e:
        gone = Path(cfg.model.student).expanduser()
        if resume and gone.is_absolute() and not gone.exists():  # try-out 138, F2: told to pass a directory,
            # then refused for passing another one
            raise type(e)(
                f"--resume: model.student={cfg.model.student} no longer exists: put it back there (the run reads the "
                "student it started from there: its architecture, and with LoRA its base weights)"
            ) from None
        raise
    if loads_teacher_model(cfg):
        try:
            check_model_spec(cfg.model.teacher, "model.teacher", cfg.model.teacher_hub_revision)
        except EkdError as e:
            gone = Path(cfg.model.teacher).expanduser()
            if resume and gone.is_absolute() and not gone.exists():  # (an empty directory is said as such)
                raise type(e)(f"--resume: {moved_teacher(cfg.model.teacher, cfg.model.tokenizer)}") from None
            raise _eval_only_teacher(e, cfg, parts) from None


def _load_teacher_model(
    cfg: Config, parts: MethodParts, ranks: Ranks, data: PreparedData, device
) -> nn.Module | None:
    """The teacher model when :func:`~ekd.train.prepare.loads_teacher_model` (whole on every rank, or on rank 0 only when it will
    be sharded: the others get their shards from it)."""
    if not loads_teacher_model(cfg):
        return None
    try:
        return load_for_rank(cfg, "teacher", ranks, lambda empty: load_teacher(cfg, data, device, empty))
    except EkdError as e:
        raise _eval_only_teacher(e, cfg, parts) from None


def _eval_only_teacher(e: EkdError, cfg: Config, parts: MethodParts) -> EkdError:
    """``e`` about the teacher, with how to run without it when it is loaded only for the evaluation's KL."""
    if parts.needs_teacher or cfg.method.sample_fraction < 1.0:
        return e
    return type(e)(
        f"{e} (method={cfg.method.preset} trains without a teacher; it is loaded only to report KL at "
        "evaluation: set eval.teacher=false or teacher.source=none to skip it)"
    )


def _stop_non_finite(
    step: int,
    run_dir: Path,
    what: str = "loss",
    teacher_dtype: torch.dtype | None = None,
    blamed: bool = False,
) -> None:
    """Stop the run on a non-finite loss or gradient norm at ``step`` (0-based).

    ``teacher_dtype``: the dtype of the online teacher the loss reads (None: no teacher model enters the loss —
    a CE-only run, or a cache); at step 0 no update has been made, so the student is said to start non-finite,
    not to have diverged; ``blamed``: the teacher's own statistics or hidden states are not finite
    (:class:`ekd.train.step.MicroBatchResult`), so the line names it alone (try-out 112, F4: it led with the
    student's divergence either way, and advised float32 to a float32 teacher and to runs without one).

    Raises:
        NonFiniteLossError: always; one line with the likely cause, what to check, and what is kept.
    """
    try:
        ckpt = latest_verified_checkpoint(run_dir)
    except CheckpointError:
        ckpt = None
    kept = (
        f"its last good checkpoint {ckpt} is kept (--resume continues it only with the run's own settings, "
        "this train.lr included)"
        if ckpt
        else "no checkpoint was written yet"
    )
    # try-out 75, F2: 'lower train.lr' beside the kept checkpoint read as 'resume it'
    anew = (
        "start the run anew with a lower train.lr: --overwrite in place of any --resume, or another run.name"
    )
    check = "check its weights" + (
        f"; {teacher_dtype_advice(teacher_dtype)}" if teacher_dtype is not None else ""
    )
    if blamed:
        cause = (
            f"the teacher's outputs are not finite (NaN or +inf) at a position of this step's batch ({check})"
        )
    elif step == 0:
        # no update has been made: nothing diverged (try-out 116, F2: 'lower train.lr' could not help)
        # (a teacher whose own statistics or hidden states were not finite is named alone, above: what is left is
        # its head's logits; try-out 117, F6)
        runs_in = f": {teacher_dtype_advice(teacher_dtype)}" if teacher_dtype is not None else ""
        also = f", or the teacher's head logits (NaN or +inf{runs_in})" if teacher_dtype is not None else ""
        cause = (
            f"the student's outputs are not finite before any update: check its weights (model.student){also}"
        )
    elif teacher_dtype is not None:
        cause = (
            f"the student diverged ({anew}), or the teacher's outputs are not finite (NaN or +inf: {check})"
        )
    else:
        cause = f"the student diverged ({anew})"
    raise NonFiniteLossError(f"non-finite {what} at step {step + 1}: {cause}; {kept}")
