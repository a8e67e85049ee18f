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
    # strings and comments too
    assert is_write("SELECT 'a'INTO t") is True
    assert is_write("SELECT 1/*c*/INTO t") is True


def test_a_statement_not_starting_with_a_word_is_a_write_unless_empty():
    assert is_write("1") is True
    assert is_write("SELECT 1; 42") is True
    assert is_write("; SELECT 1") is False  # an empty statement, then a read
    assert is_write("") is False
    assert is_write("  \n\t ") is False
    assert classify("SELECT 1;") == (False, False)


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


def both(sql):
    """Return ``classify``'s answer computed afresh, checking that the two one-question functions agree."""
    answer = (is_write(sql), changes_session_state(sql))
    statements._cache.pop(sql, None)
    assert classify(sql) == answer
    return answer


# Each string leaves session state on its connection that the next borrower would see (issue 15): the
# answer is (is_write, changes_session_state).
@pytest.mark.parametrize(
    ("sql", "answer"),
    [
        # behind a comment: PostgreSQL skips it, so must we
        ("/* c */ SET search_path = x", (False, True)),
        ("-- c\nSET x = 1", (False, True)),
        ("-- c\rSET x = 1", (False, True)),
        ("/* a /* b */ c */ SET x = 1", (False, True)),
        ("/* 1 /* 2 /* 3 */ */ */ SET x = 1", (False, True)),
        ("/**/SET x = 1", (False, True)),
        ("SELECT 2*/*c*/3; SET x = 1", (False, True)),
        # after another statement of the same text
        ("SELECT 1; SET work_mem = '1MB'", (False, True)),
        ("BEGIN; SET statement_timeout = 0; COMMIT", (False, True)),
        ("SELECT 1;SET x = 1;", (False, True)),
        ("SET x = 1; UPDATE t SET a = 1", (True, True)),
        # temporary objects
        ("SELECT 1 INTO TEMP t", (True, True)),
        ("SELECT * INTO TEMPORARY TABLE t FROM x", (True, True)),
        ("select * into local temp t from x", (True, True)),
        ("WITH x AS (SELECT 1) SELECT * INTO GLOBAL TEMPORARY t FROM x", (True, True)),
        ("CREATE TABLE pg_temp.x (a int)", (True, True)),
        ('CREATE TABLE "pg_temp".x (a int)', (True, True)),
        ("CREATE FUNCTION pg_temp.f() RETURNS int AS $$ SELECT 1 $$ LANGUAGE sql", (True, True)),
        ('SELECT * INTO "pg_temp_3".t FROM x', (True, True)),
        ("CREATE OR REPLACE TEMP VIEW v AS SELECT 1", (True, True)),
        ("CREATE TEMP SEQUENCE s", (True, True)),
        ("CREATE GLOBAL TEMPORARY TABLE t (a int)", (True, True)),
        # session-level advisory locks, quoted or schema-qualified too
        ("SELECT pg_advisory_lock(1)", (False, True)),
        ("SELECT pg_try_advisory_lock(1)", (False, True)),
        ("SELECT pg_advisory_lock_shared(1)", (False, True)),
        ("SELECT pg_try_advisory_lock_shared(1, 2)", (False, True)),
        ("SELECT pg_catalog.pg_advisory_lock(1)", (False, True)),
        ('SELECT "pg_advisory_lock"(1)', (False, True)),
        ('SELECT "pg_try_advisory_lock_shared"(1)', (False, True)),
        # SET without LOCAL, TRANSACTION or CONSTRAINTS
        ("SET ROLE x", (False, True)),
        ("SET SESSION AUTHORIZATION x", (False, True)),
        ("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY", (False, True)),
        ("SET SESSION statement_timeout = 0", (False, True)),
        ("SET localtime = 1", (False, True)),  # a word that starts like LOCAL is not LOCAL
        # the other commands, which the classifier knew before
        ("RESET ALL", (False, True)),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT 1", (False, True)),
        ("DECLARE c BINARY NO SCROLL CURSOR WITH HOLD FOR SELECT 1", (False, True)),
        ("LISTEN channel", (False, True)),
        ("PREPARE p AS SELECT 1", (False, True)),
        ("PREPARE transaction AS SELECT 1", (False, True)),  # a statement named "transaction"
        ("LOAD 'auto_explain'", (False, True)),
        ("SELECT set_config('app.user', '1', false)", (False, True)),
        ("SELECT pg_catalog.set_config ('app.user', '1', false)", (False, True)),
        ("SELECT \"set_config\"('app.user', '1', false)", (False, True)),
        # code that may do anything (as cursor.callproc)
        ("DO $$ BEGIN PERFORM set_config('a.b', 'c', false); END $$", (True, True)),
        ("CALL proc()", (True, True)),
        # after quoted text that ends where PostgreSQL ends it
        ("SELECT 'it''s'; SET x = 1", (False, True)),
        ("SELECT E'\\\\'; SET x = 1", (False, True)),  # E'\\' holds one backslash
        ("SELECT '\\'; SET x = 1; --'", (False, True)),  # a backslash escapes nothing in a standard string
        ("SELECT xE'\\'; SET x = 1; --'", (False, True)),  # xE is a name: a standard string follows
        ("SELECT $a$ x $a$; SET x = 1", (False, True)),
        ("SELECT $a$ $b$ $a$; SET x = 1", (False, True)),
        ("SELECT a$$b FROM t; SET x$$ = 1", (False, True)),  # a$$b and x$$ are names, not quotes
        ("SELECT a1$$ FROM t; SET x$$ = 1", (False, True)),
        ("SELECT a$$$ FROM t; SET x$$$ = 1", (False, True)),
        ("SELECT $$a$$; SET x = 1; SELECT $$b$$", (False, True)),  # each quote ends at its first closing
        ('SELECT "a"; SET x = 1', (False, True)),
        # decided: a quoted name "pg_temp" counts wherever it is (the safe way)
        ('SELECT "pg_temp"', (False, True)),
        ("INSERT INTO temp VALUES (1)", (True, True)),  # and a table named temp, as INTO TEMP
    ],
)
def test_session_state_is_found_where_postgresql_reads_it(sql, answer):
    assert both(sql) == answer


