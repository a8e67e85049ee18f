"""Demo of the replicated cluster replicarouter runs on (until the Django demo app lands, issue 8).

Starts a primary, two streaming replicas and Redis with replicarouter.testing, writes from a few
"sessions", spreads reads over the replicas, pauses replay on one replica to show what lag looks like and
why a naive router serves stale data, then prints the cluster status and stops everything.
"""

from __future__ import annotations

import io
import itertools
import time

from replicarouter.testing import LocalCluster
from replicarouter.testing.cli import main as testing_cli


def main() -> None:
    started = time.monotonic()
    with LocalCluster(replicas=2) as cluster:
        primary, replicas = cluster.primary, cluster.replicas
        print(
            f"cluster up in {cluster.startup_seconds:.2f} s: primary :{primary.port}, "
            f"replicas {', '.join(f'{r.name} :{r.port}' for r in replicas)}, redis :{cluster.redis_port}\n"
        )

        primary.query("CREATE TABLE notes (id serial PRIMARY KEY, session text, body text)")
        for session in ("alice", "bob", "carol"):
            primary.query(
                "INSERT INTO notes (session, body) VALUES (%s, %s)", (session, f"hello from {session}")
            )
        cluster.wait_caught_up()

        served: dict[str, int] = {}
        rotation = itertools.cycle(replicas)
        for _ in range(30):
            replica = next(rotation)
            port = replica.scalar("SELECT inet_server_port()")
            served[f"{replica.name} :{port}"] = served.get(f"{replica.name} :{port}", 0) + 1
        print("30 reads spread round robin over the replicas:", served)

        replica1 = cluster.node("replica1")
        cluster.pause_replay(replica1)
        primary.query("INSERT INTO notes (session, body) VALUES ('alice', 'alice edits her note')")
        cluster.wait_caught_up(["replica2"])
        lag = cluster.lag_bytes(replica1)
        print(f"\nreplay paused on replica1: it is {lag} bytes of WAL behind the primary")
        for node in (primary, replica1, cluster.node("replica2")):
            count = node.scalar("SELECT count(*) FROM notes WHERE session = 'alice'")
            verdict = "sees her write" if count == 2 else "STALE: her write is missing"
            print(f"  alice reads her notes from {node.name:<9} -> {count} notes ({verdict})")
        print(
            "  (replicarouter's job: never send alice's reads to a replica that has not replayed her write)"
        )
        cluster.resume_replay(replica1)
        print(f"replay resumed: replica1 lag {cluster.lag_bytes(replica1)} bytes\n")

        out = io.StringIO()
        testing_cli(["status"], out=out)
        print("python -m replicarouter.testing status:")
        print(out.getvalue())
    print(f"cluster stopped and removed; demo took {time.monotonic() - started:.1f} s")


if __name__ == "__main__":
    main()
