"""Classify SQL statements: does this one write, does it leave session state behind? Pure functions.

``classify`` runs on every statement our backend executes. The ORM sends the same SQL text again and
again (parameters travel apart), so answers are cached by text: a hit costs one dict lookup. When unsure,
answers go the safe way: a statement of unknown kind is a write (its session's reads then stay on the
primary) and may change session state (the pool then resets the connection).

A text is judged in three steps. It is *blanked* first, the way PostgreSQL's lexer reads it: comments
(``--``, ``/* */`` nested up to three deep) and string literals (``'…'``, ``E'…'`` with backslash escapes,
``$$…$$``, ``$tag$…$tag$``) become a space, quoted names an empty one (``""``), so that nothing they contain
counts while ``FROM"t"FOR SHARE`` keeps its words apart and ``COPY "t" (a) FROM`` its table. Then the text
is cut at each ``;`` and every statement is judged on its own: one write makes the text a write, one
session change makes it change the session. Commands are matched at the start of their statement, and
every pattern on an upper-cased copy, case-sensitively (faster in ``re`` than ``IGNORECASE``). Text that
cannot be blanked (an unterminated quote or comment, comments nested deeper) is unknown: a write that
changes session state. Strings are read as with ``standard_conforming_strings = on``, PostgreSQL's default
since 9.1 (Django never turns it off).

What is a read: a statement is one only when it provably is — it starts with ``SELECT``, ``WITH``,
``VALUES`` or ``TABLE`` and holds no ``INTO``, no ``UPDATE``/``DELETE`` (a data-modifying CTE), no row
locking clause and no call of a function known to write or to need the primary (``nextval``, ``setval``,
every ``lo_*`` large-object function, ``txid_current``, ``pg_notify``, ``dblink_exec``, … in
``_WRITE_INSIDE_READ``), or it is ``EXPLAIN`` without ``ANALYZE`` (nothing runs), or ``EXPLAIN ANALYZE``
of a statement that is itself a read (it runs). Every other command is a write, except transaction
control and session commands (``BEGIN``, ``COMMIT``, ``SET``, ``SHOW``, ``RESET``, ``DISCARD``, …:
``_NEUTRAL``), which change no data: each statement of a text is judged on its own, so ``BEGIN; INSERT
…; COMMIT`` is a write through its ``INSERT``, and Django's own ``SET`` statements on a replica alias do
not send the rest of a request to the primary. Functions of your own that write are invisible to any
parser: call ``replicarouter.mark_written()`` after them (or run them under ``use_primary()``).

Decided the safe way: a quoted name that names session state is kept, not blanked: ``"pg_temp"`` (the
temporary schema; any statement naming it counts, ``SELECT "pg_temp"`` included), ``"set_config"`` and the
session advisory lock functions; ``INTO temp`` counts as ``INTO TEMP`` (a table named temp). A quoted
lower-case name called as a function (``"nextval"('s')``, ``pg_catalog."lo_create"(0)``) is that
function; ``"Nextval"(…)`` is another one. ``EXPLAIN (ANALYZE off) …`` counts as analysed. ``lo_get`` and
``lo_export`` only read, and count as writes with the other ``lo_*`` functions.

Cost (python -m timeit, 2-core development machine, issue 16): a cache miss for a 321-character ORM
``SELECT`` of 14 quoted names takes about 23 µs (18 µs before function calls were looked for: the quoted
names followed by ``(`` and the list of functions), a 101-character ``UPDATE`` 7.3 µs (6.1 µs); a hit is
the same one dict lookup as before, about 55 ns per ``classify`` call, and the ORM sends the same texts
again and again.
"""

from __future__ import annotations

import re
from typing import Any

