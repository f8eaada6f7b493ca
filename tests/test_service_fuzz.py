"""Schema-driven fuzzing of every HTTP endpoint of the real service (schemathesis + hypothesis): no 5xx, no hang.

The OpenAPI document the service publishes (``/docs.json``) is loaded as a client would; model
names (the ``name`` path parameter and the JSON ``model`` field) are narrowed to the served
models so the generated requests reach the models instead of stopping at 404. Each operation
gets valid (positive) and invalid (negative) cases; every answer must come back within the
per-request timeout with a status below 500. Bounded for CI: ``FUZZ_EXAMPLES`` cases per
operation and mode (default 25), about 20 s per service configuration on two cores.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import httpx
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode

from service import auth
from service_support import names_by_task, serve, smoke_models  # noqa: F401 (fixture)

EXAMPLES = int(os.environ.get("FUZZ_EXAMPLES", "25"))
REQUEST_TIMEOUT_S = 30.0


@pytest.fixture(scope="module", params=["open", "keys-and-limits"])
def server(request, smoke_models: Path, tmp_path_factory):
    """The service as it starts by default, and with API keys, a rate limit and a short body limit on
    (the fuzzer then sends a valid key, and the limits are part of what it runs into)."""
    served = list(names_by_task(smoke_models).values())
    folder = tmp_path_factory.mktemp("fuzz")
    env, headers = {"SERVICE_MODELS": json.dumps(served)}, {}
    if request.param == "keys-and-limits":
        key = auth.new_key()
        (folder / "keys.json").write_text(json.dumps(
            {"keys": [{"name": "fuzzer", "sha256": auth.hash_key(key), "scopes": ["infer"]}]}))
        env.update({"SERVICE_AUTH__ENABLED": "true", "SERVICE_AUTH__KEYS_FILE": str(folder / "keys.json"),
                    "SERVICE_RATE_LIMIT__RATE": "200", "SERVICE_RATE_LIMIT__BURST": "50",
                    "SERVICE_MAX_REQUEST_BYTES": "4096"})
        headers = {"authorization": f"Bearer {key}"}
    with serve(smoke_models, folder / "serve", env=env) as srv:
        yield srv, served, headers


def _narrow_model_names(doc: dict, served: list[str]) -> dict:
    """Path parameter ``name`` and body field ``model``: one of the served models."""
    for item in doc["paths"].values():
        for op in item.values():
            for param in op.get("parameters", []):
                if param.get("name") == "name" and param.get("in") == "path":
                    param["schema"] = {"type": "string", "enum": served}
            for media in (op.get("requestBody") or {}).get("content", {}).values():
                props = (media.get("schema") or {}).get("properties", {})
                if "model" in props:
                    props["model"] = {"type": "string", "enum": served}
    return doc


def test_every_endpoint_answers_below_500_without_hanging(server):
    srv, served, headers = server
    doc = _narrow_model_names(httpx.get(f"{srv.url}/docs.json", timeout=30).json(), served)
    schema = schemathesis.openapi.from_dict(doc)
    session = requests.Session()
    seen: dict[str, dict[int, int]] = {}
    failures: list[str] = []
    slowest = 0.0
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 15, [op.label for op in operations]

    for operation in operations:
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
            counts = seen.setdefault(f"{operation.label} [{mode.value}]", {})

            @settings(max_examples=EXAMPLES, deadline=None, database=None, derandomize=True,
                      phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
            @given(case=operation.as_strategy(generation_mode=mode))
            def run(case):
                nonlocal slowest
                t0 = time.monotonic()
                try:
                    response = case.call(base_url=srv.url, session=session, headers=headers,
                                         timeout=REQUEST_TIMEOUT_S)
                except requests.RequestException as exc:
                    failures.append(f"{case.method} {case.formatted_path}: {type(exc).__name__} {exc}"[:300])
                    return
                slowest = max(slowest, time.monotonic() - t0)
                counts[response.status_code] = counts.get(response.status_code, 0) + 1
                if os.environ.get("FUZZ_DEBUG") and mode == GenerationMode.POSITIVE and response.status_code >= 400:
                    print(case.method, case.formatted_path, str(case.body)[:150], response.text[:200])
                if response.status_code >= 500:
                    failures.append(f"{case.method} {case.formatted_path} body={str(case.body)[:200]!r} -> "
                                    f"{response.status_code} {response.text[:200]}")

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (no parameters, no body)
                assert mode == GenerationMode.NEGATIVE, operation.label
                del seen[f"{operation.label} [{mode.value}]"]

    print(f"\nslowest answer {slowest * 1000:.0f} ms")
    for label, counts in seen.items():
        print(label, dict(sorted(counts.items())))
    assert not failures, "\n".join(failures[:20])
    assert sum(sum(c.values()) for c in seen.values()) >= len(operations) * 2 * min(EXAMPLES, 5)
    log = srv.log()
    assert "Traceback" not in log, log[-3000:]
