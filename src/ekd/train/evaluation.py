"""Evaluation of a run: during training, at its end, and of a saved run directory (``ekd eval``)."""

from __future__ import annotations

import json
import logging
import math
import os
import shlex
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ekd.config import Config, config_from_dict, flat_config, parse_overrides
from ekd.config.paths import say_keywords
from ekd.errors import ConfigError, EkdError, ModelError
from ekd.eval.eval_json import EvalResults
from ekd.io import make_dirs
from ekd.models.load import dtype_name
from ekd.models.lora import load_exported_student
from ekd.train.precision import teacher_dtype_advice
from ekd.train.prepare import PreparedData
from ekd.train.run_dir import override_arg, read_marker, writes_into_run
from ekd.train.run_state import not_a_finished_run

log = logging.getLogger(__name__)


def evaluate_run(
    cfg: Config,
    data: PreparedData,
    student: nn.Module,
    teacher: nn.Module | None,
    device,
    amp,
    plots_dir: Path | None = None,
    ranks=None,
    before_training: bool = False,
    said: set[str] | None = None,
    started: Mapping[str, float] | None = None,
) -> dict[str, dict[str, float]]:
    """Evaluate the student (and the teacher, if loaded) on every eval split.

    ``ranks`` (``ekd.train.distributed.Ranks``): under ``torchrun`` every rank calls this, evaluates a 1/W
    share of each split's batches and gets the all-reduced metrics of the whole split (no rank idles in a
    collective while another evaluates); pass ``plots_dir`` on one rank only. ``said``: the sets whose
    non-finite teacher was already said by an earlier evaluation of the same run (a frozen teacher gives the
    same figures each time), updated; None says it every time. ``started``: set → the starting student's
    perplexity on the same blocks (:func:`starting_perplexities`), which tells a diverged run from a student that
    started that far off (:func:`say_divergence`).

    Returns:
        Set → metrics (teacher rows under ``<set>/teacher``), with each student set's per-block sums in
        :attr:`~ekd.eval.eval_json.EvalResults.block_sums` (for eval.json, not logged).
    """
    share = {"rank": ranks.rank, "world_size": ranks.world_size} if ranks is not None else {}
    drawn: list = []  # (bins, path, title): drawn once every collective is done, by the rank given plots_dir
    from ekd.data import iter_eval
    from ekd.eval import evaluate, plot_reliability
    from ekd.eval.eval_json import EvalResults

    results = EvalResults()
    use_teacher = teacher if cfg.eval.teacher else None
    if use_teacher is not None:
        results.teacher_dtype = next(use_teacher.parameters()).dtype
    for name, blocks in data.blocks.items():
        if name == "train":
            continue
        batches = list(iter_eval(blocks, cfg.eval.batch_size, cfg.data.max_eval_blocks))
        results.block_sums[name] = {}
        metrics, bins = evaluate(
            student,
            batches,  # each moved to the device when it is evaluated
            use_teacher,
            vocab_size=data.vocab_size,
            ece_bins=cfg.eval.ece_bins,
            entropy_buckets=cfg.eval.entropy_buckets,
            device=device,
            autocast_dtype=amp,
            block_sums=results.block_sums[name],
            **share,
        )
        metrics["documents"] = float(blocks.num_documents)  # what the figures average over
        results[name] = metrics
        start = (started or {}).get(name)
        say_divergence(name, metrics.get("ppl", math.nan), data.vocab_size, cfg, before_training, start)
        say_non_finite_student(name, metrics, before_training, said)
        if use_teacher is not None:
            say_non_finite_teacher(name, metrics, results.teacher_dtype, said)
        if plots_dir is not None and cfg.eval.plots:
            drawn.append((bins, plots_dir / f"reliability-{name}.png", f"{cfg.run.name} on {name}"))
        if use_teacher is not None and cfg.eval.teacher_metrics:
            t_metrics, _ = evaluate(
                use_teacher,
                batches,
                None,
                vocab_size=data.vocab_size,
                ece_bins=cfg.eval.ece_bins,
                entropy_buckets=0,
                device=device,
                autocast_dtype=amp,
                **share,
            )
            results[f"{name}/teacher"] = t_metrics

    def draw() -> None:
        for bins, path, title in drawn:
            make_dirs(path.parent)
            plot_reliability(bins, path, title)

    if ranks is None:
        draw()
    else:  # a plot that fails on rank 0 ends every rank alike (none waits in a collective for it)
        from ekd.train.rank_work import run_on_main

        run_on_main(ranks, draw, "draw the reliability diagrams", share=False)
    return results


def say_non_finite_student(
    name: str, metrics: dict[str, float], before_training: bool = False, said: set[str] | None = None
) -> None:
    """Warn when the student's figures of a set are NaN: its logits are not finite (NaN or +inf) at some scored
    position, and the tables show '—', as if not evaluated (try-out 116, F3: said nowhere). Once per set of
    ``said``, as :func:`say_non_finite_teacher`; ``before_training``: at step 0, before any update."""
    key = f"student:{name}"
    if (said is not None and key in said) or not math.isnan(metrics.get("loss", 0.0)):
        return
    if said is not None:
        said.add(key)
    log.warning(
        "eval set '%s': the student's logits are not finite (NaN or +inf) at some scored position, so its figures "
        "are NaN (shown as '—'); %s",
        name,
        "before any training: check its weights"
        if before_training
        else "check its weights (a trained student's: train.lr, and model.export_dtype — evaluation scores the "
        "exported student)",
    )


def say_non_finite_teacher(
    name: str, metrics: dict[str, float], teacher_dtype: torch.dtype, said: set[str] | None = None
) -> None:
    """Warn when the teacher's figures of a set are NaN while the student's are not: the teacher's logits are not
    finite (NaN or +inf) at some scored position, and the tables show its columns as '—', as if not evaluated
    (try-out 110, F2). Once per set of ``said`` (a run's in-training evaluations: the review of session 32 saw it
    repeated at each), which records the sets said."""
    if said is not None and name in said:
        return
    if math.isnan(metrics.get("kl", 0.0)) and math.isfinite(metrics.get("loss", math.nan)):
        if said is not None:
            said.add(name)
        log.warning(
            "eval set '%s': the teacher's logits are not finite (NaN or +inf) at some scored position, so its KL, "
            "agreement and entropy figures are NaN (shown as '—'); check the teacher's weights (%s)",
            name,
            teacher_dtype_advice(teacher_dtype),
        )


