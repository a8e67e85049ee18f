"""Pool options: an alias's ``POOL`` settings, their defaults and their validation."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replicarouter.exceptions import ConfigurationError

RESET_MODES = ("auto", "always", "rollback")

POOL_DEFAULTS: dict[str, Any] = {
    "SIZE": 10,
    "MAX_OVERFLOW": 10,
    "TIMEOUT": 5.0,
    "RECYCLE": 1800,
    "PRE_PING": False,
    "RESET": "auto",
    "LIFO": True,
    "LEAK_WARNING": None,
}


@dataclass(frozen=True)
class PoolOptions:
    """An alias's ``POOL`` settings, validated (see docs/configuration.md)."""

    size: int = 10
    max_overflow: int = 10
    timeout: float = 5.0
    recycle: int = 1800
    pre_ping: bool = False
    reset: str = "auto"
    lifo: bool = True
    leak_warning: float | None = None

    @classmethod
    def from_settings(cls, alias: str, settings: Mapping[str, Any] | None) -> PoolOptions:
        """Return the options of ``DATABASES[alias]["POOL"]``; raise ConfigurationError when invalid."""
        problems = pool_settings_problems(settings)
        if problems:
            raise ConfigurationError(f"DATABASES[{alias!r}]['POOL'] is invalid: " + "; ".join(problems))
        values = {**POOL_DEFAULTS, **(settings or {})}
        recycle = values["RECYCLE"]
        return cls(
            size=int(values["SIZE"]),
            max_overflow=int(values["MAX_OVERFLOW"]),
            timeout=float(values["TIMEOUT"]),
            recycle=-1 if recycle is None else int(recycle),
            pre_ping=bool(values["PRE_PING"]),
            reset=str(values["RESET"]),
            lifo=bool(values["LIFO"]),
            leak_warning=None if values["LEAK_WARNING"] is None else float(values["LEAK_WARNING"]),
        )


def pool_settings_problems(settings: Any) -> list[str]:
    """Return what is wrong with a ``POOL`` dict, one message per problem (empty when valid)."""
    if settings is None:
        return []
    if not isinstance(settings, Mapping):
        return [f"must be a dict, not {type(settings).__name__}"]
    problems = [f"unknown key {key!r}" for key in settings if key not in POOL_DEFAULTS]

    def number(key: str, minimum: float, allow_none: bool = False, integer: bool = False) -> None:
        if key not in settings:
            return
        value = settings[key]
        if value is None and allow_none:
            return
        kind = int if integer else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value < minimum:
            what = "an integer" if integer else "a number"
            problems.append(
                f"{key} must be {what} >= {minimum}{' or None' if allow_none else ''}, not {value!r}"
            )

    number("SIZE", 1, integer=True)
    number("MAX_OVERFLOW", -1, integer=True)
    number("TIMEOUT", 0)
    number("RECYCLE", -1, allow_none=True, integer=True)
    number("LEAK_WARNING", 0, allow_none=True)
    for key in ("PRE_PING", "LIFO"):
        if key in settings and not isinstance(settings[key], bool):
            problems.append(f"{key} must be True or False, not {settings[key]!r}")
    if "RESET" in settings and settings["RESET"] not in RESET_MODES:
        problems.append(
            f"RESET must be one of {', '.join(map(repr, RESET_MODES))}, not {settings['RESET']!r}"
        )
    return problems
