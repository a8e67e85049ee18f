"""Routing policy without servers: statement classes, topology, selection, context, router checks."""

from __future__ import annotations

import asyncio
import contextvars
import random
from collections import Counter

import pytest

from replicarouter import checks
from replicarouter.routing import context, selection
from replicarouter.routing.statements import is_write
from replicarouter.routing.topology import build, smooth_rotation

ENGINE = "replicarouter.backends.postgresql"
DBS = {
    "default": {"ENGINE": ENGINE, "TEST": {}},
    "replica1": {"ENGINE": ENGINE, "TEST": {"MIRROR": "default"}},
    "replica2": {"ENGINE": ENGINE, "TEST": {"MIRROR": "default"}},
}


@pytest.mark.parametrize(
    "sql",
    [
        "INSERT INTO t VALUES (1)",
        "  update t set n = 1",
        "DELETE FROM t",
        "WITH x AS (DELETE FROM t RETURNING *) SELECT * FROM x",
        "SELECT * INTO backup FROM t",
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR NO KEY UPDATE",
        "SELECT nextval('s')",
        "CREATE TABLE t (id int)",
        "TRUNCATE t",
        "COPY t FROM STDIN",
        "CALL proc()",
        "DO $$ BEGIN END $$",
        "LOCK TABLE t",
        "VACUUM t",
        b"INSERT INTO t VALUES (1)",
        object(),  # unreadable (psycopg2.sql.Composed): unknown counts as a write
    ],
)
def test_writes(sql):
    assert is_write(sql)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 1",
        '(SELECT "update" FROM "delete" WHERE "into" = 1)',
        "SELECT 'insert into t' AS text",
        "WITH x AS (SELECT 1) SELECT * FROM x",
        "EXPLAIN SELECT 1",
        "SHOW statement_timeout",
        "SAVEPOINT s1",
        "RELEASE SAVEPOINT s1",
        "ROLLBACK TO SAVEPOINT s1",
        "BEGIN",
        "COMMIT",
        "SET TIME ZONE 'UTC'",
        "COPY (SELECT 1) TO STDOUT",
        "VALUES (1)",
        "",
    ],
)
def test_not_writes(sql):
    assert not is_write(sql)


def test_default_topology_takes_every_pooled_alias_as_replica():
    topology, problems = build(DBS, None)
    assert problems == []
    assert topology.default.primary == "default"
    assert topology.default.replicas == ("replica1", "replica2")
    assert topology.role("replica2") == "replica" and topology.role("nope") is None


def test_weights_and_apps():
    clusters = {
        "main": {"PRIMARY": "default", "REPLICAS": {"replica1": 2, "replica2": 1}},
        "other": {"PRIMARY": "o", "APPS": ["billing"]},
    }
    topology, problems = build({**DBS, "o": {"ENGINE": ENGINE}}, clusters)
    assert problems == []
    assert topology.cluster_for_app("billing").name == "other"
    assert topology.cluster_for_app("auth").name == "main"
    assert topology.default.rotation == ("replica1", "replica2", "replica1")


def test_smooth_rotation_interleaves():
    assert smooth_rotation(("a", "b", "c"), (5, 1, 1)) == ("a", "a", "b", "a", "c", "a", "a")
    assert Counter(smooth_rotation(("a", "b"), (3, 2))) == {"a": 3, "b": 2}


