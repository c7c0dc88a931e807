"""Downstream tasks through lm-evaluation-harness, on a model already in memory (no second load).

    results = run_tasks(model, tokenizer, TaskSettings(tasks=("arc_easy", "gsm8k"), batch_size=8))

Each requested task (or group: its leaf tasks) runs through ``lm_eval.evaluator.evaluate`` on an
``HFLM`` wrapping the model: multiple-choice and log-likelihood tasks score every choice by its summed
log-likelihood; generation tasks decode greedily (``do_sample=False``) for at most ``max_new_tokens`` (else
the task's own ``max_gen_toks``), stopping at the task's stop strings and the tokenizer's EOS (lm-eval adds
it). The model's own ``generation_config`` (a checkpoint's ``max_new_tokens``, sampling fields,
``repetition_penalty``) is set aside meanwhile (:mod:`ekd.models.generation`) and restored after. A chat template is applied
to generation prompts only ('auto': when the tokenizer has one). Per task: the primary metric, every
numeric metric, the multiple-choice ECE and its reliability bins, the document count and the wall time.

lm-eval is an optional dependency (``pip install 'ekd[eval]'``); without it :func:`require_lm_eval` raises
one line saying so. Task names come from lm-eval's registry or from ``tasks_dir``, a directory of task
YAMLs (e.g. a local JSON/JSONL dataset via ``dataset_path: json`` + ``dataset_kwargs.data_files``), which
needs no network. The registry of lm-eval's ~15k built-in tasks is indexed only when a name is not found
in ``tasks_dir``. A task whose dataset comes from the hub gets one probe of the hub first
(``ekd.hub.offline_unless_reachable``): without network its dataset is read from the datasets cache, or
refused in one line naming the task and the dataset, instead of minutes of retries and a traceback. Every
requested task is checked before any runs (:func:`check_tasks_available`, also before training for
``eval.tasks``): its name, its hub dataset from the task configs (without building the task), and a local
task's rows, built as lm-eval builds its requests (:mod:`ekd.eval.task_data`; no random state changes, so the
check changes no result). A task is identified by what lm-eval evaluates — its config and documents
(:func:`ekd.eval.task_data.leaf_identity`) — in each result (``documents_sha256``) and each cached result's
signature.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import math
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import yaml
from torch import nn

from ekd.errors import ConfigError, EkdError, first_line
from ekd.eval import task_metrics as tm
from ekd.eval.task_data import (
    LeafTask,
    leaf_configs,
    load_error,
    quiet_lm_eval,
    run_error,
    task_leaves,
)
from ekd.eval.task_metrics import DOCUMENTS_SHA256, GENERATION_SETTINGS, GROUP_GENERATES
from ekd.hub import offline_unless_reachable
from ekd.nearest import close_names, did_you_mean
from ekd.words import counted

log = logging.getLogger(__name__)
# among lm-eval's thousands of task names a whole-name match at difflib's 0.6 is mostly chance ('nosuch_task' →
# 'xlsum_tasks', 0.64; try-out 62); a typo of a real task scores higher ('arc_esay' → 'arc_easy', 0.88)
REGISTRY_CUTOFF = 0.75

INSTALL_HINT = "downstream tasks need lm-evaluation-harness: pip install 'ekd[eval]' (lm-eval[hf]==0.4.13)"
CHAT_TEMPLATE_MODES = ("auto", "on", "off")
DECODING = "greedy; model generation_config set aside"  # in every cached result's signature
DEFAULT_GEN_TOKS = 256  # lm-eval's HFLM.max_gen_toks: a generation task's budget where it sets none
Budget = tuple[str, int]  # (a generation task as a line names it, its new-token budget)


def require_lm_eval(import_now: bool = True) -> None:
    """Raise one line with the install command when lm-eval (and its HF backend) is missing.

    Args:
        import_now: import it (seconds); False only looks the packages up (config validation).
    """
    if not import_now:
        import importlib.util

        if any(importlib.util.find_spec(m) is None for m in ("lm_eval", "accelerate")):
            raise EkdError(INSTALL_HINT)
        return
    try:
        import lm_eval  # noqa: F401
        import lm_eval.models.huggingface  # noqa: F401  (needs accelerate: the [hf] extra)
    except ImportError:
        raise EkdError(INSTALL_HINT) from None


def check_task_config(cfg: Any) -> None:
    """Config-time checks of ``eval.tasks*`` and ``eval.set_tags``, so a run fails before training, not after.

    Raises:
        ConfigError: a bad value; EkdError: lm-eval is not installed while ``eval.tasks`` is set.
    """
    for name, tag in cfg.eval.set_tags.items():
        if tag not in tm.TAGS:
            raise ConfigError(
                f"eval.set_tags.{name} must be one of {', '.join(tm.TAGS)}, got '{tag}'",
                keys=("eval.set_tags",),
            )
    # a tag may name a group's subtask: checked against lm-eval's index (check_config_tasks)
    if cfg.eval.tasks:
        TaskSettings.from_config(cfg)
        require_lm_eval(import_now=False)
    else:
        check_tag_names(cfg, ())


def check_tag_names(cfg: Any, task_names: Iterable[str]) -> None:
    """Every ``eval.set_tags`` key names one of the run's eval sets (``eval``, the builtin corpus's shift sets,
    ``data.eval_sources``) or tasks
    (``eval.tasks``, or any name in ``task_names``: lm-eval's index, whose groups' subtasks a tag may name) —
    a key that names nothing was dropped without a word, so a typo left a shifted set in the in-distribution
    mean (try-out 70, F3).

    Raises:
        ConfigError: one line naming the key, the sets and tasks there are, and the closest name.
    """
    from ekd.data.pystdlib import PYSTDLIB_SPLITS

    # the builtin corpus's own shift sets too (try-out 72, F1: its documented tags were refused)
    builtin = (
        [s for s in PYSTDLIB_SPLITS if s not in ("train", "eval")] if cfg.data.source == "pystdlib" else []
    )
    sets = ["eval", *builtin, *cfg.data.eval_sources]
    named = [*sets, *cfg.eval.tasks]
    known = {*named, *task_names}
    for key in cfg.eval.set_tags:
        if key not in known:
            tasks = ", ".join(cfg.eval.tasks) or "none"
            raise ConfigError(
                f"eval.set_tags.{key} names no eval set or task of the run (eval sets: {', '.join(sets)}; tasks: "
                f"{tasks}): fix the name or drop the entry{did_you_mean(key, named)}",
                keys=("eval.set_tags",),
            )


@dataclass(frozen=True)
class TaskSettings:
    """How the tasks run (``eval.tasks*`` in the config; ``ekd eval --tasks ...`` on the command line)."""

    tasks: tuple[str, ...]
    tasks_dir: str = ""
    limit: int = 0  # documents per task, 0 = all
    num_fewshot: int = -1  # -1 = the task's default
    seed: int = 0
    batch_size: int = 8
    max_new_tokens: int = 0  # 0 = the task's own max_gen_toks (lm-eval's 256 when it sets none)
    chat_template: str = "auto"
    ece_bins: int = 15
    progress: bool = True  # log.progress: lm-eval's own progress bars; changes no result (not in signature())
    precision: str = "fp32"
    """The forward passes' autocast (``fp32``, ``bf16``; ``train.precision`` as resolved on the device): part of
    :meth:`signature`, so a result cached under one is not reused under the other (try-out 45, F2)."""

    def __post_init__(self) -> None:
        if self.chat_template not in CHAT_TEMPLATE_MODES:
            raise ConfigError(
                f"eval.tasks_chat_template must be one of {', '.join(CHAT_TEMPLATE_MODES)}, got '{self.chat_template}'",
                keys=("eval.tasks_chat_template",),
            )
        for key, value, lo in (
            ("eval.tasks_limit", self.limit, 0),
            ("eval.tasks_num_fewshot", self.num_fewshot, -1),
            ("eval.tasks_max_new_tokens", self.max_new_tokens, 0),
            ("eval.batch_size", self.batch_size, 1),
        ):
            if value < lo:
                raise ConfigError(f"{key} must be ≥ {lo}, got {value}", keys=(key,))
        # checked where a task reads it (ekd distill says the key at its start, ekd eval refuses --tasks-dir alone)
        if self.tasks and self.tasks_dir and not Path(self.tasks_dir).is_dir():
            raise ConfigError(
                f"eval.tasks_dir: {self.tasks_dir} "
                f"{'is not a directory' if Path(self.tasks_dir).exists() else 'does not exist'} (of lm-eval task YAMLs)",
                keys=("eval.tasks_dir",),
            )

    @classmethod
    def from_config(cls, cfg: Any) -> TaskSettings:
        """From a resolved ``ekd.config.Config``."""
        e = cfg.eval
        return cls(
            tasks=tuple(t.strip() for t in e.tasks if t.strip()),
            tasks_dir=e.tasks_dir,
            limit=e.tasks_limit,
            num_fewshot=e.tasks_num_fewshot,
            seed=cfg.run.seed,
            batch_size=e.batch_size,
            max_new_tokens=e.tasks_max_new_tokens,
            chat_template=e.tasks_chat_template,
            ece_bins=e.ece_bins,
            progress=cfg.log.progress,
        )

    def signature(self, task: str, leaves: dict[str, LeafTask]) -> dict[str, Any]:
        """What determines ``task``'s result besides the model: a cached result is reused only if equal.

        ``leaves`` (:func:`task_identities`): each leaf task's identity, its config and documents by content
        (wherever the files lie, in whatever format), enters as ``documents_sha256``; the seed only where
        few-shot examples are drawn (a leaf's effective few-shot count > 0), since nothing else of a task's
        score depends on it; the generation budget and chat template only where a leaf generates
        (:data:`GENERATION_SETTINGS`); the batch size and ``progress`` do not (they change no score). ``decoding`` names
        how generation is set up (:data:`DECODING`): results cached before the model's own generation_config
        was set aside are computed again.
        """
        ignored = ("tasks", "tasks_dir", "batch_size", "progress")
        sig = {k: v for k, v in asdict(self).items() if k not in ignored}
        if not any(leaf.num_fewshot > 0 for leaf in leaves.values()):
            del sig["seed"]
        if not any(leaf.generates for leaf in leaves.values()):  # read by generate_until tasks alone
            for key in GENERATION_SETTINGS:
                del sig[key]
        sig["task"] = task
        sig[DOCUMENTS_SHA256] = {name: leaf.sha256 for name, leaf in sorted(leaves.items())}
        sig["lm_eval"] = _lm_eval_version()
        sig["decoding"] = DECODING
        return sig


TASKS_DIR_HASH = "tasks_dir_hash"
"""The key under which an older ekd recorded its tasks directory's content hash (all its YAML/JSON/JSONL/Python
files) in eval.json's ``tasks.settings``: ``ekd compare`` still pairs such runs by it. Runs scored now record
each task's own identity instead (``documents_sha256`` in each result)."""


