"""Binary discovery: where we look, what wins, and what the error says when nothing is found."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from replicarouter.testing.binaries import (
    PG_TOOLS,
    BinariesNotFound,
    find_binaries,
    find_pg_bindir,
    find_redis_server,
)


def _executable(path: Path, body: str = "exit 0") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


def _pg_bindir(directory: Path, version: str = "16.4") -> Path:
    for tool in PG_TOOLS:
        body = f'echo "postgres (PostgreSQL) {version}"' if tool == "postgres" else "exit 0"
        _executable(directory / tool, body)
    return directory


def _no_which(name: str) -> str | None:
    return None


def test_env_override_wins(tmp_path):
    bindir = _pg_bindir(tmp_path / "custom")
    _pg_bindir(tmp_path / "lib/15/bin")
    found = find_pg_bindir(
        {"REPLICAROUTER_PG_BINDIR": str(bindir)}, which=_no_which, patterns=[str(tmp_path / "lib/*/bin")]
    )
    assert found == bindir


def test_env_override_without_tools_is_an_error_naming_it(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BinariesNotFound, match="REPLICAROUTER_PG_BINDIR=.*empty does not hold"):
        find_pg_bindir({"REPLICAROUTER_PG_BINDIR": str(tmp_path / "empty")}, which=_no_which)


def test_newest_versioned_directory_wins(tmp_path):
    _pg_bindir(tmp_path / "lib/9.6/bin")
    newest = _pg_bindir(tmp_path / "lib/16/bin")
    _pg_bindir(tmp_path / "lib/15/bin")
    assert find_pg_bindir({}, which=_no_which, patterns=[str(tmp_path / "lib/*/bin")]) == newest


def test_incomplete_directory_is_skipped(tmp_path):
    partial = tmp_path / "lib/17/bin"
    _executable(partial / "initdb")  # no pg_ctl, pg_basebackup, postgres
    complete = _pg_bindir(tmp_path / "lib/15/bin")
    assert find_pg_bindir({}, which=_no_which, patterns=[str(tmp_path / "lib/*/bin")]) == complete


def test_pg_config_bindir_is_used(tmp_path):
    bindir = _pg_bindir(tmp_path / "pgbin")
    pg_config = _executable(tmp_path / "tools/pg_config", f'echo "{bindir}"')

    def which(name: str) -> str | None:
        return str(pg_config) if name == "pg_config" else None

    assert find_pg_bindir({}, which=which, patterns=[]) == bindir


def test_initdb_on_path_is_used(tmp_path):
    bindir = _pg_bindir(tmp_path / "onpath")

    def which(name: str) -> str | None:
        return str(bindir / name) if name == "initdb" else None

    assert find_pg_bindir({}, which=which, patterns=[]) == bindir


def test_missing_postgres_says_what_to_install(tmp_path):
    with pytest.raises(BinariesNotFound) as excinfo:
        find_pg_bindir({}, which=_no_which, patterns=[str(tmp_path / "nothing/*/bin")])
    message = str(excinfo.value)
    assert "initdb" in message and "pg_basebackup" in message
    assert "apt-get install postgresql" in message
    assert "REPLICAROUTER_PG_BINDIR" in message


def test_missing_redis_says_what_to_install():
    with pytest.raises(BinariesNotFound, match="apt-get install redis-server"):
        find_redis_server({}, which=_no_which, fallbacks=[])


def test_redis_override_must_be_executable(tmp_path):
    plain = tmp_path / "redis-server"
    plain.write_text("not executable")
    with pytest.raises(BinariesNotFound, match="REPLICAROUTER_REDIS_SERVER=.* is not an executable"):
        find_redis_server({"REPLICAROUTER_REDIS_SERVER": str(plain)}, which=_no_which)
    _executable(plain)
    assert find_redis_server({"REPLICAROUTER_REDIS_SERVER": str(plain)}, which=_no_which) == plain


def test_find_binaries_reports_every_missing_piece(tmp_path):
    env = {
        "REPLICAROUTER_PG_BINDIR": str(tmp_path / "nope"),
        "REPLICAROUTER_REDIS_SERVER": str(tmp_path / "nope/redis-server"),
    }
    with pytest.raises(BinariesNotFound) as excinfo:
        find_binaries(env)
    assert "apt-get install postgresql" in str(excinfo.value)
    assert "apt-get install redis-server" in str(excinfo.value)


def test_too_old_postgres_is_refused(tmp_path):
    env = {
        "REPLICAROUTER_PG_BINDIR": str(_pg_bindir(tmp_path / "old", version="13.2")),
        "REPLICAROUTER_REDIS_SERVER": str(_executable(tmp_path / "redis-server")),
    }
    with pytest.raises(BinariesNotFound, match="PostgreSQL 13 .* too old: the test cluster needs 14"):
        find_binaries(env)


def test_found_binaries_carry_the_major_version(tmp_path):
    env = {
        "REPLICAROUTER_PG_BINDIR": str(_pg_bindir(tmp_path / "pg", version="16.4")),
        "REPLICAROUTER_REDIS_SERVER": str(_executable(tmp_path / "redis-server")),
    }
    binaries = find_binaries(env)
    assert binaries.pg_major == 16
    assert binaries.pg("initdb") == str(tmp_path / "pg/initdb")
