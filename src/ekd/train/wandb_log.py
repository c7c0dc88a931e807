"""Weights & Biases as an optional metrics sink beside metrics.jsonl and TensorBoard (``log.wandb_*``).

Rank 0 opens one W&B run with the resolved config and logs the scalars metrics.jsonl gets, at the same
steps. The run's files go to ``<run>/wandb`` unless ``$WANDB_DIR`` is set. Its id is kept in
``<run>/wandb-id``, so ``--resume`` continues the same W&B run. wandb's console capture is off: ekd's own
log lines and progress bar stay as they are.
"""

from __future__ import annotations

import logging
import math
import os
import uuid
from pathlib import Path

from ekd.config import Config, ConfigError
from ekd.io import atomic_write_text, writing

log = logging.getLogger(__name__)

ID_FILE = "wandb-id"


class WandbLog:
    """One W&B run: ``log(step, metrics)`` per logged step, ``close()`` at the end."""

    def __init__(self, run) -> None:
        self.run = run

    def log(self, step: int, metrics: dict[str, float]) -> None:
        scalars = {
            k: v for k, v in metrics.items() if isinstance(v, (int, float)) and math.isfinite(float(v))
        }
        if scalars:
            self.run.log(scalars, step=step)

    def close(self) -> None:
        self.run.finish()


def require_wandb():
    """The ``wandb`` module, or one line naming the extra to install."""
    try:
        import wandb
    except ImportError:
        raise ConfigError(
            "log.wandb_project is set but wandb is not installed: pip install 'ekd[wandb]' (or unset log.wandb_project)"
        ) from None
    return wandb


def open_wandb(cfg: Config, run_dir: Path, resumed: bool) -> WandbLog:
    """Start (or, on resume, continue) the W&B run of ``run_dir`` per ``log.wandb_*``.

    Raises:
        ConfigError: wandb is not installed, or it cannot start the run (e.g. online without a login).
    """
    wandb = require_wandb()
    id_path = run_dir / ID_FILE
    run_id = id_path.read_text().strip() if resumed and id_path.is_file() else uuid.uuid4().hex[:12]
    with writing(run_dir):
        atomic_write_text(id_path, run_id + "\n")
    try:
        run = wandb.init(
            project=cfg.log.wandb_project,
            name=cfg.log.wandb_name or cfg.run.name,
            mode=cfg.log.wandb_mode,
            dir=os.environ.get("WANDB_DIR") or str(run_dir),
            config=cfg.to_dict(),
            id=run_id,
            resume="allow",
            settings=wandb.Settings(console="off", silent=True),
        )
    except Exception as e:  # noqa: BLE001 — login, network and permission failures all mean "cannot start"
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
        raise ConfigError(
            f"log.wandb_project={cfg.log.wandb_project}: W&B cannot start the run ({first}); "
            "run `wandb login`, or set log.wandb_mode=offline"
        ) from None
    log.info("W&B run %s (%s) in %s", run.name, cfg.log.wandb_mode, run.dir)
    return WandbLog(run)
