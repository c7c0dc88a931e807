"""The run directory: refuse to clobber a different run; write the resolved config atomically."""

from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from ekd.config import Config
from ekd.errors import RunDirError
from ekd.train.checkpoint import atomic_write_text

# keys that may change when resuming (budget, logging, evaluation); anything else makes it a different run
RESUMABLE_CHANGES = (
    "train.max_steps",
    "train.checkpoint_every",
    "train.keep_checkpoints",
    "log.",
    "eval.",
    "run.device",
)


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict) and prefix == "":
            out.update(_flat(v, f"{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def config_differences(saved: dict, current: dict) -> list[str]:
    a, b = _flat(saved), _flat(current)
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))


def prepare_run_dir(cfg: Config, resume: bool, overwrite: bool) -> Path:
    """Create or validate ``runs/<name>``. Returns the directory.

    Raises:
        RunDirError: the directory holds a run and neither ``--resume`` nor ``--overwrite`` was given, or
            ``--resume`` with a config that differs in more than budget/logging/eval keys.
    """
    run_dir = cfg.run_dir
    saved = run_dir / "config.yaml"
    if run_dir.exists() and any(run_dir.iterdir()):
        if overwrite:
            shutil.rmtree(run_dir)
        elif not saved.is_file():
            raise RunDirError(
                f"{run_dir} exists and is not an ekd run directory; choose another run.name or run.output_dir"
            )
        else:
            diffs = config_differences(yaml.safe_load(saved.read_text()) or {}, cfg.to_dict())
            if not resume:
                what = f"a different run (differs in {', '.join(diffs[:5])})" if diffs else "a run"
                raise RunDirError(
                    f"{run_dir} already holds {what}; pass --resume to continue it, --overwrite to replace it, or set run.name"
                )
            blocking = [k for k in diffs if not k.startswith(RESUMABLE_CHANGES)]
            if blocking:
                raise RunDirError(
                    f"--resume: the config differs from the saved run in {', '.join(blocking[:5])}; resume with the same settings or use --overwrite"
                )
    elif resume:
        raise RunDirError(f"--resume: {run_dir} holds no run to resume; drop --resume to start it")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_text(saved, cfg.to_yaml())
    return run_dir
