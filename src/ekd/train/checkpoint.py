"""Checkpoints: written atomically with a sha256 per file, verified before they are loaded, loaded
without unpickling arbitrary objects.

Layout of ``runs/<name>/checkpoints/step-000100/``::

    student.safetensors   student weights (safetensors; shared/tied tensors handled)
    optimizer.pt          AdamW state (tensors + numbers; loaded with ``weights_only=True``)
    state.pt              step, data position, method state (policies, temperatures, extras), the run's
                          seconds and KD positions so far (``run_totals``; optional: older checkpoints lack it)
    extra.safetensors     method modules trained with or kept beside the student (EGAD projection, EMA copy,
                          frozen initial student); tensors shared by tied weights stored once, aliases in metadata
    manifest.json         {"format": "ekd-checkpoint", "step": 100, "files": {name: sha256, ...}}

This is the one-process format; under ``torchrun`` every rank writes its shards with DCP instead
(:mod:`ekd.train.sharded_checkpoint`, ``"layout": "dcp"`` in the manifest), verified by the same
:func:`verify_checkpoint`.

A checkpoint is written to ``step-000100.tmp/`` and renamed, then ``checkpoints/latest`` is replaced
atomically; a crash at any point leaves the previous checkpoint intact. Every file goes through
:mod:`ekd.io` (a full disk is one line naming the directory). On resume :func:`latest_verified_checkpoint`
checks every file against the manifest, newest first, and falls back (with a log line) to the newest
checkpoint that verifies.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import safetensors.torch
import torch
from torch import nn

from ekd.errors import EkdError
from ekd.io import (
    atomic_file,
    atomic_write_bytes,
    atomic_write_text,
    bytes_under,
    file_sha256,
    fsync_dir,
    replace_dir,
    restore_dir,
    writing,
)
from ekd.signals import deferred_interrupts
from ekd.train.checkpoint_dirs import checkpoint_dirs, checkpoint_step, latest_checkpoint

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
FORMAT = "ekd-checkpoint"
STATE_KEYS = ("step", "loader", "policy")


class CheckpointError(EkdError):
    """A checkpoint is missing, corrupt or unreadable."""


def checkpoint_dir(run_dir: Path, step: int) -> Path:
    return run_dir / "checkpoints" / f"step-{step:06d}"


def _student_tensors(student: nn.Module, only: set[str] | None = None) -> dict[str, torch.Tensor]:
    """The student's state dict with tied duplicates removed (what ``safetensors.torch.save_model`` keeps);
    ``only``: the names to keep (a LoRA student's trained tensors), None = all."""
    state = student.state_dict()
    if only is not None:
        state = {k: v for k, v in state.items() if k in only}
    for removed in safetensors.torch._remove_duplicate_names(state).values():
        for name in removed:
            del state[name]
    return {k: v.detach().contiguous() for k, v in state.items()}


def save_checkpoint(
    run_dir: Path,
    step: int,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    state: dict[str, Any],
    extra_modules: dict[str, nn.Module] | None = None,
    keep: int = 2,
    only: set[str] | None = None,
) -> Path:
    """Write checkpoint ``step`` atomically with its sha256 manifest and prune to the newest ``keep``.

    ``only``: the student tensors to save (a LoRA student's adapters and trained head; the frozen base is
    rebuilt from ``model.student``); None = the whole student.

    Raises:
        DiskError: the disk is full or not writable (the previous checkpoints are intact).
    """
    final = checkpoint_dir(run_dir, step)
    tmp = final.with_name(final.name + ".tmp")
    hashes: dict[str, str] = {}
    with writing(final.parent):
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir(parents=True)
        try:
            hashes["student.safetensors"] = atomic_write_bytes(
                tmp / "student.safetensors", safetensors.torch.save(_student_tensors(student, only))
            )
            for name, obj in (("optimizer.pt", optimizer.state_dict()), ("state.pt", state)):
                with atomic_file(tmp / name) as f:
                    torch.save(obj, f)
                hashes[name] = f.sha256
            if extra_modules:
                tensors, aliases = unshared_tensors(
                    {
                        f"{name}.{k}": v.detach()
                        for name, mod in extra_modules.items()
                        for k, v in mod.state_dict().items()
                    }
                )
                metadata = {"aliases": json.dumps(aliases)} if aliases else None
                hashes["extra.safetensors"] = atomic_write_bytes(
                    tmp / "extra.safetensors", safetensors.torch.save(tensors, metadata=metadata)
                )
            manifest = {"format": FORMAT, "step": int(step), "files": hashes}
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)  # a full disk must not keep a half checkpoint's bytes
            raise
        seal_checkpoint(tmp, final, manifest, keep)
    return final