# a student this many times worse than a uniform guess over the vocabulary has diverged: a model at its random
# initialization scores about the vocabulary's size (try-out 75, F1: lr 5 trained 20 steps to ppl 7e65 in silence)
DIVERGED_PPL_FACTOR = 10


def say_divergence(
    name: str,
    ppl: float,
    vocab_size: int,
    cfg: Config,
    before_training: bool = False,
    start: float | None = None,
) -> None:
    """Warn when the student's perplexity on the eval set ``name`` exceeds ``DIVERGED_PPL_FACTOR`` × ``vocab_size``
    (a uniform guess scores ``vocab_size``): its training has diverged, and every evaluation from then on says
    so while the run can still be stopped. ``before_training``: the evaluation at step 0, which no learning rate
    made (try-out 76, F3): said as a student that starts there. ``start``: the starting student's perplexity on
    the same blocks, where known — a student that started over the line and has not risen since is said to be
    where it started, not blamed on ``train.lr`` (try-out 146, F1); unknown, the line says it may have started
    there."""
    bound = DIVERGED_PPL_FACTOR * vocab_size
    if not ppl > bound:  # NaN too: said where the loss is checked
        return
    # a start over the line is the starting weights' doing, whatever the steps did since (try-out 150, F2: a ratio
    # of perplexities near 1e260 is noise, and the KD objective had fallen)
    if not before_training and start is not None and start > bound:
        log.warning(
            "eval set '%s': the student's perplexity %.3g is over %d× the vocabulary's size (%s; a uniform guess "
            "scores that), as it was before training (%.3g): its starting weights put it there, not the training "
            "— check them, and that they were trained with this tokenizer",
            name,
            ppl,
            DIVERGED_PPL_FACTOR,
            f"{vocab_size:,}",
            start,
        )
        return
    if before_training:
        log.warning(
            "eval set '%s': the student starts at perplexity %.3g, over %d× the vocabulary's size (%s; a uniform "
            "guess scores that), before any training: check its weights, and that it was trained with this "
            "tokenizer",
            name,
            ppl,
            DIVERGED_PPL_FACTOR,
            f"{vocab_size:,}",
        )
        return
    clip = cfg.train.max_grad_norm
    if start is None:
        began = " (or the student started there: eval.student_init=true scores it before the first step)"
    else:
        began = f" (from {start:.3g} before training)"
    log.warning(
        "eval set '%s': the student's perplexity %.3g is over %d× the vocabulary's size (%s; a uniform guess "
        "scores that): its training has diverged%s; start again with a lower train.lr (now %g)%s",
        name,
        ppl,
        DIVERGED_PPL_FACTOR,
        f"{vocab_size:,}",
        began,
        cfg.train.lr,
        "" if clip else " or with gradient clipping (train.max_grad_norm=1.0; now 0, off)",
    )


def starting_perplexities(entries: Mapping[str, Any] | None, data: PreparedData) -> dict[str, float]:
    """Set → the starting student's perplexity, from its eval.json-form ``entries`` (:func:`eval_entries` of the
    evaluation before the first step, or :func:`read_student_init`), for the sets of ``data`` scored on the same
    blocks (an entry of other blocks, or of none recorded, is left out)."""
    from ekd.eval.eval_json import BLOCKS_KEY, SETTINGS_KEY

    out = {}
    for name, entry in (entries or {}).items():
        blocks = data.blocks.get(name) if name != "train" else None
        if blocks is None or not isinstance(entry, Mapping) or not isinstance(entry.get("ppl"), (int, float)):
            continue
        if (entry.get(SETTINGS_KEY) or {}).get(BLOCKS_KEY) == blocks.fingerprint():
            out[name] = float(entry["ppl"])
    return out


