"""Where local clusters live on disk, and how to tear one down from its directory alone.

Every local cluster gets a directory under ``runtime_root()`` holding its data directories, logs, Redis
pid file and a ``cluster.json`` record (owner pid, ports, settings). Teardown needs nothing but that
directory, so the clusters of a crashed test run (or a ``kill -9``'d ``up``) can be found and removed by
``python -m replicarouter.testing down --all`` or by the next cluster that starts.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from . import procs

logger = logging.getLogger("replicarouter.testing")

RECORD = "cluster.json"
REDIS_PIDFILE = "redis.pid"


def runtime_root() -> Path:
    """Return the directory holding this user's local clusters (``REPLICAROUTER_TESTING_DIR`` overrides)."""
    override = os.environ.get("REPLICAROUTER_TESTING_DIR")
    root = (
        Path(override) if override else Path(tempfile.gettempdir()) / f"replicarouter-testing-{os.geteuid()}"
    )
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    # the servers may run as another user (postgres, when we are root): let it reach its own directories
    root.chmod(0o755)
    return root


def write_record(directory: Path, record: dict[str, Any]) -> None:
    """Atomically write a cluster's ``cluster.json``."""
    tmp = directory / (RECORD + ".tmp")
    tmp.write_text(json.dumps(record, indent=2, sort_keys=True))
    tmp.replace(directory / RECORD)


def read_record(directory: Path) -> dict[str, Any] | None:
    """Return a cluster's record, or None when it is missing or unreadable (a half-started cluster)."""
    try:
        data = json.loads((directory / RECORD).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def cluster_dirs(root: Path | None = None) -> list[Path]:
    """Return the directories of every local cluster of this user, oldest first."""
    root = root or runtime_root()
    dirs = [p for p in root.glob("cluster-*") if p.is_dir()]
    return sorted(dirs, key=lambda p: p.stat().st_mtime)


def owner_alive(directory: Path) -> bool:
    """Return whether the process that started the cluster in ``directory`` still runs."""
    record = read_record(directory)
    if record is None:
        return False
    pid = int(record.get("owner_pid", 0))
    return pid > 0 and procs.alive(pid)


def redis_pid(directory: Path) -> int | None:
    """Return the pid of the cluster's live redis-server, from its pid file."""
    try:
        pid = int((directory / REDIS_PIDFILE).read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if procs.alive(pid) and "redis" in procs.cmdline(pid) else None


def datadirs(directory: Path) -> list[Path]:
    """Return the PostgreSQL data directories inside a cluster directory."""
    return sorted(p.parent for p in directory.glob("*/PG_VERSION"))


def teardown(directory: Path, *, remove: bool = True, timeout: float = 5.0) -> None:
    """Stop every server of the cluster in ``directory`` (immediate shutdown) and delete the directory.

    Frozen servers are continued first so that they can act on the shutdown signal; whatever has not exited
    within ``timeout`` is killed.
    """
    waiting: list[int] = []
    trees: list[int] = []
    for datadir in datadirs(directory):
        pid = procs.postmaster_pid(datadir)
        if pid is None:
            continue
        tree = procs.process_tree(pid)
        procs.signal_pids(tree, signal.SIGCONT)
        procs.signal_pids([pid], signal.SIGQUIT)  # immediate shutdown: the data is thrown away anyway
        waiting.append(pid)
        trees.extend(tree)
    rpid = redis_pid(directory)
    if rpid is not None:
        procs.signal_pids([rpid], signal.SIGCONT)
        procs.signal_pids([rpid], signal.SIGTERM)
        waiting.append(rpid)
        trees.append(rpid)
    left = procs.wait_gone(waiting, timeout)
    for pid in left:
        logger.warning("server %d did not stop within %.1f s, killing it", pid, timeout)
        procs.kill_tree(pid)
    # backends outlive a SIGQUIT'd postmaster for a moment; never leave one behind
    procs.signal_pids(procs.wait_gone(trees, timeout), signal.SIGKILL)
    if remove:
        shutil.rmtree(directory, ignore_errors=True)


def reap_stale(root: Path | None = None) -> list[Path]:
    """Tear down clusters whose owning process is gone (crashed runs); return their directories."""
    reaped = []
    for directory in cluster_dirs(root):
        if owner_alive(directory):
            continue
        record = read_record(directory)
        # a cluster being created right now has no record yet: leave young directories alone
        if record is None and _age(directory) < 120:
            continue
        logger.warning("removing leftover cluster %s (its owner process is gone)", directory)
        with contextlib.suppress(Exception):
            teardown(directory)
        reaped.append(directory)
    return reaped


def _age(path: Path) -> float:
    try:
        return time.time() - path.stat().st_mtime
    except OSError:
        return 0.0
