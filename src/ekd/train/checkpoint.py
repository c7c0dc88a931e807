"""Checkpoints: written atomically, loaded without unpickling arbitrary objects.

Layout of ``runs/<name>/checkpoints/step-000100/``::

    student.safetensors   student weights (safetensors; shared/tied tensors handled)
    optimizer.pt          AdamW state (tensors + numbers; loaded with ``weights_only=True``)
    state.pt              step, data position, method state (policies, temperatures, extras), RNG states
    extra.safetensors     method modules trained with or kept beside the student (EGAD projection, EMA copy,
                          frozen initial student); tensors shared by tied weights stored once, aliases in metadata

A checkpoint is written to ``step-000100.tmp/`` and renamed, then ``checkpoints/latest`` is replaced
atomically; a crash at any point leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ekd.errors import EkdError


class CheckpointError(EkdError):
    """A checkpoint is missing or unreadable."""


def atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def save_checkpoint(
    run_dir: Path,
    step: int,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra_modules: dict[str, nn.Module] | None = None,
    keep: int = 2,
) -> Path:
    """Write checkpoint ``step`` atomically and prune to the newest ``keep``."""
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)
    safetensors.torch.save_model(student, str(tmp / "student.safetensors"))
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(state, tmp / "state.pt")
    if extra_modules:
        state_dicts = {
            f"{name}.{k}": v.detach()
            for name, mod in extra_modules.items()
            for k, v in mod.state_dict().items()
        }
        tensors, aliases = unshared_tensors(state_dicts)
        metadata = {"aliases": json.dumps(aliases)} if aliases else None
        safetensors.torch.save_file(tensors, str(tmp / "extra.safetensors"), metadata=metadata)
    if final.exists():
        shutil.rmtree(final)
    tmp.rename(final)
    atomic_write_text(run_dir / "checkpoints" / "latest", final.name)
    _prune(run_dir / "checkpoints", keep)
    return final


def unshared_tensors(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """A state dict safetensors accepts: no two tensors share memory (tied embeddings, views of one buffer).

    A name whose tensor is exactly another's (same storage, offset, shape, strides, dtype: tied weights) is
    dropped and recorded as an alias; one that only overlaps another's storage is cloned.

    Returns:
        (name → contiguous CPU tensor, dropped name → kept name).
    """
    tensors: dict[str, torch.Tensor] = {}
    aliases: dict[str, str] = {}
    views: dict[tuple, str] = {}
    storages: set[tuple] = set()
    for name, t in state.items():
        storage = (t.device, t.untyped_storage().data_ptr())
        view = (*storage, t.storage_offset(), tuple(t.shape), t.stride(), t.dtype)
        if view in views and t.numel() > 0:
            aliases[name] = views[view]
            continue
        views[view] = name
        shared = storage in storages and t.numel() > 0
        storages.add(storage)
        t = t.cpu().contiguous()
        tensors[name] = t.clone() if shared else t
    return tensors, aliases


def _prune(root: Path, keep: int) -> None:
    steps = sorted(p for p in root.glob("step-*") if p.is_dir() and not p.name.endswith(".tmp"))
    for old in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest complete checkpoint, or None."""
    pointer = run_dir / "checkpoints" / "latest"
    if pointer.is_file():
        path = run_dir / "checkpoints" / pointer.read_text().strip()
        if path.is_dir():
            return path
    steps = sorted(
        p for p in (run_dir / "checkpoints").glob("step-*") if p.is_dir() and not p.name.endswith(".tmp")
    )
    return steps[-1] if steps else None


def load_checkpoint(
    path: Path,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_modules: dict[str, nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Restore student, optimizer and extra modules in place; return the saved state dict."""
    try:
        missing, unexpected = safetensors.torch.load_model(
            student, str(path / "student.safetensors"), strict=False
        )
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise CheckpointError(
                f"checkpoint {path}: student weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        optimizer.load_state_dict(
            torch.load(path / "optimizer.pt", map_location=map_location, weights_only=True)
        )
        state = torch.load(path / "state.pt", map_location="cpu", weights_only=True)
        if extra_modules:
            tensors = safetensors.torch.load_file(str(path / "extra.safetensors"))
            with safetensors.safe_open(str(path / "extra.safetensors"), "pt") as f:
                aliases = json.loads((f.metadata() or {}).get("aliases", "{}"))
            tensors.update({alias: tensors[name] for alias, name in aliases.items()})
            for name, mod in extra_modules.items():
                prefix = f"{name}."
                mod.load_state_dict({k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)})
    except CheckpointError:
        raise
    except (OSError, RuntimeError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"checkpoint {path} is unreadable ({first}); delete it to resume from the previous one"
        ) from None
    return state
