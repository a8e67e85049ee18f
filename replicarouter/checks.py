"""System checks: every replicarouter misconfiguration gets a stable id and a hint.

One id per condition (so each can be looked up and silenced alone). Pools: E001 CONN_MAX_AGE with a
pooled alias; E002 POOL not a dict; E050 unknown POOL key; E051–E059 an invalid value of one POOL key
(one id per key, from ``settings_schema.POOL_OPTIONS``); E003 pool options inside OPTIONS; E004
psycopg2 missing; E005 psycopg 3 installed (Django would drive it instead of psycopg2); W001 POOL on an
alias that does not use the pooled backend.
Topology and settings (found by ``topology.build`` and ``conf.settings_problems``): E010 CLUSTERS not a
dict; E019 a cluster not a dict with a PRIMARY alias; E020 unknown keys in a cluster; E021 REPLICAS
neither a list nor a dict; E022 APPS not a list of app labels; E011 unknown alias; E012 alias in two
roles; E013 cluster alias not on the pooled backend; E014 bad weight; E015 primary listed as its own
replica; E016 app label in two clusters; E017 REPLICAROUTER not a dict; E018 unknown REPLICAROUTER
keys; E030–E046 an invalid value of one REPLICAROUTER key (one id per key, from
``settings_schema.REPLICAROUTER_OPTIONS``). Wiring: W010 router without the middleware; W011 replicas
configured but the router not installed; W012 replica alias without TEST MIRROR; W013 our middleware
placed after a middleware that may write after the view returned (outside its routing state); W014
PROMOTE_AFTER without REDIS_URL
(promotion needs the Redis lease that makes one process the cluster's leader, so it would never happen).
Shared Redis: W015 the default KEY_PREFIX, and Redis holds health keys of another site under it (one
bounded SCAN; Redis down means no warning).
"""

from __future__ import annotations

from typing import Any

from django.conf import settings
from django.core.checks import CheckMessage, Error, Warning, register

from replicarouter.routing.topology import build as build_topology
from replicarouter.settings_schema import POOL_OPTIONS, REPLICAROUTER_OPTIONS, Kind

from . import redis_client
from .conf import settings_problems
from .pool import POOL_DEFAULTS, pool_problems

ENGINE = "replicarouter.backends.postgresql"

