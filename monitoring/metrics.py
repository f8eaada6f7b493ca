"""Service metrics over prometheus_client: the only module the service calls to record metrics.

Torch-free. Correct with several BentoML workers: BentoML points ``PROMETHEUS_MULTIPROC_DIR`` at
a directory it wipes at start, counters and histograms sum over workers, and every gauge here has
an explicit multiprocess mode (no ``pid`` label). Across replicas, Prometheus sums the series of
each scraped instance (see ``monitoring/prometheus/rules.yml``).

API (all label values are strings; ``model``/``version`` are the registry name and version):

- ``observe_request(endpoint, status, seconds, protocol="json")``: one request answered with
  ``status`` (an HTTP status code; the gRPC door records the HTTP status its answer maps to).
  ``protocol`` is the door: ``json`` (the task JSON API), ``oip-rest`` or ``oip-grpc`` (the Open
  Inference Protocol over HTTP or gRPC); ``PROTOCOLS`` lists them.
- ``in_flight(endpoint, protocol="json")``: context manager counting requests being handled (or the
  pair ``request_started(endpoint, protocol)`` / ``request_finished(endpoint, protocol)``).
- ``observe_batch(model, version, rows, timings, queue_wait_seconds=None)``: one model call;
  ``timings`` is ``Runtime.last_timings`` (stage -> seconds: preprocess, inference, postprocess),
  ``queue_wait_seconds`` one value or one per request merged into the batch.
- ``observe_inputs(model, version, sizes)``: input sizes, ``{"tokens": [...], "pixels": [...],
  "generated_tokens": [...]}`` (any subset; one value per item).
- ``count_items(model, version, n)``: items predicted.
- ``count_error(endpoint, model, kind, protocol="json")``: kind in ``ERROR_KINDS``.
- ``observe_predictions(model, version, manifest, features_per_item, labels_per_item=None,
  top_confidences=None)``: predicted classes (one list per item; several labels for multi-label),
  top-class confidence, and the drift bins of every ``reference_profile`` feature found in each
  item's ``features`` dict (``Runtime.predict`` results).
- ``set_model_info(model, version, task, provider, status, load_seconds=None, manifest=None)``:
  status in ``MODEL_STATUSES``; with a manifest, also exposes its reference fractions and creates
  every drift bin counter at 0 (so a bin never seen live still counts as empty).
- ``enable_buffering(interval_s=0.5)``: hold counter increments and histogram observations in
  memory and write them every ``interval_s`` (the service turns it on: one write per series per
  flush instead of one per observation); ``exposition()`` writes this process's buffer first.
- ``exposition()``: ``(body, content_type)`` of every process's metrics in the text format, for a
  ``/metrics`` route (all workers' series when ``PROMETHEUS_MULTIPROC_DIR`` is set).
- ``observe_version_request(model, version, route, status, seconds)``: one request answered by one
  version; route is primary, canary, pinned (the client named the version) or shadow (mirrored).
- ``count_shadow(model, primary, candidate, agree, disagree)``: shadow items whose answers agreed or not.
- ``count_shadow_skipped(model, candidate, items)``: items not mirrored (the candidate was backed up).
- ``set_rollout(model, primary, candidate, mode, share)``: the model's rollout roles (rollout_info, share).
- Continuous decoding of translators (``service/decoding.py``): ``observe_decoding_join(model, version,
  queue_wait, time_to_first_token)`` per text joining the running batch; ``observe_decoding_done(model,
  version, tokens, time_per_output_token=None)`` per text finished (its output tokens, EOS excluded);
  ``observe_decoding_step(model, version, rows, running_rows, kv_bytes)`` after each pass of the model thread
  (``rows`` in its decoder step, ``running_rows`` after it); ``count_freed_rows(model,
  version, reason, rows)`` for rows that left the batch before their text ended (reason cancelled: the
  client went away; deadline).
- ``start_gpu_sampler(interval_s=5.0)``: samples GPU utilisation and memory through nvidia-ml-py
  in a daemon thread; returns False (and no GPU series exist) when no GPU is present. The first
  ``set_model_info`` call of a process starts it, so every serving worker exports GPU metrics.

Metric names (prefix ``modelserve_``) are listed in ``METRIC_NAMES``. Drift bins: numeric features
use the reference edges with open-ended outer bins (``modelkit.profile.bin_indices``); categorical
features use the category position, and values outside the reference categories count in an extra
bin ``"(other)"`` whose reference fraction is 0. Bin labels: the category name for categorical
features, the zero-padded bin index (``"00"``, ``"01"``, ...) for numeric ones.
"""

from __future__ import annotations

import bisect
import collections
import logging
import math
import os
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector

from modelkit.manifest import Manifest
from modelkit.profile import bin_indices

log = logging.getLogger(__name__)

