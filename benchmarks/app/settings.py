"""Settings of the benchmark project: everything but the database is fixed."""

from __future__ import annotations

import json
import os

DATABASES = json.loads(os.environ["BENCH_DATABASES"])
SECRET_KEY = "benchmark-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = ["benchmarks.app"]
MIDDLEWARE: list[str] = []
if os.environ.get("BENCH_ROUTER"):  # variant (e): reads spread over the replicas by ReplicaRouter
    INSTALLED_APPS = ["replicarouter", *INSTALLED_APPS]
    MIDDLEWARE = ["replicarouter.middleware.ReplicaRouterMiddleware"]
    DATABASE_ROUTERS = ["replicarouter.router.ReplicaRouter"]
ROOT_URLCONF = "benchmarks.app.urls"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
