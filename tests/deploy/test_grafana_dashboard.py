"""k8s/grafana/boxgen-dashboard.json: loads, is well formed, and queries only exported metrics.

The live counterpart (the same names against a running server's /metrics) uses
`tests.deploy.dashboard_metrics.dashboard_metric_names`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.deploy.dashboard_metrics import (
    EXPORTED_METRICS,
    dashboard_metric_names,
    dashboard_queries,
    exported_series_names,
    promql_metric_names,
)

DASHBOARD = Path(__file__).resolve().parents[2] / "k8s" / "grafana" / "boxgen-dashboard.json"


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def test_dashboard_loads_with_unique_panels_on_the_grid(dashboard):
    assert dashboard["uid"] == "boxgen-overview"
    panels = dashboard["panels"]
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    for panel in panels:
        grid = panel["gridPos"]
        assert 0 <= grid["x"] and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] != "row":
            assert panel["targets"], panel["title"]
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
    variables = {v["name"] for v in dashboard["templating"]["list"]}
    assert variables == {"datasource", "namespace", "sku"}


def test_every_query_parses_and_selects_only_exported_metrics():
    queries = dashboard_queries(DASHBOARD)
    assert len(queries) >= 15
    names = dashboard_metric_names(DASHBOARD)
    assert names <= exported_series_names(), names - exported_series_names()


def test_dashboard_covers_throughput_latency_selection_jobs_and_gpu():
    names = dashboard_metric_names(DASHBOARD)
    families = {n.removesuffix(s) for n in names for s in ("_bucket", "_sum", "_count")
                if n.endswith(s)} | names
    # Everything the service exports is on the dashboard.
    assert set(EXPORTED_METRICS) <= families, set(EXPORTED_METRICS) - families


def test_metric_names_come_from_the_parse_not_from_text():
    assert promql_metric_names(
        'sum(rate(boxgen_requests_total{status=~"5..", note="boxgen_fake"}[$__rate_interval]))'
        ' / ignoring(status) {__name__="boxgen_samples_total"}'
    ) == {"boxgen_requests_total", "boxgen_samples_total"}
    with pytest.raises(ValueError, match="does not parse"):
        promql_metric_names("sum(rate(boxgen_requests_total[5m])")