#: statements that neither change data nor need the primary: transaction control, session commands
_NEUTRAL = frozenset(
    [
        "BEGIN",
        "START",
        "COMMIT",
        "END",
        "ROLLBACK",
        "ABORT",
        "SAVEPOINT",
        "RELEASE",
        "SET",
        "RESET",
        "SHOW",
        "DISCARD",
        "LISTEN",
        "UNLISTEN",
        "DEALLOCATE",
        "CLOSE",
        "FETCH",
        "MOVE",
        "LOAD",
    ]
)
#: statements that write only through what they contain (a data-modifying CTE, INTO, a row lock)
_READS = frozenset(["SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN"])

# -- blanking ---------------------------------------------------------------------------------------------
# Every alternative starts with a plain character, so that re can skip ahead to the next one (it saves a
# third of the blanking of an ORM SELECT); what must not come before it (E'…' and $$…$$ do not start
# inside a name: xE'…' and x$$ are names) is looked behind once that character is consumed.
#: a character that continues a name: a letter, digit, _ or $ (PostgreSQL counts every non-ASCII one)
_NAME_CHAR = r"[0-9A-Za-z_$\x80-\U0010ffff]"
#: a dollar quote's opening: $$ or $tag$ (a tag never starts with a digit: $1 is a parameter)
_TAG = r"\$(?<!" + _NAME_CHAR + r"\$)(?:[A-Za-z_\x80-\U0010ffff][0-9A-Za-z_\x80-\U0010ffff]*)?\$"
_E_QUOTE = r"[Ee](?<!" + _NAME_CHAR + r".)'"
#: a block comment: PostgreSQL nests them; three levels here, deeper is left unterminated (unknown)
_COMMENT = r"/\*(?:[^*/]|\*(?!/)|/(?!\*))*\*/"
for _ in range(2):
    _COMMENT = r"/\*(?:[^*/]|\*(?!/)|/(?!\*)|" + _COMMENT + r")*\*/"

_LEXEME = re.compile(
    # quoted names that mean session state are kept (quoted, they are case-sensitive: "PG_TEMP" is another)
    r'"(?P<keep>pg_temp\w*|set_config|pg_(?:try_)?advisory_lock(?:_shared)?)"'
    r'|"(?P<name>[^"]*)"'  # a quoted name; "a""b" is read as two, blanked alike
    r"|'[^']*'"  # a string; 'it''s' is read as two
    r"|--[^\n\r]*"
    r"|" + _COMMENT + r"|" + _E_QUOTE + r"(?:[^'\\]|\\.|'')*'"  # E'\'' and E'''' hold a quote
    r"|(?P<tag>" + _TAG + r").*?(?P=tag)"
    # an opening the alternatives above could not close: PostgreSQL would reject the text
    r"|(?P<open>['\"]|/\*|" + _E_QUOTE + r"|" + _TAG + r")",
    re.DOTALL,
)


_CALLED = re.compile(r"[a-z_][a-z0-9_$]*")
_CALL_FOLLOWS = re.compile(r"\s*\(")


class _Unreadable(Exception):
    """The text has an unterminated quote or comment."""


def _blank_lexeme(match: re.Match[str]) -> str:
    kind = match.lastgroup
    if kind == "keep":
        return f" {match.group('keep')} "
    if kind == "name":
        # a quoted lower-case name called as a function ("nextval"('s')) is the function the unquoted
        # name is (PostgreSQL folds unquoted names to lower case): kept, so that a known side effect
        # counts; "Nextval"(…) is another function, a user's. Any other name stays a word, empty:
        # COPY "t" (a) FROM must not read as COPY (query)
        end = match.end()
        after = match.string[end : end + 1]
        if after == "(" or (after.isspace() and _CALL_FOLLOWS.match(match.string, end)):
            name = match.group("name")
            if _CALLED.fullmatch(name):
                return f" {name} "
        return ' "" '
    if kind == "open":
        raise _Unreadable
    return " "


def _blank(text: str) -> str | None:
    """Return ``text`` upper-cased with comments, literals and quoted names blanked; None if unreadable."""
    try:
        return _LEXEME.sub(_blank_lexeme, text).upper()
    except _Unreadable:
        return None


