"""The "before" design for benchmarks/service_bench.py: BentoML's own adaptive batching.

One ``@bentoml.api(batchable=True)`` endpoint per task on the same runtimes, no error
mapping, no failure isolation; it exists only to measure what the service's own
batcher (service/batcher.py) is compared with. Not part of the product.

    MODEL_REGISTRY=exported BASELINE_MODELS=sentiment,fashion \
        bentoml serve benchmarks.service_adaptive_baseline:AdaptiveBaseline
"""

from __future__ import annotations

import base64
import os
from pathlib import Path

import bentoml

from modelkit.onnx_session import SessionSettings
from modelkit.registry import load_version
from modelkit.runtimes import create_runtime

MAX_BATCH = int(os.environ.get("SERVICE_DEFAULT_BATCH__MAX_BATCH_SIZE", "32"))
MAX_LATENCY_MS = int(os.environ.get("BASELINE_MAX_LATENCY_MS", "1000"))


@bentoml.service(name="adaptive_baseline", workers=1, logging={"access": {"enabled": False}},
                 tracing={"excluded_urls": ["/"]})
class AdaptiveBaseline:
    def __init__(self) -> None:
        root = Path(os.environ.get("MODEL_REGISTRY", "exported"))
        settings = SessionSettings(provider=os.environ.get("SERVICE_PROVIDER", "cpu"), variant="fp32",
                                   intra_op_threads=int(os.environ.get("SERVICE_THREADS", "0")))
        self.runtimes = {}
        for name in os.environ.get("BASELINE_MODELS", "sentiment,fashion").split(","):
            manifest, vdir = load_version(root, name)
            runtime = create_runtime(manifest, vdir, settings)
            runtime.load()
            runtime.warmup()
            self.runtimes[manifest.task] = runtime

    def _run(self, task: str, items: list) -> list[dict]:
        runtime = self.runtimes[task]
        results = runtime.predict([runtime.validate(x) for x in items], top_k=1)
        return [{"labels": r["labels"]} for r in results]

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def classify(self, texts: list[str]) -> list[dict]:
        return self._run("text-classification", texts)

    @bentoml.api(batchable=True, max_batch_size=MAX_BATCH, max_latency_ms=MAX_LATENCY_MS)
    def classify_image(self, images: list[str]) -> list[dict]:
        return self._run("image-classification", [base64.b64decode(b) for b in images])
