"""Find the PostgreSQL server binaries and redis-server on this machine, or say what to install."""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PG_TOOLS = ("initdb", "pg_ctl", "pg_basebackup", "postgres")

#: where distributions put versioned server binaries, newest version wins within a pattern
PG_BINDIR_PATTERNS = (
    "/usr/lib/postgresql/*/bin",  # Debian, Ubuntu
    "/usr/pgsql-*/bin",  # PGDG RPMs
    "/opt/homebrew/opt/postgresql@*/bin",  # Homebrew, Apple silicon
    "/usr/local/opt/postgresql@*/bin",  # Homebrew, Intel
    "/usr/local/pgsql/bin",  # built from source
)

PG_INSTALL_HINT = (
    "Install the PostgreSQL server: Debian/Ubuntu `apt-get install postgresql`, "
    "Fedora/RHEL `dnf install postgresql-server`, macOS `brew install postgresql@16`; "
    "or point REPLICAROUTER_PG_BINDIR at the directory holding initdb, pg_ctl and pg_basebackup."
)
REDIS_INSTALL_HINT = (
    "Install Redis: Debian/Ubuntu `apt-get install redis-server`, Fedora/RHEL `dnf install redis`, "
    "macOS `brew install redis`; or set REPLICAROUTER_REDIS_SERVER to the redis-server executable."
)

MIN_PG_MAJOR = 14  # pg_get_wal_replay_pause_state() appeared in 14


class BinariesNotFound(RuntimeError):
    """The server binaries needed for a local cluster are missing; the message says what to install."""


@dataclass(frozen=True)
class Binaries:
    """Where the server programs of a local cluster live."""

    pg_bindir: Path
    redis_server: Path
    pg_major: int

    def pg(self, tool: str) -> str:
        """Return the path of one PostgreSQL program (``initdb``, ``pg_ctl``…)."""
        return str(self.pg_bindir / tool)


def _has_pg_tools(directory: Path) -> bool:
    return all(os.access(directory / tool, os.X_OK) for tool in PG_TOOLS)


def _version_key(path: str) -> tuple[int, ...]:
    return tuple(int(part) for part in re.findall(r"\d+", path)) or (0,)


def _pg_config_bindir(which: Callable[[str], str | None]) -> Path | None:
    pg_config = which("pg_config")
    if not pg_config:
        return None
    try:
        out = subprocess.run(
            [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return Path(out) if out else None


def pg_bindir_candidates(
    env: Mapping[str, str],
    which: Callable[[str], str | None],
    patterns: Sequence[str] = PG_BINDIR_PATTERNS,
) -> list[tuple[str, Path]]:
    """Return ``(source, directory)`` pairs to look for PostgreSQL server binaries in, best first."""
    candidates: list[tuple[str, Path]] = []
    override = env.get("REPLICAROUTER_PG_BINDIR")
    if override:
        return [("REPLICAROUTER_PG_BINDIR", Path(override))]
    bindir = _pg_config_bindir(which)
    if bindir:
        candidates.append(("pg_config --bindir", bindir))
    for pattern in patterns:
        for match in sorted(glob.glob(pattern), key=_version_key, reverse=True):
            candidates.append((pattern, Path(match)))
    initdb = which("initdb")
    if initdb:
        candidates.append(("PATH", Path(initdb).resolve().parent))
    return candidates


def find_pg_bindir(
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    patterns: Sequence[str] = PG_BINDIR_PATTERNS,
) -> Path:
    """Return the directory holding initdb, pg_ctl, pg_basebackup and postgres, or raise BinariesNotFound."""
    env = os.environ if env is None else env
    candidates = pg_bindir_candidates(env, which, patterns)
    for _source, directory in candidates:
        if _has_pg_tools(directory):
            return directory
    if env.get("REPLICAROUTER_PG_BINDIR"):
        raise BinariesNotFound(
            f"REPLICAROUTER_PG_BINDIR={env['REPLICAROUTER_PG_BINDIR']} does not hold all of "
            f"{', '.join(PG_TOOLS)} as executables. {PG_INSTALL_HINT}"
        )
    looked = "; ".join(f"{directory} ({source})" for source, directory in candidates) or "nowhere found"
    raise BinariesNotFound(
        f"PostgreSQL server binaries ({', '.join(PG_TOOLS)}) not found. Looked in: {looked}; "
        f"and the patterns {', '.join(patterns)}. {PG_INSTALL_HINT}"
    )


def find_redis_server(
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    fallbacks: Sequence[str] = (
        "/usr/bin/redis-server",
        "/usr/local/bin/redis-server",
        "/opt/homebrew/bin/redis-server",
    ),
) -> Path:
    """Return the redis-server executable, or raise BinariesNotFound saying how to install it."""
    env = os.environ if env is None else env
    override = env.get("REPLICAROUTER_REDIS_SERVER")
    if override:
        if os.access(override, os.X_OK) and not os.path.isdir(override):
            return Path(override)
        raise BinariesNotFound(
            f"REPLICAROUTER_REDIS_SERVER={override} is not an executable file. {REDIS_INSTALL_HINT}"
        )
    found = which("redis-server")
    if found:
        return Path(found)
    for path in fallbacks:
        if os.access(path, os.X_OK):
            return Path(path)
    raise BinariesNotFound(
        f"redis-server not found on PATH nor in {', '.join(fallbacks)}. {REDIS_INSTALL_HINT}"
    )


def pg_major_version(bindir: Path) -> int:
    """Return the major version of the ``postgres`` program in ``bindir`` (``postgres --version``)."""
    out = subprocess.run(
        [str(bindir / "postgres"), "--version"],
        capture_output=True,
        text=True,
        timeout=10,
        check=True,
    ).stdout
    match = re.search(r"(\d+)(?:\.\d+)?", out)
    if not match:
        raise BinariesNotFound(f"cannot read a version from `{bindir / 'postgres'} --version`: {out!r}")
    return int(match.group(1))


def find_binaries(env: Mapping[str, str] | None = None) -> Binaries:
    """Return the binaries of a local cluster; raise BinariesNotFound with install hints when missing."""
    env = os.environ if env is None else env
    problems: list[str] = []
    bindir: Path | None = None
    redis: Path | None = None
    try:
        bindir = find_pg_bindir(env)
    except BinariesNotFound as exc:
        problems.append(str(exc))
    try:
        redis = find_redis_server(env)
    except BinariesNotFound as exc:
        problems.append(str(exc))
    if bindir is None or redis is None:
        raise BinariesNotFound(" ".join(problems))
    major = pg_major_version(bindir)
    if major < MIN_PG_MAJOR:
        raise BinariesNotFound(
            f"PostgreSQL {major} in {bindir} is too old: the test cluster needs {MIN_PG_MAJOR} or newer. "
            f"{PG_INSTALL_HINT}"
        )
    return Binaries(pg_bindir=bindir, redis_server=redis, pg_major=major)
