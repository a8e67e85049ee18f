"""The backend's lending decisions without servers: which node lends a connection, which reads run again.

Each condition is tested both ways, so that a mutant of ``replicarouter.backends.postgresql.lending``
changes some expected value.
"""

from __future__ import annotations

import pytest

from replicarouter.backends.postgresql import lending
from replicarouter.backends.postgresql.lending import Role, Writer
from replicarouter.routing.topology import Cluster, smooth_rotation


def cluster(*replicas: str) -> Cluster:
    weights = tuple(1 for _ in replicas)
    return Cluster("c", "primary", replicas, weights, (), smooth_rotation(replicas, weights))


THREE = cluster("r1", "r2", "r3")


@pytest.mark.parametrize(
    ("in_cluster", "alias", "retry_reads", "expected"),
    [
        (False, "primary", True, Role.PLAIN),  # not in any cluster: its own pool, whatever its name
        (False, "r1", True, Role.PLAIN),
        (True, "primary", True, Role.PRIMARY),
        (True, "primary", False, Role.PRIMARY),  # RETRY_READS is about replicas only
        (True, "r1", True, Role.REPLICA),
        (True, "r1", False, Role.PLAIN),
    ],
)
def test_role(in_cluster: bool, alias: str, retry_reads: bool, expected: Role) -> None:
    assert lending.role(THREE if in_cluster else None, alias, retry_reads) is expected


def test_the_elected_writer_lends_with_its_own_parameters_or_the_alias_s():
    assert lending.writer("primary", "primary", "primary answers") == Writer("primary", own=True)
    assert lending.writer("primary", "r2", "r2 promoted") == Writer("r2", own=False)


@pytest.mark.parametrize(
    ("known_reason", "reason"),
    [
        (
            "primary is down and no replica has been promoted",
            "primary is down and no replica has been promoted",
        ),
        (None, "unknown"),  # no snapshot yet
        ("", ""),  # a snapshot without a reason says so
    ],
)
def test_no_writer_means_primary_unavailable_with_the_snapshot_s_reason(known_reason, reason):
    assert lending.writer("primary", None, known_reason) == Writer(None, own=False, reason=reason)


@pytest.mark.parametrize(
    ("failures", "suspect", "expected"),
    [
        (None, False, True),  # no health known: try it
        (0, False, True),  # answered its last probe
        (1, False, False),  # failed its last probe: it may be frozen
        (3, False, False),
        (None, True, False),  # this process found it broken
        (0, True, False),
    ],
)
def test_a_replica_tries_itself_unless_unanswered_or_suspect(failures, suspect, expected):
    assert lending.tries_itself(failures, suspect) is expected


FACTS = {"write": False, "session_state": False, "autocommit": True, "in_atomic_block": False,
         "server_side": False}  # fmt: skip


def test_a_plain_read_outside_transactions_is_retryable():
    assert lending.retryable(**FACTS) is True


@pytest.mark.parametrize(
    ("fact", "value"),
    [
        ("write", True),
        ("session_state", True),  # SET, temporary tables…: running it twice is not the same
        ("autocommit", False),  # inside a transaction
        ("in_atomic_block", True),
        ("server_side", True),  # a named cursor fetches rows after execute()
    ],
)
def test_anything_else_is_not_retryable(fact, value):
    assert lending.retryable(**{**FACTS, fact: value}) is False


@pytest.mark.parametrize(
    ("attempts", "closed", "cut", "expected"),
    [
        (0, True, False, True),  # the connection broke
        (0, False, True, True),  # the watchdog cut it
        (0, True, True, True),
        (1, True, False, True),  # the second retry: on the primary
        (1, False, True, True),
        (2, True, False, False),  # at most two
        (2, False, True, False),
        (0, False, False, False),  # a failed statement on a live connection is the caller's business
        (1, False, False, False),
    ],
)
def test_a_failed_read_runs_again_only_on_a_broken_connection_and_at_most_twice(
    attempts, closed, cut, expected
):
    assert lending.retry(attempts, closed=closed, cut=cut) is expected
    assert lending.MAX_RETRIES == 2


def test_a_broken_read_suspects_its_alias_and_every_replica_alias_on_that_server():
    databases = {
        "primary": {"HOST": "db1", "PORT": "5432"},  # the same server, but not a replica alias
        "r1": {"HOST": "db2", "PORT": "5432"},
        "r2": {"HOST": "db1", "PORT": "5432"},
        "r3": {"HOST": "db1", "PORT": 5433},
    }
    assert lending.suspects(THREE, "r1", "db1:5432", databases) == ("r1", "r2")
    assert lending.suspects(THREE, "r3", "db1:5433", databases) == ("r3", "r3")
    assert lending.suspects(THREE, "r1", "?", databases) == ("r1",)
    # a replica alias missing from DATABASES is on no server
    assert lending.suspects(THREE, "r1", "db2:5432", {"r1": databases["r1"]}) == ("r1", "r1")
