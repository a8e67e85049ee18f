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
The container plumbing (entrypoints, creation, teardown) is in ``containers``; testcontainers and the
docker SDK are imported only when a cluster starts.
"""

from __future__ import annotations

import contextlib
import logging
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Self, Unpack

from . import containers
from .base import ClusterBase, ClusterOptions
from .containers import (
    POLL_INTERVAL,
    POSTGRES_PORT,
    REDIS_PORT,
    STOP_SIGNALS,
    Resources,
    conninfo_value,
    state,
)
from .containers import PRIMARY_ENTRYPOINT as PRIMARY_ENTRYPOINT
from .containers import REPLICA_ENTRYPOINT as REPLICA_ENTRYPOINT
from .faults import StopMode, check_stop_mode
from .node import ClusterError, Node, wait_for
from .procs import free_ports

if TYPE_CHECKING:
    from docker.models.containers import Container
    from testcontainers.core.container import DockerContainer

logger = logging.getLogger("replicarouter.testing")


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
        image: str = "postgres:16",
        redis_image: str = "redis:7",
        **options: Unpack[ClusterOptions],
    ) -> None:
        super().__init__(replicas, **options)
        self.image = image
        self.redis_image = redis_image
        #: short random id in container names and labels (``replicarouter-<id>-primary``)
        self.cluster_id = uuid.uuid4().hex[:10]
        self._resources = Resources(self.cluster_id)
        self._containers: dict[str, DockerContainer] = {}
        self._hostnames: dict[str, str] = {}
        self._redis: DockerContainer | None = None

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
        self._finalizer = weakref.finalize(self, containers.teardown, self._resources)
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

    def _log_tail(self, node: Node, lines: int = 20) -> str:
        try:
            return f"last lines of {node.name}'s container log:\n{self.logs(node, tail=lines)}"
        except Exception as exc:
            return f"(no container log for {node.name}: {exc})"

    # -- building -------------------------------------------------------------------------------------------

    def _postgres_container(self, node: Node, port: int) -> DockerContainer:
        container = self._resources.new_container(node.name, self.image, port, POSTGRES_PORT)
        labels = self._labels(node.name)
        if node.role == "primary":
            conf = self._conf_lines()
            containers.as_primary(container, labels, self.user, self.dbname, self.password, conf)
        else:
            containers.as_replica(container, labels, self._upstream_conninfo(self.primary, node), node.name)
        return container

    def _redis_container(self, port: int) -> DockerContainer:
        container = self._resources.new_container("redis", self.redis_image, port, REDIS_PORT)
        container.with_command(["redis-server", "--save", "", "--appendonly", "no", "--protected-mode", "no"])
        container.with_kwargs(labels=self._labels("redis"))
        return container

    def _conf_lines(self) -> str:
        overrides = {"listen_addresses": "'*'", "port": str(POSTGRES_PORT), "cluster_name": "'primary'"}
        return self._server_conf("docker", overrides)

    def _start_servers(self) -> None:
        ports = free_ports(self.replica_count + 2)
        if self.with_redis:
            self._redis, self.redis_port = self._resources.launch("redis", ports.pop(), self._redis_container)
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

        self._containers[node.name], node.port = self._resources.launch(node.name, node.port, build)

    def _upstream_conninfo(self, upstream: Node, follower: Node) -> str:
        params = {
            "host": self.hostname(upstream),
            "port": str(POSTGRES_PORT),
            "user": self.user,
            "application_name": follower.name,
        }
        if self.password:
            params["password"] = self.password
        return " ".join(f"{key}={conninfo_value(value)}" for key, value in params.items())

    def _is_sender(self, primary: Node, sender_host: str | None, sender_port: int | None) -> bool:
        # every node listens on 5432 inside the network: the sender's host tells them apart
        return sender_host == self.hostname(primary) and sender_port == POSTGRES_PORT

    # -- node faults ----------------------------------------------------------------------------------------

    def _running(self, target: Node) -> tuple[Container, str]:
        """Return ``target``'s container and its state; raise ClusterError unless it runs (or is paused)."""
        container = self.container(target)
        current = state(container)
        if current not in ("running", "paused"):
            raise ClusterError(f"{target.name} is not running (container {current})")
        return container, current

    def stop(self, node: str | Node, mode: StopMode = "fast") -> None:
        """Stop ``node``: ``smart``/``fast``/``immediate`` by the matching signal, ``kill`` by SIGKILL.

        Returns once the container has exited and the node's port refuses connections.
        """
        target = self.node(node)
        check_stop_mode(mode)
        container, current = self._running(target)
        self.faults.stopped.add(target.name)
        if mode == "kill":
            try:
                container.kill(signal="SIGKILL")  # Docker resumes a paused container after signalling it
            except Exception:
                if current != "paused":
                    raise
                container.unpause()  # an engine that will not signal a paused container
                container.kill(signal="SIGKILL")
            else:
                if current == "paused":
                    with contextlib.suppress(Exception):
                        container.unpause()
        else:
            if current == "paused":  # a frozen postmaster cannot act on the signal
                container.unpause()
            container.kill(signal=STOP_SIGNALS[mode])
        self.faults.frozen.discard(target.name)
        wait_for(
            f"{target.name}'s container to exit",
            lambda: state(container) not in ("running", "paused", "restarting"),
            timeout=self.timeout,
            interval=POLL_INTERVAL,
        )
        self._wait_refused(target)
        logger.info("stopped %s (mode %s)", target.name, mode)

    def start(self, node: str | Node) -> None:
        """Start a stopped ``node``; return once it accepts connections (and streams, for a replica)."""
        target = self.node(node)
        container = self.container(target)
        current = state(container)
        if current in ("running", "paused", "restarting"):
            raise ClusterError(f"{target.name} is already running (container {current})")
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
        container, current = self._running(target)
        self.faults.frozen.add(target.name)
        if current == "running":
            container.pause()
        wait_for(
            f"{target.name}'s container to be paused",
            lambda: state(container) == "paused",
            timeout=self.timeout,
            interval=POLL_INTERVAL,
        )
        logger.info("froze %s", target.name)

    def thaw(self, node: str | Node) -> None:
        """Unpause ``node``'s container; return once it accepts connections again."""
        target = self.node(node)
        container, current = self._running(target)
        if current == "paused":
            container.unpause()
        self.faults.frozen.discard(target.name)
        self._after_restart(target)
        logger.info("thawed %s", target.name)

    # -- redis ----------------------------------------------------------------------------------------------

    def stop_redis(self) -> None:
        """Stop the cluster's Redis container (nothing is saved); return once its port refuses connections."""
        container = self.redis_container
        if state(container) not in ("running", "paused"):
            raise ClusterError("redis is not running")
        self.faults.redis_stopped = True
        container.stop(timeout=max(1, int(self.timeout)))
        self._wait_redis(up=False)
        logger.info("stopped redis :%d", self.redis_port)

    def start_redis(self) -> None:
        """Start the cluster's Redis container again on the same port (empty); return once it answers PING."""
        container = self.redis_container
        if state(container) in ("running", "paused", "restarting"):
            raise ClusterError("redis is already running")
        container.start()
        self._wait_redis(up=True)
        self.faults.redis_stopped = False
        logger.info("started redis :%d", self.redis_port)

    def freeze_redis(self) -> None:
        """Not implemented for containers yet (``docker pause`` of the Redis container would do)."""
        raise NotImplementedError("freeze_redis is implemented by LocalCluster only")

    def thaw_redis(self) -> None:
        """Not implemented for containers yet (see ``freeze_redis``)."""
        raise NotImplementedError("thaw_redis is implemented by LocalCluster only")
