"""A tiny name -> class registry, one per plugin family (encoders, datasets, maps).

The registered name is the Hydra config name (``configs/<group>/<name>.yaml``), so ``encoder=oracle`` on
the command line and ``build_encoder("oracle")`` in Python reach the same class.
"""

from __future__ import annotations

import difflib
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Maps config names to classes of one plugin family.

    Example:
        >>> ENCODERS = Registry("encoder")
        >>> @ENCODERS.register("dummy")
        ... class Dummy: ...
        >>> ENCODERS.get("dummy") is Dummy
        True
    """

    def __init__(self, family: str) -> None:
        self.family = family
        self._entries: dict[str, type[T]] = {}

    def register(self, name: str) -> Callable[[type[T]], type[T]]:
        def decorator(cls: type[T]) -> type[T]:
            if name in self._entries and self._entries[name] is not cls:
                raise ValueError(f"{self.family} '{name}' is already registered to {self._entries[name]!r}")
            self._entries[name] = cls
            return cls

        return decorator

    def get(self, name: str) -> type[T]:
        try:
            return self._entries[name]
        except KeyError:
            close = difflib.get_close_matches(name, self._entries, n=1)
            hint = f" Did you mean '{close[0]}'?" if close else ""
            raise KeyError(
                f"Unknown {self.family} '{name}'. Available: {', '.join(self.names())}.{hint}"
            ) from None

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries
