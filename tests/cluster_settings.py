"""Settings for a fresh process (``python -m django replicastatus``) pointed at a test cluster.

``REPLICAROUTER_TEST_SETTINGS`` holds ``{"DATABASES": ..., "REPLICAROUTER": ...}`` as JSON
(``replicarouter.testing.django_settings(cluster)``).
"""

import json
import os

from tests.settings import *  # noqa: F403

_values = json.loads(os.environ["REPLICAROUTER_TEST_SETTINGS"])
DATABASES = _values["DATABASES"]
REPLICAROUTER = _values["REPLICAROUTER"]
