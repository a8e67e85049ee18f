"""Consistency soak: read-your-writes and monotonic reads under seeded single and composed faults.

Usage: .venv/bin/python benchmarks/consistency_soak.py [--seconds 60] [--seed N] [--order first|after-session]
           [--sticky lsn|time|off] [--monotonic on|off] [--json PATH]

One real cluster (primary + 2 streaming replicas + Redis) and a real gunicorn (2 gthread workers × 4
threads) serving ``benchmarks/soak``: Django's database sessions, ``ReplicaRouter`` and
``ReplicaRouterMiddleware`` (first, as docs/consistency.md recommends, or after SessionMiddleware with
``--order after-session``), replicarouter's default settings. Meanwhile:

- a *ticker* increments one row on the primary every 10 ms, so the value a node returns tells how far it
  had replayed;
- *clients*, each with its own cookie jar, one request at a time: a quarter of their requests write
  (``s`` = the client's next number into the session; seven in ten also insert a row (client, s)), the
  others read the session's ``s``, the client's newest row and the ticker. A read that returns less than
  the client's last acknowledged write is a **stale read**; a read that returns less than the client
  already read (ticker, row or session) is a **non-monotonic read**. Writes are never retried;
- *visitors* read without cookies (no guarantee to check: they are the replica traffic).

A seeded schedule of fault windows runs in between quiet periods, one of each kind in a seeded order
(repeated when the run is long): replica stopped, replica frozen (SIGSTOP), replay paused, paused *and*
frozen, backends terminated during a pause, replay delayed 1 s then the replica restarted, Redis stopped,
primary restarted. A window lasts from the fault until the cluster is healed again plus a grace of
``GRACE`` seconds; failed reads are allowed inside windows only.

At the end the primary's rows are checked against the acknowledged writes: a missing one is **lost**, a
(client, s) twice is **duplicated**. The soak prints a table per window and the totals, saves JSON, and
exits 1 on any stale or non-monotonic read, lost or duplicated write, failed request outside a window, or
a replica read share under ``--min-replica-share`` (default 0.4). ``--sticky off`` and ``--monotonic off``
switch our guarantees off to show that the soak catches their absence.
"""

from __future__ import annotations

import argparse
import collections
import http.cookiejar
import json
import os
import random
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import ensure_gunicorn  # noqa: E402
from replicarouter.testing import LocalCluster, procs  # noqa: E402
from replicarouter.testing.node import wait_for  # noqa: E402

CLIENTS = 12
VISITORS = 3
CLIENT_PAUSE = (0.0, 0.3)  # think time between a client's requests, seconds
VISITOR_PAUSE = (0.0, 0.05)
WORKERS = 2
THREADS = 4
WRITE_SHARE = 0.25
ROW_SHARE = 0.7
TICK = 0.01
QUIET = (2.0, 4.0)  # seconds between windows
FAULT = (1.5, 4.0)  # how long a fault stays on
GRACE = 2.0  # after the heal, still inside the window
REQUEST_TIMEOUT = 15.0
FAULTS = (
    "replica stopped",
    "replica frozen",
    "replay paused",
    "paused and frozen",
    "terminated during pause",
    "delay then restart",
    "redis stopped",
    "primary restarted",
)


@dataclass
class Result:
    """One request of a client or visitor, and what the checks made of it."""

    who: str
    kind: str  # "write" or "read"
    started: float
    ended: float
    ok: bool
    error: str = ""
    port: int | None = None
    stale: str = ""  # why it was stale ("" when it was not)
    backwards: str = ""  # why it went back in time ("" when it did not)


@dataclass
class Window:
    number: int
    fault: str
    target: str
    started: float
    healed: float = 0.0
    ended: float = 0.0
    error: str = ""

    def overlaps(self, result: Result) -> bool:
        return result.started <= self.ended and result.ended >= self.started


