"""Settings of the replicarouter demo site, configured from the environment.

``DEMO_PRIMARY_URL`` and ``DEMO_REPLICA_URLS`` (comma-separated) are ``postgres://user:password@host:port/db``
URLs: the primary becomes alias ``default``, the replicas ``replica1``, ``replica2``… in order. ``REDIS_URL``
(optional) shares health and read-your-writes positions between processes. The rest is the minimal
replicarouter set-up from the README: our engine with a POOL, the router, the middleware after sessions.
"""

from __future__ import annotations

import importlib.util
import os
from typing import Any
from urllib.parse import unquote, urlsplit

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "replicarouter-demo-only-change-me")
DEBUG = os.environ.get("DJANGO_DEBUG", "0") == "1"
ALLOWED_HOSTS = os.environ.get("DJANGO_ALLOWED_HOSTS", "127.0.0.1,localhost").split(",")

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "replicarouter",
    "notes",
]
# a JSON API for the demo's clients: no CSRF middleware, no templates
MIDDLEWARE = [
    "replicarouter.middleware.ReplicaRouterMiddleware",  # first: every write of the cycle is inside it
    "django.contrib.sessions.middleware.SessionMiddleware",
]
# signed-cookie sessions: a session costs no database write (a write would pin every visitor to the primary)
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
ROOT_URLCONF = "demosite.urls"
WSGI_APPLICATION = "demosite.wsgi.application"
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"


def database(url: str, **extra: Any) -> dict[str, Any]:
    """Return a DATABASES entry using replicarouter's pooled backend for a ``postgres://`` URL."""
    parts = urlsplit(url)
    if parts.scheme not in ("postgres", "postgresql"):
        raise ValueError(f"not a postgres:// URL: {parts.scheme}://{parts.hostname}…")
    return {
        "ENGINE": "replicarouter.backends.postgresql",
        "NAME": parts.path.lstrip("/") or "postgres",
        "USER": unquote(parts.username or ""),
        "PASSWORD": unquote(parts.password or ""),
        "HOST": parts.hostname or "",
        "PORT": str(parts.port or 5432),
        "POOL": {"SIZE": int(os.environ.get("DEMO_POOL_SIZE", "5")), "MAX_OVERFLOW": 5, "TIMEOUT": 2.0},
        **extra,
    }


_replica_urls = [u for u in os.environ.get("DEMO_REPLICA_URLS", "").split(",") if u.strip()]
DATABASES = {"default": database(os.environ.get("DEMO_PRIMARY_URL", "postgres://app:app@127.0.0.1/app"))}
for _number, _url in enumerate(_replica_urls, start=1):
    DATABASES[f"replica{_number}"] = database(_url.strip(), TEST={"MIRROR": "default"})
DATABASE_ROUTERS = ["replicarouter.router.ReplicaRouter"]

REPLICAROUTER = {
    "REDIS_URL": os.environ.get("REDIS_URL") or None,
    "CHECK_INTERVAL": float(os.environ.get("DEMO_CHECK_INTERVAL", "1.0")),
    "MAX_LAG_SECONDS": float(os.environ.get("DEMO_MAX_LAG_SECONDS", "5.0")),
}

METRICS = importlib.util.find_spec("prometheus_client") is not None

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(asctime)s %(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {"replicarouter": {"handlers": ["console"], "level": "INFO", "propagate": False}},
}
