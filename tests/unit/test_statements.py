"""Statement classification without servers: row locks, odd inputs, the cache and its bound."""

from __future__ import annotations

import pytest

from replicarouter.routing import statements
from replicarouter.routing.statements import changes_session_state, classify, is_write


@pytest.fixture
def empty_cache(monkeypatch):
    monkeypatch.setattr(statements, "_cache", {})
    return statements._cache


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT * FROM t FOR UPDATE",
        "SELECT * FROM t FOR NO KEY UPDATE",
        "SELECT * FROM t FOR SHARE",
        "SELECT * FROM t FOR KEY SHARE",
        "select * from t for share skip locked",
        "SELECT * FROM t FOR\n  KEY   SHARE OF t",
        "WITH x AS (SELECT id FROM t FOR SHARE) SELECT * FROM x",
        "(SELECT * FROM t FOR NO KEY UPDATE NOWAIT)",
    ],
)
def test_every_row_locking_clause_needs_the_primary(sql):
    """A standby refuses row locks (they write the tuple's xmax): each of the four strengths is a write."""
    assert is_write(sql) is True
    assert classify(sql) == (True, False)


@pytest.mark.parametrize(
    "sql",
    [
        'SELECT "for share" FROM t',
        "SELECT 'for key share' AS label",
        'SELECT * FROM "for update"',
        "SELECT share, key FROM t",
        "SELECT * FROM forshare",
    ],
)
def test_lock_words_inside_quotes_or_names_are_reads(sql):
    assert is_write(sql) is False


def test_a_quoted_name_glued_to_a_keyword_still_counts():
    """Quoted names are cut out before the second look; what touched them must keep its word boundary."""
    assert is_write('SELECT * INTO"backup" FROM t') is True
    assert is_write('SELECT 1 FROM t FOR UPDATE OF"t"') is True
    # glued on both sides: PostgreSQL still reads AS "a" INTO t and FROM "t" FOR SHARE
    assert is_write('SELECT 1 AS"a"INTO t') is True
    assert is_write('SELECT * FROM"t"FOR SHARE') is True
    assert is_write('SELECT * FROM"t"FOR KEY SHARE') is True
    assert is_write('SELECT "update"FROM t') is False


def test_text_not_starting_with_a_word_is_a_write_unless_blank():
    assert is_write("/* hint */ SELECT 1") is True  # cannot tell what follows the comment: the safe way
    assert is_write("; SELECT 1") is True
    assert is_write("") is False
    assert is_write("  \n\t ") is False


def test_bytes_that_are_not_utf8_are_still_classified():
    assert is_write(b"SELECT '\xff\xfe' AS raw") is False
    assert is_write(b"UPDATE t SET b = '\xff'") is True
    assert changes_session_state(b"SET application_name = '\xff'") is True
    assert classify(b"SELECT '\xff'") == (False, False)


def test_unreadable_statements_are_writes_that_change_session_state():
    """psycopg2.sql.Composed cannot be read without a connection: both answers go the safe way."""
    unreadable = object()
    assert changes_session_state(unreadable) is True
    assert is_write(unreadable) is True
    assert classify(unreadable) == (True, True)


def test_classify_answers_both_questions(empty_cache):
    assert classify("SELECT 1") == (False, False)
    assert classify("UPDATE t SET v = 1") == (True, False)
    assert classify("SET search_path TO app") == (False, True)
    assert classify("CREATE TEMP TABLE t AS SELECT 1") == (True, True)
    assert classify(b"LISTEN channel") == (False, True)
    assert empty_cache == {
        "SELECT 1": (False, False),
        "UPDATE t SET v = 1": (True, False),
        "SET search_path TO app": (False, True),
        "CREATE TEMP TABLE t AS SELECT 1": (True, True),
    }  # bytes are not cached


def test_classify_answers_from_the_cache(empty_cache):
    empty_cache["SELECT 1"] = (True, True)  # planted: only a lookup can return it
    assert classify("SELECT 1") == (True, True)


def test_cache_is_cleared_when_it_reaches_its_limit(empty_cache, monkeypatch):
    monkeypatch.setattr(statements, "_CACHE_LIMIT", 3)
    for n in range(3):
        classify(f"SELECT {n}")
    assert len(empty_cache) == 3
    classify("SELECT 3")
    assert empty_cache == {"SELECT 3": (False, False)}
