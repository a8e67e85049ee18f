"""Smoke test of an installed django-replicarouter: run by scripts/smoke-wheel inside a fresh venv.

It must exercise the package as a user gets it from the wheel, so it imports nothing from the repository
(scripts/smoke-wheel copies it to a directory outside the repository and runs it with ``python -I``) and
uses only replicarouter, Django and psycopg2. It starts a real primary + 2 replicas + Redis
(``replicarouter.testing.LocalCluster``), configures a minimal Django project routed by replicarouter and
checks: system checks, migrate, a write on the primary, a plain read served by a replica, read-your-writes
through the middleware, ``replicastatus --json`` (all nodes up, exit 0, no password), metrics when
``replicarouter.metrics`` exists, and ``python -m replicarouter.testing --help``.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import io
import json
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from django.http import HttpRequest, HttpResponse, JsonResponse
from django.urls import path

PASSWORD = "smoke-Secret-42"
REPLICAS = {"replica1", "replica2"}
started = time.monotonic()


def step(message: str) -> None:
    print(f"[{time.monotonic() - started:5.1f} s] {message}", flush=True)


def check(condition: object, message: str) -> None:
    """Fail the smoke test with ``message`` unless ``condition`` holds."""
    if not condition:
        raise SystemExit(f"FAIL: {message}")


# -- the URLconf of the minimal project (ROOT_URLCONF is this module) ------------------------------------


def write_view(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth.models import Group

    Group.objects.create(name=request.GET["name"])
    return HttpResponse("written")


def read_view(request: HttpRequest) -> HttpResponse:
    from django.contrib.auth.models import Group

    names = list(Group.objects.filter(name=request.GET["name"]).values_list("name", flat=True))
    return JsonResponse({"names": names})


urlpatterns = [path("write", write_view), path("read", read_view)]


# -- checks --------------------------------------------------------------------------------------------


def check_installed() -> str:
    """Check that replicarouter comes from this venv's site-packages, not from a source tree."""
    import replicarouter

    check(sys.prefix != sys.base_prefix, f"not running in a venv: {sys.prefix}")
    location = Path(replicarouter.__file__).resolve()
    site = Path(sysconfig.get_paths()["purelib"]).resolve()
    check(location.is_relative_to(site), f"replicarouter imported from {location}, not from {site}")
    check((location.parent / "py.typed").is_file(), "py.typed is not installed")
    installed = importlib.metadata.version("django-replicarouter")
    check(
        replicarouter.__version__ == installed,
        f"replicarouter.__version__ {replicarouter.__version__} != distribution version {installed}",
    )
    plugins = {ep.name: ep.value for ep in importlib.metadata.entry_points(group="pytest11")}
    check(
        plugins.get("replicarouter") == "replicarouter.testing.plugin",
        f"pytest11 entry point missing or wrong: {plugins}",
    )
    step(f"replicarouter {installed} imported from {location.parent}")
    return installed


