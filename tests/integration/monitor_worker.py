"""A process that routes through replicarouter and reports its monitor (used by the leader tests).

Run as ``python -m tests.integration.monitor_worker`` with DJANGO_SETTINGS_MODULE=tests.cluster_settings;
prints one JSON line per 0.2 s: identity, rounds, probe rounds, wall time.
"""

import json
import sys
import time

import django

django.setup()

from replicarouter.health import monitor  # noqa: E402

worker = monitor.ensure_started()
deadline = time.monotonic() + float(sys.argv[1] if len(sys.argv) > 1 else 30)
while time.monotonic() < deadline:
    line = {
        "identity": worker.identity,
        "rounds": worker.rounds,
        "probe_rounds": worker.probe_rounds,
        "t": time.time(),
    }
    print(json.dumps(line), flush=True)
    time.sleep(0.2)
monitor.stop()