@dataclass
class Soak:
    base_url: str
    deadline: float
    epoch: float = field(default_factory=time.monotonic)
    results: list[Result] = field(default_factory=list)
    acknowledged: list[tuple[str, int]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def now(self) -> float:
        return time.monotonic() - self.epoch

    def add(self, result: Result, written: tuple[str, int] | None = None) -> None:
        with self.lock:
            self.results.append(result)
            if written is not None:
                self.acknowledged.append(written)

    def get(self, opener: urllib.request.OpenerDirector, path: str) -> tuple[bool, dict[str, Any], str]:
        try:
            with opener.open(self.base_url + path, timeout=REQUEST_TIMEOUT) as response:
                return True, json.loads(response.read()), ""
        except urllib.error.HTTPError as exc:
            return False, {}, f"HTTP {exc.code}"
        except Exception as exc:  # a reset or timeout is a failed request, not the soak's end
            return False, {}, type(exc).__name__


def client(soak: Soak, name: str, rng: random.Random) -> None:
    """One user with a cookie jar: writes, reads, and checks what it reads against what it did and saw."""
    opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(http.cookiejar.CookieJar()))
    seq = 0
    wrote_session = 0  # the last acknowledged s
    wrote_row = 0  # the last acknowledged row
    seen = {"session": 0, "note": 0, "ticker": 0}
    while soak.now() < soak.deadline:
        started = soak.now()
        if rng.random() < WRITE_SHARE:
            seq += 1
            row = rng.random() < ROW_SHARE
            ok, _, error = soak.get(opener, f"write?c={name}&s={seq}&k={'row' if row else 'session'}")
            if ok:
                wrote_session = seq
                wrote_row = seq if row else wrote_row
            soak.add(
                Result(name, "write", started, soak.now(), ok, error), (name, seq) if ok and row else None
            )
        else:
            ok, data, error = soak.get(opener, f"read?c={name}")
            result = Result(name, "read", started, soak.now(), ok, error, data.get("port"))
            if ok:
                values = {key: data[key] or 0 for key in seen}
                if values["session"] < wrote_session or values["note"] < wrote_row:
                    result.stale = (
                        f"read session {values['session']} / row {values['note']} after writing "
                        f"{wrote_session} / {wrote_row}"
                    )
                went_back = [f"{key} {values[key]} < {seen[key]}" for key in seen if values[key] < seen[key]]
                result.backwards = ", ".join(went_back)
                seen = {key: max(seen[key], values[key]) for key in seen}
            soak.add(result)
        time.sleep(rng.uniform(*CLIENT_PAUSE))


def visitor(soak: Soak, name: str, rng: random.Random) -> None:
    """A reader without cookies: no guarantee to check, only that its reads do not fail."""
    opener = urllib.request.build_opener()
    while soak.now() < soak.deadline:
        started = soak.now()
        ok, data, error = soak.get(opener, f"read?c={name}")
        soak.add(Result(name, "read", started, soak.now(), ok, error, data.get("port")))
        time.sleep(rng.uniform(*VISITOR_PAUSE))


def ticker(cluster: LocalCluster, stop: threading.Event) -> None:
    """Increment the ticker row on the primary every ``TICK`` seconds, reconnecting across restarts."""
    connection = None
    while not stop.is_set():
        try:
            if connection is None:
                connection = cluster.primary.connect(timeout=1.0)
                connection.autocommit = True
            with connection.cursor() as cursor:
                cursor.execute("UPDATE soak_ticker SET value = value + 1 WHERE id = 1")
        except Exception:
            connection = None
            stop.wait(0.2)
        stop.wait(TICK)
    if connection is not None:
        connection.close()


# -- faults ------------------------------------------------------------------------------------------------


def apply(cluster: LocalCluster, fault: str, target: str) -> Callable[[], None]:
    """Apply ``fault`` to ``target`` (a replica, or the primary / Redis); return what undoes it."""
    if fault == "replica stopped":
        cluster.stop(target)
        return lambda: cluster.start(target)
    if fault == "replica frozen":
        cluster.freeze(target)
        return lambda: cluster.thaw(target)
    if fault == "replay paused":
        cluster.pause_replay(target)
        return lambda: cluster.resume_replay(target)
    if fault == "paused and frozen":
        cluster.pause_replay(target)
        cluster.freeze(target)

        def undo_paused_frozen() -> None:
            cluster.thaw(target)
            cluster.resume_replay(target)

        return undo_paused_frozen
    if fault == "terminated during pause":
        cluster.pause_replay(target)
        time.sleep(0.3)
        cluster.terminate_backends(target)
        return lambda: cluster.resume_replay(target)
    if fault == "delay then restart":
        cluster.delay_replay(target, 1.0)

        def restart_delayed() -> None:
            cluster.stop(target)
            cluster.start(target)
            cluster.delay_replay(target, 0)

        return restart_delayed
    if fault == "redis stopped":
        cluster.stop_redis()
        return cluster.start_redis
    if fault == "primary restarted":
        cluster.stop(cluster.primary.name)
        return lambda: cluster.start(cluster.primary.name)
    raise ValueError(f"unknown fault {fault!r}")


