"""Named method presets (METHODS §8): each paper method is a composition of config values, not a code path.

A preset is a dict of ``method.*`` values. ``method=<preset>`` on the command line (or ``method.preset``
in YAML) applies it; keys set explicitly in the file or on the command line win, so
``method=adakd method.divergence=jsd`` is AdaKD as a plug-in over JSD.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ekd.registry import Registry


@dataclass(frozen=True)
class Preset:
    values: dict[str, Any]
    paper: str = ""
    needs_teacher: bool = True
    extra: dict[str, Any] = field(default_factory=dict)


presets: Registry[Preset] = Registry("preset")


def _add(name: str, description: str, paper: str, needs_teacher: bool = True, **values: Any) -> None:
    presets.add(name, Preset(values=values, paper=paper, needs_teacher=needs_teacher), description)


# -- baselines: dense targets on all positions ------------------------------------------------------------
_add("ce", "cross-entropy only, no teacher", "—", needs_teacher=False, kd_weight=0.0, ce_weight=1.0)
_add("kd", "Full KD: forward KL on all positions, dense targets", "Hinton et al. 2015", divergence="forward_kl")
_add("rkl", "token-level reverse KL on all positions", "MiniLLM (Gu et al. 2024)", divergence="reverse_kl")
_add("jsd", "generalized JSD(β=0.5) on all positions", "GKD (arXiv 2306.13649)", divergence="jsd", jsd_beta=0.5)
_add("skl", "skew forward KL (α=0.1)", "DistiLLM (arXiv 2402.03898)", divergence="skew_forward_kl", skew_alpha=0.1)
_add("srkl", "skew reverse KL (α=0.1)", "DistiLLM (arXiv 2402.03898)", divergence="skew_reverse_kl", skew_alpha=0.1)
_add("tvd", "total variation distance on all positions", "—", divergence="tvd")


def preset_values(name: str) -> dict[str, Any]:
    """The ``method.*`` values of preset ``name`` (empty for an unknown name: validation reports it)."""
    if name not in presets:
        return {}
    return dict(presets.get(name).values)
