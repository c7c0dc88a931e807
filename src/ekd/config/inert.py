"""Method keys a run sets that its method never reads.

A ``method.*`` knob belongs to one component — a temperature, a target, a divergence, a policy, an objective — and
only that component reads it: ``method=egad method.kd_temperature=3`` trained at EGAD's entropy-mapped τ (from
``method.entropy_tau_min``/``max``) with no word, and its config.yaml recorded τ = 3 (try-out 53, F5). A key whose
value differs from what the preset gives it, while the resolved method never reads it, is refused at the start of
a run (:func:`refuse_inert_keys`); a resumed run's saved config is only warned about.

:data:`READ_WHEN` says, per key, when it is read; ``tests/test_inert_keys.py`` checks it against the keys every
registered policy and temperature reads as it is built.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekd.errors import ConfigError


@dataclass(frozen=True)
class ReadWhen:
    """When a key is read: ``reads(cfg)``, said as ``when`` ("under method.target=rs"). ``cfg`` is the
    ``MethodConfig`` for the method tables (:data:`READ_WHEN`, :data:`IDLE_WHEN`) and the whole ``Config`` for
    :data:`RUN_READ_WHEN`. ``by``: the method keys ``reads`` looks at (:data:`IDLE_WHEN`: a run that sets one of
    them away from its preset is told what it leaves without effect)."""

    reads: Callable[[Any], bool]
    when: str
    by: tuple[str, ...] = ()


def _under(key: str, *values: str) -> ReadWhen:
    """Read only while ``method.<key>`` is one of ``values``."""
    return ReadWhen(lambda m: getattr(m, key) in values, f"under method.{key}={' or '.join(values)}")


_SELECT_FRACTION_POLICIES = ("topk", "gls", "curriculum", "pos_rs")  # coverage_schedule: k from coverage_*
_LINUCB = ReadWhen(
    lambda m: m.policy == "bandit" and m.bandit_kind == "linucb",
    "under method.policy=bandit with method.bandit_kind=linucb",
)
_EXP3 = ReadWhen(
    lambda m: m.policy == "bandit" and m.bandit_kind == "exp3",
    "under method.policy=bandit with method.bandit_kind=exp3",
)
_FEATURES = ReadWhen(lambda m: m.feature_weight > 0, "with method.feature_weight > 0 (the feature branch)")
_ON_POLICY = ReadWhen(
    lambda m: m.student_data_fraction > 0, "with method.student_data_fraction > 0 (student-generated data)"
)

# the self-distilling objectives and the student's target under each (docs/methods.md §9.25, §9.26)
SELF_TARGETS = {"ema_self_distill": "its own EMA", "uncertainty": "its initial copy"}
SELF_OBJECTIVES = tuple(SELF_TARGETS)  # = ekd.train.method_parts.SELF_OBJECTIVES (a test checks)
_ALWAYS = ReadWhen(lambda m: True, "")

# When a component runs at all (the try-out 54 finding: the rules above looked only at a component's own switch):
# a per-token term (KD or a self-distilling objective); the divergence and the teacher's targets only in the KD
# objective; τ in every term but the uncertainty objective's; the feature branch beside a teacher.
_TERM = ReadWhen(
    lambda m: m.kd_weight > 0 or m.objective in SELF_OBJECTIVES,
    "with a per-token KD term (method.kd_weight > 0, or a self-distilling method.objective)",
)
_KD_TERM = ReadWhen(
    lambda m: m.objective == "kd" and m.kd_weight > 0, "with method.objective=kd and method.kd_weight > 0"
)
_TAU_TERM = ReadWhen(
    lambda m: _TERM.reads(m) and m.objective != "uncertainty",
    "with a per-token term that takes τ (method.kd_weight > 0; not method.objective=uncertainty)",
)
_TEACHER_TERM = ReadWhen(
    lambda m: m.kd_weight > 0 and m.objective not in SELF_OBJECTIVES,
    "with a teacher's term (method.kd_weight > 0, method.objective kd, dkd or atkd)",
)


def _and(rule: ReadWhen, gate: ReadWhen) -> ReadWhen:
    """Read when ``rule`` and ``gate`` both hold."""
    when = f"{rule.when} {gate.when}" if rule.when else gate.when
    return ReadWhen(lambda m: rule.reads(m) and gate.reads(m), when)


COMPONENT_RULES: dict[str, ReadWhen] = {
    # the temperature (ekd.temperature): each kind reads its own knobs
    "kd_temperature": _under("temperature", "constant", "schedule", "idts"),
    "temperature_end": _under("temperature", "schedule"),
    "temperature_hold_fraction": _under("temperature", "schedule"),
    "idts_strength": _under("temperature", "idts"),
    "entropy_tau_min": _under("temperature", "entropy_map"),
    "entropy_tau_max": _under("temperature", "entropy_map"),
    "entropy_direction": _under("temperature", "entropy_map"),
    # where the KD goes: the scorer and the policy (ekd.selection)
    "scorer_weights": _under("scorer", "composite"),
    "scorer_normalization": _under("scorer", "composite"),
    "select_fraction": ReadWhen(
        lambda m: (
            m.policy in _SELECT_FRACTION_POLICIES or (m.policy == "bandit" and m.bandit_kind == "linucb")
        ),
        f"under method.policy={' or '.join(_SELECT_FRACTION_POLICIES)} (or bandit with method.bandit_kind=linucb)",
    ),
    "select_per": ReadWhen(
        lambda m: (
            m.policy in ("topk", "coverage_schedule") or (m.policy == "bandit" and m.bandit_kind == "exp3")
        ),
        "under method.policy=topk or coverage_schedule (or bandit with method.bandit_kind=exp3)",
    ),
    "gls_queue_size": _under("policy", "gls"),
    "curriculum_steps": _under("policy", "curriculum"),
    "curriculum_start": _under("policy", "curriculum"),
    "curriculum_end": _under("policy", "curriculum"),
    "curriculum_power": _under("policy", "curriculum"),
    "coverage_start": _under("policy", "coverage_schedule"),
    "coverage_end": _under("policy", "coverage_schedule"),
    "coverage_shape": _under("policy", "coverage_schedule"),
    "bucket_low": _under("policy", "bucket"),
    "bucket_high": _under("policy", "bucket"),
    "pos_rs_power": _under("policy", "pos_rs"),
    "pos_rs_self_normalized": _under("policy", "pos_rs"),
    "latf_warmup_fraction": _under("policy", "latf"),
    "latf_ema_decay": _under("policy", "latf"),
    "latf_tolerance": _under("policy", "latf"),
    "latf_step": _under("policy", "latf"),
    "latf_min_ratio": _under("policy", "latf"),
    "bandit_kind": _under("policy", "bandit"),
    "bandit_alpha": _LINUCB,
    "bandit_ridge": _LINUCB,
    "bandit_min_fraction": _LINUCB,
    "bandit_max_fraction": _LINUCB,
    "bandit_threshold": _LINUCB,
    "bandit_budgets": _EXP3,
    "bandit_gamma": _EXP3,
}
"""What each temperature kind and policy reads as it is built (``tests/test_inert_keys.py`` builds every one)."""

READ_WHEN: dict[str, ReadWhen] = {
    # τ: every term but the uncertainty objective's
    "temperature": _TAU_TERM,
    "scale_by_tau_squared": _TAU_TERM,
    **{
        k: _and(COMPONENT_RULES[k], _TAU_TERM)
        for k in COMPONENT_RULES
        if k.startswith(("kd_temp", "temp", "idts", "entropy_"))
    },
    # the teacher's targets and the divergence: the KD objective's
    "target": _KD_TERM,
    "topk": _and(_under("target", "topk"), _KD_TERM),
    "topk_tail": _and(_under("target", "topk"), _KD_TERM),
    "rs_samples": _and(_under("target", "rs"), _KD_TERM),
    "rs_proposal_power": _and(_under("target", "rs"), _KD_TERM),
    "divergence": _KD_TERM,
    "jsd_beta": _and(_under("divergence", "jsd"), _KD_TERM),
    "skew_alpha": _and(_under("divergence", "skew_forward_kl", "skew_reverse_kl"), _KD_TERM),
    "ce_on": ReadWhen(lambda m: m.ce_weight > 0, "with method.ce_weight > 0"),
    # where the term goes: the scorer (for a policy that ranks positions) and the policy
    "policy": _TERM,
    "scorer": _and(
        ReadWhen(
            lambda m: m.policy != "all" and not (m.policy == "bandit" and m.bandit_kind == "linucb"),
            "under a method.policy that ranks positions by a score (not all, nor bandit with linucb)",
        ),
        _TERM,
    ),
    **{
        k: _and(rule, _TERM)
        for k, rule in COMPONENT_RULES.items()
        if not k.startswith(("kd_temp", "temp", "idts", "entropy_"))
    },
    "sample_scorer": ReadWhen(lambda m: m.sample_fraction < 1, "with method.sample_fraction < 1"),
    # the objective and its branches
    "kd_weight": ReadWhen(
        lambda m: m.objective not in SELF_OBJECTIVES,
        "under method.objective=kd, dkd or atkd (a self-distilling objective weighs its own term)",
    ),
    "dkd_beta": _and(_under("objective", "dkd"), _TEACHER_TERM),
    "atkd_lambda": _and(_under("objective", "atkd"), _TEACHER_TERM),
    "ema_decay": _under("objective", "ema_self_distill"),
    "ema_weight": _under("objective", "ema_self_distill"),
    "uncertainty_fraction": _under("objective", "uncertainty"),
    "uncertainty_weight": _under("objective", "uncertainty"),
    "feature_weight": _TEACHER_TERM,
    **{
        k: _and(_FEATURES, _TEACHER_TERM)
        for k in ("feature_hard_fraction", "feature_loss", "feature_student_layer", "feature_teacher_layer")
    },  # fmt: skip
    "sampling_temperature": _ON_POLICY,
    "max_new_tokens": _ON_POLICY,
    "prompt_tokens": _ON_POLICY,
}
"""Method key → when it is read: a component's own switch (:data:`COMPONENT_RULES`) and whether the component
runs at all."""

IDLE_WHEN: dict[str, ReadWhen] = {
    # read, but other values of the method leave it without effect (try-out 58, F3; 73, F2; 108, F9)
    "temperature_end": ReadWhen(  # a hold over the whole run never leaves τ0
        lambda m: m.temperature_hold_fraction < 1,
        "with method.temperature_hold_fraction < 1",
        ("temperature_hold_fraction",),
    ),
    "temperature_hold_fraction": ReadWhen(  # a hold between equal τs holds nothing
        lambda m: m.temperature_end != m.kd_temperature,
        "with method.temperature_end ≠ kd_temperature",
        ("temperature_end", "kd_temperature"),
    ),
    "entropy_direction": ReadWhen(  # a τ range of one value maps every entropy to it
        lambda m: m.entropy_tau_min != m.entropy_tau_max,
        "with method.entropy_tau_min ≠ entropy_tau_max",
        ("entropy_tau_min", "entropy_tau_max"),
    ),
    "curriculum_power": ReadWhen(  # a phase that starts where it ends never moves
        lambda m: m.curriculum_start != m.curriculum_end,
        "with method.curriculum_start ≠ curriculum_end",
        ("curriculum_start", "curriculum_end"),
    ),
    "uncertainty_weight": ReadWhen(  # ρ = 1: every token is an MLE token, none is self-distilled
        lambda m: m.uncertainty_fraction < 1,
        "with method.uncertainty_fraction < 1 (tokens left to self-distill)",
        ("uncertainty_fraction",),
    ),
    "feature_weight": ReadWhen(  # no hard token, no feature loss
        lambda m: m.feature_hard_fraction > 0,
        "with method.feature_hard_fraction > 0 (hard tokens)",
        ("feature_hard_fraction",),
    ),
}
"""Method key → the values of other keys it needs to act, where :data:`READ_WHEN` says it is read: a key set
away from its preset's value that they leave without effect is *said* at a run's start (:func:`idle_keys`), not
refused — one YAML of a sweep may reach such a point of its grid (τ ∈ {4, 2, 1} annealed to 1)."""


def inert_keys(method_cfg: Any) -> list[tuple[str, Any, str]]:
    """``[("kd_temperature", 3.0, "is read only under method.temperature=constant or schedule or idts"), ...]``:
    the keys of :data:`READ_WHEN` whose value differs from the one the preset gives them (the user set them) while
    the resolved method does not read them, with their value and why they act not; also a ``select_fraction`` set
    outside LinUCB's [bandit_min_fraction, bandit_max_fraction], which clamps it. [] when there is none."""
    from ekd.methods import preset_values

    preset, defaults = preset_values(method_cfg.preset), type(method_cfg)()
    out = []
    for key, rule in READ_WHEN.items():
        value = getattr(method_cfg, key)
        if value != preset.get(key, getattr(defaults, key)) and not rule.reads(method_cfg):
            out.append((key, value, f"is read only {rule.when}"))
    m = method_cfg
    set_fraction = m.select_fraction != preset.get("select_fraction", defaults.select_fraction)
    if (
        set_fraction
        and _LINUCB.reads(m)
        and not m.bandit_min_fraction <= m.select_fraction <= m.bandit_max_fraction
    ):
        # read, but clamped to the bandit's range (try-out 54, F3: 0.5 trained at the preset's 0.2)
        bound = "max" if m.select_fraction > m.bandit_max_fraction else "min"
        out.append(
            (
                "select_fraction",
                m.select_fraction,
                f"is clamped by LinUCB's bandit to method.bandit_{bound}_fraction="
                f"{getattr(m, f'bandit_{bound}_fraction')} (set that too)",
            )
        )
    return out


