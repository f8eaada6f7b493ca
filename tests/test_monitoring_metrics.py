"""monitoring.metrics against prometheus_client directly: values, drift bins, multiprocess merging."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from modelkit import profile
from modelkit.manifest import Manifest
from monitoring.metrics import METRIC_NAMES, ServiceMetrics

ROOT = Path(__file__).resolve().parents[1]


def drift_manifest(name: str = "demo", version: str = "v1") -> Manifest:
    """A valid manifest with one numeric and one categorical reference feature."""
    data = {
        "name": name,
        "version": version,
        "task": "text-classification",
        "labels": ["neg", "pos"],
        "graphs": [{
            "role": "model", "variant": "fp32", "path": "model.onnx", "opset": 17, "exporter": "legacy",
            "inputs": [{"name": "input_ids", "dtype": "int64", "shape": ["batch", "sequence"]}],
            "outputs": [{"name": "logits", "dtype": "float32", "shape": ["batch", 2]}],
        }],
        "preprocessing": {"kind": "text", "tokenizer_file": "tokenizer.json", "max_length": 16, "pad_token_id": 0},
        "postprocessing": {"activation": "softmax"},
        "metrics": {"fp32": {"accuracy": 0.9}},
        "baseline_metrics": {},
        "headline_metric": "accuracy",
        "gate": {"passed": True, "criteria": [], "reasons": []},
        "parity": [],
        "files": [],
        "dataset": {"source": "unit", "fingerprint": "0" * 64, "split_sizes": {"test": 4}, "seed": 0},
        "training": {"preset": "smoke", "command": "test", "config": {}, "duration_s": 0.0, "device": "cpu",
                     "num_parameters": 1},
        "reference_profile": {"n_samples": 100, "features": {
            "token_count": {"kind": "numeric", "edges": [1, 5, 10, 20], "fractions": [0.3, 0.5, 0.2]},
            "predicted_class": {"kind": "categorical", "categories": ["neg", "pos"], "fractions": [0.4, 0.6]},
        }},
    }
    return Manifest.model_validate(data)


def test_request_batch_and_error_metrics_have_the_recorded_values():
    reg = CollectorRegistry()
    m = ServiceMetrics(reg)
    for s in (0.02, 0.2, 3.0):
        m.observe_request("classify", 200, s)
    m.observe_request("classify", 422, 0.001)
    m.observe_request("ModelInfer", 200, 0.01, protocol="oip-grpc")
    m.count_error("classify", "demo", "validation")
    m.count_error("/v2/models/{name}/infer", "demo", "validation", protocol="oip-rest")
    with m.in_flight("classify"):
        assert reg.get_sample_value("modelserve_requests_in_flight", {"endpoint": "classify", "protocol": "json"}) == 1
    assert reg.get_sample_value("modelserve_requests_in_flight", {"endpoint": "classify", "protocol": "json"}) == 0
    with pytest.raises(ValueError):
        m.observe_request("classify", 200, 0.1, protocol="soap")
    m.observe_batch("demo", "v1", 5, {"preprocess": 0.001, "inference": 0.01, "postprocess": 0.0002},
                    queue_wait_seconds=[0.003, 0.004])
    m.count_items("demo", "v1", 5)
    m.observe_inputs("demo", "v1", {"tokens": [3, 7, 12, 30, 2]})

    get = reg.get_sample_value
    json_200 = {"endpoint": "classify", "status": "200", "protocol": "json"}
    assert get("modelserve_requests_total", json_200) == 3
    assert get("modelserve_request_duration_seconds_count", json_200) == 3
    assert get("modelserve_request_duration_seconds_bucket", {**json_200, "le": "0.25"}) == 2
    assert get("modelserve_requests_total", {"endpoint": "ModelInfer", "status": "200", "protocol": "oip-grpc"}) == 1
    assert get("modelserve_errors_total", {"endpoint": "classify", "model": "demo", "kind": "validation",
                                           "protocol": "json"}) == 1
    assert get("modelserve_errors_total", {"endpoint": "/v2/models/{name}/infer", "model": "demo",
                                           "kind": "validation", "protocol": "oip-rest"}) == 1
    assert get("modelserve_batch_size_rows_sum", {"model": "demo", "version": "v1"}) == 5
    assert get("modelserve_stage_duration_seconds_count",
               {"model": "demo", "version": "v1", "stage": "queue_wait"}) == 2
    assert get("modelserve_stage_duration_seconds_sum",
               {"model": "demo", "version": "v1", "stage": "inference"}) == pytest.approx(0.01)
    assert get("modelserve_items_total", {"model": "demo", "version": "v1"}) == 5
    assert get("modelserve_input_size_count", {"model": "demo", "version": "v1", "kind": "tokens"}) == 5


def test_unknown_kinds_are_refused():
    m = ServiceMetrics(CollectorRegistry())
    with pytest.raises(ValueError, match="error kind"):
        m.count_error("classify", "demo", "oops")
    with pytest.raises(ValueError, match="stage"):
        m.observe_batch("demo", "v1", 1, {"decode": 0.1})
    with pytest.raises(ValueError, match="model status"):
        m.set_model_info("demo", "v1", "text-classification", "CPUExecutionProvider", "up")


def test_drift_bins_match_the_offline_profile_binning():
    reg = CollectorRegistry()
    m = ServiceMetrics(reg)
    manifest = drift_manifest()
    m.set_model_info("demo", "v1", "text-classification", "CPUExecutionProvider", "ready", 1.5, manifest)
    get = reg.get_sample_value
    # every bin exists at 0 before any traffic, and the reference is exposed
    assert get("modelserve_drift_bin_total", {"model": "demo", "version": "v1", "feature": "token_count", "bin": "02"}) == 0
    assert get("modelserve_drift_reference_fraction",
               {"model": "demo", "version": "v1", "feature": "token_count", "bin": "01"}) == 0.5
    assert get("modelserve_drift_reference_fraction",
               {"model": "demo", "version": "v1", "feature": "predicted_class", "bin": "(other)"}) == 0

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, 40, size=200)
    classes = rng.choice(["neg", "pos", "maybe"], size=200)
    features = [{"token_count": int(t), "predicted_class": str(c)} for t, c in zip(tokens, classes)]
    features.append({"token_count": None})  # missing class, no token count: counted as missing
    m.observe_predictions("demo", "v1", manifest, features, labels_per_item=[[c] for c in classes],
                          top_confidences=rng.uniform(0.5, 1, size=200))

    hist = manifest.reference_profile.features["token_count"]
    expected = np.bincount(profile.bin_indices(tokens, hist.edges), minlength=3)
    live = [get("modelserve_drift_bin_total", {"model": "demo", "version": "v1", "feature": "token_count",
                                                "bin": f"{b:02d}"}) for b in range(3)]
    assert live == expected.tolist()
    for b, name in [("neg", "neg"), ("pos", "pos"), ("(other)", "maybe")]:
        assert get("modelserve_drift_bin_total", {"model": "demo", "version": "v1", "feature": "predicted_class",
                                                   "bin": b}) == int((classes == name).sum())
        assert get("modelserve_predictions_total", {"model": "demo", "version": "v1", "class": name}) == int(
            (classes == name).sum())
    assert get("modelserve_drift_missing_values_total",
               {"model": "demo", "version": "v1", "feature": "predicted_class"}) == 1
    assert get("modelserve_drift_missing_values_total",
               {"model": "demo", "version": "v1", "feature": "token_count"}) == 1
    assert get("modelserve_prediction_confidence_count", {"model": "demo", "version": "v1"}) == 200
    assert get("modelserve_model_load_duration_seconds", {"model": "demo", "version": "v1"}) == 1.5


def test_status_change_zeroes_the_previous_status():
    reg = CollectorRegistry()
    m = ServiceMetrics(reg)
    m.set_model_info("demo", "v1", "text-classification", None, "loading")
    m.set_model_info("demo", "v1", "text-classification", "CPUExecutionProvider", "ready", 0.4)
    base = {"model": "demo", "version": "v1", "task": "text-classification"}
    assert reg.get_sample_value("modelserve_model_info", {**base, "provider": "none", "status": "loading"}) == 0
    assert reg.get_sample_value("modelserve_model_info",
                                {**base, "provider": "CPUExecutionProvider", "status": "ready"}) == 1


def test_gpu_metrics_are_absent_without_a_gpu():
    reg = CollectorRegistry()
    m = ServiceMetrics(reg)
    has_gpu = m.start_gpu_sampler(0.5)
    text = generate_latest(reg).decode()
    if has_gpu:  # on a GPU host the series must exist and be sane
        util = reg.get_sample_value("modelserve_gpu_utilization_ratio", {"gpu": "0"})
        assert 0 <= util <= 1
        assert reg.get_sample_value("modelserve_gpu_memory_total_bytes", {"gpu": "0"}) > 0
    else:
        assert 'modelserve_gpu_utilization_ratio{' not in text


def test_every_documented_metric_is_registered():
    reg = CollectorRegistry()
    ServiceMetrics(reg)
    names = set()
    for fam in reg.collect():
        names.add(fam.name + ("_total" if fam.type == "counter" else ""))
    assert names == set(METRIC_NAMES)


WORKER = textwrap.dedent("""
    import sys
    sys.path.insert(0, {root!r}); sys.path.insert(0, {tests!r})
    from test_monitoring_metrics import drift_manifest
    from monitoring import metrics
    wid, n = int(sys.argv[1]), int(sys.argv[2])
    manifest = drift_manifest()
    metrics.set_model_info("demo", "v1", "text-classification", "CPUExecutionProvider", "ready", 1.0 + wid, manifest)
    for i in range(n):
        with metrics.in_flight("classify"):
            metrics.observe_request("classify", 200, 0.01 * (i % 7))
        metrics.observe_predictions("demo", "v1", manifest, [{{"token_count": 7, "predicted_class": "pos"}}],
                                    [["pos"]], [0.9])
