"""Checkpoints of an FSDP2 run in the one-process format: full state dicts gathered to rank 0, written by
:func:`ekd.train.checkpoint.save_checkpoint`; on resume every rank reads them and keeps its shards.

A stop-gap until sharded ``torch.distributed.checkpoint`` checkpoints replace it: the gather costs one full
copy of the student and its AdamW state in rank 0's CPU memory. The optimizer state is keyed by parameter
name (``torch.distributed.checkpoint.state_dict``'s full form), so an FSDP2 checkpoint resumes under FSDP2
(any world size), not in one process or under DDP.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_optimizer_state_dict,
    set_model_state_dict,
    set_optimizer_state_dict,
)

from ekd.train.checkpoint import CheckpointError, _load_pickle, save_checkpoint, unreadable
from ekd.train.fsdp import full_state_dict, submodule_state


class _Held:
    """A state dict standing in for a module or optimizer in :func:`save_checkpoint`."""

    def __init__(self, state: dict):
        self._state = state

    def state_dict(self) -> dict:
        return self._state


def save_fsdp_checkpoint(
    run_dir: Path,
    step: int,
    root: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    frozen: dict[str, nn.Module],
    keep: int,
    is_main: bool,
) -> Path | None:
    """Gather the full model and optimizer state (collective: every rank calls) and write the checkpoint
    on rank 0. ``root``: the FSDP2 root of the student (``student``) and trained extras (``extras.<name>``);
    ``frozen``: the replicated extra modules (saved as they are). Returns the path on rank 0, else None."""
    model = full_state_dict(root)
    optim = get_optimizer_state_dict(
        root, optimizer, options=StateDictOptions(full_state_dict=True, cpu_offload=True)
    )
    if not is_main:
        return None
    trained = {name: _Held(submodule_state(model, f"extras.{name}")) for name in root.extras}
    return save_checkpoint(
        run_dir,
        step,
        _Held(submodule_state(model, "student")),
        _Held(optim),
        state,
        {**trained, **frozen},
        keep,
    )


def load_fsdp_checkpoint(
    path: Path, root: nn.Module, optimizer: torch.optim.Optimizer, frozen: dict[str, nn.Module]
) -> dict[str, Any]:
    """Restore a checkpoint written by :func:`save_fsdp_checkpoint` on every rank (each keeps its shards);
    return the saved state dict. Call ``verify_checkpoint`` first.

    Raises:
        CheckpointError: a file cannot be parsed or does not fit the model (one line naming the checkpoint).
    """
    try:
        model = {
            f"student.{k}": v
            for k, v in safetensors.torch.load_file(str(path / "student.safetensors")).items()
        }
        extra: dict[str, torch.Tensor] = {}
        if (path / "extra.safetensors").is_file():
            extra = safetensors.torch.load_file(str(path / "extra.safetensors"))
            with safetensors.safe_open(str(path / "extra.safetensors"), "pt") as f:
                aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
            extra.update({alias: extra[name] for alias, name in aliases.items()})
        for name in root.extras:
            model.update({f"extras.{k}": v for k, v in extra.items() if k.startswith(f"{name}.")})
        result = set_model_state_dict(
            root, model, options=StateDictOptions(full_state_dict=True, strict=False)
        )
        missing = [k for k in result.missing_keys if not k.endswith("lm_head.weight")]  # tied: stored once
        if result.unexpected_keys or missing:
            raise CheckpointError(
                f"checkpoint {path}: student weights do not match the model (missing {missing[:3]}, "
                f"unexpected {result.unexpected_keys[:3]})"
            )
        set_optimizer_state_dict(
            root,
            optimizer,
            _load_pickle(path / "optimizer.pt", "cpu"),
            options=StateDictOptions(full_state_dict=True),
        )
        for name, mod in frozen.items():
            mod.load_state_dict({k[len(name) + 1 :]: v for k, v in extra.items() if k.startswith(f"{name}.")})
        state = _load_pickle(path / "state.pt", "cpu")
    except CheckpointError:
        raise
    except Exception as e:  # any parse failure of a checkpoint file is "unreadable", never a traceback
        raise unreadable(path, e) from None
    return state