def idle_keys(method_cfg: Any) -> list[str]:
    """Warnings, one line each, for the keys of :data:`IDLE_WHEN` the run reads while the other values of its
    method leave them without effect, where the run sets the key or one its effect depends on (``by``) away
    from the preset's value (try-out 125, F4: ``method=egad method.feature_hard_fraction=0`` trained an EGAD whose
    feature branch had no hard token, without a word). [] when there is none."""
    from ekd.methods import preset_values

    preset, defaults = preset_values(method_cfg.preset), type(method_cfg)()

    def set_here(key: str) -> bool:
        return getattr(method_cfg, key) != preset.get(key, getattr(defaults, key))

    out = []
    for key, rule in IDLE_WHEN.items():
        if not READ_WHEN[key].reads(method_cfg) or rule.reads(method_cfg):
            continue
        value = getattr(method_cfg, key)
        if set_here(key):
            out.append(f"method.{key}={value} has no effect in this run: it acts only {rule.when}")
        elif causes := [f"method.{k}={getattr(method_cfg, k)}" for k in rule.by if set_here(k)]:
            out.append(
                f"{' and '.join(causes)} leave{'s' if len(causes) == 1 else ''} method.{key}={value} without "
                f"effect in this run: it acts only {rule.when}"
            )
    return out


