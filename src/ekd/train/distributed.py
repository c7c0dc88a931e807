"""Data parallelism under ``torchrun``: one process group, rank-sliced batches, torch's DDP or FSDP2.

    torchrun --nproc_per_node=2 -m ekd distill CONFIG train.micro_batch_size=4 [train.parallel=fsdp]

Every loss term is already divided by its *global* token count (all micro-batches, all ranks; see
``ekd.losses.reduce``), so the right gradient is the plain **sum** of the ranks' gradients. The student (and
any extra trained module) is wrapped in ``DistributedDataParallel`` (``train.parallel=ddp``): gradients are
all-reduced in buckets while backward runs, only on the last micro-batch of a step (``no_sync`` before), with
a communication hook that sums instead of DDP's average. A run on W ranks with micro-batch b equals one rank
with micro-batch W·b (tested with 2 gloo processes). ``train.parallel=fsdp`` shards the same modules with
FSDP2 instead (``ekd.train.fsdp``). The teacher is replicated or sharded (``teacher.placement``),
inference-only (no optimizer state), or absent with a cache.
"""

from __future__ import annotations

import gc
import hashlib
import logging
import math
import os
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext, suppress
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from ekd.log_level import said_by_rank0
from ekd.signals import Terminated, already_stopping

HOST_WAIT = timedelta(hours=4)
"""Timeout of the waits on one rank's host-side work (rank 0 tokenizing, saving, running lm-eval tasks;
local rank 0 downloading): they go through a gloo group, not NCCL, whose watchdog would kill the run."""

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class Ranks:
    """This process's place in the job: global ``rank`` of ``world_size``, ``local_rank`` on its node."""

    rank: int
    world_size: int
    device: torch.device
    local_rank: int = 0
    host: object | None = None  # gloo group with HOST_WAIT for waits on host-side work (None: default)

    @property
    def is_main(self) -> bool:
        """Global rank 0: owns the run directory, logs and checkpoints (on any node)."""
        return self.rank == 0

    @property
    def is_node_main(self) -> bool:
        """Local rank 0: downloads from the hub into this node's cache."""
        return self.local_rank == 0

    def barrier(self) -> None:
        """Wait for every rank, on the host group: a rank may wait here for minutes while another works."""
        if self.world_size > 1:
            dist.barrier(group=self.host)


