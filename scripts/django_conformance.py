"""Django's own test suite as a conformance check of replicarouter's ENGINE (scripts/django-conformance).

Run with the Python of the venv under test. It downloads the sdist of the Django installed there
(``pip download --no-deps --no-binary :all:``, kept in ``build/django-conformance/``), extracts its
``tests/``, starts a harness cluster (``LocalCluster``: its own PostgreSQL on free ports, a superuser so
that test databases and extensions can be created), writes a settings module for Django's
``tests/runtests.py`` (aliases ``default`` and ``other`` on the harness primary, each its own cluster,
no ``DATABASE_ROUTERS``) and runs ``runtests.py --parallel 2`` on the database apps in ``APPS``.

The failing test ids (unittest's ``FAIL:`` / ``ERROR:`` / ``UNEXPECTED SUCCESS:`` lines) are compared
with ``tests/django_conformance_expected.txt``: one test id a line, then ``# why``. A new failure fails
the check, and so does an expected one that now passes (the list stays true), a line without a reason,
and a run that ended without unittest's summary (a crash, a timeout).

``--engine django`` runs the same apps with Django's own ``django.db.backends.postgresql`` on the same
kind of cluster: what fails there too is this machine's environment, not replicarouter, and belongs in
the list with the reason ``fails with Django's own backend too: <why>``. In that mode the check is that
every such entry still fails with Django's backend, and that nothing else does.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import re
import select
import signal
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / "build" / "django-conformance"
EXPECTED = ROOT / "tests" / "django_conformance_expected.txt"
#: Django's test apps that exercise the database backend
APPS = [
    *("backends", "transactions", "transaction_hooks", "select_for_update", "queries", "basic"),
    *("bulk_create", "get_or_create", "model_fields", "db_functions", "expressions", "aggregation"),
    *("postgres_tests", "migrations", "schema", "test_utils", "servers"),
]
ENGINES = {"replicarouter": "replicarouter.backends.postgresql", "django": "django.db.backends.postgresql"}
#: the reason that marks an environment difference: the test fails with Django's own ENGINE too
DJANGO_TOO = "fails with Django's own backend too"
#: what Django's suite needs beyond Django and psycopg2 for these apps, as module -> PyPI requirement:
#: tblib so that the parallel runner can send tracebacks; Pillow for model_fields' ImageField tests
EXTRAS = {"tblib": "tblib", "PIL": "Pillow"}
POOL_ENV = "REPLICAROUTER_CONFORMANCE_POOL"
#: lines of a new failure's report shown (its traceback's end); the whole is in the log
REPORT_LINES = 30

_OUTCOME = re.compile(r"^(FAIL|ERROR|UNEXPECTED SUCCESS): (\S+) \(([^)\s]+)\)(.*)$")
_SEPARATOR = re.compile(r"^(=+|-+)$")
_RAN = re.compile(r"^Ran (\d+) tests? in ([\d.]+)s$")


# -- the expected list and the verdict (pure) ----------------------------------------------------------


def parse_expected(text: str, name: str = EXPECTED.name) -> dict[str, str]:
    """Return test id -> reason from the expected list; raise ValueError naming every bad line."""
    found: dict[str, str] = {}
    problems = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        test_id, _, reason = line.partition("#")
        test_id, reason = test_id.strip(), reason.strip()
        if not reason:
            problems.append(f"{name}:{number}: {test_id} has no reason (write 'test.id  # why')")
        elif " " in test_id:
            problems.append(f"{name}:{number}: {test_id!r} is not one test id")
        elif test_id in found:
            problems.append(f"{name}:{number}: {test_id} is listed twice")
        else:
            found[test_id] = reason
    if problems:
        raise ValueError("\n".join(problems))
    return found


def test_id(name: str, description: str) -> str:
    """Return the dotted id of the test unittest describes as ``name (description)``.

    Python >= 3.11 writes ``test_x (app.tests.Class.test_x)``; a class-level error is
    ``setUpClass (app.tests.Class)``, whose id here is ``app.tests.Class.setUpClass``.
    """
    return description if description.endswith("." + name) else f"{description}.{name}"


@dataclass
class Outcome:
    """What a run of runtests.py printed: the failing tests (with their report) and whether it finished."""

    failing: dict[str, list[str]] = field(default_factory=dict)
    ran: int | None = None
    seconds: float | None = None


def parse_output(text: str) -> Outcome:
    """Return the failing test ids of unittest's report (every subtest of a test counts as that test)."""
    outcome = Outcome()
    current: list[str] | None = None
    for line in text.splitlines():
        match = _OUTCOME.match(line)
        if match:
            kind, name, description, _subtest = match.groups()
            current = outcome.failing.setdefault(test_id(name, description), [])
            current.append(f"{kind}: {name} ({description}){_subtest}")
            continue
        ran = _RAN.match(line)
        if ran:
            outcome.ran, outcome.seconds = int(ran.group(1)), float(ran.group(2))
            current = None
            continue
        if current is not None and not _SEPARATOR.match(line):
            current.append(line)
    return outcome


