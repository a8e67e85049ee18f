"""A real primary + streaming replicas + Redis as local processes, for tests (``LocalCluster``).

Design: the cluster lives in one private directory (see ``registry``); the primary comes from ``initdb``,
each replica from ``pg_basebackup -R`` of it, so replication is PostgreSQL's own streaming replication,
not an imitation. Servers run as the ``postgres`` account when we are root (PostgreSQL refuses root) and
as ourselves otherwise; ``servers.LocalServers`` runs their programs. Teardown is driven by the directory
alone and is registered with ``weakref.finalize``, so it runs on ``close()``, on exceptions in ``with``, on
garbage collection and at interpreter exit; a process killed outright leaves a directory that the next
cluster (or ``down --all``) reaps.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Self, Unpack

from . import procs, registry
from .base import BASE_CONF, ClusterBase, ClusterOptions
from .binaries import Binaries, find_binaries
from .faults import StopMode, check_stop_mode
from .node import ClusterError, Node, wait_for
from .procs import redis_ping
from .servers import LocalServers

__all__ = ["BASE_CONF", "SSL_CERT_FILE", "SSL_KEY_FILE", "LocalCluster", "redis_ping"]

logger = logging.getLogger("replicarouter.testing")

#: with ``ssl=True``: the self-signed certificate and its key, in the cluster directory
SSL_CERT_FILE = "server.crt"
SSL_KEY_FILE = "server.key"


class LocalCluster(ClusterBase):
    """A PostgreSQL primary, ``replicas`` streaming hot standbys and a Redis, on 127.0.0.1 free ports.

    Use it as a context manager (``with LocalCluster() as cluster:``) or call ``up()`` and ``close()``.
    With ``ssl=True`` every server also accepts TLS, with a self-signed certificate for 127.0.0.1; node
    settings stay the same and clients opt in (``OPTIONS={"sslmode": "require"}``).
    """

    def __init__(
        self,
        replicas: int = 2,
        *,
        binaries: Binaries | None = None,
        os_user: str | None = None,
        root: Path | None = None,
        ssl: bool = False,
        **options: Unpack[ClusterOptions],
    ) -> None:
        super().__init__(replicas, **options)
        self.binaries = binaries
        self.os_user_name = os_user
        self.root = root
        self.ssl = ssl
        self.dir: Path | None = None
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self._os_user: procs.OsUser | None = None
        self._local_servers: LocalServers | None = None

    # -- lifecycle --------------------------------------------------------------------------------

    def up(self) -> Self:
        """Start every server and wait until each replica streams from the primary."""
        if self.dir is not None:
            raise ClusterError("this cluster is already up")
        started = time.monotonic()
        self.binaries = self.binaries or find_binaries()
        self._os_user = procs.OsUser.for_servers(self.os_user_name)
        root = self.root or registry.runtime_root()
        registry.reap_stale(root)
        self.dir = Path(tempfile.mkdtemp(prefix="cluster-", dir=root))
        self._os_user.chown(self.dir)
        # from here on, whatever happens, the directory and its servers go away with this object
        self._finalizer = weakref.finalize(self, registry.teardown, self.dir)
        self._local_servers = LocalServers(
            self.dir, self._os_user, self.binaries, self.timeout, self.password
        )

        ports = procs.free_ports(self.replica_count + 2)
        self.redis_port = ports.pop()
        primary = Node("primary", "127.0.0.1", ports.pop(0), self.dbname, self.user, self.password, "primary")
        self.nodes = [primary] + [
            Node(f"replica{i}", "127.0.0.1", port, self.dbname, self.user, self.password, "replica")
            for i, port in enumerate(ports, start=1)
        ]
        self._write_record()
        if self.with_redis:
            self.redis_proc = self._servers.start_redis(self.redis_port)
        if self.ssl:
            self._servers.make_certificate(self.dir / SSL_CERT_FILE, self.dir / SSL_KEY_FILE)
        self._init_primary(primary)
        self._clone_replicas()
        wait_for(
            "every replica to stream from the primary",
            self._all_streaming,
            timeout=self.timeout,
        )
        if self.with_redis:
            self._wait_redis(up=True)
        self.startup_seconds = time.monotonic() - started
        self._write_record()
        logger.info(
            "local cluster up in %.2f s at %s: primary :%d, replicas %s, redis :%d",
            self.startup_seconds,
            self.dir,
            primary.port,
            [r.port for r in self.replicas],
            self.redis_port,
        )
        return self

    def down(self) -> None:
        """Stop every server immediately and remove the cluster directory."""
        super().down()
        if self.redis_proc is not None:
            if self.redis_proc.poll() is None:  # started but killed before it wrote its pid file
                self.redis_proc.kill()
            self.redis_proc.wait(timeout=5)  # reap our child
            self.redis_proc = None

    # -- building ---------------------------------------------------------------------------------

    @property
    def _servers(self) -> LocalServers:
        assert self._local_servers is not None, "cluster is not up"
        return self._local_servers

    def datadir(self, node: str | Node) -> Path:
        """Return the data directory of ``node``."""
        assert self.dir is not None, "cluster is not up"
        return self.dir / self.node(node).name

    def logfile(self, node: str | Node) -> Path:
        """Return the server log of ``node``."""
        assert self.dir is not None, "cluster is not up"
        return self.dir / f"{self.node(node).name}.log"

    def _conf_lines(self, node: Node) -> str:
        assert self.dir is not None
        overrides = {
            "port": str(node.port),
            "cluster_name": f"'{node.name}'",
            "unix_socket_directories": f"'{self.dir}'",
        }
        if self.ssl:
            # absolute paths into the cluster directory: the replicas' copies of this file find them too
            overrides["ssl"] = "on"
            overrides["ssl_cert_file"] = f"'{self.dir / SSL_CERT_FILE}'"
            overrides["ssl_key_file"] = f"'{self.dir / SSL_KEY_FILE}'"
        return self._server_conf(node.name, overrides)

    def _append_conf(self, node: Node) -> None:
        with open(self.datadir(node) / "postgresql.conf", "a") as conf:
            conf.write(self._conf_lines(node))

    def _init_primary(self, primary: Node) -> None:
        self._servers.initdb(self.datadir(primary), self.user)
        self._append_conf(primary)
        self._pg_ctl_start(primary)
        if self.dbname != "postgres":
            conn = primary.connect(dbname="postgres")
            try:
                with conn.cursor() as cur:
                    cur.execute(f'CREATE DATABASE "{self.dbname}"')
            finally:
                conn.close()

    def _clone_replicas(self) -> None:
        primary = self.primary
        backups = []
        for replica in self.replicas:
            conninfo = (
                f"host={primary.host} port={primary.port} user={self.user} application_name={replica.name}"
            )
            backups.append(self._servers.basebackup(conninfo, self.datadir(replica)))
        for proc in backups:
            procs.finish(proc, self.timeout)
        starts = []
        for replica in self.replicas:
            self._append_conf(replica)
            starts.append(self._servers.spawn_pg_ctl_start(self.datadir(replica), self.logfile(replica)))
        for replica, proc in zip(self.replicas, starts, strict=True):
            try:
                procs.finish(proc, self.timeout)
            except ClusterError as exc:
                raise ClusterError(f"{exc}\n{self._log_tail(replica)}") from exc

    def _pg_ctl_start(self, node: Node) -> None:
        try:
            self._servers.pg_ctl_start(self.datadir(node), self.logfile(node))
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self._log_tail(node)}") from exc

    def _log_tail(self, node: Node, lines: int = 20) -> str:
        try:
            text = self.logfile(node).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log for {node.name})"
        return f"last lines of {self.logfile(node)}:\n" + "\n".join(text)

    def _write_record(self) -> None:
        assert self.dir is not None
        record = {
            "owner_pid": os.getpid(),
            "started_by": self.started_by,
            "dir": str(self.dir),
            "created": time.time(),
            "os_user": self._os_user.name if self._os_user else None,
            "startup_seconds": self.startup_seconds,
            "settings": self.describe(),
        }
        registry.write_record(self.dir, record)

    def _upstream_conninfo(self, upstream: Node, follower: Node) -> str:
        conninfo = (
            f"host={upstream.host} port={upstream.port} user={self.user} application_name={follower.name}"
        )
        if self.password:
            conninfo += f" password={self.password}"
        return conninfo

    def _is_sender(self, primary: Node, sender_host: str | None, sender_port: int | None) -> bool:
        return sender_port == primary.port

    # -- node faults ------------------------------------------------------------------------------

    def postmaster_pid(self, node: str | Node) -> int | None:
        """Return the pid of ``node``'s postmaster, or None when it is not running."""
        return procs.postmaster_pid(self.datadir(node))

    def stop(self, node: str | Node, mode: StopMode = "fast") -> None:
        """Stop ``node``: ``smart``/``fast``/``immediate`` through pg_ctl, ``kill`` = SIGKILL its processes.

        Returns once the node's port refuses connections.
        """
        target = self.node(node)
        check_stop_mode(mode)
        pid = self.postmaster_pid(target)
        if pid is None:
            raise ClusterError(f"{target.name} is not running")
        self.faults.stopped.add(target.name)
        if mode == "kill":
            procs.kill_tree(pid)
            # where pid 1 does not reap orphans the dead postmaster stays a zombie, which PostgreSQL's
            # lock-file checks take for a live server: the lock files of a killed server must go
            assert self.dir is not None
            (self.datadir(target) / "postmaster.pid").unlink(missing_ok=True)
            (self.dir / f".s.PGSQL.{target.port}.lock").unlink(missing_ok=True)
        else:
            if target.name in self.faults.frozen:  # a stopped process cannot act on pg_ctl's signal
                procs.signal_pids(procs.process_tree(pid), signal.SIGCONT)
            self._servers.pg_ctl_stop(self.datadir(target), mode)
        self.faults.frozen.discard(target.name)
        self._wait_refused(target)
        logger.info("stopped %s (mode %s)", target.name, mode)

    def start(self, node: str | Node) -> None:
        """Start a stopped ``node``; return once it accepts connections (and streams, for a replica)."""
        target = self.node(node)
        if self.postmaster_pid(target) is not None:
            raise ClusterError(f"{target.name} is already running")
        self._pg_ctl_start(target)
        self.faults.stopped.discard(target.name)
        self._after_restart(target)
        logger.info("started %s", target.name)

    def freeze(self, node: str | Node) -> None:
        """SIGSTOP ``node``'s whole process tree; return once every process of it is stopped."""
        target = self.node(node)
        pid = self.postmaster_pid(target)
        if pid is None:
            raise ClusterError(f"{target.name} is not running")
        self.faults.frozen.add(target.name)
        procs.signal_pids([pid], signal.SIGSTOP)  # the postmaster first: it cannot fork while stopped

        def all_stopped() -> bool:
            tree = procs.process_tree(pid)
            procs.signal_pids(tree, signal.SIGSTOP)
            return all(procs.process_state(p) in ("T", "t", None) for p in tree)

        wait_for(f"every process of {target.name} to stop", all_stopped, timeout=self.timeout)
        logger.info("froze %s (pid %d and children)", target.name, pid)

    def thaw(self, node: str | Node) -> None:
        """SIGCONT ``node``'s process tree; return once it accepts connections again."""
        target = self.node(node)
        pid = self.postmaster_pid(target)
        if pid is None:
            raise ClusterError(f"{target.name} is not running")
        tree = procs.process_tree(pid)
        procs.signal_pids(tree[1:], signal.SIGCONT)
        procs.signal_pids([pid], signal.SIGCONT)
        self.faults.frozen.discard(target.name)
        self._after_restart(target)
        logger.info("thawed %s", target.name)

    # -- redis ------------------------------------------------------------------------------------

    def stop_redis(self) -> None:
        """Stop the cluster's Redis (SIGTERM, nothing is saved); return once its port refuses connections."""
        if self.redis_proc is None:
            raise ClusterError("redis is not running")
        if self.faults.redis_frozen:  # a stopped process cannot act on SIGTERM
            self.thaw_redis()
        self.faults.redis_stopped = True
        self.redis_proc.terminate()
        try:
            self.redis_proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            self.redis_proc.kill()
            self.redis_proc.wait()
        self.redis_proc = None
        self._wait_redis(up=False)
        logger.info("stopped redis :%d", self.redis_port)

    def start_redis(self) -> None:
        """Start the cluster's Redis again on the same port (empty); return once it answers PING."""
        if self.redis_proc is not None:
            raise ClusterError("redis is already running")
        self.redis_proc = self._servers.start_redis(self.redis_port)
        self._wait_redis(up=True)
        self.faults.redis_stopped = False
        logger.info("started redis :%d", self.redis_port)

    def freeze_redis(self) -> None:
        """SIGSTOP the cluster's Redis; return once it is stopped (clients' calls then time out)."""
        if self.redis_proc is None:
            raise ClusterError("redis is not running")
        pid = self.redis_proc.pid
        self.faults.redis_frozen = True
        procs.signal_pids([pid], signal.SIGSTOP)
        wait_for("redis to stop", lambda: procs.process_state(pid) in ("T", "t", None), timeout=self.timeout)
        logger.info("froze redis :%d (pid %d)", self.redis_port, pid)

    def thaw_redis(self) -> None:
        """SIGCONT the cluster's Redis (its data intact); return once it answers PING."""
        if self.redis_proc is not None:  # else the wait below says that it does not answer
            procs.signal_pids([self.redis_proc.pid], signal.SIGCONT)
        self.faults.redis_frozen = False
        self._wait_redis(up=True)
        logger.info("thawed redis :%d", self.redis_port)
