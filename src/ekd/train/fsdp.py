"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for the student and, optionally, the frozen teacher.

    torchrun --nproc_per_node=8 -m ekd distill CONFIG train.parallel=fsdp teacher.placement=shard

Layout: ``fully_shard`` on every decoder layer, then on a root module that holds the student and the extra
trained modules (EGAD's projection). The root's own group holds what no layer holds: the embeddings, the
final norm, the head (one parameter when tied to the embeddings) and the extras.

Why a root whose ``forward`` runs a closure: the fused chunked head/loss runs outside the model's
``forward``, where the head weight is a sharded DTensor. Run inside the root's forward, every use of a
trained parameter (body, head, projection) sees the full (unsharded) tensor, and FSDP2 reduce-scatters its
gradient after backward. The root's group is not resharded after forward (FSDP2's rule for the root), so
it stays gathered until backward ends.

Gradients: every loss term is divided by its *global* count (DESIGN decision 4), so the right gradient is
the plain **sum** over ranks; FSDP2's default averages, so the divide factor is set to 1 with sum-only
collectives. Accumulation micro-batches skip the reduce-scatter (``set_requires_gradient_sync(False)``).
FSDP2 reduces a group's gradients only if every rank has them, so the root adds ``0·Σp`` for its own
parameters (a micro-batch may use no head row or no projection on one rank).

Uses of the student outside the step (on-policy generation, the bandit's KL after the step, evaluation on
rank 0) run inside :func:`gathered`: every rank all-gathers every parameter once, then no forward
communicates, so ranks may run different numbers of forwards (generation lengths differ) or only rank 0.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.distributed.fsdp import (
    CPUOffloadPolicy,
    FSDPModule,
    MixedPrecisionPolicy,
    OffloadPolicy,
    fully_shard,
)

from ekd.models.layers import decoder_layers
from ekd.train.distributed import TrainedModules, outside_layers
from ekd.train.rank0_load import rank0_state, receive_shards

log = logging.getLogger(__name__)


class ShardedTrainedModules(TrainedModules):
    """:class:`TrainedModules` as the FSDP2 root: ``root_params`` are its own group's parameters (each gets
    ``0·Σp``, so it has a gradient on every rank: FSDP2 reduce-scatters a group only as a whole)."""


class FrozenRoot(nn.Module):
    """The FSDP2 root of a frozen model (the sharded teacher): owns its embeddings, norm and head."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, run: Callable[[], Any]) -> Any:
        return run()


def mixed_precision(device: torch.device, precision: str) -> MixedPrecisionPolicy:
    """bf16 parameters and compute with fp32 gradient reduction on CUDA (unless ``train.precision=fp32``);
    fp32 everywhere on CPU."""
    if device.type == "cuda" and precision != "fp32":
        return MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    return MixedPrecisionPolicy()


def shard_student(
    student: nn.Module,
    extras: dict[str, nn.Module],
    device: torch.device,
    precision: str = "auto",
    cpu_offload: bool = False,
    from_rank0: bool = False,
) -> ShardedTrainedModules:
    """``fully_shard`` every decoder layer of ``student``, then the root (student + extras), in place.

    The modules' parameters become DTensor shards: build the optimizer *after* this. The root is lazily
    initialized here (a no-op forward), so it, not a layer, is FSDP2's root whatever runs first.
    ``from_rank0``: only global rank 0 holds the weights (the others built the student on the meta device);
    every rank receives its shards from it (:mod:`ekd.train.rank0_load`). Collective then.
    """
    mp = mixed_precision(device, precision)
    offload = CPUOffloadPolicy() if cpu_offload else OffloadPolicy()
    root = ShardedTrainedModules(student, extras)
    full = rank0_state(root) if from_rank0 else None
    layers = decoder_layers(student)
    for layer in layers:
        fully_shard(layer, mp_policy=mp, offload_policy=offload)
    root.root_params = outside_layers(root)
    fully_shard(root, mp_policy=mp, offload_policy=offload)
    for m in root.modules():
        if isinstance(m, FSDPModule):
            m.set_gradient_divide_factor(1.0)  # a sum over ranks: our terms are already global
            m.set_force_sum_reduction_for_comms(True)  # plain SUM collectives (gloo has no PREMUL_SUM)
    if full is not None:
        receive_shards(root, full, device)
        del full  # rank 0's whole copy
    _init_root(root)
    return root


def shard_frozen(
    model: nn.Module, device: torch.device | None = None, from_rank0: bool = False
) -> FrozenRoot:
    """``fully_shard`` a frozen model (the teacher): each decoder layer resharded after its forward, the
    root group (embeddings, norm, head) gathered by ``unshard()`` and freed by ``reshard()``.
    ``from_rank0``: as in :func:`shard_student` (shards materialized on ``device``)."""
    root = FrozenRoot(model)
    full = rank0_state(root) if from_rank0 else None
    for layer in decoder_layers(model):
        fully_shard(layer, reshard_after_forward=True)
    fully_shard(root)
    if full is not None:
        receive_shards(root, full, device or torch.device("cpu"))
        del full
    _init_root(root)
    return root


def _init_root(root: nn.Module) -> None:
    """Make ``root`` FSDP2's root (a no-op forward runs its lazy init), then free its gathered group."""
    with torch.no_grad():
        root(lambda: None)
    root.reshard()


