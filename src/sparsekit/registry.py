"""Plug-in registries: one per kind of plug-in (pruning methods, weight updates, refiners, layer
allocators, activation methods, export formats).

An entry is a frozen dataclass deriving from `Plugin`: its ``name``, the ``help`` the command
line shows, and optionally an ``options`` dataclass whose fields are declared with `option`
(flag, help text and check). A `Registry` maps names to entries and does everything generic with
them: it lists the names for ``--help`` and error messages, builds an entry's options from the
values given (refusing an option that belongs to another entry, checking each value, filling
the defaults), and serialises them for ``sparsekit.json``. The command line builds its options
from the registries, so an entry's options appear in ``--help`` and in the recipe without
further edits.

Adding a plug-in: write its module (the entry, its options and its functions) and add one line
where its kind's registry is filled (or call ``REGISTRY.register(entry)``).
"""

from __future__ import annotations

import dataclasses
import math
import re
import typing
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from sparsekit.errors import UsageError

__all__ = ["OptionSpec", "Plugin", "Registry", "all_of", "at_least", "finite_positive", "option", "regex"]

Check = Callable[[str, Any], None]   # (flag, value) -> None, or raises UsageError


def option(default, flag: str, help: str, *, check: Check | None = None) -> Any:
    """A field of an options dataclass: its default, its command-line flag, its help text and a
    check run on an explicitly given value."""
    return field(default=default, metadata={"flag": flag, "help": help, "check": check})


# --- checks ---------------------------------------------------------------------------------------
def at_least(minimum: int) -> Check:
    def check(flag: str, value) -> None:
        if value < minimum:
            raise UsageError(f"{flag} must be at least {minimum}, got {value}")
    return check


def finite_positive(what: str = "positive") -> Check:
    def check(flag: str, value) -> None:
        if not (math.isfinite(value) and value > 0):
            raise UsageError(f"{flag} must be {what}, got {value}")
    return check


def regex(flag: str, value) -> None:
    """A valid regular expression."""
    try:
        re.compile(value)
    except re.error as exc:
        raise UsageError(f"{flag} {value!r} is not a valid regular expression ({exc}): "
                         "fix the pattern, e.g. 'layers\\.0\\.|down_proj'") from None


def all_of(*checks: Check) -> Check:
    def check(flag: str, value) -> None:
        for c in checks:
            c(flag, value)
    return check


# --- entries --------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Plugin:
    """Base of every registry entry."""
    name: str
    help: str
    options: type | None = None      # a frozen dataclass of `option` fields, or None


@dataclass(frozen=True)
class OptionSpec:
    """One option of a registry, as the command line declares it."""
    field: str            # the dataclass field (and keyword) name, e.g. "percdamp"
    flag: str             # "--percdamp"
    type: type            # int, float, str or bool
    help: str
    default: Any
    owners: tuple[str, ...]   # the entries that take it


E = TypeVar("E", bound=Plugin)


def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _base_type(hint) -> type:
    """int / float / str / bool from a field's annotation (``int | None`` -> int)."""
    if hint in (int, float, str, bool):
        return hint
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if len(args) == 1 and args[0] in (int, float, str, bool):
        return args[0]
    raise TypeError(f"option type {hint!r} is not int, float, str or bool (or Optional of one)")


