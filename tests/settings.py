"""Django settings of replicarouter's own test suite.

DATABASES here is a placeholder: integration tests point it at the real cluster started by the
``replica_cluster`` fixture (tests/integration/conftest.py), unit tests never connect.
"""

SECRET_KEY = "replicarouter-tests"
INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "replicarouter",
    "tests.testapp",
]
DATABASES = {
    "default": {
        "ENGINE": "replicarouter.backends.postgresql",
        "NAME": "replicarouter",
        "HOST": "127.0.0.1",
        "PORT": "9",  # discard port: nothing answers until the cluster fixture configures DATABASES
    }
}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
ROOT_URLCONF = "tests.urls"
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "replicarouter.middleware.ReplicaRouterMiddleware",
]
SESSION_ENGINE = "django.contrib.sessions.backends.signed_cookies"
DATABASE_ROUTERS = ["replicarouter.router.ReplicaRouter"]
