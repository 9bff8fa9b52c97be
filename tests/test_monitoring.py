"""The monitoring manifests in k8s/monitoring/ agree with the metrics avfuse exposes.

The Grafana dashboard may only query metrics that ``pipeline.observe.metrics.Metrics`` defines, and
every metric it defines must be on some panel, so renaming or adding a metric without
touching the dashboard fails here. The PodMonitor is validated offline against the
Prometheus Operator CRD in ../shared/k8s-crds/. No network, no Ray.
"""

from __future__ import annotations

import copy
import json
import re
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml
from prometheus_client import CollectorRegistry, values

from pipeline.observe.metrics import Metrics
from tests.k8s_schemas import crd_validator

REPO = Path(__file__).resolve().parents[1]
MONITORING = REPO / "k8s" / "monitoring"
DASHBOARD = MONITORING / "grafana-dashboard.json"
PODMONITOR = MONITORING / "podmonitor.yaml"
SCRAPE_CONFIG = MONITORING / "prometheus-scrape.yaml"

METRICS_PORT = 9108  # default of the config's metrics.port
METRICS_PORT_NAME = "avfuse-metrics"  # container port name of the avfuse pods (Ray names its own "metrics")
METRICS_PATH = "/metrics"
POD_LABELS = {"app.kubernetes.io/name": "avfuse"}
# Labels that Prometheus (job, instance) and the PodMonitor / kubernetes_sd relabelings attach
# to every series: these may be matched or grouped on although no avfuse metric declares them.
TARGET_LABELS = {"job", "instance", "namespace", "pod", "container", "endpoint", "component"}
TEMPLATE_BUILTINS = {"__rate_interval", "__interval", "__range", "__all"}


# ---------------------------------------------------------------------------------------------
# What avfuse exposes


@dataclass(frozen=True)
class Exposed:
    families: dict[str, set[str]]  # family name -> names of its samples (_total, _bucket, ...)
    labels: dict[str, set[str]]  # sample name -> its label names (le included for _bucket)

    @property
    def sample_names(self) -> set[str]:
        return set(self.labels)


@pytest.fixture(scope="module")
def exposed() -> Exposed:
    """Every metric family of ``Metrics`` with the sample names it is scraped under."""
    with pytest.MonkeyPatch.context() as mp:
        # Count in memory even if another test switched this process to multiprocess mode.
        mp.setattr(values, "ValueClass", values.MutexValue)
        registry = CollectorRegistry()
        metrics = Metrics(registry)
        # A labelled metric has no samples until it has a child: give each one, so that the
        # exposition shows its real sample names and label names.
        for metric in vars(metrics).values():
            label_names = getattr(metric, "_labelnames", ())
            if label_names:
                metric.labels(*["x"] * len(label_names))
        families: dict[str, set[str]] = {}
        labels: dict[str, set[str]] = {}
        for family in registry.collect():
            # _created samples are off in multiprocess mode, which is how avfuse is scraped.
            samples = [s for s in family.samples if s.name != f"{family.name}_created"]
            families[family.name] = {s.name for s in samples}
            for s in samples:
                labels.setdefault(s.name, set()).update(s.labels)
    assert families, "Metrics registered nothing"
    return Exposed(families, labels)


# ---------------------------------------------------------------------------------------------
# PromQL, parsed just enough to find metric names, label matchers and groupings

_STRING = re.compile(r'"(?:[^"\\]|\\.)*"|\'(?:[^\'\\]|\\.)*\'')
_VARIABLE = re.compile(r"\$\{?(\w+)(?::\w+)?\}?")
_RANGE = re.compile(r"\[[^\]]*\]")
_SELECTOR = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)?\s*\{([^}]*)\}")
_MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\(([^)]*)\)")
_IDENT = re.compile(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*")
_KEYWORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless",
             "offset", "inf", "nan"}
_LABEL_VALUES = re.compile(r"^\s*label_values\((.*),\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)\s*$", re.S)


@dataclass
class Query:
    metrics: list[str]  # metric names, in order of appearance
    selectors: list[tuple[str | None, set[str]]]  # (metric name or None, label names matched on)
    grouping: set[str]  # labels of by / without / on / ignoring / group_x clauses


def parse_promql(expr: str) -> Query:
    text = _STRING.sub('""', expr)
    text = _RANGE.sub(" ", text)
    text = _VARIABLE.sub(" ", text)
    selectors = [(m.group(1), set(_MATCHER.findall(m.group(2)))) for m in _SELECTOR.finditer(text)]
    text = _SELECTOR.sub(lambda m: f" {m.group(1) or ''} ", text)
    grouping = {label.strip() for m in _GROUPING.finditer(text) for label in m.group(1).split(",") if label.strip()}
    text = _GROUPING.sub(" ", text)
    names = [m.group() for m in _IDENT.finditer(text)
             if m.group().lower() not in _KEYWORDS and not text[m.end():].lstrip().startswith("(")]
    return Query(names, selectors, grouping)


