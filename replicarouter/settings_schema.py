"""The settings schema: every ``REPLICAROUTER`` key and every ``POOL`` key, declared once. Pure: no Django.

Each ``Option`` holds a setting's name, default, kind, unit, the values it accepts (minimum, choices,
None) and the id of the system check that reports a wrong value, with a one-line doc. Everything else
derives from these two tables: the typed accessors of ``conf.settings`` (read at access time),
``conf.settings_problems`` and ``pool.options.pool_problems`` (validation, one check id per key), the
``PoolOptions`` and health ``Rules`` defaults, ``checks.CHECK_IDS`` and the docs test that compares
docs/configuration.md with the code.

Check ids: a wrong value of a key is reported under that key's own id (``REPLICAROUTER``: E030–E046,
``POOL``: E051–E059), so each can be looked up and silenced alone; the structure of the dicts has its
own ids (E017 / E018: ``REPLICAROUTER`` not a dict / unknown keys; E002 / E050 the same for ``POOL``;
E010 and E019–E022 for ``CLUSTERS``, reported by ``routing.topology.build``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import cached_property
from typing import Any


@dataclass(frozen=True)
class Problem:
    """One misconfiguration: a check id, what is wrong, and how to fix it."""

    id: str
    msg: str
    hint: str


class Kind(StrEnum):
    """What values a setting accepts (before its minimum, choices and None)."""

    NUMBER = "number"  # an int or a float, never a bool
    INTEGER = "integer"
    BOOLEAN = "boolean"
    STRING = "string"
    CHOICE = "choice"
    #: validated by ``routing.topology.build``, which has the DATABASES to check it against
    CLUSTERS = "clusters"


class Unit(StrEnum):
    """The unit of a numeric setting, as the docs name it."""

    NONE = ""
    SECONDS = "seconds"
    BYTES = "bytes"
    CONNECTIONS = "connections"
    PROBES = "probes"


class Sticky(StrEnum):
    """``REPLICAROUTER["STICKY"]``: how a session's reads follow its own writes."""

    LSN = "lsn"
    TIME = "time"
    OFF = "off"


class StickyScope(StrEnum):
    """``REPLICAROUTER["STICKY_SCOPE"]``: whose writes a read must see."""

    SESSION = "session"
    USER = "user"


class Balance(StrEnum):
    """``REPLICAROUTER["BALANCE"]``: how reads are spread over the usable replicas."""

    ROUND_ROBIN = "round_robin"
    RANDOM = "random"
    LEAST_LAG = "least_lag"


class ReleaseMode(StrEnum):
    """``POOL["RELEASE"]``: when a Django wrapper gives its pooled connection back."""

    TRANSACTION = "transaction"
    REQUEST = "request"


class ResetMode(StrEnum):
    """``POOL["RESET"]``: how a returned connection is cleaned."""

    AUTO = "auto"
    ALWAYS = "always"
    ROLLBACK = "rollback"


def _unchanged(value: Any) -> Any:
    return value


_CONVERT: dict[Kind, Any] = {
    Kind.NUMBER: float,
    Kind.INTEGER: int,
    Kind.BOOLEAN: bool,
    Kind.STRING: str,
    Kind.CHOICE: str,
}


