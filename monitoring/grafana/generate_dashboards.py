"""Write the Grafana dashboards (JSON) from code: ``python -m monitoring.grafana.generate_dashboards``.

Two dashboards, provisioned from ``monitoring/grafana/dashboards/``:
- ``modelserve-overview``: requests/s, error ratios, p50/p95/p99 latency per endpoint, items/s,
  batch sizes, in-flight requests, model status, worst drift, GPU utilisation and memory;
- ``modelserve-model-health`` (variables model, version, feature): latency by stage, input sizes,
  continuous decoding of translators (tokens/s, rows in the running batch, rows freed early, time to
  first token, time per output token, queue wait),
  predicted-class share live vs reference, confidence, drift (PSI, JS) per feature with the alert
  thresholds drawn as lines, live vs reference bin fractions per feature.

Every query reads the recording rules of ``monitoring/prometheus/recording.yml`` where one exists,
and the Prometheus datasource by its provisioned uid. The committed JSON must equal this script's
output (a test regenerates it).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

from monitoring import drift

OUT_DIR = Path(__file__).resolve().parent / "dashboards"
DATASOURCE = {"type": "prometheus", "uid": "modelserve-prometheus"}
SCHEMA_VERSION = 39
LATENCY_P99_THRESHOLD_S = 2  # HighRequestLatencyP99
ERROR_RATIO_THRESHOLD = 0.05  # HighErrorRatio

GREEN, ORANGE, RED = "green", "orange", "red"


def thresholds(*steps: tuple[str, float | None]) -> dict:
    return {"mode": "absolute", "steps": [{"color": c, "value": v} for c, v in steps]}


def target(expr: str, legend: str, ref: str = "A", *, instant: bool = False, fmt: str = "time_series") -> dict:
    return {"refId": ref, "datasource": DATASOURCE, "expr": expr, "legendFormat": legend, "range": not instant,
            "instant": instant, "format": fmt}


def timeseries(title: str, description: str, targets: list[dict], unit: str, *, w: int = 12, h: int = 8,
               steps: list[tuple[str, float | None]] | None = None, min_: float | None = 0, max_: float | None = None,
               stack: bool = False, overrides: list[dict] | None = None, repeat: str | None = None) -> dict:
    custom: dict[str, Any] = {"drawStyle": "line", "lineWidth": 1, "fillOpacity": 10, "showPoints": "never",
                              "spanNulls": False, "thresholdsStyle": {"mode": "line" if steps else "off"}}
    if stack:
        custom["stacking"] = {"mode": "normal", "group": "A"}
    defaults: dict[str, Any] = {"unit": unit, "custom": custom,
                                "thresholds": thresholds(*(steps or [(GREEN, None)])), "color": {"mode": "palette-classic"}}
    if min_ is not None:
        defaults["min"] = min_
    if max_ is not None:
        defaults["max"] = max_
    panel = {"type": "timeseries", "title": title, "description": description, "datasource": DATASOURCE,
             "targets": targets, "_w": w, "_h": h,
             "fieldConfig": {"defaults": defaults, "overrides": overrides or []},
             "options": {"legend": {"showLegend": True, "displayMode": "table", "placement": "bottom",
                                    "calcs": ["mean", "max", "lastNotNull"]},
                         "tooltip": {"mode": "multi", "sort": "desc"}}}
    if repeat:
        panel.update(repeat=repeat, repeatDirection="h", maxPerRow=2)
    return panel


def stat(title: str, description: str, targets: list[dict], unit: str, *, w: int = 4, h: int = 4,
         steps: list[tuple[str, float | None]] | None = None, mappings: list[dict] | None = None) -> dict:
    return {"type": "stat", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": targets, "_w": w, "_h": h,
            "fieldConfig": {"defaults": {"unit": unit, "thresholds": thresholds(*(steps or [(GREEN, None)])),
                                         "mappings": mappings or [], "color": {"mode": "thresholds"}},
                            "overrides": []},
            "options": {"reduceOptions": {"calcs": ["lastNotNull"], "fields": "", "values": False},
                        "colorMode": "value", "graphMode": "area", "textMode": "auto", "justifyMode": "auto",
                        "orientation": "auto"}}


def heatmap(title: str, description: str, targets: list[dict], y_unit: str, *, w: int = 12, h: int = 8) -> dict:
    """Prometheus histogram buckets (format heatmap) as a heatmap; Grafana does not re-bucket."""
    return {"type": "heatmap", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": targets, "_w": w, "_h": h,
            "fieldConfig": {"defaults": {"unit": "reqps", "custom": {"hideFrom": {"legend": False, "tooltip": False,
                                                                                  "viz": False}}},
                            "overrides": []},
            "options": {"calculate": False, "cellGap": 1, "yAxis": {"axisPlacement": "left", "unit": y_unit},
                        "rowsFrame": {"layout": "auto"}, "color": {"mode": "scheme", "scheme": "Oranges",
                                                                   "steps": 64, "exponent": 0.5},
                        "legend": {"show": True}, "tooltip": {"mode": "single", "yHistogram": True},
                        "cellValues": {"unit": "reqps"}}}


def table(title: str, description: str, targets: list[dict], *, w: int = 12, h: int = 8) -> dict:
    return {"type": "table", "title": title, "description": description, "datasource": DATASOURCE,
            "targets": targets, "_w": w, "_h": h,
            "fieldConfig": {"defaults": {"unit": "none", "thresholds": thresholds((GREEN, None))}, "overrides": []},
            "options": {"showHeader": True},
            "transformations": [{"id": "merge", "options": {}},
                                {"id": "organize", "options": {"excludeByName": {"Time": True, "__name__": True}}}]}


def row(title: str) -> dict:
    return {"type": "row", "title": title, "collapsed": False, "panels": [], "_w": 24, "_h": 1}


def variable(name: str, label: str, query: str, *, multi: bool = False, include_all: bool = False) -> dict:
    return {"name": name, "label": label, "type": "query", "datasource": DATASOURCE, "query": query,
            "definition": query, "refresh": 2, "sort": 1, "multi": multi, "includeAll": include_all,
            "allValue": ".*" if include_all else None, "current": {}, "options": [], "hide": 0, "regex": ""}


def layout(panels: list[dict]) -> list[dict]:
    """Assign ids and gridPos left to right, top to bottom (24 columns)."""
    x = y = row_h = 0
    out = []
    for i, p in enumerate(panels, start=1):
        w, h = p.pop("_w"), p.pop("_h")
        if x + w > 24 or p["type"] == "row":
            x, y, row_h = 0, y + row_h, 0
        p["id"] = i
        p["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
        row_h = max(row_h, h)
        if p["type"] == "row":
            x, y, row_h = 0, y + h, 0
        out.append(p)
    return out


def dashboard(uid: str, title: str, description: str, panels: list[dict], variables: list[dict]) -> dict:
    return {
        "uid": uid, "title": title, "description": description, "tags": ["modelserve"],
        "schemaVersion": SCHEMA_VERSION, "version": 1, "editable": True, "graphTooltip": 1,
        "timezone": "browser", "refresh": "30s", "time": {"from": "now-1h", "to": "now"},
        "annotations": {"list": [{"builtIn": 1, "datasource": {"type": "grafana", "uid": "-- Grafana --"},
                                  "enable": True, "hide": True, "iconColor": "rgba(0, 211, 255, 1)",
                                  "name": "Annotations & Alerts", "type": "dashboard"}]},
        "links": [{"title": "modelserve dashboards", "type": "dashboards", "tags": ["modelserve"], "asDropdown": False}],
        "templating": {"list": variables}, "panels": layout(panels),
    }


DRIFT_STEPS = [(GREEN, None), (ORANGE, drift.PSI_WARNING), (RED, drift.PSI_CRITICAL)]


def overview() -> dict:
    panels = [
        row("Traffic and errors"),
        stat("Requests/s", "All endpoints, 5m rate, all replicas.",
             [target("sum(endpoint:modelserve_requests:rate5m)", "requests/s")], "reqps"),
        stat("5xx ratio", "Worst endpoint's share of 5xx answers over 5m (alert above 5%).",
             [target("max(endpoint:modelserve_request_errors:ratio_rate5m)", "5xx ratio")], "percentunit",
             steps=[(GREEN, None), (ORANGE, 0.01), (RED, ERROR_RATIO_THRESHOLD)]),
        stat("p99 latency", "Slowest endpoint's p99 over 5m (alert above 2 s).",
             [target('max(endpoint:modelserve_request_duration_seconds:quantile5m{quantile="0.99"})', "p99")], "s",
             steps=[(GREEN, None), (ORANGE, LATENCY_P99_THRESHOLD_S / 2), (RED, LATENCY_P99_THRESHOLD_S)]),
        stat("In flight", "Requests being handled now, all workers and replicas.",
             [target("sum(modelserve_requests_in_flight)", "in flight")], "none"),
        stat("Models ready", "Model versions whose status is ready.",
             [target('count(model:modelserve_model_info:max{status="ready"} == 1)', "ready")], "none"),
        stat("Models failed", "Model versions that failed to load (alert ModelLoadFailed).",
             [target('count(model:modelserve_model_info:max{status="failed"} == 1) or vector(0)', "failed")], "none",
             steps=[(GREEN, None), (RED, 1)]),
        timeseries("Requests/s by endpoint and status", "5m rate of answered requests.",
                   [target("endpoint_status:modelserve_requests:rate5m", "{{endpoint}} {{status}}")], "reqps",
                   stack=True),
        timeseries("Error ratio by endpoint", "Share of 5xx (service errors) and 4xx (bad input) answers over 5m.",
                   [target("endpoint:modelserve_request_errors:ratio_rate5m", "{{endpoint}} 5xx"),
                    target("endpoint:modelserve_request_client_errors:ratio_rate5m", "{{endpoint}} 4xx", "B")],
                   "percentunit", steps=[(GREEN, None), (RED, ERROR_RATIO_THRESHOLD)], max_=1),
        timeseries("Requests/s by protocol", "5m rate by door: json (task JSON API), oip-rest and oip-grpc (Open "
                   "Inference Protocol over HTTP and gRPC), and status.",
                   [target("protocol_status:modelserve_requests:rate5m", "{{protocol}} {{status}}")], "reqps",
                   stack=True),
        timeseries("p99 latency by protocol", "Request latency p99 over 5m, per door.",
                   [target('protocol:modelserve_request_duration_seconds:quantile5m{quantile="0.99"}',
                           "{{protocol}} p99")], "s", steps=[(GREEN, None), (RED, LATENCY_P99_THRESHOLD_S)]),
        timeseries("Errors/s by kind", "validation (4xx), model_failure, overload, not_found; 5m rate.",
                   [target("sum by (kind) (endpoint_model_kind:modelserve_errors:rate5m)", "{{kind}}")], "reqps",
                   stack=True),
        timeseries("Latency p50 / p95 / p99 by endpoint", "Request latency quantiles over 5m (alert: p99 above 2 s).",
                   [target("endpoint:modelserve_request_duration_seconds:quantile5m",
                           "{{endpoint}} p{{quantile}}")], "s",
                   steps=[(GREEN, None), (RED, LATENCY_P99_THRESHOLD_S)]),
        row("Models"),
        timeseries("Items/s by model", "Items predicted per second (a request can hold many).",
                   [target("model:modelserve_items:rate5m", "{{model}} {{version}}")], "reqps", w=8),
        timeseries("Mean batch size by model", "Rows per model call over 5m: grows with concurrent traffic.",
                   [target("model:modelserve_batch_size_rows:mean5m", "{{model}} {{version}}")], "none", w=8),
        heatmap("Batch size distribution", "Model calls/s by batch size (upper bucket bound, rows).",
                [target("sum by (le) (rate(modelserve_batch_size_rows_bucket[$__rate_interval]))", "{{le}}",
                        fmt="heatmap")], "none", w=8),
        timeseries("In-flight requests by endpoint", "Requests inside the service now.",
                   [target("sum by (protocol, endpoint) (modelserve_requests_in_flight)", "{{protocol}} {{endpoint}}")],
                   "none", w=8),
        timeseries("Worst feature drift (PSI) by model", "Highest PSI over the model's features, 10m window; "
                   f"lines at the warning ({drift.PSI_WARNING}) and critical ({drift.PSI_CRITICAL}) thresholds.",
                   [target("model:modelserve_drift_psi:max10m", "{{model}} {{version}}")], "none", w=8,
                   steps=DRIFT_STEPS),
        table("Model status", "Every model version with its status, task, execution provider and load time.",
              [target("model:modelserve_model_info:max == 1", "", instant=True, fmt="table"),
               target("max by (model, version) (modelserve_model_load_duration_seconds)", "", "B", instant=True,
                      fmt="table")], w=8),
        row("GPU"),
        timeseries("GPU utilisation", "NVML busy fraction per GPU (no data on CPU-only hosts).",
                   [target("max by (gpu) (modelserve_gpu_utilization_ratio)", "GPU {{gpu}}")], "percentunit",
                   max_=1),
        timeseries("GPU memory", "NVML memory used and total per GPU (no data on CPU-only hosts).",
                   [target("max by (gpu) (modelserve_gpu_memory_used_bytes)", "GPU {{gpu}} used"),
                    target("max by (gpu) (modelserve_gpu_memory_total_bytes)", "GPU {{gpu}} total", "B")], "bytes"),
    ]
    return dashboard("modelserve-overview", "modelserve / Overview",
                     "Is the service fast and healthy? Traffic, errors, latency, batching, models, GPU.", panels, [])


M = 'model="$model", version=~"$version"'
MF = f'{M}, feature=~"$feature"'


def model_health() -> dict:
    variables = [
        variable("model", "Model", "label_values(modelserve_model_info, model)"),
        variable("version", "Version", 'label_values(modelserve_model_info{model="$model"}, version)',
                 multi=True, include_all=True),
        variable("feature", "Feature", 'label_values(modelserve_drift_reference_fraction{model="$model"}, feature)',
                 multi=True, include_all=True),
    ]
    panels = [
        row("Serving"),
        stat("Items/s", "Items predicted per second, 5m rate.",
             [target(f"sum(model:modelserve_items:rate5m{{{M}}})", "items/s")], "reqps"),
        stat("Mean batch size", "Rows per model call, 5m.",
             [target(f"avg(model:modelserve_batch_size_rows:mean5m{{{M}}})", "rows")], "none"),
        stat("Load time", "Seconds the last load took (session creation and warm-up).",
             [target(f"max(modelserve_model_load_duration_seconds{{{M}}})", "load")], "s"),
        stat("Ready", "1 when the selected version is ready in every worker that reports it.",
             [target(f'min(model:modelserve_model_info:max{{{M}, status="ready"}})', "ready")], "none",
             steps=[(RED, None), (GREEN, 1)],
             mappings=[{"type": "value", "options": {"0": {"text": "not ready"}, "1": {"text": "ready"}}}]),
        stat("Worst drift (PSI)", "Highest PSI over the features, 10m window.",
             [target(f"max(model:modelserve_drift_psi:max10m{{{M}}})", "PSI")], "none", steps=DRIFT_STEPS),
        stat("Errors/s", "Errors of this model, any kind, 5m rate.",
             [target('sum(endpoint_model_kind:modelserve_errors:rate5m{model="$model"}) or vector(0)', "errors/s")],
             "reqps", steps=[(GREEN, None), (RED, 0.1)]),
        timeseries("Latency by stage (p95)", "queue_wait per request; preprocess, inference, postprocess per "
                   "model call. 95th percentile over 5m.",
                   [target(f"model_stage:modelserve_stage_duration_seconds:quantile5m{{{M}}}",
                           "{{version}} {{stage}} p95")], "s"),
        timeseries("Latency by stage (mean)", "Mean seconds per stage over 5m; stacked, they add up to a call.",
                   [target(f"model_stage:modelserve_stage_duration_seconds:mean5m{{{M}}}",
                           "{{version}} {{stage}}")], "s", stack=True),
        timeseries("Items/s and batches/s", "Throughput of this model.",
                   [target(f"model:modelserve_items:rate5m{{{M}}}", "{{version}} items/s"),
                    target(f"model:modelserve_batches:rate5m{{{M}}}", "{{version}} batches/s", "B")], "reqps", w=8),
        timeseries("Mean input size", "Tokens per text, pixels per image, generated tokens per translation.",
                   [target(f"model_kind:modelserve_input_size:mean5m{{{M}}}", "{{version}} {{kind}}")], "none", w=8),
        timeseries("Errors/s by kind", "validation, model_failure, overload, not_found for this model.",
                   [target('endpoint_model_kind:modelserve_errors:rate5m{model="$model"}', "{{endpoint}} {{kind}}")],
                   "reqps", w=8),
        row("Decoding (translators with continuous batching)"),
        timeseries("Generated tokens/s", "Output tokens of finished translations per second (EOS excluded), 5m "
                   "rate.", [target(f"model:modelserve_generated_tokens:rate5m{{{M}}}", "{{version}} tokens/s")],
                   "none", w=8),
        timeseries("Rows in the running batch", "Rows decoding now (a beam text takes num_beams rows), and the "
                   "mean rows per decoder step over 5m.",
                   [target(f"model:modelserve_decoding_rows:sum{{{M}}}", "{{version}} now"),
                    target(f"model:modelserve_decoding_step_rows:mean5m{{{M}}}", "{{version}} mean per step", "B")],
                   "none", w=8),
        timeseries("Rows freed early by reason", "Rows that left the batch before their text ended: the client "
                   "went away (cancelled) or the deadline passed, per second, 5m rate.",
                   [target(f"model_reason:modelserve_decoding_freed_rows:rate5m{{{M}}}", "{{version}} {{reason}}")],
                   "none", w=8),
        timeseries("Time to first token", "From a text's arrival at the decoding queue to its first token, p50 "
                   "and p99 over 5m.",
                   [target(f"model:modelserve_time_to_first_token_seconds:quantile5m{{{M}}}",
                           "{{version}} p{{quantile}}")], "s", w=8),
        timeseries("Time per output token", "Mean time between a text's tokens after the first, p50 and p99 over "
                   "5m.", [target(f"model:modelserve_time_per_output_token_seconds:quantile5m{{{M}}}",
                                   "{{version}} p{{quantile}}")], "s", w=8),
        timeseries("Queue wait", "Time a text (a request, for the request batcher) waited before its first model "
                   "call, p50 and p99 over 5m.",
                   [target(f"model:modelserve_queue_wait_seconds:quantile5m{{{M}}}", "{{version}} p{{quantile}}")],
                   "s", w=8),
        row("Rollout"),
        stat("Candidate share", "Share of requests routed (canary) or mirrored (shadow) to the candidate version; "
             "0 without a rollout.", [target('max(modelserve_rollout_share{model="$model"})', "share")],
             "percentunit"),
        table("Roles", "Each served version's role: primary, or candidate in canary or shadow mode.",
              [target('max by (version, role, mode) (modelserve_rollout_info{model="$model"}) == 1', "",
                      instant=True, fmt="table")], w=8),
        timeseries("Traffic by version", "Requests/s each version answered, by route: primary, canary (routed "
                   "to the candidate), pinned (asked for by version), shadow (mirrored), 5m rate.",
                   [target('model_route:modelserve_version_requests:rate5m{model="$model"}',
                           "{{version}} {{route}}")], "reqps", w=12),
        timeseries("Latency p50 / p99 by version", "Time each version took to answer (validation, queue, "
                   "inference) over 5m; the CandidateLatencyWorse alert compares the candidate's p99 with the "
                   "primary's.",
                   [target('model:modelserve_version_request_duration_seconds:quantile5m{model="$model"}',
                           "{{version}} p{{quantile}}")], "s", w=8),
        timeseries("Error ratio by version", "Share of 5xx answers per version over 5m (alert "
                   "CandidateErrorRatioWorse: the candidate 2 points above the primary).",
                   [target('model:modelserve_version_errors:ratio_rate5m{model="$model"}', "{{version}}")],
                   "percentunit", max_=1, w=8),
        timeseries("Shadow agreement", "Share of mirrored items whose candidate answer agrees with the primary's "
                   "(same top label, label set or translation), 5m.",
                   [target('model:modelserve_shadow_agreement:ratio_rate5m{model="$model"}',
                           "{{candidate}} vs {{primary}}")], "percentunit", max_=1, w=8),
        timeseries("Worst drift (PSI) by version", "Highest PSI over the features of each served version, 10m.",
                   [target('model:modelserve_drift_psi:max10m{model="$model"}', "{{version}}")], "none",
                   steps=DRIFT_STEPS, w=12),
        row("Predictions"),
        timeseries("Predicted class share: live vs reference", "Solid: live share of each predicted class over "
                   "5m. Dashed: the share on held-out data (manifest reference profile).",
                   [target(f"model_class:modelserve_predictions:share5m{{{M}}}", "live {{class}}"),
                    target('label_replace(bin:modelserve_drift_reference_fraction:max{' + M +
                           ', feature="predicted_class"}, "class", "$1", "bin", "(.*)")', "reference {{class}}", "B")],
                   "percentunit", max_=1,
                   overrides=[{"matcher": {"id": "byRegexp", "options": "reference .*"},
                               "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                                              {"id": "custom.fillOpacity", "value": 0}]}]),
        timeseries("Top-class confidence", "Mean, median and 10th percentile of the top-class probability.",
                   [target(f"model:modelserve_prediction_confidence:mean5m{{{M}}}", "{{version}} mean"),
                    target(f"model:modelserve_prediction_confidence:quantile5m{{{M}}}",
                           "{{version}} p{{quantile}}", "B")], "percentunit", max_=1),
        heatmap("Confidence distribution", "Predictions/s by top-class confidence bucket (upper bound).",
                [target(f"sum by (le) (rate(modelserve_prediction_confidence_bucket{{{M}}}[$__rate_interval]))",
                        "{{le}}", fmt="heatmap")], "percentunit"),
        row("Drift vs reference profile"),
        timeseries("Drift per feature (PSI)", "Population Stability Index of each feature, live 10m window vs "
                   f"the held-out reference. Warning {drift.PSI_WARNING}, critical {drift.PSI_CRITICAL} "
                   f"(alerts after {drift.ALERT_FOR} with at least {drift.MIN_SAMPLES} values in the window).",
                   [target(f"feature:modelserve_drift_psi:10m{{{MF}}}", "{{version}} {{feature}}")], "none",
                   steps=DRIFT_STEPS),
        timeseries("Drift per feature (Jensen-Shannon)", "Jensen-Shannon divergence (base 2, 0 = same, "
                   "1 = disjoint) of each feature, 10m window.",
                   [target(f"feature:modelserve_drift_js:10m{{{MF}}}", "{{version}} {{feature}}")], "none", max_=1),
        timeseries("Values in the drift window", "Feature values counted in the 10m window; drift alerts need "
                   f"at least {drift.MIN_SAMPLES}.",
                   [target(f"feature:modelserve_drift_samples:increase10m{{{MF}}}", "{{version}} {{feature}}")],
                   "none", steps=[(ORANGE, None), (GREEN, drift.MIN_SAMPLES)]),
        timeseries("Bins of $feature: live vs reference", "Fraction of values per bin (numeric bins are "
                   "numbered by the reference edges; categorical bins are the categories). Dashed: reference.",
                   [target('bin:modelserve_drift_live_fraction:ratio10m{' + M + ', feature=~"$feature"}',
                           "live {{bin}}"),
                    target('bin:modelserve_drift_reference_fraction:max{' + M + ', feature=~"$feature"}',
                           "reference {{bin}}", "B")], "percentunit", max_=1, repeat="feature",
                   overrides=[{"matcher": {"id": "byRegexp", "options": "reference .*"},
                               "properties": [{"id": "custom.lineStyle", "value": {"fill": "dash", "dash": [10, 10]}},
                                              {"id": "custom.fillOpacity", "value": 0}]}]),
    ]
    return dashboard("modelserve-model-health", "modelserve / Model health",
                     "One model: latency by stage, predictions and confidence, drift of every profiled feature.",
                     panels, variables)


DASHBOARDS = {"overview.json": overview, "model-health.json": model_health}


def render() -> dict[str, str]:
    """File name -> JSON text of every dashboard."""
    return {name: json.dumps(build(), indent=2, sort_keys=False) + "\n" for name, build in DASHBOARDS.items()}


def main() -> int:
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, text in render().items():
        (OUT_DIR / name).write_text(text, encoding="utf-8")
        print(OUT_DIR / name)
    return 0


if __name__ == "__main__":
    sys.exit(main())
