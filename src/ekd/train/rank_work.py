"""Work the ranks of a ``torchrun`` job share instead of each repeating it (DESIGN, "Scaling out").

- **Data**: global rank 0 loads, tokenizes and packs every split (``prepare_data``); the others receive the
  result through the host group (``prepare_data_once``) — no rank but 0 reads the corpus or the tokenizer,
  and no node but rank 0's needs the data on disk.
- **Sample selection (TopSmp)**: each rank scores a contiguous 1/W of the training blocks, one batch on
  the device at a time; the per-sample sums are all-gathered, so every rank selects the same samples as one
  process (``sharded_sample_scores``).
- **Hub downloads**: local rank 0 of each node downloads the models into the node's cache while the other
  ranks wait; then every rank loads from that cache (``fetch_models_once``).
- **Evaluation** is split across ranks in ``ekd.eval.evaluate.evaluate`` (``rank``/``world_size``).
- **What rank 0 alone checks or writes** (the run directory, the metrics, a checkpoint's manifest, the export):
  ``run_on_main`` sends the outcome to every rank before the next collective, so a refusal ends every rank
  alike (same exit code, the line printed once) instead of leaving the others waiting for a rank that left.
  Checks every rank would make alike (the teacher cache) run on rank 0 first (``opened_on_main_first``).

Every function here is a collective when ``ranks.world_size > 1``: all ranks call it, in the same order.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn

from ekd.errors import EkdError, first_line
from ekd.log_level import EVERY_RANK
from ekd.train.distributed import Ranks

log = logging.getLogger(__name__)
T = TypeVar("T")


def run_on_main(ranks: Ranks, work: Callable[[], T], what: str, *, share: bool = True) -> T | None:
    """``work()`` on global rank 0 only; its outcome sent to every rank (through the host group,
    ``Ranks.host``: the other ranks never wait in an NCCL collective).

    Every check or write that rank 0 alone makes before the next collective goes through here, so that a
    refusal reaches every rank and each exits the same way instead of waiting in that collective for a rank
    that has left: an :class:`~ekd.errors.EkdError` of rank 0 is raised on every rank as the same class with
    the same message (marked :func:`~ekd.errors.copy_of_rank0`: the CLI prints it once, on rank 0, and every
    rank exits with the same code — 0 for a finished run's ``--resume``).

    ``share``: send ``work()``'s result (pickled) to the other ranks; False: they get None (a result that
    stays on rank 0, e.g. an open log).

    Raises:
        EkdError: on the other ranks when ``work`` fails on rank 0 (rank 0 re-raises its own error); another
            exception of rank 0 (a bug) reaches them as ``EkdError("rank 0 could not <what>: ...")``.
    """
    if ranks.world_size == 1:
        return work()
    box: list = [None]
    failure: BaseException | None = None
    if ranks.is_main:
        try:
            result = work()
            box[0] = ("ok", result if share else None)
        except BaseException as e:  # tell the others instead of leaving them waiting
            failure = e
            # Ctrl-C or SIGTERM: every rank stops alike (exit 130 or 143)
            import socket

            host = socket.gethostname()  # said on another node's log too, naming it (try-out 153, N4)
            if isinstance(e, KeyboardInterrupt):
                box[0] = ("error", type(e), "", host)
            elif isinstance(e, EkdError):
                box[0] = ("error", type(e), str(e), host)
            else:
                box[0] = ("error", None, f"{type(e).__name__}: {e}", host)
    dist.broadcast_object_list(box, src=0, group=ranks.host)
    if failure is not None:
        raise failure
    if box[0][0] == "error":
        _, kind, message, host = box[0]
        error = _rank0_error(kind, message, what)
        error.rank0_host = host  # type: ignore[attr-defined]
        raise error
    return result if ranks.is_main else box[0][1]


def opened_on_main_first(ranks: Ranks, open_: Callable[[], T], what: str) -> T:
    """``open_()`` on global rank 0 first (:func:`run_on_main`), then on the other ranks: a refusal every rank
    would make alike (a teacher cache built for another config: the same files, the same data from rank 0) is
    raised on every rank and printed once, by rank 0; a refusal only another rank makes (its node's copy of the
    files) is still that rank's own line. Every rank gets its own ``open_()`` (an open reader, not a copy).

    Raises:
        EkdError: rank 0's refusal, on every rank; or this rank's own.
    """
    mine = run_on_main(ranks, open_, what, share=False)
    return mine if ranks.is_main else open_()


def _rank0_error(kind: type | None, message: str, what: str) -> BaseException:
    """This rank's copy of rank 0's EkdError ``kind(message)``, marked as reported by rank 0; a
    KeyboardInterrupt (or SIGTERM's Terminated) for rank 0's; for another exception of rank 0 (``kind`` None, a traceback there), a
    one-line EkdError saying what rank 0 could not do."""
    if kind is None:
        return EkdError(f"rank 0 could not {what}: {message}")
    if issubclass(kind, KeyboardInterrupt):  # Ctrl-C, or SIGTERM (ekd.signals.Terminated): the same exit code
        return kind()
    try:
        error = kind(message)
    except Exception:  # a class that does not take one message
        error = EkdError(message)
    error.copy_of_rank0 = True
    return error


SHARED_WAIT_S = 30.0
"""Seconds a rank looks for rank 0's probe file before it is said not to see the directory (a network file
system's attribute cache may hide a new file from another node for a moment)."""


def check_shared_directory(
    ranks: Ranks,
    directory: Path,
    key: str,
    what: str,
    *,
    every_rank_writes: bool = True,
    rank0_path: bool = False,
) -> None:
    """Every rank sees, at ``directory``, the files rank 0 writes there — and, with ``every_rank_writes``, can write
    there itself — before any of them writes there: rank 0 writes a probe file (on a read-only mount, where nothing
    will be written, it names a file already there instead: a finished cache, a prebuilt store), every rank looks
    for it (and writes and removes one of its own), and a rank that cannot ends the job with one line naming it and
    its host. What several ranks write or read in one directory (a run's checkpoint shards, a cache's shards, a
    token store rank 0 built) must be on a filesystem every node mounts at that path. ``rank0_path``: every rank
    looks at rank 0's ``directory``, where it reads what rank 0 wrote (a token store, handed over by its paths).
    ``directory`` is made by rank 0 if missing, and removed again on a refusal if it made it and it is empty; the
    probe is removed whatever happens. One process: nothing to check.

    Raises:
        ConfigError: a rank does not see rank 0's file, or cannot write there (on every rank; said by rank 0).
    """
    if ranks.world_size <= 1:
        return
    import secrets
    import socket

    token = secrets.token_hex(8)  # rank 0's names the probe
    probe = directory / f"{PROBE_PREFIX}{token}"
    made = [False]
    try:
        # (rank 0's directory, and the name, size, mtime_ns of the file every rank looks for: the probe, or one
        # already there)
        where, *mark = run_on_main(
            ranks, lambda: _write_probe(directory, probe, token, made), f"write in {key}"
        )
        directory = Path(where) if rank0_path else directory
        seen = _sees(directory, mark)
        writes = ""
        if seen and every_rank_writes and not ranks.is_main and mark[0].startswith(PROBE_PREFIX):
            own = directory / f"{mark[0]}-{ranks.rank}"
            try:
                own.write_bytes(b"")
                own.unlink()
            except OSError as e:
                writes = e.strerror or type(e).__name__
        everyone: list = [None] * ranks.world_size
        dist.all_gather_object(everyone, (seen, writes, socket.gethostname()), group=ranks.host)
    finally:
        # a read-only mount refuses even the unlink of a file it has not got (try-out 157, N1)
        if ranks.is_main:
            with contextlib.suppress(OSError):
                probe.unlink(missing_ok=True)

    def refuse() -> None:
        if (refusal := shared_directory_refusal(everyone, directory, key, what)) is not None:
            if made[0]:
                with contextlib.suppress(OSError):  # only if empty: nothing of the user's is removed
                    directory.rmdir()
            from ekd.errors import ConfigError

            raise ConfigError(refusal, keys=(key,))

    run_on_main(ranks, refuse, f"check {key}")


PROBE_PREFIX = ".ekd-probe-"
"""The names of :func:`check_shared_directory`'s probe files (``.ekd-probe-<token>``, a rank's own
``.ekd-probe-<token>-<rank>``): removed by the check; one a killed check left is not the user's (the cache and run
directory checks pass it by)."""


def _write_probe(directory: Path, probe: Path, token: str, made: list[bool]) -> tuple[str, str, int, int]:
    """Rank 0: the probe written in ``directory`` (made if missing; ``made[0]``: by this call), as (``directory``,
    name, size, mtime_ns); on a read-only mount, a file already there instead (nothing will be written there).

    Raises:
        ConfigError: ``directory`` cannot be written and holds no file to look for.
    """
    from ekd.errors import ConfigError
    from ekd.io import atomic_write_text, make_dirs

    made[0] = not directory.exists()
    try:
        make_dirs(directory)
        atomic_write_text(probe, token)
        st = probe.stat()
        return str(directory), probe.name, st.st_size, st.st_mtime_ns
    except (OSError, EkdError) as e:
        there = sorted(p for p in directory.glob("*") if p.is_file()) if directory.is_dir() else []
        if not there:
            raise ConfigError(
                f"{directory} cannot be written ({first_line(e)}) and holds nothing to read"
            ) from None
        st = there[0].stat()
        return str(directory), there[0].name, st.st_size, st.st_mtime_ns


def _sees(directory: Path, mark: list) -> bool:
    """Whether this rank sees ``mark`` (name, size, mtime_ns) in ``directory`` within :data:`SHARED_WAIT_S`; the
    directory is listed first at each look (a network filesystem revalidates its cached entries)."""
    import os
    import time

    name, size, mtime_ns = mark
    deadline = time.monotonic() + SHARED_WAIT_S
    while True:
        with contextlib.suppress(OSError):
            os.listdir(directory)
            st = (directory / name).stat()
            if st.st_size == size and st.st_mtime_ns == mtime_ns:
                return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.2)