@contextmanager
def distributed(device: torch.device, agree: dict[str, Any] | None = None) -> Iterator[Ranks]:
    """Join the ``torchrun`` process group (WORLD_SIZE/RANK in the environment): gloo on CPU, NCCL on GPU.

    The GPU is chosen by LOCAL_RANK (the rank on this node), everything else by the global rank; a second
    gloo group with a long timeout (``HOST_WAIT``) carries the waits on host-side work (``Ranks.barrier``).
    ``agree``: the settings every rank must have been given alike
    (:func:`ekd.train.same_settings.rank_settings`), checked first (a ConfigError on every rank, said by rank 0).
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield Ranks(0, 1, device)
        return
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    started = not dist.is_initialized()
    if started:
        start_process_group("nccl" if device.type == "cuda" else "gloo")
    ranks = None
    try:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        host = dist.new_group(backend="gloo", timeout=HOST_WAIT)
        ranks = Ranks(dist.get_rank(), dist.get_world_size(), device, local_rank, host)
        del host
        # the job's lines once (a rank's own facts, EVERY_RANK, by each); rank 0's heartbeat in the job's store
        with said_by_rank0(ranks.rank), _rank0_heartbeat(ranks.rank):
            if agree is not None:
                from ekd.train.same_settings import check_same_settings

                check_same_settings(ranks.world_size, agree, ranks.host)
            yield ranks
    except BaseException as e:
        already_stopping()  # torchrun's SIGTERM, sent once a rank has ended, must not cut the teardown
        if ranks is not None and ranks.rank == 0:
            _store_set(RANK0_SAYS_KEY, "1")  # it ends saying why (its line, or a traceback)
        if isinstance(e, KeyboardInterrupt):
            _tell_interrupted(e)  # before the groups end: a rank that sees this one go can tell why
        if lost_peer(e) and (interrupt := _peer_interrupt()) is not None:
            interrupt.continue_hint = getattr(e, "continue_hint", None)  # type: ignore[attr-defined]
            _leave(started, ranks, e)
            raise interrupt from e
        stopped_from_outside = lost_peer(e) or isinstance(e, Terminated)
        if ranks is not None and ranks.rank != 0 and stopped_from_outside:
            rank0 = _rank0_state()
            if rank0 == RANK0_KILLED:  # ended without a word (kill -9, the OOM killer): said, with its hint
                e.said_for_rank0 = ranks.rank  # type: ignore[attr-defined]
                e.continue_hint = _store_get(CONTINUE_HINT_KEY)  # type: ignore[attr-defined]
            elif rank0 == RANK0_NODE_GONE and ranks.is_node_main:  # its node's store with it: once a node
                e.said_for_rank0 = ranks.rank  # type: ignore[attr-defined]
                e.rank0_node_gone = True  # type: ignore[attr-defined]
            elif rank0 == RANK0_ALIVE and isinstance(e, Terminated) and ranks.is_node_main:
                e.stopped_here = ranks.rank  # type: ignore[attr-defined]  # this node's torchrun stopped it
        _leave(started, ranks, e)
        raise
    _leave(started, ranks)


def rank0_ending(ranks: Ranks) -> None:
    """Rank 0: mark in the job's store that it is ending and says why, at the start of its unwinding — before a
    rollback that may take seconds while its heartbeat goes on (review 156, R10: a rank stopped with the whole job
    read the beat as rank 0 still running). Elsewhere nothing."""
    if ranks.is_main and ranks.world_size > 1:
        _store_set(RANK0_SAYS_KEY, "1")


RANK0_BEAT_KEY = "ekd/rank0-beat"  # in the job's store: rank 0 counts its seconds alive
RANK0_BEAT_S = 1.0


@contextmanager
def _rank0_heartbeat(rank: int) -> Iterator[None]:
    """On rank 0 of a job, a daemon thread adding 1 to :data:`RANK0_BEAT_KEY` in the job's store every
    :data:`RANK0_BEAT_S`: a rank stopped from outside tells a rank 0 alive (another node's torchrun stopped this
    one) from one killed without a word (try-out 151, F6: SIGTERM to node 1 said rank 0 had been OOM-killed, while
    it trained on for 12 s). Elsewhere nothing."""
    import threading

    if rank != 0 or not dist.is_initialized():
        yield
        return
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(RANK0_BEAT_S):
            try:
                dist.distributed_c10d._get_default_store().add(RANK0_BEAT_KEY, 1)
            except Exception:  # noqa: BLE001 — the store has gone (the job is ending): no more beats
                return

    thread = threading.Thread(target=beat, name="ekd-rank0-beat", daemon=True)
    thread.start()
    try:
        yield
    except BaseException:
        _store_set(
            RANK0_SAYS_KEY, "1"
        )  # ending: marked before the beat stops (every command; review 156, R10)
        raise
    finally:
        stop.set()
        thread.join(timeout=RANK0_BEAT_S * 2)


RANK0_SAYS_KEY = "ekd/rank0-says"  # in the job's store: rank 0 is ending, and says why
# the ranks that would speak for a silent rank 0 count themselves here: the first does
SAYS_FOR_RANK0_KEY = "ekd/says-for-rank0"
CONTINUE_HINT_KEY = "ekd/continue-hint"  # rank 0's "; how to go on" (:func:`publish_continue_hint`)
RANK0_WAIT = timedelta(seconds=10)
"""How long a rank that lost its peer (or got torchrun's SIGTERM) waits for rank 0 to say it is ending before it
speaks for rank 0: rank 0 alive ends within ~0.1 s of torchrun noticing a rank gone (its monitor interval) plus
its current op; torchrun kills the ranks 30 s after its SIGTERM."""


def publish_continue_hint(hint: Callable[[], str]) -> None:
    """Rank 0: record in the job's store how to go on if the job stops now (``hint()``: "; checkpoint step-… is
    kept: …"), for the rank that speaks for a rank 0 killed without a word (try-out 69, F2: a ``kill -9`` of rank 0
    left only torchrun's summary). Best effort; nothing (``hint`` not called) in one process."""
    if dist.is_available() and dist.is_initialized():
        _store_set(CONTINUE_HINT_KEY, hint())


RANK0_KILLED = (
    "killed"  # rank 0 neither said it was ending nor beat: this rank speaks for it (the first to claim)
)
RANK0_NODE_GONE = "node gone"  # the job's store on rank 0's node no longer answers
RANK0_ALIVE = "alive"  # rank 0 still beats: this rank was stopped from outside, rank 0 was not


def _rank0_state() -> str | None:
    """What a rank (not 0), ending on a lost peer or torchrun's SIGTERM, finds of rank 0 within
    :data:`RANK0_WAIT`: :data:`RANK0_ALIVE` (its heartbeat goes on), :data:`RANK0_KILLED` (it did not mark the
    store that it is ending, nor beat: killed, its process had no chance to say anything — and this is the first
    rank to claim the word), :data:`RANK0_NODE_GONE` (the store, kept by the torchrun of rank 0's node, no longer
    answers: that node's job ended — try-out 151, F5: node 1 printed only c10d's C++ frames), or None (rank 0
    said it is ending; another rank speaks for it; no store)."""
    try:
        store = dist.distributed_c10d._get_default_store()
    except Exception:  # noqa: BLE001 — no store (the groups are gone): rank 0's word or none
        return None
    try:  # polled: a timed-out store.wait() prints c10d's own warning lines
        beat = store.add(RANK0_BEAT_KEY, 0)
        deadline = time.monotonic() + RANK0_WAIT.total_seconds()
        while not store.check([RANK0_SAYS_KEY]):
            if store.add(RANK0_BEAT_KEY, 0) != beat:
                return RANK0_ALIVE
            if time.monotonic() > deadline:
                return RANK0_KILLED if store.add(SAYS_FOR_RANK0_KEY, 1) == 1 else None
            time.sleep(0.1)
        return None
    except Exception:  # noqa: BLE001 — the store does not answer: rank 0's node (its torchrun) has gone
        return RANK0_NODE_GONE


def _store_set(key: str, value: str) -> None:
    with suppress(Exception):  # best effort: no store, or it has gone with the job
        dist.distributed_c10d._get_default_store().set(key, value)


def _store_get(key: str) -> str | None:
    try:
        store = dist.distributed_c10d._get_default_store()
        return store.get(key).decode() if store.check([key]) else None
    except Exception:  # noqa: BLE001 — best effort
        return None


INTERRUPTED_KEY = "ekd/interrupted"  # in the job's store: the signal a rank of it was stopped by


def _tell_interrupted(e: KeyboardInterrupt) -> None:
    """Record in the job's store that this rank was interrupted (Ctrl-C or SIGTERM), best effort (no store: the
    peers say 'another rank ended')."""
    _store_set(INTERRUPTED_KEY, "SIGTERM" if isinstance(e, Terminated) else "SIGINT")


def _peer_interrupt() -> KeyboardInterrupt | None:
    """The interrupt another rank of the job recorded (:func:`_tell_interrupted`), as this rank's own — so that a
    rank whose collective lost that peer before its own SIGINT arrived says 'interrupted' (try-out 50, F2: rank 0
    said 'another rank ended first ... its error is above' after Ctrl-C, 2 times in 9) — else None."""
    said = _store_get(INTERRUPTED_KEY)  # None without a store to ask: the lost peer is said as such
    if said is None:
        return None
    return Terminated() if said == "SIGTERM" else KeyboardInterrupt()


LOST_PEER = ("Connection closed by peer", "Connection reset by peer")
"""What gloo's RuntimeError says when the rank at the other end of a collective has gone (pair.cc)."""


def lost_peer(e: BaseException) -> bool:
    """Whether ``e`` is a collective failing because another rank of the job has gone (it ended on its own
    error, or was killed): torch's ``DistBackendError``, or gloo's RuntimeError "Connection closed by peer" /
    "Connection reset by peer" (raised as is, or inside DDP's "Got the following error when running the
    callback"). Only under torchrun (WORLD_SIZE > 1, read from the environment: the groups may have ended by
    now); any other RuntimeError is not one, and keeps its traceback.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or not isinstance(e, RuntimeError):
        return False
    return isinstance(e, dist.DistBackendError) or any(s in str(e) for s in LOST_PEER)


def _leave(started: bool, ranks: Ranks | None, error: BaseException | None = None) -> None:
    """The end of :func:`distributed`: every group ends if this process started them (else only its host
    group); ``ranks.host`` is dropped (no reference to a group outlives its end)."""
    host = None
    if ranks is not None:
        host, ranks.host = ranks.host, None
    if started:
        del host
        end_process_groups(error)
    elif host is not None:
        dist.destroy_process_group(host)


def start_process_group(backend: str, **kwargs: Any) -> None:
    """``dist.init_process_group(backend, **kwargs)`` for a process that ends its groups with
    :func:`end_process_groups`. ``torch.distributed.nn.functional`` is imported first: its functions take
    ``group=group.WORLD`` as a default argument, evaluated on import, so imported later (DDP's constructor
    does) it would hold the default group for the life of the process."""
    import torch.distributed.nn.functional  # noqa: F401

    dist.init_process_group(backend, **kwargs)


def in_process_group(work: Callable[..., T], *args: Any) -> T:
    """``work(*args)`` in the process group this process started (:func:`start_process_group`), then the
    end of every group, after an error too (:func:`end_process_groups`): the workers of the tests and
    benchmarks. ``work`` is a function of its own, so its locals are gone when the groups end."""
    try:
        out = work(*args)
    except BaseException as e:
        end_process_groups(e)
        raise
    end_process_groups()
    return out


def end_process_groups(error: BaseException | None = None) -> None:
    """``dist.destroy_process_group()`` whose groups really end here, their threads joined while the
    interpreter is alive: the teardown of every process that started a process group (:func:`distributed`,
    :func:`in_process_group`). ``error``: the exception the work failed with, if any.

    A group's backend (gloo's worker threads, NCCL's communicators) goes with the last reference to it, and
    ``destroy_process_group`` drops only torch's registry. Other holders: DTensor's sharding caches keep
    every ``DeviceMesh`` an FSDP2 module used, and a mesh its groups, for the life of the process; DDP and
    FSDP wrappers hold theirs in reference cycles through their hooks; after an error, the frames of its
    traceback hold the work's locals (and ``torch.distributed.nn.functional``, imported after the start,
    holds the default group: :func:`start_process_group`). A gloo group still alive at interpreter exit
    keeps its worker threads; one that frees the tensors of a finished collective then waits for the GIL,
    which finalization refuses by ending the thread inside a C++ destructor: SIGABRT, "terminate called
    without an active exception" (the 2-rank FSDP2 test, about 1 run in 10). So the error's finished frames
    are cleared (its message and lines stay), the caches emptied and the cycles collected first; callers
    run their work in a function that has returned by then. The errors it was raised from (``__cause__``,
    ``__context__``) are cleared too: an interrupt that a library turned into its own error is re-raised from it
    (:func:`ekd.signals.interrupt_behind`).
    """
    seen: set[int] = set()
    # the error and its chain (an interrupt raised from it)
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        traceback.clear_frames(error.__traceback__)
        error = error.__cause__ or error.__context__
    _clear_mesh_caches()
    gc.collect()
    dist.destroy_process_group()


# DTensor's process-wide caches of sharding decisions, whose keys and values hold device meshes (private torch
# names, torch 2.13): (module, attribute path) of an lru_cache (``cache_clear``) or a dict (``clear``)
_PROPAGATOR = "DTensor._op_dispatcher.sharding_propagator"
_MESH_CACHES = (
    # a cache per thread: FSDP2 runs in the main thread, where the teardown runs
    ("torch.distributed.tensor._api", f"{_PROPAGATOR}.propagate_op_sharding"),
    ("torch.distributed.tensor._api", f"{_PROPAGATOR}._propagate_tensor_meta_cached"),
    ("torch.distributed.tensor._redistribute", "_gen_transform_infos"),
    ("torch.distributed.tensor._redistribute", "_planner_cache"),
    ("torch.distributed.tensor._collective_utils", "MeshTopoInfo.build_from_mesh"),
)


def _clear_mesh_caches() -> None:
    """Empty :data:`_MESH_CACHES` (and DTensor's C++ fast-path cache) of the modules this process loaded; a
    name absent from another torch is skipped, and the 2-process tests check that the groups still end
    (``tests/dist_runs.py``, ``assert_groups_ended``)."""
    if "torch.distributed.tensor._api" not in sys.modules:  # no DTensor in this process
        return
    for module, path in _MESH_CACHES:
        cache = sys.modules.get(module)
        for name in path.split("."):
            cache = getattr(cache, name, None)
        clear = getattr(cache, "cache_clear", None) or getattr(cache, "clear", None)
        if clear is not None:
            clear()
    getattr(torch._C, "_clear_DTensor_sharding_propagator_cache", lambda: None)()


def rank_slice(batch, ranks: Ranks):
    """This rank's rows of a global batch of ``world_size · b`` rows. (W·b, T) → (b, T)."""
    if ranks.world_size == 1:
        return batch
    b = batch.input_ids.shape[0] // ranks.world_size
    sl = slice(ranks.rank * b, (ranks.rank + 1) * b)
    return batch.rows(sl)


class TrainedModules(nn.Module):
    """The student and the extra trained modules (EGAD's feature projection) as one module for DDP or FSDP2.

    Its ``forward`` runs a closure — one micro-batch's loss — so every use of a trained parameter (the body,
    the chunked head outside the body, the projection) happens inside the engine's forward. The loss gets
    ``0·Σp`` over ``root_params`` (:func:`outside_layers`: embeddings, final norm, head, extras), the
    parameters a micro-batch may leave unused on one rank (no KD or CE row for the head, no hard token for the
    projection): every parameter then has a gradient on every rank, as both engines need — DDP without
    ``find_unused_parameters`` (an extra traversal of the autograd graph every micro-batch, and torch's
    warning when nothing is unused), FSDP2 because it reduce-scatters a group only as a whole. Adding 0 changes
    no value.
    """

    root_params: tuple[str, ...] = ()

    def __init__(self, student: nn.Module, extras: dict[str, nn.Module]):
        super().__init__()
        self.student = student
        self.extras = nn.ModuleDict(extras)

    def forward(self, run: Callable[[], Any]) -> Any:
        out = run()
        if self.root_params and torch.is_grad_enabled() and torch.is_tensor(out) and out.requires_grad:
            params = {id(p): p for p in map(self.get_parameter, self.root_params) if p.requires_grad}
            out = out + sum(p.sum() for p in params.values()) * 0.0
        return out


def layer_prefixes(root: nn.Module, layers) -> tuple[str, ...]:
    """The names of ``layers`` (modules under ``root``) with a trailing dot: prefixes of their parameters."""
    names = {id(m): n for n, m in root.named_modules()}
    return tuple(names[id(layer)] + "." for layer in layers)


def outside_layers(root: TrainedModules) -> tuple[str, ...]:
    """Parameter names of ``root`` outside the student's decoder layers (every name of a tied parameter);
    all of them for a student without a list of decoder layers."""
    from ekd.errors import ModelError
    from ekd.models.layers import decoder_layers

    try:
        prefixes = layer_prefixes(root, decoder_layers(root.student))
    except ModelError:
        prefixes = ()
    names = (n for n, _ in root.named_parameters(remove_duplicate=False))
    return tuple(n for n in names if not (prefixes and n.startswith(prefixes)))


EXPERT_COUNTS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
"""Config keys that count a mixture-of-experts model's experts (Qwen-MoE/OLMoE, Mixtral, DeepSeek, DBRX)."""


def routes_tokens(student: nn.Module) -> bool:
    """A mixture-of-experts student: a micro-batch may route no token to an expert, leaving parameters inside
    a decoder layer without gradient (not covered by :attr:`TrainedModules.root_params`). Told by an expert
    count in its config, its language model's (a composite model) or its ``ffn_config`` (DBRX), or by a module
    whose class names experts (``…SparseMoeBlock``, ``…Experts``, ``…MoE``): a family whose config spells the
    count otherwise was trained without ``find_unused_parameters`` (review 126, S1: DBRX)."""
    import re

    from ekd.models.text_config import text_config

    config = getattr(student, "config", None)
    text = text_config(config)
    configs = [config, text, getattr(text, "ffn_config", None)]
    if any(
        isinstance(getattr(c, k, None), int) and getattr(c, k) > 1 for c in configs for k in EXPERT_COUNTS
    ):
        return True
    # a class named for experts: ...SparseMoeBlock, ...MoE, ...Experts (not "moe" inside another word)
    return any(
        re.search(r"(Moe|MoE|Experts)(Block|Layer|Module)?$", type(m).__name__) for m in student.modules()
    )


def _sum_hook(state, bucket):  # no annotations: DDP checks them as objects, and this file's are strings
    """All-reduce a ``dist.GradBucket`` as a **sum** (DDP's default divides by W; our terms are already
    global) → ``Future[Tensor]``."""
    work = dist.all_reduce(bucket.buffer(), async_op=True)
    return work.get_future().then(lambda fut: fut.value()[0])


def data_parallel(
    student: nn.Module, extras: dict[str, nn.Module], ranks: Ranks, cfg=None
) -> nn.Module | None:
    """``DistributedDataParallel`` over the trained modules, or their FSDP2 root with
    ``cfg.train.parallel=fsdp`` (:func:`ekd.train.fsdp.shard_student`); None in a single process (a warning
    says that ``train.cpu_offload`` does nothing there).

    Buffers are synced once, when DDP starts, not before every forward (``forward_sync_buffers=False``: every
    rank builds them alike). No ``find_unused_parameters``: the parameters a micro-batch may leave unused get
    ``0·Σp`` (:class:`TrainedModules`) — except for a mixture-of-experts student (:func:`routes_tokens`), whose
    experts DDP finds unused by itself.
    """
    if ranks.world_size == 1:
        if cfg is not None and cfg.train.cpu_offload:
            log.warning(  # a setting that saves no memory here: said louder than the fsdp no-op below
                "train.cpu_offload: one process, nothing is sharded or offloaded — the student, its gradients and "
                "AdamW state stay whole on %s (ekd offloads FSDP2 shards, under torchrun with 2 or more GPU ranks)",
                ranks.device,
            )
        elif cfg is not None and cfg.train.parallel == "fsdp":  # try-out 23: said for placement=shard only
            log.info("train.parallel=fsdp: one process, the student stays whole")
        return None
    if cfg is not None and cfg.train.parallel == "fsdp":
        from ekd.train.fsdp import shard_student
        from ekd.train.rank0_load import loads_on_rank0

        t = cfg.train
        from_rank0 = loads_on_rank0(cfg, "student", ranks.world_size)
        return shard_student(student, extras, ranks.device, t.precision, t.cpu_offload, from_rank0)
    device_ids = [ranks.device.index] if ranks.device.type == "cuda" else None
    root = TrainedModules(student, extras)
    root.root_params = outside_layers(root)
    engine = DistributedDataParallel(
        root,
        device_ids=device_ids,
        forward_sync_buffers=False,
        find_unused_parameters=routes_tokens(student),
    )
    engine.register_comm_hook(None, _sum_hook)
    return engine


def check_cpu_offload(cfg, ranks: Ranks) -> None:
    """``train.cpu_offload`` under torchrun needs an accelerator (in one process it does nothing).

    Raises:
        ConfigError: ``train.cpu_offload=true`` on W > 1 CPU ranks (one line).
    """
    if cfg.train.cpu_offload and ranks.world_size > 1 and ranks.device.type == "cpu":
        from ekd.config import ConfigError

        raise ConfigError(
            "train.cpu_offload needs a GPU (FSDP2's CPUOffloadPolicy moves the shards to the accelerator for "
            "compute); drop train.cpu_offload on CPU ranks"
        )


def micro_batch_sync(engine: nn.Module | None, last: bool) -> AbstractContextManager:
    """No gradient communication on every micro-batch of a step but the last (gradients accumulate
    locally): DDP's ``no_sync``, FSDP2's ``set_requires_gradient_sync(False)``."""
    if is_sharded(engine):
        engine.set_requires_gradient_sync(last)
        return nullcontext()
    return engine.no_sync() if engine is not None and not last else nullcontext()


def is_sharded(engine: nn.Module | None) -> bool:
    """Whether ``engine`` is an FSDP2 root (``train.parallel=fsdp``)."""
    from torch.distributed.fsdp import FSDPModule

    return isinstance(engine, FSDPModule)


def place_teacher(teacher: nn.Module | None, cfg, ranks: Ranks) -> nn.Module | None:
    """``teacher.placement=shard`` under torchrun: the teacher under FSDP2 (its root, see
    :func:`ekd.train.fsdp.shard_frozen`); None when replicated, absent, or in one process (nothing to shard
    over: a log line says so)."""
    if teacher is None or cfg.teacher.placement != "shard":
        return None
    if ranks.world_size == 1:
        log.info("teacher.placement=shard: one process, the teacher stays whole")
        return None
    from ekd.train.fsdp import shard_frozen
    from ekd.train.rank0_load import loads_on_rank0

    return shard_frozen(teacher, ranks.device, loads_on_rank0(cfg, "teacher", ranks.world_size))


def global_sum(value: float, ranks: Ranks) -> float:
    """Σ of a Python float over ranks."""
    if ranks.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=ranks.device)
    dist.all_reduce(t)
    return float(t.item())


