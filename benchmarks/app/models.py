"""One table, created by the benchmark with raw SQL (``pool_bench.create_table``)."""

from __future__ import annotations

from django.db import models


class Item(models.Model):
    key = models.IntegerField(unique=True)
    value = models.IntegerField()
    payload = models.CharField(max_length=100)

    class Meta:
        db_table = "bench_item"
        managed = False