def in_scope(test: str, labels: Sequence[str]) -> bool:
    """Return whether a run of ``labels`` (app labels or dotted test ids) includes ``test``."""
    return any(test == label or test.startswith(label + ".") for label in labels)


@dataclass
class Verdict:
    new: list[str]
    fixed: list[str]
    expected: list[str]

    @property
    def ok(self) -> bool:
        return not self.new and not self.fixed


def judge(failing: Iterable[str], expected: Mapping[str, str], labels: Sequence[str], engine: str) -> Verdict:
    """Compare the failing tests with the expected ones that the run includes.

    For replicarouter's ENGINE every entry counts; for Django's only those marked ``DJANGO_TOO``.
    """
    wanted = {
        test
        for test, reason in expected.items()
        if in_scope(test, labels) and (engine == "replicarouter" or reason.startswith(DJANGO_TOO))
    }
    failed = set(failing)
    return Verdict(sorted(failed - wanted), sorted(wanted - failed), sorted(failed & wanted))


def pool_options(env_value: str | None, pairs: Sequence[str]) -> dict[str, Any]:
    """Return the POOL of both aliases: the JSON object of ``env_value``, then ``KEY=VALUE`` pairs.

    A value is read as JSON when it parses (``SIZE=5``, ``PRE_PING=true``), else as a string
    (``RELEASE=transaction``).
    """
    options: dict[str, Any] = {}
    if env_value:
        loaded = json.loads(env_value)
        if not isinstance(loaded, dict):
            raise ValueError(f"{POOL_ENV} must be a JSON object, not {env_value!r}")
        options.update(loaded)
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"--pool takes KEY=VALUE, not {pair!r}")
        try:
            options[key] = json.loads(raw)
        except json.JSONDecodeError:
            options[key] = raw
    return options


def settings_module(primary: Mapping[str, Any], engine: str, pool: Mapping[str, Any]) -> str:
    """Return the source of the settings module for runtests.py (``primary``: a DATABASES entry)."""
    base = {key: primary[key] for key in ("HOST", "PORT", "USER", "PASSWORD")}
    databases = {
        alias: {"ENGINE": ENGINES[engine], "NAME": name, **base, **({"POOL": dict(pool)} if pool else {})}
        for alias, name in (("default", "django"), ("other", "django_other"))
    }
    lines = [
        f"# Written by scripts/django-conformance: Django's test suite on the {engine} ENGINE.",
        f"DATABASES = {databases!r}",
    ]
    if engine == "replicarouter":
        # each alias is its own cluster (the default topology would make 'other' a replica of 'default')
        clusters = {alias: {"PRIMARY": alias} for alias in databases}
        lines.append(f"REPLICAROUTER = {{'CLUSTERS': {clusters!r}}}")
    lines += [
        # as Django's tests/test_sqlite.py
        "SECRET_KEY = 'django_tests_secret_key'",
        "PASSWORD_HASHERS = ['django.contrib.auth.hashers.MD5PasswordHasher']",
        "DEFAULT_AUTO_FIELD = 'django.db.models.AutoField'",
        "USE_TZ = False",
        "TEST_RUNNER = 'django_conformance_runner.ConformanceRunner'",
    ]
    return "\n".join(lines) + "\n"


# -- I/O --------------------------------------------------------------------------------------------------


def log(message: str) -> None:
    print(f"==> {message}", file=sys.stderr, flush=True)


def ensure_extras() -> None:
    """Install into this venv what Django's suite needs for these apps (only what is missing)."""
    missing = [req for module, req in EXTRAS.items() if importlib.util.find_spec(module) is None]
    if missing:
        log(f"installing {' '.join(missing)} (needed by Django's test suite)")
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", *missing], check=True)


def django_tests(version: str, cache: Path = CACHE) -> Path:
    """Return the ``tests/`` directory of Django ``version``'s sdist, downloaded and extracted once."""
    tests = cache / f"django-{version}" / "tests"
    done = tests / ".extracted"
    if done.exists():
        return tests
    sdists = [p for p in cache.glob("*.tar.gz") if p.name.lower() == f"django-{version}.tar.gz"]
    if not sdists:
        log(f"downloading the sdist of Django {version} into {cache}")
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
            + [f"Django=={version}", "--dest", str(cache)],
            check=True,
        )
        sdists = [p for p in cache.glob("*.tar.gz") if p.name.lower() == f"django-{version}.tar.gz"]
    (sdist,) = sdists
    log(f"extracting tests/ of {sdist.name}")
    with tarfile.open(sdist) as tar:
        top = tar.getmembers()[0].name.split("/", 1)[0]
        members = [m for m in tar.getmembers() if m.name.startswith(f"{top}/tests/")]
        for member in members:
            member.name = member.name.split("/", 1)[1]
        target = tests.parent
        target.mkdir(parents=True, exist_ok=True)
        tar.extractall(target, members=members, filter="data")
    done.touch()
    return tests


