"""WSGI entry point: ``gunicorn benchmarks.soak.wsgi:application`` (psycopg2: see benchmarks/app/wsgi.py)."""

from __future__ import annotations

import os
import sys

sys.modules["psycopg"] = None  # our backend is psycopg2's: keep Django off psycopg 3 wherever installed
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.soak.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
