"""Per-field declarations: each config field states its default and what values it accepts.

A field is declared with one of the constructors below, in place of a plain default::

    lr: float = number(1e-3, gt=0)
    precision: str = one_of("auto", "auto", "fp32", "bf16")

The rule is stored in the dataclass field's metadata; ``ekd.config.validate`` checks every field against its
rule (the validator is generated from these declarations), and ``ekd config show --explain`` prints it.
Numbers are always finite (NaN and ±inf are refused), whatever their bounds. Rules between fields stay
explicit in ``validate.py``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from ekd.errors import ConfigError
from ekd.nearest import did_you_mean
from ekd.words import counted

RULE = "ekd.rule"  # key of the rule in a dataclass field's metadata


@dataclass(frozen=True)
class Number:
    """A finite int or float within optional bounds (ge/gt: lower, le/lt: upper)."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""  # appended to the error, e.g. "a block needs an input and a target"

    def check(self, key: str, value: Any) -> None:
        if not math.isfinite(value):
            raise ConfigError(f"{key} must be a finite number, got {value}")
        bad = (
            (self.ge is not None and value < self.ge)
            or (self.gt is not None and value <= self.gt)
            or (self.le is not None and value > self.le)
            or (self.lt is not None and value >= self.lt)
        )
        if bad:
            why = f" ({self.why})" if self.why else ""
            raise ConfigError(f"{key} must be {self.describe()}{why}, got {value}")

    def describe(self) -> str:
        bounds = (("≥", self.ge), (">", self.gt), ("≤", self.le), ("<", self.lt))
        kept = [f"{op} {_num(b)}" for op, b in bounds if b is not None]
        return " and ".join(kept) if kept else "a finite number"


# the spellings of a dtype, torch's names and the short ones (keys take one or the other): a hint, not a typo's
DTYPE_SPELLINGS = {
    spelling: names
    for names in (
        ("float16", "fp16", "half"),
        ("bfloat16", "bf16"),
        ("float32", "fp32", "float"),
        ("float64", "fp64", "double"),  # offered by no key: said so, never a 16-bit "did you mean"
    )
    for spelling in names
}


@dataclass(frozen=True)
class OneOf:
    """One of fixed names, or of the names a registry returns (``options`` is then a callable, read lazily)."""

    options: tuple[str, ...] | Callable[[], Iterable[str]]
    ignore_case: bool = False
    elsewhere: tuple[tuple[str, str], ...] = ()
    """(name, where it belongs) of names that are right for another key, said instead of a did-you-mean."""
    numbers: str = ""
    """The key a number given here belongs to (``method.temperature=2`` means ``method.kd_temperature=2``)."""

    def names(self) -> list[str]:
        return list(self.options() if callable(self.options) else self.options)

    def check(self, key: str, value: Any) -> None:
        names = self.names()
        found = value.upper() if self.ignore_case else value
        if found in names:
            return
        hint = next((f" ({value} is {where})" for name, where in self.elsewhere if name == found), None)
        if hint is None and self.numbers and _is_number(value) and float(value) > 0:  # a τ, not a typo of -1
            hint = f"; a number is {self.numbers}'s: {self.numbers}={value}"
        # fp16 is float16 (try-out 75, F6)
        if hint is None and (same := DTYPE_SPELLINGS.get(str(found).lower().removeprefix("torch."))):
            meant = [n for n in same if n in names]
            hint = (
                f"; did you mean '{meant[0]}'?"
                if meant
                else f" ({value} is not offered here: {', '.join(n for n in names if n not in ('auto', ''))} are)"
            )
        hint = hint if hint is not None else did_you_mean(found, names)
        shown = ", ".join(repr(n) if n == "" else n for n in names)
        raise ConfigError(f"{key} must be one of {shown}, got '{value}'{hint}")

    def describe(self) -> str:
        return "one of " + ", ".join(repr(n) if n == "" else n for n in self.names())


@dataclass(frozen=True)
class Text:
    """Free text; ``nonempty`` refuses ''; ``check`` returns an error message (without the key) or None."""

    nonempty: bool = False
    check_fn: Callable[[str], str | None] | None = None
    what: str = "text"

    def check(self, key: str, value: Any) -> None:
        if self.nonempty and not value.strip():  # '' is also what a YAML null or ~ gives (try-out 95, F12)
            raise ConfigError(
                f"{key} must not be empty" + ("" if value else " (YAML reads null and ~ as none)")
            )
        problem = self.check_fn(value) if self.check_fn else None
        if problem:
            # '' is also what a YAML null or ~ gives a text key (try-out 92, F5: `run: {name: null}` got "got ''")
            got = (
                f"'{value}'"
                if value
                else "an empty value (YAML reads null and ~ as none: quote 'null' for the text)"
            )
            raise ConfigError(f"{key} {problem}, got {got}")

    def describe(self) -> str:
        return self.what + (" (non-empty)" if self.nonempty else "")


@dataclass(frozen=True)
class Flag:
    """true or false (the type conversion already guarantees it)."""

    def check(self, key: str, value: Any) -> None:
        return None

    def describe(self) -> str:
        return "true or false"


