"""Checks of the files a finished run keeps (``config.yaml``, ``eval.json``) before ``ekd eval`` or ``ekd compare``
reads figures from them: each returns what makes a parsed file unreadable, in words, or None."""

from __future__ import annotations

from typing import Any

from ekd.eval.eval_json import malformed
from ekd.eval.task_metrics import task_sets, task_ways
from ekd.json_words import value_kind


def config_problem(config: Any, identity: bool = True) -> str | None:
    """What makes a parsed ``config.yaml`` no run's config, as words ('a YAML list, not a mapping of sections',
    'no run.seed'); None when it is a mapping of sections (mappings) whose values have their keys' types
    (:func:`~ekd.config.load.saved_value_problem`) and, with ``identity`` (``ekd compare``: the
    method and seed group and pair the run), has ``method.preset`` a name and ``run.seed`` a whole number, as
    ekd distill of any version writes them (``ekd eval`` takes a missing key at its default)."""
    if not isinstance(config, dict):
        return f"a YAML {value_kind(config)}, not a mapping of sections"
    if bad := [str(s) for s, v in config.items() if v is not None and not isinstance(v, dict)]:
        return f"section '{bad[0]}' is a YAML {value_kind(config[bad[0]])}, not a mapping"
    from ekd.config.load import saved_value_problem

    if identity:
        preset = (config.get("method") or {}).get("preset")
        if not isinstance(preset, str) or not preset:
            return "no method.preset"
        seed = (config.get("run") or {}).get("seed")
        if isinstance(seed, bool) or not isinstance(seed, int):
            return "no run.seed" if seed is None else f"run.seed={seed!r}, not a whole number"
    return saved_value_problem(config)


def eval_json_problem(saved: Any) -> str | None:
    """What makes a parsed ``eval.json`` unreadable as figures, as words (:func:`~ekd.eval.eval_json.malformed`,
    then its ``tasks`` section as :func:`~ekd.eval.task_metrics.task_sets` flattens it); None when it reads."""
    if problem := malformed(saved):
        return problem
    try:
        task_ways(saved)
        problem = malformed(task_sets(saved))
    except (AttributeError, KeyError, TypeError, ValueError) as e:  # a section of another shape
        problem = str(e)
    return f"its 'tasks' section: {problem}" if problem else None
