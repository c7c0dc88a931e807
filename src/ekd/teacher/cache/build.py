"""Build an offline teacher cache: sparse targets + per-token teacher statistics for the training blocks.

    ekd cache configs/cache-demo.yaml [key=value ...] [--overwrite]
    torchrun --nproc_per_node=N -m ekd cache configs/cache-demo.yaml      # samples sharded across ranks

Per batch of blocks: the teacher body once, then the teacher statistics and sparse targets of
:mod:`ekd.teacher.cache.entries`; the signature comes from :mod:`ekd.teacher.cache.signature`.

The cache is written by :class:`~ekd.teacher.cache.writer.CacheWriter` into ``teacher.cache_dir``: atomic
shards, resumable after a crash (a rerun computes only the unfinished shards), one shard set per rank and
one assembled manifest under ``torchrun`` (gloo on CPU, NCCL on GPU). A byte-level BPE trained for preset
models (``model.tokenizer=train_bpe``) is saved in ``<cache_dir>/tokenizer``.
"""

from __future__ import annotations

import json
import logging
import os
import queue
import shutil
import threading
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from ekd.config import Config
from ekd.config.inert import refuse_inert_keys
from ekd.data.collate import model_inputs
from ekd.eval.eval_json import precision_name
from ekd.io import DiskError, make_dirs, removed_if_left_empty
from ekd.locks import lock_directory, make_readers_lock
from ekd.log_level import EVERY_RANK
from ekd.losses.targets import Head
from ekd.models.load import dtype_name, output_head
from ekd.signals import raise_swallowed_interrupt
from ekd.teacher.cache.entries import EntryOptions, teacher_entries
from ekd.teacher.cache.format import CacheError
from ekd.teacher.cache.kept_teacher import copy_state, keep_teacher_files, teacher_files_record
from ekd.teacher.cache.manifest import (
    BUILT_WITH,
    DATA_SETTINGS,
    KEPT_FILES,
    MANIFEST,
    TEACHER_FILES,
    assemble_manifest,
    check_cache_directory,
    check_cache_kind,
    compare_signatures,
    read_manifest,
)
from ekd.teacher.cache.reader import CacheReader
from ekd.teacher.cache.readers import no_readers
from ekd.teacher.cache.signature import cache_signature, check_cacheable, teacher_files, teacher_revision
from ekd.teacher.cache.source import check_trains_from_cache
from ekd.teacher.cache.writer import CacheWriter, log_resuming
from ekd.train.distributed import Ranks, distributed
from ekd.train.same_settings import rank_settings
from ekd.words import counted

log = logging.getLogger(__name__)

FORWARD_PROBE_BATCHES = 16  # batches timed for the forward-only reference throughput


@dataclass
class BuildResult:
    """What a build did, all ranks together: under ``torchrun`` every rank returns the same figures, those of
    the whole job (:func:`job_figures`), never its own share. Throughputs are samples per second.

    ``samples_built`` and ``positions_built`` are summed over ranks (what this run computed: 0 for a finished
    cache, the unfinished shards' samples for a resumed build); ``build_seconds`` is the build loop's wall time
    (the slowest rank's: the ranks run side by side). ``build_throughput`` = samples_built / build_seconds;
    ``forward_throughput``: the same samples, split across the ranks alike, through the teacher's plain forward
    pass (full logits, each rank timed on its first built batches); ``throughput_ratio`` = build / forward-only
    throughput. None when nothing was left to build. The two are timed one after the other, so other work on
    the machine skews the ratio: ``load_at_start`` is the 1-minute load average before the build began (None
    where the platform has none) and ``cores`` the CPUs it may use, of the rank whose machine was the busiest
    (highest load per core).
    """

    directory: Path
    rank: int
    world_size: int
    samples_total: int
    samples_built: int
    positions_built: int
    build_seconds: float
    build_throughput: float | None
    forward_throughput: float | None
    throughput_ratio: float | None
    load_at_start: float | None = None
    cores: int = 1