@dataclass(frozen=True)
class Items:
    """A list whose every item obeys ``each``, with at least ``min_items`` items."""

    each: Number | OneOf | Text
    min_items: int = 0

    def check(self, key: str, value: Any) -> None:
        if len(value) < self.min_items:
            raise ConfigError(f"{key} needs at least {counted(self.min_items, 'item')}, got {list(value)}")
        for i, item in enumerate(value):
            self.each.check(f"{key}[{i}]", item)

    def describe(self) -> str:
        least = f"at least {self.min_items} " if self.min_items else ""
        return f"a list of {least}items, each {self.each.describe()}"


@dataclass(frozen=True)
class Mapping:
    """A mapping whose keys obey ``keys`` (if given) and values obey ``values``."""

    values: Number | OneOf | Text
    keys: OneOf | Text | None = None

    def check(self, key: str, value: Any) -> None:
        for k, v in value.items():
            if self.keys is not None:
                self.keys.check(f"{key} key", k)
            self.values.check(f"{key}.{k}", v)

    def describe(self) -> str:
        return f"a mapping of names to values, each {self.values.describe()}"


Rule = Number | OneOf | Text | Flag | Items | Mapping


def _num(b: float) -> str:
    return str(int(b)) if float(b).is_integer() else str(b)


def _declare(default: Any, rule: Rule, factory: bool = False) -> Any:
    if factory:
        return dataclasses.field(default_factory=default, metadata={RULE: rule})
    return dataclasses.field(default=default, metadata={RULE: rule})


def number(
    default: float,
    *,
    ge: float | None = None,
    gt: float | None = None,
    le: float | None = None,
    lt: float | None = None,
    why: str = "",
) -> Any:
    """An int or float field: finite, within the given bounds."""
    return _declare(default, Number(ge, gt, le, lt, why))


TAU_MIN, TAU_MAX = 0.1, 100.0
"""The KD temperatures ekd accepts (METHODS §6). The KD term is τ²·D(p_τ‖q_τ): as τ → 0 the targets turn
one-hot and the term and its gradient (∝ τ) fade (τ=1e-9 trains on a loss of ~1e-9: nothing from the teacher;
without the τ² factor the gradient grows as 1/τ instead); as τ grows, D shrinks as 1/τ² while fp32 rounding of
the log-probabilities stays, so τ² amplifies it (τ²·KL in fp32 is off by 0.1% at τ=100, 30% at τ=1000).
Published KD temperatures lie within about 0.5–20."""
KD_TAU = Number(
    ge=TAU_MIN,
    le=TAU_MAX,
    why="a KD temperature: below 0.1 the τ²-scaled KD term fades to nothing, above 100 fp32 rounding swamps it",
)
"""The rule of every key that is, or bounds, a per-token KD temperature τ_i."""


def kd_tau(default: float) -> Any:
    """A KD temperature field: finite and within [``TAU_MIN``, ``TAU_MAX``] (:data:`KD_TAU`)."""
    return _declare(default, KD_TAU)


def one_of(
    default: str,
    *options: str,
    names: Callable[[], Iterable[str]] | None = None,
    ignore_case: bool = False,
    elsewhere: tuple[tuple[str, str], ...] = (),
    numbers: str = "",
) -> Any:
    """A name from ``options`` (or from the callable ``names``, read when validating); ``elsewhere``: (name,
    where it belongs) of names another key takes, said when given here; ``numbers``: the key a number belongs to."""
    return _declare(default, OneOf(names if names is not None else options, ignore_case, elsewhere, numbers))


def _is_number(value: Any) -> bool:
    try:
        float(value)
    except (TypeError, ValueError):
        return False
    return True


def text(
    default: str,
    *,
    nonempty: bool = False,
    check: Callable[[str], str | None] | None = None,
    what: str = "text",
) -> Any:
    """A free-text field (path, hub id, name)."""
    return _declare(default, Text(nonempty, check, what))


def flag(default: bool) -> Any:
    """A boolean field."""
    return _declare(default, Flag())


def items(default: Callable[[], list], each: Number | OneOf | Text, min_items: int = 0) -> Any:
    """A list field; ``default`` is a factory (lists are mutable)."""
    return _declare(default, Items(each, min_items), factory=True)


def mapping(values: Number | OneOf | Text, keys: OneOf | Text | None = None) -> Any:
    """A mapping field, empty by default."""
    return _declare(dict, Mapping(values, keys), factory=True)


@contextmanager
def about(key: str) -> Iterator[None]:
    """A ConfigError raised in the block that names no keys is about the field ``key`` (its ``keys``): a rule,
    or a type conversion, names an item of a list or mapping field in its message (``eval.tasks[2]``,
    ``method.scorer_weights.x``); the key it is about is the field's."""
    try:
        yield
    except ConfigError as e:
        if not e.keys:
            e.keys = (key,)
        raise


def rule_of(f: dataclasses.Field) -> Rule | None:
    """The declared rule of a dataclass field, or None if the field has no declaration."""
    return f.metadata.get(RULE)
