"""The Grafana dashboard of the compose demo stack against the metrics replicarouter exports.

Only the dashboard's JSON is read here (no Docker, no YAML parser): scripts/check-compose validates the
compose file and the provisioning YAML with the real tools.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

DASHBOARD = Path(__file__).resolve().parents[2] / "compose" / "grafana" / "dashboards" / "replicarouter.json"
#: the uid given to Prometheus in compose/grafana/provisioning/datasources/prometheus.yml
DATASOURCE_UID = "prometheus"
GRID_WIDTH = 24

# quoted PromQL strings (label values, regexes) are data, not metric names
STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'|`[^`]*`')
OUR_METRIC = re.compile(r"\breplicarouter_[a-zA-Z0-9_:]*")

Panel = dict[str, Any]


@pytest.fixture(scope="module")
def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


@pytest.fixture(scope="module")
def metric_names() -> frozenset[str]:
    from replicarouter.observability.metrics import METRIC_NAMES

    return METRIC_NAMES


def all_panels(panels: list[Panel]) -> Iterator[Panel]:
    for panel in panels:
        yield panel
        yield from all_panels(panel.get("panels", []))  # a collapsed row holds its panels


def query_panels(dashboard: dict[str, Any]) -> list[Panel]:
    return [panel for panel in all_panels(dashboard["panels"]) if panel["type"] != "row"]


def queries(dashboard: dict[str, Any]) -> list[tuple[str, str]]:
    """Return (where, PromQL) for every panel target and template variable."""
    found = [
        (f"panel {panel['title']!r} target {target['refId']}", target["expr"])
        for panel in query_panels(dashboard)
        for target in panel["targets"]
    ]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            query = variable["query"]
            found.append(
                (f"variable ${variable['name']}", query["query"] if isinstance(query, dict) else query)
            )
    return found


def metrics_in(expr: str) -> set[str]:
    return set(OUR_METRIC.findall(STRING.sub('""', expr)))


def test_metrics_in_reads_names_and_ignores_label_values() -> None:
    expr = 'sum by (alias) (rate(replicarouter_reads_routed_total{alias="replicarouter_x"}[5m])) * 60'
    assert metrics_in(expr) == {"replicarouter_reads_routed_total"}


def test_every_query_reads_only_exported_metrics(
    dashboard: dict[str, Any], metric_names: frozenset[str]
) -> None:
    unknown = {}
    for where, expr in queries(dashboard):
        names = metrics_in(expr)
        assert names, f"{where} reads no replicarouter metric: {expr}"
        if names - metric_names:
            unknown[where] = sorted(names - metric_names)
    assert not unknown, f"metrics that replicarouter.metrics does not export: {unknown}"


def test_every_exported_metric_is_on_the_dashboard(
    dashboard: dict[str, Any], metric_names: frozenset[str]
) -> None:
    shown = set().union(*(metrics_in(expr) for _, expr in queries(dashboard)))
    assert not metric_names - shown, f"add a panel for {sorted(metric_names - shown)}"


def test_cluster_variable_lists_the_clusters(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "cluster"]
    assert variable["definition"] == "label_values(replicarouter_node_state, cluster)"
    assert variable["datasource"]["uid"] == DATASOURCE_UID


def test_every_panel_queries_the_provisioned_prometheus(dashboard: dict[str, Any]) -> None:
    panels = query_panels(dashboard)
    assert len(panels) >= 10
    wrong = [
        panel["title"]
        for panel in panels
        if panel.get("datasource", {}).get("uid") != DATASOURCE_UID
        or not panel["targets"]
        or any(
            target.get("datasource", {}).get("uid", DATASOURCE_UID) != DATASOURCE_UID
            for target in panel["targets"]
        )
    ]
    assert not wrong, f"panels without targets or not on datasource uid {DATASOURCE_UID!r}: {wrong}"


def test_panel_ids_and_ref_ids_are_unique(dashboard: dict[str, Any]) -> None:
    ids = [panel["id"] for panel in all_panels(dashboard["panels"])]
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in query_panels(dashboard):
        refs = [target["refId"] for target in panel["targets"]]
        assert len(refs) == len(set(refs)), f"panel {panel['title']!r} repeats a refId: {refs}"


def test_panels_fit_the_grid_without_overlapping(dashboard: dict[str, Any]) -> None:
    taken: dict[tuple[int, int], str] = {}
    for panel in all_panels(dashboard["panels"]):
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["w"] > 0 and pos["x"] + pos["w"] <= GRID_WIDTH, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in taken, f"{panel['title']!r} overlaps {taken[x, y]!r} at x={x} y={y}"
                taken[x, y] = panel["title"]