""")


def test_multiprocess_workers_sum_and_gauges_have_no_pid(tmp_path):
    """Two real worker processes writing to one PROMETHEUS_MULTIPROC_DIR, merged as BentoML's /metrics does."""
    mp_dir = tmp_path / "mp"
    mp_dir.mkdir()
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(root=str(ROOT), tests=str(ROOT / "tests")))
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(mp_dir)}
    procs = [subprocess.Popen([sys.executable, str(script), str(w), str(n)], env=env) for w, n in [(0, 30), (1, 45)]]
    assert [p.wait(timeout=60) for p in procs] == [0, 0]

    out = subprocess.run([sys.executable, "-c", (
        "from prometheus_client import CollectorRegistry, generate_latest, multiprocess\n"
        "r = CollectorRegistry(); multiprocess.MultiProcessCollector(r)\n"
        "print(generate_latest(r).decode())")], env=env, capture_output=True, text=True, check=True).stdout
    samples = {}
    for fam in text_string_to_metric_families(out):
        for s in fam.samples:
            assert "pid" not in s.labels, f"{s.name} has a pid label: gauges need a multiprocess mode"
            samples[(s.name, tuple(sorted(s.labels.items())))] = s.value

    def value(name, **labels):
        return samples[(name, tuple(sorted(labels.items())))]

    assert value("modelserve_requests_total", endpoint="classify", status="200", protocol="json") == 75
    assert value("modelserve_request_duration_seconds_count", endpoint="classify", status="200", protocol="json") == 75
    assert value("modelserve_drift_bin_total", model="demo", version="v1", feature="token_count", bin="01") == 75
    assert value("modelserve_drift_bin_total", model="demo", version="v1", feature="predicted_class", bin="pos") == 75
    assert value("modelserve_drift_reference_fraction", model="demo", version="v1", feature="token_count",
                 bin="00") == 0.3
    assert value("modelserve_model_load_duration_seconds", model="demo", version="v1") == 2.0  # max over workers
    assert value("modelserve_model_info", model="demo", version="v1", task="text-classification",
                 provider="CPUExecutionProvider", status="ready") == 1
    assert value("modelserve_requests_in_flight", endpoint="classify", protocol="json") == 0


