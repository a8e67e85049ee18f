"""Settings of the soak project: DATABASES, REPLICAROUTER and the middleware order come from the soak."""

from __future__ import annotations

import json
import os

_SOAK = json.loads(os.environ["SOAK_SETTINGS"])

DATABASES = _SOAK["DATABASES"]
REPLICAROUTER = _SOAK["REPLICAROUTER"]
SECRET_KEY = "consistency-soak-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "replicarouter",
    "benchmarks.soak",
]
_SESSIONS = "django.contrib.sessions.middleware.SessionMiddleware"
_OURS = "replicarouter.middleware.ReplicaRouterMiddleware"
#: "first": ours outermost, as docs/consistency.md recommends; "after-session": 0.1's order
MIDDLEWARE = [_OURS, _SESSIONS] if _SOAK["ORDER"] == "first" else [_SESSIONS, _OURS]
SESSION_ENGINE = "django.contrib.sessions.backends.db"  # Django's default, written out
DATABASE_ROUTERS = ["replicarouter.router.ReplicaRouter"]
ROOT_URLCONF = "benchmarks.soak.urls"
USE_TZ = True
TIME_ZONE = "UTC"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"}},
    "handlers": {
        "file": {"class": "logging.FileHandler", "filename": _SOAK["LOG"], "formatter": "plain"},
    },
    "loggers": {
        "replicarouter": {"handlers": ["file"], "level": "INFO", "propagate": False},
        "django.request": {"handlers": ["file"], "level": "ERROR", "propagate": False},
    },
}
