"""Django settings shared by the benchmarks that drive the test app on a local cluster."""

from __future__ import annotations

from typing import Any


def configure_test_app(cluster: Any, secret: str, **replicarouter: Any) -> None:
    """Configure Django for tests.testapp behind the full middleware stack on ``cluster``, then set up."""
    import django
    from django.conf import settings

    from replicarouter.testing import django_settings

    settings.configure(
        SECRET_KEY=secret,
        INSTALLED_APPS=[
            "django.contrib.contenttypes",
            "django.contrib.sessions",
            "replicarouter",
            "tests.testapp",
        ],
        MIDDLEWARE=[
            "django.contrib.sessions.middleware.SessionMiddleware",
            "replicarouter.middleware.ReplicaRouterMiddleware",
        ],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
        DATABASE_ROUTERS=["replicarouter.router.ReplicaRouter"],
        ROOT_URLCONF="tests.urls",
        ALLOWED_HOSTS=["*"],
        USE_TZ=True,
        DEFAULT_AUTO_FIELD="django.db.models.AutoField",
        LOGGING_CONFIG=None if replicarouter.pop("quiet_logging", False) else "logging.config.dictConfig",
        **django_settings(cluster, **replicarouter),
    )
    django.setup()
