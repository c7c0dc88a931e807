"""The ``ekd`` command: demo | distill | cache | eval | compare | student | list | config | plan.

    ekd demo [--quick] [--methods kd,sekd,...]      the embedded default, no network
    ekd distill CONFIG [key=value ...]             distill a student (``--resume``, ``--overwrite``)
    ekd cache CONFIG [key=value ...]               build an offline teacher cache (``cache info|verify DIR``)
    ekd eval RUN_DIR [key=value ...]               evaluate a saved student (``--tasks arc_easy,...``: lm-eval)
    ekd compare RUN... [--out DIR]                 methods × seeds table, paired differences, Pareto plots
    ekd student init TEACHER OUT --layers N        build a student from a teacher (layer dropping or --from-config)
    ekd list [divergences|presets|scorers|policies|temperatures|architectures]
    ekd config show [CONFIG] [key=value ...]       print the resolved config (``--explain`` for every key)
    ekd plan CONFIG --gpus N [--gpu-memory 80GiB]  per-rank GPU memory of the run, and which mode fits

User mistakes print one line ``ekd: error: ...`` and exit 2 (``ekd --debug CMD`` shows the traceback).
Ctrl-C and SIGTERM print ``ekd: interrupted`` and how to go on, and exit 130 / 143 (:mod:`ekd.signals`).
Under torchrun a rank whose collective lost its peer (another rank ended first) exits 1 without a traceback;
rank 0 says so in one line, with how to go on (rank 0 killed without a word: the first other rank says it).
"""

from __future__ import annotations

import argparse
import logging
import os
import re
import signal
import sys
import threading
from pathlib import Path

from ekd import __version__
from ekd.errors import ConfigError, EkdError, ModelError, copy_of_rank0
from ekd.io import dangling_link
from ekd.log_level import close_progress_bars, set_level_floor
from ekd.nearest import close_names, did_you_mean, either
from ekd.signals import (
    SIGINT_EXIT,
    SIGTERM_EXIT,
    exit_promptly,
    interrupt_behind,
    interrupt_exit_code,
    interrupted_by,
    sigterm_as_interrupt,
    work_done,
)
from ekd.words import counted, one_line

SIZE = "SIZE"  # the metavar of options whose value is a size with its unit (``_refuse_split_size``)


def _add_config_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    p.add_argument("config", nargs="?" if not required else None, help="YAML config file (see configs/)")
    p.add_argument(
        "overrides",
        nargs="*",
        help="more YAML files (merged in order) and dotted overrides, e.g. train.max_steps=100 method=sekd",
    )