@dataclass(frozen=True)
class Option:
    """One setting: name, default, accepted values, unit, check id and a one-line doc."""

    name: str
    default: Any
    kind: Kind
    check_id: str
    doc: str
    unit: Unit = Unit.NONE
    #: numbers below it are refused (and it too, when ``exclusive``: minimum 0 exclusive = positive)
    minimum: int | None = None
    exclusive: bool = False
    #: None is accepted (it converts to ``none_value``)
    none: bool = False
    none_value: Any = None
    choices: tuple[str, ...] = ()
    #: what the value converts to when it is not None (default: by kind; MAX_LAG_BYTES is a number kept
    #: as an int)
    cast: Any = None
    #: a valid value to show in a hint (default: the default)
    example: str | None = None

    @property
    def field(self) -> str:
        """Return the attribute name of this option in ``PoolOptions`` (lower case)."""
        return self.name.lower()

    def valid(self, value: Any) -> bool:
        """Return whether ``value`` is acceptable for this option."""
        if value is None:
            return self.none
        if self.kind is Kind.CLUSTERS:
            return True
        if self.kind is Kind.BOOLEAN:
            return isinstance(value, bool)
        if self.kind is Kind.STRING:
            return isinstance(value, str)
        if self.kind is Kind.CHOICE:
            return value in self.choices
        accepted = int if self.kind is Kind.INTEGER else (int, float)
        if isinstance(value, bool) or not isinstance(value, accepted):
            return False
        if self.minimum is None:
            return True
        return value > self.minimum if self.exclusive else value >= self.minimum

    def convert(self, value: Any) -> Any:
        """Return ``value`` as the accessors and ``PoolOptions`` hold it."""
        if value is None and self.none:
            return self.none_value
        return self._converter(value)

    @cached_property
    def _converter(self) -> Any:
        # resolved once: the accessors convert on every read
        return self.cast or _CONVERT.get(self.kind, _unchanged)

    def requirement(self) -> str:
        """Return what a valid value is, in words ("a positive integer", "True or False")."""
        if self.kind is Kind.BOOLEAN:
            text = "True or False"
        elif self.kind is Kind.STRING:
            text = "a string"
        elif self.kind is Kind.CHOICE:
            text = "one of " + ", ".join(map(repr, self.choices))
        elif self.kind is Kind.CLUSTERS:
            text = "a dict of cluster name -> {'PRIMARY': alias, 'REPLICAS': [...]}"
        else:
            what = "integer" if self.kind is Kind.INTEGER else "number"
            if self.minimum == 0 and self.exclusive:
                text = f"a positive {what}"
            else:
                text = f"{'an' if what == 'integer' else 'a'} {what}"
                if self.minimum is not None:
                    text += f" {'>' if self.exclusive else '>='} {self.minimum}"
        return text + " or None" if self.none else text

    def hint(self) -> str:
        """Return the hint of this option's check: a valid example, or the default."""
        if self.example is not None:
            return f"For example {self.example!r}."
        return f"The default is {self.default!r}."


def _table(*options: Option) -> Mapping[str, Option]:
    return {option.name: option for option in options}


def _positive(
    name: str, default: Any, check_id: str, doc: str, unit: Unit, kind: Kind = Kind.NUMBER, **more: Any
) -> Option:
    """Return an option that accepts numbers above 0 (integers only with ``kind=Kind.INTEGER``)."""
    return Option(name, default, kind, check_id, doc, unit, minimum=0, exclusive=True, **more)


def _choice(name: str, default: StrEnum, check_id: str, doc: str) -> Option:
    """Return an option that accepts the values of ``default``'s enum (held as plain strings)."""
    choices = tuple(member.value for member in type(default))
    return Option(name, default.value, Kind.CHOICE, check_id, doc, choices=choices)


