"""Pool options, the session-state detector, system checks and TEST MIRROR settings: no server needed."""

from __future__ import annotations

import pytest
from django.core.checks import run_checks
from django.test import override_settings

from replicarouter import checks
from replicarouter.backends.postgresql.base import DatabaseWrapper
from replicarouter.exceptions import ConfigurationError, PoolExhausted
from replicarouter.pool import POOL_DEFAULTS, PoolOptions, pool_settings_problems
from replicarouter.routing.statements import changes_session_state
from replicarouter.settings_schema import POOL_OPTIONS, REPLICAROUTER_OPTIONS, Kind

ENGINE = "replicarouter.backends.postgresql"


def test_defaults_match_the_contract():
    assert PoolOptions.from_settings("default", None) == PoolOptions(
        size=10, max_overflow=10, timeout=5.0, recycle=1800, pre_ping=False
    )
    assert {k: POOL_DEFAULTS[k] for k in ("SIZE", "MAX_OVERFLOW", "TIMEOUT", "RECYCLE", "PRE_PING")} == {
        "SIZE": 10, "MAX_OVERFLOW": 10, "TIMEOUT": 5.0, "RECYCLE": 1800, "PRE_PING": False,
    }  # fmt: skip


def test_options_from_settings():
    options = PoolOptions.from_settings(
        "r1", {"SIZE": 4, "MAX_OVERFLOW": -1, "TIMEOUT": 1, "RECYCLE": None, "RESET": "always"}
    )
    assert (options.size, options.max_overflow, options.timeout, options.recycle) == (4, -1, 1.0, -1)
    assert options.reset == "always"


@pytest.mark.parametrize(
    ("pool", "problem"),
    [
        ({"SIZE": 0}, "SIZE must be an integer >= 1, not 0"),
        ({"SIZE": "10"}, "SIZE must be an integer >= 1, not '10'"),
        ({"SIZE": True}, "SIZE must be an integer >= 1, not True"),
        ({"MAX_OVERFLOW": -2}, "MAX_OVERFLOW must be an integer >= -1, not -2"),
        ({"TIMEOUT": -1}, "TIMEOUT must be a number >= 0, not -1"),
        ({"PRE_PING": "yes"}, "PRE_PING must be True or False, not 'yes'"),
        ({"RESET": "discard"}, "RESET must be one of 'auto', 'always', 'rollback', not 'discard'"),
        ({"SIZ": 3}, "unknown key 'SIZ'"),
        ([("SIZE", 3)], "must be a dict, not list"),
    ],
)
def test_invalid_pool_settings_are_named(pool, problem):
    assert problem in pool_settings_problems(pool)
    with pytest.raises(ConfigurationError, match="DATABASES\\['x'\\]\\['POOL'\\] is invalid"):
        PoolOptions.from_settings("x", pool)


@pytest.mark.parametrize(
    "sql",
    [
        "SET statement_timeout = 0",
        "  set search_path TO app",
        "RESET ALL",
        "CREATE TEMP TABLE t (id int)",
        "create temporary table t (id int)",
        "CREATE LOCAL TEMPORARY TABLE t (id int)",
        "PREPARE q AS SELECT 1",
        "LISTEN channel",
        "SELECT pg_advisory_lock(1)",
        "SELECT set_config('app.user', '1', false)",
        "DECLARE c CURSOR WITH HOLD FOR SELECT 1",
    ],
)
def test_statements_that_leave_session_state(sql):
    assert changes_session_state(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM settings",
        "SET LOCAL statement_timeout = 0",
        "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "SET CONSTRAINTS ALL DEFERRED",
        'INSERT INTO "offset" (id) VALUES (1)',
        "UPDATE t SET v = 1",
        "CREATE TABLE temperature (id int)",
    ],
)
def test_statements_that_do_not(sql):
    assert not changes_session_state(sql)