def check_cli_help() -> None:
    """Check that ``python -m replicarouter.testing --help`` runs."""
    result = subprocess.run(
        [sys.executable, "-I", "-m", "replicarouter.testing", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    output = result.stdout + result.stderr
    check(
        result.returncode == 0, f"python -m replicarouter.testing --help: exit {result.returncode}\n{output}"
    )
    check("up" in result.stdout and "down" in result.stdout, f"unexpected --help output:\n{result.stdout}")
    step("python -m replicarouter.testing --help: ok")


def configure(values: dict[str, Any]) -> None:
    """Configure a minimal Django project routed by replicarouter, as README.md's minimal configuration."""
    import django
    from django.conf import settings

    settings.configure(
        DEBUG=False,
        SECRET_KEY="replicarouter-smoke-test",
        ALLOWED_HOSTS=["testserver"],
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.auth",
            "django.contrib.sessions",
            "replicarouter",
        ],
        DATABASES=values["DATABASES"],
        REPLICAROUTER=values["REPLICAROUTER"],
        DATABASE_ROUTERS=["replicarouter.router.ReplicaRouter"],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "django.contrib.auth.middleware.AuthenticationMiddleware",
            "replicarouter.middleware.ReplicaRouterMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        ROOT_URLCONF=__name__,
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.BigAutoField",
    )
    django.setup()


def check_system_checks() -> None:
    """Run ``manage.py check`` on every alias (database checks included): no errors, no warnings."""
    from django.conf import settings
    from django.core.checks import run_checks
    from django.core.management import call_command

    aliases = list(settings.DATABASES)
    messages = run_checks(databases=aliases)
    check(not messages, "system checks reported:\n" + "\n".join(str(m) for m in messages))
    out = io.StringIO()
    call_command("check", databases=aliases, stdout=out, stderr=out)  # raises SystemCheckError on errors
    step(f"manage.py check on {aliases}: {out.getvalue().strip()}")


@contextlib.contextmanager
def recording_aliases() -> Iterator[list[tuple[str, str]]]:
    """Record (alias, SQL) of every statement Django runs inside the block, on any alias."""
    from django.db import connections

    seen: list[tuple[str, str]] = []

    def recorder(alias: str) -> Callable[..., Any]:
        def wrapper(execute: Callable[..., Any], sql: str, params: Any, many: bool, context: Any) -> Any:
            seen.append((alias, sql))
            return execute(sql, params, many, context)

        return wrapper

    with contextlib.ExitStack() as stack:
        for alias in connections:
            stack.enter_context(connections[alias].execute_wrapper(recorder(alias)))
        yield seen


def check_routing(cluster: Any) -> None:
    """Write through the ORM (primary), read it back with a plain queryset (a replica)."""
    from django.contrib.auth.models import Group
    from django.db import connections

    from replicarouter import request_context
    from replicarouter.health import monitor
    from replicarouter.health import store as health
    from replicarouter.testing.base import wait_for

    monitor.ensure_started()
    wait_for("both replicas usable", lambda: health.usable_replicas("default") == REPLICAS, timeout=15)

    with request_context(), recording_aliases() as seen:
        Group.objects.create(name="smoke-orm")
        # the same unit of work wrote: its reads must stay on the primary
        check(Group.objects.filter(name="smoke-orm").exists(), "own write not visible in the same request")
    aliases = {alias for alias, _ in seen}
    check(aliases == {"default"}, f"write and read-after-write should use the primary only, used {aliases}")
    step("ORM write and read-after-write went to the primary")

    cluster.wait_caught_up()
    with request_context(), recording_aliases() as seen:
        rows = list(Group.objects.filter(name="smoke-orm").values_list("name", flat=True))
    check(rows == ["smoke-orm"], f"plain read returned {rows}")
    used = {alias for alias, _ in seen}
    check(len(used) == 1 and used <= REPLICAS, f"plain read should go to one replica, went to {used}")
    alias = used.pop()
    with connections[alias].cursor() as cursor:
        cursor.execute("SELECT pg_is_in_recovery()")
        in_recovery = cursor.fetchone()[0]
    check(in_recovery is True, f"alias {alias!r} is not a hot standby (pg_is_in_recovery() = {in_recovery})")
    step(f"plain read routed to {alias} (a hot standby) and returned the row")


def check_middleware() -> None:
    """A request writes, the next request of the same client reads it at once (read-your-writes)."""
    from django.test import Client

    client = Client()
    name = f"smoke-request-{time.time_ns()}"
    response = client.post(f"/write?name={name}")
    check(response.status_code == 200, f"POST /write: {response.status_code}")
    response = client.get(f"/read?name={name}")  # no wait for replication: the middleware handles it
    check(response.status_code == 200, f"GET /read: {response.status_code}")
    check(response.json() == {"names": [name]}, f"read-your-writes failed: {response.json()}")
    step("request through ReplicaRouterMiddleware read its own write")


def check_replicastatus() -> None:
    """``replicastatus --json``: every node up, exit status 0, no password in the output."""
    from django.core.management import call_command

    out, err = io.StringIO(), io.StringIO()
    code: Any = 0
    try:
        call_command("replicastatus", "--json", stdout=out, stderr=err)
    except SystemExit as exc:  # the command exits with its verdict (0 / 1 / 2)
        code = exc.code
    text = out.getvalue()
    check(code in (0, None), f"replicastatus --json exited {code}:\n{text}{err.getvalue()}")
    check(PASSWORD not in text + err.getvalue(), "replicastatus printed the database password")
    data = json.loads(text)
    cluster = data["clusters"]["default"]
    nodes = [cluster["primary"], *cluster["replicas"]]
    states = {node["alias"]: node["state"] for node in nodes}
    check(states == {"default": "up", "replica1": "up", "replica2": "up"}, f"node states: {states}")
    step(f"replicastatus --json: exit 0, {states}")


def check_metrics() -> str:
    """Scrape ``replicarouter.metrics`` if this version has it."""
    if importlib.util.find_spec("replicarouter.metrics") is None:
        step("replicarouter.metrics: not in this version, skipped")
        return "absent"
    from prometheus_client import REGISTRY, CollectorRegistry, generate_latest

    from replicarouter.observability import metrics

    if callable(getattr(metrics, "register", None)):
        registry = CollectorRegistry()
        metrics.register(registry)
    else:
        registry = REGISTRY
    text = generate_latest(registry).decode()
    families = sorted(
        {line.split()[2] for line in text.splitlines() if line.startswith("# TYPE replicarouter_")}
    )
    check(families, f"no replicarouter_ metric in the scrape:\n{text[:2000]}")
    step(f"metrics: {len(families)} replicarouter_ families")
    return f"{len(families)} families"


def main() -> int:
    version = check_installed()
    check_cli_help()

    from replicarouter.testing import LocalCluster, django_settings

    with LocalCluster(replicas=2, password=PASSWORD) as cluster:
        step(f"cluster up in {cluster.startup_seconds:.1f} s (primary + 2 replicas + Redis)")
        from replicarouter.health import monitor

        try:
            configure(django_settings(cluster, KEY_PREFIX="smoke"))
            step("django.setup() done")
            check_system_checks()

            from django.core.management import call_command

            from replicarouter import request_context

            with request_context():  # migrate writes: keep that out of the reads that follow
                call_command("migrate", verbosity=0, interactive=False)
            step("migrate: ok")
            check_routing(cluster)
            check_middleware()
            check_replicastatus()
            metrics = check_metrics()
        finally:
            monitor.stop()  # before the servers go: no probe of a stopping cluster
            from django.conf import settings

            if settings.configured:
                from django.db import connections

                connections.close_all()
    print(
        f"PASS: django-replicarouter {version} from the wheel: check, migrate, primary writes, "
        f"replica reads, read-your-writes, replicastatus, metrics ({metrics}), CLI; "
        f"{time.monotonic() - started:.1f} s"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
