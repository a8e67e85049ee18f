"""The replicarouter demo: a real cluster, the notes site behind an HTTP server, users and visitors.

1. starts a PostgreSQL primary, two streaming replicas and Redis with ``replicarouter.testing``;
2. migrates the notes site (demo/demosite, demo/notes) and serves it with ``manage.py runserver``;
3. sends real HTTP traffic in three phases: every replica fresh; replay paused on replica1 (it stops
   applying the primary's changes, as a replica under heavy load or a long query does); replay resumed.
   Users (each a session with its own cookies) write notes and read them back at once and a little later;
   visitors (no session, no writes) browse notes and a report;
4. prints where each kind of read went and what users saw, then ``manage.py replicastatus`` and the
   site's Prometheus metrics, and stops everything.

Exit status 1 when a user missed their own note (stale read) or a request failed, so CI runs it too.
"""

from __future__ import annotations

import argparse
import collections
import http.cookiejar
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote, urlencode

DEMO = Path(__file__).resolve().parent
sys.path.insert(0, str(DEMO.parent))

from replicarouter.testing import LocalCluster  # noqa: E402

NODES = ("primary", "replica1", "replica2")


@dataclass
class Phase:
    """What happened during one phase of traffic."""

    title: str
    reads: collections.Counter[tuple[str, str]] = field(default_factory=collections.Counter)
    writes: int = 0
    stale: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def read(self, kind: str, node: str) -> None:
        with self.lock:
            self.reads[kind, node] += 1

    def fail(self, what: str, stale: bool = False) -> None:
        with self.lock:
            (self.stale if stale else self.errors).append(what)


class Browser:
    """One HTTP client with its own cookie jar (one session)."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.opener = urllib.request.build_opener(
            urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar())
        )

    def call(self, method: str, path: str, **params: str) -> tuple[int, dict[str, Any]]:
        """Send one request; return the status and the JSON answer."""
        data = urlencode(params).encode() if method == "POST" else None
        url = self.base + path + ("?" + urlencode(params) if method == "GET" and params else "")
        request = urllib.request.Request(url, data=data, method=method)
        try:
            with self.opener.open(request, timeout=10) as response:
                return response.status, json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            return exc.code, {"error": exc.read()[:200].decode(errors="replace")}


def user(name: str, base: str, phases: list[Phase], current: list[int], stop: threading.Event) -> None:
    """Log in, then write notes and read them back: at once, and again a moment later."""
    browser = Browser(base)
    browser.call("POST", "/login/", name=name)
    n = 0
    while not stop.is_set():
        n += 1
        try:
            status, answer = browser.call("POST", "/notes/", title=f"{name}'s note {n}", tags="demo")
            if status != 201:
                phases[current[0]].fail(f"{name}: write answered {status}")
                continue
            phases[current[0]].writes += 1
            note_id = answer["id"]
            for pause in (0.0, 0.15, 0.3):
                time.sleep(pause)
                status, mine = browser.call("GET", "/notes/")
                if status != 200:
                    phases[current[0]].fail(f"{name}: reading own notes answered {status}")
                    continue
                phases[current[0]].read("own", mine["served_by"])
                if note_id not in mine["ids"]:
                    phases[current[0]].fail(
                        f"{name}: note {note_id} missing (read from {mine['served_by']})", stale=True
                    )
            status, one = browser.call("GET", f"/notes/{note_id}/")
            if status != 200:
                phases[current[0]].fail(f"{name}: note {note_id} answered {status}", stale=status == 404)
            else:
                phases[current[0]].read("own", one["served_by"])
        except Exception as exc:  # a refused connection, a timeout: count it, go on
            phases[current[0]].fail(f"{name}: {type(exc).__name__}: {exc}")


def visitor(
    names: list[str], base: str, phases: list[Phase], current: list[int], stop: threading.Event
) -> None:
    """Browse other people's notes and the report, without a session or a write."""
    browser = Browser(base)
    turn = 0
    while not stop.is_set():
        turn += 1
        try:
            if turn % 5 == 0:
                status, answer = browser.call("GET", "/report/")
            else:
                status, answer = browser.call("GET", "/notes/", owner=names[turn % len(names)])
            if status != 200:
                phases[current[0]].fail(f"visitor: answered {status}")
            else:
                phases[current[0]].read("visitor", answer["served_by"])
        except Exception as exc:
            phases[current[0]].fail(f"visitor: {type(exc).__name__}: {exc}")
        time.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def site_environment(cluster: LocalCluster) -> dict[str, str]:
    """Return the environment that points demosite.settings at ``cluster`` (see the settings module)."""

    def url(alias: str) -> str:
        entry = cluster.databases()[alias]
        password = ":" + quote(entry["PASSWORD"], safe="") if entry["PASSWORD"] else ""
        return f"postgres://{quote(entry['USER'])}{password}@{entry['HOST']}:{entry['PORT']}/{entry['NAME']}"

    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "demosite.settings",
        "PYTHONPATH": os.pathsep.join([str(DEMO), str(DEMO.parent)]),
        "DEMO_PRIMARY_URL": url("default"),
        "DEMO_REPLICA_URLS": ",".join(url(r.name) for r in cluster.replicas),
        "REDIS_URL": cluster.replicarouter_settings()["REDIS_URL"],
        "DEMO_CHECK_INTERVAL": "0.2",
        "DEMO_MAX_LAG_SECONDS": "1.0",
    }