def seal_checkpoint(tmp: Path, final: Path, manifest: dict[str, Any], keep: int) -> None:
    """Finish a checkpoint written into ``tmp``: its manifest (written last: a directory without one is no
    checkpoint), ``tmp`` put in place of ``final`` (:func:`ekd.io.replace_dir`: a kill at any instant leaves
    one of them whole, a failure puts the one before back), the directory synced, ``latest`` pointed at it and
    the checkpoints pruned to the newest ``keep``. Shared by the one-process and the sharded (DCP) format.

    Raises:
        DiskError: (under :func:`ekd.io.writing`) the disk is full or not writable; ``tmp`` is removed.
    """
    root = final.parent
    try:
        atomic_write_text(tmp / MANIFEST, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        restore_dir(final)
        raise
    # once the checkpoint is in place, an interrupt waits for the pointer and the pruning (try-out 84, F4: a
    # Ctrl-C there left keep + 1 checkpoints, or an old one half deleted)
    with deferred_interrupts():
        fsync_dir(root)  # the renames survive a power cut
        atomic_write_text(root / "latest", final.name)
        _prune(root, keep)


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
    """Keep the newest ``keep`` checkpoints in ``root``, and remove what a killed writer left half written: a
    ``step-N.tmp`` directory other than the one just sealed (renamed by now) is no writer's any more — checkpoints
    are written by this run alone, under its lock (try-out 134, F1: one left by a ``kill -9`` stayed for good once a
    ``--resume`` with another ``train.checkpoint_every`` never wrote step N again, a whole checkpoint's bytes
    outside ``keep_checkpoints``)."""
    steps = checkpoint_dirs(root)
    for old in steps[: max(0, len(steps) - max(keep, 1))]:
        shutil.rmtree(old, ignore_errors=True)
    for stray in root.glob("step-*.tmp"):
        if stray.is_dir() and stray.name[5:-4].isdigit():
            size = bytes_under(stray)
            shutil.rmtree(stray, ignore_errors=True)
            log.info(
                "removed %s, a checkpoint a killed run left half written (%.1f MiB)", stray, size / 2**20
            )


def checkpoint_run(path: Path) -> dict[str, Any] | None:
    """What a verified checkpoint records of the run that wrote it (``{'id', 'name'}``), None where it records
    nothing (an older ekd's) or cannot be read (:func:`load_checkpoint` then says so)."""
    try:
        state = _load_pickle(path / "state.pt", "cpu")
    except Exception:  # noqa: BLE001 — unreadable: the load that follows names the file
        return None
    run = state.get("run") if isinstance(state, dict) else None
    return run if isinstance(run, dict) else None


def verify_checkpoint(path: Path) -> None:
    """Check every file of a checkpoint against the sha256 in its manifest.

    Raises:
        CheckpointError: naming the file that is missing, unlisted or fails its checksum.
    """
    manifest_path = path / MANIFEST
    try:
        manifest = json.loads(manifest_path.read_text())
        files = manifest["files"]
        if manifest.get("format") != FORMAT or not isinstance(files, dict) or not files:
            raise ValueError
        step = checkpoint_step(path)
        if manifest.get("step") != step:  # a checkpoint copied or renamed here (try-out 145, F6)
            raise CheckpointError(
                f"{manifest_path} is of step {manifest.get('step')}, not {step} as its directory {path.name} says "
                "(copied or renamed from another step?)"
            )
    except FileNotFoundError:
        raise CheckpointError(f"{manifest_path} is missing (no checksums to verify the checkpoint)") from None
    except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError):
        raise CheckpointError(f"{manifest_path} is corrupt") from None
    layout = manifest.get("layout")
    required = (
        (".metadata", "state.pt") if layout == "dcp" else ("student.safetensors", "optimizer.pt", "state.pt")
    )
    for name in required:
        if name not in files:
            raise CheckpointError(f"{manifest_path} does not list {name}")
    for name, digest in files.items():
        file = path / str(name)
        if Path(str(name)).name != name or not file.is_file():
            raise CheckpointError(f"{file} is missing")
        try:
            actual = file_sha256(file)
        except OSError as e:
            raise CheckpointError(f"{file} cannot be read ({e.strerror or e})") from None
        if actual != digest:
            raise CheckpointError(f"{file} is corrupt (its sha256 differs from the checkpoint manifest)")


