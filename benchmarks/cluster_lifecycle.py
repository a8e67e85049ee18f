"""Measure how long replicarouter.testing.LocalCluster takes to come up and go down.

Usage: .venv/bin/python benchmarks/cluster_lifecycle.py [RUNS]   (results: benchmarks/results/)
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import start_measuring, write_results  # noqa: E402
from replicarouter.testing import LocalCluster  # noqa: E402

MEASURES = ["replicarouter/testing", "benchmarks/cluster_lifecycle.py", "benchmarks/common.py"]


def main(runs: int = 5) -> None:
    measured = start_measuring("cluster_lifecycle", MEASURES)
    ups: list[float] = []
    downs: list[float] = []
    for _ in range(runs):
        cluster = LocalCluster(replicas=2).up()
        ups.append(cluster.startup_seconds or 0.0)
        started = time.monotonic()
        cluster.down()
        downs.append(time.monotonic() - started)
    rows = {"up (primary + 2 replicas + redis)": ups, "down": downs}
    print(f"{'phase':<36} {'median s':>9} {'min s':>7} {'max s':>7}   ({runs} runs)")
    for name, values in rows.items():
        print(f"{name:<36} {statistics.median(values):>9.3f} {min(values):>7.3f} {max(values):>7.3f}")
    out = write_results(
        "cluster_lifecycle", measured, {"runs": runs, "up_seconds": ups, "down_seconds": downs}
    )
    print(f"saved {out}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