def test_few_values_are_binned_like_many_edges_and_non_finite_values_included():
    """A call with few values (one bisect each) and one with many (numpy) give the same bins and missing counts
    as the offline binning, for values on the edges, between them, beyond both ends and not finite."""
    from monitoring.metrics import SCALAR_BINNING_MAX_VALUES

    manifest = drift_manifest()
    values = [0, 1, 1.0, 3, 5, 5.0, 7.5, 10, 19.999, 20, 25, -3, float("nan"), float("inf"), float("-inf"), None,
              np.float32(5.0), np.int64(10)]
    assert len(values) > SCALAR_BINNING_MAX_VALUES  # the one call below takes the numpy path
    regs = {"few": CollectorRegistry(), "many": CollectorRegistry()}
    few, many = ServiceMetrics(regs["few"]), ServiceMetrics(regs["many"])
    for v in values:
        few.observe_predictions("demo", "v1", manifest, [{"token_count": v}])
    many.observe_predictions("demo", "v1", manifest, [{"token_count": v} for v in values])

    finite = [float(v) for v in values if v is not None and np.isfinite(float(v))]
    expected = np.bincount(profile.bin_indices(np.asarray(finite), [1, 5, 10, 20]), minlength=3).tolist()
    assert expected == [5, 4, 5]  # the fixture itself: 5 and 10 open their bins, both ends are open
    for reg in regs.values():
        live = [reg.get_sample_value("modelserve_drift_bin_total", {"model": "demo", "version": "v1",
                                                                    "feature": "token_count", "bin": f"{b:02d}"})
                for b in range(3)]
        assert live == expected
        assert reg.get_sample_value("modelserve_drift_missing_values_total",
                                    {"model": "demo", "version": "v1", "feature": "token_count"}) == 4