def latest_verified_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose files all match their sha256; None when the run has no checkpoint.

    A newer checkpoint that fails verification is skipped with a warning naming the file (only when an
    older one is used instead; otherwise the error alone says it).

    Raises:
        CheckpointError: checkpoints exist but none verifies (the message names the newest one's problem and
            every older one that failed too).
    """
    newest = latest_checkpoint(run_dir)
    candidates = sorted(
        set(checkpoint_dirs(run_dir / "checkpoints")) | ({newest} if newest else set()), reverse=True
    )
    skipped: list[tuple[Path, str]] = []
    for path in candidates:
        try:
            verify_checkpoint(path)
        except CheckpointError as e:
            skipped.append((path, str(e)))
            continue
        for bad, problem in skipped:
            log.warning("skipping checkpoint %s: %s", bad.name, problem)
        if skipped:
            log.warning("resuming from the previous intact checkpoint %s", path)
        return path
    if skipped:
        older = [p.name for p, _ in skipped[1:]]
        also = (
            f"; the older {', '.join(older)} {'fails' if len(older) == 1 else 'fail'} verification too"
            if older
            else ""
        )
        raise CheckpointError(
            f"no intact checkpoint in {run_dir / 'checkpoints'} ({skipped[0][1]}{also}); restore it from a "
            "backup or start the run again under another run.name"
        )
    return None


def load_checkpoint(
    path: Path,
    student: nn.Module,
    optimizer: torch.optim.Optimizer,
    extra_modules: dict[str, nn.Module] | None = None,
    map_location: str | torch.device = "cpu",
    only: set[str] | None = None,
) -> dict[str, Any]:
    """Restore student, optimizer and extra modules in place; return the saved state dict.

    ``only``: the student tensors the checkpoint holds (as passed to :func:`save_checkpoint`); the others
    keep the values they were loaded with.

    Call :func:`verify_checkpoint` first; this reads only what it loads (safetensors, ``weights_only`` pickles).

    Raises:
        CheckpointError: a file cannot be parsed or does not fit the model (one line naming the checkpoint).
    """
    try:
        missing, unexpected = safetensors.torch.load_model(
            student, str(path / "student.safetensors"), strict=False
        )
        if only is not None:
            missing = [k for k in missing if k in only]
        if unexpected or [k for k in missing if not k.endswith("lm_head.weight")]:
            raise CheckpointError(
                f"checkpoint {path}: student weights do not match the model (missing {missing[:3]}, unexpected {unexpected[:3]})"
            )
        optimizer.load_state_dict(_load_pickle(path / "optimizer.pt", map_location))
        state = _load_pickle(path / "state.pt", "cpu")
        if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
            raise ValueError(f"state.pt lacks {[k for k in STATE_KEYS if k not in state]}")
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
    except Exception as e:  # any parse failure of a checkpoint file is "unreadable", never a traceback
        raise unreadable(path, e) from None
    return state


def unreadable(path: Path, e: BaseException) -> CheckpointError:
    text = str(e).strip()
    first = text.splitlines()[0][:200] if text else type(e).__name__
    return CheckpointError(
        f"checkpoint {path} is unreadable ({first}); delete it to resume from the previous one"
    )


def _load_pickle(path: Path, map_location: str | torch.device) -> Any:
    """``torch.load`` with ``weights_only=True``: tensors, numbers and containers only, never arbitrary code."""
    return torch.load(path, map_location=map_location, weights_only=True)