# -- the patterns, on blanked upper-cased statements ------------------------------------------------------
_FIRST_WORD = re.compile(r"[\s(]*([A-Z]+)")
#: what makes a read a write (INSERT and MERGE always come with INTO)
_WRITE_INSIDE_READ = re.compile(
    r"\b(?:UPDATE|DELETE|INTO"
    r"|FOR\s+(?:NO\s+KEY\s+)?UPDATE|FOR\s+(?:KEY\s+)?SHARE)\b"
    # functions of PostgreSQL 15 (and common extensions) that change data, need a transaction id or
    # act on the server: a SELECT of them must run on the primary (a standby refuses most of them).
    # lo_* covers every large-object function (lo_get and lo_export read, and count too: the safe way)
    r"|\b(?:NEXTVAL|SETVAL|LO_\w+|LOWRITE|TXID_CURRENT|PG_CURRENT_XACT_ID|PG_NOTIFY"
    r"|PG_LOGICAL_EMIT_MESSAGE|PG_CREATE_RESTORE_POINT|PG_SWITCH_WAL|PG_START_BACKUP|PG_STOP_BACKUP"
    r"|PG_BACKUP_START|PG_BACKUP_STOP|PG_TERMINATE_BACKEND|PG_CANCEL_BACKEND|PG_RELOAD_CONF"
    r"|PG_ROTATE_LOGFILE|PG_PROMOTE|PG_WAL_REPLAY_PAUSE|PG_WAL_REPLAY_RESUME|PG_STAT_RESET\w*"
    r"|PG_\w*REPLICATION_SLOT\w*|PG_REPLICATION_ORIGIN_\w+|PG_LOGICAL_SLOT_\w+|PG_IMPORT_SYSTEM_COLLATIONS"
    r"|BRIN_SUMMARIZE_\w+|BRIN_DESUMMARIZE_RANGE|GIN_CLEAN_PENDING_LIST|PG_FILE_\w+|DBLINK\w*)\s*\("
)
#: EXPLAIN, its options, and the statement it explains; only with ANALYZE does that statement run
_EXPLAIN = re.compile(
    r"[\s(]*EXPLAIN\s*(?:\((?P<options>[^()]*)\)|(?P<legacy>(?:\s*\b(?:ANALYZE|ANALYSE|VERBOSE)\b)*))"
    r"(?P<statement>.*)",
    re.DOTALL,
)
#: after COPY: ( query ) TO …, or a table (and its columns) FROM or TO: the first of these two words, as
#: both are reserved (never a bare name)
_COPY = re.compile(r"\s*(?:\((?P<query>.*)|.*?\b(?P<direction>FROM|TO)\b)", re.DOTALL)
_CURSOR_QUERY = re.compile(r".*?\bCURSOR\s+(?:WITH(?:OUT)?\s+HOLD\s+)?FOR\b(.*)", re.DOTALL)
#: after PREPARE: a name, maybe (types), AS and the statement (AS is reserved: no name or type holds it)
_PREPARED = re.compile(r".*?\bAS\b(?P<query>.*)|\s+TRANSACTION\s*$", re.DOTALL)

#: session state a statement's command leaves (matched at its start). SET LOCAL, SET TRANSACTION and
#: SET CONSTRAINTS last until the transaction ends; SET ROLE, SET SESSION … and every other SET do not.
#: DO and CALL run code that may do anything, as cursor.callproc does
_SESSION_STATEMENT = re.compile(
    r"\s*(?:SET\b(?!\s+(?:LOCAL|TRANSACTION|CONSTRAINTS)\b)|RESET\b|LISTEN\b|LOAD\b|DO\b|CALL\b"
    r"|PREPARE\b(?!\s+TRANSACTION\s*$)|DECLARE\b.*?\bCURSOR\s+WITH\s+HOLD\b"
    r"|CREATE\s+(?:OR\s+REPLACE\s+)?(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b)",
    re.DOTALL,
)
#: session state anywhere in a statement: SELECT … INTO TEMP, the temporary schema, session-level advisory
#: locks (the _xact_ ones end with the transaction), set_config (its is_local argument is not read)
_SESSION_ANYWHERE = re.compile(
    r"INTO\s+(?:(?:GLOBAL|LOCAL)\s+)?TEMP(?:ORARY)?\b|PG_TEMP|PG_(?:TRY_)?ADVISORY_LOCK|SET_CONFIG\s*\("
)