def ce_on_own_samples(method_cfg: Any) -> str:
    """A warning where an on-policy run (``student_data_fraction`` > 0) keeps a CE term: CE is taken on every
    micro-batch's targets, on an on-policy one the student's own samples — no expected gradient at
    ``sampling_temperature`` 1, a sharpening one below — not on data (try-out 155, F2: said nowhere); "" else."""
    if method_cfg.student_data_fraction <= 0 or method_cfg.ce_weight <= 0:
        return ""
    return (
        f"method.ce_weight={method_cfg.ce_weight} with on-policy data (method.student_data_fraction="
        f"{method_cfg.student_data_fraction}): on the micro-batches the student generates, CE is taken on its own "
        "samples (no expected gradient at method.sampling_temperature=1, a sharpening one below), on the others on "
        "the data; set method.ce_weight=0 for GKD as published"
    )


def unread_keys(cfg: Any) -> set[str]:
    """The config keys (``section.field``) a run of ``cfg`` sets and does not read, or reads without effect: its
    inert method keys, idle method keys, data keys no source reads and run keys (:data:`RUN_READ_WHEN`). A change
    of such a key between a saved run and its ``--resume`` changes nothing the run computes."""
    m = cfg.method
    keys = {f"method.{k}" for k, _, _ in inert_keys(m)}
    keys |= {f"method.{k}" for k, rule in IDLE_WHEN.items() if READ_WHEN[k].reads(m) and not rule.reads(m)}
    keys |= {f"data.{k}" for k, _ in inert_data_keys(cfg.data)}
    keys |= {k for k, rule in RUN_READ_WHEN.items() if not rule.reads(cfg)}
    return keys