#: ``settings.REPLICAROUTER``, in the order of docs/configuration.md
REPLICAROUTER_OPTIONS: Mapping[str, Option] = _table(
    Option(
        "CLUSTERS", None, Kind.CLUSTERS, "replicarouter.E010",
        "name -> {'PRIMARY', 'REPLICAS', 'APPS'}; None: one cluster, 'default' and every other pooled alias",
        none=True,
    ),
    Option(
        "REDIS_URL", None, Kind.STRING, "replicarouter.E030",
        "Redis shared by every process: health snapshot, monitor lease, read-your-writes positions",
        none=True, example="redis://localhost:6379/0",
    ),
    Option("KEY_PREFIX", "replicarouter", Kind.STRING, "replicarouter.E031", "prefix of the Redis keys"),
    _positive("CHECK_INTERVAL", 0.5, "replicarouter.E032", "time between health rounds", Unit.SECONDS),
    _positive("CHECK_TIMEOUT", 0.5, "replicarouter.E033", "hard deadline of a health round", Unit.SECONDS),
    _positive(
        "MAX_LAG_SECONDS", 10.0, "replicarouter.E034", "replicas further behind are not read", Unit.SECONDS
    ),
    _positive(
        "MAX_LAG_BYTES", 16 * 1024 * 1024, "replicarouter.E035", "replicas further behind are not read",
        Unit.BYTES, cast=int,
    ),
    _positive(
        "FALL", 2, "replicarouter.E036", "failed probes in a row before a node is down", Unit.PROBES,
        kind=Kind.INTEGER,
    ),
    _positive(
        "RISE", 2, "replicarouter.E037",
        "healthy probes in a row, CHECK_INTERVAL apart, before a node is up again", Unit.PROBES,
        kind=Kind.INTEGER,
    ),
    _choice("STICKY", Sticky.LSN, "replicarouter.E038", "how a session's reads follow its own writes"),
    _positive(
        "STICKY_SECONDS", 120.0, "replicarouter.E039", "how long a session's write position is kept",
        Unit.SECONDS,
    ),
    Option(
        "MONOTONIC_READS", True, Kind.BOOLEAN, "replicarouter.E046",
        "a session never reads older data than it already read",
    ),
    _choice("STICKY_SCOPE", StickyScope.SESSION, "replicarouter.E040", "whose writes a read must see"),
    _choice("BALANCE", Balance.ROUND_ROBIN, "replicarouter.E041", "how reads are spread over the replicas"),
    _positive(
        "READ_TIMEOUT", 2.0, "replicarouter.E042",
        "cut a replica read waiting this long on a node that stopped answering probes; None: never",
        Unit.SECONDS, none=True,
    ),
    Option(
        "RETRY_READS", True, Kind.BOOLEAN, "replicarouter.E043",
        "run a read whose replica connection failed again on another replica, then on the primary",
    ),
    _positive(
        "CONNECT_TIMEOUT", 2, "replicarouter.E044",
        "libpq connect_timeout of every pooled alias whose OPTIONS sets none", Unit.SECONDS,
        kind=Kind.INTEGER,
    ),
    _positive(
        "PROMOTE_AFTER", None, "replicarouter.E045",
        "promote the most caught-up replica after this long without a primary; None: never",
        Unit.SECONDS, none=True,
    ),
)  # fmt: skip

#: ``DATABASES[alias]["POOL"]``, in the order of docs/configuration.md
POOL_OPTIONS: Mapping[str, Option] = _table(
    Option(
        "SIZE", 10, Kind.INTEGER, "replicarouter.E051", "connections kept open per process",
        Unit.CONNECTIONS, minimum=1,
    ),
    Option(
        "MAX_OVERFLOW", 10, Kind.INTEGER, "replicarouter.E052",
        "extra connections opened under load; -1: unlimited", Unit.CONNECTIONS, minimum=-1,
    ),
    Option(
        "TIMEOUT", 5.0, Kind.NUMBER, "replicarouter.E053", "how long a checkout waits for a connection",
        Unit.SECONDS, minimum=0,
    ),
    Option(
        "RECYCLE", 1800, Kind.INTEGER, "replicarouter.E054",
        "replace connections older than this at checkout; None or -1: never", Unit.SECONDS, minimum=-1,
        none=True, none_value=-1,
    ),
    Option("PRE_PING", False, Kind.BOOLEAN, "replicarouter.E055", "run SELECT 1 on each checkout"),
    _choice("RESET", ResetMode.AUTO, "replicarouter.E056", "how a returned connection is cleaned"),
    _choice(
        "RELEASE", ReleaseMode.TRANSACTION, "replicarouter.E059",
        "when a wrapper gives its connection back: after each unit of work, or when Django closes it",
    ),
    Option("LIFO", True, Kind.BOOLEAN, "replicarouter.E057", "hand out the most recently returned first"),
    Option(
        "LEAK_WARNING", None, Kind.NUMBER, "replicarouter.E058",
        "warn when a connection stays checked out longer than this; None: never", Unit.SECONDS,
        minimum=0, none=True,
    ),
)  # fmt: skip


def defaults(options: Mapping[str, Option]) -> dict[str, Any]:
    """Return ``{name: default}`` of a table."""
    return {name: option.default for name, option in options.items()}


def invalid_values(options: Mapping[str, Option], values: Mapping[str, Any]) -> list[tuple[Option, Any]]:
    """Return each option that ``values`` sets to a value it does not accept, with that value, in order."""
    return [
        (option, values[name])
        for name, option in options.items()
        if name in values and not option.valid(values[name])
    ]