# what ekd eval never reads from its overrides: the student and its tokenizer are the run's export
NOT_READ_BY_EVAL = ("model.student", "model.tokenizer")


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The saved ``run_dir/config.yaml`` with dotted overrides applied.

    Raises:
        EkdError: ``run_dir`` is not a finished run (no config.yaml or student/).
        ConfigError: the config fails today's rules; where the saved config does (a run of an older ekd) on
            training settings alone, the line gives the ``ekd eval`` overrides that get past it
            (:func:`_saved_rule_failure`).
    """
    run_dir = Path(run_dir)
    if (refusal := not_a_finished_run(run_dir)) is not None:
        raise EkdError(refusal)
    saved = run_dir / "config.yaml"
    raw = yaml.safe_load(saved.read_text())
    flat = flat_config(raw)
    # a runs directory moved since (the one recorded is gone): the run's settings relative to it (data.store_dir=
    # auto) read where the run lies now — try-out 137, F1: its token store was rebuilt under the old run.output_dir,
    # re-creating the directory moved away. Where the recorded one is still there (a run linked or copied from it:
    # its store is there), it is kept (try-out 139, F5)
    # its name is its directory's (review 140, R5: a run renamed in place was evaluated as its old name)
    here = Path(os.path.abspath(run_dir))
    recorded = Path(str(flat.get("run.output_dir", ""))).expanduser()
    flat["run.name"] = here.name
    # (an older ekd's relative one: read where it lies)
    if not (recorded.is_absolute() and recorded.is_dir()):
        flat["run.output_dir"] = str(here.parent)
    given = parse_overrides(overrides or [])
    if unread := [k for k in given if k in NOT_READ_BY_EVAL and given[k] != flat.get(k)]:
        raise ConfigError(  # try-out 75, F5: model.student=OTHER scored the run's own student in silence
            f"ekd eval {run_dir}: {', '.join(unread)} {'is' if len(unread) == 1 else 'are'} not read: it scores the "
            f"run's exported student ({run_dir / 'student'}) with the tokenizer it trained with; to score another "
            "model, evaluate the run that made it (or distill it into a run of its own)",
            keys=tuple(unread),
        )
    teacher = str(given.get("model.teacher", flat.get("model.teacher", "")))
    from ekd.models.load import is_hub_id, is_preset

    pinned_apart = given.get("model.teacher_revision", flat.get("model.teacher_revision"))
    revision_given = "model.revision" in given and str(given["model.revision"]) != str(
        flat.get("model.revision", "")
    )
    if revision_given and pinned_apart:  # the export is the run's: model.revision would reach nothing
        raise ConfigError(
            f"ekd eval {run_dir}: model.revision is not read: it scores the run's exported student, and its "
            f"teacher is pinned by model.teacher_revision={pinned_apart}; set model.teacher_revision to read the "
            "teacher at another revision",
            keys=("model.revision",),
        )
    for key in ("model.revision", "model.teacher_revision"):
        if key in given and str(given[key]) != str(flat.get(key, "")) and not is_hub_id(teacher):  # t117, F2
            raise ConfigError(
                f"ekd eval {run_dir}: {key} is read of hub ids only, and the teacher {teacher} is "
                f"{'a preset' if is_preset(teacher) else 'a local directory'}: its figures would be the same, "
                "recorded under another revision (dropping the starting student's, measured under the run's); "
                f"drop {key}",
                keys=(key,),
            )
    try:
        cfg = config_from_dict(_nested({**flat, **given}))
    except ConfigError as e:
        refusal = _training_override_conflict(run_dir, flat, given, e)
        raise refusal or _saved_rule_failure(run_dir, flat, given, overrides or [], e) from None
    _say_training_overrides(run_dir, flat, given)
    say_keywords(cfg, given)  # a keyword typed here (the run's record is not: config_from_dict)
    try:  # as the saved config reads it (00, 0x0: 0 — try-out 92, F6)
        saved_seed = int(flat.get("run.seed", Config().run.seed))
    except (TypeError, ValueError):
        saved_seed = cfg.run.seed  # not a number: today's rules refused it above unless run.seed is given
    if cfg.model.teacher.startswith("preset:") and cfg.run.seed != saved_seed:
        raise ConfigError(  # try-out 90, F1: scored against another random teacher, recorded as the same one
            f"ekd eval {run_dir}: run.seed={cfg.run.seed} would build the run's teacher {cfg.model.teacher} from "
            f"another seed: random weights other than those it taught with (run.seed={saved_seed}), whose KL, "
            "agreement and figures would be recorded as the run's teacher's; leave run.seed out",
            keys=("run.seed",),
        )
    return cfg


def _say_training_overrides(run_dir: Path, saved: dict[str, Any], given: dict[str, Any]) -> None:
    """Warn of overrides that are training settings (no :data:`EVAL_READS` key) which the saved config does not need
    to pass today's rules (the way :func:`_saved_rule_failure` offers): evaluation reads none of them, so
    ``ekd eval RUN method.kd_temperature=2`` would seem to score KL at τ = 2 (try-out 108, F13)."""
    training = [
        k
        for k in given
        if not k.startswith(EVAL_READS + NOT_READ_BY_EVAL) and not _same(given[k], saved.get(k))
    ]
    if not training:
        return
    unneeded = []
    for key in training:  # one that gets an older run's saved config past today's rules is needed
        try:
            config_from_dict(_nested({**saved, **{k: v for k, v in given.items() if k != key}}))
            unneeded.append(key)
        except ConfigError:
            pass
    training = unneeded
    if not training:
        return
    log.warning(
        "ekd eval %s: %s %s training setting%s: evaluation reads none, and scores the run's student as it would "
        "without %s",
        run_dir,
        ", ".join(f"{k}={given[k]}" for k in training),
        "is a" if len(training) == 1 else "are",
        "" if len(training) == 1 else "s",
        "it" if len(training) == 1 else "them",
    )


def _same(given: Any, saved: Any) -> bool:
    """Whether an override's value is the saved one (``1e-3`` is 0.001)."""
    try:
        return float(given) == float(saved)
    except (TypeError, ValueError):
        return str(given) == str(saved)


