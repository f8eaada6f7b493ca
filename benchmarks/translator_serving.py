"""Translation at serving speed: the service's continuous batching against CTranslate2, one run.

For one translator version (its own test split, in order, one sentence per request):

1. Raw decoders in this process, greedy, ``--threads`` threads, batches 1 and 32, fp32 and int8:
   the request batcher's decoder (``modelkit.seq2seq``: full logits to numpy, cache copied by
   every step), the continuous engine (``modelkit.continuous``: ``decoder_step``, top-16 in the
   graph, cache in slots) decoding a static batch, and CTranslate2 ``translate_batch`` on the
   same weights (converted from the version's ``torch/`` folder). Generated tokens/s (EOS
   excluded), best of ``--rounds`` interleaved rounds, and CTranslate2's token agreement. Then the
   continuous engine under a closed loop (32 sentences always in flight, the service's join rule, no
   HTTP): tokens/s and the share of time spent admitting, with the version's ``encoder_kv`` graph and
   without it (the encoder and a first-step decoder call at admission), rounds interleaved.
2. The real ``bentoml serve`` (one worker, the service's default thread count), driven by a raw
   asyncio HTTP/1.1 client, ``--clients`` closed-loop clients for ``--duration`` s each: sentences/s,
   generated tokens/s (each answered sentence counts the tokens the raw greedy decoder produced for
   it; the service's own ``modelserve_generated_tokens_total`` is reported beside), p50 / p99, p50 of
   short sentences (<= 6 words); continuous decoding fp32 and int8, and the request batcher
   (``SERVICE_DEFAULT_DECODING__MODE=off``) for comparison.
3. Parity under load: the first 200 test sentences' answers in the 32-client run against the
   request batcher's decoder (text equality), and beam search (the manifest's num_beams) over the
   service with 16 clients against the batch decoder and torch ``generate()``.

Writes its section of ``benchmarks/RESULTS.md`` and ``benchmarks/translator_serving.png``.

    .venv/bin/python benchmarks/translator_serving.py --registry exported --model de-en

On a GPU machine without CTranslate2 (its own section of RESULTS.md, fp32 only):

    .venv/bin/python benchmarks/translator_serving.py --provider cuda --variants fp32 --no-ct2 \
        --section translator_serving_gpu --plot benchmarks/translator_serving_gpu.png
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))

from modelkit.onnx_session import SessionSettings  # noqa: E402
from modelkit.registry import load_version  # noqa: E402
from modelkit.runtimes import create_runtime  # noqa: E402
from service_bench import Server, machine, versions, write_results  # noqa: E402

from service.settings import ServiceSettings  # noqa: E402

SECTION = "translator_serving"
START, END = f"<!-- {SECTION}:start -->", f"<!-- {SECTION}:end -->"
VARIANTS = {"fp32": "float32", "int8": "int8"}  # graph variant -> CTranslate2 compute type
SHORT_WORDS = 6
PARITY_SENTENCES = 200


# ---------------------------------------------------------------- test sentences


@dataclass
class Sentence:
    text: str
    ids: list[int]
    words: int
    greedy: list[int] = field(default_factory=list)  # the batch decoder's tokens (EOS excluded)
    greedy_text: str = ""


def test_sentences(manifest, runtime, n: int, data_dir: Path) -> list[Sentence]:
    """The version's own test split (rebuilt from its data settings), in order, as the runtime accepts it."""
    from training.data.translation import load_splits

    data = manifest.training.config["data"]
    splits = load_splits(manifest.name, cache_dir=data_dir / "translation", seed=data["seed"],
                         val_size=data["val_size"], test_size=data["test_size"], max_train=data.get("max_examples"))
    if splits.fingerprint != manifest.dataset.fingerprint:
        print(f"warning: data fingerprint {splits.fingerprint[:12]} differs from the manifest's", file=sys.stderr)
    out = []
    for pair in splits.test:
        try:
            out.append(Sentence(pair.src, runtime.validate(pair.src), len(pair.src.split())))
        except Exception:  # refused by the runtime (too long): the evaluation skips it too
            continue
        if len(out) == n:
            break
    return out