class _Parser(argparse.ArgumentParser):
    """No abbreviated options: ``--o`` must not be taken for ``--overwrite`` (the error suggests the options
    it starts, see ``_unrecognized``). A value outside ``choices`` (a command name, ``--parallel``) gets the
    same "did you mean" as config values. Subcommands inherit both."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, allow_abbrev=False, **kwargs)

    argv: list[str] = []  # the words being parsed (``parse`` sets them), for the hint below
    size_options: set[str] = set()  # options with metavar SIZE, of every command (``parse`` sets them)

    def error(self, message: str):  # type: ignore[override]
        """argparse's error as one line, without its usage block (the line says where the usage is), plus: a
        required option reported missing because it was misspelt gets the "did you mean" an unknown option
        gets (``plan --gpu 2`` → ``--gpus``)."""
        if message.startswith("the following arguments are required"):
            # argparse lists a '*' positional after a missing one too ("config, overrides"): only the missing
            optional = {a.dest for a in self._actions if a.nargs in ("*", "?")}
            head, _, names = message.partition(": ")
            message = f"{head}: {', '.join(n for n in names.split(', ') if n not in optional)}"
            options = _options(self)
            typos = [w.split("=", 1)[0] for w in _Parser.argv if w.startswith("-")]
            hints = [
                f"{w} (did you mean {either(close)}?)"
                for w in typos
                if w not in options and (close := close_names(w, options))
            ]
            if hints:
                message += f"; unrecognized: {' '.join(hints)}"
            elif dashed := [w for w in typos if w not in options and not w.startswith("--") and len(w) > 2]:
                # a path starting with '-' (a run named -dash) taken for an option (try-out 137, F11)
                message += (
                    f"; {dashed[0]} reads as an option: write a path starting with '-' as ./{dashed[0]}"
                )
        hint = "" if "did you mean" in message else f" (`{self.prog} --help` lists what it takes)"
        line = f"{self.prog}: error: {message}{hint}"
        # under torchrun every rank parses the same command line: local rank 0 says it (try-out 37: twice); a
        # command the ranks run together joins them with it, so that another node's ranks, given another line,
        # end at once instead of waiting in the rendezvous (try-out 153, N1: a flag typo on one node)
        command = next((w for w in _Parser.argv if not w.startswith("-")), "")
        if command in ("distill", "cache") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            _refuse_with_peers(EkdError(f"{self.prog}: {message}{hint}"))
        self.exit(2, None if int(os.environ.get("LOCAL_RANK", "0")) else f"{line}\n")

    def _check_value(self, action: argparse.Action, value: object) -> None:
        if action.choices is not None and value not in action.choices:
            choices = ", ".join(repr(c) for c in action.choices)
            hint = did_you_mean(str(value), [str(c) for c in action.choices])
            raise argparse.ArgumentError(action, f"invalid choice: {value!r} (choose from {choices}){hint}")

    def _parse_optional(self, arg_string: str):
        """A word starting '-<digit>' ('-5GiB', '-3', '-.5') is a value, so that the option's own check names
        it; argparse takes only plain negative numbers for values and answers "expected one argument" to
        the rest. No ekd option starts with a digit."""
        if re.match(r"-\.?\d", arg_string):
            return None
        return super()._parse_optional(arg_string)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ekd", description="Token-level knowledge distillation of causal LMs.")
    parser.add_argument("--version", action="version", version=f"ekd {__version__}")
    parser.add_argument("--debug", action="store_true", help="show tracebacks for errors")
    parser.add_argument("-q", "--quiet", action="store_true", help="only warnings and errors in the log")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "demo", help="run the embedded default end to end (builtin corpus, tiny models, no network)"
    )
    p.add_argument("--quick", action="store_true", help="smaller budget (≤ 3 minutes on 2 CPU cores)")
    p.add_argument(
        "--methods", default="", help="comma-separated presets to compare (default: the demo list)"
    )
    p.add_argument(
        "--out",
        default="runs/demo",
        help="demo directory (teacher, tokenizer and runs are cached here; default: runs/demo)",
    )
    p.add_argument(
        "--steps", type=int, default=None, help="distillation steps per method (default: the budget's)"
    )
    p.add_argument(
        "--fresh",
        action="store_true",
        help="ignore the cached teacher, tokenizer, student-init and cache (the method runs are always distilled again)",
    )
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="seeds per method (mean ± std and paired differences; default: 1)",
    )
    p.add_argument(
        "--from-scratch",
        action="store_true",
        help="students start from random weights, not a CE-pre-trained student",
    )
    p.add_argument(
        "--no-tasks",
        action="store_true",
        help="skip the downstream tasks (two local lm-eval tasks made from held-out stdlib source)",
    )

    p = sub.add_parser("distill", help="distill a student from a teacher (or a teacher cache)")
    _add_config_args(p)
    p.add_argument(
        "--resume", action="store_true", help="continue the run in run_dir from its latest checkpoint"
    )
    p.add_argument("--overwrite", action="store_true", help="replace an existing run directory")

    p = sub.add_parser(
        "cache",
        help="build, inspect, verify or import an offline teacher cache",
        description=CACHE_FORMS,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("config", help="YAML config, or 'info'/'verify' DIR, or 'import' SRC")
    p.add_argument("overrides", nargs="*", help="dotted overrides (or the cache directory for info/verify)")
    p.add_argument(
        "--overwrite", action="store_true", help="replace an existing cache built with another signature"
    )
    from ekd.teacher.cache.command import add_import_arguments

    add_import_arguments(p)

    p = sub.add_parser("eval", help="evaluate a saved student (runs/<name>) on the run's eval sets")
    p.add_argument("run_dir", help="run directory written by ekd distill")
    p.add_argument("overrides", nargs="*", help="dotted overrides, e.g. eval.teacher=false")
    p.add_argument(
        "--tasks",
        default=None,
        help="lm-eval tasks only (no eval sets), e.g. arc_easy,hellaswag,piqa,lambada_openai,gsm8k (needs ekd[eval]; "
        "default: the eval sets, then the run's eval.tasks)",
    )
    p.add_argument(
        "--tasks-dir",
        default="",
        help="directory of lm-eval task YAMLs (local datasets, no network; default: the run's eval.tasks_dir)",
    )
    p.add_argument(
        "--limit",
        type=int,
        default=None,
        help="at most N documents per task (default: the run's eval.tasks_limit)",
    )
    p.add_argument(
        "--num-fewshot", type=int, default=None, help="few-shot examples per task (default: the task's)"
    )

    p = sub.add_parser(
        "compare",
        help="aggregate finished runs (methods × seeds) into one table, paired differences and plots",
    )
    p.add_argument("runs", nargs="+", help="run directories written by ekd distill")
    p.add_argument(
        "--out", default="compare", help="directory for compare.md/.csv/.json and plots/ (default: compare)"
    )
    p.add_argument(
        "--baselines",
        default=None,
        help="methods to report paired differences against, comma-separated (default: kd,ce where present)",
    )
    p.add_argument("--no-plots", action="store_true", help="tables only")

    p = sub.add_parser("student", help="student tools")
    ssub = p.add_subparsers(dest="student_command", required=True)
    s = ssub.add_parser(
        "init",
        help="build a student directory from a teacher: keep some decoder layers, or the teacher's config with overrides",
    )
    s.add_argument("teacher", help="teacher: a hub id or a saved Hugging Face model directory")
    s.add_argument("out", help="directory to write the student to (a standard HF model directory)")
    s.add_argument(
        "--layers",
        type=int,
        default=None,
        help="keep N decoder layers, evenly spaced (first and last kept; N=1 keeps layer 0)",
    )
    s.add_argument("--keep-layers", default="", help="keep these decoder layers, increasing, e.g. 0,4,8,11")
    s.add_argument(
        "--from-config",
        nargs="+",
        default=[],
        metavar="KEY=VALUE",
        help="random init from the teacher's config with these overrides, e.g. num_hidden_layers=4 hidden_size=256",
    )
    tie = s.add_mutually_exclusive_group()
    tie.add_argument(
        "--tie-embeddings",
        dest="tie",
        action="store_true",
        default=None,
        help="tie head and embeddings (default: as the teacher)",
    )
    tie.add_argument(
        "--untie-embeddings",
        dest="tie",
        action="store_false",
        help="separate head and embeddings (default: as the teacher)",
    )
    s.add_argument("--revision", default="", help="teacher revision (hub; default: its main branch)")
    s.add_argument("--trust-remote-code", action="store_true", help="allow the teacher's own modeling code")
    s.add_argument("--seed", type=int, default=0, help="seed of the random init (--from-config; default: 0)")
    s.add_argument(
        "--overwrite", action="store_true", help="replace a student directory written by this command"
    )

    p = sub.add_parser(
        "list", help="show registered divergences, presets, scorers, policies, temperatures, architectures"
    )
    p.add_argument(
        "what",
        nargs="?",
        default="all",
        help="one table: divergences, presets, scorers, policies, temperatures or architectures (default: all)",
    )

    p = sub.add_parser(
        "plan", help="estimate per-rank GPU memory of a run before renting GPUs, and which mode fits"
    )
    _add_config_args(p)
    p.add_argument("--gpus", type=int, required=True, help="number of ranks (GPUs) the run will use")
    p.add_argument(
        "--gpu-memory",
        metavar=SIZE,
        default="80GiB",
        help="memory of one GPU, with its unit: 80GiB, 141GB, 81920MiB (default 80GiB)",
    )
    p.add_argument(
        "--parallel", choices=("ddp", "fsdp"), default=None, help="plan only this mode (default: both)"
    )
    p.add_argument(
        "--placement",
        choices=("replicate", "shard"),
        default=None,
        help="plan only this teacher placement (default: both)",
    )
    p.add_argument(
        "--param-dtype",
        choices=("fp32", "bf16"),
        default="fp32",
        help="student parameter dtype (fp32 master; default: fp32)",
    )
    p.add_argument(
        "--vocab-size",
        type=_whole_number,
        default=None,
        help="vocabulary of the preset:<name> models (default: from the config; refused without a preset)",
    )

    p = sub.add_parser("config", help="config tools")
    csub = p.add_subparsers(dest="config_command", required=True)
    s = csub.add_parser("show", help="print the resolved config")
    _add_config_args(s, required=False)
    s.add_argument("--explain", action="store_true", help="print every key with its type, default and help")
    return parser


def cmd_distill(args) -> int:
    from ekd.config import load_config, split_config_and_overrides
    from ekd.log_level import apply_log_level

    try:  # a config's mistake is said before the training stack's imports (seconds)
        paths, overrides = split_config_and_overrides(args.config, args.overrides)
        cfg = load_config(paths, overrides)
    except EkdError as e:  # under torchrun the other ranks end with it, not wait for this one
        _refuse_with_peers(e)
        raise
    from ekd.train.run_dir import RunFinished
    from ekd.train.trainer import train

    apply_log_level(cfg.log.level)
    _say_another_runs_config(paths, cfg)
    try:
        result = train(cfg, resume=args.resume, overwrite=args.overwrite)
    except RunFinished as e:  # --resume of a finished run: nothing to do, nothing appended (every rank: 0)
        if not copy_of_rank0(e):  # under torchrun rank 0 says so, once
            print(f"ekd: {e}")
        return 0
    work_done()  # the run is finished and written: an interrupt from here on changes nothing
    if not _rank0():  # under torchrun rank 0 alone reports (as it alone logs)
        return 0
    print(f"student saved to {result.run_dir / 'student'} ({_run_summary(result)})")
    _print_eval(result.eval, result.run_dir)
    return 0


def _refuse_with_peers(e: EkdError) -> None:
    """:func:`ekd.train.same_settings.refuse_with_peers`, imported only under torchrun."""
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        from ekd.train.same_settings import refuse_with_peers

        refuse_with_peers(e)


def _say_another_runs_config(paths: list[str], cfg) -> None:
    """A warning when a config file is a run's saved ``config.yaml`` and names another run directory (try-out 26:
    a project copied elsewhere, `ekd distill runs/x/config.yaml --resume` resumed the original, whose absolute
    ``run.output_dir`` the file holds, and left the copy as it was)."""
    from ekd.train.run_dir import MARKER

    for path in map(Path, paths):
        if path.name == "config.yaml" and (path.parent / MARKER).is_file():
            here, named = path.parent.resolve(), cfg.run_dir.resolve()
            if here != named and _rank0():
                logging.getLogger("ekd").warning(
                    "%s is the saved config of the run %s, but it names the run %s, which this command uses; set "
                    "run.output_dir=%s (and run.name) to use the run beside the file",
                    path,
                    here,
                    named,
                    here.parent,
                )


def _run_summary(result) -> str:
    """'400 steps, 55 s, KD positions 12.3%'; resumed: '400 steps (resumed at step 250), 20 s this segment,
    55 s in all, KD positions 12.3%' — or, from a checkpoint that did not record the run's totals, this
    segment's time and KD positions, said so."""
    kd = f"KD positions {100 * result.kd_fraction:.1f}%"
    if result.resumed_at is None:
        return f"{counted(result.steps, 'step')}, {result.wall_time:.0f} s, {kd}"
    steps = counted(result.steps, "step")
    head = f"{steps} (resumed at step {result.resumed_at}), {result.wall_time:.0f} s this segment"
    if not result.whole_run:
        return f"{head}, {kd} this segment (its checkpoint did not record the earlier segments)"
    return f"{head}, {result.total_time:.0f} s in all, {kd}"


