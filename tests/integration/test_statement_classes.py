"""The statement classifier against PostgreSQL's own reading of the same texts (issue 15).

The unit tests (tests/unit/test_statements.py) say what the classifier answers; these check that its
reading of comments, quotes and ``;`` is the server's: a text the classifier calls session state does
leave a setting behind, one it calls clean does not, and a text it calls a write is refused by a standby.
"""

from __future__ import annotations

import psycopg2
import psycopg2.errors
import pytest

from replicarouter.routing.statements import changes_session_state, is_write

pytestmark = pytest.mark.integration

SET = "SET rr.probe = 'on'"


@pytest.mark.parametrize(
    "sql",
    [
        # the server runs the SET: the classifier must say so
        f"/* c */ {SET}",
        f"-- c\n{SET}",
        f"/* a /* b */ c */ {SET}",
        f"SELECT 1; {SET}",
        f"BEGIN; {SET}; COMMIT",
        f"SELECT 'it''s'; {SET}",
        f"SELECT E'\\\\'; {SET}",  # E'\\' holds one backslash
        f"SELECT '\\'; {SET}; --'",  # a backslash escapes nothing in a standard string
        f"SELECT $a$ x $a$; {SET}",
        f"SELECT $$a$$; {SET}; SELECT $$b$$",
        f"SELECT 1 AS a$$; {SET}; SELECT 1 AS b$$",  # a$$ and b$$ are names, not quotes
        "SELECT set_config('rr.probe', 'on', false)",
        "SELECT \"set_config\"('rr.probe', 'on', false)",
        # the server does not: neither must the classifier
        f"-- {SET}\nSELECT 1",
        f"/* a /* b */ {SET} */ SELECT 1",  # nested: the first */ ends the inner comment only
        "SELECT 'SET rr.probe = ''on'''",
        f"SELECT $$; {SET}$$",
        f"SELECT $tag$ ; {SET} $tag$",
        "SELECT E'\\'; SET rr.probe = ''on'''",
        "SELECT E'a''\\'; SET rr.probe = 1; --'",  # '' inside E'' does not end it
        'SELECT 1 AS "a;SET rr.probe = 1"',
        f"SELECT 1 -- ; {SET}",
        "BEGIN; SET LOCAL rr.probe = 'on'; COMMIT",
    ],
)
def test_session_state_is_what_the_server_keeps(replica_cluster, sql):
    conn = replica_cluster.primary.connect()
    try:
        with conn.cursor() as cursor:
            cursor.execute(sql)
            cursor.execute("SELECT current_setting('rr.probe', true)")
            kept = cursor.fetchone()[0] == "on"
    finally:
        conn.close()
    assert changes_session_state(sql) is kept


@pytest.mark.parametrize(
    "sql",
    [
        "/* hint */ SELECT 1",
        "SELECT 1; SELECT 2",
        "SELECT 'x; CREATE TABLE rr_probe (a int)'",
        "SELECT $$; CREATE TABLE rr_probe (a int)$$",
        "SELECT E'\\'; CREATE TABLE rr_probe (a int); --'",
        "SELECT 1; CREATE TABLE rr_probe (a int)",
        "BEGIN; CREATE TABLE rr_probe (a int); COMMIT",
        "/* c */ CREATE TABLE rr_probe (a int)",
        "SELECT 1 INTO TEMP rr_probe",
        "SELECT 1 FROM pg_database FOR SHARE",
    ],
)
def test_writes_are_what_a_standby_refuses(replica_cluster, sql):
    conn = replica_cluster.replicas[0].connect()
    try:
        with conn.cursor() as cursor:
            try:
                cursor.execute(sql)
            except psycopg2.errors.ReadOnlySqlTransaction:
                refused = True
            else:
                refused = False
    finally:
        conn.close()
    assert is_write(sql) is refused


@pytest.mark.parametrize("sql", ["SELECT 'abc", 'SELECT "abc', "SELECT $$abc", "SELECT 1 /* c"])
def test_text_the_classifier_cannot_read_is_refused_by_the_server(replica_cluster, sql):
    """Unreadable text counts as a write that changes session state; the server runs none of it."""
    conn = replica_cluster.primary.connect()
    try:
        with conn.cursor() as cursor, pytest.raises(psycopg2.errors.SyntaxError):
            cursor.execute(sql)
    finally:
        conn.close()
    assert (is_write(sql), changes_session_state(sql)) == (True, True)


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT nextval('rr_seq')",
        "SELECT \"nextval\"('rr_seq')",
        "SELECT pg_catalog.\"nextval\"('rr_seq')",
        "SELECT E'\\'', nextval('rr_seq')",
        "SELECT setval('rr_seq', 5)",
        "SELECT lo_create(0)",
        "SELECT pg_catalog.lo_create(0)",
        "EXPLAIN ANALYZE SELECT nextval('rr_seq')",
        "VALUES (nextval('rr_seq'))",
    ],
)
def test_functions_with_side_effects_are_what_a_standby_refuses(replica_cluster, sql):
    replica_cluster.primary.query("CREATE SEQUENCE IF NOT EXISTS rr_seq")
    replica_cluster.wait_caught_up()
    conn = replica_cluster.replicas[0].connect()
    try:
        # "cannot execute … in a read-only transaction", or for lo_create "cannot assign OIDs during
        # recovery" (an InternalError): a standby refuses them either way
        with (
            conn.cursor() as cursor,
            pytest.raises((psycopg2.errors.ReadOnlySqlTransaction, psycopg2.InternalError)),
        ):
            cursor.execute(sql)
    finally:
        conn.close()
    assert is_write(sql) is True
