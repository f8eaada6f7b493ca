"""``python -m training import``: an ONNX model this pipeline did not train -> a registry version.

1. Settings (``import_spec``) and graphs (``import_graphs``): input/output names, dtypes, dynamic
   axes and the label count are checked against what the serving runtime feeds and reads.
2. The version is built in a hidden staging folder of the registry: graphs (and any external
   data) under the pipeline's file names, the tokenizer, ``IMPORT.json`` (original files and
   their sha256), ``MODEL_CARD.md``.
3. The serving runtime (``modelkit.runtimes``) loads the staged version and runs the sample:
   parity with plain onnxruntime at batch 1 (classifiers: scores; translators: greedy tokens
   with vs without the KV cache), optionally with the model's own outputs (``expected``);
   probes with the longest input and the largest token id.
4. Reference profile from the runtime's drift features on the sample; optional eval file.
5. ``modelkit.registry.publish``: checksums, manifest, atomic rename; LATEST moves (recorded
   as ``import`` in the history) when the version passes and ``promote`` is on.

Gate of an imported model: without an eval file it is marked passed with the reason
"imported: not gated by this pipeline" (the checks above still must pass); with an eval file
the headline metric is measured through the runtime, and with ``min_metric`` it is gated on it.
Any failed check raises :class:`ImportRejected` and leaves the registry as it was.
"""

from __future__ import annotations

import json
import shutil
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from modelkit import registry
from modelkit.manifest import (
    DatasetInfo,
    GateCriterion,
    GateResult,
    GenerationConfig,
    GraphSpec,
    ImagePreprocessing,
    Manifest,
    ParityResult,
    Postprocessing,
    ReferenceProfile,
    TextPreprocessing,
    TrainingInfo,
    TranslationPreprocessing,
)
from modelkit.onnx_session import SessionSettings
from modelkit.profile import profile_features
from modelkit.runtimes import InputError, create_runtime
from modelkit.scores import sigmoid, softmax

from .gate import evaluate_gate
from .import_graphs import (
    GraphInfo,
    check_image_classifier,
    check_seq2seq,
    check_text_classifier,
    choose_output,
    inspect_graph,
)
from .import_inputs import read_eval, read_sample
from .import_spec import TEXT_TASKS, ImportRejected, ImportSpec
from .model_card import render_imported

HEADLINE = {"text-classification": "macro_f1", "multi-label-classification": "micro_f1",
            "image-classification": "accuracy", "translation": "chrf"}
GRAPH_FILES = {"model": "model.onnx", "encoder": "encoder.onnx", "decoder": "decoder.onnx",
               "decoder_with_past": "decoder_with_past.onnx"}
TOKENIZER_FILE = "tokenizer.json"
BATCH = 32
TRANSLATION_PARITY_ITEMS = 64  # uncached decoding at batch 1 is quadratic in length: keep it bounded
LIBRARIES = ("onnx", "onnxruntime", "tokenizers", "numpy")


@dataclass
class ImportResult:
    manifest: Manifest
    path: Path
    latest_moved: bool
    seconds: float