def _print_eval(results: dict[str, dict[str, float]], run_dir: Path | None = None) -> None:
    """The eval table of ``ekd distill`` / ``ekd eval``: one row per set (teacher rows under ``<set>/teacher``),
    its documents and scored tokens beside the metrics, a tiny set marked and explained under the table. With
    ``run_dir``, the starting student's figures its eval.json records follow each set's row
    (``<set>/student_init``, ``eval.student_init``)."""
    from ekd.eval import results_table
    from ekd.eval.eval_json import student_init_rows_of
    from ekd.eval.report import TINY_MARK, ppl_note, tiny_note, tiny_sets

    if not results:  # no eval set (data.eval_fraction=0 and no data.eval_sources): no table to print
        return
    if run_dir is not None and (start := student_init_rows_of(run_dir)):
        ordered: dict[str, dict[str, float]] = {}
        for name, metrics in results.items():
            ordered[name] = metrics
            if f"{name}/student_init" in start:  # the start beside the result, then the teacher
                ordered[f"{name}/student_init"] = start[f"{name}/student_init"]
        results = ordered
    sizes = {  # (documents, scored tokens) of the student's sets (a run evaluated by an older ekd: none)
        name: (int(m["documents"]), int(m["tokens"])) for name, m in results.items() if "documents" in m
    }
    tiny = tiny_sets(sizes)

    def of_tiny(name: str) -> bool:  # a set's teacher and starting-student rows describe the same few texts
        return name in tiny or name.removesuffix("/teacher").removesuffix("/student_init") in tiny

    rows = [{"set": name + (TINY_MARK if of_tiny(name) else ""), **m} for name, m in results.items()]
    if any("ppl_full_head" in m for m in results.values()):
        for row in rows:  # a head without rows past the tokenizer (one trimmed for export): the same softmax
            if "ppl" in row:
                row.setdefault("ppl_full_head", row["ppl"])
    boundary = any(r.get("boundary_tokens") != 0 for r in rows)
    cols = [
        ("set", "eval set", ""),
        ("documents", "docs", ".0f"),
        ("tokens", "scored tokens", ",.0f"),
        ("ppl", "ppl", ".2f"),
        # no end-of-document target in any set (data.separator=none): the column would repeat ppl (try-out 47)
        *([("ppl_no_boundary", "ppl w/o EOS", ".2f")] if boundary else []),
        *([("ppl_full_head", "ppl (full head)", ".2f")] if any("ppl_full_head" in r for r in rows) else []),
        ("acc", "acc", ".3f"),
        ("ece", "ECE %", ".2f"),
        ("kl", "KL(t‖s)", ".3f"),
        ("agree", "top-1 agree", ".3f"),
    ]
    print(results_table(rows, cols))
    print(ppl_note(cols, boundary))
    if note := tiny_note(sizes):
        print(note)


