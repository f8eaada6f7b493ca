"""ONNX models this pipeline did not write, built with ``onnx.helper``, plus a numpy reference of each.

- ``text_classifier``: embedding bag (masked mean of token embeddings) -> linear -> logits,
  inputs ``input_ids`` / ``attention_mask``; a WordLevel `tokenizers` file with BERT-style specials.
- ``image_classifier``: flatten [batch, C, S, S] -> linear -> logits.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

SPECIALS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]"]
WORDS = ["good", "great", "fine", "bad", "awful", "poor", "today", "movie", "food", "tag"]


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="someone-else")
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def write_tokenizer(path: Path, specials: list[str] = SPECIALS, words: list[str] = WORDS) -> Path:
    from tokenizers import Tokenizer, models, pre_tokenizers

    vocab = {tok: i for i, tok in enumerate([*specials, *words])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]" if "[UNK]" in vocab else specials[0]))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(path))
    return path


def text_weights(n_labels: int = 3, vocab: int = len(SPECIALS) + len(WORDS), dim: int = 4, seed: int = 0):
    """Embeddings where good/great/fine point to label 0 ("pos"), bad/awful/poor to 1 ("neg"); rest small."""
    rng = np.random.default_rng(seed)
    emb = (rng.normal(size=(vocab, dim)) * 0.1).astype(np.float32)
    ids = {w: i for i, w in enumerate(WORDS, start=len(SPECIALS)) if i < vocab}  # vocab may be cut short
    for w, column in [*((w, 0) for w in ("good", "great", "fine")), *((w, 1) for w in ("bad", "awful", "poor")),
                      ("tag", 2)]:
        if w in ids:
            emb[ids[w], column] += 3.0
    w = np.zeros((dim, n_labels), dtype=np.float32)
    for i in range(min(dim, n_labels)):
        w[i, i] = 2.0
    b = np.linspace(-0.1, 0.1, n_labels).astype(np.float32)
    return emb, w, b


def text_classifier(path: Path, *, n_labels: int = 3, input_names=("input_ids", "attention_mask"),
                    narrow_to: int | None = None, softmax: bool = False, vocab: int | None = None) -> Path:
    """Embedding-bag classifier. ``narrow_to``: the output keeps that many columns, computed from the data
    at run time, so its width is not in the graph's declared or inferred shape."""
    emb, w, b = text_weights(n_labels, **({"vocab": vocab} if vocab else {}))
    ids, mask = input_names
    nodes = [
        helper.make_node("Gather", ["emb", ids], ["tok"]),                      # [B, S, D]
        helper.make_node("Cast", [mask], ["maskf"], to=TensorProto.FLOAT),      # [B, S]
        helper.make_node("Unsqueeze", ["maskf", "axis2"], ["mask3"]),            # [B, S, 1]
        helper.make_node("Mul", ["tok", "mask3"], ["masked"]),
        helper.make_node("ReduceSum", ["masked", "axis1"], ["summed"], keepdims=0),   # [B, D]
        helper.make_node("ReduceSum", ["maskf", "axis1"], ["count"], keepdims=1),     # [B, 1]
        helper.make_node("Div", ["summed", "count"], ["mean"]),
        helper.make_node("MatMul", ["mean", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["scores" if softmax else ("wide" if narrow_to else "logits")]),
    ]
    if narrow_to:  # end = max(attention_mask) * narrow_to = narrow_to, unknown until run time
        nodes += [
            helper.make_node("ReduceMax", [mask], ["mask_max"], keepdims=0),
            helper.make_node("Reshape", ["mask_max", "axis1"], ["mask_max1"]),
            helper.make_node("Mul", ["mask_max1", "narrow"], ["end"]),
            helper.make_node("Slice", ["wide", "zero", "end", "axis1"], ["logits"]),
        ]
    if softmax:
        nodes.append(helper.make_node("Softmax", ["scores"], ["logits"], axis=-1))
    inits = [numpy_helper.from_array(emb, "emb"), numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b"),
             numpy_helper.from_array(np.array([2], dtype=np.int64), "axis2"),
             numpy_helper.from_array(np.array([1], dtype=np.int64), "axis1")]
    if narrow_to:
        inits += [numpy_helper.from_array(np.array([narrow_to], dtype=np.int64), "narrow"),
                  numpy_helper.from_array(np.array([0], dtype=np.int64), "zero")]
    graph = helper.make_graph(
        nodes, "embedding_bag",
        [helper.make_tensor_value_info(ids, TensorProto.INT64, ["batch", "sequence"]),
         helper.make_tensor_value_info(mask, TensorProto.INT64, ["batch", "sequence"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "classes" if narrow_to else n_labels])],
        inits,
    )
    return _save(graph, path)


def text_reference(token_ids: list[list[int]], n_labels: int = 3) -> np.ndarray:
    """The same model in numpy (each row unpadded): logits per text."""
    emb, w, b = text_weights(n_labels)
    return np.stack([emb[np.asarray(row)].mean(axis=0) @ w + b for row in token_ids])


def image_weights(channels: int, size: int, n_labels: int = 3):
    """Label 0 "dark", 1 "mid", 2 "bright": logits -s, 0, +s where s is the mean normalised pixel."""
    d = channels * size * size
    w = np.zeros((d, n_labels), dtype=np.float32)
    w[:, 0] = -4.0 / d
    w[:, 2] = 4.0 / d
    b = np.array([0.0, 1.0, 0.0], dtype=np.float32)[:n_labels]
    return w, b


def image_classifier(path: Path, *, channels: int = 1, size: int = 8, n_labels: int = 3, input_name: str = "pixels") -> Path:
    w, b = image_weights(channels, size, n_labels)
    nodes = [
        helper.make_node("Flatten", [input_name], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["logits"]),
    ]
    graph = helper.make_graph(
        nodes, "linear_image",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, ["batch", channels, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", n_labels])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")],
    )
    return _save(graph, path)


