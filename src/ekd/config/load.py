"""Loading a config: YAML files, dotted ``key=value`` overrides, coercion to the declared types.

Loading merges, in order: defaults → YAML file(s) → the method preset named by ``method.preset`` (as
defaults under the file's explicit ``method`` keys) → CLI overrides. Values are coerced to the declared
type (YAML reads ``3e-4`` as a string); unknown keys fail with the nearest valid key. Grouped spellings
(``model.lora: {r: 16}``, ``model.lora.r=16``, ``student.export``) become flat keys first
(:mod:`ekd.config.groups`). Paths are relative to the working directory, in a file as on the command line;
local ones come out absolute (:mod:`ekd.config.paths`), so a saved config reads the same from anywhere.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import typing
from pathlib import Path
from typing import Any

import yaml

from ekd.config.groups import ALIASES, canonical_key, expand_section, unknown_group_hint
from ekd.config.paths import resolve_paths, say_keywords, say_local_over_hub
from ekd.config.rules import about, rule_of
from ekd.config.sections import SECTIONS, Config, MethodConfig
from ekd.config.validate import validate
from ekd.errors import ConfigError
from ekd.nearest import SHOWN, close_names, did_you_mean, either


def split_config_and_overrides(config: str | None, overrides: list[str]) -> tuple[list[str], list[str]]:
    """CLI positionals: those with '=' are overrides; the others are YAML files merged in order (later wins).

    Raises:
        ConfigError: an empty positional (``ekd distill ""``, an unset shell variable), which is neither.
    """
    items = ([config] if config is not None else []) + list(overrides)
    if any(not i.strip() for i in items):
        raise ConfigError(
            "an empty argument was given where a config file or key=value override goes (an unset shell "
            "variable?); remove it or give the path"
        )
    files = [i for i in items if "=" not in i]
    return files, [i for i in items if "=" in i]


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (litgpt style), read from the class source."""
    tree = ast.parse(inspect.getsource(cls))
    body = tree.body[0].body  # type: ignore[attr-defined]
    docs: dict[str, str] = {}
    for node, nxt in zip(body, body[1:]):
        if (
            isinstance(node, ast.AnnAssign)
            and isinstance(node.target, ast.Name)
            and isinstance(nxt, ast.Expr)
            and isinstance(nxt.value, ast.Constant)
            and isinstance(nxt.value.value, str)
        ):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def all_keys() -> list[str]:
    """Every dotted key, e.g. 'train.max_steps'."""
    return [f"{s}.{f.name}" for s in SECTIONS for f in dataclasses.fields(_section_type(s))]


def _section_type(section: str) -> type:
    return typing.get_type_hints(Config)[section]


MEANT = {
    "method.temperature_start": "method.kd_temperature",  # τ0 of the schedule, beside method.temperature_end
    "method.tau": "method.kd_temperature",
    "data.pack": "data.document_attention",  # packing is always on; this key chooses how packed documents attend
    "data.packing": "data.document_attention",
}
"""Unknown keys whose meaning, not spelling, names the key: the schedule's τ0 is ``method.kd_temperature``."""


def _nearest(key: str) -> str:
    if key in MEANT:
        return f"; did you mean '{MEANT[key]}'?"
    section, _, leaf = key.partition(".")
    if leaf and section in SECTIONS:  # a key of a known section: its keys, never a section name alone
        # first the key of another section it names (train.block_length → data.block_length, train.eval_every →
        # eval.every: try-out 74, F5, was told 'train.checkpoint_every'), then this section's close ones
        elsewhere = [
            k
            for k in all_keys()
            if not k.startswith(f"{section}.") and leaf in (k.partition(".")[2], k.replace(".", "_"))
        ]
        here = close_names(key, [k for k in all_keys() if k.startswith(f"{section}.")], cutoff=0.5)
        close = [f"'{k}'" for k in [*elsewhere, *here][:SHOWN]]
        return f"; did you mean {either(close)}?" if close else ""
    return did_you_mean(key, all_keys() + SECTIONS, cutoff=0.5)