def idle_schedules(method_cfg: Any, total_steps: int) -> list[str]:
    """Warnings for schedules the run is too short to carry out (try-out 58, F3: accepted without a word), one
    line each: a τ schedule whose hold outlasts the run's last step (``temperature_end`` never acts), a curriculum
    longer than the run (its window stops short of ``curriculum_end``). Said, not refused: the run is what its
    figures say, and a longer ``train.max_steps`` carries the schedule out. [] when every schedule acts."""
    from ekd.selection.policies import Curriculum
    from ekd.temperature import fixed_tau

    m, out = method_cfg, []
    tau0 = float(m.kd_temperature)
    # READ_WHEN: the τ schedule, past a whole-run hold, in a term that takes τ
    if (
        READ_WHEN["temperature_end"].reads(m)
        and IDLE_WHEN["temperature_end"].reads(m)  # a hold over the whole run: idle_keys says it
        and float(m.temperature_end) != tau0
        and fixed_tau(m, total_steps) == tau0
    ):
        out.append(
            f"method.temperature_end={m.temperature_end} never acts in this run: τ holds at method.kd_temperature="
            f"{m.kd_temperature} through its last step (method.temperature_hold_fraction="
            f"{m.temperature_hold_fraction} of train.max_steps={total_steps}); lower the hold or train longer"
        )
    # READ_WHEN: a curriculum policy in a KD term
    if READ_WHEN["curriculum_steps"].reads(m) and m.curriculum_steps > total_steps:
        u = (total_steps - 1) / m.curriculum_steps  # the last step's progress (steps count from 0)
        out.append(
            f"method.curriculum_steps={m.curriculum_steps} is longer than the run (train.max_steps={total_steps}): "
            f"its window moves {u**m.curriculum_power:.0%} of the way from method.curriculum_start="
            f"{m.curriculum_start} to method.curriculum_end={m.curriculum_end} by the last step (phase "
            f"{Curriculum(m, total_steps).phase(total_steps - 1):.3g}); set curriculum_steps ≤ train.max_steps, or "
            "0 for the run's length"
        )
    return out


