"""What a downstream task evaluates, and whether its rows can be scored: a task's identity and its row check.

    leaves = task_leaves(manager, "my_tasks", "my_mc", num_fewshot=-1, check_rows=True)
    leaves["my_mc"].sha256, leaves["my_mc"].num_fewshot

A task is identified by what lm-eval evaluates (:func:`leaf_identity`): the sha256 over its resolved config
(``TaskConfig.to_dict()``, functions by their source; where the data is read from and lm-eval's note of the
YAML's path left out: the documents say what was read) and over its documents — the eval split lm-eval scores
(after ``process_docs``) and, when few-shot examples are drawn (effective ``num_fewshot`` > 0), the few-shot
documents. A cached result, eval.json and ``ekd compare`` tell tasks apart by it, per leaf task: an edit of one
task's data, wherever the file lies and whatever its format, changes that task's identity and no other's.

A local task's rows (:func:`check_rows`) are built as lm-eval builds its requests (prompt, target, choices),
without a model: a row lm-eval would fail on, or score silently wrong (a gold index outside the choices), is
one line naming the task, the file, the row and the cause, before anything runs.

Loading a task reads its dataset; both results are cached per process (:func:`task_leaves`, keyed also by the
stat of the task's local files, so an edit is seen) and no random state is changed.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import random
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ekd.errors import EkdError, first_line
from ekd.eval.task_metrics import DOCUMENTS_SHA256  # noqa: F401  (the key of a result's identity)
from ekd.nearest import close_names, did_you_mean, either

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LeafTask:
    """One leaf task as lm-eval will evaluate it."""

    sha256: str  # first 16 hex digits of the sha256 over its resolved config and its documents
    num_fewshot: int  # few-shot examples per document: the setting, or the task's own default (None → 0)
    generates: bool = True  # a generate_until task: the generation budget and chat template are read


@contextlib.contextmanager
def quiet_lm_eval(progress: bool = False) -> Iterator[None]:
    """lm-eval warns on every pre-loaded model and undeclared aggregation, and its task datasets draw
    ``datasets`` progress bars; keep ekd's output readable. Without ``progress`` (``log.progress=false``)
    lm-eval's own request bars are off too (:func:`ekd.log_level.quiet_progress_bars`)."""
    from ekd.log_level import quiet_dataset_progress, quiet_progress_bars

    loggers = {"lm_eval": logging.ERROR, "datasets": logging.CRITICAL}  # a bad file: ekd's line says it
    previous = {name: logging.getLogger(name).level for name in loggers}
    for name, level in loggers.items():
        logging.getLogger(name).setLevel(level)
    try:
        with quiet_dataset_progress(), quiet_progress_bars(not progress):
            yield
    finally:
        for name, level in previous.items():
            logging.getLogger(name).setLevel(level)