def import_model(spec: ImportSpec, registry_root: Path, *, command: str) -> ImportResult:
    """Check, stage, verify and publish ``spec``'s model; ImportRejected (registry untouched) when it does not fit."""
    t0 = time.perf_counter()
    labels = list(spec.labels or [])
    if len(set(labels)) != len(labels):
        dup = next(x for x in labels if labels.count(x) > 1)
        raise ImportRejected(f"labels: {dup!r} appears more than once")
    _check_name_free(registry_root, spec)
    graphs = {role: inspect_graph(role, Path(p)) for role, p in spec.graph_files().items()}
    wheres, sample = read_sample(spec.task, spec.sample)
    if len(sample) < spec.min_sample:
        raise ImportRejected(f"sample: {spec.sample} holds {len(sample)} items; at least min_sample={spec.min_sample} "
                             "are needed for a reference profile")
    tokenizer = _load_tokenizer(spec) if spec.tokenizer is not None else None
    checks: list[str] = []

    if spec.task == "translation":
        pre, gen = _translation_settings(spec, graphs, tokenizer, sample[0], checks)
        post = Postprocessing(activation="none")
    elif spec.task in TEXT_TASKS:
        check_text_classifier(graphs["model"])
        _check_text_tokenizer(spec, tokenizer)
        pre, gen = TextPreprocessing(tokenizer_file=TOKENIZER_FILE, max_length=spec.max_length,
                                     pad_token_id=tokenizer.token_to_id("[PAD]"),
                                     unk_token_id=tokenizer.token_to_id("[UNK]"),
                                     max_text_chars=spec.max_text_chars), None
        multi = spec.task == "multi-label-classification"
        post = Postprocessing(activation="sigmoid" if multi else "softmax",
                              thresholds=(spec.thresholds or [0.5]) if multi else None)
        if multi and len(post.thresholds) not in (1, len(labels)):
            raise ImportRejected(f"thresholds: {len(post.thresholds)} values for {len(labels)} labels; give 1 or {len(labels)}")
    else:
        channels, size = check_image_classifier(graphs["model"], spec)
        pre = ImagePreprocessing(image_size=size, channels=channels, mean=spec.mean, std=spec.std, invert=spec.invert)
        post, gen = Postprocessing(activation="softmax"), None
    output = choose_output(graphs["model"], spec.output, len(labels)) if spec.task != "translation" else None
    checks.append("graph inputs/outputs match the serving runtime's names, dtypes and dynamic axes"
                  + (f"; output {output.name!r} has one score per label ({len(labels)})" if output else ""))

    manifest = Manifest(
        name=spec.name,
        version=spec.version or registry.unique_version(registry_root, spec.name),
        task=spec.task,
        library_versions=_library_versions(),
        description=("Imported ONNX model. " + spec.description).strip(),
        labels=labels,
        graphs=[_graph_spec(g, output.name if output else None) for g in graphs.values()],
        preprocessing=pre,
        postprocessing=post,
        generation=gen,
        metrics={},
        baseline_metrics={},
        headline_metric=HEADLINE[spec.task],
        gate=GateResult(passed=False, criteria=[], reasons=["pending"]),
        parity=[],
        files=[],
        dataset=DatasetInfo(
            source=f"imported model; training data: {spec.source}. The split sizes below are the files "
                   "used at import (sample, eval), not training data",
            licence=spec.licence, fingerprint=registry.sha256_file(spec.sample) if spec.sample.is_file()
            else _folder_digest(spec.sample), split_sizes={"sample": len(sample)}, seed=0,
        ),
        training=TrainingInfo(preset="imported", command=command, config=spec.model_dump(mode="json"),
                              duration_s=0.0, device="not trained here (imported)",
                              num_parameters=sum(g.num_parameters for g in graphs.values())),
        reference_profile=ReferenceProfile(n_samples=0, features={}),
    )
    if (registry_root / spec.name / manifest.version).exists():
        raise ImportRejected(f"version: {spec.name}/{manifest.version} exists; versions are never overwritten")

    created = [p for p in (registry_root, registry_root / spec.name) if not p.exists()]
    staging = registry.staging_dir(registry_root, spec.name)
    try:
        _copy_files(spec, graphs, staging)
        runtime = create_runtime(manifest, staging, SessionSettings(provider="cpu", variant="fp32"))
        try:
            runtime.load()
        except Exception as exc:
            raise ImportRejected(f"the serving runtime cannot load the staged model: {exc}") from None
        items = _validate_all(runtime, wheres, sample)
        if spec.task == "translation":
            manifest.parity = [_translation_parity(runtime, graphs, items, spec)]
            _translation_probes(graphs, pre, gen, checks)
            features = [r["features"] for r in _predict(runtime, items, batch=16)]
        else:
            if spec.task in TEXT_TASKS:
                _text_probes(runtime, graphs["model"], output.name, spec, tokenizer, checks)
            direct = _direct_logits(runtime, graphs["model"], output.name, items, spec, len(labels))
            scores = _runtime_scores(runtime, items)
            manifest.parity = _classifier_parity(spec, post.activation, direct, scores)
            features = [r["features"] for r in _predict(runtime, items, batch=BATCH)]
        failed = [p for p in manifest.parity if not p.passed]
        if failed:
            raise ImportRejected("parity check failed: " + "; ".join(
                f"{p.notes}: max abs diff {p.max_abs_diff:.3g} > tolerance {p.tolerance:g}"
                + (f", top-1 agreement {p.top1_agreement:.4f}" if p.top1_agreement is not None else "")
                for p in failed))
        manifest.reference_profile = profile_features(features, labels, split="import sample")
        _evaluate(spec, runtime, manifest)
        manifest.training.duration_s = round(time.perf_counter() - t0, 1)
        (staging / "IMPORT.json").write_text(json.dumps(_provenance(spec, graphs), indent=2) + "\n", encoding="utf-8")
        (staging / "MODEL_CARD.md").write_text(render_imported(manifest, {"checks": "\n".join(checks)}),
                                               encoding="utf-8")
        moves = manifest.gate.passed and spec.promote
        final = registry.publish(registry_root, staging, manifest, servable=moves, action="import",
                                 why=f"imported {Path(spec.model or spec.encoder).name}")
    except BaseException:
        registry.discard(staging)
        for folder in reversed(created):
            try:
                folder.rmdir()
            except OSError:
                pass
        raise
    return ImportResult(manifest, final, moves, time.perf_counter() - t0)


