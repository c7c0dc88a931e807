"""Evaluation of a run: during training, at its end, and of a saved run directory (``ekd eval``)."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path

import yaml
from torch import nn

from ekd.config import Config, config_from_dict, parse_overrides
from ekd.errors import EkdError
from ekd.models.lora import is_adapter_dir, load_exported_student
from ekd.train.prepare import PreparedData
from ekd.train.run_dir import writes_into_run


def evaluate_run(
    cfg: Config,
    data: PreparedData,
    student: nn.Module,
    teacher: nn.Module | None,
    device,
    amp,
    plots_dir: Path | None = None,
    ranks=None,
) -> dict[str, dict[str, float]]:
    """Evaluate the student (and the teacher, if loaded) on every eval split.

    ``ranks`` (``ekd.train.distributed.Ranks``): under ``torchrun`` every rank calls this, evaluates a 1/W
    share of each split's batches and gets the all-reduced metrics of the whole split (no rank idles in a
    collective while another evaluates); pass ``plots_dir`` on one rank only.
    """
    share = {"rank": ranks.rank, "world_size": ranks.world_size} if ranks is not None else {}
    drawn: list = []  # (bins, path, title): drawn once every collective is done, by the rank given plots_dir
    from ekd.data import iter_eval
    from ekd.eval import evaluate, plot_reliability

    results: dict[str, dict[str, float]] = {}
    use_teacher = teacher if cfg.eval.teacher else None
    for name, blocks in data.blocks.items():
        if name == "train":
            continue
        batches = list(iter_eval(blocks, cfg.eval.batch_size, cfg.data.max_eval_blocks))
        metrics, bins = evaluate(
            student,
            batches,  # each moved to the device when it is evaluated
            use_teacher,
            vocab_size=data.vocab_size,
            ece_bins=cfg.eval.ece_bins,
            entropy_buckets=cfg.eval.entropy_buckets,
            device=device,
            autocast_dtype=amp,
            **share,
        )
        results[name] = metrics
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
            path.parent.mkdir(parents=True, exist_ok=True)
            plot_reliability(bins, path, title)

    if ranks is None:
        draw()
    else:  # a plot that fails on rank 0 ends every rank alike (none waits in a collective for it)
        from ekd.train.rank_work import run_on_main

        run_on_main(ranks, draw, "draw the reliability diagrams", share=False)
    return results


RUN_PARTS_DEPTH = 3  # how far above a path a run is looked for (RUN/checkpoints/step-000100/...: 3)


def is_finished_run(path: Path) -> bool:
    """Whether ``path`` is a run ``ekd distill`` finished: config.yaml and an exported student/ (a model
    directory or a LoRA adapter)."""
    student = path / "student"
    return (path / "config.yaml").is_file() and (
        (student / "config.json").is_file() or is_adapter_dir(student)
    )


def enclosing_run(path: Path) -> str | None:
    """The finished run ``path`` lies inside (``RUN/student``, the exported model; ``RUN/checkpoints/step-N``),
    at most ``RUN_PARTS_DEPTH`` levels up, spelled as ``path`` is (relative stays relative); None if none."""
    path = Path(path)
    run = next((p for p in list(path.resolve().parents)[:RUN_PARTS_DEPTH] if is_finished_run(p)), None)
    return None if run is None else _as_given(run, path)


def _as_given(run: Path, given: Path) -> str:
    """``run`` (a resolved ancestor of ``given``) spelled as the user spelled ``given``: 'w/runs/a' for
    'w/runs/a/student', '.' for 'student'; its absolute path when that cannot be read off ``given``."""
    up = len(given.resolve().relative_to(run).parts)
    if ".." not in given.parts and up <= len(given.parents):
        return str(given.parents[up - 1])
    return str(run)


def load_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The saved ``run_dir/config.yaml`` with dotted overrides applied.

    Raises:
        EkdError: ``run_dir`` is not a finished run (no config.yaml or student/).
    """
    run_dir = Path(run_dir)
    if not is_finished_run(run_dir):
        run = enclosing_run(run_dir)  # RUN/student, the exported model: the run is what is evaluated
        hint = (
            f"; it lies inside the finished run {run}: evaluate that with `ekd eval {run}`"
            if run is not None
            else "; run ekd distill first"
        )
        raise EkdError(f"{run_dir} is not a finished ekd run (needs config.yaml and student/){hint}")
    saved = run_dir / "config.yaml"
    raw = yaml.safe_load(saved.read_text())
    flat = {f"{s}.{k}": v for s, sec in raw.items() for k, v in (sec or {}).items()}
    flat.update(parse_overrides(overrides or []))
    sections = {k.split(".", 1)[0] for k in flat}  # an override may name a section the file lacks
    return config_from_dict(
        {s: {k.split(".", 1)[1]: v for k, v in flat.items() if k.startswith(s + ".")} for s in sections}
    )


@writes_into_run
def evaluate_saved_run(run_dir: Path, overrides: list[str] | None = None) -> dict[str, dict[str, float]]:
    """Reload ``run_dir/student`` with transformers and evaluate it (and the teacher) on the run's eval sets.

    Writes ``run_dir/eval.json`` and reliability diagrams under ``run_dir/plots``, holding the run's lock.

    Raises:
        RunDirError: another ekd process is using the run (training, resuming or evaluating it).
    """
    from ekd.io import atomic_write_text, strict_json
    from ekd.log_level import apply_log_level
    from ekd.models.load import check_output_head, load_tokenizer, shared_vocab_size
    from ekd.train.prepare import autocast_dtype, evaluates_teacher, load_teacher, resolve_device

    run_dir = Path(run_dir)
    student_dir = run_dir / "student"
    cfg = load_run_config(run_dir, overrides)
    apply_log_level(cfg.log.level)
    device = resolve_device(cfg.run.device)
    amp = autocast_dtype(cfg, device)
    from ekd.data import load_splits
    from ekd.train.prepare import pack_run_splits, prepare_stored_data

    tokenizer = load_tokenizer(str(student_dir), role="student")
    if cfg.data.store_dir:  # the eval sets of the run's token store
        data = prepare_stored_data(cfg, run_dir, tokenizer)
        data.blocks.pop("train", None)
    else:
        splits = load_splits(cfg, max_chars=cfg.data.max_chars or None)
        splits.pop("train", None)
        data = pack_run_splits(cfg, splits, tokenizer)
    student = load_exported_student(student_dir, cfg.model.trust_remote_code).to(device)
    shared_vocab_size(len(tokenizer), ("student", student))
    check_output_head(student, len(tokenizer), "student")
    teacher = None
    if evaluates_teacher(cfg):  # the same rule as the end of training
        teacher = load_teacher(cfg, data, device)
    results = evaluate_run(cfg, data, student, teacher, device, amp, plots_dir=run_dir / "plots")
    written = dict(results)
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):  # keep `ekd eval --tasks` results
        written["tasks"] = json.loads((run_dir / "eval.json").read_text())["tasks"]
    atomic_write_text(run_dir / "eval.json", strict_json(written))
    return results
