"""The ``REPLICAROUTER`` setting: one lazy, typed view of it, plus the cluster topology derived from it.

Values are read from ``django.conf.settings`` at access time, so ``override_settings`` works; nothing is
read at import. The topology is rebuilt when DATABASES or REPLICAROUTER change (``setting_changed`` or a
new object assigned to either), and is otherwise a cached object: the router's hot path pays two identity
checks for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from django.conf import settings as django_settings
from django.core.signals import setting_changed

from .exceptions import ConfigurationError
from .routing import topology as topology_module

DEFAULTS: dict[str, Any] = {
    "CLUSTERS": None,
    "REDIS_URL": None,
    "KEY_PREFIX": "replicarouter",
    "CHECK_INTERVAL": 0.5,
    "CHECK_TIMEOUT": 0.5,
    "MAX_LAG_SECONDS": 10.0,
    "MAX_LAG_BYTES": 16 * 1024 * 1024,
    "FALL": 2,
    "RISE": 2,
    "STICKY": "lsn",
    "STICKY_SECONDS": 120.0,
    "STICKY_SCOPE": "session",
    "BALANCE": "round_robin",
    "READ_TIMEOUT": 2.0,
    "RETRY_READS": True,
    "CONNECT_TIMEOUT": 2,
    "PROMOTE_AFTER": None,
}
CHOICES: dict[str, tuple[str, ...]] = {
    "STICKY": ("lsn", "time", "off"),
    "STICKY_SCOPE": ("session", "user"),
    "BALANCE": ("round_robin", "random", "least_lag"),
}
POSITIVE_NUMBERS = ("CHECK_INTERVAL", "CHECK_TIMEOUT", "MAX_LAG_SECONDS", "MAX_LAG_BYTES", "STICKY_SECONDS")
POSITIVE_INTEGERS = ("FALL", "RISE", "CONNECT_TIMEOUT")
#: positive numbers that may also be None (feature off)
OPTIONAL_NUMBERS = ("READ_TIMEOUT", "PROMOTE_AFTER")


class Settings:
    """Typed, lazy access to ``settings.REPLICAROUTER`` with documented defaults."""

    def _get(self, key: str) -> Any:
        values = getattr(django_settings, "REPLICAROUTER", None) or {}
        return values.get(key, DEFAULTS[key])

    @property
    def CLUSTERS(self) -> Mapping[str, Any] | None:
        return self._get("CLUSTERS")  # type: ignore[no-any-return]

    @property
    def REDIS_URL(self) -> str | None:
        return self._get("REDIS_URL")  # type: ignore[no-any-return]

    @property
    def KEY_PREFIX(self) -> str:
        return str(self._get("KEY_PREFIX"))

    @property
    def CHECK_INTERVAL(self) -> float:
        return float(self._get("CHECK_INTERVAL"))

    @property
    def CHECK_TIMEOUT(self) -> float:
        return float(self._get("CHECK_TIMEOUT"))

    @property
    def MAX_LAG_SECONDS(self) -> float:
        return float(self._get("MAX_LAG_SECONDS"))

    @property
    def MAX_LAG_BYTES(self) -> int:
        return int(self._get("MAX_LAG_BYTES"))

    @property
    def FALL(self) -> int:
        return int(self._get("FALL"))

    @property
    def RISE(self) -> int:
        return int(self._get("RISE"))

    @property
    def STICKY(self) -> str:
        return str(self._get("STICKY"))

    @property
    def STICKY_SECONDS(self) -> float:
        return float(self._get("STICKY_SECONDS"))

    @property
    def STICKY_SCOPE(self) -> str:
        return str(self._get("STICKY_SCOPE"))

    @property
    def BALANCE(self) -> str:
        return str(self._get("BALANCE"))

    @property
    def READ_TIMEOUT(self) -> float | None:
        value = self._get("READ_TIMEOUT")
        return None if value is None else float(value)

    @property
    def RETRY_READS(self) -> bool:
        return bool(self._get("RETRY_READS"))

    @property
    def CONNECT_TIMEOUT(self) -> int:
        return int(self._get("CONNECT_TIMEOUT"))

    @property
    def PROMOTE_AFTER(self) -> float | None:
        value = self._get("PROMOTE_AFTER")
        return None if value is None else float(value)


settings = Settings()


def settings_problems(values: Any) -> list[topology_module.Problem]:
    """Return the problems of a ``REPLICAROUTER`` dict other than its CLUSTERS (see topology.build)."""
    if values is None:
        return []
    if not isinstance(values, Mapping):
        return [
            topology_module.Problem(
                "replicarouter.E017",
                f"REPLICAROUTER must be a dict, not {type(values).__name__}.",
                "See docs/configuration.md for its keys.",
            )
        ]
    problems = []
    unknown = sorted(set(values) - set(DEFAULTS))
    if unknown:
        problems.append(
            topology_module.Problem(
                "replicarouter.E017",
                f"REPLICAROUTER has unknown keys {unknown}.",
                f"Valid keys: {', '.join(DEFAULTS)}.",
            )
        )
    for key, choices in CHOICES.items():
        if key in values and values[key] not in choices:
            problems.append(
                topology_module.Problem(
                    "replicarouter.E017",
                    f"REPLICAROUTER[{key!r}] is {values[key]!r}.",
                    f"Use one of {', '.join(map(repr, choices))}.",
                )
            )
    for key in POSITIVE_NUMBERS + POSITIVE_INTEGERS:
        if key not in values:
            continue
        value = values[key]
        kind = int if key in POSITIVE_INTEGERS else (int, float)
        if isinstance(value, bool) or not isinstance(value, kind) or value <= 0:
            problems.append(
                topology_module.Problem(
                    "replicarouter.E017",
                    f"REPLICAROUTER[{key!r}] is {value!r}; it must be a positive "
                    f"{'integer' if key in POSITIVE_INTEGERS else 'number'}.",
                    f"The default is {DEFAULTS[key]!r}.",
                )
            )
    for key in OPTIONAL_NUMBERS:
        value = values.get(key)
        number = isinstance(value, (int, float)) and not isinstance(value, bool)
        if value is not None and (not number or value <= 0):
            problems.append(
                topology_module.Problem(
                    "replicarouter.E017",
                    f"REPLICAROUTER[{key!r}] is {value!r}; it must be a positive number or None.",
                    f"The default is {DEFAULTS[key]!r}.",
                )
            )
    if "RETRY_READS" in values and not isinstance(values["RETRY_READS"], bool):
        problems.append(
            topology_module.Problem(
                "replicarouter.E017",
                f"REPLICAROUTER['RETRY_READS'] is {values['RETRY_READS']!r}; it must be True or False.",
                "The default is True.",
            )
        )
    for key in ("REDIS_URL", "KEY_PREFIX"):
        if key in values and values[key] is not None and not isinstance(values[key], str):
            problems.append(
                topology_module.Problem(
                    "replicarouter.E017",
                    f"REPLICAROUTER[{key!r}] must be a string.",
                    "For example 'redis://localhost:6379/0'.",
                )
            )
    return problems


_cache: tuple[Any, Any, topology_module.Topology, str] | None = None


def _routing() -> tuple[Any, Any, topology_module.Topology, str]:
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
    _cache = (databases, values, built, settings.BALANCE)
    return _cache


def topology() -> topology_module.Topology:
    """Return the current topology; raise ConfigurationError if the settings describe an invalid one."""
    return _routing()[2]


def routing() -> tuple[topology_module.Topology, str]:
    """Return the topology and the BALANCE policy, cached together for the router's hot path."""
    cached = _routing()
    return cached[2], cached[3]


def reset(**kwargs: Any) -> None:
    """Forget the cached topology (connected to ``setting_changed``)."""
    global _cache
    if kwargs.get("setting") in (None, "DATABASES", "REPLICAROUTER"):
        _cache = None


setting_changed.connect(reset, dispatch_uid="replicarouter.conf.reset")
