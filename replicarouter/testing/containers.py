"""Docker plumbing for ``DockerCluster``: entrypoint scripts, container creation with pinned host ports,
container state, and the teardown of everything a cluster created.

Design: the teardown finalizer holds a ``Resources`` (the containers and the network), never the cluster,
so that garbage collection of the cluster can run it. testcontainers and the docker SDK are imported only
inside the functions that need them, when a cluster starts.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .procs import free_ports

if TYPE_CHECKING:
    from docker.models.containers import Container
    from testcontainers.core.container import DockerContainer
    from testcontainers.core.network import Network

logger = logging.getLogger("replicarouter.testing")

#: the port PostgreSQL listens on inside its container (and the one replicas stream from)
POSTGRES_PORT = 5432
REDIS_PORT = 6379

#: the signal that makes the postmaster (PID 1 of its container) shut down in each ``pg_ctl -m`` mode
STOP_SIGNALS: dict[str, str] = {"smart": "SIGTERM", "fast": "SIGINT", "immediate": "SIGQUIT"}

#: how often Docker is asked for a container's state while waiting
POLL_INTERVAL = 0.1

# Runs as root in the primary container: installs an init script that the official entrypoint sources
# once, right after initdb, then hands over to that entrypoint.
PRIMARY_ENTRYPOINT = """\
set -eu
cat > /docker-entrypoint-initdb.d/00-replicarouter.sh <<'EOF'
printf '%s\\n' "$REPLICAROUTER_CONF" >> "$PGDATA/postgresql.conf"
printf '%s\\n' "$REPLICAROUTER_HBA" >> "$PGDATA/pg_hba.conf"
EOF
exec docker-entrypoint.sh postgres
"""

# Runs as the postgres user in a replica container: clone the primary into the empty PGDATA on the first
# start only (a restarted replica keeps its data directory and standby.signal), then become the server.
REPLICA_ENTRYPOINT = """\
set -eu
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  tries=0
  until pg_basebackup --pgdata="$PGDATA" --dbname="$REPLICAROUTER_CONNINFO" --write-recovery-conf \\
      --wal-method=stream --checkpoint=fast --no-sync; do
    tries=$((tries + 1))
    if [ "$tries" -ge 60 ]; then exit 1; fi
    echo "replicarouter: pg_basebackup failed, retrying" >&2
    rm -rf "$PGDATA"/*
    sleep 1
  done
  chmod 0700 "$PGDATA"
  printf "\\ncluster_name = '%s'\\n" "$REPLICAROUTER_NODE" >> "$PGDATA/postgresql.conf"
fi
exec postgres
"""


@dataclass
class Resources:
    """What a cluster created in Docker, and how it creates more; the teardown finalizer holds this."""

    cluster_id: str
    containers: list[DockerContainer] = field(default_factory=list)
    network: Network | None = None

    def new_container(self, name: str, image: str, port: int, container_port: int) -> DockerContainer:
        """Return unstarted container ``name`` on the network, ``container_port`` at 127.0.0.1:``port``."""
        from testcontainers.core.container import DockerContainer

        assert self.network is not None
        container = DockerContainer(image)
        container.with_name(f"replicarouter-{self.cluster_id}-{name}")
        container.with_network(self.network)
        container.with_network_aliases(name)
        # testcontainers types port bindings as host ports only; the docker SDK also takes (address, port)
        bindings: dict[str, Any] = container.ports
        bindings[f"{container_port}/tcp"] = ("127.0.0.1", port)
        return container

    def launch(
        self, name: str, port: int, build: Callable[[int], DockerContainer]
    ) -> tuple[DockerContainer, int]:
        """Start ``build(port)``; when the host port got taken meanwhile, retry with another free one."""
        from docker.errors import APIError

        attempts = 5
        for attempt in range(1, attempts + 1):
            container = build(port)
            self.containers.append(container)  # created even when start() fails
            try:
                container.start()
            except APIError as exc:
                if attempt == attempts or not _port_taken(exc):
                    raise
                logger.info("host port %d was taken before %s started: retrying", port, name)
                self.containers.remove(container)
                remove(container)
                port = free_ports(1)[0]
            else:
                return container, port
        raise AssertionError("unreachable")


def teardown(resources: Resources) -> None:
    """Remove every container (paused and stopped ones too) and then the network; ignore what is gone."""
    for container in reversed(resources.containers):
        try:
            remove(container)
        except Exception as exc:
            logger.warning("could not remove a container of %s: %s", container.image, exc)
    resources.containers.clear()
    network, resources.network = resources.network, None
    if network is not None:
        from docker.errors import NotFound

        try:
            network.remove()
        except NotFound:
            pass
        except Exception as exc:
            logger.warning("could not remove Docker network %s: %s", network.name, exc)
        client = getattr(network, "_docker", None)  # testcontainers' Network never closes its client
        with contextlib.suppress(Exception):
            client.client.close()  # type: ignore[union-attr]


def remove(container: DockerContainer) -> None:
    """Force-remove one container with its anonymous volumes (if it was created) and close its client."""
    from docker.errors import NotFound

    try:
        try:
            wrapped = container.get_wrapped_container()
        except Exception:
            return  # never created
        try:
            wrapped.remove(force=True, v=True)
        except NotFound:
            pass
        except Exception:  # some engines refuse to remove a paused container
            with contextlib.suppress(Exception):
                wrapped.unpause()
            wrapped.remove(force=True, v=True)
    finally:
        with contextlib.suppress(Exception):
            container.get_docker_client().client.close()


def conninfo_value(value: str) -> str:
    """Return ``value`` quoted for a libpq keyword/value connection string when it needs quoting."""
    if value and not any(char in value for char in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _port_taken(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "already allocated" in text or "address already in use" in text


def state(container: Container) -> str:
    """Return what Docker says ``container`` is doing now (``running``, ``paused``, ``exited``…)."""
    container.reload()
    return str(container.status)


#: every PostgreSQL container: our entrypoint scripts run by sh, and a /dev/shm larger than Docker's 64 MB
_POSTGRES_KWARGS: dict[str, Any] = {"entrypoint": ["sh", "-c"], "shm_size": "256m"}


def as_primary(
    container: DockerContainer,
    labels: dict[str, str],
    user: str,
    dbname: str,
    password: str | None,
    conf: str,
) -> None:
    """Make ``container`` a primary: the image's initdb for ``user``/``dbname``, then ``conf`` appended."""
    method = "scram-sha-256" if password else "trust"
    container.with_command([PRIMARY_ENTRYPOINT])
    container.with_envs(
        POSTGRES_USER=user,
        POSTGRES_DB=dbname,
        POSTGRES_HOST_AUTH_METHOD=method,
        POSTGRES_INITDB_ARGS="--encoding=UTF8 --locale=C --no-sync",
        REPLICAROUTER_CONF=conf,
        REPLICAROUTER_HBA=f"host replication all all {method}",
    )
    if password:
        container.with_env("POSTGRES_PASSWORD", password)
    container.with_kwargs(labels=labels, **_POSTGRES_KWARGS)


def as_replica(container: DockerContainer, labels: dict[str, str], conninfo: str, node: str) -> None:
    """Make ``container`` replica ``node``, cloned on its first start from the server ``conninfo`` names."""
    container.with_command([REPLICA_ENTRYPOINT])
    container.with_envs(REPLICAROUTER_CONNINFO=conninfo, REPLICAROUTER_NODE=node)
    container.with_kwargs(labels=labels, user="postgres", **_POSTGRES_KWARGS)
