"""Structured logs: every log call of the package names its event; the JSON formatter prints the fields."""

from __future__ import annotations

import ast
import json
import logging
from pathlib import Path

import replicarouter
from replicarouter.observability.logs import JSONFormatter

PACKAGE = Path(replicarouter.__file__).parent


def _log_calls():
    for path in sorted(PACKAGE.rglob("*.py")):
        if "testing" in path.relative_to(PACKAGE).parts:
            continue  # the test harness logs for developers, not for operators
        source = path.read_text()
        for node in ast.walk(ast.parse(source)):
            if (
                isinstance(node, ast.Call)
                and isinstance(node.func, ast.Attribute)
                and node.func.attr in ("info", "warning", "error", "log")
                and getattr(node.func.value, "id", None) == "logger"
            ):
                yield f"{path.name}:{node.lineno}", ast.get_source_segment(source, node) or ""


def test_every_operator_log_line_names_its_event():
    calls = list(_log_calls())
    assert len(calls) >= 20  # the scan found the package's log calls
    missing = [where for where, text in calls if "replicarouter_event" not in text and "_event(" not in text]
    assert not missing, f"log calls without replicarouter_event: {missing}"


def test_json_formatter_prints_message_and_fields():
    record = logging.LogRecord(
        "replicarouter.health", logging.WARNING, __file__, 1, "node %s: %s", ("r1", "down"), None
    )
    record.replicarouter_event = "node_state"
    record.replicarouter_node = "r1"
    record.replicarouter_lag_bytes = None
    data = json.loads(JSONFormatter().format(record))
    assert data["message"] == "node r1: down"
    assert data["level"] == "WARNING" and data["logger"] == "replicarouter.health"
    assert data["event"] == "node_state" and data["node"] == "r1" and data["lag_bytes"] is None
    assert data["time"].endswith("+00:00")


def test_json_formatter_includes_the_exception():
    try:
        raise RuntimeError("boom")
    except RuntimeError:
        import sys

        record = logging.LogRecord(
            "replicarouter.health", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    data = json.loads(JSONFormatter().format(record))
    assert "RuntimeError: boom" in data["exception"]