class _BackgroundWriter:
    """``CacheWriter.add`` on a worker thread, at most ``depth`` batches behind the teacher.

    Encoding (numpy) overlaps the teacher's next batch (torch releases the GIL); the writer sees the
    samples in the same order, so the shards are the same bytes. A worker error is raised by ``put``/``close``.
    """

    def __init__(self, writer: CacheWriter, depth: int = 2) -> None:
        self.writer = writer
        self.queue: queue.Queue = queue.Queue(maxsize=depth)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, name="ekd-cache-writer", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (entries := self.queue.get()) is not None:
            if self.error is None:  # after an error keep draining so that put() never blocks
                try:
                    self.writer.add_batch(entries)  # one vectorized encode per teacher batch
                except BaseException as e:  # noqa: BLE001 — re-raised in the main thread
                    self.error = e

    def _raise(self) -> None:
        if self.error is not None:
            raise self.error

    def put(self, entries: list[dict]) -> None:
        self._raise()
        self.queue.put(entries)

    def close(self) -> None:
        self.stop()
        self._raise()

    def stop(self) -> None:
        """Write what is queued, end the thread (no error raised)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()


def write_batches(
    writer: CacheWriter, teacher: nn.Module, head: Head, batches: Iterable, options: EntryOptions, amp=None
) -> int:
    """The build loop: each batch's entries (:func:`~ekd.teacher.cache.entries.teacher_entries`) are encoded
    and written on a background thread while the teacher runs the next batch; the writer is closed at the
    end. Returns the number of positions written. On an error the queued entries are still written
    (finished shards stay valid) before it is raised."""
    background = _BackgroundWriter(writer)
    positions = 0
    try:
        for entries in teacher_entries(teacher, head, batches, options, amp):
            raise_swallowed_interrupt()  # a SIGTERM a library swallowed still stops the build
            background.put(entries)
            positions += sum(len(e["positions"]) for e in entries)
    except BaseException:
        background.stop()
        raise
    background.close()
    writer.close()
    return positions


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def forward_throughput(
    teacher: nn.Module, batches: list, amp: torch.dtype | None, device: torch.device
) -> float:
    """Samples/s of the teacher's plain forward pass (body + head at every position) on ``batches``."""
    samples = sum(len(b) for b in batches)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        teacher(**model_inputs(batches[0]))  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            teacher(**model_inputs(b)).logits.sum().item()
        _sync(device)
    return samples / max(time.perf_counter() - t0, 1e-9)


def job_figures(per_rank: list[dict]) -> dict:
    """The whole job's build figures from every rank's own, in rank order.

    Args:
        per_rank: one dict per rank: ``built`` samples and ``positions`` it computed, the ``seconds`` of its
            build loop, its ``forward`` throughput (samples/s of its teacher's plain forward pass; None if not
            measured), the ``load`` average before the build (None where unknown) and its ``cores``.

    Returns:
        The :class:`BuildResult` fields ``samples_built``, ``positions_built``, ``build_seconds``,
        ``build_throughput``, ``forward_throughput``, ``throughput_ratio``, ``load_at_start`` and ``cores``.
        Both throughputs are wall-clock ones over the same samples split alike: Σ built / the slowest rank's
        time, the forward-only time of a rank being its built samples / its forward throughput. One rank: its
        own figures.
    """
    built = sum(r["built"] for r in per_rank)
    seconds = max(r["seconds"] for r in per_rank)
    build_tp = built / max(seconds, 1e-9) if built else None
    working = [r for r in per_rank if r["built"]]  # ranks with nothing left to build have no forward timing
    forward_tp = None
    if working and all(r["forward"] for r in working):
        forward_seconds = max(r["built"] / r["forward"] for r in working)  # the slowest rank, forward-only
        forward_tp = built / max(forward_seconds, 1e-9)
    busiest = max(per_rank, key=lambda r: -1.0 if r["load"] is None else r["load"] / max(r["cores"], 1))
    return {
        "samples_built": built,
        "positions_built": sum(r["positions"] for r in per_rank),
        "build_seconds": seconds,
        "build_throughput": build_tp,
        "forward_throughput": forward_tp,
        "throughput_ratio": build_tp / forward_tp if build_tp and forward_tp else None,
        "load_at_start": busiest["load"],
        "cores": busiest["cores"],
    }


def _gather(value, ranks: Ranks) -> list:
    """Every rank's ``value`` (plain numbers or a dict of them), in rank order, on every rank (through the
    host group)."""
    if ranks.world_size == 1:
        return [value]
    everyone: list = [None] * ranks.world_size
    dist.all_gather_object(everyone, value, group=ranks.host)
    return everyone