def out_tokens(h) -> list[int]:
    return h.tokens[:-1] if h.finished else list(h.tokens)


# ---------------------------------------------------------------- CTranslate2


def convert_ctranslate2(version_dir: Path, work: Path) -> Path:
    """The version's torch/ folder as a CTranslate2 model (its converter wants the tokenizer beside the
    weights and ``normalize_before`` for a pre-LayerNorm MBart)."""
    import ctranslate2

    hf = work / "hf"
    shutil.copytree(version_dir / "torch", hf)
    shutil.copy(version_dir / "tokenizer.json", hf / "tokenizer.json")
    (hf / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>", "pad_token": "<pad>",
        "unk_token": "<unk>"}))
    config = json.loads((hf / "config.json").read_text())
    config["normalize_before"] = True
    (hf / "config.json").write_text(json.dumps(config))
    out = work / "ct2"
    ctranslate2.converters.TransformersConverter(str(hf)).convert(str(out))
    return out


class CT2:
    def __init__(self, path: Path, compute_type: str, threads: int, tokenizer, max_new: int, device: str = "cpu"):
        import ctranslate2

        self.tr = ctranslate2.Translator(str(path), device=device, compute_type=compute_type, intra_threads=threads,
                                         inter_threads=1)
        self.tok, self.max_new = tokenizer, max_new

    def __call__(self, batch: list[list[int]]) -> list[list[int]]:
        toks = [[self.tok.id_to_token(i) for i in s] for s in batch]
        res = self.tr.translate_batch(toks, target_prefix=[["<s>"]] * len(toks), beam_size=1,
                                      max_decoding_length=self.max_new, max_batch_size=len(toks))
        return [[self.tok.token_to_id(t) for t in r.hypotheses[0]] for r in res]


# ---------------------------------------------------------------- raw decoders


def raw_round(engines: dict, sentences: list[Sentence], batch: int) -> dict[str, tuple[float, list[list[int]]]]:
    """One timed pass of every engine over ``sentences`` in batches of ``batch``: tokens/s and outputs."""
    out = {}
    chunks = [[s.ids for s in sentences[i:i + batch]] for i in range(0, len(sentences), batch)]
    for name, fn in engines.items():
        outputs: list[list[int]] = []
        t0 = time.perf_counter()
        for chunk in chunks:
            outputs.extend(fn(chunk))
        seconds = time.perf_counter() - t0
        out[name] = (sum(len(o) for o in outputs) / seconds, outputs)
    return out


def raw_benchmark(version_dir: Path, manifest, sentences: list[Sentence], args) -> dict:
    """tokens/s per (engine, variant, batch), best of ``args.rounds``; CTranslate2's agreement with ONNX
    (CTranslate2 left out entirely with ``--no-ct2``)."""
    max_new = manifest.generation.max_new_tokens
    work = Path(tempfile.mkdtemp(prefix="ct2-"))
    ct2_path = None if args.no_ct2 else convert_ctranslate2(version_dir, work)
    results: dict = {"tokens_s": {}, "agreement": {}}
    for variant in args.variants:
        rt = create_runtime(manifest, version_dir, SessionSettings(provider=args.provider, variant=variant,
                                                                   intra_op_threads=args.threads))
        rt.load()
        engines = {
            "batch decoder (request batcher)": lambda c: [out_tokens(h) for h in rt.generate_ids(
                c, num_beams=1, max_new_tokens=max_new)],
            "continuous engine": lambda c: [out_tokens(h) for h in rt.generate_continuous(
                c, num_beams=1, max_new_tokens=max_new)],
        }
        if ct2_path is not None:
            engines["CTranslate2"] = CT2(ct2_path, VARIANTS[variant], args.threads, rt.tokenizer, max_new,
                                         device=args.provider)
        for batch, n in ((1, args.batch1_sentences), (32, len(sentences))):
            subset = sentences[:n]
            raw_round(engines, subset[:min(8, n)], batch)  # warm-up
            best: dict[str, float] = {}
            outputs: dict[str, list] = {}
            for _ in range(args.rounds):
                for name, (tps, outs) in raw_round(engines, subset, batch).items():
                    best[name] = max(best.get(name, 0.0), tps)
                    outputs[name] = outs
            for name, tps in best.items():
                results["tokens_s"][(name, variant, batch)] = tps
            ref = outputs["batch decoder (request batcher)"]
            for name in (n for n in ("continuous engine", "CTranslate2") if n in outputs):
                results["agreement"][(name, variant, batch)] = float(np.mean([a == b for a, b in
                                                                             zip(outputs[name], ref)]))
            print(f"  raw {variant} batch {batch}: " + ", ".join(f"{k} {v:,.0f} tok/s" for k, v in best.items()),
                  flush=True)
    shutil.rmtree(work, ignore_errors=True)
    return results