def task_identities(settings: TaskSettings, task: str) -> dict[str, LeafTask]:
    """Leaf task → :class:`~ekd.eval.task_data.LeafTask` of ``task`` under ``settings`` (its config and documents
    as lm-eval loads them; cached per process until a file of the task changes).

    Raises:
        EkdError: an unknown name, a dataset that does not load, or a hub dataset not in the cache (one line).
    """
    manager = task_manager(settings.tasks, settings.tasks_dir)
    try:
        return task_leaves(manager, settings.tasks_dir, task, settings.num_fewshot)
    except ConnectionError as e:
        raise _missing_error([(task, _dataset_of(e))], first_line(e)) from None


def _lm_eval_version() -> str:
    try:
        from importlib.metadata import version

        return version("lm_eval")
    except Exception:  # pragma: no cover - metadata missing
        return "?"


_MANAGERS: dict[tuple[str, bool], Any] = {}


def task_manager(tasks: tuple[str, ...], tasks_dir: str) -> Any:
    """An lm-eval TaskManager that knows every name in ``tasks``: ``tasks_dir`` alone when it has them all
    (fast), else with lm-eval's built-in registry (indexing it takes seconds). Cached per process.

    Raises:
        EkdError: a name is neither in ``tasks_dir`` nor in lm-eval's registry (naming the YAMLs of
            ``tasks_dir`` that do not parse, with where and why).
    """
    from lm_eval.tasks import TaskManager

    for defaults in (False, True) if tasks_dir else (True,):
        key = (tasks_dir, defaults)
        if key not in _MANAGERS:
            _MANAGERS[key] = TaskManager(include_path=tasks_dir or None, include_defaults=defaults)
        manager = _MANAGERS[key]
        known = set(manager.all_tasks)
        missing = [t for t in tasks if t not in known]
        if not missing:
            return manager
    broken = unparsed_yamls(tasks_dir) if tasks_dir else []
    named = [(path, why) for path, why in broken if _mentions(path, missing)]
    if named:  # lm-eval skips a YAML it cannot parse without a word (try-out 70, F4)
        them = "it" if len(named) == 1 else "them"
        raise EkdError(f"eval.tasks: unknown task(s) {', '.join(missing)}: {_unparsed(named)}; fix {them}")
    where = (
        f"neither in lm-eval's registry nor in {tasks_dir}; check the names"
        if tasks_dir
        else "not in lm-eval's registry; check the names, or add eval.tasks_dir / --tasks-dir DIR for local tasks"
    )
    if broken:
        where += f" (and {_unparsed(broken)}: fix it if it defines the task)"
    local = _MANAGERS[(tasks_dir, False)].all_tasks if tasks_dir else []
    hints = []  # a local task first (the likelier meaning), else the registry's
    for name in missing:
        close = close_names(name, local) or close_names(name, manager.all_tasks, cutoff=REGISTRY_CUTOFF)
        if close:
            hints.append(did_you_mean(name, close)[2:] + (f" (for {name})" if len(missing) > 1 else ""))
    hint = f"; {'; '.join(hints)}" if hints else ""
    raise EkdError(f"eval.tasks: unknown task(s) {', '.join(missing)}: {where}{hint}")