class CliText(str):
    """A value typed on the command line: kept verbatim for ``str`` fields, parsed as YAML otherwise
    (so ``run.name=1.10`` stays '1.10' and ``train.lr=3e-4`` becomes 0.0003)."""


def coerce(value: Any, annotation: Any, key: str, text: Any = None) -> Any:
    """Convert ``value`` to the declared type, or raise ConfigError naming the dotted key.

    ``text``: the value as written in its YAML file (:func:`scalar_texts`: the same tree, its scalars as written;
    None where unknown). A text key (``str``, or the items of a list or mapping of them) given a scalar YAML reads
    as something else — ``off``/``yes`` as booleans, ``1.10`` as 1.1, ``010`` as 8, ``12:30`` as 750 — keeps the
    text written (``run.name: off`` named the run directory ``runs/False``), as a command line's text does.
    """
    origin = typing.get_origin(annotation)
    if isinstance(value, CliText):
        if annotation is str:
            value = str(value)
        else:  # a list or mapping typed on the command line: its items as typed, beside their YAML reading
            text = _text_tree(str(value))
            value = _parse_cli_value(str(value), key)
    try:
        if annotation is bool:
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in (
                "true",
                "false",
                "1",
                "0",
                "yes",
                "no",
                "on",
                "off",
            ):
                return value.lower() in ("true", "1", "yes", "on")
            if isinstance(value, int) and value in (0, 1):
                return bool(value)
            raise ValueError
        if annotation is int:
            if isinstance(value, bool):
                raise ValueError
            if isinstance(value, str) and "e" in value.lower():
                value = float(value)  # YAML reads 1e3 as a string
            if isinstance(value, float) and not value.is_integer():
                raise ValueError
            return int(value)
        if annotation is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if annotation is str:
            if isinstance(value, (dict, list)):
                raise ValueError
            if value is None or isinstance(value, str):
                return value or ""
            if isinstance(text, str):  # a boolean, number or date as YAML read it: the text as written
                return text
            if isinstance(value, (bool, float)):  # its text unknown: not guessed
                raise ConfigError(_not_text(key, value))
            return str(value)
        if origin is list:
            (item,) = typing.get_args(annotation)
            if isinstance(value, str):
                value = [v for v in value.strip("[]").split(",") if v.strip()]
            if not isinstance(value, (list, tuple)):
                raise ValueError
            texts = text if isinstance(text, list) and len(text) == len(value) else [None] * len(value)
            return [
                coerce(v.strip() if isinstance(v, str) else v, item, key, t) for v, t in zip(value, texts)
            ]
        if origin is dict:
            _, vtype = typing.get_args(annotation)
            if value in (None, ""):
                return {}
            if not isinstance(value, dict):
                raise ValueError
            # the names too as written (try-out 92, F1: `{no: a.txt}` named a set 'False', `{010: ...}` '8'): the
            # text tree holds the same entries in the same order
            if isinstance(text, dict) and len(text) < len(value):  # 1 and '1', 010 and '010' (try-out 96, F1)
                raise ConfigError(
                    f"{key}: two of its entries have the same name as written (such as 1 and '1', or 010 and "
                    "'010'), and one would replace the other; name each entry once"
                )
            written = list(text.items()) if isinstance(text, dict) and len(text) == len(value) else None
            out = {}
            for i, (k, v) in enumerate(value.items()):
                name, t = written[i] if written is not None else (k, None)
                if name is None or not str(name).strip():  # try-out 95, F7: a set named null became 'None'
                    raise ConfigError(
                        f"{key}: an entry has no name (YAML reads null and ~ as none); name it, or quote the text "
                        "('null': ...)"
                    )
                # YAML reads {a:1} as a key 'a:1' without a value (try-out 125, F5)
                if v is None and ":" in str(name):
                    raise ConfigError(
                        f"{key}: the entry '{name}' has no value (YAML reads 'name:value' without a space as one "
                        f"name); write a space after the colon: {{{str(name).replace(':', ': ', 1)}}}"
                    )
                out[str(name)] = coerce(v, vtype, f"{key}.{name}", t)
            return out
    except ConfigError:
        raise  # an item's own message names the item
    except (TypeError, ValueError, OverflowError):
        pass
    else:
        return value
    tname = getattr(annotation, "__name__", str(annotation))
    unquoted = ""
    if tname == "dict" and isinstance(value, str) and value.lstrip().startswith("{"):
        # `{ho: dd/{lr}/held.txt}`: a path holding YAML's flow characters is no mapping (try-out 137, F7)
        unquoted = (
            " (it does not read as a YAML mapping: put a value holding ',', '{', '}', '[' or ']' in quotes, "
            "e.g. {name: 'dir/{lr}/held.txt'})"
        )
    raise ConfigError(f"{key}: expected {tname}, got {value!r}{unquoted}")