def test_pool_exhausted_message_and_types():
    from django.db import OperationalError

    error = PoolExhausted("replica1", 10, 10, 5.0)
    assert isinstance(error, OperationalError)
    assert str(error).startswith(
        "pool 'replica1' exhausted: size 10 + overflow 10 all checked out, waited 5.0 s"
    )
    assert "unlimited overflow" in str(PoolExhausted("r", 2, -1, 0.5))


def _ids(databases):
    return [m.id for m in checks.pooled_alias_messages(databases)]


def _alias(**extra):
    return {"ENGINE": ENGINE, "NAME": "app", **extra}


@pytest.mark.parametrize(
    ("databases", "expected"),
    [
        ({"default": _alias(CONN_MAX_AGE=60)}, "replicarouter.E001"),
        ({"default": _alias(CONN_MAX_AGE=None)}, "replicarouter.E001"),
        ({"default": _alias(POOL={"SIZE": 0})}, "replicarouter.E051"),
        ({"default": _alias(POOL=[("SIZE", 3)])}, "replicarouter.E002"),
        ({"default": _alias(POOL={"SIZ": 3})}, "replicarouter.E050"),
        ({"default": _alias(OPTIONS={"pool": True})}, "replicarouter.E003"),
        ({"default": _alias(OPTIONS={"SIZE": 5})}, "replicarouter.E003"),
        (
            {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "a", "POOL": {}}},
            "replicarouter.W001",
        ),
    ],
)
def test_each_check_fires(databases, expected):
    assert _ids(databases) == [expected]