@pytest.mark.parametrize(
    ("sql", "answer"),
    [
        # the command is inside a comment
        ("-- SET x = 1\nSELECT 1", (False, False)),
        ("/* SET x = 1 */ SELECT 1", (False, False)),
        ("/* a /* b */ SET x = 1 */ SELECT 1", (False, False)),  # nested: the first */ ends the inner one
        ("/* 1 /* 2 /* 3 */ SET x */ SET y */ SELECT 1", (False, False)),
        ("SELECT 1 -- ; SET x = 1", (False, False)),
        # in quoted text
        ("SELECT 'SET x'", (False, False)),
        ("SELECT 'a'; SELECT 'b; SET x'", (False, False)),
        ("SELECT $$; SET x$$", (False, False)),
        ("SELECT $tag$ ; LISTEN $tag$", (False, False)),
        ("SELECT $a$ $b$; SET x $b$ $a$", (False, False)),
        ("SELECT $a$ $a $a$", (False, False)),
        ("SELECT $_1$ ; SET x $_1$", (False, False)),
        ("SELECT E'\\'; SET x'", (False, False)),
        ("SELECT e'\\'; SET x'", (False, False)),
        ("SELECT E'''; SET x'", (False, False)),
        ("SELECT E'\\\\\\'; SET x'", (False, False)),
        ("SELECT E'a''\\'; SET x = 1; --'", (False, False)),  # '' inside E'' does not end it
        ("SELECT 'it''s; SET x'", (False, False)),
        ('SELECT "a;SET x"', (False, False)),
        ("SELECT 'pg_advisory_lock(1)', 'set_config(', 'pg_temp'", (False, False)),
        ('SELECT 1 AS "SET"', (False, False)),
        # transaction-scoped
        ("BEGIN; SET LOCAL statement_timeout = 0; COMMIT", (False, False)),
        ("SET LOCAL ROLE x", (False, False)),
        ("SET TRANSACTION READ ONLY", (False, False)),
        ("SET CONSTRAINTS ALL IMMEDIATE", (False, False)),
        ("SELECT pg_advisory_xact_lock(1)", (False, False)),
        ("SELECT pg_try_advisory_xact_lock_shared(1)", (False, False)),
        ("SELECT pg_advisory_unlock(1)", (False, False)),
        ("PREPARE TRANSACTION 'x'", (False, False)),
        # not temporary
        ("CREATE UNLOGGED TABLE t (a int)", (True, False)),
        ("CREATE TABLE t AS SELECT 1", (True, False)),
        ("SELECT * INTO t FROM x", (True, False)),
        ("SELECT * INTO temperature FROM x", (True, False)),
        ('CREATE TABLE "PG_TEMP".x (a int)', (True, False)),  # quoted, another schema than pg_temp
        ('SELECT "Set_Config"(1)', (False, False)),
        # other commands
        ("DECLARE c CURSOR FOR SELECT 1", (False, False)),
        ("DECLARE c CURSOR WITHOUT HOLD FOR WITH hold AS (SELECT 1) SELECT * FROM hold", (False, False)),
        ("UNLISTEN channel", (False, False)),
        ("SELECT 1; SELECT 2", (False, False)),
    ],
)
def test_session_state_is_not_found_where_postgresql_does_not_see_it(sql, answer):
    assert both(sql) == answer


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT 'abc",
        'SELECT "abc',
        "SELECT E'abc\\'",
        "SELECT $$abc",
        "SELECT $t$abc$$",
        "SELECT 1 /* c",
        "SELECT 1 /* a /* b */",
        "/* 1 /* 2 /* 3 /* 4 */ */ */ */ SELECT 1",  # nested deeper than the blanking follows
    ],
)
def test_text_that_cannot_be_read_is_a_write_that_changes_session_state(sql):
    """PostgreSQL would reject it; the safe answer costs a reset at most."""
    assert both(sql) == (True, True)