def schedule(rng: random.Random) -> list[str]:
    """Every fault kind once, in a seeded order."""
    kinds = list(FAULTS)
    rng.shuffle(kinds)
    return kinds


def settle(cluster: LocalCluster) -> None:
    """Wait until every replica streams again and has caught up with the primary."""
    for replica in cluster.replicas:
        cluster.wait_streaming(replica, timeout=60)
    cluster.wait_caught_up(timeout=60)


def run_faults(cluster: LocalCluster, soak: Soak, rng: random.Random, windows: list[Window]) -> None:
    kinds: list[str] = []
    while True:
        quiet = rng.uniform(*QUIET)
        length = rng.uniform(*FAULT)
        if soak.now() + quiet + length + GRACE + 3.0 > soak.deadline:
            return
        time.sleep(quiet)
        kinds = kinds or schedule(rng)
        fault = kinds.pop(0)
        if fault == "redis stopped":
            target = "redis"
        elif fault == "primary restarted":
            target = cluster.primary.name
        else:
            target = rng.choice(cluster.replicas).name
        window = Window(len(windows) + 1, fault, target, soak.now())
        windows.append(window)
        print(f"  {window.started:6.1f} s  window {window.number}: {fault} ({target})", flush=True)
        try:
            undo = apply(cluster, fault, target)
            time.sleep(length)
            undo()
            settle(cluster)
        except Exception as exc:
            window.error = f"{type(exc).__name__}: {exc}"
            print(f"           could not apply or undo it: {window.error}", flush=True)
            cluster.heal()
            settle(cluster)
        window.healed = soak.now()
        time.sleep(GRACE)
        window.ended = soak.now()


# -- setup -------------------------------------------------------------------------------------------------


def create_tables(cluster: LocalCluster) -> None:
    cluster.primary.query(
        "CREATE TABLE soak_note (id bigserial PRIMARY KEY, client varchar(40) NOT NULL,"
        " seq integer NOT NULL);"
        "CREATE INDEX soak_note_client ON soak_note (client, seq);"
        "CREATE TABLE soak_ticker (id integer PRIMARY KEY, value bigint NOT NULL);"
        "INSERT INTO soak_ticker VALUES (1, 0);"
        "CREATE TABLE django_session (session_key varchar(40) PRIMARY KEY, session_data text NOT NULL,"
        " expire_date timestamptz NOT NULL);"
        "CREATE INDEX django_session_expire_date ON django_session (expire_date);"
    )
    cluster.wait_caught_up(timeout=60)