# ---------------------------------------------------------------- the continuous engine under a closed loop


@dataclass
class Loop:
    tokens_s: float = 0.0
    sentences_s: float = 0.0
    admit_share: float = 0.0  # of the loop's time: admitting (encoder_kv, or encoder + first-step decoder)
    step_share: float = 0.0
    rows: float = 0.0  # mean rows per decoder step
    short_p50_ms: float = float("nan")


def closed_loop(runtime, sentences: list[Sentence], *, encoder_kv: bool, in_flight: int, seconds: float) -> Loop:
    """The service's decode loop without the service: ``in_flight`` sentences always queued or decoding (one
    replaces each that ends), admitted by the scheduler's join rule (``DecodingSettings``), greedy."""
    from modelkit.continuous import Sequence
    from service.settings import DecodingSettings

    rule = DecodingSettings()
    engine = runtime.continuous_decoder(rule.max_rows, use_encoder_kv=encoder_kv)
    max_new, pick = runtime.manifest.generation.max_new_tokens, iter(range(10**9))

    def new() -> Sequence:
        s = sentences[next(pick) % len(sentences)]
        seq = Sequence(s.ids, 1, max_new)
        seq.tag = (engine.steps, time.perf_counter(), s.words <= SHORT_WORDS)
        return seq

    queue, short, tokens, done = [new() for _ in range(in_flight)], [], 0, 0
    admit_s = step_s = 0.0
    steps = rows = 0
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        ended = []
        if queue and not rule.join_waits(engine.rows, len(queue), engine.steps - queue[0].tag[0]):
            joining, queue = queue[:rule.max_join], queue[rule.max_join:]
            a = time.perf_counter()
            ended += engine.admit(joining)
            admit_s += time.perf_counter() - a
        if engine.rows:
            steps, rows = steps + 1, rows + engine.rows
            a = time.perf_counter()
            ended += engine.step()
            step_s += time.perf_counter() - a
        now = time.perf_counter()
        for seq in ended:
            tokens += len(out_tokens(seq.result))
            done += 1
            if seq.tag[2]:
                short.append(now - seq.tag[1])
            queue.append(new())
    elapsed = time.perf_counter() - t0
    return Loop(tokens / elapsed, done / elapsed, admit_s / elapsed, step_s / elapsed, rows / max(steps, 1),
                1000 * float(np.median(short)) if short else float("nan"))


def loop_benchmark(version_dir: Path, manifest, sentences: list[Sentence], args) -> dict[str, Loop]:
    """The closed loop with and without ``encoder_kv`` (rounds interleaved, best tokens/s of each), fp32."""
    rt = create_runtime(manifest, version_dir, SessionSettings(provider=args.provider, variant="fp32",
                                                               intra_op_threads=args.threads))
    rt.load()
    if rt.step_session is None:
        return {}
    labels = {"encoder_kv at admission": True} if rt.encoder_kv_session is not None else {}
    labels["encoder + first-step decoder at admission"] = False
    best: dict[str, Loop] = {}
    closed_loop(rt, sentences, encoder_kv=False, in_flight=32, seconds=1.0)  # warm-up
    for _ in range(args.rounds):
        for label, kv in labels.items():
            loop = closed_loop(rt, sentences, encoder_kv=kv, in_flight=32, seconds=args.loop_seconds)
            if label not in best or loop.tokens_s > best[label].tokens_s:
                best[label] = loop
            print(f"  closed loop, {label}: {loop.tokens_s:,.0f} tokens/s, admission {loop.admit_share:.0%}", flush=True)
    return best