@contextlib.contextmanager
def _same_random_state() -> Iterator[None]:
    """Whatever a task load draws, python's, numpy's and torch's random state are as they were after it."""
    import numpy as np
    import torch

    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def leaf_configs(manager: Any, name: str, overrides: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """The configs of the plain tasks ``name`` stands for, read from lm-eval's index (the task YAMLs with their
    includes merged; nothing built, no dataset read, no random draw): a task → itself, a tag → its tasks, a
    group → its members, recursively, under the group's own ``dataset_*`` overrides. A Python task (``class``)
    names its dataset only in code: it is left to the load."""
    entry = manager.task_index.get(name)
    cfg = dict(getattr(entry, "cfg", None) or {})
    kind = getattr(getattr(entry, "kind", None), "name", "")
    if kind == "TAG":
        return [c for t in sorted(entry.tags) for c in leaf_configs(manager, t, overrides)]
    if kind == "GROUP":
        inherited = {**{k: v for k, v in cfg.items() if k.startswith("dataset_")}, **(overrides or {})}
        members = cfg.get("task") if isinstance(cfg.get("task"), list) else []
        out = []
        for member in members:
            if isinstance(member, str):
                out += leaf_configs(manager, member, inherited)
            elif isinstance(member, dict) and isinstance(member.get("task"), str):
                own = {k: v for k, v in member.items() if k.startswith("dataset_")}
                if member["task"] in manager.task_index:
                    out += leaf_configs(manager, member["task"], {**inherited, **own})
                else:  # an inline task: its config is the member itself
                    out.append({**member, **inherited, **own})
        return out
    if kind != "TASK":
        return []
    return [{**cfg, **(overrides or {})}]


def data_files(cfg: Mapping[str, Any], split: str | None = None) -> list[str]:
    """The local files a task config reads (``dataset_kwargs.data_files``, of ``split`` when it maps splits to
    files; ``dataset_path`` when it is a file), as written."""
    kwargs = cfg.get("dataset_kwargs") if isinstance(cfg.get("dataset_kwargs"), Mapping) else {}
    named = kwargs.get("data_files")
    if isinstance(named, Mapping):
        named = named.get(split) if split is not None and split in named else list(named.values())
    out: list[str] = []
    for f in named if isinstance(named, (list, tuple)) else [named]:
        if isinstance(f, (list, tuple)):
            out += [str(x) for x in f]
        elif f:
            out.append(str(f))
    path = cfg.get("dataset_path")
    if isinstance(path, str) and Path(path).expanduser().is_file():
        out.append(path)
    return out


def _fingerprint(manager: Any, tasks_dir: str, name: str) -> tuple:
    """What the per-process cache of :func:`task_leaves` is keyed by besides the name: (path, size, mtime) of
    the task definitions in ``tasks_dir`` and of every local file or directory the task's configs read."""
    paths = []
    if tasks_dir:
        paths += [p for p in Path(tasks_dir).rglob("*") if p.suffix in (".yaml", ".yml", ".py")]
    for cfg in leaf_configs(manager, name):
        paths += [Path(f).expanduser() for f in data_files(cfg)]
        path = cfg.get("dataset_path")
        if isinstance(path, str) and Path(path).expanduser().is_dir():
            paths += [p for p in Path(path).expanduser().rglob("*") if p.is_file()]
    out = []
    for p in sorted(set(paths)):
        with contextlib.suppress(OSError):
            st = p.stat()
            out.append((str(p), st.st_size, st.st_mtime_ns))
    return tuple(out)


_LEAVES: dict[tuple, tuple[tuple, dict[str, LeafTask], bool]] = {}


def task_leaves(
    manager: Any,
    tasks_dir: str,
    name: str,
    num_fewshot: int,
    *,
    check_rows: bool = False,
    loaded: Mapping[str, Any] | None = None,
) -> dict[str, LeafTask]:
    """Leaf task → :class:`LeafTask` of task (or group, or tag) ``name``, cached per process until a file of
    the task changes.

    Args:
        manager: the lm-eval TaskManager that knows ``name``.
        num_fewshot: ``eval.tasks_num_fewshot`` (-1: each task's own default).
        check_rows: also check every row (:func:`check_rows`) — for local tasks, before anything runs.
        loaded: ``manager.load([name])`` already done by the caller (not yet configured): read instead of a load.

    Raises:
        EkdError: with ``check_rows``, the dataset does not load or a row cannot be scored (one line).
    """
    key = (tasks_dir, name, num_fewshot)
    fingerprint = _fingerprint(manager, tasks_dir, name)
    cached = _LEAVES.get(key)
    if cached and cached[0] == fingerprint and (cached[2] or not check_rows):
        return cached[1]
    with quiet_lm_eval(), _same_random_state():
        if loaded is None:
            bad_metric = metric_error(manager, name)  # before lm-eval's load logs its own ERROR line
            if bad_metric is not None:
                raise bad_metric
            try:
                loaded = manager.load([name])
            except ConnectionError:
                raise  # a hub dataset not in the cache: the caller's line names it
            except Exception as e:  # noqa: BLE001 - a dataset that does not load: one line, the cause chained
                raise load_error(name, manager, e) from e
        tasks = loaded["tasks"]
        if check_rows:
            for leaf, task in tasks.items():
                check_rows_of(leaf, task, effective_fewshot(task, num_fewshot))
        leaves = {leaf: leaf_identity(task, num_fewshot) for leaf, task in tasks.items()}
    _LEAVES[key] = (
        fingerprint,
        leaves,
        check_rows or bool(cached and cached[0] == fingerprint and cached[2]),
    )
    return leaves


def effective_fewshot(task: Any, num_fewshot: int) -> int:
    """Few-shot examples per document lm-eval will draw for ``task`` under ``eval.tasks_num_fewshot``."""
    return num_fewshot if num_fewshot >= 0 else int(task.get_config("num_fewshot") or 0)


def leaf_identity(task: Any, num_fewshot: int) -> LeafTask:
    """``task``'s :class:`LeafTask`: the sha256 over its config and its documents (see the module docstring),
    from the task as loaded (before ekd sets its few-shot count and decoding: those are settings of their own)."""
    shots = effective_fewshot(task, num_fewshot)
    h = hashlib.sha256()
    config = dict(task.dump_config())
    for where in ("dataset_path", "dataset_kwargs"):  # the documents below say what was read
        config.pop(where, None)
    if isinstance(config.get("metadata"), Mapping):  # lm-eval's note of the YAML's path as it was given
        config["metadata"] = {k: v for k, v in config["metadata"].items() if k != "config_source"}
    h.update(json.dumps(config, sort_keys=True, default=str).encode())
    parts = [("eval", task.eval_docs)]
    if shots > 0:
        parts.append(("fewshot", task.fewshot_docs() or []))
    for part, docs in parts:
        h.update(f"\n{part}\n".encode())
        for doc in docs:
            h.update(json.dumps(doc, sort_keys=True, default=str).encode() + b"\n")
    get_config = getattr(task, "get_config", None)  # a Python task may not say: taken to generate
    generates = get_config is None or get_config("output_type") in (None, "generate_until")
    return LeafTask(h.hexdigest()[:16], shots, generates)


def _split_of(task: Any) -> str:
    return task.get_config("test_split") or task.get_config("validation_split") or ""


def _task_files(task: Any, split: str) -> list[str]:
    """The local files a loaded task's ``split`` reads (:func:`data_files` of its config)."""
    cfg = {
        "dataset_kwargs": task.get_config("dataset_kwargs"),
        "dataset_path": task.get_config("dataset_path"),
    }
    return data_files(cfg, split)


def _where(task_name: str, task: Any, split: str) -> str:
    """ "task 'my_mc' (/data/my_mc.jsonl)": the task and the file its split reads, when the config names one."""
    files = _task_files(task, split)
    return f"task '{task_name}'" + (f" ({files[0]})" if len(files) == 1 else "")


FIX = "fix that row of the data or remove it, then run again"
# how a row's answer is blamed: in a float column (one 1.0 makes every row's a float), said of the column instead
ANSWER = "its answer"
# float answer indices (try-out 39: lm-eval failed on them)
FLOAT_FIX = "fix the file: whole numbers in every row"


def check_rows_of(name: str, task: Any, shots: int) -> None:
    """Build every row of ``task`` as lm-eval builds its requests (prompt, target, choices) without a model.

    Rows count from 1 in the split's order (a JSONL file's line numbers, when it has no blank lines and no
    ``process_docs`` drops rows). Checked: each of ``doc_to_text``, ``doc_to_target``, ``doc_to_choice`` and
    the request gives a value; a target is not missing (None); a multiple-choice gold index (or answer text)
    is one of the row's choices — lm-eval counts a row whose gold is outside as wrong for every model, with a
    warning ekd's quiet logs hide.

    Raises:
        EkdError: a ``doc_to_*`` naming no field of the data (:func:`unknown_field`: the task and its YAML), else
            the first bad row, one line: the task, the file, the row, the cause and the fix.
    """
    from lm_eval.api.task import ConfigurableTask

    if not isinstance(task, ConfigurableTask):  # a Python task builds its requests its own way
        return
    split = _split_of(task)
    parts = [(f"{split} split" if split else "eval split", task.eval_docs)]
    if shots > 0:
        parts.append(("few-shot split", task.fewshot_docs() or []))
    no_field = unknown_field(task)  # the YAML's mistake, not row 1's (try-out 70, F5)
    if no_field:
        raise EkdError(f"eval.tasks: task '{name}'{_its_yaml(task)}: {no_field}")
    mc = task.get_config("output_type") == "multiple_choice"
    column = _float_answer_column(task) if mc else ""  # a template renders its 1.0 as '1.0', no choice
    floats = ""  # the first row whose answer is a float: said unless a row's empty cell is why the column is
    for part, docs in parts:
        for i, doc in enumerate(docs, start=1):
            cause = _row_problem(task, doc, mc, name, i)
            if cause.endswith(FLOAT_FIX) or (column and cause.startswith(ANSWER)):
                # the column's type, not this row's: said of the task (try-outs 42, 44)
                floats = floats or f"eval.tasks: {_where(name, task, split)}: {cause}"
            elif cause:
                raise EkdError(f"eval.tasks: {_where(name, task, split)}, {part} row {i}: {cause}; {FIX}")
    if column:
        raise EkdError(f"eval.tasks: {_where(name, task, split)}: {_float_column(column, task, split)}")
    if floats:
        raise EkdError(floats)


FIELD_READERS = ("doc_to_text", "doc_to_target", "doc_to_choice")
_FIELD_NAME = re.compile(r"[A-Za-z_]\w*")  # a bare name: not a Jinja template, not an index


def unknown_field(task: Any) -> str:
    """ "doc_to_target 'label' is not a field of its data (fields: ...); fix the task's YAML" when one of
    :data:`FIELD_READERS` of ``task`` is a bare name its documents lack; "" when none is. lm-eval reads such a
    name as a template of plain text: every row's target became the text 'label', blamed on row 1 as an answer
    outside its choices (try-out 70, F5); a doc_to_choice failed the load, a doc_to_text gave every row that
    one word as its prompt."""
    features = list(getattr(task, "features", None) or [])
    # no columns known, or a promptsource prompt (it reads the fields itself)
    if not features or getattr(task, "prompt", None) is not None:
        return ""
    for how in FIELD_READERS:
        value = task.get_config(how)
        if isinstance(value, str) and _FIELD_NAME.fullmatch(value) and value not in features:
            return (
                f"{how} '{value}' is not a field of its data (fields: {', '.join(features)}); fix the task's "
                f"YAML{did_you_mean(value, features)}"
            )
    return ""


def undefined_field(task: Any, cause: BaseException) -> str:
    """ "doc_to_target reads 'answr', which is not a field of its data (fields: ...); fix the task's YAML; did
    you mean 'answer'?" when ``cause`` is Jinja's UndefinedError for a name ``task``'s documents lack — a
    template's (``{{answr}}``) form of :func:`unknown_field`, which failed the load against the data file
    (try-out 72, F3); "" otherwise."""
    from jinja2.exceptions import UndefinedError

    found = re.match(r"'(\w+)' is undefined", str(cause)) if isinstance(cause, UndefinedError) else None
    features = list(getattr(task, "features", None) or [])
    if found is None or not features or found[1] in features:
        return ""
    name = found[1]
    readers = [h for h in FIELD_READERS if re.search(rf"\b{name}\b", str(task.get_config(h) or ""))]
    how = readers[0] if readers else "a template"
    return (
        f"{how} reads '{name}', which is not a field of its data (fields: {', '.join(features)}); fix the task's "
        f"YAML{did_you_mean(name, features)}"
    )


def _its_yaml(task: Any) -> str:
    """ " (its YAML: PATH)": the file lm-eval built ``task`` from (its config's ``metadata.config_source``), or ""."""
    meta = task.get_config("metadata")
    source = meta.get("config_source") if isinstance(meta, Mapping) else None
    return f" (its YAML: {source})" if isinstance(source, str) and source != "inline" else ""


def _float_answer_column(task: Any) -> str:
    """The column of ``task``'s documents that ``doc_to_target`` reads (by name, or inside a Jinja template's
    ``{{ }}``) whose type is float; "" when none. A float index reaches lm-eval as a float (the field form), or
    through a template as the text '1.0', which is no choice (try-out 44, F3: row 1 was blamed, holding 0)."""
    features = getattr(task.eval_docs, "features", None)
    how = task.get_config("doc_to_target")
    if not isinstance(how, str) or not features:
        return ""
    read = {how} | set(re.findall(r"{{-?\s*(\w+)", how))
    for column in features:
        dtype = getattr(features[column], "dtype", "")
        if column in read and str(dtype).startswith("float"):
            return column
    return ""


def _float_column(column: str, task: Any, split: str) -> str:
    """The cause of :func:`_float_answer_column`, naming the first row of a local JSONL file that writes the column
    as a float (a decimal point or an empty cell turns the whole column float, so every row reads as one)."""
    culprit = ""
    for file in _task_files(task, split):
        culprit = _first_float_row(Path(file).expanduser(), column)
        if culprit:
            break
    return (
        f"its answer column '{column}' reads as floats{culprit}, which lm-eval cannot index the choices with "
        f"(one cell with a decimal point, 1.0, or an empty one makes the whole column float); {FLOAT_FIX}"
    )


def _first_float_row(path: Path, column: str) -> str:
    """`` (line 10 holds 1.0)``: the first line of a JSONL file whose ``column`` is a float; "" when none is found
    or the file is not JSONL."""
    if path.suffix not in (".jsonl", ".json") or not path.is_file():
        return ""
    try:
        with path.open() as f:
            for n, line in enumerate(f, start=1):
                row = json.loads(line) if line.strip() else None
                if isinstance(row, dict) and isinstance(row.get(column), float):
                    return f" (line {n} holds {json.dumps(row[column])})"
    except (OSError, ValueError):
        return ""
    return ""


def _row_problem(task: Any, doc: Any, mc: bool, name: str, i: int) -> str:
    """What is wrong with one row ("" when nothing is)."""
    for field, how in _null_fields(task, doc):
        return f"its field '{field}' is missing or null ({how} reads it)"
    step = "doc_to_text"
    try:
        text = task.doc_to_text(doc)
        step = "doc_to_target"
        target = task.doc_to_target(doc)
        if target is None or (isinstance(target, str) and not target and not mc):
            return f"its target is missing (doc_to_target: {task.get_config('doc_to_target')!r} gives {target!r})"
        choices = None
        if mc:
            step = "doc_to_choice"
            choices = task.doc_to_choice(doc)
            if not isinstance(choices, list) or not choices:
                return f"its choices are not a non-empty list (doc_to_choice gives {choices!r})"
            gold = text if task.multiple_input else target
            golds = gold if isinstance(gold, list) else [gold]
            for g in golds:
                if isinstance(g, float):  # lm-eval indexes the choices with it: a TypeError after the scoring
                    return (
                        "its answer indices read as floats, which lm-eval cannot index the choices with: one "
                        f"cell with a decimal point (1.0) or an empty one makes a whole column float; {FLOAT_FIX}"
                    )
                if isinstance(g, bool) or not isinstance(g, (int, str)):
                    return f"its answer {g!r} is neither a choice's index nor a choice"
                if isinstance(g, int) and not 0 <= g < len(choices):
                    return (
                        f"its answer index {g} is outside its {len(choices)} choices (0–{len(choices) - 1})"
                    )
                if isinstance(g, str) and g not in choices:
                    return f"its answer {g!r} is not one of its choices {choices!r}"
        step = "the request"
        ctx = task.fewshot_context(doc, 0)
        task.construct_requests(doc=doc, ctx=ctx, metadata=(name, i - 1, 1))
    except Exception as e:  # noqa: BLE001 - any failure lm-eval would meet on this row, said in one line
        return f"{step} fails ({type(e).__name__}: {first_line(e) or 'no message'})"
    return ""


def _null_fields(task: Any, doc: Any) -> Iterator[tuple[str, str]]:
    """(field, 'doc_to_target') for each null field of ``doc`` that a template of ``task`` reads: a JSONL row
    without the key reads as null, and a Jinja template renders it as the text 'None'."""
    if not isinstance(doc, Mapping):
        return
    for how in ("doc_to_text", "doc_to_target", "doc_to_choice"):
        template = task.get_config(how)
        if not isinstance(template, str):
            continue
        for field, value in doc.items():
            if _missing(value) and (
                template == field or re.search(rf"{{{{[^}}]*\b{re.escape(field)}\b", template)
            ):
                yield field, how


def _missing(value: Any) -> bool:
    """A JSONL row without the key reads as None; an empty CSV cell as NaN (pandas)."""
    return value is None or (isinstance(value, float) and math.isnan(value))


def root_cause(e: BaseException) -> BaseException:
    """The innermost exception of ``e``'s chain (``raise ... from``, else the one being handled)."""
    seen = {id(e)}
    while (nxt := e.__cause__ or e.__context__) is not None and id(nxt) not in seen:
        seen.add(id(nxt))
        e = nxt
    return e


def _bad_json_line(files: list[str]) -> str:
    """'FILE line N is not valid JSON (why)' for the first JSON Lines file among ``files`` with such a line."""
    for f in files:
        path = Path(f).expanduser()
        if path.suffix not in (".jsonl", ".json") or not path.is_file():
            continue
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as e:
            return f"{path} cannot be read as UTF-8 text ({first_line(e)})"
        if path.suffix == ".json":
            try:
                json.loads("\n".join(lines))
                continue  # one JSON document: not JSON Lines
            except ValueError:
                pass
        for n, line in enumerate(lines, start=1):
            if line.strip():
                try:
                    json.loads(line)
                except ValueError as e:
                    return f"{path} line {n} is not valid JSON ({first_line(e)})"
    return ""


def load_error(name: str, manager: Any, e: BaseException) -> EkdError:
    """One line for task ``name`` whose load (its dataset) failed: an unknown metric (:func:`metric_error`), a
    ``doc_to_*`` naming no field (:func:`unknown_field`, of the task being built in ``e``'s traceback), the file
    and line when a JSON Lines file of it does not parse, else the innermost cause."""
    bad_metric = metric_error(manager, name)
    if bad_metric is not None:
        return bad_metric
    task = _task_in(e)
    no_field = (unknown_field(task) or undefined_field(task, root_cause(e))) if task is not None else ""
    if no_field:  # lm-eval builds one row when it builds the task: a doc_to_choice of no field fails there
        return EkdError(f"eval.tasks: task '{task.get_config('task')}'{_its_yaml(task)}: {no_field}")
    files = [f for cfg in leaf_configs(manager, name) for f in data_files(cfg)]
    bad = _bad_json_line(files)
    if bad:
        return EkdError(f"eval.tasks: task '{name}' cannot read its dataset: {bad}; fix or remove that line")
    cause = root_cause(e)
    named = f" ({', '.join(dict.fromkeys(files))})" if files else ""
    if isinstance(cause, StopIteration) and (
        bracketed := [f for f in files if "[" in f and Path(f).is_file()]
    ):
        # datasets reads data_files as glob patterns: `[1]` matches no file (try-out 137, F8: "has no rows")
        return EkdError(
            f"eval.tasks: task '{name}': its data file {bracketed[0]} is there, but `datasets` reads data_files as a "
            "glob pattern, in which '[…]' matches other names; write '[' as '[[]' in the task YAML's data_files, or "
            "move the file to a path without brackets"
        )
    if isinstance(cause, StopIteration):  # datasets' reader of a file with no row
        return EkdError(
            f"eval.tasks: task '{name}' has no rows to read{named}; give it data or drop the task"
        )
    return EkdError(
        f"eval.tasks: task '{name}' cannot be loaded{named}: {type(cause).__name__}: "
        f"{first_line(cause) or 'no message'}; fix the task's YAML or data (`ekd --debug ...` shows the traceback)"
    )


def _task_in(e: BaseException) -> Any:
    """The lm-eval ConfigurableTask being built where ``e`` was raised (the innermost ``self`` of that type in its
    traceback), or None."""
    from lm_eval.api.task import ConfigurableTask

    found = None
    tb = e.__traceback__
    while tb is not None:
        obj = tb.tb_frame.f_locals.get("self")
        if isinstance(obj, ConfigurableTask):
            found = obj
        tb = tb.tb_next
    return found


def metric_error(manager: Any, name: str) -> EkdError | None:
    """One line for the first metric of task (or group) ``name``'s configs that lm-eval cannot find
    (:func:`unknown_metric`): the task, its YAML, the metric and the closest of lm-eval's metrics; None when
    every metric is found. lm-eval logged an ERROR and failed the load with 'KeyError: None' (try-out 70, F6)."""
    for cfg in leaf_configs(manager, name):
        metric = unknown_metric(cfg)
        if not metric:
            continue
        task = cfg.get("task") if isinstance(cfg.get("task"), str) else name
        entry = manager.task_index.get(task) or manager.task_index.get(name)
        path = getattr(entry, "yaml_path", None)
        where = f" (its YAML: {path})" if path else ""
        return EkdError(
            f"eval.tasks: task '{task}'{where}: metric '{metric}' (metric_list) is not an lm-eval metric, nor an "
            f"HF evaluate metric that loads here; {_metric_hint(metric)}"
        )
    return None


def unknown_metric(cfg: Mapping[str, Any]) -> str:
    """The first ``metric_list`` name of task config ``cfg`` that lm-eval will not find — neither in its metric
    registry nor loadable by HF ``evaluate`` (as lm-eval's ``get_metric`` looks, ``hf_evaluate: true`` skipping
    the registry) — or "". Nothing is looked up where lm-eval does not: a Python task, a ``process_results``
    (it computes the metrics), a ``!function`` metric (an absolute path in the unresolved config)."""
    metrics = cfg.get("metric_list")
    if "class" in cfg or cfg.get("process_results") is not None or not isinstance(metrics, list):
        return ""
    for entry in metrics:
        metric = entry.get("metric") if isinstance(entry, Mapping) else None
        if not isinstance(metric, str) or Path(metric).is_absolute():
            continue
        if (entry.get("hf_evaluate") is not True and metric in _lm_eval_metrics()) or _evaluate_loads(metric):
            continue
        return metric
    return ""


def _lm_eval_metrics() -> list[str]:
    """The names in lm-eval's metric registry (filled when ``lm_eval.api.metrics`` is imported)."""
    import lm_eval.api.metrics  # noqa: F401  (registers them)
    from lm_eval.api.registry import metric_registry

    return list(metric_registry)


_EVALUATE_LOADS: dict[str, bool] = {}


def _evaluate_loads(metric: str) -> bool:
    """Whether HF ``evaluate`` loads ``metric`` here, as lm-eval would (``get_metric(hf_evaluate_metric=True)``),
    with lm-eval's ERROR line about a metric it cannot find kept out; once per name per process."""
    if metric not in _EVALUATE_LOADS:
        from lm_eval.api.registry import get_metric

        logger = logging.getLogger("lm_eval")
        level = logger.level
        logger.setLevel(logging.CRITICAL)
        try:
            _EVALUATE_LOADS[metric] = get_metric(metric, hf_evaluate_metric=True) is not None
        finally:
            logger.setLevel(level)
    return _EVALUATE_LOADS[metric]


def _metric_hint(metric: str) -> str:
    """ "did you mean 'acc'?": the closest lm-eval metric — a typo's (:func:`~ekd.nearest.close_names`), else the
    longest that ``metric`` starts with ('accuracy' → 'acc', 'bleu_score' → 'bleu') — else the fix and the list."""
    names = _lm_eval_metrics()
    close = close_names(metric, names)
    prefixed = max((n for n in names if metric.startswith(n)), key=len, default="")
    if prefixed and not (close and close[0].startswith(prefixed)):
        close = [prefixed]
    if close:
        return "did you mean " + either(f"'{n}'" for n in close) + "?"
    return f"fix the task's YAML (lm-eval's metrics: {', '.join(sorted(names))})"


def run_error(name: str, label: str, e: BaseException) -> EkdError:
    """One line for task ``name`` that failed while lm-eval scored it on ``label`` ('student', 'teacher')."""
    cause = root_cause(e)
    fix = "`ekd --debug ...` shows the traceback"
    if budget := re.search(
        r"max tokens to generate \((\d+)\).*maximum sequence length \((\d+)\)", str(cause)
    ):
        # try-out 77, F2: lm-eval's assertion said what, not which setting: the generation budget
        fix = (
            f"the generation budget, {budget[1]} tokens, must be below the {label}'s maximum length, {budget[2]}: "
            "set eval.tasks_max_new_tokens lower (or max_gen_toks in the task's generation_kwargs)"
        )
    return EkdError(
        f"eval.tasks: task '{name}' failed while lm-eval scored the {label}: {type(cause).__name__}: "
        f"{first_line(cause) or 'no message'} ({fix})"
    )
