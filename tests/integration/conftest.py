import pytest

from replicarouter.testing import configure_django


@pytest.fixture(scope="session")
def django_db_modify_db_settings(replica_cluster):
    """Run Django's test databases on the real cluster (primary = default, replicas = replica1/2)."""
    configure_django(replica_cluster)