# ---------------------------------------------------------------- load generator


@dataclass
class Level:
    clients: int
    requests: int = 0
    errors: int = 0
    seconds: float = 0.0
    tokens: int = 0
    metric_tokens: float | None = None
    latencies: list[float] = field(default_factory=list)
    short_latencies: list[float] = field(default_factory=list)
    answers: dict[int, str] = field(default_factory=dict)  # first answer per sentence index
    client_cpu_ms: float = 0.0

    @property
    def sentences_s(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    @property
    def tokens_s(self) -> float:
        return self.tokens / self.seconds if self.seconds else 0.0

    def p(self, q: float, short: bool = False) -> float:
        values = self.short_latencies if short else self.latencies
        return 1000 * float(np.percentile(values, q)) if values else float("nan")


async def _read_response(reader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        if line.lower().startswith("content-length:"):
            length = int(line.split(":", 1)[1])
    return status, await reader.readexactly(length)


async def _drive(host: str, port: int, bodies: list[bytes], clients: int, duration: float, level: Level,
                 sentences: list[Sentence]) -> None:
    counter = iter(range(10**9))
    stop_at = time.perf_counter() + duration

    async def client() -> None:
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while time.perf_counter() < stop_at:
                i = next(counter) % len(bodies)
                body = bodies[i]
                t0 = time.perf_counter()
                writer.write(b"POST /translate HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
                             b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                status, payload = await _read_response(reader)
                dt = time.perf_counter() - t0
                level.requests += 1
                if status != 200:
                    level.errors += 1
                    continue
                level.latencies.append(dt)
                s = sentences[i]
                if s.words <= SHORT_WORDS:
                    level.short_latencies.append(dt)
                level.tokens += len(s.greedy)
                if i not in level.answers:
                    level.answers[i] = json.loads(payload)["results"][0]["translation"]
        finally:
            writer.close()

    t0, cpu0 = time.perf_counter(), time.process_time()
    await asyncio.gather(*(client() for _ in range(clients)))
    level.seconds = time.perf_counter() - t0
    level.client_cpu_ms = 1000 * (time.process_time() - cpu0) / max(level.requests, 1)


def metric_value(url: str, name: str) -> float:
    import urllib.request

    text = urllib.request.urlopen(f"{url}/metrics", timeout=30).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith(name + "{") or line.startswith(name + " "))


def serve_levels(registry: Path, model: str, env: dict[str, str], sentences: list[Sentence], clients: list[int],
                 duration: float, work: Path, beams: int | None = None) -> list[Level]:
    """One server, a short warm-up, then each client count in turn."""
    server = Server(registry, {"SERVICE_MODELS": json.dumps([model]), "SERVICE_GRPC": "false", **env}, work)
    try:
        server.wait_ready()
        host, port = server.url.removeprefix("http://").split(":")
        options = {"num_beams": beams or 1}
        bodies = [json.dumps({"model": model, "texts": [s.text], **options}).encode() for s in sentences]
        asyncio.run(_drive(host, int(port), bodies, 4, 2.0, Level(4), sentences))  # warm-up
        levels = []
        for c in clients:
            level = Level(c)
            before = metric_value(server.url, "modelserve_generated_tokens_total")
            asyncio.run(_drive(host, int(port), bodies, c, duration, level, sentences))
            level.metric_tokens = metric_value(server.url, "modelserve_generated_tokens_total") - before
            print(f"  {env.get('SERVICE_VARIANT', 'fp32')} {env.get('SERVICE_DEFAULT_DECODING__MODE', 'auto')} "
                  f"{c:>3} clients: {level.sentences_s:7.1f} sentences/s, {level.tokens_s:8.0f} tokens/s, "
                  f"p50 {level.p(50):.1f} ms, short p50 {level.p(50, True):.1f} ms, errors {level.errors}", flush=True)
            levels.append(level)
        return levels
    finally:
        server.stop()


# ---------------------------------------------------------------- parity


def beam_parity(registry: Path, model: str, manifest, runtime, sentences: list[Sentence], beams: int, work: Path,
                duration: float, provider: str = "cpu") -> dict:
    """Beam answers through the service (16 clients) against the batch decoder and torch generate()."""
    from training.families.translator import TORCH_DIR, load_torch_model, torch_generate

    max_new = manifest.generation.max_new_tokens
    subset = sentences[:PARITY_SENTENCES]
    batch = [runtime.detokenize(h.tokens) for h in
             (h for i in range(0, len(subset), 16) for h in runtime.generate_ids(
                 [s.ids for s in subset[i:i + 16]], num_beams=beams, max_new_tokens=max_new))]
    torch_model = load_torch_model(runtime.version_dir / TORCH_DIR)
    torch_out = [runtime.detokenize(t) for t in torch_generate(torch_model, [s.ids for s in subset], num_beams=beams,
                                                               max_new_tokens=max_new, batch_size=16)]
    levels = serve_levels(registry, model, {"SERVICE_PROVIDER": provider}, subset, [16], duration, work, beams=beams)
    answers = levels[0].answers
    seen = sorted(answers)
    return {
        "beams": beams, "answered": len(seen),
        "service_vs_batch": float(np.mean([answers[i] == batch[i] for i in seen])) if seen else float("nan"),
        "service_vs_torch": float(np.mean([answers[i] == torch_out[i] for i in seen])) if seen else float("nan"),
        "batch_vs_torch": float(np.mean([batch[i] == torch_out[i] for i in range(len(subset))])),
        "manifest_torch_match_beam_b16": manifest.metrics.get("fp32", {}).get("torch_match_beam_b16"),
    }


# ---------------------------------------------------------------- report


def plot(path: Path, runs: dict[str, list[Level]], ct2: dict[str, float]) -> bool:
    """tokens/s and p50 against clients; False (with a warning) where matplotlib cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception as e:  # noqa: BLE001 (optional: the tables are the result)
        print(f"warning: no plot ({type(e).__name__}: {e})", file=sys.stderr)
        return False

    fig, (a, b) = plt.subplots(1, 2, figsize=(11, 4))
    for label, levels in runs.items():
        xs = [lv.clients for lv in levels]
        a.plot(xs, [lv.tokens_s for lv in levels], marker="o", label=label)
        b.plot(xs, [lv.p(50) for lv in levels], marker="o", label=label)
    for label, value in ct2.items():
        a.axhline(value, linestyle="--", linewidth=1, label=label, color="grey" if "fp32" in label else "black")
    a.set(xscale="log", xlabel="clients (one sentence per request)", ylabel="generated tokens/s",
          title="Throughput")
    b.set(xscale="log", yscale="log", xlabel="clients", ylabel="p50 latency (ms)", title="Median latency")
    for ax in (a, b):
        ax.set_xticks([lv.clients for lv in next(iter(runs.values()))])
        ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
        ax.grid(alpha=0.3)
    a.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return True


def check(ok: bool, ratio: float) -> str:
    return f"{'PASS' if ok else 'FAIL'} ({ratio:.2f}x)"


def gpu_name() -> str | None:
    """The first GPU's name from nvidia-smi, or None where it is missing or does not answer."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=name", "--format=csv,noheader"], capture_output=True,
                             text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    names = [line.strip() for line in out.stdout.splitlines() if line.strip()] if out.returncode == 0 else []
    return ", ".join(names) if names else None


def provider_text(provider: str) -> str:
    if provider != "cuda":
        return provider
    name = gpu_name()
    return f"cuda ({name})" if name else "cuda (GPU name unknown: nvidia-smi did not answer)"


def render(args, manifest, sentences, raw, runs, parity, beam, loads, provider: str | None = None,
           plot_name: str | None = "translator_serving.png", loops: dict[str, Loop] | None = None) -> str:
    variants = list(args.variants)
    main = "fp32" if "fp32" in variants else variants[0]  # the variant the acceptance and parity lines use
    ct2_run = not args.no_ct2
    at = {lv.clients: lv for lv in runs[f"continuous {main}"]}
    one, many = at.get(1), at.get(32)
    title = "continuous batching vs CTranslate2" if ct2_run else "continuous batching (CTranslate2 not run)"
    if args.provider != "cpu":
        title += f", provider {args.provider}"
    service_threads = ServiceSettings(workers=1, threads=0).intra_op_threads()  # what the served process uses
    ct2_text = f"ctranslate2 {_version('ctranslate2')}" if ct2_run else "CTranslate2 not run (--no-ct2)"
    lines = [f"## Translation serving: {title} (benchmarks/translator_serving.py)", "",
             f"{manifest.name}/{manifest.version}, {manifest.training.preset} preset, greedy, max_new_tokens "
             f"{manifest.generation.max_new_tokens}, {len(sentences)} test sentences in test-split order "
             f"({sum(s.words <= SHORT_WORDS for s in sentences)} short, <= {SHORT_WORDS} words; mean "
             f"{statistics.mean(len(s.greedy) for s in sentences):.1f} output tokens), {args.threads} thread(s) for "
             f"the raw engines; the service at its default, {service_threads} onnxruntime thread(s) beside the event "
             f"loop (cores - 1).",
             "", f"Machine: {machine()}; provider {provider or args.provider}; {versions()}; {ct2_text}.",
             f"Load average (1 min) at the start of each phase: {loads} (the load generator and the server share "
             f"the cores). What else ran: {args.note}", ""]
    engines = ["batch decoder (request batcher)", "continuous engine"] + (["CTranslate2"] if ct2_run else [])
    cols = [f"{v} b{b}" for v in variants for b in (1, 32)]
    lines += ["### Raw decoders in-process (generated tokens/s, best of "
              f"{args.rounds} interleaved rounds; batch 1 over {args.batch1_sentences} sentences)", "",
              f"| engine | {' | '.join(cols)} | same tokens as the batch decoder ({' / '.join(variants)} b32) |",
              "|---|" + "---:|" * len(cols) + "---|"]
    t, agree = raw["tokens_s"], raw["agreement"]
    for name in engines:
        same = "-" if name.startswith("batch") else " / ".join(f"{agree[(name, v, 32)]:.1%}" for v in variants)
        cells = " | ".join(f"{t[(name, v, b)]:,.0f}" for v in variants for b in (1, 32))
        lines.append(f"| {name} | {cells} | {same} |")
    if not ct2_run:
        lines += ["", "CTranslate2 was not run (`--no-ct2`): no CTranslate2 row, and its ratios below are n/a."]
    if loops:
        lines += ["", f"### The continuous engine in-process under a closed loop (fp32, 32 sentences always in flight, "
                  f"the service's join rule; best of {args.rounds} interleaved rounds of {args.loop_seconds:.0f} s)", "",
                  "| admission | tokens/s | sentences/s | time admitting | time in decoder_step | rows per step | "
                  "short p50 ms |", "|---|---:|---:|---:|---:|---:|---:|"]
        for label, lp in loops.items():
            lines.append(f"| {label} | {lp.tokens_s:,.0f} | {lp.sentences_s:,.0f} | {lp.admit_share:.0%} | "
                         f"{lp.step_share:.0%} | {lp.rows:.1f} | {lp.short_p50_ms:.1f} |")
    lines += ["", f"### Through the service (`bentoml serve`, 1 worker, {args.duration:.0f} s per level, one sentence "
              "per request)", "",
              "| decoding | clients | sentences/s | tokens/s | tokens/s (server metric) | p50 ms | p99 ms | short p50 ms "
              "| errors | client CPU ms/req |", "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for label, levels in runs.items():
        for lv in levels:
            metric = f"{lv.metric_tokens / lv.seconds:,.0f}" if lv.metric_tokens else "-"
            lines.append(f"| {label} | {lv.clients} | {lv.sentences_s:,.1f} | {lv.tokens_s:,.0f} | {metric} | "
                         f"{lv.p(50):.1f} | {lv.p(99):.1f} | {lv.p(50, True):.1f} | {lv.errors} | "
                         f"{lv.client_cpu_ms:.2f} |")
    lines += ["", "### Acceptance (issue 15)", ""]
    if one and many:
        rate = many.sentences_s / one.sentences_s
        lines.append(f"- 32 clients vs 1, sentences/s (continuous {main}): {many.sentences_s:,.1f} vs "
                     f"{one.sentences_s:,.1f}: {check(rate >= 3, rate)} (>= 3x)")
        for variant in variants:
            lv = {x.clients: x for x in runs[f"continuous {variant}"]}.get(32)
            if not lv:
                continue
            if not ct2_run:
                lines.append(f"- service tokens/s at 32 clients vs CTranslate2 batch-32 {variant}: {lv.tokens_s:,.0f} "
                             f"vs n/a: n/a (CTranslate2 not run)")
                continue
            ct = raw["tokens_s"][("CTranslate2", variant, 32)]
            r = lv.tokens_s / ct
            lines.append(f"- service tokens/s at 32 clients vs CTranslate2 batch-32 {variant}: {lv.tokens_s:,.0f} "
                         f"vs {ct:,.0f}: {check(r >= 0.7, r)} (>= 0.7x)")
        r = many.p(50, True) / one.p(50, True)
        lines.append(f"- short sentences' p50 at 32 clients vs 1: {many.p(50, True):.1f} vs {one.p(50, True):.1f} ms: "
                     f"{check(r <= 3, r)} (<= 3x)")
    batcher = {lv.clients: lv for lv in runs.get(f"request batcher {main}", [])}
    for c in (16, 32, 64):
        if c in at and c in batcher:
            lines.append(f"- {c} clients, continuous vs request batcher ({main}): {at[c].sentences_s:,.1f} vs "
                         f"{batcher[c].sentences_s:,.1f} sentences/s; short p50 {at[c].p(50, True):.1f} vs "
                         f"{batcher[c].p(50, True):.1f} ms; p99 {at[c].p(99):.1f} vs {batcher[c].p(99):.1f} ms")
    lines.append(f"- greedy answers under the 32-client load equal to the batch decoder's (first {PARITY_SENTENCES} "
                 f"test sentences, text): {parity['equal']}/{parity['answered']}")
    if beam:
        lines.append(f"- beam {beam['beams']} through the service (16 clients) vs the batch decoder: "
                     f"{beam['service_vs_batch']:.1%} of {beam['answered']}; vs torch generate(): "
                     f"{beam['service_vs_torch']:.1%}; the batch decoder vs torch today: {beam['batch_vs_torch']:.1%} "
                     f"(manifest torch_match_beam_b16 {beam['manifest_torch_match_beam_b16']})")
    if plot_name:
        lines += ["", f"![tokens/s and p50 against clients]({plot_name})"]
    return "\n".join(lines) + "\n"


def _version(name: str) -> str:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return "?"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--registry", type=Path, default=ROOT / "exported")
    ap.add_argument("--model", default="de-en")
    ap.add_argument("--version")
    ap.add_argument("--data-dir", type=Path, default=ROOT / "data", help="dataset snapshots (train --data-dir)")
    ap.add_argument("--sentences", type=int, default=256)
    ap.add_argument("--batch1-sentences", type=int, default=64)
    ap.add_argument("--clients", default="1,4,16,32,64")
    ap.add_argument("--duration", type=float, default=15.0, help="seconds per client level")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--loop-seconds", type=float, default=5.0,
                    help="seconds per round of the in-process closed loop (0: skip it)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--no-beam", action="store_true", help="skip the beam parity phase")
    ap.add_argument("--no-baseline", action="store_true", help="skip the request batcher runs")
    ap.add_argument("--results", type=Path, default=ROOT / "benchmarks" / "RESULTS.md")
    ap.add_argument("--plot", default=str(ROOT / "benchmarks" / "translator_serving.png"),
                    help="PNG to write ('' for none; skipped with a warning where matplotlib is missing)")
    ap.add_argument("--note", default="nothing else known (say what else ran, if anything)",
                    help="what else ran on the machine during the run, for the results header")
    ap.add_argument("--provider", default="cpu", choices=["cpu", "cuda"],
                    help="onnxruntime provider of every session here and of the served runs (SERVICE_PROVIDER)")
    ap.add_argument("--variants", default="fp32,int8",
                    help="graph variants of the raw phase and the continuous service runs (comma-separated)")
    ap.add_argument("--no-ct2", action="store_true", help="skip CTranslate2 (no conversion, no import)")
    ap.add_argument("--section", default=SECTION,
                    help="results-section name: markers <!-- SECTION:start --> / <!-- SECTION:end -->")
    args = ap.parse_args(argv)
    args.variants = list(dict.fromkeys(v.strip() for v in args.variants.split(",") if v.strip()))
    if not args.variants or set(args.variants) - set(VARIANTS):
        ap.error(f"--variants: a comma-separated subset of {', '.join(VARIANTS)} (got {args.variants})")
    main_variant = "fp32" if "fp32" in args.variants else args.variants[0]
    start, end = f"<!-- {args.section}:start -->", f"<!-- {args.section}:end -->"
    plot_path = Path(args.plot) if args.plot else None
    provider = provider_text(args.provider)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    clients = [int(c) for c in args.clients.split(",")]
    manifest, vdir = load_version(args.registry, args.model, args.version)
    runtime = create_runtime(manifest, vdir, SessionSettings(provider=args.provider, variant="fp32",
                                                             intra_op_threads=args.threads))
    runtime.load()
    sentences = test_sentences(manifest, runtime, args.sentences, args.data_dir)
    max_new = manifest.generation.max_new_tokens
    for i in range(0, len(sentences), 32):
        chunk = sentences[i:i + 32]
        for s, h in zip(chunk, runtime.generate_ids([s.ids for s in chunk], num_beams=1, max_new_tokens=max_new)):
            s.greedy, s.greedy_text = out_tokens(h), runtime.detokenize(h.tokens)
    loads = []
    work = Path(tempfile.mkdtemp(prefix="translator-serving-"))
    try:
        print(f"{manifest.name}/{manifest.version}: {len(sentences)} sentences, provider {provider}, variants "
              f"{','.join(args.variants)}, CTranslate2 {'not run' if args.no_ct2 else 'on'}", flush=True)
        loads.append(f"raw {os.getloadavg()[0]:.1f}")
        raw = raw_benchmark(vdir, manifest, sentences, args)
        loops = loop_benchmark(vdir, manifest, sentences, args) if args.loop_seconds > 0 else {}
        runs: dict[str, list[Level]] = {}
        for variant in args.variants:
            loads.append(f"service {variant} {os.getloadavg()[0]:.1f}")
            runs[f"continuous {variant}"] = serve_levels(
                args.registry, args.model, {"SERVICE_VARIANT": variant, "SERVICE_PROVIDER": args.provider},
                sentences, clients, args.duration, work)
        if not args.no_baseline:
            loads.append(f"request batcher {os.getloadavg()[0]:.1f}")
            runs[f"request batcher {main_variant}"] = serve_levels(
                args.registry, args.model, {"SERVICE_VARIANT": main_variant, "SERVICE_DEFAULT_DECODING__MODE": "off",
                                            "SERVICE_PROVIDER": args.provider},
                sentences, clients, args.duration, work)
        primary = runs[f"continuous {main_variant}"]
        many = {lv.clients: lv for lv in primary}.get(32) or primary[-1]
        seen = [i for i in many.answers if i < PARITY_SENTENCES]
        parity = {"answered": len(seen), "equal": sum(many.answers[i] == sentences[i].greedy_text for i in seen)}
        beam = None
        if not args.no_beam and manifest.generation.num_beams > 1:
            loads.append(f"beam {os.getloadavg()[0]:.1f}")
            beam = beam_parity(args.registry, args.model, manifest, runtime, sentences, manifest.generation.num_beams,
                               work, args.duration, provider=args.provider)
        ct2 = {} if args.no_ct2 else {f"CTranslate2 b32 {v}": raw["tokens_s"][("CTranslate2", v, 32)]
                                      for v in args.variants}
        plotted = plot(plot_path, runs, ct2) if plot_path else False
        text = render(args, manifest, sentences, raw, runs, parity, beam, ", ".join(loads), provider=provider,
                      plot_name=plot_path.name if plotted else None, loops=loops)
        print(text)
        write_results(args.results, text, start, end)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