def start_gunicorn(cluster: LocalCluster, args: argparse.Namespace, logdir: Path) -> tuple[Any, int]:
    from replicarouter.testing import django_settings

    extra: dict[str, Any] = {"STICKY": args.sticky, "MONOTONIC_READS": args.monotonic == "on"}
    soak_settings = {
        **django_settings(cluster, **extra),
        "ORDER": args.order,
        "LOG": str(logdir / "replicarouter.log"),
    }
    port = procs.free_ports(1)[0]
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(SOAK_SETTINGS=json.dumps(soak_settings), PYTHONPATH=str(ROOT))
    command = [
        sys.executable, "-m", "gunicorn", "benchmarks.soak.wsgi:application",
        "--chdir", str(ROOT),
        "--bind", f"127.0.0.1:{port}",
        "--worker-class", "gthread",
        "--workers", str(WORKERS),
        "--threads", str(THREADS),
        "--timeout", "60",
        "--graceful-timeout", "5",
        "--log-level", "warning",
        "--error-logfile", str(logdir / "gunicorn.log"),
    ]  # fmt: skip
    proc = subprocess.Popen(
        command, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )

    def answers() -> bool:
        if proc.poll() is not None:
            log = (logdir / "gunicorn.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"gunicorn exited with {proc.returncode}:\n{log}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/read?c=probe", timeout=5) as response:
                return response.status == 200
        except Exception:
            return False

    wait_for("gunicorn to answer", answers, timeout=60)
    return proc, port


# -- report ------------------------------------------------------------------------------------------------


def lost_and_duplicated(cluster: LocalCluster, soak: Soak) -> tuple[list[str], list[str]]:
    rows = cluster.primary.query("SELECT client, seq, count(*) FROM soak_note GROUP BY client, seq")
    counts = {(client, seq): count for client, seq, count in rows}
    lost = [f"{c}:{s}" for c, s in soak.acknowledged if (c, s) not in counts]
    duplicated = [f"{c}:{s} x{n}" for (c, s), n in counts.items() if n > 1]
    return lost, duplicated


def summarise(rows: list[Result], replica_ports: set[int]) -> dict[str, Any]:
    reads = [r for r in rows if r.kind == "read"]
    answered = [r for r in reads if r.ok and r.port is not None]
    from_replicas = [r for r in answered if r.port in replica_ports]
    clients = [r for r in answered if r.who.startswith("c")]
    failures = collections.Counter(f"{r.kind} by {r.who[0]}: {r.error}" for r in rows if not r.ok)
    return {
        "requests": len(rows),
        "reads": len(reads),
        "writes": len(rows) - len(reads),
        "failed_reads": len([r for r in reads if not r.ok]),
        "failed_writes": len([r for r in rows if r.kind == "write" and not r.ok]),
        "stale_reads": len([r for r in rows if r.stale]),
        "non_monotonic_reads": len([r for r in rows if r.backwards]),
        "replica_read_share": round(len(from_replicas) / len(answered), 3) if answered else 0.0,
        "client_replica_read_share": (
            round(len([r for r in clients if r.port in replica_ports]) / len(clients), 3) if clients else 0.0
        ),
        "failures": dict(failures.most_common()),
    }


COLUMNS = (
    ("window", 7), ("fault", 24), ("target", 9), ("from s", 7), ("to s", 7), ("reads", 6), ("writes", 6),
    ("failed r/w", 10), ("stale", 5), ("non-mono", 8), ("replica %", 9), ("clients' replica %", 18),
)  # fmt: skip


def print_table(windows: list[dict[str, Any]], outside: dict[str, Any], totals: dict[str, Any]) -> None:
    print(" ".join(name.ljust(width) for name, width in COLUMNS))

    def line(label: str, fault: str, target: str, start: str, end: str, stats: dict[str, Any]) -> None:
        cells = (
            label, fault, target, start, end, stats["reads"], stats["writes"],
            f"{stats['failed_reads']}/{stats['failed_writes']}", stats["stale_reads"],
            stats["non_monotonic_reads"], f"{stats['replica_read_share'] * 100:.0f}",
            f"{stats['client_replica_read_share'] * 100:.0f}",
        )  # fmt: skip
        print(" ".join(str(cell).ljust(width) for cell, (_, width) in zip(cells, COLUMNS, strict=True)))

    for w in windows:
        start, end = f"{w['started']:.1f}", f"{w['ended']:.1f}"
        line(str(w["number"]), w["fault"], w["target"], start, end, w["stats"])
    line("outside", "(no fault)", "", "", "", outside)
    line("total", "", "", "", "", totals)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=None, help="default: random (printed, to replay a run)")
    parser.add_argument("--order", choices=("first", "after-session"), default="first")
    parser.add_argument("--sticky", choices=("lsn", "time", "off"), default="lsn")
    parser.add_argument("--monotonic", choices=("on", "off"), default="on")
    parser.add_argument("--min-replica-share", type=float, default=0.4)
    parser.add_argument("--json", type=Path, default=None, help="default: .soak/consistency_soak-SEED.json")
    args = parser.parse_args(argv)
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(2**32)
    out = args.json or ROOT / ".soak" / f"consistency_soak-{seed}.json"
    ensure_gunicorn()
    rng = random.Random(seed)
    print(
        f"consistency soak: {args.seconds:g} s, seed {seed}, middleware {args.order}, STICKY {args.sticky}, "
        f"MONOTONIC_READS {args.monotonic}; {CLIENTS} clients, {VISITORS} visitors, "
        f"gunicorn {WORKERS}x{THREADS}",
        flush=True,
    )
    logdir = Path(tempfile.mkdtemp(prefix="replicarouter-soak-"))
    windows: list[Window] = []
    with LocalCluster(replicas=2) as cluster:
        create_tables(cluster)
        proc, port = start_gunicorn(cluster, args, logdir)
        stop_ticker = threading.Event()
        tick = threading.Thread(target=ticker, args=(cluster, stop_ticker), daemon=True)
        tick.start()
        soak = Soak(f"http://127.0.0.1:{port}/", deadline=0.0)
        soak.deadline = args.seconds
        threads = [
            threading.Thread(target=client, args=(soak, f"c{i}", random.Random(rng.random())), daemon=True)
            for i in range(CLIENTS)
        ] + [
            threading.Thread(target=visitor, args=(soak, f"v{i}", random.Random(rng.random())), daemon=True)
            for i in range(VISITORS)
        ]
        try:
            for thread in threads:
                thread.start()
            run_faults(cluster, soak, random.Random(rng.random()), windows)
            for thread in threads:
                thread.join(timeout=args.seconds + REQUEST_TIMEOUT * 2)
            hung = [thread.name for thread in threads if thread.is_alive()]
            stop_ticker.set()
            tick.join(timeout=5)
            cluster.heal()
            lost, duplicated = lost_and_duplicated(cluster, soak)
            replica_ports = {replica.port for replica in cluster.replicas}
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
    return report(args, seed, soak, windows, lost, duplicated, hung, replica_ports, logdir, out)