def idle_objective(method_cfg: Any) -> str:
    """The refusal of a self-distilling objective with nothing to move the student (try-out 60, F3), else "": its
    only term is a KL to the student itself — its EMA (``ema_self_distill``), or its initial copy (``uncertainty``
    with ``uncertainty_fraction=0``, no MLE tokens) — which is 0 with a zero gradient at the start, so AdamW would
    walk the weights along float rounding (loss 0 → 6e-7 → 1e-3). A CE term (or MLE tokens) moves the student and
    the KL then regularizes it. Refused at the start of a run, not when a config loads (a config may serve a unit
    of the loss)."""
    m = method_cfg
    if not (m.kd_weight > 0 and m.ce_weight == 0):
        return ""
    if m.objective == "ema_self_distill":
        also = ""
    elif m.objective == "uncertainty" and m.uncertainty_fraction == 0:
        also = " or method.uncertainty_fraction > 0 (MLE tokens)"
    else:
        return ""
    return (
        f"method.objective={m.objective} with method.ce_weight=0 has no term that moves the student: its KL to "
        f"{SELF_TARGETS[m.objective]} is 0 with a zero gradient at the start, so only float rounding would train it; set "
        f"method.ce_weight > 0{also}"
    )


def inert_message(method_cfg: Any, resumed: bool = False) -> str:
    """The line naming every inert key (:func:`inert_keys`) and the resolved method, with the way on; "" when there
    is none. ``resumed``: said of a run being resumed, which keeps its saved settings (dropping the key would be
    refused as another run: try-out 54, F5), so there is nothing to do but know it."""
    inert = inert_keys(method_cfg)
    if not inert:
        return ""
    m, one = method_cfg, len(inert) == 1
    named = "; ".join(f"method.{key}={value} {why}" for key, value, why in inert)
    way = (
        "the resumed run keeps its saved settings and trains on as it began"
        if resumed
        else f"drop {'it' if one else 'them'}, or choose what reads {'it' if one else 'them'}"
    )
    return (
        f"{named}: {'it has' if one else 'they have'} no effect on this run (method.preset={m.preset}: "
        f"temperature={m.temperature}, target={m.target}, divergence={m.divergence}, policy={m.policy}, "
        f"objective={m.objective}); {way}"
    )


def _source_kind(source: str, fmt: str) -> str:
    """How a data source is read: ``builtin`` (pystdlib), ``hf`` (a hub dataset), ``hf_disk`` (a directory saved by
    ``save_to_disk``), ``rows`` (JSONL or Parquet), ``text`` (text files, a directory) or ``unknown`` (a glob or
    file whose suffix does not say)."""
    from ekd.data.documents import JSONL_SUFFIXES, PARQUET_SUFFIXES, TEXT_SUFFIXES

    if source == "pystdlib" or source.startswith("pystdlib:"):
        return "builtin"
    if fmt == "hf" or source.startswith("hf:"):
        path = Path(source.removeprefix("hf:").strip())
        saved = path.is_dir() and any((path / f).exists() for f in ("state.json", "dataset_dict.json"))
        return "hf_disk" if saved else "hf"  # a save_to_disk directory: load_from_disk, no name or streaming
    if fmt in ("jsonl", "parquet", "chat"):
        return "rows"
    if fmt == "text" or Path(source).is_dir():
        return "text"
    suffix = Path(source).suffix.lower()
    if suffix in JSONL_SUFFIXES + PARQUET_SUFFIXES:
        return "rows"
    return "text" if suffix in TEXT_SUFFIXES else "unknown"


def inert_data_keys(d: Any) -> list[tuple[str, str]]:
    """The ``data.*`` keys set away from their defaults that no source of the run reads, each with what reads it
    (try-out 74, F10: ``data.hf_split=validation`` on a JSONL file, ``data.text_field`` on a directory of text files
    or chat rows, ``data.messages_field`` without chat: trained on in silence, and ``--resume`` refused them as
    changes of what the run computes). The sources are ``data.source`` and every ``data.eval_sources`` entry, each
    read as the data path reads it; a source whose kind its path does not say (a glob) reads every key."""
    from ekd.data.build import eval_source_format

    sources = {"data.source": (d.source, d.format)}
    sources |= {
        f"data.eval_sources.{n}": (src, eval_source_format(src, d)) for n, src in d.eval_sources.items()
    }
    kinds = {key: _source_kind(src, fmt) for key, (src, fmt) in sources.items()}
    chat = d.format == "chat"  # rows read as chat: data.source, and a chat run's row eval sources
    unknown = "unknown" in kinds.values()
    fields = unknown or any(k in ("rows", "hf", "hf_disk") for k in kinds.values())
    hub = unknown or "hf" in kinds.values()
    read_by = {  # key → whether some source reads it, and what does
        "hf_split": (hub or "hf_disk" in kinds.values(), "hf: sources"),
        "hf_name": (hub, "hf: hub datasets (a save_to_disk directory is loaded whole)"),
        "hf_streaming": (hub, "hf: hub datasets (a save_to_disk directory is loaded whole)"),
        "text_field": (fields and not chat, "JSONL, Parquet or hf: rows read as text"),
        "prompt_field": (fields and not chat, "JSONL, Parquet or hf: rows read as text"),
        "response_field": (fields and not chat, "JSONL, Parquet or hf: rows read as text"),
        "messages_field": (chat, "chat rows (data.format=chat)"),
        "tools_field": (chat, "chat rows (data.format=chat)"),
        # a conversation is framed by its template alone: the separator frames text (try-out 74, F11)
        "separator": (not chat or any(k in ("text", "unknown") for k in kinds.values()), "text sources"),
    }
    defaults = type(d)()
    return [
        (key, what)
        for key, (read, what) in read_by.items()
        if not read and getattr(d, key) != getattr(defaults, key)
    ]