def global_sums(sums: dict[str, float], ranks: Ranks) -> dict[str, float]:
    """The step's diagnostics over all ranks: Σ of every sum, min/max of keys ending ``_min``/``_max``.

    Every rank must pass the same keys (they follow from the config). NaN extremes (no selected token) are
    ignored; a key that is NaN on every rank stays NaN.
    """
    if ranks.world_size == 1:
        return sums
    keys = sorted(sums)
    extreme = [k for k in keys if k.endswith(("_min", "_max"))]
    plain = [k for k in keys if k not in extreme]
    total = torch.tensor([sums[k] for k in plain], dtype=torch.float64, device=ranks.device)
    dist.all_reduce(total)
    # max of (x for _max keys, −x for _min keys); NaN → −inf so it never wins
    signed = [(-1.0 if k.endswith("_min") else 1.0) * sums[k] for k in extreme]
    peak = torch.tensor(
        [-math.inf if math.isnan(v) else v for v in signed], dtype=torch.float64, device=ranks.device
    )
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    out = dict(zip(plain, total.tolist()))
    for k, v in zip(extreme, peak.tolist()):
        out[k] = math.nan if math.isinf(v) and v < 0 else (-v if k.endswith("_min") else v)
    return out


def rank_seed(seed: int, step: int, rank: int) -> int:
    """Seed of rank ``rank``'s global torch RNG (dropout) at ``step``: ranks draw independently, and the
    draws of a step depend only on (seed, step, rank), so resume needs no saved RNG state."""
    digest = hashlib.sha256(f"ekd-global-rng:{seed}:{step}:{rank}".encode()).digest()
    return int.from_bytes(digest[:8], "big") & (2**63 - 1)