class _AnyTagLoader(yaml.SafeLoader):
    """A YAML loader that reads any tag (lm-eval's ``!function utils.process``, ...) as None: only whether a
    file parses matters."""


_AnyTagLoader.add_multi_constructor("!", lambda loader, suffix, node: None)


def unparsed_yamls(tasks_dir: str) -> list[tuple[Path, str]]:
    """(path, "why, line L column C") of every task YAML under ``tasks_dir`` that does not parse — the files
    lm-eval's index reads (``**/*.yaml``), which it skips without a word when one does not parse."""
    out = []
    for path in sorted(Path(tasks_dir).glob("**/*.yaml")):
        if "__pycache__" in path.parts or ".ipynb_checkpoints" in path.parts:
            continue
        try:
            yaml.load(path.read_text(encoding="utf-8"), Loader=_AnyTagLoader)  # noqa: S506 - a safe loader
        except yaml.YAMLError as e:
            out.append((path, _yaml_why(e)))
        except (OSError, UnicodeDecodeError) as e:
            out.append((path, first_line(e)))
    return out


def _yaml_why(e: yaml.YAMLError) -> str:
    """ "mapping values are not allowed here, line 3 column 17" (1-based) from a YAML parse error."""
    mark = getattr(e, "problem_mark", None)
    why = getattr(e, "problem", None) or first_line(e)
    return f"{why}, line {mark.line + 1} column {mark.column + 1}" if mark is not None else why


