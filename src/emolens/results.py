"""Typed results of the API's verbs (export, ship, dataset statistics, ...): dataclasses with attributes and
``to_dict()``, which also read like the plain dicts they replaced (``r["path"]``), so scripts written against
those keep working. Torch-free."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping
from typing import Any


class Result(Mapping):
    """Base of a dataclass result: ``to_dict()`` for JSON, and read-only dict access to its fields."""

    def to_dict(self) -> dict[str, Any]:
        """The fields as plain JSON-ready types (nested results and tuples become dicts and lists)."""
        def plain(v: Any) -> Any:
            if isinstance(v, Result):
                return v.to_dict()
            if isinstance(v, dict):
                return {k: plain(x) for k, x in v.items()}
            if isinstance(v, list | tuple):
                return [plain(x) for x in v]
            return v

        return {f.name: plain(getattr(self, f.name)) for f in dataclasses.fields(self)}  # type: ignore[arg-type]

    def __getitem__(self, key: str) -> Any:
        if key not in self._names():
            raise KeyError(key)
        return getattr(self, key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._names())

    def __len__(self) -> int:
        return len(self._names())

    def _names(self) -> tuple[str, ...]:
        return tuple(f.name for f in dataclasses.fields(self))  # type: ignore[arg-type]
