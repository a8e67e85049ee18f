"""The server processes of a local cluster: initdb, pg_basebackup, pg_ctl, openssl and redis-server.

Design: ``LocalServers`` is the mechanism ``LocalCluster`` drives. It knows the cluster directory, the
binaries and the account the servers run as (PostgreSQL refuses root, so as root that is ``postgres``),
and runs each tool there; it knows files and ports, never nodes or roles, which stay with the cluster.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

from . import procs, registry
from .binaries import Binaries
from .node import ClusterError


class LocalServers:
    """Run PostgreSQL's and Redis's programs for one cluster directory, as the servers' account."""

    def __init__(
        self, directory: Path, os_user: procs.OsUser, binaries: Binaries, timeout: float, password: str | None
    ) -> None:
        self.dir = directory
        self.os_user = os_user
        self.binaries = binaries
        self.timeout = timeout
        self.password = password

    def run(self, *args: str, timeout: float | None = None, env: dict[str, str] | None = None) -> str:
        """Run a tool to completion in the cluster directory and return its output (see ``procs.run``)."""
        return procs.run(
            args, user=self.os_user, cwd=self.dir, timeout=timeout or self.timeout, env=env
        ).stdout

    def spawn(self, *args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
        """Start a tool in the cluster directory without waiting (finish it with ``procs.finish``)."""
        return procs.spawn(args, user=self.os_user, cwd=self.dir, env=env)

    def pg(self, tool: str) -> str:
        """Return the path of PostgreSQL program ``tool``."""
        return self.binaries.pg(tool)

    def env(self) -> dict[str, str]:
        """Return the environment for PostgreSQL's programs: no inherited ``PG*`` variables, C locale."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env["LC_ALL"] = "C"
        if self.password:
            env["PGPASSWORD"] = self.password
        return env

    def make_certificate(self, cert: Path, key: Path) -> None:
        """Write a self-signed certificate for 127.0.0.1 and its key, readable by the servers only."""
        openssl = shutil.which("openssl")
        if openssl is None:
            raise ClusterError("LocalCluster(ssl=True) needs the openssl command line tool")
        self.run(
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
            self.os_user.chown(path)

    def initdb(self, datadir: Path, user: str) -> None:
        """Create a data directory whose superuser is ``user`` (with the password, when there is one)."""
        args = [
            self.pg("initdb"),
            "-D", str(datadir),
            "-U", user,
            "-E", "UTF8",
            "--locale=C",
            "--no-sync",
        ]  # fmt: skip
        pwfile = self.dir / "pwfile"
        if self.password:
            pwfile.write_text(self.password + "\n")
            self.os_user.chown(pwfile)
            args += [f"--pwfile={pwfile}", "--auth-local=trust", "--auth-host=scram-sha-256"]
        else:
            args += ["--auth=trust"]
        try:
            self.run(*args, env=self.env())
        finally:
            pwfile.unlink(missing_ok=True)

    def basebackup(self, conninfo: str, datadir: Path) -> subprocess.Popen[str]:
        """Start cloning the server ``conninfo`` names into ``datadir`` as a standby (``-R``)."""
        return self.spawn(
            self.pg("pg_basebackup"),
            "-d", conninfo,
            "-D", str(datadir),
            "-R",
            "-X", "stream",
            "-c", "fast",
            "--no-sync",
            env=self.env(),
        )  # fmt: skip

    def pg_ctl_start(self, datadir: Path, logfile: Path) -> None:
        """Start ``datadir``'s server with ``pg_ctl start`` and wait until it accepts connections."""
        self.run(*self._pg_ctl_start_args(datadir, logfile), env=self.env())

    def spawn_pg_ctl_start(self, datadir: Path, logfile: Path) -> subprocess.Popen[str]:
        """Begin ``pg_ctl_start`` without waiting (finish it with ``procs.finish``)."""
        return self.spawn(*self._pg_ctl_start_args(datadir, logfile), env=self.env())

    def _pg_ctl_start_args(self, datadir: Path, logfile: Path) -> list[str]:
        # -l matters: without a log file the server inherits our pipes and communicate() never returns
        return [
            self.pg("pg_ctl"),
            "-D", str(datadir),
            "-l", str(logfile),
            "-w", "-t", str(int(self.timeout)),
            "start",
        ]  # fmt: skip

    def pg_ctl_stop(self, datadir: Path, mode: str) -> None:
        """Stop ``datadir``'s server with ``pg_ctl -m mode`` and wait until it is down."""
        self.run(
            self.pg("pg_ctl"), "-D", str(datadir), "-m", mode, "-w",
            "-t", str(int(self.timeout)), "stop",
        )  # fmt: skip

    def start_redis(self, port: int) -> subprocess.Popen[bytes]:
        """Start redis-server on 127.0.0.1:``port``, without persistence (files in the cluster directory)."""
        redis_dir = self.dir / "redis"
        redis_dir.mkdir(exist_ok=True)
        return subprocess.Popen(
            [
                str(self.binaries.redis_server),
                "--port", str(port),
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