def test_a_feature_constant_on_held_out_data_still_detects_drift():
    """E.g. an unknown-token rate of 0 on every held-out sentence: other live values must stand out."""
    hist = profile.numeric_histogram([0.0] * 200)
    assert profile.psi(hist.fractions, profile.live_fractions([0.0] * 300, hist)) == pytest.approx(0)
    shifted = profile.live_fractions([0.0] * 100 + [0.4] * 200, hist)
    assert profile.psi(hist.fractions, shifted) > 1


def test_a_feature_mostly_constant_on_held_out_data_keeps_its_mass_point_apart():
    rng = np.random.default_rng(0)
    held_out = np.concatenate([np.zeros(950), rng.uniform(0.01, 0.1, 50)])
    hist = profile.numeric_histogram(held_out)
    same = profile.live_fractions(np.concatenate([np.zeros(475), rng.uniform(0.01, 0.1, 25)]), hist)
    assert profile.psi(hist.fractions, same) < 0.02
    shifted = profile.live_fractions(rng.uniform(0.2, 0.7, 300), hist)  # e.g. wrong-language input
    assert profile.psi(hist.fractions, shifted) > 1


def test_gpu_sampler_exports_nvml_readings(monkeypatch):
    """No GPU on the CI machines, so NVML is replaced by a stand-in with nvidia-ml-py's API
    (the real library runs in test_gpu_metrics_are_absent_without_a_gpu and on GPU hosts)."""
    import types

    fake = types.SimpleNamespace(
        nvmlInit=lambda: None,
        nvmlDeviceGetCount=lambda: 2,
        nvmlDeviceGetHandleByIndex=lambda i: i,
        nvmlDeviceGetUtilizationRates=lambda h: types.SimpleNamespace(gpu=[37, 90][h], memory=0),
        nvmlDeviceGetMemoryInfo=lambda h: types.SimpleNamespace(used=[1 << 30, 3 << 30][h], total=80 << 30, free=0),
    )
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    reg = CollectorRegistry()
    m = ServiceMetrics(reg)
    assert m.start_gpu_sampler(interval_s=60)
    assert reg.get_sample_value("modelserve_gpu_utilization_ratio", {"gpu": "0"}) == 0.37
    assert reg.get_sample_value("modelserve_gpu_utilization_ratio", {"gpu": "1"}) == 0.9
    assert reg.get_sample_value("modelserve_gpu_memory_used_bytes", {"gpu": "1"}) == 3 << 30
    assert reg.get_sample_value("modelserve_gpu_memory_total_bytes", {"gpu": "0"}) == 80 << 30
    # a serving worker starts sampling when it registers its first model
    reg2 = CollectorRegistry()
    ServiceMetrics(reg2).set_model_info("demo", "v1", "text-classification", "CUDAExecutionProvider", "ready", 1.0)
    assert reg2.get_sample_value("modelserve_gpu_utilization_ratio", {"gpu": "1"}) == 0.9


def test_buffered_metrics_equal_direct_writes_after_a_flush():
    """The service buffers increments and observations (one write per series per flush): the samples
    after a flush are exactly those of writing every value at once, bucket bounds and NaN included."""
    values = [0.0005, 0.001, 0.0011, 0.05, 0.75, 30.0, 31.0, float("nan"), 0.0]
    registries = []
    for buffered in (False, True):
        reg = CollectorRegistry()
        m = ServiceMetrics(reg)
        if buffered:
            m.enable_buffering(interval_s=3600)  # only the explicit flush below writes
        for v in values:
            m.observe_batch("demo", "v1", 3, {"inference": v}, [v, v / 2])
        m.observe_request("classify", 200, 0.02)
        m.request_started("classify")
        m.request_finished("classify")
        m.request_started("classify")
        if buffered:
            assert reg.get_sample_value("modelserve_batches_total", {"model": "demo", "version": "v1"}) in (None, 0)
            m.flush()
        registries.append(reg)

    def samples(reg):
        return sorted((s.name, tuple(sorted(s.labels.items())), "nan" if s.value != s.value else s.value)
                      for fam in reg.collect() for s in fam.samples if not s.name.endswith("_created"))

    direct, buffered = (samples(r) for r in registries)
    assert direct == buffered
    assert any(name == "modelserve_requests_in_flight" and value == 1 for name, _, value in buffered)