def run_suite(command: list[str], cwd: Path, env: dict[str, str], log_path: Path, timeout: float) -> int:
    """Run runtests.py, its output both shown and written to ``log_path``; return its exit status.

    Past ``timeout`` seconds it is killed, its parallel workers with it, and the status is -1.
    """
    deadline = time.monotonic() + timeout
    with log_path.open("wb") as out:
        # its own process group, so that a timeout ends its parallel workers too
        proc = subprocess.Popen(
            command,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        assert proc.stdout is not None
        fd = proc.stdout.fileno()
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    log(f"runtests.py still running after {timeout:.0f} s: stopping it")
                    return -1
                ready, _, _ = select.select([fd], [], [], min(left, 1.0))
                if not ready:
                    continue
                chunk = os.read(fd, 65536)
                if not chunk:  # every process that could write has exited
                    return proc.wait(timeout=max(1.0, deadline - time.monotonic()))
                out.write(chunk)
                sys.stdout.buffer.write(chunk)
                sys.stdout.flush()
        except subprocess.TimeoutExpired:
            return -1
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            proc.stdout.close()


def report(outcome: Outcome, verdict: Verdict, expected: Mapping[str, str], engine: str) -> None:
    """Print each new failure (the end of its traceback) and each expected failure that passed."""
    for test in verdict.new:
        header, *lines = outcome.failing[test]
        print(f"\nNEW failure with the {engine} ENGINE: {test}\n    {header}")
        if len(lines) > REPORT_LINES:
            print(f"    ... ({len(lines) - REPORT_LINES} lines above, in the log)")
        print("\n".join(f"    {line}" for line in lines[-REPORT_LINES:]))
    for test in verdict.fixed:
        print(f"\nexpected to fail, but PASSED with the {engine} ENGINE: {test}  # {expected[test]}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="scripts/django-conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("labels", nargs="*", help=f"test labels instead of the fixed list: {' '.join(APPS)}")
    parser.add_argument("--engine", choices=sorted(ENGINES), default="replicarouter")
    parser.add_argument(
        "--pool", action="append", default=[], metavar="KEY=VALUE", help=f"a POOL option (after {POOL_ENV})"
    )
    parser.add_argument("--parallel", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds runtests.py may take")
    parser.add_argument("--expected", type=Path, default=EXPECTED)
    args = parser.parse_args(argv)
    started = time.monotonic()

    import django

    from replicarouter.exceptions import ConfigurationError
    from replicarouter.pool import PoolOptions
    from replicarouter.testing import LocalCluster

    try:
        expected = parse_expected(args.expected.read_text(encoding="utf-8"), args.expected.name)
        pool = pool_options(os.environ.get(POOL_ENV), args.pool) if args.engine == "replicarouter" else {}
        PoolOptions.from_settings("default", pool)  # an unknown key or a wrong value: say so before starting
    except (ValueError, ConfigurationError) as exc:
        print(exc, file=sys.stderr)
        return 1
    labels = args.labels or APPS
    ensure_extras()
    tests = django_tests(django.get_version())
    run_dir = CACHE / f"run-{args.engine}-{django.get_version()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"Django {django.get_version()}, ENGINE {ENGINES[args.engine]}, POOL {pool or 'defaults'}")

    with LocalCluster(replicas=0, redis=False) as cluster:
        (run_dir / "conformance_settings.py").write_text(
            settings_module(cluster.primary.settings(), args.engine, pool), encoding="utf-8"
        )
        env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
        env["PYTHONPATH"] = os.pathsep.join([str(run_dir), str(ROOT / "scripts")])
        command = [sys.executable, "runtests.py", "--settings=conformance_settings", "--noinput"]
        command += [f"--parallel={args.parallel}", *labels]
        log(f"runtests.py on {cluster.primary.host}:{cluster.primary.port}: {' '.join(labels)}")
        status = run_suite(command, tests, env, run_dir / "output.log", args.timeout)

    outcome = parse_output((run_dir / "output.log").read_text(encoding="utf-8", errors="replace"))
    (run_dir / "failing.txt").write_text("".join(f"{t}\n" for t in sorted(outcome.failing)), encoding="utf-8")
    verdict = judge(outcome.failing, expected, labels, args.engine)
    elapsed = time.monotonic() - started
    if outcome.ran is None or status not in (0, 1):
        # the tests that did not run say nothing: only a crash to report
        print(f"\nruntests.py did not finish (exit status {status}); its output: {run_dir / 'output.log'}")
        return 1
    report(outcome, verdict, expected, args.engine)
    print(
        f"\nconformance ({args.engine} ENGINE, Django {django.get_version()}): {outcome.ran} tests run, "
        f"{len(verdict.expected)} failing as expected, {len(verdict.new)} new, "
        f"{len(verdict.fixed)} no longer failing; {elapsed:.0f} s in all. Log: {run_dir / 'output.log'}"
    )
    if not verdict.ok:
        hint = (
            f"fix them, or list each in {args.expected.name} with '# why'"
            if args.engine == "replicarouter"
            else f"list each in {args.expected.name} with '# {DJANGO_TOO}: <why>'"
        )
        print(f"conformance FAILED: {hint}; remove the entries that no longer fail")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