def _text(sql: Any) -> str | None:
    if isinstance(sql, str):
        return sql
    if isinstance(sql, bytes):
        return sql.decode("utf-8", "replace")
    return None  # psycopg2.sql.Composed and friends: cannot be read without a connection


_CACHE_LIMIT = 4096
_cache: dict[str, tuple[bool, bool]] = {}


def classify(sql: Any) -> tuple[bool, bool]:
    """Return ``(is_write(sql), changes_session_state(sql))``, cached by SQL text."""
    if isinstance(sql, str):
        hit = _cache.get(sql)
        if hit is not None:
            return hit
        result = _judge(sql)
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()  # crude but bounded; ORM workloads have far fewer distinct statements
        _cache[sql] = result
        return result
    text = _text(sql)
    return (True, True) if text is None else _judge(text)


def is_write(sql: Any) -> bool:
    """Return whether executing ``sql`` may change data (unknown statements count as writes)."""
    text = _text(sql)
    return True if text is None else _judge(text)[0]


def changes_session_state(sql: Any) -> bool:
    """Return whether ``sql`` may leave session state behind that the next borrower must not see."""
    text = _text(sql)
    return True if text is None else _judge(text)[1]


def _judge(text: str) -> tuple[bool, bool]:
    """Return ``(is_write, changes_session_state)`` for a text: one statement of it is enough for each."""
    blanked = _blank(text)
    if blanked is None:
        return True, True
    statements = blanked.split(";")
    write = any(map(_statement_is_write, statements))
    session = any(map(_SESSION_STATEMENT.match, statements)) or _SESSION_ANYWHERE.search(blanked) is not None
    return write, session


def _statement_is_write(statement: str) -> bool:
    match = _FIRST_WORD.match(statement)
    if match is None:
        return bool(statement.strip())  # an empty statement does nothing; anything else is unknown
    word = match.group(1)
    if word == "EXPLAIN":  # only EXPLAIN ANALYZE runs the statement: judged as if it ran
        explain = _EXPLAIN.match(statement)
        assert explain is not None  # the statement starts with EXPLAIN: the pattern always matches
        options = explain.group("options") or explain.group("legacy") or ""
        return "ANALY" in options and _statement_is_write(explain.group("statement"))
    if word in _READS:
        # SELECT … INTO, data-modifying CTEs, row locks and functions with side effects need the primary
        return _WRITE_INSIDE_READ.search(statement) is not None
    if word == "COPY":
        copy = _COPY.match(statement, match.end())
        if copy is None:
            return True
        if copy.group("query") is not None:  # the query decides: COPY (DELETE … RETURNING *) TO writes
            return _statement_is_write(copy.group("query"))
        return copy.group("direction") == "FROM"
    if word == "DECLARE":  # the cursor's query decides: FOR UPDATE locks rows
        query = _CURSOR_QUERY.match(statement)
        return query is None or _statement_is_write(query.group(1))
    if word == "PREPARE":  # the prepared statement decides; PREPARE TRANSACTION 'id' ends a transaction
        prepared = _PREPARED.match(statement, match.end())
        if prepared is None:
            return True
        return prepared.group("query") is not None and _statement_is_write(prepared.group("query"))
    return word not in _NEUTRAL  # EXECUTE counts: what it runs is not in the text
