"""Build an offline teacher cache: sparse targets + per-token teacher statistics for the training blocks.

    ekd cache configs/cache-demo.yaml [key=value ...] [--overwrite]
    torchrun --nproc_per_node=N -m ekd cache configs/cache-demo.yaml      # samples sharded across ranks

For every training block the teacher body runs once; its head is applied chunk-wise at the valid rows only
(never a (B, T, V) tensor). Each chunk yields the teacher entropy H(p) and log p(gold) at τ=1 of every
valid position, and — with ``teacher.cache_positions=all`` — the sparse target from the same logits. With
``teacher_entropy_topk`` the ⌈f·n⌉ highest-entropy positions of each sequence (``teacher.cache_fraction``
= f) are chosen from those statistics and the head runs again at those rows only. Targets follow
``method.target``: ``rs`` draws with :func:`~ekd.teacher.targets.position_seeds` of ``(run.seed,
sample_id, position)`` — the very draws the online teacher makes — and ``topk`` keeps K probabilities at
τ = ``method.kd_temperature``.

The cache is written by :class:`~ekd.teacher.cache.writer.CacheWriter` into ``teacher.cache_dir``: atomic
shards, resumable after a crash (a rerun computes only the unfinished shards), one shard set per rank and
one assembled manifest under ``torchrun`` (gloo on CPU, NCCL on GPU). A byte-level BPE trained for preset
models (``model.tokenizer=train_bpe``) is saved in ``<cache_dir>/tokenizer``.
"""

from __future__ import annotations

import hashlib
import logging
import os
import queue
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from ekd.config import Config, ConfigError
from ekd.losses.targets import Head
from ekd.models.load import is_preset, model_body, output_head
from ekd.teacher.cache import CacheReader, CacheWriter, assemble_manifest, make_signature
from ekd.teacher.signal import TargetSpec
from ekd.teacher.targets import position_seeds, rs_target, topk_target
from ekd.train.distributed import distributed
from ekd.train.prepare import chunk_rows
from ekd.train.token_stats import entropy_and_logp_gold

log = logging.getLogger(__name__)

# ekd.data.packing: documents joined with EOS, cut into non-overlapping T-token blocks (format of the rule)
PACKING_RULE = "concat-eos-blocks-v1"
FORWARD_PROBE_BATCHES = 16  # batches timed for the forward-only reference throughput


# ---------------------------------------------------------------------------------------------------------
# Signature
# ---------------------------------------------------------------------------------------------------------


def check_cacheable(cfg: Config) -> None:
    """Refuse configs whose target a cache cannot hold; each error names the key and the fix."""
    if not cfg.teacher.cache_dir:
        raise ConfigError(
            "teacher.cache_dir must be set: it is the directory `ekd cache` writes the cache to"
        )
    if cfg.method.target not in ("rs", "topk"):
        raise ConfigError(
            f"method.target={cfg.method.target}: a teacher cache stores sparse targets; "
            "set method.target=rs (e.g. method=rskd) or method.target=topk"
        )


def state_dict_sha256(model: nn.Module) -> str:
    """sha256 over the model's parameters and buffers (names, dtypes, shapes and bytes, in name order)."""
    h = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        t = tensor.detach().cpu().contiguous()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def files_sha256(files: list[Path]) -> str:
    """sha256 over the names and bytes of ``files`` (in the given order)."""
    h = hashlib.sha256()
    for path in files:
        h.update(f"{path.name};".encode())
        with open(path, "rb") as f:
            while block := f.read(1 << 22):
                h.update(block)
    return h.hexdigest()


def teacher_revision(cfg: Config, model: nn.Module) -> str:
    """What pins the teacher's weights: ``model.revision`` if set; else a hash of a local directory's
    safetensors files, the hub commit transformers resolved, or (presets) a hash of the state dict."""
    spec = cfg.model.teacher
    if cfg.model.revision:
        return cfg.model.revision
    if not is_preset(spec):
        path = Path(spec).expanduser()
        if path.is_dir():
            files = sorted(path.glob("*.safetensors"))
            if files:
                return f"safetensors-sha256:{files_sha256(files)}"
        elif commit := getattr(model.config, "_commit_hash", None):
            return f"commit:{commit}"
    return f"state-dict-sha256:{state_dict_sha256(model)}"