def report(
    args: argparse.Namespace,
    seed: int,
    soak: Soak,
    windows: list[Window],
    lost: list[str],
    duplicated: list[str],
    hung: list[str],
    replica_ports: set[int],
    logdir: Path,
    out: Path,
) -> int:
    per_window = []
    for window in windows:
        rows = [r for r in soak.results if window.overlaps(r)]
        per_window.append({**asdict(window), "stats": summarise(rows, replica_ports)})
    outside_rows = [r for r in soak.results if not any(w.overlaps(r) for w in windows)]
    outside = summarise(outside_rows, replica_ports)
    totals = summarise(soak.results, replica_ports)
    print()
    print_table(per_window, outside, totals)
    violations = [f"stale read: {r.who} at {r.started:.2f} s: {r.stale}" for r in soak.results if r.stale]
    violations += [
        f"non-monotonic read: {r.who} at {r.started:.2f} s (port {r.port}): {r.backwards}"
        for r in soak.results
        if r.backwards
    ]
    violations += [f"lost write {item}" for item in lost]
    violations += [f"duplicated write {item}" for item in duplicated]
    violations += [
        f"failed {r.kind} outside fault windows: {r.who} at {r.started:.2f} s: {r.error}"
        for r in outside_rows
        if not r.ok
    ]
    violations += [f"window {w.number} ({w.fault}): {w.error}" for w in windows if w.error]
    violations += [f"thread {name} still running at the end" for name in hung]
    if totals["replica_read_share"] < args.min_replica_share:
        violations.append(
            f"replica read share {totals['replica_read_share']:.0%} < {args.min_replica_share:.0%}"
        )
    print(
        f"\nacknowledged writes with a row: {len(soak.acknowledged)}, lost {len(lost)}, "
        f"duplicated {len(duplicated)}; logs in {logdir}"
    )
    data = {
        "seed": seed,
        "seconds": args.seconds,
        "order": args.order,
        "sticky": args.sticky,
        "monotonic": args.monotonic,
        "clients": CLIENTS,
        "visitors": VISITORS,
        "gunicorn": f"{WORKERS}x{THREADS} gthread",
        "windows": per_window,
        "outside_windows": outside,
        "totals": totals,
        "acknowledged_row_writes": len(soak.acknowledged),
        "lost_writes": lost,
        "duplicated_writes": duplicated,
        "violations": violations,
        "logs": str(logdir),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    print(f"results: {out}")
    if violations:
        print(f"\n{len(violations)} violation(s):")
        for line in violations[:30]:
            print(f"  {line}")
        return 1
    print("no violations")
    return 0


if __name__ == "__main__":
    sys.exit(main())