def manage(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEMO / "manage.py"), *args], env=env, cwd=DEMO, capture_output=True, text=True
    )


def wait_until_serving(base: str, server: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"the site exited ({server.returncode}):\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(base + "/healthz", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise SystemExit(f"the site did not answer within 30 s:\n{log.read_text()[-3000:]}")


def table(phases: list[Phase]) -> str:
    head = ["phase", "writes", "own reads: primary", "replica1", "replica2", "visitors: primary", "replica1",
            "replica2", "stale", "errors"]  # fmt: skip
    rows = [head]
    for phase in phases:
        row = [phase.title, str(phase.writes)]
        for kind in ("own", "visitor"):
            row += [str(phase.reads[kind, node]) for node in NODES]
        rows.append([*row, str(len(phase.stale)), str(len(phase.errors))])
    widths = [max(len(r[i]) for r in rows) for i in range(len(head))]
    return "\n".join(
        "  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths, strict=True)))
        for r in rows
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=float, default=3.0, help="length of each traffic phase (default 3)")
    parser.add_argument("--users", type=int, default=4, help="users that write and read (default 4)")
    parser.add_argument("--visitors", type=int, default=2, help="sessions that only read (default 2)")
    args = parser.parse_args()
    started = time.monotonic()
    with LocalCluster(replicas=2) as cluster, tempfile.TemporaryDirectory(prefix="rr-demo-") as tmp:
        ports = ", ".join(f"{n.name} :{n.port}" for n in cluster.nodes)
        print(f"cluster up in {cluster.startup_seconds:.1f} s: {ports}, redis :{cluster.redis_port}")
        env = site_environment(cluster)
        migrated = manage(env, "migrate", "--noinput")
        if migrated.returncode:
            print(migrated.stdout, migrated.stderr)
            return 1
        cluster.wait_caught_up()
        print("notes site migrated on the primary (the replicas got the tables by replication)")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        log = Path(tmp) / "site.log"
        with log.open("wb") as out:
            server = subprocess.Popen(
                [sys.executable, str(DEMO / "manage.py"), "runserver", f"127.0.0.1:{port}", "--noreload"],
                env=env, cwd=DEMO, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            wait_until_serving(base, server, log)
            print(
                f"site serving at {base} (manage.py runserver; replicarouter backend, router, middleware)\n"
            )
            return traffic(cluster, env, base, args) or 0
        finally:
            server.terminate()
            server.wait(10)
            print(
                f"\nsite stopped; cluster stopped and removed; demo took {time.monotonic() - started:.1f} s"
            )


def traffic(cluster: LocalCluster, env: dict[str, str], base: str, args: argparse.Namespace) -> int:
    names = ["alice", "bob", "carol", "dave", "erin", "frank", "grace", "heidi"][: args.users]
    phases = [Phase("all replicas fresh"), Phase("replica1 replay paused"), Phase("replica1 resumed")]
    current = [0]
    stop = threading.Event()
    threads = [threading.Thread(target=user, args=(n, base, phases, current, stop)) for n in names]
    threads += [
        threading.Thread(target=visitor, args=(names, base, phases, current, stop))
        for _ in range(args.visitors)
    ]
    print(
        f"{len(names)} users write notes and read them back; {args.visitors} visitors browse "
        f"({args.seconds:g} s per phase)"
    )
    for thread in threads:
        thread.start()
    try:
        time.sleep(args.seconds)
        cluster.pause_replay("replica1")  # returns once replay has stopped
        current[0] = 1
        paused = time.monotonic()
        print("replay paused on replica1: it stops applying the primary's changes")
        excluded_after = None
        while time.monotonic() - paused < args.seconds + 1.0:
            state = _node(base, "replica1")
            if excluded_after is None and state.get("state") == "lagging":
                excluded_after = time.monotonic() - paused
                print(
                    f"  the monitor reports replica1 lagging after {excluded_after:.1f} s (lag "
                    f"{state['lag_seconds']} s, {state['lag_bytes']} bytes): plain reads avoid it now"
                )
            time.sleep(0.1)
        held = cluster.node("replica1").scalar("SELECT count(*) FROM notes_note")
        total = cluster.primary.scalar("SELECT count(*) FROM notes_note")
        print(
            f"  replica1 holds {held} notes, the primary {total}: reading replica1 would miss {total - held}"
        )
        current[0] = 2
        cluster.resume_replay("replica1")
        resumed = time.monotonic()
        while _node(base, "replica1").get("state") != "up" and time.monotonic() - resumed < 10:
            time.sleep(0.05)
        print(
            "replay resumed: replica1 caught up and is back in rotation after "
            f"{time.monotonic() - resumed:.1f} s"
        )
        time.sleep(args.seconds)
    finally:
        stop.set()
        for thread in threads:
            thread.join(15)
        cluster.resume_replay("replica1")
    print("\nwhere reads went (requests answered by each server) and what users saw:\n")
    print(table(phases))
    paused_own = phases[1].reads["own", "replica1"]
    print(
        f"\nown reads served by replica1 while its replay was paused: {paused_own} (only right after the "
        "pause, of notes written before it: a replica serves a user only past their last write)"
    )
    problems = [p for phase in phases for p in phase.stale + phase.errors]
    writes = sum(phase.writes for phase in phases)
    own = sum(n for phase in phases for (kind, _), n in phase.reads.items() if kind == "own")
    stale = sum(len(p.stale) for p in phases)
    errors = sum(len(p.errors) for p in phases)
    print(f"users wrote {writes} notes and read their own notes {own} times: {stale} stale, {errors} errors")
    early = phases[1].reads["visitor", "replica1"]
    print(
        f"visitors' reads of replica1 while paused ({early}) came before it passed MAX_LAG_SECONDS (1 s "
        "here): reads with no pending write of their own accept lag up to that bound"
    )
    for problem in problems[:10]:
        print("  !", problem)

    print("\n$ python manage.py replicastatus")
    status = manage(env, "replicastatus")
    print(status.stdout.rstrip() or status.stderr.rstrip())
    print(f"(exit status {status.returncode}; its pool columns are its own process's, which holds none: "
          "the site's pools are in the metrics below)")  # fmt: skip
    _print_metrics(base)
    return 1 if problems else 0


def _node(base: str, alias: str) -> dict[str, Any]:
    with urllib.request.urlopen(base + "/status/", timeout=5) as response:
        cluster = json.loads(response.read())["clusters"]["default"]
    return next((n for n in [cluster["primary"], *cluster["replicas"]] if n["alias"] == alias), {})


def _print_metrics(base: str) -> None:
    try:
        with urllib.request.urlopen(base + "/metrics", timeout=5) as response:
            text = response.read().decode()
    except urllib.error.HTTPError:
        print("\n(/metrics not served: install the prometheus extra)")
        return
    wanted = tuple(
        f"replicarouter_{name}"
        for name in ("reads_routed", "writes_routed", "sticky_decisions", "pool_checked_out", "pool_idle")
    )
    lines = [line for line in text.splitlines() if line.startswith(wanted)]
    print("\n$ curl -s " + base + "/metrics | grep -E 'routed|sticky_decisions|pool_(checked_out|idle)'")
    print("\n".join(lines))


if __name__ == "__main__":
    sys.exit(main())