def shared_directory_refusal(
    everyone: list[tuple[bool, str, str]], directory: Path, key: str, what: str
) -> str | None:
    """The line refusing a job where a rank (``everyone``: per rank, (saw rank 0's file, why it could not write
    there or "", host)) does not see ``directory``'s file or cannot write there; None where every rank can."""
    blind = [(rank, host) for rank, (ok, _, host) in enumerate(everyone) if not ok]
    if blind:
        who = ", ".join(f"rank {rank} (host {host})" for rank, host in blind)
        return (
            f"{key}: {who} does not see the files rank 0 writes in {directory} ({what}): put it on a filesystem "
            "every node mounts, at that same path on every node"
        )
    unwritable = [(rank, host, why) for rank, (ok, why, host) in enumerate(everyone) if ok and why]
    if unwritable:
        rank, host, why = unwritable[0]
        return (
            f"{key}: rank {rank} (host {host}) cannot write in {directory} ({why}; {what}): mount it writable on "
            "every node"
        )
    return None


def check_shared_store(ranks: Ranks, store_dir: str) -> None:
    """:func:`check_shared_directory` for ``data.store_dir`` (set): rank 0 builds the token store, every rank
    memory-maps it at rank 0's path."""
    what = "rank 0 builds the token store, every rank reads it"
    check_shared_directory(
        ranks, Path(store_dir), "data.store_dir", what, every_rank_writes=False, rank0_path=True
    )