# ---------------------------------------------------------------- settings and files


def _check_name_free(root: Path, spec: ImportSpec) -> None:
    """A name already serving another task is refused (its clients would get a different kind of answer)."""
    current = registry.latest_version(root, spec.name)
    if current:
        try:
            task = Manifest.load(root / spec.name / current / registry.MANIFEST_FILE).task
        except Exception:
            return
        if task != spec.task:
            raise ImportRejected(f"name: {spec.name!r} already serves a {task} model ({current}); "
                                 f"import this {spec.task} model under another name")


def _load_tokenizer(spec: ImportSpec):
    from tokenizers import Tokenizer

    if not spec.tokenizer.is_file():
        raise ImportRejected(f"tokenizer: file not found: {spec.tokenizer}")
    try:
        return Tokenizer.from_file(str(spec.tokenizer))
    except Exception as exc:
        raise ImportRejected(f"tokenizer: {spec.tokenizer} is not a `tokenizers` JSON file: {exc}") from None


def _check_text_tokenizer(spec: ImportSpec, tok) -> None:
    missing = [t for t in ("[PAD]", "[CLS]", "[SEP]") if tok.token_to_id(t) is None]
    if missing:
        raise ImportRejected(f"tokenizer: {spec.tokenizer} has no {', '.join(missing)} token(s); the text runtime "
                             "pads with [PAD] and wraps every text in [CLS] ... [SEP] (BERT-style special tokens)")


def _token_id(spec: ImportSpec, tok, field: str, token: str) -> int:
    value = getattr(spec, field)
    if value is None:
        value = tok.token_to_id(token)
        if value is None:
            raise ImportRejected(f"{field}: not given and tokenizer {spec.tokenizer} has no {token} token")
    return value