#: every check id this module can emit (a test makes each fire and checks they are unique): the
#: conditions below, and one id per REPLICAROUTER / POOL key for a wrong value of it (the schema's)
CHECK_IDS = tuple(
    sorted(
        (
            "replicarouter.E001",
            "replicarouter.E002",
            "replicarouter.E003",
            "replicarouter.E004",
            "replicarouter.E005",
            "replicarouter.E010",
            "replicarouter.E011",
            "replicarouter.E012",
            "replicarouter.E013",
            "replicarouter.E014",
            "replicarouter.E015",
            "replicarouter.E016",
            "replicarouter.E017",
            "replicarouter.E018",
            "replicarouter.E019",
            "replicarouter.E020",
            "replicarouter.E021",
            "replicarouter.E022",
            "replicarouter.E050",
            "replicarouter.W001",
            "replicarouter.W010",
            "replicarouter.W011",
            "replicarouter.W012",
            "replicarouter.W013",
            "replicarouter.W014",
            "replicarouter.W015",
            # CLUSTERS is validated by topology.build, under E010 and E011–E016, E019–E022 above
            *(
                option.check_id
                for table in (REPLICAROUTER_OPTIONS, POOL_OPTIONS)
                for option in table.values()
                if option.kind is not Kind.CLUSTERS
            ),
        )
    )
)
ROUTER = "replicarouter.router.ReplicaRouter"
#: middleware known to make no database write after the view returned other than a session save (which
#: ReplicaRouterMiddleware follows wherever it is): ours may come after them without W013
QUIET_MIDDLEWARE = frozenset(
    {
        "django.middleware.security.SecurityMiddleware",
        "django.contrib.sessions.middleware.SessionMiddleware",
        "django.contrib.auth.middleware.AuthenticationMiddleware",
        "django.contrib.auth.middleware.LoginRequiredMiddleware",
        "django.contrib.messages.middleware.MessageMiddleware",
        "django.middleware.common.CommonMiddleware",
        "django.middleware.csrf.CsrfViewMiddleware",
        "django.middleware.clickjacking.XFrameOptionsMiddleware",
        "django.middleware.gzip.GZipMiddleware",
        "django.middleware.http.ConditionalGetMiddleware",
        "django.middleware.locale.LocaleMiddleware",
        "whitenoise.middleware.WhiteNoiseMiddleware",
        "corsheaders.middleware.CorsMiddleware",
    }
)
MIDDLEWARE = "replicarouter.middleware.ReplicaRouterMiddleware"

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
        for problem in pool_problems(entry.get("POOL")):
            messages.append(
                Error(
                    f"DATABASES[{alias!r}]['POOL'] is invalid: {problem.msg}.",
                    hint=f"{problem.hint} See docs/configuration.md.",
                    id=problem.id,
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
    if pooled and _django_uses_psycopg3():
        messages.append(
            Error(
                "psycopg (version 3) is installed, so Django's postgresql backend drives psycopg 3; "
                f"{', '.join(map(repr, pooled))} use {ENGINE!r}, whose pool is built on psycopg2.",
                hint="Remove psycopg 3 from this environment (pip uninstall psycopg psycopg-binary "
                "psycopg-c), or run the code that needs it in another one.",
                id="replicarouter.E005",
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


@register("replicarouter")
def check_topology(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Check REPLICAROUTER, the cluster topology and how the router is wired."""
    return topology_messages(
        getattr(settings, "DATABASES", {}),
        getattr(settings, "REPLICAROUTER", None),
        list(getattr(settings, "DATABASE_ROUTERS", [])),
        list(getattr(settings, "MIDDLEWARE", None) or []),
    )


def topology_messages(
    databases: dict[str, Any], values: Any, routers: list[Any], middleware: list[str]
) -> list[CheckMessage]:
    """Return the check messages for the topology and wiring settings."""
    clusters = values.get("CLUSTERS") if isinstance(values, dict) else None
    built, problems = build_topology(databases, clusters)
    problems = settings_problems(values) + problems
    messages: list[CheckMessage] = [Error(p.msg, hint=p.hint, id=p.id) for p in problems]
    router_installed = any(r == ROUTER or type(r).__name__ == "ReplicaRouter" for r in routers)
    has_replicas = any(c.replicas for c in built.clusters)
    if router_installed and MIDDLEWARE not in middleware:
        messages.append(
            Warning(
                f"{ROUTER} is installed but {MIDDLEWARE} is not in MIDDLEWARE.",
                hint="Add it (anywhere in MIDDLEWARE): without it, a write in one request does not keep that "
                "request's later reads on the primary, and routing state can leak between requests "
                "served by the same thread.",
                id="replicarouter.W010",
            )
        )
    if has_replicas and not router_installed and values is not None:
        messages.append(
            Warning(
                "REPLICAROUTER configures replicas but the router is not in DATABASE_ROUTERS.",
                hint=f"Add {ROUTER!r} to DATABASE_ROUTERS, or no read will ever go to a replica.",
                id="replicarouter.W011",
            )
        )
    if MIDDLEWARE in middleware:
        outside = [
            name for name in middleware[: middleware.index(MIDDLEWARE)] if name not in QUIET_MIDDLEWARE
        ]
        if outside:
            messages.append(
                Warning(
                    f"{MIDDLEWARE} comes after {', '.join(outside)}: database writes they make after "
                    "the view returned happen outside the request's routing state, so the session's "
                    "next reads may not see them (session saves are followed in either order).",
                    hint=f"Put {MIDDLEWARE} first in MIDDLEWARE (right after SecurityMiddleware); if "
                    "those middleware never write after the view, silence replicarouter.W013.",
                    id="replicarouter.W013",
                )
            )
    if isinstance(values, dict) and values.get("PROMOTE_AFTER") is not None and not values.get("REDIS_URL"):
        messages.append(
            Warning(
                "REPLICAROUTER['PROMOTE_AFTER'] is set but REDIS_URL is not: no process can hold the "
                "cluster's lease, so no replica will ever be promoted.",
                hint="Set REDIS_URL (one leader per cluster is what makes promotion safe between processes), "
                "or leave PROMOTE_AFTER at None and promote with Patroni/repmgr.",
                id="replicarouter.W014",
            )
        )
    for cluster in built.clusters:
        for alias in cluster.replicas:
            entry = databases.get(alias, {})
            if not (entry.get("TEST") or {}).get("MIRROR"):
                messages.append(
                    Warning(
                        f"Replica alias {alias!r} has no TEST['MIRROR']: Django's test runner would try to "
                        "create a test database on a read-only server.",
                        hint=f"Set DATABASES[{alias!r}]['TEST'] = {{'MIRROR': {cluster.primary!r}}}.",
                        id="replicarouter.W012",
                    )
                )
    return messages


def _django_uses_psycopg3() -> bool:
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    return bool(is_psycopg3)


@register("replicarouter")
def check_shared_redis(app_configs: Any = None, **kwargs: Any) -> list[CheckMessage]:
    """Warn when another site's health keys share this site's Redis under the default KEY_PREFIX."""
    values = getattr(settings, "REPLICAROUTER", None)
    prefix_option = REPLICAROUTER_OPTIONS["KEY_PREFIX"]
    if not isinstance(values, dict) or not values.get("REDIS_URL"):
        return []
    prefix = values.get("KEY_PREFIX", prefix_option.default)
    if prefix != prefix_option.default:
        return []
    try:
        ours = redis_client.fingerprints()
        foreign = redis_client.foreign_health_keys(redis_client.client(), prefix, ours)
    except Exception:  # Redis down or settings invalid (other checks report those): nothing to say here
        return []
    if not foreign:
        return []
    shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
    return [
        Warning(
            f"Redis at REDIS_URL holds health keys of other databases under the default KEY_PREFIX "
            f"{prefix!r}: {shown} (this site's fingerprints: "
            f"{', '.join(f'{c}={f}' for c, f in sorted(ours.items()))}). Another site shares this Redis.",
            hint="Give each site a KEY_PREFIX of its own (e.g. REPLICAROUTER['KEY_PREFIX'] = 'shop-prod'). "
            "Keys are bound to each cluster's databases, but two sites whose DATABASES read the same "
            "(same host names, ports and database names on different networks) would share them.",
            id="replicarouter.W015",
        )
    ]