class Registry(Mapping[str, E], Generic[E]):
    """Name -> entry for one kind of plug-in.

    ``flag``: the command-line option that picks an entry (``--method``). ``misplaced``: the
    message for an option given with an entry that does not take it, formatted with ``flag``
    (the option), ``choice`` (this registry's flag) and ``owners`` (the entries that take it).
    """

    def __init__(self, kind: str, flag: str, entries: tuple[E, ...] | list[E] = (), *,
                 misplaced: str = "{flag} applies to {choice} {owners} only: drop it"):
        self.kind, self.flag, self.misplaced = kind, flag, misplaced
        self._entries: dict[str, E] = {}
        for entry in entries:
            self.register(entry)

    # -- mapping
    def __getitem__(self, name: str) -> E:
        return self._entries[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._entries)

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {list(self._entries)})"

    # -- registration
    def register(self, entry: E) -> E:
        """Add ``entry`` (its name must be new, and its options consistent with the options of
        the same name other entries declare). Returns it, so a module can register at import."""
        if not isinstance(entry, Plugin):
            raise TypeError(f"a {self.kind} entry must be a Plugin, got {type(entry).__name__}")
        if entry.name in self._entries:
            raise ValueError(f"{self.kind} {entry.name!r} is already registered")
        if entry.options is not None and not dataclasses.is_dataclass(entry.options):
            raise TypeError(f"{self.kind} {entry.name!r}: options must be a dataclass")
        self._entries[entry.name] = entry
        try:
            self.option_specs()
        except (TypeError, ValueError):
            del self._entries[entry.name]
            raise
        return entry

    def unregister(self, name: str) -> E:
        return self._entries.pop(name)

    # -- lookups
    def get_entry(self, name: str) -> E:
        """The entry, or a one-line UsageError naming the choices."""
        if name not in self._entries:
            raise UsageError(f"unknown {self.flag} {name!r}: use one of {', '.join(self._entries)}")
        return self._entries[name]

    def help_text(self, lead: str = "") -> str:
        """``lead`` then "name (help); name (help)." for the command line."""
        return lead + "; ".join(f"{e.name} ({e.help})" for e in self._entries.values()) + "."

    def option_specs(self) -> dict[str, OptionSpec]:
        """Every option of every entry, by field name, in registration order."""
        specs: dict[str, OptionSpec] = {}
        for entry in self._entries.values():
            if entry.options is None:
                continue
            hints = _hints(entry.options)
            for f in dataclasses.fields(entry.options):
                meta = f.metadata
                if "flag" not in meta:
                    raise TypeError(f"{self.kind} {entry.name!r}: option {f.name} is not declared with option()")
                typ = _base_type(hints[f.name])
                seen = specs.get(f.name)
                if seen is None:
                    specs[f.name] = OptionSpec(f.name, meta["flag"], typ, meta["help"], f.default, (entry.name,))
                elif (seen.flag, seen.type) != (meta["flag"], typ):
                    raise ValueError(f"option {f.name} of {self.kind} {entry.name!r} differs from {seen.owners[0]}'s "
                                     f"({meta['flag']} {typ.__name__} vs {seen.flag} {seen.type.__name__})")
                else:
                    specs[f.name] = dataclasses.replace(seen, owners=seen.owners + (entry.name,))
        return specs

    # -- options
    def make_options(self, name: str, given: Mapping[str, Any]):
        """The options of entry ``name`` from ``given`` (field name -> value; None, or False for
        a switch, means "not given"). An option given for another entry of this registry is a
        UsageError; each given value is checked; the rest take their defaults. Keys that are
        no option of this registry are ignored (the caller routes them)."""
        entry = self.get_entry(name)
        specs = self.option_specs()
        mine = {f.name: f for f in dataclasses.fields(entry.options)} if entry.options is not None else {}
        values = {}
        for key, value in given.items():
            if key not in specs or value is None or value is False:
                continue
            spec = specs[key]
            if key not in mine:
                raise UsageError(self.misplaced.format(flag=spec.flag, choice=self.flag,
                                                       owners=" or ".join(spec.owners)))
            check = mine[key].metadata.get("check")
            if check is not None:
                check(spec.flag, value)
            values[key] = value
        return None if entry.options is None else entry.options(**values)

    @staticmethod
    def options_json(options) -> dict:
        """The options as plain JSON values, in field order (empty for None)."""
        if options is None:
            return {}
        return {f.name: getattr(options, f.name) for f in dataclasses.fields(options)}