def _translation_settings(spec, graphs: dict[str, GraphInfo], tok, first: str, checks: list[str]):
    """Preprocessing and generation config; one encoder + decoder run reads heads and head size."""
    layers = check_seq2seq(graphs)
    ids = {f: _token_id(spec, tok, f, t) for f, t in (("pad_token_id", "<pad>"), ("bos_token_id", "<s>"),
                                                      ("eos_token_id", "</s>"))}
    unk = spec.unk_token_id if spec.unk_token_id is not None else tok.token_to_id("<unk>")
    start = spec.decoder_start_token_id if spec.decoder_start_token_id is not None else ids["bos_token_id"]
    src = tok.encode(first).ids
    if not src or src[-1] != ids["eos_token_id"]:
        raise ImportRejected(f"tokenizer: {spec.tokenizer} does not end an encoded source with eos_token_id "
                             f"{ids['eos_token_id']} (got {src[-3:]}); the translation runtime feeds "
                             "tokenizer.encode(text).ids as they are: add a post-processor that appends it")
    x = np.asarray([src], dtype=np.int64)
    mask = np.ones_like(x)
    try:
        (hidden,) = graphs["encoder"].session.run(["encoder_hidden_states"], {"input_ids": x, "attention_mask": mask})
        logits, key = graphs["decoder"].session.run(
            ["logits", "present.0.decoder.key"],
            {"input_ids": np.asarray([[start]], dtype=np.int64), "encoder_hidden_states": hidden,
             "encoder_attention_mask": mask})
    except Exception as exc:
        raise ImportRejected(f"encoder/decoder graphs fail on the first sample item: {exc}") from None
    vocab = tok.get_vocab_size(with_added_tokens=True)
    if logits.ndim != 3 or logits.shape[-1] < vocab:
        raise ImportRejected(f"decoder graph: logits have shape {list(logits.shape)}; expected [batch, target, >= {vocab}] "
                             f"(the tokenizer has {vocab} tokens)")
    if key.ndim != 4:
        raise ImportRejected(f"decoder graph: present.0.decoder.key has shape {list(key.shape)}; expected "
                             "[batch, heads, target, head_dim]")
    checks.append(f"translator: {layers} decoder layers, {key.shape[1]} heads of {key.shape[3]} (read from the "
                  f"decoder's cache), vocabulary {vocab} tokens <= logits {logits.shape[-1]}")
    pre = TranslationPreprocessing(
        tokenizer_file=TOKENIZER_FILE, source_lang=spec.source_lang, target_lang=spec.target_lang,
        max_source_length=spec.max_source_length, decoder_start_token_id=start, unk_token_id=unk, **ids)
    if spec.max_new_tokens > spec.max_max_new_tokens:
        raise ImportRejected(f"max_new_tokens: {spec.max_new_tokens} is above max_max_new_tokens {spec.max_max_new_tokens}")
    gen = GenerationConfig(num_beams=spec.num_beams, max_new_tokens=spec.max_new_tokens,
                           length_penalty=spec.length_penalty, max_num_beams=8,
                           max_max_new_tokens=spec.max_max_new_tokens, num_decoder_layers=layers,
                           num_heads=int(key.shape[1]), head_dim=int(key.shape[3]))
    return pre, gen


def _graph_spec(g: GraphInfo, output: str | None) -> GraphSpec:
    outputs = sorted(g.outputs, key=lambda t: t.name != output) if output else g.outputs  # served output first
    return GraphSpec(role=g.role, variant="fp32", path=GRAPH_FILES[g.role], opset=g.opset, exporter="imported",
                     inputs=g.inputs, outputs=outputs)


def _copy_files(spec: ImportSpec, graphs: dict[str, GraphInfo], staging: Path) -> None:
    for g in graphs.values():
        shutil.copyfile(g.path, staging / GRAPH_FILES[g.role])
        for rel in g.external_files:
            src = g.path.parent / rel
            if not src.is_file():
                raise ImportRejected(f"{g.role}: external data file {src} (named inside {g.path.name}) not found")
            (staging / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src, staging / rel)
    if spec.tokenizer is not None:
        shutil.copyfile(spec.tokenizer, staging / TOKENIZER_FILE)


def _library_versions() -> dict[str, str]:
    import platform
    from importlib.metadata import PackageNotFoundError, version

    out = {"python": platform.python_version()}
    for lib in LIBRARIES:
        try:
            out[lib] = version(lib)
        except PackageNotFoundError:
            pass
    return out


def _folder_digest(folder: Path) -> str:
    import hashlib

    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.relative_to(folder).as_posix().encode() + b"\0" + registry.sha256_file(p).encode())
    return h.hexdigest()