def cache_signature(cfg: Config, data: Any, revision: str) -> dict:
    """The signature of the cache that ``cfg`` builds from ``data`` (a PreparedData)."""
    from ekd.data import tokenizer_hash

    check_cacheable(cfg)
    m, blocks = cfg.method, data.blocks["train"]
    return make_signature(
        teacher_id=cfg.model.teacher,
        teacher_revision=revision,
        tokenizer_hash=tokenizer_hash(data.tokenizer),
        data_fingerprint=blocks.fingerprint(),
        block_length=blocks.block_length,
        packing=PACKING_RULE,
        vocab_size=data.vocab_size,
        target=m.target,
        topk=m.topk,
        topk_tail=m.topk_tail,
        target_temperature=m.kd_temperature,
        rs_samples=m.rs_samples,
        rs_proposal_power=m.rs_proposal_power,
        positions=cfg.teacher.cache_positions,
        position_fraction=cfg.teacher.cache_fraction,
        seed=cfg.run.seed,
    )


def target_spec(cfg: Config) -> TargetSpec:
    m = cfg.method
    return TargetSpec(m.target, m.topk, m.topk_tail, m.rs_samples, m.rs_proposal_power, cfg.run.seed)


# ---------------------------------------------------------------------------------------------------------
# One batch: statistics, positions, targets
# ---------------------------------------------------------------------------------------------------------


@dataclass
class _Targets:
    """Sparse targets at m rows: ids/values (m, K), weights (m, K) or None, tail (m,) or None."""

    ids: Tensor
    values: Tensor
    weights: Tensor | None = None
    tail: Tensor | None = None


