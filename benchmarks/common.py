"""Shared by the benchmarks: where a result comes from (commit, date, measured code), and Django settings.

Every ``benchmarks/results/NAME.json`` opens with a ``"measured"`` block written by ``write_results``: the
commit the run measured (``git rev-parse HEAD``), the UTC date, the command, and ``measures``, the git
pathspecs of the code whose behaviour the numbers describe. A run refuses to start (and to save) when that
code has uncommitted changes, so the commit says exactly what ran; ``REPLICAROUTER_BENCH_DIRTY=1`` lets a
trial run go on, records ``"dirty": true``, and ``tests/unit/test_benchmark_results.py`` then fails on it.
``stale_reasons`` is the other half: a result is stale when its commit is not an ancestor of HEAD or a
later commit changed the measured code (the unit test fails, ``benchmarks/render.py --check`` warns).

Standard library only at import time: ``benchmarks/render.py`` imports this module in the docs tool venv.
"""

from __future__ import annotations

import datetime
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results"
DIRTY_ENV = "REPLICAROUTER_BENCH_DIRTY"


def git(*args: str, root: Path | None = None) -> subprocess.CompletedProcess[str]:
    """Run git in ``root`` and return the finished process (check the return code yourself)."""
    return subprocess.run(["git", "-C", str(root or ROOT), *args], capture_output=True, text=True)


def is_checkout(root: Path | None = None) -> bool:
    """Return whether ``root`` is the top of a git work tree (an sdist or tarball is not, even unpacked
    inside another repository)."""
    try:
        result = git("rev-parse", "--show-toplevel", root=root)
    except FileNotFoundError:  # no git binary
        return False
    return result.returncode == 0 and Path(result.stdout.strip()).resolve() == (root or ROOT).resolve()


def uncommitted(measures: Sequence[str], root: Path | None = None) -> list[str]:
    """Return the measured files with uncommitted changes (untracked files included)."""
    status = git("status", "--porcelain", "--", *measures, root=root)
    if status.returncode != 0:
        raise SystemExit(f"git status failed: {status.stderr.strip()}")
    return [line[3:] for line in status.stdout.splitlines()]


def start_measuring(name: str, measures: Sequence[str]) -> dict[str, Any]:
    """Return the ``measured`` block for a run of benchmark ``name``; refuse if the measured code is dirty.

    Call it before measuring (so a dirty tree fails at once, not after minutes) and hand the block to
    ``write_results``, which checks again that nothing changed meanwhile.
    """
    if not is_checkout():
        raise SystemExit(f"{name}: not a git checkout; results must name the commit they measured")
    head = git("rev-parse", "HEAD").stdout.strip()
    dirty = uncommitted(measures)
    if dirty and os.environ.get(DIRTY_ENV) != "1":
        raise SystemExit(
            f"{name}: uncommitted changes in measured code ({', '.join(dirty)}): commit them first "
            f"(or set {DIRTY_ENV}=1 for a trial run; the result is then marked dirty and fails the tests)"
        )
    return {
        "commit": head,
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([".venv/bin/python", f"benchmarks/{Path(sys.argv[0]).name}", *sys.argv[1:]]),
        "measures": list(measures),
        "dirty": bool(dirty),
    }


def write_results(
    name: str, measured: Mapping[str, Any], data: Mapping[str, Any], out: Path | None = None
) -> Path:
    """Write ``benchmarks/results/NAME.json`` (or ``out``): the ``measured`` block, then ``data``."""
    head = git("rev-parse", "HEAD").stdout.strip()
    if head != measured["commit"]:
        raise SystemExit(f"{name}: HEAD moved from {measured['commit']} to {head} during the run; not saved")
    if uncommitted(measured["measures"]) and not measured["dirty"]:
        raise SystemExit(f"{name}: measured code changed during the run; not saved")
    out = out or RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"measured": dict(measured), **data}, indent=2) + "\n", encoding="utf-8")
    return out


def stale_reasons(data: Mapping[str, Any], root: Path | None = None) -> list[str]:
    """Return why a result no longer describes the code at HEAD (empty: it does). Needs a git checkout."""
    measured = data.get("measured")
    if not isinstance(measured, Mapping) or not measured.get("commit") or not measured.get("measures"):
        return ["records no commit and measured paths (no 'measured' block)"]
    commit = str(measured["commit"])
    reasons = []
    if measured.get("dirty"):
        reasons.append(f"measured uncommitted changes on top of {commit[:10]} (dirty: true)")
    if git("cat-file", "-e", f"{commit}^{{commit}}", root=root).returncode != 0:
        return [*reasons, f"commit {commit[:10]} is not in this repository"]
    if git("merge-base", "--is-ancestor", commit, "HEAD", root=root).returncode != 0:
        return [*reasons, f"commit {commit[:10]} is not an ancestor of HEAD"]
    log = git("log", "--format=%h %s", f"{commit}..HEAD", "--", *measured["measures"], root=root)
    if log.returncode != 0:
        return [*reasons, f"git log failed: {log.stderr.strip()}"]
    later = log.stdout.splitlines()
    if later:
        reasons.append(
            f"{len(later)} later commit(s) changed the measured code since {commit[:10]}, newest: {later[0]}"
        )
    return reasons


def configure_test_app(cluster: Any, secret: str, **replicarouter: Any) -> None:
    """Configure Django for tests.testapp behind the full middleware stack on ``cluster``, then set up."""
    import django
    from django.conf import settings

    from replicarouter.testing import django_settings

    settings.configure(
        SECRET_KEY=secret,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "replicarouter",
            "tests.testapp",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "replicarouter.middleware.ReplicaRouterMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASE_ROUTERS=["replicarouter.router.ReplicaRouter"],
        ROOT_URLCONF="tests.urls",
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None if replicarouter.pop("quiet_logging", False) else "logging.config.dictConfig",
        **django_settings(cluster, **replicarouter),
    )
    django.setup()


def ensure_gunicorn() -> None:
    """Install gunicorn into this venv when it is missing (the benchmarks and the soak serve through it)."""
    if importlib.util.find_spec("gunicorn") is None:
        print("installing gunicorn into the venv ...", flush=True)
        subprocess.run([sys.executable, "-m", "pip", "install", "-q", "gunicorn>=22"], check=True)
