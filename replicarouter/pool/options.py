"""Pool options: an alias's ``POOL`` settings, validated and converted as the schema says.

Keys, defaults, accepted values and check ids are ``settings_schema.POOL_OPTIONS``; ``PoolOptions``
names each key's type (its field is the key in lower case).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from replicarouter.exceptions import ConfigurationError
from replicarouter.settings_schema import POOL_OPTIONS, Problem, defaults, invalid_values

RESET_MODES = POOL_OPTIONS["RESET"].choices

POOL_DEFAULTS: dict[str, Any] = defaults(POOL_OPTIONS)


@dataclass(frozen=True)
class PoolOptions:
    """An alias's ``POOL`` settings, validated (see docs/configuration.md)."""

    size: int = POOL_OPTIONS["SIZE"].default
    max_overflow: int = POOL_OPTIONS["MAX_OVERFLOW"].default
    timeout: float = POOL_OPTIONS["TIMEOUT"].default
    recycle: int = POOL_OPTIONS["RECYCLE"].default
    pre_ping: bool = POOL_OPTIONS["PRE_PING"].default
    reset: str = POOL_OPTIONS["RESET"].default
    release: str = POOL_OPTIONS["RELEASE"].default
    lifo: bool = POOL_OPTIONS["LIFO"].default
    leak_warning: float | None = POOL_OPTIONS["LEAK_WARNING"].default

    @classmethod
    def from_settings(cls, alias: str, settings: Mapping[str, Any] | None) -> PoolOptions:
        """Return the options of ``DATABASES[alias]["POOL"]``; raise ConfigurationError when invalid."""
        problems = pool_settings_problems(settings)
        if problems:
            raise ConfigurationError(f"DATABASES[{alias!r}]['POOL'] is invalid: " + "; ".join(problems))
        values = settings or {}
        return cls(
            **{
                option.field: option.convert(values.get(name, option.default))
                for name, option in POOL_OPTIONS.items()
            }
        )


def pool_problems(settings: Any) -> list[Problem]:
    """Return what is wrong with a ``POOL`` dict, one problem (check id, message, hint) per mistake."""
    if settings is None:
        return []
    if not isinstance(settings, Mapping):
        return [Problem("replicarouter.E002", f"must be a dict, not {type(settings).__name__}", _keys_hint())]
    problems = [
        Problem("replicarouter.E050", f"unknown key {key!r}", _keys_hint())
        for key in settings
        if key not in POOL_OPTIONS
    ]
    for option, value in invalid_values(POOL_OPTIONS, settings):
        problems.append(
            Problem(
                option.check_id, f"{option.name} must be {option.requirement()}, not {value!r}", option.hint()
            )
        )
    return problems


def _keys_hint() -> str:
    return "Valid keys and defaults: " + ", ".join(f"{k}={v!r}" for k, v in POOL_DEFAULTS.items()) + "."


def pool_settings_problems(settings: Any) -> list[str]:
    """Return what is wrong with a ``POOL`` dict, one message per problem (empty when valid)."""
    return [problem.msg for problem in pool_problems(settings)]
