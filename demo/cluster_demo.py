"""replicarouter demo: a real primary + 2 streaming replicas + Redis, a small Django app, real traffic.

Starts the cluster with replicarouter.testing, configures Django with replicarouter (pooled backend,
ReplicaRouter, middleware, Redis), sends requests from three users through the full middleware stack,
pauses replay on one replica to show lag exclusion and read-your-writes, then prints
``manage.py replicastatus`` and stops everything. (The full demo app with a real HTTP server, compose
stack and dashboards is issue 8.)
"""

from __future__ import annotations

import collections
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import django  # noqa: E402
from django.conf import settings  # noqa: E402

from replicarouter.testing import LocalCluster, django_settings  # noqa: E402


def configure(cluster: LocalCluster) -> None:
    values = django_settings(cluster, CHECK_INTERVAL=0.2, CHECK_TIMEOUT=0.4, MAX_LAG_SECONDS=1.0)
    settings.configure(
        SECRET_KEY="replicarouter-demo",
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "replicarouter",
            "demo.demoapp",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "replicarouter.middleware.ReplicaRouterMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASE_ROUTERS=["replicarouter.router.ReplicaRouter"],
        ROOT_URLCONF="demo.urls",
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        **values,
    )
    django.setup()


def main() -> None:
    started = time.monotonic()
    with LocalCluster(replicas=2) as cluster:
        replicas = ", ".join(f"{r.name} :{r.port}" for r in cluster.replicas)
        print(
            f"cluster up in {cluster.startup_seconds:.2f} s: primary :{cluster.primary.port}, "
            f"replicas {replicas}, redis :{cluster.redis_port}"
        )
        configure(cluster)
        from django.core.management import call_command
        from django.test import Client

        from replicarouter import health
        from replicarouter.health import monitor

        call_command("migrate", run_syncdb=True, verbosity=0)
        cluster.wait_caught_up()
        names = {n.port: n.name for n in cluster.nodes}
        users = {name: Client() for name in ("alice", "bob", "carol")}

        def read(user: str) -> tuple[int, str]:
            answer = users[user].get("/mine/", {"author": user}).json()
            return answer["count"], names[answer["port"]]

        monitor.ensure_started()
        while health.usable_replicas("default") != {"replica1", "replica2"}:
            time.sleep(0.05)

        served: collections.Counter[str] = collections.Counter()
        for user in users:
            users[user].get("/post/", {"author": user, "body": f"first note of {user}"})
        time.sleep(0.5)  # let the monitor see the replicas past those writes
        for _ in range(10):
            for user in users:
                served[read(user)[1]] += 1
        print(f"\n30 reads from 3 users after their writes had replicated: served by {dict(served)}")

        print("\npausing WAL replay on replica1 (it stops applying the primary's changes)...")
        cluster.pause_replay("replica1")
        users["alice"].get("/post/", {"author": "alice", "body": "alice's second note"})
        direct = cluster.node("replica1").scalar("SELECT count(*) FROM demoapp_note WHERE author = 'alice'")
        print(f"  replica1 itself now holds {direct} of alice's 2 notes: reading it would be stale")
        answers = collections.Counter(read("alice") for _ in range(10))
        for (count, node), times in sorted(answers.items()):
            print(f"  alice's next read x{times}: {count} notes, served by {node}")
        time.sleep(1.5)
        state = health.snapshot("default").nodes["replica1"]
        print(f"  the monitor now reports replica1 {state.state} (lag {state.lag_bytes} bytes, "
              f"{state.lag_seconds} s): bob's reads avoid it too -> "
              f"{sorted({read('bob')[1] for _ in range(6)})}")  # fmt: skip
        cluster.resume_replay("replica1")
        while "replica1" not in health.usable_replicas("default"):
            time.sleep(0.05)
        print("replay resumed: replica1 caught up and is back in rotation\n")

        print("$ python manage.py replicastatus")
        try:
            call_command("replicastatus")
        except SystemExit as exit_status:
            print(f"(exit status {exit_status.code})")
        monitor.stop()
    print(f"\ncluster stopped and removed; demo took {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
