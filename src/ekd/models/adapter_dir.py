"""An exported LoRA adapter directory (``model.lora_export=adapter``): what tells it from a full model's. No torch
import (``ekd eval`` reads it before torch is needed)."""

from __future__ import annotations

from pathlib import Path

BASE_NOTE = "ekd_base.json"  # written beside an exported adapter: the base model it applies to


def is_adapter_dir(path: str | Path) -> bool:
    """Whether ``path`` holds an exported adapter (``model.lora_export=adapter``) rather than a full model."""
    return (Path(path) / "adapter_config.json").is_file() and (Path(path) / BASE_NOTE).is_file()


__all__ = ["BASE_NOTE", "is_adapter_dir"]