def inert_data_message(d: Any, resumed: bool = False) -> str:
    """The line naming every ``data.*`` key no source reads (:func:`inert_data_keys`) and the sources, with the way
    on (``resumed``: the run keeps its saved settings); "" when there is none."""
    inert = inert_data_keys(d)
    if not inert:
        return ""
    said = "; ".join(f"data.{key}={getattr(d, key)!r} is read only from {what}" for key, what in inert)
    sources = {"data.source": d.source} | {f"data.eval_sources.{n}": s for n, s in d.eval_sources.items()}
    read = ", ".join(f"{key} {src}" for key, src in sources.items())
    way = (
        "the resumed run keeps its saved settings"
        if resumed
        else f"unset {' and '.join(f'data.{k}' for k, _ in inert)}"
    )
    return f"{said}, and this run reads none ({read}): no effect; {way}"


def has_eval_set(d: Any) -> bool:
    """Whether the data settings name an eval set: a held-out fraction, a named set, or the builtin corpus (its
    shifted sets)."""
    return d.eval_fraction > 0 or bool(d.eval_sources) or d.source == "pystdlib"  # not a pystdlib:<split>


RUN_READ_WHEN: dict[str, ReadWhen] = {
    # a LoRA student's knobs (model.lora_train_head and lora_export are refused as config rules)
    **{
        f"model.{k}": ReadWhen(lambda c: c.model.lora_r > 0, "with model.lora_r > 0 (a LoRA student)")
        for k in ("lora_alpha", "lora_dropout", "lora_target_modules")
    },
    "train.compile": ReadWhen(
        lambda c: c.train.loss_path == "chunked",
        "under train.loss_path=chunked (it compiles the fused head's math)",
    ),
    # the downstream tasks' settings, without a task (try-out 108, F3: eval.tasks_dir failed after training)
    **{
        f"eval.{k}": ReadWhen(lambda c: bool(c.eval.tasks), "with eval.tasks (downstream tasks to run)")
        for k in (
            "tasks_dir",
            "tasks_limit",
            "tasks_num_fewshot",
            "tasks_max_new_tokens",
            "tasks_chat_template",
            "tasks_teacher",
            "tasks_student_init",
            "tasks_cache_dir",
        )
    },
    "eval.entropy_buckets": ReadWhen(
        lambda c: _evaluates_teacher(c),
        "when evaluation scores beside a teacher (eval.teacher=true and a teacher to load: the buckets are of its "
        "entropy)",
    ),
    # try-out 108, F7: accepted in silence where nothing reads them
    "model.bpe_vocab_size": ReadWhen(
        lambda c: _tokenizer_source(c) == "train_bpe",
        "when the run trains its tokenizer (model.tokenizer=train_bpe, or teacher/student naming preset models)",
    ),
    # the teacher's revision is recorded with its figures (eval.json, ekd compare) even for a preset or a directory
    "model.revision": ReadWhen(
        lambda c: (
            _names_hub_id(c, include_teacher=not c.model.teacher_revision)
            or (_loads_teacher(c) and not c.model.teacher_revision)
        ),
        "when a model or the tokenizer is a hub id, or the run loads a teacher model (its figures record it); "
        "model.teacher_revision, where set, is the teacher's",
    ),
    "model.teacher_revision": ReadWhen(
        lambda c: _loads_teacher(c) or _reads_hub_teacher(c),
        "when the run loads a teacher model (its figures record it), or model.teacher is a hub id whose files it "
        "reads (a cache's check of its teacher, its tokenizer)",
    ),
    "model.teacher_dtype": ReadWhen(
        lambda c: _loads_teacher(c),
        "when the run loads a teacher model (to train from, score samples with, evaluate beside or run tasks)",
    ),
}
"""Run keys outside ``method.*``/``data.*`` sources → when they are read (try-out 108: accepted and ignored): said
at a run's start, not refused — a sweep's shared YAML holds them for the grid points that read them (try-out 110,
F7: ``model.lora_alpha: 32`` at the ``lora_r=0`` point)."""


