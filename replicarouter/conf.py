"""The ``REPLICAROUTER`` setting: one lazy, typed view of it, plus the cluster topology derived from it.

Values are read from ``django.conf.settings`` at access time, so ``override_settings`` works; nothing is
read at import. The topology is rebuilt when DATABASES or REPLICAROUTER change (``setting_changed`` or a
new object assigned to either), and is otherwise a cached object: the router's hot path pays two identity
checks for it. Keys, defaults, conversion and validation come from the schema
(``settings_schema.REPLICAROUTER_OPTIONS``); ``Settings`` only names each key's type.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Generic, TypeVar, cast, overload

from django.conf import settings as django_settings
from django.core.signals import setting_changed

from replicarouter.routing import topology as topology_module
from replicarouter.settings_schema import REPLICAROUTER_OPTIONS, Option, Problem, defaults, invalid_values

from .exceptions import ConfigurationError

#: ``{key: default}`` of ``REPLICAROUTER`` (derived from the schema, settings_schema.REPLICAROUTER_OPTIONS)
DEFAULTS: dict[str, Any] = defaults(REPLICAROUTER_OPTIONS)

T = TypeVar("T")


class _Setting(Generic[T]):
    """A ``REPLICAROUTER`` key, read at access time and converted as its schema entry says."""

    option: Option

    def __set_name__(self, owner: type[Any], name: str) -> None:
        self.option = REPLICAROUTER_OPTIONS[name]
        self.__doc__ = self.option.doc

    @overload
    def __get__(self, instance: None, owner: type[Any]) -> _Setting[T]: ...

    @overload
    def __get__(self, instance: Settings, owner: type[Any]) -> T: ...

    def __get__(self, instance: Settings | None, owner: type[Any]) -> _Setting[T] | T:
        if instance is None:
            return self
        option = self.option
        values = getattr(django_settings, "REPLICAROUTER", None) or {}
        return cast(T, option.convert(values.get(option.name, option.default)))

    def __set__(self, instance: Settings, value: Any) -> None:
        # read-only, like the properties these replaced: settings come from django.conf.settings
        raise AttributeError(f"REPLICAROUTER[{self.option.name!r}] is read from django.conf.settings")


class Settings:
    """Typed, lazy access to ``settings.REPLICAROUTER`` with documented defaults (one per schema entry)."""

    CLUSTERS: _Setting[Mapping[str, Any] | None] = _Setting()
    REDIS_URL: _Setting[str | None] = _Setting()
    KEY_PREFIX: _Setting[str] = _Setting()
    CHECK_INTERVAL: _Setting[float] = _Setting()
    CHECK_TIMEOUT: _Setting[float] = _Setting()
    MAX_LAG_SECONDS: _Setting[float] = _Setting()
    MAX_LAG_BYTES: _Setting[int] = _Setting()
    FALL: _Setting[int] = _Setting()
    RISE: _Setting[int] = _Setting()
    STICKY: _Setting[str] = _Setting()
    STICKY_SECONDS: _Setting[float] = _Setting()
    MONOTONIC_READS: _Setting[bool] = _Setting()
    STICKY_SCOPE: _Setting[str] = _Setting()
    BALANCE: _Setting[str] = _Setting()
    READ_TIMEOUT: _Setting[float | None] = _Setting()
    RETRY_READS: _Setting[bool] = _Setting()
    CONNECT_TIMEOUT: _Setting[int] = _Setting()
    PROMOTE_AFTER: _Setting[float | None] = _Setting()


settings = Settings()


def settings_problems(values: Any) -> list[Problem]:
    """Return the problems of a ``REPLICAROUTER`` dict other than its CLUSTERS (see topology.build)."""
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [
            Problem(
                "replicarouter.E017",
                f"REPLICAROUTER must be a dict, not {type(values).__name__}.",
                "See docs/configuration.md for its keys.",
            )
        ]
    problems = []
    unknown = sorted(set(values) - set(REPLICAROUTER_OPTIONS))
    if unknown:
        problems.append(
            Problem(
                "replicarouter.E018",
                f"REPLICAROUTER has unknown keys {unknown}.",
                f"Valid keys: {', '.join(REPLICAROUTER_OPTIONS)}.",
            )
        )
    for option, value in invalid_values(REPLICAROUTER_OPTIONS, values):
        problems.append(
            Problem(
                option.check_id,
                f"REPLICAROUTER[{option.name!r}] is {value!r}; it must be {option.requirement()}.",
                option.hint(),
            )
        )
    return problems


_cache: tuple[Any, Any, topology_module.Topology, str, bool] | None = None


def _routing() -> tuple[Any, Any, topology_module.Topology, str, bool]:
    global _cache
    databases = django_settings.DATABASES
    values = getattr(django_settings, "REPLICAROUTER", None)
    cached = _cache
    if cached is not None and cached[0] is databases and cached[1] is values:
        return cached
    clusters = values.get("CLUSTERS") if isinstance(values, Mapping) else None
    built, problems = topology_module.build(databases, clusters)
    if problems:
        details = "; ".join(f"{p.id}: {p.msg}" for p in problems)
        raise ConfigurationError(f"invalid replicarouter topology: {details} (run `manage.py check`)")
    _cache = (databases, values, built, settings.BALANCE, settings.MONOTONIC_READS)
    return _cache


def topology() -> topology_module.Topology:
    """Return the current topology; raise ConfigurationError if the settings describe an invalid one."""
    return _routing()[2]


def routing() -> tuple[topology_module.Topology, str]:
    """Return the topology and the BALANCE policy, cached together for the router's hot path."""
    cached = _routing()
    return cached[2], cached[3]


def monotonic_reads() -> bool:
    """Return ``MONOTONIC_READS``, cached with the topology for the router's hot path."""
    return _routing()[4]


def reset(**kwargs: Any) -> None:
    """Forget the cached topology (connected to ``setting_changed``)."""
    global _cache
    if kwargs.get("setting") in (None, "DATABASES", "REPLICAROUTER"):
        _cache = None


setting_changed.connect(reset, dispatch_uid="replicarouter.conf.reset")
