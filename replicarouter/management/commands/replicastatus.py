"""``manage.py replicastatus``: every node's role, state, lag and pool use; exit 0 / 1 / 2.

Strings in the table may come from Redis (a leader's snapshot: errors, the leader's name) or from a
server's error message: every one goes through ``printable``, so that no control character (an ANSI
escape, a carriage return, a bidi override) reaches the operator's terminal. ``--json`` escapes them as
JSON does.
"""

from __future__ import annotations

import json
import sys
import time
import unicodedata
from typing import Any

from django.core.management.base import BaseCommand, CommandError

from replicarouter.exceptions import ReplicaRouterError
from replicarouter.observability.report import EXIT_CRITICAL, EXIT_DEGRADED, exit_code, status

VERDICT = {0: "healthy", EXIT_DEGRADED: "DEGRADED", EXIT_CRITICAL: "CRITICAL"}


def printable(value: object) -> str:
    """Return ``str(value)`` with every control or format character escaped (``\\x1b``, ``\\u202e``)."""
    text = str(value)
    if text.isprintable():
        return text
    return "".join(
        ch if ch == " " or not unicodedata.category(ch).startswith(("C", "Z")) else ascii(ch)[1:-1]
        for ch in text
    )


def _lag(node: dict[str, Any]) -> str:
    if node["role"] == "primary" and not node.get("promoted"):
        return "-"
    if node["lag_bytes"] is None:
        return "unknown"
    seconds = "?" if node["lag_seconds"] is None else f"{node['lag_seconds']:.1f} s"
    return f"{node['lag_bytes']} B / {seconds}"


def _age(checked_at: str | None) -> str:
    if checked_at is None:
        return "never"
    from datetime import datetime

    seconds = time.time() - datetime.fromisoformat(checked_at).timestamp()
    return f"{max(0.0, seconds):.1f} s ago"


def render(data: dict[str, Any]) -> str:
    """Return the human-readable table of a ``status()`` result."""
    lines = []
    header = (
        "alias",
        "host:port",
        "role",
        "state",
        "lag",
        "last check",
        "pool (out/size+ovf, idle)",
        "error",
    )
    for name, cluster in data["clusters"].items():
        monitor = cluster["monitor"]
        lines.append(
            printable(
                f"cluster {name!r}: source {monitor.get('source')}, leader {monitor.get('leader') or '-'}, "
                f"redis {monitor.get('redis')}, snapshot age {monitor.get('age_seconds')} s"
            )
        )
        nodes = [cluster["primary"], *cluster["replicas"]]
        reported = nodes[0]["pool"].get("processes", 1)
        lines.append(f"  pools: summed over {reported} process{'' if reported == 1 else 'es'}")
        writer = cluster.get("writes_to")
        lines.append(
            "  writes go to: "
            + printable(
                f"{writer or 'NOWHERE (writes fail with PrimaryUnavailable)'}"
                + (f" ({cluster['writer_reason']})" if cluster.get("writer_reason") else "")
            )
        )
        rows: list[tuple[str, ...]] = [header]
        for node in nodes:
            pool = node["pool"]
            role = node["role"] + (" (PROMOTED)" if node.get("promoted") else "")
            role += " (FENCED)" if node.get("fenced") else ""
            cells = (
                node["alias"],
                f"{node['host'] or '-'}:{node['port'] or '-'}",
                role,
                node["state"],
                _lag(node),
                _age(node["checked_at"]),
                f"{pool['checked_out']}/{pool['size']}+{pool['overflow']}, {pool['idle']}",
                printable(node["error"] or "")[:60],
            )
            rows.append(tuple(printable(cell) for cell in cells))
        widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
        for row in rows:
            lines.append("  " + "  ".join(str(cell).ljust(widths[i]) for i, cell in enumerate(row)).rstrip())
        lines.append("")
    return "\n".join(lines)


class Command(BaseCommand):
    help = "Show every node's role, state, lag and pool use (exit 0 healthy, 1 degraded, 2 critical)."

    requires_system_checks: list[str] = []

    def add_arguments(self, parser: Any) -> None:
        parser.add_argument("--json", action="store_true", help="print the status as JSON")
        parser.add_argument(
            "--watch", type=float, metavar="SECONDS", help="refresh every SECONDS until Ctrl-C"
        )
        parser.add_argument("--cluster", metavar="NAME", help="only this cluster")

    def handle(self, *args: Any, **options: Any) -> None:
        watch = options["watch"]
        if watch is not None and watch <= 0:
            raise CommandError("--watch needs a positive number of seconds")
        code = 0
        try:
            while True:
                code = self._once(options)
                if watch is None:
                    break
                time.sleep(watch)
        except KeyboardInterrupt:
            pass
        sys.exit(code)

    def _once(self, options: dict[str, Any]) -> int:
        try:
            data = status(options["cluster"])
        except ReplicaRouterError as exc:
            raise CommandError(str(exc)) from exc
        if options["cluster"] and not data["clusters"]:
            raise CommandError(f"no cluster named {options['cluster']!r}")
        code = exit_code(data)
        if options["json"]:
            self.stdout.write(json.dumps(data, indent=2))
        else:
            if options["watch"] is not None:
                self.stdout.write("\x1b[2J\x1b[H", ending="")
            self.stdout.write(render(data))
            self.stdout.write(f"status: {VERDICT[code]} (exit {code})")
        self.stdout.flush()
        return code
