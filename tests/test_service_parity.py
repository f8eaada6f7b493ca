"""The service answers what the same graph answers in-process, for 200 real items per model."""

from __future__ import annotations

import base64
import json
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from modelkit.image import encode_png
from modelkit.onnx_session import SessionSettings
from modelkit.registry import load_version
from modelkit.runtimes import create_runtime
from service_support import serve, smoke_models  # noqa: F401 (fixture)

N_ITEMS = 200
N_TRANSLATIONS = 60  # beam search on CPU: fewer items keep the test short
REQUEST_SIZE = 5
CONCURRENCY = 8
TOLERANCE = 1e-5


def _texts(n: int) -> list[str]:
    """Real tweets (the sentiment corpus); the multi-label model gets the same texts."""
    from training.data.text import load_sentiment

    return [ex.text for ex in load_sentiment()[1000 : 1000 + n]]


def _images(n: int) -> list[bytes]:
    """Fashion-MNIST test images as PNG files, as a client would upload them."""
    from training.data.fashion import read_idx

    images = read_idx(Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz"))[:n]
    return [encode_png(img) for img in images]


def _sources(n: int, runtime) -> list[str]:
    """Ding dictionary sentences in the model's source language (German or English) that it accepts."""
    from modelkit.runtimes import InputError
    from training.data.translation import read_ding

    german = runtime.manifest.preprocessing.source_lang == "de"
    out = []
    for pair in read_ding():
        text = pair.src if german else pair.tgt
        try:
            runtime.validate(text)
        except InputError:  # too many tokens for this model's tokenizer
            continue
        out.append(text)
        if len(out) == n:
            break
    return out


def _models(registry: Path) -> list[tuple[str, str]]:
    out = []
    for latest in sorted(registry.glob("*/LATEST")):
        manifest = json.loads((latest.parent / latest.read_text().strip() / "manifest.json").read_text())
        out.append((latest.parent.name, manifest["task"]))
    return out


@pytest.fixture(scope="module")
def server(smoke_models: Path, tmp_path_factory):
    with serve(smoke_models, tmp_path_factory.mktemp("serve_parity"), env={"SERVICE_VARIANT": "fp32"}) as srv:
        yield srv


def _in_process(registry: Path, name: str):
    manifest, vdir = load_version(registry, name)
    runtime = create_runtime(manifest, vdir, SessionSettings(provider="cpu", variant="fp32"))
    runtime.load()
    return manifest, runtime


def _post_all(server, endpoint: str, bodies: list[dict]) -> list[dict]:
    with server.client(timeout=300) as c:
        def call(body):
            resp = c.post(endpoint, json=body)
            assert resp.status_code == 200, resp.text
            return resp.json()["results"]

        with ThreadPoolExecutor(CONCURRENCY) as pool:
            return [r for results in pool.map(call, bodies) for r in results]


def _chunks(items: list, size: int = REQUEST_SIZE) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def test_service_outputs_match_in_process_runs(server, smoke_models):
    checked = []
    for name, task in _models(smoke_models):
        manifest, runtime = _in_process(smoke_models, name)
        if task == "translation":
            sources = _sources(N_TRANSLATIONS, runtime)
            assert len(sources) == N_TRANSLATIONS
            options = {"num_beams": 2, "max_new_tokens": 16}
            local = [r["translation"] for r in runtime.predict([runtime.validate(s) for s in sources], **options)]
            remote = [r["translation"] for r in _post_all(
                server, "/translate", [{"model": name, "texts": c, **options} for c in _chunks(sources)])]
            assert remote == local, name
            checked.append(name)
            continue
        n_labels = len(manifest.labels)
        if task == "image-classification":
            items = _images(N_ITEMS)
            bodies = [{"model": name, "top_k": n_labels, "images": [base64.b64encode(b).decode() for b in c]}
                      for c in _chunks(items)]
            endpoint = "/classify_image"
        else:
            items = _texts(N_ITEMS)
            bodies = [{"model": name, "texts": c} | ({"top_k": n_labels} if task == "text-classification" else {})
                      for c in _chunks(items)]
            endpoint = "/classify"
        local = []
        for c in _chunks(items, 32):
            local += runtime.predict([runtime.validate(x) for x in c], top_k=n_labels)
        remote = _post_all(server, endpoint, bodies)
        assert len(remote) == len(local) == N_ITEMS
        for i, (r, l) in enumerate(zip(remote, local)):
            assert [x["label"] for x in r["labels"]] == [x["label"] for x in l["labels"]], (name, i)
            for rx, lx in zip(r["labels"], l["labels"]):
                assert abs(rx["score"] - lx["score"]) <= TOLERANCE, (name, i, rx, lx)
        checked.append(name)
    assert {t for _, t in _models(smoke_models)} >= {"text-classification", "image-classification"}
    assert len(checked) == len(_models(smoke_models))
