"""A process that holds N pooled connections of one alias (the one-view-across-processes tests).

Run as ``python -m tests.integration.pool_worker ALIAS N`` with DJANGO_SETTINGS_MODULE=tests.cluster_settings.
It starts its monitor, then N threads that each open a transaction on ALIAS (so each holds one
connection checked out of the alias's pool) and wait. Once all N are held and its monitor has published
after that (a round completed), it prints one JSON line: its monitor's identity and its own pool figures.
It holds the connections until end of input, then releases them and stops.
"""

import json
import sys
import threading

import django

django.setup()

from django.db import connections, transaction  # noqa: E402

from replicarouter import pool_stats  # noqa: E402
from replicarouter.health import monitor  # noqa: E402
from replicarouter.routing.context import request_context  # noqa: E402
from replicarouter.testing.base import wait_for  # noqa: E402

alias, count = sys.argv[1], int(sys.argv[2])
worker = monitor.ensure_started()
held = threading.Semaphore(0)
release = threading.Event()


def hold() -> None:
    with request_context(), transaction.atomic(using=alias):
        with connections[alias].cursor() as cursor:
            cursor.execute("SELECT 1")
        held.release()
        release.wait()
    connections[alias].close()


threads = [threading.Thread(target=hold, daemon=True) for _ in range(count)]
for thread in threads:
    thread.start()
for _ in range(count):
    held.acquire(timeout=60)
rounds = worker.rounds
wait_for("a monitor round after the connections were taken", lambda: worker.rounds >= rounds + 2, timeout=60)
print(json.dumps({"identity": worker.identity, "pool": pool_stats(alias)[alias]}), flush=True)
sys.stdin.read()
release.set()
for thread in threads:
    thread.join(10)
monitor.stop()