def check_same_weights(ranks: Ranks, spec: str, revision: str, key: str) -> None:
    """Every node reads the same weights for ``spec`` (``key``: 'model.teacher', ...): its local rank 0 fingerprints
    the files its node loads (:func:`ekd.models.identity.weights_fingerprint`, remembered per file state), and a node
    whose files differ from rank 0's ends the job with one line, by rank 0, naming it — where each rank reads the
    model itself (a replicated teacher, a LoRA base: DDP sends rank 0's trained weights, not these). Paths are
    compared among one machine's ranks only (nodes may mount them elsewhere), so a stale copy on one node, or a
    hub id whose ``main`` another node downloaded later, taught half of every batch from another model under one
    name (try-out 151, F2). A node whose files cannot be fingerprinted (a preset, pickled weights) is not compared.

    Raises:
        ConfigError: a node's weights differ from rank 0's (on every rank; said once, by rank 0).
    """
    if ranks.world_size <= 1:
        return
    import socket

    from ekd.errors import ConfigError
    from ekd.models.identity import weights_fingerprint

    hosts: list = [None] * ranks.world_size
    dist.all_gather_object(hosts, socket.gethostname(), group=ranks.host)
    if len(set(hosts)) == 1:  # one machine: every rank reads the same files (review 156, R11: hashed anyway)
        return
    mine = weights_fingerprint(spec, revision) if ranks.is_node_main else None
    everyone: list = [None] * ranks.world_size
    dist.all_gather_object(everyone, (mine, spec), group=ranks.host)
    reference = everyone[0][0]
    other = [(r, *e) for r, e in enumerate(everyone) if None not in (e[0], reference) and e[0] != reference]

    def refuse() -> None:
        if other:
            rank, fingerprint, its_spec = other[0]
            host = hosts[rank]
            from ekd.hub import is_local

            # a hub id's branch may resolve to other weights on each node; a directory's path is its own
            pin_key = "model.teacher_revision" if key == "model.teacher" else "model.revision"
            pin = "" if is_local(spec) or revision else f", or pin {pin_key} to one commit"
            raise ConfigError(
                f"{key}={its_spec}: rank {rank} (host {host}) holds other weights there than rank 0 "
                f"({fingerprint.rpartition(':')[2][:12]} vs {reference.rpartition(':')[2][:12]}): every node must "
                f"hold the same model — copy rank 0's files there{pin}",
                keys=(key,),
            )

    run_on_main(ranks, refuse, f"compare the nodes' {key}")


