"""Command line for local test clusters: ``python -m replicarouter.testing up | status | down``.

``up`` runs in the foreground until Ctrl-C, SIGTERM or ``down`` from another shell; ``status`` lists this
user's clusters and whether each server answers; ``down --all`` also removes leftovers of crashed runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import signal
import sys
import time
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from . import procs, registry
from .binaries import BinariesNotFound
from .node import ClusterError, Node
from .procs import redis_ping
from .settings import cluster as make_cluster
from .settings import environment


class _Stop(Exception):
    """Raised in the main thread by SIGTERM/SIGHUP so that ``up`` tears its cluster down."""


def _raise_stop(signum: int, frame: FrameType | None) -> None:
    raise _Stop(signal.Signals(signum).name)


def cmd_up(args: argparse.Namespace, out: TextIO) -> int:
    # A process started in the background by a non-interactive shell inherits SIGINT ignored, and Python
    # then never raises KeyboardInterrupt: install the handler ourselves so Ctrl-C always stops ``up``.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_stop)
    kwargs: dict[str, Any] = {"replicas": args.replicas}
    if args.password:
        kwargs["password"] = args.password
    cluster = make_cluster(backend=args.backend, **kwargs)
    cluster.started_by = "cli"
    try:
        cluster.up()
        data = cluster.describe()
        data["dir"] = str(getattr(cluster, "dir", "") or "")
        data["startup_seconds"] = getattr(cluster, "startup_seconds", None)
        data["env"] = environment(cluster)
        if args.json:
            out.write(json.dumps(data, sort_keys=True) + "\n")
        else:
            _print_up(cluster.nodes, data, out)
        out.flush()
        while True:
            signal.pause()
    except (KeyboardInterrupt, _Stop):
        pass
    finally:
        started = time.monotonic()
        cluster.down()
        print(f"cluster stopped and removed in {time.monotonic() - started:.2f} s", file=sys.stderr)
    return 0


def _print_up(nodes: list[Node], data: dict[str, Any], out: TextIO) -> None:
    out.write(f"replicarouter.testing cluster up in {data['startup_seconds']:.2f} s ({data['dir']})\n\n")
    for node in nodes:
        out.write(f"  {node.name:<10} {node.role:<8} {node.host}:{node.port:<6} {node.url}\n")
    out.write(f"  {'redis':<10} {'':<8} {data['redis_url']}\n\n")
    out.write("# for your shell or settings module:\n")
    for key, value in data["env"].items():
        out.write(f"export {key}={shlex.quote(value)}\n")
    out.write("\n# Django settings:\n")
    out.write(f"DATABASES = {json.dumps(data['DATABASES'], indent=4)}\n")
    out.write(f"REPLICAROUTER = {json.dumps(data['REPLICAROUTER'], indent=4)}\n\n")
    out.write("Ctrl-C here, or `python -m replicarouter.testing down` elsewhere, stops it.\n")


def _node_state(node: dict[str, Any], timeout: float = 1.0) -> str:
    probe = Node(node["name"], node["host"], node["port"], node["dbname"], node["user"])
    try:
        in_recovery = probe.scalar("SELECT pg_is_in_recovery()", timeout=timeout)
    except Exception:
        return "down"
    return "replica" if in_recovery else "primary"


def cluster_status(directory: Path) -> dict[str, Any]:
    """Return what ``status`` shows for one cluster directory."""
    record = registry.read_record(directory) or {}
    settings = record.get("settings") or {}
    nodes = [
        {
            "name": n["name"],
            "port": n["port"],
            "configured_role": n["role"],
            "state": _node_state(n),
        }
        for n in settings.get("nodes", [])
    ]
    redis_url = settings.get("redis_url", "")
    redis_up = False
    if redis_url:
        host_port = redis_url.split("//", 1)[1].split("/", 1)[0]
        host, _, port = host_port.rpartition(":")
        redis_up = redis_ping(host, int(port))
    return {
        "dir": str(directory),
        "owner_pid": record.get("owner_pid"),
        "owner_alive": registry.owner_alive(directory),
        "nodes": nodes,
        "redis": {"url": redis_url, "state": "up" if redis_up else "down"},
    }


def cmd_status(args: argparse.Namespace, out: TextIO) -> int:
    statuses = [cluster_status(d) for d in registry.cluster_dirs()]
    if args.json:
        out.write(json.dumps({"clusters": statuses}, indent=2) + "\n")
    elif not statuses:
        out.write("no replicarouter.testing cluster is running\n")
    for status in statuses if not args.json else []:
        owner = "running" if status["owner_alive"] else "gone (leftover: `down --all` removes it)"
        out.write(f"{status['dir']}  owner pid {status['owner_pid']} {owner}\n")
        for node in status["nodes"]:
            out.write(f"  {node['name']:<10} :{node['port']:<6} {node['state']}\n")
        out.write(f"  {'redis':<10} {status['redis']['url']} {status['redis']['state']}\n")
    healthy = bool(statuses) and all(
        s["owner_alive"] and s["redis"]["state"] == "up" and all(n["state"] != "down" for n in s["nodes"])
        for s in statuses
    )
    return 0 if healthy else 1


def cmd_down(args: argparse.Namespace, out: TextIO) -> int:
    if args.dirs:
        targets = [Path(d) for d in args.dirs]
    else:
        targets = registry.cluster_dirs()
        if not args.all:
            targets = [d for d in targets if (registry.read_record(d) or {}).get("started_by") == "cli"]
    if not targets:
        out.write("nothing to stop\n")
        return 0
    for directory in targets:
        record = registry.read_record(directory) or {}
        owner = int(record.get("owner_pid") or 0)
        if owner and owner != os.getpid() and procs.alive(owner) and record.get("started_by") == "cli":
            # the `up` process tears down its own cluster; give it the chance, then make sure
            procs.signal_pids([owner], signal.SIGTERM)
            procs.wait_gone([owner], timeout=10)
        if directory.exists():
            registry.teardown(directory)
        out.write(f"stopped and removed {directory}\n")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m replicarouter.testing",
        description="Run a local PostgreSQL primary + streaming replicas + Redis for development and tests.",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start a cluster in the foreground and print its settings")
    up.add_argument("--replicas", type=int, default=2, help="number of streaming replicas (default 2)")
    up.add_argument("--json", action="store_true", help="print the settings as one line of JSON")
    up.add_argument("--password", help="require this password (default: trust authentication)")
    up.add_argument("--backend", choices=["auto", "local", "docker"], default=None)
    status = commands.add_parser("status", help="list this user's clusters and whether each server answers")
    status.add_argument("--json", action="store_true")
    down = commands.add_parser("down", help="stop clusters started by `up` (and remove their files)")
    down.add_argument("--all", action="store_true", help="every cluster of this user, crashed runs included")
    down.add_argument("dirs", nargs="*", help="cluster directories (as `status` shows them)")
    return parser


def main(argv: list[str] | None = None, out: TextIO | None = None) -> int:
    """Run the command line; return its exit status."""
    args = build_parser().parse_args(argv)
    out = out or sys.stdout
    handlers = {"up": cmd_up, "status": cmd_status, "down": cmd_down}
    try:
        return handlers[args.command](args, out)
    except (BinariesNotFound, ClusterError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
