"""Checkpoints under ``torchrun`` with ``torch.distributed.checkpoint`` (DCP): every rank writes its shards.

Layout of ``runs/<name>/checkpoints/step-000100/`` when the run has W > 1 ranks::

    __0_0.distcp ... __{W-1}_0.distcp   each rank's part of {"model": ..., "optim": ...} (DCP, torch_save tensors)
    .metadata                           DCP's index of the shards (pickle; read with an allowlist, see below)
    state.pt                            step, data position, policy and temperature state, ranks × micro-batch
    manifest.json                       {"format": "ekd-checkpoint", "layout": "dcp", "step", "world_size", "files"}

The state dicts come from ``torch.distributed.checkpoint.state_dict.get_state_dict`` over the student and the
modules kept beside it (``student.*``, ``extras.*``) and the optimizer (keyed by parameter name), so the same
code saves a plain module, DDP's replicas (DCP writes each replicated tensor once) and FSDP2's DTensor shards;
``set_state_dict`` puts them back. Loading goes through DCP's planner, which reshards: a checkpoint of W ranks
resumes on W' ranks or in one process, and a one-process checkpoint (:mod:`ekd.train.checkpoint`'s format)
resumes on W ranks through the same ``set_state_dict`` with full (unsharded) tensors.

Atomic as the one-process format: rank 0 empties ``step-N.tmp/``, every rank writes its shards there (fsynced)
and hashes the files it wrote; rank 0 gathers the hashes, writes ``state.pt`` and the manifest, renames the
directory and replaces ``checkpoints/latest``. A kill -9 at any point leaves the previous checkpoint intact;
:func:`ekd.train.checkpoint.verify_checkpoint` checks every file before anything is read.

What is trusted: nothing in the checkpoint is unpickled with arbitrary globals. Tensors are read by DCP with
``torch.load(weights_only=True)``; the non-tensor leaves (optimizer hyper-parameters) by :class:`SafeLoadPlanner`
with ``weights_only=True`` (DCP's default planner uses ``weights_only=False``); ``.metadata`` (a plain pickle
of DCP's dataclasses) by :class:`SafeReader`, whose unpickler resolves only DCP's metadata classes, torch
dtypes/``Size``/layouts and ``pathlib`` paths — any other global is refused as a corrupt checkpoint.

No RNG state is saved: every random draw of a step is keyed by (seed, step, rank) — the global generator
(dropout, CPU and CUDA) is reseeded with :func:`ekd.train.distributed.rank_seed` at the start of each step —
or by (seed, step, micro-batch, sample id) (selection draws, GKD sampling), and the loader's shuffle by
(seed, epoch). A resumed run therefore draws what the uninterrupted run draws, on any number of ranks
(tested: ``tests/test_sharded_checkpoint.py``).
"""

from __future__ import annotations

import io
import json
import logging
import pathlib
import pickle
import shutil
import warnings
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint import metadata as dcp_metadata
from torch.distributed.checkpoint._traverse import set_element
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.default_planner import DefaultLoadPlanner
from torch.distributed.checkpoint.filesystem import FileSystemReader, FileSystemWriter, _StorageInfo
from torch.distributed.checkpoint.planner import ReadItem
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ekd.io import atomic_file, file_sha256, writing
from ekd.models.layers import state_dict_name
from ekd.train.checkpoint import (
    FORMAT,
    MANIFEST,
    STATE_KEYS,
    CheckpointError,
    _load_pickle,
    checkpoint_dir,
    latest_verified_checkpoint,
    load_checkpoint,
    seal_checkpoint,
    unreadable,
)
from ekd.train.distributed import Ranks
from ekd.train.rank_work import run_on_main
from ekd.words import counted

log = logging.getLogger(__name__)

LAYOUT = "dcp"
METADATA = ".metadata"


def training_state(student: nn.Module, extra_modules: dict[str, nn.Module] | None) -> nn.Module:
    """The modules a checkpoint holds as one module (``student.*``, ``extras.<name>.*``): the student (plain,
    the module inside DDP, or FSDP2-sharded) and the modules kept beside it (trained or frozen)."""
    return nn.ModuleDict({"student": student, "extras": nn.ModuleDict(extra_modules or {})})