def _mentions(path: Path, names: list[str]) -> bool:
    """Whether the file at ``path`` is named after, or its text holds, one of ``names`` (the task it defines)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    return any(path.stem == n or re.search(rf"(?<![\w.-]){re.escape(n)}(?![\w.-])", text) for n in names)


def _unparsed(broken: list[tuple[Path, str]]) -> str:
    """ "DIR/a.yaml does not parse (why)" for each of ``broken``, joined."""
    return ", ".join(f"{path} does not parse ({why})" for path, why in broken)


LOCAL_BUILDERS = ("json", "csv", "parquet", "text", "arrow", "pandas")  # datasets' builders of local files


def _reads_the_hub(manager: Any, tasks: tuple[str, ...]) -> bool:
    """Whether loading ``tasks`` may fetch a dataset from the hub: yes unless each is a plain task whose
    ``dataset_path`` is a local-file builder (``json``, ...) or an existing path. Groups, tags and Python tasks
    count as yes (their members are not looked into): the cost is one probe of the hub."""
    for name in tasks:
        entry = manager.task_index.get(name)
        cfg = getattr(entry, "cfg", None) or {}
        path = cfg.get("dataset_path") if "class" not in cfg and "group" not in cfg else None
        if not isinstance(path, str) or not (path in LOCAL_BUILDERS or Path(path).expanduser().exists()):
            return True
    return False


def _hub_dataset(cfg: dict[str, Any]) -> tuple[str, str] | None:
    """(dataset_path, dataset_name or "") of a task config whose dataset comes from the hub, else None."""
    path, name = cfg.get("dataset_path"), cfg.get("dataset_name")
    if "class" in cfg or cfg.get("custom_dataset") or not isinstance(path, str):
        return None
    if path in LOCAL_BUILDERS or Path(path).expanduser().exists():
        return None
    return path, name if isinstance(name, str) else ""


def _not_cached(path: str, name: str, kwargs: dict[str, Any]) -> bool:
    """Whether the hub dataset ``path`` (config ``name``) cannot be loaded offline: ``datasets``' own first step
    of ``load_dataset`` (``load_dataset_builder``: the dataset's module, from the hub or its cache; no data read)
    raises ConnectionError. Any other failure is the load's to report."""
    import inspect

    import datasets
    from datasets.utils import logging as ds_logging

    known = inspect.signature(datasets.load_dataset_builder).parameters
    kw = {k: v for k, v in kwargs.items() if k in known and k not in ("path", "name")}
    verbosity = ds_logging.get_verbosity()
    ds_logging.set_verbosity_error()  # its "using the cached version" warning comes again at the load
    try:
        datasets.load_dataset_builder(path, name or None, **kw)
    except ConnectionError:
        return True
    except Exception:  # noqa: BLE001 - not a missing download: the load itself reports it, as before
        return False
    finally:
        ds_logging.set_verbosity(verbosity)
    return False


def missing_hub_datasets(manager: Any, tasks: tuple[str, ...]) -> list[tuple[str, str]]:
    """Every requested task whose hub dataset cannot be loaded in this (offline) process, before any task is
    built or evaluated: (task, "'<dataset>' (<config>)") per missing dataset, from the task configs
    (:func:`~ekd.eval.task_data.leaf_configs`) and one ``load_dataset_builder`` per distinct dataset. Building the tasks instead
    would read every dataset and could change what lm-eval draws for the tasks that do run."""
    seen: dict[tuple[str, str, str], bool] = {}
    missing = []
    for task in tasks:
        for cfg in leaf_configs(manager, task):
            hub = _hub_dataset(cfg)
            if hub is None:
                continue
            kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), dict) else {}
            key = (*hub, repr(sorted(kwargs.items())))
            if key not in seen:
                seen[key] = _not_cached(*hub, kwargs)
            what = f"'{hub[0]}'" + (f" ({hub[1]})" if hub[1] else "")
            if seen[key] and (task, what) not in missing:
                missing.append((task, what))
    return missing


def _missing_error(missing: list[tuple[str, str]], why: str) -> EkdError:
    """One line naming every (task, dataset) of ``missing`` and the fixes."""
    import datasets.config

    named = [
        f"{'task ' if i == 0 else ''}'{t}' reads {'the dataset ' if i == 0 else ''}{d}"
        for i, (t, d) in enumerate(missing)
    ]
    one = len(missing) == 1
    return EkdError(
        f"eval.tasks: {', '.join(named)} from the Hugging Face Hub, {'which is' if one else 'which are'} not in the "
        f"datasets cache ({datasets.config.HF_DATASETS_CACHE}) while {why}; fetch {'it' if one else 'them'} "
        "once where the hub is reachable (docs/evaluation.md: the standard tasks on a machine without "
        "network), or use local tasks (--tasks-dir DIR)"
    )


