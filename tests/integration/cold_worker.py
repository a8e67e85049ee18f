"""A new process that reads at once: where did its first reads go? (the warm-start test).

Run as ``python -m tests.integration.cold_worker N [--no-warm]`` with
DJANGO_SETTINGS_MODULE=tests.cluster_settings (``--no-warm``: as 0.1 did, to measure the difference).
It routes N reads of ``testapp.Item`` through ``ReplicaRouter`` right after ``django.setup()``, each in
its own request context, as a freshly started worker serving its first requests would, and prints one
JSON line: the port that answered each read and the ``warm_starts`` counter.
"""

import json
import sys

import django

django.setup()

from django.db.models.expressions import RawSQL  # noqa: E402

from replicarouter.health import monitor  # noqa: E402
from replicarouter.observability import stats  # noqa: E402
from replicarouter.routing.context import request_context  # noqa: E402
from tests.testapp.models import Item  # noqa: E402

if "--no-warm" in sys.argv:
    monitor.Monitor.warm = lambda self: None  # type: ignore[method-assign]
ports = []
for _ in range(int(sys.argv[1])):
    with request_context():
        port = Item.objects.annotate(port=RawSQL("inet_server_port()", ())).values_list("port", flat=True)
        ports.append(int(port[0]))
line = {"ports": ports, "warm_starts": {k[0]: v for k, v in stats.values("warm_starts").items()}}
print(json.dumps(line), flush=True)
monitor.stop()