@pytest.mark.parametrize(
    ("databases", "clusters", "expected"),
    [
        (DBS, ["default"], "replicarouter.E010"),
        (DBS, {"c": {"REPLICAS": ["replica1"]}}, "replicarouter.E019"),
        (DBS, {"c": {"PRIMARY": "default", "REPLICA": []}}, "replicarouter.E020"),
        (DBS, {"c": {"PRIMARY": "default", "REPLICAS": "replica1"}}, "replicarouter.E021"),
        (DBS, {"c": {"PRIMARY": "default", "APPS": "billing"}}, "replicarouter.E022"),
        (DBS, {"c": {"PRIMARY": "default", "REPLICAS": ["replica9"]}}, "replicarouter.E011"),
        (
            DBS,
            {"a": {"PRIMARY": "default", "REPLICAS": ["replica1"]}, "b": {"PRIMARY": "replica1"}},
            "replicarouter.E012",
        ),
        ({**DBS, "plain": {"ENGINE": "django.db.backends.postgresql"}},
         {"c": {"PRIMARY": "default", "REPLICAS": ["plain"]}}, "replicarouter.E013"),
        (DBS, {"c": {"PRIMARY": "default", "REPLICAS": {"replica1": 0}}}, "replicarouter.E014"),
        (DBS, {"c": {"PRIMARY": "default", "REPLICAS": {"replica1": 1.5}}}, "replicarouter.E014"),
        (DBS, {"c": {"PRIMARY": "default", "REPLICAS": ["default", "replica1"]}}, "replicarouter.E015"),
        (
            DBS,
            {"a": {"PRIMARY": "default", "APPS": ["x"]}, "b": {"PRIMARY": "replica1", "APPS": ["x"]}},
            "replicarouter.E016",
        ),
    ],
)  # fmt: skip
def test_each_topology_check_fires(databases, clusters, expected):
    messages = checks.topology_messages(
        databases, {"CLUSTERS": clusters}, [checks.ROUTER], [checks.MIDDLEWARE]
    )
    assert expected in [m.id for m in messages]
    assert all(m.hint for m in messages)


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        (["not", "a"], "replicarouter.E017"),
        ({"UNKNOWN": 1}, "replicarouter.E018"),
        ({"REDIS_URL": 6379}, "replicarouter.E030"),
        ({"KEY_PREFIX": None}, "replicarouter.E031"),
        ({"CHECK_INTERVAL": "1"}, "replicarouter.E032"),
        ({"MAX_LAG_BYTES": -1}, "replicarouter.E035"),
        ({"FALL": 0}, "replicarouter.E036"),
        ({"STICKY": "yes"}, "replicarouter.E038"),
        ({"STICKY_SCOPE": "device"}, "replicarouter.E040"),
        ({"BALANCE": "fastest"}, "replicarouter.E041"),
        ({"READ_TIMEOUT": 0}, "replicarouter.E042"),
        ({"READ_TIMEOUT": "2"}, "replicarouter.E042"),
        ({"RETRY_READS": "yes"}, "replicarouter.E043"),
        ({"CONNECT_TIMEOUT": 1.5}, "replicarouter.E044"),
        ({"PROMOTE_AFTER": -1}, "replicarouter.E045"),
    ],
)
def test_each_invalid_setting_has_its_own_id(values, expected):
    messages = checks.topology_messages(DBS, values, [checks.ROUTER], [checks.MIDDLEWARE])
    assert [m.id for m in messages if m.is_serious()] == [expected]


def test_invalid_setting_messages_name_the_key_the_value_and_the_rule():
    messages = checks.topology_messages(
        DBS,
        {"FALL": 0, "BALANCE": "fastest", "READ_TIMEOUT": "2", "REDIS_URL": 1, "X": 1},
        [checks.ROUTER],
        [checks.MIDDLEWARE],
    )
    assert [(m.id, m.msg, m.hint) for m in messages] == [
        ("replicarouter.E018", "REPLICAROUTER has unknown keys ['X'].",
         "Valid keys: CLUSTERS, REDIS_URL, KEY_PREFIX, CHECK_INTERVAL, CHECK_TIMEOUT, MAX_LAG_SECONDS, "
         "MAX_LAG_BYTES, FALL, RISE, STICKY, STICKY_SECONDS, MONOTONIC_READS, STICKY_SCOPE, BALANCE, "
         "READ_TIMEOUT, RETRY_READS, CONNECT_TIMEOUT, PROMOTE_AFTER."),
        ("replicarouter.E030", "REPLICAROUTER['REDIS_URL'] is 1; it must be a string or None.",
         "For example 'redis://localhost:6379/0'."),
        ("replicarouter.E036", "REPLICAROUTER['FALL'] is 0; it must be a positive integer.",
         "The default is 2."),
        ("replicarouter.E041",
         "REPLICAROUTER['BALANCE'] is 'fastest'; it must be one of 'round_robin', 'random', 'least_lag'.",
         "The default is 'round_robin'."),
        ("replicarouter.E042", "REPLICAROUTER['READ_TIMEOUT'] is '2'; it must be a positive number or None.",
         "The default is 2.0."),
    ]  # fmt: skip


def test_wiring_warnings():
    assert [m.id for m in checks.topology_messages(DBS, {}, [checks.ROUTER], [])] == ["replicarouter.W010"]
    assert [m.id for m in checks.topology_messages(DBS, {}, [], [checks.MIDDLEWARE])] == [
        "replicarouter.W011"
    ]
    no_mirror = {**DBS, "replica1": {"ENGINE": ENGINE}}
    ids = [m.id for m in checks.topology_messages(no_mirror, {}, [checks.ROUTER], [checks.MIDDLEWARE])]
    assert ids == ["replicarouter.W012"]
    assert checks.topology_messages(DBS, {}, [checks.ROUTER], [checks.MIDDLEWARE]) == []