def _evaluates_teacher(cfg: Any) -> bool:
    from ekd.train.prepare import evaluates_teacher

    return evaluates_teacher(cfg)


def _tokenizer_source(cfg: Any) -> str:
    from ekd.train.prepare import tokenizer_source

    return tokenizer_source(cfg)


def _names_hub_id(cfg: Any, include_teacher: bool = True) -> bool:
    """Whether the student, the teacher (with ``include_teacher``) or the tokenizer is named by a hub id
    (:func:`ekd.models.load.is_hub_id`)."""
    from ekd.models.load import is_hub_id

    m = cfg.model
    tokenizer = _tokenizer_source(cfg)
    own = [] if tokenizer in ("teacher", "student", "train_bpe") else [tokenizer]
    specs = [m.student, *([m.teacher] if include_teacher else []), *own]
    return any(is_hub_id(s) for s in specs)


def _reads_hub_teacher(cfg: Any) -> bool:
    """Whether ``model.teacher`` is a hub id whose files the run reads: a cache's check of its teacher, or its
    tokenizer (``model.tokenizer`` naming the teacher, by role or by its id)."""
    from ekd.models.load import is_hub_id
    from ekd.train.prepare import teacher_needed, tokenizer_role

    uses = teacher_needed(cfg) or tokenizer_role(cfg, _tokenizer_source(cfg)) == "teacher"
    return is_hub_id(cfg.model.teacher) and uses


def _loads_teacher(cfg: Any) -> bool:
    """Whether the run loads the teacher model: to train from online, to score samples with, to evaluate beside,
    or for downstream tasks (``eval.tasks_teacher``)."""
    from ekd.train.prepare import scores_samples_with_teacher, teacher_needed

    online = (cfg.teacher.source == "online" and teacher_needed(cfg)) or scores_samples_with_teacher(cfg)
    tasks = bool(cfg.eval.tasks) and cfg.eval.tasks_teacher
    return online or _evaluates_teacher(cfg) or tasks


EVAL_SET_KEYS = ("eval.every", "eval.ece_bins", "eval.entropy_buckets", "data.max_eval_blocks")
"""Keys read only when the run has an eval set (:func:`unread_eval_keys`)."""


def unread_eval_keys(cfg: Any) -> str:
    """The warning for a run with no eval set (``data.eval_fraction=0``, no ``data.eval_sources``, not the builtin
    corpus) that sets keys only an eval set reads — said, not refused: one YAML may serve runs with and without
    one (try-out 108, F5: ``eval.every=1`` evaluated nothing, without a word) — else ""."""
    if has_eval_set(cfg.data):
        return ""
    named = [f"{key}={value}" for key in EVAL_SET_KEYS if (value := _set_on(cfg, key)) is not None]
    if not named:
        return ""
    return (
        f"{', '.join(named)} {'configures' if len(named) == 1 else 'configure'} evaluation, but this run has no eval "
        "set (data.eval_fraction=0 and no data.eval_sources): nothing is evaluated; name one with "
        "data.eval_sources={held_out: FILE} or data.eval_fraction > 0"
    )


def inert_run_keys(cfg: Any) -> list[tuple[str, Any, str]]:
    """``[("model.lora_alpha", 32.0, "is read only with model.lora_r > 0 (a LoRA student)"), ...]``: the keys of
    :data:`RUN_READ_WHEN` set away from their defaults, and not to an off value (0, false, empty), that this run
    does not read. [] when there is none."""
    return [
        (key, value, f"is read only {rule.when}")
        for key, rule in RUN_READ_WHEN.items()
        if (value := _set_on(cfg, key)) is not None and not rule.reads(cfg)
    ]


def _set_on(cfg: Any, key: str) -> Any:
    """The value of ``key`` (``section.field``) when the config sets it away from its default and not to an off
    value (0, false, empty: nothing is lost where it goes unread), else None."""
    section, name = key.split(".")
    value = cfg.value(key)
    return value if value != getattr(type(getattr(cfg, section))(), name) and value else None


def inert_run_message(cfg: Any) -> str:
    """The warning naming every key of :func:`inert_run_keys`; "" when there is none."""
    inert = inert_run_keys(cfg)
    if not inert:
        return ""
    one = len(inert) == 1
    named = "; ".join(f"{key}={value} {why}" for key, value, why in inert)
    return f"{named}: {'it has' if one else 'they have'} no effect on this run"


