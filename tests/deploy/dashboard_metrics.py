"""Which metrics the Grafana dashboard and the alert rules query, read from their PromQL.

The contract between `service/metrics.py` and `k8s/`: every `boxgen_*` series the dashboard or
an alert asks for must be one the service exports. `dashboard_metric_names()` is what a live
check compares with the series names on a running server's `/metrics`.

Queries are parsed with a real PromQL parser (`promql_parser`), so a query that does not parse
fails here rather than in Grafana; Grafana's variables are replaced by values that keep the
query valid first.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import promql_parser

# What the service exports (service/metrics.py), name -> Prometheus type.
EXPORTED_METRICS: dict[str, str] = {
    "boxgen_requests_total": "counter",
    "boxgen_images_generated_total": "counter",
    "boxgen_generate_latency_seconds": "histogram",
    "boxgen_image_seconds": "histogram",
    "boxgen_samples_total": "counter",
    "boxgen_samples_selected_total": "counter",
    "boxgen_finetune_jobs_total": "counter",
    "boxgen_finetune_jobs_current": "gauge",
    "boxgen_finetune_duration_seconds": "histogram",
    "boxgen_models_loaded": "gauge",
    "boxgen_gpu_memory_bytes": "gauge",
    "boxgen_requests_rejected_total": "counter",
    "boxgen_requests_in_flight": "gauge",
    "boxgen_inference_batch_requests": "histogram",
}
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")

# Grafana's interval variables stand where PromQL wants a duration; the others (namespace,
# sku, datasource) only inside label matcher strings, where any regex will do.
_INTERVALS = "__rate_interval|__interval|__range"
_INTERVAL_VARIABLES = re.compile(rf"\$({_INTERVALS})\b|\$\{{({_INTERVALS})\}}")
_OTHER_VARIABLES = re.compile(r"\$\{[A-Za-z0-9_:]+\}|\$[A-Za-z_][A-Za-z0-9_]*")
# Grafana's templating functions wrap a PromQL selector or query: label_values(q, label).
_TEMPLATE_FUNCTION = re.compile(r"^\s*(label_values|query_result|metrics)\s*\((.*)\)\s*$", re.S)


def exported_series_names() -> set[str]:
    """Every series name the exported metrics appear under on /metrics (histogram parts too)."""
    names: set[str] = set()
    for name, kind in EXPORTED_METRICS.items():
        if kind == "histogram":
            names.update(name + suffix for suffix in HISTOGRAM_SUFFIXES)
        else:
            names.add(name)
    return names


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL query selects; raises ValueError when it does not parse."""
    expr = _INTERVAL_VARIABLES.sub("5m", expr)
    expr = _OTHER_VARIABLES.sub(".*", expr)
    try:
        tree = promql_parser.parse(expr)
    except Exception as exc:  # the parser raises its own error types
        raise ValueError(f"PromQL does not parse: {expr!r}: {exc}") from None
    names: set[str] = set()

    def visit(node: Any) -> None:
        if isinstance(node, promql_parser.VectorSelector):
            if node.name:
                names.add(node.name)
            for matcher in node.matchers.matchers:  # {__name__="..."} selects by name too
                if matcher.name == "__name__":
                    names.add(matcher.value)

    promql_parser.walk(tree, pre_visit=visit)
    return names


def _template_query(query: str) -> str | None:
    """The PromQL inside a Grafana templating query, or None when it has none."""
    match = _TEMPLATE_FUNCTION.match(query)
    if not match:
        return query
    function, args = match.groups()
    if function == "metrics":
        return None
    if function == "label_values":
        # label_values(label) has no query; label_values(query, label) ends in ", label".
        head, _, _label = args.rpartition(",")
        return head or None
    return args


def dashboard_queries(path: str | Path) -> list[str]:
    """Every PromQL query in a Grafana dashboard JSON: panel targets and templating queries."""
    dashboard = json.loads(Path(path).read_text())
    queries: list[str] = []

    def panels(items: list[dict[str, Any]]) -> Iterator[dict[str, Any]]:
        for panel in items:
            yield panel
            yield from panels(panel.get("panels", []))  # collapsed rows nest their panels

    for panel in panels(dashboard.get("panels", [])):
        queries += [t["expr"] for t in panel.get("targets", []) if t.get("expr")]
    for variable in dashboard.get("templating", {}).get("list", []):
        if variable.get("type") != "query":
            continue
        query = variable.get("query")
        if isinstance(query, dict):
            query = query.get("query")
        if query and (promql := _template_query(query)):
            queries.append(promql)
    return queries


def dashboard_metric_names(path: str | Path) -> set[str]:
    """Every metric name the dashboard at `path` queries (series names, e.g. `..._bucket`)."""
    names: set[str] = set()
    for query in dashboard_queries(path):
        names |= promql_metric_names(query)
    return names