def check_tasks_available(tasks: tuple[str, ...], tasks_dir: str, num_fewshot: int = -1) -> tuple[Any, str]:
    """Before any task runs (and before training, for ``eval.tasks``): every name known; without network every
    hub dataset the tasks read in the datasets cache — else one line naming all that are missing; and every
    local task (:func:`_local_tasks`) loaded, its rows built as lm-eval builds its requests
    (:func:`ekd.eval.task_data.check_rows_of`; few-shot rows too when ``num_fewshot`` draws them).

    Returns:
        (the lm-eval TaskManager, why the hub is not used: "" when it is or no task reads it).

    Raises:
        EkdError: an unknown task name, hub datasets that cannot be loaded (all of them named), a local
            dataset that does not load or a row that cannot be scored (one line: task, file, row, cause).
    """
    manager = task_manager(tasks, tasks_dir)
    offline = offline_unless_reachable("eval.tasks") if _reads_the_hub(manager, tasks) else ""
    missing = missing_hub_datasets(manager, tasks) if offline else []
    if missing:
        raise _missing_error(missing, offline)
    for name in _local_tasks(manager, tasks, tasks_dir):
        task_leaves(manager, tasks_dir, name, num_fewshot, check_rows=True)
    return manager, offline


def _local_tasks(manager: Any, tasks: tuple[str, ...], tasks_dir: str) -> list[str]:
    """The names of ``tasks`` defined in ``tasks_dir`` whose every leaf reads local data (not the hub): loading
    them reads only local files."""
    if not tasks_dir:
        return []
    root = Path(tasks_dir).resolve()
    out = []
    for name in tasks:
        path = getattr(manager.task_index.get(name), "yaml_path", None)
        configs = leaf_configs(manager, name)
        if (
            path is not None
            and Path(path).resolve().is_relative_to(root)
            and configs
            and all(_hub_dataset(c) is None and "class" not in c for c in configs)
        ):
            out.append(name)
    return out


def check_config_tasks(cfg: Any) -> None:
    """:func:`check_tasks_available` on ``cfg``'s ``eval.tasks`` (after :func:`require_lm_eval`), nothing when
    it is empty: every command that will run them calls this before it evaluates, trains or writes anything
    (``ekd distill`` before training, ``ekd eval RUN`` before the eval sets).

    Raises:
        EkdError: lm-eval missing, an unknown task name, hub datasets that cannot be loaded, or a local task
            whose data does not load or has a row that cannot be scored.
    """
    settings = TaskSettings.from_config(cfg)
    if settings.tasks:
        require_lm_eval()
        manager, _ = check_tasks_available(settings.tasks, settings.tasks_dir, settings.num_fewshot)
        check_tag_names(cfg, manager.all_tasks)


def _load_task(manager: Any, name: str, offline: str, later: tuple[str, ...] = ()) -> dict[str, Any]:
    """``manager.load([name])``, where lm-eval reads the task's dataset. Hub datasets are checked before any
    task runs (:func:`check_tasks_available`); one that still cannot be fetched here (a Python task's, whose
    config does not name it) is the same one line, with every task of ``later`` whose dataset is missing too.

    Args:
        offline: why the hub is not used (``ekd.hub.offline_unless_reachable``), "" if it is.
        later: the tasks after ``name``, loaded only when ``name``'s dataset is missing.
    """
    try:
        return manager.load([name])
    except ConnectionError as e:  # datasets' "Couldn't reach '<id>' on the Hub" (OfflineModeIsEnabled is one)
        missing = [(name, _dataset_of(e))]
        for other in later:
            try:
                manager.load([other])
            except ConnectionError as e_other:
                missing.append((other, _dataset_of(e_other)))
        raise _missing_error(missing, offline or first_line(e)) from None
    except Exception as e:  # noqa: BLE001 - a dataset or YAML lm-eval cannot load: one line, the cause chained
        raise load_error(name, manager, e) from e


def _dataset_of(e: BaseException) -> str:
    """The dataset a failed task load asked for: ``DATASET_PATH`` (and ``DATASET_NAME``) of the lm-eval task
    whose ``download`` raised, found in the traceback, else the id quoted in the message."""
    found = ""
    tb = e.__traceback__
    while tb is not None:
        task = getattr(tb.tb_frame.f_locals.get("self"), "__dict__", None) or {}  # instance attributes
        path, name = task.get("DATASET_PATH"), task.get("DATASET_NAME")
        if isinstance(path, str) and path:
            found = f"'{path}'" + (f" ({name})" if isinstance(name, str) and name else "")
        tb = tb.tb_next
    if not found:
        quoted = re.search(r"'([^']+)'", str(e))
        found = f"'{quoted.group(1)}'" if quoted else "of the task"
    return found


@contextlib.contextmanager
def _restore_mode(model: nn.Module) -> Iterator[None]:
    was_training = model.training
    try:
        yield
    finally:
        model.train(was_training)


