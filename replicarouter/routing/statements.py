"""Classify SQL statements: does this one write, does it leave session state behind? Pure functions.

``classify`` runs on every statement our backend executes. The ORM sends the same SQL text again and
again (parameters travel apart), so answers are cached by text: a hit costs one dict lookup. When unsure,
answers go the safe way: a statement of unknown kind is a write (its session's reads then stay on the
primary) and may change session state (the pool then resets the connection).
"""

from __future__ import annotations

import re
from typing import Any

#: statements that neither change data nor need the primary: transaction control, session commands, reads
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
        "PREPARE",
        "EXECUTE",
        "DECLARE",
    ]
)
_READS = frozenset(["SELECT", "WITH", "VALUES", "TABLE", "EXPLAIN"])

_FIRST_WORD = re.compile(r"\s*\(*\s*([A-Za-z]+)")
_WRITE_INSIDE_READ = re.compile(
    r"\b(?:INSERT|UPDATE|DELETE|MERGE|INTO|nextval|setval|FOR\s+(?:NO\s+KEY\s+)?UPDATE|FOR\s+(?:KEY\s+)?SHARE)\b",
    re.IGNORECASE,
)
_QUOTED = re.compile(r"\"(?:[^\"]|\"\")*\"|'(?:[^']|'')*'")
_COPY_TO = re.compile(r"\bTO\s+(?:STDOUT|PROGRAM|')", re.IGNORECASE)

_SESSION_STATE = re.compile(
    r"^\s*(?:SET(?!\s+(?:LOCAL|TRANSACTION|CONSTRAINTS)\b)|RESET|PREPARE|LISTEN|LOAD|DECLARE\b.*\bWITH\s+HOLD"
    r"|CREATE\s+(?:(?:GLOBAL|LOCAL)\s+)?(?:TEMP|TEMPORARY)\b)"
    r"|\bpg_advisory_(?:xact_)?lock|\bset_config\s*\(",
    re.IGNORECASE | re.DOTALL,
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
        result = (_text_is_write(sql), bool(_SESSION_STATE.search(sql)))
        if len(_cache) >= _CACHE_LIMIT:
            _cache.clear()  # crude but bounded; ORM workloads have far fewer distinct statements
        _cache[sql] = result
        return result
    return is_write(sql), changes_session_state(sql)


def is_write(sql: Any) -> bool:
    """Return whether executing ``sql`` may change data (unknown statements count as writes)."""
    text = _text(sql)
    return True if text is None else _text_is_write(text)


def _text_is_write(text: str) -> bool:
    match = _FIRST_WORD.match(text)
    if match is None:
        return bool(text.strip())
    word = match.group(1).upper()
    if word in _NEUTRAL:
        return False
    if word in _READS:
        # SELECT … INTO, data-modifying CTEs, row locks and sequence calls need the primary; quoted names
        # such as "update" are removed before concluding so that they do not count. Each becomes a space,
        # as it separates tokens for PostgreSQL: FROM"t"FOR SHARE must not turn into FROMFOR SHARE
        return bool(_WRITE_INSIDE_READ.search(text)) and bool(
            _WRITE_INSIDE_READ.search(_QUOTED.sub(" ", text))
        )
    if word == "COPY":
        return not _COPY_TO.search(text)
    return True


def changes_session_state(sql: Any) -> bool:
    """Return whether ``sql`` may leave session state behind that the next borrower must not see."""
    text = _text(sql)
    return True if text is None else bool(_SESSION_STATE.search(text))
