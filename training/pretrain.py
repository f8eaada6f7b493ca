"""``python -m training pretrain``: a BERT encoder pretrained as a masked language model on the
project's unlabelled English text (training/data/corpus.py), shared by the text classifiers.

The held-out (validation and test) texts of ``sentiment`` and ``topics`` under every preset are
removed from the corpus first. Texts are tokenized with a WordPiece vocabulary trained on the
corpus and packed into ``max_length`` sequences (``[CLS] a [SEP] b [SEP] ...``; long texts cut in
pieces); every epoch masks them afresh. The generic trainer runs it (AdamW, warmup + decay,
``train.max_minutes``); the kept weights are the best by masked-token accuracy on held-out
corpus texts. The result is published as a registry artefact (training/pretrained.py).
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import Field

from modelkit.manifest import DatasetInfo
from modelkit.registry import file_entries, new_version_id
from modelkit.text import SPECIAL_TOKENS

from . import pretrained as art
from .config import ConfigError, DataConfig, ModelConfig
from .data.corpus import SOURCES, build_corpus, text_key
from .families.text_classifier import EncoderParams
from .family import Split, Splits
from .trainer import model_device

IGNORE = -100  # label of unmasked positions (not in the loss)


class CorpusConfig(DataConfig):
    sources: list[str] = Field(default_factory=lambda: list(SOURCES), min_length=1)
    # downstream classifiers whose validation and test texts (under every preset) are removed first
    exclude_held_out_of: list[str] = Field(default_factory=lambda: ["sentiment", "topics"])
    val_texts: int = Field(1000, ge=10)  # corpus texts held out to validate the masked-token accuracy


class MLMParams(EncoderParams):
    mask_prob: float = Field(0.15, gt=0, lt=1)


class PretrainConfig(ModelConfig):
    family: Literal["mlm"] = "mlm"
    data: CorpusConfig = Field(default_factory=CorpusConfig)
    model: MLMParams = Field(default_factory=MLMParams)


def presets() -> dict[str, dict]:
    """smoke: seconds (tests); quick: the 2-core CPU; full: a GPU."""
    return {
        "smoke": {
            "data": {"max_examples": 1500, "val_texts": 100},
            "model": {"vocab_size": 500, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                      "intermediate_size": 64, "max_length": 32},
            "train": {"threads": 1, "epochs": 1, "batch_size": 32, "lr": 2e-3, "max_steps_per_epoch": 10,
                      "progress": False, "checkpoint_every": None},
        },
        "quick": {
            "train": {"threads": 2, "epochs": 4, "batch_size": 128, "lr": 1e-3, "warmup_ratio": 0.04,
                      "max_minutes": 15, "patience": 10, "checkpoint_every": None},
        },
        "full": {
            "model": {"vocab_size": 16000, "max_length": 128, "hidden_size": 256, "num_layers": 4,
                      "num_heads": 4, "intermediate_size": 1024},
            "train": {"epochs": 40, "batch_size": 256, "lr": 5e-4, "patience": 40, "checkpoint_every": None},
        },
    }


def resolve_config(preset: str, sets: list[str] = ()) -> PretrainConfig:
    from .config import apply_override, validate_config

    table = presets()
    if preset not in table:
        raise ConfigError(f"unknown preset {preset!r} (choose from {', '.join(table)})")
    raw = {art.DEFAULT_NAME: {"family": "mlm", **table[preset]}}
    for item in sets:
        apply_override(raw, item, [art.DEFAULT_NAME])
    return validate_config(art.DEFAULT_NAME, PretrainConfig, raw[art.DEFAULT_NAME])


# --- data ----------------------------------------------------------------------------------
def held_out_keys(models: list[str], data_dir: Path) -> tuple[set[int], list[str]]:
    """Keys of every validation and test text of ``models`` under each preset, and a description."""
    from .cli import resolve_configs
    from .families import available_models

    registered = available_models()
    keys: set[int] = set()
    described = []
    for name in models:
        family = registered.get(name)
        if family is None or not hasattr(family, "split"):
            raise ConfigError(f"data.exclude_held_out_of: {name!r} is not a text classifier")
        seen_cfgs = set()
        for preset in ("smoke", "quick", "full"):
            cfg = resolve_configs([name], preset)[name]
            signature = cfg.data.model_dump_json()
            if signature in seen_cfgs:
                continue
            seen_cfgs.add(signature)
            parts = family.split(cfg, data_dir)[0]
            for split in ("val", "test"):
                keys.update(text_key(ex.text) for ex in parts[split])
            d = cfg.data
            described.append(f"{name} validation + test ({preset} preset: seed {d.seed}, "
                             f"{d.val_fraction:.0%} + {d.test_fraction:.0%}"
                             + (f" of {d.max_examples} examples" if d.max_examples else "") + ")")
    return keys, described


def pack(encoded: list[list[int]], max_length: int, cls_id: int, sep_id: int) -> list[np.ndarray]:
    """``[CLS] a [SEP] b [SEP] ...`` sequences of at most ``max_length`` ids; long texts are cut."""
    room = max_length - 2
    out, current = [], [cls_id]
    for ids in encoded:
        pieces = [ids[i : i + room] for i in range(0, len(ids), room)] or []
        for piece in pieces:
            if len(current) + len(piece) + 1 > max_length:
                out.append(np.asarray(current, dtype=np.int64))
                current = [cls_id]
            current += piece + [sep_id]
    if len(current) > 1:
        out.append(np.asarray(current, dtype=np.int64))
    return out


def prepare(cfg: PretrainConfig, data_dir: Path) -> Splits:
    """Corpus -> tokenizer -> packed train / validation sequences."""
    from .families.text_classifier import train_tokenizer

    exclude, described = held_out_keys(cfg.data.exclude_held_out_of, data_dir)
    corpus = build_corpus(cfg.data.sources, data_dir, exclude=exclude, seed=cfg.data.seed,
                          max_texts=cfg.data.max_examples)
    if len(corpus.texts) <= cfg.data.val_texts:
        raise ConfigError(f"pretrain: only {len(corpus.texts)} corpus texts for data.val_texts={cfg.data.val_texts}")
    val_texts, train_texts = corpus.texts[: cfg.data.val_texts], corpus.texts[cfg.data.val_texts :]
    tok = train_tokenizer(train_texts, cfg.model)
    bare = tok.encode_batch(train_texts + val_texts, add_special_tokens=False)
    ids = [e.ids for e in bare]
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    train = pack(ids[: len(train_texts)], cfg.model.max_length, cls_id, sep_id)
    val = pack(ids[len(train_texts) :], cfg.model.max_length, cls_id, sep_id)
    dataset = DatasetInfo(source="; ".join(SOURCES[s] for s in cfg.data.sources), licence=None,
                          fingerprint=corpus.fingerprint, split_sizes={"train": len(train), "val": len(val), "test": 0},
                          seed=cfg.data.seed)
    state = {"tokenizer": tok, "corpus": corpus, "held_out_excluded": described,
             "special": {"cls": cls_id, "sep": sep_id, "pad": tok.token_to_id("[PAD]"), "mask": tok.token_to_id("[MASK]")}}
    return Splits(Split(train, None), Split(val, None), Split([], None), [], dataset, state)


def mask_batch(seqs: list[np.ndarray], special: dict, vocab: int, prob: float, rng: np.random.Generator):
    """Padded input ids, attention mask and labels: ``prob`` of the real tokens chosen (at least one
    per row), of those 80% -> [MASK], 10% -> a random token, 10% kept; labels only at chosen places."""
    width = max(len(s) for s in seqs)
    ids = np.full((len(seqs), width), special["pad"], dtype=np.int64)
    for r, s in enumerate(seqs):
        ids[r, : len(s)] = s
    attention = (ids != special["pad"]).astype(np.int64)
    maskable = attention.astype(bool) & (ids != special["cls"]) & (ids != special["sep"])
    chosen = maskable & (rng.random(ids.shape) < prob)
    for r in np.flatnonzero(~chosen.any(1) & maskable.any(1)):  # every row predicts something
        chosen[r, rng.choice(np.flatnonzero(maskable[r]))] = True
    labels = np.where(chosen, ids, IGNORE)
    roll = rng.random(ids.shape)
    inputs = ids.copy()
    inputs[chosen & (roll < 0.8)] = special["mask"]
    swap = chosen & (roll >= 0.8) & (roll < 0.9)
    inputs[swap] = rng.integers(len(SPECIAL_TOKENS), vocab, size=int(swap.sum()))  # special tokens come first
    return inputs, attention, labels


class BertMLM(torch.nn.Module):
    """transformers' BertForMaskedLM, scoring the chosen positions only: the vocabulary projection of
    every position cost most of a step (batch x length x vocabulary), for the 15% that have a label."""

    def __init__(self, config):
        super().__init__()
        from transformers import BertForMaskedLM

        self.mlm = BertForMaskedLM(config)
        self.bert = self.mlm.bert  # the encoder the classifiers fine-tune

    def forward(self, input_ids, attention_mask, labels):
        """(logits of the chosen positions, their labels)."""
        hidden = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        chosen = labels != IGNORE
        return self.mlm.cls(hidden[chosen]), labels[chosen]


class MaskedLM:
    """The objective the generic trainer runs (the parts of training.family.Family it uses)."""

    headline_metric = "mlm_accuracy"

    def build_model(self, cfg: PretrainConfig, splits: Splits):
        from transformers import BertConfig

        m = cfg.model
        if m.hidden_size % m.num_heads:
            raise ConfigError(f"pretrain.model.hidden_size ({m.hidden_size}) must be divisible by num_heads ({m.num_heads})")
        config = BertConfig(
            vocab_size=splits.state["tokenizer"].get_vocab_size(), hidden_size=m.hidden_size,
            num_hidden_layers=m.num_layers, num_attention_heads=m.num_heads, intermediate_size=m.intermediate_size,
            max_position_embeddings=m.max_length, hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout,
            pad_token_id=splits.state["special"]["pad"],
        )
        return BertMLM(config)

    def _tensors(self, seqs, cfg, splits, rng) -> dict:
        special = splits.state["special"]
        ids, attention, labels = mask_batch(seqs, special, splits.state["tokenizer"].get_vocab_size(),
                                            cfg.model.mask_prob, rng)
        return {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention),
                "labels": torch.from_numpy(labels)}

    def batches(self, cfg: PretrainConfig, splits: Splits, split: str, *, shuffle: bool, seed: int):
        seqs = getattr(splits, split).x
        size = cfg.train.batch_size if split == "train" else cfg.train.eval_batch_size
        rng = np.random.default_rng(seed)
        order = rng.permutation(len(seqs)) if shuffle else np.arange(len(seqs))
        for s in range(0, len(order), size):
            yield self._tensors([seqs[i] for i in order[s : s + size]], cfg, splits, rng)

    def loss(self, model, batch):
        logits, labels = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
        return torch.nn.functional.cross_entropy(logits, labels)

    def batch_weight(self, batch) -> float:
        return float((batch["labels"] != IGNORE).sum())  # the loss is a mean over masked tokens

    def val_outputs(self, model, cfg: PretrainConfig, splits: Splits, rows: np.ndarray) -> list:
        """(correct, masked, summed loss) per validation row; the masking is fixed by the row index."""
        seqs = splits.val.x
        device = model_device(model)
        model.eval()
        out = []
        with torch.no_grad():
            for s in range(0, len(rows), cfg.train.eval_batch_size):
                chunk = rows[s : s + cfg.train.eval_batch_size]
                batch = self._tensors([seqs[i] for i in chunk], cfg, splits, np.random.default_rng(int(chunk[0])))
                batch = {k: v.to(device) for k, v in batch.items()}
                logits, labels = model(batch["input_ids"], batch["attention_mask"], batch["labels"])
                nll = torch.nn.functional.cross_entropy(logits, labels, reduction="none")
                correct = logits.argmax(-1) == labels
                row = torch.nonzero(batch["labels"] != IGNORE)[:, 0]  # the row of each chosen position
                for r in range(len(chunk)):
                    on = row == r
                    out.append((int(correct[on].sum()), int(on.sum()), float(nll[on].sum())))
        return out

    def val_metrics(self, outputs: list, cfg: PretrainConfig, splits: Splits) -> dict[str, float]:
        correct, n, nll = (sum(o[i] for o in outputs) for i in range(3))
        return {"mlm_accuracy": correct / max(n, 1), "val_loss": nll / max(n, 1)}

    def validate(self, model, cfg, splits) -> dict[str, float]:
        return self.val_metrics(self.val_outputs(model, cfg, splits, np.arange(len(splits.val))), cfg, splits)


# --- the stage ------------------------------------------------------------------------------
def save_encoder(bert, folder: Path) -> None:
    """``config.json`` + ``model.safetensors`` of the encoder alone (the MLM head is dropped)."""
    from safetensors.torch import save_file

    bert.config.to_json_file(str(folder / "config.json"))
    save_file({k: v.contiguous() for k, v in bert.state_dict().items()}, str(folder / "model.safetensors"))


def run(cfg: PretrainConfig, *, registry: Path, data_dir: Path, preset: str, command: str,
        name: str = art.DEFAULT_NAME) -> Path:
    """Pretrain, publish ``<registry>/.pretrained/<name>/<version>/`` and make it LATEST; its folder."""
    from .pipeline import _device_name, git_commit, library_versions
    from .trainer import seed_everything, train

    t0 = time.perf_counter()
    print(f"\n=== pretrain {name} (masked language model, preset {preset}) ===", flush=True)
    splits = prepare(cfg, Path(data_dir))
    corpus = splits.state["corpus"]
    print(f"  corpus: {len(corpus.texts):,} texts (" + ", ".join(f"{k} {v:,}" for k, v in corpus.counts.items())
          + f"); held-out texts removed: {sum(corpus.excluded.values()):,}; sequences "
          f"{len(splits.train):,} train / {len(splits.val):,} val", flush=True)
    seed_everything(cfg.train.seed)
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    objective = MaskedLM()
    model = objective.build_model(cfg, splits)
    n_params = sum(p.numel() for p in model.bert.parameters())
    folder = art.root_of(registry, name)
    folder.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".staging-", dir=folder))
    try:
        result = train(objective, model, cfg, splits, log_path=staging / "train_log.jsonl", plots_dir=staging / "plots",
                       label=f"pretrain {name}")
        save_encoder(model.bert, staging)
        splits.state["tokenizer"].save(str(staging / art.TOKENIZER))
        np.save(staging / art.KEYS, corpus.keys)
        version = new_version_id()
        while (folder / version).exists():
            version += "-2"
        best = next((h for h in result.history if h["epoch"] == result.best_epoch), result.history[-1])
        manifest = art.PretrainManifest(
            name=name, version=version, git_commit=git_commit(), library_versions=library_versions(),
            command=command, preset=preset, config=cfg.model_dump(mode="json", include={"data", "model", "train"}),
            corpus={s: art.CorpusSource(description=SOURCES[s], texts=corpus.counts[s], excluded=corpus.excluded[s])
                    for s in cfg.data.sources},
            corpus_fingerprint=corpus.fingerprint, held_out_excluded=splits.state["held_out_excluded"],
            sequences={"train": len(splits.train), "val": len(splits.val)},
            tokens=int(sum(len(s) for s in splits.train.x)),
            metrics={k[4:] if k.startswith("val_") and k != "val_loss" else k: v for k, v in best.items()
                     if k.startswith("val_")} | {"epochs": result.epochs_run, "best_epoch": result.best_epoch},
            duration_s=round(time.perf_counter() - t0, 1), device=_device_name(cfg.train.device),
            num_parameters=n_params,
        )
        manifest.files = file_entries(staging)
        manifest.dump(staging / art.MANIFEST)
        os.replace(staging, folder / version)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    art.set_latest(registry, name, version)
    print(f"  pretrained {name}/{version}: masked-token accuracy {manifest.metrics['mlm_accuracy']:.4f} "
          f"(val loss {manifest.metrics['val_loss']:.4f}) after {result.epochs_run} epoch(s); "
          f"{manifest.duration_s:.0f} s -> {folder / version}", flush=True)
    return folder / version
