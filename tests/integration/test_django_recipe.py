"""The documented recipe: a user's pytest-django suite pointed at the replica_cluster fixture."""

from __future__ import annotations

import pytest

pytestmark = pytest.mark.integration

SETTINGS = """
SECRET_KEY = "test"
INSTALLED_APPS = ["django.contrib.contenttypes", "django.contrib.auth", "replicarouter"]
DATABASES = {"default": {"ENGINE": "django.db.backends.postgresql", "NAME": "placeholder"}}
USE_TZ = True
DEFAULT_AUTO_FIELD = "django.db.models.AutoField"
"""

CONFTEST = """
import pytest
from replicarouter.testing import configure_django

@pytest.fixture(scope="session")
def django_db_modify_db_settings(replica_cluster):
    configure_django(replica_cluster)  # ENGINE replicarouter.backends.postgresql: pooled connections
"""

TESTS = """
import threading

import pytest
from django.contrib.auth.models import User
from django.db import connections

@pytest.mark.django_db(transaction=True, databases="__all__")
def test_write_on_primary_read_on_replica(replica_cluster):
    User.objects.create(username="alice")
    replica_cluster.wait_caught_up()
    replica = replica_cluster.node("replica1")
    with connections["replica1"].cursor() as cursor:
        cursor.execute(
            "SELECT inet_server_port(), pg_is_in_recovery(), current_database() FROM auth_user "
            "WHERE username = 'alice'"
        )
        assert cursor.fetchone() == (replica.port, True, "test_replicarouter")
    assert User.objects.using("replica2").filter(username="alice").exists()

    # other threads leave idle pooled connections to the test database behind: the test database
    # must still be dropped at the end of the run (pools are disposed first)
    def worker():
        assert User.objects.count() == 1
        connections.close_all()

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
"""


def test_pytest_django_suite_runs_on_the_cluster(pytester):
    pytester.makeini("[pytest]\npythonpath = .\nDJANGO_SETTINGS_MODULE = rr_settings\n")
    pytester.makepyfile(rr_settings=SETTINGS, conftest=CONFTEST, test_recipe=TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--ds=rr_settings", "-W", "error")
    result.assert_outcomes(passed=1)
    result.stdout.no_fnmatch_line("*being accessed by other users*")
    result.stderr.no_fnmatch_line("*being accessed by other users*")