def test_parse_promql_finds_metrics_matchers_and_groupings():
    q = parse_promql('histogram_quantile(0.95, sum by (le, sink) (rate(avfuse_x_bucket{a=~"$a", b!="}"}'
                     '[$__rate_interval]))) / on (sink) group_left avfuse_y')
    assert q.metrics == ["avfuse_x_bucket", "avfuse_y"]
    assert q.selectors == [("avfuse_x_bucket", {"a", "b"})]
    assert q.grouping == {"le", "sink"}


# ---------------------------------------------------------------------------------------------
# Grafana dashboard


@pytest.fixture(scope="module")
def dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def all_panels(dashboard: dict) -> list[dict]:
    """Top-level panels and those inside collapsed rows."""
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))
    return panels


def query_panels(dashboard: dict) -> list[dict]:
    return [p for p in all_panels(dashboard) if p["type"] != "row"]


def panel_exprs(dashboard: dict) -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target."""
    return [(p["title"], t["expr"]) for p in query_panels(dashboard) for t in p["targets"]]


def template_vars(dashboard: dict) -> dict[str, dict]:
    return {v["name"]: v for v in dashboard["templating"]["list"]}


def variable_query(var: dict) -> str:
    query = var["query"]
    query = query["query"] if isinstance(query, dict) else query
    # Grafana shows "definition" in the variable list: it must not drift from the query run.
    assert var.get("definition", query) == query, f"variable {var['name']}: definition differs from query"
    return query


def test_dashboard_loads_with_unique_panel_ids(dashboard):
    assert dashboard["title"] and dashboard["uid"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    ids = [p["id"] for p in all_panels(dashboard)]
    assert all(isinstance(i, int) for i in ids)
    assert len(ids) == len(set(ids)), f"duplicate panel ids: {sorted(i for i in ids if ids.count(i) > 1)}"
    for panel in all_panels(dashboard):
        assert {"h", "w", "x", "y"} <= set(panel["gridPos"]), panel["title"]
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24, panel["title"]


def test_every_panel_queries_the_datasource_variable(dashboard):
    ds = template_vars(dashboard)["datasource"]
    assert ds["type"] == "datasource" and ds["query"] == "prometheus"
    for panel in all_panels(dashboard):
        if panel["type"] == "row":
            assert not panel.get("targets"), f"row {panel['title']!r} has queries"
            continue
        assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel["targets"], f"panel {panel['title']!r} has no query"
        ref_ids = [t["refId"] for t in panel["targets"]]
        assert len(ref_ids) == len(set(ref_ids)), panel["title"]
        for target in panel["targets"]:
            assert target["expr"].strip(), panel["title"]
            assert target.get("datasource", panel["datasource"]) == panel["datasource"], panel["title"]


def test_template_variables_filter_by_namespace_pod_and_stream(dashboard, exposed):
    variables = template_vars(dashboard)
    assert "namespace" in variables and ({"instance", "pod"} & set(variables))
    stream = variables["stream"]
    assert stream["datasource"]["uid"] == "${datasource}"
    m = _LABEL_VALUES.match(variable_query(stream))
    assert m and m.group(2) == "stream"
    assert parse_promql(m.group(1)).metrics == ["avfuse_frames_decoded_total"]
    # The stream label is empty when per-stream labels are off: "All" must match the empty value.
    assert stream["includeAll"] and stream["allValue"] == ".*"

    for name, var in variables.items():
        if var["type"] != "query":
            continue
        m = _LABEL_VALUES.match(variable_query(var))
        assert m, f"variable {name}: not a label_values() query"
        selector, label = m.group(1), m.group(2)
        for metric in parse_promql(selector).metrics:
            assert metric in exposed.sample_names, f"variable {name}: no metric {metric}"
            assert label in exposed.labels[metric] | TARGET_LABELS, f"variable {name}: {metric} has no {label}"

    used = {v for _, expr in panel_exprs(dashboard) for v in _VARIABLE.findall(expr)}
    used |= {v for p in all_panels(dashboard) for v in _VARIABLE.findall(p["title"])}
    used |= {p["repeat"] for p in all_panels(dashboard) if p.get("repeat")}
    undefined = used - TEMPLATE_BUILTINS - set(variables)
    assert not undefined, f"undefined variables: {sorted(undefined)}"


def test_dashboard_queries_only_metrics_that_avfuse_exposes(dashboard, exposed):
    unknown = {(title, name) for title, expr in panel_exprs(dashboard) for name in parse_promql(expr).metrics
               if name not in exposed.sample_names}
    assert not unknown, f"metrics not in pipeline/observe/metrics.py: {sorted(unknown)}"


def test_every_metric_is_on_a_panel(dashboard, exposed):
    queried = {name for _, expr in panel_exprs(dashboard) for name in parse_promql(expr).metrics}
    missing = sorted(family for family, samples in exposed.families.items() if not samples & queried)
    assert not missing, f"metrics without a panel: {missing}"


def test_queries_match_and_group_only_on_labels_the_metrics_have(dashboard, exposed):
    """A filter on a label a metric lacks (stream on a per-sink metric) empties the panel
    as soon as a value is picked; a grouping on one gives a single unlabelled series."""
    all_labels = set().union(*exposed.labels.values())
    for title, expr in panel_exprs(dashboard):
        query = parse_promql(expr)
        for metric, matched in query.selectors:
            allowed = (exposed.labels.get(metric, set()) if metric else all_labels | {"__name__"}) | TARGET_LABELS
            assert matched <= allowed, f"{title!r}: {metric} has no label {sorted(matched - allowed)}"
        own = set().union(*(exposed.labels.get(m, set()) for m in query.metrics)) | TARGET_LABELS
        assert query.grouping <= own, f"{title!r}: grouping on {sorted(query.grouping - own)}"


def test_legends_only_use_labels_the_query_keeps(dashboard):
    for panel in query_panels(dashboard):
        for target in panel["targets"]:
            placeholders = set(re.findall(r"\{\{\s*(\w+)\s*\}\}", target.get("legendFormat", "")))
            kept = parse_promql(target["expr"]).grouping
            assert placeholders <= kept, f"{panel['title']!r}: legend {sorted(placeholders - kept)} is always empty"


@pytest.mark.parametrize("quantile", [0.5, 0.95, 0.99])
def test_end_to_end_latency_has_quantile_panel(dashboard, quantile):
    pattern = re.compile(r"histogram_quantile\(\s*([0-9.]+)\s*,")
    found = []
    for title, expr in panel_exprs(dashboard):
        m = pattern.search(expr)
        if not m or float(m.group(1)) != quantile:
            continue
        if re.search(r"\brate\(\s*avfuse_end_to_end_latency_seconds_bucket\b", expr) and \
                "le" in parse_promql(expr).grouping:
            found.append(title)
    assert found, f"no panel shows p{quantile * 100:g} of avfuse_end_to_end_latency_seconds"


# ---------------------------------------------------------------------------------------------
# PodMonitor, validated against the Prometheus Operator CRD


@pytest.fixture(scope="module")
def podmonitor() -> dict:
    docs = [d for d in yaml.safe_load_all(PODMONITOR.read_text()) if d]
    assert len(docs) == 1
    return docs[0]


def test_podmonitor_validates_against_prometheus_operator_crd(podmonitor):
    assert podmonitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert podmonitor["kind"] == "PodMonitor"
    assert podmonitor["metadata"]["name"] == "avfuse"
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
              for e in crd_validator(podmonitor).iter_errors(podmonitor)]
    assert not errors, "\n".join(errors)


def test_crd_validation_refuses_unknown_fields(podmonitor):
    misspelt = copy.deepcopy(podmonitor)
    misspelt["spec"]["podMetricEndpoints"] = misspelt["spec"].pop("podMetricsEndpoints")
    assert not crd_validator(misspelt).is_valid(misspelt)


def test_podmonitor_scrapes_the_metrics_port_of_avfuse_pods(podmonitor):
    spec = podmonitor["spec"]
    assert spec["selector"]["matchLabels"] == POD_LABELS
    endpoints = spec["podMetricsEndpoints"]
    assert endpoints
    for endpoint in endpoints:
        assert endpoint["port"] == METRICS_PORT_NAME
        assert endpoint.get("path", "/metrics") == METRICS_PATH
        assert endpoint["interval"] == "15s"


# ---------------------------------------------------------------------------------------------
# Plain Prometheus


def test_scrape_config_targets_the_metrics_port():
    config = yaml.safe_load(SCRAPE_CONFIG.read_text())
    jobs = {job["job_name"]: job for job in config["scrape_configs"]}
    job = jobs["avfuse"]
    assert job.get("metrics_path", "/metrics") == METRICS_PATH
    targets = [t for static in job["static_configs"] for t in static["targets"]]
    assert targets
    for target in targets:
        host, _, port = target.rpartition(":")
        assert host and int(port) == METRICS_PORT, target
