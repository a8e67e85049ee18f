"""System checks: every replicarouter misconfiguration gets a stable id and a hint.

Ids: E001 CONN_MAX_AGE with a pooled alias; E002 invalid POOL; E003 pool options inside OPTIONS;
E004 psycopg2 missing; W001 POOL on an alias that does not use the pooled backend.
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from .pools import POOL_DEFAULTS, pool_settings_problems

ENGINE = "replicarouter.backends.postgresql"

#: every check id this module can emit (a test makes each fire and checks they are unique)
CHECK_IDS = (
    "replicarouter.E001",
    "replicarouter.E002",
    "replicarouter.E003",
    "replicarouter.E004",
    "replicarouter.W001",
)

_POOL_KEYS_IN_OPTIONS = {"pool", "POOL", *POOL_DEFAULTS, *(k.lower() for k in POOL_DEFAULTS)}


def uses_pooled_backend(alias_settings: dict[str, Any]) -> bool:
    """Return whether a DATABASES entry uses replicarouter's pooled backend."""
    return alias_settings.get("ENGINE") == ENGINE


@register("replicarouter")
def check_pooled_aliases(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check every DATABASES alias for pool misconfiguration."""
    return pooled_alias_messages(getattr(settings, "DATABASES", {}))


def pooled_alias_messages(databases: dict[str, dict[str, Any]]) -> list[CheckMessage]:
    """Return the check messages for a DATABASES setting."""
    messages: list[CheckMessage] = []
    pooled = [alias for alias, entry in databases.items() if uses_pooled_backend(entry)]
    for alias, entry in databases.items():
        if not uses_pooled_backend(entry):
            if "POOL" in entry:
                messages.append(
                    Warning(
                        f"DATABASES[{alias!r}] has a POOL setting but its ENGINE is {entry.get('ENGINE')!r}, "
                        "so it is ignored.",
                        hint=f"Use ENGINE = {ENGINE!r} for a pooled alias, or remove POOL.",
                        id="replicarouter.W001",
                    )
                )
            continue
        conn_max_age = entry.get("CONN_MAX_AGE", 0)
        if conn_max_age != 0:
            messages.append(
                Error(
                    f"DATABASES[{alias!r}]['CONN_MAX_AGE'] is {conn_max_age!r}: the pooled backend needs 0.",
                    hint="Set CONN_MAX_AGE to 0 (the default). The pool already keeps server connections "
                    "open across requests; a persistent Django connection would pin one per thread. "
                    "Bound connection age with POOL['RECYCLE'] instead.",
                    id="replicarouter.E001",
                )
            )
        problems = pool_settings_problems(entry.get("POOL"))
        if problems:
            messages.append(
                Error(
                    f"DATABASES[{alias!r}]['POOL'] is invalid: " + "; ".join(problems) + ".",
                    hint="Valid keys and defaults: "
                    + ", ".join(f"{key}={value!r}" for key, value in POOL_DEFAULTS.items())
                    + " (see docs/configuration.md).",
                    id="replicarouter.E002",
                )
            )
        misplaced = sorted(set(entry.get("OPTIONS", {})) & _POOL_KEYS_IN_OPTIONS)
        if misplaced:
            messages.append(
                Error(
                    f"DATABASES[{alias!r}]['OPTIONS'] contains pool settings {misplaced}: Django passes "
                    "OPTIONS to libpq, which rejects them.",
                    hint=f"Move them to the top-level key DATABASES[{alias!r}]['POOL'] (upper case names: "
                    f"{', '.join(POOL_DEFAULTS)}).",
                    id="replicarouter.E003",
                )
            )
    if pooled:
        try:
            import psycopg2  # noqa: F401
        except ImportError:
            messages.append(
                Error(
                    f"psycopg2 is not installed, but {', '.join(map(repr, pooled))} use {ENGINE!r}.",
                    hint='pip install "django-replicarouter[binary]" (psycopg2-binary) or '
                    '"django-replicarouter[psycopg2]" (builds psycopg2 against your libpq).',
                    id="replicarouter.E004",
                )
            )
    return messages
