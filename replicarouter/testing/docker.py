"""The same test cluster as ``LocalCluster``, but in Docker containers (``DockerCluster``).

Design: for machines with a Docker engine and no local PostgreSQL. One user-defined network per cluster;
the primary runs the official postgres image, whose entrypoint initialises it (user, database, password)
while an init script appends our replication settings and a ``host replication`` rule; each replica is
the same image with a small entrypoint that ``pg_basebackup -R``s the primary into its empty PGDATA on
first start and then execs ``postgres``, so replication is PostgreSQL's own streaming replication. Nodes
reach each other by network alias (their node name) on port 5432; tests reach them on 127.0.0.1 ports
that are picked free up front and pinned (Docker would hand out a new random port on every restart).
Node faults are Docker operations: signals to the postmaster (PID 1) for stops, ``docker pause`` for
freezes. Containers are created through testcontainers, so the Ryuk reaper removes them when the Python
process dies outright; ``down()`` (also registered with ``weakref.finalize``) removes them otherwise.
testcontainers and the docker SDK are imported only when a cluster starts.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from .base import STOP_MODES, ClusterBase, ClusterError, Node, StopMode, wait_for
from .local import BASE_CONF, redis_ping
from .procs import free_ports, port_open

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
class _Resources:
    """What a cluster created in Docker; the teardown finalizer holds this, never the cluster itself."""

    containers: list[DockerContainer] = field(default_factory=list)
    network: Network | None = None


def _teardown(resources: _Resources) -> None:
    """Remove every container (paused and stopped ones too) and then the network; ignore what is gone."""
    for container in reversed(resources.containers):
        try:
            _remove(container)
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


def _remove(container: DockerContainer) -> None:
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


def _conninfo_value(value: str) -> str:
    """Return ``value`` quoted for a libpq keyword/value connection string when it needs quoting."""
    if value and not any(char in value for char in " '\\\t\n"):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _port_taken(exc: BaseException) -> bool:
    text = str(exc).lower()
    return "already allocated" in text or "address already in use" in text


class DockerCluster(ClusterBase):
    """A PostgreSQL primary, ``replicas`` streaming hot standbys and a Redis, in Docker containers.

    Nodes are published on 127.0.0.1 (``Node.host``) at free host ports that stay the same across
    ``stop``/``start``. Use it as a context manager (``with DockerCluster() as cluster:``) or call ``up()``
    and ``close()``. Set ``TESTCONTAINERS_RYUK_DISABLED=true`` where the Ryuk reaper cannot run.
    """

    def __init__(
        self,
        replicas: int = 2,
        *,
        dbname: str = "replicarouter",
        user: str = "postgres",
        password: str | None = None,
        image: str = "postgres:16",
        redis_image: str = "redis:7",
        conf: dict[str, str] | None = None,
        redis: bool = True,
        timeout: float = 30.0,
    ) -> None:
        super().__init__(
            replicas=replicas,
            dbname=dbname,
            user=user,
            password=password,
            conf=conf,
            redis=redis,
            timeout=timeout,
        )
        self.image = image
        self.redis_image = redis_image
        #: short random id in container names and labels (``replicarouter-<id>-primary``)
        self.cluster_id = uuid.uuid4().hex[:10]
        self.startup_seconds: float | None = None
        self._resources = _Resources()
        self._containers: dict[str, DockerContainer] = {}
        self._hostnames: dict[str, str] = {}
        self._redis: DockerContainer | None = None
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- lifecycle ------------------------------------------------------------------------------------------

    def up(self) -> Self:
        """Start every container and wait until each replica streams and Redis answers PING."""
        if self._finalizer is not None:
            raise ClusterError("this cluster was started already (a DockerCluster starts once)")
        try:
            import docker.errors
            from testcontainers.core.network import Network
        except ImportError as exc:
            raise ClusterError(
                f"the Docker backend needs testcontainers ({exc}): pip install 'django-replicarouter[docker]'"
            ) from exc
        started = time.monotonic()
        # from here on, whatever happens, the containers and the network go away with this object
        self._finalizer = weakref.finalize(self, _teardown, self._resources)
        try:
            network = Network(docker_network_kw={"labels": self._labels("network")})
            self._resources.network = network.create()
            self._start_servers()
        except docker.errors.DockerException as exc:
            self.down()
            raise ClusterError(f"could not start the Docker cluster: {exc}") from exc
        except BaseException:
            self.down()
            raise
        self.startup_seconds = time.monotonic() - started
        logger.info(
            "docker cluster %s up in %.2f s: primary :%d, replicas %s, redis :%d",
            self.cluster_id,
            self.startup_seconds,
            self.primary.port,
            [r.port for r in self.replicas],
            self.redis_port,
        )
        return self

    def down(self) -> None:
        """Remove every container and the network (safe to call more than once)."""
        if self._finalizer is not None:
            self._finalizer()

    @property
    def is_up(self) -> bool:
        """Return whether ``up()`` ran and ``down()`` has not."""
        return self._finalizer is not None and self._finalizer.alive

    # -- containers -----------------------------------------------------------------------------------------

    @property
    def network_name(self) -> str | None:
        """Return the name of the cluster's Docker network (None before ``up``)."""
        network = self._resources.network
        return None if network is None else network.name

    def container(self, node: str | Node) -> Container:
        """Return the docker SDK container of ``node``."""
        name = self.node(node).name
        if name not in self._containers:
            raise ClusterError(f"{name} has no container: the cluster is not up")
        return self._containers[name].get_wrapped_container()

    @property
    def redis_container(self) -> Container:
        """Return the docker SDK container of the cluster's Redis."""
        if self._redis is None:
            raise ClusterError("this cluster has no Redis container")
        return self._redis.get_wrapped_container()

    def hostname(self, node: str | Node) -> str:
        """Return the name by which the other containers reach ``node`` (on port 5432)."""
        name = self.node(node).name
        if name not in self._hostnames:
            raise ClusterError(f"{name} has no container: the cluster is not up")
        return self._hostnames[name]

    def logs(self, node: str | Node, tail: int = 50) -> str:
        """Return the last ``tail`` lines of ``node``'s container log."""
        output = self.container(node).logs(tail=tail)
        return bytes(output).decode(errors="replace")

    def _labels(self, role: str) -> dict[str, str]:
        return {
            "replicarouter.cluster": self.cluster_id,
            "replicarouter.node": role,
            "replicarouter.started-by": str(getattr(self, "started_by", "python")),
        }

    def _state(self, container: Container) -> str:
        container.reload()
        return str(container.status)

    def _log_tail(self, node: Node, lines: int = 20) -> str:
        try:
            return f"last lines of {node.name}'s container log:\n{self.logs(node, tail=lines)}"
        except Exception as exc:
            return f"(no container log for {node.name}: {exc})"

    # -- building -------------------------------------------------------------------------------------------

    def _launch(
        self, name: str, port: int, build: Callable[[int], DockerContainer]
    ) -> tuple[DockerContainer, int]:
        """Start ``build(port)``; when the host port got taken meanwhile, retry with another free one."""
        from docker.errors import APIError

        attempts = 5
        for attempt in range(1, attempts + 1):
            container = build(port)
            self._resources.containers.append(container)  # created even when start() fails
            try:
                container.start()
            except APIError as exc:
                if attempt == attempts or not _port_taken(exc):
                    raise
                logger.info("host port %d was taken before %s started: retrying", port, name)
                self._resources.containers.remove(container)
                _remove(container)
                port = free_ports(1)[0]
            else:
                return container, port
        raise AssertionError("unreachable")

    def _container(self, name: str, image: str, port: int, container_port: int) -> DockerContainer:
        """Return an unstarted container on the cluster network, ``container_port`` on 127.0.0.1:``port``."""
        from testcontainers.core.container import DockerContainer

        assert self._resources.network is not None
        container = DockerContainer(image)
        container.with_name(f"replicarouter-{self.cluster_id}-{name}")
        container.with_network(self._resources.network)
        container.with_network_aliases(name)
        # testcontainers types port bindings as host ports only; the docker SDK also takes (address, port)
        bindings: dict[str, Any] = container.ports
        bindings[f"{container_port}/tcp"] = ("127.0.0.1", port)
        return container

    def _postgres_container(self, node: Node, port: int) -> DockerContainer:
        container = self._container(node.name, self.image, port, POSTGRES_PORT)
        method = "scram-sha-256" if self.password else "trust"
        kwargs: dict[str, Any] = {
            "labels": self._labels(node.name),
            "entrypoint": ["sh", "-c"],
            "shm_size": "256m",
        }
        if node.role == "primary":
            container.with_command([PRIMARY_ENTRYPOINT])
            container.with_envs(
                POSTGRES_USER=self.user,
                POSTGRES_DB=self.dbname,
                POSTGRES_HOST_AUTH_METHOD=method,
                POSTGRES_INITDB_ARGS="--encoding=UTF8 --locale=C --no-sync",
                REPLICAROUTER_CONF=self._conf_lines(),
                REPLICAROUTER_HBA=f"host replication all all {method}",
            )
            if self.password:
                container.with_env("POSTGRES_PASSWORD", self.password)
        else:
            container.with_command([REPLICA_ENTRYPOINT])
            container.with_envs(
                REPLICAROUTER_CONNINFO=self._upstream_conninfo(self.primary, node),
                REPLICAROUTER_NODE=node.name,
            )
            kwargs["user"] = "postgres"
        container.with_kwargs(**kwargs)
        return container

    def _redis_container(self, port: int) -> DockerContainer:
        container = self._container("redis", self.redis_image, port, REDIS_PORT)
        container.with_command(["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"])
        container.with_kwargs(labels=self._labels("redis"))
        return container

    def _conf_lines(self) -> str:
        conf = dict(BASE_CONF)
        conf.update(self.extra_conf)
        conf["listen_addresses"] = "'*'"
        conf["port"] = str(POSTGRES_PORT)
        conf["cluster_name"] = "'primary'"
        body = "".join(f"{key} = {value}\n" for key, value in conf.items())
        return f"\n# replicarouter.testing (docker)\n{body}"

    def _start_servers(self) -> None:
        ports = free_ports(self.replica_count + 2)
        if self.with_redis:
            self._redis, self.redis_port = self._launch("redis", ports.pop(), self._redis_container)
        else:
            ports.pop()
        primary = Node("primary", "127.0.0.1", ports.pop(0), self.dbname, self.user, self.password, "primary")
        self._add_postgres(primary)
        try:
            wait_for("the primary to accept connections", primary.accepts_connections, timeout=self.timeout)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self._log_tail(primary)}") from exc
        for i, port in enumerate(ports, start=1):
            self._add_postgres(
                Node(f"replica{i}", "127.0.0.1", port, self.dbname, self.user, self.password, "replica")
            )
        try:
            wait_for("every replica to stream from the primary", self._all_streaming, timeout=self.timeout)
            for replica in self.replicas:
                wait_for(
                    f"{replica.name} to accept connections", replica.accepts_connections, timeout=self.timeout
                )
        except ClusterError as exc:
            tails = "\n".join(self._log_tail(replica) for replica in self.replicas)
            raise ClusterError(f"{exc}\n{tails}") from exc
        if self.with_redis:
            self._wait_redis(up=True)

    def _add_postgres(self, node: Node) -> None:
        self.nodes.append(node)  # before building: a replica's conninfo needs self.primary
        self._hostnames[node.name] = node.name

        def build(port: int) -> DockerContainer:
            return self._postgres_container(node, port)

        self._containers[node.name], node.port = self._launch(node.name, node.port, build)

    def _all_streaming(self) -> bool:
        wanted = {r.name for r in self.replicas}
        if not wanted:
            return True
        rows = self.primary.query(
            "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
        )
        return wanted <= {row[0] for row in rows}

    def _upstream_conninfo(self, upstream: Node, follower: Node) -> str:
        params = {
            "host": self.hostname(upstream),
            "port": str(POSTGRES_PORT),
            "user": self.user,
            "application_name": follower.name,
        }
        if self.password:
            params["password"] = self.password
        return " ".join(f"{key}={_conninfo_value(value)}" for key, value in params.items())

    # -- streaming ------------------------------------------------------------------------------------------

    def wait_streaming(self, node: str | Node, timeout: float | None = None) -> None:
        """Wait until a replica's WAL receiver streams from the current primary's container."""
        replica = self.node(node)
        primary = self.primary
        upstream = self.hostname(primary)

        def streaming() -> bool:
            rows = replica.query("SELECT status, sender_host, sender_port FROM pg_stat_wal_receiver")
            return (
                bool(rows)
                and rows[0][0] == "streaming"
                and rows[0][1] == upstream
                and self._is_sender(primary, rows[0][2])
            )

        wait_for(f"{replica.name} to stream from {primary.name}", streaming, timeout=timeout or self.timeout)

    def _is_sender(self, primary: Node, sender_port: int | None) -> bool:
        # every node listens on 5432 inside the network; wait_streaming compares the sender's host too
        return sender_port == POSTGRES_PORT

    # -- node faults ----------------------------------------------------------------------------------------

    def stop(self, node: str | Node, mode: StopMode = "fast") -> None:
        """Stop ``node``: ``smart``/``fast``/``immediate`` by the matching signal, ``kill`` by SIGKILL.

        Returns once the container has exited and the node's port refuses connections.
        """
        target = self.node(node)
        if mode not in STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(STOP_MODES)}, not {mode!r}")
        container = self.container(target)
        state = self._state(container)
        if state not in ("running", "paused"):
            raise ClusterError(f"{target.name} is not running (container {state})")
        self.faults.stopped.add(target.name)
        if mode == "kill":
            try:
                container.kill(signal="SIGKILL")  # Docker resumes a paused container after signalling it
            except Exception:
                if state != "paused":
                    raise
                container.unpause()  # an engine that will not signal a paused container
                container.kill(signal="SIGKILL")
            else:
                if state == "paused":
                    with contextlib.suppress(Exception):
                        container.unpause()
        else:
            if state == "paused":  # a frozen postmaster cannot act on the signal
                container.unpause()
            container.kill(signal=STOP_SIGNALS[mode])
        self.faults.frozen.discard(target.name)
        wait_for(
            f"{target.name}'s container to exit",
            lambda: self._state(container) not in ("running", "paused", "restarting"),
            timeout=self.timeout,
            interval=POLL_INTERVAL,
        )
        wait_for(
            f"{target.name} to refuse connections", lambda: not port_open(target.port), timeout=self.timeout
        )
        logger.info("stopped %s (mode %s)", target.name, mode)

    def start(self, node: str | Node) -> None:
        """Start a stopped ``node``; return once it accepts connections (and streams, for a replica)."""
        target = self.node(node)
        container = self.container(target)
        state = self._state(container)
        if state in ("running", "paused", "restarting"):
            raise ClusterError(f"{target.name} is already running (container {state})")
        container.start()
        self.faults.stopped.discard(target.name)
        try:
            self._after_restart(target)
        except ClusterError as exc:
            raise ClusterError(f"{exc}\n{self._log_tail(target)}") from exc
        logger.info("started %s", target.name)

    def freeze(self, node: str | Node) -> None:
        """Pause ``node``'s container (``docker pause``); return once Docker reports it paused."""
        target = self.node(node)
        container = self.container(target)
        state = self._state(container)
        if state not in ("running", "paused"):
            raise ClusterError(f"{target.name} is not running (container {state})")
        self.faults.frozen.add(target.name)
        if state == "running":
            container.pause()
        wait_for(
            f"{target.name}'s container to be paused",
            lambda: self._state(container) == "paused",
            timeout=self.timeout,
            interval=POLL_INTERVAL,
        )
        logger.info("froze %s", target.name)

    def thaw(self, node: str | Node) -> None:
        """Unpause ``node``'s container; return once it accepts connections again."""
        target = self.node(node)
        container = self.container(target)
        state = self._state(container)
        if state not in ("running", "paused"):
            raise ClusterError(f"{target.name} is not running (container {state})")
        if state == "paused":
            container.unpause()
        self.faults.frozen.discard(target.name)
        self._after_restart(target)
        logger.info("thawed %s", target.name)

    # -- redis ----------------------------------------------------------------------------------------------

    def _wait_redis(self, *, up: bool) -> None:
        def state_reached() -> bool:
            return redis_ping(self.redis_host, self.redis_port) is up

        wait_for(
            f"redis on :{self.redis_port} to be {'up' if up else 'down'}",
            state_reached,
            timeout=self.timeout,
        )

    def stop_redis(self) -> None:
        """Stop the cluster's Redis container (nothing is saved); return once its port refuses connections."""
        container = self.redis_container
        if self._state(container) not in ("running", "paused"):
            raise ClusterError("redis is not running")
        self.faults.redis_stopped = True
        container.stop(timeout=max(1, int(self.timeout)))
        self._wait_redis(up=False)
        logger.info("stopped redis :%d", self.redis_port)

    def start_redis(self) -> None:
        """Start the cluster's Redis container again on the same port (empty); return once it answers PING."""
        container = self.redis_container
        if self._state(container) in ("running", "paused", "restarting"):
            raise ClusterError("redis is already running")
        container.start()
        self._wait_redis(up=True)
        self.faults.redis_stopped = False
        logger.info("started redis :%d", self.redis_port)