def _branch_pinned_by_name(directory: Path, revision: str, key: str = "model.revision") -> str:
    """``revision`` (set by ``key``) where the cache in ``directory`` pins its teacher by that branch's name, as ekd
    did before it pinned the commit a branch resolves to: a rerun (a resume) of that cache goes on with it, said in a
    warning — whether the branch moved since cannot be told; "" otherwise (no such cache, another pin, a commit
    given)."""
    from ekd.teacher.cache.signature import is_commit

    if not revision or is_commit(revision):
        return ""
    try:
        found = read_manifest(directory / MANIFEST).get("signature", {})
    except (CacheError, OSError):
        return ""
    if found.get("teacher_revision") != revision:
        return ""
    log.warning(
        "the cache at %s pins its teacher by the branch name %s=%s (an older ekd's record): whether the "
        "branch moved since it was built cannot be told; `ekd cache CONFIG --overwrite` rebuilds it pinned to the "
        "commit the branch resolves to",
        directory,
        key,
        revision,
    )
    return revision


def _built_data_settings(directory: Path, signature: dict) -> dict | None:
    """The data settings a cache of ``signature`` in ``directory`` records, when it has a manifest of the same
    signature: a rerun (or resume) whose inert keys differ (``data.max_documents`` above the corpus) builds the
    same blocks, and must not record values the shards were not built with. None otherwise."""
    try:
        found = read_manifest(directory / MANIFEST).get("signature", {})
    except (CacheError, OSError):
        return None
    recorded = found.get(DATA_SETTINGS)
    return recorded if isinstance(recorded, dict) and not compare_signatures(signature, found) else None


def _finished(directory: Path, pending: list[int], signature: dict, ranks: Ranks) -> bool:
    """Whether the cache needs no write: no rank has a sample left to build, and ``manifest.json`` is the
    complete one (not the rank manifests of a torchrun build stopped before their assembly) with this build's
    ``signature`` (a teacher's new file stamps, ``TEACHER_FILES``, are recorded by writing it). Collective."""
    if any(left for left in _gather(len(pending), ranks)):
        return False
    try:
        manifest = read_manifest(directory / MANIFEST)
    except (CacheError, OSError):
        return False
    if not manifest["complete"]:
        return False
    if manifest["signature"] == json.loads(json.dumps(signature)):
        return True
    # only the descriptive records differ (the teacher's new file stamps, its files' record): they are written
    # when the directory can be written, and a read-only cache is finished as it is (try-out 67, F2)
    if compare_signatures(signature, manifest["signature"]) == [] and not os.access(directory, os.W_OK):
        log.info(
            "teacher cache %s: read-only; the teacher's file records in its manifest are left as they are",
            directory,
        )
        return True
    return False


CACHE_IN_USE = "wait for it to end, or choose another teacher.cache_dir"


@contextmanager
def _locked_by_main(directory: Path, ranks: Ranks, overwrite: bool = False) -> Iterator[None]:
    """Hold the cache directory's lock (``ekd.locks``) for the block, taken by global rank 0 for the whole job:
    the ranks of one build share the directory, a second build (another job, or ``ekd cache import``) is refused
    on every rank with one line; with ``overwrite``, also its readers' lock
    (:func:`~ekd.teacher.cache.readers.no_readers`)."""
    from ekd.train.rank_work import run_on_main

    fix = CACHE_IN_USE
    lock = run_on_main(
        ranks, lambda: lock_directory(directory, fix, CacheError), "lock the cache", share=False
    )
    with lock if lock is not None else nullcontext():  # the other ranks hold nothing
        run_on_main(ranks, lambda: make_readers_lock(directory), "make the readers' lock", share=False)
        readers = (
            run_on_main(ranks, lambda: no_readers(directory), "check the cache's readers", share=False)
            if overwrite
            else None
        )
        with readers if readers is not None else nullcontext():
            yield