def save_sharded_checkpoint(
    run_dir: Path,
    step: int,
    modules: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    ranks: Ranks,
    keep: int = 2,
    trainable_only: bool = False,
) -> Path:
    """Write checkpoint ``step`` with DCP from every rank (a collective: all ranks call it).

    Args:
        modules: :func:`training_state` (every parameter the optimizer holds is in it).
        state: the run's non-tensor state (alike on every rank); rank 0 writes it.
        trainable_only: leave out parameters without gradients (a LoRA student's frozen base; the
            run rebuilds it from the model it loads), as ``StateDictOptions(ignore_frozen_params=True)``.

    Raises:
        DiskError: the disk is full or not writable (the previous checkpoints are intact).
    """
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")

    def make_tmp() -> None:
        with writing(final.parent):
            if tmp.exists():
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)

    def seal(hashes: dict[str, str]) -> None:  # rank 0: state, manifest, rename, latest
        with writing(final.parent):
            try:
                hashes[METADATA] = file_sha256(tmp / METADATA)
                with atomic_file(tmp / "state.pt") as f:
                    torch.save(state, f)
                hashes["state.pt"] = f.sha256
                manifest = {
                    "format": FORMAT,
                    "layout": LAYOUT,
                    "step": int(step),
                    "world_size": ranks.world_size,
                    "files": hashes,
                }
            except BaseException:
                shutil.rmtree(tmp, ignore_errors=True)
                raise
            seal_checkpoint(tmp, final, manifest, keep)

    # rank 0 alone makes and seals the directory; run_on_main tells every rank whether it could (a full disk
    # ends every rank with the same line, none is left waiting in the next collective)
    run_on_main(ranks, make_tmp, "make the checkpoint directory", share=False)
    with writing(final.parent):
        model_state, optim_state = get_state_dict(modules, optimizer, options=_options(trainable_only))
        try:
            try:
                dcp.save(
                    {"model": model_state, "optim": optim_state},
                    storage_writer=FileSystemWriter(tmp, sync_files=True),
                    no_dist=ranks.world_size == 1,
                )
            except CheckpointException as e:  # a BaseException: unwrap (a full disk's OSError) for writing()
                raise _first_failure(e) from None
            # each rank hashes the shards it wrote (in parallel; on multi-node, files local to its node)
            mine = {p.name: file_sha256(p) for p in sorted(tmp.glob(f"__{ranks.rank}_*.distcp"))}
            hashes = _gather(mine, ranks)
        except BaseException:
            if ranks.is_main:
                shutil.rmtree(tmp, ignore_errors=True)
            raise
    run_on_main(ranks, lambda: seal(hashes), "write the checkpoint", share=False)
    return final


def verified_on_main(run_dir: Path, ranks: Ranks) -> Path | None:
    """:func:`~ekd.train.checkpoint.latest_verified_checkpoint` checked once, on rank 0, and shared
    (:func:`~ekd.train.rank_work.run_on_main`): every rank resumes from the same checkpoint, and the shards
    are hashed once rather than on every rank.

    Raises:
        CheckpointError: on every rank, when rank 0 finds no intact checkpoint.
    """
    return run_on_main(ranks, lambda: latest_verified_checkpoint(run_dir), "verify the latest checkpoint")


def _first_failure(e: BaseException) -> BaseException:
    """The exception of the lowest failing rank inside DCP's ``CheckpointException`` (else ``e``)."""
    if isinstance(e, CheckpointException) and e.failures:
        return e.failures[min(e.failures)][0]
    return e


def _gather(mine: dict[str, str], ranks: Ranks) -> dict[str, str]:
    """Every rank's {file: sha256} merged (on rank 0; other ranks get their own)."""
    if ranks.world_size == 1:
        return dict(mine)
    out: list[dict[str, str] | None] = [None] * ranks.world_size if ranks.is_main else []
    dist.gather_object(mine, out if ranks.is_main else None, dst=0)
    merged: dict[str, str] = {}
    for part in out:
        merged.update(part or {})
    return merged if ranks.is_main else dict(mine)


