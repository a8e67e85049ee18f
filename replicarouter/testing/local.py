"""A real primary + streaming replicas + Redis as local processes, for tests (``LocalCluster``).

Design: the cluster lives in one private directory (see ``registry``); the primary comes from ``initdb``,
each replica from ``pg_basebackup -R`` of it, so replication is PostgreSQL's own streaming replication,
not an imitation. Servers run as the ``postgres`` account when we are root (PostgreSQL refuses root) and
as ourselves otherwise. Teardown is driven by the directory alone and is registered with
``weakref.finalize``, so it runs on ``close()``, on exceptions in ``with``, on garbage collection and at
interpreter exit; a process killed outright leaves a directory that the next cluster (or
``down --all``) reaps.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import weakref
from pathlib import Path
from typing import Any, Self

from . import procs, registry
from .base import STOP_MODES, ClusterBase, ClusterError, Node, StopMode, wait_for
from .binaries import Binaries, find_binaries

logger = logging.getLogger("replicarouter.testing")

#: server settings for speed and for fast, observable replication; see docs/testing.md
BASE_CONF: dict[str, str] = {
    "listen_addresses": "'127.0.0.1'",
    "fsync": "off",  # never synchronous_commit=off: it adds ~200 ms of replica lag
    "wal_level": "replica",
    "max_wal_senders": "10",
    "max_replication_slots": "10",
    "wal_keep_size": "'512MB'",  # replicas re-pointed after a promotion still find their WAL
    "hot_standby": "on",
    "hot_standby_feedback": "on",
    "wal_log_hints": "on",  # lets pg_rewind turn an old primary into a replica
    "wal_retrieve_retry_interval": "'200ms'",  # replicas re-follow quickly after a restart
    "wal_receiver_status_interval": "'1s'",
    "wal_sender_timeout": "'10s'",
    "wal_receiver_timeout": "'10s'",
    "max_connections": "200",
    "shared_buffers": "'32MB'",
    "log_line_prefix": "'%m [%p] %q%a '",
}

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
        dbname: str = "replicarouter",
        user: str = "postgres",
        password: str | None = None,
        binaries: Binaries | None = None,
        os_user: str | None = None,
        root: Path | None = None,
        conf: dict[str, str] | None = None,
        redis: bool = True,
        ssl: bool = False,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            replicas=replicas,
            dbname=dbname,
            user=user,
            password=password,
            conf=conf,
            redis=redis,
            timeout=timeout,
        )
        self.binaries = binaries
        self.os_user_name = os_user
        self.root = root
        self.ssl = ssl
        self.dir: Path | None = None
        self.redis_proc: subprocess.Popen[bytes] | None = None
        self.startup_seconds: float | None = None
        self._os_user: procs.OsUser | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

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

        ports = procs.free_ports(self.replica_count + 2)
        self.redis_port = ports.pop()
        primary = Node("primary", "127.0.0.1", ports.pop(0), self.dbname, self.user, self.password, "primary")
        self.nodes = [primary] + [
            Node(f"replica{i}", "127.0.0.1", port, self.dbname, self.user, self.password, "replica")
            for i, port in enumerate(ports, start=1)
        ]
        self._write_record()
        if self.with_redis:
            self._start_redis_process()
        if self.ssl:
            self._make_certificate()
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
        if self._finalizer is not None:
            self._finalizer()
        if self.redis_proc is not None:
            if self.redis_proc.poll() is None:  # started but killed before it wrote its pid file
                self.redis_proc.kill()
            self.redis_proc.wait(timeout=5)  # reap our child
            self.redis_proc = None

    @property
    def is_up(self) -> bool:
        """Return whether ``up()`` ran and ``down()`` has not."""
        return self._finalizer is not None and self._finalizer.alive

    # -- building ---------------------------------------------------------------------------------

    def datadir(self, node: str | Node) -> Path:
        """Return the data directory of ``node``."""
        assert self.dir is not None, "cluster is not up"
        return self.dir / self.node(node).name

    def logfile(self, node: str | Node) -> Path:
        """Return the server log of ``node``."""
        assert self.dir is not None, "cluster is not up"
        return self.dir / f"{self.node(node).name}.log"

    def _run(self, *args: str, timeout: float | None = None, env: dict[str, str] | None = None) -> str:
        assert self.dir is not None and self._os_user is not None
        return procs.run(
            args, user=self._os_user, cwd=self.dir, timeout=timeout or self.timeout, env=env
        ).stdout

    def _spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        assert self.dir is not None and self._os_user is not None
        return procs.spawn(args, user=self._os_user, cwd=self.dir, env=env)

    def _pg(self, tool: str) -> str:
        assert self.binaries is not None
        return self.binaries.pg(tool)

    def _env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def _conf_lines(self, node: Node) -> str:
        assert self.dir is not None
        conf = dict(BASE_CONF)
        conf.update(self.extra_conf)
        conf["port"] = str(node.port)
        conf["cluster_name"] = f"'{node.name}'"
        conf["unix_socket_directories"] = f"'{self.dir}'"
        if self.ssl:
            # absolute paths into the cluster directory: the replicas' copies of this file find them too
            conf["ssl"] = "on"
            conf["ssl_cert_file"] = f"'{self.dir / SSL_CERT_FILE}'"
            conf["ssl_key_file"] = f"'{self.dir / SSL_KEY_FILE}'"
        body = "".join(f"{key} = {value}\n" for key, value in conf.items())
        return f"\n# replicarouter.testing ({node.name})\n{body}"

    def _append_conf(self, node: Node) -> None:
        with open(self.datadir(node) / "postgresql.conf", "a") as conf:
            conf.write(self._conf_lines(node))

    def _make_certificate(self) -> None:
        """Write a self-signed certificate and its key for 127.0.0.1 into the cluster directory."""
        assert self.dir is not None and self._os_user is not None
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ClusterError("LocalCluster(ssl=True) needs the openssl command line tool")
        cert, key = self.dir / SSL_CERT_FILE, self.dir / SSL_KEY_FILE
        self._run(
            openssl, "req", "-x509",
            "-newkey", "rsa:2048",
            "-nodes",
            "-days", "2",
            "-subj", "/CN=127.0.0.1",
            "-keyout", str(key),
            "-out", str(cert),
        )  # fmt: skip
        key.chmod(0o600)  # PostgreSQL refuses a key that others can read
        for path in (cert, key):
            self._os_user.chown(path)

    def _init_primary(self, primary: Node) -> None:
        assert self.dir is not None and self._os_user is not None
        args = [
            self._pg("initdb"),
            "-D", str(self.datadir(primary)),
            "-U", self.user,
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        pwfile = self.dir / "pwfile"
        if self.password:
            pwfile.write_text(self.password + "\n")
            self._os_user.chown(pwfile)
            args += [f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256"]
        else:
            args += ["--auth=trust"]
        try:
            self._run(*args, env=self._env())
        finally:
            pwfile.unlink(missing_ok=True)
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
            backups.append(
                self._spawn(
                    self._pg("pg_basebackup"),
                    "-d", conninfo,
                    "-D", str(self.datadir(replica)),
                    "-R",
                    "-X", "stream",
                    "-c", "fast",
                    "--no-sync",
                    env=self._env(),
                )
            )  # fmt: skip
        for proc in backups:
            procs.finish(proc, self.timeout)
        starts = []
        for replica in self.replicas:
            self._append_conf(replica)
            starts.append(self._spawn(*self._pg_ctl_start_args(replica), env=self._env()))
        for replica, proc in zip(self.replicas, starts, strict=True):
            try:
                procs.finish(proc, self.timeout)
            except ClusterError as exc:
                raise ClusterError(f"{exc}\n{self._log_tail(replica)}") from exc

    def _pg_ctl_start_args(self, node: Node) -> list[str]:
        # -l matters: without a log file the server inherits our pipes and communicate() never returns
        return [
            self._pg("pg_ctl"),
            "-D", str(self.datadir(node)),
            "-l", str(self.logfile(node)),
            "-w", "-t", str(int(self.timeout)),
            "start",
        ]  # fmt: skip

    def _pg_ctl_start(self, node: Node) -> None:
        try:
            self._run(*self._pg_ctl_start_args(node), env=self._env())
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self._log_tail(node)}") from exc

    def _log_tail(self, node: Node, lines: int = 20) -> str:
        try:
            text = self.logfile(node).read_text(errors="replace").splitlines()[-lines:]
        except OSError:
            return f"(no log for {node.name})"
        return f"last lines of {self.logfile(node)}:\n" + "\n".join(text)

    def _all_streaming(self) -> bool:
        wanted = {r.name for r in self.replicas}
        if not wanted:
            return True
        rows = self.primary.query(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        )
        return wanted <= {row[0] for row in rows}

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

    # -- node faults ------------------------------------------------------------------------------

    def postmaster_pid(self, node: str | Node) -> int | None:
        """Return the pid of ``node``'s postmaster, or None when it is not running."""
        return procs.postmaster_pid(self.datadir(node))

    def stop(self, node: str | Node, mode: StopMode = "fast") -> None:
        """Stop ``node``: ``smart``/``fast``/``immediate`` through pg_ctl, ``kill`` = SIGKILL its processes.

        Returns once the node's port refuses connections.
        """
        target = self.node(node)
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(STOP_MODES)}, not {mode!r}")
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
            self._run(
                self._pg("pg_ctl"), "-D", str(self.datadir(target)), "-m", mode, "-w",
                "-t", str(int(self.timeout)), "stop",
            )  # fmt: skip
        self.faults.frozen.discard(target.name)
        wait_for(f"{target.name} to refuse connections", lambda: not procs.port_open(target.port),
                 timeout=self.timeout)  # fmt: skip
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

    def _start_redis_process(self) -> None:
        assert self.dir is not None and self.binaries is not None
        redis_dir = self.dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        self.redis_proc = subprocess.Popen(
            [
                str(self.binaries.redis_server),
                "--port", str(self.redis_port),
                "--bind", "127.0.0.1",
                "--save", "",
                "--appendonly", "no",
                "--dir", str(redis_dir),
                "--pidfile", str(self.dir / registry.REDIS_PIDFILE),
                "--logfile", str(self.dir / "redis.log"),
                "--daemonize", "no",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,  # a Ctrl-C in the terminal must not kill it before our teardown runs
        )  # fmt: skip

    def _wait_redis(self, *, up: bool) -> None:
        def state_reached() -> bool:
            return redis_ping(self.redis_host, self.redis_port) is up

        wait_for(
            f"redis on :{self.redis_port} to be {'up' if up else 'down'}",
            state_reached,
            timeout=self.timeout,
        )

    def stop_redis(self) -> None:
        """Stop the cluster's Redis (SIGTERM, nothing is saved); return once its port refuses connections."""
        if self.redis_proc is None:
            raise ClusterError("redis is not running")
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
        self._start_redis_process()
        self._wait_redis(up=True)
        self.faults.redis_stopped = False
        logger.info("started redis :%d", self.redis_port)


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return whether a Redis server answers PING on ``host:port`` (raw protocol, no client library)."""
    import socket

    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False
