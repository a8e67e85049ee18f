"""Pure parts of replicarouter.testing: settings for Django, environment, CI policy, small parsers."""

from __future__ import annotations

import pytest

from replicarouter.testing import ClusterError, LocalCluster, Node, django_settings
from replicarouter.testing.base import ClusterBase
from replicarouter.testing.docker import DockerCluster
from replicarouter.testing.faults import _setting_millis
from replicarouter.testing.plugin import cluster_required
from replicarouter.testing.settings import cluster, environment


def _cluster(password: str | None = None) -> ClusterBase:
    instance = LocalCluster()  # never started: only its topology is used
    instance.nodes = [
        Node("primary", "127.0.0.1", 5501, "app", "postgres", password, "primary"),
        Node("replica1", "127.0.0.1", 5502, "app", "postgres", password, "replica"),
        Node("replica2", "127.0.0.1", 5503, "app", "postgres", password, "replica"),
    ]
    instance.redis_port = 6400
    return instance


def test_django_settings_map_primary_and_replicas():
    values = django_settings(_cluster(), STICKY="lsn")
    databases = values["DATABASES"]
    assert list(databases) == ["default", "replica1", "replica2"]
    assert databases["default"] == {
        "ENGINE": "replicarouter.backends.postgresql",
        "NAME": "app",
        "USER": "postgres",
        "PASSWORD": "",
        "HOST": "127.0.0.1",
        "PORT": "5501",
    }
    assert databases["replica2"]["PORT"] == "5503"
    assert databases["replica2"]["TEST"] == {"MIRROR": "default", "MIRROR_CONNECTION": False}
    assert values["REPLICAROUTER"] == {
        "CLUSTERS": {"default": {"PRIMARY": "default", "REPLICAS": ["replica1", "replica2"]}},
        "REDIS_URL": "redis://127.0.0.1:6400/0",
        "STICKY": "lsn",
    }


def test_custom_engine_and_primary_alias():
    values = django_settings(_cluster(), engine="django.db.backends.postgresql", primary_alias="main")
    assert values["DATABASES"]["main"]["ENGINE"] == "django.db.backends.postgresql"
    assert values["DATABASES"]["replica1"]["TEST"] == {"MIRROR": "main", "MIRROR_CONNECTION": False}
    assert values["REPLICAROUTER"]["CLUSTERS"]["default"]["PRIMARY"] == "main"


def test_topology_follows_roles():
    instance = _cluster()
    instance.nodes[0].role = "detached"
    instance.nodes[1].role = "primary"
    assert instance.primary.name == "replica1"
    assert [n.name for n in instance.replicas] == ["replica2"]
    assert list(instance.databases()) == ["default", "replica2"]
    with pytest.raises(ClusterError, match="no node 'nope'"):
        instance.node("nope")


BACKEND_METHODS = {
    "up", "stop", "start", "freeze", "thaw", "stop_redis", "start_redis",
    "freeze_redis", "thaw_redis",
    "_upstream_conninfo", "_is_sender", "_log_tail",
}  # fmt: skip


def test_cluster_base_is_abstract_over_what_a_backend_provides():
    with pytest.raises(TypeError, match="abstract"):
        ClusterBase()  # type: ignore[abstract]
    assert ClusterBase.__abstractmethods__ == BACKEND_METHODS
    for backend in (LocalCluster, DockerCluster):
        assert not backend.__abstractmethods__
        assert set(vars(backend)) >= BACKEND_METHODS


def test_password_is_in_dsn_but_not_in_repr():
    node = _cluster(password="pw").primary
    assert node.dsn == "host=127.0.0.1 port=5501 dbname=app user=postgres password=pw"
    assert node.url == "postgresql://postgres:pw@127.0.0.1:5501/app"
    assert "pw" not in repr(node)
    assert node.settings()["PASSWORD"] == "pw"


def test_environment_exports():
    env = environment(_cluster())
    assert env["REPLICAROUTER_PRIMARY_URL"] == "postgresql://postgres@127.0.0.1:5501/app"
    assert env["REPLICAROUTER_REPLICA_URLS"].split(",") == [
        "postgresql://postgres@127.0.0.1:5502/app",
        "postgresql://postgres@127.0.0.1:5503/app",
    ]
    assert env["REPLICAROUTER_REDIS_URL"] == "redis://127.0.0.1:6400/0"
    assert env["PGPORT"] == "5501"


@pytest.mark.parametrize(
    ("value", "millis"), [("0", 0), ("1500ms", 1500), ("2s", 2000), ("1min", 60000), ("1h", 3600000)]
)
def test_setting_millis(value, millis):
    assert _setting_millis(value) == millis


@pytest.mark.parametrize(
    ("env", "required"),
    [({}, False), ({"CI": "true"}, True), ({"CI": "1"}, True), ({"CI": "false"}, False),
     ({"REPLICAROUTER_REQUIRE_CLUSTER": "yes"}, True)],
)  # fmt: skip
def test_ci_requires_a_cluster(monkeypatch, env, required):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("REPLICAROUTER_REQUIRE_CLUSTER", raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert cluster_required() is required


def test_unknown_backend_is_an_error():
    with pytest.raises(ClusterError, match="unknown cluster backend 'podman'"):
        cluster(backend="podman")  # type: ignore[arg-type]


PLUGIN_TEST = """
def test_uses_cluster(replica_cluster):
    assert replica_cluster.primary
"""


def test_plugin_skips_without_servers_locally(pytester, monkeypatch, tmp_path):
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.delenv("REPLICAROUTER_REQUIRE_CLUSTER", raising=False)
    monkeypatch.setenv("REPLICAROUTER_CLUSTER_BACKEND", "local")
    monkeypatch.setenv("REPLICAROUTER_PG_BINDIR", str(tmp_path / "missing"))
    pytester.makepyfile(PLUGIN_TEST)
    result = pytester.runpytest("-rs", "-p", "no:django")
    result.assert_outcomes(skipped=1)
    result.stdout.fnmatch_lines(["*could not start a cluster*REPLICAROUTER_PG_BINDIR*"])


def test_plugin_fails_without_servers_under_ci(pytester, monkeypatch, tmp_path):
    monkeypatch.setenv("CI", "true")
    monkeypatch.setenv("REPLICAROUTER_CLUSTER_BACKEND", "local")
    monkeypatch.setenv("REPLICAROUTER_PG_BINDIR", str(tmp_path / "missing"))
    pytester.makepyfile(PLUGIN_TEST)
    result = pytester.runpytest("-p", "no:django")
    result.assert_outcomes(errors=1)
    result.stdout.fnmatch_lines(["*CI=true: failing instead of skipping*"])