def test_promote_after_needs_redis():
    ids = [
        m.id
        for m in checks.topology_messages(DBS, {"PROMOTE_AFTER": 5}, [checks.ROUTER], [checks.MIDDLEWARE])
    ]
    assert ids == ["replicarouter.W014"]
    with_redis = {"PROMOTE_AFTER": 5, "REDIS_URL": "redis://localhost:6379/0"}
    assert checks.topology_messages(DBS, with_redis, [checks.ROUTER], [checks.MIDDLEWARE]) == []
    optional_off = {"READ_TIMEOUT": None, "PROMOTE_AFTER": None, "RETRY_READS": False, "CONNECT_TIMEOUT": 3}
    assert checks.topology_messages(DBS, optional_off, [checks.ROUTER], [checks.MIDDLEWARE]) == []


def test_middleware_order_warning_names_the_middleware_outside_ours_that_may_write():
    session = "django.contrib.sessions.middleware.SessionMiddleware"
    auth = "django.contrib.auth.middleware.AuthenticationMiddleware"
    security = "django.middleware.security.SecurityMiddleware"
    audit = "myproject.middleware.AuditLogMiddleware"
    for order in (
        [checks.MIDDLEWARE, session, auth],
        [security, checks.MIDDLEWARE, session, auth],
        [security, session, auth, checks.MIDDLEWARE],  # session saves are followed in either order
        [session, checks.MIDDLEWARE, auth, audit],  # inside ours: its writes are seen
    ):
        assert checks.topology_messages(DBS, {"STICKY_SCOPE": "user"}, [checks.ROUTER], order) == [], order
    messages = checks.topology_messages(
        DBS, {}, [checks.ROUTER], [security, audit, session, checks.MIDDLEWARE]
    )
    assert [m.id for m in messages] == ["replicarouter.W013"]
    assert audit in messages[0].msg and session not in messages[0].msg and security not in messages[0].msg


def test_every_check_id_is_declared_once():
    assert len(set(checks.CHECK_IDS)) == len(checks.CHECK_IDS)
    for id_ in checks.CHECK_IDS:
        assert id_.startswith("replicarouter.")


def _cluster(weights=None, **clusters):
    spec = {"PRIMARY": "default", "REPLICAS": weights or ["replica1", "replica2"]}
    return build(DBS, {"c": spec})[0].default


def test_round_robin_skips_unusable_and_returns_none_when_none_is_usable():
    cluster = _cluster()
    picks = [selection.round_robin(cluster, {"replica2"}) for _ in range(4)]
    assert picks == ["replica2"] * 4
    assert selection.round_robin(cluster, set()) is None


def test_weighted_random_respects_weights():
    cluster = _cluster({"replica1": 9, "replica2": 1})
    rng = random.Random(1)
    counts = Counter(selection.weighted_random(cluster, None, rng) for _ in range(1000))
    assert 850 <= counts["replica1"] <= 950


def test_least_lag_prefers_the_freshest_replica():
    cluster = _cluster()
    assert selection.least_lag(cluster, None, {"replica1": 2.0, "replica2": 0.1}) == "replica2"
    assert selection.least_lag(cluster, None, {}) in ("replica1", "replica2")  # unknown: rotation


def test_forced_modes_nest_and_unwind_on_errors():
    assert context.forced_mode() is None
    with context.use_primary():
        assert context.forced_mode() == "primary"
        with pytest.raises(ValueError), context.use_replica():
            assert context.forced_mode() == "replica"
            raise ValueError
        assert context.forced_mode() == "primary"
    assert context.forced_mode() is None


def test_one_force_object_used_by_concurrent_tasks():
    force = context.use_primary()

    async def task(delay):
        async with force:
            await asyncio.sleep(delay)
            inside = context.forced_mode()
        return inside, context.forced_mode()

    async def main():
        return await asyncio.gather(task(0.02), task(0.01))

    assert asyncio.run(main()) == [("primary", None), ("primary", None)]


def test_request_context_isolates_writes_and_restores():
    def scenario():
        context.mark_write("outer")  # outside any request: remembered for the rest of this context
        with context.request_context() as state:
            assert not context.wrote("outer")
            context.mark_write("c")
            assert state.wrote == {"c"} and context.wrote("c")
        assert context.wrote("outer") and not context.wrote("c")

    contextvars.Context().run(scenario)  # a fresh context, as a new thread gets
    assert not context.wrote("outer")


def test_task_signals_give_each_task_a_fresh_context():
    from replicarouter.routing import tasks

    def worker_thread():
        tasks.task_started(task_id="t1")
        context.mark_write("default")
        assert context.wrote("default")
        tasks.task_finished(task_id="t1")
        tasks.task_started(task_id="t2")  # the next task on the same thread
        fresh = not context.wrote("default")
        tasks.task_finished(task_id="t2")
        return fresh

    assert contextvars.Context().run(worker_thread)
    assert tasks._tokens == {}