def is_sharded(path: Path) -> bool:
    """Whether a (verified) checkpoint was written by :func:`save_sharded_checkpoint`."""
    try:
        return json.loads((path / MANIFEST).read_text()).get("layout") == LAYOUT
    except (OSError, ValueError, AttributeError):
        return False


def saved_world_size(path: Path) -> int:
    """The number of ranks that wrote a verified checkpoint (1 for the one-process format)."""
    manifest = json.loads((path / MANIFEST).read_text())
    return int(manifest.get("world_size", 1)) if manifest.get("layout") == LAYOUT else 1


def load_sharded_checkpoint(
    path: Path,
    modules: nn.Module,
    optimizer: torch.optim.Optimizer,
    ranks: Ranks,
    trainable_only: bool = False,
) -> dict[str, Any]:
    """Restore a DCP checkpoint of any number of ranks into this run's modules and optimizer, in place
    (DCP reshards to this run's ranks); return the saved non-tensor state. A collective under torchrun.

    Call :func:`ekd.train.checkpoint.verify_checkpoint` first.

    Raises:
        CheckpointError: a file cannot be parsed or does not fit the model (one line naming the checkpoint).
    """
    try:
        state = _load_pickle(path / "state.pt", "cpu")
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise ValueError(f"state.pt lacks {[k for k in STATE_KEYS if k not in state]}")
        # this run's layout, filled in place
        model_state, optim_state = get_state_dict(modules, optimizer, options=_options(trainable_only))
        # get_state_dict gives a fresh optimizer state for every parameter; a parameter that had no gradient
        # before the checkpoint has none saved, and must stay without (AdamW's step count starts at its
        # first gradient)
        saved = set(SafeReader(path).read_metadata().state_dict_metadata)
        optim_state["state"] = {
            name: s
            for name, s in optim_state["state"].items()
            if any(f"optim.state.{name}.{k}" in saved for k in s)
        }
        target = {"model": model_state, "optim": optim_state}
        with warnings.catch_warnings():  # DCP warns that one process without a process group loads alone
            warnings.filterwarnings("ignore", message=".*single process.*")
            dcp.load(
                target,
                storage_reader=SafeReader(path),
                planner=SafeLoadPlanner(),
                no_dist=ranks.world_size == 1,
            )
        _set_state(modules, optimizer, target["model"], target["optim"], False, trainable_only)
    except CheckpointError:
        raise
    except (Exception, CheckpointException) as e:  # a shard that does not parse or fit: one line
        raise unreadable(path, _first_failure(e)) from None
    return state


def load_full_checkpoint(
    path: Path,
    modules: nn.Module,
    optimizer: torch.optim.Optimizer,
    map_location: str | torch.device = "cpu",
    trainable_only: bool = False,
) -> dict[str, Any]:
    """Restore a one-process checkpoint (:mod:`ekd.train.checkpoint`'s files) on W ranks: full tensors on every
    rank go through ``set_state_dict(full_state_dict=True)``, which keeps a DDP replica whole and cuts an
    FSDP2 shard out of them. Returns the saved non-tensor state.

    Raises:
        CheckpointError: a file cannot be parsed or does not fit the model.
    """
    try:
        student = safetensors.torch.load_file(str(path / "student.safetensors"))
        model_state = {f"student.{k}": v for k, v in student.items()}
        if (path / "extra.safetensors").is_file():
            extra = safetensors.torch.load_file(str(path / "extra.safetensors"))
            with safetensors.safe_open(str(path / "extra.safetensors"), "pt") as f:
                aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
            extra.update({alias: extra[name] for alias, name in aliases.items()})
            model_state.update({f"extras.{k}": v for k, v in extra.items()})
        saved = _load_pickle(path / "optimizer.pt", map_location)
        state = _load_pickle(path / "state.pt", "cpu")
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise ValueError(f"state.pt lacks {[k for k in STATE_KEYS if k not in state]}")
        # tied weights are stored once (safetensors): fill every other name of a shared parameter
        names = _parameter_names(modules)
        for aliases in _shared_names(modules):
            have = [n for n in aliases if n in model_state]
            for n in aliases:
                if have and n not in model_state:
                    model_state[n] = model_state[have[0]]
        # optimizer.pt is keyed by position in the param groups (torch's format); name each position
        order = [names[id(p)] for group in optimizer.param_groups for p in group["params"]]
        optim_state = {
            "state": {order[int(i)]: s for i, s in saved["state"].items()},
            "param_groups": [
                {**g, "params": [order[int(i)] for i in g["params"]]} for g in saved["param_groups"]
            ],
        }
        _set_state(modules, optimizer, model_state, optim_state, True, trainable_only)
    except CheckpointError:
        raise
    except Exception as e:
        raise unreadable(path, e) from None
    return state


