"""benchmarks/translator_serving.py runs end to end on a smoke translator: raw decoders, CTranslate2,
the real ``bentoml serve`` with continuous decoding and with the request batcher, parity under load.

Tiny durations: this checks the script, not speed (the figures live in benchmarks/RESULTS.md).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from decoding_support import step_registry  # noqa: F401 (fixture)
from service_support import benchmark_module, smoke_models  # noqa: F401 (fixture)

pytest.importorskip("torch", reason="training extras not installed")


def test_translator_serving_bench_end_to_end(step_registry, tmp_path):  # noqa: F811
    pytest.importorskip("ctranslate2", reason="the dev extra's ctranslate2 is not installed")
    results, png = tmp_path / "RESULTS.md", tmp_path / "plot.png"
    results.write_text("# Benchmark results\n\nkept text\n")
    data_dir = Path(os.environ.get("SMOKE_DATA_DIR", tmp_path / "data"))
    rc = benchmark_module("translator_serving").main(["--registry", str(step_registry), "--model", "de-en", "--data-dir", str(data_dir),
                        "--sentences", "12", "--batch1-sentences", "3", "--clients", "1,4", "--duration", "1.5",
                        "--rounds", "1", "--loop-seconds", "0.5", "--results", str(results), "--plot", str(png)])
    assert rc == 0
    text = results.read_text()
    assert "kept text" in text and "<!-- translator_serving:start -->" in text and png.stat().st_size > 0
    rows = [cells for cells in (line.split("|")[1:-1] for line in text.splitlines() if line.startswith("| "))
            if len(cells) == 10 and cells[1].strip().isdigit()]  # the service table: decoding, clients, ...
    assert {r[0].strip() for r in rows} == {"continuous fp32", "continuous int8", "request batcher fp32"}
    for r in rows:
        assert float(r[2].replace(",", "")) > 0 and r[8].strip() == "0", r  # sentences/s, no errors
    raw = {line.split("|")[1].strip(): line for line in text.splitlines() if line.startswith("| ")}
    assert "CTranslate2" in raw and "continuous engine" in raw
    for label in ("encoder_kv at admission", "encoder + first-step decoder at admission"):  # the closed loop
        cells = raw[label].split("|")[1:-1]
        assert float(cells[1].replace(",", "")) > 0 and 0 < float(cells[3].rstrip("% ")) < 100, cells
    parity = re.search(r"equal to the batch decoder's .*: (\d+)/(\d+)", text)
    assert parity and parity.group(1) == parity.group(2) and int(parity.group(2)) > 0
    assert re.search(r"beam \d through the service", text)


def test_render_without_ctranslate2_and_own_section(tmp_path):
    """--no-ct2 --variants fp32: no CTranslate2 row, its ratios n/a; --section writes its own markers."""
    from types import SimpleNamespace

    bench = benchmark_module("translator_serving")
    args = SimpleNamespace(variants=["fp32"], no_ct2=True, provider="cuda", threads=1, rounds=1, batch1_sentences=2,
                           duration=1.0, note="test")
    manifest = SimpleNamespace(name="de-en", version="v1", training=SimpleNamespace(preset="smoke"),
                               generation=SimpleNamespace(max_new_tokens=8))
    sentences = [bench.Sentence("a b", [1, 2], 2, greedy=[3, 4], greedy_text="x y")]
    raw = {"tokens_s": {(e, "fp32", b): 100.0 for e in ("batch decoder (request batcher)", "continuous engine")
                        for b in (1, 32)}, "agreement": {("continuous engine", "fp32", 32): 1.0}}
    levels = []
    for clients, seconds in ((1, 1.0), (32, 0.2)):
        lv = bench.Level(clients, requests=10, seconds=seconds, tokens=20, metric_tokens=20.0)
        lv.latencies = lv.short_latencies = [0.01, 0.02]
        levels.append(lv)
    text = bench.render(args, manifest, sentences, raw, {"continuous fp32": levels}, {"equal": 1, "answered": 1},
                        None, "raw 0.0", provider="cuda (Some GPU)", plot_name=None)
    assert "| CTranslate2 |" not in text and "provider cuda (Some GPU)" in text
    assert "CTranslate2 not run" in text and "vs n/a: n/a" in text and "int8" not in text and "![" not in text
    results = tmp_path / "RESULTS.md"
    results.write_text("# Benchmark results\n\n<!-- translator_serving:start -->\ncpu\n"
                       "<!-- translator_serving:end -->\n")
    bench.write_results(results, text, "<!-- translator_serving_gpu:start -->", "<!-- translator_serving_gpu:end -->")
    out = results.read_text()
    assert "\ncpu\n" in out and out.count("<!-- translator_serving_gpu:start -->") == 1