NAMESPACE = "modelserve"
ERROR_KINDS = ("validation", "model_failure", "overload", "not_found", "unauthorized", "rate_limited", "deadline")
PROTOCOLS = ("json", "oip-rest", "oip-grpc")
MODEL_STATUSES = ("loading", "ready", "failed", "unloaded")
STAGES = ("queue_wait", "preprocess", "inference", "postprocess")
INPUT_SIZE_KINDS = ("tokens", "pixels", "generated_tokens")
OTHER_BIN = "(other)"
INPUT_SIZES_BY_TASK = {
    "text-classification": ("tokens",),
    "multi-label-classification": ("tokens",),
    "image-classification": ("pixels",),
    "translation": ("tokens", "generated_tokens"),
}

# a feature of at most this many values is binned one bisect per value: numpy's fixed cost per call (asarray,
# isfinite, searchsorted, bincount) made a one-sentence translation's drift bins 26 us of event-loop time
SCALAR_BINNING_MAX_VALUES = 8
VERSION_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.0075, 0.01, 0.015, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
STAGE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
SIZE_BUCKETS = tuple(4.0**k for k in range(13))  # 1 .. 16.7M: tokens and pixels alike
CONFIDENCE_BUCKETS = tuple(round(0.05 * k, 2) for k in range(1, 21))  # 0.05 .. 1.0
TOKEN_TIME_BUCKETS = (0.0005, 0.001, 0.002, 0.004, 0.008, 0.016, 0.032, 0.064, 0.128, 0.256, 0.512, 1.0)
FREED_REASONS = ("cancelled", "deadline")