def _seed_everything(seed: int) -> None:
    import random

    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def run_tasks(
    model: nn.Module,
    tokenizer: Any,
    settings: TaskSettings,
    *,
    amp: Any = None,
    label: str = "model",
) -> dict[str, dict[str, Any]]:
    """Run every task of ``settings`` on ``model`` (already on its device) and return leaf task → result.

    Args:
        model: a Hugging Face causal LM; its train/eval mode is restored afterwards.
        tokenizer: its tokenizer (copied: lm-eval may set a pad token on it).
        settings: tasks and how to run them.
        amp: autocast dtype of the forward passes (e.g. ``torch.bfloat16``), None = the weights' dtype.
        label: a name for log lines ("student", "teacher").

    Returns:
        task → {"metric", "filter", "value", "metrics" (every numeric "<metric>,<filter>"), "output_type",
        "n", "ece" (%, multiple choice only, NaN under 10 documents), "bins" (reliability), "wall_s",
        "documents_sha256" (the leaf task's identity: :func:`ekd.eval.task_data.leaf_identity`)}.

    Raises:
        EkdError: lm-eval missing, an unknown task name, or a task's hub dataset that cannot be fetched (no
            network and not cached: one line, after one probe of the hub instead of minutes of retries); a
            task whose data does not load, has a row that cannot be scored, or fails in lm-eval (one line,
            the cause chained: ``ekd --debug`` shows it).
    """
    require_lm_eval()
    from lm_eval.evaluator import evaluate
    from lm_eval.models.huggingface import HFLM

    from ekd.models.generation import neutral_generation_config

    out: dict[str, dict[str, Any]] = {}
    # the checkpoint's generation_config (max_new_tokens, sampling, repetition_penalty) set aside: the task's
    # budget and greedy decoding alone decide what is generated
    with quiet_lm_eval(settings.progress), _restore_mode(model), neutral_generation_config(model):
        # all, before any runs
        manager, offline = check_tasks_available(settings.tasks, settings.tasks_dir, settings.num_fewshot)
        lm = HFLM(
            pretrained=model,
            tokenizer=copy.deepcopy(tokenizer),
            batch_size=settings.batch_size,
            mixed_precision_dtype=amp,
        )
        has_template = bool(getattr(tokenizer, "chat_template", None))
        prepared = []  # every task loaded and configured before any is scored
        for i, name in enumerate(settings.tasks):
            t0 = time.perf_counter()
            _seed_everything(settings.seed)
            loaded = _load_task(manager, name, offline, settings.tasks[i + 1 :])
            identity = task_leaves(manager, settings.tasks_dir, name, settings.num_fewshot, loaded=loaded)
            for task in loaded["tasks"].values():
                _configure(task, settings)
            prepared.append((name, loaded, identity, time.perf_counter() - t0))
        check_generation_budgets(
            loaded_budgets(prepared, lm.max_gen_toks), lm.max_length, label, settings.max_new_tokens > 0
        )
        for name, loaded, identity, load_s in prepared:
            t0 = time.perf_counter() - load_s
            _seed_everything(settings.seed)
            generation = any(
                task.get_config("output_type") == "generate_until" for task in loaded["tasks"].values()
            )
            chat = generation and (
                settings.chat_template == "on" or (settings.chat_template == "auto" and has_template)
            )
            try:
                with counting_truncations() as cut:
                    r = evaluate(
                        lm=lm,
                        task_dict=loaded,
                        limit=settings.limit or None,
                        bootstrap_iters=0,
                        log_samples=True,
                        apply_chat_template=chat,
                        fewshot_as_multiturn=chat,
                    )
            except (EkdError, torch.OutOfMemoryError):
                raise
            except Exception as e:  # noqa: BLE001 - lm-eval's or datasets' failure: one line, the cause chained
                raise run_error(name, label, e) from e
            if cut.count:
                say_truncations(name, label, lm.max_length, cut)
            wall = time.perf_counter() - t0
            leaves = list(loaded["tasks"])
            shares = wall_shares(r, leaves)
            for leaf in leaves:
                out[leaf] = _task_result(
                    leaf, r, loaded["tasks"][leaf], settings.ece_bins, wall * shares[leaf]
                )
                # scored in one pass with the group's other leaves: its share, and the whole
                if len(leaves) > 1:
                    out[leaf][GROUP_WALL] = {"task": name, "wall_s": wall}
                out[leaf][DOCUMENTS_SHA256] = identity[leaf].sha256
                # the chat template applies to every leaf of a group that generates (a multiple-choice one too)
                out[leaf][GROUP_GENERATES] = generation
                ece = out[leaf]["ece"]  # NaN for generation tasks: MC-ECE is for multiple choice only
                log.info(
                    "task %s on %s: %s %.4f%s  (%s, %.1fs)",
                    leaf,
                    label,
                    out[leaf]["metric"],
                    out[leaf]["value"],
                    f"  ECE {ece:.2f}%" if math.isfinite(ece) else "",
                    counted(out[leaf]["n"], "doc"),
                    out[leaf]["wall_s"],
                )
    return out