def refuse_inert_keys(method_cfg: Any, teacher_cfg: Any = None, data_cfg: Any = None) -> None:
    """Refuse a run whose config sets method keys its method never reads (:func:`inert_keys`), a
    ``teacher.cache_fraction`` no cache reads (:func:`inert_cache_fraction`), or data keys no source reads
    (:func:`inert_data_keys`).

    Raises:
        ConfigError: one line naming each such key, when it is read, and the resolved method's choices.
    """
    if message := inert_message(method_cfg):
        raise ConfigError(message, keys=tuple(f"method.{key}" for key, _, _ in inert_keys(method_cfg)))
    if teacher_cfg is not None and (message := inert_cache_fraction(teacher_cfg)):
        raise ConfigError(message, keys=("teacher.cache_fraction", "teacher.cache_positions"))
    if data_cfg is not None and (message := inert_data_message(data_cfg)):
        raise ConfigError(message, keys=tuple(f"data.{key}" for key, _ in inert_data_keys(data_cfg)))


_CACHE_KEYS = ("cache_dir", "cache_positions", "cache_fraction", "cache_shard_samples", "cache_stat_format")


def inert_cache_fraction(teacher_cfg: Any) -> str:
    """The line refusing a ``teacher.cache_fraction`` set while ``teacher.cache_positions=all`` (the fraction of
    positions a teacher-entropy top-f cache keeps; an all-positions cache keeps every one: try-out 54, F8), else
    "". Inert in every command, so refused alike by ``ekd cache`` and ``ekd distill``."""
    t, default = teacher_cfg, type(teacher_cfg)().cache_fraction
    if t.cache_fraction == default or t.cache_positions == "teacher_entropy_topk":
        return ""
    return (
        f"teacher.cache_fraction={t.cache_fraction} is read only under "
        f"teacher.cache_positions=teacher_entropy_topk (the fraction of positions such a cache keeps); with "
        f"teacher.cache_positions={t.cache_positions} every position is cached: drop it, or set "
        "teacher.cache_positions=teacher_entropy_topk"
    )


def unread_cache_keys(teacher_cfg: Any) -> str:
    """The warning for a run whose teacher is not a cache (``teacher.source=online`` or ``none``) while it sets
    ``teacher.cache_*`` keys — they configure ``ekd cache`` and ``teacher.source=cache`` (one YAML may serve
    both, so this is said, not refused; try-out 54, F8) — else "". A ``teacher.cache_dir`` is the likely slip of
    a run meant to train from that cache."""
    t, defaults = teacher_cfg, type(teacher_cfg)()
    if t.source == "cache":
        return ""
    named = [f"teacher.{k}={getattr(t, k)}" for k in _CACHE_KEYS if getattr(t, k) != getattr(defaults, k)]
    if not named:
        return ""
    way = " (set teacher.source=cache to train from that cache)" if t.cache_dir else ""
    return (
        f"{', '.join(named)} {'configures' if len(named) == 1 else 'configure'} a teacher cache (ekd cache, "
        f"teacher.source=cache); this run's teacher.source={t.source} reads none of them{way}"
    )


def same_pins(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two configs' ``model`` sections read their hub models at the same revisions, however the pins are
    spelled: the teacher's (``teacher_revision``, else ``revision``) and, where ``revision`` reaches a hub id beside
    the teacher (a hub student, a tokenizer of its own), ``revision`` (review 161, R3: moving a teacher's pin from
    ``model.revision`` to ``model.teacher_revision`` was another run for ``--resume`` and ``ekd compare``)."""

    if teacher_pin(a) != teacher_pin(b):
        return False
    beside = revision_reads_beside_teacher(a) or revision_reads_beside_teacher(b)
    return not beside or str(a.get("revision") or "") == str(b.get("revision") or "")


def teacher_pin(model: Mapping[str, Any]) -> str:
    """The revision a saved ``model`` section reads its teacher at: ``teacher_revision``, else ``revision`` (as
    :attr:`ekd.config.sections.ModelConfig.teacher_hub_revision` of a loaded config)."""
    return str(model.get("teacher_revision") or model.get("revision") or "")


def revision_reads_beside_teacher(model: Mapping[str, Any]) -> bool:
    """Whether ``model.revision`` reaches a hub id other than the teacher in a ``model`` section: a hub student, or
    a tokenizer of its own named by a hub id."""
    from ekd.models.load import is_hub_id

    return is_hub_id(str(model.get("student") or "")) or own_hub_tokenizer(model)


def own_hub_tokenizer(model: Mapping[str, Any]) -> bool:
    """Whether a ``model`` section's tokenizer is one of its own (not a model's) named by a hub id."""
    from ekd.models.load import is_hub_id

    teacher, tokenizer = (str(model.get(k) or "") for k in ("teacher", "tokenizer"))
    own = tokenizer not in ("", "teacher", "student", "train_bpe") and tokenizer != teacher
    return own and is_hub_id(tokenizer)
