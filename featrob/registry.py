"""Registries of named things (models, attacks, metrics, ...), one per kind.

Plugins fill them through ``register(...)`` callbacks handed to their
``featrob_register_*`` hooks. A registry remembers which plugin registered every entry,
so a duplicate name is an error that names both plugins.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from featrob.errors import DuplicateNameError, UnknownNameError

T = TypeVar("T")


@dataclass(frozen=True)
class Entry(Generic[T]):
    """One registered object and where it came from."""

    name: str
    obj: T
    plugin: str
    description: str = ""
    aliases: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict)


class Registry(Generic[T]):
    """Named objects of one kind (``"attack"``, ``"model"``, ...).

    Args:
        kind: Singular noun used in messages ("unknown attack 'pdg'; did you mean 'pgd'?").
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, Entry[T]] = {}
        self._aliases: dict[str, str] = {}
        #: Extra text for "unknown name" messages, e.g. which plugins failed to load.
        self.hint: str = ""

    def add(
        self,
        obj: T,
        name: str | None = None,
        *,
        plugin: str = "<unknown>",
        aliases: tuple[str, ...] | list[str] = (),
        description: str | None = None,
        **metadata: Any,
    ) -> Entry[T]:
        """Register ``obj`` under ``name`` (default: ``obj.name``).

        Raises:
            DuplicateNameError: the name or an alias is taken; the message names both plugins.
        """
        name = name if name is not None else getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{self.kind} {obj!r} registered by {plugin!r} needs a name")
        if description is None:
            description = getattr(obj, "description", "") or _first_doc_line(obj)
        for key in (name, *aliases):
            owner = self._owner(key)
            if owner is not None:
                raise DuplicateNameError(
                    f"{self.kind} {key!r} is registered twice: by plugin {owner.plugin!r} "
                    f"and by plugin {plugin!r}"
                )
        entry = Entry(name, obj, plugin, description, tuple(aliases), dict(metadata))
        self._entries[name] = entry
        for alias in aliases:
            self._aliases[alias] = name
        return entry

    def _owner(self, key: str) -> Entry[T] | None:
        if key in self._entries:
            return self._entries[key]
        if key in self._aliases:
            return self._entries[self._aliases[key]]
        return None

    def entry(self, name: str) -> Entry[T]:
        """The entry for ``name`` or one of its aliases.

        Raises:
            UnknownNameError: with the closest registered names.
        """
        found = self._owner(name)
        if found is None:
            raise UnknownNameError(self.kind, name, self.names(), self.hint)
        return found

    def get(self, name: str) -> T:
        """The registered object for ``name``; see :meth:`entry`."""
        return self.entry(name).obj

    def names(self) -> list[str]:
        """Registered names (aliases excluded), sorted."""
        return sorted(self._entries)

    def by_plugin(self, plugin: str) -> list[str]:
        """Names registered by one plugin, sorted."""
        return sorted(n for n, e in self._entries.items() if e.plugin == plugin)

    def remove_plugin(self, plugin: str) -> None:
        """Drop everything ``plugin`` registered (used when its hook raised half-way)."""
        for name in self.by_plugin(plugin):
            del self._entries[name]
        self._aliases = {a: n for a, n in self._aliases.items() if n in self._entries}

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self._owner(name) is not None

    def __iter__(self) -> Iterator[Entry[T]]:
        return iter(sorted(self._entries.values(), key=lambda e: e.name))

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {self.names()})"


def _first_doc_line(obj: object) -> str:
    doc = getattr(obj, "__doc__", None) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""