def _not_text(key: str, value: bool | float) -> str:
    """The refusal of a YAML boolean or float where text belongs: its text is not the one written (``run.name:
    off`` named the run directory ``False``, ``model.revision: 1.10`` reads ``1.1``)."""
    field = key.rsplit(".", 1)[-1]
    if isinstance(value, bool):
        read = f"the boolean {str(value).lower()} (YAML reads unquoted yes, no, on, off, true and false so)"
    else:
        read = f"the number {value!r}, whose text may differ from what was written (1.10 reads 1.1)"
    return f"{key}: YAML read this value as {read}, not as text; put it in quotes ({field}: 'the text')"


class DuplicateKeyError(yaml.constructor.ConstructorError):
    """A key written twice in one YAML mapping (:class:`ConfigLoader`)."""


class ConfigLoader(yaml.SafeLoader):
    """PyYAML's safe loader that refuses a key written twice in one mapping (safe_load keeps the last in silence:
    try-out 95, F7 — two eval sets named ``null`` and ``~`` left one; ``lr:`` twice in a section, the second). A
    key a merge ``<<`` brings in may be written again: that overrides it, as YAML says."""

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> dict:
        if isinstance(node, yaml.MappingNode):
            seen: set = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    again = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: left to PyYAML's own error
                    continue
                if again:
                    said = "null (or ~)" if key is None else repr(key)
                    raise DuplicateKeyError(
                        None, None, f"the key {said} is written twice in one mapping", key_node.start_mark
                    )
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """``text`` read as :func:`yaml.safe_load` reads it, a key written twice in one mapping refused
    (:class:`ConfigLoader`)."""
    return yaml.load(text, Loader=ConfigLoader)  # noqa: S506 — a SafeLoader


class _TextLoader(yaml.SafeLoader):
    """PyYAML's safe loader with booleans, numbers and dates left as the text written (null stays None; merge
    keys ``<<`` and aliases resolved as safe_load resolves them): the same tree as safe_load's, its scalars as
    written. Two keys that differ in YAML's reading but not as written (``1`` and ``"1"``) become one here: a
    mapping of fewer entries than YAML's, which :func:`coerce` refuses (try-out 96, F1)."""


for _tag in ("bool", "int", "float", "timestamp"):
    _TextLoader.add_constructor(f"tag:yaml.org,2002:{_tag}", yaml.SafeLoader.construct_scalar)


def _text_tree(document: str) -> Any:
    """``document`` parsed as :func:`yaml.safe_load` parses it, with every boolean, number and date left as the text
    written (:class:`_TextLoader`): what each value was written as; None where it does not parse."""
    try:
        return yaml.load(document, Loader=_TextLoader)  # noqa: S506 — a SafeLoader
    except yaml.YAMLError:
        return None