def image_reference(grey_levels: list[int], channels: int = 1, size: int = 8, n_labels: int = 3) -> np.ndarray:
    """Logits of uniform images of these grey levels (mean 0.5, std 0.5 normalisation)."""
    w, b = image_weights(channels, size, n_labels)
    x = np.stack([np.full(channels * size * size, (g / 255.0 - 0.5) / 0.5, dtype=np.float32) for g in grey_levels])
    return x @ w + b


def write_grey_pngs(folder: Path, levels: list[int], size: int = 8) -> list[Path]:
    from modelkit.image import encode_png

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, g in enumerate(levels):
        p = folder / f"img{i:03d}.png"
        p.write_bytes(encode_png(np.full((size, size), g, dtype=np.uint8)))
        paths.append(p)
    return paths


def write_demo(folder: Path) -> None:
    """The README's "Bring your own ONNX model" files: two models from 'elsewhere' plus their inputs."""
    import json
    import random

    folder.mkdir(parents=True, exist_ok=True)
    text_classifier(folder / "reviews.onnx")
    tok = write_tokenizer(folder / "tokenizer.json")
    rng = random.Random(0)
    lines = [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 6))) for _ in range(200)]
    (folder / "sample.txt").write_text("\n".join(lines) + "\n", encoding="utf-8")
    ids = {w: i for i, w in enumerate([*SPECIALS, *WORDS])}
    expected = text_reference([[ids["[CLS]"], *(ids[w] for w in t.split()), ids["[SEP]"]] for t in lines[:50]])
    (folder / "expected.json").write_text(json.dumps(expected.round(7).tolist()), encoding="utf-8")
    rows = [("great food today", "pos"), ("good movie", "pos"), ("awful movie", "neg"), ("poor food", "neg"),
            ("fine", "pos"), ("bad today", "neg"), ("today movie", "neutral"), ("food", "neutral"), ("fine movie today", "neutral")]
    (folder / "eval.csv").write_text("text,label\n" + "".join(f"{t},{y}\n" for t, y in rows), encoding="utf-8")
    image_classifier(folder / "shades.onnx")
    write_grey_pngs(folder / "images", [rng.randint(0, 255) for _ in range(100)])
    (folder / "shades.toml").write_text(
        'name = "shades"\ntask = "image-classification"\nmodel = "shades.onnx"\nlabels = ["dark", "mid", "bright"]\n'
        'mean = [0.5]\nstd = [0.5]\nsample = "images"\nsource = "a linear model from elsewhere (demo)"\n',
        encoding="utf-8")
    print(f"wrote {', '.join(sorted(p.name for p in folder.iterdir()))} to {folder} ({tok.name}: {len(ids)} tokens)")


if __name__ == "__main__":
    import sys

    write_demo(Path(sys.argv[1] if len(sys.argv) > 1 else "byo-demo"))
