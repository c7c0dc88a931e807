"""The optimizer and its learning-rate schedule: torch's fused AdamW, linear warm-up then cosine decay."""

from __future__ import annotations

import math

import torch
from torch import nn

from ekd.config import Config


def lr_at(step: int, cfg: Config) -> float:
    """The learning rate of 0-based ``step``: linear warm-up, lr·(step + 1)/``warmup_steps``, reaching ``train.lr``
    at step ``warmup_steps`` − 1, then a cosine from lr at step ``warmup_steps`` toward ``min_lr_ratio``·lr, which
    it would reach at step ``max_steps``: the last step, ``max_steps`` − 1, is one cosine step above it (try-out
    97 F2). With a warm-up the peak is used twice, at its last step and the cosine's first."""
    t = cfg.train
    if t.warmup_steps > 0 and step < t.warmup_steps:
        return t.lr * (step + 1) / t.warmup_steps
    progress = (step - t.warmup_steps) / max(1, t.max_steps - t.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return t.lr * (t.min_lr_ratio + (1.0 - t.min_lr_ratio) * cosine)


def build_optimizer(params: list[tuple[str, nn.Parameter]], cfg: Config) -> torch.optim.AdamW:
    """torch's fused AdamW (one kernel over all parameters: 4.7× faster than ``foreach`` on CPU for an 18M-parameter
    student, ``make bench``'s step section); no weight decay on biases and norm weights (1-D parameters)."""
    decay = [p for _, p in params if p.requires_grad and p.ndim >= 2]
    no_decay = [p for _, p in params if p.requires_grad and p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": cfg.train.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(cfg.train.beta1, cfg.train.beta2), fused=True)
