"""Two tables, created by the soak with raw SQL before gunicorn starts."""

from __future__ import annotations

from django.db import models


class Note(models.Model):
    """One acknowledged write of a client: (client, seq) appears once unless a write was duplicated."""

    client = models.CharField(max_length=40)
    seq = models.IntegerField()

    class Meta:
        db_table = "soak_note"
        managed = False


class Ticker(models.Model):
    """One row the soak increments on the primary every few milliseconds: a replica's value is its age."""

    value = models.BigIntegerField()

    class Meta:
        db_table = "soak_ticker"
        managed = False