def test_psycopg2_missing_check(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "psycopg2":
            raise ImportError("no psycopg2")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    assert _ids({"default": _alias()}) == ["replicarouter.E004"]


def test_psycopg3_installed_check(monkeypatch):
    monkeypatch.setattr(checks, "_django_uses_psycopg3", lambda: True)
    messages = checks.pooled_alias_messages({"default": _alias()})
    assert [m.id for m in messages] == ["replicarouter.E005"]
    assert "pip uninstall psycopg" in messages[0].hint


def test_valid_configuration_has_no_messages():
    assert (
        _ids({"default": _alias(POOL={"SIZE": 4}), "replica1": _alias(OPTIONS={"sslmode": "require"})}) == []
    )


def test_check_ids_are_unique_and_each_has_a_hint():
    assert len(set(checks.CHECK_IDS)) == len(checks.CHECK_IDS)
    messages = checks.pooled_alias_messages(
        {"default": _alias(CONN_MAX_AGE=1, POOL={"X": 1}, OPTIONS={"pool": 1})}
    )
    assert [m.id for m in messages] == ["replicarouter.E001", "replicarouter.E050", "replicarouter.E003"]
    assert all(m.hint for m in messages)


def test_each_pool_problem_is_its_own_message_with_its_own_id():
    messages = checks.pooled_alias_messages(
        {"r1": _alias(POOL={"SIZE": 0, "RESET": "x", "A": 1, "RECYCLE": 1.5, "LEAK_WARNING": None})}
    )
    keys = (
        "Valid keys and defaults: SIZE=10, MAX_OVERFLOW=10, TIMEOUT=5.0, RECYCLE=1800, PRE_PING=False, "
        "RESET='auto', RELEASE='transaction', LIFO=True, LEAK_WARNING=None. See docs/configuration.md."
    )
    assert [(m.id, m.msg, m.hint) for m in messages] == [
        ("replicarouter.E050", "DATABASES['r1']['POOL'] is invalid: unknown key 'A'.", keys),
        ("replicarouter.E051", "DATABASES['r1']['POOL'] is invalid: SIZE must be an integer >= 1, not 0.",
         "The default is 10. See docs/configuration.md."),
        ("replicarouter.E054",
         "DATABASES['r1']['POOL'] is invalid: RECYCLE must be an integer >= -1 or None, not 1.5.",
         "The default is 1800. See docs/configuration.md."),
        ("replicarouter.E056",
         "DATABASES['r1']['POOL'] is invalid: RESET must be one of 'auto', 'always', 'rollback', not 'x'.",
         "The default is 'auto'. See docs/configuration.md."),
    ]  # fmt: skip
    assert checks.pooled_alias_messages({"r1": _alias(POOL=["SIZE"])})[0].hint == keys


def _invalid(option):
    """Return a value of the wrong type for ``option`` (a number for a string, a string otherwise)."""
    return 1 if option.kind is Kind.STRING else "?"


@pytest.mark.parametrize("option", POOL_OPTIONS.values(), ids=lambda o: o.name)
def test_each_pool_key_reports_a_wrong_value_under_its_own_id(option):
    messages = checks.pooled_alias_messages({"r1": _alias(POOL={option.name: _invalid(option)})})
    assert [m.id for m in messages] == [option.check_id]
    assert f"{option.name} must be {option.requirement()}" in messages[0].msg
    assert checks.pooled_alias_messages({"r1": _alias(POOL={option.name: option.default})}) == []


@pytest.mark.parametrize("option", REPLICAROUTER_OPTIONS.values(), ids=lambda o: o.name)
def test_each_replicarouter_key_reports_a_wrong_value_under_its_own_id(option):
    databases = {"default": _alias(), "replica1": _alias(TEST={"MIRROR": "default"})}
    messages = checks.topology_messages(
        databases, {option.name: _invalid(option)}, [checks.ROUTER], [checks.MIDDLEWARE]
    )
    assert [m.id for m in messages if m.is_serious()] == [option.check_id]
    assert all(m.hint for m in messages)
    valid = checks.topology_messages(
        databases, {option.name: option.default}, [checks.ROUTER], [checks.MIDDLEWARE]
    )
    assert valid == []


def test_every_check_id_fires():
    """Each id of CHECK_IDS fires for some configuration; ids are unique.

    E004, E005: tests above; W015 needs a Redis holding another site's keys:
    tests/integration/test_shared_redis_identity.py.
    """
    assert len(set(checks.CHECK_IDS)) == len(checks.CHECK_IDS)
    dbs = {"default": _alias(), "replica1": _alias(TEST={"MIRROR": "default"})}
    plain = {"ENGINE": "django.db.backends.postgresql", "NAME": "a"}

    def clusters(value):
        return {"CLUSTERS": value}

    def cluster(**spec):
        return clusters({"c": {"PRIMARY": "default", **spec}})

    wired = ([checks.ROUTER], [checks.MIDDLEWARE])
    cases = {
        # id: (DATABASES, REPLICAROUTER, DATABASE_ROUTERS, MIDDLEWARE)
        "replicarouter.E001": ({"default": _alias(CONN_MAX_AGE=60)}, None, *wired),
        "replicarouter.E002": ({"default": _alias(POOL=["SIZE"])}, None, *wired),
        "replicarouter.E003": ({"default": _alias(OPTIONS={"pool": True})}, None, *wired),
        "replicarouter.E010": (dbs, clusters(["default"]), *wired),
        "replicarouter.E011": (dbs, clusters({"c": {"PRIMARY": "nowhere"}}), *wired),
        "replicarouter.E012": (dbs, clusters({"a": {"PRIMARY": "default"}, "b": {"PRIMARY": "default"}}),
                               *wired),
        "replicarouter.E013": ({**dbs, "p": plain}, cluster(REPLICAS=["p"]), *wired),
        "replicarouter.E014": (dbs, cluster(REPLICAS={"replica1": 0}), *wired),
        "replicarouter.E015": (dbs, cluster(REPLICAS=["default"]), *wired),
        "replicarouter.E016": (dbs, clusters({"a": {"PRIMARY": "default", "APPS": ["x"]},
                                              "b": {"PRIMARY": "replica1", "APPS": ["x"]}}), *wired),
        "replicarouter.E017": (dbs, ["CLUSTERS"], *wired),
        "replicarouter.E018": (dbs, {"CLUSTER": None}, *wired),
        "replicarouter.E019": (dbs, clusters({"c": {"REPLICAS": []}}), *wired),
        "replicarouter.E020": (dbs, cluster(REPLICA=[]), *wired),
        "replicarouter.E021": (dbs, cluster(REPLICAS="replica1"), *wired),
        "replicarouter.E022": (dbs, cluster(APPS="billing"), *wired),
        "replicarouter.E050": ({"default": _alias(POOL={"SIZ": 1})}, None, *wired),
        "replicarouter.W001": ({**dbs, "p": {**plain, "POOL": {}}}, None, *wired),
        "replicarouter.W010": (dbs, None, [checks.ROUTER], []),
        "replicarouter.W011": (dbs, {}, [], [checks.MIDDLEWARE]),
        "replicarouter.W012": ({**dbs, "replica1": _alias()}, None, *wired),
        "replicarouter.W013": (dbs, None, [checks.ROUTER], ["my.Middleware", checks.MIDDLEWARE]),
        "replicarouter.W014": (dbs, {"PROMOTE_AFTER": 5}, *wired),
    }  # fmt: skip
    for table in (REPLICAROUTER_OPTIONS, POOL_OPTIONS):
        for option in table.values():
            if option.kind is not Kind.CLUSTERS:
                values = {option.name: _invalid(option)}
                pooled = table is POOL_OPTIONS
                cases[option.check_id] = (
                    {"default": _alias(POOL=values)} if pooled else dbs,
                    None if pooled else values,
                    *wired,
                )
    elsewhere = {"replicarouter.E004", "replicarouter.E005", "replicarouter.W015"}
    assert sorted({*cases, *elsewhere}) == sorted(checks.CHECK_IDS)
    for check_id, (databases, values, routers, middleware) in cases.items():
        messages = checks.pooled_alias_messages(databases) + checks.topology_messages(
            databases, values, routers, middleware
        )
        # only errors for an error id, only warnings for a warning id (a bad PROMOTE_AFTER also warns W014)
        same_level = [m for m in messages if m.is_serious() == check_id.startswith("replicarouter.E")]
        assert [m.id for m in same_level] == [check_id]
        assert same_level[0].hint


@pytest.mark.filterwarnings("ignore:Overriding setting DATABASES")
def test_checks_are_registered_with_django():
    assert list(run_checks(tags=["replicarouter"])) == []  # tests/settings.py is valid
    with override_settings(DATABASES={"default": _alias(CONN_MAX_AGE=None)}, REPLICAROUTER=None):
        assert [m.id for m in run_checks(tags=["replicarouter"])] == ["replicarouter.E001"]


def _wrapper(alias, **settings):
    base = {
        "ENGINE": ENGINE, "NAME": "app", "HOST": "h", "PORT": "1", "USER": "u", "PASSWORD": "p",
        "OPTIONS": {}, "TIME_ZONE": None, "CONN_MAX_AGE": 0, "CONN_HEALTH_CHECKS": False,
        "AUTOCOMMIT": True, "ATOMIC_REQUESTS": False, "TEST": {},
    }  # fmt: skip
    base.update(settings)
    return DatabaseWrapper(base, alias=alias)


def test_test_mirror_copies_the_server_not_only_the_name():
    primary = {"NAME": "test_app", "HOST": "primary.db", "PORT": "5433", "USER": "admin", "PASSWORD": "pw"}
    mirror = _wrapper("replica1", TEST={"MIRROR": "default"})
    mirror.creation.set_as_test_mirror(primary)
    assert {k: mirror.settings_dict[k] for k in primary} == primary


def test_test_mirror_of_a_real_replica_keeps_its_server():
    primary = {"NAME": "test_app", "HOST": "primary.db", "PORT": "5433", "USER": "admin", "PASSWORD": "pw"}
    mirror = _wrapper("replica1", TEST={"MIRROR": "default", "MIRROR_CONNECTION": False})
    mirror.creation.set_as_test_mirror(primary)
    assert mirror.settings_dict["NAME"] == "test_app"
    assert (mirror.settings_dict["HOST"], mirror.settings_dict["PORT"]) == ("h", "1")
