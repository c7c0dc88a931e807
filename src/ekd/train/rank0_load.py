"""Loading under ``torchrun`` without one whole copy per rank: global rank 0 reads the weights, the other ranks
build the model on the ``meta`` device and, once it is sharded, receive their shards from rank 0.

    torchrun --nproc_per_node=8 -m ekd distill CONFIG train.parallel=fsdp teacher.placement=shard

torch's mechanism (the torchtune recipe): rank 0 keeps the full state dict of its unsharded model; after
``fully_shard`` the other ranks materialize their shards with ``to_empty`` (uninitialized memory) and
``torch.distributed.checkpoint.state_dict.set_model_state_dict(..., StateDictOptions(full_state_dict=True,
broadcast_from_rank0=True))`` sends one tensor at a time from rank 0, each rank keeping its shard. Values are
copied into the existing shards (never assigned), so a tied head stays one parameter; buffers (rotary
``inv_freq`` is non-persistent, so not in the state dict) are sent from rank 0 as well.

Which models (:func:`loads_on_rank0`): the teacher with ``teacher.placement=shard``, the student with
``train.parallel=fsdp`` — except with ``train.cpu_offload`` (the shards live in CPU memory, which NCCL cannot
broadcast into) or ``method.objective=uncertainty`` (it copies the whole initial student on every rank).
DDP and a replicated teacher keep a whole copy per rank: they need one anyway.

Peak memory while loading: rank 0 holds its whole copy plus its own shards (``fully_shard`` creates them while
the whole copy is kept for the broadcast), every other rank its shards only — one whole copy per node instead of
one per rank (docs/benchmarks.md, "Scaling out": 2 gloo ranks, rank 1 1816 → 1228 MiB, rank 0 1816 → 2476).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
import torch.distributed as dist
from torch import nn

from ekd.errors import EkdError

log = logging.getLogger(__name__)


def loads_on_rank0(cfg, role: str, world_size: int) -> bool:
    """Whether only global rank 0 reads the weights of ``role`` ('student' or 'teacher'); the same answer on
    every rank (it follows from the config and the world size)."""
    if world_size <= 1:
        return False
    if role == "teacher":
        return cfg.teacher.placement == "shard"
    return (
        cfg.train.parallel == "fsdp"
        and not cfg.train.cpu_offload
        and cfg.method.objective != "uncertainty"
        and cfg.model.lora_r == 0
    )


def load_on_rank0(
    ranks, what: str, load: Callable[[], nn.Module], empty: Callable[[], nn.Module]
) -> nn.Module:
    """``load()`` (the whole model) on global rank 0, ``empty()`` (the same model on the meta device) on the
    others. Collective on the host group: a failure on any rank is raised on every rank (none is left waiting
    in the shard broadcast that follows).

    Raises:
        EkdError: the failure of rank 0 (re-raised as itself there) or of another rank, one line.
    """
    model, failure, status = None, None, None
    try:
        model = load() if ranks.is_main else empty()
    except BaseException as e:  # told to every rank below, then re-raised
        failure = e
        status = str(e) if isinstance(e, EkdError) else f"{type(e).__name__}: {e}"
    statuses: list = [None] * ranks.world_size
    dist.all_gather_object(statuses, status, group=ranks.host)
    if failure is not None:
        raise failure
    for rank, s in enumerate(statuses):
        if s is not None:
            raise EkdError(f"rank {rank} could not load {what}: {s}")
    return model


def rank0_state(root: nn.Module) -> dict[str, torch.Tensor]:
    """The full state dict of the unsharded ``root`` on global rank 0 (references, no copy; canonical names),
    ``{}`` on the other ranks. Call before ``fully_shard``."""
    if dist.get_rank() != 0:
        return {}
    from torch.distributed.checkpoint.state_dict import get_model_state_dict

    return get_model_state_dict(root)


def receive_shards(root: nn.Module, full: dict[str, torch.Tensor], device: torch.device) -> None:
    """After ``fully_shard`` of ``root`` (and before its first forward): every rank's shards and buffers get
    rank 0's values. Collective (every rank calls it; ``full`` from :func:`rank0_state`).

    On the other ranks the meta parameters are materialized on ``device`` first; rank 0's own shards already
    hold its values (they are copied again, unchanged).
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, set_model_state_dict

    if dist.get_rank() != 0:
        root.to_empty(device=device)
    set_model_state_dict(
        root, full, options=StateDictOptions(full_state_dict=True, broadcast_from_rank0=True)
    )
    buffers = list(root.named_buffers(remove_duplicate=False))  # a shared buffer under each name
    box = [{n: b.cpu() for n, b in buffers} if dist.get_rank() == 0 else None]
    dist.broadcast_object_list(box, src=0)
    if dist.get_rank() != 0:
        for name, old in buffers:
            owner, _, leaf = name.rpartition(".")
            root.get_submodule(owner)._buffers[leaf] = box[0][name].to(old.device)


def load_for_rank(cfg, role: str, ranks, load: Callable[[bool], nn.Module]) -> nn.Module:
    """``load(empty)`` as this rank needs it: whole (``empty=False``) on every rank, or — when
    :func:`loads_on_rank0` — whole on rank 0 and on the meta device (``empty=True``) elsewhere."""
    if not loads_on_rank0(cfg, role, ranks.world_size):
        return load(False)
    log.info("model.%s: rank 0 reads the weights, the other ranks receive their shards", role)
    return load_on_rank0(ranks, f"model.{role}", lambda: load(False), lambda: load(True))