def _targets_at(
    logits: Tensor, flat_rows: Tensor, gold: Tensor, sample_ids: Tensor, T: int, spec: TargetSpec, tau: float
) -> _Targets:
    """Targets from teacher logits (m, V) at flat rows (m,) of a (B, T) batch — the online teacher's math."""
    if spec.kind == "rs":
        r = flat_rows.cpu()
        seeds = position_seeds(
            spec.seed, sample_ids[r // T], r % T
        )  # (m,) as online: (seed, sample, position)
        res = rs_target(logits, spec.rs_samples, seeds=seeds, proposal_power=spec.rs_proposal_power)
        return _Targets(res.target.ids, res.counts, res.weights)
    t = topk_target(logits, spec.topk, spec.topk_tail, gold, tau)
    return _Targets(t.ids, t.probs, None, t.tail)


def _concat(parts: list[_Targets]) -> _Targets:
    """Rows of all parts, K padded to the widest (value 0 = padding, dropped by the writer)."""
    k = max(p.ids.shape[1] for p in parts)
    pad = lambda x: torch.nn.functional.pad(x, (0, k - x.shape[1]))  # noqa: E731
    return _Targets(
        torch.cat([pad(p.ids) for p in parts]),  # (P, K)
        torch.cat([pad(p.values) for p in parts]),  # (P, K)
        None if parts[0].weights is None else torch.cat([pad(p.weights) for p in parts]),
        None if parts[0].tail is None else torch.cat([p.tail for p in parts]),  # (P,)
    )


@torch.no_grad()
def batch_entries(
    hidden: Tensor,
    head: Head,
    labels: Tensor,
    sample_ids: Tensor,
    spec: TargetSpec,
    *,
    positions: str = "all",
    fraction: float = 1.0,
    tau: float = 1.0,
    chunk_rows: int = 1024,
    work_rows: int | None = None,
) -> list[dict]:
    """What the cache stores for each sample of a batch, as keyword arguments of ``CacheWriter.add``.

    Args:
        hidden: (B, T, Dt) teacher final hidden states.
        head: the teacher head sliced to the shared vocabulary.
        labels: (B, T) shifted labels, -100 = no target.
        sample_ids: (B,) sample ids (CPU).
        spec: the target (``rs`` or ``topk``) and RS seed.
        positions: 'all' valid positions or 'teacher_entropy_topk' (per sequence, ⌈fraction·n⌉ by H(p)).
        tau: top-K temperature.
        chunk_rows: teacher rows whose (m, V) logits exist at once (the online teacher's chunking).
        work_rows: rows per slice of those logits for the softmax/sampling passes (None = the whole chunk);
            on CPU ~1 MB slices stay in cache across the passes. Does not change any value.

    Returns:
        B dicts: sample_id, positions (P,), stats {'entropy', 'logp_gold'} (P,), ids/values (P, K),
        weights, tail, num_tokens (valid positions of the sample).
    """
    from ekd.selection.base import topk_mask

    B, T = labels.shape
    valid = labels != -100  # (B, T)
    rows = valid.reshape(-1).nonzero().squeeze(-1)  # (N,) flat valid positions
    gold = labels.reshape(-1)[rows]  # (N,)
    h = hidden.reshape(B * T, -1)  # (B·T, Dt)
    n = rows.numel()
    entropy = torch.zeros(n, device=labels.device)  # (N,)
    logp_gold = torch.zeros(n, device=labels.device)
    fused = positions == "all"  # targets from the same logits as the statistics: one head pass
    parts: list[_Targets] = []
    for start in range(0, n, chunk_rows):
        logits = head(h[rows[start : start + chunk_rows]]).float()  # (m, V) teacher logits at valid rows
        # the softmax passes (statistics, RS CDF) run on L2-sized slices on CPU: per row, same values
        for sub in range(0, logits.shape[0], work_rows or logits.shape[0]):
            sl = slice(start + sub, start + sub + (work_rows or logits.shape[0]))
            z = logits[sub : sub + (work_rows or logits.shape[0])]  # (w, V)
            entropy[sl], logp_gold[sl] = entropy_and_logp_gold(z, gold[sl])
            if fused:
                parts.append(_targets_at(z, rows[sl], gold[sl], sample_ids, T, spec, tau))
    if fused:
        chosen = torch.arange(n, device=labels.device)  # (P,) indices into rows
    else:
        grid = torch.zeros(B * T, device=labels.device)
        grid[rows] = entropy
        mask = topk_mask(grid.view(B, T), valid, fraction, "sequence")  # (B, T) highest teacher entropy
        chosen = mask.reshape(-1)[rows].nonzero().squeeze(-1)  # (P,)
        for start in range(0, chosen.numel(), chunk_rows):
            c = chosen[start : start + chunk_rows]
            logits = head(h[rows[c]]).float()  # (m, V) at the chosen rows only
            parts.append(_targets_at(logits, rows[c], gold[c], sample_ids, T, spec, tau))
    flat = rows[chosen].cpu().numpy()  # (P,) chosen flat positions, ascending
    ent, lpg = entropy[chosen].cpu().numpy(), logp_gold[chosen].cpu().numpy()
    if parts:
        t = _concat(parts)
        arrays = {k: None if v is None else v.cpu().numpy() for k, v in vars(t).items()}
    else:  # no valid position in the whole batch
        arrays = {
            "ids": np.zeros((0, 0), np.int64),
            "values": np.zeros((0, 0), np.int64),
            "weights": None,
            "tail": None,
        }
    bounds = np.searchsorted(flat, np.arange(B + 1) * T)  # (B+1,) each sample's slice of the chosen rows
    num_tokens = valid.sum(1).tolist()
    out = []
    for b in range(B):
        s = slice(bounds[b], bounds[b + 1])
        out.append(
            {
                "sample_id": int(sample_ids[b]),
                "positions": flat[s] - b * T,
                "stats": {"entropy": ent[s], "logp_gold": lpg[s]},
                **{k: None if v is None else v[s] for k, v in arrays.items()},  # ids, values, weights, tail
                "num_tokens": int(num_tokens[b]),
            }
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# Distributed
# ---------------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------------
# The build
# ---------------------------------------------------------------------------------------------------------


@dataclass
class BuildResult:
    """What a build did on this rank. Throughputs are samples per second.

    ``throughput_ratio`` = build throughput / forward-only throughput (the teacher's plain forward pass,
    full logits, on the first built batches); None when nothing was left to build.
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
                    for entry in entries:
                        self.writer.add(**entry)
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


def _work_rows(device: torch.device, vocab_size: int) -> int | None:
    """Rows per softmax slice: ~1 MB of fp32 logits on CPU (cache-resident passes); whole chunks on GPU."""
    if device.type != "cpu":
        return None
    return max(16, (1 << 20) // (4 * vocab_size))


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _forward_throughput(
    teacher: nn.Module, batches: list, amp: torch.dtype | None, device: torch.device
) -> float:
    """Samples/s of the teacher's plain forward pass (body + head at every position) on ``batches``."""
    samples = sum(len(b) for b in batches)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
        teacher(input_ids=batches[0].input_ids, attention_mask=batches[0].attention_mask)  # warm-up
        _sync(device)
        t0 = time.perf_counter()
        for b in batches:
            teacher(input_ids=b.input_ids, attention_mask=b.attention_mask).logits.sum().item()
        _sync(device)
    return samples / max(time.perf_counter() - t0, 1e-9)


def _teacher_entries(
    cfg: Config, teacher: nn.Module, head: Head, blocks, id_batches, device, amp, vocab_size: int
):
    """Per batch of sample ids: teacher body once (no grad, autocast as online), then ``batch_entries``."""
    from ekd.data import collate

    for ids in id_batches:
        batch = collate(blocks, torch.tensor(ids)).to(device)
        with torch.no_grad(), torch.autocast(device.type, dtype=amp, enabled=amp is not None):
            body = model_body(teacher)(input_ids=batch.input_ids, attention_mask=batch.attention_mask)
        yield batch_entries(
            body.last_hidden_state,  # (B, T, Dt)
            head,
            batch.labels,
            batch.sample_ids.cpu(),
            target_spec(cfg),
            positions=cfg.teacher.cache_positions,
            fraction=cfg.teacher.cache_fraction,
            tau=cfg.method.kd_temperature,
            chunk_rows=chunk_rows(cfg, vocab_size),
            work_rows=_work_rows(device, vocab_size),
        )


def _prepare_data(cfg: Config, directory: Path):
    """``prepare_data`` with the cache as run directory; a tokenizer it trains lands there atomically
    (trained in a staging directory, then renamed), so a build killed mid-save never leaves half of one."""
    from ekd.train.prepare import prepare_data

    if (directory / "tokenizer" / "tokenizer.json").is_file():
        return prepare_data(cfg, directory)
    staging = directory / ".staging"
    shutil.rmtree(staging, ignore_errors=True)
    data = prepare_data(cfg, staging)
    if (staging / "tokenizer").is_dir():
        shutil.rmtree(directory / "tokenizer", ignore_errors=True)
        os.replace(staging / "tokenizer", directory / "tokenizer")
    shutil.rmtree(staging, ignore_errors=True)
    return data


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


def run_build(
    cfg: Config, overwrite: bool = False, *, stat_format: str | None = None, measure_forward: bool = True
) -> BuildResult:
    """:func:`build_cache` returning this rank's figures (built samples, throughput vs forward-only)."""
    stat_format = stat_format or cfg.teacher.cache_stat_format
    from ekd.data import collate
    from ekd.train.prepare import autocast_dtype, load_teacher, resolve_device

    check_cacheable(cfg)
    directory = Path(cfg.teacher.cache_dir)
    with distributed(resolve_device(cfg.run.device)) as ranks:
        device = ranks.device
        # rank 0 first: it may train the BPE tokenizer (saved in the cache) that the other ranks then load
        if ranks.rank == 0:
            directory.mkdir(parents=True, exist_ok=True)
            if overwrite:
                shutil.rmtree(directory / "tokenizer", ignore_errors=True)
            data = _prepare_data(cfg, directory)
        ranks.barrier()
        if ranks.rank != 0:
            data = _prepare_data(cfg, directory)
        blocks = data.blocks["train"]
        teacher = load_teacher(cfg, data, device)
        head = output_head(teacher, data.vocab_size)
        amp = autocast_dtype(cfg, device)
        signature = cache_signature(cfg, data, teacher_revision(cfg, teacher))

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

        # rank 0 first: with --overwrite it clears the shared manifests before the others write theirs
        writer = open_writer() if ranks.rank == 0 else None
        ranks.barrier()
        writer = writer or open_writer()

        pending = writer.pending_sample_ids()
        bs = max(1, cfg.eval.batch_size)
        id_batches = [pending[i : i + bs] for i in range(0, len(pending), bs)]
        positions_built = 0
        bar = tqdm(
            id_batches,
            desc="teacher cache",
            disable=not cfg.log.progress or ranks.rank != 0,
            dynamic_ncols=True,
        )
        background = _BackgroundWriter(writer)
        _sync(device)
        t0 = time.perf_counter()
        try:
            for entries in _teacher_entries(cfg, teacher, head, blocks, bar, device, amp, data.vocab_size):
                background.put(entries)  # encoded and written while the teacher runs the next batch
                positions_built += sum(len(e["positions"]) for e in entries)
        except BaseException:
            background.stop()  # write what was queued (finished shards stay valid), then re-raise
            raise
        background.close()
        writer.close()
        _sync(device)
        build_seconds = time.perf_counter() - t0
        ranks.barrier()
        if ranks.rank == 0 and ranks.world_size > 1:
            assemble_manifest(directory, ranks.world_size)
        ranks.barrier()

        built = len(pending)
        build_tp = built / max(build_seconds, 1e-9) if built else None
        forward_tp = None
        if built and measure_forward:
            probe = [
                collate(blocks, torch.tensor(ids)).to(device) for ids in id_batches[:FORWARD_PROBE_BATCHES]
            ]
            forward_tp = _forward_throughput(teacher, probe, amp, device)
        result = BuildResult(
            directory=directory,
            rank=ranks.rank,
            world_size=ranks.world_size,
            samples_total=len(blocks),
            samples_built=built,
            positions_built=positions_built,
            build_seconds=build_seconds,
            build_throughput=build_tp,
            forward_throughput=forward_tp,
            throughput_ratio=build_tp / forward_tp if build_tp and forward_tp else None,
        )
    log.info(
        "teacher cache %s: built %d of %d samples on rank %d/%d in %.1fs",
        directory,
        built,
        len(blocks),
        result.rank,
        result.world_size,
        build_seconds,
    )
    return result


def summary(result: BuildResult) -> dict:
    """The figures ``ekd cache`` prints: the cache's sizes (from its manifest) and the build's throughput."""
    info = CacheReader(result.directory).info()
    return {
        "directory": str(result.directory),
        "samples": info["samples"],
        "positions": info["positions"],
        "entries_per_position": info["entries_per_position"],
        "bytes_per_position": info["bytes_per_position"],
        "bytes_per_token": info["bytes_per_token"],
        "bytes_on_disk": info["bytes_on_disk"],
        "samples_built": result.samples_built,
        "build_seconds": result.build_seconds,
        "build_samples_per_s": result.build_throughput,
        "forward_samples_per_s": result.forward_throughput,
        "throughput_ratio": result.throughput_ratio,
        "world_size": result.world_size,
    }


__all__ = [
    "PACKING_RULE",
    "BuildResult",
    "batch_entries",
    "build_cache",
    "cache_signature",
    "check_cacheable",
    "run_build",
    "summary",
    "teacher_revision",
]