def scalar_texts(document: str, source: str) -> dict[str, Any]:
    """Dotted key → the value of the config ``document`` (the file ``source``) as written (:func:`_text_tree`,
    flattened as the values are); {} where that reading fails: text keys then take YAML's reading, refused where
    it is a boolean or float."""
    tree = _text_tree(document)
    try:
        return _flatten(tree, source) if isinstance(tree, dict) else {}
    except ConfigError:
        return {}


def _parse_cli_value(text: str, key: str) -> Any:
    try:
        return load_yaml(text)
    except DuplicateKeyError as e:
        raise ConfigError(f"{key}={text}: {e.problem}") from None
    except yaml.YAMLError:
        return text


def _flatten(raw: dict[str, Any], source: str) -> dict[str, Any]:
    """{'train': {'lr': 1}} → {'train.lr': 1}; rejects unknown sections and keys."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: expected a mapping of sections ({', '.join(SECTIONS)})")
    flat: dict[str, Any] = {}
    known = _known()
    for section, values in raw.items():
        alias = any(a.startswith(f"{section}.") for a in ALIASES)  # student: {export: ...}
        if section not in SECTIONS and not alias:
            raise ConfigError(f"{source}: unknown section '{section}'{_nearest(str(section))}")
        if values is None:
            continue
        # `method: rskd`, as method=rskd on a command line
        if section == "method" and isinstance(values, str):
            values = {"preset": values}
        if not isinstance(values, dict):
            raise ConfigError(f"{source}: section '{section}' must be a mapping of keys to values")
        for key, v in expand_section(str(section), values, known, source).items():  # groups → flat keys
            if key in flat:
                raise ConfigError(f"{source}: {key} is set twice (through an alias); keep one", keys=(key,))
            flat[key] = v
    return flat


@functools.cache
def _known() -> frozenset[str]:
    return frozenset(all_keys())


def _check_key(key: str, source: str, value: str = "…") -> None:
    if key not in _known():
        # the first colon: a value may hold dots ({lr:0.01}; try-out 129, F11)
        head, colon, rest = key.partition(":")
        spaced = (  # YAML reads {preset:kd} as a key 'preset:kd' (try-out 127, F9)
            f"; YAML reads 'name:value' without a space as one name: write {head.rpartition('.')[2]}: {rest}"
            if colon and head in _known()
            else ""
        )
        hint = spaced or _mapping_entry_hint(key, value) or unknown_group_hint(key, _known()) or _nearest(key)
        raise ConfigError(f"{source}: unknown key '{key}'{hint}", keys=(key,))


@functools.cache
def _mapping_keys() -> frozenset[str]:
    """The keys whose value is a mapping of names (``data.eval_sources``, ``eval.set_tags``, ...)."""
    from ekd.config.rules import Mapping

    return frozenset(
        f"{s}.{f.name}"
        for s in SECTIONS
        for f in dataclasses.fields(_section_type(s))
        if isinstance(rule_of(f), Mapping)
    )


NULL_SPELLINGS = ("null", "none", "~")
"""What YAML reads as null. A command line's ``key=value`` keeps a text setting's value as written, so for a directory
setting these would name a directory ``null`` in the working directory (try-out 79, F8: ``data.store_dir=null``)."""


@functools.cache
def _directory_keys() -> dict[str, bool]:
    """The keys whose value names a directory (``data.store_dir``, ``run.output_dir``, ...) → whether it may be
    empty (unset)."""
    from ekd.config.rules import Text

    return {
        f"{s}.{f.name}": not rule.nonempty
        for s in SECTIONS
        for f in dataclasses.fields(_section_type(s))
        if isinstance(rule := rule_of(f), Text) and rule.what == "a directory"
    }


def _refuse_null_directory(key: str, text: str) -> None:
    """``data.store_dir=null`` on a command line: refused, with the spelling that leaves it unset."""
    if key in _directory_keys() and text.strip().lower() in NULL_SPELLINGS:
        unset = f"to leave it unset, give it empty ({key}=)" if _directory_keys()[key] else "give a directory"
        raise ConfigError(
            f"{key}={text.strip()} would name a directory '{text.strip()}' here; {unset}", keys=(key,)
        )


def _mapping_entry_hint(key: str, value: str) -> str:
    """For ``data.eval_sources.e=x`` (one entry of a mapping key, which is set whole): the spelling that works."""
    section, _, rest = key.partition(".")
    field, dot, name = rest.partition(".")
    mapping = f"{section}.{field}"
    if not dot or mapping not in _mapping_keys():
        return ""
    # YAML's flow characters: the value in quotes (try-out 137, F7)
    if any(c in str(value) for c in ",{}[]#"):
        value = "'" + str(value).replace("'", "''") + "'"
    return (
        f'; {mapping} is a mapping, set whole: write "{mapping}={{{name}: {value}}}" (quoted in a shell; '
        f"it replaces the whole mapping, so name every entry to keep), or in YAML a mapping under {mapping}"
    )


def parse_overrides(overrides: list[str]) -> dict[str, Any]:
    """['train.lr=3e-4', 'method=sekd'] → {'train.lr': '3e-4' parsed, 'method.preset': 'sekd'}.

    Raises:
        ConfigError: an item that is not ``key=value``, or a key no section has.
        TypeError: ``overrides`` given as one string instead of a list of them.
    """
    if isinstance(overrides, str):  # iterated character by character: "override 'm' must look like …"
        raise TypeError(f"overrides must be a list of 'key=value' strings, got the string {overrides!r}")
    flat: dict[str, Any] = {}
    for item in overrides:
        if "=" not in item:
            raise ConfigError(
                f"override '{item}' must look like section.key=value (e.g. train.max_steps=100)"
            )
        key, text = item.split("=", 1)
        key = key.strip()
        if key == "method":  # shorthand: method=<preset>
            key = "method.preset"
        key = canonical_key(key, _known())  # model.lora.r → model.lora_r
        _check_key(key, "command line", text.strip())
        _refuse_null_directory(key, text)
        flat[key] = CliText(text)
    return flat


def load_config(
    paths: list[str | Path] | str | Path | None = None, overrides: list[str] | None = None
) -> Config:
    """Build a validated Config from YAML file(s) and dotted overrides (later wins): ``load_config(None,
    ["method=sekd", "train.max_steps=100"])`` applies the preset as ``ekd distill`` does.

    Raises:
        ConfigError: a key, value or file the config cannot take, in one line naming it and the fix.
        TypeError: ``overrides`` given as one string instead of a list of them.
    """
    if paths is None:
        paths = []
    elif isinstance(paths, (str, Path)):
        paths = [paths]
    flat: dict[str, Any] = {}
    texts: dict[str, Any] = {}  # key → its value as written in the file that set it last (coerce's ``text``)
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(_missing_file_message(str(path)))
        raw, text = read_yaml(path)
        file_flat = _flatten(raw, str(path))
        if not file_flat:  # an empty file must not start the full default run
            raise ConfigError(
                f"config file {path} is empty; write the settings to use (see configs/demo.yaml)"
            )
        for key in file_flat:
            _check_key(key, str(path))
        flat.update(file_flat)
        written = scalar_texts(text, str(path))
        texts.update({k: written.get(k) for k in file_flat})
    given = parse_overrides(overrides or [])
    flat.update(given)
    return build_config(flat, {k: v for k, v in texts.items() if k not in given})


def read_yaml(path: Path) -> tuple[Any, str]:
    """The YAML document in ``path`` and its text; a syntax error keeps PyYAML's line and column."""
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path}: not UTF-8 text (byte {e.start})") from None
    except OSError as e:
        raise ConfigError(f"{path}: cannot read ({e.strerror or e})") from None
    try:
        return load_yaml(text) or {}, text
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None


