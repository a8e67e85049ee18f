"""The measured views: ``read`` (indexed reads) and ``mixed`` (the same reads plus an UPDATE, atomically)."""

from __future__ import annotations

import os
import random
from typing import Any

from django.db import connection, transaction
from django.db.models import F
from django.http import HttpRequest, JsonResponse

from .models import Item

ROWS = int(os.environ.get("BENCH_ROWS", "10000"))
READS = int(os.environ.get("BENCH_READS", "5"))


def _read_values(count: int) -> list[int]:
    return [Item.objects.get(key=random.randrange(ROWS)).value for _ in range(count)]


def read(request: HttpRequest) -> JsonResponse:
    """``READS`` primary-key-like lookups through the unique index on ``key``."""
    return JsonResponse({"sum": sum(_read_values(READS))})


def mixed(request: HttpRequest) -> JsonResponse:
    """The reads of ``read`` plus one UPDATE, in one transaction."""
    with transaction.atomic():
        values = _read_values(READS)
        Item.objects.filter(key=random.randrange(ROWS)).update(value=F("value") + 1)
    return JsonResponse({"sum": sum(values)})


def info(request: HttpRequest) -> JsonResponse:
    """What this server really uses: engine, driver, TLS, our RELEASE mode and pool counters (checked)."""
    from django.db.backends.postgresql.psycopg_any import is_psycopg3

    if is_psycopg3:
        import psycopg as driver
    else:
        import psycopg2 as driver
    with connection.cursor() as cursor:
        cursor.execute("SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()")
        ssl = bool(cursor.fetchone()[0])
    data: dict[str, Any] = {
        "engine": connection.settings_dict["ENGINE"],
        "driver": driver.__name__,
        "driver_version": driver.__version__.split()[0],
        "ssl": ssl,
        "vendor_pool": bool(getattr(connection, "pool", None)),
    }
    if connection.settings_dict["ENGINE"] == "replicarouter.backends.postgresql":
        from replicarouter import pool as pools

        data["release"] = str(connection.pool_options.release)
        data["pool_stats"] = pools.registry.stats(connection.alias)
    return JsonResponse(data)