TRUNCATIONS = {  # lm-eval's HFLM warnings that it cut a prompt from the left to fit the model: the start of each
    "Left truncation applied": "generation",  # a generation batch's prompts, to max length − budget
    "Combined length of context": "loglikelihood",  # one log-likelihood request's context, to max length
}


class TruncationCount(logging.Filter):
    """A filter on lm-eval's HF model logger that counts :data:`TRUNCATIONS` by kind and lets only errors through
    (what :func:`~ekd.eval.task_data.quiet_lm_eval`'s level lets through)."""

    def __init__(self) -> None:
        super().__init__()
        self.kinds: dict[str, int] = {}

    @property
    def count(self) -> int:
        return sum(self.kinds.values())

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        for start, kind in TRUNCATIONS.items():
            if message.startswith(start):
                self.kinds[kind] = self.kinds.get(kind, 0) + 1
        return record.levelno >= logging.ERROR


@contextlib.contextmanager
def counting_truncations() -> Iterator[TruncationCount]:
    """While inside, lm-eval's truncation warnings are counted (:class:`TruncationCount`), not shown: lm-eval cuts
    a prompt longer than the model allows from the left and scores the rest, and ekd keeps lm-eval's warnings
    quiet (try-out 81, F2: prompts cut to their last token were scored without a word)."""
    logger = logging.getLogger("lm_eval.models.huggingface")
    counter, level = TruncationCount(), logger.level
    logger.setLevel(logging.WARNING)
    logger.addFilter(counter)
    try:
        yield counter
    finally:
        logger.removeFilter(counter)
        logger.setLevel(level)


def say_truncations(name: str, label: str, max_length: int, cut: TruncationCount) -> None:
    """One warning per task whose prompts lm-eval cut (:func:`counting_truncations`): which, on which model, and
    the settings that leave room."""
    parts = []
    if n := cut.kinds.get("generation"):
        parts.append(f"{counted(n, 'generation batch')} to {max_length} tokens less the generation budget")
    if n := cut.kinds.get("loglikelihood"):
        parts.append(f"{counted(n, 'log-likelihood request')} to {max_length} tokens")
    log.warning(
        "task %s on %s: lm-eval cut prompts from the left to fit the %s's maximum length (%s), and scored what was "
        "left: these results are of truncated prompts; fewer few-shot examples (eval.tasks_num_fewshot)%s leave "
        "more room",
        name,
        label,
        label,
        "; ".join(parts),
        ", a smaller eval.tasks_max_new_tokens" if "generation" in cut.kinds else "",
    )


def loaded_budgets(
    prepared: list[tuple[str, dict[str, Any], Any, float]], default_budget: int
) -> list[Budget]:
    """(how the line names the task, new-token budget) of every generation task of ``prepared`` — (task name,
    ``manager.load`` result, identity, load seconds) of every task, configured (:func:`_configure`) — as
    lm-eval will run it: ``default_budget`` (``HFLM.max_gen_toks``) where a task sets none."""
    from lm_eval.models.utils import normalize_gen_kwargs

    out = []
    for name, loaded, _, _ in prepared:
        for leaf, task in loaded["tasks"].items():
            if task.get_config("output_type") == "generate_until":
                kwargs = dict(task.get_config("generation_kwargs") or {})
                out.append(
                    (_leaf_label(leaf, name), normalize_gen_kwargs(kwargs, default_budget)["max_gen_toks"])
                )
    return out


def config_budgets(settings: TaskSettings, default_budget: int = DEFAULT_GEN_TOKS) -> list[Budget]:
    """:func:`loaded_budgets` of ``settings.tasks`` read from their configs in lm-eval's index (no dataset read:
    before training or any scoring), with ``eval.tasks_max_new_tokens`` applied as :func:`_configure` applies it.
    A Python task (``class``) keeps its budget in code: it is checked when it is loaded
    (:func:`check_generation_budgets` in :func:`run_tasks`)."""
    from lm_eval.models.utils import normalize_gen_kwargs

    manager = task_manager(settings.tasks, settings.tasks_dir)
    out = []
    for name in settings.tasks:
        for config in leaf_configs(manager, name):
            if config.get("output_type") != "generate_until" or "class" in config:
                continue
            kwargs = dict(config.get("generation_kwargs") or {})
            if settings.max_new_tokens > 0:
                kwargs["max_gen_toks"] = settings.max_new_tokens
            budget = normalize_gen_kwargs(kwargs, default_budget)["max_gen_toks"]
            out.append((_leaf_label(str(config.get("task", name)), name), budget))
    return out


def _leaf_label(leaf: str, name: str) -> str:
    return f"'{leaf}'" if leaf == name else f"'{leaf}' of '{name}'"