def _options(trainable_only: bool, full: bool = False, strict: bool = True) -> StateDictOptions:
    return StateDictOptions(
        full_state_dict=full, strict=strict and not trainable_only, ignore_frozen_params=trainable_only
    )


def _set_state(
    modules: nn.Module,
    optimizer,
    model_state: dict,
    optim_state: dict,
    full: bool,
    trainable_only: bool = False,
) -> None:
    """``set_model_state_dict`` (strict: every weight present, or every trained one with ``trainable_only``)
    and ``set_optimizer_state_dict`` (a parameter without saved state — no gradient before the checkpoint —
    stays without state, as in the saved run)."""
    if trainable_only:
        trained = {
            state_dict_name(n) for n, p in modules.named_parameters(remove_duplicate=False) if p.requires_grad
        }
        if missing := sorted(trained - set(model_state)):
            raise ValueError(f"no saved tensor for trained parameter(s) {missing[:3]}")
    set_model_state_dict(modules, model_state, options=_options(trainable_only, full))
    set_optimizer_state_dict(
        modules, optimizer, optim_state, options=StateDictOptions(full_state_dict=full, strict=False)
    )
    names = _parameter_names(modules)
    keep = set(optim_state["state"])
    for p in [p for p in optimizer.state if names.get(id(p)) not in keep]:
        del optimizer.state[p]  # set_optimizer_state_dict initialized it with a zero-gradient step


def _parameter_names(modules: nn.Module) -> dict[int, str]:
    """id(parameter) → its first state-dict name (a tied parameter has several; the optimizer holds it once)."""
    names: dict[int, str] = {}
    for name, p in modules.named_parameters(remove_duplicate=False):
        names.setdefault(id(p), state_dict_name(name))
    return names


def _shared_names(modules: nn.Module) -> list[list[str]]:
    """The state-dict names of each tensor that several keys share (tied embeddings)."""
    groups: dict[int, list[str]] = {}
    for name, p in modules.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(state_dict_name(name))
    return [g for g in groups.values() if len(g) > 1]


class SafeLoadPlanner(DefaultLoadPlanner):
    """DCP's default load planner, but the non-tensor leaves are read with ``torch.load(weights_only=True)``
    (numbers, strings, containers; never an arbitrary object)."""

    def load_bytes(self, read_item: ReadItem, value: io.BytesIO) -> None:
        obj = torch.load(value, weights_only=True)
        if self.flatten_state_dict:
            set_element(self.original_state_dict, self.mappings[read_item.dest_index.fqn], obj)
        else:
            self.state_dict[read_item.dest_index.fqn] = obj


class SafeReader(FileSystemReader):
    """DCP's file-system reader with ``.metadata`` read by :class:`_MetadataUnpickler` (an allowlist)."""

    def read_metadata(self, *args: Any, **kwargs: Any) -> dcp_metadata.Metadata:
        rank = kwargs.get("rank")
        with self.fs.create_stream(self._get_metadata_path(rank), "rb") as f:
            metadata = _MetadataUnpickler(f).load()
        if not isinstance(metadata, dcp_metadata.Metadata):
            raise ValueError(f"{METADATA} does not hold DCP metadata")
        if getattr(metadata, "storage_meta", None) is None:
            metadata.storage_meta = dcp_metadata.StorageMeta()
        metadata.storage_meta.load_id = self.load_id
        return metadata


