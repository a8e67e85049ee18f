"""Measure how long replicarouter.testing.LocalCluster takes to come up and go down.

Usage: .venv/bin/python benchmarks/cluster_lifecycle.py [RUNS]   (results: benchmarks/results/)
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from pathlib import Path

from replicarouter.testing import LocalCluster


def main(runs: int = 5) -> None:
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
    out = Path(__file__).parent / "results" / "cluster_lifecycle.json"
    out.write_text(json.dumps({"runs": runs, "up_seconds": ups, "down_seconds": downs}, indent=2) + "\n")
    print(f"saved {out}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