def prepare_data_once(cfg, run_dir: Path, ranks: Ranks):
    """``prepare_data(cfg, run_dir)`` (load, tokenize, pack) on global rank 0, sent to the other ranks."""
    from ekd.train.prepare import prepare_data

    return run_on_main(ranks, lambda: prepare_data(cfg, run_dir), "prepare the data")


def shard(n: int, ranks: Ranks) -> Tensor:
    """This rank's contiguous share of ``range(n)``: (≈n/W,) long; the shards of all ranks tile range(n)."""
    return torch.tensor_split(torch.arange(n), ranks.world_size)[ranks.rank]


@torch.no_grad()
def sharded_sample_scores(
    student: nn.Module,
    blocks,
    scorer: str,
    vocab_size: int,
    ranks: Ranks,
    teacher: nn.Module | None = None,
    *,
    batch_size: int,
    seed: int = 0,
    chunk_rows: int = 1024,
    autocast_dtype: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """TopSmp scores of every training block, each rank scoring its ``shard`` in streamed batches.

    Returns, on every rank: (ids, scores), (N,) ascending block ids and their (N,) fp32 scores — those of
    ``score_samples_by_id`` over all blocks in one process.
    """
    from ekd.data import collate
    from ekd.selection.global_batch import gather_segments
    from ekd.selection.sample_selection import pool_by_id, sample_sums, scores_from_sums

    mine = shard(len(blocks), ranks)  # (n_r,) block indices
    batches = (collate(blocks, mine[i : i + batch_size]) for i in range(0, mine.numel(), batch_size))
    ids, sums, counts = sample_sums(
        student,
        batches,
        scorer,
        vocab_size,
        ranks.device,
        teacher,
        chunk_rows=chunk_rows,
        autocast_dtype=autocast_dtype,
    )
    if ranks.world_size > 1:
        ids = gather_segments(ids.to(ranks.device))[0].cpu()  # (N,) every rank's ids, rank order
        pair = torch.stack([sums, counts], dim=1).to(ranks.device)  # (n_r, 2) float64
        pair = gather_segments(pair)[0].cpu()  # (N, 2)
        ids, sums, counts = pool_by_id(ids, pair[:, 0], pair[:, 1])
    return ids, scores_from_sums(sums, counts, scorer, seed)


HUB_FILES = ["*.json", "*.safetensors", "*.model", "*.txt", "*.tiktoken", "*.py"]
"""What a node downloads for a hub model: configs, safetensors weights, tokenizer files, remote code."""


def hub_ids(specs: list[str]) -> list[str]:
    """The specs that name hub repositories: not presets, not local directories."""
    from ekd.models.load import is_preset

    return [s for s in dict.fromkeys(specs) if s and not is_preset(s) and not Path(s).expanduser().exists()]


def fetch_models_once(models: list[tuple[str, str]], ranks: Ranks) -> None:
    """Local rank 0 of each node downloads the hub models among ``models`` ((spec, revision) pairs: a teacher and
    a student may be pinned apart, ``model.teacher_revision``) into the node's cache; every rank waits, then loads
    from the cache (8 ranks of a node never download the same files at once).

    A failed download is only logged here: loading then fails on every rank with its one-line error.
    """
    repos = [(spec, revision) for spec, revision in dict.fromkeys(models) if hub_ids([spec])]
    if ranks.world_size == 1 or not repos:
        return
    if ranks.is_node_main:
        from huggingface_hub import snapshot_download

        for repo, revision in repos:
            try:
                snapshot_download(repo, revision=revision or None, allow_patterns=HUB_FILES)
            except Exception as e:  # unreachable, gated, offline without a cache: load_model says why
                log.warning(
                    "could not download %s on this node (%s); loading will report it",
                    repo,
                    e,
                    extra=EVERY_RANK,
                )
    ranks.barrier()