def _prepare_data(cfg: Config, directory: Path, retrain: bool = False):
    """``prepare_data`` with the cache as run directory; a tokenizer it trains lands there atomically
    (trained in a staging directory, then renamed), so a build killed mid-save never leaves half of one. The
    teacher's own files are read whatever ``teacher.source`` says (the build and the import run with the
    teacher; try-out 65, F6: ``teacher.source=cache`` read the copy of the cache being made)."""
    from dataclasses import replace

    from ekd.train.prepare import prepare_data

    cfg = replace(cfg, teacher=replace(cfg.teacher, source="online"))
    if not retrain and (directory / "tokenizer" / "tokenizer.json").is_file():
        return prepare_data(cfg, directory)
    staging = directory / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    data = prepare_data(cfg, staging)
    if (staging / "tokenizer").is_dir():
        shutil.rmtree(directory / "tokenizer", ignore_errors=True)
        os.replace(staging / "tokenizer", directory / "tokenizer")
    shutil.rmtree(staging, ignore_errors=True)
    return data


def _keep_teacher_files(cfg: Config, directory: Path, finished: bool) -> None:
    """The teacher's config and tokenizer files into the cache (:mod:`~ekd.teacher.cache.kept_teacher`), once
    the writer has accepted this config's signature (the same teacher): a missing, damaged or outdated copy is
    made again, a whole one left as it is; a finished cache on a read-only mount keeps its shards usable, said
    in a line."""
    try:
        names = keep_teacher_files(cfg.model.teacher, cfg.model.teacher_hub_revision, directory)
    except (OSError, DiskError) as e:
        if not finished:
            raise
        kept, problem, _ = copy_state(directory)
        if problem is not None:  # damaged or missing: runs are refused
            log.warning(
                "teacher cache %s: cannot restore its copy of the teacher's config and tokenizer files (%s): runs "
                "from it are refused until it is whole; copy the cache to a writable directory and rerun there",
                directory,
                e,
            )
        elif kept is None:  # no copy (an older cache); a whole one stays usable as it is
            log.info(
                "teacher cache %s: cannot write a copy of the teacher's config and tokenizer files (%s); a run from "
                "it reads model.teacher's, so the teacher's directory must be there (to train without it, copy the "
                "cache to a writable directory and rerun there)",
                directory,
                e,
            )
        return
    if names:
        log.info(
            "teacher cache %s: kept the teacher's files for runs without it (%s)", directory, ", ".join(names)
        )


def build_cache(
    cfg: Config, overwrite: bool = False, *, stat_format: str | None = None, measure_forward: bool = True
) -> Path:
    """Build (or resume building) the teacher cache of ``cfg`` in ``teacher.cache_dir``; returns the directory.

    Args:
        cfg: the config; ``teacher.cache_*``, ``method.target`` and its parameters, ``run.seed``.
        overwrite: replace a cache with another signature (otherwise CacheError) instead of resuming.
        stat_format: 'q8' (2 B/position) or 'fp16' (4 B/position) teacher statistics; default
            ``teacher.cache_stat_format``.
        measure_forward: also time a forward-only pass for the throughput ratio.
    """
    return run_build(cfg, overwrite, stat_format=stat_format, measure_forward=measure_forward).directory