def fsdp_modules(*roots: nn.Module | None) -> list[FSDPModule]:
    return [m for r in roots if r is not None for m in r.modules() if isinstance(m, FSDPModule)]


@contextmanager
def gathered(*roots: nn.Module | None) -> Iterator[None]:
    """Every parameter under ``roots`` all-gathered on every rank for the block, then resharded.

    Collective on entry and exit (every rank must enter); inside, forwards do not communicate, so one rank
    may run alone (evaluation on rank 0) or ranks may run different numbers of forwards (generation): FSDP2
    forgets them on exit (:func:`forget_recorded_forwards`), so use it between steps only, never between a
    forward and its backward nor between accumulation micro-batches. transformers' ``generate`` syncs every token
    across ranks for a model it sees FSDP-managed (``synced_gpus``); inside, it sees none (try-out 148, F1: on-policy
    generation of another number of calls per rank, and lm-eval's generation tasks on rank 0 alone, hung).
    Memory: the full model(s) on every rank for the duration.
    """
    modules = fsdp_modules(*roots)
    if not modules:
        yield
        return
    for m in modules:
        m.set_reshard_after_forward(False, recurse=False)
        m.unshard()
    # torch marks every module under fully_shard for Dynamo; transformers reads the mark as "sync generation"
    marked = [
        m for r in roots if r is not None for m in r.modules() if getattr(m, "_is_fsdp_managed_module", False)
    ]
    for m in marked:
        m._is_fsdp_managed_module = False
    try:
        yield
    finally:
        for m in marked:
            m._is_fsdp_managed_module = True
        for m in modules:
            m.reshard()
        for m in modules:
            if not isinstance(m, (ShardedTrainedModules, FrozenRoot)):  # the roots keep FSDP2's root rule
                m.set_reshard_after_forward(True, recurse=False)
        _forget_forwards(roots)


def _forget_forwards(roots: tuple[nn.Module | None, ...]) -> None:
    """Forget the forwards run inside :func:`gathered`. FSDP2 records each forward's order of parameter groups for
    the next backward's prefetch; forwards only some ranks ran (evaluation on rank 0, generation of other lengths)
    left there make that backward prefetch another layer on one rank than on the other, and the collectives pair an
    all-gather with a reduce-scatter: a hang (try-out 145, F3: every 2-rank FSDP2 run of a student with more than one
    layer whose starting evaluation gave rank 1 no batch). ``reset_iter_state`` (FSDP2's public reset of an
    iteration's trackers, on each root) clears them; here, between steps, no gradient reduction is in flight for it
    to discard."""
    for root in roots:
        if isinstance(root, FSDPModule):
            forget_recorded_forwards(root)


def forget_recorded_forwards(root: FSDPModule) -> None:
    """Reshard every group of FSDP2 ``root`` and forget the forwards it recorded for a backward: its public
    ``reset_iter_state``, or, on a torch whose FSDP2 has none yet, the same two private records cleared (review
    149, R3: an older FSDP2 raised AttributeError here, hiding the body's own error). Only between steps: it drops
    any gradient reduction in flight."""
    if hasattr(root, "reset_iter_state"):
        root.reset_iter_state()
        return
    for module in fsdp_modules(root):  # the root and every layer under it
        module.reshard()
        state = module._get_fsdp_state()
        groups = getattr(state, "_fsdp_param_groups", None) or [getattr(state, "_fsdp_param_group", None)]
        for group in (g for g in groups if g is not None):
            group._post_forward_indices.clear()
            group.comm_ctx.post_forward_order.clear()


def requires_gradient_sync(engine: nn.Module | None, sync: bool) -> None:
    """FSDP2's ``no_sync``: skip the reduce-scatter on accumulation micro-batches (gradients accumulate
    unsharded); sync on the last."""
    if isinstance(engine, FSDPModule):
        engine.set_requires_gradient_sync(sync)


def clip_grad_norm(params: list[nn.Parameter], max_norm: float) -> float:
    """``clip_grad_norm_`` for plain or DTensor (sharded) gradients: the total norm is reduced over the
    shards (``full_tensor``) so it equals the one-process norm, then every shard is scaled alike."""
    grads = [p.grad for p in params if p.grad is not None]
    if not grads:
        return 0.0
    total = torch.nn.utils.get_total_norm(grads, 2.0)
    if hasattr(total, "full_tensor"):
        total = total.full_tensor()
    if max_norm > 0:
        torch.nn.utils.clip_grads_with_norm_([p for p in params if p.grad is not None], max_norm, total)
    return float(total)


def full_state_dict(root: nn.Module) -> dict[str, torch.Tensor]:
    """The full (unsharded) state dict of ``root`` on rank 0, in CPU memory; ``{}`` on other ranks.
    Collective.

    A tied parameter (one head and embedding matrix) appears under each of its names as *one* tensor, as in
    an unsharded module's own state dict: gathered, each name got its own CPU copy, and ``save_pretrained``
    (which drops aliases by shared storage) would then store the tied head twice."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(root, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    first: dict[int, str] = {}
    for name, p in root.named_parameters(remove_duplicate=False):
        kept = first.setdefault(id(p), name)
        if kept != name and kept in state and name in state:
            state[name] = state[kept]
    return state


def submodule_state(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """The entries under ``prefix.`` with the prefix removed (``student.model.x`` → ``model.x``)."""
    p = prefix + "."
    return {k[len(p) :]: v for k, v in state.items() if k.startswith(p)}