class _Buffer:
    """Counter increments and histogram observations held in memory, written out by ``flush``.

    In multiprocess mode every ``inc`` and ``observe`` of prometheus_client writes to an mmap'ed
    file under a lock; a request touches 15-20 values, which cost the service about a tenth of its
    CPU per request (benchmarks/RESULTS.md). Buffered, a flush writes each series once.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.adds: dict[Any, float] = {}
        self.observations: dict[Any, list[float]] = {}

    def add(self, child: Any, amount: float) -> None:
        with self.lock:
            self.adds[child] = self.adds.get(child, 0.0) + amount

    def observe(self, child: Any, value: float) -> None:
        with self.lock:
            found = self.observations.get(child)
            if found is None:
                self.observations[child] = [value]
            else:
                found.append(value)

    def observe_many(self, child: Any, values: Iterable[float]) -> None:
        with self.lock:
            self.observations.setdefault(child, []).extend(values)

    def flush(self) -> None:
        with self.lock:
            adds, self.adds = self.adds, {}
            observations, self.observations = self.observations, {}
        for child, amount in adds.items():
            if amount:
                child.inc(amount)
        for child, values in observations.items():
            observe_many(child, values)


def observe_many(child: Any, values: Sequence[float]) -> None:
    """What ``child.observe(v)`` for each value does, with one write per bucket touched.

    Uses the histogram child's ``_sum``, ``_buckets`` (per-bucket, not cumulative) and
    ``_upper_bounds``, as ``Histogram.observe`` of prometheus-client 0.26 does (pinned;
    tests/test_monitoring_metrics.py checks the two give the same samples).
    """
    v = np.asarray(values, dtype=float)
    bounds = child._upper_bounds
    child._sum.inc(float(v.sum()))
    index = np.searchsorted(np.asarray(bounds), v, side="left")  # the first bound >= the value
    counts = np.bincount(index[index < len(bounds)], minlength=len(bounds))  # NaN: no bucket, like observe()
    for i in np.flatnonzero(counts).tolist():  # tolist(): iterating an array ends in a formatted IndexError
        child._buckets[i].inc(int(counts[i]))


class RequestSeries:
    """``request_started`` / ``observe_request`` + ``request_finished`` of one (endpoint, protocol)."""

    def __init__(self, metrics: "ServiceMetrics", endpoint: str, protocol: str):
        self._metrics = metrics
        self._endpoint, self._protocol = endpoint, protocol
        self._in_flight = metrics._in_flight(endpoint, protocol)

    def start(self) -> None:
        self._metrics._add(self._in_flight, 1.0)

    def done(self, status: int, seconds: float) -> None:
        self._metrics._add(self._in_flight, -1.0)
        self._metrics.observe_request(self._endpoint, status, seconds, self._protocol)


class ServiceMetrics:
    """All service metrics, registered in one registry (a fresh one per test, the default in the service)."""

    def __init__(self, registry: CollectorRegistry | None = REGISTRY):
        def name(n: str) -> str:
            return f"{NAMESPACE}_{n}"

        r = {"registry": registry}
        self.requests = Counter(name("requests"), "Requests answered, by endpoint, status code and protocol "
                                "(json, oip-rest, oip-grpc).", ["endpoint", "status", "protocol"], **r)
        self.request_duration = Histogram(name("request_duration_seconds"),
                                          "Request latency, by endpoint, status code and protocol.",
                                          ["endpoint", "status", "protocol"], buckets=LATENCY_BUCKETS, **r)
        self.in_flight_requests = Gauge(name("requests_in_flight"), "Requests being handled, by endpoint and "
                                        "protocol.", ["endpoint", "protocol"], multiprocess_mode="livesum", **r)
        self.errors = Counter(name("errors"), "Errors by endpoint, model, kind (validation, model_failure, "
                              "overload, not_found, unauthorized, rate_limited, deadline) and protocol.",
                              ["endpoint", "model", "kind", "protocol"], **r)
        self.items = Counter(name("items"), "Items (rows) predicted, by model and version.",
                             ["model", "version"], **r)
        self.batches = Counter(name("batches"), "Model calls (batches), by model and version.",
                               ["model", "version"], **r)
        self.batch_size = Histogram(name("batch_size_rows"), "Rows per model call.",
                                    ["model", "version"], buckets=BATCH_BUCKETS, **r)
        self.stage_duration = Histogram(name("stage_duration_seconds"),
                                        "Time per stage of a model call: queue_wait (per request), "
                                        "preprocess, inference, postprocess (per batch).",
                                        ["model", "version", "stage"], buckets=STAGE_BUCKETS, **r)
        self.input_size = Histogram(name("input_size"), "Input size per item: kind tokens, pixels or "
                                    "generated_tokens (translation output).",
                                    ["model", "version", "kind"], buckets=SIZE_BUCKETS, **r)
        self.predictions = Counter(name("predictions"), "Predicted classes (every predicted label for "
                                   "multi-label), by model, version and class.",
                                   ["model", "version", "class"], **r)
        self.confidence = Histogram(name("prediction_confidence"), "Top-class confidence per item (0-1).",
                                    ["model", "version"], buckets=CONFIDENCE_BUCKETS, **r)
        self.drift_bin = Counter(name("drift_bin"), "Live values of each reference-profile feature, "
                                 "counted into the reference bins.", ["model", "version", "feature", "bin"], **r)
        self.drift_missing = Counter(name("drift_missing_values"), "Items whose features lacked a "
                                     "profiled feature (not counted in any bin).",
                                     ["model", "version", "feature"], **r)
        self.reference_fraction = Gauge(name("drift_reference_fraction"), "Reference (held-out) fraction "
                                        "of each feature bin, from the manifest's reference_profile.",
                                        ["model", "version", "feature", "bin"], multiprocess_mode="max", **r)
        self.model_info = Gauge(name("model_info"), "1 for the model's current status (loading, ready, "
                                "failed), with task and execution provider.",
                                ["model", "version", "task", "provider", "status"], multiprocess_mode="max", **r)
        self.load_duration = Gauge(name("model_load_duration_seconds"), "Seconds the last load of a "
                                   "model version took.", ["model", "version"], multiprocess_mode="max", **r)
        self.version_requests = Counter(name("version_requests"), "Requests answered by each model version, by route "
                                        "(primary, canary, pinned: asked for by version, shadow: mirrored) and "
                                        "status.", ["model", "version", "route", "status"], **r)
        self.version_request_duration = Histogram(name("version_request_duration_seconds"),
                                                  "Time each model version took to answer a request (validation, "
                                                  "queue, inference), by route.", ["model", "version", "route"],
                                                  buckets=VERSION_LATENCY_BUCKETS, **r)
        self.shadow_comparisons = Counter(name("shadow_comparisons"), "Items answered by both the primary and a "
                                          "shadow candidate, by whether the answers agree (same top label, label "
                                          "set or translation).", ["model", "primary", "candidate", "agreement"], **r)
        self.shadow_skipped = Counter(name("shadow_skipped_items"), "Items not mirrored to a shadow candidate because "
                                      "it already had a full batch waiting.", ["model", "candidate"], **r)
        self.rollout_info = Gauge(name("rollout_info"), "1 for each served version's rollout role (primary, or "
                                  "candidate with mode canary or shadow).", ["model", "version", "role", "mode"],
                                  multiprocess_mode="max", **r)
        self.rollout_share = Gauge(name("rollout_share"), "Share of requests routed (canary) or mirrored (shadow) to "
                                   "the candidate; 0 without a rollout.", ["model"], multiprocess_mode="max", **r)
        self.generated_tokens = Counter(name("generated_tokens"), "Output tokens of finished translations "
                                        "(EOS excluded), by model and version.", ["model", "version"], **r)
        self.decoding_rows = Gauge(name("decoding_rows"), "Rows in the running batch of continuous decoding "
                                   "(a beam text takes num_beams rows), after the last step.", ["model", "version"],
                                   multiprocess_mode="livesum", **r)
        self.decoding_step_rows = Histogram(name("decoding_step_rows"), "Rows per decoder step of continuous "
                                            "decoding.", ["model", "version"], buckets=BATCH_BUCKETS, **r)
        self.decoding_kv_bytes = Gauge(name("decoding_kv_cache_bytes"), "Key/value cache bytes allocated for the "
                                       "running batch.", ["model", "version"], multiprocess_mode="livesum", **r)
        self.time_to_first_token = Histogram(name("time_to_first_token_seconds"), "From a text's arrival at the "
                                             "decoding queue to its first generated token.", ["model", "version"],
                                             buckets=STAGE_BUCKETS, **r)
        self.time_per_output_token = Histogram(name("time_per_output_token_seconds"), "Mean time between a "
                                               "text's output tokens after the first.", ["model", "version"],
                                               buckets=TOKEN_TIME_BUCKETS, **r)
        self.freed_rows = Counter(name("decoding_freed_rows"), "Rows that left the running batch before their text "
                                  "ended: reason cancelled (the client went away) or deadline.",
                                  ["model", "version", "reason"], **r)
        self.gpu_utilization = Gauge(name("gpu_utilization_ratio"), "GPU busy fraction (0-1) over the "
                                     "last NVML sample period.", ["gpu"], multiprocess_mode="mostrecent", **r)
        self.gpu_memory_used = Gauge(name("gpu_memory_used_bytes"), "GPU memory in use.", ["gpu"],
                                     multiprocess_mode="mostrecent", **r)
        self.gpu_memory_total = Gauge(name("gpu_memory_total_bytes"), "GPU memory in total.", ["gpu"],
                                      multiprocess_mode="mostrecent", **r)
        # children of the per-request series, looked up once (labels() costs as much as the update)
        self._request_children: dict[tuple[str, int | str, str], tuple[Any, Any]] = {}
        self._in_flight_children: dict[tuple[str, str], Any] = {}
        self._status: dict[tuple[str, str], tuple[str, str, str]] = {}
        self._rollouts: dict[str, set[tuple[str, str, str]]] = {}
        self._profiles: dict[tuple[str, str], dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._buffer: _Buffer | None = None
        self._flusher: threading.Thread | None = None
        self._children: dict[tuple, Any] = {}
        self._decoding_now: dict[tuple[str, str], tuple[int, int]] = {}
        self._gpu_thread: threading.Thread | None = None
        self._gpu_tried = False

    # --- buffering ------------------------------------------------------------------------
    def enable_buffering(self, interval_s: float = 0.5) -> None:
        """Hold increments and observations in memory; a daemon thread writes them every ``interval_s``
        (and ``exposition`` writes this process's first). Scrapes see other workers' values at most
        ``interval_s`` late."""
        with self._lock:
            if self._buffer is not None:
                return
            self._buffer = _Buffer()
            buffer = self._buffer

            def loop() -> None:
                while True:
                    time.sleep(interval_s)
                    try:
                        buffer.flush()
                    except Exception:  # keep flushing: one bad value must not stop the metrics
                        log.exception("metrics flush failed")

            self._flusher = threading.Thread(target=loop, name="metrics-flush", daemon=True)
            self._flusher.start()

    def flush(self) -> None:
        if self._buffer is not None:
            self._buffer.flush()

    def _add(self, child: Any, amount: float = 1.0) -> None:
        if self._buffer is not None:
            self._buffer.add(child, amount)
        else:
            child.inc(amount)

    def _observe(self, child: Any, value: float) -> None:
        if self._buffer is not None:
            self._buffer.observe(child, value)
        else:
            child.observe(value)

    def _observe_all(self, child: Any, values: Iterable[float]) -> None:
        if self._buffer is not None:
            self._buffer.observe_many(child, values)
        else:
            for v in values:
                child.observe(v)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, looked up once (labels() costs as much as the update)."""
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # --- requests -------------------------------------------------------------------------
    def observe_request(self, endpoint: str, status: int | str, seconds: float, protocol: str = "json") -> None:
        """One answered request."""
        key = (endpoint, status, protocol)
        children = self._request_children.get(key)
        if children is None:
            if protocol not in PROTOCOLS:
                raise ValueError(f"protocol {protocol!r} not in {PROTOCOLS}")
            labels = (endpoint, str(status), protocol)
            children = self.requests.labels(*labels), self.request_duration.labels(*labels)
            self._request_children[key] = children
        self._add(children[0])
        self._observe(children[1], seconds)

    def request_series(self, endpoint: str, protocol: str = "json") -> "RequestSeries":
        """The series one endpoint of one door writes per request, looked up once (the service's hot path)."""
        key = ("series", endpoint, protocol)
        series = self._children.get(key)
        if series is None:
            series = self._children[key] = RequestSeries(self, endpoint, protocol)
        return series

    def request_started(self, endpoint: str, protocol: str = "json") -> None:
        """A request entered the handlers (pair with ``request_finished``)."""
        self._add(self._in_flight(endpoint, protocol), 1.0)

    def request_finished(self, endpoint: str, protocol: str = "json") -> None:
        self._add(self._in_flight(endpoint, protocol), -1.0)

    def _in_flight(self, endpoint: str, protocol: str):
        child = self._in_flight_children.get((endpoint, protocol))
        if child is None:
            if protocol not in PROTOCOLS:
                raise ValueError(f"protocol {protocol!r} not in {PROTOCOLS}")
            child = self._in_flight_children[(endpoint, protocol)] = self.in_flight_requests.labels(endpoint, protocol)
        return child

    @contextmanager
    def in_flight(self, endpoint: str, protocol: str = "json"):
        """Count a request as in flight while the block runs."""
        self.request_started(endpoint, protocol)
        try:
            yield
        finally:
            self.request_finished(endpoint, protocol)

    def count_error(self, endpoint: str, model: str, kind: str, protocol: str = "json") -> None:
        """One error of ``kind`` (one of ``ERROR_KINDS``)."""
        if kind not in ERROR_KINDS:
            raise ValueError(f"error kind {kind!r} not in {ERROR_KINDS}")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol {protocol!r} not in {PROTOCOLS}")
        self._add(self._child(self.errors, endpoint, model, kind, protocol))

    # --- model calls ----------------------------------------------------------------------
    def observe_batch(self, model: str, version: str, rows: int, timings: Mapping[str, float],
                      queue_wait_seconds: float | Sequence[float] | None = None) -> None:
        """One model call of ``rows`` items with its stage timings (seconds)."""
        self._add(self._child(self.batches, model, version))
        self._observe(self._child(self.batch_size, model, version), rows)
        for stage, seconds in timings.items():
            if stage not in STAGES:
                raise ValueError(f"stage {stage!r} not in {STAGES}")
            self._observe(self._child(self.stage_duration, model, version, stage), seconds)
        if queue_wait_seconds is not None:
            waits = [queue_wait_seconds] if isinstance(queue_wait_seconds, (int, float)) else queue_wait_seconds
            self._observe_all(self._child(self.stage_duration, model, version, "queue_wait"), waits)

    def count_items(self, model: str, version: str, n: int) -> None:
        """``n`` items predicted."""
        self._add(self._child(self.items, model, version), n)

    def observe_inputs(self, model: str, version: str, sizes: Mapping[str, Iterable[float]]) -> None:
        """Per-item input sizes by kind (tokens, pixels, generated_tokens)."""
        for kind, values in sizes.items():
            if kind not in INPUT_SIZE_KINDS:
                raise ValueError(f"input size kind {kind!r} not in {INPUT_SIZE_KINDS}")
            self._observe_all(self._child(self.input_size, model, version, kind), values)

    # --- predictions and drift ------------------------------------------------------------
    def observe_predictions(self, model: str, version: str, manifest: Manifest,
                            features_per_item: Sequence[Mapping[str, Any]],
                            labels_per_item: Sequence[Sequence[str]] | None = None,
                            top_confidences: Sequence[float] | None = None) -> None:
        """Count predicted classes, top confidences and the drift bins of every profiled feature."""
        if labels_per_item is not None:
            for label, n in collections.Counter(str(lab) for labels in labels_per_item for lab in labels).items():
                self._add(self._child(self.predictions, model, version, label), n)
        if top_confidences is not None:
            self._observe_all(self._child(self.confidence, model, version), top_confidences)
        profile = self._profile(model, version, manifest)
        for feature, spec in profile.items():
            present = [f[feature] for f in features_per_item if f.get(feature) is not None]
            missing = len(features_per_item) - len(present)
            if spec["kind"] == "numeric" and len(present) <= SCALAR_BINNING_MAX_VALUES:
                inner, children = spec["inner"], spec["children"]
                for value in present:  # the same bins as bin_indices (searchsorted, side="right")
                    v = float(value)
                    if math.isfinite(v):
                        self._add(children[bisect.bisect_right(inner, v)])
                    else:
                        missing += 1
            elif spec["kind"] == "numeric":
                values = np.asarray(present, dtype=float)
                finite = values[np.isfinite(values)]
                missing += values.size - finite.size
                counts = np.bincount(bin_indices(finite, spec["edges"]), minlength=spec["n"])
                for b, c in enumerate(counts.tolist()):
                    if c:
                        self._add(spec["children"][b], c)
            else:
                for value in present:
                    self._add(spec["children"][spec["index"].get(str(value), OTHER_BIN)])
            if missing:
                self._add(self._child(self.drift_missing, model, version, feature), missing)

    def _profile(self, model: str, version: str, manifest: Manifest) -> dict[str, Any]:
        key = (model, version)
        with self._lock:
            if key not in self._profiles:
                self._profiles[key] = self._build_profile(model, version, manifest)
            return self._profiles[key]

    def _build_profile(self, model: str, version: str, manifest: Manifest) -> dict[str, Any]:
        """Per feature: bins and their counter children (created at 0), and the reference gauges.

        The model's other series are created at 0 too, so ``rate()`` counts their first increments.
        """
        for child in (self.items, self.batches, self.batch_size):
            child.labels(model, version)
        for stage in STAGES:
            self.stage_duration.labels(model, version, stage)
        for kind in INPUT_SIZES_BY_TASK.get(manifest.task, ()):
            self.input_size.labels(model, version, kind)
        for label in manifest.labels:
            self.predictions.labels(model, version, label)
        if manifest.labels:
            self.confidence.labels(model, version)
        profile: dict[str, Any] = {}
        for feature, hist in manifest.reference_profile.features.items():
            bins = [f"{b:02d}" for b in range(len(hist.fractions))]
            fractions = list(hist.fractions)
            spec: dict[str, Any] = {"kind": hist.kind, "n": len(bins)}
            if hist.kind == "numeric":
                spec["edges"] = np.asarray(hist.edges, dtype=float)
                spec["inner"] = [float(e) for e in hist.edges[1:-1]]
            else:
                bins = [str(c) for c in hist.categories]
                spec["index"] = {b: b for b in bins}
                bins.append(OTHER_BIN)
                fractions.append(0.0)
            children = {b: self.drift_bin.labels(model, version, feature, b) for b in bins}
            spec["children"] = children if hist.kind != "numeric" else [children[b] for b in bins]
            for b, f in zip(bins, fractions):
                self.reference_fraction.labels(model, version, feature, b).set(f)
            profile[feature] = spec
        return profile

    # --- models ---------------------------------------------------------------------------
    def set_model_info(self, model: str, version: str, task: str, provider: str | None, status: str,
                       load_seconds: float | None = None, manifest: Manifest | None = None) -> None:
        """Record a model version's status; with a manifest, expose its drift reference too."""
        if status not in MODEL_STATUSES:
            raise ValueError(f"model status {status!r} not in {MODEL_STATUSES}")
        if not self._gpu_tried:
            self._gpu_tried = True
            self.start_gpu_sampler()
        labels = (task, provider or "none", status)
        with self._lock:
            previous = self._status.get((model, version))
            if previous is not None and previous != labels:
                # Multiprocess gauges cannot be removed: the stale status is set to 0 instead.
                self.model_info.labels(model, version, *previous).set(0)
            self._status[(model, version)] = labels
        self.model_info.labels(model, version, *labels).set(1)
        if load_seconds is not None:
            self.load_duration.labels(model, version).set(load_seconds)
        if manifest is not None:
            self._profile(model, version, manifest)

    # --- continuous decoding ---------------------------------------------------------------
    def observe_decoding_join(self, model: str, version: str, queue_wait: float, time_to_first_token: float) -> None:
        """A text joined the running batch after ``queue_wait`` s; its first token came after ``time_to_first_token``."""
        self._observe(self._child(self.stage_duration, model, version, "queue_wait"), queue_wait)
        self._observe(self._child(self.time_to_first_token, model, version), time_to_first_token)

    def observe_decoding_done(self, model: str, version: str, tokens: int,
                              time_per_output_token: float | None = None) -> None:
        self._add(self._child(self.generated_tokens, model, version), tokens)
        if time_per_output_token is not None:
            self._observe(self._child(self.time_per_output_token, model, version), time_per_output_token)

    def observe_decoding_step(self, model: str, version: str, rows: int, running_rows: int, kv_bytes: int) -> None:
        if rows:
            self._observe(self._child(self.decoding_step_rows, model, version), rows)
        if self._decoding_now.get((model, version)) != (running_rows, kv_bytes):  # gauges write through: only changes
            self._decoding_now[(model, version)] = (running_rows, kv_bytes)
            self._child(self.decoding_rows, model, version).set(running_rows)
            self._child(self.decoding_kv_bytes, model, version).set(kv_bytes)

    def count_freed_rows(self, model: str, version: str, reason: str, rows: int) -> None:
        if reason not in FREED_REASONS:
            raise ValueError(f"freed-rows reason {reason!r} not in {FREED_REASONS}")
        self._add(self._child(self.freed_rows, model, version, reason), rows)

    def init_decoding(self, model: str, version: str) -> None:
        """Create a continuously decoded version's series at 0 (``rate()`` then counts their first increments)."""
        self.generated_tokens.labels(model, version)
        self.time_to_first_token.labels(model, version)
        self.time_per_output_token.labels(model, version)
        self.decoding_step_rows.labels(model, version)
        self.stage_duration.labels(model, version, "queue_wait")
        self.observe_decoding_step(model, version, 0, 0, 0)
        for reason in FREED_REASONS:
            self.freed_rows.labels(model, version, reason)

    # --- versions and rollouts -------------------------------------------------------------
    def observe_version_request(self, model: str, version: str, route: str, status: int | str, seconds: float) -> None:
        """One request answered by one version."""
        self._add(self._child(self.version_requests, model, version, route, str(status)))
        self._observe(self._child(self.version_request_duration, model, version, route), seconds)

    def count_shadow(self, model: str, primary: str, candidate: str, agree: int, disagree: int) -> None:
        if agree:
            self._add(self._child(self.shadow_comparisons, model, primary, candidate, "agree"), agree)
        if disagree:
            self._add(self._child(self.shadow_comparisons, model, primary, candidate, "disagree"), disagree)

    def count_shadow_skipped(self, model: str, candidate: str, items: int) -> None:
        self._add(self._child(self.shadow_skipped, model, candidate), items)

    def set_rollout(self, model: str, primary: str | None, candidate: str | None, mode: str | None,
                    share: float) -> None:
        """The model's current roles; roles no longer held drop to 0 (multiprocess gauges cannot be removed)."""
        now = set()
        if primary:
            now.add((primary, "primary", "none"))
        if candidate:
            now.add((candidate, "candidate", mode or "canary"))
        with self._lock:
            for labels in self._rollouts.get(model, set()) - now:
                self.rollout_info.labels(model, *labels).set(0)
            self._rollouts[model] = now
        for labels in now:
            self.rollout_info.labels(model, *labels).set(1)
        self.rollout_share.labels(model).set(share if candidate else 0.0)
        # the series a rollout will write, at 0 before its first request, so rate() sees every increment
        for version, route in ((primary, "primary"), (candidate, mode)):
            if version and route:
                self.version_requests.labels(model, version, route, "200")
                self.version_request_duration.labels(model, version, route)
        if candidate and primary and mode == "shadow":
            for agreement in ("agree", "disagree"):
                self.shadow_comparisons.labels(model, primary, candidate, agreement)

    # --- GPU ------------------------------------------------------------------------------
    def sample_gpu(self) -> bool:
        """Read utilisation and memory of every GPU once; False when NVML or a GPU is missing."""
        try:
            import pynvml

            pynvml.nvmlInit()
            count = pynvml.nvmlDeviceGetCount()
        except Exception:  # no driver, no library or no device: CPU-only host
            return False
        if count == 0:
            return False
        for i in range(count):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            util = pynvml.nvmlDeviceGetUtilizationRates(handle)
            mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
            self.gpu_utilization.labels(str(i)).set(util.gpu / 100.0)
            self.gpu_memory_used.labels(str(i)).set(mem.used)
            self.gpu_memory_total.labels(str(i)).set(mem.total)
        return True

    def start_gpu_sampler(self, interval_s: float = 5.0) -> bool:
        """Sample GPUs every ``interval_s`` in a daemon thread; False (and no thread) without a GPU."""
        with self._lock:
            if self._gpu_thread is not None:
                return True
            if not self.sample_gpu():
                log.info("no GPU visible through NVML: GPU metrics are not exported")
                return False
            stop = threading.Event()

            def loop() -> None:
                while not stop.wait(interval_s):
                    try:
                        self.sample_gpu()
                    except Exception:  # keep serving if NVML hiccups; the gauges just go stale
                        log.exception("GPU sampling failed")

            self._gpu_thread = threading.Thread(target=loop, name="gpu-sampler", daemon=True)
            self._gpu_thread.start()
            return True


METRIC_NAMES = (
    "modelserve_requests_total",
    "modelserve_request_duration_seconds",
    "modelserve_requests_in_flight",
    "modelserve_errors_total",
    "modelserve_items_total",
    "modelserve_batches_total",
    "modelserve_batch_size_rows",
    "modelserve_stage_duration_seconds",
    "modelserve_input_size",
    "modelserve_predictions_total",
    "modelserve_prediction_confidence",
    "modelserve_drift_bin_total",
    "modelserve_drift_missing_values_total",
    "modelserve_drift_reference_fraction",
    "modelserve_model_info",
    "modelserve_model_load_duration_seconds",
    "modelserve_version_requests_total",
    "modelserve_version_request_duration_seconds",
    "modelserve_shadow_comparisons_total",
    "modelserve_shadow_skipped_items_total",
    "modelserve_rollout_info",
    "modelserve_rollout_share",
    "modelserve_generated_tokens_total",
    "modelserve_decoding_rows",
    "modelserve_decoding_step_rows",
    "modelserve_decoding_kv_cache_bytes",
    "modelserve_time_to_first_token_seconds",
    "modelserve_time_per_output_token_seconds",
    "modelserve_decoding_freed_rows_total",
    "modelserve_gpu_utilization_ratio",
    "modelserve_gpu_memory_used_bytes",
    "modelserve_gpu_memory_total_bytes",
)

_default: ServiceMetrics | None = None
_default_lock = threading.Lock()


def default_metrics() -> ServiceMetrics:
    """The process-wide instance registered in prometheus_client's default registry."""
    global _default
    if _default is not None:  # every recording call comes here: no lock once it exists
        return _default
    with _default_lock:
        if _default is None:
            _default = ServiceMetrics()
        return _default


def observe_request(endpoint: str, status: int | str, seconds: float, protocol: str = "json") -> None:
    default_metrics().observe_request(endpoint, status, seconds, protocol)


def in_flight(endpoint: str, protocol: str = "json"):
    return default_metrics().in_flight(endpoint, protocol)


def request_started(endpoint: str, protocol: str = "json") -> None:
    default_metrics().request_started(endpoint, protocol)


def request_finished(endpoint: str, protocol: str = "json") -> None:
    default_metrics().request_finished(endpoint, protocol)


def count_error(endpoint: str, model: str, kind: str, protocol: str = "json") -> None:
    default_metrics().count_error(endpoint, model, kind, protocol)


def observe_batch(model: str, version: str, rows: int, timings: Mapping[str, float],
                  queue_wait_seconds: float | Sequence[float] | None = None) -> None:
    default_metrics().observe_batch(model, version, rows, timings, queue_wait_seconds)


def count_items(model: str, version: str, n: int) -> None:
    default_metrics().count_items(model, version, n)


def observe_inputs(model: str, version: str, sizes: Mapping[str, Iterable[float]]) -> None:
    default_metrics().observe_inputs(model, version, sizes)


def observe_predictions(model: str, version: str, manifest: Manifest, features_per_item: Sequence[Mapping[str, Any]],
                        labels_per_item: Sequence[Sequence[str]] | None = None,
                        top_confidences: Sequence[float] | None = None) -> None:
    default_metrics().observe_predictions(model, version, manifest, features_per_item, labels_per_item,
                                          top_confidences)


def set_model_info(model: str, version: str, task: str, provider: str | None, status: str,
                   load_seconds: float | None = None, manifest: Manifest | None = None) -> None:
    default_metrics().set_model_info(model, version, task, provider, status, load_seconds, manifest)


def start_gpu_sampler(interval_s: float = 5.0) -> bool:
    return default_metrics().start_gpu_sampler(interval_s)


def observe_version_request(model: str, version: str, route: str, status: int | str, seconds: float) -> None:
    default_metrics().observe_version_request(model, version, route, status, seconds)


def count_shadow(model: str, primary: str, candidate: str, agree: int, disagree: int) -> None:
    default_metrics().count_shadow(model, primary, candidate, agree, disagree)


def set_rollout(model: str, primary: str | None, candidate: str | None, mode: str | None, share: float) -> None:
    default_metrics().set_rollout(model, primary, candidate, mode, share)


def count_shadow_skipped(model: str, candidate: str, items: int) -> None:
    default_metrics().count_shadow_skipped(model, candidate, items)


def enable_buffering(interval_s: float = 0.5) -> None:
    default_metrics().enable_buffering(interval_s)


def observe_decoding_join(model: str, version: str, queue_wait: float, time_to_first_token: float) -> None:
    default_metrics().observe_decoding_join(model, version, queue_wait, time_to_first_token)


def observe_decoding_done(model: str, version: str, tokens: int, time_per_output_token: float | None = None) -> None:
    default_metrics().observe_decoding_done(model, version, tokens, time_per_output_token)


def observe_decoding_step(model: str, version: str, rows: int, running_rows: int, kv_bytes: int) -> None:
    default_metrics().observe_decoding_step(model, version, rows, running_rows, kv_bytes)


def count_freed_rows(model: str, version: str, reason: str, rows: int) -> None:
    default_metrics().count_freed_rows(model, version, reason, rows)


def init_decoding(model: str, version: str) -> None:
    default_metrics().init_decoding(model, version)


def exposition() -> tuple[bytes, str]:
    """Every worker's metrics (multiprocess mode) or this process's, in Prometheus text format."""
    default_metrics().flush()
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
    else:
        registry = REGISTRY
    return generate_latest(registry), CONTENT_TYPE_LATEST


__all__ = [
    "ERROR_KINDS", "INPUT_SIZE_KINDS", "METRIC_NAMES", "MODEL_STATUSES", "PROTOCOLS", "STAGES", "ServiceMetrics",
    "count_error", "count_items", "default_metrics", "enable_buffering", "exposition", "in_flight", "observe_batch",
    "observe_inputs", "observe_predictions", "observe_request", "request_finished", "request_started",
    "set_model_info", "start_gpu_sampler",
]