_METADATA_CLASSES = {
    ("torch.distributed.checkpoint.filesystem", "_StorageInfo"): _StorageInfo,
    ("torch", "Size"): torch.Size,
    ("pathlib", "PosixPath"): pathlib.PosixPath,
    ("pathlib", "WindowsPath"): pathlib.PurePosixPath,  # a path is only a label of where it was written
    ("pathlib", "PurePosixPath"): pathlib.PurePosixPath,
}


class _MetadataUnpickler(pickle.Unpickler):
    """Resolves only the globals DCP's metadata is made of (the "restricting globals" recipe of the pickle
    docs); anything else — ``os.system``, ``builtins.eval`` — raises ``UnpicklingError``."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _METADATA_CLASSES:
            return _METADATA_CLASSES[(module, name)]
        if module == "torch.distributed.checkpoint.metadata" and not name.startswith("__"):
            value = getattr(dcp_metadata, name, None)
            if isinstance(value, type):  # dataclasses and enums of DCP's metadata
                return value
        if module == "torch" and isinstance(getattr(torch, name, None), torch.dtype):
            return getattr(torch, name)
        if module == "torch.serialization" and name == "_get_layout":
            return _layout
        raise pickle.UnpicklingError(f"{METADATA} refers to {module}.{name}, which DCP metadata never holds")


def _layout(name: str) -> torch.layout:
    """``torch.serialization._get_layout``, restricted to torch's layouts."""
    value = getattr(torch, str(name).removeprefix("torch."), None)
    if not isinstance(value, torch.layout):
        raise pickle.UnpicklingError(f"unknown tensor layout {name!r} in {METADATA}")
    return value


def restore_checkpoint(
    path: Path,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_modules: dict[str, nn.Module] | None,
    ranks: Ranks,
    micro_batch_size: int,
    map_location: str | torch.device = "cpu",
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Resume from a verified checkpoint of either layout on this run's ranks; return its saved state.

    A checkpoint written by another number of ranks is resharded (one log line says so); the global
    micro-batch (ranks × ``train.micro_batch_size``) must stay what it was, or the run would see other batches.
    ``only``: the student tensors a checkpoint holds (a LoRA student's trained ones), None = all.

    Raises:
        CheckpointError: unreadable, does not fit the model, or another global micro-batch (one line).
    """
    saved_world = saved_world_size(path)
    if is_sharded(path):
        modules = training_state(student, extra_modules)
        state = load_sharded_checkpoint(path, modules, optimizer, ranks, only is not None)
    elif ranks.world_size > 1:
        modules = training_state(student, extra_modules)
        state = load_full_checkpoint(path, modules, optimizer, map_location, only is not None)
    else:
        state = load_checkpoint(path, student, optimizer, extra_modules, map_location, only=only)
    try:
        check_global_batch(path, state, saved_world, ranks.world_size, micro_batch_size)
    except CheckpointError as e:
        e.copy_of_rank0 = not ranks.is_main  # every rank finds it alike: rank 0 says it, once
        raise
    if saved_world != ranks.world_size:
        log.info(
            "resharding checkpoint %s of %s onto %d: model and optimizer state redistributed by "
            "torch.distributed.checkpoint, global micro-batch unchanged",
            path.name,
            counted(saved_world, "rank"),
            ranks.world_size,
        )
    return state


def check_global_batch(path: Path, state: dict, saved_world: int, world: int, micro_batch_size: int) -> None:
    """Refuse a resume whose global micro-batch (ranks × micro-batch) differs from the checkpoint's.

    Raises:
        CheckpointError: naming both products and the ``train.micro_batch_size`` that keeps it.
    """
    saved_micro = state.get("micro_batch_size")
    if saved_micro is None:  # written before the field existed: nothing to compare
        return
    rows = int(saved_world) * int(saved_micro)
    if rows == world * micro_batch_size:
        return
    fix = (
        f"set train.micro_batch_size={rows // world}"
        if rows % world == 0
        else f"run on a number of ranks that divides {rows}"
    )
    raise CheckpointError(
        f"--resume: checkpoint {path.name} was trained with {counted(saved_world, 'rank')} × micro-batch "
        f"{saved_micro} = {counted(rows, 'row')} per micro-batch, this run has {world} × {micro_batch_size} = "
        f"{world * micro_batch_size}; "
        f"{fix} to keep the global batch"
    )