def _missing_file_message(item: str) -> str:
    """A positional without '=' that is not a file: a forgotten '=value' if it names a key, else a missing file."""
    key = canonical_key("method.preset" if item == "method" else item, _known())
    if key in all_keys():
        return f"override '{item}' has no value: write {item}=<value> (arguments without '=' are YAML files)"
    if "." in item and item.split(".", 1)[0] in SECTIONS:
        return f"'{item}' is neither a config file nor a known key{_nearest(item)}; overrides look like section.key=value"
    if Path(item).is_dir():  # try-out 79, F7: a directory was said to be "not found"
        return f"{item} is a directory, not a config file; give a YAML file (arguments without '=' are YAML files)"
    return f"config file not found: {item}"


def build_config(flat: dict[str, Any], texts: dict[str, Any] | None = None, typed: bool = True) -> Config:
    """Config from a flat dict of dotted keys; the method preset's values fill keys not set explicitly. Local
    paths (relative to the working directory) come out absolute (:mod:`ekd.config.paths`). ``texts``: key → its
    value as written in a YAML file (:func:`scalar_texts`), which text keys keep (:func:`coerce`). ``typed``:
    False for a run's recorded config, whose keywords are not said (:func:`~ekd.config.paths.say_keywords`)."""
    from ekd.methods import preset_values  # local import: methods imports config types

    preset = str(flat.get("method.preset", MethodConfig.preset))
    merged = {f"method.{k}": v for k, v in preset_values(preset).items()}
    merged.update(flat)
    cfg = Config()
    hints = {s: typing.get_type_hints(_section_type(s)) for s in SECTIONS}
    for key, value in merged.items():
        section, name = key.split(".", 1)
        _check_key(key, "config")
        with about(key):
            text = (texts or {}).get(key)
            setattr(getattr(cfg, section), name, coerce(value, hints[section][name], key, text))
    # local paths absolute, once: every later reader sees one spelling (config/paths.py)
    resolve_paths(cfg)
    validate(cfg)
    if typed:  # a keyword the user gave, beside a directory of its name
        say_keywords(cfg, flat)
    # a hub id written (or a run recorded) where a directory of that relative path is read instead
    say_local_over_hub(cfg, flat)
    return cfg


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Rebuild a Config from ``Config.to_dict()`` output (e.g. a saved ``config.yaml``): a recorded config, whose
    keywords are not said of a directory of their name where the command runs."""
    return build_config(_flatten(raw, "saved config"), typed=False)


def saved_value_problem(raw: dict[str, Any]) -> str | None:
    """The first value of a saved config (``config.yaml``, parsed) that is not of its key's type, as the error
    line loading it would give (``train.max_steps: expected int, got 'four'``); None when every value of a key
    this ekd knows converts to the key's type. Keys it does not know (another version's), the values each key
    accepts (names, bounds: they change between versions and with registered plugins) and the rules between
    fields are not checked (try-out 47, F4: ``ekd compare`` took ``max_steps: four`` as a setting the runs
    differ in)."""
    for section, values in raw.items():
        if section not in SECTIONS or not isinstance(values, dict):
            continue
        hints = typing.get_type_hints(_section_type(section))
        for name, value in values.items():
            if name in hints:
                try:
                    coerce(value, hints[name], f"{section}.{name}")
                except ConfigError as e:
                    return str(e)
    return None


def explain() -> str:
    """Every key with its type, default and docstring (``ekd config show --explain``)."""
    lines = []
    for s in SECTIONS:
        cls = _section_type(s)
        docs = field_docs(cls)
        hints = typing.get_type_hints(cls)
        lines.append(f"[{s}]")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            tname = getattr(hints[f.name], "__name__", str(hints[f.name]))
            rule = rule_of(f)
            accepted = f"  ({rule.describe()})" if rule is not None else ""
            lines.append(f"  {s}.{f.name}: {tname} = {default!r}{accepted}\n      {docs.get(f.name, '')}")
    return "\n".join(lines)
