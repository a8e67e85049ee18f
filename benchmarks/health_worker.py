"""One worker process for benchmarks/health_bench.py: runs replicarouter's monitor for a while.

Settings come as JSON in REPLICAROUTER_BENCH_SETTINGS ({"DATABASES": ..., "REPLICAROUTER": ...}).
Prints its monitor's rounds and probe rounds as JSON when done.
"""

import json
import os
import sys
import time

import django
from django.conf import settings

values = json.loads(os.environ["REPLICAROUTER_BENCH_SETTINGS"])
settings.configure(INSTALLED_APPS=["replicarouter"], **values)
django.setup()

from replicarouter.health import monitor  # noqa: E402

worker = monitor.ensure_started()
time.sleep(float(sys.argv[1]))
print(json.dumps({"rounds": worker.rounds, "probe_rounds": worker.probe_rounds}), flush=True)
monitor.stop()