def _nested(flat: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{"a.b": 1}`` → ``{"a": {"b": 1}}`` (an override may name a section the file lacks)."""
    out: dict[str, dict[str, Any]] = {}
    for key, value in flat.items():
        section, name = key.split(".", 1)
        out.setdefault(section, {})[name] = value
    return out


# What ``ekd eval RUN`` reads of a run's config: the data and eval sets, the models, the device and autocast,
# logging, and what decides whether the teacher is evaluated (ekd.train.prepare.evaluates_teacher). Any other
# key is a training setting: the evaluation's numbers are the same whatever its value.
EVAL_READS = (
    "data.",
    "model.teacher",  # and model.teacher_dtype; the student is the run's export (lora_*, export_*: training)
    "model.revision",
    "model.trust_remote_code",
    "model.attn_implementation",
    "eval.",
    "run.",
    "log.",
    "teacher.",
    "train.precision",
    "method.preset",
    "method.kd_weight",
    "method.objective",
    "method.sample_fraction",
    "method.sample_scorer",
)


def _training_override_conflict(
    run_dir: Path, saved: dict[str, Any], given: dict[str, Any], error: ConfigError
) -> ConfigError | None:
    """The refusal of overrides that contradict a saved config which passes today's rules by itself, when some of
    them are training settings (evaluation reads none: dropping them is the way on; try-out 116, F5:
    ``ekd eval RUN model.lora_r=0`` of a LoRA run was told that the run's saved config fails today's rules);
    None otherwise (:func:`_saved_rule_failure` says it)."""
    try:
        config_from_dict(_nested(saved))
    except ConfigError:
        return None  # the saved config itself fails today's rules
    training = [k for k in given if not k.startswith(EVAL_READS + NOT_READ_BY_EVAL)]
    if not training:
        return None
    one = len(training) == 1
    named = ", ".join(f"{k}={given[k]}" for k in training)
    return ConfigError(
        f"ekd eval {run_dir}: {error} — from the override{'' if one else 's'} {named}: "
        f"{'a training setting' if one else 'training settings'} that evaluation does not read; drop "
        f"{'it' if one else 'them'}",
        keys=error.keys,
    )


def _saved_rule_failure(
    run_dir: Path, saved: dict[str, Any], given: dict[str, Any], overrides: list[str], error: ConfigError
) -> Exception:
    """The error for a run whose config today's rules refuse. When the refused keys are the saved config's own
    training settings (a run of an older ekd: trained at τ = 0.05 before ``method.kd_temperature`` ≥ 0.1),
    the line adds the ``ekd eval`` command that sets each of them to today's default, checked here to pass;
    otherwise the refusal no such default gets past (an override of the user's, or a key evaluation reads,
    whose value would change the numbers), as it is. Validation itself is not relaxed: a new run, and the command given, pass every rule.
    The keys a refusal is about are the error's own (:class:`~ekd.errors.ConfigError` ``keys``), not read off
    its message.

    Args:
        saved: the saved config, flat (``section.key`` → value); ``given``: the overrides parsed, ``overrides``:
            as typed (kept in the command).
    """
    from ekd.methods import preset_values

    if "eval.tasks_dir" in error.keys and not {"eval.tasks", "eval.tasks_dir"} & set(given):
        # the run's saved tasks directory, gone since (a tasks dir in /tmp, another machine): the way on, as for
        # a saved task that no longer loads (try-out 138, F7: none was given)
        command = " ".join(["ekd eval", *map(shlex.quote, [str(run_dir), *overrides])])
        return ConfigError(
            f"{error}; it is the run's saved eval.tasks_dir ({run_dir / 'config.yaml'}, eval.tasks: "
            f"[{', '.join(map(str, saved.get('eval.tasks') or []))}]): `{command} eval.tasks_dir=PATH` reads them "
            f"from where they are now, `{command} {shlex.quote('eval.tasks=[]')}` evaluates without them",
            keys=error.keys,
        )
    defaults = flat_config(Config().to_dict())
    preset = given.get("method.preset", saved.get("method.preset"))
    defaults.update({f"method.{k}": v for k, v in preset_values(str(preset)).items()})
    fixes: dict[str, Any] = {}
    last = error
    for _ in range(len(saved)):
        named = [k for k in last.keys if k in saved and k not in given and k not in fixes]
        if named and named[0].startswith(EVAL_READS) and given and named[0] in defaults and not fixes:
            # a saved setting the user's overrides now contradict (try-out 72, F4: a saved eval.set_tags entry
            # for a set 'data.eval_sources={}' drops): say whose it is, and how to override it too
            return type(last)(
                f"{last} ({named[0]} is the run's saved value, from {run_dir / 'config.yaml'}: override it too, "
                f"e.g. {override_arg(named[0], defaults[named[0]])})",
                keys=last.keys,
            )
        if not named or named[0].startswith(EVAL_READS + NOT_READ_BY_EVAL) or named[0] not in defaults:
            return last  # what no default of a training setting gets past (the user's override, say)
        fixes[named[0]] = defaults[named[0]]
        try:
            config_from_dict(_nested({**saved, **given, **fixes}))
            break
        except ConfigError as e:
            last = e
    else:
        return last
    keys = ", ".join(fixes)
    one = len(fixes) == 1
    words = [
        shlex.quote(str(run_dir)),
        *map(shlex.quote, overrides),
        *(override_arg(k, v) for k, v in fixes.items()),
    ]
    command = "ekd eval " + " ".join(words)
    return ConfigError(
        f"the run's saved config {run_dir / 'config.yaml'} fails today's rules: {error}; {keys} "
        f"{'is a training setting' if one else 'are training settings'} that evaluation does not read, so "
        f"evaluate the run with today's default{'' if one else 's'}: `{command}`"
    )


@writes_into_run
def evaluate_saved_run(
    run_dir: Path, overrides: list[str] | None = None, *, cfg: Config | None = None
) -> dict[str, dict[str, float]]:
    """Reload ``run_dir/student`` with transformers and evaluate it (and the teacher) on the run's eval sets.

    Writes ``run_dir/eval.json`` and reliability diagrams under ``run_dir/plots``, holding the run's lock.

    Args:
        cfg: ``load_run_config(run_dir, overrides)`` where the caller has it already (``ekd eval RUN`` loads
            it once for the tasks check, the eval sets and the tasks); loaded here when None.

    Raises:
        RunDirError: another ekd process is using the run (training, resuming or evaluating it).
    """
    from ekd.log_level import apply_log_level
    from ekd.models.isolation import check_document_isolation
    from ekd.models.load import check_output_head, shared_vocab_size
    from ekd.models.positions import check_block_fits_positions
    from ekd.train.prepare import (
        autocast_dtype,
        check_models_fit_tokenizer,
        evaluates_teacher,
        load_teacher,
        resolve_device,
        run_boundary,
    )
    from ekd.train.run_tokenizer import run_tokenizer

    run_dir = Path(run_dir)
    student_dir = run_dir / "student"
    cfg = cfg if cfg is not None else load_run_config(run_dir, overrides)
    apply_log_level(cfg.log.level)
    from ekd.config.inert import has_eval_set

    if not has_eval_set(cfg.data):  # known from the config: no data is read (the builtin corpus has its own)
        return _no_eval_set(run_dir, cfg)
    device = resolve_device(cfg.run.device)
    amp = autocast_dtype(cfg, device)
    from ekd.data import load_splits
    from ekd.train.prepare import pack_run_splits, prepare_stored_data

    marker = read_marker(run_dir, otherwise="")
    if marker is None:
        # absent: an older ekd's run, or its record removed — said, with what it costs (try-out 139, F1: a LoRA
        # adapter was scored on a changed base without a word, its base's identity unchecked)
        log.warning(
            "%s holds no ekd-run.json (an older ekd's run, or the record removed): what it records is not checked "
            "— a LoRA base's weights, the held-out documents, the tokenizer class, the document boundary, the "
            "cache's teacher; put it back to have them checked",
            run_dir,
        )
    marker = marker or {}
    tokenizer = run_tokenizer(student_dir, marker)  # the class the run trained with
    recorded = marker.get("document_boundary")
    check_saved_teacher(run_dir, cfg, overrides)
    boundary = run_boundary(cfg, tokenizer, recorded)  # as it trained: no model read
    if evaluates_teacher(cfg):  # KL and agreement compare the two heads id by id: checked before any data
        check_models_fit_tokenizer(
            tokenizer,
            "student",
            {"teacher": (cfg.model.teacher, cfg.model.teacher_hub_revision)},
            cfg.model.trust_remote_code,
            fix="evaluate against the run's teacher or one of its family (model.teacher), or without a "
            "teacher (eval.teacher=false)",
        )
    if cfg.data.store_dir:  # the eval sets of the run's token store
        data = prepare_stored_data(cfg, run_dir, tokenizer, boundary)
        data.blocks.pop("train", None)
    else:
        try:
            splits = load_splits(cfg, max_chars=cfg.data.max_chars or None, train=False)
        except ConfigError as e:
            if cfg.data.eval_fraction > 0 and str(e).startswith("data.source"):  # try-out 76, F7: the way on
                raise ConfigError(
                    f"{e}; ekd eval reads data.source for the split the run held out of it: put it back, or score "
                    f"named sets only (`ekd eval {run_dir} data.eval_fraction=0 'data.eval_sources={{name: FILE}}'`)",
                    keys=e.keys,
                ) from None
            raise
        splits.pop("train", None)
        data = pack_run_splits(cfg, splits, tokenizer, boundary)
    if not data.blocks:  # every set came out empty: before any model is loaded
        return _no_eval_set(run_dir, cfg)
    check_held_out(run_dir, cfg, data.held_out, marker.get("held_out_documents"), _trained_data(run_dir))
    check_sets_unchanged(run_dir, cfg, data)
    recorded_base = marker.get("student_base")  # a LoRA run's base, as it trained on it
    try:
        student = load_exported_student(student_dir, cfg.model.trust_remote_code, recorded_base).to(device)
    except ModelError as e:
        from ekd.train.run_state import damaged_export

        raise ModelError(damaged_export(run_dir, e)) from None
    shared_vocab_size(len(tokenizer), ("student", student))
    check_block_fits_positions(student, cfg.data.block_length, "student")
    check_output_head(student, len(tokenizer), "student")
    if cfg.data.document_attention == "isolated":
        check_document_isolation(student, len(tokenizer), "student")
    teacher = None
    if evaluates_teacher(cfg):  # the same rule as the end of training
        if cfg.teacher.source == "cache":  # the teacher its cache was built from, not another (t131, F1)
            from ekd.teacher.cache.source import recorded_teacher_changed

            if changed := recorded_teacher_changed(
                cfg.model.teacher,
                cfg.teacher.cache_dir,
                marker.get("cache_teacher"),
                cfg.model.teacher_hub_revision,
            ):
                raise ConfigError(_not_the_caches_teacher(changed, run_dir, marker.get("cache_teacher")))
        _check_run_teacher(run_dir, cfg, marker or {}, typed=_typed_teacher(overrides, run_dir))
        teacher = load_teacher(cfg, data, device)
        # a hub teacher's pin is its loaded weights' hash: compared now (try-out 152, F2)
        if cfg.teacher.source == "cache" and (pinned := marker.get("cache_teacher")):
            from ekd.teacher.cache.source import cache_teacher_parts, loaded_teacher_changed

            revision, dtype, _ = cache_teacher_parts(pinned)
            if changed := loaded_teacher_changed(cfg, teacher, revision, dtype):
                raise ConfigError(_not_the_caches_teacher(changed, run_dir, marker.get("cache_teacher")))
    start = read_student_init(run_dir)  # read once: the divergence line's start and eval.json's
    started = starting_perplexities(start, data)
    results = evaluate_run(
        cfg, data, student, teacher, device, amp, plots_dir=run_dir / "plots", started=started
    )
    recorded = start if cfg.eval.student_init else None  # the run's file is written whatever the key says
    written = write_eval_json(
        run_dir, cfg, results, keep=True, data=data, autocast=amp, student_init=recorded
    )
    return _with_kept_teacher_figures(results, written)


def _with_kept_teacher_figures(results: EvalResults, written: dict[str, Any]) -> EvalResults:
    """``results`` with the figures against the teacher that eval.json kept for sets scored without one
    (:func:`ekd.eval.eval_json.with_teacher_figures`), and their ``<set>/teacher`` rows: the table shows what
    eval.json holds (try-out 160, F12: '—' beside a KL it kept)."""
    from ekd.eval.eval_json import TEACHER_SUFFIX, teacher_relative

    def numbers(entry: dict[str, Any], keep: Callable[[str], bool]) -> dict[str, float]:
        return {
            k: v
            for k, v in entry.items()
            if keep(k) and isinstance(v, (int, float)) and not isinstance(v, bool)
        }

    kept = {
        name
        for name, metrics in results.items()
        if "kl" not in metrics and isinstance(written.get(name), dict) and "kl" in written[name]
    }
    if not kept:
        return results
    out = EvalResults()
    out.block_sums, out.teacher_dtype = results.block_sums, results.teacher_dtype
    for name, metrics in results.items():
        out[name] = {**metrics, **numbers(written[name], teacher_relative)} if name in kept else metrics
        if name in kept and isinstance(row := written.get(f"{name}{TEACHER_SUFFIX}"), dict):
            out[f"{name}{TEACHER_SUFFIX}"] = numbers(row, lambda k: True)
    return out


def _typed_teacher(overrides: list[str] | None, run_dir: Path) -> bool:
    """Whether ``ekd eval``'s overrides name another ``model.teacher`` than the run's (a teacher the user chooses);
    the run's own, restated, is checked as the run's (try-out 164, F1: `model.teacher=<the run's hub id>` scored
    newer weights under it and replaced the run's figures, unchecked)."""
    from ekd.config.paths import same_location
    from ekd.train.run_dir import saved_config

    typed = [
        o.split("=", 1)[1].strip() for o in overrides or () if o.split("=", 1)[0].strip() == "model.teacher"
    ]
    if not typed:
        return False
    saved = str(((saved_config(run_dir) or {}).get("model") or {}).get("teacher", ""))
    return not (saved and (typed[-1] == saved or same_location(typed[-1], saved)))


def _check_run_teacher(run_dir: Path, cfg: Config, marker: dict, *, typed: bool) -> None:
    """``ekd eval RUN`` of a run taught online, against the teacher its config names (``typed``: one the user names
    instead, not checked): the weights there must be those the run recorded (``teacher_weights``), as ``--resume`` requires —
    a teacher retrained in place, or a hub id whose branch now resolves to newer weights, was scored without a
    word and replaced the run's recorded teacher in eval.json (try-out 154, N2).

    Raises:
        ConfigError: other weights there (one line: how to name the run's teacher, or to score without one).
    """
    from ekd.models.identity import same_weights

    recorded = marker.get("teacher_weights")
    if cfg.teacher.source != "online" or not recorded or typed:
        return
    if same_weights(recorded, cfg.model.teacher, cfg.model.teacher_hub_revision) is False:
        raise ConfigError(
            f"ekd eval: model.teacher {cfg.model.teacher} holds other weights than the teacher this run was taught by "
            "(retrained, replaced or a newer download since); name where those weights are (model.teacher=DIR, or "
            f"{cfg.model.teacher_revision_key}=COMMIT for a hub id), or score the student alone: "
            f"`ekd eval {shlex.quote(str(run_dir))} eval.teacher=false`"
        )


def _not_the_caches_teacher(changed: str, run_dir: Path, pinned: str | None = None) -> str:
    """``ekd eval``'s refusal of a teacher other than the one a run's cache was built from (``changed``: how;
    ``pinned``: the run's ``cache_teacher``, whose hub commit, where it has one, names that teacher — try-out 160,
    F4: the way that worked was not said)."""
    from ekd.teacher.cache.manifest import cache_teacher_parts
    from ekd.teacher.cache.signature import hub_commit

    commit = hub_commit(cache_teacher_parts(pinned)[0].rpartition("@")[2]) if pinned else None
    by_commit = f" (a hub id: model.teacher_revision={commit})" if commit else ""
    return (
        f"ekd eval: {changed}: its KL and agreement would be another model's; put the teacher the run's cache was "
        f"built from back{by_commit}, or score the student alone: `ekd eval {shlex.quote(str(run_dir))} "
        "eval.teacher=false`, "
        "which keeps the KL, agreement and teacher rows eval.json holds where the student scores as before"
    )


def check_sets_unchanged(run_dir: Path, cfg: Config, data: PreparedData) -> None:
    """``ekd eval RUN``: each eval set read now against the blocks eval.json records it was scored on, where both
    were read with the same data settings (so equal sources give equal blocks). The ``eval`` split held out of
    ``data.source`` that differs is refused: the source changed since the run, and its content-hash split may now
    hold out documents the student trained on (try-out 74, F6: one edited row moved into the split, scored as
    held-out text without a word). A named set that differs is said (its file changed: its figures replace
    those of other text, under the same name).

    Raises:
        ConfigError: the held-out split differs from the one the run scored.
    """
    from ekd.eval.eval_json import BLOCKS_KEY, SETTINGS_KEY, read_eval_json, recorded_settings, set_settings

    # one that cannot be read is refused (review 126, S7: the check was skipped)
    saved = read_eval_json(run_dir)
    if saved is None:
        return
    section = cfg.to_dict()["data"]
    for name, blocks in data.blocks.items():
        recorded = saved.get(name, {}).get(SETTINGS_KEY) if isinstance(saved.get(name), dict) else None
        if not isinstance(recorded, dict) or BLOCKS_KEY not in recorded:
            continue  # never scored, or by an ekd that did not record its blocks
        recorded = recorded_settings(recorded)  # an older ekd's entry: the keys added since at their defaults
        sha = recorded.pop(BLOCKS_KEY)
        if recorded != recorded_settings(set_settings(section, name)):
            continue  # scored with other settings: other blocks are expected
        if (now := blocks.fingerprint()) == sha:
            continue
        if name == "eval" and cfg.data.source != "pystdlib":
            raise _held_out_changed(run_dir, cfg, f"eval.json blocks_sha256 {str(sha)[:12]}, now {now[:12]}")
        log.warning(
            "eval set '%s': its blocks differ from those the run scored under that name (eval.json blocks_sha256 "
            "%s, now %s; its text changed): the figures written now replace those of other text",
            name,
            str(sha)[:12],
            now[:12],
        )


def check_held_out(
    run_dir: Path, cfg: Config, now: str | None, recorded: str | None, trained: dict[str, Any] | None = None
) -> None:
    """``ekd eval RUN``: the held-out split's documents (:func:`ekd.data.build.held_out_fingerprint`) against those
    the run held out (``held_out_documents`` in ekd-run.json), whatever blocks an override packs them into
    (try-out 76, F10: ``data.block_length=16`` got past the blocks' comparison and scored a trained document).
    Through the token store the record is the source's files and eval fraction
    (:func:`ekd.data.store_build.held_out_source_key`), so a run is evaluated the way it held its split out.
    ``trained``: the run's own ``data`` settings (its config.yaml, no override).

    Raises:
        ConfigError: the split holds other documents (a changed source, or another ``data.eval_fraction``); for a
            run through the token store (``data.store_dir``), whose key is its source's files: a file changed; a
            split drawn by the other path than the run's (``data.store_dir`` set or cleared: try-out 79, F2); a
            split drawn from a run that held nothing out (``data.eval_fraction=0``: try-out 79, F1).
    """
    from ekd.data.store_build import SOURCE_FILES_PREFIX

    if now is not None and trained is not None and not trained.get("eval_fraction", 1):
        if trained.get("source") == cfg.data.source:  # every document there was trained on
            why = (
                "the run held nothing out of its data.source (data.eval_fraction=0), so every document there was "
                "trained on and a split drawn now would score trained text as held-out"
            )
        else:
            why = (
                "the run held nothing out (data.eval_fraction=0) and draws no split from another data.source"
            )
        raise ConfigError(
            f"data.eval_fraction={cfg.data.eval_fraction}: {why}; score other text as named sets (`ekd eval "
            f"{run_dir} data.eval_fraction=0 'data.eval_sources={{name: FILE}}'`)",
            keys=("data.eval_fraction",),
        )
    if now is None or recorded is None or now == recorded:
        return
    stored_now, stored_then = (key.startswith(SOURCE_FILES_PREFIX) for key in (now, recorded))
    if stored_now != stored_then:
        if stored_then:
            how, fix = "through the token store", "keep data.store_dir as the run had it"
            if trained and trained.get("store_dir"):
                fix += f" ({trained['store_dir']})"
        else:
            how, fix = "in memory", "drop the data.store_dir override"
        raise ConfigError(
            f"data.store_dir: the run drew its held-out split {how}, and ekd can compare the split only when it is "
            f"drawn the same way: {fix}",
            keys=("data.store_dir",),
        )
    if stored_then:  # a token-store run, scored through the store: its source files decide
        n = len(SOURCE_FILES_PREFIX)
        figures = f"source files and eval fraction sha256 {recorded[n : n + 12]}, now {now[n : n + 12]}"
        raise _held_out_changed(
            run_dir, cfg, figures + "; the token store reads a file copied or touched as changed"
        )
    raise _held_out_changed(run_dir, cfg, f"documents sha256 {recorded[:12]}, now {now[:12]}")


def _trained_data(run_dir: Path) -> dict[str, Any] | None:
    """The ``data`` section of the run's own config.yaml (today's defaults for keys added since), None if absent."""
    from ekd.train.run_dir import saved_config

    saved = saved_config(run_dir)
    return saved.get("data") if saved else None


def _held_out_changed(run_dir: Path, cfg: Config, figures: str) -> ConfigError:
    from ekd.data.documents import text_split_note
    from ekd.train.run_dir import read_marker

    try:
        rule = (read_marker(run_dir, otherwise="") or {}).get("text_split")
    except EkdError:  # a corrupt marker: said where the run is opened; this refusal names the data
        rule = None
    return ConfigError(
        f"data.source {cfg.data.source}: the eval split it holds out now differs from the one this run held out "
        f"and scored ({figures}): the source or data.eval_fraction changed since the run"
        f"{text_split_note(cfg.data.source, rule)}, and documents the student "
        "trained on may now be held out; restore them as the run read them, or score named sets only (`ekd eval "
        f"{run_dir} data.eval_fraction=0 'data.eval_sources={{name: FILE}}'`)"
    )


def say_teacher_figures_dropped(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """One warning naming the sets whose re-evaluation replaces teacher figures with none (``ekd eval RUN
    eval.teacher=false``: KL, agreement and the ``<set>/teacher`` row were dropped without a word; try-out 77, F4)."""
    from ekd.eval.eval_json import TEACHER_SUFFIX

    def has_teacher(entries: dict[str, Any], name: str) -> bool:
        entry = entries.get(name)
        measured = isinstance(entry, dict) and ("kl" in entry or "agree" in entry)
        return measured or f"{name}{TEACHER_SUFFIX}" in entries

    lost = [
        n for n in new if not n.endswith(TEACHER_SUFFIX) and has_teacher(old, n) and not has_teacher(new, n)
    ]
    if lost:
        log.warning(
            "%s: %s scored now without the teacher (eval.teacher=false): their KL, agreement and teacher rows are "
            "dropped (`ekd compare` reads them); scoring them with the teacher again restores them",
            path,
            ", ".join(lost),
        )


def say_teacher_figures_nulled(path: Path, old: dict[str, Any], new: dict[str, Any]) -> None:
    """One warning naming the sets whose finite KL a re-evaluation replaces with NaN (``null``): the teacher evaluated
    now gave non-finite logits — a float16 teacher that overflows, say — where the one before did not (try-out 158,
    F4: the run's finite figures were overwritten in silence, the warning said only that the new ones are NaN)."""

    from ekd.eval.eval_json import TEACHER_KEY

    def finite_kl(entry: Any) -> bool:
        return (
            isinstance(entry, dict) and isinstance(kl := entry.get("kl"), (int, float)) and math.isfinite(kl)
        )

    def teachers_nan(entry: Any) -> bool:  # the student's own loss finite: the teacher's doing
        loss = entry.get("loss") if isinstance(entry, dict) else None
        finite_loss = isinstance(loss, (int, float)) and math.isfinite(loss)
        return finite_loss and "kl" in entry and not finite_kl(entry)

    nulled = [n for n in new if teachers_nan(new[n]) and finite_kl(old.get(n))]
    if nulled:
        before = old[nulled[0]].get(TEACHER_KEY)
        dtype = before.get("dtype") if isinstance(before, dict) else None
        again = f"model.teacher_dtype={dtype}" if dtype else "the teacher's dtype as before"
        log.warning(
            "%s: the finite KL, agreement and entropy figures of %s measured before are replaced by null (the "
            "teacher evaluated now gave non-finite logits); %s scores them again",
            path,
            ", ".join(nulled),
            again,
        )


def check_saved_teacher(
    run_dir: Path, cfg: Config, overrides: list[str] | None = None, *, sets: bool = True
) -> None:
    """``ekd eval RUN``: the teacher, given as a local directory that is not there (moved or deleted since the
    run, or mistyped in an override), while it would be read — for its figures on the eval sets (``sets``: they
    are scored), its downstream-task scores, or (a run of an older ekd) the eval sets' end-of-document id. One
    line before anything is scored or written, with every way on (try-out 38: ``eval.teacher=false`` still read
    it for the run's tasks, after rewriting eval.json).

    Raises:
        ModelError: the teacher is read and its directory is not there.
    """
    from ekd.models.load import is_preset
    from ekd.train.prepare import boundary_models, evaluates_teacher

    recorded = (read_marker(run_dir, otherwise="") or {}).get("document_boundary")
    _check_teacher_is_there(
        run_dir,
        cfg,
        figures=sets and evaluates_teacher(cfg),
        tasks=bool(cfg.eval.tasks) and cfg.eval.tasks_teacher and not is_preset(cfg.model.teacher),
        boundary=sets and not recorded and cfg.data.separator == "auto" and "teacher" in boundary_models(cfg),
        typed=_typed_teacher(overrides, run_dir),
    )


def _check_teacher_is_there(
    run_dir: Path, cfg: Config, *, figures: bool, tasks: bool, boundary: bool, typed: bool
) -> None:
    """:func:`check_saved_teacher`'s line, for what the teacher is read for (``figures``: its eval-set figures;
    ``tasks``: its task scores; ``boundary``: the end-of-document id; ``typed``: given on this command line)."""
    from ekd.models.load import is_preset

    spec = cfg.model.teacher
    if not (figures or tasks or boundary) or is_preset(spec) or Path(spec).expanduser().exists():
        return
    where = "is not there" if typed else "is not there any more"
    if not spec.startswith((".", "/", "~")):  # a hub id: not cached here while the hub cannot be reached
        from ekd.hub import endpoint_unreachable, hub_offline, model_directory

        if model_directory(spec, cfg.model.teacher_hub_revision) is not None or not (
            hub_offline() or endpoint_unreachable()
        ):
            return
        where = "is not in the hub cache here and the hub cannot be reached"  # try-out 154, N10
    run = shlex.quote(str(run_dir))
    uses = [u for u, on in (("its eval-set figures", figures), ("its task scores", tasks)) if on]
    if boundary:
        uses.append("the eval sets' end-of-document id, which this run of an older ekd did not record")
    alone = " ".join(
        k for k, on in (("eval.teacher=false", figures), ("eval.tasks_teacher=false", tasks)) if on
    )
    ways = [f"name where it is (ekd eval {run} model.teacher=PATH)"]
    if boundary:
        ways.append("pack the eval sets with the tokenizer's EOS (data.separator=eos)")
    elif alone:
        # what it keeps, said before eval.json is rewritten (try-out 138, F1: the KL, agreement and teacher rows of
        # the end of training were dropped, and the warning's remedy needed the teacher that is gone)
        drops = (
            ", which keeps the KL, agreement and teacher rows eval.json holds where the student scores as before"
            if figures
            else ""
        )
        ways.append(f"score the student alone (ekd eval {run} {alone}){drops}")
    whose = "the teacher" if typed else "the run's teacher"
    raise ModelError(f"ekd eval: {whose} {spec} (model.teacher) {where}; it is read for {' and '.join(uses)}; "
                     f"{', or '.join(ways)}")  # fmt: skip


def _no_eval_set(run_dir: Path, cfg: Config) -> dict:
    """A run with no eval set to score: nothing ({}) when it has ``eval.tasks`` (the caller scores them), else
    ConfigError naming the ways to score something."""
    if cfg.eval.tasks:
        return {}
    raise ConfigError(
        f"ekd eval {run_dir}: the run has no eval set (data.eval_fraction=0 and no data.eval_sources); "
        'name one: ekd eval RUN "data.eval_sources={name: path}", or score tasks with --tasks'
    )


def eval_entries(
    cfg: Config, results: dict[str, dict[str, float]], data: PreparedData, autocast: torch.dtype | None = None
) -> dict[str, Any]:
    """``results`` (set → metrics, as :func:`evaluate_run` returns them) as eval.json entries: each set's metrics
    with the data settings it was scored with, the sha256 of its blocks in ``data``, its scoring settings, the
    teacher and its per-block sums (:func:`ekd.eval.eval_json.with_settings`)."""
    from ekd.eval.eval_json import precision_name, with_settings
    from ekd.models.identity import teacher_identity

    blocks = {name: data.blocks[name].fingerprint() for name in results if name in data.blocks}
    scoring = {**cfg.to_dict()["eval"], "precision": precision_name(autocast)}
    per_block = getattr(results, "block_sums", None)  # an EvalResults: the sets' per-block sums
    ran = getattr(results, "teacher_dtype", None)  # the evaluated teacher's torch.dtype, None without one
    teacher = teacher_identity(cfg, dtype_name(ran) if ran is not None else None)
    return with_settings(results, cfg.to_dict()["data"], blocks, scoring, teacher, per_block)


def write_student_init(run_dir: Path, entries: dict[str, Any]) -> None:
    """Write the starting student's eval.json entries (:func:`eval_entries` of the evaluation before the first
    step) to ``run_dir``/:data:`~ekd.eval.eval_json.STUDENT_INIT_FILE`, which the end of training (a --resume
    included) reads back into eval.json where ``eval.student_init`` says so, and a --resume and ``ekd eval RUN``
    for the divergence line's start whatever it says (review 149, R9: a run evaluated at step 0 by ``eval.every``
    alone was told after a --resume that it may have started diverged)."""
    from ekd.eval.eval_json import STUDENT_INIT_FILE
    from ekd.io import atomic_write_text, strict_json

    atomic_write_text(run_dir / STUDENT_INIT_FILE, strict_json(entries))


def read_student_init(run_dir: Path) -> dict[str, Any] | None:
    """The entries :func:`write_student_init` wrote, or None where there are none (a run that did not evaluate
    its start, or an older ekd's) or they cannot be read (said in a warning: the table then has no starting
    student's rows; nothing else depends on them)."""
    from ekd.eval.eval_json import STUDENT_INIT_FILE, malformed, with_overflowed_perplexities
    from ekd.json_record import read_json_record

    path = run_dir / STUDENT_INIT_FILE
    no_rows = "eval.json gets no starting student's figures"
    try:
        saved = read_json_record(path, no_rows)
    except EkdError as e:
        log.warning("%s", e)
        return None
    if saved is not None and (problem := malformed(saved)):
        log.warning("%s is not what ekd writes (%s); %s", path, problem, no_rows)
        return None
    return with_overflowed_perplexities(saved) if saved is not None else None


def write_eval_json(
    run_dir: Path,
    cfg: Config,
    results: dict[str, dict[str, float]],
    keep: bool,
    data: PreparedData,
    autocast: torch.dtype | None = None,
    student_init: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Write ``run_dir/eval.json``: each set's metrics with the data settings it was scored with and the sha256
    of its blocks in ``data`` (:mod:`ekd.eval.eval_json`).

    Args:
        results: Set → metrics, as :func:`evaluate_run` returns them (their per-block sums recorded too).
        keep: ``ekd eval RUN``: keep the entries of the sets not scored now, with their own recorded
            settings, and the ``tasks`` section (one log line names the kept sets), and the starting student's
            figures of a set scored again the same way; the end of training writes its evaluation alone (the
            student changed).
        student_init: the starting student's entries (:func:`read_student_init`), recorded in the entries of the
            sets they match (:func:`ekd.eval.eval_json.with_student_init`); with ``keep``, None takes them from the
            eval.json it replaces.

    Returns:
        The entries written.
    """
    from ekd.eval.eval_json import (
        merge,
        read_eval_json,
        student_init_entries,
        with_student_init,
        with_teacher_figures,
    )
    from ekd.io import atomic_write_text, strict_json

    path = run_dir / "eval.json"
    written = with_student_init(eval_entries(cfg, results, data, autocast), student_init)
    if keep:
        old = read_eval_json(run_dir)  # one that cannot be read is refused, never replaced (review 126, R4)
        if old is not None:
            # scored without the teacher now (it may be gone): what was measured with it stays where the student's
            # own figures are the same (try-out 138)
            written, kept_teacher = with_teacher_figures(written, old)
            if kept_teacher:
                log.info(
                    "%s keeps the KL, agreement and teacher rows of %s as measured before (the student scores "
                    "the same there)",
                    path,
                    ", ".join(kept_teacher),
                )
            say_teacher_figures_dropped(path, old, written)
            say_teacher_figures_nulled(path, old, written)
            # the start did not change: its figures, where this scores a set as they were (try-out 90, F3: after
            # one `ekd eval` scored otherwise, eval.json had lost them; the run's file still has them)
            start = student_init_entries(old) if student_init is None else student_init
            written = with_student_init(written, start)
            written, kept = merge(old, written)
            if kept:
                log.info(
                    "%s keeps %s (not scored now), as it was",
                    path,
                    ", ".join(kept),
                )
    elif path.is_file():  # the end of training (a --resume that trained further): older results describe
        try:  # the student before these steps; say which are dropped
            dropped = sorted(set(json.loads(path.read_text())) - set(written))
        except (OSError, ValueError, TypeError):
            dropped = []
        if dropped:
            log.info(
                "%s: %s dropped (scored on the student before these steps; `ekd eval %s ...` scores them again)",
                path,
                ", ".join(dropped),
                shlex.quote(str(run_dir)),
            )
    atomic_write_text(path, strict_json(written))
    return written