def _warn_idle_ranks(samples: int, shard_samples: int, world_size: int) -> None:
    """One warning when some of ``world_size`` ranks get no shard (a rank builds whole shards of
    ``shard_samples`` samples), naming the ``teacher.cache_shard_samples`` that gives every rank one."""
    shards = -(-samples // shard_samples)
    if shards < world_size and samples < world_size:
        log.warning(  # no shard size helps: a rank builds whole shards of at least one sample
            "teacher cache: %s for %s: only %s can get a shard",
            counted(samples, "sample"),
            counted(world_size, "rank"),
            counted(samples, "rank"),
        )
    elif shards < world_size:
        idle = world_size - shards
        log.warning(
            "teacher cache: %s make %s (teacher.cache_shard_samples=%d) for %s: %s nothing; "
            "teacher.cache_shard_samples=%d gives every rank a shard",
            counted(samples, "sample"),
            counted(shards, "shard"),
            shard_samples,
            counted(world_size, "rank"),
            f"{counted(idle, 'rank')} {'builds' if idle == 1 else 'build'}",
            max(1, samples // world_size),  # ≥ world_size shards (when there are samples enough)
        )


def run_build(
    cfg: Config, overwrite: bool = False, *, stat_format: str | None = None, measure_forward: bool = True
) -> BuildResult:
    """:func:`build_cache` returning the build's figures, all ranks together (built samples, throughput vs
    forward-only): a collective under ``torchrun``."""
    stat_format = stat_format or cfg.teacher.cache_stat_format
    from ekd.data import collate
    from ekd.train.prepare import autocast_dtype, load_teacher, resolve_device
    from ekd.train.rank_work import (
        check_same_weights,
        check_shared_directory,
        check_shared_store,
        fetch_models_once,
        run_on_main,
    )

    if cfg.method.student_data_fraction > 0:  # first: no target setting makes it cacheable (try-out 155, F3)
        check_trains_from_cache(cfg)
    check_cacheable(cfg)
    # the teacher's name and files before the data is read: a typo or a hub download cut short costs seconds
    # (try-out 154, N7: the data was read and packed first); this node's files, so under torchrun a refusal
    # joins the job to end the other nodes too (review 156, R12)
    from ekd.errors import EkdError
    from ekd.hub import check_model_spec
    from ekd.train.same_settings import refuse_with_peers

    try:
        check_model_spec(cfg.model.teacher, "model.teacher", cfg.model.teacher_hub_revision)
    except EkdError as e:
        refuse_with_peers(e)
        raise
    check_trains_from_cache(cfg)  # before the data and the teacher: what distill would refuse of this config
    # e.g. method.topk with RS targets, a cache_fraction under all positions: the cache would not be what was asked
    refuse_inert_keys(cfg.method, cfg.teacher, cfg.data)
    directory = Path(cfg.teacher.cache_dir)
    check_cache_directory(directory)
    check_cache_kind(directory, imported=False, overwrite=overwrite)  # not an `ekd cache import`
    load_at_start = os.getloadavg()[0] if hasattr(os, "getloadavg") else None  # other work, before ours
    with (
        removed_if_left_empty(directory),
        distributed(resolve_device(cfg.run.device), rank_settings(cfg, overwrite=overwrite)) as ranks,
        _locked_by_main(directory, ranks, overwrite),
    ):
        device = ranks.device
        # every rank writes its shards there, rank 0 the manifest of them all: one directory to every rank
        check_shared_directory(ranks, directory, "teacher.cache_dir", "every rank writes its shards there")
        if cfg.data.store_dir:
            check_shared_store(ranks, cfg.data.store_dir)

        def prepare():  # rank 0 only: it may train the BPE tokenizer (saved in the cache)
            make_dirs(directory)
            # --overwrite retrains a BPE beside the cache's and replaces it once trained; the teacher's copy is
            # replaced after the writer accepts the build: a refused --overwrite deletes nothing (try-out 67, F1)
            return _prepare_data(cfg, directory, retrain=overwrite)

        data = run_on_main(ranks, prepare, "prepare the data")  # tokenized and packed once
        # one download per node
        fetch_models_once([(cfg.model.teacher, cfg.model.teacher_hub_revision)], ranks)
        # every rank reads it
        check_same_weights(ranks, cfg.model.teacher, cfg.model.teacher_hub_revision, "model.teacher")
        blocks = data.blocks["train"]
        teacher = load_teacher(cfg, data, device)
        head = output_head(teacher, data.vocab_size)
        amp = autocast_dtype(cfg, device)
        revision = teacher_revision(cfg, teacher)
        if not overwrite and (
            by_name := _branch_pinned_by_name(
                directory, cfg.model.teacher_hub_revision, cfg.model.teacher_revision_key
            )
        ):
            revision = by_name  # an older ekd's pin: kept, said (try-out review 156, R4)
        signature = cache_signature(cfg, data, revision)
        if (files := teacher_files(cfg.model.teacher)) is not None and not cfg.model.teacher_hub_revision:
            signature[TEACHER_FILES] = files  # when a run from the cache must hash the weights again
        if kept := teacher_files_record(cfg.model.teacher, cfg.model.teacher_hub_revision):
            signature[KEPT_FILES] = kept  # the copy _keep_teacher_files makes
        signature[BUILT_WITH] = {  # the arithmetic its targets were computed in
            "teacher_dtype": dtype_name(next(teacher.parameters()).dtype),
            "autocast": precision_name(amp),
        }
        # the shards' own data settings, not this rerun's (try-out 64, F11)
        if not overwrite and (built_with := _built_data_settings(directory, signature)) is not None:
            signature[DATA_SETTINGS] = built_with

        def open_writer() -> CacheWriter:
            return CacheWriter(
                directory,
                signature,
                len(blocks),
                cfg.teacher.cache_shard_samples,
                rank=ranks.rank,
                world_size=ranks.world_size,
                stat_format=stat_format,
                overwrite=overwrite,
            )

        # rank 0 first: with --overwrite it clears the shared manifests before the others write theirs; its
        # refusal (a cache of another signature) reaches every rank
        writer = run_on_main(ranks, open_writer, "open the cache", share=False) or open_writer()
        if ranks.world_size > 1:  # each rank found its own share done: rank 0 says the whole cache's count
            log_resuming(directory, sum(_gather(writer.completed_shards, ranks)), writer.num_shards)

        pending = writer.pending_sample_ids()
        finished = _finished(directory, pending, writer.signature, ranks)
        run_on_main(ranks, lambda: _keep_teacher_files(cfg, directory, finished), "keep the teacher's files")
        if not finished:  # rank 0 says it (said_by_rank0)
            _warn_idle_ranks(len(blocks), cfg.teacher.cache_shard_samples, ranks.world_size)
        bs = max(1, cfg.eval.batch_size)
        id_batches = [pending[i : i + bs] for i in range(0, len(pending), bs)]
        options = EntryOptions.from_config(cfg, data.vocab_size, device)
        bar = tqdm(
            id_batches,
            desc="teacher cache",
            disable=not cfg.log.progress or ranks.rank != 0,
            dynamic_ncols=True,
        )
        _sync(device)
        t0 = time.perf_counter()
        batches = (collate(blocks, torch.tensor(ids)).to(device) for ids in bar)
        # a finished cache is not written at all (a read-only mount works): no manifest, no assembly
        positions_built = 0 if finished else write_batches(writer, teacher, head, batches, options, amp)
        _sync(device)
        build_seconds = time.perf_counter() - t0
        ranks.barrier()
        if ranks.world_size > 1 and not finished:
            run_on_main(
                ranks,
                lambda: assemble_manifest(directory, ranks.world_size),
                "assemble the manifest",
                share=False,
            )

        built = len(pending)
        forward_tp = None
        if built and measure_forward:
            probe = [
                collate(blocks, torch.tensor(ids)).to(device) for ids in id_batches[:FORWARD_PROBE_BATCHES]
            ]
            forward_tp = forward_throughput(teacher, probe, amp, device)
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        mine = {
            "built": built,
            "positions": positions_built,
            "seconds": build_seconds,
            "forward": forward_tp,
            "load": load_at_start,
            "cores": cores,
        }
        # each rank built its own shards: the result (and the summary rank 0 prints) counts them all
        result = BuildResult(
            directory=directory,
            rank=ranks.rank,
            world_size=ranks.world_size,
            samples_total=len(blocks),
            **job_figures(_gather(mine, ranks)),
        )
        on_rank = f" on rank {result.rank}/{result.world_size}" if result.world_size > 1 else ""
        log.info(  # inside `distributed`: the rank filter holds, so an idle rank is left to rank 0's warning
            "teacher cache %s: built %d of %s%s in %.1fs",
            directory,
            built,
            counted(len(blocks), "sample"),
            on_rank,
            build_seconds,
            extra=EVERY_RANK if built else None,
        )
    return result


def summary(result: BuildResult) -> dict:
    """The figures ``ekd cache`` prints: the whole cache's sizes (from its manifest, which under ``torchrun``
    rank 0 assembled from every rank's before this is called) and the build's figures, all ranks together."""
    info = CacheReader(result.directory).info()
    return {
        "directory": str(result.directory),
        "samples": info["samples"],
        "positions": info["positions"],
        "entries_per_position": info["entries_per_position"],
        "bytes_per_position": info["bytes_per_position"],
        "bytes_per_token": info["bytes_per_token"],
        "bytes_on_disk": info["bytes_on_disk"],
        "shard_bytes": info["shard_bytes"],
        "samples_built": result.samples_built,
        "build_seconds": result.build_seconds,
        "build_samples_per_s": result.build_throughput,
        "forward_samples_per_s": result.forward_throughput,
        "throughput_ratio": result.throughput_ratio,
        "world_size": result.world_size,
        "load_at_start": result.load_at_start,
        "cores": result.cores,
    }


__all__ = [
    "BuildResult",
    "build_cache",
    "forward_throughput",
    "job_figures",
    "run_build",
    "summary",
    "write_batches",
]