def check_generation_budgets(
    budgets: list[Budget], max_length: int, label: str, overridden: bool = False
) -> None:
    """Refuse a generation task whose new-token budget leaves the model no room for a prompt, before any task is
    scored: lm-eval asserts ``max_length − max_gen_toks > 0`` only when it reaches that task, and the tasks
    scored before it were lost with the run's evaluation (try-out 77, F2); ``ekd distill`` and ``ekd eval`` check
    every model they will score before training or evaluating anything (try-out 79, F4).

    Args:
        budgets: (task as the line names it, new-token budget) of every generation task
            (:func:`loaded_budgets`, :func:`config_budgets`).
        max_length: the model's maximum sequence length as lm-eval reads it (``HFLM.max_length``:
            :func:`model_max_length`).
        label: the model, as the line names it ("student", "teacher").
        overridden: the budgets are ``eval.tasks_max_new_tokens`` (> 0), not the tasks' own: the line names it
            alone (try-out 82, F5).

    Raises:
        EkdError: one line naming the tasks, their budgets, the model's length and the settings that fix it.
    """
    over = [f"{task} ({budget})" for task, budget in budgets if max_length - budget <= 0]
    if over:
        raise EkdError(
            f"eval.tasks: the generation budget of {', '.join(over)} new tokens leaves no room for a prompt "
            f"within the {label}'s maximum length, {max_length} tokens; no task was scored: set "
            + (
                "eval.tasks_max_new_tokens lower"
                if overridden
                else "eval.tasks_max_new_tokens (it replaces the tasks' own budgets) or max_gen_toks in the task's "
                "generation_kwargs lower"
            )
        )


def model_max_length(config: Any, tokenizer: Any) -> int:
    """A model's maximum sequence length as lm-eval's ``HFLM.max_length`` reads it (``resolve_max_length``: the
    config's ``n_positions`` / ``max_position_embeddings`` / ``n_ctx``, else the tokenizer's
    ``model_max_length``, else 2,048), from its config alone: before the model is loaded."""
    from lm_eval.models.huggingface import HFLM
    from lm_eval.models.utils import resolve_max_length

    return resolve_max_length(config, tokenizer, default=HFLM._DEFAULT_MAX_LENGTH)


def _configure(task: Any, settings: TaskSettings) -> None:
    """Few-shot count and seed, and greedy decoding for generation tasks (with ``eval.tasks_max_new_tokens``
    as their new-token budget when it is set, else the task's own ``max_gen_toks``)."""
    if settings.num_fewshot >= 0:
        task.set_config(key="num_fewshot", value=settings.num_fewshot)
    elif task.get_config("num_fewshot") is None:
        task.set_config(key="num_fewshot", value=0)
    task.set_fewshot_seed(seed=settings.seed)
    if task.get_config("output_type") == "generate_until":
        greedy: dict[str, Any] = {"do_sample": False, "temperature": 0.0}
        if settings.max_new_tokens > 0:  # else the task's own max_gen_toks (a short answer stays short)
            greedy["max_gen_toks"] = settings.max_new_tokens
        task.set_config(key="generation_kwargs", value=greedy, update=True)


GROUP_WALL = "group_wall"
"""The key of a group leaf's result holding the group it was scored with (``task``: the name asked for) and that
pass's wall seconds (``wall_s``): lm-eval scores a group's leaves in one pass, so a leaf's own ``wall_s`` is its
share (:func:`wall_shares`), not a time measured alone."""


def wall_shares(r: dict, leaves: list[str]) -> dict[str, float]:
    """Each leaf's share of a group's wall time: its requests (each sample's model calls — one per choice of a
    multiple-choice document, one per generation) over the group's (review 136, R4: the time was split evenly, a
    10-document leaf given the seconds of a 2,000-document one); evenly where lm-eval logged no samples."""
    requests = {leaf: _requests(r["samples"].get(leaf, [])) for leaf in leaves}
    total = sum(requests.values())
    return {leaf: requests[leaf] / total if total else 1 / len(leaves) for leaf in leaves}


def _requests(samples: list[dict]) -> int:
    """The model calls of a leaf's logged samples: each document's once (lm-eval logs a document once per filter)."""
    per_document: dict[Any, int] = {}
    for i, sample in enumerate(samples):
        per_document.setdefault(sample.get("doc_id", i), len(sample.get("arguments") or [None]))
    return sum(per_document.values())


def _task_result(name: str, r: dict, task: Any, ece_bins: int, wall_s: float) -> dict[str, Any]:
    entry = r["results"][name]
    metric, filt, value = tm.primary_metric(entry)
    output_type = task.get_config("output_type")
    metrics = {
        k: float(v)
        for k, v in entry.items()
        if "," in k and "_stderr" not in k and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    samples = [s for s in r["samples"].get(name, []) if s.get("filter") == filt]
    ece, bins = math.nan, []
    if output_type == "multiple_choice" and samples and "acc" in samples[0]:
        bins = tm.reliability_bins(*tm.mc_confidences(samples), n_bins=ece_bins)
        ece = tm.ece_percent(bins)
    return {
        "metric": metric,
        "filter": filt,
        "value": value,
        "metrics": metrics,
        "output_type": output_type,
        "n": len(samples) or int(r.get("n-samples", {}).get(name, {}).get("effective", 0)),
        "ece": ece,
        "bins": [list(b) for b in bins],
        "wall_s": wall_s,
    }