@pytest.mark.parametrize(
    ("sql", "write"),
    [
        # any write among the statements makes the text a write
        ("BEGIN; INSERT INTO t VALUES (1); COMMIT", True),
        ("SELECT 1; DROP TABLE t", True),
        ("SHOW x; DELETE FROM t", True),
        ("SELECT setval('s', 1)", True),
        ("WITH x AS (UPDATE t SET a = 1 RETURNING *) SELECT * FROM x", True),
        ("WITH x AS (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x", True),
        ("SELECT 1; SELECT 2 FOR UPDATE", True),
        ("SELECT 1 -- ; UPDATE t SET a = 1", False),
        ("SELECT 1; -- UPDATE t SET a = 1", False),
        ("SELECT 'x; UPDATE t SET a = 1'", False),
        ("SELECT $$; DELETE FROM t$$", False),
        ("/* hint */ SELECT 1", False),
        ("/* UPDATE */ SELECT 1 /* FOR UPDATE */", False),
        # what a statement holds decides
        ("PREPARE p AS INSERT INTO t VALUES (1)", True),
        ("PREPARE p (int, numeric(10, 2)) AS SELECT $1, $2", False),
        ("PREPARE alias AS SELECT 1", False),  # AS ends no name
        ("PREPARE p", True),  # incomplete: unknown
        ("EXECUTE p", True),  # what it runs is not in the text
        ("DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE", True),
        ("DECLARE c CURSOR WITH HOLD FOR SELECT * FROM t FOR SHARE", True),
        ("DECLARE update CURSOR FOR SELECT 1", False),  # a cursor may be named update
        ("DECLARE c", True),
        ("EXPLAIN ANALYZE CREATE TABLE t AS SELECT 1", True),
        ("EXPLAIN ANALYZE EXECUTE p", True),
        ("EXPLAIN ANALYZE SELECT 1", False),
        # COPY: the direction, or the query it copies
        ("COPY t TO STDOUT", False),
        ('COPY "t" (a, b) TO STDOUT', False),
        ("COPY t TO '/tmp/t.csv' WITH (FORMAT csv)", False),
        ("COPY BINARY t TO STDOUT", False),
        ("COPY (SELECT 1) TO STDOUT WITH (FORMAT csv)", False),
        ("COPY (SELECT * FROM t) TO STDOUT", False),  # the query's FROM is no direction
        ("COPY (DELETE FROM t RETURNING *) TO STDOUT", True),
        ("COPY t FROM STDIN", True),
        ("COPY t (a, b) FROM STDIN", True),
        ('COPY "t" (a, b) FROM STDIN', True),  # a quoted table, then columns: not COPY (query)
        ("COPY t FROM STDIN WHERE a SIMILAR TO 'x%'", True),
        ("COPY auto FROM STDIN", True),  # TO at the end of a name is no direction
        ("COPY topics FROM STDIN", True),  # nor at its start
        ("COPY", True),
    ],
)
def test_every_statement_of_a_text_is_classified(sql, write):
    assert both(sql)[0] is write