def cmd_eval(args) -> int:
    overrides = list(args.overrides)
    for flag, key in (("tasks", "tasks"), ("tasks_dir", "tasks_dir"), ("limit", "tasks_limit")):
        value = getattr(args, flag)
        if value not in ("", None):
            overrides.append(f"eval.{key}={value}")
    if args.num_fewshot is not None:
        overrides.append(f"eval.tasks_num_fewshot={args.num_fewshot}")
    if args.tasks and (ignored := [o for o in args.overrides if o.split("=", 1)[0].startswith("data.")]):
        raise ConfigError(  # they choose eval sets' blocks, which --tasks does not score
            f"ekd eval --tasks runs the lm-eval tasks alone, so {' '.join(ignored)} would change nothing; to score "
            f"the eval sets and then the tasks, pass eval.tasks={args.tasks} instead of --tasks {args.tasks}"
        )
    if args.tasks is not None and not [t for t in args.tasks.split(",") if t.strip()]:
        raise ConfigError(
            f"ekd eval --tasks {args.tasks!r} names no task; name them (--tasks arc_easy,piqa) or leave it out"
        )
    if not args.run_dir.strip():  # Path('') reads as '.' (try-out 79, F6)
        raise EkdError(
            "ekd eval: the run directory given is empty (an unset shell variable?); give runs/<name>"
        )
    run = Path(args.run_dir)
    _refuse_missing_run(run)  # before torch is imported: a mistyped path is said at once
    from ekd.train.run_dir import aside_of, is_ekd_run
    from ekd.train.run_state import not_a_finished_run

    real = run.resolve()  # a directory that is no run at all is said at once too (a run's own states: below)
    no_run = not (is_ekd_run(real) or (real.name and aside_of(real).is_dir()))
    if no_run and (refusal := not_a_finished_run(run)) is not None:
        raise EkdError(refusal)
    from ekd.train.evaluation import check_saved_teacher, evaluate_saved_run, load_run_config
    from ekd.train.run_dir import using_run
    from ekd.train.task_evaluation import check_saved_tasks, evaluate_saved_tasks, tasks_markdown

    with using_run(run):  # one hold across the eval sets and the tasks
        _check_run_files(run)
        cfg = load_run_config(run, overrides)  # once, for the three below
        flags = [
            f
            for f, v in (
                ("--limit", args.limit),
                ("--num-fewshot", args.num_fewshot),
                ("--tasks-dir", args.tasks_dir or None),
            )
            if v is not None
        ]
        flags += [
            o.split("=", 1)[0] for o in args.overrides if o.startswith("eval.tasks_")
        ]  # config forms too
        if flags and not [t for t in cfg.eval.tasks if t.strip()]:  # it would be ignored: the text sets alone
            raise ConfigError(
                f"ekd eval {' '.join(flags)} applies to lm-eval tasks, and none are set (no --tasks, no eval.tasks "
                f"in {run / 'config.yaml'} or an override); add --tasks NAME,... or leave {' and '.join(flags)} out"
            )
        check_saved_tasks(run, overrides, cfg=cfg)  # before the eval sets rewrite eval.json
        if args.tasks:  # the tasks alone: a teacher moved since is checked here (else by evaluate_saved_run)
            check_saved_teacher(run, cfg, overrides, sets=False)
        else:  # the eval sets, then eval.tasks if configured
            _print_eval(evaluate_saved_run(run, overrides, cfg=cfg), run)
        section = evaluate_saved_tasks(run, overrides, cfg=cfg)
    if section:
        print(tasks_markdown(section))
    return 0


def _refuse_missing_run(run: Path) -> None:
    """``ekd eval`` of a path that does not exist, or of a file: one line, with the run it most likely meant
    (try-out 52, F8: a mistyped run; try-out 54, F7: a path inside a run, RUN/studnt, means the run). No torch
    import: the answer comes in a fraction of a second (try-out 76, F4: 3 s; try-out 79, F6: a file)."""
    if run.is_dir():
        return
    from ekd.config.paths import read_as
    from ekd.nearest import close_paths, either
    from ekd.train.run_dir import aside_of, is_ekd_run, real_run_dir

    # moved aside by a killed --overwrite: ekd eval puts it back (try-out 142, F1: "does not exist", the way on a
    # refusal had given)
    if is_ekd_run(aside_of(real_run_dir(run))):
        return

    if dangling := dangling_link(run):  # a run kept on a disk not mounted (try-out 141, F2)
        raise ConfigError(f"ekd eval: {dangling}, or remove the link")

    inside = [p for p in run.parents if is_ekd_run(p)][:1]
    what = "is a file" if run.exists() else "does not exist"
    meant = either([str(p) for p in (close_paths(run, is_ekd_run) if not run.exists() else []) or inside])
    # try-out 86, F5
    where = f" (did you mean {meant}?)" if meant else "" if run.exists() else read_as(str(run))
    raise EkdError(
        f"ekd eval: {run} {what}{where}; give the directory of a run ekd distill wrote (runs/<name>)"
    )


