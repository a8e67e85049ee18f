"""WSGI entry point: ``gunicorn benchmarks.app.wsgi:application``.

Django's postgresql backend uses psycopg 3 whenever it is importable (``psycopg_any``), and our
``replicarouter.backends.postgresql`` is a psycopg2 backend. Variants that must run on psycopg2 get
``BENCH_DRIVER=psycopg2``, and ``import psycopg`` then fails here, before Django is imported, whatever is
installed (a ``None`` entry in ``sys.modules`` makes the import raise ImportError).
"""

from __future__ import annotations

import os
import sys

if os.environ.get("BENCH_DRIVER", "psycopg2") == "psycopg2":
    sys.modules["psycopg"] = None
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "benchmarks.app.settings")

from django.core.wsgi import get_wsgi_application  # noqa: E402

application = get_wsgi_application()
