"""Bring your own ONNX model: graphs built here with onnx.helper (not by this pipeline) are imported,
served through the real runtime with the outputs a numpy reference predicts, and rejected with a
message naming the mismatch (and nothing written to the registry) when they do not fit."""

from __future__ import annotations

import base64
import json
import random
from pathlib import Path

import numpy as np
import pytest
from import_support import (
    SPECIALS,
    WORDS,
    image_classifier,
    image_reference,
    text_classifier,
    text_reference,
    write_grey_pngs,
    write_tokenizer,
)

from modelkit import registry
from modelkit.image import encode_png
from modelkit.runtimes import create_runtime
from modelkit.scores import sigmoid, softmax
from training.cli import main

IDS = {w: len(SPECIALS) + i for i, w in enumerate(WORDS)}
CLS, SEP = SPECIALS.index("[CLS]"), SPECIALS.index("[SEP]")


def _ids(text: str) -> list[int]:
    return [CLS, *(IDS[w] for w in text.split()), SEP]


@pytest.fixture
def byo(tmp_path) -> Path:
    """A text and an image model from 'elsewhere', their tokenizer, samples and eval files."""
    text_classifier(tmp_path / "text.onnx")
    write_tokenizer(tmp_path / "tokenizer.json")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(40)]
    (tmp_path / "sample.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    image_classifier(tmp_path / "image.onnx")
    write_grey_pngs(tmp_path / "images", [rng.randint(0, 255) for _ in range(30)])
    return tmp_path


def _text_args(byo: Path, reg: Path, *extra: str, labels: str = "pos,neg,neutral") -> list[str]:
    return ["import", "--name", "reviews", "--task", "text-classification", "--model", str(byo / "text.onnx"),
            "--tokenizer", str(byo / "tokenizer.json"), "--labels", labels, "--max-length", "32",
            "--sample", str(byo / "sample.txt"), "--registry", str(reg), *extra]


def _snapshot(root: Path) -> dict[str, bytes]:
    if not root.exists():
        return {}
    return {p.relative_to(root).as_posix(): (p.read_bytes() if p.is_file() else b"<dir>") for p in root.rglob("*")}


def test_text_classifier_is_imported_checked_and_served(byo, tmp_path, capsys):
    reg = tmp_path / "reg"
    sample = (byo / "sample.txt").read_text().split("\n")[:10]
    (byo / "expected.json").write_text(json.dumps(text_reference([_ids(t) for t in sample]).tolist()))
    rc = main(_text_args(byo, reg, "--expected", str(byo / "expected.json"), "--source", "unit test fixture"))
    out = capsys.readouterr()
    assert rc == 0, out.err
    manifest, vdir = registry.load_version(reg, "reviews")  # LATEST, checksums verified
    assert registry.latest_version(reg, "reviews") == manifest.version
    assert manifest.training.preset == "imported" and all(g.exporter == "imported" for g in manifest.graphs)
    assert manifest.gate.passed and "not gated by this pipeline" in manifest.gate.reasons[0]
    assert manifest.metrics == {} and manifest.baseline_metrics == {}
    assert [p.passed for p in manifest.parity] == [True, True]
    assert manifest.parity[0].n_inputs == 40 and manifest.parity[0].max_abs_diff < 1e-6
    assert manifest.parity[1].n_inputs == 10 and manifest.parity[1].max_abs_diff < 1e-5  # vs the numpy "framework"
    assert manifest.reference_profile.n_samples == 40
    assert manifest.reference_profile.features["predicted_class"].categories == ["pos", "neg", "neutral"]
    card = (vdir / "MODEL_CARD.md").read_text()
    assert "(IMPORTED)" in card and "NOT GATED" in card and "unit test fixture" in card
    assert json.loads((vdir / "IMPORT.json").read_text())["original_files_sha256"][str(byo / "text.onnx")]
    (record,) = registry.read_history(reg, "reviews")
    assert (record.action, record.from_version, record.to_version) == ("import", None, manifest.version)

    runtime = create_runtime(manifest, vdir)
    runtime.load()
    texts = ["good great movie", "awful poor food", "today movie"]
    results = runtime.predict(texts, top_k=3)
    assert [r["labels"][0]["label"] for r in results[:2]] == ["pos", "neg"]
    want = softmax(text_reference([_ids(t) for t in texts]))
    got = np.asarray([[{d["label"]: d["score"] for d in r["labels"]}[lab] for lab in ("pos", "neg", "neutral")]
                      for r in results])
    np.testing.assert_allclose(got, want, atol=1e-6)


def test_multi_label_eval_file_measures_and_gates(byo, tmp_path, capsys):
    reg = tmp_path / "reg"
    rows = [("good", ["pos"]), ("awful", ["neg"]), ("good tag", ["pos", "tag"]), ("awful tag", ["neg", "tag"]),
            ("today", ["pos"])]  # the model finds nothing in "today": one false negative
    (byo / "eval.jsonl").write_text("".join(json.dumps({"text": t, "labels": y}) + "\n" for t, y in rows))
    args = ["--task", "multi-label-classification", "--set", "thresholds=[0.7]", "--eval", str(byo / "eval.jsonl")]
    base = _text_args(byo, reg, *args, labels="pos,neg,tag")

    rc = main([*base, "--min-metric", "0.95"])
    err = capsys.readouterr().err
    assert rc == 1 and "gate failed" in err
    (failed,) = registry.versions_of(reg, "reviews")
    assert registry.latest_version(reg, "reviews") is None
    m, _ = registry.load_version(reg, "reviews", failed)
    assert m.metrics["fp32"]["micro_f1"] == pytest.approx(12 / 13)  # TP 6, FP 0, FN 1
    assert m.gate.criteria[0].metric == "micro_f1" and m.gate.reasons[0].startswith("FAIL: micro_f1 0.9231 < minimum")
    assert main(["promote", "reviews", failed, "--registry", str(reg)]) == 1

    assert main([*base, "--min-metric", "0.9", "--version", "v2"]) == 0
    assert registry.latest_version(reg, "reviews") == "v2"
    m, vdir = registry.load_version(reg, "reviews")
    assert m.task == "multi-label-classification" and m.postprocessing.thresholds == [0.7]
    assert m.dataset.split_sizes == {"sample": 40, "eval": 5} and m.gate.passed
    runtime = create_runtime(m, vdir)
    runtime.load()
    (r,) = runtime.predict(["great tag"])
    assert {d["label"] for d in r["labels"]} == {"pos", "tag"}
    np.testing.assert_allclose(list(r["scores"].values()), sigmoid(text_reference([_ids("great tag")]))[0], atol=1e-6)


def test_image_classifier_from_a_toml_spec_is_served(byo, tmp_path):
    reg = tmp_path / "reg"
    (byo / "spec.toml").write_text(
        'name = "shades"\ntask = "image-classification"\nmodel = "image.onnx"\nlabels = ["dark", "mid", "bright"]\n'
        'sample = "images"\nmean = [0.5]\nstd = [0.5]\ndescription = "Grey level classifier."\n', encoding="utf-8")
    assert main(["import", "--spec", str(byo / "spec.toml"), "--registry", str(reg)]) == 0
    m, vdir = registry.load_version(reg, "shades")
    assert (m.preprocessing.image_size, m.preprocessing.channels) == (8, 1)  # read from the graph
    assert {"mean_intensity", "contrast", "predicted_class", "top_confidence", "pixels"} == set(m.reference_profile.features)
    runtime = create_runtime(m, vdir)
    runtime.load()
    levels = [0, 128, 255]
    items = [runtime.validate(encode_png(np.full((8, 8), g, dtype=np.uint8))) for g in levels]
    results = runtime.predict(items, top_k=3)
    assert [r["labels"][0]["label"] for r in results] == ["dark", "mid", "bright"]
    got = np.asarray([[{d["label"]: d["score"] for d in r["labels"]}[lab] for lab in m.labels] for r in results])
    np.testing.assert_allclose(got, softmax(image_reference(levels)), atol=1e-6)


def _reject_cases(byo: Path) -> dict[str, tuple[list[str], str]]:
    text_classifier(byo / "misnamed.onnx", input_names=("ids", "mask"))
    text_classifier(byo / "dynamic.onnx", narrow_to=2)
    text_classifier(byo / "probs.onnx", softmax=True)
    text_classifier(byo / "small_vocab.onnx", vocab=8)
    write_tokenizer(byo / "no_cls.json", specials=["[PAD]", "[UNK]"])
    image_classifier(byo / "rgb.onnx", channels=3)
    (byo / "bad_expected.json").write_text(json.dumps([[0.0, 0.0, 9.0]] * 5))
    (byo / "short.txt").write_text("good\nbad\n")

    def swap(args: list[str], flag: str, value: str | None) -> list[str]:
        i = args.index(flag)
        return args[:i] + args[i + 2:] if value is None else args[:i + 1] + [value] + args[i + 2:]

    t = _text_args(byo, byo / "REG")
    img = ["import", "--name", "shades", "--task", "image-classification", "--model", str(byo / "image.onnx"),
           "--labels", "dark,mid,bright", "--mean", "0.5", "--std", "0.5", "--sample", str(byo / "images"),
           "--registry", str(byo / "REG")]
    return {
        "static label count": (swap(t, "--labels", "pos,neg"),
                               "output 'logits' has 3 scores per item (shape ['batch', 3]) but 2 labels were given"),
        "label count at run time": (swap(t, "--model", str(byo / "dynamic.onnx")),
                                    "output 'logits' has shape [1, 2] for one item: 2 scores per item but 3 labels"),
        "misnamed inputs": (swap(t, "--model", str(byo / "misnamed.onnx")),
                            "input(s) 'ids', 'mask' not fed by the serving runtime; missing input(s) 'input_ids'"),
        "missing tokenizer": (swap(t, "--tokenizer", None), "text-classification needs: tokenizer"),
        "tokenizer without [CLS]": (swap(t, "--tokenizer", str(byo / "no_cls.json")), "has no [CLS], [SEP] token(s)"),
        "vocab mismatch": (swap(t, "--model", str(byo / "small_vocab.onnx")),
                           "it has 14 tokens but the graph fails on token id 13"),
        "probabilities out": (swap(t, "--model", str(byo / "probs.onnx")), "looks like probabilities"),
        "wrong expected": ([*t, "--expected", str(byo / "bad_expected.json")], "parity check failed"),
        "sample too small": (swap(t, "--sample", str(byo / "short.txt")), "holds 2 items; at least min_sample=20"),
        "unknown output": ([*t, "--output", "probs"], "has no output 'probs'; it has: logits float32['batch', 3]"),
        "image channels": ([*swap(swap(img, "--mean", "0.5,0.5,0.5"), "--std", "0.5,0.5,0.5"), "--channels", "3"],
                           "channels: 3 given but input pixels has 1 channels"),
        "image rgb graph, 1 mean": (swap(img, "--model", str(byo / "rgb.onnx")), "mean: 1 value(s) for 3 channel(s)"),
        "image size": ([*img, "--image-size", "28"], "image_size: 28 given but input pixels is 8x8"),
        "image without mean": (swap(img, "--mean", None), "image-classification needs: mean"),
        "image labels": (swap(img, "--labels", "dark,bright"), "3 scores per item (shape ['batch', 3]) but 2 labels"),
        "missing graph": (swap(t, "--model", str(byo / "nope.onnx")), "model: graph file not found"),
    }


CASES = ["static label count", "label count at run time", "misnamed inputs", "missing tokenizer", "tokenizer without [CLS]",
         "vocab mismatch", "probabilities out", "wrong expected", "sample too small", "unknown output",
         "image channels", "image rgb graph, 1 mean", "image size", "image without mean", "image labels",
         "missing graph"]


@pytest.mark.parametrize("case", CASES)
def test_bad_import_names_the_mismatch_and_writes_nothing(byo, capsys, case):
    reg = byo / "REG"
    assert main(_text_args(byo, reg, "--version", "v1")) == 0  # the registry already holds a good version
    before = _snapshot(reg)
    args, message = _reject_cases(byo)[case]
    rc = main(args)
    err = capsys.readouterr().err
    assert rc == 2, err
    assert "import rejected (nothing written" in err and message in err, err
    assert _snapshot(reg) == before


def test_graph_with_external_weights_travels_with_them(byo, tmp_path):
    """Weights in a separate .onnx.data file (the dynamo exporter's default) are copied and checksummed."""
    import onnx

    model = onnx.load(str(byo / "text.onnx"))
    ext = tmp_path / "ext"
    ext.mkdir()
    onnx.save(model, str(ext / "big.onnx"), save_as_external_data=True, location="big.onnx.data", size_threshold=128)
    reg = tmp_path / "reg"
    assert main(_text_args(byo, reg, "--model", str(ext / "big.onnx"))) == 0
    m, vdir = registry.load_version(reg, "reviews")
    assert {"model.onnx", "big.onnx.data"} <= {f.path for f in m.files}
    runtime = create_runtime(m, vdir)
    runtime.load()
    assert runtime.predict(["awful poor"])[0]["labels"][0]["label"] == "neg"


@pytest.mark.parametrize("late", [False, True])
def test_bad_import_into_an_empty_registry_creates_nothing(byo, capsys, late):
    """Early (before staging) and late (the staged version fails on the sample) rejections alike."""
    text_classifier(byo / "probs.onnx", softmax=True)
    reg = byo / "EMPTY"
    args = _text_args(byo, reg, "--model", str(byo / "probs.onnx")) if late else _text_args(byo, reg, labels="a,b")
    assert main(args) == 2
    assert ("looks like probabilities" if late else "2 labels were given") in capsys.readouterr().err
    assert not reg.exists()


def test_name_serving_another_task_is_refused(byo, capsys):
    reg = byo / "REG"
    assert main(_text_args(byo, reg)) == 0
    rc = main(["import", "--name", "reviews", "--task", "image-classification", "--model", str(byo / "image.onnx"),
               "--labels", "dark,mid,bright", "--mean", "0.5", "--std", "0.5", "--sample", str(byo / "images"),
               "--registry", str(reg)])
    assert rc == 2 and "'reviews' already serves a text-classification model" in capsys.readouterr().err


# ---- translators: the three-graph layout (the smoke de-en graphs, registered under a new name) ----------


@pytest.fixture
def translator_files(smoke_registry, tmp_path) -> tuple[Path, Path]:
    manifest, vdir = registry.load_version(smoke_registry, "de-en")
    src = tmp_path / "graphs"
    src.mkdir()
    for role in ("encoder", "decoder", "decoder_with_past"):
        (src / f"{role}.onnx").write_bytes((vdir / manifest.graph(role).path).read_bytes())
    (src / "tokenizer.json").write_bytes((vdir / "tokenizer.json").read_bytes())
    lines = ["Das Haus ist klein.", "Ich habe Hunger.", "Wo ist der Bahnhof?", "Der Hund schläft."] * 6
    (tmp_path / "sample.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    return src, tmp_path / "sample.txt"


def _translator_args(src: Path, sample: Path, reg: Path) -> list[str]:
    return ["import", "--name", "de-en-byo", "--task", "translation", "--model", str(src),
            "--tokenizer", str(src / "tokenizer.json"), "--source-lang", "de", "--target-lang", "en",
            "--sample", str(sample), "--set", "max_new_tokens=12", "--registry", str(reg)]


def test_translator_graphs_are_imported_and_translate_like_the_original(smoke_registry, translator_files, tmp_path):
    src, sample = translator_files
    reg = tmp_path / "reg"
    assert main(_translator_args(src, sample, reg)) == 0
    m, vdir = registry.load_version(reg, "de-en-byo")
    original, odir = registry.load_version(smoke_registry, "de-en")
    assert m.generation.num_decoder_layers == original.generation.num_decoder_layers
    assert (m.generation.num_heads, m.generation.head_dim) == (original.generation.num_heads, original.generation.head_dim)
    assert m.preprocessing.eos_token_id == original.preprocessing.eos_token_id  # looked up by name: </s>
    (parity,) = m.parity
    assert parity.passed and parity.top1_agreement == 1.0 and parity.n_inputs == 24
    texts = sample.read_text().splitlines()[:4]
    runtimes = [create_runtime(x, d) for x, d in ((m, vdir), (original, odir))]
    for r in runtimes:
        r.load()
    ours, theirs = (r.predict(texts, num_beams=2, max_new_tokens=12) for r in runtimes)
    assert [x["translation"] for x in ours] == [x["translation"] for x in theirs]


def test_translator_without_decoder_with_past_is_rejected(translator_files, tmp_path, capsys):
    src, sample = translator_files
    (src / "decoder_with_past.onnx").unlink()
    reg = tmp_path / "reg"
    assert main(_translator_args(src, sample, reg)) == 2
    assert "decoder_with_past: graph file not found" in capsys.readouterr().err
    assert not reg.exists()


# ---- end to end: the real service loads the imported versions at start ---------------------------


def test_imported_models_are_served_by_bentoml(byo, tmp_path):
    from service_support import serve

    reg = tmp_path / "reg"
    assert main(_text_args(byo, reg)) == 0
    assert main(["import", "--name", "shades", "--task", "image-classification", "--model", str(byo / "image.onnx"),
                 "--labels", "dark,mid,bright", "--mean", "0.5", "--std", "0.5", "--sample", str(byo / "images"),
                 "--registry", str(reg)]) == 0
    with serve(reg, tmp_path / "serve") as server, server.client() as client:
        models = {m["name"]: m for m in client.get("/models").json()["models"]}
        assert models["reviews"]["status"] == models["shades"]["status"] == "ready", models
        resp = client.post("/classify", json={"model": "reviews", "texts": ["good great movie", "awful food"]})
        assert resp.status_code == 200, resp.text
        assert [r["labels"][0]["label"] for r in resp.json()["results"]] == ["pos", "neg"]
        png = encode_png(np.full((8, 8), 255, dtype=np.uint8))
        resp = client.post("/classify_image", json={"model": "shades", "images": [base64.b64encode(png).decode()]})
        assert resp.status_code == 200, resp.text
        (result,) = resp.json()["results"]
        assert result["labels"][0]["label"] == "bright"
        assert result["labels"][0]["score"] == pytest.approx(float(softmax(image_reference([255]))[0, 2]), abs=1e-4)