def _check_run_files(run: Path) -> None:
    """What ``ekd eval RUN`` reads before it scores anything, each refused in one line (try-out 45, F3/F4/F10;
    a path that does not exist is refused before, by :func:`_refuse_missing_run`): a ``config.yaml`` that is not
    valid YAML or not a run's config
    (:func:`~ekd.eval.saved_files.config_problem`); an ``eval.json`` that is not a JSON object
    (:func:`~ekd.eval.eval_json.read_eval_json`) or whose entries are malformed
    (:func:`~ekd.eval.saved_files.eval_json_problem`), which ekd eval would otherwise replace, keep as they were
    or drop.

    Raises:
        EkdError: one of the above; a run that is not finished is left to :func:`load_run_config` to say.
    """
    import shlex

    import yaml

    from ekd.eval.eval_json import read_eval_json
    from ekd.eval.saved_files import config_problem, eval_json_problem
    from ekd.train.run_state import is_finished_run

    if not is_finished_run(run):  # a path that is not there was refused before (_refuse_missing_run)
        return
    path = run / "config.yaml"
    try:
        problem = config_problem(yaml.safe_load(path.read_text()), identity=False)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        problem = f"not valid YAML: {str(e).splitlines()[0]}"
    if problem:
        raise EkdError(
            f"ekd eval: {path} is not a run's config ({problem}); put back the config.yaml ekd distill wrote"
        )
    path = run / "eval.json"

    def keep(what: str) -> str:  # never str.format over the run's path: it may hold braces
        return (
            f"ekd eval keeps the results it does not score, so fix {what}, or move the file away to write only "
            f"what `ekd eval {shlex.quote(str(run))}` scores"
        )

    try:  # review 126, R4: one that is not JSON was replaced by the sets scored now, the others' figures lost
        saved = read_eval_json(run, fix=keep("it")) or {}
    except EkdError as e:
        raise EkdError(f"ekd eval: {e}") from None
    if problem := eval_json_problem(saved):
        raise EkdError(f"ekd eval: {path} is malformed: {problem}; {keep('that entry')}")


def cmd_list(args) -> int:
    from ekd.losses.divergences import divergences
    from ekd.methods import presets
    from ekd.models.presets import architectures

    tables = {"divergences": divergences, "presets": presets, "architectures": architectures}
    try:
        from ekd.selection.policies import policies
        from ekd.selection.scores import scorers
        from ekd.temperature import temperatures

        tables.update({"scorers": scorers, "policies": policies, "temperatures": temperatures})
    except ImportError:  # pragma: no cover
        pass
    if args.what != "all" and args.what not in tables:
        started = [t for t in tables if len(args.what) >= 4 and t.startswith(args.what[:4])]  # 'archs'
        hint = (
            f"; did you mean {either(repr(t) for t in started)}?"
            if started
            else did_you_mean(args.what, tables)
        )
        raise EkdError(f"ekd list: unknown table '{args.what}' (choose from {', '.join(tables)}){hint}")
    for name, reg in tables.items():
        if args.what not in ("all", name):
            continue
        print(f"{name}:")
        for item in reg.names():
            extra = f"  [{reg.get(item).paper}]" if name == "presets" else ""
            print(f"  {item:<32} {reg.describe(item)}{extra}")
    return 0


def cmd_config(args) -> int:
    from ekd.config import explain, load_config, split_config_and_overrides

    if args.explain:
        print(explain())
        return 0
    paths, overrides = split_config_and_overrides(args.config, args.overrides)
    print(load_config(paths, overrides).to_yaml(), end="")
    return 0


def cmd_plan(args) -> int:
    from ekd.config import load_config, split_config_and_overrides
    from ekd.plan import PARALLEL, PLACEMENT, plan_config
    from ekd.sizes import parse_bytes

    paths, overrides = split_config_and_overrides(args.config, args.overrides)
    try:
        cfg = load_config(paths, overrides)
    except ConfigError as e:
        # the plan weighs every train.parallel itself: a config's train.cpu_offload asks for its fsdp+cpu rows,
        # whatever its train.parallel says (try-out 150, F4); distill refuses the pair, the plan reads it as fsdp
        if set(e.keys) != {"train.cpu_offload", "train.parallel"}:
            raise
        cfg = load_config(paths, [*overrides, "train.parallel=fsdp"])
    parallel = (args.parallel,) if args.parallel else PARALLEL
    placement = (args.placement,) if args.placement else PLACEMENT
    text = plan_config(
        cfg, args.gpus, parse_bytes(args.gpu_memory), parallel, placement, args.vocab_size, args.param_dtype
    )
    if args.param_dtype != "fp32":  # the verdict's keys are not a run ekd distill makes
        text += (
            f"\n--param-dtype {args.param_dtype} is a what-if: ekd distill keeps fp32 master weights (and AdamW "
            "moments), which this plan does not size; plan without --param-dtype for the run ekd distill makes"
        )
    print(text)
    return 0


def cmd_cache(args) -> int:
    from ekd.teacher.cache import run_cache_command

    return run_cache_command(args)


def cmd_compare(args) -> int:
    from ekd.eval.compare import compare_runs, markdown

    given = args.baselines is not None  # then each must match a run
    baselines = tuple(b.strip() for b in (args.baselines if given else "kd,ce").split(",") if b.strip())
    summary = compare_runs(
        args.runs, Path(args.out), baselines, plots=not args.no_plots, require_baselines=given
    )
    print(markdown(summary))
    plots = ", plots/" if summary.get("plots_written") else ""  # try-out 116, F7: said when none was drawn
    print(f"written: {Path(args.out) / 'compare.md'} (+ .csv, .json{plots})")
    return 0


def cmd_student(args) -> int:
    from ekd.models.student_init import StudentPlan, build_student, parse_overrides

    try:  # an empty item ('0,,2') is a slip, not a separator (try-out 56, F5)
        keep = [int(i) for i in args.keep_layers.split(",")] if args.keep_layers.strip() else []
    except ValueError:
        raise EkdError(
            f"--keep-layers must be comma-separated layer indices, got '{args.keep_layers}'"
        ) from None
    if args.layers is not None and args.layers < 1:
        raise EkdError(f"student init: --layers must be ≥ 1, got {args.layers}")
    plan = StudentPlan(
        teacher=args.teacher,
        out=args.out,
        layers=args.layers or 0,
        keep_layers=keep,
        overrides=parse_overrides(args.from_config),
        tie_word_embeddings=args.tie,
        revision=args.revision,
        trust_remote_code=args.trust_remote_code,
        seed=args.seed,
    )
    out = build_student(plan, overwrite=args.overwrite)
    print(f"student written to {out} (record: {out / 'ekd_student_init.json'})")
    return 0


