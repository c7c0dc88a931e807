"""Grouped spellings of flat config keys: ``model.lora: {r: 16}`` and ``model.lora.r=16`` mean ``model.lora_r``.

Keys that share a prefix (``model.lora_r``, ``model.lora_alpha``, ...; ``log.wandb_project``, ...;
``eval.tasks_*``, ``method.bandit_*``) may be written as a group: in YAML a mapping under ``section.group``
(``model: {lora: {r: 16, alpha: 32}}``), on the command line ``section.group.name=value``. Each member is the
flat key ``section.group_name``, the one canonical form: the resolved ``config.yaml`` and ``ekd config show``
write flat keys. One alias outside a section: ``student.export`` (the issue's spelling) is
``model.lora_export``. A group name alone (``model.lora=16``) or a member that does not exist is refused in
one line naming the flat keys of the group.
"""

from __future__ import annotations

from typing import Any

from ekd.errors import ConfigError
from ekd.nearest import close_names

ALIASES = {"student.export": "model.lora_export"}  # spelled outside the section that holds the key


def canonical_key(key: str, known: set[str]) -> str:
    """The flat key ``key`` names: itself when known, an alias's target, ``section.group_name`` for
    ``section.group.name``; else ``key`` unchanged (the caller reports it as unknown)."""
    if key in known:
        return key
    if key in ALIASES:
        return ALIASES[key]
    section, _, rest = key.partition(".")
    group, dot, name = rest.partition(".")
    if dot and f"{section}.{group}_{name}" in known:
        return f"{section}.{group}_{name}"
    return key


def group_members(key: str, known: set[str]) -> list[str]:
    """The flat keys a group name stands for (``model.lora`` → ``model.lora_r``, ...); [] if none."""
    return sorted(k for k in known if k.startswith(f"{key}_"))


def expand_section(section: str, values: dict[str, Any], known: set[str], source: str) -> dict[str, Any]:
    """One YAML section's ``{key: value}`` with every group mapping spread into its flat keys.

    Raises:
        ConfigError: a key given twice (grouped and flat), naming both spellings.
    """
    flat: dict[str, Any] = {}
    spelled: dict[str, str] = {}
    for k, v in values.items():
        key = f"{section}.{k}"
        if isinstance(v, dict) and key not in known and group_members(key, known):
            items = [(f"{key}.{sub}", value) for sub, value in v.items()]
        else:
            items = [(key, v)]
        for written, value in items:
            target = canonical_key(written, known)
            if target in flat:
                raise ConfigError(
                    f"{source}: {spelled[target]} and {written} both set {target}; keep one", keys=(target,)
                )
            flat[target], spelled[target] = value, written
    return flat


def unknown_group_hint(key: str, known: set[str]) -> str:
    """For an unknown key inside or naming a group: '; model.lora groups model.lora_r, ...: write ...'."""
    section, _, rest = key.partition(".")
    group = f"{section}.{rest.partition('.')[0]}"
    members = group_members(group, known)
    if len(members) < 2:  # not a group (train.warmup → the nearest key, train.warmup_steps)
        return ""
    names = [m[len(group) + 1 :] for m in members]
    leaf = rest.partition(".")[2]
    close = close_names(leaf, names)[:1] if leaf else []
    if close:
        return f"; did you mean '{group}.{close[0]}' ({group}_{close[0]})?"
    example, name = members[0], names[0]
    return (
        f"; {group} groups {', '.join(members)}: write {group}.{name}=… (or {example}=…), "
        f"or in YAML a mapping under {group}"
    )


__all__ = ["ALIASES", "canonical_key", "expand_section", "group_members", "unknown_group_hint"]