def _provenance(spec: ImportSpec, graphs: dict[str, GraphInfo]) -> dict:
    files = {str(g.path): registry.sha256_file(g.path) for g in graphs.values()}
    for g in graphs.values():
        files.update({str(g.path.parent / rel): registry.sha256_file(g.path.parent / rel) for rel in g.external_files})
    for p in (spec.tokenizer, spec.labels_file, spec.expected, spec.sample, spec.eval):
        if p is not None and Path(p).is_file():
            files[str(p)] = registry.sha256_file(Path(p))
    return {"imported_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "original_files_sha256": files, "spec": spec.model_dump(mode="json")}


# ---------------------------------------------------------------- running the sample


def _validate_all(runtime, wheres: list[str], items: list) -> list:
    out = []
    for where, item in zip(wheres, items):
        try:
            out.append(runtime.validate(item))
        except InputError as exc:
            raise ImportRejected(f"sample: {where}: the serving runtime refuses it ({exc.field}: {exc})") from None
    return out


def _predict(runtime, items: list, batch: int, **options) -> list[dict]:
    out = []
    for s in range(0, len(items), batch):
        out += runtime.predict(items[s:s + batch], **options)
    return out


def _runtime_scores(runtime, items: list) -> np.ndarray:
    """Every label's score per item, as the runtime answers (batches of BATCH, padded)."""
    labels = runtime.labels
    rows = []
    for r in _predict(runtime, items, BATCH, top_k=len(labels)):
        scores = r.get("scores") or {d["label"]: d["score"] for d in r["labels"]}
        rows.append([scores[label] for label in labels])
    return np.asarray(rows, dtype=np.float64)


def _model_input(runtime, item) -> dict[str, np.ndarray]:
    """The feeds of one validated item, built exactly as the runtime builds them (batch 1)."""
    if runtime.manifest.task in TEXT_TASKS:
        (enc,) = runtime.encoder.encode_batch([item])
        ids, mask = runtime.encoder.pad([enc])
        return {"input_ids": ids, "attention_mask": mask}
    from modelkit import image

    pixels = item.pixels[None]  # an ImageInput from the runtime's validate
    return {runtime.input_name: image.normalize(image.to_model_pixels(pixels, runtime.prep), runtime.prep)}


def _direct_logits(runtime, g: GraphInfo, output: str, items: list, spec: ImportSpec, n_labels: int) -> np.ndarray:
    """Plain onnxruntime, one item at a time, on the first parity items (and all rows of ``expected``)."""
    n = max(min(spec.parity_items, len(items)), _expected_rows(spec))
    names = [t.name for t in g.inputs]
    rows = []
    for i, item in enumerate(items[:n]):
        feeds = _model_input(runtime, item)
        try:
            (out,) = g.session.run([output], {k: v for k, v in feeds.items() if k in names})
        except Exception as exc:
            raise ImportRejected(f"model graph fails on sample item {i}: {exc}") from None
        if out.ndim != 2 or out.shape != (1, n_labels):
            raise ImportRejected(f"output {output!r} has shape {list(out.shape)} for one item: {out.shape[-1]} scores "
                                 f"per item but {n_labels} labels were given; they must match one to one")
        rows.append(out[0])
    logits = np.asarray(rows, dtype=np.float64)
    if not np.isfinite(logits).all():
        raise ImportRejected(f"output {output!r} is not finite (NaN/inf) on the sample")
    if runtime.manifest.postprocessing.activation == "softmax" and (logits >= 0).all() and np.allclose(
            logits.sum(axis=1), 1.0, atol=1e-3):
        raise ImportRejected(f"output {output!r} looks like probabilities (every row is >= 0 and sums to 1); the "
                             "runtime applies softmax itself: export the logits (before softmax) instead")
    return logits


def _expected_rows(spec: ImportSpec) -> int:
    return 0 if spec.expected is None else len(_load_expected(spec))


def _load_expected(spec: ImportSpec) -> np.ndarray:
    p = spec.expected
    if not p.is_file():
        raise ImportRejected(f"expected: file not found: {p}")
    try:
        data = np.load(p) if p.suffix == ".npy" else np.asarray(json.loads(p.read_text(encoding="utf-8")), dtype=float)
    except (ValueError, OSError) as exc:
        raise ImportRejected(f"expected: {p} is not a .npy array or a JSON list of lists of numbers: {exc}") from None
    if data.ndim != 2:
        raise ImportRejected(f"expected: {p} has shape {list(data.shape)}; expected [items, labels]")
    return data


def _classifier_parity(spec: ImportSpec, activation: str, direct: np.ndarray, scores: np.ndarray) -> list[ParityResult]:
    act = sigmoid if activation == "sigmoid" else softmax
    probs = act(direct)
    n = len(probs)
    diff = float(np.abs(probs - scores[:n]).max())
    out = [ParityResult(
        variant="fp32", n_inputs=n, max_abs_diff=diff, tolerance=spec.tolerance, passed=diff <= spec.tolerance,
        top1_agreement=float((probs.argmax(1) == scores[:n].argmax(1)).mean()),
        notes=f"serving runtime (batches of {BATCH}) vs onnxruntime at batch 1, {activation} scores")]
    if spec.expected is not None:
        expected = _load_expected(spec)
        m = len(expected)
        if m > len(direct) or expected.shape[1] != direct.shape[1]:
            raise ImportRejected(f"expected: {spec.expected} has shape {list(expected.shape)}; expected at most "
                                 f"{len(direct)} rows of {direct.shape[1]} scores (one row per sample item, in order)")
        d = float(np.abs(direct[:m] - expected).max())
        out.append(ParityResult(
            variant="fp32", n_inputs=m, max_abs_diff=d, tolerance=spec.tolerance, passed=d <= spec.tolerance,
            top1_agreement=float((direct[:m].argmax(1) == expected.argmax(1)).mean()),
            notes=f"onnxruntime logits with this pipeline's preprocessing vs the model's own outputs ({spec.expected.name})"))
    return out


def _run_ok(g: GraphInfo, output: str, feeds: dict[str, np.ndarray]) -> str | None:
    try:
        g.session.run([output], {k: v for k, v in feeds.items() if k in {t.name for t in g.inputs}})
    except Exception as exc:
        return str(exc).splitlines()[0]
    return None


def _text_probes(runtime, g: GraphInfo, output: str, spec: ImportSpec, tok, checks: list[str]) -> None:
    """The longest input the runtime will send and the largest token id the tokenizer can produce."""
    enc = runtime.encoder
    filler = enc.unk_token_id if enc.unk_token_id is not None else enc.pad_token_id
    longest = np.asarray([[enc.cls_id] + [filler] * (spec.max_length - 2) + [enc.sep_id]], dtype=np.int64)
    err = _run_ok(g, output, {"input_ids": longest, "attention_mask": np.ones_like(longest)})
    if err:
        raise ImportRejected(f"max_length: the graph fails on a {spec.max_length}-token input ({err}); "
                             "set max_length to what the model's position embeddings hold")
    vocab = tok.get_vocab_size(with_added_tokens=True)
    top = np.asarray([[enc.cls_id, vocab - 1, enc.sep_id]], dtype=np.int64)
    err = _run_ok(g, output, {"input_ids": top, "attention_mask": np.ones_like(top)})
    if err:
        raise ImportRejected(f"tokenizer: it has {vocab} tokens but the graph fails on token id {vocab - 1} ({err}); "
                             "the tokenizer and the model's vocabulary do not match")
    checks.append(f"the graph runs a {spec.max_length}-token input (max_length) and token id {vocab - 1} "
                  f"(the tokenizer's {vocab} tokens)")


def _translation_parity(runtime, graphs, items: list, spec: ImportSpec) -> ParityResult:
    """Greedy decoding with the KV cache (decoder_with_past, batches of 16) vs without it (decoder, batch 1)."""
    n = min(spec.parity_items, TRANSLATION_PARITY_ITEMS, len(items))
    steps = runtime.gen.max_new_tokens
    try:
        cached = []
        for s in range(0, n, 16):
            cached += runtime.generate_ids(items[s:s + 16], num_beams=1, max_new_tokens=steps)
        plain = [runtime.generate_ids([src], num_beams=1, max_new_tokens=steps, use_cache=False)[0] for src in items[:n]]
    except Exception as exc:
        raise ImportRejected(f"decoding the sample fails: {exc}") from None
    same = [a.tokens == b.tokens for a, b in zip(cached, plain)]
    diff = max(abs(a.sum_logprob - b.sum_logprob) for a, b in zip(cached, plain))
    tol = max(spec.tolerance, 1e-3)  # summed over up to max_new_tokens steps
    return ParityResult(variant="fp32", n_inputs=n, max_abs_diff=float(diff), tolerance=tol,
                        passed=all(same) and diff <= tol, top1_agreement=float(np.mean(same)),
                        notes="greedy tokens with the KV cache (decoder_with_past, batches of 16) vs without it "
                              "(decoder, batch 1); diff of summed log-probs")


def _translation_probes(graphs, pre, gen, checks: list[str]) -> None:
    """The encoder at max_source_length and the decoder at max_max_new_tokens + 1 positions must run."""
    src = np.full((1, pre.max_source_length), pre.unk_token_id or pre.pad_token_id, dtype=np.int64)
    src[0, -1] = pre.eos_token_id
    mask = np.ones_like(src)
    try:
        (hidden,) = graphs["encoder"].session.run(["encoder_hidden_states"], {"input_ids": src, "attention_mask": mask})
    except Exception as exc:
        raise ImportRejected(f"max_source_length: the encoder fails on a {pre.max_source_length}-token source "
                             f"({str(exc).splitlines()[0]}); lower max_source_length") from None
    tgt = np.full((1, gen.max_max_new_tokens + 1), pre.decoder_start_token_id, dtype=np.int64)
    try:
        graphs["decoder"].session.run(["logits"], {"input_ids": tgt, "encoder_hidden_states": hidden,
                                                   "encoder_attention_mask": mask})
    except Exception as exc:
        raise ImportRejected(f"max_max_new_tokens: the decoder fails at {gen.max_max_new_tokens + 1} target positions "
                             f"({str(exc).splitlines()[0]}); lower max_max_new_tokens") from None
    checks.append(f"the encoder runs a {pre.max_source_length}-token source (max_source_length) and the decoder "
                  f"{gen.max_max_new_tokens + 1} target positions (max_max_new_tokens + start token)")


# ---------------------------------------------------------------- optional evaluation and gate


def _evaluate(spec: ImportSpec, runtime, manifest: Manifest) -> None:
    metric = manifest.headline_metric
    if spec.eval is None:
        manifest.gate = GateResult(passed=True, criteria=[], reasons=[
            "PASS: imported: not gated by this pipeline (no labelled eval file given); graph, tokenizer/image "
            "settings, parity and probes were checked at import"])
        return
    inputs, targets = read_eval(spec.task, spec.eval, manifest.labels)
    items = _validate_all(runtime, [f"{spec.eval} item {i + 1}" for i in range(len(inputs))], inputs)
    if spec.task == "translation":
        import sacrebleu

        hyps = [r["translation"] for r in _predict(runtime, items, batch=16)]
        tokenize = "char" if spec.target_lang in ("ko", "ja", "zh") else "13a"
        values = {"chrf": float(sacrebleu.corpus_chrf(hyps, [targets]).score),
                  "bleu": float(sacrebleu.corpus_bleu(hyps, [targets], tokenize=tokenize).score)}
    elif spec.task == "multi-label-classification":
        from .metrics import multi_label_metrics

        index = {label: i for i, label in enumerate(manifest.labels)}
        truth = np.zeros((len(items), len(index)), dtype=int)
        pred = np.zeros_like(truth)
        for row, (t, r) in enumerate(zip(targets, _predict(runtime, items, BATCH))):
            truth[row, [index[x] for x in t]] = 1
            pred[row, [index[d["label"]] for d in r["labels"]]] = 1
        values = multi_label_metrics(truth, pred)
    else:
        from .metrics import single_label_metrics

        index = {label: i for i, label in enumerate(manifest.labels)}
        pred = [index[r["labels"][0]["label"]] for r in _predict(runtime, items, BATCH, top_k=1)]
        values = single_label_metrics([index[t[0]] for t in targets], pred)
    manifest.metrics = {"fp32": values}
    manifest.dataset.split_sizes["eval"] = len(items)
    if spec.min_metric is None:
        manifest.gate = GateResult(passed=True, criteria=[], reasons=[
            f"PASS: imported: {metric} {values[metric]:.4f} measured on {spec.eval.name}; no min_metric set, so not gated"])
        return
    criteria = [GateCriterion(metric=metric, min_value=spec.min_metric)]
    manifest.gate = evaluate_gate(manifest.name, criteria, values, {}, manifest.parity)
