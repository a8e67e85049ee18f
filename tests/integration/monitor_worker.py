"""A process that routes through replicarouter and reports its monitor (used by the leader tests).

Run as ``python -m tests.integration.monitor_worker`` with DJANGO_SETTINGS_MODULE=tests.cluster_settings.
It answers each line read from stdin with one JSON line: identity, rounds, probe rounds and where its
snapshot of cluster ``default`` came from ("leader", "redis", "local", or None before the first round),
and ``leader_rounds``: the round counter each time this process took the cluster's lease (noted in the
monitor's thread as it logs it, so the count is exact).
The test asks when it needs a report, so nothing here sleeps; end of input stops the monitor.
"""

import json
import logging
import sys

import django

django.setup()

from replicarouter.health import monitor, shared  # noqa: E402
from replicarouter.health import store as health  # noqa: E402

leader_rounds: list[int] = []


class _NoteLeases(logging.Handler):
    def emit(self, record: logging.LogRecord) -> None:
        current = monitor.running()  # None only while the very first round starts
        if getattr(record, "replicarouter_event", None) == "leader":
            leader_rounds.append(current.rounds if current is not None else 1)


health_logger = logging.getLogger("replicarouter.health")
health_logger.addHandler(_NoteLeases(logging.INFO))
health_logger.setLevel(logging.INFO)
worker = monitor.ensure_started()
for _ in sys.stdin:
    snapshot = health.snapshot("default")
    line = {
        "identity": worker.identity,
        "rounds": worker.rounds,
        "probe_rounds": worker.probe_rounds,
        "source": None if snapshot is None else snapshot.source,
        "leader_rounds": leader_rounds,
        "snapshot_key": shared.snapshot_key("default"),
    }
    print(json.dumps(line), flush=True)
monitor.stop()