def cmd_demo(args) -> int:
    from ekd.demo import run_demo

    methods = [m.strip() for m in args.methods.split(",") if m.strip()] or None
    run_demo(
        Path(args.out),
        quick=args.quick,
        methods=methods,
        steps=args.steps,
        fresh=args.fresh,
        seeds=args.seeds,
        from_scratch=args.from_scratch,
        tasks=not args.no_tasks,
    )
    return 0


def _quiet_hf_progress_bars() -> None:
    """transformers' per-shard 'Writing model shards' bars add nothing to ekd's own progress bar. Said through
    huggingface_hub's environment variable, which both read when they are imported, so that a command that
    never loads a model (``--help``, a config error) does not import transformers (seconds) to say it."""
    os.environ["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules:  # an in-process caller has imported them already: tell them directly
        from huggingface_hub.utils import disable_progress_bars

        disable_progress_bars()
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()


COMMANDS = {
    "demo": cmd_demo,
    "distill": cmd_distill,
    "cache": cmd_cache,
    "eval": cmd_eval,
    "compare": cmd_compare,
    "student": cmd_student,
    "list": cmd_list,
    "config": cmd_config,
    "plan": cmd_plan,
}


def parse(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse ``argv``; overrides may come before or after options (``distill CFG --resume k=v``).

    argparse fills the ``overrides`` positional once, at its first run of plain words, so words after an
    option are left over; they are overrides too when the command takes them."""
    parser = build_parser()
    _Parser.argv = list(sys.argv[1:] if argv is None else argv)
    _Parser.size_options = {o for a in _all_actions(parser) if a.metavar == SIZE for o in a.option_strings}
    args, extra = parser.parse_known_args(argv)
    if extra and hasattr(args, "overrides") and not any(a.startswith("-") for a in extra):
        args.overrides = [*(args.overrides or []), *extra]
    elif extra:
        command = _command_parser(parser, args)
        command.error(_unrecognized(extra, command, parser, takes_overrides=hasattr(args, "overrides")))
    return args


def _all_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    """The actions of ``parser`` and of all its subcommands, nested ones included."""
    actions = list(parser._actions)
    for a in parser._actions:
        if isinstance(a, argparse._SubParsersAction):
            for sub in a.choices.values():
                actions += _all_actions(sub)
    return actions


def _refuse_split_size(argv: list[str]) -> None:
    """A size option written with a space (``--gpu-memory 80 GiB``) is one error naming the option: argparse
    takes '80' as its value and 'GiB' as a positional, which was then reported as a config file not found."""
    from ekd.sizes import split_size

    for i, word in enumerate(argv):
        option, eq, value = word.partition("=")
        if option in _Parser.size_options:
            words = [value, *argv[i + 1 : i + 2]] if eq else argv[i + 1 : i + 3]
            if message := split_size(option, words):
                raise EkdError(message)


def _command_parser(parser: argparse.ArgumentParser, args: argparse.Namespace) -> argparse.ArgumentParser:
    """The parser of the (sub)command being run, e.g. ``ekd config show`` (its usage line and options are
    the ones that help), else ``parser``."""
    while True:
        subs = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
        chosen = getattr(args, subs[0].dest, None) if subs else None
        if chosen not in (subs[0].choices if subs else {}):
            return parser
        parser = subs[0].choices[chosen]


def _options(parser: argparse.ArgumentParser) -> list[str]:
    return [o for a in parser._actions for o in a.option_strings]


def _unrecognized(
    extra: list[str], command: argparse.ArgumentParser, top: argparse.ArgumentParser, takes_overrides: bool
) -> str:
    """'unrecognized arguments: ...', each option word followed by the options of ``command`` it may mean:
    those it starts (options are never abbreviated; all of them when the prefix is ambiguous), else the
    closest; then the global options (``--debug``), which go before the command. Plain words are left out
    when the command takes overrides (they are overrides, refused only because of the option)."""
    before = f"ekd {{}} {command.prog.removeprefix('ekd ')} ..."
    words = []
    for word in extra:
        name = word.split("=", 1)[0]
        if not name.startswith("-"):
            words += [] if takes_overrides else [word]
        elif name in _options(top):
            words.append(f"{word} (goes before the command: {before.format(name)})")
        elif close := close_names(name, _options(command)):
            words.append(f"{word} (did you mean {either(close)}?)")
        elif close := close_names(name, _options(top)):
            words.append(
                f"{word} (did you mean {either(close)}? it goes before the command: {before.format(close[0])})"
            )
        else:
            words.append(word)
    return f"unrecognized arguments: {' '.join(words)}"


def main(argv: list[str] | None = None) -> int:
    """The ``ekd`` command; its exit code. ``argv`` None: this process's own command line (the ``ekd`` script,
    ``python -m ekd``), which then ignores SIGTERM and Ctrl-C once the command has ended and said how: the
    process's exit (freeing models, joining threads: seconds) is no longer the command, and a scheduler's SIGTERM
    there made a finished run's exit code 143, without a word (try-out 71, F6); an interrupted command's process
    ends within seconds whatever threads a library left behind (:func:`ekd.signals.exit_promptly`)."""
    code = None
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # c10d's warnings when another node's torchrun goes away are pages of C++ frames (try-out 151, F5): ekd says
        # what happened in one line; TORCH_CPP_LOG_LEVEL=WARNING shows them (read when torch is first imported)
        os.environ.setdefault("TORCH_CPP_LOG_LEVEL", "ERROR")
    try:
        code = _command(argv)
        return code
    finally:
        if argv is None and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, signal.SIG_IGN)
            signal.signal(signal.SIGINT, signal.SIG_IGN)  # try-out 92, F3: Ctrl-C there killed it, status 130
            if code in (SIGTERM_EXIT, SIGINT_EXIT):
                exit_promptly(code)


def _command(argv: list[str] | None) -> int:
    args = parse(argv)
    _expand_home(args)
    logging.basicConfig(
        level=logging.WARNING if args.quiet else logging.INFO, format="%(levelname)s %(name)s: %(message)s"
    )
    set_level_floor(logging.WARNING if args.quiet else logging.NOTSET)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    _quiet_hf_progress_bars()
    try:
        _refuse_split_size(_Parser.argv)
        _refuse_torchrun_of_one_process_command(args)
        with sigterm_as_interrupt():  # a scheduler's SIGTERM ends the command as Ctrl-C does
            try:
                return COMMANDS[args.command](args)
            except Exception as e:
                # an interrupt that a library turned into its own error (torch.save: try-out 52, F1) is one
                if not args.debug and (interrupt := interrupt_behind(e)) is not None:
                    raise interrupt from e
                raise
    except EkdError as e:
        if args.debug:
            raise
        close_progress_bars()  # before the last line, not drawn again below it
        if not copy_of_rank0(e) and not _said_by_local_rank0(e):  # under torchrun: said once (per node)
            print(f"ekd: error: {one_line(str(e))}", file=sys.stderr)
        elif (host := _rank0_elsewhere(e)) is not None:  # each node's log says why its ranks ended
            print(f"ekd: error: {one_line(str(e))} (said by rank 0, on {host})", file=sys.stderr)
        return 2
    # Ctrl-C (or SIGTERM) reaches every rank of a torchrun job: rank 0 says what to do
    except KeyboardInterrupt as e:
        return _interrupted(e, args)
    # the reader of stdout has gone (`ekd cache info DIR | head`; try-out 56, F7: a traceback): end as a pipe's
    # writer does, without the flush at exit raising again (Python's docs, "Note on SIGPIPE")
    except BrokenPipeError:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 128 + signal.SIGPIPE
    except Exception as e:
        # a path that is a symbolic link leading back to itself: Path.resolve's RuntimeError (Python < 3.13)
        # wherever a path is made absolute — every path key and argument (try-out 137, F5: a traceback in 15 places)
        if not args.debug and isinstance(e, RuntimeError) and (loop := SYMLINK_LOOP.match(str(e))):
            said = ConfigError(f"{dangling_link(loop[1]) or loop[1]}, or name another path")
            close_progress_bars()
            # the same path on every rank: said once a node (review 140, R3)
            if not _said_by_local_rank0(said):
                print(f"ekd: error: {said}", file=sys.stderr)
            return 2
        # under torchrun: a collective whose peer has gone, because another rank ended first
        if args.debug or not _lost_peer(e):
            raise
        hint = _how_to_go_on(e, args)
        close_progress_bars()
        if not _said_for_rank0(e, hint) and _rank0():  # its own line, if it had one, is the news; rank 0 says
            print(f"ekd: error: {LOST_PEER_LINE}{hint}", file=sys.stderr)  # how to go on
        return 1


def _expand_home(args: argparse.Namespace) -> None:
    """``~`` at the start of a path argument (a run, runs to compare, ``--out``, a cache, a teacher, a config
    file) read as the home directory, as a shell reads it unquoted — unless a path of that literal name exists:
    a ``~/runs/x`` that reached ekd quoted, or from a launcher's argument list, was read literally by ``ekd eval``,
    ``ekd compare`` and ``ekd cache info`` and refused as missing "(read as <the home path, which exists>)"
    (try-out 137, F6), where ``ekd distill`` and every config key expand it."""

    def home(value: object) -> object:
        if isinstance(value, str) and value.startswith("~") and not os.path.lexists(value):
            return os.path.expanduser(value)
        return value

    for name, value in vars(args).items():
        setattr(args, name, [home(v) for v in value] if isinstance(value, list) else home(value))


SYMLINK_LOOP = re.compile(r"Symlink loop from '(.*)'$")
"""``pathlib.Path.resolve``'s words for a symbolic link that leads back to itself (Python 3.11, 3.12)."""


def _interrupted(e: KeyboardInterrupt, args: argparse.Namespace) -> int:
    """``ekd: interrupted; <how to go on>`` (said by rank 0) and the exit code of an interrupted command."""
    hint = _how_to_go_on(e, args)
    close_progress_bars()
    if not _said_for_rank0(e, hint) and _rank0():
        print(f"ekd: {interrupted_by(e)}{hint}", file=sys.stderr)
    return interrupt_exit_code(e)


def _how_to_go_on(e: BaseException, args: argparse.Namespace) -> str:
    """ "; how to go on" after a command stopped from outside: the hint ``ekd distill`` attached from what the run
    directory holds (``continue_hint``; rank 0's, from the job's store, for a rank that speaks for it), else the
    command's own (:func:`_continue_hint`)."""
    if args.command != "distill":  # the hint a run attaches names distill's flags (ekd demo trains runs too)
        return _continue_hint(args)
    hint = getattr(e, "continue_hint", None)
    if hint is None and _rank0() and not _lost_peer(e):  # rank 0 attaches one from the run's start on: before
        return NOT_STARTED_HINT  # it (loading libraries, the config, the models' files) nothing was changed
    return _continue_hint(args) if hint is None else hint


NOT_STARTED_HINT = "; the run had not started (interrupted while loading), so nothing in it was changed: run the same command again"
"""``ekd distill`` interrupted before its run's start (try-out 90, F7: it was told "continue from the last checkpoint
... (a run that saved none starts again with --overwrite)", which it could not tell apart)."""


LOST_PEER_LINE = (
    "rank 0 stopped: another rank ended first (its error, if it printed one, is above; torchrun's summary "
    "below names it)"
)
"""What rank 0 prints instead of gloo's "Connection closed by peer" traceback; the continue hint follows."""

SILENT_RANK0_LINE = (
    "rank {rank} stopped: rank 0 ended without a word (killed: exit code -9 in torchrun's summary below is the OOM "
    "killer or kill -9; -7 is a bus error, a memory-mapped token store or teacher cache file cut short under it)"
)
"""What the rank that speaks for a silent rank 0 prints (:func:`ekd.train.distributed.distributed`: rank 0 did not
say within a few seconds that it was ending); rank 0's continue hint follows."""


RANK0_NODE_GONE_LINE = (
    "rank {rank} stopped: rank 0's node no longer answers (the job's store there is gone with its torchrun: rank 0 "
    "killed by the OOM killer or kill -9, its node lost, or an error said in that node's log)"
)
"""What a node's first rank prints when the job's store, kept on rank 0's node, stopped answering (try-out 151, F5:
only c10d's C++ frames were left on the other nodes); the command's continue hint follows."""

STOPPED_HERE_LINE = (
    "interrupted (SIGTERM) on this node (rank {rank} and the ranks beside it; rank 0 was still running and says "
    "how to go on in its node's log)"
)
"""What a node's first rank prints when its own torchrun stopped it while rank 0, on another node, still ran
(try-out 151, F6: it said rank 0 had been killed by the OOM killer)."""


def _said_for_rank0(e: BaseException, hint: str) -> bool:
    """Print, for a rank that speaks for rank 0 or for its own node: :data:`SILENT_RANK0_LINE` and ``hint`` for a
    rank 0 killed without a word (try-out 69, F2: only torchrun's summary was left), :data:`RANK0_NODE_GONE_LINE`
    when rank 0's node went away, :data:`STOPPED_HERE_LINE` when this node alone was stopped; whether it did."""
    if (here := getattr(e, "stopped_here", None)) is not None:
        print(f"ekd: {STOPPED_HERE_LINE.format(rank=here)}", file=sys.stderr)
        return True
    rank = getattr(e, "said_for_rank0", None)
    if rank is None:
        return False
    line = RANK0_NODE_GONE_LINE if getattr(e, "rank0_node_gone", False) else SILENT_RANK0_LINE
    print(f"ekd: error: {line.format(rank=rank)}{hint}", file=sys.stderr)
    return True


def _rank0_elsewhere(e: BaseException) -> str | None:
    """Rank 0's host, where this process is the first rank of another node and ``e`` is its copy of rank 0's
    refusal: said there too, each node's log being read on its own (try-out 153, N4: node 1, the node at fault,
    had no ekd line); None otherwise."""
    import socket

    host = getattr(e, "rank0_host", None)
    if not copy_of_rank0(e) or host is None or int(os.environ.get("LOCAL_RANK", "0")) != 0:
        return None
    return host if host != socket.gethostname() else None


def _lost_peer(e: Exception) -> bool:
    """:func:`ekd.train.distributed.lost_peer`, imported only for a RuntimeError under torchrun."""
    if not isinstance(e, RuntimeError) or int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    from ekd.train.distributed import lost_peer

    return lost_peer(e)


CACHE_FORMS = """the four forms of ekd cache:
  ekd cache CONFIG [key=value ...] [--overwrite]  build the teacher cache CONFIG describes (torchrun: shared)
  ekd cache info DIR                              samples, positions, bytes per position and token, signature
  ekd cache verify DIR                            checksums, and every record parsed
  ekd cache import SRC [MORE.yaml key=value ...] --config CONFIG --out DIR [--text-column NAME ...]
                                                  top-K logprobs computed by another tool (Parquet or JSONL)"""


def _whole_number(text: str) -> int:
    """An argparse ``type`` for counts that also takes 1e5 or 151_936 (``int`` refused 1e11 with a usage dump, so
    the range check, ``ekd plan``'s, never said what is allowed)."""
    try:
        value = float(text.replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not value.is_integer():
        raise argparse.ArgumentTypeError(f"'{text}' is not a whole number")
    return int(value)


def _said_by_local_rank0(e: EkdError) -> bool:
    """Whether local rank 0 of this node prints ``e`` for this rank: a config error, a model that cannot be
    named or loaded, or an error marked ``same_on_every_rank`` (a cache directory holding something else), which
    every rank of a node raises alike (the same command line, files and model paths),
    before any process group exists to say it once. Other nodes' local rank 0 still print theirs (their files may
    differ); errors of a rank's own data (its samples, its cache shards) are printed by that rank."""
    every_rank = isinstance(e, ConfigError | ModelError) or getattr(e, "same_on_every_rank", False)
    return every_rank and int(os.environ.get("LOCAL_RANK", "0")) != 0


def _refuse_torchrun_of_one_process_command(args: argparse.Namespace) -> None:
    """Under ``torchrun`` (WORLD_SIZE > 1) only ``ekd distill`` and ``ekd cache CONFIG`` share the work among the
    ranks; any other command would run whole in every process (``ekd eval RUN``: each rank scoring everything
    and the second refused by the first's hold on the run).

    Raises:
        ConfigError: one line (printed by local rank 0) naming the command and how to run it.
    """
    from ekd.teacher.cache.command import INSPECT

    world = int(os.environ.get("WORLD_SIZE", "1"))
    shared = args.command == "distill" or (
        args.command == "cache" and args.config not in ("import", *INSPECT)
    )
    if world > 1 and not shared:
        what = f"ekd {args.command}" + (f" {args.config}" if args.command == "cache" else "")
        raise ConfigError(
            f"{what} runs in one process, but WORLD_SIZE={world} (torchrun or another launcher): run it in one "
            "process (only ekd distill and ekd cache CONFIG share their work among ranks)"
        )


def _rank0() -> bool:
    """Global rank 0 of a torchrun job (RANK in the environment), or a single process."""
    return int(os.environ.get("RANK", "0")) == 0


def _continue_hint(args: argparse.Namespace) -> str:
    """How to go on after Ctrl-C, for the commands that can continue where they stopped."""
    from ekd.teacher.cache.command import INSPECT as CACHE_INSPECT

    if args.command == "distill":
        return (
            "; continue from the last checkpoint with the same command and --resume (a run that saved none "
            "starts again with --overwrite)"
        )
    if args.command == "cache" and args.config not in ("import", *CACHE_INSPECT):
        return "; rerun the same `ekd cache` command to continue (finished shards are kept)"
    if args.command == "cache" and args.config == "import":  # try-out 105, F4: a bare 'ekd: interrupted'
        return "; rerun the same `ekd cache import` command to continue (finished shards are kept)"
    if args.command == "eval":  # try-out 86, F7: a bare 'ekd: interrupted'
        return (
            "; no file of the run is half-written (eval.json, plots and task results are each replaced whole): run "
            "the same `ekd eval` command again"
        )
    if args.command == "demo":  # try-out 78, F8: it was told distill's --overwrite, which ekd demo has not
        return (
            "; run the same `ekd demo` command again (the teacher, tokenizer and student-init it finished are "
            "reused; the method runs are distilled again)"
        )
    return ""


if __name__ == "__main__":
    sys.exit(main())
