import os
import shutil
import tempfile
from pathlib import Path

import pytest

from replicarouter.testing import configure_django


@pytest.fixture(scope="session")
def django_db_modify_db_settings(replica_cluster):
    """Run Django's test databases on the real cluster (primary = default, replicas = replica1/2)."""
    configure_django(replica_cluster)


@pytest.fixture
def private_runtime():
    """A runtime root of its own, so that `down` / `down --all` cannot touch this user's other clusters."""
    root = Path(tempfile.mkdtemp(prefix="rr-runtime-"))
    root.chmod(0o755)  # the servers may run as postgres
    try:
        yield {**os.environ, "REPLICAROUTER_TESTING_DIR": str(root)}
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def paused(replica_cluster):
    """Fault: replay paused on both replicas (resumed after the test): any replica read is stale."""
    for name in ("replica1", "replica2"):
        replica_cluster.pause_replay(name)
    try:
        yield
    finally:
        for name in ("replica1", "replica2"):
            replica_cluster.resume_replay(name)
        replica_cluster.wait_caught_up()