@pytest.mark.parametrize(
    "sql",
    [
        # Django's pattern escaping for LIKE against an expression (contains, startswith, ...)
        'SELECT "t"."id" FROM "t" WHERE UPPER("t"."name"::text) LIKE \'%%\' || REPLACE(REPLACE(REPLACE('
        "(UPPER(\"t\".\"other\")), E'\\\\', E'\\\\\\\\'), E'%%', E'\\\\%%'), E'_', E'\\\\_') || '%%'",
        # a trailing comment as sqlcommenter appends it
        'SELECT "t"."id" FROM "t" LIMIT 21 /*controller=\'index\',framework=\'django%%3A5.2\'*/',
        'SELECT "t"."updated_at", "t"."insert_id", "t"."into" FROM "t" WHERE "t"."id" = %s',
        "SELECT t.updated_at, t.insert_id, t.last_update, t.settings FROM t",
        '( (SELECT "a" FROM "t") UNION (SELECT "b" FROM "u") )',
    ],
)
def test_django_sql_stays_a_read_without_session_state(sql):
    assert both(sql) == (False, False)


@pytest.mark.parametrize(
    "sql",
    [
        "START TRANSACTION",
        "END",
        "ABORT",
        "DISCARD ALL",
        "DEALLOCATE p",
        "CLOSE c",
        "FETCH 10 FROM c",
        "MOVE NEXT IN c",
        "TABLE t",
        "UNLISTEN *",
        "COMMIT PREPARED 'x'",
    ],
)
def test_transaction_control_and_session_commands_are_not_writes(sql):
    assert both(sql)[0] is False


@pytest.mark.parametrize(
    "sql",
    [
        # every raw-SQL write of issue 16 that 0.1 read as a read
        "BEGIN; INSERT INTO t VALUES (1); COMMIT",
        "SET search_path TO public; UPDATE t SET a = 1",
        "SELECT 1; DROP TABLE t",
        "SELECT 1; TRUNCATE t",
        "PREPARE p AS INSERT INTO t VALUES (1)",
        "EXECUTE p",
        "DECLARE c CURSOR FOR SELECT * FROM t FOR UPDATE",
        "SELECT \"nextval\"('s')",
        "SELECT pg_catalog.\"nextval\"('s')",
        "SELECT \"nextval\" ('s')",
        "SELECT E'\\'', nextval('s')",
        "EXPLAIN ANALYZE CREATE TABLE x AS SELECT 1",
        "COPY t FROM PROGRAM 'echo 1'",
        "SELECT lo_create(0)",
        "SELECT pg_catalog.lo_create(0)",
        "SELECT lo_unlink(42)",
        "SELECT lowrite(0, 'x')",
        "SELECT lo_from_bytea(0, 'x')",
        "SELECT setval('s', 5)",
        "SELECT txid_current()",
        "SELECT pg_current_xact_id()",
        "SELECT pg_notify('c', 'x')",
        "SELECT pg_logical_emit_message(true, 'p', 'm')",
        "SELECT pg_terminate_backend(123)",
        "SELECT dblink_exec('dbname=x', 'DELETE FROM t')",
        "VALUES (nextval('s'))",
        "EXPLAIN ANALYZE SELECT nextval('s')",
        "EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1",
        "EXPLAIN (analyze off) DELETE FROM t",  # ANALYZE mentioned at all: the safe way
        "EXPLAIN ANALYZE EXECUTE p",
        "EXPLAIN VERBOSE ANALYZE INSERT INTO t VALUES (1)",
        "COPY (SELECT nextval('s')) TO STDOUT",
        "DECLARE c CURSOR FOR SELECT nextval('s')",
    ],
)
def test_writes_hidden_in_raw_sql_are_writes(sql):
    assert is_write(sql) is True


@pytest.mark.parametrize(
    "sql",
    [
        "/* c */ SELECT 1",  # 0.1 pinned the session to the primary for a leading comment
        "-- why\nSELECT 1",
        "EXPLAIN INSERT INTO t VALUES (1)",  # without ANALYZE nothing runs
        "EXPLAIN (VERBOSE, COSTS off) DELETE FROM t",
        "EXPLAIN ANALYZE SELECT * FROM t",
        "SELECT txid_current_if_assigned()",
        "SELECT \"Nextval\"('s')",  # quoted with capitals: another function than nextval
        "SELECT 'nextval(1)', \"lo_create\" FROM t",  # a string and a column, not calls
        'SELECT "t"."id", COALESCE("t"."n", 0) FROM "t"',
        "SHOW search_path",
        "TABLE t",
    ],
)
def test_provable_reads_stay_reads(sql):
    assert is_write(sql) is False
