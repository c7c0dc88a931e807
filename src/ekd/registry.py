"""One small name → object registry, used for divergences, scorers, policies, temperatures and presets."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

from ekd.nearest import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection with a one-line description per entry.

    >>> divergences = Registry("divergence")
    >>> @divergences.register("forward_kl", "KL(p||q), Hinton KD")
    ... def forward_kl(...): ...
    """

    def __init__(self, kind: str):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._descriptions: dict[str, str] = {}

    def register(self, name: str, description: str = "") -> Callable[[T], T]:
        def decorator(obj: T) -> T:
            self.add(name, obj, description)
            return obj

        return decorator

    def add(self, name: str, obj: T, description: str = "") -> None:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        self._items[name] = obj
        self._descriptions[name] = description

    def get(self, name: str) -> T:
        if name not in self._items:
            raise KeyError(self.unknown_message(name))
        return self._items[name]

    def unknown_message(self, name: str) -> str:
        hint = did_you_mean(name, self._items)
        return f"unknown {self.kind} {name!r}{hint} (choices: {', '.join(sorted(self._items))})"

    def describe(self, name: str) -> str:
        return self._descriptions[name]

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)
