"""Process plumbing for local clusters: free ports, process trees from /proc, signals, run-as-user."""

from __future__ import annotations

import contextlib
import os
import pwd
import signal
import socket
import subprocess
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .node import ClusterError


def free_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports that are free on ``host`` right now."""
    sockets: list[socket.socket] = []
    try:
        for _ in range(count):
            sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            sock.bind((host, 0))
            sockets.append(sock)
        return [sock.getsockname()[1] for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def port_open(port: int, host: str = "127.0.0.1", timeout: float = 0.2) -> bool:
    """Return whether something accepts TCP connections on ``host:port``."""
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def redis_ping(host: str, port: int, timeout: float = 0.5) -> bool:
    """Return whether a Redis server answers PING on ``host:port`` (raw protocol, no client library)."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


def _stat_fields(pid: int) -> list[str] | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # the command name (field 2) may contain spaces and parentheses: split after its closing one
    return raw[raw.rindex(")") + 2 :].split()


def process_state(pid: int) -> str | None:
    """Return the one-letter state of ``pid`` (``R``, ``S``, ``T``, ``Z``…) or None if it does not exist."""
    fields = _stat_fields(pid)
    return fields[0] if fields else None


def alive(pid: int) -> bool:
    """Return whether ``pid`` exists and is not a zombie."""
    state = process_state(pid)
    return state is not None and state not in ("Z", "X")


def cmdline(pid: int) -> str:
    """Return the command line of ``pid`` joined by spaces ('' when it is gone)."""
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def process_tree(root: int) -> list[int]:
    """Return ``root`` and all its living descendants (parents before children)."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields and fields[0] not in ("Z", "X"):
            children.setdefault(int(fields[1]), []).append(int(entry))
    tree: list[int] = []
    todo = [root] if alive(root) else []
    while todo:
        pid = todo.pop(0)
        tree.append(pid)
        todo.extend(children.get(pid, []))
    return tree


def signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    """Send ``sig`` to every pid, ignoring ones that are already gone."""
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


def wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until none of ``pids`` is alive; return the ones still alive at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        remaining = [pid for pid in pids if alive(pid)]
        if not remaining or time.monotonic() >= deadline:
            return remaining
        time.sleep(0.01)


def postmaster_pid(datadir: Path) -> int | None:
    """Return the pid recorded in ``datadir/postmaster.pid`` if that process is a live postgres for it."""
    try:
        first_line = (datadir / "postmaster.pid").read_text().splitlines()[0]
        pid = int(first_line)
    except (OSError, IndexError, ValueError):
        return None
    # a stale file may name a pid that the kernel has since given to something else
    if alive(pid) and "postgres" in cmdline(pid) and str(datadir) in cmdline(pid):
        return pid
    return None


def kill_tree(root: int, timeout: float = 5.0) -> None:
    """SIGKILL ``root`` and its descendants and wait until they are gone."""
    # stop first so that a postmaster cannot fork a replacement child between listing and killing
    signal_pids([root], signal.SIGSTOP)
    pids = process_tree(root)
    signal_pids(pids, signal.SIGKILL)
    left = wait_gone(pids, timeout)
    if left:
        raise ClusterError(f"processes {left} survived SIGKILL for {timeout} s")


@dataclass(frozen=True)
class OsUser:
    """The operating-system account that runs the PostgreSQL servers (PostgreSQL refuses root)."""

    name: str
    uid: int
    gid: int

    @classmethod
    def for_servers(cls, override: str | None = None) -> OsUser:
        """Return the account to run servers as: ``override``, else ``postgres`` when root, else ourselves."""
        name = override or os.environ.get("REPLICAROUTER_PG_OS_USER")
        if not name:
            if os.geteuid() != 0:
                entry = pwd.getpwuid(os.geteuid())
                return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)
            name = "postgres"
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            raise ClusterError(
                f"PostgreSQL refuses to run as root and there is no user {name!r} to run it as: "
                "create one (`useradd --system postgres`; Debian's postgresql package does) or set "
                "REPLICAROUTER_PG_OS_USER"
            ) from None
        if entry.pw_uid == 0:
            raise ClusterError("PostgreSQL refuses to run as root: REPLICAROUTER_PG_OS_USER names uid 0")
        return cls(entry.pw_name, entry.pw_uid, entry.pw_gid)

    @property
    def is_me(self) -> bool:
        return self.uid == os.geteuid()

    def popen_kwargs(self) -> dict[str, Any]:
        """Return the ``subprocess`` keyword arguments that run a program as this user."""
        if self.is_me:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def chown(self, path: Path) -> None:
        """Give ``path`` to this user (a no-op when it is us)."""
        if not self.is_me:
            os.chown(path, self.uid, self.gid)


def run(
    args: Sequence[str],
    *,
    user: OsUser,
    cwd: Path,
    timeout: float,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run a server tool as ``user``; raise ClusterError with its output when it fails."""
    try:
        result = subprocess.run(
            list(args),
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
            stdin=subprocess.DEVNULL,
            **user.popen_kwargs(),
        )
    except subprocess.TimeoutExpired as exc:
        raise ClusterError(f"`{' '.join(args)}` did not finish within {timeout:.0f} s") from exc
    if result.returncode != 0:
        output = (result.stderr or result.stdout).strip()
        raise ClusterError(f"`{' '.join(args)}` failed with exit status {result.returncode}: {output}")
    return result


def spawn(
    args: Sequence[str],
    *,
    user: OsUser,
    cwd: Path,
    env: dict[str, str] | None = None,
) -> subprocess.Popen[str]:
    """Start a server tool as ``user`` without waiting (see ``finish``)."""
    return subprocess.Popen(
        list(args),
        cwd=cwd,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **user.popen_kwargs(),
    )


def finish(proc: subprocess.Popen[str], timeout: float) -> None:
    """Wait for a process started by ``spawn``; raise ClusterError with its output when it failed."""
    command = " ".join(str(arg) for arg in proc.args) if isinstance(proc.args, list) else str(proc.args)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        proc.kill()
        proc.communicate()
        raise ClusterError(f"`{command}` did not finish within {timeout:.0f} s") from exc
    if proc.returncode != 0:
        output = (err or out).strip()
        raise ClusterError(f"`{command}` failed with exit status {proc.returncode}: {output}")
